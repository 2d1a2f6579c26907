//! The event log: where a commit becomes durable and is read back.
//!
//! [`EventLog`] is the one seam between aliasd and the log it keeps its
//! events in. The registry's writer appends commits to it, start-up replays
//! it, and the feed (`crate::feed`) and history read it; nothing else knows
//! which log it is. [`file::FileLog`], the project's own journal on the local
//! disk, is the single-host log. A fleet adds a log that other writers
//! append to as well: their commits arrive through
//! [`EventLog::remote_commits`] and are applied by the writer through the
//! same `Index::apply` path as its own.
//!
//! Architecture invariant: the log stores opaque payloads numbered by
//! gap-free seqs; it knows nothing of aliases.

pub mod file;
#[cfg(test)]
pub mod memory;
pub mod nats;

use std::sync::Arc;

/// Why the log refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The local journal failed (full disk, I/O error, damage, tampering).
    #[error(transparent)]
    Journal(#[from] journal::Error),
    /// The log's service cannot be reached now; nothing was appended.
    #[error("the event log is unavailable: {0}")]
    Unavailable(String),
    /// Another writer appended to the shared log first; nothing was
    /// appended. The writer applies what it appended
    /// ([`EventLog::fetch_remote`]), validates again and retries.
    #[error("another node appended to the fleet log first")]
    Conflict,
}

impl Error {
    /// The journal error inside, if it is one.
    pub fn as_journal(&self) -> Option<&journal::Error> {
        match self {
            Error::Journal(e) => Some(e),
            Error::Unavailable(_) | Error::Conflict => None,
        }
    }

    /// A copy for another waiter of the same failed commit: every request of
    /// a group gets the group's error. The OS error code is kept, so that
    /// each one's status (507 for a full disk) is right.
    pub fn copy(&self) -> Error {
        match self {
            Error::Journal(e) => Error::Journal(e.duplicate()),
            Error::Unavailable(why) => Error::Unavailable(why.clone()),
            Error::Conflict => Error::Conflict,
        }
    }
}

/// A state the index was saved in: every event up to `seq` is in `data`.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The last event the snapshot reflects.
    pub seq: u64,
    /// The encoded index (`crate::snapshot`).
    pub data: Vec<u8>,
}

/// A commit another writer appended to a shared log, to be applied here.
#[derive(Debug, Clone)]
pub struct RemoteCommit {
    /// The seq of its first payload; the rest follow without a gap.
    pub first_seq: u64,
    /// The encoded events.
    pub payloads: Vec<Vec<u8>>,
}

/// Reads records in seq order from a position; each record is lent until
/// the next call, so replay allocates nothing per record.
pub trait LogReader: Send {
    /// The next record, or `None` at the end of what was durable when the
    /// reader was opened (or later).
    fn next_borrowed(&mut self) -> Option<Result<(u64, &[u8]), Error>>;

    /// The next record, owned.
    fn next_owned(&mut self) -> Option<Result<(u64, Vec<u8>), Error>> {
        self.next_borrowed()
            .map(|record| record.map(|(seq, payload)| (seq, payload.to_vec())))
    }
}

/// A durable, ordered log of commits (see the module docs). Blocking: call it
/// from a thread of its own or `spawn_blocking`, never from a runtime worker.
pub trait EventLog: Send + Sync + std::fmt::Debug {
    /// Appends one commit, numbered from `last_seq() + 1`, and returns its
    /// first seq once it is durable. A commit is all or nothing.
    ///
    /// # Errors
    ///
    /// Nothing was appended (a full disk, the log unreachable, damage found).
    fn append(&self, payloads: Vec<Vec<u8>>) -> Result<u64, Error>;

    /// The seq of the last durable record (0 when empty).
    fn last_seq(&self) -> u64;

    /// The oldest seq still held (1 unless retention dropped older ones).
    fn first_seq(&self) -> u64;

    /// A reader from `seq` on.
    ///
    /// # Errors
    ///
    /// The log cannot be read.
    fn read_from(&self, seq: u64) -> Result<Box<dyn LogReader>, Error>;

    /// Saves a snapshot of the state after `seq`; retention may then drop
    /// the records it covers.
    ///
    /// # Errors
    ///
    /// It could not be made durable.
    fn write_snapshot(&self, seq: u64, data: &[u8]) -> Result<(), Error>;

    /// The newest snapshot covering events up to `seq` or fewer, if the log
    /// keeps one (time travel starts there); `None` means replay from the
    /// log's start.
    ///
    /// # Errors
    ///
    /// The snapshots cannot be listed.
    fn snapshot_at_or_below(&self, seq: u64) -> Result<Option<Snapshot>, Error> {
        let _ = seq;
        Ok(None)
    }

    /// What the log takes on disk, in bytes.
    fn size_bytes(&self) -> u64;

    /// Why the log refuses every write from now on (it was removed or damaged
    /// under the running server), if it does.
    fn failed(&self) -> Option<Error>;

    /// Commits other writers append from now on, in order, for the registry
    /// to apply; `None` for a log only this process writes. Taken once.
    fn remote_commits(&self) -> Option<std::sync::mpsc::Receiver<RemoteCommit>> {
        None
    }

    /// The name this process writes under in a shared log (its node in a
    /// fleet, SPEC §8), or `None` for a log only this process writes. The
    /// index keeps that node's state as its own, and the observations this
    /// process appends carry the name.
    fn node(&self) -> Option<String> {
        None
    }

    /// The commits other writers appended that are not applied here yet,
    /// read from the shared log now: after an [`Error::Conflict`], the
    /// writer applies them before it validates again. Empty for a log only
    /// this process writes.
    ///
    /// # Errors
    ///
    /// The shared log cannot be read now.
    fn fetch_remote(&self) -> Result<Vec<RemoteCommit>, Error> {
        Ok(Vec::new())
    }

    /// Called by the writer for each remote commit before it applies it: a
    /// log that keeps a local replica writes the commit there (so the
    /// journal keeps one writer). Nothing to do for others.
    ///
    /// # Errors
    ///
    /// The replica could not store it; it is not applied.
    fn accept_remote(&self, _commit: &RemoteCommit) -> Result<(), Error> {
        Ok(())
    }

    /// The most bytes one commit may take (its payloads, 4 more bytes each
    /// for framing), if the log limits it: the writer splits a group or a
    /// reconcile that would be larger. `None`: no limit.
    fn max_commit_bytes(&self) -> Option<usize> {
        None
    }

    /// Why the log is degraded now (its service unreachable: writes are
    /// refused, reads go on), for `/healthz`; `None` when it is not.
    fn health(&self) -> Option<String> {
        None
    }
}

/// A shared handle on the log.
pub type SharedLog = Arc<dyn EventLog>;
