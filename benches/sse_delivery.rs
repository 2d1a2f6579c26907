//! Event delivery over SSE under load, against the real release binary.
//!
//! `cargo bench --bench sse_delivery` (the bench profile is release, so Cargo
//! builds `target/release/aliasd` and hands its path over as
//! `CARGO_BIN_EXE_aliasd`). The store and journal live under
//! `CARGO_TARGET_TMPDIR` (`target/tmp`, on the same disk as the checkout), so
//! the journal's fsync costs what it costs there, never a tmpfs.
//! The bench holds about 1,000 sockets: if `ulimit -n` is 1024 or less, run it
//! as `bash -c 'ulimit -n 4096; cargo bench --bench sse_delivery'`.
//!
//! 1. **Delivery latency.** 1,000 subscribers on `/api/events` (tokio tasks on
//!    two threads, one socket each), and 1,000 `PUT`s per second for 5 s, paced
//!    open-loop from 8 writer threads (each write has a due time; a late one is
//!    sent at once). For every (subscriber, event) delivery, the latency is the
//!    time from the `PUT` being sent (and, second figure, from its response
//!    having been read) to the subscriber reading the event's `id:` line.
//!    Prints median, p99, p99.9 and max. Target: p99 < 50 ms.
//! 2. **A stalled subscriber does not slow writers.** Unpaced `PUT`s from 8
//!    threads for 3 s with no subscriber, then 3 s with one subscriber whose
//!    socket is never read, twice each, alternating (A B A B) on the same
//!    server. Prints writes/s of each and the ratio. Target: within 10%.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Defaults; `-- --subscribers N --rate R --seconds S` override them.
const SUBSCRIBERS: usize = 1_000;
const WRITE_RATE: u64 = 1_000;
const WRITE_SECONDS: u64 = 5;
const WRITERS: usize = 8;
const THROUGHPUT_PHASE: Duration = Duration::from_secs(3);
const TIMEOUT: Duration = Duration::from_secs(30);

/// What one run measures.
#[derive(Debug, Clone, Copy)]
struct Load {
    subscribers: usize,
    rate: u64,
    seconds: u64,
}

impl Load {
    /// The defaults, overridden by `--subscribers N`, `--rate R`, `--seconds S`.
    fn from_args() -> Load {
        let mut load = Load {
            subscribers: SUBSCRIBERS,
            rate: WRITE_RATE,
            seconds: WRITE_SECONDS,
        };
        let args: Vec<String> = std::env::args().collect();
        for pair in args.windows(2) {
            let value = || pair[1].parse().expect("a number");
            match pair[0].as_str() {
                "--subscribers" => load.subscribers = value() as usize,
                "--rate" => load.rate = value(),
                "--seconds" => load.seconds = value(),
                _ => {}
            }
        }
        load
    }

    fn writes(&self) -> usize {
        (self.rate * self.seconds) as usize
    }
}

fn main() {
    let load = Load::from_args();
    let base = tempfile::Builder::new()
        .prefix("aliasd-sse-delivery")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("tempdir");
    let models = base.path().join("models");
    write_model(&models, "m");
    let server = Server::start(&models, &base.path().join("journal"), base.path(), load);
    println!(
        "aliasd {} (pid {}) on {}, store+journal in {}",
        env!("CARGO_BIN_EXE_aliasd"),
        server.child.id(),
        server.addr,
        base.path().display()
    );
    println!(
        "load: {} subscribers, {} writes/s for {} s",
        load.subscribers, load.rate, load.seconds
    );

    delivery_latency(server.addr, load);
    stalled_subscriber_throughput(server.addr);
    server.stop();
}

// ---------------------------------------------------------------------------
// 1. Delivery latency.
// ---------------------------------------------------------------------------

/// Per subscriber: (seq, microseconds since the bench epoch) of each event read.
type Deliveries = Vec<(u32, u32)>;

