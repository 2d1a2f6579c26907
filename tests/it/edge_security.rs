//! The HTTP edge against hostile web pages and clients (issue 17): browser
//! origins and DNS rebinding, slow and idle connections, a connection cap
//! under a small open-file limit, writes that outlive the request timeout,
//! and the small items (hyper's own errors as JSON, bodies that are not
//! objects, `If-Match: *`, the `Bearer` scheme's case, a misleading log line).
//!
//! Each test reproduces the attack against the real binary. The timeouts
//! these tests shorten are set through the environment, which an aliasd
//! without them ignores, so that the test fails there rather than refusing
//! to start.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{alias_path, parse_response, Resp, Server, TestStore};

/// A generous bound for what should take a second or a few: it only guards
/// against a hang.
const DEADLINE: Duration = Duration::from_secs(30);

/// Sends `request` as given (any `Host`, or none) and reads the whole answer.
fn raw(addr: SocketAddr, request: &[u8]) -> Resp {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    // The server may answer and close before it has read a large request.
    let _ = stream.write_all(request);
    let mut answer = Vec::new();
    if let Err(e) = stream.read_to_end(&mut answer) {
        assert!(!answer.is_empty(), "no answer: {e}");
    }
    parse_response(&answer)
        .unwrap_or_else(|| panic!("not HTTP: {:?}", String::from_utf8_lossy(&answer)))
}

/// `method path` with this `Host` header (`None`: no Host, HTTP/1.0).
fn with_host(addr: SocketAddr, method: &str, path: &str, host: Option<&str>, body: &str) -> Resp {
    let request = match host {
        Some(host) => format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
        None => format!(
            "{method} {path} HTTP/1.0\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    };
    raw(addr, request.as_bytes())
}

/// Reads one response from a keep-alive connection: its head, and a body of
/// its `content-length`.
fn read_one_response(stream: &mut TcpStream) -> Resp {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).expect("read head");
        assert!(n > 0, "closed before a response: {raw:?}");
        raw.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&raw).to_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().expect("length"))
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).expect("read body");
    raw.extend_from_slice(&body);
    parse_response(&raw).expect("a response")
}

/// Waits until the server closes `stream` (EOF or reset), writing `trickle`
/// a byte at a time meanwhile if given; the time it took, or `None` when it
/// was still open at `deadline`.
fn closed_within(stream: &mut TcpStream, trickle: &[u8], deadline: Duration) -> Option<Duration> {
    let started = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut next = trickle.iter().cycle();
    let mut buf = [0u8; 256];
    while started.elapsed() < deadline {
        if !trickle.is_empty() {
            let byte = *next.next().expect("cycle");
            if stream.write_all(&[byte]).is_err() {
                return Some(started.elapsed());
            }
        }
        match stream.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some(started.elapsed()),
        }
    }
    None
}

// ---------------------------------------------------------------------------
// Origins and hosts.
// ---------------------------------------------------------------------------

#[test]
fn issue17_a_page_from_another_origin_can_neither_change_nor_read_aliases() {
    let server = Server::with_models(&["llama3", "qwen"]);
    server.create("coder", "llama3");
    let seq = server.seq();
    let before = server.aliases();
    let evil = [("Origin", "https://evil.example")];

    // The "simple" request a browser sends without a preflight.
    let batch = json!({ "ops": [{ "op": "put", "alias": "coder", "target": "qwen" }] });
    let resp = server.request(
        "POST",
        "/api/aliases",
        &[
            ("Origin", "https://evil.example"),
            ("Content-Type", "text/plain"),
        ],
        Some(batch.to_string().as_bytes()),
    );
    let message = resp.expect_error(403, "not allowed");
    assert!(message.contains("--cors-origin"), "{message}");
    assert_eq!(resp.header("access-control-allow-origin"), None);

    for (method, path, body) in [
        (
            "PUT",
            alias_path("coder"),
            Some(json!({ "target": "qwen" })),
        ),
        ("DELETE", alias_path("coder"), None),
        (
            "POST",
            "/api/experimental/aliases".to_string(),
            Some(json!({ "alias": "x", "target": "qwen" })),
        ),
        ("GET", "/api/aliases".to_string(), None),
        ("GET", alias_path("coder"), None),
        ("GET", "/api/resolve/coder".to_string(), None),
        ("GET", "/api/history".to_string(), None),
        ("GET", "/api/events".to_string(), None),
        ("GET", "/metrics".to_string(), None),
        ("GET", "/healthz".to_string(), None),
        ("GET", "/no/such/route".to_string(), None),
    ] {
        let resp = match &body {
            Some(body) => server.send_json_with(method, &path, &evil, body),
            None => server.request(method, &path, &evil, None),
        };
        assert_eq!(resp.status, 403, "{method} {path}: {resp:?}");
        resp.expect_error(403, "not allowed");
    }
    // `null` is what a sandboxed frame sends; a preflight is refused too.
    server
        .request("GET", "/api/aliases", &[("Origin", "null")], None)
        .expect_error(403, "not allowed");
    server
        .request(
            "OPTIONS",
            &alias_path("coder"),
            &[
                ("Origin", "https://evil.example"),
                ("Access-Control-Request-Method", "PUT"),
            ],
            None,
        )
        .expect_error(403, "not allowed");

    assert_eq!(server.seq(), seq, "a refused request changed something");
    assert_eq!(server.aliases(), before);
}

