//! Async client of the in-sandbox agent: one Unix stream, many requests in
//! flight, replies routed by request id. Its methods are typed (ping, exec,
//! file operations, environment): the agent's wire messages stay inside
//! this module and [`crate::files`].

use crate::{DirEntry, FileData, FileOp, FileReply, FileStat, RuntimeError};
use sandkasten_protocol::{self as proto, Body, Frame, Request, Response};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

type Pending = Arc<Mutex<Option<HashMap<u64, mpsc::UnboundedSender<Response>>>>>;

/// A connected agent. Cheap to clone; the connection closes when the last
/// clone is dropped.
#[derive(Clone)]
pub struct AgentClient {
    inner: Arc<Inner>,
}

struct Inner {
    next_id: AtomicU64,
    tx: mpsc::UnboundedSender<Vec<u8>>,
    /// `None` once the connection is closed: no new request can register.
    pending: Pending,
    tasks: Vec<tokio::task::AbortHandle>,
    /// Becomes true when the connection closes (the agent died or hung up).
    closed: tokio::sync::watch::Receiver<bool>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A running exec: its request id and the stream of its replies.
pub struct ExecHandle {
    pub id: u64,
    replies: mpsc::UnboundedReceiver<Response>,
}

/// How an exec ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecDone {
    pub exit_code: i32,
    /// The shell's working directory afterwards.
    pub cwd: String,
    pub timed_out: bool,
    pub truncated: bool,
    pub duration_ms: u64,
}

/// One reply of a running exec: output chunks, then exactly one `Done` or
/// `Refused`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecReply {
    /// Interleaved stdout and stderr, in order.
    Output(Vec<u8>),
    Done(ExecDone),
    /// The agent refused the command (a NUL byte in it, for one).
    Refused(String),
}

impl ExecHandle {
    /// The next reply; `None` once the connection closed before the exec
    /// ended. A reply the protocol does not allow here ends the exec as
    /// `Refused` with a description.
    pub async fn next(&mut self) -> Option<ExecReply> {
        Some(match self.replies.recv().await? {
            Response::ExecOutput { data } => ExecReply::Output(data),
            Response::ExecDone {
                exit_code,
                cwd,
                timed_out,
                truncated,
                duration_ms,
            } => ExecReply::Done(ExecDone {
                exit_code,
                cwd,
                timed_out,
                truncated,
                duration_ms,
            }),
            Response::Error { message, .. } => ExecReply::Refused(message),
            other => ExecReply::Refused(format!("unexpected agent reply to an exec: {other:?}")),
        })
    }

    /// Waits for the end, dropping the output.
    pub async fn finish(mut self) -> Result<ExecDone, RuntimeError> {
        loop {
            match self.next().await {
                Some(ExecReply::Output(_)) => continue,
                Some(ExecReply::Done(d)) => return Ok(d),
                Some(ExecReply::Refused(m)) => return Err(RuntimeError::Agent(m)),
                None => return Err(RuntimeError::Agent("agent connection closed".into())),
            }
        }
    }
}

impl AgentClient {
    /// Connects to an agent listening on `path`.
    pub async fn connect(path: &Path) -> Result<Self, RuntimeError> {
        let stream = UnixStream::connect(path).await.map_err(|e| {
            RuntimeError::io(format!("connecting to agent at {}", path.display()), e)
        })?;
        Ok(Self::from_stream(stream))
    }

    /// Wraps an already connected stream.
    pub fn from_stream(stream: UnixStream) -> Self {
        let (rd, wr) = stream.into_split();
        Self::from_halves(rd, wr)
    }

