//! Bearer tokens (SPEC §5 "Security") and the browser origin allow-list.
//!
//! Once any token is configured every route but `/healthz` needs
//! `Authorization: Bearer SECRET`: 401 without one or with a wrong one, 403 for
//! a read-only token on a mutating route. The token's NAME (never its secret)
//! goes into the request's extensions, and from there into event actors.
//! Secrets are compared in constant time (both sides hashed, then compared
//! without early exit), and never logged.

use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::http::{ApiError, HttpConfig, TokenName};

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
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
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

fn is_mutating(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Checks the request's token: `Ok(Some(name))` for a valid token,
/// `Ok(None)` when no token is needed (none configured, `/healthz`, a CORS
/// preflight), or the 401/403 response to send instead.
pub fn authorize(http: &HttpConfig, request: &Request) -> Result<Option<TokenName>, Box<Response>> {
    let tokens = &http.tokens;
    if tokens.is_empty()
        || request.uri().path() == "/healthz"
        || request.method() == Method::OPTIONS
    {
        return Ok(None);
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
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

/// Origins allowed by default, as Ollama's `OLLAMA_ORIGINS` defaults do: the
/// local machine and desktop-app schemes.
const DEFAULT_ORIGINS: [&str; 8] = [
    "http://localhost",
    "https://localhost",
    "http://127.0.0.1",
    "https://127.0.0.1",
    "http://0.0.0.0",
    "app://",
    "file://",
    "tauri://",
];

/// Whether a browser origin may call the API: the defaults (any port), or an
/// entry of the allow-list (`*` allows all; `https://x.example` exact; a
/// trailing `*` matches a prefix).
pub fn origin_allowed(allow: &[String], origin: &str) -> bool {
    let default = DEFAULT_ORIGINS.iter().any(|d| {
        origin == *d
            || (d.ends_with("://") && origin.starts_with(d))
            || origin.strip_prefix(d).is_some_and(|rest| {
                rest.starts_with(':') && rest[1..].chars().all(|c| c.is_ascii_digit())
            })
    });
    default
        || allow.iter().any(|a| {
            a == "*" || a == origin || a.strip_suffix('*').is_some_and(|p| origin.starts_with(p))
        })
}

/// The browser origin of a request, if it has one.
pub fn request_origin(request: &Request) -> Option<String> {
    request
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(String::from)
}

/// The answer to a CORS preflight (`OPTIONS` with an `Origin`): 204 with the
/// allow headers for an allowed origin, else 403.
pub fn preflight(http: &HttpConfig, origin: &str) -> Response {
    if !origin_allowed(&http.origins, origin) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            format!("origin {origin:?} is not allowed"),
        )
        .into_response();
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, PUT, POST, DELETE, OPTIONS"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(
            "authorization, content-type, if-match, if-none-match, last-event-id, x-request-id",
        ),
    );
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    add_allow_origin(&mut response, origin);
    response
}

/// Adds the CORS headers to a response for an allowed origin.
pub fn allow_origin(http: &HttpConfig, response: &mut Response, origin: &str) {
    if origin_allowed(&http.origins, origin) {
        add_allow_origin(response, origin);
    }
}

fn add_allow_origin(response: &mut Response, origin: &str) {
    if let Ok(value) = HeaderValue::from_str(origin) {
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
        headers.insert(header::VARY, HeaderValue::from_static("Origin"));
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("etag, x-request-id"),
        );
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
    }
}
