//! The inference proxy (SPEC §7). With `serve --upstream URL`, every route
//! aliasd does not serve itself is forwarded to that Ollama, bodies streamed
//! both ways. In the JSON body of an inference route the `model` is resolved
//! first (a model of that name, else an exact alias and its chain, else the
//! longest prefix alias), and the `model` of the response, streamed or not,
//! is turned back into the name the client asked for. `/api/tags` and
//! `GET /v1/models` list the aliases beside the models, and
//! `GET /v1/models/{name}` resolves the name.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use serde_json::Value;

use crate::http::{ApiError, AppState};
use crate::index::{AliasName, AliasState, ResolveError, Via};

/// Routes whose JSON body names a `model` that is resolved before forwarding.
pub const MODEL_ROUTES: [&str; 8] = [
    "/api/chat",
    "/api/generate",
    "/api/embed",
    "/api/embeddings",
    "/api/show",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
];

/// The largest inference request body read for resolving (images travel
/// inside chat requests, base64-encoded).
const MAX_INFERENCE_BODY: usize = 256 << 20;

/// Ollama's default port, for an upstream given without one.
const OLLAMA_PORT: u16 = 11434;

/// Headers that belong to one connection, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The Ollama server requests are forwarded to, and a pool of connections to it.
#[derive(Clone, Debug)]
pub struct Proxy {
    /// `http://host:port`, as parsed from `--upstream`.
    base: String,
    client: Client<HttpConnector, Body>,
}

impl Proxy {
    /// A proxy to `upstream`: `http://host:port`, `host:port` or `host` (as
    /// `OLLAMA_HOST` is written; port 11434 when none is given).
    ///
    /// # Errors
    ///
    /// Not an `http://` address (aliasd speaks no TLS to its upstream).
    pub fn new(upstream: &str) -> Result<Proxy, String> {
        let trimmed = upstream.trim();
        let with_scheme = if trimmed.contains("://") {
            trimmed.to_string()
        } else {
            format!("http://{trimmed}")
        };
        let uri: Uri = with_scheme
            .parse()
            .map_err(|e| format!("--upstream {upstream:?} is not an address: {e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!(
                "--upstream {upstream:?}: only http:// is supported (Ollama serves plain HTTP)"
            ));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("--upstream {upstream:?} names no host"))?;
        if uri.path() != "/" && !uri.path().is_empty() {
            return Err(format!(
                "--upstream {upstream:?}: give the server's address only, without a path"
            ));
        }
        let port = authority.port_u16().unwrap_or(OLLAMA_PORT);
        let base = format!("http://{}:{port}", authority.host());
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(10)));
        let client = Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        Ok(Proxy { base, client })
    }

    /// The upstream's address, `http://host:port`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends a request upstream; a failure to reach it is a 502 saying so.
    async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<Response, ApiError> {
        let uri = format!("{}{path_and_query}", self.base);
        let mut request = axum::http::Request::builder()
            .method(method)
            .uri(&uri)
            .body(body)
            .map_err(|e| ApiError::bad_request(format!("cannot forward {path_and_query}: {e}")))?;
        copy_end_to_end(headers, request.headers_mut());
        let response = self.client.request(request).await.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                format!(
                    "cannot reach Ollama at {}: {}; is `ollama serve` running there (--upstream)?",
                    self.base,
                    error_chain(&e)
                ),
            )
        })?;
        let (parts, incoming) = response.into_parts();
        let mut response = Response::from_parts(parts, Body::new(incoming));
        strip_hop_by_hop(response.headers_mut());
        Ok(response)
    }
}

/// Copies headers to a request going upstream, leaving out those of this
/// connection, `Host` (the client sets the upstream's) and `Expect` (aliasd
/// has the body already, or streams it at once).
fn copy_end_to_end(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        if name != header::HOST && name != header::EXPECT && !is_hop_by_hop(name) {
            to.append(name.clone(), value.clone());
        }
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name.as_str())
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// An error and its causes, on one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

