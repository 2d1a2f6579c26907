//! The small file-I/O layer every journal file operation goes through.
//!
//! [`Io`] covers the directory (list, create, rename, remove, sync, `stat`) and hands out
//! [`IoFile`] handles for positioned reads and writes, `fdatasync`, truncation and
//! `fstat` ([`FileStatus`], with which the writer notices its files changed under it).
//! [`RealIo`] is the file system; [`FaultyIo`] wraps it with switches that make the next
//! write short, the next fsync fail with `EIO`, or every write fail with `ENOSPC`,
//! so tests (the journal's and the server's) can check what a failed append leaves behind.

use std::fmt;
use std::fs;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// The I/O layer (real file system, or fault-injecting test double).
///
/// Every method maps one-to-one onto a file-system call; the journal decides what to do
/// when one fails.
pub trait Io: Send + Sync + fmt::Debug {
    /// Creates `dir` and its parents if missing.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// The names of the entries of `dir` (file names only, not full paths).
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Opens an existing file for reading.
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn IoFile>>;
    /// Opens an existing file for reading and writing.
    fn open_write(&self, path: &Path) -> io::Result<Box<dyn IoFile>>;
    /// Creates a file for reading and writing, truncating it if it exists.
    fn create(&self, path: &Path) -> io::Result<Box<dyn IoFile>>;
    /// Renames `from` to `to`, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Makes the entries of `dir` (created, renamed, removed files) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// `stat`: what is at `path` now (following symbolic links).
    fn status(&self, path: &Path) -> io::Result<FileStatus>;
}

/// An open file of an [`Io`] layer.
pub trait IoFile: Send + Sync + fmt::Debug {
    /// Reads up to `buf.len()` bytes at `offset`; returns how many (0 at the end).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `offset`. On error, part of `buf` may have been written.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// `fdatasync`: makes the written data durable.
    fn sync_data(&self) -> io::Result<()>;
    /// Truncates or extends the file to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// The current length of the file.
    fn file_len(&self) -> io::Result<u64>;
    /// `fstat`: the open file's identity, link count and length.
    fn status(&self) -> io::Result<FileStatus>;
}

/// What `stat` or `fstat` says of a file: enough to tell whether the file the journal
/// has open is still the one at its path, still linked, and as long as it was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStatus {
    /// Device and inode number; `None` where the platform does not give them.
    pub id: Option<(u64, u64)>,
    /// How many directory entries name the file (0 once it is deleted); `None` where
    /// the platform does not say.
    pub links: Option<u64>,
    /// Length in bytes.
    pub len: u64,
}

impl From<&fs::Metadata> for FileStatus {
    #[cfg(unix)]
    fn from(meta: &fs::Metadata) -> FileStatus {
        use std::os::unix::fs::MetadataExt;
        FileStatus {
            id: Some((meta.dev(), meta.ino())),
            links: Some(meta.nlink()),
            len: meta.len(),
        }
    }

    #[cfg(not(unix))]
    fn from(meta: &fs::Metadata) -> FileStatus {
        FileStatus {
            id: None,
            links: None,
            len: meta.len(),
        }
    }
}

/// Reads the whole of a file into memory.
pub(crate) fn read_all(file: &dyn IoFile) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    read_all_into(file, &mut buf)?;
    Ok(buf)
}

