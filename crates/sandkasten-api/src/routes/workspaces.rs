//! `/v1/workspaces`: list, create, get and delete persistent workspaces, and
//! read and write their files without a session (`fs`, `fs/read`,
//! `fs/write`, `fs/upload`). The file routes share their validation with
//! the session routes through [`FileScope`]; their paths are inside the
//! workspace (`a`, `/a` and `/workspace/a` name the same file).
//!
//! The `{id}` of every route is checked by [`WorkspaceId`] before the engine
//! sees it. With workspaces disabled the engine answers every route with
//! `WORKSPACE_DISABLED`.

use super::files::{self, FileScope};
use super::ApiResult;
use crate::error::ApiError;
use crate::extract::{check_workspace_id, ApiJson, ApiMultipart, ApiPath, ApiQuery, WorkspaceId};
use crate::wire::{
    CreateSnapshotRequest, CreateWorkspaceRequest, DirListing, ErrorBody, FileContent, ListQuery,
    OkResponse, ReadFileQuery, SnapshotInfo, SnapshotList, SnapshotPath, TarArchive, UploadForm,
    UploadResult, WorkspaceInfo, WorkspaceList, WorkspacePath, WriteFileRequest,
};
use crate::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use sandkasten_engine as engine;
use std::collections::BTreeMap;

/// Most labels one workspace may carry.
const MAX_LABELS: usize = 64;
/// Longest label key, in characters.
const MAX_LABEL_KEY_CHARS: usize = 63;
/// Longest label value, in characters.
const MAX_LABEL_VALUE_CHARS: usize = 256;
/// Bytes in the unit of `quota_mb` (MiB, as `mem_limit_mb` counts).
const BYTES_PER_MB: u64 = 1024 * 1024;

/// Turns a create request into the engine's: the id rule, one quota in
/// bytes, bounded labels.
fn validate_create(req: CreateWorkspaceRequest) -> ApiResult<engine::CreateWorkspace> {
    check_workspace_id(&req.id)?;
    let quota_bytes = match (req.quota_bytes, req.quota_mb) {
        (Some(_), Some(_)) => {
            return Err(ApiError::InvalidRequest(
                "give either quota_bytes or quota_mb, not both".into(),
            ))
        }
        (Some(bytes), None) => Some(bytes),
        (None, Some(mb)) => Some(
            mb.checked_mul(BYTES_PER_MB)
                .ok_or_else(|| ApiError::InvalidRequest(format!("quota_mb {mb} is too large")))?,
        ),
        (None, None) => None,
    };
    if quota_bytes == Some(0) {
        return Err(ApiError::InvalidRequest(
            "the quota must be at least 1 byte; omit it for no quota of its own".into(),
        ));
    }
    let labels = req.labels.unwrap_or_default();
    check_labels(&labels)?;
    let from_snapshot = match req.from_snapshot {
        Some(f) => {
            check_workspace_id(&f.workspace_id)?;
            check_snapshot_id(&f.snapshot_id)?;
            Some((f.workspace_id, f.snapshot_id))
        }
        None => None,
    };
    Ok(engine::CreateWorkspace {
        id: req.id,
        quota_bytes,
        labels,
        from_snapshot,
    })
}

/// At most [`MAX_LABELS`] labels; keys 1–63 characters of `[A-Za-z0-9._/-]`,
/// values at most 256 characters.
fn check_labels(labels: &BTreeMap<String, String>) -> ApiResult<()> {
    if labels.len() > MAX_LABELS {
        return Err(ApiError::InvalidRequest(format!(
            "{} labels given; at most {MAX_LABELS} are allowed",
            labels.len()
        )));
    }
    for (key, value) in labels {
        let key_ok = (1..=MAX_LABEL_KEY_CHARS).contains(&key.len())
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'/' | b'-'));
        if !key_ok {
            return Err(ApiError::InvalidRequest(format!(
                "invalid label key {key:?}: use 1-{MAX_LABEL_KEY_CHARS} characters of \
                 [A-Za-z0-9._/-]"
            )));
        }
        if value.chars().count() > MAX_LABEL_VALUE_CHARS {
            return Err(ApiError::InvalidRequest(format!(
                "the value of label {key:?} is longer than {MAX_LABEL_VALUE_CHARS} characters"
            )));
        }
    }
    Ok(())
}

