//! The launch spec: what the daemon's native runtime tells
//! `sandkasten-agent init` (as JSON on its stdin) to build one sandbox.

use super::AgentConfig;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// One uid or gid mapping line for a user namespace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdMap {
    pub inside: u32,
    pub outside: u32,
    pub count: u32,
}

/// A bind mount of a host path into the sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BindMount {
    /// Host path.
    pub source: PathBuf,
    /// Absolute path inside the sandbox.
    pub target: String,
    pub readonly: bool,
    /// Mount it through [`LaunchSpec::idmap`] (a workspace directory whose
    /// files keep the shared on-disk ids); false for host paths and for
    /// sources below a mount that is idmapped already.
    #[serde(default)]
    pub idmap: bool,
}

/// A block device (e.g. a workspace's loop device) mounted into the
/// sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockMount {
    pub device: PathBuf,
    /// Absolute path inside the sandbox.
    pub target: String,
    pub fstype: String,
    /// Filesystem options (e.g. `subvol=data`).
    pub options: String,
}

/// The sandbox's own subvolume of the scratch filesystem (btrfs, with the
/// sandbox's disk limit), mounted first, at a host path in the launcher's
/// private mount namespace: the overlay upper and work dirs and `/tmp` lie
/// below it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScratchMount {
    /// The scratch filesystem's loop device.
    pub device: PathBuf,
    /// btrfs options (`subvol=<id>,nodiscard`).
    pub options: String,
    /// Host directory (in the session's root-only directory) it is mounted
    /// on; only the sandbox's mount namespace ever has the mount.
    pub target: PathBuf,
}

/// The sandbox's view of files that keep one on-disk ownership for every
/// sandbox (image layers, workspaces, its own writable state): idmapped
/// mounts (`mount_setattr(MOUNT_ATTR_IDMAP)`) whose user namespace maps
/// the shared host ids to the sandbox's own range, so root and the
/// sandbox user inside own them as before and what they write lands on
/// disk with the shared ids.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Idmap {
    /// A path that opens the mapping's user namespace (the daemon's
    /// `/proc/<pid>/fd/<n>` of a namespace it holds until the launch
    /// report).
    pub userns: PathBuf,
    /// Host directories replaced, in the launcher's private mount
    /// namespace, by idmapped clones of themselves before the overlay is
    /// mounted (the layer stores, the scratch mount or the session
    /// directory); the scratch mount is mounted before.
    pub dirs: Vec<PathBuf>,
}

/// Network of the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// A new network namespace with only loopback up.
    None,
}

/// What the daemon asks `sandkasten-agent spawner` for: a launcher (the
/// `init` mode, forked instead of executed) with these options. Its
/// stdin, stdout and stderr travel with the request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpawnRequest {
    /// Where the launcher opens the base mount namespace.
    pub base_ns: String,
    /// `CLOCK_MONOTONIC` (ns) when the daemon asked, to time the fork.
    #[serde(default)]
    pub t0_ns: u64,
}

/// The first line of `sandkasten-agent init`'s stdin (JSON), before the
/// [`LaunchSpec`]: what its cgroup thread does while the rootfs is
/// assembled, all of it before the sandbox init is cloned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CgroupJoin {
    /// Limit files to write first, with their values: the CPU quota,
    /// whose write walks every CPU cgroup on the host (the kernel checks
    /// the whole bandwidth hierarchy), so it is kept off the daemon's path.
    pub writes: Vec<(PathBuf, String)>,
    /// The `cgroup.procs` files to join.
    pub procs: Vec<PathBuf>,
}

/// Everything `sandkasten-agent init` needs to build a sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LaunchSpec {
    pub session_id: String,
    pub hostname: String,
    /// Read-only image layers, topmost first (overlayfs `lowerdir` order).
    pub lower_dirs: Vec<PathBuf>,
    /// The scratch subvolume, mounted before anything else (None: upper,
    /// work and the ephemeral workspace are plain host directories and
    /// `/tmp` is a tmpfs).
    #[serde(default)]
    pub scratch: Option<ScratchMount>,
    /// Per-session overlay upper and work dirs (same filesystem; below
    /// `scratch.target` when there is a scratch mount).
    pub upper_dir: PathBuf,
    pub work_dir: PathBuf,
    /// Directory bound at `/tmp` (on the scratch mount, so `/tmp` counts in
    /// the disk limit); None: a tmpfs of `tmp_size_mb`.
    #[serde(default)]
    pub tmp_dir: Option<PathBuf>,
    /// Empty directory where the root filesystem is assembled.
    pub rootfs_dir: PathBuf,
    /// Bind mounts applied on top of the rootfs, in order.
    pub binds: Vec<BindMount>,
    /// Block devices mounted after the binds (nosuid, nodev).
    #[serde(default)]
    pub block_mounts: Vec<BlockMount>,
    /// Size of the tmpfs at /dev/shm, and at /tmp when `tmp_dir` is None.
    pub tmp_size_mb: u64,
    /// Remount the assembled rootfs read-only (binds keep their own flag).
    pub readonly_rootfs: bool,
    pub uid_map: Vec<IdMap>,
    pub gid_map: Vec<IdMap>,
    /// Idmapped mounts of the shared files (None: the sandbox's range is
    /// the shared one and nothing is idmapped). Block mounts and binds with
    /// `idmap` are mounted through it too.
    #[serde(default)]
    pub idmap: Option<Idmap>,
    /// Unix socket path (in a root-only host directory) the agent serves on.
    pub socket_path: PathBuf,
    pub network: NetworkMode,
    pub agent: AgentConfig,
}

/// What `sandkasten-agent init` prints (one JSON line on stdout) once the
/// sandbox is up and the agent listens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LaunchReport {
    /// Host pid of the sandbox's PID 1 (the agent).
    pub pid: i32,
    /// Its start time in clock ticks since boot (field 22 of
    /// `/proc/PID/stat`), to prove identity later.
    pub start_time: u64,
    /// How long the launcher's steps took, in order, in microseconds.
    #[serde(default)]
    pub phases_us: Vec<(String, u64)>,
    /// `CLOCK_MONOTONIC` (ns) when the launcher wrote this report, so the
    /// daemon can tell how long the launcher's exit took to reach it.
    #[serde(default)]
    pub finished_ns: u64,
}

/// `CLOCK_MONOTONIC` in nanoseconds: one clock for every process on the
/// host, so the daemon and the launcher can time the steps between them.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec out-pointer; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
