//! The HTTP API (SPEC §5): the router, shared state, and the request plumbing
//! every route uses (request ids, origins, JSON bodies and errors).
//!
//! Only this module knows about axum and status codes.

pub mod aliases;
pub mod auth;
pub mod error;
pub mod events;
pub mod experimental;
pub mod proxy;
pub mod routing;
pub mod server;
pub mod ui;
pub mod webhooks;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::Method;
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};

use routing::{Matched, Route, Routes};

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

/// The routes of SPEC §5, by path template.
fn routes() -> Vec<Route> {
    vec![
        Route::new("/api/experimental/aliases")
            .on(Method::GET, experimental::aliases_list)
            .on(Method::POST, experimental::alias_create)
            .on(Method::DELETE, experimental::alias_delete),
        Route::new("/api/aliases")
            .on(Method::GET, aliases::aliases_list)
            .on(Method::POST, aliases::aliases_batch),
        Route::new("/api/aliases/{*name}")
            .on(Method::GET, aliases::alias_get)
            .on(Method::PUT, aliases::alias_put)
            .on(Method::DELETE, aliases::alias_delete),
        Route::new("/api/resolve/{*name}").on(Method::GET, aliases::resolve_get),
        Route::new("/api/models").on(Method::GET, aliases::models_list),
        Route::new("/api/history").on(Method::GET, events::history_list),
        Route::new("/api/events").on(Method::GET, events::events_stream),
        Route::new("/api/webhooks")
            .on(Method::GET, webhooks::webhooks_list)
            .on(Method::POST, webhooks::webhooks_create),
        Route::new("/api/webhooks/{id}")
            .on(Method::GET, webhooks::webhook_get)
            .on(Method::DELETE, webhooks::webhook_delete),
        Route::new("/api/webhooks/{id}/deliveries").on(Method::GET, webhooks::webhook_deliveries),
        Route::new("/healthz").on(Method::GET, aliases::healthz),
        Route::new("/metrics").on(Method::GET, metrics_get),
        Route::new("/").on(Method::GET, ui::dashboard_get),
        Route::new("/ui/{*name}").on(Method::GET, ui::asset_get),
    ]
}

/// Builds the app: every route of SPEC §5, what no route matches to the
/// upstream (or 404), all behind the [`edge`].
pub fn app(state: AppState) -> App {
    App {
        routes: Arc::new(Routes::new(routes(), proxy::forward)),
        state,
    }
}

/// The service every request enters: the [`edge`] around the routes.
///
/// The edge wraps the whole route table once, rather than being layered onto
/// each route, which cost a clone of the route's boxed service, a boxed `Next`
/// and a request taken apart and put back together per request (~4,600
/// instructions a request with the layer vs ~2,400 of edge work, callgrind).
/// Its one match of the path gives the route template (for `/metrics`, and
/// for knowing what goes to the upstream) and the handler.
#[derive(Clone, Debug)]
pub struct App {
    routes: Arc<Routes>,
    state: AppState,
}

impl tower_service::Service<Request> for App {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response, Self::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let app = self.clone();
        Box::pin(async move { Ok(edge(app, request).await) })
    }
}

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

/// Everything every request goes through, around the routes (one boxed
/// future per request instead of one per concern), in this order:
/// 1. its request id: `X-Request-Id` if sane, else a new one, echoed back;
/// 2. on a loopback listener, a `Host` that is not this machine: 403 (DNS
///    rebinding);
/// 3. an `Origin` that is not allowed: 403 on every route, before tokens and
///    before any body is read; preflights of allowed origins answered here,
///    allow headers added to their other responses;
/// 4. tokens (SPEC §5): 401/403, or the token's name for the event actor;
/// 5. the route, its body within the request timeout, with a panic turned
///    into a logged 500;
/// 6. the `{"error"}` shape for the framework's own errors;
/// 7. the count for `/metrics`, by route template and status.
async fn edge(app: App, mut request: Request) -> Response {
    let App { routes, state } = app;
    let id = request
        .headers()
        .get(&REQUEST_ID)
        .filter(|v| {
            let v = v.as_bytes();
            !v.is_empty() && v.len() <= 200 && v.iter().all(u8::is_ascii_graphic)
        })
        .cloned()
        .unwrap_or_else(crate::event::new_id_header);
    request.extensions_mut().insert(RequestId(id.clone()));
    let matched = routes.find(request.uri().path());
    let route = matched.as_ref().map(|m| m.template);
    // What no route matches goes to the upstream, when there is one.
    let proxied = route.is_none() && state.http.proxy.is_some();
    let origin = auth::request_origin(&request);
    let browser = auth::check_host(&state.http, &request).and_then(|()| match &origin {
        Some(origin) => auth::check_origin(&state.http, origin),
        None => Ok(()),
    });
    let allowed = browser.is_ok();
    let response = match browser {
        Err(refusal) => *refusal,
        Ok(()) => match &origin {
            Some(origin) if request.method() == Method::OPTIONS => {
                auth::preflight(&request, origin)
            }
            _ => match auth::authorize(&state.http, &request) {
                Err(refusal) => *refusal,
                Ok(token) => {
                    if let Some(token) = token {
                        request.extensions_mut().insert(token);
                    }
                    run_route(&state, request, &routes, matched, !proxied).await
                }
            },
        },
    };
    let mut response = error::ensure_json(response).await;
    if let (Some(origin), true) = (&origin, allowed) {
        auth::allow_origin(&mut response, origin);
    }
    let route = match route {
        Some(template) => template,
        None if proxied => "proxy",
        None => "unmatched",
    };
    state
        .registry
        .metrics()
        .observe_request(route, response.status().as_u16());
    response.headers_mut().insert(REQUEST_ID.clone(), id);
    response
}

