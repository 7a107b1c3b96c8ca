//! `/v1/sessions/{id}/fs/*`: write, read, upload, and the extensions list,
//! stat, mkdir and remove. Paths are paths inside the sandbox; the engine
//! resolves relative ones against `/workspace`.
//!
//! Write, read, upload and list also exist without a session, on a
//! workspace (`routes::workspaces`). Both sets of handlers share the
//! validation and conversion here and differ only in the [`FileScope`]
//! they pass, which picks the engine method.
//!
//! A read is answered as a stream ([`read_response`]): the JSON of a
//! [`FileContent`], byte for byte, produced as the file's chunks come, so
//! the daemon never holds a file (nor its base64) whole, and a slow client
//! slows its own read down to the sandbox (backpressure) and nothing else.

use super::ApiResult;
use crate::backend::Backend;
use crate::error::ApiError;
use crate::extract::{body_error, ApiJson, ApiMultipart, ApiPath, ApiQuery};
use crate::wire::{
    DirEntry, DirListing, ErrorBody, FileContent, FileStat, ListQuery, MkdirRequest, MkdirResult,
    MoveRequest, MoveResult, OkResponse, PathQuery, ReadFileQuery, RemoveRequest, UploadForm,
    UploadResult, WriteFileRequest,
};
use crate::AppState;
use axum::body::Bytes;
use axum::extract::multipart::MultipartError;
use axum::extract::{Multipart, State};
use axum::http::header;
use axum::response::Response;
use axum::Json;
use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use futures::StreamExt;
use sandkasten_engine::{self as engine, EngineError};

/// The directory an upload goes to and a listing shows when the request
/// names none. In a session it is the sandbox's `/workspace`; the engine
/// reads it as the workspace's root in a workspace scope too.
const DEFAULT_DIR: &str = "/workspace";

/// Whose files a request touches: a session's sandbox, or a persistent
/// workspace without any session.
#[derive(Debug, Clone, Copy)]
pub(crate) enum FileScope<'a> {
    /// Paths inside the session's sandbox.
    Session(&'a str),
    /// Paths inside the workspace (`a`, `/a` and `/workspace/a` alike).
    Workspace(&'a str),
}

impl FileScope<'_> {
    async fn write(
        self,
        backend: &dyn Backend,
        path: &str,
        data: Vec<u8>,
    ) -> Result<String, EngineError> {
        match self {
            FileScope::Session(id) => backend.write_file(id, path, data).await,
            FileScope::Workspace(id) => backend.workspace_write_file(id, path, data).await,
        }
    }

    async fn read(
        self,
        backend: &dyn Backend,
        path: &str,
        max_bytes: Option<u64>,
    ) -> Result<engine::FileReader, EngineError> {
        match self {
            FileScope::Session(id) => backend.read_file(id, path, max_bytes).await,
            FileScope::Workspace(id) => backend.workspace_read_file(id, path, max_bytes).await,
        }
    }

    async fn list(
        self,
        backend: &dyn Backend,
        path: &str,
    ) -> Result<Vec<engine::DirEntry>, EngineError> {
        match self {
            FileScope::Session(id) => backend.list_dir(id, path).await,
            FileScope::Workspace(id) => backend.workspace_list_dir(id, path).await,
        }
    }
}

/// Standard base64 that accepts input with or without padding.
const BASE64_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Rejects paths that can never be valid; everything else is the engine's
/// to judge.
pub(crate) fn check_path(path: &str) -> ApiResult<()> {
    if path.is_empty() {
        return Err(ApiError::InvalidPath("path must not be empty".into()));
    }
    if path.contains('\0') {
        return Err(ApiError::InvalidPath("path must not contain NUL".into()));
    }
    Ok(())
}

/// Decodes `content_base64`; line breaks and spaces (as `base64` wraps its
/// output) are ignored.
pub(crate) fn decode_base64(text: &str) -> ApiResult<Vec<u8>> {
    let decoded = if text.bytes().any(|b| b.is_ascii_whitespace()) {
        let compact: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        BASE64_LENIENT.decode(compact)
    } else {
        BASE64_LENIENT.decode(text)
    };
    decoded.map_err(|e| ApiError::InvalidRequest(format!("content_base64 is not base64: {e}")))
}

