//! Wire types and framing for the daemon <-> agent channel, plus the launch
//! spec the daemon hands to `sandkasten-agent init`.
//!
//! The channel is a Unix stream socket. Every message is one frame:
//! a 4-byte big-endian length `N`, then `N` bytes of bincode-encoded
//! [`Frame`]. Frames carry a request id chosen by the daemon; the agent tags
//! every reply with the id of the request it answers, so many requests are
//! in flight at once (a file read never waits behind a long exec). Byte
//! payloads are raw `Vec<u8>`, so the channel is binary-safe.
//!
//! # Versions
//!
//! The daemon and the agent ship together, but a sandbox started before an
//! upgrade keeps its old agent, which closes the connection on a frame it
//! cannot decode (and a closed connection is a lost sandbox). So variants
//! are only ever appended, and the daemon sends a request of a newer
//! protocol only to an agent whose [`Response::Pong`] reported that
//! version. Protocol 2 added streamed reads ([`Request::ReadStream`]);
//! a protocol 1 agent is read with [`Request::ReadFile`]. Protocol 3 added
//! [`Request::OpenPort`] (a connection to a TCP port inside the sandbox).
//! Protocol 4 added processes ([`Request::ProcStart`] and the `Proc*`
//! requests after it; see "Processes") and
//! [`Request::Rename`]. Protocol 5 added directory watches
//! ([`Request::WatchDir`]; see "Watches") and file operations as root
//! ([`Request::AsRoot`]). Protocol 6 added a file's extended attributes
//! ([`Request::StatMeta`], [`Request::WriteMeta`]).
//!
//! # Processes
//!
//! Besides the persistent shell, the agent runs background processes
//! ([`ProcSpec`]): argv, env, cwd, root or the sandbox user, an optional
//! PTY, stdin open or `/dev/null`, an optional tag. Each is its own session
//! and process group; it outlives the connection that started it. Its
//! output (stdout and stderr apart, or the PTY's one stream) is kept in
//! order up to [`PROC_OUTPUT_KEEP_BYTES`] (the oldest dropped beyond it)
//! so a later attach replays it, then follows live. An attached stream
//! ([`Request::ProcStart`] with `attach`, or [`Request::ProcAttach`]) is
//! answered with [`Response::ProcAttached`], then [`Response::ProcOutput`]
//! frames under the same credits as a streamed read (acknowledged with
//! [`Request::ReadAck`], ended early with [`Request::CancelRead`]), then
//! exactly one [`Response::ProcEnded`] once the process has exited and its
//! output is drained. A process never waits for a slow stream beyond what
//! is kept: while an attached stream is more than the kept bytes behind,
//! the agent stops reading the process's output (it then blocks on its
//! full pipe, as with any slow reader), so an attached client loses
//! nothing. Ended processes are listed until [`PROC_ENDED_KEPT`] newer ones
//! have ended.
//!
//! # Watches
//!
//! [`Request::WatchDir`] watches a directory (and, when `recursive`, every
//! directory below it, including ones made later) with inotify: an event,
//! never a poll. The agent answers [`Response::Watching`], then
//! [`Response::WatchEvents`] batches (names relative to the watched
//! directory) under the credits of a streamed read ([`Request::ReadAck`]
//! per batch, [`Request::CancelRead`] to stop), and ends the stream with
//! [`Response::WatchEnded`] when the directory itself is removed or
//! moved or the daemon cancelled it (its place among the agent's watches
//! is free by then), or with `Error` (`NoSpace`) when the kernel's event queue
//! overflowed or a limit was reached. While the daemon holds its credits
//! the events wait in the kernel's queue (bounded by the kernel), so the
//! agent holds at most one batch per watch. An agent runs at most
//! [`MAX_WATCHES`] watches at once, each its own inotify instance (made by
//! the agent inside the sandbox, so charged to the sandbox's user), with
//! at most [`MAX_WATCHED_DIRS`] directories; more is `NoSpace`, as
//! inotify's own limits are.
//!
//! # Port pipes
//!
//! [`Request::OpenPort`] is sent as the first frame of a connection of its
//! own. The agent connects to the port inside the sandbox and answers one
//! frame: `Ok`, or `Error` (`NotFound`: nothing listens there). After an
//! `Ok` the connection carries no more frames: it is a byte pipe to that
//! TCP connection, each direction closed when the other side closes it.
//!
//! # Streamed reads
//!
//! A file is read in chunks of at most [`READ_CHUNK_BYTES`], each its own
//! frame, under credit-based flow control: the agent sends a read's next
//! chunk only while fewer than its `window` chunks are unacknowledged
//! ([`Request::ReadAck`]), so a slow consumer holds the read, not the
//! connection, and neither side ever holds more than `window` chunks of
//! one read. The agent also bounds the chunk buffers of all its reads
//! together.
//!
//! This crate deliberately has no async runtime dependency: the agent is a
//! small static binary that uses blocking I/O and threads.

