//! What the daemon does to host files a sandbox controls, done once for
//! every backend: deleting a tree ([`remove_tree`]), measuring one
//! ([`tree_size`]), writing one as a tar ([`export_tar`]) and serving file
//! operations inside a workspace without a session ([`workspace_file`]).
//!
//! The content below these roots belongs to a sandbox, which may have
//! planted symlinks, swapped a directory for one mid-walk, or nested
//! directories deeper than any stack. So every walk here is fd-relative
//! (`openat` of one name below the directory fd above it, with
//! `O_NOFOLLOW`; `fstatat` with `AT_SYMLINK_NOFOLLOW`): no path longer than
//! one name is ever resolved, no symlink is ever followed, and no walk
//! leaves its root. File operations resolve whole paths with
//! `openat2(RESOLVE_IN_ROOT)` through `sandkasten_fsops::RootedFs`.
//!
//! Everything here is blocking; callers run it on a blocking thread
//! (`sandkasten_runtime::blocking`, `export_blocking`), except
//! [`workspace_file`], which does that itself.

pub use sandkasten_fsops::{claim_tree, take_over_below, Claim};

mod export;
mod files;
mod remove;
mod size;

pub use export::{export_tar, ExportOptions, Owners, TooDeep};
pub use files::{open_workspace_file, workspace_file, workspace_file_blocking, workspace_read};
pub use remove::{has_mounts_below, remove_tree};
pub use size::{tree_size, MAX_SIZE_DEPTH};

use rustix::fs::{Mode, OFlags};
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

/// Flags of every directory a walk opens: readable for `getdents`, never
/// through a symlink, closed on exec.
const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Opens `root` as a directory, refusing a symlink as its last component
/// (`ENOTDIR`). Earlier components are resolved normally: the caller names a
/// root it trusts, the walk below it trusts nothing. A detached mount's
/// `/proc/self/fd/N/.` works (its last component is `.`).
pub fn open_dir_nofollow(root: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(root, DIR_FLAGS, Mode::empty())?)
}

/// The directory `name` directly below `dir`, never through a symlink.
fn open_dir_at(dir: impl AsFd, name: &CStr) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(dir, name, DIR_FLAGS, Mode::empty())?)
}

/// `.` and `..`, which a directory listing skips.
fn is_dot(name: &CStr) -> bool {
    matches!(name.to_bytes(), b"." | b"..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlinked_root_is_refused() {
        let d = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(d.path(), d.path().join("l")).unwrap();
        // ENOTDIR: with O_DIRECTORY the kernel names the symlink's type.
        assert!(open_dir_nofollow(&d.path().join("l")).is_err());
        assert!(open_dir_nofollow(d.path()).is_ok());
        // A root reached through a directory fd's magic link, as a
        // detached mount is.
        let fd = open_dir_nofollow(d.path()).unwrap();
        let via = format!("/proc/self/fd/{}/.", std::os::fd::AsRawFd::as_raw_fd(&fd));
        assert!(open_dir_nofollow(Path::new(&via)).is_ok());
    }
}
