//! Webhook delivery beside the event stream, on the real binary (issue 20).
//!
//! Starts `aliasd serve` on a temp store, a receiver (axum on loopback) for one
//! webhook, and one SSE subscriber, then:
//! 1. throughput: `BURST` creates from 8 clients at once; events/s delivered
//!    to the receiver and to the subscriber, from the first create sent to
//!    the last event received;
//! 2. latency at 100 events/s: `PACED` creates 10 ms apart; each event's time
//!    from its create being sent to its arrival, p50/p99, webhook and SSE;
//! 3. the same beside a failing webhook (its receiver answers 500; retried
//!    every 20 ms, the shortened retry times below), then again once it is
//!    deleted, so the healthy webhook's latency is compared in one run; and
//!    how much later than the SSE subscriber the webhook got each event (the
//!    write path, shared by both, left out).
//!
//! `cargo bench --bench webhooks` (release build). Figures: benches/README.md.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BURST: usize = 2_000;
const PACED: usize = 500;

type Arrivals = Arc<Mutex<HashMap<u64, Instant>>>;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}

async fn run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = dir
        .path()
        .join("models/manifests/registry.ollama.ai/library/llama3");
    std::fs::create_dir_all(&model).expect("mkdir");
    std::fs::write(model.join("latest"), br#"{"schemaVersion":2,"layers":[]}"#).expect("model");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let mut server = std::process::Command::new(env!("CARGO_BIN_EXE_aliasd"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--models",
        ])
        .arg(dir.path().join("models"))
        .arg("--journal")
        .arg(dir.path().join("journal"))
        .env("ALIASD_LOG", "warn")
        // Phase 3's failing webhook retries often (phases 1 and 2 see no failure).
        .env("ALIASD_WEBHOOK_FIRST_RETRY_MS", "20")
        .env("ALIASD_WEBHOOK_FAILING_AFTER_MS", "200")
        .env("ALIASD_WEBHOOK_FAILING_RETRY_MS", "20")
        .spawn()
        .expect("start aliasd");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    for _ in 0..200 {
        if client.get(format!("{base}/healthz")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    // The receiver: records when each seq arrived.
    let hooked: Arrivals = Arc::default();
    let receiver = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let receiver_addr = receiver.local_addr().expect("addr");
    let failed_attempts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let app = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post({
                let hooked = hooked.clone();
                move |body: axum::body::Bytes| async move {
                    let event: serde_json::Value =
                        serde_json::from_slice(&body).unwrap_or_default();
                    if let Some(seq) = event["seq"].as_u64() {
                        hooked.lock().unwrap().insert(seq, Instant::now());
                    }
                    "ok"
                }
            }),
        )
        .route(
            "/fail",
            axum::routing::post({
                let failed_attempts = failed_attempts.clone();
                move || async move {
                    failed_attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR
                }
            }),
        );
    tokio::spawn(async move { axum::serve(receiver, app).await });
    let created = client
        .post(format!("{base}/api/webhooks"))
        .body(serde_json::json!({ "url": format!("http://{receiver_addr}/hook") }).to_string())
        .send()
        .await
        .expect("create webhook");
    assert_eq!(created.status(), 201, "{:?}", created.text().await);

    // One SSE subscriber: records when each seq arrived.
    let streamed: Arrivals = Arc::default();
    let mut stream = client
        .get(format!("{base}/api/events"))
        .send()
        .await
        .expect("subscribe");
    tokio::spawn({
        let streamed = streamed.clone();
        async move {
            let mut pending = Vec::new();
            while let Ok(Some(chunk)) = stream.chunk().await {
                pending.extend_from_slice(&chunk);
                while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
                    let frame: Vec<u8> = pending.drain(..end + 2).collect();
                    let text = String::from_utf8_lossy(&frame);
                    if let Some(seq) = text
                        .lines()
                        .find_map(|l| l.strip_prefix("id: "))
                        .and_then(|s| s.trim().parse::<u64>().ok())
                    {
                        streamed.lock().unwrap().insert(seq, Instant::now());
                    }
                }
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;

    // 1. Throughput.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let (client, base) = (client.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            for i in (worker..BURST).step_by(8) {
                let resp = client
                    .put(format!("{base}/api/aliases/burst{i}"))
                    .body(r#"{"target":"llama3"}"#)
                    .send()
                    .await
                    .expect("put");
                assert_eq!(resp.status(), 201);
            }
        }));
    }
    for task in tasks {
        task.await.expect("burst");
    }
    let hook_last = wait_all(&hooked, 1..=BURST as u64).await;
    let sse_last = wait_all(&streamed, 1..=BURST as u64).await;
    let rate = |last: Instant| BURST as f64 / (last - started).as_secs_f64();
    println!(
        "burst of {BURST} creates (8 clients): webhook {:.0} events/s, SSE {:.0} events/s delivered",
        rate(hook_last),
        rate(sse_last)
    );

    // 2. Latency at 100 events/s; 3. beside a failing webhook, then without
    // it again.
    let mut next_seq = BURST as u64 + 1;
    let mut paced = |label: &'static str| {
        let (client, base, hooked, streamed) = (
            client.clone(),
            base.clone(),
            hooked.clone(),
            streamed.clone(),
        );
        let first = next_seq;
        next_seq += PACED as u64;
        async move { paced_latency(&client, &base, &hooked, &streamed, first, label).await }
    };
    paced("alone").await;
    let failing = client
        .post(format!("{base}/api/webhooks"))
        .body(serde_json::json!({ "url": format!("http://{receiver_addr}/fail") }).to_string())
        .send()
        .await
        .expect("create webhook");
    assert_eq!(failing.status(), 201);
    let failing: serde_json::Value =
        serde_json::from_slice(&failing.bytes().await.expect("body")).expect("json");
    let before = failed_attempts.load(std::sync::atomic::Ordering::Relaxed);
    paced("beside a failing webhook").await;
    let attempts = failed_attempts.load(std::sync::atomic::Ordering::Relaxed) - before;
    println!("(the failing webhook was attempted {attempts} times meanwhile)");
    let deleted = client
        .delete(format!(
            "{base}/api/webhooks/{}",
            failing["id"].as_str().expect("id")
        ))
        .send()
        .await
        .expect("delete webhook");
    assert_eq!(deleted.status(), 200);
    paced("alone again").await;
    let _ = server.kill();
    let _ = server.wait();
}

