//! Webhooks (SPEC §9, issue 20), the gaps closed later: a failing, hanging
//! or dead receiver never holds up a healthy webhook; a webhook deleted
//! while it retries or waits on a receiver stops at once and answers
//! `disabled`; a URL that comes to reach aliasd's own listener (a restart
//! onto its port, a name resolving to it) is refused at every attempt, not
//! only at creation. The receiver and helpers are `webhooks.rs`'.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Child;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{aliasd, http, tempdir, wait_for, Server, TestStore, WAIT};
use crate::webhooks::{add_webhook, assert_in_order, free_port, wait_all, Receiver};

/// The longest a healthy webhook may take to deliver an event after its
/// write was answered, whatever the other webhooks' receivers do: a bound
/// against a stall, not a speed goal.
const HEALTHY_BOUND: Duration = Duration::from_secs(1);

#[test]
fn failing_hanging_and_dead_receivers_never_hold_up_a_healthy_webhook() {
    let server = Server::builder(TestStore::with_models(&["m1"]))
        .env("ALIASD_WEBHOOK_FIRST_RETRY_MS", "20")
        .env("ALIASD_WEBHOOK_FAILING_AFTER_MS", "500")
        .env("ALIASD_WEBHOOK_FAILING_RETRY_MS", "20")
        .start();
    let healthy = Receiver::start();
    let (_, secret) = add_webhook(&server, json!({ "url": healthy.url("ok") }));
    healthy.expect_secret("ok", &secret);
    // Beside it: a receiver answering 500 (retried every 20 ms once
    // `failing`), one that never answers (each attempt waits out the 10 s
    // timeout), and a port nobody listens on.
    let broken = Receiver::start();
    broken.inbox.status.store(500, Ordering::SeqCst);
    let (bad_id, bad_secret) = add_webhook(&server, json!({ "url": broken.url("bad") }));
    broken.expect_secret("bad", &bad_secret);
    let hanging = Hanging::start();
    add_webhook(
        &server,
        json!({ "url": format!("http://{}/hang", hanging.addr) }),
    );
    add_webhook(
        &server,
        json!({ "url": format!("http://127.0.0.1:{}/dead", free_port()) }),
    );

    let mut written = Vec::new();
    for i in 0..150 {
        let seq = server.create(&format!("h{i}"), "m1")["seq"]
            .as_u64()
            .unwrap();
        written.push((seq, Instant::now()));
        std::thread::sleep(Duration::from_millis(5));
    }
    let (first, last) = (written[0].0, written.last().unwrap().0);
    let got = wait_all(&healthy, "ok", first..=last);
    assert_eq!(assert_in_order(&got, first), 0);
    let mut latencies: Vec<Duration> = written
        .iter()
        .map(|(seq, at)| {
            let delivered = got.iter().find(|g| g.seq == *seq).unwrap().at;
            delivered.saturating_duration_since(*at)
        })
        .collect();
    latencies.sort();
    let worst = *latencies.last().unwrap();
    eprintln!(
        "healthy webhook beside failing, hanging and dead ones: write answered -> delivered p50 {:?}, p99 {:?}, max {worst:?}",
        latencies[latencies.len() / 2],
        latencies[latencies.len() * 99 / 100]
    );
    assert!(
        worst < HEALTHY_BOUND,
        "the healthy webhook waited {worst:?} for a delivery"
    );
    assert_eq!(
        hanging.requests.load(Ordering::SeqCst),
        1,
        "one attempt, still waiting"
    );

    // The failing one retried all along, is `failing`, and once its
    // receiver answers 2xx it delivers everything, in order, and is
    // `active` again (that state is written to its file).
    assert!(broken.got("bad").len() >= 10, "{:?}", broken.got("bad"));
    wait_for("state failing", WAIT, || {
        (server.get(&format!("/api/webhooks/{bad_id}")).json["state"] == "failing").then_some(())
    });
    broken.inbox.status.store(200, Ordering::SeqCst);
    let got = wait_all(&broken, "bad", first..=last);
    assert_in_order(&got, first);
    wait_for("state active", WAIT, || {
        (server.get(&format!("/api/webhooks/{bad_id}")).json["state"] == "active").then_some(())
    });
    let file = server
        .journal_dir()
        .join("webhooks")
        .join(format!("{bad_id}.json"));
    wait_for("state active on disk", WAIT, || {
        let stored: Value = serde_json::from_slice(&std::fs::read(&file).ok()?).ok()?;
        (stored["state"] == "active" && stored["failing_since"].is_null()).then_some(())
    });
    assert_eq!(healthy.inbox.bad_signatures.load(Ordering::SeqCst), 0);
    assert_eq!(broken.inbox.bad_signatures.load(Ordering::SeqCst), 0);
}

