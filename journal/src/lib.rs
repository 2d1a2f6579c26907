//! A durable, checksummed, append-only event log with group commit.
//!
//! The journal stores opaque payloads under gap-free sequence numbers ([`Seq`], from 1).
//! [`Journal::append`] writes one atomic transaction of one or more records and returns
//! once it is on disk; many threads may append at once, and a single writer thread turns
//! their appends into batches with one `fdatasync` each (group commit).
//! [`Journal::read_from`] replays durable records in order, [`Journal::write_snapshot`]
//! stores a snapshot blob so that start-up need not replay everything, and
//! [`verify`] checks a journal directory without touching it.
//! The journal knows nothing of what the payloads mean.
//!
//! # Layout
//!
//! - `lib.rs`: [`Journal`] (open, append, read, snapshot, retention) and [`Reader`].
//! - `record.rs`: framing of one record, encode and decode.
//! - `segment.rs`: one segment file: name, header, scan, buffered cursor.
//! - `writer.rs`: the writer thread, group commit, cleanup after a failed batch.
//! - `recovery.rs`: what `open` does first, and [`verify`].
//! - `snapshot.rs`: snapshot files.
//! - `io.rs`: the file-I/O trait [`Io`], [`RealIo`] and the fault-injecting [`FaultyIo`].
//! - `error.rs`: [`Error`].
//!
//! # On-disk format
//!
//! A journal is a directory of segment files and snapshot files.
//! All integers are little-endian. All checksums are CRC32C (Castagnoli).
//!
//! **Segments.** A segment is named after the seq of its first record, zero-padded to 20
//! digits, with the extension `.seg` (`00000000000000000001.seg`), so lexical order is
//! numeric order and a reader finds the segment holding a seq by binary search over names.
//! It starts with a 24-byte header:
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0 | 8 | magic [`SEGMENT_MAGIC`], `aliasdJS` |
//! | 8 | 4 | format version [`SEGMENT_VERSION`], 1 |
//! | 12 | 8 | first seq (must match the file name) |
//! | 20 | 4 | CRC32C of bytes 0..20 |
//!
//! Records follow, back to back, each a 20-byte header then the payload:
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0 | 4 | CRC32C of bytes 4..20 of the header and of the payload |
//! | 4 | 4 | payload length (at most [`MAX_PAYLOAD_BYTES`]) |
//! | 8 | 8 | seq |
//! | 16 | 4 | flags |
//! | 20 | length | payload |
//!
//! Flags: bit 0 marks the last record of a transaction (its commit marker), bit 1 the
//! first record of a group-commit batch, bit 2 the last record of a batch; other bits are
//! zero. Seqs increase by one from the header's first seq to the end of the segment, and
//! each segment starts at the seq after the last one of the segment before it.
//! A transaction never spans two segments: the writer rolls over to a new segment once
//! the active one is at least [`Options::segment_bytes`] long, between two batches, and
//! only after the new segment's header and directory entry are synced.
//! The active segment may end in zeros: the writer writes [`Options::preallocate_bytes`]
//! of them ahead of its records, so that a commit overwrites zeros and its `fdatasync`
//! has no new file size to write. No record starts with a zero seq, so the data ends
//! where a record would begin and every byte from there to the end of the file is zero;
//! that is the end of the segment, not damage. A sealed segment has its zeros cut at
//! rollover (a crash may leave them; they mean the same there).
//!
//! **Snapshots.** A snapshot is named after the seq it covers, with the extension `.snap`.
//! It is a 32-byte header (magic `aliasdSN`, version 1 as u32, seq as u64, data length as
//! u64, CRC32C of header bytes 0..28 and of the data) followed by the data. It is written
//! as `<name>.tmp`, synced, renamed into place, and the directory is synced.
//!
//! # Durability and recovery
//!
//! An append is acknowledged only after its batch is written and `fdatasync` returned.
//! The writer begins a batch only after the previous batch is durable.
//! [`Journal::open`] scans every segment and stops at the first damage:
//!
//! - A transaction without its commit record, a partial record, or a record with a bad
//!   checksum, in the last segment, with no valid record after it that begins a batch or
//!   follows a batch end, and after the seq of the newest valid snapshot, is a **torn
//!   tail**: what a crash in the middle of a batch leaves.
//!   The segment is cut back to its last whole transaction;
//!   [`Recovery::truncated_bytes`] says how much went.
//!   A bit flip inside the last batch looks the same and is cut the same way.
//! - Anything else is **mid-log damage**: `open` fails with [`Error::Corrupt`] naming the
//!   file and byte offset, unless [`Options::repair`] is set, in which case everything from
//!   the damage on, later segments included, is dropped.
//!
//! A snapshot with a bad checksum is ignored (an older one, or none, is returned).
//! A valid snapshot is never deleted by recovery: it shows that every record up to its
//! seq was durable, so a log that ends before it (cut under a running process, say)
//! is damage, not a torn tail. `open` fails with [`Error::Corrupt`], and where a cut
//! would leave the log ending before the snapshot, repair keeps the snapshot and starts
//! the log again after it, moving the segments (whose records the snapshot covers) as
//! they are to a directory inside the journal's ([`Recovery::set_aside`]).
//! A damaged snapshot ahead of the recovered log is deleted, since the seqs it names
//! will be reused.
//!
//! # Example
//!
//! ```
//! let dir = tempfile::tempdir()?;
//! let opened = journal::Journal::open(dir.path(), journal::Options::default())?;
//! let journal = opened.journal;
//! let first = journal.append(vec![b"one".to_vec(), b"two".to_vec()])?;
//! assert_eq!(first, journal::Seq(1));
//! assert_eq!(journal.append(vec![b"three".to_vec()])?, journal::Seq(3));
//! let records: Vec<(journal::Seq, Vec<u8>)> = journal.read_from(journal::Seq(2))?.collect::<Result<_, _>>()?;
//! assert_eq!(records, vec![(journal::Seq(2), b"two".to_vec()), (journal::Seq(3), b"three".to_vec())]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![warn(missing_docs)]
#![deny(unsafe_code)]

