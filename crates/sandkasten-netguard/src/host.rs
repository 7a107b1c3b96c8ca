//! What every datapath does to the host alike: the tag that names a
//! daemon's table, links and default subnet (from its data dir), and IP
//! forwarding.

use sandkasten_runtime::IpNet;
use std::net::{IpAddr, Ipv4Addr};

/// Four hex digits of a hash of the data dir.
pub fn tag_of(data_dir: &std::path::Path) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(data_dir.as_os_str().as_encoded_bytes());
    format!("{:02x}{:02x}", d[0], d[1])
}

/// The default sandbox IPv4 network of the daemon tagged `tag`: a /20 of
/// 10.128.0.0/10 picked by the tag.
pub fn default_ipv4_subnet(tag: &str) -> IpNet {
    let h = u32::from_str_radix(tag, 16).unwrap_or(0);
    let i = h % 1024;
    let a = Ipv4Addr::new(10, 128 + (i >> 4) as u8, ((i & 15) << 4) as u8, 0);
    IpNet::new(IpAddr::V4(a), 20).expect("a /20 on its boundary")
}

/// The sandbox IPv6 network of the daemon tagged `tag`: `configured`, or
/// a /64 of `fd5b:<space>::/32` picked by the tag (native's space 0,
/// docker's 0xd); an error unless it is an IPv6 network of at least /120.
pub fn ipv6_subnet(configured: Option<IpNet>, tag: &str, space: u16) -> Result<IpNet, String> {
    let n = configured.unwrap_or_else(|| {
        let h = u16::from_str_radix(tag, 16).unwrap_or(0);
        let a = std::net::Ipv6Addr::new(0xfd5b, space, h, 0, 0, 0, 0, 0);
        IpNet::new(IpAddr::V6(a), 64).expect("a /64 on its boundary")
    });
    if n.is_ipv4() || n.prefix() > 120 {
        return Err(format!(
            "network.ipv6_subnet: {n} must be an IPv6 network of at least /120"
        ));
    }
    Ok(n)
}

fn sysctl(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

fn set_sysctl(path: &'static str, v: &str) -> Result<(), (&'static str, std::io::Error)> {
    std::fs::write(path, v).map_err(|e| (path, e))
}

/// Turns on IPv4 (and IPv6) forwarding where it is off. IPv6 forwarding
/// makes the kernel ignore router advertisements on interfaces with
/// `accept_ra=1`, so those are set to 2 first (accept them while
/// forwarding): the host keeps its RA-learned routes.
pub fn enable_forwarding(ipv6: bool) -> Result<(), (&'static str, std::io::Error)> {
    if sysctl("/proc/sys/net/ipv4/ip_forward").as_deref() != Some("1") {
        tracing::info!("enabling net.ipv4.ip_forward for sandbox networks");
        set_sysctl("/proc/sys/net/ipv4/ip_forward", "1")?;
    }
    if ipv6 && sysctl("/proc/sys/net/ipv6/conf/all/forwarding").as_deref() != Some("1") {
        for e in std::fs::read_dir("/proc/sys/net/ipv6/conf")
            .into_iter()
            .flatten()
            .flatten()
        {
            let p = e.path().join("accept_ra");
            if sysctl(&p.to_string_lossy()).as_deref() == Some("1") {
                let _ = std::fs::write(&p, "2");
            }
        }
        tracing::info!(
            "enabling net.ipv6.conf.all.forwarding for sandbox networks (accept_ra 1 → 2)"
        );
        set_sysctl("/proc/sys/net/ipv6/conf/all/forwarding", "1")?;
    }
    Ok(())
}
