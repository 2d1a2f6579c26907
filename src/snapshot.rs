//! The index as a snapshot blob, so start-up replays only the journal's tail.
//!
//! A compact binary format (the index's own types carry no serde), all
//! integers little-endian:
//!
//! ```text
//! magic "ALIASIDX"  version u32 = 3  last_seq u64
//! strings: count u32, then (len u32, UTF-8 bytes)*     targets and digests, interned
//! aliases: count u64, then per alias:
//!   flags u8 (bit 0: prefix)  state u8 (0 active, 1 dangling, 2 shadowed)
//!   name: len u16, bytes (exact: `host/namespace/model:tag` as spelt; prefix: as spelt)
//!   target u32, digest u32, previous_digest u32 (string indexes; u32::MAX = none)
//!   created_at u64  updated_at u64  seq u64
//! tombstones: count u32, then (name len u16, bytes, digest u32)*
//! per-node states (fleet mode; version 3 on): count u32, then per alias:
//!   key: len u16, bytes (the exact alias's lookup key)
//!   presumed: state u8, digest u32
//!   reports: count u16, then (node u32, state u8, digest u32)*
//! ```
//!
//! Version 2 (no per-node section) is still read.
//!
//! The journal checksums the blob as a whole; an unreadable snapshot is
//! ignored and the journal replayed from the start instead.

use std::collections::HashMap;
use std::sync::Arc;

use crate::index::{AliasEntry, AliasName, AliasState, Index, NodeState, NodeStates, Tombstone};
use crate::name::ModelName;

const MAGIC: &[u8; 8] = b"ALIASIDX";
const SNAPSHOT_VERSION: u32 = 3;
/// The version before per-node states, still read.
const SNAPSHOT_VERSION_2: u32 = 2;
const NONE: u32 = u32::MAX;

/// Encodes the whole index.
pub fn encode(index: &Index) -> Vec<u8> {
    let mut strings: Vec<Arc<str>> = Vec::new();
    let mut string_ids: HashMap<Arc<str>, u32> = HashMap::new();
    let mut intern = |s: &str| -> u32 {
        if let Some(id) = string_ids.get(s) {
            return *id;
        }
        let id = strings.len() as u32;
        let shared: Arc<str> = Arc::from(s);
        strings.push(shared.clone());
        string_ids.insert(shared, id);
        id
    };
    let mut body = Vec::with_capacity(index.len() * 64);
    let n_aliases = index.len() as u64;
    body.extend_from_slice(&n_aliases.to_le_bytes());
    for entry in index.entries() {
        let (flags, name) = match &entry.alias {
            AliasName::Exact(name) => (0u8, name.spelled().to_string()),
            AliasName::Prefix(prefix) => (1u8, prefix.clone()),
        };
        body.push(flags);
        body.push(entry.state as u8);
        put_short_str(&mut body, &name);
        body.extend_from_slice(&intern(entry.target.spelled()).to_le_bytes());
        let digest = entry.digest.as_deref().map_or(NONE, &mut intern);
        body.extend_from_slice(&digest.to_le_bytes());
        let previous = entry.previous_digest.as_deref().map_or(NONE, &mut intern);
        body.extend_from_slice(&previous.to_le_bytes());
        body.extend_from_slice(&entry.created_at.to_le_bytes());
        body.extend_from_slice(&entry.updated_at.to_le_bytes());
        body.extend_from_slice(&entry.seq.to_le_bytes());
    }
    let tombstones: Vec<&Tombstone> = index.tombstones().collect();
    body.extend_from_slice(&(tombstones.len() as u32).to_le_bytes());
    for tombstone in tombstones {
        put_short_str(&mut body, tombstone.name.spelled());
        body.extend_from_slice(&intern(&tombstone.digest).to_le_bytes());
    }
    let per_node: Vec<_> = index.all_node_states().collect();
    body.extend_from_slice(&(per_node.len() as u32).to_le_bytes());
    for (key, states) in per_node {
        put_short_str(&mut body, key);
        let put_state =
            |body: &mut Vec<u8>, state: &NodeState, intern: &mut dyn FnMut(&str) -> u32| {
                body.push(state.state as u8);
                let digest = state.digest.as_deref().map_or(NONE, &mut *intern);
                body.extend_from_slice(&digest.to_le_bytes());
            };
        put_state(&mut body, &states.presumed, &mut intern);
        let n = states.reported.len().min(u16::MAX as usize);
        body.extend_from_slice(&(n as u16).to_le_bytes());
        for (node, state) in states.reported.iter().take(n) {
            body.extend_from_slice(&intern(node).to_le_bytes());
            put_state(&mut body, state, &mut intern);
        }
    }
    let mut out = Vec::with_capacity(body.len() + 1024);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    out.extend_from_slice(&index.last_seq().to_le_bytes());
    out.extend_from_slice(&(strings.len() as u32).to_le_bytes());
    for s in &strings {
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    out.extend_from_slice(&body);
    out
}

fn put_short_str(out: &mut Vec<u8>, s: &str) {
    // Names are at most 498 bytes and prefixes are validated alike.
    let len = s.len().min(u16::MAX as usize);
    out.extend_from_slice(&(len as u16).to_le_bytes());
    out.extend_from_slice(&s.as_bytes()[..len]);
}

/// A cursor over the blob; every read checks bounds.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len());
        let end = end.ok_or_else(|| format!("snapshot truncated at byte {}", self.pos))?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, String> {
        self.array().map(u16::from_le_bytes)
    }

    fn u32(&mut self) -> Result<u32, String> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, String> {
        self.array().map(u64::from_le_bytes)
    }

    fn str(&mut self, len: usize) -> Result<&'a str, String> {
        std::str::from_utf8(self.take(len)?).map_err(|e| format!("snapshot: {e}"))
    }
}

