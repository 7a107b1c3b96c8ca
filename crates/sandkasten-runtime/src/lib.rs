//! The seam between the engine and the sandbox backends: the object-safe
//! [`Runtime`] trait, the plain types it speaks, and the [`AgentClient`]
//! every backend uses to talk to our in-sandbox agent.

mod agent_client;
mod export;
#[cfg(any(test, feature = "fake"))]
pub mod fake;
mod files;
#[cfg(target_os = "linux")]
pub mod latebind;
mod netpolicy;
pub mod ports;
mod procs;
mod watch;

pub use agent_client::{AgentClient, ExecDone, ExecHandle, ExecReply, READ_WINDOW};
pub use export::{export_blocking, ExportStream, EXPORT_CHUNK};

/// Cancelled once the caller of a long step has gone away (its request's
/// client disconnected): the step may stop where it is and leave
/// everything as it was.
pub type Abandoned = tokio_util::sync::CancellationToken;

/// The error of a step that stopped because its caller went away.
pub fn abandoned_error(what: &'static str) -> RuntimeError {
    RuntimeError::io(
        what,
        std::io::Error::other("its caller went away; nothing was changed"),
    )
}
pub use files::{
    read_blocking, DirEntry, FileData, FileErrorKind, FileOp, FileReply, FileSender, FileStat,
    FileStream, FileType, READ_CHUNK,
};
pub use ports::{PortIo, PortStream};
pub use procs::{
    ProcEnd, ProcErrorKind, ProcEvent, ProcInfo, ProcOutput, ProcRef, ProcSpec, ProcStream,
    PtySize, Started,
};
pub use sandkasten_protocol::{meta_problem, MAX_META_BYTES};
pub use watch::{DirWatch, FileUser, WatchEvent, WatchEventKind, MAX_WATCHED_DIRS, MAX_WATCHES};

pub use netpolicy::{
    default_deny_always, IpNet, NetEntry, NetworkDenial, NetworkPolicy, MAX_ENTRIES,
};

use async_trait::async_trait;
use std::path::PathBuf;

/// Largest output one exec can return (the agent's frame limit): the upper
/// bound of an exec output cap.
pub const MAX_EXEC_OUTPUT_BYTES: u64 = sandkasten_protocol::MAX_FRAME_BYTES as u64;

/// Largest file content one read can return: the upper bound of a read cap
/// (reads stream, but an agent of protocol 1 answers in one frame).
pub const MAX_READ_BYTES: u64 = sandkasten_protocol::MAX_FILE_DATA_BYTES;

/// Smallest workspace quota a backend accepts (a btrfs image needs room for
/// its metadata).
pub const MIN_QUOTA_BYTES: u64 = 128 * 1024 * 1024;

/// uid and gid of the `sandbox` user inside a sandbox with a user
/// namespace (commands and file operations run as it); the docker
/// runtime's is its own ([`Runtime::sandbox_ids`]).
pub const SANDBOX_UID: u32 = 1000;

/// The environment every sandbox shell starts with (before the image's own
/// and the session's variables): a sane PATH, bash, no pager, unbuffered
/// Python, UTF-8.
pub fn default_shell_env() -> Vec<(String, String)> {
    [
        (
            "PATH",
            "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin",
        ),
        ("SHELL", "/bin/bash"),
        ("TERM", "dumb"),
        ("LANG", "C.UTF-8"),
        ("PYTHONUNBUFFERED", "1"),
        ("PAGER", "cat"),
        ("GIT_PAGER", "cat"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The one rule for a sandbox shell's environment, on every backend: our
/// defaults, then the image's own variables (`KEY=value` strings: its
/// PATH, LANG, tool variables), then the sandbox user's identity (HOME,
/// USER, LOGNAME: never taken from the image), then the session's own
/// variables. A later variable replaces an earlier one of the same name.
pub fn shell_env(image_env: &[String], session_env: &[(String, String)]) -> Vec<(String, String)> {
    let mut env = default_shell_env();
    let mut set = |k: &str, v: &str| {
        env.retain(|(ek, _)| ek != k);
        env.push((k.to_string(), v.to_string()));
    };
    for kv in image_env {
        if let Some((k, v)) = kv.split_once('=') {
            if !matches!(k, "HOME" | "USER" | "LOGNAME" | "HOSTNAME") {
                set(k, v);
            }
        }
    }
    for (k, v) in [
        ("HOME", "/home/sandbox"),
        ("USER", "sandbox"),
        ("LOGNAME", "sandbox"),
    ] {
        set(k, v);
    }
    for (k, v) in session_env {
        set(k, v);
    }
    env
}

/// Resource limits of one sandbox.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub memory_mb: u64,
    /// CPU quota in cores (1.0 = one full core).
    pub cpu: f64,
    pub pids: u64,
    /// Disk limit (MiB) of the sandbox's own writes outside `/workspace`
    /// (root filesystem changes, home, `/tmp`, `/var/tmp`); `None`: no
    /// limit. A backend that cannot enforce one ignores it and says so in
    /// [`Runtime::disk_limit_enforced`].
    pub disk_mb: Option<u64>,
}

/// Network of a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkMode {
    /// Loopback only.
    None,
    /// Outbound access.
    Full,
}

/// What backs `/workspace`.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkspaceMount {
    /// A private directory deleted with the sandbox.
    Ephemeral,
    /// The named persistent workspace `id`, created on first use; it
    /// outlives the sandbox.
    Persistent(String),
}

