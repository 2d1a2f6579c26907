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

mod file_writers;
mod finisher;
#[cfg(test)]
mod fleet_tests;
mod replay;
mod writer;

use finisher::Finisher;
pub use replay::{gather_alias_seqs, index_at, load_index, TimeTravelError};
use writer::{forward_remote_commits, Writer};

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

use tokio::sync::{broadcast, mpsc, oneshot};

use crate::command::{BatchOp, CommandError, DeleteAlias, Origin, PutAlias};
use crate::event::EventType;
use crate::feed::publisher::Publisher;
use crate::feed::LiveBatch;
use crate::index::{AliasEntry, Index, Models};
use crate::log::{SharedLog, Snapshot};
use crate::materializer::{FreshFiles, Materializer};
use crate::store::Store;

/// Commands taken into one group commit at most.
const MAX_GROUP: usize = 512;

/// What readers see: the index and the models, always consistent with each other.
#[derive(Debug, Default)]
pub struct View {
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

pub(crate) struct Request {
    pub(super) command: Command,
    pub(super) origin: Origin,
    pub(super) reply: oneshot::Sender<Result<Reply, RegistryError>>,
}

/// A cheap handle to the registry: send commands, read state, subscribe.
#[derive(Clone)]
pub struct Registry {
    commands: mpsc::Sender<Request>,
    shared: Arc<RwLock<View>>,
    events: broadcast::Sender<Arc<LiveBatch>>,
    /// Alias files written into new directories, until the watcher looked.
    fresh: Arc<FreshFiles>,
    log: SharedLog,
    metrics: Arc<crate::metrics::Metrics>,
    store: Store,
    /// The webhook manager, installed once the server knows its address.
    webhooks: Arc<std::sync::OnceLock<crate::webhooks::Webhooks>>,
    /// In a fleet, the node records (installed by `fleet::nodes::start`);
    /// shared with the writer, whose validation consults them.
    nodes: Arc<std::sync::OnceLock<Arc<crate::fleet::nodes::NodeTable>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

/// Gathers, on a thread of its own, the seqs per alias of the events up to
/// `upto` (those the start-up snapshot covered, which replay did not apply)
/// and installs them in the index; until then `history?alias=` reads the
/// whole journal, as it would without them.
fn gather_history_in_background(
    log: SharedLog,
    shared: Arc<RwLock<View>>,
    upto: u64,
) -> anyhow::Result<()> {
    use anyhow::Context;
    std::thread::Builder::new()
        .name("aliasd-history".into())
        .spawn(move || {
            let started = std::time::Instant::now();
            match gather_alias_seqs(&*log, upto) {
                Ok(seqs) => {
                    tracing::info!(
                        events = seqs.events(),
                        aliases = seqs.aliases(),
                        seconds = %format!("{:.2}", started.elapsed().as_secs_f64()),
                        "history index built"
                    );
                    let seqs = Arc::new(seqs);
                    shared
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .index
                        .install_history_base(seqs, upto);
                }
                Err(e) => tracing::warn!(
                    "cannot index the history of each alias ({e:#}); history by alias reads the whole journal"
                ),
            }
        })
        .context("starting the thread that indexes history")?;
    Ok(())
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
        Registry::start_with(config, |log| Ok(Arc::new(log)))
    }

