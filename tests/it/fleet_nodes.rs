//! Fleet mode's nodes and per-node state (SPEC §8, issue 19): real
//! `nats-server`s started by the test, real aliasd processes on separate
//! stores: node records, the `nodes` map, validation against the fleet's
//! inventory.

use std::time::Duration;

use serde_json::Value;

use crate::support::nats::NatsServer;
use crate::support::{alias_path, wait_for, Server, TestStore, WAIT};

/// Starts node `name` of the fleet on NATS `url`, on a store with `models`.
fn node(url: &str, name: &str, models: &[&str]) -> Server {
    Server::builder(TestStore::with_models(models))
        .args(&["--nats", url, "--node", name])
        .start()
}

/// Waits until every node has applied what any of them has.
fn settle(nodes: &[&Server]) -> u64 {
    let seq = nodes.iter().map(|n| n.seq()).max().unwrap_or(0);
    for node in nodes {
        node.wait_seq(seq);
    }
    seq
}

/// Waits until `on` lists every node of `names` as live, with its models.
fn wait_live(on: &Server, names: &[&str]) -> Vec<Value> {
    wait_for(&format!("{names:?} live on a node"), WAIT, || {
        let resp = on.get("/api/nodes");
        let nodes = resp.expect(200)["nodes"].as_array()?.clone();
        let live = |name: &&str| {
            nodes
                .iter()
                .any(|n| n["node"] == *name && n["live"] == true)
        };
        names.iter().all(live).then_some(nodes)
    })
}

/// The `nodes` map of alias `name` as `on` answers it: node -> state.
fn states(on: &Server, name: &str) -> Vec<(String, String)> {
    let resp = on.get(&alias_path(name));
    let body = resp.expect(200);
    let nodes = body["nodes"]
        .as_object()
        .unwrap_or_else(|| panic!("no nodes map: {resp:?}"));
    nodes
        .iter()
        .map(|(node, s)| (node.clone(), s["state"].as_str().unwrap_or("?").to_string()))
        .collect()
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(n, s)| (n.to_string(), s.to_string()))
        .collect()
}

