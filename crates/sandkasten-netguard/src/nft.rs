//! The nftables side of the datapath, as netlink messages: the daemon's
//! table (built whole at start, in one transaction), the per-sandbox set
//! elements that a policy becomes, and the two accept rules in Docker's
//! `DOCKER-USER` chain. Layout and reasons: docs/architecture.md,
//! "Sandbox networks".

use crate::netlink::{find, Msg, Socket, NLM_F_APPEND, NLM_F_CREATE, NLM_F_EXCL};
use sandkasten_runtime::IpNet;
use std::io;
use std::net::IpAddr;

// Messages (NFNL_SUBSYS_NFTABLES).
const NEWTABLE: u16 = 0;
const DELTABLE: u16 = 2;
const NEWCHAIN: u16 = 3;
const GETCHAIN: u16 = 4;
const NEWRULE: u16 = 6;
const GETRULE: u16 = 7;
const DELRULE: u16 = 8;
const NEWSET: u16 = 9;
const NEWSETELEM: u16 = 12;
const DELSETELEM: u16 = 14;

pub const INET: u8 = 1;
pub const IPV4: u8 = 2;
pub const IPV6: u8 = 10;

const TABLE_NAME: u16 = 1;
const CHAIN_TABLE: u16 = 1;
const CHAIN_NAME: u16 = 3;
const CHAIN_HOOK: u16 = 4;
const CHAIN_POLICY: u16 = 5;
const CHAIN_TYPE: u16 = 7;
const HOOK_NUM: u16 = 1;
const HOOK_PRIORITY: u16 = 2;
const RULE_TABLE: u16 = 1;
const RULE_CHAIN: u16 = 2;
const RULE_HANDLE: u16 = 3;
const RULE_EXPRESSIONS: u16 = 4;
const RULE_USERDATA: u16 = 7;
const LIST_ELEM: u16 = 1;
const EXPR_NAME: u16 = 1;
const EXPR_DATA: u16 = 2;
const DATA_VALUE: u16 = 1;
const DATA_VERDICT: u16 = 2;
const VERDICT_CODE: u16 = 1;
const VERDICT_CHAIN: u16 = 2;
const SET_TABLE: u16 = 1;
const SET_NAME: u16 = 2;
const SET_FLAGS: u16 = 3;
const SET_KEY_TYPE: u16 = 4;
const SET_KEY_LEN: u16 = 5;
const SET_DESC: u16 = 9;
const SET_ID: u16 = 10;
const SET_DESC_CONCAT: u16 = 2;
const SET_FIELD_LEN: u16 = 1;
const SET_F_INTERVAL: u32 = 0x4;
const SET_F_TIMEOUT: u32 = 0x10;
const SET_F_CONCAT: u32 = 0x80;
const ELEM_LIST_TABLE: u16 = 1;
const ELEM_LIST_SET: u16 = 2;
const ELEM_LIST_ELEMENTS: u16 = 3;
const ELEM_KEY: u16 = 1;
const ELEM_KEY_END: u16 = 10;
const ELEM_TIMEOUT: u16 = 4;

const HOOK_PREROUTING: u32 = 0;
const HOOK_INPUT: u32 = 1;
const HOOK_FORWARD: u32 = 2;
const HOOK_POSTROUTING: u32 = 4;

const REG_VERDICT: u32 = 0;
/// 32-bit register 0 (NFT_REG32_00): concatenations start here.
const REG: u32 = 8;
/// 32-bit register 4: the address after a 16-byte interface name.
const REG_AFTER_IFNAME: u32 = 12;

const ACCEPT: i32 = 1;
const GOTO: i32 = -4;

const META_IIFNAME: u32 = 6;
const META_OIFNAME: u32 = 7;
const META_NFPROTO: u32 = 15;
const META_L4PROTO: u32 = 16;
const CT_STATE: u32 = 0;
const CT_ESTABLISHED_RELATED: u32 = 0x2 | 0x4;
const CMP_EQ: u32 = 0;
const CMP_NEQ: u32 = 1;
const PAYLOAD_NETWORK: u32 = 1;
const PAYLOAD_TRANSPORT: u32 = 2;
const REJECT_TCP_RST: u32 = 1;
const REJECT_ICMPX: u32 = 2;
const ICMPX_ADMIN_PROHIBITED: u8 = 3;

/// Length of an interface name in a set key (IFNAMSIZ).
pub const IFNAME_LEN: usize = 16;

/// The per-sandbox sets of the table: a concatenation of the sandbox's
/// host-side interface and a destination range (pipapo: ranges per
/// field), so one set holds every sandbox's entries.
pub const ALLOW4: &str = "allow4";
pub const DENY4: &str = "deny4";
pub const ALLOW6: &str = "allow6";
pub const DENY6: &str = "deny6";
/// Addresses the daemon's DNS server answered to a sandbox
/// (`ifname . addr`, each with the record's TTL as its timeout: the
/// kernel expires them).
pub const DNS4: &str = "dns4";
pub const DNS6: &str = "dns6";
/// The sandboxes whose policy names hosts (by their IPv4 and their IPv6
/// key): their connections to ports 80 and 443 go to the daemon's proxy.
pub const PROXIED: &str = "proxied";
pub const PROXIED6: &str = "proxied6";

