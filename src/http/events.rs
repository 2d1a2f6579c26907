//! The audit trail over HTTP: `/api/history` (paged queries) and `/api/events`
//! (Server-Sent Events, resumable by seq).
//!
//! A subscriber is served by its own task: it subscribes to the live broadcast
//! *first*, then replays the journal after its cursor, then forwards live
//! events, skipping any `seq <= last_sent`. If it falls behind the broadcast
//! buffer (`Lagged`) it is caught up from the journal again; it is never
//! dropped silently, and writers never wait for it (the broadcast never blocks).
//! Memory per subscriber is bounded by its small channel and one journal chunk.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::Json;
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;

use crate::event::{Event, EventType, Published};
use crate::http::{ApiError, AppState};
use crate::index::AliasName;
use crate::name::ModelName;

/// Records read from the journal per blocking step of a catch-up.
const CATCH_UP_CHUNK: usize = 256;
/// Events buffered per subscriber between its task and its connection.
const SUBSCRIBER_BUFFER: usize = 64;
/// Default and maximum page sizes of `/api/history`.
const HISTORY_DEFAULT_LIMIT: usize = 100;
const HISTORY_MAX_LIMIT: usize = 10_000;

/// Which events a reader wants.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    alias_key: Option<String>,
    kind: Option<EventType>,
}

impl EventFilter {
    fn new(alias: Option<&str>, kind: Option<&str>) -> Result<EventFilter, ApiError> {
        let kind = match kind {
            None => None,
            Some(k) => Some(
                EventType::parse(k)
                    .ok_or_else(|| ApiError::bad_request(format!("unknown event type {k:?}")))?,
            ),
        };
        Ok(EventFilter {
            alias_key: alias.map(alias_key),
            kind,
        })
    }

    fn matches(&self, event: &Event) -> bool {
        self.kind.is_none_or(|k| event.kind == k)
            && self
                .alias_key
                .as_ref()
                .is_none_or(|key| AliasName::of_event(event).is_ok_and(|a| a.key() == *key))
    }

    fn matches_published(&self, published: &Published) -> bool {
        self.kind.is_none_or(|k| published.event.kind == k)
            && self
                .alias_key
                .as_ref()
                .is_none_or(|key| published.alias_key == *key)
    }
}

/// The key an alias filter compares with: a name's key, or a lowercase prefix.
fn alias_key(typed: &str) -> String {
    match ModelName::parse(typed) {
        Ok(name) => name.key(),
        Err(_) => typed.to_lowercase(),
    }
}

/// Query of `/api/history`.
#[derive(Debug, Deserialize)]
pub struct HistoryQuery {
    alias: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    since: Option<u64>,
    until: Option<u64>,
    limit: Option<usize>,
}

/// `GET /api/history`: events after `since` up to `until`, filtered, paged.
pub async fn history_list(
    State(state): State<AppState>,
    query: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(query) = query?;
    let filter = EventFilter::new(query.alias.as_deref(), query.kind.as_deref())?;
    let limit = query.limit.unwrap_or(HISTORY_DEFAULT_LIMIT);
    if limit == 0 || limit > HISTORY_MAX_LIMIT {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {HISTORY_MAX_LIMIT}"
        )));
    }
    let since = query.since.unwrap_or(0);
    let until = query.until.unwrap_or(u64::MAX);
    let journal = state.registry.journal().clone();
    let (events, more) =
        tokio::task::spawn_blocking(move || -> Result<(Vec<Event>, bool), String> {
            let mut events = Vec::new();
            for record in journal
                .read_from(journal::Seq(since.saturating_add(1)))
                .map_err(|e| e.to_string())?
            {
                let (seq, payload) = record.map_err(|e| e.to_string())?;
                if seq.0 > until {
                    break;
                }
                let event =
                    Event::decode(&payload).map_err(|e| format!("record {}: {e}", seq.0))?;
                if !filter.matches(&event) {
                    continue;
                }
                if events.len() == limit {
                    return Ok((events, true));
                }
                events.push(event);
            }
            Ok((events, false))
        })
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| {
            tracing::error!("reading history failed: {e}");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "reading the journal failed",
            )
        })?;
    let next = if more {
        events.last().map(|e| e.seq)
    } else {
        None
    };
    Ok(Json(serde_json::json!({ "events": events, "next": next })))
}

/// Query of `/api/events`.
#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    since: Option<u64>,
    alias: Option<String>,
}

