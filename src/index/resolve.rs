//! Chains: reverse dependencies, where a chain ends, and how a name resolves.

use std::sync::Arc;

use crate::name::ModelName;

use super::*;

/// A key in the reverse-dependency map: which table, and the key there.
///
/// It carries a hash of its key, computed once by [`DepKey::new`] (in what would
/// be padding): the sets of a target's dependents grow to hundreds of thousands
/// at a million aliases, and growing a set rehashes every member, which then
/// reads this number instead of following the pointer to the string and
/// hashing it (a visible share of a large replay; benches/README.md).
#[derive(Debug, Clone)]
pub struct DepKey {
    pub(super) prefix: bool,
    hash: u32,
    pub(super) key: Arc<str>,
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