use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};
use std::path::PathBuf;

mod launch;
pub use launch::*;

/// Protocol version; the agent reports it in [`Response::Pong`].
pub const PROTOCOL_VERSION: u32 = 6;

/// The first protocol with [`Request::ReadStream`].
pub const STREAMED_READS_SINCE: u32 = 2;

/// The first protocol with [`Request::OpenPort`].
pub const PORTS_SINCE: u32 = 3;

/// The first protocol with processes ([`Request::ProcStart`]).
pub const PROCESSES_SINCE: u32 = 4;

/// Output of one process kept for a later attach (bytes).
pub const PROC_OUTPUT_KEEP_BYTES: usize = 1024 * 1024;

/// Ended processes the agent still lists (the oldest forgotten first).
pub const PROC_ENDED_KEPT: usize = 64;

/// The first protocol with [`Request::Rename`].
pub const RENAME_SINCE: u32 = 4;

/// The first protocol with [`Request::WatchDir`] and [`Request::AsRoot`].
pub const WATCH_SINCE: u32 = 5;

/// The first protocol with [`Request::StatMeta`] and [`Request::WriteMeta`].
pub const META_SINCE: u32 = 6;

/// Longest extended attribute name (`XATTR_NAME_MAX`), prefix included.
pub const MAX_XATTR_NAME: usize = 255;

/// Most bytes of names and values one [`Request::WriteMeta`] stores.
pub const MAX_META_BYTES: usize = 4096;

/// Why `meta` (names without `prefix`) cannot be one
/// [`Request::WriteMeta`]: a name empty, with a NUL, or too long for
/// [`MAX_XATTR_NAME`] with the prefix; more than [`MAX_META_BYTES`] of
/// prefixed names and values. `None`: it can.
pub fn meta_problem(prefix: &str, meta: &[(String, String)]) -> Option<String> {
    let max_key = MAX_XATTR_NAME.saturating_sub(prefix.len());
    if let Some((k, _)) = meta
        .iter()
        .find(|(k, _)| k.is_empty() || k.contains('\0') || k.len() > max_key)
    {
        return Some(format!(
            "metadata key {k:?}: 1 to {max_key} bytes, without NUL"
        ));
    }
    let total: usize = meta
        .iter()
        .map(|(k, v)| prefix.len() + k.len() + v.len())
        .sum();
    (total > MAX_META_BYTES).then(|| {
        format!(
            "metadata of {total} bytes (keys with the {prefix:?} prefix, and values): \
             at most {MAX_META_BYTES}"
        )
    })
}

/// Watches one agent (one sandbox) runs at once.
pub const MAX_WATCHES: usize = 16;

/// Directories one recursive watch covers at most.
pub const MAX_WATCHED_DIRS: usize = 4096;

/// Pseudo-terminals one native sandbox may hold at once (its devpts
/// instance's `max=`): the shell's, the running exec's, and those of
/// processes started with a terminal.
pub const PTYS_PER_SANDBOX: u64 = 64;

/// Largest chunk of a streamed read ([`Response::FileChunk`]).
pub const READ_CHUNK_BYTES: usize = 256 * 1024;

/// Largest `window` of a [`Request::ReadStream`] the agent grants (a larger
/// one is capped).
pub const MAX_READ_WINDOW: u32 = 16;

