//! What the watcher's tests and the prefix-state tests share: the events of
//! `/api/history` as `(type, alias)` pairs, waits on events and files, and a
//! fixture whose barrier (a re-pull of a probe model, waited on until its
//! `target.changed` is journaled and its alias's file rewritten) proves that
//! every external change made before it has been handled: the watcher
//! handles changes in the order the kernel reports them.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{alias_path, digest, http, wait_for, Server, TestStore, WAIT};

/// The model behind the barrier alias.
pub(crate) const PROBE_MODEL: &str = "probe-model";
/// The barrier alias.
pub(crate) const PROBE: &str = "probe";

/// Every event of `/api/history` after `since`.
pub(crate) fn events_after(addr: SocketAddr, since: u64) -> Vec<Value> {
    let resp = http(
        addr,
        "GET",
        &format!("/api/history?since={since}&limit=10000"),
        &[],
        None,
    );
    resp.expect(200)["events"]
        .as_array()
        .unwrap_or_else(|| panic!("{resp:?}"))
        .clone()
}

/// `(type, alias)` of each event, the probe's left out, sorted.
pub(crate) fn kind_set(events: &[Value]) -> Vec<(String, String)> {
    let mut out = kinds(events);
    out.sort();
    out
}

/// `(type, alias)` of each event, the probe's left out, in order.
pub(crate) fn kinds(events: &[Value]) -> Vec<(String, String)> {
    events
        .iter()
        .filter(|e| e["alias"] != PROBE)
        .map(|e| {
            (
                e["type"].as_str().expect("type").to_string(),
                e["alias"].as_str().expect("alias").to_string(),
            )
        })
        .collect()
}

/// Sorted owned pairs, to compare event sets whatever their order.
pub(crate) fn sorted(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = pairs
        .iter()
        .map(|(t, a)| (t.to_string(), a.to_string()))
        .collect();
    out.sort();
    out
}

/// Waits until the events after `since` (the probe's left out) include all of
/// `expected` (type, alias), and returns every event after `since`.
#[track_caller]
pub(crate) fn wait_events(addr: SocketAddr, since: u64, expected: &[(&str, &str)]) -> Vec<Value> {
    wait_events_for(WAIT, addr, since, expected)
}

/// [`wait_events`], waiting up to `wait`.
#[track_caller]
pub(crate) fn wait_events_for(
    wait: Duration,
    addr: SocketAddr,
    since: u64,
    expected: &[(&str, &str)],
) -> Vec<Value> {
    let mut last = Vec::new();
    let found = (|| {
        let deadline = Instant::now() + wait;
        loop {
            last = events_after(addr, since);
            let got = kinds(&last);
            if expected
                .iter()
                .all(|(t, a)| got.iter().any(|(gt, ga)| gt == t && ga == a))
            {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    })();
    assert!(
        found,
        "expected events {expected:?} after seq {since}, got {:#?}",
        kinds(&last)
    );
    last
}

/// The one event of this type for this alias among `events`.
#[track_caller]
pub(crate) fn the_event<'a>(events: &'a [Value], kind: &str, alias: &str) -> &'a Value {
    let matching: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == kind && e["alias"] == alias)
        .collect();
    assert_eq!(matching.len(), 1, "{kind} for {alias}: {events:#?}");
    matching[0]
}

/// Waits until the file at `name`'s path is exactly `expected` (`None`: no file).
#[track_caller]
pub(crate) fn wait_file(store: &TestStore, name: &str, expected: Option<&[u8]>) {
    let mut last = None;
    let ok = (|| {
        let deadline = Instant::now() + WAIT;
        loop {
            last = store.read(name);
            if last.as_deref() == expected {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    })();
    assert!(
        ok,
        "file of {name}: expected {:?}, found {:?}",
        expected.map(String::from_utf8_lossy),
        last.as_deref().map(String::from_utf8_lossy)
    );
}

/// `GET /api/aliases/{name}`, asserting 200.
#[track_caller]
pub(crate) fn alias(server: &Server, name: &str) -> Value {
    server.get(&alias_path(name)).expect(200).clone()
}

/// Asserts an alias's state and digest.
#[track_caller]
pub(crate) fn check_state(server: &Server, name: &str, state: &str, digest: Option<&str>) {
    let body = alias(server, name);
    assert_eq!(body["state"], state, "{body}");
    assert_eq!(body["digest"], json!(digest), "{body}");
}

/// A server with a probe alias for barriers.
pub(crate) struct Fixture {
    /// The server under test.
    pub(crate) server: Server,
    probe_version: u32,
}

impl Fixture {
    /// A server on a store holding `models` and the probe model, with the probe alias.
    pub(crate) fn new(models: &[&str]) -> Fixture {
        let store = TestStore::with_models(models);
        store.add_model(PROBE_MODEL);
        let server = Server::start(store);
        server.create(PROBE, PROBE_MODEL);
        Fixture {
            server,
            probe_version: 1,
        }
    }

    pub(crate) fn store(&self) -> &TestStore {
        &self.server.store
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Re-pulls the probe model and waits for its `target.changed`: every
    /// external change made before this call has then been handled.
    pub(crate) fn barrier(&mut self) {
        self.probe_version += 1;
        let since = self.server.seq();
        let bytes = self
            .server
            .store
            .add_model_version(PROBE_MODEL, self.probe_version);
        let want = digest(&bytes);
        let addr = self.addr();
        wait_for("the probe's target.changed (barrier)", WAIT, || {
            events_after(addr, since)
                .iter()
                .any(|e| {
                    e["alias"] == PROBE && e["type"] == "target.changed" && e["digest"] == *want
                })
                .then_some(())
        });
        wait_file(self.store(), PROBE, Some(&bytes));
    }
}
