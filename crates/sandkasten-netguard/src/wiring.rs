//! The DNS server, the SNI/Host proxy and the record of the datapath's
//! refusals (NFLOG) wired to a datapath's nftables table (both backends):
//! a sandbox is known by its address, an answered
//! address becomes a `dns4`/`dns6` element (`<sandbox key> . addr`) with
//! the record's TTL as its timeout, and a sandbox whose policy names hosts
//! is in the `proxied` set (its ports 80 and 443 go to the proxy). The
//! datapath says how its sandboxes are keyed ([`crate::nft::Key`]) and
//! sends the messages ([`NftSink`]).

use crate::netlink::Msg;
use crate::{
    nft, Conntrack, DnsConfig, DnsServer, EventLog, NotOpened, Proxy, Resolved, Sandboxes,
};
use sandkasten_runtime::{IpNet, NetEntry, NetworkPolicy};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where the guard's nftables messages go: the datapath's own nfnetlink
/// socket (one batch, acknowledged before this returns).
pub trait NftSink: Send + Sync + 'static {
    fn send(&self, msgs: Vec<Msg>) -> io::Result<()>;
}

/// The guard of one daemon's sandbox network.
pub struct Guard {
    pub ports: nft::GuardPorts,
    pub view: Arc<View>,
    pub events: Arc<EventLog>,
    pub resolved: Arc<Resolved>,
}

impl Guard {
    /// What sandbox `id`'s policy refused, oldest first (none without a
    /// guard).
    pub fn events_of(guard: Option<&Guard>, id: &str) -> Vec<sandkasten_runtime::NetworkDenial> {
        guard.map(|g| g.events.list(id)).unwrap_or_default()
    }

    /// Refusals recorded since start (none without a guard).
    pub fn denials_of(guard: Option<&Guard>) -> u64 {
        guard.map_or(0, |g| g.events.total())
    }
}

/// Which sandbox an address is and what its policy is, for the servers.
pub struct View {
    sink: Arc<dyn NftSink>,
    table: String,
    known: Mutex<Known>,
    resolved: Arc<Resolved>,
}

#[derive(Default)]
struct Known {
    by_addr: HashMap<IpAddr, String>,
    policies: HashMap<String, Arc<NetworkPolicy>>,
    keys: HashMap<String, nft::SandboxKey>,
}

impl View {
    /// Notes sandbox `id` at `addrs`, keyed `key` in the table's sets,
    /// with `policy`.
    pub fn set(&self, id: &str, addrs: &[IpAddr], key: &nft::SandboxKey, policy: &NetworkPolicy) {
        let mut k = self.known.lock().unwrap_or_else(|p| p.into_inner());
        k.by_addr.retain(|_, v| v != id);
        for a in addrs {
            k.by_addr.insert(*a, id.to_string());
        }
        k.policies.insert(id.to_string(), Arc::new(policy.clone()));
        k.keys.insert(id.to_string(), key.clone());
    }

    /// Forgets sandbox `id`.
    pub fn forget(&self, id: &str) {
        let mut k = self.known.lock().unwrap_or_else(|p| p.into_inner());
        k.by_addr.retain(|_, v| v != id);
        k.policies.remove(id);
        k.keys.remove(id);
    }
}

impl Sandboxes for View {
    fn lookup(&self, src: IpAddr) -> Option<(String, Arc<NetworkPolicy>)> {
        let src = match src {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(src),
            v4 => v4,
        };
        let k = self.known.lock().unwrap_or_else(|p| p.into_inner());
        let id = k.by_addr.get(&src)?;
        Some((id.clone(), k.policies.get(id)?.clone()))
    }