/// The fallback route: forwards what aliasd does not serve, or answers 404
/// when there is no upstream.
pub async fn forward(State(state): State<AppState>, mut request: Request) -> Response {
    let Some(proxy) = state.http.proxy.as_ref() else {
        let message = format!("no route for {} {}", request.method(), request.uri().path());
        return ApiError::not_found(message).into_response();
    };
    if !state.http.tokens.is_empty() {
        // aliasd's own token is not the upstream's business.
        request.headers_mut().remove(header::AUTHORIZATION);
    }
    let path = request.uri().path();
    let result = if request.method() == Method::POST && MODEL_ROUTES.contains(&path) {
        forward_inference(&state, proxy, request).await
    } else if request.method() == Method::GET && path == "/api/tags" {
        forward_tags(&state, proxy, request).await
    } else if request.method() == Method::GET && path == "/v1/models" {
        forward_models_list(&state, proxy, request).await
    } else if request.method() == Method::GET && path.starts_with(MODEL_GET_ROUTE) {
        forward_model_get(&state, proxy, request).await
    } else {
        let (parts, body) = request.into_parts();
        proxy
            .send(
                parts.method,
                path_and_query(&parts.uri),
                &parts.headers,
                body,
            )
            .await
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

fn path_and_query(uri: &Uri) -> &str {
    uri.path_and_query().map_or("/", |p| p.as_str())
}

/// An inference request: resolves its `model`, forwards it, and rewrites the
/// `model` of the response back, line by line as it streams.
async fn forward_inference(
    state: &AppState,
    proxy: &Proxy,
    request: Request,
) -> Result<Response, ApiError> {
    let (mut parts, body) = request.into_parts();
    let bytes = tokio::time::timeout(
        state.http.request_timeout,
        axum::body::to_bytes(body, MAX_INFERENCE_BODY),
    )
    .await
    .map_err(|_| {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "the request body took too long to arrive; retry",
        )
    })?
    .map_err(|e| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body unreadable or over {MAX_INFERENCE_BODY} bytes: {e}"),
        )
    })?;
    let mut rename = None;
    let body = match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(mut object)) => match model_field(&object) {
            Some((field, asked)) => match resolve(state, &asked)? {
                Some(resolved) if resolved != asked => {
                    object.insert(field.into(), Value::String(resolved.clone()));
                    rename = Some((resolved, asked));
                    let rewritten = serde_json::to_vec(&object)
                        .map_err(|e| ApiError::bad_request(e.to_string()))?;
                    parts.headers.remove(header::CONTENT_LENGTH);
                    Bytes::from(rewritten)
                }
                _ => bytes,
            },
            None => bytes,
        },
        // Not a JSON object: Ollama says what is wrong with it.
        _ => bytes,
    };
    let mut response = proxy
        .send(
            parts.method,
            path_and_query(&parts.uri),
            &parts.headers,
            Body::from(body),
        )
        .await?;
    // An encoded (compressed) answer is passed on as it is: its lines cannot be read.
    let encoded = response
        .headers()
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v != "identity");
    if let Some((resolved, asked)) = rename.filter(|_| !encoded) {
        response.headers_mut().remove(header::CONTENT_LENGTH);
        let (parts, body) = response.into_parts();
        let body = rename_model(body, &resolved, &asked);
        response = Response::from_parts(parts, body);
    }
    Ok(response)
}

/// The field of a request that names its model, and that name: `model`, or
/// Ollama's older `name` (still accepted by `/api/show`) when there is no
/// `model`.
fn model_field(object: &serde_json::Map<String, Value>) -> Option<(&'static str, String)> {
    ["model", "name"].into_iter().find_map(|field| {
        object
            .get(field)
            .and_then(Value::as_str)
            .filter(|name| !name.is_empty())
            .map(|name| (field, name.to_string()))
    })
}

