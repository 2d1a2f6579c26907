//! aliasd: an event-sourced registry of model aliases for an Ollama model store.
//!
//! Layout, in reading order (see `ARCHITECTURE.md`):
//! - `name`, `digest`: Ollama model names and manifest digests; pure.
//! - `event`: the journal payload and wire shape of a change.
//! - `index`: the in-memory registry, a fold of `Index::apply` over events; pure.
//! - `command`: validation of commands and the events they become; pure.
//! - `store`: reading Ollama's model store; knows nothing of aliases.
//! - `materializer`, `reconcile`: making the store match the index, and noticing
//!   when it does not.
//! - `snapshot`: the index as a blob, to bound start-up time.
//! - `log`: the event log seam (`EventLog`); the local journal is one.
//! - `registry`: the single writer that owns the log, index and materializer.
//! - `feed`: committed events for readers: the paced broadcast, resumable
//!   subscriptions (catch up from the log, then live), history queries.
//! - `fleet`: fleet mode's settings and NATS connection (SPEC §8).
//! - `progress`: progress lines for long start-up work.
//! - `logging`: where the server's log lines go, and the access line's format.
//! - `webhooks`: signed, durable deliveries of events to URLs, from the log.
//! - `http`: the axum routes; the only module that knows status codes.
//! - `config`, `client`: the command line.

pub mod client;
pub mod command;
pub mod config;
pub mod digest;
pub mod event;
pub mod feed;
pub mod fleet;
pub mod http;
pub mod index;
pub mod log;
pub mod logging;
pub mod materializer;
pub mod metrics;
pub mod name;
pub mod offline;
pub mod progress;
pub mod reconcile;
pub mod registry;
pub mod snapshot;
pub mod store;
pub mod watcher;
pub mod webhooks;

pub use http::app;

/// The allocator of every aliasd binary (server, tests, benches).
///
/// A request allocates many small blocks in axum, hyper and our own code,
/// and mimalloc serves them for a fraction of glibc's cost (callgrind of
/// `GET /api/resolve`: benches/README.md). Declared here so that the
/// benchmarks measure the allocator the server ships with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Asks the kernel not to back the server's memory with transparent huge
/// pages (Linux; elsewhere nothing). mimalloc asks for them (`madvise`), and
/// the first touch of each one zeroes 2 MiB at once: when the index's tables
/// grow, the writer thread stops for as long, and every create queued behind
/// it waits (benches/README.md, "Seventh pass"). Latency-bound servers such
/// as Redis ask the same, for the same reason. The flag covers the whole
/// process (already mapped memory too: it is checked at each page fault) and
/// is kept across `fork` and `exec`.
pub fn without_huge_pages() {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        tracing::debug!("transparent huge pages left as the system has them: {e}");
    }
}
