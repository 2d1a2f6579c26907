//! The route table: path templates (SPEC §5) to handlers by method, matched
//! once per request.
//!
//! The edge needs a request's route template anyway (for `/metrics`, and to
//! know what goes to the upstream), so it matches the path here and the same
//! match dispatches the request. axum's `Router` matched every path a second
//! time and made new strings of its parameter, which cost about as much as
//! the resolve handler's own lookup (callgrind: 2,580 instructions a request,
//! 1,457 of them the parameter). Handlers are still axum handlers, called with
//! [`Handler::call`]; a route's `{*name}` reaches them as [`PathName`].

use std::future::Future;
use std::pin::Pin;

use axum::extract::{FromRequestParts, Request};
use axum::handler::Handler;
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};

type ResponseFuture = Pin<Box<dyn Future<Output = Response> + Send>>;

/// A handler, type-erased: called with the request and the state.
type Endpoint = Box<dyn Fn(Request, AppState) -> ResponseFuture + Send + Sync>;

fn endpoint<H, T>(handler: H) -> Endpoint
where
    H: Handler<T, AppState>,
    T: 'static,
{
    Box::new(move |request, state| Box::pin(handler.clone().call(request, state)))
}

/// One path template and its handlers by method. `GET` also answers `HEAD`
/// (with the body left out); a method the route lacks gets 405 with `Allow`.
pub struct Route {
    template: &'static str,
    methods: Vec<(Method, Endpoint)>,
}

impl Route {
    /// A route with no methods yet.
    pub fn new(template: &'static str) -> Route {
        Route {
            template,
            methods: Vec::new(),
        }
    }

    /// Adds `handler` for `method`.
    pub fn on<H, T>(mut self, method: Method, handler: H) -> Route
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        self.methods.push((method, endpoint(handler)));
        self
    }

    fn endpoint(&self, method: &Method) -> Option<&Endpoint> {
        let wanted = if method == Method::HEAD {
            &Method::GET
        } else {
            method
        };
        self.methods
            .iter()
            .find(|(m, _)| m == wanted)
            .map(|(_, endpoint)| endpoint)
    }

    fn method_not_allowed(&self) -> Response {
        let mut allowed = Vec::new();
        for (method, _) in &self.methods {
            allowed.push(method.as_str());
            if method == Method::GET {
                allowed.push("HEAD");
            }
        }
        let mut response = StatusCode::METHOD_NOT_ALLOWED.into_response();
        if let Ok(allow) = HeaderValue::from_str(&allowed.join(",")) {
            response.headers_mut().insert(header::ALLOW, allow);
        }
        response
    }
}

/// Every route, and the handler for paths none matches.
pub struct Routes {
    matcher: matchit::Router<usize>,
    routes: Vec<Route>,
    fallback: Endpoint,
}

impl std::fmt::Debug for Routes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let templates: Vec<&str> = self.routes.iter().map(|r| r.template).collect();
        f.debug_struct("Routes")
            .field("templates", &templates)
            .finish()
    }
}

/// Which route a path matched, with its `{*name}` parameter if it has one.
#[derive(Debug)]
pub struct Matched {
    route: usize,
    /// The template, e.g. `/api/resolve/{*name}`.
    pub template: &'static str,
    /// `Err` when the parameter is not UTF-8 once percent-decoded.
    name: Result<Option<PathName>, ()>,
}

impl Routes {
    /// The table of `routes`; `fallback` answers what none matches.
    ///
    /// # Panics
    ///
    /// Two routes with the same template, or a template matchit refuses: a
    /// programming error, caught by every test that builds the app.
    pub fn new<H, T>(routes: Vec<Route>, fallback: H) -> Routes
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        let mut matcher = matchit::Router::new();
        for (idx, route) in routes.iter().enumerate() {
            matcher
                .insert(route.template, idx)
                .expect("route templates are distinct and valid");
        }
        Routes {
            matcher,
            routes,
            fallback: endpoint(fallback),
        }
    }

    /// The route `path` matches, if any, with its parameter percent-decoded.
    pub fn find(&self, path: &str) -> Option<Matched> {
        let found = self.matcher.at(path).ok()?;
        let route = *found.value;
        let name = match found.params.iter().next() {
            None => Ok(None),
            Some((_, raw)) => percent_encoding::percent_decode_str(raw)
                .decode_utf8()
                .map(|decoded| Some(PathName(decoded.into_owned())))
                .map_err(drop),
        };
        Some(Matched {
            route,
            template: self.routes[route].template,
            name,
        })
    }

    /// Runs the handler for `request`: its route's for its method (or 405),
    /// or the fallback when no route matched.
    pub fn dispatch(
        &self,
        matched: Option<Matched>,
        mut request: Request,
        state: AppState,
    ) -> ResponseFuture {
        let Some(matched) = matched else {
            return (self.fallback)(request, state);
        };
        let route = &self.routes[matched.route];
        let Some(endpoint) = route.endpoint(request.method()) else {
            let response = route.method_not_allowed();
            return Box::pin(async move { response });
        };
        match matched.name {
            Ok(None) => {}
            Ok(Some(name)) => {
                request.extensions_mut().insert(name);
            }
            Err(()) => {
                let refusal =
                    ApiError::bad_request("the name in the path is not UTF-8 once percent-decoded");
                return Box::pin(async move { refusal.into_response() });
            }
        }
        if request.method() == Method::HEAD {
            let running = endpoint(request, state);
            return Box::pin(async move {
                // The headers a GET would have, its length included; no body.
                let (mut parts, body) = running.await.into_parts();
                if let Some(len) = axum::body::HttpBody::size_hint(&body).exact() {
                    parts
                        .headers
                        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
                }
                Response::from_parts(parts, axum::body::Body::empty())
            });
        }
        endpoint(request, state)
    }
}

/// A route's `{*name}`, percent-decoded.
#[derive(Debug, Clone)]
pub struct PathName(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathName {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.remove::<PathName>().ok_or_else(|| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "this route has no name in its path",
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes() -> Routes {
        Routes::new(
            vec![
                Route::new("/api/resolve/{*name}").on(Method::GET, || async { "resolve" }),
                Route::new("/healthz").on(Method::GET, || async { "ok" }),
            ],
            || async { "fallback" },
        )
    }

    #[test]
    fn one_match_gives_the_template_and_the_decoded_name() {
        let routes = routes();
        let found = routes.find("/api/resolve/me/co%64er:q4").expect("matches");
        assert_eq!(found.template, "/api/resolve/{*name}");
        assert_eq!(found.name.unwrap().map(|n| n.0), Some("me/coder:q4".into()));
        let found = routes.find("/healthz").expect("matches");
        assert_eq!(
            (found.template, found.name.unwrap().is_none()),
            ("/healthz", true)
        );
        assert!(routes
            .find("/api/resolve/%ff")
            .expect("matches")
            .name
            .is_err());
        for unmatched in ["/api/resolve/", "/healthz/", "/nope", ""] {
            assert!(routes.find(unmatched).is_none(), "{unmatched}");
        }
    }

    #[test]
    fn allow_lists_head_after_get() {
        let route = Route::new("/x")
            .on(Method::GET, || async { "" })
            .on(Method::PUT, || async { "" });
        let response = route.method_not_allowed();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()[header::ALLOW], "GET,HEAD,PUT");
        assert!(route.endpoint(&Method::HEAD).is_some());
        assert!(route.endpoint(&Method::DELETE).is_none());
    }
}
