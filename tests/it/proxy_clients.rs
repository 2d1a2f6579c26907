//! The inference proxy as the official client libraries see it (issue 22):
//! Ollama's `/api/tags` with every name in `name:tag` form, OpenAI's
//! `GET /v1/models` and `GET /v1/models/{name}` with the aliases, aliasd's
//! own errors on `/v1/*` in OpenAI's shape, browsers' preflights from those
//! libraries; then the official clients themselves, Python's `ollama` and
//! `openai` (`tests/python/clients.py`) and JavaScript's (`tests/js/clients.cjs`),
//! against aliasd in front of a stand-in Ollama that answers as Ollama does,
//! streams included.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

/// The models the stand-in knows, as its `/api/tags` names them.
const UPSTREAM_MODELS: [&str; 3] = ["qwen:latest", "other:latest", "gone:latest"];

/// The `modified_at` the stand-in gives every model (Ollama's form: local
/// time with an offset, nanoseconds).
const UPSTREAM_MODIFIED_AT: &str = "2024-01-02T03:04:05.123456789-07:00";

/// The `created` the stand-in gives every model on `/v1/*`.
const UPSTREAM_CREATED: u64 = 1_700_000_000;

/// One request the stand-in received.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    body: Vec<u8>,
}

impl Seen {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// A stand-in Ollama on a loopback port: the native routes (`/api/chat`,
/// `/api/generate` streamed as NDJSON unless `"stream": false`, `/api/embed`,
/// `/api/show`, `/api/tags`) and the OpenAI-compatible ones
/// (`/v1/chat/completions` streamed as server-sent events when asked,
/// `/v1/models`, `/v1/models/{name}`), in Ollama's shapes, answering with the
/// `model` it was sent.
struct FakeOllama {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeOllama {
    fn start() -> FakeOllama {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let recorded = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let recorded = recorded.clone();
                std::thread::spawn(move || serve_one(stream, &recorded));
            }
        });
        FakeOllama { addr, seen }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn last(&self) -> Seen {
        self.seen().pop().expect("the stand-in received nothing")
    }
}

/// Reads one request and answers it (`Connection: close`).
fn serve_one(stream: TcpStream, seen: &Mutex<Vec<Seen>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut length = 0;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) == 0 {
            return;
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().expect("length");
            }
        }
    }
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let request = Seen { method, path, body };
    seen.lock().unwrap().push(request.clone());
    answer(stream, &request);
}

/// Whether the stand-in has this model (`qwen` is `qwen:latest`).
fn known(name: &str) -> bool {
    let tagged = if name.contains(':') {
        name.to_string()
    } else {
        format!("{name}:latest")
    };
    UPSTREAM_MODELS.contains(&tagged.as_str())
}

