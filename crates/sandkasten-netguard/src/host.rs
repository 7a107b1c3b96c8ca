//! What every datapath does to the host alike: the tag that names a
//! daemon's table, links and default subnets (claimed for its data dir,
//! so no two live daemons share one), and IP forwarding.

use sandkasten_runtime::IpNet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

/// Four hex digits of a hash of the data dir: the tag a data dir is
/// given first (and the one versions before [`claim_tag`] always used).
pub fn tag_of(data_dir: &Path) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(data_dir.as_os_str().as_encoded_bytes());
    format!("{:02x}{:02x}", d[0], d[1])
}

/// Where live daemons hold their tags (a POSIX record lock on a file per
/// tag, and per default IPv4 subnet: released when the daemon's process
/// ends, never inherited by a child).
const CLAIMS: &str = "/run/sandkasten/net";
/// The file in the data dir that keeps the tag claimed for it.
const TAG_FILE: &str = "net-tag";

/// A daemon's hold on its tag (and its default IPv4 subnet): kept for the
/// daemon's life.
pub struct TagClaim {
    locks: Vec<(std::path::PathBuf, std::fs::File)>,
}

impl TagClaim {
    /// Gives the claim up, removing its files while they are still locked
    /// (as a start's sweep removes them).
    pub fn release(self) {
        for (path, _file) in &self.locks {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The tag kept in `<data dir>/net-tag`, if any.
fn kept_tag(data_dir: &Path) -> Option<String> {
    std::fs::read_to_string(data_dir.join(TAG_FILE))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|t| t.len() == 4 && u16::from_str_radix(t, 16).is_ok())
}

/// The claim of the tag kept for `data_dir`, where it has one that no
/// running daemon holds (its daemon ended; for clearing up what it left).
pub fn claim_kept(data_dir: &Path) -> Result<Option<(String, TagClaim)>, String> {
    let Some(tag) = kept_tag(data_dir) else {
        return Ok(None);
    };
    std::fs::create_dir_all(CLAIMS).map_err(|e| format!("creating {CLAIMS}: {e}"))?;
    let path = Path::new(CLAIMS).join(format!("tag-{tag}"));
    Ok(lock(&path, &data_dir.display().to_string())?.ok().map(|f| {
        (
            tag,
            TagClaim {
                locks: vec![(path, f)],
            },
        )
    }))
}

/// The tag of the daemon of `data_dir`, claimed so that no other live
/// daemon on the host has it (or, with `default_v4`, the IPv4 subnet it
/// picks): the one kept in `<data dir>/net-tag`, else the hash of the
/// data dir ([`tag_of`]), else the first free one after it whose link
/// prefix (`skn<tag>`) `has_links` finds on no link of a daemon that is
/// not running; kept in the data dir for the next start (its sandboxes'
/// links carry it). A kept tag another live daemon holds is an error
/// naming that daemon's data dir.
pub fn claim_tag(
    data_dir: &Path,
    default_v4: bool,
    mut has_links: impl FnMut(&str) -> bool,
) -> Result<(String, TagClaim), String> {
    std::fs::create_dir_all(CLAIMS).map_err(|e| format!("creating {CLAIMS}: {e}"))?;
    sweep_claims();
    let kept_path = data_dir.join(TAG_FILE);
    let kept = kept_tag(data_dir);
    let first = u16::from_str_radix(&tag_of(data_dir), 16).expect("four hex digits");
    let candidates: Vec<u16> = match &kept {
        Some(t) => vec![u16::from_str_radix(t, 16).expect("checked")],
        None => (0..512u16).map(|i| first.wrapping_add(i)).collect(),
    };
    let me = data_dir.display().to_string();
    for (i, t) in candidates.into_iter().enumerate() {
        let tag = format!("{t:04x}");
        // A link named by a tag other than the data dir's own is another
        // daemon's (one not running now; its sandboxes may be).
        if kept.is_none() && i > 0 && has_links(&format!("skn{tag}")) {
            continue;
        }
        let mut names = vec![format!("tag-{tag}")];
        if default_v4 {
            names.push(format!("ipv4-{}", v4_index(&tag)));
        }
        let mut locks = Vec::new();
        let mut held = None;
        for n in &names {
            let path = Path::new(CLAIMS).join(n);
            match lock(&path, &me)? {
                Ok(f) => locks.push((path, f)),
                Err(holder) => {
                    held = Some((n.clone(), holder));
                    break;
                }
            }
        }
        match (held, &kept) {
            (None, _) => {
                if kept.is_none() {
                    std::fs::write(&kept_path, format!("{tag}\n"))
                        .map_err(|e| format!("writing {}: {e}", kept_path.display()))?;
                }
                return Ok((tag, TagClaim { locks }));
            }
            (Some((what, holder)), Some(_)) => {
                return Err(format!(
                    "the sandbox network's {what} (kept in {}) is held by another running \
                     daemon ({holder}): stop it, or remove {} with no sandbox of this data \
                     dir running{}",
                    kept_path.display(),
                    kept_path.display(),
                    if what.starts_with("ipv4") {
                        ", or set network.ipv4_subnet"
                    } else {
                        ""
                    }
                ))
            }
            (Some(_), None) => {}
        }
    }
    Err("no free sandbox network tag: 512 are held by running daemons".into())
}

/// Takes a write lock on `path` (created), and writes `me` into it; the
/// holder's text when another process holds it. A file another start's
/// sweep removed between our open and our lock is opened anew (a lock on
/// it would be on a file no other daemon finds).
fn lock(path: &Path, me: &str) -> Result<Result<std::fs::File, String>, String> {
    use std::io::{Seek, Write};
    loop {
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| format!("opening {}: {e}", path.display()))?;
        match try_lock(&f) {
            Ok(true) => {}
            Ok(false) => {
                return Ok(Err(std::fs::read_to_string(path)
                    .map(|s| s.trim().to_string())
                    .unwrap_or_default()))
            }
            Err(e) => return Err(format!("locking {}: {e}", path.display())),
        }
        if !same_file(&f, path) {
            continue;
        }
        let written = f
            .set_len(0)
            .and_then(|_| f.rewind())
            .and_then(|_| writeln!(f, "{me}"));
        written.map_err(|e| format!("writing {}: {e}", path.display()))?;
        return Ok(Ok(f));
    }
}

/// A whole-file write lock (a POSIX record lock: this process's, never a
/// child's) on `f`, if no other process holds one.
fn try_lock(f: &std::fs::File) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: a zeroed flock is valid; the fields set make it a whole-file
    // write lock.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as _;
    fl.l_whence = libc::SEEK_SET as _;
    // SAFETY: fcntl on an fd we own with a valid flock.
    if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLK, &fl) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EAGAIN) => Ok(false),
        _ => Err(e),
    }
}

