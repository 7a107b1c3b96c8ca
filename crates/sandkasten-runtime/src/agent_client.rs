//! Async client of the in-sandbox agent: one Unix stream, many requests in
//! flight, replies routed by request id. Its methods are typed (ping, exec,
//! file operations, environment): the agent's wire messages stay inside
//! this module and [`crate::files`].
//!
//! A file is read as a stream ([`AgentClient::read_file`]): the agent sends
//! chunks under flow control, and the client acknowledges a chunk when its
//! consumer takes it, so a read holds at most [`READ_WINDOW`] chunks here
//! and a slow HTTP client slows its own read, nothing else on the
//! connection. An agent of protocol 1 (a sandbox started before an
//! upgrade) gets the old whole-file request instead: the client learns the
//! version from a ping before its first read and never sends an old agent a
//! request it cannot decode (it would close the connection, and the sandbox
//! would be lost).

use crate::files::Piece;
use crate::{DirEntry, FileOp, FileReply, FileStat, FileStream, RuntimeError};
use sandkasten_protocol::{self as proto, Body, Frame, Request, Response};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

type Pending = Arc<Mutex<Option<HashMap<u64, mpsc::UnboundedSender<Response>>>>>;

/// Chunks of one read the agent may send ahead of its consumer.
pub const READ_WINDOW: u32 = 4;

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
    /// The agent's protocol version from its last Pong; 0 until then.
    protocol: AtomicU32,
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

/// The daemon's side of one streamed read: its replies, acknowledged as
/// the consumer takes them; dropped before its end, it cancels the read.
pub(crate) struct AgentRead {
    client: AgentClient,
    id: u64,
    replies: mpsc::UnboundedReceiver<Response>,
    /// The first reply, received before the stream was handed out.
    first: Option<Response>,
    /// The end (or an error) was received.
    finished: bool,
}

impl AgentRead {
    pub(crate) async fn next(&mut self) -> Piece {
        let reply = match self.first.take() {
            Some(r) => Some(r),
            None => self.replies.recv().await,
        };
        let piece = match reply {
            Some(Response::FileChunk { data }) => {
                // Taken by the consumer: the agent may send one more.
                self.client.notify(Request::ReadAck {
                    target: self.id,
                    chunks: 1,
                });
                return Piece::Data(data);
            }
            Some(Response::FileEnd { truncated, .. }) => Piece::End { truncated },
            Some(Response::Error { kind, message }) => Piece::Failed(RuntimeError::File {
                kind: kind.into(),
                message,
            }),
            Some(other) => Piece::Failed(RuntimeError::Agent(format!(
                "unexpected reply to a file read: {other:?}"
            ))),
            None => Piece::Failed(RuntimeError::Agent("agent connection closed".into())),
        };
        self.finished = true;
        piece
    }
}

