//! Creates and the store's watch (issue 23): what aliasd asks the kernel to
//! report, and that a directory it makes is watched from the moment it
//! exists, so that neither its own reads nor its own new directories cost
//! the watcher a listing, while nothing another program does there is missed.
//!
//! The watch is read from `/proc/<pid>/fdinfo` of the real server (Linux).

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use serde_json::json;

use crate::support::{wait_for, Server};

/// `IN_OPEN`: a file or directory was opened.
const IN_OPEN: u64 = 0x20;

/// Each inotify watch the server holds: (inode watched, event mask).
fn watches(server: &Server) -> Vec<(u64, u64)> {
    let pid = server.pid();
    let mut found = Vec::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let fd = fd.unwrap();
        let Ok(target) = std::fs::read_link(fd.path()) else {
            continue;
        };
        if target.to_string_lossy() != "anon_inode:inotify" {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        ))
        .unwrap();
        for line in info.lines().filter(|l| l.starts_with("inotify wd:")) {
            let field = |name: &str| {
                let value = line
                    .split_whitespace()
                    .find_map(|part| part.strip_prefix(name))
                    .unwrap_or_else(|| panic!("no {name} in {line}"));
                u64::from_str_radix(value, 16).unwrap()
            };
            found.push((field("ino:"), field("mask:")));
        }
    }
    found
}

#[test]
fn issue23_the_store_watch_does_not_ask_for_opens() {
    let server = Server::with_models(&["llama3"]);
    server.create("coder", "llama3");
    let watches = watches(&server);
    assert!(!watches.is_empty(), "the store is watched");
    // Every read and write of aliasd's walks directories beneath the root;
    // a watch asking for opens would hand each of them back to the watcher.
    for (ino, mask) in &watches {
        assert_eq!(
            mask & IN_OPEN,
            0,
            "watch on inode {ino} asks for opens: {mask:#x}"
        );
    }
}

#[test]
fn issue23_directories_a_create_makes_are_watched_before_it_answers() {
    const N: usize = 64;
    let server = Server::with_models(&["llama3"]);
    let ops: Vec<_> = (0..N)
        .map(|i| json!({"op": "put", "alias": format!("example.com/ns{}/a{i}", i % 4), "target": "llama3"}))
        .collect();
    server
        .send_json("POST", "/api/aliases", &json!({ "ops": ops }))
        .expect(200);
    // Right after the answer, before the watcher could have caught up on
    // its own: every directory made for these files is watched.
    let watched: BTreeSet<u64> = watches(&server).into_iter().map(|(ino, _)| ino).collect();
    let manifests = server.store.root().join("manifests");
    let mut dirs = vec![manifests.join("example.com")];
    for i in 0..N {
        let ns = manifests.join(format!("example.com/ns{}", i % 4));
        dirs.push(ns.join(format!("a{i}")));
        dirs.push(ns);
    }
    for dir in dirs {
        let ino = std::fs::metadata(&dir).unwrap().ino();
        assert!(watched.contains(&ino), "{} is not watched", dir.display());
    }
}

#[test]
fn issue23_a_model_pulled_into_a_new_alias_directory_right_after_is_seen() {
    let server = Server::with_models(&["llama3"]);
    server.create("foo", "llama3");
    // `ollama pull foo:v2` right after: a file in the directory aliasd made.
    let bytes = server.store.add_model("foo:v2");
    assert_eq!(server.store.read("foo:v2").as_deref(), Some(&bytes[..]));
    // Once the watcher has seen it, it is a model an alias can point at.
    wait_for("foo:v2 known as a model", Duration::from_secs(10), || {
        (server.put_alias("bar", "foo:v2").status == 201).then_some(())
    });
    assert_eq!(server.store.read("bar").as_deref(), Some(&bytes[..]));
    // And aliasd's own file beside it is still its own.
    assert_eq!(server.store.read("foo"), server.store.read("llama3"));
}
