//! Snapshots of whole sandboxes and forks.
//!
//! A sandbox snapshot is the sandbox's own filesystem state (root
//! filesystem changes, `/tmp`, an ephemeral `/workspace`:
//! [`Runtime::snapshot_sandbox`]) taken while the sandbox is frozen, plus,
//! for a session with a persistent workspace, a snapshot of that workspace
//! taken in the same freeze. It is usable as an image: a create with
//! `from_snapshot` (or with its id as `image`) starts a sandbox on a
//! copy-on-write copy of it, and the pool can hold such sandboxes. A fork
//! is a snapshot, `count` creates from it, and the snapshot's deletion.

use crate::error::{SessionError, WorkspaceError};
use crate::session::{ms, now};
use crate::{CreateSession, CreateWorkspace, Engine, EngineError, SessionInfo, SessionState};
use sandkasten_store::SandboxSnapshotRecord;
use time::OffsetDateTime;

/// Prefix of sandbox snapshot ids (never a workspace snapshot's `snap-`,
/// nor an image name a registry would use).
pub const SANDBOX_SNAPSHOT_PREFIX: &str = "ssnap-";

/// A snapshot of a whole sandbox as clients see it.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxSnapshotInfo {
    pub id: String,
    /// The session it was taken of (it may have ended since).
    pub session_id: String,
    /// The image that session started from.
    pub image: String,
    /// The persistent workspace the session had (its content at the
    /// snapshot is in the snapshot); `None`: an ephemeral one.
    pub workspace_id: Option<String>,
    pub label: Option<String>,
    pub created_at: OffsetDateTime,
}

impl From<SandboxSnapshotRecord> for SandboxSnapshotInfo {
    fn from(r: SandboxSnapshotRecord) -> Self {
        SandboxSnapshotInfo {
            id: r.id,
            session_id: r.session_id,
            image: r.image,
            workspace_id: r.workspace_id,
            label: r.label,
            created_at: crate::session::from_ms(r.created_at_ms),
        }
    }
}

/// The name of a copy of workspace `ws`: `<ws>-copy-<12 hex digits>`
/// (`ws` cut to 40 characters), a valid workspace id.
fn copy_name(ws: &str) -> String {
    let cut: String = ws.chars().take(40).collect();
    let hex = uuid::Uuid::new_v4().simple().to_string();
    format!("{cut}-copy-{}", &hex[..12])
}

/// Whether `name` names a sandbox snapshot (as an image).
pub fn is_sandbox_snapshot(name: &str) -> bool {
    name.starts_with(SANDBOX_SNAPSHOT_PREFIX)
}

impl Engine {
    /// Snapshots session `id`'s sandbox at a consistent point: frozen
    /// while its state (and its persistent workspace's) is copied. A
    /// paused session stays paused; a hibernated one is woken first.
    pub async fn snapshot_session(
        &self,
        id: &str,
        label: Option<String>,
    ) -> Result<SandboxSnapshotInfo, EngineError> {
        let (e, id) = (self.clone(), id.to_string());
        Ok(self
            .to_the_end(async move {
                let done = e.take_snapshot(&id, label).await;
                done.map_err(|x| e.ended_meanwhile(&id, x))
            })
            .await?
            .into())
    }