fn delivery_latency(addr: SocketAddr, load: Load) {
    let epoch = Instant::now();
    let n_writes = load.writes();
    let subscribers = load.subscribers;
    let base_seq = healthz_seq(addr);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let connected = Arc::new(AtomicUsize::new(0));
    let last_seq = base_seq + n_writes as u64;
    let handles: Vec<_> = (0..subscribers)
        .map(|_| {
            let connected = connected.clone();
            runtime.spawn(subscriber(addr, epoch, last_seq, n_writes, connected))
        })
        .collect();
    let deadline = Instant::now() + TIMEOUT;
    while connected.load(Ordering::SeqCst) < subscribers {
        assert!(Instant::now() < deadline, "subscribers did not connect");
        std::thread::sleep(Duration::from_millis(10));
    }
    println!(
        "{subscribers} subscribers connected in {:.2} s",
        epoch.elapsed().as_secs_f64()
    );

    // seq -> (sent, acked), microseconds since the epoch.
    let writes: Arc<Mutex<HashMap<u64, (u32, u32)>>> = Arc::default();
    let start = Instant::now() + Duration::from_millis(100);
    let interval = Duration::from_micros(1_000_000 / load.rate);
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let writes = writes.clone();
            std::thread::spawn(move || {
                for i in (w..n_writes).step_by(WRITERS) {
                    let due = start + interval * i as u32;
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    let sent = micros(epoch);
                    let seq = put(addr, &format!("lat{i}"), "m");
                    let acked = micros(epoch);
                    writes.lock().unwrap().insert(seq, (sent, acked));
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().expect("writer");
    }
    let write_span = start.elapsed();
    let deliveries: Vec<Deliveries> = runtime.block_on(async {
        let mut all = Vec::with_capacity(subscribers);
        for handle in handles {
            all.push(handle.await.expect("subscriber task"));
        }
        all
    });
    runtime.shutdown_timeout(Duration::from_secs(1));

    let writes = writes.lock().unwrap();
    assert_eq!(writes.len(), n_writes);
    let mut from_sent = Vec::with_capacity(subscribers * n_writes);
    let mut from_ack = Vec::with_capacity(subscribers * n_writes);
    let mut before_ack = 0usize;
    for (idx, subscriber) in deliveries.iter().enumerate() {
        assert_eq!(
            subscriber.len(),
            n_writes,
            "subscriber {idx} got {} of {n_writes} events",
            subscriber.len()
        );
        for (expected, (seq, at)) in (base_seq + 1..).zip(subscriber) {
            assert_eq!(u64::from(*seq), expected, "subscriber {idx}: out of order");
            let (sent, acked) = writes[&expected];
            from_sent.push(at.saturating_sub(sent));
            if *at < acked {
                before_ack += 1;
            }
            from_ack.push(at.saturating_sub(acked));
        }
    }
    println!(
        "{n_writes} writes in {:.2} s ({:.0}/s), {} deliveries, every subscriber got every event in order",
        write_span.as_secs_f64(),
        n_writes as f64 / write_span.as_secs_f64(),
        from_sent.len()
    );
    print_latency("write sent -> delivered", &mut from_sent);
    print_latency("write acked -> delivered", &mut from_ack);
    println!(
        "  ({:.1}% of deliveries arrived before the writer had read its response)",
        100.0 * before_ack as f64 / from_ack.len() as f64
    );
}

fn print_latency(what: &str, micros: &mut [u32]) {
    micros.sort_unstable();
    let at = |q: f64| micros[((micros.len() as f64 - 1.0) * q).round() as usize] as f64 / 1000.0;
    println!(
        "  {what}: median {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        at(0.5),
        at(0.9),
        at(0.99),
        at(0.999),
        at(1.0)
    );
}

fn micros(epoch: Instant) -> u32 {
    epoch.elapsed().as_micros() as u32
}

/// One subscriber: reads until it has seen `last_seq`, recording each event's
/// seq and arrival time.
async fn subscriber(
    addr: SocketAddr,
    epoch: Instant,
    last_seq: u64,
    n_writes: usize,
    connected: Arc<AtomicUsize>,
) -> Deliveries {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    // tokio's `io-util` is not among the crate's features: readiness + try_*.
    let request = format!("GET /api/events HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    let mut written = 0;
    while written < request.len() {
        stream.writable().await.expect("writable");
        match stream.try_write(&request.as_bytes()[written..]) {
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("subscribing: {e}"),
        }
    }
    let mut deliveries = Vec::with_capacity(n_writes);
    let mut pending: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut buf = vec![0u8; 64 * 1024];
    let mut in_body = false;
    loop {
        let n = loop {
            tokio::time::timeout(TIMEOUT, stream.readable())
                .await
                .expect("no event within the timeout")
                .expect("readable");
            match stream.try_read(&mut buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("reading events: {e}"),
            }
        };
        assert!(n > 0, "stream closed early");
        let at = micros(epoch);
        pending.extend_from_slice(&buf[..n]);
        if !in_body {
            let Some(end) = find(&pending, b"\r\n\r\n") else {
                continue;
            };
            assert!(pending.starts_with(b"HTTP/1.1 200"), "subscribing failed");
            pending.drain(..end + 4);
            in_body = true;
            connected.fetch_add(1, Ordering::SeqCst);
        }
        // Each event is one chunk, so its `id:` line is never split by chunk
        // framing; only whole lines are parsed, the rest waits for more bytes.
        let Some(last_newline) = pending.iter().rposition(|&b| b == b'\n') else {
            continue;
        };
        for line in pending[..last_newline].split(|&b| b == b'\n') {
            if let Some(id) = line.strip_prefix(b"id: ") {
                let seq: u32 = std::str::from_utf8(id)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .expect("numeric id");
                deliveries.push((seq, at));
                if u64::from(seq) >= last_seq {
                    return deliveries;
                }
            }
        }
        pending.drain(..=last_newline);
    }
}

// ---------------------------------------------------------------------------
// 2. Throughput with a stalled subscriber.
// ---------------------------------------------------------------------------

fn stalled_subscriber_throughput(addr: SocketAddr) {
    let mut no_subscriber = Vec::new();
    let mut stalled = Vec::new();
    let mut next_alias = 0usize;
    for round in 0..2 {
        let rate = flat_out(addr, &mut next_alias);
        println!("  round {round}: no subscriber      {rate:.0} writes/s");
        no_subscriber.push(rate);

        // A subscriber that reads its response head and then nothing, ever.
        let mut socket = TcpStream::connect(addr).expect("connect");
        write!(socket, "GET /api/events HTTP/1.1\r\nHost: {addr}\r\n\r\n").expect("subscribe");
        let mut head = [0u8; 12];
        socket.read_exact(&mut head).expect("head");
        assert_eq!(&head, b"HTTP/1.1 200");
        let rate = flat_out(addr, &mut next_alias);
        println!("  round {round}: 1 stalled subscriber {rate:.0} writes/s");
        stalled.push(rate);
        drop(socket);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    println!(
        "writer throughput: no subscriber {:.0}/s, one stalled subscriber {:.0}/s, ratio {:.3}",
        mean(&no_subscriber),
        mean(&stalled),
        mean(&stalled) / mean(&no_subscriber)
    );
}

/// PUTs from `WRITERS` threads as fast as they go for `THROUGHPUT_PHASE`;
/// returns writes per second.
fn flat_out(addr: SocketAddr, next_alias: &mut usize) -> f64 {
    let counter = Arc::new(AtomicUsize::new(*next_alias));
    let start = Instant::now();
    let end = start + THROUGHPUT_PHASE;
    let threads: Vec<_> = (0..WRITERS)
        .map(|_| {
            let counter = counter.clone();
            std::thread::spawn(move || {
                let mut n = 0usize;
                while Instant::now() < end {
                    let i = counter.fetch_add(1, Ordering::Relaxed);
                    put(addr, &format!("tp{i}"), "m");
                    n += 1;
                }
                n
            })
        })
        .collect();
    let total: usize = threads.into_iter().map(|t| t.join().expect("writer")).sum();
    *next_alias = counter.load(Ordering::Relaxed);
    total as f64 / start.elapsed().as_secs_f64()
}

// ---------------------------------------------------------------------------
// Plumbing.
// ---------------------------------------------------------------------------

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `PUT /api/aliases/{alias}`; returns the seq of its event.
fn put(addr: SocketAddr, alias: &str, target: &str) -> u64 {
    let body = format!(r#"{{"target":"{target}"}}"#);
    let response = request(
        addr,
        &format!("PUT /api/aliases/{alias} HTTP/1.1"),
        Some(body.as_bytes()),
    );
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");
    let json = &response[response.find("\r\n\r\n").expect("body") + 4..];
    let value: serde_json::Value = serde_json::from_str(json).expect("JSON body");
    value["seq"].as_u64().expect("seq")
}

fn healthz_seq(addr: SocketAddr) -> u64 {
    let response = request(addr, "GET /healthz HTTP/1.1", None);
    let json = &response[response.find("\r\n\r\n").expect("body") + 4..];
    let value: serde_json::Value = serde_json::from_str(json).expect("JSON body");
    value["seq"].as_u64().expect("seq")
}

/// One request (`Connection: close`); returns the whole response as text.
fn request(addr: SocketAddr, line: &str, body: Option<&[u8]>) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    stream.set_nodelay(true).expect("nodelay");
    let mut head = format!("{line}\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(body) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    let mut message = head.into_bytes();
    message.extend_from_slice(body.unwrap_or_default());
    stream.write_all(&message).expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    response
}

/// Writes a model (two blobs and a manifest) into the store.
fn write_model(models: &Path, name: &str) {
    let blobs = models.join("blobs");
    let manifest = models.join(format!(
        "manifests/registry.ollama.ai/library/{name}/latest"
    ));
    std::fs::create_dir_all(&blobs).expect("mkdir blobs");
    std::fs::create_dir_all(manifest.parent().expect("parent")).expect("mkdir manifests");
    let blob = |content: &[u8]| {
        let hex = aliasd::digest::sha256_hex(content);
        std::fs::write(blobs.join(format!("sha256-{hex}")), content).expect("write blob");
        (format!("sha256:{hex}"), content.len())
    };
    let (config, config_size) = blob(format!(r#"{{"model":"{name}"}}"#).as_bytes());
    let (weights, weights_size) = blob(format!("weights of {name}").as_bytes());
    let bytes = format!(
        concat!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","#,
            r#""config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{}","size":{}}},"#,
            r#""layers":[{{"mediaType":"application/vnd.ollama.image.model","digest":"{}","size":{}}}]}}"#
        ),
        config, config_size, weights, weights_size
    );
    std::fs::write(manifest, bytes).expect("write manifest");
}

/// The release binary serving the store; killed on drop.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(models: &Path, journal: &Path, logs: &Path, load: Load) -> Server {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log = logs.join("aliasd.log");
        let child = Command::new(env!("CARGO_BIN_EXE_aliasd"))
            .arg("serve")
            .arg("--models")
            .arg(models)
            .arg("--journal")
            .arg(journal)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--max-subscribers")
            .arg((load.subscribers + 100).to_string())
            .env("ALIASD_LOG", "warn")
            .env_remove("ALIASD_POLL_MS")
            .env_remove("ALIASD_TOKENS")
            .env_remove("ALIASD_READ_TOKENS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn aliasd serve");
        let mut server = Server { child, addr };
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = server.child.try_wait().expect("try_wait") {
                panic!(
                    "aliasd exited with {status}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if TcpStream::connect(addr).is_ok()
                && request(addr, "GET /healthz HTTP/1.1", None).starts_with("HTTP/1.1 200")
            {
                return server;
            }
            assert!(Instant::now() < deadline, "aliasd not ready");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