fn answer(mut out: TcpStream, request: &Seen) {
    let body = request.json();
    let model = body["model"]
        .as_str()
        .or(body["name"].as_str())
        .unwrap_or("")
        .to_string();
    let stream = body["stream"].as_bool();
    let route = request.path.split('?').next().unwrap_or_default();
    let openai_model = |id: &str| json!({"id": id, "object": "model", "created": UPSTREAM_CREATED, "owned_by": "library"});
    match (request.method.as_str(), route) {
        ("POST", "/api/chat" | "/api/generate") if !known(&model) => {
            let error = json!({"error": format!("model '{model}' not found")});
            respond(&mut out, "404 Not Found", &error);
        }
        ("POST", "/api/chat" | "/api/generate") => {
            let line = |text: &str, done: bool| {
                let mut line =
                    json!({"model": model, "created_at": "2024-01-02T03:04:05Z", "done": done});
                if route == "/api/chat" {
                    line["message"] = json!({"role": "assistant", "content": text});
                } else {
                    line["response"] = json!(text);
                }
                if done {
                    line["done_reason"] = json!("stop");
                    line["eval_count"] = json!(2);
                }
                line
            };
            if stream == Some(false) {
                respond(&mut out, "200 OK", &line("hello", true));
            } else {
                let lines = [line("hel", false), line("lo", true)];
                stream_lines(&mut out, "application/x-ndjson", &lines, |v| {
                    format!("{v}\n")
                });
            }
        }
        ("POST", "/api/embed") => {
            let body = json!({"model": model, "embeddings": [[0.5, 0.25]]});
            respond(&mut out, "200 OK", &body);
        }
        ("POST", "/api/show") if known(&model) => {
            let body = json!({
                "modelfile": "FROM stand-in",
                "template": "{{ .Prompt }}",
                "details": {"format": "gguf", "family": "stand-in", "parameter_size": "1B", "quantization_level": "Q4_0"},
                "model_info": {"general.architecture": "stand-in"},
                "capabilities": ["completion"],
                "modified_at": UPSTREAM_MODIFIED_AT,
            });
            respond(&mut out, "200 OK", &body);
        }
        ("POST", "/api/show") => {
            let error = json!({"error": format!("model '{model}' not found")});
            respond(&mut out, "404 Not Found", &error);
        }
        ("GET", "/api/tags") => {
            let models: Vec<Value> = UPSTREAM_MODELS
                .iter()
                .map(|name| {
                    json!({
                        "name": name, "model": name, "modified_at": UPSTREAM_MODIFIED_AT,
                        "size": 7, "digest": format!("digest-of-{name}"),
                        "details": {"format": "gguf", "family": "stand-in", "parameter_size": "1B", "quantization_level": "Q4_0"},
                    })
                })
                .collect();
            respond(&mut out, "200 OK", &json!({ "models": models }));
        }
        ("POST", "/v1/chat/completions") if !known(&model) => {
            let error = json!({"error": {"message": format!("model \"{model}\" not found, try pulling it first"), "type": "api_error", "param": null, "code": null}});
            respond(&mut out, "404 Not Found", &error);
        }
        ("POST", "/v1/chat/completions") => {
            let chunk = |content: Option<&str>, finish: Option<&str>| {
                let delta =
                    content.map_or(json!({}), |c| json!({"role": "assistant", "content": c}));
                json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": UPSTREAM_CREATED,
                       "model": model, "system_fingerprint": "fp_ollama",
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
            };
            if stream == Some(true) {
                let chunks = [
                    chunk(Some("hel"), None),
                    chunk(Some("lo"), None),
                    chunk(None, Some("stop")),
                ];
                stream_lines(&mut out, "text/event-stream", &chunks, |v| {
                    format!("data: {v}\n\n")
                });
            } else {
                let body = json!({"id": "chatcmpl-1", "object": "chat.completion", "created": UPSTREAM_CREATED,
                    "model": model, "system_fingerprint": "fp_ollama",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}});
                respond(&mut out, "200 OK", &body);
            }
        }
        ("GET", "/v1/models") => {
            let data: Vec<Value> = UPSTREAM_MODELS.iter().map(|m| openai_model(m)).collect();
            respond(&mut out, "200 OK", &json!({"object": "list", "data": data}));
        }
        ("GET", path) if path.starts_with("/v1/models/") => {
            let name = &path["/v1/models/".len()..];
            if known(name) {
                respond(&mut out, "200 OK", &openai_model(name));
            } else {
                let error = json!({"error": {"message": format!("model \"{name}\" not found"), "type": "not_found_error", "param": null, "code": null}});
                respond(&mut out, "404 Not Found", &error);
            }
        }
        _ => {
            let head = "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 18\r\nConnection: close\r\n\r\n404 page not found";
            let _ = out.write_all(head.as_bytes());
        }
    }
}

/// A JSON answer.
fn respond(out: &mut TcpStream, status: &str, body: &Value) {
    let body = body.to_string();
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = out.write_all(head.as_bytes());
    let _ = out.write_all(body.as_bytes());
}

