//! The `pool_entries` table: pre-warmed sandboxes that are not sessions
//! yet. A row lives from the moment the sandbox runs until it is handed out
//! (then it becomes a session row in the same transaction) or destroyed.

use crate::{q, SessionRecord, Store, StoreError};
use rusqlite::params;

/// A pooled sandbox as stored. Times are Unix milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolEntryRecord {
    pub id: String,
    pub image: String,
    /// Host pid of the sandbox init and its start time (identity proof).
    pub pid: i32,
    pub pid_start_time: u64,
    pub created_at_ms: i64,
}

impl Store {
    pub fn insert_pool_entry(&self, e: &PoolEntryRecord) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "INSERT INTO pool_entries (id, image, pid, pid_start_time, created_at_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    e.id,
                    e.image,
                    e.pid,
                    e.pid_start_time as i64,
                    e.created_at_ms
                ],
            )
            .map(|_| ())
            .map_err(q("inserting pool entry"))
    }

    pub fn delete_pool_entry(&self, id: &str) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM pool_entries WHERE id = ?1", params![id])
            .map(|_| ())
            .map_err(q("deleting pool entry"))
    }

    pub fn list_pool_entries(&self) -> Result<Vec<PoolEntryRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT id, image, pid, pid_start_time, created_at_ms FROM pool_entries \
                 ORDER BY created_at_ms, id",
            )
            .map_err(q("listing pool entries"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(PoolEntryRecord {
                    id: r.get(0)?,
                    image: r.get(1)?,
                    pid: r.get(2)?,
                    pid_start_time: r.get::<_, i64>(3)? as u64,
                    created_at_ms: r.get(4)?,
                })
            })
            .map_err(q("listing pool entries"))?;
        rows.collect::<Result<_, _>>()
            .map_err(q("listing pool entries"))
    }

    /// Hands pool entry `session.id` out: its row becomes the session row
    /// `session`, atomically, so a crash never leaves both or neither.
    pub fn promote_pool_entry(&self, session: &SessionRecord) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(q("promoting pool entry"))?;
        tx.execute(
            "DELETE FROM pool_entries WHERE id = ?1",
            params![session.id],
        )
        .map_err(q("promoting pool entry"))?;
        crate::sessions::insert(&tx, session)?;
        tx.commit().map_err(q("promoting pool entry"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str) -> PoolEntryRecord {
        PoolEntryRecord {
            id: id.into(),
            image: "base".into(),
            pid: 42,
            pid_start_time: 7,
            created_at_ms: 1,
        }
    }

    #[test]
    fn entries_roundtrip_and_promote_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let store = Store::open(&path).unwrap();
            store.insert_pool_entry(&entry("a")).unwrap();
            store.insert_pool_entry(&entry("b")).unwrap();
            store.delete_pool_entry("b").unwrap();
            let s = SessionRecord {
                id: "a".into(),
                image: "base".into(),
                state: crate::SessionState::Running,
                workspace_id: Some("ws".into()),
                cwd: "/workspace".into(),
                ttl_seconds: 60,
                created_at_ms: 5,
                expires_at_ms: 60_005,
                acquire_source: crate::AcquireSource::Pool,
                pid: 42,
                pid_start_time: 7,
                ended_at_ms: None,
                disk_limit_mb: Some(512),
                network: Some("full allow= deny=".into()),
                on_timeout: None,
                idle_timeout_seconds: None,
                hibernation: None,
                metadata: Default::default(),
            };
            store.insert_pool_entry(&entry("c")).unwrap();
            store.promote_pool_entry(&s).unwrap();
            // A second promote of the same id fails and changes nothing.
            assert!(store.promote_pool_entry(&s).is_err());
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.list_pool_entries().unwrap(), vec![entry("c")]);
        let s = store.get_session("a").unwrap().unwrap();
        assert_eq!(s.acquire_source, crate::AcquireSource::Pool);
        assert_eq!(s.workspace_id.as_deref(), Some("ws"));
        assert_eq!(s.disk_limit_mb, Some(512));
        assert_eq!(s.network.as_deref(), Some("full allow= deny="));
    }
}
