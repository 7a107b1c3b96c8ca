//! Sandboxes' network on a local Docker engine: one engine network the
//! daemon makes (`sandkasten-<tag>`, its own bridge `skn<tag>-br` and
//! subnet, labelled with the data dir, created at start when missing and
//! reused after a restart), and the same nftables table as the native
//! runtime (`sandkasten-netguard`'s `nft.rs`, keyed by the sandbox's IPv4
//! address instead of its veth, since every sandbox comes in by the one
//! bridge). Traffic between two containers of the bridge passes the same
//! forward hook (and is refused there) because bridged packets are handed
//! to the IP hooks (`br_netfilter`, `bridge-nf-call-iptables`, set at
//! start as Docker sets it). The daemon's DNS server and SNI/Host proxy
//! listen on the bridge's gateway address; every container's
//! `/etc/resolv.conf` names it. Design, layout and invariants:
//! docs/architecture.md, "Sandbox networks", "On docker".

use crate::{api_err, container_name, status_of, LABEL_DATA_DIR};
use bollard::models::{
    Ipam, IpamConfig, NetworkConnectRequest, NetworkCreateRequest, NetworkDisconnectRequest,
};
use bollard::Docker;
use sandkasten_netguard::host;
use sandkasten_netguard::netlink::{self, Msg, Socket, NETLINK_NETFILTER};
use sandkasten_netguard::nft::{self, Key, SandboxKey};
use sandkasten_netguard::wiring::{self as guard, Guard, NftSink};
use sandkasten_runtime::{
    blocking, latebind, IpNet, NetEntry, NetworkDenial, NetworkPolicy, RuntimeError, SandboxHandle,
};
use std::collections::{BTreeSet, HashMap};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Label of the daemon's engine network.
pub const LABEL_NETWORK: &str = "sandkasten.network";
/// Where a container's resolver file is bound (read-only).
pub(crate) const RESOLV_CONF: &str = "/etc/resolv.conf";

/// Settings of the docker datapath.
#[derive(Debug, Clone)]
pub struct DockerNetConfig {
    /// The network's IPv4 subnet; `None`: a /20 of 10.128.0.0/10 picked by
    /// the data dir (as on native).
    pub ipv4_subnet: Option<IpNet>,
    /// The network's IPv6 subnet; `None`: a /64 of fd5b:d::/32 picked by
    /// the data dir.
    pub ipv6_subnet: Option<IpNet>,
    /// `network.ipv6`: whether the network has IPv6.
    pub ipv6: bool,
    /// `network.deny_always`.
    pub deny_always: Vec<IpNet>,
    /// `network.dns_upstream`; `None`: no DNS server (host names in
    /// policies resolve nowhere).
    pub dns_upstream: Option<SocketAddr>,
}

/// The datapath of one daemon on a local engine.
pub(crate) struct Datapath {
    docker: Docker,
    /// The engine network's name.
    pub name: String,
    bridge: String,
    table: String,
    /// The bridge's address: sandboxes' gateway, DNS server and proxy.
    pub gateway: Ipv4Addr,
    /// The network's IPv6 subnet, where it has IPv6.
    pub v6: Option<IpNet>,
    state: Arc<Mutex<State>>,
    guard: Option<Guard>,
    /// `<data dir>/docker-resolv.conf`, bound at every container's
    /// `/etc/resolv.conf`.
    pub resolv_conf: PathBuf,
    /// Whether a container's init can be proven (the engine's pids are
    /// ours to see): only then is the engine's resolver refused inside.
    pids_visible: bool,
}

struct State {
    nft: Socket,
    /// Each attached sandbox's key (its addresses) and its elements in
    /// force.
    elements: HashMap<String, (SandboxKey, nft::Elements)>,
    /// Sandboxes in the proxied set.
    proxied: BTreeSet<String>,
    /// The containers (session id, host pid of their init) whose own
    /// namespace refuses the engine's embedded resolver
    /// (`nft::resolver_block`); a woken container has a new pid.
    resolver_blocked: BTreeSet<(String, i32)>,
}

struct Sink(Arc<Mutex<State>>);

impl NftSink for Sink {
    fn send(&self, msgs: Vec<Msg>) -> io::Result<()> {
        lock(&self.0).nft.batch(msgs)
    }
}

fn lock(s: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

fn err(context: &str) -> impl FnOnce(io::Error) -> RuntimeError + '_ {
    move |e| RuntimeError::io(format!("network: {context}"), e)
}

