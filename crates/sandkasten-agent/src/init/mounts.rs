//! Assembling the sandbox's root filesystem.

use super::os_err;
use sandkasten_protocol::LaunchSpec;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

fn cstr(p: &Path) -> Result<CString, String> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| format!("path with NUL: {}", p.display()))
}

pub(super) fn mount(
    src: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), String> {
    let src_c = src.map(cstr).transpose()?;
    let target_c = cstr(target)?;
    let fstype_c = fstype.map(|s| CString::new(s).unwrap());
    let data_c = data
        .map(|s| CString::new(s).map_err(|_| "mount data with NUL".to_string()))
        .transpose()?;
    // SAFETY: all pointers are valid NUL-terminated strings or null.
    let rc = unsafe {
        libc::mount(
            src_c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            target_c.as_ptr(),
            fstype_c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            flags,
            data_c
                .as_ref()
                .map_or(std::ptr::null(), |c| c.as_ptr() as *const libc::c_void),
        )
    };
    if rc != 0 {
        return Err(os_err(format!(
            "mounting {} on {}",
            src.map(|s| s.display().to_string())
                .or(fstype.map(str::to_string))
                .unwrap_or_default(),
            target.display()
        )));
    }
    Ok(())
}

/// `rootfs` joined with an absolute in-sandbox path.
fn inside(rootfs: &Path, target: &str) -> PathBuf {
    rootfs.join(target.trim_start_matches('/'))
}

pub(super) fn ensure_dir(p: &Path) -> Result<(), String> {
    std::fs::create_dir_all(p).map_err(|e| format!("creating {}: {e}", p.display()))
}

fn ensure_file(p: &Path) -> Result<(), String> {
    if let Some(parent) = p.parent() {
        ensure_dir(parent)?;
    }
    if p.symlink_metadata().is_err() {
        std::fs::File::create(p).map_err(|e| format!("creating {}: {e}", p.display()))?;
    }
    Ok(())
}

fn bind(source: &Path, target: &Path, readonly: bool) -> Result<(), String> {
    let meta =
        std::fs::metadata(source).map_err(|e| format!("bind source {}: {e}", source.display()))?;
    if meta.is_dir() {
        ensure_dir(target)?;
    } else {
        ensure_file(target)?;
    }
    mount(
        Some(source),
        target,
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
    )?;
    let mut flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV;
    if readonly {
        flags |= libc::MS_RDONLY;
    }
    mount(None, target, None, flags, None)
}

use libc::{
    MOUNT_ATTR_IDMAP, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY,
    MOVE_MOUNT_F_EMPTY_PATH, OPEN_TREE_CLOEXEC, OPEN_TREE_CLONE,
};

/// What [`idmapped_clone`] does with the mount it clones.
#[derive(PartialEq)]
enum Original {
    /// Leave it (a directory's own mount, or none: a bind of a directory).
    Keep,
    /// Detach it: the clone takes its place (a filesystem mounted at
    /// `target` a moment ago), so the sandbox sees one mount there.
    Replace,
}

/// A detached clone of the mount tree at `source` (not recursive: the
/// sources are plain directories or one mount), with `attrs` and the
/// idmapping of user namespace `ns` set, attached at `target`.
fn idmapped_clone(
    source: &Path,
    target: &Path,
    ns: &OwnedFd,
    attrs: u64,
    original: Original,
) -> Result<(), String> {
    let src = cstr(source)?;
    let dst = cstr(target)?;
    let empty = CString::default();
    // SAFETY: open_tree with a valid path; returns a new fd we own.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            src.as_ptr(),
            OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(os_err(format!("open_tree of {}", source.display())));
    }
    // SAFETY: a fresh fd.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let attr = libc::mount_attr {
        attr_set: MOUNT_ATTR_IDMAP | attrs,
        attr_clr: 0,
        propagation: 0,
        userns_fd: ns.as_raw_fd() as u64,
    };
    // SAFETY: mount_setattr on our detached mount with a valid struct.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if r < 0 {
        return Err(os_err(format!("idmapping {}", source.display())));
    }
    // SAFETY: umount2 of a mount in this private namespace; the clone
    // keeps its filesystem.
    if original == Original::Replace && unsafe { libc::umount2(src.as_ptr(), libc::MNT_DETACH) } < 0
    {
        return Err(os_err(format!("detaching {}", source.display())));
    }
    // SAFETY: move_mount of our detached mount onto a path.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            dst.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r < 0 {
        return Err(os_err(format!(
            "attaching the idmapped {}",
            target.display()
        )));
    }
    Ok(())
}

