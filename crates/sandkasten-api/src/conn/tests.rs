//! Tests of the serve loop: its pure parts (limits, admission, the clock)
//! directly, the loop itself over real loopback sockets with short
//! timeouts, and accepting out of descriptors in a child process with a
//! lowered limit. Every timing assertion has a lower bound that holds
//! because timers never fire early, and an upper bound seconds above the
//! timeout.

use super::*;
use crate::auth;
use axum::routing::{get, post};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

const KEY: &str = "sk-conn-test";
/// Far above every timeout of these tests: only reached if something hangs.
const PATIENCE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Pure parts
// ---------------------------------------------------------------------------

#[test]
fn limits_follow_the_fd_limit() {
    let cases = [
        (20_000, 10_000, 5_000),
        (1_048_576, MAX_CONNECTIONS, MAX_CONNECTIONS / 2),
        (u64::MAX, MAX_CONNECTIONS, MAX_CONNECTIONS / 2),
        (1024, 512, 256),
        (256, 128, 64),
        (1, 2, 1),
    ];
    for (nofile, max, unauthenticated) in cases {
        let l = ConnLimits::for_fd_limit(nofile);
        assert_eq!(l.max_connections, max, "nofile {nofile}");
        assert_eq!(l.max_unauthenticated, unauthenticated, "nofile {nofile}");
        // The other half of the descriptors stays for the rest of the
        // daemon.
        assert!(l.max_connections as u64 <= nofile.max(4) / 2 || nofile < 4);
    }
    let l = ConnLimits::for_fd_limit(20_000);
    assert!(!l.near_limit(7_499));
    assert!(l.near_limit(7_500));
}

fn conn(id: u64, busy: bool) -> Arc<Conn> {
    let c = Conn::new(id, Weak::new());
    c.busy.store(busy, Ordering::Relaxed);
    Arc::new(c)
}

fn table(unauthenticated: &[(u64, bool)], authenticated: &[(u64, bool)]) -> Table {
    let mut t = Table::default();
    for &(id, busy) in unauthenticated {
        t.unauthenticated.insert(id, conn(id, busy));
    }
    for &(id, busy) in authenticated {
        t.authenticated.insert(id, conn(id, busy));
    }
    t
}

fn small(max_connections: usize, max_unauthenticated: usize) -> ConnLimits {
    ConnLimits {
        max_connections,
        max_unauthenticated,
        ..ConnLimits::for_fd_limit(1024)
    }
}

fn evicted(a: Admission) -> Option<u64> {
    match a {
        Admission::Admit => None,
        Admission::AdmitEvicting(c) => Some(c.id),
        Admission::Refuse => panic!("refused"),
    }
}

#[test]
fn admission_makes_room_from_the_oldest_idle_unauthenticated() {
    let l = small(4, 2);
    // Room.
    assert_eq!(evicted(table(&[(0, false)], &[]).admit(&l)), None);
    // The unauthenticated class is full: its oldest idle one goes.
    let mut t = table(&[(3, false), (5, false)], &[]);
    assert_eq!(evicted(t.admit(&l)), Some(3));
    assert_eq!(t.unauthenticated.keys().copied().collect::<Vec<_>>(), [5]);
    // A busy one is skipped.
    let mut t = table(&[(3, true), (5, false)], &[]);
    assert_eq!(evicted(t.admit(&l)), Some(5));
    // Every unauthenticated one busy: refused, even with idle
    // authenticated ones (evicting those would not make room in the class).
    let mut t = table(&[(3, true), (5, true)], &[(1, false)]);
    assert!(matches!(t.admit(&l), Admission::Refuse));
    assert_eq!(t.open(), 3);
    // The whole budget in use: an idle unauthenticated one first…
    let mut t = table(&[(4, false)], &[(1, false), (2, false), (3, true)]);
    assert_eq!(evicted(t.admit(&l)), Some(4));
    // …else the oldest idle authenticated one (idle between requests)…
    let mut t = table(&[(4, true)], &[(1, true), (2, false), (3, false)]);
    assert_eq!(evicted(t.admit(&l)), Some(2));
    assert_eq!(t.authenticated.keys().copied().collect::<Vec<_>>(), [1, 3]);
    // …else refused.
    let mut t = table(&[(4, true)], &[(1, true), (2, true), (3, true)]);
    assert!(matches!(t.admit(&l), Admission::Refuse));
}