mod error;
mod io;
mod record;
mod recovery;
mod segment;
mod snapshot;
mod writer;

use std::collections::VecDeque;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock, RwLock};
use std::thread::JoinHandle;

pub use crate::error::{Error, Result};
pub use crate::io::{is_disk_full, FaultyIo, FileStatus, Io, IoFile, RealIo};
pub use crate::record::MAX_PAYLOAD_BYTES;
pub use crate::segment::{SEGMENT_MAGIC, SEGMENT_VERSION};
pub use crate::snapshot::{SNAPSHOT_MAGIC, SNAPSHOT_VERSION};

/// A record's sequence number: gap-free, starting at 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Seq(pub u64);

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Options for opening a journal.
///
/// Build it with struct update syntax: `Options { segment_bytes: 1 << 20, ..Default::default() }`.
#[derive(Debug, Clone)]
pub struct Options {
    /// A segment rolls over once it is larger than this (default 64 MiB).
    /// Rollover happens between batches, so a segment can exceed it by one batch.
    pub segment_bytes: u64,
    /// Zeros written ahead of the end of the active segment (default 1 MiB, at most
    /// `segment_bytes`; 0 turns it off). A commit that overwrites zeros leaves the
    /// file's length alone, so its `fdatasync` writes the data and no inode: on ext4
    /// that makes a small commit faster (figures: the project's benches/README.md).
    /// Readers and recovery stop at the zeros.
    pub preallocate_bytes: u64,
    /// Keep at least this many most recent records; None keeps all.
    /// Older segments are deleted after [`Journal::write_snapshot`] once the snapshot covers them.
    pub retain: Option<u64>,
    /// Repair mode: keep the good prefix of a journal damaged in the middle.
    pub repair: bool,
    /// The I/O layer.
    pub io: Arc<dyn Io>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            segment_bytes: 64 << 20,
            preallocate_bytes: 1 << 20,
            retain: None,
            repair: false,
            io: Arc::new(RealIo),
        }
    }
}

/// A snapshot blob and the seq it covers.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Every record up to and including this seq is reflected in `data`.
    pub seq: Seq,
    /// Opaque bytes.
    pub data: Vec<u8>,
}

/// What recovery found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Bytes cut from a torn tail, or dropped by repair (later segments included); 0 if none.
    pub truncated_bytes: u64,
    /// The file that was cut.
    pub truncated_file: Option<PathBuf>,
    /// Valid records found past the cut and dropped: the records of an unfinished last
    /// transaction, or everything repair mode dropped.
    pub dropped_records: u64,
    /// Snapshot files ignored because they are damaged (left on disk).
    pub ignored_snapshots: Vec<PathBuf>,
    /// Damaged snapshot files deleted because they name seqs the recovered log does not
    /// hold yet (they will be reused).
    pub discarded_snapshots: Vec<PathBuf>,
    /// Repair only: the directory (inside the journal's) where every segment went, as it
    /// was, because the log (cut at its first damage, if any) ended before the newest valid
    /// snapshot. The snapshot covers their records and is kept; the log goes on after it.
    pub set_aside: Option<PathBuf>,
    /// Valid records, before the first damage, in the segments moved to [`Recovery::set_aside`].
    pub set_aside_records: u64,
}

/// The result of [`Journal::open`].
#[derive(Debug)]
pub struct Opened {
    /// The journal, ready for appends.
    pub journal: Journal,
    /// The newest valid snapshot, if any.
    pub snapshot: Option<Snapshot>,
    /// What recovery did.
    pub recovery: Recovery,
}

/// A durable, checksummed, append-only log.
///
/// Cheap to clone (an `Arc` inside) and usable from many threads at once. When the last
/// handle is dropped (or [`Journal::close`] is called), the writer thread finishes the
/// queued appends and exits. Only one `Journal` may have a directory open at a time.
///
/// ```
/// use journal::{Journal, Options, Seq};
///
/// let dir = tempfile::tempdir()?;
/// let journal = Journal::open(dir.path(), Options::default())?.journal;
/// let threads: Vec<_> = (0..4)
///     .map(|idx| {
///         let journal = journal.clone();
///         std::thread::spawn(move || journal.append(vec![format!("event {idx}").into_bytes()]))
///     })
///     .collect();
/// for thread in threads {
///     thread.join().unwrap()?;
/// }
/// assert_eq!(journal.last_seq(), Seq(4));
/// journal.write_snapshot(Seq(4), b"state after 4 events")?;
/// drop(journal);
///
/// let opened = Journal::open(dir.path(), Options::default())?;
/// let snapshot = opened.snapshot.expect("a snapshot was written");
/// assert_eq!(snapshot.seq, Seq(4));
/// assert_eq!(opened.journal.read_from(Seq(snapshot.seq.0 + 1))?.count(), 0);
/// assert_eq!(opened.journal.read_from(Seq(1))?.count(), 4);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