/// Lists every workspace, mounted or not.
#[utoipa::path(
    get,
    path = "/v1/workspaces",
    tag = "workspaces",
    responses(
        (status = 200, description = "Every workspace", body = WorkspaceList),
        (status = 409, description = "WORKSPACE_DISABLED", body = ErrorBody),
    )
)]
pub(crate) async fn list_workspaces(
    State(state): State<AppState>,
) -> ApiResult<Json<WorkspaceList>> {
    let workspaces = state.backend.list_workspaces().await?;
    Ok(Json(WorkspaceList {
        workspaces: workspaces.into_iter().map(WorkspaceInfo::from).collect(),
    }))
}

/// Creates an empty workspace ahead of its first session, optionally with a
/// quota and labels (extension; a session's `workspace_id` also creates one).
#[utoipa::path(
    post,
    path = "/v1/workspaces",
    tag = "workspaces",
    request_body(content = CreateWorkspaceRequest, description = "`id`, and optionally `quota_bytes` or `quota_mb` (not both) and `labels`"),
    responses(
        (status = 201, description = "Workspace created", body = WorkspaceInfo),
        (status = 400, description = "INVALID_WORKSPACE for a bad id, INVALID_REQUEST for a bad quota or labels, or content of `from_snapshot` that does not fit the quota", body = ErrorBody),
        (status = 404, description = "WORKSPACE_NOT_FOUND or SNAPSHOT_NOT_FOUND: the source of `from_snapshot` does not exist", body = ErrorBody),
        (status = 409, description = "ALREADY_EXISTS or WORKSPACE_DISABLED", body = ErrorBody),
    )
)]
pub(crate) async fn create_workspace(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<CreateWorkspaceRequest>,
) -> ApiResult<(StatusCode, Json<WorkspaceInfo>)> {
    let info = state
        .backend
        .create_workspace(validate_create(req)?)
        .await?;
    Ok((StatusCode::CREATED, Json(info.into())))
}

/// One workspace (extension).
#[utoipa::path(
    get,
    path = "/v1/workspaces/{id}",
    tag = "workspaces",
    params(WorkspacePath),
    responses(
        (status = 200, description = "The workspace", body = WorkspaceInfo),
        (status = 400, description = "INVALID_WORKSPACE", body = ErrorBody),
        (status = 404, description = "WORKSPACE_NOT_FOUND", body = ErrorBody),
        (status = 409, description = "WORKSPACE_DISABLED", body = ErrorBody),
    )
)]
pub(crate) async fn get_workspace(
    State(state): State<AppState>,
    WorkspaceId(id): WorkspaceId,
) -> ApiResult<Json<WorkspaceInfo>> {
    Ok(Json(state.backend.get_workspace(&id).await?.into()))
}

/// Deletes a workspace and its files; refused while a running session has
/// it mounted.
#[utoipa::path(
    delete,
    path = "/v1/workspaces/{id}",
    tag = "workspaces",
    params(WorkspacePath),
    responses(
        (status = 200, description = "Deleted", body = OkResponse),
        (status = 400, description = "INVALID_WORKSPACE", body = ErrorBody),
        (status = 404, description = "WORKSPACE_NOT_FOUND", body = ErrorBody),
        (status = 409, description = "WORKSPACE_IN_USE or WORKSPACE_DISABLED", body = ErrorBody),
    )
)]
pub(crate) async fn delete_workspace(
    State(state): State<AppState>,
    WorkspaceId(id): WorkspaceId,
) -> ApiResult<Json<OkResponse>> {
    state.backend.delete_workspace(&id).await?;
    Ok(Json(OkResponse::TRUE))
}