/// Step 2 of the launch, as real root in the launcher's private mount
/// namespace: the scratch subvolume (if any), overlay rootfs, binds,
/// `/tmp`, `/dev`.
pub fn assemble_rootfs(spec: &LaunchSpec) -> Result<(), String> {
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )?;
    let rootfs = &spec.rootfs_dir;
    // The sandbox's own writable state, under its disk limit: upper, work,
    // /tmp and the ephemeral workspace lie below this mount.
    if let Some(s) = &spec.scratch {
        mount(
            Some(&s.device),
            &s.target,
            Some("btrfs"),
            libc::MS_NOSUID | libc::MS_NODEV,
            Some(&s.options),
        )?;
    }
    // Shared files (layers, the sandbox's own state, workspaces) keep the
    // shared on-disk ids; the sandbox sees them in its own range.
    let idmap = match &spec.idmap {
        Some(m) => {
            let ns = std::fs::File::open(&m.userns)
                .map(OwnedFd::from)
                .map_err(|e| format!("opening the idmapping ({}): {e}", m.userns.display()))?;
            for d in &m.dirs {
                let original = match &spec.scratch {
                    Some(s) if &s.target == d => Original::Replace,
                    _ => Original::Keep,
                };
                idmapped_clone(d, d, &ns, 0, original)?;
            }
            Some(ns)
        }
        None => None,
    };
    // tmpfs mounts made here belong to the sandbox's root, not the host's.
    let owner = spec
        .uid_map
        .iter()
        .find(|m| m.inside == 0)
        .map(|m| format!(",uid={0},gid={0}", m.outside))
        .unwrap_or_default();
    for p in spec
        .lower_dirs
        .iter()
        .chain([&spec.upper_dir, &spec.work_dir])
    {
        let s = p.to_string_lossy();
        if s.contains(':') || s.contains(',') {
            return Err(format!("overlay path contains ':' or ',': {s}"));
        }
    }
    let lower: Vec<String> = spec
        .lower_dirs
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        spec.upper_dir.display(),
        spec.work_dir.display()
    );
    mount(
        Some(Path::new("overlay")),
        rootfs,
        Some("overlay"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some(&opts),
    )?;

    for b in &spec.binds {
        let target = inside(rootfs, &b.target);
        match &idmap {
            Some(ns) if b.idmap => {
                ensure_dir(&target)?;
                let ro = if b.readonly { MOUNT_ATTR_RDONLY } else { 0 };
                idmapped_clone(
                    &b.source,
                    &target,
                    ns,
                    MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | ro,
                    Original::Keep,
                )?;
            }
            _ => bind(&b.source, &target, b.readonly)?,
        }
    }
    for m in &spec.block_mounts {
        let target = inside(rootfs, &m.target);
        ensure_dir(&target)?;
        mount(
            Some(&m.device),
            &target,
            Some(&m.fstype),
            libc::MS_NOSUID | libc::MS_NODEV,
            Some(&m.options),
        )?;
        if let Some(ns) = &idmap {
            idmapped_clone(&target, &target, ns, 0, Original::Replace)?;
        }
    }

    let tmp = inside(rootfs, "/tmp");
    match &spec.tmp_dir {
        Some(dir) => bind(dir, &tmp, false)?,
        None => {
            ensure_dir(&tmp)?;
            mount(
                Some(Path::new("tmpfs")),
                &tmp,
                Some("tmpfs"),
                libc::MS_NOSUID | libc::MS_NODEV,
                Some(&format!("size={}m,mode=1777{owner}", spec.tmp_size_mb)),
            )?;
        }
    }

    // One tmpfs holds `/dev` and `/dev/shm` (a directory in it): every
    // superblock costs each memory cgroup of the host a slot of the
    // kernel's shrinker table, so a sandbox makes as few as it can. The
    // device nodes are bind mounts, which keep the host's flags; `shm`
    // needs exec (JITs map from it), so the tmpfs is `nosuid,nodev`.
    let dev = inside(rootfs, "/dev");
    ensure_dir(&dev)?;
    mount(
        Some(Path::new("tmpfs")),
        &dev,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some(&format!("size={}m,mode=755{owner}", spec.tmp_size_mb)),
    )?;
    for name in ["null", "zero", "full", "random", "urandom", "tty"] {
        let target = dev.join(name);
        ensure_file(&target)?;
        mount(
            Some(&Path::new("/dev").join(name)),
            &target,
            None,
            libc::MS_BIND,
            None,
        )?;
    }
    for (link, to) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(to, dev.join(link))
            .map_err(|e| format!("creating /dev/{link}: {e}"))?;
    }
    ensure_dir(&dev.join("pts"))?;
    let shm = dev.join("shm");
    ensure_dir(&shm)?;
    // As the tmpfs it was: the sandbox root's, for everyone, sticky.
    if let Some(root) = spec.uid_map.iter().find(|m| m.inside == 0) {
        std::os::unix::fs::chown(&shm, Some(root.outside), Some(root.outside))
            .map_err(|e| format!("chown /dev/shm: {e}"))?;
    }
    std::fs::set_permissions(&shm, std::fs::Permissions::from_mode(0o1777))
        .map_err(|e| format!("chmod /dev/shm: {e}"))?;
    ensure_dir(&inside(rootfs, "/proc"))?;

    if spec.readonly_rootfs {
        mount(
            None,
            rootfs,
            None,
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
            None,
        )?;
    }
    Ok(())
}

