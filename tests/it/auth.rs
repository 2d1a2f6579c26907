//! Who may call aliasd (SPEC §5 "Security"): bearer tokens, from flags and
//! from the environment, on every route but `/healthz`, the token's name
//! (never its secret) as the actor, and the browser origins CORS allows.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::support::sse::Sse;
use crate::support::{aliases_of, by_name, Resp, Server, TestStore};

const CI: &str = "s3cret";
const VIEWER: &str = "rpw";
const WRONG: &str = "wrong-guess-4711";

/// Every route with a body that would be valid, so that only auth refuses it.
fn routes() -> Vec<(&'static str, &'static str, Option<Value>)> {
    vec![
        ("GET", "/api/aliases", None),
        (
            "POST",
            "/api/aliases",
            Some(json!({ "ops": [{ "op": "put", "alias": "b", "target": "llama3" }] })),
        ),
        ("GET", "/api/aliases/coder", None),
        (
            "PUT",
            "/api/aliases/coder",
            Some(json!({ "target": "qwen" })),
        ),
        ("DELETE", "/api/aliases/coder", None),
        ("GET", "/api/resolve/coder", None),
        ("GET", "/api/models", None),
        ("GET", "/api/history", None),
        ("GET", "/api/events", None),
        ("GET", "/metrics", None),
        ("GET", "/api/experimental/aliases", None),
        (
            "POST",
            "/api/experimental/aliases",
            Some(json!({ "alias": "c", "target": "llama3" })),
        ),
        (
            "DELETE",
            "/api/experimental/aliases",
            Some(json!({ "alias": "coder" })),
        ),
        ("GET", "/no/such/route", None),
    ]
}

fn send(
    server: &Server,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: Option<&Value>,
) -> Resp {
    let bearer;
    let mut headers: Vec<(&str, &str)> = Vec::new();
    if let Some(value) = auth {
        bearer = value.to_string();
        headers.push(("Authorization", &bearer));
    }
    match body {
        Some(body) => server.send_json_with(method, path, &headers, body),
        None => server.request(method, path, &headers, None),
    }
}

/// `GET path` with this token.
fn get_auth(server: &Server, path: &str, secret: &str) -> Resp {
    let bearer = format!("Bearer {secret}");
    server.request("GET", path, &[("Authorization", &bearer)], None)
}

/// `GET /api/aliases` with this token, as alias -> Alias body.
#[track_caller]
fn aliases_auth(server: &Server, secret: &str) -> BTreeMap<String, Value> {
    by_name(aliases_of(&get_auth(server, "/api/aliases", secret)))
}

/// The checks shared by tokens from flags and from the environment.
fn check_auth(server: &Server) {
    let ci = format!("Bearer {CI}");
    let viewer = format!("Bearer {VIEWER}");
    // /healthz is open.
    server.get("/healthz").expect(200);
    // Set up one alias with the read-write token.
    let resp = send(
        server,
        "PUT",
        "/api/aliases/coder",
        Some(&ci),
        Some(&json!({ "target": "llama3" })),
    );
    resp.expect(201);
    let seq = server.seq();
    let before = aliases_auth(server, CI);

    for (method, path, body) in routes() {
        let what = format!("{method} {path}");
        let resp = send(server, method, path, None, body.as_ref());
        resp.expect_error(401, "missing token");
        assert_eq!(resp.header("www-authenticate"), Some("Bearer"), "{what}");
        for bad in [
            format!("Bearer {WRONG}"),
            format!("Bearer {CI}x"),
            format!("Basic {CI}"),
            CI.to_string(),
            "Bearer ".to_string(),
        ] {
            let resp = send(server, method, path, Some(&bad), body.as_ref());
            assert_eq!(resp.status, 401, "{what} with {bad:?}: {resp:?}");
            resp.expect_error(401, "token");
            assert_eq!(resp.header("www-authenticate"), Some("Bearer"), "{what}");
        }
        let mutating = method != "GET";
        if mutating {
            let resp = send(server, method, path, Some(&viewer), body.as_ref());
            resp.expect_error(403, "read-only");
        }
    }
    assert_eq!(server.seq(), seq, "a refused request changed something");
    assert_eq!(aliases_auth(server, CI), before);

    // The read-only token reads everything.
    for path in [
        "/api/aliases",
        "/api/aliases/coder",
        "/api/resolve/coder",
        "/api/models",
        "/api/history",
        "/api/experimental/aliases",
    ] {
        get_auth(server, path, VIEWER).expect(200);
    }
    assert_eq!(get_auth(server, "/metrics", VIEWER).status, 200);
    let stream = Sse::open_any(server.addr(), "/api/events", &[("Authorization", &viewer)]);
    assert_eq!(stream.status, 200);

    // The token's name, never its secret, is the actor.
    let resp = send(
        server,
        "PUT",
        "/api/aliases/coder",
        Some(&ci),
        Some(&json!({ "target": "qwen" })),
    );
    assert_eq!(resp.expect(200)["target"], "qwen");
    let history = get_auth(server, "/api/history?alias=coder", VIEWER);
    let events = history.expect(200)["events"]
        .as_array()
        .expect("events")
        .clone();
    assert_eq!(events.len(), 2, "{history:?}");
    for event in &events {
        let actor = event["actor"].as_str().expect("actor");
        let port = actor
            .strip_prefix("ci@127.0.0.1:")
            .unwrap_or_else(|| panic!("actor {actor:?}"));
        assert!(port.parse::<u16>().is_ok(), "actor {actor:?}");
    }
    let stderr = server.all_stderr();
    assert!(stderr.contains("authentication required"), "{stderr}");
    for secret in [CI, VIEWER, WRONG] {
        assert!(
            !stderr.contains(secret),
            "the secret {secret:?} is in the log:\n{stderr}"
        );
    }
}

