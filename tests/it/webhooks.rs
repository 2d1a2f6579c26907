//! Webhooks (SPEC §9, issue 20): durable, signed, in-order deliveries.
//!
//! A receiver in the test (a small axum server on its own runtime) checks
//! every signature with its own Standard Webhooks verification (RustCrypto
//! HMAC-SHA256 over `id.timestamp.body`, the key being the base64 after
//! `whsec_`) and records what arrives, in order. Retries are shortened with
//! `ALIASD_WEBHOOK_FIRST_RETRY_MS`; nothing sleeps long.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use hmac::Mac;
use serde_json::{json, Value};

use crate::support::{wait_for, Server, TestStore, WAIT};

/// Events for the ordering test (the issue's size).
const N_EVENTS: usize = 1_000;

/// How long the receiver of the down-and-restart test is down (the issue's
/// size); the test runs beside the others.
const DOWN_FOR: Duration = Duration::from_secs(30);

/// One POST the receiver got.
#[derive(Debug, Clone)]
pub(crate) struct Got {
    pub(crate) seq: u64,
    pub(crate) kind: String,
    pub(crate) alias: String,
    pub(crate) at: Instant,
}

/// What the receiver shares with its handler.
#[derive(Default)]
pub(crate) struct Inbox {
    /// The key to verify with (the base64 after `whsec_`, decoded), by path.
    keys: Mutex<Vec<(String, Vec<u8>)>>,
    pub(crate) got: Mutex<Vec<(String, Got)>>,
    pub(crate) bad_signatures: AtomicUsize,
    /// The status to answer (200 unless a test says otherwise).
    pub(crate) status: AtomicU16,
    /// Milliseconds to wait before answering.
    pub(crate) delay_ms: std::sync::atomic::AtomicU64,
}

/// A webhook receiver on 127.0.0.1, on its own thread and runtime.
pub(crate) struct Receiver {
    pub(crate) addr: SocketAddr,
    pub(crate) inbox: Arc<Inbox>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    pub(crate) fn start() -> Receiver {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind receiver");
        Receiver::start_with(listener, Arc::new(Inbox::default()))
    }

    fn start_with(listener: std::net::TcpListener, inbox: Arc<Inbox>) -> Receiver {
        inbox
            .status
            .compare_exchange(0, 200, Ordering::SeqCst, Ordering::SeqCst)
            .ok();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let shared = inbox.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let app = axum::Router::new()
                    .route("/{*path}", axum::routing::post(receive))
                    .with_state(shared);
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = stopped.await;
                    })
                    .await
                    .unwrap();
            });
        });
        Receiver {
            addr,
            inbox,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The URL of `path` on this receiver.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.addr)
    }

    /// Verify what comes to `path` with `secret`.
    pub(crate) fn expect_secret(&self, path: &str, secret: &str) {
        let key = base64::engine::general_purpose::STANDARD
            .decode(secret.strip_prefix("whsec_").expect("whsec_ prefix"))
            .expect("base64 secret");
        self.inbox
            .keys
            .lock()
            .unwrap()
            .push((format!("/{path}"), key));
    }

    pub(crate) fn got(&self, path: &str) -> Vec<Got> {
        let path = format!("/{path}");
        self.inbox
            .got
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| *p == path)
            .map(|(_, g)| g.clone())
            .collect()
    }

    pub(crate) fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The receiver's handler: verifies the signature, records the event.
async fn receive(
    axum::extract::State(inbox): axum::extract::State<Arc<Inbox>>,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::http::StatusCode {
    let path = uri.path().to_string();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let event: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (id, timestamp, signatures) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    );
    let key = inbox
        .keys
        .lock()
        .unwrap()
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, k)| k.clone());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let fresh = timestamp
        .parse::<i64>()
        .is_ok_and(|ts| (ts - now).abs() <= 300);
    let valid = key.is_some_and(|key| {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(&body);
        let expected =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        signatures
            .split(' ')
            .any(|s| s.strip_prefix("v1,") == Some(expected.as_str()))
    });
    if !valid || !fresh || event["id"].as_str() != Some(id.as_str()) {
        inbox.bad_signatures.fetch_add(1, Ordering::SeqCst);
    }
    inbox.got.lock().unwrap().push((
        path,
        Got {
            seq: event["seq"].as_u64().unwrap_or(0),
            kind: event["type"].as_str().unwrap_or_default().to_string(),
            alias: event["alias"].as_str().unwrap_or_default().to_string(),
            at: Instant::now(),
        },
    ));
    let delay = inbox.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    axum::http::StatusCode::from_u16(inbox.status.load(Ordering::SeqCst))
        .unwrap_or(axum::http::StatusCode::OK)
}

