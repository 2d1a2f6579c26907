//! The physical floor under two of issue 7's targets: what the kernel alone
//! charges for the work aliasd cannot skip, with no aliasd, HTTP or runtime.
//!
//! `cargo bench --bench floor` (`-- --files-only` for part 1 alone; the
//! bench holds about 2,000 sockets: if
//! `ulimit -n` is 1024 or less, run it as
//! `bash -c 'ulimit -n 4096; cargo bench --bench floor'`).
//! `-- --journal-only <GROUP>` and `-- --http-only <CONNECTIONS>` run the
//! other two parts of a create's floor alone (3 and 4 below), as
//! `benches/compare.sh` does beside its creates.
//!
//! 1. **One alias file.** A create materializes the alias in Ollama's layout:
//!    a new directory, a temp file, a write of the manifest, a rename (what
//!    `materializer::write_atomically` does). Here one thread does exactly
//!    that, 10,000 times per round, three rounds, under `CARGO_TARGET_TMPDIR`
//!    (the checkout's disk). Prints the thread's CPU (user + system) and wall
//!    time per alias file, and the creates/s two cores could reach if they did
//!    nothing else.
//! 2. **One batch to one subscriber.** An event stream sends each subscriber
//!    each batch with one socket write, and the subscriber reads it. Here 1,000
//!    loopback TCP connections (`TCP_NODELAY`, as aliasd's); one thread writes a
//!    batch to every connection, 50 times 20 ms apart, while another reads
//!    them with `epoll`. Prints CPU per (subscriber, batch) on each side, for
//!    one event (400 bytes) and 40 events (16,000 bytes), and the share of
//!    the machine 1,000 subscribers cost at a batch every 10, 20 or 40 ms.
//! 3. **One create's journal record.** aliasd's registry writer appends a
//!    group of events with one `Journal::append` (one write and one
//!    `fdatasync` per group). Here one thread appends groups of `GROUP`
//!    records of a create event's size with the `journal` crate, for
//!    [`JOURNAL_SECONDS`]; prints the process's CPU (this thread and the
//!    journal's writer thread) per record, and the wall time per commit.
//! 4. **One create's HTTP request.** A trivial axum handler on a tokio
//!    runtime (as aliasd's, one worker per core): `PUT /api/aliases/{name}`
//!    with a create's body (`{"target":"m"}`, read whole and not parsed),
//!    answered 201 with a JSON body of a create's answer's size. `wrk` (a
//!    child process, not counted) sends `benches/wrk/aliasd_put.lua` over
//!    `CONNECTIONS` connections for [`HTTP_SECONDS`]; prints this process's
//!    CPU (user + system, from `getrusage`) per request.
//! 5. **The first touch of new memory** (`-- --touch-only`): maps 1 GiB
//!    three times, writes one byte in each 4 KiB page and unmaps it; prints
//!    the wall time per page. On a VM whose host takes free memory back
//!    (free page reporting), new memory costs many times more to touch than
//!    memory just freed, and every alias file needs new kernel memory.
//!
//! The trees of part 1 are left under `target/tmp/aliasd-floor*`: deleting
//! tens of thousands of inodes slows this machine's ext4 for minutes, which
//! would skew a bench run right after. Delete them when done benchmarking.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Instant;

const FILES_PER_ROUND: usize = 10_000;
const FILE_ROUNDS: usize = 3;
/// The size of a typical Ollama manifest (one config layer, a few layers).
const MANIFEST_BYTES: usize = 600;
const SUBSCRIBERS: usize = 1_000;
const BATCHES: usize = 50;
const BATCH_GAP: std::time::Duration = std::time::Duration::from_millis(20);
const CORES: f64 = 2.0;

