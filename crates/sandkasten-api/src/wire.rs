//! The wire format: every JSON body the API reads or writes, with its
//! OpenAPI schema, and the conversions from the engine's plain types.
//!
//! Request types ignore unknown fields (clients may send more than we know)
//! but reject wrong types. Response types serialize every field, `null`
//! included, so clients can rely on the keys being present.

mod processes;
pub(crate) use processes::*;

use sandkasten_engine as engine;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};
use utoipa::{IntoParams, ToSchema};

/// `{"status": "ok"}` of `GET /healthz`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Health {
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// `{"ok": true}`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct OkResponse {
    pub ok: bool,
}

impl OkResponse {
    pub(crate) const TRUE: OkResponse = OkResponse { ok: true };
}

/// Body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    /// Stable, machine-readable code, e.g. `SESSION_NOT_FOUND`.
    #[schema(example = "SESSION_NOT_FOUND")]
    pub error_code: &'static str,
    /// Human-readable description.
    #[schema(example = "session abc not found")]
    pub message: String,
    /// Structured context; an empty object when there is none.
    #[schema(value_type = Object)]
    pub details: serde_json::Map<String, serde_json::Value>,
}

// ---------------------------------------------------------------- sessions

/// `POST /v1/sessions`; every field is optional and an empty body is `{}`.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub(crate) struct CreateSessionRequest {
    /// Image to start; the daemon's `default_image` when absent.
    #[schema(example = "base")]
    pub image: Option<String>,
    /// This session's own TTL; activity extends `expires_at` by it.
    #[schema(example = 600)]
    pub ttl_seconds: Option<u64>,
    /// Persistent workspace to mount at `/workspace`; ephemeral when absent.
    #[schema(
        example = "user123-project456",
        pattern = r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$"
    )]
    pub workspace_id: Option<String>,
    /// Extra environment variables of the session's shell (an extension of
    /// the v1 contract). Names: `[A-Za-z_][A-Za-z0-9_]*`; at most 128
    /// variables, 64 KiB in all.
    #[schema(example = json!({"PROJECT": "demo"}))]
    pub env: Option<BTreeMap<String, String>>,
    /// Disk limit (MiB) of the sandbox's own writes outside `/workspace`
    /// (root filesystem changes, home, `/tmp`, `/var/tmp`), instead of the
    /// daemon's `defaults.disk_limit_mb`; at least 1, at most
    /// `defaults.max_disk_limit_mb`.
    #[schema(example = 2048)]
    pub disk_limit_mb: Option<i64>,
    /// The session's outbound network policy (see `NetworkPolicyRequest`);
    /// the daemon's `defaults` when absent.
    pub network: Option<NetworkPolicyRequest>,
    /// The v1 clients' network field: `{"network_mode": "full"}` is
    /// `{"network": {"mode": "full"}}`. Not together with `network`.
    pub network_mode: Option<NetworkMode>,
    /// Strings kept with the session and shown with it (at most 64 keys of
    /// 1 to 256 bytes, values up to 4096 bytes); the E2B API's `metadata`.
    #[schema(example = json!({"owner": "agent-7"}))]
    pub metadata: Option<BTreeMap<String, String>>,
    /// What the end of the TTL (or of the idle limit) does: `destroy` (the
    /// session ends, `expired`), `pause` or `hibernate`; the daemon's
    /// `defaults.on_timeout` when absent.
    pub on_timeout: Option<OnTimeout>,
    /// Seconds without activity (no API call, and under 5 ms of CPU time
    /// in the sandbox) after which `on_timeout` runs; 0: none; at most
    /// 2592000. The daemon's `defaults.idle_timeout_seconds` when absent.
    #[schema(example = 600)]
    pub idle_timeout_seconds: Option<u64>,
    /// Start on a copy of this sandbox snapshot (`ssnap-…`): its image,
    /// its filesystem state and a copy of its workspace (a new persistent
    /// workspace when it had one). Not with `image` or `workspace_id`; an
    /// `image` naming a snapshot is the same.
    #[schema(example = "ssnap-0c1d2e3f4a5b6c7d8e9f0a1b")]
    pub from_snapshot: Option<String>,
}

/// What a session's timeout does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum OnTimeout {
    Destroy,
    Pause,
    Hibernate,
}

impl From<OnTimeout> for engine::OnTimeout {
    fn from(o: OnTimeout) -> Self {
        match o {
            OnTimeout::Destroy => engine::OnTimeout::Destroy,
            OnTimeout::Pause => engine::OnTimeout::Pause,
            OnTimeout::Hibernate => engine::OnTimeout::Hibernate,
        }
    }
}

impl From<engine::OnTimeout> for OnTimeout {
    fn from(o: engine::OnTimeout) -> Self {
        match o {
            engine::OnTimeout::Destroy => OnTimeout::Destroy,
            engine::OnTimeout::Pause => OnTimeout::Pause,
            engine::OnTimeout::Hibernate => OnTimeout::Hibernate,
        }
    }
}

