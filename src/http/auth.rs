//! Bearer tokens (SPEC §5 "Security") and the browser origin allow-list.
//!
//! Once any token is configured every route but `/healthz` (and the
//! dashboard's files, which hold no data) needs `Authorization: Bearer SECRET`: 401 without one or with a wrong one, 403 for
//! a read-only token on a mutating route. The token's NAME (never its secret)
//! goes into the request's extensions, and from there into event actors.
//! Also the browser's side: which origins and host names may call, and CORS
//! for them. The middleware here ([`RouteChecksLayer`]: Host and Origin,
//! [`cors`], tokens) is layered by [`crate::http::app`].
//! Secrets are compared in constant time (both sides hashed, then compared
//! without early exit), and never logged.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};
use tower_http::validate_request::ValidateRequestHeaderLayer;

use crate::http::middleware::RequestNotes;
use crate::http::{ApiError, AppState, HttpConfig, TokenName};

/// One configured token.
#[derive(Clone)]
pub struct Token {
    /// The name recorded in event actors.
    pub name: String,
    secret_hash: [u8; 32],
    /// Read-only tokens may not mutate.
    pub read_only: bool,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("name", &self.name)
            .field("read_only", &self.read_only)
            .finish_non_exhaustive()
    }
}

impl Token {
    /// Parses `NAME=SECRET`.
    ///
    /// # Errors
    ///
    /// A message naming what is missing (the secret is never echoed).
    pub fn parse(spec: &str, read_only: bool) -> Result<Token, String> {
        let (name, secret) = spec
            .split_once('=')
            .ok_or_else(|| "a token must be NAME=SECRET".to_string())?;
        let name = name.trim();
        if name.is_empty() || secret.is_empty() {
            return Err("a token must be NAME=SECRET with both parts non-empty".into());
        }
        if !is_token_name(name) {
            return Err(format!(
                "token name {name:?} may only use letters, digits, '-', '_' and '.'"
            ));
        }
        Ok(Token {
            name: name.to_string(),
            secret_hash: Sha256::digest(secret.as_bytes()).into(),
            read_only,
        })
    }

    /// Parses a comma-separated list of `NAME=SECRET`.
    ///
    /// # Errors
    ///
    /// The first bad entry.
    pub fn parse_list(list: &str, read_only: bool) -> Result<Vec<Token>, String> {
        list.split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| Token::parse(s.trim(), read_only))
            .collect()
    }
}

/// Whether `name` may name a token: letters, digits, `-`, `_` and `.`.
pub fn is_token_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// The SECRET of a value in the servers' `NAME=SECRET` form (NAME a valid
/// token name, SECRET not empty), for a client given the whole spec.
pub fn secret_of_spec(spec: &str) -> Option<&str> {
    let (name, secret) = spec.split_once('=')?;
    (is_token_name(name.trim()) && !secret.is_empty()).then_some(secret)
}

/// Finds the token whose secret matches, looking at every token every time.
fn find<'t>(tokens: &'t [Token], presented: &str) -> Option<&'t Token> {
    let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    let mut found = None;
    for token in tokens {
        let diff = token
            .secret_hash
            .iter()
            .zip(presented.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff == 0 {
            found = Some(token);
        }
    }
    found
}

/// The credentials of `Bearer <token>`; the scheme is case-insensitive
/// (RFC 9110 §11.1), so `bearer` and `BEARER` work too.
fn bearer_credentials(authorization: &str) -> Option<&str> {
    let (scheme, credentials) = authorization.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| credentials.trim())
}

