//! `openat2` for kernels that lack it (gVisor's, among others): the two
//! resolutions this crate asks for, done one component at a time in user
//! space, with the same guarantees.
//!
//! - `RESOLVE_IN_ROOT`: the path is walked from the root fd; `..` pops a
//!   stack of directory fds and never goes above the root; every component
//!   is opened with `O_NOFOLLOW` relative to the fd before it; a symlink is
//!   read (`readlinkat`) and its target walked the same way (an absolute
//!   one from the root), at most [`MAX_SYMLINKS`] times, so neither a
//!   symlink nor a directory moved meanwhile leads outside. Magic links
//!   are never followed by the kernel (nothing is), which is
//!   `RESOLVE_NO_MAGICLINKS`.
//! - `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS` of one entry name:
//!   `openat(O_NOFOLLOW)`, refusing `..` (EXDEV) and a symlink (ELOOP).
//!
//! An entry swapped for a symlink between the check and the open is caught
//! by the open itself (`O_NOFOLLOW`: ELOOP, or a symlink fd for `O_PATH`,
//! which is checked) and resolved again.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use crate::sys::{RESOLVE_BENEATH, RESOLVE_IN_ROOT, RESOLVE_NO_SYMLINKS};

/// Symlinks followed in one resolution before ELOOP (the kernel's limit).
pub const MAX_SYMLINKS: usize = 40;

