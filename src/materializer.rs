//! Make the store match the index: write and withdraw alias manifests.
//!
//! Invariants: an alias file is written only at a valid alias's own path, only
//! after its event is durable, atomically (temp file in the same directory, then
//! rename), and only over a file aliasd itself wrote. A model's file and a blob
//! are never written over or removed. Every operation is idempotent, so running
//! it again after a crash heals whatever was half done.

use std::collections::{BTreeMap, VecDeque};
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::index::{AliasEntry, AliasName, AliasState};
use crate::name::{ModelName, MANIFESTS_DIR};
use crate::reconcile::PathState;
use crate::store::beneath::{self, FileId, Lookup, Written};
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
    /// A file aliasd did not write is there, or the path is foreign (a
    /// symlink or a non-directory on the way, see [`beneath::Foreign`]); it
    /// was left alone.
    Foreign,
}

/// Writes alias manifests into a store.
#[derive(Debug, Clone)]
pub struct Materializer {
    store: Store,
    /// Shared with the watcher (see [`FreshFiles`]).
    fresh: Arc<FreshFiles>,
}

impl Materializer {
    /// A materializer for `store`, noting the files it writes into new
    /// directories in `fresh`.
    pub fn new(store: Store, fresh: Arc<FreshFiles>) -> Materializer {
        Materializer { store, fresh }
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
        let probe = format!("{TEMP_MARKER}write-check-{}", crate::event::new_id());
        let (made, manifests) = self.store.beneath()?.probe_writable(&probe)?;
        beneath::note_owners(&made, &manifests);
        Ok(())
    }

    /// Reads what is at `name`'s path: `Found(bytes)`, absent, or foreign
    /// (logged, with what makes it so).
    fn look(&self, name: &ModelName) -> std::io::Result<Lookup<Vec<u8>>> {
        Ok(self.look_reaching(name)?.0)
    }

    /// [`Materializer::look`], and where its walk stopped when nothing is
    /// there (see [`beneath::Root::read_manifest_reaching`]).
    fn look_reaching(
        &self,
        name: &ModelName,
    ) -> std::io::Result<(Lookup<Vec<u8>>, Option<beneath::Reached>)> {
        let (found, reached) = self.store.beneath()?.read_manifest_reaching(name)?;
        let found = match found {
            Lookup::Found(file) => Lookup::Found(file.bytes),
            Lookup::Absent => Lookup::Absent,
            Lookup::Foreign(foreign) => {
                tracing::warn!(alias = %name, "{foreign}: the alias's path is not aliasd's to write or remove; left alone");
                Lookup::Foreign(foreign)
            }
        };
        Ok((found, reached))
    }

    /// Makes the file of one alias what the index says: the resolved model's
    /// manifest bytes when active, no file when dangling; shadowed aliases and
    /// foreign files are left alone. `resolved` is the model at the end of the
    /// alias's chain, if it ends at one (its manifest bytes and their
    /// digest): the caller finds it, for many aliases at once with
    /// [`crate::index::ChainEnds`] (each chain walked once).
    ///
    /// # Errors
    ///
    /// File system errors; the store is left as it was or with the new file.
    pub fn sync_alias(
        &self,
        entry: &AliasEntry,
        resolved: Option<(&[u8], &Arc<str>)>,
        also_ours: &[&str],
    ) -> std::io::Result<Outcome> {
        let AliasName::Exact(name) = &entry.alias else {
            return Ok(Outcome::Unchanged);
        };
        if entry.state == AliasState::Shadowed {
            return Ok(Outcome::Unchanged);
        }
        let (desired, digest): (Option<&[u8]>, _) = match (entry.state, resolved) {
            (AliasState::Active, Some((bytes, digest))) => (Some(bytes), Some(digest)),
            _ => (None, None),
        };
        let (found, reached) = self.look_reaching(name)?;
        let current = match found {
            Lookup::Foreign(_) => return Ok(Outcome::Foreign),
            Lookup::Absent => None,
            Lookup::Found(bytes) => Some(bytes),
        };
        if let Some(bytes) = &current {
            if desired == Some(bytes.as_slice()) {
                return Ok(Outcome::Unchanged);
            }
            if classify(bytes, entry, also_ours) == PathState::Foreign {
                return Ok(Outcome::Foreign);
            }
        }
        match (desired, digest) {
            (Some(bytes), Some(digest)) => self.write(name, bytes, digest, reached),
            _ if current.is_some() => self.remove(name),
            _ => Ok(Outcome::Unchanged),
        }
    }