/// Largest frame either side accepts (bytes of encoded payload).
pub const MAX_FRAME_BYTES: usize = 128 * 1024 * 1024;

/// Largest file content one `FileData` reply (protocol 1) carries: a frame
/// less room for everything but the data.
pub const MAX_FILE_DATA_BYTES: u64 = MAX_FRAME_BYTES as u64 - 64 * 1024;

/// One message on the channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Frame {
    /// Request id. Replies carry the id of the request they answer.
    pub id: u64,
    pub body: Body,
}

/// Direction-tagged payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Body {
    Request(Request),
    Response(Response),
}

/// Daemon -> agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Liveness check; answered with [`Response::Pong`].
    Ping,
    /// Run `cmd` in the persistent shell. Answered with zero or more
    /// [`Response::ExecOutput`] and exactly one [`Response::ExecDone`].
    Exec {
        cmd: String,
        timeout_ms: u64,
        /// Output beyond this many bytes is not sent; `truncated` is set.
        max_output_bytes: u64,
    },
    /// Interrupt the exec started by request `target` as if it timed out
    /// (used when the HTTP client disconnects). Answered with `Ok`.
    CancelExec { target: u64 },
    /// Read a regular file (absolute path) whole. Answered with `FileData`.
    /// Protocol 1 only: the daemon sends it to agents that reported
    /// protocol 1, and an agent of protocol 2 refuses it (`InvalidRequest`),
    /// since one frame would hold the whole file.
    ReadFile {
        path: String,
        max_bytes: Option<u64>,
    },
    /// Write a whole file, creating missing parent directories.
    /// Answered with `Ok`.
    WriteFile {
        path: String,
        #[serde(with = "bytes")]
        data: Vec<u8>,
        /// Permission bits for a newly created file (default 0o644).
        mode: Option<u32>,
    },
    /// List a directory. Answered with `Entries`.
    ListDir { path: String },
    /// Stat a path without following a final symlink. Answered with `Stat`.
    Stat { path: String },
    /// Create a directory (and parents when `parents`). Answered with `Ok`.
    Mkdir { path: String, parents: bool },
    /// Remove a file, symlink or (when `recursive`) a directory tree.
    /// Answered with `Ok`.
    Remove { path: String, recursive: bool },
    /// Adds (or replaces) variables of the shell's environment for every
    /// shell started from now on (after `exit` or a timeout). The running
    /// shell is not changed: export them in it too. Answered with `Ok`.
    SetEnv { env: Vec<(String, String)> },
    /// Streams a regular file (absolute path), at most `max_bytes`
    /// (protocol 2). Answered with zero or more [`Response::FileChunk`],
    /// then exactly one [`Response::FileEnd`] or `Error` (an error comes
    /// before any chunk when the file cannot be opened). The agent sends
    /// a chunk only while fewer than `window` (at most [`MAX_READ_WINDOW`],
    /// at least 1) of this read's chunks are unacknowledged.
    ReadStream {
        path: String,
        max_bytes: Option<u64>,
        window: u32,
    },
    /// The daemon has consumed `chunks` more chunks of the read started by
    /// request `target`. Not answered.
    ReadAck { target: u64, chunks: u32 },
    /// Ends the read started by request `target` early (its consumer went
    /// away): nothing more is sent for it. Not answered.
    CancelRead { target: u64 },
    /// Connect to TCP `port` on the sandbox's loopback (127.0.0.1, else
    /// ::1) and turn this connection into a byte pipe to it (protocol 3;
    /// see "Port pipes"). Answered with `Ok` or `Error` (`NotFound` when
    /// nothing listens).
    OpenPort { port: u16 },
    /// Starts a background process (protocol 4). Answered with
    /// [`Response::ProcStarted`]; with `attach`, the reply is an attached
    /// stream instead (see "Processes"), `window` as for a read.
    ProcStart {
        spec: ProcSpec,
        attach: bool,
        window: u32,
    },
    /// Attaches to a process: its kept output first when `replay`, then
    /// live, then its end (see "Processes"). `Error` `NotFound` when there
    /// is no such process.
    ProcAttach {
        proc: ProcRef,
        replay: bool,
        window: u32,
    },
    /// Answered with [`Response::Procs`]: running and recently ended
    /// processes, oldest first.
    ProcList,
    /// Writes to a process's stdin (or its PTY). Answered with `Ok` once
    /// written (it waits while the process does not read).
    ProcInput {
        proc: ProcRef,
        #[serde(with = "bytes")]
        data: Vec<u8>,
    },
    /// Closes a process's stdin (on a PTY: sends EOF, Ctrl-D). `Ok`.
    ProcCloseStdin { proc: ProcRef },
    /// Sends `signal` to the process's group. `Ok`.
    ProcSignal { proc: ProcRef, signal: i32 },
    /// Sets a PTY process's window size (the kernel tells the foreground
    /// job with SIGWINCH). `Ok`.
    ProcResize { proc: ProcRef, size: PtySize },
    /// Rename `from` to `to` (absolute paths; protocol 4), replacing a
    /// file or empty directory at `to` and creating `to`'s missing
    /// parents. Answered with `Ok`.
    Rename { from: String, to: String },
    /// Watches directory `path` (absolute; protocol 5; see "Watches"),
    /// the directories below it too when `recursive`, with the rights of
    /// root when `root` (else the sandbox user's: the directory must be
    /// readable by them). `window` as for a read.
    WatchDir {
        path: String,
        recursive: bool,
        root: bool,
        window: u32,
    },
    /// A file operation (`WriteFile`, `ListDir`, `Stat`, `Mkdir`,
    /// `Remove`, `Rename`, `ReadStream`) with the rights of the sandbox's
    /// root instead of the sandbox user's (protocol 5); answered as the
    /// operation is. Any other request inside is `InvalidRequest`.
    AsRoot(Box<Request>),
    /// Stats `path` as [`Request::Stat`] does, with its extended
    /// attributes whose names start with `prefix` (a `user.` name; the
    /// prefix taken off), read from the file itself (a final symlink,
    /// which has none of its own, is not followed); none where the
    /// filesystem keeps none (protocol 6). Answered with `StatMeta`.
    StatMeta { path: String, prefix: String },
    /// Makes `meta` (names without `prefix`) the whole set of `path`'s
    /// extended attributes under `prefix` (a `user.` name): the others
    /// under it are removed (protocol 6). A final symlink is followed,
    /// inside the root, as a write follows it. At most
    /// [`MAX_META_BYTES`] of prefixed names and values. Answered with `Ok`.
    WriteMeta {
        path: String,
        prefix: String,
        meta: Vec<(String, String)>,
    },
}

