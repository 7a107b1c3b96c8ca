//! File operations (read, write, list, stat, mkdir, remove) confined to a
//! root directory, optionally with the filesystem identity of a user.
//!
//! Used by the in-sandbox agent (root: the sandbox's `/`) and by the
//! daemon's session-less workspace access (root: a workspace directory on
//! the host, whose content the sandbox user controls).
//!
//! # Confinement
//!
//! [`RootedFs`] holds an `O_PATH` fd of the root. Client paths name places
//! below it: `/a/b` and `a/b` both mean `<root>/a/b`. A whole client path
//! is only ever resolved by `openat2(root_fd, path, RESOLVE_IN_ROOT |
//! RESOLVE_NO_MAGICLINKS)`: the kernel treats the root fd as `/` for the
//! whole walk, so `..` stops at it, absolute symlinks start at it and
//! relative ones cannot climb out of it, and `/proc` magic links (which
//! jump anywhere) are refused. There is no separate check that a later
//! step could race: whatever is swapped in between, each resolution stays
//! inside the root.
//!
//! Operations on a final component (create, mkdir, unlink, rmdir) go
//! through an fd of its parent directory, resolved as above, with the
//! single entry name (no `/`, never `.` or `..` where it matters):
//! `openat2(parent_fd, name, O_NOFOLLOW, RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)`, `mkdirat`, `unlinkat`, `fstatat(...,
//! AT_SYMLINK_NOFOLLOW)`. Creating parents walks component by component,
//! creating each missing directory with `mkdirat` in the fd of the one
//! before. A recursive remove walks by fds and never follows a symlink.
//!
//! # Identity
//!
//! With an identity `(uid, gid)`, each operation runs with that fsuid and
//! fsgid and no supplementary groups on the calling thread (raw per-thread
//! syscalls), restored afterwards by a drop guard; see `identity.rs`. A
//! [`RootedFs`] can therefore be shared by a pool of threads.

mod claim;
mod emulate;
mod identity;
mod sys;

pub use claim::{claim_tree, take_over_below, Claim, MAX_CLAIM_DEPTH};
pub use sys::readlink_at;
#[cfg(test)]
mod tests;

use identity::FsIdentity;
use sandkasten_protocol::{
    meta_problem, DirEntry, ErrorKind, FileStat, FileType, Request, Response, MAX_META_BYTES,
};
use std::borrow::Cow;
use std::ffi::CStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use sys::{RESOLVE_BENEATH, RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS, RESOLVE_NO_SYMLINKS};

/// Largest file content one read returns (what fits in a `FileData` frame).
pub const MAX_READ_BYTES: u64 = sandkasten_protocol::MAX_FILE_DATA_BYTES;

/// Mode of directories created by `mkdir` and for missing parents (the
/// process umask applies, as with `mkdir(1)`).
const DIR_MODE: u32 = 0o755;
/// Mode of a file created by `write_file` without an explicit one.
const FILE_MODE: u32 = 0o644;

/// A failed file operation, as sent in `Response::Error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsError {
    pub kind: ErrorKind,
    pub message: String,
}

impl FsError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> FsError {
        FsError {
            kind,
            message: message.into(),
        }
    }

    /// Maps an OS error on `path` to its typed kind, naming the path.
    /// ELOOP (a symlink loop, or a refused magic link) is `InvalidPath`.
    pub fn from_io(e: io::Error, path: &str) -> FsError {
        let kind = match e.raw_os_error() {
            Some(libc::ENOENT) => ErrorKind::NotFound,
            Some(libc::ENOTDIR) => ErrorKind::NotADirectory,
            Some(libc::EISDIR) => ErrorKind::IsADirectory,
            Some(libc::EACCES | libc::EPERM | libc::EROFS) => ErrorKind::PermissionDenied,
            Some(libc::EEXIST) => ErrorKind::AlreadyExists,
            Some(libc::ENOTEMPTY) => ErrorKind::DirectoryNotEmpty,
            // A full quota or disk limit: the writer's own doing, not a
            // fault of the agent or the daemon.
            Some(libc::ENOSPC | libc::EDQUOT) => ErrorKind::NoSpace,
            // A property of the path the client gave, like a missing file:
            // a loop, a name or path too long, a device or FIFO that
            // cannot be opened so.
            Some(libc::ELOOP | libc::ENAMETOOLONG | libc::ENXIO | libc::ENODEV) => {
                ErrorKind::InvalidPath
            }
            // What the request asks cannot be done as asked: a move into
            // itself or across filesystems, an argument the file refuses.
            Some(libc::EINVAL | libc::EXDEV) => ErrorKind::InvalidRequest,
            _ => ErrorKind::Io,
        };
        let note = if e.raw_os_error() == Some(libc::ELOOP) {
            " (a symlink loop, or a /proc magic link, which is never followed)"
        } else {
            ""
        };
        FsError::new(kind, format!("{path}: {e}{note}"))
    }
}

