//! Long alias chains and wide fan-in (issue 17): re-pointing the alias every
//! other one depends on, listing, a restart and an external change each cost
//! time linear in the aliases they touch, not in aliases times chain depth.
//!
//! Each step has a deadline far above what the linear code needs and far below
//! what the quadratic code took (see issue 17; figures in `benches/README.md`).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::Server;

/// Aliases in the long chain: `c1 -> m1`, `c2 -> c1`, ... (aliasd has no depth cap,
/// as Ollama has none).
const CHAIN: usize = 5_000;

/// Aliases pointing at the hub of the fan-in.
const FAN_IN: usize = 10_000;

/// Puts per batch request: a request body must stay under 64 KiB.
const OPS_PER_BATCH: usize = 1_000;

/// What any one step may take (the CI machine has 2 shared cores and runs tests
/// in parallel; the linear code needs a small fraction of this).
const STEP_DEADLINE: Duration = Duration::from_secs(20);

/// `sha256:<hex>` of a manifest's bytes.
fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", aliasd::digest::sha256_hex(bytes))
}

/// Runs one step and asserts it finished within [`STEP_DEADLINE`].
#[track_caller]
fn timed<T>(what: &str, step: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let out = step();
    let took = started.elapsed();
    eprintln!("{what}: {took:?}");
    assert!(
        took < STEP_DEADLINE,
        "{what} took {took:?}, over {STEP_DEADLINE:?}"
    );
    out
}

/// Creates `(alias, target)` pairs, in order, with batch requests.
fn create_in_batches(server: &Server, pairs: &[(String, String)]) {
    for (batch_idx, ops) in pairs.chunks(OPS_PER_BATCH).enumerate() {
        let ops: Vec<Value> = ops
            .iter()
            .map(|(alias, target)| json!({"op": "put", "alias": alias, "target": target}))
            .collect();
        let body = json!({ "ops": ops });
        let resp = timed(&format!("batch {batch_idx}"), || {
            server.send_json("POST", "/api/aliases", &body)
        });
        let created = resp.expect(200)["aliases"]
            .as_array()
            .unwrap_or_else(|| panic!("{resp:?}"))
            .len();
        assert_eq!(created, ops.len(), "{resp:?}");
    }
}

/// `GET /api/aliases`, within the deadline.
fn list(server: &Server) -> Vec<Value> {
    timed("listing", || server.aliases())
}

/// Asserts that `aliases` are exactly `expected` (names), each with this
/// resolved model, state and digest.
#[track_caller]
fn check_all(
    aliases: &[Value],
    expected: &[String],
    resolved: Option<&str>,
    state: &str,
    digest: Option<&str>,
) {
    let mut names: Vec<&str> = aliases
        .iter()
        .map(|a| a["alias"].as_str().expect("alias is a string"))
        .collect();
    names.sort_unstable();
    let mut wanted: Vec<&str> = expected.iter().map(String::as_str).collect();
    wanted.sort_unstable();
    assert_eq!(names, wanted, "the listed aliases");
    for alias in aliases {
        assert_eq!(alias["resolved"], json!(resolved), "{alias}");
        assert_eq!(alias["state"], state, "{alias}");
        assert_eq!(alias["digest"], json!(digest), "{alias}");
    }
}

/// The aliases in `names` whose file is not exactly `bytes` (with `None`: that
/// have a file).
fn files_not_matching(server: &Server, names: &[String], bytes: Option<&[u8]>) -> Vec<String> {
    names
        .iter()
        .filter(|name| server.store.read(name).as_deref() != bytes)
        .cloned()
        .collect()
}

