//! The proxy for ports 80 and 443: the datapath redirects a sandbox's
//! connections to those ports here (nftables `redirect`), and the proxy
//! lets one through only if the name it carries (TLS SNI, HTTP `Host`) is
//! one the policy allows, so an address shared by many names (a CDN) does
//! not open every name behind it. A connection let through is joined to
//! its original destination byte for byte; a refused one is reset at once
//! and recorded.

use crate::events::{Denial, EventLog};
use crate::policy::{addr_verdict, name_verdict, names};
use crate::resolved::Resolved;
use crate::Sandboxes;
use sandkasten_runtime::{IpNet, NetEntry, NetworkMode, NetworkPolicy};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How much of a connection's start is read to find its name.
const HEAD_MAX: usize = 16 * 1024;
/// How long a client has to send that start.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the destination has to accept.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a redirected connection was going, and whether that is the host.
pub trait OriginalDestination: Send + Sync + 'static {
    fn original_destination(&self, conn: &TcpStream) -> io::Result<SocketAddr>;
    /// Whether `ip` is one of the host's own addresses.
    fn is_host(&self, ip: IpAddr) -> bool;
}

/// The kernel's record of a redirected connection (`SO_ORIGINAL_DST`) and
/// the host's addresses.
pub struct Conntrack;

impl OriginalDestination for Conntrack {
    fn original_destination(&self, conn: &TcpStream) -> io::Result<SocketAddr> {
        original_dst(conn)
    }
    fn is_host(&self, ip: IpAddr) -> bool {
        is_local(ip)
    }
}

pub struct Proxy {
    deny_always: Vec<IpNet>,
    sandboxes: Arc<dyn Sandboxes>,
    resolved: Arc<Resolved>,
    events: Arc<EventLog>,
    dst: Box<dyn OriginalDestination>,
}

impl Proxy {
    pub fn new(
        deny_always: Vec<IpNet>,
        sandboxes: Arc<dyn Sandboxes>,
        resolved: Arc<Resolved>,
        events: Arc<EventLog>,
        dst: Box<dyn OriginalDestination>,
    ) -> Arc<Proxy> {
        Arc::new(Proxy {
            deny_always,
            sandboxes,
            resolved,
            events,
            dst,
        })
    }

    /// Serves redirected connections on `listener`, one task each.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> io::Result<()> {
        loop {
            let (conn, from) = match listener.accept().await {
                Ok(c) => c,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(e),
            };
            let me = self.clone();
            tokio::spawn(async move { me.handle(conn, from.ip()).await });
        }
    }

    async fn handle(&self, mut conn: TcpStream, from: IpAddr) {
        let Some((id, policy)) = self.sandboxes.lookup(from) else {
            return reset(conn);
        };
        let dst = match self.dst.original_destination(&conn) {
            Ok(d) => d,
            Err(_) => return reset(conn),
        };
        let mut head = Vec::with_capacity(2048);
        let name = match tokio::time::timeout(HEAD_TIMEOUT, read_name(&mut conn, &mut head)).await {
            Ok(Ok(n)) => n,
            // Closed or silent before naming anything.
            _ => return reset(conn),
        };
        if let Err(reason) = self.verdict(&id, &policy, dst.ip(), name.as_deref()) {
            self.events.record(
                &id,
                Denial {
                    at: SystemTime::now(),
                    destination: dst.to_string(),
                    name,
                    reason: reason.to_string(),
                },
            );
            return reset(conn);
        }
        let mut up = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(dst)).await {
            Ok(Ok(u)) => u,
            _ => return reset(conn),
        };
        let _ = up.set_nodelay(true);
        let _ = conn.set_nodelay(true);
        if up.write_all(&head).await.is_err() {
            return reset(conn);
        }
        let _ = tokio::io::copy_bidirectional(&mut conn, &mut up).await;
    }

    /// Whether a connection to `ip` naming `name` may go through: never
    /// to a denied address or a denied name; with an empty `allow_out` to
    /// anything else; to an address `allow_out` lists whatever it names;
    /// else only naming an allowed name, at an address resolved for the
    /// sandbox.
    fn verdict(
        &self,
        id: &str,
        policy: &NetworkPolicy,
        ip: IpAddr,
        name: Option<&str>,
    ) -> Result<(), &'static str> {
        if policy.mode == NetworkMode::None {
            return Err("the sandbox has no network");
        }
        addr_verdict(policy, &self.deny_always, ip)?;
        // The proxy connects from the host: a redirected connection skips
        // the datapath's refusal of the host itself, so it is made here.
        if self.dst.is_host(ip) {
            return Err("the destination is the host itself");
        }
        // An address in the Host header or SNI names nothing.
        let name = name.filter(|n| n.parse::<IpAddr>().is_err());
        if let Some(n) = name {
            if policy.deny_out.iter().any(|e| names(e, n)) {
                return Err("denied by deny_out");
            }
        }
        if policy.allow_out.is_empty()
            || policy
                .allow_out
                .iter()
                .filter_map(NetEntry::net)
                .any(|n| n.contains(ip))
        {
            return Ok(());
        }
        let Some(n) = name else {
            return Err("no host name (TLS SNI or HTTP Host) to check against allow_out");
        };
        name_verdict(policy, n)?;
        if self.resolved.is_open(id, ip) {
            Ok(())
        } else {
            Err("the address was not resolved for the sandbox")
        }
    }
}

