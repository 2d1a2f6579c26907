//! Make the store match the index: write and withdraw alias manifests.
//!
//! Invariants: an alias file is written only at a valid alias's own path, only
//! after its event is durable, atomically (temp file in the same directory, then
//! rename), and only over a file aliasd itself wrote. A model's file and a blob
//! are never written over or removed. Every operation is idempotent, so running
//! it again after a crash heals whatever was half done.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::command::PathState;
use crate::index::{AliasEntry, AliasName, AliasState, AliasView, ChainEnd, Index, Models};
use crate::name::ModelName;
use crate::store::Store;

/// What syncing one alias did to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The file was already right.
    Unchanged,
    /// The file was written.
    Written,
    /// The file was removed.
    Removed,
    /// A file aliasd did not write is there; it was left alone.
    Foreign,
}

/// Writes alias manifests into a store.
#[derive(Debug, Clone)]
pub struct Materializer {
    store: Store,
}

impl Materializer {
    /// A materializer for `store`.
    pub fn new(store: Store) -> Materializer {
        Materializer { store }
    }

    /// The store it writes to.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Classifies the file at an alias's path: absent, aliasd's own, or a model.
    ///
    /// A file is aliasd's own when its digest is one aliasd recorded for the
    /// alias (`digest`, `previous_digest`, or `also_ours`), or when it is empty
    /// or not JSON (a torn write of aliasd's: Ollama never writes such a manifest).
    pub fn path_state(
        &self,
        entry: &AliasEntry,
        also_ours: Option<&str>,
    ) -> std::io::Result<PathState> {
        let AliasName::Exact(name) = &entry.alias else {
            return Ok(PathState::Absent);
        };
        match read_if_exists(&self.store.manifest_path(name))? {
            None => Ok(PathState::Absent),
            Some(bytes) => Ok(classify(&bytes, entry, also_ours)),
        }
    }

    /// Makes the file of one alias what the index says: the resolved model's
    /// manifest bytes when active, no file when dangling; shadowed aliases and
    /// foreign files are left alone.
    ///
    /// # Errors
    ///
    /// File system errors; the store is left as it was or with the new file.
    pub fn sync_alias(
        &self,
        index: &Index,
        models: &Models,
        entry: &AliasEntry,
        also_ours: Option<&str>,
    ) -> std::io::Result<Outcome> {
        let AliasName::Exact(name) = &entry.alias else {
            return Ok(Outcome::Unchanged);
        };
        if entry.state == AliasState::Shadowed {
            return Ok(Outcome::Unchanged);
        }
        let desired: Option<Arc<[u8]>> = match (entry.state, index.chain_end(models, &entry.target))
        {
            (AliasState::Active, ChainEnd::Model(model)) => Some(model.bytes.clone()),
            _ => None,
        };
        let path = self.store.manifest_path(name);
        let current = read_if_exists(&path)?;
        if let Some(bytes) = &current {
            if desired.as_deref() == Some(bytes.as_slice()) {
                return Ok(Outcome::Unchanged);
            }
            if classify(bytes, entry, also_ours) == PathState::Foreign {
                return Ok(Outcome::Foreign);
            }
        }
        match desired {
            Some(bytes) => {
                if write_atomically(&path, &bytes)? {
                    self.store.fresh_files().note(name.clone());
                }
                Ok(Outcome::Written)
            }
            None if current.is_some() => {
                remove_file_if_exists(&path)?;
                self.prune_empty_dirs(&path);
                Ok(Outcome::Removed)
            }
            None => Ok(Outcome::Unchanged),
        }
    }

    /// Removes the file of a deleted alias if it is still the one aliasd wrote.
    ///
    /// # Errors
    ///
    /// File system errors.
    pub fn withdraw(&self, name: &ModelName, ours: &[&str]) -> std::io::Result<Outcome> {
        let path = self.store.manifest_path(name);
        let Some(bytes) = read_if_exists(&path)? else {
            return Ok(Outcome::Unchanged);
        };
        let digest = crate::digest::manifest_digest(&bytes);
        if !ours.contains(&digest.as_str()) && !looks_torn(&bytes) {
            return Ok(Outcome::Foreign);
        }
        remove_file_if_exists(&path)?;
        self.prune_empty_dirs(&path);
        Ok(Outcome::Removed)
    }

    /// Removes the directories above a withdrawn file that are now empty, up
    /// to (not including) `manifests/`. Only empty directories go.
    fn prune_empty_dirs(&self, file: &Path) {
        let stop = self.store.manifests_dir();
        let mut dir: Option<PathBuf> = file.parent().map(Path::to_path_buf);
        while let Some(current) = dir {
            if current == stop || !current.starts_with(&stop) {
                break;
            }
            if std::fs::remove_dir(&current).is_err() {
                break;
            }
            dir = current.parent().map(Path::to_path_buf);
        }
    }
}

/// Whether a file at an alias's path is aliasd's own or a model.
pub fn classify(bytes: &[u8], entry: &AliasEntry, also_ours: Option<&str>) -> PathState {
    if looks_torn(bytes) {
        return PathState::Ours;
    }
    let digest = crate::digest::manifest_digest(bytes);
    let ours = entry.digest.as_deref() == Some(digest.as_str())
        || entry.previous_digest.as_deref() == Some(digest.as_str())
        || also_ours == Some(digest.as_str());
    if ours {
        PathState::Ours
    } else {
        PathState::Foreign
    }
}

/// An empty file or one that is not JSON: never a manifest Ollama wrote
/// (though one it is still writing: Ollama writes manifests in place).
pub fn looks_torn(bytes: &[u8]) -> bool {
    bytes.is_empty() || serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_err()
}

/// What the names of aliasd's temp files contain (after a leading `.`), so a
/// scan can find the ones a kill left behind.
pub const TEMP_MARKER: &str = ".aliasd-";

/// Reads a file, `None` if it does not exist.
pub fn read_if_exists(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn remove_file_if_exists(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Writes `bytes` to `path` through a temp file in the same directory and a
/// rename, so readers see the old file or the new one, never a part. Returns
/// whether it had to create the file's directory.
///
/// The file is not fsync'd: the journal is the durable record, and a torn alias
/// file found at start-up is recognized as aliasd's own and rewritten.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<bool> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("manifest path has no parent"))?;
    // One `mkdir` in the common cases (the directory is there, or only it is
    // missing); a file in the way fails the create below.
    let created_dir = match std::fs::create_dir(dir) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir)?;
            true
        }
        Err(e) => return Err(e),
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Unique, not secret: a cheap id rather than a getrandom call per file.
    let tmp = dir.join(format!(".{file_name}.aliasd-{}", crate::event::new_id()));
    let res = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        std::fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res.map(|()| created_dir)
}