/// Reads the whole of a file into `buf`, replacing what it held. A buffer
/// reused from file to file is zeroed only where it grows: recovery reads
/// every segment, and zeroing 64 MiB of fresh memory per segment cost as
/// much as reading it.
pub(crate) fn read_all_into(file: &dyn IoFile, buf: &mut Vec<u8>) -> io::Result<()> {
    let len = file.file_len()?;
    buf.resize(usize::try_from(len).unwrap_or(usize::MAX), 0);
    let mut filled = 0;
    while filled < buf.len() {
        let n = file.read_at(&mut buf[filled..], filled as u64)?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    buf.truncate(filled);
    Ok(())
}

/// The real file system.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealIo;

#[derive(Debug)]
struct RealFile(fs::File);

impl Io for RealIo {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn IoFile>> {
        Ok(Box::new(RealFile(fs::File::open(path)?)))
    }

    fn open_write(&self, path: &Path) -> io::Result<Box<dyn IoFile>> {
        Ok(Box::new(RealFile(
            fs::OpenOptions::new().read(true).write(true).open(path)?,
        )))
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn IoFile>> {
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Ok(Box::new(RealFile(file)))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    #[cfg(unix)]
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        fs::File::open(dir)?.sync_all()
    }

    #[cfg(not(unix))]
    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        // Directories cannot be opened for syncing on this platform; renames are durable
        // once the file system commits its metadata.
        Ok(())
    }

    fn status(&self, path: &Path) -> io::Result<FileStatus> {
        Ok(FileStatus::from(&fs::metadata(path)?))
    }
}

impl IoFile for RealFile {
    #[cfg(unix)]
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(&self.0, buf, offset)
    }

    #[cfg(windows)]
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        std::os::windows::fs::FileExt::seek_read(&self.0, buf, offset)
    }

    #[cfg(unix)]
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(&self.0, buf, offset)
    }

    #[cfg(windows)]
    fn write_all_at(&self, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match std::os::windows::fs::FileExt::seek_write(&self.0, buf, offset) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "failed to write whole buffer",
                    ))
                }
                Ok(n) => {
                    buf = &buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn file_len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn status(&self) -> io::Result<FileStatus> {
        Ok(FileStatus::from(&self.0.metadata()?))
    }
}

/// `EIO`, as Linux numbers it.
const EIO: i32 = 5;
/// `ENOSPC`, as Linux numbers it.
const ENOSPC: i32 = 28;

/// Whether `error` says the disk is full (`ENOSPC`).
pub fn is_disk_full(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::StorageFull || error.raw_os_error() == Some(ENOSPC)
}

/// A fault-injecting [`Io`]: the real file system, plus switches that make the next
/// write short, the next fsync fail, or every write fail with `ENOSPC`.
///
/// Clones share their switches, so a test keeps one clone and gives the other to
/// [`crate::Options::io`]:
///
/// ```
/// let faulty = journal::FaultyIo::default();
/// let options = journal::Options { io: std::sync::Arc::new(faulty.clone()), ..Default::default() };
/// faulty.fail_next_sync();
/// # let _ = options;
/// ```
///
/// Failed writes are realistic: a short write or an `ENOSPC` write puts the first half
/// of the buffer in the file before returning the error, so the journal has to clean
/// up after it.
/// A failed fsync returns `EIO` without syncing.
#[derive(Debug, Clone, Default)]
pub struct FaultyIo {
    faults: Arc<Faults>,
}

#[derive(Debug, Default)]
struct Faults {
    short_write: AtomicBool,
    fail_sync: AtomicBool,
    enospc: AtomicBool,
    fail_set_len: AtomicBool,
    /// Files cannot grow past this many bytes (0: no limit).
    room: AtomicU64,
    sync_delay_micros: AtomicU64,
    writes: AtomicU64,
    syncs: AtomicU64,
}

impl FaultyIo {
    /// The next file write writes half its buffer, then fails with `WriteZero`.
    pub fn fail_next_write_short(&self) {
        self.faults.short_write.store(true, Ordering::SeqCst);
    }

    /// The next `sync_data` fails with `EIO`.
    pub fn fail_next_sync(&self) {
        self.faults.fail_sync.store(true, Ordering::SeqCst);
    }

    /// While on, every file write writes half its buffer, then fails with `ENOSPC`.
    pub fn set_enospc(&self, on: bool) {
        self.faults.enospc.store(on, Ordering::SeqCst);
    }

