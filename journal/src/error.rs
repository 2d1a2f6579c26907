//! `journal::Error`: one enum for everything the journal can report.
//!
//! Variants carry their context (file, byte offset, seq), so a caller can print
//! one line that says what happened and where.
//! An [`Error::Io`] keeps the original [`std::io::Error`], so its `kind()` and
//! `raw_os_error()` (for example `ENOSPC`) stay visible to the caller.

use std::io;
use std::path::{Path, PathBuf};

use crate::Seq;

/// Errors of the journal.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Damage followed by good records.
    #[error("journal corrupt in {path} at byte {offset}: {reason}")]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte offset of the first bad record.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The journal is closed.
    #[error("journal is closed")]
    Closed,
    /// Another process has the journal open.
    #[error(
        "journal {dir} is in use by another process (is an aliasd serving it?); stop that process first"
    )]
    Locked {
        /// The journal directory.
        dir: PathBuf,
    },
    /// [`crate::Journal::append`] was given no payloads.
    #[error("empty transaction: append needs at least one payload")]
    Empty,
    /// A payload is larger than [`crate::MAX_PAYLOAD_BYTES`].
    #[error("payload of {bytes} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Size of the payload.
        bytes: u64,
        /// The limit.
        max: u64,
    },
    /// The journal's files were deleted, moved, replaced or cut by something else while
    /// this process had them open. The appends that found it were not acknowledged, and
    /// every later one fails with this error at once: writing on could only put records
    /// where no later open finds them. Reads of what is already durable go on.
    #[error(
        "journal {path} was changed under the running process: {what}; nothing written since \
         is acknowledged, and no write is accepted until aliasd is restarted (it then recovers \
         the journal; if it refuses to start, run `aliasd journal repair`)"
    )]
    Tampered {
        /// The active segment, where the check looked.
        path: PathBuf,
        /// What changed.
        what: String,
    },
    /// A snapshot was tagged with a seq the journal has not reached.
    #[error("snapshot seq {seq} is beyond the last durable seq {last}")]
    SeqOutOfRange {
        /// The seq asked for.
        seq: Seq,
        /// The last durable seq.
        last: Seq,
    },
}

/// Result alias.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Builds an [`Error::Io`].
    pub(crate) fn io(op: &'static str, path: &Path, source: io::Error) -> Error {
        Error::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    /// Builds an [`Error::Corrupt`].
    pub(crate) fn corrupt(path: &Path, offset: u64, reason: impl Into<String>) -> Error {
        Error::Corrupt {
            path: path.to_path_buf(),
            offset,
            reason: reason.into(),
        }
    }

    /// A copy of this error, for replying the same failure to every append of a batch.
    ///
    /// `std::io::Error` is not `Clone`; the copy keeps the raw OS error code when there is
    /// one (so `ENOSPC` stays detectable), else the kind and the message.
    pub fn duplicate(&self) -> Error {
        match self {
            Error::Io { op, path, source } => Error::Io {
                op,
                path: path.clone(),
                source: duplicate_io(source),
            },
            Error::Corrupt {
                path,
                offset,
                reason,
            } => Error::Corrupt {
                path: path.clone(),
                offset: *offset,
                reason: reason.clone(),
            },
            Error::Closed => Error::Closed,
            Error::Tampered { path, what } => Error::Tampered {
                path: path.clone(),
                what: what.clone(),
            },
            Error::Locked { dir } => Error::Locked { dir: dir.clone() },
            Error::Empty => Error::Empty,
            Error::TooLarge { bytes, max } => Error::TooLarge {
                bytes: *bytes,
                max: *max,
            },
            Error::SeqOutOfRange { seq, last } => Error::SeqOutOfRange {
                seq: *seq,
                last: *last,
            },
        }
    }
}

fn duplicate_io(source: &io::Error) -> io::Error {
    match source.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(source.kind(), source.to_string()),
    }
}
