//! The client commands (SPEC §6) against a running server: tables for people,
//! the API's JSON with `--json`, exit code 1 with the server's message on errors.

use serde_json::json;

use crate::support::{alias_path, aliasd, run_cli, Server};

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