/// Writes a whole file, creating missing parents.
#[utoipa::path(
    post,
    path = "/v1/sessions/{id}/fs/write",
    tag = "files",
    params(("id" = String, Path, description = "Session id")),
    request_body(content = WriteFileRequest, description = "`path` and exactly one of `text` and `content_base64`; empty content is allowed"),
    responses(
        (status = 200, description = "Written", body = OkResponse),
        (status = 400, description = "INVALID_REQUEST or INVALID_PATH", body = ErrorBody),
        (status = 404, description = "SESSION_NOT_FOUND", body = ErrorBody),
        (status = 410, description = "SESSION_LOST: the sandbox ended during the request", body = ErrorBody),
        (status = 409, description = "SESSION_NOT_RUNNING", body = ErrorBody),
        (status = 413, description = "PAYLOAD_TOO_LARGE", body = ErrorBody),
        (status = 507, description = "STORAGE_FULL: the quota or disk limit written to (or the host's disk) is full", body = ErrorBody),
    )
)]
pub(crate) async fn write_file(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<WriteFileRequest>,
) -> ApiResult<Json<OkResponse>> {
    write_in(&state, FileScope::Session(&id), req).await
}

/// Validates a write and writes the whole file in `scope`.
pub(crate) async fn write_in(
    state: &AppState,
    scope: FileScope<'_>,
    req: WriteFileRequest,
) -> ApiResult<Json<OkResponse>> {
    check_path(&req.path)?;
    let data = match (req.text, req.content_base64) {
        (Some(text), None) => text.into_bytes(),
        (None, Some(encoded)) => decode_base64(&encoded)?,
        (Some(_), Some(_)) => {
            return Err(ApiError::InvalidRequest(
                "give either text or content_base64, not both".into(),
            ))
        }
        (None, None) => {
            return Err(ApiError::InvalidRequest(
                "give the content as text or content_base64".into(),
            ))
        }
    };
    scope.write(&*state.backend, &req.path, data).await?;
    Ok(Json(OkResponse::TRUE))
}

/// Reads a file.
#[utoipa::path(
    get,
    path = "/v1/sessions/{id}/fs/read",
    tag = "files",
    params(("id" = String, Path, description = "Session id"), ReadFileQuery),
    responses(
        (status = 200, description = "The content (streamed as it is read)", body = FileContent),
        (status = 400, description = "INVALID_REQUEST, or INVALID_PATH for a directory", body = ErrorBody),
        (status = 403, description = "PERMISSION_DENIED", body = ErrorBody),
        (status = 404, description = "SESSION_NOT_FOUND or FILE_NOT_FOUND", body = ErrorBody),
        (status = 410, description = "SESSION_LOST: the sandbox ended during the request", body = ErrorBody),
        (status = 409, description = "SESSION_NOT_RUNNING", body = ErrorBody),
    )
)]
pub(crate) async fn read_file(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ReadFileQuery>,
) -> ApiResult<Response> {
    read_in(&state, FileScope::Session(&id), q).await
}

/// Validates a read and reads the file in `scope`. An error opening the
/// file is an error answer; once the file is open the answer is 200 and
/// streams (see [`read_response`]).
pub(crate) async fn read_in(
    state: &AppState,
    scope: FileScope<'_>,
    q: ReadFileQuery,
) -> ApiResult<Response> {
    check_path(&q.path)?;
    // v1 clients send `max_bytes=0` to mean "no limit of my own".
    let max_bytes = q.max_bytes.filter(|&n| n > 0);
    let reader = scope.read(&*state.backend, &q.path, max_bytes).await?;
    read_response(reader)
}

