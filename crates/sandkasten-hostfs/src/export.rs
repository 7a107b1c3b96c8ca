//! A tree as a tar stream, for workspace exports: walked by directory fds
//! (`openat` with `O_NOFOLLOW`, `fstatat` without following), so nothing a
//! sandbox plants in its workspace (a symlink, a directory swapped for one
//! mid-walk) can make the daemon read outside the tree. Symlinks are
//! stored as symlinks; sockets, fifos and devices are left out. A file that
//! changes size during the walk is cut or zero-padded to the size it had
//! when opened, so the archive stays well-formed. A file with several
//! names is written once, its other names as hard links to the first (a
//! sandbox's 1000 links to a 48 MB file were 50 GB of export).

use crate::{is_dot, open_dir_at, open_dir_nofollow};
use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags};
use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// How owners are written into the archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owners {
    /// As they are on the host (a backend without user namespaces: the
    /// host ids are the ids inside).
    AsIs,
    /// Mapped back to the sandbox's view of a user namespace that maps ids
    /// `0..count` inside to `host_root..host_root + count` on the host; a
    /// host id outside that range becomes 65534 (nobody).
    Mapped { host_root: u32, count: u32 },
}

impl Owners {
    fn id(self, host: u32) -> u64 {
        match self {
            Owners::AsIs => u64::from(host),
            Owners::Mapped { host_root, count } => match host.checked_sub(host_root) {
                Some(inside) if inside < count => u64::from(inside),
                _ => 65534,
            },
        }
    }
}

/// What an export does with directories nested deeper than
/// [`ExportOptions::max_depth`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TooDeep {
    /// The export fails (no archive that silently lacks files).
    Fail,
    /// The directory's own entry is written, its content left out.
    Skip,
}

/// How [`export_tar`] writes a tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportOptions {
    pub owners: Owners,
    /// Deepest directory level exported with its content (the root is
    /// level 0, its subdirectories level 1); a deeper directory is handled
    /// as `too_deep` says. The walk recurses, one fd and one stack frame
    /// per level, so this bounds both.
    pub max_depth: usize,
    pub too_deep: TooDeep,
}

/// Writes the tree below `root` (opened with [`open_dir_nofollow`]) to
/// `out` as a tar with relative paths in sorted order, then flushes `out`.
pub fn export_tar(root: &Path, opts: &ExportOptions, out: &mut dyn Write) -> io::Result<()> {
    let fd = open_dir_nofollow(root)?;
    let mut b = tar::Builder::new(out);
    walk(&mut b, &fd, Path::new(""), opts, 0, &mut HashMap::new())?;
    b.into_inner()?.flush()
}

/// The names in directory `dir`, sorted, without `.` and `..` (an entry
/// that cannot be read ends the listing, as `readdir` does).
fn names(dir: &OwnedFd) -> io::Result<Vec<CString>> {
    let mut out: Vec<CString> = Dir::read_from(dir)?
        .map_while(Result::ok)
        .map(|e| e.file_name().to_owned())
        .filter(|n| !is_dot(n))
        .collect();
    out.sort();
    Ok(out)
}

fn header(
    kind: tar::EntryType,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    opts: &ExportOptions,
) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    // Without setuid and setgid bits, as an import makes them: a root who
    // unpacks an export with `tar -p` gets no setuid binary a sandbox
    // left (found by the session 13 attack).
    h.set_mode(mode & 0o1777);
    h.set_uid(opts.owners.id(uid));
    h.set_gid(opts.owners.id(gid));
    h.set_mtime(u64::try_from(mtime).unwrap_or(0));
    h.set_size(0);
    h
}

/// Writes `path` as a hard link to `first` (out of `walk`'s frame, which
/// recursion multiplies).
#[inline(never)]
fn hard_link(
    b: &mut tar::Builder<&mut dyn Write>,
    m: &std::fs::Metadata,
    path: &Path,
    first: &Path,
    opts: &ExportOptions,
) -> io::Result<()> {
    let (mode, uid, gid, mtime) = (m.mode(), m.uid(), m.gid(), m.mtime());
    let mut h = header(tar::EntryType::Link, mode, uid, gid, mtime, opts);
    b.append_link(&mut h, path, first)
}

