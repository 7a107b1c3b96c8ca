//! The `workspaces` table: one row per persistent workspace.

use crate::{q, Store, StoreError};
use rusqlite::{params, OptionalExtension, Row};
use std::collections::BTreeMap;

/// A workspace as stored. Times are Unix milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkspaceRecord {
    pub id: String,
    pub created_at_ms: i64,
    pub last_used_at_ms: Option<i64>,
    pub quota_bytes: Option<u64>,
    pub labels: BTreeMap<String, String>,
}

const COLUMNS: &str = "id, created_at_ms, last_used_at_ms, quota_bytes, labels";

fn from_row(r: &Row<'_>) -> rusqlite::Result<WorkspaceRecord> {
    let labels: String = r.get(4)?;
    Ok(WorkspaceRecord {
        id: r.get(0)?,
        created_at_ms: r.get(1)?,
        last_used_at_ms: r.get(2)?,
        quota_bytes: r.get::<_, Option<i64>>(3)?.map(|v| v as u64),
        labels: serde_json::from_str(&labels).unwrap_or_default(),
    })
}

/// `INSERT OR IGNORE` of a workspace row: 1 when inserted, 0 when its id
/// exists.
fn insert_if_absent(conn: &rusqlite::Connection, w: &WorkspaceRecord) -> rusqlite::Result<usize> {
    let labels = serde_json::to_string(&w.labels).unwrap_or_else(|_| "{}".into());
    conn.execute(
        &format!("INSERT OR IGNORE INTO workspaces ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5)"),
        params![
            w.id,
            w.created_at_ms,
            w.last_used_at_ms,
            w.quota_bytes.map(|v| v as i64),
            labels
        ],
    )
}

impl Store {
    /// Inserts a workspace; `Ok(false)` when the id already exists.
    pub fn insert_workspace(&self, w: &WorkspaceRecord) -> Result<bool, StoreError> {
        insert_if_absent(&self.conn(), w)
            .map(|n| n == 1)
            .map_err(q("inserting workspace"))
    }

    pub fn get_workspace(&self, id: &str) -> Result<Option<WorkspaceRecord>, StoreError> {
        self.conn()
            .query_row(
                &format!("SELECT {COLUMNS} FROM workspaces WHERE id = ?1"),
                [id],
                from_row,
            )
            .optional()
            .map_err(q("reading workspace"))
    }

    /// All workspaces, by id.
    pub fn list_workspaces(&self) -> Result<Vec<WorkspaceRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(&format!("SELECT {COLUMNS} FROM workspaces ORDER BY id"))
            .map_err(q("listing workspaces"))?;
        let rows = stmt
            .query_map([], from_row)
            .map_err(q("listing workspaces"))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(q("listing workspaces"))
    }

    /// Records that a session mounted the workspace.
    pub fn touch_workspace(&self, id: &str, at_ms: i64) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "UPDATE workspaces SET last_used_at_ms = ?2 WHERE id = ?1",
                params![id, at_ms],
            )
            .map(|_| ())
            .map_err(q("recording workspace use"))
    }

    /// A workspace about to be mounted, in one transaction: inserts `w`
    /// unless a row of its id exists, records its use at
    /// `w.last_used_at_ms` and answers its quota.
    pub fn use_workspace(&self, w: &WorkspaceRecord) -> Result<Option<u64>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(q("using workspace"))?;
        insert_if_absent(&tx, w).map_err(q("using workspace"))?;
        tx.execute(
            "UPDATE workspaces SET last_used_at_ms = ?2 WHERE id = ?1",
            params![w.id, w.last_used_at_ms],
        )
        .map_err(q("using workspace"))?;
        let quota: Option<i64> = tx
            .query_row(
                "SELECT quota_bytes FROM workspaces WHERE id = ?1",
                [&w.id],
                |r| r.get(0),
            )
            .map_err(q("using workspace"))?;
        tx.commit().map_err(q("using workspace"))?;
        Ok(quota.map(|v| v as u64))
    }

    /// Deletes a workspace row; `Ok(false)` when there was none.
    pub fn delete_workspace(&self, id: &str) -> Result<bool, StoreError> {
        self.conn()
            .execute("DELETE FROM workspaces WHERE id = ?1", [id])
            .map(|n| n == 1)
            .map_err(q("deleting workspace"))
    }
}

/// A snapshot of a workspace.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotRecord {
    pub id: String,
    pub workspace_id: String,
    pub created_at_ms: i64,
    pub label: Option<String>,
}