/// A network mode: `none` (loopback only) or `full` (outbound, under the
/// policy's lists).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum NetworkMode {
    None,
    Full,
}

impl From<NetworkMode> for engine::NetworkMode {
    fn from(m: NetworkMode) -> Self {
        match m {
            NetworkMode::None => engine::NetworkMode::None,
            NetworkMode::Full => engine::NetworkMode::Full,
        }
    }
}

impl From<engine::NetworkMode> for NetworkMode {
    fn from(m: engine::NetworkMode) -> Self {
        match m {
            engine::NetworkMode::None => NetworkMode::None,
            engine::NetworkMode::Full => NetworkMode::Full,
        }
    }
}

/// A network policy as a client asks for it (`network` of a create, the
/// body of `PUT /v1/sessions/{id}/network`). Entries are host names
/// (`pypi.org`), wildcards (`*.github.com`: names below it), IPv4/IPv6
/// addresses and CIDRs; at most 256 per list. `deny_out` wins over
/// `allow_out`; the daemon's `network.deny_always` ranges are never
/// reachable and no `allow_out` CIDR may overlap them.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub(crate) struct NetworkPolicyRequest {
    /// `full` or `none`; the daemon's `defaults.network_mode` when absent.
    #[schema(example = "full")]
    pub mode: Option<NetworkMode>,
    /// With `full`: only these destinations (empty or absent: everything
    /// not denied).
    #[schema(example = json!(["pypi.org", "*.github.com", "203.0.113.0/24"]))]
    pub allow_out: Option<Vec<String>>,
    /// Destinations refused even when `allow_out` covers them.
    #[schema(example = json!(["203.0.113.9"]))]
    pub deny_out: Option<Vec<String>>,
}

impl From<NetworkPolicyRequest> for engine::NetworkRequest {
    fn from(r: NetworkPolicyRequest) -> Self {
        engine::NetworkRequest {
            mode: r.mode.map(Into::into),
            allow_out: r.allow_out.unwrap_or_default(),
            deny_out: r.deny_out.unwrap_or_default(),
        }
    }
}

/// The network policy in force (normalised: host names lower case,
/// duplicates folded).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct NetworkPolicy {
    #[schema(example = "full")]
    pub mode: NetworkMode,
    #[schema(example = json!(["pypi.org", "*.github.com", "203.0.113.0/24"]))]
    pub allow_out: Vec<String>,
    #[schema(example = json!(["203.0.113.9"]))]
    pub deny_out: Vec<String>,
}

impl From<engine::NetworkPolicy> for NetworkPolicy {
    fn from(p: engine::NetworkPolicy) -> Self {
        let list = |v: Vec<engine::NetEntry>| v.iter().map(ToString::to_string).collect();
        NetworkPolicy {
            mode: p.mode.into(),
            allow_out: list(p.allow_out),
            deny_out: list(p.deny_out),
        }
    }
}

impl From<CreateSessionRequest> for engine::CreateSession {
    fn from(r: CreateSessionRequest) -> Self {
        engine::CreateSession {
            image: r.image,
            ttl_seconds: r.ttl_seconds,
            workspace_id: r.workspace_id,
            env: r.env.unwrap_or_default().into_iter().collect(),
            disk_limit_mb: r.disk_limit_mb,
            network: r.network.map(Into::into),
            network_mode: r.network_mode.map(Into::into),
            metadata: r.metadata.unwrap_or_default(),
            on_timeout: r.on_timeout.map(Into::into),
            idle_timeout_seconds: r.idle_timeout_seconds,
            from_snapshot: r.from_snapshot,
        }
    }
}

/// A session as clients see it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SessionInfo {
    pub id: String,
    #[schema(example = "base")]
    pub image: String,
    /// `creating`, `running`, `paused`, `hibernated`, `destroying`,
    /// `destroyed`, `expired`, `lost` or `failed`.
    #[schema(example = "running")]
    pub status: &'static str,
    /// The shell's working directory after the last exec.
    #[schema(example = "/workspace")]
    pub cwd: String,
    /// `null` for an ephemeral session.
    #[schema(required = true)]
    pub workspace_id: Option<String>,
    /// RFC 3339, UTC.
    #[schema(format = DateTime, example = "2026-02-08T10:00:00.123Z")]
    pub created_at: String,
    /// RFC 3339, UTC.
    #[schema(format = DateTime, example = "2026-02-08T10:30:00.123Z")]
    pub expires_at: String,
    /// `pool` when a pre-warmed sandbox served the create, else `cold`.
    #[schema(example = "pool")]
    pub acquire_source: &'static str,
    /// The disk limit (MiB) in force for the sandbox's own writes outside
    /// `/workspace`; `null` where the backend does not enforce one.
    #[schema(required = true, example = 4096)]
    pub disk_limit_mb: Option<u64>,
    /// The outbound network policy in force.
    pub network: NetworkPolicy,
    /// Metadata given at create (`{}` when none).
    #[schema(example = json!({"owner": "agent-7"}))]
    pub metadata: BTreeMap<String, String>,
    /// What the end of its TTL (or idle limit) does.
    pub on_timeout: OnTimeout,
    /// Its idle limit in seconds; `null`: none.
    #[schema(required = true, example = 600)]
    pub idle_timeout_seconds: Option<u64>,
}