/// The fewest bytes an alias takes in a snapshot (flags, state, name length,
/// three string ids, three u64s).
const MIN_ALIAS_BYTES: usize = 1 + 1 + 2 + 3 * 4 + 3 * 8;

/// Aliases parsed per hand-over from the parsing thread to the inserting one.
const DECODE_CHUNK: usize = 4096;

/// Decodes a snapshot written by [`encode`].
///
/// A second thread parses the aliases (names above all), a chunk at a time,
/// while this one inserts them into the index.
///
/// # Errors
///
/// A message saying what is wrong with the blob.
pub fn decode(bytes: &[u8]) -> Result<Index, String> {
    let mut cursor = Cursor { bytes, pos: 0 };
    if cursor.take(MAGIC.len())? != MAGIC {
        return Err("not an aliasd index snapshot".into());
    }
    let version = cursor.u32()?;
    if version != SNAPSHOT_VERSION && version != SNAPSHOT_VERSION_2 {
        return Err(format!("snapshot version {version} is unknown"));
    }
    let last_seq = cursor.u64()?;
    let n_strings = cursor.u32()? as usize;
    let mut strings: Vec<Arc<str>> = Vec::with_capacity(n_strings.min(1 << 20));
    for _ in 0..n_strings {
        let len = cursor.u32()? as usize;
        strings.push(Arc::from(cursor.str(len)?));
    }
    let n_aliases = cursor.u64()? as usize;
    // Room for no more aliases than the bytes left could hold, whatever the count says.
    let room = (bytes.len() - cursor.pos) / MIN_ALIAS_BYTES;
    let mut index = Index::for_snapshot(last_seq, n_aliases.min(room));
    let (sender, receiver) = std::sync::mpsc::sync_channel::<Vec<AliasEntry>>(4);
    std::thread::scope(|scope| {
        let parser = std::thread::Builder::new()
            .name("aliasd-snapshot".into())
            .spawn_scoped(scope, move || {
                parse_rest(cursor, &strings, n_aliases, version, &sender)
            })
            .map_err(|e| format!("snapshot: cannot start the parsing thread: {e}"))?;
        for chunk in receiver {
            for entry in chunk {
                index.insert_entry(entry);
            }
        }
        let (tombstones, per_node) = parser
            .join()
            .map_err(|_| "snapshot: the parsing thread panicked".to_string())??;
        for tombstone in tombstones {
            index.insert_tombstone(tombstone);
        }
        for (key, states) in per_node {
            index.insert_node_states(key, states);
        }
        Ok(index)
    })
}

/// Per-node states read from a snapshot, by exact alias key.
type PerNode = Vec<(Arc<str>, NodeStates)>;