#[test]
fn tokens_from_flags_guard_every_route_but_healthz() {
    let server = Server::builder(TestStore::with_models(&["llama3", "qwen"]))
        .args(&[
            "--token",
            &format!("ci={CI}"),
            "--read-token",
            &format!("viewer={VIEWER}"),
        ])
        .start();
    check_auth(&server);
}

#[test]
fn tokens_from_the_environment_guard_every_route_but_healthz() {
    let server = Server::builder(TestStore::with_models(&["llama3", "qwen"]))
        .env("ALIASD_TOKENS", &format!("ci={CI}, robot=r0b0t-key"))
        .env("ALIASD_READ_TOKENS", &format!("viewer={VIEWER}"))
        .start();
    check_auth(&server);
    // The second read-write token of the list works too, under its own name.
    let resp = send(
        &server,
        "PUT",
        "/api/aliases/bot",
        Some("Bearer r0b0t-key"),
        Some(&json!({ "target": "llama3" })),
    );
    resp.expect(201);
    let history = get_auth(&server, "/api/history?alias=bot", VIEWER);
    let actor = history.expect(200)["events"][0]["actor"]
        .as_str()
        .expect("actor")
        .to_string();
    assert!(actor.starts_with("robot@127.0.0.1:"), "{actor}");
    assert!(!server.all_stderr().contains("r0b0t-key"));
}

#[test]
fn a_malformed_token_stops_start_up_without_echoing_the_secret() {
    let refused = Server::builder(TestStore::with_models(&["llama3"]))
        .env("ALIASD_READ_TOKENS", "bad name=hunter2-secret")
        .start_refused();
    assert_eq!(refused.code, Some(1));
    let stderr = refused.stderr;
    assert!(stderr.contains("ALIASD_READ_TOKENS"), "{stderr}");
    assert!(!stderr.contains("hunter2-secret"), "{stderr}");
}

fn preflight(server: &Server, origin: &str) -> Resp {
    server.request(
        "OPTIONS",
        "/api/aliases/coder",
        &[
            ("Origin", origin),
            ("Access-Control-Request-Method", "PUT"),
            (
                "Access-Control-Request-Headers",
                "authorization, content-type",
            ),
        ],
        None,
    )
}

#[track_caller]
fn expect_preflight_ok(server: &Server, origin: &str) {
    let resp = preflight(server, origin);
    assert_eq!(resp.status, 204, "{origin}: {resp:?}");
    assert_eq!(resp.header("access-control-allow-origin"), Some(origin));
    let methods = resp.header("access-control-allow-methods").unwrap_or("");
    assert!(
        methods.contains("PUT") && methods.contains("DELETE"),
        "{resp:?}"
    );
    let headers = resp.header("access-control-allow-headers").unwrap_or("");
    assert!(
        headers.contains("authorization") && headers.contains("content-type"),
        "{resp:?}"
    );
}

#[track_caller]
fn expect_preflight_refused(server: &Server, origin: &str) {
    let resp = preflight(server, origin);
    resp.expect_error(403, "not allowed");
    assert_eq!(resp.header("access-control-allow-origin"), None, "{resp:?}");
}

#[test]
fn origins_are_checked_against_the_allow_list() {
    // Preflights carry no credentials: they pass without a token.
    let server = Server::builder(TestStore::with_models(&["llama3"]))
        .args(&["--token", &format!("ci={CI}")])
        .start();
    expect_preflight_ok(&server, "http://localhost:3000");
    expect_preflight_ok(&server, "http://127.0.0.1:8080");
    expect_preflight_refused(&server, "https://evil.example");
    expect_preflight_refused(&server, "http://localhost.evil.example");
    expect_preflight_refused(&server, "https://app.example");
    // A real request from an allowed origin gets the allow header; one from
    // another origin is refused outright (issue 17: without tokens a page's
    // simple POST needs no preflight, and a page must not read either).
    let ok = server.request(
        "GET",
        "/api/aliases",
        &[
            ("Origin", "http://localhost:3000"),
            ("Authorization", &format!("Bearer {CI}")),
        ],
        None,
    );
    ok.expect(200);
    assert_eq!(
        ok.header("access-control-allow-origin"),
        Some("http://localhost:3000")
    );
    let evil = server.request(
        "GET",
        "/api/aliases",
        &[
            ("Origin", "https://evil.example"),
            ("Authorization", &format!("Bearer {CI}")),
        ],
        None,
    );
    evil.expect_error(403, "not allowed");
    assert_eq!(evil.header("access-control-allow-origin"), None);
    drop(server);

    let server = Server::builder(TestStore::with_models(&["llama3"]))
        .args(&["--cors-origin", "https://app.example"])
        .start();
    expect_preflight_ok(&server, "https://app.example");
    expect_preflight_ok(&server, "http://localhost:3000");
    expect_preflight_refused(&server, "https://evil.example");
    expect_preflight_refused(&server, "https://app.example.evil");
}
