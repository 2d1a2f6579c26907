//! The single writer: owns the journal handle, the authoritative index and the
//! materializer, and turns commands into durable events.
//!
//! Handlers and the watcher send a [`Command`] with a reply channel. The writer
//! thread takes every command waiting (group commit across requests) and, for
//! the group: (1) plans each against a [`Draft`] of the index, a failed one
//! rolled back alone; (2) appends all events in one journal transaction and waits
//! until it is durable; (3) applies them to the shared index; (4) materializes
//! the touched aliases; (5) hands the events to the publisher, which broadcasts
//! them in paced batches; (6) replies. Journal, index
//! and event stream share one order by construction, and no one hears of a
//! change that is not durable.
//!
//! Readers take the shared state's read lock for a moment and never wait for a
//! journal fsync: the write lock is taken only to apply already durable events.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::{broadcast, mpsc, oneshot};

use crate::command::{
    plan_batch, plan_delete, plan_put, BatchOp, CommandError, DeleteAlias, Origin, PutAlias,
    PutOutcome,
};
use crate::event::{now_rfc3339, Event, EventType};
use crate::feed::publisher::Publisher;
use crate::feed::{Batch, Published};
use crate::index::{
    AliasEntry, AliasName, AliasView, ChainEnd, ChainEnds, DepKey, Draft, Index, Models,
    PreparedChange, Preparer,
};
use crate::log::{EventLog, LogReader, SharedLog, Snapshot};
use crate::materializer::{AliasFile, FileJob, Materializer, Outcome, Retries};
use crate::progress::Progress;
use crate::reconcile;
use crate::store::Store;

/// Commands taken into one group commit at most.
const MAX_GROUP: usize = 512;

/// What readers see: the index and the models, always consistent with each other.
#[derive(Debug, Default)]
pub struct Shared {
    /// Aliases, derived from durable events only.
    pub index: Index,
    /// Models in the store, as last observed.
    pub models: Models,
}

/// Settings of the registry.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// The Ollama model store.
    pub models_dir: PathBuf,
    /// The journal directory.
    pub journal_dir: PathBuf,
    /// `--retain N`: keep at least the last N events.
    pub retain: Option<u64>,
    /// A journal segment rolls over past this many bytes.
    pub segment_bytes: u64,
    /// Write a snapshot after this many events.
    pub snapshot_every: u64,
    /// The journal's I/O layer; `None` is the real file system. Tests pass
    /// `journal::FaultyIo` here to make appends fail.
    #[doc(hidden)]
    pub io: Option<Arc<dyn journal::Io>>,
}

/// A change asked of the registry.
#[derive(Debug, Clone)]
pub enum Command {
    /// Create or retarget an alias.
    Put(PutAlias),
    /// Delete an alias.
    Delete(DeleteAlias),
    /// Several puts and deletes, all or nothing.
    Batch(Vec<BatchOp>),
    /// Read the whole store and bring aliases in line with it.
    Reconcile,
    /// Read the files at these names (changed behind aliasd's back) and bring
    /// the aliases they affect in line.
    ReconcileNames(Vec<crate::name::ModelName>),
    /// Write a snapshot now.
    Snapshot,
    /// Apply a commit another writer appended to the shared log (it is
    /// durable already): the index, the store and subscribers follow it as
    /// they follow this process's own commits.
    ApplyRemote(crate::log::RemoteCommit),
}

/// The result of a command.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A put: the alias after it, and whether it was created or changed.
    Put {
        /// The alias as committed.
        entry: Box<AliasEntry>,
        /// Created rather than updated.
        created: bool,
        /// Whether an event was written (false for an idempotent put).
        changed: bool,
    },
    /// A delete succeeded.
    Deleted,
    /// A batch: the put ops' results, in order.
    Batch(Vec<AliasEntry>),
    /// A reconcile: how many events it wrote.
    Reconciled(usize),
    /// A snapshot covering this seq was written.
    Snapshot(u64),
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// Refused by validation.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The event log could not make the change durable; nothing was applied.
    #[error("journal: {0}")]
    Storage(#[from] crate::log::Error),
    /// The registry is shutting down.
    #[error("registry is shutting down")]
    Unavailable,
    /// A reconcile could not read the model store (the cause chain, as text);
    /// nothing was changed.
    #[error("reading the model store failed: {0}")]
    Store(String),
}

struct Request {
    command: Command,
    origin: Origin,
    reply: oneshot::Sender<Result<Reply, RegistryError>>,
}