/// A chunked answer, one chunk per line, each flushed as it is written; the
/// last line is split across two chunks (a line the proxy must hold back
/// until it is whole). Server-sent events end with `data: [DONE]`, as
/// Ollama's do.
fn stream_lines(
    out: &mut TcpStream,
    kind: &str,
    lines: &[Value],
    frame: impl Fn(&Value) -> String,
) {
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    let _ = out.write_all(head.as_bytes());
    let mut chunk = |text: &str| {
        let _ = out.write_all(format!("{:x}\r\n{text}\r\n", text.len()).as_bytes());
        let _ = out.flush();
    };
    let mut framed: Vec<String> = lines.iter().map(frame).collect();
    if kind == "text/event-stream" {
        framed.push("data: [DONE]\n\n".to_string());
    }
    let last = framed.pop().unwrap_or_default();
    for text in &framed {
        chunk(text);
    }
    let (a, b) = last.split_at(last.len() / 2);
    chunk(a);
    chunk(b);
    let _ = out.write_all(b"0\r\n\r\n");
}

/// A server in front of a stand-in, with `qwen`, `other` and `gone` in its
/// store and the aliases `coder -> qwen`, `c2 -> coder`, the prefix
/// `my- -> qwen`, and `lost -> gone` made dangling (`gone` removed from the
/// store, still known upstream).
fn proxied(extra: &[&str]) -> (Server, FakeOllama) {
    let upstream = FakeOllama::start();
    let url = upstream.url();
    let mut args = vec!["--upstream", url.as_str()];
    args.extend_from_slice(extra);
    let server = Server::start_with_args(TestStore::with_models(&["qwen", "other", "gone"]), &args);
    setup_aliases(&server);
    (server, upstream)
}

fn setup_aliases(server: &Server) {
    for (alias, target) in [("coder", "qwen"), ("c2", "coder"), ("lost", "gone")] {
        server
            .send_json("PUT", &alias_path(alias), &json!({ "target": target }))
            .expect(201);
    }
    server
        .send_json(
            "PUT",
            &alias_path("my-"),
            &json!({"target": "qwen", "prefix_matching": true}),
        )
        .expect(201);
    server.store.remove_model("gone");
    wait_for("lost to dangle", Duration::from_secs(10), || {
        (alias_body(server, "lost")["state"] == "dangling").then_some(())
    });
}

/// The Alias body of `alias` (`GET /api/aliases/{alias}`).
fn alias_body(server: &Server, alias: &str) -> Value {
    server.get(&alias_path(alias)).expect(200).clone()
}

/// Asserts an error in OpenAI's shape: this status, the body exactly
/// `{"error": {"message", "type", "param", "code"}}` with this `type` and a
/// message containing `fragment`. Returns the error object.
#[track_caller]
fn expect_openai_error(resp: &Resp, status: u16, kind: &str, fragment: &str) -> Value {
    let json = resp.expect(status);
    let object = json.as_object().unwrap_or_else(|| panic!("{resp:?}"));
    assert_eq!(object.len(), 1, "error body has other keys: {resp:?}");
    let error = &object["error"];
    let mut keys: Vec<&str> = error
        .as_object()
        .unwrap_or_else(|| panic!("error is not an object: {resp:?}"))
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["code", "message", "param", "type"], "{resp:?}");
    assert_eq!(error["type"], kind, "{resp:?}");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(
        message.to_lowercase().contains(&fragment.to_lowercase()),
        "{message:?} does not mention {fragment:?}"
    );
    error.clone()
}

#[test]
fn issue_22_tags_name_aliases_with_their_tag_and_their_own_modified_at() {
    let (server, _upstream) = proxied(&[]);
    let resp = server.get("/api/tags");
    let models = resp.expect(200)["models"].as_array().unwrap().clone();
    let names: Vec<&str> = models.iter().map(|m| m["name"].as_str().unwrap()).collect();
    // Every name in Ollama's `name:tag` form; the dangling and prefix aliases are not listed.
    assert_eq!(
        names,
        [
            "qwen:latest",
            "other:latest",
            "gone:latest",
            "c2:latest",
            "coder:latest"
        ],
        "{resp:?}"
    );
    for alias in ["c2", "coder"] {
        let entry = models
            .iter()
            .find(|m| m["name"] == format!("{alias}:latest"))
            .unwrap();
        assert_eq!(entry["model"], format!("{alias}:latest"));
        // The model's own entry, but the alias's time.
        assert_eq!(entry["digest"], "digest-of-qwen:latest");
        assert_eq!(entry["details"]["family"], "stand-in");
        let updated_at = alias_body(&server, alias)["updated_at"].clone();
        assert_eq!(entry["modified_at"], updated_at, "{alias}");
        assert_ne!(entry["modified_at"], UPSTREAM_MODIFIED_AT);
    }
}

