//! TCP ports inside a sandbox, reached by the daemon: the byte stream
//! [`Runtime::connect_port`](crate::Runtime::connect_port) answers, and the
//! two ways backends make one.
//!
//! - [`connect_in_netns`]: where the sandbox is a process tree of this host
//!   (native, docker on a local engine with runc), a short-lived thread
//!   enters the sandbox's network namespace through a pidfd of its proven
//!   init, makes the sockets there and exits; a socket stays in the
//!   namespace it was made in, so the daemon then connects it to the
//!   sandbox's own loopback like any socket of its own. No process inside
//!   is involved, and the sandbox's network mode does not matter (its
//!   loopback exists in every mode).
//! - [`open_via_agent`]: elsewhere (a remote engine, gVisor) the daemon
//!   opens a fresh connection to the sandbox's agent and asks it to become
//!   a byte pipe to the port (`Request::OpenPort`, protocol 3).
//!
//! Either way 127.0.0.1 is tried first, then ::1 (a server bound to
//! either loopback address or to a wildcard address is reached); a
//! refusal on both is [`RuntimeError::PortClosed`], at once.

use crate::RuntimeError;
use sandkasten_protocol::{self as proto, Body, Frame, Request, Response};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpSocket;

/// A byte stream to a TCP port inside a sandbox.
pub trait PortIo: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> PortIo for T {}

/// A connection to a TCP port inside a sandbox, whichever way it was made.
pub type PortStream = Box<dyn PortIo>;

/// How long a connect to a sandbox's port may take. On loopback a connect
/// is answered at once (accepted or refused) unless the listener's queue
/// is full; then the client gets an error after this, never a hang.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// An unconnected TCP socket of each family, made inside the network
/// namespace of the process behind `pidfd`. Enters that namespace on the
/// calling thread: call it only on a thread of its own that exits right
/// after (no daemon thread stays in a sandbox's namespace). The IPv6 one
/// is `None` where the namespace has no IPv6.
fn sockets_in_netns(pidfd: OwnedFd) -> io::Result<(OwnedFd, Option<OwnedFd>)> {
    // SAFETY: setns on a pidfd we own; it changes only this thread's
    // network namespace, and this thread exits when done.
    if unsafe { libc::setns(pidfd.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("entering the sandbox's network namespace: {e}"),
        ));
    }
    let socket = |family| -> io::Result<OwnedFd> {
        // SAFETY: socket(2) with constant arguments.
        let fd = unsafe {
            libc::socket(
                family,
                libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                0,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd we own.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    };
    Ok((socket(libc::AF_INET)?, socket(libc::AF_INET6).ok()))
}

/// Connects `socket` (non-blocking, made anywhere) to `addr` within
/// [`CONNECT_TIMEOUT`].
async fn connect_socket(socket: OwnedFd, addr: SocketAddr) -> io::Result<tokio::net::TcpStream> {
    let socket = TcpSocket::from_std_stream(std::net::TcpStream::from(socket));
    match tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(addr)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
        )),
    }
}

/// Connects to TCP `port` on the loopback of the network namespace of the
/// process behind the pidfd `prove` answers (a sandbox's init, proven by
/// the backend: it reads `/proc` and cgroup files, so it runs on the
/// thread, not on an async worker).
pub async fn connect_in_netns<P>(prove: P, port: u16) -> Result<tokio::net::TcpStream, RuntimeError>
where
    P: FnOnce() -> Result<OwnedFd, RuntimeError> + Send + 'static,
{
    // The proof and the namespace's sockets on a thread of its own (not
    // the blocking pool): it enters the namespace, so it must never run
    // anything else afterwards; it exits once the sockets are made.
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("sk-port".into())
        .spawn(move || {
            let made = prove().and_then(|pidfd| {
                sockets_in_netns(pidfd)
                    .map_err(RuntimeError::io_ctx("making a socket in the sandbox"))
            });
            let _ = tx.send(made);
        })
        .map_err(RuntimeError::io_ctx(
            "starting a thread for a port connection",
        ))?;
    let (v4, v6) = rx.await.map_err(|_| RuntimeError::Task {
        context: "making a socket in the sandbox",
        message: "the thread ended without an answer".into(),
    })??;
    let refused = match connect_socket(v4, SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await {
        Ok(s) => return ready(s),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => e,
        Err(e) => return Err(unreachable(port, e)),
    };
    if let Some(v6) = v6 {
        match connect_socket(v6, SocketAddr::from((Ipv6Addr::LOCALHOST, port))).await {
            Ok(s) => return ready(s),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
            // No ::1 in the namespace: the IPv4 refusal is the answer.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EADDRNOTAVAIL | libc::ENETUNREACH)
                ) => {}
            Err(e) => return Err(unreachable(port, e)),
        }
    }
    tracing::trace!(port, "port refused: {refused}");
    Err(RuntimeError::PortClosed(port))
}

