//! Sandboxes' network, on both backends: a veth pair per sandbox with
//! network (routed point to point, no bridge) into the sandbox's network
//! namespace (a native sandbox's, or a Docker container's started with
//! the engine's `none`), the daemon's nftables table that enforces every
//! sandbox's policy, NAT to the uplink, IPv4 and IPv6. Everything goes
//! through netlink from this process (`rtnl.rs` here, `netlink.rs` and
//! `nft.rs` of this crate): no `ip`/`nft` subprocess, no userspace
//! process per sandbox. A freed address slot takes its connection
//! tracking entries with it (`ct.rs`). Design, layout and invariants:
//! docs/architecture.md, "Sandbox networks".

mod ct;
mod rtnl;

use crate::host;
use crate::netlink::{Socket, NETLINK_NETFILTER, NETLINK_ROUTE};
use crate::nft;
use crate::wiring::{self as guard, NftSink};
use sandkasten_runtime::{IpNet, NetEntry, NetworkDenial, NetworkPolicy, RuntimeError};
use std::collections::{BTreeSet, HashMap};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Prefix of every sandbox veth of any daemon ("sandkasten network").
const ANY_PREFIX: &str = "skn";
/// The sandboxes' gateway: the host end of every veth carries it.
const GATEWAY4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
const SANDBOX_LL6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2);
/// Name of the link inside every sandbox.
const INNER: &str = "eth0";
/// The file in a session dir that holds its address slot.
const SLOT_FILE: &str = "net-slot";

/// Where each sandbox's address slot is kept (for restarts).
#[derive(Debug, Clone)]
pub enum Slots {
    /// `<dir>/<id>/net-slot`, in the directory of each sandbox that the
    /// runtime makes and removes (native's session dirs).
    InSessionDirs(PathBuf),
    /// `<dir>/<id>`, a file per sandbox in a directory of the datapath's
    /// own, made at start (docker: a container's run dir is bound inside
    /// it, where its root could rewrite a slot).
    Files(PathBuf),
}

impl Slots {
    fn path(&self, id: &str) -> PathBuf {
        match self {
            Slots::InSessionDirs(d) => d.join(id).join(SLOT_FILE),
            Slots::Files(d) => d.join(id),
        }
    }

    /// The slots kept, by sandbox id.
    fn read(&self) -> Result<HashMap<String, u32>, RuntimeError> {
        let dir = match self {
            Slots::InSessionDirs(d) => d,
            Slots::Files(d) => {
                std::fs::create_dir_all(d)
                    .map_err(RuntimeError::io_ctx(format!("creating {}", d.display())))?;
                d
            }
        };
        let mut out = HashMap::new();
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            if let Ok(s) = std::fs::read_to_string(self.path(&id)) {
                if let Ok(n) = s.trim().parse() {
                    out.insert(id, n);
                }
            }
        }
        Ok(out)
    }
}

/// Settings of the datapath.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// The sandboxes' IPv4 network; `None`: derived from the data dir.
    pub ipv4_subnet: Option<IpNet>,
    /// The sandboxes' IPv6 network; `None`: derived from the data dir.
    pub ipv6_subnet: Option<IpNet>,
    /// Whether sandboxes get IPv6.
    pub ipv6: bool,
    /// `network.deny_always`: refused for every sandbox.
    pub deny_always: Vec<IpNet>,
    /// `network.dns_upstream`: where the daemon's DNS server forwards
    /// the names sandboxes may resolve; `None`: no DNS server (host names
    /// in policies then resolve nowhere).
    pub dns_upstream: Option<std::net::SocketAddr>,
}

/// The datapath of one daemon.
pub struct Network {
    /// Short tag of this daemon (claimed for its data dir, `host.rs`):
    /// names its table, veths and Docker rules, so daemons on one host do
    /// not collide.
    tag: String,
    /// The hold on the tag, for the daemon's life.
    _claim: host::TagClaim,
    prefix: String,
    table: String,
    v4: IpNet,
    v6: Option<IpNet>,
    slot_store: Slots,
    state: Arc<Mutex<State>>,
    guard: Option<guard::Guard>,
    /// `<data dir>/resolv.conf` naming the gateway, where the daemon
    /// answers DNS; bound over every sandbox's `/etc/resolv.conf`.
    resolv_conf: Option<PathBuf>,
}

