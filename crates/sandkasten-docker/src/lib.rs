//! The docker runtime: each sandbox is one container of a Docker engine
//! (Engine API through bollard), with our agent as its PID 1, so exec,
//! streaming and files go over the same agent protocol as on the native
//! runtime and never cost a `docker exec` per call.
//!
//! Per session `<id>` on a local engine (a remote one: see `remote.rs`):
//! ```text
//! container sandkasten-<id>        labels sandkasten.session_id, .image, .workspace_id,
//!                                  .data_dir (which daemon owns it); .workspace_id is
//!                                  empty for a pooled container (see late binding)
//!   /.sandkasten/agent             <data_dir>/bin/sandkasten-agent-<hash>, bound read-only,
//!                                  the entrypoint: `sandkasten-agent container`
//!   /.sandkasten/run               <data_dir>/docker/<id>/ (host, 0700 root): config.json
//!                                  and agent.sock; the sandbox user cannot enter it
//!   /workspace                     volume sandkasten-ws-<workspace_id>, or the ephemeral
//!                                  sandkasten-ws-<id> removed with the container
//!   /tmp                           tmpfs (tmp_size_mb)
//! ```
//!
//! The container runs as root for PID 1 only: every capability is dropped
//! except CHOWN, DAC_OVERRIDE, FOWNER, KILL, SETGID and SETUID (what the
//! agent needs to start the shell as the sandbox user and to do file
//! operations with its identity), no-new-privileges is set, and the agent
//! stacks the native runtime's seccomp filter on the engine's profile. The
//! shell runs as the sandbox user with no capabilities: [`SandboxUser`],
//! a host uid too (no user namespace) and never a host account's
//! (`user.rs`); volumes and homes of an earlier sandbox uid (1000) are
//! taken over on first use (`sandkasten_hostfs::claim_tree`).
//!
//! How the agent gets into a container, how the daemon reaches it and how
//! volumes are read without a session is the transport's (`transport.rs`),
//! picked once at start; the rest of the runtime never asks which one it
//! has. A local engine with runc (a unix socket) sees the same filesystem
//! as the daemon (`local.rs`): the agent binary, the run directories and
//! the volumes' mount points are host paths. An engine with user namespace
//! remapping is refused there (root in the container would not own the run
//! directory). A `tcp://` engine, or any OCI runtime but runc, shares
//! nothing usable with us (`remote.rs`): the agent is copied onto it and
//! reached through the exec API, and workspaces through helper containers.
//!
//! Starting a container is a sequence of named steps (`start.rs`).
//!
//! Late binding (a pooled container taking a persistent workspace): the
//! daemon clones a detached bind mount of the workspace volume's host mount
//! point (`open_tree`, nosuid, nodev) and moves it onto `/workspace` inside
//! the container's mount namespace, entered through a pidfd of its PID 1
//! proven by pid and start time (`sandkasten_runtime::latebind`, shared
//! with the native runtime). Docker does not know about that mount:
//!
//! - labels are fixed at create, so a pooled container's
//!   `sandkasten.workspace_id` label stays empty. Nothing reads that label
//!   back: the daemon's store records each session's workspace, and
//!   recovery, "in use" and workspace deletion go by the store (the
//!   daemon's engine answers 409 `WORKSPACE_IN_USE` itself);
//! - the container does not reference the volume, so Docker's own refusal
//!   to remove a volume in use (409) covers only containers created with
//!   it: never call [`Runtime::delete_workspace`] for a workspace a
//!   session uses (the engine does not).
//!
//! Late binding needs the `runc` OCI runtime (gVisor or a VM runtime keeps
//! its own mount table) and the engine's processes in this daemon's pid
//! namespace; otherwise [`Runtime::can_bind_workspace`] is false and the
//! engine starts creates with a workspace cold.
//!
//! A workspace named like a session (`workspace.persist_by_default` names
//! it after the session; a pooled session's id is its container's) is that
//! session's ephemeral volume `sandkasten-ws-<id>`, labelled as ephemeral
//! and immutable: `ensure_workspace` then records it under
//! `<data_dir>/docker-kept/<id>`, and destroy never removes a volume
//! recorded there (workspace deletion removes the record).
//!
//! Differences from the native runtime: no workspace quotas (the local
//! volume driver has no size limit), no workspace snapshots (sandbox
//! snapshots, `snapshot.rs`, are full copies and refuse a persistent
//! workspace), workspace export is a
//! live walk (not point-in-time), no workspace import yet; `network: full`
//! is native's routed datapath, the daemon's veth made in the container's
//! namespace (`net.rs`), on a local engine with runc and the engine's
//! processes in the daemon's pid namespace only.

mod hostfs;
mod images;
mod local;
mod net;
mod remote;
mod snapshot;
mod start;
mod transport;
mod user;
mod watch;