/// The JSON of a [`FileContent`] for a file read as a stream, produced
/// piece by piece: [`JsonBase64::head`], each chunk's base64 as it comes,
/// [`JsonBase64::tail`]. The next chunk is asked for only when the client
/// has taken the last one. A failure after the head ends the body early: a
/// client sees a broken answer, never a wrong one.
fn read_response(reader: engine::FileReader) -> ApiResult<Response> {
    let head = JsonBase64::head(&reader.path);
    let head = futures::stream::once(async move { Ok(Bytes::from(head)) });
    let rest = futures::stream::unfold(Some((reader, JsonBase64::default())), |state| async move {
        let (mut reader, mut json) = state?;
        loop {
            match reader.next().await {
                Some(Ok(chunk)) => {
                    let text = json.chunk(&chunk);
                    if !text.is_empty() {
                        return Some((Ok(Bytes::from(text)), Some((reader, json))));
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(path = %reader.path, "a file read failed midway: {e}");
                    return Some((Err(std::io::Error::other(e.to_string())), None));
                }
                None => {
                    let tail = json.tail(reader.truncated());
                    return Some((Ok(Bytes::from(tail)), None));
                }
            }
        }
    });
    let body = head.chain(rest);
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(axum::body::Body::from_stream(body))
        .map_err(|e| ApiError::Internal(format!("building the read response: {e}")))
}

/// The JSON text of a [`FileContent`] (`{"path":…,"content_base64":"…",
/// "truncated":…}`, exactly as serde_json writes it) for content that
/// comes in chunks: base64 is written in whole 3-byte groups, and the 0–2
/// bytes of a chunk that do not fill one wait for the next chunk or the
/// end, so the text is the same however the content is cut.
#[derive(Default)]
struct JsonBase64 {
    carry: Vec<u8>,
}

impl JsonBase64 {
    /// Everything before the content.
    fn head(path: &str) -> String {
        let path = serde_json::to_string(path).unwrap_or_else(|_| "\"\"".into());
        format!(r#"{{"path":{path},"content_base64":""#)
    }

    /// The base64 of `data` (with the bytes carried from before) in whole
    /// groups; may be empty.
    fn chunk(&mut self, mut data: &[u8]) -> String {
        let mut out = String::with_capacity((self.carry.len() + data.len()) / 3 * 4 + 4);
        if !self.carry.is_empty() {
            let take = (3 - self.carry.len()).min(data.len());
            self.carry.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.carry.len() < 3 {
                return out;
            }
            STANDARD.encode_string(&self.carry, &mut out);
            self.carry.clear();
        }
        let whole = data.len() / 3 * 3;
        STANDARD.encode_string(&data[..whole], &mut out);
        self.carry.extend_from_slice(&data[whole..]);
        out
    }

    /// The last group (padded) and everything after the content.
    fn tail(self, truncated: bool) -> String {
        let mut out = STANDARD.encode(&self.carry);
        out.push_str(&format!(r#"","truncated":{truncated}}}"#));
        out
    }
}

/// Rejects an upload filename that is not a plain name: a file goes exactly
/// into the target directory, never elsewhere.
pub(crate) fn check_upload_filename(name: &str) -> ApiResult<()> {
    let problem = if name.is_empty() {
        "is empty"
    } else if name == "." || name == ".." {
        "is not a file name"
    } else if name.contains('/') {
        "contains '/'"
    } else if name.contains('\0') {
        "contains NUL"
    } else {
        return Ok(());
    };
    Err(ApiError::InvalidPath(format!(
        "upload filename {name:?} {problem}"
    )))
}

/// `dir/name`, without doubling a trailing slash of `dir`.
fn upload_target(dir: &str, name: &str) -> String {
    format!("{}/{}", dir.trim_end_matches('/'), name)
}

fn multipart_error(e: MultipartError, limit: usize) -> ApiError {
    body_error(e.status(), e.body_text(), limit)
}

/// Uploads files as `multipart/form-data`: parts `file` or `files`, each
/// with a filename, and an optional text part `path` naming the target
/// directory (before or after the files).
#[utoipa::path(
    post,
    path = "/v1/sessions/{id}/fs/upload",
    tag = "files",
    params(("id" = String, Path, description = "Session id")),
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "Every file written", body = UploadResult),
        (status = 400, description = "INVALID_REQUEST, or INVALID_PATH for a bad filename or directory", body = ErrorBody),
        (status = 404, description = "SESSION_NOT_FOUND", body = ErrorBody),
        (status = 410, description = "SESSION_LOST: the sandbox ended during the request", body = ErrorBody),
        (status = 409, description = "SESSION_NOT_RUNNING", body = ErrorBody),
        (status = 413, description = "PAYLOAD_TOO_LARGE", body = ErrorBody),
        (status = 507, description = "STORAGE_FULL: the quota or disk limit written to (or the host's disk) is full", body = ErrorBody),
    )
)]
pub(crate) async fn upload(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiMultipart(form): ApiMultipart,
) -> ApiResult<Json<UploadResult>> {
    upload_in(&state, FileScope::Session(&id), form).await
}

