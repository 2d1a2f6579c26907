//! File operations beneath the store's root directory, never through a
//! symbolic link (SPEC §1, "Confinement").
//!
//! The store belongs to another user when aliasd runs as root beside
//! Ollama's service, so every name in it is under that user's control and
//! any check on a path races with them. Nothing here therefore resolves a
//! path: the root is opened once, and every operation walks from that handle
//! one component at a time with `O_NOFOLLOW | O_DIRECTORY`, so that a symlink
//! or a file anywhere on the way stops the walk (and is reported as
//! [`Foreign`]) instead of being followed. Files are created with
//! `O_CREAT | O_EXCL | O_NOFOLLOW`, renamed and removed with `renameat` and
//! `unlinkat` on the directory handle, and given to their owner with `fchown`
//! on the open handle. Reads take regular files only, opened without
//! following a symlink, and at most [`MAX_MANIFEST_BYTES`].
//!
//! Architecture invariant: this is the only code that creates, writes,
//! renames or removes anything in the store.

use std::fmt;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::name::{ModelName, MANIFESTS_DIR};

/// The largest manifest aliasd reads. Ollama's are a few KiB; anything
/// larger is not a manifest aliasd will copy (and reading it whole would
/// let whoever owns the store make aliasd allocate without bound).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// What a walk beneath the root found at a path.
#[derive(Debug)]
pub enum Lookup<T> {
    /// Nothing there (the file, or a directory on its way, is missing).
    Absent,
    /// What was asked for.
    Found(T),
    /// Something aliasd will not go through or read: see [`Foreign`].
    Foreign(Foreign),
}

/// A path that is not aliasd's to use: a symlink or a non-directory on the
/// way, or at the end something that is not a regular file of a sane size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Foreign {
    /// The offending path, relative to the store root.
    pub path: PathBuf,
    /// What is wrong with it.
    pub why: Why,
}

/// Why a path is [`Foreign`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// It is a symbolic link.
    Symlink,
    /// A directory was expected and it is something else.
    NotADirectory,
    /// A manifest was expected and it is not a regular file.
    NotARegularFile,
    /// A regular file over [`MAX_MANIFEST_BYTES`], of this many bytes.
    TooLarge(u64),
}

impl fmt::Display for Foreign {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path.display();
        match self.why {
            Why::Symlink => write!(f, "{path} is a symbolic link"),
            Why::NotADirectory => write!(f, "{path} is not a directory"),
            Why::NotARegularFile => write!(f, "{path} is not a regular file"),
            Why::TooLarge(len) => write!(
                f,
                "{path} is {len} bytes, over the {} MiB a manifest may have",
                MAX_MANIFEST_BYTES >> 20
            ),
        }
    }
}

/// A file read beneath the root: its bytes and the metadata of the handle
/// they were read from.
#[derive(Debug)]
pub struct ReadFile {
    /// The bytes, at most [`MAX_MANIFEST_BYTES`].
    pub bytes: Vec<u8>,
    /// `fstat` of the open file.
    pub metadata: std::fs::Metadata,
}

/// Which file, in which version: device, inode, size, and the modification
/// and change times, as an `fstat` gives them. aliasd keeps it for each alias
/// file it writes (taken from the handle it wrote through, after the rename),
/// so that the watcher can tell that file coming back from anyone else's
/// with one look at its path ([`Root::file_id`]) instead of a read and a
/// digest: a write, a rename over it, a `chmod` or a new file at the path
/// each changes one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    modified: (i64, i64),
    changed: (i64, i64),
}

impl FileId {
    #[allow(clippy::unnecessary_cast)] // The field types differ by platform.
    fn of(stat: &rustix::fs::Stat) -> FileId {
        FileId {
            dev: stat.st_dev as u64,
            ino: stat.st_ino as u64,
            size: stat.st_size as u64,
            modified: (stat.st_mtime as i64, stat.st_mtime_nsec as i64),
            changed: (stat.st_ctime as i64, stat.st_ctime_nsec as i64),
        }
    }
}

/// What [`Root::write_manifest`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Whether it had to make the file's directory.
    pub made: bool,
    /// The file it wrote, as it was once renamed into place.
    pub id: FileId,
}

/// Where a walk toward an alias file's directory stopped because the rest is
/// missing: the deepest directory it opened, and how many of the alias's
/// directory parts (host, namespace, model) lie above it, 0 for
/// `manifests/` itself. The part at `depth`, if any, was found missing.
#[derive(Debug)]
pub struct Reached {
    dir: OwnedFd,
    depth: usize,
}

impl<T> Lookup<T> {
    /// The same lookup with nothing found in it: `Found` is not expected.
    fn map_found<U>(self) -> Lookup<U> {
        match self {
            Lookup::Foreign(foreign) => Lookup::Foreign(foreign),
            Lookup::Absent | Lookup::Found(_) => Lookup::Absent,
        }
    }
}

/// The store's root directory, opened once; every operation starts here.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
}