fn is_mutating(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Checks the request's token: `Ok(Some(name))` for a valid token,
/// `Ok(None)` when no token is needed (none configured, `/healthz`, a CORS
/// preflight, the dashboard's files), or the 401/403 response to send instead.
pub fn authorize(http: &HttpConfig, request: &Request) -> Result<Option<TokenName>, Box<Response>> {
    let tokens = &http.tokens;
    if tokens.is_empty()
        || request.uri().path() == "/healthz"
        || request.method() == Method::OPTIONS
        || crate::http::ui::is_public(http, request)
    {
        return Ok(None);
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_credentials);
    let Some(token) = presented.and_then(|p| find(tokens, p)) else {
        let message = if presented.is_some() {
            "invalid token"
        } else {
            "missing token: send Authorization: Bearer <secret>"
        };
        let mut response = ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return Err(Box::new(response));
    };
    if token.read_only && is_mutating(request.method()) {
        return Err(Box::new(
            ApiError::new(
                StatusCode::FORBIDDEN,
                format!("token {:?} is read-only", token.name),
            )
            .into_response(),
        ));
    }
    Ok(Some(TokenName(token.name.clone())))
}

/// Origins allowed by default, on any port, as Ollama's `OLLAMA_ORIGINS`
/// defaults: pages served by this machine.
const LOCAL_ORIGINS: [&str; 8] = [
    "http://localhost",
    "https://localhost",
    "http://127.0.0.1",
    "https://127.0.0.1",
    "http://[::1]",
    "https://[::1]",
    "http://0.0.0.0",
    "https://0.0.0.0",
];

/// Schemes of desktop apps' pages (Electron, Tauri, VS Code webviews), allowed
/// by default as Ollama allows them: a web page cannot send such an origin
/// (browsers send `null` for a local file), and the apps that do run on this
/// machine already.
const APP_SCHEMES: [&str; 5] = [
    "app://",
    "file://",
    "tauri://",
    "vscode-webview://",
    "vscode-file://",
];

/// Whether a browser origin may call the API: the local defaults, or an entry
/// of the allow-list (`*` allows all; `https://x.example` exact; a trailing
/// `*` matches a prefix).
pub fn origin_allowed(allow: &[String], origin: &str) -> bool {
    let local = LOCAL_ORIGINS.iter().any(|local| {
        origin.strip_prefix(local).is_some_and(|rest| {
            rest.is_empty()
                || rest.strip_prefix(':').is_some_and(|port| {
                    !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())
                })
        })
    });
    local
        || APP_SCHEMES.iter().any(|scheme| origin.starts_with(scheme))
        || allow.iter().any(|a| {
            a == "*" || a == origin || a.strip_suffix('*').is_some_and(|p| origin.starts_with(p))
        })
}

/// Refuses (403) a request whose `Origin` is not allowed, whatever its route
/// or method: without tokens, a page's "simple" POST (no preflight) would
/// change aliases, and a page must not read the registry either.
pub fn check_origin(http: &HttpConfig, origin: &HeaderValue) -> Result<(), Box<Response>> {
    match origin.to_str() {
        Ok(text) if origin_allowed(&http.origins, text) => Ok(()),
        _ => Err(Box::new(
            ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "origin {origin:?} is not allowed; to let its pages call aliasd, start it with --cors-origin {}",
                    String::from_utf8_lossy(origin.as_bytes())
                ),
            )
            .into_response(),
        )),
    }
}

/// Refuses (403) a request on a loopback listener whose `Host` does not name
/// this machine: a DNS-rebinding page reaches loopback under its own name
/// (`Host: attacker.example`), and as the page's own origin it sends no
/// `Origin` on a GET. A request without `Host` (HTTP/1.0) passes; so does any
/// on a listener the operator chose to expose (`http.check_host` false).
pub fn check_host(http: &HttpConfig, request: &Request) -> Result<(), Box<Response>> {
    check_host_header(http, request.headers().get(header::HOST), request.uri())
}

