//! One segment file: its name (the zero-padded first seq), its header (magic, version,
//! first seq, checksum), the scan that validates it, and a buffered cursor over its records.
//!
//! Segments roll over in the writer (see `writer.rs`) once larger than
//! [`crate::Options::segment_bytes`], always between two batches, so a transaction never
//! spans two files.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::io::{Io, IoFile};
use crate::record::{self, Decoded, Record, FLAG_BATCH_BEGIN, FLAG_BATCH_END, HEADER_LEN};

/// The first bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"aliasdJS";
/// The segment format version this code writes and reads.
pub const SEGMENT_VERSION: u32 = 1;
/// Bytes of a segment header: magic (8), version (4), first seq (8), CRC32C (4).
pub(crate) const SEGMENT_HEADER_LEN: usize = 24;
/// The file name extension of segments.
const SEGMENT_EXT: &str = ".seg";
/// Bytes a reader asks the file for at once.
const READ_CHUNK: usize = 1 << 20;
/// A cursor's first read: small, so that a reader that starts at a mark to read a few
/// records reads little; each later read doubles, up to [`READ_CHUNK`].
const FIRST_READ_CHUNK: usize = 32 << 10;

/// Bytes of records between two [`Mark`]s of a segment (at least): a reader starting at
/// a seq reads at most about this much before it, at a cost of one mark (16 bytes) per
/// this many bytes of journal held in memory.
pub(crate) const MARK_EVERY_BYTES: u64 = 16 << 10;

/// Where a record starts in its segment: readers start at the nearest mark at or
/// before the seq they want instead of at the segment's first record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mark {
    /// The record's seq.
    pub(crate) seq: u64,
    /// Its offset in the segment file.
    pub(crate) offset: u64,
}

/// The marks of a segment, oldest first: a mark for a record that starts at least
/// [`MARK_EVERY_BYTES`] after the previous mark (or after the header).
#[derive(Debug, Clone, Default)]
pub(crate) struct Marks(Vec<Mark>);

impl Marks {
    /// The offset after which the next mark may go.
    pub(crate) fn last_offset(&self) -> u64 {
        self.0
            .last()
            .map_or(SEGMENT_HEADER_LEN as u64, |mark| mark.offset)
    }

    /// Marks the record `seq` at `offset` if it is far enough from the last mark.
    pub(crate) fn offer(&mut self, seq: u64, offset: u64) {
        if offset >= self.last_offset() + MARK_EVERY_BYTES {
            self.0.push(Mark { seq, offset });
        }
    }

    /// Adds marks made for records now durable (in order, after these).
    pub(crate) fn extend(&mut self, more: &[Mark]) {
        self.0.extend_from_slice(more);
    }

    /// Drops the marks at or past `end` (records cut off by recovery).
    pub(crate) fn cut(&mut self, end: u64) {
        self.0.retain(|mark| mark.offset < end);
    }

    /// The last mark at or before `seq`, if any.
    pub(crate) fn at_or_before(&self, seq: u64) -> Option<Mark> {
        let idx = self.0.partition_point(|mark| mark.seq <= seq);
        idx.checked_sub(1).map(|idx| self.0[idx])
    }

    /// How many marks there are.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}

/// The file name of the segment whose first record has seq `first_seq`.
pub(crate) fn file_name(first_seq: u64) -> String {
    format!("{first_seq:020}{SEGMENT_EXT}")
}

/// The first seq a segment file name carries, if `name` is a segment name.
pub(crate) fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_EXT)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Seqs start at 1, so no segment can start at 0.
    digits.parse().ok().filter(|seq| *seq > 0)
}

/// The segments in `dir`, as (first seq, path), oldest first.
pub(crate) fn list(io: &dyn Io, dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let names = io.list_dir(dir).map_err(|e| Error::io("list", dir, e))?;
    let mut segments: Vec<(u64, PathBuf)> = names
        .iter()
        .filter_map(|name| Some((parse_name(name)?, dir.join(name))))
        .collect();
    segments.sort();
    Ok(segments)
}

