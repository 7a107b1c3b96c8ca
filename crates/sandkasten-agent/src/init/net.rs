//! Network setup inside the sandbox's own network namespace.

use super::os_err;

/// Brings `lo` up (a new network namespace starts with it down).
pub fn loopback_up() -> Result<(), String> {
    // SAFETY: a datagram socket used only for the interface ioctl.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(os_err("socket for loopback setup"));
    }
    // SAFETY: ifreq is plain data; the name fits in IFNAMSIZ.
    let rc = unsafe {
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        req.ifr_ifru.ifru_flags =
            (libc::IFF_UP | libc::IFF_LOOPBACK | libc::IFF_RUNNING) as libc::c_short;
        let rc = libc::ioctl(fd, libc::SIOCSIFFLAGS, &req);
        libc::close(fd);
        rc
    };
    if rc != 0 {
        return Err(os_err("bringing up lo"));
    }
    Ok(())
}
