//! envd's HTTP surface, answered by the daemon for the sandbox a request
//! names: access, `/health`, `/files` (download and upload, signed URLs),
//! and the Connect services (`filesystem`, `process`), each call as the
//! user it names (`user`, the sandbox user, or `root`).
//!
//! Access: the sandbox's `X-Access-Token`, the daemon's key, or (for
//! `/files` only) a signature of the URL made with the token as the SDKs
//! make it: `v1_` + unpadded base64 of SHA-256 of
//! `{path}:{read|write}:{username}:{token}[:{expiry}]`. A signed URL may
//! not name its sandbox (with `E2B_SANDBOX_URL` the SDKs build
//! `{url}/files?…`); the running sandbox whose token makes the signature
//! is the one. Access is checked before the sandbox is looked up, so a
//! client without it learns nothing about which sandboxes exist.

use crate::connect::{Code, RpcError};
use crate::Shared;
use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use sandkasten_engine::{EngineError, FileError, ProcessError, SessionError, SessionState};
use sandkasten_engine::{FileOp, FileUser};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;

pub(crate) async fn serve(e2b: &Arc<Shared>, id: Option<String>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    if path == "/health" && id.is_none() {
        return StatusCode::NO_CONTENT.into_response();
    }
    let query = Query::parse(req.uri().query());
    let (id, access) = match authorize(e2b, id, &path, req.method(), req.headers(), &query).await {
        Ok(a) => a,
        Err(message) => return refuse(&path, Code::Unauthenticated, message),
    };
    if path == "/health" {
        return health(e2b, &id).await;
    }
    let state = match e2b.engine.get_session(&id).await {
        // Auto-resume, as E2B's proxy does for a sandbox paused with
        // `autoResume` (always on here): a paused sandbox is thawed, a
        // hibernated one woken, then the call goes on. (Another call may
        // have resumed it meanwhile: the state read after decides.)
        Ok(s) if matches!(s.status, SessionState::Paused | SessionState::Hibernated) => {
            if let Err(e) = e2b.engine.resume_session(&id).await {
                tracing::debug!(sandbox = %id, "envd: resuming for a call: {e}");
            }
            e2b.engine.get_session(&id).await.map(|s| s.status)
        }
        other => other.map(|s| s.status),
    };
    match state {
        Ok(SessionState::Running) => {}
        Ok(st) => {
            return refuse(
                &path,
                Code::NotFound,
                format!("sandbox {id} is {}", st.as_str()),
            )
        }
        Err(_) => return refuse(&path, Code::NotFound, format!("sandbox {id} not found")),
    }
    // A body read whole (an upload, a unary call's message) holds room in
    // the daemon's body budget until it is answered; `StreamInput` reads
    // one message at a time.
    let _claim = if path == "/process.Process/StreamInput" {
        None
    } else {
        let limit = if path == "/files" {
            e2b.cfg.max_body_bytes
        } else {
            crate::connect::MAX_MESSAGE_BYTES
        };
        // A compressed upload inflates up to the limit: it claims that.
        let compressed = req
            .headers()
            .get(header::CONTENT_ENCODING)
            .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
        let announced = match compressed {
            true => None,
            false => axum::body::HttpBody::size_hint(req.body()).exact(),
        };
        match e2b.cfg.bodies.claim(announced, limit as u64).await {
            Ok(c) => Some(c),
            Err(e) => return refuse(&path, Code::Unavailable, e.to_string()),
        }
    };
    if path == "/files" {
        let user = match file_user(access, query.get("username"), req.headers()) {
            Ok(u) => u,
            Err(m) => return file_error(StatusCode::BAD_REQUEST, m),
        };
        return match *req.method() {
            Method::GET => download(e2b, &id, user, &query).await,
            Method::POST => upload(e2b, &id, user, &query, req).await,
            _ => file_error(StatusCode::METHOD_NOT_ALLOWED, "use GET or POST".into()),
        };
    }
    if req.method() != Method::POST {
        return RpcError::new(Code::Unimplemented, "Connect calls are POST requests")
            .unary_response();
    }
    let root = match rpc_user(req.headers()) {
        Ok(root) => root,
        Err(e) => return e.unary_response(),
    };
    if let Some(method) = path.strip_prefix("/filesystem.Filesystem/") {
        let method = method.to_string();
        let user = if root {
            FileUser::Root
        } else {
            FileUser::Sandbox
        };
        return crate::filesystem::call(e2b, &id, &method, user, req).await;
    }
    if let Some(method) = path.strip_prefix("/process.Process/") {
        let method = method.to_string();
        return crate::process::call(e2b, &id, &method, root, req).await;
    }
    let mut r = RpcError::new(Code::Unimplemented, format!("no procedure {path}")).unary_response();
    *r.status_mut() = StatusCode::NOT_FOUND;
    r
}

