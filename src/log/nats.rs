//! The fleet's event log (SPEC §8): the JetStream stream `<FLEET>_LOG`,
//! with this node's local journal as its replica.
//!
//! One stream message is one commit: its events' payloads, each prefixed by
//! its length (4 bytes, big-endian), with the headers `Aliasd-First-Seq` (the
//! seq of the commit's first event) and `Aliasd-Events` (how many). A node
//! appends with `Nats-Expected-Last-Sequence` set to the last message it has
//! applied; when another node appended first, JetStream refuses it and the
//! append answers [`Error::Conflict`]: the writer then applies what the
//! others wrote ([`EventLog::fetch_remote`]), validates its commands again
//! and retries. So the event seqs are gap-free and the same on every node.
//!
//! The local journal holds the same seqs: reads, history and replay go to
//! it, so they work while NATS is down. A commit is written to it after the
//! stream stored it (this node's own, in [`EventLog::append`]) or when the
//! writer applies it (another node's, [`EventLog::accept_remote`]), always
//! from the writer's thread: the journal keeps one writer.
//!
//! The node's position in the stream (the last message applied here) is not
//! stored: it is found again from the local journal's last seq by a binary
//! search over the messages' `Aliasd-First-Seq` headers the first time NATS
//! answers (a few requests), so it cannot disagree with the journal.
//!
//! A task follows the stream: woken by each message published on the log's
//! subject (and by a timer, for what was missed while disconnected), it reads
//! the messages after the node's position and hands them to the writer
//! through [`EventLog::remote_commits`]. It also watches the connection and
//! says once in the log when NATS is lost and when it is back.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use futures_util::StreamExt;

use crate::fleet::FleetConfig;
use crate::log::file::FileLog;
use crate::log::{Error, EventLog, LogReader, RemoteCommit};

/// The header with the seq of a commit's first event.
const FIRST_SEQ: &str = "Aliasd-First-Seq";
/// The header with the number of events in a commit.
const EVENTS: &str = "Aliasd-Events";
/// How often the follower looks at the stream without being woken.
const POLL: Duration = Duration::from_millis(500);
/// Messages read ahead at once while catching up.
const READ_AHEAD: usize = 64;

/// [`EventLog`] on a JetStream stream, with the local journal as replica
/// (see the module docs).
pub struct NatsLog {
    inner: Arc<Inner>,
    remote: Mutex<Option<std::sync::mpsc::Receiver<RemoteCommit>>>,
}

impl std::fmt::Debug for NatsLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsLog")
            .field("stream", &self.inner.config.log_stream())
            .field("urls", &self.inner.config.urls_display())
            .finish_non_exhaustive()
    }
}

struct Inner {
    local: FileLog,
    client: async_nats::Client,
    jetstream: jetstream::Context,
    config: FleetConfig,
    subject: String,
    runtime: tokio::runtime::Handle,
    /// The stream, once found or created.
    stream: Mutex<Option<jetstream::stream::Stream>>,
    /// The last stream message applied to the local journal, once known.
    position: Mutex<Option<u64>>,
    /// Commits read from the stream and not applied yet: first event seq →
    /// stream seq, so that applying one moves the position.
    fetched: Mutex<BTreeMap<u64, u64>>,
    /// Whether the client is connected now (as the follower last saw it).
    connected: AtomicBool,
    /// Woken each time the connection comes back.
    reconnected: tokio::sync::Notify,
}

/// A commit as read from the stream.
struct Fetched {
    stream_seq: u64,
    commit: RemoteCommit,
}

impl NatsLog {
    /// The NATS connection (shared with the node records' tasks).
    pub fn client(&self) -> async_nats::Client {
        self.inner.client.clone()
    }

    /// How this node joined the fleet.
    pub fn fleet_config(&self) -> &FleetConfig {
        &self.inner.config
    }