/// A cheap handle to the registry: send commands, read state, subscribe.
#[derive(Clone)]
pub struct Registry {
    commands: mpsc::Sender<Request>,
    shared: Arc<RwLock<Shared>>,
    events: broadcast::Sender<Arc<Batch>>,
    log: SharedLog,
    metrics: Arc<crate::metrics::Metrics>,
    store: Store,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

/// The writer thread; join it after dropping every [`Registry`] handle.
pub struct WriterThread(JoinHandle<()>);

impl WriterThread {
    /// Waits for the writer to drain its queue and exit.
    pub fn join(self) {
        let _ = self.0.join();
    }
}

impl Registry {
    /// Opens the journal (recovering it), rebuilds the index from the newest
    /// snapshot and the events after it, reconciles the store with it, and
    /// starts the writer thread.
    ///
    /// # Errors
    ///
    /// The journal cannot be opened (mid-log damage included) or the store
    /// cannot be read or created.
    pub fn start(config: RegistryConfig) -> anyhow::Result<(Registry, WriterThread)> {
        use anyhow::Context;
        let store = Store::new(&config.models_dir);
        store
            .ensure_layout()
            .with_context(|| format!("creating model store {}", config.models_dir.display()))?;
        Materializer::new(store.clone())
            .check_writable()
            .map_err(|e| {
                let manifests = store.manifests_dir();
                anyhow::anyhow!(
                    "cannot write in {} ({e}); aliasd writes each alias there as a manifest \
                     file. Run it as the user that owns the store (Ollama's Linux service runs as \
                     `ollama`: e.g. `sudo -u ollama aliasd serve --models {}`), or give this user \
                     write access to it",
                    manifests.display(),
                    config.models_dir.display()
                )
            })?;
        let mut options = journal::Options {
            retain: config.retain,
            segment_bytes: config.segment_bytes,
            ..journal::Options::default()
        };
        if let Some(io) = &config.io {
            options.io = io.clone();
        }
        let opened = crate::log::file::FileLog::open(&config.journal_dir, options)
            .with_context(|| format!("opening journal {}", config.journal_dir.display()))?;
        if opened.recovery.truncated_bytes > 0 {
            tracing::warn!(
                bytes = opened.recovery.truncated_bytes,
                file = ?opened.recovery.truncated_file,
                "journal had a torn tail; cut {} bytes back to the last complete record",
                opened.recovery.truncated_bytes
            );
        }
        Registry::start_on(store, &config, Arc::new(opened.log), opened.snapshot)
    }

    /// [`Registry::start`] on a log already open (the journal, or a shared
    /// log), with the store made ready: rebuilds the index from `snapshot`
    /// and the log, reconciles the store, and starts the writer.
    ///
    /// # Errors
    ///
    /// The log cannot be read, or the store cannot be reconciled.
    pub fn start_on(
        store: Store,
        config: &RegistryConfig,
        log: SharedLog,
        snapshot: Option<Snapshot>,
    ) -> anyhow::Result<(Registry, WriterThread)> {
        use anyhow::Context;
        let started = std::time::Instant::now();
        let index = load_index(&*log, snapshot)?;
        tracing::info!(
            aliases = index.len(),
            seq = index.last_seq(),
            seconds = %format!("{:.2}", started.elapsed().as_secs_f64()),
            "index loaded"
        );
        let (events, _) = broadcast::channel(crate::feed::publisher::BROADCAST_CAPACITY);
        let shared = Arc::new(RwLock::new(Shared {
            index,
            models: Models::default(),
        }));
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let (commands, receiver) = mpsc::channel(1024);
        let finisher = Finisher {
            commands: commands.downgrade(),
            metrics: metrics.clone(),
            shared: shared.clone(),
            materializer: Materializer::new(store.clone()),
            publisher: Publisher::start(events.clone()).context("starting the publisher thread")?,
        };
        let (jobs, job_receiver) = std::sync::mpsc::sync_channel(4);
        let finisher_thread = std::thread::Builder::new()
            .name("aliasd-finisher".into())
            .spawn(move || finisher.run(job_receiver))
            .context("starting the finisher thread")?;
        let mut writer = Writer {
            metrics: metrics.clone(),
            log: log.clone(),
            shared: shared.clone(),
            materializer: Materializer::new(store.clone()),
            finisher: jobs,
            finisher_thread: Some(finisher_thread),
            snapshot_every: config.snapshot_every.max(1),
            since_snapshot: 0,
            tamper_reported: false,
        };
        let started = std::time::Instant::now();
        let n_events = writer
            .reconcile_scoped(&Origin::system("startup"), None)
            .context("reconciling the model store with the journal")?;
        writer.drain();
        tracing::info!(
            events = n_events,
            seconds = %format!("{:.2}", started.elapsed().as_secs_f64()),
            "store reconciled"
        );
        let (aliases, models) = writer.read(|s| (s.index.len(), s.models.len()));
        if models == 0 && aliases > 0 {
            tracing::warn!(
                "the store {} holds no model, while the journal has {aliases} alias{}: they \
                 dangle until their models are back. If this is not the store you meant, stop \
                 aliasd and give the right one (--models or OLLAMA_MODELS); the aliases come \
                 back at the next start there",
                config.models_dir.display(),
                if aliases == 1 { "" } else { "es" }
            );
        }
        if let Some(remote) = log.remote_commits() {
            let commands = commands.downgrade();
            std::thread::Builder::new()
                .name("aliasd-remote".into())
                .spawn(move || forward_remote_commits(&remote, &commands))
                .context("starting the thread that applies other writers' commits")?;
        }
        let thread = std::thread::Builder::new()
            .name("aliasd-writer".into())
            .spawn(move || writer.run(receiver))
            .context("starting the writer thread")?;
        let registry = Registry {
            commands,
            shared,
            events,
            log,
            metrics,
            store,
        };
        Ok((registry, WriterThread(thread)))
    }

