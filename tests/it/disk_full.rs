//! A full disk (SPEC §4's durability rules): the journal's disk full (a real
//! tiny tmpfs) is a 507 that changes nothing and recovers without a restart;
//! the store's disk full delays an alias file until there is room; journal
//! faults injected under the registry apply nothing.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{
    alias_path, journal_cmd, tempdir, wait_for, Server, TestStore, TmpfsMount, WAIT,
};

/// Writes `path` until the file system refuses; returns the bytes written.
fn fill(path: &Path) -> u64 {
    let mut file = std::fs::File::create(path).expect("create filler");
    let chunk = vec![0x5au8; 4096];
    let mut written = 0u64;
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(28), "filling: {e}");
                break;
            }
        }
    }
    // Whatever is left (less than a page) goes too.
    while let Ok(n) = file.write(&chunk[..1]) {
        if n == 0 {
            break;
        }
        written += 1;
    }
    written
}

#[test]
fn a_full_journal_disk_is_507_and_recovers_without_restart() {
    let mount = TmpfsMount::new("1m");
    let journal = mount.path().join("journal");
    let mut server = Server::builder(TestStore::with_models(&["llama3"]))
        .journal(&journal)
        .start();
    let store = &server.store;
    let mut acked: BTreeMap<String, String> = BTreeMap::new();
    server.put_alias("before", "llama3").expect(201);
    acked.insert("before".into(), "llama3".into());

    let filler = mount.path().join("filler");
    let filled = fill(&filler);
    assert!(filled > 0);
    // The segment's last page may still have room for a few records; the
    // first write that needs a new page fails.
    let mut refused = None;
    for idx in 0..200 {
        let alias = format!("full{idx}");
        let seq = server.seq();
        let resp = server.put_alias(&alias, "llama3");
        if resp.status == 201 {
            acked.insert(alias, "llama3".into());
            continue;
        }
        let message = resp.expect_error(507, "disk is full");
        assert!(message.contains("not made"), "{message}");
        assert_eq!(server.seq(), seq, "a refused write took a seq");
        refused = Some(alias);
        break;
    }
    let refused = refused.expect("no write failed on a full disk");
    // Nothing of it was applied; reads go on.
    server
        .get(&alias_path(&refused))
        .expect_error(404, "not found");
    assert_eq!(store.read(&refused), None);
    server.get("/api/aliases").expect(200);
    server.get("/api/history").expect(200);
    assert!(server.aliases_by_name().keys().eq(acked.keys()));
    // Deletes and batches are refused the same way, changing nothing.
    server
        .delete(&alias_path("before"))
        .expect_error(507, "disk is full");
    let batch = json!({ "ops": [{ "op": "put", "alias": "b1", "target": "llama3" }, { "op": "delete", "alias": "before" }] });
    server
        .send_json("POST", "/api/aliases", &batch)
        .expect_error(507, "disk is full");
    assert_eq!(store.read("b1"), None);
    assert!(store.read("before").is_some());
    assert!(server.aliases_by_name().keys().eq(acked.keys()));

    // Space comes back: the next write succeeds, with no restart.
    std::fs::remove_file(&filler).expect("remove filler");
    server.put_alias(&refused, "llama3").expect(201);
    acked.insert(refused.clone(), "llama3".into());
    assert_eq!(
        store.read(&refused).as_deref(),
        store.read("llama3").as_deref()
    );
    assert!(server.stderr().contains("journal write failed"));

    // After a restart every acknowledged write is there.
    server.stop();
    let verify = journal_cmd(&journal, &["verify"]);
    assert_eq!(verify.code, Some(0), "{verify:?}");
    server.start_again();
    let aliases = server.aliases_by_name();
    let got: BTreeMap<String, String> = aliases
        .iter()
        .map(|(alias, body)| {
            (
                alias.clone(),
                body["target"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(got, acked);
    assert_eq!(server.seq(), acked.len() as u64);
    drop(server);
    drop(mount);
}

#[test]
fn an_alias_file_a_full_store_refused_is_written_once_there_is_room() {
    // The store on a small file system, the journal on another.
    let mount = TmpfsMount::new("1m");
    let store = TestStore::new_in(mount.path());
    let llama3 = store.add_model("llama3");
    let server = Server::start(store);
    let store = &server.store;
    server.put_alias("before", "llama3").expect(201);

    let filler = mount.path().join("filler");
    assert!(fill(&filler) > 0);
    // The journal takes the write; the store has no room for its file.
    let resp = server.put_alias("onfull", "llama3");
    resp.expect(201);
    assert_eq!(store.read("onfull"), None);
    assert_eq!(
        server.get(&alias_path("onfull")).expect(200)["state"],
        "active"
    );
    let stderr = server.stderr();
    assert!(stderr.contains("the store's disk is full"), "{stderr}");
    assert!(stderr.contains("trying again in 1 s"), "{stderr}");
    let metrics =
        |server: &Server| String::from_utf8_lossy(&server.get("/metrics").body).into_owned();
    assert!(metrics(&server).contains("\naliasd_alias_files_pending 1\n"));

    // Room comes back: the file is written with no restart and no request.
    std::fs::remove_file(&filler).expect("remove filler");
    let deadline = Instant::now() + WAIT;
    while store.read("onfull").is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(store.read("onfull").as_deref(), Some(&llama3[..]));
    // The retry writes the file, then updates the gauge and logs: the file
    // can show a moment before either.
    wait_for("the retry logged", WAIT, || {
        server.stderr().contains("written on a retry").then_some(())
    });
    wait_for("no alias file pending", WAIT, || {
        metrics(&server)
            .contains("\naliasd_alias_files_pending 0\n")
            .then_some(())
    });
    assert_eq!(store.read("before").as_deref(), Some(&llama3[..]));
    drop(server);
    drop(mount);
}

/// The registry's error path with journal faults injected: nothing applied,
/// every request of the group told, the journal usable afterwards.
#[test]
fn journal_faults_apply_nothing_and_answer_507_or_503() {
    use aliasd::command::{Origin, PutAlias};
    use aliasd::http::ApiError;
    use aliasd::registry::{Command as RegistryCommand, Registry, RegistryConfig, RegistryError};

    let store = TestStore::with_models(&["llama3"]);
    let journal = tempdir("aliasd-it-journal");
    let faulty = journal::FaultyIo::default();
    let config = RegistryConfig {
        models_dir: store.root(),
        journal_dir: journal.path().to_path_buf(),
        retain: None,
        snapshot_every: 10_000,
        segment_bytes: 64 << 20,
        io: Some(Arc::new(faulty.clone())),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let put = |alias: &str, target: &str| {
        RegistryCommand::Put(PutAlias {
            alias: alias.to_string(),
            target: target.to_string(),
            prefix_matching: false,
            if_match: None,
            if_none_match: false,
        })
    };
    let origin = Origin::system("test");
    let (registry, writer) = Registry::start(config.clone()).expect("start");
    let aliases = |registry: &Registry| -> Vec<String> {
        registry.read(|s| s.index.sorted().iter().map(|e| e.alias.display()).collect())
    };
    runtime.block_on(async {
        registry
            .execute(put("a", "llama3"), origin.clone())
            .await
            .expect("put a");

        // ENOSPC: 507, for every request of the group; a refused one keeps its own error.
        faulty.set_enospc(true);
        let mut calls = Vec::new();
        for idx in 0..8 {
            let registry = registry.clone();
            let command = if idx == 7 {
                put("c7", "nosuch")
            } else {
                put(&format!("c{idx}"), "llama3")
            };
            let origin = origin.clone();
            calls.push(tokio::spawn(async move {
                registry.execute(command, origin).await
            }));
        }
        for (idx, call) in calls.into_iter().enumerate() {
            let error = call.await.expect("join").expect_err("must fail");
            let api = ApiError::from(error);
            if idx == 7 {
                assert_eq!(api.status.as_u16(), 404, "{api:?}");
            } else {
                assert_eq!(api.status.as_u16(), 507, "{api:?}");
                assert!(api.message.contains("disk is full"), "{api:?}");
            }
        }
        faulty.set_enospc(false);
        assert_eq!(registry.log().last_seq(), 1);
        assert_eq!(aliases(&registry), ["a"]);
        assert_eq!(store.read("c0"), None);

        // A failed fsync and a short write: 503, nothing applied.
        faulty.fail_next_sync();
        let error = registry
            .execute(put("b", "llama3"), origin.clone())
            .await
            .expect_err("sync");
        assert!(matches!(error, RegistryError::Storage(_)), "{error:?}");
        let api = ApiError::from(error);
        assert_eq!(api.status.as_u16(), 503, "{api:?}");
        assert!(api.message.contains("nothing was changed"), "{api:?}");
        faulty.fail_next_write_short();
        let api = ApiError::from(
            registry
                .execute(put("b", "llama3"), origin.clone())
                .await
                .expect_err("short"),
        );
        assert_eq!(api.status.as_u16(), 503, "{api:?}");
        assert_eq!(aliases(&registry), ["a"]);
        assert_eq!(store.read("b"), None);

        // The journal goes on from where it was.
        registry
            .execute(put("b", "llama3"), origin.clone())
            .await
            .expect("put b");
        assert_eq!(registry.log().last_seq(), 2);
    });
    drop(registry);
    writer.join();
    journal::verify(journal.path()).expect("verify");

    // In this process other tests start programs (aliasd, mount) at any
    // moment, and a child holds a copy of every open descriptor, the journal's
    // locked one included, from its fork until its exec closes them: a
    // restart in the same process can find the lock held for that instant.
    let restart = || {
        Registry::start(RegistryConfig {
            io: None,
            ..config.clone()
        })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let (registry, writer) = loop {
        match restart() {
            Err(e) if format!("{e:#}").contains("in use") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            started => break started.expect("restart"),
        }
    };
    assert_eq!(aliases(&registry), ["a", "b"]);
    assert_eq!(registry.log().last_seq(), 2);
    drop(registry);
    writer.join();
}