/// What happened to an entry of a watched directory (E2B's event types,
/// as fsnotify names them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WatchEventKind {
    /// Created, or moved in.
    Create,
    /// Its content changed.
    Write,
    /// Deleted.
    Remove,
    /// Moved away (its new name, if still below, comes as `Create`).
    Rename,
    /// Its metadata changed (mode, owner, times).
    Chmod,
}

/// One event of a watch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchEvent {
    /// The entry's path relative to the watched directory (`a/b` below
    /// it in a recursive watch).
    pub name: String,
    pub kind: WatchEventKind,
}

/// How a background process starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcSpec {
    /// Program and arguments; a program without `/` is looked up in the
    /// environment's `PATH`.
    pub argv: Vec<String>,
    /// Over the shell's environment.
    pub env: Vec<(String, String)>,
    /// Working directory; `None`: the sandbox's workdir.
    pub cwd: Option<String>,
    /// Runs as root (of the sandbox) instead of the sandbox user.
    pub root: bool,
    /// A PTY of this size; `None`: pipes (stdout and stderr apart).
    pub pty: Option<PtySize>,
    /// Keeps stdin open for [`Request::ProcInput`]; else `/dev/null`.
    pub stdin: bool,
    /// A name to find it by; unique among running processes.
    pub tag: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtySize {
    pub rows: u16,
    pub cols: u16,
}

/// A process, by its pid (in the sandbox) or its tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProcRef {
    Pid(u32),
    Tag(String),
}

