//! Careful filesystem helpers for state the daemon deletes.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// True when some mount point in the daemon's mount namespace lies at or
/// below `dir`.
pub fn has_mounts_below(dir: &Path) -> std::io::Result<bool> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let dir = dir.to_string_lossy().replace(' ', "\\040");
    let prefix = format!("{}/", dir.trim_end_matches('/'));
    Ok(info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| mp == dir || mp.starts_with(&prefix)))
}

/// Deletes a directory tree without ever crossing into another filesystem
/// and without following symlinks. Refuses when anything is mounted below.
pub fn remove_tree(dir: &Path) -> std::io::Result<()> {
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if has_mounts_below(dir)? {
        return Err(std::io::Error::other(format!(
            "refusing to delete {}: a mount lies below it",
            dir.display()
        )));
    }
    remove_on_device(dir, meta.dev())
}

/// Iterative, fd-relative deletion: constant stack and file descriptors
/// however deep the tree (a sandbox can build one 100000 levels deep), no
/// path ever longer than one name, symlinks never followed, and no descent
/// into a directory on another filesystem.
fn remove_on_device(dir: &Path, dev: u64) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;

    let cerr = |r: libc::c_int| {
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(r)
        }
    };
    let open_dir = |at: libc::c_int, name: &std::ffi::CStr| -> std::io::Result<OwnedFd> {
        // SAFETY: openat with a valid fd and NUL-terminated name.
        let fd = cerr(unsafe {
            libc::openat(
                at,
                name.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        })?;
        // SAFETY: a fresh fd we own.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    };
    // Unlinks every non-directory in `fd`; returns the first subdirectory.
    let scan = |fd: &OwnedFd| -> std::io::Result<Option<CString>> {
        // SAFETY: dup of an fd we own; fdopendir takes the duplicate.
        let dup = cerr(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) })?;
        // SAFETY: dup is a directory fd we own.
        let dirp = unsafe { libc::fdopendir(dup) };
        if dirp.is_null() {
            // SAFETY: closing the fd fdopendir did not take.
            unsafe { libc::close(dup) };
            return Err(std::io::Error::last_os_error());
        }
        let mut sub = None;
        let mut result = Ok(());
        loop {
            // SAFETY: dirp is a valid DIR*.
            let ent = unsafe { libc::readdir(dirp) };
            if ent.is_null() {
                break;
            }
            // SAFETY: readdir returned a valid dirent.
            let name = unsafe { std::ffi::CStr::from_ptr((*ent).d_name.as_ptr()) }.to_owned();
            if name.as_bytes() == b"." || name.as_bytes() == b".." {
                continue;
            }
            // SAFETY: fstatat into a zeroed stat.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            if unsafe {
                libc::fstatat(
                    fd.as_raw_fd(),
                    name.as_ptr(),
                    &mut st,
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            } < 0
            {
                result = Err(std::io::Error::last_os_error());
                break;
            }
            if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                if st.st_dev != dev {
                    result = Err(std::io::Error::other(
                        "refusing to cross into another filesystem",
                    ));
                    break;
                }
                if sub.is_none() {
                    sub = Some(name);
                }
            // SAFETY: unlinkat of a non-directory entry of fd.
            } else if unsafe { libc::unlinkat(fd.as_raw_fd(), name.as_ptr(), 0) } < 0 {
                result = Err(std::io::Error::last_os_error());
                break;
            }
        }
        // SAFETY: closing the DIR* we opened.
        unsafe { libc::closedir(dirp) };
        result.map(|()| sub)
    };

    let root = CString::new(dir.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let mut cur = open_dir(libc::AT_FDCWD, &root)?;
    let mut names: Vec<CString> = Vec::new();
    let dotdot = CString::new("..").unwrap();
    loop {
        match scan(&cur)? {
            Some(name) => {
                let next = open_dir(cur.as_raw_fd(), &name)?;
                names.push(name);
                cur = next;
            }
            None => match names.pop() {
                None => break,
                Some(name) => {
                    let parent = open_dir(cur.as_raw_fd(), &dotdot)?;
                    // SAFETY: removing the now empty directory `name` of parent.
                    cerr(unsafe {
                        libc::unlinkat(parent.as_raw_fd(), name.as_ptr(), libc::AT_REMOVEDIR)
                    })?;
                    cur = parent;
                }
            },
        }
    }
    drop(cur);
    std::fs::remove_dir(dir)
}

