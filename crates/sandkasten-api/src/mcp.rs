//! MCP at `/mcp`: the Model Context Protocol's streamable HTTP transport on
//! the daemon's own port, behind the same bearer key as every other route.
//!
//! The transport, the JSON-RPC framing, protocol-version negotiation,
//! sessions (`Mcp-Session-Id`, for clients of the revisions with an
//! `initialize` handshake) and stateless requests (the 2026-07-28 revision,
//! whose requests carry their version in `_meta`) are the official Rust
//! SDK's (`rmcp`: `StreamableHttpService` with its in-memory
//! `LocalSessionManager`), nested into the router as a tower service. What
//! is ours is [`Sandkasten`], the server handler: the tool list and its
//! calls (`tools`), and a sandbox's files as resources
//! (`sandkasten://sessions/{id}/files/{path}`).
//!
//! Like an HTTP handler, a tool only validates its arguments, calls engine
//! methods through [`Backend`](crate::backend::Backend) and converts the
//! result; the validation and conversions are the HTTP layer's own where
//! they exist (`routes::files`, `wire`). A failure of the tool (bad
//! arguments, an unknown session, a missing file, a non-zero exit) is a
//! tool result with `isError` and the API's `error_code`, which the model
//! reads; only what is not a tool call at all (an unknown tool, malformed
//! JSON-RPC) is a protocol error.
//!
//! Sessions are held in memory (about 50 KB each) until the client ends
//! them (DELETE) or they sit idle for rmcp's keep-alive (5 minutes); at
//! most [`MAX_SESSIONS`] live at once ([`sessions`]), past which an
//! `initialize` is refused with 503 and the live ones go on. rmcp logs
//! what a client sends whole at INFO (an `initialize`'s parameters, every
//! notification), so the daemon keeps rmcp at WARN and the handler logs a
//! client's name and version cut to [`LOGGED_CLIENT_CHARS`].

mod sessions;
mod tools;

