//! `/v1/sessions/{id}/pause`, `/resume`, `/hibernate`, `/snapshots` and
//! `/fork`, and `/v1/snapshots`.

use super::ApiResult;
use crate::extract::ApiJson;
use crate::extract::ApiPath;
use crate::wire::{
    CreateSnapshotRequest, ErrorBody, ForkRequest, ForkResponse, HibernatedSession, OkResponse,
    SandboxSnapshot, SandboxSnapshotList, SessionInfo,
};
use crate::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

/// Freezes every process of a running session: memory kept, no CPU used,
/// its TTL stopped (`paused_ttl_seconds` runs instead). Any later call to
/// the session resumes it first.
#[utoipa::path(
    post,
    path = "/v1/sessions/{id}/pause",
    tag = "sessions",
    params(("id" = String, Path, description = "Session id")),
    responses(
        (status = 200, description = "Paused (`status: paused`, `expires_at` the paused limit)", body = SessionInfo),
        (status = 400, description = "UNSUPPORTED (no freezer on this host)", body = ErrorBody),
        (status = 404, description = "SESSION_NOT_FOUND", body = ErrorBody),
        (status = 409, description = "SESSION_NOT_RUNNING (already paused, or being destroyed)", body = ErrorBody),
    )
)]
pub(crate) async fn pause_session(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<SessionInfo>> {
    Ok(Json(state.backend.pause_session(&id).await?.into()))
}

/// Hibernates a running (or paused) session: every process ends and its
/// memory is freed; its filesystem state (root filesystem changes, `/tmp`,
/// `/workspace`) and the shell's cwd and exported variables are kept on
/// disk. Its TTL stops (`hibernated_ttl_seconds` runs instead). Any later
/// call to the session (or `resume`) starts it again on that state under
/// the same id.
#[utoipa::path(
    post,
    path = "/v1/sessions/{id}/hibernate",
    tag = "sessions",
    params(("id" = String, Path, description = "Session id")),
    responses(
        (status = 200, description = "Hibernated (`status: hibernated`, `mode: filesystem`, what is lost)", body = HibernatedSession),
        (status = 400, description = "UNSUPPORTED (a backend that cannot hibernate)", body = ErrorBody),
        (status = 404, description = "SESSION_NOT_FOUND", body = ErrorBody),
        (status = 409, description = "SESSION_NOT_RUNNING (already hibernated, or being destroyed)", body = ErrorBody),
        (status = 500, description = "INTERNAL_ERROR: the backend failed to hibernate it (it stays listed as hibernated and is woken by its next call)", body = ErrorBody),
    )
)]
pub(crate) async fn hibernate_session(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<HibernatedSession>> {
    let s = state.backend.hibernate_session(&id).await?;
    Ok(Json(HibernatedSession {
        session: s.into(),
        mode: "filesystem",
        lost: vec!["processes", "memory"],
    }))
}

/// Resumes a paused session (every process goes on where it was) or wakes
/// a hibernated one (a new sandbox on its kept state); the TTL counts
/// again from now.
#[utoipa::path(
    post,
    path = "/v1/sessions/{id}/resume",
    tag = "sessions",
    params(("id" = String, Path, description = "Session id")),
    responses(
        (status = 200, description = "Running again", body = SessionInfo),
        (status = 404, description = "SESSION_NOT_FOUND", body = ErrorBody),
        (status = 409, description = "SESSION_NOT_PAUSED (neither paused nor hibernated)", body = ErrorBody),
        (status = 500, description = "INTERNAL_ERROR: the backend failed to thaw or wake it", body = ErrorBody),
    )
)]
pub(crate) async fn resume_session(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<SessionInfo>> {
    Ok(Json(state.backend.resume_session(&id).await?.into()))
}

/// Snapshots a whole sandbox at a consistent point (frozen while taken):
/// its root filesystem changes, `/tmp`, and its `/workspace` (a persistent
/// workspace gets a snapshot of its own, labelled after this one). Usable
/// as an image: `POST /v1/sessions` with `from_snapshot` (or `image`) set
/// to its id; the pool can hold it (`pool.images`).
#[utoipa::path(
    post,
    path = "/v1/sessions/{id}/snapshots",
    tag = "sessions",
    params(("id" = String, Path, description = "Session id")),
    request_body(content = CreateSnapshotRequest, description = "Optional label (the body may be empty)"),
    responses(
        (status = 201, description = "Taken", body = SandboxSnapshot),
        (status = 400, description = "UNSUPPORTED (a backend or host without sandbox snapshots), INVALID_REQUEST", body = ErrorBody),
        (status = 404, description = "SESSION_NOT_FOUND", body = ErrorBody),
        (status = 409, description = "SESSION_NOT_RUNNING", body = ErrorBody),
        (status = 500, description = "INTERNAL_ERROR: the backend failed to take it", body = ErrorBody),
        (status = 507, description = "STORAGE_FULL", body = ErrorBody),
    )
)]
pub(crate) async fn snapshot_session(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<CreateSnapshotRequest>,
) -> ApiResult<(StatusCode, Json<SandboxSnapshot>)> {
    let snap = state.backend.snapshot_session(&id, req.label).await?;
    Ok((StatusCode::CREATED, Json(snap.into())))
}