    /// [`Registry::start`] with the log made from the opened journal by
    /// `make_log` (a fleet's log wraps it as its replica and catches it up).
    ///
    /// # Errors
    ///
    /// As [`Registry::start`], or `make_log`'s.
    pub fn start_with(
        config: RegistryConfig,
        make_log: impl FnOnce(crate::log::file::FileLog) -> anyhow::Result<SharedLog>,
    ) -> anyhow::Result<(Registry, WriterThread)> {
        use anyhow::Context;
        let store = Store::new(&config.models_dir);
        store
            .ensure_layout()
            .with_context(|| format!("creating model store {}", config.models_dir.display()))?;
        Materializer::new(store.clone(), Arc::default())
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
        let log = make_log(opened.log)?;
        Registry::start_on(store, &config, log, opened.snapshot)
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
        let history_gap = index.history_gap();
        let shared = Arc::new(RwLock::new(View {
            index,
            models: Models::default(),
        }));
        if let Some(upto) = history_gap {
            gather_history_in_background(log.clone(), shared.clone(), upto)?;
        }
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let (commands, receiver) = mpsc::channel(1024);
        let fresh = Arc::new(FreshFiles::default());
        let finisher = Finisher {
            commands: commands.downgrade(),
            metrics: metrics.clone(),
            shared: shared.clone(),
            materializer: Materializer::new(store.clone(), fresh.clone()),
            publisher: Publisher::start(events.clone()).context("starting the publisher thread")?,
        };
        let (jobs, job_receiver) = std::sync::mpsc::sync_channel(4);
        let finisher_thread = std::thread::Builder::new()
            .name("aliasd-finisher".into())
            .spawn(move || finisher.run(job_receiver))
            .context("starting the finisher thread")?;
        let nodes: Arc<std::sync::OnceLock<_>> = Arc::default();
        let mut writer = Writer {
            nodes: nodes.clone(),
            touched: Vec::new(),
            metrics: metrics.clone(),
            log: log.clone(),
            shared: shared.clone(),
            materializer: Materializer::new(store.clone(), fresh.clone()),
            finisher: jobs,
            finisher_thread: Some(finisher_thread),
            snapshot_every: config.snapshot_every.max(1),
            since_snapshot: 0,
            tamper_reported: false,
            reconcile_owed: false,
            log_worked: false,
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
            fresh,
            commands,
            shared,
            events,
            log,
            metrics,
            store,
            webhooks: Arc::default(),
            nodes,
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
    pub fn read<T>(&self, f: impl FnOnce(&View) -> T) -> T {
        let guard = self.shared.read().unwrap_or_else(|e| e.into_inner());
        f(&guard)
    }

    /// How far the index has applied the log, for a feed's catch-up
    /// (`crate::feed::AppliedSeq`).
    pub fn applied_seq(&self) -> crate::feed::AppliedSeq {
        let shared = self.shared.clone();
        Arc::new(move || {
            shared
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .index
                .last_seq()
        })
    }

    /// Subscribes to committed events.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LiveBatch>> {
        self.events.subscribe()
    }

    /// The event log, for reading history (the writer alone appends).
    pub fn log(&self) -> &SharedLog {
        &self.log
    }

    /// Alias files written into directories the watcher has not looked at yet.
    pub fn fresh_files(&self) -> &FreshFiles {
        &self.fresh
    }

    /// The model store (for reading only; the writer alone writes to it).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The webhook manager, if this server runs one.
    pub fn webhooks(&self) -> Option<&crate::webhooks::Webhooks> {
        self.webhooks.get()
    }

    /// Installs the webhook manager (once; a second one is ignored).
    pub fn install_webhooks(&self, webhooks: crate::webhooks::Webhooks) {
        let _ = self.webhooks.set(webhooks);
    }

    /// The fleet's node records, in a fleet.
    pub fn nodes(&self) -> Option<&Arc<crate::fleet::nodes::NodeTable>> {
        self.nodes.get()
    }

    /// Installs the fleet's node records (once; a second table is ignored):
    /// from then on validation consults the other live nodes' models.
    pub fn install_nodes(&self, nodes: Arc<crate::fleet::nodes::NodeTable>) {
        let _ = self.nodes.set(nodes);
    }

    /// The counters shared with the writer.
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
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
    use crate::event::Event;

    fn created(seq: u64) -> Event {
        crate::event::created_for_test(seq, "m1")
    }

    /// A store holding one model, `m1`, and the registry settings for it
    /// (with a log of the test's own, the journal directory is unused).
    fn store_with_model_m1(dir: &std::path::Path) -> (crate::store::Store, super::RegistryConfig) {
        let model_dir = dir.join("manifests/registry.ollama.ai/library/m1");
        std::fs::create_dir_all(&model_dir).unwrap();
        std::fs::write(
            model_dir.join("latest"),
            br#"{"schemaVersion":2,"layers":[]}"#,
        )
        .unwrap();
        let store = crate::store::Store::new(dir);
        store.ensure_layout().unwrap();
        let config = super::RegistryConfig {
            models_dir: dir.to_path_buf(),
            journal_dir: dir.join("unused"),
            retain: None,
            segment_bytes: 1 << 20,
            snapshot_every: 1_000,
            io: None,
        };
        (store, config)
    }

    /// A commit another writer appended to a shared log reaches the index,
    /// the store and subscribers through the writer, as its own would.
    #[test]
    fn a_remote_commit_is_applied_materialized_and_published() {
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        let (store, config) = store_with_model_m1(dir.path());
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

    /// A shared log that always answers that another writer appended first.
    #[derive(Debug, Default)]
    struct AlwaysConflict {
        fetches: std::sync::atomic::AtomicUsize,
    }

    impl crate::log::EventLog for AlwaysConflict {
        fn append(&self, _payloads: Vec<Vec<u8>>) -> Result<u64, crate::log::Error> {
            Err(crate::log::Error::Conflict)
        }
        fn last_seq(&self) -> u64 {
            0
        }
        fn first_seq(&self) -> u64 {
            1
        }
        fn read_from(&self, seq: u64) -> Result<Box<dyn crate::log::LogReader>, crate::log::Error> {
            crate::log::memory::MemoryLog::default().read_from(seq)
        }
        fn write_snapshot(&self, _seq: u64, _data: &[u8]) -> Result<(), crate::log::Error> {
            Ok(())
        }
        fn size_bytes(&self) -> u64 {
            0
        }
        fn failed(&self) -> Option<crate::log::Error> {
            None
        }
        fn fetch_remote(&self) -> Result<Vec<crate::log::RemoteCommit>, crate::log::Error> {
            self.fetches
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(Vec::new())
        }
    }

    /// A write that keeps losing the race for the shared log is validated
    /// again after each loss, a bounded number of times, then refused.
    #[test]
    fn a_write_that_keeps_conflicting_is_refused_after_bounded_retries() {
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        let (store, config) = store_with_model_m1(dir.path());
        let log = Arc::new(AlwaysConflict::default());
        let (registry, writer) =
            super::Registry::start_on(store, &config, log.clone(), None).unwrap();
        let put = super::Command::Put(crate::command::PutAlias {
            alias: "a1".into(),
            target: "m1".into(),
            prefix_matching: false,
            if_match: None,
            if_none_match: false,
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let res = runtime.block_on(registry.execute(put, super::Origin::system("test")));
        assert!(
            matches!(
                res,
                Err(super::RegistryError::Storage(crate::log::Error::Conflict))
            ),
            "{res:?}"
        );
        assert_eq!(
            log.fetches.load(std::sync::atomic::Ordering::Relaxed),
            super::writer::MAX_CONFLICTS
        );
        registry.read(|s| assert_eq!(s.index.len(), 0));
        drop(registry);
        writer.join();
    }
}
