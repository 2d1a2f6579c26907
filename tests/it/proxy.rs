//! The inference proxy (SPEC §7): `serve --upstream URL`, against a stand-in
//! Ollama that records what it is sent and answers as Ollama does (NDJSON
//! streams echoing the request's `model`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

const DEADLINE: Duration = Duration::from_secs(10);

/// One request the stand-in received.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Seen {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// A stand-in Ollama on a loopback port. `/api/chat` streams two NDJSON
/// lines; the second waits for [`FakeOllama::release`] when `gated`.
struct FakeOllama {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    gate: Mutex<Option<mpsc::Sender<()>>>,
}

impl FakeOllama {
    fn start(gated: bool) -> FakeOllama {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let (release, gate) = mpsc::channel::<()>();
        let gate = Arc::new(Mutex::new(gate));
        let recorded = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (recorded, gate) = (recorded.clone(), gate.clone());
                std::thread::spawn(move || serve_one(stream, &recorded, gated.then_some(&*gate)));
            }
        });
        FakeOllama {
            addr,
            seen,
            gate: Mutex::new(Some(release)),
        }
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

    fn release(&self) {
        if let Some(sender) = self.gate.lock().unwrap().as_ref() {
            sender.send(()).expect("release");
        }
    }
}

/// Reads one request and answers it (`Connection: close`).
fn serve_one(stream: TcpStream, seen: &Mutex<Vec<Seen>>, gate: Option<&Mutex<mpsc::Receiver<()>>>) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).expect("header");
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map_or(0, |(_, v)| v.parse().expect("length"));
    let mut body = vec![0; length];
    reader.read_exact(&mut body).expect("body");
    let request = Seen {
        method,
        path,
        headers,
        body,
    };
    seen.lock().unwrap().push(request.clone());
    let mut out = stream;
    let model = request.json()["model"].as_str().unwrap_or("").to_string();
    let respond = |out: &mut TcpStream, status: &str, kind: &str, body: &str, extra: &str| {
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
            body.len()
        );
        let _ = out.write_all(head.as_bytes());
        let _ = out.write_all(body.as_bytes());
    };
    let route = request.path.split('?').next().unwrap_or_default();
    let ok_json = |out: &mut TcpStream, body: &str, extra: &str| {
        respond(
            out,
            "200 OK",
            "application/json; charset=utf-8",
            body,
            extra,
        )
    };
    match (request.method.as_str(), route) {
        ("POST", "/api/chat") | ("POST", "/v1/chat/completions") => {
            let head = "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
            let _ = out.write_all(head.as_bytes());
            let chunk = |out: &mut TcpStream, text: String| {
                let _ = out.write_all(format!("{:x}\r\n{text}\r\n", text.len()).as_bytes());
                let _ = out.flush();
            };
            chunk(
                &mut out,
                format!(
                    "{}\n",
                    json!({"model": model, "message": {"content": "hel"}, "done": false})
                ),
            );
            if let Some(gate) = gate {
                let _ = gate.lock().unwrap().recv_timeout(DEADLINE);
            }
            // A line split across two chunks.
            let last = format!(
                "{}\n",
                json!({"model": model, "message": {"content": "lo"}, "done": true})
            );
            let (a, b) = last.split_at(7);
            chunk(&mut out, a.to_string());
            chunk(&mut out, b.to_string());
            let _ = out.write_all(b"0\r\n\r\n");
        }
        ("POST", "/api/embed") => {
            let body = json!({"model": model, "embeddings": [[0.5, 0.25]]}).to_string();
            ok_json(&mut out, &body, "");
        }
        ("GET", "/api/tags") => {
            let entry =
                |name: &str| json!({"name": name, "model": name, "digest": "d-qwen", "size": 7});
            let body = json!({"models": [entry("qwen:latest"), entry("coder:latest")]}).to_string();
            ok_json(&mut out, &body, "");
        }
        ("GET", "/api/version") => {
            ok_json(
                &mut out,
                "{\"version\":\"0.0.0-stand-in\"}",
                "X-Stand-In: yes\r\n",
            );
        }
        ("POST", "/api/show") => {
            ok_json(&mut out, "{\"details\":{\"family\":\"stand-in\"}}", "");
        }
        ("POST", "/api/pull") => {
            ok_json(&mut out, "{\"status\":\"success\"}", "");
        }
        _ => respond(
            &mut out,
            "404 Not Found",
            "text/plain",
            "404 page not found",
            "",
        ),
    }
}

