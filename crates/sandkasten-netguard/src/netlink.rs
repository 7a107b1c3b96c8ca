//! A small netlink client: a socket of one protocol (route or netfilter),
//! messages built attribute by attribute, several requests sent in one
//! `send` and their acknowledgements read back, and dumps parsed into
//! attributes. Just what the datapath needs; no library, no subprocess.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

pub const NETLINK_ROUTE: i32 = 0;
pub const NETLINK_NETFILTER: i32 = 12;

pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
pub const NLM_F_APPEND: u16 = 0x800;
pub const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
pub const NLA_F_NESTED: u16 = 0x8000;

/// A netlink socket. Requests carry increasing sequence numbers; replies
/// are matched to them.
pub struct Socket {
    fd: OwnedFd,
    seq: u32,
}

impl Socket {
    /// A socket of `protocol` in the calling thread's network namespace,
    /// with a receive timeout so that a kernel that never answers cannot
    /// hang a create.
    pub fn open(protocol: i32) -> io::Result<Socket> {
        // SAFETY: plain socket(2); the fd is owned right away.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                protocol,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let tv = libc::timeval {
            tv_sec: 5,
            tv_usec: 0,
        };
        // SAFETY: a valid timeval of the right size.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as u32,
            );
            // Batches of many set elements can be answered with many acks.
            let buf: i32 = 1 << 20;
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                &buf as *const _ as *const libc::c_void,
                4,
            );
            // Errors come back without the whole request attached.
            let one: i32 = 1;
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_NETLINK,
                libc::NETLINK_CAP_ACK,
                &one as *const _ as *const libc::c_void,
                4,
            );
        }
        Ok(Socket { fd, seq: 1 })
    }

    /// The socket's descriptor, for a reader of messages the kernel sends
    /// by itself (a multicast or NFLOG group).
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn send(&self, buf: &[u8]) -> io::Result<()> {
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: buf and addr are valid for the call.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                buf.as_ptr() as *const libc::c_void,
                buf.len(),
                0,
                &addr as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn recv(&self, buf: &mut Vec<u8>) -> io::Result<()> {
        buf.resize(256 * 1024, 0);
        let n = recv(&self.fd, buf)?;
        buf.truncate(n);
        Ok(())
    }

    /// Sends `msgs` in one write, each asking for an acknowledgement, and
    /// waits for all of them. The first error wins (its errno, with the
    /// message's `what`).
    pub fn transact(&mut self, msgs: Vec<Msg>) -> io::Result<()> {
        let mut out = Vec::new();
        let mut pending = std::collections::HashMap::new();
        for m in msgs {
            let seq = self.next_seq();
            pending.insert(seq, m.what);
            out.extend(m.finish(seq, NLM_F_ACK));
        }
        self.send(&out)?;
        self.await_acks(pending)
    }

    /// Sends an nftables batch: `msgs` between a batch begin and end, one
    /// transaction that the kernel commits whole or not at all.
    pub fn batch(&mut self, msgs: Vec<Msg>) -> io::Result<()> {
        if msgs.is_empty() {
            return Ok(());
        }
        let mut out = Vec::new();
        let begin = self.next_seq();
        out.extend(batch_marker(NFNL_MSG_BATCH_BEGIN).finish(begin, 0));
        let mut pending = std::collections::HashMap::new();
        for m in msgs {
            let seq = self.next_seq();
            pending.insert(seq, m.what);
            out.extend(m.finish(seq, NLM_F_ACK));
        }
        let end = self.next_seq();
        out.extend(batch_marker(NFNL_MSG_BATCH_END).finish(end, 0));
        self.send(&out)?;
        self.await_acks(pending)
    }

    fn await_acks(
        &mut self,
        mut pending: std::collections::HashMap<u32, &'static str>,
    ) -> io::Result<()> {
        let mut first_err: Option<io::Error> = None;
        let mut buf = Vec::new();
        while !pending.is_empty() {
            self.recv(&mut buf)?;
            for (hdr, payload) in messages(&buf) {
                if hdr.kind != NLMSG_ERROR {
                    continue;
                }
                let errno = payload
                    .get(..4)
                    .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
                    .unwrap_or(0);
                match pending.remove(&hdr.seq) {
                    // The errno stays readable (ENODEV, EEXIST); the step
                    // is logged.
                    Some(what) if errno != 0 && first_err.is_none() => {
                        tracing::debug!("netlink: {what} failed with errno {}", -errno);
                        first_err = Some(io::Error::from_raw_os_error(-errno));
                    }
                    // An error for the batch itself: nothing else follows.
                    None if errno != 0 => return Err(io::Error::from_raw_os_error(-errno)),
                    _ => {}
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Sends one request and returns the payload of its reply (a `GET` of
    /// one object).
    pub fn get(&mut self, m: Msg) -> io::Result<Vec<u8>> {
        let seq = self.next_seq();
        self.send(&m.finish(seq, 0))?;
        let mut buf = Vec::new();
        loop {
            self.recv(&mut buf)?;
            for (hdr, payload) in messages(&buf) {
                if hdr.seq != seq {
                    continue;
                }
                if hdr.kind == NLMSG_ERROR {
                    let errno = i32::from_ne_bytes(payload[..4].try_into().unwrap());
                    return Err(io::Error::from_raw_os_error(-errno));
                }
                return Ok(payload.to_vec());
            }
        }
    }

    /// Sends a dump request and returns every reply's payload (after the
    /// family header of `header_len` bytes) as attributes.
    pub fn dump(&mut self, m: Msg, header_len: usize) -> io::Result<Vec<Vec<Attr>>> {
        let seq = self.next_seq();
        self.send(&m.finish(seq, NLM_F_DUMP))?;
        let mut out = Vec::new();
        let mut buf = Vec::new();
        loop {
            self.recv(&mut buf)?;
            for (hdr, payload) in messages(&buf) {
                if hdr.seq != seq {
                    continue;
                }
                match hdr.kind {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let errno = i32::from_ne_bytes(payload[..4].try_into().unwrap());
                        if errno == 0 {
                            return Ok(out);
                        }
                        return Err(io::Error::from_raw_os_error(-errno));
                    }
                    _ => {
                        if payload.len() >= header_len {
                            out.push(attrs(&payload[header_len..]));
                        }
                    }
                }
            }
        }
    }
}

/// One datagram of netlink messages from `fd` into `buf`; its length.
pub(crate) fn recv(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is writable for its length.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
            0,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// A message's header: its type and sequence number.
pub(crate) struct Header {
    pub(crate) kind: u16,
    seq: u32,
}

/// The messages of a datagram: header and payload of each.
pub(crate) fn messages(buf: &[u8]) -> Vec<(Header, &[u8])> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 16 <= buf.len() {
        let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
        if len < 16 || off + len > buf.len() {
            break;
        }
        let kind = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().unwrap());
        let seq = u32::from_ne_bytes(buf[off + 8..off + 12].try_into().unwrap());
        out.push((Header { kind, seq }, &buf[off + 16..off + len]));
        off += align(len);
    }
    out
}

/// One attribute of a reply.
pub struct Attr {
    pub kind: u16,
    pub data: Vec<u8>,
}

/// Parses a run of attributes.
pub fn attrs(mut b: &[u8]) -> Vec<Attr> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let kind = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
        if len < 4 || len > b.len() {
            break;
        }
        out.push(Attr {
            kind,
            data: b[4..len].to_vec(),
        });
        b = &b[align(len).min(b.len())..];
    }
    out
}

/// The attribute `kind` of a parsed run.
pub fn find(a: &[Attr], kind: u16) -> Option<&[u8]> {
    a.iter().find(|x| x.kind == kind).map(|x| x.data.as_slice())
}

/// A string attribute (NUL-terminated on the wire).
pub fn find_str(a: &[Attr], kind: u16) -> Option<String> {
    find(a, kind).map(|d| {
        let end = d.iter().position(|b| *b == 0).unwrap_or(d.len());
        String::from_utf8_lossy(&d[..end]).into_owned()
    })
}

fn align(n: usize) -> usize {
    (n + 3) & !3
}

const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;

fn batch_marker(kind: u16) -> Msg {
    let mut m = Msg::new(kind, NLM_F_REQUEST, "batch");
    // nfgenmsg: family unspec, version 0, res_id = the subsystem (be16).
    m.buf.extend([0u8, 0]);
    m.buf.extend(NFNL_SUBSYS_NFTABLES.to_be_bytes());
    m
}

/// A message being built: a header, a family header, attributes.
pub struct Msg {
    kind: u16,
    flags: u16,
    buf: Vec<u8>,
    nests: Vec<usize>,
    /// What the message does, for error messages.
    what: &'static str,
}

impl Msg {
    pub fn new(kind: u16, flags: u16, what: &'static str) -> Msg {
        Msg {
            kind,
            flags: flags | NLM_F_REQUEST,
            buf: Vec::new(),
            nests: Vec::new(),
            what,
        }
    }

    /// An nftables message of `family` (`nfgenmsg` header).
    pub fn nft(msg: u16, flags: u16, family: u8, what: &'static str) -> Msg {
        let mut m = Msg::new((NFNL_SUBSYS_NFTABLES << 8) | msg, flags, what);
        m.buf.extend([family, 0, 0, 0]);
        m
    }

    /// Appends raw bytes (a family header).
    pub fn raw(mut self, b: &[u8]) -> Msg {
        self.buf.extend_from_slice(b);
        self
    }

    /// Appends raw bytes inside the current nest (a family header that
    /// opens a nested message, as in a veth peer).
    pub fn raw_attr_body(&mut self, b: &[u8]) -> &mut Msg {
        self.buf.extend_from_slice(b);
        self.buf.resize(align(self.buf.len()), 0);
        self
    }

    pub fn attr(&mut self, kind: u16, data: &[u8]) -> &mut Msg {
        let len = 4 + data.len();
        self.buf.extend((len as u16).to_ne_bytes());
        self.buf.extend(kind.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.buf.resize(align(self.buf.len()), 0);
        self
    }

    pub fn str(&mut self, kind: u16, s: &str) -> &mut Msg {
        let mut d = s.as_bytes().to_vec();
        d.push(0);
        self.attr(kind, &d)
    }

    pub fn u32_be(&mut self, kind: u16, v: u32) -> &mut Msg {
        self.attr(kind, &v.to_be_bytes())
    }

    pub fn u32_ne(&mut self, kind: u16, v: u32) -> &mut Msg {
        self.attr(kind, &v.to_ne_bytes())
    }

    /// Opens a nested attribute; [`Msg::end`] closes it.
    pub fn begin(&mut self, kind: u16) -> &mut Msg {
        self.nests.push(self.buf.len());
        self.buf.extend(0u16.to_ne_bytes());
        self.buf.extend((kind | NLA_F_NESTED).to_ne_bytes());
        self
    }

    /// Opens a nested attribute without the `NLA_F_NESTED` flag, as
    /// rtnetlink's link info expects (iproute2's encoding; the veth peer
    /// is refused with the flag).
    pub fn begin_plain(&mut self, kind: u16) -> &mut Msg {
        self.nests.push(self.buf.len());
        self.buf.extend(0u16.to_ne_bytes());
        self.buf.extend(kind.to_ne_bytes());
        self
    }

    pub fn end(&mut self) -> &mut Msg {
        let start = self.nests.pop().expect("end without begin");
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }

    /// The attributes built so far (an expression's, nested by the caller).
    pub fn into_body(self) -> Vec<u8> {
        self.buf
    }

    pub fn clear_flag(&mut self, flag: u16) {
        self.flags &= !flag;
    }

    fn finish(mut self, seq: u32, extra_flags: u16) -> Vec<u8> {
        debug_assert!(self.nests.is_empty(), "unclosed nest in {}", self.what);
        let len = 16 + self.buf.len();
        let mut out = Vec::with_capacity(align(len));
        out.extend((len as u32).to_ne_bytes());
        out.extend(self.kind.to_ne_bytes());
        self.flags |= extra_flags;
        out.extend(self.flags.to_ne_bytes());
        out.extend(seq.to_ne_bytes());
        out.extend(0u32.to_ne_bytes());
        out.append(&mut self.buf);
        out.resize(align(out.len()), 0);
        out
    }
}

const RTM_NEWADDR: u16 = 20;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_FLAGS: u16 = 8;
const IFA_F_NODAD: u32 = 0x02;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;

/// An rtnetlink message giving link `index` the address `addr/prefix`,
/// usable at once (no duplicate address detection), with `flags`
/// (`NLM_F_CREATE | NLM_F_EXCL` adds it).
pub fn addr_nodad(index: i32, addr: std::net::IpAddr, prefix: u8, flags: u16) -> Msg {
    addr_msg(RTM_NEWADDR, index, addr, prefix, flags)
}

fn addr_msg(kind: u16, index: i32, addr: std::net::IpAddr, prefix: u8, flags: u16) -> Msg {
    use std::net::IpAddr;
    let (family, scope, octets) = match addr {
        IpAddr::V4(a) => (libc::AF_INET, RT_SCOPE_UNIVERSE, a.octets().to_vec()),
        IpAddr::V6(a) => {
            let link = a.segments()[0] & 0xffc0 == 0xfe80;
            let scope = if link {
                RT_SCOPE_LINK
            } else {
                RT_SCOPE_UNIVERSE
            };
            (libc::AF_INET6, scope, a.octets().to_vec())
        }
    };
    let mut hdr = [0u8; 8];
    hdr[0] = family as u8;
    hdr[1] = prefix;
    hdr[2] = IFA_F_NODAD as u8;
    hdr[3] = scope;
    hdr[4..8].copy_from_slice(&(index as u32).to_ne_bytes());
    let what = if kind == RTM_NEWADDR {
        "adding an address"
    } else {
        "deleting an address"
    };
    let mut m = Msg::new(kind, flags, what).raw(&hdr);
    m.attr(IFA_LOCAL, &octets);
    m.attr(IFA_ADDRESS, &octets);
    m.u32_ne(IFA_FLAGS, IFA_F_NODAD);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_nest_align_and_parse_back() {
        let mut m = Msg::new(16, 0, "test").raw(&[0; 16]);
        m.str(3, "abc").begin(18).u32_be(1, 7).str(2, "x").end();
        let bytes = m.finish(9, NLM_F_ACK);
        assert_eq!(bytes.len() % 4, 0);
        let (hdr, payload) = &messages(&bytes)[0];
        assert_eq!((hdr.kind, hdr.seq), (16, 9));
        let a = attrs(&payload[16..]);
        assert_eq!(find_str(&a, 3).as_deref(), Some("abc"));
        let nested = attrs(find(&a, 18).unwrap());
        assert_eq!(find(&nested, 1), Some(&7u32.to_be_bytes()[..]));
        assert_eq!(find_str(&nested, 2).as_deref(), Some("x"));
    }
}
