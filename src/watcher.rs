//! Follow what other programs (`ollama pull`, `ollama rm`, `ollama cp`) do to
//! the model store, and have the registry bring aliases in line.
//!
//! The `notify` callback thread only translates a file-system event into the
//! names it touches and adds them to an inbox. A debounce task takes them
//! once the store has been quiet for [`QUIET`] (at most [`MAX_DELAY`] after
//! the first), so a pull that rewrites a file in several steps yields one
//! reconcile, and sends the registry one `ReconcileNames`.
//! aliasd's own writes do not come back on Linux (the watch drops the
//! events the materializer announced, see `watcher/inotify.rs`); where they
//! do (another platform, a write whose announcement was cancelled), they
//! are recognized here and the registry journals nothing for them, so
//! there are no loops.
//!
//! Where the platform watcher cannot start (some network file systems, the
//! system's limit on watches), or when asked to, the store is polled instead;
//! so it is from the moment the watch stops covering the store (that limit
//! reached later, or `manifests/` itself removed). A poll lists the store and
//! `stat`s each manifest on a blocking thread, and only the files whose
//! size, times or inode changed are reconciled (the first poll reconciles
//! everything); polls are spaced so that they take at most a tenth of the time.

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

#[cfg(not(target_os = "linux"))]
use notify::Watcher as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::command::Origin;
use crate::name::{ModelName, MANIFESTS_DIR};
use crate::registry::{Command, Registry};
use crate::store::FileStamp;

#[cfg(target_os = "linux")]
mod inotify;

/// The platform's watch on the store: inotify itself on Linux (see
/// `watcher/inotify.rs`), `notify`'s watcher elsewhere.
#[cfg(target_os = "linux")]
type StoreWatch = inotify::Watch;
#[cfg(not(target_os = "linux"))]
type StoreWatch = notify::RecommendedWatcher;

/// How long the store must be quiet before changes are reconciled.
pub const QUIET: Duration = Duration::from_millis(40);
/// The longest a change waits while the store keeps changing.
pub const MAX_DELAY: Duration = Duration::from_millis(150);

/// What the watcher saw for one batch of file-system events.
#[derive(Debug)]
enum StoreChange {
    /// Manifests at these names changed, and directories appeared whose
    /// manifests must be listed.
    Names {
        /// Manifest files that changed.
        names: Vec<ModelName>,
        /// New directories under `manifests/`.
        subtrees: Vec<PathBuf>,
    },
    /// Something the names cannot describe (a directory moved, events lost).
    Everything,
}

/// How to follow the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchMode {
    /// The platform's watcher, falling back to polling at this interval.
    Notify {
        /// The fallback polling interval.
        fallback_poll: Duration,
    },
    /// Poll with a full reconcile at this interval.
    Poll(Duration),
}

/// Keeps the watcher alive; dropping it stops watching.
pub struct WatcherHandle {
    _watcher: Option<StoreWatch>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WatcherHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A watch on the store set up before the registry starts: what changes
/// meanwhile (the start-up reconcile included) queues until [`Watching::run`],
/// so nothing that happens between the start-up scan and the first event
/// is missed. Re-reconciling a name that start-up already settled journals
/// nothing.
pub struct Watching {
    watcher: Option<StoreWatch>,
    inbox: Arc<Inbox>,
    poll: Option<Duration>,
    /// How often to poll if the watch stops covering the store.
    fallback_poll: Duration,
    root: PathBuf,
}

impl Watching {
    /// Starts following `manifests_dir` (which must exist); needs no runtime.
    pub fn start(manifests_dir: PathBuf, mode: WatchMode) -> Watching {
        let inbox = Arc::new(Inbox::default());
        let fallback_poll = match mode {
            WatchMode::Poll(interval) => interval,
            WatchMode::Notify { fallback_poll } => fallback_poll,
        };
        let watcher = match mode {
            WatchMode::Poll(_) => None,
            WatchMode::Notify { .. } => {
                match start_notify(&manifests_dir, inbox.clone(), fallback_poll) {
                    Ok(watcher) => Some(watcher),
                    Err(e) if is_watch_limit(&e) => {
                        tracing::warn!(
                            "cannot watch {}: {}",
                            manifests_dir.display(),
                            watch_limit_advice("the store is not watched", fallback_poll)
                        );
                        None
                    }
                    Err(e) => {
                        tracing::warn!(
                            "cannot watch {} ({e}); polling the store instead",
                            manifests_dir.display()
                        );
                        None
                    }
                }
            }
        };
        let poll = match (mode, &watcher) {
            (WatchMode::Poll(interval), _) => Some(interval),
            (WatchMode::Notify { fallback_poll }, None) => Some(fallback_poll),
            (WatchMode::Notify { .. }, Some(_)) => None,
        };
        if let Some(interval) = poll {
            tracing::info!(
                "polling {} every {:?} for external changes",
                manifests_dir.display(),
                interval
            );
        }
        Watching {
            watcher,
            inbox,
            poll,
            fallback_poll,
            root: manifests_dir,
        }
    }

