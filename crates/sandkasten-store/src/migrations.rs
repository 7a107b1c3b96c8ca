//! Versioned schema migrations. Migration `i` (0-based) brings the schema
//! from version `i` to `i + 1`; applied ones are never edited, only new ones
//! appended.

use crate::StoreError;
use rusqlite::Connection;

const MIGRATIONS: &[&str] = &[
    // 1: sessions. `workspace_id` exists from the first version on.
    "CREATE TABLE sessions (
        id              TEXT PRIMARY KEY,
        image           TEXT NOT NULL,
        state           TEXT NOT NULL,
        workspace_id    TEXT,
        cwd             TEXT NOT NULL,
        ttl_seconds     INTEGER NOT NULL,
        created_at_ms   INTEGER NOT NULL,
        expires_at_ms   INTEGER NOT NULL,
        acquire_source  TEXT NOT NULL,
        pid             INTEGER NOT NULL DEFAULT 0,
        pid_start_time  INTEGER NOT NULL DEFAULT 0,
        ended_at_ms     INTEGER
    );
    CREATE INDEX sessions_by_state ON sessions(state);
    CREATE INDEX sessions_by_workspace ON sessions(workspace_id);",
    // 2: workspaces. Labels are a JSON object of strings.
    "CREATE TABLE workspaces (
        id              TEXT PRIMARY KEY,
        created_at_ms   INTEGER NOT NULL,
        last_used_at_ms INTEGER,
        quota_bytes     INTEGER,
        labels          TEXT NOT NULL DEFAULT '{}'
    );",
    // 3: snapshots of workspaces.
    "CREATE TABLE snapshots (
        id              TEXT PRIMARY KEY,
        workspace_id    TEXT NOT NULL,
        created_at_ms   INTEGER NOT NULL,
        label           TEXT
    );
    CREATE INDEX snapshots_by_workspace ON snapshots(workspace_id, created_at_ms);",
    // 4: pre-warmed sandboxes of the pool (not sessions yet), so that a
    // restart after a crash finds and destroys them.
    "CREATE TABLE pool_entries (
        id              TEXT PRIMARY KEY,
        image           TEXT NOT NULL,
        pid             INTEGER NOT NULL,
        pid_start_time  INTEGER NOT NULL,
        created_at_ms   INTEGER NOT NULL
    );",
    // 5: each session's disk limit (MiB; NULL where none is enforced), so
    // that a restarted daemon still reports it.
    "ALTER TABLE sessions ADD COLUMN disk_limit_mb INTEGER;",
    // 6: each session's network policy (text form), so that a restarted
    // daemon rebuilds its rules and still reports it.
    "ALTER TABLE sessions ADD COLUMN network TEXT;",
    // 7: each session's metadata (a JSON object of strings; NULL: none),
    // set at create (the E2B API's `metadata`) and shown with the session.
    "ALTER TABLE sessions ADD COLUMN metadata TEXT;",
    // 8: what a session's timeout does (`destroy`, `pause`, `hibernate`;
    // NULL: destroy), its idle limit (seconds without activity; NULL:
    // none), and a hibernated session's kept shell state (a JSON object;
    // NULL while it is not hibernated).
    "ALTER TABLE sessions ADD COLUMN on_timeout TEXT;
     ALTER TABLE sessions ADD COLUMN idle_timeout_seconds INTEGER;
     ALTER TABLE sessions ADD COLUMN hibernation TEXT;",
    // 9: snapshots of whole sandboxes: the image they started from, and
    // the persistent workspace and its snapshot that hold their
    // /workspace (NULL: it is in the sandbox's own state).
    "CREATE TABLE sandbox_snapshots (
        id TEXT PRIMARY KEY,
        session_id TEXT NOT NULL,
        image TEXT NOT NULL,
        workspace_id TEXT,
        workspace_snapshot TEXT,
        label TEXT,
        created_at_ms INTEGER NOT NULL
    );",
];

pub(crate) fn version(conn: &Connection) -> Result<usize, StoreError> {
    conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
        .map(|v| v as usize)
        .map_err(crate::q("reading schema version"))
}

pub(crate) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let current = version(conn)?;
    if current > MIGRATIONS.len() {
        return Err(StoreError::TooNew {
            found: current,
            known: MIGRATIONS.len(),
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let target = i + 1;
        let err = |source| StoreError::Migrate {
            version: target,
            source,
        };
        let tx = conn.transaction().map_err(err)?;
        tx.execute_batch(sql).map_err(err)?;
        tx.pragma_update(None, "user_version", target as i64)
            .map_err(err)?;
        tx.commit().map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_from_empty_and_is_idempotent() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        assert_eq!(version(&conn).unwrap(), MIGRATIONS.len());
        migrate(&mut conn).unwrap();
        assert_eq!(version(&conn).unwrap(), MIGRATIONS.len());
        // The workspace column exists from the first version on.
        conn.execute_batch("SELECT workspace_id FROM sessions")
            .unwrap();
    }

    #[test]
    fn refuses_a_newer_schema() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "user_version", 999).unwrap();
        assert!(matches!(migrate(&mut conn), Err(StoreError::TooNew { .. })));
    }
}
