//! The store's watch on Linux: inotify itself, one watch per directory down
//! to the model directories, events handed on as `notify::Event`s (so the
//! rest of the watcher is the same on every platform).
//!
//! Why not `notify`'s own inotify backend: it watches for `IN_OPEN`, so
//! every directory aliasd walks beneath the store's root (each read and
//! write of an alias file opens three or four) comes back as events to read
//! and drop, and for every new directory it `stat`s it twice and lists it
//! with a `stat` of each entry before adding the watch. Here the mask leaves
//! `IN_OPEN` out, a model directory (depth 3, what a create makes) gets its
//! watch with one `inotify_add_watch`, and a directory aliasd made itself is
//! watched by aliasd before it writes into it ([`Watch::own_writes`]), so its
//! creation needs no event and no listing at all.
//!
//! Only directories down to depth 3 below `manifests/` are watched: deeper
//! ones hold nothing that can be a manifest (the watcher ignores them).
//!
//! The store's owner may swap any directory for a symlink at any moment, so
//! no path below `manifests/` is resolved by the kernel here either: each
//! directory is opened from the store root's handle one component at a time
//! without following a symlink (the materializer hands over the handle of a
//! directory it made), listed through that handle, and watched through it
//! (`/proc/self/fd/<n>`, which names that very directory): a watch or a
//! listing never lands outside the store.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use notify::event::{
    AccessKind, AccessMode, CreateKind, DataChange, Flag, MetadataKind, ModifyKind, RemoveKind,
    RenameMode,
};
use notify::{Event, EventKind};
use rustix::fs::inotify::{self, ReadFlags, WatchFlags};
use rustix::fs::FileType;
use rustix::io::Errno;

use crate::materializer::OwnWrites;
use crate::store::beneath;

/// How deep below `manifests/` directories are watched: host (1),
/// namespace (2), model (3); a model directory's entries are manifests.
const DEEPEST: usize = 3;

/// How long a wake-up waits for more events before reading them.
const GATHER: std::time::Duration = std::time::Duration::from_millis(2);

/// What every watched directory reports: `notify`'s mask without `IN_OPEN`
/// (reads cannot change the store; a writer's close still comes). Watched
/// through `/proc/self/fd/<n>`, a directory's path must be followed (that
/// link is the open directory itself); without `/proc`, by its path, whose
/// last component is not followed (see [`Shared::add`]).
fn dir_mask() -> WatchFlags {
    WatchFlags::ATTRIB
        | WatchFlags::CREATE
        | WatchFlags::DELETE
        | WatchFlags::CLOSE_WRITE
        | WatchFlags::MODIFY
        | WatchFlags::MOVED_FROM
        | WatchFlags::MOVED_TO
        | WatchFlags::ONLYDIR
}

/// A running watch; dropping it stops its thread.
pub(super) struct Watch {
    shared: Arc<Shared>,
    /// Written to stop the thread (an eventfd it polls beside inotify).
    stop: Arc<OwnedFd>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What the thread and [`Watch::own_writes`] share.
struct Shared {
    inotify: OwnedFd,
    /// `manifests/`.
    root: PathBuf,
    /// The store's root (`manifests/`'s parent), opened once. `manifests/`
    /// itself is opened from there each time a directory below it is
    /// ([`beneath::Root::dir`]), and never kept open: an open handle would
    /// hold back the report of its removal (`IN_DELETE_SELF` comes once the
    /// last reference to it is gone), which hands the store over to polling.
    store: beneath::Root,
    dirs: Mutex<Dirs>,
    renames: Mutex<OwnRenames>,
}

/// aliasd's own alias-file writes (a temp file made, written, renamed to
/// the alias's name, closed), announced by the materializer before the
/// temp file exists ([`OwnWrites::will_rename`]) and followed through their
/// events, so that the rename and the close that follow it are dropped here
/// rather than looked at by the watcher (an `openat2` and an `fstat` each).
/// Only the exact sequence counts: any other event on the temp name (made
/// twice, removed, something moved onto it, a rename elsewhere) drops the
/// announcement, and the rename is then handed on as anyone's would be. Any
/// change to the alias's file after the rename has events of its own.
#[derive(Default)]
struct OwnRenames {
    /// By temp name: the name it becomes, and how far its events got.
    by_temp: HashMap<Box<[u8]>, OwnRename>,
    /// The temp names whose move away was read, by the move's cookie.
    moving: HashMap<u32, Box<[u8]>>,
    /// The names of files whose rename was dropped and whose close is
    /// still to come, by watch.
    closes: HashMap<i32, Vec<Box<[u8]>>>,
}

/// One announced write (see [`OwnRenames`]).
struct OwnRename {
    to: Box<[u8]>,
    /// The watch its temp file was made in, once that event was read.
    made_in: Option<i32>,
}

/// Announced writes past which the announcements are dropped: their events
/// never came (a directory not watched), and the watcher looks at those
/// files as at anyone's.
const MAX_OWN_RENAMES: usize = 16_384;

impl OwnRenames {
    fn announce(&mut self, temp: &str, to: &str) {
        if self.by_temp.len() >= MAX_OWN_RENAMES || self.closes.len() >= MAX_OWN_RENAMES {
            *self = OwnRenames::default();
        }
        self.by_temp.insert(
            temp.as_bytes().into(),
            OwnRename {
                to: to.as_bytes().into(),
                made_in: None,
            },
        );
    }