    /// Sends a command and waits for its reply.
    ///
    /// # Errors
    ///
    /// The command was refused, could not be made durable, or the registry stopped.
    pub async fn execute(&self, command: Command, origin: Origin) -> Result<Reply, RegistryError> {
        let (reply, response) = oneshot::channel();
        let request = Request {
            command,
            origin,
            reply,
        };
        self.commands
            .send(request)
            .await
            .map_err(|_| RegistryError::Unavailable)?;
        response.await.map_err(|_| RegistryError::Unavailable)?
    }

    /// Runs `f` with the current state under a short read lock.
    pub fn read<T>(&self, f: impl FnOnce(&Shared) -> T) -> T {
        let guard = self.shared.read().unwrap_or_else(|e| e.into_inner());
        f(&guard)
    }

    /// Subscribes to committed events.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Batch>> {
        self.events.subscribe()
    }

    /// The event log, for reading history (the writer alone appends).
    pub fn log(&self) -> &SharedLog {
        &self.log
    }

    /// The model store (for reading only; the writer alone writes to it).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The counters shared with the writer.
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
    }
}

/// Hands each commit another writer appended to the shared log to the
/// writer, in order, until the log or the registry stops.
fn forward_remote_commits(
    remote: &std::sync::mpsc::Receiver<crate::log::RemoteCommit>,
    commands: &mpsc::WeakSender<Request>,
) {
    for commit in remote {
        let Some(commands) = commands.upgrade() else {
            return; // The registry stopped.
        };
        let (reply, _) = oneshot::channel();
        let request = Request {
            command: Command::ApplyRemote(commit),
            origin: Origin::system("remote"),
            reply,
        };
        if commands.blocking_send(request).is_err() {
            return;
        }
    }
}

/// Records replayed per hand-over between the decoding and applying threads.
const REPLAY_CHUNK: usize = 4096;

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
fn load_index_in_chunks(
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
    let mut reader = log.read_from(1).map_err(|e| e.to_string())?;
    while let Some(record) = reader.next_borrowed() {
        let (record_seq, payload) = record.map_err(|e| e.to_string())?;
        if record_seq > seq {
            break;
        }
        let change = crate::event::Change::decode(payload).map_err(|e| e.to_string())?;
        index.apply_change(&change)?;
    }
    Ok(index)
}

/// The most aliases room is made for before a replay (a map of 25 bytes a
/// slot, 50-100 MB at this many); past it, the map grows as it goes.
const MAX_REPLAY_RESERVE: usize = 2_000_000;

/// Replayed records, each with its seq: the parsed change, or why its names
/// do not parse (such a record is skipped, with a warning).
type PreparedChunk = Vec<(u64, Result<PreparedChange, String>)>;

