//! Deleting a tree a sandbox may have shaped: iterative and fd-relative, so
//! its stack and fds stay constant however deep the tree, no path is ever
//! longer than one name, no symlink is followed and no other filesystem is
//! entered; and never while anything is mounted below it.

use crate::{is_dot, open_dir_at};
use rustix::fs::{AtFlags, Dir, FileType, Stat};
use std::ffi::CString;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

/// True when some mount point in the daemon's mount namespace lies at or
/// below `dir` (read from `/proc/self/mountinfo`).
pub fn has_mounts_below(dir: &Path) -> io::Result<bool> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let dir = dir.to_string_lossy().replace(' ', "\\040");
    let prefix = format!("{}/", dir.trim_end_matches('/'));
    Ok(info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| mp == dir || mp.starts_with(&prefix)))
}

/// Deletes the directory tree `dir` without ever crossing into another
/// filesystem and without following symlinks; refuses when anything is
/// mounted below it. A missing `dir` is not an error.
pub fn remove_tree(dir: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    if has_mounts_below(dir)? {
        return Err(io::Error::other(format!(
            "refusing to delete {}: a mount lies below it",
            dir.display()
        )));
    }
    let root = crate::open_dir_nofollow(dir)?;
    let root_st = rustix::fs::fstat(&root)?;
    let mut cur = root;
    // The names from the root down to `cur`: the way back up is `..`.
    let mut names: Vec<CString> = Vec::new();
    loop {
        match clear_files(&cur, &root_st)? {
            Some(name) => {
                let next = open_dir_at(&cur, &name)?;
                names.push(name);
                cur = next;
            }
            None => match names.pop() {
                None => break,
                Some(name) => {
                    let parent = open_dir_at(&cur, c"..")?;
                    rustix::fs::unlinkat(&parent, &name, AtFlags::REMOVEDIR)?;
                    cur = parent;
                }
            },
        }
    }
    drop(cur);
    std::fs::remove_dir(dir)
}

/// Unlinks every non-directory in `dir`; returns the name of its first
/// subdirectory, if any (refusing one on another filesystem than `root`).
fn clear_files(dir: &OwnedFd, root: &Stat) -> io::Result<Option<CString>> {
    let mut sub = None;
    for entry in Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if is_dot(name) {
            continue;
        }
        let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            if st.st_dev != root.st_dev {
                return Err(io::Error::other(
                    "refusing to cross into another filesystem",
                ));
            }
            if sub.is_none() {
                sub = Some(name.to_owned());
            }
        } else {
            rustix::fs::unlinkat(dir, name, AtFlags::empty())?;
        }
    }
    Ok(sub)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::Mode;
    use std::os::fd::OwnedFd;

    #[test]
    fn removes_trees_without_following_symlinks() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), "x").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("t");
        std::fs::create_dir_all(t.join("a/b")).unwrap();
        std::fs::write(t.join("a/b/f"), "y").unwrap();
        std::os::unix::fs::symlink(outside.path(), t.join("a/link")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("keep"), t.join("k")).unwrap();
        remove_tree(&t).unwrap();
        assert!(!t.exists());
        assert!(outside.path().join("keep").exists());
        // Gone already: fine.
        remove_tree(&t).unwrap();
    }

    #[test]
    fn a_symlink_as_the_root_is_refused() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), "x").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let l = dir.path().join("l");
        std::os::unix::fs::symlink(outside.path(), &l).unwrap();
        assert!(remove_tree(&l).is_err());
        assert!(outside.path().join("keep").exists());
    }

    #[test]
    fn removes_trees_deeper_than_path_max_with_a_small_stack() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("deep");
        std::fs::create_dir(&t).unwrap();
        // 3000 levels of a 10-byte name: 33 KB of path, far past PATH_MAX.
        let mut fd: OwnedFd = std::fs::File::open(&t).unwrap().into();
        for _ in 0..3000 {
            rustix::fs::mkdirat(&fd, c"abcdefghij", Mode::from_raw_mode(0o755)).unwrap();
            fd = open_dir_at(&fd, c"abcdefghij").unwrap();
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
    fn knows_when_a_mount_lies_below() {
        // /proc is always a mount point below /.
        assert!(has_mounts_below(Path::new("/")).unwrap());
        assert!(!has_mounts_below(Path::new("/nonexistent-sandkasten-dir")).unwrap());
    }
}
