//! The host's pid budget.
//!
//! Every task on the host, every sandbox's included, takes a pid below
//! `kernel.pid_max` (32768 by default on a machine with few cores). A
//! sandbox's own tasks are bounded by its pids cgroup (`pids_limit`), but
//! all sandboxes together are not: a few of them each using their limit,
//! or a few thousand idle ones (about five tasks each: the agent's threads
//! and the shell), would take the host's last pid, and every create and
//! every fork of every other sandbox would then fail with EAGAIN.
//! [`ensure_pid_max`] raises the limit to what `max_sessions` sandboxes
//! at their `pids_limit` can hold besides the host's own tasks, so that
//! no sandbox can take a pid another one needs. A higher limit costs
//! nothing until pids are used (the kernel's pid map grows on demand).
//! `kernel.threads-max` (sized by the kernel from memory) stays as it is.

use crate::sysctl;
use std::path::Path;

/// The kernel's upper bound for `kernel.pid_max` on 64-bit
/// (`PID_MAX_LIMIT`).
const KERNEL_PID_MAX: u64 = 4 * 1024 * 1024;

/// Pids left to the host's own tasks besides the sandboxes'.
const HOST_PIDS: u64 = 32 * 1024;

/// The `kernel.pid_max` that lets `max_sessions` sandboxes each run
/// `pids_limit` tasks besides [`HOST_PIDS`] of the host's.
pub fn wanted_pid_max(max_sessions: u64, pids_limit: u64) -> u64 {
    max_sessions
        .saturating_mul(pids_limit)
        .saturating_add(HOST_PIDS)
        .min(KERNEL_PID_MAX)
}

/// Raises `kernel.pid_max` to [`wanted_pid_max`] where it is lower; never
/// lowers it (see [`sysctl::raise`]).
pub fn ensure_pid_max(max_sessions: u64, pids_limit: u64) -> Result<Option<(u64, u64)>, String> {
    ensure_at(
        Path::new("/proc/sys/kernel/pid_max"),
        max_sessions,
        pids_limit,
    )
}

fn ensure_at(
    file: &Path,
    max_sessions: u64,
    pids_limit: u64,
) -> Result<Option<(u64, u64)>, String> {
    let want = wanted_pid_max(max_sessions, pids_limit);
    sysctl::raise(file, "kernel.pid_max", want)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_raised_to_what_the_sessions_can_use_and_never_lowered() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pid_max");
        std::fs::write(&file, "32768\n").unwrap();
        let want = 5000 * 256 + HOST_PIDS;
        assert_eq!(ensure_at(&file, 5000, 256).unwrap(), Some((32768, want)));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), want.to_string());
        // Already high enough (fewer sessions): left as it is.
        assert_eq!(ensure_at(&file, 64, 256).unwrap(), None);
        assert_eq!(wanted_pid_max(u64::MAX, 256), KERNEL_PID_MAX);
        assert_eq!(wanted_pid_max(64, 256), 64 * 256 + HOST_PIDS);
        std::fs::remove_file(&file).unwrap();
        assert!(ensure_at(&file, 10, 256).unwrap_err().contains("reading"));
    }
}
