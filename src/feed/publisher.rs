//! Live events out: the finisher hands each committed group here, and a paced
//! thread broadcasts them to subscribers in batches.
//!
//! A broadcast costs a wake-up and a socket write per subscriber, so paying it
//! per event does not scale: 1,000 subscribers at 1,000 writes/s would be a
//! million socket writes a second. Broadcasts are therefore spaced by a gap
//! proportional to the number of subscribers (`GAP_PER_SUBSCRIBER`, at most
//! `MAX_GAP`), and each carries every event committed meanwhile (rendered
//! once per transport, see `LiveBatch::rendered`). An event after a quiet spell goes out at once;
//! under load, delivery waits at most `MAX_GAP` and the cost of a broadcast
//! is shared by the events of that gap. The gap was chosen by measurement
//! (benches/README.md, "Figures moved out of comments").

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use crate::feed::{LiveBatch, Published};

/// Spacing of broadcasts per live subscriber.
pub const GAP_PER_SUBSCRIBER: Duration = Duration::from_micros(40);
/// The longest an event waits for its batch.
pub const MAX_GAP: Duration = Duration::from_millis(40);
/// The most events in one batch (bounds the memory the broadcast ring holds).
pub const MAX_BATCH: usize = 64;
/// Batches kept for slow subscribers before they fall back to the journal.
pub const BROADCAST_CAPACITY: usize = 256;

/// The sending end, owned by the finisher. Dropping it flushes what is queued
/// and stops the thread.
pub struct Publisher {
    queue: Option<std::sync::mpsc::Sender<Vec<Published>>>,
    thread: Option<JoinHandle<()>>,
}

impl Publisher {
    /// Starts the publishing thread on `broadcast`.
    ///
    /// # Errors
    ///
    /// The thread could not be started.
    pub fn start(broadcast: broadcast::Sender<Arc<LiveBatch>>) -> std::io::Result<Publisher> {
        let (queue, receiver) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("aliasd-publisher".into())
            .spawn(move || run(&receiver, &broadcast))?;
        Ok(Publisher {
            queue: Some(queue),
            thread: Some(thread),
        })
    }

    /// Queues one committed group of events (in seq order) for broadcast.
    pub fn publish(&self, events: Vec<Published>) {
        if let Some(queue) = &self.queue {
            // The thread only ends once this sender is dropped.
            let _ = queue.send(events);
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// How long after a broadcast the next one waits, with this many subscribers.
pub fn gap(subscribers: usize) -> Duration {
    GAP_PER_SUBSCRIBER
        .saturating_mul(u32::try_from(subscribers).unwrap_or(u32::MAX))
        .min(MAX_GAP)
}

fn run(
    queue: &std::sync::mpsc::Receiver<Vec<Published>>,
    broadcast: &broadcast::Sender<Arc<LiveBatch>>,
) {
    use std::sync::mpsc::RecvTimeoutError;
    let mut last: Option<Instant> = None;
    while let Ok(mut events) = queue.recv() {
        if let Some(last) = last {
            let due = last + gap(broadcast.receiver_count());
            while events.len() < MAX_BATCH {
                let Some(wait) = due.checked_duration_since(Instant::now()) else {
                    break;
                };
                match queue.recv_timeout(wait) {
                    Ok(more) => events.extend(more),
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                }
            }
        }
        while events.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(more) => events.extend(more),
                Err(_) => break,
            }
        }
        let mut events = events.into_iter().peekable();
        while events.peek().is_some() {
            let batch: Vec<Published> = events.by_ref().take(MAX_BATCH).collect();
            // No subscriber is not an error.
            let _ = broadcast.send(Arc::new(LiveBatch::new(batch)));
        }
        last = Some(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn published(seq: u64) -> Published {
        Published::new(crate::event::created_for_test(seq, "llama3"))
    }

    #[test]
    fn a_published_event_carries_its_json_and_alias_key() {
        let published = published(7);
        let json: serde_json::Value = serde_json::from_slice(&published.json).unwrap();
        assert_eq!(json["seq"], 7);
        assert_eq!(published.alias_key, "registry.ollama.ai/library/a7:latest");
    }

    #[test]
    fn gap_grows_with_subscribers_up_to_the_cap() {
        assert_eq!(gap(0), Duration::ZERO);
        assert_eq!(gap(100), Duration::from_millis(4));
        assert_eq!(gap(1_000), MAX_GAP);
        assert_eq!(gap(usize::MAX), MAX_GAP);
    }

    #[test]
    fn every_event_is_broadcast_once_in_order_and_batches_are_bounded() {
        let (sender, mut receiver) = broadcast::channel(BROADCAST_CAPACITY);
        let publisher = Publisher::start(sender).unwrap();
        let mut seq = 0;
        for group in [1usize, 3, 200, 1, 7] {
            publisher.publish(
                (0..group)
                    .map(|_| {
                        seq += 1;
                        published(seq)
                    })
                    .collect(),
            );
        }
        drop(publisher);
        let mut seen = Vec::new();
        while let Ok(batch) = receiver.try_recv() {
            assert!(!batch.events.is_empty() && batch.events.len() <= MAX_BATCH);
            seen.extend(batch.events.iter().map(|p| p.event.seq));
        }
        assert_eq!(seen, (1..=seq).collect::<Vec<_>>());
    }
}