/// Reads, decodes and parses `records`, sending them on `chunk` at a time.
/// Stops at the first record that cannot be read or is not an event (sending
/// that error), or once the receiving side has gone.
fn prepare_records(
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
                let change = crate::event::Change::decode(payload)
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

/// The state owned by the writer thread.
struct Writer {
    metrics: Arc<crate::metrics::Metrics>,
    log: SharedLog,
    /// Written only by this thread, and only with durable events.
    shared: Arc<RwLock<Shared>>,
    /// For start-up and reconcile work done on this thread itself.
    materializer: Materializer,
    /// Durable, applied groups go to the finisher thread, which writes their
    /// files, broadcasts their events and replies, in order; meanwhile this
    /// thread plans and fsyncs the next group (a two-stage pipeline).
    finisher: std::sync::mpsc::SyncSender<Job>,
    finisher_thread: Option<JoinHandle<()>>,
    snapshot_every: u64,
    since_snapshot: u64,
    /// The journal was found changed under the server ([`journal::Error::Tampered`])
    /// and that was logged: later refusals are not logged again at error level.
    tamper_reported: bool,
}

type ReplySender = oneshot::Sender<Result<Reply, RegistryError>>;

/// Work for the finisher thread.
enum Job {
    /// Materialize these applied events, broadcast them, then send the replies.
    Finish {
        events: Vec<Event>,
        /// Each event's alias digest before the group (still aliasd's own).
        prior: Vec<Option<Arc<str>>>,
        replies: Vec<(ReplySender, Result<Reply, RegistryError>)>,
    },
    /// Try these alias files again until they match the index.
    Retry(Vec<AliasFile>),
    /// Answer once every job before this one is done.
    Barrier(std::sync::mpsc::Sender<()>),
}

/// The second pipeline stage: files, broadcast, replies.
struct Finisher {
    metrics: Arc<crate::metrics::Metrics>,
    shared: Arc<RwLock<Shared>>,
    materializer: Materializer,
    publisher: Publisher,
    /// To the writer: alias paths found foreign while writing are looked at
    /// again as the watcher would (their aliases become `shadowed`). Weak, so
    /// that the writer still stops once every handle is dropped.
    commands: mpsc::WeakSender<Request>,
}

impl Finisher {
    fn run(self, jobs: std::sync::mpsc::Receiver<Job>) {
        use std::sync::mpsc::RecvTimeoutError;
        let mut retries = Retries::default();
        loop {
            let job = match retries.due_in(Instant::now()) {
                None => match jobs.recv() {
                    Ok(job) => job,
                    Err(_) => break,
                },
                // Due: before the next job, so a steady stream of jobs
                // cannot put retries off.
                Some(wait) if wait.is_zero() => {
                    self.retry(&mut retries);
                    continue;
                }
                Some(wait) => match jobs.recv_timeout(wait) {
                    Ok(job) => job,
                    Err(RecvTimeoutError::Timeout) => {
                        self.retry(&mut retries);
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                },
            };
            match job {
                Job::Finish {
                    events,
                    prior,
                    replies,
                } => {
                    let synced = materialize(&self.materializer, &self.shared, &events, &prior);
                    if !synced.failed.is_empty() {
                        retries.add(report_failures(synced.failed), Instant::now());
                        self.metrics.set_alias_files_pending(retries.len());
                    }
                    self.look_again(synced.foreign);
                    for event in &events {
                        self.metrics.observe_event(event.kind);
                    }
                    self.publisher
                        .publish(events.into_iter().map(Published::new).collect());
                    for (sender, reply) in replies {
                        let _ = sender.send(reply);
                    }
                }
                Job::Retry(files) => {
                    retries.add(files, Instant::now());
                    self.metrics.set_alias_files_pending(retries.len());
                }
                Job::Barrier(done) => {
                    let _ = done.send(());
                }
            }
        }
        if !retries.is_empty() {
            tracing::warn!(
                "{} alias files are still not as the journal says; the next start writes them",
                retries.len()
            );
        }
    }

    /// Asks the writer to read the paths of these aliases again, as the
    /// watcher would: a path found foreign while writing (a symlink, a file
    /// where a directory should be) makes its alias `shadowed`. Never waits:
    /// the writer may be waiting for this thread.
    fn look_again(&self, names: Vec<crate::name::ModelName>) {
        if names.is_empty() {
            return;
        }
        let (reply, _) = oneshot::channel();
        let request = Request {
            command: Command::ReconcileNames(names),
            origin: Origin::system("watcher"),
            reply,
        };
        let Some(commands) = self.commands.upgrade() else {
            return; // Shutting down: the next start-up looks at them.
        };
        if commands.try_send(request).is_err() {
            tracing::warn!(
                "could not queue a look at foreign alias paths; the next start-up looks at them"
            );
        }
    }

    /// Tries the waiting alias files again, and says how it went.
    fn retry(&self, retries: &mut Retries) {
        let files = retries.take();
        let tried = files.len();
        let synced = sync_files(&self.materializer, &self.shared, &files);
        self.look_again(synced.foreign);
        let failed = synced.failed;
        let left = failed.len();
        let why = failed
            .first()
            .map(|(_, e)| format!("{e}{}", crate::materializer::advice(e)))
            .unwrap_or_default();
        let failed = failed.into_iter().map(|(file, _)| file).collect();
        let wait = retries.attempted(failed, Instant::now());
        self.metrics.set_alias_files_pending(retries.len());
        match wait {
            None => tracing::info!("{tried} alias files written on a retry"),
            Some(wait) => tracing::warn!(
                "{left} alias files still not written ({why}); trying again in {} s",
                wait.as_secs()
            ),
        }
    }
}

/// Logs each alias file that could not be written, and returns them for a retry.
fn report_failures(failed: Vec<(AliasFile, std::io::Error)>) -> Vec<AliasFile> {
    failed
        .into_iter()
        .map(|(file, e)| {
            tracing::error!(
                alias = %file.name,
                "writing the alias file failed: {e}{}; trying again in {} s",
                crate::materializer::advice(&e),
                crate::materializer::FIRST_RETRY.as_secs()
            );
            file
        })
        .collect()
}

/// What making alias files match the index left to do.
#[derive(Debug, Default)]
struct Synced {
    /// The files that could not be written or removed, with why.
    failed: Vec<(AliasFile, std::io::Error)>,
    /// Aliases whose path turned out foreign (see `beneath::Foreign`).
    foreign: Vec<crate::name::ModelName>,
}

/// Makes the files of the aliases these events touched match the index.
fn materialize(
    materializer: &Materializer,
    shared: &RwLock<Shared>,
    events: &[Event],
    prior: &[Option<Arc<str>>],
) -> Synced {
    // The last event of each alias in the group (the index holds its final state).
    let mut done = HashSet::new();
    let mut work: Vec<AliasFile> = Vec::new();
    for (event, prior) in events.iter().zip(prior).rev() {
        let Ok(AliasName::Exact(name)) = AliasName::of_event(event) else {
            continue;
        };
        if done.insert(name.key()) {
            let recorded = event.digest.as_deref().map(Arc::<str>::from);
            let ours = prior.iter().cloned().chain(recorded).collect();
            work.push(AliasFile { name, ours });
        }
    }
    sync_files(materializer, shared, &work)
}

/// Makes these alias files match the index, spread over threads when there
/// are many.
fn sync_files(materializer: &Materializer, shared: &RwLock<Shared>, work: &[AliasFile]) -> Synced {
    let work = file_jobs(shared, work);
    let synced = AtomicUsize::new(0);
    let outcome = std::sync::Mutex::new(Synced::default());
    let sync_one = |job: &FileJob| {
        let file = &job.file;
        synced.fetch_add(1, Ordering::Relaxed);
        match materializer.sync_job(job) {
            Ok(Outcome::Foreign) => outcome
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .foreign
                .push(file.name.clone()),
            Ok(done) => tracing::debug!(alias = %file.name, ?done, "materialized"),
            Err(e) => outcome
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .failed
                .push((file.clone(), e)),
        }
    };
    // Each alias has its own file, so a large group is spread over the cores:
    // most of a file's cost is the kernel creating its directory and inode.
    let threads = materialize_threads(work.len());
    if threads <= 1 {
        work.iter().for_each(sync_one);
        return outcome.into_inner().unwrap_or_else(|e| e.into_inner());
    }
    // A group this large is a start-up restoring many files: say how far it is.
    let mut progress = (work.len() >= PROGRESS_FROM_FILES)
        .then(|| Progress::new("writing alias files", work.len()));
    let share = work.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let mut shares = work.chunks(share);
        let own = shares.next().unwrap_or_default();
        for other in shares {
            let spawned = std::thread::Builder::new()
                .name("aliasd-files".into())
                .spawn_scoped(scope, move || other.iter().for_each(sync_one));
            if spawned.is_err() {
                // No thread to spare (a process limit): this one does it.
                other.iter().for_each(sync_one);
            }
        }
        for one in own {
            sync_one(one);
            if let Some(progress) = &mut progress {
                progress.reached(synced.load(Ordering::Relaxed));
            }
        }
    });
    if let Some(mut progress) = progress {
        progress.reached(synced.load(Ordering::Relaxed));
        progress.finish();
    }
    outcome.into_inner().unwrap_or_else(|e| e.into_inner())
}

