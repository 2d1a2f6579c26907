//! `Event` and `EventType`: the journal payload and the wire shape of a change.
//!
//! Every state change of the registry is one `Event`. The same JSON is stored in
//! the journal (behind a one-byte format version), returned by `/api/history` and
//! streamed over SSE. Every field is always present, `null` where it does not apply.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

mod scan;

/// The version byte that precedes the JSON of an event in a journal record.
pub const PAYLOAD_VERSION: u8 = 1;

/// The kind of a change, past tense, with its wire name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventType {
    /// An alias was created.
    #[serde(rename = "alias.created")]
    AliasCreated,
    /// An alias was pointed at a new target.
    #[serde(rename = "alias.updated")]
    AliasUpdated,
    /// An alias was deleted.
    #[serde(rename = "alias.deleted")]
    AliasDeleted,
    /// The model an alias resolves to changed (re-pull); the alias was re-materialized.
    #[serde(rename = "target.changed")]
    TargetChanged,
    /// The model an alias resolves to disappeared; the alias is dangling.
    #[serde(rename = "target.removed")]
    TargetRemoved,
    /// The model came back; the alias is active again.
    #[serde(rename = "target.restored")]
    TargetRestored,
    /// A file aliasd did not write took the alias's path; the model wins.
    #[serde(rename = "alias.shadowed")]
    AliasShadowed,
    /// The alias's file was rewritten (deleted by someone else, or unshadowed).
    #[serde(rename = "alias.repaired")]
    AliasRepaired,
}

impl EventType {
    /// Every type, in documentation order.
    pub const ALL: [EventType; 8] = [
        EventType::AliasCreated,
        EventType::AliasUpdated,
        EventType::AliasDeleted,
        EventType::TargetChanged,
        EventType::TargetRemoved,
        EventType::TargetRestored,
        EventType::AliasShadowed,
        EventType::AliasRepaired,
    ];

    /// The wire name, e.g. `alias.created`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::AliasCreated => "alias.created",
            EventType::AliasUpdated => "alias.updated",
            EventType::AliasDeleted => "alias.deleted",
            EventType::TargetChanged => "target.changed",
            EventType::TargetRemoved => "target.removed",
            EventType::TargetRestored => "target.restored",
            EventType::AliasShadowed => "alias.shadowed",
            EventType::AliasRepaired => "alias.repaired",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One journaled change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the journal: gap-free from 1.
    pub seq: u64,
    /// A UUID for this event.
    pub id: String,
    /// When it was committed, RFC 3339 UTC.
    pub time: String,
    /// What happened.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// The alias, as spelt when created (display form; a prefix for prefix aliases).
    pub alias: String,
    /// The alias's direct target after the change, if any.
    pub target: Option<String>,
    /// The direct target before the change, on updates.
    pub previous_target: Option<String>,
    /// `sha256:<hex>` of the manifest materialized for the alias, if any.
    pub digest: Option<String>,
    /// Whether the alias is a prefix alias.
    pub prefix_matching: bool,
    /// `<token name>@<addr>`, `anonymous@<addr>`, `watcher` or `startup`.
    pub actor: String,
    /// The request that caused it; null for watcher and start-up events.
    pub request_id: Option<String>,
    /// In a fleet (SPEC §8), the node whose store this event observed (a
    /// watcher or start-up observation: it changes only that node's state);
    /// null for API changes, which are fleet-wide, and always null on a
    /// single host. Journals written before the field existed read as null.
    #[serde(default)]
    pub node: Option<String>,
}

/// The fields of an event that the index's state depends on, borrowed from
/// a journal payload where possible: replay decodes these, not whole events,
/// which saves an allocation per field.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StateChange<'a> {
    /// Position in the journal.
    pub seq: u64,
    /// When it was committed, RFC 3339 UTC.
    #[serde(borrow)]
    pub time: Cow<'a, str>,
    /// What happened.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// The alias.
    #[serde(borrow)]
    pub alias: Cow<'a, str>,
    /// Its direct target after the change, if any.
    #[serde(borrow)]
    pub target: Option<Cow<'a, str>>,
    /// The digest materialized, if any.
    #[serde(borrow)]
    pub digest: Option<Cow<'a, str>>,
    /// Whether the alias is a prefix alias.
    pub prefix_matching: bool,
    /// The node whose state it changes; `None` for fleet-wide changes.
    #[serde(borrow, default)]
    pub node: Option<Cow<'a, str>>,
}

impl<'a> StateChange<'a> {
    /// Decodes the state-relevant fields of a journal payload.
    ///
    /// # Errors
    ///
    /// As [`Event::decode`].
    pub fn decode(payload: &'a [u8]) -> Result<StateChange<'a>, DecodeError> {
        match payload.split_first() {
            None => Err(DecodeError::Empty),
            Some((&PAYLOAD_VERSION, json)) => match scan::change(json) {
                Some(change) => Ok(change),
                None => Ok(serde_json::from_slice(json)?),
            },
            Some((&v, _)) => Err(DecodeError::Version(v)),
        }
    }
}

/// Why a journal payload could not be read as an event.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The payload is empty.
    #[error("empty event payload")]
    Empty,
    /// The version byte is unknown to this build.
    #[error("unknown event payload version {0}")]
    Version(u8),
    /// The JSON does not parse.
    #[error("bad event json: {0}")]
    Json(#[from] serde_json::Error),
}

impl Event {
    /// Encodes the event as a journal payload: version byte, then JSON.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.push(PAYLOAD_VERSION);
        // Serializing a struct of strings and integers cannot fail.
        serde_json::to_writer(&mut out, self).expect("event serializes");
        out
    }

