//! The pieces of the layer stack that [`crate::http::app`] puts around every
//! route which are aliasd's own: what tower-http and axum do not provide.
//!
//! - [`ObserveLayer`]: the request id (the client's `X-Request-Id` when it
//!   is sane, else a new one), then, once a request's answer is known, JSON
//!   errors, the `/metrics` count and the access log, with what
//!   the route's checks noted of it ([`RequestNotes`]);
//! - [`PanicGuardLayer`]: a route's panic answered as a 500
//!   ([`panic_response`]);
//! - [`body_deadline`]: a request body must arrive within the request
//!   timeout, counted where the body is read, not around the handler.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::http::{error, ApiError, AppState, TokenName, REQUEST_ID};

/// The longest `X-Request-Id` a client may set; a longer one is replaced.
const MAX_REQUEST_ID_BYTES: usize = 200;

/// Whether a client's `X-Request-Id` can be echoed as it is: not empty, at
/// most [`MAX_REQUEST_ID_BYTES`], only visible ASCII. The id goes into
/// events and the log, where a control character or a megabyte would do harm.
fn usable_request_id(id: &HeaderValue) -> bool {
    let id = id.as_bytes();
    !id.is_empty() && id.len() <= MAX_REQUEST_ID_BYTES && id.iter().all(u8::is_ascii_graphic)
}

/// The request's id: its `X-Request-Id` when usable, else a new one
/// ([`new_request_id`]), which then replaces whatever the header held, so
/// that the handlers (events' `request_id`) and the upstream (`--upstream`)
/// see the id the answer carries.
fn request_id(request: &mut Request) -> HeaderValue {
    if let Some(id) = request.headers().get(&REQUEST_ID) {
        if usable_request_id(id) {
            return id.clone();
        }
    }
    let id = new_request_id();
    request.headers_mut().insert(REQUEST_ID.clone(), id.clone());
    id
}

/// A new request id, in the shape of a UUID v4 (as clients may expect):
/// its first half this process's random prefix (60 random bits and the
/// version), its second half a counter (62 bits and the variant), so
/// `1f0c9a1e-5b7d-4468-8000-00000000002a`. Unique within the process by the
/// counter, and across processes by the prefix (SPEC §4 asks only "from
/// `X-Request-Id` or generated"); cheaper than drawing 122 random bits for
/// every request.
pub fn new_request_id() -> HeaderValue {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| {
        // Without the OS's randomness the time of start-up still tells
        // this process's ids from another's.
        let random = getrandom::u64().unwrap_or_else(|_| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |t| t.as_nanos() as u64)
        });
        (random & !0xf000) | 0x4000
    });
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let count = (count & (u64::MAX >> 2)) | (1 << 63);
    let (high, low) = (hex16(prefix), hex16(count));
    let mut id = [b'-'; 36];
    id[..8].copy_from_slice(&high[..8]);
    id[9..13].copy_from_slice(&high[8..12]);
    id[14..18].copy_from_slice(&high[12..]);
    id[19..23].copy_from_slice(&low[..4]);
    id[24..].copy_from_slice(&low[4..]);
    // Shared, not copied: the request and its answer each hold the id, and
    // a clone is a count, not an allocation.
    HeaderValue::from_maybe_shared(axum::body::Bytes::from_owner(id))
        .expect("hex digits and hyphens are a valid header value")
}

/// `n` as 16 lowercase hex digits.
fn hex16(n: u64) -> [u8; 16] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0; 16];
    for (i, digit) in out.iter_mut().enumerate() {
        *digit = DIGITS[(n >> (60 - 4 * i)) as usize & 0xf];
    }
    out
}

/// What is known of a request besides its head, one per request in its
/// extensions: the peer's address (put there by the connection, `server`),
/// and what the layers inside [`Observe`] learn of it for its log line: the
/// route template (noted by `auth::RouteChecks` once the router matched it,
/// or by the resolve fast path) and
/// the token's name (noted by `auth::RouteChecks`). Shared with `Observe`.
///
/// The peer rides here rather than as axum's `ConnectInfo`, an extension of
/// its own: one entry fewer in every request's extension map.
#[derive(Debug, Clone, Default)]
pub struct RequestNotes(Arc<Notes>);

