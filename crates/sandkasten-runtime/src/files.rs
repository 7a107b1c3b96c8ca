//! File operations as the runtime boundary speaks them: a typed request
//! ([`FileOp`]), a typed answer ([`FileReply`]) and typed failures
//! ([`RuntimeError::File`] with a [`FileErrorKind`]). The agent's wire
//! messages are converted here and nowhere else, so the engine never sees
//! them.
//!
//! Reads are not a [`FileOp`]: a file is read as a [`FileStream`], its
//! content in chunks as the producer (an agent, or a blocking reader of a
//! workspace on the host) makes them, each producer waiting for the
//! consumer, so no layer ever holds a whole file however large it is and
//! however many reads run at once.

use crate::RuntimeError;
use sandkasten_protocol::{ErrorKind, Request, Response};
use std::io::Read;
use tokio::sync::mpsc;

pub use sandkasten_protocol::{DirEntry, FileStat, FileType};

/// One file operation inside a sandbox (or a workspace without one).
/// Paths are absolute in the root the operation is served in.
#[derive(Debug, Clone, PartialEq)]
pub enum FileOp {
    /// Write a whole file, creating missing parents; `mode` for a new file.
    Write {
        path: String,
        data: Vec<u8>,
        mode: Option<u32>,
    },
    ListDir {
        path: String,
    },
    /// Stat without following a final symlink.
    Stat {
        path: String,
    },
    Mkdir {
        path: String,
        parents: bool,
    },
    Remove {
        path: String,
        recursive: bool,
    },
    /// Rename `from` to `to`, creating `to`'s missing parents (agents of
    /// protocol 4 on).
    Rename {
        from: String,
        to: String,
    },
    /// Stat (a final symlink not followed) with the extended attributes
    /// under `prefix` (a `user.` name; agents of protocol 6 on: an older
    /// one keeps none, so it is asked for a plain stat).
    StatMeta {
        path: String,
        prefix: String,
    },
    /// Makes `meta` the whole set of `path`'s extended attributes under
    /// `prefix` (agents of protocol 6 on; an older one is refused unless
    /// `meta` is empty: it has nothing to clear).
    WriteMeta {
        path: String,
        prefix: String,
        meta: Vec<(String, String)>,
    },
}

/// A whole file read, collected from a [`FileStream`] (tests, small files).
#[derive(Debug, Clone, PartialEq)]
pub struct FileData {
    /// The absolute path that was read.
    pub path: String,
    pub data: Vec<u8>,
    /// The file goes on beyond `data`.
    pub truncated: bool,
}

/// The answer to a [`FileOp`].
#[derive(Debug, Clone, PartialEq)]
pub enum FileReply {
    Entries(Vec<DirEntry>),
    Stat(FileStat),
    /// A stat with the extended attributes asked for (prefix taken off).
    StatMeta(FileStat, Vec<(String, String)>),
    /// A write, mkdir or remove succeeded.
    Done,
}

/// Why a file operation failed (a property of the request or of the files,
/// not of the sandbox).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileErrorKind {
    NotFound,
    NotADirectory,
    IsADirectory,
    PermissionDenied,
    AlreadyExists,
    InvalidPath,
    DirectoryNotEmpty,
    /// The request itself is malformed (a NUL in a path, for one).
    InvalidRequest,
    /// The filesystem written to, or its quota, is full.
    NoSpace,
    /// The operation failed for another reason (an I/O error).
    Io,
}

impl From<ErrorKind> for FileErrorKind {
    fn from(k: ErrorKind) -> Self {
        match k {
            ErrorKind::NotFound => FileErrorKind::NotFound,
            ErrorKind::NotADirectory => FileErrorKind::NotADirectory,
            ErrorKind::IsADirectory => FileErrorKind::IsADirectory,
            ErrorKind::PermissionDenied => FileErrorKind::PermissionDenied,
            ErrorKind::AlreadyExists => FileErrorKind::AlreadyExists,
            ErrorKind::InvalidPath => FileErrorKind::InvalidPath,
            ErrorKind::DirectoryNotEmpty => FileErrorKind::DirectoryNotEmpty,
            ErrorKind::InvalidRequest => FileErrorKind::InvalidRequest,
            ErrorKind::NoSpace => FileErrorKind::NoSpace,
            ErrorKind::Io => FileErrorKind::Io,
            // Process errors never answer a file operation.
            ErrorKind::ProcessEnded | ErrorKind::StdinClosed => FileErrorKind::InvalidRequest,
        }
    }
}