impl From<FsError> for Response {
    fn from(e: FsError) -> Response {
        Response::Error {
            kind: e.kind,
            message: e.message,
        }
    }
}

pub type FsResult<T> = Result<T, FsError>;

/// File operations confined to one root directory, optionally with the
/// filesystem identity of one user.
#[derive(Debug)]
pub struct RootedFs {
    /// `O_PATH|O_DIRECTORY` fd of the root.
    root: OwnedFd,
    identity: Option<(u32, u32)>,
}

impl RootedFs {
    /// Opens `root` (a trusted path, resolved normally) as the root of all
    /// later operations. With `identity` `Some((uid, gid))`, every
    /// operation runs with that filesystem uid and gid.
    pub fn open(root: &Path, identity: Option<(u32, u32)>) -> io::Result<RootedFs> {
        let path = std::ffi::CString::new(root.as_os_str().as_bytes())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: valid C string; the fd returned is ours.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd owned by nobody else.
        let root = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        Ok(RootedFs { root, identity })
    }

    /// The (uid, gid) operations run as, if any.
    pub fn identity(&self) -> Option<(u32, u32)> {
        self.identity
    }

    /// Answers a file request (`ReadFile`, `WriteFile`, `ListDir`, `Stat`,
    /// `Mkdir`, `Remove`); `None` for any other request.
    pub fn handle(&self, req: &Request) -> Option<Response> {
        fn done(r: FsResult<()>) -> Response {
            r.map_or_else(Response::from, |()| Response::Ok)
        }
        Some(match req {
            Request::ReadFile { path, max_bytes } => match self.read_file(path, *max_bytes) {
                Ok((data, truncated)) => Response::FileData {
                    // Valid, or the read would have failed.
                    path: absolute(path).map(Cow::into_owned).unwrap_or_default(),
                    data,
                    truncated,
                },
                Err(e) => e.into(),
            },
            Request::WriteFile { path, data, mode } => done(self.write_file(path, data, *mode)),
            Request::ListDir { path } => self
                .list_dir(path)
                .map_or_else(Response::from, Response::Entries),
            Request::Stat { path } => self.stat(path).map_or_else(Response::from, Response::Stat),
            Request::Mkdir { path, parents } => done(self.mkdir(path, *parents)),
            Request::Remove { path, recursive } => done(self.remove(path, *recursive)),
            Request::Rename { from, to } => done(self.rename(from, to)),
            Request::StatMeta { path, prefix } => match self.stat_meta(path, prefix) {
                Ok((stat, meta)) => Response::StatMeta { stat, meta },
                Err(e) => e.into(),
            },
            Request::WriteMeta { path, prefix, meta } => done(self.write_meta(path, prefix, meta)),
            // Streamed reads are served by their callers on top of
            // `open_read`: they are more than one reply.
            Request::Ping
            | Request::Exec { .. }
            | Request::CancelExec { .. }
            | Request::SetEnv { .. }
            | Request::ReadStream { .. }
            | Request::ReadAck { .. }
            | Request::ProcStart { .. }
            | Request::ProcAttach { .. }
            | Request::ProcList
            | Request::ProcInput { .. }
            | Request::ProcCloseStdin { .. }
            | Request::ProcSignal { .. }
            | Request::ProcResize { .. }
            | Request::OpenPort { .. }
            | Request::WatchDir { .. }
            | Request::AsRoot(_)
            | Request::CancelRead { .. } => return None,
        })
    }

