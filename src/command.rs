//! Commands and how they become events: validation in SPEC order, then the
//! events that record the change, chains included.
//!
//! Pure: planning reads a [`Draft`] and the model set and records events into
//! the draft; nothing here does I/O. The registry commits what was planned.

use std::collections::{HashSet, VecDeque};

use crate::event::{new_id, Event, EventType};
use crate::index::{AliasEntry, AliasName, AliasState, AliasView, ChainEnd, DepKey, Draft, Models};
use crate::name::ModelName;
use crate::reconcile::{reconcile_alias, reconcile_prefix, PathState};

/// Who asked for a change: goes into every event it causes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// `<token name>@<addr>`, `anonymous@<addr>`, `watcher` or `startup`.
    pub actor: String,
    /// The request id, for API calls.
    pub request_id: Option<String>,
}

impl Origin {
    /// The origin of changes aliasd finds in the store by itself.
    pub fn system(actor: &str) -> Origin {
        Origin {
            actor: actor.to_string(),
            request_id: None,
        }
    }
}

/// The models on the fleet's other live nodes (SPEC §8), which create and
/// update validation consults beside this node's own store: a target must be
/// a model on at least one live node (or an alias), and an alias must not be
/// named like a model on any. A single host has none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    /// Model key -> the live nodes that have it, sorted.
    models: std::collections::HashMap<String, Vec<String>>,
}

impl Inventory {
    /// Notes that live node `node` has the model `name`.
    pub fn add(&mut self, node: &str, name: &ModelName) {
        let nodes = self.models.entry(name.key()).or_default();
        if let Err(at) = nodes.binary_search_by(|n| n.as_str().cmp(node)) {
            nodes.insert(at, node.to_string());
        }
    }

    /// The live nodes that have the model with this key (none: empty).
    pub fn nodes_with(&self, key: &str) -> &[String] {
        self.models.get(key).map_or(&[], Vec::as_slice)
    }
}

/// Create or retarget one alias.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutAlias {
    /// The alias as typed.
    pub alias: String,
    /// The target as typed.
    pub target: String,
    /// Whether `alias` is a prefix.
    pub prefix_matching: bool,
    /// `If-Match`: the alias must exist (at this seq, if one is given).
    pub if_match: Option<IfMatch>,
    /// `If-None-Match: *`: the alias must not exist.
    pub if_none_match: bool,
}

/// Delete one alias.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteAlias {
    /// The alias as typed.
    pub alias: String,
    /// `If-Match`: the alias must exist (at this seq, if one is given).
    pub if_match: Option<IfMatch>,
}

/// An `If-Match` precondition (RFC 9110 §13.1.1): the alias must exist, and
/// for tags its current seq must be one of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IfMatch {
    /// `If-Match: *`: any current version will do.
    Any,
    /// `If-Match: "<seq>"` or a list `"<seq>", "<seq>"`: only these versions.
    Seqs(Vec<u64>),
}

impl IfMatch {
    /// The tags as the header gives them: `"3"` or `"3", "5"`.
    fn tags(seqs: &[u64]) -> String {
        seqs.iter()
            .map(|seq| format!("\"{seq}\""))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// One operation of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOp {
    /// A put.
    Put(PutAlias),
    /// A delete.
    Delete(DeleteAlias),
}

/// Why a command was refused. Each variant maps to one HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// A name that is not valid (400).
    #[error("{0}")]
    BadName(String),
    /// A request that cannot be carried out as asked (400).
    #[error("{0}")]
    Invalid(String),
    /// The alias would be a cycle (400).
    #[error("{0}")]
    Cycle(String),
    /// The alias would shadow a model (409).
    #[error("{0}")]
    ShadowsModel(String),
    /// Other aliases point at the alias being deleted (409).
    #[error("{0}")]
    HasDependents(String),
    /// An exact alias and a prefix alias would share one spelling (409).
    #[error("{0}")]
    Conflict(String),
    /// The target or alias does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// A precondition (`If-Match`, `If-None-Match`) failed (412).
    #[error("{0}")]
    PreconditionFailed(String),
    /// One op of a batch failed; nothing was applied.
    #[error("op {index}: {error}")]
    InBatch {
        /// The op's position, from 0.
        index: usize,
        /// What was wrong with it.
        error: Box<CommandError>,
    },
}