/// A server in front of the stand-in, with `qwen` in its store and the
/// aliases `coder -> qwen`, `c2 -> coder` and the prefix `my- -> qwen`.
fn proxied(gated: bool, extra: &[&str]) -> (Server, FakeOllama) {
    let upstream = FakeOllama::start(gated);
    let url = upstream.url();
    let mut args = vec!["--upstream", url.as_str()];
    args.extend_from_slice(extra);
    let server = Server::start_with_args(TestStore::with_models(&["qwen", "other"]), &args);
    server.create("coder", "qwen");
    server.create("c2", "coder");
    server
        .send_json(
            "PUT",
            &alias_path("my-"),
            &json!({"target": "qwen", "prefix_matching": true}),
        )
        .expect(201);
    (server, upstream)
}

/// The `model` of each NDJSON line of a body.
fn models_in(body: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(body)
        .lines()
        .map(|line| {
            let value: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            value["model"].as_str().unwrap_or("").to_string()
        })
        .collect()
}

#[test]
fn inference_requests_resolve_aliases_and_answer_with_the_asked_name() {
    let (server, upstream) = proxied(false, &[]);
    for (asked, sent) in [
        ("coder", "qwen"),
        ("c2", "qwen"),
        ("my-assistant", "qwen"),
        ("qwen", "qwen"),
        ("other", "other"),
        ("not-here", "not-here"),
    ] {
        let body = json!({"model": asked, "messages": [{"role": "user", "content": "hi"}]});
        let resp = server.send_json("POST", "/api/chat", &body);
        assert_eq!(resp.status, 200, "{asked}: {resp:?}");
        let seen = upstream.last();
        assert_eq!(
            (seen.method.as_str(), seen.path.as_str()),
            ("POST", "/api/chat")
        );
        assert_eq!(seen.json()["model"], sent, "{asked}");
        // The rest of the request is what the client sent.
        assert_eq!(seen.json()["messages"], body["messages"], "{asked}");
        assert_eq!(models_in(&resp.body), [asked, asked], "{asked}: {resp:?}");
    }
    // The OpenAI-compatible routes too, and a non-streamed answer.
    let resp = server.send_json("POST", "/v1/chat/completions", &json!({"model": "c2"}));
    assert_eq!(models_in(&resp.body), ["c2", "c2"]);
    assert_eq!(upstream.last().json()["model"], "qwen");
    let resp = server.send_json(
        "POST",
        "/api/embed",
        &json!({"model": "coder", "input": "x"}),
    );
    let json = resp.expect(200);
    assert_eq!(json["model"], "coder");
    assert_eq!(json["embeddings"], json!([[0.5, 0.25]]));
    assert_eq!(
        resp.header("content-length")
            .map(|v| v.parse::<usize>().unwrap()),
        None,
        "a rewritten body's length is not the upstream's: {resp:?}"
    );
}

#[test]
fn show_resolves_the_older_name_field_too() {
    let (server, upstream) = proxied(false, &[]);
    server
        .send_json("POST", "/api/show", &json!({"name": "c2"}))
        .expect(200);
    let seen = upstream.last();
    assert_eq!(seen.path, "/api/show");
    assert_eq!(seen.json(), json!({"name": "qwen"}));
    // `model` wins when both are there, as in Ollama.
    server
        .send_json(
            "POST",
            "/api/show",
            &json!({"model": "coder", "name": "other"}),
        )
        .expect(200);
    assert_eq!(
        upstream.last().json(),
        json!({"model": "qwen", "name": "other"})
    );
}

#[test]
fn a_streamed_answer_reaches_the_client_as_it_comes() {
    let (server, upstream) = proxied(true, &[]);
    let mut stream = TcpStream::connect(server.addr()).expect("connect");
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let body = json!({"model": "coder", "messages": []}).to_string();
    let request = format!(
        "POST /api/chat HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("send");
    // The first line arrives while the upstream still holds back the second.
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("\"hel\"") {
        let n = stream.read(&mut buf).expect("the first line never came");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&seen).contains("\"model\":\"coder\""));
    assert!(!String::from_utf8_lossy(&seen).contains("\"lo\""));
    upstream.release();
    stream.read_to_end(&mut seen).expect("the rest");
    let text = String::from_utf8_lossy(&seen);
    assert!(text.contains("\"lo\""), "{text}");
    assert_eq!(text.matches("\"model\":\"coder\"").count(), 2, "{text}");
    assert!(!text.contains("qwen"), "{text}");
}

