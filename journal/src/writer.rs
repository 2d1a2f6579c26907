//! The single writer thread: group commit.
//!
//! `Journal::append` queues a [`Request`] on a channel and waits on its [`Reply`].
//! The writer takes the first request, drains whatever else is queued (up to
//! `MAX_BATCH_BYTES`), encodes all of it into one buffer, writes it with one call,
//! does one `fdatasync`, publishes the new durable end, and only then replies to
//! each request. While it syncs, new requests queue up and form the next batch, so
//! the number of syncs per second stays that of one appender however many there are.
//!
//! A batch that fails (write error, short write, `ENOSPC`, fsync error) is replied
//! with the error, consumes no seq, and is cut off the file: the writer truncates the
//! segment back to the last durable length and syncs that before writing anything
//! else. It never assumes that bytes a failed fsync covered are on disk ("fsyncgate"):
//! the whole batch is written again by later appends, from the durable end.
//!
//! Before each batch and again after its `fdatasync`, the writer checks that the active
//! segment is still the journal's: linked (an `fstat` link count above 0), as long as
//! the writer made it (not truncated under it), and, after the sync, still the file at
//! its path (a `stat` of the path gives its device and inode), so that a journal
//! directory deleted, moved or replaced is noticed. If not, the batch is not
//! acknowledged and the journal is marked tampered: every later append fails at once
//! ([`Error::Tampered`]). Rollover, snapshots and retention never trip this: the
//! writer itself switches to a new segment, and only older segments are ever deleted.

use std::path::PathBuf;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::io::{FileStatus, IoFile};
use crate::record::{self, FLAG_BATCH_BEGIN, FLAG_BATCH_END, FLAG_TXN_END};
use crate::segment::{self, SEGMENT_HEADER_LEN};
use crate::{SegmentMeta, Seq, Shared};

/// Stop draining the queue into a batch once it holds this many payload bytes.
const MAX_BATCH_BYTES: usize = 8 << 20;
/// Drop the encoding buffer after a batch that made it larger than this.
const MAX_KEPT_BUFFER: usize = 16 << 20;

/// The appenders a commit answered are expected back (a loop of appends, or
/// many clients at a steady rate). When fewer are queued than the last commit
/// answered, the writer waits up to this fraction of the last commit's duration
/// for the rest, so that they share the next `fdatasync` instead of splitting into
/// a small batch (whoever was back first) and a large one. One appender in a loop
/// never waits; the first append after a burst of many can wait that long (at most
/// `MAX_GATHER`) for appenders that are not coming back. Skipping the wait after a
/// quiet spell measured no better (benches/README.md).
const GATHER_FRACTION: u32 = 4;
/// How long the writer naps between looks at the queue while it gathers.
const GATHER_NAP: Duration = Duration::from_micros(20);
/// The longest such wait, whatever the last commit took.
const MAX_GATHER: Duration = Duration::from_micros(500);

/// Moves whatever is queued into `batch`, up to [`MAX_BATCH_BYTES`].
fn drain_queue(requests: &Receiver<Request>, batch: &mut Vec<Request>, bytes: &mut usize) {
    while *bytes < MAX_BATCH_BYTES {
        match requests.try_recv() {
            Ok(request) => {
                *bytes += request.bytes();
                batch.push(request);
            }
            Err(_) => break,
        }
    }
}

/// Adds requests to `batch` until it holds `expected` of them, it is full, or `wait`
/// has passed. It naps and drains rather than blocking on the queue, so the
/// returning appenders do not wake the writer one by one.
fn gather(
    requests: &Receiver<Request>,
    batch: &mut Vec<Request>,
    bytes: &mut usize,
    expected: usize,
    wait: Duration,
) {
    let deadline = Instant::now() + wait;
    while batch.len() < expected && *bytes < MAX_BATCH_BYTES {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(GATHER_NAP));
        drain_queue(requests, batch, bytes);
    }
}

/// Asks the kernel to end this thread's naps on time: by default Linux lets a
/// sleep run late (timer slack, to batch wake-ups), which made each short
/// gathering nap last several times its length. Best effort: without it naps
/// are only longer.
fn precise_naps() {
    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer and touches only this thread's
    // timer slack; it cannot affect memory.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1_000 as libc::c_ulong);
    }
}

/// One queued append: a transaction and where to send its outcome.
#[derive(Debug)]
pub(crate) struct Request {
    /// The records of the transaction (at least one; checked by `Journal::append`).
    pub(crate) payloads: Vec<Vec<u8>>,
    /// Receives the seq of the first record once durable, or the error.
    pub(crate) reply: Arc<Reply>,
}

