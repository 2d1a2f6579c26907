//! The in-memory registry: aliases, chains, prefix aliases, reverse dependencies.
//!
//! Pure: no I/O, not async. The index is a fold of [`Index::apply`] over the
//! journal's events; the live path and replay use the same function. Commands
//! are planned against a [`Draft`] (the index plus not-yet-durable changes), so a
//! group of commands, or a batch, is validated against the state the earlier ones
//! leave, and nothing reaches the shared index before it is durable.

//!
//! Layout: `types.rs` (entries, names, models), `prepare.rs` (parsing an
//! event's names and time once), `resolve.rs` (chains, reverse
//! dependencies, resolution), `draft.rs` (pending changes over the index),
//! `time.rs` (event times), `history.rs` (the seqs of each alias's events);
//! this file, the index and `Index::apply`.

mod draft;
mod history;
mod prepare;
mod resolve;
mod time;
mod types;

pub use draft::*;
pub use history::AliasSeqs;
pub use prepare::*;
pub use resolve::*;
pub use time::*;
pub use types::*;

use std::collections::{HashMap as StdHashMap, HashSet as StdHashSet};
use std::sync::Arc;

use crate::event::{Event, EventType, StateChange};
use crate::name::ModelName;

/// The index's maps: keys can come from requests, so the hasher is seeded per
/// process (like std's) but much faster than SipHash on short names.
type HashMap<K, V> = StdHashMap<K, V, foldhash::fast::RandomState>;
type HashSet<K> = StdHashSet<K, foldhash::fast::RandomState>;

/// The authoritative registry state derived from the journal.
///
/// Keys are shared strings: the key of an exact alias is the same allocation
/// as its name's key, and targets and digests are interned, so an alias costs
/// its entry and one name allocation.
#[derive(Debug, Clone)]
pub struct Index {
    /// Entries are boxed: a map's spare capacity then costs a pointer, not an entry.
    exact: HashMap<Arc<str>, Box<AliasEntry>>,
    prefixes: HashMap<Arc<str>, Box<AliasEntry>>,
    /// Direct target key -> the exact and prefix aliases pointing at it.
    dependents: HashMap<Arc<str>, HashSet<DepKey>>,
    tombstones: HashMap<Arc<str>, Tombstone>,
    /// Interned target names, by spelling.
    names: HashMap<Arc<str>, ModelName>,
    /// Interned digests.
    digests: HashSet<Arc<str>>,
    /// Parses the names of live events, each target spelling once.
    preparer: Preparer,
    last_seq: u64,
    /// How many aliases (exact and prefix) are in each state, by
    /// `AliasState as usize`: kept as entries come and go, so that
    /// `/metrics` reads three numbers instead of walking every alias.
    state_counts: [u64; 3],
    /// The seqs of each alias's events applied here (after `history_from`);
    /// `None` when not kept (a time-travel index).
    history: Option<AliasSeqs>,
    /// Events up to this seq came from a snapshot, not through `apply`:
    /// their seqs are in `history_base` once that is installed.
    history_from: u64,
    /// The seqs of the events up to `history_from`, gathered from the log
    /// after start-up ([`Index::install_history_base`]).
    history_base: Option<Arc<AliasSeqs>>,
    /// This node's name in a fleet: its own observations change the
    /// entries' state (what it materializes); others' change only
    /// [`Index::node_states`]. `None` on a single host.
    node: Option<Arc<str>>,
    /// Alias key (exact or prefix) -> per-node states, for the aliases some node has
    /// reported on since their last fleet-wide change (SPEC §8). Always
    /// empty on a single host, so it costs nothing per alias there.
    per_node: HashMap<Arc<str>, Box<NodeStates>>,
    /// Changes with every change made through `&mut self` ([`Stamp`]).
    stamp: Stamp,
}

impl Default for Index {
    fn default() -> Index {
        Index {
            exact: HashMap::default(),
            prefixes: HashMap::default(),
            dependents: HashMap::default(),
            tombstones: HashMap::default(),
            names: HashMap::default(),
            digests: HashSet::default(),
            preparer: Preparer::default(),
            last_seq: 0,
            state_counts: [0; 3],
            history: Some(AliasSeqs::default()),
            history_from: 0,
            history_base: None,
            node: None,
            per_node: HashMap::default(),
            stamp: Stamp::fresh(),
        }
    }
}

impl Index {
    /// The version of this index: another after any change.
    pub fn stamp(&self) -> Stamp {
        self.stamp
    }

    /// The seq of the last applied event.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// The seqs of the events about the alias with key `key` after `after`
    /// and up to `until`, at most `max`, ascending; `None` while the index
    /// does not know them all (the seqs of a snapshot's events are not yet
    /// gathered, or this index keeps none).
    pub fn alias_seqs(&self, key: &str, after: u64, until: u64, max: usize) -> Option<Vec<u64>> {
        // Three sources, each sorted, merged: the lists of past events
        // applied here, the base gathered from the log for the events up to
        // `history_from` (but those its entries held), and the latest event
        // of a live alias, which is its entry's seq (see `AliasSeqs`).
        let live = self.history.as_ref()?;
        let mut seqs = live.page(key, after, until, max);
        if self.history_from > 0 && after < self.history_from {
            let base = self.history_base.as_ref()?;
            seqs.extend(base.page(key, after, until.min(self.history_from), max));
        }
        seqs.extend(
            [self.exact.get(key), self.prefixes.get(key)]
                .into_iter()
                .flatten()
                .map(|entry| entry.seq)
                .filter(|seq| *seq > after && *seq <= until),
        );
        seqs.sort_unstable();
        seqs.dedup();
        seqs.truncate(max);
        Some(seqs)
    }

    /// [`Index::alias_seqs`] for the events of type `kind`.
    pub fn kind_seqs(
        &self,
        kind: EventType,
        after: u64,
        until: u64,
        max: usize,
    ) -> Option<Vec<u64>> {
        self.seqs_of(after, until, max, |seqs, after, until, max| {
            seqs.kind_page(kind, after, until, max)
        })
    }