/// The header of a new segment.
pub(crate) fn encode_header(first_seq: u64) -> [u8; SEGMENT_HEADER_LEN] {
    let mut out = [0u8; SEGMENT_HEADER_LEN];
    out[..8].copy_from_slice(&SEGMENT_MAGIC);
    out[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    out[12..20].copy_from_slice(&first_seq.to_le_bytes());
    let crc = crc32c::crc32c(&out[..20]);
    out[20..].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Checks a segment header; returns its first seq, or why it is bad.
fn decode_header(buf: &[u8]) -> std::result::Result<u64, String> {
    if buf.len() < SEGMENT_HEADER_LEN {
        return Err(format!(
            "incomplete segment header ({} of {SEGMENT_HEADER_LEN} bytes)",
            buf.len()
        ));
    }
    if buf[..8] != SEGMENT_MAGIC {
        return Err("bad segment magic".to_string());
    }
    let crc = crc32c::crc32c(&buf[..20]);
    if crc != record::u32_at(buf, 20) {
        return Err("segment header checksum mismatch".to_string());
    }
    let version = record::u32_at(buf, 8);
    if version != SEGMENT_VERSION {
        return Err(format!("unsupported segment version {version}"));
    }
    Ok(record::u64_at(buf, 12))
}

/// Creates a new, empty segment in `dir` and makes it durable (file and directory entry).
///
/// On failure the partial file is removed (best effort).
pub(crate) fn create(
    io: &dyn Io,
    dir: &Path,
    first_seq: u64,
) -> Result<(PathBuf, Box<dyn IoFile>)> {
    let path = dir.join(file_name(first_seq));
    let res = (|| {
        let file = io
            .create(&path)
            .map_err(|e| Error::io("create", &path, e))?;
        file.write_all_at(&encode_header(first_seq), 0)
            .map_err(|e| Error::io("write", &path, e))?;
        file.sync_data()
            .map_err(|e| Error::io("fdatasync", &path, e))?;
        io.sync_dir(dir)
            .map_err(|e| Error::io("sync dir", dir, e))?;
        Ok(file)
    })();
    match res {
        Ok(file) => Ok((path, file)),
        Err(e) => {
            let _ = io.remove_file(&path);
            let _ = io.sync_dir(dir);
            Err(e)
        }
    }
}

/// The first problem a scan met in a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Damage {
    /// Byte offset of the first bad byte range (a record, the header, or an unfinished transaction).
    pub(crate) offset: u64,
    /// What is wrong.
    pub(crate) reason: String,
    /// Whether a crash in the middle of a write could have left this (a bad checksum, a
    /// partial record); false for things no crash produces (valid records out of sequence).
    pub(crate) torn: bool,
    /// Whether this is a transaction without its commit record, at the end of the file
    /// (its records are whole and valid; nothing follows them).
    pub(crate) unfinished_txn: bool,
}

/// What [`scan`] found in a segment.
#[derive(Debug, Clone)]
pub(crate) struct Scan {
    /// Marks of the records scanned (cut to `committed_end` by the caller).
    pub(crate) marks: Marks,
    /// Byte offset just after the last whole transaction (0 if the header is bad).
    pub(crate) committed_end: u64,
    /// The seq of the last record of the last whole transaction (`first_seq - 1` if none).
    pub(crate) last_seq: u64,
    /// Records in whole transactions.
    pub(crate) records: u64,
    /// The first problem, if any: everything from `committed_end` on is not trusted.
    pub(crate) damage: Option<Damage>,
}

/// Whether `rest` (what follows the last record) is space the writer filled with zeros
/// ahead of its writes, so that a commit's `fdatasync` need not change the file's
/// length: every byte zero. No record starts with zeros (its seq is at least 1), and
/// an empty rest is the plain end of the file.
pub(crate) fn is_preallocated(rest: &[u8]) -> bool {
    rest.first().is_none_or(|&b| b == 0) && rest.iter().all(|&b| b == 0)
}

/// Validates the segment `buf` named with first seq `name_seq`: header, checksums,
/// seq continuity, whole transactions.
pub(crate) fn scan(buf: &[u8], name_seq: u64) -> Scan {
    let mut out = Scan {
        marks: Marks::default(),
        committed_end: 0,
        last_seq: name_seq.saturating_sub(1),
        records: 0,
        damage: None,
    };
    match decode_header(buf) {
        Ok(first) if first == name_seq => {}
        Ok(first) => {
            let reason = format!("segment header says first seq {first}, its name says {name_seq}");
            out.damage = Some(Damage {
                offset: 0,
                reason,
                torn: false,
                unfinished_txn: false,
            });
            return out;
        }
        Err(reason) => {
            out.damage = Some(Damage {
                offset: 0,
                reason,
                torn: true,
                unfinished_txn: false,
            });
            return out;
        }
    }
    out.committed_end = SEGMENT_HEADER_LEN as u64;
    let mut pos = SEGMENT_HEADER_LEN;
    let mut expected = name_seq;
    let mut n_records = 0u64;
    loop {
        if is_preallocated(&buf[pos..]) {
            // Zeros the writer wrote ahead (or the end of the file): the data ends here.
            if out.committed_end < pos as u64 {
                let reason = "transaction without its commit record".to_string();
                out.damage = Some(Damage {
                    offset: out.committed_end,
                    reason,
                    torn: true,
                    unfinished_txn: true,
                });
            }
            return out;
        }
        match record::decode(&buf[pos..]) {
            Decoded::Record(rec) => {
                if rec.seq != expected {
                    let reason = format!("expected seq {expected}, found {}", rec.seq);
                    out.damage = Some(Damage {
                        offset: pos as u64,
                        reason,
                        torn: false,
                        unfinished_txn: false,
                    });
                    return out;
                }
                expected += 1;
                n_records += 1;
                out.marks.offer(rec.seq, pos as u64);
                pos += rec.encoded_len();
                if rec.is_txn_end() {
                    out.committed_end = pos as u64;
                    out.last_seq = rec.seq;
                    out.records = n_records;
                }
            }
            Decoded::Incomplete => {
                let reason = format!(
                    "incomplete record ({} bytes left in the file)",
                    buf.len() - pos
                );
                out.damage = Some(Damage {
                    offset: pos as u64,
                    reason,
                    torn: true,
                    unfinished_txn: false,
                });
                return out;
            }
            Decoded::Corrupt(reason) => {
                out.damage = Some(Damage {
                    offset: pos as u64,
                    reason,
                    torn: true,
                    unfinished_txn: false,
                });
                return out;
            }
        }
    }
}

/// What lies after damage in a segment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct AfterDamage {
    /// Valid records found after the damage.
    pub(crate) records: u64,
    /// Whether those records prove the damaged bytes had been synced: a valid record that
    /// begins a batch, or one that follows the end of a batch. The writer starts a batch
    /// only once the previous one is durable, so the damage is not a torn write.
    pub(crate) proves_durable: bool,
}