#[test]
fn issue_22_v1_models_lists_the_aliases_and_retrieve_resolves_them() {
    let (server, upstream) = proxied(&[]);
    let resp = server.get("/v1/models");
    let list = resp.expect(200);
    assert_eq!(list["object"], "list");
    let data = list["data"].as_array().unwrap();
    let ids: Vec<&str> = data.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        [
            "qwen:latest",
            "other:latest",
            "gone:latest",
            "c2:latest",
            "coder:latest"
        ],
        "{resp:?}"
    );
    let created_at = |alias: &str| {
        let body = alias_body(&server, alias);
        aliasd::index::parse_time(body["created_at"].as_str().unwrap()) / 1_000_000
    };
    assert_eq!(
        data[4],
        json!({"id": "coder:latest", "object": "model", "created": created_at("coder"), "owned_by": "library"})
    );
    assert_eq!(upstream.last().path, "/v1/models");

    // An alias, exact, chained or prefix: its model, under the asked name.
    for (asked, alias) in [("coder", "coder"), ("c2:latest", "c2"), ("my-bot", "my-")] {
        let resp = server.get(&format!("/v1/models/{asked}"));
        assert_eq!(
            resp.expect(200),
            &json!({"id": asked, "object": "model", "created": created_at(alias), "owned_by": "library"}),
            "{asked}"
        );
        assert_eq!(upstream.last().path, "/v1/models/qwen", "{asked}");
    }
    // A model, and a name aliasd does not know, are the upstream's to answer.
    let resp = server.get("/v1/models/qwen:latest");
    assert_eq!(resp.expect(200)["created"], UPSTREAM_CREATED);
    assert_eq!(upstream.last().path, "/v1/models/qwen:latest");
    let resp = server.get("/v1/models/nothing");
    expect_openai_error(&resp, 404, "not_found_error", "\"nothing\" not found");
    assert_eq!(upstream.last().path, "/v1/models/nothing");
    // A dangling alias is refused here, in OpenAI's shape; nothing goes upstream.
    let before = upstream.seen().len();
    let resp = server.get("/v1/models/lost");
    expect_openai_error(&resp, 404, "not_found_error", "dangling");
    assert_eq!(upstream.seen().len(), before);
}

