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
//! agent needs to start the shell as the sandbox user, uid 1000, and to do
//! file operations with its identity), no-new-privileges is set, and the
//! agent stacks the native runtime's seccomp filter on the engine's
//! profile. The shell runs as uid 1000 with no capabilities.
//!
//! A local engine (a unix socket) sees the same filesystem as the daemon:
//! the agent binary, the run directories and the volumes' mount points are
//! host paths. An engine with user namespace remapping is refused there
//! (root in the container would not own the run directory). A `tcp://`
//! engine shares nothing with us (`remote.rs`): the agent is copied onto
//! it and reached through the exec API, and workspaces through helper
//! containers.
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
//! volume driver has no size limit), no snapshots, workspace export is a
//! live walk (not point-in-time), no workspace import yet; `network: full`
//! is the engine's default bridge.

mod export;
mod hostfs;
mod images;
mod remote;
mod watch;

use async_trait::async_trait;
use bollard::models::{
    ContainerCreateBody, HostConfig, Mount, MountBindOptions, MountType, RestartPolicy,
    RestartPolicyNameEnum, VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, RemoveVolumeOptionsBuilder, StatsOptionsBuilder,
};
use bollard::Docker;
use futures::StreamExt;
use sandkasten_protocol::AgentConfig;
use sandkasten_runtime::{
    latebind, AgentClient, ImageInfo, NetworkMode, Request, Response, Runtime, RuntimeError,
    Sandbox, SandboxHandle, SandboxSpec, SandboxStats, WorkspaceMount,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The uid (and gid) of the sandbox user inside every container.
pub const SANDBOX_UID: u32 = 1000;

/// Where the agent binary appears in a container of a local engine.
const AGENT_PATH: &str = "/.sandkasten/agent";
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

/// The longest a new container's agent may take to listen. Both outcomes
/// are events (the socket appears, or the container exits); this bound only
/// catches an agent that hangs.
const AGENT_START_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// Size of each sandbox's `/tmp` tmpfs.
    pub tmp_size_mb: u64,
}

pub struct DockerRuntime {
    cfg: DockerConfig,
    docker: Docker,
    /// Whether a workspace can be mounted into a running container (see
    /// the module docs).
    late_bind: bool,
    /// `Some` on a remote engine: the agent is copied onto it and reached
    /// through the exec API (see `remote.rs`).
    remote: Option<std::sync::Arc<remote::RemoteAgent>>,
    /// Per workspace volume: helper containers hold it shared, deletion
    /// exclusively. A helper mounting a volume that was just removed would
    /// make the engine create it again, empty; and the engine refuses to
    /// remove a volume a helper mounts.
    volume_locks: VolumeLocks,
    /// Relay connections by container (remote engines, gVisor).
    relays: remote::Relays,
}

#[derive(Default)]
struct VolumeLocks(std::sync::Mutex<HashMap<String, std::sync::Arc<tokio::sync::RwLock<()>>>>);

impl VolumeLocks {
    fn of(&self, id: &str) -> std::sync::Arc<tokio::sync::RwLock<()>> {
        let mut map = self.0.lock().unwrap();
        // Forget locks nobody holds or waits for.
        map.retain(|_, l| std::sync::Arc::strong_count(l) > 1);
        map.entry(id.to_string()).or_default().clone()
    }
}

/// Maps an engine error to a runtime error with what was being done.
pub(crate) fn api_err(
    ctx: impl Into<String>,
) -> impl FnOnce(bollard::errors::Error) -> RuntimeError {
    let ctx = ctx.into();
    move |e| RuntimeError::Other(format!("{ctx}: {e}"))
}

