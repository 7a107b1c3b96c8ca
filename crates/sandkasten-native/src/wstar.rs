//! Workspace export and import as tar.
//!
//! Export walks a tree with directory fds (`openat` + `O_NOFOLLOW`), so a
//! sandbox that swaps a directory for a symlink mid-walk can never make the
//! daemon read outside the tree; symlinks are stored as symlinks, owners
//! mapped back to the sandbox's view.
//!
//! Import extracts into a fresh, empty directory that nothing else writes
//! to: every entry's path must be relative without `..`, and every parent
//! must be a real directory (checked with `lstat`, never followed), so an
//! archive cannot write through a symlink it created earlier.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// Maps a host uid/gid back to the sandbox's view.
fn sandbox_id(host: u32, host_root: u32, size: u32) -> u64 {
    if host >= host_root && host - host_root < size {
        (host - host_root) as u64
    } else {
        65534
    }
}

fn cstr(b: &[u8]) -> io::Result<CString> {
    CString::new(b).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a name"))
}

fn openat(dir: &OwnedFd, name: &CString, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: openat below a directory fd we own.
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
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fstatat(dir: &OwnedFd, name: &CString) -> io::Result<libc::stat> {
    // SAFETY: fstatat into a zeroed struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// Exactly `size` bytes: the file's, zero-padded when it shrank meanwhile.
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.left as usize);
        let n = match self.inner.read(&mut buf[..want])? {
            0 => {
                buf[..want].fill(0);
                want
            }
            n => n,
        };
        self.left -= n as u64;
        Ok(n)
    }
}

/// Writes the tree at `root` as a tar to `out`.
pub fn export(root: &Path, host_root: u32, size: u32, out: impl Write) -> io::Result<()> {
    let root_path = cstr(root.as_os_str().as_bytes())?;
    // SAFETY: open of the root directory.
    let fd = unsafe {
        libc::open(
            root_path.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    let root_fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut b = tar::Builder::new(out);
    b.mode(tar::HeaderMode::Complete);
    walk(&mut b, &root_fd, PathBuf::new(), host_root, size, 0)?;
    b.into_inner()?.flush()
}

fn header_for(st: &libc::stat, kind: tar::EntryType, host_root: u32, size: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(st.st_mode & 0o7777);
    h.set_uid(sandbox_id(st.st_uid, host_root, size));
    h.set_gid(sandbox_id(st.st_gid, host_root, size));
    h.set_mtime(st.st_mtime.max(0) as u64);
    h.set_size(0);
    h
}

/// Deepest directory nesting an export follows. The walk recurses (one fd
/// and one stack frame per level), and a sandbox can build trees far deeper
/// than any tool can unpack; past this the export fails cleanly.
const MAX_EXPORT_DEPTH: usize = 512;

fn walk<W: Write>(
    b: &mut tar::Builder<W>,
    dir: &OwnedFd,
    rel: PathBuf,
    host_root: u32,
    size: u32,
    depth: usize,
) -> io::Result<()> {
    if depth > MAX_EXPORT_DEPTH {
        return Err(io::Error::other(format!(
            "directories nested deeper than {MAX_EXPORT_DEPTH} levels cannot be exported"
        )));
    }
    let mut names: Vec<Vec<u8>> = std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().as_bytes().to_vec())
        .collect();
    names.sort();
    for name in names {
        let c = cstr(&name)?;
        let path = rel.join(std::ffi::OsStr::from_bytes(&name));
        let Ok(st) = fstatat(dir, &c) else {
            continue; // gone meanwhile
        };
        match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => {
                let Ok(sub) = openat(dir, &c, libc::O_RDONLY | libc::O_DIRECTORY) else {
                    continue; // replaced meanwhile
                };
                let mut h = header_for(&st, tar::EntryType::Directory, host_root, size);
                b.append_data(&mut h, &path, io::empty())?;
                walk(b, &sub, path, host_root, size, depth + 1)?;
            }
            libc::S_IFREG => {
                let Ok(f) = openat(dir, &c, libc::O_RDONLY | libc::O_NONBLOCK) else {
                    continue;
                };
                let f = File::from(f);
                let m = f.metadata()?;
                if !m.is_file() {
                    continue;
                }
                let mut st2 = st;
                st2.st_mode = m.mode();
                st2.st_uid = m.uid();
                st2.st_gid = m.gid();
                st2.st_mtime = m.mtime();
                let mut h = header_for(&st2, tar::EntryType::Regular, host_root, size);
                h.set_size(m.len());
                b.append_data(
                    &mut h,
                    &path,
                    Exact {
                        inner: f,
                        left: m.len(),
                    },
                )?;
            }
            libc::S_IFLNK => {
                let Ok(target) = sandkasten_fsops::readlink_at(std::os::fd::AsFd::as_fd(dir), &c)
                else {
                    continue;
                };
                let mut h = header_for(&st, tar::EntryType::Symlink, host_root, size);
                b.append_link(&mut h, &path, std::ffi::OsStr::from_bytes(&target))?;
            }
            _ => {} // sockets, fifos, devices
        }
    }
    Ok(())
}

