//! Late binding: mounting a workspace into a sandbox that is already
//! running (a pre-warmed one taken from the pool). Shared by the backends
//! whose sandboxes are processes of this host (native, docker on a local
//! engine).
//!
//! The daemon makes the mount itself, detached (`fsmount` of a workspace's
//! btrfs device, or an `open_tree` clone of a directory: a native directory
//! workspace, a docker volume's host mount point), then moves it onto
//! `/workspace` inside the sandbox's mount namespace from a short-lived
//! thread that entered that namespace:
//!
//! - `setns(CLONE_NEWNS)` needs a thread with its own `fs_struct`, so the
//!   thread first `unshare(CLONE_FS)`s; it exits right after, so no other
//!   work ever runs in the sandbox's namespace.
//! - The namespace is found through a pidfd of the sandbox's verified init
//!   ([`open_verified`]: pid plus start time), never a pid that may have
//!   been reused.
//! - The new mount stacks over the sandbox's ephemeral `/workspace` (a
//!   bind or volume mount that cannot or need not be removed); the shell's
//!   cwd still points below it until the engine re-enters `/workspace`.
//! - `move_mount` does not follow a symlink at the target, and the pooled
//!   sandbox has run no user code yet anyway.
//! - Where the sandbox's mounts are slaves of the host's (a container's,
//!   propagation `rslave`) or private (native), the new mount never
//!   propagates back to the host.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn os(what: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Field 22 of `/proc/PID/stat`: the start time of `pid` in clock ticks
/// since boot.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// True when `pid` is the init (pid 1) of its own pid namespace, as every
/// sandbox's PID 1 is (the last `NSpid` of `/proc/PID/status`).
pub fn is_pidns_init(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("NSpid:"))
                .and_then(|v| v.split_whitespace().last().map(|x| x == "1"))
        })
        .unwrap_or(false)
}

/// A pidfd for the sandbox init `pid` if, after pinning it, the process
/// still has the recorded start time and is the init of a pid namespace
/// (so the fd refers to the process recorded, whatever happens to the pid
/// later: start times have a resolution of one clock tick, and a sandbox's
/// first children can share its tick, but not its namespace role). `None`
/// when it is gone, is not ours, or no start time was recorded (0).
pub fn open_verified(pid: i32, expected_start: u64) -> Option<OwnedFd> {
    try_open_verified(pid, expected_start).ok().flatten()
}

/// [`open_verified`], with an error (not `None`) when the host could not
/// tell: no descriptor or memory for the pidfd (`EMFILE`, `ENFILE`,
/// `ENOMEM`). A daemon out of descriptors must not take its sandboxes
/// for gone.
pub fn try_open_verified(pid: i32, expected_start: u64) -> io::Result<Option<OwnedFd>> {
    if pid <= 0 || expected_start == 0 {
        return Ok(None);
    }
    // SAFETY: pidfd_open takes a pid and flags.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM) => Err(e),
            _ => Ok(None),
        };
    }
    // SAFETY: the syscall returned a fresh fd we now own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    Ok((start_time(pid) == Some(expected_start) && is_pidns_init(pid)).then_some(fd))
}

/// A detached bind mount of the host directory `dir` (nosuid, nodev). A
/// symlink as the last component is not followed: anything but a directory
/// there is refused.
pub fn clone_dir(dir: &Path) -> io::Result<OwnedFd> {
    let path = CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::other("path contains NUL"))?;
    // SAFETY: open_tree with a valid path; returns a new fd.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            path.as_ptr(),
            OPEN_TREE_CLONE
                | libc::O_CLOEXEC as libc::c_uint
                | libc::AT_SYMLINK_NOFOLLOW as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(os("open_tree"));
    }
    // SAFETY: a fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: a zeroed stat is a valid out buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and buffer.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } < 0 {
        return Err(os("fstat"));
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return Err(io::Error::other(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    let empty = CString::default();
    set_nosuid_nodev(fd.as_raw_fd(), &empty, libc::AT_EMPTY_PATH)?;
    Ok(fd)
}

/// `nosuid,nodev` on the mount at `path` relative to `dirfd` (with
/// `flags`: `AT_EMPTY_PATH` for the mount of the fd itself).
fn set_nosuid_nodev(dirfd: i32, path: &CString, flags: libc::c_int) -> io::Result<()> {
    set_attrs(dirfd, path, flags, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, 0)
}

/// Makes the detached mount `mount` (an `open_tree` clone or an
/// `fsmount`, not yet attached) idmapped through the user namespace
/// `userns`: its files' ids are seen through that namespace's maps.
pub fn idmap(mount: &OwnedFd, userns: &OwnedFd) -> io::Result<()> {
    let fd = userns.as_raw_fd();
    let empty = CString::default();
    set_attrs(
        mount.as_raw_fd(),
        &empty,
        libc::AT_EMPTY_PATH,
        MOUNT_ATTR_IDMAP,
        fd as u64,
    )
    .map_err(|e| io::Error::new(e.kind(), format!("idmapping a mount: {e}")))
}

/// `mount_setattr` of `attr_set` (and the user namespace fd that
/// `MOUNT_ATTR_IDMAP` takes).
fn set_attrs(
    dirfd: i32,
    path: &CString,
    flags: libc::c_int,
    attr_set: u64,
    userns_fd: u64,
) -> io::Result<()> {
    let attr = MountAttr {
        attr_set,
        attr_clr: 0,
        propagation: 0,
        userns_fd,
    };
    // SAFETY: mount_setattr with a valid C string and struct.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            dirfd,
            path.as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(os("mount_setattr"));
    }
    Ok(())
}