    /// A page of seqs from `page` of the base (the events up to
    /// `history_from`), then of the seqs applied since.
    fn seqs_of(
        &self,
        after: u64,
        until: u64,
        max: usize,
        page: impl Fn(&AliasSeqs, u64, u64, usize) -> Vec<u64>,
    ) -> Option<Vec<u64>> {
        let live = self.history.as_ref()?;
        let mut seqs = Vec::new();
        if self.history_from > 0 && after < self.history_from {
            let base = self.history_base.as_ref()?;
            seqs = page(base, after, until.min(self.history_from), max);
        }
        if seqs.len() < max && until > self.history_from {
            let after = seqs.last().copied().unwrap_or(after).max(after);
            seqs.extend(page(live, after, until, max - seqs.len()));
        }
        Some(seqs)
    }

    /// The seq up to which the events' seqs per alias are still to be
    /// gathered from the log (those a snapshot covered), if any are.
    pub fn history_gap(&self) -> Option<u64> {
        (self.history.is_some() && self.history_from > 0 && self.history_base.is_none())
            .then_some(self.history_from)
    }

    /// Installs the seqs per alias of the events up to `upto`, gathered
    /// from the log, if they are the ones missing ([`Index::history_gap`]).
    pub fn install_history_base(&mut self, base: Arc<AliasSeqs>, upto: u64) {
        self.stamp = Stamp::fresh();
        if self.history_gap() == Some(upto) {
            self.history_base = Some(base);
        }
    }

    /// Stops keeping the seqs of each alias's events (an index that
    /// answers one time-travel request needs none).
    pub fn without_history(mut self) -> Index {
        self.stamp = Stamp::fresh();
        self.history = None;
        self
    }

    /// What the seqs per alias take: the events and aliases recorded since
    /// start-up (or the snapshot), and their heap bytes.
    pub fn history_size(&self) -> (u64, usize, usize) {
        self.history
            .as_ref()
            .map_or((0, 0, 0), |h| (h.events(), h.aliases(), h.heap_bytes()))
    }

    /// Number of aliases, exact and prefix.
    pub fn len(&self) -> usize {
        self.exact.len() + self.prefixes.len()
    }

    /// How many aliases are active, dangling and shadowed (by
    /// `AliasState as usize`).
    pub fn state_counts(&self) -> [u64; 3] {
        self.state_counts
    }

    /// Whether there are no aliases.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every alias, exact and prefix, sorted by display name (case-insensitively).
    pub fn sorted(&self) -> Vec<&AliasEntry> {
        let mut all: Vec<(String, &AliasEntry)> = self
            .exact
            .values()
            .chain(self.prefixes.values())
            .map(|e| &**e)
            .map(|e| (e.alias.display().to_lowercase(), e))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all.into_iter().map(|(_, e)| e).collect()
    }

    /// Every alias, exact and prefix, in no particular order.
    pub fn entries(&self) -> impl Iterator<Item = &AliasEntry> {
        self.exact
            .values()
            .chain(self.prefixes.values())
            .map(|e| &**e)
    }

    /// The exact aliases, in no particular order.
    pub fn exact_entries(&self) -> impl Iterator<Item = &AliasEntry> {
        self.exact.values().map(|e| &**e)
    }

    /// The prefix aliases, in no particular order.
    pub fn prefix_entries(&self) -> impl Iterator<Item = &AliasEntry> {
        self.prefixes.values().map(|e| &**e)
    }

    /// Deleted aliases whose file may linger.
    pub fn tombstones(&self) -> impl Iterator<Item = &Tombstone> {
        self.tombstones.values()
    }

    /// The tombstone of the deleted alias with this key, if its file may linger.
    pub fn tombstone(&self, key: &str) -> Option<&Tombstone> {
        self.tombstones.get(key)
    }

    /// Looks an alias up by the name a user typed: exact first, then a prefix
    /// alias with exactly that spelling.
    pub fn lookup(&self, name: &str) -> Option<&AliasEntry> {
        if let Ok(parsed) = ModelName::parse(name) {
            if let Some(entry) = self.exact.get(parsed.key_str()) {
                return Some(entry);
            }
        }
        self.prefixes
            .get(name.to_lowercase().as_str())
            .map(|e| &**e)
    }

    /// The longest prefix alias matching `name` (lowercase comparison).
    pub fn longest_prefix(&self, name: &str) -> Option<&AliasEntry> {
        let lower = name.to_lowercase();
        self.prefixes
            .iter()
            .filter(|(prefix, _)| lower.starts_with(&***prefix))
            .max_by_key(|(prefix, _)| prefix.len())
            .map(|(_, entry)| &**entry)
    }

    /// Resolves a name as Ollama would see it: a model with the exact name,
    /// else an exact alias, else the longest matching prefix alias.
    pub fn resolve(&self, models: &Models, name: &str) -> Result<Resolution, ResolveError> {
        let parsed = ModelName::parse(name).ok();
        if let Some(parsed) = &parsed {
            if let Some(model) = models.get(parsed.key_str()) {
                return Ok(Resolution {
                    resolved: model.name.clone(),
                    chain: vec![parsed.display()],
                    via: Via::Model,
                    digest: model.digest.clone(),
                });
            }
        }
        let (first, via) = match parsed.as_ref().and_then(|p| self.exact.get(p.key_str())) {
            Some(entry) => (&**entry, Via::Alias),
            None => match self.longest_prefix(name) {
                Some(entry) => (entry, Via::Prefix),
                None => return Err(ResolveError::NotFound(name.to_string())),
            },
        };
        let asked = parsed
            .map(|p| p.display())
            .unwrap_or_else(|| name.to_string());
        // The chain starts with the name asked; errors take it from there.
        let mut chain = Vec::with_capacity(4);
        chain.push(asked);
        let mut current = first.target.clone();
        loop {
            chain.push(current.display());
            if let Some(model) = models.get(current.key_str()) {
                return Ok(Resolution {
                    resolved: model.name.clone(),
                    chain,
                    via,
                    digest: model.digest.clone(),
                });
            }
            match self.exact.get(current.key_str()) {
                None => {
                    let missing = chain.pop().unwrap_or_default();
                    return Err(ResolveError::Dangling {
                        alias: chain.swap_remove(0),
                        missing,
                    });
                }
                Some(entry) => {
                    if chain.len() > self.exact.len() + 2 {
                        return Err(ResolveError::Cycle(chain.swap_remove(0)));
                    }
                    current = entry.target.clone();
                }
            }
        }
    }

