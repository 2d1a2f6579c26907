//! The audit trail over HTTP: `/api/history` (paged queries) and `/api/events`
//! (Server-Sent Events, resumable by seq).
//!
//! What is delivered, and when, is the feed's (`crate::feed::Subscription`:
//! log catch-up, then live, back to the log when lagging); this module frames
//! it as SSE, one chunk per delivery, and adds a `:keep-alive` comment every
//! 15 s and the end of the stream at shutdown.

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
use serde::Deserialize;

use crate::event::{Event, EventType};
use crate::feed::{Delivery, EventFilter, LiveBatch, Published, Subscription};
use crate::http::{ApiError, AppState};

/// A comment line is sent this often.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Default and maximum page sizes of `/api/history`.
const HISTORY_DEFAULT_LIMIT: usize = 100;
const HISTORY_MAX_LIMIT: usize = 10_000;

/// The filter of a query: `alias` as typed, `type` by its wire name (400 if unknown).
fn filter(alias: Option<&str>, kind: Option<&str>) -> Result<EventFilter, ApiError> {
    let kind = match kind {
        None => None,
        Some(k) => Some(
            EventType::parse(k)
                .ok_or_else(|| ApiError::bad_request(format!("unknown event type {k:?}")))?,
        ),
    };
    Ok(EventFilter::new(alias, kind))
}