use async_trait::async_trait;
use bollard::models::{Mount, MountType, MountVolumeOptions, VolumeCreateRequest};
use bollard::query_parameters::{
    ListContainersOptionsBuilder, RemoveContainerOptionsBuilder, RemoveVolumeOptionsBuilder,
    StatsOptionsBuilder,
};
use bollard::Docker;
use futures::StreamExt;
use sandkasten_protocol::AgentConfig;
use sandkasten_runtime::{
    blocking, ExportStream, FileOp, FileReply, FileStream, ImageInfo, PortStream, Runtime,
    RuntimeError, Sandbox, SandboxHandle, SandboxSpec, SandboxStats,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use transport::Transport;

pub use sandkasten_netguard::routed::NetConfig;
pub use snapshot::{snapshot_image, SNAPSHOT_REPO};
pub use user::{check_sandbox_user, group_name, passwd_name};

/// Where the session's run directory appears in a container.
const RUN_DIR: &str = "/.sandkasten/run";
/// The agent's socket in a container.
const AGENT_SOCKET: &str = "/.sandkasten/run/agent.sock";
/// The variable that carries the agent's config on a remote engine.
const CONFIG_ENV: &str = "SANDKASTEN_AGENT_CONFIG";

/// Label keys.
pub const LABEL_SESSION: &str = "sandkasten.session_id";
pub const LABEL_IMAGE: &str = "sandkasten.image";
pub const LABEL_WORKSPACE_ID: &str = "sandkasten.workspace_id";
pub const LABEL_WORKSPACE: &str = "sandkasten.workspace";
pub const LABEL_DATA_DIR: &str = "sandkasten.data_dir";

/// Settings of the docker runtime.
#[derive(Debug, Clone)]
pub struct DockerConfig {
    pub data_dir: PathBuf,
    /// The static `sandkasten-agent` binary (bind-mounted into containers).
    pub agent_binary: PathBuf,
    /// Engine address, `unix:///path` (local) or `tcp://host:port`
    /// (remote, see `remote.rs`); `None`: `DOCKER_HOST` if set, else
    /// `unix:///var/run/docker.sock`.
    pub host: Option<String>,
    /// OCI runtime of the engine for sandboxes (e.g. `runsc`); `None`: the
    /// engine's default.
    pub oci_runtime: Option<String>,
    /// Size of each sandbox's `/tmp` tmpfs (at most its disk limit).
    pub tmp_size_mb: u64,
    /// Creates are refused (`StorageFull`) while the data dir's filesystem
    /// has less free space than this.
    pub min_free_mb: u64,
    /// The sandboxes' network (`net.rs`); `None`: no sandbox has one
    /// (`mode: full` is refused).
    pub network: Option<NetConfig>,
    /// The ids commands run as (see [`SandboxUser`]).
    pub sandbox_user: SandboxUser,
}

/// The uid and gid of the sandbox user in every container: what commands
/// run as and what owns `/workspace` and the home. Without a user
/// namespace they are the same ids on the engine's host, where the kernel
/// keeps per-user budgets (inotify instances and watches, pipe buffers,
/// message queues, RLIMIT_NPROC) by uid: so they must never be a host
/// account's, and [`DockerRuntime::new`] refuses ids that are
/// ([`check_sandbox_user`]). The default lies in 65536..100000: above
/// every regular account (`UID_MAX` 60000) and systemd's dynamic users
/// (61184..65519), below the subordinate ranges `useradd` hands out
/// (from 100000) and the native runtime's sandboxes (100000 and up).
///
/// One number is both the uid and the gid (`docker.sandbox_uid`), as 1000
/// was: session-less file operations act with it as both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SandboxUser {
    pub uid: u32,
    pub gid: u32,
}

impl SandboxUser {
    /// The user whose uid and gid are both `id`.
    pub fn new(id: u32) -> SandboxUser {
        SandboxUser { uid: id, gid: id }
    }
}

/// The default sandbox uid and gid of the docker runtime.
pub const DEFAULT_SANDBOX_ID: u32 = 90_000;

/// The sandbox user of containers made before `docker.sandbox_uid` existed
/// (the uid of the first regular account on most hosts).
pub const LEGACY_SANDBOX_ID: u32 = 1000;

impl Default for SandboxUser {
    fn default() -> Self {
        SandboxUser::new(DEFAULT_SANDBOX_ID)
    }
}

pub struct DockerRuntime {
    cfg: DockerConfig,
    docker: Docker,
    /// How the agent gets into containers and is reached, and how volumes
    /// are read without a session: shared files with a local runc engine,
    /// copies, relays and helpers otherwise (see `transport.rs`).
    transport: Box<dyn Transport>,
    /// Whether the engine's storage driver takes a size for a container's
    /// writable layer (`--storage-opt size=`), decided once at start.
    storage_size: bool,
    /// Whether sandboxes run under gVisor (the engine's runtime for them
    /// is `runsc`): their pids limit is then kept inside gVisor's kernel
    /// (see [`host_pids_limit`]).
    gvisor: bool,
    /// Containers this daemon paused (unpaused before removal: a paused
    /// container's processes do not die until thawed).
    paused: std::sync::Mutex<std::collections::HashSet<String>>,
    /// The sandboxes' network, where this engine can have one.
    net: Option<net::Datapath>,
    /// Why sandboxes cannot have a network here, where they cannot.
    no_net: Option<String>,
}

/// Host tasks gVisor may use for itself and for the processes inside.
/// Under the ptrace platform gVisor's kernel keeps host processes and
/// threads per address space and does not give them all back: measured
/// with runsc 20221219, 54 at start, 437 after forks 16 at a time, 583
/// after 360 short processes 12 at a time (it levels off).
const GVISOR_HOST_TASKS_BASE: u64 = 512;
const GVISOR_HOST_TASKS_PER_PROCESS: u64 = 16;

/// The container's host pids limit for a sandbox limited to `pids`.
///
/// Under runc that is the limit itself. Under gVisor the host cgroup also
/// counts gVisor's own threads, and gVisor's kernel panics (the whole
/// sandbox ends) when it cannot make a host task, so the limit itself is
/// kept inside, as the sandbox user's RLIMIT_NPROC in gVisor's kernel, and
/// the host limit only bounds what gVisor may use for that many processes.
pub(crate) fn host_pids_limit(pids: u64, gvisor: bool) -> u64 {
    if gvisor {
        GVISOR_HOST_TASKS_BASE + GVISOR_HOST_TASKS_PER_PROCESS * pids
    } else {
        pids
    }
}

/// Whether the OCI runtime `name` of an engine is gVisor: its binary (the
/// path the engine reports for it, else the name) is `runsc`.
fn is_gvisor(name: &str, path: Option<&str>) -> bool {
    let bin = path.unwrap_or(name);
    Path::new(bin).file_name().and_then(|f| f.to_str()) == Some("runsc")
}

/// Whether an engine with this storage driver limits a container's
/// writable layer with `--storage-opt size=`: btrfs and zfs do; overlay2
/// only on xfs mounted with project quotas (`pquota`), which only a local
/// engine's mount table shows (`xfs_pquota`: the options of the
/// filesystem holding the engine's root dir, where known).
pub(crate) fn driver_limits_size(
    driver: &str,
    backing_fs: Option<&str>,
    xfs_pquota: Option<bool>,
) -> bool {
    match driver {
        "btrfs" | "zfs" => true,
        "overlay2" => backing_fs == Some("xfs") && xfs_pquota == Some(true),
        _ => false,
    }
}