    async fn take_snapshot(
        &self,
        id: &str,
        label: Option<String>,
    ) -> Result<SandboxSnapshotRecord, EngineError> {
        let rt = &self.inner.runtime;
        if !rt.can_snapshot_sandbox() {
            return Err(EngineError::Unsupported {
                what: "snapshots of a whole sandbox".into(),
                runtime: rt.name(),
            });
        }
        if let Some(l) = &label {
            if l.len() > 256 {
                return Err(EngineError::InvalidRequest(
                    "label must be at most 256 bytes".into(),
                ));
            }
        }
        let s = self.inner.sessions.get(id)?;
        if s.state() == SessionState::Hibernated {
            self.wake(&s).await?;
        }
        let _order = s.lifecycle.lock().await;
        let was_paused = match s.state() {
            SessionState::Paused => true,
            SessionState::Running => false,
            state => {
                return Err(SessionError::NotRunning {
                    id: id.to_string(),
                    state,
                }
                .into())
            }
        };
        let handle = s.handle();
        let snap = format!(
            "{SANDBOX_SNAPSHOT_PREFIX}{}",
            &uuid::Uuid::new_v4().simple().to_string()[..24]
        );
        if !was_paused {
            if let Err(e) = rt.pause(&handle).await {
                // A freeze left half done would hold a destroy's kill.
                if let Err(t) = rt.resume(&handle).await {
                    tracing::debug!(session = %id, "thawing after a failed freeze: {t}");
                }
                return Err(EngineError::runtime(
                    "freezing the sandbox for its snapshot",
                )(e));
            }
        }
        let taken = async {
            rt.snapshot_sandbox(&handle, &snap)
                .await
                .map_err(EngineError::runtime("snapshotting the sandbox"))?;
            let ws_snap = match &s.workspace_id {
                Some(ws) => match self
                    .create_snapshot(ws, Some(format!("sandbox snapshot {snap}")))
                    .await
                {
                    Ok(w) => Some(w.id),
                    Err(e) => {
                        let _ = rt.delete_sandbox_snapshot(&snap).await;
                        return Err(e);
                    }
                },
                None => None,
            };
            Ok(ws_snap)
        }
        .await;
        if !was_paused {
            if let Err(e) = rt.resume(&handle).await {
                tracing::warn!(session = %id, "thawing after a snapshot: {e}");
            }
        }
        let ws_snap = taken?;
        let rec = SandboxSnapshotRecord {
            id: snap,
            session_id: id.to_string(),
            image: s.image.clone(),
            workspace_id: s.workspace_id.clone(),
            workspace_snapshot: ws_snap,
            label,
            created_at_ms: ms(now()),
        };
        let stored = rec.clone();
        self.inner
            .db
            .run(move |st| st.insert_sandbox_snapshot(&stored))
            .await?;
        Ok(rec)
    }

    /// Every sandbox snapshot, oldest first.
    pub async fn list_sandbox_snapshots(&self) -> Result<Vec<SandboxSnapshotInfo>, EngineError> {
        let all = self.inner.db.run(|st| st.list_sandbox_snapshots()).await?;
        Ok(all.into_iter().map(Into::into).collect())
    }

    /// One sandbox snapshot; `SNAPSHOT_NOT_FOUND` for an unknown id.
    pub async fn sandbox_snapshot(&self, snap: &str) -> Result<SandboxSnapshotInfo, EngineError> {
        Ok(self.snapshot_record(snap).await?.into())
    }

    async fn snapshot_record(&self, snap: &str) -> Result<SandboxSnapshotRecord, EngineError> {
        let key = snap.to_string();
        self.inner
            .db
            .run(move |st| st.get_sandbox_snapshot(&key))
            .await?
            .ok_or_else(|| WorkspaceError::SnapshotNotFound(snap.to_string()).into())
    }

    /// Deletes a sandbox snapshot (sessions started from it keep their own
    /// copies); `SNAPSHOT_NOT_FOUND` for an unknown id.
    pub async fn delete_sandbox_snapshot(&self, snap: &str) -> Result<(), EngineError> {
        let rec = self.snapshot_record(snap).await?;
        self.free_sandbox_snapshot(&rec).await?;
        let key = snap.to_string();
        self.inner
            .db
            .run(move |st| st.delete_sandbox_snapshot(&key))
            .await?;
        Ok(())
    }

