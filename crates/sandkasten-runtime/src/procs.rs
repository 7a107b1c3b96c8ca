//! Background processes through the agent (protocol 4): typed calls on
//! [`AgentClient`], typed failures ([`RuntimeError::Process`]), and a
//! process's output as a stream ([`ProcOutput`]) acknowledged as its
//! consumer takes it, like a file read: a slow client holds its own stream
//! (and at most the process's kept output), nothing else.

use crate::agent_client::READ_WINDOW;
use crate::{AgentClient, RuntimeError};
use sandkasten_protocol::{self as proto, ErrorKind, Request, Response};
use tokio::sync::mpsc;

pub use sandkasten_protocol::{ProcEnd, ProcInfo, ProcRef, ProcSpec, ProcStream, PtySize};

/// Why a process request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcErrorKind {
    /// No process with that pid or tag.
    NotFound,
    /// It has ended (input, a signal or a resize came too late).
    Ended,
    /// Its stdin is closed or was never open.
    StdinClosed,
    /// A running process already has the tag.
    TagInUse,
    /// The program could not be started (not found, not executable, the
    /// working directory missing).
    StartFailed,
    /// The request is malformed (an empty argv, a NUL byte, no PTY to
    /// resize, an unknown signal).
    InvalidRequest,
}

/// One event of an attached process stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcEvent {
    Output {
        stream: ProcStream,
        data: Vec<u8>,
    },
    /// The process ended and all of its output was sent: the last event.
    End(ProcEnd),
}

/// A process's output as it comes, then its end. Dropped before the end,
/// it detaches (the process runs on).
pub struct ProcOutput {
    /// The process as it was when the stream attached.
    pub info: ProcInfo,
    client: AgentClient,
    id: u64,
    replies: mpsc::UnboundedReceiver<Response>,
    finished: bool,
}

impl ProcOutput {
    /// The next event; an error when the connection to the agent closed.
    pub async fn next(&mut self) -> Result<ProcEvent, RuntimeError> {
        if self.finished {
            return Err(RuntimeError::Agent("the process stream has ended".into()));
        }
        match self.replies.recv().await {
            Some(Response::ProcOutput { stream, data }) => {
                self.client.notify(Request::ReadAck {
                    target: self.id,
                    chunks: 1,
                });
                Ok(ProcEvent::Output { stream, data })
            }
            Some(Response::ProcEnded(end)) => {
                self.finished = true;
                Ok(ProcEvent::End(end))
            }
            other => {
                self.finished = true;
                Err(unexpected(other, "a process stream"))
            }
        }
    }
}

impl std::fmt::Debug for ProcOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcOutput")
            .field("info", &self.info)
            .field("request", &self.id)
            .field("finished", &self.finished)
            .finish()
    }
}

impl Drop for ProcOutput {
    fn drop(&mut self) {
        if !self.finished {
            self.client.forget(self.id);
            self.client.notify(Request::CancelRead { target: self.id });
        }
    }
}

/// What a start answered: the process, or its attached stream.
#[derive(Debug)]
pub enum Started {
    Detached(ProcInfo),
    Attached(ProcOutput),
}

impl AgentClient {
    async fn processes(&self) -> Result<(), RuntimeError> {
        if self.protocol().await? < proto::PROCESSES_SINCE {
            return Err(RuntimeError::Unsupported(
                "processes in a sandbox started before the daemon's upgrade (recreate it)".into(),
                "agent",
            ));
        }
        Ok(())
    }

    /// Starts a background process; with `attach`, answers its output
    /// stream from its first byte.
    pub async fn proc_start(&self, spec: ProcSpec, attach: bool) -> Result<Started, RuntimeError> {
        self.processes().await?;
        let (id, mut replies) = self.send(Request::ProcStart {
            spec,
            attach,
            window: READ_WINDOW,
        })?;
        match replies.recv().await {
            Some(Response::ProcStarted(info)) => Ok(Started::Detached(info)),
            Some(Response::ProcAttached(info)) => Ok(Started::Attached(ProcOutput {
                info,
                client: self.clone(),
                id,
                replies,
                finished: false,
            })),
            Some(Response::Error { kind, message }) => Err(start_error(kind, message)),
            other => Err(unexpected(other, "a process start")),
        }
    }

