//! The listener: accepts connections up to a cap and serves HTTP/1.1 on each
//! with hyper, with timeouts that free the connections of idle and slow
//! clients, and hyper's own error answers (400, 414, 431) in the `{"error"}`
//! shape.
//!
//! `axum::serve` had none of these: more idle sockets than the open-file
//! limit made the server unreachable for good, and slowloris connections were
//! never cut (issue 17). The pieces, each a small function or type so that they can
//! move onto another server loop:
//! - [`serve`]: the accept loop; a semaphore permit per connection, taken
//!   before `accept`, so past the cap new connections wait in the kernel's
//!   listen queue (no file descriptor spent on them) until one closes;
//! - [`fd_budget`] / [`raise_fd_limit`]: the cap, derived from `RLIMIT_NOFILE`;
//! - [`HeadTimer`]: hyper's header read timer, made to tell a new request's
//!   head (the header timeout) from an idle keep-alive connection (the idle
//!   timeout);
//! - [`ConnIo`]: the socket, counting reads for the timer, rewriting
//!   hyper's empty-bodied error answers, and closing as nginx's lingering
//!   close does when a request body was left unread (a 413, say): the answer
//!   is sent and the write side shut, then what the client still sends is
//!   read and discarded, up to [`LINGER_MAX_BYTES`] or [`LINGER_MAX_TIME`],
//!   so that its kernel does not reset the connection and drop the answer.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::response::Response;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::http::middleware::RequestNotes;
use crate::http::{App, AppState, Shutdown};

/// The most a request's head (request line and headers) may take in hyper's
/// buffer; past it hyper answers 431. It also bounds what a connection that
/// sends a head slowly holds in memory.
pub const MAX_HEAD_BYTES: usize = 128 * 1024;

/// File descriptors kept back from connections for the journal, the store's
/// scans, the watcher and the runtime (at most half the limit).
pub const FD_RESERVE: u64 = 128;

/// The most a lingering close reads and discards of a request body the
/// server did not read (SPEC §5): past it the connection is closed anyway.
pub const LINGER_MAX_BYTES: u64 = 8 << 20;

/// The longest a lingering close waits for the client to finish sending
/// and close its side.
pub const LINGER_MAX_TIME: Duration = Duration::from_secs(3);

/// How often, at most, the log says the connection cap was hit.
const CAP_WARNING_EVERY: Duration = Duration::from_secs(10);

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (a process may, without
/// privileges), so that the connection cap is the most the system allows
/// this process. Returns the soft limit in force afterwards (`u64::MAX` for
/// none).
pub fn raise_fd_limit() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => return limit.maximum.unwrap_or(u64::MAX),
            // Linux refuses more than `fs.nr_open` even under an unlimited hard limit.
            Err(e) => tracing::debug!("cannot raise the open-file limit to the hard limit: {e}"),
        }
    }
    limit.current.unwrap_or(u64::MAX)
}

/// How many connections `fd_limit` open files allow: the limit less a reserve
/// for everything else aliasd opens ([`FD_RESERVE`], or half of a small
/// limit), halved when each connection may also hold one to the upstream.
pub fn fd_budget(fd_limit: u64, proxying: bool) -> usize {
    let reserve = FD_RESERVE.min(fd_limit / 2);
    let mut budget = fd_limit.saturating_sub(reserve);
    if proxying {
        budget /= 2;
    }
    // A semaphore holds at most this many permits.
    budget.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize) as u64) as usize
}

/// How many event-stream subscribers `max_connections` connections leave room
/// for: three quarters of them at most, so that subscribers alone cannot take
/// every connection and leave none for requests.
pub fn subscriber_budget(max_connections: usize) -> u64 {
    ((max_connections as u64) * 3 / 4).max(1)
}

