//! The journal changed under a running server (issue 17): its directory
//! removed, its active segment cut. The server must stop acknowledging writes
//! (503, a loud log line, `/healthz` degraded) while reads go on; and
//! `aliasd journal repair` must keep a valid snapshot of a damaged journal, so
//! that the server starts again with the snapshot's aliases.
//!
//! Everything runs against the real binary.

use serde_json::Value;

use crate::support::{
    alias_path, files_with_ext, journal_cmd, journal_repair_dry_run, Refused, Server,
};

/// The loud line the server logs, once, when it finds the journal changed.
const LOUD_LINE: &str = "THE JOURNAL WAS REMOVED OR DAMAGED UNDER THE RUNNING SERVER";

/// The aliases the server lists, by name.
fn alias_names(server: &Server) -> Vec<String> {
    server
        .aliases()
        .iter()
        .map(|a| a["alias"].as_str().expect("alias name").to_string())
        .collect()
}

/// Asserts that the server refuses writes, as a server whose journal was
/// changed under it must, and that reads still answer from memory.
#[track_caller]
fn check_writes_refused_reads_served(server: &Server, aliases: &[String], seq: u64) {
    let message = server
        .put_alias("after", "llama3")
        .expect_error(503, "removed or damaged under the running server");
    assert!(message.contains("restart aliasd"), "{message}");
    // Later writes fail at once, deletes and batches too.
    server
        .put_alias("after2", "llama3")
        .expect_error(503, "restart aliasd");
    server
        .delete(&alias_path(&aliases[0]))
        .expect_error(503, "restart aliasd");
    let batch = serde_json::json!({"ops": [{"op": "put", "alias": "b", "target": "llama3"}]});
    server
        .send_json("POST", "/api/aliases", &batch)
        .expect_error(503, "restart aliasd");
    // Concurrent writes, committed in groups: each one is told the same.
    let addr = server.addr();
    let writers: Vec<_> = (0..8)
        .map(|idx| {
            std::thread::spawn(move || {
                let body = serde_json::json!({ "target": "llama3" }).to_string();
                crate::support::http(
                    addr,
                    "PUT",
                    &alias_path(&format!("c{idx}")),
                    &[("Content-Type", "application/json")],
                    Some(body.as_bytes()),
                )
            })
        })
        .collect();
    for writer in writers {
        writer
            .join()
            .expect("writer")
            .expect_error(503, "removed or damaged under the running server");
    }

    assert_eq!(alias_names(server), aliases);
    server.get(&alias_path(&aliases[0])).expect(200);
    let resolved = server.get(&format!("/api/resolve/{}", aliases[0]));
    assert_eq!(resolved.expect(200)["resolved"], "llama3");
    let health = server.get("/healthz");
    let body = health.expect(503);
    assert_eq!(body["status"], "degraded", "{health:?}");
    assert_eq!(body["seq"], seq, "{health:?}");
    assert!(
        body["reason"]
            .as_str()
            .is_some_and(|r| r.contains("restart aliasd")),
        "{health:?}"
    );
    assert_eq!(
        server.store.read("after"),
        None,
        "a refused write made a file"
    );

    let stderr = server.stderr();
    assert_eq!(
        stderr.matches(LOUD_LINE).count(),
        1,
        "logged loudly exactly once:\n{stderr}"
    );
}

/// Starts a server with `n` aliases on `llama3`; returns them.
fn server_with_aliases(n: usize) -> (Server, Vec<String>) {
    let server = Server::with_models(&["llama3"]);
    let aliases: Vec<String> = (0..n).map(|idx| format!("a{idx}")).collect();
    for alias in &aliases {
        server.put_alias(alias, "llama3").expect(201);
    }
    assert_eq!(server.seq(), n as u64);
    (server, aliases)
}

#[test]
fn issue17_a_journal_directory_removed_under_the_server_gets_writes_refused_with_503() {
    let (server, aliases) = server_with_aliases(5);
    std::fs::remove_dir_all(server.journal_dir()).expect("rm -rf the journal");
    check_writes_refused_reads_served(&server, &aliases, 5);
}

#[test]
fn history_from_a_journal_removed_under_the_server_is_a_503_that_says_what_to_do() {
    let (server, aliases) = server_with_aliases(5);
    server.get("/api/history").expect(200);
    std::fs::remove_dir_all(server.journal_dir()).expect("rm -rf the journal");
    for query in [
        "/api/history",
        "/api/history?since=2",
        "/api/history?alias=a1",
    ] {
        let message = server.get(query).expect_error(503, "could not be read");
        assert!(message.contains("restart aliasd"), "{query}: {message}");
    }
    // What is in memory still answers.
    assert_eq!(alias_names(&server), aliases);
}

#[test]
fn issue17_a_journal_directory_moved_away_under_the_server_gets_writes_refused_with_503() {
    let (server, aliases) = server_with_aliases(5);
    let dir = server.journal_dir();
    let moved = dir.with_extension("moved");
    std::fs::rename(dir, &moved).expect("mv the journal");
    std::fs::create_dir(dir).expect("mkdir a new, empty journal");
    check_writes_refused_reads_served(&server, &aliases, 5);
    std::fs::remove_dir_all(&moved).expect("clean up");
}

