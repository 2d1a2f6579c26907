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

/// Asserts two nodes' histories are the same, naming the first difference
/// (not printing thousands of events).
#[track_caller]
fn assert_same_history(a: &Server, b: &Server) {
    let (ha, hb) = (history(a), history(b));
    if let Some(i) = (0..ha.len().min(hb.len())).find(|&i| ha[i] != hb[i]) {
        panic!("histories differ at event {i}: {} vs {}", ha[i], hb[i]);
    }
    assert_eq!(ha.len(), hb.len(), "histories of different lengths");
}

/// Waits until every node reports `seq`.
fn wait_all(nodes: &[&Server], seq: u64) {
    for node in nodes {
        node.wait_seq(seq);
    }
}

/// Waits until every node has what any of them has now (what one appends,
/// its start-up reconcile's events say, reaches the others a moment later).
fn settle(nodes: &[&Server]) {
    let seq = nodes.iter().map(|n| n.seq()).max().unwrap_or(0);
    wait_all(nodes, seq);
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
    assert!(!history(&a).is_empty());
    assert_same_history(&a, &b);
    assert_same_history(&a, &c);
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
                        // A 503 (NATS slower than its timeout on a loaded
                        // machine) is retried, as a client would.
                        let mut resp = node.put_alias(&alias, target);
                        for _ in 0..5 {
                            if resp.status != 503 {
                                break;
                            }
                            resp = node.put_alias(&alias, target);
                        }
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
    // The refused write is not logged above debug, once per request.
    let loud = |l: &&str| l.contains(" WARN ") || l.contains(" ERROR ");
    assert_eq!(
        log.lines()
            .filter(loud)
            .filter(|l| l.contains("events not applied"))
            .count(),
        0,
        "{log}"
    );
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
    // Its start-up then repaired the files of `two` and `three`: events a
    // hears of a moment later.
    settle(&[&a, &b]);
    assert_same_history(&a, &b);
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
    let acknowledged = std::sync::Mutex::new(Vec::new());
    let deadline = Instant::now() + Duration::from_secs(5);
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
    // Two of three servers keep the stream (3 replicas) writable: every
    // node, the one that was on the stopped server included, writes again.
    let mut acknowledged = acknowledged.into_inner().unwrap();
    for (n, node) in nodes.iter().enumerate() {
        let alias = format!("after-{n}");
        wait_for("a write after the server loss", WAIT, || {
            // 200: an earlier try that answered 503 was stored after all.
            let status = node.put_alias(&alias, "llama3").status;
            (status == 201 || status == 200).then_some(())
        });
        acknowledged.push(alias);
    }
    let last = nodes.iter().map(Server::seq).max().unwrap();
    let refs: Vec<&Server> = nodes.iter().collect();
    wait_all(&refs, last);
    assert!(acknowledged.len() > 10, "{} writes", acknowledged.len());
    for node in &nodes[1..] {
        assert_same_history(&nodes[0], node);
    }
    for node in &nodes {
        let aliases = node.aliases_by_name();
        for alias in &acknowledged {
            assert!(aliases.contains_key(alias), "{alias} lost");
        }
    }
}

#[test]
fn a_node_started_while_nats_is_down_serves_its_replica_and_catches_up_later() {
    let mut nats = NatsServer::start();
    let url = nats.url();
    let a = node(&url, "a", &["llama3"]);
    let mut b = node(&url, "b", &["llama3"]);
    a.put_alias("coder", "llama3").expect(201);
    wait_all(&[&b], a.seq());
    b.stop();
    nats.stop();

    b.start_again();
    assert_eq!(b.get(&alias_path("coder")).expect(200)["target"], "llama3");
    assert_eq!(b.get("/healthz").json["status"], "degraded");
    b.put_alias("chat", "llama3").expect_error(503, &url);

    nats.start_again();
    let created = wait_for("a write through A once NATS is back", WAIT, || {
        // 200: an earlier try that answered 503 (NATS slower than its
        // timeout while it came back) was stored after all.
        let resp = a.put_alias("chat", "llama3");
        (resp.status == 201 || resp.status == 200).then_some(resp)
    });
    let seq = created.json["seq"].as_u64().unwrap();
    b.wait_seq(seq);
    assert_same_history(&a, &b);
    assert_eq!(b.get("/healthz").json["status"], "ok");
}

