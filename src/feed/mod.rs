//! Committed events for readers that keep their own position: the live
//! broadcast, resumable subscriptions, and history queries. Transport
//! neutral: SSE (`crate::http::events`) frames what a [`Subscription`]
//! delivers, and so will webhooks.
//!
//! A [`Subscription`] subscribes to the live broadcast *first*, then reads
//! the log after its cursor, then takes live batches, skipping any
//! `seq <= last_sent`. If it falls behind the broadcast ring (`Lagged`) it
//! reads the log again from where it was; it is never dropped silently, and
//! writers never wait for it (the broadcast never blocks). When its cursor
//! is older than the log still holds, it first delivers [`Delivery::Reset`].
//! Memory per subscriber is bounded by one log chunk or one live batch.
//!
//! The log's end moves before the index applies a commit, so a catch-up
//! reads no further than the index has applied ([`AppliedSeq`]): what a
//! reader is sent, every read after shows. The rest comes live: the
//! finisher publishes a commit only after the index applied it.
//!
//! Layout: `publisher.rs` paces the broadcast; this file holds what is
//! broadcast ([`Published`], [`LiveBatch`]) and how it is read.

pub mod publisher;

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use tokio::sync::broadcast;

use crate::event::{Event, EventType};
use crate::index::AliasName;
use crate::log::{EventLog, LogReader, SharedLog};
use crate::name::ModelName;

/// The seq up to which the index has applied the log (`Index::last_seq`):
/// the end of what a catch-up may send.
pub type AppliedSeq = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Records read from the log per blocking step of a catch-up.
const CATCH_UP_CHUNK: usize = 128;

/// A committed event as broadcast: serialized once, with its alias key
/// computed once, however many readers there are.
#[derive(Debug, Clone)]
pub struct Published {
    /// The event.
    pub event: Event,
    /// Its JSON, as every transport sends it.
    pub json: Bytes,
    /// The lookup key of its alias (see `AliasName::key`).
    pub alias_key: String,
}

impl Published {
    /// Prepares an event for broadcast.
    pub fn new(event: Event) -> Published {
        let json = Bytes::from(event.to_json());
        Published::with_json(event, json)
    }

    /// Prepares an event for broadcast with its JSON already made (as
    /// [`Event::to_json`] makes it, e.g. for the log's payload).
    pub fn with_json(event: Event, json: Bytes) -> Published {
        let alias_key = AliasName::of_event(&event)
            .map(|a| a.key())
            .unwrap_or_else(|_| event.alias.to_lowercase());
        Published {
            json,
            event,
            alias_key,
        }
    }
}

/// Committed events broadcast together, in seq order.
#[derive(Debug)]
pub struct LiveBatch {
    /// The events.
    pub events: Vec<Published>,
    /// The whole batch as one transport renders it, made by its first reader
    /// that wants all of it and shared by the rest (SSE: one buffer for
    /// every unfiltered subscriber).
    pub rendered: OnceLock<Bytes>,
}

impl LiveBatch {
    /// Wraps events (in seq order) into a batch.
    pub fn new(events: Vec<Published>) -> LiveBatch {
        LiveBatch {
            events,
            rendered: OnceLock::new(),
        }
    }
}

/// Which events a reader wants.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    alias_key: Option<String>,
    /// A name that parses as a model name may also be a prefix alias's
    /// spelling (`qw-`): that alias's key, so its events match too.
    prefix_key: Option<String>,
    kind: Option<EventType>,
}

impl EventFilter {
    /// Events about `alias` (a name or a prefix as typed), of `kind`; `None`
    /// means any.
    pub fn new(alias: Option<&str>, kind: Option<EventType>) -> EventFilter {
        let parsed = alias.map(|typed| (typed, ModelName::parse(typed)));
        let prefix_key = match &parsed {
            Some((typed, Ok(_))) if crate::name::is_valid_prefix(typed).is_ok() => {
                Some(typed.to_lowercase())
            }
            _ => None,
        };
        EventFilter {
            alias_key: parsed.map(|(typed, parsed)| match parsed {
                Ok(name) => name.key(),
                Err(_) => typed.to_lowercase(),
            }),
            prefix_key,
            kind,
        }
    }

    /// The key of the alias asked for, if any (as [`AliasName::key`] gives it).
    pub fn alias_key(&self) -> Option<&str> {
        self.alias_key.as_deref()
    }

