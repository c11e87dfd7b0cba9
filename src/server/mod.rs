//! The HTTP/1.1 server under both roles' endpoints, with connection
//! hygiene: every connection is either serving a request or on a clock.
//!
//! `axum::serve` gives hyper no timer, so a client that connects and sends
//! half a header (or nothing) keeps its connection, and its file
//! descriptor, forever; enough of them and accept fails for everyone. Here
//! each connection records its phase (two atomic stores per transition, no
//! timer on the request path) and one sweeper task closes those whose
//! phase ran out, within 250 ms of the due time:
//!
//! | phase | clock | closed as |
//! |---|---|---|
//! | accepted, nothing read yet | `http.header_timeout_seconds` | `header_timeout` |
//! | request head partly read | `http.header_timeout_seconds` from its first byte | `header_timeout` |
//! | request body arriving | none here; the body read has `http.body_timeout_seconds` (see `ingest::http`) | `body_timeout` |
//! | request being served (body in) | none | |
//! | keep-alive, between requests | `http.idle_timeout_seconds` | `idle` |
//!
//! (hyper's own `header_read_timeout` also runs while a keep-alive
//! connection waits for its next request, so it cannot tell a slow header
//! from an idle connection; the sweeper can. hyper-util's connection
//! builder, tower-http's timeouts and axum's `serve` were considered:
//! none tells these phases apart or caps connections.)
//!
//! Open connections are capped below the process's file-descriptor limit,
//! with room left for Kafka sockets. At the cap, the oldest connection that
//! is not serving a request (waiting, or still receiving its head or body)
//! is closed (`limit`) to make room, so a flood of stalled connections
//! cannot keep real callbacks and `/healthz` out.
//!
//! Memory is capped the same way. A request head is at most
//! `http.max_header_bytes` (hyper's read buffer; past it hyper answers 431
//! and closes), and the bytes of unfinished requests, heads and bodies
//! being received, are counted over all connections: past
//! `http.max_buffered_bytes` the connection that has been receiving
//! longest is closed (`memory`). Bytes are counted as the socket is read
//! (one relaxed add per read) and released when the reply is sent.

pub mod config;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tower_service::Service;

use crate::metrics::{CloseReason, HttpMetrics};
use crate::server::config::HttpConfig;

/// File descriptors kept free for everything but HTTP connections: Kafka
/// sockets (one per broker per client), the listener, logs, `/proc` reads.
pub const RESERVED_FDS: u64 = 128;

/// How often a failing `accept` or a full server is logged, at most.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// The clocks and the caps, from `[http]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// hyper's read buffer: the longest request head.
    pub max_header_bytes: usize,
    /// Bytes of unfinished requests held over all connections.
    pub max_buffered_bytes: u64,
}

impl Limits {
    /// `[http]`'s settings, with the cap lowered to fit `fd_limit` (the
    /// soft RLIMIT_NOFILE) less [`RESERVED_FDS`].
    pub fn new(http: &HttpConfig, fd_limit: Option<u64>) -> Limits {
        let fit = fd_limit.map_or(usize::MAX, |n| {
            n.saturating_sub(RESERVED_FDS).max(1) as usize
        });
        Limits {
            header_timeout: Duration::from_secs(http.header_timeout_seconds),
            idle_timeout: Duration::from_secs(http.idle_timeout_seconds),
            max_connections: http.max_connections.min(fit),
            max_header_bytes: http.max_header_bytes,
            max_buffered_bytes: http.max_buffered_bytes as u64,
        }
    }
}

fn nofile() -> Option<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct passed.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0).then_some(limit)
}

/// The soft open-files limit in force (`None` where it cannot be read).
pub fn fd_limit() -> Option<u64> {
    nofile().map(|l| l.rlim_cur)
}

/// Raises the soft open-files limit to the hard one, logs both, and
/// returns the soft limit in force afterwards.
pub fn raise_fd_limit() -> Option<u64> {
    let limit = nofile()?;
    let (soft, hard) = (limit.rlim_cur, limit.rlim_max);
    if soft < hard {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct passed.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            tracing::info!(
                soft_was = soft,
                now = hard,
                hard,
                "raised the open-files limit"
            );
            return Some(hard);
        }
    }
    tracing::info!(soft, hard, "open-files limit");
    Some(soft)
}