/// What `/api/history` answers when the journal cannot be read (the server's
/// log has the details, the path included).
const HISTORY_UNREADABLE: &str = "the journal could not be read, so history cannot be served: \
     aliases and resolve still answer from memory; see the server log, and if \
     the journal was removed or damaged under the running server, restart aliasd (if it then \
     refuses to start, run `aliasd journal repair`)";

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
    let filter = filter(query.alias.as_deref(), query.kind.as_deref())?;
    let limit = query.limit.unwrap_or(HISTORY_DEFAULT_LIMIT);
    if limit == 0 || limit > HISTORY_MAX_LIMIT {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {HISTORY_MAX_LIMIT}"
        )));
    }
    let since = query.since.unwrap_or(0);
    // Only what the index has applied: the journal's end moves first, and a
    // client that saw an event here must find it in every read after.
    let applied = state.registry.read(|s| s.index.last_seq());
    let until = query.until.unwrap_or(u64::MAX).min(applied);
    let log = state.registry.log().clone();
    let registry = state.registry.clone();
    let (events, more) = tokio::task::spawn_blocking(move || {
        // One alias (or one type): only its records, by the index's seqs
        // (each page copied out under the lock); else, or while that index
        // is still being built after start-up, the log from `since` on.
        let key = filter.alias_key().map(str::to_string);
        let prefix_key = filter.prefix_key().map(str::to_string);
        let kind = filter.kind();
        if key.is_some() || kind.is_some() {
            let seqs = |after: u64, max: usize| {
                registry.read(|s| match (&key, kind) {
                    (Some(key), _) => {
                        let mut seqs = s.index.alias_seqs(key, after, until, max)?;
                        // A name that is also a prefix alias's spelling: its
                        // events too, merged in seq order.
                        if let Some(prefix_key) = &prefix_key {
                            seqs.extend(s.index.alias_seqs(prefix_key, after, until, max)?);
                            seqs.sort_unstable();
                            seqs.dedup();
                            seqs.truncate(max);
                        }
                        Some(seqs)
                    }
                    (None, Some(kind)) => s.index.kind_seqs(kind, after, until, max),
                    (None, None) => None,
                })
            };
            if let Some(page) = crate::feed::history_by_seqs(&*log, &filter, since, limit, seqs)? {
                return Ok(page);
            }
        }
        crate::feed::history(&*log, &filter, since, until, limit)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| {
        tracing::error!("reading history failed: {e}");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, HISTORY_UNREADABLE)
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
    let filter = filter(query.alias.as_deref(), None)?;
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
    let subscription = Subscription::new(
        state.registry.log().clone(),
        live,
        filter,
        cursor,
        state.registry.applied_seq(),
    );
    let shutdown = state.shutdown.clone();
    let stream = SseStream {
        subscription,
        shutdown: Box::pin(async move { shutdown.fired().await }),
        keep_alive: Box::pin(tokio::time::sleep(KEEP_ALIVE)),
        _subscribed: Subscribed::new(metrics),
    };
    let chunks = futures_util::stream::unfold(stream, |mut stream| async move {
        let chunk = stream.next_chunk().await?;
        Some((Ok::<_, Infallible>(chunk), stream))
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

/// A subscription as an SSE body: its connection polls it directly (no task
/// in between), and each poll yields one chunk of whole frames.
struct SseStream {
    subscription: Subscription,
    shutdown: Pin<Box<dyn Future<Output = ()> + Send>>,
    keep_alive: Pin<Box<tokio::time::Sleep>>,
    _subscribed: Subscribed,
}

impl SseStream {
    /// The next chunk to write, or `None` once the stream should end (the
    /// server shuts down, the log cannot be read).
    async fn next_chunk(&mut self) -> Option<Bytes> {
        let delivery = tokio::select! {
            biased;
            () = &mut self.shutdown => return None,
            () = &mut self.keep_alive => {
                self.keep_alive.as_mut().reset(tokio::time::Instant::now() + KEEP_ALIVE);
                return Some(Bytes::from_static(b":keep-alive\n\n"));
            }
            delivery = self.subscription.next() => delivery.ok()?,
        };
        Some(match delivery {
            Delivery::Reset { earliest } => Bytes::from(format!(
                "event: reset\ndata: {}\n\n",
                serde_json::json!({ "earliest": earliest })
            )),
            Delivery::Logged(events) => {
                let mut frames = Vec::new();
                for event in &events {
                    frames.extend_from_slice(&sse_frame(event));
                }
                Bytes::from(frames)
            }
            Delivery::Whole(batch) => whole_batch(&batch),
            Delivery::Part(batch, indexes) => {
                let mut frames = Vec::new();
                for i in indexes {
                    write_frame(&mut frames, &batch.events[i]);
                }
                Bytes::from(frames)
            }
        })
    }
}

/// A whole live batch as SSE, rendered once and shared by every subscriber
/// that wants all of it.
fn whole_batch(batch: &LiveBatch) -> Bytes {
    batch
        .rendered
        .get_or_init(|| {
            let mut frames =
                Vec::with_capacity(batch.events.iter().map(|p| p.json.len() + 48).sum());
            for published in &batch.events {
                write_frame(&mut frames, published);
            }
            Bytes::from(frames)
        })
        .clone()
}

/// Appends a published event's SSE frame.
fn write_frame(frames: &mut Vec<u8>, published: &Published) {
    use std::io::Write;
    let event = &published.event;
    let _ = write!(
        frames,
        "id: {}\nevent: {}\ndata: ",
        event.seq,
        event.kind.as_str()
    );
    frames.extend_from_slice(&published.json);
    frames.extend_from_slice(b"\n\n");
}

/// An event as one Server-Sent Events frame: `id` = seq, `event` = type,
/// `data` = the JSON (one line: serde_json escapes every newline).
pub fn sse_frame(event: &Event) -> Vec<u8> {
    use std::io::Write;
    let mut frame = Vec::with_capacity(400);
    let _ = write!(
        frame,
        "id: {}\nevent: {}\ndata: ",
        event.seq,
        event.kind.as_str()
    );
    let _ = serde_json::to_writer(&mut frame, event);
    frame.extend_from_slice(b"\n\n");
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64, actor: &str) -> Event {
        let mut event = crate::event::created_for_test(seq, "llama3");
        event.kind = EventType::AliasUpdated;
        event.actor = actor.into();
        event
    }

    #[test]
    fn sse_frame_is_three_lines_and_a_blank_one() {
        let event = event(7, "line\nbreak\r\n");
        let frame = String::from_utf8(sse_frame(&event)).unwrap();
        let lines: Vec<&str> = frame.split('\n').collect();
        assert_eq!(lines.len(), 5, "{frame:?}");
        assert_eq!(lines[0], "id: 7");
        assert_eq!(lines[1], "event: alias.updated");
        let data: Event = serde_json::from_str(lines[2].strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(data, event);
        assert_eq!(&lines[3..], ["", ""]);
    }

    #[test]
    fn a_published_frame_is_the_same_as_the_event_frame_and_batches_concatenate() {
        let events: Vec<Published> = [1, 2].map(|seq| Published::new(event(seq, "a"))).into();
        let batch = LiveBatch::new(events);
        let mut expected = sse_frame(&batch.events[0].event);
        expected.extend(sse_frame(&batch.events[1].event));
        assert_eq!(whole_batch(&batch), Bytes::from(expected));
        // Rendered once: the second call shares the first's bytes.
        assert_eq!(whole_batch(&batch).as_ptr(), whole_batch(&batch).as_ptr());
    }
}
