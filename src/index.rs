//! The in-memory registry: aliases, chains, prefix aliases, reverse dependencies.
//!
//! Pure: no I/O, not async. The index is a fold of [`Index::apply`] over the
//! journal's events; the live path and replay use the same function. Commands
//! are planned against a [`Draft`] (the index plus not-yet-durable changes), so a
//! group of commands, or a batch, is validated against the state the earlier ones
//! leave, and nothing reaches the shared index before it is durable.

use std::collections::{HashMap as StdHashMap, HashSet as StdHashSet};
use std::sync::Arc;

use crate::event::{Change, Event, EventType};
use crate::name::ModelName;

/// The index's maps: keys can come from requests, so the hasher is seeded per
/// process (like std's) but much faster than SipHash on short names.
type HashMap<K, V> = StdHashMap<K, V, foldhash::fast::RandomState>;
type HashSet<K> = StdHashSet<K, foldhash::fast::RandomState>;

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
    pub fn of_change(change: &Change<'_>) -> Result<AliasName, String> {
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

/// The models in the store, by name key.
#[derive(Debug, Clone, Default)]
pub struct Models {
    by_key: HashMap<String, ModelInfo>,
}

impl Models {
    /// Adds or replaces a model.
    pub fn insert(&mut self, model: ModelInfo) {
        self.by_key.insert(model.name.key(), model);
    }

    /// Removes a model by key.
    pub fn remove(&mut self, key: &str) -> Option<ModelInfo> {
        self.by_key.remove(key)
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

/// An event's state-relevant fields, parsed: what [`Index::apply_prepared`]
/// takes. Preparing needs no index, so replay prepares on one thread while it
/// applies on another.
#[derive(Debug, Clone)]
pub struct PreparedChange {
    seq: u64,
    /// Microseconds since the epoch.
    time: u64,
    kind: EventType,
    alias: AliasName,
    target: Option<ModelName>,
    digest: Option<Arc<str>>,
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
    pub fn prepare(&mut self, change: &Change<'_>) -> Result<PreparedChange, String> {
        let alias = AliasName::of_change(change)?;
        let target = match change.target.as_deref() {
            None => None,
            Some(text) => Some(self.target(text)?),
        };
        let digest = change.digest.as_deref().map(|d| self.digest(d));
        Ok(PreparedChange {
            seq: change.seq,
            time: parse_time(&change.time),
            kind: change.kind,
            alias,
            target,
            digest,
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

/// The authoritative registry state derived from the journal.
///
/// Keys are shared strings: the key of an exact alias is the same allocation
/// as its name's key, and targets and digests are interned, so an alias costs
/// its entry and one name allocation.
#[derive(Debug, Clone, Default)]
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
}

/// A key in the reverse-dependency map: which table, and the key there.
///
/// It carries a hash of its key, computed once by [`DepKey::new`] (in what would
/// be padding): the sets of a target's dependents grow to hundreds of thousands
/// at a million aliases, and growing a set rehashes every member, which then
/// reads this number instead of following the pointer to the string and
/// hashing it (that was 6% of a 1M-event replay).
#[derive(Debug, Clone)]
pub struct DepKey {
    prefix: bool,
    hash: u32,
    key: Arc<str>,
}

impl DepKey {
    /// The dependent `key` of the exact (`prefix` false) or prefix table.
    pub fn new(prefix: bool, key: Arc<str>) -> DepKey {
        use std::hash::BuildHasher;
        let hash = foldhash::fast::FixedState::default().hash_one(&*key) as u32;
        DepKey { prefix, hash, key }
    }

    /// Whether the dependent is a prefix alias.
    pub fn is_prefix(&self) -> bool {
        self.prefix
    }

    /// Its key in its table.
    pub fn key(&self) -> &Arc<str> {
        &self.key
    }
}

impl PartialEq for DepKey {
    fn eq(&self, other: &DepKey) -> bool {
        self.hash == other.hash && self.prefix == other.prefix && self.key == other.key
    }
}

impl Eq for DepKey {}

impl std::hash::Hash for DepKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u32(self.hash);
    }
}

impl PartialOrd for DepKey {
    fn partial_cmp(&self, other: &DepKey) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for DepKey {
    fn cmp(&self, other: &DepKey) -> std::cmp::Ordering {
        (self.prefix, &self.key).cmp(&(other.prefix, &other.key))
    }
}

/// Where a chain of aliases ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainEnd<'m> {
    /// At a model that is present.
    Model(&'m ModelInfo),
    /// At a name that is neither a model nor an alias.
    Missing(ModelName),
    /// At an alias already visited (cannot happen through the API; defensive).
    Cycle,
}

/// How a name resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The name is a model.
    Model,
    /// Through an exact alias.
    Alias,
    /// Through a prefix alias.
    Prefix,
}

impl Via {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Model => "model",
            Via::Alias => "alias",
            Via::Prefix => "prefix",
        }
    }
}

/// The answer to a resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// The model at the end of the chain.
    pub resolved: ModelName,
    /// Display names from the asked name to the model, both included.
    pub chain: Vec<String>,
    /// How the first step matched.
    pub via: Via,
    /// The model's manifest digest.
    pub digest: Arc<str>,
}

/// Why a name did not resolve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// Nothing matches the name.
    #[error("no model or alias named {0:?}")]
    NotFound(String),
    /// An alias matches but its chain ends at a missing model.
    #[error("alias {alias:?} is dangling: {missing:?} is not in the store")]
    Dangling {
        /// The alias asked for.
        alias: String,
        /// The missing model at the end of its chain.
        missing: String,
    },
    /// The chain loops.
    #[error("alias {0:?} is part of a cycle")]
    Cycle(String),
}

