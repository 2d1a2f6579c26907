//! Where `aliasd serve`'s log lines go and how the access line is written.
//!
//! The access line, one per request (target [`ACCESS_TARGET`], SPEC §11),
//! goes to stderr through a non-blocking writer (tracing-appender's): the
//! task that logs it hands it to a worker thread, which writes the lines
//! that have queued together, a moment apart while they keep coming
//! ([`LogWriter`]). Every other line (start-up, changes, warnings, errors)
//! is written to stderr at once by the thread that logs it, as before. And
//! the access line is put together by a short path of its own
//! ([`TextFormat`]), in the shape of tracing-subscriber's default format,
//! which every other line keeps. In the server, the access line does not
//! go through tracing's subscriber at all once tracing says it is enabled
//! ([`log_access`]): it is put together the same way and handed to the
//! same queue directly (text format only; `--log-format json` keeps
//! tracing's JSON).
//!
//! Why: the access line through the default formatter (its `write!` of each
//! part) and an unbuffered `write(2)` to stderr under its lock, on the
//! runtime's threads, cost more than every HTTP layer together
//! (benches/README.md, "HTTP layers on axum's Router and tower-http").

use std::cell::RefCell;
use std::fmt;
use std::io::Write;
use std::sync::OnceLock;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::writer::{EitherWriter, MakeWriter};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::registry::LookupSpan;

/// The target of the access line, one per request at info.
pub const ACCESS_TARGET: &str = "aliasd::access";

/// The most access lines the log's worker gathers before a `write(2)`, in
/// bytes.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// How long the log's worker waits, after a write, for more access lines
/// to write together: the most an access line waits for its write while
/// lines keep coming.
pub const WRITE_EVERY: std::time::Duration = std::time::Duration::from_millis(10);

/// The server's log output, for tracing-subscriber: access lines through
/// the non-blocking, paced writer, every other line straight to stderr.
///
/// Access lines are queued, in the order they were logged, for a worker
/// thread ([`Paced`]): one logged after a quiet spell is written at once;
/// while they keep coming, whatever has queued is written every
/// [`WRITE_EVERY`], in one `write(2)` (or a few, past
/// [`WRITE_BUFFER_BYTES`]). So a request never waits on stderr while the
/// queue has room (a reader that stopped reading, a terminal paused with
/// Ctrl-S), and a crash loses at most the access lines of that moment. Not
/// lossy: when the queue is full (stderr slower than the requests for a long
/// while) the task that logs waits, as it did when it wrote itself, rather
/// than dropping access lines without a trace.
///
/// Warnings, errors and the rest are few, and are written by the thread that
/// logs them before it goes on, so that none is lost in a crash; they may
/// come up to [`WRITE_EVERY`] ahead of the access lines of requests answered
/// just before them. A write holds stderr's lock, so lines never mix.
#[derive(Clone, Debug)]
pub struct LogWriter {
    access: NonBlocking,
}

impl LogWriter {
    /// The writer, and the guard of its worker: dropping the guard writes
    /// what is queued and stops the worker (it waits up to a second). `main`
    /// holds it until the server has stopped, and drops it before it prints
    /// its own last error.
    pub fn stderr() -> (LogWriter, WorkerGuard) {
        let (access, guard) = NonBlockingBuilder::default()
            .lossy(false)
            .thread_name("aliasd-log")
            .finish(Paced {
                out: std::io::stderr(),
                buffer: Vec::with_capacity(WRITE_BUFFER_BYTES),
                every: WRITE_EVERY,
            });
        (LogWriter { access }, guard)
    }

    /// From now on [`log_access`] puts the access line together itself, in
    /// the text format (with colours when `ansi`, as the subscriber's), and
    /// queues it on this writer directly, instead of through tracing's
    /// subscriber. Only for the text format: the server with
    /// `--log-format json` does not call it. The first call wins.
    pub fn write_access_lines_directly(&self, ansi: bool) {
        let _ = DIRECT.set(Direct {
            access: self.access.clone(),
            ansi,
        });
    }
}

/// Where [`log_access`] queues the access line itself, when it does.
struct Direct {
    access: NonBlocking,
    ansi: bool,
}

/// Set by [`LogWriter::write_access_lines_directly`].
static DIRECT: OnceLock<Direct> = OnceLock::new();