impl Datapath {
    /// Finds or creates the engine network, builds the tables anew (the
    /// engine restores each running session's elements through
    /// `set_network` at recovery) and starts the DNS server and proxy.
    pub async fn start(
        docker: &Docker,
        cfg: &DockerNetConfig,
        data_dir: &Path,
        pids_visible: bool,
    ) -> Result<Datapath, RuntimeError> {
        if !pids_visible {
            tracing::warn!(
                "the engine's processes are in another pid namespace: the engine's embedded \
                 resolver (127.0.0.11) cannot be refused inside containers and tells a sandbox \
                 the other containers' names and addresses (run the daemon in the engine's pid \
                 namespace to close it)"
            );
        }
        let tag = host::tag_of(data_dir);
        let subnet = cfg
            .ipv4_subnet
            .unwrap_or_else(|| host::default_ipv4_subnet(&tag));
        if !subnet.is_ipv4() || subnet.prefix() > 24 {
            return Err(RuntimeError::HostNotReady(format!(
                "network.ipv4_subnet: {subnet} must be an IPv4 network of at least /24"
            )));
        }
        let gateway = match subnet.nth(1) {
            Some(IpAddr::V4(a)) => a,
            _ => unreachable!("an IPv4 network of at least /24 has a first address"),
        };
        let v6 = cfg
            .ipv6
            .then(|| host::ipv6_subnet(cfg.ipv6_subnet, &tag, 0xd))
            .transpose()
            .map_err(RuntimeError::HostNotReady)?;
        let name = format!("sandkasten-{tag}");
        let bridge = format!("skn{tag}-br");
        let table = format!("sandkasten_{tag}");
        let label = data_dir.display().to_string();
        blocking("filtering bridged traffic", bridge_netfilter).await?;
        let (v6, made) =
            ensure_network(docker, &name, &bridge, (&subnet, gateway), v6, &label).await?;
        if v6.is_some() {
            // The engine forwards IPv4 itself; IPv6 is the daemon's to turn on.
            host::enable_forwarding(true)
                .map_err(|(path, e)| RuntimeError::io(format!("writing {path}"), e))?;
        }
        if let (Some(n), true) = (v6, made) {
            bridge_nodad(&bridge, n)?;
        }
        let subnets: Vec<IpNet> = std::iter::once(subnet).chain(v6).collect();
        let resolv_conf = data_dir.join("docker-resolv.conf");
        let (rc, text) = (
            resolv_conf.clone(),
            format!("nameserver {gateway}\noptions timeout:2 attempts:2\n"),
        );
        blocking("writing the sandboxes' resolv.conf", move || {
            std::fs::write(&rc, text)
                .map_err(RuntimeError::io_ctx(format!("writing {}", rc.display())))
        })
        .await?;
        let nft_sock = Socket::open(NETLINK_NETFILTER).map_err(err("opening nfnetlink"))?;
        let state = Arc::new(Mutex::new(State {
            nft: nft_sock,
            elements: HashMap::new(),
            proxied: BTreeSet::new(),
            resolver_blocked: BTreeSet::new(),
        }));
        let guard = match cfg.dns_upstream {
            Some(up) => {
                let mut deny = cfg.deny_always.clone();
                deny.extend(subnets.iter().copied());
                Some(
                    guard::start(
                        up,
                        deny,
                        Arc::new(Sink(state.clone())),
                        &table,
                        gateway,
                        v6.is_some(),
                    )
                    .map_err(err("starting the sandboxes' DNS server"))?,
                )
            }
            None => None,
        };
        let prefix = format!("{bridge}\0");
        let batch = nft::table(&nft::Layout {
            table: &table,
            prefix: &prefix,
            key: Key::Saddr,
            v6: v6.is_some(),
            any_prefix: "skn",
            subnets: &subnets,
            deny_always: &cfg.deny_always,
            guard: guard.as_ref().map(|g| g.ports),
        });
        lock(&state)
            .nft
            .batch(batch)
            .map_err(err("building the nftables tables"))?;
        tracing::info!(%table, network = %name, %bridge, ipv4 = %subnet, ipv6 = ?v6,
            dns = ?guard.as_ref().map(|g| g.ports.dns), "sandbox network ready");
        Ok(Datapath {
            docker: docker.clone(),
            name,
            bridge,
            table,
            gateway,
            v6,
            state,
            guard,
            resolv_conf,
            pids_visible,
        })
    }

