//! The client commands: talk HTTP to a running aliasd and print tables for
//! people or the API's JSON for scripts.
//!
//! Requests go through reqwest (rustls, with the system's trust store) on a
//! current-thread tokio runtime the [`Client`] owns, so `--host https://...`
//! reaches an aliasd behind a TLS proxy; the commands themselves stay
//! synchronous.

use std::io::Write;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};
use serde_json::Value;

/// The port of a `--host` given without a scheme or port (aliasd's default).
const DEFAULT_PORT: u16 = 11435;

/// How long connecting (TCP and, for `https://`, the TLS handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one read may wait. The event stream sends a comment every 15 s,
/// so this also ends a `watch` whose connection silently died.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// What [`encode_path`] leaves as is: unreserved characters, and `/` and `:`,
/// which the routes expect inside names.
const PATH_SAFE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/')
    .remove(b':');

/// Where and how to reach the server.
#[derive(Debug)]
pub struct Client {
    /// The server's URL without a trailing `/`, e.g. `http://127.0.0.1:11435`
    /// or `https://proxy.example/aliasd`; request paths are appended to it.
    base: String,
    /// The path part of `base` (empty, or `/aliasd` behind a proxy's prefix).
    base_path: String,
    /// The bearer token; replaced by its SECRET part once the server
    /// accepted that instead of a whole `NAME=SECRET` (see [`Client::send`]).
    token: std::sync::Mutex<Option<String>>,
    http: reqwest::Client,
    /// Runs the requests, on the caller's thread.
    runtime: tokio::runtime::Runtime,
}

