//! Journal benchmarks: the disk's own fdatasync latency, then single-append latency,
//! group-commit throughput with 64 appenders (threads, then async tasks), and replay
//! throughput.
//!
//! The raw figures come in two kinds: a write at the end of a growing file (its
//! `fdatasync` also writes the file's new size) and a write over zeros already on disk
//! (no size to write), which is what the journal does with its zeros written ahead
//! (`Options::preallocate_bytes`). Each append bench also runs with that turned off
//! (`_no_prealloc`), in the same run.
//!
//! Files go under `CARGO_TARGET_TMPDIR` (inside the target directory), which is on the
//! same disk as the workspace; `/tmp` may be a tmpfs, where fsync costs nothing.
//! Run with `cargo bench -p journal`; the figures are summarized in `journal/BENCH.md`.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use journal::{FaultyIo, Journal, Options, Seq};

const RECORD_BYTES: usize = 200;
const APPENDERS: usize = 64;
const APPENDS_PER_THREAD: usize = 50;
const REPLAY_RECORDS: u64 = 500_000;

fn bench_dir() -> tempfile::TempDir {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("journal-bench");
    std::fs::create_dir_all(&root).unwrap();
    tempfile::tempdir_in(root).unwrap()
}

fn record(idx: u64) -> Vec<u8> {
    let mut out =
        format!("{{\"seq\":{idx},\"type\":\"alias.created\",\"alias\":\"coder\"}}").into_bytes();
    out.resize(RECORD_BYTES, b' ');
    out
}

/// A journal on the real file system whose syncs are counted (`FaultyIo` with no
/// fault switched on), so that a bench can say how many records shared each one.
fn counted_journal(dir: &tempfile::TempDir, preallocate: bool) -> (Journal, FaultyIo) {
    let counter = FaultyIo::default();
    let options = Options {
        io: Arc::new(counter.clone()),
        ..options(preallocate)
    };
    let journal = Journal::open(dir.path(), options).unwrap().journal;
    (journal, counter)
}

/// The default options, or the same without zeros written ahead.
fn options(preallocate: bool) -> Options {
    let defaults = Options::default();
    Options {
        preallocate_bytes: if preallocate {
            defaults.preallocate_bytes
        } else {
            0
        },
        ..defaults
    }
}

/// A bench's name, with `_no_prealloc` when the journal writes no zeros ahead.
fn name(base: &str, preallocate: bool) -> String {
    if preallocate {
        base.to_string()
    } else {
        format!("{base}_no_prealloc")
    }
}

/// Prints records per fdatasync over a bench's whole run (warm-up included).
fn print_records_per_sync(label: &str, journal: &Journal, counter: &FaultyIo) {
    let records = journal.last_seq().0;
    let syncs = counter.syncs().max(1);
    println!(
        "{label}: {records} records in {syncs} fdatasyncs, {:.1} records per fdatasync",
        records as f64 / syncs as f64
    );
}

/// (a) The disk's floor: one small write at the end of a file, then fdatasync.
fn raw_fdatasync(c: &mut Criterion) {
    let dir = bench_dir();
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(dir.path().join("raw"))
        .unwrap();
    let buf = record(0);
    let mut offset = 0u64;
    let mut group = c.benchmark_group("raw");
    group.throughput(Throughput::Elements(1));
    group.bench_function("write_200B_fdatasync", |b| {
        b.iter(|| {
            file.write_all_at(&buf, offset).unwrap();
            file.sync_data().unwrap();
            offset += buf.len() as u64;
        })
    });
    // The floor for one full group-commit batch: 64 records in one write, one sync.
    let batch = buf.repeat(APPENDERS);
    group.throughput(Throughput::Elements(APPENDERS as u64));
    group.bench_function("write_64x200B_fdatasync", |b| {
        b.iter(|| {
            file.write_all_at(&batch, offset).unwrap();
            file.sync_data().unwrap();
            offset += batch.len() as u64;
        })
    });
    // The same writes over zeros already synced: the file's size never changes.
    const ZEROED: u64 = 64 << 20;
    let zeroed = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(dir.path().join("zeroed"))
        .unwrap();
    zeroed.write_all_at(&vec![0u8; ZEROED as usize], 0).unwrap();
    zeroed.sync_all().unwrap();
    let mut offset = 0u64;
    let mut overwrite = |bytes: &[u8]| {
        if offset + bytes.len() as u64 > ZEROED {
            offset = 0;
        }
        zeroed.write_all_at(bytes, offset).unwrap();
        zeroed.sync_data().unwrap();
        offset += bytes.len() as u64;
    };
    group.throughput(Throughput::Elements(1));
    group.bench_function("overwrite_200B_fdatasync", |b| b.iter(|| overwrite(&buf)));
    group.throughput(Throughput::Elements(APPENDERS as u64));
    group.bench_function("overwrite_64x200B_fdatasync", |b| {
        b.iter(|| overwrite(&batch))
    });
    group.finish();
}

