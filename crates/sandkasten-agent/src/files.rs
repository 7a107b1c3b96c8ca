//! File operations (read, write, list, stat, mkdir, remove, rename, a file's
//! metadata in extended attributes) on absolute
//! paths, done with the rights of the sandbox user (or, for a request
//! wrapped in `AsRoot`, of the sandbox's root: a second [`Files`] without
//! an identity).
//!
//! They are [`RootedFs`] operations rooted at the agent's `/` (the
//! sandbox's root): paths are resolved with `openat2(RESOLVE_IN_ROOT |
//! RESOLVE_NO_MAGICLINKS)`, so `/proc/<pid>/root`-style magic links are not
//! followed, and final components are changed through an fd of their
//! parent directory. When the agent has a sandbox uid/gid, `RootedFs` runs
//! each operation on the calling thread with that filesystem uid and gid
//! and without supplementary groups (the only place the agent's file
//! operations switch identity), so the agent touches exactly what the
//! sandbox user may touch, and files it creates belong to that user.
//!
//! Unlike `RootedFs`, which takes a relative path from its root, the agent
//! refuses relative paths: a client may mean them relative to the shell's
//! working directory.

use sandkasten_fsops::{FsResult, RootedFs};
use sandkasten_protocol::{DirEntry, ErrorKind, FileStat};
use std::path::Path;

pub use sandkasten_fsops::FsError;

/// File operations with the rights of one (optional) sandbox user.
pub struct Files {
    /// The root, or why it could not be opened (reported by every call).
    fs: Result<RootedFs, FsError>,
}

impl Files {
    /// Operations rooted at `root` (the sandbox's `/`, or the workspace of
    /// a helper serving it without a session).
    pub fn new(uid: Option<u32>, gid: Option<u32>, root: &Path) -> Files {
        // Only one of them given: the other stays the agent's own.
        let identity = match (uid, gid) {
            (None, None) => None,
            (uid, gid) => Some((
                uid.unwrap_or_else(|| nix::unistd::geteuid().as_raw()),
                gid.unwrap_or_else(|| nix::unistd::getegid().as_raw()),
            )),
        };
        let fs = RootedFs::open(root, identity).map_err(|e| {
            FsError::new(
                ErrorKind::Io,
                format!("cannot open {} for file operations: {e}", root.display()),
            )
        });
        Files { fs }
    }

    /// Opens a regular file for a streamed read (see `reads.rs`); reading
    /// the open file needs no identity.
    pub fn open_read(&self, path: &str) -> FsResult<std::fs::File> {
        Ok(self.fs(path)?.open_read(path)?.0)
    }

    /// Opens a directory the identity may read (a watch's top).
    pub fn open_dir(&self, path: &str) -> FsResult<std::os::fd::OwnedFd> {
        self.fs(path)?.open_dir(path)
    }

    /// Writes a whole file byte for byte: creates missing parents (0755)
    /// and the file (`mode`, default 0644, exactly: not masked by the
    /// umask), or truncates an existing one.
    pub fn write_file(&self, path: &str, data: &[u8], mode: Option<u32>) -> FsResult<()> {
        self.fs(path)?.write_file(path, data, mode)
    }

    /// Lists a directory, sorted by name; types come from lstat.
    pub fn list_dir(&self, path: &str) -> FsResult<Vec<DirEntry>> {
        self.fs(path)?.list_dir(path)
    }

    /// Stats a path without following a final symlink.
    pub fn stat(&self, path: &str) -> FsResult<FileStat> {
        self.fs(path)?.stat(path)
    }

    /// [`Files::stat`] with the attributes under `prefix` (a `user.` name).
    pub fn stat_meta(
        &self,
        path: &str,
        prefix: &str,
    ) -> FsResult<(FileStat, Vec<(String, String)>)> {
        self.fs(path)?.stat_meta(path, prefix)
    }

    /// Makes `meta` the whole set of `path`'s attributes under `prefix`.
    pub fn write_meta(&self, path: &str, prefix: &str, meta: &[(String, String)]) -> FsResult<()> {
        self.fs(path)?.write_meta(path, prefix, meta)
    }

    /// Creates a directory (0755), with its parents when `parents`.
    pub fn mkdir(&self, path: &str, parents: bool) -> FsResult<()> {
        self.fs(path)?.mkdir(path, parents)
    }

    /// Removes a file, symlink or empty directory; a directory tree only
    /// when `recursive` (symlinks inside are removed, never followed).
    pub fn remove(&self, path: &str, recursive: bool) -> FsResult<()> {
        self.fs(path)?.remove(path, recursive)
    }

    /// Renames `from` to `to` (replacing a file there), creating `to`'s
    /// missing parents.
    pub fn rename(&self, from: &str, to: &str) -> FsResult<()> {
        self.fs(to)?;
        self.fs(from)?.rename(from, to)
    }

    /// The operations for an absolute `path`.
    fn fs(&self, path: &str) -> FsResult<&RootedFs> {
        if !path.starts_with('/') {
            return Err(FsError::new(
                ErrorKind::InvalidPath,
                format!("{path:?} is not an absolute path"),
            ));
        }
        self.fs.as_ref().map_err(Clone::clone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn relative_paths_are_refused() {
        let f = Files::new(None, None, Path::new("/"));
        let e = f.open_read("etc/passwd").unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidPath);
        let e = f.write_file("", b"", None).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidPath);
        let e = f.remove("/", true).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidPath);
    }

    #[test]
    fn paths_are_the_agents_own() {
        let f = Files::new(None, None, Path::new("/"));
        let mut data = String::new();
        f.open_read("/proc/self/status")
            .unwrap()
            .read_to_string(&mut data)
            .unwrap();
        assert!(data.starts_with("Name:"));
        let st = f.stat("/proc/self").unwrap();
        assert_eq!(st.path, "/proc/self");
        // Magic links are not followed.
        let e = f.open_read("/proc/self/root/proc/self/status");
        assert_eq!(e.unwrap_err().kind, ErrorKind::InvalidPath);
    }

    #[test]
    fn errors_map_to_kinds_and_name_the_path() {
        let e = FsError::from_io(std::io::Error::from_raw_os_error(libc::ENOTEMPTY), "/x");
        assert_eq!(e.kind, ErrorKind::DirectoryNotEmpty);
        assert!(e.message.starts_with("/x: "), "{}", e.message);
        let e = FsError::from_io(std::io::Error::from_raw_os_error(libc::EROFS), "/y");
        assert_eq!(e.kind, ErrorKind::PermissionDenied);
        let e = FsError::from_io(std::io::Error::from_raw_os_error(libc::ELOOP), "/z");
        assert_eq!(e.kind, ErrorKind::InvalidPath);
        let e = FsError::from_io(std::io::Error::from_raw_os_error(libc::EIO), "/z");
        assert_eq!(e.kind, ErrorKind::Io);
    }
}
