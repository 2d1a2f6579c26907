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
//! answers (a few requests), so it cannot disagree with the journal. An
//! empty stream met by a node whose journal is not empty (a host that ran
//! single-host) is started from that journal: its records are published
//! first.
//!
//! A commit must fit in one NATS message (`max_payload`, 1 MiB by default):
//! [`EventLog::max_commit_bytes`] tells the writer, which splits a larger
//! group, or a larger reconcile, into several commits.
//!
//! Snapshots (SPEC §8): each snapshot the writer takes is also put in the
//! key-value bucket `<FLEET>_SNAPSHOTS` (in chunks under NATS's message size
//! limit, then the key `latest` naming them), unless a newer one is there. A
//! new node (no journal yet) starts from it ([`seed_journal`]) and reads the
//! stream after it. With `--retain N`, once a snapshot is in the bucket the
//! stream is purged below the commit holding the N-th last event (never past
//! the snapshot).
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
/// How long NATS gets to answer a request or acknowledge a commit. Short:
/// the writer is serial, so each write waiting on NATS delays the next ones.
const NATS_TIMEOUT: Duration = Duration::from_secs(2);
/// After the stream failed to answer, writes fail at once for this long
/// (the follower keeps probing it meanwhile), so that a queue of writes
/// does not each wait out [`NATS_TIMEOUT`].
const FAIL_FAST: Duration = Duration::from_secs(1);
/// Messages read ahead at once while catching up.
const READ_AHEAD: usize = 64;
/// Bytes of a snapshot per key of the bucket (NATS refuses messages over
/// 1 MiB by default).
const SNAPSHOT_CHUNK: usize = 256 << 10;
/// Bytes of a message kept for its headers under NATS's size limit.
const COMMIT_HEADROOM: usize = 4096;
/// The bucket key naming the newest snapshot.
const LATEST: &str = "latest";