/// Whether the filesystem at `dir` is mounted with project quotas (from
/// /proc/self/mountinfo: the longest mount point that contains `dir`).
fn mounted_with_pquota(dir: &Path) -> Option<bool> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut best: Option<(usize, bool)> = None;
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let (Some(point), Some(sep)) = (f.get(4), f.iter().position(|x| *x == "-")) else {
            continue;
        };
        if !dir.starts_with(point) {
            continue;
        }
        let super_opts = f.get(sep + 3).copied().unwrap_or("");
        let quota = super_opts
            .split(',')
            .any(|o| matches!(o, "prjquota" | "pquota"));
        if best.is_none_or(|(len, _)| point.len() >= len) {
            best = Some((point.len(), quota));
        }
    }
    best.map(|(_, q)| q)
}

/// Maps an engine error to a runtime error with what was being done.
pub(crate) fn api_err(
    ctx: impl Into<String>,
) -> impl FnOnce(bollard::errors::Error) -> RuntimeError {
    let context = ctx.into();
    move |e| RuntimeError::Backend {
        context,
        message: e.to_string(),
    }
}

/// The HTTP status of an engine error, if it is one.
pub(crate) fn status_of(e: &bollard::errors::Error) -> Option<u16> {
    match e {
        bollard::errors::Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// The agent's config as the JSON it reads.
pub(crate) fn agent_config_json(cfg: &AgentConfig) -> Result<String, RuntimeError> {
    serde_json::to_string(cfg).map_err(|e| RuntimeError::Agent(format!("encoding its config: {e}")))
}

/// Where the engine is.
#[derive(Debug, PartialEq)]
enum Engine {
    /// A local engine's unix socket: it shares this host's filesystem.
    Unix(String),
    /// A remote engine over plain HTTP (`tcp://host:port`): nothing of
    /// this host's filesystem is shared.
    Tcp(String),
}

/// Checks an engine address (`docker.host`) without connecting.
pub fn check_engine_address(host: &str) -> Result<(), String> {
    engine_address(Some(host)).map(|_| ()).map_err(|e| match e {
        RuntimeError::HostNotReady(m) => m,
        other => other.to_string(),
    })
}

/// The engine address to use.
fn engine_address(host: Option<&str>) -> Result<Engine, RuntimeError> {
    let env = std::env::var("DOCKER_HOST").ok().filter(|v| !v.is_empty());
    let host = host
        .map(str::to_string)
        .or(env)
        .unwrap_or_else(|| "unix:///var/run/docker.sock".into());
    if let Some(path) = host.strip_prefix("unix://") {
        if path.starts_with('/') {
            return Ok(Engine::Unix(path.to_string()));
        }
    }
    for scheme in ["tcp://", "http://"] {
        if let Some(addr) = host.strip_prefix(scheme) {
            let addr = addr.trim_end_matches('/');
            if !addr.is_empty() && !addr.contains('/') {
                return Ok(Engine::Tcp(addr.to_string()));
            }
        }
    }
    Err(RuntimeError::HostNotReady(format!(
        "docker engine {host:?}: use unix:///path for a local engine or tcp://host:port for a \
         remote one (TLS and ssh engines are not supported yet: reach them through an ssh \
         tunnel to a local port)"
    )))
}

/// Whether the processes of the engine behind `socket` are visible in this
/// process's pid namespace (the peer's pid as the kernel reports it to us:
/// 0 when it lives in a pid namespace we cannot see). Container PID 1s are
/// then ours to open by pid.
fn engine_pids_visible(socket: &str) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(conn) = std::os::unix::net::UnixStream::connect(socket) else {
        return false;
    };
    // libc, not rustix: the kernel reports pid 0 for a peer in a pid
    // namespace we cannot see, which rustix's `UCred` (a non-zero `Pid`)
    // cannot hold.
    // SAFETY: a zeroed ucred is a valid out buffer.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt on our connected socket with a buffer of `len`.
    let r = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut cred as *mut libc::ucred as *mut libc::c_void,
            &mut len,
        )
    };
    r == 0 && cred.pid > 0 && Path::new(&format!("/proc/{}", cred.pid)).exists()
}

