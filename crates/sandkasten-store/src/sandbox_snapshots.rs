//! Snapshots of whole sandboxes (`POST /v1/sessions/{id}/snapshots`).

use crate::{q, Store, StoreError};
use rusqlite::{params, OptionalExtension, Row};

/// A snapshot of a whole sandbox.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxSnapshotRecord {
    pub id: String,
    /// The session it was taken of.
    pub session_id: String,
    /// The image that session started from.
    pub image: String,
    /// The persistent workspace, and its snapshot, that hold the
    /// sandbox's `/workspace`; `None`: it is in the sandbox's own state.
    pub workspace_id: Option<String>,
    pub workspace_snapshot: Option<String>,
    pub label: Option<String>,
    pub created_at_ms: i64,
}

const COLUMNS: &str =
    "id, session_id, image, workspace_id, workspace_snapshot, label, created_at_ms";

fn row(r: &Row<'_>) -> rusqlite::Result<SandboxSnapshotRecord> {
    Ok(SandboxSnapshotRecord {
        id: r.get(0)?,
        session_id: r.get(1)?,
        image: r.get(2)?,
        workspace_id: r.get(3)?,
        workspace_snapshot: r.get(4)?,
        label: r.get(5)?,
        created_at_ms: r.get(6)?,
    })
}

impl Store {
    pub fn insert_sandbox_snapshot(&self, s: &SandboxSnapshotRecord) -> Result<(), StoreError> {
        self.conn()
            .execute(
                &format!(
                    "INSERT INTO sandbox_snapshots ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
                ),
                params![
                    s.id,
                    s.session_id,
                    s.image,
                    s.workspace_id,
                    s.workspace_snapshot,
                    s.label,
                    s.created_at_ms
                ],
            )
            .map(|_| ())
            .map_err(q("inserting a sandbox snapshot"))
    }

    /// Every sandbox snapshot, oldest first.
    pub fn list_sandbox_snapshots(&self) -> Result<Vec<SandboxSnapshotRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {COLUMNS} FROM sandbox_snapshots ORDER BY created_at_ms, id"
            ))
            .map_err(q("listing sandbox snapshots"))?;
        let rows = stmt
            .query_map([], row)
            .map_err(q("listing sandbox snapshots"))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(q("listing sandbox snapshots"))
    }

    pub fn get_sandbox_snapshot(
        &self,
        id: &str,
    ) -> Result<Option<SandboxSnapshotRecord>, StoreError> {
        self.conn()
            .query_row(
                &format!("SELECT {COLUMNS} FROM sandbox_snapshots WHERE id = ?1"),
                [id],
                row,
            )
            .optional()
            .map_err(q("reading a sandbox snapshot"))
    }

    /// Forgets a sandbox snapshot; whether it existed.
    pub fn delete_sandbox_snapshot(&self, id: &str) -> Result<bool, StoreError> {
        self.conn()
            .execute("DELETE FROM sandbox_snapshots WHERE id = ?1", [id])
            .map(|n| n == 1)
            .map_err(q("deleting a sandbox snapshot"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_snapshots_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db")).unwrap();
        let rec = SandboxSnapshotRecord {
            id: "ssnap-1".into(),
            session_id: "s1".into(),
            image: "base".into(),
            workspace_id: Some("ws".into()),
            workspace_snapshot: Some("snap-1".into()),
            label: Some("before".into()),
            created_at_ms: 5,
        };
        s.insert_sandbox_snapshot(&rec).unwrap();
        assert_eq!(
            s.get_sandbox_snapshot("ssnap-1").unwrap(),
            Some(rec.clone())
        );
        assert_eq!(s.list_sandbox_snapshots().unwrap(), vec![rec]);
        assert!(s.delete_sandbox_snapshot("ssnap-1").unwrap());
        assert!(!s.delete_sandbox_snapshot("ssnap-1").unwrap());
        assert_eq!(s.get_sandbox_snapshot("ssnap-1").unwrap(), None);
    }
}