/// Parses the aliases (sent to `sender` in chunks), the tombstones and the
/// per-node states (returned) that follow the string table, and checks that
/// nothing follows them.
fn parse_rest(
    mut cursor: Cursor<'_>,
    strings: &[Arc<str>],
    n_aliases: usize,
    version: u32,
    sender: &std::sync::mpsc::SyncSender<Vec<AliasEntry>>,
) -> Result<(Vec<Tombstone>, PerNode), String> {
    let string = |id: u32| -> Result<Option<Arc<str>>, String> {
        if id == NONE {
            return Ok(None);
        }
        strings
            .get(id as usize)
            .cloned()
            .map(Some)
            .ok_or_else(|| format!("snapshot: string {id} out of range"))
    };
    let mut targets: HashMap<u32, ModelName> = HashMap::new();
    let parse = |s: &str| ModelName::parse(s).map_err(|e| format!("snapshot: {e}"));
    let mut entries = Vec::with_capacity(n_aliases.min(DECODE_CHUNK));
    for _ in 0..n_aliases {
        let flags = cursor.u8()?;
        let state = state_of(cursor.u8()?)?;
        let len = cursor.u16()? as usize;
        let name = cursor.str(len)?;
        let alias = if flags & 1 == 1 {
            AliasName::Prefix(name.to_string())
        } else {
            AliasName::Exact(parse(name)?)
        };
        let target_id = cursor.u32()?;
        let target = match targets.get(&target_id) {
            Some(target) => target.clone(),
            None => {
                let spelled = string(target_id)?.ok_or("snapshot: alias without target")?;
                let target = parse(&spelled)?;
                targets.insert(target_id, target.clone());
                target
            }
        };
        let digest = string(cursor.u32()?)?;
        let previous_digest = string(cursor.u32()?)?;
        entries.push(AliasEntry {
            alias,
            target,
            state,
            digest,
            previous_digest,
            created_at: cursor.u64()?,
            updated_at: cursor.u64()?,
            seq: cursor.u64()?,
        });
        if entries.len() == DECODE_CHUNK {
            let full = std::mem::replace(&mut entries, Vec::with_capacity(DECODE_CHUNK));
            sender
                .send(full)
                .map_err(|_| "snapshot: the inserting side stopped".to_string())?;
        }
    }
    if !entries.is_empty() {
        sender
            .send(entries)
            .map_err(|_| "snapshot: the inserting side stopped".to_string())?;
    }
    let n_tombstones = cursor.u32()? as usize;
    let mut tombstones = Vec::with_capacity(n_tombstones.min(1 << 20));
    for _ in 0..n_tombstones {
        let len = cursor.u16()? as usize;
        let name = parse(cursor.str(len)?)?;
        let digest = string(cursor.u32()?)?.ok_or("snapshot: tombstone without digest")?;
        tombstones.push(Tombstone { name, digest });
    }
    let mut per_node = Vec::new();
    if version >= SNAPSHOT_VERSION {
        let read_state = |cursor: &mut Cursor<'_>| -> Result<NodeState, String> {
            let state = state_of(cursor.u8()?)?;
            let digest = string(cursor.u32()?)?;
            Ok(NodeState { state, digest })
        };
        let n = cursor.u32()? as usize;
        per_node.reserve(n.min(1 << 16));
        for _ in 0..n {
            let len = cursor.u16()? as usize;
            let key: Arc<str> = Arc::from(cursor.str(len)?);
            let presumed = read_state(&mut cursor)?;
            let mut states = NodeStates::presumed(presumed);
            for _ in 0..cursor.u16()? {
                let node = string(cursor.u32()?)?.ok_or("snapshot: report without node")?;
                states.reported.push((node, read_state(&mut cursor)?));
            }
            per_node.push((key, states));
        }
    }
    if cursor.pos != cursor.bytes.len() {
        return Err(format!(
            "snapshot: {} trailing bytes",
            cursor.bytes.len() - cursor.pos
        ));
    }
    Ok((tombstones, per_node))
}