    /// Applies one committed event. Replay and the live path both call this.
    ///
    /// # Errors
    ///
    /// An event whose alias name does not parse (a journal written by a
    /// different build); the index is left unchanged.
    pub fn apply(&mut self, event: &Event) -> Result<(), String> {
        self.apply_change(&event.change())
    }

    /// [`Index::apply`] on the state-relevant fields only (what replay decodes).
    ///
    /// # Errors
    ///
    /// As [`Index::apply`].
    pub fn apply_change(&mut self, change: &StateChange<'_>) -> Result<(), String> {
        // The stamp changes in `apply_prepared`, the one way in.
        let prepared = self.preparer.prepare(change)?;
        self.apply_prepared(prepared);
        Ok(())
    }

    /// [`Index::apply`] on a change already parsed (by any [`Preparer`]).
    ///
    /// In a fleet, an event observed by another node changes only that
    /// node's state (and the alias's `seq` and `updated_at`, which every
    /// node shares); one observed by this node changes the entry as on a
    /// single host; a fleet-wide event (`node` null) resets every node to
    /// the state it implies.
    pub fn apply_prepared(&mut self, change: PreparedChange) {
        self.stamp = Stamp::fresh();
        let key = change.alias.key_arc();
        let prefix = change.alias.is_prefix();
        let seq = change.seq;
        self.last_seq = self.last_seq.max(seq);
        if let Some(history) = &mut self.history {
            history.record_kind(change.kind, seq);
        }
        match &change.node {
            Some(node) if self.node.as_ref() != Some(node) => {
                self.apply_other_node(key, change);
                return;
            }
            Some(node) => {
                // Prefix aliases too: their state follows their chain's model
                // on each node (no file, but dangling where it is missing).
                let table = if prefix { &self.prefixes } else { &self.exact };
                if let Some(entry) = table.get(&key) {
                    let presumed = NodeState {
                        state: entry.state,
                        digest: entry.digest.clone(),
                    };
                    let observed = observed_state(&change);
                    self.per_node
                        .entry(key.clone())
                        .or_insert_with(|| Box::new(NodeStates::presumed(presumed)))
                        .report(node.clone(), observed);
                }
            }
            // Looking in an empty map still hashes the key: a single host's
            // map is always empty.
            None if !self.per_node.is_empty() => {
                self.per_node.remove(&key);
            }
            None => {}
        }
        // One lookup for an alias seen for the first time (most of a replay):
        // its slot is filled in place, without hashing its key again.
        let table = if prefix {
            &mut self.prefixes
        } else {
            &mut self.exact
        };
        let previous = match table.entry(key.clone()) {
            std::collections::hash_map::Entry::Occupied(occupied) => *occupied.remove(),
            std::collections::hash_map::Entry::Vacant(vacant) => {
                let Some(entry) = next_entry(None, change) else {
                    // No entry holds this event's seq: the list does.
                    if let Some(history) = &mut self.history {
                        history.record_alias(prefix, &key, seq);
                    }
                    return;
                };
                let entry = intern_entry(&mut self.names, &mut self.digests, entry);
                self.state_counts[entry.state as usize] += 1;
                if !prefix && !self.tombstones.is_empty() {
                    self.tombstones.remove(&key);
                }
                self.dependents
                    .entry(entry.target.key_arc())
                    .or_default()
                    .insert(DepKey::new(prefix, key));
                vacant.insert(Box::new(entry));
                return;
            }
        };
        self.state_counts[previous.state as usize] -= 1;
        let dep = DepKey::new(prefix, key.clone());
        let next = next_entry(Some(&previous), change);
        if let Some(history) = &mut self.history {
            // The previous latest event is now a past one (even one a
            // snapshot covered: the base leaves out the seqs its entries
            // held); a deleting event has no entry to hold it.
            history.record_alias(prefix, &key, previous.seq);
            if next.is_none() {
                history.record_alias(prefix, &key, seq);
            }
        }
        self.unlink(&dep, previous.target.key_str());
        if next.is_none() {
            if let (AliasName::Exact(name), Some(digest)) = (&previous.alias, &previous.digest) {
                let tombstone = Tombstone {
                    name: name.clone(),
                    digest: digest.clone(),
                };
                self.tombstones.insert(key, tombstone);
            }
        }
        if let Some(entry) = next {
            self.insert(dep, entry);
        }
    }

    /// Adds an entry (interning its target and digests) and its reverse link.
    fn insert(&mut self, dep: DepKey, entry: AliasEntry) {
        let entry = intern_entry(&mut self.names, &mut self.digests, entry);
        self.state_counts[entry.state as usize] += 1;
        self.dependents
            .entry(entry.target.key_arc())
            .or_default()
            .insert(dep.clone());
        // Looking in an empty map still hashes the key; a replay of creations has none.
        if !dep.prefix && !self.tombstones.is_empty() {
            self.tombstones.remove(&dep.key);
        }
        self.table_mut(dep.prefix).insert(dep.key, Box::new(entry));
    }

