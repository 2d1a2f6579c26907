//! How the registry scales with the number of aliases, in one process.
//!
//! `cargo bench --bench scale` (or `-- 100000` for one smaller size; `--open-only`
//! or `--memory-only` for table 2 or 1 alone). Three tables:
//! 1. memory and replay: resident bytes per alias (growth of this process's
//!    RSS while building the index), `Index::apply` rate, snapshot size and
//!    encode/decode time;
//! 2. open: time to open a journal holding N alias events and rebuild the
//!    index, without a snapshot (full replay) and with one;
//! 3. create latency with N aliases already there, through the real registry
//!    (journal fsync, index, manifest file), beside a baseline that rewrites
//!    one JSON file of every alias per change and fsyncs it (how Ollama's
//!    experimental alias store worked).
//!
//! Work files go under `target/bench-scale` (the same disk as the project,
//! so fsync costs what it costs there).

use std::path::{Path, PathBuf};
use std::time::Instant;

use aliasd::command::{Origin, PutAlias};
use aliasd::event::{Event, EventType};
use aliasd::index::Index;
use aliasd::registry::{Command, Registry, RegistryConfig};

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// The creation of alias `i`, pointing at a model that is not in the store
/// (so the alias is dangling and needs no manifest file).
fn event(seq: u64) -> Event {
    Event {
        seq,
        id: "00000000-0000-0000-0000-000000000000".into(),
        time: "2026-11-25T10:00:00.000000Z".into(),
        kind: EventType::AliasCreated,
        alias: format!("alias-{seq:08}"),
        target: Some(format!("gone-{}:q4", seq % 8)),
        previous_target: None,
        digest: None,
        prefix_matching: false,
        actor: "bench".into(),
        request_id: None,
        node: None,
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn sorted(mut xs: Vec<f64>) -> Vec<f64> {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs
}

fn work_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("bench-scale")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("work dir");
    dir
}

fn memory_and_replay(n: u64) {
    let events: Vec<Event> = (1..=n).map(event).collect();
    let name_bytes: u64 = events
        .iter()
        .map(|e| {
            let name = aliasd::name::ModelName::parse(&e.alias).expect("name");
            // One shared allocation: 16 bytes of counts plus the spelled name.
            16 + name.spelled().len() as u64
        })
        .sum::<u64>()
        / n;
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
        "| {n} | {per_alias:.0} | {name_bytes} | {:.0} | {apply_rate:.0} | {:.1} | {:.3} | {:.3} |",
        per_alias - name_bytes as f64,
        size as f64 / 1e6,
        sorted(encode)[1],
        sorted(decode)[1]
    );
}

/// Writes a journal of `n` alias creations (and a snapshot, if asked).
fn write_journal(dir: &Path, n: u64, snapshot: bool) {
    let opened = journal::Journal::open(dir, journal::Options::default()).expect("open");
    let journal = opened.journal;
    let mut index = Index::default();
    let mut seq = 1;
    while seq <= n {
        let end = (seq + 10_000).min(n + 1);
        let events: Vec<Event> = (seq..end).map(event).collect();
        journal
            .append(events.iter().map(Event::encode).collect())
            .expect("append");
        if snapshot {
            for e in &events {
                index.apply(e).expect("apply");
            }
        }
        seq = end;
    }
    if snapshot {
        journal
            .write_snapshot(journal::Seq(n), &aliasd::snapshot::encode(&index))
            .expect("snapshot");
    }
    journal.close();
}

fn open_times(n: u64) {
    let mut cells = Vec::new();
    for snapshot in [false, true] {
        let dir = work_dir(&format!("open-{n}-{snapshot}"));
        write_journal(&dir, n, snapshot);
        let started = Instant::now();
        let opened =
            aliasd::log::file::FileLog::open(&dir, journal::Options::default()).expect("open");
        let index = aliasd::registry::load_index(&opened.log, opened.snapshot).expect("load");
        let took = started.elapsed().as_secs_f64();
        assert_eq!(index.len() as u64, n);
        cells.push(took);
        if !snapshot {
            cells.push(n as f64 / took);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    println!(
        "| {n} | {:.3} | {:.0} | {:.3} |",
        cells[0], cells[1], cells[2]
    );
}

const MODEL: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"sha256:aa","size":1},"layers":[]}"#;