/// Which output of a process a chunk is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProcStream {
    Stdout,
    Stderr,
    /// A PTY's output: stdout and stderr as one stream.
    Pty,
}

/// What a process is and how far it got.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcInfo {
    pub pid: u32,
    pub tag: Option<String>,
    pub argv: Vec<String>,
    pub cwd: String,
    pub root: bool,
    pub pty: Option<PtySize>,
    /// Stdin is open for input.
    pub stdin: bool,
    /// Unix milliseconds.
    pub started_ms: i64,
    /// `None` while it runs.
    pub end: Option<ProcEnd>,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcEnd {
    /// The exit status, or 128 + N for death by signal N (as a shell
    /// reports it).
    pub exit_code: i32,
    /// The signal that ended it.
    pub signal: Option<i32>,
}

/// Agent -> daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    Pong {
        protocol_version: u32,
        /// Current working directory of the persistent shell.
        cwd: String,
    },
    /// A chunk of interleaved stdout/stderr of a running exec, in order.
    ExecOutput {
        #[serde(with = "bytes")]
        data: Vec<u8>,
    },
    /// The exec finished (or timed out / was cancelled).
    ExecDone {
        exit_code: i32,
        cwd: String,
        timed_out: bool,
        truncated: bool,
        duration_ms: u64,
    },
    FileData {
        /// Absolute path that was read.
        path: String,
        #[serde(with = "bytes")]
        data: Vec<u8>,
        truncated: bool,
    },
    Entries(Vec<DirEntry>),
    Stat(FileStat),
    Ok,
    Error {
        kind: ErrorKind,
        message: String,
    },
    /// The next piece of a streamed read (never empty).
    FileChunk {
        #[serde(with = "bytes")]
        data: Vec<u8>,
    },
    /// A streamed read ended.
    FileEnd {
        /// Absolute path that was read.
        path: String,
        /// The file goes on beyond what was sent (`max_bytes`).
        truncated: bool,
    },
    /// A process started (the answer to an unattached `ProcStart`).
    ProcStarted(ProcInfo),
    /// The first reply of an attached stream: the process as it is.
    ProcAttached(ProcInfo),
    /// A chunk of a process's output (never empty).
    ProcOutput {
        stream: ProcStream,
        #[serde(with = "bytes")]
        data: Vec<u8>,
    },
    /// The process ended and its output was all sent: the stream's last
    /// reply.
    ProcEnded(ProcEnd),
    Procs(Vec<ProcInfo>),
    /// The first reply of a watch: it is in place.
    Watching,
    /// Events of a watch, in order (never empty).
    WatchEvents(Vec<WatchEvent>),
    /// The watched directory was removed or moved, or the watch was
    /// cancelled: the watch's last reply.
    WatchEnded,
    /// The answer to [`Request::StatMeta`]: the stat and the attributes
    /// under the prefix (the prefix taken off), sorted by name; values
    /// that are not UTF-8 are left out.
    StatMeta {
        stat: FileStat,
        meta: Vec<(String, String)>,
    },
}

/// Typed failure of an agent operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    NotFound,
    NotADirectory,
    IsADirectory,
    PermissionDenied,
    AlreadyExists,
    InvalidPath,
    DirectoryNotEmpty,
    /// The request is malformed (e.g. NUL in a command).
    InvalidRequest,
    /// The filesystem written to, or its quota, is full (`ENOSPC`,
    /// `EDQUOT`): a workspace's quota, a sandbox's disk limit, or the
    /// host's disk; for a watch (as for inotify, whose limits are
    /// `ENOSPC` too): a watch limit reached or the event queue overflowed;
    /// for a process start: the sandbox's pids, terminals or descriptors.
    NoSpace,
    Io,
    /// The process has ended (stdin, a signal or a resize came too late).
    ProcessEnded,
    /// The process's stdin is closed or was never open.
    StdinClosed,
}

