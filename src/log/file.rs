//! The single-host event log: the project's own journal on the local disk
//! (the `journal` crate: checksummed segments, group commit, recovery).

use std::path::Path;

use crate::log::{Error, EventLog, LogReader, Snapshot};

/// [`EventLog`] over a [`journal::Journal`].
#[derive(Debug, Clone)]
pub struct FileLog {
    journal: journal::Journal,
}

/// A file log just opened: the log, its newest valid snapshot, and what
/// recovery did.
#[derive(Debug)]
pub struct Opened {
    /// The log, ready for appends.
    pub log: FileLog,
    /// The newest valid snapshot, if any.
    pub snapshot: Option<Snapshot>,
    /// What recovery found and did (a torn tail cut, say).
    pub recovery: journal::Recovery,
}

impl FileLog {
    /// Opens (and first recovers) the journal in `dir`.
    ///
    /// # Errors
    ///
    /// As [`journal::Journal::open`]: mid-log damage, a journal in use, I/O.
    pub fn open(dir: &Path, options: journal::Options) -> Result<Opened, Error> {
        let opened = journal::Journal::open(dir, options)?;
        Ok(Opened {
            log: FileLog {
                journal: opened.journal,
            },
            snapshot: opened.snapshot.map(Snapshot::from),
            recovery: opened.recovery,
        })
    }
}

impl FileLog {
    /// Stops the journal's writer thread (waits for queued appends).
    pub fn close(&self) {
        self.journal.close();
    }
}

impl From<journal::Journal> for FileLog {
    fn from(journal: journal::Journal) -> FileLog {
        FileLog { journal }
    }
}

impl From<journal::Snapshot> for Snapshot {
    fn from(snapshot: journal::Snapshot) -> Snapshot {
        Snapshot {
            seq: snapshot.seq.0,
            data: snapshot.data,
        }
    }
}

impl EventLog for FileLog {
    fn append(&self, payloads: Vec<Vec<u8>>) -> Result<u64, Error> {
        Ok(self.journal.append(payloads)?.0)
    }

    fn last_seq(&self) -> u64 {
        self.journal.last_seq().0
    }

    fn first_seq(&self) -> u64 {
        self.journal.first_seq().0
    }

    fn read_from(&self, seq: u64) -> Result<Box<dyn LogReader>, Error> {
        Ok(Box::new(FileReader(
            self.journal.read_from(journal::Seq(seq))?,
        )))
    }

    fn write_snapshot(&self, seq: u64, data: &[u8]) -> Result<(), Error> {
        Ok(self.journal.write_snapshot(journal::Seq(seq), data)?)
    }

    fn snapshot_at_or_below(&self, seq: u64) -> Result<Option<Snapshot>, Error> {
        Ok(self
            .journal
            .snapshot_at_or_below(journal::Seq(seq))?
            .map(Snapshot::from))
    }

    fn size_bytes(&self) -> u64 {
        self.journal.size_bytes()
    }

    fn failed(&self) -> Option<Error> {
        self.journal.tampered().map(Error::Journal)
    }
}

/// A journal reader as a [`LogReader`].
struct FileReader(journal::Reader);

impl LogReader for FileReader {
    fn next_borrowed(&mut self) -> Option<Result<(u64, &[u8]), Error>> {
        self.0.next_borrowed().map(|record| {
            record
                .map(|(seq, payload)| (seq.0, payload))
                .map_err(Error::from)
        })
    }
}
