//! The seam between the handlers and the engine: the engine methods the API
//! calls, as an object-safe trait. The router holds an `Arc<dyn Backend>`,
//! which is the real [`Engine`] in production and a scripted fake in this
//! crate's tests, so the HTTP behaviour is testable without sandboxes.

use async_trait::async_trait;
use sandkasten_engine::{
    CreateSession, CreateWorkspace, DirEntry, Engine, EngineError, ExecRequest, ExecResult,
    ExecStream, FileReader, FileStat, MetricsSnapshot, PoolStats, PortStream, ProcInfo, ProcOutput,
    ProcRef, ProcSpec, PtySize, SandboxSnapshotInfo, SessionInfo, SessionStats, StartedProcess,
    WorkspaceInfo,
};

/// What the test fake does not script.
fn unsupported_here(what: &str) -> EngineError {
    EngineError::Unsupported {
        what: what.into(),
        runtime: "test",
    }
}

/// What the HTTP layer needs from the engine; each method is one engine
/// method with the same signature.
#[async_trait]
pub(crate) trait Backend: Send + Sync + 'static {
    async fn create_session(&self, req: CreateSession) -> Result<SessionInfo, EngineError>;
    async fn list_sessions(&self) -> Vec<SessionInfo>;
    async fn get_session(&self, id: &str) -> Result<SessionInfo, EngineError>;
    async fn destroy_session(&self, id: &str) -> Result<(), EngineError>;
    async fn set_network(
        &self,
        id: &str,
        req: sandkasten_engine::NetworkRequest,
    ) -> Result<SessionInfo, EngineError>;
    async fn network_events(
        &self,
        id: &str,
    ) -> Result<Vec<sandkasten_engine::NetworkDenial>, EngineError>;
    async fn session_stats(&self, id: &str) -> Result<SessionStats, EngineError>;
    async fn exec(&self, id: &str, req: ExecRequest) -> Result<ExecResult, EngineError>;
    async fn exec_stream(&self, id: &str, req: ExecRequest) -> Result<ExecStream, EngineError>;
    async fn read_file(
        &self,
        id: &str,
        path: &str,
        max_bytes: Option<u64>,
    ) -> Result<FileReader, EngineError>;
    async fn write_file(&self, id: &str, path: &str, data: Vec<u8>) -> Result<String, EngineError>;
    async fn list_dir(&self, id: &str, path: &str) -> Result<Vec<DirEntry>, EngineError>;
    async fn stat(&self, id: &str, path: &str) -> Result<FileStat, EngineError>;
    async fn mkdir(&self, id: &str, path: &str, parents: bool) -> Result<String, EngineError>;
    async fn remove(&self, id: &str, path: &str, recursive: bool) -> Result<(), EngineError>;
    async fn rename(&self, id: &str, from: &str, to: &str) -> Result<String, EngineError>;

    async fn list_workspaces(&self) -> Result<Vec<WorkspaceInfo>, EngineError>;
    async fn create_workspace(&self, req: CreateWorkspace) -> Result<WorkspaceInfo, EngineError>;
    async fn get_workspace(&self, id: &str) -> Result<WorkspaceInfo, EngineError>;
    async fn delete_workspace(&self, id: &str) -> Result<(), EngineError>;
    // Snapshots: the test fake does not script them (they are proven end
    // to end in tests/workspaces.rs), hence the defaults.
    async fn create_snapshot(
        &self,
        _id: &str,
        _label: Option<String>,
    ) -> Result<sandkasten_engine::SnapshotInfo, EngineError> {
        Err(EngineError::Unsupported {
            what: "snapshots".into(),
            runtime: "test",
        })
    }
    async fn list_snapshots(
        &self,
        _id: &str,
    ) -> Result<Vec<sandkasten_engine::SnapshotInfo>, EngineError> {
        Err(EngineError::Unsupported {
            what: "snapshots".into(),
            runtime: "test",
        })
    }
    async fn delete_snapshot(&self, _id: &str, _snap: &str) -> Result<(), EngineError> {
        Err(EngineError::Unsupported {
            what: "snapshots".into(),
            runtime: "test",
        })
    }
    async fn restore_snapshot(&self, _id: &str, _snap: &str) -> Result<(), EngineError> {
        Err(EngineError::Unsupported {
            what: "snapshots".into(),
            runtime: "test",
        })
    }
    // Export and import: like snapshots, proven end to end.
    async fn export_workspace(
        &self,
        _id: &str,
    ) -> Result<tokio::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>, EngineError> {
        Err(EngineError::Unsupported {
            what: "export".into(),
            runtime: "test",
        })
    }
    async fn import_workspace(
        &self,
        _id: &str,
        _archive: std::path::PathBuf,
    ) -> Result<(), EngineError> {
        Err(EngineError::Unsupported {
            what: "import".into(),
            runtime: "test",
        })
    }
    fn scratch_dir(&self) -> std::path::PathBuf {
        std::env::temp_dir()
    }
    async fn workspace_list_dir(&self, id: &str, path: &str) -> Result<Vec<DirEntry>, EngineError>;
    async fn workspace_read_file(
        &self,
        id: &str,
        path: &str,
        max_bytes: Option<u64>,
    ) -> Result<FileReader, EngineError>;
    async fn workspace_write_file(
        &self,
        id: &str,
        path: &str,
        data: Vec<u8>,
    ) -> Result<String, EngineError>;

    fn pool_stats(&self) -> PoolStats;
    fn metrics(&self) -> MetricsSnapshot;

    // Pause and resume: proven end to end (tests/lifecycle.rs), hence the
    // defaults.
    async fn pause_session(&self, _id: &str) -> Result<SessionInfo, EngineError> {
        Err(unsupported_here("pause"))
    }
    async fn resume_session(&self, _id: &str) -> Result<SessionInfo, EngineError> {
        Err(unsupported_here("resume"))
    }
    async fn hibernate_session(&self, _id: &str) -> Result<SessionInfo, EngineError> {
        Err(unsupported_here("hibernate"))
    }
    async fn snapshot_session(
        &self,
        _id: &str,
        _label: Option<String>,
    ) -> Result<SandboxSnapshotInfo, EngineError> {
        Err(unsupported_here("sandbox snapshots"))
    }
    async fn list_sandbox_snapshots(&self) -> Result<Vec<SandboxSnapshotInfo>, EngineError> {
        Err(unsupported_here("sandbox snapshots"))
    }
    async fn sandbox_snapshot(&self, _snap: &str) -> Result<SandboxSnapshotInfo, EngineError> {
        Err(unsupported_here("sandbox snapshots"))
    }
    async fn delete_sandbox_snapshot(&self, _snap: &str) -> Result<(), EngineError> {
        Err(unsupported_here("sandbox snapshots"))
    }
    async fn fork_session(&self, _id: &str, _count: u64) -> Result<Vec<SessionInfo>, EngineError> {
        Err(unsupported_here("fork"))
    }

    // Processes: proven end to end (tests/processes.rs), hence the
    // defaults.
    async fn start_process(
        &self,
        _id: &str,
        _spec: ProcSpec,
        _attach: bool,
    ) -> Result<StartedProcess, EngineError> {
        Err(unsupported_here("processes"))
    }
    async fn attach_process(
        &self,
        _id: &str,
        _proc: ProcRef,
        _replay: bool,
    ) -> Result<ProcOutput, EngineError> {
        Err(unsupported_here("processes"))
    }
    async fn list_processes(&self, _id: &str) -> Result<Vec<ProcInfo>, EngineError> {
        Err(unsupported_here("processes"))
    }
    async fn process(&self, _id: &str, _proc: ProcRef) -> Result<ProcInfo, EngineError> {
        Err(unsupported_here("processes"))
    }
    async fn process_input(
        &self,
        _id: &str,
        _proc: ProcRef,
        _data: Vec<u8>,
    ) -> Result<(), EngineError> {
        Err(unsupported_here("processes"))
    }
    async fn close_process_stdin(&self, _id: &str, _proc: ProcRef) -> Result<(), EngineError> {
        Err(unsupported_here("processes"))
    }
    async fn signal_process(
        &self,
        _id: &str,
        _proc: ProcRef,
        _signal: i32,
    ) -> Result<(), EngineError> {
        Err(unsupported_here("processes"))
    }
    async fn resize_process(
        &self,
        _id: &str,
        _proc: ProcRef,
        _size: PtySize,
    ) -> Result<(), EngineError> {
        Err(unsupported_here("processes"))
    }

    // Ports: proven end to end (tests/ports.rs), hence the default.
    async fn connect_port(&self, _id: &str, _port: u16) -> Result<PortStream, EngineError> {
        Err(EngineError::Unsupported {
            what: "ports".into(),
            runtime: "test",
        })
    }
}