use crate::AppState;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use rmcp::model::{
    ErrorData, Implementation, InitializeRequestParams, InitializeResult,
    ListResourceTemplatesResult, ListResourcesResult, ListToolsResult, PaginatedRequestParams,
    ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, ResourceContents,
    ResourceTemplate, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::RoleServer;
use sessions::CappedSessions;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The path the service is nested at.
pub(crate) const PATH: &str = "/mcp";

/// How often an idle SSE stream carries a keep-alive comment (under the
/// serve loop's idle timeout, and under proxies' usual 60 s).
const SSE_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The URI template of a sandbox's files.
const FILE_TEMPLATE: &str = "sandkasten://sessions/{id}/files/{+path}";
const FILE_URI_PREFIX: &str = "sandkasten://sessions/";

/// Largest file a resource read returns; the rest is cut (a resource has
/// no truncation flag, so the text says so).
const MAX_RESOURCE_BYTES: u64 = 1024 * 1024;

/// Most MCP sessions alive at once (about 50 MB of them); an `initialize`
/// past it is refused until a session ends or expires.
pub(crate) const MAX_SESSIONS: usize = 1000;

/// How much of a client's name and version its `initialize` logs.
const LOGGED_CLIENT_CHARS: usize = 64;

/// The `/mcp` service over `state`'s backend. `shutdown` ends its sessions
/// (and their open SSE streams) when the daemon stops, so a graceful
/// shutdown does not wait for MCP clients to hang up.
pub(crate) fn service(state: AppState, shutdown: CancellationToken) -> axum::Router {
    let sessions = Arc::new(CappedSessions::new(MAX_SESSIONS));
    let tools = Arc::new(tools::list());
    let config = StreamableHttpServerConfig::default()
        // Sessions for clients that initialize (revisions before
        // 2026-07-28); requests of 2026-07-28 are stateless either way.
        .with_legacy_session_mode(true)
        .with_json_response(true)
        .with_sse_keep_alive(Some(SSE_KEEP_ALIVE))
        .with_cancellation_token(shutdown)
        .with_max_request_body_bytes(state.max_body_bytes)
        // Every request carries the API key (checked before this service):
        // a page that rebinds a name to the daemon cannot present it, so the
        // Host check against DNS rebinding would only refuse remote clients.
        .disable_allowed_hosts();
    let service = StreamableHttpService::new(
        move || {
            Ok(Sandkasten {
                state: state.clone(),
                tools: tools.clone(),
            })
        },
        sessions.clone(),
        config,
    );
    axum::Router::new()
        .fallback_service(service)
        .layer(axum::middleware::from_fn_with_state(
            sessions,
            sessions::refuse_when_full,
        ))
}

/// The MCP server handler: one per session (or per stateless request),
/// each a handle on the same backend.
#[derive(Clone)]
pub(crate) struct Sandkasten {
    state: AppState,
    tools: Arc<Vec<rmcp::model::Tool>>,
}

impl rmcp::ServerHandler for Sandkasten {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .build(),
        )
        .with_server_info(
            Implementation::new("sandkasten", env!("CARGO_PKG_VERSION"))
                .with_title("Sandkasten sandboxes"),
        )
        .with_instructions(
            "Isolated Linux sandboxes. create_sandbox gives a session_id; run_command runs a \
             shell command in its persistent shell (cd and exported variables persist); \
             read_file, write_file, list_dir, delete_path work on its files (relative paths \
             are under /workspace); start_process runs a server or long job in the background; \
             pause_sandbox keeps an idle sandbox without CPU; destroy_sandbox when done.",
        )
    }

    async fn initialize(
        &self,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, ErrorData> {
        let client = &request.client_info;
        tracing::info!(
            client = %cut(&client.name, LOGGED_CLIENT_CHARS),
            client_version = %cut(&client.version, LOGGED_CLIENT_CHARS),
            protocol = %cut(request.protocol_version.as_str(), LOGGED_CLIENT_CHARS),
            "MCP session initialized"
        );
        context.peer.set_peer_info(request.clone());
        self.negotiate_initialize(&request)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items((*self.tools).clone()))
    }

    async fn call_tool(
        &self,
        request: rmcp::model::CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::CallToolResponse, ErrorData> {
        tools::call(&self.state, request, context)
            .await
            .map(Into::into)
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        // Files are reached through the template; there is no fixed list.
        Ok(ListResourcesResult::default())
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        Ok(ListResourceTemplatesResult::with_all_items(vec![
            ResourceTemplate::new(FILE_TEMPLATE, "sandbox-file")
                .with_title("A file in a sandbox")
                .with_description(
                    "A file inside a running sandbox, by session id and absolute path \
                     (sandkasten://sessions/ID/files/workspace/a.txt is /workspace/a.txt). \
                     UTF-8 files come as text, others as base64 blobs; at most 1 MiB.",
                ),
        ]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let uri = request.uri;
        let Some((id, path)) = parse_file_uri(&uri) else {
            return Err(ErrorData::invalid_params(
                format!("not a sandbox file URI: {uri:?} (use {FILE_TEMPLATE})"),
                None,
            ));
        };
        let content = read_whole(&self.state, &id, &path, MAX_RESOURCE_BYTES)
            .await
            .map_err(|e| {
                let (_, code) = e.status_and_code();
                let data = Some(serde_json::json!({ "error_code": code, "uri": uri }));
                match code {
                    "FILE_NOT_FOUND" | "SESSION_NOT_FOUND" => {
                        ErrorData::resource_not_found(e.message(), data)
                    }
                    "INTERNAL_ERROR" => ErrorData::internal_error(e.message(), data),
                    _ => ErrorData::invalid_params(e.message(), data),
                }
            })?;
        let contents = match String::from_utf8(content.data) {
            Ok(text) => ResourceContents::text(text, uri),
            Err(e) => ResourceContents::blob(
                base64::engine::general_purpose::STANDARD.encode(e.into_bytes()),
                uri,
            )
            .with_mime_type("application/octet-stream"),
        };
        Ok(ReadResourceResult::new(vec![contents]).into())
    }
}

/// `/mcp` in the OpenAPI document, as far as OpenAPI can say it: a POST of
/// one JSON-RPC message (answered by a JSON-RPC message, an SSE stream of
/// them, or 202 for a notification), a GET that opens a session's
/// notification stream, a DELETE that ends a session, and the JSON-RPC
/// error every refusal of the transport carries (`protocol_errors`). The
/// methods and tools themselves are MCP's to describe (`tools/list`).
pub(crate) fn document(doc: &mut utoipa::openapi::OpenApi) {
    let session = serde_json::json!({
        "name": "Mcp-Session-Id", "in": "header", "required": false,
        "description": "The session `initialize` answered with (revisions before 2026-07-28).",
        "schema": { "type": "string" },
    });
    let version = serde_json::json!({
        "name": "MCP-Protocol-Version", "in": "header", "required": false,
        "description": "The negotiated protocol revision, e.g. `2025-11-25` or `2026-07-28`.",
        "schema": { "type": "string" },
    });
    let rpc_error = |what: &str| {
        serde_json::json!({
            "description": what,
            "content": { "application/json": {
                "schema": { "$ref": "#/components/schemas/JsonRpcError" } } },
        })
    };
    let errors = serde_json::json!({
        "400": rpc_error("A message that is not JSON (`-32700`) or not a JSON-RPC request (`-32600`), no `Mcp-Session-Id` where the revision needs one, an unsupported `MCP-Protocol-Version`"),
        "404": rpc_error("An unknown or ended `Mcp-Session-Id`"),
        "406": rpc_error("`Accept` lacks `application/json` and `text/event-stream` (POST) or `text/event-stream` (GET)"),
    });
    let mut post_responses = serde_json::json!({
        "200": {
            "description": "The JSON-RPC answer: a result, or an error (an unknown method `-32601`, an unknown tool `-32602`). A tool's failure is a result with `isError`. As an SSE stream when progress notifications precede it.",
            "content": {
                "application/json": { "schema": { "$ref": "#/components/schemas/JsonRpcMessage" } },
                "text/event-stream": { "schema": { "type": "string" } },
            },
        },
        "202": { "description": "A notification or a response, accepted" },
        "413": rpc_error("The body is over `max_body_mb`"),
        "415": rpc_error("`Content-Type` is not `application/json`"),
    });
    let mut get_responses = serde_json::json!({
        "200": {
            "description": "The session's stream of server messages (SSE)",
            "content": { "text/event-stream": { "schema": { "type": "string" } } },
        },
    });
    let mut delete_responses = serde_json::json!({
        "200": { "description": "The session is ended (or was not there)" },
    });
    for r in [
        &mut post_responses,
        &mut get_responses,
        &mut delete_responses,
    ] {
        let r = r.as_object_mut().expect("an object");
        for (status, body) in errors.as_object().expect("an object") {
            r.entry(status.clone()).or_insert_with(|| body.clone());
        }
    }
    let item = serde_json::json!({
        "post": {
            "tags": ["mcp"],
            "summary": "Send an MCP message (streamable HTTP transport)",
            "description": "One JSON-RPC 2.0 message of the Model Context Protocol; `Accept: application/json, text/event-stream`. See docs/api.md, MCP.",
            "operationId": "mcp_post",
            "parameters": [session.clone(), version.clone()],
            "requestBody": { "required": true, "content": { "application/json": {
                "schema": { "$ref": "#/components/schemas/JsonRpcMessage" } } } },
            "responses": post_responses,
        },
        "get": {
            "tags": ["mcp"],
            "summary": "Open a session's notification stream",
            "description": "`Accept: text/event-stream`.",
            "operationId": "mcp_get",
            "parameters": [session.clone(), version.clone()],
            "responses": get_responses,
        },
        "delete": {
            "tags": ["mcp"],
            "summary": "End an MCP session",
            "operationId": "mcp_delete",
            "parameters": [session, version],
            "responses": delete_responses,
        },
    });
    let message = serde_json::json!({
        "type": "object",
        "description": "A JSON-RPC 2.0 message: a request (`method`, `id`), a notification (`method`, no `id`) or a response (`id`, `result` or `error`).",
        "required": ["jsonrpc"],
        "properties": {
            "jsonrpc": { "type": "string", "enum": ["2.0"] },
            "id": { "type": ["string", "integer", "null"] },
            "method": { "type": "string", "example": "tools/list" },
            "params": { "type": "object" },
            "result": { "type": "object" },
            "error": { "$ref": "#/components/schemas/JsonRpcErrorObject" },
        },
    });
    let error_object = serde_json::json!({
        "type": "object",
        "required": ["code", "message"],
        "properties": {
            "code": { "type": "integer", "example": -32600 },
            "message": { "type": "string" },
            "data": {
                "type": ["object", "array", "string", "number", "boolean", "null"],
                "description": "Details, any JSON",
            },
        },
    });
    let error = serde_json::json!({
        "type": "object",
        "description": "A JSON-RPC 2.0 error answer (`id` null when the request's could not be read).",
        "required": ["jsonrpc", "error"],
        "properties": {
            "jsonrpc": { "type": "string", "enum": ["2.0"] },
            "id": { "type": ["string", "integer", "null"] },
            "error": { "$ref": "#/components/schemas/JsonRpcErrorObject" },
        },
    });
    let item = serde_json::from_value(item).expect("a valid path item");
    doc.paths.paths.insert(PATH.to_string(), item);
    let components = doc.components.get_or_insert_with(Default::default);
    for (name, schema) in [
        ("JsonRpcMessage", message),
        ("JsonRpcError", error),
        ("JsonRpcErrorObject", error_object),
    ] {
        let schema = serde_json::from_value(schema).expect("a valid schema");
        components.schemas.insert(name.to_string(), schema);
    }
}

/// JSON-RPC error codes of the specification.
const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
/// The implementation-defined server error (the daemon is full).
const SERVER_ERROR: i64 = -32000;

/// Middleware on `/mcp`: the SDK answers a request it cannot take (not
/// JSON, not a JSON-RPC message, too large, an unknown session, the wrong
/// media type or `Accept`) with a plain-text body; this gives such answers
/// the protocol's shape, a JSON-RPC error without an id (a POST body that
/// is not JSON at all is `-32700`, with status 400 like any other malformed
/// message; the rest `-32600` with the SDK's status), so a client reads
/// them like every other error, and the OpenAPI document can say what
/// every refusal is. A DELETE that ends a session answers 200.
pub(crate) async fn protocol_errors(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let limit = state.max_body_bytes;
    if req.method() != Method::POST {
        let delete = req.method() == Method::DELETE;
        let mut response = next.run(req).await;
        // A session's end is 200, as the reference servers answer: the SDK
        // says 202, which Python's `mcp` 1.x client logs as a failed
        // termination.
        if delete && response.status() == StatusCode::ACCEPTED {
            *response.status_mut() = StatusCode::OK;
        }
        return match plain_client_error(response).await {
            Ok((status, text)) => rpc_error(status, INVALID_REQUEST, &text),
            Err(response) => response,
        };
    }
    // The body holds room in the daemon's body budget for as long as the
    // answer lasts (a tool call's answer may be a stream that outlives this
    // function).
    let announced = crate::bodies::announced(&req);
    let mut claim = match state.bodies.claim(announced, limit as u64).await {
        Ok(c) => c,
        Err(e) => {
            let mut r = rpc_error(
                StatusCode::SERVICE_UNAVAILABLE,
                SERVER_ERROR,
                &e.to_string(),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return r;
        }
    };
    let (parts, body) = req.into_parts();
    // The body is read here (within the daemon's limit, like every
    // route's) and handed on; a copy is kept to tell a parse error from an
    // invalid request.
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(_) => {
            let message = format!("the request body is larger than the limit of {limit} bytes");
            return rpc_error(StatusCode::PAYLOAD_TOO_LARGE, INVALID_REQUEST, &message);
        }
    };
    claim.shrink_to(bytes.len() as u64);
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes.clone())))
        .await;
    let (status, text) = match plain_client_error(response).await {
        Ok(error) => error,
        Err(response) => return crate::bodies::Holding::wrap(response, claim),
    };
    if status == StatusCode::UNSUPPORTED_MEDIA_TYPE && text.starts_with("fail to deserialize") {
        let code = if serde_json::from_slice::<serde_json::Value>(&bytes).is_ok() {
            INVALID_REQUEST
        } else {
            PARSE_ERROR
        };
        return rpc_error(StatusCode::BAD_REQUEST, code, &text);
    }
    rpc_error(status, INVALID_REQUEST, &text)
}

