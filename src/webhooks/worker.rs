//! One webhook's delivery loop: take what its subscription delivers (the log
//! after the cursor, then live), POST each wanted event in seq order, one at
//! a time, retrying with backoff until a 2xx, and move the cursor after it.
//!
//! The cursor's file is written when deliveries pause, and at least every
//! [`PERSIST_EVERY`] while they flow: a crash re-delivers what came after the
//! last write (at least once), and never skips. The writes (a rename and two
//! fsyncs each) are made by a persister task beside the worker, so that no
//! delivery waits for the disk: the worker only asks for one.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;

use crate::feed::{self, Delivery, Subscription};
use crate::webhooks::{Attempt, Hook, Shared};

/// While events flow, the cursor is written at least this often.
const PERSIST_EVERY: Duration = Duration::from_millis(250);

/// When no event comes for this long, a cursor that moved is written.
const PERSIST_IDLE: Duration = Duration::from_millis(50);

/// A receiver's answer body is read (and dropped) up to this many bytes, so
/// the connection can be reused; past it, the connection is dropped.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// One event to deliver.
struct Message {
    seq: u64,
    id: String,
    kind: crate::event::EventType,
    body: Bytes,
}

/// Marks the worker ended when it returns (or unwinds).
struct Ended(Arc<Hook>);

impl Drop for Ended {
    fn drop(&mut self) {
        self.0.mark_ended();
    }
}

/// Runs until the webhook is deleted or the server stops.
pub(crate) async fn run(shared: Arc<Shared>, hook: Arc<Hook>, subscription: Subscription) {
    let _ended = Ended(hook.clone());
    let persister = tokio::spawn(persister(shared.clone(), hook.clone()));
    deliver_all(&shared, &hook, subscription).await;
    // The last write is the worker's own (a write the persister has begun
    // finishes first: both hold the file's lock).
    persister.abort();
    let _ = persister.await;
    shared.persist(&hook).await;
    tracing::debug!(webhook = %hook.id, cursor = hook.cursor(), "webhook worker stopped");
}

/// Writes the webhook's file whenever the worker asks, until it stops.
async fn persister(shared: Arc<Shared>, hook: Arc<Hook>) {
    loop {
        tokio::select! {
            biased;
            () = hook.stopped() => return,
            () = hook.persist_wanted.notified() => {}
        }
        if shared.persist(&hook).await.is_none() {
            // The write failed (and was logged) or the webhook is deleted:
            // try again a little later, unless it is stopped meanwhile.
            tokio::select! {
                biased;
                () = hook.stopped() => return,
                () = tokio::time::sleep(PERSIST_EVERY) => hook.persist_soon(),
            }
        }
    }
}

/// The delivery loop; returns when the webhook is stopped.
async fn deliver_all(shared: &Arc<Shared>, hook: &Arc<Hook>, mut subscription: Subscription) {
    // The cursor last handed to the persister, and when.
    let mut requested = hook.cursor();
    let mut last_persist = Instant::now();
    loop {
        if hook.is_stopped() {
            return;
        }
        let dirty = hook.cursor() > requested;
        let next = tokio::select! {
            biased;
            () = hook.stopped() => return,
            next = subscription.next() => Some(next),
            // `next` is cancel-safe: an interrupted catch-up reads again
            // from the same position.
            () = tokio::time::sleep(PERSIST_IDLE), if dirty => None,
        };
        let delivery = match next {
            None => {
                requested = hook.cursor();
                last_persist = Instant::now();
                hook.persist_soon();
                continue;
            }
            Some(Ok(delivery)) => delivery,
            Some(Err(feed::Ended::Closed)) => return,
            Some(Err(feed::Ended::LogFailed)) => {
                tracing::error!(webhook = %hook.id, "webhook stopped: the event log cannot be read; restart aliasd after fixing the journal");
                return;
            }
        };
        let messages: Vec<Message> = match delivery {
            Delivery::Reset { earliest } => {
                tracing::warn!(
                    webhook = %hook.id,
                    cursor = hook.cursor(),
                    earliest,
                    "events after this webhook's cursor are no longer retained (--retain); delivering from {earliest}"
                );
                Vec::new()
            }
            Delivery::Logged(events) => events
                .into_iter()
                .map(|event| Message {
                    seq: event.seq,
                    kind: event.kind,
                    body: Bytes::from(event.to_json()),
                    id: event.id,
                })
                .collect(),
            Delivery::Whole(batch) => batch
                .events
                .iter()
                .map(|p| Message {
                    seq: p.event.seq,
                    id: p.event.id.clone(),
                    kind: p.event.kind,
                    body: p.json.clone(),
                })
                .collect(),
            Delivery::Part(batch, indexes) => indexes
                .iter()
                .map(|&i| &batch.events[i])
                .map(|p| Message {
                    seq: p.event.seq,
                    id: p.event.id.clone(),
                    kind: p.event.kind,
                    body: p.json.clone(),
                })
                .collect(),
        };
        for message in messages.iter().filter(|m| hook.wants(m.kind)) {
            if !deliver(shared, hook, message).await {
                return;
            }
            hook.set_cursor(message.seq);
            if last_persist.elapsed() >= PERSIST_EVERY {
                requested = hook.cursor();
                last_persist = Instant::now();
                hook.persist_soon();
            }
        }
        // Everything up to here was delivered or not wanted.
        hook.set_cursor(subscription.last_sent());
    }
}

