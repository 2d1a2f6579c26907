//! How the registry scales with the number of aliases, in one process:
//! resident bytes per alias, replay (apply) rate, snapshot size and timings.
//!
//! `cargo bench --bench scale` (add `-- 100000` for a smaller run). Prints a
//! table; numbers are medians of 3 runs where timed. Memory is measured as the
//! growth of this process's resident set while building the index.

use std::time::Instant;

use aliasd::event::{Event, EventType};
use aliasd::index::Index;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn event(seq: u64) -> Event {
    Event {
        seq,
        id: String::new(),
        time: "2026-11-25T10:00:00.000000Z".into(),
        kind: EventType::AliasCreated,
        alias: format!("alias-{seq:08}"),
        target: Some(format!("model-{}:q4", seq % 8)),
        previous_target: None,
        digest: Some(format!("sha256:{:064x}", seq % 8)),
        prefix_matching: false,
        actor: "bench".into(),
        request_id: None,
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

fn main() {
    let sizes: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![100_000, 1_000_000]
    } else {
        sizes
    };
    println!("| aliases | bytes/alias (RSS) | name bytes/alias | apply events/s | snapshot MB | encode s | decode s |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for n in sizes {
        let events: Vec<Event> = (1..=n).map(event).collect();
        let name_bytes: u64 = events.iter().map(|e| e.alias.len() as u64).sum::<u64>() / n;
        let before = rss_bytes();
        let started = Instant::now();
        let mut index = Index::default();
        for e in &events {
            index.apply(e).expect("apply");
        }
        let apply_rate = n as f64 / started.elapsed().as_secs_f64();
        let per_alias = (rss_bytes().saturating_sub(before)) as f64 / n as f64;
        drop(events);
        let mut encode = Vec::new();
        let mut decode = Vec::new();
        let mut size = 0;
        for _ in 0..3 {
            let t = Instant::now();
            let blob = aliasd::snapshot::encode(&index);
            encode.push(t.elapsed().as_secs_f64());
            size = blob.len();
            let t = Instant::now();
            let back = aliasd::snapshot::decode(&blob).expect("decode");
            decode.push(t.elapsed().as_secs_f64());
            assert_eq!(back.len(), index.len());
        }
        println!(
            "| {n} | {per_alias:.0} | {name_bytes} | {apply_rate:.0} | {:.1} | {:.3} | {:.3} |",
            size as f64 / 1e6,
            median(encode),
            median(decode)
        );
    }
}
