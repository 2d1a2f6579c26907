//! Compare the store with the index and plan the events that bring them in
//! line: one code path for start-up and for the watcher.
//!
//! `observe` reads the store (blocking I/O); `plan` is pure.

use std::collections::HashMap;
use std::sync::Arc;

use crate::command::{new_event, Origin};
use crate::event::EventType;
use crate::index::ChainEnd;
use crate::index::{AliasState, AliasView, DependentsWalk, Draft, Index, ModelInfo, Models};
use crate::name::ModelName;
use crate::store::beneath::Lookup;
use crate::store::Store;

/// What the store holds, read against the index.
#[derive(Debug, Default)]
pub struct Observation {
    /// The models: every manifest file that is not aliasd's own.
    pub models: Models,
    /// For each exact alias key: what is at its path.
    pub path_states: HashMap<String, PathState>,
    /// Files of deleted aliases that aliasd wrote and should withdraw,
    /// with the digest it wrote.
    pub stale: Vec<(ModelName, Arc<str>)>,
    /// aliasd's own temp files left by a kill between write and rename,
    /// relative to `manifests/`.
    pub temp_files: Vec<std::path::PathBuf>,
    /// Exact aliases whose file is aliasd's own but out of date (a crash fell
    /// between a journal commit and the file write): sync them after planning.
    pub out_of_date: Vec<String>,
    /// The keys of the prefix aliases to re-derive: their state follows the
    /// end of their chain as an exact alias's does, with no file to look at.
    pub prefixes: Vec<Arc<str>>,
}

/// Reads the whole store and sorts its files into models and alias files.
/// `current` is the model set before: a model's manifest caught mid-write
/// (empty or not JSON) keeps what `current` says of it.
///
/// # Errors
///
/// File system errors while scanning.
pub fn observe(store: &Store, index: &Index, current: &Models) -> std::io::Result<Observation> {
    let mut observation = Observation::default();
    let scan = store.scan_all(crate::materializer::TEMP_MARKER)?;
    observation.temp_files = scan.temp_files;
    for (name, _) in &scan.foreign {
        let key = name.key();
        if index.exact(&key).is_some() {
            observation.path_states.insert(key, PathState::Foreign);
        }
    }
    for file in scan.manifests {
        let key = file.name.key();
        if let Some(entry) = index.exact(&key) {
            let state = if entry.state == AliasState::Shadowed {
                PathState::Foreign
            } else {
                crate::materializer::classify(&file.bytes, entry, &[])
            };
            observation.path_states.insert(key.clone(), state.clone());
            if state == PathState::Ours {
                let current = entry.state == AliasState::Active
                    && entry.digest.as_deref() == Some(file.digest.as_str());
                if !current {
                    observation.out_of_date.push(key);
                }
                continue;
            }
        } else if let Some(tombstone) = index.tombstone(&key) {
            if *tombstone.digest == *file.digest {
                observation
                    .stale
                    .push((file.name.clone(), tombstone.digest.clone()));
                continue;
            }
        }
        if crate::materializer::looks_torn(&file.bytes) {
            // Ollama writes manifests in place: this one is being written.
            // The write's next event (or the next scan) sees it whole.
            if let Some(model) = current.get(&key) {
                observation.models.insert(model.clone());
            }
            continue;
        }
        observation.models.insert(model_info(&file));
    }
    for entry in index.exact_entries() {
        let key = entry.alias.key();
        if observation.path_states.contains_key(&key) {
            continue;
        }
        // Not seen by the scan: missing, or below a symlink or a file that
        // the scan did not go through. Only a look at its own path tells.
        let state = match &entry.alias {
            crate::index::AliasName::Exact(name) => match store.read_manifest(name)? {
                Lookup::Foreign(_) => PathState::Foreign,
                _ => PathState::Absent,
            },
            crate::index::AliasName::Prefix(_) => continue,
        };
        observation.path_states.insert(key, state);
    }
    observation.prefixes = index
        .prefix_entries()
        .map(|entry| entry.alias.key_arc())
        .collect();
    Ok(observation)
}

/// A model as the index keeps it, from a manifest file.
pub fn model_info(file: &crate::store::ManifestFile) -> ModelInfo {
    ModelInfo {
        name: file.name.clone(),
        digest: Arc::from(file.digest.as_str()),
        bytes: Arc::from(file.bytes.as_slice()),
        size: file.size(),
        modified_at: file.modified_rfc3339(),
    }
}