/// Delivers one message, retrying until a 2xx. Returns `false` when the
/// webhook was stopped first.
async fn deliver(shared: &Arc<Shared>, hook: &Arc<Hook>, message: &Message) -> bool {
    let retry = shared.retry;
    let mut backoff = retry.first;
    loop {
        let started = Instant::now();
        let time = crate::event::now_rfc3339();
        let outcome = tokio::select! {
            biased;
            () = hook.stopped() => return false,
            outcome = send(shared, hook, message) => outcome,
        };
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let (status, error) = match &outcome {
            Ok(status) if (200..300).contains(status) => (Some(*status), None),
            Ok(status) => (
                Some(*status),
                Some(format!("the receiver answered {status}")),
            ),
            Err(error) => (None, Some(error.clone())),
        };
        let result = match (&status, &error) {
            (_, None) => "delivered",
            (Some(_), Some(_)) => "rejected",
            (None, Some(_)) => "failed",
        };
        shared.metrics.observe_webhook_delivery(result);
        hook.record(Attempt {
            seq: message.seq,
            status,
            error: error.clone(),
            duration_ms,
            time,
        });
        let Some(error) = error else {
            if hook.succeeded() {
                tracing::info!(webhook = %hook.id, seq = message.seq, "webhook delivers again");
                hook.persist_soon();
            }
            return true;
        };
        let now_ms = unix_ms();
        let (failing_since, first) = hook.failed(now_ms);
        if first {
            hook.persist_soon();
        }
        let wait = if Duration::from_millis(now_ms.saturating_sub(failing_since))
            >= retry.failing_after
        {
            if hook.mark_failing() {
                tracing::warn!(webhook = %hook.id, url = %hook.url, "webhook is failing: no delivery succeeded for {}; retrying every {}",
                    humantime::format_duration(retry.failing_after), humantime::format_duration(retry.failing_every));
                hook.persist_soon();
            }
            retry.failing_every
        } else {
            let wait = backoff;
            backoff = (backoff * 2).min(retry.max);
            wait
        };
        let wait = jitter(wait);
        tracing::info!(
            webhook = %hook.id,
            seq = message.seq,
            retry_in_ms = wait.as_millis() as u64,
            "webhook delivery failed: {error}"
        );
        tokio::select! {
            biased;
            () = hook.stopped() => return false,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// One signed POST; the status, or what went wrong (never the URL, which may
/// carry a token in its query, and never the secret).
async fn send(shared: &Shared, hook: &Hook, message: &Message) -> Result<u16, String> {
    let timestamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let client = shared.client_for(hook)?;
    let signature = hook.key.sign(&message.id, timestamp, &message.body);
    let response = client
        .post(&hook.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("webhook-id", &message.id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(message.body.clone())
        .send()
        .await
        .map_err(|e| describe(&e))?;
    let status = response.status().as_u16();
    // Read a little of the answer so the connection can serve the next one.
    let mut response = response;
    let mut read = 0;
    while read <= MAX_ANSWER_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => read += chunk.len(),
            Ok(None) | Err(_) => break,
        }
    }
    Ok(status)
}

/// A delivery error in a few words, without the URL.
fn describe(error: &reqwest::Error) -> String {
    let what = if error.is_timeout() {
        "no answer in time"
    } else if error.is_connect() {
        "cannot connect"
    } else {
        "the exchange failed"
    };
    let mut cause = String::new();
    let mut source = std::error::Error::source(error);
    while let Some(err) = source {
        cause = err.to_string();
        source = err.source();
    }
    if cause.is_empty() {
        what.to_string()
    } else {
        format!("{what}: {cause}")
    }
}

/// `wait` scaled by a random factor in [0.75, 1.25), so that webhooks that
/// failed together do not retry together.
fn jitter(wait: Duration) -> Duration {
    let random = getrandom::u32().unwrap_or(u32::MAX / 2);
    let factor = 0.75 + f64::from(random) / f64::from(u32::MAX) / 2.0;
    wait.mul_f64(factor)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
