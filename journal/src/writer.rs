//! The single writer thread: group commit.
//!
//! `Journal::append` queues a [`Request`] on a channel and waits for its reply.
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

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::io::IoFile;
use crate::record::{self, FLAG_BATCH_BEGIN, FLAG_BATCH_END, FLAG_TXN_END};
use crate::segment::{self, SEGMENT_HEADER_LEN};
use crate::{SegmentMeta, Seq, Shared};

/// Stop draining the queue into a batch once it holds this many payload bytes.
const MAX_BATCH_BYTES: usize = 8 << 20;
/// Drop the encoding buffer after a batch that made it larger than this.
const MAX_KEPT_BUFFER: usize = 16 << 20;

/// One queued append: a transaction and where to send its outcome.
#[derive(Debug)]
pub(crate) struct Request {
    /// The records of the transaction (at least one; checked by `Journal::append`).
    pub(crate) payloads: Vec<Vec<u8>>,
    /// Receives the seq of the first record once durable, or the error.
    pub(crate) reply: SyncSender<Result<Seq>>,
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
    /// The seq the next record gets.
    next_seq: u64,
    /// The file may hold bytes past `durable_len` from a failed batch; they must be cut
    /// (and the cut synced) before anything else is written.
    dirty: bool,
    /// Encoding buffer, reused across batches.
    buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn new(
        shared: Arc<Shared>,
        path: PathBuf,
        file: Box<dyn IoFile>,
        durable_len: u64,
        next_seq: u64,
    ) -> Writer {
        Writer {
            shared,
            path,
            file,
            durable_len,
            next_seq,
            dirty: false,
            buf: Vec::new(),
        }
    }

    /// Runs until every sender is gone and the queue is drained.
    pub(crate) fn run(mut self, requests: Receiver<Request>) {
        let mut batch = Vec::new();
        while let Ok(first) = requests.recv() {
            let mut bytes = first.bytes();
            batch.push(first);
            while bytes < MAX_BATCH_BYTES {
                match requests.try_recv() {
                    Ok(request) => {
                        bytes += request.bytes();
                        batch.push(request);
                    }
                    Err(_) => break,
                }
            }
            self.commit(&mut batch);
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
                    // The appender may have gone away; its transaction is durable anyway.
                    let _ = request.reply.send(Ok(Seq(seq)));
                    seq += n_records;
                }
            }
            Err(error) => {
                if self.dirty {
                    // Best effort now; if it fails, the next batch tries again first.
                    let _ = self.heal();
                }
                for request in batch.drain(..) {
                    let _ = request.reply.send(Err(error.duplicate()));
                }
            }
        }
        if self.buf.capacity() > MAX_KEPT_BUFFER {
            self.buf = Vec::new();
        }
    }

    fn write_batch(&mut self, batch: &[Request]) -> Result<()> {
        if self.dirty {
            self.heal()?;
        }
        if self.durable_len >= self.shared.options.segment_bytes
            && self.durable_len > SEGMENT_HEADER_LEN as u64
        {
            self.roll_over()?;
        }
        self.buf.clear();
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
                record::encode(&mut self.buf, seq, flags, payload);
                seq += 1;
            }
        }
        self.dirty = true;
        self.file
            .write_all_at(&self.buf, self.durable_len)
            .map_err(|e| Error::io("write", &self.path, e))?;
        self.file
            .sync_data()
            .map_err(|e| Error::io("fdatasync", &self.path, e))?;
        self.dirty = false;
        self.durable_len += self.buf.len() as u64;
        self.next_seq = seq;
        self.shared.publish(self.durable_len, seq - 1);
        Ok(())
    }

    /// Cuts whatever a failed batch left past the durable end, and syncs the cut.
    fn heal(&mut self) -> Result<()> {
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
        let (path, file) =
            segment::create(&*self.shared.options.io, &self.shared.dir, self.next_seq)?;
        self.shared.push_segment(SegmentMeta {
            first_seq: self.next_seq,
            path: path.clone(),
            len: SEGMENT_HEADER_LEN as u64,
        });
        self.path = path;
        self.file = file;
        self.durable_len = SEGMENT_HEADER_LEN as u64;
        Ok(())
    }
}