/// What aliasd sees at an alias's own path in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathState {
    /// No file.
    Absent,
    /// A file aliasd wrote (or a torn write of its own).
    Ours,
    /// A file aliasd did not write: a model.
    Foreign,
}

/// Records the event that brings one exact alias in line with the store, if
/// any: the one code path for start-up reconcile, the watcher and chains.
pub fn reconcile_alias<'a>(
    draft: &mut Draft<'a>,
    models: &'a Models,
    origin: &Origin,
    time: &str,
    key: &str,
    path_state: &PathState,
) {
    let Some(entry) = draft.exact(key).cloned() else {
        return;
    };
    let end = draft.chain_end_cached(models, &entry.target);
    let resolved_digest = match &end {
        ChainEnd::Model(model) => Some(model.digest.clone()),
        _ => None,
    };
    let kind = match (entry.state, path_state, &resolved_digest) {
        (AliasState::Shadowed, PathState::Foreign, _) => None,
        (_, PathState::Foreign, _) => Some(EventType::AliasShadowed),
        (AliasState::Shadowed, _, Some(_)) => Some(EventType::AliasRepaired),
        (AliasState::Shadowed, _, None) => Some(EventType::TargetRemoved),
        (AliasState::Dangling, _, Some(_)) => Some(EventType::TargetRestored),
        (AliasState::Dangling, _, None) => None,
        (AliasState::Active, _, None) => Some(EventType::TargetRemoved),
        (AliasState::Active, state, Some(digest)) => {
            if entry.digest.as_ref() != Some(digest) {
                Some(EventType::TargetChanged)
            } else if *state == PathState::Absent {
                Some(EventType::AliasRepaired)
            } else {
                None
            }
        }
    };
    let Some(kind) = kind else { return };
    let mut event = new_event(kind, &entry.alias, Some(&entry.target), origin, time);
    if !matches!(kind, EventType::AliasShadowed | EventType::TargetRemoved) {
        event.digest = resolved_digest.map(|d| d.to_string());
    }
    // The names came from the index, so they parse.
    let _ = draft.record(event);
}

/// Records the event that brings one prefix alias in line with the models,
/// if any: the states and events of an exact alias (`target.removed`,
/// `target.restored`, `target.changed`, SPEC §3), but no file is ever
/// written, withdrawn or looked at (a prefix is never materialized), so it
/// is never `shadowed` and never `alias.repaired`.
pub fn reconcile_prefix<'a>(
    draft: &mut Draft<'a>,
    models: &'a Models,
    origin: &Origin,
    time: &str,
    key: &str,
) {
    let Some(entry) = draft.prefix(key).cloned() else {
        return;
    };
    let resolved_digest = match draft.chain_end_cached(models, &entry.target) {
        ChainEnd::Model(model) => Some(model.digest.clone()),
        _ => None,
    };
    let kind = match (entry.state, &resolved_digest) {
        (AliasState::Active, None) => Some(EventType::TargetRemoved),
        // A prefix alias created by a version that kept no digest for it
        // (its create replays `active` with none): nothing to compare the
        // model's digest with, so no change is claimed; its next removal
        // and restore record one.
        (AliasState::Active, Some(digest)) => entry
            .digest
            .as_ref()
            .is_some_and(|known| known != digest)
            .then_some(EventType::TargetChanged),
        (AliasState::Dangling | AliasState::Shadowed, Some(_)) => Some(EventType::TargetRestored),
        (AliasState::Dangling | AliasState::Shadowed, None) => None,
    };
    let Some(kind) = kind else { return };
    let mut event = new_event(kind, &entry.alias, Some(&entry.target), origin, time);
    if kind != EventType::TargetRemoved {
        event.digest = resolved_digest.map(|d| d.to_string());
    }
    // The names came from the index, so they parse.
    let _ = draft.record(event);
}

/// Records one event per alias that the observation shows out of line.
///
/// Every alias's chain end comes from the draft's memo, so a store of n
/// aliases in chains of any depth costs n steps.
pub fn plan<'a>(draft: &mut Draft<'a>, observation: &'a Observation, origin: &Origin, time: &str) {
    let mut keys: Vec<&String> = observation.path_states.keys().collect();
    keys.sort();
    for key in keys {
        let state = &observation.path_states[key];
        reconcile_alias(draft, &observation.models, origin, time, key, state);
    }
    let mut prefixes: Vec<&Arc<str>> = observation.prefixes.iter().collect();
    prefixes.sort();
    prefixes.dedup();
    for key in prefixes {
        reconcile_prefix(draft, &observation.models, origin, time, key);
    }
}