/// What each of these alias files must become, copied out of the index
/// under its read lock, which is let go before any file is touched: a
/// writer waiting for the lock would otherwise make every reader wait for
/// the file system. Each file's model is found with one memo that walks
/// each chain once (a chain of n re-pointed costs n, not n squared).
fn file_jobs(shared: &RwLock<Shared>, work: &[AliasFile]) -> Vec<FileJob> {
    let guard = shared.read().unwrap_or_else(|e| e.into_inner());
    let mut ends = ChainEnds::new(&guard.models);
    work.iter()
        .map(|file| {
            let entry = guard.index.exact(file.name.key_str());
            let resolved = entry.and_then(|entry| match ends.end_of(&guard.index, &entry.target) {
                ChainEnd::Model(model) => Some(model.bytes.clone()),
                _ => None,
            });
            FileJob {
                file: file.clone(),
                entry: entry.cloned(),
                resolved,
            }
        })
        .collect()
}

/// Alias files in one group from which their writing reports progress.
const PROGRESS_FROM_FILES: usize = 10_000;

/// Aliases per thread below which a group's files are written by the
/// finisher alone (a thread costs more than a few files).
const FILES_PER_THREAD: usize = 8;

/// How many threads write a group of `files` alias files.
fn materialize_threads(files: usize) -> usize {
    // Asked once: on Linux `available_parallelism` opens and reads cgroup files
    // on every call, which had cost 12% of the finisher's time per group.
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let cores = *CORES
        .get_or_init(|| std::thread::available_parallelism().map_or(1, std::num::NonZero::get));
    (files / FILES_PER_THREAD).clamp(1, cores.min(4))
}

/// A planned request waiting for the group's commit.
struct Pending {
    reply: oneshot::Sender<Result<Reply, RegistryError>>,
    outcome: Result<Planned, RegistryError>,
}

enum Planned {
    Put(PutOutcome, bool),
    Deleted,
    Batch(Vec<PutOutcome>),
    Reconcile,
    Snapshot,
}

