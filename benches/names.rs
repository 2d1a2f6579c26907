//! Parsing Ollama names: every request, replayed event and snapshot entry
//! parses at least one. `cargo bench --bench names` (criterion).

use aliasd::name::ModelName;
use criterion::{black_box, criterion_group, criterion_main, Criterion};

fn parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("name");
    for (label, name) in [
        ("short", "coder"),
        (
            "full",
            "registry.ollama.ai/library/qwen2.5-coder:32b-instruct-q4_K_M",
        ),
        ("mixed_case", "Me/Coder:Q4"),
    ] {
        group.bench_function(format!("parse_{label}"), |b| {
            b.iter(|| ModelName::parse(black_box(name)).unwrap())
        });
    }
    let name = ModelName::parse("me/coder:q4").unwrap();
    group.bench_function("display", |b| b.iter(|| black_box(&name).display()));
    group.finish();
}

criterion_group!(benches, parse);
criterion_main!(benches);