/// Looks for valid records after damage at `offset`, with seqs after `after_seq`,
/// trying every byte offset (the damaged record's length cannot be trusted).
pub(crate) fn scan_after_damage(buf: &[u8], offset: u64, after_seq: u64) -> AfterDamage {
    let mut out = AfterDamage::default();
    let min_seq = after_seq.saturating_add(1);
    let max_seq = after_seq.saturating_add((buf.len() / HEADER_LEN) as u64 + 1);
    let mut saw_batch_end = false;
    let mut pos = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .saturating_add(1);
    while pos + HEADER_LEN <= buf.len() {
        if record::plausible(&buf[pos..], min_seq, max_seq) {
            if let Decoded::Record(rec) = record::decode(&buf[pos..]) {
                out.records += 1;
                if rec.flags & FLAG_BATCH_BEGIN != 0 || saw_batch_end {
                    out.proves_durable = true;
                }
                saw_batch_end |= rec.flags & FLAG_BATCH_END != 0;
                pos += rec.encoded_len();
                continue;
            }
        }
        pos += 1;
    }
    out
}

/// The end of what was written from `from` on: just after the last byte that is not
/// zero (zeros written ahead are not content), and at least `from`.
pub(crate) fn content_end(buf: &[u8], from: u64) -> u64 {
    let last = buf
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |i| i as u64 + 1);
    last.max(from)
}

