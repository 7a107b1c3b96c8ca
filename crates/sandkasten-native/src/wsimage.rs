//! Workspaces with a size limit the kernel enforces: one sparse btrfs image
//! per workspace (`<data_dir>/workspaces/<id>.img`), its content in the
//! subvolume `data`, attached to a loop device while in use.
//!
//! - The image's size is the quota: writing past it fails with ENOSPC
//!   inside the sandbox and harms nothing else.
//! - Loop devices are attached with AUTOCLEAR (they detach when the last
//!   mount or fd goes) and direct I/O (no double page cache). An image is
//!   never attached twice (that would mount two independent filesystems over
//!   one file): attaching looks for a bound device first, under a
//!   per-workspace lock (`<id>.lock`, flock). Sandboxes' mounts keep their
//!   device alive across a daemon restart, and the scan finds it again.
//! - Sandboxes mount the device in their own mount namespace (`subvol=data`);
//!   the daemon's session-less access uses a detached mount (`fsmount`), so
//!   the host never has a workspace mount.
//!
//! Measurements and the snapshot design built on this layout:
//! `docs/design/workspace-storage.md`.

use std::ffi::{CStr, CString};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_GET_STATUS64: libc::c_ulong = 0x4C05;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_FLAGS_DIRECT_IO: u32 = 16;

#[repr(C)]
#[derive(Clone, Copy)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

#[repr(C)]
pub(crate) struct BtrfsVolArgsV2 {
    pub(crate) fd: i64,
    transid: u64,
    flags: u64,
    unused: [u64; 4],
    name: [u8; 4040],
}

const fn iow(nr: u64) -> libc::c_ulong {
    ((1u64 << 30) | (4096u64 << 16) | (0x94u64 << 8) | nr) as libc::c_ulong
}
/// `BTRFS_IOC_SUBVOL_CREATE_V2`.
pub(crate) const BTRFS_IOC_SUBVOL_CREATE_V2: libc::c_ulong = iow(24);

pub use sandkasten_runtime::MIN_QUOTA_BYTES;

pub(crate) fn os(what: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

pub(crate) fn check(r: libc::c_int, what: &str) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(os(what))
    } else {
        Ok(r)
    }
}

/// True when this host can make image workspaces (btrfs in the kernel,
/// `mkfs.btrfs` installed, loop devices available).
pub fn host_support() -> Result<(), String> {
    if !std::fs::read_to_string("/proc/filesystems")
        .unwrap_or_default()
        .contains("btrfs")
    {
        return Err("the kernel has no btrfs".into());
    }
    if !Path::new("/dev/loop-control").exists() {
        return Err("no /dev/loop-control (loop devices)".into());
    }
    if mkfs_path().is_none() {
        return Err("mkfs.btrfs not found (install btrfs-progs)".into());
    }
    Ok(())
}

pub(crate) fn mkfs_path() -> Option<PathBuf> {
    [
        "/usr/sbin/mkfs.btrfs",
        "/sbin/mkfs.btrfs",
        "/usr/bin/mkfs.btrfs",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

/// An attached image: the open device keeps the binding (AUTOCLEAR) until
/// dropped; a mount of it keeps it afterwards.
pub struct Attached {
    pub device: PathBuf,
    _fd: File,
}

/// The per-workspace lock (flock on `<id>.lock`), released on drop.
pub struct Lock(File);

impl Lock {
    pub fn take(path: &Path) -> io::Result<Lock> {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(path)?;
        // SAFETY: flock on an fd we own; blocks only while another holder
        // attaches or deletes this workspace (milliseconds).
        check(
            unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) },
            "locking workspace",
        )?;
        Ok(Lock(f))
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // SAFETY: unlocking our own fd.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// The loop device currently bound to `img`, opened (which pins it).
pub fn find(img: &Path) -> io::Result<Option<Attached>> {
    let st = std::fs::metadata(img)?;
    for e in std::fs::read_dir("/sys/block")? {
        let name = e?.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop")
            || !Path::new(&format!("/sys/block/{name}/loop/backing_file")).exists()
        {
            continue;
        }
        let device = PathBuf::from(format!("/dev/{name}"));
        let Ok(f) = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&device)
        else {
            continue;
        };
        // SAFETY: LOOP_GET_STATUS64 into a zeroed struct.
        let mut info: LoopInfo64 = unsafe { std::mem::zeroed() };
        if unsafe { libc::ioctl(f.as_raw_fd(), LOOP_GET_STATUS64, &mut info) } < 0 {
            continue; // unbound meanwhile
        }
        if info.lo_device == st.dev() && info.lo_inode == st.ino() {
            return Ok(Some(Attached { device, _fd: f }));
        }
    }
    Ok(None)
}

/// Attaches `img` unless it is attached already (call under its lock).
pub fn attach(img: &Path) -> io::Result<Attached> {
    if let Some(a) = find(img)? {
        return Ok(a);
    }
    let ctl = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/loop-control")?;
    let back = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_DIRECT)
        .open(img)?;
    for _ in 0..16 {
        // SAFETY: ioctl on the loop control fd.
        let n = check(
            unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE) },
            "LOOP_CTL_GET_FREE",
        )?;
        let device = PathBuf::from(format!("/dev/loop{n}"));
        let dev = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&device)?;
        // SAFETY: a zeroed loop_config with the backing fd and flags set.
        let mut cfg: LoopConfig = unsafe { std::mem::zeroed() };
        cfg.fd = back.as_raw_fd() as u32;
        cfg.info.lo_flags = LO_FLAGS_AUTOCLEAR | LO_FLAGS_DIRECT_IO;
        // SAFETY: LOOP_CONFIGURE with a valid config.
        if unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE, &cfg) } == 0 {
            return Ok(Attached { device, _fd: dev });
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) {
            return Err(io::Error::new(
                e.kind(),
                format!("LOOP_CONFIGURE {}: {e}", device.display()),
            ));
        }
        // Taken between GET_FREE and CONFIGURE: try the next one.
    }
    Err(io::Error::other("no free loop device after 16 tries"))
}

