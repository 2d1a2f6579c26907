//! An event's names and time, parsed once (and interned) before it is applied.

use std::sync::Arc;

use crate::event::{EventType, StateChange};
use crate::name::ModelName;

use super::*;

/// An event's state-relevant fields, parsed: what [`Index::apply_prepared`]
/// takes. Preparing needs no index, so replay prepares on one thread while it
/// applies on another.
#[derive(Debug, Clone)]
pub struct PreparedChange {
    pub(super) seq: u64,
    /// Microseconds since the epoch.
    pub(super) time: u64,
    pub(super) kind: EventType,
    pub(super) alias: AliasName,
    pub(super) target: Option<ModelName>,
    pub(super) digest: Option<Arc<str>>,
    /// The node whose observation this is (fleet mode); `None` for a
    /// fleet-wide change, and for an API type whatever the event says.
    pub(super) node: Option<Arc<str>>,
}

/// Parses changes into [`PreparedChange`]s, each target and digest spelling once.
#[derive(Debug, Clone, Default)]
pub struct Preparer {
    /// Parsed targets by the text events give them (display form).
    targets: HashMap<Box<str>, ModelName>,
    digests: HashSet<Arc<str>>,
}

impl Preparer {
    /// Parses a change's alias, target and time.
    ///
    /// # Errors
    ///
    /// The alias or the target does not parse (a journal written by a
    /// different build).
    pub fn prepare(&mut self, change: &StateChange<'_>) -> Result<PreparedChange, String> {
        let alias = AliasName::of_change(change)?;
        let target = match change.target.as_deref() {
            None => None,
            Some(text) => Some(self.target(text)?),
        };
        let digest = change.digest.as_deref().map(|d| self.digest(d));
        let node = match change.node.as_deref() {
            Some(node) if is_observation(change.kind) => Some(self.digest(node)),
            _ => None,
        };
        Ok(PreparedChange {
            seq: change.seq,
            time: parse_time(&change.time),
            kind: change.kind,
            alias,
            target,
            digest,
            node,
        })
    }

    fn target(&mut self, text: &str) -> Result<ModelName, String> {
        if let Some(name) = self.targets.get(text) {
            return Ok(name.clone());
        }
        let name = ModelName::parse(text).map_err(|e| e.to_string())?;
        self.targets.insert(Box::from(text), name.clone());
        Ok(name)
    }

    /// Interns a digest (or a node name: both are few and repeated).
    fn digest(&mut self, digest: &str) -> Arc<str> {
        match self.digests.get(digest) {
            Some(interned) => interned.clone(),
            None => {
                let digest: Arc<str> = Arc::from(digest);
                self.digests.insert(digest.clone());
                digest
            }
        }
    }
}

/// Whether events of `kind` report what one node found in its store (the
/// types a node's observation can have), rather than change the alias
/// itself (create, update, delete: fleet-wide).
pub fn is_observation(kind: EventType) -> bool {
    !matches!(
        kind,
        EventType::AliasCreated | EventType::AliasUpdated | EventType::AliasDeleted
    )
}