#[async_trait]
impl Backend for Engine {
    async fn create_session(&self, req: CreateSession) -> Result<SessionInfo, EngineError> {
        Engine::create_session(self, req).await
    }
    async fn list_sessions(&self) -> Vec<SessionInfo> {
        Engine::list_sessions(self).await
    }
    async fn get_session(&self, id: &str) -> Result<SessionInfo, EngineError> {
        Engine::get_session(self, id).await
    }
    async fn destroy_session(&self, id: &str) -> Result<(), EngineError> {
        Engine::destroy_session(self, id).await
    }
    async fn set_network(
        &self,
        id: &str,
        req: sandkasten_engine::NetworkRequest,
    ) -> Result<SessionInfo, EngineError> {
        Engine::set_network(self, id, req).await
    }
    async fn network_events(
        &self,
        id: &str,
    ) -> Result<Vec<sandkasten_engine::NetworkDenial>, EngineError> {
        Engine::network_events(self, id).await
    }
    async fn session_stats(&self, id: &str) -> Result<SessionStats, EngineError> {
        Engine::session_stats(self, id).await
    }
    async fn exec(&self, id: &str, req: ExecRequest) -> Result<ExecResult, EngineError> {
        Engine::exec(self, id, req).await
    }
    async fn exec_stream(&self, id: &str, req: ExecRequest) -> Result<ExecStream, EngineError> {
        Engine::exec_stream(self, id, req).await
    }
    async fn read_file(
        &self,
        id: &str,
        path: &str,
        max_bytes: Option<u64>,
    ) -> Result<FileReader, EngineError> {
        Engine::read_file(self, id, path, max_bytes).await
    }
    async fn write_file(&self, id: &str, path: &str, data: Vec<u8>) -> Result<String, EngineError> {
        Engine::write_file(self, id, path, data).await
    }
    async fn list_dir(&self, id: &str, path: &str) -> Result<Vec<DirEntry>, EngineError> {
        Engine::list_dir(self, id, path).await
    }
    async fn stat(&self, id: &str, path: &str) -> Result<FileStat, EngineError> {
        Engine::stat(self, id, path).await
    }
    async fn mkdir(&self, id: &str, path: &str, parents: bool) -> Result<String, EngineError> {
        Engine::mkdir(self, id, path, parents).await
    }
    async fn remove(&self, id: &str, path: &str, recursive: bool) -> Result<(), EngineError> {
        Engine::remove(self, id, path, recursive).await
    }
    async fn rename(&self, id: &str, from: &str, to: &str) -> Result<String, EngineError> {
        Engine::rename(self, id, from, to).await
    }

