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
    prev_uid: Option<u32>,
    prev_gid: Option<u32>,
    prev_groups: Option<Vec<libc::gid_t>>,
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
        id.prev_gid = Some(set_fs_id(libc::SYS_setfsgid, gid).ok_or_else(|| denied("gid"))?);
        id.prev_uid = Some(set_fs_id(libc::SYS_setfsuid, uid).ok_or_else(|| denied("uid"))?);
        Ok(id)
    }
}

impl Drop for FsIdentity {
    fn drop(&mut self) {
        // The uid first: returning to fsuid 0 restores the capabilities
        // that the rest needs.
        if let Some(uid) = self.prev_uid {
            set_fs_id(libc::SYS_setfsuid, uid);
        }
        if let Some(gid) = self.prev_gid {
            set_fs_id(libc::SYS_setfsgid, gid);
        }
        if let Some(groups) = &self.prev_groups {
            // SAFETY: raw per-thread syscall with a valid list.
            unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
        }
    }
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
