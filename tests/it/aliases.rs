//! The registry core over HTTP (issue 3): every route of SPEC §5 that manages
//! aliases, its status codes and JSON shapes, and what it does to the store.

use serde_json::{json, Value};

use crate::support::{alias_path, digest, Server, TestStore};

/// The keys of an Alias body (SPEC §5).
const ALIAS_KEYS: [&str; 9] = [
    "alias",
    "created_at",
    "digest",
    "prefix_matching",
    "resolved",
    "seq",
    "state",
    "target",
    "updated_at",
];

fn keys(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

fn names(aliases: &[Value]) -> Vec<&str> {
    aliases
        .iter()
        .map(|a| a["alias"].as_str().expect("alias is a string"))
        .collect()
}

/// The events of `/api/history` for one alias.
fn history(server: &Server, alias: &str) -> Vec<Value> {
    let resp = server.get(&format!("/api/history?alias={alias}"));
    resp.expect(200)["events"]
        .as_array()
        .unwrap_or_else(|| panic!("{resp:?}"))
        .clone()
}

/// The aliases `/api/aliases?{query}` lists.
fn list(server: &Server, query: &str) -> Vec<String> {
    let resp = server.get(&format!("/api/aliases?{query}"));
    let aliases = resp.expect(200)["aliases"]
        .as_array()
        .unwrap_or_else(|| panic!("{resp:?}"))
        .clone();
    names(&aliases).into_iter().map(String::from).collect()
}

fn event_types(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["type"].as_str().expect("type"))
        .collect()
}

/// Asserts an Alias body: exactly the SPEC's keys, and these values.
#[track_caller]
fn check_alias(body: &Value, alias: &str, target: &str, resolved: Option<&str>, state: &str) {
    assert_eq!(keys(body), ALIAS_KEYS, "{body}");
    assert_eq!(body["alias"], alias, "{body}");
    assert_eq!(body["target"], target, "{body}");
    assert_eq!(body["resolved"], json!(resolved), "{body}");
    assert_eq!(body["state"], state, "{body}");
    assert_eq!(body["prefix_matching"], false, "{body}");
    assert!(body["seq"].as_u64().is_some_and(|s| s > 0), "{body}");
    for time in ["created_at", "updated_at"] {
        let time = body[time].as_str().unwrap_or_else(|| panic!("{body}"));
        assert!(time.ends_with('Z') && time.contains('T'), "{body}");
    }
}

#[test]
fn experimental_routes_match_ollama_shapes() {
    let server = Server::with_models(&["llama3", "qwen"]);
    let path = "/api/experimental/aliases";
    assert_eq!(server.get(path).expect(200), &json!({ "aliases": [] }));

    for (alias, target) in [("zeta", "llama3"), ("Alpha", "qwen"), ("mid", "zeta")] {
        let resp = server.send_json("POST", path, &json!({ "alias": alias, "target": target }));
        assert_eq!(
            resp.expect(200),
            &json!({ "alias": alias, "target": target })
        );
    }
    let resp = server.send_json(
        "POST",
        path,
        &json!({ "alias": "my-", "target": "llama3", "prefix_matching": true }),
    );
    assert_eq!(
        resp.expect(200),
        &json!({ "alias": "my-", "target": "llama3" })
    );
    assert_eq!(
        server.get(path).expect(200),
        &json!({ "aliases": [
            { "alias": "Alpha", "target": "qwen" },
            { "alias": "mid", "target": "zeta" },
            { "alias": "my-", "target": "llama3", "prefix_matching": true },
            { "alias": "zeta", "target": "llama3" },
        ]})
    );
    // Creation materialized the exact aliases, not the prefix.
    assert_eq!(server.store.read("Alpha"), server.store.read("qwen"));
    assert_eq!(server.store.read("mid"), server.store.read("llama3"));
    assert_eq!(server.store.read("my-"), None);

    let resp = server.send_json("POST", path, &json!({ "alias": "x", "target": "nothing" }));
    resp.expect_error(404, "nothing");
    let resp = server.send_json("POST", path, &json!({ "alias": "x" }));
    resp.expect_error(400, "target");

    let resp = server.send_json("DELETE", path, &json!({ "alias": "Alpha" }));
    assert_eq!(resp.expect(200), &json!({ "deleted": true }));
    assert_eq!(server.store.read("Alpha"), None);
    let resp = server.send_json("DELETE", path, &json!({ "alias": "alpha" }));
    resp.expect_error(404, "alpha");
    // A model is not an alias: 404, and its file stays.
    let before = server.store.read("qwen");
    let resp = server.send_json("DELETE", path, &json!({ "alias": "qwen" }));
    resp.expect_error(404, "qwen");
    assert_eq!(server.store.read("qwen"), before);
    assert!(before.is_some());
}

#[test]
fn put_creates_then_updates_and_is_idempotent() {
    let server = Server::with_models(&["llama3", "qwen"]);
    assert_eq!(server.seq(), 0);

    let resp = server.put_alias("Coder", "llama3");
    let body = resp.expect(201).clone();
    check_alias(&body, "Coder", "llama3", Some("llama3"), "active");
    assert_eq!(body["seq"], 1);
    assert_eq!(
        body["digest"],
        digest(&server.store.read("llama3").unwrap())
    );
    assert_eq!(resp.header("etag"), Some("\"1\""));
    assert_eq!(server.seq(), 1);

    // Same target, any spelling of the alias: 200, unchanged, no new event.
    for spelling in ["Coder", "coder", "registry.ollama.ai/library/CODER:latest"] {
        let resp = server.put_alias(spelling, "llama3");
        assert_eq!(resp.expect(200), &body, "{spelling}");
        assert_eq!(resp.header("etag"), Some("\"1\""));
    }
    assert_eq!(server.seq(), 1);
    assert_eq!(event_types(&history(&server, "coder")), ["alias.created"]);

    // A new target: 200, updated, new seq.
    let resp = server.put_alias("coder", "qwen");
    let updated = resp.expect(200).clone();
    check_alias(&updated, "Coder", "qwen", Some("qwen"), "active");
    assert_eq!(updated["seq"], 2);
    assert_eq!(updated["created_at"], body["created_at"]);
    assert_eq!(resp.header("etag"), Some("\"2\""));
    // The file stays at the path of the first spelling; none appears at another.
    assert_eq!(server.store.read("Coder"), server.store.read("qwen"));
    let files = server.store.snapshot();
    let alias_files: Vec<_> = files
        .keys()
        .filter(|p| p.to_string_lossy().to_lowercase().contains("/coder/"))
        .collect();
    assert_eq!(alias_files.len(), 1, "{alias_files:?}");
    let events = history(&server, "coder");
    assert_eq!(event_types(&events), ["alias.created", "alias.updated"]);
    assert_eq!(events[1]["previous_target"], "llama3");

    // GET: the same body and ETag, whatever the spelling; 404 otherwise.
    for spelling in ["Coder", "CODER", "coder:latest", "library/coder"] {
        let resp = server.get(&alias_path(spelling));
        assert_eq!(resp.expect(200), &updated, "{spelling}");
        assert_eq!(resp.header("etag"), Some("\"2\""));
    }
    server
        .get(&alias_path("nobody"))
        .expect_error(404, "nobody");
    // A model is not an alias.
    server
        .get(&alias_path("llama3"))
        .expect_error(404, "llama3");
}

