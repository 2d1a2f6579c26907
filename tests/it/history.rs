//! The audit trail (issue 5): `/api/history` (filters, pages), `?at_seq=`
//! time travel checked against a replay of the history, and `--retain`, which
//! drops old segments: a stale cursor gets `reset`, time travel before them 410.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::sse::Sse;
use crate::support::{alias_path, seqs_of, Server, TestStore, WAIT};

/// 24 events: creates, updates and deletes over a, b, c.
fn history_fixture() -> Server {
    let server = Server::with_models(&["llama3", "qwen"]);
    for round in 0..4 {
        for alias in ["a", "b", "c"] {
            let target = if round % 2 == 0 { "llama3" } else { "qwen" };
            server.create(alias, target);
        }
        if round % 2 == 1 {
            for alias in ["b", "c"] {
                server.delete(&alias_path(alias)).expect(200);
            }
        }
    }
    // a: created + 3 updates; b, c: created, updated, deleted, twice.
    assert_eq!(server.seq(), 16);
    server
}

#[test]
fn history_filters() {
    let server = history_fixture();
    let all = server.all_events();
    assert_eq!(seqs_of(&all), (1..=16).collect::<Vec<u64>>());
    // Default page: everything here (fewer than 100), next null.
    let (events, next) = server.history("");
    assert_eq!(events, all);
    assert_eq!(next, None);

    let (events, next) = server.history("alias=a");
    let expected: Vec<Value> = all.iter().filter(|e| e["alias"] == "a").cloned().collect();
    assert_eq!(events, expected);
    assert_eq!(events.len(), 4);
    assert_eq!(next, None);
    let (same, _) = server.history("alias=registry.ollama.ai/library/A:latest");
    assert_eq!(same, expected);

    for kind in ["alias.created", "alias.updated", "alias.deleted"] {
        let (events, _) = server.history(&format!("type={kind}"));
        let expected: Vec<Value> = all.iter().filter(|e| e["type"] == kind).cloned().collect();
        assert!(!expected.is_empty());
        assert_eq!(events, expected, "{kind}");
    }
    let (events, _) = server.history("type=alias.deleted&alias=b");
    assert_eq!(events.len(), 2);
    assert!(events
        .iter()
        .all(|e| e["alias"] == "b" && e["type"] == "alias.deleted"));

    let (events, next) = server.history("since=5&until=10");
    assert_eq!(seqs_of(&events), [6, 7, 8, 9, 10]);
    assert_eq!(next, None);
    let (events, _) = server.history("since=16");
    assert!(events.is_empty());
    let (events, _) = server.history("until=0");
    assert!(events.is_empty());
    let (events, next) = server.history("since=2&limit=3");
    assert_eq!(seqs_of(&events), [3, 4, 5]);
    assert_eq!(next, Some(5));
    let (events, next) = server.history("limit=10000");
    assert_eq!(events.len(), 16);
    assert_eq!(next, None);

    for bad in ["limit=0", "limit=10001", "limit=100000"] {
        server
            .get(&format!("/api/history?{bad}"))
            .expect_error(400, "limit");
    }
    server
        .get("/api/history?type=alias.renamed")
        .expect_error(400, "alias.renamed");
}

#[test]
fn history_pages_walk_the_whole_list() {
    let server = history_fixture();
    let all = server.all_events();
    // Page sizes that divide 16 and that do not; one filtered walk.
    for (query, expected) in [
        ("limit=4", all.clone()),
        ("limit=5", all.clone()),
        ("limit=1", all.clone()),
        ("limit=16", all.clone()),
        (
            "limit=2&alias=a",
            all.iter().filter(|e| e["alias"] == "a").cloned().collect(),
        ),
        (
            "limit=3&type=alias.deleted",
            all.iter()
                .filter(|e| e["type"] == "alias.deleted")
                .cloned()
                .collect(),
        ),
    ] {
        let mut walked = Vec::new();
        let mut since = 0;
        let mut pages = 0;
        loop {
            pages += 1;
            assert!(pages <= 20, "{query}: no end");
            let (events, next) = server.history(&format!("{query}&since={since}"));
            walked.extend(events.iter().cloned());
            match next {
                Some(next) => {
                    assert_eq!(next, events.last().unwrap()["seq"].as_u64().unwrap());
                    since = next;
                }
                None => break,
            }
        }
        assert_eq!(walked, expected, "{query}");
    }
}

