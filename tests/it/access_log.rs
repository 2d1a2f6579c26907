//! The server's access log writer (issue 18, item 3's budget): access lines
//! go to stderr through a worker thread, so that a request never waits on
//! stderr while the queue has room; no line is dropped, a stopped server has
//! written every line, and a killed one every line of the requests it
//! answered a moment before.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::support::{aliasd, http, Server, TestStore};

/// A generous bound for what should take a moment: it only guards against a
/// hang.
const DEADLINE: Duration = Duration::from_secs(30);

/// Kills the server it holds when the test ends, passed or failed.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The access lines in `log`, in order, by the request ids that start with
/// `prefix`.
fn access_ids<'l>(log: &'l str, prefix: &str) -> Vec<&'l str> {
    log.lines()
        .filter(|line| line.contains("aliasd::access"))
        .filter_map(|line| line.rsplit_once(" request_id=").map(|(_, id)| id))
        .filter(|id| id.starts_with(prefix))
        .collect()
}

/// `prefix-0` .. `prefix-(n-1)`.
fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// A reader that stops reading its stderr (a full pipe: a stuck log
/// collector, a terminal paused with Ctrl-S) no longer stops the server:
/// before, the access line was written to stderr by the task that answered,
/// so once the pipe's 64 KiB were full every request hung in `write(2)`
/// (and every other, behind stderr's lock). Now the lines queue for the
/// log's worker thread, and, once the pipe is read again, all of them
/// arrive, in order.
#[test]
fn requests_are_answered_while_nobody_reads_stderr() {
    let store = TestStore::with_models(&["llama3"]);
    let journal = tempfile::tempdir().unwrap();
    let mut serve = aliasd();
    serve
        .arg("serve")
        .arg("--models")
        .arg(store.root())
        .arg("--journal")
        .arg(journal.path())
        .args(["--listen", "127.0.0.1:0"])
        .env("ALIASD_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut server = Killed(serve.spawn().expect("start aliasd"));
    // Its address from its own "listening" line (a port chosen here and
    // bound later by aliasd could be taken meanwhile); then stderr is left
    // unread.
    let (stderr_tx, stderr_rx) = std::sync::mpsc::channel();
    let mut stderr = BufReader::new(server.0.stderr.take().expect("piped stderr"));
    std::thread::spawn(move || {
        let mut line = String::new();
        while stderr.read_line(&mut line).is_ok_and(|n| n > 0) {
            if let Some((_, rest)) = line.split_once("listening on http://") {
                let addr: SocketAddr = rest.trim().parse().expect("the listening address");
                let _ = stderr_tx.send((addr, stderr));
                return;
            }
            line.clear();
        }
    });
    let (addr, mut stderr) = stderr_rx
        .recv_timeout(DEADLINE)
        .expect("aliasd did not say it was listening");
    // Each access line is over 100 bytes: 3,000 of them are several times
    // what the pipe holds.
    let wanted = ids("stalled-stderr", 3000);
    let started = Instant::now();
    for id in &wanted {
        let resp = http(addr, "GET", "/healthz", &[("X-Request-Id", id)], None);
        assert_eq!(resp.status, 200, "{id}: {resp:?}");
        assert!(started.elapsed() < DEADLINE, "answered up to {id} only");
    }
    // Read stderr again: every line is there, in order, none dropped.
    let reader = std::thread::spawn(move || {
        let mut log = String::new();
        let _ = stderr.read_to_string(&mut log);
        log
    });
    let status = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(server.0.id().to_string())
        .status()
        .expect("run kill");
    assert!(status.success());
    let log = reader.join().expect("reader");
    assert_eq!(access_ids(&log, "stalled-stderr-"), wanted, "{log}");
    assert!(log.contains("shutting down"), "{log}");
}

/// A server stopped with SIGTERM right after answering has written every
/// access line (the log's worker writes what is queued before the process
/// ends).
#[test]
fn a_stopped_server_has_written_every_line() {
    let mut server = Server::with_models(&["llama3"]);
    let wanted = ids("stopped", 200);
    for id in &wanted {
        let resp = server.request("GET", "/healthz", &[("X-Request-Id", id)], None);
        assert_eq!(resp.status, 200, "{resp:?}");
    }
    server.stop();
    let log = server.stderr();
    assert_eq!(access_ids(&log, "stopped-"), wanted, "{log}");
    assert!(log.contains("shutting down"), "{log}");
}

/// A server killed with SIGKILL (a crash: nothing flushed on the way out)
/// has written the access lines of the requests it answered a moment
/// before: the log's worker writes a line as soon as it is queued, not when
/// a buffer fills.
#[test]
fn a_killed_server_has_written_the_lines_of_what_it_answered() {
    let mut server = Server::with_models(&["llama3"]);
    let wanted = ids("killed", 50);
    for id in &wanted {
        let resp = server.request("GET", "/healthz", &[("X-Request-Id", id)], None);
        assert_eq!(resp.status, 200, "{resp:?}");
    }
    // "A moment": far longer than the worker takes to be scheduled, far
    // shorter than any buffer's timer would be.
    std::thread::sleep(Duration::from_secs(1));
    server.kill9();
    let log = server.stderr();
    assert_eq!(access_ids(&log, "killed-"), wanted, "{log}");
}
