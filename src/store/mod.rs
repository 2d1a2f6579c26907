//! Reading Ollama's model store (SPEC §1).
//!
//! The store is a directory with `manifests/<host>/<namespace>/<model>/<tag>`
//! (one JSON manifest per name) and `blobs/sha256-<hex>`. [`Store`] finds and
//! reads manifests; [`ManifestFile`] is one manifest's bytes, digest and
//! modification time, with the size Ollama shows.
//!
//! Architecture invariant: this module knows nothing of aliases. It reports
//! what is in the store; deciding what a file means is the caller's job.
//!
//! All I/O here is blocking; async callers run it on a blocking thread
//! (`spawn_blocking`), never on a runtime worker.
//!
//! # Symlinks
//!
//! Every file operation goes through [`beneath`]: from a handle on the root,
//! one component at a time, never following a symbolic link. A scan never
//! descends into a symlinked directory and never reads a symlinked manifest
//! (it would read what the store's owner points it at, `/dev/zero` or a file
//! only root may read); such a path is [`beneath::Foreign`], which keeps
//! aliasd from ever writing or removing anything there.

pub mod beneath;

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use beneath::{with_path, Foreign, Lookup};

use crate::name::{ModelName, MANIFESTS_DIR};

/// The directory of the store that holds blobs.
pub const BLOBS_DIR: &str = "blobs";

/// The number of directory levels below `manifests/` above a manifest file:
/// host, namespace and model.
const MANIFEST_DIR_DEPTH: usize = 3;

/// The last second `humantime` can format (9999-12-31T23:59:59Z).
const MAX_RFC3339_SECS: u64 = 253_402_300_799;

/// An Ollama model store rooted at a directory. Clones share their handle
/// on the root.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
    /// The root, opened at first use (after [`Store::ensure_layout`] made it);
    /// from then on the path is never resolved again.
    handle: Arc<OnceLock<beneath::Root>>,
}

impl Store {
    /// A store rooted at `root` (`--models`, `$OLLAMA_MODELS` or
    /// `~/.ollama/models`). Touches nothing on disk.
    pub fn new(root: impl Into<PathBuf>) -> Store {
        Store {
            root: root.into(),
            handle: Arc::default(),
        }
    }