/// Not a test: the figures for `benches/README.md` ("Fleet log"), run by
/// hand on a quiet machine:
/// `cargo test --test it fleet_log::measure -- --ignored --nocapture`.
/// Create latency (sequential, one client) through a fleet node on a local
/// NATS against a single-host server on the same machine, then creates/s at
/// 16 clients on each.
#[test]
#[ignore = "a measurement, run by hand"]
fn measure_fleet_create_latency_and_throughput() {
    let nats = NatsServer::start();
    let single = Server::with_models(&["llama3"]);
    let fleet = node(&nats.url(), "a", &["llama3"]);
    for (what, server) in [("single-host", &single), ("fleet node", &fleet)] {
        let mut latencies = Vec::new();
        for i in 0..500 {
            let started = Instant::now();
            server.put_alias(&format!("lat-{i}"), "llama3").expect(201);
            latencies.push(started.elapsed());
        }
        latencies.sort_unstable();
        let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
        println!(
            "{what}: create latency p50 {:?} p90 {:?} p99 {:?} (500 sequential creates)",
            at(0.5),
            at(0.9),
            at(0.99)
        );
        let done = std::sync::atomic::AtomicUsize::new(0);
        let run = Duration::from_secs(5);
        let started = Instant::now();
        std::thread::scope(|scope| {
            for client in 0..16 {
                let done = &done;
                scope.spawn(move || {
                    let mut i = 0;
                    while started.elapsed() < run {
                        server
                            .put_alias(&format!("tp-{client}-{i}"), "llama3")
                            .expect(201);
                        done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        i += 1;
                    }
                });
            }
        });
        let n = done.into_inner();
        println!(
            "{what}: {n} creates in {:.1} s at 16 clients: {:.0} creates/s",
            started.elapsed().as_secs_f64(),
            n as f64 / started.elapsed().as_secs_f64()
        );
    }
    // A new node replays the fleet log (no snapshot in the bucket yet).
    let seq = fleet.seq();
    let started = Instant::now();
    let fresh = node(&nats.url(), "fresh", &["llama3"]);
    fresh.wait_seq(seq);
    println!(
        "a new node caught up with {seq} events in {:.2} s (start-up included)",
        started.elapsed().as_secs_f64()
    );
}

/// The fleet's stream, as NATS reports it: (first, last) message seqs.
fn stream_bounds(url: &str) -> (u64, u64) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = async_nats::connect(url).await.expect("connect to NATS");
        let jetstream = async_nats::jetstream::new(client);
        let stream = jetstream
            .get_stream("aliasd_LOG")
            .await
            .expect("the stream");
        let info = stream.get_info().await.expect("stream info");
        (info.state.first_sequence, info.state.last_sequence)
    })
}

#[test]
fn a_new_node_starts_from_the_snapshot_in_the_bucket_and_retain_purges_the_stream() {
    let nats = NatsServer::start();
    let url = nats.url();
    let a = Server::builder(TestStore::with_models(&["llama3"]))
        .args(&[
            "--nats",
            &url,
            "--node",
            "a",
            "--snapshot-every",
            "10",
            "--retain",
            "5",
        ])
        .start();
    for i in 0..40 {
        a.put_alias(&format!("snap-{i:02}"), "llama3").expect(201);
    }
    let last = a.seq();
    let (first, _) = wait_for("the stream purged below a snapshot", WAIT, || {
        let bounds = stream_bounds(&url);
        (bounds.0 > 1).then_some(bounds)
    });
    assert!(first > 1, "{}", a.stderr());

    // A new node: no journal. It starts from the bucket's snapshot (the
    // events before it are not in its history) and reads the stream after.
    let c = node(&url, "c", &["llama3"]);
    assert!(c.seq() >= last, "c at {} of {last}", c.seq());
    assert_eq!(c.aliases_by_name().len(), 40);
    let (page, _) = c.history("since=0&limit=10000");
    let oldest = page[0]["seq"].as_u64().unwrap();
    assert!(oldest > 1, "c replayed from seq 1: {}", c.stderr());
    assert!(c.stderr().contains("started from the fleet's snapshot"));
    // Both go on together.
    c.put_alias("after", "llama3").expect(201);
    a.wait_seq(c.seq());
    assert_eq!(a.get(&alias_path("after")).expect(200)["target"], "llama3");
}