/// Every sandbox snapshot, oldest first.
#[utoipa::path(
    get,
    path = "/v1/snapshots",
    tag = "sessions",
    responses((status = 200, description = "Sandbox snapshots", body = SandboxSnapshotList))
)]
pub(crate) async fn list_sandbox_snapshots(
    State(state): State<AppState>,
) -> ApiResult<Json<SandboxSnapshotList>> {
    let all = state.backend.list_sandbox_snapshots().await?;
    Ok(Json(SandboxSnapshotList {
        snapshots: all.into_iter().map(Into::into).collect(),
    }))
}

/// One sandbox snapshot.
#[utoipa::path(
    get,
    path = "/v1/snapshots/{snap}",
    tag = "sessions",
    params(("snap" = String, Path, description = "Sandbox snapshot id (`ssnap-…`)")),
    responses(
        (status = 200, description = "The snapshot", body = SandboxSnapshot),
        (status = 404, description = "SNAPSHOT_NOT_FOUND", body = ErrorBody),
    )
)]
pub(crate) async fn get_sandbox_snapshot(
    State(state): State<AppState>,
    ApiPath(snap): ApiPath<String>,
) -> ApiResult<Json<SandboxSnapshot>> {
    Ok(Json(state.backend.sandbox_snapshot(&snap).await?.into()))
}

/// Deletes a sandbox snapshot; sessions started from it keep their own
/// copies.
#[utoipa::path(
    delete,
    path = "/v1/snapshots/{snap}",
    tag = "sessions",
    params(("snap" = String, Path, description = "Sandbox snapshot id (`ssnap-…`)")),
    responses(
        (status = 200, description = "Deleted", body = OkResponse),
        (status = 404, description = "SNAPSHOT_NOT_FOUND", body = ErrorBody),
    )
)]
pub(crate) async fn delete_sandbox_snapshot(
    State(state): State<AppState>,
    ApiPath(snap): ApiPath<String>,
) -> ApiResult<Json<OkResponse>> {
    state.backend.delete_sandbox_snapshot(&snap).await?;
    Ok(Json(OkResponse::TRUE))
}

/// Forks a session into `count` new ones, each on a copy-on-write copy of
/// its filesystem state (taken at one consistent point), with its image,
/// TTL, network policy, metadata and timeouts; a persistent workspace is
/// copied into a new workspace per child. Processes and memory are not
/// copied (each child starts a new shell). A hibernated session is woken
/// first.
#[utoipa::path(
    post,
    path = "/v1/sessions/{id}/fork",
    tag = "sessions",
    params(("id" = String, Path, description = "Session id")),
    request_body = ForkRequest,
    responses(
        (status = 201, description = "The new sessions", body = ForkResponse),
        (status = 400, description = "INVALID_REQUEST (count out of range), UNSUPPORTED", body = ErrorBody),
        (status = 404, description = "SESSION_NOT_FOUND", body = ErrorBody),
        (status = 409, description = "SESSION_NOT_RUNNING", body = ErrorBody),
        (status = 500, description = "INTERNAL_ERROR: a child's sandbox could not be started (the children started are destroyed again)", body = ErrorBody),
        (status = 503, description = "CAPACITY_EXHAUSTED or SHUTTING_DOWN (the children started are destroyed again)", body = ErrorBody),
        (status = 507, description = "STORAGE_FULL (the children started are destroyed again)", body = ErrorBody),
    )
)]
pub(crate) async fn fork_session(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<ForkRequest>,
) -> ApiResult<(StatusCode, Json<ForkResponse>)> {
    let children = state.backend.fork_session(&id, req.count).await?;
    Ok((
        StatusCode::CREATED,
        Json(ForkResponse {
            sessions: children.into_iter().map(Into::into).collect(),
        }),
    ))
}
