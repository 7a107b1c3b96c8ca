//! What the daemon does on the host side of a local engine's files that is
//! not a walk of a tree a sandbox shaped: the per-session run directories.
//! A volume's ownership is `sandkasten_hostfs::claim_tree` (`local.rs`). The walks (size, export) and
//! session-less file operations are `sandkasten_hostfs`'s, shared with the
//! native runtime.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

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