/// An engine failure as a Connect error.
pub(crate) fn rpc_error(e: EngineError) -> RpcError {
    let code = match &e {
        EngineError::InvalidRequest(_) | EngineError::File(FileError::InvalidPath(_)) => {
            Code::InvalidArgument
        }
        EngineError::File(FileError::NotFound(_)) => Code::NotFound,
        EngineError::File(FileError::PermissionDenied(_)) => Code::PermissionDenied,
        EngineError::File(FileError::AlreadyExists(_)) => Code::AlreadyExists,
        EngineError::File(FileError::NoSpace(_)) | EngineError::StorageFull(_) => {
            Code::ResourceExhausted
        }
        EngineError::Session(
            SessionError::NotFound(_) | SessionError::NotRunning { .. } | SessionError::Lost(_),
        ) => Code::NotFound,
        EngineError::Process(ProcessError::NotFound(_) | ProcessError::Ended(_)) => Code::NotFound,
        EngineError::Process(ProcessError::StdinClosed(_)) => Code::FailedPrecondition,
        EngineError::Process(ProcessError::TagInUse(_)) => Code::AlreadyExists,
        EngineError::Process(ProcessError::StartFailed(_)) => Code::InvalidArgument,
        EngineError::Unsupported { .. } => Code::Unimplemented,
        _ => {
            tracing::error!("envd: {e}");
            return RpcError::new(Code::Internal, "internal error");
        }
    };
    RpcError::new(code, e.to_string())
}

/// Whether an RPC runs as root: the user of `Authorization: Basic
/// base64(user:)`, as the SDKs send it (none: the sandbox user).
fn rpc_user(headers: &HeaderMap) -> Result<bool, RpcError> {
    headers_user(headers).map(|u| u == FileUser::Root)
}

/// The user of a request's `Authorization: Basic base64(user:)`.
fn headers_user(headers: &HeaderMap) -> Result<FileUser, RpcError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(FileUser::Sandbox);
    };
    let bad = || {
        RpcError::new(
            Code::InvalidArgument,
            "Authorization: expected Basic base64(user:)",
        )
    };
    let value = value.to_str().map_err(|_| bad())?;
    let Some((scheme, cred)) = value.split_once(' ') else {
        return Err(bad());
    };
    if scheme.eq_ignore_ascii_case("bearer") {
        return Ok(FileUser::Sandbox); // the daemon's key
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(bad());
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(cred.trim())
        .map_err(|_| bad())?;
    let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
    let user = decoded.split(':').next().unwrap_or_default();
    check_user(Some(user)).map_err(|m| RpcError::new(Code::InvalidArgument, m))
}

/// A refusal in the form the path's client reads: Connect's for RPCs, the
/// envd API's `{"code", "message"}` for `/files`.
fn refuse(path: &str, code: Code, message: String) -> Response {
    if path == "/files" || path == "/health" {
        return file_error(code.http_status(), message);
    }
    RpcError::new(code, message).unary_response()
}

/// envd's health: 204 while the sandbox runs, 502 (as E2B's proxy
/// answers for a sandbox that is gone; the SDKs' `is_running` reads it).
async fn health(e2b: &Shared, id: &str) -> Response {
    match e2b.engine.get_session(id).await {
        Ok(s) if s.status == SessionState::Running => StatusCode::NO_CONTENT.into_response(),
        _ => file_error(StatusCode::BAD_GATEWAY, format!("sandbox {id} not found")),
    }
}