/// A response: status and body.
#[derive(Debug)]
pub struct Response {
    /// The HTTP status.
    pub status: u16,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl Response {
    /// The body as JSON.
    ///
    /// # Errors
    ///
    /// The body is not JSON.
    pub fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "server answered {} with a body that is not JSON: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The JSON body if the status is 2xx, else an error with the server's message.
    ///
    /// # Errors
    ///
    /// A non-2xx status, or a body that is not JSON.
    pub fn ok_json(&self) -> anyhow::Result<Value> {
        let json = self.json()?;
        if !(200..300).contains(&self.status) {
            let message = json["error"].as_str().unwrap_or("unknown error");
            if self.status == 401 {
                bail!(
                    "{message} (HTTP 401): give the client a token with --auth SECRET or \
                     $ALIASD_TOKEN: only the SECRET part of one of the server's \
                     --token/--read-token NAME=SECRET, without NAME="
                );
            }
            bail!("{message} (HTTP {})", self.status);
        }
        Ok(json)
    }
}

impl Client {
    /// A client for `host`: `host:port` (or a bare host, port 11435), or a URL
    /// like `http://host:port` or `https://host[:port][/prefix]`, as
    /// `OLLAMA_HOST` takes them (a URL without a port uses its scheme's).
    ///
    /// # Errors
    ///
    /// `host` is neither, or the HTTP client or its runtime cannot be set up.
    pub fn new(host: &str, token: Option<String>) -> anyhow::Result<Client> {
        let base = base_url(host)?;
        let base_path = base.path().trim_end_matches('/').to_string();
        let base = base.as_str().trim_end_matches('/').to_string();
        let http = reqwest::Client::builder()
            .user_agent(concat!("aliasd-cli/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            // Straight to the server, as before: an `http_proxy` meant for the
            // internet must not catch requests to a loopback aliasd.
            .no_proxy()
            .build()
            .context("setting up the HTTP client")?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        Ok(Client {
            base,
            base_path,
            token: std::sync::Mutex::new(token),
            http,
            runtime,
        })
    }

    /// The URL of `path_and_query` (which starts with `/`) on the server.
    fn url(&self, path_and_query: &str) -> anyhow::Result<reqwest::Url> {
        let url = reqwest::Url::parse(&format!("{}{path_and_query}", self.base))
            .with_context(|| format!("cannot make a URL of {}{path_and_query}", self.base))?;
        // A URL reads `.` and `..` segments as directories: `rm x/../y` must
        // not become `DELETE /api/aliases/y`.
        let path = path_and_query.split('?').next().unwrap_or_default();
        if url.path() != format!("{}{path}", self.base_path) {
            bail!(
                "{path} would reach the server as {}: a name cannot have `.` or `..` parts; check the name",
                url.path()
            );
        }
        Ok(url)
    }

    /// Sends a request (with the token, if any) and waits for the head of
    /// the response.
    ///
    /// A token given in the server's `NAME=SECRET` form is sent as given
    /// first; on a 401 (which changed nothing) the request is sent once more
    /// with only its SECRET, and if that is accepted, one line on stderr says
    /// to pass only SECRET, and the SECRET is used from then on.
    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let token = self.token.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(token) = token else {
            return request.send().await.map_err(|e| self.failure(&e));
        };
        let again = request.try_clone();
        let response = request
            .bearer_auth(&token)
            .send()
            .await
            .map_err(|e| self.failure(&e))?;
        let secret = crate::http::auth::secret_of_spec(&token);
        let (Some(secret), Some(again)) = (secret, again) else {
            return Ok(response);
        };
        if response.status() != reqwest::StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        let retried = again
            .bearer_auth(secret)
            .send()
            .await
            .map_err(|e| self.failure(&e))?;
        if retried.status() == reqwest::StatusCode::UNAUTHORIZED {
            // Neither form is a token of this server: the first answer stands.
            return Ok(response);
        }
        eprintln!(
            "aliasd: --auth (or $ALIASD_TOKEN) was given as NAME=SECRET; the server took its \
             SECRET part: pass only SECRET"
        );
        *self.token.lock().unwrap_or_else(|e| e.into_inner()) = Some(secret.to_string());
        Ok(retried)
    }

    /// A reqwest error as a message that says what went wrong and what to
    /// do, without reqwest's layers of wrapping.
    fn failure(&self, error: &reqwest::Error) -> anyhow::Error {
        let base = &self.base;
        if let Some(tls) = tls_error(error) {
            anyhow!(
                "cannot reach aliasd at {base}: the TLS handshake failed ({tls}); use http:// if nothing in front of aliasd speaks TLS, or make this system trust the certificate of the proxy in front of it"
            )
        } else if error.is_connect() {
            anyhow!(
                "cannot reach aliasd at {base} ({}); is `aliasd serve` running? (set --host or ALIASD_HOST)",
                root_cause(error)
            )
        } else if error.is_timeout() {
            anyhow!(
                "aliasd at {base} did not answer in time ({}); is it overloaded, or is something in between holding the connection?",
                root_cause(error)
            )
        } else {
            anyhow!(
                "the exchange with aliasd at {base} failed ({}); try again, and check what is between here and the server",
                root_cause(error)
            )
        }
    }

    /// Sends one request and reads the whole response.
    ///
    /// # Errors
    ///
    /// The server cannot be reached or answers something that is not HTTP.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Response> {
        let method = reqwest::Method::from_bytes(method.as_bytes())
            .with_context(|| format!("{method} is not an HTTP method"))?;
        let mut request = self.http.request(method, self.url(path)?);
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_string());
        }
        self.runtime.block_on(async {
            let response = self.send(request).await?;
            let status = response.status().as_u16();
            let body = response.bytes().await.map_err(|e| self.failure(&e))?;
            Ok(Response {
                status,
                body: body.to_vec(),
            })
        })
    }

    /// Opens an event stream and calls `on_line` for each line as it comes,
    /// until the server ends the stream.
    ///
    /// # Errors
    ///
    /// The server cannot be reached or refuses the stream.
    pub fn stream_lines(
        &self,
        path: &str,
        mut on_line: impl FnMut(&str) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let request = self.http.get(self.url(path)?);
        self.runtime.block_on(async {
            let mut response = self.send(request).await?;
            let status = response.status().as_u16();
            if status != 200 {
                let body = response.bytes().await.map_err(|e| self.failure(&e))?;
                return Response {
                    status,
                    body: body.to_vec(),
                }
                .ok_json()
                .map(|_| ());
            }
            let mut lines = Lines::default();
            loop {
                match response.chunk().await {
                    Ok(Some(chunk)) => lines.push(&chunk, &mut on_line)?,
                    Ok(None) => return Ok(()),
                    // The server went away mid-stream (stopped or killed):
                    // the stream is over, as when it ends it cleanly.
                    Err(e) if cut_short(&e) => return Ok(()),
                    Err(e) => return Err(self.failure(&e)),
                }
            }
        })
    }
}