#[test]
fn each_node_keeps_a_record_listed_by_api_nodes_and_the_cli() {
    let nats = NatsServer::start();
    let url = nats.url();
    let a = node(&url, "a", &["llama3"]);
    let mut b = node(&url, "b", &["llama3", "qwen:7b"]);
    let nodes = wait_live(&a, &["a", "b"]);
    let b_record = nodes.iter().find(|n| n["node"] == "b").unwrap();
    let models: Vec<&str> = b_record["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(models, ["llama3", "qwen:7b"], "{b_record}");
    assert!(b_record["models"][0]["digest"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));
    assert_eq!(b_record["listen"], b.addr().to_string());
    for field in ["version", "applied_seq", "started_at", "lag"] {
        assert!(b_record.get(field).is_some(), "{field}: {b_record}");
    }
    // The CLI: a table, and the API's shape with --json.
    let table = a.cli(&["nodes"]);
    assert_eq!(table.code, Some(0), "{table:?}");
    assert!(table.stdout.starts_with("NODE"), "{table:?}");
    assert!(
        table.stdout.contains("qwen") || table.stdout.contains(" 2 "),
        "{table:?}"
    );
    let json = a.cli(&["--json", "nodes"]).json();
    assert!(json["nodes"].as_array().unwrap().len() >= 2, "{json}");
    // A stopped node's record expires: listed, no longer live.
    b.stop();
    wait_for("b's record to expire", Duration::from_secs(40), || {
        let resp = a.get("/api/nodes");
        let nodes = resp.expect(200)["nodes"].as_array()?.clone();
        nodes
            .iter()
            .any(|n| n["node"] == "b" && n["live"] == false)
            .then_some(())
    });
    // A single host is not in a fleet.
    let single = Server::with_models(&["llama3"]);
    single.get("/api/nodes").expect_error(404, "not in a fleet");
    single.create("coder", "llama3");
    let alias = single.get(&alias_path("coder"));
    assert!(alias.expect(200).get("nodes").is_none(), "{alias:?}");
    assert!(single.get("/healthz").expect(200).get("node").is_none());
    // In the fleet, /healthz names the answering node.
    assert_eq!(a.get("/healthz").expect(200)["node"], "a");
}

#[test]
fn a_model_removed_on_one_node_dangles_there_only() {
    let nats = NatsServer::start();
    let url = nats.url();
    let a = node(&url, "a", &["llama3"]);
    let b = node(&url, "b", &["llama3"]);
    let c = node(&url, "c", &["llama3"]);
    wait_live(&a, &["a", "b", "c"]);
    settle(&[&a, &b, &c]);
    a.put_alias("coder", "llama3").expect(201);
    settle(&[&a, &b, &c]);
    for n in [&a, &b, &c] {
        wait_for("the alias file", WAIT, || {
            n.store.manifest_path("coder").is_file().then_some(())
        });
    }
    let all_active = pairs(&[("a", "active"), ("b", "active"), ("c", "active")]);
    assert_eq!(states(&c, "coder"), all_active);

    b.store.remove_model("llama3");
    wait_for("b's observation on every node", WAIT, || {
        [&a, &b, &c]
            .iter()
            .all(|n| states(n, "coder").contains(&("b".into(), "dangling".into())))
            .then_some(())
    });
    let expected = pairs(&[("a", "active"), ("b", "dangling"), ("c", "active")]);
    for (n, own) in [(&a, "active"), (&b, "dangling"), (&c, "active")] {
        assert_eq!(states(n, "coder"), expected);
        let alias = n.get(&alias_path("coder"));
        assert_eq!(
            alias.expect(200)["state"],
            own,
            "the answering node's own: {alias:?}"
        );
    }
    assert!(!b.store.manifest_path("coder").exists(), "withdrawn on b");
    assert!(a.store.manifest_path("coder").is_file(), "kept on a");
    assert!(c.store.manifest_path("coder").is_file(), "kept on c");
    // No event storm: the create (every node agreed: no observation) and
    // b's one report.
    settle(&[&a, &b, &c]);
    let (events, _) = a.history("alias=coder");
    let kinds: Vec<(&str, &Value)> = events
        .iter()
        .map(|e| (e["type"].as_str().unwrap(), &e["node"]))
        .collect();
    assert_eq!(
        kinds,
        [
            ("alias.created", &Value::Null),
            ("target.removed", &Value::from("b"))
        ],
        "{events:#?}"
    );
    assert_eq!(a.all_events(), b.all_events(), "one history");
}

#[test]
fn validation_uses_the_fleets_inventory() {
    let nats = NatsServer::start();
    let url = nats.url();
    let a = node(&url, "a", &["llama3"]);
    let b = node(&url, "b", &["only-on-b"]);
    let c = node(&url, "c", &["on-c"]);
    wait_live(&a, &["a", "b", "c"]);
    settle(&[&a, &b, &c]);

    // A target present only on b can be aliased through a: dangling on a,
    // active (materialized) on b.
    let created = a.put_alias("via-a", "only-on-b");
    assert_eq!(created.expect(201)["state"], "dangling", "{created:?}");
    wait_for("b materializes it", WAIT, || {
        b.store.manifest_path("via-a").is_file().then_some(())
    });
    assert_eq!(b.store.read("via-a"), b.store.read("only-on-b"));
    wait_for("b's state on a", WAIT, || {
        let s = states(&a, "via-a");
        (s == pairs(&[("a", "dangling"), ("b", "active"), ("c", "dangling")])).then_some(())
    });
    assert!(!a.store.manifest_path("via-a").exists());

    // An alias named like a model on c is refused through a.
    let refused = a.put_alias("on-c", "llama3");
    let message = refused.expect_error(409, "node c");
    assert!(message.contains("on-c"), "{message}");
    // A target on no live node is unknown.
    a.put_alias("x", "nowhere").expect_error(404, "live node");
}
