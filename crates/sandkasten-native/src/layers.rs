//! The native image store: imported images as content-addressed layers.
//!
//! ```text
//! layers/<sha256>/            one extracted layer (shared read-only by every
//!                             image and session that uses it); ownership is
//!                             shifted into the sandboxes' uid range
//! images/<name>/manifest.json name, digest, layer digests (bottom first), size
//! images/<name>/top/          a generated top layer: the sandbox user in
//!                             /etc/passwd and /etc/group, /home/sandbox, /workspace
//! ```
//!
//! An import accepts a rootfs tarball (optionally gzip-compressed: one layer)
//! or a `docker save` archive (its layers in order, with whiteouts turned
//! into overlayfs whiteouts). Layers and images appear atomically (extracted
//! beside, then renamed), so a running daemon never sees half of one.

use crate::fsutil::lchown;
use crate::IdRange;
use sandkasten_hostfs::remove_tree;
use sandkasten_runtime::{ImageInfo, RuntimeError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::ffi::CString;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

/// What `images/<name>/manifest.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    /// "sha256:…" over the layer digests.
    pub digest: String,
    /// Layer digests (hex), bottom first.
    pub layers: Vec<String>,
    pub size_bytes: u64,
}

/// Valid image names: 1–128 of `[a-z0-9._:-]`, starting with a letter or
/// digit (e.g. `python`, `sandbox-runtime:python`).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b".:_-".contains(&b))
}

fn invalid(msg: impl Into<String>) -> RuntimeError {
    RuntimeError::InvalidImage(msg.into())
}

/// The store rooted at the data dir.
pub struct ImageStore {
    pub images: PathBuf,
    pub layers: PathBuf,
    pub ids: IdRange,
}

impl ImageStore {
    fn image_dir(&self, name: &str) -> PathBuf {
        // ':' is valid in names and in paths; overlay option parsing would
        // choke on it, so the directory name escapes it.
        self.images.join(name.replace(':', "@"))
    }