    /// Writes `bytes` as `name`'s file, beneath the store's root (see
    /// [`beneath::Root::write_manifest`]). The directories it makes are
    /// watched before the file is written into them, when the watcher can
    /// (see [`FreshFiles::set_own_writes`]). The file written is noted with
    /// `digest` (that of `bytes`) for the watcher (see [`FreshFiles::ours`]).
    /// The walk goes on from `reached`, where the look just before it
    /// stopped, if given.
    fn write(
        &self,
        name: &ModelName,
        bytes: &[u8],
        digest: &Arc<str>,
        reached: Option<beneath::Reached>,
    ) -> std::io::Result<Outcome> {
        let written = self.write_with(name, digest, |root, temp_name, made_dir| {
            root.write_manifest_from(name, bytes, temp_name, reached, made_dir)
                .map(Some)
        })?;
        Ok(written.unwrap_or(Outcome::Unchanged))
    }

    /// The file of an alias just created, written into a directory made for
    /// it without a look first ([`beneath::Root::write_new_manifest`]), if
    /// it is active and that directory was not there; `None` otherwise, and
    /// [`Materializer::sync_alias`] does the rest.
    fn write_new(
        &self,
        entry: &AliasEntry,
        resolved: Option<(&[u8], &Arc<str>)>,
    ) -> std::io::Result<Option<Outcome>> {
        let (AliasName::Exact(name), AliasState::Active, Some((bytes, digest))) =
            (&entry.alias, entry.state, resolved)
        else {
            return Ok(None);
        };
        self.write_with(name, digest, |root, temp_name, made_dir| {
            root.write_new_manifest(name, bytes, temp_name, made_dir)
        })
    }

    /// Runs `write` (a write of `name`'s file by [`beneath::Root`], with a
    /// temp name and the hook for each directory it makes), and notes what
    /// it wrote for the watcher; `None` if `write` wrote nothing.
    fn write_with(
        &self,
        name: &ModelName,
        digest: &Arc<str>,
        write: impl FnOnce(
            &beneath::Root,
            &str,
            &mut dyn FnMut(&[&str], BorrowedFd<'_>),
        ) -> std::io::Result<Option<Lookup<Written>>>,
    ) -> std::io::Result<Option<Outcome>> {
        // A v4 UUID from a per-thread generator the OS seeds (no system call
        // per file): no one can guess it, so no one can make a file of that
        // name before aliasd does, which the watch counts on
        // (`OwnWrites::will_rename`).
        let temp_name = format!(".{}{TEMP_MARKER}{}", name.tag(), crate::event::new_id());
        let watch = self.fresh.own_writes.get();
        if let Some(watch) = watch {
            watch.will_rename(&temp_name, name.tag());
        }
        let mut all_watched = true;
        let mut made_dir = |parts: &[&str], handle: BorrowedFd<'_>| {
            let watched = watch.is_some_and(|watch| {
                let mut dir = self.store.manifests_dir();
                dir.extend(parts);
                watch.dir_made(&dir, handle)
            });
            all_watched &= watched;
        };
        let written = self
            .store
            .beneath()
            .and_then(|root| write(root, &temp_name, &mut made_dir));
        if let (Some(watch), false) = (watch, matches!(written, Ok(Some(Lookup::Found(_))))) {
            watch.forget_rename(&temp_name);
        }
        let Some(written) = written? else {
            return Ok(None);
        };
        Ok(Some(match written {
            Lookup::Found(Written { made, id }) => {
                // A file in a directory the watcher did not watch from the
                // start: it lists that directory, and looks at this name too.
                if made && !all_watched {
                    self.fresh.note(name.clone());
                }
                self.fresh.note_written(name, id, digest.clone());
                Outcome::Written
            }
            Lookup::Absent => Outcome::Unchanged,
            Lookup::Foreign(foreign) => {
                tracing::warn!(alias = %name, "{foreign}: the alias's path is not aliasd's to write; left alone");
                Outcome::Foreign
            }
        }))
    }

    /// Removes `name`'s file (known to be aliasd's own) and the directories
    /// it leaves empty.
    fn remove(&self, name: &ModelName) -> std::io::Result<Outcome> {
        Ok(match self.store.beneath()?.remove_manifest(name)? {
            Lookup::Found(()) => Outcome::Removed,
            Lookup::Absent => Outcome::Unchanged,
            Lookup::Foreign(_) => Outcome::Foreign,
        })
    }