/// One request's access line (SPEC §11): the values [`log_access`] logs,
/// each plain visible ASCII as a rule (checked where they are made).
#[derive(Debug, Clone, Copy)]
pub struct Access<'a> {
    /// The request's method.
    pub method: &'a str,
    /// The route template, `proxy` or `unmatched`.
    pub route: &'a str,
    /// The answer's status.
    pub status: u16,
    /// From the request's arrival to the answer's head, in microseconds.
    pub duration_us: u64,
    /// The token's name, or `anonymous`.
    pub actor: &'a str,
    /// The request's id.
    pub request_id: &'a str,
}

/// Logs the access line of a request (target [`ACCESS_TARGET`], at info)
/// when tracing says that target is enabled (so `ALIASD_LOG` filters it as
/// any other). With [`LogWriter::write_access_lines_directly`] in effect,
/// the line is put together here and queued on the log's worker directly:
/// the same line as [`TextFormat`] writes, without tracing's event,
/// dispatch and field visitor on every request. Otherwise, or for a value
/// that is not plain visible ASCII or a line too long for the buffer, it
/// goes through tracing as any event.
pub fn log_access(access: &Access<'_>) {
    if !tracing::enabled!(target: ACCESS_TARGET, Level::INFO) {
        return;
    }
    if let Some(direct) = DIRECT.get() {
        if let Some(line) = access_line(access, direct.ansi) {
            thread_local! {
                // This thread's handle on the queue: no clone per line.
                static QUEUE: RefCell<Option<NonBlocking>> = const { RefCell::new(None) };
            }
            QUEUE.with(|queue| {
                let mut queue = queue.borrow_mut();
                let queue = queue.get_or_insert_with(|| direct.access.clone());
                // Not lossy: an error only when the worker is gone (the
                // server is stopping), and then there is nowhere to say so.
                let _ = queue.write_all(line.bytes());
            });
            return;
        }
    }
    tracing::info!(
        target: ACCESS_TARGET,
        method = access.method,
        route = access.route,
        status = access.status,
        duration_us = access.duration_us,
        actor = access.actor,
        request_id = access.request_id,
    );
}

/// The access line as [`TextFormat`] writes it (at info), unless a value is
/// not plain visible ASCII or the line does not fit in a [`Line`].
fn access_line(access: &Access<'_>, ansi: bool) -> Option<Line> {
    let mut line = Line::default();
    line.start(Level::INFO, ansi);
    let mut fields = AccessFields {
        line: &mut line,
        ansi,
        first: true,
    };
    let plain = fields.plain("method", access.method)
        && fields.plain("route", access.route)
        && {
            fields.number("status", access.status.into());
            fields.number("duration_us", access.duration_us);
            fields.plain("actor", access.actor)
        }
        && fields.plain("request_id", access.request_id);
    line.push("\n");
    (plain && !line.overflow).then_some(line)
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = EitherWriter<NonBlocking, std::io::Stderr>;

    fn make_writer(&'a self) -> Self::Writer {
        EitherWriter::B(std::io::stderr())
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        if meta.target() == ACCESS_TARGET {
            EitherWriter::A(self.access.clone())
        } else {
            EitherWriter::B(std::io::stderr())
        }
    }
}

/// The access lines' output as tracing-appender's worker uses it: it writes
/// each line it takes off the queue, then, once the queue is empty,
/// flushes. Here a line goes into a buffer, and a flush writes the buffer
/// out in one `write_all` (under stderr's lock, so that no other line lands
/// inside it) and then waits `every` before the worker looks at the queue
/// again, so that a busy server's lines are written in a few large writes
/// instead of one or two each (and the worker neither spins nor sleeps and
/// wakes per line). After a quiet spell the worker is asleep on the empty
/// queue, and the next line is written at once.
struct Paced<W: Write> {
    out: W,
    buffer: Vec<u8>,
    every: std::time::Duration,
}

impl<W: Write> Paced<W> {
    /// Writes the buffer out; it is emptied even when the write fails (a
    /// closed stderr), so that it does not grow without bound.
    fn write_out(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let written = self.out.write_all(&self.buffer);
        self.buffer.clear();
        written
    }
}

impl<W: Write> Write for Paced<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(buf);
        if self.buffer.len() >= WRITE_BUFFER_BYTES {
            self.write_out()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let written = self.write_out();
        std::thread::sleep(self.every);
        written
    }
}

