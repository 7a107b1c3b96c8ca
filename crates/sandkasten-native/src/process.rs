//! Proving and ending a sandbox's init process: pidfds plus a start-time
//! check, so a pid reused by an unrelated process is never signalled.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use tokio::io::unix::AsyncFd;

/// Field 22 of `/proc/PID/stat` (start time in clock ticks since boot).
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// A pidfd for `pid` if, after pinning it, the process still has the
/// recorded start time. `None` when the process is gone or is not ours.
pub fn open_verified(pid: i32, expected_start: u64) -> Option<OwnedFd> {
    if pid <= 0 {
        return None;
    }
    // SAFETY: pidfd_open takes a pid and flags.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the syscall returned a fresh fd we now own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // The pidfd pins the process: if the start time matches now, the fd
    // refers to the process we recorded, whatever happens to the pid later.
    (start_time(pid) == Some(expected_start)).then_some(fd)
}

/// Sends SIGKILL through the pidfd and waits (event-driven) until the
/// process has exited. In a pid namespace, the kernel kills every other
/// process of the namespace before its init exits.
pub async fn kill_and_wait(pidfd: OwnedFd) -> std::io::Result<()> {
    // SAFETY: pidfd_send_signal on a pidfd we own.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<u8>(),
            0,
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ESRCH) {
            return Err(e);
        }
    }
    // SAFETY: the AsyncFd owns the pidfd and nothing else closes or
    // replaces it while registered.
    let afd = unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let _guard = afd.readable().await?;
    Ok(())
}
