//! `GET /api/resolve/{name}` answered in front of the router (issue 18,
//! resolve's budget; `src/http/fast_path.rs`): what a user sees of a
//! resolve is what the routed request showed: every answer, refusals and
//! bad names included, counted under the route's template in `/metrics`,
//! an access line per request, the client's `X-Request-Id` echoed or a new
//! one made, and the route's 405 for the methods it does not serve. (The
//! fast path's answers are held to the router's, request by request, by
//! the unit tests in `src/http/fast_path.rs`.)

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::support::{parse_response, wait_for, Resp, Server, TestStore};

/// `GET /api/resolve/coder` with `Host: attacker.example` (a DNS-rebinding
/// page's request) and this request id.
fn from_foreign_host(addr: SocketAddr, request_id: &str) -> Resp {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let request = format!(
        "GET /api/resolve/coder HTTP/1.1\r\nHost: attacker.example\r\nX-Request-Id: {request_id}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).expect("write");
    let mut answer = Vec::new();
    if let Err(e) = stream.read_to_end(&mut answer) {
        assert!(!answer.is_empty(), "no answer: {e}");
    }
    parse_response(&answer).expect("an HTTP response")
}

/// The value of `aliasd_http_requests_total` for the resolve route and
/// `status`.
fn resolve_count(server: &Server, status: u16) -> f64 {
    let metrics = server.get("/metrics");
    assert_eq!(metrics.status, 200, "{metrics:?}");
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    text.lines()
        .filter(|l| l.starts_with("aliasd_http_requests_total{"))
        .filter(|l| l.contains("route=\"/api/resolve/{*name}\""))
        .filter(|l| l.contains(&format!("status=\"{status}\"")))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
        .sum()
}

/// Every resolve answer, whatever its status, is counted under the route's
/// template, not `unmatched` or `other`.
#[test]
fn resolves_are_counted_under_the_route_template() {
    let server = Server::with_models(&["llama3"]);
    server.create("coder", "llama3");
    for _ in 0..3 {
        server.get("/api/resolve/coder").expect(200);
    }
    server
        .request("HEAD", "/api/resolve/coder", &[], None)
        .expect(200);
    server
        .get("/api/resolve/nobody")
        .expect_error(404, "nobody");
    server
        .get("/api/resolve/%FF")
        .expect_error(400, "not UTF-8");
    server.get("/api/resolve/..").expect(400);
    from_foreign_host(server.addr(), "rebound-1").expect_error(403, "rebinding");
    let post = server.request("POST", "/api/resolve/coder", &[], None);
    assert_eq!(post.status, 405, "{post:?}");
    assert_eq!(post.header("allow"), Some("GET,HEAD"), "{post:?}");
    assert_eq!(resolve_count(&server, 200), 4.0);
    assert_eq!(resolve_count(&server, 404), 1.0);
    assert_eq!(resolve_count(&server, 400), 2.0);
    assert_eq!(resolve_count(&server, 405), 1.0);
}

/// Every resolve writes its access line, with the route's template, its
/// status and the request id the answer carries; a client's id is echoed,
/// an unusable one replaced by a new one, a missing one made.
#[test]
fn resolves_are_logged_with_their_request_ids() {
    let server = Server::builder(TestStore::with_models(&["llama3"]))
        .env("ALIASD_LOG", "info")
        .start();
    server.create("coder", "llama3");
    let echoed = server.request(
        "GET",
        "/api/resolve/coder",
        &[("X-Request-Id", "fast-path-1")],
        None,
    );
    echoed.expect(200);
    assert_eq!(echoed.header("x-request-id"), Some("fast-path-1"));
    let refused = from_foreign_host(server.addr(), "fast-path-2");
    refused.expect_error(403, "rebinding");
    assert_eq!(refused.header("x-request-id"), Some("fast-path-2"));
    let made = server.get("/api/resolve/nobody");
    made.expect_error(404, "nobody");
    let replaced = server.request(
        "GET",
        "/api/resolve/coder",
        &[("X-Request-Id", "two words")],
        None,
    );
    replaced.expect(200);
    let mut new_ids = Vec::new();
    for resp in [&made, &replaced] {
        let id = resp
            .header("x-request-id")
            .expect("a request id")
            .to_string();
        assert_eq!(id.len(), 36, "a UUID-shaped id: {id}");
        assert_ne!(id, "two words");
        new_ids.push(id);
    }
    assert_ne!(new_ids[0], new_ids[1]);
    let expected = [
        ("fast-path-1", "status=200"),
        ("fast-path-2", "status=403"),
        (new_ids[0].as_str(), "status=404"),
        (new_ids[1].as_str(), "status=200"),
    ];
    let log = wait_for("the access lines", Duration::from_secs(30), || {
        let log = server.stderr();
        expected
            .iter()
            .all(|(id, _)| log.contains(&format!(" request_id={id}")))
            .then_some(log)
    });
    for (id, status) in expected {
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("aliasd::access") && l.ends_with(&format!(" request_id={id}")))
            .collect();
        assert_eq!(lines.len(), 1, "{id}: {log}");
        assert!(
            lines[0].contains(&format!(
                "method=GET route=/api/resolve/{{*name}} {status} "
            )),
            "{}",
            lines[0]
        );
    }
}

