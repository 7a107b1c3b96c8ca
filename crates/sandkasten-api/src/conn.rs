//! The HTTP serve loop: accepts connections and serves HTTP/1.1 on them with
//! the router, and keeps the daemon answering when clients abuse it.
//!
//! What it guarantees:
//! - **Bounded connections.** At most [`ConnLimits::max_connections`] are
//!   open, derived from the process's file descriptor limit (half of it; the
//!   other half stays for sandboxes, SQLite, agent sockets and the rest of
//!   the daemon), and at most [`ConnLimits::max_unauthenticated`] of them
//!   (half again) before they have sent an authenticated request.
//! - **Room for authenticated work.** A new connection is always accepted
//!   while one of the not-yet-authenticated connections is idle: the oldest
//!   idle one is closed to make room (accept order, so a client that
//!   connects and sends its request at once is the last in line; one whose
//!   request waits unread in its socket, because the daemon was too busy to
//!   read it yet, is not idle). Only when
//!   every connection of the class that is full is in the middle of a
//!   request is the new one refused, with a 503 written to the socket and
//!   the socket closed. A connection that has sent an authenticated request
//!   leaves the unauthenticated class for good.
//! - **Slow and idle clients are closed.** A request head must arrive within
//!   [`ConnLimits::header_timeout`] of the connection's accept or of its
//!   first byte; a body must not pause longer than
//!   [`ConnLimits::body_timeout`] while the handler waits for it (the request
//!   fails with 400 and the connection is closed); a connection between
//!   requests is closed after [`ConnLimits::idle_timeout`], or after
//!   [`ConnLimits::idle_timeout_near_limit`] while three quarters of the
//!   connection budget is in use; a client that reads nothing of its
//!   response for [`ConnLimits::write_timeout`] is disconnected.
//! - **A body not read is not taken for a request.** A response given
//!   before its request's body was read to the end carries
//!   `Connection: close` and ends the connection (the rest of the body
//!   would otherwise be parsed as the next request, and a client reusing
//!   the connection would lose its next one).
//! - **Heads are bounded.** A head (request line, header fields and the
//!   blank line) larger than [`ConnLimits::max_head_bytes`] (or with more
//!   than 100 header fields) is answered 431 by hyper and the connection
//!   closed, whether it arrives in one read or many. The same bound holds
//!   for the trailers of a chunked body.
//! - **Accept errors do not spin.** Out of descriptors (`EMFILE`, `ENFILE`)
//!   or memory, the loop closes the oldest idle not-yet-authenticated
//!   connection and waits for a connection to close (an event), at most a
//!   back-off of 10 ms doubling to 1 s, before it accepts again.
//! - **Graceful shutdown.** Once `shutdown` is cancelled the listener is
//!   closed, idle connections are closed, and the loop returns when every
//!   in-flight request has finished, streams (SSE, file and export bodies)
//!   included, or after [`ConnLimits::shutdown_grace`] (20 s), when the
//!   rest are closed with the process.
//!
//! How: each connection is one task that owns hyper's connection future and
//! its timers. Everything that changes a connection's state (bytes read, a
//! request handed to the router, a response body finished, a write that
//! cannot proceed) happens while that task polls hyper, so after every poll
//! the task reads the state ([`Conn`]'s flags, set by [`Watched`] and the
//! service) and sets its one timer from the pure [`Clock`]. The acceptor
//! keeps the [`Table`] of open connections, by class and accept order.

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// Never more open connections than this, whatever the descriptor limit
/// (an idle connection costs about 10 KiB of buffers and task).
pub(crate) const MAX_CONNECTIONS: usize = 16_384;