/// The guard's messages go through the state's nfnetlink socket.
struct Sink(Arc<Mutex<State>>);

impl NftSink for Sink {
    fn send(&self, msgs: Vec<crate::netlink::Msg>) -> io::Result<()> {
        let mut st = self.0.lock().unwrap_or_else(|p| p.into_inner());
        st.nft.batch(msgs)
    }
}

struct State {
    rtnl: Socket,
    nft: Socket,
    /// Address slot of each sandbox with a link.
    slots: HashMap<String, u32>,
    used: BTreeSet<u32>,
    /// Set elements in force per sandbox.
    elements: HashMap<String, nft::Elements>,
    /// Sandboxes in the proxied set.
    proxied: BTreeSet<String>,
}

fn err(context: &str) -> impl FnOnce(io::Error) -> RuntimeError + '_ {
    move |e| RuntimeError::io(format!("network: {context}"), e)
}

impl Network {
    /// Prepares the host (forwarding), finds the slots of sandboxes that
    /// survived a restart, removes veths no sandbox owns, and builds the
    /// table anew (elements come back as the engine restores each
    /// session's policy).
    /// `slot_store` says where each sandbox's address slot is kept.
    pub fn start(
        cfg: &NetConfig,
        data_dir: &std::path::Path,
        slot_store: Slots,
    ) -> Result<Network, RuntimeError> {
        let mut rtnl = Socket::open(NETLINK_ROUTE).map_err(err("opening rtnetlink"))?;
        // A tag whose links are there (a daemon's that is not running)
        // is not taken; nor is one that cannot be checked.
        let (tag, claim) = host::claim_tag(data_dir, cfg.ipv4_subnet.is_none(), |prefix| {
            rtnl::links_with_prefix(&mut rtnl, prefix).map_or(true, |l| !l.is_empty())
        })
        .map_err(RuntimeError::HostNotReady)?;
        let v4 = cfg
            .ipv4_subnet
            .unwrap_or_else(|| host::default_ipv4_subnet(&tag));
        let v6 = cfg
            .ipv6
            .then(|| host::ipv6_subnet(cfg.ipv6_subnet, &tag))
            .transpose()
            .map_err(RuntimeError::HostNotReady)?;
        if v4.is_ipv4() && v4.prefix() > 24 || !v4.is_ipv4() {
            return Err(RuntimeError::HostNotReady(format!(
                "network.ipv4_subnet: {v4} must be an IPv4 network of at least /24"
            )));
        }
        host::enable_forwarding(v6.is_some())
            .map_err(|(path, e)| RuntimeError::io(format!("writing {path}"), e))?;
        let nft_sock = Socket::open(NETLINK_NETFILTER).map_err(err("opening nfnetlink"))?;
        let slots = slot_store.read()?;
        let prefix = format!("{ANY_PREFIX}{tag}");
        let owned: BTreeSet<String> = slots.keys().map(|id| ifname(&prefix, id)).collect();
        for link in rtnl::links_with_prefix(&mut rtnl, &prefix).map_err(err("listing links"))? {
            if !owned.contains(&link) {
                tracing::info!(%link, "removing a veth no sandbox owns");
                delete_link(&mut rtnl, &link)?;
            }
        }
        let table = table_name(&tag);
        let subnets: Vec<IpNet> = std::iter::once(v4).chain(v6).collect();
        let used = slots.values().copied().collect();
        let state = Arc::new(Mutex::new(State {
            rtnl,
            nft: nft_sock,
            slots,
            used,
            elements: HashMap::new(),
            proxied: BTreeSet::new(),
        }));
        let guard = match cfg.dns_upstream {
            Some(up) => {
                // The servers also refuse the sandboxes' own networks.
                let mut deny = cfg.deny_always.clone();
                deny.extend(subnets.iter().copied());
                Some(
                    guard::start(
                        up,
                        deny,
                        Arc::new(Sink(state.clone())),
                        &table,
                        GATEWAY4,
                        v6.is_some(),
                    )
                    .map_err(err("starting the sandboxes' DNS server"))?,
                )
            }
            None => None,
        };
        let mut batch = nft::table(&nft::Layout {
            table: &table,
            prefix: &prefix,
            any_prefix: ANY_PREFIX,
            subnets: &subnets,
            deny_always: &cfg.deny_always,
            guard: guard.as_ref().map(|g| g.ports),
        });
        {
            let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
            batch.extend(
                nft::docker_cleanup(&mut st.nft, &tag).map_err(err("reading DOCKER-USER"))?,
            );
            batch.extend(
                nft::docker_accept(&mut st.nft, &tag, &prefix)
                    .map_err(err("reading DOCKER-USER"))?,
            );
            st.nft
                .batch(batch)
                .map_err(err("building the nftables table"))?;
        }
        let resolv_conf = match &guard {
            Some(_) => {
                let p = data_dir.join("resolv.conf");
                std::fs::write(
                    &p,
                    format!("nameserver {GATEWAY4}\noptions timeout:2 attempts:2\n"),
                )
                .map_err(RuntimeError::io_ctx(format!("writing {}", p.display())))?;
                Some(p)
            }
            None => None,
        };
        tracing::info!(%table, ipv4 = %v4, ipv6 = ?v6.map(|n| n.to_string()),
            dns = ?guard.as_ref().map(|g| g.ports.dns), "sandbox network ready");
        Ok(Network {
            tag,
            _claim: claim,
            prefix,
            table,
            v4,
            v6,
            slot_store,
            state,
            guard,
            resolv_conf,
        })
    }

