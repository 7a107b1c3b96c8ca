//! The policy's verdicts on names and addresses (pure functions).

use sandkasten_runtime::{IpNet, NetEntry, NetworkMode, NetworkPolicy};
use std::net::IpAddr;

/// Whether `entry` names `name` (lower case, no trailing dot): a domain
/// itself, a wildcard every name below its domain (not the domain).
pub(crate) fn names(entry: &NetEntry, name: &str) -> bool {
    match entry {
        NetEntry::Domain(d) => d == name,
        NetEntry::Wildcard(d) => name
            .strip_suffix(d.as_str())
            .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        NetEntry::Net(_) => false,
    }
}

/// Whether `policy` lets the sandbox resolve (and reach by name) `name`;
/// the error is the reason recorded with the denial.
pub fn name_verdict(policy: &NetworkPolicy, name: &str) -> Result<(), &'static str> {
    if policy.mode == NetworkMode::None {
        return Err("the sandbox has no network");
    }
    if policy.deny_out.iter().any(|e| names(e, name)) {
        return Err("denied by deny_out");
    }
    if policy.allow_out.is_empty() || policy.allow_out.iter().any(|e| names(e, name)) {
        return Ok(());
    }
    Err("not in allow_out")
}

/// Whether an address a name resolved to may join the sandbox's allowed
/// set: not in the operator's always-denied ranges nor in `deny_out`'s
/// networks (a name that resolves into a private range, as in DNS
/// rebinding, does not open that range).
pub fn addr_verdict(
    policy: &NetworkPolicy,
    deny_always: &[IpNet],
    addr: IpAddr,
) -> Result<(), &'static str> {
    let addr = canonical(addr);
    if deny_always.iter().any(|n| n.contains(addr)) {
        return Err("the name resolved to an always-denied address");
    }
    if policy
        .deny_out
        .iter()
        .filter_map(NetEntry::net)
        .any(|n| n.contains(addr))
    {
        return Err("the name resolved to an address in deny_out");
    }
    Ok(())
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(mode: NetworkMode, allow: &[&str], deny: &[&str]) -> NetworkPolicy {
        let parse = |v: &[&str]| v.iter().map(|e| NetEntry::parse(e).unwrap()).collect();
        NetworkPolicy {
            mode,
            allow_out: parse(allow),
            deny_out: parse(deny),
        }
    }

    #[test]
    fn names_follow_allow_and_deny_with_wildcards_below_their_domain() {
        let p = policy(
            NetworkMode::Full,
            &["pypi.org", "*.github.com"],
            &["bad.github.com"],
        );
        assert_eq!(name_verdict(&p, "pypi.org"), Ok(()));
        assert_eq!(name_verdict(&p, "api.github.com"), Ok(()));
        assert_eq!(name_verdict(&p, "a.b.github.com"), Ok(()));
        assert_eq!(name_verdict(&p, "github.com"), Err("not in allow_out"));
        assert_eq!(name_verdict(&p, "evilgithub.com"), Err("not in allow_out"));
        assert_eq!(name_verdict(&p, "files.pypi.org"), Err("not in allow_out"));
        assert_eq!(
            name_verdict(&p, "bad.github.com"),
            Err("denied by deny_out")
        );
        let open = policy(NetworkMode::Full, &[], &["*.ads.example"]);
        assert_eq!(name_verdict(&open, "anything.example"), Ok(()));
        assert_eq!(
            name_verdict(&open, "x.ads.example"),
            Err("denied by deny_out")
        );
        let none = policy(NetworkMode::None, &[], &[]);
        assert!(name_verdict(&none, "pypi.org").is_err());
    }

    #[test]
    fn resolved_addresses_in_denied_ranges_are_refused() {
        let p = policy(NetworkMode::Full, &[], &["203.0.113.128/25"]);
        let always: Vec<IpNet> = ["127.0.0.0/8", "10.0.0.0/8"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let v = |s: &str| addr_verdict(&p, &always, s.parse().unwrap());
        assert_eq!(v("203.0.113.5"), Ok(()));
        assert!(v("203.0.113.200").is_err());
        assert!(v("10.1.2.3").is_err());
        assert!(v("::ffff:127.0.0.1").is_err());
        assert_eq!(v("2001:db8::1"), Ok(()));
    }
}
