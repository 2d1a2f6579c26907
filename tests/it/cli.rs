//! The client commands (SPEC §6) against a running server: tables for people,
//! the API's JSON with `--json`, exit code 1 with the server's message on
//! errors; `aliasd watch` and `aliasd history` (issue 5).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{
    alias_path, aliasd, run_cli, seqs_of, wait_or_kill, CliOutput, Server, TestStore, WAIT,
};

/// The whitespace-separated cells of each line after the header.
fn rows(table: &str) -> Vec<Vec<&str>> {
    table
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect())
        .collect()
}

#[test]
fn client_commands_print_tables() {
    let server = Server::with_models(&["llama3", "qwen"]);

    let out = server.cli(&["create", "coder", "llama3"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout, "created coder -> llama3 (active)\n");
    assert_eq!(server.store.read("coder"), server.store.read("llama3"));
    let out = server.cli(&["create", "coder", "qwen"]);
    assert_eq!(out.stdout, "updated coder -> qwen (active)\n", "{out:?}");
    let out = server.cli(&["create", "team/c:v1", "coder"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let out = server.cli(&["create", "--prefix", "my-", "coder"]);
    assert_eq!(out.code, Some(0), "{out:?}");

    let out = server.cli(&["ls"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let header: Vec<&str> = out
        .stdout
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(header, ["ALIAS", "TARGET", "RESOLVED", "STATE", "UPDATED"]);
    let table = rows(&out.stdout);
    let cells: Vec<&[&str]> = table.iter().map(|r| &r[..4]).collect();
    assert_eq!(
        cells,
        [
            &["coder", "qwen", "qwen", "active"][..],
            &["my-*", "coder", "qwen", "active"][..],
            &["team/c:v1", "coder", "qwen", "active"][..],
        ]
    );
    let out = server.cli(&["ls", "--target", "coder", "--state", "active"]);
    let listed: Vec<&str> = rows(&out.stdout).iter().map(|r| r[0]).collect();
    assert_eq!(listed, ["my-*", "team/c:v1"], "{out:?}");

    let out = server.cli(&["resolve", "team/c:v1"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let qwen = aliasd::digest::manifest_digest(&server.store.read("qwen").unwrap());
    assert_eq!(
        out.stdout,
        format!("team/c:v1 -> coder -> qwen  (via alias, {qwen})\n")
    );

    let out = server.cli(&["rm", "team/c:v1"]);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), "deleted team/c:v1\n")
    );
    assert_eq!(server.store.read("team/c:v1"), None);
    let out = server.cli(&["ls", "--state", "dangling"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout.lines().count(), 1, "header only: {out:?}");
}

#[test]
fn client_commands_print_the_apis_json() {
    let server = Server::with_models(&["llama3"]);

    // Global flags go before or after the subcommand.
    let created = server.cli(&["--json", "create", "a", "llama3"]).json();
    assert_eq!(created, server.get(&alias_path("a")).json);
    assert_eq!(created["state"], "active");
    server.cli(&["create", "b", "a", "--json"]).json();

    let listed = server.cli(&["ls", "--json"]).json();
    assert_eq!(listed, server.get("/api/aliases").json);
    assert_eq!(listed["aliases"].as_array().map(Vec::len), Some(2));
    let filtered = server.cli(&["ls", "--json", "--target", "a"]).json();
    assert_eq!(filtered, server.get("/api/aliases?target=a").json);
    assert_eq!(filtered["aliases"][0]["alias"], "b");

    let resolved = server.cli(&["resolve", "--json", "b"]).json();
    assert_eq!(resolved, server.get("/api/resolve/b").json);
    assert_eq!(resolved["chain"], json!(["b", "a", "llama3"]));

    assert_eq!(
        server.cli(&["rm", "b", "--json"]).json(),
        json!({ "deleted": true })
    );
    assert_eq!(server.store.read("b"), None);

    // The host as a URL, and from the environment.
    let url = format!("http://{}/", server.host());
    let out = run_cli(&["--host", &url], &["--json", "ls"]);
    assert_eq!(out.json(), server.get("/api/aliases").json);
    let out = aliasd()
        .env("ALIASD_HOST", server.host())
        .args(["ls", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(value, server.get("/api/aliases").json);
}

#[test]
fn client_errors_exit_1_with_the_servers_message() {
    let server = Server::with_models(&["llama3"]);
    server.create("base", "llama3");
    server.create("dep", "base");
    let seq = server.seq();

    let cases: [(&[&str], &[&str]); 6] = [
        (
            &["create", "x", "nothing"],
            &["neither a model nor an alias", "404"],
        ),
        (&["create", "a b", "llama3"], &["a b", "400"]),
        (&["create", "llama3", "base"], &["llama3", "409"]),
        (&["rm", "nobody"], &["nobody", "404"]),
        (&["rm", "base"], &["dep", "409"]),
        (&["resolve", "nothing"], &["nothing", "404"]),
    ];
    for (args, fragments) in cases {
        for json in [false, true] {
            let mut args = args.to_vec();
            if json {
                args.push("--json");
            }
            let out = server.cli(&args);
            assert_eq!(out.code, Some(1), "{args:?}: {out:?}");
            assert_eq!(out.stdout, "", "{args:?}: {out:?}");
            assert!(out.stderr.starts_with("aliasd: "), "{args:?}: {out:?}");
            for fragment in fragments {
                assert!(out.stderr.contains(fragment), "{args:?}: {out:?}");
            }
        }
    }
    assert_eq!(server.seq(), seq);
}

#[test]
fn client_without_a_server_exits_1() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let host = format!("127.0.0.1:{port}");
    for args in [
        &["ls"][..],
        &["create", "a", "b"],
        &["rm", "a"],
        &["resolve", "a"],
    ] {
        let out = run_cli(&["--host", &host], args);
        assert_eq!(out.code, Some(1), "{args:?}: {out:?}");
        assert!(
            out.stderr.contains("cannot reach aliasd") && out.stderr.contains(&host),
            "{args:?}: {out:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// `aliasd watch` and `aliasd history`.
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
            .recv_timeout(WAIT)
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
    let history = server.all_events();

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

/// Runs `command` to its end with its output captured; fails the test if it
/// is still running after `limit` (it would otherwise hang the suite).
fn output_within(mut command: std::process::Command, limit: Duration) -> CliOutput {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn aliasd");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let Some(status) = wait_or_kill(child, limit) else {
        panic!(
            "aliasd still running after {limit:?}: {:?}",
            err.join().unwrap()
        );
    };
    CliOutput {
        code: status.code(),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// Issue 18: `--host https://...` speaks TLS. To a plain-HTTP aliasd it fails
/// at once, saying the TLS handshake failed and what to do, instead of hanging
/// or blaming a server that is running.
#[test]
fn https_host_to_a_plain_http_server_fails_with_a_tls_error() {
    let server = Server::with_models(&["llama3"]);
    for args in [&["ls"][..], &["watch"]] {
        let mut command = aliasd();
        command
            .args(["--host", &format!("https://{}", server.host())])
            .args(args);
        let out = output_within(command, Duration::from_secs(30));
        assert_eq!(out.code, Some(1), "{args:?}: {out:?}");
        assert_eq!(out.stdout, "", "{args:?}: {out:?}");
        assert!(
            out.stderr.starts_with("aliasd: ")
                && out.stderr.contains("TLS handshake failed")
                && out.stderr.contains("use http://")
                && out.stderr.contains(&server.host()),
            "{args:?}: {out:?}"
        );
    }
    // The same server over plain HTTP, named by URL or by host:port.
    for host in [format!("http://{}", server.host()), server.host()] {
        let out = run_cli(&["--host", &host], &["resolve", "llama3"]);
        assert_eq!(out.code, Some(0), "{host}: {out:?}");
    }
}

/// A TLS-terminating reverse proxy in front of `upstream` under the path
/// prefix `/aliasd`, with the certificate in `tests/it/tls/` (for 127.0.0.1,
/// signed by `ca.pem`): one request per connection, like a minimal nginx.
fn tls_proxy(upstream: std::net::SocketAddr) -> String {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/tls");
    let certs = CertificateDer::pem_file_iter(dir.join("cert.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("key.pem")).unwrap();
    let config = std::sync::Arc::new(
        rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // Serves until the test binary exits.
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let config = config.clone();
            std::thread::spawn(move || {
                let conn = rustls::ServerConnection::new(config).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, stream);
                // A client that refuses the certificate ends here.
                let Some(request) = read_request(&mut tls) else {
                    return;
                };
                let request = String::from_utf8(request).unwrap();
                let (line, rest) = request.split_once("\r\n").unwrap();
                let line = line.replacen(" /aliasd/", " /", 1);
                let mut upstream = std::net::TcpStream::connect(upstream).unwrap();
                write!(upstream, "{line}\r\nconnection: close\r\n{rest}").unwrap();
                let mut response = Vec::new();
                upstream.read_to_end(&mut response).unwrap();
                tls.write_all(&response).unwrap();
                tls.conn.send_close_notify();
                let _ = tls.flush();
            });
        }
    });
    format!("https://{addr}/aliasd")
}

/// One HTTP/1.1 request (head and `content-length` body) from `stream`, or
/// `None` if the connection fails first.
fn read_request(stream: &mut impl Read) -> Option<Vec<u8>> {
    let mut request = Vec::new();
    let mut byte = [0u8; 1];
    while !request.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => request.push(byte[0]),
            _ => return None,
        }
    }
    let head = String::from_utf8_lossy(&request).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |n| n.trim().parse().unwrap());
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).ok()?;
    request.extend_from_slice(&body);
    Some(request)
}

/// Issue 18: `--host https://...` reaches an aliasd behind a TLS proxy (at a
/// path prefix), trusting the proxy's certificate as the system does
/// (`SSL_CERT_FILE` here); a certificate the system does not trust is a TLS
/// error that says so.
#[test]
fn https_host_reaches_aliasd_behind_a_tls_proxy() {
    let server = Server::with_models(&["llama3"]);
    let host = tls_proxy(server.addr());
    let ca = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/tls/ca.pem");
    let cli = |trust: bool, args: &[&str]| {
        let mut command = aliasd();
        command
            .env_remove("SSL_CERT_DIR")
            .args(["--host", &host])
            .args(args);
        if trust {
            command.env("SSL_CERT_FILE", &ca);
        } else {
            command.env_remove("SSL_CERT_FILE");
        }
        output_within(command, Duration::from_secs(30))
    };

    let out = cli(true, &["create", "coder", "llama3"]);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), "created coder -> llama3 (active)\n"),
        "{out:?}"
    );
    let out = cli(true, &["resolve", "coder"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout
            .starts_with("coder -> llama3  (via alias, sha256:"),
        "{out:?}"
    );
    assert_eq!(
        cli(true, &["--json", "ls"]).json(),
        server.get("/api/aliases").json
    );
    // An error from aliasd comes through the proxy as it would directly.
    let out = cli(true, &["rm", "nobody"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("nobody") && out.stderr.contains("404"),
        "{out:?}"
    );

    let out = cli(false, &["ls"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("TLS handshake failed") && out.stderr.contains("trust the certificate"),
        "{out:?}"
    );
}

/// Issue 18: `aliasd watch` decodes UTF-8 only on whole lines. A server (or a
/// proxy) may cut its chunks anywhere; a character split between two chunks
/// used to print as two U+FFFD.
#[test]
fn watch_keeps_a_character_split_between_chunks() {
    let event = json!({
        "seq": 1,
        "id": "7d0c2b1e-9a43-4c1e-8f0e-2b6b0b9f6a11",
        "time": "2026-12-01T00:00:00.000000Z",
        "type": "alias.created",
        "alias": "coder",
        "target": "llama3",
        "previous_target": null,
        "digest": null,
        "prefix_matching": false,
        "actor": "josé@proxy 🦀",
        "request_id": null
    });
    let frame = format!("id: 1\nevent: alias.created\ndata: {event}\n\n").into_bytes();
    let cut = frame
        .windows(2)
        .position(|w| w == "é".as_bytes())
        .expect("é in the frame")
        + 1;
    assert!(std::str::from_utf8(&frame[..cut]).is_err(), "cut inside é");

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let server = std::thread::spawn(move || {
        // One stream per `watch` below, each in two chunks cut inside `é`.
        for _ in 0..2 {
            let (mut stream, _) = listener.accept().unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                assert_eq!(stream.read(&mut byte).unwrap(), 1, "request head");
                head.push(byte[0]);
            }
            let head = String::from_utf8(head).unwrap();
            assert!(head.starts_with("GET /api/events "), "{head}");
            stream
                .write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                      transfer-encoding: chunked\r\n\r\n",
                )
                .unwrap();
            for chunk in [&frame[..cut], &frame[cut..]] {
                write!(stream, "{:x}\r\n", chunk.len()).unwrap();
                stream.write_all(chunk).unwrap();
                stream.write_all(b"\r\n").unwrap();
                stream.flush().unwrap();
                // Two reads for the client, not one.
                std::thread::sleep(Duration::from_millis(100));
            }
            stream.write_all(b"0\r\n\r\n").unwrap();
        }
    });

    let mut json_watch = aliasd();
    json_watch.args(["--host", &host, "watch", "--json"]);
    let out = output_within(json_watch, Duration::from_secs(30));
    assert_eq!(out.code, Some(0), "{out:?}");
    let printed: serde_json::Value = serde_json::from_str(out.stdout.trim_end()).unwrap();
    assert_eq!(printed, event, "{out:?}");

    let mut table_watch = aliasd();
    table_watch.args(["--host", &host, "watch"]);
    let out = output_within(table_watch, Duration::from_secs(30));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout.contains("josé@proxy 🦀") && !out.stdout.contains('\u{fffd}'),
        "{out:?}"
    );
    server.join().unwrap();
}

/// Issue 18: logs are filtered by `ALIASD_LOG`, else `RUST_LOG` (tracing's
/// `EnvFilter` syntax). A filter that does not parse stops aliasd at start-up
/// with a message naming the variable, instead of being ignored.
#[test]
fn an_invalid_log_filter_stops_start_up_naming_the_variable() {
    let store = TestStore::with_models(&["llama3"]);
    let journal = tempfile::tempdir().unwrap();
    for (var, other) in [("ALIASD_LOG", "RUST_LOG"), ("RUST_LOG", "ALIASD_LOG")] {
        let mut serve = aliasd();
        serve
            .env(var, "not[valid")
            .env_remove(other)
            .arg("serve")
            .arg("--models")
            .arg(store.root())
            .arg("--journal")
            .arg(journal.path())
            .args(["--listen", "127.0.0.1:0"]);
        let out = output_within(serve, Duration::from_secs(30));
        assert_eq!(out.code, Some(1), "{var}: {out:?}");
        assert!(
            out.stderr.starts_with("aliasd: ")
                && out.stderr.contains(var)
                && out.stderr.contains("not[valid")
                && !out.stderr.contains(other),
            "{var}: {out:?}"
        );
    }
    // ALIASD_LOG comes first: a good one makes a bad RUST_LOG irrelevant.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut client = aliasd();
    client
        .env("ALIASD_LOG", "aliasd=debug,warn")
        .env("RUST_LOG", "not[valid")
        .args(["--host", &format!("127.0.0.1:{port}"), "ls"]);
    let out = output_within(client, Duration::from_secs(30));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("cannot reach aliasd") && !out.stderr.contains("RUST_LOG"),
        "{out:?}"
    );
}

/// Issue 22: shell completions and a man page come from the binary itself.
#[test]
fn completions_and_the_man_page_are_printed() {
    for shell in ["bash", "zsh", "fish"] {
        let out = run_cli(&[], &["completions", shell]);
        assert_eq!(out.code, Some(0), "{shell}: {out:?}");
        assert!(out.stdout.contains("aliasd"), "{shell}: {}", out.stdout);
        assert!(out.stdout.contains("serve"), "{shell}: subcommands listed");
    }
    let out = run_cli(&[], &["completions", "powershell-or-not"]);
    assert_ne!(out.code, Some(0), "an unknown shell is refused");
    let out = run_cli(&[], &["man"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout.starts_with(".ie") || out.stdout.contains(".TH"),
        "{}",
        &out.stdout[..200.min(out.stdout.len())]
    );
    assert!(out.stdout.contains("aliasd"));
}

/// Issue 22: re-creating an alias with the target it has (spelt in any case)
/// says "unchanged" and writes no event.
#[test]
fn creating_an_alias_again_with_its_target_says_unchanged() {
    let server = Server::with_models(&["llama3", "qwen"]);
    let out = server.cli(&["create", "upper", "llama3"]);
    assert!(out.stdout.starts_with("created"), "{out:?}");
    let seq = server.seq();
    let out = server.cli(&["create", "UPPER", "llama3"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.starts_with("unchanged"), "{out:?}");
    assert_eq!(server.seq(), seq, "no event");
    let out = server.cli(&["create", "UPPER", "qwen"]);
    assert!(out.stdout.starts_with("updated"), "{out:?}");
}

/// Issue 22: a port in use is said before the journal is opened or the store
/// touched (nothing is created), and the process exits at once.
#[test]
fn a_port_in_use_stops_start_up_before_the_journal_is_opened() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut command = aliasd();
    command
        .args(["serve", "--listen", &addr.to_string(), "--models"])
        .arg(dir.path().join("models"))
        .arg("--journal")
        .arg(dir.path().join("journal"));
    let out = output_within(command, WAIT);
    assert_ne!(out.code, Some(0));
    let stderr = &out.stderr;
    assert!(stderr.contains("cannot listen on"), "{stderr}");
    assert!(!dir.path().join("journal").exists(), "journal opened first");
    assert!(!dir.path().join("models").exists(), "store created first");
}

/// Issue 22: with no `$HOME` and no `--models`/`--journal`, start-up stops
/// with a clear error instead of using the working directory.
#[test]
fn no_home_and_no_paths_is_an_error_not_the_working_directory() {
    let cwd = tempfile::tempdir().unwrap();
    let mut command = aliasd();
    command
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env_remove("HOME")
        .env_remove("OLLAMA_MODELS")
        .current_dir(cwd.path());
    let out = output_within(command, WAIT);
    assert_ne!(out.code, Some(0));
    let stderr = &out.stderr;
    assert!(stderr.contains("$HOME is not set"), "{stderr}");
    assert!(
        stderr.contains("--models") && stderr.contains("--journal"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_dir(cwd.path()).unwrap().count(),
        0,
        "nothing made in the working directory"
    );
}

/// Issue 22: `--log-format json` writes one JSON object per log line.
#[test]
fn json_logs_are_one_object_per_line() {
    let server = Server::start_with_args(
        TestStore::with_models(&["llama3"]),
        &["--log-format", "json"],
    );
    server.create("coder", "llama3");
    let log = server.stderr();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 3, "{log}");
    for line in &lines {
        let value: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            value["level"].is_string() && value["timestamp"].is_string(),
            "{line}"
        );
    }
    assert!(log.contains("listening on"), "{log}");
}

/// Issue 22: a 401 from the CLI names the client flag and the form it takes.
#[test]
fn a_refused_token_names_the_client_flag() {
    let server = Server::start_with_args(
        TestStore::with_models(&["llama3"]),
        &["--token", "admin=s3cret"],
    );
    let out = server.cli(&["ls"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("--auth SECRET"), "{out:?}");
    let out = server.cli(&["--auth", "admin=wrong", "ls"]);
    assert!(out.stderr.contains("without NAME="), "{out:?}");
    let out = server.cli(&["--auth", "s3cret", "ls"]);
    assert_eq!(out.code, Some(0), "{out:?}");
}
