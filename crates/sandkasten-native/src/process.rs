//! Proving and ending a sandbox's init process: pidfds plus a start-time
//! check, so a pid reused by an unrelated process is never signalled.

use std::os::fd::{AsRawFd, OwnedFd};
use tokio::io::unix::AsyncFd;

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
