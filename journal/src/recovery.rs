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
//! on disk before the crash. The newest valid snapshot is a proof too: a snapshot is
//! written only for durable records, so damage at or before its seq is mid-log damage.
//!
//! Snapshots are therefore read first. A valid one is never deleted: when the log ends
//! before it, or would once cut at its damage (only damage does that), `open` fails, and
//! repair keeps the snapshot, moves every segment as it is (the records before the
//! damage are all covered by the snapshot) to a `set-aside-before-snapshot-<seq>`
//! directory inside the journal's, and starts a new segment after the snapshot.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::io::{self, Io, IoFile};
use crate::segment::{self, Damage, SEGMENT_HEADER_LEN};
use crate::{snapshot, Options, Recovery, SegmentMeta, Seq, Snapshot, VerifyReport};

/// The start of the name of the directory, inside the journal's, where repair moves
/// the segments a snapshot covers when the log ends before that snapshot; the
/// snapshot's seq follows. Neither recovery nor readers look inside it.
pub(crate) const SET_ASIDE_PREFIX: &str = "set-aside-before-snapshot-";

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
    let mut recovery = Recovery::default();
    // Snapshots first: the newest valid one proves that every record up to its seq
    // was durable, so damage among those records is no torn tail.
    let snapshots = snapshot::list(io, dir)?;
    let mut found = None;
    for (seq, path) in snapshots.iter().rev() {
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
    let snapshot_seq = found.as_ref().map_or(0, |snap| snap.seq.0);
    let listed = segment::list(io, dir)?;
    let mut segments: Vec<SegmentMeta> = Vec::new();
    let mut last_seq = 0;
    let mut buf = Vec::new();
    // Repair only: the last seq of a log that ends before the snapshot.
    let mut short_of_snapshot = None;

    for (seg_idx, (name_seq, path)) in listed.iter().enumerate() {
        read_file_into(io, path, &mut buf)?;
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
                    unfinished_txn: false,
                });
                scan.committed_end = 0;
                scan.last_seq = last_seq;
            }
        }
        scan.marks.cut(scan.committed_end);
        let Some(damage) = scan.damage.clone() else {
            segments.push(SegmentMeta {
                first_seq: *name_seq,
                path: path.clone(),
                len: scan.committed_end,
                marks: scan.marks,
            });
            last_seq = scan.last_seq;
            continue;
        };
        let is_last = seg_idx + 1 == listed.len();
        // An unfinished transaction runs to the end of the file: nothing lies after it.
        let after = if damage.unfinished_txn {
            segment::AfterDamage::default()
        } else {
            segment::scan_after_damage(&buf, damage.offset, scan.last_seq)
        };
        let mid_log =
            !is_last || !damage.torn || after.proves_durable || snapshot_seq > scan.last_seq;
        if mid_log && !options.repair {
            return Err(Error::corrupt(path, damage.offset, damage.reason));
        }
        if snapshot_seq > scan.last_seq {
            // A cut here would leave a log that ends before the snapshot: every segment
            // goes aside as it is instead (below).
            short_of_snapshot = Some(scan.last_seq);
            break;
        }

        // Cut here. Later segments go first, newest first, so that a crash midway leaves
        // a directory this function handles the same way again.
        let mut truncated_bytes = 0;
        let mut dropped_records = after.records;
        if scan.committed_end >= SEGMENT_HEADER_LEN as u64 {
            // The whole records of an unfinished transaction, up to the damage.
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
        // Zeros the writer wrote ahead are not counted as cut.
        truncated_bytes += segment::content_end(&buf, scan.committed_end) - scan.committed_end;
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
                marks: scan.marks,
            });
            last_seq = scan.last_seq;
        } else if segments.is_empty() {
            // The first segment's header is bad: start it again, empty, under the same name.
            segment::create(io, dir, *name_seq)?;
            segments.push(SegmentMeta {
                first_seq: *name_seq,
                path: path.clone(),
                len: SEGMENT_HEADER_LEN as u64,
                marks: segment::Marks::default(),
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

    // The log ends before the snapshot: records it proves durable are gone (cut under a
    // running server, say). Repair keeps the snapshot and restarts the log after it; the
    // segments, whose records are all covered by the snapshot, are set aside untouched.
    if let (None, Some(active)) = (short_of_snapshot, segments.last()) {
        if snapshot_seq > last_seq {
            if !options.repair {
                let reason = format!(
                    "the journal ends at seq {last_seq}, but the snapshot at seq {snapshot_seq} \
                     shows that records up to it were written: they are missing"
                );
                return Err(Error::corrupt(&active.path, active.len, reason));
            }
            short_of_snapshot = Some(last_seq);
        }
    }
    if let Some(end_seq) = short_of_snapshot {
        let aside = dir.join(format!("{SET_ASIDE_PREFIX}{snapshot_seq}"));
        io.create_dir_all(&aside)
            .map_err(|e| Error::io("create dir", &aside, e))?;
        // Newest first, so that a crash midway leaves a log that still ends before the
        // snapshot, which repair handles the same way again.
        for (_, path) in listed.iter().rev() {
            let Some(name) = path.file_name() else {
                continue;
            };
            io.rename(path, &aside.join(name))
                .map_err(|e| Error::io("rename", path, e))?;
        }
        io.sync_dir(&aside)
            .map_err(|e| Error::io("sync dir", &aside, e))?;
        io.sync_dir(dir)
            .map_err(|e| Error::io("sync dir", dir, e))?;
        let first_seq = listed.first().map_or(1, |(first, _)| *first);
        recovery.set_aside_records = (end_seq + 1).saturating_sub(first_seq);
        recovery.set_aside = Some(aside);
        segments.clear();
    }

    if !segments.is_empty() {
        // Damaged snapshots ahead of the log: the seqs they name will be reused.
        let mut kept = Vec::new();
        for path in std::mem::take(&mut recovery.ignored_snapshots) {
            let ahead = snapshots
                .iter()
                .any(|(seq, listed)| *listed == path && *seq > last_seq);
            if ahead {
                io.remove_file(&path)
                    .map_err(|e| Error::io("remove", &path, e))?;
                io.sync_dir(dir)
                    .map_err(|e| Error::io("sync dir", dir, e))?;
                recovery.discarded_snapshots.push(path);
            } else {
                kept.push(path);
            }
        }
        recovery.ignored_snapshots = kept;
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
                marks: segment::Marks::default(),
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
    let mut buf = Vec::new();
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
        read_file_into(io, path, &mut buf)?;
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
    let mut buf = Vec::new();
    read_file_into(io, path, &mut buf)?;
    Ok(buf)
}

/// [`read_file`] into a buffer reused from segment to segment.
fn read_file_into(io: &dyn Io, path: &Path, buf: &mut Vec<u8>) -> Result<()> {
    let file = io.open_read(path).map_err(|e| Error::io("open", path, e))?;
    io::read_all_into(&*file, buf).map_err(|e| Error::io("read", path, e))
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::io::Write;
    use std::path::{Path, PathBuf};

    use proptest::prelude::*;

    use crate::record::{self, FLAG_BATCH_BEGIN, FLAG_BATCH_END, FLAG_TXN_END};
    use crate::segment::SEGMENT_HEADER_LEN;
    use crate::testing::{
        flatten, open, payload, records, segment_files, small_segments, snapshot_files,
    };
    use crate::{verify, Error, Journal, Options, Seq};

    type Txns = Vec<(u64, Vec<Vec<u8>>)>;

    /// Appends each transaction on its own (one batch each) and closes the journal.
    fn fill(dir: &Path, segment_bytes: u64, txns: &[Vec<Vec<u8>>]) -> Txns {
        fill_with(dir, small_segments(segment_bytes), txns)
    }

    fn fill_with(dir: &Path, options: Options, txns: &[Vec<Vec<u8>>]) -> Txns {
        let journal = open(dir, options).journal;
        let acked = txns
            .iter()
            .map(|txn| (journal.append(txn.clone()).unwrap().0, txn.clone()))
            .collect();
        journal.close();
        acked
    }

    /// Where each acknowledged transaction lies: (segment index, start offset, end offset).
    fn layout(dir: &Path, acked: &Txns) -> Vec<(usize, u64, u64)> {
        let firsts: Vec<u64> = segment_files(dir)
            .iter()
            .map(|path| path.file_stem().unwrap().to_str().unwrap().parse().unwrap())
            .collect();
        let mut out = Vec::new();
        let mut pos = 0;
        let mut current = usize::MAX;
        for (first, payloads) in acked {
            let seg_idx = firsts.iter().rposition(|f| f <= first).unwrap();
            if seg_idx != current {
                current = seg_idx;
                pos = SEGMENT_HEADER_LEN as u64;
            }
            let start = pos;
            pos += payloads
                .iter()
                .map(|p| (record::HEADER_LEN + p.len()) as u64)
                .sum::<u64>();
            out.push((seg_idx, start, pos));
        }
        out
    }

    /// The acknowledged transactions that lie wholly before byte `pos` of segment `seg_idx`.
    fn before(acked: &Txns, layout: &[(usize, u64, u64)], seg_idx: usize, pos: u64) -> Txns {
        acked
            .iter()
            .zip(layout)
            .filter(|(_, (seg, _, end))| *seg < seg_idx || (*seg == seg_idx && *end <= pos))
            .map(|(txn, _)| txn.clone())
            .collect()
    }

    /// Where the last segment's records end (zeros written ahead may follow).
    fn data_end(dir: &Path, acked: &Txns) -> u64 {
        let last_idx = segment_files(dir).len() - 1;
        layout(dir, acked)
            .iter()
            .filter(|(seg, _, _)| *seg == last_idx)
            .map(|(_, _, end)| *end)
            .max()
            .unwrap_or(SEGMENT_HEADER_LEN as u64)
    }

    /// Writes `bytes` at `at`, as a write of the next batch would (over zeros written
    /// ahead, or past the end of the file).
    fn write_at(path: &Path, at: u64, bytes: &[u8]) {
        let file = fs::OpenOptions::new().write(true).open(path).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, bytes, at).unwrap();
    }

    fn append_bytes(path: &Path, bytes: &[u8]) {
        fs::OpenOptions::new()
            .append(true)
            .open(path)
            .unwrap()
            .write_all(bytes)
            .unwrap();
    }

    fn flip(path: &Path, pos: u64, mask: u8) {
        let mut bytes = fs::read(path).unwrap();
        bytes[pos as usize] ^= mask;
        fs::write(path, bytes).unwrap();
    }

    fn cut(path: &Path, len: u64) {
        fs::OpenOptions::new()
            .write(true)
            .open(path)
            .unwrap()
            .set_len(len)
            .unwrap();
    }

    fn dir_contents(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out: Vec<(PathBuf, Vec<u8>)> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| (p.clone(), fs::read(&p).unwrap()))
            .collect();
        out.sort();
        out
    }

    /// The (path, offset, reason) of an `Error::Corrupt`.
    fn corrupt<T: std::fmt::Debug>(res: crate::Result<T>) -> (PathBuf, u64, String) {
        match res {
            Err(Error::Corrupt {
                path,
                offset,
                reason,
            }) => (path, offset, reason),
            other => panic!("expected Error::Corrupt, got {other:?}"),
        }
    }

    fn txns(n: u64) -> Vec<Vec<Vec<u8>>> {
        (0..n).map(|idx| vec![payload(idx, 30)]).collect()
    }

    fn encoded(records: &[(u64, u32, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (seq, flags, payload) in records {
            record::encode(&mut out, *seq, *flags, payload);
        }
        out
    }

    #[test]
    fn a_partial_last_record_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let acked = fill(dir.path(), 1 << 20, &txns(3));
        let seg = segment_files(dir.path()).pop().unwrap();
        let end = data_end(dir.path(), &acked);
        let partial = encoded(&[(
            4,
            FLAG_TXN_END | FLAG_BATCH_BEGIN | FLAG_BATCH_END,
            b"never acknowledged",
        )]);
        write_at(&seg, end, &partial[..25]);
        let (path, offset, reason) = corrupt(verify(dir.path()));
        assert_eq!((path, offset), (seg.clone(), end));
        assert!(
            reason.starts_with("incomplete record") || reason.starts_with("checksum mismatch"),
            "{reason}"
        );

        let opened = open(dir.path(), Options::default());
        assert_eq!(opened.recovery.truncated_bytes, 25);
        assert_eq!(opened.recovery.truncated_file, Some(seg));
        assert_eq!(opened.recovery.dropped_records, 0);
        assert_eq!(records(&opened.journal, 1), flatten(&acked));
        assert_eq!(opened.journal.append(vec![b"x".to_vec()]).unwrap(), Seq(4));
    }

    #[test]
    fn a_transaction_without_its_commit_record_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let acked = fill(dir.path(), 1 << 20, &txns(3));
        let seg = segment_files(dir.path()).pop().unwrap();
        let len = data_end(dir.path(), &acked);
        write_at(
            &seg,
            len,
            &encoded(&[(4, FLAG_BATCH_BEGIN, b"first half"), (5, 0, b"second half")]),
        );
        let (_, offset, reason) = corrupt(verify(dir.path()));
        assert_eq!(offset, len);
        assert!(
            reason.starts_with("transaction without its commit record"),
            "{reason}"
        );

        let opened = open(dir.path(), Options::default());
        assert_eq!(opened.recovery.truncated_bytes, 2 * 20 + 10 + 11);
        assert_eq!(opened.recovery.dropped_records, 2);
        assert_eq!(records(&opened.journal, 1), flatten(&acked));
        assert_eq!(fs::metadata(&seg).unwrap().len(), len);
    }

    #[test]
    fn zeros_after_the_last_record_are_space_written_ahead_not_damage() {
        let dir = tempfile::tempdir().unwrap();
        let acked = fill(dir.path(), 1 << 20, &txns(3));
        let seg = segment_files(dir.path()).pop().unwrap();
        let end = data_end(dir.path(), &acked);
        assert!(
            fs::metadata(&seg).unwrap().len() > end,
            "the writer wrote zeros ahead"
        );
        append_bytes(&seg, &[0u8; 4096]);
        assert_eq!(verify(dir.path()).unwrap().last_seq, Seq(3));
        let opened = open(dir.path(), Options::default());
        assert_eq!(opened.recovery, crate::Recovery::default());
        assert_eq!(records(&opened.journal, 1), flatten(&acked));
        assert_eq!(opened.journal.append(vec![b"x".to_vec()]).unwrap(), Seq(4));
        drop(opened);
        assert_eq!(verify(dir.path()).unwrap().last_seq, Seq(4));
        // Without preallocation, the same holds for zeros after a file's last record.
        let dir = tempfile::tempdir().unwrap();
        let no_zeros = Options {
            preallocate_bytes: 0,
            ..Default::default()
        };
        let journal = open(dir.path(), no_zeros.clone()).journal;
        journal.append(vec![b"one".to_vec()]).unwrap();
        drop(journal);
        let seg = segment_files(dir.path()).pop().unwrap();
        let len = fs::metadata(&seg).unwrap().len();
        assert_eq!(len, SEGMENT_HEADER_LEN as u64 + 23, "no zeros ahead");
        append_bytes(&seg, &[0u8; 100]);
        let opened = open(dir.path(), no_zeros);
        assert_eq!(opened.recovery, crate::Recovery::default());
        assert_eq!(
            opened.journal.append(vec![b"two".to_vec()]).unwrap(),
            Seq(2)
        );
    }

    #[test]
    fn a_flipped_byte_in_the_zeros_ahead_is_cut_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let acked = fill(dir.path(), 1 << 20, &txns(3));
        let seg = segment_files(dir.path()).pop().unwrap();
        let end = data_end(dir.path(), &acked);
        flip(&seg, end + 100, 0x08);
        assert_eq!(corrupt(verify(dir.path())).1, end);
        let opened = open(dir.path(), Options::default());
        assert_eq!(opened.recovery.truncated_file, Some(seg.clone()));
        assert_eq!(opened.recovery.truncated_bytes, 101);
        assert_eq!(records(&opened.journal, 1), flatten(&acked));
        assert_eq!(opened.journal.append(vec![b"x".to_vec()]).unwrap(), Seq(4));
    }

    #[test]
    fn damage_inside_the_last_batch_is_a_torn_tail_but_before_it_is_not() {
        let bad = |flags: [u32; 3]| {
            let dir = tempfile::tempdir().unwrap();
            let acked = fill(dir.path(), 1 << 20, &txns(3));
            let seg = segment_files(dir.path()).pop().unwrap();
            let len = data_end(dir.path(), &acked);
            let mut batch = encoded(&[
                (4, flags[0], b"four"),
                (5, flags[1], b"five"),
                (6, flags[2], b"six"),
            ]);
            batch[22] ^= 0x40;
            write_at(&seg, len, &batch);
            (dir, acked, seg, len)
        };
        // One batch of three transactions, torn in its first record: nothing proves it was synced.
        let one_batch = [
            FLAG_BATCH_BEGIN | FLAG_TXN_END,
            FLAG_TXN_END,
            FLAG_TXN_END | FLAG_BATCH_END,
        ];
        let (dir, acked, _, _) = bad(one_batch);
        let opened = open(dir.path(), Options::default());
        assert_eq!(opened.recovery.dropped_records, 2);
        assert_eq!(records(&opened.journal, 1), flatten(&acked));
        // Three batches: the second one was written only once the first was synced.
        let batch_flags = FLAG_BATCH_BEGIN | FLAG_TXN_END | FLAG_BATCH_END;
        let (dir, _, seg, len) = bad([batch_flags; 3]);
        let (path, offset, reason) = corrupt(Journal::open(dir.path(), Options::default()));
        assert_eq!((path, offset), (seg, len));
        assert!(reason.starts_with("checksum mismatch"), "{reason}");
    }

    #[test]
    fn mid_log_damage_fails_open_and_repair_keeps_the_good_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let acked = fill(dir.path(), 200, &txns(20));
        let files = segment_files(dir.path());
        assert!(files.len() >= 4);
        let layout = layout(dir.path(), &acked);
        let (seg_idx, start, _) = layout[5];
        flip(&files[seg_idx], start + 25, 0x10);
        let before_open = dir_contents(dir.path());
        let (path, offset, _) = corrupt(verify(dir.path()));
        assert_eq!((path.clone(), offset), (files[seg_idx].clone(), start));
        let (path2, offset2, _) = corrupt(Journal::open(dir.path(), Options::default()));
        assert_eq!((path2, offset2), (path, offset));
        assert_eq!(
            dir_contents(dir.path()),
            before_open,
            "verify and a failed open change nothing"
        );

        let opened = open(
            dir.path(),
            Options {
                repair: true,
                ..small_segments(200)
            },
        );
        assert_eq!(records(&opened.journal, 1), flatten(&acked[..5]));
        assert_eq!(
            opened.recovery.dropped_records, 14,
            "the damaged record is not counted"
        );
        assert_eq!(opened.recovery.truncated_file, Some(files[seg_idx].clone()));
        assert_eq!(segment_files(dir.path()), files[..=seg_idx]);
        assert_eq!(
            opened
                .journal
                .append(vec![b"after repair".to_vec()])
                .unwrap(),
            Seq(6)
        );
        drop(opened);
        assert_eq!(verify(dir.path()).unwrap().last_seq, Seq(6));
    }

    #[test]
    fn a_missing_segment_is_a_gap() {
        let dir = tempfile::tempdir().unwrap();
        let acked = fill(dir.path(), 200, &txns(20));
        let files = segment_files(dir.path());
        fs::remove_file(&files[1]).unwrap();
        let (path, offset, reason) = corrupt(Journal::open(dir.path(), Options::default()));
        assert_eq!((path, offset), (files[2].clone(), 0));
        assert!(reason.starts_with("seq gap"), "{reason}");
        assert_eq!(corrupt(verify(dir.path())).0, files[2]);
        let opened = open(
            dir.path(),
            Options {
                repair: true,
                ..Default::default()
            },
        );
        let kept = records(&opened.journal, 1);
        assert_eq!(kept, flatten(&acked)[..kept.len()]);
        assert_eq!(segment_files(dir.path()), files[..1]);
    }

    #[test]
    fn a_segment_torn_while_being_created_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let acked = fill(dir.path(), 1 << 20, &txns(3));
        let torn = dir.path().join(crate::segment::file_name(4));
        fs::write(&torn, b"aliasd").unwrap();
        let opened = open(dir.path(), Options::default());
        assert_eq!(opened.recovery.truncated_file, Some(torn.clone()));
        assert_eq!(opened.recovery.truncated_bytes, 6);
        assert!(!torn.exists());
        assert_eq!(records(&opened.journal, 1), flatten(&acked));
        assert_eq!(opened.journal.append(vec![b"x".to_vec()]).unwrap(), Seq(4));
    }

    /// Five one-record transactions of 30-byte payloads, snapshots at `snapshots`, closed.
    fn five_with_snapshots(dir: &Path, snapshots: &[u64]) -> PathBuf {
        let journal = open(dir, Options::default()).journal;
        for idx in 0..5 {
            journal.append(vec![payload(idx, 30)]).unwrap();
        }
        for seq in snapshots {
            journal
                .write_snapshot(Seq(*seq), format!("state@{seq}").as_bytes())
                .unwrap();
        }
        drop(journal);
        segment_files(dir).pop().unwrap()
    }

    /// Where the `n`th of [`five_with_snapshots`]'s records ends.
    fn end_of_record(n: u64) -> u64 {
        SEGMENT_HEADER_LEN as u64 + n * (record::HEADER_LEN as u64 + 30)
    }

    fn repair() -> Options {
        Options {
            repair: true,
            ..Options::default()
        }
    }

    /// A repaired journal that went on after its snapshot at `seq`: the snapshot is kept,
    /// the log starts after it, and the set-aside segments hold `set_aside` records.
    fn check_restarted_after_snapshot(dir: &Path, seq: u64, set_aside: u64) {
        let snaps = snapshot_files(dir);
        let segments: Vec<(PathBuf, Vec<u8>)> = segment_files(dir)
            .into_iter()
            .map(|path| (path.clone(), fs::read(path).unwrap()))
            .collect();
        let opened = open(dir, repair());
        let snapshot = opened.snapshot.clone().expect("the snapshot is kept");
        assert_eq!(
            (snapshot.seq, snapshot.data),
            (Seq(seq), format!("state@{seq}").into_bytes())
        );
        assert_eq!(snapshot_files(dir), snaps, "no snapshot deleted");
        let aside = dir.join(format!("{}{seq}", super::SET_ASIDE_PREFIX));
        assert_eq!(opened.recovery.set_aside.as_deref(), Some(aside.as_path()));
        assert_eq!(opened.recovery.set_aside_records, set_aside);
        let aside_segments: Vec<(PathBuf, Vec<u8>)> = segment_files(&aside)
            .into_iter()
            .map(|path| (dir.join(path.file_name().unwrap()), fs::read(path).unwrap()))
            .collect();
        assert_eq!(
            aside_segments, segments,
            "the segments are set aside untouched"
        );
        let journal = &opened.journal;
        assert_eq!(
            (journal.first_seq(), journal.last_seq()),
            (Seq(seq + 1), Seq(seq))
        );
        assert_eq!(records(journal, 1), vec![]);
        assert_eq!(
            journal.append(vec![b"next".to_vec()]).unwrap(),
            Seq(seq + 1)
        );
        drop(opened);
        let report = verify(dir).unwrap();
        assert_eq!(
            (report.last_seq, report.snapshot_seq),
            (Seq(seq + 1), Some(Seq(seq)))
        );
        let reopened = open(dir, Options::default());
        assert_eq!(reopened.snapshot.map(|s| s.seq), Some(Seq(seq)));
        assert_eq!(
            records(&reopened.journal, 1),
            vec![(seq + 1, b"next".to_vec())]
        );
    }

    #[test]
    fn a_log_cut_below_a_valid_snapshot_fails_open_and_repair_keeps_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let seg = five_with_snapshots(dir.path(), &[3, 5]);
        // Record 5 torn: a torn tail by the bytes, but the snapshot at 5 shows it was durable.
        cut(&seg, end_of_record(5) - 1);
        let before = (fs::read(&seg).unwrap(), snapshot_files(dir.path()));
        let (path, offset, reason) = corrupt(Journal::open(dir.path(), Options::default()));
        assert_eq!((path, offset), (seg.clone(), end_of_record(4)));
        assert!(reason.starts_with("incomplete record"), "{reason}");
        assert_eq!(
            (fs::read(&seg).unwrap(), snapshot_files(dir.path())),
            before,
            "a failed open changes nothing"
        );
        check_restarted_after_snapshot(dir.path(), 5, 4);
    }

    #[test]
    fn a_segment_cut_to_its_header_below_a_snapshot_fails_open_and_repair_keeps_the_snapshot() {
        for cut_to in [SEGMENT_HEADER_LEN as u64, 0] {
            let dir = tempfile::tempdir().unwrap();
            let seg = five_with_snapshots(dir.path(), &[5]);
            cut(&seg, cut_to);
            let (path, _, reason) = corrupt(Journal::open(dir.path(), Options::default()));
            assert_eq!(path, seg);
            if cut_to == 0 {
                assert!(reason.starts_with("incomplete segment header"), "{reason}");
            } else {
                assert!(reason.contains("snapshot at seq 5"), "{reason}");
            }
            corrupt(verify(dir.path()));
            check_restarted_after_snapshot(dir.path(), 5, 0);
        }
    }

    #[test]
    fn mid_log_damage_below_a_snapshot_is_repaired_by_setting_every_segment_aside() {
        let dir = tempfile::tempdir().unwrap();
        let acked = fill(dir.path(), 200, &txns(20));
        open(dir.path(), small_segments(200))
            .journal
            .write_snapshot(Seq(20), b"state@20")
            .unwrap();
        let files = segment_files(dir.path());
        assert!(files.len() >= 4);
        let layout = layout(dir.path(), &acked);
        let (seg_idx, start, _) = layout[5];
        assert!(seg_idx < files.len() - 1);
        flip(&files[seg_idx], start + 25, 0x10);
        let (path, offset, _) = corrupt(Journal::open(dir.path(), Options::default()));
        assert_eq!((path, offset), (files[seg_idx].clone(), start));
        check_restarted_after_snapshot(dir.path(), 20, 5);
    }

    #[test]
    fn damage_after_a_valid_snapshot_is_repaired_keeping_the_snapshot_and_the_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let seg = five_with_snapshots(dir.path(), &[2]);
        flip(&seg, end_of_record(3) + 25, 0x10);
        let (path, offset, _) = corrupt(Journal::open(dir.path(), Options::default()));
        assert_eq!((path, offset), (seg, end_of_record(3)));
        let opened = open(dir.path(), repair());
        assert_eq!(opened.snapshot.as_ref().map(|s| s.seq), Some(Seq(2)));
        assert_eq!(opened.recovery.set_aside, None);
        let kept: Vec<u64> = records(&opened.journal, 1).iter().map(|r| r.0).collect();
        assert_eq!(kept, [1, 2, 3]);
        drop(opened);
        assert_eq!(verify(dir.path()).unwrap().snapshot_seq, Some(Seq(2)));
    }

    #[test]
    fn a_damaged_snapshot_ahead_of_a_cut_log_is_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let seg = five_with_snapshots(dir.path(), &[3, 5]);
        let snaps = snapshot_files(dir.path());
        flip(&snaps[1], 35, 1);
        cut(&seg, end_of_record(5) - 1);
        let opened = open(dir.path(), Options::default());
        assert_eq!(opened.journal.last_seq(), Seq(4));
        assert_eq!(opened.snapshot.map(|s| s.seq), Some(Seq(3)));
        assert_eq!(opened.recovery.discarded_snapshots, vec![snaps[1].clone()]);
        assert_eq!(opened.recovery.ignored_snapshots, Vec::<PathBuf>::new());
        assert_eq!(snapshot_files(dir.path()), snaps[..1]);
    }

    #[test]
    fn an_empty_journal_with_a_snapshot_starts_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let journal = open(dir.path(), Options::default()).journal;
        for idx in 0..5 {
            journal.append(vec![payload(idx, 30)]).unwrap();
        }
        journal.write_snapshot(Seq(5), b"five").unwrap();
        drop(journal);
        for seg in segment_files(dir.path()) {
            fs::remove_file(seg).unwrap();
        }
        let opened = open(dir.path(), Options::default());
        assert_eq!(
            (opened.journal.first_seq(), opened.journal.last_seq()),
            (Seq(6), Seq(5))
        );
        assert_eq!(
            opened.journal.append(vec![b"six".to_vec()]).unwrap(),
            Seq(6)
        );
        drop(opened);
        assert_eq!(verify(dir.path()).unwrap().last_seq, Seq(6));
    }

    fn arb_txns() -> impl Strategy<Value = Vec<Vec<Vec<u8>>>> {
        proptest::collection::vec(
            proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..60), 1..4),
            1..10,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn a_journal_cut_anywhere_recovers_a_prefix_of_whole_transactions(
            txns in arb_txns(),
            segment_bytes in 100u64..600,
            zeros_ahead in prop::sample::select(vec![0u64, 64, 1 << 20]),
            cut_at in any::<prop::sample::Index>(),
        ) {
            let options = Options { preallocate_bytes: zeros_ahead, ..small_segments(segment_bytes) };
            let dir = tempfile::tempdir().unwrap();
            let acked = fill_with(dir.path(), options.clone(), &txns);
            let layout = layout(dir.path(), &acked);
            let files = segment_files(dir.path());
            let last_idx = files.len() - 1;
            let bytes = fs::read(&files[last_idx]).unwrap();
            let cut_at = cut_at.index(bytes.len() + 1) as u64;
            cut(&files[last_idx], cut_at);
            let kept = before(&acked, &layout, last_idx, cut_at);

            let opened = open(dir.path(), options);
            prop_assert_eq!(records(&opened.journal, 1), flatten(&kept));
            let kept_end = layout.iter().filter(|(seg, _, end)| *seg == last_idx && *end <= cut_at).map(|(_, _, end)| *end).max();
            if cut_at >= SEGMENT_HEADER_LEN as u64 {
                let kept_end = kept_end.unwrap_or(SEGMENT_HEADER_LEN as u64);
                // Cut bytes are counted up to the last one that is not zero.
                let content_end = bytes[..cut_at as usize].iter().rposition(|&b| b != 0).map_or(0, |i| i as u64 + 1);
                prop_assert_eq!(opened.recovery.truncated_bytes, content_end.max(kept_end) - kept_end);
            }
            let next = kept.last().map_or(1, |(first, payloads)| first + payloads.len() as u64);
            prop_assert_eq!(opened.journal.append(vec![b"next".to_vec()]).unwrap(), Seq(next));
            drop(opened);
            prop_assert_eq!(verify(dir.path()).unwrap().last_seq, Seq(next));
        }

        #[test]
        fn a_flipped_byte_is_cut_at_the_tail_and_reported_elsewhere(
            txns in arb_txns(),
            segment_bytes in 100u64..600,
            zeros_ahead in prop::sample::select(vec![0u64, 64, 1 << 20]),
            file_idx in any::<prop::sample::Index>(),
            pos in any::<prop::sample::Index>(),
            mask in 1u8..=255,
        ) {
            let small_segments = |segment_bytes| Options { preallocate_bytes: zeros_ahead, ..small_segments(segment_bytes) };
            let dir = tempfile::tempdir().unwrap();
            let acked = fill_with(dir.path(), small_segments(segment_bytes), &txns);
            let layout = layout(dir.path(), &acked);
            let files = segment_files(dir.path());
            let last_idx = files.len() - 1;
            let file_idx = file_idx.index(files.len());
            let pos = pos.index(fs::metadata(&files[file_idx]).unwrap().len() as usize) as u64;
            flip(&files[file_idx], pos, mask);

            let (path, offset, _) = corrupt(verify(dir.path()));
            prop_assert_eq!(&path, &files[file_idx]);
            prop_assert!(offset <= pos);

            let (_, last_txn_start, data_end) = *layout.last().unwrap();
            if file_idx == last_idx && pos >= data_end {
                // In the zeros written ahead: cut, and nothing acknowledged is lost.
                let opened = open(dir.path(), small_segments(segment_bytes));
                prop_assert_eq!(records(&opened.journal, 1), flatten(&acked));
                prop_assert_eq!(opened.recovery.truncated_file, Some(files[last_idx].clone()));
            } else if file_idx == last_idx && pos >= last_txn_start {
                let opened = open(dir.path(), small_segments(segment_bytes));
                prop_assert_eq!(records(&opened.journal, 1), flatten(&acked[..acked.len() - 1]));
                prop_assert_eq!(opened.recovery.truncated_file, Some(files[last_idx].clone()));
            } else {
                let (path, offset, _) = corrupt(Journal::open(dir.path(), small_segments(segment_bytes)));
                prop_assert_eq!(&path, &files[file_idx]);
                prop_assert!(offset <= pos);
                let opened = open(dir.path(), Options { repair: true, ..small_segments(segment_bytes) });
                let kept = before(&acked, &layout, file_idx, pos);
                prop_assert_eq!(records(&opened.journal, 1), flatten(&kept));
                let next = kept.last().map_or(1, |(first, payloads)| first + payloads.len() as u64);
                prop_assert_eq!(opened.journal.append(vec![b"next".to_vec()]).unwrap(), Seq(next));
                drop(opened);
                prop_assert_eq!(verify(dir.path()).unwrap().last_seq, Seq(next));
            }
        }
    }
}