fn main() {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let args: Vec<String> = std::env::args().collect();
    let value_of = |flag: &str| {
        let at = args.iter().position(|arg| arg == flag)?;
        let value = args.get(at + 1).and_then(|v| v.parse::<usize>().ok());
        Some(
            value
                .unwrap_or_else(|| panic!("{flag} needs a number"))
                .max(1),
        )
    };
    if let Some(group) = value_of("--journal-only") {
        journal_records(tmp, group);
        return;
    }
    if let Some(connections) = value_of("--http-only") {
        http_requests(connections);
        return;
    }
    if args.iter().any(|arg| arg == "--touch-only") {
        first_touch();
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("aliasd-floor")
        .tempdir_in(tmp)
        .expect("temp dir")
        .keep();
    println!("part 1: one alias file (mkdir, create temp, write {MANIFEST_BYTES} B, rename), one thread, in {}", dir.display());
    let mut cpu = Vec::new();
    for round in 0..FILE_ROUNDS {
        let (cpu_us, wall_us) = alias_files(&dir.join(format!("round-{round}")));
        println!("  round {round}: {cpu_us:.1} us CPU, {wall_us:.1} us wall per alias file");
        cpu.push(cpu_us);
    }
    let cpu = median(&mut cpu);
    println!(
        "  median {cpu:.1} us CPU: at most {:.0} alias files/s on {CORES} cores doing nothing else",
        CORES * 1e6 / cpu
    );

    // `benches/compare.sh` runs part 1 alone, beside its creates.
    if args.iter().any(|arg| arg == "--files-only") {
        return;
    }
    println!("part 2: one batch to one subscriber over loopback TCP, {SUBSCRIBERS} subscribers, {BATCHES} batches {BATCH_GAP:?} apart");
    for (what, bytes) in [("1 event", 400), ("40 events", 16_000)] {
        let (write_us, read_us) = fan_out(bytes);
        let per_batch = write_us + read_us;
        let shares: Vec<String> = [10.0, 20.0, 40.0]
            .iter()
            .map(|gap_ms| {
                let core_seconds = SUBSCRIBERS as f64 * (1000.0 / gap_ms) * per_batch / 1e6;
                format!("{gap_ms} ms: {:.0}%", 100.0 * core_seconds / CORES)
            })
            .collect();
        println!(
            "  {what} ({bytes} B): write {write_us:.1} us + read {read_us:.1} us CPU; machine share at a batch every {}",
            shares.join(", ")
        );
    }
}

/// How long part 3 appends.
const JOURNAL_SECONDS: f64 = 5.0;
/// The size of one create's event as aliasd journals it (an `alias.created`
/// with a wrk-made name, its digest, actor and request id).
const EVENT_BYTES: usize = 390;
/// How long part 4's `wrk` runs.
const HTTP_SECONDS: u32 = 8;
/// The size of aliasd's answer to a create (the alias as JSON).
const ANSWER_BYTES: usize = 273;

/// Part 3: appends groups of `group` create-sized records for
/// [`JOURNAL_SECONDS`] and prints the process's CPU per record.
fn journal_records(tmp: &Path, group: usize) {
    let dir = tempfile::Builder::new()
        .prefix("aliasd-floor-journal")
        .tempdir_in(tmp)
        .expect("temp dir");
    let opened = journal::Journal::open(dir.path(), journal::Options::default()).expect("journal");
    let journal = opened.journal;
    let payload = vec![b'e'; EVENT_BYTES];
    // One commit first, so that the segment and its zeros ahead exist.
    journal.append(vec![payload.clone()]).expect("append");
    let (cpu0, wall0) = (process_cpu_us(), Instant::now());
    let mut commits = 0usize;
    while wall0.elapsed().as_secs_f64() < JOURNAL_SECONDS {
        journal
            .append(vec![payload.clone(); group])
            .expect("append");
        commits += 1;
    }
    let (cpu, wall) = (process_cpu_us() - cpu0, wall0.elapsed().as_secs_f64() * 1e6);
    journal.close();
    println!(
        "journal: groups of {group} records of {EVENT_BYTES} B, {commits} commits: {:.1} us CPU per record, {:.1} us wall per commit",
        cpu / (commits * group) as f64,
        wall / commits as f64
    );
}

/// Part 4: a trivial axum server for a create's request, loaded by `wrk`
/// over `connections` connections; prints this process's CPU per request.
fn http_requests(connections: usize) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let answer: &'static str =
        Box::leak(format!("{{\"alias\":\"{}\"}}", "a".repeat(ANSWER_BYTES - 12)).into_boxed_str());
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new().route(
        "/api/aliases/{name}",
        axum::routing::put(move |body: axum::body::Bytes| async move {
            std::hint::black_box(body);
            (
                axum::http::StatusCode::CREATED,
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                answer,
            )
        }),
    );
    runtime.spawn(async move { axum::serve(listener, app).await });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/wrk/aliasd_put.lua");
    let threads = connections.clamp(1, 2);
    let cpu0 = process_cpu_us();
    let out = std::process::Command::new("wrk")
        .args([
            format!("-t{threads}"),
            format!("-c{connections}"),
            format!("-d{HTTP_SECONDS}s"),
            "-s".into(),
            script.into(),
            format!("http://{addr}"),
        ])
        .output()
        .expect("running wrk (install it: apt-get install wrk)");
    let cpu = process_cpu_us() - cpu0;
    let text = String::from_utf8_lossy(&out.stdout);
    let requests: f64 = text
        .split_whitespace()
        .zip(text.split_whitespace().skip(1))
        .find(|(_, next)| *next == "requests")
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("no request count in wrk's output: {text}"));
    let errors = text.contains("Non-2xx");
    println!(
        "http: {connections} connections, {requests} requests in {HTTP_SECONDS} s{}: {:.1} us CPU per request",
        if errors { " (some not 2xx!)" } else { "" },
        cpu / requests
    );
    runtime.shutdown_background();
}

/// CPU time (user + system) of the whole process so far, every thread
/// (exited ones included), children not, in microseconds.
fn process_cpu_us() -> f64 {
    // SAFETY: `usage` is a valid rusage for the call to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    assert_eq!(rc, 0, "getrusage");
    let us = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
    us(usage.ru_utime) + us(usage.ru_stime)
}