    /// Attaches to a process: its kept output first when `replay`, then
    /// live, then its end.
    pub async fn proc_attach(
        &self,
        proc: ProcRef,
        replay: bool,
    ) -> Result<ProcOutput, RuntimeError> {
        self.processes().await?;
        let (id, mut replies) = self.send(Request::ProcAttach {
            proc,
            replay,
            window: READ_WINDOW,
        })?;
        match replies.recv().await {
            Some(Response::ProcAttached(info)) => Ok(ProcOutput {
                info,
                client: self.clone(),
                id,
                replies,
                finished: false,
            }),
            other => Err(reply_error(other, "a process attach")),
        }
    }

    /// Running and recently ended processes, oldest first.
    pub async fn proc_list(&self) -> Result<Vec<ProcInfo>, RuntimeError> {
        self.processes().await?;
        match self.call(Request::ProcList).await? {
            Response::Procs(list) => Ok(list),
            other => Err(reply_error(Some(other), "a process list")),
        }
    }

    /// Writes to a process's stdin; answers once written.
    pub async fn proc_input(&self, proc: ProcRef, data: Vec<u8>) -> Result<(), RuntimeError> {
        self.proc_call(Request::ProcInput { proc, data }).await
    }

    pub async fn proc_close_stdin(&self, proc: ProcRef) -> Result<(), RuntimeError> {
        self.proc_call(Request::ProcCloseStdin { proc }).await
    }

    pub async fn proc_signal(&self, proc: ProcRef, signal: i32) -> Result<(), RuntimeError> {
        self.proc_call(Request::ProcSignal { proc, signal }).await
    }

    pub async fn proc_resize(&self, proc: ProcRef, size: PtySize) -> Result<(), RuntimeError> {
        self.proc_call(Request::ProcResize { proc, size }).await
    }

    async fn proc_call(&self, req: Request) -> Result<(), RuntimeError> {
        self.processes().await?;
        match self.call(req).await? {
            Response::Ok => Ok(()),
            other => Err(reply_error(Some(other), "a process request")),
        }
    }
}

/// An error reply to a request about an existing process.
fn reply_error(reply: Option<Response>, what: &str) -> RuntimeError {
    match reply {
        Some(Response::Error { kind, message }) => RuntimeError::Process {
            kind: match kind {
                ErrorKind::NotFound => ProcErrorKind::NotFound,
                ErrorKind::ProcessEnded => ProcErrorKind::Ended,
                ErrorKind::StdinClosed => ProcErrorKind::StdinClosed,
                ErrorKind::InvalidRequest => ProcErrorKind::InvalidRequest,
                _ => return RuntimeError::Agent(message),
            },
            message,
        },
        other => unexpected(other, what),
    }
}

/// An error reply to a start.
fn start_error(kind: ErrorKind, message: String) -> RuntimeError {
    let kind = match kind {
        ErrorKind::InvalidRequest => ProcErrorKind::InvalidRequest,
        ErrorKind::AlreadyExists => ProcErrorKind::TagInUse,
        // NoSpace: a limit of the sandbox (pids, terminals) is reached.
        ErrorKind::NotFound
        | ErrorKind::PermissionDenied
        | ErrorKind::NotADirectory
        | ErrorKind::NoSpace => ProcErrorKind::StartFailed,
        _ => return RuntimeError::Agent(message),
    };
    RuntimeError::Process { kind, message }
}

fn unexpected(reply: Option<Response>, what: &str) -> RuntimeError {
    match reply {
        None => RuntimeError::Agent("agent connection closed".into()),
        Some(Response::Error { message, .. }) => RuntimeError::Agent(message),
        Some(other) => RuntimeError::Agent(format!("unexpected reply to {what}: {other:?}")),
    }
}
