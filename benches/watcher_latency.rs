//! End-to-end latency of the watcher: from another program rewriting a model's
//! manifest to the `target.changed` event arriving at an `/api/events`
//! subscriber.
//!
//! `cargo bench --bench watcher_latency` (add `-- 500` for another number of
//! samples; the default is 200). Cargo builds the real binary with the bench
//! profile (release) and hands its path over as `CARGO_BIN_EXE_aliasd`; the
//! bench starts it as `aliasd serve` on a store and journal under
//! `CARGO_TARGET_TMPDIR` (`target/tmp`, on the same disk as the checkout, so
//! the journal's fsync costs what it costs there, never a tmpfs).
//!
//! Each sample rewrites the manifest of `hot` in place, as `ollama pull` does
//! (alternating two contents, so every rewrite is a real change), takes the
//! time, and reads the SSE stream until the `target.changed` event of the alias
//! `coder -> hot` with the new digest arrives. Samples are 50 ms apart, so each
//! measures one isolated change: the debounce's quiet period (`QUIET` in
//! `src/watcher.rs`), the reconcile, the journal's fsync and the broadcast.
//! Prints min, median, p90, p99 and max.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Samples taken unless the first argument says otherwise.
const DEFAULT_SAMPLES: usize = 200;
/// The pause between samples, so that they do not merge in one debounce.
const GAP: Duration = Duration::from_millis(50);
/// How long one event may take before the bench gives up.
const TIMEOUT: Duration = Duration::from_secs(10);

fn main() {
    // `cargo bench` passes `--bench`; a number among the arguments is the sample count.
    let samples = std::env::args()
        .skip(1)
        .find_map(|a| a.parse::<usize>().ok())
        .unwrap_or(DEFAULT_SAMPLES)
        .max(1);
    let base = tempfile::Builder::new()
        .prefix("aliasd-watcher-latency")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("tempdir");
    let models = base.path().join("models");
    let manifest = manifest_path(&models, "hot");
    let v1 = write_model(&models, "hot", 1);
    let v2 = write_model(&models, "hot", 2);
    std::fs::write(&manifest, &v1).expect("write manifest");

    let server = Server::start(&models, &base.path().join("journal"), base.path());
    let resp = request(
        server.addr,
        "PUT /api/aliases/coder HTTP/1.1",
        Some(br#"{"target":"hot"}"#),
    );
    assert!(
        resp.starts_with("HTTP/1.1 201"),
        "creating the alias: {resp}"
    );
    let mut events = EventStream::open(server.addr);

    let mut latencies = Vec::with_capacity(samples);
    for sample in 0..samples {
        let bytes = if sample % 2 == 0 { &v2 } else { &v1 };
        let want = format!("\"digest\":\"{}\"", digest(bytes));
        std::thread::sleep(GAP);
        let started = Instant::now();
        std::fs::write(&manifest, bytes).expect("rewrite manifest");
        loop {
            let (kind, data) = events.next_event();
            if kind == "target.changed" && data.contains("\"alias\":\"coder\"") {
                assert!(
                    data.contains(&want),
                    "sample {sample}: unexpected digest: {data}"
                );
                latencies.push(started.elapsed());
                break;
            }
        }
    }
    drop(events);
    server.stop();

    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q).round() as usize];
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
    println!(
        "watcher latency (manifest rewrite -> target.changed over SSE), {} samples:",
        latencies.len()
    );
    println!("  min    {}", ms(latencies[0]));
    println!("  median {}", ms(at(0.5)));
    println!("  p90    {}", ms(at(0.9)));
    println!("  p99    {}", ms(at(0.99)));
    println!("  max    {}", ms(latencies[latencies.len() - 1]));
}

/// `sha256:<hex>` of a manifest's bytes.
fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", aliasd::digest::sha256_hex(bytes))
}

