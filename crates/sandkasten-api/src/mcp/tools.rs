//! The MCP tools: their argument types (whose JSON Schemas are the tools'
//! input schemas), their result types (whose schemas are the tools' output
//! schemas), the tool list, and each call: validate, call the engine
//! through the backend, convert. Results carry the answer as structured
//! content (the HTTP API's JSON for the same thing) and as text for
//! clients that read only text; failures are tool results with `isError`
//! and the API's `ErrorBody` (`{error_code, message, details}`, from its
//! one error table).
//!
//! A tool's output schema is its result type's OpenAPI schema, the very
//! one `/openapi.json` publishes for the HTTP route of the same thing, as
//! a self-contained JSON Schema (the referenced schemas under `$defs`),
//! any of that or `ErrorBody`: clients validate the structured content
//! against it, failures included (the TypeScript SDK does). The list ties
//! each tool's name to its result type, and each call returns that type
//! ([`Reply`]), so the schema and the content cannot drift apart.

use crate::error::ApiError;
use crate::routes::files::{check_path, list_in, write_in, FileScope};
use crate::routes::processes::decode_utf8;
use crate::wire::{
    self, CreateSessionRequest, DirListing, ErrorBody, ForkResponse, ListQuery,
    NetworkPolicyRequest, OkResponse, PortUrl, ProcessInfo, SessionInfo, SignalRequest,
    SnapshotInfo, SnapshotList, StartProcessRequest, WorkspaceInfo, WorkspaceList,
    WriteFileRequest,
};
use crate::AppState;
use base64::Engine as _;
use rmcp::handler::server::common::schema_for_type;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ContentBlock, ErrorData, JsonObject,
    ProgressNotificationParam, Tool, ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::RoleServer;
use sandkasten_engine::{self as engine, ExecEvent, ProcEvent, ProcStream, StartedProcess};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use utoipa::{PartialSchema, ToSchema};

/// Largest file `read_file` returns unless asked for less: what a model
/// can use, not the API's 64 MiB.
const DEFAULT_READ_BYTES: u64 = 1024 * 1024;
/// Output of `run_command` kept for the result (the progress
/// notifications carry all of it); beyond it the start is dropped.
const MAX_RESULT_OUTPUT: usize = 1024 * 1024;
/// `process_output` waits at most this long.
const MAX_WAIT_SECONDS: f64 = 60.0;

// ------------------------------------------------------------- arguments

/// `create_sandbox`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateSandbox {
    /// Image to start (`base`, `python`, `node`, or one imported by the
    /// operator); the daemon's default when absent.
    pub image: Option<String>,
    /// Persistent workspace to mount at /workspace (created on first use:
    /// 1-64 characters of [A-Za-z0-9._-]); an empty ephemeral /workspace
    /// when absent.
    pub workspace_id: Option<String>,
    /// Extra environment variables of the sandbox's shell.
    pub env: Option<BTreeMap<String, String>>,
    /// Seconds without activity before the sandbox is destroyed; the
    /// daemon's default when absent.
    pub ttl_seconds: Option<u64>,
    /// Outbound network policy; the daemon's default when absent.
    pub network: Option<Network>,
}

/// A network policy.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Network {
    /// `none` (loopback only) or `full` (outbound, under the lists).
    pub mode: Option<NetMode>,
    /// With `full`: only these destinations (host names, `*.domain`, IPs,
    /// CIDRs).
    pub allow_out: Option<Vec<String>>,
    /// Destinations refused even when allowed.
    pub deny_out: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub(super) enum NetMode {
    None,
    Full,
}

/// A tool on one sandbox.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct SessionArg {
    /// The sandbox's id (from create_sandbox or list_sandboxes).
    pub session_id: String,
}

/// `fork_sandbox`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ForkSandbox {
    /// The sandbox to copy.
    pub session_id: String,
    /// How many copies (1 to the daemon's max_fork_count).
    pub count: u64,
}

/// `run_command`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RunCommand {
    /// The sandbox's id.
    pub session_id: String,
    /// A bash command line, run in the sandbox's persistent shell (the
    /// working directory and exported variables carry over to the next
    /// command); stdout and stderr interleaved.
    pub cmd: String,
    /// Seconds before the command is interrupted (exit code 124); the
    /// daemon's default (30 unless configured) when absent.
    pub timeout_seconds: Option<u64>,
}

