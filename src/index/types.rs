//! What the index holds: aliases (names, states, entries), models, tombstones.

use std::sync::Arc;

use crate::event::{Event, StateChange};
use crate::name::ModelName;

use super::HashMap;

/// Whether an alias currently points at a model that is there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AliasState {
    /// Its chain ends at a present model (prefix aliases are always active).
    Active = 0,
    /// Its chain ends at a model that is not in the store.
    Dangling,
    /// A model aliasd did not write sits at the alias's path; the model wins.
    Shadowed,
}

impl AliasState {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            AliasState::Active => "active",
            AliasState::Dangling => "dangling",
            AliasState::Shadowed => "shadowed",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<AliasState> {
        match s {
            "active" => Some(AliasState::Active),
            "dangling" => Some(AliasState::Dangling),
            "shadowed" => Some(AliasState::Shadowed),
            _ => None,
        }
    }
}

/// The name of an alias: a model name, or a prefix for prefix aliases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AliasName {
    /// An exact alias; materialized at its own path.
    Exact(ModelName),
    /// A prefix alias (`myprefix-`), as spelt; matched case-insensitively.
    Prefix(String),
}

impl AliasName {
    /// The lookup key: the normalized name, or the lowercase prefix.
    pub fn key(&self) -> String {
        match self {
            AliasName::Exact(name) => name.key(),
            AliasName::Prefix(prefix) => prefix.to_lowercase(),
        }
    }

    /// The lookup key as a shared string (no allocation for exact names).
    pub fn key_arc(&self) -> Arc<str> {
        match self {
            AliasName::Exact(name) => name.key_arc(),
            AliasName::Prefix(prefix) => Arc::from(prefix.to_lowercase()),
        }
    }

    /// The name as shown to people and sent on the wire.
    pub fn display(&self) -> String {
        match self {
            AliasName::Exact(name) => name.display(),
            AliasName::Prefix(prefix) => prefix.clone(),
        }
    }

    /// Whether this is a prefix alias.
    pub fn is_prefix(&self) -> bool {
        matches!(self, AliasName::Prefix(_))
    }

    /// Reads the alias name of an event.
    pub fn of_event(event: &Event) -> Result<AliasName, String> {
        AliasName::of_change(&event.change())
    }

    /// Reads the alias name of a change.
    pub fn of_change(change: &StateChange<'_>) -> Result<AliasName, String> {
        if change.prefix_matching {
            Ok(AliasName::Prefix(change.alias.to_string()))
        } else {
            ModelName::parse(&change.alias)
                .map(AliasName::Exact)
                .map_err(|e| e.to_string())
        }
    }
}

/// One alias as the index holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AliasEntry {
    /// The alias's own name.
    pub alias: AliasName,
    /// Its direct target (a model or another alias).
    pub target: ModelName,
    /// Active, dangling or shadowed.
    pub state: AliasState,
    /// Digest of the manifest materialized for it, if any.
    pub digest: Option<Arc<str>>,
    /// The digest materialized before the last change: a file with this digest
    /// at the alias's path is still aliasd's own (a crash can fall between the
    /// journal commit and the file write).
    pub previous_digest: Option<Arc<str>>,
    /// Creation time, microseconds since the Unix epoch.
    pub created_at: u64,
    /// Time of the last event touching it, microseconds since the Unix epoch.
    pub updated_at: u64,
    /// The last event touching it.
    pub seq: u64,
}

/// A model in the store (a manifest file aliasd did not write).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    /// Its name, spelt as its path is.
    pub name: ModelName,
    /// `sha256:<hex>` of its manifest bytes.
    pub digest: Arc<str>,
    /// The manifest bytes, copied verbatim into alias files.
    pub bytes: Arc<[u8]>,
    /// Config plus layers, as Ollama counts it.
    pub size: Option<u64>,
    /// The manifest file's modification time, RFC 3339.
    pub modified_at: String,
}

/// A version of what an [`super::Index`] or a [`Models`] holds, for a
/// reader that keeps something it computed from them (the HTTP layer keeps
/// rendered resolutions): each change takes a new stamp, never used before
/// in this process, and a new or copied value carries one too, so two equal
/// stamps mean the same contents (a copy keeps its original's stamp, and
/// its contents, until either changes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Stamp(u64);

impl Stamp {
    /// A stamp never handed out before in this process.
    pub fn fresh() -> Stamp {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Stamp(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }
}

impl Default for Stamp {
    fn default() -> Stamp {
        Stamp::fresh()
    }
}

/// The models in the store, by name key.
#[derive(Debug, Clone, Default)]
pub struct Models {
    by_key: HashMap<String, ModelInfo>,
    /// Changes with every insert and removal ([`Stamp`]).
    stamp: Stamp,
}

impl Models {
    /// Adds or replaces a model.
    pub fn insert(&mut self, model: ModelInfo) {
        self.stamp = Stamp::fresh();
        self.by_key.insert(model.name.key(), model);
    }

    /// Removes a model by key.
    pub fn remove(&mut self, key: &str) -> Option<ModelInfo> {
        self.stamp = Stamp::fresh();
        self.by_key.remove(key)
    }

    /// The version of these models: another after any change.
    pub fn stamp(&self) -> Stamp {
        self.stamp
    }

    /// Looks a model up by key.
    pub fn get(&self, key: &str) -> Option<&ModelInfo> {
        self.by_key.get(key)
    }

    /// Whether a model with this key exists.
    pub fn contains(&self, key: &str) -> bool {
        self.by_key.contains_key(key)
    }

    /// Every model, sorted by display name.
    pub fn sorted(&self) -> Vec<&ModelInfo> {
        let mut models: Vec<&ModelInfo> = self.by_key.values().collect();
        models.sort_by_key(|m| m.name.display().to_lowercase());
        models
    }

    /// How many models there are.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether the store has no models.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

/// A deleted alias whose file aliasd may still have to withdraw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tombstone {
    /// The alias that was deleted.
    pub name: ModelName,
    /// The digest of the file aliasd had written for it.
    pub digest: Arc<str>,
}

/// One node's view of an exact alias in a fleet: its state and the digest
/// materialized there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    /// Active, dangling or shadowed on that node.
    pub state: AliasState,
    /// The digest of the manifest that node materialized, if any.
    pub digest: Option<Arc<str>>,
}

/// The per-node states of one exact alias in a fleet (SPEC §8), kept only
/// for an alias some node has reported on since its last fleet-wide change:
/// a single host, or a fleet whose nodes all agree, keeps none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStates {
    /// The state the last fleet-wide event left: presumed on every node that
    /// has not reported since.
    pub presumed: NodeState,
    /// The nodes that reported since (an observation event with their name),
    /// with what they reported last, in order of first report.
    pub reported: Vec<(Arc<str>, NodeState)>,
}

impl NodeStates {
    /// No report yet: every node in the `presumed` state.
    pub fn presumed(presumed: NodeState) -> NodeStates {
        NodeStates {
            presumed,
            reported: Vec::new(),
        }
    }

    /// The state on `node`: what it reported, else the presumed one.
    pub fn on(&self, node: &str) -> &NodeState {
        self.reported
            .iter()
            .find(|(name, _)| &**name == node)
            .map_or(&self.presumed, |(_, state)| state)
    }

    /// Records what `node` reported last.
    pub(super) fn report(&mut self, node: Arc<str>, state: NodeState) {
        match self.reported.iter_mut().find(|(name, _)| *name == node) {
            Some((_, slot)) => *slot = state,
            None => self.reported.push((node, state)),
        }
    }
}