/// Counts the records that decode in sequence from byte `from` on, whatever their seqs
/// (for saying what a cut drops).
pub(crate) fn count_records(buf: &[u8], from: usize) -> u64 {
    let mut pos = from;
    let mut n_records = 0;
    while pos < buf.len() {
        match record::decode(&buf[pos..]) {
            Decoded::Record(rec) => {
                n_records += 1;
                pos += rec.encoded_len();
            }
            _ => break,
        }
    }
    n_records
}

/// A buffered, forward-only cursor over the records of one segment file, up to a
/// durable length known in advance. It reads in large chunks, so replay costs one
/// `pread` per megabyte, not per record.
#[derive(Debug)]
pub(crate) struct Cursor {
    path: PathBuf,
    file: Box<dyn IoFile>,
    /// Never read at or past this file offset: bytes beyond are not durable yet.
    end: u64,
    /// File offset of `buf[filled]`: where the next read goes.
    next_read: u64,
    buf: Vec<u8>,
    /// Start of the unconsumed bytes in `buf`.
    start: usize,
    /// End of the valid bytes in `buf`.
    filled: usize,
    /// File offset of the record last returned, for error messages.
    record_offset: u64,
    /// Payload length of the record last returned: its bytes end at `start`.
    last_payload_len: usize,
    /// How much the next read asks for (see [`FIRST_READ_CHUNK`]).
    chunk: usize,
}

impl Cursor {
    /// Opens the segment at `path` and checks its header.
    pub(crate) fn open(io: &dyn Io, path: &Path, first_seq: u64, end: u64) -> Result<Cursor> {
        let file = io.open_read(path).map_err(|e| Error::io("open", path, e))?;
        let mut cursor = Cursor {
            path: path.to_path_buf(),
            file,
            end,
            next_read: 0,
            buf: Vec::new(),
            start: 0,
            filled: 0,
            record_offset: 0,
            last_payload_len: 0,
            chunk: FIRST_READ_CHUNK,
        };
        cursor.fill(SEGMENT_HEADER_LEN)?;
        match decode_header(&cursor.buf[..cursor.filled]) {
            Ok(first) if first == first_seq => {}
            Ok(first) => {
                let reason =
                    format!("segment header says first seq {first}, its name says {first_seq}");
                return Err(Error::corrupt(path, 0, reason));
            }
            Err(reason) => return Err(Error::corrupt(path, 0, reason)),
        }
        cursor.start = SEGMENT_HEADER_LEN;
        Ok(cursor)
    }

    /// [`Cursor::open`], then goes to `mark`, a record start recorded when the
    /// segment was written or scanned, dropping what was read before it.
    pub(crate) fn open_at(
        io: &dyn Io,
        path: &Path,
        first_seq: u64,
        end: u64,
        mark: Mark,
    ) -> Result<Cursor> {
        let mut cursor = Cursor::open(io, path, first_seq, end)?;
        let buffered_to = cursor.next_read;
        if mark.offset <= buffered_to {
            cursor.start = mark.offset as usize;
        } else {
            cursor.start = 0;
            cursor.filled = 0;
            cursor.next_read = mark.offset;
        }
        Ok(cursor)
    }