#[test]
fn issue17_an_active_segment_truncated_under_the_server_gets_writes_refused_with_503() {
    // To nothing, to its bare header, and into its last record.
    for cut_to in [Some(0), Some(24), None] {
        let (server, aliases) = server_with_aliases(5);
        let segments = files_with_ext(server.journal_dir(), "seg");
        let active = segments.last().expect("a segment");
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(active)
            .expect("open the active segment");
        let len = match cut_to {
            Some(len) => len,
            None => {
                let bytes = std::fs::read(active).expect("read the segment");
                let data_end = bytes.iter().rposition(|&b| b != 0).expect("records") + 1;
                data_end as u64 - 10
            }
        };
        file.set_len(len).expect("truncate the active segment");
        check_writes_refused_reads_served(&server, &aliases, 5);
        assert_eq!(
            std::fs::metadata(active).expect("stat").len(),
            len,
            "aliasd wrote into the cut segment"
        );
    }
}

#[test]
fn issue17_repair_keeps_a_valid_snapshot_of_a_cut_journal_and_the_server_starts_with_its_aliases() {
    let (mut server, aliases) = server_with_aliases(6);
    server.stop();
    let dir = server.journal_dir().to_path_buf();
    let snapshots = files_with_ext(&dir, "snap");
    let out = journal_cmd(&dir, &["verify"]);
    assert!(
        out.stdout.contains("snapshot 6"),
        "the stop wrote a snapshot: {out:?}"
    );

    // Cut the segment in the middle of its records, as the issue's attack did.
    let segment = files_with_ext(&dir, "seg").pop().expect("a segment");
    let bytes = std::fs::read(&segment).expect("read the segment");
    let data_end = bytes.iter().rposition(|&b| b != 0).expect("records") + 1;
    let cut_to = (24 + data_end) / 2;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .expect("open")
        .set_len(cut_to as u64)
        .expect("truncate");
    let cut = std::fs::read(&segment).expect("read the cut segment");

    // The snapshot shows those records were durable: no start on what is left.
    let Refused { code, stderr } = server.refused_start();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("journal corrupt"), "{stderr}");
    let out = journal_cmd(&dir, &["verify"]);
    assert_eq!(out.code, Some(1), "{out:?}");

    let out = journal_repair_dry_run(&dir);
    assert!(
        out.stdout.contains("a valid snapshot is always kept"),
        "{out:?}"
    );

    let out = journal_cmd(&dir, &["repair", "--yes"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout.contains("kept the snapshot at seq 6")
            && out.stdout.contains("journal now ends at seq 6"),
        "{out:?}"
    );
    assert_eq!(
        files_with_ext(&dir, "snap"),
        snapshots,
        "the snapshot was kept"
    );
    let aside = dir.join("set-aside-before-snapshot-6");
    assert_eq!(
        std::fs::read(aside.join(segment.file_name().expect("name"))).expect("set aside"),
        cut,
        "the cut segment is kept aside as it was"
    );
    let out = journal_cmd(&dir, &["verify"]);
    assert_eq!(out.code, Some(0), "{out:?}");

    // The server starts with the snapshot's aliases, and the journal goes on after it.
    server.start_again();
    assert_eq!(alias_names(&server), aliases);
    for alias in server.aliases() {
        assert_eq!(alias["state"], "active", "{alias:?}");
    }
    assert_eq!(server.seq(), 6);
    let created: Value = server.put_alias("a6", "llama3").expect(201).clone();
    assert_eq!(created["seq"], 7, "{created:?}");
    server.restart();
    let mut expected = aliases.clone();
    expected.push("a6".to_string());
    assert_eq!(alias_names(&server), expected);
}

#[test]
fn issue17_rollover_snapshots_and_retention_never_refuse_a_write() {
    let store = crate::support::TestStore::with_models(&["llama3", "qwen"]);
    let args = [
        "--segment-bytes",
        "2048",
        "--retain",
        "10",
        "--snapshot-every",
        "20",
    ];
    let mut server = Server::start_with_args(store, &args);
    let addr = server.addr();
    let writers: Vec<_> = (0..4)
        .map(|writer| {
            std::thread::spawn(move || {
                for idx in 0..60 {
                    let target = if idx % 2 == 0 { "llama3" } else { "qwen" };
                    let body = serde_json::json!({ "target": target }).to_string();
                    let resp = crate::support::http(
                        addr,
                        "PUT",
                        &alias_path(&format!("w{writer}-{}", idx % 7)),
                        &[("Content-Type", "application/json")],
                        Some(body.as_bytes()),
                    );
                    assert!(resp.status == 200 || resp.status == 201, "{resp:?}");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().expect("writer");
    }
    let dir = server.journal_dir().to_path_buf();
    assert!(
        files_with_ext(&dir, "seg")
            .first()
            .is_some_and(|first| !first.ends_with("00000000000000000001.seg")),
        "retention removed old segments"
    );
    server.get("/healthz").expect(200);
    assert!(!server.stderr().contains(LOUD_LINE));
    server.restart();
    server.put_alias("after-restart", "llama3").expect(201);
    assert!(!server.stderr().contains(LOUD_LINE));
}
