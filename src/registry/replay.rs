//! Rebuilding the index from the log: snapshot, then every event after it,
//! decoded on one thread and applied on another; and time travel.

use crate::event::EventType;
use crate::index::{AliasSeqs, Index, PreparedChange, Preparer};
use crate::log::{EventLog, LogReader, Snapshot};
use crate::progress::Progress;

/// Records replayed per hand-over between the decoding and applying threads.
pub(super) const REPLAY_CHUNK: usize = 4096;

/// Rebuilds the index: snapshot, then every event after it.
///
/// Two threads share the replay: one reads the journal and decodes and parses
/// each event (JSON, names, time), a chunk at a time, while this one applies
/// them to the index in order.
///
/// # Errors
///
/// The journal cannot be read, or holds a record that is not an event.
pub fn load_index(log: &dyn EventLog, snapshot: Option<Snapshot>) -> anyhow::Result<Index> {
    load_index_in_chunks(log, snapshot, REPLAY_CHUNK)
}

/// [`load_index`], handing over `chunk` records at a time.
pub(super) fn load_index_in_chunks(
    journal: &dyn EventLog,
    snapshot: Option<Snapshot>,
    chunk: usize,
) -> anyhow::Result<Index> {
    let mut index = match snapshot {
        None => Index::default(),
        Some(snapshot) => match crate::snapshot::decode(&snapshot.data) {
            Ok(index) => index,
            // Retention dropped the events before the journal's first seq: only
            // the snapshot held them, and replaying the rest would silently
            // leave those aliases out.
            Err(e) if journal.first_seq() > 1 => anyhow::bail!(
                "the snapshot at seq {} cannot be read ({e}), and the journal no longer holds \
                 the events before seq {} (dropped by --retain), so the aliases cannot be \
                 rebuilt; was it written by a newer aliasd? Run that version, or restore the \
                 journal directory from a backup",
                snapshot.seq,
                journal.first_seq()
            ),
            Err(e) => {
                tracing::warn!(
                    "ignoring snapshot at seq {}: {e}; replaying the whole journal",
                    snapshot.seq
                );
                Index::default()
            }
        },
    };
    // In a fleet, this node's own state is the entries' (a snapshot may come
    // from another node, or from before the name was known).
    index.set_node(journal.node().as_deref());
    let records = journal.read_from(index.last_seq() + 1)?;
    let pending =
        usize::try_from(journal.last_seq().saturating_sub(index.last_seq())).unwrap_or(usize::MAX);
    index.reserve_for_replay(pending.min(MAX_REPLAY_RESERVE));
    let mut progress = Progress::new("replaying the journal (events)", pending);
    let (sender, receiver) = std::sync::mpsc::sync_channel(4);
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("aliasd-replay".into())
            .spawn_scoped(scope, move || prepare_records(records, chunk, &sender))
            .map_err(|e| anyhow::anyhow!("starting the replay thread: {e}"))?;
        for prepared in receiver {
            let prepared = prepared?;
            progress.advance(prepared.len());
            for (seq, change) in prepared {
                match change {
                    Ok(change) => index.apply_prepared(change),
                    Err(e) => tracing::warn!("journal record {seq}: {e}; skipped"),
                }
            }
        }
        index.release_spare();
        progress.finish();
        Ok(index)
    })
}

/// Why time travel could not answer.
#[derive(Debug)]
pub enum TimeTravelError {
    /// The events needed are no longer held (`--retain` dropped them): the
    /// oldest the log holds is this seq.
    Gone {
        /// The log's first seq.
        first: u64,
    },
    /// The log could not be read, or holds a record that is not an event.
    Failed(String),
}

