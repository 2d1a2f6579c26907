//! Malformed requests (SPEC §5 "Security"): a table of bad names, targets,
//! bodies, preconditions, batches and query parameters, each a 4xx JSON error
//! that changes nothing, and random bodies on every writing route, never a 5xx.

use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Value};

use crate::support::{files_under, Resp, Server};

/// One malformed request and the status it must get.
struct BadCase {
    what: String,
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Option<Vec<u8>>,
    status: u16,
}

fn case(what: &str, method: &'static str, path: &str, body: Option<&[u8]>, status: u16) -> BadCase {
    BadCase {
        what: what.to_string(),
        method,
        path: path.to_string(),
        headers: vec![("Content-Type", "application/json".to_string())],
        body: body.map(<[u8]>::to_vec),
        status,
    }
}

fn put_name(what: &str, raw_path_name: &str, status: u16) -> BadCase {
    case(
        what,
        "PUT",
        &format!("/api/aliases/{raw_path_name}"),
        Some(br#"{"target":"llama3"}"#),
        status,
    )
}

fn with_header(mut case: BadCase, name: &'static str, value: &str) -> BadCase {
    case.headers.push((name, value.to_string()));
    case
}

fn bad_cases() -> Vec<BadCase> {
    const T: &[u8] = br#"{"target":"llama3"}"#;
    let long = "a".repeat(81);
    let long_host = format!("{}/ns/m", "h".repeat(256));
    let batch_1000 = {
        let mut ops: Vec<Value> = (0..999)
            .map(|i| json!({ "op": "put", "alias": format!("b{i}"), "target": "llama3" }))
            .collect();
        ops.push(json!({ "op": "put", "alias": "b999", "target": "nosuchmodel" }));
        json!({ "ops": ops }).to_string()
    };
    let batch_10k = {
        let ops: Vec<Value> = (0..10_000)
            .map(|i| json!({ "op": "delete", "alias": format!("d{i}") }))
            .collect();
        json!({ "ops": ops }).to_string()
    };
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    vec![
        // Names: traversal in many spellings, absolute, empty, long, control, unicode, digests.
        put_name("`..`", "..", 400),
        put_name("../../etc/passwd", "../../etc/passwd", 400),
        put_name("..%2F..%2Fetc%2Fpasswd", "..%2F..%2Fetc%2Fpasswd", 400),
        put_name("%2e%2e%2f%2e%2e%2fetc", "%2e%2e%2f%2e%2e%2fetc", 400),
        put_name("double-encoded %252e%252e%252f", "%252e%252e%252fetc", 400),
        put_name("backslashes ..%5c..%5cx", "..%5c..%5cwindows", 400),
        put_name("overlong UTF-8 %c0%ae%c0%ae", "%c0%ae%c0%ae%2fetc", 400),
        put_name("absolute //etc/passwd", "/etc/passwd", 400),
        put_name("a/../b", "a/../b", 400),
        put_name("ns/./m", "ns/./m", 400),
        put_name("trailing slash", "coder/", 400),
        put_name("empty namespace a//b", "a//b", 400),
        case("empty name", "PUT", "/api/aliases/", Some(T), 404),
        put_name("model part of 81", &long, 400),
        put_name("host of 256", &long_host, 400),
        put_name("tag of 81", &format!("m:{long}"), 400),
        put_name("empty tag", "m:", 400),
        put_name("empty model", ":tag", 400),
        put_name("NUL", "a%00b", 400),
        put_name("newline", "a%0Ab", 400),
        put_name("DEL", "a%7F", 400),
        put_name("space", "a%20b", 400),
        put_name("unicode é", "caf%C3%A9", 400),
        put_name("RTL override", "a%E2%80%AEb", 400),
        put_name("@sha256 digest", &format!("m@sha256:{}", "a".repeat(64)), 400),
        put_name("leading dash", "-x", 400),
        put_name("leading dot", ".hidden", 400),
        put_name("bad percent %ZZ", "a%ZZ", 400),
        case("DELETE ..%2Fllama3", "DELETE", "/api/aliases/..%2Fllama3", None, 400),
        case("GET ../../etc/passwd", "GET", "/api/aliases/..%2F..%2Fetc%2Fpasswd", None, 400),
        // Targets.
        case("target ../x", "PUT", "/api/aliases/ok1", Some(br#"{"target":"../x"}"#), 400),
        case("target empty", "PUT", "/api/aliases/ok1", Some(br#"{"target":""}"#), 400),
        case("target with NUL", "PUT", "/api/aliases/ok1", Some(b"{\"target\":\"a\\u0000b\"}"), 400),
        case("target unknown", "PUT", "/api/aliases/ok1", Some(br#"{"target":"nosuch"}"#), 404),
        case("alias == target", "PUT", "/api/aliases/ok1", Some(br#"{"target":"ok1"}"#), 400),
        case("alias shadows a model", "PUT", "/api/aliases/llama3", Some(br#"{"target":"qwen"}"#), 409),
        case("cycle", "PUT", "/api/aliases/coder", Some(br#"{"target":"chain"}"#), 400),
        // Bodies.
        case("no body", "PUT", "/api/aliases/ok1", None, 400),
        case("`{`", "PUT", "/api/aliases/ok1", Some(b"{"), 400),
        case("`null`", "PUT", "/api/aliases/ok1", Some(b"null"), 400),
        case("`[]`", "PUT", "/api/aliases/ok1", Some(b"[]"), 400),
        case("a string", "PUT", "/api/aliases/ok1", Some(br#""llama3""#), 400),
        case("target number", "PUT", "/api/aliases/ok1", Some(br#"{"target":1}"#), 400),
        case("target null", "PUT", "/api/aliases/ok1", Some(br#"{"target":null}"#), 400),
        case("target array", "PUT", "/api/aliases/ok1", Some(br#"{"target":["llama3"]}"#), 400),
        case("prefix_matching \"yes\"", "PUT", "/api/aliases/ok1", Some(br#"{"target":"llama3","prefix_matching":"yes"}"#), 400),
        case("unknown field", "PUT", "/api/aliases/ok1", Some(br#"{"target":"llama3","extra":1}"#), 400),
        case("duplicate field", "PUT", "/api/aliases/ok1", Some(br#"{"target":"llama3","target":"qwen"}"#), 400),
        case("trailing garbage", "PUT", "/api/aliases/ok1", Some(br#"{"target":"llama3"} trailing"#), 400),
        case("two documents", "PUT", "/api/aliases/ok1", Some(br#"{"target":"llama3"}{"target":"qwen"}"#), 400),
        case("invalid UTF-8", "PUT", "/api/aliases/ok1", Some(b"{\"target\":\"\xff\xfe\"}"), 400),
        case("5000-deep nesting", "PUT", "/api/aliases/ok1", Some(deep.as_bytes()), 400),
        case("not JSON, text/plain", "PUT", "/api/aliases/ok1", Some(b"target=llama3"), 400),
        // Preconditions.
        with_header(case("If-Match huge", "PUT", "/api/aliases/coder", Some(br#"{"target":"qwen"}"#), 400), "If-Match", "\"99999999999999999999999999999\""),
        with_header(case("If-Match u64::MAX", "PUT", "/api/aliases/coder", Some(br#"{"target":"qwen"}"#), 412), "If-Match", "\"18446744073709551615\""),
        with_header(case("If-Match -1", "DELETE", "/api/aliases/coder", None, 400), "If-Match", "\"-1\""),
        with_header(case("If-Match \"abc\"", "DELETE", "/api/aliases/coder", None, 400), "If-Match", "\"abc\""),
        with_header(case("If-None-Match * on existing", "PUT", "/api/aliases/coder", Some(br#"{"target":"qwen"}"#), 412), "If-None-Match", "*"),
        case("DELETE unknown alias", "DELETE", "/api/aliases/nosuch", None, 404),
        case("DELETE a model", "DELETE", "/api/aliases/llama3", None, 404),
        case("DELETE depended-on alias", "DELETE", "/api/aliases/coder", None, 409),
        // Batches.
        case("batch of 0 ops", "POST", "/api/aliases", Some(br#"{"ops":[]}"#), 400),
        case("batch ops not a list", "POST", "/api/aliases", Some(br#"{"ops":{}}"#), 400),
        case("batch without ops", "POST", "/api/aliases", Some(b"{}"), 400),
        case("batch unknown op", "POST", "/api/aliases", Some(br#"{"ops":[{"op":"rename","alias":"a"}]}"#), 400),
        case("batch put without target", "POST", "/api/aliases", Some(br#"{"ops":[{"op":"put","alias":"a"}]}"#), 400),
        case("batch op without op", "POST", "/api/aliases", Some(br#"{"ops":[{"alias":"a","target":"llama3"}]}"#), 400),
        case("batch bad name", "POST", "/api/aliases", Some(br#"{"ops":[{"op":"put","alias":"../x","target":"llama3"}]}"#), 400),
        case("batch duplicate alias", "POST", "/api/aliases", Some(br#"{"ops":[{"op":"put","alias":"a","target":"llama3"},{"op":"delete","alias":"A"}]}"#), 400),
        case("batch of 1000, last bad", "POST", "/api/aliases", Some(batch_1000.as_bytes()), 404),
        case("batch of 10k ops (>64 KiB)", "POST", "/api/aliases", Some(batch_10k.as_bytes()), 413),
        // Ollama's routes.
        case("experimental bad alias", "POST", "/api/experimental/aliases", Some(br#"{"alias":"../../x","target":"llama3"}"#), 400),
        case("experimental no target", "POST", "/api/experimental/aliases", Some(br#"{"alias":"x"}"#), 400),
        case("experimental delete {}", "DELETE", "/api/experimental/aliases", Some(b"{}"), 400),
        case("experimental delete unknown", "DELETE", "/api/experimental/aliases", Some(br#"{"alias":"nosuch"}"#), 404),
        // Query parameters.
        case("?limit=abc", "GET", "/api/history?limit=abc", None, 400),
        case("?limit=0", "GET", "/api/history?limit=0", None, 400),
        case("?limit=100000", "GET", "/api/history?limit=100000", None, 400),
        case("?since=-1", "GET", "/api/history?since=-1", None, 400),
        case("?since=2^64", "GET", "/api/history?since=18446744073709551616", None, 400),
        case("?until=x", "GET", "/api/history?until=x", None, 400),
        case("?type=bogus", "GET", "/api/history?type=bogus", None, 400),
        case("?state=x", "GET", "/api/aliases?state=x", None, 400),
        case("?target=../x", "GET", "/api/aliases?target=..%2Fx", None, 400),
        case("?at_seq=abc", "GET", "/api/aliases?at_seq=abc", None, 400),
        case("?at_seq=-1", "GET", "/api/aliases?at_seq=-1", None, 400),
        case("events ?since=abc", "GET", "/api/events?since=abc", None, 400),
        case("events ?since=-1", "GET", "/api/events?since=-1", None, 400),
        with_header(case("Last-Event-ID abc", "GET", "/api/events", None, 400), "Last-Event-ID", "abc"),
        with_header(case("Last-Event-ID -1", "GET", "/api/events", None, 400), "Last-Event-ID", "-1"),
        with_header(case("Last-Event-ID 2^64", "GET", "/api/events", None, 400), "Last-Event-ID", "18446744073709551616"),
        // A bad name is a 400 on every route (issue 22), resolve included.
        case("resolve ../../etc", "GET", "/api/resolve/..%2F..%2Fetc", None, 400),
    ]
}

/// Requests at the edge of the valid: answered normally (never 5xx), and
/// changing nothing.
fn edge_cases() -> Vec<BadCase> {
    vec![
        case(
            "?since=u64::MAX",
            "GET",
            "/api/history?since=18446744073709551615",
            None,
            200,
        ),
        case("?until=0", "GET", "/api/history?until=0", None, 200),
        // Beyond the latest event: 400 naming it (issue 22).
        case(
            "?at_seq=u64::MAX",
            "GET",
            "/api/aliases?at_seq=18446744073709551615",
            None,
            400,
        ),
        case("?at_seq=0", "GET", "/api/aliases?at_seq=0", None, 200),
        with_header(
            case("X-Request-Id of 10k", "GET", "/api/aliases", None, 200),
            "X-Request-Id",
            &"x".repeat(10_000),
        ),
        case(
            "resolve unicode",
            "GET",
            "/api/resolve/caf%C3%A9",
            None,
            400,
        ),
        case("GET unknown alias", "GET", "/api/aliases/nosuch", None, 404),
    ]
}

fn run_case(server: &Server, case: &BadCase) -> Resp {
    let headers: Vec<(&str, &str)> = case
        .headers
        .iter()
        .map(|(name, value)| (*name, value.as_str()))
        .collect();
    server.request(case.method, &case.path, &headers, case.body.as_deref())
}

#[test]
fn malformed_requests_get_4xx_json_and_change_nothing() {
    let server = Server::with_models(&["llama3", "qwen"]);
    server.put_alias("coder", "llama3").expect(201);
    server.put_alias("chain", "coder").expect(201);
    let seq = server.seq();
    let aliases = server.aliases_by_name();
    let files = server.store.snapshot_base();
    let journal_files = files_under(server.journal_dir());

    let mut failures = Vec::new();
    let mut table = Vec::new();
    let cases = bad_cases();
    let n_bad = cases.len();
    for case in cases.iter().chain(edge_cases().iter()) {
        let resp = run_case(&server, case);
        let error = resp
            .json
            .get("error")
            .and_then(Value::as_str)
            .map(String::from);
        let shape_ok = if resp.status >= 400 {
            resp.header("content-type")
                .is_some_and(|v| v.starts_with("application/json"))
                && resp.json.as_object().is_some_and(|o| o.len() == 1)
                && error.as_deref().is_some_and(|e| !e.is_empty())
        } else {
            true
        };
        let message: String = error.unwrap_or_default().chars().take(90).collect();
        table.push(format!(
            "{:>3} (want {:>3}) {:<32} {}",
            resp.status, case.status, case.what, message
        ));
        if resp.status != case.status || !shape_ok || resp.status >= 500 {
            failures.push(format!("{}: {resp:?}", case.what));
        }
    }
    // Header bytes HTTP forbids never reach aliasd: hyper answers 400 itself,
    // with no body (the one error that cannot be JSON).
    let resp = server.request(
        "DELETE",
        "/api/aliases/coder",
        &[("If-Match", "\u{1}\u{2}")],
        None,
    );
    table.push(format!(
        "{:>3} (want 400) {:<32} (hyper's own, body {:?})",
        resp.status,
        "control bytes in If-Match",
        String::from_utf8_lossy(&resp.body)
    ));
    assert_eq!(resp.status, 400, "{resp:?}");
    println!(
        "malformed requests ({n_bad} bad + {} edge + 1 transport):\n{}",
        table.len() - n_bad - 1,
        table.join("\n")
    );
    assert!(n_bad >= 40);
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    assert_eq!(server.seq(), seq, "a malformed request wrote an event");
    assert_eq!(server.aliases_by_name(), aliases);
    assert_eq!(server.store.snapshot_base(), files, "the store changed");
    assert_eq!(
        files_under(server.journal_dir()),
        journal_files,
        "the journal changed"
    );
}

#[test]
fn random_bodies_never_get_a_5xx() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestCaseError, TestRunner};

    let server = Server::with_models(&["llama3", "qwen"]);
    let store = &server.store;
    server.put_alias("coder", "llama3").expect(201);

    let templates = [
        r#"{"target":"llama3"}"#,
        r#"{"target":"coder","prefix_matching":true}"#,
        r#"{"ops":[{"op":"put","alias":"a","target":"llama3"},{"op":"delete","alias":"coder"}]}"#,
        r#"{"alias":"x","target":"qwen"}"#,
        r#"{"alias":"coder"}"#,
    ];
    let routes = [
        ("PUT", "/api/aliases/fz"),
        ("POST", "/api/aliases"),
        ("POST", "/api/experimental/aliases"),
        ("DELETE", "/api/experimental/aliases"),
        ("DELETE", "/api/aliases/fz"),
    ];
    // A body: random bytes, or a template with bytes spliced in.
    let body = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..200),
        (
            0..templates.len(),
            any::<prop::sample::Index>(),
            proptest::collection::vec(any::<u8>(), 0..12),
            0usize..4,
        )
            .prop_map(move |(t, at, bytes, cut)| {
                let mut body = templates[t].as_bytes().to_vec();
                let at = at.index(body.len() + 1);
                body.splice(at..(at + cut).min(body.len()), bytes);
                body
            }),
        "[ -~]{0,60}".prop_map(|s| format!(r#"{{"target":{s:?},"alias":{s:?}}}"#).into_bytes()),
    ];
    let mut runner = TestRunner::new(Config {
        cases: 300,
        failure_persistence: None,
        ..Config::default()
    });
    let statuses: std::cell::RefCell<BTreeMap<u16, u64>> = Default::default();
    let n_cases = std::cell::Cell::new(0u64);
    let res = runner.run(&(0..routes.len(), body), |(route, body)| {
        let (method, path) = routes[route];
        let resp = server.request(
            method,
            path,
            &[("Content-Type", "application/json")],
            Some(&body),
        );
        n_cases.set(n_cases.get() + 1);
        *statuses.borrow_mut().entry(resp.status).or_default() += 1;
        if resp.status >= 500 {
            return Err(TestCaseError::fail(format!("{method} {path}: {resp:?}")));
        }
        if resp.status >= 400
            && !(resp.json.as_object().is_some_and(|o| o.len() == 1)
                && resp.json["error"].is_string())
        {
            return Err(TestCaseError::fail(format!("not a JSON error: {resp:?}")));
        }
        Ok(())
    });
    println!(
        "random bodies: {} requests, statuses {:?}",
        n_cases.get(),
        statuses.borrow()
    );
    if let Err(e) = res {
        panic!("{e}");
    }
    // The server is still healthy and consistent.
    server.get("/healthz").expect(200);
    let mut files: HashMap<String, Vec<u8>> = HashMap::new();
    for (alias, body) in server.aliases_by_name() {
        // Names with a host do not fit `TestStore::read`; the rest are checked.
        let simple = alias.matches('/').count() <= 1;
        if simple && body["state"] == "active" && body["prefix_matching"] == false {
            let resolved = body["resolved"].as_str().expect("resolved").to_string();
            files.insert(alias, store.read(&resolved).expect("model manifest"));
        }
    }
    for (alias, bytes) in files {
        assert_eq!(store.read(&alias), Some(bytes), "{alias}");
    }
}