#[test]
fn promotion_moves_a_connection_out_of_the_unauthenticated_budget() {
    let l = small(4, 2);
    let mut t = table(&[(1, false), (2, false)], &[]);
    t.promote(1);
    t.promote(7); // unknown (already evicted): nothing happens
    assert_eq!(t.unauthenticated.keys().copied().collect::<Vec<_>>(), [2]);
    assert_eq!(t.authenticated.keys().copied().collect::<Vec<_>>(), [1]);
    assert_eq!(evicted(t.admit(&l)), None);
    assert!(t.remove(1));
    assert!(!t.remove(1));
}

#[test]
fn the_clock_guards_each_phase_with_its_timeout() {
    let l = ConnLimits::for_fd_limit(1024);
    let t0 = Instant::now();
    let s = Duration::from_secs;
    let at = |n: u64| t0 + s(n);
    let o = |requests, busy, head_started, write_blocked| Observed {
        requests,
        busy,
        head_started,
        write_blocked,
    };
    let mut c = Clock::new(t0);
    let header = |t: Instant| Some((t + l.header_timeout, Expiry::Header));
    let idle = |t: Instant| Some((t + l.idle_timeout, Expiry::Idle));
    // The first head is timed from the accept, bytes or not.
    assert_eq!(
        c.deadline(o(0, false, false, false), at(1), &l, false),
        header(t0)
    );
    assert_eq!(
        c.deadline(o(0, false, true, false), at(3), &l, false),
        header(t0)
    );
    // Serving: no deadline, unless the client stops reading.
    assert_eq!(c.deadline(o(1, true, false, false), at(4), &l, false), None);
    assert_eq!(
        c.deadline(o(1, true, false, true), at(5), &l, false),
        Some((at(5) + l.write_timeout, Expiry::Write))
    );
    assert_eq!(
        c.deadline(o(1, true, false, true), at(9), &l, false),
        Some((at(5) + l.write_timeout, Expiry::Write))
    );
    assert_eq!(
        c.deadline(o(1, true, false, false), at(10), &l, false),
        None
    );
    // Between requests: the idle timeout from the end of the response,
    // shorter near the limit.
    assert_eq!(
        c.deadline(o(1, false, false, false), at(12), &l, false),
        idle(at(12))
    );
    let cut = Some((at(12) + l.idle_timeout_near_limit, Expiry::Idle));
    assert_eq!(c.deadline(o(1, false, false, false), at(14), &l, true), cut);
    // Once cut, it stays cut for this idle phase.
    assert_eq!(
        c.deadline(o(1, false, false, false), at(15), &l, false),
        cut
    );
    // A next head: timed from its first byte.
    assert_eq!(
        c.deadline(o(1, false, true, false), at(20), &l, false),
        header(at(20))
    );
    assert_eq!(
        c.deadline(o(1, false, true, false), at(25), &l, false),
        header(at(20))
    );
    assert_eq!(
        c.deadline(o(2, true, false, false), at(26), &l, false),
        None
    );
    // Requests that came and went between two observations restart the
    // idle time, and end the first head's phase.
    assert_eq!(
        c.deadline(o(2, false, false, false), at(30), &l, false),
        idle(at(30))
    );
    assert_eq!(
        c.deadline(o(5, false, false, false), at(40), &l, false),
        idle(at(40))
    );
    let mut c = Clock::new(t0);
    assert_eq!(
        c.deadline(o(1, false, false, false), at(2), &l, false),
        idle(at(2))
    );
    let mut c = Clock::new(t0);
    assert_eq!(
        c.deadline(o(1, false, true, false), at(2), &l, false),
        header(at(2))
    );
}