pub(crate) fn cstring(s: &str) -> CString {
    CString::new(s).expect("no NUL")
}

/// A detached mount of the device (no namespace sees it): `subvol` = None
/// for the top level, `Some("data")` for the content.
pub fn mount_detached(device: &Path, subvol: Option<&str>) -> io::Result<OwnedFd> {
    mount_detached_with(device, subvol, &[])
}

/// [`mount_detached`] with btrfs flag options (e.g. `nodiscard`).
pub fn mount_detached_with(
    device: &Path,
    subvol: Option<&str>,
    flags: &[&str],
) -> io::Result<OwnedFd> {
    let fsopen = |name: &CStr| -> io::Result<OwnedFd> {
        // SAFETY: fsopen with a valid name.
        let fd = unsafe { libc::syscall(libc::SYS_fsopen, name.as_ptr(), 1 as libc::c_uint) };
        if fd < 0 {
            return Err(os("fsopen btrfs"));
        }
        // SAFETY: a fresh fd we own.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    };
    let fs = fsopen(&cstring("btrfs"))?;
    let set = |key: &str, value: &str| -> io::Result<()> {
        let (k, v) = (cstring(key), cstring(value));
        // SAFETY: FSCONFIG_SET_STRING (1) with valid strings.
        let r = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                1,
                k.as_ptr(),
                v.as_ptr(),
                0,
            )
        };
        if r < 0 {
            return Err(os(&format!("fsconfig {key}")));
        }
        Ok(())
    };
    set("source", &device.to_string_lossy())?;
    if let Some(s) = subvol {
        set("subvol", s)?;
    }
    for flag in flags {
        let k = cstring(flag);
        // SAFETY: FSCONFIG_SET_FLAG (0) with a valid key.
        let r = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                0,
                k.as_ptr(),
                std::ptr::null::<libc::c_char>(),
                0,
            )
        };
        if r < 0 {
            return Err(os(&format!("fsconfig {flag}")));
        }
    }
    // SAFETY: FSCONFIG_CMD_CREATE (6).
    if unsafe { libc::syscall(libc::SYS_fsconfig, fs.as_raw_fd(), 6, 0usize, 0usize, 0) } < 0 {
        return Err(os("creating the btrfs mount"));
    }
    // SAFETY: fsmount(FSMOUNT_CLOEXEC, MOUNT_ATTR_NOSUID|MOUNT_ATTR_NODEV).
    let m = unsafe {
        libc::syscall(
            libc::SYS_fsmount,
            fs.as_raw_fd(),
            1 as libc::c_uint,
            0x2 | 0x4 as libc::c_uint,
        )
    };
    if m < 0 {
        return Err(os("fsmount"));
    }
    // SAFETY: a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(m as i32) })
}