    /// An observation by another node: its state, and the alias's seq and
    /// time; this node's own state stays.
    fn apply_other_node(&mut self, key: Arc<str>, change: PreparedChange) {
        // The fields apart (not `table_mut`), so that `history` can be
        // written while the entry is held.
        let table = match change.alias.is_prefix() {
            true => &mut self.prefixes,
            false => &mut self.exact,
        };
        let Some(entry) = table.get_mut(&key) else {
            // No entry holds this event's seq: the list does.
            if let Some(history) = &mut self.history {
                history.record_alias(change.alias.is_prefix(), &key, change.seq);
            }
            return;
        };
        // The entry's latest event becomes a past one, as in `apply_prepared`.
        let past = entry.seq;
        entry.seq = change.seq;
        if let Some(history) = &mut self.history {
            history.record_alias(change.alias.is_prefix(), &key, past);
        }
        entry.updated_at = change.time;
        let presumed = NodeState {
            state: entry.state,
            digest: entry.digest.clone(),
        };
        let mut observed = observed_state(&change);
        if let Some(digest) = observed.digest.take() {
            observed.digest = Some(intern_digest(&mut self.digests, digest));
        }
        let node = change.node.expect("an observation names its node");
        let states = match self.per_node.entry(key) {
            std::collections::hash_map::Entry::Occupied(occupied) => occupied.into_mut(),
            // This node has not reported: its own state is the presumed one.
            std::collections::hash_map::Entry::Vacant(vacant) => {
                vacant.insert(Box::new(NodeStates::presumed(presumed)))
            }
        };
        states.report(node, observed);
    }

    /// This node's name in a fleet, if it is in one.
    pub fn node(&self) -> Option<&Arc<str>> {
        self.node.as_ref()
    }

    /// Makes `node` this node (fleet mode; `None` on a single host), and
    /// re-derives each alias's own state from what that node reported: an
    /// index loaded from a snapshot another node wrote, or built before the
    /// name was known, then holds this node's view.
    pub fn set_node(&mut self, node: Option<&str>) {
        self.stamp = Stamp::fresh();
        self.node = node.map(Arc::from);
        let Some(node) = self.node.clone() else {
            return;
        };
        for (key, states) in &self.per_node {
            // An exact and a prefix alias never share a key at once (their
            // spellings cannot be alike, SPEC §2 / `plan_put`).
            let entry = match self.exact.get_mut(key) {
                Some(entry) => entry,
                None => match self.prefixes.get_mut(key) {
                    Some(entry) => entry,
                    None => continue,
                },
            };
            let own = states.on(&node);
            if entry.state != own.state || entry.digest != own.digest {
                self.state_counts[entry.state as usize] -= 1;
                self.state_counts[own.state as usize] += 1;
                entry.state = own.state;
                entry.digest = own.digest.clone();
            }
        }
    }

    /// The per-node states of an alias (exact or prefix, by key), when some node has reported
    /// on it since its last fleet-wide change (else every node is in the
    /// state of the entry... or the entry's own, for this node).
    pub fn node_states(&self, key: &str) -> Option<&NodeStates> {
        self.per_node.get(key).map(|s| &**s)
    }

    /// Every alias's per-node states (for snapshots).
    pub fn all_node_states(&self) -> impl Iterator<Item = (&Arc<str>, &NodeStates)> {
        self.per_node.iter().map(|(key, states)| (key, &**states))
    }

    /// Adds per-node states read from a snapshot.
    pub fn insert_node_states(&mut self, key: Arc<str>, states: NodeStates) {
        self.stamp = Stamp::fresh();
        self.per_node.insert(key, Box::new(states));
    }

    /// The state of `entry` on `node`: its own for this node, else what
    /// that node reported since the last fleet-wide change, else the
    /// presumed one.
    pub fn state_on(&self, entry: &AliasEntry, node: &str) -> NodeState {
        let own = NodeState {
            state: entry.state,
            digest: entry.digest.clone(),
        };
        if self.node.as_deref() == Some(node) {
            return own;
        }
        match self.per_node.get(entry.alias.key_arc().as_ref()) {
            Some(states) => states.on(node).clone(),
            None => own,
        }
    }

    /// The nodes that have reported on some alias since its last
    /// fleet-wide change.
    pub fn reporting_nodes(&self) -> std::collections::BTreeSet<Arc<str>> {
        self.per_node
            .values()
            .flat_map(|s| s.reported.iter().map(|(node, _)| node.clone()))
            .collect()
    }

    /// Forgets a tombstone once its file is known to be gone.
    pub fn clear_tombstone(&mut self, key: &str) {
        self.stamp = Stamp::fresh();
        self.tombstones.remove(key);
    }

    fn table_mut(&mut self, prefix: bool) -> &mut HashMap<Arc<str>, Box<AliasEntry>> {
        if prefix {
            &mut self.prefixes
        } else {
            &mut self.exact
        }
    }

    fn unlink(&mut self, dep: &DepKey, target_key: &str) {
        if let Some(set) = self.dependents.get_mut(target_key) {
            set.remove(dep);
            if set.is_empty() {
                self.dependents.remove(target_key);
            }
        }
    }

    /// An empty index to fill from a snapshot covering events up to `last_seq`
    /// and holding `aliases` aliases.
    pub fn for_snapshot(last_seq: u64, aliases: usize) -> Index {
        let mut index = Index {
            last_seq,
            history_from: last_seq,
            ..Index::default()
        };
        index.exact.reserve(aliases);
        index
    }

    /// Makes room for up to `events` new exact aliases before a replay of that
    /// many events, so the map does not grow (rehashing every key) a dozen
    /// times on the way to a million. [`Index::release_spare`] gives back what
    /// the replay did not use.
    pub fn reserve_for_replay(&mut self, events: usize) {
        self.stamp = Stamp::fresh();
        self.exact.reserve(events);
    }