impl Root {
    /// Opens the root at `path`. The operator chose this path, so it is
    /// resolved as given (symlinks included); nothing below it is.
    ///
    /// # Errors
    ///
    /// The directory cannot be opened.
    pub fn open(path: &Path) -> io::Result<Root> {
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Root { fd })
    }

    /// Opens the directory `parts` below `manifests/` (none: `manifests/`
    /// itself) without following a symlink anywhere.
    ///
    /// # Errors
    ///
    /// I/O errors other than "missing" and "foreign".
    pub fn dir(&self, parts: &[&str]) -> io::Result<Lookup<OwnedFd>> {
        let mut rel = PathBuf::from(MANIFESTS_DIR);
        let mut dir = match open_dir(self.fd.as_fd(), MANIFESTS_DIR, &rel)? {
            Lookup::Found(dir) => dir,
            other => return Ok(other),
        };
        for part in parts {
            rel.push(part);
            dir = match open_dir(dir.as_fd(), part, &rel)? {
                Lookup::Found(dir) => dir,
                other => return Ok(other),
            };
        }
        Ok(Lookup::Found(dir))
    }

    /// [`Root::dir`], making each missing directory (given to the owner of
    /// the directory it is made in, see [`give_to_owner_of`]). Returns the
    /// directory and whether the last one was made. `made` is called with
    /// the parts of each directory made, as soon as it is open (before
    /// anything is made in it).
    ///
    /// # Errors
    ///
    /// I/O errors other than "foreign", e.g. a full disk.
    pub fn make_dir(
        &self,
        parts: &[&str],
        made_dir: &mut dyn FnMut(&[&str], BorrowedFd<'_>),
    ) -> io::Result<Lookup<(OwnedFd, bool)>> {
        self.make_dir_from(parts, None, made_dir)
    }

    /// [`Root::make_dir`], starting from where an earlier walk toward the
    /// same directory stopped (`from`), if given, instead of from the root.
    fn make_dir_from(
        &self,
        parts: &[&str],
        from: Option<Reached>,
        made_dir: &mut dyn FnMut(&[&str], BorrowedFd<'_>),
    ) -> io::Result<Lookup<(OwnedFd, bool)>> {
        let mut rel = PathBuf::from(MANIFESTS_DIR);
        // The part the earlier walk found missing is made without looking
        // for it again (`mkdirat` says if someone made it since).
        let mut known_missing = false;
        let (mut dir, start) = match from {
            Some(reached) if reached.depth <= parts.len() => {
                rel.extend(&parts[..reached.depth]);
                known_missing = true;
                (reached.dir, reached.depth)
            }
            _ => match open_dir(self.fd.as_fd(), MANIFESTS_DIR, &rel)? {
                Lookup::Found(dir) => (dir, 0),
                Lookup::Foreign(foreign) => return Ok(Lookup::Foreign(foreign)),
                Lookup::Absent => return Err(io::Error::from(io::ErrorKind::NotFound)),
            },
        };
        let mut made = false;
        for (depth, part) in parts.iter().enumerate().skip(start) {
            rel.push(part);
            made = false;
            let looked = if std::mem::take(&mut known_missing) {
                Lookup::Absent
            } else {
                open_dir(dir.as_fd(), part, &rel)?
            };
            let next = match looked {
                Lookup::Found(next) => next,
                Lookup::Foreign(foreign) => return Ok(Lookup::Foreign(foreign)),
                Lookup::Absent => {
                    match rustix::fs::mkdirat(dir.as_fd(), *part, Mode::from_raw_mode(0o755)) {
                        Ok(()) => made = true,
                        // Made by someone else meanwhile: open theirs.
                        Err(Errno::EXIST) => {}
                        Err(e) => return Err(e.into()),
                    }
                    // What is opened is checked again: it may have been swapped
                    // for a symlink since the mkdir.
                    match open_dir(dir.as_fd(), part, &rel)? {
                        Lookup::Found(next) => {
                            if made {
                                give_to_owner_of(next.as_fd(), dir.as_fd());
                                made_dir(&parts[..=depth], next.as_fd());
                            }
                            next
                        }
                        Lookup::Foreign(foreign) => return Ok(Lookup::Foreign(foreign)),
                        Lookup::Absent => return Err(io::Error::from(io::ErrorKind::NotFound)),
                    }
                }
            };
            dir = next;
        }
        Ok(Lookup::Found((dir, made)))
    }

    /// Reads `name`'s manifest: a regular file of at most
    /// [`MAX_MANIFEST_BYTES`], reached without following a symlink.
    ///
    /// # Errors
    ///
    /// I/O errors other than "missing" and "foreign".
    pub fn read_manifest(&self, name: &ModelName) -> io::Result<Lookup<ReadFile>> {
        Ok(self.read_manifest_reaching(name)?.0)
    }

    /// [`Root::read_manifest`]; when the file or a directory on its way is
    /// missing, also where the walk stopped, for a
    /// [`Root::write_manifest`] right after to go on from there rather than
    /// walk from the root again (a create reads, finds nothing, writes).
    ///
    /// # Errors
    ///
    /// As [`Root::read_manifest`].
    pub fn read_manifest_reaching(
        &self,
        name: &ModelName,
    ) -> io::Result<(Lookup<ReadFile>, Option<Reached>)> {
        let parts = dir_parts(name);
        let mut rel = PathBuf::from(MANIFESTS_DIR);
        // The alias's namespace directory in one `openat2`, when it is
        // there with no symlink on the way; otherwise (or where `openat2`
        // is missing) the walk one component at a time tells what is there.
        let (mut dir, start) = match self.namespace_dir(&parts) {
            Some(dir) => {
                rel.extend(&parts[..NAMESPACE_DEPTH]);
                (dir, NAMESPACE_DEPTH)
            }
            None => match open_dir(self.fd.as_fd(), MANIFESTS_DIR, &rel)? {
                Lookup::Found(dir) => (dir, 0),
                other => return Ok((other.map_found(), None)),
            },
        };
        for (depth, part) in parts.iter().enumerate().skip(start) {
            rel.push(part);
            dir = match open_dir(dir.as_fd(), part, &rel)? {
                Lookup::Found(next) => next,
                Lookup::Absent => return Ok((Lookup::Absent, Some(Reached { dir, depth }))),
                Lookup::Foreign(foreign) => return Ok((Lookup::Foreign(foreign), None)),
            };
        }
        match read_file(dir.as_fd(), name.tag(), &rel_path(name))? {
            Lookup::Absent => Ok((
                Lookup::Absent,
                Some(Reached {
                    dir,
                    depth: parts.len(),
                }),
            )),
            other => Ok((other, None)),
        }
    }

    /// Opens `manifests/<host>/<namespace>` of an alias's directory `parts`
    /// with one `openat2` (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, the last
    /// component `O_NOFOLLOW | O_DIRECTORY` as in [`open_dir`]) instead of
    /// three `openat`s and two `close`s: the kernel refuses a symlink
    /// anywhere on the way as the walk does. `None` for any error (missing,
    /// a symlink or a file on the way, `openat2` unknown to the kernel): the
    /// caller then walks one component at a time, which says what is there.
    /// Nothing is kept: each call resolves the path again, so a directory
    /// swapped for a symlink since the last call is never gone through.
    fn namespace_dir(&self, parts: &[&str; 3]) -> Option<OwnedFd> {
        let mut path = PathBuf::from(MANIFESTS_DIR);
        path.extend(&parts[..NAMESPACE_DEPTH]);
        self.open_beneath(&path, OFlags::RDONLY | OFlags::DIRECTORY)
    }

    /// `openat2` of `path` below the root with `flags` (and `O_NOFOLLOW |
    /// O_CLOEXEC`), refusing a symlink anywhere on the way and any path out
    /// of the root (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`); `None` for any
    /// error, and where `openat2` is missing.
    fn open_beneath(&self, path: &Path, flags: OFlags) -> Option<OwnedFd> {
        #[cfg(target_os = "linux")]
        {
            use rustix::fs::ResolveFlags;
            rustix::fs::openat2(
                self.fd.as_fd(),
                path,
                flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
            )
            .ok()
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = (path, flags);
            None
        }
    }

    /// The [`FileId`] of `name`'s manifest, if it is a regular file reached
    /// without a symlink anywhere on its path (`openat2` with
    /// `RESOLVE_NO_SYMLINKS`, an `O_PATH` handle that reads nothing, then
    /// `fstat`); `None` otherwise, for any error, and where `openat2` is
    /// missing (then the caller reads the file as before).
    pub fn file_id(&self, name: &ModelName) -> Option<FileId> {
        #[cfg(target_os = "linux")]
        let flags = OFlags::PATH;
        // Never opened there (`open_beneath` is Linux's `openat2`).
        #[cfg(not(target_os = "linux"))]
        let flags = OFlags::RDONLY;
        let fd = self.open_beneath(&rel_path(name), flags)?;
        let stat = rustix::fs::fstat(&fd).ok()?;
        (FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile).then(|| FileId::of(&stat))
    }

    /// Writes `bytes` as `name`'s manifest through a temp file named
    /// `temp_name` in the same directory and a rename, so readers see the
    /// old file or the new one, never a part. Returns whether it had to
    /// make the file's directory and the written file's [`FileId`];
    /// `made_dir` is called as in [`Root::make_dir`]. A foreign path is
    /// left alone.
    ///
    /// Even into a directory made just now the file goes through a temp
    /// file: a write that fails there (a full disk) would otherwise show on
    /// the alias's own name, created and removed, which the watcher takes
    /// for someone else's deletion.
    ///
    /// The file is not fsync'd: the journal is the durable record, and a
    /// torn alias file found at start-up is recognized and rewritten.
    ///
    /// # Errors
    ///
    /// I/O errors (a full disk, permission denied); the temp file is
    /// removed again.
    pub fn write_manifest(
        &self,
        name: &ModelName,
        bytes: &[u8],
        temp_name: &str,
        made_dir: &mut dyn FnMut(&[&str], BorrowedFd<'_>),
    ) -> io::Result<Lookup<Written>> {
        self.write_manifest_from(name, bytes, temp_name, None, made_dir)
    }

    /// [`Root::write_manifest`], going on from where a
    /// [`Root::read_manifest_reaching`] of the same name stopped, if given.
    /// Every directory still missing is made and opened as there; a
    /// directory already open is used as it is (as within one walk).
    ///
    /// # Errors
    ///
    /// As [`Root::write_manifest`].
    pub fn write_manifest_from(
        &self,
        name: &ModelName,
        bytes: &[u8],
        temp_name: &str,
        from: Option<Reached>,
        made_dir: &mut dyn FnMut(&[&str], BorrowedFd<'_>),
    ) -> io::Result<Lookup<Written>> {
        let (dir, made) = match self.make_dir_from(&dir_parts(name), from, made_dir)? {
            Lookup::Found(found) => found,
            Lookup::Absent => return Ok(Lookup::Absent),
            Lookup::Foreign(foreign) => return Ok(Lookup::Foreign(foreign)),
        };
        let id = write_in(&dir, name, bytes, temp_name)?;
        Ok(Lookup::Found(Written { made, id }))
    }

    /// Writes `name`'s file into its model directory made now, without a
    /// look first: for an alias just created, whose directory is almost
    /// always missing. The walk ([`Root::make_dir_from`]) goes on from the
    /// namespace directory, reached with one `openat2`, straight to the
    /// `mkdirat` of the model directory. `Ok(None)` when that directory was
    /// there already (or the namespace could not be reached that way:
    /// missing, or a symlink on the way): nothing is written, and the
    /// caller reads the path first as for any other write
    /// ([`Root::read_manifest_reaching`]), which tells what is there.
    ///
    /// # Errors
    ///
    /// As [`Root::write_manifest`].
    pub fn write_new_manifest(
        &self,
        name: &ModelName,
        bytes: &[u8],
        temp_name: &str,
        made_dir: &mut dyn FnMut(&[&str], BorrowedFd<'_>),
    ) -> io::Result<Option<Lookup<Written>>> {
        let parts = dir_parts(name);
        let Some(namespace) = self.namespace_dir(&parts) else {
            return Ok(None);
        };
        let from = Reached {
            dir: namespace,
            depth: NAMESPACE_DEPTH,
        };
        let dir = match self.make_dir_from(&parts, Some(from), made_dir)? {
            Lookup::Found((dir, true)) => dir,
            Lookup::Found((_, false)) | Lookup::Absent => return Ok(None),
            Lookup::Foreign(foreign) => return Ok(Some(Lookup::Foreign(foreign))),
        };
        let id = write_in(&dir, name, bytes, temp_name)?;
        Ok(Some(Lookup::Found(Written { made: true, id })))
    }

    /// Removes the directory entry at `name`'s path (the caller has read it
    /// and knows it is aliasd's own), then the directories above it that are
    /// now empty, up to (not including) `manifests/`. `unlinkat` never
    /// follows a symlink, and the walk to the entry follows none either.
    ///
    /// # Errors
    ///
    /// I/O errors other than "missing" and "foreign".
    pub fn remove_manifest(&self, name: &ModelName) -> io::Result<Lookup<()>> {
        let parts = dir_parts(name);
        let dir = match self.dir(&parts)? {
            Lookup::Found(dir) => dir,
            Lookup::Absent => return Ok(Lookup::Absent),
            Lookup::Foreign(foreign) => return Ok(Lookup::Foreign(foreign)),
        };
        match rustix::fs::unlinkat(dir.as_fd(), name.tag(), AtFlags::empty()) {
            Ok(()) => {}
            Err(Errno::NOENT) => return Ok(Lookup::Absent),
            Err(e) => return Err(e.into()),
        }
        drop(dir);
        // Only empty directories go; the first that is not empty stops it.
        for depth in (0..parts.len()).rev() {
            let Ok(Lookup::Found(parent)) = self.dir(&parts[..depth]) else {
                break;
            };
            if rustix::fs::unlinkat(parent.as_fd(), parts[depth], AtFlags::REMOVEDIR).is_err() {
                break;
            }
        }
        Ok(Lookup::Found(()))
    }

    /// Removes the file `file_name` in the directory `parts` below
    /// `manifests/` (a temp file aliasd left behind).
    ///
    /// # Errors
    ///
    /// I/O errors, or the path is foreign or gone.
    pub fn remove_file(&self, parts: &[&str], file_name: &str) -> io::Result<()> {
        match self.dir(parts)? {
            Lookup::Found(dir) => Ok(rustix::fs::unlinkat(
                dir.as_fd(),
                file_name,
                AtFlags::empty(),
            )?),
            Lookup::Absent => Err(io::Error::from(io::ErrorKind::NotFound)),
            Lookup::Foreign(foreign) => Err(io::Error::other(foreign.to_string())),
        }
    }

    /// Creates and removes the file `probe_name` in `manifests/`, to learn
    /// that aliasd may write there; returns the `fstat` of the file made and
    /// of `manifests/`.
    ///
    /// # Errors
    ///
    /// The create or the remove fails, or `manifests/` is foreign.
    pub fn probe_writable(
        &self,
        probe_name: &str,
    ) -> io::Result<(rustix::fs::Stat, rustix::fs::Stat)> {
        let manifests = match self.dir(&[])? {
            Lookup::Found(dir) => dir,
            Lookup::Absent => return Err(io::Error::from(io::ErrorKind::NotFound)),
            Lookup::Foreign(foreign) => {
                return Err(io::Error::other(format!(
                    "{foreign}: aliasd does not write through symbolic links; point --models at \
                     the store itself"
                )))
            }
        };
        let fd = create_new(&manifests, probe_name)?;
        let made = rustix::fs::fstat(&fd);
        drop(fd);
        rustix::fs::unlinkat(manifests.as_fd(), probe_name, AtFlags::empty())?;
        Ok((made?, rustix::fs::fstat(&manifests)?))
    }

    /// Makes `dir` (a single component) in the root if missing.
    ///
    /// # Errors
    ///
    /// The mkdir fails for another reason than "exists".
    pub fn ensure_dir(&self, dir: &str) -> io::Result<()> {
        match rustix::fs::mkdirat(self.fd.as_fd(), dir, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(Errno::EXIST) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// An entry of a directory listed beneath the root.
#[derive(Debug)]
pub struct Entry {
    /// Its name (only UTF-8 names are listed: no other can be a model name).
    pub name: String,
    /// Its type, not following a symlink.
    pub kind: FileType,
}

/// Lists the directory `dir`: every entry but `.` and `..` whose name is
/// UTF-8, with its type (asked of the file system when the listing does not
/// say).
///
/// # Errors
///
/// The listing fails.
pub fn list(dir: BorrowedFd<'_>) -> io::Result<Vec<Entry>> {
    let mut listing = rustix::fs::Dir::read_from(dir)?;
    let mut entries = Vec::new();
    while let Some(entry) = listing.read() {
        let entry = entry?;
        let Ok(name) = entry.file_name().to_str() else {
            continue;
        };
        if name == "." || name == ".." {
            continue;
        }
        let kind = match entry.file_type() {
            FileType::Unknown => match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) => FileType::from_raw_mode(stat.st_mode),
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(e.into()),
            },
            kind => kind,
        };
        entries.push(Entry {
            name: name.to_string(),
            kind,
        });
    }
    Ok(entries)
}

/// Opens `name` in `dir` as a directory, not following a symlink; `rel` is
/// its path for the report.
///
/// # Errors
///
/// I/O errors other than "missing" and "foreign".
pub fn open_dir(dir: BorrowedFd<'_>, name: &str, rel: &Path) -> io::Result<Lookup<OwnedFd>> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match rustix::fs::openat(dir, name, flags, Mode::empty()) {
        Ok(fd) => Ok(Lookup::Found(fd)),
        Err(Errno::NOENT) => Ok(Lookup::Absent),
        Err(Errno::LOOP | Errno::NOTDIR) => Ok(Lookup::Foreign(Foreign {
            path: rel.to_path_buf(),
            why: what_is_there(dir, name, Why::NotADirectory),
        })),
        Err(e) => Err(with_path(e.into(), rel)),
    }
}

/// Reads `name` in `dir`: a regular file of at most [`MAX_MANIFEST_BYTES`],
/// opened without following a symlink (and without blocking on a FIFO).
///
/// # Errors
///
/// I/O errors other than "missing" and "foreign".
pub fn read_file(dir: BorrowedFd<'_>, name: &str, rel: &Path) -> io::Result<Lookup<ReadFile>> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = match rustix::fs::openat(dir, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT | Errno::NOTDIR) => return Ok(Lookup::Absent),
        Err(Errno::LOOP) => {
            return Ok(Lookup::Foreign(Foreign {
                path: rel.to_path_buf(),
                why: Why::Symlink,
            }))
        }
        // A socket cannot be opened at all; it is no manifest either.
        Err(Errno::NXIO) => {
            return Ok(Lookup::Foreign(Foreign {
                path: rel.to_path_buf(),
                why: Why::NotARegularFile,
            }))
        }
        Err(e) => return Err(with_path(e.into(), rel)),
    };
    let file = std::fs::File::from(fd);
    let metadata = file.metadata().map_err(|e| with_path(e, rel))?;
    if !metadata.is_file() {
        return Ok(Lookup::Foreign(Foreign {
            path: rel.to_path_buf(),
            why: Why::NotARegularFile,
        }));
    }
    if metadata.len() > MAX_MANIFEST_BYTES {
        return Ok(Lookup::Foreign(Foreign {
            path: rel.to_path_buf(),
            why: Why::TooLarge(metadata.len()),
        }));
    }
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    // Capped again while reading: the file may grow after the fstat.
    file.take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| with_path(e, rel))?;
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Ok(Lookup::Foreign(Foreign {
            path: rel.to_path_buf(),
            why: Why::TooLarge(bytes.len() as u64),
        }));
    }
    Ok(Lookup::Found(ReadFile { bytes, metadata }))
}

/// How many of [`dir_parts`] lie above an alias's model directory: host
/// and namespace.
const NAMESPACE_DEPTH: usize = 2;

/// The directories of `name`'s manifest below `manifests/`: host,
/// namespace, model.
pub fn dir_parts(name: &ModelName) -> [&str; 3] {
    [name.host(), name.namespace(), name.model()]
}

/// Writes `bytes` as `name`'s file in its model directory `dir`: a temp file
/// `temp_name` (made new, never opened through a symlink), renamed over the
/// name; returns which file was written. On an error the temp file goes.
fn write_in(dir: &OwnedFd, name: &ModelName, bytes: &[u8], temp_name: &str) -> io::Result<FileId> {
    let res = (|| -> io::Result<FileId> {
        let fd = create_new(dir, temp_name)?;
        give_to_owner_of(fd.as_fd(), dir.as_fd());
        let mut file = std::fs::File::from(fd);
        file.write_all(bytes)?;
        rustix::fs::renameat(dir.as_fd(), temp_name, dir.as_fd(), name.tag())?;
        // After the rename, which sets the change time.
        Ok(FileId::of(&rustix::fs::fstat(&file)?))
    })();
    if res.is_err() {
        let _ = rustix::fs::unlinkat(dir.as_fd(), temp_name, AtFlags::empty());
    }
    res
}

/// Creates the file `name` in `dir` for writing: made new (never an
/// existing file, never through a symlink), mode 0644.
fn create_new(dir: &OwnedFd, name: &str) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dir.as_fd(),
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )?)
}