impl Drop for Request {
    fn drop(&mut self) {
        // A request dropped unanswered (the writer is gone) must not leave its appender waiting.
        self.reply.send_if_empty(Err(Error::Closed));
    }
}

/// Where the writer puts the outcome of one append, and the appender waits for it.
///
/// A mutex and condvar rather than a channel: the waiting appender blocks at once
/// instead of spinning and yielding first, which matters with many appenders on few cores.
/// An async appender ([`crate::Append`]) leaves a waker instead; then the writer wakes
/// a task (a queue push in its runtime) rather than a thread (a futex syscall and a
/// context switch), which is what lets many appenders share a few cores.
#[derive(Debug, Default)]
pub(crate) struct Reply {
    slot: Mutex<Slot>,
    ready: Condvar,
}

/// The state behind [`Reply`]'s mutex.
#[derive(Debug, Default)]
struct Slot {
    outcome: Option<Result<Seq>>,
    /// The task to wake, for an async appender.
    waker: Option<Waker>,
    /// A thread is blocked in [`Reply::wait`] (the condvar is signalled only then).
    thread_waiting: bool,
}

impl Reply {
    /// Stores the outcome, unless there is one already, and wakes the appender.
    pub(crate) fn send_if_empty(&self, outcome: Result<Seq>) {
        let mut slot = self.slot.lock().unwrap();
        if slot.outcome.is_none() {
            slot.outcome = Some(outcome);
            let waker = slot.waker.take();
            let thread_waiting = slot.thread_waiting;
            drop(slot);
            if let Some(waker) = waker {
                waker.wake();
            }
            if thread_waiting {
                self.ready.notify_one();
            }
        }
    }

    /// Blocks the thread until the outcome is there.
    pub(crate) fn wait(&self) -> Result<Seq> {
        let mut slot = self.slot.lock().unwrap();
        loop {
            if let Some(outcome) = slot.outcome.take() {
                return outcome;
            }
            slot.thread_waiting = true;
            slot = self.ready.wait(slot).unwrap();
        }
    }

    /// Takes the outcome if it is there, or leaves `waker` to be woken when it comes.
    pub(crate) fn poll(&self, waker: &Waker) -> Poll<Result<Seq>> {
        let mut slot = self.slot.lock().unwrap();
        if let Some(outcome) = slot.outcome.take() {
            return Poll::Ready(outcome);
        }
        match &mut slot.waker {
            Some(kept) if kept.will_wake(waker) => {}
            kept => *kept = Some(waker.clone()),
        }
        Poll::Pending
    }
}

impl Request {
    fn bytes(&self) -> usize {
        self.payloads
            .iter()
            .map(|p| p.len() + record::HEADER_LEN)
            .sum()
    }
}

/// The state only the writer thread touches.
#[derive(Debug)]
pub(crate) struct Writer {
    shared: Arc<Shared>,
    /// The active (last) segment.
    path: PathBuf,
    file: Box<dyn IoFile>,
    /// Length of the active segment that is synced and published. Writes go here.
    durable_len: u64,
    /// The file's length: from `durable_len` to here it holds zeros written ahead
    /// (see [`crate::Options::preallocate_bytes`]). The file is never shorter than this
    /// unless something else cut it (the writer lowers it before it truncates).
    allocated_len: u64,
    /// Device and inode of the active segment, from `fstat` when it was opened: the
    /// file at `path` must still be this one.
    file_id: Option<(u64, u64)>,
    /// Writing zeros ahead failed in this segment (a full disk, most likely): the
    /// writer no longer tries until the next segment.
    preallocation_failed: bool,
    /// The seq the next record gets.
    next_seq: u64,
    /// The file may hold bytes past `durable_len` from a failed batch; they must be cut
    /// (and the cut synced) before anything else is written.
    dirty: bool,
    /// Encoding buffer, reused across batches.
    buf: Vec<u8>,
    /// Offset of the active segment's last mark (its header's end if none).
    last_mark: u64,
    /// Marks of the batch being written, published once it is durable.
    marks: Vec<crate::segment::Mark>,
}

impl Writer {
    pub(crate) fn new(
        shared: Arc<Shared>,
        path: PathBuf,
        file: Box<dyn IoFile>,
        durable_len: u64,
        next_seq: u64,
    ) -> Writer {
        // Unknown length: assume no zeros ahead; writing zeros over zeros is harmless.
        let allocated_len = file.file_len().unwrap_or(durable_len).max(durable_len);
        let file_id = file.status().ok().and_then(|status| status.id);
        let last_mark = shared
            .last_mark_offset()
            .unwrap_or(SEGMENT_HEADER_LEN as u64);
        Writer {
            shared,
            path,
            file,
            durable_len,
            allocated_len,
            file_id,
            preallocation_failed: false,
            next_seq,
            dirty: false,
            buf: Vec::new(),
            last_mark,
            marks: Vec::new(),
        }
    }

