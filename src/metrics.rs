//! The metrics `/metrics` serves, kept in `prometheus-client`'s counters,
//! gauges and histogram (atomics bumped on the hot paths) and rendered on
//! scrape in the Prometheus text format.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::event::EventType;

/// The `Content-Type` of what [`Metrics::render`] writes: Prometheus' text
/// format, version 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The prefix of every metric's name.
const PREFIX: &str = "aliasd";

/// Upper bounds (seconds) of the commit latency histogram buckets.
const COMMIT_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024,
];

/// The labels of `aliasd_http_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    /// The matched route template (or `proxy`, `unmatched`): `'static`, so a
    /// path from a request can never become a label and grow the family.
    route: &'static str,
    status: u16,
}

/// The labels of `aliasd_events_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    r#type: &'static str,
}

/// The labels of `aliasd_aliases`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

/// The labels of `aliasd_webhook_deliveries_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    /// `delivered` (2xx), `rejected` (another status), `failed` (no answer).
    result: &'static str,
}

/// The labels of `aliasd_webhook_lag`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookLabels {
    /// The webhook's id; removed with the webhook.
    webhook: String,
}

/// Every metric aliasd keeps between scrapes (the registry holds handles to
/// the same atomics as the fields).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    commit_seconds: Histogram,
    commit_failures: Counter,
    /// One counter per `EventType::ALL`, in that order.
    events: Vec<Counter>,
    subscribers: Gauge,
    /// Alias files the store refused, waiting for a retry.
    alias_files_pending: Gauge,
    /// 1 while the store is followed by polling, not the platform's watcher.
    store_polled: Gauge,
    /// By route template and status.
    requests: Family<RequestLabels, Counter>,
    /// Webhook delivery attempts by result.
    webhook_deliveries: Family<DeliveryLabels, Counter>,
    /// Per webhook: events committed that it has not had yet (seq behind head).
    webhook_lag: Family<WebhookLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut registry = Registry::with_prefix(PREFIX);
        let commit_seconds = Histogram::new(COMMIT_BUCKETS);
        registry.register(
            "journal_commit_seconds",
            "Journal commit (write + fdatasync) latency",
            commit_seconds.clone(),
        );
        let commit_failures = Counter::default();
        registry.register(
            "journal_commit_failures",
            "Commits that could not be made durable",
            commit_failures.clone(),
        );
        let by_type = Family::<EventLabels, Counter>::default();
        // Every type from the start, so that a type not seen yet reads 0.
        let events = EventType::ALL
            .iter()
            .map(|kind| {
                by_type.get_or_create_owned(&EventLabels {
                    r#type: kind.as_str(),
                })
            })
            .collect();
        registry.register("events", "Events committed, by type", by_type);
        let alias_files_pending = Gauge::default();
        registry.register(
            "alias_files_pending",
            "Alias files the store refused (its disk full, say), waiting to be written again",
            alias_files_pending.clone(),
        );
        let store_polled = Gauge::default();
        registry.register(
            "store_polled",
            "1 while the store is followed by polling instead of the platform's file watcher",
            store_polled.clone(),
        );
        let subscribers = Gauge::default();
        registry.register(
            "subscribers",
            "Connected event-stream subscribers",
            subscribers.clone(),
        );
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP responses by route and status",
            requests.clone(),
        );
        let webhook_deliveries = Family::<DeliveryLabels, Counter>::default();
        registry.register(
            "webhook_deliveries",
            "Webhook delivery attempts by result (delivered, rejected, failed)",
            webhook_deliveries.clone(),
        );
        let webhook_lag = Family::<WebhookLabels, Gauge>::default();
        registry.register(
            "webhook_lag",
            "Events a webhook is behind the head of the journal (seq behind head)",
            webhook_lag.clone(),
        );
        Metrics {
            registry,
            commit_seconds,
            commit_failures,
            events,
            subscribers,
            alias_files_pending,
            store_polled,
            requests,
            webhook_deliveries,
            webhook_lag,
        }
    }
}

impl Metrics {
    /// Records one journal commit (append + fdatasync) and how long it took.
    pub fn observe_commit(&self, took: Duration) {
        self.commit_seconds.observe(took.as_secs_f64());
    }

    /// How many alias files the store refused and wait for a retry.
    pub fn set_alias_files_pending(&self, files: usize) {
        self.alias_files_pending
            .set(i64::try_from(files).unwrap_or(i64::MAX));
    }

    /// Whether the store is followed by polling rather than the platform's watcher.
    pub fn set_store_polled(&self, polled: bool) {
        self.store_polled.set(i64::from(polled));
    }

    /// Records a failed commit.
    pub fn observe_commit_failure(&self) {
        self.commit_failures.inc();
    }

    /// Counts a committed event.
    pub fn observe_event(&self, kind: EventType) {
        if let Some(idx) = EventType::ALL.iter().position(|k| *k == kind) {
            self.events[idx].inc();
        }
    }

    /// A subscriber connected (+1) or left (-1).
    pub fn subscriber_delta(&self, connected: bool) {
        if connected {
            self.subscribers.inc();
        } else {
            self.subscribers.dec();
        }
    }

    /// Subscribers connected now.
    pub fn subscribers(&self) -> u64 {
        u64::try_from(self.subscribers.get()).unwrap_or(0)
    }

    /// Counts an HTTP response. `route` is a route template (or another fixed
    /// name), never a request's path: every distinct value is a series kept
    /// for good.
    pub fn observe_request(&self, route: &'static str, status: u16) {
        self.requests
            .get_or_create(&RequestLabels { route, status })
            .inc();
    }

    /// Counts a webhook delivery attempt: `delivered`, `rejected` or `failed`.
    pub fn observe_webhook_delivery(&self, result: &'static str) {
        self.webhook_deliveries
            .get_or_create(&DeliveryLabels { result })
            .inc();
    }

    /// Sets how far webhook `id` is behind the head of the journal.
    pub fn set_webhook_lag(&self, id: &str, lag: u64) {
        self.webhook_lag
            .get_or_create(&WebhookLabels {
                webhook: id.to_string(),
            })
            .set(i64::try_from(lag).unwrap_or(i64::MAX));
    }

    /// Drops a deleted webhook's series.
    pub fn forget_webhook(&self, id: &str) {
        self.webhook_lag.remove(&WebhookLabels {
            webhook: id.to_string(),
        });
    }

    /// Renders everything, plus the gauges passed in, as Prometheus text
    /// ([`CONTENT_TYPE`]).
    pub fn render(&self, gauges: &Gauges) -> String {
        // The values read at scrape time go into a registry of their own,
        // made for this scrape, so that concurrent scrapes share nothing.
        let mut scraped = Registry::with_prefix(PREFIX);
        let aliases = Family::<StateLabels, Gauge<u64, std::sync::atomic::AtomicU64>>::default();
        for (state, n) in &gauges.aliases_by_state {
            aliases.get_or_create(&StateLabels { state }).set(*n);
        }
        scraped.register("aliases", "Aliases by state", aliases);
        for (name, help, value) in [
            ("models", "Models in the store", gauges.models),
            ("journal_seq", "Last durable seq", gauges.journal_seq),
            (
                "journal_bytes",
                "Bytes of journal segments (headers and records; not the zeros written ahead)",
                gauges.journal_bytes,
            ),
        ] {
            let gauge = Gauge::<u64, std::sync::atomic::AtomicU64>::default();
            gauge.set(value);
            scraped.register(name, help, gauge);
        }
        let mut out = String::new();
        for registry in [&scraped, &self.registry] {
            // Writing into a `String` cannot fail.
            let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, registry);
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
