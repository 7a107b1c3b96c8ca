//! `GET /v1/sessions/{id}/pty`: an interactive terminal over WebSocket. A
//! login shell (or `cmd`) starts in a PTY as a process of the session;
//! binary messages carry the terminal's bytes both ways, text messages are
//! JSON control messages. Closing the socket hangs the terminal up
//! (SIGHUP); attaching to an existing PTY process (`proc`) only detaches.

use super::ApiResult;
use crate::error::ApiError;
use crate::extract::{ApiPath, ApiQuery};
use crate::wire::{proc_ref, ErrorBody, ProcessUser};
use crate::AppState;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use sandkasten_engine::{self as engine, ProcEvent, ProcOutput, ProcRef, StartedProcess};
use serde::Deserialize;
use utoipa::IntoParams;

/// The shell a terminal starts: bash as a login shell where it exists.
const LOGIN_SHELL: &str =
    "if command -v bash >/dev/null 2>&1; then exec bash -l; else exec sh -l; fi";

/// Query of `GET /v1/sessions/{id}/pty`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct PtyQuery {
    /// Rows (default 24).
    pub rows: Option<u16>,
    /// Columns (default 80).
    pub cols: Option<u16>,
    /// A command line instead of the login shell (`/bin/sh -c CMD`).
    pub cmd: Option<String>,
    /// `sandbox` (default) or `root`.
    pub user: Option<ProcessUser>,
    /// Working directory (default `/workspace`).
    pub cwd: Option<String>,
    /// Attach to this running PTY process (pid or tag) instead of starting
    /// one; closing the socket then detaches without a hang-up.
    pub proc: Option<String>,
}

/// A control message (a text message of the socket).
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Control {
    /// The terminal's new size.
    Resize { rows: u16, cols: u16 },
    /// Input as text (what a binary message carries as bytes).
    Input { data: String },
}

/// Opens an interactive terminal: a WebSocket upgrade. Binary messages
/// both ways are the terminal's bytes; the client's text messages are
/// `{"type": "resize", "rows": R, "cols": C}` or `{"type": "input",
/// "data": "…"}`; the server's last text message is `{"type": "exit",
/// "exit_code": N, "signal": S}`, then it closes.
#[utoipa::path(
    get,
    path = "/v1/sessions/{id}/pty",
    tag = "processes",
    params(("id" = String, Path, description = "Session id"), PtyQuery),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, description = "INVALID_REQUEST (not a WebSocket upgrade, a bad size), PROCESS_START_FAILED", body = ErrorBody),
        (status = 404, description = "SESSION_NOT_FOUND, PROCESS_NOT_FOUND", body = ErrorBody),
    )
)]
pub(crate) async fn pty(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<PtyQuery>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let ws = ws.map_err(|e| ApiError::InvalidRequest(format!("not a WebSocket upgrade: {e}")))?;
    let (rows, cols) = (q.rows.unwrap_or(24), q.cols.unwrap_or(80));
    if rows == 0 || cols == 0 {
        return Err(ApiError::InvalidRequest(
            "rows and cols must be at least 1".into(),
        ));
    }
    // The process starts (or is found) before the upgrade, so a failure is
    // an HTTP error, not a socket that closes at once.
    let (out, owned) = match &q.proc {
        Some(p) => {
            let r = proc_ref(p)?;
            (state.backend.attach_process(&id, r, true).await?, false)
        }
        None => {
            let spec = engine::ProcSpec {
                argv: match q.cmd {
                    Some(c) => vec!["/bin/sh".into(), "-c".into(), c],
                    None => vec!["/bin/sh".into(), "-c".into(), LOGIN_SHELL.into()],
                },
                env: Vec::new(),
                cwd: q.cwd,
                root: q.user == Some(ProcessUser::Root),
                pty: Some(engine::PtySize { rows, cols }),
                stdin: true,
                tag: None,
            };
            match state.backend.start_process(&id, spec, true).await? {
                StartedProcess::Attached(out) => (out, true),
                StartedProcess::Detached(_) => {
                    return Err(ApiError::Internal("the terminal was not attached".into()))
                }
            }
        }
    };
    // A message is held whole until it is written to the terminal: 4 MiB
    // (a paste) at most, not tungstenite's 64.
    Ok(ws
        .max_message_size(MAX_MESSAGE)
        .max_frame_size(MAX_MESSAGE)
        .on_upgrade(move |socket| serve(state, id, out, owned, socket)))
}

