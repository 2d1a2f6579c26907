//! The threads that write a group's alias files: the finisher and, for a
//! large group, helpers that live as long as it does. A helper spawned per
//! group started with a fresh heap each time, whose first touch of every page
//! faulted (see benches/README.md, "Sixth pass").

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::Thread;

use crate::materializer::{FileJob, Materializer, Outcome};
use crate::progress::Progress;

/// What making alias files match the index left to do.
#[derive(Debug, Default)]
pub(super) struct Synced {
    /// The files that could not be written or removed, with why.
    pub(super) failed: Vec<(crate::materializer::AliasFile, std::io::Error)>,
    /// Aliases whose path turned out foreign (see `beneath::Foreign`).
    pub(super) foreign: Vec<crate::name::ModelName>,
}

/// Alias files in one group from which their writing reports progress.
const PROGRESS_FROM_FILES: usize = 10_000;

/// Aliases per thread below which a group's files are written by the
/// finisher alone (handing files to a helper costs more than a few files).
const FILES_PER_THREAD: usize = 8;

/// The most threads, the finisher's included, that write one group's files.
const MAX_THREADS: usize = 4;

/// The finisher's helpers: threads started when a group first needs them
/// and kept until the finisher stops (dropping this ends them).
pub(super) struct FileWriters {
    materializer: Materializer,
    /// One inbox per helper started so far.
    helpers: Vec<Sender<Arc<Batch>>>,
    /// The helpers could not all be started (a process limit): no more tries.
    no_more: bool,
}

impl FileWriters {
    /// No helper yet: each is started the first time a group needs it.
    pub(super) fn new(materializer: Materializer) -> FileWriters {
        FileWriters {
            materializer,
            helpers: Vec::new(),
            no_more: false,
        }
    }

    /// Makes these alias files what their jobs say, on this thread and, when
    /// there are many, on helpers, taken in order. `done(g, synced)` is
    /// called on this thread, for each `g` in order, as soon as the first
    /// `ready[g]` files are written (or failed, or found foreign), with the
    /// files that failed or were found foreign since the last call: a
    /// group's replies go once its own files are there, not after every file
    /// of a large merged group. Returns what failed or was found foreign
    /// after the last call.
    pub(super) fn sync(
        &mut self,
        work: Vec<FileJob>,
        ready: &[usize],
        mut done: impl FnMut(usize, Synced),
    ) -> Synced {
        let total = work.len();
        let batch = Arc::new(Batch::new(work));
        // The groups whose files are all done, told in order.
        let mut told = 0;
        let mut tell = |files_done: usize| {
            while told < ready.len() && ready[told] <= files_done {
                done(told, batch.take_outcome());
                told += 1;
            }
        };
        tell(0);
        // Each alias has its own file, so a large group is spread over the
        // cores: most of a file's cost is the kernel creating its directory
        // and inode.
        let mut asked = 0;
        let wanted = self.start_helpers(total);
        self.helpers.retain(|helper| {
            if asked == wanted {
                return true;
            }
            // A helper that is gone (a write panicked on it) is let go; the
            // next group that needs one starts another.
            let alive = helper.send(batch.clone()).is_ok();
            asked += usize::from(alive);
            alive
        });
        // A group this large is a start-up restoring many files: say how far it is.
        let mut progress =
            (total >= PROGRESS_FROM_FILES).then(|| Progress::new("writing alias files", total));
        let mut files_done = 0;
        while batch.take_and_sync(&self.materializer).is_some() {
            files_done = batch.done_in_order(files_done);
            tell(files_done);
            if let Some(progress) = &mut progress {
                progress.reached(batch.taken());
            }
        }
        // Every file is taken: wait for those the helpers are still writing.
        while batch.done.load(Ordering::Acquire) < total {
            std::thread::park();
        }
        tell(total);
        if let Some(mut progress) = progress {
            progress.reached(total);
            progress.finish();
        }
        batch.take_outcome()
    }

    /// Starts the helpers that write a group of `files` files beside the
    /// finisher, if not yet; says how many of them to ask.
    fn start_helpers(&mut self, files: usize) -> usize {
        let wanted = threads_for(files) - 1;
        while self.helpers.len() < wanted && !self.no_more {
            let (inbox, batches) = channel::<Arc<Batch>>();
            let materializer = self.materializer.clone();
            let started = std::thread::Builder::new()
                .name("aliasd-files".into())
                .spawn(move || {
                    for batch in batches {
                        while batch.take_and_sync(&materializer).is_some() {}
                    }
                });
            match started {
                Ok(_) => self.helpers.push(inbox),
                Err(e) => {
                    tracing::warn!("could not start a thread to write alias files ({e}); fewer threads write them");
                    self.no_more = true;
                }
            }
        }
        wanted.min(self.helpers.len())
    }
}