/// Serves the app on `listener` until `shutdown` completes, then stops
/// accepting, ends event streams, lets requests in flight finish, and returns
/// once every connection has closed.
///
/// Every connection gets `TCP_NODELAY`: an event stream writes small chunks while
/// earlier ones may still be unacknowledged, and Nagle's algorithm would hold each
/// such chunk until the subscriber's (possibly delayed, up to 40 ms) ACK.
///
/// # Errors
///
/// None so far: accept errors are logged and retried. The type leaves room
/// for a listener that can fail for good.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let signal = state.shutdown.clone();
    let limits = Limits {
        header_timeout: state.http.header_timeout,
        idle_timeout: state.http.idle_timeout,
    };
    let cap = state
        .http
        .max_connections
        .clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
    let app = crate::http::app(state);
    let permits = Arc::new(Semaphore::new(cap));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .max_buf_size(MAX_HEAD_BYTES)
        .header_read_timeout(limits.header_timeout);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut last_cap_warning: Option<Instant> = None;
    loop {
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                warn_capped(&mut last_cap_warning, cap);
                tokio::select! {
                    permit = permits.clone().acquire_owned() => {
                        // Never closed: `permits` lives in this function.
                        permit.expect("the connection semaphore is never closed")
                    }
                    () = &mut shutdown => break,
                }
            }
        };
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY on a connection: {e}");
        }
        tokio::spawn(serve_connection(
            builder.clone(),
            stream,
            remote,
            app.clone(),
            signal.clone(),
            limits,
            permit,
        ));
    }
    signal.trigger();
    drop(listener);
    // Each connection holds a permit until it has closed: all of them back
    // means every connection is done.
    let _ = permits.acquire_many(cap as u32).await;
    Ok(())
}

/// The timeouts of one connection.
#[derive(Debug, Clone, Copy)]
struct Limits {
    header_timeout: Duration,
    idle_timeout: Duration,
}

/// Logs, at most every [`CAP_WARNING_EVERY`], that new connections wait.
fn warn_capped(last: &mut Option<Instant>, cap: usize) {
    if last.is_some_and(|at| at.elapsed() < CAP_WARNING_EVERY) {
        return;
    }
    *last = Some(Instant::now());
    tracing::warn!(
        "{cap} connections are open, the most allowed (--max-connections, or the open-file \
         limit); new connections wait until one closes (idle ones close after \
         the idle timeout, slow request heads after the header timeout)"
    );
}