/// [`check_host`] of a request whose `Host` header (its first) is `host`.
fn check_host_header(
    http: &HttpConfig,
    host: Option<&HeaderValue>,
    uri: &axum::http::Uri,
) -> Result<(), Box<Response>> {
    if !http.check_host {
        return Ok(());
    }
    let host = match host {
        Some(host) => host.as_bytes(),
        None => match uri.authority() {
            Some(authority) => authority.as_str().as_bytes(),
            None => return Ok(()),
        },
    };
    if plainly_local(host) || std::str::from_utf8(host).is_ok_and(host_is_local) {
        return Ok(());
    }
    Err(Box::new(
        ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "host {:?} is not a name of this machine, and aliasd listens on loopback only (a guard against DNS rebinding); call it as localhost or 127.0.0.1, or listen on another address with --listen",
                String::from_utf8_lossy(host)
            ),
        )
        .into_response(),
    ))
}

/// Whether a `Host` value (with or without a port) names this machine:
/// `localhost` and `*.localhost` (RFC 6761: never sent to DNS, so an attacker
/// cannot point them anywhere), or an IP address on a loopback, private or
/// link-local network (an address literal cannot be rebound), as Ollama allows.
pub fn host_is_local(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(bracketed) => match bracketed.split_once(']') {
            Some((ip, port)) if port_or_nothing(port) => ip,
            _ => return false,
        },
        None => match host.rsplit_once(':') {
            Some((name, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
                name
            }
            Some(_) => return false,
            None => host,
        },
    };
    // The names nearly every local client sends, without parsing an address.
    if name == "127.0.0.1" || name == "localhost" {
        return true;
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.eq_ignore_ascii_case("localhost")
        || name.len() > ".localhost".len()
            && name[name.len() - ".localhost".len()..].eq_ignore_ascii_case(".localhost")
    {
        return true;
    }
    match name.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => {
            ip.is_loopback() || ip.is_unspecified() || ip.is_private() || ip.is_link_local()
        }
        Ok(std::net::IpAddr::V6(ip)) => {
            ip.is_loopback()
                || ip.is_unspecified()
                || ip.is_unique_local()
                || ip.is_unicast_link_local()
        }
        Err(_) => false,
    }
}

/// Whether a `Host` value is `127.0.0.1` or `localhost`, with or without a
/// port: what nearly every local client sends, told from the bytes before
/// [`host_is_local`] parses anything (which says the same of these).
fn plainly_local(host: &[u8]) -> bool {
    let name = match host.iter().rposition(|b| *b == b':') {
        Some(colon) => {
            let port = &host[colon + 1..];
            if port.is_empty() || !port.iter().all(u8::is_ascii_digit) {
                return false;
            }
            &host[..colon]
        }
        None => host,
    };
    name == b"127.0.0.1" || name == b"localhost"
}

/// `""` or `:<digits>`, after a host.
fn port_or_nothing(rest: &str) -> bool {
    rest.is_empty()
        || rest
            .strip_prefix(':')
            .is_some_and(|port| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()))
}