#[test]
fn put_and_delete_honour_preconditions() {
    let server = Server::with_models(&["m1", "m2"]);
    let path = alias_path("a");
    let target = |t: &str| json!({ "target": t });

    // If-None-Match: * creates only when absent.
    let resp = server.send_json_with("PUT", &path, &[("If-None-Match", "*")], &target("m1"));
    assert_eq!(resp.expect(201)["seq"], 1);
    let resp = server.send_json_with("PUT", &path, &[("If-None-Match", "*")], &target("m2"));
    resp.expect_error(412, "exists");
    // If-Match on an alias that does not exist.
    let resp = server.send_json_with(
        "PUT",
        &alias_path("b"),
        &[("If-Match", "\"1\"")],
        &target("m1"),
    );
    resp.expect_error(412, "does not exist");
    assert_eq!(server.store.read("b"), None);

    // If-Match with a stale tag: 412; with a garbled one: 400 (issue 17);
    // nothing changes.
    for tag in ["\"7\"", "\"0\""] {
        let resp = server.send_json_with("PUT", &path, &[("If-Match", tag)], &target("m2"));
        resp.expect_error(412, "if-match");
    }
    let resp = server.send_json_with("PUT", &path, &[("If-Match", "nonsense")], &target("m2"));
    resp.expect_error(400, "if-match");
    assert_eq!(server.seq(), 1);
    assert_eq!(server.store.read("a"), server.store.read("m1"));

    // The current tag: the update goes through.
    let resp = server.send_json_with("PUT", &path, &[("If-Match", "\"1\"")], &target("m2"));
    assert_eq!(resp.expect(200)["target"], "m2");
    assert_eq!(resp.header("etag"), Some("\"2\""));
    assert_eq!(server.store.read("a"), server.store.read("m2"));

    // DELETE with a stale tag: 412 and the file stays; with the current one: gone.
    let resp = server.request("DELETE", &path, &[("If-Match", "\"1\"")], None);
    resp.expect_error(412, "seq 2");
    assert_eq!(server.store.read("a"), server.store.read("m2"));
    let resp = server.request("DELETE", &path, &[("If-Match", "\"2\"")], None);
    assert_eq!(resp.expect(200), &json!({ "deleted": true }));
    assert_eq!(server.store.read("a"), None);
    server.delete(&path).expect_error(404, "\"a\"");
}

#[test]
fn list_is_sorted_and_filters_by_target_and_state() {
    let server = Server::with_models(&["llama3", "qwen"]);
    for (alias, target) in [
        ("b", "llama3"),
        ("C", "qwen"),
        ("a", "b"),
        ("team/z:v1", "llama3"),
        ("D", "b"),
    ] {
        server.create(alias, target);
    }
    let all = server.aliases();
    assert_eq!(names(&all), ["a", "b", "C", "D", "team/z:v1"]);
    for alias in &all {
        assert_eq!(keys(alias), ALIAS_KEYS);
        assert_eq!(alias["state"], "active");
    }
    assert_eq!(all[0]["resolved"], "llama3");
    assert_eq!(all[2]["resolved"], "qwen");

    // `target` is the direct target, in any spelling.
    assert_eq!(list(&server, "target=b"), ["a", "D"]);
    assert_eq!(
        list(&server, "target=registry.ollama.ai/library/LLAMA3:latest"),
        ["b", "team/z:v1"]
    );
    assert_eq!(list(&server, "target=nothing"), Vec::<String>::new());
    assert_eq!(list(&server, "state=active").len(), 5);
    assert_eq!(list(&server, "state=dangling"), Vec::<String>::new());
    assert_eq!(
        list(&server, "state=shadowed&target=qwen"),
        Vec::<String>::new()
    );
    assert_eq!(list(&server, "state=active&target=qwen"), ["C"]);
    // Time travel: the registry right after an event.
    assert_eq!(list(&server, "at_seq=0"), Vec::<String>::new());
    assert_eq!(list(&server, "at_seq=2"), ["b", "C"]);
    assert_eq!(list(&server, "at_seq=3&target=b"), ["a"]);
    let resp = server.put_alias("a", "qwen");
    assert_eq!(resp.expect(200)["seq"], 6);
    let resp = server.get("/api/aliases?at_seq=5");
    let then = resp.expect(200)["aliases"].as_array().unwrap().clone();
    assert_eq!(then, all);
    server
        .get("/api/aliases?at_seq=x")
        .expect_error(400, "at_seq");
    server
        .get("/api/aliases?state=bogus")
        .expect_error(400, "bogus");
    server
        .get("/api/aliases?target=a%20b")
        .expect_error(400, "a b");
}