/// Whether `path` still names the file `f` is open on.
fn same_file(f: &std::fs::File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (f.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Removes the claim files no running daemon holds (a daemon that ended
/// leaves its files; every start sweeps them, so the directory holds
/// about the running daemons' alone). Each is removed while locked, and
/// a start that opened it before checks that it is still there
/// ([`lock`]). Run before this daemon claims: a second descriptor of a
/// file whose lock this process holds would release it when closed.
fn sweep_claims() {
    for e in std::fs::read_dir(CLAIMS).into_iter().flatten().flatten() {
        let path = e.path();
        let Ok(f) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
        else {
            continue;
        };
        if try_lock(&f).unwrap_or(false) && same_file(&f, &path) {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Which /20 of 10.128.0.0/10 the default IPv4 network of tag `tag` is.
fn v4_index(tag: &str) -> u32 {
    u32::from_str_radix(tag, 16).unwrap_or(0) % 1024
}

/// The default sandbox IPv4 network of the daemon tagged `tag`: a /20 of
/// 10.128.0.0/10 picked by the tag.
pub fn default_ipv4_subnet(tag: &str) -> IpNet {
    let i = v4_index(tag);
    let a = Ipv4Addr::new(10, 128 + (i >> 4) as u8, ((i & 15) << 4) as u8, 0);
    IpNet::new(IpAddr::V4(a), 20).expect("a /20 on its boundary")
}

/// The sandbox IPv6 network of the daemon tagged `tag`: `configured`, or
/// a /64 of `fd5b::/32` picked by the tag; an error unless it is an IPv6
/// network of at least /120.
pub fn ipv6_subnet(configured: Option<IpNet>, tag: &str) -> Result<IpNet, String> {
    let n = configured.unwrap_or_else(|| {
        let h = u16::from_str_radix(tag, 16).unwrap_or(0);
        let a = std::net::Ipv6Addr::new(0xfd5b, 0, h, 0, 0, 0, 0, 0);
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