/// The model to send upstream for `asked`: `None` when nothing in aliasd
/// matches (Ollama decides: it may pull it, or say it does not know it).
fn resolve(state: &AppState, asked: &str) -> Result<Option<String>, ApiError> {
    let resolved = state.registry.read(|s| s.index.resolve(&s.models, asked));
    match resolved {
        Ok(resolution) => Ok(Some(resolution.resolved.display())),
        Err(ResolveError::NotFound(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Rewrites `"model":"<from>"` into `"model":"<to>"` in each line of a
/// streamed body (NDJSON from `/api/*`, `data: {...}` lines from `/v1/*`),
/// holding back only an unfinished last line.
fn rename_model(body: Body, from: &str, to: &str) -> Body {
    let from = serde_json::to_string(from).unwrap_or_default().into_bytes();
    let to = serde_json::to_string(to).unwrap_or_default().into_bytes();
    let state = (body.into_data_stream(), Vec::<u8>::new(), false);
    let stream = futures_util::stream::unfold(state, move |(mut data, mut held, ended)| {
        let (from, to) = (from.clone(), to.clone());
        async move {
            if ended {
                return None;
            }
            loop {
                match data.next().await {
                    Some(Ok(chunk)) => {
                        held.extend_from_slice(&chunk);
                        let Some(last) = held.iter().rposition(|&b| b == b'\n') else {
                            continue;
                        };
                        let rest = held.split_off(last + 1);
                        let out = rename_in_lines(&held, &from, &to);
                        return Some((Ok(Bytes::from(out)), (data, rest, false)));
                    }
                    Some(Err(e)) => return Some((Err(e), (data, held, true))),
                    None if held.is_empty() => return None,
                    None => {
                        let out = rename_in_lines(&held, &from, &to);
                        return Some((Ok(Bytes::from(out)), (data, Vec::new(), true)));
                    }
                }
            }
        }
    });
    Body::from_stream(stream)
}

/// The lines of `text` with the first `"model":<from>` of each (spaces after
/// the colon allowed) turned into `"model":<to>`; `from` and `to` are JSON strings.
fn rename_in_lines(text: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    const KEY: &[u8] = b"\"model\":";
    let mut out = Vec::with_capacity(text.len());
    for line in text.split_inclusive(|&b| b == b'\n') {
        let found = line
            .windows(KEY.len())
            .position(|w| w == KEY)
            .and_then(|at| {
                let mut value = at + KEY.len();
                while line.get(value) == Some(&b' ') {
                    value += 1;
                }
                line[value..].starts_with(from).then_some((at, value))
            });
        match found {
            Some((at, value)) => {
                out.extend_from_slice(&line[..at]);
                out.extend_from_slice(KEY);
                out.extend_from_slice(to);
                out.extend_from_slice(&line[value + from.len()..]);
            }
            None => out.extend_from_slice(line),
        }
    }
    out
}

/// The route of `GET /v1/models/{name}`, up to the name.
const MODEL_GET_ROUTE: &str = "/v1/models/";

/// An active exact alias as the model lists show it, copied out of the index.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ListedAlias {
    /// Its name in Ollama's `name:tag` form (`coder:latest`).
    name: String,
    /// The namespace of its name (OpenAI's `owned_by`, as Ollama fills it).
    namespace: String,
    /// The model at the end of its chain, in the same form.
    model: String,
    /// Its creation, microseconds since the Unix epoch.
    created_at: u64,
    /// Its last change (its file's last write), microseconds since the Unix epoch.
    updated_at: u64,
}

/// Every active exact alias (prefix aliases name no model), sorted by name.
fn listed_aliases(state: &AppState) -> Vec<ListedAlias> {
    // Copied out under the lock; formatted and sorted after it.
    let copied = state.registry.read(|s| {
        crate::http::aliases::copy_list(&s.index, &s.models, &|entry| {
            entry.state == AliasState::Active && !entry.alias.is_prefix()
        })
    });
    let mut aliases: Vec<ListedAlias> = copied
        .into_iter()
        .filter_map(|(entry, resolved)| {
            let AliasName::Exact(name) = &entry.alias else {
                return None;
            };
            Some(ListedAlias {
                name: name.display_tagged(),
                namespace: name.namespace().to_string(),
                model: resolved?.display_tagged(),
                created_at: entry.created_at,
                updated_at: entry.updated_at,
            })
        })
        .collect();
    aliases.sort_by_cached_key(|alias| alias.name.to_lowercase());
    aliases
}

/// Sends a `GET` upstream and reads its JSON answer: `Ok(Err(response))` to
/// pass on as it is (not a 200, or not JSON).
async fn upstream_json(
    proxy: &Proxy,
    path_and_query: &str,
    request: Request,
) -> Result<Result<(axum::http::response::Parts, Value), Response>, ApiError> {
    let (parts, body) = request.into_parts();
    let response = proxy
        .send(parts.method, path_and_query, &parts.headers, body)
        .await?;
    if response.status() != StatusCode::OK {
        return Ok(Err(response));
    }
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_INFERENCE_BODY)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                format!(
                    "reading {path_and_query} from Ollama at {}: {e}; retry",
                    proxy.base
                ),
            )
        })?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(value) => Ok(Ok((parts, value))),
        Err(_) => Ok(Err(Response::from_parts(parts, Body::from(bytes)))),
    }
}