    /// The handle every file operation on the store starts from.
    ///
    /// # Errors
    ///
    /// The root cannot be opened (it is missing, say).
    pub fn beneath(&self) -> io::Result<&beneath::Root> {
        if let Some(root) = self.handle.get() {
            return Ok(root);
        }
        let root = beneath::Root::open(&self.root).map_err(|e| with_path(e, &self.root))?;
        // Two threads may race here; both opened the same directory.
        let _ = self.handle.set(root);
        Ok(self.handle.get().expect("set just above"))
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/manifests`.
    pub fn manifests_dir(&self) -> PathBuf {
        self.root.join(MANIFESTS_DIR)
    }

    /// `<root>/blobs`.
    pub fn blobs_dir(&self) -> PathBuf {
        self.root.join(BLOBS_DIR)
    }

    /// Where `name`'s manifest lives: `<root>/manifests/<host>/<namespace>/<model>/<tag>`,
    /// in the name's own spelling. Inside the store because `ModelName` is valid.
    pub fn manifest_path(&self, name: &ModelName) -> PathBuf {
        self.root.join(name.manifest_rel_path())
    }

    /// Creates `<root>/manifests` and `<root>/blobs` (and the root) if missing.
    ///
    /// # Errors
    ///
    /// Any error creating the directories, e.g. permission denied.
    pub fn ensure_layout(&self) -> io::Result<()> {
        std::fs::create_dir_all(&self.root).map_err(|err| with_path(err, &self.root))?;
        let root = self.beneath()?;
        for dir in [MANIFESTS_DIR, BLOBS_DIR] {
            root.ensure_dir(dir)
                .map_err(|err| with_path(err, &self.root.join(dir)))?;
        }
        Ok(())
    }

    /// Reads `name`'s manifest file: absent (a missing file or directory on
    /// the way), found, or foreign (a symlink or a non-directory on the way,
    /// or at the path something that is not a regular file of at most
    /// [`beneath::MAX_MANIFEST_BYTES`]). The digest is of the bytes read.
    ///
    /// # Errors
    ///
    /// Any other I/O error (e.g. permission denied), with the path in the
    /// message.
    pub fn read_manifest(&self, name: &ModelName) -> io::Result<Lookup<ManifestFile>> {
        Ok(match self.beneath()?.read_manifest(name)? {
            Lookup::Found(file) => Lookup::Found(manifest_file(name, file)?),
            Lookup::Absent => Lookup::Absent,
            Lookup::Foreign(foreign) => Lookup::Foreign(foreign),
        })
    }

    /// Every manifest in the store, sorted by name key (ties, possible on a
    /// case-sensitive file system, by path).
    ///
    /// A manifest is a file exactly four levels below `manifests/` whose path
    /// spells a valid name. Everything else is skipped with a `debug` log:
    /// files at another depth, directories where a manifest should be,
    /// invalid names (including temporary files like `.tmp-*`, since no part
    /// may start with `.`), and symlinked directories (see the module docs). A
    /// missing `manifests/` directory is an empty store.
    ///
    /// # Errors
    ///
    /// Any I/O error other than a file vanishing during the scan (which is
    /// skipped, as after a concurrent `ollama rm`). An unreadable directory is
    /// an error rather than a skip, so that callers never mistake a model
    /// they cannot see for a missing one.
    pub fn scan(&self) -> io::Result<Vec<ManifestFile>> {
        Ok(self.scan_all("\0")?.manifests)
    }

    /// [`Store::scan`], and also the files at manifest depth that are
    /// [`Foreign`] (each with the name its path spells), and the paths
    /// (relative to `manifests/`) of hidden files there whose names contain
    /// `temp_marker`: temp files a writer left behind when it was killed
    /// between writing and renaming.
    ///
    /// # Errors
    ///
    /// As [`Store::scan`].
    pub fn scan_all(&self, temp_marker: &str) -> io::Result<Scan> {
        let mut found = Found::new(temp_marker);
        let Some(manifests) = self.manifests_handle()? else {
            return Ok(Scan::default());
        };
        scan_dir(manifests.as_fd(), Path::new(""), 0, &mut found)?;
        drop(manifests);
        let model_dirs = std::mem::take(&mut found.model_dirs);
        self.scan_model_dirs(&model_dirs, &mut found)?;
        let Found {
            mut manifests,
            temp_files,
            foreign,
            ..
        } = found;
        manifests.sort_by(|a, b| {
            a.name
                .key_str()
                .cmp(b.name.key_str())
                .then_with(|| a.name.manifest_rel_path().cmp(&b.name.manifest_rel_path()))
        });
        Ok(Scan {
            manifests,
            foreign,
            temp_files,
        })
    }

    /// Removes the file at `rel` (below `manifests/`), beneath the root.
    ///
    /// # Errors
    ///
    /// The path is not a file in a directory, or the remove fails.
    pub fn remove_temp_file(&self, rel: &Path) -> io::Result<()> {
        let parts: Vec<&str> = rel.iter().filter_map(|part| part.to_str()).collect();
        let Some((file, dirs)) = parts.split_last() else {
            return Err(io::Error::other("not a file path"));
        };
        self.beneath()?.remove_file(dirs, file)
    }

    /// `manifests/`, opened beneath the root; `None` when it is missing.
    fn manifests_handle(&self) -> io::Result<Option<std::os::fd::OwnedFd>> {
        let root = match self.beneath() {
            Ok(root) => root,
            Err(e) if is_absent(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        match root.dir(&[]) {
            Ok(Lookup::Found(dir)) => Ok(Some(dir)),
            Ok(Lookup::Absent) => Ok(None),
            Ok(Lookup::Foreign(foreign)) => Err(io::Error::other(format!(
                "{foreign}: aliasd reads and writes no store through a symbolic link; point \
                 --models at the store itself"
            ))),
            Err(e) => Err(with_path(e, &self.manifests_dir())),
        }
    }

    /// Opens the model directory at `rel` (below `manifests/`) beneath the
    /// root; `None` when it is gone or foreign.
    fn model_dir(&self, rel: &Path) -> io::Result<Option<std::os::fd::OwnedFd>> {
        let parts: Vec<&str> = rel.iter().filter_map(|part| part.to_str()).collect();
        match self.beneath()?.dir(&parts)? {
            Lookup::Found(dir) => Ok(Some(dir)),
            Lookup::Absent => Ok(None),
            Lookup::Foreign(foreign) => {
                tracing::debug!("store scan: skipping {foreign}");
                Ok(None)
            }
        }
    }

    /// Lists and reads each model directory of `dirs` (depth
    /// `MANIFEST_DIR_DEPTH`) into `out`: on this thread for a few, else
    /// shared among [`SCAN_THREADS`] threads, saying how far it is on a long
    /// scan.
    fn scan_model_dirs(&self, dirs: &[PathBuf], out: &mut Found<'_>) -> io::Result<()> {
        let scan_one = |rel: &PathBuf, found: &mut Found<'_>| -> io::Result<()> {
            match self.model_dir(rel)? {
                Some(dir) => scan_dir(dir.as_fd(), rel, MANIFEST_DIR_DEPTH, found),
                None => Ok(()),
            }
        };
        if dirs.len() < PARALLEL_SCAN_FROM {
            for rel in dirs {
                scan_one(rel, out)?;
            }
            return Ok(());
        }
        let temp_marker = out.temp_marker;
        let stamping = out.stamps.is_some();
        let progress = Mutex::new(crate::progress::Progress::new(
            "reading the store (model directories)",
            dirs.len(),
        ));
        let found = on_scan_threads(dirs, |rel, done, found| {
            let found = found.get_or_insert_with(|| {
                let mut found = Found::new(temp_marker);
                if stamping {
                    found.stamps = Some(Vec::new());
                }
                found
            });
            scan_one(rel, found)?;
            if let Ok(mut progress) = progress.try_lock() {
                progress.reached(done);
            }
            Ok(())
        })?;
        progress
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
            .finish();
        for found in found.into_iter().flatten() {
            out.manifests.extend(found.manifests);
            out.temp_files.extend(found.temp_files);
            out.foreign.extend(found.foreign);
            if let (Some(all), Some(stamps)) = (&mut out.stamps, found.stamps) {
                all.extend(stamps);
            }
        }
        Ok(())
    }

    /// Every manifest [`Store::scan`] would read, with its [`FileStamp`]
    /// instead of its bytes: what a poll compares to find the files that
    /// changed since the last one, at the cost of a listing and a `stat`.
    /// On this thread alone, so that its time is its CPU.
    ///
    /// # Errors
    ///
    /// As [`Store::scan`].
    pub fn stamp_scan(&self) -> io::Result<Vec<(ModelName, FileStamp)>> {
        let mut found = Found::stamping();
        let Some(manifests) = self.manifests_handle()? else {
            return Ok(Vec::new());
        };
        scan_dir(manifests.as_fd(), Path::new(""), 0, &mut found)?;
        for rel in std::mem::take(&mut found.model_dirs) {
            if let Some(dir) = self.model_dir(&rel)? {
                scan_dir(dir.as_fd(), &rel, MANIFEST_DIR_DEPTH, &mut found)?;
            }
        }
        Ok(found.stamps.unwrap_or_default())
    }

    /// Lists every model directory once, on several threads, so that the
    /// recursive watch set up next (which visits them one by one, a disk read
    /// each on a cold cache) finds them in memory. Errors are ignored: the
    /// watch and the scan report what matters.
    pub fn warm_directories(&self) {
        let mut found = Found::new("\0");
        let Ok(Some(manifests)) = self.manifests_handle() else {
            return;
        };
        if scan_dir(manifests.as_fd(), Path::new(""), 0, &mut found).is_err() {
            return;
        }
        let dirs = found.model_dirs;
        if dirs.len() < PARALLEL_SCAN_FROM {
            return;
        }
        tracing::info!("listing {} model directories", dirs.len());
        // Listing errors are left for the watch and the scan to report.
        let _ = on_scan_threads(&dirs, |rel, _, _: &mut Option<()>| {
            if let Ok(Some(dir)) = self.model_dir(rel) {
                let _ = beneath::list(dir.as_fd());
            }
            Ok(())
        });
    }
}

/// What [`Store::scan_all`] found.
#[derive(Debug, Default)]
pub struct Scan {
    /// The manifests, sorted by name key.
    pub manifests: Vec<ManifestFile>,
    /// What is at manifest depth under a valid name but is not a manifest
    /// aliasd reads (a symlink, a FIFO, a directory, a huge file).
    pub foreign: Vec<(ModelName, Foreign)>,
    /// aliasd's leftover temp files, relative to `manifests/`.
    pub temp_files: Vec<PathBuf>,
}

/// What a scan collects.
struct Found<'a> {
    manifests: Vec<ManifestFile>,
    /// In a stamp scan ([`Store::stamp_scan`]), each manifest's stamp instead
    /// of its bytes; `None` in a scan that reads.
    stamps: Option<Vec<(ModelName, FileStamp)>>,
    temp_files: Vec<PathBuf>,
    foreign: Vec<(ModelName, Foreign)>,
    temp_marker: &'a str,
    /// Model directories (one level above the manifests), by their path
    /// below `manifests/`, left for [`Store::scan_model_dirs`].
    model_dirs: Vec<PathBuf>,
}

impl<'a> Found<'a> {
    fn new(temp_marker: &'a str) -> Found<'a> {
        Found {
            manifests: Vec::new(),
            stamps: None,
            temp_files: Vec::new(),
            foreign: Vec::new(),
            temp_marker,
            model_dirs: Vec::new(),
        }
    }

    /// A scan that stamps manifests rather than reading them.
    fn stamping() -> Found<'static> {
        Found {
            stamps: Some(Vec::new()),
            ..Found::new("\0")
        }
    }
}

/// What a poll compares to see that a manifest changed without reading it:
/// size, modification and change times, and inode (a rename over the file
/// gives a new one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    changed: (i64, i64),
    inode: u64,
}

impl FileStamp {
    /// The stamp of an `lstat`: a symlink's own, never its target's.
    #[allow(clippy::unnecessary_cast)] // The field types differ by platform.
    fn of(stat: &rustix::fs::Stat) -> FileStamp {
        let modified = u32::try_from(stat.st_mtime_nsec).ok().and_then(|nanos| {
            let secs = u64::try_from(stat.st_mtime).ok()?;
            UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
        });
        FileStamp {
            len: stat.st_size as u64,
            modified,
            changed: (stat.st_ctime as i64, stat.st_ctime_nsec as i64),
            inode: stat.st_ino as u64,
        }
    }
}

/// Model directories from which a scan reads them on several threads: on a
/// cold cache each listing and each file is a disk read, and a disk serves
/// several at once (benches/README.md, "Figures moved out of comments").
const PARALLEL_SCAN_FROM: usize = 64;
/// Threads reading model directories (they wait on the disk, not the CPU).
const SCAN_THREADS: usize = 8;

/// Runs `each(item, items taken so far, this thread's state)` for every
/// item, shared among [`SCAN_THREADS`] threads (this one included) that take
/// the next item until none is left or one fails; returns each thread's
/// state. A thread that cannot start leaves its share to the others.
fn on_scan_threads<T, S, F>(items: &[T], each: F) -> io::Result<Vec<Option<S>>>
where
    T: Sync,
    S: Send,
    F: Fn(&T, usize, &mut Option<S>) -> io::Result<()> + Sync,
{
    let next = AtomicUsize::new(0);
    let work = || -> io::Result<Option<S>> {
        let mut state = None;
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(item) = items.get(i) else {
                return Ok(state);
            };
            if let Err(e) = each(item, i + 1, &mut state) {
                // The others stop at their next item.
                next.store(items.len(), Ordering::Relaxed);
                return Err(e);
            }
        }
    };
    std::thread::scope(|scope| {
        let others: Vec<_> = (1..SCAN_THREADS)
            .filter_map(|_| {
                std::thread::Builder::new()
                    .name("aliasd-scan".into())
                    .spawn_scoped(scope, work)
                    .ok()
            })
            .collect();
        let mut states = vec![work()?];
        for other in others {
            let state = other
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("a store scan thread panicked")));
            states.push(state?);
        }
        Ok(states)
    })
}