/// (b) One appender: the latency of `append` of one record.
fn single_append(c: &mut Criterion) {
    for preallocate in [true, false] {
        let dir = bench_dir();
        let journal = Journal::open(dir.path(), options(preallocate))
            .unwrap()
            .journal;
        let mut group = c.benchmark_group("append");
        group.throughput(Throughput::Elements(1));
        group.bench_function(name("single_appender_200B", preallocate), |b| {
            b.iter_batched(
                || vec![record(1)],
                |payloads| journal.append(payloads).unwrap(),
                BatchSize::SmallInput,
            )
        });
        group.finish();
    }
}

/// (c) Group commit: 64 threads appending at once; throughput in records per second.
///
/// The threads live across iterations (spawning 64 threads per iteration would be
/// measured too); each iteration releases them through a barrier and waits for all.
fn group_commit(c: &mut Criterion) {
    group_commit_threads(c, true);
    group_commit_threads(c, false);
}

fn group_commit_threads(c: &mut Criterion, preallocate: bool) {
    let dir = bench_dir();
    let (journal, counter) = counted_journal(&dir, preallocate);
    let start = Arc::new(Barrier::new(APPENDERS + 1));
    let done = Arc::new(Barrier::new(APPENDERS + 1));
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..APPENDERS)
        .map(|thread_idx| {
            let (journal, start, done, stop) = (
                journal.clone(),
                Arc::clone(&start),
                Arc::clone(&done),
                Arc::clone(&stop),
            );
            std::thread::spawn(move || loop {
                start.wait();
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                for idx in 0..APPENDS_PER_THREAD {
                    journal
                        .append(vec![record((thread_idx * 1000 + idx) as u64)])
                        .unwrap();
                }
                done.wait();
            })
        })
        .collect();
    let mut group = c.benchmark_group("append");
    group.throughput(Throughput::Elements(
        (APPENDERS * APPENDS_PER_THREAD) as u64,
    ));
    group.bench_function(name("group_commit_64_appenders_200B", preallocate), |b| {
        b.iter_custom(|iters| {
            let began = Instant::now();
            for _ in 0..iters {
                start.wait();
                done.wait();
            }
            began.elapsed()
        })
    });
    group.finish();
    stop.store(true, Ordering::SeqCst);
    start.wait();
    for thread in threads {
        thread.join().unwrap();
    }
    print_records_per_sync(
        &name("64 appender threads", preallocate),
        &journal,
        &counter,
    );
}

/// (c') Group commit with 64 async appenders: tokio tasks on a 2-worker runtime (as in
/// the server), each awaiting `append_async` 50 times in a row. The writer wakes a task
/// per record instead of a thread, so the cost per record is a queue push, not a
/// context switch.
fn group_commit_async(c: &mut Criterion) {
    group_commit_tasks(c, true);
    group_commit_tasks(c, false);
}

fn group_commit_tasks(c: &mut Criterion, preallocate: bool) {
    let dir = bench_dir();
    let (journal, counter) = counted_journal(&dir, preallocate);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let mut group = c.benchmark_group("append");
    group.throughput(Throughput::Elements(
        (APPENDERS * APPENDS_PER_THREAD) as u64,
    ));
    group.bench_function(
        name("group_commit_64_async_appenders_200B", preallocate),
        |b| {
            b.iter(|| {
                runtime.block_on(async {
                    let tasks: Vec<_> = (0..APPENDERS)
                        .map(|task_idx| {
                            let journal = journal.clone();
                            tokio::spawn(async move {
                                for idx in 0..APPENDS_PER_THREAD {
                                    let payload = record((task_idx * 1000 + idx) as u64);
                                    journal.append_async(vec![payload]).await.unwrap();
                                }
                            })
                        })
                        .collect();
                    for task in tasks {
                        task.await.unwrap();
                    }
                })
            })
        },
    );
    group.finish();
    print_records_per_sync(&name("64 async appenders", preallocate), &journal, &counter);
}

/// (d) Replay: `read_from(1)` over 500k records of 200 bytes, warm cache.
fn replay(c: &mut Criterion) {
    let dir = bench_dir();
    let journal = Journal::open(dir.path(), Options::default())
        .unwrap()
        .journal;
    let mut next = 0u64;
    while next < REPLAY_RECORDS {
        let txn: Vec<Vec<u8>> = (next..next + 1000).map(record).collect();
        journal.append(txn).unwrap();
        next += 1000;
    }
    let mut group = c.benchmark_group("replay");
    group.throughput(Throughput::Elements(REPLAY_RECORDS));
    group.bench_function("read_from_1_500k_200B", |b| {
        b.iter(|| {
            let mut n_records = 0u64;
            let mut n_bytes = 0usize;
            for item in journal.read_from(Seq(1)).unwrap() {
                let (_, payload) = item.unwrap();
                n_bytes += payload.len();
                n_records += 1;
            }
            assert_eq!(n_records, REPLAY_RECORDS);
            n_bytes
        })
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
}

criterion_group! {
    name = benches;
    config = config();
    targets = raw_fdatasync, single_append, group_commit, group_commit_async, replay
}
criterion_main!(benches);