/// `name`'s manifest path relative to the store root, for messages.
fn rel_path(name: &ModelName) -> PathBuf {
    name.manifest_rel_path()
}

/// What `name` in `dir` is, for a report: a symlink, or else `otherwise`.
fn what_is_there(dir: BorrowedFd<'_>, name: &str, otherwise: Why) -> Why {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::Symlink => Why::Symlink,
        _ => otherwise,
    }
}

/// Adds `path` to an I/O error's message, keeping its kind.
pub fn with_path(err: io::Error, path: &Path) -> io::Error {
    io::Error::new(err.kind(), format!("{}: {err}", path.display()))
}

/// Set at start-up (by [`note_owners`]) when aliasd runs as root on a store
/// that belongs to someone else.
static AS_ROOT_ON_OTHERS_STORE: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Records who aliasd runs as (the owner of a file it just made) and who
/// owns `manifests/`. Run as root on a store whose `manifests/` belongs to
/// another user (Ollama's Linux service runs as `ollama`), what aliasd makes
/// is then given to the owner of the directory it is made in, so that
/// `ollama rm` can remove it as it can remove its own. Otherwise (as anyone
/// else, or as root on root's store) the system already makes it right.
pub fn note_owners(made: &rustix::fs::Stat, manifests: &rustix::fs::Stat) {
    let someone_elses = manifests.st_uid != 0 || manifests.st_gid != 0;
    AS_ROOT_ON_OTHERS_STORE.store(
        made.st_uid == 0 && someone_elses,
        std::sync::atomic::Ordering::Relaxed,
    );
}