/// Reads the start of a connection into `head` until it names a host:
/// the SNI of a TLS ClientHello, or the `Host` of an HTTP request.
/// `None`: it names none (a ClientHello without SNI, or not HTTP).
async fn read_name(conn: &mut TcpStream, head: &mut Vec<u8>) -> io::Result<Option<String>> {
    let mut buf = [0u8; 4096];
    loop {
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&buf[..n]);
        match parse_name(head) {
            Parse::Name(s) => return Ok(Some(s)),
            Parse::NoName => return Ok(None),
            Parse::More if head.len() >= HEAD_MAX => return Ok(None),
            Parse::More => {}
        }
    }
}

#[derive(Debug, PartialEq)]
enum Parse {
    Name(String),
    NoName,
    More,
}

fn parse_name(head: &[u8]) -> Parse {
    if head.first() == Some(&0x16) {
        return parse_sni(head);
    }
    parse_host(head)
}

/// The SNI of a TLS ClientHello (in its first record).
fn parse_sni(b: &[u8]) -> Parse {
    if b.len() < 5 {
        return Parse::More;
    }
    let rec_len = u16::from_be_bytes([b[3], b[4]]) as usize;
    if b.len() < 5 + rec_len {
        return Parse::More;
    }
    let hs = &b[5..5 + rec_len];
    sni_of_client_hello(hs).map_or(Parse::NoName, Parse::Name)
}

fn sni_of_client_hello(hs: &[u8]) -> Option<String> {
    let mut r = Reader(hs);
    if r.u8()? != 1 {
        return None; // not a ClientHello
    }
    let len = r.u24()?;
    let mut r = Reader(r.take(len)?);
    r.take(2 + 32)?; // version, random
    let sid = r.u8()? as usize;
    r.take(sid)?;
    let cs = r.u16()? as usize;
    r.take(cs)?;
    let comp = r.u8()? as usize;
    r.take(comp)?;
    let ext_len = r.u16()? as usize;
    let mut exts = Reader(r.take(ext_len)?);
    while !exts.0.is_empty() {
        let ty = exts.u16()?;
        let len = exts.u16()? as usize;
        let data = exts.take(len)?;
        if ty != 0 {
            continue;
        }
        let mut list = Reader(data);
        let list_len = list.u16()? as usize;
        let mut names = Reader(list.take(list_len)?);
        while !names.0.is_empty() {
            let kind = names.u8()?;
            let n = names.u16()? as usize;
            let name = names.take(n)?;
            if kind == 0 {
                let s = std::str::from_utf8(name).ok()?;
                return Some(s.trim_end_matches('.').to_ascii_lowercase());
            }
        }
    }
    None
}

/// The `Host` of an HTTP/1 request head (without its port).
fn parse_host(b: &[u8]) -> Parse {
    let Some(end) = b.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Parse::More;
    };
    let Ok(head) = std::str::from_utf8(&b[..end]) else {
        return Parse::NoName;
    };
    let mut lines = head.split("\r\n");
    let request = lines.next().unwrap_or("");
    if !request.ends_with("HTTP/1.1") && !request.ends_with("HTTP/1.0") {
        return Parse::NoName;
    }
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            if k.trim().eq_ignore_ascii_case("host") {
                let v = v.trim();
                let host = if let Some(rest) = v.strip_prefix('[') {
                    rest.split(']').next().unwrap_or("")
                } else {
                    v.rsplit_once(':')
                        .filter(|(_, p)| p.bytes().all(|c| c.is_ascii_digit()))
                        .map_or(v, |(h, _)| h)
                };
                return Parse::Name(host.trim_end_matches('.').to_ascii_lowercase());
            }
        }
    }
    Parse::NoName
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| (b[0] as usize) << 16 | (b[1] as usize) << 8 | b[2] as usize)
    }
}