/// The URL a `--host` value means (see [`Client::new`]).
fn base_url(host: &str) -> anyhow::Result<reqwest::Url> {
    let host = host.trim();
    let explicit_scheme = host.contains("://");
    let invalid = || {
        anyhow!(
            "--host {host:?} is neither host:port nor an http:// or https:// URL; give one like 127.0.0.1:11435 or https://aliasd.example"
        )
    };
    let url = if explicit_scheme {
        host.to_string()
    } else {
        format!("http://{host}")
    };
    let mut url = reqwest::Url::parse(&url).map_err(|_| invalid())?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err(invalid());
    }
    if !explicit_scheme && url.port().is_none() {
        url.set_port(Some(DEFAULT_PORT)).map_err(|()| invalid())?;
    }
    url.set_query(None);
    url.set_fragment(None);
    Ok(url)
}

/// `error` and its causes, innermost last. Unlike `Error::source`, this
/// looks inside an `io::Error` at the error it wraps (whose own `source` an
/// `io::Error` passes on instead), since rustls' errors come wrapped in one.
fn causes<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(error), |err| {
        match err.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        }
    })
}

/// The TLS error behind `error`, if there is one.
fn tls_error(error: &reqwest::Error) -> Option<&rustls::Error> {
    causes(error).find_map(|err| err.downcast_ref::<rustls::Error>())
}

/// Whether `error` is the connection ending before the response did (the
/// server stopped or was killed), which ends a stream as a clean end does.
fn cut_short(error: &reqwest::Error) -> bool {
    (error.is_body() || error.is_decode())
        && causes(error).any(|err| {
            err.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::UnexpectedEof)
        })
}

/// The innermost cause of `error`: the one that says what happened.
fn root_cause(error: &reqwest::Error) -> String {
    causes(error)
        .last()
        .map_or_else(|| error.to_string(), ToString::to_string)
}

/// Splits a byte stream into lines and decodes each only once it is whole, so
/// that a multi-byte character split between two chunks arrives intact.
#[derive(Debug, Default)]
struct Lines {
    /// The start of a line whose end has not come yet.
    pending: Vec<u8>,
}

impl Lines {
    /// Adds `chunk` and calls `on_line` with each line it completes, without
    /// its `\n` or `\r\n`.
    fn push(
        &mut self,
        chunk: &[u8],
        mut on_line: impl FnMut(&str) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        self.pending.extend_from_slice(chunk);
        let mut start = 0;
        while let Some(len) = memchr::memchr(b'\n', &self.pending[start..]) {
            let line = &self.pending[start..start + len];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            on_line(&String::from_utf8_lossy(line))?;
            start += len + 1;
        }
        self.pending.drain(..start);
        Ok(())
    }
}

/// Percent-encodes a name for a path (keeps `/` and `:`, which routes expect).
pub fn encode_path(name: &str) -> String {
    percent_encoding::utf8_percent_encode(name, PATH_SAFE).to_string()
}

/// Prints rows as a left-aligned table with a header.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = widths[i]))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Prints JSON pretty for scripts.
fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

/// `aliasd create`.
///
/// # Errors
///
/// The server refuses or cannot be reached.
pub fn create(
    client: &Client,
    json: bool,
    alias: &str,
    target: &str,
    prefix: bool,
) -> anyhow::Result<()> {
    let body = serde_json::json!({ "target": target, "prefix_matching": prefix });
    let path = format!("/api/aliases/{}", encode_path(alias));
    // The alias's seq before: a put that wrote no event leaves it as it was,
    // which is how "unchanged" is told from "updated" (both answer 200).
    let before = match json {
        true => None,
        false => client
            .request("GET", &path, None)
            .ok()
            .filter(|r| r.status == 200)
            .and_then(|r| r.json().ok())
            .and_then(|v| v["seq"].as_u64()),
    };
    let response = client.request("PUT", &path, Some(&body))?;
    let value = response.ok_json()?;
    if json {
        print_json(&value);
    } else {
        let verb = if response.status == 201 {
            "created"
        } else if before.is_some() && before == value["seq"].as_u64() {
            "unchanged"
        } else {
            "updated"
        };
        println!(
            "{verb} {} -> {} ({})",
            text(&value["alias"]),
            text(&value["target"]),
            text(&value["state"])
        );
    }
    Ok(())
}