#[test]
fn materialized_aliases_are_byte_copies_of_the_model_manifest() {
    let server = Server::with_models(&["llama3", "team/big:70b"]);
    let model = server.store.read("llama3").unwrap();
    assert!(
        String::from_utf8_lossy(&model).contains(r#""annotations":{"x":"y""#),
        "the fixture carries a field Ollama's manifest type does not have"
    );

    let body = server.create("coder", "llama3");
    assert_eq!(server.store.read("coder").as_deref(), Some(&model[..]));
    assert_eq!(body["digest"], digest(&model));
    // A chain, a namespaced alias with a tag, and a namespaced target.
    server.create("chained", "coder");
    server.create("team/coder:v1", "chained");
    server.create("big", "team/big:70b");
    assert_eq!(server.store.read("chained").as_deref(), Some(&model[..]));
    assert_eq!(
        server.store.read("team/coder:v1").as_deref(),
        Some(&model[..])
    );
    assert_eq!(server.store.read("big"), server.store.read("team/big:70b"));
    let listed = server.aliases();
    for alias in &listed {
        let resolved = alias["resolved"].as_str().unwrap();
        let bytes = server.store.read(resolved).unwrap();
        assert_eq!(alias["digest"], digest(&bytes), "{alias}");
    }
    // The copies are not mistaken for models.
    let resp = server.get("/api/models");
    let models = resp.expect(200)["models"].as_array().unwrap();
    assert_eq!(models.len(), 2, "{resp:?}");
}

#[test]
fn retargeting_rematerializes_chained_aliases() {
    let server = Server::with_models(&["m1", "m2"]);
    server.create("a", "m1");
    let b = server.create("b", "a");
    let c = server.create("c", "b");
    let m2 = server.store.read("m2").unwrap();

    let resp = server.put_alias("a", "m2");
    assert_eq!(resp.expect(200)["target"], "m2");
    // After the response every file in the chain is already the new model's.
    for alias in ["a", "b", "c"] {
        assert_eq!(
            server.store.read(alias).as_deref(),
            Some(&m2[..]),
            "{alias}"
        );
    }
    for (alias, before) in [("b", &b), ("c", &c)] {
        let resp = server.get(&alias_path(alias));
        let now = resp.expect(200);
        assert_eq!(now["resolved"], "m2");
        assert_eq!(now["target"], before["target"]);
        assert_eq!(now["digest"], digest(&m2));
        assert!(now["seq"].as_u64() > before["seq"].as_u64(), "{now}");
        assert_eq!(resp.header("etag"), Some(&*format!("\"{}\"", now["seq"])));
        assert_eq!(
            event_types(&history(&server, alias)),
            ["alias.created", "target.changed"]
        );
    }
}

#[test]
fn delete_removes_only_the_alias_file() {
    let server = Server::with_models(&["llama3", "qwen"]);
    let pristine = server.store.snapshot();
    assert_eq!(pristine.len(), 6, "two manifests and four blobs");

    server.create("a", "llama3");
    server.create("team/x:v1", "qwen");
    server.create("c", "a");
    let with_aliases = server.store.snapshot();
    assert_eq!(with_aliases.len(), 9);

    let resp = server.delete(&alias_path("c"));
    assert_eq!(resp.expect(200), &json!({ "deleted": true }));
    assert_eq!(server.store.read("c"), None);
    let mut expected = with_aliases.clone();
    expected.retain(|path, _| !path.ends_with("library/c/latest"));
    assert_eq!(server.store.snapshot(), expected);

    for alias in ["A", "team/x:v1"] {
        let resp = server.delete(&alias_path(alias));
        assert_eq!(resp.expect(200), &json!({ "deleted": true }), "{alias}");
    }
    // Every model and blob is as it was, byte for byte, and nothing else is left.
    assert_eq!(server.store.snapshot(), pristine);
    assert!(server.aliases().is_empty());

    // Deleting twice, an unknown alias, or a model: 404, and nothing changes.
    server.delete(&alias_path("a")).expect_error(404, "\"a\"");
    server
        .delete(&alias_path("llama3"))
        .expect_error(404, "llama3");
    assert_eq!(server.store.snapshot(), pristine);
}

#[test]
fn delete_of_a_depended_on_alias_conflicts() {
    let server = Server::with_models(&["m"]);
    server.create("base", "m");
    server.create("dependent-one", "base");
    server.create("dependent-two", "base");
    let seq = server.seq();
    let before = server.store.snapshot();

    let message = server
        .delete(&alias_path("base"))
        .expect_error(409, "dependent-one");
    assert!(message.contains("dependent-two"), "{message}");
    let resp = server.send_json(
        "DELETE",
        "/api/experimental/aliases",
        &json!({ "alias": "base" }),
    );
    resp.expect_error(409, "dependent-one");
    assert_eq!(server.seq(), seq);
    assert_eq!(server.store.snapshot(), before);
    assert_eq!(server.aliases().len(), 3);
}

#[test]
fn an_alias_never_shadows_a_model() {
    let server = Server::with_models(&["llama3", "qwen"]);
    let before = server.store.snapshot();
    for alias in [
        "llama3",
        "LLAMA3",
        "llama3:latest",
        "library/llama3",
        "registry.ollama.ai/library/llama3:latest",
    ] {
        let resp = server.put_alias(alias, "qwen");
        resp.expect_error(409, "llama3");
    }
    let resp = server.send_json(
        "POST",
        "/api/experimental/aliases",
        &json!({ "alias": "Llama3", "target": "qwen" }),
    );
    resp.expect_error(409, "llama3");
    assert_eq!(server.store.snapshot(), before);
    assert_eq!(server.seq(), 0);
}

#[test]
fn unknown_targets_self_aliases_and_cycles_are_refused() {
    let server = Server::with_models(&["m"]);
    server
        .put_alias("a", "nothing")
        .expect_error(404, "nothing");
    server.put_alias("a", "a").expect_error(400, "itself");
    server
        .put_alias("A", "a:latest")
        .expect_error(400, "itself");

    server.create("a", "m");
    server.create("b", "a");
    server.create("c", "b");
    let seq = server.seq();
    let before = server.store.snapshot();
    server.put_alias("a", "c").expect_error(400, "cycle");
    server.put_alias("a", "b").expect_error(400, "cycle");
    assert_eq!(server.seq(), seq);
    assert_eq!(server.store.snapshot(), before);
    let a = server.get(&alias_path("a"));
    assert_eq!(a.expect(200)["target"], "m");
}

#[test]
fn create_checks_in_the_specs_order() {
    let server = Server::with_models(&["llama3"]);
    server.create("a", "llama3");
    // A bad name comes first, then alias == target, then shadowing a model,
    // then an unknown target, then a cycle.
    server.put_alias("a b", "nothing").expect_error(400, "a b");
    server.put_alias("ok", "a b").expect_error(400, "a b");
    server
        .put_alias("llama3", "llama3")
        .expect_error(400, "itself");
    server
        .put_alias("nothing", "nothing")
        .expect_error(400, "itself");
    server
        .put_alias("llama3", "nothing")
        .expect_error(409, "llama3");
    server.put_alias("llama3", "a").expect_error(409, "llama3");
    server
        .put_alias("b", "nothing")
        .expect_error(404, "nothing");
    server.create("b", "a");
    server.put_alias("a", "b").expect_error(400, "cycle");
    assert_eq!(server.seq(), 2);
}

#[test]
fn bad_names_are_refused_and_touch_nothing() {
    let server = Server::with_models(&["m"]);
    let before = server.store.snapshot_base();

    // Raw request paths, so nothing normalizes them on the way: the path, a
    // fragment the message must name, and whether it is a bad prefix too
    // (`a/` is a fine prefix: it matches `a/anything`).
    let paths = [
        ("/api/aliases/../../etc/passwd", "..", true),
        ("/api/aliases/a/../../b", "..", true),
        ("/api/aliases/..", "..", true),
        ("/api/aliases/%2e%2e/x", "..", true),
        ("/api/aliases/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd", "..", true),
        ("/api/aliases/a%20b", "a b", true),
        ("/api/aliases/m@sha256:abc", "@", true),
        ("/api/aliases//abs", "/abs", true),
        ("/api/aliases/a%00b", "a", true),
        ("/api/aliases/.hidden", ".hidden", true),
        ("/api/aliases/a/", "a/", false),
        ("/api/aliases/a/b/c/d", "a/b/c/d", false),
    ];
    let body = json!({ "target": "m" });
    let prefix = json!({ "target": "m", "prefix_matching": true });
    for (path, fragment, bad_prefix) in paths {
        server
            .send_json("PUT", path, &body)
            .expect_error(400, fragment);
        if bad_prefix {
            server
                .send_json("PUT", path, &prefix)
                .expect_error(400, fragment);
            server.get(path).expect_error(400, fragment);
        }
        let resp = server.delete(path);
        assert!(resp.status == 400 || resp.status == 404, "{path}: {resp:?}");
        resp.expect_error(resp.status, "");
    }
    for alias in ["../../etc/passwd", "..", "a b", "m@sha256:abc", "/abs", ""] {
        let resp = server.send_json(
            "POST",
            "/api/experimental/aliases",
            &json!({ "alias": alias, "target": "m" }),
        );
        assert_eq!(resp.status, 400, "{alias:?}: {resp:?}");
        resp.expect_error(400, "");
        let resp = server.send_json(
            "POST",
            "/api/aliases",
            &json!({ "ops": [
                { "op": "put", "alias": "fine", "target": "m" },
                { "op": "put", "alias": alias, "target": "m" },
            ]}),
        );
        resp.expect_error(400, "op 1");
        // As a target.
        let resp = server.put_alias("fine", alias);
        assert_eq!(resp.status, 400, "target {alias:?}: {resp:?}");
    }
    assert_eq!(server.store.snapshot_base(), before);
    assert_eq!(server.seq(), 0);
    assert!(server.aliases().is_empty());
}

#[test]
fn batch_applies_every_op() {
    let server = Server::with_models(&["m1", "m2"]);
    server.create("old", "m1");
    server.create("keep", "m1");
    let seq = server.seq();

    let resp = server.send_json(
        "POST",
        "/api/aliases",
        &json!({ "ops": [
            { "op": "put", "alias": "a", "target": "m1" },
            { "op": "delete", "alias": "old" },
            { "op": "put", "alias": "b", "target": "a" },
            { "op": "put", "alias": "keep", "target": "m2" },
            { "op": "put", "alias": "p-", "target": "b", "prefix_matching": true },
        ]}),
    );
    let body = resp.expect(200);
    assert_eq!(keys(body), ["aliases"]);
    let aliases = body["aliases"].as_array().unwrap();
    assert_eq!(names(aliases), ["a", "b", "keep", "p-"]);
    check_alias(&aliases[0], "a", "m1", Some("m1"), "active");
    check_alias(&aliases[1], "b", "a", Some("m1"), "active");
    check_alias(&aliases[2], "keep", "m2", Some("m2"), "active");
    assert_eq!(aliases[3]["prefix_matching"], true);
    // One event per change.
    assert_eq!(server.seq(), seq + 5);
    assert_eq!(server.store.read("old"), None);
    assert_eq!(server.store.read("b"), server.store.read("m1"));
    assert_eq!(server.store.read("keep"), server.store.read("m2"));
    assert_eq!(names(&server.aliases()), ["a", "b", "keep", "p-"]);
}

#[test]
fn a_large_batch_materializes_every_alias_and_withdraws_every_deleted_one() {
    // Large enough that the finisher spreads the files over several threads.
    const N: usize = 100;
    let server = Server::with_models(&["m1", "m2"]);
    let put = |target: &str| -> Vec<Value> {
        (0..N)
            .map(|i| json!({ "op": "put", "alias": format!("many-{i}"), "target": target }))
            .collect()
    };
    server
        .send_json("POST", "/api/aliases", &json!({ "ops": put("m1") }))
        .expect(200);
    for i in 0..N {
        assert_eq!(
            server.store.read(&format!("many-{i}")),
            server.store.read("m1"),
            "many-{i}"
        );
    }
    server
        .send_json("POST", "/api/aliases", &json!({ "ops": put("m2") }))
        .expect(200);
    for i in 0..N {
        assert_eq!(
            server.store.read(&format!("many-{i}")),
            server.store.read("m2"),
            "many-{i}"
        );
    }
    let deletes: Vec<Value> = (0..N)
        .filter(|i| i % 2 == 0)
        .map(|i| json!({ "op": "delete", "alias": format!("many-{i}") }))
        .collect();
    server
        .send_json("POST", "/api/aliases", &json!({ "ops": deletes }))
        .expect(200);
    for i in 0..N {
        let expected = if i % 2 == 0 {
            None
        } else {
            server.store.read("m2")
        };
        assert_eq!(
            server.store.read(&format!("many-{i}")),
            expected,
            "many-{i}"
        );
    }
    assert_eq!(server.seq(), (N + N + N / 2) as u64);
}

#[test]
fn a_failing_batch_applies_nothing_and_names_the_op() {
    let server = Server::with_models(&["m"]);
    server.create("base", "m");
    server.create("dep", "base");
    let seq = server.seq();
    let listed = server.aliases();
    let files = server.store.snapshot();
    let post = |ops: Value| server.send_json("POST", "/api/aliases", &json!({ "ops": ops }));

    let resp = post(json!([
        { "op": "put", "alias": "x", "target": "m" },
        { "op": "put", "alias": "y", "target": "x" },
        { "op": "put", "alias": "z", "target": "missing" },
    ]));
    let message = resp.expect_error(404, "op 2");
    assert!(message.contains("missing"), "{message}");
    let resp = post(json!([
        { "op": "put", "alias": "x", "target": "m" },
        { "op": "delete", "alias": "base" },
    ]));
    resp.expect_error(409, "op 1");
    let resp = post(json!([
        { "op": "delete", "alias": "dep" },
        { "op": "put", "alias": "m", "target": "base" },
    ]));
    resp.expect_error(409, "op 1");
    let resp = post(json!([
        { "op": "put", "alias": "x", "target": "base" },
        { "op": "put", "alias": "base", "target": "x" },
    ]));
    resp.expect_error(400, "op 1");
    let resp = post(json!([{ "op": "delete", "alias": "nobody" }]));
    resp.expect_error(404, "op 0");
    // Malformed batches.
    post(json!([])).expect_error(400, "op");
    post(json!([{ "op": "rename", "alias": "x" }])).expect_error(400, "rename");
    let resp = server.send_json("POST", "/api/aliases", &json!({ "ops": "x" }));
    resp.expect_error(400, "");

    assert_eq!(server.seq(), seq);
    assert_eq!(server.aliases(), listed);
    assert_eq!(server.store.snapshot(), files);
}

#[test]
fn a_batch_refuses_an_alias_named_twice() {
    let server = Server::with_models(&["m1", "m2"]);
    let post = |ops: Value| server.send_json("POST", "/api/aliases", &json!({ "ops": ops }));
    let resp = post(json!([
        { "op": "put", "alias": "a", "target": "m1" },
        { "op": "put", "alias": "b", "target": "m1" },
        { "op": "put", "alias": "A:latest", "target": "m2" },
    ]));
    resp.expect_error(400, "twice");
    let resp = post(json!([
        { "op": "put", "alias": "a", "target": "m1" },
        { "op": "delete", "alias": "a" },
    ]));
    resp.expect_error(400, "twice");
    assert_eq!(server.seq(), 0);
    assert!(server.aliases().is_empty());
    assert_eq!(server.store.read("a"), None);
}

#[test]
fn a_batch_deletes_an_alias_together_with_its_dependents() {
    let server = Server::with_models(&["m"]);
    let pristine = server.store.snapshot();
    server.create("base", "m");
    server.create("mid", "base");
    server.create("top", "mid");
    server.create("other", "m");

    // The order of the ops does not matter: validated against the end state.
    let resp = server.send_json(
        "POST",
        "/api/aliases",
        &json!({ "ops": [
            { "op": "delete", "alias": "top" },
            { "op": "delete", "alias": "mid" },
            { "op": "delete", "alias": "base" },
        ]}),
    );
    assert_eq!(resp.expect(200), &json!({ "aliases": [] }));
    assert_eq!(names(&server.aliases()), ["other"]);
    for alias in ["base", "mid", "top"] {
        assert_eq!(server.store.read(alias), None, "{alias}");
    }
    server.delete(&alias_path("other")).expect(200);
    assert_eq!(server.store.snapshot(), pristine);
}

#[test]
fn resolve_follows_models_aliases_chains_and_prefixes() {
    let server = Server::with_models(&["llama3", "qwen", "my-model", "team/big:70b"]);
    let llama3 = digest(&server.store.read("llama3").unwrap());
    let qwen = digest(&server.store.read("qwen").unwrap());
    server.create("a", "llama3");
    server.create("b", "a");
    server.create("team/coder:v1", "b");
    server.create("big", "team/big:70b");
    server.create("my-exact", "qwen");
    for (prefix, target) in [("my-", "llama3"), ("My-Long-", "qwen")] {
        let resp = server.send_json(
            "PUT",
            &alias_path(prefix),
            &json!({ "target": target, "prefix_matching": true }),
        );
        let body = resp.expect(201);
        assert_eq!(body["prefix_matching"], true);
        assert_eq!(body["alias"], prefix);
        assert_eq!(
            server.store.read(prefix),
            None,
            "prefixes are not materialized"
        );
    }

    let resolve = |name: &str| server.get(&format!("/api/resolve/{name}"));
    let check = |name: &str, expected: Value| {
        let resp = resolve(name);
        assert_eq!(resp.expect(200), &expected, "{name}");
    };
    check(
        "llama3",
        json!({ "name": "llama3", "resolved": "llama3", "chain": ["llama3"], "via": "model", "digest": llama3 }),
    );
    check(
        "registry.ollama.ai/library/LLAMA3:latest",
        json!({ "name": "LLAMA3", "resolved": "llama3", "chain": ["LLAMA3"], "via": "model", "digest": llama3 }),
    );
    check(
        "team/coder:v1",
        json!({
            "name": "team/coder:v1",
            "resolved": "llama3",
            "chain": ["team/coder:v1", "b", "a", "llama3"],
            "via": "alias",
            "digest": llama3,
        }),
    );
    check(
        "big",
        json!({
            "name": "big",
            "resolved": "team/big:70b",
            "chain": ["big", "team/big:70b"],
            "via": "alias",
            "digest": digest(&server.store.read("team/big:70b").unwrap()),
        }),
    );
    // Prefixes: longest first, case-insensitively; an exact alias and a model win.
    check(
        "my-thing",
        json!({ "name": "my-thing", "resolved": "llama3", "chain": ["my-thing", "llama3"], "via": "prefix", "digest": llama3 }),
    );
    check(
        "MY-LONG-x",
        json!({ "name": "MY-LONG-x", "resolved": "qwen", "chain": ["MY-LONG-x", "qwen"], "via": "prefix", "digest": qwen }),
    );
    check(
        "my-exact",
        json!({ "name": "my-exact", "resolved": "qwen", "chain": ["my-exact", "qwen"], "via": "alias", "digest": qwen }),
    );
    let resp = resolve("my-model");
    assert_eq!(resp.expect(200)["via"], "model");

    resolve("nothing").expect_error(404, "nothing");
}

#[test]
fn dangling_aliases_after_their_model_goes_and_comes_back() {
    let mut server = Server::with_models(&["m1", "m2"]);
    server.create("d", "m1");
    server.create("e", "d");
    server.create("k", "m2");

    server.stop();
    server.store.remove_model("m1");
    server.start_again();

    let resp = server.get(&alias_path("d"));
    check_alias(resp.expect(200), "d", "m1", None, "dangling");
    assert_eq!(list(&server, "state=dangling"), ["d", "e"]);
    assert_eq!(list(&server, "state=active"), ["k"]);
    // Dangling aliases have no file, and do not resolve.
    assert_eq!(server.store.read("d"), None);
    assert_eq!(server.store.read("e"), None);
    let message = server.get("/api/resolve/e").expect_error(404, "dangling");
    assert!(message.contains("m1"), "{message}");
    assert_eq!(
        event_types(&history(&server, "d")),
        ["alias.created", "target.removed"]
    );

    server.stop();
    let m1 = server.store.add_model("m1");
    server.start_again();
    assert_eq!(list(&server, "state=active"), ["d", "e", "k"]);
    assert_eq!(server.store.read("d").as_deref(), Some(&m1[..]));
    assert_eq!(server.store.read("e").as_deref(), Some(&m1[..]));
    assert_eq!(server.get("/api/resolve/e").expect(200)["resolved"], "m1");
}

#[test]
fn models_list_sizes_digests_and_aliases() {
    let server = Server::with_models(&["llama3", "qwen2.5-coder:32b", "team/m:v2"]);
    server.create("a", "llama3");
    server.create("b", "a");
    server.create("Z", "b");
    server.create("coder", "qwen2.5-coder:32b");
    let resp = server.send_json(
        "PUT",
        &alias_path("p-"),
        &json!({ "target": "llama3", "prefix_matching": true }),
    );
    resp.expect(201);

    let resp = server.get("/api/models");
    let body = resp.expect(200);
    assert_eq!(keys(body), ["models"]);
    let models = body["models"].as_array().unwrap();
    let shown: Vec<&str> = models.iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(shown, ["llama3", "qwen2.5-coder:32b", "team/m:v2"]);
    for model in models {
        let name = model["name"].as_str().unwrap();
        assert_eq!(
            keys(model),
            ["aliases", "digest", "modified_at", "name", "size"]
        );
        assert_eq!(model["size"], TestStore::model_size(name, 1), "{name}");
        assert_eq!(
            model["digest"],
            digest(&server.store.read(name).unwrap()),
            "{name}"
        );
        assert!(model["modified_at"]
            .as_str()
            .is_some_and(|t| t.contains('T')));
    }
    // Aliases whose chain ends at the model, chained ones included.
    let aliases = |i: usize| -> Vec<&str> {
        let mut list: Vec<&str> = models[i]["aliases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        list.retain(|a| *a != "p-");
        list
    };
    assert_eq!(aliases(0), ["a", "b", "Z"]);
    assert_eq!(aliases(1), ["coder"]);
    assert_eq!(aliases(2), Vec::<&str>::new());
}

#[test]
fn healthz_reports_the_last_seq() {
    let server = Server::with_models(&["m"]);
    let resp = server.get("/healthz");
    assert_eq!(resp.expect(200), &json!({ "status": "ok", "seq": 0 }));
    server.create("a", "m");
    server.create("b", "a");
    assert_eq!(server.seq(), 2);
    server.create("a", "m");
    assert_eq!(server.seq(), 2, "an idempotent put writes no event");
    server.delete(&alias_path("b")).expect(200);
    assert_eq!(
        server.get("/healthz").expect(200),
        &json!({ "status": "ok", "seq": 3 })
    );
}

#[test]
fn the_log_has_no_colour_codes_when_stderr_is_not_a_terminal() {
    let server = Server::with_models(&["m"]);
    server.create("a", "m");
    let log = server.stderr();
    assert!(log.contains("listening on"), "{log}");
    assert!(
        !log.contains('\x1b'),
        "escape codes in a piped log: {log:?}"
    );
}

#[test]
fn routes_answer_head_405_and_encoded_names_as_before() {
    let server = Server::with_models(&["m"]);
    server.create("coder", "m");
    // HEAD: the headers GET has, its length included, and no body.
    let get = server.get("/api/resolve/coder");
    get.expect(200);
    let head = server.request("HEAD", "/api/resolve/coder", &[], None);
    assert_eq!(head.status, 200, "{head:?}");
    assert!(head.body.is_empty(), "{head:?}");
    assert_eq!(
        head.header("content-length"),
        Some(get.body.len().to_string().as_str()),
        "{head:?}"
    );
    assert!(head.header("x-request-id").is_some(), "{head:?}");
    // 405 names the methods the route has.
    let refused = server.request("PATCH", &alias_path("coder"), &[], None);
    refused.expect_error(405, "");
    assert_eq!(refused.header("allow"), Some("GET,HEAD,PUT,DELETE"));
    let refused = server.request("DELETE", "/api/aliases", &[], None);
    assert_eq!(
        refused.header("allow"),
        Some("GET,HEAD,POST"),
        "{refused:?}"
    );
    // The name in the path is percent-decoded, and must be UTF-8 once it is.
    let resolved = server.get("/api/resolve/co%64er");
    assert_eq!(resolved.expect(200)["chain"], json!(["coder", "m"]));
    server.get("/api/aliases/co%64er").expect(200);
    server.get("/api/resolve/%ff").expect_error(400, "utf-8");
}

#[test]
fn framework_errors_are_json() {
    let server = Server::with_models(&["m"]);
    server.get("/nope").expect_error(404, "/nope");
    server.get("/api/aliasesx").expect_error(404, "");
    server
        .request("PATCH", &alias_path("a"), &[], None)
        .expect_error(405, "");
    server
        .request("POST", "/healthz", &[], None)
        .expect_error(405, "");
    server
        .send_json("PUT", "/api/models", &json!({}))
        .expect_error(405, "");

    // Over 64 KiB: 413, whichever route.
    let big = json!({ "target": "m".repeat(70 * 1024) });
    server
        .send_json("PUT", &alias_path("a"), &big)
        .expect_error(413, "");
    let big_batch =
        json!({ "ops": [{ "op": "put", "alias": "a", "target": "m".repeat(70 * 1024) }] });
    server
        .send_json("POST", "/api/aliases", &big_batch)
        .expect_error(413, "");

    // The limit is exactly 64 KiB: one byte less is read (and refused for the
    // name, which is too long), one byte more is not.
    let body_of_len = |len: usize| {
        let body = format!(r#"{{"target":"{}"}}"#, "m".repeat(len - 13));
        assert_eq!(body.len(), len);
        body
    };
    let json_type = [("Content-Type", "application/json")];
    let at_limit = body_of_len(64 * 1024);
    server
        .request(
            "PUT",
            &alias_path("a"),
            &json_type,
            Some(at_limit.as_bytes()),
        )
        .expect_error(400, "at most 80");
    let over_limit = body_of_len(64 * 1024 + 1);
    server
        .request(
            "PUT",
            &alias_path("a"),
            &json_type,
            Some(over_limit.as_bytes()),
        )
        .expect_error(413, "");

    // Bodies that are not the JSON asked for.
    server
        .request("PUT", &alias_path("a"), &json_type, Some(b"not json"))
        .expect_error(400, "");
    server
        .request("PUT", &alias_path("a"), &json_type, Some(b"{\"target\":"))
        .expect_error(400, "");
    // Like Ollama, a JSON body is read as JSON whatever its Content-Type.
    server
        .request("PUT", &alias_path("a"), &[], Some(br#"{"target":"m"}"#))
        .expect(201);
    server.delete(&alias_path("a")).expect(200);
    server
        .request("PUT", &alias_path("a"), &json_type, None)
        .expect_error(400, "json body");
    server
        .send_json("PUT", &alias_path("a"), &json!({ "target": 3 }))
        .expect_error(400, "target");
    server
        .send_json("PUT", &alias_path("a"), &json!({}))
        .expect_error(400, "target");
    server
        .send_json(
            "PUT",
            &alias_path("a"),
            &json!({ "target": "m", "tagret": "m" }),
        )
        .expect_error(400, "tagret");
    server
        .request("POST", "/api/experimental/aliases", &json_type, Some(b"[]"))
        .expect_error(400, "");

    // Only the create and delete of the Content-Type-less body were applied.
    assert_eq!(server.seq(), 2);
    assert_eq!(server.store.read("a"), None);
}

#[test]
fn restart_restores_every_alias() {
    let mut server = Server::with_models(&["m1", "m2"]);
    server.create("a", "m1");
    server.create("b", "a");
    server.create("team/c:v1", "m2");
    server.create("a", "m2");
    server.create("gone", "m1");
    server.delete(&alias_path("gone")).expect(200);
    let resp = server.send_json(
        "PUT",
        &alias_path("p-"),
        &json!({ "target": "b", "prefix_matching": true }),
    );
    resp.expect(201);
    let aliases = server.aliases();
    let experimental = server.get("/api/experimental/aliases").json;
    let models = server.get("/api/models").json;
    let files = server.store.snapshot();
    let seq = server.seq();

    server.restart();
    assert_eq!(server.aliases(), aliases);
    assert_eq!(server.get("/api/experimental/aliases").json, experimental);
    assert_eq!(server.get("/api/models").json, models);
    assert_eq!(server.store.snapshot(), files);
    assert_eq!(server.seq(), seq, "a clean restart writes no event");
    // And it keeps working.
    server.create("after", "b");
    assert_eq!(server.seq(), seq + 1);
}

#[test]
fn deleted_alias_files_are_restored_at_start_up() {
    let mut server = Server::with_models(&["m1", "m2"]);
    server.create("a", "m1");
    server.create("b", "a");
    server.create("team/c:v1", "m2");
    let files = server.store.snapshot();
    let aliases = server.aliases();

    server.stop();
    for alias in ["a", "b", "team/c:v1"] {
        std::fs::remove_file(server.store.manifest_path(alias)).unwrap();
    }
    server.start_again();
    assert_eq!(server.store.snapshot(), files);
    let restored = server.aliases();
    assert_eq!(names(&restored), names(&aliases));
    for (now, before) in restored.iter().zip(&aliases) {
        for key in ["target", "resolved", "state", "digest", "created_at"] {
            assert_eq!(now[key], before[key], "{key}: {now} vs {before}");
        }
    }
}

/// Start-up reads a store of 64 or more model directories on several threads:
/// a clean restart of a larger store changes nothing, and missing files are
/// restored as with a small one.
#[test]
fn a_larger_store_is_read_and_restored_alike_at_start_up() {
    let mut server = Server::with_models(&["m1", "m2"]);
    let ops: Vec<Value> = (0..100)
        .map(|i| json!({"op": "put", "alias": format!("many{i}"), "target": if i % 2 == 0 { "m1" } else { "m2" }}))
        .collect();
    server
        .send_json("POST", "/api/aliases", &json!({ "ops": ops }))
        .expect(200);
    let files = server.store.snapshot();
    let aliases = server.aliases();
    assert_eq!(aliases.len(), 100);
    let seq = server.seq();

    server.restart();
    assert_eq!(server.store.snapshot(), files);
    assert_eq!(server.aliases(), aliases);
    assert_eq!(server.seq(), seq, "a clean restart writes no event");

    server.stop();
    for i in (0..100).step_by(7) {
        std::fs::remove_file(server.store.manifest_path(&format!("many{i}"))).unwrap();
    }
    server.start_again();
    assert_eq!(server.store.snapshot(), files);
    assert_eq!(names(&server.aliases()), names(&aliases));
}

/// A crash can fall between a journal commit and the file write: the file
/// still holds what aliasd wrote before. Start-up must bring it up to date,
/// and must not mistake it for a model.
#[test]
fn out_of_date_alias_files_are_fixed_at_start_up() {
    let mut server = Server::with_models(&["m1", "m2", "gone"]);
    server.create("a", "m1");
    server.create("a", "m2");
    server.create("d", "gone");
    // The target of `d` goes while the server runs: `d` is withdrawn.
    server.store.remove_model("gone");
    let deadline = std::time::Instant::now() + crate::support::WAIT;
    while server.store.read("d").is_some() {
        assert!(std::time::Instant::now() < deadline, "d was not withdrawn");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let m1 = server.store.read("m1").unwrap();
    let m2 = server.store.read("m2").unwrap();
    let seq = server.seq();

    server.stop();
    // As if the update to m2 and the withdrawal of `d` never reached the disk.
    std::fs::write(server.store.manifest_path("a"), &m1).unwrap();
    std::fs::create_dir_all(server.store.manifest_path("d").parent().unwrap()).unwrap();
    std::fs::write(server.store.manifest_path("d"), b"").unwrap();
    server.start_again();

    assert_eq!(server.store.read("a").as_deref(), Some(m2.as_slice()));
    assert_eq!(server.store.read("d"), None);
    let a = server.get(&alias_path("a"));
    assert_eq!(a.expect(200)["state"], "active");
    let d = server.get(&alias_path("d"));
    assert_eq!(d.expect(200)["state"], "dangling");
    // Nothing changed in the registry: the files were aliasd's own.
    assert_eq!(server.seq(), seq);
}

#[test]
fn request_id_and_actor_are_recorded() {
    let server = Server::with_models(&["m"]);
    let resp = server.send_json_with(
        "PUT",
        &alias_path("a"),
        &[("X-Request-Id", "it-req-42")],
        &json!({ "target": "m" }),
    );
    resp.expect(201);
    assert_eq!(resp.header("x-request-id"), Some("it-req-42"));
    let resp = server.put_alias("b", "a");
    resp.expect(201);
    let generated = resp.header("x-request-id").unwrap().to_string();
    assert!(!generated.is_empty());
    // Errors carry it too.
    let resp = server.request("GET", "/nope", &[("X-Request-Id", "it-req-43")], None);
    assert_eq!(resp.header("x-request-id"), Some("it-req-43"));

    let a = history(&server, "a");
    assert_eq!(a.len(), 1);
    let event = &a[0];
    assert_eq!(event["request_id"], "it-req-42");
    assert_eq!(event["type"], "alias.created");
    assert_eq!(event["alias"], "a");
    assert_eq!(event["target"], "m");
    assert_eq!(event["previous_target"], Value::Null);
    assert_eq!(event["digest"], digest(&server.store.read("m").unwrap()));
    let actor = event["actor"].as_str().unwrap();
    assert!(actor.starts_with("anonymous@127.0.0.1:"), "{actor}");
    assert_eq!(history(&server, "b")[0]["request_id"], generated.as_str());
}

#[test]
fn concurrent_puts_each_apply_once_in_one_gap_free_order() {
    let server = Server::with_models(&["m"]);
    let statuses: Vec<(String, u16)> = std::thread::scope(|scope| {
        let distinct = (0..16).map(|i| format!("c{i}"));
        let same = (0..8).map(|_| "same".to_string());
        let handles: Vec<_> = distinct
            .chain(same)
            .map(|alias| {
                let server = &server;
                scope.spawn(move || {
                    let status = server.put_alias(&alias, "m").status;
                    (alias, status)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (alias, status) in &statuses {
        if alias != "same" {
            assert_eq!(*status, 201, "{alias}");
        }
    }
    let mut same: Vec<u16> = statuses
        .iter()
        .filter(|(a, _)| a == "same")
        .map(|(_, s)| *s)
        .collect();
    same.sort_unstable();
    assert_eq!(same, [200, 200, 200, 200, 200, 200, 200, 201]);

    assert_eq!(server.seq(), 17);
    let resp = server.get("/api/history");
    let seqs: Vec<u64> = resp.expect(200)["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=17).collect::<Vec<u64>>());
    let m = server.store.read("m").unwrap();
    for alias in server.aliases() {
        let alias = alias["alias"].as_str().unwrap();
        assert_eq!(server.store.read(alias).as_deref(), Some(&m[..]), "{alias}");
    }
    assert_eq!(server.aliases().len(), 17);
}

/// Issue 22: a bad name on the resolve route is a 400, as on every route.
#[test]
fn resolving_a_bad_name_is_a_400() {
    let server = Server::with_models(&["llama3"]);
    server.create("coder", "llama3");
    server
        .get("/api/resolve/bad%20name")
        .expect_error(400, "bad name");
    server
        .get("/api/resolve/nothing-here")
        .expect_error(404, "");
    server.get("/api/resolve/coder").expect(200);
}

/// Issue 22: `?at_seq=` beyond the latest event is a 400 naming the latest,
/// not the present state.
#[test]
fn time_travel_beyond_the_latest_event_is_a_400_naming_it() {
    let server = Server::with_models(&["llama3"]);
    server.create("a", "llama3");
    server.create("b", "llama3");
    let message = server
        .get("/api/aliases?at_seq=3")
        .expect_error(400, "beyond the latest event");
    assert!(message.contains("seq 2"), "{message}");
    let at_latest = server.get("/api/aliases?at_seq=2");
    assert_eq!(
        at_latest.expect(200)["aliases"].as_array().unwrap().len(),
        2
    );
    let at_one = server.get("/api/aliases?at_seq=1");
    assert_eq!(at_one.expect(200)["aliases"].as_array().unwrap().len(), 1);
}