/// `start_process`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct StartProcess {
    /// The sandbox's id.
    pub session_id: String,
    /// A command line, run as `/bin/sh -c CMD`. Exactly one of cmd and argv.
    pub cmd: Option<String>,
    /// Program and arguments, no shell.
    pub argv: Option<Vec<String>>,
    /// Environment over the sandbox's.
    pub env: Option<BTreeMap<String, String>>,
    /// Working directory (default /workspace).
    pub cwd: Option<String>,
    /// `sandbox` (default) or `root` (root of the sandbox).
    pub user: Option<User>,
    /// Keep stdin open for send_stdin (default: stdin is /dev/null).
    pub stdin: Option<bool>,
    /// A name to find the process by instead of its pid: 1-64 characters of
    /// [A-Za-z0-9._-], not all digits.
    pub tag: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub(super) enum User {
    Sandbox,
    Root,
}

/// `process_output`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ProcessOutput {
    /// The sandbox's id.
    pub session_id: String,
    /// The process: its pid or its tag.
    pub process: String,
    /// Seconds to wait for the process to end (0 to 60, default 1); the
    /// output so far is returned when it has not.
    pub wait_seconds: Option<f64>,
}

/// `send_stdin`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct SendStdin {
    /// The sandbox's id.
    pub session_id: String,
    /// The process: its pid or its tag.
    pub process: String,
    /// Text to write to its stdin (add "\n" to end a line).
    pub data: String,
    /// Close stdin afterwards (the process reads end-of-file).
    pub close: Option<bool>,
}

/// `kill_process`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct KillProcess {
    /// The sandbox's id.
    pub session_id: String,
    /// The process: its pid or its tag.
    pub process: String,
    /// Signal name (TERM, KILL, INT, HUP, ...) or number; default TERM.
    pub signal: Option<String>,
}

/// `read_file`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ReadFile {
    /// The sandbox's id.
    pub session_id: String,
    /// Path inside the sandbox; relative paths are under /workspace.
    pub path: String,
    /// Read at most this many bytes (default 1048576).
    pub max_bytes: Option<u64>,
}

/// `write_file`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct WriteFile {
    /// The sandbox's id.
    pub session_id: String,
    /// Path inside the sandbox; relative paths are under /workspace.
    /// Missing parent directories are created; an existing file is replaced.
    pub path: String,
    /// The file's whole content.
    pub content: String,
    /// `text` (default: content is the text) or `base64` (content is
    /// base64 of the bytes).
    pub encoding: Option<Encoding>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub(super) enum Encoding {
    Text,
    Base64,
}

/// `list_dir`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ListDir {
    /// The sandbox's id.
    pub session_id: String,
    /// Directory to list (default /workspace).
    pub path: Option<String>,
}

/// `delete_path`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct DeletePath {
    /// The sandbox's id.
    pub session_id: String,
    /// File or directory to delete.
    pub path: String,
    /// Delete a non-empty directory with everything in it.
    pub recursive: Option<bool>,
}

/// `move_path`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct MovePath {
    /// The sandbox's id.
    pub session_id: String,
    /// The file or directory to move.
    pub from: String,
    /// Its new path (a file there is replaced; missing parents are created).
    pub to: String,
}

/// A tool without arguments.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NoArgs {}

/// `snapshot_workspace`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct SnapshotWorkspace {
    /// The workspace's id.
    pub workspace_id: String,
    /// A label to remember it by.
    pub label: Option<String>,
}

/// `list_snapshots`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct WorkspaceArg {
    /// The workspace's id.
    pub workspace_id: String,
}

/// `restore_workspace`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RestoreWorkspace {
    /// The workspace's id.
    pub workspace_id: String,
    /// The snapshot to restore (from snapshot_workspace or list_snapshots).
    pub snapshot_id: String,
}

/// `get_port_url`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct GetPortUrl {
    /// The sandbox's id.
    pub session_id: String,
    /// TCP port a server inside the sandbox listens on (1-65535).
    pub port: u16,
    /// Lifetime of the URL in seconds (1 to 604800; default 3600).
    pub ttl_seconds: Option<u64>,
}

// ------------------------------------------------------------- results

/// `run_command`: the command's end and its output.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct CommandResult {
    /// The command's exit status (124 when it timed out).
    pub exit_code: i32,
    /// stdout and stderr interleaved (the last 1 MiB when there was more).
    pub output: String,
    /// The shell's working directory afterwards.
    pub cwd: String,
    pub duration_ms: u64,
    pub timed_out: bool,
    /// Output was dropped (the start of it).
    pub truncated: bool,
}

/// `read_file`: the content as text, or base64 when it is not UTF-8.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct FileText {
    /// The absolute path read.
    pub path: String,
    /// `text` or `base64`.
    pub encoding: &'static str,
    pub content: String,
    /// The file is longer than `max_bytes`; the start was read.
    pub truncated: bool,
}

/// `process_output`: the process and its output so far, by stream.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ProcessOutputResult {
    pub process: ProcessInfo,
    pub stdout: String,
    pub stderr: String,
    /// A terminal's output (processes started with a PTY).
    pub pty: String,
}