/// The connection limits and timeouts of the serve loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConnLimits {
    /// Open connections at most.
    pub(crate) max_connections: usize,
    /// Open connections that have not sent an authenticated request, at
    /// most.
    pub(crate) max_unauthenticated: usize,
    /// A request head must be complete this long after the connection was
    /// accepted (its first request) or after its first byte arrived (later
    /// requests).
    pub(crate) header_timeout: Duration,
    /// The longest pause in a request body while the handler waits for it.
    pub(crate) body_timeout: Duration,
    /// A connection between requests is closed after this long.
    pub(crate) idle_timeout: Duration,
    /// The same while three quarters of `max_connections` are open.
    pub(crate) idle_timeout_near_limit: Duration,
    /// A response the client reads nothing of for this long is abandoned
    /// and the connection closed.
    pub(crate) write_timeout: Duration,
    /// The largest request head (request line and header fields).
    pub(crate) max_head_bytes: usize,
    /// How long a graceful shutdown waits for requests in flight before it
    /// closes them: a proxied request to a server that never answers, or a
    /// client that keeps a stream open, must not keep the daemon from
    /// stopping.
    pub(crate) shutdown_grace: Duration,
}

impl ConnLimits {
    /// The daemon's limits for a process that may open `nofile`
    /// descriptors: half of them for connections (at most
    /// [`MAX_CONNECTIONS`]), half of those for connections not yet
    /// authenticated.
    pub(crate) fn for_fd_limit(nofile: u64) -> ConnLimits {
        let half = usize::try_from(nofile / 2).unwrap_or(usize::MAX);
        let max_connections = half.clamp(2, MAX_CONNECTIONS);
        ConnLimits {
            max_connections,
            max_unauthenticated: max_connections / 2,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            idle_timeout_near_limit: Duration::from_secs(5),
            write_timeout: Duration::from_secs(60),
            max_head_bytes: 64 * 1024,
            shutdown_grace: Duration::from_secs(20),
        }
    }

    /// Whether `open` connections are near the limit (three quarters).
    fn near_limit(&self, open: usize) -> bool {
        open.saturating_mul(4) >= self.max_connections.saturating_mul(3)
    }
}

/// Raises the soft limit of open files to the hard limit and returns the
/// limit then in force (the soft one if raising failed; 1024 if the kernel
/// reports none, which it does not on Linux).
pub(crate) fn raise_fd_limit() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let limit = getrlimit(Resource::Nofile);
    let current = limit.current.unwrap_or(u64::MAX);
    if limit.current != limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => return limit.maximum.unwrap_or(u64::MAX),
            Err(e) => {
                tracing::warn!(error = %e, soft = current, "could not raise the open-file limit")
            }
        }
    }
    if current == u64::MAX {
        // RLIM_INFINITY: the kernel caps open files at fs.nr_open anyway.
        return u64::MAX;
    }
    current
}

// ---------------------------------------------------------------------------
// One connection's shared state
// ---------------------------------------------------------------------------

/// What the acceptor, the connection's task, its service and its I/O share
/// about one connection. Every flag is written while the task polls hyper
/// (or by the acceptor, for `evict`), and read by the task after each poll.
#[derive(Debug)]
pub(crate) struct Conn {
    /// Accept order: smaller is older.
    id: u64,
    registry: Weak<Registry>,
    authenticated: AtomicBool,
    /// A request is with the router or its response body is not finished.
    busy: AtomicBool,
    /// Requests handed to the router so far (a whole request can begin and
    /// end within one poll, unseen by `busy`).
    requests: AtomicU64,
    /// Bytes arrived while not busy: the head of a next request has begun.
    head_started: AtomicBool,
    /// The last write to the socket could not proceed (the client does not
    /// read).
    write_blocked: AtomicBool,
    /// Set by the acceptor to make room: close when idle, or after the
    /// request in flight.
    evict: Notify,
    /// The socket's descriptor (-1 until set), to see whether a request
    /// has arrived that the connection's task has not read yet.
    fd: std::sync::atomic::AtomicI32,
    /// The body of the request in flight has been read to its end (one
    /// request at a time: HTTP/1.1 answers in order).
    body_read: AtomicBool,
}