/// `PACED` creates at 100/s, whose events are `first..`; prints the time
/// from each create being sent to its arrival, p50/p99, webhook and SSE.
async fn paced_latency(
    client: &reqwest::Client,
    base: &str,
    hooked: &Arrivals,
    streamed: &Arrivals,
    first: u64,
    label: &str,
) {
    let mut sent = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    for i in 0..PACED {
        tick.tick().await;
        let at = Instant::now();
        let resp = client
            .put(format!("{base}/api/aliases/paced-{first}-{i}"))
            .body(r#"{"target":"llama3"}"#)
            .send()
            .await
            .expect("put");
        let alias: serde_json::Value =
            serde_json::from_slice(&resp.bytes().await.expect("body")).expect("json");
        sent.insert(alias["seq"].as_u64().expect("seq"), at);
    }
    let last = first + PACED as u64 - 1;
    wait_all(hooked, first..=last).await;
    wait_all(streamed, first..=last).await;
    for (name, arrivals) in [("webhook", hooked), ("SSE", streamed)] {
        let arrivals = arrivals.lock().unwrap();
        let mut latencies: Vec<Duration> = sent
            .iter()
            .map(|(seq, at)| arrivals[seq].saturating_duration_since(*at))
            .collect();
        latencies.sort();
        let pick = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
        println!(
            "{PACED} creates at 100/s, {label}, create sent -> {name} delivered: p50 {:.1} ms, p99 {:.1} ms",
            pick(0.5).as_secs_f64() * 1e3,
            pick(0.99).as_secs_f64() * 1e3
        );
    }
    // Without the write path (shared by both): how much later than the SSE
    // subscriber the webhook's receiver got each event.
    let (hooked, streamed) = (hooked.lock().unwrap(), streamed.lock().unwrap());
    let mut behind: Vec<Duration> = sent
        .keys()
        .map(|seq| hooked[seq].saturating_duration_since(streamed[seq]))
        .collect();
    behind.sort();
    let pick = |q: f64| behind[((behind.len() - 1) as f64 * q) as usize];
    println!(
        "{PACED} creates at 100/s, {label}, webhook delivered after SSE by: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pick(0.5).as_secs_f64() * 1e3,
        pick(0.99).as_secs_f64() * 1e3,
        pick(1.0).as_secs_f64() * 1e3
    );
}

/// Waits until every seq in `seqs` has arrived; returns the latest arrival.
async fn wait_all(arrivals: &Arrivals, seqs: std::ops::RangeInclusive<u64>) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        {
            let arrivals = arrivals.lock().unwrap();
            if seqs.clone().all(|seq| arrivals.contains_key(&seq)) {
                return seqs.clone().map(|seq| arrivals[&seq]).max().expect("some");
            }
        }
        assert!(Instant::now() < deadline, "events did not all arrive");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
