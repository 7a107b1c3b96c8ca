//! A sandbox's outbound network policy as plain types: its mode, the
//! entries it allows and denies (domains, wildcards, addresses, CIDRs),
//! their parsing with messages that name the entry, and the compact text
//! form the store keeps. What an operator allows is the engine's business
//! (`sandkasten_engine::network`); how a backend enforces it, the
//! backend's.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::NetworkMode;

/// Most entries one list (`allow_out`, `deny_out`) may hold.
pub const MAX_ENTRIES: usize = 256;

/// An IPv4 or IPv6 network: an address and a prefix length, host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// `addr/prefix`; `None` when the prefix is too long or host bits are set.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<IpNet> {
        let net = IpNet { addr, prefix };
        (prefix <= net.max_prefix() && net.first() == addr).then_some(net)
    }

    /// The network of one address (`/32`, `/128`).
    pub fn host(addr: IpAddr) -> IpNet {
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        IpNet { addr, prefix }
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    fn max_prefix(&self) -> u8 {
        if self.addr.is_ipv4() {
            32
        } else {
            128
        }
    }

    fn bits(addr: IpAddr) -> u128 {
        match addr {
            IpAddr::V4(a) => u32::from(a) as u128,
            IpAddr::V6(a) => u128::from(a),
        }
    }

    fn addr_of(&self, v: u128) -> IpAddr {
        match self.addr {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(v as u32)),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(v)),
        }
    }

    /// The mask of the host part, as bits of the address's width.
    fn host_mask(&self) -> u128 {
        let width = self.max_prefix() as u32;
        let host = width - self.prefix as u32;
        if host == 0 {
            0
        } else if host >= 128 {
            u128::MAX
        } else {
            (1u128 << host) - 1
        }
    }

    /// The first address of the network.
    pub fn first(&self) -> IpAddr {
        self.addr_of(Self::bits(self.addr) & !self.host_mask())
    }

    /// The last address of the network.
    pub fn last(&self) -> IpAddr {
        self.addr_of(Self::bits(self.addr) | self.host_mask())
    }

    /// Whether `addr` lies in this network.
    pub fn contains(&self, addr: IpAddr) -> bool {
        addr.is_ipv4() == self.addr.is_ipv4()
            && Self::bits(addr) & !self.host_mask() == Self::bits(self.addr)
    }

    /// Whether the two networks share an address (CIDRs either nest or are
    /// disjoint).
    pub fn overlaps(&self, other: &IpNet) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }

    /// Whether `other` lies wholly inside this network.
    pub fn covers(&self, other: &IpNet) -> bool {
        self.prefix <= other.prefix && self.contains(other.addr)
    }

    /// The `n`-th address of the network (`None` past its end).
    pub fn nth(&self, n: u128) -> Option<IpAddr> {
        (n <= self.host_mask()).then(|| self.addr_of(Self::bits(self.addr) + n))
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl std::str::FromStr for IpNet {
    type Err = String;

    /// `a.b.c.d/n`, `x::y/n`, or a bare address (its host network).
    fn from_str(s: &str) -> Result<IpNet, String> {
        let Some((a, p)) = s.split_once('/') else {
            return s
                .parse::<IpAddr>()
                .map(IpNet::host)
                .map_err(|_| format!("{s:?} is not an IP address or CIDR"));
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{s:?}: {a:?} is not an IP address"))?;
        let prefix: u8 = p
            .parse()
            .ok()
            .filter(|p: &u8| *p <= if addr.is_ipv4() { 32 } else { 128 })
            .ok_or_else(|| format!("{s:?}: the prefix length {p:?} is out of range"))?;
        IpNet::new(addr, prefix).ok_or_else(|| {
            let net = IpNet { addr, prefix };
            format!(
                "{s:?} has host bits set (the network is {}/{prefix})",
                net.first()
            )
        })
    }
}

/// One entry of `allow_out` or `deny_out`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NetEntry {
    /// A host name (`pypi.org`), lower case, without a trailing dot.
    Domain(String),
    /// Every name below a domain (`*.github.com`; the domain itself not),
    /// stored without the `*.`.
    Wildcard(String),
    /// An address or a CIDR.
    Net(IpNet),
}

impl NetEntry {
    /// Parses an entry; the error names it and says what is wrong.
    pub fn parse(s: &str) -> Result<NetEntry, String> {
        let t = s.trim();
        if t.is_empty() {
            return Err("an empty entry".into());
        }
        if t.len() > 253 + 2 {
            return Err(format!("{:?}…: longer than a host name can be", &t[..32]));
        }
        if t.contains(':') || t.contains('/') || t.parse::<Ipv4Addr>().is_ok() {
            return t.parse::<IpNet>().map(NetEntry::Net);
        }
        if let Some(rest) = t.strip_prefix("*.") {
            return check_domain(rest)
                .map(NetEntry::Wildcard)
                .map_err(|why| format!("{s:?}: {why}"));
        }
        if t.contains('*') {
            return Err(format!(
                "{s:?}: a wildcard is only allowed as the whole first label (\"*.example.com\")"
            ));
        }
        check_domain(t)
            .map(NetEntry::Domain)
            .map_err(|why| format!("{s:?}: {why}"))
    }

    /// The network of an address or CIDR entry.
    pub fn net(&self) -> Option<&IpNet> {
        match self {
            NetEntry::Net(n) => Some(n),
            _ => None,
        }
    }
}

impl fmt::Display for NetEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetEntry::Domain(d) => f.write_str(d),
            NetEntry::Wildcard(d) => write!(f, "*.{d}"),
            NetEntry::Net(n) if n.prefix() == n.max_prefix() => write!(f, "{}", n.addr()),
            NetEntry::Net(n) => write!(f, "{n}"),
        }
    }
}