/// What the bucket's `latest` key holds: where the newest snapshot is.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct SnapshotPointer {
    /// The last event the snapshot reflects.
    seq: u64,
    /// The stream message holding that event.
    position: u64,
    /// Its keys are `chunk.<seq>.<i>` for `i` in `0..chunks`.
    chunks: usize,
    /// Its length and SHA-256 (hex), checked when it is read.
    bytes: usize,
    sha256: String,
    /// The node that put it.
    node: String,
}

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
    /// Woken each time the connection comes back, and each time the stream
    /// answers again after failing.
    reconnected: tokio::sync::Notify,
    /// Why the stream refuses or does not answer while the connection is up
    /// (JetStream without a quorum, say), since the last failure.
    /// With the time of the latest failure: for a while after one, writes
    /// fail at once instead of each waiting out NATS's timeout in turn.
    trouble: Mutex<Option<(String, std::time::Instant)>>,
    /// `--retain N`: the stream keeps at least the last N events.
    retain: Option<u64>,
    /// Held while the position is searched for (or the log bootstrapped).
    locating: tokio::sync::Mutex<()>,
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
    /// is asked of NATS yet: the node starts while NATS is down. `retain`
    /// is `--retain`: how many events the stream keeps below a snapshot.
    pub fn new(
        local: FileLog,
        client: async_nats::Client,
        config: FleetConfig,
        runtime: tokio::runtime::Handle,
        retain: Option<u64>,
    ) -> NatsLog {
        // The context spawns its acker task on the runtime.
        let entered = runtime.enter();
        let mut context = jetstream::new(client.clone());
        drop(entered);
        context.set_timeout(NATS_TIMEOUT);
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
            trouble: Mutex::new(None),
            retain,
            locating: tokio::sync::Mutex::new(()),
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
    /// made for the first time), or the stream answers again after failing:
    /// the registry then reconciles the store, so that what the watcher saw
    /// meanwhile is appended.
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

    /// Records whether the stream answered (`None`) or why not, and says
    /// so in the log when that changes, not at each request.
    fn note(&self, trouble: Option<&Error>) {
        let mut current = lock(&self.trouble);
        match (current.is_some(), trouble) {
            (false, Some(e)) => tracing::warn!(
                "the fleet log does not answer: {e}; writes answer 503 until it does"
            ),
            (true, None) => {
                tracing::info!("the fleet log answers again");
                // Observations refused meanwhile wait for a reconcile; a log
                // that comes back on the same connection (a quorum regained),
                // or whose last failure was too recent for the reconnection's
                // reconcile to get through (`FAIL_FAST`), needs one now.
                self.reconnected.notify_one();
            }
            _ => {}
        }
        *current = trouble.map(|e| {
            let why = match e {
                Error::Unavailable(why) => why.clone(),
                e => e.to_string(),
            };
            (why, std::time::Instant::now())
        });
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
        // One search at a time (the follower and the writer may both ask).
        let _locating = self.locating.lock().await;
        if let Some(position) = *lock(&self.position) {
            return Ok(position);
        }
        let stream = self.stream().await?;
        let info = stream
            .get_info()
            .await
            .map_err(|e| self.unavailable(format_args!("did not answer: {e}")))?;
        let local_last = self.local.last_seq();
        if info.state.last_sequence == 0 && local_last > 0 {
            let found = self.bootstrap(local_last).await?;
            return Ok(*lock(&self.position).get_or_insert(found));
        }
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

    /// Starts an empty fleet log from this node's journal (a host that ran
    /// single-host before joins first): its records are published in order,
    /// in messages as large as NATS takes, and the position is the last.
    async fn bootstrap(&self, local_last: u64) -> Result<u64, Error> {
        let local_first = self.local.first_seq();
        if local_first != 1 {
            return Err(Error::Unavailable(format!(
                "the fleet log {} is empty and this node's journal starts at seq {local_first} \
                 (--retain dropped the rest), so it cannot start the fleet's history; start \
                 this node on an empty journal, or another node first",
                self.config.log_stream()
            )));
        }
        tracing::info!(
            events = local_last,
            "the fleet log {} is empty: publishing this node's journal as its start",
            self.config.log_stream()
        );
        let max = self.client.max_payload().saturating_sub(COMMIT_HEADROOM);
        let mut reader = self.local.read_from(1)?;
        let (mut position, mut first_seq) = (0, 1);
        let mut commit: Vec<Vec<u8>> = Vec::new();
        let mut bytes = 0;
        loop {
            let record = reader
                .next_owned()
                .transpose()?
                .filter(|(seq, _)| *seq <= local_last);
            let full = record
                .as_ref()
                .is_some_and(|(_, payload)| bytes + payload.len() + 4 > max && !commit.is_empty());
            if (record.is_none() || full) && !commit.is_empty() {
                let n = commit.len() as u64;
                position = match self.publish(position, first_seq, &commit).await {
                    Err(Error::Conflict) => {
                        return Err(Error::Unavailable(format!(
                            "another node started the fleet log {} while this one published \
                             its journal into it: move this node's journal aside and start it \
                             again to replay the fleet",
                            self.config.log_stream()
                        )))
                    }
                    other => other?,
                };
                first_seq += n;
                commit.clear();
                bytes = 0;
            }
            let Some((_, payload)) = record else { break };
            bytes += payload.len() + 4;
            commit.push(payload);
        }
        tracing::info!(
            messages = position,
            "the fleet log starts with this node's journal"
        );
        Ok(position)
    }

    /// The stream seq of the message holding event `local_last` (0 for an
    /// empty journal), or of the message before the first when the
    /// journal ends just before it (a journal seeded from a snapshot).
    async fn locate(&self, local_last: u64, first: u64, last: u64) -> Result<u64, Error> {
        if local_last == 0 && first <= 1 {
            return Ok(0);
        }
        let first = first.max(1);
        if let Some(oldest) = self.get(first).await? {
            if oldest.commit.first_seq == local_last + 1 {
                return Ok(first - 1);
            }
            if oldest.commit.first_seq > local_last + 1 {
                return Err(Error::Unavailable(format!(
                    "the fleet log {} was purged past this node's journal (it ends at seq \
                     {local_last}, the log starts at {}): move the journal aside and start again \
                     to begin from the newest snapshot",
                    self.config.log_stream(),
                    oldest.commit.first_seq
                )));
            }
        }
        match self.find(local_last, first, last).await? {
            Some((seq, commit_last)) if commit_last == local_last => Ok(seq),
            _ => Err(Error::Unavailable(format!(
                "this node's journal (last seq {local_last}) does not match the fleet log {} \
                 at {}: it ends inside a commit, or past the log's end; move the journal aside \
                 and start again to replay the fleet",
                self.config.log_stream(),
                self.config.urls_display()
            ))),
        }
    }

    /// The stream seq of the message holding event `event` and that
    /// message's last event, by binary search over `first..=last`.
    async fn find(&self, event: u64, first: u64, last: u64) -> Result<Option<(u64, u64)>, Error> {
        let (mut lo, mut hi) = (first.max(1), last);
        while lo <= hi {
            let mid = lo + (hi - lo) / 2;
            let Some(fetched) = self.get(mid).await? else {
                return Err(self.unavailable(format_args!("lost message {mid} of the fleet log")));
            };
            let commit_first = fetched.commit.first_seq;
            let commit_last = commit_first + fetched.commit.payloads.len() as u64 - 1;
            if event < commit_first {
                hi = mid - 1;
            } else if event > commit_last {
                lo = mid + 1;
            } else {
                return Ok(Some((mid, commit_last)));
            }
        }
        Ok(None)
    }

    /// The snapshots bucket, found or created.
    async fn snapshots(&self) -> Result<jetstream::kv::Store, Error> {
        let description = format!("aliasd fleet {}: snapshots", self.config.fleet);
        open_bucket(
            &self.jetstream,
            &self.config.snapshots_bucket(),
            &description,
            self.config.replicas,
            Duration::ZERO,
        )
        .await
        .map_err(|e| self.unavailable(format_args!("refused the snapshots bucket: {e}")))
    }

    /// Puts the snapshot at `seq` (stream message `position`) in the bucket,
    /// unless one as new is there; then drops the older one's chunks.
    async fn upload_snapshot(&self, seq: u64, position: u64, data: &[u8]) -> Result<bool, Error> {
        let kv = self.snapshots().await?;
        let failed =
            |e: &dyn std::fmt::Display| self.unavailable(format_args!("refused a snapshot: {e}"));
        let old = read_pointer(&kv).await.map_err(|e| failed(&e))?;
        if old.as_ref().is_some_and(|old| old.seq >= seq) {
            return Ok(false);
        }
        let chunks: Vec<&[u8]> = data.chunks(SNAPSHOT_CHUNK).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            kv.put(
                format!("chunk.{seq}.{i}"),
                bytes::Bytes::copy_from_slice(chunk),
            )
            .await
            .map_err(|e| failed(&e))?;
        }
        let pointer = SnapshotPointer {
            seq,
            position,
            chunks: chunks.len(),
            bytes: data.len(),
            sha256: crate::digest::sha256_hex(data),
            node: self.config.node.clone(),
        };
        let json = serde_json::to_vec(&pointer).map_err(|e| failed(&e))?;
        kv.put(LATEST, json.into()).await.map_err(|e| failed(&e))?;
        if let Some(old) = old {
            for i in 0..old.chunks {
                let _ = kv.purge(format!("chunk.{}.{i}", old.seq)).await;
            }
        }
        Ok(true)
    }

    /// `--retain N` after a snapshot at `seq` is in the bucket: purges the
    /// stream below the message holding event `min(seq, last - N) + 1`.
    async fn purge_below_snapshot(&self, seq: u64, retain: u64) -> Result<u64, Error> {
        let keep_from = seq.min(self.local.last_seq().saturating_sub(retain)) + 1;
        let stream = self.stream().await?;
        let info = stream
            .get_info()
            .await
            .map_err(|e| self.unavailable(format_args!("did not answer: {e}")))?;
        let (first, last) = (info.state.first_sequence, info.state.last_sequence);
        let Some((message, _)) = self.find(keep_from, first, last).await? else {
            return Ok(0);
        };
        if message <= first {
            return Ok(0);
        }
        let purged =
            stream.purge().sequence(message).await.map_err(|e| {
                self.unavailable(format_args!("refused to purge the fleet log: {e}"))
            })?;
        Ok(purged.purged)
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

    /// Up to `max` messages after stream seq `after`, in order (asks the
    /// stream where it ends first, so that no request is made past it).
    async fn fetch_after(&self, after: u64, max: usize) -> Result<Vec<Fetched>, Error> {
        let last = self.last_stream_seq().await?;
        let upto = last.min(after + max as u64);
        if upto <= after {
            return Ok(Vec::new());
        }
        let gets = (after + 1..=upto).map(|seq| self.get(seq));
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
        self.applied(fetched.stream_seq);
        Ok(())
    }

    /// Moves the position to `stream_seq`, just written to the local
    /// journal, and forgets the commits read before that are now applied
    /// (this node's own among them, which the writer skips).
    fn applied(&self, stream_seq: u64) {
        *lock(&self.position) = Some(stream_seq);
        let next = self.local.last_seq() + 1;
        let mut fetched = lock(&self.fetched);
        *fetched = fetched.split_off(&next);
    }

    async fn publish(
        &self,
        position: u64,
        first_seq: u64,
        payloads: &[Vec<u8>],
    ) -> Result<u64, Error> {
        self.check_connected()?;
        if let Some((why, at)) = &*lock(&self.trouble) {
            if at.elapsed() < FAIL_FAST {
                return Err(Error::Unavailable(why.clone()));
            }
        }
        let body = join(payloads);
        let max = self.client.max_payload().saturating_sub(COMMIT_HEADROOM);
        if body.len() > max {
            // Not NATS's trouble: this one commit is too big for a message.
            return Err(Error::Unavailable(format!(
                "the change takes {} bytes in the fleet log, over the {max} one message of NATS \
                 at {} can hold (max_payload); make it smaller (fewer ops in a batch)",
                body.len(),
                self.config.urls_display()
            )));
        }
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
            Ok(ack) => {
                self.note(None);
                Ok(ack.sequence)
            }
            Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
                self.note(None);
                Err(Error::Conflict)
            }
            Err(e) => {
                let e = self.unavailable(format_args!("did not store the commit: {e}"));
                if self.client.connection_state() == async_nats::connection::State::Connected {
                    self.note(Some(&e));
                }
                Err(e)
            }
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
                inner.note(Some(&e));
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
                    inner.note(None);
                    tries -= 1;
                    if tries > 0 {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                Ok(batch) => {
                    inner.note(None);
                    for fetched in batch {
                        sent = fetched.stream_seq;
                        // This node's own commits, and what the writer read
                        // itself after a conflict, are applied already.
                        if lock(&inner.position).is_some_and(|p| fetched.stream_seq <= p) {
                            continue;
                        }
                        if sender.send(fetched.commit).is_err() {
                            return; // The registry stopped.
                        }
                    }
                    tries = 1;
                }
                Err(e) => {
                    inner.note(Some(&e));
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
        inner.applied(stream_seq);
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
        self.inner.local.write_snapshot(seq, data)?;
        // The bucket's copy is for new nodes: put it in the background, so
        // that the writer does not wait on NATS for it.
        let Some(position) = *lock(&self.inner.position) else {
            return Ok(());
        };
        if self.inner.client.connection_state() != async_nats::connection::State::Connected {
            return Ok(());
        }
        let inner = self.inner.clone();
        let data = data.to_vec();
        self.inner.runtime.spawn(async move {
            match inner.upload_snapshot(seq, position, &data).await {
                Ok(false) => return,
                Ok(true) => tracing::info!(
                    seq,
                    bucket = %inner.config.snapshots_bucket(),
                    "snapshot put in the fleet's bucket"
                ),
                Err(e) => {
                    tracing::warn!("the snapshot at seq {seq} is not in the fleet's bucket: {e}");
                    return;
                }
            }
            if let Some(retain) = inner.retain {
                match inner.purge_below_snapshot(seq, retain).await {
                    Ok(0) => {}
                    Ok(purged) => tracing::info!(
                        purged,
                        "purged the fleet log below the snapshot at seq {seq} (--retain {retain})"
                    ),
                    Err(e) => tracing::warn!("purging the fleet log failed: {e}"),
                }
            }
        });
        Ok(())
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

    fn max_commit_bytes(&self) -> Option<usize> {
        // Room for the headers under the server's message size limit.
        Some(
            self.inner
                .client
                .max_payload()
                .saturating_sub(COMMIT_HEADROOM)
                .max(1),
        )
    }

    fn health(&self) -> Option<String> {
        let inner = &self.inner;
        let connected = inner.connected.load(Ordering::Relaxed)
            && inner.client.connection_state() == async_nats::connection::State::Connected;
        if !connected {
            return Some(format!(
                "NATS at {} is unreachable: writes answer 503 until it is back; reads, resolve \
                 and the proxy go on from the local journal",
                inner.config.urls_display()
            ));
        }
        lock(&inner.trouble).as_ref().map(|(why, _)| {
            format!(
                "{why}: writes answer 503 until the fleet log answers; reads, resolve and the \
                 proxy go on from the local journal"
            )
        })
    }
}

/// Opens the key-value bucket `bucket`, creating it (one value per key,
/// `max_age` for each, `Duration::ZERO` for none) if missing.
///
/// Not `create_key_value`: async-nats 0.52 first reads the account's info,
/// and fails to parse what nats-server 2.9 answers (it lacks the reserved
/// memory and storage fields), so the bucket's stream is created here with
/// the settings `create_key_value` gives it.
///
/// # Errors
///
/// NATS refused or did not answer.
pub async fn open_bucket(
    jetstream: &jetstream::Context,
    bucket: &str,
    description: &str,
    replicas: usize,
    max_age: Duration,
) -> Result<jetstream::kv::Store, String> {
    if let Ok(store) = jetstream.get_key_value(bucket).await {
        return Ok(store);
    }
    let config = jetstream::stream::Config {
        name: format!("KV_{bucket}"),
        description: Some(description.to_string()),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age,
        storage: jetstream::stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        num_replicas: replicas.max(1),
        discard: jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    };
    jetstream
        .get_or_create_stream(config)
        .await
        .map_err(|e| e.to_string())?;
    jetstream
        .get_key_value(bucket)
        .await
        .map_err(|e| e.to_string())
}

/// The bucket's `latest` pointer, if there is one.
async fn read_pointer(kv: &jetstream::kv::Store) -> Result<Option<SnapshotPointer>, String> {
    match kv.get(LATEST).await.map_err(|e| e.to_string())? {
        None => Ok(None),
        Some(json) => serde_json::from_slice(&json)
            .map(Some)
            .map_err(|e| format!("the snapshot pointer is not valid: {e}")),
    }
}

/// Starts a new node from the fleet's newest snapshot (SPEC §8): when
/// `journal_dir` holds no journal yet and the bucket `<FLEET>_SNAPSHOTS` has
/// a snapshot, seeds the journal with it ([`journal::seed`]), so that the
/// node reads only the stream after it. Returns the snapshot's seq if it
/// did. NATS unreachable, or no snapshot: nothing is done (the node replays
/// the stream, or catches up later).
///
/// # Errors
///
/// The snapshot read is damaged, or the journal directory cannot be written.
pub fn seed_journal(
    client: &async_nats::Client,
    config: &FleetConfig,
    journal_dir: &std::path::Path,
    runtime: &tokio::runtime::Handle,
) -> anyhow::Result<Option<u64>> {
    use anyhow::Context;
    let in_use = std::fs::read_dir(journal_dir)
        .map(|entries| {
            entries.filter_map(Result::ok).any(|entry| {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                name.ends_with(".seg") || name.ends_with(".snap")
            })
        })
        .unwrap_or(false);
    if in_use || client.connection_state() != async_nats::connection::State::Connected {
        return Ok(None);
    }
    let fetched = runtime.block_on(async {
        let entered = jetstream::new(client.clone());
        let Ok(kv) = entered.get_key_value(config.snapshots_bucket()).await else {
            return Ok(None);
        };
        let Some(pointer) = read_pointer(&kv).await.map_err(anyhow::Error::msg)? else {
            return Ok(None);
        };
        let mut data = Vec::with_capacity(pointer.bytes);
        for i in 0..pointer.chunks {
            let key = format!("chunk.{}.{i}", pointer.seq);
            let chunk = kv
                .get(&key)
                .await
                .with_context(|| format!("reading {key} of the fleet's snapshot"))?
                .with_context(|| format!("the fleet's snapshot lacks {key}"))?;
            data.extend_from_slice(&chunk);
        }
        anyhow::ensure!(
            data.len() == pointer.bytes && crate::digest::sha256_hex(&data) == pointer.sha256,
            "the fleet's snapshot at seq {} is damaged (its length or SHA-256 is not the one its \
             pointer names)",
            pointer.seq
        );
        anyhow::Ok(Some((pointer.seq, data)))
    })?;
    let Some((seq, data)) = fetched else {
        return Ok(None);
    };
    let seeded = journal::seed(journal_dir, journal::Seq(seq), &data).with_context(|| {
        format!(
            "writing the fleet's snapshot into {}",
            journal_dir.display()
        )
    })?;
    Ok(seeded.then_some(seq))
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
