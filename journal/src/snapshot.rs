//! Snapshot files: an opaque blob tagged with the seq it covers, checksummed.
//!
//! A snapshot is written to a temporary file, synced, renamed into place and the
//! directory synced, so a crash leaves either the old set of snapshots or the new one.
//! The snapshot just written and the [`KEPT_SNAPSHOTS`]` - 1` newest before it are kept
//! (time travel starts from the newest one at or below the seq it wants); older ones go.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::io::{self, Io};
use crate::record;

/// The first bytes of every snapshot file.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"aliasdSN";
/// The snapshot format version this code writes and reads.
pub const SNAPSHOT_VERSION: u32 = 1;
/// Bytes of a snapshot header: magic (8), version (4), seq (8), data length (8), CRC32C (4).
const SNAPSHOT_HEADER_LEN: usize = 32;
/// How many snapshots [`prune`] keeps: the one just written and the newest ones before
/// it. A few older states to start time travel from, at the disk cost of as many copies.
pub const KEPT_SNAPSHOTS: usize = 4;
/// The file name extension of snapshots.
const SNAPSHOT_EXT: &str = ".snap";
/// The extension of a snapshot being written.
const TEMP_EXT: &str = ".snap.tmp";

/// The file name of the snapshot covering records up to `seq`.
pub(crate) fn file_name(seq: u64) -> String {
    format!("{seq:020}{SNAPSHOT_EXT}")
}

/// The seq a snapshot file name carries, if `name` is a snapshot name.
pub(crate) fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SNAPSHOT_EXT)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The snapshots in `dir`, as (seq, path), oldest first.
pub(crate) fn list(io: &dyn Io, dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let names = io.list_dir(dir).map_err(|e| Error::io("list", dir, e))?;
    let mut snapshots: Vec<(u64, PathBuf)> = names
        .iter()
        .filter_map(|name| Some((parse_name(name)?, dir.join(name))))
        .collect();
    snapshots.sort();
    Ok(snapshots)
}

/// Removes leftovers of snapshot writes a crash interrupted.
pub(crate) fn remove_temp_files(io: &dyn Io, dir: &Path) -> Result<()> {
    let names = io.list_dir(dir).map_err(|e| Error::io("list", dir, e))?;
    for name in names.iter().filter(|name| name.ends_with(TEMP_EXT)) {
        let path = dir.join(name);
        io.remove_file(&path)
            .map_err(|e| Error::io("remove", &path, e))?;
    }
    Ok(())
}

/// The bytes of a snapshot file.
pub(crate) fn encode(seq: u64, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(SNAPSHOT_HEADER_LEN + data.len());
    out.extend_from_slice(&SNAPSHOT_MAGIC);
    out.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&(data.len() as u64).to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out), data);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(data);
    out
}

/// Checks the bytes of a snapshot file named with `name_seq`; returns its data, or why it is bad.
pub(crate) fn decode(buf: &[u8], name_seq: u64) -> std::result::Result<Vec<u8>, String> {
    if buf.len() < SNAPSHOT_HEADER_LEN {
        return Err(format!(
            "incomplete snapshot header ({} of {SNAPSHOT_HEADER_LEN} bytes)",
            buf.len()
        ));
    }
    if buf[..8] != SNAPSHOT_MAGIC {
        return Err("bad snapshot magic".to_string());
    }
    let version = record::u32_at(buf, 8);
    if version != SNAPSHOT_VERSION {
        return Err(format!("unsupported snapshot version {version}"));
    }
    let seq = record::u64_at(buf, 12);
    let len = record::u64_at(buf, 20);
    if len != (buf.len() - SNAPSHOT_HEADER_LEN) as u64 {
        return Err(format!(
            "snapshot says {len} bytes of data, the file holds {}",
            buf.len() - SNAPSHOT_HEADER_LEN
        ));
    }
    let data = &buf[SNAPSHOT_HEADER_LEN..];
    let crc = crc32c::crc32c_append(crc32c::crc32c(&buf[..28]), data);
    if crc != record::u32_at(buf, 28) {
        return Err("snapshot checksum mismatch".to_string());
    }
    if seq != name_seq {
        return Err(format!("snapshot says seq {seq}, its name says {name_seq}"));
    }
    Ok(data.to_vec())
}