/// What a put did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutOutcome {
    /// The alias's key and kind, to read it back after the commit.
    pub dep: DepKey,
    /// Whether it was created (not updated or unchanged).
    pub created: bool,
}

/// Parses a name typed as an alias: a model name, or a prefix.
pub fn parse_alias(alias: &str, prefix_matching: bool) -> Result<AliasName, CommandError> {
    if prefix_matching {
        crate::name::is_valid_prefix(alias)
            .map(|_| AliasName::Prefix(alias.to_string()))
            .map_err(|e| CommandError::BadName(e.to_string()))
    } else {
        ModelName::parse(alias)
            .map(AliasName::Exact)
            .map_err(|e| CommandError::BadName(e.to_string()))
    }
}

fn parse_target(target: &str) -> Result<ModelName, CommandError> {
    ModelName::parse(target).map_err(|e| CommandError::BadName(e.to_string()))
}

fn check_precondition(
    existing: Option<&AliasEntry>,
    if_match: Option<&IfMatch>,
    if_none_match: bool,
    shown: &str,
) -> Result<(), CommandError> {
    if if_none_match && existing.is_some() {
        return Err(CommandError::PreconditionFailed(format!(
            "alias {shown:?} already exists (If-None-Match: *)"
        )));
    }
    if let Some(if_match) = if_match {
        match (existing, if_match) {
            (None, IfMatch::Any) => {
                return Err(CommandError::PreconditionFailed(format!(
                    "alias {shown:?} does not exist (If-Match: *)"
                )))
            }
            (None, IfMatch::Seqs(expected)) => {
                return Err(CommandError::PreconditionFailed(format!(
                    "alias {shown:?} does not exist (If-Match: {})",
                    IfMatch::tags(expected)
                )))
            }
            (Some(entry), IfMatch::Seqs(expected)) if !expected.contains(&entry.seq) => {
                return Err(CommandError::PreconditionFailed(format!(
                    "alias {shown:?} is at seq {}, not {} (If-Match)",
                    entry.seq,
                    IfMatch::tags(expected).replace('"', "")
                )))
            }
            (Some(_), _) => {}
        }
    }
    Ok(())
}

/// A new event of `kind` about `alias`, by `origin`, at `time`; the seq is
/// the draft's to give.
pub(crate) fn new_event(
    kind: EventType,
    alias: &AliasName,
    target: Option<&ModelName>,
    origin: &Origin,
    time: &str,
) -> Event {
    Event {
        seq: 0,
        id: new_id(),
        time: time.to_string(),
        kind,
        alias: alias.display(),
        target: target.map(ModelName::display),
        previous_target: None,
        digest: None,
        prefix_matching: alias.is_prefix(),
        actor: origin.actor.clone(),
        request_id: origin.request_id.clone(),
        node: None,
    }
}