fn state_of(byte: u8) -> Result<AliasState, String> {
    match byte {
        0 => Ok(AliasState::Active),
        1 => Ok(AliasState::Dangling),
        2 => Ok(AliasState::Shadowed),
        other => Err(format!("snapshot: bad state {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, EventType};
    use crate::index::AliasView;

    fn sample() -> Index {
        let mut index = Index::default();
        let mk = |seq, kind, alias: &str, target: Option<&str>, prefix| Event {
            seq,
            id: String::new(),
            time: "2026-01-01T00:00:00Z".into(),
            kind,
            alias: alias.into(),
            target: target.map(String::from),
            previous_target: None,
            digest: Some("sha256:1".into()),
            prefix_matching: prefix,
            actor: "t".into(),
            request_id: None,
            node: None,
        };
        index
            .apply(&mk(1, EventType::AliasCreated, "a", Some("m"), false))
            .unwrap();
        index
            .apply(&mk(2, EventType::AliasCreated, "My-", Some("a"), true))
            .unwrap();
        index
            .apply(&mk(3, EventType::AliasCreated, "gone", Some("m"), false))
            .unwrap();
        index
            .apply(&mk(4, EventType::AliasDeleted, "gone", None, false))
            .unwrap();
        index
            .apply(&mk(
                5,
                EventType::AliasCreated,
                "Example.com/NS/Big:Q4",
                Some("a"),
                false,
            ))
            .unwrap();
        index
            .apply(&mk(6, EventType::TargetRemoved, "a", None, false))
            .unwrap();
        index
    }

    #[test]
    fn round_trips_an_index() {
        let index = sample();
        let back = decode(&encode(&index)).unwrap();
        assert_eq!(back.last_seq(), 6);
        assert_eq!(back.len(), 3);
        assert_eq!(back.tombstones().count(), 1);
        for entry in index.entries() {
            let key = entry.alias.key();
            let got = if entry.alias.is_prefix() {
                back.prefix(&key)
            } else {
                back.exact(&key)
            };
            assert_eq!(got, Some(entry), "{key}");
            assert_eq!(got.unwrap().alias.display(), entry.alias.display());
        }
        let a = ModelName::parse("a").unwrap().key();
        assert_eq!(back.dependents(&a).len(), 2);
    }

    /// Per-node states survive a snapshot, and a node loading another
    /// node's snapshot sees its own state.
    #[test]
    fn round_trips_per_node_states() {
        let mut index = sample();
        index.set_node(Some("n1"));
        let observe = |seq, kind, node: &str, digest: Option<&str>| Event {
            seq,
            id: String::new(),
            time: "2026-01-01T00:00:00Z".into(),
            kind,
            alias: "Example.com/NS/Big:Q4".into(),
            target: Some("a".into()),
            previous_target: None,
            digest: digest.map(String::from),
            prefix_matching: false,
            actor: "watcher".into(),
            request_id: None,
            node: Some(node.into()),
        };
        index
            .apply(&observe(7, EventType::TargetRemoved, "n2", None))
            .unwrap();
        index
            .apply(&observe(8, EventType::AliasShadowed, "n1", None))
            .unwrap();
        let key = ModelName::parse("Example.com/NS/Big:Q4").unwrap().key();
        let blob = encode(&index);
        let mut back = decode(&blob).unwrap();
        assert_eq!(back.node_states(&key), index.node_states(&key));
        back.set_node(Some("n1"));
        assert_eq!(back.exact(&key), index.exact(&key));
        assert_eq!(back.exact(&key).unwrap().state, AliasState::Shadowed);
        let mut on_n2 = decode(&blob).unwrap();
        on_n2.set_node(Some("n2"));
        assert_eq!(on_n2.exact(&key).unwrap().state, AliasState::Dangling);
        let mut on_n3 = decode(&blob).unwrap();
        on_n3.set_node(Some("n3"));
        assert_eq!(on_n3.exact(&key).unwrap().state, AliasState::Active);
        assert_eq!(on_n3.state_counts(), [2, 1, 0]);
    }

    #[test]
    fn rejects_damaged_blobs() {
        let blob = encode(&sample());
        assert!(decode(b"{}").is_err());
        for cut in [0, 8, 12, 20, blob.len() / 2, blob.len() - 1] {
            assert!(decode(&blob[..cut]).is_err(), "cut at {cut}");
        }
        let mut extra = blob.clone();
        extra.push(0);
        assert!(decode(&extra).is_err());
    }

    #[test]
    fn round_trips_and_rejects_cuts_across_many_chunks() {
        let mut index = Index::default();
        let n = DECODE_CHUNK as u64 * 2 + 10;
        for seq in 1..=n {
            let event = Event {
                seq,
                id: String::new(),
                time: "2026-01-01T00:00:00Z".into(),
                kind: EventType::AliasCreated,
                alias: format!("alias-{seq}"),
                target: Some(format!("model-{}", seq % 3)),
                previous_target: None,
                digest: Some(format!("sha256:{}", seq % 5)),
                prefix_matching: false,
                actor: "test".into(),
                request_id: None,
                node: None,
            };
            index.apply(&event).unwrap();
        }
        let blob = encode(&index);
        let back = decode(&blob).unwrap();
        assert_eq!(back.len(), index.len());
        assert_eq!(back.last_seq(), n);
        for entry in index.entries() {
            assert_eq!(back.exact(&entry.alias.key()), Some(entry));
        }
        // Cut after the first chunks were handed over, and in the last one.
        for cut in [blob.len() * 3 / 4, blob.len() - 5] {
            assert!(decode(&blob[..cut]).is_err(), "cut at {cut}");
        }
    }
}
