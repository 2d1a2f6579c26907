//! Creates, the cheaper way the watcher recognizes aliasd's own writes
//! (issue 23): it knows each alias file it wrote by its identity (device,
//! inode, size, times) and looks at the path with one `openat2` that follows
//! no symlink, instead of reading and hashing the file. These tests change an
//! alias file, or the directory above it, right after aliasd wrote it (before
//! the watcher has looked) and check that the change is still seen as
//! someone else's.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::Server;

/// How long a change may take to show.
const WAIT: Duration = Duration::from_secs(5);

/// Waits until every alias of `aliases` has an event of type `kind` after
/// `since`.
#[track_caller]
fn wait_for_events(server: &Server, since: u64, kind: &str, aliases: &[String]) {
    let deadline = Instant::now() + WAIT;
    loop {
        let resp = server.get(&format!("/api/history?since={since}&limit=10000"));
        let events = resp.expect(200)["events"].as_array().cloned().unwrap();
        let missing: Vec<&String> = aliases
            .iter()
            .filter(|alias| {
                !events
                    .iter()
                    .any(|e: &Value| e["type"] == kind && e["alias"] == alias.as_str())
            })
            .collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no {kind} for {missing:?}; events: {events:#?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn issue23_a_file_another_program_writes_right_after_aliasd_is_seen() {
    let server = Server::with_models(&["qwen", "llama3"]);
    let llama3 = server.store.read("llama3").expect("llama3");
    let since = server.seq();
    let aliases: Vec<String> = (0..12).map(|i| format!("fast{i}")).collect();
    for alias in &aliases {
        server.create(alias, "qwen");
        // `ollama cp llama3 <alias>`, in place, within the watcher's quiet
        // window: the file's identity changes, its path does not.
        std::fs::write(server.store.manifest_path(alias), &llama3).expect("cp");
    }
    wait_for_events(&server, since, "alias.shadowed", &aliases);
    for alias in &aliases {
        assert_eq!(server.store.read(alias).as_deref(), Some(&llama3[..]));
    }
}

#[test]
fn issue23_a_directory_swapped_for_a_symlink_right_after_a_create_shadows_the_alias() {
    let server = Server::with_models(&["qwen"]);
    let since = server.seq();
    let outside = crate::support::tempdir("creates-fast-outside");
    let aliases: Vec<String> = (0..6).map(|i| format!("swapped{i}")).collect();
    for (i, alias) in aliases.iter().enumerate() {
        server.create(alias, "qwen");
        // The alias's own directory, with aliasd's file still in it, moved
        // away and a symlink to it put in its place: the file aliasd wrote
        // is unchanged, but its path now runs through a symlink.
        let dir = server
            .store
            .manifest_path(alias)
            .parent()
            .expect("dir")
            .to_path_buf();
        let moved = outside.path().join(format!("moved{i}"));
        std::fs::rename(&dir, &moved).expect("move the alias's directory away");
        std::os::unix::fs::symlink(&moved, &dir).expect("symlink");
    }
    wait_for_events(&server, since, "alias.shadowed", &aliases);
    for alias in &aliases {
        let resp = server.get(&format!("/api/aliases/{alias}"));
        assert_eq!(resp.expect(200)["state"], "shadowed", "{alias}");
    }
}