/// A host name: at least two labels of letters, digits and inner hyphens
/// (1–63 characters each), at most 253 characters, a last label that is
/// not all digits. Returns it lower case without a trailing dot.
fn check_domain(s: &str) -> Result<String, &'static str> {
    let d = s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase();
    if d.is_empty() || d.len() > 253 {
        return Err("a host name has 1 to 253 characters");
    }
    let labels: Vec<&str> = d.split('.').collect();
    if labels.len() < 2 {
        return Err("a host name needs at least two labels (\"example.com\")");
    }
    for l in &labels {
        if l.is_empty() || l.len() > 63 {
            return Err("every label of a host name has 1 to 63 characters");
        }
        if l.contains('*') {
            return Err("a wildcard is only allowed as the whole first label (\"*.example.com\")");
        }
        if !l
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("a host name has only letters, digits, '-' and '_' in its labels");
        }
        if l.starts_with('-') || l.ends_with('-') {
            return Err("a label of a host name neither starts nor ends with '-'");
        }
    }
    if labels[labels.len() - 1].bytes().all(|b| b.is_ascii_digit()) {
        return Err("neither an IP address nor a host name (the last label is numeric)");
    }
    Ok(d)
}

/// A sandbox's outbound policy. `Full` with an empty `allow_out` reaches
/// everything not denied; with entries, only those. `deny_out` wins over
/// `allow_out`. `None` has no outbound network at all (loopback only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkPolicy {
    pub mode: NetworkMode,
    pub allow_out: Vec<NetEntry>,
    pub deny_out: Vec<NetEntry>,
}

impl NetworkPolicy {
    /// No network: loopback only.
    pub fn none() -> NetworkPolicy {
        NetworkPolicy {
            mode: NetworkMode::None,
            allow_out: Vec::new(),
            deny_out: Vec::new(),
        }
    }

    /// Whether the sandbox has an outbound link.
    pub fn is_full(&self) -> bool {
        self.mode == NetworkMode::Full
    }

    /// The one-line form the store keeps: `full allow=a,b deny=c`.
    pub fn to_text(&self) -> String {
        let list = |v: &[NetEntry]| {
            v.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        format!(
            "{} allow={} deny={}",
            match self.mode {
                NetworkMode::None => "none",
                NetworkMode::Full => "full",
            },
            list(&self.allow_out),
            list(&self.deny_out)
        )
    }

    /// Reads [`NetworkPolicy::to_text`] back.
    pub fn from_text(s: &str) -> Result<NetworkPolicy, String> {
        let mut parts = s.split(' ');
        let mode = match parts.next() {
            Some("none") => NetworkMode::None,
            Some("full") => NetworkMode::Full,
            other => return Err(format!("unknown network mode {other:?}")),
        };
        let list = |p: Option<&str>, key: &str| -> Result<Vec<NetEntry>, String> {
            let v = p
                .and_then(|p| p.strip_prefix(key))
                .ok_or_else(|| format!("missing {key} in {s:?}"))?;
            v.split(',')
                .filter(|e| !e.is_empty())
                .map(NetEntry::parse)
                .collect()
        };
        Ok(NetworkPolicy {
            mode,
            allow_out: list(parts.next(), "allow=")?,
            deny_out: list(parts.next(), "deny=")?,
        })
    }
}

/// A name or connection a sandbox's policy refused (recorded by the
/// daemon's DNS server and proxy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkDenial {
    pub at: std::time::SystemTime,
    /// What was asked for: a name, or `address:port`.
    pub destination: String,
    /// The host name involved, where one is known.
    pub name: Option<String>,
    pub reason: String,
}