/// Lists a directory of a workspace without a session.
#[utoipa::path(
    get,
    path = "/v1/workspaces/{id}/fs",
    tag = "workspaces",
    params(WorkspacePath, ListQuery),
    responses(
        (status = 200, description = "The entries", body = DirListing),
        (status = 400, description = "INVALID_WORKSPACE, INVALID_REQUEST, or INVALID_PATH for a non-directory", body = ErrorBody),
        (status = 404, description = "WORKSPACE_NOT_FOUND or FILE_NOT_FOUND", body = ErrorBody),
        (status = 409, description = "WORKSPACE_DISABLED", body = ErrorBody),
    )
)]
pub(crate) async fn workspace_list_dir(
    State(state): State<AppState>,
    WorkspaceId(id): WorkspaceId,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<DirListing>> {
    files::list_in(&state, FileScope::Workspace(&id), q).await
}

/// Reads a file of a workspace without a session.
#[utoipa::path(
    get,
    path = "/v1/workspaces/{id}/fs/read",
    tag = "workspaces",
    params(WorkspacePath, ReadFileQuery),
    responses(
        (status = 200, description = "The content; `path` is `/workspace/…`", body = FileContent),
        (status = 400, description = "INVALID_WORKSPACE, INVALID_REQUEST, or INVALID_PATH for a directory", body = ErrorBody),
        (status = 404, description = "WORKSPACE_NOT_FOUND or FILE_NOT_FOUND", body = ErrorBody),
        (status = 409, description = "WORKSPACE_DISABLED", body = ErrorBody),
    )
)]
pub(crate) async fn workspace_read_file(
    State(state): State<AppState>,
    WorkspaceId(id): WorkspaceId,
    ApiQuery(q): ApiQuery<ReadFileQuery>,
) -> ApiResult<axum::response::Response> {
    files::read_in(&state, FileScope::Workspace(&id), q).await
}

/// Writes a whole file into a workspace without a session, creating
/// missing parents.
#[utoipa::path(
    post,
    path = "/v1/workspaces/{id}/fs/write",
    tag = "workspaces",
    params(WorkspacePath),
    request_body(content = WriteFileRequest, description = "`path` and exactly one of `text` and `content_base64`; empty content is allowed"),
    responses(
        (status = 200, description = "Written", body = OkResponse),
        (status = 400, description = "INVALID_WORKSPACE, INVALID_REQUEST or INVALID_PATH", body = ErrorBody),
        (status = 404, description = "WORKSPACE_NOT_FOUND", body = ErrorBody),
        (status = 409, description = "WORKSPACE_DISABLED", body = ErrorBody),
        (status = 413, description = "PAYLOAD_TOO_LARGE", body = ErrorBody),
        (status = 507, description = "STORAGE_FULL: the quota or disk limit written to (or the host's disk) is full", body = ErrorBody),
    )
)]
pub(crate) async fn workspace_write_file(
    State(state): State<AppState>,
    WorkspaceId(id): WorkspaceId,
    ApiJson(req): ApiJson<WriteFileRequest>,
) -> ApiResult<Json<OkResponse>> {
    files::write_in(&state, FileScope::Workspace(&id), req).await
}