    /// Hands what the watch sees (queued changes first) to `registry`. Must be
    /// called inside the tokio runtime.
    pub fn run(self, registry: Registry) -> WatcherHandle {
        // From now on the directories aliasd makes are watched as it makes
        // them (before the start-up reconcile, their creation is an event).
        #[cfg(target_os = "linux")]
        if let Some(watch) = &self.watcher {
            registry.fresh_files().set_own_writes(watch.own_writes());
        }
        let task = tokio::spawn(run(
            registry,
            self.inbox,
            self.poll,
            self.fallback_poll,
            self.root,
        ));
        WatcherHandle {
            _watcher: self.watcher,
            task,
        }
    }
}

fn start_notify(
    manifests_dir: &Path,
    inbox: Arc<Inbox>,
    fallback_poll: Duration,
) -> notify::Result<StoreWatch> {
    let root = manifests_dir.to_path_buf();
    let handler = move |res: notify::Result<notify::Event>| {
        if let Some(change) = on_notify(&root, &inbox, fallback_poll, res) {
            inbox.add(change);
        }
    };
    // One watch per directory: with many aliases on a cold disk this takes
    // seconds, which should not look like a hang.
    tracing::info!(
        "setting up the watch on each directory of {}",
        manifests_dir.display()
    );
    let started = std::time::Instant::now();
    #[cfg(target_os = "linux")]
    let watcher = inotify::Watch::start(manifests_dir, handler)?;
    #[cfg(not(target_os = "linux"))]
    let watcher = {
        // Not following symlinks spares the recursive watch of each new
        // directory a `realpath` and an open of every ancestor (walkdir's
        // loop check; see benches/README.md, "Figures moved out of
        // comments"), and keeps the watch inside the store. Ollama makes no
        // symlinks in its store.
        let config = notify::Config::default().with_follow_symlinks(false);
        let mut watcher = notify::RecommendedWatcher::new(handler, config)?;
        watcher.watch(manifests_dir, notify::RecursiveMode::Recursive)?;
        watcher
    };
    tracing::info!(
        seconds = %format!("{:.2}", started.elapsed().as_secs_f64()),
        "watching {} for external changes",
        manifests_dir.display()
    );
    Ok(watcher)
}

/// What one report of the watcher means for the store.
///
/// An error is answered with a full reconcile. The system's limit on watches
/// is different: every directory made after it is reached goes unwatched, so
/// the first such error also turns polling on (see [`run`]) and says how to
/// raise the limit; the later ones, which polling covers, are dropped.
/// So is `manifests/` itself going (`rm -rf`, or moved away): its watch goes
/// with it, and the directory Ollama makes next would be unwatched.
fn on_notify(
    root: &Path,
    inbox: &Inbox,
    fallback_poll: Duration,
    res: notify::Result<notify::Event>,
) -> Option<StoreChange> {
    match res {
        Ok(event) if removes_root(root, &event) => {
            if !inbox.polling.swap(true, Ordering::SeqCst) {
                tracing::warn!(
                    "{} was removed or moved away, and its watch with it; aliasd polls the \
                     store from now on, every {fallback_poll:?} (less often for a big store; \
                     restart aliasd to watch it again)",
                    root.display()
                );
            }
            Some(StoreChange::Everything)
        }
        Ok(event) => translate(root, &event),
        Err(e) if is_watch_limit(&e) => {
            if inbox.polling.swap(true, Ordering::SeqCst) {
                return None;
            }
            tracing::warn!(
                "cannot watch {}: {}",
                e.paths
                    .first()
                    .map_or_else(|| "a new directory".into(), |p| p.display().to_string()),
                watch_limit_advice(
                    "directories made from now on are not watched",
                    fallback_poll
                )
            );
            Some(StoreChange::Everything)
        }
        Err(e) => {
            tracing::warn!("watcher error: {e}; reconciling the whole store");
            Some(StoreChange::Everything)
        }
    }
}

/// Whether `event` says the watched directory itself went: removed, or
/// renamed away.
fn removes_root(root: &Path, event: &notify::Event) -> bool {
    use notify::event::ModifyKind;
    use notify::EventKind;
    matches!(
        event.kind,
        EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))
    ) && event.paths.iter().any(|path| path == root)
}

