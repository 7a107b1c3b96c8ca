//! Giving a tree that an earlier sandbox user owned to the current one:
//! a workspace volume or home directory made while the docker runtime's
//! sandbox user was another uid (1000 before `docker.sandbox_uid`, or an
//! earlier value of it) is taken over the first time it is used again.
//!
//! The tree belongs to a sandbox, which may have planted symlinks or swap
//! entries while the walk runs (another session may have the workspace
//! mounted). So the walk is fd-relative: every entry is opened by its one
//! name below its parent's fd with `O_NOFOLLOW` (a symlink as `O_PATH`, so
//! the link itself is changed, never its target), checked and changed
//! through that fd (`fstat`, `fchownat(fd, "", AT_EMPTY_PATH)`: the inode
//! whose owner was read is the one changed), never leaves the root's
//! filesystem, and keeps one fd per level of an explicit stack, bounded by
//! [`MAX_CLAIM_DEPTH`].
//!
//! The root is changed last: its owner is the mark that the takeover is
//! done, so a walk cut short (a crash) is walked again the next time.

use crate::sys;
use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

/// Directory levels [`claim_tree`] enters below the root (one fd each);
/// entries of directories deeper than this keep their owner (the sandbox user can
/// then read them as their mode allows, not change them).
pub const MAX_CLAIM_DEPTH: usize = 256;

/// What [`claim_tree`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The root belonged to root (a fresh volume): it was given to the
    /// user with mode 0755; nothing below was looked at.
    Fresh,
    /// The root already belonged to the user: nothing changed.
    Owned,
    /// The root belonged to `from` (uid, gid): every entry of the tree
    /// owned by that uid (gid) now has the user's, `entries` of them
    /// (the root included).
    TookOver { from: (u32, u32), entries: u64 },
}

/// Makes `dir` and what an earlier sandbox user owned in it the user's
/// (`uid`:`gid`), as the module docs say. `dir` is opened once, refusing a
/// symlink; a root owned by root is only given to the user (as a fresh
/// volume's); a root owned by another uid names the earlier user, whose
/// entries (by uid and by gid separately) are changed, root last. Entries
/// of other owners (root's, made with root's rights) keep theirs.
pub fn claim_tree(dir: &Path, uid: u32, gid: u32) -> io::Result<Claim> {
    let root = open_dir(dir)?;
    let st = sys::fstat(root.as_fd())?;
    if st.st_uid == 0 {
        chown_fd(root.as_fd(), Some(uid), Some(gid))?;
        sys::fchmod(root.as_fd(), 0o755)?;
        return Ok(Claim::Fresh);
    }
    if (st.st_uid, st.st_gid) == (uid, gid) {
        return Ok(Claim::Owned);
    }
    let from = (st.st_uid, st.st_gid);
    let below = take_over_below(root.as_fd(), st.st_dev, from, (uid, gid))?;
    let root_changed = change(root.as_fd(), &st, from, (uid, gid))?;
    Ok(Claim::TookOver {
        from,
        entries: below + u64::from(root_changed),
    })
}

/// Changes every entry below `dir` (not `dir` itself) owned by `from`'s
/// uid (gid) to `to`'s; returns how many changed. For a tree whose root is
/// not the user's to take (a copied `/tmp`, which stays root's).
pub fn take_over_below(
    dir: BorrowedFd<'_>,
    dev: libc::dev_t,
    from: (u32, u32),
    to: (u32, u32),
) -> io::Result<u64> {
    let mut changed = 0u64;
    // The top level is listed through the caller's fd (`None`), the levels
    // below through fds of their own.
    let mut stack: Vec<(Option<OwnedFd>, Vec<sys::RawEntry>)> = vec![(None, sys::read_dir(dir)?)];
    loop {
        // Whether a directory met now may be entered: one fd per level.
        let may_enter = stack.len() <= MAX_CLAIM_DEPTH;
        let Some((_, entries)) = stack.last_mut() else {
            break;
        };
        let Some(entry) = entries.pop() else {
            stack.pop();
            continue;
        };
        let parent = match stack.last().and_then(|(fd, _)| fd.as_ref()) {
            Some(fd) => fd.as_fd(),
            None => dir,
        };
        let Some((fd, st)) = open_entry(parent, &entry.name)? else {
            continue; // gone meanwhile
        };
        if st.st_dev != dev {
            continue; // a mount point: another filesystem is not ours
        }
        if change(fd.as_fd(), &st, from, to)? {
            changed += 1;
        }
        let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
        if is_dir && may_enter {
            // Unreadable (another owner's 0700 without DAC_OVERRIDE):
            // left as it is.
            if let Ok(entries) = sys::read_dir(fd.as_fd()) {
                stack.push((Some(fd), entries));
            }
        }
    }
    Ok(changed)
}

