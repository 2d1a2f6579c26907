//! Resolve's fast path (issue 18): a plain `GET` or `HEAD` of
//! `/api/resolve/{name}` answered in front of axum's `Router`, which would
//! otherwise match the path, copy its parameter into the request's
//! extensions, note the matched template, clone the route's layered service
//! and box its futures, for the route every client calls most.
//!
//! Nothing is decided here that the routed request decides elsewhere: the
//! checks are `auth::RouteChecks`'s own ([`auth::check`]), the name is
//! decoded as axum's `Path` decodes it ([`PathName::decode`]), the answer
//! is the handler's ([`aliases::resolve_answer`]), the `/metrics` label is
//! the route's ([`RESOLVE_ROUTE`]), and the request id, the access line and
//! panics are the layers' around both ways (`http::app`). What a request
//! the fast path does not take meets is the router, unchanged: any other
//! path or method (a `POST` there is the router's 405 with `Allow`), a path
//! with nothing after `/api/resolve/` (no route: the fallback), and a
//! browser's request (an `Origin`: CORS is the router's).

use std::convert::Infallible;
use std::future::Ready;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::http::{header, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use futures_util::future::Either;

use crate::http::auth::{self, Checked};
use crate::http::middleware::RequestNotes;
use crate::http::{aliases, AppState, PathName, RESOLVE_ROUTE};

/// The path of [`RESOLVE_ROUTE`] before its `{*name}`.
const RESOLVE_PREFIX: &str = "/api/resolve/";

/// The fast path in front of `inner` (the router), for the app serving
/// `state`.
#[derive(Clone, Debug)]
pub struct FastResolve<S> {
    inner: S,
    state: AppState,
}

impl<S> FastResolve<S> {
    /// `inner` with resolve's fast path in front of it.
    pub fn new(state: AppState, inner: S) -> FastResolve<S> {
        FastResolve { inner, state }
    }

    /// The answer to `request` when the fast path takes it, else the
    /// request, untouched but for its route noted (the same note the router
    /// makes of it).
    #[allow(clippy::result_large_err)] // The request moves on as it is: boxing it would allocate.
    fn answer(&self, request: Request) -> Result<Response, Request> {
        let head = match *request.method() {
            Method::GET => false,
            Method::HEAD => true,
            _ => return Err(request),
        };
        // `{*name}` matches one character or more.
        let taken = request
            .uri()
            .path()
            .strip_prefix(RESOLVE_PREFIX)
            .is_some_and(|raw| !raw.is_empty());
        if !taken || request.headers().contains_key(header::ORIGIN) {
            return Err(request);
        }
        // Noted before the checks, as by the router, so that a refusal is
        // counted under the route too.
        if let Some(notes) = request.extensions().get::<RequestNotes>() {
            notes.set_route(RESOLVE_ROUTE);
        }
        let response = match auth::check(&self.state.http, request, true) {
            Checked::Route(request) => {
                let raw = &request.uri().path()[RESOLVE_PREFIX.len()..];
                PathName::decode(raw)
                    .and_then(|name| aliases::resolve_answer(&self.state, &name))
                    .into_response()
            }
            Checked::Refused(response) => response,
            // Not here: a request with an `Origin` was left to the router.
            Checked::Browser(request) => return Err(request),
        };
        Ok(as_routed(response, head))
    }
}

/// What axum's route does to every answer it gives (its `RouteFuture`),
/// done to the fast path's: a `Content-Length` from the body's exact size
/// when the answer has none, and, for `HEAD`, the body dropped (the length
/// stays, as `GET`'s).
fn as_routed(mut response: Response, head: bool) -> Response {
    if !response.headers().contains_key(header::CONTENT_LENGTH) {
        if let Some(size) = axum::body::HttpBody::size_hint(response.body()).exact() {
            response
                .headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(size));
        }
    }
    if head {
        *response.body_mut() = axum::body::Body::empty();
    }
    response
}

impl<S> tower::Service<Request> for FastResolve<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    /// Its own answer, ready, or the router's future.
    type Future = Either<Ready<Result<Response, Infallible>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        match self.answer(request) {
            Ok(response) => {
                #[cfg(test)]
                TAKEN.with(|taken| taken.set(taken.get() + 1));
                Either::Left(std::future::ready(Ok(response)))
            }
            Err(request) => Either::Right(self.inner.call(request)),
        }
    }
}

