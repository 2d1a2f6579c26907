//! Helpers shared by the unit tests of the journal's modules.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::{FaultyIo, Journal, Opened, Options, Seq};

/// Options with small segments, so tests see rollovers.
pub(crate) fn small_segments(segment_bytes: u64) -> Options {
    Options {
        segment_bytes,
        ..Default::default()
    }
}

/// Options over a fault-injecting I/O layer, and its switches.
pub(crate) fn faulty(segment_bytes: u64) -> (Options, FaultyIo) {
    let faulty = FaultyIo::default();
    (
        Options {
            segment_bytes,
            io: Arc::new(faulty.clone()),
            ..Default::default()
        },
        faulty,
    )
}

/// Opens a journal, panicking on failure.
pub(crate) fn open(dir: &Path, options: Options) -> Opened {
    match Journal::open(dir, options) {
        Ok(opened) => opened,
        Err(e) => panic!("open {}: {e}", dir.display()),
    }
}

/// Every record from `from` on, panicking on a read error.
pub(crate) fn records(journal: &Journal, from: u64) -> Vec<(u64, Vec<u8>)> {
    journal
        .read_from(Seq(from))
        .unwrap()
        .map(|item| {
            let (seq, payload) = item.unwrap();
            (seq.0, payload)
        })
        .collect()
}

/// A recognizable payload.
pub(crate) fn payload(tag: u64, len: usize) -> Vec<u8> {
    let mut out = format!("p{tag}:").into_bytes();
    out.resize(len.max(out.len()), b'a' + (tag % 26) as u8);
    out
}

/// The segment files of `dir`, oldest first.
pub(crate) fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "seg"))
        .collect();
    files.sort();
    files
}

/// The snapshot files of `dir`, oldest first.
pub(crate) fn snapshot_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "snap"))
        .collect();
    files.sort();
    files
}

/// The records a list of acknowledged transactions (first seq, payloads) should read back as.
pub(crate) fn flatten(txns: &[(u64, Vec<Vec<u8>>)]) -> Vec<(u64, Vec<u8>)> {
    txns.iter()
        .flat_map(|(first, payloads)| {
            payloads
                .iter()
                .enumerate()
                .map(move |(idx, p)| (first + idx as u64, p.clone()))
        })
        .collect()
}

/// Runs a future to completion on this thread, parking between polls (enough for
/// the journal's futures, which are woken by the writer thread).
pub(crate) fn block_on<F: std::future::Future>(future: F) -> F::Output {
    struct ThreadWaker(std::thread::Thread);
    impl std::task::Wake for ThreadWaker {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let std::task::Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        std::thread::park();
    }
}