/// What to build.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    pub id: String,
    pub image: String,
    pub limits: Limits,
    pub network: NetworkMode,
    pub readonly_rootfs: bool,
    pub workspace: WorkspaceMount,
    /// Extra environment for the shell.
    pub env: Vec<(String, String)>,
    /// Start it again on the filesystem state [`Runtime::hibernate`] kept
    /// under this id (its root filesystem changes, its ephemeral
    /// `/workspace`), instead of on a fresh one.
    pub wake: bool,
    /// Start it on a copy of this sandbox snapshot
    /// ([`Runtime::snapshot_sandbox`]) instead of a fresh state.
    pub from_snapshot: Option<String>,
}

/// How to find a sandbox again (persisted by the engine).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxHandle {
    pub id: String,
    /// Host pid of the sandbox's init (0 when the backend has none).
    pub pid: i32,
    /// Start time of that pid (clock ticks since boot), proving identity.
    pub start_time: u64,
}

impl SandboxHandle {
    /// A handle that names sandbox `id` without proving any process: what
    /// [`Runtime::destroy`] takes to clean up the leftovers of a sandbox
    /// whose process is gone or was never started (it signals nothing).
    pub fn unproven(id: impl Into<String>) -> SandboxHandle {
        SandboxHandle {
            id: id.into(),
            pid: 0,
            start_time: 0,
        }
    }
}

/// A live sandbox: its handle and a connected agent.
pub struct Sandbox {
    pub handle: SandboxHandle,
    pub agent: AgentClient,
    /// How long the steps of its start took, in order, in microseconds
    /// (empty where the runtime does not report them).
    pub phases_us: Vec<(String, u64)>,
}

/// Resource usage read back from the kernel.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SandboxStats {
    pub memory_bytes: u64,
    pub memory_limit: u64,
    pub cpu_usage_usec: u64,
    pub pids: u64,
}

/// An image a backend can start.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageInfo {
    pub name: String,
    /// Content digest ("sha256:…") of the image, or "builtin".
    pub digest: String,
    pub size_bytes: u64,
    pub builtin: bool,
}