impl Conn {
    fn new(id: u64, registry: Weak<Registry>) -> Conn {
        Conn {
            id,
            registry,
            authenticated: AtomicBool::new(false),
            busy: AtomicBool::new(false),
            requests: AtomicU64::new(0),
            head_started: AtomicBool::new(false),
            write_blocked: AtomicBool::new(false),
            evict: Notify::new(),
            fd: std::sync::atomic::AtomicI32::new(-1),
            body_read: AtomicBool::new(false),
        }
    }

    fn is_busy(&self) -> bool {
        self.busy.load(Ordering::Relaxed)
    }

    /// Bytes wait in the socket that its task has not read: a client sent
    /// its request while the daemon was too busy to run that task. Such a
    /// connection is not idle; evicted, its request would go unanswered.
    fn has_unread_bytes(&self) -> bool {
        let fd = self.fd.load(Ordering::Relaxed);
        if fd < 0 {
            return false;
        }
        // SAFETY: the descriptor is the socket's while the connection is
        // in the table (a stale number after its close only misleads this
        // choice: FIONREAD reads a count and changes nothing).
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        rustix::io::ioctl_fionread(fd).is_ok_and(|n| n > 0)
    }

    /// Moves the connection to the authenticated class (once).
    fn mark_authenticated(&self) {
        if !self.authenticated.swap(true, Ordering::Relaxed) {
            if let Some(registry) = self.registry.upgrade() {
                registry.lock().promote(self.id);
            }
        }
    }

    fn observe(&self) -> Observed {
        Observed {
            requests: self.requests.load(Ordering::Relaxed),
            busy: self.busy.load(Ordering::Relaxed),
            head_started: self.head_started.load(Ordering::Relaxed),
            write_blocked: self.write_blocked.load(Ordering::Relaxed),
        }
    }
}

/// The connection a request came on, in the request's extensions while the
/// serve loop serves it (absent under `oneshot` in tests).
#[derive(Debug, Clone)]
pub(crate) struct ConnHandle(Arc<Conn>);

/// Middleware, placed behind the key check: the request's connection has
/// now sent an authenticated request, so it counts against the
/// authenticated budget from here on (before the handler runs, so a long
/// stream counts too).
pub(crate) async fn note_authenticated(req: Request, next: Next) -> Response {
    mark_authenticated(&req);
    next.run(req).await
}

/// The request's connection has sent an authenticated request (by the
/// key, or a signed URL of the ports proxy).
pub(crate) fn mark_authenticated(req: &Request) {
    if let Some(ConnHandle(conn)) = req.extensions().get::<ConnHandle>() {
        conn.mark_authenticated();
    }
}

// ---------------------------------------------------------------------------
// The table of open connections and admission
// ---------------------------------------------------------------------------

/// Open connections by class, in accept order.
#[derive(Debug, Default)]
pub(crate) struct Table {
    unauthenticated: BTreeMap<u64, Arc<Conn>>,
    authenticated: BTreeMap<u64, Arc<Conn>>,
}

/// What to do with a newly accepted connection.
#[derive(Debug)]
pub(crate) enum Admission {
    /// There is room.
    Admit,
    /// There is room once this idle connection is closed (it has been
    /// taken out of the table).
    AdmitEvicting(Arc<Conn>),
    /// Every connection of the full class is busy.
    Refuse,
}

impl Table {
    fn open(&self) -> usize {
        self.unauthenticated.len() + self.authenticated.len()
    }