/// `POST /v1/sessions/{id}/hibernate`: the session, and what hibernation
/// keeps and loses.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct HibernatedSession {
    #[serde(flatten)]
    pub session: SessionInfo,
    /// `filesystem`: the root filesystem's changes, `/tmp`, `/workspace`,
    /// the shell's cwd and exported variables are kept.
    #[schema(example = "filesystem")]
    pub mode: &'static str,
    /// What is not kept: `processes` (every process ends; a wake starts a
    /// new shell) and `memory`.
    #[schema(example = json!(["processes", "memory"]))]
    pub lost: Vec<&'static str>,
}

impl From<engine::SessionInfo> for SessionInfo {
    fn from(s: engine::SessionInfo) -> Self {
        SessionInfo {
            id: s.id,
            image: s.image,
            status: s.status.as_str(),
            cwd: s.cwd,
            workspace_id: s.workspace_id,
            created_at: rfc3339(s.created_at),
            expires_at: rfc3339(s.expires_at),
            acquire_source: s.acquire_source.as_str(),
            disk_limit_mb: s.disk_limit_mb,
            network: s.network.into(),
            metadata: s.metadata,
            on_timeout: s.on_timeout.into(),
            idle_timeout_seconds: s.idle_timeout_seconds,
        }
    }
}

/// What a session's network policy refused (`GET
/// /v1/sessions/{id}/network/events`).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct NetworkEvents {
    /// Oldest first; the latest 1000.
    pub events: Vec<NetworkEvent>,
}

/// One refused name or connection.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct NetworkEvent {
    /// RFC 3339, UTC.
    #[schema(format = DateTime, example = "2026-02-08T10:00:00.123Z")]
    pub time: String,
    /// A host name (a DNS query), or `address:port` (a connection).
    #[schema(example = "evil.example")]
    pub destination: String,
    /// The host name involved, where one is known.
    #[schema(required = true, example = "evil.example")]
    pub name: Option<String>,
    /// Why: `not in allow_out`, `denied by deny_out`, ...
    #[schema(example = "not in allow_out")]
    pub reason: String,
}

impl From<engine::NetworkDenial> for NetworkEvent {
    fn from(d: engine::NetworkDenial) -> Self {
        NetworkEvent {
            time: rfc3339(OffsetDateTime::from(d.at)),
            destination: d.destination,
            name: d.name,
            reason: d.reason,
        }
    }
}

/// Formats a timestamp as RFC 3339 in UTC with millisecond precision, the
/// form every client's date parser accepts.
pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    let t = t.to_offset(UtcOffset::UTC);
    let t = t.replace_millisecond(t.millisecond()).unwrap_or(t);
    // Formatting only fails for years beyond 9999, which no session reaches;
    // fall back to the Display form rather than failing the whole response.
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

/// Resource usage of a session.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SessionStats {
    pub memory_bytes: u64,
    pub memory_limit: u64,
    pub cpu_usage_usec: u64,
    pub pids: u64,
}

impl From<engine::SessionStats> for SessionStats {
    fn from(s: engine::SessionStats) -> Self {
        SessionStats {
            memory_bytes: s.memory_bytes,
            memory_limit: s.memory_limit,
            cpu_usage_usec: s.cpu_usage_usec,
            pids: s.pids,
        }
    }
}

// ---------------------------------------------------------------- exec

/// `POST /v1/sessions/{id}/exec` and `/exec/stream`.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct ExecRequest {
    /// Shell command, run in the session's persistent shell. Not empty.
    #[schema(example = "python3 -c 'print(42)'")]
    pub cmd: String,
    /// Defaults to `defaults.exec_timeout_ms` (30000 unless configured),
    /// capped by `defaults.max_exec_timeout_ms`.
    #[schema(example = 30000)]
    pub timeout_ms: Option<u64>,
    /// Keep terminal noise (ANSI sequences, CRLF) in the output.
    #[schema(example = false)]
    pub raw_output: Option<bool>,
}

impl From<ExecRequest> for engine::ExecRequest {
    fn from(r: ExecRequest) -> Self {
        engine::ExecRequest {
            cmd: r.cmd,
            timeout_ms: r.timeout_ms,
            raw_output: r.raw_output.unwrap_or(false),
        }
    }
}

/// The result of a buffered exec.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ExecResult {
    pub exit_code: i32,
    #[schema(example = "/workspace")]
    pub cwd: String,
    /// stdout and stderr interleaved in the order written.
    #[schema(example = "42\n")]
    pub output: String,
    /// The output hit the cap; the command still ran to completion.
    pub truncated: bool,
    pub duration_ms: u64,
    /// The command was interrupted at its timeout (`exit_code` is 124).
    pub timed_out: bool,
}