/// The decoded query of a `/files` request.
#[derive(Debug, Default)]
pub(crate) struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    fn parse(q: Option<&str>) -> Query {
        Query {
            pairs: crate::query::pairs(q),
        }
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The signature the SDKs put in a file URL.
pub(crate) fn signature(
    path: &str,
    op: &str,
    user: &str,
    token: &str,
    expiry: Option<&str>,
) -> String {
    let raw = match expiry {
        Some(e) => format!("{path}:{op}:{user}:{token}:{e}"),
        None => format!("{path}:{op}:{user}:{token}"),
    };
    let digest = Sha256::digest(raw.as_bytes());
    format!(
        "v1_{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    )
}

fn eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// What let a request in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// The sandbox's token or the daemon's key: any user.
    Token,
    /// A file URL's signature: only the user it signs.
    Signature,
}

/// The sandbox the request may act on and what let it in, or why not.
async fn authorize(
    e2b: &Shared,
    id: Option<String>,
    path: &str,
    method: &Method,
    headers: &HeaderMap,
    query: &Query,
) -> Result<(String, Access), String> {
    if let Some(id) = &id {
        let token = (e2b.cfg.envd_token)(id);
        let presented = headers.get("x-access-token").and_then(|v| v.to_str().ok());
        if presented.is_some_and(|p| eq(p, &token)) || (e2b.cfg.key_ok)(headers) {
            return Ok((id.clone(), Access::Token));
        }
    }
    let signed = path == "/files" && query.get("signature").is_some();
    if !signed {
        return Err(match id {
            Some(_) => "missing or invalid X-Access-Token".into(),
            None => "no sandbox named (E2b-Sandbox-Id)".into(),
        });
    }
    let op = if method == Method::GET {
        "read"
    } else {
        "write"
    };
    let sig = query.get("signature").unwrap_or_default();
    let file = query.get("path").unwrap_or_default();
    let user = query.get("username").unwrap_or_default();
    let expiry = query.get("signature_expiration");
    if let Some(e) = expiry {
        let e: i64 = e
            .parse()
            .map_err(|_| format!("signature_expiration {e:?} is not a Unix time"))?;
        if e < time::OffsetDateTime::now_utc().unix_timestamp() {
            return Err("the signed URL has expired".into());
        }
    }
    let candidates = match id {
        Some(id) => vec![id],
        None => e2b
            .engine
            .list_sessions()
            .await
            .into_iter()
            // Paused and hibernated ones too: the call resumes them.
            .filter(|s| {
                matches!(
                    s.status,
                    SessionState::Running | SessionState::Paused | SessionState::Hibernated
                )
            })
            .map(|s| s.id)
            .collect(),
    };
    candidates
        .into_iter()
        .find(|id| {
            let token = (e2b.cfg.envd_token)(id);
            eq(sig, &signature(file, op, user, &token, expiry))
        })
        .map(|id| (id, Access::Signature))
        .ok_or_else(|| "invalid signature".to_string())
}

/// An envd API error (`/files`).
fn file_error(status: StatusCode, message: String) -> Response {
    (
        status,
        Json(json!({"code": status.as_u16(), "message": message})),
    )
        .into_response()
}

/// An engine failure of a `/files` call.
fn engine_file_error(e: EngineError) -> Response {
    let status = match &e {
        EngineError::File(FileError::NotFound(_)) => StatusCode::NOT_FOUND,
        EngineError::File(FileError::PermissionDenied(_)) => StatusCode::FORBIDDEN,
        EngineError::File(FileError::AlreadyExists(_)) => StatusCode::CONFLICT,
        EngineError::File(FileError::InvalidPath(_))
        | EngineError::InvalidRequest(_)
        | EngineError::Unsupported { .. } => StatusCode::BAD_REQUEST,
        EngineError::File(FileError::NoSpace(_)) | EngineError::StorageFull(_) => {
            StatusCode::INSUFFICIENT_STORAGE
        }
        EngineError::Session(
            SessionError::NotFound(_) | SessionError::NotRunning { .. } | SessionError::Lost(_),
        ) => StatusCode::NOT_FOUND,
        _ => {
            tracing::error!("envd /files: {e}");
            return file_error(StatusCode::INTERNAL_SERVER_ERROR, "internal error".into());
        }
    };
    file_error(status, e.to_string())
}

/// The user a call names: `user` (E2B's default user) is our sandbox
/// user, `root` the sandbox's root; none is the sandbox user.
pub(crate) fn check_user(user: Option<&str>) -> Result<FileUser, String> {
    match user {
        None | Some("") | Some("user") | Some("sandbox") => Ok(FileUser::Sandbox),
        Some("root") => Ok(FileUser::Root),
        Some(u) => Err(format!(
            "unknown user {u:?}: use \"user\" (the sandbox user) or \"root\""
        )),
    }
}

/// The user of a `/files` call: its `username`, else (with the token)
/// the one of its `Authorization` header. A signed URL acts as the user
/// its signature covers (`username`, none the default user), as envd
/// does: the header, which the signature does not cover, is ignored.
fn file_user(
    access: Access,
    username: Option<&str>,
    headers: &HeaderMap,
) -> Result<FileUser, String> {
    match username {
        Some(u) if !u.is_empty() => check_user(Some(u)),
        _ if access == Access::Signature => Ok(FileUser::Sandbox),
        _ => headers_user(headers).map_err(|e| e.message),
    }
}

async fn download(e2b: &Shared, id: &str, user: FileUser, q: &Query) -> Response {
    let Some(path) = q.get("path").filter(|p| !p.is_empty()) else {
        return file_error(StatusCode::BAD_REQUEST, "path is required".into());
    };
    let reader = match e2b.engine.read_file_as(id, user, path, None).await {
        Ok(r) => r,
        Err(e) => return engine_file_error(e),
    };
    let name = reader.path.rsplit('/').next().unwrap_or_default();
    let disposition = attachment(name);
    let body = Body::from_stream(futures::stream::unfold(reader, |mut reader| async move {
        let chunk = reader.next().await?;
        Some((chunk.map_err(std::io::Error::other), reader))
    }));
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        body,
    )
        .into_response()
}