fn err(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

/// `openat2(dir, path, flags, mode, resolve)` for the resolutions this
/// crate uses.
pub fn openat2(
    dir: BorrowedFd<'_>,
    path: &CStr,
    flags: libc::c_int,
    mode: u32,
    resolve: u64,
) -> io::Result<OwnedFd> {
    if resolve & RESOLVE_IN_ROOT != 0 {
        in_root(dir, path.to_bytes(), flags, mode)
    } else if resolve & (RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)
        == RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS
    {
        let name = path.to_bytes();
        if name.is_empty() || name.contains(&b'/') || name == b".." {
            return Err(err(libc::EXDEV));
        }
        let fd = open_at(dir, path, flags | libc::O_NOFOLLOW, mode)?;
        if is_symlink(fd.as_fd())? {
            return Err(err(libc::ELOOP));
        }
        Ok(fd)
    } else {
        Err(err(libc::ENOSYS))
    }
}

fn open_at(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int, mode: u32) -> io::Result<OwnedFd> {
    loop {
        // SAFETY: valid C string; the fd is owned below.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                name.as_ptr(),
                flags | libc::O_CLOEXEC,
                mode as libc::c_uint,
            )
        };
        if fd >= 0 {
            // SAFETY: just returned to us.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

fn is_symlink(fd: BorrowedFd<'_>) -> io::Result<bool> {
    Ok(crate::sys::fstat(fd)?.st_mode & libc::S_IFMT == libc::S_IFLNK)
}

/// Whether symlinks in directory `dir` are /proc magic links (which
/// `RESOLVE_NO_MAGICLINKS` refuses): any procfs directory but the procfs
/// root, whose `self`, `thread-self`, `mounts` and `net` are plain
/// symlinks.
fn is_magic_dir(dir: BorrowedFd<'_>) -> io::Result<bool> {
    const PROC_SUPER_MAGIC: libc::c_long = 0x9fa0;
    const PROC_ROOT_INO: u64 = 1;
    // SAFETY: a zeroed statfs is a valid out buffer.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatfs on our fd into our buffer.
    if unsafe { libc::fstatfs(dir.as_raw_fd(), &mut fs) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if fs.f_type as libc::c_long != PROC_SUPER_MAGIC {
        return Ok(false);
    }
    Ok(crate::sys::fstat(dir)?.st_ino != PROC_ROOT_INO)
}

/// Components of `path` (empty ones and `.` dropped), in order.
fn components(path: &[u8]) -> Vec<Vec<u8>> {
    path.split(|b| *b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .map(<[u8]>::to_vec)
        .collect()
}

fn in_root(
    root: BorrowedFd<'_>,
    path: &[u8],
    flags: libc::c_int,
    mode: u32,
) -> io::Result<OwnedFd> {
    let dup = |fd: BorrowedFd<'_>| fd.try_clone_to_owned();
    // The directories from the root down to where the walk is.
    let mut stack: Vec<OwnedFd> = vec![dup(root)?];
    // Components still to walk, the next one last.
    let mut todo: Vec<Vec<u8>> = components(path);
    todo.reverse();
    let mut links = 0;
    let dir_flags = libc::O_PATH | libc::O_DIRECTORY;
    // A trailing slash follows a final symlink and wants a directory, as
    // in the kernel's own walk.
    let flags = if path.ends_with(b"/") {
        flags & !libc::O_NOFOLLOW | libc::O_DIRECTORY
    } else {
        flags
    };
    if todo.is_empty() {
        // The root itself.
        let c = CString::new(".").unwrap();
        return open_at(root, &c, flags, mode);
    }
    while let Some(comp) = todo.pop() {
        let last = todo.is_empty();
        if comp == b".." {
            if stack.len() > 1 {
                stack.pop();
            }
            if last {
                let c = CString::new(".").unwrap();
                return open_at(stack.last().unwrap().as_fd(), &c, flags, mode);
            }
            continue;
        }
        let name = CString::new(comp).map_err(|_| err(libc::EINVAL))?;
        let cur = stack.last().unwrap().as_fd();
        let follow = !last || flags & libc::O_NOFOLLOW == 0;
        let opened = if last {
            open_at(cur, &name, flags | libc::O_NOFOLLOW, mode)
        } else {
            open_at(cur, &name, dir_flags | libc::O_NOFOLLOW, 0)
        };
        let symlink = match &opened {
            // O_PATH | O_NOFOLLOW opens a symlink itself.
            Ok(fd) => follow && is_symlink(fd.as_fd())?,
            // A symlink refused by O_NOFOLLOW (ELOOP), or by O_DIRECTORY
            // (ENOTDIR): check what it is.
            Err(e) if follow && matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
                crate::sys::lstat_at(cur, &name)
                    .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFLNK)
                    .unwrap_or(false)
            }
            Err(_) => false,
        };
        if !symlink {
            let fd = opened?;
            if last {
                return Ok(fd);
            }
            stack.push(fd);
            continue;
        }
        links += 1;
        if links > MAX_SYMLINKS || is_magic_dir(cur)? {
            return Err(err(libc::ELOOP));
        }
        let target = crate::sys::readlink_at(cur, &name)?;
        if target.first() == Some(&b'/') {
            stack.truncate(1);
        }
        let mut more = components(&target);
        more.reverse();
        todo.extend(more);
        if todo.is_empty() {
            // A link to `/` (or `.`) as the last component.
            let c = CString::new(".").unwrap();
            return open_at(stack.last().unwrap().as_fd(), &c, flags, mode);
        }
    }
    unreachable!("the loop returns at the last component")
}

/// For tests: `path` as a C string.
#[cfg(test)]
fn c(path: &str) -> CString {
    CString::new(path).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn where_is(fd: &OwnedFd) -> String {
        std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .unwrap()
            .display()
            .to_string()
    }

    #[test]
    fn in_root_resolution_never_leaves_the_root() {
        let outside = tempfile::tempdir().unwrap();
        let root = outside.path().join("root");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/f"), b"x").unwrap();
        std::fs::write(outside.path().join("secret"), b"s").unwrap();
        symlink("/a/b", root.join("abs")).unwrap();
        symlink("../../../../secret", root.join("a/up")).unwrap();
        symlink("/", root.join("a/top")).unwrap();
        symlink("loop2", root.join("loop1")).unwrap();
        symlink("loop1", root.join("loop2")).unwrap();
        symlink("f", root.join("a/b/link-to-f")).unwrap();
        let rootfd = std::fs::File::open(&root).unwrap();
        let rfd = rootfd.as_fd();
        let r = root.display().to_string();
        let open = |p: &str, flags| in_root(rfd, c(p).as_bytes(), flags, 0);

        assert_eq!(
            where_is(&open("/a/b/f", libc::O_RDONLY).unwrap()),
            format!("{r}/a/b/f")
        );
        assert_eq!(
            where_is(&open("/../../a", libc::O_PATH).unwrap()),
            format!("{r}/a")
        );
        assert_eq!(
            where_is(&open("/abs/f", libc::O_RDONLY).unwrap()),
            format!("{r}/a/b/f")
        );
        assert_eq!(
            where_is(&open("/a/top/a", libc::O_PATH).unwrap()),
            format!("{r}/a")
        );
        assert_eq!(where_is(&open("/", libc::O_PATH).unwrap()), r);
        assert_eq!(where_is(&open("/a/top", libc::O_PATH).unwrap()), r);
        // `..` through a symlink clamps at the root: no way to the secret.
        assert_eq!(
            open("/a/up", libc::O_RDONLY).unwrap_err().raw_os_error(),
            Some(libc::ENOENT)
        );
        assert_eq!(
            open("/loop1", libc::O_RDONLY).unwrap_err().raw_os_error(),
            Some(libc::ELOOP)
        );
        // O_NOFOLLOW: the final symlink itself.
        let l = open("/a/b/link-to-f", libc::O_PATH | libc::O_NOFOLLOW).unwrap();
        assert!(is_symlink(l.as_fd()).unwrap());
        let f = open("/a/b/link-to-f", libc::O_RDONLY).unwrap();
        assert_eq!(where_is(&f), format!("{r}/a/b/f"));
        // Creating through the walk.
        let made = open("/a/new", libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL);
        assert_eq!(where_is(&made.unwrap()), format!("{r}/a/new"));
        assert_eq!(
            open("/a/b/f/x", libc::O_RDONLY).unwrap_err().raw_os_error(),
            Some(libc::ENOTDIR)
        );
    }

    #[test]
    fn one_entry_never_follows_or_climbs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        symlink("f", dir.path().join("l")).unwrap();
        let d = std::fs::File::open(dir.path()).unwrap();
        let beneath = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS;
        let open = |n: &str, flags| openat2(d.as_fd(), &c(n), flags, 0, beneath);
        assert!(open("f", libc::O_RDONLY).is_ok());
        for (name, flags, code) in [
            ("l", libc::O_RDONLY, libc::ELOOP),
            ("l", libc::O_PATH, libc::ELOOP),
            ("..", libc::O_PATH, libc::EXDEV),
            ("a/f", libc::O_PATH, libc::EXDEV),
        ] {
            assert_eq!(
                open(name, flags).unwrap_err().raw_os_error(),
                Some(code),
                "{name}"
            );
        }
    }
}
