//! The finisher thread, the pipeline's second stage: writes each group's
//! alias files (without holding the index's lock), broadcasts its events and
//! replies, in group order; retries the files the store refused.

use std::sync::{Arc, RwLock};
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use crate::command::Origin;
use crate::event::EventType;
use crate::feed::publisher::Publisher;
use crate::feed::Published;
use crate::index::{AliasName, AliasView, ChainEnd, ChainEnds};
use crate::materializer::{AliasFile, FileJob, Materializer, Retries};

use super::file_writers::{FileWriters, Synced};
use super::writer::ReplySender;
use super::{Command, RegistryError, Reply, Request, View};

/// Work for the finisher thread.
pub(super) enum Job {
    /// Materialize these applied events, broadcast them, then send the replies.
    Finish {
        /// The events, serialized for the feed.
        events: Vec<Published>,
        /// Each event's alias digest before the group (still aliasd's own).
        prior: Vec<Option<Arc<str>>>,
        replies: Vec<(ReplySender, Result<Reply, RegistryError>)>,
        /// When the writer reached each step of the group, for its timeline.
        times: GroupTimes,
    },
    /// Try these alias files again until they match the index.
    Retry(Vec<AliasFile>),
    /// Answer once every job before this one is done.
    Barrier(std::sync::mpsc::Sender<()>),
}

/// When the writer took a group, had it planned, had it durable in the log,
/// and had handed it to the finisher. With the finisher's own steps they make
/// the group's timeline, logged at debug with target [`TIMELINE`].
#[derive(Debug, Clone, Copy)]
pub(super) struct GroupTimes {
    pub(super) taken: Instant,
    pub(super) planned: Instant,
    pub(super) durable: Instant,
    pub(super) handed: Instant,
}

impl GroupTimes {
    /// Every step at once: a group with no timeline of its own (a
    /// reconcile's, another node's).
    pub(super) fn now() -> GroupTimes {
        let now = Instant::now();
        GroupTimes {
            taken: now,
            planned: now,
            durable: now,
            handed: now,
        }
    }
}

/// The log target of each group's timeline (`ALIASD_LOG=aliasd::timeline=debug,info`):
/// where a slow reply waited, in the writer or in the finisher.
pub const TIMELINE: &str = "aliasd::timeline";

/// The second pipeline stage: files, broadcast, replies.
pub(super) struct Finisher {
    pub(super) metrics: Arc<crate::metrics::Metrics>,
    pub(super) shared: Arc<RwLock<View>>,
    pub(super) materializer: Materializer,
    pub(super) publisher: Publisher,
    /// To the writer: alias paths found foreign while writing are looked at
    /// again as the watcher would (their aliases become `shadowed`). Weak, so
    /// that the writer still stops once every handle is dropped.
    pub(super) commands: mpsc::WeakSender<Request>,
}