/// Writes `FILES_PER_ROUND` alias files under `root` as the materializer does;
/// returns CPU and wall microseconds per file.
fn alias_files(root: &Path) -> (f64, f64) {
    std::fs::create_dir_all(root).expect("round dir");
    let manifest = vec![b'x'; MANIFEST_BYTES];
    let (cpu0, wall0) = (thread_cpu_us(), Instant::now());
    for i in 0..FILES_PER_ROUND {
        let dir = root.join(format!("alias-{i}"));
        std::fs::create_dir(&dir).expect("mkdir");
        let tmp = dir.join(".latest.aliasd-tmp");
        let mut file = std::fs::File::create(&tmp).expect("create");
        file.write_all(&manifest).expect("write");
        drop(file);
        std::fs::rename(&tmp, dir.join("latest")).expect("rename");
    }
    let n = FILES_PER_ROUND as f64;
    (
        (thread_cpu_us() - cpu0) / n,
        wall0.elapsed().as_secs_f64() * 1e6 / n,
    )
}

/// Sends `BATCHES` batches of `bytes` to `SUBSCRIBERS` loopback connections;
/// returns the writer's and the reader's CPU microseconds per (subscriber, batch).
fn fan_out(bytes: usize) -> (f64, f64) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut writers = Vec::with_capacity(SUBSCRIBERS);
    let mut readers = Vec::with_capacity(SUBSCRIBERS);
    for _ in 0..SUBSCRIBERS {
        let reader =
            TcpStream::connect(addr).expect("connect (raise `ulimit -n` to 4096 if this fails)");
        let (writer, _) = listener.accept().expect("accept");
        writer.set_nodelay(true).expect("nodelay");
        reader.set_nonblocking(true).expect("nonblocking");
        writers.push(writer);
        readers.push(reader);
    }
    let total = (SUBSCRIBERS * BATCHES * bytes) as u64;
    let reading = std::thread::spawn(move || {
        let cpu0 = thread_cpu_us();
        read_all(&mut readers, total);
        (thread_cpu_us() - cpu0) / (SUBSCRIBERS * BATCHES) as f64
    });
    let batch = vec![b'e'; bytes];
    let mut write_cpu = 0.0;
    for _ in 0..BATCHES {
        let cpu0 = thread_cpu_us();
        for writer in &mut writers {
            writer.write_all(&batch).expect("write");
        }
        write_cpu += thread_cpu_us() - cpu0;
        std::thread::sleep(BATCH_GAP);
    }
    let read_us = reading.join().expect("reader");
    (write_cpu / (SUBSCRIBERS * BATCHES) as f64, read_us)
}

/// Reads every socket until `total` bytes have come, waiting with edge-triggered epoll.
fn read_all(readers: &mut [TcpStream], total: u64) {
    // SAFETY: plain epoll calls on descriptors `readers` keeps open for the
    // whole function; `events` outlives every `epoll_wait` that fills it.
    let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(epoll >= 0, "epoll_create1");
    for (i, reader) in readers.iter().enumerate() {
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLET) as u32,
            u64: i as u64,
        };
        let rc =
            unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, reader.as_raw_fd(), &mut event) };
        assert_eq!(rc, 0, "epoll_ctl");
    }
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut buf = vec![0u8; 1 << 20];
    let mut seen = 0u64;
    while seen < total {
        let ready = unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), 256, 10_000) };
        assert!(ready > 0, "no data for 10 s");
        for event in &events[..ready as usize] {
            let reader = &mut readers[event.u64 as usize];
            // Edge-triggered: read until the socket is empty.
            loop {
                match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => seen += n as u64,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("read: {e}"),
                }
            }
        }
    }
    unsafe { libc::close(epoll) };
}

/// CPU time (user + system) of the calling thread, in microseconds.
fn thread_cpu_us() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    ts.tv_sec as f64 * 1e6 + ts.tv_nsec as f64 / 1e3
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// How much part 5 maps each round.
const TOUCH_BYTES: usize = 1 << 30;
const PAGE_BYTES: usize = 4096;

/// Part 5: maps [`TOUCH_BYTES`] three times, touches each page once, and
/// prints the wall time per page of each round.
fn first_touch() {
    let mut per_page = Vec::new();
    for round in 0..3 {
        // SAFETY: a private anonymous mapping, written only within its
        // length and unmapped before the next round.
        let us = unsafe {
            let at = libc::mmap(
                std::ptr::null_mut(),
                TOUCH_BYTES,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(at, libc::MAP_FAILED, "mmap");
            let bytes = at.cast::<u8>();
            let started = Instant::now();
            for offset in (0..TOUCH_BYTES).step_by(PAGE_BYTES) {
                bytes.add(offset).write_volatile(1);
            }
            let us = started.elapsed().as_secs_f64() * 1e6 / (TOUCH_BYTES / PAGE_BYTES) as f64;
            libc::munmap(at, TOUCH_BYTES);
            us
        };
        println!("  round {round}: {us:.2} us per 4 KiB page touched the first time");
        per_page.push(us);
    }
    println!(
        "part 5: first touch of new memory, first round {:.2} us per page",
        per_page[0]
    );
}
