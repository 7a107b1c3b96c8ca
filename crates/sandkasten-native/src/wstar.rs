//! Workspaces as tar: how this runtime exports one (the walk is
//! `sandkasten_hostfs::export_tar`; owners mapped back to the sandbox's
//! view) and the import.
//!
//! Import extracts into a fresh, empty directory that nothing else writes
//! to: every entry's path must be relative without `..`, and every parent
//! must be a real directory (checked with `lstat`, never followed), so an
//! archive cannot write through a symlink it created earlier.

use crate::IdRange;

/// A reader that fails once its step's caller has gone away, so an
/// extraction stops at its next read (and cleans up as after a bad
/// archive) rather than running to its end for nobody.
pub struct Abandonable<R> {
    pub inner: R,
    pub abandoned: sandkasten_runtime::Abandoned,
}

impl<R: std::io::Read> std::io::Read for Abandonable<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.abandoned.is_cancelled() {
            return Err(std::io::Error::other("the import's caller went away"));
        }
        self.inner.read(buf)
    }
}
use sandkasten_hostfs::{ExportOptions, Owners, TooDeep};
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

/// Deepest directory nesting an export follows; past it the export fails
/// cleanly (a sandbox can build trees far deeper than any tool unpacks).
pub const MAX_EXPORT_DEPTH: usize = 512;

/// How this runtime exports a workspace: owners as the sandbox sees them
/// through its user namespace, failing on trees nested too deep.
pub fn export_options(ids: &IdRange) -> ExportOptions {
    ExportOptions {
        owners: Owners::Mapped {
            host_root: ids.host_root,
            count: ids.size,
        },
        max_depth: MAX_EXPORT_DEPTH,
        too_deep: TooDeep::Fail,
    }
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
///
/// `last` is the parent checked before: directories stay directories for
/// the whole import (`clear` refuses to replace one), so the components
/// shared with it are not looked at again. A tar lists a tree in order, so
/// most entries check nothing (checking every component of every entry by
/// its path was quadratic in the depth: 12 000 files 1900 levels deep took
/// over 14 minutes).
fn parents(root: &Path, rel: &Path, owner: u32, last: &mut PathBuf) -> Result<(), ImportError> {
    let comps: Vec<_> = rel.components().collect();
    let dirs = &comps[..comps.len().saturating_sub(1)];
    let known = last
        .components()
        .zip(dirs.iter())
        .take_while(|(a, b)| a == *b)
        .count();
    let mut cur = root.to_path_buf();
    cur.extend(&dirs[..known]);
    for c in &dirs[known..] {
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
    *last = dirs.iter().collect();
    Ok(())
}

fn set_mtime(path: &Path, mtime: u64) {
    use rustix::fs::{utimensat, AtFlags, Timestamps, CWD};
    let t = rustix::fs::Timespec {
        tv_sec: mtime as i64,
        tv_nsec: 0,
    };
    let times = Timestamps {
        last_access: t,
        last_modification: t,
    };
    // Best effort, as tar's own mtime restore: a failure leaves the time
    // of extraction.
    let _ = utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW);
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
    let mut checked = PathBuf::new();
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
        parents(root, &rel, owner, &mut checked)?;
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
                parents(root, &trel, owner, &mut checked)?;
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
                // No fsync per file: the caller syncs the filesystem once
                // before it swaps the content in.
                io::copy(&mut entry, &mut f)?;
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
    use std::os::unix::fs::MetadataExt;

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
        sandkasten_hostfs::export_tar(src.path(), &export_options(&IdRange::default()), &mut out)
            .unwrap();
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
