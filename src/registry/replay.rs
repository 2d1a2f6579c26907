//! Rebuilding the index from the log: snapshot, then every event after it,
//! decoded on one thread and applied on another; and time travel.

use crate::index::{Index, PreparedChange, Preparer};
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

/// The index as it was right after event `seq`, replayed from the log's
/// first event (time travel).
///
/// # Errors
///
/// The log cannot be read, or holds a record that is not an event.
pub fn index_at(log: &dyn EventLog, seq: u64) -> Result<Index, String> {
    let mut index = Index::default();
    index.set_node(log.node().as_deref());
    let mut reader = log.read_from(1).map_err(|e| e.to_string())?;
    while let Some(record) = reader.next_borrowed() {
        let (record_seq, payload) = record.map_err(|e| e.to_string())?;
        if record_seq > seq {
            break;
        }
        let change = crate::event::StateChange::decode(payload).map_err(|e| e.to_string())?;
        index.apply_change(&change)?;
    }
    Ok(index)
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
        #![proptest_config(ProptestConfig::with_cases(48))]

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