impl From<engine::ExecResult> for ExecResult {
    fn from(r: engine::ExecResult) -> Self {
        ExecResult {
            exit_code: r.exit_code,
            cwd: r.cwd,
            output: r.output,
            truncated: r.truncated,
            duration_ms: r.duration_ms,
            timed_out: r.timed_out,
        }
    }
}

/// Data of an SSE `chunk` event.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ExecChunkEvent {
    pub chunk: String,
    /// When the chunk was read, Unix ms.
    pub timestamp: i64,
}

/// Data of the SSE `done` event that ends a stream.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ExecDoneEvent {
    pub exit_code: i32,
    pub cwd: String,
    pub duration_ms: u64,
    pub timed_out: bool,
    pub truncated: bool,
}

/// Data of the SSE `error` event that ends a stream.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ExecErrorEvent {
    pub error: String,
}

/// One server-sent event of `POST /v1/sessions/{id}/exec/stream` as a
/// client parses it (for the OpenAPI document only): OpenAPI 3.1 reads the
/// schema of a `text/event-stream` response as the schema of one event.
/// `event` names it; `data` is the JSON of [`ExecChunkEvent`],
/// [`ExecDoneEvent`] or [`ExecErrorEvent`].
pub(crate) struct ExecStreamEvent;

impl utoipa::PartialSchema for ExecStreamEvent {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        let event = |name: &str, data: &str| {
            ObjectBuilder::new()
                .property(
                    "event",
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .enum_values(Some([name])),
                )
                .property(
                    "data",
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .content_media_type("application/json")
                        .description(Some(format!("`{data}` as JSON"))),
                )
                .required("event")
                .required("data")
        };
        OneOfBuilder::new()
            .item(event("chunk", "ExecChunkEvent"))
            .item(event("done", "ExecDoneEvent"))
            .item(event("error", "ExecErrorEvent"))
            .description(Some(
                "One event of the stream: `chunk`s, then one `done` or `error`",
            ))
            .into()
    }
}

impl ToSchema for ExecStreamEvent {}

// ---------------------------------------------------------------- files

/// `POST /v1/sessions/{id}/fs/write`: `path` and exactly one of `text`
/// and `content_base64`.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct WriteFileRequest {
    /// Relative paths resolve against `/workspace`.
    #[schema(example = "hello.py", min_length = 1)]
    pub path: String,
    /// Content as UTF-8 text.
    #[schema(example = "print(1)")]
    pub text: Option<String>,
    /// Content as standard base64 (padding optional).
    pub content_base64: Option<String>,
}

/// Query of `GET /v1/sessions/{id}/fs/read`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ReadFileQuery {
    /// File to read; relative paths resolve against `/workspace`.
    #[param(min_length = 1)]
    pub path: String,
    /// Read at most this many bytes (`truncated` tells whether more
    /// remain). Absent or 0: the daemon's read cap.
    pub max_bytes: Option<u64>,
}

/// A file's content.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct FileContent {
    /// Absolute path inside the sandbox.
    #[schema(example = "/workspace/hello.py")]
    pub path: String,
    /// Standard base64 with padding.
    pub content_base64: String,
    pub truncated: bool,
}

/// The multipart form of `POST /v1/sessions/{id}/fs/upload` (for the
/// OpenAPI document only; the handler reads the parts as they stream in).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub(crate) struct UploadForm {
    /// One or more files, each with a filename (no `/`, not `.` or `..`).
    /// The part may also be named `files`.
    #[schema(value_type = Vec<String>, format = Binary)]
    pub file: Vec<Vec<u8>>,
    /// Target directory; `/workspace` when absent or empty.
    pub path: Option<String>,
}

/// A tar archive: the body of a workspace import and an export (for the
/// OpenAPI document only; both stream).
pub(crate) struct TarArchive;

impl utoipa::PartialSchema for TarArchive {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .content_media_type("application/x-tar")
            .description(Some("A tar archive (ustar, GNU or PAX)"))
            .into()
    }
}

impl ToSchema for TarArchive {}

/// `{"ok": true, "paths": [...]}` of an upload.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct UploadResult {
    pub ok: bool,
    /// Absolute paths of the written files, in the order uploaded.
    pub paths: Vec<String>,
}

/// Query of `fs/stat`: a path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct PathQuery {
    /// Relative paths resolve against `/workspace`.
    #[param(min_length = 1)]
    pub path: String,
}

/// Query of `fs/list`: an optional directory.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// Directory to list; `/workspace` when absent. Relative paths resolve
    /// against `/workspace`.
    pub path: Option<String>,
}

/// The type of a directory entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum FileType {
    File,
    Dir,
    Symlink,
    Other,
}

impl From<engine::FileType> for FileType {
    fn from(t: engine::FileType) -> Self {
        match t {
            engine::FileType::File => FileType::File,
            engine::FileType::Dir => FileType::Dir,
            engine::FileType::Symlink => FileType::Symlink,
            engine::FileType::Other => FileType::Other,
        }
    }
}