    /// Gives container `id` (running) `policy`: attached to the network
    /// with its elements for `full`, detached for `none`.
    pub async fn apply(
        &self,
        handle: &SandboxHandle,
        policy: &NetworkPolicy,
    ) -> Result<(), RuntimeError> {
        let id = handle.id.as_str();
        if !policy.is_full() {
            self.forget(id, false).await?;
            return self.detach(id).await;
        }
        // Refused before the container is on the network, so that nothing
        // in it ever reaches the engine's resolver.
        self.block_engine_resolver(handle).await?;
        let (addr, addr6) = self.attach(id).await?;
        let key = SandboxKey::addrs(addr, addr6);
        let started = std::time::Instant::now();
        let (state, table, guard_on) =
            (self.state.clone(), self.table.clone(), self.guard.is_some());
        let (sid, p, k) = (id.to_string(), policy.clone(), key.clone());
        let resolved = self.guard.as_ref().map(|g| g.resolved.clone());
        blocking("setting a sandbox's rules", move || {
            let key = k;
            let mut st = lock(&state);
            let (mut allow, mut deny) = (Vec::new(), Vec::new());
            for (list, out) in [(&p.allow_out, &mut allow), (&p.deny_out, &mut deny)] {
                out.extend(list.iter().filter_map(NetEntry::net).copied());
                *out = nft::disjoint(std::mem::take(out));
            }
            let new = nft::Elements::new(&key, p.allow_out.is_empty(), &allow, &deny);
            let mut batch = Vec::new();
            let mut old_key = None;
            if let Some((k, old)) = st.elements.get(&sid) {
                batch.extend(old.msgs(&table, false));
                old_key = Some(k.clone());
            }
            if let Some(k) = old_key.as_ref().filter(|k| **k != key) {
                if st.proxied.remove(&sid) {
                    batch.extend(nft::proxied_elements(&table, k, false));
                }
            }
            batch.extend(new.msgs(&table, true));
            let proxied = guard_on && guard::names_hosts(&p);
            match (proxied, st.proxied.contains(&sid)) {
                (true, false) => batch.extend(nft::proxied_elements(&table, &key, true)),
                (false, true) => batch.extend(nft::proxied_elements(&table, &key, false)),
                _ => {}
            }
            st.nft
                .batch(batch)
                .map_err(err("setting the sandbox's rules"))?;
            st.elements.insert(sid.clone(), (key.clone(), new));
            if proxied {
                st.proxied.insert(sid.clone());
            } else {
                st.proxied.remove(&sid);
            }
            // What the sandbox resolved under its old policy is not open
            // under the new one.
            if let Some(r) = resolved {
                let old_key = old_key.unwrap_or_else(|| key.clone());
                nft::delete_dns_elements(&mut st.nft, &table, &old_key, r.take(&sid));
            }
            Ok(())
        })
        .await?;
        if let Some(g) = &self.guard {
            let addrs: Vec<IpAddr> = std::iter::once(IpAddr::V4(addr))
                .chain(addr6.map(IpAddr::V6))
                .collect();
            g.view.set(id, &addrs, &key, policy);
        }
        tracing::debug!(session = %id, elapsed_us = started.elapsed().as_micros() as u64, "network policy applied");
        Ok(())
    }

    /// The container's addresses on the network (IPv6 where the network
    /// has it), after connecting it where it is not (a container started
    /// without network is first taken off the engine's `none`).
    async fn attach(&self, id: &str) -> Result<(Ipv4Addr, Option<Ipv6Addr>), RuntimeError> {
        if let Some(a) = self.address(id).await? {
            return Ok(a);
        }
        let container = container_name(id);
        let nets = self.networks(id).await?;
        if nets.contains_key("none") {
            self.docker
                .disconnect_network(
                    "none",
                    NetworkDisconnectRequest {
                        container: container.clone(),
                        force: Some(true),
                    },
                )
                .await
                .map_err(api_err(format!("taking {container} off network none")))?;
        }
        self.docker
            .connect_network(
                &self.name,
                NetworkConnectRequest {
                    container: container.clone(),
                    endpoint_config: None,
                },
            )
            .await
            .map_err(api_err(format!("connecting {container} to {}", self.name)))?;
        self.address(id)
            .await?
            .ok_or_else(|| RuntimeError::Backend {
                context: "network".into(),
                message: format!(
                    "{container} has no address on {} after connecting",
                    self.name
                ),
            })
    }