// ---------------------------------------------------------------------------
// Time travel.
// ---------------------------------------------------------------------------

/// `?at_seq=N` as alias -> (target, state).
#[track_caller]
fn registry_at(server: &Server, seq: u64) -> BTreeMap<String, (String, String)> {
    let resp = server.get(&format!("/api/aliases?at_seq={seq}"));
    resp.expect(200)["aliases"]
        .as_array()
        .unwrap_or_else(|| panic!("{resp:?}"))
        .iter()
        .map(|a| {
            assert!(a["seq"].as_u64().unwrap() <= seq, "{a} after {seq}");
            (
                a["alias"].as_str().unwrap().to_string(),
                (
                    a["target"].as_str().unwrap().to_string(),
                    a["state"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect()
}

#[test]
fn time_travel_matches_a_replay_of_the_history() {
    let server = Server::with_models(&["llama3", "qwen", "mistral"]);
    server.create("a", "llama3"); // 1
    server.create("b", "a"); // 2 (chain)
    server.create("a", "qwen"); // 3, and b's target.changed
    server.create("c", "mistral"); // 4 (+ target.changed of b)
    server.delete(&alias_path("b")).expect(200);
    let resp = server.send_json(
        "POST",
        "/api/aliases",
        &json!({ "ops": [
            { "op": "put", "alias": "b", "target": "c" },
            { "op": "delete", "alias": "a" },
            { "op": "put", "alias": "team/d:v1", "target": "b" },
        ] }),
    );
    resp.expect(200);
    server.create("c", "llama3"); // 9
                                  // llama3 leaves with c, b and team/d:v1 on it: each one dangles.
    server.store.remove_model("llama3");
    let deadline = Instant::now() + WAIT;
    let all = loop {
        let all = server.all_events();
        let removed = all.iter().filter(|e| e["type"] == "target.removed").count();
        if removed == 3 {
            break all;
        }
        assert!(
            Instant::now() < deadline,
            "no target.removed events: {all:#?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let last = all.len() as u64;

    // Replay by hand: alias -> (target, state).
    let mut state: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut replayed = vec![state.clone()];
    for event in &all {
        let alias = event["alias"].as_str().unwrap().to_string();
        let new_state = match event["type"].as_str().unwrap() {
            "alias.created" | "alias.updated" => {
                let target = event["target"].as_str().unwrap().to_string();
                state.insert(alias.clone(), (target, "active".to_string()));
                None
            }
            "alias.deleted" => {
                state.remove(&alias);
                None
            }
            "target.removed" => Some("dangling"),
            "alias.shadowed" => Some("shadowed"),
            "target.changed" | "target.restored" | "alias.repaired" => Some("active"),
            other => panic!("unexpected {other}: {event}"),
        };
        if let Some(new_state) = new_state {
            let entry = state.get_mut(&alias).unwrap_or_else(|| panic!("{event}"));
            assert_eq!(event["target"].as_str(), Some(entry.0.as_str()), "{event}");
            entry.1 = new_state.to_string();
        }
        replayed.push(state.clone());
    }
    for (seq, expected) in replayed.iter().enumerate() {
        assert_eq!(&registry_at(&server, seq as u64), expected, "at_seq={seq}");
    }
    // Spot checks of what the replay says, so that a wrong replay cannot pass.
    let seq_of = |kind: &str, alias: &str| -> u64 {
        all.iter()
            .find(|e| e["type"] == kind && e["alias"] == alias)
            .and_then(|e| e["seq"].as_u64())
            .unwrap_or_else(|| panic!("no {kind} of {alias}"))
    };
    assert_eq!(
        registry_at(&server, seq_of("alias.created", "b"))["b"].0,
        "a"
    );
    assert_eq!(
        registry_at(&server, seq_of("alias.updated", "a"))["a"].0,
        "qwen"
    );
    assert!(!registry_at(&server, seq_of("alias.deleted", "b")).contains_key("b"));
    let batch_end = seq_of("alias.created", "team/d:v1");
    assert_eq!(
        seq_of("alias.deleted", "a"),
        batch_end - 1,
        "one batch, in op order"
    );
    let after_batch = registry_at(&server, batch_end);
    assert!(!after_batch.contains_key("a"));
    assert_eq!(after_batch["b"].0, "c");
    assert_eq!(after_batch["team/d:v1"].0, "b");
    assert_eq!(after_batch["c"].0, "mistral");
    assert_eq!(registry_at(&server, last)["c"].1, "dangling");
    assert_eq!(
        registry_at(&server, last - 3)["c"],
        ("llama3".to_string(), "active".to_string())
    );
    // Past the end: the registry as it is now.
    let now: BTreeMap<String, (String, String)> = server
        .aliases()
        .iter()
        .map(|a| {
            (
                a["alias"].as_str().unwrap().to_string(),
                (
                    a["target"].as_str().unwrap().to_string(),
                    a["state"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect();
    assert_eq!(registry_at(&server, last), now);
    assert_eq!(replayed.last(), Some(&now));
    // Beyond the latest event is not "the present": a 400 naming the latest (issue 22).
    server
        .get("/api/aliases?at_seq=1000")
        .expect_error(400, &format!("seq {last}"));
    // Time travel composes with the filters.
    let resp = server.get(&format!("/api/aliases?at_seq={batch_end}&target=c"));
    let listed: Vec<&str> = resp.expect(200)["aliases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["alias"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["b"]);
    server
        .get("/api/aliases?at_seq=x")
        .expect_error(400, "at_seq");
}

/// With `--retain`, old segments go once a snapshot covers them: a
/// subscriber whose cursor is older gets `reset` first, then everything still
/// retained; time travel into the dropped past is 410.
#[test]
fn retention_resets_old_cursors_and_refuses_lost_time_travel() {
    let store = TestStore::with_models(&["m"]);
    let server = Server::start_with_args(
        store,
        &[
            "--retain",
            "50",
            "--snapshot-every",
            "100",
            "--segment-bytes",
            "4096",
        ],
    );
    // 600 events in batches of 50 puts, each event ~250 bytes: many segments.
    for round in 0..12 {
        server.batch_prefix_puts(&format!("r{round}-"), 0..50, "m");
    }
    server.wait_seq(600);
    // The first retained seq is past 1: old segments went, and at least the
    // last 50 events stay.
    let (events, _) = server.history("since=0&limit=1");
    let first = events[0]["seq"].as_u64().unwrap();
    assert!(first > 1, "nothing was dropped: first retained seq {first}");
    assert!(first <= 551, "fewer than 50 events retained: first {first}");

    let mut sse = Sse::open(server.addr(), "/api/events?since=0", &[]);
    let reset = sse.next();
    assert_eq!(reset.event.as_deref(), Some("reset"), "{reset:?}");
    assert_eq!(reset.json()["earliest"].as_u64(), Some(first));
    let next = sse.next();
    assert_eq!(next.seq(), first);

    server
        .get("/api/aliases?at_seq=10")
        .expect_error(410, "no longer retained");
    let now = server.get(&format!("/api/aliases?at_seq={}", server.seq()));
    assert_eq!(now.expect(200)["aliases"].as_array().unwrap().len(), 600);
}