    fn allow(
        &self,
        id: &str,
        addr: IpAddr,
        ttl: Duration,
        under: &Arc<NetworkPolicy>,
    ) -> Result<(), NotOpened> {
        // Checked before and after the element goes in, the send outside
        // the lock (the sink takes the datapath's lock, which a policy
        // change holds while it takes this one). A change sets its policy
        // here before it deletes what `Resolved` lists: an opening noted
        // in `Resolved` under the policy it was checked against is
        // deleted by the change; one that finds the policy changed
        // deletes its element itself.
        let current = |k: &Known| {
            k.policies
                .get(id)
                .filter(|p| Arc::ptr_eq(p, under))
                .and_then(|_| k.keys.get(id).cloned())
        };
        let key = current(&self.known.lock().unwrap_or_else(|p| p.into_inner()))
            .ok_or(NotOpened::Stale)?;
        // An address of a family the sandbox has no link for opens nothing.
        let Some(add) = nft::dns_element(&self.table, &key, &addr, ttl.as_millis() as u64) else {
            return Ok(());
        };
        self.sink
            .send(vec![add])
            .map_err(|e| NotOpened::Failed(e.to_string()))?;
        let k = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if current(&k).is_some() {
            self.resolved.open(id, addr, ttl);
            return Ok(());
        }
        drop(k);
        if let Some(del) = nft::dns_element_delete(&self.table, &key, &addr) {
            if let Err(e) = self.sink.send(vec![del]) {
                tracing::warn!(session = id, %addr, "closing an address a policy change made stale: {e}");
            }
        }
        Err(NotOpened::Stale)
    }
}

/// Whether a policy names hosts (so its HTTP(S) goes through the proxy).
pub fn names_hosts(p: &NetworkPolicy) -> bool {
    p.allow_out
        .iter()
        .chain(&p.deny_out)
        .any(|e| !matches!(e, NetEntry::Net(_)))
}

/// Binds the DNS server (UDP and TCP) and the proxy on the sandboxes'
/// gateway address `gateway` (where the table's redirects send them; it
/// may exist only once a sandbox has a link: IP_FREEBIND), the proxy also
/// on `[::]` where `ipv6`, and starts them on the current tokio runtime.
pub fn start(
    upstream: SocketAddr,
    deny_always: Vec<IpNet>,
    sink: Arc<dyn NftSink>,
    table: &str,
    gateway: Ipv4Addr,
    ipv6: bool,
) -> io::Result<Guard> {
    let rt = tokio::runtime::Handle::try_current()
        .map_err(|_| io::Error::other("no async runtime for the DNS server"))?;
    let _enter = rt.enter();
    let udp = bind(gateway, libc::SOCK_DGRAM, 0)?;
    let dns_port = local_port(&udp)?;
    let tcp = bind(gateway, libc::SOCK_STREAM, dns_port)?;
    let proxy_sock = bind(gateway, libc::SOCK_STREAM, 0)?;
    let proxy_port = local_port(&proxy_sock)?;
    // IPv6 connections are redirected to the link's own address
    // (fe80::1 on every veth): one socket on every IPv6 address, v6 only.
    let proxy6 = if ipv6 {
        Some(bind6_stream(proxy_port))
    } else {
        None
    };
    let udp = tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(udp))?;
    let tcp = listen(tcp)?;
    let proxy_l = listen(proxy_sock)?;
    let resolved = Arc::new(Resolved::default());
    let view = Arc::new(View {
        sink,
        table: table.to_string(),
        known: Mutex::new(Known::default()),
        resolved: resolved.clone(),
    });
    let events = Arc::new(EventLog::default());
    let dns = DnsServer::new(
        DnsConfig {
            upstream,
            deny_always: deny_always.clone(),
        },
        view.clone(),
        events.clone(),
    );
    let proxy = Proxy::new(
        deny_always,
        view.clone(),
        resolved.clone(),
        events.clone(),
        Box::new(Conntrack),
    );
    // The datapath's refusals: the table logs them to this group. A
    // kernel without NFLOG still refuses them, unrecorded.
    let nflog = match crate::nflog::Group::bind(first_log_group(table)) {
        Ok(g) => Some(g),
        Err(e) => {
            tracing::warn!("the datapath's refusals are not recorded: no NFLOG group ({e})");
            None
        }
    };
    let log_group = nflog.as_ref().map(crate::nflog::Group::number);
    let log = |what: &'static str| {
        move |r: io::Result<()>| {
            if let Err(e) = r {
                tracing::error!("the sandboxes' {what} stopped: {e}");
            }
        }
    };
    let dns_tcp = dns.clone();
    rt.spawn(async move { log("DNS server (UDP)")(dns.serve_udp(udp).await) });
    rt.spawn(async move { log("DNS server (TCP)")(dns_tcp.serve_tcp(tcp).await) });
    match proxy6 {
        None => {}
        Some(Ok(l6)) => {
            let l6 = listen(l6)?;
            let p6 = proxy.clone();
            rt.spawn(async move { log("proxy (IPv6)")(p6.serve(l6).await) });
        }
        Some(Err(e)) => tracing::warn!(port = proxy_port, "no IPv6 proxy for sandboxes: {e}"),
    }
    rt.spawn(async move { log("proxy")(proxy.serve(proxy_l).await) });
    if let Some(nflog) = nflog {
        let (sandboxes, record) = (view.clone() as Arc<dyn Sandboxes>, events.clone());
        rt.spawn(async move { log("record of refusals")(nflog.record(sandboxes, record).await) });
    }
    Ok(Guard {
        ports: nft::GuardPorts {
            dns: dns_port,
            proxy: proxy_port,
            log_group,
        },
        view,
        events,
        resolved,
    })
}