/// One entry of a directory listing.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DirEntry {
    pub name: String,
    #[serde(rename = "type")]
    pub file_type: FileType,
    pub size: u64,
    /// Permission bits (`st_mode & 0o7777`), e.g. 420 for `0o644`.
    pub mode: u32,
    /// Modification time, Unix seconds.
    pub mtime: i64,
}

impl From<engine::DirEntry> for DirEntry {
    fn from(e: engine::DirEntry) -> Self {
        DirEntry {
            name: e.name,
            file_type: e.file_type.into(),
            size: e.size,
            mode: e.mode,
            mtime: e.mtime,
        }
    }
}

/// A directory listing.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DirListing {
    /// The directory as requested.
    pub path: String,
    pub entries: Vec<DirEntry>,
}

/// Metadata of one path (symlinks are not followed).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct FileStat {
    /// Absolute path inside the sandbox.
    pub path: String,
    #[serde(rename = "type")]
    pub file_type: FileType,
    pub size: u64,
    /// Permission bits (`st_mode & 0o7777`), e.g. 420 for `0o644`.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Modification time, Unix seconds.
    pub mtime: i64,
    /// Target of a symlink, else `null`.
    #[schema(required = true)]
    pub link_target: Option<String>,
}

impl From<engine::FileStat> for FileStat {
    fn from(s: engine::FileStat) -> Self {
        FileStat {
            path: s.path,
            file_type: s.file_type.into(),
            size: s.size,
            mode: s.mode,
            uid: s.uid,
            gid: s.gid,
            mtime: s.mtime,
            link_target: s.link_target,
        }
    }
}

/// `POST /v1/sessions/{id}/fs/mkdir`.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct MkdirRequest {
    #[schema(min_length = 1)]
    pub path: String,
    /// Create missing parents and succeed when the directory exists
    /// (`mkdir -p`). Default true.
    pub parents: Option<bool>,
}

/// `{"ok": true, "path": "/workspace/a/b"}` of a mkdir.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct MkdirResult {
    pub ok: bool,
    /// Absolute path of the directory.
    pub path: String,
}

/// `POST /v1/sessions/{id}/fs/move`.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct MoveRequest {
    /// What to rename.
    #[schema(min_length = 1, example = "/workspace/a.txt")]
    pub from: String,
    /// Its new path: a file there is replaced, missing parents are created.
    #[schema(min_length = 1, example = "/workspace/dir/b.txt")]
    pub to: String,
}

/// `{"ok": true, "path": "/workspace/dir/b.txt"}` of a move.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct MoveResult {
    pub ok: bool,
    /// Absolute new path.
    pub path: String,
}

/// `POST /v1/sessions/{id}/fs/remove`.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct RemoveRequest {
    #[schema(min_length = 1)]
    pub path: String,
    /// Remove a directory with its contents. Default false: only files,
    /// symlinks and empty directories.
    pub recursive: Option<bool>,
}

// ---------------------------------------------------------------- workspaces

/// `POST /v1/workspaces`: an `id`, optionally a quota (in bytes or in MiB,
/// not both) and labels.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct CreateWorkspaceRequest {
    /// 1–64 characters of `[A-Za-z0-9._-]`, not starting with `.` or `-`.
    #[schema(
        example = "user123-project456",
        pattern = r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$"
    )]
    pub id: String,
    /// Size limit in bytes, at least 1; none of its own when absent.
    #[schema(example = 1_073_741_824_u64)]
    pub quota_bytes: Option<u64>,
    /// Size limit in MiB (1048576 bytes), instead of `quota_bytes`.
    #[schema(example = 1024)]
    pub quota_mb: Option<u64>,
    /// At most 64; keys 1–63 characters of `[A-Za-z0-9._/-]`, values at
    /// most 256 characters.
    #[schema(example = json!({"team": "ml", "project": "demo"}))]
    pub labels: Option<BTreeMap<String, String>>,
    /// Start with a copy of this snapshot (its files, modes, owners and
    /// symlinks). The quota defaults to the source workspace's.
    pub from_snapshot: Option<FromSnapshot>,
}

/// A snapshot to create a workspace from.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct FromSnapshot {
    /// The workspace the snapshot belongs to.
    #[schema(
        example = "user123-project456",
        pattern = r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$"
    )]
    pub workspace_id: String,
    #[schema(
        example = "snap-0123456789abcdef",
        pattern = r"^snap-[0-9A-Fa-f]{1,59}$"
    )]
    pub snapshot_id: String,
}