/// Writes `path` as a symlink to `target`, byte for byte: the tar crate
/// cleans link names up as paths (`/` became `//`, `a//b` and `a/./b`
/// became `a/b`), and a symlink's target is not a path of the archive. A
/// target longer than the header's field goes first in a GNU long link
/// entry, as GNU tar writes it.
fn symlink(
    b: &mut tar::Builder<&mut dyn Write>,
    h: &mut tar::Header,
    path: &Path,
    target: &[u8],
) -> io::Result<()> {
    let field = h.as_old().linkname.len();
    if target.len() > field {
        let mut long = tar::Header::new_gnu();
        let name = b"././@LongLink";
        long.as_gnu_mut().expect("a GNU header").name[..name.len()].copy_from_slice(name);
        long.set_mode(0o644);
        long.set_uid(0);
        long.set_gid(0);
        long.set_mtime(0);
        // With its NUL, as GNU tar counts it.
        long.set_size(target.len() as u64 + 1);
        long.set_entry_type(tar::EntryType::GNULongLink);
        long.set_cksum();
        b.append(&long, target.chain(&[0u8][..]))?;
    }
    h.set_link_name_literal(&target[..target.len().min(field)])?;
    b.append_data(h, path, io::empty())
}

/// Writes the entries below `dir` (at `rel` in the archive); `linked`
/// holds the first name written of each file with several names.
fn walk(
    b: &mut tar::Builder<&mut dyn Write>,
    dir: &OwnedFd,
    rel: &Path,
    opts: &ExportOptions,
    depth: usize,
    linked: &mut HashMap<(u64, u64), PathBuf>,
) -> io::Result<()> {
    for name in names(dir)? {
        let path = rel.join(OsStr::from_bytes(name.to_bytes()));
        let Ok(st) = rustix::fs::statat(dir, &name, AtFlags::SYMLINK_NOFOLLOW) else {
            continue; // deleted since the listing: a live walk skips it
        };
        #[allow(clippy::unnecessary_cast)] // the field types differ by architecture
        let (mode, uid, gid, mtime) = (
            st.st_mode as u32,
            st.st_uid as u32,
            st.st_gid as u32,
            st.st_mtime as i64,
        );
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => {
                let Ok(sub) = open_dir_at(dir, &name) else {
                    continue; // replaced meanwhile
                };
                let mut h = header(tar::EntryType::Directory, mode, uid, gid, mtime, opts);
                b.append_data(&mut h, &path, io::empty())?;
                if depth + 1 > opts.max_depth {
                    match opts.too_deep {
                        TooDeep::Skip => continue,
                        TooDeep::Fail => {
                            return Err(io::Error::other(format!(
                                "directories nested deeper than {} levels cannot be exported",
                                opts.max_depth
                            )))
                        }
                    }
                }
                walk(b, &sub, &path, opts, depth + 1, linked)?;
            }
            FileType::RegularFile => {
                // O_NONBLOCK: a file swapped for a fifo cannot stall the walk.
                let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
                let Ok(fd) = rustix::fs::openat(dir, &name, flags, Mode::empty()) else {
                    continue;
                };
                let file = File::from(fd);
                // The header describes the file that was opened.
                let m = file.metadata()?;
                if !m.is_file() {
                    continue;
                }
                if m.nlink() > 1 {
                    if let Some(first) = linked.get(&(m.dev(), m.ino())) {
                        hard_link(b, &m, &path, first, opts)?;
                        continue;
                    }
                    linked.insert((m.dev(), m.ino()), path.clone());
                }
                let size = m.len();
                let mut h = header(
                    tar::EntryType::Regular,
                    m.mode(),
                    m.uid(),
                    m.gid(),
                    m.mtime(),
                    opts,
                );
                h.set_size(size);
                let data = file.take(size).chain(io::repeat(0)).take(size);
                b.append_data(&mut h, &path, data)?;
            }
            FileType::Symlink => {
                let Ok(target) = sandkasten_fsops::readlink_at(dir.as_fd(), &name) else {
                    continue;
                };
                let mut h = header(tar::EntryType::Symlink, mode, uid, gid, mtime, opts);
                symlink(b, &mut h, &path, &target)?;
            }
            _ => {} // sockets, fifos, devices
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const MAPPED: ExportOptions = ExportOptions {
        owners: Owners::Mapped {
            host_root: 100_000,
            count: 65_536,
        },
        max_depth: 512,
        too_deep: TooDeep::Fail,
    };

    /// (path, kind, data, link target, uid, mode) of every entry.
    type Entry = (String, tar::EntryType, Vec<u8>, Option<String>, u64, u32);

    fn entries(tar: &[u8]) -> Vec<Entry> {
        let mut ar = tar::Archive::new(tar);
        ar.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let p = e.path().unwrap().display().to_string();
                let link = e.link_name().unwrap().map(|l| l.display().to_string());
                let (kind, uid, mode) = (
                    e.header().entry_type(),
                    e.header().uid().unwrap(),
                    e.header().mode().unwrap(),
                );
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                (p, kind, data, link, uid, mode)
            })
            .collect()
    }

    fn export(root: &Path, opts: &ExportOptions) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        export_tar(root, opts, &mut out).map(|()| out)
    }

    /// A symlink's target is not cleaned up as a path: `/` stayed `//`
    /// after a round trip (found by the session 13 attack).
    #[test]
    fn symlink_targets_are_exported_byte_for_byte() {
        let d = tempfile::tempdir().unwrap();
        let long = format!("//{}/./x/", "y".repeat(140));
        let targets = [
            "/",
            "//",
            "a//b",
            "./x",
            "x/",
            "../..",
            "a/./b/",
            long.as_str(),
        ];
        for (i, t) in targets.iter().enumerate() {
            std::os::unix::fs::symlink(t, d.path().join(format!("l{i}"))).unwrap();
        }
        let tar = export(d.path(), &MAPPED).unwrap();
        let mut ar = tar::Archive::new(&tar[..]);
        let mut seen = HashMap::new();
        for e in ar.entries().unwrap() {
            let e = e.unwrap();
            let target = e.link_name_bytes().map(|l| l.into_owned());
            seen.insert(e.path().unwrap().display().to_string(), target);
        }
        for (i, t) in targets.iter().enumerate() {
            assert_eq!(
                seen[&format!("l{i}")].as_deref(),
                Some(t.as_bytes()),
                "target of l{i}"
            );
        }
    }

    #[test]
    fn exports_files_dirs_and_symlinks_without_following_them() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"host secret").unwrap();
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("a/b")).unwrap();
        std::fs::write(d.path().join("a/b/f.txt"), b"hello\0bin").unwrap();
        std::fs::set_permissions(
            d.path().join("a/b/f.txt"),
            std::fs::Permissions::from_mode(0o750),
        )
        .unwrap();
        let long = "x".repeat(150);
        std::fs::write(d.path().join(&long), b"long name").unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("a/out")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), d.path().join("s")).unwrap();

        let seen = entries(&export(d.path(), &MAPPED).unwrap());
        for e in &seen {
            assert!(!e.2.windows(6).any(|w| w == b"secret"), "{} leaked", e.0);
        }
        let find = |p: &str| {
            seen.iter()
                .find(|s| s.0 == p)
                .unwrap_or_else(|| panic!("{p} missing"))
        };
        assert_eq!(find("a/b/f.txt").2, b"hello\0bin");
        assert_eq!(find("a/b/f.txt").5 & 0o777, 0o750);
        assert_eq!(find(&long).2, b"long name");
        assert!(find("a/b").1.is_dir());
        assert!(find("a/out").1.is_symlink());
        assert_eq!(
            find("s").3.as_deref(),
            Some(&*outside.path().join("secret").display().to_string())
        );
        assert!(!seen.iter().any(|s| s.0.starts_with("a/out/")));
        // Sorted, parents before children.
        let paths: Vec<&str> = seen.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(&paths[..3], &["a", "a/b", "a/b/f.txt"]);
    }

    #[test]
    fn setuid_and_setgid_bits_are_left_out() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("f"), b"x").unwrap();
        std::fs::set_permissions(d.path().join("f"), std::fs::Permissions::from_mode(0o6755))
            .unwrap();
        std::fs::create_dir(d.path().join("t")).unwrap();
        std::fs::set_permissions(d.path().join("t"), std::fs::Permissions::from_mode(0o3777))
            .unwrap();
        let seen = entries(&export(d.path(), &MAPPED).unwrap());
        let mode = |p: &str| seen.iter().find(|s| s.0 == p).unwrap().5;
        assert_eq!(mode("f"), 0o755);
        assert_eq!(mode("t"), 0o1777);
    }

    #[test]
    fn a_file_with_several_names_is_written_once() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("a"), vec![7u8; 100_000]).unwrap();
        for n in ["b", "sub/c", "z"] {
            std::fs::hard_link(d.path().join("a"), d.path().join(n)).unwrap();
        }
        let tar = export(d.path(), &MAPPED).unwrap();
        assert!(tar.len() < 120_000, "{} bytes", tar.len());
        let seen = entries(&tar);
        let find = |p: &str| seen.iter().find(|s| s.0 == p).unwrap().clone();
        assert_eq!(find("a").1, tar::EntryType::Regular);
        assert_eq!(find("a").2.len(), 100_000);
        for n in ["b", "sub/c", "z"] {
            let e = find(n);
            assert_eq!(
                (e.1, e.3.as_deref()),
                (tar::EntryType::Link, Some("a")),
                "{n}"
            );
        }
    }

    #[test]
    fn owners_are_mapped_back_to_the_sandboxs_view_or_kept() {
        let d = tempfile::tempdir().unwrap();
        for (name, uid) in [("root", 100_000), ("user", 101_000), ("stranger", 7)] {
            let p = d.path().join(name);
            std::fs::write(&p, b"x").unwrap();
            std::os::unix::fs::lchown(&p, Some(uid), Some(uid)).unwrap();
        }
        let uid_of = |seen: &[Entry], p: &str| seen.iter().find(|s| s.0 == p).unwrap().4;
        let mapped = entries(&export(d.path(), &MAPPED).unwrap());
        assert_eq!(uid_of(&mapped, "root"), 0);
        assert_eq!(uid_of(&mapped, "user"), 1000);
        assert_eq!(uid_of(&mapped, "stranger"), 65534);
        let as_is = ExportOptions {
            owners: Owners::AsIs,
            ..MAPPED
        };
        let kept = entries(&export(d.path(), &as_is).unwrap());
        assert_eq!(uid_of(&kept, "user"), 101_000);
        assert_eq!(uid_of(&kept, "stranger"), 7);
    }

    #[test]
    fn too_deep_trees_fail_or_are_cut_within_a_normal_stack() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = dir.path().to_path_buf();
        for _ in 0..20 {
            p.push("d");
        }
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join("deep"), b"x").unwrap();
        let fail = ExportOptions {
            max_depth: 10,
            ..MAPPED
        };
        let e = export(dir.path(), &fail).unwrap_err();
        assert!(e.to_string().contains("nested deeper"), "{e}");
        let skip = ExportOptions {
            too_deep: TooDeep::Skip,
            ..fail
        };
        let seen = entries(&export(dir.path(), &skip).unwrap());
        // Levels 1..=10 with their content, level 11's entry without.
        assert_eq!(seen.len(), 11);
        assert!(seen.iter().all(|s| s.1.is_dir()));

        // The real bound on a blocking thread's stack.
        let mut p = dir.path().to_path_buf();
        for _ in 0..(MAPPED.max_depth + 10) {
            p.push("e");
        }
        std::fs::create_dir_all(&p).unwrap();
        let root = dir.path().join("e");
        let result = std::thread::Builder::new()
            .stack_size(2 * 1024 * 1024)
            .spawn(move || export_tar(&root, &MAPPED, &mut io::sink()))
            .unwrap()
            .join()
            .unwrap();
        assert!(result.unwrap_err().to_string().contains("nested deeper"));
    }
}