/// tracing-subscriber's default text format (`Format<Full>`), except for
/// the access line, which it writes itself: the same timestamp, level,
/// target and `name=value` fields, put together in a buffer on the stack
/// and handed to the writer in one piece, without a `write!` per part; the
/// timestamp's date and time of day formatted once a second per thread; and
/// every value written as it is (the access line's values are plain
/// visible ASCII, checked where they are made; any other value is written
/// as the default would, by `Debug`). Spans are not shown on the access
/// line: none is entered where it is logged.
#[derive(Debug, Default)]
pub struct TextFormat {
    default: format::Format<format::Full>,
}

impl<S, N> FormatEvent<S, N> for TextFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        if meta.target() != ACCESS_TARGET {
            return self.default.format_event(ctx, writer, event);
        }
        let ansi = writer.has_ansi_escapes();
        let mut line = Line::default();
        line.start(*meta.level(), ansi);
        let mut fields = AccessFields {
            line: &mut line,
            ansi,
            first: true,
        };
        event.record(&mut fields);
        line.push("\n");
        match line.as_str() {
            Some(text) => writer.write_str(text),
            // Longer than the buffer (a token name of hundreds of bytes):
            // the default format, values quoted.
            None => self.default.format_event(ctx, writer, event),
        }
    }
}

/// nu-ansi-term's dimmed style, as the default format writes it.
const DIMMED: &str = "\x1b[2m";
/// The end of a style and the space after the timestamp.
const RESET_SPACE: &str = "\x1b[0m ";

/// The level and the space after it, as the default format writes it.
fn level(level: Level, ansi: bool) -> &'static str {
    match (level, ansi) {
        (Level::TRACE, false) => "TRACE ",
        (Level::DEBUG, false) => "DEBUG ",
        (Level::INFO, false) => " INFO ",
        (Level::WARN, false) => " WARN ",
        (Level::ERROR, false) => "ERROR ",
        (Level::TRACE, true) => "\x1b[35mTRACE\x1b[0m ",
        (Level::DEBUG, true) => "\x1b[34mDEBUG\x1b[0m ",
        (Level::INFO, true) => "\x1b[32m INFO\x1b[0m ",
        (Level::WARN, true) => "\x1b[33m WARN\x1b[0m ",
        (Level::ERROR, true) => "\x1b[31mERROR\x1b[0m ",
    }
}

/// An access line being put together: room for any line of usual values
/// (a request id of up to 200 bytes among them).
struct Line {
    bytes: [u8; 512],
    len: usize,
    /// A piece did not fit; the line is not used.
    overflow: bool,
}

impl Default for Line {
    fn default() -> Line {
        Line {
            bytes: [0; 512],
            len: 0,
            overflow: false,
        }
    }
}

impl Line {
    /// The access line's timestamp, level and target, as the default
    /// format writes them.
    fn start(&mut self, at: Level, ansi: bool) {
        if ansi {
            self.push(DIMMED);
        }
        self.timestamp();
        self.push(if ansi { RESET_SPACE } else { " " });
        self.push(level(at, ansi));
        self.push(if ansi {
            "\x1b[2maliasd::access\x1b[0m\x1b[2m:\x1b[0m "
        } else {
            "aliasd::access: "
        });
    }

    /// The bytes put together so far.
    fn bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    fn push(&mut self, text: &str) {
        self.push_bytes(text.as_bytes());
    }

    fn push_bytes(&mut self, bytes: &[u8]) {
        match self.bytes.get_mut(self.len..self.len + bytes.len()) {
            Some(room) => {
                room.copy_from_slice(bytes);
                self.len += bytes.len();
            }
            None => self.overflow = true,
        }
    }

    /// `n` in decimal.
    fn push_u64(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push_bytes(&digits[at..]);
    }

