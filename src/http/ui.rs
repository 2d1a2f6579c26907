//! The dashboard (SPEC §10): a few static files embedded in the binary and
//! served at `/` and `/ui/<file>`, so it works offline with no build step.
//!
//! The page is plain HTML, CSS and JavaScript (`src/http/ui/`); everything it
//! shows comes from the API it calls with `fetch`, the event stream included,
//! so this module only serves bytes:
//! - `/` is the page for a browser (a request that accepts `text/html`), and
//!   for every client when there is no upstream; with `--upstream`, any other
//!   `GET /` goes to Ollama, which answers "Ollama is running" there and
//!   scripts probe it.
//! - The files hold no data, so they need no token: the page must load before
//!   it can ask for one ([`is_public`]).
//! - Every response carries a strict `Content-Security-Policy` (scripts and
//!   styles from these files only, no inline script, requests to this origin
//!   only, never framed), `X-Content-Type-Options: nosniff` and
//!   `X-Frame-Options: DENY`; `Cache-Control: no-cache` with an `ETag` of the
//!   file's bytes, so a browser revalidates and a new build is seen at once.

use std::sync::LazyLock;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::http::{ApiError, AppState, HttpConfig};

/// The prefix of the files' paths, `/ui/<file>`.
const PREFIX: &str = "/ui/";

/// What the page may load and do: its own files, requests to this origin,
/// nothing inline, no plugins, no framing by other pages.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One embedded file.
struct Asset {
    /// Its name under `/ui/`.
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
    /// `"<sha256 prefix of bytes>"`, computed once.
    etag: HeaderValue,
}

/// The files, by name; `index.html` is also served at `/`.
static ASSETS: LazyLock<Vec<Asset>> = LazyLock::new(|| {
    let files: [(&str, &str, &[u8]); 6] = [
        (
            "index.html",
            "text/html; charset=utf-8",
            include_bytes!("ui/index.html"),
        ),
        (
            "style.css",
            "text/css; charset=utf-8",
            include_bytes!("ui/style.css"),
        ),
        (
            "app.js",
            "text/javascript; charset=utf-8",
            include_bytes!("ui/app.js"),
        ),
        (
            "api.js",
            "text/javascript; charset=utf-8",
            include_bytes!("ui/api.js"),
        ),
        (
            "graph.js",
            "text/javascript; charset=utf-8",
            include_bytes!("ui/graph.js"),
        ),
        (
            "favicon.svg",
            "image/svg+xml",
            include_bytes!("ui/favicon.svg"),
        ),
    ];
    files
        .into_iter()
        .map(|(name, content_type, bytes)| {
            let hex = crate::digest::sha256_hex(bytes);
            let etag = HeaderValue::from_str(&format!("\"{}\"", &hex[..16]))
                .expect("hex digits are a valid header value");
            Asset {
                name,
                content_type,
                bytes,
                etag,
            }
        })
        .collect()
});

/// Whether a request is for the dashboard's files, which need no token: a
/// `GET` or `HEAD` of `/ui/...`, or of `/` when it is the page (see
/// [`dashboard_get`]).
pub fn is_public(http: &HttpConfig, request: &Request) -> bool {
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        return false;
    }
    let path = request.uri().path();
    path.starts_with(PREFIX) || path == "/" && serves_page(http, request.headers())
}

/// Whether `/` answers with the page: always without an upstream, else only
/// to a browser (a request that accepts `text/html`).
fn serves_page(http: &HttpConfig, headers: &HeaderMap) -> bool {
    http.proxy.is_none() || accepts_html(headers)
}

/// Whether the request's `Accept` names `text/html`, as a browser's
/// navigation does (curl and Ollama's clients send `*/*` or nothing).
fn accepts_html(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|media| {
            media
                .split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/html"))
        })
}

/// `GET /`: the dashboard's page, or, with `--upstream` and a client that is
/// not a browser, the upstream's answer.
pub async fn dashboard_get(State(state): State<AppState>, request: Request) -> Response {
    if !serves_page(&state.http, request.headers()) {
        return crate::http::proxy::forward(State(state), request).await;
    }
    let mut response = asset_response(&ASSETS[0], request.headers());
    // The same URL answers differently by `Accept` when there is an upstream.
    response
        .headers_mut()
        .insert(header::VARY, HeaderValue::from_static("Accept"));
    response
}

/// `GET /ui/<file>`: one of the dashboard's files, or 404.
pub async fn asset_get(request: Request) -> Response {
    let name = request
        .uri()
        .path()
        .strip_prefix(PREFIX)
        .unwrap_or_default();
    match ASSETS.iter().find(|asset| asset.name == name) {
        Some(asset) => asset_response(asset, request.headers()),
        None => ApiError::not_found(format!("no dashboard file {name:?}: the dashboard is at /"))
            .into_response(),
    }
}

/// The file with its headers, or 304 when the browser's copy is current.
fn asset_response(asset: &Asset, request_headers: &HeaderMap) -> Response {
    let current = request_headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| {
            let tag = tag.trim();
            tag == "*" || tag.trim_start_matches("W/").as_bytes() == asset.etag.as_bytes()
        });
    let mut response = if current {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut response = Response::new(axum::body::Body::from(asset.bytes));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
        response
    };
    let headers = response.headers_mut();
    headers.insert(header::ETAG, asset.etag.clone());
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn a_browser_navigation_accepts_html_and_scripts_do_not() {
        let browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
        assert!(accepts_html(&accept(browser)));
        assert!(accepts_html(&accept("TEXT/HTML; q=1")));
        for other in ["*/*", "application/json", "text/htmlx", "text/*"] {
            assert!(!accepts_html(&accept(other)), "{other}");
        }
        assert!(!accepts_html(&HeaderMap::new()));
    }

    #[test]
    fn every_file_is_embedded_with_its_tag() {
        let names: Vec<&str> = ASSETS.iter().map(|a| a.name).collect();
        assert_eq!(names[0], "index.html");
        for asset in ASSETS.iter() {
            assert!(!asset.bytes.is_empty(), "{}", asset.name);
            let fresh = asset_response(asset, &HeaderMap::new());
            assert_eq!(fresh.status(), StatusCode::OK);
            let mut again = HeaderMap::new();
            again.insert(header::IF_NONE_MATCH, asset.etag.clone());
            assert_eq!(
                asset_response(asset, &again).status(),
                StatusCode::NOT_MODIFIED
            );
        }
    }
}