/// The CORS rules for the origins `http` allows (tower-http's `CorsLayer`),
/// applied to the requests that carry an `Origin` ([`RouteChecks`]):
/// preflights allow the methods of the API and whatever headers the browser
/// asks for (the origin is trusted, and tokens, not headers, guard the
/// routes; SPEC §7), Chrome's Private Network Access included; other answers
/// expose `ETag` and `X-Request-Id` to the page.
///
/// Origins that are not allowed never get here ([`RouteChecks`] answers
/// them first); the same test is made here anyway, so that no origin is
/// ever echoed that the allow-list does not name.
pub fn cors(http: &HttpConfig) -> CorsLayer {
    let origins = std::sync::Arc::new(http.origins.clone());
    CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(move |origin, _| {
            origin
                .to_str()
                .is_ok_and(|origin| origin_allowed(&origins, origin))
        }))
        .allow_methods([
            Method::GET,
            Method::HEAD,
            Method::PUT,
            Method::POST,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers(AllowHeaders::mirror_request())
        .allow_private_network(true)
        .max_age(std::time::Duration::from_secs(600))
        .expose_headers([header::ETAG, crate::http::REQUEST_ID.clone()])
}

/// A preflight answered by [`cors`] (its 200 is the only answer with
/// `Access-Control-Allow-Methods`) goes out as 204 No Content, as Ollama
/// answers preflights (and as aliasd did before `CorsLayer`).
pub fn preflight_no_content(mut response: Response) -> Response {
    if response.status() == StatusCode::OK
        && response
            .headers()
            .contains_key(header::ACCESS_CONTROL_ALLOW_METHODS)
    {
        *response.status_mut() = StatusCode::NO_CONTENT;
    }
    response
}

/// Checks the request's token ([`authorize`]) and refuses it (401/403), or
/// lets it through with the token's name in its extensions (for event
/// actors) and in its [`RequestNotes`] (for the access log).
fn check_token(http: &HttpConfig, request: &mut Request) -> Result<(), Box<Response>> {
    if let Some(token) = authorize(http, request)? {
        if let Some(notes) = request.extensions().get::<RequestNotes>() {
            notes.set_actor(&token);
        }
        request.extensions_mut().insert(token);
    }
    Ok(())
}

/// [`check_token`] for tower-http's `ValidateRequestHeaderLayer`, inside
/// CORS on a browser's request ([`RouteChecks`]).
#[allow(clippy::result_large_err)] // The answer, as `ValidateRequest` has it.
fn require_token(
    state: AppState,
) -> impl FnMut(&mut Request) -> Result<(), Response> + Clone + Send + Sync + 'static {
    move |request: &mut Request| check_token(&state.http, request).map_err(|refusal| *refusal)
}

/// The checks on every route, in one layer, after the route is matched (so
/// that every answer, refusals included, is counted under its template):
/// 1. the route's template, given to its layer where the route is made
///    ([`RouteChecksLayer::for_route`]), noted for the access log and
///    `/metrics` ([`RequestNotes::set_route`]);
/// 2. on a loopback listener, a `Host` that is not this machine is a 403
///    (DNS rebinding, [`check_host`]); an `Origin` that is not allowed is a
///    403 on every route ([`check_origin`]), before tokens and before any
///    body is read, and without CORS headers (a refused origin's preflight
///    too);
/// 3. for a request with an `Origin`, the only kind a browser's CORS rules
///    apply to, CORS for the allowed origins ([`cors`], tower-http's
///    `CorsLayer`): preflights answered (204, [`preflight_no_content`]),
///    allow headers added to the other answers, the token check's refusals
///    included. A request without one passes CORS by: `CorsLayer` would
///    answer any `OPTIONS` as a preflight (one from a client that is no
///    browser belongs to the route, or to the upstream), and build its
///    headers for every request;
/// 4. tokens (SPEC §5): 401/403, or the token's name for the event actor
///    ([`check_token`]);
/// 5. on the routes aliasd serves (not the fallback), the request body's
///    deadline ([`crate::http::middleware::body_deadline`]): here rather
///    than as a `route_layer`, which would wrap every route in one more
///    boxed service, cloned for every request.
///
/// One pass over the headers finds `Host` and `Origin`; the layer keeps
/// one `Arc` (axum clones a route's layers for every request), and its
/// future boxes nothing except on a browser's request.
#[derive(Clone, Debug)]
pub struct RouteChecksLayer {
    shared: Arc<Shared>,
    /// The template of the route it guards; `None` for the fallback.
    route: Option<&'static str>,
}

#[derive(Debug)]
struct Shared {
    state: AppState,
    cors: CorsLayer,
}

impl RouteChecksLayer {
    /// The checks of the app serving `state`, for its fallback (what no
    /// route matches: the upstream's, or a 404).
    pub fn new(state: AppState) -> RouteChecksLayer {
        let cors = cors(&state.http);
        RouteChecksLayer {
            shared: Arc::new(Shared { state, cors }),
            route: None,
        }
    }