    /// Reads a regular file (following symlinks inside the root), at most
    /// `max_bytes` and never more than [`MAX_READ_BYTES`]. Returns the data
    /// and whether the file goes on beyond it. Reads to EOF, so files whose
    /// size lies (procfs) work.
    pub fn read_file(&self, path: &str, max_bytes: Option<u64>) -> FsResult<(Vec<u8>, bool)> {
        let abs = absolute(path)?;
        let path = &*abs;
        let (mut f, size) = self.open_read(path)?;
        let limit = max_bytes.unwrap_or(u64::MAX).min(MAX_READ_BYTES);
        let mut data = Vec::with_capacity(size.min(limit) as usize);
        // Read to EOF rather than trusting st_size (/proc files say 0).
        (&mut f)
            .take(limit)
            .read_to_end(&mut data)
            .map_err(|e| FsError::from_io(e, path))?;
        let truncated = data.len() as u64 == limit && {
            let mut one = [0u8; 1];
            f.read(&mut one).map_err(|e| FsError::from_io(e, path))? > 0
        };
        Ok((data, truncated))
    }

    /// Opens a regular file for reading (following symlinks inside the
    /// root) with the identity, and returns it with its size as `fstat`
    /// tells it (procfs files say 0: read to EOF). Reading the open file
    /// needs no identity, so a caller can stream it in pieces.
    pub fn open_read(&self, path: &str) -> FsResult<(File, u64)> {
        let abs = absolute(path)?;
        let path = &*abs;
        self.as_user(|| {
            // O_NONBLOCK: opening a FIFO must not wait for a writer.
            let fd = self
                .resolve(path, libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY)
                .map_err(|e| FsError::from_io(e, path))?;
            let st = sys::fstat(fd.as_fd()).map_err(|e| FsError::from_io(e, path))?;
            match st.st_mode & libc::S_IFMT {
                libc::S_IFREG => {}
                libc::S_IFDIR => {
                    return Err(FsError::new(
                        ErrorKind::IsADirectory,
                        format!("{path}: is a directory"),
                    ))
                }
                _ => {
                    return Err(FsError::new(
                        ErrorKind::InvalidPath,
                        format!("{path}: not a regular file"),
                    ))
                }
            }
            Ok((File::from(fd), st.st_size.max(0) as u64))
        })
    }

    /// Opens a directory (following symlinks inside the root) with the
    /// identity, so only a directory its user may read is opened (a
    /// watch's root).
    pub fn open_dir(&self, path: &str) -> FsResult<OwnedFd> {
        let abs = absolute(path)?;
        let path = &*abs;
        self.as_user(|| {
            self.resolve(path, libc::O_RDONLY | libc::O_DIRECTORY)
                .map_err(|e| FsError::from_io(e, path))
        })
    }

