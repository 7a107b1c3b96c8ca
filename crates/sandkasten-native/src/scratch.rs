//! The sandboxes' scratch filesystem: one btrfs filesystem that holds every
//! sandbox's own writable state (overlay upper and work dirs, `/tmp`, the
//! ephemeral `/workspace`), one subvolume per sandbox with a quota group
//! limit, so a sandbox's writes stop at its disk limit (`EDQUOT`, "Disk
//! quota exceeded"), inodes included (btrfs inodes are metadata, which the
//! quota counts).
//!
//! - The filesystem lives in `<data_dir>/scratch.img`, preallocated
//!   (`fallocate`) to its full size: sandboxes together can never take more
//!   of the host's disk than this file, and a full host disk never turns
//!   into I/O errors inside it. It is made once (`mkfs.btrfs --nodiscard`)
//!   and mounted `nodiscard` (a discard would punch holes into the file and
//!   give the preallocation back).
//! - Attached once to a loop device (as workspace images are: the device
//!   already bound to the image is found again after a restart, under a
//!   lock); the daemon holds it through a detached mount (`fsmount`): no
//!   mount namespace of the host ever has it. Sandboxes mount their own
//!   subvolume (`subvol=<session id>`) in their private mount namespace.
//! - Quotas are enabled once: simple quotas where the kernel has them
//!   (cheaper: no backref walks at commit), else full qgroups. A subvolume
//!   is created and limited with two ioctls (tens of microseconds); a
//!   sandbox cannot create subvolumes of its own (seccomp refuses the
//!   subvolume ioctls), so nothing it writes escapes its quota group.
//! - Deleting a sandbox deletes its subvolume (the kernel frees the space
//!   in the background; simple quotas drop the quota group with it).

use crate::wsimage;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Smallest scratch filesystem (btrfs needs about 120 MiB for itself).
pub const MIN_SCRATCH_MB: u64 = 256;
/// Largest default scratch filesystem.
const DEFAULT_MAX_BYTES: u64 = 16 << 30;

/// The directory of the top level that holds sandbox snapshots.
const SNAPSHOTS: &str = ".snapshots";
/// A default size below this means the data dir's filesystem has no room
/// for one: the scratch filesystem is left out (limits not enforced).
const DEFAULT_MIN_BYTES: u64 = 1 << 30;

const fn ioc(dir: u64, nr: u64, size: u64) -> libc::c_ulong {
    ((dir << 30) | (size << 16) | (0x94u64 << 8) | nr) as libc::c_ulong
}
/// `BTRFS_IOC_QUOTA_CTL`: `_IOWR(0x94, 40, struct btrfs_ioctl_quota_ctl_args)`.
const BTRFS_IOC_QUOTA_CTL: libc::c_ulong = ioc(3, 40, 16);
/// `BTRFS_IOC_QGROUP_LIMIT`: `_IOR(0x94, 43, struct btrfs_ioctl_qgroup_limit_args)`.
const BTRFS_IOC_QGROUP_LIMIT: libc::c_ulong = ioc(2, 43, 48);
const BTRFS_IOC_SNAP_DESTROY_V2: libc::c_ulong = ioc(1, 63, 4096);
const BTRFS_QUOTA_CTL_ENABLE: u64 = 1;
const BTRFS_QUOTA_CTL_ENABLE_SIMPLE_QUOTA: u64 = 4;
const BTRFS_QGROUP_LIMIT_MAX_RFER: u64 = 1;
const BTRFS_QGROUP_LIMIT_MAX_EXCL: u64 = 2;

#[repr(C)]
struct QuotaCtlArgs {
    cmd: u64,
    status: u64,
}

#[repr(C)]
struct QgroupLimitArgs {
    /// 0: the subvolume the ioctl's fd is in.
    qgroupid: u64,
    flags: u64,
    max_rfer: u64,
    max_excl: u64,
    rsv_rfer: u64,
    rsv_excl: u64,
}

/// Which kind of btrfs quotas the filesystem runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaMode {
    /// Simple quotas (kernel 6.7+): extents are charged to the subvolume
    /// that wrote them.
    Simple,
    /// Full qgroups (older kernels): exact sharing accounting.
    Full,
}

/// The owners of a sandbox's directories on the host.
#[derive(Debug, Clone, Copy)]
pub struct Owners {
    /// Root inside the sandbox.
    pub root: u32,
    /// The sandbox user.
    pub user: u32,
}

