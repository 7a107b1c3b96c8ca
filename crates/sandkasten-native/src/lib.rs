//! The native runtime: each sandbox is a tree of processes in its own user,
//! mount, pid, uts, ipc, net and cgroup namespaces, on an overlayfs root,
//! limited by cgroups (v2 or v1), with our agent as its PID 1.
//!
//! The daemon side lives here (directories, cgroups, images, spawning,
//! proving and killing the init); the in-sandbox side (mounts, pivot_root,
//! capabilities, seccomp) is `sandkasten-agent init`, which this module
//! starts with a [`LaunchSpec`].
//!
//! Host work (directories, loop devices, mkfs, btrfs ioctls, tree walks)
//! never runs on an async worker: each operation hands a clone of the
//! runtime's shared state (`Shared`, behind an `Arc`) to `sandkasten_runtime::blocking`, or to
//! `export_blocking` for an export.
//!
//! Layout under the data dir:
//! ```text
//! images/base/rootfs          generated minimal root (owned by sandbox root)
//! images/<name>/              imported images (manifest + generated top layer)
//! layers/<sha256>/            content-addressed layers shared by all images
//! sessions/<id>/              0700, root: never reachable from a sandbox
//!   scratch/                  mount point of the sandbox's scratch subvolume
//!                             (mounted only in the sandbox's namespace)
//!   rootfs/                   mount point (mounts exist only in the sandbox)
//!   agent.sock                the agent's socket
//!   upper/ work/ workspace/   without a scratch filesystem only: overlay
//!                             upper and work dirs, ephemeral /workspace
//! scratch.img                 the scratch filesystem (btrfs, preallocated):
//!   <id>/                     one subvolume per sandbox, limited by a quota
//!     upper/ work/ tmp/       group: overlay upper and work, /tmp,
//!     workspace/              the ephemeral /workspace (see scratch.rs)
//! ```

mod basens;
mod cgroups;
mod fsutil;
mod ids;
mod image;
mod layers;
mod pidmax;
mod process;
mod ptys;
mod scratch;
mod spawner;
mod sysctl;
mod wsimage;
mod wskeep;
mod wstar;

pub use cgroups::{Cgroups, Hierarchy};
pub use ids::MAX_RANGES as MAX_UID_RANGES;
pub use sandkasten_hostfs::{has_mounts_below, remove_tree};
use sandkasten_netguard::routed as net;
pub use sandkasten_netguard::routed::NetConfig;
pub use scratch::{QuotaMode, MIN_SCRATCH_MB};
pub use wsimage::{host_support as workspace_quota_support, MIN_QUOTA_BYTES};

use async_trait::async_trait;
use sandkasten_protocol::{
    AgentConfig, BindMount, BlockMount, IdMap, Idmap, LaunchReport, LaunchSpec,
    NetworkMode as WireNetwork, ScratchMount, SpawnRequest,
};
use sandkasten_runtime::{
    export_blocking, latebind, ports, AgentClient, ExportStream, FileOp, FileReply, FileStream,
    ImageInfo, NetworkMode, PortStream, Runtime, RuntimeError, Sandbox, SandboxHandle, SandboxSpec,
    SandboxStats, WorkspaceMount, SANDBOX_UID,
};
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The shared host uid/gid range: the on-disk owners of what sandboxes
/// share (layers, workspaces, scratch subvolumes; uid 0 inside is
/// `host_root`, the sandbox user, uid 1000 inside, is `host_user`). Each
/// sandbox runs in a range of its own and sees these files through
/// idmapped mounts (see `ids.rs`), or in this one where the host cannot.
#[derive(Debug, Clone)]
pub struct IdRange {
    pub host_root: u32,
    pub host_user: u32,
    pub size: u32,
}

impl Default for IdRange {
    fn default() -> Self {
        IdRange {
            host_root: 100_000,
            host_user: 101_000,
            size: 65_536,
        }
    }
}

/// Settings of the native runtime.
#[derive(Debug, Clone)]
pub struct NativeConfig {
    pub data_dir: PathBuf,
    /// The static `sandkasten-agent` binary.
    pub agent_binary: PathBuf,
    /// Size of each sandbox's `/dev` tmpfs (which holds `/dev/shm`), and of its `/tmp` tmpfs
    /// where there is no scratch filesystem (with one, `/tmp` is on it).
    pub tmp_size_mb: u64,
    /// Size (MiB) of a new scratch filesystem (`<data_dir>/scratch.img`,
    /// where sandboxes' own writes live under their disk limits): `None`
    /// for the default (a tenth of the data dir's filesystem, at most a
    /// quarter of its free space and 16 GiB; left out with a warning where the
    /// host has no btrfs, loop devices or room), `Some(0)` for none (disk
    /// limits not enforced). An explicit size the host cannot provide stops
    /// the start.
    pub scratch_size_mb: Option<u64>,
    /// Creates are refused (`StorageFull`) while the data dir's filesystem
    /// has less free space than this, or the scratch filesystem less than
    /// this (at most a tenth of its size).
    pub min_free_mb: u64,
    /// Make moving a process into a cgroup fast (no RCU grace period) with
    /// `favordynmods` where no cgroup mount has it yet: see
    /// [`cgroups::favor_dynmods`]. Host-wide while mounted.
    pub favordynmods: bool,
    /// Raise the host's `kernel.pty.max` where it is too low for this many
    /// live sandboxes (see [`ptys::ensure_pty_max`]); `None`: leave it.
    pub pty_max_for_sessions: Option<u64>,
    /// Raise the host's `kernel.pid_max` where it is too low for this many
    /// live sandboxes at this `pids_limit` (see
    /// [`pidmax::ensure_pid_max`]); `None`: leave it.
    pub pid_max_for_sessions: Option<(u64, u64)>,
    /// How many host uid/gid ranges of 65536 ids the runtime hands out,
    /// one per sandbox (the kernel's per-user budgets are then each
    /// sandbox's own); 0, or a host without idmapped mounts: every
    /// sandbox in the shared range. At most [`MAX_UID_RANGES`].
    pub uid_ranges: u32,
    /// The sandboxes' network datapath; `None`: no network policies (every
    /// sandbox has loopback only; what the image commands use, so they
    /// never touch a running daemon's rules).
    pub network: Option<NetConfig>,
}

/// The native [`Runtime`]. Cheap to clone into a blocking task: its state
/// is one `Arc`.
pub struct NativeRuntime {
    shared: Arc<Shared>,
}

/// Everything an operation needs, shared by the runtime and the blocking
/// tasks that do its host work. All of it but `kept` is fixed at
/// construction.
struct Shared {
    cfg: NativeConfig,
    cgroups: Cgroups,
    ids: IdRange,
    /// Which sandbox runs in which host range.
    slots: ids::Slots,
    /// The scratch filesystem; `None`: disk limits are not enforced.
    scratch: Option<scratch::Scratch>,
    /// The datapath; `None`: no network policies.
    network: Option<net::Network>,
    /// Image workspaces kept mounted (detached) between sessions.
    kept: wskeep::Kept,
    /// The mount namespace sandboxes' own are copied from.
    base_ns: basens::BaseNs,
    /// Forks the launchers.
    spawner: spawner::Spawner,
}

/// How long deleting, restoring or importing an image workspace waits for
/// the loop device of a sandbox that just ended to detach.
const DETACH_WAIT: Duration = Duration::from_secs(3);