/// A connection's phase (see the module table).
const WAITING: u8 = 0;
const READING_HEAD: u8 = 1;
const READING_BODY: u8 = 2;
const SERVING: u8 = 3;

/// What the sweeper, the socket and the service share about one connection.
struct Shared {
    phase: AtomicU8,
    /// When the phase began, in ms since the server started.
    since_ms: AtomicU64,
    /// Requests answered so far: 0 means the header clock, not the idle
    /// one, runs while waiting.
    served: AtomicU64,
    /// Why the connection must close (a [`CloseReason`] + 1; 0 = open).
    close: AtomicU8,
    /// Bytes received for the request not answered yet (its head and
    /// body), counted in [`Registry::buffered`] too.
    buffered: AtomicU64,
    closing: Notify,
    epoch: Instant,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Two relaxed stores per transition: the hot path wakes nothing.
    fn enter(&self, phase: u8) {
        self.since_ms.store(self.now_ms(), Ordering::Relaxed);
        self.phase.store(phase, Ordering::Release);
    }

    /// Moves from phase `from` to `to`; nothing if the phase is another.
    fn enter_once(&self, from: u8, to: u8) {
        if self.phase.load(Ordering::Acquire) == from {
            self.enter(to);
        }
    }

    /// The reason to close now, if the current phase ran out by `now_ms`.
    fn expired(&self, limits: &Limits, now_ms: u64) -> Option<CloseReason> {
        let since = self.since_ms.load(Ordering::Relaxed);
        let (length, reason) = match self.phase.load(Ordering::Acquire) {
            WAITING if self.served.load(Ordering::Relaxed) > 0 => {
                (limits.idle_timeout, CloseReason::Idle)
            }
            WAITING | READING_HEAD => (limits.header_timeout, CloseReason::HeaderTimeout),
            _ => return None,
        };
        (now_ms >= since + length.as_millis() as u64).then_some(reason)
    }

    /// Asks the connection's task to close it; false if already asked.
    fn close(&self, reason: CloseReason) -> bool {
        let asked = self
            .close
            .compare_exchange(0, reason as u8 + 1, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok();
        if asked {
            self.closing.notify_one();
        }
        asked
    }

    fn close_reason(&self) -> Option<CloseReason> {
        match self.close.load(Ordering::Acquire) {
            0 => None,
            n => Some(CloseReason::ALL[n as usize - 1]),
        }
    }
}

/// The socket, noting the first byte of each request head and counting
/// the bytes of unfinished requests.
struct Watched {
    io: TcpStream,
    shared: Arc<Shared>,
    registry: Arc<Registry>,
    limits: Limits,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.io).poll_read(cx, buf);
        let read = (buf.filled().len() - before) as u64;
        if read > 0 {
            if self.shared.phase.load(Ordering::Acquire) == WAITING {
                self.shared.enter(READING_HEAD);
            }
            self.shared.buffered.fetch_add(read, Ordering::Relaxed);
            let total = self.registry.buffered.fetch_add(read, Ordering::Relaxed) + read;
            if total > self.limits.max_buffered_bytes {
                self.registry
                    .evict_for_memory(self.limits.max_buffered_bytes);
            }
        }
        result
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Open connections, oldest first.
#[derive(Default)]
struct Registry {
    open: Mutex<BTreeMap<u64, Arc<Shared>>>,
    /// Signalled when the last connection closes.
    empty: Notify,
    /// Bytes of unfinished requests over all connections.
    buffered: AtomicU64,
    /// Connections closed for memory (counted when they close).
    memory_closes: AtomicU64,
}

impl Registry {
    /// Asks the oldest connection that is not serving a request (waiting,
    /// or receiving its head or body) to close; false when every one is
    /// serving.
    fn evict_one(&self) -> bool {
        let open = self.open.lock().expect("connection registry lock");
        open.values()
            .filter(|c| c.phase.load(Ordering::Acquire) != SERVING)
            .any(|c| c.close(CloseReason::Limit))
    }