fn snap_row(r: &Row<'_>) -> rusqlite::Result<SnapshotRecord> {
    Ok(SnapshotRecord {
        id: r.get(0)?,
        workspace_id: r.get(1)?,
        created_at_ms: r.get(2)?,
        label: r.get(3)?,
    })
}

impl Store {
    pub fn insert_snapshot(&self, s: &SnapshotRecord) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "INSERT INTO snapshots (id, workspace_id, created_at_ms, label) VALUES (?1, ?2, ?3, ?4)",
                params![s.id, s.workspace_id, s.created_at_ms, s.label],
            )
            .map(|_| ())
            .map_err(q("inserting snapshot"))
    }

    /// Snapshots of a workspace, oldest first.
    pub fn list_snapshots(&self, workspace_id: &str) -> Result<Vec<SnapshotRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT id, workspace_id, created_at_ms, label FROM snapshots \
                 WHERE workspace_id = ?1 ORDER BY created_at_ms, id",
            )
            .map_err(q("listing snapshots"))?;
        let rows = stmt
            .query_map([workspace_id], snap_row)
            .map_err(q("listing snapshots"))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(q("listing snapshots"))
    }

    pub fn get_snapshot(&self, id: &str) -> Result<Option<SnapshotRecord>, StoreError> {
        self.conn()
            .query_row(
                "SELECT id, workspace_id, created_at_ms, label FROM snapshots WHERE id = ?1",
                [id],
                snap_row,
            )
            .optional()
            .map_err(q("reading snapshot"))
    }

    pub fn delete_snapshot(&self, id: &str) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM snapshots WHERE id = ?1", [id])
            .map(|_| ())
            .map_err(q("deleting snapshot"))
    }

    /// Forgets every snapshot of a workspace (it was deleted).
    pub fn delete_snapshots_of(&self, workspace_id: &str) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "DELETE FROM snapshots WHERE workspace_id = ?1",
                [workspace_id],
            )
            .map(|_| ())
            .map_err(q("deleting snapshots"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_rows_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db")).unwrap();
        let w = WorkspaceRecord {
            id: "ws1".into(),
            created_at_ms: 5,
            last_used_at_ms: None,
            quota_bytes: Some(1 << 30),
            labels: [("team".to_string(), "a".to_string())]
                .into_iter()
                .collect(),
        };
        assert!(s.insert_workspace(&w).unwrap());
        assert!(
            !s.insert_workspace(&w).unwrap(),
            "duplicate ids are reported"
        );
        s.touch_workspace("ws1", 9).unwrap();
        let got = s.get_workspace("ws1").unwrap().unwrap();
        assert_eq!(
            got,
            WorkspaceRecord {
                last_used_at_ms: Some(9),
                ..w
            }
        );
        assert_eq!(s.list_workspaces().unwrap().len(), 1);
        // Using it keeps its row (quota, creation) and records the use; a
        // new id is inserted.
        let use_at = |id: &str, at| WorkspaceRecord {
            id: id.into(),
            created_at_ms: at,
            last_used_at_ms: Some(at),
            quota_bytes: None,
            labels: Default::default(),
        };
        assert_eq!(s.use_workspace(&use_at("ws1", 12)).unwrap(), Some(1 << 30));
        let got = s.get_workspace("ws1").unwrap().unwrap();
        assert_eq!((got.created_at_ms, got.last_used_at_ms), (5, Some(12)));
        assert_eq!(s.use_workspace(&use_at("ws2", 13)).unwrap(), None);
        assert_eq!(s.get_workspace("ws2").unwrap().unwrap(), use_at("ws2", 13));
        assert!(s.delete_workspace("ws1").unwrap());
        assert!(!s.delete_workspace("ws1").unwrap());
        assert!(s.get_workspace("ws1").unwrap().is_none());
    }

    #[test]
    fn snapshot_rows_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db")).unwrap();
        for (i, id) in ["s1", "s2"].iter().enumerate() {
            s.insert_snapshot(&SnapshotRecord {
                id: id.to_string(),
                workspace_id: "w".into(),
                created_at_ms: i as i64,
                label: Some("l".into()),
            })
            .unwrap();
        }
        assert_eq!(s.list_snapshots("w").unwrap().len(), 2);
        assert_eq!(s.get_snapshot("s2").unwrap().unwrap().created_at_ms, 1);
        s.delete_snapshot("s1").unwrap();
        assert_eq!(s.list_snapshots("w").unwrap().len(), 1);
        s.delete_snapshots_of("w").unwrap();
        assert!(s.list_snapshots("w").unwrap().is_empty());
    }
}