#[test]
fn issue_22_aliasd_answers_its_own_errors_on_v1_in_openai_shape() {
    // Dangling: 404.
    let (server, upstream) = proxied(&[]);
    let before = upstream.seen().len();
    let chat = json!({"model": "lost", "messages": [{"role": "user", "content": "hi"}]});
    let resp = server.send_json("POST", "/v1/chat/completions", &chat);
    let error = expect_openai_error(&resp, 404, "not_found_error", "dangling");
    assert_eq!(error["code"], "not_found");
    assert_eq!(upstream.seen().len(), before, "nothing is forwarded");
    // The native routes keep Ollama's shape.
    server
        .send_json("POST", "/api/chat", &chat)
        .expect_error(404, "dangling");
    // The upstream's own errors pass as they are.
    let resp = server.send_json(
        "POST",
        "/v1/chat/completions",
        &json!({"model": "nothing", "messages": []}),
    );
    expect_openai_error(&resp, 404, "api_error", "try pulling it first");
    // A route the upstream does not have (its text 404) answered as JSON, in OpenAI's shape there.
    let resp = server.get("/v1/nothing");
    expect_openai_error(&resp, 404, "not_found_error", "404 page not found");
    drop(server);

    // Tokens: 401, with its WWW-Authenticate header, on every /v1 route.
    let upstream = FakeOllama::start();
    let url = upstream.url();
    let server = Server::start_with_args(
        TestStore::with_models(&["qwen"]),
        &[
            "--upstream",
            &url,
            "--token",
            "ci=s3cret",
            "--read-token",
            "ro=r3ad",
        ],
    );
    for (method, path) in [
        ("GET", "/v1/models"),
        ("POST", "/v1/chat/completions"),
        ("GET", "/v1/models/qwen"),
    ] {
        let resp = server.request(method, path, &[("Authorization", "Bearer wrong")], None);
        let error = expect_openai_error(&resp, 401, "authentication_error", "invalid token");
        assert_eq!(error["code"], "invalid_api_key");
        assert_eq!(resp.header("www-authenticate"), Some("Bearer"), "{resp:?}");
        let resp = server.request(method, path, &[], None);
        expect_openai_error(&resp, 401, "authentication_error", "missing token");
    }
    // 403: a read-only token on a mutating route.
    let resp = server.send_json_with(
        "POST",
        "/v1/chat/completions",
        &[("Authorization", "Bearer r3ad")],
        &json!({"model": "qwen"}),
    );
    expect_openai_error(&resp, 403, "permission_error", "read-only");
    assert!(upstream.seen().is_empty(), "{:?}", upstream.seen());
    // Elsewhere, the `{"error": "..."}` shape.
    server.get("/api/tags").expect_error(401, "missing token");
    server
        .get("/api/aliases")
        .expect_error(401, "missing token");
    drop(server);

    // An unreachable upstream: 502.
    let closed = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let server = Server::start_with_args(TestStore::with_models(&["qwen"]), &["--upstream", &url]);
    let resp = server.send_json("POST", "/v1/chat/completions", &json!({"model": "qwen"}));
    let error = expect_openai_error(&resp, 502, "api_error", "ollama serve");
    assert_eq!(error["code"], "bad_gateway");
    let resp = server.get("/v1/models");
    expect_openai_error(&resp, 502, "api_error", "cannot reach ollama");
    server
        .get("/api/tags")
        .expect_error(502, "cannot reach ollama");
    drop(server);

    // No upstream: a 404 that says so, in OpenAI's shape on /v1.
    let server = Server::with_models(&["qwen"]);
    let resp = server.get("/v1/models");
    expect_openai_error(&resp, 404, "not_found_error", "no route");
    server.get("/api/tags").expect_error(404, "no route");
}

#[test]
fn issue_22_preflights_allow_the_client_libraries_headers() {
    let (server, _upstream) = proxied(&["--cors-origin", "https://chat.example"]);
    // The OpenAI JS client's `x-stainless-*` headers, ollama-js's `user-agent`.
    let asked = "authorization, content-type, user-agent, x-stainless-arch, x-stainless-lang, \
                 x-stainless-os, x-stainless-package-version, x-stainless-retry-count, \
                 x-stainless-runtime, x-stainless-runtime-version, x-stainless-timeout";
    for origin in ["https://chat.example", "http://localhost:5173"] {
        for path in ["/v1/chat/completions", "/api/chat", "/v1/models"] {
            let resp = server.request(
                "OPTIONS",
                path,
                &[
                    ("Origin", origin),
                    ("Access-Control-Request-Method", "POST"),
                    ("Access-Control-Request-Headers", asked),
                ],
                None,
            );
            assert_eq!(resp.status, 204, "{origin} {path}: {resp:?}");
            assert_eq!(resp.header("access-control-allow-origin"), Some(origin));
            assert_eq!(
                resp.header("access-control-allow-headers"),
                Some(asked),
                "{resp:?}"
            );
        }
    }
    // An origin not allowed gets no CORS answer.
    let resp = server.request(
        "OPTIONS",
        "/v1/chat/completions",
        &[
            ("Origin", "https://evil.example"),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", asked),
        ],
        None,
    );
    assert_eq!(resp.status, 403, "{resp:?}");
    assert_eq!(resp.header("access-control-allow-origin"), None);
    assert_eq!(resp.header("access-control-allow-headers"), None);
}

/// The package versions the Python client test was written against.
const PY_REQUIREMENTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/requirements.txt");

