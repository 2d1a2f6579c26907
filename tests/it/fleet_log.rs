//! Fleet mode's shared log (SPEC §8, issue 19): real `nats-server`s started
//! by the test, real aliasd processes on separate stores and journals.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::nats::NatsServer;
use crate::support::sse::Sse;
use crate::support::{alias_path, wait_for, Server, TestStore, WAIT};

/// Starts a node of the fleet on NATS `urls`, on a store with `models`.
fn node(urls: &str, name: &str, models: &[&str]) -> Server {
    node_on(urls, name, TestStore::with_models(models), None)
}

fn node_on(urls: &str, name: &str, store: TestStore, journal: Option<&std::path::Path>) -> Server {
    let mut builder = Server::builder(store).args(&["--nats", urls, "--node", name]);
    if let Some(journal) = journal {
        builder = builder.journal(journal);
    }
    builder.start()
}

/// `/api/history`'s events, without the fields that may differ per node's
/// clock of reading (none should), as comparable JSON.
fn history(node: &Server) -> Vec<Value> {
    node.all_events()
}

/// Waits until every node reports `seq`.
fn wait_all(nodes: &[&Server], seq: u64) {
    for node in nodes {
        node.wait_seq(seq);
    }
}

#[test]
fn a_create_on_one_node_reaches_every_node_with_the_same_seq() {
    let nats = NatsServer::start();
    let url = nats.url();
    let a = node(&url, "a", &["llama3"]);
    let b = node(&url, "b", &["llama3"]);
    let c = node(&url, "c", &["llama3"]);
    // Start-up reconciles may have written observations: let them settle.
    let settled = a.seq().max(b.seq()).max(c.seq());
    wait_all(&[&a, &b, &c], settled);
    let mut events_c = Sse::open(c.addr(), "/api/events", &[]);

    let created = a.put_alias("coder", "llama3");
    let body = created.expect(201).clone();
    let seq = a.seq();
    wait_all(&[&b, &c], seq);

    let msg = loop {
        let msg = events_c.next();
        if msg.json()["alias"] == "coder" {
            break msg;
        }
    };
    assert_eq!(msg.seq(), seq, "C's SSE carries A's seq: {msg:?}");
    for node in [&a, &b, &c] {
        let alias = node.get(&alias_path("coder"));
        assert_eq!(alias.expect(200)["target"], "llama3", "{alias:?}");
        assert_eq!(alias.json["digest"], body["digest"], "{alias:?}");
        wait_for("the alias file", WAIT, || {
            node.store.manifest_path("coder").is_file().then_some(())
        });
        assert_eq!(
            node.store.read("coder"),
            node.store.read("llama3"),
            "materialized as llama3's manifest"
        );
    }
    let (ha, hb, hc) = (history(&a), history(&b), history(&c));
    assert!(!ha.is_empty());
    assert_eq!(ha, hb, "A and B's history");
    assert_eq!(ha, hc, "A and C's history");
}

