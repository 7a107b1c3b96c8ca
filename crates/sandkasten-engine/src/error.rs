//! The engine's errors, one enum per domain (sessions, workspaces, files,
//! images), joined in [`EngineError`] with `#[from]` (the pool's own
//! `PoolError` never reaches a client: a create the pool cannot serve goes
//! cold). Each
//! variant says what a client should make of it; the API maps them to
//! status codes in one table.

use crate::SessionState;
use sandkasten_runtime::{FileErrorKind, ProcErrorKind, RuntimeError};
use sandkasten_store::StoreError;

/// Failures of session operations.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("session {0} not found")]
    NotFound(String),
    #[error("session {id} is {}, not running", state.as_str())]
    NotRunning { id: String, state: SessionState },
    #[error("session {id} is {}, not paused", state.as_str())]
    NotPaused { id: String, state: SessionState },
    #[error("session limit of {0} reached")]
    CapacityExhausted(usize),
    /// The runtime has no room for another sandbox (native: all host uid
    /// ranges taken); passes when a session ends.
    #[error("{0}")]
    RuntimeCapacity(String),
    #[error("the daemon is shutting down")]
    ShuttingDown,
    /// The sandbox's agent stopped answering or its connection closed
    /// during an operation.
    #[error("the sandbox agent: {0}")]
    AgentLost(String),
    /// The session's sandbox died (its PID 1 ended) during the call: the
    /// session is gone, marked `lost`.
    #[error("session {0} is lost: its sandbox ended during the request")]
    Lost(String),
}

/// What holds a workspace that an operation needs free.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// A live session mounts it.
    Session(String),
    /// It is being deleted, restored or imported.
    Changing,
    /// It is being created, exported or mounted by a create in flight.
    Busy,
    /// The backend still sees it mounted (a sandbox that just ended has not
    /// released it yet).
    StillMounted,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Holder::Session(s) => write!(f, "mounted by session {s}"),
            Holder::Changing => f.write_str("being deleted, restored or imported"),
            Holder::Busy => f.write_str("being created, exported or mounted"),
            Holder::StillMounted => f.write_str("still mounted"),
        }
    }
}

/// Failures of workspace operations.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("workspaces are disabled in this daemon's configuration")]
    Disabled,
    #[error("invalid workspace id {0:?}: use 1-64 characters of [A-Za-z0-9._-], not starting with '.' or '-'")]
    InvalidId(String),
    #[error("workspace {0} not found")]
    NotFound(String),
    #[error("snapshot {0} not found")]
    SnapshotNotFound(String),
    #[error("workspace {id} is {holder}")]
    InUse { id: String, holder: Holder },
    #[error("workspace {0} already exists")]
    AlreadyExists(String),
}

/// Failures of file operations (in a session or a workspace): properties
/// of the files or of the path, never of the sandbox.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{0}")]
    NotFound(String),
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// A path that names the wrong kind of thing, leaves its root, or can
    /// never be valid.
    #[error("{0}")]
    InvalidPath(String),
    /// The write does not fit: the workspace's quota, the sandbox's disk
    /// limit or the host's disk is full. Deleting files makes room.
    #[error("{0}")]
    NoSpace(String),
}

/// Failures of reaching a TCP port inside a session's sandbox (the ports
/// proxy): the port's, not the sandbox's.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// Nothing listens on the port inside (the connect was refused).
    #[error("nothing listens on port {port} inside session {session}")]
    NotListening { session: String, port: u16 },
    /// The connect got no answer in time or failed otherwise.
    #[error("port {port} of session {session} cannot be reached: {message}")]
    Unreachable {
        session: String,
        port: u16,
        message: String,
    },
}

/// Failures of process requests: properties of the process or of the
/// request, not of the sandbox.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("{0}")]
    NotFound(String),
    /// Stdin, a signal or a resize for a process that has ended.
    #[error("{0}")]
    Ended(String),
    #[error("{0}")]
    StdinClosed(String),
    #[error("{0}")]
    TagInUse(String),
    /// The program could not start (not found, not executable, no such
    /// working directory).
    #[error("{0}")]
    StartFailed(String),
}

/// Failures about the image of a session.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The image cannot be used for a session (unknown, or not allowed).
    #[error("{0}")]
    Invalid(String),
}