/// Whether `e` says the system's limit on file watches is reached.
fn is_watch_limit(e: &notify::Error) -> bool {
    matches!(e.kind, notify::ErrorKind::MaxFilesWatch)
}

/// What happens once the watch limit is reached (`unwatched`: what is left
/// out), and how to lift it.
fn watch_limit_advice(unwatched: &str, poll: Duration) -> String {
    let limit = std::fs::read_to_string("/proc/sys/fs/inotify/max_user_watches")
        .map(|text| format!(" (fs.inotify.max_user_watches = {})", text.trim()))
        .unwrap_or_default();
    format!(
        "the system's limit on file watches is reached{limit}, so {unwatched}; aliasd polls \
         the store instead, every {poll:?} (less often for a big store). To watch again, raise the limit (e.g. `sudo sysctl fs.inotify.max_user_watches=524288`, and \
         a file in /etc/sysctl.d/ to keep it) and restart aliasd"
    )
}

/// The names an event touches; `None` for events that cannot matter (reads,
/// aliasd's temp files).
fn translate(root: &Path, event: &notify::Event) -> Option<StoreChange> {
    use notify::event::{AccessKind, AccessMode};
    use notify::EventKind;
    // Reads cannot matter; a writer closing a file can (an in-place write
    // is whole only then).
    if matches!(event.kind, EventKind::Access(kind) if kind != AccessKind::Close(AccessMode::Write))
    {
        return None;
    }
    if event.need_rescan() {
        return Some(StoreChange::Everything);
    }
    let mut names = Vec::new();
    let mut subtrees = Vec::new();
    for path in &event.paths {
        match classify_path(root, path) {
            PathKind::Manifest(name) => names.push(name),
            PathKind::Ignored => {}
            // A new directory (every alias and every pulled model makes one):
            // files written into it before the watch on it was added are
            // found by listing it.
            PathKind::Directory if matches!(event.kind, EventKind::Create(_)) => {
                subtrees.push(path.clone());
            }
            // Its files were reported one by one before it went.
            PathKind::Directory if matches!(event.kind, EventKind::Remove(_)) => {}
            // A directory renamed or changed otherwise: read everything.
            PathKind::Directory => return Some(StoreChange::Everything),
        }
    }
    if names.is_empty() && subtrees.is_empty() {
        None
    } else {
        Some(StoreChange::Names { names, subtrees })
    }
}

enum PathKind {
    Manifest(ModelName),
    Ignored,
    Directory,
}

/// A manifest path (4 levels below `manifests/`), a hidden temp file, or
/// something higher up (a directory created, removed or renamed).
fn classify_path(root: &Path, path: &Path) -> PathKind {
    let Ok(rel) = path.strip_prefix(root) else {
        return PathKind::Ignored;
    };
    let parts: Vec<&std::ffi::OsStr> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(part) => Some(part),
            _ => None,
        })
        .collect();
    if parts
        .last()
        .is_some_and(|p| p.to_string_lossy().starts_with('.'))
    {
        return PathKind::Ignored;
    }
    match parts.len() {
        4 => match ModelName::from_manifest_rel_path(rel) {
            Some(name) => PathKind::Manifest(name),
            None => PathKind::Ignored,
        },
        0..=3 => PathKind::Directory,
        _ => PathKind::Ignored,
    }
}

