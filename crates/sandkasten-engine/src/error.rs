//! The engine's error type; the API maps each variant to a status code.

use sandkasten_runtime::RuntimeError;
use sandkasten_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    InvalidImage(String),
    #[error("{0}")]
    InvalidWorkspace(String),
    #[error("{0}")]
    InvalidPath(String),
    #[error("session {0} not found")]
    SessionNotFound(String),
    #[error("session {id} is {state}, not running")]
    SessionNotRunning { id: String, state: &'static str },
    #[error("{0}")]
    FileNotFound(String),
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("image {0} not found")]
    ImageNotFound(String),
    #[error("image {image} is used by session {session}")]
    ImageInUse { image: String, session: String },
    #[error("workspaces are disabled in this daemon's configuration")]
    WorkspaceDisabled,
    #[error("workspace {0} not found")]
    WorkspaceNotFound(String),
    #[error("snapshot {0} not found")]
    SnapshotNotFound(String),
    #[error("workspace {id} is mounted by session {session}")]
    WorkspaceInUse { id: String, session: String },
    #[error("session limit of {0} reached")]
    CapacityExhausted(usize),
    #[error("the daemon is shutting down")]
    ShuttingDown,
    #[error("while {context}: {source}")]
    Runtime {
        context: &'static str,
        #[source]
        source: RuntimeError,
    },
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}