/// Runs the route, turning a panic into a logged 500 so the server stays up.
/// When `timed`, a request's body must arrive within the request timeout (a
/// slow body holds a connection and a task): reading it past that fails, and
/// [`read_body`] answers 408. Only the body is timed: a change that reached
/// the registry's writer is not cancelled into a "retry" it may have outlived
/// (it answers what the writer did). A request for the upstream is not timed
/// here: a model can take minutes to load.
async fn run_route(
    state: &AppState,
    request: Request,
    routes: &Routes,
    matched: Option<Matched>,
    timed: bool,
) -> Response {
    use futures_util::FutureExt;
    let uri = request.uri().clone();
    let has_body = request
        .headers()
        .contains_key(axum::http::header::CONTENT_LENGTH)
        || request
            .headers()
            .contains_key(axum::http::header::TRANSFER_ENCODING);
    let request = if has_body && timed {
        let timeout = state.http.request_timeout;
        request.map(|body| axum::body::Body::new(TimedBody::new(body, timeout)))
    } else {
        request
    };
    let outcome = std::panic::AssertUnwindSafe(routes.dispatch(matched, request, state.clone()))
        .catch_unwind()
        .await;
    let path = uri.path();
    match outcome {
        Ok(response) => response,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(path, "handler panicked: {message}");
            ApiError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "internal error",
            )
            .into_response()
        }
    }
}

/// A request body that fails with [`BodyTimeout`] once its time is up.
struct TimedBody {
    body: axum::body::Body,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    timeout: std::time::Duration,
}

impl TimedBody {
    fn new(body: axum::body::Body, timeout: std::time::Duration) -> TimedBody {
        TimedBody {
            body,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            timeout,
        }
    }
}

impl axum::body::HttpBody for TimedBody {
    type Data = axum::body::Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        use std::future::Future;
        let this = self.get_mut();
        if let std::task::Poll::Ready(frame) = std::pin::Pin::new(&mut this.body).poll_frame(cx) {
            return std::task::Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        match this.deadline.as_mut().poll(cx) {
            std::task::Poll::Ready(()) => {
                std::task::Poll::Ready(Some(Err(Box::new(BodyTimeout(this.timeout)))))
            }
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// A request body did not arrive within the request timeout.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {} s", .0.as_secs())]
struct BodyTimeout(std::time::Duration);

/// The id of the current request: only visible ASCII, at most 200 bytes.
#[derive(Debug, Clone)]
pub struct RequestId(pub HeaderValue);

/// The name of the token a request was authorized with.
#[derive(Debug, Clone)]
pub struct TokenName(pub String);

/// The origin of a request, for its events: actor and request id.
#[derive(Debug, Clone)]
pub struct RequestOrigin(pub Origin);

impl<S: Send + Sync> FromRequestParts<S> for RequestOrigin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let addr = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.to_string())
            .unwrap_or_else(|| "local".to_string());
        let who = parts
            .extensions
            .get::<TokenName>()
            .map(|t| t.0.clone())
            .unwrap_or_else(|| "anonymous".to_string());
        let request_id = parts
            .extensions
            .get::<RequestId>()
            .and_then(|r| r.0.to_str().ok())
            .map(String::from);
        Ok(RequestOrigin(Origin {
            actor: format!("{who}@{addr}"),
            request_id,
        }))
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
            } else if let Some(timeout) = cause::<BodyTimeout>(&e) {
                ApiError::new(
                    axum::http::StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the request body took too long to arrive (over {} s): nothing was changed; retry",
                        timeout.0.as_secs()
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

/// A response of JSON already written, built directly (axum's tuple
/// responses would set `application/octet-stream` first, then replace it).
pub fn json_bytes_response(status: axum::http::StatusCode, json: Vec<u8>) -> Response {
    let mut response = Response::new(axum::body::Body::from(json));
    *response.status_mut() = status;
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