/// A persistent workspace.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct WorkspaceInfo {
    #[schema(example = "user123-project456")]
    pub id: String,
    /// RFC 3339, UTC.
    #[schema(format = DateTime, example = "2026-02-08T10:00:00.123Z")]
    pub created_at: String,
    /// When a session last mounted it (RFC 3339, UTC); `null` if none has.
    #[schema(required = true, format = DateTime, example = "2026-02-08T10:30:00.123Z")]
    pub last_used_at: Option<String>,
    /// Bytes of the files in it.
    pub size_bytes: u64,
    /// Its size limit; `null` when it has none of its own.
    #[schema(required = true)]
    pub quota_bytes: Option<u64>,
    /// True while a running session has it mounted.
    pub in_use: bool,
    pub labels: BTreeMap<String, String>,
}

impl From<engine::WorkspaceInfo> for WorkspaceInfo {
    fn from(w: engine::WorkspaceInfo) -> Self {
        WorkspaceInfo {
            id: w.id,
            created_at: rfc3339(w.created_at),
            last_used_at: w.last_used_at.map(rfc3339),
            size_bytes: w.size_bytes,
            quota_bytes: w.quota_bytes,
            in_use: w.in_use,
            labels: w.labels,
        }
    }
}

/// `{"workspaces": [...]}` of `GET /v1/workspaces`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct WorkspaceList {
    pub workspaces: Vec<WorkspaceInfo>,
}

/// The `{id}` of a workspace route (for the OpenAPI document;
/// `extract::WorkspaceId` checks it with the engine's rule).
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub(crate) struct WorkspacePath {
    /// Workspace id: 1–64 characters of `[A-Za-z0-9._-]`, not starting
    /// with `.` or `-`.
    #[param(pattern = r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$")]
    id: String,
}

/// The `{id}` and `{snap}` of a snapshot route (for the OpenAPI document).
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub(crate) struct SnapshotPath {
    /// Workspace id.
    #[param(pattern = r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$")]
    id: String,
    /// Snapshot id: `snap-` and hex digits, as the daemon makes them.
    #[param(pattern = r"^snap-[0-9A-Fa-f]{1,59}$")]
    snap: String,
}

/// `POST /v1/workspaces/{id}/snapshots` (the body may be empty).
#[derive(Debug, Default, Deserialize, ToSchema)]
pub(crate) struct CreateSnapshotRequest {
    /// Free text, at most 256 characters.
    pub label: Option<String>,
}

/// A point-in-time copy of a workspace.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SnapshotInfo {
    #[schema(example = "snap-0c1d2e3f4a5b6c7d")]
    pub id: String,
    pub workspace_id: String,
    /// RFC 3339, UTC.
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(required = true)]
    pub label: Option<String>,
}

impl From<engine::SnapshotInfo> for SnapshotInfo {
    fn from(s: engine::SnapshotInfo) -> Self {
        SnapshotInfo {
            id: s.id,
            workspace_id: s.workspace_id,
            created_at: rfc3339(s.created_at),
            label: s.label,
        }
    }
}

/// `{"snapshots": [...]}`, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SnapshotList {
    pub snapshots: Vec<SnapshotInfo>,
}

/// A snapshot of a whole sandbox: its filesystem state (root filesystem
/// changes, `/tmp`) and its `/workspace`, usable as an image.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SandboxSnapshot {
    /// Also its name as an image (`POST /v1/sessions {"image": id}`).
    #[schema(example = "ssnap-0c1d2e3f4a5b6c7d8e9f0a1b")]
    pub id: String,
    /// The session it was taken of (it may have ended since).
    pub session_id: String,
    /// The image that session started from.
    #[schema(example = "base")]
    pub image: String,
    /// The persistent workspace that session had (`null`: ephemeral); a
    /// session started from the snapshot gets a copy of its content then.
    #[schema(required = true)]
    pub workspace_id: Option<String>,
    #[schema(required = true)]
    pub label: Option<String>,
    /// RFC 3339, UTC.
    #[schema(format = DateTime)]
    pub created_at: String,
}

impl From<engine::SandboxSnapshotInfo> for SandboxSnapshot {
    fn from(s: engine::SandboxSnapshotInfo) -> Self {
        SandboxSnapshot {
            id: s.id,
            session_id: s.session_id,
            image: s.image,
            workspace_id: s.workspace_id,
            label: s.label,
            created_at: rfc3339(s.created_at),
        }
    }
}

/// `GET /v1/snapshots`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SandboxSnapshotList {
    /// Oldest first.
    pub snapshots: Vec<SandboxSnapshot>,
}

/// `POST /v1/sessions/{id}/fork`.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct ForkRequest {
    /// How many copies: 1 to the daemon's `max_fork_count`.
    #[schema(example = 3)]
    pub count: u64,
}