    /// The JSON in a journal payload written by [`Event::encode`] (the
    /// event as the feed sends it), without decoding it.
    pub fn encoded_json(payload: &[u8]) -> &[u8] {
        payload.get(1..).unwrap_or_default()
    }

    /// Decodes a journal payload written by [`Event::encode`].
    pub fn decode(payload: &[u8]) -> Result<Event, DecodeError> {
        match payload.split_first() {
            None => Err(DecodeError::Empty),
            Some((&PAYLOAD_VERSION, json)) => Ok(serde_json::from_slice(json)?),
            Some((&v, _)) => Err(DecodeError::Version(v)),
        }
    }

    /// The state-relevant fields, borrowed.
    pub fn change(&self) -> StateChange<'_> {
        StateChange {
            seq: self.seq,
            time: Cow::Borrowed(&self.time),
            kind: self.kind,
            alias: Cow::Borrowed(&self.alias),
            target: self.target.as_deref().map(Cow::Borrowed),
            digest: self.digest.as_deref().map(Cow::Borrowed),
            prefix_matching: self.prefix_matching,
            node: self.node.as_deref().map(Cow::Borrowed),
        }
    }

    /// The JSON of the event alone (no version byte), as sent on the wire.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("event serializes")
    }
}

/// The current time as RFC 3339 UTC with microseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string()
}

/// A fresh UUID v4 as a string. Its random bits come from uuid's `fast-rng`
/// (a per-thread generator seeded from the OS), not a system call per id.
pub fn new_id() -> String {
    let mut buffer = uuid::Uuid::encode_buffer();
    uuid::Uuid::new_v4()
        .hyphenated()
        .encode_lower(&mut buffer)
        .to_string()
}

/// An `alias.created` event of alias `a<seq>` pointing at `target`, for tests.
#[cfg(test)]
pub(crate) fn created_for_test(seq: u64, target: &str) -> Event {
    Event {
        seq,
        id: new_id(),
        time: now_rfc3339(),
        kind: EventType::AliasCreated,
        alias: format!("a{seq}"),
        target: Some(target.into()),
        previous_target: None,
        digest: None,
        prefix_matching: false,
        actor: "test".into(),
        request_id: None,
        node: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Event {
        Event {
            seq: 7,
            id: new_id(),
            time: now_rfc3339(),
            kind: EventType::AliasUpdated,
            alias: "coder".into(),
            target: Some("qwen2.5-coder:32b".into()),
            previous_target: Some("llama3".into()),
            digest: Some(format!("sha256:{}", "a".repeat(64))),
            prefix_matching: false,
            actor: "anonymous@127.0.0.1:5000".into(),
            request_id: None,
            node: None,
        }
    }

    #[test]
    fn payload_round_trips() {
        let event = sample();
        assert_eq!(Event::decode(&event.encode()).unwrap(), event);
    }

    #[test]
    fn a_payloads_json_is_the_events_json() {
        let event = sample();
        let payload = event.encode();
        assert_eq!(Event::encoded_json(&payload), event.to_json().as_bytes());
        assert_eq!(Event::encoded_json(&[]), b"");
    }

    #[test]
    fn every_field_is_present_in_json() {
        let json: serde_json::Value = serde_json::from_str(&sample().to_json()).unwrap();
        for field in [
            "seq",
            "id",
            "time",
            "type",
            "alias",
            "target",
            "previous_target",
            "digest",
            "actor",
            "request_id",
            "node",
        ] {
            assert!(json.get(field).is_some(), "{field} missing");
        }
        assert_eq!(json["type"], "alias.updated");
        assert!(json["request_id"].is_null());
        assert!(json["node"].is_null());
    }

    #[test]
    fn journals_without_node_read_it_as_null() {
        let mut event = sample();
        event.node = Some("gpu-1".into());
        let mut json: serde_json::Value = serde_json::from_str(&event.to_json()).unwrap();
        assert_eq!(json["node"], "gpu-1");
        assert_eq!(Event::decode(&event.encode()).unwrap(), event);
        assert_eq!(
            StateChange::decode(&event.encode())
                .unwrap()
                .node
                .as_deref(),
            Some("gpu-1")
        );
        json.as_object_mut().unwrap().remove("node");
        let mut old = vec![PAYLOAD_VERSION];
        old.extend_from_slice(json.to_string().as_bytes());
        assert_eq!(Event::decode(&old).unwrap().node, None);
        assert_eq!(StateChange::decode(&old).unwrap().node, None);
    }

    #[test]
    fn change_decodes_the_same_fields() {
        let event = sample();
        let payload = event.encode();
        assert_eq!(StateChange::decode(&payload).unwrap(), event.change());
    }

    #[test]
    fn ids_are_v4_uuids_and_distinct() {
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| new_id()).collect();
        assert_eq!(ids.len(), 1000);
        for id in ids.iter().take(5) {
            let uuid = uuid::Uuid::parse_str(id).unwrap();
            assert_eq!(uuid.get_version_num(), 4);
        }
    }

    #[test]
    fn unknown_version_is_an_error() {
        assert!(matches!(
            Event::decode(&[9, b'{', b'}']),
            Err(DecodeError::Version(9))
        ));
        assert!(matches!(Event::decode(&[]), Err(DecodeError::Empty)));
    }

    #[test]
    fn type_names_round_trip() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
        }
        assert_eq!(EventType::parse("alias.exploded"), None);
    }
}