/// Loads a packet's sandbox key (its host-side veth's name, the first
/// field of every set key) into the first register; the register after
/// it.
fn load_key(r: Rule) -> (Rule, u32) {
    (r.meta(META_IIFNAME, REG), REG_AFTER_IFNAME)
}

/// One sandbox's key in the table's sets, per family: its veth's name in
/// both. Without an IPv6 key it has no IPv6 elements.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxKey {
    pub v4: Vec<u8>,
    pub v6: Option<Vec<u8>>,
}

impl SandboxKey {
    /// The key of a sandbox known by its veth (both families).
    pub fn ifname(name: &str) -> SandboxKey {
        let k = ifname_key(name).to_vec();
        SandboxKey {
            v4: k.clone(),
            v6: Some(k),
        }
    }

    fn of(&self, v4: bool) -> Option<&[u8]> {
        if v4 {
            Some(&self.v4)
        } else {
            self.v6.as_deref()
        }
    }
}

/// One rule's expressions.
#[derive(Default)]
struct Rule {
    exprs: Vec<(&'static str, Msg)>,
}

/// An expression's attributes, built on a scratch message.
fn data() -> Msg {
    Msg::new(0, 0, "expr")
}

impl Rule {
    fn push(mut self, name: &'static str, f: impl FnOnce(&mut Msg)) -> Rule {
        let mut m = data();
        f(&mut m);
        self.exprs.push((name, m));
        self
    }

    fn meta(self, key: u32, dreg: u32) -> Rule {
        self.push("meta", |m| {
            m.u32_be(2, key).u32_be(1, dreg);
        })
    }

    fn cmp(self, op: u32, reg: u32, value: &[u8]) -> Rule {
        self.push("cmp", |m| {
            m.u32_be(1, reg).u32_be(2, op);
            m.begin(3).attr(DATA_VALUE, value).end();
        })
    }

    fn payload(self, base: u32, offset: u32, len: u32, dreg: u32) -> Rule {
        self.push("payload", |m| {
            m.u32_be(1, dreg)
                .u32_be(2, base)
                .u32_be(3, offset)
                .u32_be(4, len);
        })
    }

    fn bitwise(self, reg: u32, mask: &[u8]) -> Rule {
        let zero = vec![0u8; mask.len()];
        self.push("bitwise", |m| {
            m.u32_be(1, reg).u32_be(2, reg).u32_be(3, mask.len() as u32);
            m.begin(4).attr(DATA_VALUE, mask).end();
            m.begin(5).attr(DATA_VALUE, &zero).end();
        })
    }

    fn lookup(self, set: &str, sreg: u32) -> Rule {
        self.push("lookup", |m| {
            m.str(1, set).u32_be(2, sreg);
        })
    }

    fn ct_state(self) -> Rule {
        self.push("ct", |m| {
            m.u32_be(2, CT_STATE).u32_be(1, REG);
        })
    }

    fn verdict(self, code: i32, chain: Option<&str>) -> Rule {
        self.push("immediate", |m| {
            m.u32_be(1, REG_VERDICT);
            m.begin(2)
                .begin(DATA_VERDICT)
                .u32_be(VERDICT_CODE, code as u32);
            if let Some(c) = chain {
                m.str(VERDICT_CHAIN, c);
            }
            m.end().end();
        })
    }

    fn accept(self) -> Rule {
        self.verdict(ACCEPT, None)
    }

    fn goto(self, chain: &str) -> Rule {
        self.verdict(GOTO, Some(chain))
    }

    fn reject(self, kind: u32, code: u8) -> Rule {
        self.push("reject", |m| {
            m.u32_be(1, kind);
            m.attr(2, &[code]);
        })
    }

    /// `th dport == port` (after an l4proto match).
    fn dport(self, port: u16) -> Rule {
        self.payload(PAYLOAD_TRANSPORT, 2, 2, REG)
            .cmp(CMP_EQ, REG, &port.to_be_bytes())
    }

    /// `redirect to :port` (to the address of the incoming interface).
    fn redirect(self, port: u16) -> Rule {
        self.push("immediate", |m| {
            m.u32_be(1, REG);
            m.begin(2).attr(DATA_VALUE, &port.to_be_bytes()).end();
        })
        .push("redir", |m| {
            m.u32_be(1, REG).u32_be(2, REG);
        })
    }

    /// `limit rate N/second burst N packets`: the rule goes on only while
    /// under the rate (so it is only ever put in front of a `log`, never a
    /// verdict: over the rate the rule breaks and the next one runs).
    fn limit_per_second(self, rate: u64) -> Rule {
        self.push("limit", |m| {
            m.attr(1, &rate.to_be_bytes())
                .attr(2, &1u64.to_be_bytes())
                .u32_be(3, rate as u32)
                .u32_be(4, 0)
                .u32_be(5, 0);
        })
    }

