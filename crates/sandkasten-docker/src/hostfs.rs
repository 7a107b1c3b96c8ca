//! What the daemon does on the host side of a local engine's files that is
//! not a walk of a tree a sandbox shaped: the per-session run directories
//! and a volume's root ownership. The walks (size, export) and
//! session-less file operations are `sandkasten_hostfs`'s, shared with the
//! native runtime.

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// Gives a fresh volume's root to the sandbox user (mode 0755). Only a
/// root-owned root is changed, so this runs once per volume: later the
/// user owns it and may have changed its mode. The root is opened once,
/// refusing a symlink, and checked and changed through that fd.
pub fn own_volume_root(root: &Path, uid: u32) -> io::Result<()> {
    let dir = std::fs::File::from(sandkasten_hostfs::open_dir_nofollow(root)?);
    if dir.metadata()?.uid() == 0 {
        std::os::unix::fs::fchown(&dir, Some(uid), Some(uid))?;
        dir.set_permissions(std::fs::Permissions::from_mode(0o755))?;
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
    fn a_volume_root_is_given_to_the_user_once_and_never_through_a_symlink() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("_data");
        std::fs::create_dir(&root).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700)).unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&root, &link).unwrap();
        assert!(own_volume_root(&link, 1000).is_err());
        assert_eq!(std::fs::metadata(&root).unwrap().uid(), 0);

        own_volume_root(&root, 1000).unwrap();
        let m = std::fs::metadata(&root).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1000, 1000, 0o755));
        // The user's own choice of mode stays.
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o750)).unwrap();
        own_volume_root(&root, 1000).unwrap();
        assert_eq!(std::fs::metadata(&root).unwrap().mode() & 0o7777, 0o750);
        assert!(own_volume_root(&d.path().join("missing"), 1000).is_err());
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
