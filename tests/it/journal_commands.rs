//! The offline journal commands (issue 5): `aliasd journal verify|dump|repair|compact`
//! on a stopped server's journal, and refused on a journal in use, as a second
//! `aliasd serve` is.

use std::path::PathBuf;

use serde_json::{json, Value};

use crate::support::{
    alias_path, files_under, files_with_ext, journal_cmd, journal_repair_dry_run, record_offsets,
    run_cli, segment_data_len, Refused, Server,
};

#[test]
fn a_journal_in_use_is_refused_by_a_second_server_and_offline_writers() {
    let server = Server::with_models(&["llama3"]);
    server.create("coder", "llama3");
    let Refused { code, stderr: log } = server.refused_start();
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("in use by another process"), "{log}");
    for command in ["dump", "compact"] {
        let out = journal_cmd(server.journal_dir(), &[command]);
        assert_eq!(out.code, Some(1), "{command}: {out:?}");
        assert!(
            out.stderr.contains("in use by another process"),
            "{command}: {out:?}"
        );
    }
    // The running server was not disturbed, and verify only reads.
    server.create("chat", "llama3");
    assert_eq!(server.seq(), 2);
    let out = journal_cmd(server.journal_dir(), &["verify"]);
    assert_eq!(out.code, Some(0), "{out:?}");
}

#[test]
fn journal_verify_dump_and_repair() {
    const ALIASES: usize = 30;
    let mut server = Server::with_models(&["llama3"]);
    for i in 0..ALIASES {
        server.create(&format!("j{i:02}"), "llama3");
    }
    let journaled = server.all_events();
    assert_eq!(journaled.len(), ALIASES);
    server.stop();
    let dir = server.journal_dir().to_path_buf();
    // The stop wrote a snapshot. Without one the log is all there is and repair keeps its
    // good prefix; with one it keeps the snapshot (see `journal_tamper`).
    for entry in std::fs::read_dir(&dir).expect("read journal dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|x| x == "snap") {
            std::fs::remove_file(path).expect("remove snapshot");
        }
    }

    let out = journal_cmd(&dir, &["verify"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.starts_with("ok: 30 records"), "{out:?}");
    let out = run_cli(
        &["--json"],
        &["journal", "verify", "--journal", dir.to_str().unwrap()],
    );
    let report = out.json();
    assert_eq!(report["ok"], json!(true));
    assert_eq!(report["records"], json!(ALIASES));
    assert_eq!(report["last_seq"], json!(ALIASES));

    // dump: one JSON event per line, the same as the history.
    let out = journal_cmd(&dir, &["dump"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let dumped: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(dumped, journaled);

    // Flip one byte in the middle of the segment.
    let segment_files = files_with_ext(&dir, "seg");
    assert_eq!(segment_files.len(), 1, "{segment_files:?}");
    let segment = &segment_files[0];
    let name = segment.file_name().unwrap().to_str().unwrap().to_string();
    assert_eq!(name, "00000000000000000001.seg");
    let mut bytes = std::fs::read(segment).unwrap();
    let records = record_offsets(&bytes);
    assert_eq!(records.len(), ALIASES);
    let flip_at = segment_data_len(&bytes) / 2;
    let (damaged_seq, damaged_offset, _) = *records
        .iter()
        .find(|(_, offset, len)| (*offset..offset + len).contains(&flip_at))
        .unwrap();
    assert!(damaged_seq > 1 && damaged_seq < ALIASES as u64);
    bytes[flip_at] ^= 0x40;
    std::fs::write(segment, &bytes).unwrap();
    let before = files_under(&dir);

    let out = journal_cmd(&dir, &["verify"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains(&name), "{out:?}");
    assert!(
        out.stderr.contains(&format!("byte {damaged_offset}")),
        "expected offset {damaged_offset}: {out:?}"
    );
    // The server refuses to start on it, naming the same place.
    let Refused { code, stderr } = server.refused_start();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&name) && stderr.contains(&format!("byte {damaged_offset}")),
        "{stderr}"
    );

    assert_eq!(
        files_under(&dir),
        before,
        "verify or a refused start changed files"
    );

    // repair without --yes: says what it would drop, changes nothing, exits 1.
    let out = journal_repair_dry_run(&dir);
    assert!(
        out.stdout.contains(&format!("byte {damaged_offset}")),
        "{out:?}"
    );
    assert!(out.stderr.contains("--yes"), "{out:?}");

    // repair --yes keeps the good prefix.
    let out = journal_cmd(&dir, &["repair", "--yes"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let kept = damaged_seq - 1;
    assert!(
        out.stdout
            .contains(&format!("journal now ends at seq {kept}")),
        "{out:?}"
    );
    let out = journal_cmd(&dir, &["verify"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let out = journal_cmd(&dir, &["dump"]);
    assert_eq!(out.stdout.lines().count() as u64, kept, "{out:?}");
    // Repairing an intact journal is a no-op.
    let out = journal_cmd(&dir, &["repair", "--yes"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("nothing to repair"), "{out:?}");

    // The server starts on the repaired journal with the good prefix.
    server.start_again();
    assert!(server.seq() >= kept);
    let (events, _) = server.history(&format!("until={kept}&limit=10000"));
    assert_eq!(events, journaled[..kept as usize]);
    let names: Vec<String> = server
        .aliases()
        .iter()
        .map(|a| a["alias"].as_str().unwrap().to_string())
        .collect();
    let expected: Vec<String> = (0..kept).map(|i| format!("j{i:02}")).collect();
    assert_eq!(names, expected);
}

#[test]
fn journal_compact_writes_a_snapshot_and_restart_keeps_aliases() {
    let mut server = Server::with_models(&["llama3", "qwen"]);
    for i in 0..10 {
        server.create(&format!("k{i}"), if i % 2 == 0 { "llama3" } else { "qwen" });
    }
    server.delete(&alias_path("k3")).expect(200);
    server.create("k4", "k5");
    let before = server.aliases();
    let seq = server.seq();
    server.stop();
    let dir = server.journal_dir().to_path_buf();

    let out = journal_cmd(&dir, &["compact"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout
            .contains(&format!("snapshot written at seq {seq}")),
        "{out:?}"
    );
    let snapshots: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "snap"))
        .collect();
    assert_eq!(snapshots.len(), 1, "{snapshots:?}");
    let out = run_cli(
        &["--json"],
        &["journal", "verify", "--journal", dir.to_str().unwrap()],
    );
    assert_eq!(out.json()["snapshot_seq"], json!(seq));

    server.start_again();
    assert_eq!(server.seq(), seq);
    assert_eq!(server.aliases(), before);
    // History is still whole (the snapshot does not replace the audit trail).
    assert_eq!(server.all_events().len() as u64, seq);
    // And it still takes writes.
    server.create("k3", "llama3");
    assert_eq!(server.seq(), seq + 1);
}