/// Reads and checks one snapshot file: `Ok(Err(reason))` if it is damaged.
pub(crate) fn load(
    io: &dyn Io,
    path: &Path,
    seq: u64,
) -> Result<std::result::Result<Vec<u8>, String>> {
    let file = io.open_read(path).map_err(|e| Error::io("open", path, e))?;
    let buf = io::read_all(&*file).map_err(|e| Error::io("read", path, e))?;
    Ok(decode(&buf, seq))
}

/// Writes a snapshot durably: temporary file, fdatasync, rename, directory sync.
pub(crate) fn write(io: &dyn Io, dir: &Path, seq: u64, data: &[u8]) -> Result<PathBuf> {
    let path = dir.join(file_name(seq));
    let temp = dir.join(format!("{seq:020}{TEMP_EXT}"));
    let res = (|| {
        let file = io
            .create(&temp)
            .map_err(|e| Error::io("create", &temp, e))?;
        file.write_all_at(&encode(seq, data), 0)
            .map_err(|e| Error::io("write", &temp, e))?;
        file.sync_data()
            .map_err(|e| Error::io("fdatasync", &temp, e))?;
        io.rename(&temp, &path)
            .map_err(|e| Error::io("rename", &temp, e))?;
        io.sync_dir(dir).map_err(|e| Error::io("sync dir", dir, e))
    })();
    if res.is_err() {
        let _ = io.remove_file(&temp);
    }
    res.map(|()| path)
}

/// Removes every snapshot but the one for `keep_seq` and the [`KEPT_SNAPSHOTS`]` - 1`
/// newest before it (older ones, and any ahead of `keep_seq`, go).
pub(crate) fn prune(io: &dyn Io, dir: &Path, keep_seq: u64) -> Result<()> {
    let snapshots = list(io, dir)?;
    let kept: Vec<u64> = snapshots
        .iter()
        .rev()
        .map(|(seq, _)| *seq)
        .filter(|seq| *seq <= keep_seq)
        .take(KEPT_SNAPSHOTS)
        .collect();
    let mut removed = false;
    for (seq, path) in &snapshots {
        if !kept.contains(seq) {
            io.remove_file(path)
                .map_err(|e| Error::io("remove", path, e))?;
            removed = true;
        }
    }
    if removed {
        io.sync_dir(dir)
            .map_err(|e| Error::io("sync dir", dir, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `buf` as a snapshot named `name_seq` and compares a summary with `expected`.
    fn check(buf: &[u8], name_seq: u64, expected: &str) {
        let actual = match decode(buf, name_seq) {
            Ok(data) => format!("ok {}", String::from_utf8_lossy(&data)),
            Err(reason) => format!("bad: {reason}"),
        };
        assert!(
            actual.starts_with(expected),
            "{actual:?} does not start with {expected:?}"
        );
    }

    #[test]
    fn decode_outcomes() {
        let snap = encode(9, b"state");
        check(&snap, 9, "ok state");
        check(&encode(9, b""), 9, "ok ");
        check(&snap, 8, "bad: snapshot says seq 9");
        check(&snap[..10], 9, "bad: incomplete snapshot header");
        check(&snap[..snap.len() - 1], 9, "bad: snapshot says 5 bytes");
        let mut flipped = snap.clone();
        *flipped.last_mut().unwrap() ^= 1;
        check(&flipped, 9, "bad: snapshot checksum mismatch");
        let mut magic = snap.clone();
        magic[0] = b'X';
        check(&magic, 9, "bad: bad snapshot magic");
    }

    #[test]
    fn names() {
        assert_eq!(file_name(3), "00000000000000000003.snap");
        assert_eq!(parse_name(&file_name(3)), Some(3));
        assert_eq!(parse_name("00000000000000000003.snap.tmp"), None);
    }
}