    /// `log prefix PREFIX group G snaplen N queue-threshold 1`: the
    /// packet's first bytes to NFLOG group `group` at once.
    fn log(self, group: u16, prefix: &str) -> Rule {
        self.push("log", |m| {
            m.attr(1, &group.to_be_bytes())
                .str(2, prefix)
                .u32_be(3, crate::nflog::SNAPLEN)
                .attr(4, &1u16.to_be_bytes());
        })
    }

    fn masquerade(self) -> Rule {
        self.push("masq", |_| {})
    }

    /// Matches interfaces whose name starts with `prefix` (`iifname
    /// "prefix*"`: a compare of the first bytes only).
    fn ifname_prefix(self, key: u32, op: u32, prefix: &str) -> Rule {
        self.meta(key, REG).cmp(op, REG, prefix.as_bytes())
    }

    fn nfproto(self, family: u8) -> Rule {
        self.meta(META_NFPROTO, REG).cmp(CMP_EQ, REG, &[family])
    }

    fn l4proto(self, proto: u8) -> Rule {
        self.meta(META_L4PROTO, REG).cmp(CMP_EQ, REG, &[proto])
    }

    /// `ip daddr`/`ip6 daddr` (or saddr) in `net`.
    fn addr_in(self, net: &IpNet, dest: bool) -> Rule {
        let (family, off, len) = match (net.is_ipv4(), dest) {
            (true, true) => (IPV4, 16, 4),
            (true, false) => (IPV4, 12, 4),
            (false, true) => (IPV6, 24, 16),
            (false, false) => (IPV6, 8, 16),
        };
        let mut mask = vec![0u8; len as usize];
        for bit in 0..net.prefix() as usize {
            mask[bit / 8] |= 0x80 >> (bit % 8);
        }
        self.nfproto(family)
            .payload(PAYLOAD_NETWORK, off, len, REG)
            .bitwise(REG, &mask)
            .cmp(CMP_EQ, REG, &octets(&net.addr()))
    }

    /// `<key> . ip[6] daddr @set`.
    fn in_concat_set(self, set: &str, v4: bool) -> Rule {
        let (family, off, len) = if v4 { (IPV4, 16, 4) } else { (IPV6, 24, 16) };
        let (r, next) = load_key(self.nfproto(family));
        r.payload(PAYLOAD_NETWORK, off, len, next).lookup(set, REG)
    }

