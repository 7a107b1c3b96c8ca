//! The transport of a local engine with runc, which shares the daemon's
//! filesystem: the agent binary is bind-mounted read-only from the data
//! dir, its config and socket are in the session's run directory (a host
//! directory only root can enter, bound at `/.sandkasten/run`), the daemon
//! waits for the socket with inotify and connects to it as a host path, and
//! workspace volumes are reached at their host mount points (session-less
//! files, size, export, late binding).

use crate::transport::{AgentLaunch, AgentReady, RemovalGuard, Transport};
use crate::{volume_root, watch, SandboxUser, AGENT_SOCKET, RUN_DIR};
use async_trait::async_trait;
use bollard::models::{Mount, MountBindOptions, MountType};
use bollard::Docker;
use sandkasten_hostfs::{ExportOptions, Owners, TooDeep};
use sandkasten_protocol::AgentConfig;
use sandkasten_runtime::{
    blocking, export_blocking, latebind, ports, AgentClient, ExportStream, FileOp, FileReply,
    FileStream, PortStream, RuntimeError, SandboxHandle,
};
use std::path::{Path, PathBuf};

/// Where the agent binary appears in a container of a local engine.
const AGENT_PATH: &str = "/.sandkasten/agent";

/// How a local volume is exported: owners as they are (without a user
/// namespace the host's ids are the ids inside), and a directory nested
/// deeper than 256 levels written without its content rather than failing
/// the whole export.
const EXPORT: ExportOptions = ExportOptions {
    owners: Owners::AsIs,
    max_depth: 256,
    too_deep: TooDeep::Skip,
};

/// A local engine that shares this host's filesystem (see the module docs).
pub(crate) struct LocalTransport {
    docker: Docker,
    /// The static agent binary on the host.
    agent_binary: PathBuf,
    /// `<data_dir>/docker`: the run directories.
    runs: PathBuf,
    /// Whether a workspace can be mounted into a running container (runc
    /// and the engine's pids visible to the daemon).
    late_bind: bool,
    /// The sandbox user, whose the volumes are.
    user: SandboxUser,
}

impl LocalTransport {
    pub fn new(
        docker: Docker,
        agent_binary: PathBuf,
        runs: PathBuf,
        late_bind: bool,
        user: SandboxUser,
    ) -> Self {
        LocalTransport {
            docker,
            agent_binary,
            runs,
            late_bind,
            user,
        }
    }

    /// The host mount point of workspace `id`'s volume, or `NotFound`.
    async fn existing_root(&self, id: &str) -> Result<PathBuf, RuntimeError> {
        volume_root(&self.docker, id)
            .await?
            .ok_or_else(|| RuntimeError::NotFound(format!("the volume of workspace {id}")))
    }

    /// The host mount point of workspace `id`'s volume, claimed for the
    /// sandbox user first (a volume of an earlier sandbox uid is taken
    /// over before the user's identity touches it).
    async fn claimed_root(&self, id: &str) -> Result<PathBuf, RuntimeError> {
        let root = self.existing_root(id).await?;
        claim_volume(&root, &format!("volume of workspace {id}"), self.user).await?;
        Ok(root)
    }
}