    /// Decides on a new connection; takes an evicted connection out of the
    /// table, so the counts stay within the limits.
    pub(crate) fn admit(&mut self, limits: &ConnLimits) -> Admission {
        let total_full = self.open() >= limits.max_connections;
        let unauthenticated_full = self.unauthenticated.len() >= limits.max_unauthenticated;
        if !total_full && !unauthenticated_full {
            return Admission::Admit;
        }
        // Prefer a connection that never authenticated; an idle
        // authenticated one only when the whole budget is in use and none
        // of the others is idle.
        let mut victim = oldest_idle(&self.unauthenticated);
        if victim.is_none() && total_full && !unauthenticated_full {
            victim = oldest_idle(&self.authenticated);
        }
        match victim {
            Some(id) => {
                let conn = self
                    .unauthenticated
                    .remove(&id)
                    .or_else(|| self.authenticated.remove(&id))
                    .expect("the victim is in the table");
                Admission::AdmitEvicting(conn)
            }
            None => Admission::Refuse,
        }
    }

    fn insert(&mut self, conn: Arc<Conn>) {
        self.unauthenticated.insert(conn.id, conn);
    }

    fn promote(&mut self, id: u64) {
        if let Some(conn) = self.unauthenticated.remove(&id) {
            self.authenticated.insert(id, conn);
        }
    }

    /// Forgets a closed connection; false if it was evicted before.
    fn remove(&mut self, id: u64) -> bool {
        self.unauthenticated.remove(&id).is_some() || self.authenticated.remove(&id).is_some()
    }

    /// Takes the oldest idle connection that never authenticated out of
    /// the table (to free a descriptor).
    fn evict_oldest_idle_unauthenticated(&mut self) -> Option<Arc<Conn>> {
        let id = oldest_idle(&self.unauthenticated)?;
        self.unauthenticated.remove(&id)
    }
}

fn oldest_idle(conns: &BTreeMap<u64, Arc<Conn>>) -> Option<u64> {
    conns
        .values()
        .find(|c| !c.is_busy() && !c.has_unread_bytes())
        .map(|c| c.id)
}

/// The table, behind a lock held only for table operations (never across an
/// await), and the event of a connection closing.
#[derive(Debug)]
pub(crate) struct Registry {
    limits: ConnLimits,
    table: Mutex<Table>,
    /// Open connections (the table's size, readable without the lock).
    open: AtomicUsize,
    next_id: AtomicU64,
    /// A connection's task ended (its descriptor is free).
    closed: Notify,
    /// The open connections reached three quarters of the limit: idle
    /// connections shorten their timeout.
    pressure: Notify,
    /// When `pressure` was last notified (at most once a second: each
    /// notification wakes every connection).
    pressure_notified: Mutex<Option<Instant>>,
    evicted: AtomicU64,
    refused: AtomicU64,
}

/// The table locked; keeps `open` equal to the table's size when dropped.
struct Locked<'a> {
    registry: &'a Registry,
    table: std::sync::MutexGuard<'a, Table>,
}

impl std::ops::Deref for Locked<'_> {
    type Target = Table;
    fn deref(&self) -> &Table {
        &self.table
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut Table {
        &mut self.table
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        self.registry
            .open
            .store(self.table.open(), Ordering::Relaxed);
    }
}

