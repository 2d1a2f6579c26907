//! Counters for `/metrics` (Prometheus text format): lock-free atomics bumped
//! on the hot paths, rendered on scrape.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;
use std::time::Duration;

use crate::event::EventType;

/// Upper bounds (seconds) of the commit latency histogram buckets.
const COMMIT_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024,
];

/// Every metric aliasd keeps.
#[derive(Debug, Default)]
pub struct Metrics {
    commit_buckets: [AtomicU64; COMMIT_BUCKETS.len()],
    commit_count: AtomicU64,
    commit_micros: AtomicU64,
    commit_failures: AtomicU64,
    events: [AtomicU64; EventType::ALL.len()],
    subscribers: AtomicU64,
    /// Alias files the store refused, waiting for a retry.
    alias_files_pending: AtomicU64,
    /// 1 while the store is followed by polling, not the platform's watcher.
    store_polled: AtomicU64,
    /// (route, status) -> count; routes are the matched templates, so bounded.
    requests: RwLock<BTreeMap<String, BTreeMap<u16, AtomicU64>>>,
}

impl Metrics {
    /// Records one journal commit (append + fdatasync) and how long it took.
    pub fn observe_commit(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        for (bucket, bound) in self.commit_buckets.iter().zip(COMMIT_BUCKETS) {
            if seconds <= bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.commit_count.fetch_add(1, Ordering::Relaxed);
        self.commit_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// How many alias files the store refused and wait for a retry.
    pub fn set_alias_files_pending(&self, files: usize) {
        self.alias_files_pending
            .store(files as u64, Ordering::Relaxed);
    }

    /// Whether the store is followed by polling rather than the platform's watcher.
    pub fn set_store_polled(&self, polled: bool) {
        self.store_polled
            .store(u64::from(polled), Ordering::Relaxed);
    }

    /// Records a failed commit.
    pub fn observe_commit_failure(&self) {
        self.commit_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a committed event.
    pub fn observe_event(&self, kind: EventType) {
        if let Some(idx) = EventType::ALL.iter().position(|k| *k == kind) {
            self.events[idx].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A subscriber connected (+1) or left (-1).
    pub fn subscriber_delta(&self, connected: bool) {
        if connected {
            self.subscribers.fetch_add(1, Ordering::Relaxed);
        } else {
            self.subscribers.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Subscribers connected now.
    pub fn subscribers(&self) -> u64 {
        self.subscribers.load(Ordering::Relaxed)
    }

    /// Counts an HTTP response.
    pub fn observe_request(&self, route: &str, status: u16) {
        {
            // The common case: a counter that exists, bumped under a read lock.
            let requests = self.requests.read().unwrap_or_else(|e| e.into_inner());
            if let Some(counter) = requests
                .get(route)
                .and_then(|by_status| by_status.get(&status))
            {
                counter.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        let mut requests = self.requests.write().unwrap_or_else(|e| e.into_inner());
        requests
            .entry(route.to_string())
            .or_default()
            .entry(status)
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Renders everything, plus the gauges passed in, as Prometheus text.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP aliasd_aliases Aliases by state.\n# TYPE aliasd_aliases gauge"
        );
        for (state, n) in &gauges.aliases_by_state {
            let _ = writeln!(out, "aliasd_aliases{{state=\"{state}\"}} {n}");
        }
        let _ = writeln!(out, "# HELP aliasd_models Models in the store.\n# TYPE aliasd_models gauge\naliasd_models {}", gauges.models);
        let _ = writeln!(out, "# HELP aliasd_journal_seq Last durable seq.\n# TYPE aliasd_journal_seq gauge\naliasd_journal_seq {}", gauges.journal_seq);
        let _ = writeln!(out, "# HELP aliasd_journal_bytes Bytes of journal segments (headers and records; not the zeros written ahead).\n# TYPE aliasd_journal_bytes gauge\naliasd_journal_bytes {}", gauges.journal_bytes);
        let _ = writeln!(out, "# HELP aliasd_journal_commit_seconds Journal commit (write + fdatasync) latency.\n# TYPE aliasd_journal_commit_seconds histogram");
        for (bucket, bound) in self.commit_buckets.iter().zip(COMMIT_BUCKETS) {
            let _ = writeln!(
                out,
                "aliasd_journal_commit_seconds_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.commit_count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "aliasd_journal_commit_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "aliasd_journal_commit_seconds_sum {}",
            self.commit_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "aliasd_journal_commit_seconds_count {count}");
        let _ = writeln!(out, "# HELP aliasd_journal_commit_failures_total Commits that could not be made durable.\n# TYPE aliasd_journal_commit_failures_total counter\naliasd_journal_commit_failures_total {}", self.commit_failures.load(Ordering::Relaxed));
        let _ = writeln!(out, "# HELP aliasd_events_total Events committed, by type.\n# TYPE aliasd_events_total counter");
        for (kind, n) in EventType::ALL.iter().zip(&self.events) {
            let _ = writeln!(
                out,
                "aliasd_events_total{{type=\"{kind}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(out, "# HELP aliasd_alias_files_pending Alias files the store refused (its disk full, say), waiting to be written again.\n# TYPE aliasd_alias_files_pending gauge\naliasd_alias_files_pending {}", self.alias_files_pending.load(Ordering::Relaxed));
        let _ = writeln!(out, "# HELP aliasd_store_polled 1 while the store is followed by polling instead of the platform's file watcher.\n# TYPE aliasd_store_polled gauge\naliasd_store_polled {}", self.store_polled.load(Ordering::Relaxed));
        let _ = writeln!(out, "# HELP aliasd_subscribers Connected event-stream subscribers.\n# TYPE aliasd_subscribers gauge\naliasd_subscribers {}", self.subscribers());
        let _ = writeln!(out, "# HELP aliasd_http_requests_total HTTP responses by route and status.\n# TYPE aliasd_http_requests_total counter");
        let requests = self.requests.read().unwrap_or_else(|e| e.into_inner());
        for (route, statuses) in requests.iter() {
            for (status, n) in statuses {
                let n = n.load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "aliasd_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
                );
            }
        }
        out
    }
}

/// Values read from the registry at scrape time.
#[derive(Debug, Default)]
pub struct Gauges {
    /// (state, count).
    pub aliases_by_state: Vec<(&'static str, u64)>,
    /// Models in the store.
    pub models: u64,
    /// Last durable seq.
    pub journal_seq: u64,
    /// Segment bytes: headers and records, not the zeros written ahead.
    pub journal_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_histogram_and_counters() {
        let metrics = Metrics::default();
        metrics.observe_commit(Duration::from_micros(1500));
        metrics.observe_event(EventType::AliasCreated);
        metrics.observe_request("/api/aliases", 200);
        metrics.set_alias_files_pending(3);
        metrics.set_store_polled(true);
        let text = metrics.render(&Gauges::default());
        assert!(text.contains("\naliasd_alias_files_pending 3\n"));
        assert!(text.contains("\naliasd_store_polled 1\n"));
        assert!(text.contains("aliasd_journal_commit_seconds_bucket{le=\"0.001\"} 0"));
        assert!(text.contains("aliasd_journal_commit_seconds_bucket{le=\"0.002\"} 1"));
        assert!(text.contains("aliasd_journal_commit_seconds_count 1"));
        assert!(text.contains("aliasd_events_total{type=\"alias.created\"} 1"));
        assert!(
            text.contains("aliasd_http_requests_total{route=\"/api/aliases\",status=\"200\"} 1")
        );
    }
}
