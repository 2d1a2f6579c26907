//! Confinement (SPEC §1) against a hostile store owner, regressions of
//! issue 17: aliasd never writes, removes, chowns or reads through a
//! symbolic link, and a path it cannot use (a symlink or a file on the way,
//! a symlink, FIFO or huge file at the end) makes its alias `shadowed`, once.
//!
//! "Outside" is a directory beside the store standing for `/etc`: nothing in
//! it may change, whatever the store holds.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{alias_path, assert_root, files_under, wait_for, Server, TestStore};

/// How long a change may take to show.
const WAIT: Duration = Duration::from_secs(10);

/// A directory beside the store, standing for a root-only one like `/etc`,
/// holding one secret file.
fn outside(store: &TestStore) -> PathBuf {
    let dir = store.base().join("outside");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("passwd"), b"root:secret\n").unwrap();
    std::fs::write(dir.join("latest"), b"root's own file\n").unwrap();
    dir
}

/// `manifests/registry.ollama.ai/library/<rel>` in `store`.
fn library(store: &TestStore, rel: &str) -> PathBuf {
    store
        .root()
        .join("manifests/registry.ollama.ai/library")
        .join(rel)
}

fn state_of(server: &Server, alias: &str) -> Option<String> {
    let resp = server.get(&alias_path(alias));
    (resp.status == 200).then(|| resp.json["state"].as_str().unwrap_or("").to_string())
}

fn wait_state(server: &Server, alias: &str, state: &str) {
    wait_for(&format!("{alias} {state}"), WAIT, || {
        (state_of(server, alias).as_deref() == Some(state)).then_some(())
    });
}

