//! Persistent workspaces: named filesystems mounted at `/workspace`,
//! created on first use or explicitly, kept after their sessions, listed,
//! deleted (never while mounted) and reachable without a session.
//!
//! A delete never races a mount: a create registers the workspace in
//! `ws_guard.mounting` (refused while it is being deleted) until its session
//! is listed, and a delete checks the live sessions and `mounting` and marks
//! the id `deleting` in the same critical section.

use crate::session::valid_workspace_id;
use crate::{CreateWorkspace, DirEntry, Engine, EngineError, FileContent, WorkspaceInfo};
use sandkasten_protocol::{ErrorKind, Request, Response};
use sandkasten_runtime::RuntimeError;
use sandkasten_store::WorkspaceRecord;
use time::OffsetDateTime;

fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

fn from_ms(v: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(v as i128 * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Runtime failures map as for sessions (unsupported -> 400, not 500).
fn rt(context: &'static str) -> impl FnOnce(RuntimeError) -> EngineError {
    crate::session::runtime_err(context)
}

/// Keeps a workspace from being deleted while a session mounts it.
pub(crate) struct MountGuard {
    engine: Engine,
    id: String,
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        let mut g = self.engine.inner.ws_guard.lock().unwrap();
        if let Some(n) = g.mounting.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                g.mounting.remove(&self.id);
            }
        }
    }
}

/// Maps a client path onto the workspace root: `a/b`, `/a/b` and
/// `/workspace/a/b` all name `<workspace>/a/b` (given to the runtime as
/// `/a/b`, resolved strictly inside the workspace).
fn inside(path: &str) -> Result<String, EngineError> {
    if path.contains('\0') {
        return Err(EngineError::InvalidPath(
            "path must not contain NUL bytes".into(),
        ));
    }
    let rest = path
        .strip_prefix("/workspace")
        .filter(|r| r.is_empty() || r.starts_with('/'))
        .unwrap_or(path);
    let rest = rest.trim_start_matches('/');
    Ok(format!("/{rest}"))
}

/// The path as a session would see it.
fn as_session_path(p: &str) -> String {
    let p = p.trim_start_matches('/');
    if p.is_empty() {
        "/workspace".into()
    } else {
        format!("/workspace/{p}")
    }
}

impl Engine {
    fn check_enabled(&self) -> Result<(), EngineError> {
        if self.config().workspace_enabled {
            Ok(())
        } else {
            Err(EngineError::WorkspaceDisabled)
        }
    }

    fn check_id(id: &str) -> Result<(), EngineError> {
        if valid_workspace_id(id) {
            Ok(())
        } else {
            Err(EngineError::InvalidWorkspace(format!(
                "invalid workspace id {id:?}: use 1-64 characters of [A-Za-z0-9._-], not starting with '.' or '-'"
            )))
        }
    }

    /// Ensures workspace `id` exists (row and storage) and holds it against
    /// deletion until the returned guard is dropped.
    pub(crate) async fn begin_mount(&self, id: &str) -> Result<MountGuard, EngineError> {
        {
            let mut g = self.inner.ws_guard.lock().unwrap();
            if g.deleting.contains(id) {
                return Err(EngineError::WorkspaceInUse {
                    id: id.into(),
                    session: "(being deleted)".into(),
                });
            }
            *g.mounting.entry(id.to_string()).or_default() += 1;
        }
        let guard = MountGuard {
            engine: self.clone(),
            id: id.to_string(),
        };
        let now = now_ms();
        self.inner.store.insert_workspace(&WorkspaceRecord {
            id: id.to_string(),
            created_at_ms: now,
            last_used_at_ms: Some(now),
            quota_bytes: None,
            labels: Default::default(),
        })?;
        self.inner
            .runtime
            .ensure_workspace(id)
            .await
            .map_err(rt("creating the workspace"))?;
        self.inner.store.touch_workspace(id, now)?;
        Ok(guard)
    }

    /// The session mounting `id`, if any.
    fn user_of(&self, id: &str) -> Option<String> {
        self.session_ids_with_workspace(id).into_iter().next()
    }

    async fn info(&self, rec: WorkspaceRecord) -> Result<WorkspaceInfo, EngineError> {
        let size = self
            .inner
            .runtime
            .workspace_size(&rec.id)
            .await
            .map_err(rt("measuring the workspace"))?;
        Ok(WorkspaceInfo {
            in_use: self.user_of(&rec.id).is_some(),
            size_bytes: size.unwrap_or(0),
            created_at: from_ms(rec.created_at_ms),
            last_used_at: rec.last_used_at_ms.map(from_ms),
            quota_bytes: rec.quota_bytes,
            labels: rec.labels,
            id: rec.id,
        })
    }

    fn record(&self, id: &str) -> Result<WorkspaceRecord, EngineError> {
        self.check_enabled()?;
        Self::check_id(id)?;
        self.inner
            .store
            .get_workspace(id)?
            .ok_or_else(|| EngineError::WorkspaceNotFound(id.to_string()))
    }

    pub async fn list_workspaces(&self) -> Result<Vec<WorkspaceInfo>, EngineError> {
        self.check_enabled()?;
        let mut out = Vec::new();
        for rec in self.inner.store.list_workspaces()? {
            out.push(self.info(rec).await?);
        }
        Ok(out)
    }

