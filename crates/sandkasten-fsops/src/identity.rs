//! The calling thread's filesystem identity, switched for one operation.
//!
//! `setfsuid`/`setfsgid`/`setgroups` are issued as raw syscalls: the kernel
//! applies them to the calling thread only (glibc's and musl's wrappers of
//! `setgroups` would broadcast to every thread), so concurrent operations
//! on other threads, with other identities or none, are not affected.
//! Changing the fsuid from 0 to another uid also drops the filesystem
//! capabilities (DAC override and friends) of a root caller until it is
//! changed back, so the operation gets exactly the user's permission
//! checks, and what it creates belongs to the user.

use crate::FsError;
use sandkasten_protocol::ErrorKind;
use std::io;

/// Restores the thread's previous fsuid, fsgid and supplementary groups
/// when dropped (also while unwinding from a panic).
pub(crate) struct FsIdentity {
    prev_uid: Option<Prev>,
    prev_gid: Option<Prev>,
    prev_groups: Option<Vec<libc::gid_t>>,
}

/// An id as it was before the switch, and which call switched it.
#[derive(Clone, Copy)]
enum Prev {
    /// `setfsuid`/`setfsgid`.
    Fs(u32),
    /// `setresuid`/`setresgid` of the effective id only (the real and
    /// saved ids stay, so the switch back is allowed): where the fs-id
    /// calls do not exist (gVisor). The effective uid leaving 0 drops the
    /// effective capabilities and coming back restores them, as with the
    /// fsuid.
    Effective(u32),
}

impl FsIdentity {
    /// Switches the calling thread to `identity` (uid, gid) with no
    /// supplementary groups; `None` changes nothing.
    pub(crate) fn assume(identity: Option<(u32, u32)>) -> Result<FsIdentity, FsError> {
        // Built first, so a failure half way restores what was changed.
        let mut id = FsIdentity {
            prev_uid: None,
            prev_gid: None,
            prev_groups: None,
        };
        let Some((uid, gid)) = identity else {
            return Ok(id);
        };
        let denied = |what: &str| {
            FsError::new(
                ErrorKind::PermissionDenied,
                format!("cannot take the user's {what} for a file operation"),
            )
        };
        // Supplementary groups: the user's processes run without them, and
        // so do file operations. EPERM means the caller may not change them
        // (an unprivileged caller, or a user namespace that forbids
        // setgroups), where they cannot grant anything extra anyway.
        let groups = thread_groups().map_err(|_| denied("groups"))?;
        if !groups.is_empty() {
            // SAFETY: raw per-thread syscall with an empty list.
            let r =
                unsafe { libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) };
            if r == 0 {
                id.prev_groups = Some(groups);
            } else if io::Error::last_os_error().raw_os_error() != Some(libc::EPERM) {
                return Err(denied("groups"));
            }
        }
        // The gid before the uid: with fsuid 0 the capability to change
        // the fsgid is still there.
        id.prev_gid = Some(switch(Kind::Gid, gid).ok_or_else(|| denied("gid"))?);
        id.prev_uid = Some(switch(Kind::Uid, uid).ok_or_else(|| denied("uid"))?);
        Ok(id)
    }
}

