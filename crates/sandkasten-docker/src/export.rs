//! Workspace export of the docker runtime: a tar of a volume's content,
//! walked live on the host side of a local engine's volume.
//!
//! The walk is fd-relative (`openat` with `O_NOFOLLOW`, `fstatat` without
//! following), so nothing a sandbox plants in its workspace (a symlink, a
//! directory swapped for one) can make the daemon read outside the volume.
//! Without user namespaces the owners on the host are the owners inside,
//! so they are written as they are. A file that changes size during the
//! walk is cut or zero-padded to the size it had when opened, so the
//! archive stays well-formed.

use std::ffi::{CStr, CString, OsStr};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::hostfs::{open_dir_nofollow, MAX_DEPTH};

/// Writes the tree below `root` to `out` as a tar with relative paths.
pub fn export_tar(root: &Path, out: &mut dyn Write) -> io::Result<()> {
    let fd = open_dir_nofollow(root)?;
    let mut b = tar::Builder::new(out);
    walk(&mut b, &fd, Path::new(""), 0)?;
    b.finish()
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// The names in directory `fd` (sorted, without `.` and `..`).
fn names(fd: &OwnedFd) -> io::Result<Vec<CString>> {
    // fdopendir takes the fd it is given: hand it a duplicate.
    // SAFETY: dup of an fd we hold.
    let dup = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) })?;
    // SAFETY: `dup` is ours; on success `dir` owns it.
    let dir = unsafe { libc::fdopendir(dup) };
    if dir.is_null() {
        let e = io::Error::last_os_error();
        // SAFETY: fdopendir failed, so `dup` is still ours to close.
        unsafe { libc::close(dup) };
        return Err(e);
    }
    // SAFETY: rewind: the duplicate shares the offset of `fd`.
    unsafe { libc::rewinddir(dir) };
    let mut out = Vec::new();
    loop {
        // SAFETY: `dir` is valid; the entry lives until the next readdir.
        let ent = unsafe { libc::readdir(dir) };
        if ent.is_null() {
            break;
        }
        // SAFETY: d_name is NUL-terminated.
        let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) };
        if name.to_bytes() != b"." && name.to_bytes() != b".." {
            out.push(name.to_owned());
        }
    }
    // SAFETY: closes `dir` and the duplicate.
    unsafe { libc::closedir(dir) };
    out.sort();
    Ok(out)
}

fn header(st: &libc::stat, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(st.st_mode & 0o7777);
    h.set_uid(st.st_uid as u64);
    h.set_gid(st.st_gid as u64);
    h.set_mtime(st.st_mtime.max(0) as u64);
    h.set_size(0);
    h
}

fn walk(
    b: &mut tar::Builder<&mut dyn Write>,
    dir: &OwnedFd,
    rel: &Path,
    depth: usize,
) -> io::Result<()> {
    for name in names(dir)? {
        let path: PathBuf = rel.join(OsStr::from_bytes(name.to_bytes()));
        // SAFETY: zeroed stat is a valid out buffer.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid dirfd, name and buffer.
        let r = unsafe {
            libc::fstatat(
                dir.as_raw_fd(),
                name.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if r != 0 {
            // Deleted since the listing: a live walk skips it.
            continue;
        }
        match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => {
                let mut h = header(&st, tar::EntryType::Directory);
                b.append_data(&mut h, &path, io::empty())?;
                if depth >= MAX_DEPTH {
                    continue;
                }
                // SAFETY: valid dirfd and name.
                let child = unsafe {
                    libc::openat(
                        dir.as_raw_fd(),
                        name.as_ptr(),
                        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                    )
                };
                if child >= 0 {
                    // SAFETY: a fresh fd we own.
                    let child = unsafe { OwnedFd::from_raw_fd(child) };
                    walk(b, &child, &path, depth + 1)?;
                }
            }
            libc::S_IFREG => {
                // SAFETY: valid dirfd and name; O_NONBLOCK so a file
                // swapped for a FIFO cannot stall the walk.
                let fd = unsafe {
                    libc::openat(
                        dir.as_raw_fd(),
                        name.as_ptr(),
                        libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK,
                    )
                };
                if fd < 0 {
                    continue;
                }
                // SAFETY: a fresh fd we own.
                let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
                let meta = file.metadata()?;
                if !meta.is_file() {
                    continue;
                }
                let size = meta.len();
                let mut h = header(&st, tar::EntryType::Regular);
                h.set_size(size);
                let data = file.take(size).chain(io::repeat(0)).take(size);
                b.append_data(&mut h, &path, data)?;
            }
            libc::S_IFLNK => {
                let Ok(buf) = sandkasten_fsops::readlink_at(std::os::fd::AsFd::as_fd(dir), &name)
                else {
                    continue;
                };
                let mut h = header(&st, tar::EntryType::Symlink);
                b.append_link(&mut h, &path, OsStr::from_bytes(&buf))?;
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_files_dirs_and_symlinks_without_following() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"host secret").unwrap();
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("a/b")).unwrap();
        std::fs::write(d.path().join("a/b/f.txt"), b"hello").unwrap();
        let long = "x".repeat(150);
        std::fs::write(d.path().join(&long), b"long name").unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("a/out")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), d.path().join("s")).unwrap();

        let mut buf = Vec::new();
        export_tar(d.path(), &mut buf).unwrap();
        let mut ar = tar::Archive::new(&buf[..]);
        let mut seen = Vec::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let p = e.path().unwrap().display().to_string();
            let kind = e.header().entry_type();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            assert!(
                !data.windows(6).any(|w| w == b"secret"),
                "{p} leaked the host file"
            );
            let link = e.link_name().unwrap().map(|l| l.display().to_string());
            seen.push((p, kind, data, link));
        }
        let find = |p: &str| {
            seen.iter()
                .find(|s| s.0 == p)
                .unwrap_or_else(|| panic!("{p}"))
        };
        assert_eq!(find("a/b/f.txt").2, b"hello");
        assert_eq!(find(&long).2, b"long name");
        assert!(find("a/b").1.is_dir());
        assert!(find("a/out").1.is_symlink());
        assert_eq!(
            find("s").3.as_deref(),
            Some(&*outside.path().join("secret").display().to_string())
        );
        assert!(!seen.iter().any(|s| s.0.starts_with("a/out/")));
    }
}
