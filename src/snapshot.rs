//! The index as a snapshot blob, so start-up replays only the journal's tail.
//!
//! The blob is JSON of explicit transfer types (the index's own types carry no
//! serde), with a format version; an unreadable snapshot is ignored and the
//! journal is replayed from the start instead.

use serde::{Deserialize, Serialize};

use crate::index::{AliasEntry, AliasName, AliasState, Index, Tombstone};
use crate::name::ModelName;

const SNAPSHOT_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Doc {
    version: u32,
    last_seq: u64,
    aliases: Vec<AliasDoc>,
    tombstones: Vec<TombstoneDoc>,
}

#[derive(Serialize, Deserialize)]
struct AliasDoc {
    alias: String,
    prefix: bool,
    target: String,
    state: String,
    digest: Option<String>,
    previous_digest: Option<String>,
    created_at: u64,
    updated_at: u64,
    seq: u64,
}

#[derive(Serialize, Deserialize)]
struct TombstoneDoc {
    name: String,
    digest: String,
}

/// Encodes the whole index.
pub fn encode(index: &Index) -> Vec<u8> {
    let aliases = index
        .sorted()
        .into_iter()
        .map(|e| AliasDoc {
            alias: e.alias.display(),
            prefix: e.alias.is_prefix(),
            target: e.target.display(),
            state: e.state.as_str().to_string(),
            digest: e.digest.as_deref().map(String::from),
            previous_digest: e.previous_digest.as_deref().map(String::from),
            created_at: e.created_at,
            updated_at: e.updated_at,
            seq: e.seq,
        })
        .collect();
    let tombstones = index
        .tombstones()
        .map(|t| TombstoneDoc {
            name: t.name.display(),
            digest: t.digest.to_string(),
        })
        .collect();
    let doc = Doc {
        version: SNAPSHOT_VERSION,
        last_seq: index.last_seq(),
        aliases,
        tombstones,
    };
    serde_json::to_vec(&doc).expect("snapshot serializes")
}

/// Decodes a snapshot written by [`encode`].
///
/// # Errors
///
/// A message saying what is wrong with the blob.
pub fn decode(bytes: &[u8]) -> Result<Index, String> {
    let doc: Doc = serde_json::from_slice(bytes).map_err(|e| format!("snapshot json: {e}"))?;
    if doc.version != SNAPSHOT_VERSION {
        return Err(format!("snapshot version {} is unknown", doc.version));
    }
    let parse = |s: &str| ModelName::parse(s).map_err(|e| format!("snapshot: {e}"));
    let mut entries = Vec::with_capacity(doc.aliases.len());
    for a in doc.aliases {
        let alias = if a.prefix {
            AliasName::Prefix(a.alias)
        } else {
            AliasName::Exact(parse(&a.alias)?)
        };
        entries.push(AliasEntry {
            alias,
            target: parse(&a.target)?,
            state: AliasState::parse(&a.state).ok_or("snapshot: bad state")?,
            digest: a.digest.map(Into::into),
            previous_digest: a.previous_digest.map(Into::into),
            created_at: a.created_at,
            updated_at: a.updated_at,
            seq: a.seq,
        });
    }
    let mut tombstones = Vec::with_capacity(doc.tombstones.len());
    for t in doc.tombstones {
        tombstones.push(Tombstone {
            name: parse(&t.name)?,
            digest: t.digest.into(),
        });
    }
    Ok(Index::from_parts(entries, tombstones, doc.last_seq))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, EventType};
    use crate::index::AliasView;

    #[test]
    fn round_trips_an_index() {
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
        let back = decode(&encode(&index)).unwrap();
        assert_eq!(back.last_seq(), 4);
        assert_eq!(back.len(), 2);
        assert_eq!(back.tombstones().count(), 1);
        let key = ModelName::parse("a").unwrap().key();
        assert_eq!(back.exact(&key), index.exact(&key));
        assert_eq!(back.dependents(&key).len(), 1);
        assert!(decode(b"{}").is_err());
    }
}
