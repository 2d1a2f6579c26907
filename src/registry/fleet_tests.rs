//! The registry in a fleet (SPEC §8), on a shared in-memory log: per-node
//! state from other nodes' observations, this node's observations after
//! fleet-wide changes, validation against the other live nodes' models.

use std::sync::Arc;
use std::time::Duration;

use crate::command::{CommandError, Origin, PutAlias};
use crate::event::{Event, EventType};
use crate::fleet::nodes::{ModelRecord, NodeRecord, NodeTable};
use crate::index::{AliasState, AliasView};
use crate::log::memory::MemoryLog;
use crate::log::EventLog;
use crate::name::ModelName;

use super::{Command, Registry, RegistryConfig, RegistryError, WriterThread};

const MANIFEST: &[u8] = br#"{"schemaVersion":2,"layers":[]}"#;

struct Node {
    _dir: tempfile::TempDir,
    log: Arc<MemoryLog>,
    registry: Registry,
    writer: WriterThread,
    runtime: tokio::runtime::Runtime,
}

/// Node `a` of a fleet, whose store holds `m1`.
fn node_a() -> Node {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("manifests/registry.ollama.ai/library/m1");
    std::fs::create_dir_all(&model_dir).unwrap();
    std::fs::write(model_dir.join("latest"), MANIFEST).unwrap();
    let store = crate::store::Store::new(dir.path());
    store.ensure_layout().unwrap();
    let config = RegistryConfig {
        models_dir: dir.path().to_path_buf(),
        journal_dir: dir.path().join("unused"),
        retain: None,
        segment_bytes: 1 << 20,
        snapshot_every: 1_000,
        io: None,
    };
    let log = Arc::new(MemoryLog::shared_as("a"));
    let (registry, writer) = Registry::start_on(store, &config, log.clone(), None).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    Node {
        _dir: dir,
        log,
        registry,
        writer,
        runtime,
    }
}

impl Node {
    /// Waits until the registry has applied the log up to `seq`.
    fn wait_for(&self, seq: u64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while self.registry.read(|s| s.index.last_seq()) < seq {
            assert!(std::time::Instant::now() < deadline, "seq {seq} in time");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn events(&self) -> Vec<Event> {
        let mut reader = self.log.read_from(1).unwrap();
        let mut out = Vec::new();
        while let Some(record) = reader.next_owned() {
            out.push(Event::decode(&record.unwrap().1).unwrap());
        }
        out
    }

    fn put(&self, alias: &str, target: &str) -> Result<super::Reply, RegistryError> {
        let put = PutAlias {
            alias: alias.into(),
            target: target.into(),
            prefix_matching: false,
            if_match: None,
            if_none_match: false,
        };
        self.runtime.block_on(
            self.registry
                .execute(Command::Put(put), Origin::system("test")),
        )
    }

    fn stop(self) {
        drop(self.registry);
        self.writer.join();
    }
}

fn event(
    seq: u64,
    kind: EventType,
    alias: &str,
    target: &str,
    digest: Option<&str>,
    node: Option<&str>,
) -> Vec<u8> {
    let mut event = crate::event::created_for_test(seq, target);
    event.kind = kind;
    event.alias = alias.into();
    event.digest = digest.map(String::from);
    event.node = node.map(String::from);
    event.actor = "watcher".into();
    event.encode()
}

fn key(name: &str) -> String {
    ModelName::parse(name).unwrap().key()
}

#[test]
fn observations_are_per_node_and_only_disagreements_are_appended() {
    let node = node_a();
    let d1 = crate::digest::manifest_digest(MANIFEST);
    // Another node creates x1 -> m1 (here too, same manifest: no event from
    // a) and x2 -> m2 (not here: a reports it dangling).
    node.log.remote_append(vec![
        event(1, EventType::AliasCreated, "x1", "m1", Some(&d1), None),
        event(
            2,
            EventType::AliasCreated,
            "x2",
            "m2",
            Some("sha256:b2"),
            None,
        ),
    ]);
    node.wait_for(3);
    let events = node.events();
    assert_eq!(events.len(), 3, "{events:#?}");
    assert_eq!(events[2].kind, EventType::TargetRemoved);
    assert_eq!(events[2].alias, "x2");
    assert_eq!(events[2].node.as_deref(), Some("a"));
    // Node b reports x1 dangling on its store: a's own state stays.
    node.log.remote_append(vec![event(
        4,
        EventType::TargetRemoved,
        "x1",
        "m1",
        None,
        Some("b"),
    )]);
    node.wait_for(4);
    node.registry.read(|s| {
        let x1 = s.index.exact(&key("x1")).unwrap();
        assert_eq!(x1.state, AliasState::Active);
        assert_eq!(x1.seq, 4, "every node shares the alias's seq");
        assert_eq!(s.index.state_on(x1, "b").state, AliasState::Dangling);
        assert_eq!(s.index.state_on(x1, "c").state, AliasState::Active);
        let x2 = s.index.exact(&key("x2")).unwrap();
        assert_eq!(x2.state, AliasState::Dangling);
        assert_eq!(s.index.state_on(x2, "b").state, AliasState::Active);
        assert_eq!(
            s.index.state_on(x2, "b").digest.as_deref(),
            Some("sha256:b2")
        );
    });
    assert_eq!(node.events().len(), 4, "b's report needs no answer from a");
    // The alias file follows a's own state.
    let file = node
        ._dir
        .path()
        .join("manifests/registry.ollama.ai/library/x1/latest");
    assert_eq!(std::fs::read(file).unwrap(), MANIFEST);
    node.stop();
}

#[test]
fn validation_consults_the_other_live_nodes_models() {
    let node = node_a();
    let table = Arc::new(NodeTable::new("a"));
    let record = |name: &str, model: &str| NodeRecord {
        node: name.into(),
        listen: String::new(),
        version: String::new(),
        applied_seq: 0,
        models: vec![ModelRecord {
            name: model.into(),
            digest: "sha256:x".into(),
        }],
        started_at: String::new(),
    };
    table.put(record("b", "only-on-b"));
    table.put(record("c", "on-c"));
    // Without the table (a single host), only the local store counts.
    match node.put("y0", "only-on-b") {
        Err(RegistryError::Command(CommandError::NotFound(message))) => {
            assert_eq!(
                message,
                "target \"only-on-b\" is neither a model nor an alias"
            )
        }
        other => panic!("{other:?}"),
    }
    node.registry.install_nodes(table);
    node.put("y", "only-on-b").unwrap();
    node.registry.read(|s| {
        let y = s.index.exact(&key("y")).unwrap();
        assert_eq!(y.state, AliasState::Dangling, "dangling here, on a");
    });
    match node.put("on-c", "m1") {
        Err(RegistryError::Command(CommandError::ShadowsModel(message))) => {
            assert!(message.contains("on node c"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    match node.put("z", "nowhere") {
        Err(RegistryError::Command(CommandError::NotFound(message))) => {
            assert!(message.contains("on any live node"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    let events = node.events();
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0].node, None);
    node.stop();
}