impl Registry {
    fn new(limits: ConnLimits) -> Arc<Registry> {
        Arc::new(Registry {
            limits,
            table: Mutex::new(Table::default()),
            open: AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
            closed: Notify::new(),
            pressure: Notify::new(),
            pressure_notified: Mutex::new(None),
            evicted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> Locked<'_> {
        Locked {
            registry: self,
            // A panic while the lock was held cannot leave the table
            // inconsistent (every operation is one map call), so a poisoned
            // lock is used as it is.
            table: self.table.lock().unwrap_or_else(|p| p.into_inner()),
        }
    }

    /// Admits a new connection (evicting an idle one if that makes room),
    /// or `None` if it must be refused.
    fn admit(self: &Arc<Self>) -> Option<Arc<Conn>> {
        let mut table = self.lock();
        match table.admit(&self.limits) {
            Admission::Refuse => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            Admission::AdmitEvicting(victim) => {
                self.evicted.fetch_add(1, Ordering::Relaxed);
                victim.evict.notify_one();
            }
            Admission::Admit => {}
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn::new(id, Arc::downgrade(self)));
        let was_near = self.limits.near_limit(table.open());
        table.insert(conn.clone());
        let near = self.limits.near_limit(table.open());
        drop(table);
        if near && !was_near {
            self.note_pressure();
        }
        Some(conn)
    }

    /// Wakes every connection to shorten its idle timeout, at most once a
    /// second.
    fn note_pressure(&self) {
        let mut last = self
            .pressure_notified
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if last.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
            *last = Some(now);
            self.pressure.notify_waiters();
        }
    }

    /// Called by a connection's task as it ends.
    fn closed(&self, id: u64) {
        self.lock().remove(id);
        self.closed.notify_one();
    }

    fn near_limit(&self) -> bool {
        self.limits.near_limit(self.open.load(Ordering::Relaxed))
    }
}

// ---------------------------------------------------------------------------
// A connection's clock
// ---------------------------------------------------------------------------

/// A connection's flags as read after a poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Observed {
    pub(crate) requests: u64,
    pub(crate) busy: bool,
    pub(crate) head_started: bool,
    pub(crate) write_blocked: bool,
}

/// What a connection is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Accepted, its first request's head not complete.
    Fresh,
    /// Between requests.
    Idle,
    /// A later request's head has begun.
    Head,
    /// A request is being served.
    Busy,
    /// A write could not proceed: the client reads nothing.
    WriteStalled,
}

/// Which timeout closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expiry {
    Header,
    Idle,
    Write,
}

/// The one deadline of a connection, from the phases it goes through.
#[derive(Debug)]
pub(crate) struct Clock {
    phase: Phase,
    since: Instant,
    /// `Observed::requests` at the last observation.
    requests: u64,
    /// The server was near its limit during this idle phase: the short idle
    /// timeout holds for the rest of it (closing others does not lengthen
    /// it again).
    idle_cut: bool,
}

impl Clock {
    pub(crate) fn new(accepted: Instant) -> Clock {
        Clock {
            phase: Phase::Fresh,
            since: accepted,
            requests: 0,
            idle_cut: false,
        }
    }

    /// The deadline after observing `o` at `now`, and what it guards; `None`
    /// while a request is served normally.
    pub(crate) fn deadline(
        &mut self,
        o: Observed,
        now: Instant,
        limits: &ConnLimits,
        near_limit: bool,
    ) -> Option<(Instant, Expiry)> {
        // A request came (and maybe went) since the last observation: a new
        // phase begins even if it looks like the old one.
        let new_request = o.requests != self.requests;
        self.requests = o.requests;
        // The first request's head is timed from the accept, whenever its
        // first byte came.
        let fresh = self.phase == Phase::Fresh && !new_request;
        let phase = if o.write_blocked {
            Phase::WriteStalled
        } else if o.busy {
            Phase::Busy
        } else if fresh {
            Phase::Fresh
        } else if o.head_started {
            Phase::Head
        } else {
            Phase::Idle
        };
        if phase != self.phase || new_request {
            self.phase = phase;
            self.since = now;
            self.idle_cut = false;
        }
        match phase {
            Phase::Fresh | Phase::Head => {
                Some((self.since + limits.header_timeout, Expiry::Header))
            }
            Phase::Idle => {
                self.idle_cut |= near_limit;
                let idle = if self.idle_cut {
                    limits.idle_timeout_near_limit
                } else {
                    limits.idle_timeout
                };
                Some((self.since + idle, Expiry::Idle))
            }
            Phase::WriteStalled => Some((self.since + limits.write_timeout, Expiry::Write)),
            Phase::Busy => None,
        }
    }
}

// ---------------------------------------------------------------------------
// I/O and bodies
// ---------------------------------------------------------------------------

/// The socket, noting in [`Conn`] when a request's head begins and when a
/// write cannot proceed.
struct Watched {
    stream: TcpStream,
    conn: Arc<Conn>,
}