#[test]
fn three_nodes_by_sixteen_clients_agree_on_gap_free_seqs() {
    let nats = NatsServer::start();
    let url = nats.url();
    let models = ["llama3", "mistral", "qwen"];
    let nodes = [
        node(&url, "a", &models),
        node(&url, "b", &models),
        node(&url, "c", &models),
    ];
    let acknowledged = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for (n, node) in nodes.iter().enumerate() {
            for client in 0..16 {
                let acknowledged = &acknowledged;
                scope.spawn(move || {
                    for i in 0..6 {
                        // Overlapping names: every node's clients touch them.
                        let alias = format!("shared-{}", (client + i) % 8);
                        let target = models[(n + client + i) % models.len()];
                        let resp = node.put_alias(&alias, target);
                        assert!(
                            resp.status == 200 || resp.status == 201,
                            "{alias} -> {target} on {n}: {resp:?}"
                        );
                        let seq = resp.json["seq"].as_u64().unwrap_or(0);
                        acknowledged.lock().unwrap().push((seq, alias, target));
                    }
                });
            }
        }
    });
    let last = nodes.iter().map(Server::seq).max().unwrap();
    let refs: Vec<&Server> = nodes.iter().collect();
    wait_all(&refs, last);
    let histories: Vec<Vec<Value>> = nodes.iter().map(history).collect();
    let seqs: Vec<u64> = histories[0]
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=last).collect::<Vec<_>>(), "gap-free 1..N");
    assert_eq!(histories[0], histories[1], "A and B");
    assert_eq!(histories[0], histories[2], "A and C");
    let aliases: Vec<BTreeMap<String, Value>> = nodes
        .iter()
        .map(|n| {
            n.aliases_by_name()
                .into_iter()
                .map(|(k, v)| (k, json!([v["target"], v["seq"]])))
                .collect()
        })
        .collect();
    assert_eq!(aliases[0].len(), 8, "{:?}", aliases[0]);
    assert_eq!(aliases[0], aliases[1]);
    assert_eq!(aliases[0], aliases[2]);
    // Every acknowledged write is in the log: an event at or before the
    // seq it answered (an idempotent put writes none) puts its target.
    let in_log: BTreeSet<(String, String)> = histories[0]
        .iter()
        .filter(|e| e["type"] == "alias.created" || e["type"] == "alias.updated")
        .map(|e| {
            (
                e["alias"].as_str().unwrap().to_string(),
                e["target"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for (seq, alias, target) in acknowledged.into_inner().unwrap() {
        assert!(
            seq > 0 && seq <= last,
            "{alias} -> {target} answered seq {seq}"
        );
        assert!(
            in_log.contains(&(alias.clone(), format!("{target}:latest")))
                || in_log.contains(&(alias.clone(), target.to_string())),
            "acknowledged {alias} -> {target} is not in the log"
        );
    }
}

#[test]
fn if_none_match_from_two_nodes_at_once_creates_once() {
    let nats = NatsServer::start();
    let url = nats.url();
    let a = node(&url, "a", &["llama3"]);
    let b = node(&url, "b", &["llama3"]);
    for round in 0..20 {
        let alias = format!("race-{round}");
        let statuses: Vec<u16> = std::thread::scope(|scope| {
            let handles: Vec<_> = [&a, &b]
                .into_iter()
                .map(|node| {
                    let alias = alias.clone();
                    scope.spawn(move || {
                        node.send_json_with(
                            "PUT",
                            &alias_path(&alias),
                            &[("If-None-Match", "*")],
                            &json!({ "target": "llama3" }),
                        )
                        .status
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut sorted = statuses.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, [201, 412], "round {round}: {statuses:?}");
    }
}

#[test]
fn with_nats_down_reads_go_on_writes_answer_503_and_observations_wait() {
    let mut nats = NatsServer::start();
    let url = nats.url();
    let a = node(&url, "a", &["llama3", "mistral"]);
    let b = node(&url, "b", &["llama3", "mistral"]);
    a.put_alias("coder", "llama3").expect(201);
    a.put_alias("chat", "mistral").expect(201);
    let before = a.seq();
    wait_all(&[&b], before);
    let acknowledged = a.all_events();

    nats.stop();
    wait_for("healthz degraded", WAIT, || {
        let health = a.get("/healthz");
        (health.json["status"] == "degraded").then_some(health)
    });
    let health = a.get("/healthz");
    assert_eq!(health.status, 200, "{health:?}");
    assert!(
        health.json["reason"].as_str().unwrap_or("").contains(&url),
        "{health:?}"
    );
    let refused = a.put_alias("new", "llama3");
    let message = refused.expect_error(503, &url);
    assert!(message.contains("retry"), "{message}");
    // Reads and resolve go on from the replica.
    assert_eq!(a.get(&alias_path("coder")).expect(200)["target"], "llama3");
    let resolved = b.get("/api/resolve/coder");
    assert_eq!(resolved.expect(200)["resolved"], "llama3", "{resolved:?}");
    // A model removed meanwhile on A: journaled once NATS is back.
    a.store.remove_model("mistral");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(a.seq(), before, "nothing appended while NATS is down");

    nats.start_again();
    let removed = wait_for("the removal journaled", Duration::from_secs(30), || {
        let events = b.all_events();
        events
            .iter()
            .find(|e| e["type"] == "target.removed" && e["alias"] == "chat")
            .cloned()
    });
    let seq = removed["seq"].as_u64().unwrap();
    assert!(seq > before, "{removed}");
    wait_all(&[&a], seq);
    assert_eq!(a.get("/healthz").json["status"], "ok");
    // Nothing acknowledged was lost, and writes work again.
    let after = a.all_events();
    assert_eq!(&after[..acknowledged.len()], &acknowledged[..]);
    a.put_alias("new", "llama3").expect(201);
    let log = a.stderr();
    let said = |what: &str| log.lines().filter(|l| l.contains(what)).count();
    assert_eq!(
        said("writes answer 503 and watcher observations wait"),
        1,
        "the loss is logged once: {log}"
    );
    assert_eq!(said(&format!("NATS at {url} is back")), 1, "{log}");
}

#[test]
fn a_restarted_node_catches_up_and_a_new_node_replays_the_fleet() {
    let nats = NatsServer::start();
    let url = nats.url();
    let a = node(&url, "a", &["llama3"]);
    let mut b = node(&url, "b", &["llama3"]);
    a.put_alias("one", "llama3").expect(201);
    wait_all(&[&b], a.seq());
    b.stop();
    a.put_alias("two", "llama3").expect(201);
    a.put_alias("three", "llama3").expect(201);
    b.start_again();
    let last = a.seq();
    // Caught up before it answered: the start-up reads the stream first.
    assert!(b.seq() >= last, "b at {} of {last}", b.seq());
    assert_eq!(history(&b), history(&a));
    wait_for("b's alias files", WAIT, || {
        b.store.manifest_path("three").is_file().then_some(())
    });

    let c = node(&url, "c", &["llama3"]);
    assert!(c.seq() >= last);
    let (ha, hc) = (history(&a), history(&c));
    assert_eq!(ha, hc[..ha.len()]);
    assert_eq!(c.aliases_by_name().len(), 3);
}

#[test]
fn a_nats_cluster_losing_a_server_mid_load_loses_no_acknowledged_write() {
    let mut servers = NatsServer::start_cluster();
    let urls = servers
        .iter()
        .map(NatsServer::url)
        .collect::<Vec<_>>()
        .join(",");
    let nodes: Vec<Server> = ["a", "b", "c"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            // Each node prefers a different server, then the others.
            let mut order: Vec<String> = servers.iter().map(NatsServer::url).collect();
            order.rotate_left(i);
            Server::builder(TestStore::with_models(&["llama3"]))
                .args(&[
                    "--nats",
                    &order.join(","),
                    "--node",
                    name,
                    "--nats-replicas",
                    "3",
                ])
                .start()
        })
        .collect();
    let _ = urls;
    let acknowledged = std::sync::Mutex::new(Vec::new());
    let deadline = Instant::now() + Duration::from_secs(6);
    std::thread::scope(|scope| {
        for (n, node) in nodes.iter().enumerate() {
            for client in 0..4 {
                let acknowledged = &acknowledged;
                scope.spawn(move || {
                    let mut i = 0;
                    while Instant::now() < deadline {
                        let alias = format!("load-{n}-{client}-{i}");
                        let resp = node.put_alias(&alias, "llama3");
                        if resp.status == 201 {
                            acknowledged.lock().unwrap().push(alias);
                        } else {
                            assert_eq!(resp.status, 503, "{resp:?}");
                        }
                        i += 1;
                    }
                });
            }
        }
        std::thread::sleep(Duration::from_secs(2));
        servers[0].stop();
    });
    let last = nodes.iter().map(Server::seq).max().unwrap();
    let refs: Vec<&Server> = nodes.iter().collect();
    wait_all(&refs, last);
    let acknowledged = acknowledged.into_inner().unwrap();
    assert!(acknowledged.len() > 10, "{} writes", acknowledged.len());
    let first = history(&nodes[0]);
    for node in &nodes[1..] {
        assert_eq!(history(node), first);
    }
    for node in &nodes {
        let aliases = node.aliases_by_name();
        for alias in &acknowledged {
            assert!(aliases.contains_key(alias), "{alias} lost");
        }
    }
}