#[derive(Debug, Default)]
struct Notes {
    peer: Option<std::net::SocketAddr>,
    /// The route's template, its `/metrics` label.
    route: OnceLock<&'static str>,
    actor: OnceLock<TokenName>,
}

impl RequestNotes {
    /// The notes of a request that came from `peer`.
    pub fn from_peer(peer: std::net::SocketAddr) -> RequestNotes {
        RequestNotes(Arc::new(Notes {
            peer: Some(peer),
            ..Notes::default()
        }))
    }

    /// The address of the client the request came from, when it came over
    /// a connection (not, say, from a test calling the app directly).
    pub fn peer(&self) -> Option<std::net::SocketAddr> {
        self.0.peer
    }

    /// Notes the route the request matched, by its `/metrics` label (the
    /// route's template); the first note stands.
    pub fn set_route(&self, label: &'static str) {
        let _ = self.0.route.set(label);
    }

    /// Notes the token the request was authorized with.
    pub fn set_actor(&self, token: &TokenName) {
        let _ = self.0.actor.set(token.clone());
    }
}

/// The outermost layer of [`crate::http::app`]: gives every request its id
/// and, once it is answered, puts the id on the answer (an upstream's own is
/// replaced), gives an error answer without a JSON body (the framework's own
/// 404, 405, 413...) the `{"error"}` shape, and aliasd's own errors on a
/// `/v1/*` route OpenAI's shape ([`error::openai_shape`]), counts it for `/metrics` by
/// route template and status, and writes the access log line (target
/// [`crate::logging::ACCESS_TARGET`], at info): method, route, status,
/// duration, actor (the token's name, never its secret) and request id.
///
/// The route is the matched template (`/api/aliases/{*name}`), never the
/// path, so that the metric's labels stay few; what no route matches is
/// `proxy` when there is an upstream, else `unmatched`. The duration runs to
/// the response's head: an event stream or a proxied answer goes on after.
///
/// A `Layer` of its own rather than axum's `from_fn` (which boxes a future,
/// and the rest of the stack as its `Next`, on every request) and
/// tower-http's `SetRequestIdLayer` (which also copies the id into the
/// request's extensions): its future is a plain struct, and nothing is boxed
/// but the rare error answer that needs its body read.
#[derive(Debug, Clone)]
pub struct ObserveLayer {
    state: AppState,
}

impl ObserveLayer {
    /// The layer for the app serving `state`.
    pub fn new(state: AppState) -> ObserveLayer {
        ObserveLayer { state }
    }
}

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            state: self.state.clone(),
        }
    }
}

/// The service of [`ObserveLayer`].
#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
    state: AppState,
}

impl<S, B> tower::Service<Request> for Observe<S>
where
    S: tower::Service<Request, Response = axum::http::Response<B>, Error = Infallible>,
    B: axum::body::HttpBody<Data = axum::body::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = ObserveFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let started = Instant::now();
        let request_id = request_id(&mut request);
        let openai = error::is_openai_route(request.uri().path());
        // The connection put them there, with the peer's address.
        let notes = match request.extensions().get::<RequestNotes>() {
            Some(notes) => notes.clone(),
            None => {
                let notes = RequestNotes::default();
                request.extensions_mut().insert(notes.clone());
                notes
            }
        };
        let seen = Seen {
            started,
            method: request.method().clone(),
            request_id,
            openai,
            notes,
            state: self.state.clone(),
        };
        ObserveFuture {
            step: Step::Route {
                future: self.inner.call(request),
            },
            seen: Some(seen),
        }
    }
}

/// What [`Observe`] keeps of a request until its answer.
struct Seen {
    started: Instant,
    method: Method,
    request_id: HeaderValue,
    /// A `/v1/*` route: aliasd's own errors take OpenAI's shape.
    openai: bool,
    notes: RequestNotes,
    state: AppState,
}

