//! Framing of one record: a 20-byte header (CRC32C, length, seq, flags), then the payload.
//!
//! Decoding tells apart three outcomes, as mini-redis's frame parser does:
//! a whole valid record, [`Decoded::Incomplete`] (the buffer ends inside the record,
//! which is what a crash in the middle of a write leaves) and [`Decoded::Corrupt`]
//! (the bytes can never become a valid record).
//! Any strict prefix of a valid record is `Incomplete`, never `Corrupt`.

/// Bytes of a record header.
pub(crate) const HEADER_LEN: usize = 20;

/// The largest payload a record may carry (64 MiB).
pub const MAX_PAYLOAD_BYTES: usize = 64 << 20;

/// Flag: this record is the last of its transaction (the commit marker).
pub(crate) const FLAG_TXN_END: u32 = 1;
/// Flag: this record is the first one of a group-commit batch.
pub(crate) const FLAG_BATCH_BEGIN: u32 = 1 << 1;
/// Flag: this record is the last one of a group-commit batch.
pub(crate) const FLAG_BATCH_END: u32 = 1 << 2;
/// Every flag bit a valid record may set.
const KNOWN_FLAGS: u32 = FLAG_TXN_END | FLAG_BATCH_BEGIN | FLAG_BATCH_END;

/// A decoded record, borrowing its payload from the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Record<'a> {
    /// The record's seq.
    pub(crate) seq: u64,
    /// Its flags (`FLAG_*`).
    pub(crate) flags: u32,
    /// The payload.
    pub(crate) payload: &'a [u8],
}

impl Record<'_> {
    /// Bytes the record takes on disk.
    pub(crate) fn encoded_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }

    /// Whether this record ends its transaction.
    pub(crate) fn is_txn_end(&self) -> bool {
        self.flags & FLAG_TXN_END != 0
    }
}

/// What [`decode`] found at the start of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decoded<'a> {
    /// A whole, valid record.
    Record(Record<'a>),
    /// The buffer ends inside a record (or is empty).
    Incomplete,
    /// The bytes are not a valid record; the string says why.
    Corrupt(String),
}

/// Appends the encoding of one record to `out`.
///
/// The caller has checked `payload.len() <= MAX_PAYLOAD_BYTES`.
pub(crate) fn encode(out: &mut Vec<u8>, seq: u64, flags: u32, payload: &[u8]) {
    let start = out.len();
    out.extend_from_slice(&[0u8; 4]);
    // The caller checked the payload against MAX_PAYLOAD_BYTES, which fits in a u32.
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32c::crc32c(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// The fields of a record header, unchecked.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Header {
    pub(crate) crc: u32,
    pub(crate) len: usize,
    pub(crate) seq: u64,
    pub(crate) flags: u32,
}

/// Reads the header fields at the start of `buf` (which holds at least `HEADER_LEN` bytes).
pub(crate) fn header(buf: &[u8]) -> Header {
    Header {
        crc: u32_at(buf, 0),
        len: u32_at(buf, 4) as usize,
        seq: u64_at(buf, 8),
        flags: u32_at(buf, 16),
    }
}

/// Decodes the record at the start of `buf`.
pub(crate) fn decode(buf: &[u8]) -> Decoded<'_> {
    if buf.len() < HEADER_LEN {
        return Decoded::Incomplete;
    }
    let head = header(buf);
    if head.len > MAX_PAYLOAD_BYTES {
        return Decoded::Corrupt(format!(
            "record length {} exceeds the limit of {MAX_PAYLOAD_BYTES}",
            head.len
        ));
    }
    if head.flags & !KNOWN_FLAGS != 0 {
        return Decoded::Corrupt(format!("unknown record flags {:#x}", head.flags));
    }
    let end = HEADER_LEN + head.len;
    if buf.len() < end {
        return Decoded::Incomplete;
    }
    let crc = crc32c::crc32c(&buf[4..end]);
    if crc != head.crc {
        return Decoded::Corrupt(format!(
            "checksum mismatch (stored {:#010x}, computed {crc:#010x})",
            head.crc
        ));
    }
    Decoded::Record(Record {
        seq: head.seq,
        flags: head.flags,
        payload: &buf[HEADER_LEN..end],
    })
}

/// Whether a valid record could plausibly start at the start of `buf` with a seq in
/// `min_seq..=max_seq`: a cheap test on the header before the checksum is computed.
pub(crate) fn plausible(buf: &[u8], min_seq: u64, max_seq: u64) -> bool {
    if buf.len() < HEADER_LEN {
        return false;
    }
    let head = header(buf);
    head.flags & !KNOWN_FLAGS == 0
        && head.len <= MAX_PAYLOAD_BYTES
        && HEADER_LEN + head.len <= buf.len()
        && (min_seq..=max_seq).contains(&head.seq)
}

pub(crate) fn u32_at(buf: &[u8], at: usize) -> u32 {
    let mut bytes = [0u8; 4];
    bytes.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(bytes)
}

pub(crate) fn u64_at(buf: &[u8], at: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn encoded(seq: u64, flags: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode(&mut out, seq, flags, payload);
        out
    }

    /// Decodes `buf` and compares the outcome's shape with `expected`.
    fn check(buf: &[u8], expected: &str) {
        let actual = match decode(buf) {
            Decoded::Record(r) => format!(
                "record seq={} flags={} len={}",
                r.seq,
                r.flags,
                r.payload.len()
            ),
            Decoded::Incomplete => "incomplete".to_string(),
            Decoded::Corrupt(reason) => format!("corrupt: {reason}"),
        };
        assert!(
            actual.starts_with(expected),
            "{actual:?} does not start with {expected:?}"
        );
    }

    #[test]
    fn decodes_records_and_tells_incomplete_from_corrupt() {
        let rec = encoded(7, FLAG_TXN_END, b"hello");
        check(&rec, "record seq=7 flags=1 len=5");
        check(&[], "incomplete");
        check(&rec[..HEADER_LEN - 1], "incomplete");
        check(&rec[..rec.len() - 1], "incomplete");
        let mut flipped = rec.clone();
        flipped[HEADER_LEN] ^= 1;
        check(&flipped, "corrupt: checksum mismatch");
        let mut flags = rec.clone();
        flags[19] = 0x80;
        check(&flags, "corrupt: unknown record flags");
        let mut huge = rec.clone();
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        check(&huge, "corrupt: record length");
        check(&[0u8; 64], "corrupt: checksum mismatch");
        check(&encoded(1, 0, b""), "record seq=1 flags=0 len=0");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn round_trips(seq in any::<u64>(), flags in 0u32..8, payload in proptest::collection::vec(any::<u8>(), 0..512)) {
            let rec = encoded(seq, flags, &payload);
            prop_assert_eq!(rec.len(), HEADER_LEN + payload.len());
            prop_assert_eq!(decode(&rec), Decoded::Record(Record { seq, flags, payload: &payload }));
            // Trailing bytes do not change the outcome.
            let mut longer = rec.clone();
            longer.extend_from_slice(b"trailing");
            prop_assert_eq!(decode(&longer), Decoded::Record(Record { seq, flags, payload: &payload }));
        }

        #[test]
        fn strict_prefixes_are_incomplete(payload in proptest::collection::vec(any::<u8>(), 0..300), cut in any::<prop::sample::Index>()) {
            let rec = encoded(42, FLAG_TXN_END, &payload);
            let cut = cut.index(rec.len());
            prop_assert_eq!(decode(&rec[..cut]), Decoded::Incomplete);
        }
    }
}