    /// Writes a whole file byte for byte: creates missing parents (0755)
    /// and the file (`mode`, default 0644, exactly: not masked by the
    /// umask), or truncates an existing one (a final symlink is followed,
    /// inside the root).
    pub fn write_file(&self, path: &str, data: &[u8], mode: Option<u32>) -> FsResult<()> {
        let abs = absolute(path)?;
        let path = &*abs;
        let mode = mode.unwrap_or(FILE_MODE) & 0o7777;
        self.as_user(|| {
            let is_dir =
                || FsError::new(ErrorKind::IsADirectory, format!("{path}: is a directory"));
            let (parent, name) = match split(path) {
                Split::Entry {
                    parent,
                    name,
                    trailing_slash: false,
                } if name != "." && name != ".." => (parent, name),
                // `/`, `x/`, `x/.`, `x/..` can only name a directory.
                Split::Entry { trailing_slash, .. } => {
                    return match self.resolve(path, libc::O_PATH) {
                        Ok(_) => Err(is_dir()),
                        Err(e) if trailing_slash && e.raw_os_error() == Some(libc::ENOENT) => {
                            Err(is_dir())
                        }
                        Err(e) => Err(FsError::from_io(e, path)),
                    };
                }
                Split::Root => return Err(is_dir()),
            };
            let dir = self.create_dirs(parent, path)?;
            let cname = sys::cstr(name).map_err(|e| FsError::from_io(e, path))?;
            let create = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY;
            let fd = match open_entry(dir.as_fd(), &cname, create, mode) {
                Ok(fd) => {
                    sys::fchmod(fd.as_fd(), mode).map_err(|e| FsError::from_io(e, path))?;
                    fd
                }
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                    let flags = libc::O_WRONLY | libc::O_TRUNC | libc::O_NOCTTY | libc::O_NONBLOCK;
                    match open_entry(dir.as_fd(), &cname, flags, 0) {
                        Ok(fd) => fd,
                        // A symlink: only a walk from the root can follow
                        // it with the root's meaning of `/` and `..`.
                        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => self
                            .resolve(path, flags)
                            .map_err(|e| FsError::from_io(e, path))?,
                        Err(e) => return Err(FsError::from_io(e, path)),
                    }
                }
                Err(e) => return Err(FsError::from_io(e, path)),
            };
            File::from(fd)
                .write_all(data)
                .map_err(|e| FsError::from_io(e, path))
        })
    }

    /// Lists a directory (following symlinks inside the root), sorted by
    /// name; the entries' types come from lstat.
    pub fn list_dir(&self, path: &str) -> FsResult<Vec<DirEntry>> {
        let abs = absolute(path)?;
        let path = &*abs;
        self.as_user(|| {
            let dir = self
                .resolve(path, libc::O_RDONLY | libc::O_DIRECTORY)
                .map_err(|e| FsError::from_io(e, path))?;
            let raw = sys::read_dir(dir.as_fd()).map_err(|e| FsError::from_io(e, path))?;
            let mut entries = Vec::with_capacity(raw.len());
            for entry in raw {
                let name = entry.name.to_string_lossy().into_owned();
                let st = match sys::lstat_at(dir.as_fd(), &entry.name) {
                    Ok(st) => st,
                    // Removed since the directory was read.
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                    Err(e) => return Err(FsError::from_io(e, &join(path, &name))),
                };
                entries.push(DirEntry {
                    name,
                    file_type: file_type(st.st_mode),
                    size: st.st_size as u64,
                    mode: st.st_mode & 0o7777,
                    mtime: st.st_mtime,
                });
            }
            entries.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(entries)
        })
    }

    /// Stats a path without following a final symlink (whose target is
    /// then reported).
    pub fn stat(&self, path: &str) -> FsResult<FileStat> {
        let abs = absolute(path)?;
        let path = &*abs;
        self.as_user(|| {
            let fd = self.resolve_nofollow(path)?;
            stat_of(fd.as_fd(), path)
        })
    }

    /// [`RootedFs::stat`] with the path's extended attributes whose names
    /// start with `prefix` (a `user.` name), the prefix taken off, sorted
    /// by name. None for what carries no `user.` attributes (a symlink,
    /// which is not followed, a device, a FIFO), where the filesystem
    /// keeps none, or where the user may not read them; values that are
    /// not UTF-8 are left out.
    pub fn stat_meta(
        &self,
        path: &str,
        prefix: &str,
    ) -> FsResult<(FileStat, Vec<(String, String)>)> {
        check_prefix(prefix)?;
        let abs = absolute(path)?;
        let path = &*abs;
        self.as_user(|| {
            let fd = self.resolve_nofollow(path)?;
            let st = stat_of(fd.as_fd(), path)?;
            let meta = match st.file_type {
                FileType::File | FileType::Dir => read_meta(fd.as_fd(), prefix, path)?,
                FileType::Symlink | FileType::Other => Vec::new(),
            };
            Ok((st, meta))
        })
    }

    /// Makes `meta` (names without `prefix`, a `user.` name) the whole set
    /// of the path's extended attributes under `prefix`: the others there
    /// are removed. A final symlink is followed inside the root, as a
    /// write follows it; only a regular file or a directory carries them.
    /// Names must be non-empty and fit `XATTR_NAME_MAX` with the prefix;
    /// names and values together at most [`MAX_META_BYTES`].
    pub fn write_meta(&self, path: &str, prefix: &str, meta: &[(String, String)]) -> FsResult<()> {
        check_prefix(prefix)?;
        let abs = absolute(path)?;
        let path = &*abs;
        if let Some(why) = meta_problem(prefix, meta) {
            return Err(FsError::new(ErrorKind::InvalidRequest, why));
        }
        let xattr_err = |e: io::Error| match e.raw_os_error() {
            Some(libc::ENOTSUP) => FsError::new(
                ErrorKind::InvalidRequest,
                format!("{path}: its filesystem keeps no extended attributes (metadata)"),
            ),
            Some(libc::E2BIG) => FsError::new(
                ErrorKind::NoSpace,
                format!("{path}: no room for this metadata in the file's extended attributes"),
            ),
            _ => FsError::from_io(e, path),
        };
        self.as_user(|| {
            let fd = self
                .resolve(path, libc::O_PATH)
                .map_err(|e| FsError::from_io(e, path))?;
            let st = sys::fstat(fd.as_fd()).map_err(|e| FsError::from_io(e, path))?;
            if !matches!(st.st_mode & libc::S_IFMT, libc::S_IFREG | libc::S_IFDIR) {
                return Err(FsError::new(
                    ErrorKind::InvalidPath,
                    format!("{path}: only files and directories carry metadata"),
                ));
            }
            let at = sys::fd_path(fd.as_fd());
            let existing = match sys::list_xattrs(&at) {
                Ok(names) => names,
                // Nothing there to clear.
                Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) && meta.is_empty() => {
                    return Ok(())
                }
                Err(e) => return Err(xattr_err(e)),
            };
            // The new set first: a write that does not fit fails before
            // anything of the old one is gone.
            for (name, value) in meta {
                let full = sys::cstr(&format!("{prefix}{name}")).map_err(xattr_err)?;
                sys::set_xattr(&at, &full, value.as_bytes()).map_err(xattr_err)?;
            }
            for name in existing {
                let keep = name
                    .to_str()
                    .ok()
                    .and_then(|n| n.strip_prefix(prefix))
                    .map(|n| meta.iter().any(|(k, _)| k == n));
                if keep == Some(false) {
                    match sys::remove_xattr(&at, &name) {
                        Err(e) if e.raw_os_error() != Some(libc::ENODATA) => {
                            return Err(xattr_err(e))
                        }
                        _ => {}
                    }
                }
            }
            Ok(())
        })
    }

    /// Creates a directory (0755), with its missing parents when
    /// `parents` (then an existing directory is fine).
    pub fn mkdir(&self, path: &str, parents: bool) -> FsResult<()> {
        let abs = absolute(path)?;
        let path = &*abs;
        self.as_user(|| {
            if parents {
                return self.create_dirs(path, path).map(drop);
            }
            let Split::Entry { parent, name, .. } = split(path) else {
                return Err(FsError::from_io(
                    io::Error::from_raw_os_error(libc::EEXIST),
                    path,
                ));
            };
            let dir = self
                .resolve(parent, libc::O_PATH | libc::O_DIRECTORY)
                .map_err(|e| FsError::from_io(e, path))?;
            let cname = sys::cstr(name).map_err(|e| FsError::from_io(e, path))?;
            sys::mkdir_at(dir.as_fd(), &cname, DIR_MODE).map_err(|e| FsError::from_io(e, path))
        })
    }

    /// Removes a file, symlink or empty directory; a directory tree only
    /// when `recursive` (symlinks inside are removed, never followed).
    /// The root itself, and paths ending in `.` or `..`, are refused.
    pub fn remove(&self, path: &str, recursive: bool) -> FsResult<()> {
        let abs = absolute(path)?;
        let path = &*abs;
        let (parent, name, trailing_slash) = match split(path) {
            Split::Root => {
                return Err(FsError::new(ErrorKind::InvalidPath, "refusing to remove /"));
            }
            Split::Entry { name, .. } if name == "." || name == ".." => {
                return Err(FsError::new(
                    ErrorKind::InvalidPath,
                    format!("refusing to remove {path}: it ends in . or .."),
                ));
            }
            Split::Entry {
                parent,
                name,
                trailing_slash,
            } => (parent, name, trailing_slash),
        };
        self.as_user(|| {
            let err = |e: io::Error| FsError::from_io(e, path);
            let dir = self
                .resolve(parent, libc::O_PATH | libc::O_DIRECTORY)
                .map_err(err)?;
            let cname = sys::cstr(name).map_err(err)?;
            let st = sys::lstat_at(dir.as_fd(), &cname).map_err(err)?;
            if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
                if trailing_slash {
                    // `link/` must not mean the link's target here.
                    return Err(err(io::Error::from_raw_os_error(libc::ENOTDIR)));
                }
                return sys::unlink_at(dir.as_fd(), &cname, 0).map_err(err);
            }
            if recursive {
                let top = open_entry(dir.as_fd(), &cname, libc::O_RDONLY | libc::O_DIRECTORY, 0)
                    .map_err(err)?;
                remove_contents(top).map_err(err)?;
            }
            sys::unlink_at(dir.as_fd(), &cname, libc::AT_REMOVEDIR).map_err(|e| {
                // Some filesystems say EEXIST for a non-empty directory.
                if e.raw_os_error() == Some(libc::EEXIST) {
                    FsError::new(
                        ErrorKind::DirectoryNotEmpty,
                        format!("{path}: directory not empty"),
                    )
                } else {
                    err(e)
                }
            })
        })
    }

    /// Renames `from` to `to` (replacing a file or an empty directory at
    /// `to`, as `rename(2)` does), creating `to`'s missing parents. Both
    /// final components are named in an fd of their parent, so neither is
    /// followed if it is a symlink; `/` and paths ending in `.` or `..` are
    /// refused.
    pub fn rename(&self, from: &str, to: &str) -> FsResult<()> {
        let (from_abs, to_abs) = (absolute(from)?, absolute(to)?);
        let entry = |path: &str| -> FsResult<(String, String)> {
            match split(path) {
                Split::Entry { parent, name, .. } if name != "." && name != ".." => {
                    Ok((parent.to_string(), name.to_string()))
                }
                _ => Err(FsError::new(
                    ErrorKind::InvalidPath,
                    format!("cannot rename {path}: it is / or ends in . or .."),
                )),
            }
        };
        let (from_parent, from_name) = entry(&from_abs)?;
        let (to_parent, to_name) = entry(&to_abs)?;
        self.as_user(|| {
            let src = self
                .resolve(&from_parent, libc::O_PATH | libc::O_DIRECTORY)
                .map_err(|e| FsError::from_io(e, &from_abs))?;
            let dst = self.create_dirs(&to_parent, &to_abs)?;
            let (a, b) = (
                sys::cstr(&from_name).map_err(|e| FsError::from_io(e, &from_abs))?,
                sys::cstr(&to_name).map_err(|e| FsError::from_io(e, &to_abs))?,
            );
            sys::rename_at(src.as_fd(), &a, dst.as_fd(), &b)
                .map_err(|e| FsError::from_io(e, &from_abs))
        })
    }

    /// Resolves a whole (absolute, NUL-free) client path inside the root.
    /// The path itself, a final symlink (even a magic link) not followed:
    /// `O_PATH|O_NOFOLLOW`, so stat and readlink see the very same inode.
    fn resolve_nofollow(&self, path: &str) -> FsResult<OwnedFd> {
        self.resolve(path, libc::O_PATH | libc::O_NOFOLLOW)
            .map_err(|e| FsError::from_io(e, path))
    }

    fn resolve(&self, path: &str, flags: libc::c_int) -> io::Result<OwnedFd> {
        sys::openat2(
            self.root.as_fd(),
            &sys::cstr(path)?,
            flags,
            0,
            RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
        )
    }

    /// `mkdir -p dir` (mode 0755) inside the root; returns an `O_PATH` fd
    /// of the directory. `path` names the request in errors.
    fn create_dirs(&self, dir: &str, path: &str) -> FsResult<OwnedFd> {
        let dir_flags = libc::O_PATH | libc::O_DIRECTORY;
        let not_a_dir = |prefix: &str| {
            FsError::new(
                ErrorKind::NotADirectory,
                format!("{path}: {prefix} is not a directory"),
            )
        };
        match self.resolve(dir, dir_flags) {
            Ok(fd) => return Ok(fd),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => return Err(not_a_dir(dir)),
            Err(e) => return Err(FsError::from_io(e, path)),
        }
        // Component by component: each prefix is resolved from the root
        // (so symlinks and `..` in it mean what they mean there); a missing
        // one is created in the fd of the prefix before it and opened from
        // that fd without following anything.
        let mut cur = self
            .root
            .try_clone()
            .map_err(|e| FsError::from_io(e, path))?;
        let mut prefix = String::with_capacity(dir.len());
        for comp in dir.split('/').filter(|c| !c.is_empty() && *c != ".") {
            prefix.push('/');
            prefix.push_str(comp);
            cur = match self.resolve(&prefix, dir_flags) {
                Ok(fd) => fd,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) && comp != ".." => {
                    let name = sys::cstr(comp).map_err(|e| FsError::from_io(e, path))?;
                    match sys::mkdir_at(cur.as_fd(), &name, DIR_MODE) {
                        // EEXIST: created meanwhile, or a dangling symlink
                        // (which the open below refuses).
                        Ok(()) => {}
                        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                        Err(e) => return Err(FsError::from_io(e, path)),
                    }
                    match open_entry(cur.as_fd(), &name, dir_flags, 0) {
                        Ok(fd) => fd,
                        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTDIR | libc::ELOOP)) => {
                            return Err(not_a_dir(&prefix))
                        }
                        Err(e) => return Err(FsError::from_io(e, path)),
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
                    return Err(not_a_dir(&prefix))
                }
                Err(e) => return Err(FsError::from_io(e, path)),
            };
        }
        Ok(cur)
    }

    /// Runs `op` on this thread with the configured filesystem identity.
    fn as_user<T>(&self, op: impl FnOnce() -> FsResult<T>) -> FsResult<T> {
        let _identity = FsIdentity::assume(self.identity)?;
        op()
    }
}