    /// The key of the prefix alias spelt as the name asked for, when that
    /// name is also a model name (then [`EventFilter::alias_key`] is the
    /// exact alias's key): events of both match.
    pub fn prefix_key(&self) -> Option<&str> {
        self.prefix_key.as_deref()
    }

    /// Whether `key` (an [`AliasName::key`]) is the alias asked for.
    fn wants_key(&self, key: &str) -> bool {
        self.alias_key.as_deref().is_none_or(|k| k == key)
            || self.prefix_key.as_deref() == Some(key)
    }

    /// The type asked for, if any.
    pub fn kind(&self) -> Option<EventType> {
        self.kind
    }

    /// Whether the reader wants `event`.
    pub fn matches(&self, event: &Event) -> bool {
        self.kind.is_none_or(|k| event.kind == k)
            && (self.alias_key.is_none()
                || AliasName::of_event(event).is_ok_and(|a| self.wants_key(&a.key())))
    }

    /// [`EventFilter::matches`] for a published event (its key is ready).
    pub fn matches_published(&self, published: &Published) -> bool {
        self.kind.is_none_or(|k| published.event.kind == k) && self.wants_key(&published.alias_key)
    }
}

/// What a subscription delivers next.
#[derive(Debug)]
pub enum Delivery {
    /// The events after the cursor are no longer held: the log now starts
    /// at `earliest`, and events go on from there.
    Reset {
        /// The oldest seq the log holds.
        earliest: u64,
    },
    /// Events read back from the log, in seq order, each one wanted.
    Logged(Vec<Event>),
    /// A live batch: every event of it wanted.
    Whole(Arc<LiveBatch>),
    /// A live batch of which only some events are wanted (by index).
    Part(Arc<LiveBatch>, Vec<usize>),
}

/// Why a subscription ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// The broadcast stopped (the server shuts down).
    Closed,
    /// The log could not be read.
    LogFailed,
}

/// One reader's position and source (see the module docs).
pub struct Subscription {
    log: SharedLog,
    live: broadcast::Receiver<Arc<LiveBatch>>,
    filter: EventFilter,
    /// Every event up to this seq has been delivered (or filtered out).
    last_sent: u64,
    /// How far the index has applied: a catch-up stops there.
    applied: AppliedSeq,
    phase: Phase,
}

/// Where the next delivery comes from.
enum Phase {
    /// First say that history before the cursor is gone, if it is.
    Reset(Option<u64>),
    /// Reading the log after `last_sent` (the reader, once opened).
    CatchUp(Option<Box<dyn LogReader>>),
    /// Taking live batches.
    Live,
}

impl Subscription {
    /// A subscription that delivers what follows `cursor` (every event after
    /// it, from the log, then live), or only what is committed from now on
    /// when there is no cursor. `live` must be subscribed before this is
    /// called, so that nothing falls between the log and the broadcast.
    /// `applied` says how far the index has applied the log: nothing past
    /// it is read from the log (it comes live once applied).
    pub fn new(
        log: SharedLog,
        live: broadcast::Receiver<Arc<LiveBatch>>,
        filter: EventFilter,
        cursor: Option<u64>,
        applied: AppliedSeq,
    ) -> Subscription {
        // "From now on" is from what reads show now: a commit already in the
        // log but not yet applied is published after this, so it comes live.
        let last_sent = cursor.unwrap_or_else(|| applied());
        let earliest = log.first_seq();
        let reset =
            (cursor.is_some() && last_sent.saturating_add(1) < earliest).then_some(earliest);
        Subscription {
            log,
            live,
            filter,
            last_sent,
            applied,
            phase: Phase::Reset(reset),
        }
    }

    /// The seq of the last event delivered (or skipped by the filter).
    pub fn last_sent(&self) -> u64 {
        self.last_sent
    }