pin_project_lite::pin_project! {
    /// The future of [`Observe`]: the route's answer, then (for an error
    /// answer that is not JSON yet) its body made JSON, then the answer
    /// observed.
    pub struct ObserveFuture<F> {
        #[pin]
        step: Step<F>,
        seen: Option<Seen>,
    }
}

pin_project_lite::pin_project! {
    #[project = StepProjection]
    enum Step<F> {
        Route { #[pin] future: F },
        Json { future: Pin<Box<dyn Future<Output = Response> + Send>> },
    }
}

impl<F, B> Future for ObserveFuture<F>
where
    F: Future<Output = Result<axum::http::Response<B>, Infallible>>,
    B: axum::body::HttpBody<Data = axum::body::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let response = loop {
            match this.step.as_mut().project() {
                StepProjection::Route { future } => {
                    let Ok(response) = ready!(future.poll(cx));
                    let response = response.map(axum::body::Body::new);
                    if error::needs_json(&response) {
                        this.step.set(Step::Json {
                            future: Box::pin(error::ensure_json(response)),
                        });
                        continue;
                    }
                    break response;
                }
                StepProjection::Json { future } => break ready!(future.as_mut().poll(cx)),
            }
        };
        let seen = this.seen.take().expect("an answer is observed once");
        Poll::Ready(Ok(seen.observe(response)))
    }
}

impl Seen {
    /// Puts the request id on `response`, counts it and logs it.
    fn observe(self, mut response: Response) -> Response {
        if self.openai {
            response = error::openai_shape(response);
        }
        let route = match self.notes.0.route.get() {
            Some(label) => *label,
            None if self.state.http.proxy.is_some() => "proxy",
            None => "unmatched",
        };
        let status = response.status().as_u16();
        self.state.registry.metrics().observe_request(route, status);
        let actor = self
            .notes
            .0
            .actor
            .get()
            .map_or("anonymous", |t| t.0.as_str());
        crate::logging::log_access(&crate::logging::Access {
            method: self.method.as_str(),
            route,
            status,
            duration_us: self.started.elapsed().as_micros() as u64,
            actor,
            // A checked request id is visible ASCII (`usable_request_id`).
            request_id: self.request_id.to_str().unwrap_or(""),
        });
        response
            .headers_mut()
            .insert(REQUEST_ID.clone(), self.request_id);
        response
    }
}

/// Turns a panic in what it wraps (in its `call`, or while its answer is
/// awaited) into [`panic_response`]'s 500, as tower-http's
/// `CatchPanicLayer` does, but for the body: tower-http's boxes every
/// answer's body into a body of its own, which [`Observe`] then boxes again
/// as axum's `Body` (two allocations and two dynamic calls a request, on
/// every route); here the answer goes on as the route gave it.
#[derive(Debug, Clone, Default)]
pub struct PanicGuardLayer;

impl<S> tower::Layer<S> for PanicGuardLayer {
    type Service = PanicGuard<S>;

    fn layer(&self, inner: S) -> PanicGuard<S> {
        PanicGuard { inner }
    }
}

/// The service of [`PanicGuardLayer`].
#[derive(Debug, Clone)]
pub struct PanicGuard<S> {
    inner: S,
}

impl<S> tower::Service<Request> for PanicGuard<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = PanicGuardFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let inner = &mut self.inner;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.call(request))) {
            Ok(future) => PanicGuardFuture::Route { future },
            Err(panic) => PanicGuardFuture::Panicked {
                response: Some(panic_response(panic)),
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`PanicGuard`]: the route's answer, or the 500 of a
    /// route that panicked.
    #[project = PanicGuardProjection]
    pub enum PanicGuardFuture<F> {
        /// The route's answer, awaited.
        Route { #[pin] future: F },
        /// The route panicked in its `call`.
        Panicked { response: Option<Response> },
    }
}

impl<F> Future for PanicGuardFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            PanicGuardProjection::Route { future } => {
                // Once it panicked the route's future is not polled again:
                // its answer is the 500.
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| future.poll(cx))) {
                    Ok(poll) => poll,
                    Err(panic) => Poll::Ready(Ok(panic_response(panic))),
                }
            }
            PanicGuardProjection::Panicked { response } => {
                Poll::Ready(Ok(response.take().expect("polled after it was ready")))
            }
        }
    }
}

