//! The client commands (SPEC §6) against a running server: tables for people,
//! the API's JSON with `--json`, exit code 1 with the server's message on
//! errors; `aliasd watch` and `aliasd history` (issue 5).

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;

use serde_json::{json, Value};

use crate::support::{alias_path, aliasd, run_cli, seqs_of, Server, WAIT};

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