/// The index as it was right after event `seq` (time travel): the newest
/// snapshot at or below `seq`, then the events after it up to `seq`, so the
/// work is bounded by the snapshot interval (the journal keeps
/// `journal::KEPT_SNAPSHOTS`), not by the journal's length. The index keeps
/// no seqs per alias (it answers one request).
///
/// # Errors
///
/// [`TimeTravelError::Gone`] when the events after the snapshot (or, with
/// none, from the first) up to `seq` are no longer all in the log.
pub fn index_at(log: &dyn EventLog, seq: u64) -> Result<Index, TimeTravelError> {
    let failed = |e: &dyn std::fmt::Display| TimeTravelError::Failed(e.to_string());
    let snapshot = log.snapshot_at_or_below(seq).map_err(|e| failed(&e))?;
    let mut index = match snapshot {
        Some(snapshot) => match crate::snapshot::decode(&snapshot.data) {
            Ok(index) => index,
            Err(e) => {
                tracing::warn!(
                    "time travel: ignoring snapshot at seq {}: {e}; replaying from the start",
                    snapshot.seq
                );
                Index::default()
            }
        },
        None => Index::default(),
    }
    .without_history();
    index.set_node(log.node().as_deref());
    let from = index.last_seq() + 1;
    let first = log.first_seq();
    if from < first && from <= seq {
        return Err(TimeTravelError::Gone { first });
    }
    let mut reader = log.read_from(from).map_err(|e| failed(&e))?;
    while let Some(record) = reader.next_borrowed() {
        let (record_seq, payload) = record.map_err(|e| failed(&e))?;
        if record_seq > seq {
            break;
        }
        let change = crate::event::StateChange::decode(payload).map_err(|e| failed(&e))?;
        index
            .apply_change(&change)
            .map_err(|e| TimeTravelError::Failed(e.to_string()))?;
    }
    Ok(index)
}

/// The seqs per alias and per type of the log's events up to `upto` (those a
/// snapshot covered at start-up), read on a thread of its own after start-up
/// and then installed with [`Index::install_history_base`]. Like the index's
/// own lists, an alias's list leaves out the seq of its latest event when the
/// alias still exists at `upto` (its entry holds it), so an alias with one
/// event costs nothing here either. Records that are not events, or name no
/// alias, are passed over (replay skips them too).
///
/// # Errors
///
/// The log cannot be read.
pub fn gather_alias_seqs(log: &dyn EventLog, upto: u64) -> anyhow::Result<AliasSeqs> {
    /// An alias's latest event so far, and whether it exists after it.
    #[derive(Default)]
    struct Latest {
        seq: u64,
        exists: bool,
    }
    type Map<K, V> = std::collections::HashMap<K, V>;
    let mut seqs = AliasSeqs::default();
    let mut reader = log.read_from(1)?;
    // Each spelling's key, allocated once (spellings that differ in case
    // are one alias); exact and prefix aliases spelt alike are different
    // aliases.
    let mut spellings: [Map<String, std::sync::Arc<str>>; 2] = Default::default();
    let mut latests: [Map<std::sync::Arc<str>, Latest>; 2] = Default::default();
    // Whether each target spelling parses (an event whose target does not is
    // not applied by replay, so it makes no entry).
    let mut targets: Map<String, bool> = Map::new();
    while let Some(record) = reader.next_borrowed() {
        let (seq, payload) = record?;
        if seq > upto {
            break;
        }
        let Ok(change) = crate::event::StateChange::decode(payload) else {
            continue;
        };
        let table = usize::from(change.prefix_matching);
        let key = match spellings[table].get(change.alias.as_ref()) {
            Some(key) => key.clone(),
            None => {
                let Ok(alias) = crate::index::AliasName::of_change(&change) else {
                    continue;
                };
                let key = alias.key_arc();
                spellings[table].insert(change.alias.to_string(), key.clone());
                key
            }
        };
        let target_parses = change
            .target
            .as_deref()
            .map(|text| match targets.get(text) {
                Some(parses) => *parses,
                None => {
                    let parses = crate::name::ModelName::parse(text).is_ok();
                    targets.insert(text.to_string(), parses);
                    parses
                }
            });
        if target_parses == Some(false) {
            continue;
        }
        let latest = latests[table].entry(key.clone()).or_default();
        if latest.seq > 0 {
            seqs.record_alias(change.prefix_matching, &key, latest.seq);
        }
        latest.seq = seq;
        // Whether the alias exists after this event, as `Index::apply` decides.
        latest.exists = match change.kind {
            EventType::AliasDeleted => false,
            EventType::AliasCreated | EventType::AliasUpdated => {
                target_parses.is_some() || latest.exists
            }
            _ => latest.exists,
        };
        seqs.record_kind(change.kind, seq);
    }
    for (table, latests) in latests.iter().enumerate() {
        for (key, latest) in latests.iter().filter(|(_, l)| !l.exists && l.seq > 0) {
            seqs.record_alias(table == 1, key, latest.seq);
        }
    }
    Ok(seqs)
}

