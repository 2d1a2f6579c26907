//! The store aliasd is given: one it cannot write stops start-up saying what
//! to do; one owned by another user (aliasd run as root) gets what aliasd
//! makes given to that user; one holding no model, for a journal with
//! aliases, is said loudly (a mistyped `--models`).

use crate::support::{alias_path, assert_root, tempdir, Server, TestStore, TmpfsMount};

#[test]
fn a_store_aliasd_cannot_write_stops_start_up_saying_what_to_do() {
    let mount = TmpfsMount::new("1m");
    let store = TestStore::new_in(mount.path());
    store.add_model("llama3");
    // Read-only even for root, who may write past any permission bits.
    mount.make_read_only();
    let refused = Server::builder(store).start_refused();
    let stderr = refused.stderr;
    assert_ne!(refused.code, Some(0), "{stderr}");
    assert!(stderr.contains("cannot write in"), "{stderr}");
    assert!(stderr.contains("sudo -u ollama aliasd serve"), "{stderr}");
    drop(mount);
}

#[test]
#[cfg(target_os = "linux")]
fn a_manifests_directory_that_is_a_symlink_is_neither_watched_nor_written_through() {
    // The store's owner made `manifests` a symlink to elsewhere before start.
    let outside = tempdir("aliasd-it-outside");
    let elsewhere = outside
        .path()
        .join("manifests/registry.ollama.ai/library/m");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let store = TestStore::new();
    std::fs::remove_dir(store.root().join("manifests")).unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("manifests"),
        store.root().join("manifests"),
    )
    .unwrap();
    let refused = Server::builder(store).start_refused();
    let stderr = refused.stderr;
    assert_ne!(refused.code, Some(0), "{stderr}");
    // The watch refused it (it used to resolve the symlink and watch its
    // target), then the write check stopped start-up.
    assert!(stderr.contains("cannot watch"), "{stderr}");
    assert!(stderr.contains("is a symbolic link"), "{stderr}");
    assert!(stderr.contains("cannot write in"), "{stderr}");
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
}

#[test]
#[cfg(unix)]
fn run_as_root_on_another_users_store_aliasd_gives_what_it_makes_to_that_user() {
    use std::os::unix::fs::MetadataExt;
    assert_root("aliasd must give what it makes to the store's owner when run as root");
    let store = TestStore::with_models(&["llama3"]);
    // The store belongs to `nobody`, as Ollama's to `ollama`.
    const NOBODY: u32 = 65534;
    store.give_to(NOBODY);
    let server = Server::start(store);
    server.put_alias("coder", "llama3").expect(201);
    // A new host and namespace: three directories made at once.
    server
        .put_alias("example.com/team/helper", "llama3")
        .expect(201);
    for made in [
        "manifests/registry.ollama.ai/library/coder",
        "manifests/registry.ollama.ai/library/coder/latest",
        "manifests/example.com",
        "manifests/example.com/team",
        "manifests/example.com/team/helper",
        "manifests/example.com/team/helper/latest",
    ] {
        let metadata = std::fs::metadata(server.store.root().join(made)).expect(made);
        assert_eq!((metadata.uid(), metadata.gid()), (NOBODY, NOBODY), "{made}");
    }
}

#[test]
fn a_journal_started_on_a_store_with_no_model_says_so() {
    let store = TestStore::with_models(&["llama3"]);
    let journal = tempdir("aliasd-it-journal");
    let start = |store: &TestStore| {
        Server::builder(store.clone())
            .journal(journal.path())
            .start()
    };
    let server = start(&store);
    server.put_alias("coder", "llama3").expect(201);
    assert!(!server.stderr().contains("holds no model"));
    drop(server);

    // The same journal, a mistyped store: made empty, every alias dangles.
    let server = start(&TestStore::new());
    let stderr = server.stderr();
    assert!(
        stderr.contains("holds no model, while the journal has 1 alias:"),
        "{stderr}"
    );
    assert!(stderr.contains("--models or OLLAMA_MODELS"), "{stderr}");
    drop(server);

    // Back on the right store, the alias is back and nothing is said.
    let server = start(&store);
    assert_eq!(
        server.get(&alias_path("coder")).expect(200)["state"],
        "active"
    );
    assert!(!server.stderr().contains("holds no model"));
}