/// Asserts that every alias in `names` has a file with exactly `bytes`
/// (or, with `None`, no file).
#[track_caller]
fn check_files(server: &Server, names: &[String], bytes: Option<&[u8]>) {
    let wrong = files_not_matching(server, names, bytes);
    assert!(
        wrong.is_empty(),
        "{} files are not right: {:?}...",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
}

/// Polls until every alias is listed in `state` and its file is `bytes`
/// (the store is made to match after the index changes), within the deadline.
fn wait_for(server: &Server, names: &[String], state: &str, bytes: Option<&[u8]>) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let aliases = server.aliases();
        if aliases.iter().all(|a| a["state"] == state)
            && files_not_matching(server, names, bytes).is_empty()
        {
            return aliases;
        }
        assert!(
            started.elapsed() < STEP_DEADLINE,
            "not every alias is {state} with its file as expected after {STEP_DEADLINE:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A chain of 5,000 aliases, each pointing at the one before, the first at a
/// model: re-pointing its root re-derives all 5,000 (one event and one file
/// each), listing resolves all 5,000 chains, a restart reconciles them, and the
/// model's removal makes all 5,000 dangle; each within the deadline, and right.
#[test]
fn issue17_a_long_chain_repoints_lists_and_restarts_in_linear_time() {
    let mut server = Server::with_models(&["m1", "m2"]);
    let m1 = server.store.read("m1").expect("m1");
    let m2 = server.store.read("m2").expect("m2");
    let names: Vec<String> = (1..=CHAIN).map(|i| format!("c{i}")).collect();
    let pairs: Vec<(String, String)> = names
        .iter()
        .enumerate()
        .map(|(idx, name)| {
            let target = if idx == 0 {
                "m1".to_string()
            } else {
                names[idx - 1].clone()
            };
            (name.clone(), target)
        })
        .collect();
    create_in_batches(&server, &pairs);
    let aliases = list(&server);
    check_all(&aliases, &names, Some("m1"), "active", Some(&digest(&m1)));

    // Re-point the root: every alias of the chain now ends at m2.
    let seq = server.seq();
    let resp = timed("re-pointing the root", || server.put_alias("c1", "m2"));
    assert_eq!(resp.expect(200)["resolved"], "m2", "{resp:?}");
    assert_eq!(
        server.seq(),
        seq + CHAIN as u64,
        "one event for the root and one for each alias depending on it"
    );
    let aliases = list(&server);
    check_all(&aliases, &names, Some("m2"), "active", Some(&digest(&m2)));
    check_files(&server, &names, Some(&m2));
    let last = &names[CHAIN - 1];
    let resp = timed("resolving the deepest alias", || {
        server.get(&format!("/api/resolve/{last}"))
    });
    let resolution = resp.expect(200);
    assert_eq!(resolution["resolved"], "m2", "{resp:?}");
    let chain = resolution["chain"].as_array().expect("chain");
    assert_eq!(chain.len(), CHAIN + 1, "{resp:?}");
    assert_eq!(chain[0], last.as_str());
    assert_eq!(chain[CHAIN - 1], "c1");
    assert_eq!(chain[CHAIN], "m2");

    // A restart replays and reconciles the whole chain.
    timed("restarting", || server.restart());
    let aliases = list(&server);
    check_all(&aliases, &names, Some("m2"), "active", Some(&digest(&m2)));

    // The model goes: the watcher's one change dangles the whole chain.
    server.store.remove_model("m2");
    let aliases = wait_for(&server, &names, "dangling", None);
    check_all(&aliases, &names, None, "dangling", None);
}

/// 10,000 aliases pointing at one alias (the hub), which points at a model:
/// re-pointing the hub re-derives all 10,000, listing, a restart and deleting
/// them all stay linear; each within the deadline, and right.
#[test]
fn issue17_a_wide_fan_in_repoints_lists_and_restarts_in_linear_time() {
    let mut server = Server::with_models(&["m1", "m2"]);
    let m1 = server.store.read("m1").expect("m1");
    let m2 = server.store.read("m2").expect("m2");
    server.create("hub", "m1");
    let fans: Vec<String> = (1..=FAN_IN).map(|i| format!("f{i}")).collect();
    let pairs: Vec<(String, String)> = fans
        .iter()
        .map(|name| (name.clone(), "hub".to_string()))
        .collect();
    create_in_batches(&server, &pairs);
    let mut names = fans.clone();
    names.push("hub".to_string());
    let aliases = list(&server);
    check_all(&aliases, &names, Some("m1"), "active", Some(&digest(&m1)));

    let seq = server.seq();
    let resp = timed("re-pointing the hub", || server.put_alias("hub", "m2"));
    assert_eq!(resp.expect(200)["resolved"], "m2", "{resp:?}");
    assert_eq!(
        server.seq(),
        seq + FAN_IN as u64 + 1,
        "one event for the hub and one for each alias pointing at it"
    );
    let aliases = list(&server);
    check_all(&aliases, &names, Some("m2"), "active", Some(&digest(&m2)));
    check_files(&server, &names, Some(&m2));

    timed("restarting", || server.restart());
    let aliases = list(&server);
    check_all(&aliases, &names, Some("m2"), "active", Some(&digest(&m2)));
    let resp = timed("listing the models", || server.get("/api/models"));
    let models = resp.expect(200)["models"]
        .as_array()
        .expect("models")
        .clone();
    let on_m2 = models
        .iter()
        .find(|m| m["name"] == "m2")
        .unwrap_or_else(|| panic!("{resp:?}"));
    assert_eq!(
        on_m2["aliases"].as_array().map(Vec::len),
        Some(FAN_IN + 1),
        "every alias ends at m2"
    );

    // The 10,000 deleted: each file withdrawn comes back through the watcher,
    // which must recognize it as aliasd's own without a scan of every deleted
    // alias; an external change after that is still seen in time.
    for (batch_idx, fans) in fans.chunks(OPS_PER_BATCH).enumerate() {
        let ops: Vec<Value> = fans
            .iter()
            .map(|alias| json!({"op": "delete", "alias": alias}))
            .collect();
        let resp = timed(&format!("delete batch {batch_idx}"), || {
            server.send_json("POST", "/api/aliases", &json!({ "ops": ops }))
        });
        resp.expect(200);
    }
    check_files(&server, &fans, None);
    server.store.remove_model("m2");
    let hub = ["hub".to_string()];
    let aliases = wait_for(&server, &hub, "dangling", None);
    check_all(&aliases, &hub, None, "dangling", None);
}