/// `Content-Disposition` of a download of `name`, whatever bytes a name
/// in the sandbox holds (quotes, control characters, non-ASCII): the
/// printable ASCII of it as `filename`, all of it percent-encoded as
/// `filename*` (RFC 6266).
fn attachment(name: &str) -> String {
    let plain: String = name
        .chars()
        .filter(|c| (c.is_ascii_graphic() || *c == ' ') && !matches!(c, '"' | '\\'))
        .collect();
    let mut encoded = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("attachment; filename=\"{plain}\"; filename*=UTF-8''{encoded}")
}

/// One written file, as envd answers it (`metadata` only when it has
/// some).
fn written(path: &str, meta: &[(String, String)]) -> serde_json::Value {
    let name = path.rsplit('/').next().unwrap_or_default();
    let mut v = json!({"name": name, "type": "file", "path": path});
    if !meta.is_empty() {
        let meta: serde_json::Map<String, serde_json::Value> =
            meta.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        v["metadata"] = serde_json::Value::Object(meta);
    }
    v
}

/// Header names that carry a file's metadata (`X-Metadata-<key>`); the
/// key is what follows, lower case (header names are).
const META_HEADER: &str = "x-metadata-";

/// The metadata an upload's `X-Metadata-*` headers carry, checked as envd
/// checks it: keys non-empty and short enough to be an extended
/// attribute's name with its prefix, values printable US-ASCII, all of it
/// at most 4096 bytes with the prefix counted per key.
fn upload_meta(headers: &HeaderMap) -> Result<Vec<(String, String)>, String> {
    let mut meta: Vec<(String, String)> = Vec::new();
    for (name, value) in headers {
        let Some(key) = name.as_str().strip_prefix(META_HEADER) else {
            continue;
        };
        let value = value.as_bytes();
        if let Some(b) = value.iter().find(|b| !(0x20..=0x7e).contains(*b)) {
            return Err(format!(
                "metadata value of {key:?}: printable US-ASCII only (found byte 0x{b:02x})"
            ));
        }
        let value = String::from_utf8_lossy(value).into_owned();
        match meta.iter_mut().find(|(k, _)| k == key) {
            Some(kv) => kv.1 = value,
            None => meta.push((key.to_string(), value)),
        }
    }
    // What the agent would refuse, refused before the content is written.
    if let Some(why) = sandkasten_engine::meta_problem(crate::filesystem::META_PREFIX, &meta) {
        return Err(why);
    }
    meta.sort();
    Ok(meta)
}