impl NativeRuntime {
    /// Checks the host, prepares the data dir and the built-in image.
    pub fn new(cfg: NativeConfig) -> Result<NativeRuntime, RuntimeError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(RuntimeError::HostNotReady(
                "the native runtime needs root (it creates namespaces, cgroups and mounts); \
                 run the daemon as root or use runtime: docker"
                    .into(),
            ));
        }
        if !std::fs::read_to_string("/proc/filesystems")
            .unwrap_or_default()
            .contains("overlay")
        {
            return Err(RuntimeError::HostNotReady(
                "the kernel has no overlayfs (modprobe overlay)".into(),
            ));
        }
        let cgroups = Cgroups::detect()?;
        match cgroups::favor_dynmods(cfg.favordynmods) {
            Ok(how) => tracing::info!("cgroup attach: fast path ({how})"),
            Err(why) => tracing::warn!(
                "cgroup attach: slow path, each create waits for an RCU grace period \
                 (12-25 ms): {why}"
            ),
        }
        if let Some(n) = cfg.pty_max_for_sessions {
            match ptys::ensure_pty_max(n) {
                Ok(Some((old, new))) => {
                    tracing::info!("raised kernel.pty.max from {old} to {new} for {n} sessions")
                }
                Ok(None) => {}
                Err(why) => tracing::warn!("pseudo-terminals may run out: {why}"),
            }
        }
        if let Some((n, pids)) = cfg.pid_max_for_sessions {
            match pidmax::ensure_pid_max(n, pids) {
                Ok(Some((old, new))) => tracing::info!(
                    "raised kernel.pid_max from {old} to {new} for {n} sessions of {pids} tasks"
                ),
                Ok(None) => {}
                Err(why) => tracing::warn!(
                    "the host's pids may run out (creates and forks then fail): {why}"
                ),
            }
        }
        for d in ["sessions", "images"] {
            let p = cfg.data_dir.join(d);
            std::fs::create_dir_all(&p)
                .map_err(RuntimeError::io_ctx(format!("creating {}", p.display())))?;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700))
                .map_err(RuntimeError::io_ctx("chmod"))?;
        }
        let base_ns = basens::BaseNs::start(&cfg.agent_binary)?;
        let spawner = spawner::Spawner::start(&cfg.agent_binary)?;
        let slots = uid_slots(&cfg);
        let scratch = open_scratch(&cfg)?;
        let network = match &cfg.network {
            Some(n) => Some(net::Network::start(
                n,
                &cfg.data_dir,
                net::Slots::InSessionDirs(cfg.data_dir.join("sessions")),
            )?),
            None => None,
        };
        let shared = Shared {
            cfg,
            cgroups,
            ids: IdRange::default(),
            slots,
            scratch,
            network,
            kept: wskeep::Kept::default(),
            base_ns,
            spawner,
        };
        image::ensure_base(&shared.images_dir(), &shared.ids)?;
        tracing::info!(cgroups = ?shared.cgroups, scratch = ?shared.scratch, "native runtime ready");
        Ok(NativeRuntime {
            shared: Arc::new(shared),
        })
    }

    /// At a graceful stop: removes the network table and Docker rules
    /// when no sandbox has a link (running ones keep theirs). True when
    /// they were removed.
    pub async fn release_network(&self) -> Result<bool, RuntimeError> {
        self.run("releasing the sandbox network", |s| match &s.network {
            Some(n) => n.release(),
            None => Ok(true),
        })
        .await
    }

    /// The interface-name prefix and the nftables table (family inet) of
    /// this daemon's sandbox network, when it has one (for tests that
    /// check nothing is left).
    pub fn network_names(&self) -> Option<(String, String)> {
        self.shared
            .network
            .as_ref()
            .map(|n| (n.prefix().to_string(), n.table().to_string()))
    }

    /// Directory of one session's state.
    pub fn session_dir(&self, id: &str) -> PathBuf {
        self.shared.session_dir(id)
    }

    /// The quota kind of the scratch filesystem; `None` without one (disk
    /// limits not enforced).
    pub fn scratch_quotas(&self) -> Option<QuotaMode> {
        self.shared.scratch.as_ref().map(|s| s.mode())
    }

    /// Runs `f` with the shared state on the blocking pool (see
    /// [`sandkasten_runtime::blocking`]).
    async fn run<T, F>(&self, context: &'static str, f: F) -> Result<T, RuntimeError>
    where
        F: FnOnce(&Shared) -> Result<T, RuntimeError> + Send + 'static,
        T: Send + 'static,
    {
        let shared = Arc::clone(&self.shared);
        sandkasten_runtime::blocking(context, move || f(&shared)).await
    }

    /// Makes the sandbox's cgroups and has the spawner fork the launcher
    /// (it writes the CPU quota and joins them while the rest is prepared:
    /// see the agent's `init`), prepares its directories and workspace
    /// (blocking pool), then sends the launch spec and reads the report.
    async fn launch(&self, spec: &SandboxSpec) -> Result<LaunchReport, RuntimeError> {
        let started = std::time::Instant::now();
        let (id, limits) = (spec.id.clone(), spec.limits.clone());
        let (mut launcher, cgroups_us, spawned_us) = self
            .run("starting a sandbox's launcher", move |s| {
                // The session directory first: it is what a restart finds
                // an interrupted create by (`list_sandboxes`), so cgroups
                // made after it are never left without an owner.
                let dir = s.session_dir(&id);
                std::fs::create_dir_all(&dir)
                    .map_err(RuntimeError::io_ctx(format!("creating {}", dir.display())))?;
                let join = s.cgroups.create(&id, &limits)?;
                let cgroups_us = started.elapsed().as_micros() as u64;
                let launcher = s.spawner.spawn(&SpawnRequest {
                    base_ns: s.base_ns.path(),
                    t0_ns: sandkasten_protocol::monotonic_ns(),
                })?;
                let mut line = serde_json::to_vec(&join)
                    .map_err(|e| RuntimeError::StartFailed(format!("encoding the cgroups: {e}")))?;
                line.push(b'\n');
                // A few hundred bytes into an empty pipe: never blocks.
                let mut stdin = launcher.stdin.as_ref().expect("stdin is set");
                stdin
                    .write_all(&line)
                    .map_err(RuntimeError::io_ctx("sending the cgroups"))?;
                Ok((launcher, cgroups_us, started.elapsed().as_micros() as u64))
            })
            .await?;
        let spec = spec.clone();
        // The attached workspace device (if any) stays pinned until the
        // launch report: the sandbox's own mount then keeps it bound.
        // Dropped on an error, the launcher is killed (out of the cgroups
        // before they are removed).
        let Prepared {
            spec: launch,
            _attached,
            _idmap,
        } = self
            .run("preparing a sandbox", move |s| s.prepare_launch(&spec))
            .await?;
        let prepared_us = started.elapsed().as_micros() as u64;
        let json = serde_json::to_vec(&launch)
            .map_err(|e| RuntimeError::StartFailed(format!("encoding the launch spec: {e}")))?;
        let pipe_err = |what: &'static str| RuntimeError::io_ctx(what);
        let mut stdin = tokio::net::unix::pipe::Sender::from_owned_fd(OwnedFd::from(
            launcher.stdin.take().expect("stdin is set"),
        ))
        .map_err(pipe_err("the launcher's stdin"))?;
        stdin
            .write_all(&json)
            .await
            .map_err(pipe_err("sending launch spec"))?;
        drop(stdin);
        let mut stdout = tokio::net::unix::pipe::Receiver::from_owned_fd(
            launcher.stdout.take().expect("stdout is set"),
        )
        .map_err(pipe_err("the launcher's stdout"))?;
        let mut stderr = tokio::net::unix::pipe::Receiver::from_owned_fd(
            launcher.stderr.take().expect("stderr is set"),
        )
        .map_err(pipe_err("the launcher's stderr"))?;
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let (o, e) = tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
        o.map_err(pipe_err("waiting for sandbox init"))?;
        e.map_err(pipe_err("waiting for sandbox init"))?;
        // Its stdout closed: it has exited (or is exiting) either way.
        let mut report: LaunchReport = match serde_json::from_slice(&out) {
            Ok(r) => r,
            Err(_) => {
                return Err(RuntimeError::StartFailed(format!(
                    "sandbox init failed: {}",
                    String::from_utf8_lossy(&err).trim()
                )))
            }
        };
        launcher.finished();
        // From the report's writing to its reading here: the launcher's exit.
        let exit_us = sandkasten_protocol::monotonic_ns().saturating_sub(report.finished_ns) / 1000;
        let mut phases = vec![
            ("cgroups".to_string(), cgroups_us),
            ("spawn".to_string(), spawned_us - cgroups_us),
            ("prepare".to_string(), prepared_us - spawned_us),
        ];
        phases.extend(
            report
                .phases_us
                .iter()
                .map(|(n, us)| (format!("launcher: {n}"), *us)),
        );
        phases.push(("launcher exit".to_string(), exit_us));
        phases.push(("launch".to_string(), started.elapsed().as_micros() as u64));
        tracing::debug!(target: "sandkasten::create", session = %launch.session_id, ?phases, "sandbox launched");
        report.phases_us = phases;
        Ok(report)
    }

    /// Kills the sandbox (thawed first: frozen tasks do not die until
    /// thawed) and removes its link (the veth pair goes at once, not when
    /// the kernel gets to the dead namespace; its rules, its address) and
    /// its cgroups. A sandbox already gone only loses those.
    async fn stop(&self, handle: &SandboxHandle) -> Result<(), RuntimeError> {
        self.kill_and_unlink(handle).await?;
        let id = handle.id.clone();
        self.run("removing a sandbox's cgroups", move |s| {
            s.cgroups.remove(&id)
        })
        .await
    }

    /// [`Self::stop`] but for the cgroups, which stay.
    async fn kill_and_unlink(&self, handle: &SandboxHandle) -> Result<(), RuntimeError> {
        let h = handle.clone();
        let proven = self
            .run("proving a sandbox's init", move |s| {
                if s.cgroups.is_frozen(&h.id) {
                    s.cgroups.freeze(&h.id, false)?;
                }
                s.prove(&h)
            })
            .await?;
        if let Some(pidfd) = proven {
            process::kill_and_wait(pidfd)
                .await
                .map_err(RuntimeError::io_ctx("killing sandbox init"))?;
        }
        let id = handle.id.clone();
        self.run("removing a sandbox's link", move |s| match &s.network {
            Some(n) => n.remove(&id),
            None => Ok(()),
        })
        .await
    }

    async fn connect(&self, id: &str) -> Result<AgentClient, RuntimeError> {
        AgentClient::connect(&sandkasten_protocol::socket_path(&self.session_dir(id))).await
    }
}