/// The type of a directory entry or stat result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileType {
    File,
    Dir,
    Symlink,
    Other,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DirEntry {
    pub name: String,
    pub file_type: FileType,
    pub size: u64,
    pub mode: u32,
    /// Seconds since the Unix epoch.
    pub mtime: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileStat {
    pub path: String,
    pub file_type: FileType,
    pub size: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    /// Target of a symlink.
    pub link_target: Option<String>,
}

/// Configuration of the agent's persistent shell and file operations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentConfig {
    /// uid/gid commands and file operations run as (inside the sandbox).
    /// `None` keeps the agent's own identity (used by the unsandboxed
    /// `serve` mode in tests).
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Initial working directory of the shell; relative paths resolve here.
    pub workdir: String,
    /// Environment of the shell (the agent's own environment is not passed).
    pub env: Vec<(String, String)>,
    /// Home directory (also exported as HOME).
    pub home: String,
    /// The directory file operations are rooted at (absolute request
    /// paths resolve inside it and never leave it); `None`: `/`. A helper
    /// that serves a workspace without a session roots them at the
    /// workspace.
    #[serde(default)]
    pub files_root: Option<String>,
    /// RLIMIT_NPROC of the shell and everything it starts; `None`: left
    /// as inherited. Set where the sandbox's pids limit cannot be a host
    /// cgroup limit alone (gVisor: its kernel's own host threads count
    /// there, and it fails as a whole when that limit is reached).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nproc_limit: Option<u64>,
}

/// Byte payloads as serde bytes, not as a sequence of `u8`: bincode
/// writes both as a `u64` length and the raw bytes (so agents of every
/// protocol version read them alike), but a sequence is encoded and
/// decoded one element at a time, bytes with one copy.
mod bytes {
    use serde::{de, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(data: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(data)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
                while let Some(b) = seq.next_element()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_byte_buf(Visitor)
    }
}

/// Errors of the frame codec.
#[derive(Debug)]
pub enum CodecError {
    Io(io::Error),
    TooLarge(usize),
    Decode(String),
}

impl std::fmt::Display for CodecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CodecError::Io(e) => write!(f, "agent channel i/o: {e}"),
            CodecError::TooLarge(n) => write!(f, "frame of {n} bytes exceeds the limit"),
            CodecError::Decode(e) => write!(f, "undecodable frame: {e}"),
        }
    }
}

impl std::error::Error for CodecError {}

impl From<io::Error> for CodecError {
    fn from(e: io::Error) -> Self {
        CodecError::Io(e)
    }
}

/// Encodes a frame including its 4-byte length prefix, in one buffer of
/// exactly its size (a chunk of a read is copied once, not twice).
pub fn encode(frame: &Frame) -> Result<Vec<u8>, CodecError> {
    let n = bincode::serialized_size(frame).map_err(|e| CodecError::Decode(e.to_string()))?;
    let n = usize::try_from(n).unwrap_or(usize::MAX);
    if n > MAX_FRAME_BYTES {
        return Err(CodecError::TooLarge(n));
    }
    let mut out = Vec::with_capacity(n + 4);
    out.extend_from_slice(&(n as u32).to_be_bytes());
    bincode::serialize_into(&mut out, frame).map_err(|e| CodecError::Decode(e.to_string()))?;
    Ok(out)
}

/// Decodes a frame payload (without the length prefix).
pub fn decode(payload: &[u8]) -> Result<Frame, CodecError> {
    bincode::deserialize(payload).map_err(|e| CodecError::Decode(e.to_string()))
}

/// Parses a length prefix, checking it against [`MAX_FRAME_BYTES`].
pub fn frame_len(prefix: [u8; 4]) -> Result<usize, CodecError> {
    let n = u32::from_be_bytes(prefix) as usize;
    if n > MAX_FRAME_BYTES {
        return Err(CodecError::TooLarge(n));
    }
    Ok(n)
}

/// Blocking write of one frame.
pub fn write_frame<W: Write>(w: &mut W, frame: &Frame) -> Result<(), CodecError> {
    let bytes = encode(frame)?;
    w.write_all(&bytes)?;
    w.flush()?;
    Ok(())
}

