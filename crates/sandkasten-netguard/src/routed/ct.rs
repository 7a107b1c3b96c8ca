//! The kernel's connection tracking entries of a freed address, over
//! ctnetlink: when a sandbox's slot is released, every entry naming one of
//! its addresses goes, so the next sandbox given that slot inherits no
//! established flow (the `forward` chain accepts `ct state established`
//! before it looks at the sandbox's policy).
//!
//! Portable across kernels: entries are listed (a dump the kernel filters
//! by address where it can, `CTA_FILTER`, since 5.8; else the family's
//! whole table, matched here) and each is deleted by its original tuple.
//! A filtered flush is not used: kernels before 6.x refuse `CTA_FILTER` on
//! a delete.

use crate::netlink::{attrs, find, Attr, Msg, Socket, NLA_F_NESTED};
use std::collections::HashSet;
use std::io;
use std::net::IpAddr;

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_ID: u16 = 12;
const CTA_ZONE: u16 = 18;
const CTA_FILTER: u16 = 25;
const CTA_TUPLE_IP: u16 = 1;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_FILTER_ORIG_FLAGS: u16 = 1;
const CTA_FILTER_REPLY_FLAGS: u16 = 2;
/// The kernel's `CTA_FILTER_F_CTA_IP_SRC` / `_DST` (host byte order).
const FILTER_IP_SRC: u32 = 1 << 0;
const FILTER_IP_DST: u32 = 1 << 1;

/// A ctnetlink message of `family` (`nfgenmsg`, version 0).
fn msg(kind: u16, family: u8, what: &'static str) -> Msg {
    Msg::new((NFNL_SUBSYS_CTNETLINK << 8) | kind, 0, what).raw(&[family, 0, 0, 0])
}

fn family_and_octets(addr: IpAddr) -> (u8, Vec<u8>) {
    match addr {
        IpAddr::V4(a) => (libc::AF_INET as u8, a.octets().to_vec()),
        IpAddr::V6(a) => (libc::AF_INET6 as u8, a.octets().to_vec()),
    }
}

/// Deletes every entry with one of `addrs` as source or destination of
/// either direction; the number deleted. An entry that expires in
/// between is not an error.
pub fn forget(sock: &mut Socket, addrs: &[IpAddr]) -> io::Result<usize> {
    let mut deleted = 0;
    for &addr in addrs {
        let (family, octets) = family_and_octets(addr);
        let mut done = HashSet::new();
        for entry in entries_of(sock, addr)? {
            if !names(&entry, &octets) {
                continue;
            }
            let Some(orig) = find(&entry, CTA_TUPLE_ORIG) else {
                continue;
            };
            let zone = find(&entry, CTA_ZONE);
            if !done.insert((orig.to_vec(), zone.map(<[u8]>::to_vec))) {
                continue;
            }
            let mut m = msg(IPCTNL_MSG_CT_DELETE, family, "deleting a conntrack entry");
            m.attr(CTA_TUPLE_ORIG | NLA_F_NESTED, orig);
            if let Some(z) = zone {
                m.attr(CTA_ZONE, z);
            }
            if let Some(id) = find(&entry, CTA_ID) {
                m.attr(CTA_ID, id);
            }
            match sock.transact(vec![m]) {
                Ok(()) => deleted += 1,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(deleted)
}

/// The entries that may name `addr`: four dumps the kernel filters (by
/// original source, original destination, reply source, reply
/// destination), or, where the kernel knows no dump filter, the whole
/// table of `addr`'s family.
fn entries_of(sock: &mut Socket, addr: IpAddr) -> io::Result<Vec<Vec<Attr>>> {
    let (family, octets) = family_and_octets(addr);
    let (src, dst) = match addr {
        IpAddr::V4(_) => (CTA_IP_V4_SRC, CTA_IP_V4_DST),
        IpAddr::V6(_) => (CTA_IP_V6_SRC, CTA_IP_V6_DST),
    };
    let mut out = Vec::new();
    for (dir, flags_kind, ip, flag) in [
        (CTA_TUPLE_ORIG, CTA_FILTER_ORIG_FLAGS, src, FILTER_IP_SRC),
        (CTA_TUPLE_ORIG, CTA_FILTER_ORIG_FLAGS, dst, FILTER_IP_DST),
        (CTA_TUPLE_REPLY, CTA_FILTER_REPLY_FLAGS, src, FILTER_IP_SRC),
        (CTA_TUPLE_REPLY, CTA_FILTER_REPLY_FLAGS, dst, FILTER_IP_DST),
    ] {
        let mut m = msg(IPCTNL_MSG_CT_GET, family, "listing conntrack entries");
        m.begin(CTA_FILTER).u32_ne(flags_kind, flag).end();
        m.begin(dir)
            .begin(CTA_TUPLE_IP)
            .attr(ip, &octets)
            .end()
            .end();
        match sock.dump(m, 4) {
            Ok(entries) => out.extend(entries),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP)) => {
                tracing::debug!("conntrack: no dump filter ({e}); listing the whole table");
                let m = msg(IPCTNL_MSG_CT_GET, family, "listing conntrack entries");
                return sock.dump(m, 4);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Whether `addr` (its `octets`) is an address of either tuple of `entry`.
fn names(entry: &[Attr], octets: &[u8]) -> bool {
    [CTA_TUPLE_ORIG, CTA_TUPLE_REPLY].iter().any(|dir| {
        let Some(tuple) = find(entry, *dir) else {
            return false;
        };
        let Some(ip) = find(&attrs(tuple), CTA_TUPLE_IP).map(attrs) else {
            return false;
        };
        ip.iter().any(|a| {
            matches!(
                a.kind,
                CTA_IP_V4_SRC | CTA_IP_V4_DST | CTA_IP_V6_SRC | CTA_IP_V6_DST
            ) && a.data == octets
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
        let mut m = Msg::new(0, 0, "test");
        m.begin(CTA_TUPLE_IP)
            .attr(CTA_IP_V4_SRC, &src)
            .attr(CTA_IP_V4_DST, &dst)
            .end();
        m.into_body()
    }

    #[test]
    fn an_entry_names_an_address_in_either_tuple() {
        let mut m = Msg::new(0, 0, "test");
        m.attr(CTA_TUPLE_ORIG, &tuple([10, 0, 0, 4], [203, 0, 113, 9]));
        m.attr(CTA_TUPLE_REPLY, &tuple([203, 0, 113, 9], [198, 51, 100, 1]));
        let entry = attrs(&m.into_body());
        assert!(names(&entry, &[10, 0, 0, 4]));
        assert!(names(&entry, &[198, 51, 100, 1]));
        assert!(!names(&entry, &[10, 0, 0, 5]));
    }
}