/// Uploads files into a workspace without a session, as
/// `multipart/form-data` exactly like the session upload.
#[utoipa::path(
    post,
    path = "/v1/workspaces/{id}/fs/upload",
    tag = "workspaces",
    params(WorkspacePath),
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "Every file written; `paths` are `/workspace/…`", body = UploadResult),
        (status = 400, description = "INVALID_WORKSPACE, INVALID_REQUEST, or INVALID_PATH for a bad filename or directory", body = ErrorBody),
        (status = 404, description = "WORKSPACE_NOT_FOUND", body = ErrorBody),
        (status = 409, description = "WORKSPACE_DISABLED", body = ErrorBody),
        (status = 413, description = "PAYLOAD_TOO_LARGE", body = ErrorBody),
        (status = 507, description = "STORAGE_FULL: the quota or disk limit written to (or the host's disk) is full", body = ErrorBody),
    )
)]
pub(crate) async fn workspace_upload(
    State(state): State<AppState>,
    WorkspaceId(id): WorkspaceId,
    ApiMultipart(form): ApiMultipart,
) -> ApiResult<Json<UploadResult>> {
    files::upload_in(&state, FileScope::Workspace(&id), form).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(v: serde_json::Value) -> CreateWorkspaceRequest {
        serde_json::from_value(v).unwrap()
    }

    fn code(v: serde_json::Value) -> &'static str {
        validate_create(request(v)).unwrap_err().status_and_code().1
    }

    #[test]
    fn quotas_come_in_bytes_or_mib() {
        let r = validate_create(request(serde_json::json!({"id": "w"}))).unwrap();
        assert_eq!((r.id.as_str(), r.quota_bytes), ("w", None));
        assert!(r.labels.is_empty());
        let r = validate_create(request(serde_json::json!({"id": "w", "quota_bytes": 5}))).unwrap();
        assert_eq!(r.quota_bytes, Some(5));
        let r = validate_create(request(serde_json::json!({"id": "w", "quota_mb": 3}))).unwrap();
        assert_eq!(r.quota_bytes, Some(3 * 1024 * 1024));
        let r = validate_create(request(
            serde_json::json!({"id": "w", "quota_bytes": null, "quota_mb": null, "labels": null}),
        ))
        .unwrap();
        assert_eq!(r.quota_bytes, None);

        let both = serde_json::json!({"id": "w", "quota_bytes": 1, "quota_mb": 1});
        assert_eq!(code(both), "INVALID_REQUEST");
        assert_eq!(
            code(serde_json::json!({"id": "w", "quota_bytes": 0})),
            "INVALID_REQUEST"
        );
        assert_eq!(
            code(serde_json::json!({"id": "w", "quota_mb": 0})),
            "INVALID_REQUEST"
        );
        assert_eq!(
            code(serde_json::json!({"id": "w", "quota_mb": u64::MAX / 1024})),
            "INVALID_REQUEST"
        );
    }

    #[test]
    fn a_full_disk_while_spooling_an_import_is_507() {
        use rustix::io::Errno;
        for errno in [Errno::NOSPC, Errno::DQUOT] {
            let e = spool_error(std::io::Error::from(errno));
            assert_eq!(
                e.status_and_code(),
                (axum::http::StatusCode::INSUFFICIENT_STORAGE, "STORAGE_FULL"),
                "{errno:?}"
            );
        }
        let e = spool_error(std::io::Error::from(Errno::IO));
        assert_eq!(e.status_and_code().1, "INTERNAL_ERROR");
    }

    #[test]
    fn ids_are_checked_first() {
        assert_eq!(code(serde_json::json!({"id": ".x"})), "INVALID_WORKSPACE");
        assert_eq!(code(serde_json::json!({"id": ""})), "INVALID_WORKSPACE");
    }

    #[test]
    fn labels_are_bounded() {
        let key63 = "k".repeat(63);
        let value256 = "ü".repeat(256);
        let mut ok: BTreeMap<String, String> = (0..64)
            .map(|i| (format!("key-{i}"), String::new()))
            .collect();
        assert!(check_labels(&ok).is_ok());
        ok.clear();
        ok.insert("app.kubernetes.io/name_x-1".into(), "v".into());
        ok.insert(key63.clone(), value256.clone());
        assert!(check_labels(&ok).is_ok());

        let too_many: BTreeMap<String, String> = (0..65)
            .map(|i| (format!("key-{i}"), String::new()))
            .collect();
        let key64 = "k".repeat(64);
        let value257 = "v".repeat(257);
        for labels in [
            too_many,
            [(String::new(), "v".to_owned())].into(),
            [(key64, "v".to_owned())].into(),
            [("a b".to_owned(), "v".to_owned())].into(),
            [("ä".to_owned(), "v".to_owned())].into(),
            [("a:b".to_owned(), "v".to_owned())].into(),
            [("k".to_owned(), value257)].into(),
        ] {
            let e = check_labels(&labels).unwrap_err();
            assert_eq!(e.status_and_code().1, "INVALID_REQUEST", "{labels:?}");
        }
    }
}

/// The `{id}` and `{snap}` of a snapshot route, both checked.
fn snapshot_ids((id, snap): (String, String)) -> ApiResult<(String, String)> {
    check_workspace_id(&id)?;
    check_snapshot_id(&snap)?;
    Ok((id, snap))
}

