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
//! This crate deliberately has no async runtime dependency: the agent is a
//! small static binary that uses blocking I/O and threads.

use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};
use std::path::PathBuf;

mod launch;
pub use launch::*;

/// Protocol version; the agent reports it in [`Response::Pong`].
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest frame either side accepts (bytes of encoded payload).
pub const MAX_FRAME_BYTES: usize = 128 * 1024 * 1024;

/// Largest file content one `FileData` reply carries: a frame less room for
/// everything but the data.
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
    /// Read a regular file (absolute path). Answered with `FileData`.
    ReadFile {
        path: String,
        max_bytes: Option<u64>,
    },
    /// Write a whole file, creating missing parent directories.
    /// Answered with `Ok`.
    WriteFile {
        path: String,
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
    Io,
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

/// Encodes a frame including its 4-byte length prefix.
pub fn encode(frame: &Frame) -> Result<Vec<u8>, CodecError> {
    let body = bincode::serialize(frame).map_err(|e| CodecError::Decode(e.to_string()))?;
    if body.len() > MAX_FRAME_BYTES {
        return Err(CodecError::TooLarge(body.len()));
    }
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
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