impl FileOp {
    /// The agent's wire request for this operation.
    pub fn into_request(self) -> Request {
        match self {
            FileOp::Write { path, data, mode } => Request::WriteFile { path, data, mode },
            FileOp::ListDir { path } => Request::ListDir { path },
            FileOp::Stat { path } => Request::Stat { path },
            FileOp::Mkdir { path, parents } => Request::Mkdir { path, parents },
            FileOp::Remove { path, recursive } => Request::Remove { path, recursive },
            FileOp::Rename { from, to } => Request::Rename { from, to },
            FileOp::StatMeta { path, prefix } => Request::StatMeta { path, prefix },
            FileOp::WriteMeta { path, prefix, meta } => Request::WriteMeta { path, prefix, meta },
        }
    }
}

impl FileReply {
    /// Decodes the agent's (or the file service's) wire answer: a typed
    /// error becomes [`RuntimeError::File`]; a reply that answers no file
    /// operation is a protocol error.
    pub fn from_response(resp: Response) -> Result<FileReply, RuntimeError> {
        match resp {
            Response::Entries(e) => Ok(FileReply::Entries(e)),
            Response::Stat(s) => Ok(FileReply::Stat(s)),
            Response::StatMeta { stat, meta } => Ok(FileReply::StatMeta(stat, meta)),
            Response::Ok => Ok(FileReply::Done),
            Response::Error { kind, message } => Err(RuntimeError::File {
                kind: kind.into(),
                message,
            }),
            other => Err(RuntimeError::Agent(format!(
                "unexpected reply to a file operation: {other:?}"
            ))),
        }
    }

    fn mismatch(self, wanted: &str) -> RuntimeError {
        RuntimeError::Agent(format!("expected {wanted}, got {self:?}"))
    }

    /// The entries of a [`FileOp::ListDir`].
    pub fn into_entries(self) -> Result<Vec<DirEntry>, RuntimeError> {
        match self {
            FileReply::Entries(e) => Ok(e),
            other => Err(other.mismatch("directory entries")),
        }
    }

    /// The result of a [`FileOp::Stat`].
    pub fn into_stat(self) -> Result<FileStat, RuntimeError> {
        match self {
            FileReply::Stat(s) => Ok(s),
            other => Err(other.mismatch("a stat")),
        }
    }

    /// The result of a [`FileOp::StatMeta`] (a plain stat's: no metadata).
    pub fn into_stat_meta(self) -> Result<(FileStat, Vec<(String, String)>), RuntimeError> {
        match self {
            FileReply::StatMeta(s, m) => Ok((s, m)),
            FileReply::Stat(s) => Ok((s, Vec::new())),
            other => Err(other.mismatch("a stat")),
        }
    }

    /// The success of a write, mkdir or remove.
    pub fn into_done(self) -> Result<(), RuntimeError> {
        match self {
            FileReply::Done => Ok(()),
            other => Err(other.mismatch("an acknowledgement")),
        }
    }
}

/// Size of the chunks a [`FileStream`] of a blocking reader carries (the
/// agent's are its own, at most `sandkasten_protocol::READ_CHUNK_BYTES`).
pub const READ_CHUNK: usize = sandkasten_protocol::READ_CHUNK_BYTES;

/// Chunks in flight between a blocking reader and its consumer.
const READ_DEPTH: usize = 2;

/// One item a producer hands to a [`FileStream`].
pub(crate) enum Piece {
    Data(Vec<u8>),
    End { truncated: bool },
    Failed(RuntimeError),
}

