//! Links, addresses and routes over rtnetlink: the veth pair of a
//! sandbox, the addresses and routes on either end.

use crate::netlink::{Msg, Socket, NLM_F_CREATE, NLM_F_EXCL};
use std::io;
use std::net::IpAddr;

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_NEWROUTE: u16 = 24;

const IFLA_IFNAME: u16 = 3;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;

const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_STATIC: u8 = 4;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RTN_UNICAST: u8 = 1;
const RTNH_F_ONLINK: u32 = 4;

const IFF_UP: u32 = 0x1;

/// `struct ifinfomsg`: family, type, index, flags, change.
fn ifinfo(index: i32, flags: u32, change: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[4..8].copy_from_slice(&index.to_ne_bytes());
    b[8..12].copy_from_slice(&flags.to_ne_bytes());
    b[12..16].copy_from_slice(&change.to_ne_bytes());
    b
}

/// Brings link `index` up.
pub fn set_up(index: i32) -> Msg {
    Msg::new(RTM_NEWLINK, 0, "bringing a link up").raw(&ifinfo(index, IFF_UP, IFF_UP))
}

/// Creates the veth pair `host` ↔ `peer`, `host` up, with `peer` moved into
/// the network namespace `netns` (an fd of it).
pub fn create_veth(host: &str, peer: &str, netns: i32) -> Msg {
    let mut m = Msg::new(
        RTM_NEWLINK,
        NLM_F_CREATE | NLM_F_EXCL,
        "creating a veth pair",
    )
    .raw(&ifinfo(0, IFF_UP, IFF_UP));
    m.str(IFLA_IFNAME, host);
    m.begin_plain(IFLA_LINKINFO).str(IFLA_INFO_KIND, "veth");
    m.begin_plain(IFLA_INFO_DATA).begin_plain(VETH_INFO_PEER);
    // The peer's ifinfomsg comes first inside VETH_INFO_PEER. It stays
    // down here (the kernel cannot open it before the pair is linked,
    // ENOTCONN); it is brought up from inside its namespace.
    m.raw_attr_body(&ifinfo(0, 0, 0));
    m.str(IFLA_IFNAME, peer);
    m.attr(IFLA_NET_NS_FD, &netns.to_ne_bytes());
    m.end().end().end();
    m
}

/// Deletes link `name` (its veth peer goes with it).
pub fn delete_link(name: &str) -> Msg {
    let mut m = Msg::new(RTM_DELLINK, 0, "deleting a veth").raw(&ifinfo(0, 0, 0));
    m.str(IFLA_IFNAME, name);
    m
}

/// The index of link `name`; `None` when there is none.
pub fn link_index(sock: &mut Socket, name: &str) -> io::Result<Option<i32>> {
    let mut m = Msg::new(RTM_GETLINK, 0, "finding a link").raw(&ifinfo(0, 0, 0));
    m.str(IFLA_IFNAME, name);
    match sock.get(m) {
        Ok(p) if p.len() >= 16 => Ok(Some(i32::from_ne_bytes(p[4..8].try_into().unwrap()))),
        Ok(_) => Err(io::Error::other("short link reply")),
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Names of every link whose name starts with `prefix`.
pub fn links_with_prefix(sock: &mut Socket, prefix: &str) -> io::Result<Vec<String>> {
    let m = Msg::new(RTM_GETLINK, 0, "listing links").raw(&ifinfo(0, 0, 0));
    Ok(sock
        .dump(m, 16)?
        .iter()
        .filter_map(|a| crate::netlink::find_str(a, IFLA_IFNAME))
        .filter(|n| n.starts_with(prefix))
        .collect())
}

fn family(a: &IpAddr) -> u8 {
    match a {
        IpAddr::V4(_) => libc::AF_INET as u8,
        IpAddr::V6(_) => libc::AF_INET6 as u8,
    }
}

fn octets(a: &IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// Adds `addr/prefix` to link `index`, usable at once (no DAD).
pub fn add_addr(index: i32, addr: IpAddr, prefix: u8) -> Msg {
    crate::netlink::addr_nodad(index, addr, prefix, NLM_F_CREATE | NLM_F_EXCL)
}

/// A route to `dst/len` out of link `oif`, through `via` when given
/// (on-link: the gateway needs no route of its own).
pub fn add_route(dst: IpAddr, len: u8, oif: i32, via: Option<IpAddr>) -> Msg {
    let mut hdr = [0u8; 12];
    hdr[0] = family(&dst);
    hdr[1] = len;
    hdr[4] = RT_TABLE_MAIN;
    hdr[5] = RTPROT_STATIC;
    hdr[6] = if via.is_some() {
        RT_SCOPE_UNIVERSE
    } else {
        RT_SCOPE_LINK
    };
    hdr[7] = RTN_UNICAST;
    if via.is_some() {
        hdr[8..12].copy_from_slice(&RTNH_F_ONLINK.to_ne_bytes());
    }
    let mut m = Msg::new(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, "adding a route").raw(&hdr);
    if len > 0 {
        m.attr(RTA_DST, &octets(&dst));
    }
    m.u32_ne(RTA_OIF, oif as u32);
    if let Some(gw) = via {
        m.attr(RTA_GATEWAY, &octets(&gw));
    }
    m
}
