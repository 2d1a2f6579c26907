//! The HTTP API (SPEC §5): the router and its layers, shared state, and the
//! request plumbing every route uses (request ids, origins, JSON bodies and
//! errors).
//!
//! Only this module knows about axum and status codes.

pub mod aliases;
pub mod auth;
pub mod error;
pub mod events;
pub mod experimental;
pub mod fast_path;
pub mod middleware;
pub mod nodes;
pub mod proxy;
pub mod server;
pub mod ui;
pub mod webhooks;

use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::HeaderName;
use axum::response::{IntoResponse, Response};

use crate::command::Origin;
use crate::registry::Registry;
pub use error::ApiError;
pub use server::serve;

/// Request bodies larger than this get 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The header carrying a request's id, echoed or generated.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What every handler can reach. Cloned by every middleware layer of every
/// request, so it is one `Arc`: a clone is one atomic increment.
#[derive(Clone, Debug)]
pub struct AppState(Arc<AppStateInner>);

/// The shared parts of [`AppState`].
#[derive(Debug)]
pub struct AppStateInner {
    /// The registry: commands go to its writer, reads take its lock briefly.
    pub registry: Registry,
    /// Tokens, origins and limits, fixed at start-up.
    pub http: HttpConfig,
    /// Fires once when the server begins to shut down; event streams end then.
    pub shutdown: Shutdown,
}

impl std::ops::Deref for AppState {
    type Target = AppStateInner;

    fn deref(&self) -> &AppStateInner {
        &self.0
    }
}

impl AppState {
    /// State for serving `registry` with `http` settings.
    pub fn new(registry: Registry, http: HttpConfig) -> AppState {
        AppState(Arc::new(AppStateInner {
            registry,
            http,
            shutdown: Shutdown::default(),
        }))
    }
}

/// HTTP settings: who may call, from which browser origins and host names,
/// and limits.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Tokens; empty means no authentication (loopback use).
    pub tokens: Vec<auth::Token>,
    /// Extra browser origins allowed (beyond the local defaults); a request
    /// with any other `Origin` gets 403.
    pub origins: Vec<String>,
    /// Refuse a `Host` that does not name this machine: set when listening on
    /// loopback, where only this machine's clients (and DNS-rebinding pages
    /// in their browsers) can connect.
    pub check_host: bool,
    /// Event-stream subscribers allowed at once; past it, 503.
    pub max_subscribers: u64,
    /// A request's body must arrive within this; else 408 (nothing was
    /// changed). What the route does once it has the body is not timed: a
    /// change sent to the registry's writer answers its real outcome.
    pub request_timeout: std::time::Duration,
    /// Connections open at once; past it, new ones wait to be accepted.
    pub max_connections: usize,
    /// A request head (line and headers) must arrive within this, counted
    /// from the connection's start or the head's first byte; else the
    /// connection is closed.
    pub header_timeout: std::time::Duration,
    /// A keep-alive connection with no request in flight is closed after this.
    pub idle_timeout: std::time::Duration,
    /// The Ollama server unknown routes are forwarded to (`--upstream`), if any.
    pub proxy: Option<proxy::Proxy>,
}

impl Default for HttpConfig {
    fn default() -> HttpConfig {
        HttpConfig {
            tokens: Vec::new(),
            origins: Vec::new(),
            check_host: true,
            max_subscribers: 4096,
            request_timeout: std::time::Duration::from_secs(30),
            max_connections: 1024 - server::FD_RESERVE as usize,
            header_timeout: std::time::Duration::from_secs(10),
            idle_timeout: std::time::Duration::from_secs(75),
            proxy: None,
        }
    }
}

/// A one-shot signal, fanned out to every long-lived response.
#[derive(Clone, Debug)]
pub struct Shutdown(Arc<tokio::sync::watch::Sender<bool>>);

impl Default for Shutdown {
    fn default() -> Shutdown {
        Shutdown(Arc::new(tokio::sync::watch::channel(false).0))
    }
}

impl Shutdown {
    /// Fires the signal.
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }

    /// Completes once the signal has fired.
    pub async fn fired(&self) {
        let mut receiver = self.0.subscribe();
        // The sender lives as long as `self`, so this only ends on the signal.
        let _ = receiver.wait_for(|fired| *fired).await;
    }
}