/// Plans a put: validates in SPEC order, then records `alias.created` or
/// `alias.updated` and the events of every alias whose chain runs through it.
/// A put that changes nothing records nothing.
pub fn plan_put<'a>(
    draft: &mut Draft<'a>,
    models: &'a Models,
    origin: &Origin,
    time: &str,
    put: &PutAlias,
) -> Result<PutOutcome, CommandError> {
    let alias = parse_alias(&put.alias, put.prefix_matching)?;
    let target = parse_target(&put.target)?;
    let key = alias.key();
    let dep = DepKey::new(alias.is_prefix(), alias.key_arc());
    let existing = draft.entry(&dep).cloned();
    // An alias keeps the spelling it was created with (SPEC §2), whatever
    // spelling retargets it: its file path must not change.
    let alias = existing.as_ref().map_or(alias, |e| e.alias.clone());
    let shown = alias.display();
    check_precondition(
        existing.as_ref(),
        put.if_match.as_ref(),
        put.if_none_match,
        &shown,
    )?;
    let other_kind_exists = match &alias {
        AliasName::Exact(_) => draft.prefix(&put.alias.to_lowercase()).is_some(),
        AliasName::Prefix(prefix) => {
            ModelName::parse(prefix).is_ok_and(|name| draft.exact(&name.key()).is_some())
        }
    };
    if other_kind_exists {
        let (kind, other) = if dep.is_prefix() {
            ("a prefix", "an exact")
        } else {
            ("an exact", "a prefix")
        };
        return Err(CommandError::Conflict(format!(
            "{other} alias spelt {shown:?} exists; {kind} alias cannot share its spelling"
        )));
    }
    if let AliasName::Exact(name) = &alias {
        if name.key() == target.key() {
            return Err(CommandError::Invalid(format!(
                "alias {shown:?} cannot point at itself"
            )));
        }
        if models.contains(&key) {
            return Err(CommandError::ShadowsModel(format!(
                "a model named {shown:?} exists; an alias never shadows a model"
            )));
        }
        if let Some(node) = draft.inventory().and_then(|i| i.nodes_with(&key).first()) {
            return Err(CommandError::ShadowsModel(format!(
                "a model named {shown:?} exists on node {node}; an alias never shadows a \
                 model: choose another alias name"
            )));
        }
    }
    let target_key = target.key();
    let elsewhere = draft
        .inventory()
        .is_some_and(|i| !i.nodes_with(&target_key).is_empty());
    if !models.contains(&target_key) && draft.exact(&target_key).is_none() && !elsewhere {
        let fleet = match draft.inventory() {
            Some(_) => " on any live node of the fleet",
            None => "",
        };
        return Err(CommandError::NotFound(format!(
            "target {:?} is neither a model{fleet} nor an alias",
            target.display()
        )));
    }
    let unchanged = existing.as_ref().is_some_and(|existing| {
        existing.target.key() == target_key && existing.target.display() == target.display()
    });
    // An alias already pointing at this target makes no new cycle.
    if !dep.is_prefix() && !unchanged {
        check_cycle(draft, models, &key, &target, &shown)?;
    }
    if unchanged {
        return Ok(PutOutcome {
            dep,
            created: false,
        });
    }
    let kind = if existing.is_some() {
        EventType::AliasUpdated
    } else {
        EventType::AliasCreated
    };
    let mut event = new_event(kind, &alias, Some(&target), origin, time);
    event.previous_target = existing.as_ref().map(|e| e.target.display());
    if let ChainEnd::Model(model) = draft.chain_end_cached(models, &target) {
        event.digest = Some(model.digest.to_string());
    }
    draft.record(event).map_err(CommandError::Invalid)?;
    if dep.is_prefix() {
        // A prefix create or update replays `active` whatever its digest
        // (journals of earlier versions hold them without one): to a chain
        // that ends at no model, `target.removed` follows in the same commit.
        reconcile_prefix(draft, models, origin, time, dep.key());
    } else {
        propagate(draft, models, origin, time, &key);
    }
    Ok(PutOutcome {
        dep,
        created: existing.is_none(),
    })
}

/// Refuses `alias -> target` when the chain from `target` would come back to
/// `alias`: when `target` is among the aliases whose chain runs through `alias`.
///
/// The walk goes up from `alias` through its dependents rather than down from
/// `target`: a new alias has none (so building a chain of n costs n, not n
/// squared), and re-pointing an alias walks no more aliases than the
/// propagation that follows does.
fn check_cycle(
    draft: &Draft<'_>,
    models: &Models,
    alias_key: &str,
    target: &ModelName,
    shown: &str,
) -> Result<(), CommandError> {
    let target_key = target.key_str();
    // A chain stops at a model: through a model, or from one, nothing comes back.
    if models.contains(target_key) {
        return Ok(());
    }
    let mut seen: HashSet<std::sync::Arc<str>> = HashSet::new();
    let mut queue: VecDeque<std::sync::Arc<str>> =
        VecDeque::from([std::sync::Arc::from(alias_key)]);
    let mut found = false;
    'walk: while let Some(key) = queue.pop_front() {
        for dep in draft.dependents(&key) {
            if dep.is_prefix() || models.contains(dep.key()) {
                continue;
            }
            if **dep.key() == *target_key {
                found = true;
                break 'walk;
            }
            if seen.insert(dep.key().clone()) {
                queue.push_back(dep.key().clone());
            }
        }
    }
    if !found {
        return Ok(());
    }
    // Spell the cycle out, from the target down its chain back to the alias:
    // through the aliases the walk went up, so in at most that many steps.
    let mut path = vec![shown.to_string(), target.display()];
    let mut current = target.clone();
    for _ in 0..=seen.len() {
        match draft.exact(current.key_str()) {
            Some(entry) => current = entry.target.clone(),
            None => break,
        }
        path.push(current.display());
        if current.key_str() == alias_key {
            break;
        }
    }
    Err(CommandError::Cycle(format!(
        "alias {shown:?} would make a cycle: {}",
        path.join(" -> ")
    )))
}