    /// Makes the container's own namespace refuse the engine's embedded
    /// resolver (`nft::resolver_block`), once per container: it would
    /// tell the sandbox every other container's name and address.
    pub(crate) async fn block_engine_resolver(
        &self,
        handle: &SandboxHandle,
    ) -> Result<(), RuntimeError> {
        let key = (handle.id.clone(), handle.pid);
        if !self.pids_visible || lock(&self.state).resolver_blocked.contains(&key) {
            return Ok(());
        }
        let Some(pidfd) = latebind::open_verified(handle.pid, handle.start_time) else {
            return Err(RuntimeError::Backend {
                context: "network".into(),
                message: format!(
                    "container {} has no provable init to reach its network namespace through",
                    container_name(&handle.id)
                ),
            });
        };
        blocking(
            "refusing the engine's resolver inside the container",
            move || {
                netlink::batch_in_netns(pidfd, nft::resolver_block())
                    .map_err(err("refusing the engine's resolver inside the container"))
            },
        )
        .await?;
        let mut st = lock(&self.state);
        // Only the containers still known: a forgotten one stays out.
        st.resolver_blocked.retain(|(id, _)| id != &handle.id);
        st.resolver_blocked.insert(key);
        Ok(())
    }

    /// Takes the container off the network (loopback only), if it is on it.
    async fn detach(&self, id: &str) -> Result<(), RuntimeError> {
        if !self.networks(id).await?.contains_key(&self.name) {
            return Ok(());
        }
        let container = container_name(id);
        self.docker
            .disconnect_network(
                &self.name,
                NetworkDisconnectRequest {
                    container: container.clone(),
                    force: Some(true),
                },
            )
            .await
            .map_err(api_err(format!(
                "disconnecting {container} from {}",
                self.name
            )))
    }

    async fn networks(
        &self,
        id: &str,
    ) -> Result<HashMap<String, bollard::models::EndpointSettings>, RuntimeError> {
        let name = container_name(id);
        match self.docker.inspect_container(&name, None).await {
            Ok(c) => Ok(c
                .network_settings
                .and_then(|n| n.networks)
                .unwrap_or_default()),
            Err(e) if status_of(&e) == Some(404) => Err(RuntimeError::Gone(id.into())),
            Err(e) => Err(api_err(format!("inspecting {name}"))(e)),
        }
    }

    /// The container's addresses on the network (its IPv4 address, and
    /// its IPv6 one where the network has IPv6), if it is on it.
    async fn address(
        &self,
        id: &str,
    ) -> Result<Option<(Ipv4Addr, Option<Ipv6Addr>)>, RuntimeError> {
        let nets = self.networks(id).await?;
        let Some(e) = nets.get(&self.name) else {
            return Ok(None);
        };
        let Some(v4) = e.ip_address.as_deref().and_then(|a| a.parse().ok()) else {
            return Ok(None);
        };
        let v6 = self
            .v6
            .and(e.global_ipv6_address.as_deref())
            .and_then(|a| a.parse().ok());
        Ok(Some((v4, v6)))
    }

    /// Deletes what sandbox `id` has in the tables and the guard; with
    /// `gone` also its record of refusals (kept across a change to none).
    pub async fn forget(&self, id: &str, gone: bool) -> Result<(), RuntimeError> {
        if let Some(g) = &self.guard {
            g.view.forget(id);
            if gone {
                g.events.forget(id);
            }
        }
        if gone {
            lock(&self.state).resolver_blocked.retain(|(i, _)| i != id);
        }
        let (state, table, sid) = (self.state.clone(), self.table.clone(), id.to_string());
        let resolved = self.guard.as_ref().map(|g| g.resolved.clone());
        blocking("deleting a sandbox's rules", move || {
            let mut st = lock(&state);
            let Some((key, old)) = st.elements.remove(&sid) else {
                if let Some(r) = resolved {
                    r.take(&sid);
                }
                return Ok(());
            };
            if let Some(r) = resolved {
                nft::delete_dns_elements(&mut st.nft, &table, &key, r.take(&sid));
            }
            let mut batch = old.msgs(&table, false);
            if st.proxied.remove(&sid) {
                batch.extend(nft::proxied_elements(&table, &key, false));
            }

            st.nft
                .batch(batch)
                .map_err(err("deleting the sandbox's rules"))
        })
        .await
    }