/// The HTTP status of an engine error, if it is one.
pub(crate) fn status_of(e: &bollard::errors::Error) -> Option<u16> {
    match e {
        bollard::errors::Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

fn io(ctx: impl Into<String>) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let ctx = ctx.into();
    move |e| RuntimeError::io(ctx, e)
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

/// A bind mount of a host path (not recursive).
fn bind_mount(source: &Path, target: &str, read_only: bool) -> Mount {
    Mount {
        target: Some(target.into()),
        source: Some(source.display().to_string()),
        typ: Some(MountType::BIND),
        read_only: Some(read_only),
        bind_options: Some(MountBindOptions {
            non_recursive: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    }
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

impl DockerRuntime {
    /// Connects to the engine (negotiating the API version down to the
    /// engine's) and prepares the data dir.
    pub async fn new(cfg: DockerConfig) -> Result<DockerRuntime, RuntimeError> {
        let engine = engine_address(cfg.host.as_deref())?;
        let local = matches!(engine, Engine::Unix(_));
        // SAFETY: geteuid has no preconditions.
        if local && unsafe { libc::geteuid() } != 0 {
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
        std::fs::create_dir_all(&cfg.data_dir)
            .map_err(io(format!("creating {}", cfg.data_dir.display())))?;
        hostfs::private_dir(&runs).map_err(io(format!("creating {}", runs.display())))?;
        let kept = cfg.data_dir.join("docker-kept");
        hostfs::private_dir(&kept).map_err(io(format!("creating {}", kept.display())))?;
        // Late binding enters a container's mount namespace through its
        // PID 1: that needs runc (gVisor or a VM keeps its own mounts) and
        // the engine's pids in our pid namespace.
        let oci = cfg
            .oci_runtime
            .clone()
            .or(info.default_runtime.clone())
            .unwrap_or_else(|| "runc".into());
        let late_bind = local && oci == "runc" && engine_pids_visible(&socket);
        // gVisor (or a VM runtime) keeps its own view of files: a socket the
        // agent binds on a bind mount is not one the host can connect to.
        // Such sandboxes are reached as on a remote engine.
        let remote = if local && oci == "runc" {
            None
        } else {
            Some(std::sync::Arc::new(remote::RemoteAgent::load(
                &cfg.agent_binary,
            )?))
        };
        tracing::info!(
            engine = %socket,
            api = %docker.client_version(),
            oci_runtime = %oci,
            late_bind,
            remote = remote.is_some(),
            "docker runtime ready"
        );
        let rt = DockerRuntime {
            cfg,
            docker,
            late_bind,
            remote,
            volume_locks: VolumeLocks::default(),
            relays: remote::Relays::default(),
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

    /// Whether the engine is remote (shares no filesystem with us).
    pub fn is_remote(&self) -> bool {
        self.remote.is_some()
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

    /// The record that the ephemeral volume of session `id` became the
    /// persistent workspace `id` (see the module docs).
    fn kept_marker(&self, id: &str) -> PathBuf {
        self.cfg.data_dir.join("docker-kept").join(id)
    }

    /// The shell's environment: our defaults, then the image's own (its
    /// PATH, LANG, tool variables), then the session's; the sandbox user's
    /// identity (HOME, USER, LOGNAME) is never taken from the image.
    fn shell_env(&self, image_env: &[String], extra: &[(String, String)]) -> Vec<(String, String)> {
        let mut env = sandkasten_runtime::default_shell_env();
        let set = |k: &str, v: &str, env: &mut Vec<(String, String)>| {
            env.retain(|(ek, _)| ek != k);
            env.push((k.to_string(), v.to_string()));
        };
        for kv in image_env {
            if let Some((k, v)) = kv.split_once('=') {
                if !matches!(k, "HOME" | "USER" | "LOGNAME" | "HOSTNAME") {
                    set(k, v, &mut env);
                }
            }
        }
        for (k, v) in [
            ("HOME", "/home/sandbox"),
            ("USER", "sandbox"),
            ("LOGNAME", "sandbox"),
        ] {
            set(k, v, &mut env);
        }
        for (k, v) in extra {
            set(k, v, &mut env);
        }
        env
    }

    /// Creates (or finds) a volume and gives its root to the sandbox user;
    /// returns its host mount point and its labels (an existing volume's
    /// own, which may differ from `labels`).
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
        let root = PathBuf::from(&v.mountpoint);
        if self.remote.is_some() {
            // Its mount point is the engine's; the agent gives the root to
            // the sandbox user when a container starts (`--own-workdir`).
            return Ok((root, v.labels));
        }
        if v.mountpoint.is_empty() {
            return Err(RuntimeError::HostNotReady(format!(
                "volume {name} has no mount point on this host (driver {})",
                v.driver
            )));
        }
        hostfs::own_volume_root(&root, SANDBOX_UID)
            .map_err(io(format!("giving volume {name} to the sandbox user")))?;
        Ok((root, v.labels))
    }

    /// Creates workspace `id`'s volume unless it exists; returns its host
    /// mount point. A volume that is the ephemeral volume of session `id`
    /// is recorded as kept (its labels cannot change).
    async fn ensure_workspace_volume(&self, id: &str) -> Result<PathBuf, RuntimeError> {
        let labels = HashMap::from([
            (LABEL_WORKSPACE.to_string(), "true".to_string()),
            (LABEL_WORKSPACE_ID.to_string(), id.to_string()),
            (LABEL_DATA_DIR.to_string(), self.data_dir_label()),
        ]);
        let (root, found) = self.ensure_volume(&volume_name(id), labels).await?;
        if found.get(LABEL_SESSION).map(String::as_str) == Some(id) {
            let marker = self.kept_marker(id);
            if !marker.exists() {
                std::fs::write(&marker, b"").map_err(io(format!(
                    "recording that volume {} is workspace {id}",
                    volume_name(id)
                )))?;
            }
        }
        Ok(root)
    }

    /// Whether workspace `id`'s volume exists.
    async fn volume_exists(&self, id: &str) -> Result<bool, RuntimeError> {
        match self.docker.inspect_volume(&volume_name(id)).await {
            Ok(_) => Ok(true),
            Err(e) if status_of(&e) == Some(404) => Ok(false),
            Err(e) => Err(api_err(format!("inspecting volume {}", volume_name(id)))(e)),
        }
    }

    /// The host mount point of workspace `id`'s volume; `None` when the
    /// volume does not exist.
    async fn workspace_root(&self, id: &str) -> Result<Option<PathBuf>, RuntimeError> {
        match self.docker.inspect_volume(&volume_name(id)).await {
            Ok(v) if v.mountpoint.is_empty() => Err(RuntimeError::Unsupported(
                format!("host access to volume driver {}", v.driver),
                "docker",
            )),
            Ok(v) => Ok(Some(PathBuf::from(v.mountpoint))),
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(api_err(format!("inspecting volume {}", volume_name(id)))(e)),
        }
    }

    /// Creates and starts the container; returns its handle, and on a
    /// remote engine the agent connection made to see it listen.
    async fn start(
        &self,
        spec: &SandboxSpec,
    ) -> Result<(SandboxHandle, Option<AgentClient>), RuntimeError> {
        if let Some(r) = &self.remote {
            r.ensure(&self.docker, &self.data_dir_label()).await?;
        }
        let image =
            self.docker
                .inspect_image(&spec.image)
                .await
                .map_err(|e| match status_of(&e) {
                    Some(404) => RuntimeError::ImageNotFound(spec.image.clone()),
                    // An invalid reference ("Base", "a b") is no image either.
                    Some(400) => RuntimeError::ImageNotFound(spec.image.clone()),
                    _ => api_err(format!("inspecting image {}", spec.image))(e),
                })?;
        let image_env = image.config.and_then(|c| c.env).unwrap_or_default();

        // The run dir first: it marks the session on disk, so a crash from
        // here on leaves an orphan that recovery lists and destroys. (On a
        // remote engine it is only that mark.)
        let run = self.run_dir(&spec.id);
        hostfs::private_dir(&run).map_err(io(format!("creating {}", run.display())))?;
        let (volume, workspace_label) = match &spec.workspace {
            WorkspaceMount::Persistent(ws) => {
                self.ensure_workspace_volume(ws).await?;
                (volume_name(ws), ws.clone())
            }
            WorkspaceMount::Ephemeral => {
                let name = volume_name(&spec.id);
                let labels = HashMap::from([
                    (LABEL_SESSION.to_string(), spec.id.clone()),
                    (LABEL_DATA_DIR.to_string(), self.data_dir_label()),
                ]);
                self.ensure_volume(&name, labels).await?;
                (name, String::new())
            }
        };

        let agent_cfg = AgentConfig {
            uid: Some(SANDBOX_UID),
            gid: Some(SANDBOX_UID),
            workdir: "/workspace".into(),
            env: self.shell_env(&image_env, &spec.env),
            home: "/home/sandbox".into(),
            files_root: None,
        };
        let json =
            serde_json::to_string(&agent_cfg).map_err(|e| RuntimeError::Other(e.to_string()))?;
        let watch = if self.remote.is_none() {
            std::fs::write(run.join("config.json"), &json)
                .map_err(io("writing the agent config"))?;
            // Set up before the container starts, so the socket's arrival
            // is never missed.
            Some(watch::DirWatch::new(&run).map_err(io("watching the run directory"))?)
        } else {
            None
        };

        let name = container_name(&spec.id);
        let labels = HashMap::from([
            (LABEL_SESSION.to_string(), spec.id.clone()),
            (LABEL_IMAGE.to_string(), spec.image.clone()),
            (LABEL_WORKSPACE_ID.to_string(), workspace_label),
            (LABEL_DATA_DIR.to_string(), self.data_dir_label()),
        ]);
        let mut tmpfs = HashMap::from([(
            "/tmp".to_string(),
            format!(
                "rw,exec,nosuid,nodev,size={}m,mode=1777",
                self.cfg.tmp_size_mb
            ),
        )]);
        let workspace_mount = remote::volume_mount(&volume, "/workspace", false);
        let (mounts, entrypoint, env) = match &self.remote {
            None => (
                vec![
                    bind_mount(&self.cfg.agent_binary, AGENT_PATH, true),
                    bind_mount(&run, RUN_DIR, false),
                    workspace_mount,
                ],
                vec![
                    AGENT_PATH.to_string(),
                    "container".into(),
                    "--socket".into(),
                    AGENT_SOCKET.into(),
                    "--config".into(),
                    format!("{RUN_DIR}/config.json"),
                ],
                None,
            ),
            Some(r) => {
                // Root-only, in memory: the socket the relay reaches.
                tmpfs.insert(
                    RUN_DIR.to_string(),
                    "rw,noexec,nosuid,nodev,size=1m,mode=0700".into(),
                );
                (
                    vec![
                        remote::volume_mount(&r.volume(), remote::AGENT_DIR, true),
                        workspace_mount,
                    ],
                    vec![
                        remote::AGENT_IN_VOLUME.to_string(),
                        "container".into(),
                        "--socket".into(),
                        AGENT_SOCKET.into(),
                        "--config-env".into(),
                        CONFIG_ENV.into(),
                        "--own-workdir".into(),
                    ],
                    Some(vec![format!("{CONFIG_ENV}={json}")]),
                )
            }
        };
        let mem = (spec.limits.memory_mb * 1024 * 1024) as i64;
        let host_config = HostConfig {
            nano_cpus: Some((spec.limits.cpu * 1e9) as i64),
            memory: Some(mem),
            memory_swap: Some(mem),
            pids_limit: Some(spec.limits.pids as i64),
            readonly_rootfs: Some(spec.readonly_rootfs),
            network_mode: Some(
                match spec.network {
                    NetworkMode::None => "none",
                    NetworkMode::Full => "bridge",
                }
                .into(),
            ),
            security_opt: Some(vec!["no-new-privileges".into()]),
            cap_drop: Some(vec!["ALL".into()]),
            cap_add: Some(
                [
                    "CHOWN",
                    "DAC_OVERRIDE",
                    "FOWNER",
                    "KILL",
                    "SETGID",
                    "SETUID",
                ]
                .map(String::from)
                .to_vec(),
            ),
            runtime: self.cfg.oci_runtime.clone(),
            init: Some(false),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            }),
            tmpfs: Some(tmpfs),
            mounts: Some(mounts),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            hostname: Some(format!("sk-{}", &spec.id[..spec.id.len().min(12)])),
            user: Some("0:0".into()),
            entrypoint: Some(entrypoint),
            env,
            cmd: None,
            working_dir: Some("/".into()),
            labels: Some(labels),
            attach_stdin: Some(false),
            attach_stdout: Some(false),
            attach_stderr: Some(false),
            tty: Some(false),
            open_stdin: Some(false),
            host_config: Some(host_config),
            ..Default::default()
        };
        let opts = CreateContainerOptionsBuilder::default().name(&name).build();
        self.docker
            .create_container(Some(opts), body)
            .await
            .map_err(api_err(format!("creating container {name}")))?;
        self.docker
            .start_container(
                &name,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
            .map_err(api_err(format!("starting container {name}")))?;

        // Wait for the agent's socket, or the container's end: both are
        // events (inotify; the engine's wait endpoint).
        let mut exited = self.docker.wait_container(
            &name,
            None::<bollard::query_parameters::WaitContainerOptions>,
        );
        let listening = async {
            match &watch {
                Some(w) => w
                    .appeared("agent.sock")
                    .await
                    .map(|_| None)
                    .map_err(io("waiting for the agent socket")),
                // The relay waits for the socket itself; a ping proves the
                // agent serves.
                None => {
                    let agent = self.connect(&spec.id).await?;
                    agent.call(Request::Ping).await?;
                    Ok(Some(agent))
                }
            }
        };
        let agent = tokio::select! {
            r = listening => r?,
            r = exited.next() => {
                let how = match r {
                    Some(Ok(w)) => format!("exit code {}", w.status_code),
                    Some(Err(e)) => e.to_string(),
                    None => "ended".into(),
                };
                let logs = self.logs(&name).await;
                return Err(RuntimeError::Other(format!(
                    "container {name} stopped before its agent listened ({how}): {logs}"
                )));
            }
            _ = tokio::time::sleep(AGENT_START_TIMEOUT) => {
                return Err(RuntimeError::Other(format!(
                    "the agent of container {name} did not listen within {}s: {}",
                    AGENT_START_TIMEOUT.as_secs(),
                    self.logs(&name).await
                )));
            }
        };
        Ok((self.handle_of(&spec.id).await?, agent))
    }

    /// The last lines the container's agent wrote (for error messages).
    async fn logs(&self, name: &str) -> String {
        let opts = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail("20")
            .build();
        let mut s = self.docker.logs(name, Some(opts));
        let mut out = String::new();
        while let Some(Ok(chunk)) = s.next().await {
            out.push_str(&chunk.to_string());
        }
        let out = out.trim().to_string();
        if out.is_empty() {
            "(no output)".into()
        } else {
            out
        }
    }

    /// The handle of a running container: its PID 1's host pid and start
    /// time. `Gone` when it is not running.
    async fn handle_of(&self, id: &str) -> Result<SandboxHandle, RuntimeError> {
        let c = match self
            .docker
            .inspect_container(&container_name(id), None)
            .await
        {
            Ok(c) => c,
            Err(e) if status_of(&e) == Some(404) => return Err(RuntimeError::Gone(id.into())),
            Err(e) => return Err(api_err(format!("inspecting container of {id}"))(e)),
        };
        let state = c.state.unwrap_or_default();
        let pid = state.pid.unwrap_or(0) as i32;
        if state.running != Some(true) || pid <= 0 {
            return Err(RuntimeError::Gone(id.into()));
        }
        Ok(SandboxHandle {
            id: id.to_string(),
            pid,
            // On a remote engine its pids are not ours to read: the
            // container's start timestamp stands in (a restarted container
            // has another). 0 when a local engine's pids are in another pid
            // namespace; identity then rests on the container and its pid.
            start_time: if self.remote.is_some() {
                started_at_token(state.started_at.as_deref().unwrap_or(""))
            } else {
                latebind::start_time(pid).unwrap_or(0)
            },
        })
    }

    async fn connect(&self, id: &str) -> Result<AgentClient, RuntimeError> {
        match &self.remote {
            None => AgentClient::connect(&self.run_dir(id).join("agent.sock")).await,
            Some(_) => {
                remote::connect_relay(
                    &self.docker,
                    &self.relays,
                    &container_name(id),
                    remote::AGENT_IN_VOLUME,
                    AGENT_SOCKET,
                )
                .await
            }
        }
    }
}

#[async_trait]
impl Runtime for DockerRuntime {
    fn name(&self) -> &'static str {
        "docker"
    }

    async fn create(&self, spec: SandboxSpec) -> Result<Sandbox, RuntimeError> {
        let id = spec.id.clone();
        let cleanup = |e: RuntimeError| async move {
            let handle = SandboxHandle {
                id,
                pid: 0,
                start_time: 0,
            };
            if let Err(ce) = self.destroy(&handle).await {
                tracing::warn!(session = %handle.id, "cleanup after failed create: {ce}");
            }
            e
        };
        let (handle, agent) = match self.start(&spec).await {
            Ok(started) => started,
            Err(e) => return Err(cleanup(e).await),
        };
        if let Some(agent) = agent {
            return Ok(Sandbox { handle, agent });
        }
        match self.connect(&spec.id).await {
            Ok(agent) => Ok(Sandbox { handle, agent }),
            Err(e) => Err(cleanup(e).await),
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
        let agent = self.connect(&handle.id).await.map_err(|e| match e {
            RuntimeError::Gone(_) => e,
            _ if self.remote.is_some() => e,
            _ => RuntimeError::Gone(handle.id.clone()),
        })?;
        Ok(Sandbox { handle: now, agent })
    }

    async fn destroy(&self, handle: &SandboxHandle) -> Result<(), RuntimeError> {
        let id = &handle.id;
        let name = container_name(id);
        // Force: SIGKILL to PID 1 (the pid namespace ends with it), then
        // removal. Anonymous volumes (an image's VOLUME lines) go with it.
        let opts = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match self.docker.remove_container(&name, Some(opts)).await {
            Ok(()) => {}
            Err(e) if status_of(&e) == Some(404) => {}
            Err(e) => return Err(api_err(format!("removing container {name}"))(e)),
        }
        self.relays.end(&name);
        // The ephemeral volume carries its session's id; a persistent
        // workspace's volume never does, so it is never removed here, nor
        // is an ephemeral one that became a workspace of the same name.
        let vol = volume_name(id);
        match self.docker.inspect_volume(&vol).await {
            Ok(v) if v.labels.get(LABEL_SESSION) == Some(id) && !self.kept_marker(id).exists() => {
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
        let run = self.run_dir(id);
        let what = format!("removing {}", run.display());
        tokio::task::spawn_blocking(move || hostfs::remove_run_dir(&run))
            .await
            .map_err(|e| RuntimeError::Other(format!("delete task failed: {e}")))?
            .map_err(io(what))
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
        for e in std::fs::read_dir(&runs).map_err(io(format!("listing {}", runs.display())))? {
            let e = e.map_err(io("listing run directories"))?;
            if let Some(name) = e.file_name().to_str() {
                if !out.iter().any(|o| o == name) {
                    out.push(name.to_string());
                }
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
        let lock = self.volume_locks.of(id);
        let _no_helper = lock.write().await;
        let name = volume_name(id);
        match self
            .docker
            .remove_volume(&name, Some(RemoveVolumeOptionsBuilder::default().build()))
            .await
        {
            Ok(()) => {}
            Err(e) if status_of(&e) == Some(404) => {}
            Err(e) if status_of(&e) == Some(409) => {
                return Err(RuntimeError::Other(format!(
                    "workspace {id} is still mounted by a container"
                )))
            }
            Err(e) => return Err(api_err(format!("removing volume {name}"))(e)),
        }
        match std::fs::remove_file(self.kept_marker(id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(RuntimeError::io(format!("forgetting workspace {id}"), e))
            }
            _ => Ok(()),
        }
    }

    async fn workspace_size(&self, id: &str) -> Result<Option<u64>, RuntimeError> {
        if let Some(r) = &self.remote {
            let guard = self.volume_locks.of(id).read_owned().await;
            if !self.volume_exists(id).await? {
                return Ok(None);
            }
            let (r, rt, docker, label) = (
                r.clone(),
                tokio::runtime::Handle::current(),
                self.docker.clone(),
                self.data_dir_label(),
            );
            let volume = volume_name(id);
            // The same walk as an export, into nothing: the engine has no
            // endpoint for a volume's size but a slow `system df`.
            return tokio::task::spawn_blocking(move || {
                let _guard = guard;
                r.workspace_tar(&rt, &docker, &label, &volume, &mut std::io::sink())
            })
            .await
            .map_err(|e| RuntimeError::Other(format!("size task failed: {e}")))?
            .map(Some);
        }
        let Some(root) = self.workspace_root(id).await? else {
            return Ok(None);
        };
        let what = format!("measuring workspace {id}");
        tokio::task::spawn_blocking(move || hostfs::tree_size(&root))
            .await
            .map_err(|e| RuntimeError::Other(format!("size task failed: {e}")))?
            .map(Some)
            .map_err(io(what))
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

    async fn workspace_file(&self, id: &str, req: Request) -> Result<Response, RuntimeError> {
        if let Some(r) = &self.remote {
            let _guard = self.volume_locks.of(id).read_owned().await;
            if !self.volume_exists(id).await? {
                return Err(RuntimeError::Other(format!("workspace {id} has no volume")));
            }
            return r
                .workspace_file(&self.docker, &self.data_dir_label(), &volume_name(id), req)
                .await;
        }
        let root = self
            .workspace_root(id)
            .await?
            .ok_or_else(|| RuntimeError::Other(format!("workspace {id} has no volume")))?;
        let id = id.to_string();
        tokio::task::spawn_blocking(move || {
            // Every path resolves strictly inside the volume (openat2
            // RESOLVE_IN_ROOT), with the sandbox user's filesystem identity.
            let fs = sandkasten_fsops::RootedFs::open(&root, Some((SANDBOX_UID, SANDBOX_UID)))
                .map_err(io(format!("opening workspace {id}")))?;
            fs.handle(&req)
                .ok_or_else(|| RuntimeError::Other("not a file request".into()))
        })
        .await
        .map_err(|e| RuntimeError::Other(format!("file task failed: {e}")))?
    }

    fn export_workspace(
        &self,
        id: &str,
        out: &mut (dyn std::io::Write + Send),
    ) -> Result<(), RuntimeError> {
        // Called on a blocking thread of the runtime: wait for the engine
        // here, then walk the volume on this thread.
        let rt = tokio::runtime::Handle::try_current()
            .map_err(|e| RuntimeError::Other(format!("workspace export outside tokio: {e}")))?;
        if let Some(r) = &self.remote {
            let _guard = rt.block_on(self.volume_locks.of(id).read_owned());
            if !rt.block_on(self.volume_exists(id))? {
                return Err(RuntimeError::Other(format!("workspace {id} has no volume")));
            }
            let label = self.data_dir_label();
            return r
                .workspace_tar(&rt, &self.docker, &label, &volume_name(id), out)
                .map(|_| ());
        }
        let root = rt
            .block_on(self.workspace_root(id))?
            .ok_or_else(|| RuntimeError::Other(format!("workspace {id} has no volume")))?;
        export::export_tar(&root, out).map_err(io(format!("exporting workspace {id}")))
    }

    fn can_bind_workspace(&self) -> bool {
        self.late_bind
    }

    async fn bind_workspace(&self, handle: &SandboxHandle, id: &str) -> Result<(), RuntimeError> {
        if !self.late_bind {
            return Err(RuntimeError::Unsupported(
                "mounting a workspace into a running container (needs runc and the \
                 engine's processes in the daemon's pid namespace)"
                    .into(),
                "docker",
            ));
        }
        let root = self.ensure_workspace_volume(id).await?;
        let pidfd = latebind::open_verified(handle.pid, handle.start_time)
            .ok_or_else(|| RuntimeError::Gone(handle.id.clone()))?;
        let what = format!("mounting workspace {id} into container {}", handle.id);
        tokio::task::spawn_blocking(move || {
            let mount = latebind::clone_dir(&root)?;
            latebind::move_into(pidfd, mount, "/workspace")
        })
        .await
        .map_err(|e| RuntimeError::Other(format!("late-bind task failed: {e}")))?
        .map_err(io(what))
    }

    fn scratch_dir(&self) -> PathBuf {
        self.cfg.data_dir.join("tmp")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
