//! The `sessions` table: one row per session, kept after it ends.

use crate::{q, AcquireSource, SessionState, Store, StoreError};
use rusqlite::{params, OptionalExtension, Row};
use std::collections::BTreeMap;

/// A session as stored. Times are Unix milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionRecord {
    pub id: String,
    pub image: String,
    /// Lifecycle state name (owned by the engine).
    pub state: SessionState,
    pub workspace_id: Option<String>,
    pub cwd: String,
    pub ttl_seconds: u64,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    pub acquire_source: AcquireSource,
    /// Host pid of the sandbox init and its start time (identity proof).
    pub pid: i32,
    pub pid_start_time: u64,
    pub ended_at_ms: Option<i64>,
    /// The disk limit (MiB) the sandbox was given; `None` where the
    /// backend enforces none.
    pub disk_limit_mb: Option<u64>,
    /// The session's network policy in the engine's text form
    /// (`NetworkPolicy::to_text`); `None` in rows from before migration 6
    /// (no network).
    pub network: Option<String>,
    /// Metadata given at create (string keys and values); empty in rows
    /// from before migration 7.
    pub metadata: BTreeMap<String, String>,
    /// What the session's timeout does (the engine's name for it); `None`:
    /// destroy (rows from before migration 8 too).
    pub on_timeout: Option<String>,
    /// Seconds without activity after which the timeout action runs;
    /// `None`: no idle limit.
    pub idle_timeout_seconds: Option<u64>,
    /// A hibernated session's kept shell state (the engine's JSON);
    /// `None` unless hibernated.
    pub hibernation: Option<String>,
}

/// Alias kept for readability at call sites that list rows.
pub type SessionRow = SessionRecord;

const COLUMNS: &str = "id, image, state, workspace_id, cwd, ttl_seconds, created_at_ms, \
     expires_at_ms, acquire_source, pid, pid_start_time, ended_at_ms, disk_limit_mb, network, metadata, \
     on_timeout, idle_timeout_seconds, hibernation";

fn from_row(r: &Row<'_>) -> rusqlite::Result<SessionRecord> {
    Ok(SessionRecord {
        id: r.get(0)?,
        image: r.get(1)?,
        state: r.get(2)?,
        workspace_id: r.get(3)?,
        cwd: r.get(4)?,
        ttl_seconds: r.get::<_, i64>(5)? as u64,
        created_at_ms: r.get(6)?,
        expires_at_ms: r.get(7)?,
        acquire_source: r.get(8)?,
        pid: r.get(9)?,
        pid_start_time: r.get::<_, i64>(10)? as u64,
        ended_at_ms: r.get(11)?,
        disk_limit_mb: r.get::<_, Option<i64>>(12)?.map(|v| v as u64),
        network: r.get(13)?,
        metadata: r
            .get::<_, Option<String>>(14)?
            .and_then(|m| serde_json::from_str(&m).ok())
            .unwrap_or_default(),
        on_timeout: r.get(15)?,
        idle_timeout_seconds: r.get::<_, Option<i64>>(16)?.map(|v| v as u64),
        hibernation: r.get(17)?,
    })
}

/// Inserts `s` through `conn` (also inside a transaction).
pub(crate) fn insert(conn: &rusqlite::Connection, s: &SessionRecord) -> Result<(), StoreError> {
    conn.execute(
        &format!(
            "INSERT INTO sessions ({COLUMNS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18)"
        ),
        params![
            s.id,
            s.image,
            s.state,
            s.workspace_id,
            s.cwd,
            s.ttl_seconds as i64,
            s.created_at_ms,
            s.expires_at_ms,
            s.acquire_source,
            s.pid,
            s.pid_start_time as i64,
            s.ended_at_ms,
            s.disk_limit_mb.map(|v| v as i64),
            s.network,
            (!s.metadata.is_empty())
                .then(|| serde_json::to_string(&s.metadata).unwrap_or_else(|_| "{}".into())),
            s.on_timeout,
            s.idle_timeout_seconds.map(|v| v as i64),
            s.hibernation,
        ],
    )
    .map(|_| ())
    .map_err(q("inserting session"))
}

impl Store {
    /// Inserts a new session row.
    pub fn insert_session(&self, s: &SessionRecord) -> Result<(), StoreError> {
        insert(&self.conn(), s)
    }