/// One host range per sandbox where `cfg` asks for them and the data
/// dir's filesystem takes idmapped mounts, else the shared range (said in
/// the log).
fn uid_slots(cfg: &NativeConfig) -> ids::Slots {
    let sessions = cfg.data_dir.join("sessions");
    if cfg.uid_ranges == 0 {
        tracing::info!(
            "sandbox uid ranges: all sandboxes share host uids 100000-165535 (uid_ranges: 0)"
        );
        return ids::Slots::shared(&sessions);
    }
    match ids::idmap_support(&cfg.data_dir.join("images")) {
        Ok(()) => {
            let slots = ids::Slots::per_sandbox(&sessions, cfg.uid_ranges);
            tracing::info!(
                held = slots.held(),
                "sandbox uid ranges: one per sandbox (at most {}), shared files through idmapped mounts",
                cfg.uid_ranges
            );
            slots
        }
        Err(why) => {
            tracing::warn!(
                "sandbox uid ranges: all sandboxes share host uids 100000-165535, so they share \
                 the kernel's per-user budgets (inotify instances, message queues, pipe buffers): \
                 this host cannot make idmapped mounts ({why})"
            );
            ids::Slots::shared(&sessions)
        }
    }
}

/// Opens (or makes) the scratch filesystem as `cfg` asks (see
/// [`NativeConfig::scratch_size_mb`]).
fn open_scratch(cfg: &NativeConfig) -> Result<Option<scratch::Scratch>, RuntimeError> {
    let not_enforced = |why: String| {
        tracing::warn!(
            "sandbox disk limits are not enforced: {why} (set disk.scratch_size_mb, or install              btrfs-progs and free some space)"
        );
        Ok(None)
    };
    let exists = scratch::image_path(&cfg.data_dir).exists();
    let size = match cfg.scratch_size_mb {
        Some(0) => return Ok(None),
        Some(mb) => mb << 20,
        // An existing image keeps its size.
        None if exists => 0,
        None => match scratch::default_size(&cfg.data_dir) {
            Ok(Some(size)) => size,
            Ok(None) => {
                return not_enforced(format!(
                    "the filesystem of {} has no room for a scratch filesystem of 1 GiB",
                    cfg.data_dir.display()
                ))
            }
            Err(e) => return not_enforced(format!("statvfs {}: {e}", cfg.data_dir.display())),
        },
    };
    match scratch::Scratch::open(&cfg.data_dir, size) {
        Ok(s) => Ok(Some(s)),
        Err(e) if cfg.scratch_size_mb.is_none() => {
            not_enforced(format!("the scratch filesystem: {e}"))
        }
        Err(e) => Err(RuntimeError::HostNotReady(format!(
            "disk.scratch_size_mb: the scratch filesystem ({}): {e}",
            scratch::image_path(&cfg.data_dir).display()
        ))),
    }
}

/// `StorageFull` for a create or a snapshot that failed because a
/// filesystem (or its quota) is full.
fn full_or(e: std::io::Error, context: &str) -> RuntimeError {
    if matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)) {
        RuntimeError::StorageFull(format!("{context}: {e}"))
    } else {
        RuntimeError::io(context, e)
    }
}

/// A launch spec and what must live until the launcher has reported: the
/// attached workspace device (the sandbox's own mount keeps it bound from
/// then on) and the idmapping's namespace (the launcher opens it by path).
struct Prepared {
    spec: LaunchSpec,
    _attached: Option<wsimage::Attached>,
    _idmap: Option<ids::IdmapNs>,
}

/// Where a workspace's content lives.
enum Storage {
    /// A btrfs image with a quota (`<id>.img`).
    Image,
    /// A plain directory.
    Dir(PathBuf),
}

/// The blocking host work of each operation (called on the blocking pool).
impl Shared {
    /// A pidfd of the sandbox's init if `handle` proves it: the pid has the
    /// recorded start time, is the init of a pid namespace, and sits in
    /// this session's own cgroup (two sandboxes started in the same clock
    /// tick share a start time; only one of them is in this group).
    fn prove(&self, handle: &SandboxHandle) -> Result<Option<std::os::fd::OwnedFd>, RuntimeError> {
        let pidfd = match latebind::try_open_verified(handle.pid, handle.start_time) {
            Ok(Some(fd)) => fd,
            Ok(None) => return Ok(None),
            Err(e) => {
                return Err(RuntimeError::CapacityExhausted(format!(
                    "proving sandbox {}: {e}",
                    handle.id
                )))
            }
        };
        Ok(self
            .cgroups
            .procs(&handle.id)
            .contains(&handle.pid)
            .then_some(pidfd))
    }

    /// [`Shared::prove`], `Gone` when not proven.
    fn proven(&self, handle: &SandboxHandle) -> Result<std::os::fd::OwnedFd, RuntimeError> {
        self.prove(handle)?
            .ok_or_else(|| RuntimeError::Gone(handle.id.clone()))
    }

    fn images_dir(&self) -> PathBuf {
        self.cfg.data_dir.join("images")
    }

    fn session_dir(&self, id: &str) -> PathBuf {
        self.cfg.data_dir.join("sessions").join(id)
    }

    fn image_store(&self) -> layers::ImageStore {
        layers::ImageStore {
            images: self.images_dir(),
            layers: self.cfg.data_dir.join("layers"),
            ids: self.ids.clone(),
        }
    }

    fn resolve_image(&self, name: &str) -> Result<image::ResolvedImage, RuntimeError> {
        if name == "base" {
            return image::ensure_base(&self.images_dir(), &self.ids);
        }
        match self.image_store().lower_dirs(name) {
            Some(layers) => Ok(image::ResolvedImage {
                layers,
                binds: Vec::new(),
            }),
            None => Err(RuntimeError::ImageNotFound(name.to_string())),
        }
    }

