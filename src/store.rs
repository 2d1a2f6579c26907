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
//! All I/O here is blocking `std::fs`; async callers run it on a blocking
//! thread (`spawn_blocking`), never on a runtime worker.
//!
//! # Symlinks
//!
//! [`Store::scan`] never descends into a symlinked directory, so a walk cannot
//! leave the store or loop. A symlink *at manifest depth* that resolves to a
//! regular file is read as a manifest: Ollama never creates one, but Ollama
//! reads through it, so to Ollama it is a model, and treating it as one keeps
//! callers from ever writing over it. [`Store::read_manifest`] reads whatever
//! the name's path resolves to, the same way Ollama does.

use std::collections::VecDeque;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::name::{ModelName, MANIFESTS_DIR};

/// The directory of the store that holds blobs.
pub const BLOBS_DIR: &str = "blobs";

/// The number of directory levels below `manifests/` above a manifest file:
/// host, namespace and model.
const MANIFEST_DIR_DEPTH: usize = 3;

/// The last second `humantime` can format (9999-12-31T23:59:59Z).
const MAX_RFC3339_SECS: u64 = 253_402_300_799;

/// An Ollama model store rooted at a directory. Clones share their
/// [`FreshFiles`].
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
    fresh: Arc<FreshFiles>,
}

/// The most [`FreshFiles`] remembered; the oldest go first.
const MAX_FRESH_FILES: usize = 4096;

/// Manifests this process wrote into directories it had just created, until
/// the watcher has looked at those directories.
///
/// A file deleted before the watch on its new directory exists raises no
/// event, and a listing of the directory no longer shows it; the watcher
/// therefore checks these names too when it lists a new directory. Only the
/// last 4,096 are kept (a batch of more new aliases than that,
/// deleted at once, would leave its first ones to the next start-up).
#[derive(Debug, Default)]
pub struct FreshFiles {
    names: Mutex<VecDeque<ModelName>>,
}