/// What `fd` (opened `O_PATH|O_NOFOLLOW` on `path`) is, with a symlink's
/// target.
fn stat_of(fd: BorrowedFd<'_>, path: &str) -> FsResult<FileStat> {
    let st = sys::fstat(fd).map_err(|e| FsError::from_io(e, path))?;
    let link_target = if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
        let t = sys::readlink_fd(fd).map_err(|e| FsError::from_io(e, path))?;
        Some(String::from_utf8_lossy(&t).into_owned())
    } else {
        None
    };
    Ok(FileStat {
        path: path.to_string(),
        file_type: file_type(st.st_mode),
        size: st.st_size as u64,
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        mtime: st.st_mtime,
        link_target,
    })
}

/// A metadata prefix must name `user.` attributes: the others are the
/// kernel's or need privileges no sandbox user has.
fn check_prefix(prefix: &str) -> FsResult<()> {
    if prefix.len() > "user.".len() && prefix.starts_with("user.") && !prefix.contains('\0') {
        return Ok(());
    }
    Err(FsError::new(
        ErrorKind::InvalidRequest,
        format!("metadata prefix {prefix:?}: must start with \"user.\" and name more"),
    ))
}

/// The attributes under `prefix` of the file or directory `fd` (see
/// [`RootedFs::stat_meta`]), by name, as many as fit in
/// [`MAX_META_BYTES`] of names and values together (a write stores no
/// more; a sandbox that sets more itself sees only those): what a stat
/// answers stays small whatever a file carries.
fn read_meta(fd: BorrowedFd<'_>, prefix: &str, path: &str) -> FsResult<Vec<(String, String)>> {
    let at = sys::fd_path(fd);
    let names = match sys::list_xattrs(&at) {
        Ok(n) => n,
        // No attributes on this filesystem, or none the user may see.
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOTSUP | libc::EACCES | libc::EPERM)
            ) =>
        {
            return Ok(Vec::new())
        }
        Err(e) => return Err(FsError::from_io(e, path)),
    };
    let mut keys: Vec<(&str, &CStr)> = names
        .iter()
        .filter_map(|n| Some((n.to_str().ok()?.strip_prefix(prefix)?, n.as_c_str())))
        .collect();
    keys.sort();
    let mut meta = Vec::new();
    let mut total = 0;
    for (key, name) in keys {
        if total + prefix.len() + key.len() >= MAX_META_BYTES {
            break;
        }
        let value = match sys::get_xattr_max(&at, name, MAX_META_BYTES - total) {
            Ok(v) => v,
            // Removed since the listing, or not readable by the user.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENODATA | libc::EACCES | libc::EPERM)
                ) =>
            {
                continue
            }
            Err(e) => return Err(FsError::from_io(e, path)),
        };
        let Some(value) = value else {
            // Longer than what is left of the budget: left out.
            continue;
        };
        if let Ok(value) = String::from_utf8(value) {
            total += prefix.len() + key.len() + value.len();
            meta.push((key.to_string(), value));
        }
    }
    Ok(meta)
}

