//! The daemon's guard of sandbox networks, above the kernel's datapath:
//! the DNS server sandboxes ask (`dns.rs`), which resolves only the names
//! a sandbox's policy allows and opens the addresses it answered for their
//! TTL (`resolved.rs` remembers until when), the proxy that checks the
//! TLS SNI / HTTP Host of connections to ports 80 and 443 (`proxy.rs`),
//! and the record of what was denied (`events.rs`): by those two, and by
//! the kernel datapath, whose refusals come back over NFLOG (`nflog.rs`).
//!
//! The guard knows sandboxes only through [`Sandboxes`]: which sandbox a
//! source address is, its policy right now, and how to let it reach an
//! address. `wiring.rs` implements it over a datapath's nftables table.
//!
//! The kernel side both backends share lives here too: `netlink.rs` (a
//! netlink socket, messages, batches, acks, dumps), `nft.rs` (the
//! daemon's nftables table, per-sandbox set elements, the DOCKER-USER
//! accept rules) and `routed/` (the datapath itself: a sandbox's veth
//! pair, its address slot, its policy put in force).

mod dns;
mod events;
pub mod host;
pub mod netlink;
pub mod nflog;
pub mod nft;
mod policy;
mod proxy;
mod resolved;
pub mod routed;
pub mod wiring;

pub use dns::{DnsConfig, DnsServer, MAX_IN_FLIGHT};
pub use events::{Denial, EventLog};
pub use policy::{addr_verdict, name_verdict};
pub use proxy::{Conntrack, OriginalDestination, Proxy};
pub use resolved::Resolved;

use sandkasten_runtime::NetworkPolicy;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// What the guard asks of the daemon about the sandbox traffic came from.
pub trait Sandboxes: Send + Sync + 'static {
    /// The sandbox whose address is `src`: its session id and its policy
    /// as it is now (a changed policy applies to the next query).
    fn lookup(&self, src: IpAddr) -> Option<(String, Arc<NetworkPolicy>)>;

    /// Lets sandbox `id` open new connections to `addr` for `ttl`, if its
    /// policy is still `under` (the one the answer was checked against):
    /// a policy change while the upstream was answering closes what the
    /// old policy would have opened, so the check and the opening are one
    /// step against the change. Returns once the opening is in force: the
    /// answer that named the address goes out only afterwards, so a
    /// connection right after it is let through.
    fn allow(
        &self,
        id: &str,
        addr: IpAddr,
        ttl: Duration,
        under: &Arc<NetworkPolicy>,
    ) -> Result<(), NotOpened>;
}

/// Why [`Sandboxes::allow`] opened nothing.
#[derive(Debug, PartialEq)]
pub enum NotOpened {
    /// The sandbox's policy changed (or the sandbox went) since the check.
    Stale,
    /// The datapath refused the element.
    Failed(String),
}