/// Reads an upload form and writes its files in `scope`.
pub(crate) async fn upload_in(
    state: &AppState,
    scope: FileScope<'_>,
    mut form: Multipart,
) -> ApiResult<Json<UploadResult>> {
    let limit = state.max_body_bytes;
    let mut dir: Option<String> = None;
    let mut files: Vec<(String, Bytes)> = Vec::new();
    // The directory may come after the files, so the files are held until
    // the form is read; the body limit bounds what that holds. A bad part
    // is remembered, not answered at once: the rest of the body is read
    // first, so the client sees the 400 instead of a reset connection.
    let mut problem: Option<ApiError> = None;
    while let Some(field) = form
        .next_field()
        .await
        .map_err(|e| multipart_error(e, limit))?
    {
        let name = field.name().map(str::to_owned);
        let file_name = field.file_name().map(str::to_owned);
        let data = field.bytes().await.map_err(|e| multipart_error(e, limit))?;
        if problem.is_some() {
            continue;
        }
        match name.as_deref() {
            Some("file" | "files") => match file_name {
                None => {
                    problem = Some(ApiError::InvalidRequest(
                        "a file part has no filename".into(),
                    ))
                }
                Some(n) => match check_upload_filename(&n) {
                    Ok(()) => files.push((n, data)),
                    Err(e) => problem = Some(e),
                },
            },
            Some("path") => {
                if dir.is_some() {
                    problem = Some(ApiError::InvalidRequest(
                        "the form has more than one path part".into(),
                    ));
                } else {
                    match String::from_utf8(data.to_vec()) {
                        Ok(t) => dir = Some(t),
                        Err(_) => {
                            problem = Some(ApiError::InvalidRequest(
                                "the path part is not UTF-8".into(),
                            ))
                        }
                    }
                }
            }
            // Unknown parts are skipped, as unknown JSON fields are.
            _ => {}
        }
    }
    if let Some(p) = problem {
        return Err(p);
    }
    if files.is_empty() {
        return Err(ApiError::InvalidRequest(
            "no file: send one or more parts named file or files".into(),
        ));
    }
    let dir = dir
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| DEFAULT_DIR.to_owned());
    check_path(&dir)?;
    let mut paths = Vec::with_capacity(files.len());
    for (name, data) in files {
        let target = upload_target(&dir, &name);
        paths.push(scope.write(&*state.backend, &target, data.into()).await?);
    }
    Ok(Json(UploadResult { ok: true, paths }))
}