/// Handles a failed `accept`: a connection reset before it was accepted is
/// skipped at once; anything else (out of file descriptors, say) is logged
/// and retried after a pause, rather than spinning.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::Interrupted
    ) {
        return;
    }
    tracing::error!("accepting a connection failed: {e}; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Serves one connection until it closes, or until shutdown and then its
/// request in flight is done; `_permit` frees its place under the cap.
async fn serve_connection<A: App>(
    mut builder: hyper::server::conn::http1::Builder,
    stream: tokio::net::TcpStream,
    remote: SocketAddr,
    app: A,
    shutdown: Shutdown,
    limits: Limits,
    _permit: OwnedSemaphorePermit,
) {
    let clock = Arc::new(ConnClock::new(limits));
    let body_open = Arc::new(AtomicBool::new(false));
    builder.timer(HeadTimer {
        clock: clock.clone(),
    });
    let io = hyper_util::rt::TokioIo::new(ConnIo::new(stream, clock, body_open.clone()));
    let service = ConnService {
        app,
        remote,
        body_open,
    };
    let connection = builder.serve_connection(io, service);
    let mut connection = std::pin::pin!(connection);
    let res = tokio::select! {
        res = connection.as_mut() => res,
        () = WakeGated::new(shutdown.fired()) => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = res {
        // Timeouts, resets and malformed requests: the client's business.
        tracing::debug!(%remote, "connection ended: {e}");
    }
}

/// A future polled only when it asked to be: on its first poll, and after
/// it woke its task. Beside a connection in a `select!`, the shutdown signal
/// (a `watch` receiver, whose every poll takes a lock shared with the other
/// connections) would otherwise be polled at each of the connection's
/// wake-ups, a few a request.
struct WakeGated<F> {
    inner: Pin<Box<F>>,
    gate: Arc<Gate>,
}

/// The waker [`WakeGated`] polls its future with: it notes the wake-up and
/// wakes the task that polled last.
#[derive(Default)]
struct Gate {
    woken: AtomicBool,
    task: futures_util::task::AtomicWaker,
}

impl std::task::Wake for Gate {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F: Future> WakeGated<F> {
    fn new(inner: F) -> WakeGated<F> {
        let gate = Gate::default();
        gate.woken.store(true, Ordering::Relaxed);
        WakeGated {
            inner: Box::pin(inner),
            gate: Arc::new(gate),
        }
    }
}

impl<F: Future> Future for WakeGated<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        this.gate.task.register(cx.waker());
        if !this.gate.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let waker = std::task::Waker::from(this.gate.clone());
        this.inner.as_mut().poll(&mut Context::from_waker(&waker))
    }
}

/// One connection's service: the app, with the peer's address in each
/// request's [`RequestNotes`] (event actors name it; one extension that
/// `middleware::ObserveLayer` uses anyway, rather than axum's `ConnectInfo`
/// beside it); and it marks whether the request's body is still unread, for
/// [`ConnIo`]'s lingering close.
#[derive(Clone)]
struct ConnService<A> {
    app: A,
    remote: SocketAddr,
    /// Set while the current request has a body not yet read to its end.
    body_open: Arc<AtomicBool>,
}

impl<A: App> hyper::service::Service<hyper::Request<hyper::body::Incoming>> for ConnService<A> {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = A::Future;

    fn call(&self, request: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        use hyper::body::Body as _;
        // HTTP/1 serves one request at a time: the flag is this request's.
        let open = !request.body().is_end_stream();
        self.body_open.store(open, Ordering::Relaxed);
        let mut request = match open {
            true => request.map(|inner| {
                axum::body::Body::new(TrackedBody {
                    inner,
                    open: self.body_open.clone(),
                })
            }),
            false => request.map(axum::body::Body::new),
        };
        request
            .extensions_mut()
            .insert(RequestNotes::from_peer(self.remote));
        // The app is always ready (no layer applies backpressure), so it is
        // called without `poll_ready`, on a clone as tower asks.
        tower::Service::call(&mut self.app.clone(), request)
    }
}

pin_project_lite::pin_project! {
    /// A request body that clears its connection's `body_open` flag once it
    /// has been read to its end (or failed), so that only a connection
    /// whose last body was left unread closes lingering.
    struct TrackedBody {
        #[pin]
        inner: hyper::body::Incoming,
        open: Arc<AtomicBool>,
    }
}

impl hyper::body::Body for TrackedBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let frame = std::task::ready!(this.inner.as_mut().poll_frame(cx));
        let ended = match &frame {
            None | Some(Err(_)) => true,
            Some(Ok(_)) => this.inner.is_end_stream(),
        };
        if ended {
            this.open.store(false, Ordering::Relaxed);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// hyper's header read timer for one connection. hyper starts it whenever it
/// waits for a request head: on a new connection, and again as soon as a
/// response is done and the connection is idle. One timeout for both would
/// either close keep-alive connections early or give slow heads long; so a
/// new connection gets the header timeout, and an idle one the idle timeout
/// until the first byte of its next request arrives, then the header timeout
/// from that byte.
///
/// hyper asks for a new sleep for every request head; each is a deadline
/// over the connection's one tokio timer ([`ConnClock::alarm`]), so that a
/// request does not register a timer in tokio's wheel and take it out again.
struct HeadTimer {
    clock: Arc<ConnClock>,
}

/// What a connection's [`HeadTimer`], its sleeps and [`ConnIo`] share.
struct ConnClock {
    /// Reads that returned bytes, counted by [`ConnIo`].
    reads: AtomicU64,
    /// Set once the first head (the new connection's) has been waited for.
    started: AtomicBool,
    header_timeout: Duration,
    idle_timeout: Duration,
    /// The connection's timer. It is set no later than the deadline of the
    /// head being waited for: when a later head's deadline comes it is left
    /// as it is, and set again only when it goes off before that deadline
    /// (about once per idle timeout), or when a deadline comes earlier (the
    /// first byte of a head after an idle spell).
    alarm: Mutex<Pin<Box<tokio::time::Sleep>>>,
}

impl ConnClock {
    fn new(limits: Limits) -> ConnClock {
        ConnClock {
            reads: AtomicU64::new(0),
            started: AtomicBool::new(false),
            header_timeout: limits.header_timeout,
            idle_timeout: limits.idle_timeout,
            alarm: Mutex::new(Box::pin(tokio::time::sleep(limits.header_timeout))),
        }
    }
}

impl hyper::rt::Timer for HeadTimer {
    /// A plain sleep (hyper's HTTP/1 server only asks for [`Self::sleep_until`]).
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(PlainSleep {
            sleep: tokio::time::sleep(duration),
        })
    }

    /// The wait for a request head: `deadline` is hyper's header timeout
    /// from now.
    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        let clock = &self.clock;
        let fresh = !clock.started.swap(true, Ordering::Relaxed);
        let (deadline, idle) = match fresh {
            true => (deadline, false),
            // Now plus the idle timeout, without asking the clock again.
            false => (deadline - clock.header_timeout + clock.idle_timeout, true),
        };
        // One allocation per request head, as hyper's own timer makes.
        Box::pin(HeadSleep {
            clock: self.clock.clone(),
            reads_at_start: clock.reads.load(Ordering::Relaxed),
            idle,
            deadline: deadline.into(),
        })
    }
}