/// Gives the volume at `root` to `user`: a fresh root, or a tree of an
/// earlier sandbox uid (`sandkasten_hostfs::claim_tree`: fd-relative, no
/// symlink followed, the root last). Runs on a blocking thread: a takeover
/// walks the whole tree once.
pub(crate) async fn claim_volume(
    root: &Path,
    what: &str,
    user: SandboxUser,
) -> Result<(), RuntimeError> {
    let (at, what) = (root.to_path_buf(), what.to_string());
    blocking("giving a volume to the sandbox user", move || {
        let claim = sandkasten_hostfs::claim_tree(&at, user.uid, user.gid).map_err(
            RuntimeError::io_ctx(format!("giving {what} to the sandbox user")),
        )?;
        if let sandkasten_hostfs::Claim::TookOver { from, entries } = claim {
            tracing::info!(
                volume = %what,
                from_uid = from.0,
                from_gid = from.1,
                entries,
                "took over a volume of an earlier sandbox user"
            );
        }
        Ok(())
    })
    .await
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

#[async_trait]
impl Transport for LocalTransport {
    fn is_remote(&self) -> bool {
        false
    }

    async fn prepare(&self) -> Result<(), RuntimeError> {
        Ok(())
    }

    async fn adopt_volume(
        &self,
        name: &str,
        mountpoint: &str,
        driver: &str,
    ) -> Result<PathBuf, RuntimeError> {
        if mountpoint.is_empty() {
            return Err(RuntimeError::HostNotReady(format!(
                "volume {name} has no mount point on this host (driver {driver})"
            )));
        }
        let root = PathBuf::from(mountpoint);
        claim_volume(&root, &format!("volume {name}"), self.user).await?;
        Ok(root)
    }

    /// Writes the config into the run directory and watches it for the
    /// socket (before the container starts, so its arrival is never
    /// missed); the agent binds the socket under a temporary name and
    /// renames it into place once it listens.
    async fn launch(
        &self,
        _id: &str,
        run: &Path,
        cfg: &AgentConfig,
    ) -> Result<(AgentLaunch, AgentReady), RuntimeError> {
        let json = crate::agent_config_json(cfg)?;
        tokio::fs::write(run.join("config.json"), &json)
            .await
            .map_err(RuntimeError::io_ctx("writing the agent config"))?;
        let watch = watch::DirWatch::new(run)
            .map_err(RuntimeError::io_ctx("watching the run directory"))?;
        let socket = run.join("agent.sock");
        let ready: AgentReady = Box::pin(async move {
            watch
                .appeared("agent.sock")
                .await
                .map_err(RuntimeError::io_ctx("waiting for the agent socket"))?;
            AgentClient::connect(&socket).await
        });
        let launch = AgentLaunch {
            mounts: vec![
                bind_mount(&self.agent_binary, AGENT_PATH, true),
                bind_mount(run, RUN_DIR, false),
            ],
            tmpfs: vec![],
            entrypoint: vec![
                AGENT_PATH.to_string(),
                "container".into(),
                "--socket".into(),
                AGENT_SOCKET.into(),
                "--config".into(),
                format!("{RUN_DIR}/config.json"),
            ],
            env: None,
        };
        Ok((launch, ready))
    }

    async fn connect(&self, id: &str) -> Result<AgentClient, RuntimeError> {
        AgentClient::connect(&self.runs.join(id).join("agent.sock")).await
    }

    /// A socket made in the container's network namespace (entered
    /// through a pidfd of its proven PID 1, as late binding) where the
    /// engine's pids are visible and the OCI runtime is runc; else a pipe
    /// through a connection of its own to the agent's socket.
    async fn connect_port(
        &self,
        handle: &SandboxHandle,
        port: u16,
    ) -> Result<PortStream, RuntimeError> {
        if self.late_bind {
            let handle = handle.clone();
            let prove = move || {
                latebind::open_verified(handle.pid, handle.start_time)
                    .ok_or_else(|| RuntimeError::Gone(handle.id.clone()))
            };
            return Ok(Box::new(ports::connect_in_netns(prove, port).await?));
        }
        let path = self.runs.join(&handle.id).join("agent.sock");
        let stream = tokio::net::UnixStream::connect(&path)
            .await
            .map_err(RuntimeError::io_ctx(format!(
                "connecting to the agent at {}",
                path.display()
            )))?;
        Ok(Box::new(ports::open_via_agent(stream, port).await?))
    }

    /// Nothing to end: a local connection closes with the container's
    /// agent.
    fn disconnect(&self, _id: &str) {}

    fn unreachable_agent_is_gone(&self) -> bool {
        true
    }

    /// The PID 1's start time from `/proc`; 0 when the engine's pids are
    /// in another pid namespace (identity then rests on the container and
    /// its pid).
    fn start_token(&self, pid: i32, _started_at: &str) -> u64 {
        latebind::start_time(pid).unwrap_or(0)
    }

    /// Every path resolves strictly inside the volume (openat2
    /// RESOLVE_IN_ROOT), with the sandbox user's filesystem identity:
    /// without a user namespace the same uid on the host. A volume of an
    /// earlier sandbox uid is taken over first.
    async fn workspace_file(&self, id: &str, op: FileOp) -> Result<FileReply, RuntimeError> {
        let root = self.claimed_root(id).await?;
        sandkasten_hostfs::workspace_file(root, self.user.uid, op).await
    }

    /// Opened as [`Transport::workspace_file`]'s operations, then
    /// streamed from the volume's mount point.
    async fn workspace_read(
        &self,
        id: &str,
        path: String,
        max_bytes: Option<u64>,
    ) -> Result<FileStream, RuntimeError> {
        let root = self.claimed_root(id).await?;
        sandkasten_hostfs::workspace_read(root, self.user.uid, path, max_bytes).await
    }

    async fn workspace_size(&self, id: &str) -> Result<Option<u64>, RuntimeError> {
        let Some(root) = volume_root(&self.docker, id).await? else {
            return Ok(None);
        };
        let what = format!("measuring workspace {id}");
        blocking("measuring a workspace", move || {
            sandkasten_hostfs::tree_size(&root)
                .map(Some)
                .map_err(RuntimeError::io_ctx(what))
        })
        .await
    }

    /// A live walk of the volume's host mount point (not point-in-time),
    /// as [`EXPORT`] says.
    async fn export_workspace(&self, id: &str) -> Result<ExportStream, RuntimeError> {
        let root = self.existing_root(id).await?;
        let what = format!("exporting workspace {id}");
        export_blocking(move |out| {
            sandkasten_hostfs::export_tar(&root, &EXPORT, out).map_err(RuntimeError::io_ctx(what))
        })
        .await
    }

    /// Nothing to hold: no helper containers mount a local engine's
    /// volumes.
    async fn hold_for_removal(&self, _id: &str) -> RemovalGuard {
        None
    }

    fn can_bind_workspace(&self) -> bool {
        self.late_bind
    }

    /// `mount_setattr` on `/workspace` from a thread inside the container's
    /// mount namespace, entered through a pidfd of its proven PID 1 (the
    /// same preconditions as late binding).
    async fn restrict_workspace(&self, handle: &SandboxHandle) -> Result<(), RuntimeError> {
        if !self.late_bind {
            return Ok(());
        }
        let pidfd = latebind::open_verified(handle.pid, handle.start_time)
            .ok_or_else(|| RuntimeError::Gone(handle.id.clone()))?;
        let what = format!("restricting /workspace of container {}", handle.id);
        blocking("restricting a container's workspace mount", move || {
            latebind::restrict_mount(pidfd, "/workspace").map_err(RuntimeError::io_ctx(what))
        })
        .await
    }

    /// An `open_tree` clone of the volume's host mount point, moved onto
    /// `/workspace` from a thread inside the container's mount namespace,
    /// entered through a pidfd of its proven PID 1.
    async fn bind_workspace(
        &self,
        handle: &SandboxHandle,
        id: &str,
        root: &Path,
    ) -> Result<(), RuntimeError> {
        let pidfd = latebind::open_verified(handle.pid, handle.start_time)
            .ok_or_else(|| RuntimeError::Gone(handle.id.clone()))?;
        let what = format!("mounting workspace {id} into container {}", handle.id);
        let root = root.to_path_buf();
        blocking("mounting a workspace into a container", move || {
            latebind::clone_dir(&root)
                .and_then(|mount| latebind::move_into(pidfd, mount, "/workspace"))
                .map_err(RuntimeError::io_ctx(what))
        })
        .await
    }
}
