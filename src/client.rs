//! The client commands: talk HTTP to a running aliasd and print tables for
//! people or the API's JSON for scripts.
//!
//! A minimal HTTP/1.1 client over `std::net::TcpStream` (one request per
//! connection) keeps the binary lean; aliasd speaks plain HTTP on loopback.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;

/// Where and how to reach the server.
#[derive(Debug, Clone)]
pub struct Client {
    authority: String,
    token: Option<String>,
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
            bail!("{message} (HTTP {})", self.status);
        }
        Ok(json)
    }
}

impl Client {
    /// A client for `host` (`host:port`, or a URL like `http://host:port`).
    pub fn new(host: &str, token: Option<String>) -> Client {
        let trimmed = host
            .trim()
            .trim_start_matches("http://")
            .trim_end_matches('/');
        let authority = if trimmed.contains(':') {
            trimmed.to_string()
        } else {
            format!("{trimmed}:11435")
        };
        Client { authority, token }
    }

    fn connect(&self) -> anyhow::Result<TcpStream> {
        let stream = TcpStream::connect(&self.authority).with_context(|| {
            format!(
                "cannot reach aliasd at {}; is `aliasd serve` running? (set --host or ALIASD_HOST)",
                self.authority
            )
        })?;
        Ok(stream)
    }

    fn head(&self, method: &str, path: &str, body: Option<&[u8]>) -> String {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nUser-Agent: aliasd-cli\r\n",
            self.authority
        );
        if let Some(token) = &self.token {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        if let Some(body) = body {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        head
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
        let body = body.map(|b| b.to_string().into_bytes());
        let mut stream = self.connect()?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        stream.write_all(self.head(method, path, body.as_deref()).as_bytes())?;
        if let Some(body) = &body {
            stream.write_all(body)?;
        }
        let mut reader = BufReader::new(stream);
        let (status, chunked) = read_head(&mut reader)?;
        let mut raw = Vec::new();
        reader.read_to_end(&mut raw)?;
        let body = if chunked { dechunk(&raw)? } else { raw };
        Ok(Response { status, body })
    }

    /// Opens an event stream and calls `on_line` for each line as it comes.
    ///
    /// # Errors
    ///
    /// The server cannot be reached or refuses the stream.
    pub fn stream_lines(
        &self,
        path: &str,
        mut on_line: impl FnMut(&str) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let mut stream = self.connect()?;
        stream.write_all(self.head("GET", path, None).as_bytes())?;
        let mut reader = BufReader::new(stream);
        let (status, chunked) = read_head(&mut reader)?;
        if status != 200 {
            let mut raw = Vec::new();
            reader.read_to_end(&mut raw)?;
            let body = if chunked { dechunk(&raw)? } else { raw };
            return Response { status, body }.ok_json().map(|_| ());
        }
        let mut pending = String::new();
        loop {
            let data = if chunked {
                match read_chunk(&mut reader)? {
                    Some(data) => data,
                    None => return Ok(()),
                }
            } else {
                let mut buf = vec![0u8; 8192];
                let n = reader.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                buf.truncate(n);
                buf
            };
            pending.push_str(&String::from_utf8_lossy(&data));
            while let Some(pos) = pending.find('\n') {
                let line: String = pending.drain(..=pos).collect();
                on_line(line.trim_end_matches(['\r', '\n']))?;
            }
        }
    }
}

fn read_head(reader: &mut impl BufRead) -> anyhow::Result<(u16, bool)> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP response: {line:?}"))?;
    let mut chunked = false;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
    }
    Ok((status, chunked))
}

fn read_chunk(reader: &mut impl BufRead) -> anyhow::Result<Option<Vec<u8>>> {
    let mut size_line = String::new();
    if reader.read_line(&mut size_line)? == 0 {
        return Ok(None);
    }
    let size = usize::from_str_radix(size_line.trim().split(';').next().unwrap_or(""), 16)
        .with_context(|| format!("bad chunk size {size_line:?}"))?;
    if size == 0 {
        return Ok(None);
    }
    let mut data = vec![0u8; size + 2];
    reader.read_exact(&mut data)?;
    data.truncate(size);
    Ok(Some(data))
}

fn dechunk(raw: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut reader = BufReader::new(raw);
    let mut out = Vec::new();
    while let Some(chunk) = read_chunk(&mut reader)? {
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Percent-encodes a name for a path (keeps `/` and `:`, which routes expect).
pub fn encode_path(name: &str) -> String {
    let mut out = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/:".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
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
    let response = client.request(
        "PUT",
        &format!("/api/aliases/{}", encode_path(alias)),
        Some(&body),
    )?;
    let value = response.ok_json()?;
    if json {
        print_json(&value);
    } else {
        let verb = if response.status == 201 {
            "created"
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_forms() {
        assert_eq!(Client::new("127.0.0.1:1", None).authority, "127.0.0.1:1");
        assert_eq!(
            Client::new("http://localhost:9/", None).authority,
            "localhost:9"
        );
        assert_eq!(Client::new("example", None).authority, "example:11435");
    }

    #[test]
    fn dechunks() {
        assert_eq!(
            dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap(),
            b"abcde"
        );
    }

    #[test]
    fn encodes_paths() {
        assert_eq!(encode_path("ns/m:tag"), "ns/m:tag");
        assert_eq!(encode_path("a b?"), "a%20b%3F");
    }
}