/// One manifest file as read from the store.
#[derive(Clone)]
pub struct ManifestFile {
    /// The name its path spells, in the path's spelling.
    pub name: ModelName,
    /// The file's bytes, exactly as on disk; copies must preserve them.
    pub bytes: Vec<u8>,
    /// `sha256:<hex>` of `bytes`.
    pub digest: String,
    /// The file's modification time.
    pub modified: SystemTime,
}

impl ManifestFile {
    /// The model's size as Ollama counts it: `config.size` plus every
    /// `layers[].size`.
    ///
    /// A missing `config`, `layers` or `size` counts as zero, as in Ollama.
    /// `None` if the bytes are not a JSON object, a `size` is not a
    /// non-negative integer, `layers` is not an array, or the sum overflows.
    pub fn size(&self) -> Option<u64> {
        let manifest: serde_json::Value = serde_json::from_slice(&self.bytes).ok()?;
        let manifest = manifest.as_object()?;
        let config_size = match manifest.get("config") {
            None | Some(serde_json::Value::Null) => 0,
            Some(config) => descriptor_size(config)?,
        };
        let layers = match manifest.get("layers") {
            None | Some(serde_json::Value::Null) => &[][..],
            Some(layers) => layers.as_array()?.as_slice(),
        };
        layers.iter().try_fold(config_size, |total, layer| {
            total.checked_add(descriptor_size(layer)?)
        })
    }