/// What a fork made.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ForkResponse {
    /// The new sessions, in order.
    pub sessions: Vec<SessionInfo>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use time::macros::datetime;

    fn session() -> engine::SessionInfo {
        engine::SessionInfo {
            id: "s1".into(),
            image: "base".into(),
            status: engine::SessionState::Running,
            cwd: "/workspace".into(),
            workspace_id: None,
            created_at: datetime!(2026-02-08 10:00:00.123456 +01:00),
            expires_at: datetime!(2026-02-08 10:30:00 UTC),
            acquire_source: engine::AcquireSource::Pool,
            disk_limit_mb: Some(4096),
            network: engine::NetworkPolicy {
                mode: engine::NetworkMode::Full,
                allow_out: vec![engine::NetEntry::parse("*.github.com").unwrap()],
                deny_out: vec![],
            },
            metadata: [("owner".to_string(), "agent-7".to_string())].into(),
            ttl_seconds: 1800,
            on_timeout: engine::OnTimeout::Hibernate,
            idle_timeout_seconds: Some(600),
        }
    }

    #[test]
    fn session_info_has_exactly_the_contract_fields() {
        let v = serde_json::to_value(SessionInfo::from(session())).unwrap();
        assert_eq!(
            v,
            json!({
                "id": "s1",
                "image": "base",
                "status": "running",
                "cwd": "/workspace",
                "workspace_id": null,
                "created_at": "2026-02-08T09:00:00.123Z",
                "expires_at": "2026-02-08T10:30:00Z",
                "acquire_source": "pool",
                "disk_limit_mb": 4096,
                "network": {"mode": "full", "allow_out": ["*.github.com"], "deny_out": []},
                "metadata": {"owner": "agent-7"},
                "on_timeout": "hibernate",
                "idle_timeout_seconds": 600,
            })
        );
    }

    #[test]
    fn session_info_carries_workspace_id_and_every_state() {
        let mut s = session();
        s.workspace_id = Some("ws-1".into());
        s.acquire_source = engine::AcquireSource::Cold;
        for (state, name) in [
            (engine::SessionState::Creating, "creating"),
            (engine::SessionState::Running, "running"),
            (engine::SessionState::Destroying, "destroying"),
            (engine::SessionState::Destroyed, "destroyed"),
            (engine::SessionState::Expired, "expired"),
            (engine::SessionState::Lost, "lost"),
            (engine::SessionState::Failed, "failed"),
            (engine::SessionState::Paused, "paused"),
            (engine::SessionState::Hibernated, "hibernated"),
        ] {
            s.status = state;
            let v = serde_json::to_value(SessionInfo::from(s.clone())).unwrap();
            assert_eq!(v["status"], name);
            assert_eq!(v["workspace_id"], "ws-1");
            assert_eq!(v["acquire_source"], "cold");
        }
    }

    #[test]
    fn workspace_info_has_exactly_the_contract_fields() {
        let w = engine::WorkspaceInfo {
            id: "ws-1".into(),
            created_at: datetime!(2026-02-08 10:00:00.123456 +01:00),
            last_used_at: None,
            size_bytes: 42,
            quota_bytes: None,
            in_use: false,
            labels: BTreeMap::new(),
        };
        assert_eq!(
            serde_json::to_value(WorkspaceInfo::from(w.clone())).unwrap(),
            json!({"id": "ws-1", "created_at": "2026-02-08T09:00:00.123Z",
                   "last_used_at": null, "size_bytes": 42, "quota_bytes": null,
                   "in_use": false, "labels": {}})
        );
        let w = engine::WorkspaceInfo {
            last_used_at: Some(datetime!(2026-02-08 10:30:00 UTC)),
            quota_bytes: Some(1 << 20),
            in_use: true,
            labels: [("team".to_owned(), "ml".to_owned())].into(),
            ..w
        };
        let v = serde_json::to_value(WorkspaceInfo::from(w)).unwrap();
        assert_eq!(v["last_used_at"], "2026-02-08T10:30:00Z");
        assert_eq!(v["quota_bytes"], 1 << 20);
        assert_eq!(v["in_use"], true);
        assert_eq!(v["labels"], json!({"team": "ml"}));
    }

    #[test]
    fn timestamps_parse_back_as_rfc3339() {
        let t = datetime!(2026-02-08 23:59:59.999999 -05:00);
        let s = rfc3339(t);
        assert_eq!(s, "2026-02-09T04:59:59.999Z");
        let back = OffsetDateTime::parse(&s, &Rfc3339).unwrap();
        assert_eq!(back.unix_timestamp(), t.unix_timestamp());
    }

    #[test]
    fn exec_result_has_exactly_the_contract_fields() {
        let r = engine::ExecResult {
            exit_code: 0,
            cwd: "/workspace".into(),
            output: "42\n".into(),
            truncated: false,
            duration_ms: 3,
            timed_out: false,
        };
        assert_eq!(
            serde_json::to_value(ExecResult::from(r)).unwrap(),
            json!({"exit_code": 0, "cwd": "/workspace", "output": "42\n",
                   "truncated": false, "duration_ms": 3, "timed_out": false})
        );
    }

    #[test]
    fn stats_have_exactly_the_contract_fields() {
        let s = engine::SessionStats {
            memory_bytes: 1,
            memory_limit: 2,
            cpu_usage_usec: 3,
            pids: 4,
        };
        assert_eq!(
            serde_json::to_value(SessionStats::from(s)).unwrap(),
            json!({"memory_bytes": 1, "memory_limit": 2, "cpu_usage_usec": 3, "pids": 4})
        );
    }

    #[test]
    fn exec_request_accepts_optional_fields_and_ignores_unknown_ones() {
        let r: ExecRequest =
            serde_json::from_value(json!({"cmd": "ls", "raw_output": null, "extra": 1})).unwrap();
        let r = engine::ExecRequest::from(r);
        assert_eq!(r.cmd, "ls");
        assert_eq!(r.timeout_ms, None);
        assert!(!r.raw_output);
        assert!(serde_json::from_value::<ExecRequest>(json!({"cmd": 1})).is_err());
        assert!(
            serde_json::from_value::<ExecRequest>(json!({"cmd": "ls", "timeout_ms": -1})).is_err()
        );
    }

    #[test]
    fn file_types_are_lowercase() {
        let e = engine::DirEntry {
            name: "a".into(),
            file_type: engine::FileType::Symlink,
            size: 1,
            mode: 0o777,
            mtime: 7,
        };
        assert_eq!(
            serde_json::to_value(DirEntry::from(e)).unwrap(),
            json!({"name": "a", "type": "symlink", "size": 1, "mode": 0o777, "mtime": 7})
        );
        let s = engine::FileStat {
            path: "/workspace/d".into(),
            file_type: engine::FileType::Dir,
            size: 4096,
            mode: 0o755,
            uid: 1000,
            gid: 1000,
            mtime: 9,
            link_target: None,
        };
        assert_eq!(
            serde_json::to_value(FileStat::from(s)).unwrap(),
            json!({"path": "/workspace/d", "type": "dir", "size": 4096, "mode": 0o755,
                   "uid": 1000, "gid": 1000, "mtime": 9, "link_target": null})
        );
    }
}