/// Errors of a backend. Each variant says how a caller should read it: a
/// property of the request (`ImageNotFound`, `NotFound`, `Unsupported`,
/// `InvalidArchive`, `File`), a state that may pass (`Busy`), a sandbox
/// that is gone, or a failure of the host or backend (the rest).
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("image {0} not found")]
    ImageNotFound(String),
    #[error("invalid image archive: {0}")]
    InvalidImage(String),
    #[error("image {0} is built in and cannot be changed")]
    ImageBuiltin(String),
    #[error("sandbox {0} is gone")]
    Gone(String),
    /// Something the request names does not exist (a workspace's volume, a
    /// snapshot).
    #[error("{0} not found")]
    NotFound(String),
    /// The object is in use right now (a workspace still mounted); the
    /// same request may succeed later.
    #[error("{0}")]
    Busy(String),
    /// `what` is not supported by the runtime named second.
    #[error("{0} is not supported by the {1} runtime")]
    Unsupported(String, &'static str),
    #[error("host is not ready for sandboxes: {0}")]
    HostNotReady(String),
    /// A sandbox could not be started (its launcher or first process
    /// failed).
    #[error("starting the sandbox: {0}")]
    StartFailed(String),
    /// The container engine refused or failed a call.
    #[error("{context}: {message}")]
    Backend { context: String, message: String },
    /// A blocking task of the backend panicked or was cancelled.
    #[error("{context}: {message}")]
    Task {
        context: &'static str,
        message: String,
    },
    #[error("agent: {0}")]
    Agent(String),
    /// A file operation failed (a missing file, a path that leaves the
    /// root, no permission): a property of the files, not of the sandbox.
    #[error("{message}")]
    File {
        kind: FileErrorKind,
        message: String,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A workspace import archive that is malformed, tries to leave the
    /// workspace, or does not fit in its quota.
    #[error("invalid archive: {0}")]
    InvalidArchive(String),
    /// The host's storage for sandboxes (the data dir's filesystem, or the
    /// filesystem that holds sandboxes' writable state) lacks room for
    /// another sandbox; it passes when space returns.
    #[error("{0}")]
    StorageFull(String),
    /// The host has no room for another sandbox of this runtime (native:
    /// every host uid range is taken); it passes when a sandbox ends.
    #[error("{0}")]
    CapacityExhausted(String),
    /// A process request failed for a reason of the request or of the
    /// process (no such process, it ended, its stdin is closed, its
    /// program cannot start).
    #[error("{message}")]
    Process {
        kind: ProcErrorKind,
        message: String,
    },
    /// Nothing listens on this TCP port inside the sandbox (the connect
    /// was refused on 127.0.0.1 and ::1).
    #[error("nothing listens on port {0} inside the sandbox")]
    PortClosed(u16),
}

impl RuntimeError {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        RuntimeError::Io {
            context: context.into(),
            source,
        }
    }

    /// `RuntimeError::io` with its context first, for `map_err`:
    /// `.map_err(RuntimeError::io_ctx("reading x"))`.
    pub fn io_ctx(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| RuntimeError::Io { context, source }
    }

    /// A blocking task that did not complete (`spawn_blocking`'s join
    /// error), with what it was doing.
    pub fn task(context: &'static str) -> impl FnOnce(tokio::task::JoinError) -> Self {
        move |e| RuntimeError::Task {
            context,
            message: e.to_string(),
        }
    }
}

/// Runs blocking work (file walks, loop devices, mkfs, ioctls) on tokio's
/// blocking pool, never on an async worker; a panic or cancellation becomes
/// [`RuntimeError::Task`] naming `context`.
pub async fn blocking<T, F>(context: &'static str, f: F) -> Result<T, RuntimeError>
where
    F: FnOnce() -> Result<T, RuntimeError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(RuntimeError::task(context))?
}