    /// The same checks for the route of `template`, under which its answers
    /// are counted and logged.
    pub fn for_route(&self, template: &'static str) -> RouteChecksLayer {
        RouteChecksLayer {
            shared: self.shared.clone(),
            route: Some(template),
        }
    }
}

impl<S> tower::Layer<S> for RouteChecksLayer {
    type Service = RouteChecks<S>;

    fn layer(&self, inner: S) -> RouteChecks<S> {
        RouteChecks {
            inner,
            shared: self.shared.clone(),
            route: self.route,
        }
    }
}

/// The service of [`RouteChecksLayer`].
#[derive(Clone, Debug)]
pub struct RouteChecks<S> {
    inner: S,
    shared: Arc<Shared>,
    route: Option<&'static str>,
}

/// The future of a browser's request: CORS around the token check and the
/// route.
type BrowserFuture = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl<S> tower::Service<Request> for RouteChecks<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = RouteChecksFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let matched = self.route.is_some();
        if let (Some(route), Some(notes)) = (self.route, request.extensions().get::<RequestNotes>())
        {
            notes.set_route(route);
        }
        match check(&self.shared.state.http, request, matched) {
            Checked::Route(request) => RouteChecksFuture::Route {
                future: self.inner.call(request),
            },
            Checked::Refused(response) => RouteChecksFuture::Refused {
                response: Some(response),
            },
            Checked::Browser(request) => {
                let request = if matched {
                    crate::http::middleware::body_deadline(
                        request,
                        self.shared.state.http.request_timeout,
                    )
                } else {
                    request
                };
                let route = tower::ServiceBuilder::new()
                    .map_response(preflight_no_content)
                    .layer(self.shared.cors.clone())
                    .layer(ValidateRequestHeaderLayer::custom(require_token(
                        self.shared.state.clone(),
                    )))
                    .service(self.inner.clone());
                RouteChecksFuture::Browser {
                    future: Box::pin(tower::ServiceExt::oneshot(route, request)),
                }
            }
        }
    }
}

/// What [`check`] makes of a request.
pub(crate) enum Checked {
    /// Passed every check: the route answers it (its body timed, its token
    /// noted).
    Route(Request),
    /// Refused: the answer to send instead.
    Refused(Response),
    /// A browser's request (an allowed `Origin`), as it came: the body's
    /// deadline, CORS and the token check are still to come
    /// ([`RouteChecks`]).
    Browser(Request),
}

/// Steps 2, 4 and 5 of [`RouteChecks`] (the route already noted): `Host`
/// and `Origin` found in one pass over the headers and checked; then, on a
/// request without `Origin`, the body's deadline when `served` (a route
/// aliasd serves, not the upstream's fallback, where a model can take
/// minutes to load) and the token. A request with an allowed `Origin` comes
/// back as [`Checked::Browser`] untouched. Every way to a route aliasd
/// serves checks through here: the router's routes ([`RouteChecks`]) and
/// resolve's fast path ([`crate::http::fast_path`]).
pub(crate) fn check(http: &HttpConfig, mut request: Request, served: bool) -> Checked {
    let (mut host, mut origin, mut has_body) = (None, None, false);
    for (name, value) in request.headers() {
        if *name == header::HOST {
            host = host.or(Some(value));
        } else if *name == header::ORIGIN {
            origin = origin.or(Some(value));
        } else if *name == header::CONTENT_LENGTH || *name == header::TRANSFER_ENCODING {
            has_body = true;
        }
    }
    let checked = check_host_header(http, host, request.uri())
        .and_then(|()| origin.map_or(Ok(()), |origin| check_origin(http, origin)));
    if let Err(refusal) = checked {
        return Checked::Refused(*refusal);
    }
    if origin.is_some() {
        return Checked::Browser(request);
    }
    if served && has_body {
        request = crate::http::middleware::time_body(request, http.request_timeout);
    }
    match check_token(http, &mut request) {
        Ok(()) => Checked::Route(request),
        Err(refusal) => Checked::Refused(*refusal),
    }
}