/// Gives `made` (a file or directory aliasd just made, still open) to the
/// owner of `parent` (the directory it was made in), when aliasd runs as
/// root on another user's store. Both are handles, so no path is resolved
/// and nothing swapped in meanwhile can be given away.
pub fn give_to_owner_of(made: BorrowedFd<'_>, parent: BorrowedFd<'_>) {
    if !AS_ROOT_ON_OTHERS_STORE.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let Ok(owner) = rustix::fs::fstat(parent) else {
        return;
    };
    if owner.st_uid != 0 || owner.st_gid != 0 {
        let uid = rustix::fs::Uid::from_raw(owner.st_uid);
        let gid = rustix::fs::Gid::from_raw(owner.st_gid);
        if let Err(e) = rustix::fs::fchown(made, Some(uid), Some(gid)) {
            tracing::warn!("could not give a new file to the store's owner: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Root) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("manifests/registry.ollama.ai/library")).unwrap();
        let root = Root::open(dir.path()).unwrap();
        (dir, root)
    }

    fn name(s: &str) -> ModelName {
        ModelName::parse(s).unwrap()
    }

    fn why<T: fmt::Debug>(lookup: Lookup<T>) -> Option<Why> {
        match lookup {
            Lookup::Foreign(foreign) => Some(foreign.why),
            other => panic!("expected a foreign path, got {other:?}"),
        }
    }

    #[test]
    fn writes_reads_and_removes_beneath_the_root() {
        let (dir, root) = store();
        let alias = name("coder");
        assert!(matches!(
            root.read_manifest(&alias).unwrap(),
            Lookup::Absent
        ));
        let made = root
            .write_manifest(&alias, b"{}", ".tmp-1", &mut |_, _| {})
            .unwrap();
        let Lookup::Found(Written { made: true, id }) = made else {
            panic!("not written into a new directory: {made:?}")
        };
        let Lookup::Found(read) = root.read_manifest(&alias).unwrap() else {
            panic!("written file not found")
        };
        assert_eq!(read.bytes, b"{}");
        // The file as written is recognized at its path; once touched, no longer.
        assert_eq!(root.file_id(&alias), Some(id));
        let path = dir
            .path()
            .join("manifests/registry.ollama.ai/library/coder/latest");
        std::fs::write(&path, b"{}").unwrap();
        assert_ne!(root.file_id(&alias), Some(id));
        assert!(matches!(
            root.remove_manifest(&alias).unwrap(),
            Lookup::Found(())
        ));
        // The directories it emptied went, up to `manifests/`.
        assert!(!dir.path().join("manifests/registry.ollama.ai").exists());
        assert!(dir.path().join("manifests").exists());
    }

    #[test]
    fn each_directory_made_is_told_before_the_file_is_written() {
        let (dir, root) = store();
        let alias = name("example.com/ns/fresh");
        let manifests = dir.path().join("manifests");
        let mut made = Vec::new();
        let written = root
            .write_manifest(&alias, b"{}", ".tmp-1", &mut |parts, handle| {
                let path = manifests.join(parts.join("/"));
                // Told when the directory is there and still empty, with a
                // handle on that very directory.
                assert_eq!(std::fs::read_dir(&path).unwrap().count(), 0);
                let opened = rustix::fs::fstat(handle).unwrap();
                let there = rustix::fs::stat(&path).unwrap();
                assert_eq!((opened.st_dev, opened.st_ino), (there.st_dev, there.st_ino));
                made.push(parts.join("/"));
            })
            .unwrap();
        assert!(matches!(written, Lookup::Found(Written { made: true, .. })));
        assert_eq!(
            made,
            ["example.com", "example.com/ns", "example.com/ns/fresh"]
        );
        made.clear();
        let again = root
            .write_manifest(&alias, b"{\"a\":1}", ".tmp-2", &mut |parts, _| {
                made.push(parts.join("/"))
            })
            .unwrap();
        assert!(matches!(again, Lookup::Found(Written { made: false, .. })));
        assert!(made.is_empty(), "{made:?}");
        let path = manifests.join("example.com/ns/fresh");
        assert_eq!(std::fs::read(path.join("latest")).unwrap(), b"{\"a\":1}");
        assert_eq!(std::fs::read_dir(&path).unwrap().count(), 1);
    }

    #[test]
    fn a_write_goes_on_from_where_the_read_before_it_stopped() {
        let (dir, root) = store();
        let manifests = dir.path().join("manifests");
        for (alias, made_expected, depth) in [
            (
                "example.com/ns/m:a",
                vec!["example.com", "example.com/ns", "example.com/ns/m"],
                0,
            ),
            ("example.com/ns/n:a", vec!["example.com/ns/n"], 2),
            ("example.com/ns/n:b", vec![], 3),
        ] {
            let alias = name(alias);
            let (found, reached) = root.read_manifest_reaching(&alias).unwrap();
            assert!(matches!(found, Lookup::Absent), "{found:?}");
            let reached = reached.expect("where the walk stopped");
            assert_eq!(reached.depth, depth, "{alias}");
            let mut made = Vec::new();
            let written = root
                .write_manifest_from(&alias, b"{}", ".tmp", Some(reached), &mut |parts, _| {
                    made.push(parts.join("/"))
                })
                .unwrap();
            assert!(matches!(written, Lookup::Found(_)), "{written:?}");
            assert_eq!(made, made_expected, "{alias}");
            let path = manifests.join(
                alias
                    .manifest_rel_path()
                    .strip_prefix(MANIFESTS_DIR)
                    .unwrap(),
            );
            assert_eq!(std::fs::read(path).unwrap(), b"{}");
            // Found: nothing to go on from.
            assert!(root.read_manifest_reaching(&alias).unwrap().1.is_none());
        }
    }

    #[test]
    fn what_appears_where_the_read_found_nothing_is_taken_as_it_is() {
        // The write goes straight to `mkdirat` for the part the read found
        // missing; whatever someone put there in between is what counts.
        let (dir, root) = store();
        let library = dir.path().join("manifests/registry.ollama.ai/library");
        let outside = tempfile::tempdir().unwrap();
        for (alias, put_there) in [("theirs", "dir"), ("link", "symlink"), ("file", "file")] {
            let alias = name(alias);
            let (found, reached) = root.read_manifest_reaching(&alias).unwrap();
            assert!(matches!(found, Lookup::Absent), "{found:?}");
            assert_eq!(reached.as_ref().map(|r| r.depth), Some(2));
            let path = library.join(alias.to_string());
            match put_there {
                "dir" => std::fs::create_dir(&path).unwrap(),
                "symlink" => std::os::unix::fs::symlink(outside.path(), &path).unwrap(),
                _ => std::fs::write(&path, b"not a directory").unwrap(),
            }
            let mut made = Vec::new();
            let written = root
                .write_manifest_from(&alias, b"{}", ".tmp", reached, &mut |parts, _| {
                    made.push(parts.join("/"))
                })
                .unwrap();
            assert!(made.is_empty(), "{alias}: {made:?}");
            match put_there {
                "dir" => {
                    // Someone else's directory: written into, not made.
                    assert!(
                        matches!(written, Lookup::Found(Written { made: false, .. })),
                        "{written:?}"
                    );
                    assert_eq!(std::fs::read(path.join("latest")).unwrap(), b"{}");
                }
                "symlink" => {
                    assert_eq!(why(written), Some(Why::Symlink));
                    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
                }
                _ => {
                    assert_eq!(why(written), Some(Why::NotADirectory));
                    assert_eq!(std::fs::read(&path).unwrap(), b"not a directory");
                }
            }
        }
    }

    #[test]
    fn a_new_alias_is_written_into_a_directory_made_for_it_and_nothing_else_is_touched() {
        let (dir, root) = store();
        let library = dir.path().join("manifests/registry.ollama.ai/library");
        let outside = tempfile::tempdir().unwrap();
        // Missing: made, watched (the hook), written.
        let mut made = Vec::new();
        let written = root
            .write_new_manifest(&name("fresh"), b"{}", ".tmp", &mut |parts, _| {
                made.push(parts.join("/"))
            })
            .unwrap();
        assert!(
            matches!(written, Some(Lookup::Found(Written { made: true, .. }))),
            "{written:?}"
        );
        assert_eq!(made, ["registry.ollama.ai/library/fresh"]);
        assert_eq!(std::fs::read(library.join("fresh/latest")).unwrap(), b"{}");
        // A directory already at the model's path: nothing written, left to
        // the caller's look; a symlink or a file there: foreign, untouched.
        std::fs::create_dir(library.join("there")).unwrap();
        std::os::unix::fs::symlink(outside.path(), library.join("link")).unwrap();
        std::fs::write(library.join("file"), b"not a directory").unwrap();
        for (alias, foreign) in [
            ("there", None),
            ("fresh", None),
            ("link", Some(Why::Symlink)),
            ("file", Some(Why::NotADirectory)),
        ] {
            let mut made = Vec::new();
            let written = root
                .write_new_manifest(&name(alias), b"[]", ".tmp", &mut |parts, _| {
                    made.push(parts.join("/"))
                })
                .unwrap();
            match foreign {
                None => assert!(written.is_none(), "{alias}: {written:?}"),
                Some(expected) => assert_eq!(why(written.unwrap()), Some(expected), "{alias}"),
            }
            assert!(made.is_empty(), "{alias}: {made:?}");
        }
        assert_eq!(std::fs::read_dir(library.join("there")).unwrap().count(), 0);
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        assert_eq!(
            std::fs::read(library.join("file")).unwrap(),
            b"not a directory"
        );
        assert_eq!(std::fs::read(library.join("fresh/latest")).unwrap(), b"{}");
        // A namespace that is missing, or a symlink: left to the walk.
        std::os::unix::fs::symlink(
            outside.path(),
            dir.path().join("manifests/registry.ollama.ai/evil"),
        )
        .unwrap();
        for alias in ["other/m", "evil/m"] {
            let written = root
                .write_new_manifest(&name(alias), b"{}", ".tmp", &mut |_, _| {})
                .unwrap();
            assert!(written.is_none(), "{alias}: {written:?}");
        }
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        assert!(!dir
            .path()
            .join("manifests/registry.ollama.ai/other")
            .exists());
    }

    #[test]
    fn a_symlinked_directory_on_the_way_is_foreign_and_nothing_goes_through_it() {
        let (dir, root) = store();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("passwd"), b"secret").unwrap();
        std::os::unix::fs::symlink(
            outside.path(),
            dir.path().join("manifests/registry.ollama.ai/library/evil"),
        )
        .unwrap();
        let alias = name("evil:passwd");
        assert_eq!(why(root.read_manifest(&alias).unwrap()), Some(Why::Symlink));
        assert_eq!(root.file_id(&alias), None, "looked at through a symlink");
        assert_eq!(
            why(root
                .write_manifest(&alias, b"{}", ".tmp", &mut |_, _| {})
                .unwrap()),
            Some(Why::Symlink)
        );
        assert_eq!(
            why(root.remove_manifest(&alias).unwrap()),
            Some(Why::Symlink)
        );
        assert_eq!(
            std::fs::read(outside.path().join("passwd")).unwrap(),
            b"secret"
        );
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_file_on_the_way_and_odd_files_at_the_end_are_foreign() {
        let (dir, root) = store();
        let library = dir.path().join("manifests/registry.ollama.ai/library");
        std::fs::write(library.join("fileblock"), b"{}").unwrap();
        assert_eq!(
            why(root
                .write_manifest(&name("fileblock:tag"), b"{}", ".t", &mut |_, _| {})
                .unwrap()),
            Some(Why::NotADirectory)
        );

        std::fs::create_dir_all(library.join("m")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", library.join("m/zero")).unwrap();
        assert_eq!(
            why(root.read_manifest(&name("m:zero")).unwrap()),
            Some(Why::Symlink)
        );
        std::os::unix::fs::symlink("nowhere", library.join("m/dangling")).unwrap();
        assert_eq!(
            why(root.read_manifest(&name("m:dangling")).unwrap()),
            Some(Why::Symlink)
        );
        std::fs::create_dir(library.join("m/dir")).unwrap();
        assert_eq!(
            why(root.read_manifest(&name("m:dir")).unwrap()),
            Some(Why::NotARegularFile)
        );
        let big = std::fs::File::create(library.join("m/big")).unwrap();
        big.set_len(MAX_MANIFEST_BYTES + 1).unwrap();
        assert_eq!(
            why(root.read_manifest(&name("m:big")).unwrap()),
            Some(Why::TooLarge(MAX_MANIFEST_BYTES + 1))
        );
    }

    #[test]
    fn a_symlinked_host_or_namespace_is_foreign_whatever_the_walk_before() {
        let (dir, root) = store();
        let manifests = dir.path().join("manifests");
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(outside.path().join("library/m")).unwrap();
        std::fs::write(outside.path().join("library/m/t"), b"secret").unwrap();
        // Read once through the real directories, then swapped: nothing
        // found before is kept for the next walk.
        let alias = name("example.com/library/m:t");
        std::fs::create_dir_all(manifests.join("example.com/library/m")).unwrap();
        assert!(matches!(
            root.read_manifest(&alias).unwrap(),
            Lookup::Absent
        ));
        std::fs::rename(manifests.join("example.com"), dir.path().join("old")).unwrap();
        std::os::unix::fs::symlink(outside.path(), manifests.join("example.com")).unwrap();
        assert_eq!(why(root.read_manifest(&alias).unwrap()), Some(Why::Symlink));
        let (found, reached) = root
            .read_manifest_reaching(&name("example.com/library/n:t"))
            .unwrap();
        assert_eq!(why(found), Some(Why::Symlink));
        assert!(reached.is_none(), "nothing to go on from through a symlink");
        assert_eq!(
            why(root
                .write_manifest(&alias, b"{}", ".t", &mut |_, _| {})
                .unwrap()),
            Some(Why::Symlink)
        );
        // The namespace itself a symlink.
        std::os::unix::fs::symlink(
            outside.path().join("library"),
            manifests.join("registry.ollama.ai/evil"),
        )
        .unwrap();
        assert_eq!(
            why(root.read_manifest(&name("evil/m:t")).unwrap()),
            Some(Why::Symlink)
        );
        assert_eq!(
            std::fs::read(outside.path().join("library/m/t")).unwrap(),
            b"secret"
        );
        assert_eq!(
            std::fs::read_dir(outside.path().join("library/m"))
                .unwrap()
                .count(),
            1
        );
    }

    #[test]
    fn a_symlinked_manifests_directory_is_foreign() {
        let dir = tempfile::tempdir().unwrap();
        let real = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(real.path(), dir.path().join("manifests")).unwrap();
        let root = Root::open(dir.path()).unwrap();
        assert_eq!(why(root.dir(&[]).unwrap()), Some(Why::Symlink));
        assert!(root.probe_writable(".probe").is_err());
    }
}