/// Checks a snapshot id from the path: `snap-` and hex, as the engine makes.
fn check_snapshot_id(snap: &str) -> ApiResult<()> {
    let ok = snap.len() <= 64
        && snap.starts_with("snap-")
        && snap.len() > 5
        && snap[5..].bytes().all(|b| b.is_ascii_hexdigit());
    if ok {
        Ok(())
    } else {
        Err(ApiError::InvalidRequest(format!(
            "invalid snapshot id {snap:?}"
        )))
    }
}

/// Takes a consistent point-in-time snapshot, also while sessions write to
/// the workspace.
#[utoipa::path(
    post,
    path = "/v1/workspaces/{id}/snapshots",
    tag = "workspaces",
    params(WorkspacePath),
    request_body = CreateSnapshotRequest,
    responses(
        (status = 201, description = "Created", body = SnapshotInfo),
        (status = 400, description = "INVALID_WORKSPACE, or a workspace without a quota", body = ErrorBody),
        (status = 404, description = "WORKSPACE_NOT_FOUND", body = ErrorBody),
        (status = 507, description = "STORAGE_FULL: the workspace's quota has no room for the snapshot", body = ErrorBody),
    )
)]
pub(crate) async fn create_snapshot(
    State(state): State<AppState>,
    WorkspaceId(id): WorkspaceId,
    ApiJson(req): ApiJson<CreateSnapshotRequest>,
) -> ApiResult<(StatusCode, Json<SnapshotInfo>)> {
    let snap = state.backend.create_snapshot(&id, req.label).await?;
    Ok((StatusCode::CREATED, Json(snap.into())))
}

/// Lists a workspace's snapshots, oldest first.
#[utoipa::path(
    get,
    path = "/v1/workspaces/{id}/snapshots",
    tag = "workspaces",
    params(WorkspacePath),
    responses(
        (status = 200, description = "Snapshots", body = SnapshotList),
        (status = 404, description = "WORKSPACE_NOT_FOUND", body = ErrorBody),
    )
)]
pub(crate) async fn list_snapshots(
    State(state): State<AppState>,
    WorkspaceId(id): WorkspaceId,
) -> ApiResult<Json<SnapshotList>> {
    let snapshots = state
        .backend
        .list_snapshots(&id)
        .await?
        .into_iter()
        .map(Into::into)
        .collect();
    Ok(Json(SnapshotList { snapshots }))
}

/// Deletes a snapshot.
#[utoipa::path(
    delete,
    path = "/v1/workspaces/{id}/snapshots/{snap}",
    tag = "workspaces",
    params(SnapshotPath),
    responses(
        (status = 200, description = "Deleted", body = OkResponse),
        (status = 404, description = "WORKSPACE_NOT_FOUND or SNAPSHOT_NOT_FOUND", body = ErrorBody),
    )
)]
pub(crate) async fn delete_snapshot(
    State(state): State<AppState>,
    ApiPath(ids): ApiPath<(String, String)>,
) -> ApiResult<Json<OkResponse>> {
    let (id, snap) = snapshot_ids(ids)?;
    state.backend.delete_snapshot(&id, &snap).await?;
    Ok(Json(OkResponse::TRUE))
}

/// Replaces the workspace's content with a snapshot; refused while a
/// session has the workspace mounted.
#[utoipa::path(
    post,
    path = "/v1/workspaces/{id}/snapshots/{snap}/restore",
    tag = "workspaces",
    params(SnapshotPath),
    responses(
        (status = 200, description = "Restored", body = OkResponse),
        (status = 404, description = "WORKSPACE_NOT_FOUND or SNAPSHOT_NOT_FOUND", body = ErrorBody),
        (status = 409, description = "WORKSPACE_IN_USE", body = ErrorBody),
    )
)]
pub(crate) async fn restore_snapshot(
    State(state): State<AppState>,
    ApiPath(ids): ApiPath<(String, String)>,
) -> ApiResult<Json<OkResponse>> {
    let (id, snap) = snapshot_ids(ids)?;
    state.backend.restore_snapshot(&id, &snap).await?;
    Ok(Json(OkResponse::TRUE))
}