#[test]
fn other_routes_are_forwarded_as_they_are() {
    let (server, upstream) = proxied(false, &[]);
    let resp = server.request("GET", "/api/version?x=1", &[("X-Custom", "kept")], None);
    assert_eq!(resp.expect(200)["version"], "0.0.0-stand-in");
    assert_eq!(resp.header("x-stand-in"), Some("yes"));
    let seen = upstream.last();
    assert_eq!(seen.path, "/api/version?x=1");
    assert!(
        seen.headers.contains(&("x-custom".into(), "kept".into())),
        "{seen:?}"
    );
    // A body aliasd does not read is passed on byte for byte, even the model.
    let pull = br#"{"model": "coder",  "stream":false}"#;
    server
        .request(
            "POST",
            "/api/pull",
            &[("Content-Type", "application/json")],
            Some(pull),
        )
        .expect(200);
    assert_eq!(upstream.last().body, pull);
    // Bodies over aliasd's own 64 KiB limit go through: a blob upload, an image in a chat.
    let big = vec![b'x'; 1 << 20];
    server
        .request(
            "POST",
            "/api/pull",
            &[("Content-Type", "application/json")],
            Some(&big),
        )
        .expect(200);
    assert_eq!(upstream.last().body.len(), big.len());
    let image = "A".repeat(1 << 20);
    let chat = json!({"model": "coder", "messages": [{"role": "user", "content": "?", "images": [image]}]});
    let resp = server.send_json("POST", "/api/chat", &chat);
    assert_eq!(models_in(&resp.body), ["coder", "coder"], "{resp:?}");
    assert_eq!(upstream.last().json()["messages"], chat["messages"]);
    // The upstream's own errors come back in the JSON error shape.
    server
        .get("/nothing/here")
        .expect_error(404, "404 page not found");
    assert_eq!(upstream.last().path, "/nothing/here");
    // aliasd's own routes are not forwarded.
    let before = upstream.seen().len();
    server.get("/api/resolve/coder").expect(200);
    server.get("/healthz").expect(200);
    assert_eq!(upstream.seen().len(), before);
}

#[test]
fn tags_list_the_aliases_beside_the_models() {
    let (server, _upstream) = proxied(false, &[]);
    let resp = server.get("/api/tags");
    let names: Vec<&str> = resp.expect(200)["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    // `coder` was listed already; `c2` is added; the prefix alias cannot be.
    assert_eq!(
        names,
        ["qwen:latest", "coder:latest", "c2:latest"],
        "{resp:?}"
    );
    assert_eq!(resp.json["models"][2]["digest"], "d-qwen");
}

#[test]
fn a_dangling_alias_is_refused_here_and_nothing_is_forwarded() {
    let (server, upstream) = proxied(false, &[]);
    server.store.remove_model("qwen");
    let deadline = std::time::Instant::now() + DEADLINE;
    while server.get(&alias_path("coder")).json["state"] != "dangling" {
        assert!(std::time::Instant::now() < deadline, "coder never dangling");
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = upstream.seen().len();
    server
        .send_json(
            "POST",
            "/api/generate",
            &json!({"model": "coder", "prompt": "hi"}),
        )
        .expect_error(404, "dangling");
    assert_eq!(upstream.seen().len(), before);
}

#[test]
fn tokens_guard_the_forwarded_routes_too() {
    let upstream = FakeOllama::start(false);
    let url = upstream.url();
    let server = Server::start_with_args(
        TestStore::with_models(&["qwen"]),
        &["--upstream", &url, "--token", "ci=s3cret"],
    );
    server
        .send_json("POST", "/api/chat", &json!({"model": "qwen"}))
        .expect_error(401, "token");
    assert!(upstream.seen().is_empty());
    let resp = server.send_json_with(
        "POST",
        "/api/chat",
        &[("Authorization", "Bearer s3cret")],
        &json!({"model": "qwen"}),
    );
    assert_eq!(models_in(&resp.body), ["qwen", "qwen"]);
    let seen = upstream.last();
    assert!(
        !seen.headers.iter().any(|(name, _)| name == "authorization"),
        "aliasd's token went upstream: {seen:?}"
    );
}

#[test]
fn an_unreachable_upstream_is_a_502_that_says_what_to_do() {
    let closed = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let server = Server::start_with_args(TestStore::with_models(&["qwen"]), &["--upstream", &url]);
    server
        .send_json("POST", "/api/chat", &json!({"model": "qwen"}))
        .expect_error(502, "ollama serve");
    server
        .get("/api/tags")
        .expect_error(502, "cannot reach ollama");
}

#[test]
fn a_bad_upstream_address_stops_start_up() {
    let refused = Server::builder(TestStore::new())
        .args(&["--upstream", "https://example.com"])
        .start_refused();
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert!(refused.stderr.contains("only http://"), "{refused:?}");
}
