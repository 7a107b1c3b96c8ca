//! The domain of Sandkasten: sessions and their lifecycle, exec, files,
//! workspaces, the pre-warmed pool, the TTL reaper and recovery after a
//! restart. No HTTP, no SQL, no concrete backend, no agent wire protocol:
//! it holds an `Arc<dyn Runtime>` and a `Store`.
//!
//! Parts, each owning its state: `sessions.rs` (the live sessions, their
//! exec queues), `pool.rs` (the pool), `workspace.rs` (workspace locks and
//! operations), `db.rs` (the store off the async threads); `session.rs`
//! composes them into the [`Engine`].

mod bodies;
mod config;
mod db;
mod error;
mod lifecycle;
mod metrics;
mod network;
mod pool;
mod procs;
mod session;
mod sessions;
mod snapshots;
mod text;
mod types;
mod watch;
mod workspace;

#[cfg(test)]
mod tests;

pub use bodies::{BodiesFull, BodyBudget, BodyClaim};
pub use config::EngineConfig;
pub use error::{
    EngineError, FileError, Holder, ImageError, PortError, ProcessError, SessionError,
    WorkspaceError,
};
pub use network::{NetworkConfig, NetworkRequest};
pub use pool::{PoolConfig, PoolError};
pub use procs::{check_process_tag, StartedProcess, MAX_PROCESS_TAG};
pub use sandkasten_runtime::PortStream;
pub use sandkasten_runtime::{meta_problem, MAX_META_BYTES};
pub use sandkasten_runtime::{
    FileOp, FileReply, FileUser, WatchEvent, WatchEventKind, MAX_WATCHED_DIRS, MAX_WATCHES,
};
pub use sandkasten_runtime::{IpNet, NetEntry, NetworkDenial, NetworkMode, NetworkPolicy};
pub use sandkasten_runtime::{
    ProcEnd, ProcEvent, ProcInfo, ProcOutput, ProcRef, ProcSpec, ProcStream, PtySize,
};
pub use sandkasten_store::{AcquireSource, SessionState};
pub use session::Engine;
pub use snapshots::{is_sandbox_snapshot, SandboxSnapshotInfo, SANDBOX_SNAPSHOT_PREFIX};
pub use types::*;
pub use watch::Watch;
pub use workspace::{check_workspace_id, MIN_QUOTA_BYTES};

use tokio::sync::mpsc;

/// A stream of exec events; dropping it interrupts the command.
pub type ExecStream = mpsc::Receiver<ExecEvent>;