#[cfg(test)]
thread_local! {
    /// Requests the fast path answered on this thread (tests: a request
    /// meant for it did not quietly go through the router).
    static TAKEN: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{HeaderMap, StatusCode};
    use proptest::prelude::*;
    use tower::ServiceExt;

    use super::*;
    use crate::http::{app, app_without_fast_path, HttpConfig};
    use crate::registry::{Command, Registry, RegistryConfig, WriterThread};

    /// A registry over a store of its own: models `m1`, `m2` and `gone`
    /// (removed once aliases point at it); aliases `coder` → `m1`,
    /// `chain` → `coder`, `Mixed/Case:v1` → `m2`, the prefix `team-` → `m2`,
    /// `dangling` → `gone`.
    struct Registered {
        registry: Option<Registry>,
        writer: Option<WriterThread>,
        runtime: tokio::runtime::Runtime,
        _dir: tempfile::TempDir,
    }

    impl Drop for Registered {
        fn drop(&mut self) {
            drop(self.registry.take());
            if let Some(writer) = self.writer.take() {
                writer.join();
            }
        }
    }

    fn add_model(root: &std::path::Path, name: &str) -> std::path::PathBuf {
        let dir = root.join("manifests/registry.ollama.ai/library").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let manifest =
            format!(r#"{{"schemaVersion":2,"layers":[],"annotations":{{"m":{name:?}}}}}"#);
        std::fs::write(dir.join("latest"), manifest).unwrap();
        dir.join("latest")
    }

    fn registered() -> Registered {
        let dir = tempfile::tempdir().unwrap();
        let models = dir.path().join("models");
        for name in ["m1", "m2"] {
            add_model(&models, name);
        }
        let gone = add_model(&models, "gone");
        let config = RegistryConfig {
            models_dir: models.clone(),
            journal_dir: dir.path().join("journal"),
            retain: None,
            segment_bytes: 1 << 20,
            snapshot_every: 1_000,
            io: None,
        };
        let (registry, writer) = Registry::start(config).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let state = AppState::new(registry.clone(), HttpConfig::default());
        runtime.block_on(async {
            for (alias, target) in [
                ("coder", "m1"),
                ("chain", "coder"),
                ("Mixed/Case:v1", "m2"),
                ("dangling", "gone"),
            ] {
                let request = Request::put(format!("/api/aliases/{alias}"))
                    .header(header::HOST, "localhost")
                    .body(Body::from(format!(r#"{{"target":{target:?}}}"#)))
                    .unwrap();
                let response = app(state.clone()).oneshot(request).await.unwrap();
                assert!(response.status().is_success(), "{alias}: {response:?}");
            }
            let request = Request::post("/api/experimental/aliases")
                .header(header::HOST, "localhost")
                .body(Body::from(
                    r#"{"alias":"team-","target":"m2","prefix_matching":true}"#,
                ))
                .unwrap();
            let response = app(state.clone()).oneshot(request).await.unwrap();
            assert!(response.status().is_success(), "the prefix: {response:?}");
            std::fs::remove_file(&gone).unwrap();
            registry
                .execute(Command::Reconcile, crate::command::Origin::system("test"))
                .await
                .unwrap();
        });
        Registered {
            registry: Some(registry),
            writer: Some(writer),
            runtime,
            _dir: dir,
        }
    }

    /// One request of the corpus: method, path and query, headers.
    type Asked<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);

    /// The answer's status, headers (a new request id as `(new)`) and body.
    async fn send<S>(
        service: S,
        (method, uri, headers): Asked<'_>,
    ) -> (StatusCode, HeaderMap, Vec<u8>)
    where
        S: tower::Service<Request, Response = Response, Error = Infallible>,
    {
        let mut request = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = service
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let (mut parts, body) = response.into_parts();
        // The client's id echoed stays; a new one (different every time)
        // is only said to be new.
        let sent = headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("x-request-id"))
            .map(|(_, value)| *value);
        let id = parts.headers.get("x-request-id").map(|id| id.as_bytes());
        if id.is_some() && id != sent.map(str::as_bytes) {
            parts
                .headers
                .insert("x-request-id", HeaderValue::from_static("(new)"));
        }
        let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        (parts.status, parts.headers, body.to_vec())
    }

    /// Whether the fast path answered a request sent through `app` on this
    /// thread, and the answer.
    fn through_app(
        registered: &Registered,
        http: &HttpConfig,
        asked: Asked<'_>,
    ) -> (bool, (StatusCode, HeaderMap, Vec<u8>)) {
        let state = AppState::new(registered.registry.clone().unwrap(), http.clone());
        let before = TAKEN.with(std::cell::Cell::get);
        let answer = registered.runtime.block_on(send(app(state), asked));
        (TAKEN.with(std::cell::Cell::get) > before, answer)
    }

    /// The answer through the router alone.
    fn through_router(
        registered: &Registered,
        http: &HttpConfig,
        asked: Asked<'_>,
    ) -> (StatusCode, HeaderMap, Vec<u8>) {
        let state = AppState::new(registered.registry.clone().unwrap(), http.clone());
        registered
            .runtime
            .block_on(send(app_without_fast_path(state), asked))
    }

    const LOCAL: (&str, &str) = ("host", "localhost:11435");

    /// Every request answers the same through the app (fast path in front)
    /// as through the router alone; the fast path takes the plain `GET`s and
    /// `HEAD`s it is meant for, and leaves the rest to the router.
    #[test]
    fn the_fast_path_answers_as_the_router_does() {
        let registered = registered();
        let plain = HttpConfig::default();
        let browser = ("origin", "http://localhost:3000");
        let corpus: &[(Asked<'_>, bool)] = &[
            (("GET", "/api/resolve/coder", &[LOCAL]), true),
            (("GET", "/api/resolve/coder", &[LOCAL]), true), // kept
            (("GET", "/api/resolve/CODER", &[LOCAL]), true),
            (("GET", "/api/resolve/chain", &[LOCAL]), true),
            (("GET", "/api/resolve/m1", &[LOCAL]), true),
            (("GET", "/api/resolve/m1:latest", &[LOCAL]), true),
            (("GET", "/api/resolve/Mixed/Case:v1", &[LOCAL]), true),
            (("GET", "/api/resolve/mixed%2Fcase%3Av1", &[LOCAL]), true),
            (("GET", "/api/resolve/team-x", &[LOCAL]), true),
            (("GET", "/api/resolve/team-", &[LOCAL]), true),
            (("GET", "/api/resolve/dangling", &[LOCAL]), true),
            (("GET", "/api/resolve/gone", &[LOCAL]), true),
            (("GET", "/api/resolve/unknown", &[LOCAL]), true),
            (("GET", "/api/resolve/..", &[LOCAL]), true),
            (("GET", "/api/resolve/a/../b", &[LOCAL]), true),
            (("GET", "/api/resolve/%2e%2e", &[LOCAL]), true),
            (("GET", "/api/resolve/with%20space", &[LOCAL]), true),
            (("GET", "/api/resolve/nul%00", &[LOCAL]), true),
            (("GET", "/api/resolve/a%2Fb", &[LOCAL]), true),
            (("GET", "/api/resolve/%FF", &[LOCAL]), true),
            (("GET", "/api/resolve/coder%FF%FE", &[LOCAL]), true),
            (("GET", "/api/resolve/%", &[LOCAL]), true),
            (("GET", "/api/resolve/coder?x=1&y", &[LOCAL]), true),
            (("GET", "/api/resolve/coder/", &[LOCAL]), true),
            (("GET", "/api/resolve//coder", &[LOCAL]), true),
            (("GET", "/api/resolve/coder", &[]), true),
            (("GET", "http://localhost/api/resolve/coder", &[]), true),
            (
                (
                    "GET",
                    "/api/resolve/coder",
                    &[LOCAL, ("x-request-id", "mine-1")],
                ),
                true,
            ),
            (
                (
                    "GET",
                    "/api/resolve/coder",
                    &[LOCAL, ("x-request-id", "bad id")],
                ),
                true,
            ),
            (("HEAD", "/api/resolve/coder", &[LOCAL]), true),
            (("HEAD", "/api/resolve/unknown", &[LOCAL]), true),
            (
                ("GET", "/api/resolve/coder", &[("host", "attacker.example")]),
                true,
            ),
            (
                (
                    "HEAD",
                    "/api/resolve/coder",
                    &[("host", "attacker.example:11435")],
                ),
                true,
            ),
            (
                (
                    "GET",
                    "/api/resolve/coder",
                    &[("host", "localhost"), ("host", "evil")],
                ),
                true,
            ),
            (
                (
                    "GET",
                    "/api/resolve/coder",
                    &[LOCAL, ("authorization", "Bearer x")],
                ),
                true,
            ),
            // Left to the router.
            (("POST", "/api/resolve/coder", &[LOCAL]), false),
            (("DELETE", "/api/resolve/coder", &[LOCAL]), false),
            (("PUT", "/api/resolve/coder", &[LOCAL]), false),
            (("OPTIONS", "/api/resolve/coder", &[LOCAL]), false),
            (("GET", "/api/resolve/", &[LOCAL]), false),
            (("GET", "/api/resolve", &[LOCAL]), false),
            (("GET", "/api/resolvex/coder", &[LOCAL]), false),
            (("GET", "/API/resolve/coder", &[LOCAL]), false),
            (("GET", "/api/aliases/coder", &[LOCAL]), false),
            (("GET", "/api/resolve/coder", &[LOCAL, browser]), false),
            (("HEAD", "/api/resolve/coder", &[LOCAL, browser]), false),
            (
                (
                    "GET",
                    "/api/resolve/coder",
                    &[LOCAL, ("origin", "https://evil.example")],
                ),
                false,
            ),
            (
                (
                    "GET",
                    "/api/resolve/coder",
                    &[("host", "attacker.example"), browser],
                ),
                false,
            ),
            (
                (
                    "OPTIONS",
                    "/api/resolve/coder",
                    &[LOCAL, browser, ("access-control-request-method", "GET")],
                ),
                false,
            ),
        ];
        let tokens = HttpConfig {
            tokens: vec![
                auth::Token::parse("ci=s3cret", false).unwrap(),
                auth::Token::parse("reader=r3ad", true).unwrap(),
            ],
            ..HttpConfig::default()
        };
        let with_tokens: &[(Asked<'_>, bool)] = &[
            (("GET", "/api/resolve/coder", &[LOCAL]), true),
            (("HEAD", "/api/resolve/coder", &[LOCAL]), true),
            (
                (
                    "GET",
                    "/api/resolve/coder",
                    &[LOCAL, ("authorization", "Bearer wrong")],
                ),
                true,
            ),
            (
                (
                    "GET",
                    "/api/resolve/coder",
                    &[LOCAL, ("authorization", "Bearer r3ad")],
                ),
                true,
            ),
            (
                (
                    "GET",
                    "/api/resolve/coder",
                    &[LOCAL, ("authorization", "bearer s3cret")],
                ),
                true,
            ),
            (("GET", "/api/resolve/%FF", &[LOCAL]), true),
            (
                (
                    "GET",
                    "/api/resolve/%FF",
                    &[LOCAL, ("authorization", "Bearer r3ad")],
                ),
                true,
            ),
            (
                ("GET", "/api/resolve/coder", &[("host", "evil.example")]),
                true,
            ),
            (
                (
                    "POST",
                    "/api/resolve/coder",
                    &[LOCAL, ("authorization", "Bearer r3ad")],
                ),
                false,
            ),
            (("GET", "/api/resolve/coder", &[LOCAL, browser]), false),
            (
                (
                    "GET",
                    "/api/resolve/coder",
                    &[LOCAL, browser, ("authorization", "Bearer r3ad")],
                ),
                false,
            ),
        ];
        let open = HttpConfig {
            check_host: false,
            ..HttpConfig::default()
        };
        let exposed: &[(Asked<'_>, bool)] = &[
            (
                ("GET", "/api/resolve/coder", &[("host", "attacker.example")]),
                true,
            ),
            (
                (
                    "GET",
                    "/api/resolve/chain",
                    &[("host", "aliasd.internal:80")],
                ),
                true,
            ),
        ];
        for (http, corpus) in [(&plain, corpus), (&tokens, with_tokens), (&open, exposed)] {
            for &(asked, fast) in corpus {
                let (taken, by_app) = through_app(&registered, http, asked);
                let by_router = through_router(&registered, http, asked);
                assert_eq!(taken, fast, "{asked:?}: taken by the fast path");
                assert_eq!(by_app.0, by_router.0, "{asked:?}: status");
                assert_eq!(by_app.1, by_router.1, "{asked:?}: headers");
                assert_eq!(
                    String::from_utf8_lossy(&by_app.2),
                    String::from_utf8_lossy(&by_router.2),
                    "{asked:?}: body"
                );
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any path under `/api/resolve/`, percent-escapes and odd bytes
        /// included, answers the same through the app as through the router.
        #[test]
        fn any_path_tail_answers_as_the_router_does(
            tail in proptest::collection::vec(
                prop_oneof![
                    Just("coder".to_string()),
                    Just("team-".to_string()),
                    Just("/".to_string()),
                    Just(":".to_string()),
                    Just("..".to_string()),
                    Just("%".to_string()),
                    "%[0-9A-Fa-f]{2}",
                    "[a-zA-Z0-9._~-]{1,4}",
                ],
                0..6,
            ),
            head in any::<bool>(),
        ) {
            thread_local! {
                static REGISTERED: Registered = registered();
            }
            let path = format!("/api/resolve/{}", tail.concat());
            // A path the `Uri` parser refuses never reaches a service.
            prop_assume!(path.parse::<axum::http::Uri>().is_ok());
            let method = if head { "HEAD" } else { "GET" };
            let asked: Asked<'_> = (method, &path, &[LOCAL]);
            REGISTERED.with(|registered| {
                let http = HttpConfig::default();
                let (taken, by_app) = through_app(registered, &http, asked);
                let by_router = through_router(registered, &http, asked);
                prop_assert_eq!(taken, path.len() > RESOLVE_PREFIX.len());
                prop_assert_eq!(by_app.0, by_router.0);
                prop_assert_eq!(&by_app.1, &by_router.1);
                prop_assert_eq!(&by_app.2, &by_router.2);
                Ok(())
            })?;
        }
    }
}