/// Read access shared by [`Index`] and [`Draft`].
pub trait AliasView {
    /// An exact alias by key.
    fn exact(&self, key: &str) -> Option<&AliasEntry>;
    /// A prefix alias by lowercase prefix.
    fn prefix(&self, key: &str) -> Option<&AliasEntry>;
    /// The aliases whose direct target has this key.
    fn dependents(&self, target_key: &str) -> Vec<DepKey>;

    /// An alias of either kind.
    fn entry(&self, dep: &DepKey) -> Option<&AliasEntry> {
        if dep.prefix {
            self.prefix(&dep.key)
        } else {
            self.exact(&dep.key)
        }
    }

    /// Follows a chain from `start` until it reaches a model or a missing name.
    /// A model with the exact name wins over an alias at each step.
    ///
    /// One chain costs its length; to resolve many aliases, use [`ChainEnds`],
    /// which walks each alias once for all of them.
    fn chain_end<'m>(&self, models: &'m Models, start: &ModelName) -> ChainEnd<'m> {
        let mut current = start.clone();
        // A set, not a list: a chain of thousands would otherwise cost its
        // length squared.
        let mut seen: HashSet<Arc<str>> = HashSet::default();
        loop {
            let key = current.key_arc();
            if let Some(model) = models.get(&key) {
                return ChainEnd::Model(model);
            }
            match self.exact(&key) {
                None => return ChainEnd::Missing(current),
                Some(entry) => {
                    if !seen.insert(key) {
                        return ChainEnd::Cycle;
                    }
                    current = entry.target.clone();
                }
            }
        }
    }

    /// Every alias whose chain passes through `target_key`, each once.
    fn transitive_dependents(&self, target_key: &str) -> Vec<DepKey> {
        DependentsWalk::default().walk(self, target_key)
    }
}

/// A walk up the reverse dependencies that visits each alias once, however
/// many names it starts from: the dependents of several changed names cost
/// the aliases they reach, not that times the number of names.
#[derive(Debug, Default)]
pub struct DependentsWalk {
    seen: HashSet<DepKey>,
}

impl DependentsWalk {
    /// The aliases whose chain passes through `target_key` that no earlier
    /// walk of this one reached, in the order the walk meets them (each
    /// target's dependents sorted, the last one found walked first).
    pub fn walk<V: AliasView + ?Sized>(&mut self, view: &V, target_key: &str) -> Vec<DepKey> {
        let mut out: Vec<DepKey> = Vec::new();
        let mut stack: Vec<Arc<str>> = vec![Arc::from(target_key)];
        while let Some(key) = stack.pop() {
            for dep in view.dependents(&key) {
                if !self.seen.insert(dep.clone()) {
                    continue;
                }
                if !dep.prefix {
                    stack.push(dep.key.clone());
                }
                out.push(dep);
            }
        }
        out
    }
}

/// Where each name's chain ends, each alias walked once: resolving every
/// alias of a chain of n costs n steps, not n squared.
///
/// An answer stays right while no alias's target changes and the model set
/// stays the one given (a model wins over an alias at each step); whoever
/// changes a target [`ChainEnds::forget`]s that alias and its transitive
/// dependents (what [`Draft`] does), or starts a new one.
#[derive(Debug)]
pub struct ChainEnds<'m> {
    models: &'m Models,
    /// Name key -> where its chain ends; `None` while its walk is under way
    /// (met again, that is a cycle).
    ends: HashMap<Arc<str>, Option<ChainEnd<'m>>>,
}

