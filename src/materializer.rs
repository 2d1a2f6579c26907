//! Make the store match the index: write and withdraw alias manifests.
//!
//! Invariants: an alias file is written only at a valid alias's own path, only
//! after its event is durable, atomically (temp file in the same directory, then
//! rename), and only over a file aliasd itself wrote. A model's file and a blob
//! are never written over or removed. Every operation is idempotent, so running
//! it again after a crash heals whatever was half done.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::command::PathState;
use crate::index::{AliasEntry, AliasName, AliasState, AliasView, Index, ModelInfo};
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

    /// Checks that alias files can be written here, by creating and removing
    /// a file of aliasd's own (hidden, named with [`TEMP_MARKER`]) in
    /// `manifests/`.
    ///
    /// # Errors
    ///
    /// The error of the create (permission denied, a read-only file system)
    /// or of the remove.
    pub fn check_writable(&self) -> std::io::Result<()> {
        let probe = self.store.manifests_dir().join(format!(
            "{TEMP_MARKER}write-check-{}",
            crate::event::new_id()
        ));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&probe)?;
        let made = file.metadata();
        drop(file);
        std::fs::remove_file(&probe)?;
        if let (Ok(made), Ok(manifests)) = (made, std::fs::metadata(self.store.manifests_dir())) {
            owner::note_owners(&made, &manifests);
        }
        Ok(())
    }

    /// Makes the file of one alias what the index says: the resolved model's
    /// manifest bytes when active, no file when dangling; shadowed aliases and
    /// foreign files are left alone. `resolved` is the model at the end of the
    /// alias's chain, if it ends at one: the caller finds it, for many aliases
    /// at once with [`crate::index::ChainEnds`] (each chain walked once).
    ///
    /// # Errors
    ///
    /// File system errors; the store is left as it was or with the new file.
    pub fn sync_alias(
        &self,
        entry: &AliasEntry,
        resolved: Option<&ModelInfo>,
        also_ours: &[&str],
    ) -> std::io::Result<Outcome> {
        let AliasName::Exact(name) = &entry.alias else {
            return Ok(Outcome::Unchanged);
        };
        if entry.state == AliasState::Shadowed {
            return Ok(Outcome::Unchanged);
        }
        let desired: Option<Arc<[u8]>> = match (entry.state, resolved) {
            (AliasState::Active, Some(model)) => Some(model.bytes.clone()),
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

    /// Makes the file of `file.name` match `index`: [`Materializer::sync_alias`]
    /// while the alias is there (`resolved` as there), [`Materializer::withdraw`]
    /// once it is gone.
    ///
    /// # Errors
    ///
    /// File system errors.
    pub fn sync_file(
        &self,
        index: &Index,
        resolved: Option<&ModelInfo>,
        file: &AliasFile,
    ) -> std::io::Result<Outcome> {
        let ours: Vec<&str> = file.ours.iter().map(|digest| &**digest).collect();
        match index.exact(file.name.key_str()) {
            Some(entry) => self.sync_alias(entry, resolved, &ours),
            None => self.withdraw(&file.name, &ours),
        }
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

/// An alias whose file is to be made to match the index, with the digests
/// of files aliasd wrote at its path that the index may no longer record
/// (its digest before the change, the digest its deletion recorded).
#[derive(Debug, Clone)]
pub struct AliasFile {
    /// The alias.
    pub name: ModelName,
    /// Digests of files at its path that are aliasd's own.
    pub ours: Vec<Arc<str>>,
}

/// Alias files that could not be made to match the index (a full disk, a
/// permission taken away), to be tried again: after [`FIRST_RETRY`], then at
/// doubling intervals up to [`LONGEST_RETRY`], until every one is done.
#[derive(Debug, Default)]
pub struct Retries {
    pending: BTreeMap<String, AliasFile>,
    next: Option<Instant>,
    wait: Duration,
}

/// The wait before the first retry.
pub const FIRST_RETRY: Duration = Duration::from_secs(1);
/// The longest wait between two retries.
pub const LONGEST_RETRY: Duration = Duration::from_secs(30);

impl Retries {
    /// Adds files that could not be synced; the first ones start the clock.
    /// A file already waiting keeps every digest known to be aliasd's own.
    pub fn add(&mut self, failed: Vec<AliasFile>, now: Instant) {
        for file in failed {
            match self.pending.entry(file.name.key()) {
                std::collections::btree_map::Entry::Vacant(slot) => {
                    slot.insert(file);
                }
                std::collections::btree_map::Entry::Occupied(mut slot) => {
                    let ours = &mut slot.get_mut().ours;
                    for digest in file.ours {
                        if !ours.contains(&digest) {
                            ours.push(digest);
                        }
                    }
                }
            }
        }
        if self.next.is_none() && !self.pending.is_empty() {
            self.wait = FIRST_RETRY;
            self.next = Some(now + FIRST_RETRY);
        }
    }

    /// How long until the next attempt; `None` when nothing waits.
    pub fn due_in(&self, now: Instant) -> Option<Duration> {
        self.next.map(|at| at.saturating_duration_since(now))
    }

    /// Takes every waiting file, for an attempt.
    pub fn take(&mut self) -> Vec<AliasFile> {
        std::mem::take(&mut self.pending).into_values().collect()
    }

    /// Records what an attempt left undone: with nothing left the clock
    /// stops (`None`), else the wait doubles and is returned.
    pub fn attempted(&mut self, failed: Vec<AliasFile>, now: Instant) -> Option<Duration> {
        self.add(failed, now);
        if self.pending.is_empty() {
            self.next = None;
            return None;
        }
        self.wait = (self.wait * 2).clamp(FIRST_RETRY, LONGEST_RETRY);
        self.next = Some(now + self.wait);
        Some(self.wait)
    }

    /// How many files wait.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

/// What to tell the user to do about a failed alias file write.
pub fn advice(e: &std::io::Error) -> &'static str {
    if journal::is_disk_full(e) {
        " (the store's disk is full: free some space there)"
    } else if e.kind() == std::io::ErrorKind::PermissionDenied {
        " (aliasd may not write in the store: check its owner and permissions)"
    } else {
        ""
    }
}

/// Whether a file at an alias's path is aliasd's own or a model: its own
/// when its digest is one aliasd recorded for the alias (`digest`,
/// `previous_digest`, or one of `also_ours`), or when it is empty or not JSON
/// (a torn write of aliasd's: Ollama never writes such a manifest).
pub fn classify(bytes: &[u8], entry: &AliasEntry, also_ours: &[&str]) -> PathState {
    if looks_torn(bytes) {
        return PathState::Ours;
    }
    let digest = crate::digest::manifest_digest(bytes);
    let ours = entry.digest.as_deref() == Some(digest.as_str())
        || entry.previous_digest.as_deref() == Some(digest.as_str())
        || also_ours.contains(&digest.as_str());
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

/// Makes `dir` and the directories missing above it, each given to the
/// owner of its parent (see `owner`); returns whether `dir` was made. One
/// `mkdir` in the common cases (the directory is there, or only it is
/// missing); a file in the way fails the create that follows.
fn create_dir(dir: &Path) -> std::io::Result<bool> {
    match std::fs::create_dir(dir) {
        Ok(()) => {
            owner::give_to_parents_owner(dir);
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let Some(parent) = dir.parent() else {
                return Err(e);
            };
            create_dir(parent)?;
            create_dir(dir)
        }
        Err(e) => Err(e),
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
    let created_dir = create_dir(dir)?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Unique, not secret: a cheap id rather than a getrandom call per file.
    let tmp = dir.join(format!(".{file_name}.aliasd-{}", crate::event::new_id()));
    let res = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        owner::give_file_to_dirs_owner(&file, dir);
        file.write_all(bytes)?;
        std::fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res.map(|()| created_dir)
}

/// Who owns what aliasd makes in the store. Run as root on a store whose
/// `manifests/` belongs to another user (Ollama's Linux service runs as
/// `ollama`), the directories and files aliasd makes are given to the owner
/// of the directory they are made in, so that `ollama rm` can remove them as
/// it can remove its own. Otherwise (as anyone else, or as root on root's
/// store) the system already makes them right, and nothing is done.
mod owner {
    use std::path::Path;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Set at start-up (by [`note_owners`]) when aliasd runs as root on a
    /// store that belongs to someone else.
    static ROOT: AtomicBool = AtomicBool::new(false);

    /// Records who aliasd runs as (the owner of a file it just made) and who
    /// owns `manifests/`.
    pub fn note_owners(made: &std::fs::Metadata, manifests: &std::fs::Metadata) {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            let someone_elses = manifests.uid() != 0 || manifests.gid() != 0;
            ROOT.store(made.uid() == 0 && someone_elses, Ordering::Relaxed);
        }
        #[cfg(not(unix))]
        let _ = (made, manifests);
    }

    /// Gives a directory aliasd just made to the owner of its parent.
    pub fn give_to_parents_owner(dir: &Path) {
        if !ROOT.load(Ordering::Relaxed) {
            return;
        }
        #[cfg(unix)]
        if let Some(parent) = dir.parent() {
            use std::os::unix::fs::MetadataExt;
            if let Ok(owner) = std::fs::metadata(parent) {
                if owner.uid() != 0 || owner.gid() != 0 {
                    let _ = std::os::unix::fs::chown(dir, Some(owner.uid()), Some(owner.gid()));
                }
            }
        }
    }

    /// Gives a file aliasd just made in `dir` to the owner of `dir`.
    pub fn give_file_to_dirs_owner(file: &std::fs::File, dir: &Path) {
        if !ROOT.load(Ordering::Relaxed) {
            return;
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            if let Ok(owner) = std::fs::metadata(dir) {
                if owner.uid() != 0 || owner.gid() != 0 {
                    let _ = std::os::unix::fs::fchown(file, Some(owner.uid()), Some(owner.gid()));
                }
            }
        }
        #[cfg(not(unix))]
        let _ = (file, dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, ours: &[&str]) -> AliasFile {
        AliasFile {
            name: ModelName::parse(name).unwrap(),
            ours: ours.iter().map(|d| Arc::from(*d)).collect(),
        }
    }

    #[test]
    fn retries_wait_longer_each_time_and_stop_when_all_are_done() {
        let start = Instant::now();
        let mut retries = Retries::default();
        assert_eq!(retries.due_in(start), None);
        retries.add(Vec::new(), start);
        assert_eq!(retries.due_in(start), None, "nothing failed, no clock");

        retries.add(vec![file("a", &[]), file("b", &[])], start);
        assert_eq!(retries.due_in(start), Some(FIRST_RETRY));
        let mut waits = Vec::new();
        for _ in 0..7 {
            let tried = retries.take();
            assert_eq!(tried.len(), 2);
            waits.push(retries.attempted(tried, start).unwrap().as_secs());
        }
        assert_eq!(waits, [2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(retries.due_in(start), Some(LONGEST_RETRY));

        // One done, one left; then the last one done.
        let mut tried = retries.take();
        tried.retain(|f| f.name.display() == "b");
        assert_eq!(retries.attempted(tried, start), Some(LONGEST_RETRY));
        assert_eq!(retries.len(), 1);
        let _ = retries.take();
        assert_eq!(retries.attempted(Vec::new(), start), None);
        assert!(retries.is_empty());
        assert_eq!(retries.due_in(start), None);

        // A new failure starts from the first wait again.
        retries.add(vec![file("c", &[])], start);
        assert_eq!(retries.due_in(start), Some(FIRST_RETRY));
    }

    #[test]
    fn a_file_failing_twice_keeps_every_digest_that_is_ours() {
        let now = Instant::now();
        let mut retries = Retries::default();
        retries.add(vec![file("a", &["sha256:1"])], now);
        retries.add(vec![file("A:latest", &["sha256:2", "sha256:1"])], now);
        let taken = retries.take();
        assert_eq!(taken.len(), 1);
        let ours: Vec<&str> = taken[0].ours.iter().map(|d| &**d).collect();
        assert_eq!(ours, ["sha256:1", "sha256:2"]);
    }

    #[test]
    fn advice_names_what_to_do_for_a_full_disk_and_for_permissions() {
        let full = std::io::Error::from_raw_os_error(28);
        assert!(advice(&full).contains("full"));
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert!(advice(&denied).contains("permissions"));
        assert_eq!(advice(&std::io::Error::other("odd")), "");
    }
}