    /// Removes the file of a deleted alias if it is still the one aliasd wrote.
    ///
    /// # Errors
    ///
    /// File system errors.
    pub fn withdraw(&self, name: &ModelName, ours: &[&str]) -> std::io::Result<Outcome> {
        let bytes = match self.look(name)? {
            Lookup::Found(bytes) => bytes,
            Lookup::Absent => return Ok(Outcome::Unchanged),
            Lookup::Foreign(_) => return Ok(Outcome::Foreign),
        };
        let digest = crate::digest::manifest_digest(&bytes);
        if !ours.contains(&digest.as_str()) && !looks_torn(&bytes) {
            return Ok(Outcome::Foreign);
        }
        self.remove(name)
    }

    /// Makes the file of `job.file.name` what the index said when the job
    /// was made: [`Materializer::sync_alias`] while the alias is there,
    /// [`Materializer::withdraw`] once it is gone. Needs no lock: the job
    /// carries what the index said.
    ///
    /// # Errors
    ///
    /// File system errors.
    pub fn sync_job(&self, job: &FileJob) -> std::io::Result<Outcome> {
        let ours: Vec<&str> = job.file.ours.iter().map(|digest| &**digest).collect();
        match &job.entry {
            Some(entry) => {
                let resolved = job
                    .resolved
                    .as_ref()
                    .map(|(bytes, digest)| (&**bytes, digest));
                if job.file.just_created {
                    if let Some(done) = self.write_new(entry, resolved)? {
                        return Ok(done);
                    }
                }
                self.sync_alias(entry, resolved, &ours)
            }
            None => self.withdraw(&job.file.name, &ours),
        }
    }
}

/// The most [`FreshFiles`] remembered; the oldest go first.
const MAX_FRESH_FILES: usize = 4096;
/// The most files written remembered for the watcher (see
/// [`FreshFiles::ours`]); past it they are forgotten all at once, and the
/// watcher reads those files instead.
const MAX_WRITTEN_FILES: usize = 16_384;

/// Manifests this process wrote into directories it had just created, until
/// the watcher has looked at those directories; and the watcher's way to
/// watch such a directory before anything is written into it.
///
/// A file deleted before the watch on its new directory exists raises no
/// event, and a listing of the directory no longer shows it; the watcher
/// therefore checks these names too when it lists a new directory. Only the
/// last 4,096 are kept (a batch of more new aliases than that,
/// deleted at once, would leave its first ones to the next start-up).
/// A directory watched from the moment it was made needs neither.
///
/// It also keeps, for each alias file written since the watcher last looked
/// at it, which file that was ([`FileId`]) and the digest of what was
/// written, so the watcher can recognize aliasd's own writes coming back
/// without reading them ([`FreshFiles::ours`]).
#[derive(Default)]
pub struct FreshFiles {
    names: Mutex<VecDeque<ModelName>>,
    own_writes: std::sync::OnceLock<OwnWritesHook>,
    written: Mutex<std::collections::HashMap<String, (FileId, Arc<str>)>>,
}

/// What the materializer tells the store's watch of its own writes (on
/// Linux, `watcher/inotify.rs`), so that they need no look when they come
/// back as events.
pub trait OwnWrites: Send + Sync {
    /// Watches `dir`, a directory aliasd has just made and holds open as
    /// `handle`, before anything is written into it; says whether the watch
    /// is on. The watch goes on `handle`'s directory, never on whatever
    /// `dir` names by the time it is added.
    fn dir_made(&self, dir: &Path, handle: BorrowedFd<'_>) -> bool;
    /// aliasd is about to create the temp file `temp` (a name no one can
    /// guess) and to rename it to `to` in the same directory.
    fn will_rename(&self, temp: &str, to: &str);
    /// The write announced with `temp` did not reach its rename.
    fn forget_rename(&self, temp: &str);
}

/// The store's watch, as the materializer sees it (see [`OwnWrites`]).
pub type OwnWritesHook = Arc<dyn OwnWrites>;

impl std::fmt::Debug for FreshFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FreshFiles")
            .field("names", &self.names)
            .field("own_writes", &self.own_writes.get().is_some())
            .finish()
    }
}

impl FreshFiles {
    /// Tells `watch` of the materializer's own writes from now on (see
    /// [`OwnWrites`]): the directories it makes, watched as they are made,
    /// and each alias file's temp name (the first call counts).
    pub fn set_own_writes(&self, watch: OwnWritesHook) {
        let _ = self.own_writes.set(watch);
    }