/// Changes the owner of `fd` (stat `st`) from `from` to `to`, uid and gid
/// separately; whether anything changed.
fn change(
    fd: BorrowedFd<'_>,
    st: &libc::stat,
    from: (u32, u32),
    to: (u32, u32),
) -> io::Result<bool> {
    let uid = (st.st_uid == from.0 && from.0 != to.0).then_some(to.0);
    let gid = (st.st_gid == from.1 && from.1 != to.1).then_some(to.1);
    if uid.is_none() && gid.is_none() {
        return Ok(false);
    }
    match chown_fd(fd, uid, gid) {
        Ok(()) => Ok(true),
        // Gone meanwhile.
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Opens directory `dir`, refusing a symlink as its last component.
fn open_dir(dir: &Path) -> io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir)?;
    Ok(f.into())
}

/// Opens entry `name` of `dir` without following it: a directory readable
/// (for its listing), anything else as `O_PATH` (a symlink itself, a fifo
/// without opening it). `None` when it is gone.
fn open_entry(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Option<(OwnedFd, libc::stat)>> {
    let open = |flags: libc::c_int| -> io::Result<OwnedFd> {
        // SAFETY: a valid C string of one name; the result is checked.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                name.as_ptr(),
                flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd we own.
        Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
    };
    let fd = match open(libc::O_PATH) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(e),
    };
    let st = sys::fstat(fd.as_fd())?;
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return Ok(Some((fd, st)));
    }
    // A directory: opened again to be listed, and the same one (a swap
    // between the two opens is seen as a different inode and skipped).
    match open(libc::O_RDONLY | libc::O_DIRECTORY) {
        Ok(dfd) => {
            let dst = sys::fstat(dfd.as_fd())?;
            if (dst.st_dev, dst.st_ino) == (st.st_dev, st.st_ino) {
                Ok(Some((dfd, dst)))
            } else {
                Ok(None)
            }
        }
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOENT | libc::ELOOP | libc::ENOTDIR)
            ) =>
        {
            Ok(None)
        }
        // Not readable: changed through the O_PATH fd, not entered.
        Err(_) => Ok(Some((fd, st))),
    }
}

