//! The pieces of the layer stack that [`crate::http::app`] puts around every
//! route which are aliasd's own: what tower-http and axum do not provide.
//!
//! - [`drop_unusable_request_id`] and [`NewRequestId`]: the rules of a request
//!   id, for tower-http's `SetRequestIdLayer`;
//! - [`observe`]: JSON errors, the `/metrics` count and the access log, once
//!   a request's answer is known;
//! - [`panic_response`]: what tower-http's `CatchPanicLayer` answers;
//! - [`body_deadline`]: a request body must arrive within the request
//!   timeout, counted where the body is read, not around the handler.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
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

/// Once a request is answered: gives an error answer without a JSON body
/// (the framework's own 404, 405, 413...) the `{"error"}` shape, counts it
/// for `/metrics` by route template and status, and writes the access log
/// line (target `aliasd::access`, at info): method, route, status, duration,
/// actor (the token's name, never its secret), request id and peer.
///
/// The route is the matched template (`/api/aliases/{*name}`), never the
/// path, so that the metric's labels stay few; what no route matches is
/// `proxy` when there is an upstream, else `unmatched`. The duration runs to
/// the response's head: an event stream or a proxied answer goes on after.
pub async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let matched = request.extensions().get::<MatchedPath>().cloned();
    let request_id = request.extensions().get::<RequestId>().cloned();
    let peer = request
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0);
    let response = error::ensure_json(next.run(request).await).await;
    let route = match &matched {
        Some(matched) => matched.as_str(),
        None if state.http.proxy.is_some() => "proxy",
        None => "unmatched",
    };
    let status = response.status().as_u16();
    state.registry.metrics().observe_request(route, status);
    let actor = response
        .extensions()
        .get::<TokenName>()
        .map_or("anonymous", |token| token.0.as_str());
    let request_id = request_id
        .as_ref()
        .and_then(|id| id.header_value().to_str().ok())
        .unwrap_or("");
    tracing::info!(
        target: "aliasd::access",
        method = method.as_str(),
        route,
        status,
        duration_us = started.elapsed().as_micros() as u64,
        actor,
        request_id,
        peer = peer.map(tracing::field::display),
    );
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