/// Asserts `DELETE /api/webhooks/{id}` answers 200 with the webhook left
/// `disabled`, and that it is gone afterwards.
#[track_caller]
fn delete_disabled(server: &Server, id: &str) {
    let resp = server.delete(&format!("/api/webhooks/{id}"));
    let answer = resp.expect(200);
    assert_eq!(answer["deleted"], true, "{resp:?}");
    assert_eq!(answer["webhook"]["id"], id, "{resp:?}");
    assert_eq!(answer["webhook"]["state"], "disabled", "{resp:?}");
    assert!(answer["webhook"]["cursor"].is_u64(), "{resp:?}");
    assert!(answer["webhook"].get("secret").is_none(), "{resp:?}");
    for path in [
        format!("/api/webhooks/{id}"),
        format!("/api/webhooks/{id}/deliveries"),
    ] {
        server.get(&path).expect_error(404, "no webhook");
    }
}

#[test]
fn a_webhook_deleted_while_it_retries_stops_at_once() {
    // Retries after 400 ms, then 800 (each +-25%): the delete, sent as the
    // second attempt is seen, falls in a wait.
    let server = Server::builder(TestStore::with_models(&["m1"]))
        .env("ALIASD_WEBHOOK_FIRST_RETRY_MS", "400")
        .start();
    let broken = Receiver::start();
    broken.inbox.status.store(500, Ordering::SeqCst);
    let (id, _) = add_webhook(&server, json!({ "url": broken.url("retrying") }));
    server.create("a", "m1");
    wait_for("two attempts", WAIT, || {
        (broken.got("retrying").len() >= 2).then_some(())
    });
    delete_disabled(&server, &id);
    let at_delete = broken.got("retrying").len();
    // Past the next retry's time (at most 1.25 x 800 ms after the second).
    std::thread::sleep(Duration::from_millis(1_500));
    assert_eq!(
        broken.got("retrying").len(),
        at_delete,
        "a POST after the DELETE was answered"
    );
    assert!(!server
        .journal_dir()
        .join("webhooks")
        .join(format!("{id}.json"))
        .exists());
}

/// A receiver that reads each request and never answers; it records each
/// request, and when aliasd closes the connection (EOF).
struct Hanging {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    closed: Arc<Mutex<Vec<Instant>>>,
}

impl Hanging {
    fn start() -> Hanging {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(Mutex::new(Vec::new()));
        let (counted, eofs) = (requests.clone(), closed.clone());
        // Detached: it ends with the test process.
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let (counted, eofs) = (counted.clone(), eofs.clone());
                std::thread::spawn(move || {
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 4096];
                    let mut counted_this = false;
                    loop {
                        match stream.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                        if !counted_this && seen.windows(4).any(|w| w == b"\r\n\r\n") {
                            counted_this = true;
                            counted.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    eofs.lock().unwrap().push(Instant::now());
                });
            }
        });
        Hanging {
            addr,
            requests,
            closed,
        }
    }
}