    /// Gives back the spare room of a replay that updated more aliases than it
    /// created (when over half the map would stay empty).
    pub fn release_spare(&mut self) {
        self.stamp = Stamp::fresh();
        if self.exact.capacity() / 2 > self.exact.len() {
            self.exact.shrink_to_fit();
        }
    }

    /// Adds an alias read from a snapshot.
    pub fn insert_entry(&mut self, entry: AliasEntry) {
        self.stamp = Stamp::fresh();
        let dep = DepKey::new(entry.alias.is_prefix(), entry.alias.key_arc());
        self.insert(dep, entry);
    }

    /// Adds a tombstone read from a snapshot.
    pub fn insert_tombstone(&mut self, tombstone: Tombstone) {
        self.stamp = Stamp::fresh();
        self.tombstones.insert(tombstone.name.key_arc(), tombstone);
    }
}

impl AliasView for Index {
    fn exact(&self, key: &str) -> Option<&AliasEntry> {
        self.exact.get(key).map(|e| &**e)
    }

    fn prefix(&self, key: &str) -> Option<&AliasEntry> {
        self.prefixes.get(key).map(|e| &**e)
    }

    fn dependents(&self, target_key: &str) -> Vec<DepKey> {
        let mut out: Vec<DepKey> = self
            .dependents
            .get(target_key)
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default();
        out.sort();
        out
    }
}

fn parse_target(event: &Event) -> Result<Option<ModelName>, String> {
    match &event.target {
        None => Ok(None),
        Some(target) => ModelName::parse(target)
            .map(Some)
            .map_err(|e| e.to_string()),
    }
}

/// The state an observation reports (its node's state after it).
fn observed_state(change: &PreparedChange) -> NodeState {
    match change.kind {
        EventType::TargetRemoved => NodeState {
            state: AliasState::Dangling,
            digest: None,
        },
        EventType::AliasShadowed => NodeState {
            state: AliasState::Shadowed,
            digest: None,
        },
        _ => NodeState {
            state: AliasState::Active,
            digest: change.digest.clone(),
        },
    }
}

/// The shared copy of `digest` (added to the set when new).
fn intern_digest(digests: &mut HashSet<Arc<str>>, digest: Arc<str>) -> Arc<str> {
    match digests.get(&digest) {
        Some(interned) => interned.clone(),
        None => {
            digests.insert(digest.clone());
            digest
        }
    }
}

/// `entry` with its target name and digests replaced by the shared copies
/// (added to the sets when new).
fn intern_entry(
    names: &mut HashMap<Arc<str>, ModelName>,
    digests: &mut HashSet<Arc<str>>,
    mut entry: AliasEntry,
) -> AliasEntry {
    entry.target = match names.get(entry.target.spelled()) {
        Some(interned) => interned.clone(),
        None => {
            names.insert(Arc::from(entry.target.spelled()), entry.target.clone());
            entry.target
        }
    };
    let mut intern_digest = |digest: Arc<str>| match digests.get(&digest) {
        Some(interned) => interned.clone(),
        None => {
            digests.insert(digest.clone());
            digest
        }
    };
    entry.digest = entry.digest.map(&mut intern_digest);
    entry.previous_digest = entry.previous_digest.map(&mut intern_digest);
    entry
}