impl Watched {
    fn note_write<T>(&self, r: &Poll<io::Result<T>>) {
        self.conn
            .write_blocked
            .store(r.is_pending(), Ordering::Relaxed);
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before && !self.conn.is_busy() {
            self.conn.head_started.store(true, Ordering::Relaxed);
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.note_write(&r);
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.note_write(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.stream).poll_flush(cx);
        self.note_write(&r);
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// A request body that fails when the client sends nothing for `timeout`
/// while it is being read, and notes on its connection when it has been
/// read to its end.
struct TimeoutBody {
    inner: Incoming,
    timeout: Duration,
    sleep: Pin<Box<Sleep>>,
    armed: bool,
    conn: Arc<Conn>,
}

/// The error of a request body that paused too long.
#[derive(Debug)]
pub(crate) struct BodyTimedOut(Duration);

impl std::fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the client sent no body data for {} s",
            self.0.as_secs_f64()
        )
    }
}

impl std::error::Error for BodyTimedOut {}

impl TimeoutBody {
    fn new(inner: Incoming, timeout: Duration, conn: Arc<Conn>) -> TimeoutBody {
        let read = hyper::body::Body::is_end_stream(&inner);
        conn.body_read.store(read, Ordering::Relaxed);
        TimeoutBody {
            inner,
            timeout,
            sleep: Box::pin(tokio::time::sleep(timeout)),
            armed: false,
            conn,
        }
    }
}

impl hyper::body::Body for TimeoutBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.armed = false;
                if frame.is_none() || hyper::body::Body::is_end_stream(&this.inner) {
                    this.conn.body_read.store(true, Ordering::Relaxed);
                }
                Poll::Ready(frame.map(|r| r.map_err(Into::into)))
            }
            Poll::Pending => {
                if !this.armed {
                    this.armed = true;
                    let deadline = Instant::now() + this.timeout;
                    this.sleep.as_mut().reset(deadline);
                }
                match this.sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(BodyTimedOut(this.timeout).into()))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Clears the connection's `busy` when the response is done (or dropped).
struct RequestGuard(Arc<Conn>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.busy.store(false, Ordering::Relaxed);
    }
}

/// A response body that ends its request's busy time when it ends.
struct GuardedBody {
    inner: Body,
    guard: Option<RequestGuard>,
}

impl hyper::body::Body for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(r, Poll::Ready(None | Some(Err(_)))) {
            self.guard = None;
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// ---------------------------------------------------------------------------
// The loop
// ---------------------------------------------------------------------------

/// Serves `router` on `listener` within `limits` until `shutdown` is
/// cancelled, then stops accepting, closes idle connections and returns once
/// every in-flight request (streams included) has finished.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    limits: ConnLimits,
) -> io::Result<()> {
    serve_registry(listener, router, shutdown, Registry::new(limits)).await
}