/// What the handles share; dropping it stops the writer.
#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
    /// The writer's queue. `None` once closed: dropping the sender lets the writer
    /// drain the queue and exit. A read lock is enough to send.
    sender: RwLock<Option<mpsc::Sender<writer::Request>>>,
    /// The writer thread, joined on close.
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Held while any handle lives.
    _lock: DirLock,
}

/// The name of the lock file in a journal directory.
pub const LOCK_FILE: &str = "LOCK";

/// An exclusive lock on a journal directory (`flock` on its `LOCK` file), so
/// that two processes never write, truncate or repair the same journal at
/// once. The kernel releases it when the process dies, even by `kill -9`.
#[derive(Debug)]
struct DirLock {
    _file: std::fs::File,
}

impl DirLock {
    /// Takes the lock, creating the directory and lock file if missing.
    fn acquire(dir: &Path) -> Result<DirLock> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create dir", dir, e))?;
        let path = dir.join(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("open", &path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(DirLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(Error::Locked {
                dir: dir.to_path_buf(),
            }),
            Err(std::fs::TryLockError::Error(e)) => Err(Error::io("lock", &path, e)),
        }
    }
}

/// State shared by the handles, the writer thread and nothing else (readers copy what they need).
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) dir: PathBuf,
    pub(crate) options: Options,
    /// The segments, oldest first, with their durable lengths. The writer updates the
    /// last one's length and pushes new ones; retention removes old ones from the front.
    /// `last_seq` changes only under the write lock, so a reader that takes the read lock
    /// sees lengths and `last_seq` that agree.
    segments: RwLock<Vec<SegmentMeta>>,
    /// The last durable seq (also read without the lock by `Journal::last_seq`).
    last_seq: AtomicU64,
    /// Serializes snapshot writes and retention.
    snapshot_lock: Mutex<()>,
    /// Set once, by the writer, when it finds the active segment deleted, moved, replaced
    /// or cut under it ([`Error::Tampered`]); from then on every append and snapshot fails.
    tampered: OnceLock<Error>,
}

/// A segment as the handles and readers know it.
#[derive(Debug, Clone)]
pub(crate) struct SegmentMeta {
    pub(crate) first_seq: u64,
    pub(crate) path: PathBuf,
    /// Durable length: readers never read past it.
    pub(crate) len: u64,
}

impl Shared {
    /// Publishes the durable end after a batch is synced.
    pub(crate) fn publish(&self, len: u64, last_seq: u64) {
        let mut segments = self.segments.write().unwrap();
        if let Some(active) = segments.last_mut() {
            active.len = len;
        }
        self.last_seq.store(last_seq, Ordering::Release);
    }

    /// Publishes a new, empty active segment.
    pub(crate) fn push_segment(&self, meta: SegmentMeta) {
        self.segments.write().unwrap().push(meta);
    }

    /// The tampering found, if any, as an error to answer with.
    pub(crate) fn tampered(&self) -> Option<Error> {
        self.tampered.get().map(Error::duplicate)
    }

    /// Records tampering (the first found is kept): nothing is written from now on.
    pub(crate) fn set_tampered(&self, error: &Error) {
        let _ = self.tampered.set(error.duplicate());
    }
}

/// Seeds a new journal in `dir` with a snapshot at `seq`: opened next, the
/// journal holds that snapshot and numbers its first record `seq + 1`. A
/// replica that starts from another copy's snapshot (a new node of a fleet)
/// uses it instead of replaying every record before `seq`.
///
/// Returns `false`, and writes nothing, when `dir` holds a segment or a
/// snapshot already (a journal that is not new).
///
/// # Errors
///
/// [`Error::Io`] when the directory cannot be made, listed or written.
pub fn seed(dir: &Path, seq: Seq, data: &[u8]) -> Result<bool> {
    let io = RealIo;
    io.create_dir_all(dir)
        .map_err(|e| Error::io("create", dir, e))?;
    let names = io.list_dir(dir).map_err(|e| Error::io("list", dir, e))?;
    let in_use = names
        .iter()
        .any(|name| segment::parse_name(name).is_some() || snapshot::parse_name(name).is_some());
    if in_use {
        return Ok(false);
    }
    snapshot::write(&io, dir, seq.0, data)?;
    Ok(true)
}