    /// The modification time as RFC 3339 in UTC to the second, e.g.
    /// `2024-05-01T12:00:00Z`. Times before 1970 or after 9999 are clamped.
    pub fn modified_rfc3339(&self) -> String {
        let since_epoch = self
            .modified
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .min(Duration::from_secs(MAX_RFC3339_SECS));
        humantime::format_rfc3339_seconds(UNIX_EPOCH + since_epoch).to_string()
    }
}

impl std::fmt::Debug for ManifestFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManifestFile")
            .field("name", &self.name)
            .field("len", &self.bytes.len())
            .field("digest", &self.digest)
            .field("modified", &self.modified)
            .finish()
    }
}

/// The `size` of one descriptor (`config` or a layer); missing is zero.
fn descriptor_size(descriptor: &serde_json::Value) -> Option<u64> {
    match descriptor.as_object()?.get("size") {
        None | Some(serde_json::Value::Null) => Some(0),
        Some(size) => size.as_u64(),
    }
}

/// A manifest from a file read beneath the root for `name`.
fn manifest_file(name: &ModelName, file: beneath::ReadFile) -> io::Result<ManifestFile> {
    Ok(ManifestFile {
        name: name.clone(),
        digest: crate::digest::manifest_digest(&file.bytes),
        modified: file.metadata.modified()?,
        bytes: file.bytes,
    })
}