    /// The current time in the default format's RFC 3339 shape, UTC, to
    /// the microsecond (`2026-12-05T01:29:48.123456Z`).
    fn timestamp(&mut self) {
        /// Per thread: the last second seen and its `YYYY-MM-DDTHH:MM:SS.`.
        struct Second {
            unix: i64,
            text: [u8; 20],
        }
        thread_local! {
            static SECOND: RefCell<Option<Second>> = const { RefCell::new(None) };
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let unix = now.as_secs() as i64;
        let mut text = [0u8; 27];
        SECOND.with(|second| {
            let mut second = second.borrow_mut();
            if second.as_ref().is_none_or(|second| second.unix != unix) {
                *second = Some(Second {
                    unix,
                    text: second_text(unix),
                });
            }
            if let Some(second) = second.as_ref() {
                text[..20].copy_from_slice(&second.text);
            }
        });
        let mut micros = now.subsec_micros();
        for digit in text[20..26].iter_mut().rev() {
            *digit = b'0' + (micros % 10) as u8;
            micros /= 10;
        }
        text[26] = b'Z';
        self.push_bytes(&text);
    }

    /// The line, unless a piece did not fit. (Every piece is UTF-8, so the
    /// whole is: the check is made once, here.)
    fn as_str(&self) -> Option<&str> {
        if self.overflow {
            return None;
        }
        std::str::from_utf8(&self.bytes[..self.len]).ok()
    }
}

/// `YYYY-MM-DDTHH:MM:SS.` of a Unix time, UTC (years 0-9999; the epoch's
/// for a time `time` cannot represent).
fn second_text(unix: i64) -> [u8; 20] {
    let at =
        time::OffsetDateTime::from_unix_timestamp(unix).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let mut text = *b"0000-00-00T00:00:00.";
    let mut put = |at: usize, width: usize, mut n: u32| {
        for digit in text[at..at + width].iter_mut().rev() {
            *digit = b'0' + (n % 10) as u8;
            n /= 10;
        }
    };
    put(0, 4, at.year().clamp(0, 9999) as u32);
    put(5, 2, u8::from(at.month()).into());
    put(8, 2, at.day().into());
    put(11, 2, at.hour().into());
    put(14, 2, at.minute().into());
    put(17, 2, at.second().into());
    text
}

/// Puts the access line's fields in a [`Line`] as `name=value`, separated
/// by spaces.
struct AccessFields<'l> {
    line: &'l mut Line,
    ansi: bool,
    first: bool,
}

impl AccessFields<'_> {
    /// The separator and `name=`.
    fn name(&mut self, name: &str) {
        if !self.first {
            self.line.push(" ");
        }
        self.first = false;
        if self.ansi {
            self.line.push("\x1b[3m");
            self.line.push(name);
            self.line.push("\x1b[0m\x1b[2m=\x1b[0m");
        } else {
            self.line.push(name);
            self.line.push("=");
        }
    }

    /// `name=value` when `value` is plain visible ASCII (written as it
    /// is); false, and nothing written, when it is not.
    fn plain(&mut self, name: &str, value: &str) -> bool {
        if !is_plain(value) {
            return false;
        }
        self.name(name);
        self.line.push(value);
        true
    }

    /// `name=value` in decimal.
    fn number(&mut self, name: &str, value: u64) {
        self.name(name);
        self.line.push_u64(value);
    }
}

/// Only visible ASCII: written as it is, it cannot break the line.
fn is_plain(value: &str) -> bool {
    // A fold, not `all`: no early exit, so the compiler checks many bytes
    // at a time.
    value
        .bytes()
        .fold(true, |plain, b| plain & b.is_ascii_graphic())
}