impl Journal {
    /// Opens (creating if missing) and recovers the journal in `dir`.
    ///
    /// See the crate docs for what recovery does.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] for damage in the middle of the journal (unless
    /// [`Options::repair`]), [`Error::Io`] when the file system fails.
    pub fn open(dir: &Path, options: Options) -> Result<Opened> {
        let lock = DirLock::acquire(dir)?;
        let recovered = recovery::recover(dir, &options)?;
        let Some(active) = recovered.segments.last().cloned() else {
            return Err(Error::corrupt(dir, 0, "recovery left no segment"));
        };
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            options,
            segments: RwLock::new(recovered.segments),
            last_seq: AtomicU64::new(recovered.last_seq),
            snapshot_lock: Mutex::new(()),
            tampered: OnceLock::new(),
        });
        let writer = writer::Writer::new(
            Arc::clone(&shared),
            active.path,
            recovered.active,
            active.len,
            recovered.last_seq + 1,
        );
        let (sender, receiver) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("journal-writer".to_string())
            .spawn(move || writer.run(receiver))
            .map_err(|e| Error::io("spawn writer thread for", dir, e))?;
        let inner = Inner {
            shared,
            sender: RwLock::new(Some(sender)),
            thread: Mutex::new(Some(thread)),
            _lock: lock,
        };
        Ok(Opened {
            journal: Journal {
                inner: Arc::new(inner),
            },
            snapshot: recovered.snapshot,
            recovery: recovered.recovery,
        })
    }

    /// Appends one atomic transaction; returns the seq of its first record once durable.
    ///
    /// The records get consecutive seqs. Concurrent appends are committed together, one
    /// `fdatasync` per batch. A failed append consumes no seq and leaves nothing behind:
    /// the next successful append gets the seq this one would have had.
    ///
    /// # Errors
    ///
    /// [`Error::Empty`] for no payloads, [`Error::TooLarge`] for a payload over
    /// [`MAX_PAYLOAD_BYTES`], [`Error::Closed`] after [`Journal::close`],
    /// [`Error::Io`] when the write or the sync fails (the `std::io::Error` keeps its
    /// kind and raw OS error, so `ENOSPC` is detectable), and [`Error::Tampered`] once the
    /// active segment was found deleted, moved, replaced or cut under the writer (see
    /// [`Journal::tampered`]). A failed sync may still leave the transaction on disk if the
    /// process dies before the writer has cut it off again.
    pub fn append(&self, payloads: Vec<Vec<u8>>) -> Result<Seq> {
        self.submit(payloads)?.wait()
    }

    /// [`Journal::append`] for async code: queues the transaction now and returns a
    /// future that resolves, without blocking a thread, once it is durable.
    ///
    /// The transaction is committed whether or not the future is awaited (dropping it
    /// only drops the answer). Many tasks appending at once share one `fdatasync` per
    /// batch like threads do, and cost the writer a task wake-up each instead of a
    /// thread wake-up.
    ///
    /// # Errors
    ///
    /// As [`Journal::append`]; the checks on the payloads are answered by the future.
    pub fn append_async(&self, payloads: Vec<Vec<u8>>) -> Append {
        let state = match self.submit(payloads) {
            Ok(reply) => AppendState::Queued(reply),
            Err(error) => AppendState::Refused(Some(error)),
        };
        Append { state }
    }

    /// Checks a transaction and queues it for the writer.
    fn submit(&self, payloads: Vec<Vec<u8>>) -> Result<Arc<writer::Reply>> {
        if let Some(error) = self.inner.shared.tampered() {
            return Err(error);
        }
        if payloads.is_empty() {
            return Err(Error::Empty);
        }
        if let Some(payload) = payloads.iter().find(|p| p.len() > MAX_PAYLOAD_BYTES) {
            return Err(Error::TooLarge {
                bytes: payload.len() as u64,
                max: MAX_PAYLOAD_BYTES as u64,
            });
        }
        let reply = Arc::new(writer::Reply::default());
        let sender = self.inner.sender.read().unwrap();
        let sender = sender.as_ref().ok_or(Error::Closed)?;
        let request = writer::Request {
            payloads,
            reply: Arc::clone(&reply),
        };
        // On failure the request comes back and is dropped, which replies `Closed`.
        let _ = sender.send(request);
        Ok(reply)
    }

    /// [`Error::Tampered`] once the writer has found the journal's active segment deleted,
    /// moved, replaced or cut under it (its directory removed, say); `None` while intact.
    ///
    /// The writer looks before and after each batch (an `fstat` of the open segment, and
    /// a `stat` of its path once the batch is synced), and acknowledges a batch only if both
    /// looks agree that the file at the path is the one written to, is linked, and is as
    /// long as the writer made it. From then on every append and snapshot fails with this
    /// error; only a new process, which opens and recovers the journal, can write again.
    /// Reads of what was durable before go on, as far as the files are still there.
    pub fn tampered(&self) -> Option<Error> {
        self.inner.shared.tampered()
    }

    /// The seq of the last durable record (Seq(0) if empty).
    pub fn last_seq(&self) -> Seq {
        Seq(self.inner.shared.last_seq.load(Ordering::Acquire))
    }

    /// The oldest seq still readable: 1 unless retention removed segments, then the
    /// first seq of the oldest remaining one. `last_seq() + 1` when there is no record.
    pub fn first_seq(&self) -> Seq {
        let segments = self.inner.shared.segments.read().unwrap();
        Seq(segments.first().map_or(1, |meta| meta.first_seq))
    }

    /// Iterates durable records with seq >= `from`, oldest first.
    ///
    /// The reader sees the journal as it is when `read_from` is called: it stops at that
    /// moment's [`Journal::last_seq`], never yielding a record that was not yet durable,
    /// nor part of a transaction. Appends may go on meanwhile. If `from` is below
    /// [`Journal::first_seq`], it starts there (compare to detect it).
    /// It yields at most one error, then ends.
    ///
    /// # Errors
    ///
    /// None when called; the iterator yields [`Error::Io`] or [`Error::Corrupt`] if a
    /// segment cannot be read (including one retention deleted while it was being read).
    pub fn read_from(&self, from: Seq) -> Result<Reader> {
        let shared = &self.inner.shared;
        let segments = shared.segments.read().unwrap();
        let end_seq = shared.last_seq.load(Ordering::Acquire);
        let first_seq = segments.first().map_or(1, |meta| meta.first_seq);
        let from = from.0.max(first_seq);
        let start_idx = segments
            .partition_point(|meta| meta.first_seq <= from)
            .saturating_sub(1);
        let remaining: VecDeque<SegmentMeta> = if from > end_seq {
            VecDeque::new()
        } else {
            segments[start_idx..].iter().cloned().collect()
        };
        let next_seq = remaining.front().map_or(from, |meta| meta.first_seq);
        Ok(Reader {
            io: Arc::clone(&shared.options.io),
            segments: remaining,
            cursor: None,
            next_seq,
            from,
            end_seq,
            done: false,
        })
    }

    /// Stores a snapshot covering every record up to `seq`, durably.
    ///
    /// The new snapshot and the newest one before it are kept; older ones are deleted.
    /// With [`Options::retain`] set to `Some(n)`, whole segments whose records are all
    /// covered by this snapshot and older than the last `n` records are deleted afterwards
    /// (never the active segment).
    ///
    /// # Errors
    ///
    /// [`Error::SeqOutOfRange`] if `seq` is beyond [`Journal::last_seq`]; [`Error::Io`];
    /// [`Error::Tampered`] (see [`Journal::tampered`]): the directory may not be the
    /// journal's any more.
    pub fn write_snapshot(&self, seq: Seq, data: &[u8]) -> Result<()> {
        let shared = &self.inner.shared;
        let _guard = shared.snapshot_lock.lock().unwrap();
        if let Some(error) = shared.tampered() {
            return Err(error);
        }
        let last = self.last_seq();
        if seq > last {
            return Err(Error::SeqOutOfRange { seq, last });
        }
        let io = &*shared.options.io;
        snapshot::write(io, &shared.dir, seq.0, data)?;
        snapshot::prune(io, &shared.dir, seq.0)?;
        if let Some(retain) = shared.options.retain {
            self.apply_retention(seq.0.min(last.0.saturating_sub(retain)))?;
        }
        Ok(())
    }

    /// Total bytes of segment files (their durable lengths).
    pub fn size_bytes(&self) -> u64 {
        self.inner
            .shared
            .segments
            .read()
            .unwrap()
            .iter()
            .map(|meta| meta.len)
            .sum()
    }

    /// The journal's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.shared.dir
    }

    /// Stops the writer after it has committed the appends already queued, and waits
    /// for it. Later appends (from any handle) fail with [`Error::Closed`]; reads work on.
    /// Dropping the last handle does the same.
    pub fn close(&self) {
        self.inner.close();
    }

    /// Deletes the oldest segments whose records all have seqs up to `upto`.
    fn apply_retention(&self, upto: u64) -> Result<()> {
        let shared = &self.inner.shared;
        let removed: Vec<SegmentMeta> = {
            let mut segments = shared.segments.write().unwrap();
            // Segment `idx` ends where segment `idx + 1` starts; the last one is never removed.
            let n_removable = (0..segments.len().saturating_sub(1))
                .take_while(|idx| segments[idx + 1].first_seq - 1 <= upto)
                .count();
            segments.drain(..n_removable).collect()
        };
        if removed.is_empty() {
            return Ok(());
        }
        let io = &*shared.options.io;
        for meta in &removed {
            io.remove_file(&meta.path)
                .map_err(|e| Error::io("remove", &meta.path, e))?;
        }
        io.sync_dir(&shared.dir)
            .map_err(|e| Error::io("sync dir", &shared.dir, e))
    }
}

