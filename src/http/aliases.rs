//! The resource API: `/api/aliases`, `/api/resolve`, `/api/models`, `/healthz`.

use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use crate::command::{BatchOp, DeleteAlias, IfMatch, PutAlias};
use crate::http::{
    json_body, read_body, ApiError, AppJson, AppState, JsonObject, PathName, RequestOrigin,
};
use crate::index::{
    format_time, AliasEntry, AliasState, AliasView, ChainEnd, ChainEnds, Index, Models,
};
use crate::registry::{Command, Reply, View};

/// An alias on the wire (SPEC §5 "Alias").
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AliasBody {
    /// The alias, as spelt when created.
    pub alias: String,
    /// Its direct target.
    pub target: String,
    /// The model at the end of its chain, null when dangling.
    pub resolved: Option<String>,
    /// `active`, `dangling` or `shadowed`.
    pub state: String,
    /// The digest of its materialized manifest.
    pub digest: Option<String>,
    /// Whether it is a prefix alias.
    pub prefix_matching: bool,
    /// When it was created.
    pub created_at: String,
    /// When it last changed.
    pub updated_at: String,
    /// The last event that touched it.
    pub seq: u64,
    /// In a fleet (`GET /api/aliases/{name}`), its state on each node;
    /// `state` and `digest` above are the answering node's. Absent on a
    /// single host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<std::collections::BTreeMap<String, crate::http::nodes::NodeAliasState>>,
}

impl AliasBody {
    /// The wire shape of an index entry (its chain walked to the end; for
    /// many entries, [`AliasBody::from_resolved`] with [`ChainEnds`]).
    pub fn from_entry(index: &Index, models: &Models, entry: &AliasEntry) -> AliasBody {
        AliasBody::from_resolved(entry, &index.chain_end(models, &entry.target))
    }

    /// The wire shape of an index entry whose chain ends at `end`.
    pub fn from_resolved(entry: &AliasEntry, end: &ChainEnd<'_>) -> AliasBody {
        let resolved = match end {
            ChainEnd::Model(model) => Some(model.name.display()),
            _ => None,
        };
        AliasBody {
            alias: entry.alias.display(),
            target: entry.target.display(),
            resolved,
            state: entry.state.as_str().to_string(),
            digest: entry.digest.as_deref().map(String::from),
            prefix_matching: entry.alias.is_prefix(),
            created_at: format_time(entry.created_at),
            updated_at: format_time(entry.updated_at),
            seq: entry.seq,
            nodes: None,
        }
    }
}

fn body_of(state: &AppState, entry: &AliasEntry) -> AliasBody {
    state
        .registry
        .read(|s| AliasBody::from_entry(&s.index, &s.models, entry))
}

/// Filters of `GET /api/aliases`.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    target: Option<String>,
    state: Option<String>,
    at_seq: Option<u64>,
}

/// `GET /api/aliases`.
pub async fn aliases_list(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(query) = query?;
    let wanted_state = match &query.state {
        None => None,
        Some(s) => Some(AliasState::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "state must be active, dangling or shadowed, not {s:?}"
            ))
        })?),
    };
    let wanted_target = match &query.target {
        None => None,
        Some(t) => Some(
            crate::name::ModelName::parse(t)
                .map_err(|e| ApiError::bad_request(e.to_string()))?
                .key(),
        ),
    };
    let keep = |e: &AliasEntry| {
        wanted_state.is_none_or(|s| e.state == s)
            && wanted_target
                .as_deref()
                .is_none_or(|t| e.target.key_str() == t)
    };
    // At or after the index's last event, the past is the present: no replay.
    let live = state.registry.read(|s| {
        let latest = s.index.last_seq();
        match query.at_seq {
            Some(seq) if seq > latest => Err(ApiError::bad_request(format!(
                "at_seq {seq} is beyond the latest event, seq {latest}"
            ))),
            Some(seq) if seq < latest => Ok(None),
            _ => Ok(Some(copy_list(&s.index, &s.models, &keep))),
        }
    })?;
    let aliases: Vec<AliasBody> = match live {
        Some(copied) => with_nodes(&state, render_list(copied)),
        None => {
            // Only reached with `at_seq` (without it the live index answers).
            let seq = query.at_seq.unwrap_or_default();
            let (index, models) = index_at(&state, seq).await?;
            list(&index, &models, &keep)
        }
    };
    Ok(Json(serde_json::json!({ "aliases": aliases })))
}

