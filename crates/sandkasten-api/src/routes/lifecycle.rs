//! `/v1/sessions/{id}/pause`, `/resume` and `/hibernate`.

use super::ApiResult;
use crate::extract::ApiPath;
use crate::wire::{ErrorBody, HibernatedSession, SessionInfo};
use crate::AppState;
use axum::extract::State;
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
    )
)]
pub(crate) async fn resume_session(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<SessionInfo>> {
    Ok(Json(state.backend.resume_session(&id).await?.into()))
}