/// The answer to [`Journal::append_async`]: the seq of the transaction's first record
/// once it is durable, or the error.
#[must_use = "the transaction is queued either way; await this to know it is durable"]
#[derive(Debug)]
pub struct Append {
    state: AppendState,
}

/// Where an [`Append`] stands.
#[derive(Debug)]
enum AppendState {
    /// Queued: the writer answers in this slot.
    Queued(Arc<writer::Reply>),
    /// Not queued, for this reason (taken when first polled).
    Refused(Option<Error>),
}

impl std::future::Future for Append {
    type Output = Result<Seq>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<Seq>> {
        match &mut self.get_mut().state {
            AppendState::Queued(reply) => reply.poll(cx.waker()),
            AppendState::Refused(error) => {
                std::task::Poll::Ready(Err(error.take().unwrap_or(Error::Closed)))
            }
        }
    }
}

impl Inner {
    fn close(&self) {
        self.sender.write().unwrap().take();
        let thread = self.thread.lock().unwrap().take();
        if let Some(thread) = thread {
            // The writer does not panic on I/O errors; if it did, there is nothing to add here.
            let _ = thread.join();
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.close();
    }
}

/// An iterator over durable records, from [`Journal::read_from`].
///
/// It reads segment files in 1 MiB chunks; as an iterator it allocates each payload it
/// yields, through [`Reader::next_borrowed`] none.
#[derive(Debug)]
pub struct Reader {
    io: Arc<dyn Io>,
    /// Segments still to open, with their durable lengths when the reader was made.
    segments: VecDeque<SegmentMeta>,
    cursor: Option<segment::Cursor>,
    /// The seq the next record must carry.
    next_seq: u64,
    /// Records before this one are skipped.
    from: u64,
    /// The last durable seq when the reader was made: it stops there.
    end_seq: u64,
    /// Set after the end or an error.
    done: bool,
}

impl Reader {
    /// The next record, its payload borrowed from the reader's buffer until the
    /// next call: a replay that decodes each payload in place copies nothing.
    /// `None` after the last durable record, or after an error.
    pub fn next_borrowed(&mut self) -> Option<Result<(Seq, &[u8])>> {
        if self.done {
            return None;
        }
        match self.advance() {
            Ok(Some(seq)) => {
                // `advance` returns a seq only with the cursor that read it in place.
                let payload = self.cursor.as_ref().map_or(&[][..], |c| c.last_payload());
                Some(Ok((seq, payload)))
            }
            Ok(None) => {
                self.done = true;
                None
            }
            Err(error) => {
                self.done = true;
                Some(Err(error))
            }
        }
    }