/// With tokens on, a resolve without one is a 401 and with a read token is
/// answered, both counted under the route.
#[test]
fn resolves_check_tokens() {
    let server = Server::start_with_args(
        TestStore::with_models(&["llama3"]),
        &["--token", "admin=adm1n", "--read-token", "reader=r3ad"],
    );
    let created = server.request(
        "PUT",
        "/api/aliases/coder",
        &[("Authorization", "Bearer adm1n")],
        Some(br#"{"target":"llama3"}"#),
    );
    assert!(
        created.status == 200 || created.status == 201,
        "{created:?}"
    );
    let missing = server.get("/api/resolve/coder");
    missing.expect_error(401, "token");
    assert_eq!(missing.header("www-authenticate"), Some("Bearer"));
    let read = server.request(
        "GET",
        "/api/resolve/coder",
        &[("Authorization", "Bearer r3ad")],
        None,
    );
    assert_eq!(read.expect(200)["resolved"], "llama3");
}

/// Each route's answers are counted under its own template, given to the
/// route's checks where the route is made (no second list of templates to
/// keep in step with the router): one request on every route, the
/// methods a route does not serve (405) included, and what no route
/// matches under `unmatched`; no answer is counted as `other`.
#[test]
fn every_route_is_counted_under_its_template() {
    let server = Server::with_models(&["llama3"]);
    let asked = [
        (
            "GET",
            "/api/experimental/aliases",
            "/api/experimental/aliases",
        ),
        ("GET", "/api/aliases", "/api/aliases"),
        ("GET", "/api/aliases/nobody", "/api/aliases/{*name}"),
        ("GET", "/api/resolve/nobody", "/api/resolve/{*name}"),
        ("GET", "/api/models", "/api/models"),
        ("GET", "/api/history", "/api/history"),
        ("GET", "/api/nodes", "/api/nodes"),
        // Not a GET: the stream would not end.
        ("POST", "/api/events", "/api/events"),
        ("GET", "/api/webhooks", "/api/webhooks"),
        ("GET", "/api/webhooks/nothing", "/api/webhooks/{id}"),
        (
            "GET",
            "/api/webhooks/nothing/deliveries",
            "/api/webhooks/{id}/deliveries",
        ),
        ("DELETE", "/healthz", "/healthz"),
        ("PUT", "/metrics", "/metrics"),
        ("GET", "/", "/"),
        ("GET", "/ui/nothing.js", "/ui/{*name}"),
        ("GET", "/nothing/here", "unmatched"),
    ];
    for (method, path, _) in asked {
        let resp = server.request(method, path, &[], None);
        assert!(resp.status > 0, "{method} {path}: {resp:?}");
    }
    let metrics = server.get("/metrics");
    assert_eq!(metrics.status, 200, "{metrics:?}");
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    let requests: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("aliasd_http_requests_total{"))
        .collect();
    for (method, path, template) in asked {
        let count: f64 = requests
            .iter()
            .filter(|l| l.contains(&format!("route=\"{template}\"")))
            .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
            .sum();
        // `/healthz` is also asked while the server starts.
        let expected = if template == "/healthz" {
            count.max(1.0)
        } else {
            1.0
        };
        assert_eq!(count, expected, "{method} {path}: {requests:#?}");
    }
    assert!(
        !requests.iter().any(|l| l.contains("route=\"other\"")),
        "{requests:#?}"
    );
}