    fn forget(&mut self, temp: &str) {
        self.by_temp.remove(temp.as_bytes());
    }

    /// Whether this event is the rename of an announced write, or the
    /// close after it: aliasd's own, to be dropped. Follows the announced
    /// temp files' other events.
    fn is_own(&mut self, wd: i32, mask: ReadFlags, cookie: u32, name: &[u8]) -> bool {
        if mask.contains(ReadFlags::ISDIR) {
            return false;
        }
        if mask.contains(ReadFlags::MOVED_TO) {
            if let Some(temp) = self.moving.remove(&cookie) {
                let own = self
                    .by_temp
                    .remove(&temp)
                    .is_some_and(|rename| rename.made_in == Some(wd) && *rename.to == *name);
                if own {
                    self.closes.entry(wd).or_default().push(name.into());
                }
                return own;
            }
        }
        if mask.contains(ReadFlags::CLOSE_WRITE) {
            if let Some(names) = self.closes.get_mut(&wd) {
                if let Some(at) = names.iter().position(|closing| **closing == *name) {
                    names.swap_remove(at);
                    if names.is_empty() {
                        self.closes.remove(&wd);
                    }
                    return true;
                }
            }
        }
        let Some(rename) = self.by_temp.get_mut(name) else {
            return false;
        };
        let expected = match rename.made_in {
            None => mask.contains(ReadFlags::CREATE),
            Some(made_in) => {
                made_in == wd
                    && (mask.intersects(ReadFlags::MODIFY | ReadFlags::ATTRIB)
                        || mask.contains(ReadFlags::MOVED_FROM))
            }
        };
        if !expected {
            self.by_temp.remove(name);
        } else if mask.contains(ReadFlags::CREATE) {
            rename.made_in = Some(wd);
        } else if mask.contains(ReadFlags::MOVED_FROM) {
            self.moving.insert(cookie, name.into());
        }
        false
    }
}

/// The watched directories, by watch descriptor and by path.
#[derive(Default)]
struct Dirs {
    /// Each watch's directory and its depth below the root.
    by_wd: HashMap<i32, (PathBuf, usize)>,
    by_path: HashMap<PathBuf, i32>,
}

/// Adding a watch failed: the system's limit on watches, or another error.
enum AddError {
    Limit,
    Other(std::io::Error),
}

impl Shared {
    /// Watches `dir`, open at `path` (`depth` below the root), through its
    /// handle.
    fn add(&self, path: &Path, depth: usize, dir: BorrowedFd<'_>) -> Result<(), AddError> {
        let mut mask = dir_mask();
        if depth == 0 {
            // The root's own removal or move is reported (polling takes over).
            mask |= WatchFlags::DELETE_SELF | WatchFlags::MOVE_SELF;
        }
        let by_path = || inotify::add_watch(&self.inotify, path, mask | WatchFlags::DONT_FOLLOW);
        let added = match proc_fd_path(dir) {
            Some(by_handle) => match inotify::add_watch(&self.inotify, by_handle, mask) {
                // `/proc` refused it (mounted without access to one's own
                // handles): by its path, as where there is no `/proc`. No
                // one but this process can make its handle's link fail.
                Err(e) if e != Errno::NOSPC => by_path(),
                added => added,
            },
            // No `/proc`: by its path, its last component not followed (a
            // directory above it swapped for a symlink since it was opened
            // would be followed: `/proc` is what closes that).
            None => by_path(),
        };
        let wd = match added {
            Ok(wd) => wd,
            Err(Errno::NOSPC) => return Err(AddError::Limit),
            Err(e) => return Err(AddError::Other(e.into())),
        };
        let mut dirs = self.dirs.lock().unwrap_or_else(|e| e.into_inner());
        dirs.by_path.insert(path.to_path_buf(), wd);
        if let Some((old, _)) = dirs.by_wd.insert(wd, (path.to_path_buf(), depth)) {
            if old != path {
                // The same directory under another name (moved): one watch,
                // the new name.
                dirs.by_path.remove(&old);
            }
        }
        Ok(())
    }

    /// Watches `dir` (open at `path`) and, above the model level, the
    /// directories below it that exist already (made before its watch was
    /// there, as by `mkdir -p`), each opened through its parent's handle
    /// without following a symlink.
    fn add_tree(&self, path: &Path, depth: usize, dir: BorrowedFd<'_>) -> Result<(), AddError> {
        self.add(path, depth, dir)?;
        if depth >= DEEPEST {
            return Ok(());
        }
        let entries = beneath::list(dir).unwrap_or_default();
        for entry in entries.iter().filter(|e| e.kind == FileType::Directory) {
            let sub_path = path.join(&entry.name);
            // Gone or swapped for a symlink meanwhile: not watched (its
            // change was reported).
            let Ok(beneath::Lookup::Found(sub)) = beneath::open_dir(dir, &entry.name, &sub_path)
            else {
                continue;
            };
            match self.add_tree(&sub_path, depth + 1, sub.as_fd()) {
                Err(AddError::Other(_)) | Ok(()) => {}
                Err(AddError::Limit) => return Err(AddError::Limit),
            }
        }
        Ok(())
    }