    /// Remembers that `name`'s manifest was written into a new directory.
    pub fn note(&self, name: ModelName) {
        let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        names.push_back(name);
        while names.len() > MAX_FRESH_FILES {
            names.pop_front();
        }
    }

    /// Remembers that aliasd wrote the file `id` at `name`'s path, with
    /// manifest digest `digest`.
    pub fn note_written(&self, name: &ModelName, id: FileId, digest: Arc<str>) {
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        if written.len() >= MAX_WRITTEN_FILES {
            written.clear();
        }
        written.insert(name.spelled().to_owned(), (id, digest));
    }

    /// Whether the file at `name`'s path is the one aliasd last wrote there
    /// with manifest digest `digest`, unchanged since: the same file by
    /// [`FileId`], found without a symlink on the way (one `openat2` and an
    /// `fstat`, see [`beneath::Root::file_id`]). Forgets what it knew of
    /// `name` either way; `false` when it knew nothing (the caller then
    /// reads the file).
    pub fn ours(&self, root: &beneath::Root, name: &ModelName, digest: &str) -> bool {
        let noted = self
            .written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name.spelled());
        noted.is_some_and(|(id, noted)| &*noted == digest && root.file_id(name) == Some(id))
    }

    /// Takes the names whose manifests lie under one of `dirs`, each a
    /// directory relative to `manifests/` (`host`, `host/namespace`, ...).
    pub fn take_under(&self, dirs: &[PathBuf]) -> Vec<ModelName> {
        let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        if names.is_empty() || dirs.is_empty() {
            return Vec::new();
        }
        let dirs: std::collections::HashSet<&Path> = dirs.iter().map(PathBuf::as_path).collect();
        let under = |name: &ModelName| {
            let rel = name.manifest_rel_path();
            rel.strip_prefix(MANIFESTS_DIR)
                .is_ok_and(|rel| rel.ancestors().any(|dir| dirs.contains(dir)))
        };
        let (taken, kept): (VecDeque<ModelName>, VecDeque<ModelName>) =
            names.drain(..).partition(under);
        *names = kept;
        taken.into()
    }
}

/// One alias file to make match the index, with what the index said of it
/// copied out (so that files are written without holding the index's lock).
#[derive(Debug, Clone)]
pub struct FileJob {
    /// The file, and the digests at its path that are aliasd's own.
    pub file: AliasFile,
    /// The alias as the index had it; `None` once it was deleted.
    pub entry: Option<AliasEntry>,
    /// The manifest bytes of the model its chain ends at, if any, and
    /// their digest.
    pub resolved: Option<(Arc<[u8]>, Arc<str>)>,
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
    /// Its first event here created it, with no file of aliasd's at its
    /// path before: its directory is almost surely missing, so the write
    /// makes it without looking first (a hint: a directory that is there
    /// after all is read first, as for any other write).
    pub just_created: bool,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, ours: &[&str]) -> AliasFile {
        AliasFile {
            just_created: false,
            name: ModelName::parse(name).unwrap(),
            ours: ours.iter().map(|d| Arc::from(*d)).collect(),
        }
    }

    #[test]
    fn fresh_files_are_taken_by_directory_and_bounded() {
        let fresh = FreshFiles::default();
        let names = ["a:1", "a:2", "b", "example.com/ns/c", "example.com/other/d"];
        for name in names {
            fresh.note(ModelName::parse(name).unwrap());
        }
        let dir = |parts: &[&str]| parts.iter().collect::<PathBuf>();
        let shown =
            |taken: Vec<ModelName>| taken.iter().map(ModelName::display).collect::<Vec<_>>();
        assert_eq!(
            shown(fresh.take_under(&[dir(&["registry.ollama.ai", "library", "a"])])),
            ["a:1", "a:2"]
        );
        assert!(fresh
            .take_under(&[dir(&["registry.ollama.ai", "library", "a"])])
            .is_empty());
        assert_eq!(
            shown(fresh.take_under(&[dir(&["example.com"]), dir(&["nowhere"])])),
            ["example.com/ns/c", "example.com/other/d"]
        );
        assert!(fresh.take_under(&[]).is_empty());
        assert_eq!(shown(fresh.take_under(&[dir(&[])])), ["b"]);
        for i in 0..MAX_FRESH_FILES + 10 {
            fresh.note(ModelName::parse(&format!("m{i}")).unwrap());
        }
        let kept = fresh.take_under(&[dir(&[])]);
        assert_eq!(kept.len(), MAX_FRESH_FILES);
        assert_eq!(kept[0].display(), "m10", "the oldest went first");
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
