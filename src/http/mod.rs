//! The HTTP API (SPEC §5): the router, shared state, and the request plumbing
//! every route uses (request ids, origins, JSON bodies and errors).
//!
//! Only this module knows about axum and status codes.

pub mod aliases;
pub mod auth;
pub mod error;
pub mod events;
pub mod experimental;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::command::Origin;
use crate::registry::Registry;
pub use error::ApiError;

/// Request bodies larger than this get 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The header carrying a request's id, echoed or generated.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What every handler can reach: cheap handles only.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The registry: commands go to its writer, reads take its lock briefly.
    pub registry: Registry,
    /// Tokens, origins and limits, fixed at start-up.
    pub http: Arc<HttpConfig>,
    /// Fires once when the server begins to shut down; event streams end then.
    pub shutdown: Shutdown,
}

impl AppState {
    /// State for serving `registry` with `http` settings.
    pub fn new(registry: Registry, http: HttpConfig) -> AppState {
        AppState {
            registry,
            http: Arc::new(http),
            shutdown: Shutdown::default(),
        }
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
    pub request_timeout: std::time::Duration,
}

impl Default for HttpConfig {
    fn default() -> HttpConfig {
        HttpConfig {
            tokens: Vec::new(),
            origins: Vec::new(),
            max_subscribers: 4096,
            request_timeout: std::time::Duration::from_secs(30),
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

/// Builds the router with every route of SPEC §5.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route(
            "/api/experimental/aliases",
            get(experimental::aliases_list)
                .post(experimental::alias_create)
                .delete(experimental::alias_delete),
        )
        .route(
            "/api/aliases",
            get(aliases::aliases_list).post(aliases::aliases_batch),
        )
        .route(
            "/api/aliases/{*name}",
            get(aliases::alias_get)
                .put(aliases::alias_put)
                .delete(aliases::alias_delete),
        )
        .route("/api/resolve/{*name}", get(aliases::resolve_get))
        .route("/api/models", get(aliases::models_list))
        .route("/api/history", get(events::history_list))
        .route("/api/events", get(events::events_stream))
        .route("/healthz", get(aliases::healthz))
        .route("/metrics", get(metrics_get))
        .fallback(unknown_route)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            request_timeout,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::cors,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            count_request,
        ))
        .layer(axum::middleware::from_fn(error::json_errors))
        .layer(axum::middleware::from_fn(catch_panic))
        .layer(axum::middleware::from_fn(request_id))
        .with_state(state)
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
            "text/plain; version=0.0.4",
        )],
        text,
    )
        .into_response()
}

/// Counts responses by matched route and status for `/metrics`.
async fn count_request(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .cloned();
    let response = next.run(request).await;
    let route = route.as_ref().map_or("unmatched", |p| p.as_str());
    state
        .registry
        .metrics()
        .observe_request(route, response.status().as_u16());
    response
}

/// Every request but an event stream must finish within the configured time
/// (slow bodies included): else 408.
async fn request_timeout(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if request.uri().path() == "/api/events" {
        return next.run(request).await;
    }
    match tokio::time::timeout(state.http.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            "the request took too long (a slow body?); retry",
        )
        .into_response(),
    }
}

/// A panic in a handler becomes a logged 500 with a JSON body; the server stays up.
async fn catch_panic(request: Request, next: Next) -> Response {
    use futures_util::FutureExt;
    let path = request.uri().path().to_string();
    match std::panic::AssertUnwindSafe(next.run(request))
        .catch_unwind()
        .await
    {
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

async fn unknown_route(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no route for {method} {}", uri.path()))
}

/// The id of the current request.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// The name of the token a request was authorized with.
#[derive(Debug, Clone)]
pub struct TokenName(pub String);

/// Takes `X-Request-Id` from the request (if sane) or makes one, and returns it
/// as a response header.
async fn request_id(mut request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 200 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(String::from)
        .unwrap_or_else(crate::event::new_id);
    request.extensions_mut().insert(RequestId(id.clone()));
    let mut response = next.run(request).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID.clone(), value);
    }
    response
}

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
        let request_id = parts.extensions.get::<RequestId>().map(|r| r.0.clone());
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

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                ApiError::new(rejection.status(), rejection.body_text().to_lowercase())
            })?;
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

/// Serves the app on `listener` until `shutdown` completes.
///
/// # Errors
///
/// The listener fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let signal = state.shutdown.clone();
    let router = app(state);
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown.await;
        signal.trigger();
    })
    .await
}