    /// Opens `path`, a directory below the root (or the root), from the
    /// store's handle one component at a time without following a symlink;
    /// `None` if it is not there, not a directory, reached through a
    /// symlink, or outside the root.
    fn open(&self, path: &Path) -> Option<OwnedFd> {
        let rel = path.strip_prefix(&self.root).ok()?;
        let parts = rel
            .components()
            .map(|part| match part {
                std::path::Component::Normal(part) => part.to_str(),
                _ => None,
            })
            .collect::<Option<Vec<&str>>>()?;
        match self.store.dir(&parts) {
            Ok(beneath::Lookup::Found(dir)) => Some(dir),
            _ => None,
        }
    }

    /// Stops watching `path` and every watched directory below it.
    fn remove_tree(&self, path: &Path, depth: usize) {
        let mut dirs = self.dirs.lock().unwrap_or_else(|e| e.into_inner());
        let mut gone = Vec::new();
        if let Some(wd) = dirs.by_path.remove(path) {
            gone.push(wd);
        }
        if depth < DEEPEST {
            let below: Vec<PathBuf> = dirs
                .by_path
                .keys()
                .filter(|p| p.starts_with(path))
                .cloned()
                .collect();
            for p in below {
                gone.extend(dirs.by_path.remove(&p));
            }
        }
        for wd in gone {
            dirs.by_wd.remove(&wd);
            // Already gone with its directory, usually.
            let _ = inotify::remove_watch(&self.inotify, wd);
        }
    }

    /// How deep `path` is below the root (the root: 0); `None` outside it.
    fn depth(&self, path: &Path) -> Option<usize> {
        path.strip_prefix(&self.root)
            .ok()
            .map(|rel| rel.components().count())
    }
}

/// `/proc/self/fd/<n>` for `dir`: a path the kernel resolves to that very
/// directory, whatever was renamed or swapped since it was opened; `None`
/// where `/proc` is not mounted.
fn proc_fd_path(dir: BorrowedFd<'_>) -> Option<String> {
    static HAS_PROC: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    HAS_PROC
        .get_or_init(|| Path::new("/proc/self/fd").is_dir())
        .then(|| format!("/proc/self/fd/{}", dir.as_raw_fd()))
}

impl Watch {
    /// Watches `root` (`manifests/`) and its directories down to the model
    /// level, and hands each event to `handler` on a thread of its own.
    ///
    /// # Errors
    ///
    /// inotify cannot be set up, the root cannot be watched, or the
    /// system's limit on watches is reached (`MaxFilesWatch`).
    pub(super) fn start<F>(root: &Path, handler: F) -> notify::Result<Watch>
    where
        F: FnMut(notify::Result<Event>) + Send + 'static,
    {
        let fd = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)
            .map_err(|e| notify::Error::io(e.into()))?;
        let cannot_watch = |e| notify::Error::io_watch(e).add_path(root.to_path_buf());
        // `root` is a store's `manifests/`, opened from the store's root.
        let store = match root.parent() {
            Some(store) if root.file_name() == Some(OsStr::new(crate::name::MANIFESTS_DIR)) => {
                let store = if store.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    store
                };
                beneath::Root::open(store).map_err(cannot_watch)?
            }
            _ => return Err(cannot_watch(std::io::ErrorKind::InvalidInput.into())),
        };
        let shared = Arc::new(Shared {
            inotify: fd,
            root: root.to_path_buf(),
            store,
            dirs: Mutex::default(),
            renames: Mutex::default(),
        });
        let root_dir = match shared.store.dir(&[]).map_err(cannot_watch)? {
            beneath::Lookup::Found(dir) => dir,
            beneath::Lookup::Absent => {
                return Err(cannot_watch(std::io::ErrorKind::NotFound.into()))
            }
            beneath::Lookup::Foreign(foreign) => {
                return Err(cannot_watch(std::io::Error::other(foreign.to_string())))
            }
        };
        match shared.add_tree(root, 0, root_dir.as_fd()) {
            Ok(()) => {}
            Err(AddError::Limit) => {
                return Err(notify::Error::new(notify::ErrorKind::MaxFilesWatch)
                    .add_path(root.to_path_buf()))
            }
            Err(AddError::Other(e)) => {
                return Err(notify::Error::io_watch(e).add_path(root.to_path_buf()))
            }
        }
        let stop = Arc::new(
            rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC)
                .map_err(|e| notify::Error::io(e.into()))?,
        );
        let thread = std::thread::Builder::new()
            .name("aliasd-watch".into())
            .spawn({
                let shared = shared.clone();
                let stop = stop.clone();
                move || run(&shared, &stop, handler)
            })
            .map_err(notify::Error::io)?;
        Ok(Watch {
            shared,
            stop,
            thread: Some(thread),
        })
    }

    /// What the materializer tells the watch of its own writes: each
    /// directory it has just made, before it writes anything into it, is
    /// watched from then on, so the watcher neither needs the event of its
    /// creation nor a listing of it; each alias file's temp name before it
    /// is made (see [`OwnRenames`]). Holds the watch weakly: once it stops,
    /// nothing is watched and `dir_made` says `false`.
    pub(super) fn own_writes(&self) -> crate::materializer::OwnWritesHook {
        Arc::new(Hooks(Arc::downgrade(&self.shared)))
    }
}

