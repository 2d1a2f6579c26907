//! Request limits (SPEC §5 "Security"): bodies over 64 KiB, with a length
//! or chunked, the subscriber cap, a body that never comes, and the
//! framework's own errors as JSON.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::sse::Sse;
use crate::support::{alias_path, Server, TestStore, WAIT};

#[test]
fn limits_bodies_subscribers_slow_requests_and_framework_errors() {
    let server = Server::builder(TestStore::with_models(&["llama3"]))
        .args(&["--max-subscribers", "2", "--request-timeout-secs", "1"])
        .start();
    let addr = server.addr();

    // Over 64 KiB, with a length, or chunked without one: 413.
    let big = json!({ "target": "llama3", "pad": "x".repeat(70 * 1024) });
    server
        .send_json("PUT", &alias_path("big"), &big)
        .expect_error(413, "");
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    let head = format!(
        "POST /api/aliases HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        addr
    );
    stream.write_all(head.as_bytes()).expect("write");
    let chunk = vec![b' '; 8 * 1024];
    for _ in 0..10 {
        let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
        if stream.write_all(&framed).is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n");
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains(r#"{"error":"#), "{text}");

    // Two subscribers at once; the third gets 503; after one leaves, a new one fits.
    let first = Sse::open_any(addr, "/api/events", &[]);
    let second = Sse::open_any(addr, "/api/events", &[]);
    assert_eq!((first.status, second.status), (200, 200));
    let resp = server.get("/api/events");
    let message = resp.expect_error(503, "too many event subscribers");
    assert!(message.contains("--max-subscribers"), "{message}");
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = Sse::open_any(addr, "/api/events", &[]).status;
        if status == 200 {
            break;
        }
        assert_eq!(status, 503);
        assert!(
            Instant::now() < deadline,
            "a subscriber that left is still counted"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // A body that never comes: 408 after the 1 s timeout, as JSON.
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    let head = format!(
        "PUT /api/aliases/slow HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n",
        addr
    );
    stream.write_all(head.as_bytes()).expect("write");
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&raw).contains("}") {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) => panic!(
                "no answer to a slow body after {:?}: {e}",
                started.elapsed()
            ),
        }
    }
    let elapsed = started.elapsed();
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("application/json"), "{text}");
    assert!(text.contains("took too long"), "{text}");
    assert!(elapsed < Duration::from_secs(5), "408 after {elapsed:?}");
    assert_eq!(server.get("/api/aliases/slow").status, 404);

    // The framework's own errors are JSON.
    server.get("/nope").expect_error(404, "no route");
    server
        .request("DELETE", "/api/models", &[], None)
        .expect_error(405, "");
    server
        .request("PATCH", "/api/aliases/x", &[], None)
        .expect_error(405, "");
    server
        .request("POST", "/healthz", &[], None)
        .expect_error(405, "");
    // No route answers 415: bodies are read as JSON whatever the
    // Content-Type (as Ollama does); what is not JSON is a 400.
    server
        .request(
            "PUT",
            "/api/aliases/x",
            &[("Content-Type", "text/plain")],
            Some(b"target=llama3"),
        )
        .expect_error(400, "json");
    assert_eq!(server.seq(), 0);
}