    /// Frees a sandbox snapshot's storage: its copy of the sandbox's state
    /// and its workspace snapshot.
    async fn free_sandbox_snapshot(&self, snap: &SandboxSnapshotRecord) -> Result<(), EngineError> {
        self.inner
            .runtime
            .delete_sandbox_snapshot(&snap.id)
            .await
            .map_err(EngineError::runtime("deleting the sandbox snapshot"))?;
        if let (Some(ws), Some(ws_snap)) = (&snap.workspace_id, &snap.workspace_snapshot) {
            match self.delete_snapshot(ws, ws_snap).await {
                Ok(()) => {}
                // The workspace (or that snapshot of it) was deleted since.
                Err(EngineError::Workspace(
                    WorkspaceError::NotFound(_) | WorkspaceError::SnapshotNotFound(_),
                )) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// What a create from snapshot `snap` starts on: its image, and the
    /// persistent workspace to give the new session (made from the
    /// snapshot's workspace snapshot, named `<workspace>-copy-<hex>`), if
    /// it had one.
    pub(crate) async fn prepare_from_snapshot(
        &self,
        snap: &str,
    ) -> Result<(String, Option<String>), EngineError> {
        let rec = self.snapshot_record(snap).await?;
        let ws = match (&rec.workspace_id, &rec.workspace_snapshot) {
            (Some(ws), Some(ws_snap)) => {
                let new_ws = copy_name(ws);
                let new_ws = new_ws.as_str();
                self.create_workspace(CreateWorkspace {
                    id: new_ws.to_string(),
                    from_snapshot: Some((ws.clone(), ws_snap.clone())),
                    ..Default::default()
                })
                .await?;
                Some(new_ws.to_string())
            }
            _ => None,
        };
        Ok((rec.image, ws))
    }

    /// `count` new sessions, each on a copy of session `id`'s filesystem
    /// state (a snapshot taken for them and deleted after), with its
    /// image, TTL, network policy and metadata; a persistent workspace is
    /// copied into a new workspace per child (named after it). A
    /// hibernated session is woken first. `count` is 1 to
    /// `max_fork_count`; a child that fails to start ends the fork with
    /// that error (the children started before it are destroyed).
    pub async fn fork_session(
        &self,
        id: &str,
        count: u64,
    ) -> Result<Vec<SessionInfo>, EngineError> {
        let (e, id) = (self.clone(), id.to_string());
        self.to_the_end(async move {
            let done = e.fork_now(&id, count).await;
            done.map_err(|x| e.ended_meanwhile(&id, x))
        })
        .await
    }

    async fn fork_now(&self, id: &str, count: u64) -> Result<Vec<SessionInfo>, EngineError> {
        let max = self.inner.cfg.max_fork_count;
        if count == 0 || count > max {
            return Err(EngineError::InvalidRequest(format!(
                "count must be 1 to {max} (this daemon's max_fork_count), got {count}"
            )));
        }
        let parent = self.inner.sessions.get(id)?.info();
        let snap = self
            .take_snapshot(id, Some(format!("fork of {id}")))
            .await?;
        let mut children = Vec::new();
        let mut failed = None;
        for _ in 0..count {
            let req = CreateSession {
                from_snapshot: Some(snap.id.clone()),
                ttl_seconds: Some(parent.ttl_seconds),
                // Within today's cap (the parent's may predate a lower one).
                disk_limit_mb: parent
                    .disk_limit_mb
                    .map(|mb| mb.min(self.inner.cfg.max_disk_limit_mb) as i64),
                network: Some(crate::NetworkRequest::from_policy(&parent.network)),
                metadata: parent.metadata.clone(),
                on_timeout: Some(parent.on_timeout),
                idle_timeout_seconds: Some(parent.idle_timeout_seconds.unwrap_or(0)),
                ..Default::default()
            };
            match self.create_session(req).await {
                Ok(info) => children.push(info),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        // The children do not depend on it: it is unlisted now and its
        // storage freed after the answer.
        let key = snap.id.clone();
        if let Err(e) = self
            .inner
            .db
            .run(move |st| st.delete_sandbox_snapshot(&key))
            .await
        {
            tracing::warn!(session = %id, "forgetting a fork's snapshot: {e}");
        }
        let engine = self.clone();
        let (sid, rec) = (id.to_string(), snap);
        self.inner.steps.spawn(async move {
            if let Err(e) = engine.free_sandbox_snapshot(&rec).await {
                tracing::warn!(session = %sid, "deleting a fork's snapshot: {e}");
            }
        });
        if let Some(e) = failed {
            for c in &children {
                let _ = self.destroy_session(&c.id).await;
                // Its workspace is this fork's copy (of the parent's, or
                // named after the child): nobody else knows of it.
                if let Some(ws) = &c.workspace_id {
                    if let Err(d) = self.delete_workspace(ws).await {
                        tracing::warn!(workspace = %ws, "deleting a failed fork's copy: {d}");
                    }
                }
            }
            return Err(e);
        }
        Ok(children)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_of_workspaces_have_valid_telling_names() {
        for ws in ["w", "project-7", &"x".repeat(64)] {
            let c = copy_name(ws);
            crate::check_workspace_id(&c).unwrap();
            assert!(c.starts_with(&ws[..ws.len().min(40)]), "{c}");
            assert!(c.contains("-copy-"), "{c}");
        }
    }
}
