//! `/v1/sessions`: create, list, get, destroy, stats.

use super::ApiResult;
use crate::extract::{ApiJson, ApiPath};
use crate::wire::{CreateSessionRequest, ErrorBody, OkResponse, SessionInfo, SessionStats};
use crate::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

/// Creates a session: a running sandbox, from the pool when one is idle.
#[utoipa::path(
    post,
    path = "/v1/sessions",
    tag = "sessions",
    request_body(content = Option<CreateSessionRequest>, description = "All fields optional; an empty body is `{}`"),
    responses(
        (status = 201, description = "Session created", body = SessionInfo),
        (status = 400, description = "INVALID_REQUEST, INVALID_IMAGE or INVALID_WORKSPACE", body = ErrorBody),
        (status = 409, description = "WORKSPACE_DISABLED", body = ErrorBody),
        (status = 503, description = "CAPACITY_EXHAUSTED or SHUTTING_DOWN", body = ErrorBody),
        (status = 507, description = "STORAGE_FULL: the host's disk lacks room for another sandbox (existing sessions keep working; retry once space returns)", body = ErrorBody),
    )
)]
pub(crate) async fn create_session(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<CreateSessionRequest>,
) -> ApiResult<(StatusCode, Json<SessionInfo>)> {
    let info = state.backend.create_session(req.into()).await?;
    Ok((StatusCode::CREATED, Json(info.into())))
}

/// Lists the sessions that are not destroyed.
#[utoipa::path(
    get,
    path = "/v1/sessions",
    tag = "sessions",
    responses((status = 200, description = "Every live session", body = Vec<SessionInfo>))
)]
pub(crate) async fn list_sessions(State(state): State<AppState>) -> Json<Vec<SessionInfo>> {
    let sessions = state.backend.list_sessions().await;
    Json(sessions.into_iter().map(SessionInfo::from).collect())
}

/// One session.
#[utoipa::path(
    get,
    path = "/v1/sessions/{id}",
    tag = "sessions",
    params(("id" = String, Path, description = "Session id")),
    responses(
        (status = 200, description = "The session", body = SessionInfo),
        (status = 404, description = "SESSION_NOT_FOUND", body = ErrorBody),
    )
)]
pub(crate) async fn get_session(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<SessionInfo>> {
    Ok(Json(state.backend.get_session(&id).await?.into()))
}

/// Destroys a session's sandbox; a persistent workspace stays.
#[utoipa::path(
    delete,
    path = "/v1/sessions/{id}",
    tag = "sessions",
    params(("id" = String, Path, description = "Session id")),
    responses(
        (status = 200, description = "Destroyed", body = OkResponse),
        (status = 404, description = "SESSION_NOT_FOUND", body = ErrorBody),
    )
)]
pub(crate) async fn destroy_session(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<OkResponse>> {
    state.backend.destroy_session(&id).await?;
    Ok(Json(OkResponse::TRUE))
}

/// Resource usage of a session.
#[utoipa::path(
    get,
    path = "/v1/sessions/{id}/stats",
    tag = "sessions",
    params(("id" = String, Path, description = "Session id")),
    responses(
        (status = 200, description = "Usage and limits", body = SessionStats),
        (status = 404, description = "SESSION_NOT_FOUND", body = ErrorBody),
        (status = 409, description = "SESSION_NOT_RUNNING", body = ErrorBody),
    )
)]
pub(crate) async fn session_stats(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<SessionStats>> {
    Ok(Json(state.backend.session_stats(&id).await?.into()))
}
