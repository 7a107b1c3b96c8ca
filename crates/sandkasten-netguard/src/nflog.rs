//! The record of what the kernel datapath refused. The table's refusing
//! chains (`nft::Refusal`) log each refused packet of a sandbox, its first
//! [`SNAPLEN`] bytes with the reason as prefix, to one NFLOG group of this
//! daemon, rate-limited in the kernel (`nft::LOG_RATE`); one task reads the
//! group over netlink, maps the packet's source address to its sandbox
//! (the same [`Sandboxes`] the DNS server asks) and records the denial in
//! the [`EventLog`] (time, `address:port`, reason). No process per
//! sandbox, no polling: the task sleeps until the socket is readable.
//!
//! Bounded: the kernel queues at most the socket's receive buffer
//! (overflow drops messages, which the reader notes and goes on from), and
//! the log keeps the latest denials per sandbox.

use crate::netlink::{self, Msg, Socket, NETLINK_NETFILTER};
use crate::nft::Refusal;
use crate::{Denial, EventLog, Sandboxes};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::SystemTime;
use tokio::io::unix::AsyncFd;

/// Bytes of each refused packet copied to the daemon: an IPv6 header and
/// the ports after it.
pub const SNAPLEN: u32 = 64;

const NFNL_SUBSYS_ULOG: u16 = 4;
const NFULNL_MSG_PACKET: u16 = 0;
const NFULNL_MSG_CONFIG: u16 = 1;
const NFULA_CFG_CMD: u16 = 1;
const NFULA_CFG_MODE: u16 = 2;
const NFULA_CFG_QTHRESH: u16 = 5;
const NFULNL_CFG_CMD_BIND: u8 = 1;
const NFULNL_COPY_PACKET: u8 = 2;
const NFULA_PAYLOAD: u16 = 9;
const NFULA_PREFIX: u16 = 10;

/// Groups tried from a daemon's first choice on: another daemon on the
/// host may hold one.
const GROUP_TRIES: u16 = 64;

/// A netlink socket bound to an NFLOG group, copying packets.
pub struct Group {
    fd: OwnedFd,
    group: u16,
}