/// Changes seen by the notify thread, gathered for the debounce task. The
/// notify thread adds under a short lock and wakes the task only when the
/// inbox goes from empty to not empty: one wake-up per debounce window rather
/// than one per file-system event (a create is five or six of them).
#[derive(Default)]
struct Inbox {
    state: Mutex<InboxState>,
    wake: tokio::sync::Notify,
    /// Set once the watch stopped covering the store (the system's limit on
    /// watches reached, `manifests/` itself removed): from then on it is polled.
    polling: AtomicBool,
}

#[derive(Default)]
struct InboxState {
    pending: ChangedNames,
    /// When the first and the latest pending change came; `None` when empty.
    /// Tokio's clock (the real one outside a runtime, as on the notify
    /// thread), so that tests can pause it.
    first: Option<tokio::time::Instant>,
    last: Option<tokio::time::Instant>,
}

/// Names pending past which one full reconcile is cheaper to hold than the list.
const MAX_PENDING_NAMES: usize = 100_000;

impl Inbox {
    fn add(&self, change: StoreChange) {
        let now = tokio::time::Instant::now();
        let was_empty = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let was_empty = state.first.is_none();
            state.pending.add(change);
            if state.pending.names.len() > MAX_PENDING_NAMES {
                state.pending = ChangedNames::everything();
            }
            state.first.get_or_insert(now);
            state.last = Some(now);
            was_empty
        };
        if was_empty {
            // Stores a permit if the task is not waiting yet: never lost.
            self.wake.notify_one();
        }
    }

    /// What is pending, once the store has been quiet for [`QUIET`] (or
    /// [`MAX_DELAY`] after the first change). Cancel-safe: changes stay in
    /// the inbox until taken.
    async fn next_batch(&self) -> ChangedNames {
        loop {
            let (first, last) = {
                let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                (state.first, state.last)
            };
            let (Some(first), Some(last)) = (first, last) else {
                self.wake.notified().await;
                continue;
            };
            let due = (last + QUIET).min(first + MAX_DELAY);
            if tokio::time::Instant::now() < due {
                tokio::time::sleep_until(due).await;
                continue;
            }
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            state.first = None;
            state.last = None;
            return std::mem::take(&mut state.pending);
        }
    }
}

/// Gathers changes until the store is quiet, then asks the registry to
/// reconcile; polls every `poll`, or every `fallback_poll` once the watch no
/// longer covers the store, stretched so that polling takes at most a tenth
/// of the time ([`poll_period`]).
async fn run(
    registry: Registry,
    inbox: Arc<Inbox>,
    poll: Option<Duration>,
    fallback_poll: Duration,
    root: PathBuf,
) {
    let base = poll.unwrap_or(fallback_poll);
    let mut next_poll = poll.map(|_| tokio::time::Instant::now());
    let mut stamps: Option<Stamps> = None;
    let mut period = base;
    loop {
        // The error that set it was answered with a full reconcile already.
        if next_poll.is_none() && inbox.polling.load(Ordering::SeqCst) {
            next_poll = Some(tokio::time::Instant::now() + fallback_poll);
        }
        registry.metrics().set_store_polled(next_poll.is_some());
        let pending = match next_poll {
            Some(at) => tokio::select! {
                pending = inbox.next_batch() => pending,
                () = tokio::time::sleep_until(at) => {
                    let started = Instant::now();
                    let pending = poll_changes(&registry, &mut stamps).await;
                    let took = started.elapsed();
                    let stretched = poll_period(base, took);
                    let news = period == base || stretched > 2 * period || 2 * stretched < period;
                    if stretched > base && news {
                        tracing::info!(
                            "a poll of the store took {:.2} s; polling every {:.0} s (at most a \
                             tenth of the time)",
                            took.as_secs_f64(),
                            stretched.as_secs_f64()
                        );
                    }
                    period = stretched;
                    next_poll = Some(tokio::time::Instant::now() + period);
                    pending
                }
            },
            None => inbox.next_batch().await,
        };
        let Some(command) = pending.into_command(&registry, &root).await else {
            continue;
        };
        match registry.execute(command, Origin::system("watcher")).await {
            Ok(reply) => tracing::debug!(?reply, "watcher reconcile done"),
            Err(crate::registry::RegistryError::Unavailable) => {
                tracing::debug!("watcher reconcile not done: the registry is shutting down")
            }
            Err(e) => tracing::error!("watcher reconcile failed: {e}"),
        }
    }
}