/// The open scratch filesystem (see the module doc).
pub struct Scratch {
    device: PathBuf,
    /// The top level (subvolume 5), a real directory fd through a detached
    /// mount; holding it keeps the mount and so the loop device.
    top: OwnedFd,
    /// Pins the loop device until `top` exists (and while the daemon runs).
    _attached: wsimage::Attached,
    mode: QuotaMode,
    size_bytes: u64,
}

impl std::fmt::Debug for Scratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scratch")
            .field("device", &self.device)
            .field("mode", &self.mode)
            .field("size_bytes", &self.size_bytes)
            .finish()
    }
}

/// The scratch image of a data dir.
pub fn image_path(data_dir: &Path) -> PathBuf {
    data_dir.join("scratch.img")
}

/// The default size of a new scratch filesystem on the filesystem of
/// `data_dir`: a tenth of it, at most a quarter of what is free and at
/// most 16 GiB; `None` when that is less than 1 GiB. Modest on purpose:
/// the image is preallocated, and several daemons on one host (tests,
/// measurements) each make one; an operator sizes it with
/// `disk.scratch_size_mb`.
pub fn default_size(data_dir: &Path) -> io::Result<Option<u64>> {
    let st = rustix::fs::statvfs(data_dir).map_err(io::Error::from)?;
    let total = st.f_blocks.saturating_mul(st.f_frsize);
    let avail = st.f_bavail.saturating_mul(st.f_frsize);
    let size = (total / 10).min(avail / 4).min(DEFAULT_MAX_BYTES);
    // Whole MiB (loop devices and btrfs like aligned sizes).
    let size = size & !((1 << 20) - 1);
    Ok((size >= DEFAULT_MIN_BYTES).then_some(size))
}

/// The directories in `dir` whose names do not start with a dot.
fn subvolumes_in(dir: &OwnedFd) -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    for e in rustix::fs::Dir::read_from(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') && e.file_type() == rustix::fs::FileType::Directory {
            out.push(name);
        }
    }
    Ok(out)
}

impl Scratch {
    /// Opens the scratch filesystem of `data_dir`, making it (`size_bytes`
    /// preallocated) when it does not exist. An existing image keeps its
    /// size.
    pub fn open(data_dir: &Path, size_bytes: u64) -> io::Result<Scratch> {
        wsimage::host_support().map_err(io::Error::other)?;
        let img = image_path(data_dir);
        let _lock = wsimage::Lock::take(&data_dir.join("scratch.lock"))?;
        if !img.exists() {
            make(&img, size_bytes)?;
        }
        let size_bytes = std::fs::metadata(&img)?.len();
        let attached = wsimage::attach(&img)?;
        let mnt = wsimage::mount_detached_with(&attached.device, None, &["nodiscard"])?;
        let top = wsimage::open_dir_at(&mnt, ".")?;
        drop(mnt);
        let mode = enable_quotas(&top)?;
        Ok(Scratch {
            device: attached.device.clone(),
            top,
            _attached: attached,
            mode,
            size_bytes,
        })
    }

    /// The loop device sandboxes mount.
    pub fn device(&self) -> &Path {
        &self.device
    }

    pub fn mode(&self) -> QuotaMode {
        self.mode
    }

    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// Mount options of sandbox `id`'s subvolume.
    pub fn mount_options(id: &str) -> String {
        format!("subvol={id},nodiscard")
    }

    /// Creates sandbox `id`'s subvolume with its directories (`upper` and
    /// `tmp` owned by the sandbox's root, `work` by host root, `workspace`
    /// by the sandbox user when `ephemeral_workspace`) and limits it to
    /// `limit_mb` (None: no limit).
    pub fn create(
        &self,
        id: &str,
        owners: Owners,
        limit_mb: Option<u64>,
        ephemeral_workspace: bool,
    ) -> io::Result<()> {
        let a = wsimage::vol_args(id)?;
        // SAFETY: BTRFS_IOC_SUBVOL_CREATE_V2 on the top level's fd.
        wsimage::check(
            unsafe {
                libc::ioctl(
                    self.top.as_raw_fd(),
                    wsimage::BTRFS_IOC_SUBVOL_CREATE_V2,
                    &*a,
                )
            },
            "creating the sandbox's subvolume",
        )?;
        let made = (|| {
            let sub = wsimage::open_dir_at(&self.top, id)?;
            if let Some(mb) = limit_mb {
                set_limit(&sub, mb)?;
            }
            let mut dirs = vec![
                ("upper", 0o755, owners.root),
                ("work", 0o700, 0),
                ("tmp", 0o1777, owners.root),
            ];
            if ephemeral_workspace {
                dirs.push(("workspace", 0o755, owners.user));
            }
            for (name, mode, owner) in dirs {
                use rustix::fs::{AtFlags, Mode};
                let mode = Mode::from_raw_mode(mode);
                rustix::fs::mkdirat(&sub, name, mode)?;
                rustix::fs::chownat(
                    &sub,
                    name,
                    Some(rustix::fs::Uid::from_raw(owner)),
                    Some(rustix::fs::Gid::from_raw(owner)),
                    AtFlags::SYMLINK_NOFOLLOW,
                )?;
                // mkdir's mode went through the umask (and drops the
                // sticky bit): set it exactly.
                rustix::fs::chmodat(&sub, name, mode, AtFlags::empty())?;
            }
            Ok::<(), io::Error>(())
        })();
        if let Err(e) = made {
            let _ = self.destroy(id);
            return Err(e);
        }
        Ok(())
    }