    /// Moves to the next record at or after `from`; its payload is then the
    /// cursor's last one.
    fn advance(&mut self) -> Result<Option<Seq>> {
        loop {
            if self.next_seq > self.end_seq {
                return Ok(None);
            }
            let cursor = match &mut self.cursor {
                Some(cursor) => cursor,
                None => {
                    let Some(meta) = self.segments.pop_front() else {
                        return Ok(None);
                    };
                    if meta.first_seq != self.next_seq {
                        let reason =
                            format!("expected a segment starting at seq {}", self.next_seq);
                        return Err(Error::corrupt(&meta.path, 0, reason));
                    }
                    self.cursor.insert(segment::Cursor::open(
                        &*self.io,
                        &meta.path,
                        meta.first_seq,
                        meta.len,
                    )?)
                }
            };
            let Some(rec) = cursor.next_record()? else {
                self.cursor = None;
                continue;
            };
            let seq = rec.seq;
            if seq != self.next_seq {
                let reason = format!("expected seq {}, found {}", self.next_seq, seq);
                return Err(cursor.corrupt_here(reason));
            }
            self.next_seq += 1;
            if seq >= self.from {
                return Ok(Some(Seq(seq)));
            }
        }
    }
}

impl Iterator for Reader {
    type Item = Result<(Seq, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_borrowed()
            .map(|item| item.map(|(seq, payload)| (seq, payload.to_vec())))
    }
}

/// Read-only check of a journal directory: record and header checksums, seq continuity
/// within and across segments, whole transactions, snapshot checksums, and that the
/// snapshots cover whatever retention removed. It never modifies anything.
///
/// # Errors
///
/// [`Error::Corrupt`] naming the file and byte offset of the first problem, a torn tail
/// included; [`Error::Io`] if the directory cannot be read.
pub fn verify(dir: &Path) -> Result<VerifyReport> {
    recovery::verify(&RealIo, dir)
}

/// What [`verify`] found.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// Records checked.
    pub records: u64,
    /// Segments checked.
    pub segments: u64,
    /// Last seq.
    pub last_seq: Seq,
    /// Snapshot seq, if a valid one exists.
    pub snapshot_seq: Option<Seq>,
}