/// What [`app`] builds: the service every request enters (a name for the
/// bounds the server needs of it).
pub trait App:
    tower::Service<
        Request,
        Response = Response,
        Error = std::convert::Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<A> App for A where
    A: tower::Service<
            Request,
            Response = Response,
            Error = std::convert::Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

/// Builds the app: every route of SPEC §5 and what no route matches to the
/// upstream (or 404) in axum's `Router`, which answers `HEAD` from `GET` and
/// a missing method with 405 and `Allow`, behind these layers, outermost
/// first:
/// 1. [`middleware::ObserveLayer`]: its request id, `X-Request-Id` if sane
///    (visible ASCII, at most 200 bytes), else a new one;
/// 2. once answered ([`middleware::ObserveLayer`] still): the request id on
///    the answer, the `{"error"}` shape for the framework's own errors, the
///    count for `/metrics` by route template, the access log;
/// 3. a panic turned into a logged 500 ([`middleware::PanicGuardLayer`]);
/// 4. resolve's fast path ([`fast_path`]): a plain `GET`/`HEAD
///    /api/resolve/{name}` (no `Origin`) answered through the same checks
///    (steps 6, 8 and 9) and handler core as the router's route, without the
///    router; every other request goes on to
/// 5. the router; then, on every route, its 405s and the fallback alike:
/// 6. [`auth::RouteChecksLayer`], in one layer: the route's template noted
///    for step 2; on a loopback listener, a `Host` that is not this machine
///    is a 403 (DNS rebinding); an `Origin` that is not allowed is a 403 on
///    every route, before tokens and before any body is read;
/// 7. for a request with an `Origin` (`RouteChecksLayer` still), CORS for
///    the allowed origins (tower-http's `CorsLayer`): preflights answered
///    (204), allow headers added to other responses;
/// 8. tokens (SPEC §5, `RouteChecksLayer` still): 401/403, or the token's
///    name for the event actor;
/// 9. on the routes aliasd serves (not the upstream's fallback, where a
///    model can take minutes to load), the request body's deadline
///    ([`middleware::body_deadline`], `RouteChecksLayer` still).
///
/// Steps 6-8 run after the path is matched, so that every answer, their
/// refusals included, is counted under its route template. Nothing is boxed
/// on a request without `Origin` (not `from_fn`, which boxes a future and the
/// rest of the stack on every request), and the layers are few: each one
/// moves the request and adds a future. Steps 1-4 wrap the router once.
/// (benches/README.md has what each piece costs.)
pub fn app(state: AppState) -> impl App {
    let router = router(state.clone());
    around_router(state.clone(), fast_path::FastResolve::new(state, router))
}

/// [`app`] without resolve's fast path: every request through the router.
/// For the tests that hold the fast path to the router's answers.
#[cfg(test)]
pub(crate) fn app_without_fast_path(state: AppState) -> impl App {
    around_router(state.clone(), router(state))
}

/// Steps 1-3 of [`app`] around `inner` (the router, or the fast path in
/// front of it).
fn around_router<S: App>(state: AppState, inner: S) -> impl App {
    tower::ServiceBuilder::new()
        .layer(middleware::ObserveLayer::new(state))
        .layer(middleware::PanicGuardLayer)
        .service(inner)
}