    fn msg(self, family: u8, table: &str, chain: &str, userdata: Option<&[u8]>) -> Msg {
        let mut m = Msg::nft(
            NEWRULE,
            NLM_F_CREATE | NLM_F_APPEND,
            family,
            "adding a rule",
        );
        m.str(RULE_TABLE, table).str(RULE_CHAIN, chain);
        m.begin(RULE_EXPRESSIONS);
        for (name, d) in self.exprs {
            m.begin(LIST_ELEM).str(EXPR_NAME, name);
            m.begin(EXPR_DATA).raw_attr_body(&d.into_body()).end();
            m.end();
        }
        m.end();
        if let Some(u) = userdata {
            m.attr(RULE_USERDATA, u);
        }
        m
    }
}

fn octets(a: &IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn chain(table: &str, name: &str, hook: Option<(u32, i32, &str)>) -> Msg {
    chain_of(INET, table, name, hook)
}

fn chain_of(family: u8, table: &str, name: &str, hook: Option<(u32, i32, &str)>) -> Msg {
    let mut m = Msg::nft(NEWCHAIN, NLM_F_CREATE, family, "adding a chain");
    m.str(CHAIN_TABLE, table).str(CHAIN_NAME, name);
    if let Some((num, prio, kind)) = hook {
        m.begin(CHAIN_HOOK)
            .u32_be(HOOK_NUM, num)
            .u32_be(HOOK_PRIORITY, prio as u32)
            .end();
        m.str(CHAIN_TYPE, kind);
        m.u32_be(CHAIN_POLICY, ACCEPT as u32);
    }
    m
}

/// nftables' data type numbers (userspace only: `nft list` shows the
/// sets with them): ifname, ipv4_addr, ipv6_addr; a concatenation is the
/// types shifted by 6 bits each.
const TYPE_IFNAME: u32 = 41;
const TYPE_IPADDR: u32 = 7;
const TYPE_IP6ADDR: u32 = 8;

fn concat_set(table: &str, name: &str, id: u32, addr_len: u32) -> Msg {
    let addr_type = if addr_len == 4 {
        TYPE_IPADDR
    } else {
        TYPE_IP6ADDR
    };
    let mut m = Msg::nft(NEWSET, NLM_F_CREATE, INET, "adding a set");
    m.str(SET_TABLE, table)
        .str(SET_NAME, name)
        .u32_be(SET_FLAGS, SET_F_INTERVAL | SET_F_CONCAT)
        .u32_be(SET_KEY_TYPE, (TYPE_IFNAME << 6) | addr_type)
        .u32_be(SET_KEY_LEN, IFNAME_LEN as u32 + addr_len)
        .u32_be(SET_ID, id);
    m.begin(SET_DESC).begin(SET_DESC_CONCAT);
    for len in [IFNAME_LEN as u32, addr_len] {
        m.begin(LIST_ELEM).u32_be(SET_FIELD_LEN, len).end();
    }
    m.end().end();
    m
}

/// A hash set of `<key> . addr` keys with per-element timeouts.
fn timeout_set(table: &str, name: &str, id: u32, addr_len: u32) -> Msg {
    let addr_type = if addr_len == 4 {
        TYPE_IPADDR
    } else {
        TYPE_IP6ADDR
    };
    let mut m = Msg::nft(NEWSET, NLM_F_CREATE, INET, "adding a set");
    m.str(SET_TABLE, table)
        .str(SET_NAME, name)
        .u32_be(SET_FLAGS, SET_F_TIMEOUT)
        .u32_be(SET_KEY_TYPE, (TYPE_IFNAME << 6) | addr_type)
        .u32_be(SET_KEY_LEN, IFNAME_LEN as u32 + addr_len)
        .u32_be(SET_ID, id);
    m
}

/// A hash set of sandbox keys (veth names).
fn key_set(table: &str, name: &str, id: u32) -> Msg {
    let mut m = Msg::nft(NEWSET, NLM_F_CREATE, INET, "adding a set");
    m.str(SET_TABLE, table)
        .str(SET_NAME, name)
        .u32_be(SET_FLAGS, 0)
        .u32_be(SET_KEY_TYPE, TYPE_IFNAME)
        .u32_be(SET_KEY_LEN, IFNAME_LEN as u32)
        .u32_be(SET_ID, id);
    m
}

/// The ports of the daemon's DNS server and proxy (on the gateway
/// address), where it has them, and the NFLOG group its record of the
/// datapath's refusals reads (none where the kernel lacks NFLOG).
#[derive(Clone, Copy)]
pub struct GuardPorts {
    pub dns: u16,
    pub proxy: u16,
    pub log_group: Option<u16>,
}

/// Why the datapath refused a sandbox's packet: each has its chain, which
/// logs the packet (with the reason's prefix, rate-limited) and refuses it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Refusal {
    /// Another sandbox, or the sandboxes' own networks.
    Sandbox,
    /// `network.deny_always`.
    Always,
    /// The sandbox's `deny_out`.
    DenyOut,
    /// Neither in `allow_out` nor answered by the DNS server.
    NotAllowed,
    /// The host itself (not its DNS server or proxy).
    Host,
}

impl Refusal {
    pub const ALL: [Refusal; 5] = [
        Refusal::Sandbox,
        Refusal::Always,
        Refusal::DenyOut,
        Refusal::NotAllowed,
        Refusal::Host,
    ];

    /// The NFLOG prefix of its log rule, which names it.
    pub fn prefix(self) -> &'static str {
        match self {
            Refusal::Sandbox => "sk:sandbox",
            Refusal::Always => "sk:always",
            Refusal::DenyOut => "sk:deny_out",
            Refusal::NotAllowed => "sk:not_allowed",
            Refusal::Host => "sk:host",
        }
    }

    pub fn from_prefix(prefix: &str) -> Option<Refusal> {
        Refusal::ALL.into_iter().find(|r| r.prefix() == prefix)
    }

    /// The reason a denial of it is recorded with (the DNS server's and
    /// the proxy's words where they mean the same).
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Sandbox => "the destination is another sandbox",
            Refusal::Always => "the destination is always denied (network.deny_always)",
            Refusal::DenyOut => "denied by deny_out",
            Refusal::NotAllowed => "not in allow_out and not resolved for the sandbox",
            Refusal::Host => "the destination is the host itself",
        }
    }

    fn chain(self) -> &'static str {
        match self {
            Refusal::Sandbox => "refuse_sandbox",
            Refusal::Always => "refuse_always",
            Refusal::DenyOut => "refuse_deny_out",
            Refusal::NotAllowed => "refuse_not_allowed",
            Refusal::Host => "refuse_host",
        }
    }
}

/// Logged refusals per second, per reason, for all sandboxes together (a
/// flood is refused whole but recorded at this rate: the record costs the
/// daemon bounded work).
pub const LOG_RATE: u64 = 200;

/// What the table is built from.
pub struct Layout<'a> {
    pub table: &'a str,
    /// Matches the interfaces this daemon's sandboxes come in by, as a
    /// prefix of their names: every host-side veth of this daemon.
    pub prefix: &'a str,
    /// Prefix of every sandbox veth of any daemon (sandboxes of other
    /// daemons on the host are refused too).
    pub any_prefix: &'a str,
    /// The sandboxes' own networks (masqueraded; never a destination).
    pub subnets: &'a [IpNet],
    /// `network.deny_always`.
    pub deny_always: &'a [IpNet],
    /// The DNS server and proxy sandboxes are sent to.
    pub guard: Option<GuardPorts>,
}

