//! The event stream and the audit trail (issue 5): `/api/events` (SSE shape,
//! cursors, filters, resume, many subscribers, a stalled subscriber caught up
//! from the journal), `/api/history` (filters, pages), `?at_seq=` time travel,
//! the offline `aliasd journal` commands, `aliasd watch|history`, `/metrics`.
//!
//! Everything runs against the real binary on loopback. SSE is read with a
//! small client of our own ([`Sse`]) that de-chunks the body as it arrives and
//! never blocks past a deadline.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{alias_path, aliasd, files_under, http, run_cli, Server, TestStore};

/// How long any single expected thing may take.
const DEADLINE: Duration = Duration::from_secs(20);

/// The fields every event carries (SPEC §4); `prefix_matching` is an extra.
const EVENT_FIELDS: [&str; 10] = [
    "seq",
    "id",
    "time",
    "type",
    "alias",
    "target",
    "previous_target",
    "digest",
    "actor",
    "request_id",
];

// ---------------------------------------------------------------------------
// A small SSE client.
// ---------------------------------------------------------------------------

/// One SSE message.
#[derive(Debug, Clone)]
struct Msg {
    /// The raw lines of the message, without line ends.
    lines: Vec<String>,
    id: Option<String>,
    event: Option<String>,
    data: String,
}

impl Msg {
    fn seq(&self) -> u64 {
        self.id
            .as_deref()
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("message without a numeric id: {self:?}"))
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }
}

/// An open `/api/events` response.
struct Sse {
    stream: TcpStream,
    status: u16,
    headers: Vec<(String, String)>,
    chunked: bool,
    /// Bytes received and not yet de-chunked.
    raw: Vec<u8>,
    /// De-chunked body not yet parsed into messages.
    body: Vec<u8>,
    eof: bool,
}

impl Sse {
    /// Opens `GET path` and reads the response head; asserts 200 and the type.
    #[track_caller]
    fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Sse {
        let sse = Sse::open_any(addr, path, headers);
        assert_eq!(sse.status, 200, "{path}: {:?}", sse.headers);
        assert!(
            sse.header("content-type")
                .is_some_and(|v| v.starts_with("text/event-stream")),
            "{:?}",
            sse.headers
        );
        sse
    }

