//! `/v1/sessions/{id}/exec` (buffered) and `/exec/stream` (SSE).

use super::ApiResult;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath};
use crate::wire::{
    ErrorBody, ExecChunkEvent, ExecDoneEvent, ExecErrorEvent, ExecRequest, ExecResult,
    ExecStreamEvent,
};
use crate::AppState;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::Stream;
use sandkasten_engine::{self as engine, ExecEvent, ExecStream};
use std::convert::Infallible;
use std::time::Duration;

/// How long a stream may stay silent before a `: keep-alive` comment; the
/// contract promises one at least every 15 s, this leaves room for timer
/// slack.
pub(crate) const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);

fn validate(req: ExecRequest) -> ApiResult<engine::ExecRequest> {
    if req.cmd.is_empty() {
        return Err(ApiError::InvalidRequest("cmd must not be empty".into()));
    }
    Ok(req.into())
}

/// Runs a command in the session's persistent shell and returns its output.
#[utoipa::path(
    post,
    path = "/v1/sessions/{id}/exec",
    tag = "exec",
    params(("id" = String, Path, description = "Session id")),
    request_body = ExecRequest,
    responses(
        (status = 200, description = "The command ended (or timed out: `timed_out`, exit code 124)", body = ExecResult),
        (status = 400, description = "INVALID_REQUEST", body = ErrorBody),
        (status = 404, description = "SESSION_NOT_FOUND", body = ErrorBody),
        (status = 410, description = "SESSION_LOST: the sandbox ended during the request", body = ErrorBody),
        (status = 409, description = "SESSION_NOT_RUNNING", body = ErrorBody),
    )
)]
pub(crate) async fn exec(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<ExecRequest>,
) -> ApiResult<Json<ExecResult>> {
    let result = state.backend.exec(&id, validate(req)?).await?;
    Ok(Json(result.into()))
}

/// Runs a command and streams its output as server-sent events: `chunk`
/// events (`ExecChunkEvent`) while it runs, then one `done`
/// (`ExecDoneEvent`) or `error` (`ExecErrorEvent`). Disconnecting
/// interrupts the command.
#[utoipa::path(
    post,
    path = "/v1/sessions/{id}/exec/stream",
    tag = "exec",
    params(("id" = String, Path, description = "Session id")),
    request_body = ExecRequest,
    responses(
        (status = 200, description = "`text/event-stream` of `chunk` events, then `done` or `error`; `: keep-alive` comments while silent", content_type = "text/event-stream", body = ExecStreamEvent),
        (status = 400, description = "INVALID_REQUEST", body = ErrorBody),
        (status = 404, description = "SESSION_NOT_FOUND", body = ErrorBody),
        (status = 409, description = "SESSION_NOT_RUNNING", body = ErrorBody),
    )
)]
pub(crate) async fn exec_stream(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<ExecRequest>,
) -> ApiResult<Response> {
    let events = state.backend.exec_stream(&id, validate(req)?).await?;
    Ok(sse(events))
}

/// The SSE response for an exec stream. Dropping the response body (the
/// client went away) drops the receiver, which the engine takes as cancel.
pub(crate) fn sse(events: ExecStream) -> Response {
    let sse = Sse::new(sse_events(events)).keep_alive(
        KeepAlive::new()
            .interval(KEEP_ALIVE_INTERVAL)
            .text("keep-alive"),
    );
    // Reverse proxies (nginx) must not buffer the stream.
    ([("x-accel-buffering", "no")], sse).into_response()
}

/// Engine events as SSE events, ending after the first `done` or `error`.
/// A stream the engine closes without either ends with an `error` event,
/// so a client never waits for a `done` that cannot come.
fn sse_events(events: ExecStream) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(Some(events), |events| async move {
        let mut events = events?;
        let Some(event) = events.recv().await else {
            let lost = ExecEvent::Error {
                message: "the command ended without a result".into(),
            };
            return Some((Ok(to_sse(lost)), None));
        };
        let last = !matches!(event, ExecEvent::Chunk { .. });
        Some((Ok(to_sse(event)), (!last).then_some(events)))
    })
}

fn to_sse(event: ExecEvent) -> Event {
    let built = match event {
        ExecEvent::Chunk { data, timestamp_ms } => {
            Event::default().event("chunk").json_data(ExecChunkEvent {
                chunk: data,
                timestamp: timestamp_ms,
            })
        }
        ExecEvent::Done {
            exit_code,
            cwd,
            duration_ms,
            timed_out,
            truncated,
        } => Event::default().event("done").json_data(ExecDoneEvent {
            exit_code,
            cwd,
            duration_ms,
            timed_out,
            truncated,
        }),
        ExecEvent::Error { message } => Event::default()
            .event("error")
            .json_data(ExecErrorEvent { error: message }),
    };
    // These types always serialize; keep the stream well-formed regardless.
    built.unwrap_or_else(|e| {
        tracing::error!(error = %e, "could not serialize an exec event");
        Event::default()
            .event("error")
            .data(r#"{"error":"internal error"}"#)
    })
}