#[cfg(test)]
mod testing;

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;
    use crate::testing::{
        block_on, flatten, open, payload, records, segment_files, small_segments, snapshot_files,
    };

    #[test]
    fn a_second_open_of_the_same_directory_is_refused_until_the_first_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let first = Journal::open(dir.path(), Options::default())
            .unwrap()
            .journal;
        first.append(vec![b"one".to_vec()]).unwrap();
        let second = Journal::open(dir.path(), Options::default());
        assert!(
            matches!(&second, Err(Error::Locked { dir: locked }) if locked == dir.path()),
            "{second:?}"
        );
        // Refused before recovery touched anything: the first goes on.
        assert_eq!(first.append(vec![b"two".to_vec()]).unwrap(), Seq(2));
        drop(first);
        let reopened = Journal::open(dir.path(), Options::default())
            .unwrap()
            .journal;
        assert_eq!(reopened.last_seq(), Seq(2));
    }

    #[test]
    fn a_seeded_journal_starts_after_its_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new");
        assert!(seed(&path, Seq(41), b"state at 41").unwrap());
        let opened = Journal::open(&path, Options::default()).unwrap();
        let snapshot = opened.snapshot.expect("the seeded snapshot");
        assert_eq!(
            (snapshot.seq, snapshot.data.as_slice()),
            (Seq(41), &b"state at 41"[..])
        );
        let journal = opened.journal;
        assert_eq!(
            (journal.first_seq(), journal.last_seq()),
            (Seq(42), Seq(41))
        );
        assert_eq!(journal.append(vec![b"next".to_vec()]).unwrap(), Seq(42));
        drop(journal);
        // A journal in use is not seeded again.
        assert!(!seed(&path, Seq(99), b"other").unwrap());
        let journal = Journal::open(&path, Options::default()).unwrap().journal;
        assert_eq!(journal.last_seq(), Seq(42));
    }

    #[test]
    fn appends_read_back_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let journal = open(dir.path(), Options::default()).journal;
        assert_eq!((journal.first_seq(), journal.last_seq()), (Seq(1), Seq(0)));
        assert_eq!(records(&journal, 1), vec![]);
        let mut txns = Vec::new();
        for idx in 0..10u64 {
            let payloads: Vec<Vec<u8>> = (0..=idx % 3)
                .map(|rec| payload(idx * 10 + rec, 30))
                .collect();
            let seq = journal.append(payloads.clone()).unwrap();
            txns.push((seq.0, payloads));
        }
        let expected = flatten(&txns);
        assert_eq!(
            txns.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
            vec![1, 2, 4, 7, 8, 10, 13, 14, 16, 19]
        );
        assert_eq!(journal.last_seq(), Seq(19));
        assert_eq!(records(&journal, 0), expected);
        assert_eq!(records(&journal, 5), expected[4..]);
        assert_eq!(records(&journal, 19), expected[18..]);
        assert_eq!(records(&journal, 20), vec![]);
        assert!(journal.size_bytes() > 19 * 50);
        drop(journal);

        let opened = open(dir.path(), Options::default());
        assert!(opened.snapshot.is_none());
        assert_eq!(opened.recovery.truncated_bytes, 0);
        assert_eq!(records(&opened.journal, 1), expected);
        assert_eq!(
            opened.journal.append(vec![b"next".to_vec()]).unwrap(),
            Seq(20)
        );
        assert_eq!(verify(dir.path()).unwrap().records, 20);
        assert_eq!(Seq(20).to_string(), "20");
    }

    #[test]
    fn rejects_empty_and_oversized_transactions_without_consuming_a_seq() {
        let dir = tempfile::tempdir().unwrap();
        let journal = open(dir.path(), Options::default()).journal;
        assert!(matches!(journal.append(vec![]), Err(Error::Empty)));
        let huge = vec![0u8; MAX_PAYLOAD_BYTES + 1];
        let res = journal.append(vec![b"ok".to_vec(), huge]);
        assert!(
            matches!(res, Err(Error::TooLarge { bytes, .. }) if bytes == MAX_PAYLOAD_BYTES as u64 + 1),
            "{res:?}"
        );
        assert_eq!(journal.append(vec![Vec::new()]).unwrap(), Seq(1));
        assert_eq!(records(&journal, 1), vec![(1, Vec::new())]);
    }

    #[test]
    fn segments_roll_over_between_transactions() {
        let dir = tempfile::tempdir().unwrap();
        let journal = open(dir.path(), small_segments(300)).journal;
        let mut txns = Vec::new();
        for idx in 0..40u64 {
            let payloads = vec![payload(idx, 40), payload(idx + 1000, 10)];
            txns.push((journal.append(payloads.clone()).unwrap().0, payloads));
        }
        let files = segment_files(dir.path());
        assert!(files.len() >= 5, "{files:?}");
        assert_eq!(files[0].file_name().unwrap(), "00000000000000000001.seg");
        let expected = flatten(&txns);
        for from in [1, 2, 17, 40, 79, 80] {
            assert_eq!(
                records(&journal, from),
                expected[from as usize - 1..],
                "from {from}"
            );
        }
        drop(journal);
        let journal = open(dir.path(), small_segments(300)).journal;
        assert_eq!(records(&journal, 1), expected);
        let report = verify(dir.path()).unwrap();
        assert_eq!(
            (report.records, report.segments, report.last_seq),
            (80, files.len() as u64, Seq(80))
        );
    }

    #[test]
    fn borrowed_reading_sees_what_the_iterator_sees() {
        let dir = tempfile::tempdir().unwrap();
        let journal = open(dir.path(), small_segments(4 << 20)).journal;
        let mut txns = Vec::new();
        // Payloads up to 300 KiB: some straddle the reader's 1 MiB chunks and
        // segment ends, so the buffer is refilled between records.
        for idx in 0..40u64 {
            let payloads = vec![
                payload(idx, (idx as usize * 7919) % 300_000),
                payload(idx, 3),
            ];
            txns.push((journal.append(payloads.clone()).unwrap().0, payloads));
        }
        assert!(segment_files(dir.path()).len() >= 2);
        let expected = flatten(&txns);
        for from in [1, 2, 41, 80] {
            let mut reader = journal.read_from(Seq(from)).unwrap();
            let mut seen = Vec::new();
            while let Some(item) = reader.next_borrowed() {
                let (seq, bytes) = item.unwrap();
                seen.push((seq.0, bytes.to_vec()));
            }
            assert!(reader.next_borrowed().is_none());
            assert_eq!(seen, expected[from as usize - 1..], "from {from}");
        }
    }

    #[test]
    fn concurrent_appenders_get_unique_gap_free_seqs() {
        let dir = tempfile::tempdir().unwrap();
        let journal = open(dir.path(), small_segments(8 << 10)).journal;
        let threads: Vec<_> = (0..8u64)
            .map(|thread_idx| {
                let journal = journal.clone();
                std::thread::spawn(move || {
                    (0..200u64)
                        .map(|idx| {
                            let tag = thread_idx * 1000 + idx;
                            let payloads: Vec<Vec<u8>> = (0..=idx % 2)
                                .map(|rec| payload(tag * 10 + rec, 20))
                                .collect();
                            (journal.append(payloads.clone()).unwrap().0, payloads)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut txns: Vec<(u64, Vec<Vec<u8>>)> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        txns.sort();
        let expected = flatten(&txns);
        assert_eq!(expected.len(), 8 * 300);
        assert!(expected
            .iter()
            .enumerate()
            .all(|(idx, (seq, _))| *seq == idx as u64 + 1));
        assert_eq!(journal.last_seq(), Seq(2400));
        assert_eq!(records(&journal, 1), expected);
        drop(journal);
        assert_eq!(
            records(&open(dir.path(), small_segments(8 << 10)).journal, 1),
            expected
        );
    }

    #[test]
    fn readers_see_whole_durable_transactions_while_appends_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let journal = open(dir.path(), small_segments(2 << 10)).journal;
        let stop = Arc::new(AtomicBool::new(false));
        let appender = {
            let journal = journal.clone();
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                for idx in 0..300u64 {
                    journal
                        .append(vec![payload(idx * 2, 25), payload(idx * 2 + 1, 25)])
                        .unwrap();
                }
                stop.store(true, Ordering::SeqCst);
            })
        };
        let mut n_reads = 0;
        while !stop.load(Ordering::SeqCst) || n_reads == 0 {
            let before = journal.last_seq().0;
            let seen = records(&journal, 1);
            assert!(
                seen.len() as u64 >= before,
                "a reader missed durable records"
            );
            assert_eq!(seen.len() % 2, 0, "a reader saw half a transaction");
            for (idx, (seq, data)) in seen.iter().enumerate() {
                assert_eq!(*seq, idx as u64 + 1);
                assert_eq!(*data, payload(idx as u64, 25));
            }
            n_reads += 1;
        }
        appender.join().unwrap();
        assert_eq!(records(&journal, 1).len(), 600);
    }

    #[test]
    fn snapshots_keep_the_newest_two_and_retention_drops_covered_segments() {
        let dir = tempfile::tempdir().unwrap();
        let options = Options {
            segment_bytes: 256,
            retain: Some(10),
            ..Default::default()
        };
        let journal = open(dir.path(), options.clone()).journal;
        for idx in 0..100u64 {
            journal.append(vec![payload(idx + 1, 30)]).unwrap();
        }
        let n_segments = segment_files(dir.path()).len();
        let size_before = journal.size_bytes();
        assert!(matches!(
            journal.write_snapshot(Seq(101), b"x"),
            Err(Error::SeqOutOfRange { .. })
        ));
        journal.write_snapshot(Seq(20), b"state@20").unwrap();
        journal.write_snapshot(Seq(40), b"state@40").unwrap();
        journal.write_snapshot(Seq(95), b"state@95").unwrap();
        assert_eq!(snapshot_files(dir.path()).len(), 2);
        let first = journal.first_seq().0;
        // Records 91..=100 are the last 10: they and anything in their segments stay.
        assert!(first > 1 && first <= 91, "first seq {first}");
        assert!(segment_files(dir.path()).len() < n_segments);
        assert!(journal.size_bytes() < size_before);
        let seen = records(&journal, 1);
        assert_eq!(seen.first().map(|(seq, _)| *seq), Some(first));
        assert_eq!(seen.len() as u64, 100 - first + 1);
        drop(journal);

        let opened = open(dir.path(), options);
        let snapshot = opened.snapshot.unwrap();
        assert_eq!(
            (snapshot.seq, snapshot.data.as_slice()),
            (Seq(95), &b"state@95"[..])
        );
        assert_eq!(opened.journal.first_seq(), Seq(first));
        assert_eq!(verify(dir.path()).unwrap().snapshot_seq, Some(Seq(95)));
    }

    #[test]
    fn a_damaged_snapshot_falls_back_to_the_one_before() {
        let dir = tempfile::tempdir().unwrap();
        let journal = open(dir.path(), Options::default()).journal;
        for idx in 0..5u64 {
            journal.append(vec![payload(idx, 10)]).unwrap();
        }
        journal.write_snapshot(Seq(2), b"two").unwrap();
        journal.write_snapshot(Seq(4), b"four").unwrap();
        drop(journal);
        let newest = snapshot_files(dir.path()).pop().unwrap();
        let mut bytes = std::fs::read(&newest).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        std::fs::write(&newest, bytes).unwrap();

        assert!(matches!(verify(dir.path()), Err(Error::Corrupt { path, .. }) if path == newest));
        let opened = open(dir.path(), Options::default());
        let snapshot = opened.snapshot.unwrap();
        assert_eq!(
            (snapshot.seq, snapshot.data.as_slice()),
            (Seq(2), &b"two"[..])
        );
        assert_eq!(opened.recovery.ignored_snapshots, vec![newest]);
    }

    #[test]
    fn async_appends_queued_together_commit_in_order_and_are_durable() {
        let dir = tempfile::tempdir().unwrap();
        let journal = open(dir.path(), Options::default()).journal;
        // All 100 are queued before the first is awaited.
        let pending: Vec<Append> = (0..100)
            .map(|idx| journal.append_async(vec![payload(idx, 40), payload(idx + 1000, 40)]))
            .collect();
        let seqs: Vec<u64> = pending
            .into_iter()
            .map(|append| block_on(append).unwrap().0)
            .collect();
        assert_eq!(seqs, (0..100).map(|idx| 1 + 2 * idx).collect::<Vec<_>>());
        drop(journal);
        let reopened = open(dir.path(), Options::default()).journal;
        let expected: Vec<(u64, Vec<u8>)> = (0..100)
            .flat_map(|idx| {
                [
                    (1 + 2 * idx, payload(idx, 40)),
                    (2 + 2 * idx, payload(idx + 1000, 40)),
                ]
            })
            .collect();
        assert_eq!(records(&reopened, 1), expected);
    }

    #[test]
    fn async_appends_are_refused_like_blocking_ones() {
        let dir = tempfile::tempdir().unwrap();
        let journal = open(dir.path(), Options::default()).journal;
        assert!(matches!(
            block_on(journal.append_async(Vec::new())),
            Err(Error::Empty)
        ));
        let huge = vec![0u8; MAX_PAYLOAD_BYTES + 1];
        assert!(matches!(
            block_on(journal.append_async(vec![huge])),
            Err(Error::TooLarge { .. })
        ));
        assert_eq!(
            block_on(journal.append_async(vec![b"a".to_vec()])).unwrap(),
            Seq(1)
        );
        journal.close();
        assert!(matches!(
            block_on(journal.append_async(vec![b"b".to_vec()])),
            Err(Error::Closed)
        ));
    }

    #[test]
    fn close_stops_appends_but_not_reads() {
        let dir = tempfile::tempdir().unwrap();
        let journal = open(dir.path(), Options::default()).journal;
        let other = journal.clone();
        journal.append(vec![b"a".to_vec()]).unwrap();
        journal.close();
        assert!(matches!(
            other.append(vec![b"b".to_vec()]),
            Err(Error::Closed)
        ));
        assert_eq!(records(&other, 1), vec![(1, b"a".to_vec())]);
        other.close();
    }
}
