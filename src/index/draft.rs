//! A draft: the index plus changes not yet durable, with an undo log, so a
//! group of commands (or a batch) is planned against the state the earlier
//! ones leave.

use std::sync::Arc;

use crate::event::Event;
use crate::name::ModelName;

use super::*;

/// The index plus changes not yet durable: what commands are planned against.
///
/// Changes are kept in an overlay with an undo log, so one command (or a whole
/// batch) that fails part-way is rolled back without touching the others.
#[derive(Debug)]
pub struct Draft<'a> {
    base: &'a Index,
    exact: HashMap<Arc<str>, Option<AliasEntry>>,
    prefixes: HashMap<Arc<str>, Option<AliasEntry>>,
    /// Target key -> the overlay's aliases given that target: with the base's
    /// reverse links, the dependents of a name without a scan of the overlay.
    /// A member whose target has changed again (or was rolled back) is
    /// filtered out on reading.
    dependents: HashMap<Arc<str>, HashSet<DepKey>>,
    /// Chain ends found while planning, kept across the commands of a group
    /// (a batch building a chain of n resolves each alias once); an alias
    /// whose target changes is forgotten with its transitive dependents.
    ends: Option<ChainEnds<'a>>,
    undo: Vec<(DepKey, Option<Option<AliasEntry>>)>,
    events: Vec<Event>,
    next_seq: u64,
    /// In a fleet, the other live nodes' models, for validation.
    inventory: Option<&'a crate::command::Inventory>,
}

/// A point a [`Draft`] can roll back to.
#[derive(Debug, Clone, Copy)]
pub struct Checkpoint {
    undo_len: usize,
    events_len: usize,
    next_seq: u64,
}

impl<'a> Draft<'a> {
    /// Starts a draft over `base`; new events get seqs from `next_seq`.
    pub fn new(base: &'a Index, next_seq: u64) -> Draft<'a> {
        Draft {
            base,
            exact: HashMap::default(),
            prefixes: HashMap::default(),
            dependents: HashMap::default(),
            ends: None,
            undo: Vec::new(),
            events: Vec::new(),
            next_seq,
            inventory: None,
        }
    }

    /// Plans against the fleet's other live nodes' models as well (SPEC §8).
    pub fn set_inventory(&mut self, inventory: &'a crate::command::Inventory) {
        self.inventory = Some(inventory);
    }

    /// The fleet's other live nodes' models, in a fleet.
    pub fn inventory(&self) -> Option<&'a crate::command::Inventory> {
        self.inventory
    }

    /// The seq the next event will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Remembers the current state.
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            undo_len: self.undo.len(),
            events_len: self.events.len(),
            next_seq: self.next_seq,
        }
    }

    /// Where the chain from `start` ends in this draft, as
    /// [`AliasView::chain_end`] says; each alias is walked once per draft
    /// (while its target stays), so planning a group costs the aliases it
    /// touches, not those times the depth of their chains. A draft is planned
    /// against one model set; given another, it starts over.
    pub fn chain_end_cached(&mut self, models: &'a Models, start: &ModelName) -> ChainEnd<'a> {
        let mut ends = match self.ends.take() {
            Some(ends) if std::ptr::eq(ends.models(), models) => ends,
            _ => ChainEnds::new(models),
        };
        let end = ends.end_of(&*self, start);
        self.ends = Some(ends);
        end
    }

    /// Returns to a checkpoint, forgetting what was recorded after it.
    pub fn rollback(&mut self, checkpoint: Checkpoint) {
        if self.undo.len() > checkpoint.undo_len {
            // Targets go back to what they were: what was learnt of chains since may be wrong.
            self.ends = None;
        }
        while self.undo.len() > checkpoint.undo_len {
            let Some((dep, before)) = self.undo.pop() else {
                break;
            };
            let table = if dep.prefix {
                &mut self.prefixes
            } else {
                &mut self.exact
            };
            match before {
                None => {
                    table.remove(&dep.key);
                }
                Some(value) => {
                    table.insert(dep.key, value);
                }
            }
        }
        self.events.truncate(checkpoint.events_len);
        self.next_seq = checkpoint.next_seq;
    }

    /// Records an event (its seq is assigned here) and applies it to the overlay.
    ///
    /// # Errors
    ///
    /// The event's names do not parse; nothing is recorded.
    pub fn record(&mut self, mut event: Event) -> Result<&Event, String> {
        event.seq = self.next_seq;
        let alias = AliasName::of_event(&event)?;
        let dep = DepKey::new(alias.is_prefix(), alias.key_arc());
        let change = PreparedChange {
            seq: event.seq,
            time: parse_time(&event.time),
            kind: event.kind,
            alias,
            target: parse_target(&event)?,
            digest: event.digest.as_deref().map(Arc::from),
            // A draft plans this node's own events, whose state is the
            // entry's own: recorded untagged, tagged when committed.
            node: None,
        };
        let previous = self.entry(&dep);
        let previous_target = previous.map(|e| e.target.key_arc());
        let next = next_entry(previous, change);
        let next_target = next.as_ref().map(|e| e.target.key_arc());
        let table = if dep.prefix {
            &mut self.prefixes
        } else {
            &mut self.exact
        };
        let before = table.insert(dep.key.clone(), next);
        if previous_target != next_target {
            if let Some(target) = next_target {
                self.dependents
                    .entry(target)
                    .or_default()
                    .insert(dep.clone());
            }
            if !dep.prefix {
                self.forget_chains_through(&dep.key);
            }
        }
        self.undo.push((dep, before));
        self.next_seq += 1;
        self.events.push(event);
        Ok(self.events.last().expect("just pushed"))
    }

    /// Forgets the chain ends that ran through the exact alias `key`, whose
    /// target just changed: its own and its transitive dependents'.
    fn forget_chains_through(&mut self, key: &Arc<str>) {
        let Some(mut ends) = self.ends.take() else {
            return;
        };
        if !ends.is_empty() {
            ends.forget(key);
            for dep in self.transitive_dependents(key) {
                ends.forget(&dep.key);
            }
        }
        self.ends = Some(ends);
    }

    /// The events recorded since `checkpoint`.
    pub fn events_since(&self, checkpoint: Checkpoint) -> &[Event] {
        &self.events[checkpoint.events_len..]
    }

    /// Every recorded event, in order.
    pub fn into_events(self) -> Vec<Event> {
        self.events
    }
}

impl AliasView for Draft<'_> {
    fn exact(&self, key: &str) -> Option<&AliasEntry> {
        match self.exact.get(key) {
            Some(overlay) => overlay.as_ref(),
            None => self.base.exact.get(key).map(|e| &**e),
        }
    }

    fn prefix(&self, key: &str) -> Option<&AliasEntry> {
        match self.prefixes.get(key) {
            Some(overlay) => overlay.as_ref(),
            None => self.base.prefixes.get(key).map(|e| &**e),
        }
    }

    fn dependents(&self, target_key: &str) -> Vec<DepKey> {
        let points_here = |dep: &DepKey| {
            self.entry(dep)
                .is_some_and(|e| e.target.key_str() == target_key)
        };
        let base = self.base.dependents.get(target_key);
        let mut out: Vec<DepKey> = base
            .into_iter()
            .flatten()
            .filter(|dep| points_here(dep))
            .cloned()
            .collect();
        if let Some(added) = self.dependents.get(target_key) {
            let in_base = |dep: &DepKey| base.is_some_and(|set| set.contains(dep));
            out.extend(
                added
                    .iter()
                    .filter(|dep| !in_base(dep) && points_here(dep))
                    .cloned(),
            );
        }
        out.sort();
        out
    }
}