    /// Runs until every sender is gone and the queue is drained.
    pub(crate) fn run(mut self, requests: Receiver<Request>) {
        precise_naps();
        let mut batch = Vec::new();
        // How many appends the last commit answered, and how long it took.
        let mut answered = 0;
        let mut last_commit = Duration::ZERO;
        while let Ok(first) = requests.recv() {
            let mut bytes = first.bytes();
            batch.push(first);
            drain_queue(&requests, &mut batch, &mut bytes);
            if batch.len() < answered {
                let wait = (last_commit / GATHER_FRACTION).min(MAX_GATHER);
                gather(&requests, &mut batch, &mut bytes, answered, wait);
            }
            let started = Instant::now();
            answered = batch.len();
            self.commit(&mut batch);
            last_commit = started.elapsed();
        }
    }

    /// Writes one batch and replies to each of its requests.
    fn commit(&mut self, batch: &mut Vec<Request>) {
        let first_seq = self.next_seq;
        match self.write_batch(batch) {
            Ok(()) => {
                let mut seq = first_seq;
                for request in batch.drain(..) {
                    let n_records = request.payloads.len() as u64;
                    request.reply.send_if_empty(Ok(Seq(seq)));
                    seq += n_records;
                }
            }
            Err(error) => {
                if matches!(error, Error::Tampered { .. }) {
                    // The file is not the journal's any more: leave it as it is.
                    self.shared.set_tampered(&error);
                } else if self.dirty {
                    // Best effort now; if it fails, the next batch tries again first.
                    let _ = self.heal();
                }
                for request in batch.drain(..) {
                    request.reply.send_if_empty(Err(error.duplicate()));
                }
            }
        }
        if self.buf.capacity() > MAX_KEPT_BUFFER {
            self.buf = Vec::new();
        }
    }

    fn write_batch(&mut self, batch: &[Request]) -> Result<()> {
        if let Some(error) = self.shared.tampered() {
            return Err(error);
        }
        // Before healing, which would lengthen a file cut under us back to `durable_len`.
        self.check_open_file()?;
        if self.dirty {
            self.heal()?;
        }
        if self.durable_len >= self.shared.options.segment_bytes
            && self.durable_len > SEGMENT_HEADER_LEN as u64
        {
            self.roll_over()?;
        }
        self.buf.clear();
        self.marks.clear();
        let mut last_mark = self.last_mark;
        let mut seq = self.next_seq;
        for (txn_idx, request) in batch.iter().enumerate() {
            for (record_idx, payload) in request.payloads.iter().enumerate() {
                let mut flags = 0;
                if txn_idx == 0 && record_idx == 0 {
                    flags |= FLAG_BATCH_BEGIN;
                }
                if record_idx + 1 == request.payloads.len() {
                    flags |= FLAG_TXN_END;
                    if txn_idx + 1 == batch.len() {
                        flags |= FLAG_BATCH_END;
                    }
                }
                let offset = self.durable_len + self.buf.len() as u64;
                if offset >= last_mark + crate::segment::MARK_EVERY_BYTES {
                    self.marks.push(crate::segment::Mark { seq, offset });
                    last_mark = offset;
                }
                record::encode(&mut self.buf, seq, flags, payload);
                seq += 1;
            }
        }
        self.dirty = true;
        self.file
            .write_all_at(&self.buf, self.durable_len)
            .map_err(|e| Error::io("write", &self.path, e))?;
        let end = self.durable_len + self.buf.len() as u64;
        let extended = end > self.allocated_len;
        if extended {
            self.allocated_len = end;
            self.preallocate(end);
        }
        if let Err(e) = self.file.sync_data() {
            if extended {
                self.preallocation_failed = true;
            }
            return Err(Error::io("fdatasync", &self.path, e));
        }
        // Only a batch synced into the journal's own file is acknowledged.
        self.check_open_file()?;
        self.check_path()?;
        self.dirty = false;
        self.durable_len = end;
        self.next_seq = seq;
        self.last_mark = last_mark;
        self.shared.publish(self.durable_len, seq - 1, &self.marks);
        Ok(())
    }