/// Lists a directory (extension).
#[utoipa::path(
    get,
    path = "/v1/sessions/{id}/fs/list",
    tag = "files",
    params(("id" = String, Path, description = "Session id"), ListQuery),
    responses(
        (status = 200, description = "The entries", body = DirListing),
        (status = 400, description = "INVALID_REQUEST, or INVALID_PATH for a non-directory", body = ErrorBody),
        (status = 403, description = "PERMISSION_DENIED", body = ErrorBody),
        (status = 404, description = "SESSION_NOT_FOUND or FILE_NOT_FOUND", body = ErrorBody),
        (status = 410, description = "SESSION_LOST: the sandbox ended during the request", body = ErrorBody),
        (status = 409, description = "SESSION_NOT_RUNNING", body = ErrorBody),
    )
)]
pub(crate) async fn list_dir(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<DirListing>> {
    list_in(&state, FileScope::Session(&id), q).await
}

/// Lists a directory in `scope`; the default directory when none is named.
pub(crate) async fn list_in(
    state: &AppState,
    scope: FileScope<'_>,
    q: ListQuery,
) -> ApiResult<Json<DirListing>> {
    let path = q.path.unwrap_or_else(|| DEFAULT_DIR.to_owned());
    check_path(&path)?;
    let entries = scope.list(&*state.backend, &path).await?;
    Ok(Json(DirListing {
        path,
        entries: entries.into_iter().map(DirEntry::from).collect(),
    }))
}

/// Metadata of a path, not following a final symlink (extension).
#[utoipa::path(
    get,
    path = "/v1/sessions/{id}/fs/stat",
    tag = "files",
    params(("id" = String, Path, description = "Session id"), PathQuery),
    responses(
        (status = 200, description = "The metadata", body = FileStat),
        (status = 400, description = "INVALID_REQUEST or INVALID_PATH", body = ErrorBody),
        (status = 403, description = "PERMISSION_DENIED", body = ErrorBody),
        (status = 404, description = "SESSION_NOT_FOUND or FILE_NOT_FOUND", body = ErrorBody),
        (status = 410, description = "SESSION_LOST: the sandbox ended during the request", body = ErrorBody),
        (status = 409, description = "SESSION_NOT_RUNNING", body = ErrorBody),
    )
)]
pub(crate) async fn stat(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<PathQuery>,
) -> ApiResult<Json<FileStat>> {
    check_path(&q.path)?;
    Ok(Json(state.backend.stat(&id, &q.path).await?.into()))
}

/// Creates a directory (extension).
#[utoipa::path(
    post,
    path = "/v1/sessions/{id}/fs/mkdir",
    tag = "files",
    params(("id" = String, Path, description = "Session id")),
    request_body = MkdirRequest,
    responses(
        (status = 200, description = "The directory exists", body = MkdirResult),
        (status = 400, description = "INVALID_REQUEST or INVALID_PATH", body = ErrorBody),
        (status = 403, description = "PERMISSION_DENIED", body = ErrorBody),
        (status = 404, description = "SESSION_NOT_FOUND, or FILE_NOT_FOUND for a missing parent without `parents`", body = ErrorBody),
        (status = 410, description = "SESSION_LOST: the sandbox ended during the request", body = ErrorBody),
        (status = 409, description = "SESSION_NOT_RUNNING, or ALREADY_EXISTS without `parents`", body = ErrorBody),
        (status = 507, description = "STORAGE_FULL: the quota or disk limit written to (or the host's disk) is full", body = ErrorBody),
    )
)]
pub(crate) async fn mkdir(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<MkdirRequest>,
) -> ApiResult<Json<MkdirResult>> {
    check_path(&req.path)?;
    let parents = req.parents.unwrap_or(true);
    let path = state.backend.mkdir(&id, &req.path, parents).await?;
    Ok(Json(MkdirResult { ok: true, path }))
}

/// Renames a file, symlink or directory (extension).
#[utoipa::path(
    post,
    path = "/v1/sessions/{id}/fs/move",
    tag = "files",
    params(("id" = String, Path, description = "Session id")),
    request_body = MoveRequest,
    responses(
        (status = 200, description = "Renamed", body = MoveResult),
        (status = 400, description = "INVALID_REQUEST or INVALID_PATH (`/`, a path ending in `.` or `..`, a directory onto a non-empty one or into itself)", body = ErrorBody),
        (status = 403, description = "PERMISSION_DENIED", body = ErrorBody),
        (status = 404, description = "SESSION_NOT_FOUND or FILE_NOT_FOUND", body = ErrorBody),
        (status = 410, description = "SESSION_LOST: the sandbox ended during the request", body = ErrorBody),
        (status = 409, description = "SESSION_NOT_RUNNING", body = ErrorBody),
        (status = 507, description = "STORAGE_FULL: the quota or disk limit written to (or the host's disk) is full", body = ErrorBody),
    )
)]
pub(crate) async fn move_path(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<MoveRequest>,
) -> ApiResult<Json<MoveResult>> {
    check_path(&req.from)?;
    check_path(&req.to)?;
    let path = state.backend.rename(&id, &req.from, &req.to).await?;
    Ok(Json(MoveResult { ok: true, path }))
}

