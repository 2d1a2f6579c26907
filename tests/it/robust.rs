//! Readiness the tests rely on, checked where a slow, loaded machine would
//! break it: what the server says is done must be done.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::support::{alias_path, http, Server, TestStore, WAIT};

/// Commits large batches while `shows` polls a read as fast as it can;
/// at the first answer that shows the batches' last seq, reads each batch's
/// last alias. Returns every read that missed it.
fn reads_behind(shows: impl Fn(SocketAddr, u64) -> bool) -> Vec<String> {
    const ROUNDS: usize = 20;
    // Batches as large as the 64 KiB body allows, from several clients at
    // once so that the writer commits them together.
    const BATCH: usize = 800;
    const CLIENTS: usize = 4;
    let server = Server::start(TestStore::with_models(&["llama3"]));
    let addr = server.addr();
    let mut behind = Vec::new();
    for round in 0..ROUNDS {
        let stems: Vec<String> = (0..CLIENTS).map(|c| format!("r{round}{c}-")).collect();
        let last_seq = server.seq() + (BATCH * CLIENTS) as u64;
        std::thread::scope(|scope| {
            let writers: Vec<_> = stems
                .iter()
                .map(|stem| scope.spawn(|| server.batch_prefix_puts(stem, 0..BATCH, "llama3")))
                .collect();
            let deadline = Instant::now() + WAIT;
            while !shows(addr, last_seq) {
                assert!(Instant::now() < deadline, "seq {last_seq} never shown");
                std::thread::sleep(Duration::from_micros(200));
            }
            for stem in &stems {
                let last_alias = format!("{stem}{:05}-", BATCH - 1);
                let resp = server.get(&alias_path(&last_alias));
                if resp.status != 200 {
                    behind.push(format!(
                        "round {round}: seq {last_seq} shown, then {resp:?}"
                    ));
                }
            }
            for writer in writers {
                writer.join().expect("writer");
            }
        });
    }
    behind
}

/// `/healthz`'s seq is what reads show: once it says N, the change at N is
/// in every answer. Before, it was the journal's last durable seq, which
/// moves before the writer applies the commit to the index; a test that
/// waited for a seq and then read (`Server::wait_seq`) could find the
/// change missing (seen under load: fleet_log's new-node test read 404 for
/// an alias whose seq `/healthz` already reported).
#[test]
fn healthz_seq_is_never_ahead_of_what_reads_show() {
    let behind = reads_behind(|addr, seq| {
        let health = http(addr, "GET", "/healthz", &[], None);
        health.expect(200)["seq"].as_u64().expect("seq") >= seq
    });
    assert!(behind.is_empty(), "{behind:#?}");
}

/// `/api/history` lists only events every read already shows. Before, it
/// read the journal to its end, ahead of the index: a test that waited for
/// an event in the history and then read the alias could find it as it was
/// (seen under load: watcher::a_pulled_model_shadows_the_alias_until_removed
/// saw `alias.shadowed` in the history, then the alias still `active`).
#[test]
fn history_is_never_ahead_of_what_reads_show() {
    let behind = reads_behind(|addr, seq| {
        let path = format!("/api/history?since={}&limit=1", seq - 1);
        let history = http(addr, "GET", &path, &[], None);
        !history.expect(200)["events"]
            .as_array()
            .expect("events")
            .is_empty()
    });
    assert!(behind.is_empty(), "{behind:#?}");
}