fn ready(s: tokio::net::TcpStream) -> Result<tokio::net::TcpStream, RuntimeError> {
    // Requests and responses are small writes; do not wait to batch them.
    let _ = s.set_nodelay(true);
    Ok(s)
}

fn unreachable(port: u16, e: io::Error) -> RuntimeError {
    RuntimeError::io(format!("connecting to port {port} inside the sandbox"), e)
}

/// Turns `stream`, a fresh connection to a sandbox's agent of protocol 3
/// or later, into a pipe to TCP `port` inside the sandbox: sends
/// `OpenPort` as its first frame and reads the one answer. Nothing was
/// read past that answer (the agent sends nothing else before the port's
/// own bytes), so the stream is returned as it is.
pub async fn open_via_agent<S>(mut stream: S, port: u16) -> Result<S, RuntimeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let lost = |e: &dyn std::fmt::Display| RuntimeError::Agent(format!("opening port {port}: {e}"));
    let ping = proto::encode(&Frame {
        id: 1,
        body: Body::Request(Request::Ping),
    })
    .map_err(|e| lost(&e))?;
    let open = proto::encode(&Frame {
        id: 2,
        body: Body::Request(Request::OpenPort { port }),
    })
    .map_err(|e| lost(&e))?;
    // A ping first: an agent older than protocol 3 would close the
    // connection on a frame it cannot decode (harmless on a connection of
    // its own, but the client deserves the reason).
    stream.write_all(&ping).await.map_err(|e| lost(&e))?;
    stream.flush().await.map_err(|e| lost(&e))?;
    match read_response(&mut stream).await.map_err(|e| lost(&e))? {
        Response::Pong {
            protocol_version, ..
        } if protocol_version >= proto::PORTS_SINCE => {}
        Response::Pong {
            protocol_version, ..
        } => {
            return Err(RuntimeError::Unsupported(
                format!(
                    "reaching ports through an agent of protocol {protocol_version} \
                     (this sandbox predates it; recreate it)"
                ),
                "agent",
            ))
        }
        other => return Err(lost(&format!("unexpected reply {other:?}"))),
    }
    stream.write_all(&open).await.map_err(|e| lost(&e))?;
    stream.flush().await.map_err(|e| lost(&e))?;
    match read_response(&mut stream).await.map_err(|e| lost(&e))? {
        Response::Ok => Ok(stream),
        Response::Error {
            kind: proto::ErrorKind::NotFound,
            ..
        } => Err(RuntimeError::PortClosed(port)),
        Response::Error { message, .. } => Err(RuntimeError::io(
            format!("connecting to port {port} inside the sandbox"),
            io::Error::other(message),
        )),
        other => Err(lost(&format!("unexpected reply {other:?}"))),
    }
}

/// Reads exactly one response frame (no read-ahead).
async fn read_response<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Response, String> {
    let mut prefix = [0u8; 4];
    stream
        .read_exact(&mut prefix)
        .await
        .map_err(|e| format!("the agent closed the connection: {e}"))?;
    let n = proto::frame_len(prefix).map_err(|e| e.to_string())?;
    let mut payload = vec![0u8; n];
    stream
        .read_exact(&mut payload)
        .await
        .map_err(|e| e.to_string())?;
    match proto::decode(&payload).map_err(|e| e.to_string())?.body {
        Body::Response(r) => Ok(r),
        Body::Request(_) => Err("a request frame from the agent".into()),
    }
}