/// Why an import failed.
#[derive(Debug)]
pub enum ImportError {
    /// The archive is malformed or tries to leave the workspace.
    Invalid(String),
    Io(io::Error),
}

impl From<io::Error> for ImportError {
    fn from(e: io::Error) -> Self {
        ImportError::Io(e)
    }
}

/// The entry's path as plain relative components; `None` for the root.
fn clean(path: &Path) -> Result<Option<PathBuf>, ImportError> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(ImportError::Invalid(format!(
                    "archive entry {} leaves the workspace (absolute or with ..)",
                    path.display()
                )))
            }
        }
    }
    Ok(if out.as_os_str().is_empty() {
        None
    } else {
        Some(out)
    })
}

/// Makes every parent of `rel` below `root` a real directory, refusing
/// symlinks and other files on the way.
fn parents(root: &Path, rel: &Path, owner: u32) -> Result<(), ImportError> {
    let mut cur = root.to_path_buf();
    let comps: Vec<_> = rel.components().collect();
    for c in &comps[..comps.len().saturating_sub(1)] {
        cur.push(c);
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Err(ImportError::Invalid(format!(
                    "archive entry {} is below a symlink",
                    rel.display()
                )))
            }
            Ok(_) => {
                return Err(ImportError::Invalid(format!(
                    "archive entry {} is below a file",
                    rel.display()
                )))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::create_dir(&cur)?;
                std::fs::set_permissions(&cur, std::fs::Permissions::from_mode(0o755))?;
                std::os::unix::fs::lchown(&cur, Some(owner), Some(owner))?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn set_mtime(path: &Path, mtime: u64) {
    let Ok(c) = cstr(path.as_os_str().as_bytes()) else {
        return;
    };
    let t = libc::timespec {
        tv_sec: mtime as libc::time_t,
        tv_nsec: 0,
    };
    let times = [t, t];
    // SAFETY: utimensat with a valid path and times.
    unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
}

/// Removes whatever is at `p` unless it is a directory.
fn clear(p: &Path) -> Result<(), ImportError> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => Err(ImportError::Invalid(format!(
            "archive entry {} replaces a directory",
            p.file_name().unwrap_or_default().to_string_lossy()
        ))),
        Ok(_) => Ok(std::fs::remove_file(p)?),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Extracts `archive` into the empty directory `root`; everything belongs
/// to `owner`, or with `keep` = (host_root, size) to the entry's own
/// sandbox uid/gid mapped to the host. Devices, fifos and other special
/// entries are skipped; setuid/setgid bits are dropped.
pub fn extract(
    archive: impl Read,
    root: &Path,
    owner: u32,
    keep: Option<(u32, u32)>,
) -> Result<(), ImportError> {
    let map = |id: Option<u64>| -> u32 {
        match (keep, id) {
            (Some((host_root, size)), Some(n)) if n < size as u64 => host_root + n as u32,
            _ => owner,
        }
    };
    let mut ar = tar::Archive::new(archive);
    let mut dirs: Vec<(PathBuf, u32, u64)> = Vec::new();
    let entries = ar
        .entries()
        .map_err(|e| ImportError::Invalid(format!("not a tar archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| ImportError::Invalid(format!("bad tar entry: {e}")))?;
        let raw = entry
            .path()
            .map_err(|e| ImportError::Invalid(format!("bad entry path: {e}")))?
            .into_owned();
        let kind = entry.header().entry_type();
        let mode = entry.header().mode().unwrap_or(0o644) & 0o1777;
        let mtime = entry.header().mtime().unwrap_or(0);
        let uid = map(entry.header().uid().ok());
        let gid = map(entry.header().gid().ok());
        let Some(rel) = clean(&raw)? else {
            if kind.is_dir() {
                dirs.push((root.to_path_buf(), mode, mtime));
            }
            continue;
        };
        match kind {
            tar::EntryType::Directory
            | tar::EntryType::Regular
            | tar::EntryType::Continuous
            | tar::EntryType::Symlink
            | tar::EntryType::Link => {}
            _ => continue, // devices, fifos, GNU extensions handled by the crate
        }
        parents(root, &rel, owner)?;
        let dst = root.join(&rel);
        match kind {
            tar::EntryType::Directory => {
                match std::fs::symlink_metadata(&dst) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        std::fs::remove_file(&dst)?;
                        std::fs::create_dir(&dst)?;
                    }
                    Err(_) => std::fs::create_dir(&dst)?,
                }
                std::os::unix::fs::lchown(&dst, Some(uid), Some(gid))?;
                dirs.push((dst, mode, mtime));
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(|e| ImportError::Invalid(format!("bad link target: {e}")))?
                    .ok_or_else(|| ImportError::Invalid("symlink without target".into()))?
                    .into_owned();
                clear(&dst)?;
                std::os::unix::fs::symlink(&target, &dst)?;
                std::os::unix::fs::lchown(&dst, Some(uid), Some(gid))?;
                set_mtime(&dst, mtime);
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(|e| ImportError::Invalid(format!("bad link target: {e}")))?
                    .ok_or_else(|| ImportError::Invalid("hard link without target".into()))?
                    .into_owned();
                let Some(trel) = clean(&target)? else {
                    return Err(ImportError::Invalid("hard link to the root".into()));
                };
                parents(root, &trel, owner)?;
                let src = root.join(&trel);
                match std::fs::symlink_metadata(&src) {
                    Ok(m) if m.is_file() => {}
                    _ => {
                        return Err(ImportError::Invalid(format!(
                            "hard link {} to {} which is not an earlier regular file",
                            rel.display(),
                            trel.display()
                        )))
                    }
                }
                clear(&dst)?;
                std::fs::hard_link(&src, &dst)?;
            }
            _ => {
                clear(&dst)?;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&dst)?;
                io::copy(&mut entry, &mut f)?;
                f.sync_all()?;
                drop(f);
                std::os::unix::fs::lchown(&dst, Some(uid), Some(gid))?;
                std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(mode & 0o777))?;
                set_mtime(&dst, mtime);
            }
        }
    }
    // Directories last, deepest first: their modes may forbid writing and
    // creating children changes their mtimes.
    dirs.sort_by(|a, b| b.0.cmp(&a.0));
    for (d, mode, mtime) in dirs {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode & 0o1777))?;
        set_mtime(&d, mtime);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            // Set the raw name so that bad paths get through the builder.
            {
                let gnu = h.as_gnu_mut().unwrap();
                gnu.name[..path.len()].copy_from_slice(path.as_bytes());
                if let Some(l) = link {
                    gnu.linkname[..l.len()].copy_from_slice(l.as_bytes());
                }
            }
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn owner() -> u32 {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() }
    }

    #[test]
    fn escapes_are_refused() {
        let outside = tempfile::tempdir().unwrap();
        for bad in [
            tar_of(&[("../x", tar::EntryType::Regular, b"x", None)]),
            tar_of(&[("/etc/x", tar::EntryType::Regular, b"x", None)]),
            tar_of(&[
                (
                    "l",
                    tar::EntryType::Symlink,
                    b"",
                    Some(outside.path().to_str().unwrap()),
                ),
                ("l/x", tar::EntryType::Regular, b"x", None),
            ]),
        ] {
            let root = tempfile::tempdir().unwrap();
            let r = extract(&bad[..], root.path(), owner(), None);
            assert!(matches!(r, Err(ImportError::Invalid(_))), "{r:?}");
        }
        assert!(!outside.path().join("x").exists());
    }

    #[test]
    fn too_deep_trees_fail_cleanly_within_a_normal_stack() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = dir.path().to_path_buf();
        for _ in 0..(MAX_EXPORT_DEPTH + 10) {
            p.push("d");
        }
        std::fs::create_dir_all(&p).unwrap();
        let root = dir.path().to_path_buf();
        let result = std::thread::Builder::new()
            .stack_size(2 * 1024 * 1024)
            .spawn(move || export(&root, 100_000, 65_536, std::io::sink()))
            .unwrap()
            .join()
            .unwrap();
        assert!(result.unwrap_err().to_string().contains("nested deeper"));
    }

    #[test]
    fn round_trip() {
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir(src.path().join("d")).unwrap();
        std::fs::write(src.path().join("d/f"), b"hello\0bin").unwrap();
        std::fs::set_permissions(
            src.path().join("d/f"),
            std::fs::Permissions::from_mode(0o750),
        )
        .unwrap();
        std::os::unix::fs::symlink("d/f", src.path().join("l")).unwrap();
        let mut out = Vec::new();
        export(src.path(), 100_000, 65_536, &mut out).unwrap();
        let dst = tempfile::tempdir().unwrap();
        extract(&out[..], dst.path(), owner(), None).unwrap();
        assert_eq!(
            std::fs::read(dst.path().join("d/f")).unwrap(),
            b"hello\0bin"
        );
        let m = std::fs::metadata(dst.path().join("d/f")).unwrap();
        assert_eq!(m.mode() & 0o777, 0o750);
        assert_eq!(
            std::fs::read_link(dst.path().join("l")).unwrap(),
            Path::new("d/f")
        );
    }
}