impl Drop for AgentRead {
    fn drop(&mut self) {
        if !self.finished {
            self.client.forget(self.id);
            self.client.notify(Request::CancelRead { target: self.id });
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
                    let done = !matches!(
                        resp,
                        Response::ExecOutput { .. }
                            | Response::FileChunk { .. }
                            | Response::ProcAttached(_)
                            | Response::ProcOutput { .. }
                            | Response::Watching
                            | Response::WatchEvents(_)
                    );
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
                protocol: AtomicU32::new(0),
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

    pub(crate) fn send(
        &self,
        req: Request,
    ) -> Result<(u64, mpsc::UnboundedReceiver<Response>), RuntimeError> {
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

    /// Sends a request that is not answered (a read's acknowledgement or
    /// cancel). A closed connection is no error here: nothing waits.
    pub(crate) fn notify(&self, req: Request) {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(bytes) = proto::encode(&Frame {
            id,
            body: Body::Request(req),
        }) {
            let _ = self.inner.tx.send(bytes);
        }
    }

    /// Stops routing replies of request `id` (late ones are dropped).
    pub(crate) fn forget(&self, id: u64) {
        if let Some(map) = self.inner.pending.lock().unwrap().as_mut() {
            map.remove(&id);
        }
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

    /// Interrupts the exec started with request id `target` without
    /// waiting for the agent's answer (its replies still reach its handle).
    pub fn request_cancel(&self, target: u64) {
        self.notify(Request::CancelExec { target });
    }

    /// Liveness: the agent answers with its shell's cwd (and its protocol
    /// version, which the client keeps).
    pub async fn ping(&self) -> Result<String, RuntimeError> {
        match self.call(Request::Ping).await? {
            Response::Pong {
                cwd,
                protocol_version,
            } => {
                self.inner
                    .protocol
                    .store(protocol_version, Ordering::Relaxed);
                Ok(cwd)
            }
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
        match self.fit(op).await? {
            Some(op) => FileReply::from_response(self.call(op.into_request()).await?),
            None => Ok(FileReply::Done),
        }
    }

    /// `op` as this agent takes it: before protocol 6 a stat with
    /// metadata is a plain stat (such an agent never wrote any), clearing
    /// metadata is nothing to do (`None`), and writing some is refused
    /// (an older agent would close the connection on the request).
    pub(crate) async fn fit(&self, op: FileOp) -> Result<Option<FileOp>, RuntimeError> {
        if !matches!(op, FileOp::StatMeta { .. } | FileOp::WriteMeta { .. })
            || self.protocol().await? >= proto::META_SINCE
        {
            return Ok(Some(op));
        }
        match op {
            FileOp::StatMeta { path, .. } => Ok(Some(FileOp::Stat { path })),
            FileOp::WriteMeta { meta, .. } if meta.is_empty() => Ok(None),
            _ => Err(RuntimeError::Unsupported(
                "file metadata in a sandbox started before this daemon version".into(),
                "agent",
            )),
        }
    }

    /// The agent's protocol version, asked once per connection.
    pub(crate) async fn protocol(&self) -> Result<u32, RuntimeError> {
        match self.inner.protocol.load(Ordering::Relaxed) {
            0 => {
                self.ping().await?;
                Ok(self.inner.protocol.load(Ordering::Relaxed))
            }
            v => Ok(v),
        }
    }

    /// Reads a regular file, at most `max_bytes`, as a stream. Answers once
    /// the agent's first reply is in, so a file that cannot be read (missing,
    /// a directory, not permitted) is an error here, before any content.
    pub async fn read_file(
        &self,
        path: String,
        max_bytes: Option<u64>,
    ) -> Result<FileStream, RuntimeError> {
        if self.protocol().await? < proto::STREAMED_READS_SINCE {
            // An agent from before streamed reads answers with the whole
            // file in one frame; it keeps doing so until its sandbox is
            // replaced.
            return match self.call(Request::ReadFile { path, max_bytes }).await? {
                Response::FileData {
                    path,
                    data,
                    truncated,
                } => Ok(FileStream::from_bytes(path, data, truncated)),
                other => Err(FileReply::from_response(other).err().unwrap_or_else(|| {
                    RuntimeError::Agent("unexpected reply to a file read".into())
                })),
            };
        }
        self.read_stream(path, max_bytes, false).await
    }

    /// A streamed read (protocol 2 on), as root when `root` (protocol 5).
    pub(crate) async fn read_stream(
        &self,
        path: String,
        max_bytes: Option<u64>,
        root: bool,
    ) -> Result<FileStream, RuntimeError> {
        let req = Request::ReadStream {
            path: path.clone(),
            max_bytes,
            window: READ_WINDOW,
        };
        let req = if root {
            Request::AsRoot(Box::new(req))
        } else {
            req
        };
        let (id, replies) = self.send(req)?;
        let mut read = AgentRead {
            client: self.clone(),
            id,
            replies,
            first: None,
            finished: false,
        };
        match read.replies.recv().await {
            Some(Response::Error { kind, message }) => {
                read.finished = true;
                Err(RuntimeError::File {
                    kind: kind.into(),
                    message,
                })
            }
            Some(first) => {
                read.first = Some(first);
                Ok(FileStream::from_agent(path, read))
            }
            None => {
                read.finished = true;
                Err(RuntimeError::Agent("agent connection closed".into()))
            }
        }
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

    /// Renames `from` to `to`. An agent from before protocol 4 would close
    /// the connection on the unknown request: it is refused here instead.
    pub async fn rename(&self, from: String, to: String) -> Result<(), RuntimeError> {
        if self.protocol().await? < proto::RENAME_SINCE {
            return Err(RuntimeError::Unsupported(
                "renaming files in a sandbox started before this daemon version".into(),
                "agent",
            ));
        }
        self.file(FileOp::Rename { from, to }).await?.into_done()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FileErrorKind;
    use proto::ErrorKind;
    use tokio::io::{DuplexStream, ReadHalf, WriteHalf};

    /// The agent's end of a connection, driven by the test.
    struct Script {
        rd: ReadHalf<DuplexStream>,
        wr: WriteHalf<DuplexStream>,
    }

    impl Script {
        async fn recv(&mut self) -> (u64, Request) {
            let mut prefix = [0u8; 4];
            self.rd.read_exact(&mut prefix).await.unwrap();
            let mut payload = vec![0u8; proto::frame_len(prefix).unwrap()];
            self.rd.read_exact(&mut payload).await.unwrap();
            match proto::decode(&payload).unwrap() {
                Frame {
                    id,
                    body: Body::Request(r),
                } => (id, r),
                other => panic!("the client sent a response: {other:?}"),
            }
        }

        async fn send(&mut self, id: u64, resp: Response) {
            let bytes = proto::encode(&Frame {
                id,
                body: Body::Response(resp),
            })
            .unwrap();
            self.wr.write_all(&bytes).await.unwrap();
        }

        /// Answers the ping a first read sends with `version`.
        async fn pong(&mut self, version: u32) {
            let (id, req) = self.recv().await;
            assert_eq!(req, Request::Ping);
            self.send(
                id,
                Response::Pong {
                    protocol_version: version,
                    cwd: "/".into(),
                },
            )
            .await;
        }
    }

    fn pair() -> (AgentClient, Script) {
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        let (rd, wr) = tokio::io::split(ours);
        let (srd, swr) = tokio::io::split(theirs);
        (
            AgentClient::from_halves(rd, wr),
            Script { rd: srd, wr: swr },
        )
    }

    #[tokio::test]
    async fn a_read_is_acknowledged_as_its_consumer_takes_chunks_and_cancelled_when_dropped() {
        let (client, mut agent) = pair();
        let c = client.clone();
        let reader = tokio::spawn(async move { c.read_file("/f".into(), Some(100)).await });
        agent.pong(proto::PROTOCOL_VERSION).await;
        let (id, req) = agent.recv().await;
        assert_eq!(
            req,
            Request::ReadStream {
                path: "/f".into(),
                max_bytes: Some(100),
                window: READ_WINDOW,
            }
        );
        for i in 0..READ_WINDOW {
            agent
                .send(
                    id,
                    Response::FileChunk {
                        data: vec![i as u8; 10],
                    },
                )
                .await;
        }
        let mut stream = reader.await.unwrap().unwrap();
        assert_eq!(stream.path(), "/f");
        assert_eq!(stream.next().await.unwrap().unwrap(), vec![0u8; 10]);
        // One chunk taken, one acknowledged: received chunks are not
        // acknowledged until their consumer takes them.
        assert_eq!(
            agent.recv().await.1,
            Request::ReadAck {
                target: id,
                chunks: 1
            }
        );
        drop(stream);
        assert_eq!(agent.recv().await.1, Request::CancelRead { target: id });
        // A late chunk of the cancelled read goes nowhere; the connection
        // serves on.
        agent
            .send(id, Response::FileChunk { data: vec![9; 10] })
            .await;
        let c = client.clone();
        let ping = tokio::spawn(async move { c.ping().await });
        agent.pong(proto::PROTOCOL_VERSION).await;
        ping.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn an_agent_before_protocol_5_is_never_sent_a_watch_or_an_as_root() {
        let (client, mut agent) = pair();
        let c = client.clone();
        let watch =
            tokio::spawn(
                async move { c.watch_dir("/w".into(), true, crate::FileUser::Root).await },
            );
        agent.pong(proto::WATCH_SINCE - 1).await;
        let e = watch.await.unwrap().unwrap_err();
        assert!(matches!(e, RuntimeError::Unsupported(..)), "{e:?}");
        let op = FileOp::Stat { path: "/".into() };
        let e = client.file_as(crate::FileUser::Root, op).await.unwrap_err();
        assert!(matches!(e, RuntimeError::Unsupported(..)), "{e:?}");
        // Nothing was sent for either: the next frame is this ping.
        let c = client.clone();
        let ping = tokio::spawn(async move { c.ping().await });
        agent.pong(proto::WATCH_SINCE - 1).await;
        ping.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_watch_is_acknowledged_per_batch_and_stopped_when_its_agent_says_so() {
        let (client, mut agent) = pair();
        let c = client.clone();
        let watch =
            tokio::spawn(
                async move { c.watch_dir("/w".into(), true, crate::FileUser::Root).await },
            );
        agent.pong(proto::PROTOCOL_VERSION).await;
        let (id, req) = agent.recv().await;
        assert_eq!(
            req,
            Request::WatchDir {
                path: "/w".into(),
                recursive: true,
                root: true,
                window: READ_WINDOW
            }
        );
        agent.send(id, Response::Watching).await;
        let mut w = watch.await.unwrap().unwrap();
        let ev = proto::WatchEvent {
            name: "a/b".into(),
            kind: proto::WatchEventKind::Create,
        };
        agent
            .send(id, Response::WatchEvents(vec![ev.clone()]))
            .await;
        assert_eq!(w.next().await.unwrap(), Some(vec![ev]));
        assert_eq!(
            agent.recv().await.1,
            Request::ReadAck {
                target: id,
                chunks: 1
            }
        );
        let stop = tokio::spawn(w.stop());
        assert_eq!(agent.recv().await.1, Request::CancelRead { target: id });
        assert!(!stop.is_finished());
        agent.send(id, Response::WatchEnded).await;
        stop.await.unwrap();

        // A watch that cannot start, and one that overflows: typed errors.
        let c = client.clone();
        let watch = tokio::spawn(async move {
            c.watch_dir("/x".into(), false, crate::FileUser::Sandbox)
                .await
        });
        let (id, _) = agent.recv().await;
        let message = "/x: not found".to_string();
        agent
            .send(
                id,
                Response::Error {
                    kind: ErrorKind::NotFound,
                    message,
                },
            )
            .await;
        let e = watch.await.unwrap().unwrap_err();
        assert!(
            matches!(
                e,
                RuntimeError::File {
                    kind: FileErrorKind::NotFound,
                    ..
                }
            ),
            "{e:?}"
        );
        let c = client.clone();
        let watch = tokio::spawn(async move {
            c.watch_dir("/y".into(), false, crate::FileUser::Sandbox)
                .await
        });
        let (id, _) = agent.recv().await;
        agent.send(id, Response::Watching).await;
        let mut w = watch.await.unwrap().unwrap();
        let message = "overflowed".to_string();
        agent
            .send(
                id,
                Response::Error {
                    kind: ErrorKind::NoSpace,
                    message,
                },
            )
            .await;
        let e = w.next().await.unwrap_err();
        assert!(
            matches!(
                e,
                RuntimeError::File {
                    kind: FileErrorKind::NoSpace,
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn a_read_ends_with_its_end_and_an_error_before_any_chunk_is_an_error() {
        let (client, mut agent) = pair();
        let c = client.clone();
        let reader = tokio::spawn(async move { c.read_file("/f".into(), None).await });
        agent.pong(proto::PROTOCOL_VERSION).await;
        let (id, _) = agent.recv().await;
        agent
            .send(
                id,
                Response::FileChunk {
                    data: b"ab".to_vec(),
                },
            )
            .await;
        agent
            .send(
                id,
                Response::FileEnd {
                    path: "/f".into(),
                    truncated: true,
                },
            )
            .await;
        let d = reader.await.unwrap().unwrap().read_all().await.unwrap();
        assert_eq!((&d.data[..], d.truncated), (&b"ab"[..], true));
        assert_eq!(
            agent.recv().await.1,
            Request::ReadAck {
                target: id,
                chunks: 1
            }
        );

        // The version is asked once per connection.
        let c = client.clone();
        let reader = tokio::spawn(async move { c.read_file("/missing".into(), None).await });
        let (id, req) = agent.recv().await;
        assert!(matches!(req, Request::ReadStream { .. }), "{req:?}");
        agent
            .send(
                id,
                Response::Error {
                    kind: ErrorKind::NotFound,
                    message: "/missing: gone".into(),
                },
            )
            .await;
        match reader.await.unwrap() {
            Err(RuntimeError::File { kind, .. }) => assert_eq!(kind, FileErrorKind::NotFound),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn an_agent_of_protocol_1_is_read_with_its_whole_file_request() {
        let (client, mut agent) = pair();
        let c = client.clone();
        let reader = tokio::spawn(async move { c.read_file("/f".into(), Some(7)).await });
        agent.pong(1).await;
        // Anything but ReadFile would make an old agent close the
        // connection: the sandbox would be lost.
        let (id, req) = agent.recv().await;
        assert_eq!(
            req,
            Request::ReadFile {
                path: "/f".into(),
                max_bytes: Some(7),
            }
        );
        agent
            .send(
                id,
                Response::FileData {
                    path: "/f".into(),
                    data: b"1234567".to_vec(),
                    truncated: true,
                },
            )
            .await;
        let d = reader.await.unwrap().unwrap().read_all().await.unwrap();
        assert_eq!((&d.data[..], d.truncated), (&b"1234567"[..], true));
    }
}