/// The whole table, replacing any previous one of the same name in the
/// same transaction (`add; delete; add`: no moment without rules).
pub fn table(l: &Layout) -> Vec<Msg> {
    let t = l.table;
    let mut out = Vec::new();
    let add_table = || {
        let mut m = Msg::nft(NEWTABLE, NLM_F_CREATE, INET, "adding the table");
        m.str(TABLE_NAME, t);
        m
    };
    out.push(add_table());
    let mut del = Msg::nft(DELTABLE, 0, INET, "replacing the table");
    del.str(TABLE_NAME, t);
    out.push(del);
    out.push(add_table());
    out.push(concat_set(t, ALLOW4, 1, 4));
    out.push(concat_set(t, DENY4, 2, 4));
    out.push(concat_set(t, ALLOW6, 3, 16));
    out.push(concat_set(t, DENY6, 4, 16));
    out.push(timeout_set(t, DNS4, 5, 4));
    out.push(timeout_set(t, DNS6, 6, 16));
    out.push(key_set(t, PROXIED, 7));
    out.push(key_set(t, PROXIED6, 8));
    out.push(chain(t, "refuse", None));
    // Where a sandbox's packet is refused for a reason: logged there when
    // the guard records (to its NFLOG group), then refused.
    let log_group = l.guard.and_then(|g| g.log_group);
    let refuse = |why: Refusal| match log_group {
        Some(_) => why.chain(),
        None => "refuse",
    };
    if let Some(group) = log_group {
        for why in Refusal::ALL {
            out.push(chain(t, why.chain(), None));
            if why == Refusal::Host {
                // Neighbour and router solicitations, multicast listener
                // reports: a link's chatter, not an agent's attempt.
                out.push(
                    Rule::default()
                        .l4proto(libc::IPPROTO_ICMPV6 as u8)
                        .goto("refuse")
                        .msg(INET, t, why.chain(), None),
                );
            }
            out.push(
                Rule::default()
                    .limit_per_second(LOG_RATE)
                    .log(group, why.prefix())
                    .msg(INET, t, why.chain(), None),
            );
            out.push(
                Rule::default()
                    .goto("refuse")
                    .msg(INET, t, why.chain(), None),
            );
        }
    }
    out.push(chain(t, "from_sandbox", None));
    // Before Docker's `ip filter` FORWARD (priority 0): a refusal here is
    // a reset or an ICMP error, never Docker's silent drop (its policy, or
    // its rule against traffic between containers of one bridge).
    out.push(chain(t, "forward", Some((HOOK_FORWARD, -1, "filter"))));
    out.push(chain(t, "input", Some((HOOK_INPUT, 0, "filter"))));
    out.push(chain(
        t,
        "postrouting",
        Some((HOOK_POSTROUTING, 100, "nat")),
    ));
    out.push(chain(t, "prerouting", Some((HOOK_PREROUTING, -100, "nat"))));
    // Refusals are immediate: a TCP reset, else ICMP administratively
    // prohibited (host unreachable for the client).
    out.push(
        Rule::default()
            .l4proto(libc::IPPROTO_TCP as u8)
            .reject(REJECT_TCP_RST, 0)
            .msg(INET, t, "refuse", None),
    );
    out.push(
        Rule::default()
            .reject(REJECT_ICMPX, ICMPX_ADMIN_PROHIBITED)
            .msg(INET, t, "refuse", None),
    );
    // forward: replies of allowed connections pass; new connections from
    // a sandbox are judged by its policy; new connections to one refused.
    out.push(
        Rule::default()
            .ct_state()
            .bitwise(REG, &CT_ESTABLISHED_RELATED.to_ne_bytes())
            .cmp(CMP_NEQ, REG, &0u32.to_ne_bytes())
            .ifname_prefix(META_IIFNAME, CMP_EQ, l.prefix)
            .accept()
            .msg(INET, t, "forward", None),
    );
    out.push(
        Rule::default()
            .ct_state()
            .bitwise(REG, &CT_ESTABLISHED_RELATED.to_ne_bytes())
            .cmp(CMP_NEQ, REG, &0u32.to_ne_bytes())
            .ifname_prefix(META_OIFNAME, CMP_EQ, l.prefix)
            .accept()
            .msg(INET, t, "forward", None),
    );
    out.push(
        Rule::default()
            .ifname_prefix(META_IIFNAME, CMP_EQ, l.prefix)
            .goto("from_sandbox")
            .msg(INET, t, "forward", None),
    );
    out.push(
        Rule::default()
            .ifname_prefix(META_OIFNAME, CMP_EQ, l.prefix)
            .goto("refuse")
            .msg(INET, t, "forward", None),
    );
    // from_sandbox, in order: other sandboxes, the always-denied ranges,
    // the sandbox's deny_out, then what it may reach.
    out.push(
        Rule::default()
            .ifname_prefix(META_OIFNAME, CMP_EQ, l.any_prefix)
            .goto(refuse(Refusal::Sandbox))
            .msg(INET, t, "from_sandbox", None),
    );
    let ranges = (l.subnets.iter().map(|n| (n, Refusal::Sandbox)))
        .chain(l.deny_always.iter().map(|n| (n, Refusal::Always)));
    for (net, why) in ranges {
        out.push(Rule::default().addr_in(net, true).goto(refuse(why)).msg(
            INET,
            t,
            "from_sandbox",
            None,
        ));
    }
    for (set, v4) in [(DENY4, true), (DENY6, false)] {
        out.push(
            Rule::default()
                .in_concat_set(set, v4)
                .goto(refuse(Refusal::DenyOut))
                .msg(INET, t, "from_sandbox", None),
        );
    }
    for (set, v4) in [(ALLOW4, true), (ALLOW6, false)] {
        out.push(Rule::default().in_concat_set(set, v4).accept().msg(
            INET,
            t,
            "from_sandbox",
            None,
        ));
    }
    // What the daemon's DNS server answered the sandbox, until the TTL.
    for (set, v4) in [(DNS4, true), (DNS6, false)] {
        out.push(Rule::default().in_concat_set(set, v4).accept().msg(
            INET,
            t,
            "from_sandbox",
            None,
        ));
    }
    out.push(
        Rule::default()
            .goto(refuse(Refusal::NotAllowed))
            .msg(INET, t, "from_sandbox", None),
    );
    // input: a sandbox reaches nothing of the host but IPv6 neighbour
    // discovery of its gateway and the daemon's DNS server and proxy
    // (reached through the redirects of prerouting).
    if let Some(g) = l.guard {
        for (proto, port) in [
            (libc::IPPROTO_UDP, g.dns),
            (libc::IPPROTO_TCP, g.dns),
            (libc::IPPROTO_TCP, g.proxy),
        ] {
            out.push(
                Rule::default()
                    .ifname_prefix(META_IIFNAME, CMP_EQ, l.prefix)
                    .l4proto(proto as u8)
                    .dport(port)
                    .accept()
                    .msg(INET, t, "input", None),
            );
        }
    }
    out.extend(neighbour_discovery(META_IIFNAME, l.prefix, t, "input"));
    out.push(
        Rule::default()
            .ifname_prefix(META_IIFNAME, CMP_EQ, l.prefix)
            .goto(refuse(Refusal::Host))
            .msg(INET, t, "input", None),
    );
    // postrouting: the sandboxes' addresses leave through the uplink
    // masqueraded.
    for net in l.subnets {
        out.push(
            Rule::default()
                .addr_in(net, false)
                .ifname_prefix(META_OIFNAME, CMP_NEQ, l.any_prefix)
                .masquerade()
                .msg(INET, t, "postrouting", None),
        );
    }
    // prerouting: a sandbox's DNS goes to the daemon's server, whatever
    // address it asks; ports 80 and 443 of sandboxes whose policy names
    // hosts go to the daemon's proxy (which checks the SNI / Host).
    if let Some(g) = l.guard {
        for proto in [libc::IPPROTO_UDP, libc::IPPROTO_TCP] {
            out.push(
                Rule::default()
                    .ifname_prefix(META_IIFNAME, CMP_EQ, l.prefix)
                    .l4proto(proto as u8)
                    .dport(53)
                    .redirect(g.dns)
                    .msg(INET, t, "prerouting", None),
            );
        }
        for (set, family) in [(PROXIED, IPV4), (PROXIED6, IPV6)] {
            for port in [80u16, 443] {
                let (r, _) = load_key(
                    Rule::default()
                        .ifname_prefix(META_IIFNAME, CMP_EQ, l.prefix)
                        .nfproto(family),
                );
                out.push(
                    r.lookup(set, REG)
                        .l4proto(libc::IPPROTO_TCP as u8)
                        .dport(port)
                        .redirect(g.proxy)
                        .msg(INET, t, "prerouting", None),
                );
            }
        }
    }
    out
}