/// The materializer's side of the watch (see [`Watch::own_writes`]).
struct Hooks(Weak<Shared>);

impl OwnWrites for Hooks {
    fn dir_made(&self, dir: &Path, handle: BorrowedFd<'_>) -> bool {
        let Some(shared) = self.0.upgrade() else {
            return false;
        };
        match shared.depth(dir) {
            Some(depth @ 1..=DEEPEST) => shared.add(dir, depth, handle).is_ok(),
            _ => false,
        }
    }

    fn will_rename(&self, temp: &str, to: &str) {
        if let Some(shared) = self.0.upgrade() {
            let mut renames = shared.renames.lock().unwrap_or_else(|e| e.into_inner());
            renames.announce(temp, to);
        }
    }

    fn forget_rename(&self, temp: &str) {
        if let Some(shared) = self.0.upgrade() {
            let mut renames = shared.renames.lock().unwrap_or_else(|e| e.into_inner());
            renames.forget(temp);
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = rustix::io::write(&*self.stop, &1u64.to_ne_bytes());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The thread: waits for inotify (or the stop), reads every event ready,
/// and hands each on.
fn run<F>(shared: &Shared, stop: &OwnedFd, mut handler: F)
where
    F: FnMut(notify::Result<Event>),
{
    use rustix::event::{PollFd, PollFlags};
    let mut buf = vec![std::mem::MaybeUninit::<u8>::uninit(); 64 * 1024];
    let gather = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: GATHER.as_nanos() as _,
    };
    let mut pass = Pass::default();
    loop {
        let mut fds = [
            PollFd::new(&shared.inotify, PollFlags::IN),
            PollFd::new(stop, PollFlags::IN),
        ];
        // New directories are waiting to be claimed: wake up after a gather
        // at the latest, to settle them even if nothing else happens.
        let wait = (!pass.unclaimed.is_empty()).then_some(&gather);
        let ready = match rustix::event::poll(&mut fds, wait) {
            Ok(ready) => ready,
            Err(Errno::INTR) => 1,
            Err(e) => {
                handler(Err(notify::Error::io(e.into())));
                return;
            }
        };
        if !fds[1].revents().is_empty() {
            return;
        }
        if ready == 0 {
            settle_unclaimed(shared, &mut pass.unclaimed, &mut handler);
            continue;
        }
        // Let a burst gather before reading it: a create is a directory and
        // a file, several events a moment apart, and a wake-up per event
        // would cost more than the events; the watcher waits far longer
        // than this for the store to be quiet anyway ([`super::QUIET`]).
        let mut stop_only = [PollFd::new(stop, PollFlags::IN)];
        if matches!(rustix::event::poll(&mut stop_only, Some(&gather)), Ok(n) if n > 0) {
            return;
        }
        // A gather at least has passed since these were read.
        settle_unclaimed(shared, &mut pass.unclaimed, &mut handler);
        let mut reader = inotify::Reader::new(&shared.inotify, &mut buf[..]);
        pass.last_file = None;
        loop {
            let event = match reader.next() {
                Ok(event) => event,
                Err(Errno::AGAIN | Errno::INTR) => break,
                Err(e) => {
                    handler(Err(notify::Error::io(e.into())));
                    break;
                }
            };
            let name = event.file_name().map(|name| name.to_bytes());
            on_event(
                shared,
                (event.wd(), event.events(), event.cookie()),
                name,
                &mut pass,
                &mut handler,
            );
        }
    }
}

/// What the thread carries from one event to the next.
#[derive(Default)]
struct Pass {
    /// The file the previous event of this wake-up was about, if it was a
    /// file in a model directory: a write is three events or more (create,
    /// modify, close) that all mean "look at this name", and the watcher
    /// would only merge them again.
    last_file: Option<PathBuf>,
    /// New directories (and their depths) not watched yet when their
    /// creation was read. The materializer watches a directory it makes
    /// right after its `mkdirat` ([`Watch::own_writes`]), and that event can
    /// be read in between: such a creation is settled a gather later
    /// ([`settle_unclaimed`]), so that aliasd's own directory is not listed.
    unclaimed: Vec<(PathBuf, usize)>,
}

/// The directories whose creation was read while they were not watched:
/// those watched since (aliasd made them) are left out; the others are
/// someone else's, reported, and watched with what is below them.
fn settle_unclaimed<F>(shared: &Shared, unclaimed: &mut Vec<(PathBuf, usize)>, handler: &mut F)
where
    F: FnMut(notify::Result<Event>),
{
    for (path, depth) in unclaimed.drain(..) {
        if shared.dirs_has(&path) {
            continue;
        }
        handler(Ok(
            Event::new(EventKind::Create(CreateKind::Folder)).add_path(path.clone())
        ));
        watch_new_dir(shared, path, depth, handler);
    }
}

/// Watches a directory that appeared (and what is below it); the system's
/// limit on watches is reported to `handler`.
fn watch_new_dir<F>(shared: &Shared, path: PathBuf, depth: usize, handler: &mut F)
where
    F: FnMut(notify::Result<Event>),
{
    // Gone, or reached through a symlink (swapped in since its event): not
    // watched, as a symlink made there is not.
    let Some(dir) = shared.open(&path) else {
        return;
    };
    match shared.add_tree(&path, depth, dir.as_fd()) {
        Ok(()) | Err(AddError::Other(_)) => {}
        Err(AddError::Limit) => handler(Err(
            notify::Error::new(notify::ErrorKind::MaxFilesWatch).add_path(path)
        )),
    }
}

/// One inotify event: the watches it changes, then the `notify` events it
/// is (as `notify`'s own backend would report them). An event about the
/// same file in a model directory as the one before it (`pass.last_file`)
/// is left out: it names nothing new. A directory made where directories
/// are watched, and not watched yet, waits in `pass.unclaimed`.
fn on_event<F>(
    shared: &Shared,
    (wd, mask, cookie): (i32, ReadFlags, u32),
    name: Option<&[u8]>,
    pass: &mut Pass,
    handler: &mut F,
) where
    F: FnMut(notify::Result<Event>),
{
    if mask.contains(ReadFlags::QUEUE_OVERFLOW) {
        // Events were lost: so may be those of announced writes.
        *shared.renames.lock().unwrap_or_else(|e| e.into_inner()) = OwnRenames::default();
        handler(Ok(Event::new(EventKind::Other).set_flag(Flag::Rescan)));
        return;
    }
    if let Some(name) = name {
        let mut renames = shared.renames.lock().unwrap_or_else(|e| e.into_inner());
        if renames.is_own(wd, mask, cookie, name) {
            return;
        }
    }
    let is_dir = mask.contains(ReadFlags::ISDIR);
    let dir = {
        let mut dirs = shared.dirs.lock().unwrap_or_else(|e| e.into_inner());
        if mask.contains(ReadFlags::IGNORED) {
            // The watch is gone (its directory removed, or unwatched), and
            // with it any close of aliasd's still expected there.
            if let Some((path, _)) = dirs.by_wd.remove(&wd) {
                if dirs.by_path.get(&path) == Some(&wd) {
                    dirs.by_path.remove(&path);
                }
            }
            drop(dirs);
            let mut renames = shared.renames.lock().unwrap_or_else(|e| e.into_inner());
            renames.closes.remove(&wd);
            return;
        }
        match dirs.by_wd.get(&wd) {
            // A hidden file in a model directory (aliasd's temp files) is
            // no manifest: the watcher would drop it (`classify_path`).
            Some((_, DEEPEST)) if !is_dir && name.is_some_and(|name| name.starts_with(b".")) => {
                return
            }
            Some((dir, depth)) => (dir.clone(), *depth),
            None => return,
        }
    };
    // The depth comes with the watch: no event's path is parsed for it.
    let (path, depth) = match name {
        Some(name) => (dir.0.join(OsStr::from_bytes(name)), dir.1 + 1),
        None => dir,
    };
    let last_file = &mut pass.last_file;
    if !is_dir && depth == DEEPEST + 1 {
        if last_file.as_ref() == Some(&path) {
            return;
        }
        *last_file = Some(path.clone());
    } else {
        *last_file = None;
    }
    if is_dir && depth <= DEEPEST && mask.contains(ReadFlags::CREATE) && !shared.dirs_has(&path) {
        pass.unclaimed.push((path, depth));
        return;
    }
    let mut emit = |kind: EventKind| handler(Ok(Event::new(kind).add_path(path.clone())));
    if mask.contains(ReadFlags::MOVED_FROM) {
        if is_dir {
            shared.remove_tree(&path, depth);
        }
        emit(EventKind::Modify(ModifyKind::Name(RenameMode::From)));
    }
    if mask.contains(ReadFlags::MOVED_TO) {
        emit(EventKind::Modify(ModifyKind::Name(RenameMode::To)));
    }
    if mask.contains(ReadFlags::MOVE_SELF) {
        emit(EventKind::Modify(ModifyKind::Name(RenameMode::From)));
    }
    if mask.contains(ReadFlags::CREATE) {
        let kind = if is_dir {
            CreateKind::Folder
        } else {
            CreateKind::File
        };
        // A directory made here is either aliasd's, watched before anything
        // was written into it (its creation says nothing the watch does not
        // report), or unclaimed (above); one deeper is reported.
        if !(is_dir && depth <= DEEPEST) {
            emit(EventKind::Create(kind));
        }
    }
    if mask.contains(ReadFlags::DELETE) {
        if is_dir {
            shared.remove_tree(&path, depth);
        }
        let kind = if is_dir {
            RemoveKind::Folder
        } else {
            RemoveKind::File
        };
        emit(EventKind::Remove(kind));
    }
    if mask.contains(ReadFlags::DELETE_SELF) {
        emit(EventKind::Remove(RemoveKind::Folder));
    }
    if mask.contains(ReadFlags::MODIFY) {
        emit(EventKind::Modify(ModifyKind::Data(DataChange::Any)));
    }
    if mask.contains(ReadFlags::CLOSE_WRITE) {
        emit(EventKind::Access(AccessKind::Close(AccessMode::Write)));
    }
    if mask.contains(ReadFlags::ATTRIB) {
        emit(EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any)));
    }
    // A directory moved in is watched once its event is out; the watcher
    // lists it for what was written before the watch.
    if is_dir && depth <= DEEPEST && mask.contains(ReadFlags::MOVED_TO) && !shared.dirs_has(&path) {
        watch_new_dir(shared, path, depth, handler);
    }
}