    /// The next delivery, waiting for one when caught up. Cancel-safe while
    /// live (an interrupted wait loses nothing).
    ///
    /// # Errors
    ///
    /// The stream ends: the broadcast closed or the log failed.
    pub async fn next(&mut self) -> Result<Delivery, Ended> {
        loop {
            match &mut self.phase {
                Phase::Reset(reset) => {
                    let reset = reset.take();
                    self.phase = Phase::CatchUp(None);
                    if let Some(earliest) = reset {
                        return Ok(Delivery::Reset { earliest });
                    }
                }
                Phase::CatchUp(reader) => {
                    let reader = reader.take();
                    let (reader, events) = self.read_log(reader).await?;
                    self.phase = match reader {
                        Some(reader) => Phase::CatchUp(Some(reader)),
                        None => Phase::Live,
                    };
                    if !events.is_empty() {
                        return Ok(Delivery::Logged(events));
                    }
                }
                Phase::Live => match self.live.recv().await {
                    Ok(batch) => {
                        let delivery = self.wanted(batch);
                        if let Some(delivery) = delivery {
                            return Ok(delivery);
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::debug!(
                            missed,
                            last_sent = self.last_sent,
                            "subscriber lagged; catching up from the log"
                        );
                        self.phase = Phase::CatchUp(None);
                    }
                    Err(broadcast::error::RecvError::Closed) => return Err(Ended::Closed),
                },
            }
        }
    }

    /// What this reader wants of a live batch, moving its position past it.
    fn wanted(&mut self, batch: Arc<LiveBatch>) -> Option<Delivery> {
        let last_sent = self.last_sent;
        let wanted = |p: &Published| p.event.seq > last_sent && self.filter.matches_published(p);
        if let Some(last) = batch.events.last() {
            self.last_sent = self.last_sent.max(last.event.seq);
        }
        if batch.events.is_empty() {
            return None;
        }
        if batch.events.iter().all(wanted) {
            return Some(Delivery::Whole(batch));
        }
        let indexes: Vec<usize> = (0..batch.events.len())
            .filter(|&i| wanted(&batch.events[i]))
            .collect();
        (!indexes.is_empty()).then(|| Delivery::Part(batch, indexes))
    }

    /// Reads the next records after `last_sent` up to what the index has
    /// applied (opening a reader if there is none) on a blocking thread,
    /// keeping those the filter wants. Returns the reader to go on with
    /// (`None` once that end is reached) and the events.
    async fn read_log(
        &mut self,
        reader: Option<Box<dyn LogReader>>,
    ) -> Result<(Option<Box<dyn LogReader>>, Vec<Event>), Ended> {
        let log = self.log.clone();
        let from = self.last_sent.saturating_add(1);
        // Read after subscribing to the broadcast: an event past it is
        // applied, then published, after this, so the live stream has it.
        let until = (self.applied)();
        if from > until {
            return Ok((None, Vec::new()));
        }
        let read = tokio::task::spawn_blocking(move || {
            let mut reader = match reader {
                Some(reader) => reader,
                None => log.read_from(from)?,
            };
            let mut records = Vec::new();
            let mut at_end = false;
            while records.len() < CATCH_UP_CHUNK {
                match reader.next_owned() {
                    Some(record) => {
                        let record = record?;
                        if record.0 > until {
                            // Not applied yet: it comes live.
                            at_end = true;
                            break;
                        }
                        at_end = record.0 == until;
                        records.push(record);
                        if at_end {
                            break;
                        }
                    }
                    None => {
                        at_end = true;
                        break;
                    }
                }
            }
            Ok::<_, crate::log::Error>(((!at_end).then_some(reader), records))
        })
        .await;
        let (reader, records) = match read {
            Ok(Ok(read)) => read,
            Ok(Err(e)) => {
                tracing::error!("subscriber catch-up failed: {e}");
                return Err(Ended::LogFailed);
            }
            Err(_) => return Err(Ended::LogFailed),
        };
        if records.is_empty() {
            return Ok((None, Vec::new()));
        }
        let mut events = Vec::new();
        for (seq, payload) in records {
            self.last_sent = seq;
            let Ok(event) = Event::decode(&payload) else {
                continue;
            };
            if self.filter.matches(&event) {
                events.push(event);
            }
        }
        Ok((reader, events))
    }
}

/// One page of history: the events after `since` up to `until` that
/// `filter` wants, at most `limit`, and whether more follow.
///
/// # Errors
///
/// The log cannot be read, or holds a record that is not an event.
pub fn history(
    log: &dyn EventLog,
    filter: &EventFilter,
    since: u64,
    until: u64,
    limit: usize,
) -> Result<(Vec<Event>, bool), String> {
    let mut events = Vec::new();
    let mut reader = log
        .read_from(since.saturating_add(1))
        .map_err(|e| e.to_string())?;
    while let Some(record) = reader.next_borrowed() {
        let (seq, payload) = record.map_err(|e| e.to_string())?;
        if seq > until {
            break;
        }
        let event = Event::decode(payload).map_err(|e| format!("record {seq}: {e}"))?;
        if !filter.matches(&event) {
            continue;
        }
        if events.len() == limit {
            return Ok((events, true));
        }
        events.push(event);
    }
    Ok((events, false))
}

/// Records a reader moves forward over, rather than opening the log again at
/// the next seq wanted (the journal starts at a mark near it).
const SKIP_AHEAD: u64 = 32;

/// One page of one alias's (or one type's) history read by seq:
/// `seqs(after, max)` gives the seqs of the alias's events after `after` (up
/// to the page's `until`), at most `max`, from the index
/// ([`crate::index::Index::alias_seqs`], [`crate::index::Index::kind_seqs`]),
/// or `None` if the index does not know them all; only those records are
/// read and decoded (SPEC §5: history's work bounded by an index), and
/// `filter` is applied to them. `Ok(None)`: read it with [`history`] instead.
///
/// # Errors
///
/// The log cannot be read, or holds a record that is not an event.
pub fn history_by_seqs(
    log: &dyn EventLog,
    filter: &EventFilter,
    since: u64,
    limit: usize,
    mut seqs: impl FnMut(u64, usize) -> Option<Vec<u64>>,
) -> Result<Option<(Vec<Event>, bool)>, String> {
    let mut events = Vec::new();
    let mut after = since;
    let mut reader: Option<(Box<dyn LogReader>, u64)> = None;
    // Seqs before it were dropped by retention (the index still lists them).
    let first = log.first_seq();
    loop {
        let want = limit + 1 - events.len();
        let Some(page) = seqs(after, want) else {
            return Ok(None);
        };
        let full = page.len() == want;
        for seq in page {
            after = seq;
            if seq < first {
                continue;
            }
            let Some(payload) = read_seq(log, &mut reader, seq)? else {
                // Dropped by retention: history starts later now.
                continue;
            };
            let event = Event::decode(&payload).map_err(|e| format!("record {seq}: {e}"))?;
            if !filter.matches(&event) {
                continue;
            }
            if events.len() == limit {
                return Ok(Some((events, true)));
            }
            events.push(event);
        }
        if !full {
            return Ok(Some((events, false)));
        }
    }
}

/// The payload of record `seq`, moving `reader` (and the seq it reads next)
/// forward when `seq` is close ahead, else opening the log at `seq`; `None`
/// if the log no longer holds it.
fn read_seq(
    log: &dyn EventLog,
    reader: &mut Option<(Box<dyn LogReader>, u64)>,
    seq: u64,
) -> Result<Option<Vec<u8>>, String> {
    let near = reader
        .as_ref()
        .is_some_and(|(_, next)| *next <= seq && seq - *next <= SKIP_AHEAD);
    if !near {
        *reader = Some((log.read_from(seq).map_err(|e| e.to_string())?, seq));
    }
    let Some((records, next)) = reader.as_mut() else {
        return Ok(None);
    };
    while let Some(record) = records.next_borrowed() {
        let (record_seq, payload) = record.map_err(|e| e.to_string())?;
        *next = record_seq + 1;
        if record_seq == seq {
            return Ok(Some(payload.to_vec()));
        }
        if record_seq > seq {
            return Ok(None);
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::event::{Event, EventType};
    use crate::log::{Error, Snapshot};

    /// A log that counts the records its readers hand out.
    #[derive(Debug)]
    struct Counting {
        log: crate::log::file::FileLog,
        records: Arc<AtomicU64>,
    }

    struct CountingReader {
        reader: Box<dyn LogReader>,
        records: Arc<AtomicU64>,
    }

    impl LogReader for CountingReader {
        fn next_borrowed(&mut self) -> Option<Result<(u64, &[u8]), Error>> {
            let record = self.reader.next_borrowed();
            if record.is_some() {
                self.records.fetch_add(1, Ordering::Relaxed);
            }
            record
        }
    }

    impl EventLog for Counting {
        fn append(&self, payloads: Vec<Vec<u8>>) -> Result<u64, Error> {
            self.log.append(payloads)
        }
        fn last_seq(&self) -> u64 {
            self.log.last_seq()
        }
        fn first_seq(&self) -> u64 {
            self.log.first_seq()
        }
        fn read_from(&self, seq: u64) -> Result<Box<dyn LogReader>, Error> {
            Ok(Box::new(CountingReader {
                reader: self.log.read_from(seq)?,
                records: self.records.clone(),
            }))
        }
        fn write_snapshot(&self, seq: u64, data: &[u8]) -> Result<(), Error> {
            self.log.write_snapshot(seq, data)
        }
        fn snapshot_at_or_below(&self, seq: u64) -> Result<Option<Snapshot>, Error> {
            self.log.snapshot_at_or_below(seq)
        }
        fn size_bytes(&self) -> u64 {
            self.log.size_bytes()
        }
        fn failed(&self) -> Option<Error> {
            self.log.failed()
        }
    }

    fn event(seq: u64, alias: &str, kind: EventType, target: &str) -> Event {
        Event {
            seq,
            id: format!("id-{seq}"),
            time: crate::index::format_time(1_700_000_000_000_000 + seq),
            kind,
            alias: alias.to_string(),
            target: Some(target.to_string()),
            previous_target: None,
            digest: None,
            prefix_matching: false,
            actor: "test".into(),
            request_id: None,
            node: None,
        }
    }

    /// A catch-up sends nothing past what the index has applied; the rest
    /// comes from the live batches, once each, with no gap.
    #[tokio::test]
    async fn a_catch_up_stops_at_the_applied_seq_and_the_rest_comes_live() {
        let dir = tempfile::tempdir().unwrap();
        let journal = journal::Journal::open(dir.path(), journal::Options::default())
            .unwrap()
            .journal;
        let events: Vec<Event> = (1..=5)
            .map(|seq| event(seq, &format!("a{seq}"), EventType::AliasCreated, "m"))
            .collect();
        journal
            .append(events.iter().map(Event::encode).collect())
            .unwrap();
        let log: SharedLog = Arc::new(crate::log::file::FileLog::from(journal));
        let applied = Arc::new(AtomicU64::new(2));
        let (sender, live) = broadcast::channel(16);
        let seen = applied.clone();
        let mut subscription = Subscription::new(
            log.clone(),
            live,
            EventFilter::default(),
            Some(0),
            Arc::new(move || seen.load(Ordering::SeqCst)),
        );
        let seqs = |delivery: Delivery| -> Vec<u64> {
            match delivery {
                Delivery::Logged(events) => events.iter().map(|e| e.seq).collect(),
                Delivery::Whole(batch) => batch.events.iter().map(|p| p.event.seq).collect(),
                Delivery::Part(batch, indexes) => {
                    indexes.iter().map(|&i| batch.events[i].event.seq).collect()
                }
                Delivery::Reset { .. } => panic!("no reset expected"),
            }
        };
        assert_eq!(seqs(subscription.next().await.unwrap()), [1, 2]);
        // Events 3 to 5 are in the log but not applied: the subscription
        // waits for them live (the finisher publishes after applying).
        let waited = tokio::time::timeout(Duration::from_millis(50), subscription.next()).await;
        assert!(waited.is_err(), "sent past the applied seq");
        applied.store(5, Ordering::SeqCst);
        let batch = |range: std::ops::RangeInclusive<usize>| {
            let published = events[range].iter().cloned().map(Published::new).collect();
            Arc::new(LiveBatch::new(published))
        };
        // A batch the subscriber had from the log (2) and new ones.
        sender.send(batch(1..=2)).unwrap();
        sender.send(batch(3..=4)).unwrap();
        assert_eq!(seqs(subscription.next().await.unwrap()), [3]);
        assert_eq!(seqs(subscription.next().await.unwrap()), [4, 5]);
        assert_eq!(subscription.last_sent(), 5);
    }

    /// `?alias=qw-` is both a model name and a prefix: events of the
    /// exact alias and of the prefix alias spelt so both match.
    #[test]
    fn a_filter_by_a_name_spelt_as_a_prefix_matches_the_prefix_alias() {
        let mut prefix = event(1, "qw-", EventType::TargetRemoved, "qwen");
        prefix.prefix_matching = true;
        let exact = event(2, "qw-", EventType::AliasCreated, "qwen");
        let other = event(3, "qw-x", EventType::AliasCreated, "qwen");
        let filter = EventFilter::new(Some("QW-"), None);
        assert!(filter.matches(&prefix));
        assert!(filter.matches(&exact));
        assert!(!filter.matches(&other));
        assert!(filter.matches_published(&Published::new(prefix)));
        assert!(!filter.matches_published(&Published::new(other)));
    }

    /// `history?alias=x` among 20,000 events of other aliases reads only
    /// x's records (by the index's seqs), pages as the scan does, and gives
    /// what the scan gives; `history?type=` reads only that type's records.
    #[test]
    fn history_of_one_alias_reads_only_its_records() {
        let dir = tempfile::tempdir().unwrap();
        let journal = journal::Journal::open(dir.path(), journal::Options::default())
            .unwrap()
            .journal;
        let mut index = crate::index::Index::default();
        let mut events = Vec::new();
        let mut of_x = Vec::new();
        for seq in 1..=20_000u64 {
            let event = if seq % 667 == 0 {
                let kind = match of_x.is_empty() {
                    true => EventType::AliasCreated,
                    false => EventType::AliasUpdated,
                };
                of_x.push(seq);
                event(seq, "x", kind, if seq % 2 == 0 { "m1" } else { "m2" })
            } else {
                event(
                    seq,
                    &format!("other{}", seq % 500),
                    EventType::AliasCreated,
                    "m1",
                )
            };
            index.apply(&event).unwrap();
            events.push(event.encode());
        }
        journal.append(events).unwrap();
        let records = Arc::new(AtomicU64::new(0));
        let log = Counting {
            log: crate::log::file::FileLog::from(journal),
            records: records.clone(),
        };
        let filter = EventFilter::new(Some("X"), None);
        let key = filter.alias_key().unwrap().to_string();
        let seqs = |after, max| index.alias_seqs(&key, after, u64::MAX, max);

        let (found, more) = history_by_seqs(&log, &filter, 0, 100, seqs)
            .unwrap()
            .expect("the index knows every seq");
        let seqs_found: Vec<u64> = found.iter().map(|e| e.seq).collect();
        assert_eq!(seqs_found, of_x);
        assert!(!more);
        assert_eq!(records.load(Ordering::Relaxed), of_x.len() as u64);

        // The scan gives the same events, reading every record.
        records.store(0, Ordering::Relaxed);
        let (scanned, _) = history(&log, &filter, 0, u64::MAX, 100).unwrap();
        assert_eq!(scanned, found);
        assert_eq!(records.load(Ordering::Relaxed), 20_000);

        // Pages: `more` and the next `since`, with a type filter too.
        let (page, more) = history_by_seqs(&log, &filter, 0, 10, seqs)
            .unwrap()
            .unwrap();
        assert_eq!(page.len(), 10);
        assert!(more);
        let since = page.last().unwrap().seq;
        let (rest, more) = history_by_seqs(&log, &filter, since, 100, seqs)
            .unwrap()
            .unwrap();
        assert_eq!(rest.len(), of_x.len() - 10);
        assert!(!more);
        let updated = EventFilter::new(Some("x"), Some(EventType::AliasUpdated));
        let (page, more) = history_by_seqs(&log, &updated, 0, 5, seqs)
            .unwrap()
            .unwrap();
        assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), of_x[1..6]);
        assert!(more);
        // One type, any alias: only the records of that type are read.
        records.store(0, Ordering::Relaxed);
        let kind_seqs = |after, max| index.kind_seqs(EventType::AliasUpdated, after, u64::MAX, max);
        let any_alias = EventFilter::new(None, Some(EventType::AliasUpdated));
        let (page, more) = history_by_seqs(&log, &any_alias, 0, 100, kind_seqs)
            .unwrap()
            .unwrap();
        assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), of_x[1..]);
        assert!(!more);
        assert_eq!(records.load(Ordering::Relaxed), of_x.len() as u64 - 1);
        // An index that does not know every seq: the caller scans instead.
        assert!(history_by_seqs(&log, &filter, 0, 10, |_, _| None)
            .unwrap()
            .is_none());
    }

    /// What the seqs per alias and per type cost: bytes per event, with
    /// many events per alias and with one event per alias (whose only seq
    /// is its entry's: no list). Printed for the report; the bounds only
    /// catch a blow-up.
    #[test]
    fn seqs_per_alias_cost_a_few_bytes_per_event() {
        for (aliases, events, lists) in [(1_000u64, 200_000u64, 1_000), (200_000, 200_000, 0)] {
            let mut index = crate::index::Index::default();
            for seq in 1..=events {
                let alias = format!("alias{}", seq % aliases);
                let kind = match seq <= aliases {
                    true => EventType::AliasCreated,
                    false => EventType::AliasUpdated,
                };
                index.apply(&event(seq, &alias, kind, "m1")).unwrap();
            }
            let (recorded, with_lists, bytes) = index.history_size();
            assert_eq!((recorded, with_lists), (events, lists));
            let per_event = bytes as f64 / events as f64;
            println!("{aliases} aliases, {events} events: {bytes} bytes, {per_event:.1} per event");
            assert!(per_event < 16.0, "{per_event}");
        }
    }
}