    async fn list_workspaces(&self) -> Result<Vec<WorkspaceInfo>, EngineError> {
        Engine::list_workspaces(self).await
    }
    async fn create_workspace(&self, req: CreateWorkspace) -> Result<WorkspaceInfo, EngineError> {
        Engine::create_workspace(self, req).await
    }
    async fn get_workspace(&self, id: &str) -> Result<WorkspaceInfo, EngineError> {
        Engine::get_workspace(self, id).await
    }
    async fn delete_workspace(&self, id: &str) -> Result<(), EngineError> {
        Engine::delete_workspace(self, id).await
    }
    async fn create_snapshot(
        &self,
        id: &str,
        label: Option<String>,
    ) -> Result<sandkasten_engine::SnapshotInfo, EngineError> {
        Engine::create_snapshot(self, id, label).await
    }
    async fn list_snapshots(
        &self,
        id: &str,
    ) -> Result<Vec<sandkasten_engine::SnapshotInfo>, EngineError> {
        Engine::list_snapshots(self, id).await
    }
    async fn delete_snapshot(&self, id: &str, snap: &str) -> Result<(), EngineError> {
        Engine::delete_snapshot(self, id, snap).await
    }
    async fn restore_snapshot(&self, id: &str, snap: &str) -> Result<(), EngineError> {
        Engine::restore_snapshot(self, id, snap).await
    }
    async fn export_workspace(
        &self,
        id: &str,
    ) -> Result<tokio::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>, EngineError> {
        Engine::export_workspace(self, id).await
    }
    async fn import_workspace(
        &self,
        id: &str,
        archive: std::path::PathBuf,
    ) -> Result<(), EngineError> {
        Engine::import_workspace(self, id, archive).await
    }
    fn scratch_dir(&self) -> std::path::PathBuf {
        Engine::scratch_dir(self)
    }
    async fn workspace_list_dir(&self, id: &str, path: &str) -> Result<Vec<DirEntry>, EngineError> {
        Engine::workspace_list_dir(self, id, path).await
    }
    async fn workspace_read_file(
        &self,
        id: &str,
        path: &str,
        max_bytes: Option<u64>,
    ) -> Result<FileReader, EngineError> {
        Engine::workspace_read_file(self, id, path, max_bytes).await
    }
    async fn workspace_write_file(
        &self,
        id: &str,
        path: &str,
        data: Vec<u8>,
    ) -> Result<String, EngineError> {
        Engine::workspace_write_file(self, id, path, data).await
    }
    fn pool_stats(&self) -> PoolStats {
        Engine::pool_stats(self)
    }
    fn metrics(&self) -> MetricsSnapshot {
        Engine::metrics(self)
    }
    async fn connect_port(&self, id: &str, port: u16) -> Result<PortStream, EngineError> {
        Engine::connect_port(self, id, port).await
    }
    async fn pause_session(&self, id: &str) -> Result<SessionInfo, EngineError> {
        Engine::pause_session(self, id).await
    }
    async fn resume_session(&self, id: &str) -> Result<SessionInfo, EngineError> {
        Engine::resume_session(self, id).await
    }
    async fn hibernate_session(&self, id: &str) -> Result<SessionInfo, EngineError> {
        Engine::hibernate_session(self, id).await
    }
    async fn snapshot_session(
        &self,
        id: &str,
        label: Option<String>,
    ) -> Result<SandboxSnapshotInfo, EngineError> {
        Engine::snapshot_session(self, id, label).await
    }
    async fn list_sandbox_snapshots(&self) -> Result<Vec<SandboxSnapshotInfo>, EngineError> {
        Engine::list_sandbox_snapshots(self).await
    }
    async fn sandbox_snapshot(&self, snap: &str) -> Result<SandboxSnapshotInfo, EngineError> {
        Engine::sandbox_snapshot(self, snap).await
    }
    async fn delete_sandbox_snapshot(&self, snap: &str) -> Result<(), EngineError> {
        Engine::delete_sandbox_snapshot(self, snap).await
    }
    async fn fork_session(&self, id: &str, count: u64) -> Result<Vec<SessionInfo>, EngineError> {
        Engine::fork_session(self, id, count).await
    }
    async fn start_process(
        &self,
        id: &str,
        spec: ProcSpec,
        attach: bool,
    ) -> Result<StartedProcess, EngineError> {
        Engine::start_process(self, id, spec, attach).await
    }
    async fn attach_process(
        &self,
        id: &str,
        proc: ProcRef,
        replay: bool,
    ) -> Result<ProcOutput, EngineError> {
        Engine::attach_process(self, id, proc, replay).await
    }
    async fn list_processes(&self, id: &str) -> Result<Vec<ProcInfo>, EngineError> {
        Engine::list_processes(self, id).await
    }
    async fn process(&self, id: &str, proc: ProcRef) -> Result<ProcInfo, EngineError> {
        Engine::process(self, id, proc).await
    }
    async fn process_input(
        &self,
        id: &str,
        proc: ProcRef,
        data: Vec<u8>,
    ) -> Result<(), EngineError> {
        Engine::process_input(self, id, proc, data).await
    }
    async fn close_process_stdin(&self, id: &str, proc: ProcRef) -> Result<(), EngineError> {
        Engine::close_process_stdin(self, id, proc).await
    }
    async fn signal_process(
        &self,
        id: &str,
        proc: ProcRef,
        signal: i32,
    ) -> Result<(), EngineError> {
        Engine::signal_process(self, id, proc, signal).await
    }
    async fn resize_process(
        &self,
        id: &str,
        proc: ProcRef,
        size: PtySize,
    ) -> Result<(), EngineError> {
        Engine::resize_process(self, id, proc, size).await
    }
}
