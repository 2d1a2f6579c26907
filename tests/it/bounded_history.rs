//! SPEC §5: time travel and history do not load the whole journal per
//! request. `?at_seq=N` starts from the newest snapshot at or below N (the
//! journal keeps the newest four), so it answers even after `--retain`
//! dropped the events before that snapshot; `history?alias=` (or `?type=`)
//! reads only those records, by an index of seqs, after a restart too.

use serde_json::Value;

use crate::support::{files_with_ext, wait_for, Server, TestStore, WAIT};

/// The history of one alias among 20,000 events of others: every one of its
/// events, in order, paged by `next`; with a type filter too; and the same
/// after a restart, when a snapshot covers most of the journal.
#[test]
fn history_of_one_alias_among_twenty_thousand_events() {
    let mut server = Server::start_with_args(
        TestStore::with_models(&["m", "n"]),
        &["--snapshot-every", "5000"],
    );
    let mut needle = Vec::new();
    for round in 0..40 {
        server.batch_prefix_puts(&format!("r{round}-"), 0..500, "m");
        if round % 2 == 0 {
            let target = if round % 4 == 0 { "m" } else { "n" };
            let body = server
                .put_alias("needle", target)
                .expect(if round == 0 { 201 } else { 200 })
                .clone();
            needle.push(body["seq"].as_u64().unwrap());
        }
    }
    assert!(server.seq() >= 20_000);
    let check = |server: &Server, needle: &[u64]| {
        let mut seqs = Vec::new();
        let mut since = 0;
        loop {
            let (events, next) = server.history(&format!("alias=needle&limit=7&since={since}"));
            for event in &events {
                assert_eq!(event["alias"], "needle", "{event}");
            }
            seqs.extend(events.iter().map(|e| e["seq"].as_u64().unwrap()));
            match next {
                Some(next) => since = next,
                None => break,
            }
        }
        assert_eq!(seqs, needle);
        let (updated, next) = server.history("alias=NEEDLE&type=alias.updated&limit=100");
        let updated: Vec<u64> = updated.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert_eq!(updated, needle[1..], "{next:?}");
        // Only needle is ever re-pointed: the type alone finds the same.
        let (updated, _) = server.history("type=alias.updated&limit=100");
        let updated: Vec<u64> = updated.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert_eq!(updated, needle[1..]);
        let (until, _) = server.history(&format!("alias=needle&until={}", needle[3]));
        assert_eq!(until.len(), 4);
        let (none, next) = server.history("alias=no-such-alias");
        assert!(none.is_empty() && next.is_none());
    };
    check(&server, &needle);
    server.restart();
    assert!(!files_with_ext(server.journal_dir(), "snap").is_empty());
    // The seqs of the events the snapshot covers are gathered after start-up.
    wait_for("the history index", WAIT, || {
        server
            .stderr()
            .contains("history index built")
            .then_some(())
    });
    check(&server, &needle);
    // Events after the restart join those the snapshot covered.
    for round in 0..3 {
        server.batch_prefix_puts(&format!("s{round}-"), 0..100, "m");
        // The last target before the restart was n.
        let target = if round % 2 == 0 { "m" } else { "n" };
        let body = server.put_alias("needle", target).expect(200).clone();
        needle.push(body["seq"].as_u64().unwrap());
    }
    check(&server, &needle);
    let (across, next) = server.history(&format!("alias=needle&since={}&limit=3", needle[18]));
    let across: Vec<u64> = across.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        (across.as_slice(), next),
        (&needle[19..22], Some(needle[21]))
    );
}

/// Time travel after `--retain` dropped the oldest events: the state at a
/// kept snapshot's seq, and at seqs after the newest snapshot, is rebuilt from
/// the snapshot and equals what the registry listed at that seq; the dropped
/// past is still 410. The journal keeps the newest four snapshots.
#[test]
fn time_travel_starts_from_the_newest_snapshot_at_or_below() {
    let server = Server::start_with_args(
        TestStore::with_models(&["m", "n"]),
        &[
            "--retain",
            "50",
            "--snapshot-every",
            "100",
            "--segment-bytes",
            "4096",
        ],
    );
    let mut listed = std::collections::BTreeMap::new();
    // The same 50 aliases re-pointed each round (a snapshot follows every
    // 100 events while there are fewer aliases than that), one deleted now
    // and then.
    for round in 0..20 {
        let target = if round % 2 == 0 { "m" } else { "n" };
        server.batch_prefix_puts("a-", 0..50, target);
        if round % 3 == 0 {
            server.delete("/api/aliases/a-00001-").expect(200);
        }
        let seq = server.seq();
        let list: Value = server.get("/api/aliases").expect(200)["aliases"].clone();
        listed.insert(seq, list);
    }
    // A snapshot is written after the commit's reply: one more request
    // through the writer (a put that changes nothing) waits for it.
    server.batch_prefix_puts("a-", 0..1, "n");
    let snapshots: Vec<u64> = files_with_ext(server.journal_dir(), "snap")
        .iter()
        .map(|path| {
            let name = path.file_stem().unwrap().to_str().unwrap();
            name.parse().unwrap()
        })
        .collect();
    assert_eq!(snapshots.len(), 4, "{snapshots:?} at seq {}", server.seq());
    let (events, _) = server.history("since=0&limit=1");
    let first = events[0]["seq"].as_u64().unwrap();
    assert!(
        first > snapshots[0] + 1,
        "retention dropped events: first {first}"
    );
    let latest = server.seq();
    let mut checked = Vec::new();
    for (seq, list) in &listed {
        let answerable = snapshots.contains(seq) || (*seq >= snapshots[3] && *seq < latest);
        if !answerable {
            continue;
        }
        let resp = server.get(&format!("/api/aliases?at_seq={seq}"));
        assert_eq!(&resp.expect(200)["aliases"], list, "at_seq {seq}");
        checked.push(*seq);
    }
    // An older snapshot's seq and seqs after the newest one.
    assert!(checked.len() >= 3, "{checked:?} of {snapshots:?}");
    assert!(checked[0] < snapshots[3], "{checked:?} of {snapshots:?}");
    server
        .get("/api/aliases?at_seq=10")
        .expect_error(410, "no longer retained");
}
