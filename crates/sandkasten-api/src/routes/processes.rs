//! `/v1/sessions/{id}/processes`: background processes (start with a JSON
//! or an SSE answer, list, status, reattach, stdin, signals, resize).

use super::exec::KEEP_ALIVE_INTERVAL;
use super::ApiResult;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::wire::{
    proc_ref, ErrorBody, OkResponse, OutputEncoding, ProcessEndEvent, ProcessInfo,
    ProcessOutputEvent, ProcessStreamQuery, PtySize, SignalRequest, StartProcessRequest,
    StdinQuery,
};
use crate::AppState;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use futures::{Stream, StreamExt};
use sandkasten_engine::{self as engine, ProcEvent, ProcOutput, ProcStream, StartedProcess};
use std::convert::Infallible;

/// Starts a background process; answers once it runs, with its pid.
#[utoipa::path(
    post,
    path = "/v1/sessions/{id}/processes",
    tag = "processes",
    params(("id" = String, Path, description = "Session id")),
    request_body = StartProcessRequest,
    responses(
        (status = 201, description = "The process runs", body = ProcessInfo),
        (status = 400, description = "INVALID_REQUEST, PROCESS_START_FAILED (the program was not found or could not start)", body = ErrorBody),
        (status = 404, description = "SESSION_NOT_FOUND", body = ErrorBody),
        (status = 410, description = "SESSION_LOST: the sandbox ended during the request", body = ErrorBody),
        (status = 409, description = "SESSION_NOT_RUNNING, TAG_IN_USE", body = ErrorBody),
    )
)]
pub(crate) async fn start_process(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<StartProcessRequest>,
) -> ApiResult<(StatusCode, Json<ProcessInfo>)> {
    let spec = req.into_spec()?;
    match state.backend.start_process(&id, spec, false).await? {
        StartedProcess::Detached(info) => Ok((StatusCode::CREATED, Json(info.into()))),
        StartedProcess::Attached(out) => Ok((StatusCode::CREATED, Json(out.info.clone().into()))),
    }
}

/// Starts a background process and streams it as server-sent events: one
/// `start` (`ProcessInfo`), then `stdout`, `stderr` or `pty` events
/// (`ProcessOutputEvent`) from its first byte, then one `end`
/// (`ProcessEndEvent`) or `error`. Disconnecting detaches: the process
/// runs on (attach again with `GET …/processes/{proc}/stream`).
#[utoipa::path(
    post,
    path = "/v1/sessions/{id}/processes/stream",
    tag = "processes",
    params(("id" = String, Path, description = "Session id"), ProcessStreamQuery),
    request_body = StartProcessRequest,
    responses(
        (status = 200, description = "`text/event-stream`: `start`, output events, then `end` or `error`", content_type = "text/event-stream", body = ProcessOutputEvent),
        (status = 400, description = "INVALID_REQUEST, PROCESS_START_FAILED", body = ErrorBody),
        (status = 404, description = "SESSION_NOT_FOUND", body = ErrorBody),
        (status = 410, description = "SESSION_LOST: the sandbox ended during the request", body = ErrorBody),
        (status = 409, description = "SESSION_NOT_RUNNING, TAG_IN_USE", body = ErrorBody),
    )
)]
pub(crate) async fn start_process_stream(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ProcessStreamQuery>,
    ApiJson(req): ApiJson<StartProcessRequest>,
) -> ApiResult<Response> {
    let spec = req.into_spec()?;
    match state.backend.start_process(&id, spec, true).await? {
        StartedProcess::Attached(out) => Ok(sse(out, q.encoding.unwrap_or_default())),
        StartedProcess::Detached(_) => Err(ApiError::Internal(
            "the sandbox did not attach the process's output".into(),
        )),
    }
}