/// The path through which a detached mount's root is reached.
pub fn fd_path(fd: &OwnedFd) -> PathBuf {
    // The trailing "/." makes every user follow the magic link to the
    // mount's root instead of looking at the link itself.
    PathBuf::from(format!("/proc/self/fd/{}/.", fd.as_raw_fd()))
}

/// Waits (bounded) until no loop device is bound to `img`. A sandbox's
/// mount goes away with its mount namespace, which the kernel tears down
/// asynchronously after the last process exits, and the AUTOCLEAR detach
/// follows; there is no event to wait on, so this retries with backoff.
pub fn wait_detached(img: &Path, limit: std::time::Duration) -> io::Result<bool> {
    let start = std::time::Instant::now();
    let mut delay = std::time::Duration::from_millis(2);
    loop {
        if find(img)?.is_none() {
            return Ok(true);
        }
        if start.elapsed() >= limit {
            return Ok(false);
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(std::time::Duration::from_millis(100));
    }
}

/// Creates the image: sparse file of `quota` bytes, btrfs, subvolume
/// `data` owned by `owner`. Atomic: the image appears under its name only
/// when complete.
pub fn create(img: &Path, quota: u64, owner: u32) -> io::Result<()> {
    let tmp = img.with_extension("img.tmp");
    let _ = std::fs::remove_file(&tmp);
    {
        let f = OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)?;
        f.set_len(quota)?;
    }
    let result = (|| -> io::Result<()> {
        let mkfs = mkfs_path()
            .ok_or_else(|| io::Error::other("mkfs.btrfs not found (install btrfs-progs)"))?;
        // Mixed block groups: a full workspace recovers as soon as files are
        // deleted (with separate data/metadata groups a small filesystem
        // can stay at ENOSPC after its data is freed).
        let out = std::process::Command::new(mkfs)
            .args(["-q", "-f", "--mixed"])
            .arg(&tmp)
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "mkfs.btrfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let attached = attach(&tmp)?;
        let mnt = mount_detached(&attached.device, None)?;
        // fsmount gives an O_PATH fd; ioctls need a real directory fd.
        let dot = cstring(".");
        // SAFETY: openat of the mount's root through its fd.
        let top = check(
            unsafe {
                libc::openat(
                    mnt.as_raw_fd(),
                    dot.as_ptr(),
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
                )
            },
            "opening the image's top level",
        )?;
        // SAFETY: a fresh fd we own.
        let top = unsafe { OwnedFd::from_raw_fd(top) };
        drop(mnt);
        let mut args: BtrfsVolArgsV2 = unsafe { std::mem::zeroed() };
        args.name[..4].copy_from_slice(b"data");
        // SAFETY: BTRFS_IOC_SUBVOL_CREATE_V2 on the top level's fd.
        check(
            unsafe { libc::ioctl(top.as_raw_fd(), BTRFS_IOC_SUBVOL_CREATE_V2, &args) },
            "creating subvolume data",
        )?;
        let data = cstring("data");
        // SAFETY: fchownat/fchmodat of the new subvolume below our fd.
        check(
            unsafe {
                libc::fchownat(
                    top.as_raw_fd(),
                    data.as_ptr(),
                    owner,
                    owner,
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            },
            "chown data",
        )?;
        check(
            unsafe { libc::fchmodat(top.as_raw_fd(), data.as_ptr(), 0o755, 0) },
            "chmod data",
        )?;
        // SAFETY: syncfs on the mount, so the image is complete on disk.
        unsafe { libc::syncfs(top.as_raw_fd()) };
        drop(top);
        drop(attached);
        Ok(())
    })();
    match result {
        Ok(()) => std::fs::rename(&tmp, img),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

const BTRFS_IOC_SNAP_CREATE_V2: libc::c_ulong = iow(23);
const BTRFS_IOC_SNAP_DESTROY_V2: libc::c_ulong = iow(63);
const BTRFS_SUBVOL_RDONLY: u64 = 1 << 1;

/// The image's top level as a real directory fd (for subvolume ioctls),
/// through a detached mount.
pub fn open_top(device: &Path) -> io::Result<OwnedFd> {
    let mnt = mount_detached(device, None)?;
    open_dir_at(&mnt, ".")
}

pub(crate) fn open_dir_at(dir: &OwnedFd, name: &str) -> io::Result<OwnedFd> {
    let c = cstring(name);
    // SAFETY: openat below a directory fd we own.
    let fd = check(
        unsafe {
            libc::openat(
                dir.as_raw_fd(),
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        },
        &format!("opening {name}"),
    )?;
    // SAFETY: a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(crate) fn vol_args(name: &str) -> io::Result<Box<BtrfsVolArgsV2>> {
    if name.is_empty() || name.len() >= 4040 || name.contains('/') {
        return Err(io::Error::other(format!("invalid subvolume name {name:?}")));
    }
    // SAFETY: the struct is plain data; zero is a valid value.
    let mut a: Box<BtrfsVolArgsV2> = Box::new(unsafe { std::mem::zeroed() });
    a.name[..name.len()].copy_from_slice(name.as_bytes());
    Ok(a)
}

/// Snapshots `src` (a subvolume below `top`) as `dst_dir/name`.
fn snap(top: &OwnedFd, src: &str, dst_dir: &str, name: &str, readonly: bool) -> io::Result<()> {
    let src_fd = open_dir_at(top, src)?;
    let dst_fd = open_dir_at(top, dst_dir)?;
    snap_fds(&src_fd, &dst_fd, name, readonly)
}

/// Snapshots the subvolume `src_fd` as `name` in directory `dst_fd`
/// (copy-on-write: instant whatever its size).
pub(crate) fn snap_fds(
    src_fd: &OwnedFd,
    dst_fd: &OwnedFd,
    name: &str,
    readonly: bool,
) -> io::Result<()> {
    let mut a = vol_args(name)?;
    a.fd = src_fd.as_raw_fd() as i64;
    a.flags = if readonly { BTRFS_SUBVOL_RDONLY } else { 0 };
    // SAFETY: BTRFS_IOC_SNAP_CREATE_V2 with valid args.
    check(
        unsafe { libc::ioctl(dst_fd.as_raw_fd(), BTRFS_IOC_SNAP_CREATE_V2, &*a) },
        "creating a snapshot",
    )?;
    Ok(())
}

pub(crate) fn destroy(top: &OwnedFd, dir: &str, name: &str) -> io::Result<()> {
    let dir_fd = open_dir_at(top, dir)?;
    let a = vol_args(name)?;
    // SAFETY: BTRFS_IOC_SNAP_DESTROY_V2 with valid args.
    check(
        unsafe { libc::ioctl(dir_fd.as_raw_fd(), BTRFS_IOC_SNAP_DESTROY_V2, &*a) },
        "deleting a subvolume",
    )?;
    Ok(())
}

fn ensure_snaps_dir(top: &OwnedFd) -> io::Result<()> {
    let c = cstring("snaps");
    // SAFETY: mkdirat below our fd.
    if unsafe { libc::mkdirat(top.as_raw_fd(), c.as_ptr(), 0o700) } < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(e);
        }
    }
    Ok(())
}

/// A consistent, read-only, point-in-time copy of the content subvolume
/// `data` (a workspace's: `data`, or a clone's own) as `snaps/<name>`
/// (also while sessions write to it).
pub fn snapshot(device: &Path, data: &str, name: &str) -> io::Result<()> {
    let top = open_top(device)?;
    ensure_snaps_dir(&top)?;
    snap(&top, data, "snaps", name, true)
}

/// A writable copy of snapshot `snaps/<snap>` as the new content
/// subvolume `data` (copy-on-write: instant whatever its size).
pub fn clone_snapshot(device: &Path, snap: &str, data: &str) -> io::Result<()> {
    let top = open_top(device)?;
    let snaps = open_dir_at(&top, "snaps")?;
    let src = open_dir_at(&snaps, snap)?;
    snap_fds(&src, &top, data, false)
}

/// Deletes content subvolume `data` (a clone that is deleted while its
/// family's image lives on).
pub fn delete_data(device: &Path, data: &str) -> io::Result<()> {
    let top = open_top(device)?;
    destroy(&top, ".", data)
}

/// Deletes snapshot `name`.
pub fn delete_snapshot(device: &Path, name: &str) -> io::Result<()> {
    let top = open_top(device)?;
    destroy(&top, "snaps", name)
}

/// Replaces content subvolume `data` with a writable copy of snapshot
/// `name`. The caller guarantees nothing mounts the workspace (btrfs would
/// delete a subvolume another namespace still has mounted).
pub fn restore(device: &Path, data: &str, name: &str) -> io::Result<()> {
    let top = open_top(device)?;
    let snaps = open_dir_at(&top, "snaps")?;
    // Fails (ENOENT) before anything changes when the snapshot is gone.
    let src = open_dir_at(&snaps, name)?;
    let old = format!(".old-{}", std::process::id());
    let (d, o) = (cstring(data), cstring(&old));
    // SAFETY: renameat below our fd.
    check(
        unsafe { libc::renameat(top.as_raw_fd(), d.as_ptr(), top.as_raw_fd(), o.as_ptr()) },
        "moving data aside",
    )?;
    let mut a = vol_args(data)?;
    a.fd = src.as_raw_fd() as i64;
    // SAFETY: BTRFS_IOC_SNAP_CREATE_V2 into the top level, writable.
    if unsafe { libc::ioctl(top.as_raw_fd(), BTRFS_IOC_SNAP_CREATE_V2, &*a) } < 0 {
        let e = os("restoring the snapshot");
        // Put the old content back.
        // SAFETY: renameat below our fd.
        unsafe { libc::renameat(top.as_raw_fd(), o.as_ptr(), top.as_raw_fd(), d.as_ptr()) };
        return Err(e);
    }
    destroy(&top, ".", &old)
}

/// Deletes `snaps/<name>` when dropped (a temporary export snapshot; also
/// when the export stops half-way).
pub struct TempSnapshot {
    device: PathBuf,
    name: String,
}

impl TempSnapshot {
    pub fn take(device: &Path, data: &str, name: &str) -> io::Result<TempSnapshot> {
        snapshot(device, data, name)?;
        Ok(TempSnapshot {
            device: device.to_path_buf(),
            name: name.to_string(),
        })
    }
}

impl Drop for TempSnapshot {
    fn drop(&mut self) {
        if let Err(e) = delete_snapshot(&self.device, &self.name) {
            tracing::warn!("deleting temporary snapshot {}: {e}", self.name);
        }
    }
}

/// Creates a new empty subvolume `name` in the top level, owned by
/// `owner`, and runs `fill` on its path; on success it replaces `data`
/// (as [`restore`] does), on failure it is deleted and `data` is intact.
/// The caller guarantees nothing mounts the workspace.
pub fn replace_data<E: From<io::Error>>(
    device: &Path,
    data: &str,
    owner: u32,
    fill: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    let top = open_top(device)?;
    let name = format!(".import-{}", std::process::id());
    // Leftover of a crashed import.
    let _ = destroy(&top, ".", &name);
    let a = vol_args(&name)?;
    // SAFETY: BTRFS_IOC_SUBVOL_CREATE_V2 on the top level's fd.
    check(
        unsafe { libc::ioctl(top.as_raw_fd(), BTRFS_IOC_SUBVOL_CREATE_V2, &*a) },
        "creating the import subvolume",
    )?;
    let c = cstring(&name);
    // SAFETY: fchownat/fchmodat of the new subvolume below our fd.
    let prepared = check(
        unsafe { libc::fchownat(top.as_raw_fd(), c.as_ptr(), owner, owner, 0) },
        "chown import",
    )
    .and_then(|_| {
        check(
            unsafe { libc::fchmodat(top.as_raw_fd(), c.as_ptr(), 0o755, 0) },
            "chmod import",
        )
    });
    let path = PathBuf::from(format!("/proc/self/fd/{}/{name}", top.as_raw_fd()));
    let filled = prepared.map_err(E::from).and_then(|_| fill(&path));
    if let Err(e) = filled {
        let _ = destroy(&top, ".", &name);
        return Err(e);
    }
    // SAFETY: syncfs on the image, so the new content is on disk first.
    unsafe { libc::syncfs(top.as_raw_fd()) };
    let old = format!(".old-{}", std::process::id());
    let (d, o) = (cstring(data), cstring(&old));
    // SAFETY: renameat below our fd.
    if let Err(e) = check(
        unsafe { libc::renameat(top.as_raw_fd(), d.as_ptr(), top.as_raw_fd(), o.as_ptr()) },
        "moving data aside",
    ) {
        let _ = destroy(&top, ".", &name);
        return Err(e.into());
    }
    // SAFETY: renameat below our fd.
    if let Err(e) = check(
        unsafe { libc::renameat(top.as_raw_fd(), c.as_ptr(), top.as_raw_fd(), d.as_ptr()) },
        "moving the import into place",
    ) {
        // SAFETY: renameat below our fd (put the old content back).
        unsafe { libc::renameat(top.as_raw_fd(), o.as_ptr(), top.as_raw_fd(), d.as_ptr()) };
        let _ = destroy(&top, ".", &name);
        return Err(e.into());
    }
    destroy(&top, ".", &old)?;
    Ok(())
}