/// Rules in `chain` accepting IPv6 neighbour solicitations and
/// advertisements whose interface (`meta`: in or out) is one of `prefix`.
fn neighbour_discovery(meta: u32, prefix: &str, table: &str, chain: &str) -> Vec<Msg> {
    [135u8, 136]
        .into_iter()
        .map(|icmp_type| {
            Rule::default()
                .ifname_prefix(meta, CMP_EQ, prefix)
                .l4proto(libc::IPPROTO_ICMPV6 as u8)
                .payload(PAYLOAD_TRANSPORT, 0, 1, REG)
                .cmp(CMP_EQ, REG, &[icmp_type])
                .accept()
                .msg(INET, table, chain, None)
        })
        .collect()
}

/// Deletes the table (nothing of this daemon's rules remains).
pub fn delete_table(table: &str) -> Vec<Msg> {
    delete_table_of(INET, table)
}

fn delete_table_of(family: u8, table: &str) -> Vec<Msg> {
    let mut add = Msg::nft(NEWTABLE, NLM_F_CREATE, family, "adding the table");
    add.str(TABLE_NAME, table);
    let mut del = Msg::nft(DELTABLE, 0, family, "deleting the table");
    del.str(TABLE_NAME, table);
    vec![add, del]
}

/// An interface name as a set key field.
pub fn ifname_key(name: &str) -> [u8; IFNAME_LEN] {
    let mut k = [0u8; IFNAME_LEN];
    k[..name.len()].copy_from_slice(name.as_bytes());
    k
}

