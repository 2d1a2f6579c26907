//! The fleet's nodes (SPEC §8): each node's record in the key-value bucket
//! `<FLEET>_NODES`, refreshed by a heartbeat and expiring when the node stops,
//! and the [`NodeTable`] every node keeps of them from a watch on the bucket:
//! which nodes are live, what models they have (the [`Inventory`] that
//! create and update validation consults), how far each has applied the log.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::command::Inventory;
use crate::fleet::FleetConfig;
use crate::registry::Registry;

/// How often a node puts its record.
pub const HEARTBEAT: Duration = Duration::from_secs(5);

/// How long a record lives after its last put: the bucket's `max_age`, and
/// how long a node counts as live here after its last record arrived.
pub const EXPIRY: Duration = Duration::from_secs(15);

/// A model in a node record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRecord {
    /// The model's name, as its path spells it.
    pub name: String,
    /// `sha256:<hex>` of its manifest.
    pub digest: String,
}

/// A node's record in `<FLEET>_NODES`, under the node's name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The node's name.
    pub node: String,
    /// The address its API listens on.
    pub listen: String,
    /// The aliasd version it runs.
    pub version: String,
    /// The last seq of the fleet log its replica has applied.
    pub applied_seq: u64,
    /// The models in its store.
    pub models: Vec<ModelRecord>,
    /// When it started, RFC 3339 UTC.
    pub started_at: String,
}

/// A record as this node last received it.
#[derive(Debug, Clone)]
struct Seen {
    record: NodeRecord,
    /// When it arrived here: a node is live for [`EXPIRY`] after that
    /// (measured on this node's clock, so clock skew between hosts does not
    /// matter).
    at: Instant,
    /// Deleted or purged from the bucket.
    gone: bool,
}

/// A node as `GET /api/nodes` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    /// Its record.
    #[serde(flatten)]
    pub record: NodeRecord,
    /// Whether its record is current (put within the expiry).
    pub live: bool,
    /// How many events of the log it has not applied yet, as far as this
    /// node knows: this node's last seq minus the node's `applied_seq`.
    pub lag: u64,
}

/// Every node record this node has received, by node name.
#[derive(Debug)]
pub struct NodeTable {
    own: String,
    records: Mutex<BTreeMap<String, Seen>>,
}

impl NodeTable {
    /// An empty table kept by node `own`.
    pub fn new(own: &str) -> NodeTable {
        NodeTable {
            own: own.to_string(),
            records: Mutex::default(),
        }
    }

    /// This node's name.
    pub fn own(&self) -> &str {
        &self.own
    }

    /// Notes a record put in the bucket (now).
    pub fn put(&self, record: NodeRecord) {
        self.put_at(record, Instant::now());
    }

    fn put_at(&self, record: NodeRecord, at: Instant) {
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        records.insert(
            record.node.clone(),
            Seen {
                record,
                at,
                gone: false,
            },
        );
    }

    /// Notes that a node's record was deleted from the bucket.
    pub fn remove(&self, node: &str) {
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(seen) = records.get_mut(node) {
            seen.gone = true;
        }
    }

    fn is_live(&self, seen: &Seen, now: Instant) -> bool {
        // This node answers, so it is live, whether NATS is there or not.
        seen.record.node == self.own || (!seen.gone && now.duration_since(seen.at) < EXPIRY)
    }

    /// The models of the other live nodes: what validation consults beside
    /// this node's own store (which is more current than its own record).
    pub fn inventory(&self) -> Inventory {
        let now = Instant::now();
        let records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        let mut inventory = Inventory::default();
        for seen in records.values() {
            if seen.record.node == self.own || !self.is_live(seen, now) {
                continue;
            }
            for model in &seen.record.models {
                if let Ok(name) = crate::name::ModelName::parse(&model.name) {
                    inventory.add(&seen.record.node, &name);
                }
            }
        }
        inventory
    }

    /// Every node whose record this node has received, sorted by name,
    /// with `lag` measured against `last_seq`.
    pub fn list(&self, last_seq: u64) -> Vec<NodeView> {
        let now = Instant::now();
        let records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        records
            .values()
            .map(|seen| NodeView {
                record: seen.record.clone(),
                live: self.is_live(seen, now),
                lag: last_seq.saturating_sub(seen.record.applied_seq),
            })
            .collect()
    }

    /// The names of every node this node has a record of (live or not).
    pub fn names(&self) -> Vec<String> {
        let records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        records.keys().cloned().collect()
    }
}

/// This node's record now.
pub fn own_record(registry: &Registry, node: &str, listen: &str, started_at: &str) -> NodeRecord {
    let (applied_seq, models) = registry.read(|s| {
        let models = s
            .models
            .sorted()
            .into_iter()
            .map(|m| ModelRecord {
                name: m.name.display(),
                digest: m.digest.to_string(),
            })
            .collect();
        (s.index.last_seq(), models)
    });
    NodeRecord {
        node: node.to_string(),
        listen: listen.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        applied_seq,
        models,
        started_at: started_at.to_string(),
    }
}