/// Every failure of an engine call.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A request that can never succeed as written (bad argument).
    #[error("{0}")]
    InvalidRequest(String),
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error(transparent)]
    Workspace(#[from] WorkspaceError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Port(#[from] PortError),
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// The backend cannot do this (or not for this object).
    #[error("{what} is not supported by the {runtime} runtime")]
    Unsupported { what: String, runtime: &'static str },
    /// The backend failed: a fault of the host, not of the request.
    #[error("while {context}: {source}")]
    Runtime {
        context: &'static str,
        #[source]
        source: RuntimeError,
    },
    /// The host lacks room (the data dir's filesystem or the sandboxes'
    /// scratch filesystem is below its threshold, or SQLite found the disk
    /// full): nothing was created or changed, and the same request succeeds
    /// once space returns.
    #[error("{0}")]
    StorageFull(String),
    #[error("store: {0}")]
    Store(StoreError),
}

impl From<StoreError> for EngineError {
    /// A full disk is [`EngineError::StorageFull`] (a client sees 507, not
    /// a 500); every other store failure stays a fault of the daemon.
    fn from(e: StoreError) -> Self {
        if e.is_disk_full() {
            EngineError::StorageFull(format!("the daemon's database: {e}"))
        } else {
            EngineError::Store(e)
        }
    }
}

impl EngineError {
    /// A backend failure while doing `context`: the runtime's typed
    /// variants that are properties of the request become the matching
    /// client errors; the rest stay backend faults.
    pub(crate) fn runtime(context: &'static str) -> impl FnOnce(RuntimeError) -> EngineError {
        move |source| match source {
            RuntimeError::ImageNotFound(i) => {
                ImageError::Invalid(format!("unknown image {i}")).into()
            }
            RuntimeError::InvalidArchive(m) => EngineError::InvalidRequest(m),
            RuntimeError::Unsupported(what, runtime) => EngineError::Unsupported { what, runtime },
            RuntimeError::File { kind, message } => file_error(kind, message),
            RuntimeError::Process { kind, message } => match kind {
                ProcErrorKind::NotFound => ProcessError::NotFound(message).into(),
                ProcErrorKind::Ended => ProcessError::Ended(message).into(),
                ProcErrorKind::StdinClosed => ProcessError::StdinClosed(message).into(),
                ProcErrorKind::TagInUse => ProcessError::TagInUse(message).into(),
                ProcErrorKind::StartFailed => ProcessError::StartFailed(message).into(),
                ProcErrorKind::InvalidRequest => EngineError::InvalidRequest(message),
            },
            RuntimeError::StorageFull(m) => EngineError::StorageFull(m),
            RuntimeError::CapacityExhausted(m) => SessionError::RuntimeCapacity(m).into(),
            // No room on a disk (the host's, a workspace's image) is never
            // the daemon's fault: 507, whatever step met it (a snapshot or
            // export of a workspace full to its quota was a 500).
            RuntimeError::Io { source: e, .. } if is_full(&e) => {
                EngineError::StorageFull(format!("{context}: {e}"))
            }
            // The daemon out of descriptors (or memory for one): it
            // passes when connections end, as capacity does.
            RuntimeError::Io { source: e, .. } if out_of_descriptors(&e) => {
                SessionError::RuntimeCapacity(format!("{context}: {e}")).into()
            }
            source => EngineError::Runtime { context, source },
        }
    }
}

/// EMFILE or ENFILE: no descriptor for the step.
pub(crate) fn out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// ENOSPC or EDQUOT, by errno or (where a context replaced the error) by
/// kind.
fn is_full(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
        || matches!(
            e.kind(),
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
        )
}

/// A typed file failure as the engine reports it (the one table for the
/// agent and for session-less workspace access).
fn file_error(kind: FileErrorKind, message: String) -> EngineError {
    match kind {
        FileErrorKind::NotFound => FileError::NotFound(message).into(),
        FileErrorKind::PermissionDenied => FileError::PermissionDenied(message).into(),
        FileErrorKind::AlreadyExists => FileError::AlreadyExists(message).into(),
        FileErrorKind::IsADirectory
        | FileErrorKind::NotADirectory
        | FileErrorKind::InvalidPath
        | FileErrorKind::DirectoryNotEmpty => FileError::InvalidPath(message).into(),
        FileErrorKind::InvalidRequest => EngineError::InvalidRequest(message),
        FileErrorKind::NoSpace => FileError::NoSpace(message).into(),
        FileErrorKind::Io => EngineError::Runtime {
            context: "a file operation",
            source: RuntimeError::File { kind, message },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_failures_that_are_the_requests_fault_become_client_errors() {
        let map = |e| EngineError::runtime("testing")(e);
        assert!(matches!(
            map(RuntimeError::Unsupported("x".into(), "fake")),
            EngineError::Unsupported {
                runtime: "fake",
                ..
            }
        ));
        assert!(matches!(
            map(RuntimeError::ImageNotFound("i".into())),
            EngineError::Image(ImageError::Invalid(_))
        ));
        assert!(matches!(
            map(RuntimeError::File {
                kind: FileErrorKind::NotADirectory,
                message: "m".into()
            }),
            EngineError::File(FileError::InvalidPath(_))
        ));
        assert!(matches!(
            map(RuntimeError::File {
                kind: FileErrorKind::NoSpace,
                message: "m".into()
            }),
            EngineError::File(FileError::NoSpace(_))
        ));
        assert!(matches!(
            map(RuntimeError::File {
                kind: FileErrorKind::Io,
                message: "m".into()
            }),
            EngineError::Runtime { .. }
        ));
        assert!(matches!(
            map(RuntimeError::Busy("still mounted".into())),
            EngineError::Runtime { .. }
        ));
        assert!(matches!(
            map(RuntimeError::StorageFull("data dir".into())),
            EngineError::StorageFull(_)
        ));
        assert!(matches!(
            map(RuntimeError::CapacityExhausted("uid ranges".into())),
            EngineError::Session(SessionError::RuntimeCapacity(_))
        ));
    }

    #[test]
    fn a_full_disk_met_by_any_runtime_step_is_storage_full() {
        let map = EngineError::runtime("snapshotting the workspace");
        let full = RuntimeError::io("snapshot", std::io::Error::from_raw_os_error(libc::ENOSPC));
        assert!(matches!(map(full), EngineError::StorageFull(_)));
        let map = EngineError::runtime("exporting the workspace");
        // A context that kept only the kind (as wsimage's does).
        let kept =
            std::io::Error::new(std::io::ErrorKind::StorageFull, "creating a snapshot: full");
        assert!(matches!(
            map(RuntimeError::io("export", kept)),
            EngineError::StorageFull(_)
        ));
        let map = EngineError::runtime("exporting the workspace");
        let other = RuntimeError::io("export", std::io::Error::from_raw_os_error(libc::EIO));
        assert!(matches!(map(other), EngineError::Runtime { .. }));
    }

    #[test]
    fn a_daemon_out_of_descriptors_is_out_of_capacity_not_at_fault() {
        for errno in [libc::EMFILE, libc::ENFILE] {
            let map = EngineError::runtime("connecting to a port in the sandbox");
            let e = RuntimeError::io("socket", std::io::Error::from_raw_os_error(errno));
            assert!(
                matches!(
                    map(e),
                    EngineError::Session(SessionError::RuntimeCapacity(_))
                ),
                "errno {errno}"
            );
        }
    }

    #[test]
    fn a_full_disk_in_sqlite_is_storage_full_and_other_store_errors_are_not() {
        let full = StoreError::Query {
            op: "inserting session",
            source: rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
                None,
            ),
        };
        assert!(matches!(
            EngineError::from(full),
            EngineError::StorageFull(_)
        ));
        let locked = StoreError::Query {
            op: "inserting session",
            source: rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                None,
            ),
        };
        assert!(matches!(EngineError::from(locked), EngineError::Store(_)));
    }

    #[test]
    fn a_workspace_held_by_no_session_says_why_without_a_fake_session_id() {
        let e = WorkspaceError::InUse {
            id: "w".into(),
            holder: Holder::Changing,
        };
        assert_eq!(
            e.to_string(),
            "workspace w is being deleted, restored or imported"
        );
        let e = WorkspaceError::InUse {
            id: "w".into(),
            holder: Holder::Session("s1".into()),
        };
        assert_eq!(e.to_string(), "workspace w is mounted by session s1");
    }
}