    /// Sets sandbox `id`'s limit (a pooled sandbox handed out).
    pub fn set_limit(&self, id: &str, limit_mb: u64) -> io::Result<()> {
        let sub = wsimage::open_dir_at(&self.top, id)?;
        set_limit(&sub, limit_mb)
    }

    /// Deletes sandbox `id`'s subvolume; a missing one is no error. Works
    /// while a mount namespace that is being torn down still holds it.
    pub fn destroy(&self, id: &str) -> io::Result<()> {
        let a = wsimage::vol_args(id)?;
        // SAFETY: BTRFS_IOC_SNAP_DESTROY_V2 with valid args on our fd.
        let r = unsafe { libc::ioctl(self.top.as_raw_fd(), BTRFS_IOC_SNAP_DESTROY_V2, &*a) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOENT) {
                return Ok(());
            }
            return Err(io::Error::new(
                e.kind(),
                format!("deleting subvolume {id}: {e}"),
            ));
        }
        Ok(())
    }

    /// A read-only, point-in-time copy of sandbox `id`'s subvolume as
    /// snapshot `snap` (in `.snapshots/`, which no sandbox is named).
    pub fn snapshot(&self, id: &str, snap: &str) -> io::Result<()> {
        let snaps = self.snapshots_dir()?;
        let src = wsimage::open_dir_at(&self.top, id)?;
        wsimage::snap_fds(&src, &snaps, snap, true)
    }

    /// Sandbox `id`'s subvolume as a writable copy of snapshot `snap`
    /// (copy-on-write), with its limit.
    /// An ephemeral `/workspace` is made when the snapshot has none (it
    /// was of a session with a persistent one).
    pub fn create_from_snapshot(
        &self,
        snap: &str,
        id: &str,
        owners: Owners,
        limit_mb: Option<u64>,
        ephemeral_workspace: bool,
    ) -> io::Result<()> {
        let snaps = self.snapshots_dir()?;
        let src = wsimage::open_dir_at(&snaps, snap)?;
        wsimage::snap_fds(&src, &self.top, id, false)?;
        let made = (|| {
            if let Some(mb) = limit_mb {
                self.set_limit(id, mb)?;
            }
            if ephemeral_workspace {
                use rustix::fs::{AtFlags, Mode};
                let sub = wsimage::open_dir_at(&self.top, id)?;
                match rustix::fs::mkdirat(&sub, "workspace", Mode::from_raw_mode(0o755)) {
                    Ok(()) => {
                        let user = Some(rustix::fs::Uid::from_raw(owners.user));
                        let group = Some(rustix::fs::Gid::from_raw(owners.user));
                        rustix::fs::chownat(
                            &sub,
                            "workspace",
                            user,
                            group,
                            AtFlags::SYMLINK_NOFOLLOW,
                        )?;
                    }
                    Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Ok::<(), io::Error>(())
        })();
        if let Err(e) = made {
            let _ = self.destroy(id);
            return Err(e);
        }
        Ok(())
    }

    /// Deletes snapshot `snap`; a missing one is no error.
    pub fn delete_snapshot(&self, snap: &str) -> io::Result<()> {
        let snaps = self.snapshots_dir()?;
        let a = wsimage::vol_args(snap)?;
        // SAFETY: BTRFS_IOC_SNAP_DESTROY_V2 with valid args on our fd.
        let r = unsafe { libc::ioctl(snaps.as_raw_fd(), BTRFS_IOC_SNAP_DESTROY_V2, &*a) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ENOENT) {
                return Err(io::Error::new(
                    e.kind(),
                    format!("deleting snapshot {snap}: {e}"),
                ));
            }
        }
        Ok(())
    }

    fn snapshots_dir(&self) -> io::Result<OwnedFd> {
        match rustix::fs::mkdirat(&self.top, SNAPSHOTS, rustix::fs::Mode::from_raw_mode(0o700)) {
            Ok(()) => {}
            Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
        wsimage::open_dir_at(&self.top, SNAPSHOTS)
    }

    /// Names of the sandbox snapshots in `.snapshots/`.
    pub fn list_snapshots(&self) -> io::Result<Vec<String>> {
        subvolumes_in(&self.snapshots_dir()?)
    }

    /// Names of the subvolumes (one per sandbox the filesystem knows;
    /// `.snapshots` holds snapshots, no sandbox).
    pub fn list(&self) -> io::Result<Vec<String>> {
        let fd = rustix::fs::openat(
            &self.top,
            ".",
            rustix::fs::OFlags::RDONLY
                | rustix::fs::OFlags::DIRECTORY
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )?;
        subvolumes_in(&fd)
    }

    /// Bytes free for new sandboxes' writes (statvfs of the filesystem).
    pub fn free_bytes(&self) -> io::Result<u64> {
        let st = rustix::fs::fstatvfs(&self.top)?;
        Ok(st.f_bavail.saturating_mul(st.f_frsize))
    }
}

/// Makes the image: preallocated, btrfs without discards, single
/// metadata (duplicating it on one file protects nothing). Atomic: the
/// image appears under its name only when complete.
fn make(img: &Path, size: u64) -> io::Result<()> {
    let tmp = img.with_extension("img.tmp");
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let f = OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)?;
        rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, size).map_err(|e| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!("preallocating {} bytes for {}: {e}", size, img.display()),
            )
        })?;
        drop(f);
        let mkfs = wsimage::mkfs_path()
            .ok_or_else(|| io::Error::other("mkfs.btrfs not found (install btrfs-progs)"))?;
        let out = std::process::Command::new(mkfs)
            .args(["-q", "-f", "--nodiscard", "-m", "single", "-d", "single"])
            .arg(&tmp)
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "mkfs.btrfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        std::fs::rename(&tmp, img)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Enables quotas (simple where the kernel has them, else full); enabling
/// them again is a no-op for the kernel.
fn enable_quotas(top: &OwnedFd) -> io::Result<QuotaMode> {
    let ctl = |cmd| {
        let args = QuotaCtlArgs { cmd, status: 0 };
        // SAFETY: BTRFS_IOC_QUOTA_CTL with valid args on our fd.
        wsimage::check(
            unsafe { libc::ioctl(top.as_raw_fd(), BTRFS_IOC_QUOTA_CTL, &args) },
            "enabling btrfs quotas",
        )
    };
    match ctl(BTRFS_QUOTA_CTL_ENABLE_SIMPLE_QUOTA) {
        Ok(_) => Ok(QuotaMode::Simple),
        Err(e) => {
            tracing::info!("btrfs simple quotas unavailable ({e}); using full qgroups");
            ctl(BTRFS_QUOTA_CTL_ENABLE).map(|_| QuotaMode::Full)
        }
    }
}

