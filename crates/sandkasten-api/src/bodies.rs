//! Holds a request's claim on the daemon's body budget
//! (`sandkasten_engine::BodyBudget`) while its handler runs: on every
//! route that reads its body whole (JSON, multipart uploads, MCP).
//! Routes that stream their body (process stdin, workspace import, the
//! ports proxy, the PTY WebSocket) are outside this layer.

use crate::error::ApiError;
use crate::AppState;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::body::Body as _;

/// The size a request's body announces: its `Content-Length` (0 for none),
/// or `None` when it is chunked.
pub(crate) fn announced(req: &Request) -> Option<u64> {
    req.body().size_hint().exact()
}

/// Claims room for the body (waiting for it, at most the budget's wait),
/// runs the handler and gives the room back once it has answered; 503
/// `CAPACITY_EXHAUSTED` without reading the body when no room came.
pub(crate) async fn hold(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let claim = match state
        .bodies
        .claim(announced(&req), state.max_body_bytes as u64)
        .await
    {
        Ok(c) => c,
        Err(e) => return ApiError::BodiesFull(e).into_response(),
    };
    let response = next.run(req).await;
    drop(claim);
    response
}
