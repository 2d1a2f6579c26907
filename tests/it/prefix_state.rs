//! Prefix aliases follow their model (SPEC §3 "External changes", "Prefix
//! aliases"): when the model at the end of a prefix alias's chain is removed
//! it becomes `dangling` with one `target.removed`, and comes back `active`
//! with `target.restored`; a re-pull is a `target.changed`; live, at
//! start-up and through chains, as an exact alias does. Unlike an exact
//! alias, no file is ever written, withdrawn or looked at for it.
//!
//! Journals written before prefix aliases had a state hold their creates
//! without a digest; they must replay as they did (`active`).

use std::path::Path;

use serde_json::{json, Value};

use crate::probe::{self, alias, events_after, kind_set, sorted, the_event, wait_events, Fixture};
use crate::support::{alias_path, digest, tempdir, wait_for, Server, TestStore, WAIT};

/// Asserts an alias's state, digest and resolved model.
#[track_caller]
fn check_state(server: &Server, name: &str, state: &str, digest: Option<&str>) {
    probe::check_state(server, name, state, digest);
    let body = alias(server, name);
    if state == "dangling" {
        assert_eq!(body["resolved"], Value::Null, "{body}");
    } else {
        assert!(body["resolved"].is_string(), "{body}");
    }
}

/// Creates (or retargets) the prefix alias `prefix` -> `target`; returns the body.
#[track_caller]
fn put_prefix(server: &Server, prefix: &str, target: &str) -> Value {
    let resp = server.send_json(
        "PUT",
        &alias_path(prefix),
        &json!({ "target": target, "prefix_matching": true }),
    );
    assert!(resp.status == 200 || resp.status == 201, "{resp:?}");
    resp.json
}

/// Asserts the store holds no file at the prefix's spelling (a prefix alias
/// is never materialized) and only these manifests.
#[track_caller]
fn check_files(store: &TestStore, prefixes: &[&str], manifests: usize) {
    for prefix in prefixes {
        assert_eq!(store.read(prefix), None, "a file for prefix {prefix}");
    }
    let files: Vec<_> = store
        .snapshot()
        .into_keys()
        .filter(|path| path.starts_with("manifests"))
        .collect();
    assert_eq!(files.len(), manifests, "{files:#?}");
}

/// Asserts the resolve of `name` is the dangling 404.
#[track_caller]
fn check_resolve_dangling(server: &Server, name: &str) {
    server
        .get(&format!("/api/resolve/{name}"))
        .expect_error(404, "dangling");
}

/// Asserts the resolve of `name` ends at `model`.
#[track_caller]
fn check_resolves_to(server: &Server, name: &str, model: &str) {
    let resp = server.get(&format!("/api/resolve/{name}"));
    assert_eq!(resp.expect(200)["resolved"], model, "{resp:?}");
}

#[test]
fn a_prefix_alias_dangles_when_its_model_goes_and_comes_back_with_it() {
    let mut fx = Fixture::new(&["qwen"]);
    let v1 = fx.store().read("qwen").expect("qwen");
    let created = put_prefix(&fx.server, "qw-", "qwen");
    assert_eq!(created["state"], "active", "{created}");
    assert_eq!(created["digest"], json!(digest(&v1)), "{created}");
    // probe-model, probe, qwen.
    check_files(fx.store(), &["qw-"], 3);

    // Removed: dangling, one target.removed, resolve is the dangling 404.
    let since = fx.server.seq();
    fx.store().remove_model("qwen");
    let events = wait_events(fx.addr(), since, &[("target.removed", "qw-")]);
    let removed = the_event(&events, "target.removed", "qw-");
    assert_eq!(removed["actor"], "watcher", "{removed}");
    assert_eq!(removed["target"], "qwen", "{removed}");
    assert_eq!(removed["digest"], Value::Null, "{removed}");
    assert_eq!(removed["prefix_matching"], true, "{removed}");
    check_state(&fx.server, "qw-", "dangling", None);
    check_resolve_dangling(&fx.server, "qw-7b");
    fx.barrier();
    assert_eq!(
        kind_set(&events_after(fx.addr(), since)),
        sorted(&[("target.removed", "qw-")])
    );
    let (history, _) = fx.server.history("alias=qw-");
    let types: Vec<&str> = history.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(types, ["alias.created", "target.removed"], "{history:#?}");
    check_files(fx.store(), &["qw-"], 2);

    // Back: active, target.restored with the model's digest, resolve works.
    let since = fx.server.seq();
    fx.store().add_model("qwen");
    let events = wait_events(fx.addr(), since, &[("target.restored", "qw-")]);
    let restored = the_event(&events, "target.restored", "qw-");
    assert_eq!(restored["digest"], json!(digest(&v1)), "{restored}");
    check_state(&fx.server, "qw-", "active", Some(&digest(&v1)));
    check_resolves_to(&fx.server, "qw-7b", "qwen");

    // Re-pulled: target.changed with the new digest.
    let v2 = fx.store().add_model_version("qwen", 2);
    let events = wait_events(fx.addr(), since, &[("target.changed", "qw-")]);
    let changed = the_event(&events, "target.changed", "qw-");
    assert_eq!(changed["digest"], json!(digest(&v2)), "{changed}");
    check_state(&fx.server, "qw-", "active", Some(&digest(&v2)));
    fx.barrier();
    assert_eq!(
        kind_set(&events_after(fx.addr(), since)),
        sorted(&[("target.changed", "qw-"), ("target.restored", "qw-")]),
        "one event per change, no repair or shadowing for a prefix"
    );
    check_files(fx.store(), &["qw-"], 3);
}