/// An upload's body as sent (`Content-Encoding` `identity` or none) or
/// gunzipped (`gzip`, as the SDKs compress with `gzip=True`), at most
/// `limit` bytes either way, read whole: a multipart parser stops at the
/// closing boundary, and a body left unread (the last chunk of a chunked
/// one) would end the connection (`Connection: close`, a reconnect for
/// the SDK's next call).
async fn upload_body(req: Request, limit: usize) -> Result<Request, Response> {
    let encoding = req
        .headers()
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase());
    let gzip = match encoding.as_deref() {
        None | Some("identity") | Some("") => false,
        Some("gzip") | Some("x-gzip") => true,
        Some(other) => {
            return Err(file_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Content-Encoding {other:?}: only gzip (or none) is accepted"),
            ))
        }
    };
    let too_large = || {
        file_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the file is over the limit of {limit} bytes"),
        )
    };
    let (mut parts, body) = req.into_parts();
    let packed = axum::body::to_bytes(body, limit).await.map_err(|e| {
        if over_limit(&e) {
            too_large()
        } else {
            file_error(
                StatusCode::BAD_REQUEST,
                format!("could not read the request body: {e}"),
            )
        }
    })?;
    parts.headers.remove(header::TRANSFER_ENCODING);
    if !gzip {
        parts
            .headers
            .insert(header::CONTENT_LENGTH, packed.len().into());
        return Ok(Request::from_parts(parts, Body::from(packed)));
    }
    let unpacked = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&packed[..])
            .take(limit as u64 + 1)
            .read_to_end(&mut out)
            .map(|_| {
                // read_to_end doubles its buffer: give back the slack.
                out.shrink_to_fit();
                out
            })
    })
    .await
    .map_err(|_| file_error(StatusCode::INTERNAL_SERVER_ERROR, "internal error".into()))?
    .map_err(|e| file_error(StatusCode::BAD_REQUEST, format!("the gzip body: {e}")))?;
    if unpacked.len() > limit {
        return Err(too_large());
    }
    parts.headers.remove(header::CONTENT_ENCODING);
    parts
        .headers
        .insert(header::CONTENT_LENGTH, unpacked.len().into());
    Ok(Request::from_parts(parts, Body::from(unpacked)))
}

/// Whether a body's read failed on the length limit (not on the client).
fn over_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = s.source();
    }
    false
}