pin_project_lite::pin_project! {
    /// [`HeadTimer::sleep`]: a tokio sleep.
    struct PlainSleep {
        #[pin]
        sleep: tokio::time::Sleep,
    }
}

impl Future for PlainSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.project().sleep.poll(cx)
    }
}

impl hyper::rt::Sleep for PlainSleep {}

/// A [`HeadTimer`]'s wait for one request head.
struct HeadSleep {
    clock: Arc<ConnClock>,
    reads_at_start: u64,
    // Still waiting for the first byte after the connection went idle.
    idle: bool,
    deadline: tokio::time::Instant,
}

impl Future for HeadSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        // hyper polls this each time a read leaves the head incomplete, so
        // the first byte of the next request is seen as it arrives.
        if this.idle && this.clock.reads.load(Ordering::Relaxed) != this.reads_at_start {
            this.idle = false;
            this.deadline = tokio::time::Instant::now() + this.clock.header_timeout;
        }
        let mut alarm = this
            .clock
            .alarm
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        loop {
            if alarm.deadline() > this.deadline {
                alarm.as_mut().reset(this.deadline);
            }
            std::task::ready!(alarm.as_mut().poll(cx));
            if alarm.deadline() >= this.deadline {
                return Poll::Ready(());
            }
            // It went off at an earlier head's deadline: set it for this one.
            alarm.as_mut().reset(this.deadline);
        }
    }
}

impl hyper::rt::Sleep for HeadSleep {}

/// A connection's socket as hyper sees it: reads are counted for the
/// [`HeadTimer`], and hyper's own answers to requests it could not parse
/// (400, 414, 431, written with an empty body, no hook to change them) are
/// replaced by the same status with a `{"error"}` body (SPEC §5).
///
/// hyper writes such an answer as one head of `content-length: 0` and `date`,
/// at the start of a write, and closes the connection after it. Every answer
/// of the app's own has a `content-type` (`middleware::ObserveLayer` gives each
/// error a JSON body), so a head without one, of those statuses, is hyper's. Should hyper
/// ever write it differently, it goes out unchanged, as before.
struct ConnIo {
    stream: tokio::net::TcpStream,
    clock: Arc<ConnClock>,
    /// The JSON answer that replaces hyper's, and how much of it is written.
    replacement: Option<(Vec<u8>, usize)>,
    /// Set by [`ConnService`] while a request body is unread: closing then lingers.
    body_open: Arc<AtomicBool>,
    /// The lingering close under way (the write side already shut).
    linger: Option<Linger>,
}

/// A lingering close: what is left of its budget.
struct Linger {
    deadline: Pin<Box<tokio::time::Sleep>>,
    discarded: u64,
}

impl Linger {
    fn new() -> Linger {
        Linger {
            deadline: Box::pin(tokio::time::sleep(LINGER_MAX_TIME)),
            discarded: 0,
        }
    }

    /// Reads and discards until the client closes its side, fails, or the
    /// budget is spent; then the connection may close.
    fn poll_drain(&mut self, stream: &mut tokio::net::TcpStream, cx: &mut Context<'_>) -> Poll<()> {
        let mut scratch = [0u8; 16 * 1024];
        loop {
            if self.deadline.as_mut().poll(cx).is_ready() || self.discarded >= LINGER_MAX_BYTES {
                return Poll::Ready(());
            }
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut *stream).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(()),
                Poll::Ready(Ok(())) => self.discarded += buf.filled().len() as u64,
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl ConnIo {
    fn new(
        stream: tokio::net::TcpStream,
        clock: Arc<ConnClock>,
        body_open: Arc<AtomicBool>,
    ) -> ConnIo {
        ConnIo {
            stream,
            clock,
            replacement: None,
            body_open,
            linger: None,
        }
    }

    /// Writes what is left of the replacement, if any.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while let Some((bytes, written)) = &mut self.replacement {
            if *written == bytes.len() {
                self.replacement = None;
                break;
            }
            let n =
                std::task::ready!(Pin::new(&mut self.stream).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(()))
    }

    /// Takes `buf` as written when it is one of hyper's error heads, queuing
    /// its JSON replacement instead.
    fn replace(
        &mut self,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Option<Poll<std::io::Result<usize>>> {
        let replacement = json_error_head(buf)?;
        self.replacement = Some((replacement, 0));
        Some(match self.poll_replacement(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            // The rest goes out in later writes, or in flush or shutdown.
            _ => Poll::Ready(Ok(buf.len())),
        })
    }
}

impl AsyncRead for ConnIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = Pin::new(&mut this.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.clock.reads.fetch_add(1, Ordering::Relaxed);
        }
        res
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_replacement(cx))?;
        if let Some(replaced) = this.replace(cx, buf) {
            return replaced;
        }
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_replacement(cx))?;
        if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
            if let Some(replaced) = this.replace(cx, first) {
                return replaced;
            }
        }
        Pin::new(&mut this.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_replacement(cx))?;
        Pin::new(&mut this.stream).poll_flush(cx)
    }

    /// Shuts the write side; when a request body was left unread, then
    /// drains what the client still sends, within the linger budget.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_replacement(cx))?;
        if this.linger.is_none() {
            std::task::ready!(Pin::new(&mut this.stream).poll_shutdown(cx))?;
            if !this.body_open.load(Ordering::Relaxed) {
                return Poll::Ready(Ok(()));
            }
            this.linger = Some(Linger::new());
        }
        match &mut this.linger {
            Some(linger) => linger.poll_drain(&mut this.stream, cx).map(Ok),
            None => Poll::Ready(Ok(())),
        }
    }
}