impl Writer {
    fn run(mut self, mut receiver: mpsc::Receiver<Request>) {
        while let Some(first) = receiver.blocking_recv() {
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match receiver.try_recv() {
                    Ok(request) => group.push(request),
                    Err(_) => break,
                }
            }
            self.process(group);
        }
        self.drain();
        if self.since_snapshot > 0 {
            if let Err(e) = self.write_snapshot() {
                tracing::error!("snapshot at shutdown failed: {e}");
            }
        }
        let Writer {
            finisher,
            finisher_thread,
            ..
        } = self;
        drop(finisher);
        if let Some(thread) = finisher_thread {
            let _ = thread.join();
        }
        tracing::info!("writer stopped");
    }

    /// Waits until the finisher has done every job sent so far.
    fn drain(&self) {
        let (done, wait) = std::sync::mpsc::channel();
        if self.finisher.send(Job::Barrier(done)).is_ok() {
            let _ = wait.recv();
        }
    }

    fn process(&mut self, group: Vec<Request>) {
        // A reconcile reads the whole store; it runs alone, after the rest.
        let (others, reconciles): (Vec<Request>, Vec<Request>) = group.into_iter().partition(|r| {
            !matches!(
                r.command,
                Command::Reconcile | Command::ReconcileNames(_) | Command::ApplyRemote(_)
            )
        });
        self.process_group(others);
        for request in reconciles {
            if let Command::ApplyRemote(commit) = request.command {
                let _ = request.reply.send(self.apply_remote(commit));
                continue;
            }
            let names = match &request.command {
                Command::ReconcileNames(names) => Some(names.as_slice()),
                _ => None,
            };
            let res = self
                .reconcile_scoped(&request.origin, names)
                .inspect(|_| self.drain())
                .map(Reply::Reconciled)
                .map_err(|e| {
                    tracing::error!("reconcile failed: {e:#}");
                    // Not `Unavailable`: the registry is not shutting down.
                    match e.downcast::<crate::log::Error>() {
                        Ok(e) => RegistryError::Storage(e),
                        Err(e) => RegistryError::Store(format!("{e:#}")),
                    }
                });
            let _ = request.reply.send(res);
        }
    }

    fn process_group(&mut self, group: Vec<Request>) {
        if group.is_empty() {
            return;
        }
        let time = now_rfc3339();
        let mut pending = Vec::with_capacity(group.len());
        let events = {
            let guard = self.shared.read().unwrap_or_else(|e| e.into_inner());
            let mut draft = Draft::new(&guard.index, self.log.last_seq() + 1);
            for request in group {
                let checkpoint = draft.checkpoint();
                let outcome = plan(&mut draft, &guard.models, &request, &time);
                if outcome.is_err() {
                    draft.rollback(checkpoint);
                }
                pending.push(Pending {
                    reply: request.reply,
                    outcome: outcome.map_err(RegistryError::from),
                });
            }
            draft.into_events()
        };
        let prior = match self.commit(&events, None) {
            Ok(prior) => prior,
            Err(e) => {
                self.fail_group(e, pending, events.len());
                return;
            }
        };
        let replies = pending
            .into_iter()
            .map(|p| {
                let reply = match p.outcome {
                    Err(e) => Err(e),
                    Ok(planned) => self.reply_for(planned),
                };
                (p.reply, reply)
            })
            .collect();
        self.finish(events, prior, replies);
        self.maybe_snapshot();
    }

    /// Hands an applied group to the finisher.
    fn finish(
        &self,
        events: Vec<Event>,
        prior: Vec<Option<Arc<str>>>,
        replies: Vec<(ReplySender, Result<Reply, RegistryError>)>,
    ) {
        let job = Job::Finish {
            events,
            prior,
            replies,
        };
        if self.finisher.send(job).is_err() {
            tracing::error!("the finisher thread is gone; replies are lost");
        }
    }

    /// Answers every request of a group whose append failed.
    fn fail_group(&mut self, e: crate::log::Error, pending: Vec<Pending>, n_events: usize) {
        let tampered = matches!(e.as_journal(), Some(journal::Error::Tampered { .. }));
        match () {
            () if tampered && self.tamper_reported => {
                tracing::debug!("write refused, {n_events} events not applied: {e}");
            }
            () if tampered => {
                self.tamper_reported = true;
                tracing::error!(
                    "THE JOURNAL WAS REMOVED OR DAMAGED UNDER THE RUNNING SERVER: {n_events} \
                     events not applied, and every write is refused from now on (reads go on \
                     from memory): {e}"
                );
            }
            () => tracing::error!("journal append failed, {n_events} events not applied: {e}"),
        }
        // Every request of the group gets the same error, its OS error code
        // included, so that each one's status (507 for ENOSPC) is right.
        for p in pending {
            let res = match p.outcome {
                Ok(_) => Err(RegistryError::Storage(e.copy())),
                Err(e) => Err(e),
            };
            let _ = p.reply.send(res);
        }
    }

    fn reply_for(&mut self, planned: Planned) -> Result<Reply, RegistryError> {
        let entry_of = |shared: &Shared, dep: &DepKey| shared.index.entry(dep).cloned();
        match planned {
            Planned::Put(outcome, changed) => {
                let entry = self
                    .read(|s| entry_of(s, &outcome.dep))
                    .ok_or(RegistryError::Unavailable)?;
                Ok(Reply::Put {
                    entry: Box::new(entry),
                    created: outcome.created,
                    changed,
                })
            }
            Planned::Deleted => Ok(Reply::Deleted),
            Planned::Batch(outcomes) => {
                let entries = self.read(|s| {
                    outcomes
                        .iter()
                        .filter_map(|o| entry_of(s, &o.dep))
                        .collect()
                });
                Ok(Reply::Batch(entries))
            }
            Planned::Snapshot => self
                .write_snapshot()
                .map(Reply::Snapshot)
                .map_err(RegistryError::from),
            Planned::Reconcile => Ok(Reply::Reconciled(0)),
        }
    }

    fn read<T>(&self, f: impl FnOnce(&Shared) -> T) -> T {
        let guard = self.shared.read().unwrap_or_else(|e| e.into_inner());
        f(&guard)
    }

    /// Makes events durable and applies them ([`Writer::apply`]).
    fn commit(
        &mut self,
        events: &[Event],
        models: Option<Models>,
    ) -> Result<Vec<Option<Arc<str>>>, crate::log::Error> {
        if !events.is_empty() {
            let payloads = events.iter().map(Event::encode).collect();
            let started = std::time::Instant::now();
            let first = self.log.append(payloads).inspect_err(|_| {
                self.metrics.observe_commit_failure();
            })?;
            self.metrics.observe_commit(started.elapsed());
            if first != events[0].seq {
                tracing::error!(
                    expected = events[0].seq,
                    got = first,
                    "journal seq out of step with the index"
                );
            }
        }
        Ok(self.apply(events, models))
    }

    /// Applies durable events to the index (with `models`, if given,
    /// replacing the model set in the same step). Returns each event's alias
    /// digest from before, for the finisher: files with it are still ours.
    fn apply(&mut self, events: &[Event], models: Option<Models>) -> Vec<Option<Arc<str>>> {
        let mut guard = self.shared.write().unwrap_or_else(|e| e.into_inner());
        let prior = events
            .iter()
            .map(|e| {
                AliasName::of_event(e)
                    .ok()
                    .and_then(|a| guard.index.exact(&a.key()).and_then(|x| x.digest.clone()))
            })
            .collect();
        for event in events {
            if let Err(e) = guard.index.apply(event) {
                tracing::error!(seq = event.seq, "event not applied: {e}");
            }
        }
        if let Some(models) = models {
            guard.models = models;
        }
        drop(guard);
        self.since_snapshot += events.len() as u64;
        prior
    }

    /// A snapshot costs time in proportion to the index, so it is taken at
    /// most once per index-size worth of events: amortized O(1) per event.
    fn maybe_snapshot(&mut self) {
        let index_len = self.read(|s| s.index.len() as u64);
        if self.since_snapshot >= self.snapshot_every.max(index_len) {
            if let Err(e) = self.write_snapshot() {
                tracing::error!("periodic snapshot failed: {e}");
            }
        }
    }

    /// Reads the store, journals what changed behind aliasd's back, and
    /// materializes. Returns the number of events written.
    /// With `names`, only the files at those names are read.
    fn reconcile_scoped(
        &mut self,
        origin: &Origin,
        names: Option<&[crate::name::ModelName]>,
    ) -> anyhow::Result<usize> {
        // Files of groups still in the finisher must be there before reading.
        self.drain();
        let observation = {
            let guard = self.shared.read().unwrap_or_else(|e| e.into_inner());
            let store = self.materializer.store();
            match names {
                None => reconcile::observe(store, &guard.index, &guard.models)?,
                Some(names) => reconcile::observe_names(store, &guard.index, &guard.models, names)?,
            }
        };
        for path in &observation.temp_files {
            // Only aliasd names files so; the finisher is drained, so none is in use.
            match self.materializer.store().remove_temp_file(path) {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "removed a temp file left by a crash")
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), "could not remove a leftover temp file: {e}")
                }
            }
        }
        for (name, digest) in &observation.stale {
            match self.materializer.withdraw(name, &[digest]) {
                Ok(_) => tracing::info!(alias = %name, "withdrew the file of a deleted alias"),
                Err(e) => {
                    tracing::warn!(alias = %name, "could not withdraw a deleted alias's file: {e}")
                }
            }
        }
        let time = now_rfc3339();
        let events = {
            let guard = self.shared.read().unwrap_or_else(|e| e.into_inner());
            let mut draft = Draft::new(&guard.index, self.log.last_seq() + 1);
            reconcile::plan(&mut draft, &observation, origin, &time);
            draft.into_events()
        };
        if !observation.stale.is_empty() {
            let mut guard = self.shared.write().unwrap_or_else(|e| e.into_inner());
            for (name, _) in &observation.stale {
                guard.index.clear_tombstone(&name.key());
            }
        }
        let prior = self.commit(&events, Some(observation.models))?;
        let n_events = events.len();
        self.finish(events, prior, Vec::new());
        if !observation.out_of_date.is_empty() {
            self.drain();
            self.sync_aliases(&observation.out_of_date);
        }
        self.maybe_snapshot();
        Ok(n_events)
    }

    /// Makes the files of these exact aliases match the index; the finisher
    /// tries the ones that fail again.
    fn sync_aliases(&self, keys: &[String]) {
        let files: Vec<AliasFile> = self.read(|s| {
            keys.iter()
                .filter_map(|key| match &s.index.exact(key)?.alias {
                    AliasName::Exact(name) => Some(AliasFile {
                        name: name.clone(),
                        ours: Vec::new(),
                    }),
                    AliasName::Prefix(_) => None,
                })
                .collect()
        });
        let jobs = file_jobs(&self.shared, &files);
        let mut progress = Progress::new("rewriting out-of-date alias files", jobs.len());
        let mut failed = Vec::new();
        for job in jobs {
            progress.advance(1);
            if let Err(e) = self.materializer.sync_job(&job) {
                failed.push((job.file, e));
            }
        }
        progress.finish();
        if !failed.is_empty() {
            let _ = self.finisher.send(Job::Retry(report_failures(failed)));
        }
    }

    /// Applies a commit another writer made durable in the shared log, then
    /// hands it to the finisher like one of this writer's own.
    fn apply_remote(&mut self, commit: crate::log::RemoteCommit) -> Result<Reply, RegistryError> {
        // Files of earlier groups first, as for a reconcile.
        self.drain();
        let expected = self.read(|s| s.index.last_seq()) + 1;
        if commit.first_seq != expected {
            tracing::error!(
                expected,
                got = commit.first_seq,
                "a commit from the shared log is out of step with the index; not applied"
            );
            return Err(RegistryError::Unavailable);
        }
        let mut events = Vec::with_capacity(commit.payloads.len());
        for (i, payload) in commit.payloads.iter().enumerate() {
            match Event::decode(payload) {
                Ok(event) => events.push(event),
                Err(e) => tracing::warn!(
                    seq = commit.first_seq + i as u64,
                    "a record of the shared log is not an event: {e}; skipped"
                ),
            }
        }
        let prior = self.apply(&events, None);
        let n_events = events.len();
        self.finish(events, prior, Vec::new());
        self.maybe_snapshot();
        Ok(Reply::Reconciled(n_events))
    }

    fn write_snapshot(&mut self) -> Result<u64, crate::log::Error> {
        let (seq, data) = self.read(|s| (s.index.last_seq(), crate::snapshot::encode(&s.index)));
        self.log.write_snapshot(seq, &data)?;
        self.since_snapshot = 0;
        tracing::info!(seq, bytes = data.len(), "snapshot written");
        Ok(seq)
    }
}

