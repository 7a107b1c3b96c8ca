//! Plain domain types the engine speaks (no serde: the API layer owns the
//! wire format).

use time::OffsetDateTime;

pub use sandkasten_runtime::{
    DirEntry, FileStat, FileType, ImageInfo, SandboxStats as SessionStats,
};

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
    pub acquire_source: crate::AcquireSource,
    /// The disk limit (MiB) of the sandbox's own writes outside
    /// `/workspace`; `None` where the backend enforces none.
    pub disk_limit_mb: Option<u64>,
    /// The outbound network policy in force.
    pub network: sandkasten_runtime::NetworkPolicy,
    /// Metadata given at create.
    pub metadata: std::collections::BTreeMap<String, String>,
    /// How far each activity moves `expires_at`.
    pub ttl_seconds: u64,
    /// What the end of its TTL (or idle limit) does.
    pub on_timeout: OnTimeout,
    /// Seconds without activity after which `on_timeout` runs.
    pub idle_timeout_seconds: Option<u64>,
}

/// What a session's timeout does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnTimeout {
    /// The seed's behaviour: the session ends (`expired`).
    #[default]
    Destroy,
    /// Frozen (`paused`), then destroyed after `paused_ttl_seconds`.
    Pause,
    /// Hibernated (`hibernated`), then destroyed after
    /// `hibernated_ttl_seconds`.
    Hibernate,
}

impl OnTimeout {
    pub const ALL: [OnTimeout; 3] = [OnTimeout::Destroy, OnTimeout::Pause, OnTimeout::Hibernate];

    pub fn as_str(self) -> &'static str {
        match self {
            OnTimeout::Destroy => "destroy",
            OnTimeout::Pause => "pause",
            OnTimeout::Hibernate => "hibernate",
        }
    }

    pub fn parse(s: &str) -> Option<OnTimeout> {
        Self::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

/// `POST /v1/sessions`.
#[derive(Debug, Clone, Default)]
pub struct CreateSession {
    pub image: Option<String>,
    pub ttl_seconds: Option<u64>,
    pub workspace_id: Option<String>,
    /// Extra environment variables of the session's shell.
    pub env: Vec<(String, String)>,
    /// Disk limit (MiB) of this session instead of the default; validated
    /// by the engine (at least 1, at most the configured cap).
    pub disk_limit_mb: Option<i64>,
    /// The session's network policy (`network`); `None`: the v1 field or
    /// the daemon's default.
    pub network: Option<crate::NetworkRequest>,
    /// The v1 clients' `network_mode`.
    pub network_mode: Option<sandkasten_runtime::NetworkMode>,
    /// Metadata kept with the session (at most 64 keys; keys 1 to 256
    /// bytes, values at most 4096), stored and shown as given.
    pub metadata: std::collections::BTreeMap<String, String>,
    /// What its timeout does (`None`: the configured default).
    pub on_timeout: Option<OnTimeout>,
    /// Its idle limit in seconds (`None`: the configured default; 0: none).
    pub idle_timeout_seconds: Option<u64>,
    /// Start on a copy of this sandbox snapshot (its image, its
    /// filesystem state, a copy of its workspace); not with `image` or
    /// `workspace_id`. An `image` naming a snapshot is the same.
    pub from_snapshot: Option<String>,
}

/// The pool, per image (`GET /v1/pool`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PoolStats {
    pub images: std::collections::BTreeMap<String, ImagePoolStats>,
}

/// One image's pool. Counters count since the daemon started.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImagePoolStats {
    /// Configured size.
    pub target: usize,
    /// Ready sandboxes waiting to be handed out.
    pub idle: usize,
    /// Sandboxes being started to refill the pool.
    pub in_flight: usize,
    /// Creates served from the pool.
    pub hits: u64,
    /// Creates of this image served cold (the pool was empty).
    pub misses: u64,
    /// Pooled sandboxes found dead (or unresponsive) and thrown away.
    pub discarded: u64,
    /// Pooled sandboxes replaced after `max_idle_seconds` unused.
    pub recycled: u64,
    pub refill_failures: u64,
    pub last_error: Option<String>,
    /// Time a create spent taking and preparing a pooled sandbox (hits
    /// only), over the last 1024 hits; `None` before the first hit.
    pub acquire_wait_p50_ms: Option<f64>,
    pub acquire_wait_p95_ms: Option<f64>,
}

/// Counters and histograms for `GET /metrics`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricsSnapshot {
    pub pool: PoolStats,
    /// Live sessions by state (`creating`, `running`, `destroying`).
    pub sessions: Vec<(&'static str, u64)>,
    /// Sessions that ended since start, by final state.
    pub sessions_ended: Vec<(&'static str, u64)>,
    /// Creates since start by source (`pool`, `cold`).
    pub creates: Vec<(&'static str, u64)>,
    pub exec_duration: HistogramSnapshot,
    pub pool_acquire: HistogramSnapshot,
    /// Names and connections sandboxes' policies refused since start.
    pub network_denials: u64,
    /// Cold creates' steps since start: (name, total seconds, count).
    pub cold_create_phases: Vec<(String, f64, u64)>,
    /// Pooled creates' steps since start: (name, total seconds, count).
    pub pool_create_phases: Vec<(String, f64, u64)>,
}

/// A cumulative histogram: `buckets` are (upper bound in seconds, count of
/// observations ≤ it).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistogramSnapshot {
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum_seconds: f64,
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

/// A file being read, from a session or a workspace: its path as the
/// client names it, then its content in chunks as the sandbox (or the
/// workspace's reader) produces them, then whether the file went on beyond
/// the cap. The producer waits for the consumer, so a read holds a few
/// chunks, never the file. Dropping it ends the read (and releases the
/// workspace a session-less read holds).
pub struct FileReader {
    /// Absolute path inside the sandbox (`/workspace/…` for a workspace).
    pub path: String,
    stream: sandkasten_runtime::FileStream,
    /// Kept until the read ends: a session-less read's workspace hold.
    _hold: Option<Box<dyn Send>>,
}

impl std::fmt::Debug for FileReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileReader")
            .field("path", &self.path)
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

impl FileReader {
    pub(crate) fn new(
        path: String,
        stream: sandkasten_runtime::FileStream,
        hold: Option<Box<dyn Send>>,
    ) -> FileReader {
        FileReader {
            path,
            stream,
            _hold: hold,
        }
    }

    /// A read of content already in memory (for tests of the layers above).
    pub fn from_bytes(path: impl Into<String>, data: Vec<u8>, truncated: bool) -> FileReader {
        let path = path.into();
        let stream = sandkasten_runtime::FileStream::from_bytes(path.clone(), data, truncated);
        FileReader::new(path, stream, None)
    }

    /// The next chunk (never empty); `None` at the end. An error ends the
    /// read (the content so far is incomplete).
    pub async fn next(&mut self) -> Option<Result<Vec<u8>, crate::EngineError>> {
        let item = self.stream.next().await?;
        Some(item.map_err(crate::EngineError::runtime("reading a file")))
    }

    /// Whether the file goes on beyond the cap: known once
    /// [`FileReader::next`] returned `None`.
    pub fn truncated(&self) -> bool {
        self.stream.truncated()
    }

    /// Collects the whole content: only for what is known to be small.
    pub async fn read_all(mut self) -> Result<FileContent, crate::EngineError> {
        let mut data = Vec::new();
        while let Some(chunk) = self.next().await {
            data.extend_from_slice(&chunk?);
        }
        Ok(FileContent {
            truncated: self.truncated(),
            path: self.path,
            data,
        })
    }
}

/// A file read whole ([`FileReader::read_all`]).
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