/// Running and recently ended processes of the session, oldest first.
#[utoipa::path(
    get,
    path = "/v1/sessions/{id}/processes",
    tag = "processes",
    params(("id" = String, Path, description = "Session id")),
    responses(
        (status = 200, description = "The processes", body = [ProcessInfo]),
        (status = 404, description = "SESSION_NOT_FOUND", body = ErrorBody),
        (status = 410, description = "SESSION_LOST: the sandbox ended during the request", body = ErrorBody),
    )
)]
pub(crate) async fn list_processes(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Vec<ProcessInfo>>> {
    let list = state.backend.list_processes(&id).await?;
    Ok(Json(list.into_iter().map(Into::into).collect()))
}

/// One process, by pid or tag.
#[utoipa::path(
    get,
    path = "/v1/sessions/{id}/processes/{proc}",
    tag = "processes",
    params(("id" = String, Path, description = "Session id"), ("proc" = String, Path, description = "Pid or tag")),
    responses(
        (status = 200, description = "The process", body = ProcessInfo),
        (status = 400, description = "INVALID_REQUEST (not a pid or a tag)", body = ErrorBody),
        (status = 404, description = "SESSION_NOT_FOUND, PROCESS_NOT_FOUND", body = ErrorBody),
        (status = 410, description = "SESSION_LOST: the sandbox ended during the request", body = ErrorBody),
    )
)]
pub(crate) async fn get_process(
    State(state): State<AppState>,
    ApiPath((id, proc)): ApiPath<(String, String)>,
) -> ApiResult<Json<ProcessInfo>> {
    let info = state.backend.process(&id, proc_ref(&proc)?).await?;
    Ok(Json(info.into()))
}

/// Attaches to a process as server-sent events: `start`, its output kept
/// since the start (up to 1 MiB; `replay=false`: none), then live, then
/// `end`. Disconnecting detaches.
#[utoipa::path(
    get,
    path = "/v1/sessions/{id}/processes/{proc}/stream",
    tag = "processes",
    params(("id" = String, Path, description = "Session id"), ("proc" = String, Path, description = "Pid or tag"), ProcessStreamQuery),
    responses(
        (status = 200, description = "`text/event-stream`: `start`, output events, then `end` or `error`", content_type = "text/event-stream", body = ProcessOutputEvent),
        (status = 404, description = "SESSION_NOT_FOUND, PROCESS_NOT_FOUND", body = ErrorBody),
        (status = 410, description = "SESSION_LOST: the sandbox ended during the request", body = ErrorBody),
    )
)]
pub(crate) async fn process_stream(
    State(state): State<AppState>,
    ApiPath((id, proc)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<ProcessStreamQuery>,
) -> ApiResult<Response> {
    let out = state
        .backend
        .attach_process(&id, proc_ref(&proc)?, q.replay.unwrap_or(true))
        .await?;
    Ok(sse(out, q.encoding.unwrap_or_default()))
}

/// Writes the request body to the process's stdin as it arrives (a
/// streamed body is a stream of input); answers once all of it is written.
/// `close=true` closes stdin afterwards.
#[utoipa::path(
    post,
    path = "/v1/sessions/{id}/processes/{proc}/stdin",
    tag = "processes",
    params(("id" = String, Path, description = "Session id"), ("proc" = String, Path, description = "Pid or tag"), StdinQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "Bytes for stdin"),
    responses(
        (status = 200, description = "Written", body = OkResponse),
        (status = 404, description = "SESSION_NOT_FOUND, PROCESS_NOT_FOUND", body = ErrorBody),
        (status = 410, description = "SESSION_LOST: the sandbox ended during the request", body = ErrorBody),
        (status = 409, description = "PROCESS_ENDED, STDIN_CLOSED", body = ErrorBody),
    )
)]
pub(crate) async fn write_stdin(
    State(state): State<AppState>,
    ApiPath((id, proc)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<StdinQuery>,
    body: Body,
) -> ApiResult<Json<OkResponse>> {
    let proc = proc_ref(&proc)?;
    let mut chunks = body.into_data_stream();
    let mut wrote = false;
    while let Some(chunk) = chunks.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::InvalidRequest(format!("reading the body: {e}")))?;
        if chunk.is_empty() {
            continue;
        }
        wrote = true;
        state
            .backend
            .process_input(&id, proc.clone(), chunk.to_vec())
            .await?;
    }
    if q.close == Some(true) {
        state.backend.close_process_stdin(&id, proc).await?;
    } else if !wrote {
        // Nothing to write: still say whether the process takes input.
        state.backend.process_input(&id, proc, Vec::new()).await?;
    }
    Ok(Json(OkResponse::TRUE))
}

