//! The pieces of the layer stack that [`crate::http::app`] puts around every
//! route which are aliasd's own: what tower-http and axum do not provide.
//!
//! - [`drop_unusable_request_id`] and [`NewRequestId`]: the rules of a request
//!   id, for tower-http's `SetRequestIdLayer`;
//! - [`observe`]: JSON errors, the `/metrics` count and the access log, once
//!   a request's answer is known, with what [`note_route`] and the token
//!   check noted of it ([`RequestNotes`]);
//! - [`panic_response`]: what tower-http's `CatchPanicLayer` answers;
//! - [`body_deadline`]: a request body must arrive within the request
//!   timeout, counted where the body is read, not around the handler.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower_http::request_id::{MakeRequestId, RequestId};

use crate::http::{error, ApiError, AppState, TokenName, REQUEST_ID};

/// The longest `X-Request-Id` a client may set; a longer one is replaced.
const MAX_REQUEST_ID_BYTES: usize = 200;

/// Removes an `X-Request-Id` that cannot be echoed as it is (empty, over
/// [`MAX_REQUEST_ID_BYTES`], or with bytes other than visible ASCII), so
/// that `SetRequestIdLayer`, which keeps whatever header it finds, makes a
/// new one instead. The id goes into events and the log, where a control
/// character or a megabyte would do harm.
pub fn drop_unusable_request_id(mut request: Request) -> Request {
    let usable = match request.headers().get(&REQUEST_ID) {
        None => return request,
        Some(id) => {
            let id = id.as_bytes();
            !id.is_empty()
                && id.len() <= MAX_REQUEST_ID_BYTES
                && id.iter().all(u8::is_ascii_graphic)
        }
    };
    if !usable {
        request.headers_mut().remove(&REQUEST_ID);
    }
    request
}

/// Makes the id of a request that came without a usable one: a UUID v4 from
/// [`crate::event::new_id_header`] (a per-thread generator, no system call).
#[derive(Debug, Clone, Copy, Default)]
pub struct NewRequestId;

impl MakeRequestId for NewRequestId {
    fn make_request_id<B>(&mut self, _request: &axum::http::Request<B>) -> Option<RequestId> {
        Some(RequestId::new(crate::event::new_id_header()))
    }
}

/// What the layers inside [`observe`] learn of a request, for its log line:
/// the route template (noted by [`note_route`] once the router matched it)
/// and the token's name (noted by `auth::require_token`). One per request,
/// in its extensions, shared with `observe`.
#[derive(Debug, Clone, Default)]
pub struct RequestNotes(Arc<Notes>);

#[derive(Debug, Default)]
struct Notes {
    route: OnceLock<MatchedPath>,
    actor: OnceLock<TokenName>,
}

impl RequestNotes {
    /// Notes the token the request was authorized with.
    pub fn set_actor(&self, token: &TokenName) {
        let _ = self.0.actor.set(token.clone());
    }
}

/// For `tower::util::MapRequestLayer` inside the router: notes the route the
/// request matched (axum's `MatchedPath`) in its [`RequestNotes`]. A
/// request for the fallback matched none.
pub fn note_route(request: Request) -> Request {
    if let (Some(notes), Some(route)) = (
        request.extensions().get::<RequestNotes>(),
        request.extensions().get::<MatchedPath>(),
    ) {
        let _ = notes.0.route.set(route.clone());
    }
    request
}

/// Once a request is answered: puts its request id on the answer (the
/// client's, or the one `SetRequestIdLayer` made; an upstream's own is
/// replaced), gives an error answer without a JSON body (the framework's own
/// 404, 405, 413...) the `{"error"}` shape, and aliasd's own errors on a
/// `/v1/*` route OpenAI's shape ([`error::openai_shape`]), counts it for `/metrics` by
/// route template and status, and writes the access log line (target
/// `aliasd::access`, at info): method, route, status, duration, actor (the
/// token's name, never its secret) and request id.
///
/// The id is set here rather than by tower-http's `PropagateRequestIdLayer`,
/// which also puts it in the answer's extensions (two allocations a request
/// that nothing reads), since this function holds it already.
///
/// The route is the matched template (`/api/aliases/{*name}`), never the
/// path, so that the metric's labels stay few; what no route matches is
/// `proxy` when there is an upstream, else `unmatched`. The duration runs to
/// the response's head: an event stream or a proxied answer goes on after.
pub async fn observe(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let request_id = request.extensions().get::<RequestId>().cloned();
    let openai = error::is_openai_route(request.uri().path());
    let notes = RequestNotes::default();
    request.extensions_mut().insert(notes.clone());
    let mut response = error::ensure_json(next.run(request).await).await;
    if openai {
        response = error::openai_shape(response);
    }
    if let Some(id) = &request_id {
        response
            .headers_mut()
            .insert(REQUEST_ID.clone(), id.header_value().clone());
    }
    let route = match notes.0.route.get() {
        Some(matched) => crate::http::route_label(matched.as_str()),
        None if state.http.proxy.is_some() => "proxy",
        None => "unmatched",
    };
    let status = response.status().as_u16();
    state.registry.metrics().observe_request(route, status);
    if tracing::enabled!(target: "aliasd::access", tracing::Level::INFO) {
        let actor = notes.0.actor.get().map_or("anonymous", |t| t.0.as_str());
        let request_id = request_id
            .as_ref()
            .and_then(|id| id.header_value().to_str().ok())
            .unwrap_or("");
        // Display, not Debug: every value is plain visible ASCII already
        // (a method, a template, a token name, a checked request id).
        tracing::info!(
            target: "aliasd::access",
            method = %method,
            route = %route,
            status,
            duration_us = started.elapsed().as_micros() as u64,
            actor = %actor,
            request_id = %request_id,
        );
    }
    response
}

/// The answer to a route that panicked (tower-http's `CatchPanicLayer` calls
/// it): the panic is logged, the client gets a 500 and the server stays up.
/// The access log line names the route and request id.
pub fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    tracing::error!("a request handler panicked: {message}");
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
}

/// For `tower::util::MapRequestLayer` on the routes: a request with a body
/// gets it wrapped in a [`TimedBody`], which fails once `timeout` has passed
/// since the request arrived, so that reading it answers 408 (see
/// `read_body`).
///
/// Only the body's arrival is timed, where it is read: a tower
/// `TimeoutLayer` around the handler would also cut a change that reached the
/// registry's writer, answering "retry" for a change that was made. Event
/// streams, which have no body, are never timed. tower-http's
/// `RequestBodyTimeoutLayer` is not used: its deadline starts again at each
/// chunk, so a body sent a byte at a time would hold its connection forever.
pub fn body_deadline(timeout: Duration) -> impl FnMut(Request) -> Request + Clone + Send + Sync {
    move |request: Request| {
        let has_body = request
            .headers()
            .contains_key(axum::http::header::CONTENT_LENGTH)
            || request
                .headers()
                .contains_key(axum::http::header::TRANSFER_ENCODING);
        if has_body {
            request.map(|body| axum::body::Body::new(TimedBody::new(body, timeout)))
        } else {
            request
        }
    }
}

/// A request body that fails with [`BodyTimeout`] once its time is up.
struct TimedBody {
    body: axum::body::Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
}

impl TimedBody {
    fn new(body: axum::body::Body, timeout: Duration) -> TimedBody {
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
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        match this.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimeout(this.timeout))))),
            Poll::Pending => Poll::Pending,
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
pub struct BodyTimeout(Duration);

impl BodyTimeout {
    /// The request timeout that passed.
    pub fn timeout(&self) -> Duration {
        self.0
    }
}