/// The types of every event about `alias`.
fn history(server: &Server, alias: &str) -> Vec<String> {
    let resp = server.get(&format!("/api/history?alias={alias}&limit=10000"));
    resp.expect(200)["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect()
}

#[track_caller]
fn assert_untouched(outside: &Path) {
    let files = files_under(outside);
    let names: Vec<String> = files.keys().map(|p| p.display().to_string()).collect();
    assert_eq!(names, ["latest", "passwd"], "outside holds what it held");
    assert_eq!(files[Path::new("passwd")], b"root:secret\n");
    assert_eq!(files[Path::new("latest")], b"root's own file\n");
}

#[test]
fn issue17_symlinked_directories_on_an_alias_path_are_never_written_or_removed_through() {
    let store = TestStore::with_models(&["llama3", "mistral"]);
    let outside = outside(&store);
    // At the model, namespace and host level.
    std::os::unix::fs::symlink(&outside, library(&store, "evil")).unwrap();
    std::os::unix::fs::symlink(
        &outside,
        store.root().join("manifests/registry.ollama.ai/evilns"),
    )
    .unwrap();
    std::fs::create_dir_all(outside.join("ns")).unwrap();
    std::fs::create_dir_all(outside.join("ns/m")).unwrap();
    std::os::unix::fs::symlink(&outside, store.root().join("manifests/evil.example")).unwrap();
    let mut server = Server::start(store);
    let aliases = [
        "evil:passwd",
        "evilns/evil:passwd",
        "evil.example/ns/m:passwd",
    ];
    for alias in aliases {
        let resp = server.put_alias(alias, "llama3");
        assert!(
            resp.status == 201 || resp.status == 409,
            "{alias}: {} {}",
            resp.status,
            resp.json
        );
        if resp.status == 201 {
            wait_state(&server, alias, "shadowed");
        }
        assert_untouched(&outside);
    }
    let log = wait_for("the log names the link", WAIT, || {
        let log = server.stderr();
        log.contains("evil is a symbolic link").then_some(log)
    });
    assert!(log.contains("evilns is a symbolic link"), "{log}");
    // Re-point, delete, restart: still nothing outside changes.
    for alias in aliases {
        server.put_alias(alias, "mistral");
        server.delete(&alias_path(alias));
        assert_untouched(&outside);
    }
    for alias in aliases {
        server.put_alias(alias, "llama3");
    }
    server.restart();
    assert_untouched(&outside);
    let seq = server.seq();
    server.restart();
    assert_eq!(server.seq(), seq, "a restart journals nothing new");
    assert_untouched(&outside);
}

#[test]
fn issue17_a_directory_swapped_for_a_symlink_while_running_is_not_followed() {
    let store = TestStore::with_models(&["llama3", "mistral"]);
    let outside = outside(&store);
    let server = Server::start(store);
    server.put_alias("swap", "llama3").expect(201);
    assert!(server.store.read("swap").is_some());
    // The store's owner swaps the alias's directory for a link to /etc.
    std::fs::remove_dir_all(library(&server.store, "swap")).unwrap();
    std::os::unix::fs::symlink(&outside, library(&server.store, "swap")).unwrap();
    server.put_alias("swap", "mistral");
    assert_untouched(&outside);
    wait_state(&server, "swap", "shadowed");
    server.delete(&alias_path("swap")).expect(200);
    assert_untouched(&outside);
}

#[test]
fn issue17_a_file_on_the_way_makes_the_alias_shadowed_once() {
    let store = TestStore::with_models(&["llama3"]);
    std::fs::write(library(&store, "fileblock"), b"{\"schemaVersion\":2}").unwrap();
    let mut server = Server::start(store);
    let resp = server.put_alias("fileblock:tag", "llama3");
    assert!(resp.status == 201 || resp.status == 409, "{}", resp.json);
    wait_state(&server, "fileblock:tag", "shadowed");
    let events = history(&server, "fileblock:tag");
    assert_eq!(events, ["alias.created", "alias.shadowed"]);
    server.restart();
    server.restart();
    assert_eq!(
        history(&server, "fileblock:tag"),
        events,
        "restarts journal nothing more"
    );
    assert_eq!(
        std::fs::read(library(&server.store, "fileblock")).unwrap(),
        b"{\"schemaVersion\":2}"
    );
}

#[test]
fn issue17_a_symlink_at_the_alias_file_is_foreign_not_torn() {
    let store = TestStore::with_models(&["llama3", "mistral"]);
    let outside = outside(&store);
    let mut server = Server::start(store);
    for alias in ["dangling", "linked", "zero"] {
        server.put_alias(alias, "llama3").expect(201);
    }
    let root = server.store.root();
    let file = |name: &str| {
        root.join("manifests/registry.ollama.ai/library")
            .join(name)
            .join("latest")
    };
    std::fs::remove_file(file("dangling")).unwrap();
    std::os::unix::fs::symlink(outside.join("nowhere"), file("dangling")).unwrap();
    std::fs::remove_file(file("linked")).unwrap();
    std::os::unix::fs::symlink(outside.join("latest"), file("linked")).unwrap();
    std::fs::remove_file(file("zero")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", file("zero")).unwrap();
    for alias in ["dangling", "linked", "zero"] {
        wait_state(&server, alias, "shadowed");
        // A re-point must not write through the link either.
        server.put_alias(alias, "mistral");
    }
    assert_untouched(&outside);
    assert!(!outside.join("nowhere").exists());
    server.restart();
    for alias in ["dangling", "linked", "zero"] {
        assert_eq!(state_of(&server, alias).as_deref(), Some("shadowed"));
        assert!(std::fs::symlink_metadata(file(alias))
            .unwrap()
            .file_type()
            .is_symlink());
    }
    // Read from nowhere but the store: the server stayed small.
    assert!(rss_bytes(&server) < 200 << 20, "{}", rss_bytes(&server));
}

#[test]
fn issue17_a_huge_sparse_manifest_is_not_read() {
    let store = TestStore::with_models(&["llama3"]);
    std::fs::create_dir_all(library(&store, "huge")).unwrap();
    let huge = std::fs::File::create(library(&store, "huge/latest")).unwrap();
    huge.set_len(3 << 30).unwrap();
    drop(huge);
    let server = Server::start(store);
    server.put_alias("coder", "llama3").expect(201);
    // Not a model aliasd will copy: no alias can point at it.
    server.put_alias("big", "huge").expect_error(404, "huge");
    let models = server.get("/api/models");
    let names: Vec<&str> = models.expect(200)["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["llama3"]);
    assert!(rss_bytes(&server) < 200 << 20, "{}", rss_bytes(&server));
    assert!(
        server.stderr().contains("over the 4 MiB"),
        "{}",
        server.stderr()
    );
}

/// The server's resident memory, from `/proc`.
fn rss_bytes(server: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches(" kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024
}

/// The store owner races aliasd: each time aliasd makes an alias's
/// directory, they swap it for a symlink to a root-owned file, hoping for
/// the `chown` that gives new directories to the store's owner. Needs root,
/// as the attack does (CI runs as root).
#[test]
fn issue17_new_directories_are_chowned_by_handle_never_through_a_swapped_symlink() {
    use std::os::unix::fs::MetadataExt;
    let store = TestStore::with_models(&["llama3", "mistral"]);
    assert_root("the attack is on aliasd run as root");
    const NOBODY: u32 = 65534;
    store.give_to(NOBODY);
    let target = store.base().join("root-only");
    std::fs::write(&target, b"root's\n").unwrap();
    let server = Server::start(store);
    let dir = library(&server.store, "race");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let attacker = {
        let (dir, target, stop) = (dir.clone(), target.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
                    let _ = std::fs::remove_dir_all(&dir);
                    if std::os::unix::fs::symlink(&target, &dir).is_ok() {
                        swaps += 1;
                    }
                    std::thread::yield_now();
                    let _ = std::fs::remove_file(&dir);
                }
            }
            swaps
        })
    };
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut writes = 0;
    while Instant::now() < deadline {
        for target_model in ["llama3", "mistral"] {
            let body = json!({ "target": target_model });
            server.send_json("PUT", &alias_path("race"), &body);
            writes += 1;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let swaps = attacker.join().unwrap();
    let metadata = std::fs::metadata(&target).unwrap();
    assert_eq!(
        (metadata.uid(), metadata.gid()),
        (0, 0),
        "a root-owned file outside the store was given away ({writes} writes, {swaps} swaps)"
    );
    assert!(writes > 10, "the race ran: {writes} writes, {swaps} swaps");
    let alias: Value = server.get(&alias_path("race")).json;
    assert!(alias["state"].is_string(), "{alias}");
}
