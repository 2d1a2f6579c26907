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
        let alias_key = AliasName::of_event(&event)
            .map(|a| a.key())
            .unwrap_or_else(|_| event.alias.to_lowercase());
        Published {
            json: Bytes::from(event.to_json()),
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
    kind: Option<EventType>,
}

impl EventFilter {
    /// Events about `alias` (a name or a prefix as typed), of `kind`; `None`
    /// means any.
    pub fn new(alias: Option<&str>, kind: Option<EventType>) -> EventFilter {
        EventFilter {
            alias_key: alias.map(|typed| match ModelName::parse(typed) {
                Ok(name) => name.key(),
                Err(_) => typed.to_lowercase(),
            }),
            kind,
        }
    }

    /// Whether the reader wants `event`.
    pub fn matches(&self, event: &Event) -> bool {
        self.kind.is_none_or(|k| event.kind == k)
            && self
                .alias_key
                .as_ref()
                .is_none_or(|key| AliasName::of_event(event).is_ok_and(|a| a.key() == *key))
    }

    /// [`EventFilter::matches`] for a published event (its key is ready).
    pub fn matches_published(&self, published: &Published) -> bool {
        self.kind.is_none_or(|k| published.event.kind == k)
            && self
                .alias_key
                .as_ref()
                .is_none_or(|key| published.alias_key == *key)
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
    pub fn new(
        log: SharedLog,
        live: broadcast::Receiver<Arc<LiveBatch>>,
        filter: EventFilter,
        cursor: Option<u64>,
    ) -> Subscription {
        let last_sent = cursor.unwrap_or_else(|| log.last_seq());
        let earliest = log.first_seq();
        let reset =
            (cursor.is_some() && last_sent.saturating_add(1) < earliest).then_some(earliest);
        Subscription {
            log,
            live,
            filter,
            last_sent,
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

    /// Reads the next records after `last_sent` (opening a reader if there
    /// is none) on a blocking thread, keeping those the filter wants.
    /// Returns the reader to go on with (`None` once the log's end is
    /// reached) and the events.
    async fn read_log(
        &mut self,
        reader: Option<Box<dyn LogReader>>,
    ) -> Result<(Option<Box<dyn LogReader>>, Vec<Event>), Ended> {
        let log = self.log.clone();
        let from = self.last_sent.saturating_add(1);
        let read = tokio::task::spawn_blocking(move || {
            let mut reader = match reader {
                Some(reader) => reader,
                None => log.read_from(from)?,
            };
            let mut records = Vec::new();
            while records.len() < CATCH_UP_CHUNK {
                match reader.next_owned() {
                    Some(record) => records.push(record?),
                    None => break,
                }
            }
            Ok::<_, crate::log::Error>((reader, records))
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
        Ok((Some(reader), events))
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