#[test]
fn a_webhook_deleted_while_its_receiver_hangs_aborts_the_request() {
    let server = Server::builder(TestStore::with_models(&["m1"])).start();
    let hanging = Hanging::start();
    let (id, _) = add_webhook(
        &server,
        json!({ "url": format!("http://{}/hang", hanging.addr) }),
    );
    server.create("a", "m1");
    wait_for("the request", WAIT, || {
        (hanging.requests.load(Ordering::SeqCst) == 1).then_some(())
    });
    std::thread::sleep(Duration::from_millis(200));
    let asked = Instant::now();
    delete_disabled(&server, &id);
    let answered = asked.elapsed();
    // Well within the 10 s an attempt may wait for an answer.
    assert!(
        answered < Duration::from_secs(5),
        "DELETE took {answered:?}"
    );
    let closed = wait_for("the connection closed", Duration::from_secs(5), || {
        hanging.closed.lock().unwrap().first().copied()
    });
    eprintln!(
        "hanging receiver: DELETE answered in {answered:?}, connection closed {:?} after it was asked",
        closed.saturating_duration_since(asked)
    );
    server.create("b", "m1");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(hanging.requests.load(Ordering::SeqCst), 1);
}

/// `aliasd serve` run by hand on a port of the test's choosing; killed on drop.
struct OnPort {
    child: Child,
    addr: SocketAddr,
    log: std::path::PathBuf,
    _logs: tempfile::TempDir,
}

impl OnPort {
    fn start(store: &Path, journal: &Path, port: u16) -> OnPort {
        let logs = tempdir("aliasd-it-onport");
        let log = logs.path().join("stderr.log");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let child = aliasd()
            .arg("serve")
            .arg("--models")
            .arg(store)
            .arg("--journal")
            .arg(journal)
            .arg("--listen")
            .arg(addr.to_string())
            .env("ALIASD_LOG", "info")
            .env("ALIASD_WEBHOOK_FIRST_RETRY_MS", "50")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn aliasd serve");
        let mut server = OnPort {
            child,
            addr,
            log,
            _logs: logs,
        };
        wait_for("aliasd on its port", WAIT, || {
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("aliasd exited with {status}:\n{}", server.stderr());
            }
            (TcpStream::connect(addr).is_ok() && server.get("/healthz").status == 200).then_some(())
        });
        server
    }

    fn get(&self, path: &str) -> crate::support::Resp {
        http(self.addr, "GET", path, &[], None)
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for OnPort {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_url_that_comes_to_reach_the_listener_is_refused_at_each_attempt() {
    let journal = tempdir("aliasd-it-loop-journal");
    let mut server = Server::builder(TestStore::with_models(&["m1"]))
        .journal(journal.path())
        .start();
    // A port nobody listens on now: fine for a webhook at creation...
    let port = free_port();
    let (by_name, _) = add_webhook(
        &server,
        json!({ "url": format!("http://localhost:{port}/by-name") }),
    );
    let (by_addr, _) = add_webhook(
        &server,
        json!({ "url": format!("http://127.0.0.1:{port}/by-addr") }),
    );
    server.stop();
    // ...until aliasd itself is restarted on that port.
    let onport = OnPort::start(&server.store.root(), journal.path(), port);
    let resp = http(
        onport.addr,
        "PUT",
        "/api/aliases/looped",
        &[("Content-Type", "application/json")],
        Some(br#"{"target":"m1"}"#),
    );
    resp.expect(201);
    for id in [&by_name, &by_addr] {
        let attempts = wait_for(&format!("attempts of {id}"), WAIT, || {
            let attempts = onport.get(&format!("/api/webhooks/{id}/deliveries")).json["deliveries"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            (attempts.len() >= 2).then_some(attempts)
        });
        for attempt in &attempts {
            assert!(attempt["status"].is_null(), "{attempt}");
            let error = attempt["error"].as_str().unwrap_or_default();
            assert!(
                error.contains("reaches this aliasd itself")
                    && error.contains(&format!("127.0.0.1:{port}")),
                "{attempt}"
            );
        }
    }
    // Nothing was POSTed to aliasd: no request it could not route.
    let stderr = onport.stderr();
    assert!(
        !stderr.contains("method=POST route=unmatched"),
        "a delivery reached aliasd itself:\n{stderr}"
    );
    // Both are still listed (a user may point them elsewhere).
    let listed = onport.get("/api/webhooks");
    assert_eq!(listed.expect(200)["webhooks"].as_array().unwrap().len(), 2);
}