/// Steps 5-9 of [`app`]: every route, behind [`auth::RouteChecksLayer`]
/// given the route's template (its `/metrics` label and the access log's
/// route: `'static`, so no allocation per request, and a set that stays
/// small), and the fallback behind the same checks, without a template.
fn router(state: AppState) -> axum::Router {
    use axum::handler::Handler;
    use axum::routing::{get, MethodRouter};
    let checks = auth::RouteChecksLayer::new(state.clone());
    let routes: [(&'static str, MethodRouter<AppState>); 15] = [
        (
            "/api/experimental/aliases",
            get(experimental::aliases_list)
                .post(experimental::alias_create)
                .delete(experimental::alias_delete),
        ),
        (
            "/api/aliases",
            get(aliases::aliases_list).post(aliases::aliases_batch),
        ),
        (
            "/api/aliases/{*name}",
            get(aliases::alias_get)
                .put(aliases::alias_put)
                .delete(aliases::alias_delete),
        ),
        (RESOLVE_ROUTE, get(aliases::resolve_get)),
        ("/api/models", get(aliases::models_list)),
        ("/api/history", get(events::history_list)),
        ("/api/nodes", get(nodes::nodes_list)),
        ("/api/events", get(events::events_stream)),
        (
            "/api/webhooks",
            get(webhooks::webhooks_list).post(webhooks::webhooks_create),
        ),
        (
            "/api/webhooks/{id}",
            get(webhooks::webhook_get).delete(webhooks::webhook_delete),
        ),
        (
            "/api/webhooks/{id}/deliveries",
            get(webhooks::webhook_deliveries),
        ),
        ("/healthz", get(aliases::healthz)),
        ("/metrics", get(metrics_get)),
        ("/", get(ui::dashboard_get)),
        ("/ui/{*name}", get(ui::asset_get)),
    ];
    routes
        .into_iter()
        .fold(axum::Router::new(), |router, (template, route)| {
            // `MethodRouter::layer`, not `route_layer`: the route's 405s too.
            router.route(template, route.layer(checks.for_route(template)))
        })
        .fallback(proxy::forward.layer(checks))
        .with_state(state)
}

/// The route of `GET /api/resolve/{name}`: its template in the router, and
/// its `/metrics` label whichever way it is answered ([`fast_path`]).
pub const RESOLVE_ROUTE: &str = "/api/resolve/{*name}";

/// `GET /metrics`: Prometheus text.
async fn metrics_get(axum::extract::State(state): axum::extract::State<AppState>) -> Response {
    let gauges = state.registry.read(|s| {
        let counts = s.index.state_counts();
        crate::metrics::Gauges {
            aliases_by_state: vec![
                ("active", counts[crate::index::AliasState::Active as usize]),
                (
                    "dangling",
                    counts[crate::index::AliasState::Dangling as usize],
                ),
                (
                    "shadowed",
                    counts[crate::index::AliasState::Shadowed as usize],
                ),
            ],
            models: s.models.len() as u64,
            journal_seq: 0,
            journal_bytes: 0,
        }
    });
    let log = state.registry.log();
    let gauges = crate::metrics::Gauges {
        journal_seq: log.last_seq(),
        journal_bytes: log.size_bytes(),
        ..gauges
    };
    let text = state.registry.metrics().render(&gauges);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            crate::metrics::CONTENT_TYPE,
        )],
        text,
    )
        .into_response()
}

/// The name of the token a request was authorized with.
#[derive(Debug, Clone)]
pub struct TokenName(pub String);

/// The origin of a request, for its events: actor and request id.
#[derive(Debug, Clone)]
pub struct RequestOrigin(pub Origin);

impl<S: Send + Sync> FromRequestParts<S> for RequestOrigin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        // The connection notes its peer (`server`).
        let addr = parts
            .extensions
            .get::<middleware::RequestNotes>()
            .and_then(middleware::RequestNotes::peer)
            .map_or_else(|| "local".to_string(), |addr| addr.to_string());
        let who = parts
            .extensions
            .get::<TokenName>()
            .map(|t| t.0.clone())
            .unwrap_or_else(|| "anonymous".to_string());
        // `middleware::ObserveLayer` left a usable id in the header, the
        // client's or a new one.
        let request_id = parts
            .headers
            .get(&REQUEST_ID)
            .and_then(|id| id.to_str().ok())
            .map(String::from);
        Ok(RequestOrigin(Origin {
            actor: format!("{who}@{addr}"),
            request_id,
        }))
    }
}

/// A route's `{*name}`, percent-decoded (names contain `/` and `:`).
#[derive(Debug, Clone)]
pub struct PathName(pub String);

impl PathName {
    /// The name in `raw`, a `{*name}` as it stands in the path, decoded as
    /// axum's `Path` decodes it (percent-decoding, then UTF-8), for a path
    /// read without the router ([`fast_path`]); borrowed from `raw` when it
    /// has no escapes, as most names have none.
    ///
    /// # Errors
    ///
    /// The same 400 as a `{*name}` read through the router: not UTF-8 once
    /// percent-decoded.
    pub fn decode(raw: &str) -> Result<std::borrow::Cow<'_, str>, ApiError> {
        // Without a `%` there is nothing to decode, and `raw` is UTF-8.
        if !raw.contains('%') {
            return Ok(std::borrow::Cow::Borrowed(raw));
        }
        percent_encoding::percent_decode_str(raw)
            .decode_utf8()
            .map_err(|_| PathName::not_utf8())
    }

    /// A `{*name}` that is not UTF-8 once percent-decoded: a 400.
    fn not_utf8() -> ApiError {
        ApiError::bad_request("the name in the path is not UTF-8 once percent-decoded")
    }
}