// -------------------------------------------------------------------- pool

/// `GET /v1/pool`: the pre-warmed pool per image (empty without a pool).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PoolInfo {
    pub images: BTreeMap<String, ImagePoolInfo>,
}

/// One image's pool. Counters count since the daemon started.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ImagePoolInfo {
    /// Configured size.
    #[schema(example = 3)]
    pub target: usize,
    /// Ready sandboxes waiting to be handed out.
    #[schema(example = 3)]
    pub idle: usize,
    /// Sandboxes being started to refill the pool.
    pub in_flight: usize,
    /// Creates served from the pool.
    pub hits: u64,
    /// Creates of this image served cold because the pool was empty.
    pub misses: u64,
    /// Pooled sandboxes found dead or unresponsive and thrown away.
    pub discarded: u64,
    /// Pooled sandboxes replaced after `pool.max_idle_seconds` unused.
    pub recycled: u64,
    /// Failed attempts to start a pooled sandbox.
    pub refill_failures: u64,
    /// The last refill failure, if any.
    pub last_error: Option<String>,
    /// Median time a create spent taking and preparing a pooled sandbox,
    /// over the last 1024 hits; `null` before the first hit.
    pub acquire_wait_p50_ms: Option<f64>,
    /// 95th percentile of the same.
    pub acquire_wait_p95_ms: Option<f64>,
}

impl From<engine::PoolStats> for PoolInfo {
    fn from(p: engine::PoolStats) -> Self {
        PoolInfo {
            images: p
                .images
                .into_iter()
                .map(|(k, s)| {
                    (
                        k,
                        ImagePoolInfo {
                            target: s.target,
                            idle: s.idle,
                            in_flight: s.in_flight,
                            hits: s.hits,
                            misses: s.misses,
                            discarded: s.discarded,
                            recycled: s.recycled,
                            refill_failures: s.refill_failures,
                            last_error: s.last_error,
                            acquire_wait_p50_ms: s.acquire_wait_p50_ms,
                            acquire_wait_p95_ms: s.acquire_wait_p95_ms,
                        },
                    )
                })
                .collect(),
        }
    }
}

// ------------------------------------------------------------------- ports

/// `POST /v1/sessions/{id}/ports/{port}/url`; an empty body is `{}`.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub(crate) struct PortUrlRequest {
    /// Lifetime of the URL in seconds (1 to 604800, 7 days); default 3600.
    #[schema(example = 3600)]
    pub ttl_seconds: Option<u64>,
}

/// A signed URL of one port of one session.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PortUrl {
    /// Opens the port on its preview host, without the API key.
    #[schema(example = "http://8000-0f3c9a.localhost:8080/?sandkasten_token=1767225600.9b1c")]
    pub url: String,
    /// The same through the daemon's address: append it to the daemon's
    /// base URL.
    #[schema(example = "/v1/sessions/0f3c9a/ports/8000/?sandkasten_token=1767225600.9b1c")]
    pub path: String,
    /// The token alone (a `sandkasten_token` query parameter on any path
    /// of the port).
    pub token: String,
    /// RFC 3339, UTC: the URL (and the cookie a browser keeps from it)
    /// stops working then.
    #[schema(format = DateTime, example = "2026-02-08T11:30:00.000Z")]
    pub expires_at: String,
}
