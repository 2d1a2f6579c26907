//! Request bodies and journal payloads: the HTTP body types, events and
//! snapshots decode or fail cleanly; a batch body the server's own
//! `batch_ops` reads, and that plans, applies cleanly.

#![no_main]

use std::sync::Arc;

use aliasd::command::{plan_batch, BatchOp, Origin, PutAlias};
use aliasd::http::aliases::{batch_ops, PutBody};
use aliasd::http::experimental::ExperimentalAlias;
use aliasd::http::json_body;
use aliasd::index::{Draft, Index, ModelInfo, Models};
use aliasd::name::ModelName;
use libfuzzer_sys::fuzz_target;

const TIME: &str = "2026-01-01T00:00:00Z";

fn models() -> Models {
    let mut models = Models::default();
    for name in ["m", "qwen", "me/coder:q4"] {
        let bytes: Arc<[u8]> = format!("{{\"model\":{name:?}}}").into_bytes().into();
        models.insert(ModelInfo {
            name: ModelName::parse(name).expect("model name"),
            digest: format!("sha256:{}", aliasd::digest::sha256_hex(&bytes)).into(),
            bytes,
            size: Some(1),
            modified_at: TIME.to_string(),
        });
    }
    models
}

/// An index with `a -> m`, `b -> a` and a prefix alias `pre-` -> qwen.
fn index(models: &Models) -> Index {
    let origin = Origin::system("fuzz");
    let mut index = Index::default();
    let ops = [("a", "m", false), ("b", "a", false), ("pre-", "qwen", true)];
    let ops: Vec<BatchOp> = ops
        .iter()
        .map(|(alias, target, prefix_matching)| {
            BatchOp::Put(PutAlias {
                alias: alias.to_string(),
                target: target.to_string(),
                prefix_matching: *prefix_matching,
                if_match: None,
                if_none_match: false,
            })
        })
        .collect();
    let events = {
        let mut draft = Draft::new(&index, 1);
        plan_batch(&mut draft, models, &origin, TIME, &ops).expect("seed batch");
        draft.into_events()
    };
    for event in &events {
        index.apply(event).expect("seed event applies");
    }
    index
}

fuzz_target!(|data: &[u8]| {
    let _ = aliasd::event::Event::decode(data);
    let _ = aliasd::snapshot::decode(data);
    // Bodies read by the rules every route applies, and the batch route's own
    // reading of its body: bytes to ops, as the server does.
    let _ = json_body::<PutBody>(data);
    let _ = json_body::<ExperimentalAlias>(data);
    let Ok(ops) = batch_ops(data) else {
        return;
    };
    let models = models();
    let mut index = index(&models);
    let origin = Origin::system("fuzz");
    let events = {
        let mut draft = Draft::new(&index, index.last_seq() + 1);
        if plan_batch(&mut draft, &models, &origin, TIME, &ops).is_err() {
            return;
        }
        draft.into_events()
    };
    for event in &events {
        let decoded = aliasd::event::Event::decode(&event.encode()).expect("event round-trips");
        assert_eq!(&decoded, event);
        index
            .apply(event)
            .unwrap_or_else(|e| panic!("a planned event does not apply: {e}: {event:?}"));
    }
    let again = aliasd::snapshot::decode(&aliasd::snapshot::encode(&index)).expect("snapshot");
    assert_eq!(again.len(), index.len());
});