/// The largest WebSocket message (and frame) a terminal takes.
const MAX_MESSAGE: usize = 4 << 20;

/// Pumps the terminal both ways until the process ends or the client goes.
async fn serve(
    state: AppState,
    id: String,
    mut out: ProcOutput,
    owned: bool,
    mut socket: WebSocket,
) {
    let proc = ProcRef::Pid(out.info.pid);
    // Input goes to the terminal on a task of its own: a write waits while
    // the terminal does not read, and the terminal stops reading while its
    // output (the echo of a paste, say) is not taken, so output must flow
    // meanwhile. The socket is read only while the writer has room (its
    // backpressure), output always.
    let (input_tx, mut input_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    let writer = {
        let (state, id, proc) = (state.clone(), id.clone(), proc.clone());
        tokio::spawn(async move {
            while let Some(input) = input_rx.recv().await {
                if let Err(e) = state.backend.process_input(&id, proc.clone(), input).await {
                    tracing::debug!(session = %id, error = %e, "terminal input");
                }
            }
        })
    };
    let mut pending: Option<Vec<u8>> = None;
    loop {
        tokio::select! {
            ev = out.next() => match ev {
                Ok(ProcEvent::Output { data, .. }) => {
                    if socket.send(Message::Binary(data.into())).await.is_err() {
                        break;
                    }
                }
                Ok(ProcEvent::End(end)) => {
                    let msg = serde_json::json!({
                        "type": "exit", "exit_code": end.exit_code, "signal": end.signal,
                    });
                    let _ = socket.send(Message::Text(msg.to_string().into())).await;
                    let _ = socket.send(Message::Close(None)).await;
                    writer.abort();
                    return;
                }
                Err(e) => {
                    tracing::warn!(session = %id, error = %e, "a terminal lost its sandbox");
                    let _ = socket.send(Message::Close(None)).await;
                    writer.abort();
                    return;
                }
            },
            permit = input_tx.reserve(), if pending.is_some() => match permit {
                Ok(permit) => permit.send(pending.take().unwrap_or_default()),
                Err(_) => break,
            },
            msg = socket.recv(), if pending.is_none() => {
                pending = match msg {
                    Some(Ok(Message::Binary(b))) => Some(b.to_vec()),
                    Some(Ok(Message::Text(t))) => match serde_json::from_str::<Control>(&t) {
                        Ok(Control::Input { data }) => Some(data.into_bytes()),
                        Ok(Control::Resize { rows, cols }) if rows > 0 && cols > 0 => {
                            let size = engine::PtySize { rows, cols };
                            if let Err(e) = state.backend.resize_process(&id, proc.clone(), size).await {
                                tracing::debug!(session = %id, error = %e, "terminal resize");
                            }
                            None
                        }
                        // Unknown control messages are ignored.
                        _ => None,
                    },
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => None,
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                };
            }
        }
    }
    // The client went away: what it sent before it left still goes in
    // (a command and a close, say), if the terminal takes it soon; then a
    // terminal we started hangs up, like a closed terminal window (which
    // also ends a write waiting for it to read).
    if let Some(input) = pending.take() {
        let _ = input_tx.try_send(input);
    }
    drop(input_tx);
    let mut writer = writer;
    if tokio::time::timeout(INPUT_DRAIN, &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
    if owned {
        let _ = state.backend.signal_process(&id, proc, 1).await;
    }
}

/// How long a terminal whose client left gets to take the input the client
/// sent before it left.
const INPUT_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);
