//! Persistent workspaces: named filesystems mounted at `/workspace`,
//! created on first use or explicitly, kept after their sessions, listed,
//! deleted (never while mounted) and reachable without a session.
//!
//! A delete never races a mount: a create registers the workspace in
//! `ws_guard.mounting` (refused while it is being deleted) until its session
//! is listed, and a delete checks the live sessions and `mounting` and marks
//! the id `deleting` in the same critical section.

use crate::session::valid_workspace_id;
use crate::{
    CreateWorkspace, DirEntry, Engine, EngineError, FileContent, SnapshotInfo, WorkspaceInfo,
};
use sandkasten_protocol::{Request, Response};
use sandkasten_runtime::RuntimeError;
use sandkasten_store::{SnapshotRecord, WorkspaceRecord};
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

/// Smallest workspace quota (a btrfs image needs room for its metadata).
pub const MIN_QUOTA_BYTES: u64 = 128 * 1024 * 1024;

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
            quota_bytes: self.config().workspace_default_quota_bytes,
            labels: Default::default(),
        })?;
        let quota = self
            .inner
            .store
            .get_workspace(id)?
            .and_then(|r| r.quota_bytes);
        self.inner
            .runtime
            .ensure_workspace(id, quota)
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
        if let Some(q) = req.quota_bytes {
            if q < MIN_QUOTA_BYTES {
                return Err(EngineError::InvalidRequest(format!(
                    "quota must be at least {MIN_QUOTA_BYTES} bytes (128 MiB)"
                )));
            }
        }
        let source = match &req.from_snapshot {
            Some((src, snap)) => Some(self.snapshot_record(src, snap)?),
            None => None,
        };
        let source_quota = match &source {
            Some(s) => self.record(&s.workspace_id)?.quota_bytes,
            None => None,
        };
        let quota = req
            .quota_bytes
            .or(source_quota)
            .or(self.config().workspace_default_quota_bytes);
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
            quota_bytes: quota,
            labels: req.labels,
        };
        let Some(snap) = source else {
            self.insert_and_create(&rec).await?;
            tracing::info!(workspace = %req.id, "workspace created");
            return self.info(rec).await;
        };
        if self.inner.store.get_workspace(&req.id)?.is_some() {
            return Err(EngineError::AlreadyExists(format!("workspace {}", req.id)));
        }
        // No session may mount the new workspace before its copy is done.
        self.begin_exclusive(&req.id)?;
        let result = async {
            self.insert_and_create(&rec).await?;
            self.fill_from_snapshot(&req.id, &snap).await
        }
        .await;
        self.end_exclusive(&req.id);
        result?;
        tracing::info!(workspace = %req.id, snapshot = %snap.id, "workspace created from a snapshot");
        self.info(rec).await
    }

    async fn insert_and_create(&self, rec: &WorkspaceRecord) -> Result<(), EngineError> {
        if !self.inner.store.insert_workspace(rec)? {
            return Err(EngineError::AlreadyExists(format!("workspace {}", rec.id)));
        }
        if let Err(e) = self
            .inner
            .runtime
            .ensure_workspace(&rec.id, rec.quota_bytes)
            .await
        {
            let _ = self.inner.store.delete_workspace(&rec.id);
            return Err(rt("creating the workspace")(e));
        }
        Ok(())
    }

    pub async fn get_workspace(&self, id: &str) -> Result<WorkspaceInfo, EngineError> {
        let rec = self.record(id)?;
        self.info(rec).await
    }

    /// `WorkspaceInUse` while a live session has it mounted.
    pub async fn delete_workspace(&self, id: &str) -> Result<(), EngineError> {
        self.record(id)?;
        self.begin_exclusive(id)?;
        let result = async {
            self.inner
                .runtime
                .delete_workspace(id)
                .await
                .map_err(rt("deleting the workspace"))?;
            self.inner.store.delete_snapshots_of(id)?;
            self.inner.store.delete_workspace(id)?;
            Ok(())
        }
        .await;
        self.end_exclusive(id);
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
        crate::session::file_reply(resp)
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
            other => Err(crate::session::unexpected(other)),
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
            other => Err(crate::session::unexpected(other)),
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
            other => Err(crate::session::unexpected(other)),
        }
    }
}