#[test]
fn issue17_allowed_origins_get_cors_and_preflights_allow_the_asked_headers() {
    let server = Server::start_with_args(
        TestStore::with_models(&["llama3"]),
        &[
            "--cors-origin",
            "https://app.example",
            "--cors-origin",
            "https://two.example,https://three.example",
        ],
    );
    for origin in [
        "https://app.example",
        "https://two.example",
        "https://three.example",
        "http://localhost:5173",
        "http://127.0.0.1:8080",
        "http://[::1]:3000",
    ] {
        let resp = server.request(
            "OPTIONS",
            &alias_path("coder"),
            &[
                ("Origin", origin),
                ("Access-Control-Request-Method", "PUT"),
                (
                    "Access-Control-Request-Headers",
                    "content-type, if-match, x-custom-trace",
                ),
                ("Access-Control-Request-Private-Network", "true"),
            ],
            None,
        );
        assert_eq!(resp.status, 204, "{origin}: {resp:?}");
        assert_eq!(resp.header("access-control-allow-origin"), Some(origin));
        assert_eq!(
            resp.header("access-control-allow-headers"),
            Some("content-type, if-match, x-custom-trace"),
            "{resp:?}"
        );
        assert_eq!(
            resp.header("access-control-allow-private-network"),
            Some("true")
        );
        let methods = resp.header("access-control-allow-methods").unwrap_or("");
        assert!(
            methods.contains("PUT") && methods.contains("DELETE"),
            "{resp:?}"
        );
    }
    let resp = server.send_json_with(
        "PUT",
        &alias_path("coder"),
        &[("Origin", "https://two.example")],
        &json!({ "target": "llama3" }),
    );
    resp.expect(201);
    assert_eq!(
        resp.header("access-control-allow-origin"),
        Some("https://two.example")
    );
    let resp = server.request(
        "GET",
        "/api/aliases",
        &[("Origin", "http://localhost:5173")],
        None,
    );
    resp.expect(200);
    assert_eq!(
        resp.header("access-control-allow-origin"),
        Some("http://localhost:5173")
    );
    server
        .request(
            "GET",
            "/api/aliases",
            &[("Origin", "https://app.example.evil")],
            None,
        )
        .expect_error(403, "not allowed");
}