    /// What sandbox `id`'s policy refused, oldest first.
    pub fn events(&self, id: &str) -> Vec<NetworkDenial> {
        guard::Guard::events_of(self.guard.as_ref(), id)
    }

    /// Refusals recorded since start.
    pub fn denials_total(&self) -> u64 {
        guard::Guard::denials_of(self.guard.as_ref())
    }

    /// At a graceful stop: when no container is on the network any more,
    /// the tables and the engine network go too.
    pub async fn release(&self) -> Result<bool, RuntimeError> {
        let inspect = self
            .docker
            .inspect_network(
                &self.name,
                None::<bollard::query_parameters::InspectNetworkOptions>,
            )
            .await;
        let in_use = match inspect {
            Ok(n) => n.containers.is_some_and(|c| !c.is_empty()),
            Err(e) if status_of(&e) == Some(404) => false,
            Err(e) => return Err(api_err(format!("inspecting network {}", self.name))(e)),
        };
        if in_use || !lock(&self.state).elements.is_empty() {
            return Ok(false);
        }
        let (state, table) = (self.state.clone(), self.table.clone());
        blocking("deleting the tables", move || {
            lock(&state)
                .nft
                .batch(nft::delete_table(&table))
                .map_err(err("deleting the tables"))
        })
        .await?;
        match self.docker.remove_network(&self.name).await {
            Ok(()) => Ok(true),
            Err(e) if status_of(&e) == Some(404) => Ok(true),
            Err(e) => Err(api_err(format!("removing network {}", self.name))(e)),
        }
    }

    /// The bridge's interface name.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }
}

/// Gives the bridge of a network just made its IPv6 gateway addresses
/// (the subnet's first, and `fe80::1`, which the engine gave it) anew,
/// exempt from duplicate address detection: they are ours alone, and the
/// detection the engine's own addresses undergo when the bridge gets its
/// first container holds the gateway back (unanswered, so sandboxes'
/// first IPv6 connections wait) for one to two seconds. A flag changed
/// on the engine's addresses does not stop it, nor does `accept_dad` of
/// the bridge (the kernel takes the larger of it and `all`'s).
fn bridge_nodad(bridge: &str, v6: IpNet) -> Result<(), RuntimeError> {
    let Some(gw) = v6.nth(1) else {
        return Ok(());
    };
    let name = std::ffi::CString::new(bridge).map_err(|_| {
        RuntimeError::HostNotReady(format!("bridge name {bridge:?} has a NUL byte"))
    })?;
    // SAFETY: a valid NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
    if index == 0 {
        return Err(RuntimeError::io(
            format!("network: finding bridge {bridge}"),
            io::Error::last_os_error(),
        ));
    }
    let prefix = v6.prefix();
    let mut sock = Socket::open(netlink::NETLINK_ROUTE).map_err(err("opening rtnetlink"))?;
    let link_local = IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1));
    for (addr, len) in [(gw, prefix), (link_local, 64)] {
        // Missing already: nothing to delete.
        let _ = sock.transact(vec![netlink::addr_delete(index, addr, len)]);
        let flags = netlink::NLM_F_CREATE | netlink::NLM_F_EXCL;
        sock.transact(vec![netlink::addr_nodad(index, addr, len, flags)])
            .map_err(err("giving the bridge its IPv6 gateway address"))?;
    }
    Ok(())
}

/// Makes the kernel hand bridged IPv4 and IPv6 packets to the IP hooks
/// (where the table refuses traffic between two sandboxes of the bridge),
/// as Docker itself does for its bridges; needs `br_netfilter`.
fn bridge_netfilter() -> Result<(), RuntimeError> {
    for p in [
        "/proc/sys/net/bridge/bridge-nf-call-iptables",
        "/proc/sys/net/bridge/bridge-nf-call-ip6tables",
    ] {
        match std::fs::read_to_string(p) {
            Ok(v) if v.trim() == "1" => {}
            Ok(_) => {
                tracing::info!("setting {p} to 1 for the sandbox network");
                std::fs::write(p, "1").map_err(RuntimeError::io_ctx(format!("writing {p}")))?;
            }
            Err(e) => {
                return Err(RuntimeError::HostNotReady(format!(
                    "the docker sandbox network needs br_netfilter (modprobe br_netfilter):                      {p}: {e}"
                )))
            }
        }
    }
    Ok(())
}