/// The NFLOG group a daemon tries first: from its table's name (FNV-1a),
/// so that daemons on one host mostly start apart.
fn first_log_group(table: &str) -> u16 {
    let h = table.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    0x4000 + (h % 0x8000) as u16
}

/// A non-blocking socket of `kind` bound to the gateway address and
/// `port` (0: any), with IP_FREEBIND (the address may not exist yet).
fn bind(gateway: Ipv4Addr, kind: libc::c_int, port: u16) -> io::Result<OwnedFd> {
    // SAFETY: plain socket calls; the fd is owned at once.
    unsafe {
        let fd = libc::socket(
            libc::AF_INET,
            kind | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        );
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let one: libc::c_int = 1;
        for opt in [libc::IP_FREEBIND] {
            if libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                libc::SOL_IP,
                opt,
                (&raw const one).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            ) < 0
            {
                return Err(io::Error::last_os_error());
            }
        }
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(gateway).to_be(),
            },
            sin_zero: [0; 8],
        };
        if libc::bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            (&raw const sin).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        ) < 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(fd)
    }
}

/// The port a bound socket got (read through a duplicate of its fd).
/// A non-blocking IPv6-only stream socket bound to `[::]:port`.
fn bind6_stream(port: u16) -> io::Result<OwnedFd> {
    // SAFETY: plain socket calls; the fd is owned at once.
    unsafe {
        let fd = libc::socket(
            libc::AF_INET6,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        );
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let one: libc::c_int = 1;
        if libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            (&raw const one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) < 0
        {
            return Err(io::Error::last_os_error());
        }
        let mut sin6: libc::sockaddr_in6 = std::mem::zeroed();
        sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
        sin6.sin6_port = port.to_be();
        if libc::bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            (&raw const sin6).cast(),
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        ) < 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(fd)
    }
}

fn local_port(fd: &OwnedFd) -> io::Result<u16> {
    Ok(std::net::UdpSocket::from(fd.try_clone()?)
        .local_addr()?
        .port())
}

fn listen(fd: OwnedFd) -> io::Result<tokio::net::TcpListener> {
    // SAFETY: listen on an owned, bound stream socket.
    if unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&fd), 1024) } < 0 {
        return Err(io::Error::last_os_error());
    }
    tokio::net::TcpListener::from_std(std::net::TcpListener::from(fd))
}