/// The set elements of one sandbox's policy (sets and keys); the same
/// list adds them and deletes them.
pub struct Elements {
    /// (set, key, key_end)
    pub items: Vec<(&'static str, Vec<u8>, Vec<u8>)>,
}

impl Elements {
    /// A sandbox whose `allow_out` is empty (`open`: everything not
    /// denied) allows the whole address space of both families (of IPv4
    /// alone where it has no IPv6 key: sandboxes without IPv6).
    pub fn new(key: &SandboxKey, open: bool, allow: &[IpNet], deny: &[IpNet]) -> Elements {
        let mut items = Vec::new();
        let everything: Vec<IpNet> = ["0.0.0.0/0", "::/0"]
            .iter()
            .map(|s| s.parse().expect("a valid range"))
            .collect();
        let allow = if open { &everything[..] } else { allow };
        for (list, v4set, v6set) in [(allow, ALLOW4, ALLOW6), (deny, DENY4, DENY6)] {
            for net in list {
                let Some(name) = key.of(net.is_ipv4()) else {
                    continue;
                };
                let set = if net.is_ipv4() { v4set } else { v6set };
                let mut start = name.to_vec();
                start.extend(octets(&net.first()));
                let mut end = name.to_vec();
                end.extend(octets(&net.last()));
                items.push((set, start, end));
            }
        }
        Elements { items }
    }