/// `fchownat(fd, "", AT_EMPTY_PATH)`: the inode behind `fd` (also an
/// `O_PATH` fd of a symlink), never a path.
fn chown_fd(fd: BorrowedFd<'_>, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
    let empty = CString::default();
    // SAFETY: an fd we hold and an empty C string; -1 keeps an id.
    let r = unsafe {
        libc::fchownat(
            fd.as_raw_fd(),
            empty.as_ptr(),
            uid.unwrap_or(u32::MAX),
            gid.unwrap_or(u32::MAX),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{lchown, MetadataExt, PermissionsExt};

    fn owner(p: &Path) -> (u32, u32) {
        let m = std::fs::symlink_metadata(p).unwrap();
        (m.uid(), m.gid())
    }

    #[test]
    fn a_fresh_root_is_given_with_nothing_below_looked_at() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("vol");
        std::fs::create_dir(&root).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(claim_tree(&root, 90000, 90001).unwrap(), Claim::Fresh);
        let m = std::fs::metadata(&root).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (90000, 90001, 0o755));
        assert_eq!(claim_tree(&root, 90000, 90001).unwrap(), Claim::Owned);
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&root, &link).unwrap();
        assert!(claim_tree(&link, 1, 1).is_err(), "a symlinked root");
        assert!(claim_tree(&d.path().join("missing"), 1, 1).is_err());
    }

    /// A workspace of the old sandbox user (1000): its entries become the
    /// new user's, root's and other owners' entries stay theirs, a symlink
    /// is changed itself and never its target (a directory outside owned
    /// by the old uid, as a host user's home would be).
    #[test]
    fn an_earlier_users_tree_is_taken_over_and_nothing_outside_it() {
        let d = tempfile::tempdir().unwrap();
        let outside = d.path().join("host-home");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("secret"), "s").unwrap();
        let ws = d.path().join("ws");
        std::fs::create_dir_all(ws.join("a/b")).unwrap();
        std::fs::write(ws.join("a/b/f"), "f").unwrap();
        std::fs::write(ws.join("rootfile"), "r").unwrap();
        std::fs::write(ws.join("other"), "o").unwrap();
        std::os::unix::fs::symlink(&outside, ws.join("a/out")).unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), ws.join("s")).unwrap();
        let fifo = std::ffi::CString::new(ws.join("fifo").to_str().unwrap()).unwrap();
        // SAFETY: a valid path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        for p in [
            &outside,
            &outside.join("secret"),
            &ws,
            &ws.join("a"),
            &ws.join("a/b"),
            &ws.join("a/b/f"),
            &ws.join("a/out"),
            &ws.join("s"),
            &ws.join("fifo"),
        ] {
            lchown(p, Some(1000), Some(1000)).unwrap();
        }
        lchown(ws.join("other"), Some(1234), Some(1000)).unwrap();
        std::fs::set_permissions(ws.join("a/b"), std::fs::Permissions::from_mode(0o700)).unwrap();

        let got = claim_tree(&ws, 90000, 90000).unwrap();
        // ws, a, b, f, out, s, fifo, and the gid of other.
        assert_eq!(
            got,
            Claim::TookOver {
                from: (1000, 1000),
                entries: 8
            }
        );
        for p in ["", "a", "a/b", "a/b/f", "a/out", "s", "fifo"] {
            assert_eq!(owner(&ws.join(p)), (90000, 90000), "{p}");
        }
        assert_eq!(owner(&ws.join("rootfile")), (0, 0));
        assert_eq!(owner(&ws.join("other")), (1234, 90000));
        assert_eq!(owner(&outside), (1000, 1000), "a symlink's target");
        assert_eq!(owner(&outside.join("secret")), (1000, 1000));
        assert_eq!(claim_tree(&ws, 90000, 90000).unwrap(), Claim::Owned);
    }

    /// The root is the mark: it changes only once everything below has.
    #[test]
    fn the_root_changes_last_and_a_walk_cut_short_is_walked_again() {
        let d = tempfile::tempdir().unwrap();
        let ws = d.path().join("ws");
        std::fs::create_dir_all(ws.join("x")).unwrap();
        std::fs::write(ws.join("x/f"), "f").unwrap();
        for p in ["", "x", "x/f"] {
            lchown(ws.join(p), Some(1000), Some(1000)).unwrap();
        }
        // As if cut short after the first entry: the root still old.
        lchown(ws.join("x"), Some(90000), Some(90000)).unwrap();
        let got = claim_tree(&ws, 90000, 90000).unwrap();
        assert_eq!(
            got,
            Claim::TookOver {
                from: (1000, 1000),
                entries: 2
            }
        );
        assert_eq!(owner(&ws.join("x/f")), (90000, 90000));
    }

    #[test]
    fn deep_trees_stop_at_the_depth_limit_with_a_small_stack() {
        let d = tempfile::tempdir().unwrap();
        let ws = d.path().join("ws");
        let mut p = ws.clone();
        std::fs::create_dir(&p).unwrap();
        lchown(&p, Some(1000), Some(1000)).unwrap();
        for _ in 0..(MAX_CLAIM_DEPTH + 3) {
            p.push("d");
            std::fs::create_dir(&p).unwrap();
            lchown(&p, Some(1000), Some(1000)).unwrap();
        }
        let root = ws.clone();
        std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || claim_tree(&root, 90000, 90000))
            .unwrap()
            .join()
            .unwrap()
            .unwrap();
        let mut p = ws.clone();
        for level in 1..=(MAX_CLAIM_DEPTH + 3) {
            p.push("d");
            let want = if level <= MAX_CLAIM_DEPTH + 1 {
                90000
            } else {
                1000
            };
            assert_eq!(owner(&p).0, want, "level {level}");
        }
    }

    /// A sandbox swapping a directory with a symlink to a host directory
    /// (`RENAME_EXCHANGE`, in a loop) while the tree is taken over: the
    /// host directory and its file never change owner.
    #[test]
    fn a_directory_swapped_with_a_symlink_mid_walk_never_changes_the_host() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let d = tempfile::tempdir().unwrap();
        let host = d.path().join("host");
        std::fs::create_dir(&host).unwrap();
        std::fs::write(host.join("secret"), "s").unwrap();
        let ws = d.path().join("ws");
        std::fs::create_dir_all(ws.join("d")).unwrap();
        std::fs::write(ws.join("d/f"), "f").unwrap();
        std::os::unix::fs::symlink(&host, ws.join("l")).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let swapper = crate::tests::spawn_swapper(vec![(ws.join("d"), ws.join("l"))], stop.clone());
        for round in 0..300u32 {
            let old = 1000 + round % 2;
            for p in [&host, &host.join("secret")] {
                lchown(p, Some(old), Some(old)).unwrap();
            }
            // The tree as the old user's again (whichever names the
            // directory and the link have right now).
            for p in ["", "d", "l", "d/f", "l/f"] {
                let _ = lchown(ws.join(p), Some(old), Some(old));
            }
            lchown(&ws, Some(old), Some(old)).unwrap();
            claim_tree(&ws, 90000, 90000).unwrap();
            assert_eq!(owner(&host), (old, old), "round {round}: the host dir");
            assert_eq!(owner(&host.join("secret")), (old, old), "round {round}");
        }
        stop.store(true, Ordering::Relaxed);
        assert!(swapper.join().unwrap() > 0, "the swap never ran");
    }
}