/// How long to wait after a poll that took `took`: `base`, or longer when
/// the store is big enough that polls every `base` would keep more than a
/// tenth of a core busy.
fn poll_period(base: Duration, took: Duration) -> Duration {
    base.max(took * 10)
}

/// The stamps of the last poll, by the exact spelling of each file's name
/// (on a case-sensitive file system two files may differ only in case).
type Stamps = HashMap<Box<str>, (ModelName, FileStamp)>;

/// One poll: stamps every manifest of the store (a listing and a `stat`
/// each, on a blocking thread, never the registry's writer) and asks to
/// reconcile the names whose stamp changed, appeared or went since `last`.
/// The first poll has nothing to compare with and asks for a full reconcile,
/// which also covers whatever changed before its stamps were taken.
async fn poll_changes(registry: &Registry, last: &mut Option<Stamps>) -> ChangedNames {
    let store = registry.store().clone();
    let scanned = tokio::task::spawn_blocking(move || store.stamp_scan().map(stamps))
        .await
        .map_err(std::io::Error::other)
        .and_then(|scanned| scanned);
    let now = match scanned {
        Ok(now) => now,
        Err(e) => {
            tracing::warn!("polling the store failed ({e}); reconciling the whole store");
            *last = None;
            return ChangedNames::everything();
        }
    };
    let changed = last.as_ref().map(|before| changed_names(before, &now));
    *last = Some(now);
    let Some(changed) = changed else {
        return ChangedNames::everything();
    };
    let mut pending = ChangedNames::default();
    for name in changed {
        pending.names.insert(name.key(), name);
    }
    pending
}

/// A stamp scan's files by the exact spelling of their names.
fn stamps(files: Vec<(ModelName, FileStamp)>) -> Stamps {
    files
        .into_iter()
        .map(|(name, stamp)| (Box::from(name.spelled()), (name, stamp)))
        .collect()
}

/// The names whose files differ between two polls: new, gone, or stamped
/// differently.
fn changed_names(before: &Stamps, now: &Stamps) -> Vec<ModelName> {
    let changed = now
        .iter()
        .filter(|(spelled, (_, stamp))| before.get(*spelled).map(|(_, s)| s) != Some(stamp));
    let gone = before
        .iter()
        .filter(|(spelled, _)| !now.contains_key(*spelled));
    changed
        .chain(gone)
        .map(|(_, (name, _))| name.clone())
        .collect()
}

#[derive(Default)]
struct ChangedNames {
    names: BTreeMap<String, ModelName>,
    subtrees: std::collections::BTreeSet<PathBuf>,
    everything: bool,
}

impl ChangedNames {
    /// A full reconcile.
    fn everything() -> ChangedNames {
        ChangedNames {
            everything: true,
            ..ChangedNames::default()
        }
    }

    fn add(&mut self, change: StoreChange) {
        match change {
            StoreChange::Everything => self.everything = true,
            StoreChange::Names { names, subtrees } => {
                for name in names {
                    self.names.insert(name.key(), name);
                }
                self.subtrees.extend(subtrees);
            }
        }
    }

