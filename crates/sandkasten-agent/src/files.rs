//! File operations (read, write, list, stat, mkdir, remove) on absolute
//! paths, done with the rights of the sandbox user.
//!
//! When the agent has a sandbox uid/gid, each operation runs under
//! [`FsIdentity`]: the calling thread's filesystem uid and gid become the
//! sandbox user's and its supplementary groups are dropped. Changing the
//! fsuid away from 0 also drops the filesystem capabilities (DAC override
//! and friends) of a root agent, so the agent touches exactly what the
//! sandbox user may touch, and files it creates belong to that user. The
//! raw syscalls are per thread (glibc's wrappers of `setgroups` would apply
//! to every thread), so other requests are not affected.

use sandkasten_protocol::{DirEntry, ErrorKind, FileStat, FileType, MAX_FRAME_BYTES};
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Room left in a frame for everything but the file data.
const FRAME_OVERHEAD: u64 = 64 * 1024;
/// Largest file content one `FileData` can carry.
pub const MAX_READ_BYTES: u64 = MAX_FRAME_BYTES as u64 - FRAME_OVERHEAD;

/// A failed file operation, as sent in `Response::Error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsError {
    pub kind: ErrorKind,
    pub message: String,
}

impl FsError {
    fn new(kind: ErrorKind, message: impl Into<String>) -> FsError {
        FsError {
            kind,
            message: message.into(),
        }
    }

    /// Maps an OS error on `path` to its typed kind, naming the path.
    fn io(e: io::Error, path: &str) -> FsError {
        let kind = match e.raw_os_error() {
            Some(libc::ENOENT) => ErrorKind::NotFound,
            Some(libc::ENOTDIR) => ErrorKind::NotADirectory,
            Some(libc::EISDIR) => ErrorKind::IsADirectory,
            Some(libc::EACCES | libc::EPERM | libc::EROFS) => ErrorKind::PermissionDenied,
            Some(libc::EEXIST) => ErrorKind::AlreadyExists,
            Some(libc::ENOTEMPTY) => ErrorKind::DirectoryNotEmpty,
            _ => ErrorKind::Io,
        };
        FsError::new(kind, format!("{path}: {e}"))
    }
}

type FsResult<T> = Result<T, FsError>;

/// File operations with the rights of one (optional) sandbox user.
pub struct Files {
    uid: Option<u32>,
    gid: Option<u32>,
}

impl Files {
    pub fn new(uid: Option<u32>, gid: Option<u32>) -> Files {
        Files { uid, gid }
    }

    /// Reads a regular file, at most `max_bytes` (and never more than fits
    /// in a frame). Returns the data and whether it was cut short.
    pub fn read_file(&self, path: &str, max_bytes: Option<u64>) -> FsResult<(Vec<u8>, bool)> {
        let p = absolute(path)?;
        self.as_user(|| {
            // O_NONBLOCK: opening a FIFO must not wait for a writer.
            let mut f = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
                .open(p)
                .map_err(|e| FsError::io(e, path))?;
            let meta = f.metadata().map_err(|e| FsError::io(e, path))?;
            if meta.is_dir() {
                return Err(FsError::new(
                    ErrorKind::IsADirectory,
                    format!("{path}: is a directory"),
                ));
            }
            if !meta.is_file() {
                return Err(FsError::new(
                    ErrorKind::InvalidPath,
                    format!("{path}: not a regular file"),
                ));
            }
            let limit = max_bytes.unwrap_or(u64::MAX).min(MAX_READ_BYTES);
            let mut data = Vec::with_capacity(meta.len().min(limit) as usize);
            // Read to EOF rather than trusting st_size (/proc files say 0).
            (&mut f)
                .take(limit)
                .read_to_end(&mut data)
                .map_err(|e| FsError::io(e, path))?;
            let truncated = data.len() as u64 == limit && {
                let mut one = [0u8; 1];
                f.read(&mut one).map_err(|e| FsError::io(e, path))? > 0
            };
            Ok((data, truncated))
        })
    }

