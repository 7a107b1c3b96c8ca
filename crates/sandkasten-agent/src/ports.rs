//! Port pipes: a daemon connection turned into a byte pipe to a TCP port
//! inside the sandbox (protocol 3, `OpenPort`). This is how the daemon
//! reaches a sandbox's ports where it cannot make a socket in the sandbox's
//! network namespace itself (a remote engine, gVisor): the agent connects
//! on the sandbox's own loopback, so a server bound to 127.0.0.1 inside is
//! reached whatever the sandbox's network mode.
//!
//! Two threads copy the two directions; each shuts down the write side of
//! its destination when its source ends, so a half-close travels through
//! (an HTTP client that ends its request body, a server that ends its
//! response). The pipe ends when both directions have.

use crate::server::{send, Writer};
use sandkasten_protocol::{ErrorKind, Response};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// How long a connect inside the sandbox may take (on loopback it is
/// immediate unless the listener's queue is full).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Buffer of each direction of a pipe.
const PIPE_BUFFER: usize = 64 * 1024;

/// Connects to `port` on 127.0.0.1, else ::1 (a server bound to either, or
/// to a wildcard address, is reached).
fn connect(port: u16) -> io::Result<TcpStream> {
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    match TcpStream::connect_timeout(&v4, CONNECT_TIMEOUT) {
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
            TcpStream::connect_timeout(&v6, CONNECT_TIMEOUT).map_err(|e6| {
                // No IPv6 on loopback is the same answer as a refusal.
                if matches!(
                    e6.raw_os_error(),
                    Some(libc::EADDRNOTAVAIL | libc::ENETUNREACH | libc::EAFNOSUPPORT)
                ) {
                    e
                } else {
                    e6
                }
            })
        }
        r => r,
    }
}

/// Answers `OpenPort` (request `id`) on `stream` and, once connected,
/// copies bytes both ways until both directions end. `buffered` is what
/// the connection's reader had already read past the request frame.
pub(crate) fn serve_pipe(
    stream: UnixStream,
    writer: &Writer,
    id: u64,
    port: u16,
    buffered: Vec<u8>,
) {
    let tcp = match connect(port) {
        Ok(t) => t,
        Err(e) => {
            let kind = if e.kind() == io::ErrorKind::ConnectionRefused {
                ErrorKind::NotFound
            } else {
                ErrorKind::Io
            };
            send(
                writer,
                id,
                Response::Error {
                    kind,
                    message: format!("connecting to port {port} inside the sandbox: {e}"),
                },
            );
            return;
        }
    };
    let _ = tcp.set_nodelay(true);
    send(writer, id, Response::Ok);
    let (Ok(tcp2), Ok(stream2)) = (tcp.try_clone(), stream.try_clone()) else {
        return;
    };
    let upstream = std::thread::Builder::new()
        .name("port-up".into())
        .spawn(move || {
            let mut tcp = tcp2;
            if tcp.write_all(&buffered).is_ok() {
                copy(&mut &stream2, &mut tcp);
            }
            let _ = tcp.shutdown(Shutdown::Write);
        });
    // Downstream on this thread: from the port to the daemon.
    copy(&mut &tcp, &mut &stream);
    let _ = stream.shutdown(Shutdown::Write);
    match upstream {
        Ok(t) => {
            let _ = t.join();
        }
        // No thread for the other direction (pids limit): nothing can be
        // sent to the port, so end the pipe.
        Err(_) => {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

/// Copies until `from` ends or either side fails.
fn copy(from: &mut impl Read, to: &mut impl Write) {
    let mut buf = vec![0u8; PIPE_BUFFER];
    loop {
        match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}