    /// Wraps the local journal `local` as the replica of the fleet's stream,
    /// and starts the task that follows the stream (on `runtime`). Nothing
    /// is asked of NATS yet: the node starts while NATS is down.
    pub fn new(
        local: FileLog,
        client: async_nats::Client,
        config: FleetConfig,
        runtime: tokio::runtime::Handle,
    ) -> NatsLog {
        // The context spawns its acker task on the runtime.
        let entered = runtime.enter();
        let mut context = jetstream::new(client.clone());
        drop(entered);
        context.set_timeout(Duration::from_secs(5));
        let connected = client.connection_state() == async_nats::connection::State::Connected;
        let inner = Arc::new(Inner {
            local,
            subject: format!("{}.log", config.fleet),
            jetstream: context,
            client,
            config,
            runtime: runtime.clone(),
            stream: Mutex::new(None),
            position: Mutex::new(None),
            fetched: Mutex::new(BTreeMap::new()),
            connected: AtomicBool::new(connected),
            reconnected: tokio::sync::Notify::new(),
        });
        let (sender, receiver) = std::sync::mpsc::channel();
        runtime.spawn(follow(inner.clone(), sender));
        NatsLog {
            inner,
            remote: Mutex::new(Some(receiver)),
        }
    }

    /// Brings the local journal up to the stream before the registry starts
    /// (a node that was down, or a new one), logging progress for a long
    /// catch-up. Returns how many events were written.
    ///
    /// # Errors
    ///
    /// NATS cannot be reached ([`Error::Unavailable`]: the node then starts
    /// from its replica and catches up when NATS is back), or the journal
    /// failed.
    pub fn catch_up(&self) -> Result<u64, Error> {
        let inner = &self.inner;
        let last = inner.block_on(inner.last_stream_seq())?;
        let position = inner.block_on(inner.position())?;
        let behind = last.saturating_sub(position);
        if behind > 0 {
            tracing::info!(
                messages = behind,
                "catching up with the fleet log {}",
                inner.config.log_stream()
            );
        }
        let mut progress = crate::progress::Progress::new(
            "catching up with the fleet log",
            usize::try_from(behind).unwrap_or(usize::MAX),
        );
        let mut events = 0;
        loop {
            let batch = inner.block_on(inner.fetch_after(inner.known_position()?, READ_AHEAD))?;
            if batch.is_empty() {
                break;
            }
            for fetched in batch {
                events += fetched.commit.payloads.len() as u64;
                progress.advance(1);
                inner.write_local(&fetched)?;
            }
        }
        progress.finish();
        Ok(events)
    }

    /// Waits until the connection to NATS comes back after a loss (or is
    /// made for the first time): the registry then reconciles the store, so
    /// that what the watcher saw meanwhile is appended.
    pub async fn reconnected(&self) {
        self.inner.reconnected.notified().await;
    }
}

impl Inner {
    fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    fn unavailable(&self, why: impl std::fmt::Display) -> Error {
        Error::Unavailable(format!("NATS at {} {why}", self.config.urls_display()))
    }