/// A container's `StartedAt` (RFC 3339 with nanoseconds) as a non-zero
/// number: what identifies one start of a container on a remote engine.
fn started_at_token(started_at: &str) -> u64 {
    use sha2::Digest;
    let d = sha2::Sha256::digest(started_at.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    // Stored as a signed SQLite integer by the engine: keep it positive.
    (u64::from_le_bytes(b) >> 1).max(1)
}

/// The name of a workspace's volume (also an ephemeral session's, by its
/// session id).
pub fn volume_name(id: &str) -> String {
    format!("sandkasten-ws-{id}")
}

/// The name of a session's container.
pub fn container_name(id: &str) -> String {
    format!("sandkasten-{id}")
}

/// The image repository hibernated sandboxes are committed to (tag: the
/// session id); never listed as an image.
pub const HIBERNATED_REPO: &str = "sandkasten-hibernated";

/// The image session `id`'s hibernated container was committed to.
pub fn hibernated_image(id: &str) -> String {
    format!("{HIBERNATED_REPO}:{id}")
}

/// Removes image reference `img` (only the tag while another one holds
/// the image); a missing one is fine.
pub(crate) async fn remove_image(docker: &Docker, img: &str) -> Result<(), RuntimeError> {
    match docker
        .remove_image(
            img,
            None::<bollard::query_parameters::RemoveImageOptions>,
            None,
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if status_of(&e) == Some(404) => Ok(()),
        Err(e) => Err(api_err(format!("removing image {img}"))(e)),
    }
}

/// A named volume mounted at `target` (never copying image content in).
pub(crate) fn volume_mount(volume: &str, target: &str, read_only: bool) -> Mount {
    Mount {
        target: Some(target.into()),
        source: Some(volume.into()),
        typ: Some(MountType::VOLUME),
        read_only: Some(read_only),
        volume_options: Some(MountVolumeOptions {
            no_copy: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Whether workspace `id`'s volume exists.
pub(crate) async fn volume_exists(docker: &Docker, id: &str) -> Result<bool, RuntimeError> {
    match docker.inspect_volume(&volume_name(id)).await {
        Ok(_) => Ok(true),
        Err(e) if status_of(&e) == Some(404) => Ok(false),
        Err(e) => Err(api_err(format!("inspecting volume {}", volume_name(id)))(e)),
    }
}

/// The host mount point of workspace `id`'s volume (a local engine's);
/// `None` when the volume does not exist.
pub(crate) async fn volume_root(
    docker: &Docker,
    id: &str,
) -> Result<Option<PathBuf>, RuntimeError> {
    match docker.inspect_volume(&volume_name(id)).await {
        Ok(v) if v.mountpoint.is_empty() => Err(RuntimeError::Unsupported(
            format!("host access to volume driver {}", v.driver),
            "docker",
        )),
        Ok(v) => Ok(Some(PathBuf::from(v.mountpoint))),
        Err(e) if status_of(&e) == Some(404) => Ok(None),
        Err(e) => Err(api_err(format!("inspecting volume {}", volume_name(id)))(e)),
    }
}

impl DockerRuntime {
    /// Connects to the engine (negotiating the API version down to the
    /// engine's), prepares the data dir and picks the transport.
    pub async fn new(cfg: DockerConfig) -> Result<DockerRuntime, RuntimeError> {
        let engine = engine_address(cfg.host.as_deref())?;
        let local = matches!(engine, Engine::Unix(_));
        // This host's accounts; a remote engine's host is out of sight
        // (said at start below), its operator picks ids free there too.
        let user = cfg.sandbox_user;
        blocking("checking the sandbox user's ids", move || {
            check_sandbox_user(user).map_err(RuntimeError::HostNotReady)
        })
        .await?;
        if local && !rustix::process::geteuid().is_root() {
            return Err(RuntimeError::HostNotReady(
                "the docker runtime on a local engine needs root (it owns the session \
                 sockets and gives workspace volumes to the sandbox user)"
                    .into(),
            ));
        }
        let (docker, socket) = match &engine {
            Engine::Unix(socket) => {
                if !Path::new(socket).exists() {
                    return Err(RuntimeError::HostNotReady(format!(
                        "no Docker engine at {socket}: start dockerd (apt-get install \
                         docker.io), or set docker.host"
                    )));
                }
                (
                    Docker::connect_with_unix(socket, 600, bollard::API_DEFAULT_VERSION),
                    socket.clone(),
                )
            }
            Engine::Tcp(addr) => (
                Docker::connect_with_http(
                    &format!("http://{addr}"),
                    600,
                    bollard::API_DEFAULT_VERSION,
                ),
                format!("tcp://{addr}"),
            ),
        };
        let docker = docker
            .map_err(api_err(format!(
                "connecting to the Docker engine at {socket}"
            )))?
            .negotiate_version()
            .await
            .map_err(|e| {
                RuntimeError::HostNotReady(format!(
                    "the Docker engine at {socket} does not answer ({e}); is dockerd running?"
                ))
            })?;
        let info = docker
            .info()
            .await
            .map_err(api_err("reading the engine's info"))?;
        if local
            && info
                .security_options
                .iter()
                .flatten()
                .any(|o| o.contains("name=userns"))
        {
            return Err(RuntimeError::HostNotReady(
                "the Docker engine remaps user namespaces (userns-remap); the docker runtime \
                 needs root in a container to be root on the host for its run directory"
                    .into(),
            ));
        }
        if let Some(rt) = &cfg.oci_runtime {
            let known = info
                .runtimes
                .as_ref()
                .is_some_and(|m| m.contains_key(rt.as_str()));
            if !known {
                return Err(RuntimeError::HostNotReady(format!(
                    "docker.runtime: the engine has no OCI runtime {rt:?} (configure it in \
                     /etc/docker/daemon.json \"runtimes\")"
                )));
            }
        }
        let runs = cfg.data_dir.join("docker");
        let kept = cfg.data_dir.join("docker-kept");
        let data_dir = cfg.data_dir.clone();
        let dirs = (runs.clone(), kept);
        blocking("preparing the data dir", move || {
            let (runs, kept) = dirs;
            std::fs::create_dir_all(&data_dir).map_err(RuntimeError::io_ctx(format!(
                "creating {}",
                data_dir.display()
            )))?;
            hostfs::private_dir(&runs)
                .map_err(RuntimeError::io_ctx(format!("creating {}", runs.display())))?;
            hostfs::private_dir(&kept)
                .map_err(RuntimeError::io_ctx(format!("creating {}", kept.display())))?;
            snapshot::remove_partial(&data_dir)
        })
        .await?;
        let oci = cfg
            .oci_runtime
            .clone()
            .or(info.default_runtime.clone())
            .unwrap_or_else(|| "runc".into());
        let gvisor = is_gvisor(
            &oci,
            info.runtimes
                .as_ref()
                .and_then(|m| m.get(oci.as_str()))
                .and_then(|r| r.path.as_deref()),
        );
        // gVisor (or a VM runtime) keeps its own view of files: a socket the
        // agent binds on a bind mount is not one the host can connect to.
        // Such sandboxes are reached as on a remote engine.
        // Late binding (and the resolver's refusal inside a container)
        // enters a container's namespaces through its PID 1: that needs
        // runc (gVisor or a VM keeps its own mounts) and the engine's pids
        // in our pid namespace.
        let late_bind = if local && oci == "runc" {
            let probe = socket.clone();
            blocking("probing the engine's pids", move || {
                Ok(engine_pids_visible(&probe))
            })
            .await?
        } else {
            false
        };
        let transport: Box<dyn Transport> = if local && oci == "runc" {
            Box::new(local::LocalTransport::new(
                docker.clone(),
                cfg.agent_binary.clone(),
                runs,
                late_bind,
                cfg.sandbox_user,
            ))
        } else {
            let binary = cfg.agent_binary.clone();
            let agent = blocking("reading the agent binary", move || {
                remote::RemoteAgent::load(&binary)
            })
            .await?;
            Box::new(remote::RemoteTransport::new(
                docker.clone(),
                cfg.data_dir.display().to_string(),
                agent,
                cfg.sandbox_user,
            ))
        };
        tracing::info!(
            engine = %socket,
            api = %docker.client_version(),
            oci_runtime = %oci,
            gvisor,
            late_bind = transport.can_bind_workspace(),
            remote = transport.is_remote(),
            sandbox_uid = cfg.sandbox_user.uid,
            sandbox_gid = cfg.sandbox_user.gid,
            "docker runtime ready"
        );
        if !local {
            tracing::warn!(
                sandbox_uid = cfg.sandbox_user.uid,
                "the remote engine's host accounts cannot be checked from here: make sure no \
                 account there has docker.sandbox_uid/sandbox_gid"
            );
        }
        let driver = info.driver.clone().unwrap_or_default();
        let backing = info.driver_status.iter().flatten().find_map(|kv| {
            (kv.first().map(String::as_str) == Some("Backing Filesystem"))
                .then(|| kv.get(1).cloned())
                .flatten()
        });
        let pquota = match (local, &info.docker_root_dir) {
            (true, Some(root)) => mounted_with_pquota(Path::new(root)),
            _ => None,
        };
        let storage_size = driver_limits_size(&driver, backing.as_deref(), pquota);
        if !storage_size {
            tracing::warn!(
                driver = %driver,
                backing_fs = backing.as_deref().unwrap_or("unknown"),
                "sandbox disk limits are not enforced on the root filesystem: the engine's \
                 storage driver takes no size (btrfs, zfs, or overlay2 on xfs with pquota do); \
                 /tmp is a tmpfs of at most the limit"
            );
        }
        // The policy is enforced in this host's kernel, on the bridge the
        // containers' traffic passes: only a local engine's containers
        // under runc have their network there.
        let (net, no_net) = match &cfg.network {
            None => (
                None,
                Some("network mode full (the daemon runs without a sandbox network)".to_string()),
            ),
            Some(_) if !local => (
                None,
                Some(
                    "network mode full on a remote engine (its containers' traffic never \
                     passes this host's kernel, where network.deny_always and policies are \
                     enforced)"
                        .to_string(),
                ),
            ),
            Some(_) if oci != "runc" => (
                None,
                Some(format!(
                    "network mode full under OCI runtime {oci} (its sandboxes keep their own \
                     network stack and files: the daemon's rules, resolver and DNS guard are \
                     not theirs; Debian's runsc runs here with --network=none)"
                )),
            ),
            Some(_) if !late_bind => (
                None,
                Some(
                    "network mode full when the engine's processes are in another pid \
                     namespace than the daemon's (a sandbox's link is made in its container's \
                     network namespace, reached through its init)"
                        .to_string(),
                ),
            ),
            Some(n) => (
                Some(net::Datapath::start(&docker, n, &cfg.data_dir).await?),
                None,
            ),
        };
        let rt = DockerRuntime {
            cfg,
            docker,
            transport,
            storage_size,
            gvisor,
            paused: Default::default(),
            net,
            no_net,
        };
        rt.remove_leftover_helpers().await?;
        Ok(rt)
    }

    /// Removes helper containers a crash left behind (ours by data dir).
    async fn remove_leftover_helpers(&self) -> Result<(), RuntimeError> {
        let found = self
            .ours(vec![format!("{}=true", remote::LABEL_HELPER)])
            .await?;
        for c in found {
            if let Some(id) = c.id {
                let opts = RemoveContainerOptionsBuilder::default()
                    .force(true)
                    .v(true)
                    .build();
                if let Err(e) = self.docker.remove_container(&id, Some(opts)).await {
                    tracing::warn!(container = %id, "removing a leftover helper: {e}");
                }
            }
        }
        Ok(())
    }

    /// This daemon's containers (labelled with its data dir), running or
    /// not, that also carry `labels` (`key=value`).
    async fn ours(
        &self,
        mut labels: Vec<String>,
    ) -> Result<Vec<bollard::models::ContainerSummary>, RuntimeError> {
        labels.push(format!("{LABEL_DATA_DIR}={}", self.data_dir_label()));
        let filters = HashMap::from([("label", labels)]);
        let opts = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        self.docker
            .list_containers(Some(opts))
            .await
            .map_err(api_err("listing containers"))
    }

    /// At a graceful stop: removes the sandbox network's table and
    /// Docker rules when no sandbox has a link (`false`: kept).
    pub async fn release_network(&self) -> Result<bool, RuntimeError> {
        match &self.net {
            Some(n) => n.release().await,
            None => Ok(false),
        }
    }

    /// The name of the sandbox network's table and its veths' prefix,
    /// where there is one (for tests).
    pub fn network_names(&self) -> Option<(String, String)> {
        self.net.as_ref().map(|n| n.names())
    }

    /// Whether the engine's files are not the daemon's (a remote engine, or
    /// an OCI runtime served like one).
    pub fn is_remote(&self) -> bool {
        self.transport.is_remote()
    }

    /// The engine client (for tests and tools).
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// The host directory bound at `/.sandkasten/run` of session `id`.
    pub fn run_dir(&self, id: &str) -> PathBuf {
        self.cfg.data_dir.join("docker").join(id)
    }

    fn data_dir_label(&self) -> String {
        self.cfg.data_dir.display().to_string()
    }

    /// Removes session `id`'s run directory (a missing one is fine).
    async fn remove_run_dir(&self, id: &str) -> Result<(), RuntimeError> {
        let run = self.run_dir(id);
        let what = format!("removing {}", run.display());
        blocking("removing a run directory", move || {
            hostfs::remove_run_dir(&run).map_err(RuntimeError::io_ctx(what))
        })
        .await
    }

    /// The record that the ephemeral volume of session `id` became the
    /// persistent workspace `id` (see the module docs).
    fn kept_marker(&self, id: &str) -> PathBuf {
        self.cfg.data_dir.join("docker-kept").join(id)
    }

    /// Creates (or finds) a volume and lets the transport give its root to
    /// the sandbox user; returns its mount point and its labels (an
    /// existing volume's own, which may differ from `labels`).
    async fn ensure_volume(
        &self,
        name: &str,
        labels: HashMap<String, String>,
    ) -> Result<(PathBuf, HashMap<String, String>), RuntimeError> {
        let v = self
            .docker
            .create_volume(VolumeCreateRequest {
                name: Some(name.to_string()),
                driver: Some("local".into()),
                labels: Some(labels),
                ..Default::default()
            })
            .await
            .map_err(api_err(format!("creating volume {name}")))?;
        let root = self
            .transport
            .adopt_volume(name, &v.mountpoint, &v.driver)
            .await?;
        Ok((root, v.labels))
    }

    /// Creates workspace `id`'s volume unless it exists; returns its mount
    /// point. A volume that is the ephemeral volume of session `id` is
    /// recorded as kept (its labels cannot change).
    async fn ensure_workspace_volume(&self, id: &str) -> Result<PathBuf, RuntimeError> {
        let labels = HashMap::from([
            (LABEL_WORKSPACE.to_string(), "true".to_string()),
            (LABEL_WORKSPACE_ID.to_string(), id.to_string()),
            (LABEL_DATA_DIR.to_string(), self.data_dir_label()),
        ]);
        let (root, found) = self.ensure_volume(&volume_name(id), labels).await?;
        if found.get(LABEL_SESSION).map(String::as_str) == Some(id) {
            let marker = self.kept_marker(id);
            let what = format!(
                "recording that volume {} is workspace {id}",
                volume_name(id)
            );
            blocking("recording a kept volume", move || {
                if !marker.exists() {
                    std::fs::write(&marker, b"").map_err(RuntimeError::io_ctx(what))?;
                }
                Ok(())
            })
            .await?;
        }
        Ok(root)
    }
}

#[async_trait]
impl Runtime for DockerRuntime {
    fn name(&self) -> &'static str {
        "docker"
    }

    async fn create(&self, spec: SandboxSpec) -> Result<Sandbox, RuntimeError> {
        match self.start(&spec).await {
            Ok(sandbox) => Ok(sandbox),
            Err(e) => {
                let handle = SandboxHandle::unproven(spec.id.clone());
                if let Err(ce) = self.destroy(&handle).await {
                    tracing::warn!(session = %handle.id, "cleanup after failed create: {ce}");
                }
                Err(e)
            }
        }
    }

    async fn attach(&self, handle: &SandboxHandle) -> Result<Sandbox, RuntimeError> {
        let now = self.handle_of(&handle.id).await?;
        // A container restarted since (another PID 1) lost its shell: it is
        // not the sandbox the handle describes.
        let same_pid = handle.pid == 0 || handle.pid == now.pid;
        let same_start =
            handle.start_time == 0 || now.start_time == 0 || handle.start_time == now.start_time;
        if !(same_pid && same_start) {
            return Err(RuntimeError::Gone(handle.id.clone()));
        }
        // A local socket that does not answer means the agent is gone; a
        // remote engine may only be out of reach (the caller can retry).
        let agent = self
            .transport
            .connect(&handle.id)
            .await
            .map_err(|e| match e {
                RuntimeError::Gone(_) => e,
                _ if !self.transport.unreachable_agent_is_gone() => e,
                _ => RuntimeError::Gone(handle.id.clone()),
            })?;
        Ok(Sandbox {
            handle: now,
            agent,
            phases_us: Vec::new(),
        })
    }

    async fn destroy(&self, handle: &SandboxHandle) -> Result<(), RuntimeError> {
        let id = &handle.id;
        let name = container_name(id);
        // Its link, elements and address slot first.
        if let Some(n) = &self.net {
            n.forget(id, true).await?;
        }
        // Force: SIGKILL to PID 1 (the pid namespace ends with it), then
        // removal. Anonymous volumes (an image's VOLUME lines) go with it.
        let opts = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        if self.paused.lock().unwrap().remove(id) {
            // A paused container's processes do not die until thawed.
            let _ = self.docker.unpause_container(&name).await;
        }
        match self.docker.remove_container(&name, Some(opts)).await {
            Ok(()) => {}
            Err(e) if status_of(&e) == Some(404) => {}
            Err(e) => return Err(api_err(format!("removing container {name}"))(e)),
        }
        self.transport.disconnect(id);
        // The ephemeral volume carries its session's id; a persistent
        // workspace's volume never does, so it is never removed here, nor
        // is an ephemeral one that became a workspace of the same name.
        let vol = volume_name(id);
        let kept = tokio::fs::try_exists(self.kept_marker(id))
            .await
            .unwrap_or(false);
        match self.docker.inspect_volume(&vol).await {
            Ok(v) if v.labels.get(LABEL_SESSION) == Some(id) && !kept => {
                match self
                    .docker
                    .remove_volume(&vol, None::<bollard::query_parameters::RemoveVolumeOptions>)
                    .await
                {
                    Ok(()) => {}
                    Err(e) if status_of(&e) == Some(404) => {}
                    Err(e) => return Err(api_err(format!("removing volume {vol}"))(e)),
                }
            }
            Ok(_) => {}
            Err(e) if status_of(&e) == Some(404) => {}
            Err(e) => return Err(api_err(format!("inspecting volume {vol}"))(e)),
        }
        // A session hibernated at least once: the image its container was
        // committed to.
        remove_image(&self.docker, &hibernated_image(id)).await?;
        self.remove_run_dir(id).await
    }

    /// Commits the container (its root filesystem changes; `/tmp`, a
    /// tmpfs, was saved into it by the engine) to
    /// [`hibernated_image`], then removes it; its workspace volume stays.
    /// A wake creates a container from that image. Anonymous volumes (an
    /// image's `VOLUME` lines) are not kept.
    async fn hibernate(&self, handle: &SandboxHandle) -> Result<(), RuntimeError> {
        let id = &handle.id;
        let name = container_name(id);
        if self.paused.lock().unwrap().remove(id) {
            let _ = self.docker.unpause_container(&name).await;
        }
        let opts = bollard::query_parameters::CommitContainerOptionsBuilder::default()
            .container(&name)
            .repo(HIBERNATED_REPO)
            .tag(id)
            .pause(true)
            .build();
        match self
            .docker
            .commit_container(opts, bollard::models::ContainerConfig::default())
            .await
        {
            Ok(_) => {}
            // Gone already (a retry after a crash): its image stays.
            Err(e) if status_of(&e) == Some(404) => {}
            Err(e) => return Err(api_err(format!("committing container {name}"))(e)),
        }
        if let Some(n) = &self.net {
            n.forget(id, false).await?;
        }
        let opts = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match self.docker.remove_container(&name, Some(opts)).await {
            Ok(()) => {}
            Err(e) if status_of(&e) == Some(404) => {}
            Err(e) => return Err(api_err(format!("removing container {name}"))(e)),
        }
        self.transport.disconnect(id);
        self.remove_run_dir(id).await
    }

    /// See `snapshot.rs`: a commit of the frozen container plus copies of
    /// its `/workspace` and `/tmp`.
    async fn snapshot_sandbox(
        &self,
        handle: &SandboxHandle,
        snap: &str,
    ) -> Result<(), RuntimeError> {
        self.take_snapshot(handle, snap).await
    }

    async fn delete_sandbox_snapshot(&self, snap: &str) -> Result<(), RuntimeError> {
        self.remove_snapshot(snap).await
    }

    fn can_snapshot_sandbox(&self) -> bool {
        self.snapshots_supported()
    }

    fn can_hibernate(&self) -> bool {
        // gVisor keeps a container's root filesystem changes in its own
        // overlay (memory-backed), which a commit does not see.
        !self.gvisor
    }

    async fn pause(&self, handle: &SandboxHandle) -> Result<(), RuntimeError> {
        let name = container_name(&handle.id);
        match self.docker.pause_container(&name).await {
            Ok(()) => {}
            Err(e) if status_of(&e) == Some(404) => {
                return Err(RuntimeError::Gone(handle.id.clone()))
            }
            Err(e) => return Err(api_err(format!("pausing {name}"))(e)),
        }
        self.paused.lock().unwrap().insert(handle.id.clone());
        Ok(())
    }

    async fn resume(&self, handle: &SandboxHandle) -> Result<(), RuntimeError> {
        let name = container_name(&handle.id);
        match self.docker.unpause_container(&name).await {
            Ok(()) => {}
            Err(e) if status_of(&e) == Some(404) => {
                return Err(RuntimeError::Gone(handle.id.clone()))
            }
            // Not paused (a pause the daemon's restart forgot): running.
            Err(e) if status_of(&e) == Some(409) => {}
            Err(e) => return Err(api_err(format!("resuming {name}"))(e)),
        }
        self.paused.lock().unwrap().remove(&handle.id);
        Ok(())
    }

    async fn stats(&self, handle: &SandboxHandle) -> Result<SandboxStats, RuntimeError> {
        let opts = StatsOptionsBuilder::default()
            .stream(false)
            .one_shot(true)
            .build();
        let name = container_name(&handle.id);
        let s = match self.docker.stats(&name, Some(opts)).next().await {
            Some(Ok(s)) => s,
            Some(Err(e)) if status_of(&e) == Some(404) => {
                return Err(RuntimeError::Gone(handle.id.clone()))
            }
            Some(Err(e)) => return Err(api_err(format!("reading stats of {name}"))(e)),
            None => return Err(RuntimeError::Gone(handle.id.clone())),
        };
        let mem = s.memory_stats.unwrap_or_default();
        Ok(SandboxStats {
            memory_bytes: mem.usage.unwrap_or(0),
            memory_limit: mem.limit.unwrap_or(0),
            cpu_usage_usec: s
                .cpu_stats
                .and_then(|c| c.cpu_usage)
                .and_then(|u| u.total_usage)
                .unwrap_or(0)
                / 1000,
            pids: s.pids_stats.and_then(|p| p.current).unwrap_or(0),
        })
    }

    async fn list_images(&self) -> Result<Vec<ImageInfo>, RuntimeError> {
        images::list(&self.docker).await
    }

    async fn import_image(&self, name: &str, archive: PathBuf) -> Result<ImageInfo, RuntimeError> {
        images::import(&self.docker, name, &archive).await
    }

    async fn remove_image(&self, name: &str) -> Result<(), RuntimeError> {
        images::remove(&self.docker, name).await
    }

    async fn list_sandboxes(&self) -> Result<Vec<String>, RuntimeError> {
        let containers = self.ours(vec![]).await?;
        let mut out: Vec<String> = containers
            .into_iter()
            .filter_map(|c| c.labels?.get(LABEL_SESSION).cloned())
            .collect();
        // Run directories without a container are leftovers too.
        let runs = self.cfg.data_dir.join("docker");
        let found = blocking("listing run directories", move || {
            let mut names = Vec::new();
            let entries = std::fs::read_dir(&runs)
                .map_err(RuntimeError::io_ctx(format!("listing {}", runs.display())))?;
            for e in entries {
                let e = e.map_err(RuntimeError::io_ctx("listing run directories"))?;
                if let Some(name) = e.file_name().to_str() {
                    names.push(name.to_string());
                }
            }
            Ok(names)
        })
        .await?;
        for name in found {
            if !out.contains(&name) {
                out.push(name);
            }
        }
        Ok(out)
    }

    async fn ensure_workspace(
        &self,
        id: &str,
        quota_bytes: Option<u64>,
    ) -> Result<(), RuntimeError> {
        if quota_bytes.is_some() {
            // The local volume driver has no size limit.
            return Err(RuntimeError::Unsupported(
                "workspace quotas".into(),
                "docker",
            ));
        }
        self.ensure_workspace_volume(id).await.map(|_| ())
    }

    /// The engine refuses this while a session uses the workspace: a
    /// late-bound volume is not referenced by its container, so the
    /// engine's own 409 covers only containers created with it.
    async fn delete_workspace(&self, id: &str) -> Result<(), RuntimeError> {
        let _no_helper = self.transport.hold_for_removal(id).await;
        let name = volume_name(id);
        match self
            .docker
            .remove_volume(&name, Some(RemoveVolumeOptionsBuilder::default().build()))
            .await
        {
            Ok(()) => {}
            Err(e) if status_of(&e) == Some(404) => {}
            Err(e) if status_of(&e) == Some(409) => {
                return Err(RuntimeError::Busy(format!(
                    "workspace {id} is still mounted by a container"
                )))
            }
            Err(e) => return Err(api_err(format!("removing volume {name}"))(e)),
        }
        match tokio::fs::remove_file(self.kept_marker(id)).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(RuntimeError::io(format!("forgetting workspace {id}"), e))
            }
            _ => Ok(()),
        }
    }

    async fn workspace_size(&self, id: &str) -> Result<Option<u64>, RuntimeError> {
        self.transport.workspace_size(id).await
    }

    async fn snapshot_workspace(&self, _id: &str, _snap: &str) -> Result<(), RuntimeError> {
        Err(RuntimeError::Unsupported(
            "workspace snapshots".into(),
            "docker",
        ))
    }

    async fn delete_snapshot(&self, _id: &str, _snap: &str) -> Result<(), RuntimeError> {
        Err(RuntimeError::Unsupported(
            "workspace snapshots".into(),
            "docker",
        ))
    }

    async fn restore_snapshot(&self, _id: &str, _snap: &str) -> Result<(), RuntimeError> {
        Err(RuntimeError::Unsupported(
            "workspace snapshots".into(),
            "docker",
        ))
    }

    async fn workspace_file(&self, id: &str, op: FileOp) -> Result<FileReply, RuntimeError> {
        self.transport.workspace_file(id, op).await
    }

    async fn workspace_read(
        &self,
        id: &str,
        path: String,
        max_bytes: Option<u64>,
    ) -> Result<FileStream, RuntimeError> {
        self.transport.workspace_read(id, path, max_bytes).await
    }

    async fn export_workspace(&self, id: &str) -> Result<ExportStream, RuntimeError> {
        self.transport.export_workspace(id).await
    }

    fn can_bind_workspace(&self) -> bool {
        self.transport.can_bind_workspace()
    }

    async fn connect_port(
        &self,
        handle: &SandboxHandle,
        port: u16,
    ) -> Result<PortStream, RuntimeError> {
        self.transport.connect_port(handle, port).await
    }

    async fn bind_workspace(&self, handle: &SandboxHandle, id: &str) -> Result<(), RuntimeError> {
        if !self.transport.can_bind_workspace() {
            return Err(RuntimeError::Unsupported(
                "mounting a workspace into a running container (needs runc and the \
                 engine's processes in the daemon's pid namespace)"
                    .into(),
                "docker",
            ));
        }
        let root = self.ensure_workspace_volume(id).await?;
        self.transport.bind_workspace(handle, id, &root).await
    }

    fn scratch_dir(&self) -> PathBuf {
        self.cfg.data_dir.join("tmp")
    }

    fn network_policies(&self) -> bool {
        self.net.is_some()
    }

    fn network_unsupported(&self) -> Option<String> {
        self.no_net.clone()
    }

    async fn set_network(
        &self,
        handle: &SandboxHandle,
        policy: &sandkasten_runtime::NetworkPolicy,
    ) -> Result<(), RuntimeError> {
        match &self.net {
            Some(n) => n.apply(handle, policy).await,
            None => Err(RuntimeError::Unsupported(
                self.no_net.clone().unwrap_or_default(),
                "docker",
            )),
        }
    }

    fn network_events(&self, id: &str) -> Vec<sandkasten_runtime::NetworkDenial> {
        self.net.as_ref().map(|n| n.events(id)).unwrap_or_default()
    }

    fn network_denials_total(&self) -> u64 {
        self.net.as_ref().map_or(0, |n| n.denials_total())
    }

    fn disk_limit_enforced(&self) -> bool {
        self.storage_size
    }

    fn sandbox_ids(&self) -> (u32, u32) {
        (self.cfg.sandbox_user.uid, self.cfg.sandbox_user.gid)
    }

    async fn check_room(&self) -> Result<(), RuntimeError> {
        let dir = self.cfg.data_dir.clone();
        let min = self.cfg.min_free_mb << 20;
        blocking("checking free space", move || {
            let st = rustix::fs::statvfs(&dir)
                .map_err(|e| RuntimeError::io("statvfs of the data dir", e.into()))?;
            let free = st.f_bavail.saturating_mul(st.f_frsize);
            if free < min {
                return Err(RuntimeError::StorageFull(format!(
                    "the data dir's filesystem ({}) has {} MiB free, less than the {} MiB a new \
                     sandbox needs (disk.min_free_mb); existing sessions keep working",
                    dir.display(),
                    free >> 20,
                    min >> 20
                )));
            }
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gvisor_is_known_by_its_binary_and_keeps_the_pids_limit_inside() {
        assert!(is_gvisor("runsc", Some("/usr/bin/runsc")));
        assert!(is_gvisor("gvisor", Some("/opt/gvisor/runsc")));
        assert!(is_gvisor("runsc", None));
        assert!(!is_gvisor("runc", Some("runc")));
        assert!(!is_gvisor("runsc-like", Some("/usr/bin/kata-runtime")));
        assert_eq!(host_pids_limit(64, false), 64);
        assert_eq!(host_pids_limit(64, true), 512 + 16 * 64);
    }

    #[test]
    fn only_drivers_with_size_options_enforce_disk_limits() {
        assert!(driver_limits_size("btrfs", Some("btrfs"), None));
        assert!(driver_limits_size("zfs", None, None));
        assert!(driver_limits_size("overlay2", Some("xfs"), Some(true)));
        assert!(!driver_limits_size("overlay2", Some("xfs"), Some(false)));
        assert!(!driver_limits_size("overlay2", Some("xfs"), None));
        assert!(!driver_limits_size("overlay2", Some("extfs"), None));
        assert!(!driver_limits_size("vfs", None, None));
        // The root filesystem here is a real mount with some options.
        assert!(mounted_with_pquota(Path::new("/")).is_some());
    }

    #[test]
    fn engines_are_local_sockets_or_plain_tcp() {
        assert_eq!(
            engine_address(Some("unix:///run/docker.sock")).unwrap(),
            Engine::Unix("/run/docker.sock".into())
        );
        assert_eq!(
            engine_address(Some("tcp://10.0.0.1:2375")).unwrap(),
            Engine::Tcp("10.0.0.1:2375".into())
        );
        assert_eq!(
            engine_address(Some("http://host:2375/")).unwrap(),
            Engine::Tcp("host:2375".into())
        );
        for bad in [
            "ssh://host",
            "https://h:2376",
            "unix://relative",
            "/x",
            "tcp://",
        ] {
            let e = engine_address(Some(bad)).unwrap_err().to_string();
            assert!(
                e.contains("unix:///path") && e.contains("tcp://"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn names_follow_the_seed() {
        assert_eq!(volume_name("user1-proj"), "sandkasten-ws-user1-proj");
        assert_eq!(container_name("abc"), "sandkasten-abc");
    }
}