impl Finisher {
    pub(super) fn run(self, jobs: std::sync::mpsc::Receiver<Job>) {
        use std::sync::mpsc::RecvTimeoutError;
        let mut retries = Retries::default();
        let mut files = FileWriters::new(self.materializer.clone());
        // A job taken from the queue while gathering groups, to do next.
        let mut held: Option<Job> = None;
        loop {
            let job = match held.take() {
                Some(job) => Ok(job),
                None => match retries.due_in(Instant::now()) {
                    None => jobs.recv().map_err(|_| RecvTimeoutError::Disconnected),
                    // Due: before the next job, so a steady stream of jobs
                    // cannot put retries off.
                    Some(wait) if wait.is_zero() => Err(RecvTimeoutError::Timeout),
                    Some(wait) => jobs.recv_timeout(wait),
                },
            };
            let job = match job {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout) => {
                    self.retry(&mut files, &mut retries);
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            match job {
                Job::Finish {
                    mut events,
                    mut prior,
                    mut replies,
                    times,
                } => {
                    let started = Instant::now();
                    // The groups that queued while the last was finished are
                    // finished with this one: one set of files (spread over
                    // threads when many) in group order, and each group's
                    // broadcast and replies as soon as its own files (and
                    // those of the groups before it) are written, not after
                    // every group's. Under load the writer commits faster than
                    // files are written, so this is where a group waited.
                    let mut groups = vec![Finishing {
                        times,
                        replies: replies.len(),
                        events: events.len(),
                        replied_at: started,
                    }];
                    while let Ok(next) = jobs.try_recv() {
                        match next {
                            Job::Finish {
                                events: more,
                                prior: more_prior,
                                replies: more_replies,
                                times,
                            } => {
                                groups.push(Finishing {
                                    times,
                                    replies: more_replies.len(),
                                    events: more.len(),
                                    replied_at: started,
                                });
                                events.extend(more);
                                prior.extend(more_prior);
                                replies.extend(more_replies);
                            }
                            other => {
                                held = Some(other);
                                break;
                            }
                        }
                    }
                    let (work, files_by_group) = alias_files(&events, &prior, &groups);
                    let file_jobs = file_jobs(&self.shared, &work);
                    // Each group's events, to broadcast once its files are there.
                    let mut events_by_group = Vec::with_capacity(groups.len());
                    for group in groups.iter().rev() {
                        events_by_group.push(events.split_off(events.len() - group.events));
                    }
                    let mut replies = replies.into_iter();
                    let mut failed_or_foreign = |synced: Synced| {
                        if !synced.failed.is_empty() {
                            retries.add(report_failures(synced.failed), Instant::now());
                            self.metrics.set_alias_files_pending(retries.len());
                        }
                        self.look_again(synced.foreign);
                    };
                    let synced = files.sync(file_jobs, &files_by_group, |g, synced| {
                        // What went wrong with this group's files is logged,
                        // counted and queued for a retry before its replies.
                        failed_or_foreign(synced);
                        let group_events = events_by_group.pop().unwrap_or_default();
                        for published in &group_events {
                            self.metrics.observe_event(published.event.kind);
                        }
                        // A group of unchanged puts has nothing to broadcast:
                        // the publisher is not woken for it.
                        if !group_events.is_empty() {
                            self.publisher.publish(group_events);
                        }
                        for (sender, reply) in replies.by_ref().take(groups[g].replies) {
                            let _ = sender.send(reply);
                        }
                        groups[g].replied_at = Instant::now();
                    });
                    failed_or_foreign(synced);
                    if tracing::enabled!(target: TIMELINE, tracing::Level::DEBUG) {
                        for group in &groups {
                            let times = group.times;
                            let us = |at: Instant| at.duration_since(times.taken).as_micros();
                            tracing::debug!(
                                target: TIMELINE,
                                replies = group.replies,
                                finished_with = groups.len(),
                                planned_us = us(times.planned),
                                durable_us = us(times.durable),
                                handed_us = us(times.handed),
                                finisher_took_us = us(started),
                                replied_us = us(group.replied_at),
                                "group"
                            );
                        }
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
    fn retry(&self, writers: &mut FileWriters, retries: &mut Retries) {
        let files = retries.take();
        let tried = files.len();
        let synced = writers.sync(file_jobs(&self.shared, &files), &[], |_, _| {});
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
pub(super) fn report_failures(failed: Vec<(AliasFile, std::io::Error)>) -> Vec<AliasFile> {
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

/// A group being finished: its timeline, how many replies and events it
/// has, and when its replies went.
struct Finishing {
    times: GroupTimes,
    replies: usize,
    events: usize,
    replied_at: Instant,
}

/// The alias files these events touched, in the order of their first event,
/// and how many of them the groups up to each one need (the files of group
/// `g` are among the first `files_by_group[g]`).
fn alias_files(
    events: &[Published],
    prior: &[Option<Arc<str>>],
    groups: &[Finishing],
) -> (Vec<AliasFile>, Vec<usize>) {
    // One file per alias (the index holds its final state), with every
    // digest these events say was aliasd's at its path: when several groups
    // are finished at once, the file may still be the one from before the
    // first of them.
    let mut at: std::collections::HashMap<String, usize> = Default::default();
    let mut work: Vec<AliasFile> = Vec::new();
    let mut files_by_group = Vec::with_capacity(groups.len());
    let mut group_ends = groups
        .iter()
        .scan(0, |end, group| {
            *end += group.events;
            Some(*end)
        })
        .peekable();
    for (i, (Published { event, .. }, prior)) in events.iter().zip(prior).enumerate() {
        while group_ends.next_if(|end| *end <= i).is_some() {
            files_by_group.push(work.len());
        }
        let Ok(AliasName::Exact(name)) = AliasName::of_event(event) else {
            continue;
        };
        let recorded = event.digest.as_deref().map(Arc::<str>::from);
        let i = *at.entry(name.key()).or_insert_with(|| {
            work.push(AliasFile {
                name: name.clone(),
                ours: Vec::new(),
                just_created: event.kind == EventType::AliasCreated && prior.is_none(),
            });
            work.len() - 1
        });
        let file = &mut work[i];
        for digest in prior.iter().cloned().chain(recorded) {
            if !file.ours.contains(&digest) {
                file.ours.push(digest);
            }
        }
        // The path of the alias's last event, in its spelling.
        file.name = name;
    }
    files_by_group.resize(groups.len(), work.len());
    (work, files_by_group)
}

/// What each of these alias files must become, copied out of the index
/// under its read lock, which is let go before any file is touched: a
/// writer waiting for the lock would otherwise make every reader wait for
/// the file system. Each file's model is found with one memo that walks
/// each chain once (a chain of n re-pointed costs n, not n squared).
pub(super) fn file_jobs(shared: &RwLock<View>, work: &[AliasFile]) -> Vec<FileJob> {
    let guard = shared.read().unwrap_or_else(|e| e.into_inner());
    let mut ends = ChainEnds::new(&guard.models);
    work.iter()
        .map(|file| {
            let entry = guard.index.exact(file.name.key_str());
            let resolved = entry.and_then(|entry| match ends.end_of(&guard.index, &entry.target) {
                ChainEnd::Model(model) => Some((model.bytes.clone(), model.digest.clone())),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn group(events: usize) -> Finishing {
        Finishing {
            times: GroupTimes::now(),
            replies: 1,
            events,
            replied_at: Instant::now(),
        }
    }

    #[test]
    fn each_group_waits_for_the_files_of_its_events_and_of_the_groups_before() {
        let event = |seq: u64, alias: &str| {
            let mut event = crate::event::created_for_test(seq, "llama3");
            event.alias = alias.into();
            Published::new(event)
        };
        // Group 0: a, b; group 1: nothing (an unchanged put); group 2: b
        // again (its file is b's, already among the first two), then c.
        let events = vec![event(1, "a"), event(2, "b"), event(3, "b"), event(4, "c")];
        let prior = vec![None; events.len()];
        let groups = [group(2), group(0), group(2)];
        let (work, ready) = alias_files(&events, &prior, &groups);
        let names: Vec<String> = work.iter().map(|f| f.name.key()).collect();
        assert_eq!(
            names,
            [
                "registry.ollama.ai/library/a:latest",
                "registry.ollama.ai/library/b:latest",
                "registry.ollama.ai/library/c:latest"
            ]
        );
        assert_eq!(ready, vec![2, 2, 3]);
        // Created here with nothing of aliasd's there before: made without a
        // look first. An alias updated, or created over a file aliasd wrote
        // (its digest before the group), is looked at first.
        assert!(work.iter().all(|file| file.just_created));
        let mut updated = event(5, "d");
        updated.event.kind = EventType::AliasUpdated;
        let events = vec![updated, event(6, "e"), event(7, "f")];
        let prior = vec![None, Some(Arc::from("sha256:before")), None];
        let (work, _) = alias_files(&events, &prior, &[group(3)]);
        let just_created: Vec<bool> = work.iter().map(|f| f.just_created).collect();
        assert_eq!(just_created, [false, false, true]);
        // No events at all: every group is ready at once.
        let (work, ready) = alias_files(&[], &[], &[group(0), group(0)]);
        assert!(work.is_empty());
        assert_eq!(ready, vec![0, 0]);
    }
}