    /// Opens `GET path` and reads the response head, whatever the status.
    fn open_any(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Sse {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.set_write_timeout(Some(DEADLINE)).expect("timeout");
        let mut head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).expect("write request");
        let mut sse = Sse {
            stream,
            status: 0,
            headers: Vec::new(),
            chunked: false,
            raw: Vec::new(),
            body: Vec::new(),
            eof: false,
        };
        let deadline = Instant::now() + DEADLINE;
        let end = loop {
            if let Some(end) = find(&sse.raw, b"\r\n\r\n") {
                break end;
            }
            assert!(
                sse.read_raw(deadline),
                "no response head for {path}: {:?}",
                String::from_utf8_lossy(&sse.raw)
            );
        };
        let head = String::from_utf8_lossy(&sse.raw[..end]).into_owned();
        let mut lines = head.split("\r\n");
        sse.status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad head {head:?}"));
        sse.headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        sse.chunked = sse
            .header("transfer-encoding")
            .is_some_and(|v| v.contains("chunked"));
        sse.raw.drain(..end + 4);
        sse.dechunk();
        sse
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Reads what the socket has, waiting at most until `deadline`; false on
    /// timeout or end of stream.
    fn read_raw(&mut self, deadline: Instant) -> bool {
        let now = Instant::now();
        if now >= deadline || self.eof {
            return false;
        }
        self.stream
            .set_read_timeout(Some(deadline - now))
            .expect("timeout");
        let mut buf = [0u8; 16 * 1024];
        match self.stream.read(&mut buf) {
            Ok(0) => {
                self.eof = true;
                false
            }
            Ok(n) => {
                self.raw.extend_from_slice(&buf[..n]);
                true
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                false
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                self.eof = true;
                false
            }
            Err(e) => panic!("reading the event stream: {e}"),
        }
    }

    /// Moves every complete chunk from `raw` to `body`.
    fn dechunk(&mut self) {
        if !self.chunked {
            self.body.append(&mut self.raw);
            return;
        }
        loop {
            let Some(line_end) = find(&self.raw, b"\r\n") else {
                return;
            };
            let size_text = String::from_utf8_lossy(&self.raw[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
                .unwrap_or_else(|_| panic!("bad chunk size {size_text:?}"));
            if size == 0 {
                self.eof = true;
                return;
            }
            let start = line_end + 2;
            if self.raw.len() < start + size + 2 {
                return;
            }
            self.body.extend_from_slice(&self.raw[start..start + size]);
            self.raw.drain(..start + size + 2);
        }
    }

    /// The next complete message already received (comments skipped).
    fn parse_one(&mut self) -> Option<Msg> {
        loop {
            let end = find(&self.body, b"\n\n")?;
            let block = String::from_utf8_lossy(&self.body[..end]).into_owned();
            self.body.drain(..end + 2);
            let mut msg = Msg {
                lines: Vec::new(),
                id: None,
                event: None,
                data: String::new(),
            };
            let mut data_lines = Vec::new();
            for line in block.split('\n') {
                let line = line.trim_end_matches('\r');
                msg.lines.push(line.to_string());
                if line.starts_with(':') {
                    continue;
                }
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "id" => msg.id = Some(value.to_string()),
                    "event" => msg.event = Some(value.to_string()),
                    "data" => data_lines.push(value.to_string()),
                    _ => {}
                }
            }
            if msg.id.is_none() && msg.event.is_none() && data_lines.is_empty() {
                continue; // Only comments (keep-alive).
            }
            msg.data = data_lines.join("\n");
            return Some(msg);
        }
    }

    /// The next message, or `None` if none arrives before `deadline`.
    fn next_before(&mut self, deadline: Instant) -> Option<Msg> {
        loop {
            if let Some(msg) = self.parse_one() {
                return Some(msg);
            }
            if !self.read_raw(deadline) {
                return None;
            }
            self.dechunk();
        }
    }

    /// The next message; panics if none comes in time.
    #[track_caller]
    fn next(&mut self) -> Msg {
        self.next_before(Instant::now() + DEADLINE)
            .expect("no event within the deadline")
    }

    /// The next `n` messages' seqs.
    #[track_caller]
    fn seqs(&mut self, n: usize) -> Vec<u64> {
        (0..n).map(|_| self.next().seq()).collect()
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------

/// `PUT /api/aliases/{alias}` straight to an address (for writer threads).
#[track_caller]
fn put(addr: SocketAddr, alias: &str, target: &str) -> u16 {
    let body = json!({ "target": target }).to_string();
    let resp = http(
        addr,
        "PUT",
        &alias_path(alias),
        &[("Content-Type", "application/json")],
        Some(body.as_bytes()),
    );
    assert!(resp.status == 200 || resp.status == 201, "{resp:?}");
    resp.status
}

/// One batch of prefix-alias puts (no manifest to write, so it is quick):
/// `<stem><i>-` -> `target` for `i` in `range`. Each op is one event.
#[track_caller]
fn batch_prefix_puts(server: &Server, stem: &str, range: std::ops::Range<usize>, target: &str) {
    let ops: Vec<Value> = range
        .map(|i| {
            json!({ "op": "put", "alias": format!("{stem}{i:05}-"), "target": target, "prefix_matching": true })
        })
        .collect();
    let n_ops = ops.len();
    let resp = server.send_json("POST", "/api/aliases", &json!({ "ops": ops }));
    let body = resp.expect(200);
    assert_eq!(
        body["aliases"].as_array().map(Vec::len),
        Some(n_ops),
        "{resp:?}"
    );
}

/// Every event in the journal, walked in pages of 10,000.
#[track_caller]
fn all_events(server: &Server) -> Vec<Value> {
    let mut events = Vec::new();
    let mut since = 0;
    loop {
        let resp = server.get(&format!("/api/history?since={since}&limit=10000"));
        let body = resp.expect(200);
        events.extend(body["events"].as_array().expect("events").iter().cloned());
        match body["next"].as_u64() {
            Some(next) => since = next,
            None => return events,
        }
    }
}

fn seqs_of(events: &[Value]) -> Vec<u64> {
    events.iter().map(|e| e["seq"].as_u64().unwrap()).collect()
}

/// `/api/history?{query}`: the events and `next`.
#[track_caller]
fn history(server: &Server, query: &str) -> (Vec<Value>, Option<u64>) {
    let resp = server.get(&format!("/api/history?{query}"));
    let body = resp.expect(200);
    let object = body.as_object().unwrap();
    assert_eq!(object.len(), 2, "{resp:?}");
    (
        body["events"].as_array().expect("events").clone(),
        body["next"].as_u64(),
    )
}

/// Polls until `/healthz` reports at least `seq`.
#[track_caller]
fn wait_seq(server: &Server, seq: u64) {
    let deadline = Instant::now() + DEADLINE;
    while server.seq() < seq {
        assert!(Instant::now() < deadline, "seq {seq} never reached");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", aliasd::digest::sha256_hex(bytes))
}

/// The segment files of a journal directory, sorted.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read journal dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segments.sort();
    segments
}

/// Runs `aliasd journal <args> --journal dir`.
fn journal_cmd(dir: &Path, args: &[&str]) -> crate::support::CliOutput {
    let dir = dir.to_str().expect("utf-8 path");
    let mut all = vec!["journal"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--journal", dir]);
    run_cli(&[], &all)
}

/// A metric's value by its full name with labels, as written.
#[track_caller]
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            (key == name).then(|| value.parse::<f64>().expect("a number"))
        })
        .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
}

/// Checks `time` is RFC 3339 in UTC: `YYYY-MM-DDTHH:MM:SS[.frac]Z`.
fn is_rfc3339_utc(time: &str) -> bool {
    let bytes = time.as_bytes();
    let digits = |r: std::ops::Range<usize>| bytes[r].iter().all(u8::is_ascii_digit);
    time.len() >= 20
        && digits(0..4)
        && bytes[4] == b'-'
        && digits(5..7)
        && bytes[7] == b'-'
        && digits(8..10)
        && bytes[10] == b'T'
        && digits(11..13)
        && bytes[13] == b':'
        && digits(14..16)
        && bytes[16] == b':'
        && digits(17..19)
        && time.ends_with('Z')
        && humantime::parse_rfc3339(time).is_ok()
}

// ---------------------------------------------------------------------------
// 1. The shape of an SSE event.
// ---------------------------------------------------------------------------

#[test]
fn sse_events_have_every_field() {
    let server = Server::with_models(&["llama3", "qwen"]);
    let mut stream = Sse::open(server.addr(), "/api/events", &[]);
    assert_eq!(stream.header("cache-control"), Some("no-cache"));

    // Create with a request id of our own.
    let resp = server.send_json_with(
        "PUT",
        "/api/aliases/coder",
        &[("X-Request-Id", "req-issue5-create")],
        &json!({ "target": "llama3" }),
    );
    resp.expect(201);
    assert_eq!(resp.header("x-request-id"), Some("req-issue5-create"));
    // Update without one: the server makes one up and returns it.
    let resp = server.put_alias("coder", "qwen");
    resp.expect(200);
    let generated = resp
        .header("x-request-id")
        .expect("a generated X-Request-Id")
        .to_string();
    assert!(!generated.is_empty());
    let resp = server.delete("/api/aliases/coder");
    assert_eq!(resp.expect(200), &json!({ "deleted": true }));
    let delete_request_id = resp.header("x-request-id").expect("request id").to_string();
    assert_ne!(generated, delete_request_id, "request ids are per request");

    let llama3 = digest(&server.store.read("llama3").unwrap());
    let qwen = digest(&server.store.read("qwen").unwrap());
    let expected = [
        (
            1,
            "alias.created",
            json!("llama3"),
            Value::Null,
            json!(llama3),
            "req-issue5-create".to_string(),
        ),
        (
            2,
            "alias.updated",
            json!("qwen"),
            json!("llama3"),
            json!(qwen),
            generated,
        ),
        (
            3,
            "alias.deleted",
            Value::Null,
            json!("qwen"),
            json!(qwen),
            delete_request_id,
        ),
    ];
    let mut ids = BTreeSet::new();
    for (seq, kind, target, previous, digest, request_id) in expected {
        let msg = stream.next();
        // The wire lines, exactly as SPEC §5 spells them.
        assert_eq!(msg.lines.len(), 3, "{msg:?}");
        assert_eq!(msg.lines[0], format!("id: {seq}"), "{msg:?}");
        assert_eq!(msg.lines[1], format!("event: {kind}"), "{msg:?}");
        assert!(msg.lines[2].starts_with("data: {"), "{msg:?}");
        let event = msg.json();
        let object = event.as_object().expect("object");
        for field in EVENT_FIELDS {
            assert!(object.contains_key(field), "{field} missing in {event}");
        }
        assert_eq!(event["seq"], json!(seq), "{event}");
        assert_eq!(event["type"], json!(kind), "{event}");
        assert_eq!(event["alias"], json!("coder"), "{event}");
        assert_eq!(event["target"], target, "{event}");
        assert_eq!(event["previous_target"], previous, "{event}");
        assert_eq!(event["digest"], digest, "{event}");
        assert_eq!(event["request_id"], json!(request_id), "{event}");
        let id = event["id"].as_str().expect("id is a string");
        let uuid = uuid::Uuid::parse_str(id).unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(uuid.hyphenated().to_string(), id, "canonical UUID form");
        assert!(ids.insert(id.to_string()), "event ids are unique");
        let time = event["time"].as_str().expect("time");
        assert!(is_rfc3339_utc(time), "{time}");
        let age = std::time::SystemTime::now()
            .duration_since(humantime::parse_rfc3339(time).unwrap())
            .unwrap_or_default();
        assert!(age < Duration::from_secs(60), "{time} is not now");
        let actor = event["actor"].as_str().expect("actor");
        let port = actor
            .strip_prefix("anonymous@127.0.0.1:")
            .unwrap_or_else(|| panic!("actor {actor}"));
        assert!(port.parse::<u16>().is_ok_and(|p| p > 0), "{actor}");
        // The same event, byte for byte, in the history.
        let (stored, _) = history(&server, &format!("since={}&limit=1", seq - 1));
        assert_eq!(stored, std::slice::from_ref(&event));
    }
}

// ---------------------------------------------------------------------------
// 2. Cursors and filters.
// ---------------------------------------------------------------------------

#[test]
fn sse_without_cursor_starts_with_new_events() {
    let server = Server::with_models(&["llama3"]);
    for alias in ["a", "b", "c"] {
        server.create(alias, "llama3");
    }
    let mut stream = Sse::open(server.addr(), "/api/events", &[]);
    server.create("d", "llama3");
    let msg = stream.next();
    assert_eq!(msg.seq(), 4, "the old events are not replayed: {msg:?}");
    assert_eq!(msg.json()["alias"], json!("d"));
}

#[test]
fn sse_since_and_last_event_id_replay_then_go_live() {
    let server = Server::with_models(&["llama3", "qwen"]);
    for alias in ["a", "b", "c", "d"] {
        server.create(alias, "llama3");
    }
    let history = all_events(&server);
    assert_eq!(seqs_of(&history), [1, 2, 3, 4]);

    let mut by_query = Sse::open(server.addr(), "/api/events?since=2", &[]);
    let mut by_header = Sse::open(server.addr(), "/api/events", &[("Last-Event-ID", "1")]);
    let mut from_zero = Sse::open(server.addr(), "/api/events?since=0", &[]);
    let mut from_now = Sse::open(server.addr(), "/api/events?since=4", &[]);
    // Replayed events are the journal's, byte for byte.
    let replayed: Vec<Value> = (0..2).map(|_| by_query.next().json()).collect();
    assert_eq!(replayed, history[2..]);
    assert_eq!(by_header.seqs(3), [2, 3, 4]);
    assert_eq!(from_zero.seqs(4), [1, 2, 3, 4]);

    // Live: each stream continues with 5, 6, with no duplicate and no gap.
    server.create("a", "qwen");
    server.create("e", "llama3");
    for stream in [&mut by_query, &mut by_header, &mut from_zero, &mut from_now] {
        assert_eq!(stream.seqs(2), [5, 6]);
    }
    // An EventSource reconnecting to `?since=0` sends the last id it saw:
    // the header wins, so nothing is replayed twice.
    let mut reconnected = Sse::open(
        server.addr(),
        "/api/events?since=0",
        &[("Last-Event-ID", "5")],
    );
    assert_eq!(reconnected.next().seq(), 6);
    // A cursor at or past the end waits for new events only.
    let mut ahead = Sse::open(server.addr(), "/api/events?since=6", &[]);
    server.create("f", "llama3");
    assert_eq!(ahead.next().seq(), 7);
    assert_eq!(by_query.next().seq(), 7);
}

#[test]
fn sse_alias_filter() {
    let server = Server::with_models(&["llama3", "qwen"]);
    server.create("a", "llama3"); // 1
    server.create("b", "llama3"); // 2
    server.create("b", "qwen"); // 3
    server.create("a", "qwen"); // 4
    server.create("team/b:v2", "a"); // 5: another name, not b (and a chain)
    let mut by_short = Sse::open(server.addr(), "/api/events?alias=b&since=0", &[]);
    // Names compare case-insensitively and in any spelling of the same name.
    let mut by_long = Sse::open(
        server.addr(),
        "/api/events?alias=registry.ollama.ai/library/B:latest&since=0",
        &[],
    );
    let mut live_only = Sse::open(server.addr(), "/api/events?alias=b", &[]);
    for stream in [&mut by_short, &mut by_long] {
        let events: Vec<(u64, String)> = (0..2)
            .map(|_| {
                let msg = stream.next();
                (msg.seq(), msg.json()["alias"].as_str().unwrap().to_string())
            })
            .collect();
        assert_eq!(events, [(2, "b".to_string()), (3, "b".to_string())]);
    }
    // Filtered out: a's update, and the target.changed of team/b:v2 it causes.
    server.create("a", "llama3");
    let resp = server.delete("/api/aliases/b");
    resp.expect(200);
    let deleted = server.seq();
    assert_eq!(deleted, 8);
    for stream in [&mut by_short, &mut by_long, &mut live_only] {
        let msg = stream.next();
        assert_eq!(msg.seq(), deleted, "{msg:?}");
        assert_eq!(msg.event.as_deref(), Some("alias.deleted"));
    }
}

// ---------------------------------------------------------------------------
// 3. Resume across disconnects while writers write.
// ---------------------------------------------------------------------------

#[test]
fn sse_resume_after_disconnect_under_concurrent_writes() {
    const WRITERS: usize = 4;
    const PER_WRITER: usize = 60;
    let server = Server::with_models(&["llama3"]);
    let addr = server.addr();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            std::thread::spawn(move || {
                for i in 0..PER_WRITER {
                    put(addr, &format!("w{w}-{i}"), "llama3");
                }
            })
        })
        .collect();