/// Where a [`FileStream`]'s chunks come from.
enum Source {
    /// An agent's streamed reply, flow-controlled (see `agent_client.rs`).
    Agent(crate::agent_client::AgentRead),
    /// A producer on a blocking thread or another task, through a bounded
    /// channel.
    Channel(mpsc::Receiver<Piece>),
    /// Content already in memory (a protocol 1 agent's one-frame reply, or
    /// a test's), handed out once.
    Ready(Option<Vec<u8>>, bool),
}

/// A file being read: its path, then its content in chunks, in order, as
/// the producer makes them, then whether the file goes on beyond the cap.
/// The producer waits for the consumer ([`FileStream::next`]), so a stream
/// holds a few chunks at most. Dropping it stops the producer.
pub struct FileStream {
    path: String,
    source: Source,
    /// Known once the end was reached.
    truncated: Option<bool>,
    /// No more items (the end, or an error, was handed out).
    finished: bool,
}

impl std::fmt::Debug for FileStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStream")
            .field("path", &self.path)
            .field("truncated", &self.truncated)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl FileStream {
    fn new(path: String, source: Source) -> FileStream {
        FileStream {
            path,
            source,
            truncated: None,
            finished: false,
        }
    }

    pub(crate) fn from_agent(path: String, read: crate::agent_client::AgentRead) -> FileStream {
        FileStream::new(path, Source::Agent(read))
    }

    /// A stream of content already in memory.
    pub fn from_bytes(path: impl Into<String>, data: Vec<u8>, truncated: bool) -> FileStream {
        FileStream::new(path.into(), Source::Ready(Some(data), truncated))
    }

    /// A stream fed by a task: it sends chunks through the returned
    /// [`FileSender`] (waiting while the consumer is behind) and ends with
    /// [`FileSender::end`] or [`FileSender::fail`].
    pub fn channel(path: impl Into<String>) -> (FileSender, FileStream) {
        let (tx, rx) = mpsc::channel(READ_DEPTH);
        (
            FileSender { tx },
            FileStream::new(path.into(), Source::Channel(rx)),
        )
    }

    /// Streams an open file from a blocking thread, at most `max_bytes`,
    /// in chunks of [`READ_CHUNK`]. Reads to EOF rather than trusting the
    /// file's size.
    pub fn from_reader<R: Read + Send + 'static>(
        path: impl Into<String>,
        mut file: R,
        max_bytes: Option<u64>,
    ) -> FileStream {
        let (tx, rx) = mpsc::channel(READ_DEPTH);
        tokio::task::spawn_blocking(move || {
            let what = "reading a file";
            let mut remaining = max_bytes.unwrap_or(u64::MAX);
            let mut eof = false;
            while remaining > 0 {
                let want = remaining.min(READ_CHUNK as u64) as usize;
                let mut chunk = Vec::with_capacity(want);
                if let Err(e) = (&mut file).take(want as u64).read_to_end(&mut chunk) {
                    let _ = tx.blocking_send(Piece::Failed(RuntimeError::io(what, e)));
                    return;
                }
                let n = chunk.len();
                if n > 0 {
                    remaining -= n as u64;
                    if tx.blocking_send(Piece::Data(chunk)).is_err() {
                        // The consumer went away.
                        return;
                    }
                }
                if n < want {
                    eof = true;
                    break;
                }
            }
            let truncated = !eof && {
                let mut one = [0u8; 1];
                match file.read(&mut one) {
                    Ok(n) => n > 0,
                    Err(e) => {
                        let _ = tx.blocking_send(Piece::Failed(RuntimeError::io(what, e)));
                        return;
                    }
                }
            };
            let _ = tx.blocking_send(Piece::End { truncated });
        });
        FileStream::new(path.into(), Source::Channel(rx))
    }

    /// The absolute path being read.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The next chunk (never empty); `None` at the end, after which
    /// [`FileStream::truncated`] tells whether the file went on. An error
    /// is handed out once and ends the stream.
    pub async fn next(&mut self) -> Option<Result<Vec<u8>, RuntimeError>> {
        if self.finished {
            return None;
        }
        let piece = match &mut self.source {
            Source::Agent(read) => read.next().await,
            Source::Channel(rx) => rx.recv().await.unwrap_or_else(|| {
                Piece::Failed(RuntimeError::Task {
                    context: "reading a file",
                    message: "the reader ended without a result".into(),
                })
            }),
            Source::Ready(data, truncated) => match data.take() {
                Some(d) if !d.is_empty() => Piece::Data(d),
                _ => Piece::End {
                    truncated: *truncated,
                },
            },
        };
        match piece {
            Piece::Data(d) => Some(Ok(d)),
            Piece::End { truncated } => {
                self.truncated = Some(truncated);
                self.finished = true;
                None
            }
            Piece::Failed(e) => {
                self.finished = true;
                Some(Err(e))
            }
        }
    }

    /// Whether the file goes on beyond what was read: known once
    /// [`FileStream::next`] returned `None` (false before).
    pub fn truncated(&self) -> bool {
        self.truncated.unwrap_or(false)
    }

    /// Collects the whole content. Only for what is known to be small
    /// (tests): a stream exists so that files are not held whole.
    pub async fn read_all(mut self) -> Result<FileData, RuntimeError> {
        let mut data = Vec::new();
        while let Some(chunk) = self.next().await {
            data.extend_from_slice(&chunk?);
        }
        Ok(FileData {
            path: std::mem::take(&mut self.path),
            data,
            truncated: self.truncated(),
        })
    }
}