    /// Messages adding (`add`) or deleting these elements, one per set.
    pub fn msgs(&self, table: &str, add: bool) -> Vec<Msg> {
        let mut out = Vec::new();
        for set in [ALLOW4, DENY4, ALLOW6, DENY6] {
            let mine: Vec<_> = self.items.iter().filter(|i| i.0 == set).collect();
            if mine.is_empty() {
                continue;
            }
            let mut m = if add {
                Msg::nft(
                    NEWSETELEM,
                    NLM_F_CREATE | NLM_F_EXCL,
                    INET,
                    "adding set elements",
                )
            } else {
                Msg::nft(DELSETELEM, 0, INET, "deleting set elements")
            };
            m.str(ELEM_LIST_TABLE, table).str(ELEM_LIST_SET, set);
            m.begin(ELEM_LIST_ELEMENTS);
            for (_, key, end) in mine {
                m.begin(LIST_ELEM);
                m.begin(ELEM_KEY).attr(DATA_VALUE, key).end();
                m.begin(ELEM_KEY_END).attr(DATA_VALUE, end).end();
                m.end();
            }
            m.end();
            out.push(m);
        }
        out
    }
}

/// One element of `set`: added (with `timeout_ms` where the set takes
/// timeouts; no EXCL, so one already there is no error) or deleted.
fn one_element(table: &str, set: &str, key: &[u8], add: bool, timeout_ms: Option<u64>) -> Msg {
    let mut m = if add {
        Msg::nft(NEWSETELEM, NLM_F_CREATE, INET, "adding a set element")
    } else {
        Msg::nft(DELSETELEM, 0, INET, "deleting a set element")
    };
    m.str(ELEM_LIST_TABLE, table).str(ELEM_LIST_SET, set);
    m.begin(ELEM_LIST_ELEMENTS).begin(LIST_ELEM);
    m.begin(ELEM_KEY).attr(DATA_VALUE, key).end();
    if let Some(t) = timeout_ms {
        m.attr(ELEM_TIMEOUT, &t.to_be_bytes());
    }
    m.end().end();
    m
}

/// The DNS-learned set of `addr`'s family and its key `<sandbox> . addr`
/// (none for an IPv6 address of a sandbox without IPv6).
fn dns_key(sandbox: &SandboxKey, addr: &IpAddr) -> Option<(&'static str, Vec<u8>)> {
    let mut key = sandbox.of(addr.is_ipv4())?.to_vec();
    key.extend(octets(addr));
    Some((if addr.is_ipv4() { DNS4 } else { DNS6 }, key))
}

/// Adds `<sandbox> . addr` to the DNS-learned set of its family for `ttl`
/// (an element already there is refreshed where the kernel updates
/// timeouts on re-add); none where the sandbox has no key of that family
/// (it cannot connect there anyway).
pub fn dns_element(table: &str, sandbox: &SandboxKey, addr: &IpAddr, ttl_ms: u64) -> Option<Msg> {
    let (set, key) = dns_key(sandbox, addr)?;
    Some(one_element(table, set, &key, true, Some(ttl_ms)))
}

/// Deletes `<sandbox> . addr` from the DNS-learned set of its family.
pub fn dns_element_delete(table: &str, sandbox: &SandboxKey, addr: &IpAddr) -> Option<Msg> {
    let (set, key) = dns_key(sandbox, addr)?;
    Some(one_element(table, set, &key, false, None))
}

/// Deletes the DNS-learned elements `<sandbox> . addr` of `addrs`, each in
/// its own batch: one the kernel has just expired must not fail the
/// others.
pub fn delete_dns_elements(
    sock: &mut Socket,
    table: &str,
    sandbox: &SandboxKey,
    addrs: impl IntoIterator<Item = IpAddr>,
) {
    for a in addrs {
        if let Some(m) = dns_element_delete(table, sandbox, &a) {
            let _ = sock.batch(vec![m]);
        }
    }
}

/// Adds (or deletes) a sandbox's keys in the proxied sets.
pub fn proxied_elements(table: &str, sandbox: &SandboxKey, add: bool) -> Vec<Msg> {
    let mut out = vec![one_element(table, PROXIED, &sandbox.v4, add, None)];
    if let Some(k) = &sandbox.v6 {
        out.push(one_element(table, PROXIED6, k, add, None));
    }
    out
}

/// Docker's chain where users add rules (`DOCKER-USER` of `ip filter` and
/// `ip6 filter`), if it exists.
const DOCKER_TABLE: &str = "filter";
const DOCKER_CHAIN: &str = "DOCKER-USER";

fn docker_chain_exists(sock: &mut Socket, family: u8) -> io::Result<bool> {
    let mut m = Msg::nft(GETCHAIN, 0, family, "finding DOCKER-USER");
    m.str(CHAIN_TABLE, DOCKER_TABLE)
        .str(CHAIN_NAME, DOCKER_CHAIN);
    match sock.get(m) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The userdata that marks our rules in Docker's chain: an iptables
/// comment (type 0, length, text), so `iptables -S` shows it.
fn marker(tag: &str) -> Vec<u8> {
    let text = format!("sandkasten {tag}\0");
    let mut u = vec![0u8, text.len() as u8];
    u.extend(text.as_bytes());
    u
}

/// Messages deleting our marked rules from Docker's chains.
pub fn docker_cleanup(sock: &mut Socket, tag: &str) -> io::Result<Vec<Msg>> {
    let mark = marker(tag);
    let mut out = Vec::new();
    for family in [IPV4, IPV6] {
        if !docker_chain_exists(sock, family)? {
            continue;
        }
        let mut q = Msg::nft(GETRULE, 0, family, "listing DOCKER-USER");
        q.str(RULE_TABLE, DOCKER_TABLE)
            .str(RULE_CHAIN, DOCKER_CHAIN);
        for rule in sock.dump(q, 4)? {
            let chain = crate::netlink::find_str(&rule, RULE_CHAIN);
            if chain.as_deref() != Some(DOCKER_CHAIN)
                || find(&rule, RULE_USERDATA) != Some(&mark[..])
            {
                continue;
            }
            if let Some(h) = find(&rule, RULE_HANDLE) {
                let mut d = Msg::nft(DELRULE, 0, family, "deleting an old DOCKER-USER rule");
                d.str(RULE_TABLE, DOCKER_TABLE)
                    .str(RULE_CHAIN, DOCKER_CHAIN)
                    .attr(RULE_HANDLE, h);
                out.push(d);
            }
        }
    }
    Ok(out)
}

/// Rules that let our sandboxes' forwarded traffic past Docker's FORWARD
/// policy drop (a drop in any base chain of a hook drops the packet, so
/// our own table's accept is not enough): `iifname/oifname "prefix*"
/// accept` at the head of `DOCKER-USER`. Our table still judges every
/// packet. Empty where Docker has no such chain.
pub fn docker_accept(sock: &mut Socket, tag: &str, prefix: &str) -> io::Result<Vec<Msg>> {
    let mark = marker(tag);
    let mut out = Vec::new();
    for family in [IPV4, IPV6] {
        if !docker_chain_exists(sock, family)? {
            continue;
        }
        for key in [META_IIFNAME, META_OIFNAME] {
            let mut m = Rule::default()
                .ifname_prefix(key, CMP_EQ, prefix)
                .accept()
                .msg(family, DOCKER_TABLE, DOCKER_CHAIN, Some(&mark));
            // Insert at the head (no APPEND): before Docker's RETURN.
            m.clear_flag(NLM_F_APPEND);
            out.push(m);
        }
    }
    Ok(out)
}

/// Folds CIDRs contained in others, so that the ranges of one set never
/// overlap (the kernel refuses overlapping intervals).
pub fn disjoint(mut nets: Vec<IpNet>) -> Vec<IpNet> {
    nets.sort_by_key(|n| n.prefix());
    let mut out: Vec<IpNet> = Vec::new();
    for n in nets {
        if !out.iter().any(|o| o.covers(&n)) {
            out.push(n);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contained_ranges_fold_so_set_intervals_never_overlap() {
        let n = |s: &str| s.parse::<IpNet>().unwrap();
        let out = disjoint(vec![
            n("203.0.113.7"),
            n("203.0.113.0/24"),
            n("198.51.100.1"),
        ]);
        assert_eq!(out, vec![n("203.0.113.0/24"), n("198.51.100.1")]);
    }
}