#[test]
fn issue17_a_foreign_host_on_the_loopback_listener_is_refused() {
    let server = Server::with_models(&["llama3", "qwen"]);
    server.create("coder", "llama3");
    let seq = server.seq();
    let addr = server.addr();
    let port = addr.port();

    // A DNS-rebinding page: same origin as far as its browser knows.
    let resp = with_host(addr, "GET", "/api/aliases", Some("attacker.example"), "");
    let message = resp.expect_error(403, "rebinding");
    assert!(message.contains("attacker.example"), "{message}");
    let body = json!({ "target": "qwen" }).to_string();
    let resp = with_host(
        addr,
        "PUT",
        &alias_path("coder"),
        Some(&format!("attacker.example:{port}")),
        &body,
    );
    resp.expect_error(403, "not a name of this machine");
    with_host(
        addr,
        "GET",
        "/healthz",
        Some("localhost.attacker.example"),
        "",
    )
    .expect_error(403, "rebinding");
    assert_eq!(server.seq(), seq);

    for host in [
        format!("localhost:{port}"),
        format!("LocalHost:{port}"),
        "localhost".to_string(),
        format!("app.localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
    ] {
        let resp = with_host(addr, "GET", "/api/aliases/coder", Some(&host), "");
        assert_eq!(resp.status, 200, "Host: {host}: {resp:?}");
    }
    // HTTP/1.0 clients send no Host.
    let resp = with_host(addr, "GET", "/api/aliases/coder", None, "");
    assert_eq!(resp.status, 200, "{resp:?}");
}

// ---------------------------------------------------------------------------
// Connections.
// ---------------------------------------------------------------------------

#[test]
fn issue17_slow_request_heads_are_cut_after_the_header_timeout() {
    let server = Server::builder(TestStore::with_models(&["llama3"]))
        .env("ALIASD_HEADER_TIMEOUT_MS", "1000")
        .start();
    // Slowloris: many connections, each sending its head a byte at a time
    // and never finishing it.
    let handles: Vec<_> = (0..20)
        .map(|_| {
            let addr = server.addr();
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(addr).expect("connect");
                stream
                    .write_all(b"GET /healthz HTTP/1.1\r\n")
                    .expect("write");
                closed_within(&mut stream, b"X-Slow: aaaaaaaaaaaaaaaaaaaa\r\n", DEADLINE)
            })
        })
        .collect();
    for handle in handles {
        let closed = handle.join().expect("thread");
        assert!(
            closed.is_some(),
            "a connection sending its head slowly was still open after {DEADLINE:?}"
        );
    }
    // A connection that sends nothing at all is closed too.
    let mut silent = TcpStream::connect(server.addr()).expect("connect");
    assert!(closed_within(&mut silent, b"", DEADLINE).is_some());
    server.get("/healthz").expect(200);
}

#[test]
fn issue17_idle_keep_alive_connections_close_after_the_idle_timeout() {
    let server = Server::builder(TestStore::with_models(&["llama3"]))
        .env("ALIASD_HEADER_TIMEOUT_MS", "1000")
        .env("ALIASD_IDLE_TIMEOUT_MS", "4000")
        .start();
    let mut stream = TcpStream::connect(server.addr()).expect("connect");
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr());
    stream.write_all(request.as_bytes()).expect("write");
    read_one_response(&mut stream).expect(200);
    // Idle for longer than a head may take: still open, as keep-alive.
    std::thread::sleep(Duration::from_secs(2));
    stream.write_all(request.as_bytes()).expect("write");
    read_one_response(&mut stream).expect(200);
    // Idle past the idle timeout: closed.
    assert!(
        closed_within(&mut stream, b"", DEADLINE).is_some(),
        "an idle keep-alive connection was still open after {DEADLINE:?}"
    );
}

#[test]
fn issue17_idle_connections_past_the_fd_limit_do_not_lock_out_new_clients() {
    // Under an open-file limit it cannot raise.
    let server = Server::builder(TestStore::with_models(&["llama3"]))
        .env("ALIASD_HEADER_TIMEOUT_MS", "1000")
        .fd_limit(128)
        .start();
    let addr = server.addr();
    // More idle sockets than the server has file descriptors.
    let idle: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    // A new client behind them is answered once the idle ones time out.
    let started = Instant::now();
    let mut client = TcpStream::connect(addr).expect("connect");
    client.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let request = format!(
        "GET /healthz HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        addr
    );
    client.write_all(request.as_bytes()).expect("write");
    let mut answer = Vec::new();
    let read = client.read_to_end(&mut answer);
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
        "no answer after {:?} behind {} idle connections ({read:?})",
        started.elapsed(),
        idle.len(),
    );
    let stderr = server.stderr();
    assert!(
        stderr.contains("connections are open, the most allowed"),
        "the cap was hit without a warning:\n{stderr}"
    );
}

// ---------------------------------------------------------------------------
// A write that outlives the request timeout.
// ---------------------------------------------------------------------------