/// `aliasd ls`.
///
/// # Errors
///
/// The server refuses or cannot be reached.
pub fn ls(
    client: &Client,
    json: bool,
    target: Option<&str>,
    state: Option<&str>,
) -> anyhow::Result<()> {
    let mut query = Vec::new();
    if let Some(t) = target {
        query.push(format!("target={}", encode_path(t)));
    }
    if let Some(s) = state {
        query.push(format!("state={}", encode_path(s)));
    }
    let path = if query.is_empty() {
        "/api/aliases".to_string()
    } else {
        format!("/api/aliases?{}", query.join("&"))
    };
    let value = client.request("GET", &path, None)?.ok_json()?;
    if json {
        print_json(&value);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = value["aliases"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|a| {
            let alias = if a["prefix_matching"] == Value::Bool(true) {
                format!("{}*", text(&a["alias"]))
            } else {
                text(&a["alias"])
            };
            vec![
                alias,
                text(&a["target"]),
                text(&a["resolved"]),
                text(&a["state"]),
                text(&a["updated_at"]),
            ]
        })
        .collect();
    print_table(&["ALIAS", "TARGET", "RESOLVED", "STATE", "UPDATED"], &rows);
    Ok(())
}

/// `aliasd nodes`: the fleet's nodes (`GET /api/nodes`).
///
/// # Errors
///
/// The server refuses (404 when it is not in a fleet) or cannot be reached.
pub fn nodes(client: &Client, json: bool) -> anyhow::Result<()> {
    let value = client.request("GET", "/api/nodes", None)?.ok_json()?;
    if json {
        print_json(&value);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = value["nodes"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|n| {
            let live = match n["live"].as_bool() {
                Some(true) => "yes",
                _ => "no",
            };
            let models = n["models"].as_array().map_or(0, Vec::len);
            vec![
                text(&n["node"]),
                live.to_string(),
                text(&n["applied_seq"]),
                text(&n["lag"]),
                models.to_string(),
                text(&n["listen"]),
                text(&n["version"]),
                text(&n["started_at"]),
            ]
        })
        .collect();
    print_table(
        &[
            "NODE", "LIVE", "APPLIED", "LAG", "MODELS", "LISTEN", "VERSION", "STARTED",
        ],
        &rows,
    );
    Ok(())
}

/// `aliasd rm`.
///
/// # Errors
///
/// The server refuses or cannot be reached.
pub fn rm(client: &Client, json: bool, alias: &str) -> anyhow::Result<()> {
    let value = client
        .request(
            "DELETE",
            &format!("/api/aliases/{}", encode_path(alias)),
            None,
        )?
        .ok_json()?;
    if json {
        print_json(&value);
    } else {
        println!("deleted {alias}");
    }
    Ok(())
}

/// `aliasd resolve`.
///
/// # Errors
///
/// The name does not resolve, or the server cannot be reached.
pub fn resolve(client: &Client, json: bool, name: &str) -> anyhow::Result<()> {
    let value = client
        .request("GET", &format!("/api/resolve/{}", encode_path(name)), None)?
        .ok_json()?;
    if json {
        print_json(&value);
    } else {
        let chain: Vec<String> = value["chain"]
            .as_array()
            .map(|c| c.iter().map(text).collect())
            .unwrap_or_default();
        println!(
            "{}  (via {}, {})",
            chain.join(" -> "),
            text(&value["via"]),
            text(&value["digest"])
        );
    }
    Ok(())
}

/// `aliasd history`: the latest `limit` events (of `alias`, if given), oldest
/// first, like the tail of a log; `--json` prints them in the API's shape.
///
/// # Errors
///
/// The server refuses or cannot be reached.
pub fn history(client: &Client, json: bool, alias: Option<&str>, limit: u32) -> anyhow::Result<()> {
    const PAGE: usize = 10_000;
    let limit = limit.max(1) as usize;
    let mut since = match alias {
        // Unfiltered, the latest events are simply the last seqs.
        None => {
            let health = client.request("GET", "/healthz", None)?.ok_json()?;
            health["seq"]
                .as_u64()
                .unwrap_or(0)
                .saturating_sub(limit as u64)
        }
        Some(_) => 0,
    };
    let mut latest: std::collections::VecDeque<Value> = std::collections::VecDeque::new();
    loop {
        let mut path = format!("/api/history?since={since}&limit={PAGE}");
        if let Some(alias) = alias {
            path.push_str(&format!("&alias={}", encode_path(alias)));
        }
        let mut page = client.request("GET", &path, None)?.ok_json()?;
        if let Some(events) = page["events"].as_array_mut() {
            for event in events.drain(..) {
                if latest.len() == limit {
                    latest.pop_front();
                }
                latest.push_back(event);
            }
        }
        match page["next"].as_u64() {
            Some(next) if next > since => since = next,
            _ => break,
        }
    }
    let events = Vec::from(latest);
    if json {
        print_json(&serde_json::json!({ "events": events, "next": null }));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = events.iter().map(event_row).collect();
    print_table(&["SEQ", "TIME", "TYPE", "ALIAS", "TARGET", "ACTOR"], &rows);
    Ok(())
}

fn event_row(e: &Value) -> Vec<String> {
    vec![
        text(&e["seq"]),
        text(&e["time"]),
        text(&e["type"]),
        text(&e["alias"]),
        text(&e["target"]),
        text(&e["actor"]),
    ]
}

/// `aliasd watch`: prints each event as a line (or its JSON) until the server
/// closes the stream.
///
/// # Errors
///
/// The server refuses or cannot be reached.
pub fn watch(
    client: &Client,
    json: bool,
    since: Option<u64>,
    alias: Option<&str>,
) -> anyhow::Result<()> {
    let mut query = Vec::new();
    if let Some(since) = since {
        query.push(format!("since={since}"));
    }
    if let Some(alias) = alias {
        query.push(format!("alias={}", encode_path(alias)));
    }
    let path = if query.is_empty() {
        "/api/events".to_string()
    } else {
        format!("/api/events?{}", query.join("&"))
    };
    let stdout = std::io::stdout();
    client.stream_lines(&path, |line| {
        let Some(data) = line.strip_prefix("data:") else {
            return Ok(());
        };
        let value: Value = serde_json::from_str(data.trim())?;
        let mut out = stdout.lock();
        if json {
            writeln!(out, "{value}")?;
        } else {
            writeln!(out, "{}", event_row(&value).join("  "))?;
        }
        out.flush()?;
        Ok(())
    })
}

/// `aliasd webhook add|ls|rm`.
///
/// # Errors
///
/// The server refuses or cannot be reached.
pub fn webhook(
    client: &Client,
    json: bool,
    action: crate::config::WebhookAction,
) -> anyhow::Result<()> {
    use crate::config::WebhookAction;
    match action {
        WebhookAction::Add { url, types, alias } => {
            let mut body = serde_json::json!({ "url": url });
            if !types.is_empty() {
                body["types"] = serde_json::json!(types);
            }
            if let Some(alias) = alias {
                body["alias"] = Value::String(alias);
            }
            let value = client
                .request("POST", "/api/webhooks", Some(&body))?
                .ok_json()?;
            if json {
                print_json(&value);
            } else {
                println!(
                    "added webhook {} -> {}",
                    text(&value["id"]),
                    text(&value["url"])
                );
                println!(
                    "secret (shown once; receivers verify signatures with it): {}",
                    text(&value["secret"])
                );
            }
        }
        WebhookAction::Ls => {
            let value = client.request("GET", "/api/webhooks", None)?.ok_json()?;
            if json {
                print_json(&value);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = value["webhooks"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|w| {
                    let types = w["types"]
                        .as_array()
                        .filter(|t| !t.is_empty())
                        .map(|t| t.iter().map(text).collect::<Vec<_>>().join(","))
                        .unwrap_or_else(|| "*".to_string());
                    vec![
                        text(&w["id"]),
                        text(&w["url"]),
                        types,
                        text(&w["alias"]),
                        text(&w["state"]),
                        text(&w["cursor"]),
                    ]
                })
                .collect();
            print_table(&["ID", "URL", "TYPES", "ALIAS", "STATE", "CURSOR"], &rows);
        }
        WebhookAction::Rm { id } => {
            let value = client
                .request(
                    "DELETE",
                    &format!("/api/webhooks/{}", encode_path(&id)),
                    None,
                )?
                .ok_json()?;
            if json {
                print_json(&value);
            } else {
                // The cursor it reached: where a replacement would pick up.
                match value["webhook"]["cursor"].as_u64() {
                    Some(cursor) => println!(
                        "deleted webhook {id} (it had delivered every event up to seq {cursor})"
                    ),
                    None => println!("deleted webhook {id}"),
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_host(host: &str, base: &str, base_path: &str) {
        let client = Client::new(host, None).unwrap();
        assert_eq!(
            (client.base.as_str(), client.base_path.as_str()),
            (base, base_path),
            "{host}"
        );
    }

    #[test]
    fn host_forms() {
        check_host("127.0.0.1:1", "http://127.0.0.1:1", "");
        check_host(" example ", "http://example:11435", "");
        check_host("[::1]:9", "http://[::1]:9", "");
        check_host("[::1]", "http://[::1]:11435", "");
        check_host("http://localhost:9/", "http://localhost:9", "");
        // A URL without a port means its scheme's, as in OLLAMA_HOST.
        check_host("http://localhost", "http://localhost", "");
        check_host("https://aliasd.example", "https://aliasd.example", "");
        check_host(
            "HTTPS://Proxy.Example:8443/aliasd/",
            "https://proxy.example:8443/aliasd",
            "/aliasd",
        );
        for bad in ["", "http://", "ftp://example", "a b:1", "example:port"] {
            let err = Client::new(bad, None).unwrap_err().to_string();
            assert!(
                err.contains("--host") && err.contains("https://"),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn urls_keep_the_path_as_sent() {
        let client = Client::new("https://proxy.example/aliasd", None).unwrap();
        let url = client.url("/api/aliases/ns/m:t?x=a%20b").unwrap();
        assert_eq!(
            url.as_str(),
            "https://proxy.example/aliasd/api/aliases/ns/m:t?x=a%20b"
        );
        // A URL would read `..` as the directory above: refused, not sent.
        for name in ["x/../y", "..", "x/."] {
            let path = format!("/api/aliases/{}", encode_path(name));
            let err = client.url(&path).unwrap_err().to_string();
            assert!(err.contains("`.` or `..`"), "{name}: {err}");
        }
        // A `%` in a name is itself encoded, so `%2e` is not a dot to the URL.
        let path = format!("/api/aliases/{}", encode_path("x/%2e%2E/y"));
        assert_eq!(
            client.url(&path).unwrap().path(),
            "/aliasd/api/aliases/x/%252e%252E/y"
        );
    }

    fn lines_of(chunks: &[&[u8]]) -> Vec<String> {
        let mut lines = Lines::default();
        let mut out = Vec::new();
        for chunk in chunks {
            lines
                .push(chunk, |line| {
                    out.push(line.to_string());
                    Ok(())
                })
                .unwrap();
        }
        out
    }

    #[test]
    fn lines_decode_a_character_split_between_chunks() {
        let frame = "data: {\"actor\":\"josé 🦀\"}\n\n".as_bytes();
        let expected = ["data: {\"actor\":\"josé 🦀\"}", ""];
        // Every split point, the ones inside `é` and inside the crab included.
        for split in 0..=frame.len() {
            let (first, second) = frame.split_at(split);
            assert_eq!(lines_of(&[first, second]), expected, "split at {split}");
        }
        // One byte at a time.
        let bytes: Vec<&[u8]> = frame.chunks(1).collect();
        assert_eq!(lines_of(&bytes), expected);
        // CRLF line ends; a line not yet ended is held back.
        assert_eq!(lines_of(&[b"a\r\nb\n", b"c"]), ["a", "b"]);
    }

    #[test]
    fn encodes_paths() {
        assert_eq!(encode_path("ns/m:tag"), "ns/m:tag");
        assert_eq!(encode_path("a b?"), "a%20b%3F");
        assert_eq!(encode_path("é~_-.%"), "%C3%A9~_-.%25");
    }
}
