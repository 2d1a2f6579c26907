//! Readiness the tests rely on, checked where a slow, loaded machine would
//! break it: what the server says is done must be done.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::support::nats::NatsServer;
use crate::support::{alias_path, http, wait_for, Server, TestStore, WAIT};

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

/// A change to the store seen while the fleet log does not answer (NATS up,
/// its JetStream without a quorum) is appended once it answers again, with
/// no other write to set it off. Before, only a reconnection set off the
/// owed reconcile: a log that came back on the same connection, or whose
/// last failure was less than a second old when the connection came back
/// (seen under load: fleet_log::with_nats_down_reads_go_on_writes_answer_503_and_observations_wait
/// timed out waiting for the removal), left the observation waiting for the
/// next write.
#[test]
fn an_observation_made_while_the_fleet_log_does_not_answer_is_appended_once_it_does() {
    let mut cluster = NatsServer::start_cluster();
    let url = cluster[0].url();
    let a = Server::builder(TestStore::with_models(&["llama3", "mistral"]))
        .args(&["--nats", &url, "--node", "a", "--nats-replicas", "3"])
        .start();
    // The cluster may still be electing its leaders.
    wait_for(
        "a write through the cluster",
        Duration::from_secs(60),
        || {
            let status = a.put_alias("chat", "mistral").status;
            (status == 201 || status == 200).then_some(())
        },
    );
    let before = a.seq();

    // Two of three servers down: a is still connected, to the third, but
    // the stream has no quorum.
    cluster[1].stop();
    cluster[2].stop();
    wait_for("a write refused", Duration::from_secs(60), || {
        (a.put_alias("other", "llama3").status == 503).then_some(())
    });
    a.store.remove_model("mistral");
    wait_for("the observation waiting", WAIT, || {
        a.stderr()
            .contains("observations wait for the event log")
            .then_some(())
    });
    assert_eq!(a.seq(), before, "nothing appended without a quorum");

    cluster[1].start_again();
    cluster[2].start_again();
    let removed = wait_for("the removal appended", Duration::from_secs(60), || {
        a.all_events()
            .into_iter()
            .find(|e| e["type"] == "target.removed" && e["alias"] == "chat")
    });
    assert!(removed["seq"].as_u64() > Some(before), "{removed}");
    assert_eq!(removed["node"], "a", "{removed}");
}
