//! The watcher (issue 4, SPEC §3 "External changes"): what other programs do
//! to the model store (`ollama pull`, `ollama rm`, `ollama cp`) is followed,
//! live and at start-up, with one journaled event per affected alias and the
//! alias files on disk brought in line.
//!
//! Each test asserts both the event in `/api/history` (type, alias, actor,
//! `request_id` null, digest) and the file on disk, by polling with a deadline.
//! To prove that nothing *more* happened, a test uses a barrier: it re-pulls a
//! probe model whose alias `probe` it waits on. The watcher handles changes in
//! the order the kernel reports them, so once the probe's event is journaled,
//! every earlier change has been handled too.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::probe::{
    alias, check_state, events_after, kind_set, kinds, sorted, the_event, wait_events,
    wait_events_for, wait_file, Fixture, PROBE,
};
use crate::support::{alias_path, digest, http, wait_for, Server, TestStore, EVENT_FIELDS, WAIT};
/// Asserts a system event: its actor, no request id, this digest, every field present.
#[track_caller]
fn check_system(event: &Value, actor: &str, target: &str, digest: Option<&str>) {
    for key in EVENT_FIELDS {
        assert!(event.get(key).is_some(), "no {key}: {event}");
    }
    assert_eq!(event["actor"], actor, "{event}");
    assert_eq!(event["request_id"], Value::Null, "{event}");
    assert_eq!(event["target"], target, "{event}");
    assert_eq!(event["digest"], json!(digest), "{event}");
}

/// Copies a file, as `ollama cp` writes a manifest (not atomically).
fn copy_manifest(store: &TestStore, from: &str, to: &str) -> Vec<u8> {
    let bytes = store.read(from).expect("source manifest");
    let path = store.manifest_path(to);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(&path, &bytes).expect("write manifest");
    bytes
}