#[test]
fn the_backoff_doubles_to_a_second() {
    let mut b = Backoff::new();
    let got: Vec<u64> = (0..9).map(|_| b.next().as_millis() as u64).collect();
    assert_eq!(got, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
    b.reset();
    assert_eq!(b.next(), Duration::from_millis(10));
}

#[test]
fn the_refusal_is_a_complete_503_in_the_error_shape() {
    let raw = String::from_utf8(refusal_response(77)).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
    assert!(head.contains(&format!("content-length: {}", body.len())));
    assert!(head.contains("connection: close"));
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["error_code"], "CAPACITY_EXHAUSTED");
    assert_eq!(v["details"]["max_connections"], 77);
    assert!(v["message"].is_string());
}

// ---------------------------------------------------------------------------
// The loop over real sockets
// ---------------------------------------------------------------------------

/// What the test router lets a test control.
#[derive(Default)]
struct Controls {
    /// `/hold` and `/private/stream` wait for this before finishing.
    release: Notify,
    /// Notified when `/hold` has a request.
    held: Notify,
    /// Notified when the body of `/private/big` is dropped.
    big_dropped: Notify,
}

/// A router shaped like the API's: public routes, and routes behind the
/// real key check with the connection marked authenticated behind it.
fn router(controls: Arc<Controls>) -> Router {
    let key = Arc::new(auth::ApiKey::new(KEY));
    let hold = controls.clone();
    let stream = controls.clone();
    let big = controls;
    let private = Router::new()
        .route("/private", get(|| async { "private" }))
        .route(
            "/private/echo",
            post(|body: Bytes| async move { body.len().to_string() }),
        )
        .route(
            "/private/stream",
            get(move || async move {
                let first = futures::stream::once(async { Ok::<_, Infallible>("first\n") });
                let last = futures::stream::once(async move {
                    stream.release.notified().await;
                    Ok("last\n")
                });
                Body::from_stream(futures::StreamExt::chain(first, last))
            }),
        )
        .route(
            "/private/big",
            get(move || async move {
                /// Notifies when the response body is dropped.
                struct OnDrop(Arc<Controls>);
                impl Drop for OnDrop {
                    fn drop(&mut self) {
                        self.0.big_dropped.notify_one();
                    }
                }
                let guard = OnDrop(big);
                let chunk = Bytes::from(vec![b'x'; 1 << 20]);
                let chunks = futures::stream::repeat(chunk).take(256).map(move |c| {
                    let _ = &guard;
                    Ok::<_, Infallible>(c)
                });
                Body::from_stream(chunks)
            }),
        )
        .layer(axum::middleware::from_fn(note_authenticated))
        .layer(axum::middleware::from_fn_with_state(
            key,
            auth::require_api_key,
        ));
    Router::new()
        .route("/open", get(|| async { "open" }))
        .route(
            "/hold",
            get(move || async move {
                hold.held.notify_one();
                hold.release.notified().await;
                "held"
            }),
        )
        .merge(private)
}

use futures::StreamExt as _;

struct Server {
    addr: SocketAddr,
    shutdown: CancellationToken,
    handle: JoinHandle<io::Result<()>>,
    controls: Arc<Controls>,
    registry: Arc<Registry>,
}

impl Server {
    /// (unauthenticated, authenticated) connections in the table.
    fn counts(&self) -> (usize, usize) {
        let t = self.registry.lock();
        (t.unauthenticated.len(), t.authenticated.len())
    }
}

async fn start(limits: ConnLimits) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let controls = Arc::new(Controls::default());
    let registry = Registry::new(limits);
    let handle = tokio::spawn(serve_registry(
        listener,
        router(controls.clone()),
        shutdown.clone(),
        registry.clone(),
    ));
    Server {
        addr,
        shutdown,
        handle,
        controls,
        registry,
    }
}

fn limits() -> ConnLimits {
    ConnLimits {
        max_connections: 64,
        max_unauthenticated: 32,
        header_timeout: Duration::from_secs(30),
        body_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(30),
        idle_timeout_near_limit: Duration::from_secs(30),
        write_timeout: Duration::from_secs(30),
        max_head_bytes: 8192,
        shutdown_grace: Duration::from_secs(30),
    }
}

fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.expect("connect")
}

