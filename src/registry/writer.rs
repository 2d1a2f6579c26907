//! The writer thread: takes every waiting command as one group, plans it
//! against a draft of the index, appends it to the log, applies it, and
//! hands it to the finisher.

use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

use crate::command::{plan_batch, plan_delete, plan_put, CommandError, Origin, PutOutcome};
use crate::event::{now_rfc3339, Event};
use crate::feed::Published;
use crate::index::{AliasName, AliasView, DepKey, Draft, Models};
use crate::log::SharedLog;
use crate::materializer::{AliasFile, Materializer};
use crate::progress::Progress;
use crate::reconcile;

use super::finisher::{file_jobs, report_failures, GroupTimes, Job};
use super::{Command, RegistryError, Reply, Request, View, MAX_GROUP};

/// Hands each commit another writer appended to the shared log to the
/// writer, in order, until the log or the registry stops.
pub(super) fn forward_remote_commits(
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

/// The state owned by the writer thread.
pub(super) struct Writer {
    /// In a fleet, the node records: validation consults their models.
    pub(super) nodes: Arc<std::sync::OnceLock<Arc<crate::fleet::nodes::NodeTable>>>,
    /// In a fleet, the exact aliases that other nodes' fleet-wide events
    /// applied since the last look touched: this node reads its store there next
    /// ([`Writer::observe_touched`]).
    pub(super) touched: Vec<crate::name::ModelName>,
    pub(super) metrics: Arc<crate::metrics::Metrics>,
    pub(super) log: SharedLog,
    /// Written only by this thread, and only with durable events.
    pub(super) shared: Arc<RwLock<View>>,
    /// For start-up and reconcile work done on this thread itself.
    pub(super) materializer: Materializer,
    /// Durable, applied groups go to the finisher thread, which writes their
    /// files, broadcasts their events and replies, in order; meanwhile this
    /// thread plans and fsyncs the next group (a two-stage pipeline).
    pub(super) finisher: std::sync::mpsc::SyncSender<Job>,
    pub(super) finisher_thread: Option<JoinHandle<()>>,
    pub(super) snapshot_every: u64,
    pub(super) since_snapshot: u64,
    /// The journal was found changed under the server ([`journal::Error::Tampered`])
    /// and that was logged: later refusals are not logged again at error level.
    pub(super) tamper_reported: bool,
    /// A reconcile's events could not be appended (the shared log was
    /// unavailable): the store is reconciled again after the next commit
    /// that succeeds, so that no observation is lost.
    pub(super) reconcile_owed: bool,
    /// The log took or delivered a commit while this group was processed.
    pub(super) log_worked: bool,
}

pub(super) type ReplySender = oneshot::Sender<Result<Reply, RegistryError>>;

/// Times a group is validated again after another node appended to the
/// shared log first; then it fails with [`crate::log::Error::Conflict`] (503).
pub(super) const MAX_CONFLICTS: usize = 32;

/// Pairs each request of a group with its planned outcome.
fn awaiting(
    group: Vec<Request>,
    outcomes: Vec<Result<Planned, RegistryError>>,
) -> Vec<AwaitingCommit> {
    group
        .into_iter()
        .zip(outcomes)
        .map(|(request, outcome)| AwaitingCommit {
            reply: request.reply,
            outcome,
        })
        .collect()
}

/// A planned request waiting for the group's commit.
pub(super) struct AwaitingCommit {
    reply: oneshot::Sender<Result<Reply, RegistryError>>,
    outcome: Result<Planned, RegistryError>,
}

pub(super) enum Planned {
    Put(PutOutcome, bool),
    Deleted,
    Batch(Vec<PutOutcome>),
    Reconcile,
    Snapshot,
}

impl Writer {
    pub(super) fn run(mut self, mut receiver: mpsc::Receiver<Request>) {
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
    pub(super) fn drain(&self) {
        let (done, wait) = std::sync::mpsc::channel();
        if self.finisher.send(Job::Barrier(done)).is_ok() {
            let _ = wait.recv();
        }
    }

    fn process(&mut self, group: Vec<Request>) {
        self.log_worked = false;
        // A reconcile reads the whole store; it runs alone, after the rest.
        let (others, reconciles): (Vec<Request>, Vec<Request>) = group.into_iter().partition(|r| {
            !matches!(
                r.command,
                Command::Reconcile | Command::ReconcileNames(_) | Command::ApplyRemote(_)
            )
        });
        self.process_group(others);
        let mut reconciled = false;
        for request in reconciles {
            reconciled |= matches!(request.command, Command::Reconcile);
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
        if self.reconcile_owed && !reconciled && self.log_worked {
            self.reconcile_owed = false;
            tracing::info!("the event log is back: reconciling the store with it");
            if let Err(e) = self.reconcile_scoped(&Origin::system("reconcile"), None) {
                tracing::warn!("reconcile failed: {e:#}");
            }
        }
        self.observe_touched();
    }

    /// In a fleet, after other nodes' fleet-wide events: reads this node's
    /// store at the aliases they touched and appends, as this node's
    /// observations, where it disagrees with the state they presume (SPEC
    /// §8). Nothing when it agrees, and nothing on a single host. This node's
    /// own changes need no look: they were planned against its own models,
    /// and a file in the way is found by the finisher.
    fn observe_touched(&mut self) {
        // A look can catch up other nodes' commits, which touch more: a few
        // rounds, and the rest waits for the next group.
        for _ in 0..4 {
            if self.touched.is_empty() {
                return;
            }
            let mut names = std::mem::take(&mut self.touched);
            names.sort_by(|a, b| a.key_str().cmp(b.key_str()));
            names.dedup_by(|a, b| a.key_str() == b.key_str());
            if let Err(e) = self.reconcile_scoped(&Origin::system("watcher"), Some(&names)) {
                tracing::warn!("checking the store after a fleet change failed: {e:#}");
            }
        }
    }

    /// Notes the exact aliases fleet-wide events touched, for
    /// [`Writer::observe_touched`]: none on a single host.
    fn note_touched(&mut self, events: &[Event]) {
        if events.is_empty() || self.read(|s| s.index.node().is_none()) {
            return;
        }
        // A prefix alias has no path: a look at its target re-derives it.
        let names = events
            .iter()
            .filter(|e| e.node.is_none())
            .filter_map(|e| match e.prefix_matching {
                false => Some(&e.alias),
                true => e.target.as_ref(),
            })
            .filter_map(|name| crate::name::ModelName::parse(name).ok());
        self.touched.extend(names);
    }

    fn process_group(&mut self, mut group: Vec<Request>) {
        if group.is_empty() {
            return;
        }
        let taken = std::time::Instant::now();
        let time = now_rfc3339();
        let mut tries = 0;
        let mut planned;
        let (events, json, outcomes) = loop {
            let (events, outcomes) = self.plan_group(&group, &time);
            planned = std::time::Instant::now();
            if group.len() > 1 && self.fits(&events) < events.len() {
                // Over what one commit of the log may hold: two groups.
                let rest = group.split_off(group.len() / 2);
                self.process_group(group);
                self.process_group(rest);
                return;
            }
            match self.append(&events) {
                Ok(json) => break (events, json, outcomes),
                // Another node appended first: apply what it wrote, then
                // validate the group again against the new state.
                Err(crate::log::Error::Conflict) if tries < MAX_CONFLICTS => {
                    tries += 1;
                    if let Err(e) = self.catch_up_remote() {
                        self.fail_group(e, awaiting(group, outcomes), events.len());
                        return;
                    }
                }
                Err(e) => {
                    self.fail_group(e, awaiting(group, outcomes), events.len());
                    return;
                }
            }
        };
        let durable = std::time::Instant::now();
        let prior = self.apply(&events, None);
        let replies = awaiting(group, outcomes)
            .into_iter()
            .map(|p| {
                let reply = match p.outcome {
                    Err(e) => Err(e),
                    Ok(planned) => self.reply_for(planned),
                };
                (p.reply, reply)
            })
            .collect();
        let times = GroupTimes {
            taken,
            planned,
            durable,
            handed: durable,
        };
        self.finish(published(events, json), prior, replies, times);
        self.maybe_snapshot();
    }

    /// Plans every request of a group against one draft of the index, a
    /// failed one rolled back alone: the group's events and each outcome.
    fn plan_group(
        &self,
        group: &[Request],
        time: &str,
    ) -> (Vec<Event>, Vec<Result<Planned, RegistryError>>) {
        let inventory = self.nodes.get().map(|nodes| nodes.inventory());
        let guard = self.shared.read().unwrap_or_else(|e| e.into_inner());
        let mut draft = Draft::new(&guard.index, self.log.last_seq() + 1);
        if let Some(inventory) = &inventory {
            draft.set_inventory(inventory);
        }
        let mut outcomes = Vec::with_capacity(group.len());
        for request in group {
            let checkpoint = draft.checkpoint();
            let outcome = plan(&mut draft, &guard.models, request, time);
            if outcome.is_err() {
                draft.rollback(checkpoint);
            }
            outcomes.push(outcome.map_err(RegistryError::from));
        }
        (draft.into_events(), outcomes)
    }

    /// Hands an applied group to the finisher.
    fn finish(
        &self,
        events: Vec<Published>,
        prior: Vec<Option<Arc<str>>>,
        replies: Vec<(ReplySender, Result<Reply, RegistryError>)>,
        mut times: GroupTimes,
    ) {
        times.handed = std::time::Instant::now();
        let job = Job::Finish {
            events,
            prior,
            replies,
            times,
        };
        // A full queue makes the writer wait for the finisher: the timeline
        // says how long.
        let sent = match self.finisher.try_send(job) {
            Ok(()) => true,
            Err(std::sync::mpsc::TrySendError::Full(job)) => {
                let waited = std::time::Instant::now();
                let sent = self.finisher.send(job).is_ok();
                tracing::debug!(
                    target: super::finisher::TIMELINE,
                    waited_us = waited.elapsed().as_micros(),
                    "the writer waited for the finisher's queue"
                );
                sent
            }
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => false,
        };
        if !sent {
            tracing::error!("the finisher thread is gone; replies are lost");
        }
    }

    /// Answers every request of a group whose append failed.
    fn fail_group(&mut self, e: crate::log::Error, pending: Vec<AwaitingCommit>, n_events: usize) {
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
            // The shared log's loss and return are logged once where they
            // are seen (the fleet log's follower), not once per write.
            () if matches!(
                e,
                crate::log::Error::Unavailable(_) | crate::log::Error::Conflict
            ) =>
            {
                tracing::debug!("write refused, {n_events} events not applied: {e}");
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
        let entry_of = |shared: &View, dep: &DepKey| shared.index.entry(dep).cloned();
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

    pub(super) fn read<T>(&self, f: impl FnOnce(&View) -> T) -> T {
        let guard = self.shared.read().unwrap_or_else(|e| e.into_inner());
        f(&guard)
    }

    /// How many of `events`, from the first, fit in one commit of the log
    /// (all of them if it has no limit; at least one).
    fn fits(&self, events: &[Event]) -> usize {
        let Some(limit) = self.log.max_commit_bytes() else {
            return events.len();
        };
        let mut total = 0;
        let over = events.iter().position(|event| {
            total += event.encode().len() + 4;
            total > limit
        });
        over.map_or(events.len(), |n| n.max(1))
    }

    /// Makes events durable in the log (nothing is applied). Returns each
    /// event's JSON, as the feed sends it (serialized once, for both).
    fn append(&mut self, events: &[Event]) -> Result<Vec<bytes::Bytes>, crate::log::Error> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let payloads: Vec<Vec<u8>> = events.iter().map(Event::encode).collect();
        let json = payloads
            .iter()
            .map(|payload| bytes::Bytes::copy_from_slice(Event::encoded_json(payload)))
            .collect();
        let started = std::time::Instant::now();
        let first = self.log.append(payloads).inspect_err(|e| {
            if !matches!(e, crate::log::Error::Conflict) {
                self.metrics.observe_commit_failure();
            }
        })?;
        self.metrics.observe_commit(started.elapsed());
        self.log_worked = true;
        if first != events[0].seq {
            tracing::error!(
                expected = events[0].seq,
                got = first,
                "journal seq out of step with the index"
            );
        }
        Ok(json)
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
    pub(super) fn reconcile_scoped(
        &mut self,
        origin: &Origin,
        names: Option<&[crate::name::ModelName]>,
    ) -> anyhow::Result<usize> {
        // Files of groups still in the finisher must be there before reading.
        self.drain();
        let mut observation = {
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
        if !observation.stale.is_empty() {
            let mut guard = self.shared.write().unwrap_or_else(|e| e.into_inner());
            for (name, _) in &observation.stale {
                guard.index.clear_tombstone(&name.key());
            }
        }
        // A reconcile of a big store may be more than one commit of the log
        // holds: it is then appended in parts, each planned again from the
        // index the parts before left, without the aliases they brought in
        // line (one event per alias: a repair leaves the index as it was, so
        // planning it again would repeat it).
        let mut tries = 0;
        let mut n_events = 0;
        loop {
            let mut events = {
                let guard = self.shared.read().unwrap_or_else(|e| e.into_inner());
                let mut draft = Draft::new(&guard.index, self.log.last_seq() + 1);
                reconcile::plan(&mut draft, &observation, origin, &time);
                let mut events = draft.into_events();
                // In a fleet, what this node found in its store is its own state.
                if let Some(node) = guard.index.node() {
                    for event in &mut events {
                        event.node = Some(node.to_string());
                    }
                }
                events
            };
            let fits = self.fits(&events);
            let last_part = fits == events.len();
            events.truncate(fits);
            match self.append(&events) {
                Ok(json) => {
                    // The models change with the first part: the finisher
                    // writes each part's files from them. (One part, the
                    // usual case: models and events change in one step.)
                    let models = match (n_events == 0, last_part) {
                        (false, _) => None,
                        (true, true) => Some(std::mem::take(&mut observation.models)),
                        // The parts after are planned with them still.
                        (true, false) => Some(observation.models.clone()),
                    };
                    if !last_part {
                        for event in &events {
                            if let Ok(alias) = AliasName::of_event(event) {
                                observation.path_states.remove(&alias.key());
                            }
                        }
                    }
                    let prior = self.apply(&events, models);
                    n_events += events.len();
                    self.finish(
                        published(events, json),
                        prior,
                        Vec::new(),
                        GroupTimes::now(),
                    );
                    if last_part {
                        break;
                    }
                }
                Err(crate::log::Error::Conflict) if tries < MAX_CONFLICTS => {
                    tries += 1;
                    self.catch_up_remote()?;
                }
                Err(crate::log::Error::Unavailable(why)) => {
                    // The shared log is down: the models are known now, the
                    // events wait. The registry reconciles again when the log
                    // is back (`NatsLog::reconnected`), so nothing is lost.
                    tracing::debug!(
                        events = events.len(),
                        "observations wait for the event log: {why}"
                    );
                    self.apply(&[], Some(std::mem::take(&mut observation.models)));
                    self.reconcile_owed = true;
                    return Ok(n_events);
                }
                Err(e) => return Err(e.into()),
            }
        }
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
                        just_created: false,
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
    /// hands it to the finisher like one of this writer's own. A commit
    /// already applied (delivered twice) is skipped; one past a gap makes
    /// the writer read what is missing from the log first.
    fn apply_remote(&mut self, commit: crate::log::RemoteCommit) -> Result<Reply, RegistryError> {
        let expected = self.read(|s| s.index.last_seq()) + 1;
        if commit.first_seq + (commit.payloads.len() as u64) <= expected {
            return Ok(Reply::Reconciled(0)); // Applied already: no wait.
        }
        // Files of earlier groups first, as for a reconcile.
        self.drain();
        if commit.first_seq > expected {
            self.catch_up_remote()?;
        }
        let n_events = self.apply_remote_commit(commit)?;
        Ok(Reply::Reconciled(n_events))
    }

    /// Applies every commit other writers appended that is not applied here
    /// yet, read from the shared log now. Returns how many events.
    fn catch_up_remote(&mut self) -> Result<usize, crate::log::Error> {
        let mut n_events = 0;
        for commit in self.log.fetch_remote()? {
            n_events += self.apply_remote_commit(commit)?;
        }
        Ok(n_events)
    }

    /// Stores a remote commit in the local replica and applies it (see
    /// [`Writer::apply_remote`]); 0 events if it was applied before.
    fn apply_remote_commit(
        &mut self,
        commit: crate::log::RemoteCommit,
    ) -> Result<usize, crate::log::Error> {
        let expected = self.read(|s| s.index.last_seq()) + 1;
        let end = commit.first_seq + commit.payloads.len() as u64;
        if end <= expected {
            return Ok(0);
        }
        if commit.first_seq != expected {
            tracing::error!(
                expected,
                got = commit.first_seq,
                "a commit from the shared log is out of step with the index; not applied"
            );
            return Err(crate::log::Error::Unavailable(format!(
                "a commit from the shared log starts at seq {}, while this node is at seq {}",
                commit.first_seq,
                expected - 1
            )));
        }
        self.log.accept_remote(&commit)?;
        self.log_worked = true;
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
        self.note_touched(&events);
        let events = events.into_iter().map(Published::new).collect();
        self.finish(events, prior, Vec::new(), GroupTimes::now());
        self.maybe_snapshot();
        Ok(n_events)
    }

    fn write_snapshot(&mut self) -> Result<u64, crate::log::Error> {
        let (seq, data) = self.read(|s| (s.index.last_seq(), crate::snapshot::encode(&s.index)));
        self.log.write_snapshot(seq, &data)?;
        self.since_snapshot = 0;
        tracing::info!(seq, bytes = data.len(), "snapshot written");
        Ok(seq)
    }
}

pub(super) fn plan<'a>(
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

/// Events with the JSON their log payloads were made of (see
/// `Writer::append`), for the feed.
fn published(events: Vec<Event>, json: Vec<bytes::Bytes>) -> Vec<Published> {
    events
        .into_iter()
        .zip(json)
        .map(|(event, json)| Published::with_json(event, json))
        .collect()
}
