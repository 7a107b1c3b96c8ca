//! The host's pseudo-terminal budget.
//!
//! Every sandbox mounts its own devpts instance (`newinstance`), and all
//! such instances together may hold `kernel.pty.max` minus
//! `kernel.pty.reserve` terminals (4096 - 1024 = 3072 by default). A
//! sandbox holds one for its shell and one for the running exec, more for
//! processes started with a terminal, so a few thousand live sandboxes
//! would exhaust the default. The agent caps each instance at
//! [`PTYS_PER_SANDBOX`] (devpts `max=`), and [`ensure_pty_max`] raises the
//! host's limit to what `max_sessions` sandboxes can hold at once, so that
//! no sandbox can take a terminal another one needs. A pty costs memory
//! only while it is open: the limit itself costs nothing.

use crate::sysctl;
use std::path::Path;

/// Terminals each sandbox's devpts instance may hold (the agent mounts it
/// with `max=` this).
pub const PTYS_PER_SANDBOX: u64 = sandkasten_protocol::PTYS_PER_SANDBOX;

/// The kernel's upper bound for `kernel.pty.max` (`NR_UNIX98_PTY_MAX`).
const KERNEL_PTY_MAX: u64 = 1 << 20;

/// The `kernel.pty.max` that lets `max_sessions` sandboxes each hold
/// [`PTYS_PER_SANDBOX`] terminals besides the host's `reserve` (which
/// only the host's own devpts may use) and a margin for the host.
pub fn wanted_pty_max(max_sessions: u64, reserve: u64) -> u64 {
    max_sessions
        .saturating_mul(PTYS_PER_SANDBOX)
        .saturating_add(reserve + 1024)
        .min(KERNEL_PTY_MAX)
}

/// Raises `kernel.pty.max` to [`wanted_pty_max`] where it is lower; never
/// lowers it. `Ok(Some((old, new)))` when it changed it, `Ok(None)` when it
/// was high enough, `Err` with what to do when it could not.
pub fn ensure_pty_max(max_sessions: u64) -> Result<Option<(u64, u64)>, String> {
    ensure_at(Path::new("/proc/sys/kernel/pty"), max_sessions)
}

fn ensure_at(dir: &Path, max_sessions: u64) -> Result<Option<(u64, u64)>, String> {
    let reserve = sysctl::read(&dir.join("reserve"))?;
    let want = wanted_pty_max(max_sessions, reserve);
    sysctl::raise(&dir.join("max"), "kernel.pty.max", want)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_raised_to_what_the_sessions_need_and_never_lowered() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("max"), "4096\n").unwrap();
        std::fs::write(dir.path().join("reserve"), "1024\n").unwrap();
        let want = 1024 + 1024 + 3000 * PTYS_PER_SANDBOX;
        assert_eq!(ensure_at(dir.path(), 3000).unwrap(), Some((4096, want)));
        let now = std::fs::read_to_string(dir.path().join("max")).unwrap();
        assert_eq!(now, want.to_string());
        // Already high enough (a smaller max_sessions): left as it is.
        assert_eq!(ensure_at(dir.path(), 10).unwrap(), None);
        assert_eq!(wanted_pty_max(u64::MAX, 1024), KERNEL_PTY_MAX);
        std::fs::remove_file(dir.path().join("reserve")).unwrap();
        assert!(ensure_at(dir.path(), 10).unwrap_err().contains("reserve"));
    }
}