/// [`serve`] with its table of connections given (tests look into it).
async fn serve_registry(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    registry: Arc<Registry>,
) -> io::Result<()> {
    // Listening again only sets the accept queue's length: std's 128 drops
    // the SYNs of a burst (a client then waits a second for its
    // retransmit); the kernel caps this at net.core.somaxconn.
    rustix::net::listen(&listener, ACCEPT_BACKLOG)?;
    let tracker = TaskTracker::new();
    let refusal = refusal_response(registry.limits.max_connections);
    let mut backoff = Backoff::new();
    let mut warned: Option<Instant> = None;
    let mut reported = (0u64, 0u64);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, _peer)) => {
                backoff.reset();
                let admitted = registry.admit();
                let counts = (
                    registry.evicted.load(Ordering::Relaxed),
                    registry.refused.load(Ordering::Relaxed),
                );
                if counts != reported && warned.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                    tracing::warn!(
                        evicted = counts.0,
                        refused = counts.1,
                        max_connections = registry.limits.max_connections,
                        max_unauthenticated = registry.limits.max_unauthenticated,
                        "HTTP connection limit reached: closing the oldest idle connections \
                         (refusing new ones while none is idle)"
                    );
                    warned = Some(Instant::now());
                    reported = counts;
                }
                match admitted {
                    Some(conn) => {
                        conn.fd
                            .store(std::os::fd::AsRawFd::as_raw_fd(&stream), Ordering::Relaxed);
                        let _ = stream.set_nodelay(true);
                        tracker.spawn(run_conn(
                            stream,
                            conn,
                            router.clone(),
                            registry.clone(),
                            shutdown.clone(),
                        ));
                    }
                    // Best effort: the 503 fits any socket buffer, and a
                    // client that already sent its request may see a reset
                    // instead. Either way nothing waits on this socket.
                    None => {
                        let _ = stream.try_write(&refusal);
                    }
                }
            }
            Err(e) if is_per_connection(&e) => {}
            Err(e) => {
                // Out of descriptors (or memory): the pending connection
                // stays in the backlog and accept would fail again at once.
                // Free a descriptor if an idle unauthenticated connection
                // holds one, then wait for a connection to close, with a
                // back-off for descriptors freed elsewhere in the daemon.
                let victim = registry.lock().evict_oldest_idle_unauthenticated();
                if let Some(victim) = &victim {
                    registry.evicted.fetch_add(1, Ordering::Relaxed);
                    victim.evict.notify_one();
                }
                if warned.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                    tracing::warn!(error = %e, open = registry.open.load(Ordering::Relaxed),
                        "accepting a connection failed; retrying once a connection closes");
                    warned = Some(Instant::now());
                }
                let wait = backoff.next();
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = registry.closed.notified() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
    drop(listener);
    tracker.close();
    let grace = registry.limits.shutdown_grace;
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(
            in_flight = tracker.len(),
            "requests still in flight {} s after the shutdown began; closing them",
            grace.as_secs()
        );
    }
    Ok(())
}

/// The accept queue's length asked for (the kernel caps it at
/// `net.core.somaxconn`, 4096 by default).
const ACCEPT_BACKLOG: i32 = 4096;

/// Warnings about limits are logged at most this often.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Errors of one pending connection (the listener is fine).
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

/// 10 ms doubling to 1 s.
struct Backoff(Duration);

impl Backoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);

    fn new() -> Backoff {
        Backoff(Self::FIRST)
    }

    fn reset(&mut self) {
        self.0 = Self::FIRST;
    }

    fn next(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(Self::MAX);
        d
    }
}