impl Visit for AccessFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if !self.plain(field.name(), value) {
            // Not what the access line is made of: written as the default
            // would, quoted and escaped, so that it cannot break the line.
            self.record_debug(field, &value);
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.number(field.name(), value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.name(field.name());
        let mut text = String::new();
        let _ = fmt::Write::write_fmt(&mut text, format_args!("{value:?}"));
        self.line.push(&text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Paced` writes what it was given on a flush, not before (the
    /// worker flushes once it has taken every queued line).
    #[test]
    fn paced_output_is_written_on_flush() {
        let mut paced = Paced {
            out: Vec::new(),
            buffer: Vec::new(),
            every: std::time::Duration::from_millis(1),
        };
        paced.write_all(b"one\n").unwrap();
        paced.write_all(b"two\n").unwrap();
        assert!(paced.out.is_empty());
        paced.flush().unwrap();
        assert_eq!(paced.out, b"one\ntwo\n");
        // Past the buffer's size it is written without waiting for a flush.
        let long = vec![b'x'; WRITE_BUFFER_BYTES];
        paced.write_all(&long).unwrap();
        assert_eq!(paced.out.len(), 8 + WRITE_BUFFER_BYTES);
        assert!(paced.buffer.is_empty());
    }

    #[test]
    fn a_second_is_written_as_the_default_format_writes_it() {
        assert_eq!(&second_text(0), b"1970-01-01T00:00:00.");
        // 2026-12-05T01:29:48Z
        assert_eq!(&second_text(1_796_434_188), b"2026-12-05T01:29:48.");
    }

    /// Lines written through `format` (with colours or not), one string each.
    fn lines_of(
        ansi: bool,
        format: impl FormatEvent<tracing_subscriber::Registry, format::DefaultFields>
            + Send
            + Sync
            + 'static,
        log: &dyn Fn(),
    ) -> Vec<String> {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Lines(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Lines {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(ansi)
            .event_format(format)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, log);
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        text.lines().map(String::from).collect()
    }

    /// [`log_access`]'s own line is [`TextFormat`]'s for the same values,
    /// but for the time, with colours or not; a value that is not plain
    /// visible ASCII, or a line too long, is left to tracing.
    #[test]
    fn the_direct_access_line_is_text_formats_line() {
        let access = Access {
            method: "GET",
            route: "/api/resolve/{*name}",
            status: 200,
            duration_us: 1234,
            actor: "anonymous",
            request_id: "1f0c9a1e-5b7d-4468-8000-00000000002a",
        };
        for ansi in [false, true] {
            let through_tracing = lines_of(ansi, TextFormat::default(), &|| {
                tracing::info!(
                    target: "aliasd::access",
                    method = access.method,
                    route = access.route,
                    status = access.status,
                    duration_us = access.duration_us,
                    actor = access.actor,
                    request_id = access.request_id,
                );
            });
            let line = access_line(&access, ansi).expect("a usual line is written directly");
            let direct = std::str::from_utf8(line.bytes()).unwrap();
            let direct = direct.strip_suffix('\n').expect("one whole line");
            assert!(!direct.contains('\n'), "{direct:?}");
            let (time, rest) = direct.split_once(' ').unwrap();
            let (tracing_time, tracing_rest) = through_tracing[0].split_once(' ').unwrap();
            assert_eq!(time.len(), tracing_time.len(), "{direct}");
            assert_eq!(rest, tracing_rest);
        }
        let spaced = Access {
            request_id: "id with space",
            ..access
        };
        assert!(access_line(&spaced, false).is_none());
        let long = "a".repeat(600);
        let long = Access {
            actor: &long,
            ..access
        };
        assert!(access_line(&long, false).is_none());
    }

    /// The access line through [`TextFormat`] is what the default format
    /// writes for the same values given as `Display`, but for the time; a
    /// value that is not plain visible ASCII is written as the default
    /// writes it, and so is a line too long for the buffer; other lines are
    /// the default's. With colours too.
    #[test]
    fn the_access_line_is_the_default_formats_line() {
        for ansi in [false, true] {
            same_lines(ansi);
        }
    }

    fn same_lines(ansi: bool) {
        // Longer than a `Line`: the default format writes it.
        let long = "a".repeat(600);
        let ours = lines_of(ansi, TextFormat::default(), &|| {
            tracing::info!(
                target: "aliasd::access",
                method = "GET",
                route = "/api/resolve/{*name}",
                status = 200u16,
                duration_us = 1234u64,
                actor = "anonymous",
                request_id = "id-1",
            );
            tracing::info!(target: "aliasd::access", request_id = "id with space");
            tracing::info!(target: "aliasd::access", actor = long.as_str());
            tracing::info!(target: "aliasd::other", "hello");
        });
        let default = lines_of(ansi, format::Format::default(), &|| {
            tracing::info!(
                target: "aliasd::access",
                method = %"GET",
                route = %"/api/resolve/{*name}",
                status = 200u16,
                duration_us = 1234u64,
                actor = %"anonymous",
                request_id = %"id-1",
            );
            tracing::info!(target: "aliasd::access", request_id = "id with space");
            tracing::info!(target: "aliasd::access", actor = long.as_str());
            tracing::info!(target: "aliasd::other", "hello");
        });
        assert_eq!(ours.len(), 4, "{ours:?}");
        assert_eq!(default.len(), 4, "{default:?}");
        for (ours, default) in ours.iter().zip(&default) {
            let (time, rest) = ours.split_once(' ').unwrap();
            let (default_time, default_rest) = default.split_once(' ').unwrap();
            assert_eq!(time.len(), default_time.len(), "{ours}");
            assert_eq!(rest, default_rest);
        }
        if ansi {
            return;
        }
        let time = ours[0].split_once(' ').unwrap().0;
        assert!(time.ends_with('Z') && time.as_bytes()[19] == b'.', "{time}");
        assert_eq!(
            ours[0].split_once(' ').unwrap().1,
            " INFO aliasd::access: method=GET route=/api/resolve/{*name} status=200 \
             duration_us=1234 actor=anonymous request_id=id-1"
        );
    }
}