/// The most aliases room is made for before a replay (a map slot is a few
/// dozen bytes, so this bounds what is reserved up front); past it, the map
/// grows as it goes.
pub(super) const MAX_REPLAY_RESERVE: usize = 2_000_000;

/// Replayed records, each with its seq: the parsed change, or why its names
/// do not parse (such a record is skipped, with a warning).
pub(super) type PreparedChunk = Vec<(u64, Result<PreparedChange, String>)>;

/// Reads, decodes and parses `records`, sending them on `chunk` at a time.
/// Stops at the first record that cannot be read or is not an event (sending
/// that error), or once the receiving side has gone.
pub(super) fn prepare_records(
    mut records: Box<dyn LogReader>,
    chunk: usize,
    sender: &std::sync::mpsc::SyncSender<anyhow::Result<PreparedChunk>>,
) {
    let mut preparer = Preparer::default();
    let mut prepared = Vec::with_capacity(chunk);
    while let Some(record) = records.next_borrowed() {
        let decoded = record
            .map_err(anyhow::Error::from)
            .and_then(|(seq, payload)| {
                let change = crate::event::StateChange::decode(payload)
                    .map_err(|e| anyhow::anyhow!("journal record {seq}: {e}"))?;
                Ok((seq, preparer.prepare(&change)))
            });
        match decoded {
            Ok(item) => prepared.push(item),
            Err(e) => {
                let _ = sender.send(Err(e));
                return;
            }
        }
        if prepared.len() == chunk {
            let full = std::mem::replace(&mut prepared, Vec::with_capacity(chunk));
            if sender.send(Ok(full)).is_err() {
                return;
            }
        }
    }
    if !prepared.is_empty() {
        let _ = sender.send(Ok(prepared));
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::load_index_in_chunks;
    use crate::event::{Event, EventType};
    use crate::index::{AliasEntry, Index, Tombstone};

    /// Aliases (exact, one spelt in two cases, and a prefix alias), targets
    /// (models and aliases, so chains form), digests: small pools, so events
    /// hit the same aliases often.
    const ALIASES: [(&str, bool); 5] = [
        ("a", false),
        ("B:q4", false),
        ("team/c", false),
        ("A", false),
        ("qwen2.5-coder:", true),
    ];
    const TARGETS: [&str; 5] = [
        "m1",
        "m2:q4",
        "a",
        "b:q4",
        "registry.example.com/x/m3:latest",
    ];
    const DIGESTS: [&str; 3] = ["sha256:aa", "sha256:bb", "sha256:cc"];

    fn created(seq: u64) -> Event {
        crate::event::created_for_test(seq, "m1")
    }

    /// A snapshot that cannot be decoded is replaced by a full replay only
    /// while the journal still holds every event; after retention dropped
    /// some, start-up stops with an error instead of losing those aliases.
    #[test]
    fn an_unreadable_snapshot_is_an_error_once_retention_dropped_events() {
        let dir = tempfile::tempdir().unwrap();
        let options = journal::Options {
            segment_bytes: 4096,
            preallocate_bytes: 0,
            retain: Some(1),
            ..journal::Options::default()
        };
        let journal = journal::Journal::open(dir.path(), options).unwrap().journal;
        for seq in 1..=200 {
            journal.append(vec![created(seq).encode()]).unwrap();
        }
        let mut index = Index::default();
        for seq in 1..=200 {
            index.apply(&created(seq)).unwrap();
        }
        let good = crate::snapshot::encode(&index);
        journal.write_snapshot(journal::Seq(200), &good).unwrap();
        assert!(journal.first_seq().0 > 1, "retention dropped segments");
        let snapshot = |data: Vec<u8>| crate::log::Snapshot { seq: 200, data };

        let log = crate::log::file::FileLog::from(journal);
        let loaded = super::load_index(&log, Some(snapshot(good))).unwrap();
        assert_eq!(loaded.len(), 200);
        let err = super::load_index(&log, Some(snapshot(b"not a snapshot".to_vec())))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot be rebuilt"), "{err}");

        // With every event still in the journal, a full replay is still right.
        let whole = tempfile::tempdir().unwrap();
        let journal = journal::Journal::open(whole.path(), journal::Options::default())
            .unwrap()
            .journal;
        journal
            .append((1..=200).map(|seq| created(seq).encode()).collect())
            .unwrap();
        let log = crate::log::file::FileLog::from(journal);
        let replayed = super::load_index(&log, Some(snapshot(b"not a snapshot".to_vec()))).unwrap();
        assert_eq!(replayed.len(), 200);
    }

    fn events() -> impl Strategy<Value = Vec<Event>> {
        let one = (
            0..ALIASES.len(),
            0..EventType::ALL.len(),
            proptest::option::of(0..TARGETS.len()),
            proptest::option::of(0..DIGESTS.len()),
            0u64..10_000_000,
        );
        proptest::collection::vec(one, 1..120).prop_map(|picks| {
            picks
                .into_iter()
                .enumerate()
                .map(|(idx, (alias, kind, target, digest, micros))| {
                    let (alias, prefix_matching) = ALIASES[alias];
                    Event {
                        seq: idx as u64 + 1,
                        id: format!("id-{idx}"),
                        time: crate::index::format_time(1_700_000_000_000_000 + micros),
                        kind: EventType::ALL[kind],
                        alias: alias.to_string(),
                        target: target.map(|t| TARGETS[t].to_string()),
                        previous_target: None,
                        digest: digest.map(|d| DIGESTS[d].to_string()),
                        prefix_matching,
                        actor: "test".into(),
                        request_id: None,
                        node: None,
                    }
                })
                .collect()
        })
    }

    /// The state of an index, in a comparable order.
    fn state(index: &Index) -> (Vec<AliasEntry>, Vec<Tombstone>, u64) {
        let mut entries: Vec<AliasEntry> = index.entries().cloned().collect();
        entries.sort_by_key(|e| (e.alias.is_prefix(), e.alias.key()));
        let mut tombstones: Vec<Tombstone> = index.tombstones().cloned().collect();
        tombstones.sort_by_key(|t| t.name.key());
        (entries, tombstones, index.last_seq())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// The seqs per alias and per type an index answers (replayed from
        /// scratch, or from a snapshot with the seqs before it gathered from
        /// the log) are those of the events with that alias key and type.
        #[test]
        fn seqs_per_alias_and_type_are_those_of_the_events(
            events in events(),
            cut in 0usize..120,
        ) {
            let cut = cut.min(events.len());
            let mut at_cut = Index::default();
            for event in &events[..cut] {
                let _ = at_cut.apply(event);
            }
            let dir = tempfile::tempdir().unwrap();
            let journal = journal::Journal::open(dir.path(), journal::Options::default())
                .unwrap()
                .journal;
            journal.append(events.iter().map(Event::encode).collect()).unwrap();
            let log = crate::log::file::FileLog::from(journal);
            let whole = load_index_in_chunks(&log, None, 7).unwrap();
            let snapshot = crate::log::Snapshot {
                seq: cut as u64,
                data: crate::snapshot::encode(&at_cut),
            };
            let mut resumed = load_index_in_chunks(&log, Some(snapshot), 7).unwrap();
            if let Some(upto) = resumed.history_gap() {
                prop_assert_eq!(upto, cut as u64);
                prop_assert!(resumed.alias_seqs("a", 0, u64::MAX, 1).is_none());
                let base = super::gather_alias_seqs(&log, upto).unwrap();
                resumed.install_history_base(std::sync::Arc::new(base), upto);
            }
            let keyed: Vec<(String, EventType, u64)> = events
                .iter()
                .map(|e| (crate::index::AliasName::of_event(e).unwrap().key(), e.kind, e.seq))
                .collect();
            for index in [&whole, &resumed] {
                for (key, _, _) in &keyed {
                    let expected: Vec<u64> =
                        keyed.iter().filter(|k| k.0 == *key).map(|k| k.2).collect();
                    let all = index.alias_seqs(key, 0, u64::MAX, usize::MAX).unwrap();
                    prop_assert_eq!(&all, &expected, "alias {}", key);
                    // Pages of three, from every position.
                    for (idx, after) in std::iter::once(0).chain(expected.iter().copied()).enumerate() {
                        let page = index.alias_seqs(key, after, u64::MAX, 3).unwrap();
                        let end = (idx + 3).min(expected.len());
                        prop_assert_eq!(page.as_slice(), &expected[idx..end]);
                    }
                }
                for kind in EventType::ALL {
                    let expected: Vec<u64> =
                        keyed.iter().filter(|k| k.1 == kind).map(|k| k.2).collect();
                    let all = index.kind_seqs(kind, 0, u64::MAX, usize::MAX).unwrap();
                    prop_assert_eq!(all, expected);
                }
            }
        }

        /// Time travel to every seq, starting from the newest snapshot at or
        /// below it (snapshots written at random seqs, the journal keeping
        /// the newest few, segments small), gives the index that replaying
        /// the events from scratch up to that seq gives.
        #[test]
        fn time_travel_from_snapshots_equals_replay_from_scratch(
            events in events(),
            mut cuts in proptest::collection::vec(1usize..120, 0..7),
        ) {
            let mut at = vec![Index::default()];
            let mut expected = Index::default();
            for event in &events {
                let _ = expected.apply(event);
                at.push(expected.clone());
            }
            let dir = tempfile::tempdir().unwrap();
            let options = journal::Options {
                segment_bytes: 2048,
                preallocate_bytes: 0,
                ..journal::Options::default()
            };
            let journal = journal::Journal::open(dir.path(), options).unwrap().journal;
            journal.append(events.iter().map(Event::encode).collect()).unwrap();
            // The server writes snapshots in seq order.
            cuts.sort_unstable();
            for cut in cuts.iter().map(|cut| (*cut).min(events.len())) {
                let data = crate::snapshot::encode(&at[cut]);
                journal.write_snapshot(journal::Seq(cut as u64), &data).unwrap();
            }
            let log = crate::log::file::FileLog::from(journal);
            for (seq, expected) in at.iter().enumerate().skip(1) {
                let travelled = super::index_at(&log, seq as u64).unwrap();
                prop_assert_eq!(state(&travelled), state(expected), "at seq {}", seq);
                prop_assert_eq!(travelled.state_counts(), expected.state_counts());
            }
        }

        /// Replaying a journal (from the start, and from a snapshot taken part
        /// way; decoded on one thread and applied on another, in chunks of any
        /// size) gives the index that applying the same events one by one gives.
        #[test]
        fn replay_equals_applying_the_events_in_order(
            events in events(),
            cut in 0usize..120,
            chunk in prop_oneof![1usize..8, Just(super::REPLAY_CHUNK)],
        ) {
            let mut expected = Index::default();
            let mut at_cut = None;
            for (idx, event) in events.iter().enumerate() {
                let _ = expected.apply(event);
                if idx + 1 == cut.min(events.len()) {
                    at_cut = Some(expected.clone());
                }
            }
            let dir = tempfile::tempdir().unwrap();
            let opened = journal::Journal::open(dir.path(), journal::Options::default()).unwrap();
            let journal = opened.journal;
            journal.append(events.iter().map(Event::encode).collect()).unwrap();
            let journal = crate::log::file::FileLog::from(journal);

            let replayed = load_index_in_chunks(&journal, None, chunk).unwrap();
            prop_assert_eq!(state(&replayed), state(&expected));
            // The per-state counts kept as entries come and go match a walk.
            for index in [&replayed, &expected] {
                let mut walked = [0u64; 3];
                for entry in index.sorted() {
                    walked[entry.state as usize] += 1;
                }
                prop_assert_eq!(index.state_counts(), walked);
            }

            if let Some(at_cut) = at_cut {
                let snapshot = crate::log::Snapshot {
                    seq: at_cut.last_seq(),
                    data: crate::snapshot::encode(&at_cut),
                };
                let resumed = load_index_in_chunks(&journal, Some(snapshot), chunk).unwrap();
                prop_assert_eq!(state(&resumed), state(&expected));
                prop_assert_eq!(resumed.state_counts(), expected.state_counts());
            }
        }
    }
}
