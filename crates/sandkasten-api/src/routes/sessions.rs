//! `/v1/sessions`: create, list, get, destroy, stats.

use super::ApiResult;
use crate::extract::{ApiJson, ApiPath};
use crate::wire::{
    CreateSessionRequest, ErrorBody, NetworkEvents, NetworkPolicyRequest, OkResponse, SessionInfo,
    SessionStats,
};
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
        (status = 400, description = "INVALID_REQUEST (also a network entry that is malformed or beyond the operator's cap, named in the message), INVALID_IMAGE, INVALID_WORKSPACE or UNSUPPORTED (network entries on a backend without policies)", body = ErrorBody),
        (status = 404, description = "SNAPSHOT_NOT_FOUND: `from_snapshot` (or `image`) names no sandbox snapshot", body = ErrorBody),
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

/// Replaces a running session's network policy; in force for new
/// connections when it answers (existing ones keep going).
#[utoipa::path(
    put,
    path = "/v1/sessions/{id}/network",
    tag = "sessions",
    params(("id" = String, Path, description = "Session id")),
    request_body(content = NetworkPolicyRequest, description = "The new policy, whole (lists absent: empty)"),
    responses(
        (status = 200, description = "The session with its new policy", body = SessionInfo),
        (status = 400, description = "INVALID_REQUEST (a malformed entry, a wildcard out of place, an allow_out CIDR overlapping network.deny_always, mode full where network.allow_full is false; the message names the entry; nothing changed) or UNSUPPORTED (a backend without network policies)", body = ErrorBody),
        (status = 404, description = "SESSION_NOT_FOUND", body = ErrorBody),
        (status = 409, description = "SESSION_NOT_RUNNING", body = ErrorBody),
    )
)]
pub(crate) async fn set_network(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<NetworkPolicyRequest>,
) -> ApiResult<Json<SessionInfo>> {
    Ok(Json(
        state.backend.set_network(&id, req.into()).await?.into(),
    ))
}

/// What the session's network policy refused: names its DNS asked for
/// and connections the daemon's proxy reset, oldest first.
#[utoipa::path(
    get,
    path = "/v1/sessions/{id}/network/events",
    tag = "sessions",
    params(("id" = String, Path, description = "Session id")),
    responses(
        (status = 200, description = "The refusals, oldest first (the latest 1000)", body = NetworkEvents),
        (status = 404, description = "SESSION_NOT_FOUND", body = ErrorBody),
    )
)]
pub(crate) async fn network_events(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<NetworkEvents>> {
    let events = state.backend.network_events(&id).await?;
    Ok(Json(NetworkEvents {
        events: events.into_iter().map(Into::into).collect(),
    }))
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