pin_project_lite::pin_project! {
    /// The future of [`RouteChecks`]: a refusal, the route's answer, or (on
    /// a browser's request) the answer through CORS.
    #[project = RouteChecksProjection]
    pub enum RouteChecksFuture<F> {
        /// Refused by a check.
        Refused { response: Option<Response> },
        /// The route.
        Route { #[pin] future: F },
        /// A browser's request.
        Browser { future: BrowserFuture },
    }
}

impl<F> Future for RouteChecksFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            RouteChecksProjection::Refused { response } => {
                Poll::Ready(Ok(response.take().expect("polled after it was ready")))
            }
            RouteChecksProjection::Route { future } => future.poll(cx),
            RouteChecksProjection::Browser { future } => future.as_mut().poll(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tokens_without_echoing_secrets() {
        let tokens = Token::parse_list("ci=s3cret, alice=pw", false).unwrap();
        assert_eq!(tokens.len(), 2);
        assert!(!format!("{tokens:?}").contains("s3cret"));
        assert!(Token::parse("nosecret", false)
            .unwrap_err()
            .contains("NAME=SECRET"));
        assert!(Token::parse("=x", true).is_err());
        assert_eq!(find(&tokens, "pw").map(|t| t.name.as_str()), Some("alice"));
        assert!(find(&tokens, "wrong").is_none());
    }

    #[test]
    fn origins() {
        let none: Vec<String> = vec![];
        assert!(origin_allowed(&none, "http://localhost:3000"));
        assert!(origin_allowed(&none, "http://127.0.0.1"));
        assert!(!origin_allowed(&none, "http://localhost.evil.com"));
        assert!(!origin_allowed(&none, "https://evil.com"));
        let list = vec![
            "https://app.example".to_string(),
            "https://dev-*".to_string(),
        ];
        assert!(origin_allowed(&list, "https://app.example"));
        assert!(!origin_allowed(&list, "https://app.example.evil"));
        assert!(origin_allowed(&list, "https://dev-7.example"));
        assert!(origin_allowed(&["*".to_string()], "https://anything"));
        assert!(origin_allowed(&none, "http://[::1]:8080"));
        assert!(origin_allowed(&none, "vscode-webview://abc"));
        assert!(!origin_allowed(&none, "null"));
        assert!(!origin_allowed(&none, "http://localhost:"));
        assert!(!origin_allowed(&none, "http://127.0.0.1.evil.example"));
    }

    #[test]
    fn hosts() {
        for local in [
            "localhost",
            "LOCALHOST:11435",
            "localhost.",
            "app.localhost:3000",
            "127.0.0.1",
            "127.0.1.1:80",
            "[::1]:11435",
            "[::1]",
            "0.0.0.0:1",
            "192.168.1.5:8080",
            "10.0.0.1",
            "[fe80::1]",
        ] {
            assert!(host_is_local(local), "{local}");
        }
        for plain in ["127.0.0.1", "127.0.0.1:11434", "localhost", "localhost:1"] {
            assert!(plainly_local(plain.as_bytes()), "{plain}");
            assert!(host_is_local(plain), "{plain}");
        }
        for not_plain in ["LOCALHOST", "localhost.", "127.0.0.1:", "127.0.0.1:x", ":1"] {
            assert!(!plainly_local(not_plain.as_bytes()), "{not_plain}");
        }
        for foreign in [
            "attacker.example",
            "attacker.example:11435",
            "localhost.attacker.example",
            "evil-localhost",
            ".localhost",
            "8.8.8.8",
            "[2001:db8::1]:80",
            "::1",
            "localhost:",
            "localhost:x",
            "[::1]x",
            "",
        ] {
            assert!(!host_is_local(foreign), "{foreign}");
            assert!(!plainly_local(foreign.as_bytes()), "{foreign}");
        }
    }
}
