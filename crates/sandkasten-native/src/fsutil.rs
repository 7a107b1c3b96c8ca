//! Ownership of image files the daemon generates itself (the base image,
//! a layer's generated top): `lchown`, never through a symlink. Trees a
//! sandbox shapes are walked by `sandkasten_hostfs` instead.

use std::path::Path;

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