/// How many threads, the finisher's included, write a group of `files` alias files.
fn threads_for(files: usize) -> usize {
    // Asked once: on Linux `available_parallelism` opens and reads cgroup files
    // on every call, a measurable share of the finisher's time per group.
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let cores = *CORES
        .get_or_init(|| std::thread::available_parallelism().map_or(1, std::num::NonZero::get));
    (files / FILES_PER_THREAD).clamp(1, cores.min(MAX_THREADS))
}

/// One group's file jobs, shared by the threads that write them: each takes
/// the next job not yet taken, so files are written about in order and the
/// first groups' are done first.
struct Batch {
    jobs: Vec<FileJob>,
    /// The next job to take.
    next: AtomicUsize,
    /// Which jobs are done.
    finished: Vec<AtomicBool>,
    /// How many jobs are done.
    done: AtomicUsize,
    /// What failed or was found foreign, not yet told.
    outcome: Mutex<Synced>,
    /// The finisher, woken when the last job is done.
    finisher: Thread,
}

impl Batch {
    fn new(jobs: Vec<FileJob>) -> Batch {
        Batch {
            finished: jobs.iter().map(|_| AtomicBool::new(false)).collect(),
            jobs,
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            outcome: Mutex::default(),
            finisher: std::thread::current(),
        }
    }

    /// Takes the next job and does it; its index, or `None` when every job
    /// is taken.
    fn take_and_sync(&self, materializer: &Materializer) -> Option<usize> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        let job = self.jobs.get(i)?;
        // Marked done even if the write panics (then as failed, to be
        // retried), so that the finisher never waits for it forever.
        let mark = MarkDone { batch: self, i };
        match materializer.sync_job(job) {
            Ok(Outcome::Foreign) => self.outcome().foreign.push(job.file.name.clone()),
            Ok(done) => tracing::debug!(alias = %job.file.name, ?done, "materialized"),
            Err(e) => self.outcome().failed.push((job.file.clone(), e)),
        }
        drop(mark);
        Some(i)
    }

    /// How many jobs, counted from the first, are done, given that the
    /// first `from` are.
    fn done_in_order(&self, mut from: usize) -> usize {
        while from < self.jobs.len() && self.finished[from].load(Ordering::Acquire) {
            from += 1;
        }
        from
    }

    /// How many jobs were taken so far.
    fn taken(&self) -> usize {
        self.next.load(Ordering::Relaxed).min(self.jobs.len())
    }

    fn outcome(&self) -> std::sync::MutexGuard<'_, Synced> {
        self.outcome.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What failed or was found foreign since the last call.
    fn take_outcome(&self) -> Synced {
        std::mem::take(&mut *self.outcome())
    }
}

/// Marks job `i` done when dropped, and wakes the finisher if it was the
/// last; a job whose write panicked is reported as failed.
struct MarkDone<'a> {
    batch: &'a Batch,
    i: usize,
}