    /// Wraps the two directions of any byte stream to an agent (a relay
    /// through a container engine's exec stream, for one).
    pub fn from_halves<R, W>(mut rd: R, mut wr: W) -> Self
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));

        let writer = tokio::spawn(async move {
            while let Some(bytes) = rx.recv().await {
                if wr.write_all(&bytes).await.is_err() {
                    break;
                }
                // Whatever queued meanwhile goes in the same flush (a
                // buffered transport sends nothing until flushed).
                let mut ok = true;
                while let Ok(more) = rx.try_recv() {
                    if wr.write_all(&more).await.is_err() {
                        ok = false;
                        break;
                    }
                }
                if !ok || wr.flush().await.is_err() {
                    break;
                }
            }
        });
        let reader_pending = pending.clone();
        let (closed_tx, closed) = tokio::sync::watch::channel(false);
        let reader = tokio::spawn(async move {
            let result: Result<(), proto::CodecError> = async {
                loop {
                    let mut prefix = [0u8; 4];
                    rd.read_exact(&mut prefix).await?;
                    let n = proto::frame_len(prefix)?;
                    let mut payload = vec![0u8; n];
                    rd.read_exact(&mut payload).await?;
                    let frame = proto::decode(&payload)?;
                    let Body::Response(resp) = frame.body else {
                        continue;
                    };
                    let done = !matches!(resp, Response::ExecOutput { .. });
                    let mut guard = reader_pending.lock().unwrap();
                    if let Some(map) = guard.as_mut() {
                        if let Some(tx) = map.get(&frame.id) {
                            let _ = tx.send(resp);
                        }
                        if done {
                            map.remove(&frame.id);
                        }
                    }
                }
            }
            .await;
            if let Err(e) = result {
                tracing::debug!("agent connection closed: {e}");
            }
            // Dropping every sender wakes every waiter with "closed".
            reader_pending.lock().unwrap().take();
            let _ = closed_tx.send(true);
        });
        AgentClient {
            inner: Arc::new(Inner {
                next_id: AtomicU64::new(1),
                tx,
                pending,
                tasks: vec![writer.abort_handle(), reader.abort_handle()],
                closed,
            }),
        }
    }

    /// Resolves once the connection has closed: the agent (the sandbox's
    /// PID 1) died or closed it. An event, not a poll.
    pub async fn closed(&self) {
        let mut rx = self.inner.closed.clone();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// True while the connection is open.
    pub fn is_connected(&self) -> bool {
        self.inner.pending.lock().unwrap().is_some()
    }

    fn send(&self, req: Request) -> Result<(u64, mpsc::UnboundedReceiver<Response>), RuntimeError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let bytes = proto::encode(&Frame {
            id,
            body: Body::Request(req),
        })
        .map_err(|e| RuntimeError::Agent(e.to_string()))?;
        let (tx, rx) = mpsc::unbounded_channel();
        {
            let mut guard = self.inner.pending.lock().unwrap();
            let map = guard
                .as_mut()
                .ok_or_else(|| RuntimeError::Agent("agent connection closed".into()))?;
            map.insert(id, tx);
        }
        self.inner
            .tx
            .send(bytes)
            .map_err(|_| RuntimeError::Agent("agent connection closed".into()))?;
        Ok((id, rx))
    }

    /// Sends a wire request with exactly one reply and waits for it (for
    /// protocol-level tests; everything else uses the typed methods).
    pub async fn call(&self, req: Request) -> Result<Response, RuntimeError> {
        let (_, mut rx) = self.send(req)?;
        rx.recv()
            .await
            .ok_or_else(|| RuntimeError::Agent("agent connection closed".into()))
    }

    /// Starts an exec; replies stream through the returned handle.
    pub fn exec(
        &self,
        cmd: String,
        timeout_ms: u64,
        max_output_bytes: u64,
    ) -> Result<ExecHandle, RuntimeError> {
        let (id, replies) = self.send(Request::Exec {
            cmd,
            timeout_ms,
            max_output_bytes,
        })?;
        Ok(ExecHandle { id, replies })
    }

    /// Interrupts the exec started with request id `target`.
    pub async fn cancel(&self, target: u64) -> Result<(), RuntimeError> {
        self.call(Request::CancelExec { target }).await.map(|_| ())
    }

    /// Liveness: the agent answers with its shell's cwd.
    pub async fn ping(&self) -> Result<String, RuntimeError> {
        match self.call(Request::Ping).await? {
            Response::Pong { cwd, .. } => Ok(cwd),
            other => Err(RuntimeError::Agent(format!(
                "unexpected reply to a ping: {other:?}"
            ))),
        }
    }

    /// Adds variables to the environment of every shell the agent starts
    /// from now on (the running shell is not changed).
    pub async fn set_env(&self, env: Vec<(String, String)>) -> Result<(), RuntimeError> {
        match self.call(Request::SetEnv { env }).await? {
            Response::Ok => Ok(()),
            Response::Error { message, .. } => Err(RuntimeError::Agent(message)),
            other => Err(RuntimeError::Agent(format!(
                "unexpected reply to set-env: {other:?}"
            ))),
        }
    }

    /// One file operation in the sandbox.
    pub async fn file(&self, op: FileOp) -> Result<FileReply, RuntimeError> {
        FileReply::from_response(self.call(op.into_request()).await?)
    }

    pub async fn read_file(
        &self,
        path: String,
        max_bytes: Option<u64>,
    ) -> Result<FileData, RuntimeError> {
        self.file(FileOp::Read { path, max_bytes })
            .await?
            .into_data()
    }

    pub async fn write_file(
        &self,
        path: String,
        data: Vec<u8>,
        mode: Option<u32>,
    ) -> Result<(), RuntimeError> {
        self.file(FileOp::Write { path, data, mode })
            .await?
            .into_done()
    }

    pub async fn list_dir(&self, path: String) -> Result<Vec<DirEntry>, RuntimeError> {
        self.file(FileOp::ListDir { path }).await?.into_entries()
    }

    pub async fn stat(&self, path: String) -> Result<FileStat, RuntimeError> {
        self.file(FileOp::Stat { path }).await?.into_stat()
    }

    pub async fn mkdir(&self, path: String, parents: bool) -> Result<(), RuntimeError> {
        self.file(FileOp::Mkdir { path, parents })
            .await?
            .into_done()
    }

    pub async fn remove(&self, path: String, recursive: bool) -> Result<(), RuntimeError> {
        self.file(FileOp::Remove { path, recursive })
            .await?
            .into_done()
    }
}