/// Whether `ip` is one of the host's own addresses: only those can be
/// bound to (no IP_FREEBIND, no transparency).
fn is_local(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// Ends a connection with a reset (linger 0), so the client sees a
/// refusal at once.
fn reset(conn: TcpStream) {
    // Deprecated for blocking the dropping thread while data drains; a
    // linger of zero drains nothing: it resets.
    #[allow(deprecated)]
    let _ = conn.set_linger(Some(Duration::ZERO));
    drop(conn);
}

/// `SO_ORIGINAL_DST` (IPv4) / `IP6T_SO_ORIGINAL_DST` (IPv6): the address
/// a redirected connection was made to.
fn original_dst(conn: &TcpStream) -> io::Result<SocketAddr> {
    use std::os::fd::AsRawFd;
    const SO_ORIGINAL_DST: libc::c_int = 80;
    let fd = conn.as_raw_fd();
    let local = conn.local_addr()?;
    // SAFETY: getsockopt into a sockaddr_storage of the right size.
    unsafe {
        let mut ss: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        let level = if local.is_ipv4() {
            libc::SOL_IP
        } else {
            libc::SOL_IPV6
        };
        if libc::getsockopt(fd, level, SO_ORIGINAL_DST, (&raw mut ss).cast(), &mut len) < 0 {
            return Err(io::Error::last_os_error());
        }
        match ss.ss_family as libc::c_int {
            libc::AF_INET => {
                let sin: libc::sockaddr_in = std::ptr::read((&raw const ss).cast());
                Ok(SocketAddr::from((
                    u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                    u16::from_be(sin.sin_port),
                )))
            }
            libc::AF_INET6 => {
                let sin6: libc::sockaddr_in6 = std::ptr::read((&raw const ss).cast());
                Ok(SocketAddr::from((
                    sin6.sin6_addr.s6_addr,
                    u16::from_be(sin6.sin6_port),
                )))
            }
            _ => Err(io::Error::other("no original destination")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello as a TLS client sends it, naming `sni` (or none).
    fn client_hello(sni: Option<&str>) -> Vec<u8> {
        let mut ext = Vec::new();
        if let Some(name) = sni {
            let mut list = vec![0u8];
            list.extend_from_slice(&(name.len() as u16).to_be_bytes());
            list.extend_from_slice(name.as_bytes());
            let mut data = (list.len() as u16).to_be_bytes().to_vec();
            data.extend_from_slice(&list);
            ext.extend_from_slice(&0u16.to_be_bytes());
            ext.extend_from_slice(&(data.len() as u16).to_be_bytes());
            ext.extend_from_slice(&data);
        }
        // supported_versions, so the SNI is not the only extension
        ext.extend_from_slice(&[0x00, 0x2b, 0x00, 0x03, 0x02, 0x03, 0x04]);
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[7u8; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0x00, 0x02, 0x13, 0x01]); // one cipher suite
        body.extend_from_slice(&[0x01, 0x00]); // null compression
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut hs = vec![1u8];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        let mut rec = vec![0x16, 0x03, 0x01];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn the_hosts_own_addresses_are_known() {
        assert!(is_local("127.0.0.1".parse().unwrap()));
        assert!(is_local("::1".parse().unwrap()));
        assert!(!is_local("203.0.113.77".parse().unwrap()));
    }

    #[test]
    fn names_come_from_sni_and_host_headers() {
        let hello = client_hello(Some("Pypi.ORG"));
        assert_eq!(parse_name(&hello), Parse::Name("pypi.org".into()));
        assert_eq!(parse_name(&hello[..20]), Parse::More);
        assert_eq!(parse_name(&client_hello(None)), Parse::NoName);
        assert_eq!(
            parse_name(b"GET / HTTP/1.1\r\nUser-Agent: x\r\nhost: Example.test:8080\r\n\r\n"),
            Parse::Name("example.test".into())
        );
        assert_eq!(
            parse_name(b"GET / HTTP/1.1\r\nHost: [2001:db8::1]:80\r\n\r\n"),
            Parse::Name("2001:db8::1".into())
        );
        assert_eq!(
            parse_name(b"GET / HTTP/1.1\r\nHost: a.test\r\n"),
            Parse::More
        );
        assert_eq!(parse_name(b"SSH-2.0-OpenSSH\r\n\r\n"), Parse::NoName);
        assert_eq!(parse_name(b"GET / HTTP/1.1\r\n\r\n"), Parse::NoName);
    }
}