impl Drop for FsIdentity {
    fn drop(&mut self) {
        // The uid first: returning to fsuid 0 restores the capabilities
        // that the rest needs.
        if let Some(uid) = self.prev_uid {
            restore(Kind::Uid, uid);
        }
        if let Some(gid) = self.prev_gid {
            restore(Kind::Gid, gid);
        }
        if let Some(groups) = &self.prev_groups {
            // SAFETY: raw per-thread syscall with a valid list.
            unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
        }
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Uid,
    Gid,
}

/// Switches the thread's filesystem uid or gid to `id`: through the fs-id
/// call, or where that does not take, the effective id.
fn switch(kind: Kind, id: u32) -> Option<Prev> {
    let fs = match kind {
        Kind::Uid => libc::SYS_setfsuid,
        Kind::Gid => libc::SYS_setfsgid,
    };
    if let Some(prev) = set_fs_id(fs, id) {
        return Some(Prev::Fs(prev));
    }
    let prev = effective(kind);
    set_effective(kind, id).then_some(Prev::Effective(prev))
}

fn restore(kind: Kind, prev: Prev) {
    match (kind, prev) {
        (Kind::Uid, Prev::Fs(id)) => {
            set_fs_id(libc::SYS_setfsuid, id);
        }
        (Kind::Gid, Prev::Fs(id)) => {
            set_fs_id(libc::SYS_setfsgid, id);
        }
        (kind, Prev::Effective(id)) => {
            set_effective(kind, id);
        }
    }
}

/// The calling thread's effective uid or gid.
fn effective(kind: Kind) -> u32 {
    // SAFETY: raw syscalls without arguments.
    unsafe {
        match kind {
            Kind::Uid => libc::syscall(libc::SYS_geteuid) as u32,
            Kind::Gid => libc::syscall(libc::SYS_getegid) as u32,
        }
    }
}

/// Sets only the calling thread's effective uid or gid (raw syscall: not
/// broadcast to other threads); true when it took.
fn set_effective(kind: Kind, id: u32) -> bool {
    let nr = match kind {
        Kind::Uid => libc::SYS_setresuid,
        Kind::Gid => libc::SYS_setresgid,
    };
    let keep = u32::MAX as libc::c_long;
    // SAFETY: raw per-thread syscall without pointers; -1 keeps an id.
    let r = unsafe { libc::syscall(nr, keep, id as libc::c_long, keep) };
    r == 0 && effective(kind) == id
}

/// Sets the thread's fsuid or fsgid (`nr` is `SYS_setfsuid`/`SYS_setfsgid`)
/// and returns the previous one, or `None` if the change did not take.
fn set_fs_id(nr: libc::c_long, id: u32) -> Option<u32> {
    // SAFETY: raw per-thread syscalls without pointers. The calls never
    // report errors; asking with an invalid id (-1) returns the current one
    // unchanged, which verifies the change.
    unsafe {
        let prev = libc::syscall(nr, id) as u32;
        let now = libc::syscall(nr, u32::MAX) as u32;
        (now == id).then_some(prev)
    }
}

/// The calling thread's supplementary groups.
fn thread_groups() -> io::Result<Vec<libc::gid_t>> {
    // SAFETY: getgroups with size 0 only counts; then fills a buffer of
    // that size. Both read the calling thread's credentials.
    unsafe {
        let n = libc::getgroups(0, std::ptr::null_mut());
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut groups = vec![0; n as usize];
        let n = libc::getgroups(n, groups.as_mut_ptr());
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        groups.truncate(n as usize);
        Ok(groups)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    /// The fallback for runtimes without fs-id calls: the effective ids of
    /// this thread only, with the user's permissions and ownership, and
    /// back (needs root, as the tests run).
    #[test]
    fn the_effective_id_fallback_switches_this_thread_only_and_back() {
        let before = (effective(Kind::Uid), effective(Kind::Gid));
        assert_eq!(before, (0, 0), "run the tests as root");
        let private = tempfile::tempdir().unwrap(); // 0700, root's
        let open = tempfile::tempdir().unwrap();
        std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let (denied, mine) = (private.path().join("x"), open.path().join("mine"));
        let (d, m) = (denied.clone(), mine.clone());
        std::thread::spawn(move || {
            let gid = Prev::Effective(effective(Kind::Gid));
            assert!(set_effective(Kind::Gid, 4243));
            let uid = Prev::Effective(effective(Kind::Uid));
            assert!(set_effective(Kind::Uid, 4242));
            // The user's permission checks (no DAC override) and owner.
            assert!(std::fs::create_dir(&d).is_err());
            std::fs::create_dir(&m).unwrap();
            restore(Kind::Uid, uid);
            restore(Kind::Gid, gid);
            assert_eq!((effective(Kind::Uid), effective(Kind::Gid)), (0, 0));
            std::fs::create_dir(&d).unwrap();
        })
        .join()
        .unwrap();
        assert_eq!((effective(Kind::Uid), effective(Kind::Gid)), before);
        let meta = std::fs::metadata(&mine).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (4242, 4243));
        assert_eq!(std::fs::metadata(&denied).unwrap().uid(), 0);
    }
}