    /// Explicit create; `AlreadyExists` when the id is taken.
    pub async fn create_workspace(
        &self,
        req: CreateWorkspace,
    ) -> Result<WorkspaceInfo, EngineError> {
        self.check_enabled()?;
        Self::check_id(&req.id)?;
        if req.quota_bytes.is_some() {
            return Err(EngineError::InvalidRequest(
                "workspace quotas are not supported by this daemon yet; omit quota_bytes".into(),
            ));
        }
        if self
            .inner
            .ws_guard
            .lock()
            .unwrap()
            .deleting
            .contains(&req.id)
        {
            return Err(EngineError::WorkspaceInUse {
                id: req.id,
                session: "(being deleted)".into(),
            });
        }
        let rec = WorkspaceRecord {
            id: req.id.clone(),
            created_at_ms: now_ms(),
            last_used_at_ms: None,
            quota_bytes: req.quota_bytes,
            labels: req.labels,
        };
        if !self.inner.store.insert_workspace(&rec)? {
            return Err(EngineError::AlreadyExists(format!("workspace {}", req.id)));
        }
        if let Err(e) = self.inner.runtime.ensure_workspace(&req.id).await {
            let _ = self.inner.store.delete_workspace(&req.id);
            return Err(rt("creating the workspace")(e));
        }
        tracing::info!(workspace = %req.id, "workspace created");
        self.info(rec).await
    }

    pub async fn get_workspace(&self, id: &str) -> Result<WorkspaceInfo, EngineError> {
        let rec = self.record(id)?;
        self.info(rec).await
    }

    /// `WorkspaceInUse` while a live session has it mounted.
    pub async fn delete_workspace(&self, id: &str) -> Result<(), EngineError> {
        self.record(id)?;
        {
            let mut g = self.inner.ws_guard.lock().unwrap();
            if let Some(session) = self.user_of(id) {
                return Err(EngineError::WorkspaceInUse {
                    id: id.into(),
                    session,
                });
            }
            if g.mounting.contains_key(id) || !g.deleting.insert(id.to_string()) {
                return Err(EngineError::WorkspaceInUse {
                    id: id.into(),
                    session: "(being created)".into(),
                });
            }
        }
        let result = async {
            self.inner
                .runtime
                .delete_workspace(id)
                .await
                .map_err(rt("deleting the workspace"))?;
            self.inner.store.delete_workspace(id)?;
            Ok(())
        }
        .await;
        self.inner.ws_guard.lock().unwrap().deleting.remove(id);
        if result.is_ok() {
            tracing::info!(workspace = %id, "workspace deleted");
        }
        result
    }

    async fn ws_file(&self, id: &str, req: Request) -> Result<Response, EngineError> {
        self.record(id)?;
        let resp = self
            .inner
            .runtime
            .workspace_file(id, req)
            .await
            .map_err(rt("accessing workspace files"))?;
        match resp {
            Response::Error { kind, message } => Err(match kind {
                ErrorKind::NotFound => EngineError::FileNotFound(message),
                ErrorKind::PermissionDenied => EngineError::PermissionDenied(message),
                ErrorKind::AlreadyExists => EngineError::AlreadyExists(message),
                ErrorKind::InvalidRequest => EngineError::InvalidRequest(message),
                ErrorKind::Io => EngineError::Internal(message),
                _ => EngineError::InvalidPath(message),
            }),
            ok => Ok(ok),
        }
    }

    /// Session-less file access. Paths are inside the workspace: `a/b`,
    /// `/a/b` and `/workspace/a/b` all name `<workspace>/a/b`.
    pub async fn workspace_list_dir(
        &self,
        id: &str,
        path: &str,
    ) -> Result<Vec<DirEntry>, EngineError> {
        match self
            .ws_file(
                id,
                Request::ListDir {
                    path: inside(path)?,
                },
            )
            .await?
        {
            Response::Entries(e) => Ok(e),
            other => Err(EngineError::Internal(format!(
                "unexpected reply: {other:?}"
            ))),
        }
    }

    pub async fn workspace_read_file(
        &self,
        id: &str,
        path: &str,
        max_bytes: Option<u64>,
    ) -> Result<FileContent, EngineError> {
        let cap = self.config().max_read_bytes;
        let max_bytes = Some(max_bytes.map_or(cap, |m| m.min(cap)));
        match self
            .ws_file(
                id,
                Request::ReadFile {
                    path: inside(path)?,
                    max_bytes,
                },
            )
            .await?
        {
            Response::FileData {
                path,
                data,
                truncated,
            } => Ok(FileContent {
                path: as_session_path(&path),
                data,
                truncated,
            }),
            other => Err(EngineError::Internal(format!(
                "unexpected reply: {other:?}"
            ))),
        }
    }

    /// Returns the path written, as `/workspace/...`.
    pub async fn workspace_write_file(
        &self,
        id: &str,
        path: &str,
        data: Vec<u8>,
    ) -> Result<String, EngineError> {
        let p = inside(path)?;
        if p == "/" {
            return Err(EngineError::InvalidPath(
                "path names the workspace root, not a file".into(),
            ));
        }
        match self
            .ws_file(
                id,
                Request::WriteFile {
                    path: p.clone(),
                    data,
                    mode: None,
                },
            )
            .await?
        {
            Response::Ok => Ok(as_session_path(&p)),
            other => Err(EngineError::Internal(format!(
                "unexpected reply: {other:?}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_paths_map_inside_the_workspace() {
        assert_eq!(inside("a/b").unwrap(), "/a/b");
        assert_eq!(inside("/a/b").unwrap(), "/a/b");
        assert_eq!(inside("/workspace/a/b").unwrap(), "/a/b");
        assert_eq!(inside("/workspace").unwrap(), "/");
        assert_eq!(inside("/workspaces/x").unwrap(), "/workspaces/x");
        assert_eq!(inside("").unwrap(), "/");
        assert!(inside("a\0b").is_err());
        assert_eq!(as_session_path("/a/b"), "/workspace/a/b");
        assert_eq!(as_session_path("/"), "/workspace");
    }
}