async fn upload(e2b: &Shared, id: &str, user: FileUser, q: &Query, req: Request) -> Response {
    let meta = match upload_meta(req.headers()) {
        Ok(m) => m,
        Err(m) => return file_error(StatusCode::BAD_REQUEST, m),
    };
    let limit = e2b.cfg.max_body_bytes;
    let req = match upload_body(req, limit).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let query_path = q.get("path").filter(|p| !p.is_empty()).map(str::to_string);
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    if ct.starts_with("multipart/form-data") {
        let mut mp = match Multipart::from_request(req, &()).await {
            Ok(m) => m,
            Err(e) => return file_error(StatusCode::BAD_REQUEST, e.body_text()),
        };
        loop {
            let field = match mp.next_field().await {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return multipart_error(e),
            };
            let name = field.file_name().map(str::to_string);
            let data = match field.bytes().await {
                Ok(d) => d,
                Err(e) => return multipart_error(e),
            };
            let path = match (&query_path, name) {
                (Some(p), _) => p.clone(),
                (None, Some(n)) if !n.is_empty() => n,
                _ => {
                    return file_error(
                        StatusCode::BAD_REQUEST,
                        "a file part needs a path (the path parameter or its filename)".into(),
                    )
                }
            };
            files.push((path, data.to_vec()));
        }
    } else {
        let Some(path) = query_path else {
            return file_error(StatusCode::BAD_REQUEST, "path is required".into());
        };
        // Read whole (and within the limit) by `upload_body`.
        let data = match axum::body::to_bytes(req.into_body(), usize::MAX).await {
            Ok(d) => d,
            Err(e) => {
                return file_error(
                    StatusCode::BAD_REQUEST,
                    format!("could not read the request body: {e}"),
                )
            }
        };
        files.push((path, data.to_vec()));
    }
    if files.is_empty() {
        return file_error(StatusCode::BAD_REQUEST, "no file in the request".into());
    }
    let mut out = Vec::with_capacity(files.len());
    for (path, data) in files {
        let op = FileOp::Write {
            path: path.clone(),
            data,
            mode: None,
        };
        if let Err(e) = e2b.engine.file_as(id, user, op).await {
            return engine_file_error(e);
        }
        // As envd: the upload's metadata replaces the file's, so an
        // overwrite without any clears what an earlier upload left.
        let op = FileOp::WriteMeta {
            path: path.clone(),
            prefix: crate::filesystem::META_PREFIX.into(),
            meta: meta.clone(),
        };
        if let Err(e) = e2b.engine.file_as(id, user, op).await {
            return engine_file_error(e);
        }
        out.push(written(&crate::filesystem::absolute(&path), &meta));
    }
    Json(out).into_response()
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> Response {
    let status = e.status();
    let status = if status == StatusCode::PAYLOAD_TOO_LARGE {
        status
    } else {
        StatusCode::BAD_REQUEST
    };
    file_error(status, e.body_text())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_the_sdks() {
        // As e2b.sandbox.signature.get_signature makes it.
        let s = signature("/a.txt", "read", "", "tok", None);
        let raw = Sha256::digest(b"/a.txt:read::tok");
        assert_eq!(
            s,
            format!(
                "v1_{}",
                base64::engine::general_purpose::STANDARD_NO_PAD.encode(raw)
            )
        );
        assert_ne!(s, signature("/a.txt", "write", "", "tok", None));
        assert_ne!(s, signature("/a.txt", "read", "", "tok", Some("1")));
    }

    #[test]
    fn any_name_makes_a_valid_content_disposition() {
        for name in [
            "a b.txt",
            "q\"uote",
            "line\r\nbreak",
            "ümlaut",
            "back\\slash",
        ] {
            let d = attachment(name);
            assert!(
                axum::http::HeaderValue::from_str(&d).is_ok(),
                "{name:?}: {d}"
            );
        }
        assert_eq!(
            attachment("line\r\nx y"),
            "attachment; filename=\"linex y\"; filename*=UTF-8''line%0D%0Ax%20y"
        );
    }

    #[test]
    fn a_signed_url_acts_as_the_user_it_signs() {
        let mut root = HeaderMap::new();
        root.insert(header::AUTHORIZATION, "Basic cm9vdDo=".parse().unwrap());
        // The header, not covered by the signature, changes nothing.
        assert_eq!(
            file_user(Access::Signature, None, &root),
            Ok(FileUser::Sandbox)
        );
        assert_eq!(
            file_user(Access::Signature, Some(""), &root),
            Ok(FileUser::Sandbox)
        );
        assert_eq!(
            file_user(Access::Signature, Some("user"), &root),
            Ok(FileUser::Sandbox)
        );
        assert_eq!(
            file_user(Access::Signature, Some("root"), &HeaderMap::new()),
            Ok(FileUser::Root)
        );
        // With the token, the header names the user.
        assert_eq!(file_user(Access::Token, None, &root), Ok(FileUser::Root));
        assert_eq!(
            file_user(Access::Token, None, &HeaderMap::new()),
            Ok(FileUser::Sandbox)
        );
    }

    #[test]
    fn queries_are_decoded() {
        let q = Query::parse(Some("path=%2Fa%20b+c&username=user&x"));
        assert_eq!(q.get("path"), Some("/a b c"));
        assert_eq!(q.get("username"), Some("user"));
        assert_eq!(q.get("x"), Some(""));
        assert_eq!(q.get("y"), None);
        assert_eq!(check_user(Some("root")), Ok(FileUser::Root));
        assert_eq!(check_user(Some("user")), Ok(FileUser::Sandbox));
        assert_eq!(check_user(None), Ok(FileUser::Sandbox));
        assert!(check_user(Some("alice")).is_err());
    }
}