/// `write_file`, `move_path`: done, and the absolute path written.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct PathResult {
    pub ok: bool,
    pub path: String,
}

/// `list_sandboxes`.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct SandboxList {
    pub sandboxes: Vec<SessionInfo>,
}

/// `list_processes`.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ProcessList {
    pub processes: Vec<ProcessInfo>,
}

/// Where `$ref`s of the OpenAPI document point, and where they point in a
/// tool's self-contained schema.
const OPENAPI_REFS: &str = "#/components/schemas/";
const DEFS_REFS: &str = "#/$defs/";

/// The formats of OpenAPI that JSON Schema validators know (ajv-formats
/// knows these; others make a strict validator refuse the schema).
const KNOWN_FORMATS: &[&str] = &[
    "date-time",
    "date",
    "time",
    "duration",
    "uri",
    "uri-reference",
    "email",
    "hostname",
    "ipv4",
    "ipv6",
    "uuid",
    "int32",
    "int64",
    "float",
    "double",
    "byte",
    "binary",
];

/// The output schema of a tool whose result is `T`: `{"type": "object",
/// "anyOf": [T, ErrorBody], "$defs": {...}}` with `T`'s and `ErrorBody`'s
/// OpenAPI schemas and every schema they reference.
fn output_schema<T: ToSchema>() -> Arc<JsonObject> {
    let mut schemas = Vec::new();
    schemas.push((T::name().into_owned(), T::schema()));
    T::schemas(&mut schemas);
    schemas.push((ErrorBody::name().into_owned(), ErrorBody::schema()));
    ErrorBody::schemas(&mut schemas);
    let defs: serde_json::Map<String, Value> = schemas
        .into_iter()
        .map(|(name, schema)| {
            let value = serde_json::to_value(schema).expect("a schema serializes");
            (name, value)
        })
        .collect();
    let mut root = json!({
        "type": "object",
        "anyOf": [
            { "$ref": format!("{DEFS_REFS}{}", T::name()) },
            { "$ref": format!("{DEFS_REFS}{}", ErrorBody::name()) },
        ],
        "$defs": defs,
    });
    self_contained(&mut root);
    match root {
        Value::Object(o) => Arc::new(o),
        _ => unreachable!("built as an object"),
    }
}

