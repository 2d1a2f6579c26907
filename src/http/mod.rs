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

/// HTTP settings: who may call, from which browser origins, and limits.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Tokens; empty means no authentication (loopback use).
    pub tokens: Vec<auth::Token>,
    /// Extra browser origins allowed (beyond the local defaults).
    pub origins: Vec<String>,
    /// Event-stream subscribers allowed at once; past it, 503.
    pub max_subscribers: u64,
    /// A request (its body included) must complete within this; else 408.
    /// Requests forwarded to the upstream only need their body in this time.
    pub request_timeout: std::time::Duration,
    /// The Ollama server unknown routes are forwarded to (`--upstream`), if any.
    pub proxy: Option<proxy::Proxy>,
}

impl Default for HttpConfig {
    fn default() -> HttpConfig {
        HttpConfig {
            tokens: Vec::new(),
            origins: Vec::new(),
            max_subscribers: 4096,
            request_timeout: std::time::Duration::from_secs(30),
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
        Route::new("/healthz").on(Method::GET, aliases::healthz),
        Route::new("/metrics").on(Method::GET, metrics_get),
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
        let mut counts = [0u64; 3];
        for entry in s.index.sorted() {
            counts[entry.state as usize] += 1;
        }
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
    let journal = state.registry.journal();
    let gauges = crate::metrics::Gauges {
        journal_seq: journal.last_seq().0,
        journal_bytes: journal.size_bytes(),
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
/// 2. CORS: preflights answered here, allow headers added for allowed origins;
/// 3. tokens (SPEC §5): 401/403, or the token's name for the event actor;
/// 4. the route, within the request timeout (slow bodies included; not for
///    event streams), with a panic turned into a logged 500;
/// 5. the `{"error"}` shape for the framework's own errors;
/// 6. the count for `/metrics`, by route template and status.
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
    let response = match (&origin, request.method() == axum::http::Method::OPTIONS) {
        (Some(origin), true) => auth::preflight(&state.http, origin),
        _ => match auth::authorize(&state.http, &request) {
            Err(refusal) => *refusal,
            Ok(token) => {
                if let Some(token) = token {
                    request.extensions_mut().insert(token);
                }
                run_route(&state, request, &routes, matched, !proxied).await
            }
        },
    };
    let mut response = error::ensure_json(response).await;
    if let Some(origin) = &origin {
        auth::allow_origin(&state.http, &mut response, origin);
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
/// A request with a body must complete within the request timeout (a slow
/// body holds a connection and a task) when `timed`; one without a body is
/// answered from memory at once, or is an event stream, which lasts. A request
/// for the upstream is not timed here: a model can take minutes to load.
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
    let run = std::panic::AssertUnwindSafe(routes.dispatch(matched, request, state.clone()))
        .catch_unwind();
    let outcome = if has_body && timed {
        tokio::time::timeout(state.http.request_timeout, run).await
    } else {
        Ok(run.await)
    };
    let path = uri.path();
    match outcome {
        Ok(Ok(response)) => response,
        Ok(Err(panic)) => {
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
        Err(_) => ApiError::new(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            "the request took too long (a slow body?); retry",
        )
        .into_response(),
    }
}

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
        if bytes.is_empty() {
            return Err(ApiError::bad_request("the request needs a JSON body"));
        }
        let deserializer = &mut serde_json::Deserializer::from_slice(&bytes);
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
        Ok(AppJson(value))
    }
}

/// Reads a request body of at most [`MAX_BODY_BYTES`]: 413 past it (at once
/// when its `Content-Length` says so), 400 when the connection fails first.
async fn read_body(request: Request) -> Result<axum::body::Bytes, ApiError> {
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
            } else {
                ApiError::bad_request(format!("cannot read the request body: {e}"))
            }
        })
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

/// Serves the app on `listener` until `shutdown` completes.
///
/// Every connection gets `TCP_NODELAY`: an event stream writes small chunks while
/// earlier ones may still be unacknowledged, and Nagle's algorithm would hold each
/// such chunk until the subscriber's (possibly delayed, up to 40 ms) ACK.
///
/// # Errors
///
/// The listener fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let signal = state.shutdown.clone();
    let app = app(state);
    let listener = listener.tap_io(|connection| {
        if let Err(e) = connection.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY on a connection: {e}");
        }
    });
    axum::serve(
        listener,
        axum::ServiceExt::<Request>::into_make_service_with_connect_info::<SocketAddr>(app),
    )
    .with_graceful_shutdown(async move {
        shutdown.await;
        signal.trigger();
    })
    .await
}
