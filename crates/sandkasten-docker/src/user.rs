//! The sandbox user's ids are never a host account's: the check at start.
//!
//! A container has no user namespace, so the uid its commands run as is
//! that uid on the host, and the kernel's per-user budgets (inotify
//! instances and watches, pipe buffers, message queues, RLIMIT_NPROC) are
//! kept by it. Were it a host user's (uid 1000 is the first regular account
//! on most hosts), a sandbox could exhaust that user's budgets, and the
//! user's processes the sandbox's. So [`check_sandbox_user`] refuses ids
//! that a host account (passwd and group through NSS, as `id` sees them)
//! has, or that lie in a host user's subordinate range (`/etc/subuid`,
//! `/etc/subgid`: that user's rootless containers run as those ids).

use crate::SandboxUser;
use std::ffi::CStr;

/// Why `user` may not be the sandbox user on this host, if it may not.
/// `passwd_of`/`group_of` name the account of an id; `subuid`/`subgid` are
/// the texts of `/etc/subuid` and `/etc/subgid` (empty when missing).
fn refusal(
    user: SandboxUser,
    passwd_of: impl Fn(u32) -> Option<String>,
    group_of: impl Fn(u32) -> Option<String>,
    subuid: &str,
    subgid: &str,
) -> Option<String> {
    let (uid, gid) = (user.uid, user.gid);
    if uid == 0 || gid == 0 {
        return Some(format!(
            "docker.sandbox_uid: {uid}:{gid} is root; commands must run as an unprivileged \
             id of their own"
        ));
    }
    for id in [uid, gid] {
        // 65534 is every host's nobody; -1 means "unchanged" to chown.
        if id == 65534 || id == u32::MAX {
            return Some(format!(
                "docker.sandbox_uid: {id} is reserved (nobody, or -1); choose an id no host account has, \
                 like the default {}",
                crate::DEFAULT_SANDBOX_ID
            ));
        }
    }
    if let Some(name) = passwd_of(uid) {
        return Some(format!(
            "docker.sandbox_uid: {uid} is the uid of host user {name:?}: a container has no \
             user namespace, so its commands would run as that user (sharing its per-user \
             kernel budgets, inotify among them); choose an id no host account has, like the \
             default {}",
            crate::DEFAULT_SANDBOX_ID
        ));
    }
    if let Some(name) = group_of(gid) {
        return Some(format!(
            "docker.sandbox_uid: {gid} (also the sandbox user's gid) is the gid of host group \
             {name:?}; choose an id no host account or group has, like the default {}",
            crate::DEFAULT_SANDBOX_ID
        ));
    }
    for (key, file, id, text) in [
        ("docker.sandbox_uid", "/etc/subuid", uid, subuid),
        (
            "docker.sandbox_uid (as the gid)",
            "/etc/subgid",
            gid,
            subgid,
        ),
    ] {
        if let Some(owner) = subordinate_owner(text, id) {
            return Some(format!(
                "{key}: {id} lies in the subordinate ids of host user {owner:?} ({file}), \
                 which its rootless containers run as; choose an id outside every range there"
            ));
        }
    }
    None
}

/// The user whose range in a `/etc/subuid`-style text (`name:start:count`
/// lines) contains `id`.
fn subordinate_owner(text: &str, id: u32) -> Option<String> {
    text.lines().find_map(|line| {
        let mut f = line.trim().split(':');
        let (name, start, count) = (f.next()?, f.next()?, f.next()?);
        let (start, count) = (start.parse::<u64>().ok()?, count.parse::<u64>().ok()?);
        (start..start + count)
            .contains(&u64::from(id))
            .then(|| name.to_string())
    })
}

/// Refuses `user` as the sandbox user when a host account has its ids
/// (see the module docs); the message names the key to change.
pub fn check_sandbox_user(user: SandboxUser) -> Result<(), String> {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    match refusal(
        user,
        passwd_name,
        group_name,
        &read("/etc/subuid"),
        &read("/etc/subgid"),
    ) {
        Some(why) => Err(why),
        None => Ok(()),
    }
}

/// The name of host user `uid` (`getpwuid_r`: files, and whatever NSS
/// module the host has), if there is one.
pub fn passwd_name(uid: u32) -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: a zeroed passwd is a valid out buffer; `buf` outlives the
    // call and the name is copied out before it is dropped.
    unsafe {
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut out: *mut libc::passwd = std::ptr::null_mut();
        let r = libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut out);
        (r == 0 && !out.is_null())
            .then(|| CStr::from_ptr(pw.pw_name).to_string_lossy().into_owned())
    }
}

/// The name of host group `gid`, if there is one.
pub fn group_name(gid: u32) -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 64 * 1024];
    // SAFETY: as in `passwd_name`.
    unsafe {
        let mut gr: libc::group = std::mem::zeroed();
        let mut out: *mut libc::group = std::ptr::null_mut();
        let r = libc::getgrgid_r(gid, &mut gr, buf.as_mut_ptr(), buf.len(), &mut out);
        (r == 0 && !out.is_null())
            .then(|| CStr::from_ptr(gr.gr_name).to_string_lossy().into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(uid: u32, gid: u32) -> SandboxUser {
        SandboxUser { uid, gid }
    }

    #[test]
    fn ids_of_host_accounts_and_their_subordinate_ranges_are_refused() {
        let passwd = |id: u32| (id == 1000).then(|| "alice".to_string());
        let group = |id: u32| (id == 1001).then(|| "staff".to_string());
        let sub = "alice:100000:65536\n";
        let check = |u| refusal(u, passwd, group, sub, sub);
        assert_eq!(check(user(90000, 90000)), None);
        let e = check(user(1000, 90000)).unwrap();
        assert!(
            e.starts_with("docker.sandbox_uid: 1000 is the uid of host user \"alice\""),
            "{e}"
        );
        let e = check(user(90000, 1001)).unwrap();
        assert!(e.starts_with("docker.sandbox_uid: 1001 (also"), "{e}");
        let e = check(user(165535, 90000)).unwrap();
        assert!(e.contains("subordinate ids of host user \"alice\""), "{e}");
        assert_eq!(check(user(165536, 165536)), None);
        let e = check(user(90000, 100000)).unwrap();
        assert!(e.contains("/etc/subgid"), "{e}");
        for bad in [user(0, 90000), user(90000, 0), user(65534, 90000)] {
            assert!(check(bad).is_some(), "{bad:?}");
        }
    }

    /// This host's own accounts, through the same lookups the daemon
    /// uses: root is found, the default id is nobody's.
    #[test]
    fn host_lookups_find_root_and_not_the_default() {
        assert_eq!(passwd_name(0).as_deref(), Some("root"));
        assert_eq!(group_name(0).as_deref(), Some("root"));
        assert_eq!(passwd_name(crate::DEFAULT_SANDBOX_ID), None);
        check_sandbox_user(SandboxUser::default()).unwrap();
    }
}
