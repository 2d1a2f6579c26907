//! Long alias chains and wide fan-in (issue 17), through the real registry.
//!
//! `cargo bench --bench chains` (criterion; `-- --quick` for a short run, or a
//! filter such as `-- chain_2000`). Three shapes: a chain of 1,000 and of 2,000
//! aliases (`c1 -> m1`, `c2 -> c1`, ...; aliasd has no depth cap, as Ollama's
//! alias store has none), and 10,000 aliases pointing at one alias that points
//! at a model. For each:
//! - `repoint`: re-point the alias every other one depends on (the chain's
//!   root, the hub) to the other model, through `Registry::execute`: planning,
//!   one journal commit, the index, and every alias's file rewritten (on this
//!   shared machine, mostly file system time, and noisy);
//! - `plan_repoint`: the writer thread's part of that alone, the one that
//!   holds up every other write: validating the put and planning the event of
//!   every dependent alias on a `Draft`;
//! - `list`: the body of `GET /api/aliases` (every alias with its resolved
//!   model), built under the read lock as the handler builds it;
//! - `replay`: the index rebuilt from the whole journal (no snapshot);
//! - `restart`: `Registry::start` on the journal and store (replay from the
//!   snapshot, then the store reconciled with every alias) and a stop.
//!
//! Work files go under `target/bench-chains` (the project's disk).

use std::path::{Path, PathBuf};
use std::time::Duration;

use aliasd::command::{plan_put, BatchOp, Origin, PutAlias};
use aliasd::index::Draft;
use aliasd::registry::{Command, Registry, RegistryConfig, WriterThread};
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};

/// A model's manifest; `digest` makes the two models' files differ.
fn manifest(digest: char) -> String {
    let hex: String = std::iter::repeat_n(digest, 64).collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"sha256:{hex}","size":1}},"layers":[]}}"#
    )
}

/// Which aliases a shape has: `(alias, target)` in creation order, and the
/// alias the others depend on.
struct Shape {
    label: &'static str,
    size: usize,
    pairs: Vec<(String, String)>,
    root: &'static str,
}

fn chain(size: usize, label: &'static str) -> Shape {
    let pairs = (1..=size)
        .map(|i| {
            let target = if i == 1 {
                "m1".to_string()
            } else {
                format!("c{}", i - 1)
            };
            (format!("c{i}"), target)
        })
        .collect();
    Shape {
        label,
        size,
        pairs,
        root: "c1",
    }
}

fn fan_in(size: usize, label: &'static str) -> Shape {
    let mut pairs = vec![("hub".to_string(), "m1".to_string())];
    pairs.extend((1..=size).map(|i| (format!("f{i}"), "hub".to_string())));
    Shape {
        label,
        size,
        pairs,
        root: "hub",
    }
}

fn work_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("bench-chains")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("work dir");
    dir
}

fn config(dir: &Path) -> RegistryConfig {
    RegistryConfig {
        models_dir: dir.join("models"),
        journal_dir: dir.join("journal"),
        retain: None,
        snapshot_every: 10_000,
        segment_bytes: 64 << 20,
        io: None,
    }
}

fn put(alias: &str, target: &str) -> PutAlias {
    PutAlias {
        alias: alias.into(),
        target: target.into(),
        prefix_matching: false,
        if_match: None,
        if_none_match: false,
    }
}

fn stop(registry: Registry, writer: WriterThread) {
    drop(registry);
    writer.join();
}

fn bench_shape(c: &mut Criterion, shape: &Shape) {
    let dir = work_dir(shape.label);
    let library = dir.join("models/manifests/registry.ollama.ai/library");
    for (model, digest) in [("m1", 'a'), ("m2", 'b')] {
        std::fs::create_dir_all(library.join(model)).expect("model dir");
        std::fs::write(library.join(model).join("latest"), manifest(digest)).expect("model");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let origin = Origin::system("bench");
    let (registry, writer) = Registry::start(config(&dir)).expect("start");
    let ops = shape
        .pairs
        .iter()
        .map(|(alias, target)| BatchOp::Put(put(alias, target)))
        .collect();
    runtime
        .block_on(registry.execute(Command::Batch(ops), origin.clone()))
        .expect("build");

    let mut group = c.benchmark_group(shape.label);
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(5));
    group.bench_function(BenchmarkId::new("plan_repoint", shape.size), |b| {
        b.iter(|| {
            registry.read(|s| {
                let mut draft = Draft::new(&s.index, s.index.last_seq() + 1);
                let time = "2026-12-01T00:00:00.000000Z";
                plan_put(&mut draft, &s.models, &origin, time, &put(shape.root, "m2"))
                    .expect("plan");
                let events = draft.into_events();
                assert_eq!(events.len(), shape.pairs.len());
                black_box(events)
            })
        })
    });
    group.bench_function(BenchmarkId::new("list", shape.size), |b| {
        b.iter(|| {
            registry.read(|s| {
                let bodies = aliasd::http::aliases::list(&s.index, &s.models, &|_| true);
                assert_eq!(bodies.len(), shape.pairs.len());
                black_box(bodies)
            })
        })
    });
    stop(registry, writer);

    // Replay and restart before any re-point: the journal holds the shape's
    // creations only, whatever number of iterations criterion chose.
    group.bench_function(BenchmarkId::new("replay", shape.size), |b| {
        let opened =
            aliasd::log::file::FileLog::open(&dir.join("journal"), journal::Options::default())
                .expect("open");
        b.iter(|| {
            let index = aliasd::registry::load_index(&opened.log, None).expect("replay");
            assert_eq!(index.len(), shape.pairs.len());
            black_box(index)
        });
        opened.log.close();
    });
    group.bench_function(BenchmarkId::new("restart", shape.size), |b| {
        b.iter(|| {
            let (registry, writer) = Registry::start(config(&dir)).expect("restart");
            let aliases = registry.read(|s| s.index.len());
            assert_eq!(aliases, shape.pairs.len());
            stop(registry, writer);
        })
    });

    let (registry, writer) = Registry::start(config(&dir)).expect("start");
    let mut flip = false;
    group.bench_function(BenchmarkId::new("repoint", shape.size), |b| {
        b.iter(|| {
            flip = !flip;
            let target = if flip { "m2" } else { "m1" };
            let command = Command::Put(put(shape.root, target));
            runtime
                .block_on(registry.execute(command, origin.clone()))
                .expect("re-point")
        })
    });
    stop(registry, writer);
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

fn chains(c: &mut Criterion) {
    let shapes = [
        chain(1_000, "chain_1000"),
        chain(2_000, "chain_2000"),
        fan_in(10_000, "fan_in_10000"),
    ];
    // A filter naming a shape (`-- chain_2000`) skips building the others.
    let filter = std::env::args().skip(1).find(|arg| !arg.starts_with('-'));
    let names_shape = |shape: &Shape| {
        filter
            .as_deref()
            .is_some_and(|f| f.contains(shape.label) || shape.label.contains(f))
    };
    let any_named = shapes.iter().any(names_shape);
    for shape in &shapes {
        if !any_named || names_shape(shape) {
            bench_shape(c, shape);
        }
    }
}

criterion_group!(benches, chains);
criterion_main!(benches);