fn create_latency(n: u64, samples: usize) {
    let dir = work_dir(&format!("create-{n}"));
    let models = dir.join("models");
    let model_dir = models.join("manifests/registry.ollama.ai/library/m");
    std::fs::create_dir_all(&model_dir).expect("store");
    std::fs::write(model_dir.join("latest"), MODEL).expect("model");
    let journal_dir = dir.join("journal");
    if n > 0 {
        write_journal(&journal_dir, n, true);
    }
    let (registry, writer) = Registry::start(RegistryConfig {
        models_dir: models,
        journal_dir,
        retain: None,
        snapshot_every: 10_000,
        segment_bytes: 64 << 20,
        io: None,
    })
    .expect("start");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut latencies = Vec::with_capacity(samples);
    runtime.block_on(async {
        for i in 0..samples {
            let put = PutAlias {
                alias: format!("new-{i}"),
                target: "m".into(),
                prefix_matching: false,
                if_match: None,
                if_none_match: false,
            };
            let started = Instant::now();
            registry
                .execute(Command::Put(put), Origin::system("bench"))
                .await
                .expect("put");
            latencies.push(started.elapsed().as_secs_f64() * 1e3);
        }
    });
    drop(registry);
    writer.join();
    let baseline = json_file_baseline(&dir, n, samples.min(if n >= 1_000_000 { 10 } else { 50 }));
    let ours = sorted(latencies);
    let theirs = sorted(baseline);
    println!(
        "| {n} | {:.2} | {:.2} | {:.2} | {:.2} |",
        percentile(&ours, 0.5),
        percentile(&ours, 0.99),
        percentile(&theirs, 0.5),
        percentile(&theirs, 0.99)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// One JSON file of every alias, rewritten (temp file, fsync, rename) per change.
fn json_file_baseline(dir: &Path, n: u64, samples: usize) -> Vec<f64> {
    use std::io::Write;
    let mut aliases: std::collections::BTreeMap<String, String> = (1..=n)
        .map(|i| (format!("alias-{i:08}"), format!("gone-{}:q4", i % 8)))
        .collect();
    let path = dir.join("aliases.json");
    let mut out = Vec::with_capacity(samples);
    for i in 0..samples {
        let started = Instant::now();
        aliases.insert(format!("new-{i}"), "m".into());
        let tmp = dir.join("aliases.json.tmp");
        let mut file = std::fs::File::create(&tmp).expect("create");
        let json = serde_json::to_vec(&aliases).expect("json");
        file.write_all(&json).expect("write");
        file.sync_data().expect("sync");
        std::fs::rename(&tmp, &path).expect("rename");
        out.push(started.elapsed().as_secs_f64() * 1e3);
    }
    out
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
    if std::env::args().any(|a| a == "--open-only") {
        // For profiling start-up alone.
        println!("| aliases | no snapshot | replay records/s | with snapshot |");
        for &n in &sizes {
            open_times(n);
        }
        return;
    }
    println!("## memory and replay\n");
    println!("| aliases | RSS bytes/alias | name bytes/alias | beyond names | apply events/s | snapshot MB | encode s | decode s |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &n in &sizes {
        memory_and_replay(n);
    }
    if std::env::args().any(|a| a == "--memory-only") {
        return;
    }
    println!("\n## open (journal + index), seconds\n");
    println!("| aliases | no snapshot | replay records/s | with snapshot |");
    println!("|---:|---:|---:|---:|");
    for &n in &sizes {
        open_times(n);
    }
    println!("\n## create latency (ms) with N aliases already there\n");
    println!("| existing | aliasd p50 | aliasd p99 | JSON-file p50 | JSON-file p99 |");
    println!("|---:|---:|---:|---:|---:|");
    let mut scaling = vec![0, 10_000];
    scaling.extend(sizes.iter().copied());
    scaling.dedup();
    for n in scaling {
        create_latency(n, 500);
    }
}
