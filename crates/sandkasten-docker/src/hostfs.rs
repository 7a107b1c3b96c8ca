//! What the daemon does on the host side of a local engine's files: the
//! per-session run directories, a volume's root ownership, and a volume's
//! size (an fd-relative walk that never follows a symlink).

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// Deepest directory level [`tree_size`] descends to (a tree built inside
/// a sandbox can be arbitrarily deep; the walk must not be).
pub const MAX_DEPTH: usize = 256;

/// Bytes in the regular files below `root`, without following symlinks or
/// leaving through one: every step is `openat(O_NOFOLLOW)` relative to the
/// directory above it.
pub fn tree_size(root: &Path) -> io::Result<u64> {
    Ok(dir_size(open_dir_nofollow(root)?, 0))
}

/// `root` opened as a directory, refusing a symlink as its last component.
pub fn open_dir_nofollow(root: &Path) -> io::Result<OwnedFd> {
    let c = std::ffi::CString::new(root.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    // SAFETY: NUL-terminated path, plain flags.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn dir_size(fd: OwnedFd, depth: usize) -> u64 {
    // SAFETY: fdopendir takes ownership of the fd on success.
    let dir = unsafe { libc::fdopendir(fd.as_raw_fd()) };
    if dir.is_null() {
        return 0;
    }
    let _ = fd.into_raw_fd(); // now owned by `dir`
                              // SAFETY: `dir` is a valid DIR*.
    let dfd = unsafe { libc::dirfd(dir) };
    let mut total = 0u64;
    loop {
        // SAFETY: `dir` is valid; the entry lives until the next readdir.
        let ent = unsafe { libc::readdir(dir) };
        if ent.is_null() {
            break;
        }
        // SAFETY: d_name is NUL-terminated.
        let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) };
        if name.to_bytes() == b"." || name.to_bytes() == b".." {
            continue;
        }
        // SAFETY: zeroed stat is a valid out buffer.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid dirfd, name and buffer.
        if unsafe { libc::fstatat(dfd, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) } != 0 {
            continue;
        }
        match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => total += st.st_size as u64,
            libc::S_IFDIR if depth < MAX_DEPTH => {
                // SAFETY: valid dirfd and name.
                let child = unsafe {
                    libc::openat(
                        dfd,
                        name.as_ptr(),
                        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                    )
                };
                if child >= 0 {
                    // SAFETY: a fresh fd we own.
                    total += dir_size(unsafe { OwnedFd::from_raw_fd(child) }, depth + 1);
                }
            }
            _ => {}
        }
    }
    // SAFETY: closes `dir` and its fd.
    unsafe { libc::closedir(dir) };
    total
}

/// Gives a fresh volume's root to the sandbox user (mode 0755). Only a
/// root-owned root is changed, so this runs once per volume: later the
/// user owns it and may have changed its mode.
pub fn own_volume_root(root: &Path, uid: u32) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(root)?;
    if !meta.is_dir() {
        return Err(io::Error::other(format!(
            "{} is not a directory",
            root.display()
        )));
    }
    if meta.uid() == 0 {
        std::os::unix::fs::lchown(root, Some(uid), Some(uid))?;
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

/// Creates a directory only root can enter (an existing one is reused).
pub fn private_dir(p: &Path) -> io::Result<()> {
    match std::fs::create_dir(p) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700))
}

/// Removes a session's run directory: its entries (socket, config; never
/// a subdirectory) and then the directory. A missing one is fine.
pub fn remove_run_dir(dir: &Path) -> io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for e in entries {
        let e = e?;
        // remove_file removes a symlink itself, never its target, and
        // refuses a directory (nothing in a run dir is one).
        match std::fs::remove_file(e.path()) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
    }
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_counts_files_and_skips_symlinks() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("big"), vec![0u8; 10_000]).unwrap();
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("a/b")).unwrap();
        std::fs::write(d.path().join("a/b/f"), b"12345").unwrap();
        std::fs::write(d.path().join("g"), b"123").unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("a/out")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("big"), d.path().join("big")).unwrap();
        assert_eq!(tree_size(d.path()).unwrap(), 8);
    }

    #[test]
    fn size_stops_at_the_depth_bound() {
        let d = tempfile::tempdir().unwrap();
        let mut p = d.path().to_path_buf();
        for _ in 0..MAX_DEPTH + 5 {
            p.push("d");
        }
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join("deep"), b"x").unwrap();
        std::fs::write(d.path().join("top"), b"xy").unwrap();
        assert_eq!(tree_size(d.path()).unwrap(), 2);
    }

    #[test]
    fn run_dir_removal_is_idempotent() {
        let d = tempfile::tempdir().unwrap();
        let run = d.path().join("run");
        private_dir(&run).unwrap();
        std::fs::write(run.join("config.json"), "{}").unwrap();
        std::os::unix::fs::symlink("/etc", run.join("link")).unwrap();
        remove_run_dir(&run).unwrap();
        assert!(!run.exists());
        assert!(Path::new("/etc").is_dir());
        remove_run_dir(&run).unwrap();
    }
}