/// A server with short retries, on a store with model `m1`.
pub(crate) fn server() -> Server {
    Server::builder(TestStore::with_models(&["m1"]))
        .env("ALIASD_WEBHOOK_FIRST_RETRY_MS", "50")
        .start()
}

/// Creates a webhook; returns its id and secret.
#[track_caller]
pub(crate) fn add_webhook(server: &Server, body: Value) -> (String, String) {
    let resp = server.send_json("POST", "/api/webhooks", &body);
    let created = resp.expect(201);
    for field in [
        "id",
        "url",
        "types",
        "alias",
        "created_at",
        "cursor",
        "state",
    ] {
        assert!(created.get(field).is_some(), "{field}: {resp:?}");
    }
    assert_eq!(created["state"], "active", "{resp:?}");
    (
        created["id"].as_str().unwrap().to_string(),
        created["secret"]
            .as_str()
            .expect("secret shown once")
            .to_string(),
    )
}

/// Writes `n` events (prefix-alias puts, in batches); returns the last seq.
pub(crate) fn write_events(server: &Server, stem: &str, n: usize) -> u64 {
    let mut start = 0;
    while start < n {
        let end = (start + 100).min(n);
        server.batch_prefix_puts(stem, start..end, "m1");
        start = end;
    }
    server.seq()
}

/// Waits until `path` has had every seq in `seqs` (duplicates allowed).
#[track_caller]
pub(crate) fn wait_all(
    receiver: &Receiver,
    path: &str,
    seqs: std::ops::RangeInclusive<u64>,
) -> Vec<Got> {
    let want = seqs.clone().count();
    wait_for(&format!("{want} deliveries to {path}"), WAIT * 3, || {
        let got = receiver.got(path);
        let distinct: std::collections::BTreeSet<u64> = got.iter().map(|g| g.seq).collect();
        seqs.clone().all(|s| distinct.contains(&s)).then_some(got)
    })
}

/// Asserts deliveries came in seq order with no gap: each one is at most one
/// past the highest seen so far (a re-delivery after a crash goes back, never
/// forward past a gap); returns how many were duplicates.
#[track_caller]
pub(crate) fn assert_in_order(got: &[Got], first: u64) -> usize {
    let mut highest = first - 1;
    let mut duplicates = 0;
    for g in got {
        assert!(
            g.seq <= highest + 1,
            "seq {} delivered after {highest}: a gap ({:?})",
            g.seq,
            got.iter().map(|g| g.seq).collect::<Vec<_>>()
        );
        if g.seq <= highest {
            duplicates += 1;
        } else {
            highest = g.seq;
        }
    }
    duplicates
}

/// A loopback port held for a receiver that is not up yet: bound but not
/// listening, so a connection to it is refused, as to a receiver that is
/// down, and no other process can bind it meanwhile (a port that was merely
/// free when chosen could be taken by another test's server or receiver
/// while this one is down, which then got this test's deliveries or made
/// its receiver fail to bind).
pub(crate) struct HeldPort(socket2::Socket);

impl HeldPort {
    pub(crate) fn new() -> HeldPort {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        socket.bind(&any.into()).expect("bind a loopback port");
        HeldPort(socket)
    }

    pub(crate) fn port(&self) -> u16 {
        let addr = self.0.local_addr().expect("local addr");
        addr.as_socket().expect("an IP address").port()
    }

    /// The receiver, up on this port at last (the same socket: no moment
    /// in which another process could take the port).
    pub(crate) fn start(self, inbox: Arc<Inbox>) -> Receiver {
        self.0.listen(128).expect("listen");
        Receiver::start_with(self.0.into(), inbox)
    }
}