/// The JSON answer for one of hyper's own error heads, or `None` for any
/// other bytes. hyper's head is its status line, `content-length: 0` and
/// `date` (and perhaps `connection`), with no `content-type`.
fn json_error_head(buf: &[u8]) -> Option<Vec<u8>> {
    const ANSWERS: [(&[u8], &str); 3] = [
        (
            b"HTTP/1.1 400 ",
            "the request is not valid HTTP/1.1: its request line or a header could not be parsed; fix the client's request",
        ),
        (
            b"HTTP/1.1 414 ",
            "the request's URI is too long (64 KiB at most); shorten its path or query",
        ),
        (
            b"HTTP/1.1 431 ",
            "the request's headers are too large (128 KiB and 100 headers at most); send fewer or smaller headers",
        ),
    ];
    // Every write passes here: the cheapest test first.
    if !buf.starts_with(b"HTTP/1.1 4") || buf.len() > 512 || !buf.ends_with(b"\r\n\r\n") {
        return None;
    }
    let message = ANSWERS
        .iter()
        .find(|(status, _)| buf.starts_with(status))
        .map(|(_, message)| *message)?;
    let head = std::str::from_utf8(&buf[..buf.len() - 4]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let mut date = None;
    let mut empty = false;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            empty = value == "0";
        } else if name.eq_ignore_ascii_case("date") {
            date = Some(value);
        } else if !name.eq_ignore_ascii_case("connection") {
            return None;
        }
    }
    if !empty {
        return None;
    }
    let body = serde_json::json!({ "error": message }).to_string();
    let mut answer = format!(
        "{status_line}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    if let Some(date) = date {
        answer.push_str(&format!("date: {date}\r\n"));
    }
    answer.push_str("\r\n");
    answer.push_str(&body);
    Some(answer.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hypers_error_heads_are_replaced() {
        let hyper_431 =
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Sun, 01 Jan 2026 00:00:00 GMT\r\n\r\n";
        let answer = String::from_utf8(json_error_head(hyper_431).expect("replaced")).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(head.contains("content-type: application/json"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(head.contains("date: Sun, 01 Jan 2026 00:00:00 GMT"));
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(json["error"]
            .as_str()
            .unwrap()
            .contains("headers are too large"));
        let hyper_400 = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
        assert!(json_error_head(hyper_400).is_some());

        for ours in [
            &b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nx-request-id: 1\r\n\r\n",
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n{}",
            b"{\"error\":\"x\"}",
        ] {
            assert!(
                json_error_head(ours).is_none(),
                "{}",
                String::from_utf8_lossy(ours)
            );
        }
    }

    #[test]
    fn budgets() {
        assert_eq!(fd_budget(1024, false), 896);
        assert_eq!(fd_budget(1024, true), 448);
        assert_eq!(fd_budget(64, false), 32);
        assert_eq!(fd_budget(1, false), 1);
        assert!(fd_budget(u64::MAX, false) <= Semaphore::MAX_PERMITS);
        assert_eq!(subscriber_budget(896), 672);
        assert_eq!(subscriber_budget(1), 1);
    }
}
