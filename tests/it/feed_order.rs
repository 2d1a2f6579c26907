//! The event feed is never ahead of reads (SPEC §5 `/api/events`): the
//! journal's end moves before the index applies a commit, so a subscriber's
//! catch-up that read up to the journal's end could send event N while
//! `GET /api/aliases/{name}` still showed the state before it. Every event
//! a subscriber receives, a read made right after must show.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::sse::Sse;
use crate::support::{alias_path, http, Server};

/// The id of the server's writer thread (named `aliasd-writer`).
fn writer_thread(pid: u32) -> u32 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("list the threads");
    for task in tasks {
        let task = task.expect("a thread");
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() == "aliasd-writer" {
            return task
                .file_name()
                .to_string_lossy()
                .parse()
                .expect("a thread id");
        }
    }
    panic!("no aliasd-writer thread in process {pid}");
}

#[test]
fn every_event_a_subscriber_gets_is_already_in_reads() {
    const WRITERS: usize = 3;
    let server = Server::with_models(&["llama3"]);
    let addr = server.addr();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    // Prefix aliases write no file: commits come fast.
                    let body = json!({ "target": "llama3", "prefix_matching": true });
                    let resp = http(
                        addr,
                        "PUT",
                        &alias_path(&format!("w{w}-{i}-")),
                        &[("Content-Type", "application/json")],
                        Some(body.to_string().as_bytes()),
                    );
                    assert_eq!(resp.status, 201, "{resp:?}");
                    i += 1;
                }
            })
        })
        .collect();

    // The gap to catch is a thread's wake-up: the journal's end moves (its
    // own thread), then the writer thread wakes and applies the commit. Make
    // that wake-up lag, as on a loaded host: the writer thread at the lowest
    // priority, every CPU kept busy meanwhile.
    let writer_thread = writer_thread(server.pid());
    let status = std::process::Command::new("renice")
        .args(["-n", "19", "-p", &writer_thread.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run renice");
    assert!(status.success(), "renice of the writer thread failed");
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let spinners: Vec<_> = (0..cpus)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    // Subscribe again and again just behind what reads show, so that the
    // catch-up reads the journal's newest records; check each event against
    // a read made as soon as it arrives.
    // At least 3 s, and until enough was checked on a loaded host (at most
    // a generous minute, against a hang).
    let started = Instant::now();
    let enough = |checked: usize, subscriptions: usize| {
        let elapsed = started.elapsed();
        elapsed >= Duration::from_secs(60)
            || (elapsed >= Duration::from_secs(3) && checked > 20 && subscriptions > 10)
    };
    let mut checked = 0;
    let mut behind = Vec::new();
    let mut subscriptions = 0;
    while !enough(checked, subscriptions) {
        let since = server.seq();
        // A new subscriber, or one resuming as an EventSource does.
        let mut stream = match subscriptions % 2 {
            0 => Sse::open(addr, &format!("/api/events?since={since}"), &[]),
            _ => Sse::open(
                addr,
                "/api/events",
                &[("Last-Event-ID", &since.to_string())],
            ),
        };
        subscriptions += 1;
        for _ in 0..8 {
            let Some(msg) = stream.next_before(Instant::now() + Duration::from_millis(500)) else {
                break;
            };
            let event = msg.json();
            let resp = server.get(&alias_path(event["alias"].as_str().expect("alias")));
            let seen = resp.json["seq"].as_u64();
            if resp.status != 200 || seen < Some(msg.seq()) {
                behind.push((msg.seq(), resp.status, seen));
            }
            checked += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for thread in writers.into_iter().chain(spinners) {
        thread.join().expect("writer");
    }
    assert!(
        checked > 20 && subscriptions > 10,
        "only {checked} events checked in {subscriptions} subscriptions"
    );
    assert!(
        behind.is_empty(),
        "events sent before reads showed them (seq, status, alias seq read): {behind:?} of {checked}"
    );
}