    /// Gives sandbox `id` its link and address, with no rules: everything
    /// it sends is refused until [`Network::apply`] sets its policy.
    pub fn prepare(&self, id: &str, pid: i32, pidfd: &OwnedFd) -> Result<(), RuntimeError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.ensure_link(&mut st, id, pid, pidfd).map(|_| ())
    }

    /// Gives sandbox `id` (whose init `pidfd` is proven, with host pid
    /// `pid`) the policy: its link for `full` (created if missing), its
    /// set elements replaced in one transaction; no link for `none`.
    pub fn apply(
        &self,
        id: &str,
        pid: i32,
        pidfd: &OwnedFd,
        policy: &NetworkPolicy,
    ) -> Result<(), RuntimeError> {
        let started = std::time::Instant::now();
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if !policy.is_full() {
            return self.remove_locked(&mut st, id);
        }
        let name = self.ensure_link(&mut st, id, pid, pidfd)?;
        let (mut allow, mut deny) = (Vec::new(), Vec::new());
        for (list, out) in [
            (&policy.allow_out, &mut allow),
            (&policy.deny_out, &mut deny),
        ] {
            out.extend(list.iter().filter_map(NetEntry::net).copied());
            *out = nft::disjoint(std::mem::take(out));
        }
        let key = nft::SandboxKey::ifname(&name);
        let new = nft::Elements::new(&key, policy.allow_out.is_empty(), &allow, &deny);
        let mut batch = Vec::new();
        if let Some(old) = st.elements.get(id) {
            batch.extend(old.msgs(&self.table, false));
        }
        batch.extend(new.msgs(&self.table, true));
        let proxied = self.guard.is_some() && guard::names_hosts(policy);
        match (proxied, st.proxied.contains(id)) {
            (true, false) => batch.extend(nft::proxied_elements(&self.table, &key, true)),
            (false, true) => batch.extend(nft::proxied_elements(&self.table, &key, false)),
            _ => {}
        }
        st.nft
            .batch(batch)
            .map_err(err("setting the sandbox's rules"))?;
        st.elements.insert(id.to_string(), new);
        if proxied {
            st.proxied.insert(id.to_string());
        } else {
            st.proxied.remove(id);
        }
        if let (Some(g), Some(slot)) = (&self.guard, st.slots.get(id).copied()) {
            g.view.set(id, &self.addrs(slot), &key, policy);
        }
        // What the sandbox resolved under its old policy is not open
        // under the new one. After the new policy is in the view: an
        // answer checked against the old one opens nothing from here on
        // (`View::allow`), and what it opened before is deleted now.
        self.forget_resolved(&mut st, id);
        tracing::debug!(session = %id, elapsed_us = started.elapsed().as_micros() as u64, "network policy applied");
        Ok(())
    }

    /// The sandbox's veth name, after giving it a slot and its link where
    /// it has none yet.
    fn ensure_link(
        &self,
        st: &mut State,
        id: &str,
        pid: i32,
        pidfd: &OwnedFd,
    ) -> Result<String, RuntimeError> {
        let name = ifname(&self.prefix, id);
        let slot = match st.slots.get(id) {
            Some(s) => *s,
            None => {
                let s = (1u32..)
                    .find(|s| !st.used.contains(s))
                    .filter(|s| self.v4.nth(*s as u128 + 1).is_some())
                    .ok_or_else(|| RuntimeError::Backend {
                        context: "network".into(),
                        message: format!("no free address in {} for another sandbox", self.v4),
                    })?;
                let path = self.slot_store.path(id);
                std::fs::write(&path, s.to_string())
                    .map_err(RuntimeError::io_ctx(format!("writing {}", path.display())))?;
                st.used.insert(s);
                st.slots.insert(id.to_string(), s);
                s
            }
        };
        if rtnl::link_index(&mut st.rtnl, &name)
            .map_err(err("finding a veth"))?
            .is_none()
        {
            if let Err(e) = self.link_up(st, &name, slot, pid, pidfd) {
                let _ = delete_link(&mut st.rtnl, &name);
                return Err(e);
            }
        }
        Ok(name)
    }

    /// Deletes the DNS-learned elements of sandbox `id` (each on its own:
    /// one the kernel has just expired must not fail the others).
    fn forget_resolved(&self, st: &mut State, id: &str) {
        let Some(g) = &self.guard else { return };
        let key = nft::SandboxKey::ifname(&ifname(&self.prefix, id));
        nft::delete_dns_elements(&mut st.nft, &self.table, &key, g.resolved.take(id));
    }

    /// The resolv.conf sandboxes get, where the daemon answers DNS.
    pub fn resolv_conf(&self) -> Option<&std::path::Path> {
        self.resolv_conf.as_deref()
    }

    /// What sandbox `id`'s policy refused, oldest first.
    pub fn events(&self, id: &str) -> Vec<NetworkDenial> {
        guard::Guard::events_of(self.guard.as_ref(), id)
    }

    /// Refusals recorded since start.
    pub fn denials_total(&self) -> u64 {
        guard::Guard::denials_of(self.guard.as_ref())
    }

    /// Creates the veth pair of a sandbox and configures both ends.
    fn link_up(
        &self,
        st: &mut State,
        name: &str,
        slot: u32,
        pid: i32,
        pidfd: &OwnedFd,
    ) -> Result<(), RuntimeError> {
        let addr4 = self.v4.nth(slot as u128).expect("slot within the subnet");
        let addr6 = self.v6.and_then(|n| n.nth(slot as u128));
        let t0 = std::time::Instant::now();
        let netns = open_netns(pid, pidfd)?;
        st.rtnl
            .transact(vec![rtnl::create_veth(name, INNER, netns.as_raw_fd())])
            .map_err(err("creating the veth pair"))?;
        let index = rtnl::link_index(&mut st.rtnl, name)
            .map_err(err("finding the new veth"))?
            .ok_or_else(|| RuntimeError::Backend {
                context: "network".into(),
                message: format!("veth {name} vanished after its creation"),
            })?;
        let mut host = vec![
            rtnl::add_addr(index, IpAddr::V4(GATEWAY4), 32),
            rtnl::add_route(addr4, 32, index, None),
        ];
        if let Some(a6) = addr6 {
            host.push(rtnl::add_addr(index, IpAddr::V6(GATEWAY6), 64));
            host.push(rtnl::add_route(a6, 128, index, None));
        }
        st.rtnl
            .transact(host)
            .map_err(err("configuring the host end"))?;
        let t1 = t0.elapsed().as_micros() as u64;
        let r = in_netns(netns, move |sock| {
            let inner = rtnl::link_index(sock, INNER)?
                .ok_or_else(|| io::Error::other("no eth0 in the sandbox"))?;
            let mut msgs = vec![
                rtnl::set_up(inner),
                rtnl::add_addr(inner, addr4, 32),
                rtnl::add_route(
                    IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    0,
                    inner,
                    Some(IpAddr::V4(GATEWAY4)),
                ),
            ];
            if let Some(a6) = addr6 {
                enable_ipv6_inside()?;
                msgs.push(rtnl::add_addr(inner, IpAddr::V6(SANDBOX_LL6), 64));
                msgs.push(rtnl::add_addr(inner, a6, 128));
                msgs.push(rtnl::add_route(
                    IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                    0,
                    inner,
                    Some(IpAddr::V6(GATEWAY6)),
                ));
            }
            sock.transact(msgs)
        })
        .map_err(err("configuring the sandbox end"));
        tracing::debug!(
            host_us = t1,
            total_us = t0.elapsed().as_micros() as u64,
            "veth pair configured"
        );
        r
    }

    /// Removes what sandbox `id` has: its veth, its elements, its slot.
    pub fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.remove_locked(&mut st, id)?;
        // The sandbox is gone: so is its record of refusals (kept across a
        // change to `none`, which also removes its link).
        if let Some(g) = &self.guard {
            g.events.forget(id);
        }
        Ok(())
    }

    /// Removes sandbox `id`'s link, elements and slot, keeping its record
    /// of refusals (a change to `none`, a hibernation).
    pub fn unlink(&self, id: &str) -> Result<(), RuntimeError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.remove_locked(&mut st, id)
    }

    fn remove_locked(&self, st: &mut State, id: &str) -> Result<(), RuntimeError> {
        if let Some(g) = &self.guard {
            g.view.forget(id);
        }
        self.forget_resolved(st, id);
        if st.proxied.remove(id) {
            let key = nft::SandboxKey::ifname(&ifname(&self.prefix, id));
            st.nft
                .batch(nft::proxied_elements(&self.table, &key, false))
                .map_err(err("taking the sandbox off the proxy"))?;
        }
        delete_link(&mut st.rtnl, &ifname(&self.prefix, id))?;
        if let Some(old) = st.elements.remove(id) {
            st.nft
                .batch(old.msgs(&self.table, false))
                .map_err(err("deleting the sandbox's rules"))?;
        }
        if let Some(s) = st.slots.remove(id) {
            // With the link gone nothing adds to them: the slot's
            // connection tracking entries go before the slot is given to
            // another sandbox, which would ride them past its own policy
            // (`forward` accepts established flows first). Where they
            // cannot be deleted, the slot stays out of use.
            match ct::forget(&mut st.nft, &self.addrs(s)) {
                Ok(n) => {
                    tracing::debug!(session = %id, slot = s, entries = n, "slot's conntrack entries deleted");
                    st.used.remove(&s);
                }
                Err(e) => tracing::warn!(session = %id, slot = s, error = %e,
                    "could not delete the conntrack entries of a freed address slot; \
                     it is not given out again until the daemon restarts"),
            }
            let _ = std::fs::remove_file(self.slot_store.path(id));
        }
        Ok(())
    }

    /// The addresses of `slot`: IPv4, and IPv6 where sandboxes have it.
    fn addrs(&self, slot: u32) -> Vec<IpAddr> {
        self.v4
            .nth(slot as u128)
            .into_iter()
            .chain(self.v6.and_then(|n| n.nth(slot as u128)))
            .collect()
    }

    /// At a graceful stop: when no sandbox has a link any more, the table
    /// and the Docker rules go too (sandboxes that keep running keep
    /// their rules for the next start).
    pub fn release(&self) -> Result<bool, RuntimeError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if !st.slots.is_empty() {
            return Ok(false);
        }
        delete_rules(&mut st.nft, &self.tag)?;
        Ok(true)
    }

    /// Removes the table and Docker rules a daemon of `data_dir` left
    /// when it ended without a graceful stop (its sandboxes' links went
    /// with their namespaces), under its tag's claim: nothing when no tag
    /// is kept there or a running daemon holds it. `false`: nothing to do.
    /// (A start of that daemon rebuilds the table anyway; this is for a
    /// data dir that is given up, as the tests do.)
    pub fn remove_leftovers(data_dir: &std::path::Path) -> Result<bool, RuntimeError> {
        let Some((tag, claim)) = host::claim_kept(data_dir).map_err(RuntimeError::HostNotReady)?
        else {
            return Ok(false);
        };
        let mut sock = Socket::open(NETLINK_NETFILTER).map_err(err("opening nfnetlink"))?;
        delete_rules(&mut sock, &tag)?;
        claim.release();
        Ok(true)
    }

    /// The interface name prefix of this daemon's veths.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The name of this daemon's nftables table (family inet).
    pub fn table(&self) -> &str {
        &self.table
    }
}