    /// Over `budget`: asks the connections receiving a request (head or
    /// body) the longest to close, until what the others hold fits. A
    /// request being served keeps its bytes: its reply is on its way.
    fn evict_for_memory(&self, budget: u64) {
        let open = self.open.lock().expect("connection registry lock");
        let mut receiving: Vec<&Arc<Shared>> = open
            .values()
            .filter(|c| matches!(c.phase.load(Ordering::Acquire), READING_HEAD | READING_BODY))
            .collect();
        // Closing already asked for: those bytes are on their way out.
        let mut held = self.buffered.load(Ordering::Relaxed);
        for c in open.values().filter(|c| c.close_reason().is_some()) {
            held = held.saturating_sub(c.buffered.load(Ordering::Relaxed));
        }
        receiving.sort_by_key(|c| c.since_ms.load(Ordering::Relaxed));
        for c in receiving {
            if held <= budget {
                break;
            }
            if c.close(CloseReason::Memory) {
                held = held.saturating_sub(c.buffered.load(Ordering::Relaxed));
                self.memory_closes.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Gives back what the connection's request held.
    fn release(&self, shared: &Shared) {
        let n = shared.buffered.swap(0, Ordering::Relaxed);
        if n > 0 {
            self.buffered.fetch_sub(n, Ordering::Relaxed);
        }
    }

    fn len(&self) -> usize {
        self.open.lock().expect("connection registry lock").len()
    }
}

/// Serves `router` on `listener` until `shutdown` completes; then stops
/// accepting, lets open requests finish and returns once every connection
/// has closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    metrics: HttpMetrics,
    shutdown: impl Future<Output = ()>,
) {
    let registry = Arc::new(Registry::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let epoch = Instant::now();
    let sweeper = tokio::spawn(sweep(registry.clone(), limits, epoch));
    let mut next_id = 0u64;
    let mut last_log: Option<Instant> = None;
    let mut unlogged = 0u64;
    let mut log_limited = |message: &str, error: Option<&std::io::Error>| {
        unlogged += 1;
        if last_log.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            tracing::warn!(
                error = error.map(tracing::field::display),
                times = unlogged,
                limit = limits.max_connections,
                "{message}"
            );
            last_log = Some(Instant::now());
            unlogged = 0;
        }
    };
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let io = match accepted {
            Ok((io, _)) => io,
            Err(e) => {
                // EMFILE, ENFILE, ENOBUFS...: the socket stays in the backlog;
                // back off instead of spinning on the same error.
                metrics.accept_errors.inc();
                log_limited("accept failed", Some(&e));
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if registry.len() >= limits.max_connections {
            metrics.closed(CloseReason::Limit);
            log_limited(
                "open connections at http.max_connections (or the fd limit): closing the oldest one not serving a request",
                None,
            );
            if !registry.evict_one() {
                // Every connection is mid-request: refuse this one instead.
                drop(io);
                continue;
            }
        }
        next_id += 1;
        let shared = Arc::new(Shared {
            phase: AtomicU8::new(WAITING),
            since_ms: AtomicU64::new(epoch.elapsed().as_millis() as u64),
            served: AtomicU64::new(0),
            close: AtomicU8::new(0),
            buffered: AtomicU64::new(0),
            closing: Notify::new(),
            epoch,
        });
        registry
            .open
            .lock()
            .expect("connection registry lock")
            .insert(next_id, shared.clone());
        metrics.open.inc();
        tokio::spawn(connection(
            next_id,
            io,
            shared,
            router.clone(),
            metrics.clone(),
            registry.clone(),
            limits,
            stop_rx.clone(),
        ));
    }
    let _ = stop_tx.send(true);
    loop {
        let empty = registry.empty.notified();
        if registry.len() == 0 {
            break;
        }
        empty.await;
    }
    sweeper.abort();
}

/// How often the sweeper looks at every connection's clock: timeouts fire
/// within this much of their due time.
const SWEEP_EVERY: Duration = Duration::from_millis(250);

/// One task for all connections' clocks, so serving a request touches two
/// atomics and no timer.
async fn sweep(registry: Arc<Registry>, limits: Limits, epoch: Instant) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = epoch.elapsed().as_millis() as u64;
        let open = registry.open.lock().expect("connection registry lock");
        for c in open.values() {
            if let Some(reason) = c.expired(&limits, now) {
                c.close(reason);
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn connection(
    id: u64,
    io: TcpStream,
    shared: Arc<Shared>,
    router: Router,
    metrics: HttpMetrics,
    registry: Arc<Registry>,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let service = Phased {
        inner: router,
        shared: shared.clone(),
        registry: registry.clone(),
    };
    let io = TokioIo::new(Watched {
        io,
        shared: shared.clone(),
        registry: registry.clone(),
        limits,
    });
    // No hyper timer: hyper's header timeout would also run between
    // keep-alive requests; the sweeper keeps the clocks instead. The read
    // buffer bounds the request head: past it hyper answers 431.
    let conn = hyper::server::conn::http1::Builder::new()
        .max_buf_size(limits.max_header_bytes)
        .serve_connection(io, TowerToHyperService::new(service));
    tokio::pin!(conn);
    let mut stopping = false;
    let closed = loop {
        tokio::select! {
            _ = conn.as_mut() => break None,
            () = closed(&shared) => break shared.close_reason(),
            _ = stop.wait_for(|s| *s), if !stopping => {
                // Finish the request in progress (if any), then close.
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    };
    if let Some(reason) = closed {
        // Limit closes are counted when the cap is hit.
        if reason != CloseReason::Limit {
            metrics.closed(reason);
        }
        if reason == CloseReason::Memory {
            log_memory_close(&registry, limits);
        }
    }
    // Not polled any more, so nothing is read after this.
    registry.release(&shared);
    metrics.open.dec();
    let mut open = registry.open.lock().expect("connection registry lock");
    open.remove(&id);
    if open.is_empty() {
        registry.empty.notify_waiters();
    }
}

/// Completes once the connection has been asked to close.
async fn closed(shared: &Shared) {
    loop {
        let asked = shared.closing.notified();
        if shared.close_reason().is_some() {
            return;
        }
        asked.await;
    }
}

/// Logs the memory closes, at most once per [`LOG_EVERY`] (whichever
/// connection closes first after that logs the count).
fn log_memory_close(registry: &Registry, limits: Limits) {
    static LAST: Mutex<Option<Instant>> = Mutex::new(None);
    let mut last = LAST.lock().expect("log clock lock");
    if last.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
        tracing::warn!(
            times = registry.memory_closes.swap(0, Ordering::Relaxed),
            limit = limits.max_buffered_bytes,
            "unfinished requests held more than http.max_buffered_bytes: closed the connections receiving longest"
        );
        *last = Some(Instant::now());
    }
}

/// The router, telling the sweeper when a request is being served and
/// when its body is in.
#[derive(Clone)]
struct Phased {
    inner: Router,
    shared: Arc<Shared>,
    registry: Arc<Registry>,
}

/// A request body that moves its connection from [`READING_BODY`] to
/// [`SERVING`] once it has arrived whole.
struct PhasedBody {
    inner: Incoming,
    shared: Arc<Shared>,
}

impl hyper::body::Body for PhasedBody {
    type Data = axum::body::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let frame = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(frame, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.shared.enter_once(READING_BODY, SERVING);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Service<hyper::Request<Incoming>> for Phased {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        <Router as Service<hyper::Request<PhasedBody>>>::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, request: hyper::Request<Incoming>) -> Self::Future {
        let body_done = hyper::body::Body::is_end_stream(request.body());
        self.shared
            .enter(if body_done { SERVING } else { READING_BODY });
        let shared = self.shared.clone();
        let registry = self.registry.clone();
        let request = request.map(|inner| PhasedBody {
            inner,
            shared: shared.clone(),
        });
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            shared.served.fetch_add(1, Ordering::Relaxed);
            registry.release(&shared);
            shared.enter(WAITING);
            response
        })
    }
}