fn plan<'a>(
    draft: &mut Draft<'a>,
    models: &'a Models,
    request: &Request,
    time: &str,
) -> Result<Planned, CommandError> {
    let origin = &request.origin;
    match &request.command {
        Command::Put(put) => {
            let before = draft.next_seq();
            let outcome = plan_put(draft, models, origin, time, put)?;
            Ok(Planned::Put(outcome, draft.next_seq() != before))
        }
        Command::Delete(delete) => {
            plan_delete(draft, origin, time, delete).map(|()| Planned::Deleted)
        }
        Command::Batch(ops) => plan_batch(draft, models, origin, time, ops).map(Planned::Batch),
        Command::Snapshot => Ok(Planned::Snapshot),
        Command::Reconcile | Command::ReconcileNames(_) | Command::ApplyRemote(_) => {
            Ok(Planned::Reconcile)
        }
    }
}

/// The event types a change of `kind` means for the alias's state.
pub fn is_system_event(kind: EventType) -> bool {
    !matches!(
        kind,
        EventType::AliasCreated | EventType::AliasUpdated | EventType::AliasDeleted
    )
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

    /// A commit another writer appended to a shared log reaches the index,
    /// the store and subscribers through the writer, as its own would.
    #[test]
    fn a_remote_commit_is_applied_materialized_and_published() {
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        let model_dir = dir.path().join("manifests/registry.ollama.ai/library/m1");
        std::fs::create_dir_all(&model_dir).unwrap();
        std::fs::write(
            model_dir.join("latest"),
            br#"{"schemaVersion":2,"layers":[]}"#,
        )
        .unwrap();
        let store = crate::store::Store::new(dir.path());
        store.ensure_layout().unwrap();
        let config = super::RegistryConfig {
            models_dir: dir.path().to_path_buf(),
            journal_dir: dir.path().join("unused"),
            retain: None,
            segment_bytes: 1 << 20,
            snapshot_every: 1_000,
            io: None,
        };
        let log = Arc::new(crate::log::memory::MemoryLog::shared());
        let (registry, writer) =
            super::Registry::start_on(store, &config, log.clone(), None).unwrap();
        let mut live = registry.subscribe();

        let digest = crate::digest::manifest_digest(br#"{"schemaVersion":2,"layers":[]}"#);
        let active = |seq| {
            let mut event = created(seq);
            event.digest = Some(digest.clone());
            event.encode()
        };
        log.remote_append(vec![active(1), active(2)]);

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let seqs: Vec<u64> = runtime.block_on(async {
            let mut seqs = Vec::new();
            while seqs.len() < 2 {
                let batch = tokio::time::timeout(std::time::Duration::from_secs(10), live.recv())
                    .await
                    .expect("published in time")
                    .unwrap();
                seqs.extend(batch.events.iter().map(|p| p.event.seq));
            }
            seqs
        });
        assert_eq!(seqs, [1, 2]);
        registry.read(|s| {
            assert_eq!(s.index.last_seq(), 2);
            assert_eq!(s.index.len(), 2);
        });
        for alias in ["a1", "a2"] {
            let file = dir
                .path()
                .join("manifests/registry.ollama.ai/library")
                .join(alias);
            assert!(file.join("latest").is_file(), "{alias} materialized");
        }
        // An out-of-step commit is refused, not applied.
        let out_of_step = super::Command::ApplyRemote(crate::log::RemoteCommit {
            first_seq: 9,
            payloads: vec![active(9)],
        });
        let res = runtime.block_on(registry.execute(out_of_step, super::Origin::system("test")));
        assert!(res.is_err(), "{res:?}");
        registry.read(|s| assert_eq!(s.index.last_seq(), 2));
        drop(registry);
        writer.join();
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