/// Writes the tar chunks an export produces into a channel (blocking).
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<std::io::Result<Vec<u8>>>,
    buf: Vec<u8>,
    /// Told when the first chunk is on its way, so that the export's
    /// caller answers only then (see [`Engine::export_workspace`]).
    started: Option<tokio::sync::oneshot::Sender<Result<(), RuntimeError>>>,
}

/// Size of the chunks an export streams.
const EXPORT_CHUNK: usize = 256 * 1024;

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= EXPORT_CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(EXPORT_CHUNK));
        let sent = self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the client stopped reading the export",
            )
        });
        if let Some(started) = self.started.take() {
            let _ = started.send(Ok(()));
        }
        sent
    }
}

impl Engine {
    /// Holds `id` like a mount (delete, restore and import answer
    /// `WorkspaceInUse`) until the guard is dropped.
    fn hold(&self, id: &str) -> Result<MountGuard, EngineError> {
        let mut g = self.inner.ws_guard.lock().unwrap();
        if g.deleting.contains(id) {
            return Err(EngineError::WorkspaceInUse {
                id: id.into(),
                session: "(being deleted, restored or imported)".into(),
            });
        }
        *g.mounting.entry(id.to_string()).or_default() += 1;
        Ok(MountGuard {
            engine: self.clone(),
            id: id.to_string(),
        })
    }

    /// Marks `id` busy for an operation that replaces its content:
    /// `WorkspaceInUse` while a session mounts it or anything holds it.
    fn begin_exclusive(&self, id: &str) -> Result<(), EngineError> {
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
                session: "(being created, exported or changed)".into(),
            });
        }
        Ok(())
    }

    fn end_exclusive(&self, id: &str) {
        self.inner.ws_guard.lock().unwrap().deleting.remove(id);
    }

    /// Copies snapshot `snap` into the freshly created workspace `id`
    /// (marked busy by the caller); deletes `id` again when that fails.
    async fn fill_from_snapshot(&self, id: &str, snap: &SnapshotRecord) -> Result<(), EngineError> {
        let source = self.hold(&snap.workspace_id)?;
        let result = self
            .inner
            .runtime
            .copy_snapshot(&snap.workspace_id, &snap.id, id)
            .await
            .map_err(rt("copying the snapshot"));
        drop(source);
        if result.is_err() {
            let _ = self.inner.runtime.delete_workspace(id).await;
            let _ = self.inner.store.delete_workspace(id);
        }
        result
    }

    /// Streams workspace `id` as a tar, in chunks. Returns once the first
    /// chunk is ready, so a failure before it (a runtime without export,
    /// a snapshot that cannot be taken, a missing volume) is an error
    /// response, never a 200 with an empty body; an error later ends the
    /// stream with it. Consistent (a temporary snapshot) where the runtime
    /// can snapshot.
    pub async fn export_workspace(
        &self,
        id: &str,
    ) -> Result<tokio::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>, EngineError> {
        self.record(id)?;
        let guard = self.hold(id)?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let runtime = self.inner.runtime.clone();
        let id = id.to_string();
        let task_id = id.clone();
        tokio::task::spawn_blocking(move || {
            let id = task_id;
            let mut w = ChannelWriter {
                tx: tx.clone(),
                buf: Vec::with_capacity(EXPORT_CHUNK),
                started: Some(started_tx),
            };
            let r = runtime.export_workspace(&id, &mut w);
            let r = match r {
                Err(e) => match w.started.take() {
                    // Nothing sent yet: the caller answers with the error.
                    Some(started) => {
                        drop(guard);
                        let _ = started.send(Err(e));
                        return;
                    }
                    None => Err(std::io::Error::other(e.to_string())),
                },
                Ok(()) => std::io::Write::flush(&mut w).map(|()| {
                    // An export of nothing at all is an empty body.
                    if let Some(started) = w.started.take() {
                        let _ = started.send(Ok(()));
                    }
                }),
            };
            drop(guard);
            if let Err(e) = r {
                if e.kind() != std::io::ErrorKind::BrokenPipe {
                    tracing::warn!(workspace = %id, "export failed: {e}");
                    let _ = tx.blocking_send(Err(e));
                }
            }
        });
        match started.await {
            Ok(Ok(())) => Ok(rx),
            Ok(Err(e)) => {
                tracing::debug!(workspace = %id, "export refused: {e}");
                Err(rt("exporting the workspace")(e))
            }
            Err(_) => Err(EngineError::Internal(format!(
                "the export of workspace {id} ended without a result"
            ))),
        }
    }

    /// Where an upload to import may be spooled.
    pub fn scratch_dir(&self) -> std::path::PathBuf {
        self.inner.runtime.scratch_dir()
    }

    /// Replaces workspace `id`'s content with the tar at `archive`;
    /// `WorkspaceInUse` while mounted. The workspace must exist.
    pub async fn import_workspace(
        &self,
        id: &str,
        archive: std::path::PathBuf,
    ) -> Result<(), EngineError> {
        self.record(id)?;
        self.begin_exclusive(id)?;
        let result = self
            .inner
            .runtime
            .import_workspace(id, archive)
            .await
            .map_err(rt("importing into the workspace"));
        self.end_exclusive(id);
        if result.is_ok() {
            tracing::info!(workspace = %id, "workspace content imported");
        }
        result
    }
}

