//! File operations as the runtime boundary speaks them: a typed request
//! ([`FileOp`]), a typed answer ([`FileReply`]) and typed failures
//! ([`RuntimeError::File`] with a [`FileErrorKind`]). The agent's wire
//! messages are converted here and nowhere else, so the engine never sees
//! them.

use crate::RuntimeError;
use sandkasten_protocol::{ErrorKind, Request, Response};

pub use sandkasten_protocol::{DirEntry, FileStat, FileType};

/// One file operation inside a sandbox (or a workspace without one).
/// Paths are absolute in the root the operation is served in.
#[derive(Debug, Clone, PartialEq)]
pub enum FileOp {
    /// Read a regular file, at most `max_bytes`.
    Read {
        path: String,
        max_bytes: Option<u64>,
    },
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
}

/// What a file read returned.
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
    Data(FileData),
    Entries(Vec<DirEntry>),
    Stat(FileStat),
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
            ErrorKind::Io => FileErrorKind::Io,
        }
    }
}

impl FileOp {
    /// The agent's wire request for this operation.
    pub fn into_request(self) -> Request {
        match self {
            FileOp::Read { path, max_bytes } => Request::ReadFile { path, max_bytes },
            FileOp::Write { path, data, mode } => Request::WriteFile { path, data, mode },
            FileOp::ListDir { path } => Request::ListDir { path },
            FileOp::Stat { path } => Request::Stat { path },
            FileOp::Mkdir { path, parents } => Request::Mkdir { path, parents },
            FileOp::Remove { path, recursive } => Request::Remove { path, recursive },
        }
    }
}

impl FileReply {
    /// Decodes the agent's (or the file service's) wire answer: a typed
    /// error becomes [`RuntimeError::File`]; a reply that answers no file
    /// operation is a protocol error.
    pub fn from_response(resp: Response) -> Result<FileReply, RuntimeError> {
        match resp {
            Response::FileData {
                path,
                data,
                truncated,
            } => Ok(FileReply::Data(FileData {
                path,
                data,
                truncated,
            })),
            Response::Entries(e) => Ok(FileReply::Entries(e)),
            Response::Stat(s) => Ok(FileReply::Stat(s)),
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

    /// The data of a [`FileOp::Read`].
    pub fn into_data(self) -> Result<FileData, RuntimeError> {
        match self {
            FileReply::Data(d) => Ok(d),
            other => Err(other.mismatch("file data")),
        }
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

    /// The success of a write, mkdir or remove.
    pub fn into_done(self) -> Result<(), RuntimeError> {
        match self {
            FileReply::Done => Ok(()),
            other => Err(other.mismatch("an acknowledgement")),
        }
    }
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
        assert!(FileReply::Done.into_data().is_err());
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
}