/// Deletes the table of the daemon tagged `tag` and its Docker rules, in
/// one batch.
fn delete_rules(sock: &mut Socket, tag: &str) -> Result<(), RuntimeError> {
    let mut batch = nft::docker_cleanup(sock, tag).map_err(err("reading DOCKER-USER"))?;
    batch.extend(nft::delete_table(&table_name(tag)));
    sock.batch(batch).map_err(err("deleting the table"))
}

/// The name of the table of the daemon tagged `tag`.
fn table_name(tag: &str) -> String {
    format!("sandkasten_{tag}")
}

/// The host-side veth of sandbox `id`: prefix + the first characters of
/// its id (15 characters at most: IFNAMSIZ).
fn ifname(prefix: &str, id: &str) -> String {
    let room = 15 - prefix.len();
    format!("{prefix}{}", &id[..room.min(id.len())])
}

fn delete_link(sock: &mut Socket, name: &str) -> Result<(), RuntimeError> {
    match sock.transact(vec![rtnl::delete_link(name)]) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(err("deleting a veth")(e)),
    }
}

/// The network namespace of a proven sandbox init: opened by pid, then
/// the pidfd is asked whether that process still lives, so the namespace
/// is the proven one's (a pid reused in between would fail the check).
fn open_netns(pid: i32, pidfd: &OwnedFd) -> Result<OwnedFd, RuntimeError> {
    let path = format!("/proc/{pid}/ns/net");
    let f = std::fs::File::open(&path).map_err(RuntimeError::io_ctx(format!("opening {path}")))?;
    // SAFETY: signal 0 through a pidfd we own: only checks the process.
    let alive = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    } == 0;
    if !alive {
        return Err(RuntimeError::Gone(format!("the sandbox of pid {pid}")));
    }
    Ok(f.into())
}