#[test]
fn a_reconcile_larger_than_one_nats_message_is_appended_in_parts() {
    let nats = NatsServer::start();
    let url = nats.url();
    let mut a = node(&url, "a", &["llama3"]);
    // 6,000 exact aliases: the reconcile of the store once their model is
    // gone writes one event each, over NATS's 1 MiB message limit together.
    for part in 0..6 {
        let ops: Vec<Value> = (part * 1000..(part + 1) * 1000)
            .map(|i| json!({ "op": "put", "alias": format!("big-{i:04}"), "target": "llama3" }))
            .collect();
        let resp = a.send_json("POST", "/api/aliases", &json!({ "ops": ops }));
        resp.expect(200);
    }
    // A new node with the model and none of the alias files: its start-up
    // reconcile repairs every one (a repair leaves the index as it was).
    let c = node(&url, "c", &["llama3"]);
    c.wait_seq(a.seq());
    wait_for("c's alias files", WAIT, || {
        c.store.manifest_path("big-5999").is_file().then_some(())
    });
    assert!(
        c.store.manifest_path("big-0000").is_file(),
        "every part materialized"
    );
    let repaired = c
        .all_events()
        .iter()
        .filter(|e| e["type"] == "alias.repaired")
        .count();
    assert_eq!(repaired, 6000, "each alias repaired once");
    drop(c);

    let before = a.seq();
    a.stop();
    a.store.remove_model("llama3");
    a.start_again();
    let removed = wait_for("the start-up reconcile in the log", WAIT, || {
        let events = a.all_events();
        let removed = events
            .iter()
            .filter(|e| e["seq"].as_u64() > Some(before) && e["type"] == "target.removed")
            .count();
        (removed >= 6000).then_some(removed)
    });
    assert_eq!(removed, 6000);
    assert_eq!(a.get("/healthz").json["status"], "ok", "{}", a.stderr());
    // A new node: from the snapshot in the bucket (over 10,000 events now),
    // then the same events as A's after it.
    let b = node(&url, "b", &[]);
    b.wait_seq(a.seq());
    let (ha, hb) = (history(&a), history(&b));
    assert!(!hb.is_empty() && hb.len() <= ha.len());
    assert!(
        ha[ha.len() - hb.len()..] == hb[..],
        "b's history is a's tail"
    );
}

#[test]
fn a_single_host_journal_starts_an_empty_fleet_log() {
    let journal = crate::support::tempdir("aliasd-it-journal");
    let store = TestStore::with_models(&["llama3"]);
    let mut single = Server::builder(store.clone())
        .journal(journal.path())
        .start();
    for i in 0..5 {
        single.put_alias(&format!("old-{i}"), "llama3").expect(201);
    }
    let before = single.all_events();
    single.stop();
    drop(single);

    let nats = NatsServer::start();
    let url = nats.url();
    let a = node_on(&url, "a", store, Some(journal.path()));
    assert_eq!(a.all_events(), before, "its history is kept");
    let b = node(&url, "b", &["llama3"]);
    // b's start-up repairs its alias files: events a hears of a moment later.
    settle(&[&a, &b]);
    assert_same_history(&a, &b);
    assert_eq!(b.aliases_by_name().len(), 5);
    a.put_alias("new", "llama3").expect(201);
    settle(&[&a, &b]);
    assert_same_history(&a, &b);
}

#[test]
fn nats_without_jetstream_is_degraded_and_writes_answer_503() {
    // A NATS server that answers but has no JetStream: connected, yet the
    // fleet log cannot be used.
    let dir = crate::support::tempdir("nats-nojs");
    let port = crate::support::nats::free_port();
    let mut server = std::process::Command::new(crate::support::nats::nats_server_bin())
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .arg("-l")
        .arg(dir.path().join("nats.log"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starting nats-server");
    wait_for("nats-server listening", WAIT, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    let url = format!("nats://127.0.0.1:{port}");
    let a = node(&url, "a", &["llama3"]);
    let refused = a.put_alias("coder", "llama3");
    refused.expect_error(503, &url);
    let health = wait_for("healthz degraded", WAIT, || {
        let health = a.get("/healthz");
        (health.json["status"] == "degraded").then_some(health)
    });
    assert_eq!(health.status, 200, "{health:?}");
    assert!(
        health.json["reason"].as_str().unwrap_or("").contains(&url),
        "{health:?}"
    );
    assert_eq!(a.get("/api/aliases").status, 200);
    let _ = server.kill();
    let _ = server.wait();
}