/// An upstream's answer with its JSON body changed.
fn json_answer(
    mut parts: axum::http::response::Parts,
    value: &Value,
) -> Result<Response, ApiError> {
    let bytes = serde_json::to_vec(value).map_err(|e| ApiError::bad_request(e.to_string()))?;
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    Ok(Response::from_parts(parts, Body::from(bytes)))
}

/// `GET /api/tags`: the upstream's list, plus every active alias it does not
/// show, listed as its model is, under its own `name:tag` and with its own
/// `modified_at`.
async fn forward_tags(
    state: &AppState,
    proxy: &Proxy,
    request: Request,
) -> Result<Response, ApiError> {
    let path = path_and_query(request.uri()).to_string();
    let (parts, mut tags) = match upstream_json(proxy, &path, request).await? {
        Ok(answer) => answer,
        Err(response) => return Ok(response),
    };
    let aliases = listed_aliases(state);
    if let Some(models) = tags.get_mut("models").and_then(Value::as_array_mut) {
        add_aliases(models, &aliases);
    }
    json_answer(parts, &tags)
}

/// Adds an entry for each alias not listed yet, copied from its model's
/// entry with the alias's name and `modified_at`.
fn add_aliases(models: &mut Vec<Value>, aliases: &[ListedAlias]) {
    let listed = |models: &[Value], name: &str| {
        models.iter().position(|m| {
            ["name", "model"].iter().any(|field| {
                m.get(field)
                    .and_then(Value::as_str)
                    .is_some_and(|listed| same_model(listed, name))
            })
        })
    };
    for alias in aliases {
        if listed(models, &alias.name).is_some() {
            continue;
        }
        let Some(at) = listed(models, &alias.model) else {
            continue;
        };
        let mut entry = models[at].clone();
        if let Some(object) = entry.as_object_mut() {
            object.insert("name".into(), Value::String(alias.name.clone()));
            object.insert("model".into(), Value::String(alias.name.clone()));
            object.insert(
                "modified_at".into(),
                Value::String(crate::index::format_time(alias.updated_at)),
            );
        }
        models.push(entry);
    }
}

/// `GET /v1/models`: the upstream's list (OpenAI's shape), plus every active
/// alias it does not show, `{"id","object":"model","created","owned_by"}`
/// with the alias's own creation time.
async fn forward_models_list(
    state: &AppState,
    proxy: &Proxy,
    request: Request,
) -> Result<Response, ApiError> {
    let path = path_and_query(request.uri()).to_string();
    let (parts, mut list) = match upstream_json(proxy, &path, request).await? {
        Ok(answer) => answer,
        Err(response) => return Ok(response),
    };
    let aliases = listed_aliases(state);
    if let Some(data) = list.get_mut("data").and_then(Value::as_array_mut) {
        add_openai_models(data, &aliases);
    }
    json_answer(parts, &list)
}

/// Adds an OpenAI model object for each alias `data` does not list yet.
fn add_openai_models(data: &mut Vec<Value>, aliases: &[ListedAlias]) {
    for alias in aliases {
        let listed = data.iter().any(|m| {
            m.get("id")
                .and_then(Value::as_str)
                .is_some_and(|id| same_model(id, &alias.name))
        });
        if !listed {
            data.push(serde_json::json!({
                "id": alias.name,
                "object": "model",
                "created": alias.created_at / 1_000_000,
                "owned_by": alias.namespace,
            }));
        }
    }
}