/// Removes a file, symlink or directory (extension).
#[utoipa::path(
    post,
    path = "/v1/sessions/{id}/fs/remove",
    tag = "files",
    params(("id" = String, Path, description = "Session id")),
    request_body = RemoveRequest,
    responses(
        (status = 200, description = "Removed", body = OkResponse),
        (status = 400, description = "INVALID_REQUEST or INVALID_PATH (a non-empty directory without `recursive`)", body = ErrorBody),
        (status = 403, description = "PERMISSION_DENIED", body = ErrorBody),
        (status = 404, description = "SESSION_NOT_FOUND or FILE_NOT_FOUND", body = ErrorBody),
        (status = 410, description = "SESSION_LOST: the sandbox ended during the request", body = ErrorBody),
        (status = 409, description = "SESSION_NOT_RUNNING", body = ErrorBody),
    )
)]
pub(crate) async fn remove(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<RemoveRequest>,
) -> ApiResult<Json<OkResponse>> {
    check_path(&req.path)?;
    let recursive = req.recursive.unwrap_or(false);
    state.backend.remove(&id, &req.path, recursive).await?;
    Ok(Json(OkResponse::TRUE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_filenames_are_plain_names() {
        for ok in [
            "a.txt",
            ".hidden",
            "..x",
            "x..",
            "with space",
            "ü.bin",
            "a\\b",
        ] {
            assert!(check_upload_filename(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "/abs", "../x", "x/", "a\0b"] {
            let err = check_upload_filename(bad).unwrap_err();
            assert_eq!(err.status_and_code().1, "INVALID_PATH", "{bad:?}");
        }
    }

    #[test]
    fn upload_targets_join_cleanly() {
        assert_eq!(upload_target("/workspace", "a"), "/workspace/a");
        assert_eq!(upload_target("/workspace/", "a"), "/workspace/a");
        assert_eq!(upload_target("/", "a"), "/a");
        assert_eq!(upload_target("sub", "a"), "sub/a");
    }

    #[test]
    fn a_streamed_read_is_the_json_of_its_file_content_however_it_is_cut() {
        let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        for len in [0, 1, 2, 3, 4, 5, 6, 7, 100, 1000] {
            for cut in [1, 2, 3, 4, 5, 7, 64, 1000] {
                for truncated in [false, true] {
                    let path = "/workspace/a \"b\"\\ü\n";
                    let want = serde_json::to_string(&FileContent {
                        path: path.into(),
                        content_base64: STANDARD.encode(&data[..len]),
                        truncated,
                    })
                    .unwrap();
                    let mut json = JsonBase64::default();
                    let mut got = JsonBase64::head(path);
                    for piece in data[..len].chunks(cut) {
                        got.push_str(&json.chunk(piece));
                    }
                    got.push_str(&json.tail(truncated));
                    assert_eq!(got, want, "{len} bytes in pieces of {cut}");
                }
            }
        }
    }

    #[test]
    fn base64_is_lenient_about_padding_and_wrapping() {
        assert_eq!(decode_base64("aGk=").unwrap(), b"hi");
        assert_eq!(decode_base64("aGk").unwrap(), b"hi");
        assert_eq!(decode_base64("aG\nk=\n").unwrap(), b"hi");
        assert_eq!(decode_base64("").unwrap(), b"");
        assert_eq!(
            decode_base64("!!").unwrap_err().status_and_code().1,
            "INVALID_REQUEST"
        );
    }
}