    fn check_connected(&self) -> Result<(), Error> {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            _ => Err(self.unavailable("is unreachable")),
        }
    }

    fn known_position(&self) -> Result<u64, Error> {
        lock(&self.position).ok_or_else(|| self.unavailable("has not answered yet"))
    }

    /// The stream, found or created.
    async fn stream(&self) -> Result<jetstream::stream::Stream, Error> {
        if let Some(stream) = lock(&self.stream).clone() {
            return Ok(stream);
        }
        self.check_connected()?;
        let config = jetstream::stream::Config {
            name: self.config.log_stream(),
            subjects: vec![self.subject.clone()],
            storage: jetstream::stream::StorageType::File,
            num_replicas: self.config.replicas.max(1),
            description: Some(format!(
                "aliasd fleet {}: one message per commit",
                self.config.fleet
            )),
            ..Default::default()
        };
        let stream = self
            .jetstream
            .get_or_create_stream(config)
            .await
            .map_err(|e| self.unavailable(format_args!("refused the stream: {e}")))?;
        *lock(&self.stream) = Some(stream.clone());
        Ok(stream)
    }

    async fn last_stream_seq(&self) -> Result<u64, Error> {
        let stream = self.stream().await?;
        let info = stream
            .get_info()
            .await
            .map_err(|e| self.unavailable(format_args!("did not answer: {e}")))?;
        Ok(info.state.last_sequence)
    }

    /// The node's position in the stream, found on first use (module docs).
    async fn position(&self) -> Result<u64, Error> {
        if let Some(position) = *lock(&self.position) {
            return Ok(position);
        }
        let stream = self.stream().await?;
        let info = stream
            .get_info()
            .await
            .map_err(|e| self.unavailable(format_args!("did not answer: {e}")))?;
        let local_last = self.local.last_seq();
        let found = self
            .locate(
                local_last,
                info.state.first_sequence,
                info.state.last_sequence,
            )
            .await?;
        let mut position = lock(&self.position);
        // The writer may have set it meanwhile; its value is the newer one.
        Ok(*position.get_or_insert(found))
    }

    /// The stream seq of the message holding event `local_last`, by binary
    /// search over `first..=last`.
    async fn locate(&self, local_last: u64, first: u64, last: u64) -> Result<u64, Error> {
        if local_last == 0 {
            if first > 1 {
                return Err(Error::Unavailable(format!(
                    "the fleet log {} was purged below message {first} and this node's journal is \
                     empty: start it from a copy of another node's journal",
                    self.config.log_stream()
                )));
            }
            return Ok(0);
        }
        let (mut lo, mut hi) = (first.max(1), last);
        while lo <= hi {
            let mid = lo + (hi - lo) / 2;
            let Some(fetched) = self.get(mid).await? else {
                return Err(self.unavailable(format_args!("lost message {mid} of the fleet log")));
            };
            let commit_first = fetched.commit.first_seq;
            let commit_last = commit_first + fetched.commit.payloads.len() as u64 - 1;
            if local_last < commit_first {
                hi = mid - 1;
            } else if local_last > commit_last {
                lo = mid + 1;
            } else if local_last == commit_last {
                return Ok(mid);
            } else {
                break;
            }
        }
        Err(Error::Unavailable(format!(
            "this node's journal (last seq {local_last}) does not match the fleet log {} at {}: \
             it ends inside a commit, or past the log's end; move the journal aside and start \
             again to replay the fleet",
            self.config.log_stream(),
            self.config.urls_display()
        )))
    }

    /// The message at `seq`, or `None` past the end.
    async fn get(&self, seq: u64) -> Result<Option<Fetched>, Error> {
        let stream = self.stream().await?;
        let message = match stream.get_raw_message(seq).await {
            Ok(message) => message,
            Err(e) if e.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => {
                return Ok(None)
            }
            Err(e) => return Err(self.unavailable(format_args!("did not answer: {e}"))),
        };
        let header =
            |name: &str| -> Option<u64> { message.headers.get(name)?.as_str().parse().ok() };
        let (Some(first_seq), Some(count)) = (header(FIRST_SEQ), header(EVENTS)) else {
            return Err(self.unavailable(format_args!(
                "holds message {seq} without the {FIRST_SEQ} and {EVENTS} headers in the fleet log"
            )));
        };
        let payloads = split(&message.payload).filter(|p| p.len() as u64 == count && count > 0);
        let Some(payloads) = payloads else {
            return Err(self.unavailable(format_args!(
                "holds a damaged message {seq} in the fleet log"
            )));
        };
        Ok(Some(Fetched {
            stream_seq: seq,
            commit: RemoteCommit {
                first_seq,
                payloads,
            },
        }))
    }

    /// Up to `max` messages after stream seq `after`, in order.
    async fn fetch_after(&self, after: u64, max: usize) -> Result<Vec<Fetched>, Error> {
        let gets = (after + 1..=after + max as u64).map(|seq| self.get(seq));
        let mut results = futures_util::stream::iter(gets).buffered(16);
        let mut out = Vec::new();
        while let Some(result) = results.next().await {
            match result? {
                Some(fetched) => out.push(fetched),
                None => break,
            }
        }
        let mut fetched = lock(&self.fetched);
        for f in &out {
            fetched.insert(f.commit.first_seq, f.stream_seq);
        }
        Ok(out)
    }

    /// Writes a fetched commit to the local journal (start-up catch-up).
    fn write_local(&self, fetched: &Fetched) -> Result<(), Error> {
        let local_last = self.local.last_seq();
        if fetched.commit.first_seq != local_last + 1 {
            return Err(Error::Unavailable(format!(
                "message {} of the fleet log starts at seq {}, while this node's journal ends at \
                 {local_last}",
                fetched.stream_seq, fetched.commit.first_seq
            )));
        }
        self.local.append(fetched.commit.payloads.clone())?;
        *lock(&self.position) = Some(fetched.stream_seq);
        lock(&self.fetched).remove(&fetched.commit.first_seq);
        Ok(())
    }

    async fn publish(
        &self,
        position: u64,
        first_seq: u64,
        payloads: &[Vec<u8>],
    ) -> Result<u64, Error> {
        self.check_connected()?;
        let body = join(payloads);
        let message = jetstream::message::PublishMessage::build()
            .payload(body.into())
            .header(FIRST_SEQ, first_seq.to_string())
            .header(EVENTS, payloads.len().to_string())
            .expected_last_sequence(position);
        let ack = self
            .jetstream
            .send_publish(self.subject.clone(), message)
            .await;
        let ack = match ack {
            Ok(future) => future.await,
            Err(e) => Err(e),
        };
        match ack {
            Ok(ack) => Ok(ack.sequence),
            Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
                Err(Error::Conflict)
            }
            Err(e) => Err(self.unavailable(format_args!("did not store the commit: {e}"))),
        }
    }
}