impl<'m> ChainEnds<'m> {
    /// An empty memo for chains ending in `models`.
    pub fn new(models: &'m Models) -> ChainEnds<'m> {
        ChainEnds {
            models,
            ends: HashMap::default(),
        }
    }

    /// The models its answers are about.
    pub fn models(&self) -> &'m Models {
        self.models
    }

    /// Where the chain from `start` ends, as [`AliasView::chain_end`] says,
    /// remembering it for every alias walked on the way.
    pub fn end_of<V: AliasView + ?Sized>(&mut self, view: &V, start: &ModelName) -> ChainEnd<'m> {
        let mut walked: Vec<Arc<str>> = Vec::new();
        let mut current = start.clone();
        let end = loop {
            let key = current.key_arc();
            if let Some(known) = self.ends.get(&key) {
                break known.clone().unwrap_or(ChainEnd::Cycle);
            }
            if let Some(model) = self.models.get(&key) {
                break ChainEnd::Model(model);
            }
            match view.exact(&key) {
                None => break ChainEnd::Missing(current),
                Some(entry) => {
                    self.ends.insert(key.clone(), None);
                    walked.push(key);
                    current = entry.target.clone();
                }
            }
        };
        for key in walked {
            self.ends.insert(key, Some(end.clone()));
        }
        end
    }

    /// Forgets what is known of the chain from `key` (its target changed, or
    /// one further down did).
    pub fn forget(&mut self, key: &str) {
        self.ends.remove(key);
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
}

impl Index {
    /// The seq of the last applied event.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Number of aliases, exact and prefix.
    pub fn len(&self) -> usize {
        self.exact.len() + self.prefixes.len()
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
    pub fn apply_change(&mut self, change: &Change<'_>) -> Result<(), String> {
        let prepared = self.preparer.prepare(change)?;
        self.apply_prepared(prepared);
        Ok(())
    }

    /// [`Index::apply`] on a change already parsed (by any [`Preparer`]).
    pub fn apply_prepared(&mut self, change: PreparedChange) {
        let key = change.alias.key_arc();
        let prefix = change.alias.is_prefix();
        let seq = change.seq;
        self.last_seq = self.last_seq.max(seq);
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
                    return;
                };
                let entry = intern_entry(&mut self.names, &mut self.digests, entry);
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
        let dep = DepKey::new(prefix, key.clone());
        let next = next_entry(Some(&previous), change);
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

    /// Forgets a tombstone once its file is known to be gone.
    pub fn clear_tombstone(&mut self, key: &str) {
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
        self.exact.reserve(events);
    }

    /// Gives back the spare room of a replay that updated more aliases than it
    /// created (when over half the map would stay empty).
    pub fn release_spare(&mut self) {
        if self.exact.capacity() / 2 > self.exact.len() {
            self.exact.shrink_to_fit();
        }
    }

    /// Adds an alias read from a snapshot.
    pub fn insert_entry(&mut self, entry: AliasEntry) {
        let dep = DepKey::new(entry.alias.is_prefix(), entry.alias.key_arc());
        self.insert(dep, entry);
    }

    /// Adds a tombstone read from a snapshot.
    pub fn insert_tombstone(&mut self, tombstone: Tombstone) {
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

/// Parses an event's RFC 3339 time into microseconds since the epoch (0 if bad).
pub fn parse_time(time: &str) -> u64 {
    if let Some(micros) = parse_micros_form(time) {
        return micros;
    }
    humantime::parse_rfc3339(time)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Reads `YYYY-MM-DDTHH:MM:SS.ffffffZ`, the form aliasd writes, as
/// microseconds since the epoch; `None` for anything else (or a date before
/// 1970), which [`parse_time`] leaves to humantime. Replay reads one per
/// event, and this takes a fifth of humantime's general parse.
fn parse_micros_form(time: &str) -> Option<u64> {
    let b = time.as_bytes();
    if b.len() != 27 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
        return None;
    }
    if b[16] != b':' || b[19] != b'.' || b[26] != b'Z' {
        return None;
    }
    let number = |range: std::ops::Range<usize>| {
        b[range].iter().try_fold(0u64, |n, &d| {
            d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0'))
        })
    };
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    let fraction = number(20..26)?;
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        1..=12 => 31,
        _ => return None,
    };
    if year < 1970 || day == 0 || day > month_days || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    // Days since 1970-01-01 (the civil-from-days inverse, in a March-based year).
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era_day = y * 365 + y / 4 - y / 100 + y / 400 + (153 * m + 2) / 5 + day - 1;
    let days = era_day - 719_468;
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second;
    Some(seconds * 1_000_000 + fraction)
}

/// Formats microseconds since the epoch as RFC 3339 UTC.
pub fn format_time(micros: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_micros(micros);
    humantime::format_rfc3339_micros(time).to_string()
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
        }
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