/// Turns IPv6 on for the sandbox's link, from inside its namespace (this
/// thread's `/proc/sys/net` is that namespace's), where it is off: a
/// Docker engine turns it off in containers it starts without an IPv6
/// network, and a link made there inherits that.
fn enable_ipv6_inside() -> io::Result<()> {
    let path = format!("/proc/sys/net/ipv6/conf/{INNER}/disable_ipv6");
    match std::fs::read_to_string(&path) {
        Ok(v) if v.trim() == "0" => Ok(()),
        Ok(_) => std::fs::write(&path, "0")
            .map_err(|e| io::Error::new(e.kind(), format!("writing {path} inside: {e}"))),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("reading {path} inside: {e}"),
        )),
    }
}

/// Runs `f` with a route socket inside the network namespace `netns`, on
/// a thread made for it that exits afterwards (a thread's namespace never
/// leaks into the daemon's other work).
fn in_netns<F>(netns: OwnedFd, f: F) -> io::Result<()>
where
    F: FnOnce(&mut Socket) -> io::Result<()> + Send + 'static,
{
    std::thread::Builder::new()
        .name("sk-netns".into())
        .spawn(move || {
            // SAFETY: setns on this thread only; the fd is a netns fd.
            if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            let mut sock = Socket::open(NETLINK_ROUTE)?;
            f(&mut sock)
        })?
        .join()
        .map_err(|_| io::Error::other("the namespace thread panicked"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_fit_ifnamsiz_and_tags_differ_by_data_dir() {
        let a = host::tag_of(std::path::Path::new("/var/lib/sandkasten"));
        let b = host::tag_of(std::path::Path::new("/tmp/other"));
        assert_eq!(a.len(), 4);
        assert_ne!(a, b);
        let name = ifname(
            &format!("{ANY_PREFIX}{a}"),
            "0123456789abcdef0123456789abcdef",
        );
        assert_eq!(name.len(), 15);
        assert!(name.starts_with("skn"));
    }
}
