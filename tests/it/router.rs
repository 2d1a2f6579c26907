//! The HTTP layers on axum's `Router` and tower-http (issue 18, item 3): the
//! access log, request ids, `/metrics` by route template for every kind of
//! answer (the layers' own refusals and the framework's errors included), and
//! an upstream's answer carrying the client's request id.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{alias_path, Server, TestStore};

/// A generous bound for what should take a moment: it only guards against a
/// hang.
const DEADLINE: Duration = Duration::from_secs(30);

const SECRET: &str = "s3cret-of-the-router-test";

/// A server that needs the token `ci` ([`SECRET`]).
fn server_with_token() -> Server {
    Server::start_with_args(
        TestStore::with_models(&["llama3"]),
        &["--token", &format!("ci={SECRET}")],
    )
}

/// The access log lines (target `aliasd::access`) whose request id is `id`,
/// once there is at least one: the line is written after the answer is sent.
fn access_lines(server: &Server, id: &str) -> Vec<String> {
    let started = Instant::now();
    loop {
        let lines: Vec<String> = server
            .stderr()
            .lines()
            .filter(|l| l.contains("aliasd::access") && l.ends_with(&format!(" request_id={id}")))
            .map(String::from)
            .collect();
        if !lines.is_empty() || started.elapsed() > DEADLINE {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The one access log line of the request `id`, asserting there is one.
#[track_caller]
fn access_line(server: &Server, id: &str) -> String {
    let lines = access_lines(server, id);
    assert_eq!(lines.len(), 1, "access log lines of {id}: {lines:?}");
    lines[0].clone()
}

#[track_caller]
fn assert_fields(line: &str, fields: &[&str]) {
    for field in fields {
        assert!(line.contains(field), "{field} missing in {line}");
    }
}

#[test]
fn issue18_every_request_gets_one_access_log_line_without_secrets() {
    let server = server_with_token();
    let bearer = format!("Bearer {SECRET}");
    let as_ci = |id| [("Authorization", bearer.as_str()), ("X-Request-Id", id)];
    let body = json!({ "target": "llama3" }).to_string();
    server
        .request(
            "PUT",
            &alias_path("coder"),
            &as_ci("router-log-put"),
            Some(body.as_bytes()),
        )
        .expect(201);
    server
        .request(
            "GET",
            "/api/aliases",
            &[("X-Request-Id", "router-log-401")],
            None,
        )
        .expect_error(401, "token");
    server
        .request("GET", "/no/such/route", &as_ci("router-log-404"), None)
        .expect_error(404, "");
    server
        .request(
            "PATCH",
            &alias_path("coder"),
            &as_ci("router-log-405"),
            None,
        )
        .expect_error(405, "");
    let head = server.request(
        "HEAD",
        "/api/resolve/coder",
        &as_ci("router-log-head"),
        None,
    );
    assert_eq!(head.status, 200, "{head:?}");

    let put = access_line(&server, "router-log-put");
    assert_fields(
        &put,
        &[
            " INFO ",
            "method=PUT",
            "route=/api/aliases/{*name}",
            "status=201",
            "duration_us=",
            "actor=ci",
        ],
    );
    assert!(
        !put.contains("/api/aliases/coder"),
        "a path, not the template: {put}"
    );
    assert_fields(
        &access_line(&server, "router-log-401"),
        &[
            "method=GET",
            "route=/api/aliases ",
            "status=401",
            "actor=anonymous",
        ],
    );
    assert_fields(
        &access_line(&server, "router-log-404"),
        &["route=unmatched", "status=404", "actor=ci"],
    );
    assert_fields(
        &access_line(&server, "router-log-405"),
        &["method=PATCH", "route=/api/aliases/{*name}", "status=405"],
    );
    assert_fields(
        &access_line(&server, "router-log-head"),
        &["method=HEAD", "route=/api/resolve/{*name}", "status=200"],
    );

    // A request without an id is logged under the id it was answered with.
    let resp = server.request("GET", "/healthz", &[], None);
    let generated = resp
        .header("x-request-id")
        .expect("a generated id")
        .to_string();
    assert_fields(
        &access_line(&server, &generated),
        &["route=/healthz", "status=200"],
    );

    let log = server.stderr();
    assert!(!log.contains(SECRET), "the secret is in the log:\n{log}");
    assert!(
        !log.contains("Bearer"),
        "the Authorization header is in the log:\n{log}"
    );
}

#[test]
fn issue18_request_ids_are_echoed_only_when_sane() {
    let server = Server::with_models(&["llama3"]);
    let longest = "r".repeat(200);
    for (sent, echoed) in [
        ("router-id-1", true),
        (longest.as_str(), true),
        (&*"r".repeat(201), false),
        ("has space", false),
        ("tab\there", false),
        ("caf\u{e9}", false),
    ] {
        let resp = server.request("GET", "/api/aliases", &[("X-Request-Id", sent)], None);
        resp.expect(200);
        let answered = resp.header("x-request-id").expect("an id").to_string();
        if echoed {
            assert_eq!(answered, sent);
        } else {
            assert_ne!(answered, sent);
            assert!(uuid::Uuid::parse_str(&answered).is_ok(), "{answered}");
        }
    }
    // The id an event records is the id the client was answered with.
    let resp = server.send_json_with(
        "PUT",
        &alias_path("coder"),
        &[("X-Request-Id", "has space")],
        &json!({ "target": "llama3" }),
    );
    resp.expect(201);
    let answered = resp.header("x-request-id").expect("an id").to_string();
    let history = server.get("/api/history?alias=coder");
    assert_eq!(
        history.expect(200)["events"][0]["request_id"],
        answered.as_str()
    );
}

#[test]
fn issue18_refusals_and_framework_answers_are_counted_by_route_template() {
    let server = server_with_token();
    let bearer = format!("Bearer {SECRET}");
    let token = [("Authorization", bearer.as_str())];
    server
        .request("GET", &alias_path("a/b:c"), &[], None)
        .expect_error(401, "token");
    server
        .request("PATCH", &alias_path("a/b:c"), &token, None)
        .expect_error(405, "");
    server
        .request(
            "GET",
            &alias_path("a/b:c"),
            &[("Origin", "https://evil.example"), token[0]],
            None,
        )
        .expect_error(403, "not allowed");
    let preflight = server.request(
        "OPTIONS",
        &alias_path("a/b:c"),
        &[
            ("Origin", "http://localhost:3000"),
            ("Access-Control-Request-Method", "PUT"),
        ],
        None,
    );
    assert_eq!(preflight.status, 204, "{preflight:?}");
    server
        .request("GET", "/api/resolve/%ff", &token, None)
        .expect_error(400, "utf-8");

    let metrics = server.request("GET", "/metrics", &token, None);
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    let count = |route: &str, status: u16| -> u64 {
        let key = format!("aliasd_http_requests_total{{route=\"{route}\",status=\"{status}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&key))
            .map_or(0, |n| n.trim().parse().expect("a count"))
    };
    for status in [401, 405, 403, 204] {
        assert_eq!(
            count("/api/aliases/{*name}", status),
            1,
            "{status}:\n{text}"
        );
    }
    assert_eq!(count("/api/resolve/{*name}", 400), 1, "{text}");
    assert!(!text.contains("a/b:c"), "paths, not templates:\n{text}");
}

#[test]
fn issue18_a_proxied_answer_carries_the_clients_request_id() {
    let upstream = TcpListener::bind("127.0.0.1:0").expect("bind");
    let upstream_addr = upstream.local_addr().expect("addr");
    let (seen_tx, seen_rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for stream in upstream.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match stream.read(&mut byte) {
                    Ok(1) => head.push(byte[0]),
                    _ => break,
                }
            }
            let _ = seen_tx.send(String::from_utf8_lossy(&head).to_lowercase());
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\nX-Request-Id: made-upstream\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
            );
        }
    });
    let server = Server::start_with_args(
        TestStore::with_models(&["llama3"]),
        &["--upstream", &format!("http://{upstream_addr}")],
    );
    let resp = server.request(
        "GET",
        "/api/version",
        &[("X-Request-Id", "router-proxy-1")],
        None,
    );
    resp.expect(200);
    assert_eq!(
        resp.header("x-request-id"),
        Some("router-proxy-1"),
        "{resp:?}"
    );
    let seen = seen_rx
        .recv_timeout(DEADLINE)
        .expect("the upstream was asked");
    assert!(seen.contains("x-request-id: router-proxy-1"), "{seen}");
    // A request without one: the upstream and the client see the same new id.
    let resp = server.get("/api/version");
    let answered = resp.header("x-request-id").expect("an id").to_string();
    assert_ne!(answered, "made-upstream");
    let seen = seen_rx
        .recv_timeout(DEADLINE)
        .expect("the upstream was asked");
    assert!(
        seen.contains(&format!("x-request-id: {answered}")),
        "{seen}"
    );
    assert_fields(
        &access_line(&server, &answered),
        &["route=proxy", "status=200"],
    );
}