impl Shared {
    /// Whether `path` is watched.
    fn dirs_has(&self, path: &Path) -> bool {
        let dirs = self.dirs.lock().unwrap_or_else(|e| e.into_inner());
        dirs.by_path.contains_key(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    /// `path` opened as a directory, as the materializer holds the
    /// directories it makes.
    fn opened(path: &Path) -> std::fs::File {
        std::fs::File::open(path).unwrap()
    }

    /// The paths and kinds `watch` reports until `until` is among them.
    fn events_until(
        events: &mpsc::Receiver<notify::Result<Event>>,
        until: &Path,
    ) -> Vec<(PathBuf, EventKind)> {
        let mut seen = Vec::new();
        loop {
            let event = events
                .recv_timeout(Duration::from_secs(10))
                .expect("an event within 10 s")
                .expect("no error");
            let done = event.paths.iter().any(|p| p == until);
            seen.extend(event.paths.into_iter().map(|p| (p, event.kind)));
            if done {
                return seen;
            }
        }
    }

    #[test]
    fn new_directories_are_watched_and_those_aliasd_made_raise_no_event() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("manifests");
        std::fs::create_dir_all(root.join("h/ns")).unwrap();
        let (send, events) = mpsc::channel();
        let watch = Watch::start(&root, move |event| {
            let _ = send.send(event);
        })
        .unwrap();

        // Made by someone else: its creation is reported, then what is
        // written into it once it is watched.
        let theirs = root.join("h/ns/theirs");
        std::fs::create_dir(&theirs).unwrap();
        let seen = events_until(&events, &theirs);
        assert!(seen.contains(&(theirs.clone(), EventKind::Create(CreateKind::Folder))));
        // Its watch is added once the event is out: wait for it.
        let wd_of = |path: &Path| {
            let dirs = watch.shared.dirs.lock().unwrap();
            dirs.by_path.get(path).copied()
        };
        for _ in 0..1000 {
            if wd_of(&theirs).is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        std::fs::write(theirs.join("latest"), b"{}").unwrap();
        let seen = events_until(&events, &theirs.join("latest"));
        assert!(seen.iter().all(|(p, _)| p != &root.join("h/ns")));

        // Made by aliasd, watched before anything is written into it: what
        // is written is reported.
        let ours = root.join("h/ns/ours");
        std::fs::create_dir(&ours).unwrap();
        assert!(watch.own_writes().dir_made(&ours, opened(&ours).as_fd()));
        assert!(wd_of(&ours).is_some());
        std::fs::write(ours.join("latest"), b"{}").unwrap();
        events_until(&events, &ours.join("latest"));
        // Its creation, once read, is not handed on (it would only have the
        // watcher list it); someone else's is.
        let ns_wd = wd_of(&root.join("h/ns")).unwrap();
        let create_dir = ReadFlags::CREATE | ReadFlags::ISDIR;
        let mut handed = Vec::new();
        let mut pass = Pass::default();
        let mut collect = |event: notify::Result<Event>| handed.push(event.unwrap().paths);
        on_event(
            &watch.shared,
            (ns_wd, create_dir, 0),
            Some(b"ours"),
            &mut pass,
            &mut collect,
        );
        // One not watched yet waits to be claimed (the materializer may be
        // about to watch it) and is reported only if nobody has.
        on_event(
            &watch.shared,
            (ns_wd, create_dir, 0),
            Some(b"new"),
            &mut pass,
            &mut collect,
        );
        assert_eq!(pass.unclaimed, [(root.join("h/ns/new"), 3)]);
        settle_unclaimed(&watch.shared, &mut pass.unclaimed, &mut collect);
        assert_eq!(handed, [vec![root.join("h/ns/new")]]);
        assert!(pass.unclaimed.is_empty());
        // One the materializer watched in between is not reported.
        let claimed = root.join("h/ns/claimed");
        std::fs::create_dir(&claimed).unwrap();
        let mut handed = Vec::new();
        let mut collect = |event: notify::Result<Event>| handed.push(event.unwrap().paths);
        on_event(
            &watch.shared,
            (ns_wd, create_dir, 0),
            Some(b"claimed"),
            &mut pass,
            &mut collect,
        );
        assert!(watch
            .own_writes()
            .dir_made(&claimed, opened(&claimed).as_fd()));
        settle_unclaimed(&watch.shared, &mut pass.unclaimed, &mut collect);
        assert!(handed.is_empty(), "{handed:?}");
        // A file's events one after the other are handed on once.
        let ours_wd = wd_of(&ours).unwrap();
        let mut handed = Vec::new();
        let mut collect = |event: notify::Result<Event>| handed.push(event.unwrap().paths);
        for mask in [ReadFlags::CREATE, ReadFlags::MODIFY, ReadFlags::CLOSE_WRITE] {
            on_event(
                &watch.shared,
                (ours_wd, mask, 0),
                Some(b"v2"),
                &mut pass,
                &mut collect,
            );
        }
        on_event(
            &watch.shared,
            (ours_wd, ReadFlags::CREATE, 0),
            Some(b"v3"),
            &mut pass,
            &mut collect,
        );
        // A hidden file there (aliasd's temp files) is none of the
        // watcher's business: nothing is handed on for it.
        for mask in [ReadFlags::CREATE, ReadFlags::MODIFY, ReadFlags::MOVED_FROM] {
            on_event(
                &watch.shared,
                (ours_wd, mask, 0),
                Some(b".v3.aliasd-tmp"),
                &mut pass,
                &mut collect,
            );
        }
        assert_eq!(handed, [vec![ours.join("v2")], vec![ours.join("v3")]]);
        // Nothing is watched below the model directories.
        std::fs::create_dir(ours.join("deeper")).unwrap();
        let seen = events_until(&events, &ours.join("deeper"));
        assert!(seen.contains(&(ours.join("deeper"), EventKind::Create(CreateKind::Folder))));
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(wd_of(&ours.join("deeper")), None);

        // Outside the store, the hook watches nothing.
        assert!(!watch
            .own_writes()
            .dir_made(dir.path(), opened(dir.path()).as_fd()));
        drop(watch);
    }

    /// `is_own` for each of these events on watch `wd` (the cookie, the
    /// flags, the name), in order.
    fn own(renames: &mut OwnRenames, wd: i32, events: &[(u32, ReadFlags, &str)]) -> Vec<bool> {
        events
            .iter()
            .map(|&(cookie, mask, name)| renames.is_own(wd, mask, cookie, name.as_bytes()))
            .collect()
    }

    const TEMP: &str = ".latest.aliasd-0b7e";

    /// aliasd's own write, as its events come: made, (chowned,) written,
    /// moved away, moved in as `to`, closed.
    fn own_write(cookie: u32, to: &str) -> Vec<(u32, ReadFlags, &str)> {
        vec![
            (0, ReadFlags::CREATE, TEMP),
            (0, ReadFlags::ATTRIB, TEMP),
            (0, ReadFlags::MODIFY, TEMP),
            (cookie, ReadFlags::MOVED_FROM, TEMP),
            (cookie, ReadFlags::MOVED_TO, to),
            (0, ReadFlags::CLOSE_WRITE, to),
        ]
    }

    #[test]
    fn an_announced_write_drops_its_rename_and_close_and_nothing_else() {
        let mut renames = OwnRenames::default();
        renames.announce(TEMP, "latest");
        let seen = own(&mut renames, 7, &own_write(41, "latest"));
        assert_eq!(seen, [false, false, false, false, true, true]);
        // What anyone does to the file afterwards is theirs.
        let after = [
            (0, ReadFlags::MODIFY, "latest"),
            (0, ReadFlags::CLOSE_WRITE, "latest"),
        ];
        assert_eq!(own(&mut renames, 7, &after), [false, false]);
        // Nothing is left behind.
        assert!(renames.by_temp.is_empty() && renames.moving.is_empty());
        assert!(renames.closes.is_empty());

        // Not announced, forgotten, or announced for another name: handed on.
        let mut renames = OwnRenames::default();
        assert_eq!(
            own(&mut renames, 7, &own_write(42, "latest"))[4..],
            [false, false]
        );
        renames.announce(TEMP, "latest");
        renames.forget(TEMP);
        assert_eq!(
            own(&mut renames, 7, &own_write(43, "latest"))[4..],
            [false, false]
        );
        renames.announce(TEMP, "v2");
        assert_eq!(
            own(&mut renames, 7, &own_write(44, "latest"))[4..],
            [false, false]
        );
    }

    #[test]
    fn anything_else_done_to_the_temp_file_makes_its_rename_anyones() {
        let moved_onto = (9, ReadFlags::MOVED_TO, TEMP);
        let removed = (0, ReadFlags::DELETE, TEMP);
        let made_again = (0, ReadFlags::CREATE, TEMP);
        let closed = (0, ReadFlags::CLOSE_WRITE, TEMP);
        for (step, meddling) in [(1, moved_onto), (3, removed), (3, made_again), (2, closed)] {
            let mut renames = OwnRenames::default();
            renames.announce(TEMP, "latest");
            let mut events = own_write(50, "latest");
            events.insert(step, meddling);
            let seen = own(&mut renames, 7, &events);
            assert!(
                seen.iter().all(|own| !own),
                "{meddling:?} at {step}: {seen:?}"
            );
        }
        // Made in one directory, moved from another.
        let mut renames = OwnRenames::default();
        renames.announce(TEMP, "latest");
        assert_eq!(own(&mut renames, 7, &own_write(51, "latest")[..1]), [false]);
        assert_eq!(
            own(&mut renames, 8, &own_write(51, "latest")[1..]),
            [false; 5]
        );
        // Moved away and never in: the cookie of another move is not its.
        let mut renames = OwnRenames::default();
        renames.announce(TEMP, "latest");
        let mut events = own_write(52, "latest");
        events[4].0 = 53;
        assert!(own(&mut renames, 7, &events).iter().all(|own| !own));
    }

    #[test]
    fn announcements_whose_events_never_come_are_bounded() {
        let mut renames = OwnRenames::default();
        for i in 0..MAX_OWN_RENAMES + 10 {
            renames.announce(&format!(".latest.aliasd-{i}"), "latest");
        }
        assert!(renames.by_temp.len() <= MAX_OWN_RENAMES);
    }

    #[test]
    fn an_announced_write_raises_no_event_and_a_later_one_by_anyone_does() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("manifests");
        let model = root.join("h/ns/m");
        std::fs::create_dir_all(&model).unwrap();
        let (send, events) = mpsc::channel();
        let watch = Watch::start(&root, move |event| {
            let _ = send.send(event);
        })
        .unwrap();
        let hooks = watch.own_writes();
        // As the materializer writes (`beneath::write_in`).
        let temp = ".latest.aliasd-5f0c";
        hooks.will_rename(temp, "latest");
        let mut file = std::fs::File::create_new(model.join(temp)).unwrap();
        file.write_all(b"{}").unwrap();
        std::fs::rename(model.join(temp), model.join("latest")).unwrap();
        drop(file);
        std::fs::write(model.join("marker"), b"{}").unwrap();
        let seen = events_until(&events, &model.join("marker"));
        assert!(
            seen.iter().all(|(path, _)| path != &model.join("latest")),
            "{seen:?}"
        );
        // The same again, unannounced (as anyone else's write): reported.
        let mut file = std::fs::File::create_new(model.join(temp)).unwrap();
        file.write_all(b"{}").unwrap();
        std::fs::rename(model.join(temp), model.join("latest")).unwrap();
        drop(file);
        events_until(&events, &model.join("latest"));
    }

    #[test]
    fn no_watch_or_listing_goes_through_a_symlink_swapped_in_above() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("manifests");
        std::fs::create_dir_all(root.join("h/ns")).unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(outside.path().join("ns/m")).unwrap();
        let (send, events) = mpsc::channel();
        let watch = Watch::start(&root, move |event| {
            let _ = send.send(event);
        })
        .unwrap();
        let watched = |path: &Path| watch.shared.dirs_has(path);
        // A directory whose creation was read, swapped for a symlink to
        // outside the store before its watch was added: neither it nor
        // what is below it is watched (by its path, the kernel would have
        // followed the symlink to `outside/ns` and listed it).
        std::os::unix::fs::symlink(outside.path(), root.join("link")).unwrap();
        let mut reported = Vec::new();
        watch_new_dir(&watch.shared, root.join("link/ns"), 2, &mut |event| {
            reported.push(event)
        });
        watch_new_dir(&watch.shared, root.join("link"), 1, &mut |event| {
            reported.push(event)
        });
        assert!(reported.is_empty());
        assert!(!watched(&root.join("link/ns")) && !watched(&root.join("link")));
        assert!(!watched(&root.join("link/ns/m")));
        // A directory aliasd made, renamed away and replaced by a symlink
        // before the watch is added: the watch goes on the directory it made
        // (through its handle), never on where the symlink points.
        let made = root.join("h/ns/made");
        std::fs::create_dir(&made).unwrap();
        let handle = opened(&made);
        std::fs::rename(&made, root.join("h/ns/moved")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("ns/m"), &made).unwrap();
        // Once the watch thread has read those (it watches `moved` as
        // someone else's directory), the hook's watch is the same one.
        std::fs::write(root.join("h/ns/marker"), b"").unwrap();
        events_until(&events, &root.join("h/ns/marker"));
        assert!(watch.own_writes().dir_made(&made, handle.as_fd()));
        std::fs::write(outside.path().join("ns/m/latest"), b"{}").unwrap();
        std::fs::write(root.join("h/ns/moved/latest"), b"{}").unwrap();
        // The write into the directory it made is reported (under the name
        // it was made with, until the watcher sees the move's events); the
        // write outside never is.
        let seen = events_until(&events, &made.join("latest"));
        let outside_reported = seen.iter().any(|(path, _)| !path.starts_with(&root));
        assert!(!outside_reported, "{seen:?}");
        drop(watch);
    }
}