    pub fn manifest(&self, name: &str) -> Option<Manifest> {
        let text = std::fs::read_to_string(self.image_dir(name).join("manifest.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Overlay lower dirs (topmost first) of an imported image.
    pub fn lower_dirs(&self, name: &str) -> Option<Vec<PathBuf>> {
        let m = self.manifest(name)?;
        let mut dirs = vec![self.image_dir(name).join("top")];
        dirs.extend(m.layers.iter().rev().map(|d| self.layers.join(d)));
        Some(dirs)
    }

    pub fn list(&self) -> Vec<Manifest> {
        let mut out: Vec<Manifest> = std::fs::read_dir(&self.images)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let text = std::fs::read_to_string(e.path().join("manifest.json")).ok()?;
                serde_json::from_str::<Manifest>(&text).ok()
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Imports `archive` as `name` (replacing an image of that name).
    pub fn import(&self, name: &str, archive: &Path) -> Result<ImageInfo, RuntimeError> {
        if !valid_name(name) || name == "base" {
            return Err(invalid(format!(
                "invalid image name {name:?}: use 1-128 of [a-z0-9._:-], starting with a letter or digit (not base)"
            )));
        }
        std::fs::create_dir_all(&self.layers)
            .map_err(RuntimeError::io_ctx("creating the layer store"))?;
        let work = self.images.join(format!(".import-{}", std::process::id()));
        remove_tree(&work).map_err(RuntimeError::io_ctx("clearing import dir"))?;
        std::fs::create_dir_all(&work).map_err(RuntimeError::io_ctx("creating import dir"))?;
        let result = self.import_in(name, archive, &work);
        let _ = remove_tree(&work);
        result
    }

    fn import_in(
        &self,
        name: &str,
        archive: &Path,
        work: &Path,
    ) -> Result<ImageInfo, RuntimeError> {
        // Decompress once to a plain tar we can read twice.
        let plain = work.join("archive.tar");
        {
            let mut f = std::fs::File::open(archive).map_err(RuntimeError::io_ctx(format!(
                "opening {}",
                archive.display()
            )))?;
            let mut magic = [0u8; 2];
            let n = f
                .read(&mut magic)
                .map_err(RuntimeError::io_ctx("reading archive"))?;
            f.seek(SeekFrom::Start(0))
                .map_err(RuntimeError::io_ctx("reading archive"))?;
            let mut out = std::fs::File::create(&plain)
                .map_err(RuntimeError::io_ctx("writing archive copy"))?;
            if n == 2 && magic == [0x1f, 0x8b] {
                std::io::copy(
                    &mut flate2::read::GzDecoder::new(BufReader::new(f)),
                    &mut out,
                )
                .map_err(|e| invalid(format!("bad gzip data: {e}")))?;
            } else {
                std::io::copy(&mut f, &mut out).map_err(RuntimeError::io_ctx("copying archive"))?;
            }
        }
        let docker_manifest = read_member(&plain, "manifest.json")?;
        let layer_digests = match docker_manifest {
            Some(json) => self.import_docker_save(&plain, &json, work)?,
            None => vec![self.add_layer(&plain, work)?],
        };
        let size_bytes = layer_digests
            .iter()
            .map(|d| sandkasten_hostfs::tree_size(&self.layers.join(d)).unwrap_or(0))
            .sum();
        let mut h = Sha256::new();
        for d in &layer_digests {
            h.update(d.as_bytes());
        }
        let manifest = Manifest {
            name: name.to_string(),
            digest: format!("sha256:{:x}", h.finalize()),
            layers: layer_digests,
            size_bytes,
        };
        let staging = work.join("image");
        std::fs::create_dir_all(&staging).map_err(RuntimeError::io_ctx("creating image dir"))?;
        self.generate_top(&manifest, &staging.join("top"))?;
        std::fs::write(
            staging.join("manifest.json"),
            serde_json::to_vec_pretty(&manifest).unwrap_or_default(),
        )
        .map_err(RuntimeError::io_ctx("writing manifest"))?;
        let dest = self.image_dir(name);
        let old = work.join("old");
        if dest.exists() {
            std::fs::rename(&dest, &old).map_err(RuntimeError::io_ctx("replacing image"))?;
        }
        std::fs::rename(&staging, &dest).map_err(RuntimeError::io_ctx("installing image"))?;
        let _ = remove_tree(&old);
        Ok(ImageInfo {
            name: name.into(),
            digest: manifest.digest,
            size_bytes,
            builtin: false,
        })
    }

    fn import_docker_save(
        &self,
        plain: &Path,
        manifest_json: &[u8],
        work: &Path,
    ) -> Result<Vec<String>, RuntimeError> {
        #[derive(Deserialize)]
        struct Entry {
            #[serde(rename = "Layers")]
            layers: Vec<String>,
        }
        let entries: Vec<Entry> = serde_json::from_slice(manifest_json)
            .map_err(|e| invalid(format!("bad docker manifest.json: {e}")))?;
        let entry = entries
            .into_iter()
            .next()
            .ok_or_else(|| invalid("docker manifest.json lists no image"))?;
        let mut digests = Vec::new();
        for (i, layer) in entry.layers.iter().enumerate() {
            let data = read_member(plain, layer)?
                .ok_or_else(|| invalid(format!("layer {layer} missing from archive")))?;
            let path = work.join(format!("layer-{i}.tar"));
            std::fs::write(&path, data).map_err(RuntimeError::io_ctx("writing layer"))?;
            digests.push(self.add_layer(&path, work)?);
            let _ = std::fs::remove_file(&path);
        }
        if digests.is_empty() {
            return Err(invalid("the image has no layers"));
        }
        Ok(digests)
    }

    /// Extracts one layer tar into the store (once per content digest).
    fn add_layer(&self, tar_path: &Path, work: &Path) -> Result<String, RuntimeError> {
        let digest = {
            let mut f =
                std::fs::File::open(tar_path).map_err(RuntimeError::io_ctx("reading layer"))?;
            let mut h = Sha256::new();
            std::io::copy(&mut f, &mut h).map_err(RuntimeError::io_ctx("hashing layer"))?;
            format!("{:x}", h.finalize())
        };
        let dest = self.layers.join(&digest);
        if dest.exists() {
            return Ok(digest);
        }
        let tmp = work.join(format!("extract-{digest}"));
        std::fs::create_dir_all(&tmp).map_err(RuntimeError::io_ctx("creating layer dir"))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
            .map_err(RuntimeError::io_ctx("chmod"))?;
        lchown(&tmp, self.ids.host_root, self.ids.host_root)
            .map_err(RuntimeError::io_ctx("chown layer root"))?;
        let f = std::fs::File::open(tar_path).map_err(RuntimeError::io_ctx("reading layer"))?;
        extract_layer(f, &tmp, &self.ids)?;
        match std::fs::rename(&tmp, &dest) {
            Ok(()) => {}
            // Another import added the same layer meanwhile.
            Err(_) if dest.exists() => {
                let _ = remove_tree(&tmp);
            }
            Err(e) => return Err(RuntimeError::io("installing layer", e)),
        }
        Ok(digest)
    }

    /// The generated top layer: the sandbox user and its directories.
    fn generate_top(&self, m: &Manifest, top: &Path) -> Result<(), RuntimeError> {
        let etc = top.join("etc");
        std::fs::create_dir_all(&etc).map_err(RuntimeError::io_ctx("creating top layer"))?;
        // The image's own passwd/group (topmost layer that has them).
        // Read only regular files reached without any symlink: a layer's
        // `etc/passwd` may be a symlink to a host file.
        let find = |rel: &str| -> String {
            m.layers
                .iter()
                .rev()
                .find_map(|d| {
                    let layer = self.layers.join(d);
                    let meta = std::fs::symlink_metadata(layer.join(rel)).ok()?;
                    if !meta.is_file() || !free_of_symlinks(&layer, Path::new(rel)) {
                        return None;
                    }
                    std::fs::read_to_string(layer.join(rel)).ok()
                })
                .unwrap_or_default()
        };
        let mut passwd = find("etc/passwd");
        if !passwd.lines().any(|l| l.starts_with("root:")) {
            passwd.push_str("root:x:0:0:root:/root:/bin/sh\n");
        }
        if !passwd.lines().any(|l| l.split(':').nth(2) == Some("1000")) {
            let shell = if m.layers.iter().any(|d| {
                let l = self.layers.join(d);
                l.join("bin/bash").exists() || l.join("usr/bin/bash").exists()
            }) {
                "/bin/bash"
            } else {
                "/bin/sh"
            };
            passwd.push_str(&format!(
                "sandbox:x:1000:1000:sandbox:/home/sandbox:{shell}\n"
            ));
        }
        let mut group = find("etc/group");
        if !group.lines().any(|l| l.split(':').nth(2) == Some("1000")) {
            group.push_str("sandbox:x:1000:\n");
        }
        std::fs::write(etc.join("passwd"), passwd)
            .map_err(RuntimeError::io_ctx("writing passwd"))?;
        std::fs::write(etc.join("group"), group).map_err(RuntimeError::io_ctx("writing group"))?;
        for d in ["home", "tmp", "proc", "dev", "workspace", "home/sandbox"] {
            std::fs::create_dir_all(top.join(d))
                .map_err(RuntimeError::io_ctx("creating top layer dirs"))?;
        }
        std::fs::set_permissions(top.join("tmp"), std::fs::Permissions::from_mode(0o1777))
            .map_err(RuntimeError::io_ctx("chmod"))?;
        crate::fsutil::chown_tree(top, self.ids.host_root, self.ids.host_root)
            .map_err(RuntimeError::io_ctx("chown top layer"))?;
        for d in ["home/sandbox", "workspace"] {
            lchown(&top.join(d), self.ids.host_user, self.ids.host_user)
                .map_err(RuntimeError::io_ctx("chown home"))?;
        }
        Ok(())
    }

    /// Removes an image and every layer no other image uses.
    pub fn remove(&self, name: &str) -> Result<(), RuntimeError> {
        let Some(m) = self.manifest(name) else {
            return Err(RuntimeError::ImageNotFound(name.into()));
        };
        remove_tree(&self.image_dir(name)).map_err(RuntimeError::io_ctx("removing image"))?;
        let still_used: Vec<String> = self.list().into_iter().flat_map(|o| o.layers).collect();
        for d in m.layers.iter().filter(|d| !still_used.contains(d)) {
            remove_tree(&self.layers.join(d)).map_err(RuntimeError::io_ctx("removing layer"))?;
        }
        Ok(())
    }
}

/// True when no component of `rel` below `base` is a symlink (missing
/// components are fine: they are created as directories).
fn free_of_symlinks(base: &Path, rel: &Path) -> bool {
    let mut p = base.to_path_buf();
    for c in rel.components() {
        p.push(c);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => return false,
            Ok(_) => {}
            Err(_) => return true,
        }
    }
    true
}

/// Reads one regular file out of a tar archive.
fn read_member(tar_path: &Path, member: &str) -> Result<Option<Vec<u8>>, RuntimeError> {
    let f = std::fs::File::open(tar_path).map_err(RuntimeError::io_ctx("reading archive"))?;
    let mut ar = tar::Archive::new(BufReader::new(f));
    let want = Path::new(member.trim_start_matches("./"));
    for entry in ar
        .entries()
        .map_err(|e| invalid(format!("not a tar archive: {e}")))?
    {
        let mut entry = entry.map_err(|e| invalid(format!("corrupt tar archive: {e}")))?;
        let path = entry
            .path()
            .map_err(|e| invalid(format!("bad path in archive: {e}")))?
            .into_owned();
        let path = path.strip_prefix("./").unwrap_or(&path).to_path_buf();
        if path == want {
            let mut buf = Vec::new();
            entry
                .read_to_end(&mut buf)
                .map_err(|e| invalid(format!("reading {member}: {e}")))?;
            return Ok(Some(buf));
        }
    }
    Ok(None)
}

fn mknod_whiteout(path: &Path) -> std::io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: mknod of a 0/0 character device (the overlayfs whiteout).
    if unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn set_opaque(dir: &Path) -> std::io::Result<()> {
    let c = CString::new(dir.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let key = CString::new("trusted.overlay.opaque").unwrap();
    // SAFETY: lsetxattr with valid strings and a one-byte value.
    if unsafe { libc::lsetxattr(c.as_ptr(), key.as_ptr(), b"y".as_ptr().cast(), 1, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Extracts a layer, shifting ownership into the sandbox range and turning
/// Docker whiteouts into overlayfs ones. Paths may not leave `dest`.
pub fn extract_layer(reader: impl Read, dest: &Path, ids: &IdRange) -> Result<(), RuntimeError> {
    let mut ar = tar::Archive::new(BufReader::new(reader));
    let entries = ar
        .entries()
        .map_err(|e| invalid(format!("not a tar archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| invalid(format!("corrupt tar archive: {e}")))?;
        let path = entry
            .path()
            .map_err(|e| invalid(format!("bad path in archive: {e}")))?
            .into_owned();
        if path.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(invalid(format!(
                "archive path leaves the image: {}",
                path.display()
            )));
        }
        let rel: PathBuf = path
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .collect();
        if rel.as_os_str().is_empty() {
            continue;
        }
        let kind = entry.header().entry_type();
        if kind.is_block_special() || kind.is_character_special() {
            continue; // devices come from the sandbox's own /dev
        }
        let file_name = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some(hidden) = file_name.strip_prefix(".wh.") {
            // A whiteout is created by path, so no directory on the way may
            // be a symlink an earlier entry planted (it could point at the
            // host).
            let parent_rel = rel.parent().unwrap_or(Path::new(""));
            if !free_of_symlinks(dest, parent_rel) {
                return Err(invalid(format!(
                    "whiteout below a symlink: {}",
                    rel.display()
                )));
            }
            let parent = dest.join(parent_rel);
            std::fs::create_dir_all(&parent)
                .map_err(RuntimeError::io_ctx("creating whiteout parent"))?;
            if hidden == ".wh..opq" {
                set_opaque(&parent).map_err(RuntimeError::io_ctx(format!(
                    "marking {} opaque",
                    parent.display()
                )))?;
            } else {
                let target = parent.join(hidden);
                let _ = std::fs::remove_file(&target);
                mknod_whiteout(&target).map_err(RuntimeError::io_ctx(format!(
                    "whiteout {}",
                    target.display()
                )))?;
                lchown(&target, ids.host_root, ids.host_root)
                    .map_err(RuntimeError::io_ctx("chown whiteout"))?;
            }
            continue;
        }
        let uid = entry.header().uid().unwrap_or(0) as u32;
        let gid = entry.header().gid().unwrap_or(0) as u32;
        entry.set_preserve_permissions(true);
        entry.set_preserve_mtime(true);
        entry.set_unpack_xattrs(false);
        let unpacked = entry
            .unpack_in(dest)
            .map_err(|e| invalid(format!("extracting {}: {e}", rel.display())))?;
        if unpacked {
            let shift = |id: u32| {
                if id < ids.size {
                    id + ids.host_root
                } else {
                    ids.host_root
                }
            };
            lchown(&dest.join(&rel), shift(uid), shift(gid))
                .map_err(RuntimeError::io_ctx(format!("chown {}", rel.display())))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_uid(1000);
            h.set_gid(1000);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn names_are_validated() {
        for ok in ["python", "sandbox-runtime:python", "a.b_c-1"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "Python", "-x", "a/b", "a b", &"x".repeat(129)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn extraction_shifts_owners_and_makes_whiteouts() {
        let dir = tempfile::tempdir().unwrap();
        let ids = IdRange::default();
        let data = tar_with(&[
            ("etc/os-release", b"ID=test\n"),
            ("usr/.wh.gone", b""),
            ("opt/.wh..wh..opq", b""),
        ]);
        extract_layer(&data[..], dir.path(), &ids).unwrap();
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let m = std::fs::metadata(dir.path().join("etc/os-release")).unwrap();
        assert_eq!(m.uid(), ids.host_root + 1000);
        let w = std::fs::symlink_metadata(dir.path().join("usr/gone")).unwrap();
        assert!(w.file_type().is_char_device());
        assert_eq!(w.rdev(), 0);
    }

    #[test]
    fn whiteouts_below_a_planted_symlink_are_refused() {
        let victim = tempfile::tempdir().unwrap();
        std::fs::write(victim.path().join("target"), "keep").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        h.set_link_name(victim.path()).unwrap();
        h.set_cksum();
        b.append_data(&mut h, "x", &[][..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "x/.wh.target", &[][..]).unwrap();
        let data = b.into_inner().unwrap();
        assert!(extract_layer(&data[..], dir.path(), &IdRange::default()).is_err());
        assert_eq!(
            std::fs::read_to_string(victim.path().join("target")).unwrap(),
            "keep"
        );
    }

    #[test]
    fn paths_leaving_the_layer_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        // Header::set_path refuses "..", so write the name bytes directly.
        let name = b"../escape";
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
        let data = b.into_inner().unwrap();
        assert!(extract_layer(&data[..], dir.path(), &IdRange::default()).is_err());
        assert!(!dir.path().parent().unwrap().join("escape").exists());
    }
}
