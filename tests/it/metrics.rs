//! `/metrics` (issue 5): aliases by state, the journal's seq, bytes and
//! commit times, events by type, requests by route template and status, and
//! live subscribers.

use std::time::{Duration, Instant};

use crate::support::sse::Sse;
use crate::support::{alias_path, files_with_ext, segment_data_len, Server, WAIT};

/// A metric's value by its full name with labels, as written.
#[track_caller]
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            (key == name).then(|| value.parse::<f64>().expect("a number"))
        })
        .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
}

#[test]
fn metrics_report_aliases_journal_subscribers_events_and_requests() {
    let server = Server::with_models(&["llama3", "qwen"]);
    server.create("a", "llama3");
    server.create("b", "llama3");
    server.create("c", "a");
    server.create("b", "qwen");
    server.delete(&alias_path("c")).expect(200);
    server.get("/api/aliases/nope").expect_error(404, "nope");
    server.get("/no/such/route").expect_error(404, "");
    server.get("/api/resolve/a").expect(200);
    server.store.remove_model("qwen"); // b dangles (watcher)
    server.wait_seq(6);

    let scrape = || {
        let resp = server.get("/metrics");
        assert_eq!(resp.status, 200, "{resp:?}");
        assert!(
            resp.header("content-type")
                .is_some_and(|v| v.starts_with("text/plain")),
            "{resp:?}"
        );
        String::from_utf8(resp.body).unwrap()
    };
    // Events are counted once their files are written, just after the journal
    // seq moves: wait for the last one to be counted.
    let deadline = Instant::now() + WAIT;
    let text = loop {
        let text = scrape();
        if metric(&text, "aliasd_events_total{type=\"target.removed\"}") == 1.0 {
            break text;
        }
        assert!(Instant::now() < deadline, "target.removed never counted");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(metric(&text, "aliasd_aliases{state=\"active\"}"), 1.0);
    assert_eq!(metric(&text, "aliasd_aliases{state=\"dangling\"}"), 1.0);
    assert_eq!(metric(&text, "aliasd_aliases{state=\"shadowed\"}"), 0.0);
    assert_eq!(metric(&text, "aliasd_journal_seq"), 6.0);
    let segment_bytes: u64 = files_with_ext(server.journal_dir(), "seg")
        .iter()
        .map(|p| segment_data_len(&std::fs::read(p).unwrap()) as u64)
        .sum();
    assert_eq!(metric(&text, "aliasd_journal_bytes"), segment_bytes as f64);
    assert!(text.contains("# TYPE aliasd_journal_commit_seconds histogram"));
    let commits = metric(&text, "aliasd_journal_commit_seconds_count");
    assert!(
        (1.0..=6.0).contains(&commits),
        "{commits} commits for 6 events"
    );
    assert_eq!(
        metric(&text, "aliasd_journal_commit_seconds_bucket{le=\"+Inf\"}"),
        commits
    );
    assert!(metric(&text, "aliasd_journal_commit_seconds_sum") > 0.0);
    let buckets: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("aliasd_journal_commit_seconds_bucket"))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse().unwrap())
        .collect();
    assert!(
        buckets.len() > 5 && buckets.windows(2).all(|w| w[0] <= w[1]),
        "{buckets:?}"
    );
    for (kind, n) in [
        ("alias.created", 3.0),
        ("alias.updated", 1.0),
        ("alias.deleted", 1.0),
        ("target.removed", 1.0),
        ("target.changed", 0.0),
    ] {
        assert_eq!(
            metric(&text, &format!("aliasd_events_total{{type=\"{kind}\"}}")),
            n,
            "{kind}"
        );
    }
    // Requests by route template and status.
    let requests: Vec<(&str, f64)> = text
        .lines()
        .filter(|l| l.starts_with("aliasd_http_requests_total{"))
        .map(|l| {
            let (key, value) = l.rsplit_once(' ').unwrap();
            (key, value.parse().unwrap())
        })
        .collect();
    let count = |route_part: &str, status: u16| -> f64 {
        requests
            .iter()
            .filter(|(k, _)| k.contains(route_part) && k.contains(&format!("status=\"{status}\"")))
            .map(|(_, v)| v)
            .sum()
    };
    assert_eq!(count("/api/aliases/", 201), 3.0, "{requests:?}");
    assert_eq!(count("/api/aliases/", 404), 1.0, "{requests:?}");
    assert!(count("/healthz", 200) >= 1.0, "{requests:?}");
    assert_eq!(
        count("route=\"/api/resolve/{*name}\"", 200),
        1.0,
        "{requests:?}"
    );
    assert_eq!(count("route=\"unmatched\"", 404), 1.0, "{requests:?}");
    assert!(
        requests
            .iter()
            .all(|(k, _)| !k.contains("/api/aliases/nope")),
        "routes are templates, not paths: {requests:?}"
    );

    // Subscribers: up while a stream is open, down after it closes.
    assert_eq!(metric(&text, "aliasd_subscribers"), 0.0);
    let first = Sse::open(server.addr(), "/api/events", &[]);
    let second = Sse::open(server.addr(), "/api/events?since=0", &[]);
    assert_eq!(metric(&scrape(), "aliasd_subscribers"), 2.0);
    drop(first);
    drop(second);
    // The server notices a closed stream when it next writes (or polls) it.
    server.create("d", "llama3");
    let deadline = Instant::now() + WAIT;
    while metric(&scrape(), "aliasd_subscribers") != 0.0 {
        assert!(
            Instant::now() < deadline,
            "subscribers never went back to 0"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = scrape();
    assert_eq!(metric(&text, "aliasd_journal_seq"), 7.0);
    assert_eq!(
        metric(&text, "aliasd_events_total{type=\"alias.created\"}"),
        4.0
    );
}