/// Asserts the file at `name` keeps these bytes for `period`.
#[track_caller]
fn assert_stays(store: &TestStore, name: &str, bytes: &[u8], period: Duration) {
    let until = Instant::now() + period;
    while Instant::now() < until {
        assert_eq!(
            store.read(name).as_deref(),
            Some(bytes),
            "the file at {name} was touched"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn repull_rematerializes_every_alias_through_chains() {
    let mut fx = Fixture::new(&["qwen", "llama3"]);
    fx.server.create("coder", "qwen");
    fx.server.create("dev", "coder");
    fx.server.create("chat", "llama3");
    let since = fx.server.seq();

    let v2 = fx.store().add_model_version("qwen", 2);
    let events = wait_events(
        fx.addr(),
        since,
        &[("target.changed", "coder"), ("target.changed", "dev")],
    );
    for name in ["coder", "dev"] {
        let event = the_event(&events, "target.changed", name);
        let target = if name == "coder" { "qwen" } else { "coder" };
        check_system(event, "watcher", target, Some(&digest(&v2)));
        wait_file(fx.store(), name, Some(&v2));
        check_state(&fx.server, name, "active", Some(&digest(&v2)));
    }

    fx.barrier();
    assert_eq!(
        kind_set(&events_after(fx.addr(), since)),
        sorted(&[("target.changed", "coder"), ("target.changed", "dev")]),
        "exactly one event per alias, none for llama3's alias"
    );
    let llama3 = fx.store().read("llama3").expect("llama3");
    assert_eq!(fx.store().read("chat").as_deref(), Some(&llama3[..]));
    // The model's own file is untouched.
    assert_eq!(fx.store().read("qwen").as_deref(), Some(&v2[..]));
}

#[test]
fn removed_target_dangles_and_restored_target_comes_back() {
    let mut fx = Fixture::new(&["qwen"]);
    fx.server.create("coder", "qwen");
    fx.server.create("dev", "coder");
    let v1 = fx.store().read("qwen").expect("qwen");
    let since = fx.server.seq();

    fx.store().remove_model("qwen");
    let events = wait_events(
        fx.addr(),
        since,
        &[("target.removed", "coder"), ("target.removed", "dev")],
    );
    check_system(
        the_event(&events, "target.removed", "coder"),
        "watcher",
        "qwen",
        None,
    );
    check_system(
        the_event(&events, "target.removed", "dev"),
        "watcher",
        "coder",
        None,
    );
    for name in ["coder", "dev"] {
        wait_file(fx.store(), name, None);
        check_state(&fx.server, name, "dangling", None);
    }
    let resp = fx.server.get("/api/resolve/dev");
    resp.expect_error(404, "dangling");
    fx.barrier();
    assert_eq!(
        kind_set(&events_after(fx.addr(), since)),
        sorted(&[("target.removed", "coder"), ("target.removed", "dev")])
    );

    let since = fx.server.seq();
    fx.store().add_model("qwen");
    let events = wait_events(
        fx.addr(),
        since,
        &[("target.restored", "coder"), ("target.restored", "dev")],
    );
    check_system(
        the_event(&events, "target.restored", "coder"),
        "watcher",
        "qwen",
        Some(&digest(&v1)),
    );
    check_system(
        the_event(&events, "target.restored", "dev"),
        "watcher",
        "coder",
        Some(&digest(&v1)),
    );
    for name in ["coder", "dev"] {
        wait_file(fx.store(), name, Some(&v1));
        check_state(&fx.server, name, "active", Some(&digest(&v1)));
    }
    fx.barrier();
    assert_eq!(
        kind_set(&events_after(fx.addr(), since)),
        sorted(&[("target.restored", "coder"), ("target.restored", "dev")])
    );
}

#[test]
fn a_copied_model_shadows_the_alias_and_is_never_touched() {
    let mut fx = Fixture::new(&["qwen", "llama3"]);
    fx.server.create("coder", "qwen");
    let qwen = fx.store().read("qwen").expect("qwen");
    let since = fx.server.seq();

    // `ollama cp llama3 coder`.
    let copied = copy_manifest(fx.store(), "llama3", "coder");
    let events = wait_events(fx.addr(), since, &[("alias.shadowed", "coder")]);
    check_system(
        the_event(&events, "alias.shadowed", "coder"),
        "watcher",
        "qwen",
        None,
    );
    check_state(&fx.server, "coder", "shadowed", None);
    assert_stays(fx.store(), "coder", &copied, Duration::from_millis(300));
    // A re-pull of the target does not write over the model either.
    fx.store().add_model_version("qwen", 2);
    fx.barrier();
    assert_stays(fx.store(), "coder", &copied, Duration::from_millis(100));
    assert_eq!(
        kind_set(&events_after(fx.addr(), since)),
        sorted(&[("alias.shadowed", "coder")])
    );
    // The model at that name is listed as a model.
    let models = fx.server.get("/api/models");
    let names: Vec<&str> = models.expect(200)["models"]
        .as_array()
        .expect("models")
        .iter()
        .map(|m| m["name"].as_str().expect("name"))
        .collect();
    assert!(names.contains(&"coder"), "{names:?}");

    // Nor does a restart.
    let before_restart = fx.server.seq();
    fx.server.restart();
    assert_stays(fx.store(), "coder", &copied, Duration::from_millis(200));
    check_state(&fx.server, "coder", "shadowed", None);
    fx.barrier();
    assert_eq!(kinds(&events_after(fx.addr(), before_restart)), []);

    // `ollama rm coder`: the alias comes back, pointing at qwen's new manifest.
    let since = fx.server.seq();
    std::fs::remove_file(fx.store().manifest_path("coder")).expect("rm");
    let v2 = fx.store().read("qwen").expect("qwen");
    assert_ne!(v2, qwen);
    let events = wait_events(fx.addr(), since, &[("alias.repaired", "coder")]);
    check_system(
        the_event(&events, "alias.repaired", "coder"),
        "watcher",
        "qwen",
        Some(&digest(&v2)),
    );
    wait_file(fx.store(), "coder", Some(&v2));
    check_state(&fx.server, "coder", "active", Some(&digest(&v2)));
}

#[test]
fn a_pulled_model_shadows_the_alias_until_removed() {
    let mut fx = Fixture::new(&["qwen"]);
    fx.server.create("coder", "qwen");
    fx.server.create("dev", "coder");
    let qwen = fx.store().read("qwen").expect("qwen");
    let since = fx.server.seq();

    // `ollama pull coder`: a fresh manifest of its own.
    let pulled = fx.store().add_model("coder");
    assert_ne!(pulled, qwen);
    let events = wait_events(fx.addr(), since, &[("alias.shadowed", "coder")]);
    check_system(
        the_event(&events, "alias.shadowed", "coder"),
        "watcher",
        "qwen",
        None,
    );
    check_state(&fx.server, "coder", "shadowed", None);
    assert_stays(fx.store(), "coder", &pulled, Duration::from_millis(300));
    fx.barrier();
    assert_stays(fx.store(), "coder", &pulled, Duration::from_millis(100));
    // `dev -> coder` now resolves to the model named coder: the model wins.
    let events = events_after(fx.addr(), since);
    assert_eq!(
        kind_set(&events),
        sorted(&[("alias.shadowed", "coder"), ("target.changed", "dev")])
    );
    check_system(
        the_event(&events, "target.changed", "dev"),
        "watcher",
        "coder",
        Some(&digest(&pulled)),
    );
    wait_file(fx.store(), "dev", Some(&pulled));

    fx.server.restart();
    assert_stays(fx.store(), "coder", &pulled, Duration::from_millis(200));
    check_state(&fx.server, "coder", "shadowed", None);

    let since = fx.server.seq();
    fx.store().remove_model("coder");
    let events = wait_events(
        fx.addr(),
        since,
        &[("alias.repaired", "coder"), ("target.changed", "dev")],
    );
    check_system(
        the_event(&events, "alias.repaired", "coder"),
        "watcher",
        "qwen",
        Some(&digest(&qwen)),
    );
    check_system(
        the_event(&events, "target.changed", "dev"),
        "watcher",
        "coder",
        Some(&digest(&qwen)),
    );
    wait_file(fx.store(), "coder", Some(&qwen));
    wait_file(fx.store(), "dev", Some(&qwen));
    check_state(&fx.server, "coder", "active", Some(&digest(&qwen)));
    check_state(&fx.server, "dev", "active", Some(&digest(&qwen)));
}

#[test]
fn a_deleted_alias_file_is_repaired() {
    let mut fx = Fixture::new(&["qwen"]);
    fx.server.create("coder", "qwen");
    let qwen = fx.store().read("qwen").expect("qwen");
    // Deleted once the watcher has caught up, the file's removal is an event
    // of its own (a deletion at once is the next test's case).
    fx.barrier();
    let since = fx.server.seq();

    std::fs::remove_file(fx.store().manifest_path("coder")).expect("rm alias file");
    let events = wait_events(fx.addr(), since, &[("alias.repaired", "coder")]);
    check_system(
        the_event(&events, "alias.repaired", "coder"),
        "watcher",
        "qwen",
        Some(&digest(&qwen)),
    );
    wait_file(fx.store(), "coder", Some(&qwen));
    check_state(&fx.server, "coder", "active", Some(&digest(&qwen)));
    fx.barrier();
    assert_eq!(
        kind_set(&events_after(fx.addr(), since)),
        sorted(&[("alias.repaired", "coder")])
    );
}

#[test]
fn an_alias_file_deleted_right_after_it_was_written_is_repaired() {
    // Deleted at once, some of these files go before the watch on their new
    // directory exists, so no event reports them: the watcher checks what
    // aliasd wrote into a new directory when it lists it.
    let fx = Fixture::new(&["qwen"]);
    let qwen = fx.store().read("qwen").expect("qwen");
    let since = fx.server.seq();
    let aliases: Vec<String> = (0..12).map(|i| format!("quick{i}")).collect();
    for alias in &aliases {
        fx.server.create(alias, "qwen");
        std::fs::remove_file(fx.store().manifest_path(alias)).expect("rm alias file");
    }
    let expected: Vec<(&str, &str)> = aliases
        .iter()
        .map(|a| ("alias.repaired", a.as_str()))
        .collect();
    wait_events(fx.addr(), since, &expected);
    for alias in &aliases {
        wait_file(fx.store(), alias, Some(&qwen));
        check_state(&fx.server, alias, "active", Some(&digest(&qwen)));
    }
}

#[test]
fn changes_made_while_stopped_are_reconciled_at_startup() {
    let mut fx = Fixture::new(&["m1", "m2", "m3", "m4"]);
    fx.server.create("gone", "m1");
    fx.server.create("gone-too", "gone");
    fx.server.create("changed", "m2");
    fx.server.create("deleted", "m3");
    fx.server.create("shadowed", "m4");
    fx.server.create("steady", "m4");
    let m3 = fx.store().read("m3").expect("m3");
    let m4 = fx.store().read("m4").expect("m4");
    let since = fx.server.seq();

    fx.server.stop();
    fx.store().remove_model("m1");
    let m2 = fx.store().add_model_version("m2", 2);
    std::fs::remove_file(fx.store().manifest_path("deleted")).expect("rm");
    let pulled = fx.store().add_model("shadowed");
    fx.server.start_again();

    // Start-up reconciles before it listens: everything is there already.
    let events = events_after(fx.addr(), since);
    assert_eq!(
        kind_set(&events),
        sorted(&[
            ("alias.repaired", "deleted"),
            ("alias.shadowed", "shadowed"),
            ("target.changed", "changed"),
            ("target.removed", "gone"),
            ("target.removed", "gone-too"),
        ])
    );
    let ev = |kind, alias| the_event(&events, kind, alias);
    check_system(ev("target.removed", "gone"), "startup", "m1", None);
    check_system(ev("target.removed", "gone-too"), "startup", "gone", None);
    check_system(
        ev("target.changed", "changed"),
        "startup",
        "m2",
        Some(&digest(&m2)),
    );
    check_system(
        ev("alias.repaired", "deleted"),
        "startup",
        "m3",
        Some(&digest(&m3)),
    );
    check_system(ev("alias.shadowed", "shadowed"), "startup", "m4", None);

    assert_eq!(fx.store().read("gone"), None);
    assert_eq!(fx.store().read("gone-too"), None);
    assert_eq!(fx.store().read("changed").as_deref(), Some(&m2[..]));
    assert_eq!(fx.store().read("deleted").as_deref(), Some(&m3[..]));
    assert_eq!(fx.store().read("shadowed").as_deref(), Some(&pulled[..]));
    assert_eq!(fx.store().read("steady").as_deref(), Some(&m4[..]));
    check_state(&fx.server, "gone", "dangling", None);
    check_state(&fx.server, "gone-too", "dangling", None);
    check_state(&fx.server, "changed", "active", Some(&digest(&m2)));
    check_state(&fx.server, "deleted", "active", Some(&digest(&m3)));
    check_state(&fx.server, "shadowed", "shadowed", None);
    check_state(&fx.server, "steady", "active", Some(&digest(&m4)));

    // The start-up reconcile's own writes cause no watcher events.
    fx.barrier();
    assert_eq!(kinds(&events_after(fx.addr(), since)), kinds(&events));
    assert_stays(fx.store(), "shadowed", &pulled, Duration::from_millis(100));
}

#[test]
fn aliasd_own_writes_cause_no_events() {
    let mut fx = Fixture::new(&["qwen", "llama3"]);
    let since = fx.server.seq();
    let qwen = fx.store().read("qwen").expect("qwen");
    let llama3 = fx.store().read("llama3").expect("llama3");

    fx.server.create("coder", "qwen");
    fx.server.create("dev", "coder");
    fx.server.create("chat", "llama3");
    fx.server.create("coder", "llama3");
    let resp = fx.server.send_json(
        "POST",
        "/api/aliases",
        &json!({"ops": [
            {"op": "delete", "alias": "dev"},
            {"op": "put", "alias": "tmp", "target": "qwen"},
        ]}),
    );
    resp.expect(200);
    fx.server.delete(&alias_path("chat")).expect(200);
    let resp = fx.server.send_json(
        "POST",
        "/api/experimental/aliases",
        &json!({"alias": "exp", "target": "qwen"}),
    );
    resp.expect(200);
    let resp = fx.server.send_json(
        "DELETE",
        "/api/experimental/aliases",
        &json!({"alias": "tmp"}),
    );
    resp.expect(200);

    assert_eq!(fx.store().read("coder").as_deref(), Some(&llama3[..]));
    assert_eq!(fx.store().read("exp").as_deref(), Some(&qwen[..]));
    for gone in ["dev", "chat", "tmp"] {
        assert_eq!(fx.store().read(gone), None, "{gone}");
    }
    // Give the watcher every chance to react, then make sure it has caught up.
    std::thread::sleep(Duration::from_millis(500));
    fx.barrier();

    let events = events_after(fx.addr(), since);
    let api_events: Vec<(String, String)> = [
        ("alias.created", "coder"),
        ("alias.created", "dev"),
        ("alias.created", "chat"),
        ("alias.updated", "coder"),
        ("target.changed", "dev"),
        ("alias.deleted", "dev"),
        ("alias.created", "tmp"),
        ("alias.deleted", "chat"),
        ("alias.created", "exp"),
        ("alias.deleted", "tmp"),
    ]
    .iter()
    .map(|(t, a)| (t.to_string(), a.to_string()))
    .collect();
    assert_eq!(kinds(&events), api_events, "{events:#?}");
    for event in events.iter().filter(|e| e["alias"] != PROBE) {
        assert_ne!(event["actor"], "watcher", "{event}");
        assert!(event["request_id"].is_string(), "{event}");
    }
}

#[test]
fn a_burst_of_changes_settles_without_duplicate_events() {
    let mut fx = Fixture::new(&["hot"]);
    fx.server.create("a", "hot");
    fx.server.create("b", "a");
    let since = fx.server.seq();
    let v1 = fx.store().read("hot").expect("hot");
    // Version 2's blobs, then restore version 1's manifest: two contents to toggle.
    let v2 = fx.store().add_model_version("hot", 2);
    std::fs::write(fx.store().manifest_path("hot"), &v1).expect("write");
    let hot = fx.store().manifest_path("hot");
    let digests: HashMap<String, &str> = HashMap::from([(digest(&v1), "v1"), (digest(&v2), "v2")]);

    // 800 rewrites of `hot` (v2, v1, v2, ...) in place, as Ollama writes a
    // manifest, and 100 unrelated models added then removed: 1,000 changes
    // in about a second.
    let started = Instant::now();
    let mut unrelated = Vec::new();
    let mut n_rewrites = 0u32;
    for i in 0..1000u32 {
        if i % 5 == 4 {
            if i < 500 {
                let name = format!("noise{i}");
                fx.store().add_model(&name);
                unrelated.push(name);
            } else {
                let name = unrelated.pop().expect("an unrelated model");
                fx.store().remove_model(&name);
            }
        } else {
            n_rewrites += 1;
            let bytes = if n_rewrites % 2 == 1 { &v2 } else { &v1 };
            std::fs::write(&hot, bytes).expect("rewrite");
        }
        std::thread::sleep(Duration::from_micros(900));
    }
    assert!(unrelated.is_empty());
    // End on v2.
    std::fs::write(&hot, &v2).expect("rewrite");
    let burst = started.elapsed();

    for name in ["a", "b"] {
        wait_file(fx.store(), name, Some(&v2));
    }
    wait_for("a and b active at v2", WAIT, || {
        ["a", "b"]
            .iter()
            .all(|name| {
                let body = alias(&fx.server, name);
                body["state"] == "active" && body["digest"] == *digest(&v2)
            })
            .then_some(())
    });
    fx.barrier();

    let events: Vec<Value> = events_after(fx.addr(), since)
        .into_iter()
        .filter(|e| e["alias"] != PROBE)
        .collect();
    // The rewrites of `hot` only: nothing for the unrelated models.
    let mut last: HashMap<String, String> = HashMap::new();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for event in &events {
        let name = event["alias"].as_str().expect("alias").to_string();
        assert!(name == "a" || name == "b", "{event}");
        assert_eq!(event["type"], "target.changed", "{event}");
        assert_eq!(event["actor"], "watcher", "{event}");
        let d = event["digest"].as_str().expect("digest").to_string();
        assert!(
            digests.contains_key(&d),
            "a digest of neither version (a torn read?): {event}"
        );
        assert_ne!(
            last.insert(name.clone(), d),
            Some(event["digest"].as_str().expect("digest").to_string()),
            "two consecutive events with the same digest: {events:#?}"
        );
        *counts.entry(name).or_default() += 1;
    }
    // At most one event per alias per reconcile, and a reconcile gathers
    // changes for at least 40 ms (the debounce); allow slack for a slow machine.
    let max_events = burst.as_millis() as usize / 40 + 5;
    for name in ["a", "b"] {
        let n = counts.get(name).copied().unwrap_or(0);
        assert!(
            (1..=max_events).contains(&n),
            "{n} events for {name} in a {burst:?} burst (at most {max_events}): {events:#?}"
        );
        assert_eq!(last[name], digest(&v2), "the last event is the final state");
    }
    eprintln!(
        "burst of 1000 changes in {burst:?}: {} events for a, {} for b",
        counts["a"], counts["b"]
    );
}

/// Creates `coder -> qwen`; returns its seq.
fn put_coder_to_qwen(server: &Server) -> u64 {
    let resp = server.put_alias("coder", "qwen");
    resp.expect(201);
    resp.json["seq"].as_u64().expect("seq")
}

#[test]
fn a_removed_manifests_directory_is_followed_by_polling() {
    let store = TestStore::with_models(&["qwen"]);
    let server = Server::start(store.clone());
    let since = put_coder_to_qwen(&server);
    let v1 = store.read("qwen").expect("qwen");
    let polled = |addr| {
        let metrics = http(addr, "GET", "/metrics", &[], None).body;
        let metrics = String::from_utf8_lossy(&metrics).into_owned();
        metrics.contains("\naliasd_store_polled 1\n")
    };
    assert!(!polled(server.addr()), "watched, not polled, at first");

    // `rm -rf` of the whole manifests directory takes its watch with it.
    std::fs::remove_dir_all(store.root().join("manifests")).expect("rm -rf manifests");
    wait_events(server.addr(), since, &[("target.removed", "coder")]);
    // Ollama pulls the model again, into a new manifests directory; a poll
    // (every 2 s) finds it.
    store.add_model("qwen");
    let events = wait_events_for(
        Duration::from_secs(10),
        server.addr(),
        since,
        &[("target.removed", "coder"), ("target.restored", "coder")],
    );
    check_system(
        the_event(&events, "target.restored", "coder"),
        "watcher",
        "qwen",
        Some(&digest(&v1)),
    );
    wait_file(&store, "coder", Some(&v1));
    let stderr = server.stderr();
    assert!(stderr.contains("was removed or moved away"), "{stderr}");
    assert!(polled(server.addr()));
}

#[test]
fn polling_notices_a_removed_target() {
    let store = TestStore::with_models(&["qwen"]);
    let server = Server::start_with_args(store.clone(), &["--poll-ms", "100"]);
    let stderr = server.stderr();
    assert!(stderr.contains("polling"), "{stderr}");
    assert!(stderr.contains("100ms"), "{stderr}");
    let since = put_coder_to_qwen(&server);
    let qwen = store.read("qwen").expect("qwen");
    assert_eq!(store.read("coder").as_deref(), Some(&qwen[..]));

    store.remove_model("qwen");
    let events = wait_events(server.addr(), since, &[("target.removed", "coder")]);
    check_system(
        the_event(&events, "target.removed", "coder"),
        "watcher",
        "qwen",
        None,
    );
    wait_file(&store, "coder", None);
    let body = http(server.addr(), "GET", &alias_path("coder"), &[], None);
    assert_eq!(body.expect(200)["state"], "dangling");

    let v2 = store.add_model_version("qwen", 2);
    let events = wait_events(server.addr(), since, &[("target.restored", "coder")]);
    check_system(
        the_event(&events, "target.restored", "coder"),
        "watcher",
        "qwen",
        Some(&digest(&v2)),
    );
    wait_file(&store, "coder", Some(&v2));
    assert_eq!(
        kind_set(&events_after(server.addr(), since)),
        sorted(&[("target.removed", "coder"), ("target.restored", "coder")])
    );
}