    /// The session's directories, its host uid range, its workspace
    /// (attached when it is an image), and the launch spec that names them
    /// all (the cgroups are made before: see `launch`).
    fn prepare_launch(&self, spec: &SandboxSpec) -> Result<Prepared, RuntimeError> {
        let dir = self.session_dir(&spec.id);
        let image = self.resolve_image(&spec.image)?;
        if spec.network == NetworkMode::Full && self.network.is_none() {
            return Err(RuntimeError::Unsupported(
                "network_mode full (the daemon runs without a sandbox network)".into(),
                "native",
            ));
        }
        let mkdir = |p: &Path, mode: u32, owner: Option<u32>| -> Result<(), RuntimeError> {
            std::fs::create_dir_all(p)
                .map_err(RuntimeError::io_ctx(format!("creating {}", p.display())))?;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
                .map_err(RuntimeError::io_ctx("chmod"))?;
            if let Some(uid) = owner {
                std::os::unix::fs::chown(p, Some(uid), Some(uid))
                    .map_err(RuntimeError::io_ctx(format!("chown {}", p.display())))?;
            }
            Ok(())
        };
        mkdir(&dir, 0o700, None)?;
        mkdir(&dir.join("rootfs"), 0o755, None)?;
        let range = self.slots.acquire(&spec.id)?;
        let ephemeral = spec.workspace == WorkspaceMount::Ephemeral;
        // The sandbox's writable state: its subvolume of the scratch
        // filesystem (mounted by the launcher at `scratch/`), else plain
        // directories of the data dir.
        let (state_dir, scratch_mount) = match &self.scratch {
            Some(scratch) => {
                let mnt = dir.join("scratch");
                mkdir(&mnt, 0o700, None)?;
                let owners = scratch::Owners {
                    root: self.ids.host_root,
                    user: self.ids.host_user,
                };
                if let Some(snap) = &spec.from_snapshot {
                    scratch
                        .create_from_snapshot(
                            snap,
                            &spec.id,
                            owners,
                            spec.limits.disk_mb,
                            ephemeral,
                        )
                        .map_err(|e| match e.raw_os_error() {
                            Some(libc::ENOENT) => RuntimeError::ImageNotFound(snap.clone()),
                            _ => full_or(e, "copying the sandbox snapshot"),
                        })?;
                } else if spec.wake {
                    // The subvolume hibernate kept, with its quota group.
                    if let Some(mb) = spec.limits.disk_mb {
                        scratch
                            .set_limit(&spec.id, mb)
                            .map_err(RuntimeError::io_ctx(
                                "opening the hibernated sandbox's scratch subvolume",
                            ))?;
                    }
                } else {
                    scratch
                        .create(&spec.id, owners, spec.limits.disk_mb, ephemeral)
                        .map_err(|e| full_or(e, "creating the sandbox's scratch subvolume"))?;
                }
                let m = ScratchMount {
                    device: scratch.device().to_path_buf(),
                    options: scratch::Scratch::mount_options(&spec.id),
                    target: mnt.clone(),
                };
                (mnt, Some(m))
            }
            None if spec.from_snapshot.is_some() => {
                return Err(RuntimeError::Unsupported(
                    "sandbox snapshots without a scratch filesystem".into(),
                    "native",
                ));
            }
            None => {
                mkdir(&dir.join("upper"), 0o755, Some(self.ids.host_root))?;
                mkdir(&dir.join("work"), 0o700, None)?;
                if ephemeral {
                    mkdir(&dir.join("workspace"), 0o755, Some(self.ids.host_user))?;
                }
                (dir.clone(), None)
            }
        };
        let mut binds = image.binds;
        // The daemon answers the sandboxes' DNS (at their gateway).
        if let Some(conf) = self.network.as_ref().and_then(|n| n.resolv_conf()) {
            binds.push(BindMount {
                source: conf.to_path_buf(),
                target: "/etc/resolv.conf".into(),
                readonly: true,
                idmap: false,
            });
        }
        let mut block_mounts = Vec::new();
        let mut attached = None;
        match &spec.workspace {
            WorkspaceMount::Ephemeral => {
                let w = state_dir.join("workspace");
                // Below the (idmapped) scratch mount or session dir.
                binds.push(BindMount {
                    source: w,
                    target: "/workspace".into(),
                    readonly: false,
                    idmap: false,
                });
            }
            WorkspaceMount::Persistent(ws) => {
                let img = self.workspace_image(ws);
                if img.exists() {
                    let a = self.attach_workspace(ws)?;
                    block_mounts.push(BlockMount {
                        device: a.device.clone(),
                        target: "/workspace".into(),
                        fstype: "btrfs".into(),
                        options: format!("subvol={}", self.data_subvol(ws)),
                    });
                    attached = Some(a);
                } else {
                    let w = self.ensure_workspace_dir(ws)?;
                    binds.push(BindMount {
                        source: w,
                        target: "/workspace".into(),
                        readonly: false,
                        idmap: true,
                    });
                }
            }
        }
        let map = |size| {
            vec![IdMap {
                inside: 0,
                outside: ids::base(range),
                count: size,
            }]
        };
        // A range of its own: the shared files through idmapped mounts,
        // the layer stores and its own state first (the workspace's block
        // mount or bind is idmapped where it is made).
        let idmap = match range {
            0 => None,
            k => Some(
                ids::IdmapNs::new(k)
                    .map_err(RuntimeError::io_ctx("making the sandbox's idmapping"))?,
            ),
        };
        let idmap_spec = idmap.as_ref().map(|ns| {
            let layers = self.cfg.data_dir.join("layers");
            let mut dirs = vec![self.images_dir()];
            if image.layers.iter().any(|l| l.starts_with(&layers)) {
                dirs.push(layers);
            }
            dirs.push(match &scratch_mount {
                Some(m) => m.target.clone(),
                None => dir.clone(),
            });
            Idmap {
                userns: ns.path(),
                dirs,
            }
        });
        let launch = LaunchSpec {
            session_id: spec.id.clone(),
            hostname: format!("sk-{}", &spec.id[..spec.id.len().min(12)]),
            lower_dirs: image.layers,
            upper_dir: state_dir.join("upper"),
            work_dir: state_dir.join("work"),
            tmp_dir: scratch_mount.as_ref().map(|_| state_dir.join("tmp")),
            scratch: scratch_mount,
            rootfs_dir: dir.join("rootfs"),
            binds,
            block_mounts,
            tmp_size_mb: self.cfg.tmp_size_mb,
            readonly_rootfs: spec.readonly_rootfs,
            uid_map: map(self.ids.size),
            gid_map: map(self.ids.size),
            idmap: idmap_spec,
            socket_path: sandkasten_protocol::socket_path(&dir),
            network: WireNetwork::None,
            agent: AgentConfig {
                uid: Some(SANDBOX_UID),
                gid: Some(SANDBOX_UID),
                workdir: "/workspace".into(),
                // Native images carry no environment of their own.
                env: sandkasten_runtime::shell_env(&[], &spec.env),
                home: "/home/sandbox".into(),
                files_root: None,
                nproc_limit: None,
            },
        };
        Ok(Prepared {
            spec: launch,
            _attached: attached,
            _idmap: idmap,
        })
    }

    fn workspaces_dir(&self) -> PathBuf {
        self.cfg.data_dir.join("workspaces")
    }

    fn workspace_image(&self, id: &str) -> PathBuf {
        self.workspaces_dir().join(format!("{id}.img"))
    }

    fn workspace_dir(&self, id: &str) -> PathBuf {
        self.workspaces_dir().join(id)
    }

    /// Where workspace `id` lives; `NotFound` when it has no storage yet.
    fn storage(&self, id: &str) -> Result<Storage, RuntimeError> {
        let img = self.workspace_image(id);
        if img.exists() {
            return Ok(Storage::Image);
        }
        let dir = self.workspace_dir(id);
        if dir.is_dir() {
            return Ok(Storage::Dir(dir));
        }
        Err(RuntimeError::NotFound(format!("workspace {id}")))
    }

    /// The lock of workspace `id`'s storage: of its image's inode when it
    /// has one (a workspace and its copy-on-write clones share one image,
    /// hard-linked, which must never be attached twice), else of its id.
    fn workspace_lock(&self, id: &str) -> Result<wsimage::Lock, RuntimeError> {
        use std::os::unix::fs::MetadataExt;
        let p = match std::fs::metadata(self.workspace_image(id)) {
            Ok(m) => self.workspaces_dir().join(format!(".ino-{}.lock", m.ino())),
            Err(_) => self.workspaces_dir().join(format!("{id}.lock")),
        };
        wsimage::Lock::take(&p).map_err(RuntimeError::io_ctx(format!("locking workspace {id}")))
    }

    /// Where workspace `id`'s clone-of marker lives: the name of its
    /// content subvolume in its (shared) image.
    fn subvol_marker(&self, id: &str) -> PathBuf {
        self.workspaces_dir().join(format!("{id}.subvol"))
    }