/// The status and text of a 4xx answered as plain text (or without a
/// type), else the response untouched.
async fn plain_client_error(response: Response) -> Result<(StatusCode, String), Response> {
    let status = response.status();
    let is_text = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_none_or(|t| t.as_bytes().starts_with(b"text/plain"));
    if !status.is_client_error() || !is_text {
        return Err(response);
    }
    let text = match axum::body::to_bytes(response.into_body(), 64 * 1024).await {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(_) => String::new(),
    };
    Ok((status, text))
}

/// `s` cut to its first `max` characters (`…` marks a cut), for a log line.
fn cut(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match s.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &s[..end]).into(),
        None => s.into(),
    }
}

fn rpc_error(status: StatusCode, code: i64, message: &str) -> Response {
    let body = serde_json::json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": { "code": code, "message": message },
    });
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// `(session id, absolute path)` of `sandkasten://sessions/{id}/files/{path}`;
/// the path's `%XX` escapes decoded.
fn parse_file_uri(uri: &str) -> Option<(String, String)> {
    let rest = uri.strip_prefix(FILE_URI_PREFIX)?;
    let (id, path) = rest.split_once("/files/")?;
    if id.is_empty() || id.contains('/') || path.is_empty() {
        return None;
    }
    let path = percent_decode(path)?;
    Some((id.to_string(), format!("/{}", path.trim_start_matches('/'))))
}