fn snapshot_info(r: SnapshotRecord) -> SnapshotInfo {
    SnapshotInfo {
        id: r.id,
        workspace_id: r.workspace_id,
        created_at: from_ms(r.created_at_ms),
        label: r.label,
    }
}

impl Engine {
    /// A consistent point-in-time snapshot, also while sessions write.
    pub async fn create_snapshot(
        &self,
        id: &str,
        label: Option<String>,
    ) -> Result<SnapshotInfo, EngineError> {
        self.record(id)?;
        if let Some(l) = &label {
            if l.chars().count() > 256 {
                return Err(EngineError::InvalidRequest(
                    "label must be at most 256 characters".into(),
                ));
            }
        }
        let snap = format!("snap-{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
        self.inner
            .runtime
            .snapshot_workspace(id, &snap)
            .await
            .map_err(rt("snapshotting the workspace"))?;
        let rec = SnapshotRecord {
            id: snap,
            workspace_id: id.to_string(),
            created_at_ms: now_ms(),
            label,
        };
        self.inner.store.insert_snapshot(&rec)?;
        tracing::info!(workspace = %id, snapshot = %rec.id, "snapshot created");
        Ok(snapshot_info(rec))
    }

    pub async fn list_snapshots(&self, id: &str) -> Result<Vec<SnapshotInfo>, EngineError> {
        self.record(id)?;
        Ok(self
            .inner
            .store
            .list_snapshots(id)?
            .into_iter()
            .map(snapshot_info)
            .collect())
    }

    fn snapshot_record(&self, id: &str, snap: &str) -> Result<SnapshotRecord, EngineError> {
        self.record(id)?;
        self.inner
            .store
            .get_snapshot(snap)?
            .filter(|r| r.workspace_id == id)
            .ok_or_else(|| EngineError::SnapshotNotFound(snap.to_string()))
    }

    pub async fn delete_snapshot(&self, id: &str, snap: &str) -> Result<(), EngineError> {
        self.snapshot_record(id, snap)?;
        self.inner
            .runtime
            .delete_snapshot(id, snap)
            .await
            .map_err(rt("deleting the snapshot"))?;
        self.inner.store.delete_snapshot(snap)?;
        Ok(())
    }

    /// Restores a snapshot in place; `WorkspaceInUse` while mounted.
    pub async fn restore_snapshot(&self, id: &str, snap: &str) -> Result<(), EngineError> {
        self.snapshot_record(id, snap)?;
        self.begin_exclusive(id)?;
        let result = self
            .inner
            .runtime
            .restore_snapshot(id, snap)
            .await
            .map_err(rt("restoring the snapshot"));
        self.end_exclusive(id);
        if result.is_ok() {
            tracing::info!(workspace = %id, snapshot = %snap, "snapshot restored");
        }
        result
    }
}

/// What the cleanup policy decides for one pass.
#[derive(Debug, PartialEq)]
struct CleanupPlan {
    /// (id, reason) in deletion order.
    delete: Vec<(String, String)>,
    /// Time until the next workspace becomes idle-expired.
    next_idle_ms: Option<i64>,
}

/// One workspace as the policy sees it.
struct Candidate {
    id: String,
    last_used_ms: i64,
    size: u64,
    mounted: bool,
}

/// The pure policy: idle ones first, then least recently used ones while
/// the total is over the limit. Mounted workspaces are never chosen.
fn plan_cleanup(
    mut ws: Vec<Candidate>,
    now_ms: i64,
    max_idle_ms: Option<i64>,
    max_total: Option<u64>,
) -> CleanupPlan {
    ws.sort_by_key(|w| (w.last_used_ms, w.id.clone()));
    let mut delete = Vec::new();
    let mut next_idle_ms: Option<i64> = None;
    let mut kept = Vec::new();
    for w in ws {
        if let Some(max_idle) = max_idle_ms {
            let idle = now_ms - w.last_used_ms;
            if !w.mounted && idle > max_idle {
                delete.push((
                    w.id.clone(),
                    format!("unused for {:.1} days", idle as f64 / 86_400_000.0),
                ));
                continue;
            }
            if !w.mounted {
                let left = max_idle - idle;
                next_idle_ms = Some(next_idle_ms.map_or(left, |n| n.min(left)));
            }
        }
        kept.push(w);
    }
    if let Some(max_total) = max_total {
        let mut total: u64 = kept.iter().map(|w| w.size).sum();
        for w in kept.iter().filter(|w| !w.mounted) {
            if total <= max_total {
                break;
            }
            total -= w.size;
            delete.push((
                w.id.clone(),
                format!("all workspaces over {max_total} bytes; least recently used"),
            ));
        }
    }
    CleanupPlan {
        delete,
        next_idle_ms,
    }
}

impl Engine {
    /// Applies `workspace.max_idle_days` and `workspace.max_total_gb`: at
    /// start, whenever a session with a workspace ends, and when the next
    /// workspace becomes idle-expired (a timer, not a poll); at least hourly
    /// for the size limit.
    pub(crate) async fn cleanup_loop(self, shutdown: tokio_util::sync::CancellationToken) {
        let cfg = self.config();
        if !cfg.workspace_enabled
            || (cfg.workspace_max_idle.is_none() && cfg.workspace_max_total_bytes.is_none())
        {
            return;
        }
        loop {
            let next = match self.cleanup_once().await {
                Ok(next) => next,
                Err(e) => {
                    tracing::warn!("workspace cleanup: {e}");
                    None
                }
            };
            let hour = std::time::Duration::from_secs(3600);
            let wait = next.map_or(hour, |ms| {
                std::time::Duration::from_millis(ms.max(0) as u64 + 1).min(hour)
            });
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.inner.cleanup_wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn cleanup_once(&self) -> Result<Option<i64>, EngineError> {
        let cfg = self.config();
        let mut candidates = Vec::new();
        for rec in self.inner.store.list_workspaces()? {
            let mounted = self.user_of(&rec.id).is_some()
                || self
                    .inner
                    .ws_guard
                    .lock()
                    .unwrap()
                    .mounting
                    .contains_key(&rec.id);
            let size = if cfg.workspace_max_total_bytes.is_some() {
                self.inner
                    .runtime
                    .workspace_size(&rec.id)
                    .await
                    .map_err(rt("measuring a workspace"))?
                    .unwrap_or(0)
            } else {
                0
            };
            candidates.push(Candidate {
                last_used_ms: rec.last_used_at_ms.unwrap_or(rec.created_at_ms),
                id: rec.id,
                size,
                mounted,
            });
        }
        let plan = plan_cleanup(
            candidates,
            now_ms(),
            cfg.workspace_max_idle.map(|d| d.as_millis() as i64),
            cfg.workspace_max_total_bytes,
        );
        for (id, reason) in plan.delete {
            match self.delete_workspace(&id).await {
                Ok(()) => {
                    tracing::info!(workspace = %id, %reason, "workspace deleted by the cleanup policy")
                }
                // Mounted meanwhile: it stays.
                Err(EngineError::WorkspaceInUse { .. }) => {}
                Err(e) => tracing::warn!(workspace = %id, "cleanup could not delete: {e}"),
            }
        }
        Ok(plan.next_idle_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(id: &str, last: i64, size: u64, mounted: bool) -> Candidate {
        Candidate {
            id: id.into(),
            last_used_ms: last,
            size,
            mounted,
        }
    }

    #[test]
    fn idle_policy_deletes_old_unmounted_and_schedules_the_next() {
        let plan = plan_cleanup(
            vec![
                cand("old", 0, 1, false),
                cand("busy", 0, 1, true),
                cand("new", 900, 1, false),
            ],
            1000,
            Some(500),
            None,
        );
        let ids: Vec<&str> = plan.delete.iter().map(|(i, _)| i.as_str()).collect();
        assert_eq!(ids, vec!["old"]);
        assert_eq!(plan.next_idle_ms, Some(400));
    }

    #[test]
    fn size_policy_deletes_least_recently_used_until_under_the_limit() {
        let plan = plan_cleanup(
            vec![
                cand("c", 30, 100, false),
                cand("a", 10, 100, true),
                cand("b", 20, 100, false),
                cand("d", 40, 100, false),
            ],
            1000,
            None,
            Some(250),
        );
        let ids: Vec<&str> = plan.delete.iter().map(|(i, _)| i.as_str()).collect();
        // "a" is oldest but mounted; "b" then "c" go, leaving 200 bytes.
        assert_eq!(ids, vec!["b", "c"]);
    }

    /// What the fake runtime's export does.
    #[derive(Clone, Copy, PartialEq)]
    enum Export {
        /// The trait's default: unsupported.
        Default,
        /// Fails before writing anything.
        FailFirst,
        /// Writes `n` bytes, then fails.
        FailAfter(usize),
        /// Writes `n` bytes.
        Bytes(usize),
    }

    /// A runtime with workspaces only (no sandboxes), for the engine's
    /// export path.
    struct FakeRuntime(Export);

    fn nope<T>() -> Result<T, RuntimeError> {
        Err(RuntimeError::Unsupported("sandboxes".into(), "fake"))
    }

    #[async_trait::async_trait]
    impl sandkasten_runtime::Runtime for FakeRuntime {
        fn name(&self) -> &'static str {
            "fake"
        }
        async fn create(
            &self,
            _: sandkasten_runtime::SandboxSpec,
        ) -> Result<sandkasten_runtime::Sandbox, RuntimeError> {
            nope()
        }
        async fn attach(
            &self,
            h: &sandkasten_runtime::SandboxHandle,
        ) -> Result<sandkasten_runtime::Sandbox, RuntimeError> {
            Err(RuntimeError::Gone(h.id.clone()))
        }
        async fn destroy(&self, _: &sandkasten_runtime::SandboxHandle) -> Result<(), RuntimeError> {
            Ok(())
        }
        async fn stats(
            &self,
            _: &sandkasten_runtime::SandboxHandle,
        ) -> Result<sandkasten_runtime::SandboxStats, RuntimeError> {
            nope()
        }
        async fn list_images(&self) -> Result<Vec<sandkasten_runtime::ImageInfo>, RuntimeError> {
            Ok(Vec::new())
        }
        async fn import_image(
            &self,
            _: &str,
            _: std::path::PathBuf,
        ) -> Result<sandkasten_runtime::ImageInfo, RuntimeError> {
            nope()
        }
        async fn remove_image(&self, _: &str) -> Result<(), RuntimeError> {
            nope()
        }
        async fn list_sandboxes(&self) -> Result<Vec<String>, RuntimeError> {
            Ok(Vec::new())
        }
        async fn ensure_workspace(&self, _: &str, _: Option<u64>) -> Result<(), RuntimeError> {
            Ok(())
        }
        async fn delete_workspace(&self, _: &str) -> Result<(), RuntimeError> {
            Ok(())
        }
        async fn workspace_size(&self, _: &str) -> Result<Option<u64>, RuntimeError> {
            Ok(Some(0))
        }
        async fn snapshot_workspace(&self, _: &str, _: &str) -> Result<(), RuntimeError> {
            nope()
        }
        async fn delete_snapshot(&self, _: &str, _: &str) -> Result<(), RuntimeError> {
            nope()
        }
        async fn restore_snapshot(&self, _: &str, _: &str) -> Result<(), RuntimeError> {
            nope()
        }
        async fn workspace_file(&self, _: &str, _: Request) -> Result<Response, RuntimeError> {
            nope()
        }
        fn export_workspace(
            &self,
            id: &str,
            out: &mut (dyn std::io::Write + Send),
        ) -> Result<(), RuntimeError> {
            let write = |out: &mut (dyn std::io::Write + Send), n: usize| {
                out.write_all(&vec![7u8; n])
                    .map_err(|e| RuntimeError::io("writing", e))
            };
            match self.0 {
                Export::Default => Err(RuntimeError::Unsupported(
                    "workspace export".into(),
                    self.name(),
                )),
                Export::FailFirst => Err(RuntimeError::Other(format!("no volume for {id}"))),
                Export::FailAfter(n) => {
                    write(out, n)?;
                    Err(RuntimeError::Other("disk on fire".into()))
                }
                Export::Bytes(n) => write(out, n),
            }
        }
    }

    async fn engine_with(export: Export) -> (Engine, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(
            sandkasten_store::Store::open(&dir.path().join("db.sqlite")).unwrap(),
        );
        let engine = Engine::start(
            crate::EngineConfig::default(),
            std::sync::Arc::new(FakeRuntime(export)),
            store,
            tokio_util::sync::CancellationToken::new(),
        )
        .await
        .unwrap();
        engine
            .create_workspace(CreateWorkspace {
                id: "w".into(),
                quota_bytes: None,
                labels: Default::default(),
                from_snapshot: None,
            })
            .await
            .unwrap();
        (engine, dir)
    }

    /// Everything the stream yields: the bytes, and whether it ended with
    /// an error.
    async fn drain(mut rx: tokio::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>) -> (usize, bool) {
        let (mut n, mut failed) = (0, false);
        while let Some(item) = rx.recv().await {
            match item {
                Ok(chunk) => n += chunk.len(),
                Err(_) => failed = true,
            }
        }
        (n, failed)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_export_that_fails_before_its_first_byte_is_an_error_not_a_stream() {
        let (engine, _dir) = engine_with(Export::Default).await;
        match engine.export_workspace("w").await {
            Err(EngineError::InvalidRequest(m)) => {
                assert!(m.contains("not supported by the fake runtime"), "{m}")
            }
            Err(other) => panic!("unsupported export: {other:?}"),
            Ok(_) => panic!("an unsupported export answered with a stream"),
        }
        // The workspace is not left held: it can be deleted.
        engine.delete_workspace("w").await.unwrap();

        let (engine, _dir) = engine_with(Export::FailFirst).await;
        match engine.export_workspace("w").await {
            Err(EngineError::Runtime { source, .. }) => {
                assert!(source.to_string().contains("no volume for w"), "{source}")
            }
            Err(other) => panic!("failed export: {other:?}"),
            Ok(_) => panic!("a failed export answered with a stream"),
        }
        engine.delete_workspace("w").await.unwrap();
        assert!(matches!(
            engine.export_workspace("nope").await,
            Err(EngineError::WorkspaceNotFound(_))
        ));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_export_streams_and_a_late_failure_ends_the_stream() {
        // Smaller than a chunk, larger than several, and nothing at all.
        for n in [10, 3 * EXPORT_CHUNK + 5, 0] {
            let (engine, _dir) = engine_with(Export::Bytes(n)).await;
            let rx = engine.export_workspace("w").await.unwrap();
            assert_eq!(drain(rx).await, (n, false), "export of {n} bytes");
            engine.delete_workspace("w").await.unwrap();
        }
        // An error after the first chunk went out: the stream carries it
        // (the client sees a truncated body).
        let n = 2 * EXPORT_CHUNK;
        let (engine, _dir) = engine_with(Export::FailAfter(n)).await;
        let rx = engine.export_workspace("w").await.unwrap();
        let (got, failed) = drain(rx).await;
        assert!(failed, "the late failure was not reported");
        assert!(got >= EXPORT_CHUNK && got <= n, "{got}");
    }

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
