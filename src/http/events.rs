//! The audit trail over HTTP: `/api/history` (paged queries) and `/api/events`
//! (Server-Sent Events, resumable by seq).
//!
//! A subscriber is a [`Subscription`] polled by its connection: it subscribes
//! to the live broadcast *first*, then replays the journal after its cursor,
//! then forwards live events, skipping any `seq <= last_sent`. If it falls
//! behind the broadcast ring (`Lagged`) it is caught up from the journal
//! again; it is never dropped silently, and writers never wait for it (the
//! broadcast never blocks). Memory per subscriber is bounded by one journal
//! chunk or one live batch (see `publisher`), each written as one chunk.
//! A `:keep-alive` comment goes out every 15 s.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::FutureExt;
use serde::Deserialize;
use tokio::sync::broadcast;

use crate::event::{Event, EventType, Published};
use crate::http::{ApiError, AppState};
use crate::index::AliasName;
use crate::name::ModelName;
use crate::publisher::Batch;

/// Records read from the journal per blocking step of a catch-up.
const CATCH_UP_CHUNK: usize = 128;
/// A comment line is sent this often.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
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
) -> Result<Response, ApiError> {
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
    let last_sent = cursor.unwrap_or_else(|| journal.last_seq().0);
    let earliest = journal.first_seq().0;
    let reset = (cursor.is_some() && last_sent.saturating_add(1) < earliest).then(|| {
        Bytes::from(format!(
            "event: reset\ndata: {}\n\n",
            serde_json::json!({ "earliest": earliest })
        ))
    });
    let shutdown = state.shutdown.clone();
    let subscription = Subscription {
        journal,
        live,
        filter,
        last_sent,
        phase: Phase::Reset(reset),
        shutdown: Box::pin(async move { shutdown.fired().await }),
        keep_alive: Box::pin(tokio::time::sleep(KEEP_ALIVE)),
        _subscribed: Subscribed::new(metrics),
    };
    let chunks = futures_util::stream::unfold(subscription, |mut subscription| async move {
        let chunk = subscription.next_chunk().await?;
        Some((Ok::<_, Infallible>(chunk), subscription))
    });
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(chunks),
    )
        .into_response())
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

/// One subscriber's position and source. Its connection polls it directly
/// (no task in between): each poll yields the next chunk of whole SSE frames.
struct Subscription {
    journal: journal::Journal,
    live: broadcast::Receiver<Arc<Batch>>,
    filter: EventFilter,
    /// Every event up to this seq has been sent (or filtered out).
    last_sent: u64,
    phase: Phase,
    shutdown: Pin<Box<dyn Future<Output = ()> + Send>>,
    keep_alive: Pin<Box<tokio::time::Sleep>>,
    _subscribed: Subscribed,
}

/// Where the next chunk of a subscription comes from.
enum Phase {
    /// First say that history before the cursor is gone, if it is.
    Reset(Option<Bytes>),
    /// Reading the journal after `last_sent` (the reader, once opened).
    CatchUp(Option<journal::Reader>),
    /// Forwarding live batches.
    Live,
}

impl Subscription {
    /// The next chunk to write, or `None` once the stream should end (the
    /// server shuts down, the journal cannot be read).
    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            match &mut self.phase {
                Phase::Reset(reset) => {
                    let reset = reset.take();
                    self.phase = Phase::CatchUp(None);
                    if reset.is_some() {
                        return reset;
                    }
                }
                Phase::CatchUp(reader) => {
                    if (&mut self.shutdown).now_or_never().is_some() {
                        return None;
                    }
                    let reader = reader.take();
                    let (reader, chunk) = self.read_journal(reader).await?;
                    if reader.is_none() {
                        self.phase = Phase::Live;
                    } else {
                        self.phase = Phase::CatchUp(reader);
                    }
                    if chunk.is_some() {
                        return chunk;
                    }
                }
                Phase::Live => {
                    let received = tokio::select! {
                        biased;
                        () = &mut self.shutdown => return None,
                        () = &mut self.keep_alive => {
                            self.keep_alive.as_mut().reset(tokio::time::Instant::now() + KEEP_ALIVE);
                            return Some(Bytes::from_static(b":keep-alive\n\n"));
                        }
                        received = self.live.recv() => received,
                    };
                    match received {
                        Ok(batch) => {
                            let chunk = live_chunk(&batch, self.last_sent, &self.filter);
                            if let Some(last) = batch.events.last() {
                                self.last_sent = self.last_sent.max(last.event.seq);
                            }
                            if chunk.is_some() {
                                return chunk;
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(missed)) => {
                            tracing::debug!(
                                missed,
                                last_sent = self.last_sent,
                                "subscriber lagged; catching up from the journal"
                            );
                            self.phase = Phase::CatchUp(None);
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            }
        }
    }

    /// Reads the next records after `last_sent` (opening a reader if there is
    /// none) and renders those the filter wants. Returns the reader to go on
    /// with (`None` once the journal's end is reached) and the frames, if any;
    /// `None` if the journal cannot be read.
    async fn read_journal(
        &mut self,
        reader: Option<journal::Reader>,
    ) -> Option<(Option<journal::Reader>, Option<Bytes>)> {
        let journal = self.journal.clone();
        let from = journal::Seq(self.last_sent.saturating_add(1));
        let read = tokio::task::spawn_blocking(move || {
            let mut reader = match reader {
                Some(reader) => reader,
                None => journal.read_from(from)?,
            };
            let records: Vec<_> = reader.by_ref().take(CATCH_UP_CHUNK).collect();
            Ok::<_, journal::Error>((reader, records))
        })
        .await;
        let (reader, records) = match read {
            Ok(Ok(read)) => read,
            Ok(Err(e)) => {
                tracing::error!("subscriber catch-up failed: {e}");
                return None;
            }
            Err(_) => return None,
        };
        if records.is_empty() {
            return Some((None, None));
        }
        let mut frames = Vec::new();
        for record in records {
            let (seq, payload) = match record {
                Ok(record) => record,
                Err(e) => {
                    tracing::error!("subscriber catch-up failed: {e}");
                    return None;
                }
            };
            self.last_sent = seq.0;
            let Ok(event) = Event::decode(&payload) else {
                continue;
            };
            if self.filter.matches(&event) {
                frames.extend_from_slice(&event.sse_frame());
            }
        }
        Some((
            Some(reader),
            (!frames.is_empty()).then(|| Bytes::from(frames)),
        ))
    }
}

/// What a subscriber that has sent up to `last_sent` writes of a live batch:
/// the batch's shared bytes when it wants all of it, else the frames it wants.
fn live_chunk(batch: &Batch, last_sent: u64, filter: &EventFilter) -> Option<Bytes> {
    let wanted = |p: &&Published| p.event.seq > last_sent && filter.matches_published(p);
    if batch.events.iter().all(|p| wanted(&p)) {
        return (!batch.events.is_empty()).then(|| batch.sse.clone());
    }
    let mut chunk = Vec::new();
    for published in batch.events.iter().filter(wanted) {
        chunk.extend_from_slice(&published.sse);
    }
    (!chunk.is_empty()).then(|| Bytes::from(chunk))
}