    /// The content subvolume of image workspace `id`: `data`, or a
    /// clone's own (`data-<id>`, named by its marker).
    fn data_subvol(&self, id: &str) -> String {
        std::fs::read_to_string(self.subvol_marker(id))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty() && !s.contains('/'))
            .unwrap_or_else(|| "data".into())
    }

    /// Workspace `dst` as a copy-on-write clone of snapshot `snap` of image
    /// workspace `src`: a writable snapshot `data-<dst>` in `src`'s image,
    /// which `dst`'s image name hard-links (the image is shared: so is its
    /// size limit). `false` when `src` has no image (nothing made).
    fn clone_snapshot(&self, src: &str, snap: &str, dst: &str) -> Result<bool, RuntimeError> {
        let src_img = self.workspace_image(src);
        if !src_img.exists() {
            return Ok(false);
        }
        let dst_img = self.workspace_image(dst);
        if dst_img.exists() || self.workspace_dir(dst).exists() {
            return Err(RuntimeError::Busy(format!("workspace {dst} exists")));
        }
        let _lock = self.workspace_lock(src)?;
        let device = wsimage::attach(&src_img)
            .map_err(RuntimeError::io_ctx(format!("attaching workspace {src}")))?;
        let data = format!("data-{dst}");
        wsimage::clone_snapshot(&device.device, snap, &data).map_err(|e| {
            match e.raw_os_error() {
                Some(libc::ENOENT) => RuntimeError::NotFound(format!("snapshot {snap}")),
                _ => full_or(e, &format!("cloning snapshot {snap} of {src}")),
            }
        })?;
        let made = (|| {
            let marker = self.subvol_marker(dst);
            let tmp = marker.with_extension("subvol.tmp");
            std::fs::write(&tmp, &data)?;
            std::fs::rename(&tmp, &marker)?;
            std::fs::hard_link(&src_img, &dst_img)
        })();
        if let Err(e) = made {
            let _ = std::fs::remove_file(self.subvol_marker(dst));
            let _ = wsimage::delete_data(&device.device, &data);
            return Err(RuntimeError::io(format!("making workspace {dst}"), e));
        }
        Ok(true)
    }

    /// The image's loop device, attached unless it already is (under the
    /// workspace's lock, so an image is never attached twice).
    fn attach_workspace(&self, id: &str) -> Result<wsimage::Attached, RuntimeError> {
        let _lock = self.workspace_lock(id)?;
        wsimage::attach(&self.workspace_image(id))
            .map_err(RuntimeError::io_ctx(format!("attaching workspace {id}")))
    }

    /// The attached device of an image workspace; `Unsupported` for a
    /// directory workspace.
    fn image_device(&self, id: &str) -> Result<wsimage::Attached, RuntimeError> {
        if !self.workspace_image(id).exists() {
            return Err(RuntimeError::Unsupported(
                "snapshots of a workspace without a quota".into(),
                "native",
            ));
        }
        self.attach_workspace(id)
    }

    /// Drops the kept mounts of image `img` (its workspace's and its
    /// clones'), so that it can detach once no sandbox mounts it.
    fn release_kept(&self, img: &Path) {
        use std::os::unix::fs::MetadataExt;
        if let Ok(meta) = std::fs::metadata(img) {
            self.kept.release(meta.ino());
        }
    }

    /// Waits (bounded, [`DETACH_WAIT`]) until no sandbox mounts image
    /// workspace `id` (its kept mounts dropped first); `Busy` when one
    /// still does.
    fn wait_unmounted(&self, id: &str, img: &Path) -> Result<(), RuntimeError> {
        self.release_kept(img);
        let detached = wsimage::wait_detached(img, DETACH_WAIT).map_err(RuntimeError::io_ctx(
            "looking for the workspace's loop device",
        ))?;
        if detached {
            Ok(())
        } else {
            Err(RuntimeError::Busy(format!(
                "workspace {id} is still mounted"
            )))
        }
    }

    /// Runs `f` on the workspace's content as the daemon sees it: the
    /// directory, or a detached mount of the image's `data` subvolume.
    fn with_workspace_root<T>(
        &self,
        id: &str,
        f: impl FnOnce(&Path) -> Result<T, RuntimeError>,
    ) -> Result<T, RuntimeError> {
        match self.storage(id)? {
            Storage::Image => {
                let attached = self.attach_workspace(id)?;
                let mnt = wsimage::mount_detached(&attached.device, Some(&self.data_subvol(id)))
                    .map_err(RuntimeError::io_ctx(format!("mounting workspace {id}")))?;
                drop(attached);
                f(&wsimage::fd_path(&mnt))
            }
            Storage::Dir(dir) => f(&dir),
        }
    }

    /// `<data_dir>/workspaces`, private to root.
    fn ensure_workspaces_dir(&self) -> Result<(), RuntimeError> {
        let root = self.workspaces_dir();
        if !root.exists() {
            std::fs::create_dir_all(&root)
                .map_err(RuntimeError::io_ctx(format!("creating {}", root.display())))?;
            std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700))
                .map_err(RuntimeError::io_ctx("chmod"))?;
        }
        Ok(())
    }

    /// `<data_dir>/workspaces/<id>`, owned by the sandbox user.
    fn ensure_workspace_dir(&self, id: &str) -> Result<PathBuf, RuntimeError> {
        self.ensure_workspaces_dir()?;
        let w = self.workspace_dir(id);
        match std::fs::create_dir(&w) {
            Ok(()) => {
                std::fs::set_permissions(&w, std::fs::Permissions::from_mode(0o755))
                    .map_err(RuntimeError::io_ctx("chmod"))?;
                std::os::unix::fs::chown(&w, Some(self.ids.host_user), Some(self.ids.host_user))
                    .map_err(RuntimeError::io_ctx(format!("chown {}", w.display())))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(RuntimeError::io(format!("creating {}", w.display()), e)),
        }
        Ok(w)
    }

    fn ensure_workspace(&self, id: &str, quota_bytes: Option<u64>) -> Result<(), RuntimeError> {
        let img = self.workspace_image(id);
        if img.exists() || self.workspace_dir(id).is_dir() {
            return Ok(());
        }
        let Some(quota) = quota_bytes else {
            return self.ensure_workspace_dir(id).map(|_| ());
        };
        wsimage::host_support()
            .map_err(|e| RuntimeError::HostNotReady(format!("workspace quotas: {e}")))?;
        self.ensure_workspaces_dir()?;
        let _lock = self.workspace_lock(id)?;
        if img.exists() {
            return Ok(());
        }
        let created = wsimage::create(&img, quota, self.ids.host_user).map_err(
            RuntimeError::io_ctx(format!("creating workspace image {id}")),
        );
        if created.is_err() {
            // Nothing of the failed workspace stays behind.
            let _ = std::fs::remove_file(img.with_extension("lock"));
        }
        created
    }

    fn delete_workspace(&self, id: &str) -> Result<(), RuntimeError> {
        use std::os::unix::fs::MetadataExt;
        let img = self.workspace_image(id);
        if let Ok(meta) = std::fs::metadata(&img) {
            let _lock = self.workspace_lock(id)?;
            if meta.nlink() > 1 {
                // Its image holds clones (or their origin) too: only its
                // own content subvolume goes. The engine guarantees no
                // session mounts this workspace; its family's may run.
                self.release_kept(&img);
                let device = wsimage::attach(&img)
                    .map_err(RuntimeError::io_ctx(format!("attaching workspace {id}")))?;
                wsimage::delete_data(&device.device, &self.data_subvol(id))
                    .map_err(RuntimeError::io_ctx(format!("deleting workspace {id}")))?;
            } else {
                self.wait_unmounted(id, &img)?;
            }
            std::fs::remove_file(&img)
                .map_err(RuntimeError::io_ctx(format!("deleting {}", img.display())))?;
            let _ = std::fs::remove_file(self.subvol_marker(id));
            let _ = std::fs::remove_file(img.with_extension("lock"));
            if meta.nlink() == 1 {
                let ino_lock = format!(".ino-{}.lock", meta.ino());
                let _ = std::fs::remove_file(self.workspaces_dir().join(ino_lock));
            }
            Ok(())
        } else {
            // A lock left by a create that failed before its image existed.
            let _ = std::fs::remove_file(img.with_extension("lock"));
            remove_tree(&self.workspace_dir(id)).map_err(RuntimeError::io_ctx("deleting workspace"))
        }
    }

    fn restore_snapshot(&self, id: &str, snap: &str) -> Result<(), RuntimeError> {
        let img = self.workspace_image(id);
        if !img.exists() {
            return Err(RuntimeError::Unsupported(
                "snapshots of a workspace without a quota".into(),
                "native",
            ));
        }
        self.wait_unmounted(id, &img)?;
        let device = self.image_device(id)?;
        wsimage::restore(&device.device, &self.data_subvol(id), snap)
            .map_err(RuntimeError::io_ctx(format!("restoring snapshot {snap}")))
    }

    /// Writes workspace `id` as a tar: an image workspace from a temporary
    /// read-only snapshot (point-in-time), a directory walked live.
    fn export(&self, id: &str, out: &mut (dyn std::io::Write + Send)) -> Result<(), RuntimeError> {
        let opts = wstar::export_options(&self.ids);
        let exported = RuntimeError::io_ctx(format!("exporting workspace {id}"));
        match self.storage(id)? {
            Storage::Image => {
                static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let name = format!("export-{}-{n}", std::process::id());
                let device = self.attach_workspace(id)?;
                // Declared before the mount, so it is deleted after the
                // mount is gone (also when the client stops reading
                // half-way).
                let _snap =
                    wsimage::TempSnapshot::take(&device.device, &self.data_subvol(id), &name)
                        .map_err(RuntimeError::io_ctx(format!("snapshotting workspace {id}")))?;
                let mnt = wsimage::mount_detached(&device.device, Some(&format!("snaps/{name}")))
                    .map_err(RuntimeError::io_ctx(format!(
                    "mounting the export snapshot of {id}"
                )))?;
                sandkasten_hostfs::export_tar(&wsimage::fd_path(&mnt), &opts, out).map_err(exported)
            }
            Storage::Dir(dir) => sandkasten_hostfs::export_tar(&dir, &opts, out).map_err(exported),
        }
    }

    /// Replaces workspace `id`'s content with the tar read from `archive`
    /// (extracted into a new subvolume or directory, then swapped in).
    fn import_from(
        &self,
        id: &str,
        archive: impl std::io::Read,
        keep_owners: bool,
    ) -> Result<(), RuntimeError> {
        let user = self.ids.host_user;
        let keep = keep_owners.then_some((self.ids.host_root, self.ids.size));
        let img = self.workspace_image(id);
        let fill = |root: &Path| wstar::extract(archive, root, user, keep);
        let result = if img.exists() {
            self.wait_unmounted(id, &img)?;
            let device = self.attach_workspace(id)?;
            wsimage::replace_data(&device.device, &self.data_subvol(id), user, fill)
        } else {
            let dir = self.workspace_dir(id);
            if !dir.is_dir() {
                return Err(RuntimeError::NotFound(format!("workspace {id}")));
            }
            let tmp = self
                .workspaces_dir()
                .join(format!(".import-{id}-{}", std::process::id()));
            let _ = remove_tree(&tmp);
            let made = std::fs::create_dir(&tmp)
                .and_then(|_| {
                    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
                })
                .and_then(|_| std::os::unix::fs::chown(&tmp, Some(user), Some(user)));
            let r = match made {
                Err(e) => Err(wstar::ImportError::Io(e)),
                Ok(()) => fill(&tmp),
            };
            match r {
                Err(e) => {
                    let _ = remove_tree(&tmp);
                    Err(e)
                }
                Ok(()) => {
                    // The new content on disk before it is swapped in (the
                    // extraction syncs no file of its own).
                    if let Ok(d) = std::fs::File::open(&tmp) {
                        // SAFETY: syncfs on an fd we own.
                        unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&d)) };
                    }
                    let old = self
                        .workspaces_dir()
                        .join(format!(".old-{id}-{}", std::process::id()));
                    std::fs::rename(&dir, &old)
                        .and_then(|_| std::fs::rename(&tmp, &dir))
                        .map_err(RuntimeError::io_ctx("swapping in the imported content"))?;
                    let _ = remove_tree(&old);
                    Ok(())
                }
            }
        };
        result.map_err(|e| match e {
            wstar::ImportError::Invalid(m) => RuntimeError::InvalidArchive(m),
            wstar::ImportError::Io(e)
                if matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
                    || matches!(
                        e.kind(),
                        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
                    ) =>
            {
                RuntimeError::InvalidArchive(format!(
                    "the content does not fit in workspace {id}'s quota ({e}); \
                     the old content is unchanged"
                ))
            }
            // What the archive asks for cannot be made: a name over 255
            // bytes, a path over PATH_MAX, too many links to one file, a
            // hard link to an entry that is not there (to itself).
            wstar::ImportError::Io(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENAMETOOLONG | libc::EMLINK | libc::ENOENT)
                ) =>
            {
                RuntimeError::InvalidArchive(format!(
                    "the archive cannot be extracted ({e}); the old content is unchanged"
                ))
            }
            wstar::ImportError::Io(e) => RuntimeError::io(format!("importing into {id}"), e),
        })
    }

    /// Fills workspace `dst` with snapshot `snap` of `src`: an export of a
    /// detached mount of the snapshot, piped into the import on a second
    /// thread (nothing is spooled).
    fn copy_snapshot(&self, src: &str, snap: &str, dst: &str) -> Result<(), RuntimeError> {
        let opts = wstar::export_options(&self.ids);
        let device = self.image_device(src)?;
        let mnt = wsimage::mount_detached(&device.device, Some(&format!("snaps/{snap}")))
            .map_err(RuntimeError::io_ctx(format!("mounting snapshot {snap}")))?;
        let root = wsimage::fd_path(&mnt);
        let (r, w) = std::io::pipe().map_err(RuntimeError::io_ctx("pipe"))?;
        std::thread::scope(|s| {
            let writer = s.spawn(move || {
                let mut w = std::io::BufWriter::with_capacity(1 << 16, w);
                sandkasten_hostfs::export_tar(&root, &opts, &mut w)
            });
            let imported = self.import_from(dst, std::io::BufReader::new(r), true);
            let exported = writer.join().map_err(|_| RuntimeError::Task {
                context: "copying a snapshot",
                message: "the export thread panicked".into(),
            })?;
            imported?;
            exported.map_err(RuntimeError::io_ctx(format!("reading snapshot {snap}")))
        })
    }

    /// Late binding: a detached mount of the workspace (a clone of its kept
    /// mount, see [`wskeep`], or of its directory) moved onto `/workspace`
    /// in the sandbox's mount namespace by a thread of its own.
    fn bind_workspace(&self, handle: &SandboxHandle, id: &str) -> Result<(), RuntimeError> {
        use std::os::unix::fs::MetadataExt;
        let img = self.workspace_image(id);
        let mount = match std::fs::metadata(&img) {
            Ok(meta) => {
                let subvol = self.data_subvol(id);
                let kept = match self.kept.mount(id, meta.ino(), &subvol) {
                    Some(m) => m,
                    None => {
                        // Attached and mounted once, then kept.
                        let attached = self.attach_workspace(id)?;
                        let m = wsimage::mount_detached(&attached.device, Some(&subvol))
                            .map_err(RuntimeError::io_ctx(format!("mounting workspace {id}")))?;
                        self.kept.keep(id, meta.ino(), &subvol, attached, m);
                        self.kept
                            .mount(id, meta.ino(), &subvol)
                            .expect("a workspace just kept is kept")
                    }
                };
                kept.map_err(RuntimeError::io_ctx(format!("mounting workspace {id}")))?
            }
            Err(_) => {
                let dir = self.ensure_workspace_dir(id)?;
                latebind::clone_dir(&dir)
                    .map_err(RuntimeError::io_ctx(format!("binding workspace {id}")))?
            }
        };
        // The sandbox's own range sees the shared ids through its mapping.
        if let k @ 1.. = self.slots.of(&handle.id) {
            ids::IdmapNs::new(k)
                .and_then(|ns| ns.apply(&mount))
                .map_err(RuntimeError::io_ctx(format!("idmapping workspace {id}")))?;
        }
        let pidfd = self.proven(handle)?;
        latebind::move_into(pidfd, mount, "/workspace").map_err(RuntimeError::io_ctx(format!(
            "mounting workspace {id} into sandbox {}",
            handle.id
        )))
    }

    fn list_sandboxes(&self) -> Result<Vec<String>, RuntimeError> {
        let dir = self.cfg.data_dir.join("sessions");
        let mut out = match &self.scratch {
            // A subvolume whose session directory is gone is a sandbox's
            // leftover too (a crash between the two deletions).
            Some(s) => s
                .list()
                .map_err(RuntimeError::io_ctx("listing scratch subvolumes"))?,
            None => Vec::new(),
        };
        for e in std::fs::read_dir(&dir)
            .map_err(RuntimeError::io_ctx(format!("listing {}", dir.display())))?
        {
            let e = e.map_err(RuntimeError::io_ctx("listing sessions"))?;
            if let Some(name) = e.file_name().to_str() {
                if !out.iter().any(|o| o == name) {
                    out.push(name.to_string());
                }
            }
        }
        Ok(out)
    }

    /// `StorageFull` while the data dir's filesystem, or the scratch
    /// filesystem, has less free space than a create needs.
    fn check_room(&self) -> Result<(), RuntimeError> {
        let min = self.cfg.min_free_mb << 20;
        let mib = |b: u64| b >> 20;
        let st = rustix::fs::statvfs(&self.cfg.data_dir)
            .map_err(|e| RuntimeError::io("statvfs of the data dir", e.into()))?;
        let free = st.f_bavail.saturating_mul(st.f_frsize);
        if free < min {
            return Err(RuntimeError::StorageFull(format!(
                "the data dir's filesystem ({}) has {} MiB free, less than the {} MiB a new \
                 sandbox needs (disk.min_free_mb); existing sessions keep working",
                self.cfg.data_dir.display(),
                mib(free),
                mib(min)
            )));
        }
        if let Some(scratch) = &self.scratch {
            let min = min.min(scratch.size_bytes() / 10);
            let free = scratch
                .free_bytes()
                .map_err(RuntimeError::io_ctx("statvfs of the scratch filesystem"))?;
            if free < min {
                return Err(RuntimeError::StorageFull(format!(
                    "the sandboxes' scratch filesystem has {} MiB free, less than the {} MiB a \
                     new sandbox needs; existing sessions keep working",
                    mib(free),
                    mib(min)
                )));
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Runtime for NativeRuntime {
    fn name(&self) -> &'static str {
        "native"
    }

    async fn create(&self, spec: SandboxSpec) -> Result<Sandbox, RuntimeError> {
        let report = match self.launch(&spec).await {
            Ok(r) => r,
            Err(e) => {
                let handle = SandboxHandle::unproven(spec.id.clone());
                if let Err(ce) = self.destroy(&handle).await {
                    tracing::warn!(session = %spec.id, "cleanup after failed create: {ce}");
                }
                return Err(e);
            }
        };
        let handle = SandboxHandle {
            id: spec.id.clone(),
            pid: report.pid,
            start_time: report.start_time,
        };
        let connecting = std::time::Instant::now();
        let ready = match self.connect(&spec.id).await {
            Ok(agent) if spec.network == NetworkMode::Full => {
                // A link that allows nothing yet (a pooled sandbox's: its
                // policy comes when it is handed out).
                let h = handle.clone();
                self.run("preparing a sandbox's link", move |s| {
                    let pidfd = s.proven(&h)?;
                    match &s.network {
                        Some(n) => n.prepare(&h.id, h.pid, &pidfd),
                        None => Ok(()),
                    }
                })
                .await
                .map(|()| agent)
            }
            other => other,
        };
        match ready {
            Ok(agent) => {
                let mut phases_us = report.phases_us;
                phases_us.push((
                    "connect".to_string(),
                    connecting.elapsed().as_micros() as u64,
                ));
                Ok(Sandbox {
                    handle,
                    agent,
                    phases_us,
                })
            }
            Err(e) => {
                let _ = self.destroy(&handle).await;
                Err(e)
            }
        }
    }

    async fn attach(&self, handle: &SandboxHandle) -> Result<Sandbox, RuntimeError> {
        let h = handle.clone();
        let proven = self
            .run("proving a sandbox's init", move |s| {
                Ok(s.prove(&h)?.is_some())
            })
            .await?;
        if !proven {
            return Err(RuntimeError::Gone(handle.id.clone()));
        }
        let agent = self
            .connect(&handle.id)
            .await
            .map_err(|_| RuntimeError::Gone(handle.id.clone()))?;
        Ok(Sandbox {
            handle: handle.clone(),
            agent,
            phases_us: Vec::new(),
        })
    }

    async fn destroy(&self, handle: &SandboxHandle) -> Result<(), RuntimeError> {
        self.kill_and_unlink(handle).await?;
        let id = handle.id.clone();
        self.run("removing a sandbox's files and cgroups", move |s| {
            let dir = s.session_dir(&id);
            let files = remove_tree(&dir)
                .map_err(RuntimeError::io_ctx(format!("removing {}", dir.display())))
                .and_then(|()| {
                    s.slots.release(&id);
                    // The sandbox's processes are gone: its subvolume goes
                    // (the kernel frees the space in the background).
                    match &s.scratch {
                        Some(scratch) => scratch.destroy(&id).map_err(RuntimeError::io_ctx(
                            format!("deleting the scratch subvolume of {id}"),
                        )),
                        None => Ok(()),
                    }
                });
            // After the files: what the sandbox's own files held in the
            // page cache is freed with them, not reclaimed.
            let groups = s.cgroups.remove(&id);
            files.and(groups)
        })
        .await
    }

    fn network_policies(&self) -> bool {
        self.shared.network.is_some()
    }

    fn network_unsupported(&self) -> Option<String> {
        self.shared
            .network
            .is_none()
            .then(|| "network_mode full (the daemon runs without a sandbox network)".into())
    }

    fn network_events(&self, id: &str) -> Vec<sandkasten_runtime::NetworkDenial> {
        self.shared
            .network
            .as_ref()
            .map(|n| n.events(id))
            .unwrap_or_default()
    }

    fn network_denials_total(&self) -> u64 {
        self.shared
            .network
            .as_ref()
            .map_or(0, |n| n.denials_total())
    }

    async fn set_network(
        &self,
        handle: &SandboxHandle,
        policy: &sandkasten_runtime::NetworkPolicy,
    ) -> Result<(), RuntimeError> {
        let (h, policy) = (handle.clone(), policy.clone());
        self.run("setting a sandbox's network", move |s| {
            let Some(n) = &s.network else {
                return Err(RuntimeError::Unsupported(
                    "network policies (the daemon runs without a sandbox network)".into(),
                    "native",
                ));
            };
            let pidfd = s.proven(&h)?;
            n.apply(&h.id, h.pid, &pidfd, &policy)
        })
        .await
    }

    async fn pause(&self, handle: &SandboxHandle) -> Result<(), RuntimeError> {
        let h = handle.clone();
        self.run("pausing a sandbox", move |s| {
            s.proven(&h)?;
            s.cgroups.freeze(&h.id, true)
        })
        .await
    }

    async fn resume(&self, handle: &SandboxHandle) -> Result<(), RuntimeError> {
        let h = handle.clone();
        self.run("resuming a sandbox", move |s| {
            s.cgroups.freeze(&h.id, false)
        })
        .await
    }

    /// Stops the sandbox ([`NativeRuntime::stop`]); its session directory
    /// and scratch subvolume (root filesystem changes, `/tmp`, an
    /// ephemeral `/workspace`) stay for a create with `wake`.
    async fn hibernate(&self, handle: &SandboxHandle) -> Result<(), RuntimeError> {
        self.stop(handle).await
    }

    fn can_hibernate(&self) -> bool {
        true
    }

    /// A read-only btrfs snapshot of the sandbox's scratch subvolume in
    /// the scratch filesystem's `.snapshots/` (atomic, copy-on-write).
    async fn snapshot_sandbox(
        &self,
        handle: &SandboxHandle,
        snap: &str,
    ) -> Result<(), RuntimeError> {
        let (id, snap) = (handle.id.clone(), snap.to_string());
        self.run("snapshotting a sandbox", move |s| match &s.scratch {
            Some(scratch) => scratch
                .snapshot(&id, &snap)
                .map_err(|e| full_or(e, "snapshotting the sandbox's subvolume")),
            None => Err(RuntimeError::Unsupported(
                "sandbox snapshots without a scratch filesystem".into(),
                "native",
            )),
        })
        .await
    }

    async fn delete_sandbox_snapshot(&self, snap: &str) -> Result<(), RuntimeError> {
        let snap = snap.to_string();
        self.run("deleting a sandbox snapshot", move |s| match &s.scratch {
            Some(scratch) => scratch
                .delete_snapshot(&snap)
                .map_err(RuntimeError::io_ctx("deleting a sandbox snapshot")),
            None => Ok(()),
        })
        .await
    }

    async fn list_sandbox_snapshots(&self) -> Result<Vec<String>, RuntimeError> {
        self.run("listing sandbox snapshots", move |s| match &s.scratch {
            Some(scratch) => scratch
                .list_snapshots()
                .map_err(RuntimeError::io_ctx("listing sandbox snapshots")),
            None => Ok(Vec::new()),
        })
        .await
    }

    fn can_snapshot_sandbox(&self) -> bool {
        self.shared.scratch.is_some()
    }

    fn hibernate_keeps_tmp(&self) -> bool {
        // `/tmp` is a directory of the scratch subvolume; without one it
        // is a tmpfs.
        self.shared.scratch.is_some()
    }

    async fn stats(&self, handle: &SandboxHandle) -> Result<SandboxStats, RuntimeError> {
        let id = handle.id.clone();
        self.run("reading a sandbox's usage", move |s| {
            Ok(s.cgroups.stats(&id))
        })
        .await
    }

    async fn list_images(&self) -> Result<Vec<ImageInfo>, RuntimeError> {
        let imported = self
            .run("listing images", |s| Ok(s.image_store().list()))
            .await?;
        let mut out = vec![ImageInfo {
            name: "base".into(),
            digest: "builtin".into(),
            size_bytes: 0,
            builtin: true,
        }];
        out.extend(imported.into_iter().map(|m| ImageInfo {
            name: m.name,
            digest: m.digest,
            size_bytes: m.size_bytes,
            builtin: false,
        }));
        Ok(out)
    }

    async fn import_image(&self, name: &str, archive: PathBuf) -> Result<ImageInfo, RuntimeError> {
        let name = name.to_string();
        self.run("importing an image", move |s| {
            s.image_store().import(&name, &archive)
        })
        .await
    }

    async fn remove_image(&self, name: &str) -> Result<(), RuntimeError> {
        if name == "base" {
            return Err(RuntimeError::ImageBuiltin(name.into()));
        }
        let name = name.to_string();
        self.run("removing an image", move |s| s.image_store().remove(&name))
            .await
    }

    async fn ensure_workspace(
        &self,
        id: &str,
        quota_bytes: Option<u64>,
    ) -> Result<(), RuntimeError> {
        let id = id.to_string();
        // mkfs and attach take tens of milliseconds of blocking work.
        self.run("creating a workspace", move |s| {
            s.ensure_workspace(&id, quota_bytes)
        })
        .await
    }

    async fn delete_workspace(&self, id: &str) -> Result<(), RuntimeError> {
        let id = id.to_string();
        self.run("deleting a workspace", move |s| s.delete_workspace(&id))
            .await
    }

    async fn snapshot_workspace(&self, id: &str, snap: &str) -> Result<(), RuntimeError> {
        let (id, snap) = (id.to_string(), snap.to_string());
        self.run("snapshotting a workspace", move |s| {
            let device = s.image_device(&id)?;
            // A full workspace has no room for a snapshot's metadata: the
            // client's quota, not a fault of the daemon.
            wsimage::snapshot(&device.device, &s.data_subvol(&id), &snap)
                .map_err(|e| full_or(e, &format!("snapshotting workspace {id}")))
        })
        .await
    }

    async fn delete_snapshot(&self, id: &str, snap: &str) -> Result<(), RuntimeError> {
        let (id, snap) = (id.to_string(), snap.to_string());
        self.run("deleting a snapshot", move |s| {
            let device = s.image_device(&id)?;
            wsimage::delete_snapshot(&device.device, &snap)
                .map_err(RuntimeError::io_ctx(format!("deleting snapshot {snap}")))
        })
        .await
    }

    async fn restore_snapshot(&self, id: &str, snap: &str) -> Result<(), RuntimeError> {
        let (id, snap) = (id.to_string(), snap.to_string());
        self.run("restoring a snapshot", move |s| {
            s.restore_snapshot(&id, &snap)
        })
        .await
    }

    async fn workspace_size(&self, id: &str) -> Result<Option<u64>, RuntimeError> {
        let id = id.to_string();
        self.run("measuring a workspace", move |s| {
            if matches!(s.storage(&id), Err(RuntimeError::NotFound(_))) {
                return Ok(None);
            }
            s.with_workspace_root(&id, |root| {
                sandkasten_hostfs::tree_size(root)
                    .map(Some)
                    .map_err(RuntimeError::io_ctx(format!("measuring workspace {id}")))
            })
        })
        .await
    }

    async fn workspace_file(&self, id: &str, op: FileOp) -> Result<FileReply, RuntimeError> {
        let id = id.to_string();
        self.run("a workspace file operation", move |s| {
            // Every path resolves strictly inside the workspace, with the
            // sandbox user's filesystem identity (its uid on the host).
            let user = s.ids.host_user;
            s.with_workspace_root(&id, |root| {
                sandkasten_hostfs::workspace_file_blocking(root, user, op)
            })
        })
        .await
    }

    /// Opened like [`Runtime::workspace_file`]'s operations; a workspace
    /// image's detached mount lives on with the open file until the stream
    /// is dropped.
    async fn workspace_read(
        &self,
        id: &str,
        path: String,
        max_bytes: Option<u64>,
    ) -> Result<FileStream, RuntimeError> {
        let (id, p) = (id.to_string(), path.clone());
        let file = self
            .run("opening a workspace file", move |s| {
                let user = s.ids.host_user;
                s.with_workspace_root(&id, |root| {
                    sandkasten_hostfs::open_workspace_file(root, user, &p)
                })
            })
            .await?;
        Ok(FileStream::from_reader(path, file, max_bytes))
    }

    async fn export_workspace(&self, id: &str) -> Result<ExportStream, RuntimeError> {
        let shared = Arc::clone(&self.shared);
        let id = id.to_string();
        export_blocking(move |out| shared.export(&id, out)).await
    }

    async fn import_workspace(
        &self,
        id: &str,
        archive: PathBuf,
        abandoned: sandkasten_runtime::Abandoned,
    ) -> Result<(), RuntimeError> {
        let id = id.to_string();
        self.run("importing into a workspace", move |s| {
            let f = std::fs::File::open(&archive)
                .map_err(RuntimeError::io_ctx("opening the uploaded archive"))?;
            let read = wstar::Abandonable {
                inner: std::io::BufReader::new(f),
                abandoned: abandoned.clone(),
            };
            s.import_from(&id, read, false).map_err(|e| {
                if abandoned.is_cancelled() {
                    sandkasten_runtime::abandoned_error("importing into a workspace")
                } else {
                    e
                }
            })
        })
        .await
    }

    async fn clone_snapshot(&self, src: &str, snap: &str, dst: &str) -> Result<bool, RuntimeError> {
        let (src, snap, dst) = (src.to_string(), snap.to_string(), dst.to_string());
        self.run("cloning a snapshot", move |s| {
            s.clone_snapshot(&src, &snap, &dst)
        })
        .await
    }

    async fn copy_snapshot(&self, src: &str, snap: &str, dst: &str) -> Result<(), RuntimeError> {
        let (src, snap, dst) = (src.to_string(), snap.to_string(), dst.to_string());
        self.run("copying a snapshot", move |s| {
            s.copy_snapshot(&src, &snap, &dst)
        })
        .await
    }

    fn can_bind_workspace(&self) -> bool {
        true
    }

    async fn bind_workspace(&self, handle: &SandboxHandle, id: &str) -> Result<(), RuntimeError> {
        let (handle, id) = (handle.clone(), id.to_string());
        self.run("mounting a workspace into a sandbox", move |s| {
            s.bind_workspace(&handle, &id)
        })
        .await
    }

    fn scratch_dir(&self) -> PathBuf {
        self.shared.cfg.data_dir.join("tmp")
    }

    fn disk_limit_enforced(&self) -> bool {
        self.shared.scratch.is_some()
    }

    async fn set_disk_limit(&self, handle: &SandboxHandle, mb: u64) -> Result<(), RuntimeError> {
        let id = handle.id.clone();
        self.run("setting a sandbox's disk limit", move |s| {
            match &s.scratch {
                Some(scratch) => scratch
                    .set_limit(&id, mb)
                    .map_err(RuntimeError::io_ctx(format!(
                        "setting the disk limit of {id}"
                    ))),
                None => Err(RuntimeError::Unsupported(
                    "disk limits (no scratch filesystem)".into(),
                    "native",
                )),
            }
        })
        .await
    }

    async fn check_room(&self) -> Result<(), RuntimeError> {
        self.run("checking free space", |s| s.check_room()).await
    }

    async fn connect_port(
        &self,
        handle: &SandboxHandle,
        port: u16,
    ) -> Result<PortStream, RuntimeError> {
        let shared = Arc::clone(&self.shared);
        let handle = handle.clone();
        let prove = move || shared.proven(&handle);
        Ok(Box::new(ports::connect_in_netns(prove, port).await?))
    }

    async fn list_sandboxes(&self) -> Result<Vec<String>, RuntimeError> {
        self.run("listing sandboxes", |s| s.list_sandboxes()).await
    }
}