/// Opens one entry `name` of `dir` without following a symlink there or
/// anywhere (`name` has no `/`; `..` would fail with EXDEV).
fn open_entry(
    dir: BorrowedFd<'_>,
    name: &CStr,
    flags: libc::c_int,
    mode: u32,
) -> io::Result<OwnedFd> {
    sys::openat2(
        dir,
        name,
        flags | libc::O_NOFOLLOW,
        mode,
        RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
    )
}

/// One directory being emptied by [`remove_contents`].
struct Level {
    fd: OwnedFd,
    /// Entries still to remove (name, known to be a directory).
    pending: Vec<(std::ffi::CString, bool)>,
    /// Its name in the level below on the stack (`None` for the top).
    name: Option<std::ffi::CString>,
}

impl Level {
    fn new(fd: OwnedFd, name: Option<std::ffi::CString>) -> io::Result<Level> {
        let pending = sys::read_dir(fd.as_fd())?
            .into_iter()
            .map(|e| (e.name, e.d_type == libc::DT_DIR))
            .collect();
        Ok(Level { fd, pending, name })
    }
}

/// Empties the directory `top` (opened `O_RDONLY|O_DIRECTORY`), walking by
/// fds with an explicit stack (no recursion depth limit but fds). Every
/// entry is removed where it is; a symlink is unlinked, never followed,
/// and a subdirectory is only entered through `open_entry`.
fn remove_contents(top: OwnedFd) -> io::Result<()> {
    let mut stack = vec![Level::new(top, None)?];
    while let Some(level) = stack.last_mut() {
        let Some((name, mut is_dir)) = level.pending.pop() else {
            let done = stack.pop().expect("non-empty");
            if let (Some(name), Some(parent)) = (done.name, stack.last()) {
                ignore_missing(sys::unlink_at(parent.fd.as_fd(), &name, libc::AT_REMOVEDIR))?;
            }
            continue;
        };
        if !is_dir {
            match sys::unlink_at(level.fd.as_fd(), &name, 0) {
                // d_type was unknown or stale.
                Err(e) if e.raw_os_error() == Some(libc::EISDIR) => is_dir = true,
                r => ignore_missing(r)?,
            }
        }
        if is_dir {
            let flags = libc::O_RDONLY | libc::O_DIRECTORY;
            match open_entry(level.fd.as_fd(), &name, flags, 0) {
                Ok(fd) => {
                    let sub = Level::new(fd, Some(name))?;
                    stack.push(sub);
                }
                // Replaced by a symlink or a file meanwhile: unlink that.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
                    ignore_missing(sys::unlink_at(level.fd.as_fd(), &name, 0))?;
                }
                Err(e) => ignore_missing(Err(e))?,
            }
        }
    }
    Ok(())
}