/// The entry an event leaves behind, given the one before it.
fn next_entry(previous: Option<&AliasEntry>, change: PreparedChange) -> Option<AliasEntry> {
    let PreparedChange {
        seq,
        time,
        kind,
        alias,
        target,
        digest,
        node: _,
    } = change;
    let previous_digest = previous.and_then(|p| p.digest.clone());
    match kind {
        EventType::AliasDeleted => None,
        EventType::AliasCreated | EventType::AliasUpdated => {
            let target = target.or_else(|| previous.map(|p| p.target.clone()))?;
            let state = if alias.is_prefix() || digest.is_some() {
                AliasState::Active
            } else {
                AliasState::Dangling
            };
            let created_at = match (kind, previous) {
                (EventType::AliasUpdated, Some(p)) => p.created_at,
                _ => time,
            };
            Some(AliasEntry {
                alias,
                target,
                state,
                digest,
                previous_digest,
                created_at,
                updated_at: time,
                seq,
            })
        }
        kind => {
            let previous = previous?;
            let (state, digest) = match kind {
                EventType::TargetRemoved => (AliasState::Dangling, None),
                EventType::AliasShadowed => (AliasState::Shadowed, None),
                _ => (AliasState::Active, digest),
            };
            Some(AliasEntry {
                alias: previous.alias.clone(),
                target: target.unwrap_or_else(|| previous.target.clone()),
                state,
                digest,
                previous_digest,
                created_at: previous.created_at,
                updated_at: time,
                seq,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::time::parse_micros_form;

    fn humantime_micros(time: &str) -> Option<u64> {
        let parsed = humantime::parse_rfc3339(time).ok()?;
        let since = parsed.duration_since(std::time::UNIX_EPOCH).ok()?;
        Some(since.as_micros() as u64)
    }

    proptest::proptest! {
        /// The written form reads back to the same microsecond, as humantime reads it.


    #[test]
        fn times_read_back_as_written(micros in 0u64..8_000_000_000_000_000) {
            let written = format_time(micros);
            proptest::prop_assert_eq!(parse_micros_form(&written), Some(micros), "{}", written);
            proptest::prop_assert_eq!(humantime_micros(&written), Some(micros));
        }

        /// Whatever the fast form accepts, humantime reads the same way.
        #[test]
        fn fast_times_agree_with_humantime(
            time in "[0-9]{4}-[0-1][0-9]-[0-3][0-9]T[0-2][0-9]:[0-6][0-9]:[0-6][0-9]\\.[0-9]{6}Z",
        ) {
            if let Some(micros) = parse_micros_form(&time) {
                proptest::prop_assert_eq!(Some(micros), humantime_micros(&time), "{}", time);
            }
        }
    }

    #[test]
    fn other_time_forms_are_left_to_humantime() {
        for time in [
            "2026-02-29T00:00:00.000000Z",
            "2026-11-30T10:00:00Z",
            "1969-12-31T23:59:59.000000Z",
            "2026-11-30T24:00:00.000000Z",
        ] {
            assert_eq!(parse_micros_form(time), None, "{time}");
        }
        assert_eq!(
            parse_micros_form("2024-02-29T00:00:00.000001Z"),
            humantime_micros("2024-02-29T00:00:00.000001Z")
        );
        assert_eq!(
            parse_time("2026-11-30T10:00:00Z"),
            humantime_micros("2026-11-30T10:00:00Z").unwrap()
        );
    }

    fn model(name: &str) -> ModelInfo {
        let name = ModelName::parse(name).unwrap();
        let bytes: Arc<[u8]> = Arc::from(format!("{{\"m\":\"{}\"}}", name.key()).into_bytes());
        ModelInfo {
            digest: Arc::from(crate::digest::manifest_digest(&bytes)),
            name,
            bytes,
            size: Some(1),
            modified_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    fn event(
        seq: u64,
        kind: EventType,
        alias: &str,
        target: Option<&str>,
        digest: Option<&str>,
    ) -> Event {
        Event {
            seq,
            id: crate::event::new_id(),
            time: format_time(seq * 1_000_000),
            kind,
            alias: alias.into(),
            target: target.map(String::from),
            previous_target: None,
            digest: digest.map(String::from),
            prefix_matching: alias.ends_with('-'),
            actor: "test".into(),
            request_id: None,
            node: None,
        }
    }

    fn models(names: &[&str]) -> Models {
        let mut models = Models::default();
        for name in names {
            models.insert(model(name));
        }
        models
    }

    /// Applies events and checks `resolve(name)` against the expected chain (or error).
    fn check(events: &[Event], models: &Models, name: &str, expected: Result<&[&str], &str>) {
        let mut index = Index::default();
        for e in events {
            index.apply(e).unwrap();
        }
        let got = index.resolve(models, name);
        match expected {
            Ok(chain) => {
                let got = got.unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(got.chain, chain, "{name}");
            }
            Err(fragment) => {
                let err = got.expect_err(name).to_string();
                assert!(err.contains(fragment), "{name}: {err}");
            }
        }
    }

    /// An event of `kind` about `alias`, observed by `node` (`None`: fleet-wide).
    fn fleet_event(
        seq: u64,
        kind: EventType,
        alias: &str,
        digest: u8,
        node: Option<&str>,
    ) -> Event {
        let digest = (digest > 0).then(|| format!("sha256:{digest}"));
        let target = match kind {
            EventType::AliasDeleted => None,
            _ => Some("m"),
        };
        let mut event = event(seq, kind, alias, target, digest.as_deref());
        event.node = node.map(String::from);
        event
    }

    const NODES: [&str; 3] = ["a", "b", "c"];

    fn fleet_events() -> impl proptest::strategy::Strategy<Value = Vec<(u8, u8, u8, u8)>> {
        // (kind, alias, digest, node): node 0 is a fleet-wide event; alias 3
        // is the prefix alias `x-`.
        proptest::collection::vec((0u8..8, 0u8..4, 0u8..3, 0u8..4), 0..40)
    }

    fn to_events(raw: &[(u8, u8, u8, u8)]) -> Vec<Event> {
        raw.iter()
            .enumerate()
            .map(|(i, &(kind, alias, digest, node))| {
                let kind = EventType::ALL[kind as usize];
                let node = match is_observation(kind) {
                    true => node.checked_sub(1).map(|n| NODES[n as usize]),
                    false => None,
                };
                let alias = match alias {
                    3 => "x-".to_string(),
                    n => format!("x{n}"),
                };
                fleet_event(i as u64 + 1, kind, &alias, digest, node)
            })
            .collect()
    }

    proptest::proptest! {
        /// Whatever the order of fleet-wide events and observations, each
        /// node's state is what a fold over the fleet-wide events and that
        /// node's own observations alone gives; this node's is the entry's.
        #[test]
        fn each_nodes_state_is_the_fold_of_its_own_events(raw in fleet_events()) {
            let events = to_events(&raw);
            for own in NODES {
                let mut index = Index::default();
                index.set_node(Some(own));
                for e in &events {
                    index.apply(e).unwrap();
                }
                // Built without knowing which node it is, then told.
                let mut late = Index::default();
                for e in &events {
                    late.apply(e).unwrap();
                }
                late.set_node(Some(own));
                for node in NODES {
                    let mut fold = Index::default();
                    for e in events.iter().filter(|e| e.node.as_deref().is_none_or(|n| n == node)) {
                        let mut e = e.clone();
                        e.node = None;
                        fold.apply(&e).unwrap();
                    }
                    // The exact aliases and the prefix alias `x-` alike.
                    for alias in ["x0", "x1", "x2", "x-"] {
                        let expected = fold.lookup(alias).map(|e| (e.state, e.digest.clone()));
                        let got = index.lookup(alias).map(|e| {
                            let s = index.state_on(e, node);
                            (s.state, s.digest)
                        });
                        proptest::prop_assert_eq!(&got, &expected, "{} seen from {}", node, own);
                        if node == own {
                            let entry = index.lookup(alias).map(|e| (e.state, e.digest.clone()));
                            proptest::prop_assert_eq!(&entry, &expected);
                            let late = late.lookup(alias).map(|e| (e.state, e.digest.clone()));
                            proptest::prop_assert_eq!(&late, &expected);
                        }
                        // Every node shares the alias's seq and existence.
                        proptest::prop_assert_eq!(
                            index.lookup(alias).map(|e| e.seq),
                            late.lookup(alias).map(|e| e.seq)
                        );
                    }
                }
                let mut counts = [0u64; 3];
                for entry in index.entries() {
                    counts[entry.state as usize] += 1;
                }
                proptest::prop_assert_eq!(counts, index.state_counts());
                let mut counts = [0u64; 3];
                for entry in late.entries() {
                    counts[entry.state as usize] += 1;
                }
                proptest::prop_assert_eq!(counts, late.state_counts());
            }
        }
    }

    /// A single host keeps no per-node state, whatever it applies.
    #[test]
    fn a_single_host_keeps_no_per_node_state() {
        let mut index = Index::default();
        for e in to_events(&[(0, 0, 1, 0), (4, 0, 0, 0), (6, 0, 0, 0), (5, 0, 2, 0)]) {
            index.apply(&e).unwrap();
        }
        assert_eq!(index.all_node_states().count(), 0);
        assert_eq!(index.node(), None);
    }

    #[test]
    fn room_made_for_a_replay_is_given_back_when_it_stays_unused() {
        let mut used = Index::default();
        used.reserve_for_replay(1_000);
        let mut unused = Index::default();
        unused.reserve_for_replay(100_000);
        for seq in 1..=1_000u64 {
            let alias = format!("a{seq}");
            let create = event(seq, EventType::AliasCreated, &alias, Some("m"), None);
            used.apply(&create).unwrap();
            // The same 1,000 events land on 2 aliases.
            let alias = format!("b{}", seq % 2);
            let kind = if seq <= 2 {
                EventType::AliasCreated
            } else {
                EventType::AliasUpdated
            };
            unused
                .apply(&event(seq, kind, &alias, Some("m"), None))
                .unwrap();
        }
        let capacity = used.exact.capacity();
        used.release_spare();
        assert_eq!(used.exact.capacity(), capacity, "a full map is kept");
        assert!(unused.exact.capacity() >= 100_000);
        unused.release_spare();
        assert!(unused.exact.capacity() < 100, "{}", unused.exact.capacity());
        assert_eq!(unused.len(), 2);
        let b1 = ModelName::parse("b1").unwrap();
        assert!(unused.exact(b1.key_str()).is_some());
    }

    #[test]
    fn resolves_models_chains_and_prefixes() {
        let ms = models(&["llama3", "qwen2.5-coder:32b"]);
        let d = Some("sha256:x");
        let events = [
            event(
                1,
                EventType::AliasCreated,
                "coder",
                Some("qwen2.5-coder:32b"),
                d,
            ),
            event(2, EventType::AliasCreated, "c", Some("coder"), d),
            event(3, EventType::AliasCreated, "my-", Some("llama3"), None),
            event(4, EventType::AliasCreated, "my-long-", Some("c"), None),
            event(5, EventType::AliasCreated, "gone", Some("missing"), None),
        ];
        check(&events, &ms, "llama3", Ok(&["llama3"]));
        check(&events, &ms, "coder", Ok(&["coder", "qwen2.5-coder:32b"]));
        check(
            &events,
            &ms,
            "C:latest",
            Ok(&["C", "coder", "qwen2.5-coder:32b"]),
        );
        check(&events, &ms, "my-thing", Ok(&["my-thing", "llama3"]));
        check(
            &events,
            &ms,
            "MY-LONG-x",
            Ok(&["MY-LONG-x", "c", "coder", "qwen2.5-coder:32b"]),
        );
        check(&events, &ms, "nothing", Err("no model or alias"));
        check(&events, &ms, "gone", Err("dangling"));
        // The error names the alias asked and the missing name, as spelt.
        let mut index = Index::default();
        for e in &events {
            index.apply(e).unwrap();
        }
        assert_eq!(
            index.resolve(&ms, "GONE"),
            Err(ResolveError::Dangling {
                alias: "GONE".into(),
                missing: "missing".into()
            })
        );
        let cycle = [
            event(1, EventType::AliasCreated, "x", Some("y"), None),
            event(2, EventType::AliasCreated, "y", Some("x"), None),
        ];
        let mut index = Index::default();
        for e in &cycle {
            index.apply(e).unwrap();
        }
        assert_eq!(
            index.resolve(&ms, "x"),
            Err(ResolveError::Cycle("x".into()))
        );
    }

    #[test]
    fn apply_tracks_dependents_and_tombstones() {
        let mut index = Index::default();
        index
            .apply(&event(
                1,
                EventType::AliasCreated,
                "a",
                Some("m"),
                Some("sha256:1"),
            ))
            .unwrap();
        index
            .apply(&event(
                2,
                EventType::AliasCreated,
                "b",
                Some("a"),
                Some("sha256:1"),
            ))
            .unwrap();
        let a_key = ModelName::parse("a").unwrap().key();
        let m_key = ModelName::parse("m").unwrap().key();
        assert_eq!(index.dependents(&a_key).len(), 1);
        assert_eq!(index.transitive_dependents(&m_key).len(), 2);
        index
            .apply(&event(
                3,
                EventType::AliasUpdated,
                "b",
                Some("m"),
                Some("sha256:1"),
            ))
            .unwrap();
        assert!(index.dependents(&a_key).is_empty());
        assert_eq!(index.dependents(&m_key).len(), 2);
        index
            .apply(&event(
                4,
                EventType::AliasDeleted,
                "a",
                None,
                Some("sha256:1"),
            ))
            .unwrap();
        assert_eq!(index.tombstones().count(), 1);
        assert_eq!(index.len(), 1);
        assert_eq!(index.last_seq(), 4);
        index
            .apply(&event(
                5,
                EventType::AliasCreated,
                "a",
                Some("m"),
                Some("sha256:1"),
            ))
            .unwrap();
        assert_eq!(index.tombstones().count(), 0);
    }

    #[test]
    fn system_events_change_state() {
        let mut index = Index::default();
        index
            .apply(&event(
                1,
                EventType::AliasCreated,
                "a",
                Some("m"),
                Some("sha256:1"),
            ))
            .unwrap();
        let key = ModelName::parse("a").unwrap().key();
        let state = |index: &Index| index.exact(&key).unwrap().state;
        index
            .apply(&event(2, EventType::TargetRemoved, "a", Some("m"), None))
            .unwrap();
        assert_eq!(state(&index), AliasState::Dangling);
        index
            .apply(&event(
                3,
                EventType::TargetRestored,
                "a",
                Some("m"),
                Some("sha256:2"),
            ))
            .unwrap();
        assert_eq!(state(&index), AliasState::Active);
        assert_eq!(index.exact(&key).unwrap().previous_digest, None);
        index
            .apply(&event(4, EventType::AliasShadowed, "a", Some("m"), None))
            .unwrap();
        assert_eq!(state(&index), AliasState::Shadowed);
        assert_eq!(index.exact(&key).unwrap().seq, 4);
        assert_eq!(index.exact(&key).unwrap().created_at, 1_000_000);
    }

    #[test]
    fn draft_overlays_and_rolls_back() {
        let mut index = Index::default();
        index
            .apply(&event(
                1,
                EventType::AliasCreated,
                "a",
                Some("m"),
                Some("sha256:1"),
            ))
            .unwrap();
        let m_key = ModelName::parse("m").unwrap().key();
        let mut draft = Draft::new(&index, 2);
        let cp = draft.checkpoint();
        draft
            .record(event(
                0,
                EventType::AliasCreated,
                "b",
                Some("m"),
                Some("sha256:1"),
            ))
            .unwrap();
        draft
            .record(event(0, EventType::AliasDeleted, "a", None, None))
            .unwrap();
        assert_eq!(draft.dependents(&m_key).len(), 1);
        assert_eq!(draft.next_seq(), 4);
        draft.rollback(cp);
        assert_eq!(draft.dependents(&m_key).len(), 1);
        assert!(draft.exact(&ModelName::parse("a").unwrap().key()).is_some());
        assert!(draft.exact(&ModelName::parse("b").unwrap().key()).is_none());
        assert_eq!(draft.next_seq(), 2);
        assert!(draft.into_events().is_empty());
    }

    #[test]
    fn dep_keys_compare_and_hash_by_table_and_key() {
        use std::hash::BuildHasher;
        let state = foldhash::fast::RandomState::default();
        let a = DepKey::new(false, Arc::from("registry.ollama.ai/library/coder:latest"));
        let same = DepKey::new(false, Arc::from("registry.ollama.ai/library/coder:latest"));
        let prefix = DepKey::new(true, Arc::from("registry.ollama.ai/library/coder:latest"));
        let other = DepKey::new(false, Arc::from("registry.ollama.ai/library/chat:latest"));
        assert_eq!(a, same);
        assert_eq!(state.hash_one(&a), state.hash_one(&same));
        assert_ne!(a, prefix);
        assert_ne!(a, other);
        let mut sorted = vec![prefix.clone(), a.clone(), other.clone()];
        sorted.sort();
        assert_eq!(sorted, vec![other, a.clone(), prefix]);
        let set: HashSet<DepKey> = [a.clone(), same].into_iter().collect();
        assert_eq!(set.len(), 1);
        assert!(set.contains(&a));
    }

    #[test]
    fn remembered_chain_ends_are_the_walked_ones() {
        let ms = models(&["m"]);
        let mut index = Index::default();
        let links = [
            ("x", "y"),
            ("y", "x"),
            ("a", "x"),
            ("b", "missing"),
            ("c", "b"),
            ("d", "m"),
            ("e", "d"),
        ];
        for (seq, (alias, target)) in links.iter().enumerate() {
            let create = event(
                seq as u64 + 1,
                EventType::AliasCreated,
                alias,
                Some(target),
                None,
            );
            index.apply(&create).unwrap();
        }
        let names: Vec<ModelName> = ["e", "a", "c", "x", "y", "b", "d", "m", "missing"]
            .iter()
            .map(|n| ModelName::parse(n).unwrap())
            .collect();
        // In two orders: answers found on the way must not differ from a fresh walk.
        for order in [names.clone(), names.iter().rev().cloned().collect()] {
            let mut ends = ChainEnds::new(&ms);
            for name in &order {
                assert_eq!(
                    ends.end_of(&index, name),
                    index.chain_end(&ms, name),
                    "{name}"
                );
            }
        }
        let a = ModelName::parse("a").unwrap();
        assert_eq!(ChainEnds::new(&ms).end_of(&index, &a), ChainEnd::Cycle);
    }

    /// What keeps a rendered resolution (`http::aliases`) relies on: any
    /// change takes a new stamp, a copy keeps its original's.
    #[test]
    fn every_change_takes_a_new_stamp() {
        let mut index = Index::default();
        assert_ne!(index.stamp(), Index::default().stamp());
        let copy = index.clone();
        assert_eq!(copy.stamp(), index.stamp());
        let mut seen = vec![index.stamp()];
        let mut changed = |index: &Index| {
            assert!(!seen.contains(&index.stamp()), "a stamp used again");
            seen.push(index.stamp());
        };
        let created = event(1, EventType::AliasCreated, "coder", Some("llama3"), None);
        index.apply(&created).unwrap();
        changed(&index);
        index
            .apply_change(&event(2, EventType::AliasUpdated, "coder", Some("qwen"), None).change())
            .unwrap();
        changed(&index);
        index.set_node(Some("n1"));
        changed(&index);
        index.clear_tombstone("coder");
        changed(&index);
        let index = index.without_history();
        changed(&index);
        assert_ne!(Index::for_snapshot(2, 1).stamp(), index.stamp());

        let mut models = models(&["llama3"]);
        let before = models.stamp();
        assert_eq!(models.clone().stamp(), before);
        models.insert(model("qwen"));
        let inserted = models.stamp();
        assert_ne!(inserted, before);
        models.remove("qwen");
        assert_ne!(models.stamp(), inserted);
        assert_ne!(models.stamp(), before);
    }
}