    /// Writes zeros after `end`, the end of the batch being committed, so that the next
    /// commits overwrite zeros instead of growing the file: their `fdatasync` then has
    /// no file size to write (faster on ext4; benches/README.md). This commit's sync
    /// covers the zeros. A failure
    /// (a full disk) gives back what it wrote and stops preallocation for this segment.
    fn preallocate(&mut self, end: u64) {
        let ahead = self
            .shared
            .options
            .preallocate_bytes
            .min(self.shared.options.segment_bytes);
        if ahead == 0 || self.preallocation_failed {
            return;
        }
        match self.write_zeros(end, ahead) {
            Ok(()) => self.allocated_len = end + ahead,
            Err(_) => {
                // Give back what part of the zeros went in: other files need the room more.
                let _ = self.file.set_len(end);
                self.preallocation_failed = true;
            }
        }
    }

    /// Writes `len` zeros at `at`, from one static block of zeros: no buffer
    /// is allocated inside the commit (a fresh one per call cost page faults
    /// and cleared memory there; benches/README.md).
    fn write_zeros(&self, at: u64, len: u64) -> std::io::Result<()> {
        static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
        let mut written = 0;
        while written < len {
            let n = (len - written).min(ZEROS.len() as u64);
            self.file.write_all_at(&ZEROS[..n as usize], at + written)?;
            written += n;
        }
        Ok(())
    }

    /// Checks with `fstat` that the active segment is still linked and at least as long
    /// as the writer made it ([`Writer::allocated_len`]).
    fn check_open_file(&self) -> Result<()> {
        let status = self
            .file
            .status()
            .map_err(|e| Error::io("fstat", &self.path, e))?;
        if status.links == Some(0) {
            return Err(self.tampered(
                "the active segment was deleted or replaced (the file being written has no name \
                 left: the journal directory or the file was removed, or another file renamed \
                 over it)",
            ));
        }
        if status.len < self.allocated_len {
            return Err(self.tampered(&format!(
                "the active segment was truncated to {} bytes, while {} had been written to it",
                status.len, self.allocated_len
            )));
        }
        Ok(())
    }