#[test]
fn a_prefix_alias_through_a_chain_follows_the_model_at_its_end() {
    let mut fx = Fixture::new(&["qwen"]);
    let v1 = fx.store().read("qwen").expect("qwen");
    fx.server.create("coder", "qwen");
    put_prefix(&fx.server, "dev-", "coder");
    check_state(&fx.server, "dev-", "active", Some(&digest(&v1)));

    let since = fx.server.seq();
    fx.store().remove_model("qwen");
    let events = wait_events(
        fx.addr(),
        since,
        &[("target.removed", "coder"), ("target.removed", "dev-")],
    );
    assert_eq!(
        the_event(&events, "target.removed", "dev-")["target"],
        "coder"
    );
    check_state(&fx.server, "dev-", "dangling", None);
    check_resolve_dangling(&fx.server, "dev-x");
    fx.barrier();

    let since = fx.server.seq();
    fx.store().add_model("qwen");
    wait_events(
        fx.addr(),
        since,
        &[("target.restored", "coder"), ("target.restored", "dev-")],
    );
    check_state(&fx.server, "dev-", "active", Some(&digest(&v1)));
    check_resolves_to(&fx.server, "dev-x", "qwen");
    fx.barrier();
    assert_eq!(
        kind_set(&events_after(fx.addr(), since)),
        sorted(&[("target.restored", "coder"), ("target.restored", "dev-")])
    );

    // Retargeting the alias in the middle moves the prefix alias with it.
    fx.store().add_model("llama3");
    let llama3 = fx.store().read("llama3").expect("llama3");
    fx.barrier();
    let since = fx.server.seq();
    fx.server.create("coder", "llama3");
    let events = events_after(fx.addr(), since);
    assert_eq!(
        kind_set(&events),
        sorted(&[("alias.updated", "coder"), ("target.changed", "dev-")])
    );
    check_state(&fx.server, "dev-", "active", Some(&digest(&llama3)));
    check_files(fx.store(), &["dev-"], 5);
}

#[test]
fn a_prefix_alias_to_a_dangling_alias_is_created_dangling() {
    let mut fx = Fixture::new(&["qwen"]);
    fx.server.create("coder", "qwen");
    fx.store().remove_model("qwen");
    wait_events(fx.addr(), 0, &[("target.removed", "coder")]);
    fx.barrier();

    let since = fx.server.seq();
    let created = put_prefix(&fx.server, "dev-", "coder");
    assert_eq!(created["state"], "dangling", "{created}");
    assert_eq!(created["resolved"], Value::Null, "{created}");
    assert_eq!(
        kind_set(&events_after(fx.addr(), since)),
        sorted(&[("alias.created", "dev-"), ("target.removed", "dev-")]),
        "the create replays active (as journals before kept it), so target.removed follows"
    );
    check_state(&fx.server, "dev-", "dangling", None);
    check_resolve_dangling(&fx.server, "dev-x");

    let since = fx.server.seq();
    fx.store().add_model("qwen");
    wait_events(fx.addr(), since, &[("target.restored", "dev-")]);
    check_state(
        &fx.server,
        "dev-",
        "active",
        Some(&digest(&fx.store().read("qwen").unwrap())),
    );
}