impl FreshFiles {
    /// Remembers that `name`'s manifest was written into a new directory.
    pub fn note(&self, name: ModelName) {
        let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        names.push_back(name);
        while names.len() > MAX_FRESH_FILES {
            names.pop_front();
        }
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

impl Store {
    /// A store rooted at `root` (`--models`, `$OLLAMA_MODELS` or
    /// `~/.ollama/models`). Touches nothing on disk.
    pub fn new(root: impl Into<PathBuf>) -> Store {
        Store {
            root: root.into(),
            fresh: Arc::default(),
        }
    }

    /// Manifests written into new directories, not yet seen by the watcher.
    pub fn fresh_files(&self) -> &FreshFiles {
        &self.fresh
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
        for dir in [self.manifests_dir(), self.blobs_dir()] {
            fs::create_dir_all(&dir).map_err(|err| with_path(err, &dir))?;
        }
        Ok(())
    }

    /// Reads `name`'s manifest file, or `None` if there is none.
    ///
    /// "None" covers a missing file or directory on the way, and anything at the
    /// path that is not a regular file (a directory, a FIFO, a dangling
    /// symlink). The digest is of the bytes read.
    ///
    /// # Errors
    ///
    /// Any other I/O error (e.g. permission denied), with the path in the
    /// message.
    pub fn read_manifest(&self, name: &ModelName) -> io::Result<Option<ManifestFile>> {
        read_manifest_at(name, &self.manifest_path(name))
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
        Ok(self.scan_with_temp_files("\0")?.0)
    }

    /// [`Store::scan`], and also the paths of hidden files at manifest depth
    /// whose names contain `temp_marker`: temp files a writer left behind
    /// when it was killed between writing and renaming.
    ///
    /// # Errors
    ///
    /// As [`Store::scan`].
    pub fn scan_with_temp_files(
        &self,
        temp_marker: &str,
    ) -> io::Result<(Vec<ManifestFile>, Vec<PathBuf>)> {
        let mut found = Found::new(temp_marker);
        scan_dir(&self.manifests_dir(), Path::new(""), 0, &mut found)?;
        let model_dirs = std::mem::take(&mut found.model_dirs);
        scan_model_dirs(&model_dirs, &mut found)?;
        let Found {
            mut manifests,
            temp_files,
            ..
        } = found;
        manifests.sort_by(|a, b| {
            a.name
                .key_str()
                .cmp(b.name.key_str())
                .then_with(|| a.name.manifest_rel_path().cmp(&b.name.manifest_rel_path()))
        });
        Ok((manifests, temp_files))
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
        scan_dir(&self.manifests_dir(), Path::new(""), 0, &mut found)?;
        for (dir, rel) in std::mem::take(&mut found.model_dirs) {
            scan_dir(&dir, &rel, MANIFEST_DIR_DEPTH, &mut found)?;
        }
        Ok(found.stamps.unwrap_or_default())
    }

    /// Lists every model directory once, on several threads, so that the
    /// recursive watch set up next (which visits them one by one, a disk read
    /// each on a cold cache) finds them in memory. Errors are ignored: the
    /// watch and the scan report what matters.
    pub fn warm_directories(&self) {
        let mut found = Found::new("\0");
        if scan_dir(&self.manifests_dir(), Path::new(""), 0, &mut found).is_err() {
            return;
        }
        let dirs = found.model_dirs;
        if dirs.len() < PARALLEL_SCAN_FROM {
            return;
        }
        tracing::info!("listing {} model directories", dirs.len());
        // Listing errors are left for the watch and the scan to report.
        let _ = on_scan_threads(&dirs, |(dir, _), _, _: &mut Option<()>| {
            if let Ok(entries) = fs::read_dir(dir) {
                entries.for_each(drop);
            }
            Ok(())
        });
    }
}

/// What a scan collects.
struct Found<'a> {
    manifests: Vec<ManifestFile>,
    /// In a stamp scan ([`Store::stamp_scan`]), each manifest's stamp instead
    /// of its bytes; `None` in a scan that reads.
    stamps: Option<Vec<(ModelName, FileStamp)>>,
    temp_files: Vec<PathBuf>,
    temp_marker: &'a str,
    /// Model directories (one level above the manifests), with their path
    /// below `manifests/`, left for [`scan_model_dirs`].
    model_dirs: Vec<(PathBuf, PathBuf)>,
}

impl<'a> Found<'a> {
    fn new(temp_marker: &'a str) -> Found<'a> {
        Found {
            manifests: Vec::new(),
            stamps: None,
            temp_files: Vec::new(),
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
    fn of(metadata: &fs::Metadata) -> FileStamp {
        #[cfg(unix)]
        let (changed, inode) = {
            use std::os::unix::fs::MetadataExt;
            ((metadata.ctime(), metadata.ctime_nsec()), metadata.ino())
        };
        #[cfg(not(unix))]
        let (changed, inode) = ((0, 0), 0);
        FileStamp {
            len: metadata.len(),
            modified: metadata.modified().ok(),
            changed,
            inode,
        }
    }
}

/// Model directories from which a scan reads them on several threads: on a
/// cold cache each listing and each file is a disk read, and a disk serves
/// several at once (20,000 manifests read one at a time took 5.4 s, by 8
/// readers 1.7 s).
const PARALLEL_SCAN_FROM: usize = 64;
/// Threads reading model directories (they wait on the disk, not the CPU).
const SCAN_THREADS: usize = 8;

/// Lists and reads each model directory of `dirs` (depth
/// `MANIFEST_DIR_DEPTH`) into `out`: on this thread for a few, else shared
/// among [`SCAN_THREADS`] threads, saying how far it is on a long scan.
fn scan_model_dirs(dirs: &[(PathBuf, PathBuf)], out: &mut Found<'_>) -> io::Result<()> {
    if dirs.len() < PARALLEL_SCAN_FROM {
        for (dir, rel) in dirs {
            scan_dir(dir, rel, MANIFEST_DIR_DEPTH, out)?;
        }
        return Ok(());
    }
    let temp_marker = out.temp_marker;
    let progress = Mutex::new(crate::progress::Progress::new(
        "reading the store (model directories)",
        dirs.len(),
    ));
    let found = on_scan_threads(dirs, |(dir, rel), done, found| {
        let found = found.get_or_insert_with(|| Found::new(temp_marker));
        scan_dir(dir, rel, MANIFEST_DIR_DEPTH, found)?;
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
    }
    Ok(())
}

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

/// Reads the manifest at `path` for `name`; `None` if absent or not a regular
/// file.
fn read_manifest_at(name: &ModelName, path: &Path) -> io::Result<Option<ManifestFile>> {
    // Check before opening: opening a FIFO would block.
    match fs::metadata(path) {
        Ok(metadata) if metadata.is_file() => {}
        Ok(_) => return Ok(None),
        Err(err) if is_absent(&err) => return Ok(None),
        Err(err) => return Err(with_path(err, path)),
    }
    let mut file = match fs::File::open(path) {
        Ok(file) => file,
        Err(err) if is_absent(&err) => return Ok(None),
        Err(err) => return Err(with_path(err, path)),
    };
    // Take the time from the handle we read, so bytes and time belong together.
    let metadata = file.metadata().map_err(|err| with_path(err, path))?;
    if !metadata.is_file() {
        return Ok(None);
    }
    let modified = metadata.modified().map_err(|err| with_path(err, path))?;
    let mut bytes = Vec::with_capacity(usize::try_from(metadata.len()).unwrap_or(0));
    file.read_to_end(&mut bytes)
        .map_err(|err| with_path(err, path))?;
    Ok(Some(ManifestFile {
        name: name.clone(),
        digest: crate::digest::manifest_digest(&bytes),
        bytes,
        modified,
    }))
}

/// Walks `dir`, which is `rel` below `manifests/` and `depth` levels deep,
/// pushing every manifest found into `out`.
fn scan_dir(dir: &Path, rel: &Path, depth: usize, out: &mut Found<'_>) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if is_absent(&err) => return Ok(()),
        Err(err) => return Err(with_path(err, dir)),
    };
    for entry in entries {
        let entry = entry.map_err(|err| with_path(err, dir))?;
        let path = entry.path();
        let entry_rel = rel.join(entry.file_name());
        // `DirEntry::file_type` does not follow symlinks.
        let file_type = match entry.file_type() {
            Ok(file_type) => file_type,
            Err(err) if is_absent(&err) => continue,
            Err(err) => return Err(with_path(err, &path)),
        };

        if depth < MANIFEST_DIR_DEPTH {
            if file_type.is_dir() && depth + 1 == MANIFEST_DIR_DEPTH {
                out.model_dirs.push((path, entry_rel));
            } else if file_type.is_dir() {
                scan_dir(&path, &entry_rel, depth + 1, out)?;
            } else if file_type.is_symlink() {
                tracing::debug!(path = %path.display(), "store scan: skipping symlink above manifest depth");
            } else {
                tracing::debug!(path = %path.display(), "store scan: skipping file above manifest depth");
            }
            continue;
        }

        if file_type.is_dir() {
            tracing::debug!(path = %path.display(), "store scan: skipping directory at manifest depth");
            continue;
        }
        let file_name = entry.file_name();
        let file_name = file_name.to_string_lossy();
        if file_name.starts_with('.') && file_name.contains(out.temp_marker) {
            out.temp_files.push(path);
            continue;
        }
        let Some(name) = ModelName::from_manifest_rel_path(&entry_rel) else {
            tracing::debug!(path = %path.display(), "store scan: skipping path that is not a valid model name");
            continue;
        };
        if let Some(stamps) = &mut out.stamps {
            // As `read_manifest_at` sees it: through a symlink, regular files only.
            match fs::metadata(&path) {
                Ok(metadata) if metadata.is_file() => {
                    stamps.push((name, FileStamp::of(&metadata)));
                }
                Ok(_) => {}
                Err(err) if is_absent(&err) => {}
                Err(err) => return Err(with_path(err, &path)),
            }
            continue;
        }
        match read_manifest_at(&name, &path)? {
            Some(manifest) => out.manifests.push(manifest),
            None => {
                tracing::debug!(path = %path.display(), "store scan: skipping vanished or non-regular file");
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

/// Adds `path` to an I/O error's message, keeping its kind.
fn with_path(err: io::Error, path: &Path) -> io::Error {
    io::Error::new(err.kind(), format!("{}: {err}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let (manifests, temp_files) = store.scan_with_temp_files(".aliasd-").unwrap();
        assert_eq!(manifests.len(), 1);
        assert_eq!(temp_files, [model_dir.join(".latest.aliasd-0123abcd")]);
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
        let (manifests, temp_files) = store.scan_with_temp_files(".aliasd-").unwrap();
        let names: Vec<String> = manifests.iter().map(|m| m.name.display()).collect();
        assert_eq!(names, expected);
        assert!(manifests.iter().all(|m| m.bytes == MANIFEST.as_bytes()));
        assert_eq!(temp_files, [dir.path().join(temp)]);
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
    fn scan_skips_symlinked_directories_but_reads_symlinked_manifests() {
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

        let found = Store::new(&root).scan().unwrap();
        let names: Vec<String> = found.iter().map(|m| m.name.display()).collect();
        assert_eq!(names, ["llama3", "viafile"]);
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
        assert!(store.read_manifest(&name).unwrap().is_none());

        write(
            dir.path(),
            "manifests/registry.ollama.ai/Me/Coder/Q4",
            MANIFEST,
        );
        let manifest = store.read_manifest(&name).unwrap().unwrap();
        assert_eq!(manifest.name.display(), "Me/Coder:Q4");
        assert_eq!(manifest.bytes, MANIFEST.as_bytes());
        assert!(manifest.digest.starts_with("sha256:"));

        // A directory where the manifest should be, and a file where a
        // directory should be, are both "no manifest".
        let dir_name = ModelName::parse("Me/Coder").unwrap();
        fs::create_dir_all(store.manifest_path(&dir_name)).unwrap();
        assert!(store.read_manifest(&dir_name).unwrap().is_none());
        write(dir.path(), "manifests/registry.ollama.ai/Flat", "");
        let below_a_file = ModelName::parse("Flat/m:t").unwrap();
        assert!(store.read_manifest(&below_a_file).unwrap().is_none());
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
