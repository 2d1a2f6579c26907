//! The event stream (issue 5): `/api/events`' SSE shape, cursors and
//! filters, resume across disconnects under concurrent writes, many
//! subscribers, and a stalled subscriber caught up from the journal.
//!
//! SSE is read with [`Sse`], a small client of our own that de-chunks the
//! body as it arrives and never blocks past a deadline.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::sse::Sse;
use crate::support::{alias_path, digest, http, seqs_of, Server, TestStore, EVENT_FIELDS};

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
        let (stored, _) = server.history(&format!("since={}&limit=1", seq - 1));
        assert_eq!(stored, std::slice::from_ref(&event));
    }
}

// ---------------------------------------------------------------------------
// Cursors and filters.
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
    let history = server.all_events();
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
// Resume across disconnects while writers write.
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
// Many subscribers.
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
// A stalled subscriber is caught up from the journal.
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
        server.batch_prefix_puts(&stem, start..start + BATCH, &target);
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