#[test]
fn a_model_removed_while_stopped_dangles_prefix_aliases_once() {
    let mut fx = Fixture::new(&["qwen", "llama3"]);
    let llama3 = fx.store().read("llama3").expect("llama3");
    fx.server.create("coder", "qwen");
    put_prefix(&fx.server, "qw-", "qwen");
    put_prefix(&fx.server, "dev-", "coder");
    put_prefix(&fx.server, "ll-", "llama3");
    let since = fx.server.seq();

    fx.server.stop();
    fx.store().remove_model("qwen");
    let v2 = fx.store().add_model_version("llama3", 2);
    fx.server.start_again();

    // Start-up reconciles before it listens.
    let events = events_after(fx.addr(), since);
    assert_eq!(
        kind_set(&events),
        sorted(&[
            ("target.changed", "ll-"),
            ("target.removed", "coder"),
            ("target.removed", "dev-"),
            ("target.removed", "qw-"),
        ])
    );
    for (kind, alias) in [
        ("target.removed", "qw-"),
        ("target.removed", "dev-"),
        ("target.changed", "ll-"),
    ] {
        let event = the_event(&events, kind, alias);
        assert_eq!(event["actor"], "startup", "{event}");
        assert_eq!(event["request_id"], Value::Null, "{event}");
    }
    assert_eq!(
        the_event(&events, "target.changed", "ll-")["digest"],
        json!(digest(&v2))
    );
    check_state(&fx.server, "qw-", "dangling", None);
    check_state(&fx.server, "dev-", "dangling", None);
    check_state(&fx.server, "ll-", "active", Some(&digest(&v2)));
    assert_ne!(digest(&v2), digest(&llama3));
    check_resolve_dangling(&fx.server, "qw-x");

    // A second restart journals nothing.
    let seq = fx.server.seq();
    fx.server.restart();
    assert_eq!(fx.server.seq(), seq);
    fx.barrier();
    assert_eq!(kind_set(&events_after(fx.addr(), since)), kind_set(&events));
    check_files(fx.store(), &["qw-", "dev-", "ll-"], 3);
}

/// A journal as an earlier version wrote it: prefix creates carry no digest.
fn write_old_journal(dir: &Path, qwen_digest: &str) {
    let opened = journal::Journal::open(dir, journal::Options::default()).expect("open journal");
    let event = |seq: u64, alias: &str, target: &str, digest: Option<&str>, prefix: bool| {
        aliasd::event::Event {
            seq,
            id: format!("00000000-0000-4000-8000-00000000000{seq}"),
            time: format!("2025-01-01T00:00:0{seq}Z"),
            kind: aliasd::event::EventType::AliasCreated,
            alias: alias.to_string(),
            target: Some(target.to_string()),
            previous_target: None,
            digest: digest.map(String::from),
            prefix_matching: prefix,
            actor: "anonymous@127.0.0.1:1".to_string(),
            request_id: Some(format!("req-{seq}")),
            node: None,
        }
        .encode()
    };
    opened
        .journal
        .append(vec![
            event(1, "coder", "qwen", Some(qwen_digest), false),
            event(2, "qw-", "qwen", None, true),
            event(3, "cod-", "coder", None, true),
            event(4, "ghost", "missing", None, false),
            event(5, "gh-", "ghost", None, true),
        ])
        .expect("append");
    opened.journal.close();
}