/// In a fleet, each alias's `nodes` map (the dashboard shows the state per
/// node); on a single host the bodies as they are.
fn with_nodes(state: &AppState, mut bodies: Vec<AliasBody>) -> Vec<AliasBody> {
    if state.registry.nodes().is_none() {
        return bodies;
    }
    state.registry.read(|s| {
        for body in &mut bodies {
            if let Some(entry) = s.index.lookup(&body.alias) {
                body.nodes = crate::http::nodes::nodes_map(state, &s.index, entry);
            }
        }
    });
    bodies
}

/// The Alias bodies of the entries `keep` keeps, sorted by alias: what
/// `GET /api/aliases` answers. Each chain is walked once for all of them
/// ([`ChainEnds`]), so a chain of n costs n steps, not n squared.
pub fn list(index: &Index, models: &Models, keep: &impl Fn(&AliasEntry) -> bool) -> Vec<AliasBody> {
    render_list(copy_list(index, models, keep))
}

/// What a listing needs of each alias kept: the entry and the model its
/// chain ends at, copied out of the index (cheap: shared strings), so that
/// the lock is held only for that, not for sorting and formatting.
pub fn copy_list(
    index: &Index,
    models: &Models,
    keep: &impl Fn(&AliasEntry) -> bool,
) -> Vec<(AliasEntry, Option<crate::name::ModelName>)> {
    let mut ends = ChainEnds::new(models);
    index
        .entries()
        .filter(|e| keep(e))
        .map(|e| {
            let resolved = match ends.end_of(index, &e.target) {
                ChainEnd::Model(model) => Some(model.name.clone()),
                _ => None,
            };
            (e.clone(), resolved)
        })
        .collect()
}

/// The listing's wire shape, sorted by display name (case-insensitively),
/// from what [`copy_list`] copied out; needs no lock.
pub fn render_list(copied: Vec<(AliasEntry, Option<crate::name::ModelName>)>) -> Vec<AliasBody> {
    let mut bodies: Vec<(String, AliasBody)> = copied
        .into_iter()
        .map(|(entry, resolved)| {
            let mut body = AliasBody::from_resolved(&entry, &ChainEnd::Cycle);
            body.resolved = resolved.map(|name| name.display());
            (body.alias.to_lowercase(), body)
        })
        .collect();
    bodies.sort_by(|a, b| a.0.cmp(&b.0));
    bodies.into_iter().map(|(_, body)| body).collect()
}

/// Time-travel replays answered at once; past it, 503.
const TIME_TRAVEL_AT_ONCE: usize = 2;
/// The permits of [`TIME_TRAVEL_AT_ONCE`].
static TIME_TRAVEL: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(TIME_TRAVEL_AT_ONCE);

/// The index as it was right after event `seq`, rebuilt from the newest
/// snapshot at or below it and the events after that.
async fn index_at(state: &AppState, seq: u64) -> Result<(Index, Models), ApiError> {
    let log = state.registry.log().clone();
    // Each replay builds a whole index: only a few at once, whoever asks.
    let Ok(_permit) = TIME_TRAVEL.try_acquire() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{TIME_TRAVEL_AT_ONCE} time-travel requests (?at_seq=) are being answered already; retry in a moment"
            ),
        ));
    };
    let models = state.registry.read(|s| s.models.clone());
    let index = tokio::task::spawn_blocking(move || crate::registry::index_at(&*log, seq))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| match e {
            // Without a snapshot at or below `seq` whose later events are
            // all held, the state at `seq` cannot be rebuilt.
            crate::registry::TimeTravelError::Gone { first } => ApiError::new(
                StatusCode::GONE,
                format!(
                    "history before seq {first} is no longer retained (--retain), so the registry as of seq {seq} cannot be rebuilt; ask for a later seq"
                ),
            ),
            crate::registry::TimeTravelError::Failed(e) => {
                tracing::error!("time travel replay failed: {e}");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "replaying the journal failed",
                )
            }
        })?;
    Ok((index, models))
}