/// One response read off `s`: status, body (by content-length or chunked,
/// undecoded), whether the server said it closes.
async fn read_response(s: &mut TcpStream) -> (u16, String, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let body = &got[end + 4..];
            let status: u16 = head[9..12].parse().unwrap();
            let close = head.contains("connection: close");
            if let Some(len) = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map(|v| v.trim().parse::<usize>().unwrap())
            {
                if body.len() >= len {
                    return (status, String::from_utf8_lossy(&body[..len]).into(), close);
                }
            } else if body.ends_with(b"0\r\n\r\n") {
                return (status, String::from_utf8_lossy(body).into(), close);
            }
        }
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .expect("no complete response in time")
            .expect("read");
        assert!(
            n > 0,
            "closed before a complete response: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
}

async fn get_on(s: &mut TcpStream, path: &str, authorized: bool) -> (u16, String, bool) {
    let auth = if authorized {
        format!("authorization: Bearer {KEY}\r\n")
    } else {
        String::new()
    };
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: t\r\n{auth}\r\n").as_bytes())
        .await
        .unwrap();
    read_response(s).await
}

/// Waits until the server closes `s` (EOF or reset), discarding what it
/// sends; panics after [`PATIENCE`].
async fn closed(s: &mut TcpStream) {
    let mut buf = [0u8; 65536];
    let deadline = Instant::now() + PATIENCE;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => panic!("the server did not close the connection within {PATIENCE:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => {}
        }
    }
}

