//! SQLite persistence of the daemon's state under the data dir.
//!
//! One connection behind a mutex (SQLite serialises writers anyway), WAL
//! journal, versioned migrations tracked in `PRAGMA user_version`. Each
//! table has its own module; callers see plain structs, never SQL.

mod migrations;
mod pool;
mod sandbox_snapshots;
mod sessions;
mod states;
mod workspaces;

pub use pool::PoolEntryRecord;
pub use sandbox_snapshots::SandboxSnapshotRecord;
pub use sessions::{SessionRecord, SessionRow};
pub use states::{AcquireSource, SessionState};
pub use workspaces::{SnapshotRecord, WorkspaceRecord};

use rusqlite::Connection;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("opening database {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("migrating database to version {version}: {source}")]
    Migrate {
        version: usize,
        #[source]
        source: rusqlite::Error,
    },
    #[error("database is at version {found}, newer than this daemon knows ({known})")]
    TooNew { found: usize, known: usize },
    #[error("{op}: {source}")]
    Query {
        op: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    /// The blocking task running a query did not complete.
    #[error("database task: {0}")]
    Task(String),
}

impl StoreError {
    /// True when SQLite failed because the disk is full (`SQLITE_FULL`):
    /// the request may succeed once space returns, nothing was written.
    pub fn is_disk_full(&self) -> bool {
        let source = match self {
            StoreError::Open { source, .. }
            | StoreError::Migrate { source, .. }
            | StoreError::Query { source, .. } => source,
            StoreError::TooNew { .. } | StoreError::Task(_) => return false,
        };
        matches!(
            source,
            rusqlite::Error::SqliteFailure(e, _) if e.code == rusqlite::ErrorCode::DiskFull
        )
    }
}

pub(crate) fn q(op: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Query { op, source }
}

/// The daemon's database.
pub struct Store {
    conn: Mutex<Connection>,
}

impl Store {
    /// Opens (creating if needed) and migrates the database at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        migrations::migrate(&mut conn)?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    /// Schema version after migration.
    pub fn schema_version(&self) -> Result<usize, StoreError> {
        migrations::version(&self.conn())
    }

    pub(crate) fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sqlite_full_is_a_full_disk() {
        let err = |code| StoreError::Query {
            op: "writing",
            source: rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None),
        };
        assert!(err(rusqlite::ffi::SQLITE_FULL).is_disk_full());
        assert!(!err(rusqlite::ffi::SQLITE_BUSY).is_disk_full());
        assert!(!StoreError::Task("cancelled".into()).is_disk_full());
    }
}
