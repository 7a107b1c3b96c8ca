//! Plain domain types the engine speaks (no serde: the API layer owns the
//! wire format).

use time::OffsetDateTime;

pub use sandkasten_runtime::{
    DirEntry, FileStat, FileType, ImageInfo, SandboxStats as SessionStats,
};

/// Where a session's sandbox came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcquireSource {
    Pool,
    Cold,
}

impl AcquireSource {
    pub fn as_str(self) -> &'static str {
        match self {
            AcquireSource::Pool => "pool",
            AcquireSource::Cold => "cold",
        }
    }
}

/// A session as clients see it.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionInfo {
    pub id: String,
    pub image: String,
    pub status: crate::SessionState,
    pub cwd: String,
    pub workspace_id: Option<String>,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub acquire_source: AcquireSource,
}

/// `POST /v1/sessions`.
#[derive(Debug, Clone, Default)]
pub struct CreateSession {
    pub image: Option<String>,
    pub ttl_seconds: Option<u64>,
    pub workspace_id: Option<String>,
}

/// One exec request.
#[derive(Debug, Clone)]
pub struct ExecRequest {
    pub cmd: String,
    pub timeout_ms: Option<u64>,
    pub raw_output: bool,
}

/// The result of a buffered exec.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecResult {
    pub exit_code: i32,
    pub cwd: String,
    pub output: String,
    pub truncated: bool,
    pub duration_ms: u64,
    pub timed_out: bool,
}

/// One event of a streamed exec.
#[derive(Debug, Clone, PartialEq)]
pub enum ExecEvent {
    /// Output as produced; `timestamp_ms` is when it was read (Unix ms).
    Chunk {
        data: String,
        timestamp_ms: i64,
    },
    Done {
        exit_code: i32,
        cwd: String,
        duration_ms: u64,
        timed_out: bool,
        truncated: bool,
    },
    Error {
        message: String,
    },
}

/// A file read.
#[derive(Debug, Clone, PartialEq)]
pub struct FileContent {
    /// Absolute path inside the sandbox.
    pub path: String,
    pub data: Vec<u8>,
    pub truncated: bool,
}

/// A persistent workspace as clients see it.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkspaceInfo {
    pub id: String,
    pub created_at: OffsetDateTime,
    /// When a session last mounted it (None: never).
    pub last_used_at: Option<OffsetDateTime>,
    /// Bytes of files in it.
    pub size_bytes: u64,
    /// Size limit (None: no limit of its own).
    pub quota_bytes: Option<u64>,
    /// True while a live session has it mounted.
    pub in_use: bool,
    pub labels: std::collections::BTreeMap<String, String>,
}

/// `POST /v1/workspaces`.
#[derive(Debug, Clone, Default)]
pub struct CreateWorkspace {
    pub id: String,
    pub quota_bytes: Option<u64>,
    pub labels: std::collections::BTreeMap<String, String>,
    /// `(workspace_id, snapshot_id)`: start with a copy of that snapshot.
    pub from_snapshot: Option<(String, String)>,
}

/// A point-in-time copy of a workspace.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotInfo {
    pub id: String,
    pub workspace_id: String,
    pub created_at: OffsetDateTime,
    pub label: Option<String>,
}