fn manifest_path(models: &Path, name: &str) -> PathBuf {
    models.join(format!(
        "manifests/registry.ollama.ai/library/{name}/latest"
    ))
}

/// Writes a model's blobs and returns its manifest (not written).
fn write_model(models: &Path, name: &str, version: u32) -> Vec<u8> {
    let blobs = models.join("blobs");
    std::fs::create_dir_all(&blobs).expect("mkdir blobs");
    std::fs::create_dir_all(manifest_path(models, name).parent().expect("parent"))
        .expect("mkdir manifest dir");
    let blob = |content: &[u8]| {
        let hex = aliasd::digest::sha256_hex(content);
        std::fs::write(blobs.join(format!("sha256-{hex}")), content).expect("write blob");
        (format!("sha256:{hex}"), content.len())
    };
    let (config, config_size) = blob(format!(r#"{{"model":"{name}","v":{version}}}"#).as_bytes());
    let (weights, weights_size) = blob(format!("weights of {name} v{version}").as_bytes());
    format!(
        concat!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","#,
            r#""config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{}","size":{}}},"#,
            r#""layers":[{{"mediaType":"application/vnd.ollama.image.model","digest":"{}","size":{}}}]}}"#
        ),
        config, config_size, weights, weights_size
    )
    .into_bytes()
}

/// The release binary serving the store.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(models: &Path, journal: &Path, logs: &Path) -> Server {
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
            .env("ALIASD_LOG", "warn")
            .env_remove("ALIASD_POLL_MS")
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

/// One request (`Connection: close`); returns the whole response as text.
fn request(addr: SocketAddr, line: &str, body: Option<&[u8]>) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let mut head = format!("{line}\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(body) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).expect("write");
    if let Some(body) = body {
        stream.write_all(body).expect("write body");
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
}

/// A subscription to `/api/events` over a raw socket.
struct EventStream {
    lines: BufReader<Dechunk>,
}

impl EventStream {
    fn open(addr: SocketAddr) -> EventStream {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        write!(
            stream,
            "GET /api/events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
        )
        .expect("subscribe");
        let mut reader = BufReader::new(stream);
        let mut chunked = false;
        let mut status = String::new();
        reader.read_line(&mut status).expect("status line");
        assert!(status.starts_with("HTTP/1.1 200"), "subscribing: {status}");
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("header");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let lower = line.to_ascii_lowercase();
            if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            }
        }
        EventStream {
            lines: BufReader::new(Dechunk {
                inner: reader,
                chunked,
                left: 0,
            }),
        }
    }

    /// The next event's type and data; skips comments.
    fn next_event(&mut self) -> (String, String) {
        let mut kind = String::new();
        let mut data = String::new();
        loop {
            let mut line = String::new();
            let n = self.lines.read_line(&mut line).expect("reading events");
            assert!(n > 0, "the event stream ended");
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                if !data.is_empty() {
                    return (kind, data);
                }
                continue;
            }
            if let Some(value) = line.strip_prefix("event:") {
                kind = value.trim().to_string();
            } else if let Some(value) = line.strip_prefix("data:") {
                data.push_str(value.trim_start());
            }
        }
    }
}

/// Reads the body of a chunked response as plain bytes.
struct Dechunk {
    inner: BufReader<TcpStream>,
    chunked: bool,
    left: usize,
}

impl Read for Dechunk {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if !self.chunked {
            return self.inner.read(buf);
        }
        while self.left == 0 {
            let mut size = String::new();
            if self.inner.read_line(&mut size)? == 0 {
                return Ok(0);
            }
            let size = size.trim();
            if size.is_empty() {
                continue; // The CRLF after a chunk's data.
            }
            let hex = size.split(';').next().unwrap_or_default();
            self.left = usize::from_str_radix(hex, 16).map_err(std::io::Error::other)?;
            if self.left == 0 {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.left);
        let n = self.inner.read(&mut buf[..n])?;
        self.left -= n;
        Ok(n)
    }
}