#[test]
fn an_old_journal_of_prefix_creates_without_digest_replays_active() {
    let store = TestStore::with_models(&["qwen"]);
    let qwen = store.read("qwen").expect("qwen");
    let journal_dir = tempdir("aliasd-it-old-journal");
    write_old_journal(journal_dir.path(), &digest(&qwen));
    let server = Server::builder(store).journal(journal_dir.path()).start();

    // The journal's events replay to the states they always gave: every
    // prefix create active, without a digest.
    let at = server.get("/api/aliases?at_seq=5");
    let states: Vec<(String, String)> = crate::support::aliases_of(&at)
        .iter()
        .map(|a| {
            assert_eq!(a["digest"].is_null(), a["alias"] != "coder", "{a}");
            (
                a["alias"].as_str().unwrap().into(),
                a["state"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("cod-", "active"),
            ("coder", "active"),
            ("gh-", "active"),
            ("ghost", "dangling"),
            ("qw-", "active"),
        ]
        .map(|(a, s)| (a.to_string(), s.to_string()))
    );
    // Start-up writes the exact alias's file (this journal was written by
    // hand, with no store behind it) and brings in line the prefix alias
    // whose chain ends at no model; the other prefix aliases' model is
    // there, so nothing is claimed of them.
    let events = events_after(server.addr(), 5);
    assert_eq!(
        kind_set(&events),
        sorted(&[("alias.repaired", "coder"), ("target.removed", "gh-")])
    );
    assert!(
        events.iter().all(|e| e["actor"] == "startup"),
        "{events:#?}"
    );
    check_state(&server, "qw-", "active", None);
    check_state(&server, "cod-", "active", None);
    check_state(&server, "gh-", "dangling", None);
    check_resolves_to(&server, "qw-x", "qwen");
    check_resolves_to(&server, "cod-x", "qwen");
    assert_eq!(server.store.read("qw-"), None);
}

/// Starts node `name` of a fleet on NATS `url`, on a store with `models`.
fn fleet_node(url: &str, name: &str, models: &[&str]) -> Server {
    Server::builder(TestStore::with_models(models))
        .args(&["--nats", url, "--node", name])
        .start()
}

/// Waits until every node has applied what any of them has.
fn settle(nodes: &[&Server]) {
    let seq = nodes.iter().map(|n| n.seq()).max().unwrap_or(0);
    for node in nodes {
        node.wait_seq(seq);
    }
}

/// The `nodes` map of alias `name` as `on` answers it: node -> state; `None`
/// while `on` has not yet heard of the alias (a fleet-wide create reaches the
/// other nodes a moment after it is answered).
fn node_states(on: &Server, name: &str) -> Option<Vec<(String, String)>> {
    let resp = on.get(&alias_path(name));
    if resp.status == 404 {
        return None;
    }
    let body = resp.expect(200);
    let nodes = body["nodes"]
        .as_object()
        .unwrap_or_else(|| panic!("no nodes map: {resp:?}"));
    let states = nodes
        .iter()
        .map(|(node, s)| (node.clone(), s["state"].as_str().unwrap_or("?").to_string()))
        .collect();
    Some(states)
}

/// `(type, node)` of the events about `alias` in `on`'s history.
fn fleet_kinds(on: &Server, alias: &str) -> Vec<(String, Value)> {
    let (events, _) = on.history(&format!("alias={alias}"));
    events
        .iter()
        .map(|e| (e["type"].as_str().unwrap().to_string(), e["node"].clone()))
        .collect()
}

/// In a fleet a prefix alias's state is per node, as an exact alias's: each
/// node records its own observation once, and no node repeats another's.
#[test]
fn in_a_fleet_a_prefix_alias_dangles_only_where_its_model_is_missing() {
    let nats = crate::support::nats::NatsServer::start();
    let url = nats.url();
    let a = fleet_node(&url, "a", &["llama3"]);
    let b = fleet_node(&url, "b", &["llama3"]);
    // qwen is on c only.
    let c = fleet_node(&url, "c", &["llama3", "qwen"]);
    wait_for("every node live", WAIT, || {
        let resp = a.get("/api/nodes");
        let nodes = resp.expect(200)["nodes"].as_array()?.clone();
        ["a", "b", "c"]
            .iter()
            .all(|name| {
                nodes
                    .iter()
                    .any(|n| n["node"] == *name && n["live"] == true)
            })
            .then_some(())
    });
    settle(&[&a, &b, &c]);
    put_prefix(&a, "ll-", "llama3");
    put_prefix(&a, "qw-", "qwen");
    let expected = |states: &[(&str, &str)]| -> Vec<(String, String)> {
        states
            .iter()
            .map(|(n, s)| (n.to_string(), s.to_string()))
            .collect()
    };
    let qw = expected(&[("a", "dangling"), ("b", "dangling"), ("c", "active")]);
    wait_for("c's observation of qw- on every node", WAIT, || {
        [&a, &b, &c]
            .iter()
            .all(|n| node_states(n, "qw-").as_ref() == Some(&qw))
            .then_some(())
    });
    assert_eq!(alias(&c, "qw-")["state"], "active");
    assert_eq!(alias(&a, "qw-")["state"], "dangling");
    check_resolves_to(&c, "qw-7b", "qwen");
    check_resolve_dangling(&a, "qw-7b");

    b.store.remove_model("llama3");
    let ll = expected(&[("a", "active"), ("b", "dangling"), ("c", "active")]);
    wait_for("b's observation of ll- on every node", WAIT, || {
        [&a, &b, &c]
            .iter()
            .all(|n| node_states(n, "ll-").as_ref() == Some(&ll))
            .then_some(())
    });
    for (n, own) in [(&a, "active"), (&b, "dangling"), (&c, "active")] {
        assert_eq!(alias(n, "ll-")["state"], own, "the answering node's own");
    }
    settle(&[&a, &b, &c]);
    let null = Value::Null;
    assert_eq!(
        fleet_kinds(&a, "ll-"),
        [
            ("alias.created".to_string(), null.clone()),
            ("target.removed".to_string(), Value::from("b")),
        ]
    );
    // Planned on a, where qwen is missing: dangling fleet-wide in the same
    // commit; c, which has it, reports it active once.
    assert_eq!(
        fleet_kinds(&a, "qw-"),
        [
            ("alias.created".to_string(), null.clone()),
            ("target.removed".to_string(), null),
            ("target.restored".to_string(), Value::from("c")),
        ]
    );
    assert_eq!(a.all_events(), b.all_events(), "one history");
    assert_eq!(a.all_events(), c.all_events(), "one history");
    for n in [&a, &b, &c] {
        assert_eq!(n.store.read("ll-"), None);
        assert_eq!(n.store.read("qw-"), None);
    }
}