/// Starts this node's part in `<FLEET>_NODES`: a task that puts its record
/// every [`HEARTBEAT`] (creating the bucket if missing: history 1, `max_age`
/// [`EXPIRY`], `--nats-replicas`), and a task that watches the bucket into
/// the returned table, which the registry consults from then on. Both go on
/// across NATS outages (the client reconnects; they retry at each beat).
/// Call from within a Tokio runtime.
pub fn start(
    client: async_nats::Client,
    config: &FleetConfig,
    registry: &Registry,
    listen: String,
) -> Arc<NodeTable> {
    let table = Arc::new(NodeTable::new(&config.node));
    let started_at = crate::event::now_rfc3339();
    table.put(own_record(registry, &config.node, &listen, &started_at));
    registry.install_nodes(table.clone());
    let js = async_nats::jetstream::new(client);
    let bucket = config.nodes_bucket();
    let replicas = config.replicas;
    let node = config.node.clone();
    let (beat_registry, beat_table) = (registry.clone(), table.clone());
    let beat_js = js.clone();
    let beat_bucket = bucket.clone();
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(HEARTBEAT);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        // Opened once, and again only after a failed put (the bucket may
        // have been removed meanwhile).
        let mut opened = None;
        loop {
            ticks.tick().await;
            let record = own_record(&beat_registry, &node, &listen, &started_at);
            beat_table.put(record.clone());
            let res = async {
                let store = match opened.take() {
                    Some(store) => store,
                    None => open_bucket(&beat_js, &beat_bucket, replicas).await?,
                };
                let value = serde_json::to_vec(&record)?;
                store.put(&node, value.into()).await?;
                opened = Some(store);
                anyhow::Ok(())
            }
            .await;
            match res {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!(bucket = %beat_bucket, "node record put again");
                }
                Ok(()) => {}
                // Said once per outage, not at every beat.
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(bucket = %beat_bucket, "cannot put this node's record: {e:#}; retrying every {}s", HEARTBEAT.as_secs());
                }
                Err(_) => {}
            }
        }
    });
    let watch_table = table.clone();
    tokio::spawn(async move {
        loop {
            if let Err(e) = watch(&js, &bucket, replicas, &watch_table).await {
                tracing::debug!(bucket = %bucket, "watching node records: {e:#}; watching again");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    table
}

/// The bucket, created if missing (as its stream: see
/// [`crate::log::nats::open_bucket`]).
async fn open_bucket(
    js: &async_nats::jetstream::Context,
    bucket: &str,
    replicas: usize,
) -> anyhow::Result<async_nats::jetstream::kv::Store> {
    crate::log::nats::open_bucket(
        js,
        bucket,
        "aliasd node records (SPEC §8)",
        replicas,
        EXPIRY,
    )
    .await
    .map_err(|e| anyhow::anyhow!("opening bucket {bucket}: {e}"))
}

/// Follows the bucket (every current record first) into `table`, until the
/// watch ends.
async fn watch(
    js: &async_nats::jetstream::Context,
    bucket: &str,
    replicas: usize,
    table: &NodeTable,
) -> anyhow::Result<()> {
    use futures_util::StreamExt;
    let store = open_bucket(js, bucket, replicas).await?;
    let mut entries = store.watch_with_history(">").await?;
    while let Some(entry) = entries.next().await {
        let entry = entry?;
        match entry.operation {
            async_nats::jetstream::kv::Operation::Put => {
                match serde_json::from_slice::<NodeRecord>(&entry.value) {
                    Ok(record) if record.node == entry.key => table.put(record),
                    Ok(_) | Err(_) => tracing::warn!(
                        key = %entry.key,
                        "a record in {bucket} is not a node record of that name; ignored"
                    ),
                }
            }
            _ => table.remove(&entry.key),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(node: &str, models: &[&str], applied_seq: u64) -> NodeRecord {
        NodeRecord {
            node: node.into(),
            listen: "127.0.0.1:11435".into(),
            version: "0".into(),
            applied_seq,
            models: models
                .iter()
                .map(|m| ModelRecord {
                    name: (*m).into(),
                    digest: "sha256:1".into(),
                })
                .collect(),
            started_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn the_inventory_holds_the_other_live_nodes_models() {
        let table = NodeTable::new("a");
        table.put(record("a", &["own"], 3));
        table.put(record("b", &["llama3", "qwen:7b"], 3));
        table.put(record("c", &["llama3"], 1));
        let old = Instant::now()
            .checked_sub(EXPIRY + Duration::from_secs(1))
            .unwrap();
        table.put_at(record("d", &["gone-model"], 0), old);
        let inventory = table.inventory();
        let key = |n: &str| crate::name::ModelName::parse(n).unwrap().key();
        assert_eq!(inventory.nodes_with(&key("llama3")), ["b", "c"]);
        assert_eq!(inventory.nodes_with(&key("qwen:7b")), ["b"]);
        assert!(
            inventory.nodes_with(&key("own")).is_empty(),
            "own store is read directly"
        );
        assert!(
            inventory.nodes_with(&key("gone-model")).is_empty(),
            "expired"
        );
        table.remove("c");
        assert_eq!(table.inventory().nodes_with(&key("llama3")), ["b"]);
        let list = table.list(5);
        let live: Vec<(&str, bool, u64)> = list
            .iter()
            .map(|v| (v.record.node.as_str(), v.live, v.lag))
            .collect();
        assert_eq!(
            live,
            [
                ("a", true, 2),
                ("b", true, 2),
                ("c", false, 4),
                ("d", false, 5)
            ]
        );
    }

    #[test]
    fn a_record_has_the_spec_fields() {
        let json = serde_json::to_value(NodeView {
            record: record("a", &["m"], 1),
            live: true,
            lag: 0,
        })
        .unwrap();
        for field in [
            "node",
            "listen",
            "version",
            "applied_seq",
            "models",
            "started_at",
            "live",
            "lag",
        ] {
            assert!(json.get(field).is_some(), "{field}");
        }
        assert_eq!(json["models"][0]["name"], "m");
        assert_eq!(json["models"][0]["digest"], "sha256:1");
    }
}