/// Plans a delete: 404 if absent, 412 on a failed `If-Match`, 409 if other
/// aliases point at it.
pub fn plan_delete(
    draft: &mut Draft<'_>,
    origin: &Origin,
    time: &str,
    delete: &DeleteAlias,
) -> Result<(), CommandError> {
    let Some(entry) = lookup(draft, &delete.alias)? else {
        return Err(CommandError::NotFound(format!(
            "alias {:?} not found",
            delete.alias
        )));
    };
    let shown = entry.alias.display();
    check_precondition(Some(&entry), delete.if_match.as_ref(), false, &shown)?;
    if let AliasName::Exact(name) = &entry.alias {
        let dependents = draft.dependents(&name.key());
        if !dependents.is_empty() {
            let names: Vec<String> = dependents
                .iter()
                .filter_map(|d| draft.entry(d).map(|e| e.alias.display()))
                .collect();
            return Err(CommandError::HasDependents(format!(
                "alias {shown:?} is the target of {}; delete or retarget those first, or use a batch",
                names.join(", ")
            )));
        }
    }
    let mut event = new_event(EventType::AliasDeleted, &entry.alias, None, origin, time);
    event.previous_target = Some(entry.target.display());
    event.digest = entry.digest.as_deref().map(String::from);
    draft.record(event).map_err(CommandError::Invalid)?;
    Ok(())
}

/// Finds an alias by the name a user typed: exact, else a prefix alias so spelt.
fn lookup(draft: &Draft<'_>, typed: &str) -> Result<Option<AliasEntry>, CommandError> {
    if let Ok(name) = ModelName::parse(typed) {
        if let Some(entry) = draft.exact(&name.key()) {
            return Ok(Some(entry.clone()));
        }
    }
    if let Some(entry) = draft.prefix(&typed.to_lowercase()) {
        return Ok(Some(entry.clone()));
    }
    // Neither: say why precisely if the name is not even valid.
    match ModelName::parse(typed) {
        Ok(_) => Ok(None),
        Err(e) if crate::name::is_valid_prefix(typed).is_err() => {
            Err(CommandError::BadName(e.to_string()))
        }
        Err(_) => Ok(None),
    }
}

/// Plans a batch, all or nothing: each op is validated against the state the
/// earlier ops leave; the first error rolls every op back.
pub fn plan_batch<'a>(
    draft: &mut Draft<'a>,
    models: &'a Models,
    origin: &Origin,
    time: &str,
    ops: &[BatchOp],
) -> Result<Vec<PutOutcome>, CommandError> {
    let in_batch = |index: usize, error: CommandError| CommandError::InBatch {
        index,
        error: Box::new(error),
    };
    let mut named = HashSet::new();
    for (index, op) in ops.iter().enumerate() {
        let (typed, prefix) = match op {
            BatchOp::Put(put) => (&put.alias, put.prefix_matching),
            BatchOp::Delete(delete) => (&delete.alias, false),
        };
        let key = match parse_alias(typed, prefix) {
            Ok(alias) => alias.key(),
            Err(_) => typed.to_lowercase(),
        };
        if !named.insert(key) {
            return Err(in_batch(
                index,
                CommandError::Invalid(format!("alias {typed:?} is named twice in the batch")),
            ));
        }
    }
    let checkpoint = draft.checkpoint();
    let mut outcomes = Vec::new();
    for (index, op) in ops.iter().enumerate() {
        let res = match op {
            BatchOp::Put(put) => plan_put(draft, models, origin, time, put).map(Some),
            BatchOp::Delete(delete) => plan_delete(draft, origin, time, delete).map(|()| None),
        };
        match res {
            Ok(Some(outcome)) => outcomes.push(outcome),
            Ok(None) => {}
            Err(error) => {
                draft.rollback(checkpoint);
                return Err(in_batch(index, error));
            }
        }
    }
    Ok(outcomes)
}