/// A loopback port nobody listens on now (another process may bind it
/// later: where that matters, [`HeldPort`]).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn every_event_is_delivered_signed_in_seq_order_and_the_secret_stays_hidden() {
    let server = server();
    let receiver = Receiver::start();
    server.create("before", "m1");
    let (id, secret) = add_webhook(&server, json!({ "url": receiver.url("all") }));
    receiver.expect_secret("all", &secret);
    let first = server.seq() + 1;
    let last = write_events(&server, "p", N_EVENTS);
    assert_eq!(last - first + 1, N_EVENTS as u64);
    let got = wait_all(&receiver, "all", first..=last);
    assert_eq!(receiver.inbox.bad_signatures.load(Ordering::SeqCst), 0);
    assert!(
        got.iter().all(|g| g.seq >= first),
        "events before the webhook were sent"
    );
    assert_eq!(
        assert_in_order(&got, first),
        0,
        "duplicates without a crash"
    );

    // The secret: shown once, never again, never logged.
    let key_part = &secret["whsec_".len()..];
    for path in ["/api/webhooks".to_string(), format!("/api/webhooks/{id}")] {
        let resp = server.get(&path);
        resp.expect(200);
        assert!(
            !String::from_utf8_lossy(&resp.body).contains(key_part),
            "{resp:?}"
        );
    }
    let listed = server.get("/api/webhooks");
    assert_eq!(listed.expect(200)["webhooks"][0]["id"], id.as_str());
    assert!(listed.json["webhooks"][0].get("secret").is_none());
    wait_for("cursor at the head", WAIT, || {
        (server.get(&format!("/api/webhooks/{id}")).json["cursor"] == last).then_some(())
    });
    let deliveries = server.get(&format!("/api/webhooks/{id}/deliveries"));
    let attempts = deliveries.expect(200)["deliveries"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(attempts.len(), 100, "the last 100 attempts");
    assert_eq!(attempts.last().unwrap()["seq"], last);
    assert_eq!(attempts.last().unwrap()["status"], 200);
    let metrics = String::from_utf8_lossy(&server.get("/metrics").body).into_owned();
    assert!(
        metrics.contains(&format!(
            "aliasd_webhook_deliveries_total{{result=\"delivered\"}} {N_EVENTS}"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("aliasd_webhook_lag{{webhook=\"{id}\"}}")),
        "{metrics}"
    );
    assert!(
        !server.all_stderr().contains(key_part),
        "the secret is in the log"
    );
    let file = server
        .journal_dir()
        .join("webhooks")
        .join(format!("{id}.json"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn a_receiver_down_and_a_restart_lose_nothing() {
    // `failing` after 5 s of failures, then retried every second, so the
    // delivery follows the receiver's return within about a second.
    let mut server = Server::builder(TestStore::with_models(&["m1"]))
        .env("ALIASD_WEBHOOK_FIRST_RETRY_MS", "50")
        .env("ALIASD_WEBHOOK_FAILING_AFTER_MS", "5000")
        .env("ALIASD_WEBHOOK_FAILING_RETRY_MS", "1000")
        .start();
    let held = HeldPort::new();
    let port = held.port();
    let inbox = Arc::new(Inbox::default());
    let url = format!("http://127.0.0.1:{port}/down");
    let (id, secret) = add_webhook(&server, json!({ "url": url }));
    let down_since = Instant::now();
    let first = server.seq() + 1;
    write_events(&server, "a", 100);
    // Attempts fail (nothing listens) and are retried.
    wait_for("failed attempts", WAIT, || {
        let resp = server.get(&format!("/api/webhooks/{id}/deliveries"));
        let attempts = resp.json["deliveries"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        (attempts.len() >= 3
            && attempts
                .iter()
                .all(|a| a["status"].is_null() && a["error"].is_string()))
        .then_some(())
    });
    wait_for("state failing", WAIT, || {
        (server.get(&format!("/api/webhooks/{id}")).json["state"] == "failing").then_some(())
    });
    std::thread::sleep((DOWN_FOR / 2).saturating_sub(down_since.elapsed()));
    server.restart();
    // The state and the time failing began survive the restart.
    assert_eq!(
        server.get(&format!("/api/webhooks/{id}")).json["state"],
        "failing"
    );
    let last = write_events(&server, "b", 100);
    std::thread::sleep(DOWN_FOR.saturating_sub(down_since.elapsed()));
    let receiver = held.start(inbox);
    receiver.expect_secret("down", &secret);
    let got = wait_all(&receiver, "down", first..=last);
    assert_eq!(receiver.inbox.bad_signatures.load(Ordering::SeqCst), 0);
    let duplicates = assert_in_order(&got, first);
    eprintln!(
        "receiver down {:?} + restart: {} events, {} deliveries, {duplicates} duplicates",
        DOWN_FOR,
        last - first + 1,
        got.len()
    );
    assert_eq!(duplicates, 0, "a clean restart re-sent deliveries");
    // The definition survived the restart (secret included: signatures
    // verify), and one success made it `active` again.
    assert_eq!(
        server.get("/api/webhooks").expect(200)["webhooks"][0]["id"],
        id.as_str()
    );
    wait_for("state active", WAIT, || {
        (server.get(&format!("/api/webhooks/{id}")).json["state"] == "active").then_some(())
    });
}

/// Creates `alias` (to `m1`) on `addr`; its seq, or `None` when aliasd did
/// not answer 201 (it was killed).
fn try_create(addr: SocketAddr, alias: &str) -> Option<u64> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(WAIT)).ok()?;
    let body = br#"{"target":"m1"}"#;
    let head = format!(
        "PUT /api/aliases/{alias} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).ok()?;
    stream.write_all(body).ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let resp = crate::support::parse_response(&raw)?;
    (resp.status == 201).then(|| resp.json["seq"].as_u64())?
}

#[test]
fn kill_9_under_load_loses_nothing() {
    let mut server = server();
    let receiver = Receiver::start();
    let (_, secret) = add_webhook(&server, json!({ "url": receiver.url("k") }));
    receiver.expect_secret("k", &secret);
    let first = server.seq() + 1;
    // Kill while events are being written and delivered, after cursor
    // writes (a slow receiver makes the deliveries outlast several).
    receiver.inbox.delay_ms.store(5, Ordering::SeqCst);
    write_events(&server, "x", 200);
    let addr = server.addr();
    let writer = std::thread::spawn(move || {
        let mut acked = 0;
        for i in 0..20_000 {
            match try_create(addr, &format!("w{i}")) {
                Some(_) => acked += 1,
                None => break,
            }
        }
        acked
    });
    wait_for("some deliveries", WAIT, || {
        (receiver.got("k").len() >= 120).then_some(())
    });
    server.kill9();
    let acked_before_kill = writer.join().unwrap();
    server.start_again();
    // Every seq up to the last is an event (seqs have no gaps): those the
    // killed aliasd acknowledged, and any it committed without answering.
    let last = write_events(&server, "y", 100);
    receiver.inbox.delay_ms.store(0, Ordering::SeqCst);
    let got = wait_all(&receiver, "k", first..=last);
    assert_eq!(receiver.inbox.bad_signatures.load(Ordering::SeqCst), 0);
    let duplicates = assert_in_order(&got, first);
    eprintln!(
        "kill -9 under load ({acked_before_kill} creates acknowledged while delivering, then the kill): {} events, {} deliveries, {duplicates} duplicates (at least once)",
        last - first + 1,
        got.len()
    );
}

/// The p99 of write → delivered for `n` events written one by one.
fn p99_latency(server: &Server, receiver: &Receiver, path: &str, stem: &str, n: usize) -> Duration {
    let mut written = Vec::new();
    for i in 0..n {
        let seq = server.create(&format!("{stem}{i}"), "m1")["seq"]
            .as_u64()
            .unwrap();
        written.push((seq, Instant::now()));
        std::thread::sleep(Duration::from_millis(10));
    }
    let (first, last) = (written[0].0, written.last().unwrap().0);
    let got = wait_all(receiver, path, first..=last);
    let mut latencies: Vec<Duration> = written
        .iter()
        .map(|(seq, at)| {
            let delivered = got.iter().find(|g| g.seq == *seq).unwrap().at;
            delivered.saturating_duration_since(*at)
        })
        .collect();
    latencies.sort();
    latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)]
}

#[test]
fn a_failing_receiver_does_not_delay_a_healthy_one() {
    let server = Server::builder(TestStore::with_models(&["m1"]))
        .env("ALIASD_WEBHOOK_FIRST_RETRY_MS", "20")
        .env("ALIASD_WEBHOOK_FAILING_AFTER_MS", "1000")
        .start();
    let healthy = Receiver::start();
    let (_, secret) = add_webhook(&server, json!({ "url": healthy.url("ok") }));
    healthy.expect_secret("ok", &secret);
    let alone = p99_latency(&server, &healthy, "ok", "alone", 50);

    let broken = Receiver::start();
    broken.inbox.status.store(500, Ordering::SeqCst);
    let (bad_id, _) = add_webhook(&server, json!({ "url": broken.url("bad") }));
    let beside = p99_latency(&server, &healthy, "ok", "beside", 50);
    eprintln!(
        "p99 write -> delivered: {alone:?} alone, {beside:?} beside a receiver answering 500"
    );
    assert!(
        beside < Duration::from_secs(2),
        "the healthy webhook waited for the failing one: p99 {beside:?}"
    );
    // The failing one retried (and is still on its first event), then is `failing`.
    let first_bad = broken.got("bad");
    assert!(first_bad.len() >= 3, "{first_bad:?}");
    assert!(first_bad.iter().all(|g| g.seq == first_bad[0].seq));
    wait_for("state failing", WAIT, || {
        (server.get(&format!("/api/webhooks/{bad_id}")).json["state"] == "failing").then_some(())
    });
    let attempts = server.get(&format!("/api/webhooks/{bad_id}/deliveries"));
    let last = attempts.expect(200)["deliveries"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["status"], 500);
    assert!(last["error"].as_str().unwrap().contains("500"));
    assert_eq!(healthy.inbox.bad_signatures.load(Ordering::SeqCst), 0);
}

#[test]
fn filters_by_type_and_alias() {
    let server = server();
    let receiver = Receiver::start();
    let (_, deleted_secret) = add_webhook(
        &server,
        json!({ "url": receiver.url("deleted"), "types": ["alias.deleted"] }),
    );
    let (_, coder_secret) = add_webhook(
        &server,
        json!({ "url": receiver.url("coder"), "alias": "coder" }),
    );
    let (_, both_secret) = add_webhook(
        &server,
        json!({ "url": receiver.url("both"), "types": ["alias.created", "alias.updated"], "alias": "Coder" }),
    );
    receiver.expect_secret("deleted", &deleted_secret);
    receiver.expect_secret("coder", &coder_secret);
    receiver.expect_secret("both", &both_secret);
    server.create("coder", "m1");
    server.create("other", "m1");
    server.delete("/api/aliases/other").expect(200);
    server.create("other2", "m1");
    server.create("coder", "other2");
    server.delete("/api/aliases/coder").expect(200);
    let last = server.seq();
    // A marker for each: everything before it has been considered.
    let (_, all_secret) = add_webhook(&server, json!({ "url": receiver.url("all") }));
    receiver.expect_secret("all", &all_secret);
    server.create("marker", "m1");
    wait_all(&receiver, "all", last + 1..=last + 1);
    // Each webhook has its own worker: the marker's delivery to `all` says
    // nothing of how far the others are. Wait for the `n` deliveries each
    // should get (in seq order, so a wrong one before them is in by then),
    // then a moment for any wrong one after them.
    let kinds = |path: &str, n: usize| -> Vec<(String, String)> {
        wait_for(&format!("{n} deliveries to {path}"), WAIT, || {
            (receiver.got(path).len() >= n).then_some(())
        });
        std::thread::sleep(Duration::from_millis(300));
        receiver
            .got(path)
            .into_iter()
            .map(|g| (g.kind, g.alias))
            .collect()
    };
    assert_eq!(
        kinds("deleted", 2),
        [
            ("alias.deleted".into(), "other".into()),
            ("alias.deleted".into(), "coder".into())
        ]
    );
    let coder = kinds("coder", 3);
    assert!(coder.iter().all(|(_, alias)| alias == "coder"), "{coder:?}");
    assert_eq!(
        coder.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        ["alias.created", "alias.updated", "alias.deleted"]
    );
    assert_eq!(
        kinds("both", 2),
        [
            ("alias.created".into(), "coder".into()),
            ("alias.updated".into(), "coder".into())
        ]
    );
    assert_eq!(receiver.inbox.bad_signatures.load(Ordering::SeqCst), 0);
}

#[test]
fn delete_stops_deliveries_at_once() {
    let server = server();
    let broken = Receiver::start();
    broken.inbox.status.store(500, Ordering::SeqCst);
    let (id, _) = add_webhook(&server, json!({ "url": broken.url("retrying") }));
    server.create("a", "m1");
    wait_for("retries", WAIT, || {
        (broken.got("retrying").len() >= 3).then_some(())
    });
    server.delete(&format!("/api/webhooks/{id}")).expect(200);
    let after_delete = broken.got("retrying").len();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        broken.got("retrying").len() <= after_delete + 1,
        "retries went on after the delete"
    );
    server
        .get(&format!("/api/webhooks/{id}"))
        .expect_error(404, "no webhook");
    server
        .delete(&format!("/api/webhooks/{id}"))
        .expect_error(404, "no webhook");
    assert!(!server
        .journal_dir()
        .join("webhooks")
        .join(format!("{id}.json"))
        .exists());

    let healthy = Receiver::start();
    let (ok_id, _) = add_webhook(&server, json!({ "url": healthy.url("ok") }));
    server.create("b", "m1");
    wait_for("a delivery", WAIT, || {
        (!healthy.got("ok").is_empty()).then_some(())
    });
    server.delete(&format!("/api/webhooks/{ok_id}")).expect(200);
    server.create("c", "m1");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(healthy.got("ok").len(), 1);
}

#[test]
fn bad_webhooks_and_loops_are_refused() {
    let server = Server::builder(TestStore::with_models(&["m1"]))
        .args(&["--token", "ci=rw-secret", "--read-token", "dash=ro-secret"])
        .start();
    let rw = [("Authorization", "Bearer rw-secret")];
    let ro = [("Authorization", "Bearer ro-secret")];
    let port = server.addr().port();
    for url in [
        format!("http://127.0.0.1:{port}/x"),
        format!("http://localhost:{port}/x"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
    ] {
        server
            .send_json_with("POST", "/api/webhooks", &rw, &json!({ "url": url }))
            .expect_error(400, "this aliasd itself");
    }
    for (body, fragment) in [
        (
            json!({ "url": "ftp://example.com/" }),
            "http:// or https://",
        ),
        (
            json!({ "url": "http://127.0.0.1:9/", "types": ["alias.made"] }),
            "unknown event type",
        ),
        (
            json!({ "url": "http://127.0.0.1:9/", "secret": "hunter2" }),
            "whsec_",
        ),
        (
            json!({ "url": "http://127.0.0.1:9/", "alias": "a b" }),
            "alias",
        ),
        (
            json!({ "url": "http://127.0.0.1:9/", "type": "alias.created" }),
            "unknown field",
        ),
    ] {
        server
            .send_json_with("POST", "/api/webhooks", &rw, &body)
            .expect_error(400, fragment);
    }
    server
        .send_json_with(
            "POST",
            "/api/webhooks",
            &ro,
            &json!({ "url": "http://127.0.0.1:9/" }),
        )
        .expect_error(403, "read-only");
    let secret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    let resp = server.send_json_with(
        "POST",
        "/api/webhooks",
        &rw,
        &json!({ "url": "http://127.0.0.1:9/", "secret": secret }),
    );
    let id = resp.expect(201)["id"].as_str().unwrap().to_string();
    assert_eq!(resp.json["secret"], secret);
    server
        .request("DELETE", &format!("/api/webhooks/{id}"), &ro, None)
        .expect_error(403, "read-only");
    let listed = server.request("GET", "/api/webhooks", &ro, None);
    assert!(!String::from_utf8_lossy(&listed.body).contains("C2FVsBQ"));
    server
        .request("DELETE", &format!("/api/webhooks/{id}"), &rw, None)
        .expect(200);
}

#[test]
fn cli_adds_lists_and_removes_webhooks() {
    let server = server();
    let out = server.cli(&[
        "webhook",
        "add",
        "http://127.0.0.1:9/hook",
        "--type",
        "alias.created",
        "--type",
        "alias.deleted",
        "--alias",
        "coder",
    ]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("whsec_"), "{out:?}");
    let out = server.cli(&["--json", "webhook", "ls"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let listed: Value = serde_json::from_str(&out.stdout).unwrap();
    let hook = &listed["webhooks"][0];
    assert_eq!(hook["types"], json!(["alias.created", "alias.deleted"]));
    assert_eq!(hook["alias"], "coder");
    let id = hook["id"].as_str().unwrap();
    let out = server.cli(&["webhook", "ls"]);
    assert!(
        out.stdout.contains(id) && !out.stdout.contains("whsec_"),
        "{out:?}"
    );
    let out = server.cli(&["webhook", "rm", id]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout.contains(&format!("deleted webhook {id}")) && out.stdout.contains("up to seq"),
        "{out:?}"
    );
    let out = server.cli(&["webhook", "rm", id]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("no webhook"), "{out:?}");
}