impl Drop for MarkDone<'_> {
    fn drop(&mut self) {
        let batch = self.batch;
        if std::thread::panicking() {
            let file = batch.jobs[self.i].file.clone();
            let e = std::io::Error::other("writing the alias file panicked");
            batch.outcome().failed.push((file, e));
        }
        batch.finished[self.i].store(true, Ordering::Release);
        if batch.done.fetch_add(1, Ordering::AcqRel) + 1 == batch.jobs.len() {
            batch.finisher.unpark();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{AliasEntry, AliasName, AliasState};
    use crate::materializer::AliasFile;
    use crate::name::ModelName;
    use crate::store::Store;

    const MANIFEST: &[u8] = br#"{"schemaVersion":2,"layers":[]}"#;

    fn job(alias: &str) -> FileJob {
        let name = ModelName::parse(alias).unwrap();
        let digest: Arc<str> = Arc::from(crate::digest::manifest_digest(MANIFEST).as_str());
        FileJob {
            file: AliasFile {
                name: name.clone(),
                ours: Vec::new(),
                just_created: true,
            },
            entry: Some(AliasEntry {
                alias: AliasName::Exact(name),
                target: ModelName::parse("m").unwrap(),
                state: AliasState::Active,
                digest: Some(digest.clone()),
                previous_digest: None,
                created_at: 0,
                updated_at: 0,
                seq: 1,
            }),
            resolved: Some((Arc::from(MANIFEST), digest)),
        }
    }

    fn library(models: &std::path::Path) -> std::path::PathBuf {
        models.join("manifests/registry.ollama.ai/library")
    }

    #[test]
    fn each_group_is_told_in_order_once_its_files_are_there_and_helpers_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let library = library(dir.path());
        std::fs::create_dir_all(&library).unwrap();
        // A file where one alias's directory should be: foreign, never written.
        std::fs::write(library.join("a7"), b"not a directory").unwrap();
        let materializer = Materializer::new(Store::new(dir.path()), Arc::default());
        let mut writers = FileWriters::new(materializer);
        let names: Vec<String> = (0..40).map(|i| format!("a{i}")).collect();
        let work = names.iter().map(|name| job(name)).collect();
        let mut told = Vec::new();
        let left = writers.sync(work, &[0, 10, 10, 40], |g, synced| {
            // Every file of this group and of the groups before it is there.
            let upto = [0, 10, 10, 40][g];
            for name in names.iter().take(upto).filter(|name| *name != "a7") {
                let file = library.join(name).join("latest");
                assert_eq!(std::fs::read(&file).unwrap(), MANIFEST, "group {g}: {name}");
            }
            let foreign: Vec<String> = synced.foreign.iter().map(|n| n.key()).collect();
            told.push((g, foreign, synced.failed.len()));
        });
        let a7 = "registry.ollama.ai/library/a7:latest".to_string();
        // The foreign path is told once, with the group it belongs to.
        let foreign_told: Vec<usize> = told
            .iter()
            .filter(|(_, foreign, _)| foreign.contains(&a7))
            .map(|(g, _, _)| *g)
            .collect();
        assert!(
            left.foreign.is_empty() && left.failed.is_empty(),
            "{left:?}"
        );
        assert_eq!(foreign_told, [1], "{told:?}");
        let order: Vec<usize> = told.iter().map(|(g, _, _)| *g).collect();
        assert_eq!(order, [0, 1, 2, 3]);
        assert!(told.iter().all(|(_, _, failed)| *failed == 0), "{told:?}");
        assert_eq!(
            std::fs::read(library.join("a7")).unwrap(),
            b"not a directory"
        );
        // The helpers stay for the next group, which they write too.
        let helpers = writers.helpers.len();
        assert_eq!(helpers, threads_for(40) - 1);
        let work = (40..80).map(|i| job(&format!("a{i}"))).collect();
        let left = writers.sync(work, &[], |_, _| {});
        assert!(
            left.foreign.is_empty() && left.failed.is_empty(),
            "{left:?}"
        );
        assert_eq!(writers.helpers.len(), helpers);
        for i in 40..80 {
            assert!(library.join(format!("a{i}/latest")).is_file(), "a{i}");
        }
        // A helper that is gone (as after a panic) is let go, and the next
        // group that needs one starts another; its files are written anyway.
        if helpers > 0 {
            let (gone, _) = channel();
            writers.helpers[0] = gone;
            let work = (80..120).map(|i| job(&format!("a{i}"))).collect();
            let left = writers.sync(work, &[], |_, _| {});
            assert!(left.failed.is_empty(), "{left:?}");
            assert_eq!(writers.helpers.len(), helpers - 1);
            let work = (120..160).map(|i| job(&format!("a{i}"))).collect();
            writers.sync(work, &[], |_, _| {});
            assert_eq!(writers.helpers.len(), helpers);
            assert!((80..160).all(|i| library.join(format!("a{i}/latest")).is_file()));
        }
        // Nothing to write: every group is told at once.
        let mut told = Vec::new();
        writers.sync(Vec::new(), &[0, 0], |g, _| told.push(g));
        assert_eq!(told, [0, 1]);
    }

    #[test]
    fn a_write_that_panics_is_counted_done_and_reported_failed() {
        let batch = Batch::new(vec![job("a"), job("b")]);
        let panicked = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let _mark = MarkDone {
                        batch: &batch,
                        i: 0,
                    };
                    panic!("a bug while writing");
                })
                .join()
        });
        assert!(panicked.is_err());
        assert_eq!(batch.done.load(Ordering::Acquire), 1);
        assert!(batch.finished[0].load(Ordering::Acquire));
        assert_eq!(batch.done_in_order(0), 1);
        let outcome = batch.take_outcome();
        assert_eq!(outcome.failed.len(), 1);
        assert_eq!(
            outcome.failed[0].0.name.key(),
            "registry.ollama.ai/library/a:latest"
        );
    }
}