/// Streams the workspace's content as a tar (`application/x-tar`): paths
/// relative to the workspace root, owners as the sandbox sees them,
/// symlinks as symlinks. Point-in-time for workspaces with a quota.
#[utoipa::path(
    get,
    path = "/v1/workspaces/{id}/export",
    tag = "workspaces",
    params(WorkspacePath),
    responses(
        (status = 200, description = "The tar", content_type = "application/x-tar", body = TarArchive),
        (status = 400, description = "INVALID_WORKSPACE", body = ErrorBody),
        (status = 404, description = "WORKSPACE_NOT_FOUND", body = ErrorBody),
        (status = 409, description = "WORKSPACE_IN_USE while it is being deleted, restored or imported; WORKSPACE_DISABLED", body = ErrorBody),
    )
)]
pub(crate) async fn export_workspace(
    State(state): State<AppState>,
    WorkspaceId(id): WorkspaceId,
) -> ApiResult<axum::response::Response> {
    let rx = state.backend.export_workspace(&id).await?;
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (chunk.map(axum::body::Bytes::from), rx))
    });
    let body = axum::body::Body::from_stream(stream);
    axum::response::Response::builder()
        .header(axum::http::header::CONTENT_TYPE, "application/x-tar")
        .header(
            axum::http::header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{id}.tar\""),
        )
        .body(body)
        .map_err(|e| ApiError::Internal(format!("building the export response: {e}")))
}

/// Removes the spooled upload when dropped.
struct Spool(std::path::PathBuf);

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A failure to spool an import. A full disk is the host's state, not a
/// fault of the daemon: 507 `STORAGE_FULL`, as for a create, so that a
/// client knows to retry once space returns.
fn spool_error(e: std::io::Error) -> ApiError {
    match e.kind() {
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => ApiError::Engine(
            sandkasten_engine::EngineError::StorageFull(format!("spooling the import: {e}")),
        ),
        _ => ApiError::Internal(format!("spooling the import: {e}")),
    }
}

/// Writes the request body to `path`, at most `limit` bytes.
async fn spool(body: axum::body::Body, path: &std::path::Path, limit: usize) -> ApiResult<()> {
    use futures::StreamExt;
    use tokio::io::AsyncWriteExt;
    let internal = spool_error;
    let mut f = tokio::fs::File::create(path).await.map_err(internal)?;
    let mut stream = body.into_data_stream();
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::InvalidRequest(format!("reading the request body failed: {e}"))
        })?;
        total += chunk.len();
        if total > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        f.write_all(&chunk).await.map_err(internal)?;
    }
    f.flush().await.map_err(internal)?;
    Ok(())
}

/// Replaces the workspace's content with a tar (the request body). The
/// workspace must exist; refused while a session has it mounted. A failed
/// import leaves the old content intact.
#[utoipa::path(
    put,
    path = "/v1/workspaces/{id}/import",
    tag = "workspaces",
    params(WorkspacePath),
    request_body(
        description = "A tar archive; the content type is not looked at",
        content(
            (TarArchive = "application/x-tar"),
            (TarArchive = "application/octet-stream"),
        )
    ),
    responses(
        (status = 200, description = "Imported", body = OkResponse),
        (status = 400, description = "INVALID_WORKSPACE; INVALID_REQUEST for a bad archive, an entry leaving the workspace, or content over the quota", body = ErrorBody),
        (status = 404, description = "WORKSPACE_NOT_FOUND", body = ErrorBody),
        (status = 409, description = "WORKSPACE_IN_USE or WORKSPACE_DISABLED", body = ErrorBody),
        (status = 413, description = "PAYLOAD_TOO_LARGE", body = ErrorBody),
        (status = 507, description = "STORAGE_FULL: no room on the host's disk to receive the archive", body = ErrorBody),
    )
)]
pub(crate) async fn import_workspace(
    State(state): State<AppState>,
    WorkspaceId(id): WorkspaceId,
    body: axum::body::Body,
) -> ApiResult<Json<OkResponse>> {
    let dir = state.backend.scratch_dir();
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| ApiError::Internal(format!("creating {}: {e}", dir.display())))?;
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let file = Spool(dir.join(format!("import-{id}-{}-{n}.tar", std::process::id())));
    spool(body, &file.0, state.max_body_bytes).await?;
    state.backend.import_workspace(&id, file.0.clone()).await?;
    Ok(Json(OkResponse::TRUE))
}