/// The ranges no sandbox may reach unless an operator lifts them: the
/// `network.deny_always` default. (The host's own addresses and the other
/// sandboxes are refused by the datapath whatever this list says.)
pub fn default_deny_always() -> Vec<IpNet> {
    [
        "0.0.0.0/8",      // "this network"
        "10.0.0.0/8",     // RFC 1918
        "100.64.0.0/10",  // carrier-grade NAT (RFC 6598)
        "127.0.0.0/8",    // loopback
        "169.254.0.0/16", // link-local, cloud metadata (169.254.169.254)
        "172.16.0.0/12",  // RFC 1918
        "192.168.0.0/16", // RFC 1918
        "192.0.0.0/24",   // IETF protocol assignments
        "198.18.0.0/15",  // benchmarking
        "224.0.0.0/4",    // multicast
        "240.0.0.0/4",    // reserved, broadcast
        "::/128",         // unspecified
        "::1/128",        // loopback
        "::ffff:0:0/96",  // IPv4-mapped (would reach IPv4 ranges above)
        "64:ff9b:1::/48", // local-use NAT64
        "fc00::/7",       // unique local
        "fe80::/10",      // link-local
        "ff00::/8",       // multicast
    ]
    .iter()
    .map(|s| s.parse().expect("a valid built-in range"))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<NetEntry, String> {
        NetEntry::parse(s)
    }

    #[test]
    fn entries_parse_into_their_kind() {
        assert_eq!(p("PyPI.org.").unwrap(), NetEntry::Domain("pypi.org".into()));
        assert_eq!(
            p("*.github.com").unwrap(),
            NetEntry::Wildcard("github.com".into())
        );
        assert_eq!(p("203.0.113.7").unwrap().to_string(), "203.0.113.7");
        assert_eq!(p("203.0.113.0/24").unwrap().to_string(), "203.0.113.0/24");
        assert_eq!(p("2001:db8::/32").unwrap().to_string(), "2001:db8::/32");
        assert_eq!(p("2001:db8::1").unwrap().to_string(), "2001:db8::1");
    }

    #[test]
    fn malformed_entries_name_themselves() {
        for (bad, why) in [
            ("", "empty"),
            ("*", "first label"),
            ("a.*.github.com", "first label"),
            ("*github.com", "first label"),
            ("github.*", "first label"),
            ("*.*.github.com", "first label"),
            ("*.com.", "two labels"),
            ("localhost", "two labels"),
            ("bad_char!.com", "letters, digits"),
            ("-a.com", "starts nor ends"),
            ("1.2.3", "numeric"),
            ("203.0.113.1/24", "host bits"),
            ("203.0.113.0/33", "out of range"),
            ("2001:db8::/129", "out of range"),
            ("300.1.1.1/8", "not an IP"),
            ("fe80::1%eth0", "not an IP"),
        ] {
            let e = p(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
            if !bad.is_empty() {
                assert!(e.contains(bad.trim_end_matches('.')), "{bad}: {e}");
            }
        }
        let long = format!("{}.com", "a".repeat(64));
        assert!(p(&long).unwrap_err().contains("1 to 63"));
    }

    #[test]
    fn networks_nest_or_are_disjoint() {
        let n = |s: &str| s.parse::<IpNet>().unwrap();
        assert!(n("10.0.0.0/8").overlaps(&n("10.1.2.3")));
        assert!(n("10.1.2.3").overlaps(&n("10.0.0.0/8")));
        assert!(!n("10.0.0.0/8").overlaps(&n("11.0.0.0/8")));
        assert!(!n("10.0.0.0/8").overlaps(&n("::/0")));
        assert!(n("0.0.0.0/0").overlaps(&n("127.0.0.1")));
        assert!(n("10.0.0.0/8").covers(&n("10.2.0.0/16")));
        assert!(!n("10.2.0.0/16").covers(&n("10.0.0.0/8")));
        assert_eq!(n("203.0.113.0/24").last().to_string(), "203.0.113.255");
        assert_eq!(
            n("::/0").last().to_string(),
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
        );
        assert_eq!(n("10.9.0.0/20").nth(5).unwrap().to_string(), "10.9.0.5");
        assert_eq!(n("10.9.0.0/30").nth(4), None);
    }

    #[test]
    fn the_text_form_round_trips() {
        let pol = NetworkPolicy {
            mode: NetworkMode::Full,
            allow_out: vec![
                p("pypi.org").unwrap(),
                p("*.github.com").unwrap(),
                p("203.0.113.0/24").unwrap(),
                p("2001:db8::1").unwrap(),
            ],
            deny_out: vec![p("203.0.113.9").unwrap()],
        };
        let text = pol.to_text();
        assert_eq!(
            text,
            "full allow=pypi.org,*.github.com,203.0.113.0/24,2001:db8::1 deny=203.0.113.9"
        );
        assert_eq!(NetworkPolicy::from_text(&text).unwrap(), pol);
        let none = NetworkPolicy::none();
        assert_eq!(NetworkPolicy::from_text(&none.to_text()).unwrap(), none);
        assert!(NetworkPolicy::from_text("open allow= deny=").is_err());
    }

    #[test]
    fn the_default_deny_list_covers_what_the_issue_names() {
        let deny = default_deny_always();
        for addr in [
            "169.254.169.254",
            "127.0.0.1",
            "10.1.1.1",
            "172.20.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::2",
            "::ffff:127.0.0.1",
        ] {
            let a: IpAddr = addr.parse().unwrap();
            assert!(deny.iter().any(|n| n.contains(a)), "{addr}");
        }
        for addr in ["203.0.113.2", "2001:db8::1", "8.8.8.8"] {
            let a: IpAddr = addr.parse().unwrap();
            assert!(!deny.iter().any(|n| n.contains(a)), "{addr}");
        }
    }
}