/// A sandbox backend. Object safe: the engine holds an `Arc<dyn Runtime>`.
#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// Short name ("native", "docker").
    fn name(&self) -> &'static str;

    /// Builds and starts a sandbox, returning it with a connected agent.
    async fn create(&self, spec: SandboxSpec) -> Result<Sandbox, RuntimeError>;

    /// Reconnects to a sandbox that was running before a daemon restart.
    /// `Err(Gone)` when it no longer exists or cannot be proven ours.
    async fn attach(&self, handle: &SandboxHandle) -> Result<Sandbox, RuntimeError>;

    /// Kills every process of the sandbox and removes its mounts, cgroups
    /// and ephemeral files. Idempotent: destroying a gone sandbox cleans up
    /// what is left and succeeds.
    async fn destroy(&self, handle: &SandboxHandle) -> Result<(), RuntimeError>;

    /// Usage and limits of a running sandbox.
    async fn stats(&self, handle: &SandboxHandle) -> Result<SandboxStats, RuntimeError>;

    /// Images this backend can start.
    async fn list_images(&self) -> Result<Vec<ImageInfo>, RuntimeError>;

    /// Imports a rootfs tarball or `docker save` archive as `name`.
    async fn import_image(&self, name: &str, archive: PathBuf) -> Result<ImageInfo, RuntimeError>;

    /// Removes an image (the engine checks that no session uses it).
    async fn remove_image(&self, name: &str) -> Result<(), RuntimeError>;

    /// Session ids of sandboxes this backend finds on the host (to clean up
    /// orphans the store does not know).
    async fn list_sandboxes(&self) -> Result<Vec<String>, RuntimeError>;

    /// Creates the persistent workspace `id` unless it exists, limited to
    /// `quota_bytes` by the kernel when given (a backend without quota
    /// support answers `Unsupported`).
    async fn ensure_workspace(
        &self,
        id: &str,
        quota_bytes: Option<u64>,
    ) -> Result<(), RuntimeError>;

    /// Deletes workspace `id` and its files (the engine checks that no
    /// session mounts it). Deleting a missing workspace succeeds.
    async fn delete_workspace(&self, id: &str) -> Result<(), RuntimeError>;

    /// Bytes used by workspace `id`; `None` when it does not exist.
    async fn workspace_size(&self, id: &str) -> Result<Option<u64>, RuntimeError>;

    /// Takes a consistent, read-only, point-in-time snapshot `snap` of
    /// workspace `id` (also while mounted). `Unsupported` for workspaces
    /// without snapshot support (no quota).
    async fn snapshot_workspace(&self, id: &str, snap: &str) -> Result<(), RuntimeError>;

    /// Deletes snapshot `snap` of workspace `id`.
    async fn delete_snapshot(&self, id: &str, snap: &str) -> Result<(), RuntimeError>;

    /// Replaces workspace `id`'s content with snapshot `snap` (the engine
    /// checks that nothing mounts it).
    async fn restore_snapshot(&self, id: &str, snap: &str) -> Result<(), RuntimeError>;

    /// A file operation on workspace `id` without a session: paths resolve
    /// strictly inside the workspace, with the sandbox user's rights, and
    /// new files belong to the sandbox user. A failed operation is
    /// [`RuntimeError::File`]; a missing workspace [`RuntimeError::NotFound`].
    async fn workspace_file(&self, id: &str, op: FileOp) -> Result<FileReply, RuntimeError>;

    /// Reads a regular file of workspace `id` without a session, at most
    /// `max_bytes`, as a stream (paths and rights as
    /// [`Runtime::workspace_file`]). Answers once the file is open: a file
    /// that cannot be read is an error here, before any content.
    async fn workspace_read(
        &self,
        id: &str,
        path: String,
        max_bytes: Option<u64>,
    ) -> Result<FileStream, RuntimeError>;

    /// Workspace `id`'s content as a tar stream (paths relative to the
    /// workspace root, owners as the sandbox sees them, symlinks as
    /// symlinks). Point-in-time where the backend can snapshot. Answers once
    /// the first chunk is ready (see [`export_blocking`]): a failure before
    /// it is an error, a later one ends the stream.
    async fn export_workspace(&self, _id: &str) -> Result<ExportStream, RuntimeError> {
        Err(RuntimeError::Unsupported(
            "workspace export".into(),
            self.name(),
        ))
    }

    /// Replaces workspace `id`'s content with the tar at `archive` (the
    /// engine checks that nothing mounts it). A failed import leaves the
    /// old content intact; one whose caller went away (`abandoned`) may
    /// stop before its end, as a failed one.
    async fn import_workspace(
        &self,
        _id: &str,
        _archive: PathBuf,
        _abandoned: Abandoned,
    ) -> Result<(), RuntimeError> {
        Err(RuntimeError::Unsupported(
            "workspace import".into(),
            self.name(),
        ))
    }

    /// Fills the (new, unmounted) workspace `dst` with a copy of snapshot
    /// `snap` of workspace `src`.
    /// Makes workspace `dst` (which does not exist yet) a copy-on-write
    /// clone of snapshot `snap` of workspace `src`, sharing `src`'s
    /// storage (and its size limit); `false` where the backend cannot
    /// (nothing made: the caller creates and copies instead).
    async fn clone_snapshot(
        &self,
        _src: &str,
        _snap: &str,
        _dst: &str,
    ) -> Result<bool, RuntimeError> {
        Ok(false)
    }

    async fn copy_snapshot(&self, _src: &str, _snap: &str, _dst: &str) -> Result<(), RuntimeError> {
        Err(RuntimeError::Unsupported(
            "creating a workspace from a snapshot".into(),
            self.name(),
        ))
    }

    /// Whether [`Runtime::bind_workspace`] works here (the engine takes a
    /// pooled sandbox for a create with a workspace only then).
    fn can_bind_workspace(&self) -> bool {
        false
    }

    /// Late binding: mounts persistent workspace `id` (created already) at
    /// `/workspace` of a running sandbox that was started with an ephemeral
    /// one (a pre-warmed sandbox from the pool), over it. Processes whose
    /// cwd is `/workspace` keep the old directory until they re-enter it
    /// (the engine re-enters it in the shell). `Unsupported` where the
    /// backend cannot; the engine then creates the sandbox cold.
    async fn bind_workspace(&self, _handle: &SandboxHandle, _id: &str) -> Result<(), RuntimeError> {
        Err(RuntimeError::Unsupported(
            "mounting a workspace into a running sandbox".into(),
            self.name(),
        ))
    }

    /// Where uploads may be spooled before an import (on the data disk).
    fn scratch_dir(&self) -> PathBuf {
        std::env::temp_dir()
    }

    /// The uid and gid commands run as inside this backend's sandboxes
    /// (what `id -u` prints there, what owns the files they make):
    /// [`SANDBOX_UID`], which the native runtime's user namespace maps to
    /// a host id of its own; the docker runtime's own ids, which are host
    /// ids too (no user namespace), and never a host account's.
    fn sandbox_ids(&self) -> (u32, u32) {
        (SANDBOX_UID, SANDBOX_UID)
    }

    /// Whether this backend enforces [`Limits::disk_mb`] (decided once at
    /// start: the native runtime needs its btrfs scratch filesystem, docker
    /// a storage driver with size options).
    fn disk_limit_enforced(&self) -> bool {
        false
    }

    /// Changes the disk limit of a running sandbox (a pooled sandbox takes
    /// the request's limit when it is handed out). `Unsupported` where
    /// [`Runtime::disk_limit_enforced`] is false.
    async fn set_disk_limit(&self, _handle: &SandboxHandle, _mb: u64) -> Result<(), RuntimeError> {
        Err(RuntimeError::Unsupported(
            "changing a sandbox's disk limit".into(),
            self.name(),
        ))
    }

    /// A connection to TCP `port` on the sandbox's own loopback (127.0.0.1,
    /// else ::1), whatever its network mode: the daemon's ports proxy. A
    /// refusal is [`RuntimeError::PortClosed`], answered at once; a connect
    /// that gets no answer fails after [`ports::CONNECT_TIMEOUT`]. See
    /// [`ports`] for the two ways a backend makes one.
    async fn connect_port(
        &self,
        _handle: &SandboxHandle,
        _port: u16,
    ) -> Result<PortStream, RuntimeError> {
        Err(RuntimeError::Unsupported(
            "reaching a sandbox's ports".into(),
            self.name(),
        ))
    }

    /// Whether the host has room for another sandbox: `StorageFull` when
    /// the data dir's filesystem (or the sandboxes' scratch filesystem)
    /// is below its free-space threshold. Cheap (statvfs), called by every
    /// create; never latched: it answers from the current free space.
    async fn check_room(&self) -> Result<(), RuntimeError> {
        Ok(())
    }

    /// Freezes every process of the sandbox: memory kept, no CPU used,
    /// until [`Runtime::resume`]. A frozen sandbox's agent does not answer.
    async fn pause(&self, _handle: &SandboxHandle) -> Result<(), RuntimeError> {
        Err(RuntimeError::Unsupported("pause".into(), self.name()))
    }

    /// Thaws a paused sandbox: its processes go on where they were.
    async fn resume(&self, _handle: &SandboxHandle) -> Result<(), RuntimeError> {
        Err(RuntimeError::Unsupported("resume".into(), self.name()))
    }

    /// Ends the sandbox's processes and frees its memory, its link and its
    /// cgroups, but keeps its filesystem state (root filesystem changes,
    /// an ephemeral `/workspace`) for a [`Runtime::create`] with
    /// [`SandboxSpec::wake`]; [`Runtime::destroy`] removes that state.
    async fn hibernate(&self, _handle: &SandboxHandle) -> Result<(), RuntimeError> {
        Err(RuntimeError::Unsupported("hibernate".into(), self.name()))
    }

    /// Takes a read-only, point-in-time copy of the sandbox's own
    /// filesystem state (root filesystem changes, `/tmp`, an ephemeral
    /// `/workspace`) as sandbox snapshot `snap`; the caller freezes the
    /// sandbox while it is taken. A create with
    /// [`SandboxSpec::from_snapshot`] starts on a copy of it.
    async fn snapshot_sandbox(
        &self,
        _handle: &SandboxHandle,
        _snap: &str,
    ) -> Result<(), RuntimeError> {
        Err(RuntimeError::Unsupported(
            "snapshots of a whole sandbox".into(),
            self.name(),
        ))
    }

    /// Deletes sandbox snapshot `snap`; a missing one is no error.
    async fn delete_sandbox_snapshot(&self, _snap: &str) -> Result<(), RuntimeError> {
        Ok(())
    }

    /// The sandbox snapshots the backend holds (at start, those no record
    /// names are a crash's leftovers and deleted). Empty where the
    /// backend cannot tell them from what else it holds.
    async fn list_sandbox_snapshots(&self) -> Result<Vec<String>, RuntimeError> {
        Ok(Vec::new())
    }

    /// Whether [`Runtime::snapshot_sandbox`] is supported.
    fn can_snapshot_sandbox(&self) -> bool {
        false
    }

    /// Whether [`Runtime::hibernate`] is supported.
    fn can_hibernate(&self) -> bool {
        false
    }

    /// Whether a sandbox's `/tmp` is kept by [`Runtime::hibernate`] (on
    /// disk); where it is not (a tmpfs), the engine saves it into the root
    /// filesystem first.
    fn hibernate_keeps_tmp(&self) -> bool {
        false
    }

    /// Whether this backend enforces [`NetworkPolicy`]s on running
    /// sandboxes ([`Runtime::set_network`]). Where it does, the engine
    /// gives every sandbox its policy right after the create (cold) or
    /// when it is handed out (pooled); [`SandboxSpec::network`] `Full`
    /// then means a link that allows nothing until then (what pooled
    /// sandboxes get when the default mode is full). Where it does not,
    /// only the mode is honoured, through the spec.
    fn network_policies(&self) -> bool {
        false
    }

    /// Why this backend cannot give any sandbox `mode: full` (what and
    /// why, for a 400 `UNSUPPORTED`), where it cannot; `None` where it
    /// can (with or without policies).
    fn network_unsupported(&self) -> Option<String> {
        None
    }

    /// Gives a running sandbox `policy`: a link and its rules for mode
    /// `full`, none for `none`. Takes effect for new connections before it
    /// returns; idempotent (also what recovery calls to rebuild the rules
    /// of a sandbox that survived a restart). `Unsupported` where
    /// [`Runtime::network_policies`] is false.
    async fn set_network(
        &self,
        _handle: &SandboxHandle,
        _policy: &NetworkPolicy,
    ) -> Result<(), RuntimeError> {
        Err(RuntimeError::Unsupported(
            "network policies".into(),
            self.name(),
        ))
    }

    /// What sandbox `id`'s policy refused (names and connections), oldest
    /// first; empty where the backend does not record it.
    fn network_events(&self, _id: &str) -> Vec<NetworkDenial> {
        Vec::new()
    }

    /// Refusals recorded since start, all sandboxes.
    fn network_denials_total(&self) -> u64 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shell_environment_layers_defaults_image_identity_and_session() {
        let env = shell_env(
            &[
                "PATH=/opt/bin:/usr/bin".into(),
                "HOME=/root".into(),
                "TOOL=1".into(),
                "junk".into(),
            ],
            &[("TOOL".into(), "2".into()), ("X".into(), "y".into())],
        );
        let get = |k: &str| {
            let hits: Vec<&str> = env
                .iter()
                .filter(|(ek, _)| ek == k)
                .map(|(_, v)| v.as_str())
                .collect();
            assert!(hits.len() <= 1, "{k} set twice: {env:?}");
            hits.first().map(|v| v.to_string())
        };
        assert_eq!(get("PATH").as_deref(), Some("/opt/bin:/usr/bin"));
        assert_eq!(get("HOME").as_deref(), Some("/home/sandbox"));
        assert_eq!(get("TOOL").as_deref(), Some("2"));
        assert_eq!(get("X").as_deref(), Some("y"));
        assert_eq!(get("LANG").as_deref(), Some("C.UTF-8"));
    }
}
