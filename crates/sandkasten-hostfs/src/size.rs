//! Measuring a tree a sandbox may have shaped: the bytes of its regular
//! files, walked by directory fds without following a symlink, with a
//! bounded depth and an explicit stack (no recursion).

use crate::{is_dot, open_dir_at, open_dir_nofollow};
use rustix::fs::{AtFlags, Dir, FileType};
use std::io;
use std::path::Path;

/// Directory levels [`tree_size`] lists: the root is level 0, and files in
/// directories at this level or deeper are not counted. A sandbox can nest
/// directories far deeper than anyone needs measured; a size is worth
/// less than the daemon's fds.
pub const MAX_SIZE_DEPTH: usize = 256;

/// Bytes of all regular files below `root` (opened with
/// [`open_dir_nofollow`]). Symlinks are not followed and count nothing; an
/// entry that vanishes during the walk counts 0, a directory that cannot
/// be read counts what was read of it. Errors only when `root` cannot be
/// opened.
///
/// A sandbox shapes these files, and the cleanup policy deletes other
/// workspaces by this sum: a file counts at most what it holds on disk (a
/// sparse file of 5 GB with nothing in it counts 0), a file with several
/// names counts once, and the sum saturates instead of wrapping.
pub fn tree_size(root: &Path) -> io::Result<u64> {
    let mut stack = vec![Dir::new(open_dir_nofollow(root)?)?];
    let mut total = 0u64;
    let mut linked = std::collections::HashSet::new();
    loop {
        // The level of the subdirectories of the directory on top.
        let level = stack.len();
        let Some(dir) = stack.last_mut() else {
            break;
        };
        let entry = match dir.next() {
            Some(Ok(entry)) => entry,
            // Done, or unreadable from here on: go back up.
            Some(Err(_)) | None => {
                stack.pop();
                continue;
            }
        };
        let name = entry.file_name();
        if is_dot(name) {
            continue;
        }
        let fd = dir.fd()?;
        let Ok(st) = rustix::fs::statat(fd, name, AtFlags::SYMLINK_NOFOLLOW) else {
            continue; // gone meanwhile
        };
        let child = match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => {
                let once = st.st_nlink <= 1 || linked.insert((st.st_dev, st.st_ino));
                if once {
                    let length = u64::try_from(st.st_size).unwrap_or(0);
                    let held = u64::try_from(st.st_blocks).unwrap_or(0).saturating_mul(512);
                    total = total.saturating_add(length.min(held));
                }
                None
            }
            FileType::Directory if level < MAX_SIZE_DEPTH => open_dir_at(fd, name).ok(),
            _ => None,
        };
        if let Some(Ok(child)) = child.map(Dir::new) {
            stack.push(child);
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_regular_files_and_never_follows_a_symlink() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("big"), vec![0u8; 10_000]).unwrap();
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("a/b")).unwrap();
        std::fs::write(d.path().join("a/b/f"), b"12345").unwrap();
        std::fs::write(d.path().join("g"), b"123").unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("a/out")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("big"), d.path().join("big")).unwrap();
        assert_eq!(tree_size(d.path()).unwrap(), 8);
        // A sparse file counts what it holds; a second name counts nothing.
        let sparse = std::fs::File::create(d.path().join("sparse")).unwrap();
        sparse.set_len(5 << 30).unwrap();
        std::fs::hard_link(d.path().join("g"), d.path().join("g2")).unwrap();
        std::fs::hard_link(d.path().join("g"), d.path().join("a/g3")).unwrap();
        assert_eq!(tree_size(d.path()).unwrap(), 8);
        assert!(
            tree_size(&d.path().join("big")).is_err(),
            "a symlinked root"
        );
        assert!(tree_size(&d.path().join("missing")).is_err());
    }

    #[test]
    fn stops_at_the_depth_limit_with_a_small_stack() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("top"), [0u8; 10]).unwrap();
        let mut p = dir.path().to_path_buf();
        for level in 1..=(MAX_SIZE_DEPTH + 5) {
            p.push("d");
            std::fs::create_dir(&p).unwrap();
            if level == MAX_SIZE_DEPTH - 1 {
                std::fs::write(p.join("last"), [0u8; 7]).unwrap();
            }
        }
        std::fs::write(p.join("deep"), [0u8; 99]).unwrap();
        let root = dir.path().to_path_buf();
        let size = std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || tree_size(&root))
            .unwrap()
            .join()
            .unwrap()
            .unwrap();
        assert_eq!(
            size, 17,
            "files at level {MAX_SIZE_DEPTH} and below are not counted"
        );
    }

    /// The attack that broke the old path walk: a sandbox swaps a directory
    /// with a symlink to a host directory (`RENAME_EXCHANGE`, in a loop)
    /// while the daemon measures. No answer may include the host's file.
    #[test]
    fn a_directory_swapped_with_a_symlink_mid_walk_never_counts_the_host() {
        use rustix::fs::{renameat_with, RenameFlags, CWD};
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let host = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("secret"), vec![0u8; 1 << 20]).unwrap();
        let ws = tempfile::tempdir().unwrap();
        std::fs::create_dir(ws.path().join("d")).unwrap();
        std::fs::write(ws.path().join("d/f"), b"1234").unwrap();
        std::os::unix::fs::symlink(host.path(), ws.path().join("l")).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let swapper = {
            let (d, l, stop) = (ws.path().join("d"), ws.path().join("l"), stop.clone());
            std::thread::spawn(move || {
                let mut swaps = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    renameat_with(CWD, &d, CWD, &l, RenameFlags::EXCHANGE).unwrap();
                    swaps += 1;
                }
                swaps
            })
        };
        for _ in 0..500 {
            // The directory may be met under both names (it moved during
            // the listing), so its 4 bytes can count twice; the host's
            // 1 MiB file never.
            let n = tree_size(ws.path()).unwrap();
            assert!(
                n <= 8,
                "the walk counted {n} bytes: it followed the swapped symlink"
            );
        }
        stop.store(true, Ordering::Relaxed);
        assert!(swapper.join().unwrap() > 0, "the swap never ran");
    }
}