    /// An [`Error::Corrupt`] at the record last returned (or the next one).
    pub(crate) fn corrupt_here(&self, reason: String) -> Error {
        Error::corrupt(&self.path, self.record_offset, reason)
    }

    /// The payload of the record last returned by [`Cursor::next_record`],
    /// valid until the next call.
    pub(crate) fn last_payload(&self) -> &[u8] {
        &self.buf[self.start - self.last_payload_len..self.start]
    }

    /// File offset of the next unconsumed byte.
    fn offset(&self) -> u64 {
        self.next_read - (self.filled - self.start) as u64
    }

    /// The next record, or `None` at the durable end.
    pub(crate) fn next_record(&mut self) -> Result<Option<Record<'_>>> {
        loop {
            let avail = self.filled - self.start;
            let mut need = HEADER_LEN;
            if avail >= HEADER_LEN {
                let len = record::header(&self.buf[self.start..self.filled]).len;
                need = HEADER_LEN.saturating_add(len);
                if avail >= need || len > record::MAX_PAYLOAD_BYTES {
                    break;
                }
            }
            if self.next_read >= self.end {
                if avail == 0 {
                    return Ok(None);
                }
                let reason = "record runs past the durable end of the segment";
                return Err(Error::corrupt(&self.path, self.offset(), reason));
            }
            self.fill(need)?;
        }
        let offset = self.offset();
        self.record_offset = offset;
        match record::decode(&self.buf[self.start..self.filled]) {
            Decoded::Record(rec) => {
                self.start += rec.encoded_len();
                self.last_payload_len = rec.payload.len();
                Ok(Some(rec))
            }
            Decoded::Incomplete => Err(Error::corrupt(&self.path, offset, "incomplete record")),
            Decoded::Corrupt(reason) => Err(Error::corrupt(&self.path, offset, reason)),
        }
    }

    /// Reads more of the file so that at least `need` unconsumed bytes are buffered,
    /// or the durable end is reached.
    fn fill(&mut self, need: usize) -> Result<()> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.filled, 0);
            self.filled -= self.start;
            self.start = 0;
        }
        let want = need.max(self.chunk);
        self.chunk = (self.chunk * 2).min(READ_CHUNK);
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        }
        while self.filled < need && self.next_read < self.end {
            let room = (self.buf.len() - self.filled) as u64;
            let n_bytes = room.min(self.end - self.next_read) as usize;
            let dst = &mut self.buf[self.filled..self.filled + n_bytes];
            let n_read = self
                .file
                .read_at(dst, self.next_read)
                .map_err(|e| Error::io("read", &self.path, e))?;
            if n_read == 0 {
                let reason = format!("segment is shorter than its durable length {}", self.end);
                return Err(Error::corrupt(&self.path, self.next_read, reason));
            }
            self.filled += n_read;
            self.next_read += n_read as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::record::FLAG_TXN_END;

    /// A segment holding the given transactions (each a list of payloads), one batch each.
    fn segment(first_seq: u64, txns: &[Vec<Vec<u8>>]) -> Vec<u8> {
        let mut out = encode_header(first_seq).to_vec();
        let mut seq = first_seq;
        for txn in txns {
            for (idx, payload) in txn.iter().enumerate() {
                let mut flags = 0;
                if idx == 0 {
                    flags |= FLAG_BATCH_BEGIN;
                }
                if idx + 1 == txn.len() {
                    flags |= FLAG_TXN_END | FLAG_BATCH_END;
                }
                record::encode(&mut out, seq, flags, payload);
                seq += 1;
            }
        }
        out
    }

    /// Scans `buf` and compares a one-line summary with `expected`.
    fn check(buf: &[u8], expected: &str) {
        let scan = scan(buf, 5);
        let damage = match &scan.damage {
            Some(d) => format!(" damage@{} torn={} {}", d.offset, d.torn, d.reason),
            None => String::new(),
        };
        let actual = format!(
            "end={} last={} records={}{damage}",
            scan.committed_end, scan.last_seq, scan.records
        );
        assert!(
            actual.starts_with(expected),
            "{actual:?} does not start with {expected:?}"
        );
    }

    #[test]
    fn names_sort_numerically() {
        assert_eq!(file_name(1), "00000000000000000001.seg");
        assert_eq!(parse_name(&file_name(1234567)), Some(1234567));
        assert_eq!(parse_name("1.seg"), None);
        assert_eq!(parse_name("00000000000000000001.seg.tmp"), None);
        assert!(file_name(9) < file_name(10));
    }

    #[test]
    fn scan_outcomes() {
        let txns = vec![vec![b"a".to_vec()], vec![b"b".to_vec(), b"c".to_vec()]];
        let seg = segment(5, &txns);
        check(&seg, "end=87 last=7 records=3");
        check(&segment(5, &[]), "end=24 last=4 records=0");
        check(
            &seg[..10],
            "end=0 last=4 records=0 damage@0 torn=true incomplete segment header",
        );
        check(
            &seg[..24 + 21 + 21],
            "end=45 last=5 records=1 damage@45 torn=true transaction without",
        );
        check(
            &seg[..80],
            "end=45 last=5 records=1 damage@66 torn=true incomplete record",
        );
        check(
            &segment(6, &txns),
            "end=0 last=4 records=0 damage@0 torn=false segment header says first seq 6",
        );
        let mut flipped = seg.clone();
        flipped[65] ^= 0xff;
        check(
            &flipped,
            "end=45 last=5 records=1 damage@45 torn=true checksum mismatch",
        );
        // Zeros written ahead end the data; a byte that is not zero among them is damage.
        let with_zeros = |tail: &[u8]| [&seg[..], tail].concat();
        check(&with_zeros(&[0; 3]), "end=87 last=7 records=3");
        check(&with_zeros(&[0; 4096]), "end=87 last=7 records=3");
        check(
            &[&seg[..24 + 21 + 21], &[0; 100]].concat(),
            "end=45 last=5 records=1 damage@45 torn=true transaction without",
        );
        let mut stray = with_zeros(&[0; 4096]);
        stray[87 + 2000] = 1;
        check(
            &stray,
            "end=87 last=7 records=3 damage@87 torn=true checksum mismatch",
        );
    }

    #[test]
    fn later_batches_prove_earlier_damage_durable() {
        let txns = vec![vec![b"a".to_vec()], vec![b"b".to_vec(), b"c".to_vec()]];
        let seg = segment(5, &txns);
        let mut flipped = seg.clone();
        flipped[30] ^= 1;
        let after = scan_after_damage(&flipped, 24, 4);
        assert_eq!(
            after,
            AfterDamage {
                records: 2,
                proves_durable: true
            }
        );
        // Damage in the last batch's first record: the rest of that batch proves nothing.
        let mut flipped = seg.clone();
        flipped[65] ^= 1;
        assert_eq!(
            scan_after_damage(&flipped, 45, 5),
            AfterDamage {
                records: 1,
                proves_durable: false
            }
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn strict_prefixes_of_a_segment_are_incomplete_never_corrupt(
            txns in proptest::collection::vec(proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..4), 0..6),
            cut in any::<prop::sample::Index>(),
        ) {
            let seg = segment(5, &txns);
            let cut = cut.index(seg.len());
            let scan = scan(&seg[..cut], 5);
            if let Some(damage) = &scan.damage {
                prop_assert!(damage.torn, "{damage:?}");
                prop_assert!(damage.reason.starts_with("incomplete") || damage.reason.starts_with("transaction without"), "{damage:?}");
            }
            prop_assert!(scan.committed_end as usize <= cut);
        }
    }
}
