//! Images of the native runtime. The built-in `base` image is generated
//! from the host: its system directories (`/usr`, and `/bin`, `/lib*`,
//! `/sbin` where they are real directories) are bound read-only into each
//! sandbox, and a generated minimal `/etc` replaces the host's, so no host
//! secret (shadow, keys, configs) is visible. Nothing is downloaded.

use crate::fsutil::{chown_tree, lchown};
use crate::IdRange;
use sandkasten_hostfs::remove_tree;
use sandkasten_protocol::BindMount;
use sandkasten_runtime::RuntimeError;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Bumped whenever the generated content changes, to regenerate it.
const BASE_VERSION: &str = "1";

/// Host directories the `base` image takes from the host.
const SYSTEM_DIRS: &[&str] = &["usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// Public, secret-free files copied from the host's `/etc` (the dynamic
/// linker cache, CA bundle, alternatives symlinks, OS identity, timezone).
const ETC_COPIES: &[&str] = &[
    "alternatives",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "os-release",
    "localtime",
    "ssl/certs/ca-certificates.crt",
    "ca-certificates.conf",
    "debian_version",
    "mime.types",
    "protocols",
    "services",
    "inputrc",
];

/// An image ready to start: its layers and the host binds it needs.
pub struct ResolvedImage {
    /// Overlay lower dirs, topmost first.
    pub layers: Vec<PathBuf>,
    pub binds: Vec<BindMount>,
}

/// Ensures `<images>/base` exists and is current; returns how to start it.
pub fn ensure_base(images_dir: &Path, ids: &IdRange) -> Result<ResolvedImage, RuntimeError> {
    let dir = images_dir.join("base");
    let rootfs = dir.join("rootfs");
    let version_file = dir.join("version");
    let current = std::fs::read_to_string(&version_file).ok();
    if current.as_deref() != Some(BASE_VERSION) {
        let staging = images_dir.join(".base-staging");
        remove_tree(&staging).map_err(RuntimeError::io_ctx("clearing base image staging"))?;
        generate_base(&staging.join("rootfs"), ids)?;
        std::fs::write(staging.join("version"), BASE_VERSION)
            .map_err(RuntimeError::io_ctx("writing base image version"))?;
        remove_tree(&dir).map_err(RuntimeError::io_ctx("removing outdated base image"))?;
        std::fs::rename(&staging, &dir).map_err(RuntimeError::io_ctx("installing base image"))?;
    }
    let binds = SYSTEM_DIRS
        .iter()
        .filter_map(|d| {
            let host = Path::new("/").join(d);
            let meta = std::fs::symlink_metadata(&host).ok()?;
            meta.is_dir().then(|| BindMount {
                source: host,
                target: format!("/{d}"),
                readonly: true,
                idmap: false,
            })
        })
        .collect();
    Ok(ResolvedImage {
        layers: vec![rootfs],
        binds,
    })
}

fn generate_base(rootfs: &Path, ids: &IdRange) -> Result<(), RuntimeError> {
    let mk = |p: &str, mode: u32| -> Result<(), RuntimeError> {
        let path = rootfs.join(p);
        std::fs::create_dir_all(&path)
            .map_err(RuntimeError::io_ctx(format!("creating {}", path.display())))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(RuntimeError::io_ctx("chmod"))
    };
    mk("", 0o755)?;
    for d in SYSTEM_DIRS {
        let host = Path::new("/").join(d);
        match std::fs::symlink_metadata(&host) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = std::fs::read_link(&host).map_err(RuntimeError::io_ctx(format!(
                    "reading link {}",
                    host.display()
                )))?;
                std::os::unix::fs::symlink(target, rootfs.join(d))
                    .map_err(RuntimeError::io_ctx("creating system dir link"))?;
            }
            Ok(m) if m.is_dir() => mk(d, 0o755)?,
            _ => {}
        }
    }
    for (d, mode) in [
        ("etc", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
        ("tmp", 0o1777),
        ("run", 0o755),
        ("var/tmp", 0o1777),
        ("var/lib", 0o755),
        ("var/cache", 0o755),
        ("var/log", 0o755),
        ("mnt", 0o755),
        ("opt", 0o755),
        ("srv", 0o755),
        ("root", 0o700),
        ("home", 0o755),
        ("workspace", 0o755),
    ] {
        mk(d, mode)?;
    }
    let etc = rootfs.join("etc");
    for rel in ETC_COPIES {
        copy_public(&Path::new("/etc").join(rel), &etc.join(rel))?;
    }
    let files: &[(&str, &str)] = &[
        (
            "passwd",
            "root:x:0:0:root:/root:/bin/bash\n\
             sandbox:x:1000:1000:sandbox:/home/sandbox:/bin/bash\n\
             nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        ),
        ("group", "root:x:0:\ntty:x:5:\nusers:x:100:sandbox\nsandbox:x:1000:\nnogroup:x:65534:\n"),
        ("shadow", "root:*:19000:0:99999:7:::\nsandbox:*:19000:0:99999:7:::\n"),
        ("hosts", "127.0.0.1\tlocalhost sandkasten\n::1\tlocalhost ip6-localhost ip6-loopback\n"),
        ("hostname", "sandkasten\n"),
        ("resolv.conf", "# no DNS: the sandbox has no outside network\n"),
        ("nsswitch.conf", "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\nprotocols: files\nservices: files\n"),
        ("profile", "export PATH=/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin\n"),
    ];
    for (name, content) in files {
        std::fs::write(etc.join(name), content)
            .map_err(RuntimeError::io_ctx(format!("writing /etc/{name}")))?;
    }
    std::fs::set_permissions(etc.join("shadow"), std::fs::Permissions::from_mode(0o640))
        .map_err(RuntimeError::io_ctx("chmod shadow"))?;
    // Everything belongs to root inside the sandbox...
    chown_tree(rootfs, ids.host_root, ids.host_root)
        .map_err(RuntimeError::io_ctx("chown base image"))?;
    // ...except the sandbox user's home and the workspace mount point.
    mk("home/sandbox", 0o755)?;
    lchown(&rootfs.join("home/sandbox"), ids.host_user, ids.host_user)
        .map_err(RuntimeError::io_ctx("chown home"))?;
    lchown(&rootfs.join("workspace"), ids.host_user, ids.host_user)
        .map_err(RuntimeError::io_ctx("chown workspace"))?;
    Ok(())
}

/// Copies a host file, directory or symlink (symlinks stay symlinks).
fn copy_public(src: &Path, dst: &Path) -> Result<(), RuntimeError> {
    let Ok(meta) = std::fs::symlink_metadata(src) else {
        return Ok(());
    };
    if let Some(parent) = dst.parent() {
        std::fs::create_dir_all(parent).map_err(RuntimeError::io_ctx(format!(
            "creating {}",
            parent.display()
        )))?;
    }
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(src).map_err(RuntimeError::io_ctx(format!(
            "reading link {}",
            src.display()
        )))?;
        std::os::unix::fs::symlink(target, dst)
            .map_err(RuntimeError::io_ctx(format!("linking {}", dst.display())))?;
    } else if meta.is_dir() {
        std::fs::create_dir_all(dst)
            .map_err(RuntimeError::io_ctx(format!("creating {}", dst.display())))?;
        for entry in std::fs::read_dir(src)
            .map_err(RuntimeError::io_ctx(format!("reading {}", src.display())))?
        {
            let entry = entry.map_err(RuntimeError::io_ctx("reading dir entry"))?;
            copy_public(&entry.path(), &dst.join(entry.file_name()))?;
        }
    } else if meta.is_file() {
        std::fs::copy(src, dst)
            .map_err(RuntimeError::io_ctx(format!("copying {}", src.display())))?;
    }
    Ok(())
}
