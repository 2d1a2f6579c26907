//! Readiness the tests rely on, checked where a slow, loaded machine would
//! break it: what the server says is done must be done.

use std::time::{Duration, Instant};

use crate::support::{alias_path, http, Server, TestStore, WAIT};

/// `/healthz`'s seq is what reads show: once it says N, the change at N is
/// in every answer. Before, it was the journal's last durable seq, which
/// moves before the writer applies the commit to the index; a test that
/// waited for a seq and then read (`Server::wait_seq`) could find the
/// change missing (seen in CI-like load: fleet_log's new-node test read
/// 404 for an alias whose seq `/healthz` already reported). Each round
/// commits one large batch while this polls `/healthz` as fast as it can
/// and, at the first answer that reaches the batch's last seq, reads the
/// batch's last alias.
#[test]
fn healthz_seq_is_never_ahead_of_what_reads_show() {
    const ROUNDS: usize = 20;
    // Batches as large as the 64 KiB body allows, from several clients at
    // once so that the writer commits them together.
    const BATCH: usize = 800;
    const CLIENTS: usize = 4;
    let server = Server::start(TestStore::with_models(&["llama3"]));
    let addr = server.addr();
    let mut ahead = Vec::new();
    for round in 0..ROUNDS {
        let stems: Vec<String> = (0..CLIENTS).map(|c| format!("r{round}{c}-")).collect();
        let last_seq = server.seq() + (BATCH * CLIENTS) as u64;
        std::thread::scope(|scope| {
            let writers: Vec<_> = stems
                .iter()
                .map(|stem| scope.spawn(|| server.batch_prefix_puts(stem, 0..BATCH, "llama3")))
                .collect();
            let deadline = Instant::now() + WAIT;
            loop {
                let seq = http(addr, "GET", "/healthz", &[], None).expect(200)["seq"]
                    .as_u64()
                    .expect("seq");
                if seq >= last_seq {
                    for stem in &stems {
                        let last_alias = format!("{stem}{:05}-", BATCH - 1);
                        let resp = server.get(&alias_path(&last_alias));
                        if resp.status != 200 {
                            ahead
                                .push(format!("round {round}: /healthz said {seq}, then {resp:?}"));
                        }
                    }
                    break;
                }
                assert!(Instant::now() < deadline, "seq {last_seq} never reached");
                std::thread::sleep(Duration::from_micros(200));
            }
            for writer in writers {
                writer.join().expect("writer");
            }
        });
    }
    assert!(ahead.is_empty(), "{ahead:#?}");
}