/// Reads only the files at `names` and re-derives the aliases they can affect:
/// the alias at each path, and every alias whose chain runs through it.
/// `current` is the model set before; the observation carries the new one.
///
/// # Errors
///
/// File system errors while reading.
pub fn observe_names(
    store: &Store,
    index: &Index,
    current: &Models,
    names: &[ModelName],
) -> std::io::Result<Observation> {
    let mut observation = Observation {
        models: current.clone(),
        ..Observation::default()
    };
    // One walk for all the names: an alias depending on several of them (a
    // chain whose files all changed) is visited once, not once per name.
    let mut walk = DependentsWalk::default();
    for name in names {
        let key = name.key();
        let (file, foreign) = match store.read_manifest(name)? {
            Lookup::Found(file) => (Some(file), false),
            Lookup::Absent => (None, false),
            Lookup::Foreign(_) => (None, true),
        };
        let torn = file
            .as_ref()
            .is_some_and(|f| crate::materializer::looks_torn(&f.bytes));
        if torn && index.exact(&key).is_none() {
            // A model's manifest caught mid-write (Ollama writes in place, so
            // a reader can see it empty or cut): keep the model as it was;
            // the write's next event brings the rest.
            continue;
        }
        let mut is_model = file.is_some();
        if let Some(entry) = index.exact(&key) {
            // In a fleet, the alias's digest may be another node's model's:
            // a copy of the model its chain ends at here is aliasd's own too.
            let here = match index.node() {
                Some(_) => match index.chain_end(current, &entry.target) {
                    ChainEnd::Model(model) => Some(model.digest.clone()),
                    _ => None,
                },
                None => None,
            };
            let also_ours: Vec<&str> = here.as_deref().into_iter().collect();
            let state = match &file {
                None if foreign => PathState::Foreign,
                None => PathState::Absent,
                Some(_) if entry.state == AliasState::Shadowed => PathState::Foreign,
                Some(file) => crate::materializer::classify(&file.bytes, entry, &also_ours),
            };
            is_model = state == PathState::Foreign;
            observation.path_states.insert(key.clone(), state);
        } else if let (Some(file), Some(tombstone)) = (&file, index.tombstone(&key)) {
            if *tombstone.digest == *file.digest {
                observation
                    .stale
                    .push((file.name.clone(), tombstone.digest.clone()));
                is_model = false;
            }
        }
        match (&file, is_model) {
            (Some(file), true) => observation.models.insert(model_info(file)),
            _ => {
                observation.models.remove(&key);
            }
        }
        for dep in walk.walk(index, &key) {
            let Some(entry) = index.entry(&dep) else {
                continue;
            };
            if dep.is_prefix() {
                // No file of its own: only the end of its chain counts.
                observation.prefixes.push(dep.key().clone());
                continue;
            }
            let state = if entry.state == AliasState::Shadowed {
                PathState::Foreign
            } else {
                PathState::Ours
            };
            observation
                .path_states
                .entry(dep.key().to_string())
                .or_insert(state);
        }
    }
    Ok(observation)
}

/// What the index expects aliasd to have left at `name`: `Some(Some(digest))`
/// for an active alias's manifest, `Some(None)` for no file (a dangling or
/// deleted alias), `None` when aliasd does not own the path (models, shadowed).
pub fn expected_file(index: &Index, name: &ModelName) -> Option<Option<Arc<str>>> {
    let key = name.key();
    match index.exact(&key) {
        Some(entry) => match entry.state {
            AliasState::Active => entry.digest.clone().map(Some),
            AliasState::Dangling => Some(None),
            AliasState::Shadowed => None,
        },
        None if index.tombstone(&key).is_some() => Some(None),
        None => None,
    }
}

/// Whether the file at `name` is what [`expected_file`] says: then a change
/// there is aliasd's own write coming back through the watcher.
pub fn matches_expected(store: &Store, name: &ModelName, expected: &Option<Arc<str>>) -> bool {
    match (store.read_manifest(name), expected) {
        (Ok(Lookup::Absent), None) => true,
        (Ok(Lookup::Found(file)), Some(digest)) => *file.digest == **digest,
        _ => false,
    }
}
