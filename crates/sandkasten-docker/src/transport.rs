//! The seam between the docker runtime and the engine's side of the files:
//! how our agent gets into a session container, how the daemon reaches it,
//! and how a workspace volume is read and written without a session.
//!
//! Two implementations, chosen once when the runtime starts:
//!
//! - [`crate::local::LocalTransport`]: a local engine with runc, which
//!   shares the daemon's filesystem. The agent binary and the session's run
//!   directory are bind mounts, the daemon waits for the agent's socket
//!   with inotify and connects to it as a host path, and volumes are
//!   reached at their host mount points (late binding too).
//! - [`crate::remote::RemoteTransport`]: a `tcp://` engine, or any OCI
//!   runtime but runc, which shares nothing usable. The agent is copied
//!   onto the engine (image and volume), its config travels in PID 1's
//!   environment, the daemon reaches it through a relay exec, and volumes
//!   through helper containers.
//!
//! Everything else (container config, labels, limits, volumes' lifecycle,
//! identity) is the runtime's own and the same for both.

use async_trait::async_trait;
use bollard::models::Mount;
use sandkasten_protocol::AgentConfig;
use sandkasten_runtime::{
    AgentClient, ExportStream, FileOp, FileReply, FileStream, PortStream, RuntimeError,
    SandboxHandle,
};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;

/// Resolves, once the container has started, with a connection to its
/// agent that is known to serve. Set up before the container starts, so
/// that its signal is never missed.
pub(crate) type AgentReady =
    Pin<Box<dyn Future<Output = Result<AgentClient, RuntimeError>> + Send + 'static>>;

/// What a session container needs so that our agent runs as its PID 1.
pub(crate) struct AgentLaunch {
    /// Mounts that bring the agent (and where it listens) in.
    pub mounts: Vec<Mount>,
    /// tmpfs mounts besides `/tmp` (target, options).
    pub tmpfs: Vec<(String, String)>,
    /// PID 1's command line.
    pub entrypoint: Vec<String>,
    /// PID 1's extra environment (`KEY=value`), if any.
    pub env: Option<Vec<String>>,
}

/// An exclusive hold on a workspace volume while it is removed (no helper
/// container may mount it meanwhile); `None` where nothing needs holding.
pub(crate) type RemovalGuard = Option<tokio::sync::OwnedRwLockWriteGuard<()>>;

/// How the runtime reaches what runs on the engine (see the module docs).
#[async_trait]
pub(crate) trait Transport: Send + Sync + 'static {
    /// True when the engine's files are not the daemon's (a remote engine,
    /// or an OCI runtime with its own view of files).
    fn is_remote(&self) -> bool;

    /// Makes sure the engine can run our agent (a remote engine gets a
    /// copy once per process).
    async fn prepare(&self) -> Result<(), RuntimeError>;

    /// Makes the volume `name` just created (or found) with mount point
    /// `mountpoint` ready for the sandbox user where the daemon can reach
    /// it; returns the mount point.
    async fn adopt_volume(
        &self,
        name: &str,
        mountpoint: &str,
        driver: &str,
    ) -> Result<PathBuf, RuntimeError>;

    /// How session `id`'s agent is started with `cfg` (its run directory
    /// on the host is `run`), and the future that awaits it.
    async fn launch(
        &self,
        id: &str,
        run: &Path,
        cfg: &AgentConfig,
    ) -> Result<(AgentLaunch, AgentReady), RuntimeError>;

    /// A new connection to the agent of session `id`'s running container.
    async fn connect(&self, id: &str) -> Result<AgentClient, RuntimeError>;

    /// Ends every connection to session `id`'s container (it is being
    /// destroyed).
    fn disconnect(&self, id: &str);

    /// Whether an agent that cannot be connected to is gone (a local
    /// socket), rather than maybe out of reach for now (a remote engine).
    fn unreachable_agent_is_gone(&self) -> bool;

    /// What proves one start of a container whose PID 1 is `pid` and whose
    /// engine says it started at `started_at` (0: unknown).
    fn start_token(&self, pid: i32, started_at: &str) -> u64;

    /// A file operation on workspace `id` without a session.
    async fn workspace_file(&self, id: &str, op: FileOp) -> Result<FileReply, RuntimeError>;

    /// A file of workspace `id` without a session, streamed.
    async fn workspace_read(
        &self,
        id: &str,
        path: String,
        max_bytes: Option<u64>,
    ) -> Result<FileStream, RuntimeError>;

    /// Bytes in workspace `id`'s regular files; `None` without a volume.
    async fn workspace_size(&self, id: &str) -> Result<Option<u64>, RuntimeError>;

    /// Workspace `id` as a tar stream with paths relative to its root.
    async fn export_workspace(&self, id: &str) -> Result<ExportStream, RuntimeError>;

    /// Holds workspace `id`'s volume while it is removed.
    async fn hold_for_removal(&self, id: &str) -> RemovalGuard;

    /// A connection to TCP `port` on the loopback of the container behind
    /// `handle` (see `sandkasten_runtime::ports`).
    async fn connect_port(
        &self,
        handle: &SandboxHandle,
        port: u16,
    ) -> Result<PortStream, RuntimeError>;

    /// Whether [`Transport::bind_workspace`] works here.
    fn can_bind_workspace(&self) -> bool {
        false
    }

    /// Sets `nosuid,nodev` on the `/workspace` mount of the container
    /// behind `handle` (the engine's volume mounts have no such option).
    /// Where the daemon cannot enter the container's namespace (a remote
    /// engine, another OCI runtime, pids out of sight) this does nothing,
    /// and docs/api.md's backend table says so.
    async fn restrict_workspace(&self, _handle: &SandboxHandle) -> Result<(), RuntimeError> {
        Ok(())
    }

    /// Mounts workspace `id` (host mount point `root`) at `/workspace` of
    /// the running container behind `handle`.
    async fn bind_workspace(
        &self,
        _handle: &SandboxHandle,
        _id: &str,
        _root: &Path,
    ) -> Result<(), RuntimeError> {
        Err(RuntimeError::Unsupported(
            "mounting a workspace into a running container".into(),
            "docker",
        ))
    }
}