/// Points the OpenAPI `$ref`s at `$defs` and drops formats validators do
/// not know (examples are left alone: they are data, not schema).
fn self_contained(v: &mut Value) {
    match v {
        Value::Object(o) => {
            if let Some(Value::String(r)) = o.get_mut("$ref") {
                if let Some(name) = r.strip_prefix(OPENAPI_REFS) {
                    *r = format!("{DEFS_REFS}{name}");
                }
            }
            if matches!(o.get("format"), Some(Value::String(f)) if !KNOWN_FORMATS.contains(&f.as_str()))
            {
                o.remove("format");
            }
            for (k, child) in o.iter_mut() {
                if k != "example" && k != "examples" {
                    self_contained(child);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(self_contained),
        _ => {}
    }
}

// ------------------------------------------------------------- the list

/// What a tool does to the world, for the clients' hints.
#[derive(Clone, Copy)]
enum Kind {
    ReadOnly,
    Additive,
    Destructive,
}

/// A tool taking `A` and answering `R`.
fn tool<A: JsonSchema + 'static, R: ToSchema>(
    name: &'static str,
    kind: Kind,
    description: &'static str,
) -> Tool {
    let annotations = match kind {
        Kind::ReadOnly => ToolAnnotations::new().read_only(true),
        Kind::Additive => ToolAnnotations::new().read_only(false).destructive(false),
        Kind::Destructive => ToolAnnotations::new().read_only(false).destructive(true),
    };
    Tool::new(name, description, schema_for_type::<A>())
        .with_raw_output_schema(output_schema::<R>())
        .with_annotations(annotations.open_world(false))
}

/// Every tool, in the order clients show them: its arguments, its result.
pub(super) fn list() -> Vec<Tool> {
    use Kind::*;
    vec![
        tool::<CreateSandbox, SessionInfo>("create_sandbox", Additive,
            "Create an isolated Linux sandbox; returns its session_id. Optionally with a persistent workspace at /workspace, environment, TTL and network policy."),
        tool::<NoArgs, SandboxList>("list_sandboxes", ReadOnly, "List the live sandboxes."),
        tool::<SessionArg, OkResponse>("destroy_sandbox", Destructive,
            "Destroy a sandbox and everything in it but its persistent workspace."),
        tool::<SessionArg, SessionInfo>("pause_sandbox", Destructive,
            "Freeze every process of a sandbox: its memory is kept, it uses no CPU and its TTL stops (a shorter paused limit runs instead). Any later call on the sandbox resumes it first."),
        tool::<SessionArg, SessionInfo>("resume_sandbox", Additive,
            "Thaw a paused sandbox (every process goes on where it was), or wake a hibernated one."),
        tool::<SessionArg, SessionInfo>("hibernate_sandbox", Destructive,
            "Hibernate a sandbox: every process ends and its memory is freed; its files (/, /tmp, /workspace) and the shell's directory and exported variables are kept on disk. Any later call on the sandbox starts it again on them."),
        tool::<ForkSandbox, ForkResponse>("fork_sandbox", Additive,
            "Copy a sandbox into `count` new ones (copy-on-write copies of its files, a copy of its workspace, its image, TTL and network policy) to try alternatives in parallel; processes are not copied. Returns the new sandboxes."),
        tool::<RunCommand, CommandResult>("run_command", Destructive,
            "Run a bash command in the sandbox's persistent shell and return its output and exit code (a non-zero exit is reported as an error). Output is streamed as progress notifications when the request has a progress token; cancelling the request interrupts the command."),
        tool::<StartProcess, ProcessInfo>("start_process", Destructive,
            "Start a background process (a server, a long job); returns its pid at once. Read its output with process_output."),
        tool::<ProcessOutput, ProcessOutputResult>("process_output", ReadOnly,
            "The output of a background process so far (the last 1 MiB) and whether it ended, waiting up to wait_seconds for its end."),
        tool::<SendStdin, OkResponse>("send_stdin", Destructive, "Write text to a background process's stdin."),
        tool::<KillProcess, OkResponse>("kill_process", Destructive,
            "Send a signal (default TERM) to a background process and its process group."),
        tool::<SessionArg, ProcessList>("list_processes", ReadOnly,
            "List the sandbox's background processes, running and recently ended."),
        tool::<ReadFile, FileText>("read_file", ReadOnly,
            "Read a file in the sandbox: UTF-8 text as text, other content as base64."),
        tool::<WriteFile, PathResult>("write_file", Destructive,
            "Write a whole file in the sandbox, creating missing directories."),
        tool::<ListDir, DirListing>("list_dir", ReadOnly, "List a directory in the sandbox."),
        tool::<DeletePath, OkResponse>("delete_path", Destructive, "Delete a file or directory in the sandbox."),
        tool::<MovePath, PathResult>(
            "move_path",
            Destructive,
            "Move or rename a file or directory in the sandbox.",
        ),
        tool::<NoArgs, WorkspaceList>("list_workspaces", ReadOnly, "List the persistent workspaces."),
        tool::<SnapshotWorkspace, SnapshotInfo>("snapshot_workspace", Additive,
            "Take a point-in-time snapshot of a workspace."),
        tool::<WorkspaceArg, SnapshotList>("list_snapshots", ReadOnly, "List a workspace's snapshots."),
        tool::<RestoreWorkspace, OkResponse>("restore_workspace", Destructive,
            "Replace a workspace's content with a snapshot of it (no sandbox may have it mounted)."),
        tool::<GetPortUrl, PortUrl>("get_port_url", Additive,
            "A signed, expiring URL that opens a TCP port of the sandbox (a web server inside) from a browser, without the API key."),
    ]
}

// ------------------------------------------------------------- the calls

/// A tool's answer of type `T` (the tool's result type in [`list`]): the
/// structured content, the text for text-only clients (the JSON when
/// `None`), and whether it is a failure the model reads (a non-zero exit).
struct Reply<T> {
    value: T,
    text: Option<String>,
    is_error: bool,
}

impl<T: Serialize> Reply<T> {
    fn json(value: T) -> Result<Reply<T>, ApiError> {
        Ok(Reply {
            value,
            text: None,
            is_error: false,
        })
    }

    fn into_result(self) -> Result<CallToolResult, ApiError> {
        let value = serde_json::to_value(self.value)
            .map_err(|e| ApiError::Internal(format!("serializing a tool result: {e}")))?;
        let text = self.text.unwrap_or_else(|| value.to_string());
        let mut result = if self.is_error {
            CallToolResult::structured_error(value)
        } else {
            CallToolResult::structured(value)
        };
        result.content = vec![ContentBlock::text(text)];
        Ok(result)
    }
}

impl Reply<OkResponse> {
    fn ok() -> Result<Reply<OkResponse>, ApiError> {
        Reply::json(OkResponse::TRUE)
    }
}

/// A failure as the model reads it: the API's error code, message and
/// details (a 500's detail stays in the log).
fn failure(tool: &str, e: ApiError) -> CallToolResult {
    let (status, code) = e.status_and_code();
    if status.is_server_error() {
        tracing::error!(tool, error = ?e, "MCP tool failed");
    }
    let body = ErrorBody {
        error_code: code,
        message: e.message(),
        details: e.details(),
    };
    let text = format!("{code}: {}", body.message);
    let value = serde_json::to_value(body).unwrap_or_else(|_| json!({ "error_code": code }));
    let mut result = CallToolResult::structured_error(value);
    result.content = vec![ContentBlock::text(text)];
    result
}

/// The arguments as `T`, or an `INVALID_REQUEST` that names the problem.
fn args<T: DeserializeOwned>(tool: &str, request: &CallToolRequestParams) -> Result<T, ApiError> {
    let object = Value::Object(request.arguments.clone().unwrap_or_default());
    serde_json::from_value(object)
        .map_err(|e| ApiError::InvalidRequest(format!("invalid arguments for {tool}: {e}")))
}

/// Runs the tool `request` names. An unknown tool is a protocol error
/// (`-32602`, as the specification has it); everything that goes wrong in
/// a known tool, bad arguments included, is a tool result with `isError`.
pub(super) async fn call(
    state: &AppState,
    request: CallToolRequestParams,
    context: RequestContext<RoleServer>,
) -> Result<CallToolResult, ErrorData> {
    let name = request.name.to_string();
    match dispatch(state, &name, &request, &context).await {
        Some(Ok(result)) => Ok(result),
        Some(Err(e)) => Ok(failure(&name, e)),
        None => Err(ErrorData::invalid_params(
            format!("unknown tool: {name}"),
            Some(json!({ "tool": name })),
        )),
    }
}

/// The tool's answer; `None` for a name that is no tool. Each function
/// returns the result type its tool declares in [`list`].
async fn dispatch(
    state: &AppState,
    name: &str,
    request: &CallToolRequestParams,
    context: &RequestContext<RoleServer>,
) -> Option<Result<CallToolResult, ApiError>> {
    macro_rules! run {
        ($f:ident $(, $extra:expr)?) => {
            match args(name, request) {
                Ok(a) => $f(state, a $(, $extra)?).await.and_then(Reply::into_result),
                Err(e) => Err(e),
            }
        };
    }
    Some(match name {
        "create_sandbox" => run!(create_sandbox),
        "list_sandboxes" => run!(list_sandboxes),
        "destroy_sandbox" => run!(destroy_sandbox),
        "pause_sandbox" => run!(pause_sandbox),
        "resume_sandbox" => run!(resume_sandbox),
        "hibernate_sandbox" => run!(hibernate_sandbox),
        "fork_sandbox" => run!(fork_sandbox),
        "run_command" => run!(run_command, context),
        "start_process" => run!(start_process),
        "process_output" => run!(process_output, context),
        "send_stdin" => run!(send_stdin),
        "kill_process" => run!(kill_process),
        "list_processes" => run!(list_processes),
        "read_file" => run!(read_file),
        "write_file" => run!(write_file),
        "list_dir" => run!(list_dir),
        "delete_path" => run!(delete_path),
        "move_path" => run!(move_path),
        "list_workspaces" => run!(list_workspaces),
        "snapshot_workspace" => run!(snapshot_workspace),
        "list_snapshots" => run!(list_snapshots),
        "restore_workspace" => run!(restore_workspace),
        "get_port_url" => run!(get_port_url),
        _ => return None,
    })
}

async fn create_sandbox(
    state: &AppState,
    a: CreateSandbox,
) -> Result<Reply<SessionInfo>, ApiError> {
    let req = CreateSessionRequest {
        image: a.image,
        ttl_seconds: a.ttl_seconds,
        workspace_id: a.workspace_id,
        env: a.env,
        disk_limit_mb: None,
        network: a.network.map(|n| NetworkPolicyRequest {
            mode: n.mode.map(|m| match m {
                NetMode::None => wire::NetworkMode::None,
                NetMode::Full => wire::NetworkMode::Full,
            }),
            allow_out: n.allow_out,
            deny_out: n.deny_out,
        }),
        network_mode: None,
        metadata: None,
        ..Default::default()
    };
    let info = state.backend.create_session(req.into()).await?;
    Reply::json(SessionInfo::from(info))
}

async fn list_sandboxes(state: &AppState, _: NoArgs) -> Result<Reply<SandboxList>, ApiError> {
    let sessions = state.backend.list_sessions().await;
    let sandboxes = sessions.into_iter().map(SessionInfo::from).collect();
    Reply::json(SandboxList { sandboxes })
}

async fn destroy_sandbox(state: &AppState, a: SessionArg) -> Result<Reply<OkResponse>, ApiError> {
    state.backend.destroy_session(&a.session_id).await?;
    Reply::ok()
}

async fn pause_sandbox(state: &AppState, a: SessionArg) -> Result<Reply<SessionInfo>, ApiError> {
    let info = state.backend.pause_session(&a.session_id).await?;
    Reply::json(SessionInfo::from(info))
}

async fn resume_sandbox(state: &AppState, a: SessionArg) -> Result<Reply<SessionInfo>, ApiError> {
    let info = state.backend.resume_session(&a.session_id).await?;
    Reply::json(SessionInfo::from(info))
}

async fn hibernate_sandbox(
    state: &AppState,
    a: SessionArg,
) -> Result<Reply<SessionInfo>, ApiError> {
    let info = state.backend.hibernate_session(&a.session_id).await?;
    Reply::json(SessionInfo::from(info))
}

async fn fork_sandbox(state: &AppState, a: ForkSandbox) -> Result<Reply<ForkResponse>, ApiError> {
    let kids = state.backend.fork_session(&a.session_id, a.count).await?;
    Reply::json(ForkResponse {
        sessions: kids.into_iter().map(SessionInfo::from).collect(),
    })
}

/// Runs a command through the engine's exec stream: chunks become progress
/// notifications (when the client sent a progress token) and the result's
/// output; the client's cancellation drops the stream, which interrupts
/// the command in the sandbox.
async fn run_command(
    state: &AppState,
    a: RunCommand,
    context: &RequestContext<RoleServer>,
) -> Result<Reply<CommandResult>, ApiError> {
    if a.cmd.is_empty() {
        return Err(ApiError::InvalidRequest("cmd must not be empty".into()));
    }
    let req = engine::ExecRequest {
        cmd: a.cmd,
        timeout_ms: a.timeout_seconds.map(|s| s.saturating_mul(1000)),
        raw_output: false,
    };
    let mut events = state.backend.exec_stream(&a.session_id, req).await?;
    let progress = context.meta.get_progress_token();
    let mut output = String::new();
    let mut dropped = false;
    let mut sent = 0usize;
    loop {
        let event = tokio::select! {
            _ = context.ct.cancelled() => {
                // Dropping `events` interrupts the command.
                return Err(ApiError::InvalidRequest("cancelled by the client".into()));
            }
            event = events.recv() => event,
        };
        match event {
            Some(ExecEvent::Chunk { data, .. }) => {
                sent += data.len();
                if let Some(token) = &progress {
                    let note = ProgressNotificationParam::new(token.clone(), sent as f64)
                        .with_message(data.clone());
                    // A client that went away is seen by the cancellation.
                    let _ = context.peer.notify_progress(note).await;
                }
                output.push_str(&data);
                if output.len() > MAX_RESULT_OUTPUT {
                    let mut cut = output.len() - MAX_RESULT_OUTPUT;
                    while !output.is_char_boundary(cut) {
                        cut += 1;
                    }
                    output.drain(..cut);
                    dropped = true;
                }
            }
            Some(ExecEvent::Done {
                exit_code,
                cwd,
                duration_ms,
                timed_out,
                truncated,
            }) => {
                let mut text = output.clone();
                if exit_code != 0 {
                    if !text.is_empty() && !text.ends_with('\n') {
                        text.push('\n');
                    }
                    text.push_str(&if timed_out {
                        format!("[timed out: exit code {exit_code}]")
                    } else {
                        format!("[exit code {exit_code}]")
                    });
                }
                return Ok(Reply {
                    value: CommandResult {
                        exit_code,
                        output,
                        cwd,
                        duration_ms,
                        timed_out,
                        truncated: truncated || dropped,
                    },
                    text: Some(text),
                    is_error: exit_code != 0,
                });
            }
            Some(ExecEvent::Error { message }) => return Err(ApiError::Internal(message)),
            None => {
                return Err(ApiError::Internal(
                    "the command ended without a result".into(),
                ))
            }
        }
    }
}

fn proc_ref(process: &str) -> Result<engine::ProcRef, ApiError> {
    wire::proc_ref(process)
}

async fn start_process(state: &AppState, a: StartProcess) -> Result<Reply<ProcessInfo>, ApiError> {
    let spec = StartProcessRequest {
        cmd: a.cmd,
        argv: a.argv,
        env: a.env.unwrap_or_default(),
        cwd: a.cwd,
        user: match a.user {
            Some(User::Root) => wire::ProcessUser::Root,
            _ => wire::ProcessUser::Sandbox,
        },
        pty: None,
        stdin: a.stdin.unwrap_or(false),
        tag: a.tag,
    }
    .into_spec()?;
    let info = match state
        .backend
        .start_process(&a.session_id, spec, false)
        .await?
    {
        StartedProcess::Detached(info) => info,
        StartedProcess::Attached(out) => out.info.clone(),
    };
    Reply::json(ProcessInfo::from(info))
}

/// Attaches with replay and takes what comes until the process ends or
/// `wait_seconds` pass; detaching leaves it running.
async fn process_output(
    state: &AppState,
    a: ProcessOutput,
    context: &RequestContext<RoleServer>,
) -> Result<Reply<ProcessOutputResult>, ApiError> {
    let wait = a.wait_seconds.unwrap_or(1.0);
    if !(0.0..=MAX_WAIT_SECONDS).contains(&wait) {
        return Err(ApiError::InvalidRequest(format!(
            "wait_seconds must be from 0 to {MAX_WAIT_SECONDS}"
        )));
    }
    let proc = proc_ref(&a.process)?;
    let mut out = state
        .backend
        .attach_process(&a.session_id, proc, true)
        .await?;
    let mut info = out.info.clone();
    let mut texts: [String; 3] = Default::default();
    let mut partial: [Vec<u8>; 3] = Default::default();
    let deadline = tokio::time::sleep(Duration::from_secs_f64(wait));
    tokio::pin!(deadline);
    loop {
        let event = tokio::select! {
            _ = &mut deadline => break,
            _ = context.ct.cancelled() => break,
            event = out.next() => event,
        };
        match event {
            Ok(ProcEvent::Output { stream, data }) => {
                let slot = match stream {
                    ProcStream::Stdout => 0,
                    ProcStream::Stderr => 1,
                    ProcStream::Pty => 2,
                };
                texts[slot].push_str(&decode_utf8(&mut partial[slot], &data));
            }
            Ok(ProcEvent::End(end)) => {
                info.end = Some(end);
                break;
            }
            Err(e) => {
                return Err(ApiError::Internal(format!(
                    "the connection to the sandbox was lost: {e}"
                )))
            }
        }
    }
    let [stdout, stderr, pty] = texts;
    let info = ProcessInfo::from(info);
    let mut text = String::new();
    for (name, s) in [("stdout", &stdout), ("stderr", &stderr), ("terminal", &pty)] {
        if !s.is_empty() {
            text.push_str(&format!("[{name}]\n{s}"));
            if !s.ends_with('\n') {
                text.push('\n');
            }
        }
    }
    text.push_str(&match (info.running, info.exit_code) {
        (true, _) => format!("[pid {} still running]", info.pid),
        (false, Some(code)) => format!("[pid {} ended: exit code {code}]", info.pid),
        (false, None) => format!("[pid {} ended]", info.pid),
    });
    Ok(Reply {
        value: ProcessOutputResult {
            process: info,
            stdout,
            stderr,
            pty,
        },
        text: Some(text),
        is_error: false,
    })
}

async fn send_stdin(state: &AppState, a: SendStdin) -> Result<Reply<OkResponse>, ApiError> {
    let proc = proc_ref(&a.process)?;
    state
        .backend
        .process_input(&a.session_id, proc.clone(), a.data.into_bytes())
        .await?;
    if a.close.unwrap_or(false) {
        state
            .backend
            .close_process_stdin(&a.session_id, proc)
            .await?;
    }
    Reply::ok()
}

async fn kill_process(state: &AppState, a: KillProcess) -> Result<Reply<OkResponse>, ApiError> {
    let proc = proc_ref(&a.process)?;
    let name = a.signal.unwrap_or_else(|| "TERM".into());
    let signal = match name.parse::<i64>() {
        Ok(n) => json!(n),
        Err(_) => json!(name),
    };
    let number = SignalRequest { signal }.number()?;
    state
        .backend
        .signal_process(&a.session_id, proc, number)
        .await?;
    Reply::ok()
}

async fn list_processes(state: &AppState, a: SessionArg) -> Result<Reply<ProcessList>, ApiError> {
    let list = state.backend.list_processes(&a.session_id).await?;
    let processes = list.into_iter().map(ProcessInfo::from).collect();
    Reply::json(ProcessList { processes })
}

async fn read_file(state: &AppState, a: ReadFile) -> Result<Reply<FileText>, ApiError> {
    let max = match a.max_bytes {
        Some(0) | None => DEFAULT_READ_BYTES,
        Some(n) => n,
    };
    let content = super::read_whole(state, &a.session_id, &a.path, max).await?;
    let (encoding, body, text) = match String::from_utf8(content.data) {
        Ok(text) => ("text", text.clone(), text),
        Err(e) => {
            let bytes = e.into_bytes();
            let encoded = base64::engine::general_purpose::STANDARD.encode(&bytes);
            let text = format!(
                "[{} bytes of binary content, base64]\n{encoded}",
                bytes.len()
            );
            ("base64", encoded, text)
        }
    };
    let value = FileText {
        path: content.path,
        encoding,
        content: body,
        truncated: content.truncated,
    };
    Ok(Reply {
        value,
        text: Some(text),
        is_error: false,
    })
}

async fn write_file(state: &AppState, a: WriteFile) -> Result<Reply<PathResult>, ApiError> {
    let (text, content_base64) = match a.encoding.unwrap_or(Encoding::Text) {
        Encoding::Text => (Some(a.content), None),
        Encoding::Base64 => (None, Some(a.content)),
    };
    let path = a.path.clone();
    let req = WriteFileRequest {
        path: a.path,
        text,
        content_base64,
    };
    let _written = write_in(state, FileScope::Session(&a.session_id), req).await?;
    Reply::json(PathResult { ok: true, path })
}

async fn list_dir(state: &AppState, a: ListDir) -> Result<Reply<DirListing>, ApiError> {
    let listing = list_in(
        state,
        FileScope::Session(&a.session_id),
        ListQuery { path: a.path },
    )
    .await?
    .0;
    Reply::json(listing)
}

async fn delete_path(state: &AppState, a: DeletePath) -> Result<Reply<OkResponse>, ApiError> {
    check_path(&a.path)?;
    state
        .backend
        .remove(&a.session_id, &a.path, a.recursive.unwrap_or(false))
        .await?;
    Reply::ok()
}

async fn move_path(state: &AppState, a: MovePath) -> Result<Reply<PathResult>, ApiError> {
    check_path(&a.from)?;
    check_path(&a.to)?;
    let path = state.backend.rename(&a.session_id, &a.from, &a.to).await?;
    Reply::json(PathResult { ok: true, path })
}

async fn list_workspaces(state: &AppState, _: NoArgs) -> Result<Reply<WorkspaceList>, ApiError> {
    let list = state.backend.list_workspaces().await?;
    let workspaces = list.into_iter().map(WorkspaceInfo::from).collect();
    Reply::json(WorkspaceList { workspaces })
}

async fn snapshot_workspace(
    state: &AppState,
    a: SnapshotWorkspace,
) -> Result<Reply<SnapshotInfo>, ApiError> {
    let snap = state
        .backend
        .create_snapshot(&a.workspace_id, a.label)
        .await?;
    Reply::json(SnapshotInfo::from(snap))
}

async fn list_snapshots(
    state: &AppState,
    a: WorkspaceArg,
) -> Result<Reply<SnapshotList>, ApiError> {
    let list = state.backend.list_snapshots(&a.workspace_id).await?;
    let snapshots = list.into_iter().map(SnapshotInfo::from).collect();
    Reply::json(SnapshotList { snapshots })
}

async fn restore_workspace(
    state: &AppState,
    a: RestoreWorkspace,
) -> Result<Reply<OkResponse>, ApiError> {
    state
        .backend
        .restore_snapshot(&a.workspace_id, &a.snapshot_id)
        .await?;
    Reply::ok()
}

async fn get_port_url(state: &AppState, a: GetPortUrl) -> Result<Reply<PortUrl>, ApiError> {
    if a.port == 0 {
        return Err(ApiError::InvalidRequest(
            "port must be from 1 to 65535".into(),
        ));
    }
    let url = crate::routes::ports::signed_url(state, &a.session_id, a.port, a.ttl_seconds).await?;
    Reply::json(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `$ref` under `v`.
    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(o) => {
                if let Some(Value::String(r)) = o.get("$ref") {
                    out.push(r);
                }
                o.values().for_each(|c| refs(c, out));
            }
            Value::Array(a) => a.iter().for_each(|c| refs(c, out)),
            _ => {}
        }
    }

    #[test]
    fn every_output_schema_is_an_object_schema_whose_refs_resolve_inside_it() {
        let tools = list();
        assert_eq!(tools.len(), 23);
        for t in &tools {
            let schema = t.output_schema.as_ref().expect("an output schema");
            assert_eq!(schema["type"], "object", "{}", t.name);
            let defs = schema["$defs"].as_object().expect("$defs");
            let root = Value::Object((**schema).clone());
            let mut found = Vec::new();
            refs(&root, &mut found);
            assert!(found.len() >= 2, "{}", t.name);
            for r in found {
                let name = r
                    .strip_prefix(DEFS_REFS)
                    .unwrap_or_else(|| panic!("{}: {r}", t.name));
                assert!(defs.contains_key(name), "{}: {r} unresolved", t.name);
            }
            assert!(
                !root.to_string().contains("\"format\":\"uint"),
                "{}",
                t.name
            );
        }
        let run = tools.iter().find(|t| t.name == "run_command").unwrap();
        let props = &run.output_schema.as_ref().unwrap()["$defs"]["CommandResult"]["properties"];
        assert!(
            props["exit_code"].is_object() && props["output"].is_object(),
            "{props}"
        );
    }
}