#[test]
fn issue17_a_write_slower_than_the_request_timeout_answers_its_outcome_not_408() {
    let server = Server::start_with_args(
        TestStore::with_models(&["llama3", "qwen"]),
        &["--request-timeout-secs", "1"],
    );
    let coder = server.create("coder", "llama3");
    let etag = format!("\"{}\"", coder["seq"]);
    // Enough work queued at the writer that the last of it waits longer than
    // the request timeout (each put writes an alias file into the store).
    let n_batches = 6;
    let n_ops = 1000;
    let batches: Vec<_> = (0..n_batches)
        .map(|batch| {
            let addr = server.addr();
            std::thread::spawn(move || {
                let ops: Vec<Value> = (0..n_ops)
                    .map(|i| json!({ "op": "put", "alias": format!("b{batch}-{i}"), "target": "llama3" }))
                    .collect();
                let body = json!({ "ops": ops }).to_string();
                let request = format!(
                    "POST /api/aliases HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                // `raw` waits long enough for a loaded machine.
                raw(addr, request.as_bytes())
            })
        })
        .collect();
    let put = server.send_json_with(
        "PUT",
        &alias_path("coder"),
        &[("If-Match", &etag)],
        &json!({ "target": "qwen" }),
    );
    let mut statuses = Vec::new();
    for batch in batches {
        let resp = batch.join().expect("thread");
        statuses.push(resp.status);
    }
    // Every batch is committed, so every batch must say so.
    assert!(
        statuses.iter().all(|s| *s == 200),
        "batches the writer had answered {statuses:?} (a 408 says retry)"
    );
    assert_eq!(server.aliases().len(), 1 + n_batches * n_ops);
    let resp = server.get(&alias_path("coder"));
    assert_eq!(resp.json["target"], "qwen", "{resp:?}");
    assert_eq!(put.status, 200, "the If-Match put was applied: {put:?}");
    assert_eq!(
        put.header("etag"),
        Some(format!("\"{}\"", resp.json["seq"]).as_str())
    );
}

// ---------------------------------------------------------------------------
// The small items.
// ---------------------------------------------------------------------------

#[test]
fn issue17_hypers_own_errors_are_json() {
    let server = Server::with_models(&["llama3"]);
    let addr = server.addr();
    let host = format!("Host: {addr}\r\n");

    let malformed = format!("GET /healthz HTTP/1.1\r\n{host}this is not a header\r\n\r\n");
    raw(addr, malformed.as_bytes()).expect_error(400, "not valid http");
    let bad_method = format!("G(ET /healthz HTTP/1.1\r\n{host}\r\n");
    raw(addr, bad_method.as_bytes()).expect_error(400, "");

    let long_uri = format!(
        "GET /api/resolve/{} HTTP/1.1\r\n{host}\r\n",
        "a".repeat(70 * 1024)
    );
    raw(addr, long_uri.as_bytes()).expect_error(414, "uri is too long");

    let big_header = format!(
        "GET /healthz HTTP/1.1\r\n{host}X-Big: {}\r\n\r\n",
        "a".repeat(200 * 1024)
    );
    raw(addr, big_header.as_bytes()).expect_error(431, "headers are too large");
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many_headers = format!("GET /healthz HTTP/1.1\r\n{host}{many}\r\n");
    raw(addr, many_headers.as_bytes()).expect_error(431, "headers are too large");

    server.get("/healthz").expect(200);
}

#[test]
fn issue17_json_bodies_are_objects_not_arrays() {
    let server = Server::with_models(&["llama3"]);
    server.create("coder", "llama3");
    let seq = server.seq();
    let resp = server.request(
        "PUT",
        &alias_path("b"),
        &[("Content-Type", "application/json")],
        Some(br#"["llama3"]"#),
    );
    resp.expect_error(400, "object");
    let resp = server.request(
        "PUT",
        &alias_path("b"),
        &[("Content-Type", "application/json")],
        Some(br#"  ["llama3", true]"#),
    );
    resp.expect_error(400, "object");
    let resp = server.send_json(
        "POST",
        "/api/aliases",
        &json!({ "ops": [["put", "b", "llama3"]] }),
    );
    resp.expect_error(400, "ops[0]");
    let resp = server.send_json("POST", "/api/aliases", &json!([[["put", "b", "llama3"]]]));
    resp.expect_error(400, "object");
    let resp = server.send_json("POST", "/api/experimental/aliases", &json!(["b", "llama3"]));
    resp.expect_error(400, "object");
    let resp = server.send_json("DELETE", "/api/experimental/aliases", &json!(["coder"]));
    resp.expect_error(400, "object");
    assert_eq!(
        server.seq(),
        seq,
        "a body that is not an object changed something"
    );
    // Objects still work, batches included.
    server
        .send_json(
            "POST",
            "/api/aliases",
            &json!({ "ops": [{ "op": "put", "alias": "b", "target": "llama3" }] }),
        )
        .expect(200);
}

#[test]
fn issue17_if_match_star_passes_and_a_malformed_if_match_is_a_400() {
    let server = Server::with_models(&["llama3", "qwen"]);
    server.create("coder", "llama3");
    let put = |alias: &str, if_match: &str, target: &str| {
        server.send_json_with(
            "PUT",
            &alias_path(alias),
            &[("If-Match", if_match)],
            &json!({ "target": target }),
        )
    };
    // RFC 9110: `*` matches any current representation.
    assert_eq!(put("coder", "*", "qwen").expect(200)["target"], "qwen");
    put("absent", "*", "qwen").expect_error(412, "does not exist");
    let seq = server.seq();
    for bad in [
        "banana",
        "\"12abc\"",
        "\"\"",
        "\"1\",",
        "\"1\", banana",
        "18446744073709551616",
    ] {
        put("coder", bad, "llama3").expect_error(400, "If-Match");
        server
            .request("DELETE", &alias_path("coder"), &[("If-Match", bad)], None)
            .expect_error(400, "If-Match");
    }
    assert_eq!(server.seq(), seq, "a malformed If-Match changed something");
    // A list of tags (RFC 9110 §13.1.1) matches when any of them does.
    put("coder", "\"1\", \"999\"", "llama3").expect_error(412, "not 1, 999");
    assert_eq!(
        server.seq(),
        seq,
        "a list that matched nothing changed something"
    );
    let listed = format!("\"1\", \"{seq}\"");
    assert_eq!(
        put("coder", &listed, "llama3").expect(200)["target"],
        "llama3"
    );
    put("coder", &listed, "qwen").expect_error(412, "If-Match");
    let etag = server
        .get(&alias_path("coder"))
        .header("etag")
        .map(String::from);
    let etag = etag.expect("etag");
    assert_eq!(
        put("coder", &etag, "llama3").expect(200)["target"],
        "llama3"
    );
    server
        .request("DELETE", &alias_path("coder"), &[("If-Match", "*")], None)
        .expect(200);
    server
        .request("DELETE", &alias_path("coder"), &[("If-Match", "*")], None)
        .expect_error(404, "");
}

#[test]
fn issue17_the_bearer_scheme_is_case_insensitive() {
    let server = Server::start_with_args(
        TestStore::with_models(&["llama3"]),
        &["--token", "ci=s3cret-value"],
    );
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let auth = format!("{scheme} s3cret-value");
        let resp = server.request("GET", "/api/aliases", &[("Authorization", &auth)], None);
        assert_eq!(resp.status, 200, "{scheme}: {resp:?}");
    }
    let resp = server.request(
        "GET",
        "/api/aliases",
        &[("Authorization", "Basic s3cret-value")],
        None,
    );
    resp.expect_error(401, "token");
    let resp = server.request(
        "GET",
        "/api/aliases",
        &[("Authorization", "BEARER wrong")],
        None,
    );
    resp.expect_error(401, "invalid token");
}

#[test]
fn issue17_a_reconcile_that_cannot_read_the_store_does_not_claim_a_shutdown() {
    let server = Server::start_with_args(TestStore::with_models(&["llama3"]), &["--poll-ms", "50"]);
    // The store's manifests become unreadable: a symlink to itself.
    let manifests = server.store.root().join("manifests");
    let away = server.store.root().join("manifests.away");
    std::fs::rename(&manifests, &away).expect("move manifests away");
    std::os::unix::fs::symlink("manifests", &manifests).expect("symlink loop");
    let started = Instant::now();
    let line = loop {
        let stderr = server.stderr();
        if let Some(line) = stderr
            .lines()
            .find(|l| l.contains("watcher reconcile failed"))
        {
            break line.to_string();
        }
        assert!(
            started.elapsed() < DEADLINE,
            "no failed reconcile logged:\n{stderr}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    std::fs::remove_file(&manifests).expect("remove symlink");
    std::fs::rename(&away, &manifests).expect("move manifests back");
    assert!(!line.contains("shutting down"), "{line}");
    assert!(line.contains("model store"), "{line}");
    server.get("/healthz").expect(200);
}