/// The answer written to a refused connection: the API's error shape.
fn refusal_response(max_connections: usize) -> Vec<u8> {
    let body = serde_json::json!({
        "error_code": "CAPACITY_EXHAUSTED",
        "message": "too many open connections; retry shortly",
        "details": {"max_connections": max_connections},
    })
    .to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// How a connection ended.
enum End {
    /// hyper finished the connection (closed by the client, an error, or
    /// after the last request of a connection told to close).
    Done(Result<(), hyper::Error>),
    TimedOut(Expiry),
    /// Evicted or shut down while idle.
    Closed,
}

/// Serves one connection, then tells the registry (once its socket is
/// closed, so the acceptor can use the descriptor).
async fn run_conn(
    stream: TcpStream,
    conn: Arc<Conn>,
    router: Router,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
) {
    serve_conn(stream, &conn, router, &registry, shutdown).await;
    registry.closed(conn.id);
}

/// Serves one connection until it ends, times out, is evicted or the
/// server shuts down.
async fn serve_conn(
    stream: TcpStream,
    conn: &Arc<Conn>,
    router: Router,
    registry: &Registry,
    shutdown: CancellationToken,
) {
    let limits = &registry.limits;
    let service = {
        let conn = conn.clone();
        let body_timeout = limits.body_timeout;
        hyper::service::service_fn(move |mut req: Request<Incoming>| {
            conn.head_started.store(false, Ordering::Relaxed);
            conn.busy.store(true, Ordering::Relaxed);
            conn.requests.fetch_add(1, Ordering::Relaxed);
            let guard = RequestGuard(conn.clone());
            req.extensions_mut().insert(ConnHandle(conn.clone()));
            let req = req.map(|b| Body::new(TimeoutBody::new(b, body_timeout, conn.clone())));
            let router = router.clone();
            let conn = conn.clone();
            async move {
                let Ok(mut resp) = router.oneshot(req).await;
                // Answered before the body was read to its end (an error
                // part way through a stream, a refusal before the body):
                // the rest of the body would be taken for the next request,
                // so the connection ends with this response, and says so,
                // or a client could send its next request on it.
                if !conn.body_read.load(Ordering::Relaxed)
                    && resp.status() != axum::http::StatusCode::SWITCHING_PROTOCOLS
                {
                    resp.headers_mut().insert(
                        axum::http::header::CONNECTION,
                        axum::http::HeaderValue::from_static("close"),
                    );
                }
                Ok::<_, Infallible>(resp.map(|inner| GuardedBody {
                    inner,
                    guard: Some(guard),
                }))
            }
        })
    };
    let io = TokioIo::new(Watched {
        stream,
        conn: conn.clone(),
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    // `max_header_size` bounds the head itself, however it arrives;
    // `max_buf_size` alone only bounds a head still incomplete in the read
    // buffer, so a longer one that lands in fewer reads would pass.
    http.max_buf_size(limits.max_head_bytes.max(8192))
        .max_header_size(limits.max_head_bytes)
        .keep_alive(true);
    // Upgrades (WebSocket through the ports proxy) take the socket over
    // once their 101 is written; the connection's task then ends.
    let mut connection = pin!(http.serve_connection(io, service).with_upgrades());

    let mut clock = Clock::new(Instant::now());
    let mut sleep = pin!(tokio::time::sleep(Duration::ZERO));
    let mut evicted = pin!(conn.evict.notified());
    let mut cancelled = pin!(shutdown.cancelled());
    let mut pressure = Box::pin(registry.pressure.notified());
    // Told to close (evicted or shutting down) while a request was in
    // flight: hyper closes once that request's response is complete.
    let mut closing = false;
    let end = std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = connection.as_mut().poll(cx) {
            return Poll::Ready(End::Done(r));
        }
        if !closing
            && (evicted.as_mut().poll(cx).is_ready() || cancelled.as_mut().poll(cx).is_ready())
        {
            if !conn.is_busy() {
                return Poll::Ready(End::Closed);
            }
            closing = true;
            connection.as_mut().graceful_shutdown();
            if let Poll::Ready(r) = connection.as_mut().poll(cx) {
                return Poll::Ready(End::Done(r));
            }
        }
        // Near the limit: wake to take the shorter idle timeout.
        while pressure.as_mut().poll(cx).is_ready() {
            pressure.set(registry.pressure.notified());
        }
        let now = Instant::now();
        if let Some((deadline, expiry)) =
            clock.deadline(conn.observe(), now, limits, registry.near_limit())
        {
            if deadline <= now {
                return Poll::Ready(End::TimedOut(expiry));
            }
            if sleep.deadline() != deadline {
                sleep.as_mut().reset(deadline);
            }
            if sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(End::TimedOut(expiry));
            }
        }
        Poll::Pending
    })
    .await;
    match end {
        End::Done(Ok(())) | End::Closed => {}
        End::Done(Err(e)) => tracing::debug!(error = %e, "HTTP connection ended with an error"),
        End::TimedOut(expiry) => {
            tracing::debug!(?expiry, "closing an HTTP connection that timed out");
        }
    }
    // Returning drops the connection: the socket is closed (and a response
    // whose client stopped reading it is abandoned).
}

#[cfg(test)]
mod tests;
