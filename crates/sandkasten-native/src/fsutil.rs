//! Careful filesystem helpers for state the daemon deletes.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// True when some mount point in the daemon's mount namespace lies at or
/// below `dir`.
pub fn has_mounts_below(dir: &Path) -> std::io::Result<bool> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let dir = dir.to_string_lossy().replace(' ', "\\040");
    let prefix = format!("{}/", dir.trim_end_matches('/'));
    Ok(info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| mp == dir || mp.starts_with(&prefix)))
}

/// Deletes a directory tree without ever crossing into another filesystem
/// and without following symlinks. Refuses when anything is mounted below.
pub fn remove_tree(dir: &Path) -> std::io::Result<()> {
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if has_mounts_below(dir)? {
        return Err(std::io::Error::other(format!(
            "refusing to delete {}: a mount lies below it",
            dir.display()
        )));
    }
    remove_on_device(dir, meta.dev())
}

fn remove_on_device(dir: &Path, dev: u64) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.is_dir() {
            if meta.dev() != dev {
                return Err(std::io::Error::other(format!(
                    "refusing to cross into another filesystem at {}",
                    path.display()
                )));
            }
            remove_on_device(&path, dev)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    std::fs::remove_dir(dir)
}

/// Bytes of all regular files below `p` (symlinks not followed; a file
/// vanishing during the walk counts as 0).
pub fn tree_size(p: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(p) else {
        return 0;
    };
    if meta.is_dir() {
        std::fs::read_dir(p)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| tree_size(&e.path()))
            .sum()
    } else if meta.is_file() {
        meta.len()
    } else {
        0
    }
}

/// `lchown` that does not follow symlinks.
pub fn lchown(path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
}

/// Recursively `lchown`s a tree (used on freshly generated image files).
pub fn chown_tree(path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    lchown(path, uid, gid)?;
    let meta = std::fs::symlink_metadata(path)?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_trees_without_following_symlinks() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), "x").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("t");
        std::fs::create_dir_all(t.join("a/b")).unwrap();
        std::fs::write(t.join("a/b/f"), "y").unwrap();
        std::os::unix::fs::symlink(outside.path(), t.join("a/link")).unwrap();
        remove_tree(&t).unwrap();
        assert!(!t.exists());
        assert!(outside.path().join("keep").exists());
        remove_tree(&t).unwrap();
    }

    #[test]
    fn refuses_when_a_mount_lies_below() {
        // /proc is always a mount point below /.
        assert!(has_mounts_below(Path::new("/")).unwrap());
        assert!(!has_mounts_below(Path::new("/nonexistent-sandkasten-dir")).unwrap());
    }
}
