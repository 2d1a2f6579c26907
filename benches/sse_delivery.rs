//! Event delivery over SSE under load, against the real release binary.
//!
//! `cargo bench --bench sse_delivery` (the bench profile is release, so Cargo
//! builds `target/release/aliasd` and hands its path over as
//! `CARGO_BIN_EXE_aliasd`). The store and journal live under
//! `CARGO_TARGET_TMPDIR` (`target/tmp`, on the same disk as the checkout), so
//! the journal's fsync costs what it costs there, never a tmpfs. They are left
//! there after the run (see `main`); delete them when done benchmarking.
//! The bench holds about 1,000 sockets: if `ulimit -n` is 1024 or less, run it
//! as `bash -c 'ulimit -n 4096; cargo bench --bench sse_delivery'`.
//!
//! 1. **Delivery latency.** 1,000 subscribers on `/api/events` (tokio tasks on
//!    two threads, one socket each), and 1,000 `PUT`s per second for 5 s, paced
//!    open-loop from 32 writer threads (each write has a due time; a late one is
//!    sent at once). For every (subscriber, event) delivery, the latency is the
//!    time from the `PUT` being sent (and, second figure, from its response
//!    having been read) to the subscriber reading the event's `id:` line.
//!    Prints median, p99, p99.9 and max. Target: p99 < 50 ms.
//! 2. **A stalled subscriber does not slow writers.** Unpaced `PUT`s from 8
//!    threads for 3 s with no subscriber, and 3 s with one subscriber whose
//!    socket is never read, four times each, alternating (A B B A A B B A) on
//!    the same server. Prints writes/s of each, the ratio of the means and the
//!    median and range of the per-round ratios. Target: within 10%.
//! 3. **Anchor: the same on etcd 3.4.** With aliasd stopped, the bench starts
//!    its own `etcd` (the first on `PATH`; Debian's `etcd-server`, as in
//!    `benches/compare.sh`) on free loopback ports, data dir under the same
//!    tempdir, and opens as many watchers on its JSON gateway
//!    (`POST /v3/watch` on the prefix `w/`, one socket each, same two threads)
//!    as phase 1 had subscribers. Once every watch is created, the same paced
//!    writes (same rate, seconds and 32 writer threads) go out as
//!    `POST /v3/kv/put` of `w/<i>` with a 100-byte value, one connection per
//!    request as in phase 1. Latencies are measured the same way, to the
//!    watcher reading the line with the key (the gateway sends one JSON object
//!    per line in a chunked response; a line can carry several events); every
//!    watcher must get every key exactly once. Prints the same lines as phase 1,
//!    prefixed `etcd:`, then the aliasd/etcd ratios of p99 and of the writes/s
//!    achieved. Skipped, with a line saying why, when `etcd` is not on `PATH`
//!    or with `-- --skip-etcd`.

use std::collections::HashMap;
use std::hash::Hash;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Defaults; `-- --subscribers N --rate R --seconds S` override them, and
/// `-- --skip-etcd` skips phase 3.
const SUBSCRIBERS: usize = 1_000;
const WRITE_RATE: u64 = 1_000;
const WRITE_SECONDS: u64 = 5;
const WRITERS: usize = 8;
/// Threads sending the paced writes of phases 1 and 3: enough that the rate is
/// reached even when a write takes 30 ms under load (with 8, writes that took
/// 12 ms held the rate to 500-640/s).
const PACED_WRITERS: usize = 32;
const THROUGHPUT_PHASE: Duration = Duration::from_secs(3);
/// Rounds of phase 2, each one run without and one with the stalled subscriber.
const THROUGHPUT_ROUNDS: usize = 4;
const TIMEOUT: Duration = Duration::from_secs(30);

/// What one run measures.
#[derive(Debug, Clone, Copy)]
struct Load {
    subscribers: usize,
    rate: u64,
    seconds: u64,
    /// Whether to run phase 3 (etcd), unless `etcd` is not on `PATH`.
    etcd: bool,
}