/// The python of a virtual environment with the `ollama` and `openai`
/// packages: `$ALIASD_PY_CLIENTS` (made by `.ci/run`), else one made here,
/// once, in `target/pyclients` (kept between runs), from
/// `tests/python/requirements.txt`. A failure to make it fails the test:
/// it never passes by skipping.
fn python_with_clients() -> PathBuf {
    static MADE: Mutex<Option<PathBuf>> = Mutex::new(None);
    if let Some(python) = std::env::var_os("ALIASD_PY_CLIENTS") {
        let python = PathBuf::from(python);
        assert!(
            python.is_file(),
            "ALIASD_PY_CLIENTS={} is not a file: set it to the python of a virtual environment with the packages of tests/python/requirements.txt, or unset it to have the test make one",
            python.display()
        );
        return python;
    }
    let mut made = MADE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(python) = made.as_ref() {
        return python.clone();
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pyclients");
    let python = venv.join("bin/python");
    if !has_clients(&python) {
        if !python.is_file() {
            run_setup(
                Command::new("python3").args(["-m", "venv"]).arg(&venv),
                "python3 -m venv (on Debian: apt-get install python3-venv)",
            );
        }
        run_setup(
            Command::new(&python).args(["-m", "pip", "install", "-q", "-r", PY_REQUIREMENTS]),
            "pip install -r tests/python/requirements.txt (needs PyPI)",
        );
        assert!(
            has_clients(&python),
            "the venv at {} still lacks the client packages",
            venv.display()
        );
    }
    *made = Some(python.clone());
    python
}

/// Whether `python` imports the pinned client packages.
fn has_clients(python: &Path) -> bool {
    let requirements =
        std::fs::read_to_string(PY_REQUIREMENTS).expect("tests/python/requirements.txt");
    let check = requirements
        .lines()
        .filter_map(|line| line.split_once("=="))
        .map(|(name, version)| {
            format!(
                "assert importlib.metadata.version({:?}) == {:?}",
                name.trim(),
                version.trim()
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    python.is_file()
        && Command::new(python)
            .args([
                "-c",
                &format!("import importlib.metadata, ollama, openai; {check}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
}

#[track_caller]
fn run_setup(command: &mut Command, what: &str) {
    let out = command.output().unwrap_or_else(|e| {
        panic!("could not run {what}: {e}; the Python client test cannot run without it")
    });
    assert!(
        out.status.success(),
        "{what} failed, so the Python client test could not run ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn issue_22_the_python_ollama_and_openai_clients_see_aliases_as_models() {
    let python = python_with_clients();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/clients.py");
    let mut command = Command::new(&python);
    command.arg(script);
    run_client_script(command, "tests/python/clients.py");
}

#[test]
fn issue_22_the_javascript_ollama_and_openai_clients_see_aliases_as_models() {
    let modules = node_modules_with_clients();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/js/clients.cjs");
    let mut command = Command::new("node");
    command.arg(script).env("NODE_PATH", &modules);
    run_client_script(command, "tests/js/clients.cjs");
}

/// Runs a client script (`command`) against a proxying aliasd
/// (`ALIASD_URL`, see [`proxied`]) and one that needs a token
/// (`ALIASD_GUARDED_URL`, `ALIASD_GUARDED_TOKEN`; `coder -> qwen`), both in
/// front of one stand-in; asserts it passed all its checks and that what it
/// asked went upstream resolved.
fn run_client_script(mut command: Command, script: &str) {
    let (server, upstream) = proxied(&[]);
    let guarded = Server::start_with_args(
        TestStore::with_models(&["qwen"]),
        &["--upstream", &upstream.url(), "--token", "ci=s3cret"],
    );
    guarded
        .send_json_with(
            "PUT",
            &alias_path("coder"),
            &[("Authorization", "Bearer s3cret")],
            &json!({"target": "qwen"}),
        )
        .expect(201);
    let logs = tempdir("clients");
    let (stdout_path, stderr_path) = (logs.path().join("stdout"), logs.path().join("stderr"));
    command
        .env("ALIASD_URL", format!("http://{}", server.addr()))
        .env("ALIASD_GUARDED_URL", format!("http://{}", guarded.addr()))
        .env("ALIASD_GUARDED_TOKEN", "s3cret")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"));
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "OLLAMA_HOST",
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
    ] {
        command.env_remove(var);
    }
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
    let status = wait_or_kill(child, Duration::from_secs(120));
    let stdout = std::fs::read_to_string(&stdout_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let status = status.unwrap_or_else(|| panic!("{script} hung:\n{stdout}\n{stderr}"));
    assert!(
        status.success(),
        "{script} failed ({status}):\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("all checks passed"), "{stdout}\n{stderr}");
    println!("{stdout}");

    // What the clients asked went upstream resolved.
    let sent: Vec<(String, String, Value)> = upstream
        .seen()
        .iter()
        .map(|seen| {
            let json = seen.json();
            let model = json
                .get("model")
                .or(json.get("name"))
                .cloned()
                .unwrap_or(Value::Null);
            (seen.method.clone(), seen.path.clone(), model)
        })
        .collect();
    for route in [
        "/api/chat",
        "/api/generate",
        "/api/embed",
        "/api/show",
        "/v1/chat/completions",
    ] {
        let models: Vec<&Value> = sent
            .iter()
            .filter(|(_, path, _)| path == route)
            .map(|(_, _, m)| m)
            .collect();
        assert!(!models.is_empty(), "nothing went to {route}: {sent:?}");
        assert!(models.iter().all(|m| *m == "qwen"), "{route}: {sent:?}");
    }
    assert!(
        sent.iter().any(|(_, path, _)| path == "/v1/models/qwen"),
        "{sent:?}"
    );
}

/// The pinned JavaScript clients (`tests/js/package.json` and its lock file).
const JS_PACKAGE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/js/package.json");

/// A `node_modules` with the `ollama` and `openai` packages, for `NODE_PATH`:
/// `$ALIASD_JS_CLIENTS` (made by `.ci/run`), else one installed here, once,
/// in `target/jsclients` (kept between runs) with `npm ci` from
/// `tests/js/`. A failure to make it fails the test: it never passes by
/// skipping.
fn node_modules_with_clients() -> PathBuf {
    static MADE: Mutex<Option<PathBuf>> = Mutex::new(None);
    if let Some(modules) = std::env::var_os("ALIASD_JS_CLIENTS") {
        let modules = PathBuf::from(modules);
        assert!(
            has_js_clients(&modules),
            "ALIASD_JS_CLIENTS={} lacks the packages of tests/js/package.json: set it to a node_modules with them, or unset it to have the test install them",
            modules.display()
        );
        return modules;
    }
    let mut made = MADE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(modules) = made.as_ref() {
        return modules.clone();
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/jsclients");
    let modules = dir.join("node_modules");
    if !has_js_clients(&modules) {
        std::fs::create_dir_all(&dir).expect("target/jsclients");
        for file in ["package.json", "package-lock.json"] {
            let from = Path::new(JS_PACKAGE).with_file_name(file);
            std::fs::copy(&from, dir.join(file)).expect("copy tests/js/package*.json");
        }
        run_setup(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--prefix"])
                .arg(&dir),
            "npm ci for tests/js/package.json (needs node, npm and the npm registry)",
        );
        assert!(
            has_js_clients(&modules),
            "{} still lacks the client packages",
            modules.display()
        );
    }
    *made = Some(modules.clone());
    modules
}

/// Whether `modules` holds the pinned versions of the clients.
fn has_js_clients(modules: &Path) -> bool {
    let package: Value =
        serde_json::from_str(&std::fs::read_to_string(JS_PACKAGE).expect("tests/js/package.json"))
            .expect("tests/js/package.json is JSON");
    let wanted = package["dependencies"].as_object().expect("dependencies");
    wanted.iter().all(|(name, version)| {
        std::fs::read_to_string(modules.join(name).join("package.json"))
            .ok()
            .and_then(|text| serde_json::from_str::<Value>(&text).ok())
            .is_some_and(|installed| installed["version"] == *version)
    })
}
