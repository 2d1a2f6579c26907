//! What `Journal::open` does before anything else, and the read-only [`crate::verify`].
//!
//! Open scans every segment, oldest first, with `segment::scan`. At the first damage it
//! decides between two outcomes:
//!
//! - **Torn tail**: the damage is in the last segment, is something a crash in the
//!   middle of a write can leave (a partial or checksum-failing record, a transaction
//!   without its commit record, a partial header) and no valid record after it proves
//!   that the damaged bytes had been synced. The segment is cut back to the end of its
//!   last whole transaction, and `Recovery` says what was cut.
//! - **Mid-log damage**: anything else. `open` fails with `Error::Corrupt` naming the
//!   file and byte offset, unless `Options::repair` is set, in which case the good
//!   prefix is kept and everything from the damage on (later segments too) is dropped.
//!
//! The proof that damage was durable comes from the batch flags: the writer starts a
//! batch only after the previous one is synced, so a valid record that begins a batch,
//! or any valid record after the end of a batch, shows that the bytes before it were
//! on disk before the crash.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::io::{self, Io, IoFile};
use crate::segment::{self, Damage, SEGMENT_HEADER_LEN};
use crate::{snapshot, Options, Recovery, SegmentMeta, Seq, Snapshot, VerifyReport};

/// The state recovery leaves behind, handed to the writer.
#[derive(Debug)]
pub(crate) struct Recovered {
    /// The segments, oldest first, with their (now trusted) lengths.
    pub(crate) segments: Vec<SegmentMeta>,
    /// The last segment, open for writing.
    pub(crate) active: Box<dyn IoFile>,
    /// The last seq of the last whole transaction.
    pub(crate) last_seq: u64,
    /// The newest valid snapshot not ahead of `last_seq`.
    pub(crate) snapshot: Option<Snapshot>,
    /// What was cut.
    pub(crate) recovery: Recovery,
}

/// Recovers the journal in `dir`; see the module docs.
pub(crate) fn recover(dir: &Path, options: &Options) -> Result<Recovered> {
    let io = &*options.io;
    io.create_dir_all(dir)
        .map_err(|e| Error::io("create dir", dir, e))?;
    snapshot::remove_temp_files(io, dir)?;
    let listed = segment::list(io, dir)?;
    let mut recovery = Recovery::default();
    let mut segments: Vec<SegmentMeta> = Vec::new();
    let mut last_seq = 0;

    for (seg_idx, (name_seq, path)) in listed.iter().enumerate() {
        let buf = read_file(io, path)?;
        let mut scan = segment::scan(&buf, *name_seq);
        if let Some(prev) = segments.last() {
            let expected = last_seq + 1;
            if *name_seq != expected {
                let reason = format!(
                    "seq gap: {} ends at seq {last_seq}, this segment starts at {name_seq}",
                    prev.path.display()
                );
                scan.damage = Some(Damage {
                    offset: 0,
                    reason,
                    torn: false,
                });
                scan.committed_end = 0;
                scan.last_seq = last_seq;
            }
        }
        let Some(damage) = scan.damage.clone() else {
            segments.push(SegmentMeta {
                first_seq: *name_seq,
                path: path.clone(),
                len: buf.len() as u64,
            });
            last_seq = scan.last_seq;
            continue;
        };
        let is_last = seg_idx + 1 == listed.len();
        let after = segment::scan_after_damage(&buf, damage.offset, scan.last_seq);
        let mid_log = !is_last || !damage.torn || after.proves_durable;
        if mid_log && !options.repair {
            return Err(Error::corrupt(path, damage.offset, damage.reason));
        }

        // Cut here. Later segments go first, newest first, so that a crash midway leaves
        // a directory this function handles the same way again.
        let mut truncated_bytes = 0;
        let mut dropped_records = after.records;
        if damage.offset > scan.committed_end {
            dropped_records += segment::count_records(&buf, scan.committed_end as usize);
        }
        let later = &listed[seg_idx + 1..];
        for (_, later_path) in later.iter().rev() {
            let later_buf = read_file(io, later_path)?;
            truncated_bytes += later_buf.len() as u64;
            dropped_records += segment::count_records(&later_buf, SEGMENT_HEADER_LEN);
            io.remove_file(later_path)
                .map_err(|e| Error::io("remove", later_path, e))?;
        }
        if !later.is_empty() {
            io.sync_dir(dir)
                .map_err(|e| Error::io("sync dir", dir, e))?;
        }
        truncated_bytes += buf.len() as u64 - scan.committed_end;
        if scan.committed_end >= SEGMENT_HEADER_LEN as u64 {
            let file = io
                .open_write(path)
                .map_err(|e| Error::io("open", path, e))?;
            file.set_len(scan.committed_end)
                .map_err(|e| Error::io("truncate", path, e))?;
            file.sync_data()
                .map_err(|e| Error::io("fdatasync", path, e))?;
            segments.push(SegmentMeta {
                first_seq: *name_seq,
                path: path.clone(),
                len: scan.committed_end,
            });
            last_seq = scan.last_seq;
        } else if segments.is_empty() {
            // The first segment's header is bad: start it again, empty, under the same name.
            segment::create(io, dir, *name_seq)?;
            segments.push(SegmentMeta {
                first_seq: *name_seq,
                path: path.clone(),
                len: SEGMENT_HEADER_LEN as u64,
            });
            last_seq = name_seq.saturating_sub(1);
        } else {
            // A later segment's header is bad: drop the file; the writer rolls over again.
            io.remove_file(path)
                .map_err(|e| Error::io("remove", path, e))?;
            io.sync_dir(dir)
                .map_err(|e| Error::io("sync dir", dir, e))?;
        }
        recovery.truncated_bytes = truncated_bytes;
        recovery.truncated_file = Some(path.clone());
        recovery.dropped_records = dropped_records;
        break;
    }

    let snapshots = snapshot::list(io, dir)?;
    let newest_seq = if segments.is_empty() {
        u64::MAX
    } else {
        last_seq
    };
    let mut found = None;
    for (seq, path) in snapshots.iter().rev() {
        if *seq > newest_seq {
            // Ahead of the log (its tail was cut): the seqs it covers will be reused.
            io.remove_file(path)
                .map_err(|e| Error::io("remove", path, e))?;
            io.sync_dir(dir)
                .map_err(|e| Error::io("sync dir", dir, e))?;
            recovery.discarded_snapshots.push(path.clone());
            continue;
        }
        match snapshot::load(io, path, *seq)? {
            Ok(data) => {
                found = Some(Snapshot {
                    seq: Seq(*seq),
                    data,
                });
                break;
            }
            Err(_) => recovery.ignored_snapshots.push(path.clone()),
        }
    }

    let active_path = match segments.last() {
        Some(meta) => meta.path.clone(),
        None => {
            // A new journal (or one whose segments are all gone): start after the snapshot.
            let first_seq = found.as_ref().map_or(1, |snap| snap.seq.0 + 1);
            let (path, _) = segment::create(io, dir, first_seq)?;
            segments.push(SegmentMeta {
                first_seq,
                path: path.clone(),
                len: SEGMENT_HEADER_LEN as u64,
            });
            last_seq = first_seq - 1;
            path
        }
    };
    let active = io
        .open_write(&active_path)
        .map_err(|e| Error::io("open", &active_path, e))?;
    Ok(Recovered {
        segments,
        active,
        last_seq,
        snapshot: found,
        recovery,
    })
}