/// `GET /api/events`: SSE, `id` = seq, `event` = type, `data` = the event.
pub async fn events_stream(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let Query(query) = query?;
    let filter = EventFilter::new(query.alias.as_deref(), None)?;
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.trim().parse::<u64>().map_err(|_| {
                ApiError::bad_request(format!("Last-Event-ID must be a seq, not {v:?}"))
            })
        })
        .transpose()?;
    // A reconnecting EventSource sends `Last-Event-ID` to the URL it first
    // opened, `?since=` included: the header is the later position, so it wins.
    let cursor = last_event_id.or(query.since);
    let metrics = state.registry.metrics().clone();
    if metrics.subscribers() >= state.http.max_subscribers {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "too many event subscribers ({} at once); retry later or raise --max-subscribers",
                state.http.max_subscribers
            ),
        ));
    }
    // Subscribe before reading anything, so no event falls between the two.
    let live = state.registry.subscribe();
    let journal = state.registry.journal().clone();
    let (sender, receiver) = mpsc::channel(SUBSCRIBER_BUFFER);
    let shutdown = state.shutdown.clone();
    let subscribed = Subscribed::new(metrics);
    tokio::spawn(async move {
        let _subscribed = subscribed;
        tokio::select! {
            () = feed_subscriber(journal, live, cursor, filter, sender) => {}
            () = shutdown.fired() => {}
        }
    });
    Ok(Sse::new(ReceiverStream::new(receiver)).keep_alive(
        KeepAlive::new()
            .interval(Duration::from_secs(15))
            .text("keep-alive"),
    ))
}

/// Counts a subscriber while it lives.
struct Subscribed(Arc<crate::metrics::Metrics>);

impl Subscribed {
    fn new(metrics: Arc<crate::metrics::Metrics>) -> Subscribed {
        metrics.subscriber_delta(true);
        Subscribed(metrics)
    }
}

impl Drop for Subscribed {
    fn drop(&mut self) {
        self.0.subscriber_delta(false);
    }
}

fn sse_event(event: &Event, json: &str) -> Result<SseEvent, Infallible> {
    Ok(SseEvent::default()
        .id(event.seq.to_string())
        .event(event.kind.as_str())
        .data(json))
}

/// Feeds one subscriber until it disconnects: catch-up from the journal, then
/// live, falling back to the journal whenever it lags.
async fn feed_subscriber(
    journal: journal::Journal,
    mut live: broadcast::Receiver<Arc<Published>>,
    cursor: Option<u64>,
    filter: EventFilter,
    sender: mpsc::Sender<Result<SseEvent, Infallible>>,
) {
    let mut last_sent = match cursor {
        None => journal.last_seq().0,
        Some(cursor) => {
            let earliest = journal.first_seq().0;
            if cursor.saturating_add(1) < earliest {
                let reset = SseEvent::default()
                    .event("reset")
                    .data(serde_json::json!({ "earliest": earliest }).to_string());
                if sender.send(Ok(reset)).await.is_err() {
                    return;
                }
            }
            cursor
        }
    };
    loop {
        match catch_up(&journal, last_sent, &filter, &sender).await {
            Some(seq) => last_sent = seq,
            None => return,
        }
        loop {
            let received = tokio::select! {
                received = live.recv() => received,
                () = sender.closed() => return,
            };
            match received {
                Ok(published) => {
                    let event = &published.event;
                    if event.seq <= last_sent {
                        continue;
                    }
                    last_sent = event.seq;
                    if filter.matches_published(&published)
                        && sender
                            .send(sse_event(event, &published.json))
                            .await
                            .is_err()
                    {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::debug!(
                        missed,
                        last_sent,
                        "subscriber lagged; catching up from the journal"
                    );
                    break;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

/// Sends every journaled event after `after`; returns the last seq covered,
/// or `None` if the subscriber is gone.
async fn catch_up(
    journal: &journal::Journal,
    after: u64,
    filter: &EventFilter,
    sender: &mpsc::Sender<Result<SseEvent, Infallible>>,
) -> Option<u64> {
    let mut last = after;
    let reader = {
        let journal = journal.clone();
        let from = journal::Seq(after.saturating_add(1));
        match tokio::task::spawn_blocking(move || journal.read_from(from)).await {
            Ok(Ok(reader)) => reader,
            Ok(Err(e)) => {
                tracing::error!("subscriber catch-up failed: {e}");
                return None;
            }
            Err(_) => return None,
        }
    };
    let mut reader = Some(reader);
    loop {
        let mut current = reader.take()?;
        let (current, chunk) = tokio::task::spawn_blocking(move || {
            let chunk: Vec<_> = current.by_ref().take(CATCH_UP_CHUNK).collect();
            (current, chunk)
        })
        .await
        .ok()?;
        reader = Some(current);
        if chunk.is_empty() {
            return Some(last);
        }
        for record in chunk {
            let (seq, payload) = match record {
                Ok(record) => record,
                Err(e) => {
                    tracing::error!("subscriber catch-up failed: {e}");
                    return None;
                }
            };
            last = seq.0;
            let Ok(event) = Event::decode(&payload) else {
                continue;
            };
            if filter.matches(&event)
                && sender
                    .send(sse_event(&event, &event.to_json()))
                    .await
                    .is_err()
            {
                return None;
            }
        }
    }
}