/// Follows the stream and the connection (see the module docs).
async fn follow(inner: Arc<Inner>, sender: std::sync::mpsc::Sender<RemoteCommit>) {
    let mut wake: Option<async_nats::Subscriber> = None;
    let mut timer = tokio::time::interval(POLL);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_connected = None;
    let mut sent = 0u64;
    loop {
        let woken = tokio::select! {
            _ = timer.tick() => false,
            message = async {
                match &mut wake {
                    Some(subscriber) => subscriber.next().await,
                    None => std::future::pending().await,
                }
            } => message.is_some(),
        };
        let connected = inner.client.connection_state() == async_nats::connection::State::Connected;
        inner.connected.store(connected, Ordering::Relaxed);
        match (was_connected, connected) {
            (Some(true), false) | (None, false) => tracing::warn!(
                "NATS at {} is unreachable: writes answer 503 and watcher observations wait \
                 until it is back; reads go on from the local journal",
                inner.config.urls_display()
            ),
            (Some(false), true) => {
                tracing::info!("NATS at {} is back", inner.config.urls_display());
                inner.reconnected.notify_one();
            }
            (None, true) => inner.reconnected.notify_one(),
            _ => {}
        }
        was_connected = Some(connected);
        if !connected {
            continue;
        }
        if wake.is_none() {
            wake = inner.client.subscribe(inner.subject.clone()).await.ok();
        }
        let position = match inner.position().await {
            Ok(position) => position,
            Err(e) => {
                tracing::debug!("the fleet log cannot be followed now: {e}");
                continue;
            }
        };
        sent = sent.max(position);
        // A message seen on the subject may not be stored yet: look again
        // shortly before waiting for the next one.
        let mut tries = if woken { 5 } else { 1 };
        while tries > 0 {
            match inner.fetch_after(sent, READ_AHEAD).await {
                Ok(batch) if batch.is_empty() => {
                    tries -= 1;
                    if tries > 0 {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                Ok(batch) => {
                    for fetched in batch {
                        sent = fetched.stream_seq;
                        if sender.send(fetched.commit).is_err() {
                            return; // The registry stopped.
                        }
                    }
                    tries = 1;
                }
                Err(e) => {
                    tracing::debug!("reading the fleet log failed: {e}");
                    break;
                }
            }
        }
    }
}

impl EventLog for NatsLog {
    fn append(&self, payloads: Vec<Vec<u8>>) -> Result<u64, Error> {
        let inner = &self.inner;
        let position = inner.block_on(inner.position())?;
        let first_seq = inner.local.last_seq() + 1;
        let stream_seq = inner.block_on(inner.publish(position, first_seq, &payloads))?;
        // Stored in the stream: now the replica. Another node's commit
        // cannot come between (the stream refused any other position).
        let local_first = inner.local.append(payloads)?;
        *lock(&inner.position) = Some(stream_seq);
        Ok(local_first)
    }

    fn last_seq(&self) -> u64 {
        self.inner.local.last_seq()
    }

    fn first_seq(&self) -> u64 {
        self.inner.local.first_seq()
    }

    fn read_from(&self, seq: u64) -> Result<Box<dyn LogReader>, Error> {
        self.inner.local.read_from(seq)
    }

    fn write_snapshot(&self, seq: u64, data: &[u8]) -> Result<(), Error> {
        self.inner.local.write_snapshot(seq, data)
    }

    fn size_bytes(&self) -> u64 {
        self.inner.local.size_bytes()
    }

    fn failed(&self) -> Option<Error> {
        self.inner.local.failed()
    }

    fn remote_commits(&self) -> Option<std::sync::mpsc::Receiver<RemoteCommit>> {
        lock(&self.remote).take()
    }

    fn fetch_remote(&self) -> Result<Vec<RemoteCommit>, Error> {
        let inner = &self.inner;
        let position = inner.block_on(inner.position())?;
        let mut out = Vec::new();
        let mut after = position;
        loop {
            let batch = inner.block_on(inner.fetch_after(after, READ_AHEAD))?;
            let full = batch.len() == READ_AHEAD;
            for fetched in batch {
                after = fetched.stream_seq;
                out.push(fetched.commit);
            }
            if !full {
                return Ok(out);
            }
        }
    }

    fn accept_remote(&self, commit: &RemoteCommit) -> Result<(), Error> {
        let inner = &self.inner;
        let Some(stream_seq) = lock(&inner.fetched).get(&commit.first_seq).copied() else {
            return Err(Error::Unavailable(format!(
                "a commit at seq {} was not read from the fleet log",
                commit.first_seq
            )));
        };
        inner.write_local(&Fetched {
            stream_seq,
            commit: commit.clone(),
        })
    }

    fn node(&self) -> Option<String> {
        Some(self.inner.config.node.clone())
    }

    fn health(&self) -> Option<String> {
        match self.inner.connected.load(Ordering::Relaxed)
            && self.inner.client.connection_state() == async_nats::connection::State::Connected
        {
            true => None,
            false => Some(format!(
                "NATS at {} is unreachable: writes answer 503 until it is back; reads, resolve \
                 and the proxy go on from the local journal",
                self.inner.config.urls_display()
            )),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A commit's payloads as one message body: each prefixed by its length.
fn join(payloads: &[Vec<u8>]) -> Vec<u8> {
    let mut body = Vec::with_capacity(payloads.iter().map(|p| p.len() + 4).sum());
    for payload in payloads {
        // A payload is one event's JSON, far below 4 GiB.
        body.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        body.extend_from_slice(payload);
    }
    body
}

/// The payloads of a message body written by [`join`], or `None` if it is
/// not one.
fn split(mut body: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut payloads = Vec::new();
    while !body.is_empty() {
        let (len, rest) = body.split_first_chunk::<4>()?;
        let len = u32::from_be_bytes(*len) as usize;
        if rest.len() < len {
            return None;
        }
        let (payload, rest) = rest.split_at(len);
        payloads.push(payload.to_vec());
        body = rest;
    }
    Some(payloads)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_splits_back_into_its_payloads() {
        let payloads = vec![b"one".to_vec(), Vec::new(), vec![7u8; 300]];
        assert_eq!(split(&join(&payloads)), Some(payloads));
        assert_eq!(split(&[]), Some(Vec::new()));
        assert_eq!(split(&[0, 0, 0, 5, 1]), None);
        assert_eq!(split(&[0, 0]), None);
    }
}