impl<S: Send + Sync> FromRequestParts<S> for PathName {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        use axum::extract::path::ErrorKind;
        use axum::extract::rejection::PathRejection;
        match axum::extract::Path::<String>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(name)) => Ok(PathName(name)),
            Err(PathRejection::FailedToDeserializePathParams(e))
                if matches!(e.kind(), ErrorKind::InvalidUtf8InPathParam { .. }) =>
            {
                Err(PathName::not_utf8())
            }
            Err(rejection) => Err(rejection.into()),
        }
    }
}

/// A JSON body whose rejections are [`ApiError`]s.
///
/// Like Ollama, the body is read as JSON whatever its `Content-Type` (so
/// `curl -d '{...}'` works); bad JSON is a 400, a body over the limit a 413.
#[derive(Debug, Clone)]
pub struct AppJson<T>(pub T);

impl<T, S> FromRequest<S> for AppJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let bytes = read_body(request).await?;
        json_body(&bytes).map(AppJson)
    }
}

/// A request body's bytes read as JSON by the rules of every route (see
/// [`AppJson`]): one JSON object, nothing after it but whitespace, each
/// failure a 400 saying what is wrong. Public so that a fuzz target reads
/// bodies exactly as the server does.
///
/// # Errors
///
/// An empty body, a body that is not a JSON object, or one that does not fit `T`.
pub fn json_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::bad_request("the request needs a JSON body"));
    }
    // serde reads a struct from an array too, by field order (`["llama3"]`
    // as `{"target": "llama3"}`); a body is an object, so say so instead.
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some_and(|b| *b != b'{') {
        return Err(ApiError::bad_request(
            "bad JSON body: send a JSON object, {...}, with the fields of this route",
        ));
    }
    let deserializer = &mut serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut *deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            ApiError::bad_request(format!("bad JSON body: {inner}"))
        } else {
            ApiError::bad_request(format!("bad JSON body: {path}: {inner}"))
        }
    })?;
    // One JSON document and nothing after it but whitespace.
    deserializer
        .end()
        .map_err(|e| ApiError::bad_request(format!("bad JSON body: {e}")))?;
    Ok(value)
}

/// An object nested in a request body (the ops of a batch), read only from
/// a JSON object: serde reads a struct, or an internally tagged enum, from an
/// array too, by position, and a body that does not say what it means is a 400.
/// ([`AppJson`] holds the body itself to the same rule.)
#[derive(Debug, Clone)]
pub struct JsonObject<T>(pub T);

impl<'de, T: serde::de::DeserializeOwned> serde::Deserialize<'de> for JsonObject<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let object = serde_json::Map::<String, serde_json::Value>::deserialize(deserializer)?;
        T::deserialize(serde_json::Value::Object(object))
            .map(JsonObject)
            .map_err(serde::de::Error::custom)
    }
}

/// Reads a request body of at most [`MAX_BODY_BYTES`]: 413 past it (at once
/// when its `Content-Length` says so), 400 when the connection fails first.
pub(crate) async fn read_body(request: Request) -> Result<axum::body::Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is over {} KiB", MAX_BODY_BYTES / 1024),
        )
    };
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    axum::body::to_bytes(request.into_body(), MAX_BODY_BYTES)
        .await
        .map_err(|e| {
            let over = std::error::Error::source(&e)
                .is_some_and(|cause| cause.is::<http_body_util::LengthLimitError>());
            if over {
                too_large()
            } else if let Some(timeout) = cause::<middleware::BodyTimeout>(&e) {
                ApiError::new(
                    axum::http::StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the request body took too long to arrive (over {} s): nothing was changed; retry",
                        timeout.timeout().as_secs()
                    ),
                )
            } else {
                ApiError::bad_request(format!("cannot read the request body: {e}"))
            }
        })
}

/// The first cause of type `T` in `error`'s chain of sources.
fn cause<'e, T: std::error::Error + 'static>(
    error: &'e (dyn std::error::Error + 'static),
) -> Option<&'e T> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(found) = error.downcast_ref::<T>() {
            return Some(found);
        }
        next = error.source();
    }
    None
}