/// Re-derives every alias whose chain runs through `key` after `key` changed.
/// Their own files are untouched by the change, so they count as `Ours`.
///
/// Each alias is visited once, and its chain's end is found from the draft's
/// memo (its target's, already found), so this costs the aliases touched.
pub fn propagate<'a>(
    draft: &mut Draft<'a>,
    models: &'a Models,
    origin: &Origin,
    time: &str,
    key: &str,
) {
    for dep in draft.transitive_dependents(key) {
        if dep.is_prefix() {
            reconcile_prefix(draft, models, origin, time, dep.key());
            continue;
        }
        let shadowed = draft
            .exact(dep.key())
            .is_some_and(|e| e.state == AliasState::Shadowed);
        if !shadowed {
            reconcile_alias(draft, models, origin, time, dep.key(), &PathState::Ours);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{Index, ModelInfo};
    use std::sync::Arc;

    fn models(names: &[&str]) -> Models {
        let mut models = Models::default();
        for name in names {
            let name = ModelName::parse(name).unwrap();
            let bytes: Arc<[u8]> = Arc::from(name.key().into_bytes());
            models.insert(ModelInfo {
                digest: Arc::from(crate::digest::manifest_digest(&bytes)),
                name,
                bytes,
                size: None,
                modified_at: String::new(),
            });
        }
        models
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

    fn origin() -> Origin {
        Origin::system("test")
    }

    /// Plans puts in order on one draft and returns the result of the last.
    fn check(ms: &Models, puts: &[(&str, &str)], expected: Result<(), &str>) {
        let index = Index::default();
        let mut draft = Draft::new(&index, 1);
        let mut last = Ok(());
        for (alias, target) in puts {
            last = plan_put(
                &mut draft,
                ms,
                &origin(),
                "2026-01-01T00:00:00Z",
                &put(alias, target),
            )
            .map(|_| ());
        }
        match expected {
            Ok(()) => assert_eq!(last, Ok(()), "{puts:?}"),
            Err(fragment) => {
                let err = last.expect_err("should fail").to_string();
                assert!(err.contains(fragment), "{err}");
            }
        }
    }

    #[test]
    fn put_validation_order() {
        let ms = models(&["llama3", "qwen"]);
        check(&ms, &[("coder", "qwen")], Ok(()));
        check(&ms, &[("a b", "qwen")], Err("a b"));
        check(&ms, &[("coder", "coder")], Err("itself"));
        check(&ms, &[("llama3", "qwen")], Err("never shadows"));
        check(
            &ms,
            &[("coder", "nothing")],
            Err("neither a model nor an alias"),
        );
        check(&ms, &[("a", "qwen"), ("b", "a"), ("a", "b")], Err("cycle"));
        check(&ms, &[("a", "qwen"), ("b", "a"), ("c", "b")], Ok(()));
    }

    #[test]
    fn exact_and_prefix_aliases_cannot_share_a_spelling() {
        let ms = models(&["m"]);
        let index = Index::default();
        let mut draft = Draft::new(&index, 1);
        let t = "2026-01-01T00:00:00Z";
        let mut prefix = put("my-", "m");
        prefix.prefix_matching = true;
        plan_put(&mut draft, &ms, &origin(), t, &prefix).unwrap();
        let err = plan_put(&mut draft, &ms, &origin(), t, &put("MY-", "m")).unwrap_err();
        assert!(matches!(err, CommandError::Conflict(_)), "{err}");
    }

    #[test]
    fn idempotent_put_records_nothing() {
        let ms = models(&["qwen"]);
        let index = Index::default();
        let mut draft = Draft::new(&index, 1);
        let t = "2026-01-01T00:00:00Z";
        assert!(
            plan_put(&mut draft, &ms, &origin(), t, &put("c", "qwen"))
                .unwrap()
                .created
        );
        assert!(
            !plan_put(&mut draft, &ms, &origin(), t, &put("c", "qwen"))
                .unwrap()
                .created
        );
        assert_eq!(draft.into_events().len(), 1);
    }

    #[test]
    fn retarget_propagates_along_chains() {
        let ms = models(&["m1", "m2"]);
        let index = Index::default();
        let mut draft = Draft::new(&index, 1);
        let t = "2026-01-01T00:00:00Z";
        plan_put(&mut draft, &ms, &origin(), t, &put("a", "m1")).unwrap();
        plan_put(&mut draft, &ms, &origin(), t, &put("b", "a")).unwrap();
        plan_put(&mut draft, &ms, &origin(), t, &put("a", "m2")).unwrap();
        let kinds: Vec<EventType> = draft.into_events().iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [
                EventType::AliasCreated,
                EventType::AliasCreated,
                EventType::AliasUpdated,
                EventType::TargetChanged
            ]
        );
    }

    #[test]
    fn retarget_keeps_the_first_spelling() {
        let ms = models(&["m1", "m2"]);
        let index = Index::default();
        let mut draft = Draft::new(&index, 1);
        let t = "2026-01-01T00:00:00Z";
        plan_put(&mut draft, &ms, &origin(), t, &put("Coder", "m1")).unwrap();
        plan_put(&mut draft, &ms, &origin(), t, &put("library/CODER", "m2")).unwrap();
        let aliases: Vec<String> = draft.into_events().into_iter().map(|e| e.alias).collect();
        assert_eq!(aliases, ["Coder", "Coder"]);
    }

    #[test]
    fn delete_refuses_when_aliases_depend() {
        let ms = models(&["m"]);
        let index = Index::default();
        let mut draft = Draft::new(&index, 1);
        let t = "2026-01-01T00:00:00Z";
        plan_put(&mut draft, &ms, &origin(), t, &put("a", "m")).unwrap();
        plan_put(&mut draft, &ms, &origin(), t, &put("b", "a")).unwrap();
        let delete = |alias: &str| DeleteAlias {
            alias: alias.into(),
            if_match: None,
        };
        let err = plan_delete(&mut draft, &origin(), t, &delete("a")).unwrap_err();
        assert!(
            matches!(err, CommandError::HasDependents(ref m) if m.contains("\"b\"") || m.contains("b"))
        );
        assert!(matches!(
            plan_delete(&mut draft, &origin(), t, &delete("zzz")),
            Err(CommandError::NotFound(_))
        ));
        let ops = [BatchOp::Delete(delete("b")), BatchOp::Delete(delete("a"))];
        assert!(plan_batch(&mut draft, &ms, &origin(), t, &ops).is_ok());
    }

    #[test]
    fn failed_batch_applies_nothing() {
        let ms = models(&["m"]);
        let index = Index::default();
        let mut draft = Draft::new(&index, 1);
        let t = "2026-01-01T00:00:00Z";
        let ops = [
            BatchOp::Put(put("a", "m")),
            BatchOp::Put(put("b", "a")),
            BatchOp::Put(put("c", "missing")),
        ];
        let err = plan_batch(&mut draft, &ms, &origin(), t, &ops).unwrap_err();
        assert!(err.to_string().starts_with("op 2:"), "{err}");
        assert!(draft.into_events().is_empty());
    }

    #[test]
    fn reconcile_emits_one_event_per_change() {
        let ms = models(&["m"]);
        let mut index = Index::default();
        let t = "2026-01-01T00:00:00Z";
        {
            let mut draft = Draft::new(&index, 1);
            plan_put(&mut draft, &ms, &origin(), t, &put("a", "m")).unwrap();
            for e in draft.into_events() {
                index.apply(&e).unwrap();
            }
        }
        let key = ModelName::parse("a").unwrap().key();
        let kinds = |ms: &Models, state: PathState| {
            let mut draft = Draft::new(&index, 2);
            reconcile_alias(&mut draft, ms, &origin(), t, &key, &state);
            draft
                .into_events()
                .iter()
                .map(|e| e.kind)
                .collect::<Vec<_>>()
        };
        assert_eq!(kinds(&ms, PathState::Ours), []);
        assert_eq!(kinds(&ms, PathState::Absent), [EventType::AliasRepaired]);
        assert_eq!(kinds(&ms, PathState::Foreign), [EventType::AliasShadowed]);
        assert_eq!(
            kinds(&Models::default(), PathState::Ours),
            [EventType::TargetRemoved]
        );
        assert_eq!(kinds(&models(&["other", "m:latest"]), PathState::Ours), []);
    }

    /// Every exact alias of `names` in the draft says what its chain says:
    /// active with the model's digest when it ends at a model, else dangling.
    #[track_caller]
    fn check_derived(draft: &mut Draft<'_>, ms: &Models, names: &[&str]) {
        for name in names {
            let key = ModelName::parse(name).unwrap().key();
            let Some(entry) = draft.exact(&key).cloned() else {
                continue;
            };
            let end = draft.chain_end(ms, &entry.target);
            match &end {
                ChainEnd::Model(model) => {
                    assert_eq!(entry.state, AliasState::Active, "{name}");
                    assert_eq!(entry.digest.as_ref(), Some(&model.digest), "{name}");
                }
                _ => {
                    assert_eq!(entry.state, AliasState::Dangling, "{name}");
                    assert_eq!(entry.digest, None, "{name}");
                }
            }
        }
    }

    /// The down-the-chain walk the cycle check used to make: whether the chain
    /// from `target` comes back to `alias`.
    fn makes_cycle(draft: &Draft<'_>, ms: &Models, alias: &str, target: &str) -> bool {
        let alias_key = ModelName::parse(alias).unwrap().key();
        let mut current = ModelName::parse(target).unwrap();
        let mut seen = HashSet::new();
        loop {
            let key = current.key();
            if key == alias_key {
                return true;
            }
            if ms.contains(&key) || !seen.insert(key.clone()) {
                return false;
            }
            match draft.exact(&key) {
                None => return false,
                Some(entry) => current = entry.target.clone(),
            }
        }
    }

    #[test]
    fn a_chain_built_and_repointed_in_one_draft_ends_right() {
        let ms = models(&["m1", "m2"]);
        let index = Index::default();
        let mut draft = Draft::new(&index, 1);
        let t = "2026-01-01T00:00:00Z";
        let names: Vec<String> = (0..200).map(|i| format!("c{i}")).collect();
        let ops: Vec<BatchOp> = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let target = if i == 0 { "m1" } else { &names[i - 1] };
                BatchOp::Put(put(name, target))
            })
            .collect();
        plan_batch(&mut draft, &ms, &origin(), t, &ops).unwrap();
        let all: Vec<&str> = names.iter().map(String::as_str).collect();
        check_derived(&mut draft, &ms, &all);
        // Re-pointed mid-chain and at the root, in the same draft: what was
        // learnt of the chains before must not be reused.
        plan_put(&mut draft, &ms, &origin(), t, &put("c100", "m2")).unwrap();
        check_derived(&mut draft, &ms, &all);
        plan_put(&mut draft, &ms, &origin(), t, &put("c0", "m2")).unwrap();
        plan_put(&mut draft, &ms, &origin(), t, &put("c100", "c99")).unwrap();
        check_derived(&mut draft, &ms, &all);
        // A failed batch that re-pointed the root first is rolled back whole.
        let failing = [
            BatchOp::Put(put("c0", "m1")),
            BatchOp::Put(put("new", "missing")),
        ];
        plan_batch(&mut draft, &ms, &origin(), t, &failing).unwrap_err();
        check_derived(&mut draft, &ms, &all);
        let deepest = ModelName::parse("c199").unwrap().key();
        let m2 = ms.get(&ModelName::parse("m2").unwrap().key()).unwrap();
        assert_eq!(
            draft.exact(&deepest).unwrap().digest,
            Some(m2.digest.clone())
        );
    }

    #[test]
    fn creating_the_name_dangling_aliases_point_at_restores_them() {
        let t = "2026-01-01T00:00:00Z";
        // `c -> b -> x`, made while `x` was a model; `x` has since gone.
        let with_x = models(&["x"]);
        let mut index = Index::default();
        {
            let mut draft = Draft::new(&index, 1);
            plan_put(&mut draft, &with_x, &origin(), t, &put("b", "x")).unwrap();
            plan_put(&mut draft, &with_x, &origin(), t, &put("c", "b")).unwrap();
            for e in draft.into_events() {
                index.apply(&e).unwrap();
            }
        }
        let ms = models(&["m1"]);
        let mut draft = Draft::new(&index, 3);
        for name in ["b", "c"] {
            let key = ModelName::parse(name).unwrap().key();
            reconcile_alias(&mut draft, &ms, &origin(), t, &key, &PathState::Ours);
        }
        check_derived(&mut draft, &ms, &["b", "c"]);
        // A cycle through the name that is not there: `x -> c -> b -> x`.
        let err = plan_put(&mut draft, &ms, &origin(), t, &put("x", "c")).unwrap_err();
        assert_eq!(
            err,
            CommandError::Cycle("alias \"x\" would make a cycle: x -> c -> b -> x".into())
        );
        // `x` made an alias of a model: both chains now end there.
        plan_put(&mut draft, &ms, &origin(), t, &put("x", "m1")).unwrap();
        check_derived(&mut draft, &ms, &["x", "b", "c"]);
        let kinds: Vec<EventType> = draft.into_events().iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [
                EventType::TargetRemoved,
                EventType::TargetRemoved,
                EventType::AliasCreated,
                EventType::TargetRestored,
                EventType::TargetRestored
            ]
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]

        /// Any commands, single or in batches, planned on one draft (as a
        /// group is): the cycle check refuses exactly what the chain walk
        /// finds, and after each command every alias is what its chain says
        /// (the draft's memo of chain ends never answers from a stale chain).
        #[test]
        fn chains_stay_derived_whatever_the_commands(
            commands in proptest::collection::vec(
                proptest::collection::vec((0u8..4, 0usize..6, 0usize..9), 1..4),
                1..40,
            ),
        ) {
            const ALIASES: [&str; 6] = ["a", "b", "c", "d", "e", "f"];
            const TARGETS: [&str; 9] = ["a", "b", "c", "d", "e", "f", "m1", "m2", "x"];
            let ms = models(&["m1", "m2"]);
            let index = Index::default();
            let mut draft = Draft::new(&index, 1);
            let t = "2026-01-01T00:00:00Z";
            for ops in commands {
                let ops: Vec<BatchOp> = ops
                    .into_iter()
                    .map(|(kind, alias, target)| {
                        let alias = ALIASES[alias];
                        if kind == 0 {
                            BatchOp::Delete(DeleteAlias { alias: alias.into(), if_match: None })
                        } else {
                            BatchOp::Put(put(alias, TARGETS[target]))
                        }
                    })
                    .collect();
                let checkpoint = draft.checkpoint();
                let res = match ops.as_slice() {
                    [BatchOp::Put(one)] => {
                        let cycle = makes_cycle(&draft, &ms, &one.alias, &one.target);
                        let res = plan_put(&mut draft, &ms, &origin(), t, one).map(|_| ());
                        match &res {
                            Err(CommandError::Cycle(_)) => proptest::prop_assert!(cycle),
                            Ok(()) => proptest::prop_assert!(!cycle),
                            Err(_) => {}
                        }
                        res
                    }
                    [BatchOp::Delete(one)] => plan_delete(&mut draft, &origin(), t, one),
                    _ => plan_batch(&mut draft, &ms, &origin(), t, &ops).map(|_| ()),
                };
                if res.is_err() {
                    draft.rollback(checkpoint);
                }
                for name in ALIASES {
                    let key = ModelName::parse(name).unwrap().key();
                    let Some(entry) = draft.exact(&key).cloned() else { continue };
                    let cached = draft.chain_end_cached(&ms, &entry.target);
                    proptest::prop_assert_eq!(cached, draft.chain_end(&ms, &entry.target));
                }
                check_derived(&mut draft, &ms, &ALIASES);
            }
        }
    }
}