/// Blocking read of one frame. `Ok(None)` on a clean EOF between frames.
pub fn read_frame<R: Read>(r: &mut R) -> Result<Option<Frame>, CodecError> {
    let mut prefix = [0u8; 4];
    match r.read_exact(&mut prefix) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let n = frame_len(prefix)?;
    let mut payload = vec![0u8; n];
    r.read_exact(&mut payload)?;
    decode(&payload).map(Some)
}

/// Path of the agent socket inside a session directory.
pub fn socket_path(session_dir: &std::path::Path) -> PathBuf {
    session_dir.join("agent.sock")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_roundtrip_is_binary_exact() {
        let data: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
        let f = Frame {
            id: 7,
            body: Body::Request(Request::WriteFile {
                path: "/workspace/x.bin".into(),
                data: data.clone(),
                mode: None,
            }),
        };
        let mut buf = Vec::new();
        write_frame(&mut buf, &f).unwrap();
        let mut cur = io::Cursor::new(buf);
        let back = read_frame(&mut cur).unwrap().unwrap();
        assert_eq!(back, f);
        assert!(read_frame(&mut cur).unwrap().is_none());
    }

    #[test]
    fn variants_of_protocol_1_keep_their_encoding() {
        // An agent of protocol 1 decodes what a newer daemon sends it only
        // if the variants it knows keep their indices: new ones are
        // appended. bincode 1 writes a variant as its u32 index.
        let ping = encode(&Frame {
            id: 1,
            body: Body::Request(Request::Ping),
        })
        .unwrap();
        assert_eq!(
            &ping[4..],
            &[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        let read = encode(&Frame {
            id: 2,
            body: Body::Request(Request::ReadFile {
                path: "/a".into(),
                max_bytes: None,
            }),
        })
        .unwrap();
        // id, Body::Request (0), ReadFile (3), then the path.
        assert_eq!(
            &read[4..20],
            &[2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0]
        );
        let data = encode(&Frame {
            id: 2,
            body: Body::Response(Response::FileData {
                path: "/a".into(),
                data: vec![],
                truncated: false,
            }),
        })
        .unwrap();
        // Body::Response (1), FileData (3).
        assert_eq!(&data[12..20], &[1, 0, 0, 0, 3, 0, 0, 0]);
    }

    #[test]
    fn byte_payloads_are_encoded_as_a_sequence_of_u8_was() {
        // What protocol 1 agents encoded and decode: Vec<u8> as a seq.
        #[derive(Serialize)]
        struct Plain {
            data: Vec<u8>,
        }
        let data: Vec<u8> = (0..=255u8).collect();
        let ours = bincode::serialize(&Response::ExecOutput { data: data.clone() }).unwrap();
        let plain = bincode::serialize(&Plain { data: data.clone() }).unwrap();
        // ExecOutput is variant 1: its index, then the field.
        assert_eq!(&ours[..4], &[1, 0, 0, 0]);
        assert_eq!(&ours[4..], &plain[..]);
        let back: Response = bincode::deserialize(&ours).unwrap();
        assert_eq!(back, Response::ExecOutput { data });
    }

    #[test]
    fn a_frame_is_encoded_in_one_buffer_of_its_size() {
        let f = Frame {
            id: 9,
            body: Body::Response(Response::FileChunk {
                data: vec![5; READ_CHUNK_BYTES],
            }),
        };
        let bytes = encode(&f).unwrap();
        assert_eq!(bytes.len(), bytes.capacity());
        let n = frame_len(bytes[..4].try_into().unwrap()).unwrap();
        assert_eq!(n + 4, bytes.len());
        assert_eq!(decode(&bytes[4..]).unwrap(), f);
    }

    #[test]
    fn oversized_prefix_is_refused() {
        let prefix = ((MAX_FRAME_BYTES + 1) as u32).to_be_bytes();
        assert!(matches!(frame_len(prefix), Err(CodecError::TooLarge(_))));
    }

    #[test]
    fn truncated_frame_is_an_error() {
        let f = Frame {
            id: 1,
            body: Body::Request(Request::Ping),
        };
        let mut bytes = encode(&f).unwrap();
        bytes.pop();
        let mut cur = io::Cursor::new(bytes);
        assert!(read_frame(&mut cur).is_err());
    }
}