/// `GET /api/aliases/{name}`.
pub async fn alias_get(
    State(state): State<AppState>,
    PathName(name): PathName,
) -> Result<Response, ApiError> {
    let found = state.registry.read(|s: &View| {
        s.index.lookup(&name).map(|e| {
            let mut body = AliasBody::from_entry(&s.index, &s.models, e);
            body.nodes = crate::http::nodes::nodes_map(&state, &s.index, e);
            body
        })
    });
    match found {
        Some(body) => Ok(with_etag(StatusCode::OK, body)),
        None => Err(not_found_or_bad_name(&name)),
    }
}

/// 404 for a name no alias has; 400 naming the bad part if it is neither a
/// valid name nor a valid prefix (SPEC §2), as `DELETE` answers.
fn not_found_or_bad_name(name: &str) -> ApiError {
    match crate::name::ModelName::parse(name) {
        Err(e) if crate::name::is_valid_prefix(name).is_err() => {
            ApiError::bad_request(e.to_string())
        }
        _ => ApiError::not_found(format!("alias {name:?} not found")),
    }
}

fn with_etag(status: StatusCode, body: AliasBody) -> Response {
    let etag = format!("\"{}\"", body.seq);
    let mut response = (status, Json(body)).into_response();
    if let Ok(value) = HeaderValue::from_str(&etag) {
        response
            .headers_mut()
            .insert(axum::http::header::ETAG, value);
    }
    response
}

/// The body of `PUT /api/aliases/{name}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutBody {
    target: String,
    #[serde(default)]
    prefix_matching: bool,
}

/// `If-Match`: `*` (the alias must exist), or one tag `"<seq>"` as the ETag
/// gives it, or a comma-separated list of them (any may match, RFC 9110
/// §13.1.1); anything else is a 400 naming the header, rather than a
/// precondition that silently matches nothing.
fn if_match(headers: &HeaderMap) -> Result<Option<IfMatch>, ApiError> {
    let Some(value) = headers.get(axum::http::header::IF_MATCH) else {
        return Ok(None);
    };
    let bad = || {
        ApiError::bad_request(format!(
            "the If-Match header {value:?} is not * or ETags of an alias; send the \"<seq>\" its ETag gave (several separated by commas), or *"
        ))
    };
    let value = value.to_str().map_err(|_| bad())?.trim();
    if value == "*" {
        return Ok(Some(IfMatch::Any));
    }
    let seqs = value
        .split(',')
        .map(|tag| {
            let tag = tag.trim();
            let tag = tag.strip_prefix("W/").unwrap_or(tag);
            let tag = tag
                .strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                .unwrap_or(tag);
            if tag.is_empty() || !tag.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            tag.parse::<u64>().map_err(|_| bad())
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(IfMatch::Seqs(seqs)))
}

fn if_none_match_any(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() == "*")
}

/// `PUT /api/aliases/{name}`: 201 created, 200 updated or unchanged.
pub async fn alias_put(
    State(state): State<AppState>,
    RequestOrigin(origin): RequestOrigin,
    PathName(name): PathName,
    headers: HeaderMap,
    AppJson(body): AppJson<PutBody>,
) -> Result<Response, ApiError> {
    let put = PutAlias {
        alias: name,
        target: body.target,
        prefix_matching: body.prefix_matching,
        if_match: if_match(&headers)?,
        if_none_match: if_none_match_any(&headers),
    };
    match state.registry.execute(Command::Put(put), origin).await? {
        Reply::Put { entry, created, .. } => {
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(with_etag(status, body_of(&state, &entry)))
        }
        other => Err(unexpected(other)),
    }
}

