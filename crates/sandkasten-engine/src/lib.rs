//! The domain of Sandkasten: sessions and their lifecycle, exec, files, the
//! TTL reaper and recovery after a restart. No HTTP, no SQL, no concrete
//! backend: it holds an `Arc<dyn Runtime>` and a `Store`.

mod config;
mod error;
mod types;

pub use config::EngineConfig;
pub use error::EngineError;
pub use types::*;

use sandkasten_runtime::Runtime;
use sandkasten_store::Store;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Lifecycle of a session.
///
/// ```text
/// Creating ──► Running ──► Destroying ──► Destroyed
///    │            │  └──(ttl)──► Destroying ──► Expired
///    └──(fail)──► Failed   └──(sandbox died)──► Lost
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    Creating,
    Running,
    Destroying,
    Destroyed,
    Expired,
    Lost,
    Failed,
}

/// A stream of exec events; dropping it interrupts the command.
pub type ExecStream = mpsc::Receiver<ExecEvent>;

/// The engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    #[allow(dead_code)]
    inner: Arc<()>,
}

impl Engine {
    /// Builds the engine, recovers sessions from the store and starts the
    /// reaper. Background work stops when `shutdown` is cancelled.
    pub async fn start(
        _config: EngineConfig,
        _runtime: Arc<dyn Runtime>,
        _store: Arc<Store>,
        _shutdown: tokio_util::sync::CancellationToken,
    ) -> Result<Engine, EngineError> {
        todo!()
    }

    pub fn config(&self) -> &EngineConfig {
        todo!()
    }

    pub async fn create_session(&self, _req: CreateSession) -> Result<SessionInfo, EngineError> {
        todo!()
    }
    pub async fn list_sessions(&self) -> Vec<SessionInfo> {
        todo!()
    }
    pub async fn get_session(&self, _id: &str) -> Result<SessionInfo, EngineError> {
        todo!()
    }
    pub async fn destroy_session(&self, _id: &str) -> Result<(), EngineError> {
        todo!()
    }
    pub async fn session_stats(&self, _id: &str) -> Result<SessionStats, EngineError> {
        todo!()
    }
    pub async fn exec(&self, _id: &str, _req: ExecRequest) -> Result<ExecResult, EngineError> {
        todo!()
    }
    /// Starts a streamed exec. Errors before the command starts are
    /// returned here; later ones arrive as `ExecEvent::Error`.
    pub async fn exec_stream(
        &self,
        _id: &str,
        _req: ExecRequest,
    ) -> Result<ExecStream, EngineError> {
        todo!()
    }
    /// Relative paths resolve against `/workspace`.
    pub async fn read_file(
        &self,
        _id: &str,
        _path: &str,
        _max_bytes: Option<u64>,
    ) -> Result<FileContent, EngineError> {
        todo!()
    }
    /// Writes a whole file, creating parents; returns the absolute path.
    pub async fn write_file(
        &self,
        _id: &str,
        _path: &str,
        _data: Vec<u8>,
    ) -> Result<String, EngineError> {
        todo!()
    }
    pub async fn list_dir(&self, _id: &str, _path: &str) -> Result<Vec<DirEntry>, EngineError> {
        todo!()
    }
    pub async fn stat(&self, _id: &str, _path: &str) -> Result<FileStat, EngineError> {
        todo!()
    }
    pub async fn mkdir(
        &self,
        _id: &str,
        _path: &str,
        _parents: bool,
    ) -> Result<String, EngineError> {
        todo!()
    }
    pub async fn remove(
        &self,
        _id: &str,
        _path: &str,
        _recursive: bool,
    ) -> Result<(), EngineError> {
        todo!()
    }
    pub async fn list_images(&self) -> Result<Vec<ImageInfo>, EngineError> {
        todo!()
    }
    /// Imports an archive (already on local disk) as image `name`.
    pub async fn import_image(
        &self,
        _name: &str,
        _archive: PathBuf,
    ) -> Result<ImageInfo, EngineError> {
        todo!()
    }
    /// Refused with `ImageInUse` while a live session uses it.
    pub async fn remove_image(&self, _name: &str) -> Result<(), EngineError> {
        todo!()
    }
}

impl SessionState {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Creating => "creating",
            SessionState::Running => "running",
            SessionState::Destroying => "destroying",
            SessionState::Destroyed => "destroyed",
            SessionState::Expired => "expired",
            SessionState::Lost => "lost",
            SessionState::Failed => "failed",
        }
    }
}