/// Finds the daemon's engine network, or creates it: a bridge named
/// `bridge` on `v4` (subnet, gateway) and `v6` where given, no traffic
/// between its containers by the engine's rules either (`enable_icc`
/// false), labelled with the data dir. One of the same name that is not
/// ours, or has other subnets, stops the start with a message; ours
/// without the IPv6 subnet asked for (made by an earlier version) is made
/// anew when no container is on it, else kept as it is (IPv4 only, with a
/// warning). Returns the IPv6 subnet the network has, and whether it was
/// made now.
async fn ensure_network(
    docker: &Docker,
    name: &str,
    bridge: &str,
    v4: (&IpNet, Ipv4Addr),
    v6: Option<IpNet>,
    data_dir: &str,
) -> Result<(Option<IpNet>, bool), RuntimeError> {
    let subnet = v4.0;
    let found = docker
        .inspect_network(
            name,
            None::<bollard::query_parameters::InspectNetworkOptions>,
        )
        .await;
    match found {
        Ok(n) => {
            let labels = n.labels.unwrap_or_default();
            let ours = labels.get(LABEL_DATA_DIR).map(String::as_str) == Some(data_dir);
            let subnets: Vec<String> = n
                .ipam
                .and_then(|i| i.config)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|c| c.subnet)
                .collect();
            let want: Vec<String> = std::iter::once(*subnet)
                .chain(v6)
                .map(|n| n.to_string())
                .collect();
            if ours && subnets == want {
                return Ok((v6, false));
            }
            if ours && v6.is_some() && subnets == want[..1] {
                let in_use = n.containers.is_some_and(|c| !c.is_empty());
                if in_use {
                    tracing::warn!(network = %name, "the sandbox network has no IPv6 and containers are on it: sandboxes stay IPv4 only until it is made anew (a restart with no sandbox running)");
                    return Ok((None, false));
                }
                tracing::info!(network = %name, "making the sandbox network anew, with IPv6");
                match docker.remove_network(name).await {
                    Ok(()) => {}
                    Err(e) if status_of(&e) == Some(404) => {}
                    Err(e) => return Err(api_err(format!("removing network {name}"))(e)),
                }
                return Ok((
                    create_network(docker, name, bridge, v4, v6, data_dir).await?,
                    true,
                ));
            }
            let want = want.join(", ");
            Err(RuntimeError::HostNotReady(format!(
                "docker network {name} exists but is not this daemon's on {want} \
                 (labels {labels:?}, subnets {subnets:?}): remove it (docker network rm \
                 {name}) or set network.ipv4_subnet"
            )))
        }
        Err(e) if status_of(&e) == Some(404) => Ok((
            create_network(docker, name, bridge, v4, v6, data_dir).await?,
            true,
        )),
        Err(e) => Err(api_err(format!("inspecting docker network {name}"))(e)),
    }
}

/// Creates the engine network (see [`ensure_network`]).
async fn create_network(
    docker: &Docker,
    name: &str,
    bridge: &str,
    (subnet, gateway): (&IpNet, Ipv4Addr),
    v6: Option<IpNet>,
    data_dir: &str,
) -> Result<Option<IpNet>, RuntimeError> {
    let mut config = vec![IpamConfig {
        subnet: Some(subnet.to_string()),
        gateway: Some(gateway.to_string()),
        ..Default::default()
    }];
    if let Some(n) = v6 {
        config.push(IpamConfig {
            subnet: Some(n.to_string()),
            gateway: n.nth(1).map(|a| a.to_string()),
            ..Default::default()
        });
    }
    let req = NetworkCreateRequest {
        name: name.to_string(),
        driver: Some("bridge".into()),
        enable_ipv6: Some(v6.is_some()),
        ipam: Some(Ipam {
            driver: Some("default".into()),
            config: Some(config),
            options: None,
        }),
        options: Some(HashMap::from([
            (
                "com.docker.network.bridge.name".to_string(),
                bridge.to_string(),
            ),
            (
                "com.docker.network.bridge.enable_icc".to_string(),
                "false".to_string(),
            ),
        ])),
        labels: Some(HashMap::from([
            (LABEL_NETWORK.to_string(), "true".to_string()),
            (LABEL_DATA_DIR.to_string(), data_dir.to_string()),
        ])),
        ..Default::default()
    };
    docker.create_network(req).await.map_err(api_err(format!(
        "creating docker network {name} on {subnet}"
    )))?;
    Ok(v6)
}