/// RFC 3986 percent-decoding into UTF-8; `None` for a broken escape.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A file of a session read whole, up to `max_bytes`.
pub(crate) async fn read_whole(
    state: &AppState,
    id: &str,
    path: &str,
    max_bytes: u64,
) -> Result<sandkasten_engine::FileContent, crate::error::ApiError> {
    crate::routes::files::check_path(path)?;
    let reader = state.backend.read_file(id, path, Some(max_bytes)).await?;
    Ok(reader.read_all().await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_uris() {
        assert_eq!(
            parse_file_uri("sandkasten://sessions/abc/files/workspace/a%20b.txt"),
            Some(("abc".into(), "/workspace/a b.txt".into()))
        );
        assert_eq!(
            parse_file_uri("sandkasten://sessions/abc/files//etc/hostname"),
            Some(("abc".into(), "/etc/hostname".into()))
        );
        assert_eq!(parse_file_uri("sandkasten://sessions/abc/files/"), None);
        assert_eq!(parse_file_uri("sandkasten://sessions//files/x"), None);
        assert_eq!(parse_file_uri("file:///etc/passwd"), None);
        assert_eq!(parse_file_uri("sandkasten://sessions/a/files/%zz"), None);
    }

    #[test]
    fn cut_bounds_log_fields() {
        assert_eq!(cut("claude", 64), "claude");
        assert_eq!(cut(&"x".repeat(64), 64), "x".repeat(64));
        assert_eq!(
            cut(&"x".repeat(5_000_000), 64),
            format!("{}…", "x".repeat(64))
        );
        assert_eq!(cut("ääää", 2), "ää…");
    }
}