    /// The reconcile to ask for, leaving out aliasd's own writes coming back
    /// (checked here, off the writer thread); `None` if nothing is left.
    async fn into_command(self, registry: &Registry, root: &Path) -> Option<Command> {
        if self.everything {
            return Some(Command::Reconcile);
        }
        let mut names = self.names;
        let subtrees = self.subtrees;
        let registry = registry.clone();
        let root = root.to_path_buf();
        let changed = tokio::task::spawn_blocking(move || {
            for dir in &subtrees {
                let Ok(rel) = dir.strip_prefix(&root) else {
                    continue;
                };
                for name in manifests_under(&registry, rel) {
                    names.insert(name.key(), name);
                }
            }
            // What aliasd wrote into these directories is checked even if the
            // listing no longer shows it: it may have been deleted before the
            // watch on its directory existed.
            let dirs: Vec<PathBuf> = subtrees
                .iter()
                .filter_map(|dir| dir.strip_prefix(&root).ok())
                .map(Path::to_path_buf)
                .collect();
            for name in registry.fresh_files().take_under(&dirs) {
                names.insert(name.key(), name);
            }
            let root = registry.store().beneath().ok();
            names
                .into_values()
                .filter(|name| {
                    let expected = registry
                        .read(|shared| crate::reconcile::expected_file(&shared.index, name));
                    // A file aliasd wrote, still as it was written, is known
                    // by its identity alone; any other is read.
                    let recognized = match (&expected, root) {
                        (Some(Some(digest)), Some(root)) => {
                            registry.fresh_files().ours(root, name, digest)
                        }
                        _ => false,
                    };
                    !recognized
                        && !expected.is_some_and(|expected| {
                            crate::reconcile::matches_expected(registry.store(), name, &expected)
                        })
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        if changed.is_empty() {
            None
        } else {
            Some(Command::ReconcileNames(changed))
        }
    }
}

/// The manifests in the directory `rel` below `manifests/` (depth 1 to 3),
/// found by listing it beneath the store's root. When that directory has
/// become a symlink or a file, nothing below it is listed (it is foreign):
/// the aliases whose paths run through it are returned instead, so that
/// they are looked at again (and become `shadowed`).
fn manifests_under(registry: &Registry, rel: &Path) -> Vec<ModelName> {
    use crate::store::beneath::{self, Lookup};
    use rustix::fs::FileType;
    let store = registry.store();
    let Ok(root) = store.beneath() else {
        return Vec::new();
    };
    let parts: Vec<&str> = rel.iter().filter_map(|part| part.to_str()).collect();
    let top = match root.dir(&parts) {
        Ok(Lookup::Found(dir)) => dir,
        Ok(Lookup::Foreign(_)) => {
            return registry.read(|shared| {
                shared
                    .index
                    .exact_entries()
                    .filter_map(|entry| match &entry.alias {
                        crate::index::AliasName::Exact(name) => Some(name),
                        crate::index::AliasName::Prefix(_) => None,
                    })
                    .filter(|name| {
                        let path = name.manifest_rel_path();
                        path.strip_prefix(MANIFESTS_DIR)
                            .is_ok_and(|below| below.starts_with(rel))
                    })
                    .cloned()
                    .collect()
            });
        }
        _ => return Vec::new(),
    };
    let mut out = Vec::new();
    let mut stack = vec![(top, rel.to_path_buf())];
    while let Some((dir, dir_rel)) = stack.pop() {
        let Ok(entries) = beneath::list(std::os::fd::AsFd::as_fd(&dir)) else {
            continue;
        };
        for entry in entries {
            let entry_rel = dir_rel.join(&entry.name);
            match entry_rel.iter().count() {
                4 if !entry.name.starts_with('.') => {
                    if let Some(name) = ModelName::from_manifest_rel_path(&entry_rel) {
                        out.push(name);
                    }
                }
                1..=3 if entry.kind == FileType::Directory => {
                    let in_store = Path::new(MANIFESTS_DIR).join(&entry_rel);
                    let opened =
                        beneath::open_dir(std::os::fd::AsFd::as_fd(&dir), &entry.name, &in_store);
                    if let Ok(Lookup::Found(sub)) = opened {
                        stack.push((sub, entry_rel));
                    }
                }
                _ => {}
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(rel: &str, expected: &str) {
        let root = Path::new("/store/manifests");
        let got = match classify_path(root, &root.join(rel)) {
            PathKind::Manifest(name) => name.display(),
            PathKind::Ignored => "ignored".into(),
            PathKind::Directory => "directory".into(),
        };
        assert_eq!(got, expected, "{rel}");
    }

    fn limit_error() -> notify::Result<notify::Event> {
        Err(notify::Error::new(notify::ErrorKind::MaxFilesWatch)
            .add_path(PathBuf::from("/store/manifests/h/ns/new")))
    }

    fn is_everything(change: &Option<StoreChange>) -> bool {
        matches!(change, Some(StoreChange::Everything))
    }

    #[test]
    fn the_watch_limit_turns_polling_on_once() {
        let root = Path::new("/store/manifests");
        let inbox = Inbox::default();
        let poll = Duration::from_secs(2);
        let first = on_notify(root, &inbox, poll, limit_error());
        assert!(
            is_everything(&first),
            "the first limit error reconciles all"
        );
        assert!(inbox.polling.load(Ordering::SeqCst));
        // Later ones are covered by polling.
        assert!(on_notify(root, &inbox, poll, limit_error()).is_none());
        // Other errors still reconcile everything, every time.
        let other = || Err(notify::Error::generic("lost events"));
        assert!(is_everything(&on_notify(root, &inbox, poll, other())));
        assert!(is_everything(&on_notify(root, &inbox, poll, other())));
    }

    #[test]
    fn the_watched_directory_going_turns_polling_on() {
        use notify::event::{ModifyKind, RemoveKind, RenameMode};
        use notify::{Event, EventKind};
        let root = Path::new("/store/manifests");
        let poll = Duration::from_secs(2);
        let event = |kind, path: &str| Ok(Event::new(kind).add_path(PathBuf::from(path)));
        // A directory below it going changes nothing about the watch.
        let inbox = Inbox::default();
        let below = event(
            EventKind::Remove(RemoveKind::Folder),
            "/store/manifests/registry.ollama.ai",
        );
        assert!(on_notify(root, &inbox, poll, below).is_none());
        assert!(!inbox.polling.load(Ordering::SeqCst));
        // It going itself does.
        let gone = event(EventKind::Remove(RemoveKind::Folder), "/store/manifests");
        assert!(is_everything(&on_notify(root, &inbox, poll, gone)));
        assert!(inbox.polling.load(Ordering::SeqCst));
        // So does it being renamed away.
        let inbox = Inbox::default();
        let moved = event(
            EventKind::Modify(ModifyKind::Name(RenameMode::From)),
            "/store/manifests",
        );
        assert!(is_everything(&on_notify(root, &inbox, poll, moved)));
        assert!(inbox.polling.load(Ordering::SeqCst));
    }

    #[test]
    fn other_errors_leave_the_watch_on() {
        let inbox = Inbox::default();
        let res = Err(notify::Error::generic("lost events"));
        let change = on_notify(Path::new("/m"), &inbox, Duration::from_secs(2), res);
        assert!(is_everything(&change));
        assert!(!inbox.polling.load(Ordering::SeqCst));
    }

    #[test]
    fn the_limit_advice_says_how_to_raise_it() {
        let advice = watch_limit_advice("the store is not watched", Duration::from_secs(2));
        assert!(
            advice.contains("fs.inotify.max_user_watches=524288"),
            "{advice}"
        );
        assert!(advice.contains("every 2s"), "{advice}");
    }

    /// The stamps of a store, as a poll takes them.
    fn stamps_of(store: &crate::store::Store) -> Stamps {
        stamps(store.stamp_scan().unwrap())
    }

    fn write(models: &Path, model: &str, text: &str) {
        let dir = models
            .join("manifests/registry.ollama.ai/library")
            .join(model);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("latest"), text).unwrap();
    }

    fn shown(mut names: Vec<ModelName>) -> Vec<String> {
        names.sort_by_key(ModelName::key);
        names.iter().map(ModelName::display).collect()
    }

    #[test]
    fn a_poll_finds_the_files_that_changed_appeared_or_went() {
        let dir = tempfile::tempdir().unwrap();
        let models = dir.path();
        for model in ["kept", "rewritten", "replaced", "removed"] {
            write(models, model, r#"{"layers":[]}"#);
        }
        let store = crate::store::Store::new(models);
        let before = stamps_of(&store);
        assert_eq!(before.len(), 4);
        assert!(changed_names(&before, &stamps_of(&store)).is_empty());

        // In place, as Ollama writes: a new size.
        write(models, "rewritten", r#"{"layers":[],"config":{}}"#);
        // Renamed over, same size: a new inode.
        let replaced = models.join("manifests/registry.ollama.ai/library/replaced");
        std::fs::write(replaced.join(".tmp"), r#"{"layers":[]}"#).unwrap();
        std::fs::rename(replaced.join(".tmp"), replaced.join("latest")).unwrap();
        std::fs::remove_file(models.join("manifests/registry.ollama.ai/library/removed/latest"))
            .unwrap();
        write(models, "added", r#"{"layers":[]}"#);

        let now = stamps_of(&store);
        assert_eq!(
            shown(changed_names(&before, &now)),
            ["added", "removed", "replaced", "rewritten"]
        );
        assert!(changed_names(&now, &stamps_of(&store)).is_empty());
    }

    #[test]
    fn polls_take_at_most_a_tenth_of_the_time() {
        let base = Duration::from_secs(2);
        assert_eq!(poll_period(base, Duration::from_millis(5)), base);
        assert_eq!(poll_period(base, Duration::from_millis(200)), base);
        assert_eq!(
            poll_period(base, Duration::from_millis(1900)),
            Duration::from_secs(19)
        );
    }

    fn change(names: &[&str]) -> StoreChange {
        StoreChange::Names {
            names: names.iter().map(|n| ModelName::parse(n).unwrap()).collect(),
            subtrees: Vec::new(),
        }
    }

    fn batch_names(pending: &ChangedNames) -> Vec<String> {
        let mut names: Vec<String> = pending.names.values().map(ModelName::display).collect();
        names.sort();
        names
    }

    #[tokio::test(start_paused = true)]
    async fn changes_are_taken_once_the_store_is_quiet() {
        let inbox = Arc::new(Inbox::default());
        let start = tokio::time::Instant::now();
        inbox.add(change(&["a"]));
        let taker = tokio::spawn({
            let inbox = inbox.clone();
            async move {
                let pending = inbox.next_batch().await;
                (tokio::time::Instant::now(), pending)
            }
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        inbox.add(change(&["b"]));
        let (taken_at, pending) = taker.await.unwrap();
        assert_eq!(batch_names(&pending), ["a", "b"]);
        assert_eq!(taken_at - start, Duration::from_millis(30) + QUIET);
    }

    #[tokio::test(start_paused = true)]
    async fn a_store_that_never_goes_quiet_is_taken_after_the_longest_delay() {
        let inbox = Arc::new(Inbox::default());
        let start = tokio::time::Instant::now();
        let writer = tokio::spawn({
            let inbox = inbox.clone();
            async move {
                for i in 0..100 {
                    inbox.add(change(&[&format!("m{i}")]));
                    tokio::time::sleep(QUIET / 2).await;
                }
            }
        });
        let pending = inbox.next_batch().await;
        assert_eq!(tokio::time::Instant::now() - start, MAX_DELAY);
        let taken = pending.names.len();
        assert!(
            (2..100).contains(&taken),
            "{taken} names in the first batch"
        );
        // The rest comes in later batches: nothing is lost.
        let mut total = taken;
        while total < 100 {
            total += inbox.next_batch().await.names.len();
        }
        assert_eq!(total, 100);
        writer.await.unwrap();
    }

    #[test]
    fn classifies_paths() {
        check("registry.ollama.ai/library/llama3/latest", "llama3");
        check(
            "registry.ollama.ai/library/llama3/.latest.aliasd-1234",
            "ignored",
        );
        check("registry.ollama.ai/library/llama3", "directory");
        check("registry.ollama.ai/library/llama3/latest/deeper", "ignored");
        check("example.com/ns/m/q4", "example.com/ns/m:q4");
    }
}