/// Walks the directory `dir`, which is `rel` below `manifests/` and `depth`
/// levels deep, pushing every manifest found into `out`.
fn scan_dir(dir: BorrowedFd<'_>, rel: &Path, depth: usize, out: &mut Found<'_>) -> io::Result<()> {
    use rustix::fs::FileType;
    let in_store = |rel: &Path| Path::new(MANIFESTS_DIR).join(rel);
    let entries = match beneath::list(dir) {
        Ok(entries) => entries,
        Err(err) if is_absent(&err) => return Ok(()),
        Err(err) => return Err(with_path(err, &in_store(rel))),
    };
    for entry in entries {
        let entry_rel = rel.join(&entry.name);
        if depth < MANIFEST_DIR_DEPTH {
            match entry.kind {
                FileType::Directory if depth + 1 == MANIFEST_DIR_DEPTH => {
                    out.model_dirs.push(entry_rel);
                }
                FileType::Directory => {
                    match beneath::open_dir(dir, &entry.name, &in_store(&entry_rel))? {
                        Lookup::Found(sub) => scan_dir(sub.as_fd(), &entry_rel, depth + 1, out)?,
                        Lookup::Absent => {}
                        Lookup::Foreign(foreign) => {
                            tracing::debug!("store scan: skipping {foreign}");
                        }
                    }
                }
                _ => {
                    tracing::debug!(path = %in_store(&entry_rel).display(), kind = ?entry.kind, "store scan: skipping what is not a directory above manifest depth");
                }
            }
            continue;
        }

        if entry.kind == FileType::Directory {
            tracing::debug!(path = %in_store(&entry_rel).display(), "store scan: skipping directory at manifest depth");
            continue;
        }
        if entry.name.starts_with('.') && entry.name.contains(out.temp_marker) {
            out.temp_files.push(entry_rel);
            continue;
        }
        let Some(name) = ModelName::from_manifest_rel_path(&entry_rel) else {
            tracing::debug!(path = %in_store(&entry_rel).display(), "store scan: skipping path that is not a valid model name");
            continue;
        };
        if let Some(stamps) = &mut out.stamps {
            // Whatever is there, its own stamp: a symlink appearing or
            // changing is a change to look at.
            match rustix::fs::statat(
                dir,
                entry.name.as_str(),
                rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
            ) {
                Ok(stat) => stamps.push((name, FileStamp::of(&stat))),
                Err(rustix::io::Errno::NOENT) => {}
                Err(err) => return Err(with_path(err.into(), &in_store(&entry_rel))),
            }
            continue;
        }
        match beneath::read_file(dir, &entry.name, &in_store(&entry_rel))? {
            Lookup::Found(file) => out.manifests.push(manifest_file(&name, file)?),
            Lookup::Absent => {
                tracing::debug!(path = %in_store(&entry_rel).display(), "store scan: skipping vanished file");
            }
            Lookup::Foreign(foreign) => {
                tracing::warn!("{foreign}: not read as a manifest (aliasd reads no manifest through a symbolic link, and only regular files of sane size)");
                out.foreign.push((name, foreign));
            }
        }
    }
    Ok(())
}