/// Closes the process's stdin (on a PTY: sends end-of-file, Ctrl-D).
#[utoipa::path(
    delete,
    path = "/v1/sessions/{id}/processes/{proc}/stdin",
    tag = "processes",
    params(("id" = String, Path, description = "Session id"), ("proc" = String, Path, description = "Pid or tag")),
    responses(
        (status = 200, description = "Closed", body = OkResponse),
        (status = 404, description = "SESSION_NOT_FOUND, PROCESS_NOT_FOUND", body = ErrorBody),
        (status = 410, description = "SESSION_LOST: the sandbox ended during the request", body = ErrorBody),
        (status = 409, description = "PROCESS_ENDED", body = ErrorBody),
    )
)]
pub(crate) async fn close_stdin(
    State(state): State<AppState>,
    ApiPath((id, proc)): ApiPath<(String, String)>,
) -> ApiResult<Json<OkResponse>> {
    state
        .backend
        .close_process_stdin(&id, proc_ref(&proc)?)
        .await?;
    Ok(Json(OkResponse::TRUE))
}

/// Sends a signal to the process's group (the process and what it
/// started).
#[utoipa::path(
    post,
    path = "/v1/sessions/{id}/processes/{proc}/signal",
    tag = "processes",
    params(("id" = String, Path, description = "Session id"), ("proc" = String, Path, description = "Pid or tag")),
    request_body = SignalRequest,
    responses(
        (status = 200, description = "Sent", body = OkResponse),
        (status = 400, description = "INVALID_REQUEST (unknown signal)", body = ErrorBody),
        (status = 404, description = "SESSION_NOT_FOUND, PROCESS_NOT_FOUND", body = ErrorBody),
        (status = 410, description = "SESSION_LOST: the sandbox ended during the request", body = ErrorBody),
        (status = 409, description = "PROCESS_ENDED", body = ErrorBody),
    )
)]
pub(crate) async fn signal_process(
    State(state): State<AppState>,
    ApiPath((id, proc)): ApiPath<(String, String)>,
    ApiJson(req): ApiJson<SignalRequest>,
) -> ApiResult<Json<OkResponse>> {
    let proc = proc_ref(&proc)?;
    let signal = req.number()?;
    state.backend.signal_process(&id, proc, signal).await?;
    Ok(Json(OkResponse::TRUE))
}

/// Sets a PTY process's window size.
#[utoipa::path(
    post,
    path = "/v1/sessions/{id}/processes/{proc}/resize",
    tag = "processes",
    params(("id" = String, Path, description = "Session id"), ("proc" = String, Path, description = "Pid or tag")),
    request_body = PtySize,
    responses(
        (status = 200, description = "Resized", body = OkResponse),
        (status = 400, description = "INVALID_REQUEST (no PTY, a zero size)", body = ErrorBody),
        (status = 404, description = "SESSION_NOT_FOUND, PROCESS_NOT_FOUND", body = ErrorBody),
        (status = 410, description = "SESSION_LOST: the sandbox ended during the request", body = ErrorBody),
        (status = 409, description = "PROCESS_ENDED", body = ErrorBody),
    )
)]
pub(crate) async fn resize_process(
    State(state): State<AppState>,
    ApiPath((id, proc)): ApiPath<(String, String)>,
    ApiJson(size): ApiJson<PtySize>,
) -> ApiResult<Json<OkResponse>> {
    let proc = proc_ref(&proc)?;
    if size.rows == 0 || size.cols == 0 {
        return Err(ApiError::InvalidRequest(
            "rows and cols must be at least 1".into(),
        ));
    }
    let size = engine::PtySize {
        rows: size.rows,
        cols: size.cols,
    };
    state.backend.resize_process(&id, proc, size).await?;
    Ok(Json(OkResponse::TRUE))
}