    /// Checks with `stat` that the file at the active segment's path is the one open.
    fn check_path(&self) -> Result<()> {
        use std::io::ErrorKind;
        let what = match self.shared.options.io.status(&self.path) {
            Ok(FileStatus { id: found, .. })
                if found.is_some() && self.file_id.is_some() && found != self.file_id =>
            {
                "another file is at the active segment's path (the journal directory or the file \
                 was replaced)"
            }
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                "the active segment is no longer at its path (the journal directory or the file \
                 was deleted or moved)"
            }
            Err(e) if e.kind() == ErrorKind::NotADirectory => {
                "the journal directory was replaced by a file"
            }
            Err(e) => return Err(Error::io("stat", &self.path, e)),
        };
        Err(self.tampered(what))
    }

    fn tampered(&self, what: &str) -> Error {
        Error::Tampered {
            path: self.path.clone(),
            what: what.to_string(),
        }
    }

    /// Cuts whatever a failed batch left past the durable end, and syncs the cut.
    fn heal(&mut self) -> Result<()> {
        self.allocated_len = self.durable_len;
        self.file
            .set_len(self.durable_len)
            .map_err(|e| Error::io("truncate", &self.path, e))?;
        self.file
            .sync_data()
            .map_err(|e| Error::io("fdatasync", &self.path, e))?;
        self.dirty = false;
        Ok(())
    }

    /// Starts a new segment whose first record will be `next_seq`.
    fn roll_over(&mut self) -> Result<()> {
        if self.allocated_len > self.durable_len {
            // The sealed segment keeps no zeros; if this fails or is lost in a crash,
            // recovery takes the zeros for what they are. Lowered first: if the new segment
            // cannot be made, this one stays active, shorter, and must not look cut.
            self.allocated_len = self.durable_len;
            let _ = self.file.set_len(self.durable_len);
        }
        let (path, file) =
            segment::create(&*self.shared.options.io, &self.shared.dir, self.next_seq)?;
        self.shared.push_segment(SegmentMeta {
            first_seq: self.next_seq,
            path: path.clone(),
            len: SEGMENT_HEADER_LEN as u64,
            marks: crate::segment::Marks::default(),
        });
        self.path = path;
        self.file_id = file.status().ok().and_then(|status| status.id);
        self.file = file;
        self.durable_len = SEGMENT_HEADER_LEN as u64;
        self.last_mark = self.durable_len;
        self.allocated_len = self.durable_len;
        self.preallocation_failed = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::segment::SEGMENT_HEADER_LEN;
    use crate::testing::{block_on, faulty, open, payload, records, segment_files};
    use crate::{verify, Error, Journal, Seq};

    /// The raw OS error an append failed with, if it failed with an I/O error.
    fn os_error(res: crate::Result<Seq>) -> Option<i32> {
        match res {
            Err(Error::Io { source, .. }) => source.raw_os_error(),
            other => panic!("expected an I/O error, got {other:?}"),
        }
    }

    /// The bytes of the segment files: what a later open (or a crash) would see.
    fn on_disk_len(dir: &std::path::Path) -> u64 {
        segment_files(dir)
            .iter()
            .map(|path| std::fs::metadata(path).unwrap().len())
            .sum()
    }

    /// Appends `n` one-record transactions tagged from `tag`, checking their seqs start at `first`.
    fn append_n(journal: &Journal, first: u64, tag: u64, n: u64) {
        for idx in 0..n {
            assert_eq!(
                journal.append(vec![payload(tag + idx, 40)]).unwrap(),
                Seq(first + idx)
            );
        }
    }

    fn expected(tags: &[(u64, u64)]) -> Vec<(u64, Vec<u8>)> {
        tags.iter()
            .enumerate()
            .map(|(idx, (_, tag))| (idx as u64 + 1, payload(*tag, 40)))
            .collect()
    }

    #[test]
    fn a_short_write_fails_the_append_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let (options, faults) = faulty(64 << 20);
        let journal = open(dir.path(), options.clone()).journal;
        append_n(&journal, 1, 100, 3);
        faults.fail_next_write_short();
        let res = journal.append(vec![payload(999, 400)]);
        assert!(
            matches!(&res, Err(Error::Io { op: "write", source, .. }) if source.kind() == std::io::ErrorKind::WriteZero)
        );
        assert_eq!(journal.last_seq(), Seq(3));
        assert_eq!(on_disk_len(dir.path()), journal.size_bytes());
        append_n(&journal, 4, 103, 2);
        drop(journal);
        let reopened = open(dir.path(), options);
        assert_eq!(reopened.recovery.truncated_bytes, 0);
        assert_eq!(
            records(&reopened.journal, 1),
            expected(&[(1, 100), (2, 101), (3, 102), (4, 103), (5, 104)])
        );
        verify(dir.path()).unwrap();
    }

    #[test]
    fn an_fsync_error_fails_the_append_and_the_batch_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let (options, faults) = faulty(64 << 20);
        let journal = open(dir.path(), options.clone()).journal;
        append_n(&journal, 1, 100, 2);
        faults.fail_next_sync();
        assert_eq!(os_error(journal.append(vec![payload(999, 40)])), Some(5));
        assert_eq!(records(&journal, 1).len(), 2);
        // An async append gets the same error.
        faults.fail_next_sync();
        let failed = block_on(journal.append_async(vec![payload(998, 40)]));
        assert_eq!(os_error(failed), Some(5));
        assert_eq!(records(&journal, 1).len(), 2);
        assert_eq!(on_disk_len(dir.path()), journal.size_bytes());
        append_n(&journal, 3, 102, 1);
        drop(journal);
        let reopened = open(dir.path(), options);
        assert_eq!(
            records(&reopened.journal, 1),
            expected(&[(1, 100), (2, 101), (3, 102)])
        );
    }

    #[test]
    fn a_failed_cleanup_is_retried_before_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let (options, faults) = faulty(64 << 20);
        let journal = open(dir.path(), options.clone()).journal;
        append_n(&journal, 1, 100, 1);
        faults.fail_next_sync();
        faults.fail_next_set_len();
        assert_eq!(os_error(journal.append(vec![payload(999, 40)])), Some(5));
        // The failed batch may still be in the file, but past the durable end: invisible.
        assert_eq!(records(&journal, 1).len(), 1);
        append_n(&journal, 2, 101, 1);
        drop(journal);
        let reopened = open(dir.path(), options);
        assert_eq!(
            records(&reopened.journal, 1),
            expected(&[(1, 100), (2, 101)])
        );
    }

    #[test]
    fn a_disk_too_full_for_the_zeros_ahead_still_takes_appends_that_fit() {
        let dir = tempfile::tempdir().unwrap();
        let (mut options, faults) = faulty(64 << 20);
        let zeros_ahead = 4096;
        options.preallocate_bytes = zeros_ahead;
        let journal = open(dir.path(), options.clone()).journal;
        append_n(&journal, 1, 100, 1);
        assert_eq!(on_disk_len(dir.path()), journal.size_bytes() + zeros_ahead);
        // Room for the file as it is plus 10 records (60 bytes each), not for more zeros.
        faults.set_room(Some(on_disk_len(dir.path()) + 10 * 60));
        let appended = (zeros_ahead + 10 * 60) / 60;
        append_n(&journal, 2, 101, appended);
        let res = journal.append(vec![payload(999, 40)]);
        assert_eq!(os_error(res), Some(28), "the disk is full at last");
        assert_eq!(records(&journal, 1).len() as u64, 1 + appended);
        assert_eq!(
            on_disk_len(dir.path()),
            journal.size_bytes(),
            "zeros that did not fit were given back"
        );
        faults.set_room(None);
        append_n(&journal, 2 + appended, 200, 1);
        drop(journal);
        let reopened = open(dir.path(), options);
        assert_eq!(reopened.recovery, crate::Recovery::default());
        assert_eq!(records(&reopened.journal, 1).len() as u64, 2 + appended);
        verify(dir.path()).unwrap();
    }

    #[test]
    fn zeros_ahead_longer_than_the_block_of_zeros_are_all_written() {
        let dir = tempfile::tempdir().unwrap();
        let (mut options, _faults) = faulty(64 << 20);
        // Not a multiple of the 64 KiB block the zeros are written from.
        let zeros_ahead = 200 * 1024 + 123;
        options.preallocate_bytes = zeros_ahead;
        let journal = open(dir.path(), options.clone()).journal;
        append_n(&journal, 1, 100, 1);
        let file_len = journal.size_bytes() + zeros_ahead;
        assert_eq!(on_disk_len(dir.path()), file_len);
        // The next records go over the zeros; the file does not grow.
        append_n(&journal, 2, 101, 2);
        let data = journal.size_bytes();
        assert_eq!(on_disk_len(dir.path()), file_len);
        let bytes = std::fs::read(&segment_files(dir.path())[0]).unwrap();
        let at = usize::try_from(data).unwrap();
        assert!(
            bytes[at..].iter().all(|&b| b == 0),
            "only zeros after the records"
        );
        drop(journal);
        let reopened = open(dir.path(), options);
        assert_eq!(records(&reopened.journal, 1).len(), 3);
    }

    #[test]
    fn a_sealed_segment_keeps_no_zeros_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let journal = open(dir.path(), crate::testing::small_segments(4096)).journal;
        append_n(&journal, 1, 100, 200);
        let files = segment_files(dir.path());
        assert!(files.len() > 2);
        let active_len = std::fs::metadata(files.last().unwrap()).unwrap().len();
        drop(journal);
        for sealed in &files[..files.len() - 1] {
            let bytes = std::fs::read(sealed).unwrap();
            assert_ne!(bytes.last(), Some(&0), "{}", sealed.display());
        }
        let reopened = open(dir.path(), crate::testing::small_segments(4096));
        assert_eq!(reopened.recovery, crate::Recovery::default());
        assert_eq!(records(&reopened.journal, 1).len(), 200);
        assert!(active_len > 0);
    }

    #[test]
    fn enospc_stays_detectable_and_the_journal_recovers_when_space_returns() {
        let dir = tempfile::tempdir().unwrap();
        let (options, faults) = faulty(64 << 20);
        let journal = open(dir.path(), options.clone()).journal;
        append_n(&journal, 1, 100, 2);
        faults.set_enospc(true);
        for _ in 0..3 {
            let res = journal.append(vec![payload(999, 300), payload(998, 300)]);
            assert!(
                matches!(&res, Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::StorageFull)
            );
            assert_eq!(os_error(res), Some(28));
        }
        assert_eq!(on_disk_len(dir.path()), journal.size_bytes());
        faults.set_enospc(false);
        append_n(&journal, 3, 102, 2);
        drop(journal);
        let reopened = open(dir.path(), options);
        assert_eq!(
            records(&reopened.journal, 1),
            expected(&[(1, 100), (2, 101), (3, 102), (4, 103)])
        );
    }

    #[test]
    fn enospc_during_rollover_leaves_no_segment_behind() {
        let dir = tempfile::tempdir().unwrap();
        let (options, faults) = faulty(100);
        let journal = open(dir.path(), options.clone()).journal;
        append_n(&journal, 1, 100, 2);
        let files = segment_files(dir.path());
        faults.set_enospc(true);
        assert_eq!(os_error(journal.append(vec![payload(999, 40)])), Some(28));
        assert_eq!(segment_files(dir.path()), files);
        faults.set_enospc(false);
        append_n(&journal, 3, 102, 1);
        assert_eq!(segment_files(dir.path()).len(), files.len() + 1);
        drop(journal);
        let reopened = open(dir.path(), options);
        assert_eq!(
            records(&reopened.journal, 1),
            expected(&[(1, 100), (2, 101), (3, 102)])
        );
        verify(dir.path()).unwrap();
    }

    /// The `what` of an `Error::Tampered`, panicking on anything else.
    fn tampered(res: crate::Result<Seq>) -> String {
        match res {
            Err(Error::Tampered { what, .. }) => what,
            other => panic!("expected Error::Tampered, got {other:?}"),
        }
    }

    /// After tampering: the journal says so, and every append and snapshot fails at
    /// once, without writing anything.
    fn check_refuses_everything(journal: &Journal, faults: &crate::FaultyIo, last: u64) {
        assert!(matches!(journal.tampered(), Some(Error::Tampered { .. })));
        let writes = faults.writes();
        for _ in 0..3 {
            tampered(journal.append(vec![payload(7, 40)]));
            tampered(block_on(journal.append_async(vec![payload(8, 40)])));
        }
        assert!(matches!(
            journal.write_snapshot(Seq(last), b"state"),
            Err(Error::Tampered { .. })
        ));
        assert_eq!(
            faults.writes(),
            writes,
            "nothing written after the detection"
        );
        assert_eq!(journal.last_seq(), Seq(last));
    }

    #[test]
    fn an_append_after_the_active_segment_was_deleted_fails_and_so_does_every_later_one() {
        let dir = tempfile::tempdir().unwrap();
        let (options, faults) = faulty(64 << 20);
        let journal = open(dir.path(), options).journal;
        append_n(&journal, 1, 100, 3);
        assert!(journal.tampered().is_none());
        std::fs::remove_file(segment_files(dir.path()).pop().unwrap()).unwrap();
        let what = tampered(journal.append(vec![payload(999, 40)]));
        assert!(what.contains("deleted"), "{what}");
        check_refuses_everything(&journal, &faults, 3);
    }

    #[test]
    fn an_append_after_the_journal_directory_was_removed_or_replaced_fails() {
        type Tamper = fn(&std::path::Path);
        let cases: [(&str, Tamper, &str); 5] = [
            (
                "removed",
                |dir| std::fs::remove_dir_all(dir).unwrap(),
                "deleted",
            ),
            (
                "moved away and a file put in its place",
                |dir| {
                    std::fs::rename(dir, dir.with_extension("old")).unwrap();
                    std::fs::write(dir, b"not a directory").unwrap();
                },
                "replaced by a file",
            ),
            (
                "moved away and made again, empty",
                |dir| {
                    std::fs::rename(dir, dir.with_extension("old")).unwrap();
                    std::fs::create_dir(dir).unwrap();
                },
                "no longer at its path",
            ),
            (
                "replaced by a copy",
                |dir| {
                    let copy = dir.with_extension("copy");
                    std::fs::create_dir(&copy).unwrap();
                    for path in segment_files(dir) {
                        std::fs::copy(&path, copy.join(path.file_name().unwrap())).unwrap();
                    }
                    std::fs::rename(dir, dir.with_extension("old")).unwrap();
                    std::fs::rename(&copy, dir).unwrap();
                },
                "another file",
            ),
            (
                "its active segment replaced by a copy",
                |dir| {
                    let active = segment_files(dir).pop().unwrap();
                    let copy = active.with_extension("copy");
                    std::fs::copy(&active, &copy).unwrap();
                    std::fs::rename(&copy, &active).unwrap();
                },
                "replaced",
            ),
        ];
        for (case, tamper, expected) in cases {
            let base = tempfile::tempdir().unwrap();
            let dir = base.path().join("journal");
            let (options, faults) = faulty(64 << 20);
            let journal = open(&dir, options).journal;
            append_n(&journal, 1, 100, 2);
            tamper(&dir);
            let what = tampered(journal.append(vec![payload(999, 40)]));
            assert!(what.contains(expected), "{case}: {what}");
            check_refuses_everything(&journal, &faults, 2);
        }
    }

    #[test]
    fn an_append_after_the_active_segment_was_truncated_fails() {
        for zeros_ahead in [0, 4096] {
            for cut_to in [0, SEGMENT_HEADER_LEN as u64, 100] {
                let dir = tempfile::tempdir().unwrap();
                let (mut options, faults) = faulty(64 << 20);
                options.preallocate_bytes = zeros_ahead;
                let journal = open(dir.path(), options).journal;
                append_n(&journal, 1, 100, 3);
                let active = segment_files(dir.path()).pop().unwrap();
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&active)
                    .unwrap()
                    .set_len(cut_to)
                    .unwrap();
                let what = tampered(journal.append(vec![payload(999, 40)]));
                assert!(what.contains("truncated"), "{zeros_ahead} {cut_to}: {what}");
                check_refuses_everything(&journal, &faults, 3);
                assert_eq!(
                    std::fs::metadata(&active).unwrap().len(),
                    cut_to,
                    "the writer left the cut file alone"
                );
            }
        }
    }

    #[test]
    fn a_segment_deleted_or_cut_during_the_sync_is_not_acknowledged() {
        type Tamper = fn(&std::path::Path);
        let cases: [(Tamper, &str); 2] = [
            (|active| std::fs::remove_file(active).unwrap(), "deleted"),
            (
                |active| {
                    let file = std::fs::OpenOptions::new()
                        .write(true)
                        .open(active)
                        .unwrap();
                    file.set_len(SEGMENT_HEADER_LEN as u64).unwrap();
                },
                "truncated",
            ),
        ];
        for (tamper, expected) in cases {
            let dir = tempfile::tempdir().unwrap();
            let (options, faults) = faulty(64 << 20);
            let journal = open(dir.path(), options).journal;
            append_n(&journal, 1, 100, 2);
            let active = segment_files(dir.path()).pop().unwrap();
            let syncs = faults.syncs();
            // The sync lasts long enough to tamper while the batch is written but not answered.
            faults.set_sync_delay(Duration::from_millis(300));
            let appender = {
                let journal = journal.clone();
                std::thread::spawn(move || journal.append(vec![payload(999, 40)]))
            };
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while faults.syncs() == syncs {
                assert!(std::time::Instant::now() < deadline, "the sync never began");
                std::thread::sleep(Duration::from_millis(1));
            }
            tamper(&active);
            let what = tampered(appender.join().unwrap());
            assert!(what.contains(expected), "{what}");
            faults.set_sync_delay(Duration::ZERO);
            check_refuses_everything(&journal, &faults, 2);
        }
    }

    #[test]
    fn rollover_snapshots_retention_and_failed_batches_never_look_like_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let (mut options, faults) = faulty(2048);
        options.retain = Some(20);
        options.preallocate_bytes = 512;
        let journal = open(dir.path(), options.clone()).journal;
        let threads: Vec<_> = (0..4u64)
            .map(|thread_idx| {
                let journal = journal.clone();
                std::thread::spawn(move || {
                    for idx in 0..150 {
                        match journal.append(vec![payload(thread_idx * 1000 + idx, 40)]) {
                            // The injected fsync errors below.
                            Ok(_)
                            | Err(Error::Io {
                                op: "fdatasync", ..
                            }) => {}
                            Err(e) => panic!("append: {e}"),
                        }
                    }
                })
            })
            .collect();
        for round in 0..30 {
            // Snapshots delete covered segments while appends go on.
            let last = journal.last_seq();
            match journal.write_snapshot(last, b"state") {
                // The injected fsync error below, if the snapshot's sync drew it.
                Ok(())
                | Err(Error::Io {
                    op: "fdatasync", ..
                }) => {}
                Err(e) => panic!("snapshot: {e}"),
            }
            if round % 10 == 5 {
                // A failed batch is cut off (`heal`), not taken for a truncation.
                faults.fail_next_sync();
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        for thread in threads {
            thread.join().unwrap();
        }
        journal
            .write_snapshot(journal.last_seq(), b"state")
            .unwrap();
        assert!(
            journal.first_seq() > Seq(1),
            "segments rolled over and went"
        );
        assert!(journal.tampered().is_none());
        journal.append(vec![payload(1, 40)]).unwrap();
        drop(journal);
        verify(dir.path()).unwrap();
    }

    #[test]
    fn concurrent_appends_share_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let (options, faults) = faulty(64 << 20);
        let journal = open(dir.path(), options).journal;
        let syncs_before = faults.syncs();
        faults.set_sync_delay(Duration::from_millis(20));
        let threads: Vec<_> = (0..16u64)
            .map(|thread_idx| {
                let journal = journal.clone();
                std::thread::spawn(move || {
                    for idx in 0..5 {
                        journal
                            .append(vec![payload(thread_idx * 100 + idx, 40)])
                            .unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let n_syncs = faults.syncs() - syncs_before;
        assert_eq!(journal.last_seq(), Seq(80));
        assert!(
            n_syncs <= 40,
            "80 appends from 16 threads took {n_syncs} syncs"
        );
    }

    #[test]
    fn dropping_the_last_handle_commits_queued_appends() {
        let dir = tempfile::tempdir().unwrap();
        let (options, faults) = faulty(64 << 20);
        let journal = open(dir.path(), options.clone()).journal;
        faults.set_sync_delay(Duration::from_millis(5));
        let threads: Vec<_> = (0..4u64)
            .map(|thread_idx| {
                let journal = journal.clone();
                std::thread::spawn(move || {
                    journal
                        .append(vec![payload(thread_idx, 10)])
                        .map(|seq| seq.0)
                })
            })
            .collect();
        drop(journal);
        let mut seqs: Vec<u64> = threads
            .into_iter()
            .map(|t| t.join().unwrap().unwrap())
            .collect();
        seqs.sort();
        assert_eq!(seqs, vec![1, 2, 3, 4]);
        assert_eq!(records(&open(dir.path(), options).journal, 1).len(), 4);
    }
}