    /// Records the sandbox identity once it runs.
    pub fn set_session_sandbox(
        &self,
        id: &str,
        state: SessionState,
        pid: i32,
        start_time: u64,
    ) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "UPDATE sessions SET state = ?2, pid = ?3, pid_start_time = ?4 WHERE id = ?1",
                params![id, state, pid, start_time as i64],
            )
            .map(|_| ())
            .map_err(q("recording session sandbox"))
    }

    /// Records activity: the new expiry and the shell's cwd.
    pub fn touch_session(&self, id: &str, expires_at_ms: i64, cwd: &str) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "UPDATE sessions SET expires_at_ms = ?2, cwd = ?3 WHERE id = ?1",
                params![id, expires_at_ms, cwd],
            )
            .map(|_| ())
            .map_err(q("recording session activity"))
    }

    /// Records the activity of a running session as the engine batches
    /// it: the new expiry and the shell's cwd, unless since then the
    /// session stopped running or its TTL was changed (each of which wrote
    /// its own expiry, which an older activity must not overwrite).
    pub fn record_session_activity(
        &self,
        id: &str,
        expires_at_ms: i64,
        cwd: &str,
        ttl_seconds: u64,
    ) -> Result<(), StoreError> {
        self.record_sessions_activity(&[(id, expires_at_ms, cwd, ttl_seconds)])
    }

    /// [`Store::record_session_activity`] for many sessions, in one
    /// transaction: (id, expiry, cwd, TTL).
    pub fn record_sessions_activity(
        &self,
        rows: &[(&str, i64, &str, u64)],
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction()
            .map_err(q("recording session activity"))?;
        {
            let mut st = tx
                .prepare_cached(
                    "UPDATE sessions SET expires_at_ms = ?2, cwd = ?3 \
                     WHERE id = ?1 AND ttl_seconds = ?4 AND state = 'running'",
                )
                .map_err(q("recording session activity"))?;
            for (id, exp, cwd, ttl) in rows {
                st.execute(params![id, exp, cwd, *ttl as i64])
                    .map_err(q("recording session activity"))?;
            }
        }
        tx.commit().map_err(q("recording session activity"))
    }

    /// Records a new TTL and the expiry it gives (the E2B API's timeout).
    pub fn set_session_ttl(
        &self,
        id: &str,
        ttl_seconds: u64,
        expires_at_ms: i64,
    ) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "UPDATE sessions SET ttl_seconds = ?2, expires_at_ms = ?3 WHERE id = ?1",
                params![id, ttl_seconds as i64, expires_at_ms],
            )
            .map(|_| ())
            .map_err(q("recording a session's TTL"))
    }

    /// Records a session hibernated (`Some`: its kept shell state) or
    /// woken (`None`), with its state.
    pub fn set_session_hibernation(
        &self,
        id: &str,
        state: SessionState,
        hibernation: Option<&str>,
    ) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "UPDATE sessions SET state = ?2, hibernation = ?3 WHERE id = ?1",
                params![id, state, hibernation],
            )
            .map(|_| ())
            .map_err(q("recording a session's hibernation"))
    }

    /// Records the network policy (text form) a change put in force.
    pub fn set_session_network(&self, id: &str, network: &str) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "UPDATE sessions SET network = ?2 WHERE id = ?1",
                params![id, network],
            )
            .map(|_| ())
            .map_err(q("recording a session's network policy"))
    }

    /// Moves a session to `state`; `ended_at_ms` is set for final states.
    pub fn set_session_state(
        &self,
        id: &str,
        state: SessionState,
        ended_at_ms: Option<i64>,
    ) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "UPDATE sessions SET state = ?2, ended_at_ms = COALESCE(?3, ended_at_ms) WHERE id = ?1",
                params![id, state, ended_at_ms],
            )
            .map(|_| ())
            .map_err(q("updating session state"))
    }

    /// One session by id.
    pub fn get_session(&self, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        self.conn()
            .query_row(
                &format!("SELECT {COLUMNS} FROM sessions WHERE id = ?1"),
                [id],
                from_row,
            )
            .optional()
            .map_err(q("reading session"))
    }

    /// Sessions whose state is not one of `final_states`, oldest first.
    /// Sessions in a state that is not final (they may still run), oldest
    /// first.
    pub fn list_live_sessions(&self) -> Result<Vec<SessionRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {COLUMNS} FROM sessions ORDER BY created_at_ms, id"
            ))
            .map_err(q("listing sessions"))?;
        let rows = stmt
            .query_map([], from_row)
            .map_err(q("listing sessions"))?;
        let mut out = Vec::new();
        for r in rows {
            let r = r.map_err(q("listing sessions"))?;
            if !r.state.is_final() {
                out.push(r);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str) -> SessionRecord {
        SessionRecord {
            id: id.into(),
            image: "base".into(),
            state: SessionState::Creating,
            workspace_id: None,
            cwd: "/workspace".into(),
            ttl_seconds: 60,
            created_at_ms: 1,
            expires_at_ms: 60_001,
            acquire_source: AcquireSource::Cold,
            pid: 0,
            pid_start_time: 0,
            ended_at_ms: None,
            disk_limit_mb: None,
            network: None,
            on_timeout: None,
            idle_timeout_seconds: None,
            hibernation: None,
            metadata: BTreeMap::new(),
        }
    }

    #[test]
    fn session_lifecycle_roundtrips_through_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        {
            let s = Store::open(&path).unwrap();
            s.insert_session(&rec("a")).unwrap();
            s.insert_session(&SessionRecord {
                workspace_id: Some("ws".into()),
                disk_limit_mb: Some(300),
                metadata: [("owner".to_string(), "e2b".to_string())].into(),
                ..rec("b")
            })
            .unwrap();
            s.set_session_sandbox("a", SessionState::Running, 42, 4242)
                .unwrap();
            s.touch_session("a", 99_000, "/tmp").unwrap();
            s.set_session_ttl("b", 300, 301_000).unwrap();
            s.set_session_state("b", SessionState::Destroyed, Some(5))
                .unwrap();
        }
        let s = Store::open(&path).unwrap();
        let a = s.get_session("a").unwrap().unwrap();
        assert_eq!(
            (a.pid, a.pid_start_time, a.state),
            (42, 4242, SessionState::Running)
        );
        assert_eq!((a.expires_at_ms, a.cwd.as_str()), (99_000, "/tmp"));
        // Batched activity lands only on a running session whose TTL is
        // the one it was computed with.
        s.record_session_activity("a", 120_000, "/w", a.ttl_seconds)
            .unwrap();
        s.record_session_activity("a", 130_000, "/x", a.ttl_seconds + 1)
            .unwrap();
        let a = s.get_session("a").unwrap().unwrap();
        assert_eq!((a.expires_at_ms, a.cwd.as_str()), (120_000, "/w"));
        s.set_session_state("a", SessionState::Paused, None)
            .unwrap();
        s.record_session_activity("a", 140_000, "/y", a.ttl_seconds)
            .unwrap();
        let p = s.get_session("a").unwrap().unwrap();
        assert_eq!((p.expires_at_ms, p.cwd.as_str()), (120_000, "/w"));
        s.set_session_state("a", SessionState::Running, None)
            .unwrap();
        let live = s.list_live_sessions().unwrap();
        assert_eq!(
            live.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            vec!["a"]
        );
        let b = s.get_session("b").unwrap().unwrap();
        assert_eq!(
            (b.ended_at_ms, b.workspace_id.as_deref()),
            (Some(5), Some("ws"))
        );
        assert_eq!((a.disk_limit_mb, b.disk_limit_mb), (None, Some(300)));
        assert!(a.metadata.is_empty());
        assert_eq!(b.metadata.get("owner").map(String::as_str), Some("e2b"));
        assert_eq!((b.ttl_seconds, b.expires_at_ms), (300, 301_000));
        assert_eq!(a.network, None);
        s.set_session_network("a", "full allow=pypi.org deny=")
            .unwrap();
        let a = s.get_session("a").unwrap().unwrap();
        assert_eq!(a.network.as_deref(), Some("full allow=pypi.org deny="));
        assert!(s.get_session("nope").unwrap().is_none());
    }

    #[test]
    fn duplicate_ids_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db")).unwrap();
        s.insert_session(&rec("a")).unwrap();
        assert!(s.insert_session(&rec("a")).is_err());
    }
}