/// The answer to a route that panicked ([`PanicGuard`] calls it): the panic
/// is logged, the client gets a 500 and the server stays up. The access log
/// line names the route and request id.
pub fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    tracing::error!("a request handler panicked: {message}");
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
}

/// For the routes aliasd serves (`auth::RouteChecks` calls it once the path
/// matched one): a request with a body gets it wrapped in a [`TimedBody`], which fails once `timeout` has passed
/// since the request arrived, so that reading it answers 408 (see
/// `read_body`).
///
/// Only the body's arrival is timed, where it is read: a tower
/// `TimeoutLayer` around the handler would also cut a change that reached the
/// registry's writer, answering "retry" for a change that was made. Event
/// streams, which have no body, are never timed. tower-http's
/// `RequestBodyTimeoutLayer` is not used: its deadline starts again at each
/// chunk, so a body sent a byte at a time would hold its connection forever.
pub fn body_deadline(request: Request, timeout: Duration) -> Request {
    let has_body = request
        .headers()
        .contains_key(axum::http::header::CONTENT_LENGTH)
        || request
            .headers()
            .contains_key(axum::http::header::TRANSFER_ENCODING);
    if has_body {
        time_body(request, timeout)
    } else {
        request
    }
}

/// [`body_deadline`] of a request known to have a body (its headers
/// already read by the caller).
pub fn time_body(request: Request, timeout: Duration) -> Request {
    request.map(|body| axum::body::Body::new(TimedBody::new(body, timeout)))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The answer of `service` to a `GET /`, and its body.
    fn answer<S>(service: S) -> (StatusCode, String)
    where
        S: tower::Service<Request, Response = Response, Error = Infallible>,
    {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let request = Request::new(axum::body::Body::empty());
            let Ok(response) = tower::ServiceExt::oneshot(service, request).await;
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap();
            (status, String::from_utf8_lossy(&body).into_owned())
        })
    }

    /// A panic in a route's `call` or in its future is a JSON 500; an answer
    /// goes through as it was given.
    #[test]
    fn a_panicking_route_answers_500() {
        let in_call = tower::service_fn(
            |_: Request| -> std::future::Ready<Result<Response, Infallible>> { panic!("in call") },
        );
        let in_future = tower::service_fn(|_: Request| async {
            if std::hint::black_box(true) {
                panic!("in the future");
            }
            Ok::<Response, Infallible>(Response::default())
        });
        for (status, body) in [
            answer(PanicGuard { inner: in_call }),
            answer(PanicGuard { inner: in_future }),
        ] {
            assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
            assert_eq!(body, r#"{"error":"internal error"}"#);
        }
        let fine = tower::service_fn(|_: Request| async {
            Ok::<Response, Infallible>((StatusCode::IM_A_TEAPOT, "tea").into_response())
        });
        assert_eq!(
            answer(PanicGuard { inner: fine }),
            (StatusCode::IM_A_TEAPOT, "tea".to_string())
        );
    }

    #[test]
    fn new_request_ids_are_distinct_uuids_of_version_4() {
        let first = new_request_id();
        let second = new_request_id();
        assert_ne!(first, second);
        for id in [first, second] {
            let text = id.to_str().unwrap();
            let uuid = uuid::Uuid::parse_str(text).unwrap();
            assert_eq!(uuid.get_version_num(), 4, "{text}");
            assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122, "{text}");
            assert_eq!(uuid.hyphenated().to_string(), text);
        }
    }
}