/// Whether `err` means "nothing there": the file or a directory on its path is
/// missing, or a path component is a file.
fn is_absent(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// A small manifest: config 10 bytes, layers 100 and 1000.
    const MANIFEST: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"sha256:aa","size":10},"layers":[{"mediaType":"application/vnd.ollama.image.model","digest":"sha256:bb","size":100},{"mediaType":"application/vnd.ollama.image.template","digest":"sha256:cc","size":1000}],"extra":true}"#;

    /// Writes `contents` at `rel` below `root`, creating directories.
    fn write(root: &Path, rel: &str, contents: &str) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, contents).unwrap();
    }

    /// Builds a store holding a manifest at each of `files` (paths relative to
    /// the root) and compares the display names `scan` finds, in order.
    fn check_scan(files: &[&str], expected: &[&str]) {
        let dir = tempfile::tempdir().unwrap();
        for rel in files {
            write(dir.path(), rel, MANIFEST);
        }
        let found = Store::new(dir.path()).scan().unwrap();
        let names: Vec<String> = found.iter().map(|m| m.name.display()).collect();
        assert_eq!(names, expected, "files: {files:?}");
    }

    /// Compares the size of a manifest with `contents` with `expected`.
    fn check_size(contents: &str, expected: Option<u64>) {
        let manifest = ManifestFile {
            name: ModelName::parse("m").unwrap(),
            bytes: contents.as_bytes().to_vec(),
            digest: crate::digest::manifest_digest(contents.as_bytes()),
            modified: UNIX_EPOCH,
        };
        assert_eq!(manifest.size(), expected, "contents: {contents}");
    }

    #[test]
    fn scan_finds_manifests_at_depth_four_sorted_by_key() {
        check_scan(
            &[
                "manifests/registry.ollama.ai/library/llama3/latest",
                "manifests/registry.ollama.ai/library/Bert/v1",
                "manifests/example.com/Me/Coder/Q4",
                "manifests/registry.ollama.ai/library/alpha/latest",
            ],
            &["example.com/Me/Coder:Q4", "alpha", "Bert:v1", "llama3"],
        );
    }

    #[test]
    fn scan_skips_junk() {
        check_scan(
            &[
                "manifests/registry.ollama.ai/library/llama3/latest",
                // Wrong depth.
                "manifests/stray",
                "manifests/registry.ollama.ai/stray",
                "manifests/registry.ollama.ai/library/stray",
                "manifests/registry.ollama.ai/library/m/latest/too-deep",
                // Temporary and hidden files, invalid names.
                "manifests/registry.ollama.ai/library/llama3/.tmp-latest-123",
                "manifests/registry.ollama.ai/library/llama3/.DS_Store",
                "manifests/.hidden/library/m/latest",
                "manifests/registry.ollama.ai/library/bad name/latest",
                "manifests/registry.ollama.ai/lib.rary/m/latest",
                // Not under manifests/.
                "blobs/sha256-aa",
                "other/registry.ollama.ai/library/x/latest",
            ],
            &["llama3"],
        );
        check_scan(&[], &[]);
    }

    #[test]
    fn scan_finds_leftover_temp_files_by_marker() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let model_dir = store.manifests_dir().join("registry.ollama.ai/library/m");
        fs::create_dir_all(&model_dir).unwrap();
        fs::write(model_dir.join("latest"), b"{}").unwrap();
        fs::write(model_dir.join(".latest.aliasd-0123abcd"), b"{").unwrap();
        fs::write(model_dir.join(".latest.other-writer"), b"{").unwrap();
        let scan = store.scan_all(".aliasd-").unwrap();
        assert_eq!(scan.manifests.len(), 1);
        let temp = Path::new("registry.ollama.ai/library/m/.latest.aliasd-0123abcd");
        assert_eq!(scan.temp_files, [temp]);
        store.remove_temp_file(temp).unwrap();
        assert!(!model_dir.join(".latest.aliasd-0123abcd").exists());
    }

    #[test]
    fn a_large_store_is_read_on_several_threads_to_the_same_result() {
        let dir = tempfile::tempdir().unwrap();
        let mut expected = Vec::new();
        for i in 0..PARALLEL_SCAN_FROM * 2 {
            write(
                dir.path(),
                &format!("manifests/registry.ollama.ai/library/m{i:03}/latest"),
                MANIFEST,
            );
            expected.push(format!("m{i:03}"));
            if i == 7 {
                write(
                    dir.path(),
                    "manifests/registry.ollama.ai/library/m007/v2",
                    MANIFEST,
                );
                expected.push("m007:v2".to_string());
            }
        }
        write(
            dir.path(),
            "manifests/example.com/ns/other/latest",
            MANIFEST,
        );
        expected.insert(0, "example.com/ns/other".to_string());
        let temp = "manifests/registry.ollama.ai/library/m010/.latest.aliasd-1";
        write(dir.path(), temp, "{");
        write(
            dir.path(),
            "manifests/registry.ollama.ai/library/bad name/latest",
            MANIFEST,
        );
        let store = Store::new(dir.path());
        let scan = store.scan_all(".aliasd-").unwrap();
        let names: Vec<String> = scan.manifests.iter().map(|m| m.name.display()).collect();
        assert_eq!(names, expected);
        assert!(scan
            .manifests
            .iter()
            .all(|m| m.bytes == MANIFEST.as_bytes()));
        let temp = temp.strip_prefix("manifests/").unwrap();
        assert_eq!(scan.temp_files, [Path::new(temp)]);
    }

    #[test]
    fn warming_directories_only_reads() {
        let dir = tempfile::tempdir().unwrap();
        Store::new(dir.path().join("missing")).warm_directories();
        assert!(!dir.path().join("missing").exists());
        for i in 0..PARALLEL_SCAN_FROM * 2 {
            write(
                dir.path(),
                &format!("manifests/registry.ollama.ai/library/m{i}/latest"),
                MANIFEST,
            );
        }
        let store = Store::new(dir.path());
        let before = store.scan().unwrap().len();
        store.warm_directories();
        assert_eq!(store.scan().unwrap().len(), before);
    }

    #[test]
    fn scan_of_a_store_without_manifests_dir_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("missing"));
        assert!(store.scan().unwrap().is_empty());
        store.ensure_layout().unwrap();
        assert!(store.manifests_dir().is_dir());
        assert!(store.blobs_dir().is_dir());
        assert!(store.scan().unwrap().is_empty());
        store.ensure_layout().unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn scan_neither_descends_into_symlinked_directories_nor_reads_symlinked_manifests() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("models");
        let outside = dir.path().join("outside");
        write(&outside, "ns/m/latest", MANIFEST);
        write(&outside, "file", MANIFEST);
        write(
            &root,
            "manifests/registry.ollama.ai/library/llama3/latest",
            MANIFEST,
        );
        std::os::unix::fs::symlink(&outside, root.join("manifests/registry.ollama.ai/linked"))
            .unwrap();
        fs::create_dir_all(root.join("manifests/registry.ollama.ai/library/viafile")).unwrap();
        std::os::unix::fs::symlink(
            outside.join("file"),
            root.join("manifests/registry.ollama.ai/library/viafile/latest"),
        )
        .unwrap();
        std::os::unix::fs::symlink(
            outside.join("dangling"),
            root.join("manifests/registry.ollama.ai/library/viafile/dangling"),
        )
        .unwrap();

        let scan = Store::new(&root).scan_all("\0").unwrap();
        let names: Vec<String> = scan.manifests.iter().map(|m| m.name.display()).collect();
        assert_eq!(names, ["llama3"]);
        let mut foreign: Vec<String> = scan
            .foreign
            .iter()
            .map(|(name, foreign)| format!("{}: {foreign}", name.display()))
            .collect();
        foreign.sort();
        assert_eq!(
            foreign,
            [
                "viafile: manifests/registry.ollama.ai/library/viafile/latest is a symbolic link",
                "viafile:dangling: manifests/registry.ollama.ai/library/viafile/dangling is a symbolic link",
            ]
        );
    }

    #[test]
    fn scanned_manifest_has_bytes_digest_and_time() {
        let dir = tempfile::tempdir().unwrap();
        let rel = "manifests/registry.ollama.ai/library/llama3/latest";
        write(dir.path(), rel, MANIFEST);
        let file = fs::File::options()
            .write(true)
            .open(dir.path().join(rel))
            .unwrap();
        file.set_modified(UNIX_EPOCH + Duration::from_secs(1_714_564_800))
            .unwrap();

        let found = Store::new(dir.path()).scan().unwrap();
        assert_eq!(found.len(), 1);
        let manifest = &found[0];
        assert_eq!(manifest.bytes, MANIFEST.as_bytes());
        assert_eq!(
            manifest.digest,
            crate::digest::manifest_digest(MANIFEST.as_bytes())
        );
        assert_eq!(manifest.size(), Some(1110));
        assert_eq!(manifest.modified_rfc3339(), "2024-05-01T12:00:00Z");
    }

    #[test]
    fn read_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let name = ModelName::parse("Me/Coder:Q4").unwrap();
        assert_eq!(
            store.manifest_path(&name),
            dir.path().join("manifests/registry.ollama.ai/Me/Coder/Q4")
        );
        assert!(matches!(
            store.read_manifest(&name).unwrap(),
            Lookup::Absent
        ));

        write(
            dir.path(),
            "manifests/registry.ollama.ai/Me/Coder/Q4",
            MANIFEST,
        );
        let Lookup::Found(manifest) = store.read_manifest(&name).unwrap() else {
            panic!("manifest not found");
        };
        assert_eq!(manifest.name.display(), "Me/Coder:Q4");
        assert_eq!(manifest.bytes, MANIFEST.as_bytes());
        assert!(manifest.digest.starts_with("sha256:"));

        // A directory where the manifest should be, and a file where a
        // directory should be, are both foreign: nothing aliasd may use.
        let dir_name = ModelName::parse("Me/Coder").unwrap();
        fs::create_dir_all(store.manifest_path(&dir_name)).unwrap();
        assert!(matches!(
            store.read_manifest(&dir_name).unwrap(),
            Lookup::Foreign(_)
        ));
        write(dir.path(), "manifests/registry.ollama.ai/Flat", "");
        let below_a_file = ModelName::parse("Flat/m:t").unwrap();
        assert!(matches!(
            store.read_manifest(&below_a_file).unwrap(),
            Lookup::Foreign(_)
        ));
    }

    #[test]
    fn size_sums_config_and_layers() {
        check_size(MANIFEST, Some(1110));
        check_size(r#"{"config":{"size":5},"layers":[]}"#, Some(5));
        check_size(r#"{"layers":[{"size":1},{"size":2}]}"#, Some(3));
        check_size(r#"{"config":{},"layers":[{"digest":"sha256:x"}]}"#, Some(0));
        check_size("{}", Some(0));
        check_size("not json", None);
        check_size("[1,2]", None);
        check_size(r#"{"config":{"size":-1}}"#, None);
        check_size(r#"{"config":{"size":"10"}}"#, None);
        check_size(r#"{"layers":{"size":1}}"#, None);
        check_size(
            r#"{"config":{"size":18446744073709551615},"layers":[{"size":1}]}"#,
            None,
        );
    }

    #[test]
    fn modified_rfc3339_clamps_out_of_range_times() {
        let mut manifest = ManifestFile {
            name: ModelName::parse("m").unwrap(),
            bytes: Vec::new(),
            digest: crate::digest::manifest_digest(b""),
            modified: UNIX_EPOCH - Duration::from_secs(10),
        };
        assert_eq!(manifest.modified_rfc3339(), "1970-01-01T00:00:00Z");
        manifest.modified = UNIX_EPOCH + Duration::from_secs(MAX_RFC3339_SECS + 1000);
        assert_eq!(manifest.modified_rfc3339(), "9999-12-31T23:59:59Z");
    }
}