/// Limits the subvolume `sub` is in to `limit_mb` (referenced and
/// exclusive: the same for a subvolume that shares nothing).
fn set_limit(sub: &OwnedFd, limit_mb: u64) -> io::Result<()> {
    let bytes = limit_mb.saturating_mul(1 << 20);
    let args = QgroupLimitArgs {
        qgroupid: 0,
        flags: BTRFS_QGROUP_LIMIT_MAX_RFER | BTRFS_QGROUP_LIMIT_MAX_EXCL,
        max_rfer: bytes,
        max_excl: bytes,
        rsv_rfer: 0,
        rsv_excl: 0,
    };
    // SAFETY: BTRFS_IOC_QGROUP_LIMIT with valid args on a directory fd.
    wsimage::check(
        unsafe { libc::ioctl(sub.as_raw_fd(), BTRFS_IOC_QGROUP_LIMIT, &args) },
        "setting the disk limit",
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_kernel_headers() {
        // From linux/btrfs.h, as computed by _IOWR/_IOR/_IOW.
        assert_eq!(BTRFS_IOC_QUOTA_CTL, 0xC010_9428);
        assert_eq!(BTRFS_IOC_QGROUP_LIMIT, 0x8030_942B);
        assert_eq!(BTRFS_IOC_SNAP_DESTROY_V2, 0x5000_943F);
        assert_eq!(std::mem::size_of::<QgroupLimitArgs>(), 48);
        assert_eq!(std::mem::size_of::<QuotaCtlArgs>(), 16);
    }
}