    /// Writes a whole file byte for byte: creates missing parents (0755)
    /// and the file (`mode`, default 0644, exactly: not masked by the
    /// umask), or truncates an existing one.
    pub fn write_file(&self, path: &str, data: &[u8], mode: Option<u32>) -> FsResult<()> {
        let p = absolute(path)?;
        let mode = mode.unwrap_or(0o644) & 0o7777;
        self.as_user(|| {
            if let Some(parent) = p.parent() {
                create_dirs(parent, path)?;
            }
            let mut f = match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .custom_flags(libc::O_NOCTTY)
                .open(p)
            {
                Ok(f) => {
                    f.set_permissions(fs::Permissions::from_mode(mode))
                        .map_err(|e| FsError::io(e, path))?;
                    f
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => OpenOptions::new()
                    .write(true)
                    .truncate(true)
                    .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
                    .open(p)
                    .map_err(|e| FsError::io(e, path))?,
                Err(e) => return Err(FsError::io(e, path)),
            };
            f.write_all(data).map_err(|e| FsError::io(e, path))?;
            Ok(())
        })
    }

    /// Lists a directory, sorted by name; types come from lstat.
    pub fn list_dir(&self, path: &str) -> FsResult<Vec<DirEntry>> {
        let p = absolute(path)?;
        self.as_user(|| {
            let mut entries = Vec::new();
            for entry in fs::read_dir(p).map_err(|e| FsError::io(e, path))? {
                let entry = entry.map_err(|e| FsError::io(e, path))?;
                // DirEntry::metadata does not follow symlinks.
                let meta = match entry.metadata() {
                    Ok(m) => m,
                    // Removed since the directory was read.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(FsError::io(e, &entry.path().to_string_lossy())),
                };
                entries.push(DirEntry {
                    name: entry.file_name().to_string_lossy().into_owned(),
                    file_type: file_type(&meta),
                    size: meta.len(),
                    mode: meta.mode() & 0o7777,
                    mtime: meta.mtime(),
                });
            }
            entries.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(entries)
        })
    }

    /// Stats a path without following a final symlink.
    pub fn stat(&self, path: &str) -> FsResult<FileStat> {
        let p = absolute(path)?;
        self.as_user(|| {
            let meta = fs::symlink_metadata(p).map_err(|e| FsError::io(e, path))?;
            let link_target = if meta.file_type().is_symlink() {
                let t = fs::read_link(p).map_err(|e| FsError::io(e, path))?;
                Some(t.to_string_lossy().into_owned())
            } else {
                None
            };
            Ok(FileStat {
                path: path.to_string(),
                file_type: file_type(&meta),
                size: meta.len(),
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
                mtime: meta.mtime(),
                link_target,
            })
        })
    }

    /// Creates a directory (0755), with its parents when `parents`.
    pub fn mkdir(&self, path: &str, parents: bool) -> FsResult<()> {
        let p = absolute(path)?;
        self.as_user(|| {
            if parents {
                create_dirs(p, path)
            } else {
                DirBuilder::new()
                    .mode(0o755)
                    .create(p)
                    .map_err(|e| FsError::io(e, path))
            }
        })
    }

    /// Removes a file, symlink or empty directory; a directory tree only
    /// when `recursive` (symlinks inside are removed, never followed).
    pub fn remove(&self, path: &str, recursive: bool) -> FsResult<()> {
        let p = absolute(path)?;
        if p.parent().is_none() {
            return Err(FsError::new(ErrorKind::InvalidPath, "refusing to remove /"));
        }
        self.as_user(|| {
            let meta = fs::symlink_metadata(p).map_err(|e| FsError::io(e, path))?;
            if !meta.is_dir() {
                return fs::remove_file(p).map_err(|e| FsError::io(e, path));
            }
            if recursive {
                return fs::remove_dir_all(p).map_err(|e| FsError::io(e, path));
            }
            fs::remove_dir(p).map_err(|e| {
                // Some filesystems say EEXIST for a non-empty directory.
                if e.raw_os_error() == Some(libc::EEXIST) {
                    FsError::new(
                        ErrorKind::DirectoryNotEmpty,
                        format!("{path}: directory not empty"),
                    )
                } else {
                    FsError::io(e, path)
                }
            })
        })
    }

    /// Runs `op` on this thread with the sandbox user's filesystem rights.
    fn as_user<T>(&self, op: impl FnOnce() -> FsResult<T>) -> FsResult<T> {
        let _identity = FsIdentity::assume(self.uid, self.gid)?;
        op()
    }
}

/// The calling thread's filesystem identity, switched to the sandbox user
/// and restored on drop.
struct FsIdentity {
    prev_uid: Option<u32>,
    prev_gid: Option<u32>,
    prev_groups: Option<Vec<libc::gid_t>>,
}

impl FsIdentity {
    fn assume(uid: Option<u32>, gid: Option<u32>) -> FsResult<FsIdentity> {
        let mut id = FsIdentity {
            prev_uid: None,
            prev_gid: None,
            prev_groups: None,
        };
        if uid.is_none() && gid.is_none() {
            return Ok(id);
        }
        let denied = |what: &str| {
            FsError::new(
                ErrorKind::PermissionDenied,
                format!("cannot take the sandbox user's {what} for a file operation"),
            )
        };
        // Supplementary groups: the shell runs without them, and so do
        // file operations. EPERM means a user namespace that forbids
        // setgroups, where they cannot be anything else anyway.
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
        if let Some(gid) = gid {
            id.prev_gid = Some(set_fs_id(libc::SYS_setfsgid, gid).ok_or_else(|| denied("gid"))?);
        }
        if let Some(uid) = uid {
            id.prev_uid = Some(set_fs_id(libc::SYS_setfsuid, uid).ok_or_else(|| denied("uid"))?);
        }
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
    // that size. Both are per-thread reads of the credentials.
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

/// Checks that a path is absolute and NUL-free.
fn absolute(path: &str) -> FsResult<&Path> {
    if !path.starts_with('/') {
        return Err(FsError::new(
            ErrorKind::InvalidPath,
            format!("{path:?} is not an absolute path"),
        ));
    }
    if path.contains('\0') {
        return Err(FsError::new(
            ErrorKind::InvalidPath,
            format!("{path:?} contains a NUL byte"),
        ));
    }
    Ok(Path::new(path))
}

/// `mkdir -p` with mode 0755; `path` names the request in errors.
fn create_dirs(dir: &Path, path: &str) -> FsResult<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                // A component exists but is not a directory.
                FsError::new(
                    ErrorKind::NotADirectory,
                    format!("{path}: {} is not a directory", dir.display()),
                )
            } else {
                FsError::io(e, path)
            }
        })
}

fn file_type(meta: &fs::Metadata) -> FileType {
    let t = meta.file_type();
    if t.is_symlink() {
        FileType::Symlink
    } else if t.is_dir() {
        FileType::Dir
    } else if t.is_file() {
        FileType::File
    } else {
        FileType::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_refused() {
        let f = Files::new(None, None);
        let e = f.read_file("etc/passwd", None).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidPath);
        let e = f.remove("/", true).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidPath);
    }

    #[test]
    fn errors_map_to_kinds_and_name_the_path() {
        let e = FsError::io(io::Error::from_raw_os_error(libc::ENOTEMPTY), "/x");
        assert_eq!(e.kind, ErrorKind::DirectoryNotEmpty);
        assert!(e.message.starts_with("/x: "), "{}", e.message);
        let e = FsError::io(io::Error::from_raw_os_error(libc::EROFS), "/y");
        assert_eq!(e.kind, ErrorKind::PermissionDenied);
        let e = FsError::io(io::Error::from_raw_os_error(libc::ELOOP), "/z");
        assert_eq!(e.kind, ErrorKind::Io);
    }
}