/// Step 4, in the sandbox's own user and mount namespace: fresh `/proc`
/// and `/dev/pts`. The process is already rooted in the rootfs (the
/// launcher's [`enter_base`]); below it lies only the base namespace's
/// empty root.
pub fn finish_in_namespace() -> Result<(), String> {
    mount(
        Some(Path::new("proc")),
        Path::new("proc"),
        Some("proc"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        None,
    )?;
    mount(
        Some(Path::new("devpts")),
        Path::new("dev/pts"),
        Some("devpts"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some(&format!(
            "newinstance,ptmxmode=0666,mode=0620,gid=5,max={}",
            sandkasten_protocol::PTYS_PER_SANDBOX
        )),
    )?;
    Ok(())
}

/// Moves this process from its copy of the host's mount namespace to a
/// private copy of the base namespace (`base`, see `basens.rs`) with the
/// rootfs assembled at the current directory stacked on its root, and
/// `chroot`s into it. Single-threaded: `setns` needs an fs_struct of our
/// own, which `unshare(CLONE_FS)` makes sure of (a joined thread may not
/// have released it yet).
pub fn enter_base(base: &OwnedFd) -> Result<(), String> {
    let dot = CString::new(".").unwrap();
    let root = CString::new("/").unwrap();
    let empty = CString::new("").unwrap();
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    const AT_RECURSIVE: libc::c_uint = 0x8000;
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
    // SAFETY: open_tree/setns/unshare/move_mount/fchdir/chroot with valid
    // NUL-terminated strings and fds we own.
    unsafe {
        let tree = libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            dot.as_ptr(),
            OPEN_TREE_CLONE | AT_RECURSIVE | libc::O_CLOEXEC as libc::c_uint,
        );
        if tree < 0 {
            return Err(os_err("open_tree of the rootfs"));
        }
        let tree = OwnedFd::from_raw_fd(tree as libc::c_int);
        if libc::unshare(libc::CLONE_FS) != 0 {
            return Err(os_err("unshare(CLONE_FS)"));
        }
        if libc::setns(base.as_raw_fd(), libc::CLONE_NEWNS) != 0 {
            return Err(os_err("joining the base mount namespace"));
        }
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(os_err("unshare(CLONE_NEWNS) of the base"));
        }
        if libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            root.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        ) != 0
        {
            return Err(os_err("move_mount of the rootfs onto the base"));
        }
        if libc::fchdir(tree.as_raw_fd()) != 0 {
            return Err(os_err("fchdir into the rootfs"));
        }
        if libc::chroot(dot.as_ptr()) != 0 {
            return Err(os_err("chroot into the rootfs"));
        }
    }
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))
}