/// The SSE response of a process stream. Dropping it (the client went
/// away) detaches; the process runs on.
fn sse(out: ProcOutput, encoding: OutputEncoding) -> Response {
    let sse = Sse::new(events(out, encoding)).keep_alive(
        KeepAlive::new()
            .interval(KEEP_ALIVE_INTERVAL)
            .text("keep-alive"),
    );
    ([("x-accel-buffering", "no")], sse).into_response()
}

/// The stream's state: the process output, and per stream the bytes of a
/// UTF-8 sequence a chunk split (encoding `text`).
struct Feed {
    out: ProcOutput,
    encoding: OutputEncoding,
    partial: [Vec<u8>; 3],
    started: bool,
}

fn events(
    out: ProcOutput,
    encoding: OutputEncoding,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let feed = Feed {
        out,
        encoding,
        partial: Default::default(),
        started: false,
    };
    futures::stream::unfold(Some(feed), |feed| async move {
        let mut feed = feed?;
        if !feed.started {
            feed.started = true;
            let info: ProcessInfo = feed.out.info.clone().into();
            return Some((Ok(json_event("start", &info)), Some(feed)));
        }
        match feed.out.next().await {
            Ok(ProcEvent::Output { stream, data }) => {
                let (name, slot) = match stream {
                    ProcStream::Stdout => ("stdout", 0),
                    ProcStream::Stderr => ("stderr", 1),
                    ProcStream::Pty => ("pty", 2),
                };
                let ev = match feed.encoding {
                    OutputEncoding::Base64 => ProcessOutputEvent {
                        data: None,
                        data_base64: Some(base64::engine::general_purpose::STANDARD.encode(&data)),
                    },
                    OutputEncoding::Text => ProcessOutputEvent {
                        data: Some(decode_utf8(&mut feed.partial[slot], &data)),
                        data_base64: None,
                    },
                };
                Some((Ok(json_event(name, &ev)), Some(feed)))
            }
            Ok(ProcEvent::End(end)) => {
                let ev = ProcessEndEvent {
                    exit_code: end.exit_code,
                    signal: end.signal,
                };
                Some((Ok(json_event("end", &ev)), None))
            }
            Err(e) => {
                tracing::warn!(error = %e, "a process stream broke off");
                let ev = serde_json::json!({"error": "the connection to the sandbox was lost"});
                Some((Ok(json_event("error", &ev)), None))
            }
        }
    })
}

fn json_event<T: serde::Serialize>(name: &str, data: &T) -> Event {
    Event::default()
        .event(name)
        .json_data(data)
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "could not serialize a process event");
            Event::default()
                .event("error")
                .data(r#"{"error":"internal error"}"#)
        })
}

/// Decodes `data` after the `partial` bytes a previous chunk left: text up
/// to the last complete character (invalid bytes as U+FFFD); an
/// incomplete sequence at the end waits for the next chunk.
pub(crate) fn decode_utf8(partial: &mut Vec<u8>, data: &[u8]) -> String {
    partial.extend_from_slice(data);
    let mut out = String::with_capacity(partial.len());
    let mut rest: &[u8] = partial;
    loop {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                out.push_str(s);
                rest = &[];
                break;
            }
            Err(e) => {
                let (ok, after) = rest.split_at(e.valid_up_to());
                // SAFETY-free: `ok` is valid UTF-8 by `valid_up_to`.
                out.push_str(std::str::from_utf8(ok).unwrap_or_default());
                match e.error_len() {
                    Some(n) => {
                        out.push('\u{FFFD}');
                        rest = &after[n..];
                    }
                    None => {
                        rest = after;
                        break;
                    }
                }
            }
        }
    }
    let keep = rest.to_vec();
    *partial = keep;
    out
}

#[cfg(test)]
mod tests {
    use super::decode_utf8;

    #[test]
    fn characters_split_across_chunks_arrive_whole() {
        let mut p = Vec::new();
        let euro = "€".as_bytes();
        assert_eq!(decode_utf8(&mut p, &[b'a', euro[0]]), "a");
        assert_eq!(decode_utf8(&mut p, &euro[1..]), "€");
        assert_eq!(decode_utf8(&mut p, &[0xff, b'b']), "\u{FFFD}b");
        assert!(p.is_empty());
    }
}