/// An entry that vanished meanwhile is as good as removed.
fn ignore_missing(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        r => r,
    }
}

/// Checks a client path (non-empty, NUL-free) and makes it absolute: a
/// relative path is taken from the root.
fn absolute(path: &str) -> FsResult<Cow<'_, str>> {
    if path.is_empty() {
        return Err(FsError::new(ErrorKind::InvalidPath, "empty path"));
    }
    if path.contains('\0') {
        return Err(FsError::new(
            ErrorKind::InvalidPath,
            format!("{path:?} contains a NUL byte"),
        ));
    }
    Ok(if path.starts_with('/') {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(format!("/{path}"))
    })
}

/// An absolute path split into its parent and final component.
enum Split<'a> {
    /// `/` (or `//…`): the root itself.
    Root,
    Entry {
        /// Absolute; `/` for an entry of the root.
        parent: &'a str,
        /// One component; may be `.` or `..`.
        name: &'a str,
        /// The path ended in `/`.
        trailing_slash: bool,
    },
}

fn split(abs: &str) -> Split<'_> {
    let trimmed = abs.trim_end_matches('/');
    let Some((parent, name)) = trimmed.rsplit_once('/') else {
        return Split::Root;
    };
    let parent = parent.trim_end_matches('/');
    Split::Entry {
        parent: if parent.is_empty() { "/" } else { parent },
        name,
        trailing_slash: trimmed.len() != abs.len(),
    }
}

fn join(dir: &str, name: &str) -> String {
    format!("{}/{name}", dir.trim_end_matches('/'))
}

fn file_type(mode: libc::mode_t) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFDIR => FileType::Dir,
        libc::S_IFREG => FileType::File,
        _ => FileType::Other,
    }
}
