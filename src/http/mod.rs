//! The HTTP API (SPEC §5): the router, shared state, and the request plumbing
//! every route uses (request ids, origins, JSON bodies and errors).
//!
//! Only this module knows about axum and status codes.

pub mod aliases;
pub mod error;
pub mod events;
pub mod experimental;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
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
    /// Fires once when the server begins to shut down; event streams end then.
    pub shutdown: Shutdown,
}

impl AppState {
    /// State for serving `registry`.
    pub fn new(registry: Registry) -> AppState {
        AppState {
            registry,
            shutdown: Shutdown::default(),
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
        .fallback(unknown_route)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(error::json_errors))
        .layer(axum::middleware::from_fn(request_id))
        .with_state(state)
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

/// `axum::Json` whose rejections are [`ApiError`]s.
#[derive(Debug, Clone)]
pub struct AppJson<T>(pub T);

impl<T, S> FromRequest<S> for AppJson<T>
where
    axum::Json<T>: FromRequest<S, Rejection = axum::extract::rejection::JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let axum::Json(value) = axum::Json::<T>::from_request(request, state).await?;
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