    /// A disk with room for files of at most `bytes` bytes (`None`: no limit): a write
    /// that would go past it writes what fits, then fails with `ENOSPC`.
    pub fn set_room(&self, bytes: Option<u64>) {
        self.faults
            .room
            .store(bytes.map_or(0, |b| b.max(1)), Ordering::SeqCst);
    }

    /// The next `set_len` (truncation) fails with `EIO`.
    pub fn fail_next_set_len(&self) {
        self.faults.fail_set_len.store(true, Ordering::SeqCst);
    }

    /// Makes every `sync_data` take at least `delay` (a slow disk), so that tests can
    /// count how many appends share a sync.
    pub fn set_sync_delay(&self, delay: std::time::Duration) {
        let micros = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        self.faults
            .sync_delay_micros
            .store(micros, Ordering::SeqCst);
    }

    /// How many file writes were attempted.
    pub fn writes(&self) -> u64 {
        self.faults.writes.load(Ordering::SeqCst)
    }

    /// How many `sync_data` calls were attempted.
    pub fn syncs(&self) -> u64 {
        self.faults.syncs.load(Ordering::SeqCst)
    }

    fn wrap(&self, file: Box<dyn IoFile>) -> Box<dyn IoFile> {
        Box::new(FaultyFile {
            inner: file,
            faults: Arc::clone(&self.faults),
        })
    }
}

impl Io for FaultyIo {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        RealIo.create_dir_all(dir)
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        RealIo.list_dir(dir)
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn IoFile>> {
        Ok(self.wrap(RealIo.open_read(path)?))
    }

    fn open_write(&self, path: &Path) -> io::Result<Box<dyn IoFile>> {
        Ok(self.wrap(RealIo.open_write(path)?))
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn IoFile>> {
        Ok(self.wrap(RealIo.create(path)?))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        RealIo.rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        RealIo.remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        RealIo.sync_dir(dir)
    }

    fn status(&self, path: &Path) -> io::Result<FileStatus> {
        RealIo.status(path)
    }
}

#[derive(Debug)]
struct FaultyFile {
    inner: Box<dyn IoFile>,
    faults: Arc<Faults>,
}

impl IoFile for FaultyFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.inner.read_at(buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.faults.writes.fetch_add(1, Ordering::SeqCst);
        let error = if self.faults.enospc.load(Ordering::SeqCst) {
            Some(io::Error::from_raw_os_error(ENOSPC))
        } else if self.faults.short_write.swap(false, Ordering::SeqCst) {
            Some(io::Error::new(
                io::ErrorKind::WriteZero,
                "short write (injected)",
            ))
        } else {
            None
        };
        let room = self.faults.room.load(Ordering::SeqCst);
        if error.is_none() && room > 0 && offset + buf.len() as u64 > room {
            let fits = room.saturating_sub(offset) as usize;
            self.inner.write_all_at(&buf[..fits], offset)?;
            return Err(io::Error::from_raw_os_error(ENOSPC));
        }
        match error {
            Some(error) => {
                self.inner.write_all_at(&buf[..buf.len() / 2], offset)?;
                Err(error)
            }
            None => self.inner.write_all_at(buf, offset),
        }
    }

    fn sync_data(&self) -> io::Result<()> {
        self.faults.syncs.fetch_add(1, Ordering::SeqCst);
        let delay = self.faults.sync_delay_micros.load(Ordering::SeqCst);
        if delay > 0 {
            std::thread::sleep(std::time::Duration::from_micros(delay));
        }
        if self.faults.fail_sync.swap(false, Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(EIO));
        }
        self.inner.sync_data()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        if self.faults.fail_set_len.swap(false, Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(EIO));
        }
        self.inner.set_len(len)
    }

    fn file_len(&self) -> io::Result<u64> {
        self.inner.file_len()
    }

    fn status(&self) -> io::Result<FileStatus> {
        self.inner.status()
    }
}