/// Read-only check of the journal in `dir`; see [`crate::verify`].
pub(crate) fn verify(io: &dyn Io, dir: &Path) -> Result<VerifyReport> {
    let listed = segment::list(io, dir)?;
    let mut report = VerifyReport::default();
    let mut expected: Option<(u64, PathBuf)> = None;
    let mut first_seq = None;
    for (name_seq, path) in &listed {
        if let Some((expected_seq, prev_path)) = &expected {
            if name_seq != expected_seq {
                let reason = format!(
                    "seq gap: {} ends at seq {}, this segment starts at {name_seq}",
                    prev_path.display(),
                    expected_seq - 1
                );
                return Err(Error::corrupt(path, 0, reason));
            }
        }
        let buf = read_file(io, path)?;
        let scan = segment::scan(&buf, *name_seq);
        if let Some(damage) = scan.damage {
            return Err(Error::corrupt(path, damage.offset, damage.reason));
        }
        first_seq.get_or_insert(*name_seq);
        report.records += scan.records;
        report.segments += 1;
        report.last_seq = Seq(scan.last_seq);
        expected = Some((scan.last_seq + 1, path.clone()));
    }
    for (seq, path) in snapshot::list(io, dir)? {
        if let Err(reason) = snapshot::load(io, &path, seq)? {
            return Err(Error::corrupt(&path, 0, reason));
        }
        if !listed.is_empty() && seq > report.last_seq.0 {
            let reason = format!(
                "snapshot seq {seq} is beyond the last record {}",
                report.last_seq
            );
            return Err(Error::corrupt(&path, 0, reason));
        }
        report.snapshot_seq = Some(Seq(seq));
    }
    if let (Some(first), Some((_, first_path))) = (first_seq, listed.first()) {
        let covered = report.snapshot_seq.map_or(0, |seq| seq.0);
        if first > covered + 1 {
            let reason = format!(
                "records {}..={} are missing and no snapshot covers them",
                covered + 1,
                first - 1
            );
            return Err(Error::corrupt(first_path, 0, reason));
        }
    }
    Ok(report)
}

fn read_file(io: &dyn Io, path: &Path) -> Result<Vec<u8>> {
    let file = io.open_read(path).map_err(|e| Error::io("open", path, e))?;
    io::read_all(&*file).map_err(|e| Error::io("read", path, e))
}