/// `DELETE /api/aliases/{name}`.
pub async fn alias_delete(
    State(state): State<AppState>,
    RequestOrigin(origin): RequestOrigin,
    PathName(name): PathName,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let delete = DeleteAlias {
        alias: name,
        if_match: if_match(&headers)?,
    };
    state
        .registry
        .execute(Command::Delete(delete), origin)
        .await?;
    Ok(Json(serde_json::json!({ "deleted": true })))
}

/// The body of `POST /api/aliases`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    ops: Vec<JsonObject<OpBody>>,
}

/// One op of a batch.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum OpBody {
    /// Create or retarget.
    Put {
        /// The alias.
        alias: String,
        /// Its target.
        target: String,
        /// Whether it is a prefix alias.
        #[serde(default)]
        prefix_matching: bool,
    },
    /// Delete.
    Delete {
        /// The alias.
        alias: String,
    },
}

/// The ops of a `POST /api/aliases` body, read from its bytes exactly as the
/// route reads them: [`json_body`]'s rules (one JSON object), each op a JSON
/// object, at least one op. The fuzz target calls this too, so that what it
/// plans is what the server would.
///
/// # Errors
///
/// A 400 saying what is wrong with the body.
pub fn batch_ops(body: &[u8]) -> Result<Vec<BatchOp>, ApiError> {
    let BatchBody { ops } = json_body(body)?;
    if ops.is_empty() {
        return Err(ApiError::bad_request("a batch needs at least one op"));
    }
    Ok(ops
        .into_iter()
        .map(|JsonObject(op)| match op {
            OpBody::Put {
                alias,
                target,
                prefix_matching,
            } => BatchOp::Put(PutAlias {
                alias,
                target,
                prefix_matching,
                if_match: None,
                if_none_match: false,
            }),
            OpBody::Delete { alias } => BatchOp::Delete(DeleteAlias {
                alias,
                if_match: None,
            }),
        })
        .collect())
}

/// `POST /api/aliases`: a batch, all or nothing.
pub async fn aliases_batch(
    State(state): State<AppState>,
    RequestOrigin(origin): RequestOrigin,
    request: Request,
) -> Result<Json<serde_json::Value>, ApiError> {
    let ops = batch_ops(&read_body(request).await?)?;
    match state.registry.execute(Command::Batch(ops), origin).await? {
        Reply::Batch(entries) => {
            // One memo for the whole batch: its puts may build a long chain.
            let aliases: Vec<AliasBody> = state.registry.read(|s| {
                let mut ends = ChainEnds::new(&s.models);
                entries
                    .iter()
                    .map(|e| AliasBody::from_resolved(e, &ends.end_of(&s.index, &e.target)))
                    .collect()
            });
            Ok(Json(serde_json::json!({ "aliases": aliases })))
        }
        other => Err(unexpected(other)),
    }
}

fn unexpected(reply: Reply) -> ApiError {
    tracing::error!("unexpected reply from the registry: {reply:?}");
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
}

/// The body of `GET /api/resolve/{name}`, borrowed from the resolution.
#[derive(Debug, Serialize)]
pub struct ResolveBody<'a> {
    /// The name asked, in display form.
    pub name: &'a str,
    /// The model at the end of the chain.
    pub resolved: &'a str,
    /// Display names from the asked name to the model, both included.
    pub chain: &'a [String],
    /// `model`, `alias` or `prefix`.
    pub via: &'static str,
    /// The model's manifest digest.
    pub digest: &'a str,
}

impl ResolveBody<'_> {
    /// The body's JSON, written directly: the same bytes as serde_json's, for
    /// about a third of the instructions (callgrind: serde_json's generic
    /// string escaping alone was 6% of a resolve request).
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            96 + self.name.len()
                + self.resolved.len()
                + self.digest.len()
                + self.chain.iter().map(|s| s.len() + 3).sum::<usize>(),
        );
        out.extend_from_slice(b"{\"name\":");
        push_json_str(&mut out, self.name);
        out.extend_from_slice(b",\"resolved\":");
        push_json_str(&mut out, self.resolved);
        out.extend_from_slice(b",\"chain\":[");
        for (i, step) in self.chain.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            push_json_str(&mut out, step);
        }
        out.extend_from_slice(b"],\"via\":");
        push_json_str(&mut out, self.via);
        out.extend_from_slice(b",\"digest\":");
        push_json_str(&mut out, self.digest);
        out.push(b'}');
        out
    }
}