/// The producing end of [`FileStream::channel`].
pub struct FileSender {
    tx: mpsc::Sender<Piece>,
}

impl FileSender {
    /// Sends a chunk, waiting while the consumer is behind; `false` once
    /// the consumer is gone (stop producing). Empty chunks are skipped.
    pub async fn send(&self, data: Vec<u8>) -> bool {
        data.is_empty() || self.tx.send(Piece::Data(data)).await.is_ok()
    }

    /// Ends the stream.
    pub async fn end(self, truncated: bool) {
        let _ = self.tx.send(Piece::End { truncated }).await;
    }

    /// Ends the stream with an error.
    pub async fn fail(self, e: RuntimeError) {
        let _ = self.tx.send(Piece::Failed(e)).await;
    }

    /// Resolves once the consumer is gone.
    pub async fn closed(&self) {
        self.tx.closed().await
    }
}

/// Opens a file with `open` on the blocking pool and streams it (see
/// [`FileStream::from_reader`]); a file that cannot be opened is an error
/// here, before any content.
pub async fn read_blocking<R, F>(
    path: String,
    max_bytes: Option<u64>,
    open: F,
) -> Result<FileStream, RuntimeError>
where
    R: Read + Send + 'static,
    F: FnOnce() -> Result<R, RuntimeError> + Send + 'static,
{
    let file = crate::blocking("opening a file to read", open).await?;
    Ok(FileStream::from_reader(path, file, max_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_errors_become_typed_file_errors() {
        let e = FileReply::from_response(Response::Error {
            kind: ErrorKind::NotFound,
            message: "/x: gone".into(),
        })
        .unwrap_err();
        assert!(matches!(
            e,
            RuntimeError::File {
                kind: FileErrorKind::NotFound,
                ..
            }
        ));
        assert!(matches!(
            FileReply::from_response(Response::Pong {
                protocol_version: 1,
                cwd: "/".into()
            }),
            Err(RuntimeError::Agent(_))
        ));
    }

    #[test]
    fn typed_accessors_refuse_the_wrong_answer() {
        assert!(FileReply::Done.into_done().is_ok());
        assert!(FileReply::Done.into_entries().is_err());
        assert!(FileReply::Entries(vec![]).into_stat().is_err());
        let op = FileOp::Mkdir {
            path: "/a".into(),
            parents: true,
        };
        assert_eq!(
            op.into_request(),
            Request::Mkdir {
                path: "/a".into(),
                parents: true
            }
        );
    }

    async fn drain(mut s: FileStream) -> (Vec<usize>, Vec<u8>, Option<bool>) {
        let (mut sizes, mut data) = (Vec::new(), Vec::new());
        while let Some(c) = s.next().await {
            let c = c.unwrap();
            sizes.push(c.len());
            data.extend_from_slice(&c);
        }
        (sizes, data, s.truncated)
    }

    #[tokio::test]
    async fn a_reader_streams_in_chunks_up_to_the_cap() {
        let c = READ_CHUNK;
        let data: Vec<u8> = (0..=255u8).cycle().take(2 * c + 3).collect();
        let s = FileStream::from_reader("/f", std::io::Cursor::new(data.clone()), None);
        assert_eq!(s.path(), "/f");
        assert_eq!(drain(s).await, (vec![c, c, 3], data.clone(), Some(false)));
        let s = FileStream::from_reader("/f", std::io::Cursor::new(data.clone()), Some(c as u64));
        assert_eq!(drain(s).await, (vec![c], data[..c].to_vec(), Some(true)));
        let s = FileStream::from_reader(
            "/f",
            std::io::Cursor::new(data.clone()),
            Some(2 * c as u64 + 3),
        );
        assert_eq!(drain(s).await.2, Some(false));
        let s = FileStream::from_reader("/f", std::io::empty(), None);
        assert_eq!(drain(s).await, (vec![], vec![], Some(false)));
        let s = FileStream::from_bytes("/b", b"abc".to_vec(), true);
        assert_eq!(drain(s).await, (vec![3], b"abc".to_vec(), Some(true)));
        let all = FileStream::from_bytes("/b", vec![], false)
            .read_all()
            .await
            .unwrap();
        assert_eq!(
            (all.path.as_str(), all.data.len(), all.truncated),
            ("/b", 0, false)
        );
    }

    /// An endless file of zeros that counts what was read from it; its
    /// sender tells, by disconnecting, that the reader dropped it.
    struct Counting(
        std::sync::Arc<std::sync::atomic::AtomicU64>,
        #[allow(dead_code)] std::sync::mpsc::Sender<()>,
    );

    impl Read for Counting {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.0
                .fetch_add(buf.len() as u64, std::sync::atomic::Ordering::SeqCst);
            buf.fill(0);
            Ok(buf.len())
        }
    }

    #[tokio::test]
    async fn a_reader_waits_for_its_consumer_and_stops_when_it_goes_away() {
        let read = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (alive, ended) = std::sync::mpsc::channel::<()>();
        let mut s = FileStream::from_reader("/zero", Counting(read.clone(), alive), None);
        assert_eq!(s.next().await.unwrap().unwrap().len(), READ_CHUNK);
        drop(s);
        // The reader ends (its file dropped) at its next send.
        let gone = tokio::task::spawn_blocking(move || {
            ended.recv_timeout(std::time::Duration::from_secs(30))
        });
        assert_eq!(
            gone.await.unwrap(),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
        );
        // Of an endless file it read the consumed chunk, the chunks the
        // channel holds and the one it could not send: never more.
        let n = read.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            n <= ((READ_DEPTH + 2) * READ_CHUNK) as u64,
            "{n} bytes read for one consumed chunk"
        );
    }

    #[tokio::test]
    async fn a_channel_stream_ends_with_its_producer() {
        let (tx, s) = FileStream::channel("/c");
        tokio::spawn(async move {
            assert!(tx.send(b"ab".to_vec()).await);
            assert!(tx.send(vec![]).await);
            tx.end(true).await;
        });
        assert_eq!(drain(s).await, (vec![2], b"ab".to_vec(), Some(true)));
        let (tx, mut s) = FileStream::channel("/c");
        tokio::spawn(tx.fail(RuntimeError::NotFound("x".into())));
        assert!(matches!(
            s.next().await,
            Some(Err(RuntimeError::NotFound(_)))
        ));
        assert!(s.next().await.is_none());
        // A producer that vanishes is an error, not a clean end.
        let (tx, mut s) = FileStream::channel("/c");
        drop(tx);
        assert!(matches!(
            s.next().await,
            Some(Err(RuntimeError::Task { .. }))
        ));
    }
}
