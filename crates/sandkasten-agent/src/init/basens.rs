//! `sandkasten-agent base-ns`: the mount namespace every sandbox's own
//! namespace is copied from.
//!
//! Its root is an empty read-only tmpfs. A launcher assembles the root
//! filesystem in a private copy of the host's namespace, as before, then
//! clones that tree, joins a private copy of this namespace, stacks the
//! tree on its root and `chroot`s into it. No `pivot_root` is needed: that
//! call walks every thread on the host (`chroot_fs_refs`), so its cost
//! grew with the number of live sandboxes. What lies below the sandbox's
//! root is only this empty tmpfs, so even a chroot escape (impossible
//! today: no sandbox process has `CAP_SYS_CHROOT`, and seccomp refuses new
//! user namespaces) would find nothing.
//!
//! One more mount lives here: a procfs, under a directory that a second
//! tmpfs covers. A user namespace may mount a new procfs only where one is
//! already fully visible in its mount namespace (`mnt_already_visible` in
//! the kernel), and that check does not look at whether the procfs is
//! reachable; covered, no path leads to it, and in a sandbox's copy the
//! cover is locked.
//!
//! The process prints `ok`, then waits for its stdin to close while the
//! daemon opens `/proc/PID/ns/mnt`; the namespace lives as long as the
//! daemon holds that descriptor.

use super::mounts::{ensure_dir, mount};
use super::os_err;
use std::ffi::CString;
use std::io::{Read, Write};
use std::path::Path;
use std::process::ExitCode;

/// Builds the namespace in this process.
fn build() -> Result<(), String> {
    // SAFETY: single-threaded; plain syscalls.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(os_err("unshare(CLONE_NEWNS)"));
    }
    let noexec = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    let p = Path::new;
    mount(None, p("/"), None, libc::MS_REC | libc::MS_PRIVATE, None)?;
    // Any directory of the host will do as the mount point: this
    // namespace's mounts are private, and the host keeps its `/tmp`.
    mount(
        Some(p("sandkasten-base")),
        p("/tmp"),
        Some("tmpfs"),
        noexec,
        Some("size=64k,mode=0755"),
    )?;
    for d in ["/tmp/hidden/proc", "/tmp/old"] {
        ensure_dir(p(d))?;
    }
    mount(
        Some(p("proc")),
        p("/tmp/hidden/proc"),
        Some("proc"),
        noexec,
        None,
    )?;
    mount(
        Some(p("sandkasten-cover")),
        p("/tmp/hidden"),
        Some("tmpfs"),
        noexec | libc::MS_RDONLY,
        Some("size=4k,mode=0555"),
    )?;
    std::env::set_current_dir("/tmp").map_err(|e| format!("chdir: {e}"))?;
    let (dot, old) = (CString::new(".").unwrap(), CString::new("old").unwrap());
    // SAFETY: valid NUL-terminated strings.
    unsafe {
        if libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), old.as_ptr()) != 0 {
            return Err(os_err("pivot_root"));
        }
        if libc::umount2(old.as_ptr(), libc::MNT_DETACH) != 0 {
            return Err(os_err("detaching the host root"));
        }
    }
    std::fs::remove_dir("/old").map_err(|e| format!("removing /old: {e}"))?;
    mount(
        None,
        p("/"),
        None,
        libc::MS_REMOUNT | libc::MS_RDONLY | noexec,
        None,
    )?;
    Ok(())
}

pub fn run() -> ExitCode {
    if let Err(e) = build() {
        eprintln!("sandkasten-agent base-ns: {e}");
        return ExitCode::from(1);
    }
    let mut out = std::io::stdout();
    if out.write_all(b"ok\n").and_then(|()| out.flush()).is_err() {
        return ExitCode::from(1);
    }
    // Until the daemon holds the namespace.
    let _ = std::io::stdin().read(&mut [0u8; 1]);
    ExitCode::SUCCESS
}