/// Runs `work` on a fresh thread that has entered the mount namespace of
/// the process behind `pidfd` and exits when done, so no shared thread
/// ever runs daemon work inside a sandbox namespace.
fn in_mount_ns<F>(pidfd: OwnedFd, name: &str, work: F) -> io::Result<()>
where
    F: FnOnce() -> io::Result<()> + Send + 'static,
{
    let worker =
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || -> io::Result<()> {
                // SAFETY: unshare(CLONE_FS) affects only this thread.
                if unsafe { libc::unshare(libc::CLONE_FS) } < 0 {
                    return Err(os("unshare(CLONE_FS)"));
                }
                // SAFETY: setns on a pidfd we own; only this thread (which exits
                // when done) changes its mount namespace.
                if unsafe { libc::setns(pidfd.as_raw_fd(), libc::CLONE_NEWNS) } < 0 {
                    return Err(os("entering the sandbox's mount namespace"));
                }
                work()
            })?;
    worker
        .join()
        .map_err(|_| io::Error::other(format!("{name} thread panicked")))?
}

/// Sets `nosuid` and `nodev` on the mount at `target` inside the mount
/// namespace of the process behind `pidfd` (a container's workspace
/// volume, which the engine mounts without them).
pub fn restrict_mount(pidfd: OwnedFd, target: &str) -> io::Result<()> {
    let target = CString::new(target).map_err(|_| io::Error::other("target contains NUL"))?;
    in_mount_ns(pidfd, "sk-restrict", move || {
        set_nosuid_nodev(libc::AT_FDCWD, &target, libc::AT_SYMLINK_NOFOLLOW)
    })
}

/// Moves the detached mount `mount` onto `target` inside the mount
/// namespace of the process behind `pidfd`.
pub fn move_into(pidfd: OwnedFd, mount: OwnedFd, target: &str) -> io::Result<()> {
    let target = CString::new(target).map_err(|_| io::Error::other("target contains NUL"))?;
    in_mount_ns(pidfd, "sk-latebind", move || {
        let empty = CString::default();
        // SAFETY: move_mount from our detached mount fd to a path in the
        // (now current) sandbox namespace.
        let r = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                mount.as_raw_fd(),
                empty.as_ptr(),
                libc::AT_FDCWD,
                target.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            )
        };
        if r < 0 {
            return Err(os("moving the workspace mount into the sandbox"));
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pid_is_proven_by_its_start_time_and_its_namespace_role() {
        // A pid-namespace init like a sandbox's (the tests run as root).
        let mut child = std::process::Command::new("unshare")
            .args(["--pid", "--fork", "--kill-child", "sleep", "60"])
            .spawn()
            .expect("unshare --pid (run the tests as root)");
        let unshare = child.id() as i32;
        let children = format!("/proc/{unshare}/task/{unshare}/children");
        let mut init = None;
        for _ in 0..500 {
            let text = std::fs::read_to_string(&children).unwrap_or_default();
            if let Some(p) = text.split_whitespace().next() {
                init = p.parse::<i32>().ok();
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let init = init.expect("the namespace's init started");
        let t = start_time(init).expect("its start time");
        assert!(is_pidns_init(init));
        assert!(open_verified(init, t).is_some());
        assert!(open_verified(init, t + 1).is_none());
        assert!(open_verified(init, 0).is_none(), "no recorded start time");
        // The right start time on a process that is no namespace init (as a
        // sandbox's first child in the same clock tick would be): refused.
        let me = std::process::id() as i32;
        assert!(!is_pidns_init(me));
        assert!(open_verified(me, start_time(me).unwrap()).is_none());
        assert!(open_verified(0, t).is_none());
        assert!(open_verified(-1, t).is_none());
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn only_a_directory_is_cloned() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("f"), b"x").unwrap();
        std::os::unix::fs::symlink(d.path(), d.path().join("link")).unwrap();
        assert!(clone_dir(&d.path().join("f")).is_err());
        assert!(clone_dir(&d.path().join("link")).is_err());
        assert!(clone_dir(&d.path().join("missing")).is_err());
        // The tests run as root (scripts/test refuses otherwise).
        clone_dir(d.path()).expect("cloning a directory (run the tests as root)");
    }
}