#[test]
fn issue18_cors_is_for_browsers_only() {
    let server = Server::with_models(&["llama3"]);
    // An OPTIONS without `Origin` is no preflight: the route answers it.
    let resp = server.request("OPTIONS", &alias_path("coder"), &[], None);
    resp.expect_error(405, "");
    assert_eq!(
        resp.header("allow"),
        Some("GET,HEAD,PUT,DELETE"),
        "{resp:?}"
    );
    // No CORS headers for a client that sends no `Origin`.
    let resp = server.get("/api/aliases");
    resp.expect(200);
    assert!(
        resp.headers
            .iter()
            .all(|(name, _)| !name.starts_with("access-control-")),
        "{resp:?}"
    );
    // A page's preflight is answered; its request gets the CORS headers.
    let origin = [("Origin", "http://localhost:5173")];
    let preflight = server.request(
        "OPTIONS",
        &alias_path("coder"),
        &[origin[0], ("Access-Control-Request-Method", "DELETE")],
        None,
    );
    assert_eq!(preflight.status, 204, "{preflight:?}");
    let resp = server.request("GET", "/api/aliases", &origin, None);
    resp.expect(200);
    assert_eq!(
        resp.header("access-control-allow-origin"),
        Some(origin[0].1)
    );
    let exposed: Vec<&str> = resp
        .header("access-control-expose-headers")
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .collect();
    assert_eq!(exposed, ["etag", "x-request-id"], "{resp:?}");
}