    let mut received: Vec<u64> = Vec::new();
    let mut connections = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    'connections: loop {
        connections += 1;
        let mut stream = match received.last() {
            None => Sse::open(addr, "/api/events?since=0", &[]),
            Some(id) => Sse::open(addr, "/api/events", &[("Last-Event-ID", &id.to_string())]),
        };
        // Read a few events, then hang up and resume from the last id seen.
        for _ in 0..37 {
            loop {
                assert!(Instant::now() < deadline, "took too long: {received:?}");
                if let Some(msg) = stream.next_before(Instant::now() + Duration::from_millis(200)) {
                    received.push(msg.seq());
                    break;
                }
                // Nothing for a while: done once the writers are and we saw the last seq.
                if writers.iter().all(|w| w.is_finished())
                    && received.last().copied().unwrap_or(0) >= server.seq()
                {
                    break 'connections;
                }
            }
        }
    }
    for writer in writers {
        writer.join().expect("writer");
    }
    let n = server.seq();
    assert_eq!(n, (WRITERS * PER_WRITER) as u64);
    assert!(connections >= 3, "only {connections} connections");
    let expected: Vec<u64> = (1..=n).collect();
    assert_eq!(received, expected, "every event once, in order");
}

// ---------------------------------------------------------------------------
// 4. Many subscribers.
// ---------------------------------------------------------------------------