/// Bytes of all regular files below `p` (symlinks not followed; a file
/// vanishing during the walk counts as 0). The walk recurses, so it stops
/// descending below [`MAX_SIZE_DEPTH`] levels: a sandbox can nest
/// directories far deeper than any stack, and a size is worth less than the
/// daemon. Deeper files are not counted.
pub fn tree_size(p: &Path) -> u64 {
    tree_size_at(p, 0)
}

/// See [`tree_size`].
pub const MAX_SIZE_DEPTH: usize = 256;

fn tree_size_at(p: &Path, depth: usize) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(p) else {
        return 0;
    };
    if meta.is_dir() {
        if depth >= MAX_SIZE_DEPTH {
            return 0;
        }
        std::fs::read_dir(p)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| tree_size_at(&e.path(), depth + 1))
            .sum()
    } else if meta.is_file() {
        meta.len()
    } else {
        0
    }
}

/// `lchown` that does not follow symlinks.
pub fn lchown(path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
}

/// Recursively `lchown`s a tree (used on freshly generated image files).
pub fn chown_tree(path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    lchown(path, uid, gid)?;
    let meta = std::fs::symlink_metadata(path)?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_trees_without_following_symlinks() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), "x").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("t");
        std::fs::create_dir_all(t.join("a/b")).unwrap();
        std::fs::write(t.join("a/b/f"), "y").unwrap();
        std::os::unix::fs::symlink(outside.path(), t.join("a/link")).unwrap();
        remove_tree(&t).unwrap();
        assert!(!t.exists());
        assert!(outside.path().join("keep").exists());
        remove_tree(&t).unwrap();
    }

    #[test]
    fn sizes_stop_at_the_depth_limit_instead_of_overflowing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("top"), [0u8; 10]).unwrap();
        let mut p = dir.path().to_path_buf();
        for _ in 0..(MAX_SIZE_DEPTH + 5) {
            p.push("d");
        }
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join("deep"), [0u8; 99]).unwrap();
        let root = dir.path().to_path_buf();
        let size = std::thread::Builder::new()
            .stack_size(1024 * 1024)
            .spawn(move || tree_size(&root))
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(size, 10, "files below the depth limit are not counted");
    }

    #[test]
    fn removes_trees_deeper_than_path_max_with_a_small_stack() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("deep");
        std::fs::create_dir(&t).unwrap();
        // 3000 levels of a 10-byte name: 33 KB of path, far past PATH_MAX.
        let root = std::fs::File::open(&t).unwrap();
        let mut fd = std::os::fd::OwnedFd::from(root);
        for _ in 0..3000 {
            let name = std::ffi::CString::new("abcdefghij").unwrap();
            use std::os::fd::{AsRawFd, FromRawFd};
            // SAFETY: mkdirat/openat on fds we own.
            unsafe {
                assert_eq!(libc::mkdirat(fd.as_raw_fd(), name.as_ptr(), 0o755), 0);
                let n = libc::openat(
                    fd.as_raw_fd(),
                    name.as_ptr(),
                    libc::O_RDONLY | libc::O_DIRECTORY,
                );
                assert!(n >= 0);
                fd = std::os::fd::OwnedFd::from_raw_fd(n);
            }
        }
        drop(fd);
        // A small stack proves the deletion does not recurse.
        std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || remove_tree(&t).unwrap())
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn refuses_when_a_mount_lies_below() {
        // /proc is always a mount point below /.
        assert!(has_mounts_below(Path::new("/")).unwrap());
        assert!(!has_mounts_below(Path::new("/nonexistent-sandkasten-dir")).unwrap());
    }
}