/// `GET /v1/models/{name}`: a model, or a name nothing in aliasd matches, is
/// the upstream's to answer; an alias (exact or prefix) is resolved, its
/// model fetched from the upstream and answered under the asked name, with
/// the alias's own creation time; a dangling alias is a 404.
async fn forward_model_get(
    state: &AppState,
    proxy: &Proxy,
    request: Request,
) -> Result<Response, ApiError> {
    let raw = &request.uri().path()[MODEL_GET_ROUTE.len()..];
    let asked = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map(|name| name.into_owned())
        .unwrap_or_default();
    let found = match asked.as_str() {
        "" => Ok(None),
        asked => state.registry.read(|s| {
            s.index.resolve(&s.models, asked).map(|resolution| {
                let alias = match resolution.via {
                    Via::Model => None,
                    Via::Alias => s.index.lookup(asked),
                    Via::Prefix => s.index.longest_prefix(asked),
                };
                alias.map(|alias| (resolution.resolved, alias.created_at))
            })
        }),
    };
    let (resolved, created_at) = match found {
        Ok(Some(found)) => found,
        Ok(None) | Err(ResolveError::NotFound(_)) => {
            let path = path_and_query(request.uri()).to_string();
            let (parts, body) = request.into_parts();
            return proxy.send(parts.method, &path, &parts.headers, body).await;
        }
        Err(e) => return Err(e.into()),
    };
    // A valid name is safe in a path as it is: `[A-Za-z0-9_.:/-]`.
    let path = format!("{MODEL_GET_ROUTE}{}", resolved.display());
    let (parts, mut model) = match upstream_json(proxy, &path, request).await? {
        Ok(answer) => answer,
        Err(response) => return Ok(response),
    };
    if let Some(object) = model.as_object_mut() {
        object.insert("id".into(), Value::String(asked.clone()));
        object.insert("created".into(), Value::from(created_at / 1_000_000));
        if let Ok(name) = crate::name::ModelName::parse(&asked) {
            object.insert("owned_by".into(), Value::String(name.namespace().into()));
        }
    }
    json_answer(parts, &model)
}

/// Whether two names Ollama shows mean the same model (`llama3` is
/// `llama3:latest`; case does not matter).
fn same_model(a: &str, b: &str) -> bool {
    match (
        crate::name::ModelName::parse(a),
        crate::name::ModelName::parse(b),
    ) {
        (Ok(a), Ok(b)) => a.key() == b.key(),
        _ => a.eq_ignore_ascii_case(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_addresses() {
        let base = |s: &str| Proxy::new(s).map(|p| p.base().to_string());
        assert_eq!(
            base("http://127.0.0.1:11434").unwrap(),
            "http://127.0.0.1:11434"
        );
        assert_eq!(base("127.0.0.1:9999").unwrap(), "http://127.0.0.1:9999");
        assert_eq!(base("localhost").unwrap(), "http://localhost:11434");
        assert_eq!(base("http://localhost/").unwrap(), "http://localhost:11434");
        assert!(base("https://example.com")
            .unwrap_err()
            .contains("only http://"));
        assert!(base("http://h:1/api")
            .unwrap_err()
            .contains("without a path"));
        assert!(base("http://").is_err());
    }

    #[test]
    fn the_model_of_each_line_is_renamed() {
        let text = b"{\"model\":\"llama3\",\"done\":false}\n{\"model\": \"llama3\",\"done\":true}\ndata: {\"id\":1,\"model\":\"llama3\"}\n{\"model\":\"llama3x\"}\n{\"model_info\":\"llama3\"}";
        let out = rename_in_lines(text, b"\"llama3\"", b"\"coder\"");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"model\":\"coder\",\"done\":false}\n{\"model\":\"coder\",\"done\":true}\ndata: {\"id\":1,\"model\":\"coder\"}\n{\"model\":\"llama3x\"}\n{\"model_info\":\"llama3\"}"
        );
    }

    #[test]
    fn tags_gain_the_aliases_they_do_not_list() {
        let mut models = vec![
            serde_json::json!({"name": "llama3:latest", "model": "llama3:latest", "digest": "d1", "size": 5}),
            serde_json::json!({"name": "coder:latest", "model": "coder:latest", "digest": "d1", "size": 5}),
        ];
        let alias = |name: &str, model: &str| ListedAlias {
            name: name.into(),
            namespace: "library".into(),
            model: model.into(),
            created_at: 1_000_000,
            updated_at: 2_000_000,
        };
        let aliases = [
            alias("coder:latest", "llama3:latest"),
            alias("chat:latest", "llama3:latest"),
            alias("orphan:latest", "gone:latest"),
        ];
        add_aliases(&mut models, &aliases);
        let names: Vec<&str> = models.iter().map(|m| m["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["llama3:latest", "coder:latest", "chat:latest"]);
        assert_eq!(models[2]["digest"], "d1");
        assert_eq!(models[2]["model"], "chat:latest");
        assert_eq!(models[2]["modified_at"], "1970-01-01T00:00:02.000000Z");
        let mut data = vec![serde_json::json!({"id": "coder:latest", "object": "model"})];
        add_openai_models(&mut data, &aliases);
        let ids: Vec<&str> = data.iter().map(|m| m["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["coder:latest", "chat:latest", "orphan:latest"]);
        assert_eq!(data[1]["created"], 1);
        assert_eq!(data[1]["owned_by"], "library");
    }
}
