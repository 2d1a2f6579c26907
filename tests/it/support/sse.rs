//! A small SSE client for `/api/events`: it de-chunks the body as it arrives
//! and never blocks past a deadline.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

use serde_json::Value;

use super::WAIT;

/// One SSE message.
#[derive(Debug, Clone)]
pub struct Msg {
    /// The raw lines of the message, without line ends.
    pub lines: Vec<String>,
    /// Its `id:` field.
    pub id: Option<String>,
    /// Its `event:` field.
    pub event: Option<String>,
    /// Its `data:` lines, joined by newlines.
    pub data: String,
}

impl Msg {
    /// The id as a seq; panics if there is none.
    pub fn seq(&self) -> u64 {
        self.id
            .as_deref()
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("message without a numeric id: {self:?}"))
    }

    /// The data as JSON; panics if it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }
}

/// An open `/api/events` response.
pub struct Sse {
    stream: TcpStream,
    /// The response's status.
    pub status: u16,
    /// Header names (lowercase) and values, in order.
    pub headers: Vec<(String, String)>,
    chunked: bool,
    /// Bytes received and not yet de-chunked.
    raw: Vec<u8>,
    /// De-chunked body not yet parsed into messages.
    body: Vec<u8>,
    eof: bool,
}

impl Sse {
    /// Opens `GET path` and reads the response head; asserts 200 and the type.
    #[track_caller]
    pub fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Sse {
        let sse = Sse::open_any(addr, path, headers);
        assert_eq!(sse.status, 200, "{path}: {:?}", sse.headers);
        assert!(
            sse.header("content-type")
                .is_some_and(|v| v.starts_with("text/event-stream")),
            "{:?}",
            sse.headers
        );
        sse
    }

    /// Opens `GET path` and reads the response head, whatever the status.
    pub fn open_any(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Sse {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.set_write_timeout(Some(WAIT)).expect("timeout");
        let mut head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).expect("write request");
        let mut sse = Sse {
            stream,
            status: 0,
            headers: Vec::new(),
            chunked: false,
            raw: Vec::new(),
            body: Vec::new(),
            eof: false,
        };
        let deadline = Instant::now() + WAIT;
        let end = loop {
            if let Some(end) = find(&sse.raw, b"\r\n\r\n") {
                break end;
            }
            assert!(
                sse.read_raw(deadline),
                "no response head for {path}: {:?}",
                String::from_utf8_lossy(&sse.raw)
            );
        };
        let head = String::from_utf8_lossy(&sse.raw[..end]).into_owned();
        let mut lines = head.split("\r\n");
        sse.status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad head {head:?}"));
        sse.headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        sse.chunked = sse
            .header("transfer-encoding")
            .is_some_and(|v| v.contains("chunked"));
        sse.raw.drain(..end + 4);
        sse.dechunk();
        sse
    }

    /// The first header with this name (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Reads what the socket has, waiting at most until `deadline`; false on
    /// timeout or end of stream.
    fn read_raw(&mut self, deadline: Instant) -> bool {
        let now = Instant::now();
        if now >= deadline || self.eof {
            return false;
        }
        self.stream
            .set_read_timeout(Some(deadline - now))
            .expect("timeout");
        let mut buf = [0u8; 16 * 1024];
        match self.stream.read(&mut buf) {
            Ok(0) => {
                self.eof = true;
                false
            }
            Ok(n) => {
                self.raw.extend_from_slice(&buf[..n]);
                true
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                false
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                self.eof = true;
                false
            }
            Err(e) => panic!("reading the event stream: {e}"),
        }
    }

    /// Moves every complete chunk from `raw` to `body`.
    fn dechunk(&mut self) {
        if !self.chunked {
            self.body.append(&mut self.raw);
            return;
        }
        loop {
            let Some(line_end) = find(&self.raw, b"\r\n") else {
                return;
            };
            let size_text = String::from_utf8_lossy(&self.raw[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
                .unwrap_or_else(|_| panic!("bad chunk size {size_text:?}"));
            if size == 0 {
                self.eof = true;
                return;
            }
            let start = line_end + 2;
            if self.raw.len() < start + size + 2 {
                return;
            }
            self.body.extend_from_slice(&self.raw[start..start + size]);
            self.raw.drain(..start + size + 2);
        }
    }

    /// The next complete message already received (comments skipped).
    fn parse_one(&mut self) -> Option<Msg> {
        loop {
            let end = find(&self.body, b"\n\n")?;
            let block = String::from_utf8_lossy(&self.body[..end]).into_owned();
            self.body.drain(..end + 2);
            let mut msg = Msg {
                lines: Vec::new(),
                id: None,
                event: None,
                data: String::new(),
            };
            let mut data_lines = Vec::new();
            for line in block.split('\n') {
                let line = line.trim_end_matches('\r');
                msg.lines.push(line.to_string());
                if line.starts_with(':') {
                    continue;
                }
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "id" => msg.id = Some(value.to_string()),
                    "event" => msg.event = Some(value.to_string()),
                    "data" => data_lines.push(value.to_string()),
                    _ => {}
                }
            }
            if msg.id.is_none() && msg.event.is_none() && data_lines.is_empty() {
                continue; // Only comments (keep-alive).
            }
            msg.data = data_lines.join("\n");
            return Some(msg);
        }
    }

    /// The next message, or `None` if none arrives before `deadline`.
    pub fn next_before(&mut self, deadline: Instant) -> Option<Msg> {
        loop {
            if let Some(msg) = self.parse_one() {
                return Some(msg);
            }
            if !self.read_raw(deadline) {
                return None;
            }
            self.dechunk();
        }
    }

    /// The next message; panics if none comes in time.
    #[track_caller]
    pub fn next(&mut self) -> Msg {
        self.next_before(Instant::now() + WAIT)
            .expect("no event within the deadline")
    }

    /// The next `n` messages' seqs.
    #[track_caller]
    pub fn seqs(&mut self, n: usize) -> Vec<u64> {
        (0..n).map(|_| self.next().seq()).collect()
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