/// Whether the server has closed `s` already (what it has sent is
/// discarded). Only meaningful once the close, if any, has been decided:
/// a close in flight may not be seen yet.
async fn is_open(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(ms(0), s.read(&mut buf)).await {
            Err(_) => return true,
            Ok(Ok(0)) | Ok(Err(_)) => return false,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_or_silent_head_is_closed_after_the_header_timeout() {
    let timeout = ms(300);
    let srv = start(ConnLimits {
        header_timeout: timeout,
        ..limits()
    })
    .await;
    // Silent.
    let start = Instant::now();
    let mut silent = connect(srv.addr).await;
    // Trickling a header line every 20 ms does not extend the deadline.
    let mut slow = connect(srv.addr).await;
    slow.write_all(b"GET /open HTTP/1.1\r\nhost: t\r\n")
        .await
        .unwrap();
    let (mut r, mut w) = slow.into_split();
    let trickle = tokio::spawn(async move {
        while w.write_all(b"x-slow: 1\r\n").await.is_ok() {
            tokio::time::sleep(ms(20)).await;
        }
    });
    closed(&mut silent).await;
    assert!(start.elapsed() >= timeout);
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(PATIENCE, r.read(&mut buf)).await;
    assert!(
        matches!(n, Ok(Ok(0)) | Ok(Err(_))),
        "the trickling client got {n:?}"
    );
    assert!(start.elapsed() >= timeout);
    trickle.await.unwrap();
    // A complete head in time is served (the timeout is not too eager).
    let mut ok = connect(srv.addr).await;
    assert_eq!(get_on(&mut ok, "/open", false).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_is_closed_after_the_idle_timeout() {
    let idle = ms(400);
    let srv = start(ConnLimits {
        idle_timeout: idle,
        ..limits()
    })
    .await;
    let mut s = connect(srv.addr).await;
    assert_eq!(get_on(&mut s, "/private", true).await.0, 200);
    // Kept alive: a second request on the same connection.
    assert_eq!(get_on(&mut s, "/open", false).await.0, 200);
    let served = Instant::now();
    closed(&mut s).await;
    assert!(served.elapsed() >= idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_the_limit_idle_connections_are_closed_sooner() {
    // 6 of 8 open is three quarters: idle ones get 200 ms instead of 30 s.
    let short = ms(200);
    let srv = start(ConnLimits {
        max_connections: 8,
        max_unauthenticated: 8,
        idle_timeout_near_limit: short,
        ..limits()
    })
    .await;
    let mut idle = Vec::new();
    let mut sent = Instant::now();
    for _ in 0..5 {
        let mut s = connect(srv.addr).await;
        sent = Instant::now();
        assert_eq!(get_on(&mut s, "/open", false).await.0, 200);
        idle.push(s);
    }
    // Five idle with 30 s to go; a sixth connection (waiting for its
    // first head, 30 s too) brings the server near its limit.
    let _sixth = connect(srv.addr).await;
    for s in &mut idle {
        closed(s).await;
    }
    assert!(sent.elapsed() >= short);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_body_fails_with_400_and_the_connection_closes() {
    let timeout = ms(300);
    let srv = start(ConnLimits {
        body_timeout: timeout,
        ..limits()
    })
    .await;
    let mut s = connect(srv.addr).await;
    s.write_all(
        format!(
            "POST /private/echo HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {KEY}\r\n\
             content-length: 100\r\n\r\n0123456789"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let sent = Instant::now();
    let (status, body, _) = read_response(&mut s).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("no body data"), "{body}");
    assert!(sent.elapsed() >= timeout);
    closed(&mut s).await;
    // A body that keeps coming is read whole.
    let mut s = connect(srv.addr).await;
    s.write_all(
        format!(
            "POST /private/echo HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {KEY}\r\n\
             content-length: 3\r\n\r\nabc"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(read_response(&mut s).await.1, "3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_over_the_limit_is_431() {
    let srv = start(limits()).await;
    let mut s = connect(srv.addr).await;
    let big = "a".repeat(16 * 1024);
    // The server may answer before it has read everything: a write error
    // is fine, the answer is what counts.
    let _ = s
        .write_all(format!("GET /open HTTP/1.1\r\nhost: t\r\nx-big: {big}\r\n\r\n").as_bytes())
        .await;
    assert_eq!(read_response(&mut s).await.0, 431);
    closed(&mut s).await;
    let mut s = connect(srv.addr).await;
    let many: String = (0..200).map(|i| format!("x-h{i}: v\r\n")).collect();
    let _ = s
        .write_all(format!("GET /open HTTP/1.1\r\nhost: t\r\n{many}\r\n").as_bytes())
        .await;
    assert_eq!(read_response(&mut s).await.0, 431);
    closed(&mut s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_disconnected_after_the_write_timeout() {
    let timeout = ms(300);
    let srv = start(ConnLimits {
        write_timeout: timeout,
        ..limits()
    })
    .await;
    let dropped = srv.controls.big_dropped.notified();
    let mut s = connect(srv.addr).await;
    s.write_all(
        format!("GET /private/big HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {KEY}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let sent = Instant::now();
    // 256 MiB never read: the socket buffers fill, the write stalls, the
    // server gives the response up.
    tokio::time::timeout(PATIENCE, dropped)
        .await
        .expect("the stalled response was not abandoned");
    assert!(sent.elapsed() >= timeout);
    closed(&mut s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_connections_cannot_take_the_whole_budget() {
    let srv = start(ConnLimits {
        max_connections: 20,
        max_unauthenticated: 10,
        ..limits()
    })
    .await;
    // 30 idle connections that never send a byte: each beyond the 10th
    // closes the oldest idle one.
    let mut idle = Vec::new();
    for _ in 0..30 {
        idle.push(connect(srv.addr).await);
    }
    // An authenticated client connects and is served at once.
    let start = Instant::now();
    let mut mine = connect(srv.addr).await;
    assert_eq!(get_on(&mut mine, "/private", true).await.0, 200);
    assert!(start.elapsed() < Duration::from_secs(1));
    // Admission is decided in accept order, so the 21 oldest are closed
    // and the 9 newest still served.
    for s in &mut idle[..21] {
        closed(s).await;
    }
    for s in &mut idle[21..] {
        assert_eq!(get_on(s, "/open", false).await.0, 200);
    }
    // The authenticated connection left the unauthenticated budget; the
    // ones that only sent unauthenticated requests are still in it.
    assert_eq!(srv.counts(), (9, 1));
    // Ten more idle ones close those nine and one newcomer, not it.
    for _ in 0..10 {
        idle.push(connect(srv.addr).await);
    }
    for s in &mut idle[21..30] {
        closed(s).await;
    }
    let mut sync = connect(srv.addr).await;
    assert_eq!(get_on(&mut sync, "/open", false).await.0, 200);
    assert_eq!(srv.counts(), (10, 1));
    assert_eq!(get_on(&mut mine, "/private", true).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_budget_in_use_closes_idle_authenticated_connections_last() {
    let srv = start(ConnLimits {
        max_connections: 4,
        max_unauthenticated: 2,
        ..limits()
    })
    .await;
    let mut authed = Vec::new();
    for _ in 0..3 {
        let mut s = connect(srv.addr).await;
        assert_eq!(get_on(&mut s, "/private", true).await.0, 200);
        authed.push(s);
    }
    let mut unauthed = connect(srv.addr).await;
    // 4 open: the next closes the idle unauthenticated one, not an
    // authenticated one.
    let mut next = connect(srv.addr).await;
    assert_eq!(get_on(&mut next, "/private", true).await.0, 200);
    closed(&mut unauthed).await;
    for s in &mut authed {
        assert!(is_open(s).await);
    }
    // 4 authenticated: the next closes the oldest idle authenticated one.
    let mut last = connect(srv.addr).await;
    assert_eq!(get_on(&mut last, "/private", true).await.0, 200);
    closed(&mut authed[0]).await;
    assert_eq!(get_on(&mut authed[1], "/private", true).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newcomer_is_refused_with_503_when_no_connection_is_idle() {
    let srv = start(ConnLimits {
        max_connections: 2,
        max_unauthenticated: 1,
        ..limits()
    })
    .await;
    // One unauthenticated connection in the middle of a request.
    let held = srv.controls.held.notified();
    let mut busy = connect(srv.addr).await;
    busy.write_all(b"GET /hold HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    held.await;
    // The newcomer is refused with the 503 (read before sending anything:
    // a request the server never reads would make its close a reset).
    let mut refused = connect(srv.addr).await;
    let (status, body, close) = read_response(&mut refused).await;
    assert_eq!((status, close), (503, true), "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error_code"], "CAPACITY_EXHAUSTED");
    closed(&mut refused).await;
    assert_eq!(srv.counts(), (1, 0));
    srv.controls.release.notify_one();
    assert_eq!(read_response(&mut busy).await.0, 200);
    // Idle again: a newcomer is admitted (evicting it).
    let mut s = connect(srv.addr).await;
    assert_eq!(get_on(&mut s, "/open", false).await.0, 200);
    closed(&mut busy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_idle_connections_and_waits_for_streams() {
    let srv = start(limits()).await;
    let mut idle = connect(srv.addr).await;
    assert_eq!(get_on(&mut idle, "/open", false).await.0, 200);
    let mut streaming = stream_in_flight(srv.addr).await;
    srv.shutdown.cancel();
    closed(&mut idle).await;
    // No new connection is served (one that raced the listener's close is
    // reset with it), the stream goes on.
    if let Ok(mut late) = TcpStream::connect(srv.addr).await {
        let _ = late
            .write_all(b"GET /open HTTP/1.1\r\nhost: t\r\n\r\n")
            .await;
        closed(&mut late).await;
    }
    assert!(!srv.handle.is_finished());
    srv.controls.release.notify_one();
    let mut rest = Vec::new();
    tokio::time::timeout(PATIENCE, streaming.read_to_end(&mut rest))
        .await
        .expect("the stream did not end")
        .unwrap();
    assert!(String::from_utf8_lossy(&rest).contains("last"));
    tokio::time::timeout(PATIENCE, srv.handle)
        .await
        .expect("serve did not return")
        .unwrap()
        .unwrap();
}

/// A connection whose `/private/stream` has sent its first chunk (the
/// stream is in flight).
async fn stream_in_flight(addr: SocketAddr) -> TcpStream {
    let mut streaming = connect(addr).await;
    streaming
        .write_all(
            format!(
                "GET /private/stream HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {KEY}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("first") {
        let n = streaming.read(&mut buf).await.unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    streaming
}

/// A request that never ends (a proxied server that never answers, a
/// stream its client keeps open) holds a shutdown for its grace, not for
/// good (session 15's attack: SIGTERM waited 40 s and more).
#[tokio::test]
async fn shutdown_waits_for_a_stream_only_for_its_grace() {
    let srv = start(ConnLimits {
        shutdown_grace: ms(300),
        ..limits()
    })
    .await;
    let _streaming = stream_in_flight(srv.addr).await;
    let t = Instant::now();
    srv.shutdown.cancel();
    tokio::time::timeout(PATIENCE, srv.handle)
        .await
        .expect("serve did not return after its grace")
        .unwrap()
        .unwrap();
    assert!(
        t.elapsed() >= ms(300),
        "returned before the grace: {:?}",
        t.elapsed()
    );
}

// ---------------------------------------------------------------------------
// Out of descriptors (a child process with a lowered limit)
// ---------------------------------------------------------------------------

const CHILD_ENV: &str = "SANDKASTEN_CONN_TEST_EMFILE_CHILD";
/// The child's descriptor limit.
const CHILD_NOFILE: u64 = 64;

/// Clock ticks of CPU time (user + system) `pid` has used.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_comm.split(' ').collect();
    // Fields 14 and 15 of stat; after the command, field 3 is index 0.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Whether `s` (blocking) is answered `status` for `GET path` within
/// `within`.
fn blocking_get(addr: SocketAddr, path: &str, within: Duration) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(within)).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n").as_bytes())
        .unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 "),
        "no answer within {within:?}: {text:?}"
    );
    text[9..12].parse().unwrap()
}

#[test]
fn accepting_out_of_descriptors_neither_spins_nor_starves_newcomers() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return emfile_child();
    }
    use std::io::BufRead;
    let exe = std::env::current_exe().unwrap();
    let mut child = std::process::Command::new(exe)
        .args([
            "conn::tests::accepting_out_of_descriptors_neither_spins_nor_starves_newcomers",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    /// Kills the child (ours, by its pid) if the test fails: an orphan
    /// would keep the test's output pipes open.
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let pid = child.id();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut child = Reap(child);
    let addr: SocketAddr = loop {
        let line = lines.next().expect("the child printed no address").unwrap();
        // libtest's "test NAME ... " may precede it on the same line.
        if let Some((_, a)) = line.split_once("listening ") {
            break a.trim().parse().unwrap();
        }
    };
    // Idle connections beyond the child's descriptors: it runs out, and
    // makes room by closing the oldest idle ones, so a newcomer is served.
    let mut idle: Vec<std::net::TcpStream> = (0..2 * CHILD_NOFILE)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    assert_eq!(blocking_get(addr, "/open", Duration::from_secs(1)), 200);
    idle.clear();
    // Busy connections beyond its descriptors: nothing to close, so it
    // waits for a close, without spinning.
    let mut busy = Vec::new();
    for _ in 0..2 * CHILD_NOFILE {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /hold HTTP/1.1\r\nhost: t\r\n\r\n")
            .unwrap();
        busy.push(s);
    }
    let deadline = std::time::Instant::now() + PATIENCE;
    while open_fds(pid) < CHILD_NOFILE as usize {
        assert!(
            std::time::Instant::now() < deadline,
            "the child never used all its descriptors ({} open)",
            open_fds(pid)
        );
        std::thread::sleep(ms(10));
    }
    // A measurement window, not a wait for an event: a spinning accept
    // loop would use about a second of CPU in it.
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(pid) - before;
    assert!(
        used <= 20,
        "the child used {used} ticks of CPU in a second at EMFILE"
    );
    // Descriptors come free: it accepts again.
    busy.clear();
    assert_eq!(blocking_get(addr, "/open", PATIENCE), 200);
    drop(child.0.stdin.take());
    let status = child.0.wait().unwrap();
    assert!(status.success(), "child: {status}");
}

/// The child: serve with a tiny descriptor limit and limits above it,
/// until stdin closes.
fn emfile_child() {
    use rustix::process::{setrlimit, Resource, Rlimit};
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(CHILD_NOFILE),
            maximum: Some(CHILD_NOFILE),
        },
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("listening {}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        std::thread::spawn(move || {
            use std::io::Read;
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            stop.cancel();
        });
        let controls = Arc::new(Controls::default());
        let limits = ConnLimits {
            max_connections: 1000,
            max_unauthenticated: 1000,
            ..limits()
        };
        let server = tokio::spawn(serve(
            listener,
            router(controls.clone()),
            shutdown.clone(),
            limits,
        ));
        shutdown.cancelled().await;
        // Held requests would keep serve waiting: release them all.
        controls.release.notify_waiters();
        server.await.unwrap().unwrap();
    });
}