impl Load {
    /// The defaults, overridden by `--subscribers N`, `--rate R`, `--seconds S`,
    /// `--skip-etcd`.
    fn from_args() -> Load {
        let args: Vec<String> = std::env::args().collect();
        let mut load = Load {
            subscribers: SUBSCRIBERS,
            rate: WRITE_RATE,
            seconds: WRITE_SECONDS,
            etcd: !args.iter().any(|a| a == "--skip-etcd"),
        };
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
    // The store is left behind: deleting its ~30,000 files and directories makes
    // this disk's ext4 (no journal) skip the freed inodes on every file creation
    // for the next minutes, which slowed the writes of the next run 2-3x.
    let base = tempfile::Builder::new()
        .prefix("aliasd-sse-delivery")
        .disable_cleanup(true)
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("tempdir");
    let models = base.path().join("models");
    write_model(&models, "m");
    let server = Server::start(&models, &base.path().join("journal"), base.path(), load);
    println!(
        "aliasd {} (pid {}) on {}, store+journal in {}",
        aliasd_binary().display(),
        server.child.id(),
        server.addr,
        base.path().display()
    );
    println!(
        "load: {} subscribers, {} writes/s for {} s",
        load.subscribers, load.rate, load.seconds
    );

    let aliasd = delivery_latency(server.addr, load);
    stalled_subscriber_throughput(server.addr);
    server.stop();

    if !load.etcd {
        println!("etcd phase skipped: --skip-etcd");
    } else if let Some(binary) = on_path("etcd") {
        let etcd = etcd_delivery_latency(&binary, base.path(), load);
        println!(
            "aliasd/etcd: p99 write sent -> delivered {:.4}x, p99 write acked -> delivered {:.4}x, writes/s achieved {:.2}x",
            aliasd.p99_sent_ms / etcd.p99_sent_ms,
            aliasd.p99_acked_ms / etcd.p99_acked_ms,
            aliasd.writes_per_s / etcd.writes_per_s
        );
    } else {
        println!("etcd phase skipped: no `etcd` on PATH (Debian: apt-get install etcd-server)");
    }
    println!(
        "store left in {} (when done benchmarking: rm -rf {}/aliasd-sse-delivery*)",
        base.path().display(),
        env!("CARGO_TARGET_TMPDIR")
    );
}

// ---------------------------------------------------------------------------
// 1. Delivery latency.
// ---------------------------------------------------------------------------

/// Per subscriber: (seq, microseconds since the bench epoch) of each event read.
/// Per etcd watcher (phase 3): (write index, microseconds) of each key read.
type Deliveries = Vec<(u32, u32)>;

/// What a delivery-latency phase measured, for the closing aliasd/etcd line.
struct Delivery {
    writes_per_s: f64,
    p99_sent_ms: f64,
    p99_acked_ms: f64,
}

fn delivery_latency(addr: SocketAddr, load: Load) -> Delivery {
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
    let (writes, write_span) =
        paced_writes(load, epoch, move |i| put(addr, &format!("lat{i}"), "m"));
    let deliveries: Vec<Deliveries> = runtime.block_on(async {
        let mut all = Vec::with_capacity(subscribers);
        for handle in handles {
            all.push(handle.await.expect("subscriber task"));
        }
        all
    });
    runtime.shutdown_timeout(Duration::from_secs(1));

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
    report(
        "",
        "every subscriber got every event in order",
        &writes,
        write_span,
        &mut from_sent,
        &mut from_ack,
        before_ack,
    )
}

/// `load.writes()` writes paced open-loop from `PACED_WRITERS` threads: write `i` is
/// due `i / rate` after the start, and a late one is sent at once. `write(i)`
/// does write `i` and returns the key its deliveries are matched by. Returns
/// key -> (sent, acked) in microseconds since `epoch`, and the time from the
/// first due time to the last response.
fn paced_writes<K, W>(load: Load, epoch: Instant, write: W) -> (HashMap<K, (u32, u32)>, Duration)
where
    K: Eq + Hash + Send + 'static,
    W: Fn(usize) -> K + Send + Sync + 'static,
{
    let n_writes = load.writes();
    let write = Arc::new(write);
    let writes: Arc<Mutex<HashMap<K, (u32, u32)>>> = Arc::default();
    let start = Instant::now() + Duration::from_millis(100);
    let interval = Duration::from_micros(1_000_000 / load.rate);
    let writers: Vec<_> = (0..PACED_WRITERS)
        .map(|w| {
            let writes = writes.clone();
            let write = write.clone();
            std::thread::spawn(move || {
                for i in (w..n_writes).step_by(PACED_WRITERS) {
                    let due = start + interval * i as u32;
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    let sent = micros(epoch);
                    let key = write(i);
                    let acked = micros(epoch);
                    writes.lock().unwrap().insert(key, (sent, acked));
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().expect("writer");
    }
    let write_span = start.elapsed();
    let writes = std::mem::take(&mut *writes.lock().unwrap());
    (writes, write_span)
}

/// Prints a delivery-latency phase's lines (write latency, then delivery),
/// each after `prefix`; `writes` holds (sent, acked) per write; `checked`
/// says what was verified of the deliveries.
fn report<K>(
    prefix: &str,
    checked: &str,
    writes: &HashMap<K, (u32, u32)>,
    write_span: Duration,
    from_sent: &mut [u32],
    from_ack: &mut [u32],
    before_ack: usize,
) -> Delivery {
    let n_writes = writes.len();
    let writes_per_s = n_writes as f64 / write_span.as_secs_f64();
    let mut write_latency: Vec<u32> = writes.values().map(|(sent, acked)| acked - sent).collect();
    println!(
        "{prefix}{n_writes} writes in {:.2} s ({writes_per_s:.0}/s), {} deliveries, {checked}",
        write_span.as_secs_f64(),
        from_sent.len()
    );
    print_latency(&format!("{prefix}write sent -> acked"), &mut write_latency);
    let p99_sent_ms = print_latency(&format!("{prefix}write sent -> delivered"), from_sent);
    let p99_acked_ms = print_latency(&format!("{prefix}write acked -> delivered"), from_ack);
    println!(
        "  ({prefix}{:.1}% of deliveries arrived before the writer had read its response)",
        100.0 * before_ack as f64 / from_ack.len() as f64
    );
    Delivery {
        writes_per_s,
        p99_sent_ms,
        p99_acked_ms,
    }
}

/// Writes all of `bytes` (tokio's `io-util` is not among the crate's
/// features: readiness + `try_write`).
async fn send_all(stream: &tokio::net::TcpStream, bytes: &[u8], what: &str) {
    let mut written = 0;
    while written < bytes.len() {
        stream.writable().await.expect("writable");
        match stream.try_write(&bytes[written..]) {
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

/// Reads what is there (at least one byte, or 0 at the end of the stream);
/// panics if nothing comes within the timeout.
///
/// Through tokio's own `poll_read`: after a short read it forgets the socket's
/// readiness as of before the read, so the next call waits for new bytes
/// instead of making one more `read` that would block, and bytes that came
/// during the read still wake it. (Clearing it after the read instead could
/// drop the wake-up of bytes that came meanwhile: a stream then stalled.)
async fn read_some(stream: &mut tokio::net::TcpStream, buf: &mut [u8], what: &str) -> usize {
    use tokio::io::AsyncRead;
    let read = std::future::poll_fn(|cx| {
        let mut filled = tokio::io::ReadBuf::new(&mut buf[..]);
        std::pin::Pin::new(&mut *stream)
            .poll_read(cx, &mut filled)
            .map_ok(|()| filled.filled().len())
    });
    tokio::time::timeout(TIMEOUT, read)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within the timeout"))
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn print_latency(what: &str, micros: &mut [u32]) -> f64 {
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
    at(0.99)
}

/// The lines of `text` that end with a newline (without it), found with
/// memchr (SIMD): the clients parse every delivery of a run on the same two
/// cores as the server they measure, so their scan must cost little.
fn lines(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    memchr::memchr_iter(b'\n', text).map(move |end| {
        let line = &text[start..end];
        start = end + 1;
        line
    })
}

/// The seq of an `id:` line (what follows `id: `).
fn parse_seq(id: &[u8]) -> u32 {
    std::str::from_utf8(id)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .expect("numeric id")
}

/// The server measured: `$ALIASD_BIN` if set (to compare builds in
/// alternating runs), else the release build Cargo made for this bench.
fn aliasd_binary() -> PathBuf {
    std::env::var_os("ALIASD_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_aliasd")),
        PathBuf::from,
    )
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
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let request = format!("GET /api/events HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    send_all(&stream, request.as_bytes(), "subscribing").await;
    let mut deliveries = Vec::with_capacity(n_writes);
    let mut pending: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut buf = vec![0u8; 64 * 1024];
    let mut in_body = false;
    loop {
        let n = read_some(&mut stream, &mut buf, "reading events").await;
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
        // A chunk holds whole events, so an `id:` line is never split by chunk
        // framing; only whole lines are parsed, the rest waits for more bytes.
        let Some(last_newline) = memchr::memrchr(b'\n', &pending) else {
            continue;
        };
        for line in lines(&pending[..=last_newline]) {
            if let Some(id) = line.strip_prefix(b"id: ") {
                let seq = parse_seq(id);
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
    // A B B A A B B A: a drift of the machine over the phase (other tenants,
    // the file system filling) weighs on both sides alike.
    for round in 0..THROUGHPUT_ROUNDS {
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for with_stalled in order {
            // A subscriber that reads its response head and then nothing, ever.
            let socket = with_stalled.then(|| {
                let mut socket = TcpStream::connect(addr).expect("connect");
                write!(socket, "GET /api/events HTTP/1.1\r\nHost: {addr}\r\n\r\n")
                    .expect("subscribe");
                let mut head = [0u8; 12];
                socket.read_exact(&mut head).expect("head");
                assert_eq!(&head, b"HTTP/1.1 200");
                socket
            });
            let rate = flat_out(addr, &mut next_alias);
            let (label, rates) = if with_stalled {
                ("1 stalled subscriber", &mut stalled)
            } else {
                ("no subscriber       ", &mut no_subscriber)
            };
            println!("  round {round}: {label} {rate:.0} writes/s");
            rates.push(rate);
            drop(socket);
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let mut ratios: Vec<f64> = stalled
        .iter()
        .zip(&no_subscriber)
        .map(|(s, n)| s / n)
        .collect();
    ratios.sort_by(f64::total_cmp);
    let median = (ratios[(ratios.len() - 1) / 2] + ratios[ratios.len() / 2]) / 2.0;
    println!(
        "writer throughput: no subscriber {:.0}/s, one stalled subscriber {:.0}/s, ratio {:.3} (per round: median {median:.3}, {:.3}-{:.3})",
        mean(&no_subscriber),
        mean(&stalled),
        mean(&stalled) / mean(&no_subscriber),
        ratios[0],
        ratios[ratios.len() - 1]
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
// 3. Anchor: the same writes and watchers on etcd.
// ---------------------------------------------------------------------------

/// `"kv":{"key":"` precedes each event's base64 key in a watch response line.
const ETCD_EVENT_KEY: &[u8] = br#""kv":{"key":""#;

fn etcd_delivery_latency(binary: &Path, dir: &Path, load: Load) -> Delivery {
    let etcd = Etcd::start(binary, dir);
    let addr = etcd.addr;
    println!(
        "etcd: {} {} (pid {}) on {addr}, data in {}",
        binary.display(),
        etcd_version(binary),
        etcd.child.id(),
        dir.join("etcd").display()
    );
    let epoch = Instant::now();
    let n_writes = load.writes();
    let watchers = load.subscribers;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let created = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..watchers)
        .map(|_| runtime.spawn(watcher(addr, epoch, n_writes, created.clone())))
        .collect();
    let deadline = Instant::now() + TIMEOUT;
    while created.load(Ordering::SeqCst) < watchers {
        assert!(Instant::now() < deadline, "etcd watches were not created");
        std::thread::sleep(Duration::from_millis(10));
    }
    println!(
        "etcd: {watchers} watchers created in {:.2} s",
        epoch.elapsed().as_secs_f64()
    );

    // index -> (sent, acked), microseconds since the epoch.
    let value = base64(format!("{:<100}", "registry.ollama.ai/library/m:latest").as_bytes());
    let (writes, write_span) = paced_writes(load, epoch, move |i| {
        etcd_put(addr, &format!("w/{i}"), &value);
        i
    });
    let deliveries: Vec<Deliveries> = runtime.block_on(async {
        let mut all = Vec::with_capacity(watchers);
        for handle in handles {
            all.push(handle.await.expect("watcher task"));
        }
        all
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    etcd.stop();

    assert_eq!(writes.len(), n_writes);
    let mut from_sent = Vec::with_capacity(watchers * n_writes);
    let mut from_ack = Vec::with_capacity(watchers * n_writes);
    let mut before_ack = 0usize;
    for (idx, watcher) in deliveries.iter().enumerate() {
        // The watcher stops at `n_writes` keys and panics on a key seen twice.
        assert_eq!(
            watcher.len(),
            n_writes,
            "watcher {idx} got {} of {n_writes} keys",
            watcher.len()
        );
        for (index, at) in watcher {
            let (sent, acked) = writes[&(*index as usize)];
            from_sent.push(at.saturating_sub(sent));
            if *at < acked {
                before_ack += 1;
            }
            from_ack.push(at.saturating_sub(acked));
        }
    }
    report(
        "etcd: ",
        "every watcher got every key exactly once",
        &writes,
        write_span,
        &mut from_sent,
        &mut from_ack,
        before_ack,
    )
}

/// One watcher on etcd's JSON gateway, watching the prefix `w/`: reads until
/// it has seen `n_writes` distinct keys, recording each key's index and
/// arrival time.
async fn watcher(
    addr: SocketAddr,
    epoch: Instant,
    n_writes: usize,
    created: Arc<AtomicUsize>,
) -> Deliveries {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let body = format!(
        r#"{{"create_request":{{"key":"{}","range_end":"{}"}}}}"#,
        base64(b"w/"),
        base64(b"w0")
    );
    let request = format!(
        "POST /v3/watch HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    send_all(&stream, request.as_bytes(), "watching").await;
    let mut deliveries = Vec::with_capacity(n_writes);
    let mut seen = vec![false; n_writes];
    let mut raw: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut body: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut buf = vec![0u8; 64 * 1024];
    let mut in_body = false;
    let mut chunk_left = 0usize;
    let mut watching = false;
    loop {
        let n = read_some(&mut stream, &mut buf, "reading watch responses").await;
        assert!(n > 0, "watch stream closed early");
        let at = micros(epoch);
        raw.extend_from_slice(&buf[..n]);
        if !in_body {
            let Some(end) = find(&raw, b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            assert!(head.starts_with("http/1.1 200"), "watching failed: {head}");
            assert!(
                head.contains("\r\ntransfer-encoding: chunked"),
                "watch response not chunked: {head}"
            );
            raw.drain(..end + 4);
            in_body = true;
        }
        // A chunk usually holds one whole response line, but a large one (many
        // events batched for a lagging watcher) may be split: de-chunk first,
        // then parse whole lines only.
        dechunk(&mut raw, &mut chunk_left, &mut body);
        let Some(last_newline) = memchr::memrchr(b'\n', &body) else {
            continue;
        };
        for line in lines(&body[..=last_newline]) {
            if line.is_empty() {
                continue;
            }
            // Responses come as `{"result":{...}}`, a stream error as `{"error":...}`.
            assert!(
                line.starts_with(br#"{"result":"#),
                "watch failed: {}",
                String::from_utf8_lossy(line)
            );
            if !watching {
                assert!(
                    find(line, br#""created":true"#).is_some(),
                    "first watch response: {}",
                    String::from_utf8_lossy(line)
                );
                watching = true;
                created.fetch_add(1, Ordering::SeqCst);
                continue;
            }
            // A plain scan, like phase 1's for `id: `, rather than a JSON
            // parse per line, so the client costs about the same per event.
            let mut rest = line;
            let before = deliveries.len();
            while let Some(start) = find(rest, ETCD_EVENT_KEY) {
                rest = &rest[start + ETCD_EVENT_KEY.len()..];
                let end = memchr::memchr(b'"', rest).expect("end of key");
                let key = unbase64(&rest[..end]);
                let index: usize = key
                    .strip_prefix(b"w/")
                    .and_then(|i| std::str::from_utf8(i).ok())
                    .and_then(|i| i.parse().ok())
                    .expect("a key w/<index>");
                let seen = seen.get_mut(index).expect("a key written by this bench");
                assert!(!*seen, "a watcher got w/{index} twice");
                *seen = true;
                deliveries.push((index as u32, at));
                rest = &rest[end..];
            }
            // A cancel (e.g. compacted away) has no events.
            assert!(
                deliveries.len() > before || find(line, br#""canceled":true"#).is_none(),
                "watch canceled: {}",
                String::from_utf8_lossy(line)
            );
            if deliveries.len() == n_writes {
                return deliveries;
            }
        }
        body.drain(..=last_newline);
    }
}

/// Chunked transfer decoding, incrementally: moves the data of the chunks in
/// `raw` to `body` and leaves in `raw` what is not yet complete. `left` is
/// what remains of the current chunk, its closing CRLF included.
fn dechunk(raw: &mut Vec<u8>, left: &mut usize, body: &mut Vec<u8>) {
    let mut at = 0;
    loop {
        if *left > 0 {
            let take = (*left).min(raw.len() - at);
            let data = take.min(left.saturating_sub(2));
            body.extend_from_slice(&raw[at..at + data]);
            at += take;
            *left -= take;
            if *left > 0 {
                break;
            }
        }
        let Some(eol) = find(&raw[at..], b"\r\n") else {
            break;
        };
        let line = std::str::from_utf8(&raw[at..at + eol]).expect("chunk size line");
        let size = usize::from_str_radix(line.split(';').next().unwrap_or_default().trim(), 16)
            .expect("chunk size");
        assert!(size > 0, "watch stream ended");
        at += eol + 2;
        *left = size + 2;
    }
    raw.drain(..at);
}

/// `POST /v3/kv/put` of `key` (text) with `value` (already base64).
fn etcd_put(addr: SocketAddr, key: &str, value: &str) {
    let body = format!(
        r#"{{"key":"{}","value":"{value}"}}"#,
        base64(key.as_bytes())
    );
    let response = request(addr, "POST /v3/kv/put HTTP/1.1", Some(body.as_bytes()));
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
}

fn etcd_version(binary: &Path) -> String {
    let output = Command::new(binary)
        .arg("--version")
        .output()
        .expect("etcd --version");
    let text = String::from_utf8_lossy(&output.stdout);
    let first = text.lines().next().unwrap_or_default();
    first.trim_start_matches("etcd Version: ").to_string()
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding, as etcd's JSON gateway has `bytes` fields.
fn base64(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n =
            (chunk.iter().enumerate()).fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(BASE64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn unbase64(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut n, mut bits) = (0u32, 0);
    for &c in text.iter().take_while(|&&c| c != b'=') {
        let digit = BASE64.iter().position(|&b| b == c).expect("a base64 digit");
        n = ((n << 6) | digit as u32) & 0xffff;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((n >> bits) as u8);
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Plumbing.
// ---------------------------------------------------------------------------

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(haystack, needle)
}

/// The first `name` in a directory of `PATH`.
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
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
    child: Daemon,
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
        let child = Command::new(aliasd_binary())
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
        let mut child = Daemon(child);
        child.wait_ready("aliasd", &log, || {
            TcpStream::connect(addr).is_ok()
                && request(addr, "GET /healthz HTTP/1.1", None).starts_with("HTTP/1.1 200")
        });
        Server { child, addr }
    }

    fn stop(self) {
        self.child.stop();
    }
}

/// A server process the bench started: stopped with SIGTERM by `stop`,
/// killed on drop (a panic included).
struct Daemon(Child);

impl Daemon {
    fn id(&self) -> u32 {
        self.0.id()
    }

    /// Waits until `ready()`; panics with the log if the process exits first.
    fn wait_ready(&mut self, what: &str, log: &Path, ready: impl Fn() -> bool) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.0.try_wait().expect("try_wait") {
                panic!(
                    "{what} exited with {status}: {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            if ready() {
                return;
            }
            assert!(Instant::now() < deadline, "{what} not ready");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(mut self) {
        let terminated = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status()
            .is_ok_and(|status| status.success());
        if !terminated {
            // No `kill` on PATH: waiting would hang, so SIGKILL.
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An etcd of the bench's own: one member on loopback, data under `dir`;
/// killed on drop.
struct Etcd {
    child: Daemon,
    addr: SocketAddr,
}

impl Etcd {
    fn start(binary: &Path, dir: &Path) -> Etcd {
        // Both listeners are held until both ports are known, so they differ.
        let client = TcpListener::bind("127.0.0.1:0").expect("a free port");
        let peer = TcpListener::bind("127.0.0.1:0").expect("a free port");
        let addr = client.local_addr().expect("client address");
        let peer_url = format!("http://{}", peer.local_addr().expect("peer address"));
        drop((client, peer));
        let client_url = format!("http://{addr}");
        let log = dir.join("etcd.log");
        let mut command = Command::new(binary);
        command
            .arg("--name")
            .arg("bench")
            .arg("--data-dir")
            .arg(dir.join("etcd"))
            .arg("--listen-client-urls")
            .arg(&client_url)
            .arg("--advertise-client-urls")
            .arg(&client_url)
            .arg("--listen-peer-urls")
            .arg(&peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer_url)
            .arg("--initial-cluster")
            .arg(format!("bench={peer_url}"))
            .args([
                "--logger",
                "zap",
                "--log-outputs",
                "stderr",
                "--log-level",
                "error",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"));
        // etcd reads a flag from ETCD_<FLAG> too: none from the environment.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ETCD_") {
                command.env_remove(key);
            }
        }
        let mut child = Daemon(command.spawn().expect("spawn etcd"));
        child.wait_ready("etcd", &log, || {
            TcpStream::connect(addr).is_ok() && {
                let response = request(addr, "GET /health HTTP/1.1", None);
                response.starts_with("HTTP/1.1 200") && response.contains(r#""health":"true""#)
            }
        });
        Etcd { child, addr }
    }

    fn stop(self) {
        self.child.stop();
    }
}