/// Appends `value` as a JSON string: as is between quotes when nothing in it
/// needs escaping (names and digests never do), else through serde_json.
fn push_json_str(out: &mut Vec<u8>, value: &str) {
    // No early exit: the compiler turns a full fold into a vector loop.
    let needs_escape = value.bytes().fold(false, |any, b| {
        any | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if !needs_escape {
        out.push(b'"');
        out.extend_from_slice(value.as_bytes());
        out.push(b'"');
    } else {
        // Writing a string into a Vec cannot fail.
        serde_json::to_writer(&mut *out, value).expect("a string serializes");
    }
}

/// `GET /api/resolve/{name}`.
///
/// A resolution's answer is kept, rendered, for the next request that asks
/// the same name ([`ResolveCache`]): the answer depends only on the name,
/// the index and the models, and it is served again only while the index
/// and the models are the ones it was computed from (their stamps, read
/// under the same read lock as the answer). Errors are computed every time.
pub async fn resolve_get(
    State(state): State<AppState>,
    PathName(name): PathName,
) -> Result<Response, ApiError> {
    resolve_answer(&state, &name)
}

/// The answer to `GET /api/resolve/{name}` for the decoded `name`: what
/// [`resolve_get`] answers, and resolve's fast path
/// ([`crate::http::fast_path`]) too, once the request passed the same checks.
///
/// # Errors
///
/// A bad name (400), or a name that does not resolve (404, 409...).
pub fn resolve_answer(state: &AppState, name: &str) -> Result<Response, ApiError> {
    let answer = state.registry.read(|s| {
        let stamps = (s.index.stamp(), s.models.stamp());
        if let Some((body, length)) = ResolveCache::get(name, stamps) {
            return Ok(Answer::Kept(body, length));
        }
        // A bad name is a 400 here as on every route (SPEC §5), not a 404.
        crate::name::ModelName::parse(name).map_err(|e| ApiError::bad_request(e.to_string()))?;
        let resolution = s.index.resolve(&s.models, name)?;
        Ok::<_, ApiError>(Answer::Fresh(resolution, stamps))
    })?;
    let (body, length) = match answer {
        Answer::Kept(body, length) => (body, length),
        Answer::Fresh(resolution, stamps) => {
            let resolved = resolution.resolved.display();
            let body = ResolveBody {
                name: resolution.chain.first().map_or(name, |first| first),
                resolved: &resolved,
                chain: &resolution.chain,
                via: resolution.via.as_str(),
                digest: &resolution.digest,
            };
            let body = axum::body::Bytes::from(body.to_json());
            let length = HeaderValue::from(body.len());
            ResolveCache::put(name, stamps, &body, &length);
            (body, length)
        }
    };
    let mut response = Response::new(axum::body::Body::from(body));
    let headers = response.headers_mut();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // What axum's route would write from the body's size, kept with the
    // body: a new header value is an allocation.
    headers.insert(axum::http::header::CONTENT_LENGTH, length);
    Ok(response)
}

/// What `resolve_get` finds under the registry's read lock.
enum Answer {
    /// A kept answer, still current, and its `Content-Length`.
    Kept(axum::body::Bytes, HeaderValue),
    /// A resolution to render, with the stamps it was computed under.
    Fresh(crate::index::Resolution, Stamps),
}

/// The stamps of the index and of the models ([`crate::index::Stamp`]).
type Stamps = (crate::index::Stamp, crate::index::Stamp);

/// The most answers [`ResolveCache`] keeps on one thread; past it, it
/// starts again empty.
const RESOLVE_CACHE_ENTRIES: usize = 1024;

/// Rendered answers of `GET /api/resolve/{name}`, by the name as asked,
/// each with the stamps of the index and models it was computed from
/// ([`crate::index::Stamp`]). One per thread (the runtime's workers), so
/// that a lookup takes no lock and shares no cache line with the other
/// workers; each thread's copy is checked against the stamps all the same.
///
/// What it saves a request: parsing the name, walking the chain, the
/// display forms of its names, and writing the JSON.
struct ResolveCache {
    answers: std::collections::HashMap<Box<str>, CachedAnswer, foldhash::fast::RandomState>,
}

/// One answer kept by [`ResolveCache`].
struct CachedAnswer {
    stamps: Stamps,
    body: axum::body::Bytes,
    /// The body's length, as its `Content-Length`.
    length: HeaderValue,
}

thread_local! {
    static RESOLVE_CACHE: std::cell::RefCell<ResolveCache> = std::cell::RefCell::new(ResolveCache {
        answers: Default::default(),
    });
}

impl ResolveCache {
    /// The answer kept for `name`, if it was computed from an index and
    /// models with these stamps.
    fn get(name: &str, stamps: Stamps) -> Option<(axum::body::Bytes, HeaderValue)> {
        RESOLVE_CACHE.with(|cache| {
            let cache = cache.borrow();
            let answer = cache.answers.get(name)?;
            (answer.stamps == stamps).then(|| (answer.body.clone(), answer.length.clone()))
        })
    }

    /// Keeps `body` (of `length`) as the answer for `name` under these stamps.
    fn put(name: &str, stamps: Stamps, body: &axum::body::Bytes, length: &HeaderValue) {
        RESOLVE_CACHE.with(|cache| {
            let mut cache = cache.borrow_mut();
            if let Some(answer) = cache.answers.get_mut(name) {
                *answer = CachedAnswer {
                    stamps,
                    body: body.clone(),
                    length: length.clone(),
                };
                return;
            }
            if cache.answers.len() >= RESOLVE_CACHE_ENTRIES {
                cache.answers.clear();
            }
            cache.answers.insert(
                name.into(),
                CachedAnswer {
                    stamps,
                    body: body.clone(),
                    length: length.clone(),
                },
            );
        });
    }
}

/// `GET /api/models`: the models in the store and the aliases ending at each.
pub async fn models_list(State(state): State<AppState>) -> Json<serde_json::Value> {
    let models: Vec<serde_json::Value> = state.registry.read(|s| {
        s.models
            .sorted()
            .into_iter()
            .map(|model| {
                let mut aliases: Vec<String> = s
                    .index
                    .transitive_dependents(&model.name.key())
                    .iter()
                    .filter_map(|d| s.index.entry(d))
                    .map(|e| e.alias.display())
                    .collect();
                aliases.sort_by_key(|a| a.to_lowercase());
                serde_json::json!({
                    "name": model.name.display(),
                    "digest": &*model.digest,
                    "size": model.size,
                    "modified_at": model.modified_at,
                    "aliases": aliases,
                })
            })
            .collect()
    });
    Json(serde_json::json!({ "models": models }))
}

/// `GET /healthz`: 200 `{"status":"ok","seq":N}`, or, once the journal was
/// found removed or damaged under the server (every write is then refused, while
/// reads go on), 503 `{"status":"degraded","seq":N,"reason":"..."}`: a load
/// balancer or supervisor that acts on the status takes it out of service or
/// restarts it, which is the remedy.
///
/// In a fleet (SPEC §8), NATS unreachable answers 200
/// `{"status":"degraded","seq":N,"reason":"..."}`: the node still serves
/// reads, resolve and the proxy from its replica, and NATS is shared, so a
/// load balancer that took nodes out on it would take out every node at once.
///
/// `seq` is the last event the index has applied, so every read after this
/// answer shows it: the journal's last seq moves first, before the writer
/// applies the commit, and a client that waited for it could read the state
/// before the change.
pub async fn healthz(State(state): State<AppState>) -> Response {
    let log = state.registry.log();
    let seq = state.registry.read(|view| view.index.last_seq());
    if let Some(reason) = log.failed().is_none().then(|| log.health()).flatten() {
        let body = serde_json::json!({ "status": "degraded", "seq": seq, "reason": reason });
        return Json(with_node(body, &**log)).into_response();
    }
    if log.failed().is_some() {
        let body = serde_json::json!({
            "status": "degraded",
            "seq": seq,
            "reason": "the journal was removed or damaged under the running server: every \
                       write is refused until aliasd is restarted (reads go on); restart aliasd",
        });
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    let body = serde_json::json!({ "status": "ok", "seq": seq });
    Json(with_node(body, &**log)).into_response()
}

/// In a fleet, `/healthz` names the answering node (the dashboard shows the
/// fleet's nodes then); a single host's answer is unchanged.
fn with_node(mut body: serde_json::Value, log: &dyn crate::log::EventLog) -> serde_json::Value {
    if let Some(node) = log.node() {
        body["node"] = serde_json::Value::from(node);
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn body<'a>(name: &'a str, chain: &'a [String], digest: &'a str) -> ResolveBody<'a> {
        ResolveBody {
            name,
            resolved: chain.last().map_or("", |s| s),
            chain,
            via: "alias",
            digest,
        }
    }

    #[test]
    fn a_body_nests_objects_not_arrays() {
        let nested = serde_json::from_str::<BatchBody>(r#"{"ops":[["put","b","llama3"]]}"#);
        assert!(nested.is_err());
        let batch = serde_json::from_str::<BatchBody>(
            r#"{"ops":[{"op":"put","alias":"b","target":"llama3"},{"op":"delete","alias":"c"}]}"#,
        )
        .unwrap();
        assert_eq!(batch.ops.len(), 2);
    }

    #[test]
    fn batch_ops_reads_a_body_by_the_routes_rules() {
        let ops = batch_ops(
            br#" {"ops":[{"op":"put","alias":"b","target":"m","prefix_matching":true},{"op":"delete","alias":"c"}]} "#,
        )
        .unwrap();
        assert!(matches!(
            &ops[..],
            [BatchOp::Put(PutAlias { alias, target, prefix_matching: true, .. }), BatchOp::Delete(DeleteAlias { alias: deleted, .. })]
                if alias == "b" && target == "m" && deleted == "c"
        ));
        // Each is a 400 the route gives: not an object, ops by position,
        // no ops, a second document, an unknown field.
        for (body, fragment) in [
            (&br#"[{"op":"delete","alias":"c"}]"#[..], "json object"),
            (br#"{"ops":[["delete","c"]]}"#, "ops[0]"),
            (br#"{"ops":[]}"#, "at least one op"),
            (br#"{"ops":[{"op":"delete","alias":"c"}]} {}"#, "trailing"),
            (
                br#"{"ops":[{"op":"delete","alias":"c","x":1}]}"#,
                "unknown field",
            ),
            (b"", "needs a json body"),
        ] {
            let error = batch_ops(body).unwrap_err();
            assert_eq!(error.status, StatusCode::BAD_REQUEST, "{error:?}");
            assert!(
                error.message.to_lowercase().contains(fragment),
                "{:?}: {error:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn resolve_json_is_what_serde_json_writes() {
        let cases: [(&str, Vec<String>); 5] = [
            ("coder", vec!["coder".into(), "qwen2.5-coder:32b".into()]),
            ("say \"hi\"", vec!["a".into()]),
            ("back\\slash", vec!["a".into()]),
            ("tab\tnew\nline\u{1}\u{7f}", vec![]),
            ("ünï©ødé 🦀", vec!["x".into(), "y".into(), "z".into()]),
        ];
        for (name, chain) in &cases {
            let body = body(name, chain, "sha256:abc");
            let expected = serde_json::to_vec(&body).unwrap();
            assert_eq!(
                String::from_utf8(body.to_json()).unwrap(),
                String::from_utf8(expected).unwrap()
            );
        }
    }

    proptest! {
        #[test]
        fn resolve_json_matches_serde_json_for_any_text(
            name in any::<String>(),
            chain in proptest::collection::vec(any::<String>(), 0..4),
            digest in any::<String>(),
        ) {
            let body = body(&name, &chain, &digest);
            prop_assert_eq!(body.to_json(), serde_json::to_vec(&body).unwrap());
        }
    }
}