impl Group {
    /// Binds the first free group from `first` on (`first` derived from
    /// the daemon's tag, so daemons on one host start apart).
    pub fn bind(first: u16) -> io::Result<Group> {
        let mut last = None;
        for i in 0..GROUP_TRIES {
            // Group 0 is the kernel's default for `log` without a group.
            let group = first.wrapping_add(i).max(1);
            let mut sock = Socket::open(NETLINK_NETFILTER)?;
            match sock.transact(config(group)) {
                Ok(()) => {
                    let fd = sock.into_fd();
                    set_nonblocking(&fd)?;
                    return Ok(Group { fd, group });
                }
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no NFLOG group free")))
    }

    pub fn number(&self) -> u16 {
        self.group
    }

    /// Reads the group until the socket fails, recording every refused
    /// packet of a known sandbox in `events`.
    pub async fn record(
        self,
        sandboxes: Arc<dyn Sandboxes>,
        events: Arc<EventLog>,
    ) -> io::Result<()> {
        // SAFETY: the fd is owned here and lives as long as the AsyncFd
        // (it is closed only when the AsyncFd drops, deregistered first).
        let fd = unsafe { AsyncFd::register_with_interest(self.fd, tokio::io::Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let mut ready = fd.readable().await?;
            let n = match ready.try_io(|fd| netlink::recv(fd.get_ref(), &mut buf)) {
                Ok(Ok(n)) => n,
                // The queue overflowed (a flood beyond the socket's
                // buffer): those records are lost, the next ones come.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    tracing::debug!("NFLOG: records dropped (receive buffer full)");
                    continue;
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            };
            for (hdr, payload) in netlink::messages(&buf[..n]) {
                if hdr.kind != (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET || payload.len() < 4 {
                    continue;
                }
                let Some(refused) = parse(&payload[4..]) else {
                    continue;
                };
                let Some((id, _)) = sandboxes.lookup(refused.src) else {
                    continue;
                };
                events.record(
                    &id,
                    Denial {
                        at: SystemTime::now(),
                        destination: refused.destination(),
                        name: None,
                        reason: refused.why.reason().to_string(),
                    },
                );
            }
        }
    }
}

/// The configuration of `group`: bind it, copy [`SNAPLEN`] bytes of each
/// packet, send each at once (a queue threshold of one).
fn config(group: u16) -> Vec<Msg> {
    let header = |what| {
        let mut m = Msg::new((NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG, 0, what);
        // nfgenmsg: family unspecified, version 0, the group (be16).
        let g = group.to_be_bytes();
        m = m.raw(&[0, 0, g[0], g[1]]);
        m
    };
    let mut bind = header("binding an NFLOG group");
    bind.attr(NFULA_CFG_CMD, &[NFULNL_CFG_CMD_BIND]);
    let mut mode = header("configuring the NFLOG group");
    let mut copy = SNAPLEN.to_be_bytes().to_vec();
    copy.extend([NFULNL_COPY_PACKET, 0]);
    mode.attr(NFULA_CFG_MODE, &copy);
    mode.u32_be(NFULA_CFG_QTHRESH, 1);
    vec![bind, mode]
}

/// A refused packet: where from, where to, why.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Refused {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// The destination port (TCP, UDP, SCTP, UDP-Lite).
    pub port: Option<u16>,
    pub why: Refusal,
}

impl Refused {
    /// `address:port` (`[v6]:port`), or the address alone.
    fn destination(&self) -> String {
        match (self.dst, self.port) {
            (IpAddr::V4(a), Some(p)) => format!("{a}:{p}"),
            (IpAddr::V6(a), Some(p)) => format!("[{a}]:{p}"),
            (a, None) => a.to_string(),
        }
    }
}

/// The packet of an NFLOG message's attributes, if it carries one of our
/// prefixes.
pub(crate) fn parse(attrs: &[u8]) -> Option<Refused> {
    let attrs = netlink::attrs(attrs);
    let prefix = netlink::find_str(&attrs, NFULA_PREFIX)?;
    let why = Refusal::from_prefix(&prefix)?;
    let p = netlink::find(&attrs, NFULA_PAYLOAD)?;
    let (src, dst, proto, l4) = match p.first()? >> 4 {
        4 => {
            let ihl = usize::from(p.first()? & 0x0f) * 4;
            let a = |o: usize| -> Option<IpAddr> {
                let b: [u8; 4] = p.get(o..o + 4)?.try_into().ok()?;
                Some(IpAddr::V4(Ipv4Addr::from(b)))
            };
            (a(12)?, a(16)?, *p.get(9)?, p.get(ihl..))
        }
        6 => {
            let a = |o: usize| -> Option<IpAddr> {
                let b: [u8; 16] = p.get(o..o + 16)?.try_into().ok()?;
                Some(IpAddr::V6(Ipv6Addr::from(b)))
            };
            (a(8)?, a(24)?, *p.get(6)?, p.get(40..))
        }
        _ => return None,
    };
    let has_ports = matches!(
        i32::from(proto),
        libc::IPPROTO_TCP | libc::IPPROTO_UDP | libc::IPPROTO_SCTP | libc::IPPROTO_UDPLITE
    );
    let port = l4
        .filter(|_| has_ports)
        .and_then(|l4| l4.get(2..4))
        .map(|b| u16::from_be_bytes([b[0], b[1]]));
    Some(Refused {
        src,
        dst,
        port,
        why,
    })
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fcntl on an fd we own.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nla(kind: u16, data: &[u8]) -> Vec<u8> {
        let mut out = ((4 + data.len()) as u16).to_ne_bytes().to_vec();
        out.extend(kind.to_ne_bytes());
        out.extend(data);
        out.resize((out.len() + 3) & !3, 0);
        out
    }

    #[test]
    fn a_refused_tcp_syn_becomes_its_source_destination_port_and_reason() {
        let mut ip = vec![0x45, 0, 0, 60, 0, 0, 0x40, 0, 64, 6, 0, 0];
        ip.extend([10, 0, 0, 2, 203, 0, 113, 7]);
        ip.extend([0xc3, 0x50, 0x1f, 0x90]); // ports 50000 -> 8080
        let mut attrs = nla(NFULA_PREFIX, b"sk:not_allowed\0");
        attrs.extend(nla(NFULA_PAYLOAD, &ip));
        let r = parse(&attrs).unwrap();
        assert_eq!(r.src, "10.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(r.destination(), "203.0.113.7:8080");
        assert_eq!(r.why, Refusal::NotAllowed);
    }

    #[test]
    fn ipv6_icmp_and_foreign_prefixes() {
        let mut ip = vec![0x60, 0, 0, 0, 0, 8, 58, 64];
        ip.extend("fd00::2".parse::<Ipv6Addr>().unwrap().octets());
        ip.extend("2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        ip.extend([128, 0, 0, 0]);
        let mut attrs = nla(NFULA_PREFIX, b"sk:always\0");
        attrs.extend(nla(NFULA_PAYLOAD, &ip));
        let r = parse(&attrs).unwrap();
        assert_eq!(
            (r.destination().as_str(), r.why),
            ("2001:db8::1", Refusal::Always)
        );
        // Another ruleset's log (not our prefix), a cut packet: nothing.
        let mut other = nla(NFULA_PREFIX, b"DROP: \0");
        other.extend(nla(NFULA_PAYLOAD, &ip));
        assert_eq!(parse(&other), None);
        let mut cut = nla(NFULA_PREFIX, b"sk:host\0");
        cut.extend(nla(NFULA_PAYLOAD, &ip[..20]));
        assert_eq!(parse(&cut), None);
    }

    #[test]
    fn every_refusal_is_named_by_its_prefix() {
        for r in Refusal::ALL {
            assert_eq!(Refusal::from_prefix(r.prefix()), Some(r));
            assert!(r.prefix().len() < 64, "NFLOG prefixes are cut at 64 bytes");
        }
    }
}