#[test]
fn sse_200_subscribers_get_all_1000_events_in_order() {
    const SUBSCRIBERS: usize = 200;
    const WRITERS: usize = 4;
    const EVENTS: usize = 1000;
    let server = Server::with_models(&["llama3"]);
    let addr = server.addr();
    let started = Instant::now();
    // Every subscriber is connected (its head read) before the first write.
    let streams: Vec<Sse> = (0..SUBSCRIBERS)
        .map(|_| Sse::open(addr, "/api/events", &[]))
        .collect();
    let readers: Vec<_> = streams
        .into_iter()
        .map(|mut stream| {
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(60);
                let mut seqs = Vec::with_capacity(EVENTS);
                while seqs.len() < EVENTS {
                    match stream.next_before(deadline) {
                        Some(msg) => seqs.push(msg.seq()),
                        None => break,
                    }
                }
                seqs
            })
        })
        .collect();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            std::thread::spawn(move || {
                for i in (w..EVENTS).step_by(WRITERS) {
                    put(addr, &format!("m{i}"), "llama3");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().expect("writer");
    }
    assert_eq!(server.seq(), EVENTS as u64);
    let expected: Vec<u64> = (1..=EVENTS as u64).collect();
    for (idx, reader) in readers.into_iter().enumerate() {
        let seqs = reader.join().expect("reader");
        assert!(
            seqs == expected,
            "subscriber {idx}: got {} events, first differences at {:?}",
            seqs.len(),
            seqs.iter().zip(&expected).position(|(a, b)| a != b)
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------
// 5. A stalled subscriber is caught up from the journal.
// ---------------------------------------------------------------------------

#[test]
fn sse_stalled_subscriber_catches_up_from_the_journal() {
    const EVENTS: usize = 10_000;
    const BATCH: usize = 4;
    /// Required by the issue: the subscriber reads nothing for this long.
    const PAUSE: Duration = Duration::from_secs(10);
    // Long names make each event about 1 KB, 10 MB in all: more than the
    // loopback socket buffers (at most 4 MB each way here) can hold, and
    // with a few events per request the rest is far more batches than the
    // broadcast ring keeps (`publisher::BROADCAST_CAPACITY`, 256), so the
    // subscriber must lag.
    let target = format!("{}/{}", "n".repeat(80), "m".repeat(80));
    let stem = "stalled-subscriber-".repeat(24);
    let server = Server::start(TestStore::with_models(&[&target]));
    let mut stream = Sse::open(server.addr(), "/api/events", &[]);
    let paused = Instant::now();
    for start in (0..EVENTS).step_by(BATCH) {
        batch_prefix_puts(&server, &stem, start..start + BATCH, &target);
    }
    assert_eq!(server.seq(), EVENTS as u64);
    let wrote_in = paused.elapsed();
    std::thread::sleep(PAUSE.saturating_sub(wrote_in));

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut expected = 1;
    while expected <= EVENTS as u64 {
        let msg = stream
            .next_before(deadline)
            .unwrap_or_else(|| panic!("stream ended or stalled before seq {expected}"));
        assert_eq!(msg.seq(), expected, "gap or duplicate");
        if expected % 1000 == 0 {
            let event = msg.json();
            assert_eq!(event["seq"], json!(expected));
            assert_eq!(
                event["alias"],
                json!(format!("{stem}{:05}-", expected - 1)),
                "{event}"
            );
        }
        expected += 1;
    }
    // It is live again afterwards.
    server.create("after", &target);
    assert_eq!(stream.next().seq(), EVENTS as u64 + 1);
    // The writes did not wait for the subscriber (all 10,000 were
    // acknowledged while it read nothing; their speed is measured in
    // `benches/sse_delivery.rs`, not here), and it did lag, so the journal
    // catch-up was what filled the gap.
    assert!(
        server.stderr().contains("subscriber lagged"),
        "the subscriber never lagged; the test did not exercise catch-up"
    );
}

// ---------------------------------------------------------------------------
// 6. History: filters and pages.
// ---------------------------------------------------------------------------

/// 24 events: creates, updates and deletes over a, b, c.
fn history_fixture() -> Server {
    let server = Server::with_models(&["llama3", "qwen"]);
    for round in 0..4 {
        for alias in ["a", "b", "c"] {
            let target = if round % 2 == 0 { "llama3" } else { "qwen" };
            server.create(alias, target);
        }
        if round % 2 == 1 {
            for alias in ["b", "c"] {
                server.delete(&alias_path(alias)).expect(200);
            }
        }
    }
    // a: created + 3 updates; b, c: created, updated, deleted, twice.
    assert_eq!(server.seq(), 16);
    server
}

#[test]
fn history_filters() {
    let server = history_fixture();
    let all = all_events(&server);
    assert_eq!(seqs_of(&all), (1..=16).collect::<Vec<u64>>());
    // Default page: everything here (fewer than 100), next null.
    let (events, next) = history(&server, "");
    assert_eq!(events, all);
    assert_eq!(next, None);

    let (events, next) = history(&server, "alias=a");
    let expected: Vec<Value> = all.iter().filter(|e| e["alias"] == "a").cloned().collect();
    assert_eq!(events, expected);
    assert_eq!(events.len(), 4);
    assert_eq!(next, None);
    let (same, _) = history(&server, "alias=registry.ollama.ai/library/A:latest");
    assert_eq!(same, expected);

    for kind in ["alias.created", "alias.updated", "alias.deleted"] {
        let (events, _) = history(&server, &format!("type={kind}"));
        let expected: Vec<Value> = all.iter().filter(|e| e["type"] == kind).cloned().collect();
        assert!(!expected.is_empty());
        assert_eq!(events, expected, "{kind}");
    }
    let (events, _) = history(&server, "type=alias.deleted&alias=b");
    assert_eq!(events.len(), 2);
    assert!(events
        .iter()
        .all(|e| e["alias"] == "b" && e["type"] == "alias.deleted"));

    let (events, next) = history(&server, "since=5&until=10");
    assert_eq!(seqs_of(&events), [6, 7, 8, 9, 10]);
    assert_eq!(next, None);
    let (events, _) = history(&server, "since=16");
    assert!(events.is_empty());
    let (events, _) = history(&server, "until=0");
    assert!(events.is_empty());
    let (events, next) = history(&server, "since=2&limit=3");
    assert_eq!(seqs_of(&events), [3, 4, 5]);
    assert_eq!(next, Some(5));
    let (events, next) = history(&server, "limit=10000");
    assert_eq!(events.len(), 16);
    assert_eq!(next, None);

    for bad in ["limit=0", "limit=10001", "limit=100000"] {
        server
            .get(&format!("/api/history?{bad}"))
            .expect_error(400, "limit");
    }
    server
        .get("/api/history?type=alias.renamed")
        .expect_error(400, "alias.renamed");
}

#[test]
fn history_pages_walk_the_whole_list() {
    let server = history_fixture();
    let all = all_events(&server);
    // Page sizes that divide 16 and that do not; one filtered walk.
    for (query, expected) in [
        ("limit=4", all.clone()),
        ("limit=5", all.clone()),
        ("limit=1", all.clone()),
        ("limit=16", all.clone()),
        (
            "limit=2&alias=a",
            all.iter().filter(|e| e["alias"] == "a").cloned().collect(),
        ),
        (
            "limit=3&type=alias.deleted",
            all.iter()
                .filter(|e| e["type"] == "alias.deleted")
                .cloned()
                .collect(),
        ),
    ] {
        let mut walked = Vec::new();
        let mut since = 0;
        let mut pages = 0;
        loop {
            pages += 1;
            assert!(pages <= 20, "{query}: no end");
            let (events, next) = history(&server, &format!("{query}&since={since}"));
            walked.extend(events.iter().cloned());
            match next {
                Some(next) => {
                    assert_eq!(next, events.last().unwrap()["seq"].as_u64().unwrap());
                    since = next;
                }
                None => break,
            }
        }
        assert_eq!(walked, expected, "{query}");
    }
}

// ---------------------------------------------------------------------------
// 7. Time travel.
// ---------------------------------------------------------------------------

/// `?at_seq=N` as alias -> (target, state).
#[track_caller]
fn registry_at(server: &Server, seq: u64) -> BTreeMap<String, (String, String)> {
    let resp = server.get(&format!("/api/aliases?at_seq={seq}"));
    resp.expect(200)["aliases"]
        .as_array()
        .unwrap_or_else(|| panic!("{resp:?}"))
        .iter()
        .map(|a| {
            assert!(a["seq"].as_u64().unwrap() <= seq, "{a} after {seq}");
            (
                a["alias"].as_str().unwrap().to_string(),
                (
                    a["target"].as_str().unwrap().to_string(),
                    a["state"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect()
}

#[test]
fn time_travel_matches_a_replay_of_the_history() {
    let server = Server::with_models(&["llama3", "qwen", "mistral"]);
    server.create("a", "llama3"); // 1
    server.create("b", "a"); // 2 (chain)
    server.create("a", "qwen"); // 3, and b's target.changed
    server.create("c", "mistral"); // 4 (+ target.changed of b)
    server.delete(&alias_path("b")).expect(200);
    let resp = server.send_json(
        "POST",
        "/api/aliases",
        &json!({ "ops": [
            { "op": "put", "alias": "b", "target": "c" },
            { "op": "delete", "alias": "a" },
            { "op": "put", "alias": "team/d:v1", "target": "b" },
        ] }),
    );
    resp.expect(200);
    server.create("c", "llama3"); // 9
                                  // llama3 leaves with c, b and team/d:v1 on it: each one dangles.
    server.store.remove_model("llama3");
    let deadline = Instant::now() + DEADLINE;
    let all = loop {
        let all = all_events(&server);
        let removed = all.iter().filter(|e| e["type"] == "target.removed").count();
        if removed == 3 {
            break all;
        }
        assert!(
            Instant::now() < deadline,
            "no target.removed events: {all:#?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let last = all.len() as u64;

    // Replay by hand: alias -> (target, state).
    let mut state: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut replayed = vec![state.clone()];
    for event in &all {
        let alias = event["alias"].as_str().unwrap().to_string();
        let new_state = match event["type"].as_str().unwrap() {
            "alias.created" | "alias.updated" => {
                let target = event["target"].as_str().unwrap().to_string();
                state.insert(alias.clone(), (target, "active".to_string()));
                None
            }
            "alias.deleted" => {
                state.remove(&alias);
                None
            }
            "target.removed" => Some("dangling"),
            "alias.shadowed" => Some("shadowed"),
            "target.changed" | "target.restored" | "alias.repaired" => Some("active"),
            other => panic!("unexpected {other}: {event}"),
        };
        if let Some(new_state) = new_state {
            let entry = state.get_mut(&alias).unwrap_or_else(|| panic!("{event}"));
            assert_eq!(event["target"].as_str(), Some(entry.0.as_str()), "{event}");
            entry.1 = new_state.to_string();
        }
        replayed.push(state.clone());
    }
    for (seq, expected) in replayed.iter().enumerate() {
        assert_eq!(&registry_at(&server, seq as u64), expected, "at_seq={seq}");
    }
    // Spot checks of what the replay says, so that a wrong replay cannot pass.
    let seq_of = |kind: &str, alias: &str| -> u64 {
        all.iter()
            .find(|e| e["type"] == kind && e["alias"] == alias)
            .and_then(|e| e["seq"].as_u64())
            .unwrap_or_else(|| panic!("no {kind} of {alias}"))
    };
    assert_eq!(
        registry_at(&server, seq_of("alias.created", "b"))["b"].0,
        "a"
    );
    assert_eq!(
        registry_at(&server, seq_of("alias.updated", "a"))["a"].0,
        "qwen"
    );
    assert!(!registry_at(&server, seq_of("alias.deleted", "b")).contains_key("b"));
    let batch_end = seq_of("alias.created", "team/d:v1");
    assert_eq!(
        seq_of("alias.deleted", "a"),
        batch_end - 1,
        "one batch, in op order"
    );
    let after_batch = registry_at(&server, batch_end);
    assert!(!after_batch.contains_key("a"));
    assert_eq!(after_batch["b"].0, "c");
    assert_eq!(after_batch["team/d:v1"].0, "b");
    assert_eq!(after_batch["c"].0, "mistral");
    assert_eq!(registry_at(&server, last)["c"].1, "dangling");
    assert_eq!(
        registry_at(&server, last - 3)["c"],
        ("llama3".to_string(), "active".to_string())
    );
    // Past the end: the registry as it is now.
    let now: BTreeMap<String, (String, String)> = server
        .aliases()
        .iter()
        .map(|a| {
            (
                a["alias"].as_str().unwrap().to_string(),
                (
                    a["target"].as_str().unwrap().to_string(),
                    a["state"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect();
    assert_eq!(registry_at(&server, last), now);
    assert_eq!(replayed.last(), Some(&now));
    assert_eq!(registry_at(&server, 1000), now);
    // Time travel composes with the filters.
    let resp = server.get(&format!("/api/aliases?at_seq={batch_end}&target=c"));
    let listed: Vec<&str> = resp.expect(200)["aliases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["alias"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["b"]);
    server
        .get("/api/aliases?at_seq=x")
        .expect_error(400, "at_seq");
}

// ---------------------------------------------------------------------------
// 8. Offline journal commands.
// ---------------------------------------------------------------------------

/// Where each record of a segment starts: (seq, offset, length with header).
/// The writer may have written zeros ahead of the last record: they are not records.
fn record_offsets(segment: &[u8]) -> Vec<(u64, usize, usize)> {
    let mut offsets = Vec::new();
    let mut at = 24; // The segment header.
    while at + 20 <= segment.len() && segment[at..].iter().any(|&b| b != 0) {
        let len = u32::from_le_bytes(segment[at + 4..at + 8].try_into().unwrap()) as usize;
        let seq = u64::from_le_bytes(segment[at + 8..at + 16].try_into().unwrap());
        offsets.push((seq, at, 20 + len));
        at += 20 + len;
    }
    assert!(at <= segment.len(), "the last record runs past the file");
    offsets
}

/// Bytes of a segment up to the end of its last record.
fn segment_data_len(segment: &[u8]) -> usize {
    record_offsets(segment)
        .last()
        .map_or(24, |(_, offset, len)| offset + len)
}

/// Runs `aliasd serve` on a damaged journal and returns its exit and stderr.
fn serve_expecting_failure(server: &Server) -> (Option<i32>, String) {
    let log = tempfile::NamedTempFile::new().expect("tempfile");
    let mut child = aliasd()
        .arg("serve")
        .arg("--models")
        .arg(server.store.root())
        .arg("--journal")
        .arg(server.journal_dir())
        .arg("--listen")
        .arg("127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log.reopen().expect("reopen"))
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("aliasd serve started where it should have refused");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status.code(), std::fs::read_to_string(log.path()).unwrap())
}

#[test]
fn a_journal_in_use_is_refused_by_a_second_server_and_offline_writers() {
    let server = Server::with_models(&["llama3"]);
    server.create("coder", "llama3");
    let (code, log) = serve_expecting_failure(&server);
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("in use by another process"), "{log}");
    for command in ["dump", "compact"] {
        let out = journal_cmd(server.journal_dir(), &[command]);
        assert_eq!(out.code, Some(1), "{command}: {out:?}");
        assert!(
            out.stderr.contains("in use by another process"),
            "{command}: {out:?}"
        );
    }
    // The running server was not disturbed, and verify only reads.
    server.create("chat", "llama3");
    assert_eq!(server.seq(), 2);
    let out = journal_cmd(server.journal_dir(), &["verify"]);
    assert_eq!(out.code, Some(0), "{out:?}");
}

#[test]
fn journal_verify_dump_and_repair() {
    const ALIASES: usize = 30;
    let mut server = Server::with_models(&["llama3"]);
    for i in 0..ALIASES {
        server.create(&format!("j{i:02}"), "llama3");
    }
    let journaled = all_events(&server);
    assert_eq!(journaled.len(), ALIASES);
    server.stop();
    let dir = server.journal_dir().to_path_buf();
    // The stop wrote a snapshot. Without one the log is all there is and repair keeps its
    // good prefix; with one it keeps the snapshot (see `journal_tamper`).
    for entry in std::fs::read_dir(&dir).expect("read journal dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|x| x == "snap") {
            std::fs::remove_file(path).expect("remove snapshot");
        }
    }

    let out = journal_cmd(&dir, &["verify"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.starts_with("ok: 30 records"), "{out:?}");
    let out = run_cli(
        &["--json"],
        &["journal", "verify", "--journal", dir.to_str().unwrap()],
    );
    let report = out.json();
    assert_eq!(report["ok"], json!(true));
    assert_eq!(report["records"], json!(ALIASES));
    assert_eq!(report["last_seq"], json!(ALIASES));

    // dump: one JSON event per line, the same as the history.
    let out = journal_cmd(&dir, &["dump"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let dumped: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(dumped, journaled);

    // Flip one byte in the middle of the segment.
    let segment_files = segments(&dir);
    assert_eq!(segment_files.len(), 1, "{segment_files:?}");
    let segment = &segment_files[0];
    let name = segment.file_name().unwrap().to_str().unwrap().to_string();
    assert_eq!(name, "00000000000000000001.seg");
    let mut bytes = std::fs::read(segment).unwrap();
    let records = record_offsets(&bytes);
    assert_eq!(records.len(), ALIASES);
    let flip_at = segment_data_len(&bytes) / 2;
    let (damaged_seq, damaged_offset, _) = *records
        .iter()
        .find(|(_, offset, len)| (*offset..offset + len).contains(&flip_at))
        .unwrap();
    assert!(damaged_seq > 1 && damaged_seq < ALIASES as u64);
    bytes[flip_at] ^= 0x40;
    std::fs::write(segment, &bytes).unwrap();
    let before = files_under(&dir);

    let out = journal_cmd(&dir, &["verify"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains(&name), "{out:?}");
    assert!(
        out.stderr.contains(&format!("byte {damaged_offset}")),
        "expected offset {damaged_offset}: {out:?}"
    );
    // The server refuses to start on it, naming the same place.
    let (code, stderr) = serve_expecting_failure(&server);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&name) && stderr.contains(&format!("byte {damaged_offset}")),
        "{stderr}"
    );

    // repair without --yes: says what it would drop, changes nothing, exits 1.
    let out = journal_cmd(&dir, &["repair"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stdout.contains(&format!("byte {damaged_offset}")),
        "{out:?}"
    );
    assert!(out.stderr.contains("--yes"), "{out:?}");
    assert_eq!(
        files_under(&dir),
        before,
        "repair without --yes changed files"
    );

    // repair --yes keeps the good prefix.
    let out = journal_cmd(&dir, &["repair", "--yes"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let kept = damaged_seq - 1;
    assert!(
        out.stdout
            .contains(&format!("journal now ends at seq {kept}")),
        "{out:?}"
    );
    let out = journal_cmd(&dir, &["verify"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let out = journal_cmd(&dir, &["dump"]);
    assert_eq!(out.stdout.lines().count() as u64, kept, "{out:?}");
    // Repairing an intact journal is a no-op.
    let out = journal_cmd(&dir, &["repair", "--yes"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("nothing to repair"), "{out:?}");

    // The server starts on the repaired journal with the good prefix.
    server.start_again();
    assert!(server.seq() >= kept);
    let (events, _) = history(&server, &format!("until={kept}&limit=10000"));
    assert_eq!(events, journaled[..kept as usize]);
    let names: Vec<String> = server
        .aliases()
        .iter()
        .map(|a| a["alias"].as_str().unwrap().to_string())
        .collect();
    let expected: Vec<String> = (0..kept).map(|i| format!("j{i:02}")).collect();
    assert_eq!(names, expected);
}

#[test]
fn journal_compact_writes_a_snapshot_and_restart_keeps_aliases() {
    let mut server = Server::with_models(&["llama3", "qwen"]);
    for i in 0..10 {
        server.create(&format!("k{i}"), if i % 2 == 0 { "llama3" } else { "qwen" });
    }
    server.delete(&alias_path("k3")).expect(200);
    server.create("k4", "k5");
    let before = server.aliases();
    let seq = server.seq();
    server.stop();
    let dir = server.journal_dir().to_path_buf();

    let out = journal_cmd(&dir, &["compact"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout
            .contains(&format!("snapshot written at seq {seq}")),
        "{out:?}"
    );
    let snapshots: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "snap"))
        .collect();
    assert_eq!(snapshots.len(), 1, "{snapshots:?}");
    let out = run_cli(
        &["--json"],
        &["journal", "verify", "--journal", dir.to_str().unwrap()],
    );
    assert_eq!(out.json()["snapshot_seq"], json!(seq));

    server.start_again();
    assert_eq!(server.seq(), seq);
    assert_eq!(server.aliases(), before);
    // History is still whole (the snapshot does not replace the audit trail).
    assert_eq!(all_events(&server).len() as u64, seq);
    // And it still takes writes.
    server.create("k3", "llama3");
    assert_eq!(server.seq(), seq + 1);
}

// ---------------------------------------------------------------------------
// 9. `aliasd watch` and `aliasd history`.
// ---------------------------------------------------------------------------

/// A child process whose stdout lines arrive on a channel; killed on drop.
struct Watching {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
}

impl Watching {
    fn start(server: &Server, args: &[&str]) -> Watching {
        let mut child = aliasd()
            .args(["--host", &server.host()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn aliasd watch");
        let stdout = child.stdout.take().unwrap();
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        Watching { child, lines }
    }

    #[track_caller]
    fn line(&self) -> String {
        self.lines
            .recv_timeout(DEADLINE)
            .expect("aliasd watch printed nothing in time")
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn cli_watch_prints_events_as_they_come() {
    let server = Server::with_models(&["llama3", "qwen"]);
    server.create("coder", "llama3");
    server.create("chat", "qwen");
    let history = all_events(&server);

    let json_watch = Watching::start(&server, &["watch", "--json", "--since", "0"]);
    let table_watch = Watching::start(&server, &["watch", "--since", "1"]);
    let printed: Vec<Value> = (0..2)
        .map(|_| serde_json::from_str(&json_watch.line()).expect("a JSON line"))
        .collect();
    assert_eq!(printed, history);
    let line = table_watch.line();
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cells[0], "2", "{line}");
    assert_eq!(cells[2..5], ["alias.created", "chat", "qwen"], "{line}");

    // Live events follow.
    server.create("coder", "qwen");
    let live: Value = serde_json::from_str(&json_watch.line()).unwrap();
    assert_eq!(live["seq"], json!(3));
    assert_eq!(live["type"], json!("alias.updated"));
    assert_eq!(live["previous_target"], json!("llama3"));
    let line = table_watch.line();
    assert!(
        line.starts_with("3 ") && line.contains("alias.updated"),
        "{line}"
    );
}

#[test]
fn cli_history_table_and_json() {
    let server = Server::with_models(&["llama3", "qwen"]);
    server.create("coder", "llama3");
    server.create("chat", "qwen");
    server.create("coder", "qwen");
    server.delete(&alias_path("coder")).expect(200);

    let out = server.cli(&["history", "coder"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let mut lines = out.stdout.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["SEQ", "TIME", "TYPE", "ALIAS", "TARGET", "ACTOR"]);
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.len(), 3, "{out:?}");
    let cells: Vec<(&str, &str, &str)> = rows.iter().map(|r| (r[0], r[2], r[3])).collect();
    assert_eq!(
        cells,
        [
            ("1", "alias.created", "coder"),
            ("3", "alias.updated", "coder"),
            ("4", "alias.deleted", "coder"),
        ]
    );
    assert!(rows[0][5].starts_with("anonymous@127.0.0.1:"), "{out:?}");

    let out = server.cli(&["--json", "history", "coder"]);
    let resp = server.get("/api/history?alias=coder");
    assert_eq!(out.json(), *resp.expect(200));
    let out = server.cli(&["history", "--json"]);
    assert_eq!(out.json()["events"].as_array().unwrap().len(), 4);

    // `--limit N` keeps the latest N, oldest first, with or without a filter.
    let out = server.cli(&["--json", "history", "--limit", "2"]);
    assert_eq!(
        seqs_of(out.json()["events"].as_array().unwrap()),
        [3, 4],
        "{out:?}"
    );
    let out = server.cli(&["--json", "history", "coder", "--limit", "2"]);
    assert_eq!(
        seqs_of(out.json()["events"].as_array().unwrap()),
        [3, 4],
        "{out:?}"
    );
    let out = server.cli(&["--json", "history", "chat", "--limit", "5"]);
    assert_eq!(
        seqs_of(out.json()["events"].as_array().unwrap()),
        [2],
        "{out:?}"
    );

    // An error from the server: exit 1 and its message.
    let down = run_cli(&["--host", "127.0.0.1:1"], &["history"]);
    assert_eq!(down.code, Some(1), "{down:?}");
}

// ---------------------------------------------------------------------------
// 10. /metrics.
// ---------------------------------------------------------------------------

#[test]
fn metrics_report_aliases_journal_subscribers_events_and_requests() {
    let server = Server::with_models(&["llama3", "qwen"]);
    server.create("a", "llama3");
    server.create("b", "llama3");
    server.create("c", "a");
    server.create("b", "qwen");
    server.delete(&alias_path("c")).expect(200);
    server.get("/api/aliases/nope").expect_error(404, "nope");
    server.get("/no/such/route").expect_error(404, "");
    server.get("/api/resolve/a").expect(200);
    server.store.remove_model("qwen"); // b dangles (watcher)
    wait_seq(&server, 6);

    let scrape = || {
        let resp = server.get("/metrics");
        assert_eq!(resp.status, 200, "{resp:?}");
        assert!(
            resp.header("content-type")
                .is_some_and(|v| v.starts_with("text/plain")),
            "{resp:?}"
        );
        String::from_utf8(resp.body).unwrap()
    };
    // Events are counted once their files are written, just after the journal
    // seq moves: wait for the last one to be counted.
    let deadline = Instant::now() + DEADLINE;
    let text = loop {
        let text = scrape();
        if metric(&text, "aliasd_events_total{type=\"target.removed\"}") == 1.0 {
            break text;
        }
        assert!(Instant::now() < deadline, "target.removed never counted");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(metric(&text, "aliasd_aliases{state=\"active\"}"), 1.0);
    assert_eq!(metric(&text, "aliasd_aliases{state=\"dangling\"}"), 1.0);
    assert_eq!(metric(&text, "aliasd_aliases{state=\"shadowed\"}"), 0.0);
    assert_eq!(metric(&text, "aliasd_journal_seq"), 6.0);
    let segment_bytes: u64 = segments(server.journal_dir())
        .iter()
        .map(|p| segment_data_len(&std::fs::read(p).unwrap()) as u64)
        .sum();
    assert_eq!(metric(&text, "aliasd_journal_bytes"), segment_bytes as f64);
    assert!(text.contains("# TYPE aliasd_journal_commit_seconds histogram"));
    let commits = metric(&text, "aliasd_journal_commit_seconds_count");
    assert!(
        (1.0..=6.0).contains(&commits),
        "{commits} commits for 6 events"
    );
    assert_eq!(
        metric(&text, "aliasd_journal_commit_seconds_bucket{le=\"+Inf\"}"),
        commits
    );
    assert!(metric(&text, "aliasd_journal_commit_seconds_sum") > 0.0);
    let buckets: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("aliasd_journal_commit_seconds_bucket"))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse().unwrap())
        .collect();
    assert!(
        buckets.len() > 5 && buckets.windows(2).all(|w| w[0] <= w[1]),
        "{buckets:?}"
    );
    for (kind, n) in [
        ("alias.created", 3.0),
        ("alias.updated", 1.0),
        ("alias.deleted", 1.0),
        ("target.removed", 1.0),
        ("target.changed", 0.0),
    ] {
        assert_eq!(
            metric(&text, &format!("aliasd_events_total{{type=\"{kind}\"}}")),
            n,
            "{kind}"
        );
    }
    // Requests by route template and status.
    let requests: Vec<(&str, f64)> = text
        .lines()
        .filter(|l| l.starts_with("aliasd_http_requests_total{"))
        .map(|l| {
            let (key, value) = l.rsplit_once(' ').unwrap();
            (key, value.parse().unwrap())
        })
        .collect();
    let count = |route_part: &str, status: u16| -> f64 {
        requests
            .iter()
            .filter(|(k, _)| k.contains(route_part) && k.contains(&format!("status=\"{status}\"")))
            .map(|(_, v)| v)
            .sum()
    };
    assert_eq!(count("/api/aliases/", 201), 3.0, "{requests:?}");
    assert_eq!(count("/api/aliases/", 404), 1.0, "{requests:?}");
    assert!(count("/healthz", 200) >= 1.0, "{requests:?}");
    assert_eq!(
        count("route=\"/api/resolve/{*name}\"", 200),
        1.0,
        "{requests:?}"
    );
    assert_eq!(count("route=\"unmatched\"", 404), 1.0, "{requests:?}");
    assert!(
        requests
            .iter()
            .all(|(k, _)| !k.contains("/api/aliases/nope")),
        "routes are templates, not paths: {requests:?}"
    );

    // Subscribers: up while a stream is open, down after it closes.
    assert_eq!(metric(&text, "aliasd_subscribers"), 0.0);
    let first = Sse::open(server.addr(), "/api/events", &[]);
    let second = Sse::open(server.addr(), "/api/events?since=0", &[]);
    assert_eq!(metric(&scrape(), "aliasd_subscribers"), 2.0);
    drop(first);
    drop(second);
    // The server notices a closed stream when it next writes (or polls) it.
    server.create("d", "llama3");
    let deadline = Instant::now() + DEADLINE;
    while metric(&scrape(), "aliasd_subscribers") != 0.0 {
        assert!(
            Instant::now() < deadline,
            "subscribers never went back to 0"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = scrape();
    assert_eq!(metric(&text, "aliasd_journal_seq"), 7.0);
    assert_eq!(
        metric(&text, "aliasd_events_total{type=\"alias.created\"}"),
        4.0
    );
}

/// With `--retain`, old segments go once a snapshot covers them: a
/// subscriber whose cursor is older gets `reset` first, then everything still
/// retained; time travel into the dropped past is 410.
#[test]
fn retention_resets_old_cursors_and_refuses_lost_time_travel() {
    let store = TestStore::with_models(&["m"]);
    let server = Server::start_with_args(
        store,
        &[
            "--retain",
            "50",
            "--snapshot-every",
            "100",
            "--segment-bytes",
            "4096",
        ],
    );
    // 600 events in batches of 50 puts, each event ~250 bytes: many segments.
    for round in 0..12 {
        batch_prefix_puts(&server, &format!("r{round}-"), 0..50, "m");
    }
    wait_seq(&server, 600);
    // The first retained seq is past 1: old segments went, and at least the
    // last 50 events stay.
    let (events, _) = history(&server, "since=0&limit=1");
    let first = events[0]["seq"].as_u64().unwrap();
    assert!(first > 1, "nothing was dropped: first retained seq {first}");
    assert!(first <= 551, "fewer than 50 events retained: first {first}");

    let mut sse = Sse::open(server.addr(), "/api/events?since=0", &[]);
    let reset = sse.next();
    assert_eq!(reset.event.as_deref(), Some("reset"), "{reset:?}");
    assert_eq!(reset.json()["earliest"].as_u64(), Some(first));
    let next = sse.next();
    assert_eq!(next.seq(), first);

    server
        .get("/api/aliases?at_seq=10")
        .expect_error(410, "no longer retained");
    let now = server.get(&format!("/api/aliases?at_seq={}", server.seq()));
    assert_eq!(now.expect(200)["aliases"].as_array().unwrap().len(), 600);
}
