//! Persistent workspaces: named filesystems mounted at `/workspace`,
//! created on first use or explicitly, kept after their sessions, listed,
//! deleted (never while mounted) and reachable without a session.
//!
//! A delete never races a mount: [`WorkspaceLocks`] owns which workspaces
//! are being mounted (by creates in flight, exports) and which are being
//! changed (deleted, restored, imported); a create registers its workspace
//! as mounting until its session is listed (refused while it is being
//! changed), and a change checks the live sessions and the mounts and
//! marks the id in the same critical section.

use crate::db::Db;
use crate::error::{Holder, WorkspaceError};
use crate::session::{from_ms, ms, now};
use crate::sessions::SessionTable;
use crate::{
    CreateWorkspace, DirEntry, Engine, EngineError, FileReader, SnapshotInfo, WorkspaceInfo,
};
use sandkasten_runtime::{ExportStream, FileOp, Runtime, RuntimeError};
use sandkasten_store::{SnapshotRecord, WorkspaceRecord};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

fn now_ms() -> i64 {
    ms(now())
}

/// Valid workspace ids, the one rule: 1–64 of `[A-Za-z0-9._-]`, not
/// starting with `.` or `-`.
pub fn check_workspace_id(id: &str) -> Result<(), WorkspaceError> {
    let valid = !id.is_empty()
        && id.len() <= 64
        && !id.starts_with(['.', '-'])
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(WorkspaceError::InvalidId(id.to_string()))
    }
}

/// A runtime failure on workspace `id`: a missing volume is a missing
/// workspace, a busy one is in use; the rest as for every runtime call.
fn rt(id: &str, context: &'static str) -> impl FnOnce(RuntimeError) -> EngineError {
    let id = id.to_string();
    move |e| match e {
        RuntimeError::NotFound(_) => WorkspaceError::NotFound(id).into(),
        RuntimeError::Busy(_) => WorkspaceError::InUse {
            id,
            holder: Holder::StillMounted,
        }
        .into(),
        e => EngineError::runtime(context)(e),
    }
}

/// Smallest workspace quota (a btrfs image needs room for its metadata).
pub const MIN_QUOTA_BYTES: u64 = sandkasten_runtime::MIN_QUOTA_BYTES;

/// Which workspaces are mounted or held, and which are being changed.
pub(crate) struct WorkspaceLocks {
    sessions: Arc<SessionTable>,
    state: Arc<Mutex<LockState>>,
}

#[derive(Default)]
struct LockState {
    /// Holds by creates in flight and exports (count per id).
    mounting: HashMap<String, usize>,
    /// Ids being deleted, restored or imported.
    changing: HashSet<String>,
}

/// Keeps a workspace from being changed until dropped.
pub(crate) struct MountGuard {
    state: Arc<Mutex<LockState>>,
    id: String,
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        let mut g = self.state.lock().unwrap();
        if let Some(n) = g.mounting.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                g.mounting.remove(&self.id);
            }
        }
    }
}

/// An exclusive hold for a change of content; released when dropped.
pub(crate) struct ChangeGuard {
    state: Arc<Mutex<LockState>>,
    id: String,
}

impl Drop for ChangeGuard {
    fn drop(&mut self) {
        self.state.lock().unwrap().changing.remove(&self.id);
    }
}

impl WorkspaceLocks {
    pub(crate) fn new(sessions: Arc<SessionTable>) -> WorkspaceLocks {
        WorkspaceLocks {
            sessions,
            state: Arc::default(),
        }
    }

    /// Holds `id` like a mount (a change answers `InUse`) until the guard
    /// is dropped; refused while it is being changed.
    pub(crate) fn hold(&self, id: &str) -> Result<MountGuard, WorkspaceError> {
        let mut g = self.state.lock().unwrap();
        if g.changing.contains(id) {
            return Err(WorkspaceError::InUse {
                id: id.into(),
                holder: Holder::Changing,
            });
        }
        *g.mounting.entry(id.to_string()).or_default() += 1;
        Ok(MountGuard {
            state: self.state.clone(),
            id: id.to_string(),
        })
    }

    /// Marks `id` busy for an operation that replaces or deletes its
    /// content: `InUse` while a session mounts it or anything holds it.
    pub(crate) fn begin_change(&self, id: &str) -> Result<ChangeGuard, WorkspaceError> {
        let mut g = self.state.lock().unwrap();
        if let Some(session) = self.sessions.user_of_workspace(id) {
            return Err(WorkspaceError::InUse {
                id: id.into(),
                holder: Holder::Session(session),
            });
        }
        if g.mounting.contains_key(id) {
            return Err(WorkspaceError::InUse {
                id: id.into(),
                holder: Holder::Busy,
            });
        }
        if !g.changing.insert(id.to_string()) {
            return Err(WorkspaceError::InUse {
                id: id.into(),
                holder: Holder::Changing,
            });
        }
        Ok(ChangeGuard {
            state: self.state.clone(),
            id: id.to_string(),
        })
    }

    /// Refused with `InUse` while `id` is being changed.
    pub(crate) fn check_not_changing(&self, id: &str) -> Result<(), WorkspaceError> {
        if self.state.lock().unwrap().changing.contains(id) {
            return Err(WorkspaceError::InUse {
                id: id.into(),
                holder: Holder::Changing,
            });
        }
        Ok(())
    }

    /// A live session that mounts `id`.
    pub(crate) fn user_of(&self, id: &str) -> Option<String> {
        self.sessions.user_of_workspace(id)
    }

    /// Mounted by a session or held by an operation.
    pub(crate) fn in_use(&self, id: &str) -> bool {
        self.user_of(id).is_some() || self.state.lock().unwrap().mounting.contains_key(id)
    }
}

/// Workspace settings (the engine config's `workspace_*` keys).
#[derive(Debug, Clone)]
pub(crate) struct WorkspaceConfig {
    pub(crate) enabled: bool,
    pub(crate) persist_by_default: bool,
    /// Size limit of a workspace created without one of its own.
    pub(crate) default_quota_bytes: Option<u64>,
    pub(crate) max_idle: Option<std::time::Duration>,
    pub(crate) max_total_bytes: Option<u64>,
    /// Cap of one session-less file read.
    pub(crate) max_read_bytes: u64,
}

impl WorkspaceConfig {
    pub(crate) fn from_engine(cfg: &crate::EngineConfig) -> WorkspaceConfig {
        WorkspaceConfig {
            enabled: cfg.workspace_enabled,
            persist_by_default: cfg.workspace_persist_by_default,
            default_quota_bytes: cfg.workspace_default_quota_bytes,
            max_idle: cfg.workspace_max_idle,
            max_total_bytes: cfg.workspace_max_total_bytes,
            max_read_bytes: cfg.max_read_bytes,
        }
    }
}

/// The workspaces: their records, storage, locks and cleanup policy.
pub(crate) struct Workspaces {
    cfg: WorkspaceConfig,
    runtime: Arc<dyn Runtime>,
    db: Db,
    locks: WorkspaceLocks,
    /// Wakes the cleanup (a session with a workspace ended).
    cleanup_wake: Notify,
}

/// Maps a client path onto the workspace root: `a/b`, `/a/b` and
/// `/workspace/a/b` all name `<workspace>/a/b` (given to the runtime as
/// `/a/b`, resolved strictly inside the workspace).
fn inside(path: &str) -> Result<String, EngineError> {
    if path.contains('\0') {
        return Err(
            crate::error::FileError::InvalidPath("path must not contain NUL bytes".into()).into(),
        );
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

impl Workspaces {
    pub(crate) fn new(
        cfg: WorkspaceConfig,
        runtime: Arc<dyn Runtime>,
        db: Db,
        sessions: Arc<SessionTable>,
    ) -> Workspaces {
        Workspaces {
            cfg,
            runtime,
            db,
            locks: WorkspaceLocks::new(sessions),
            cleanup_wake: Notify::new(),
        }
    }

    pub(crate) fn config(&self) -> &WorkspaceConfig {
        &self.cfg
    }

    /// A session that mounted `id` ended: its idle time counts from now,
    /// and the cleanup policy looks again.
    pub(crate) async fn session_ended(&self, id: &str) {
        let (w, at) = (id.to_string(), now_ms());
        if let Err(e) = self.db.run(move |st| st.touch_workspace(&w, at)).await {
            tracing::warn!(workspace = %id, "recording workspace use: {e}");
        }
        self.cleanup_wake.notify_one();
    }

    fn check_enabled(&self) -> Result<(), EngineError> {
        if self.cfg.enabled {
            Ok(())
        } else {
            Err(WorkspaceError::Disabled.into())
        }
    }

    /// Ensures workspace `id` exists (row and storage) and holds it against
    /// deletion until the returned guard is dropped.
    pub(crate) async fn begin_mount(&self, id: &str) -> Result<MountGuard, EngineError> {
        let guard = self.locks.hold(id)?;
        let now = now_ms();
        let rec = WorkspaceRecord {
            id: id.to_string(),
            created_at_ms: now,
            last_used_at_ms: Some(now),
            quota_bytes: self.cfg.default_quota_bytes,
            labels: Default::default(),
        };
        // Its row (made if new) and its use, in one transaction.
        let quota = self.db.run(move |s| s.use_workspace(&rec)).await?;
        self.runtime
            .ensure_workspace(id, quota)
            .await
            .map_err(rt(id, "creating the workspace"))?;
        Ok(guard)
    }

    async fn info(&self, rec: WorkspaceRecord) -> Result<WorkspaceInfo, EngineError> {
        let size = self
            .runtime
            .workspace_size(&rec.id)
            .await
            .map_err(rt(&rec.id, "measuring the workspace"))?;
        Ok(WorkspaceInfo {
            in_use: self.locks.user_of(&rec.id).is_some(),
            size_bytes: size.unwrap_or(0),
            created_at: from_ms(rec.created_at_ms),
            last_used_at: rec.last_used_at_ms.map(from_ms),
            quota_bytes: rec.quota_bytes,
            labels: rec.labels,
            id: rec.id,
        })
    }

    async fn record(&self, id: &str) -> Result<WorkspaceRecord, EngineError> {
        self.check_enabled()?;
        check_workspace_id(id)?;
        let wid = id.to_string();
        self.db
            .run(move |s| s.get_workspace(&wid))
            .await?
            .ok_or_else(|| WorkspaceError::NotFound(id.to_string()).into())
    }

    pub(crate) async fn list_workspaces(&self) -> Result<Vec<WorkspaceInfo>, EngineError> {
        self.check_enabled()?;
        let mut out = Vec::new();
        for rec in self.db.run(|s| s.list_workspaces()).await? {
            out.push(self.info(rec).await?);
        }
        Ok(out)
    }

    /// Explicit create; `AlreadyExists` when the id is taken.
    pub(crate) async fn create_workspace(
        &self,
        req: CreateWorkspace,
    ) -> Result<WorkspaceInfo, EngineError> {
        self.check_enabled()?;
        check_workspace_id(&req.id)?;
        if let Some(q) = req.quota_bytes {
            if q < MIN_QUOTA_BYTES {
                return Err(EngineError::InvalidRequest(format!(
                    "quota must be at least {MIN_QUOTA_BYTES} bytes (128 MiB)"
                )));
            }
        }
        let source = match &req.from_snapshot {
            Some((src, snap)) => Some(self.snapshot_record(src, snap).await?),
            None => None,
        };
        let source_quota = match &source {
            Some(s) => self.record(&s.workspace_id).await?.quota_bytes,
            None => None,
        };
        let quota = req
            .quota_bytes
            .or(source_quota)
            .or(self.cfg.default_quota_bytes);
        self.locks.check_not_changing(&req.id)?;
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
        let wid = req.id.clone();
        if self.db.run(move |s| s.get_workspace(&wid)).await?.is_some() {
            return Err(WorkspaceError::AlreadyExists(req.id).into());
        }
        // A copy of a snapshot is a use of its workspace (a sandbox
        // snapshot used as an image uses it so): the idle limit counts
        // from the copy's start, so
        // the cleanup policy does not find it idle while the copy runs.
        let (src, at) = (snap.workspace_id.clone(), now_ms());
        if let Err(e) = self.db.run(move |st| st.touch_workspace(&src, at)).await {
            tracing::warn!(workspace = %snap.workspace_id, "recording workspace use: {e}");
        }
        // No session may mount the new workspace before its copy is done.
        let change = self.locks.begin_change(&req.id)?;
        let result = async {
            // A copy-on-write clone where the backend can make one (it
            // shares the source's storage, so only with the source's
            // quota); else a new workspace filled with a copy.
            if rec.quota_bytes == source_quota && self.clone_snapshot(&rec, &snap).await? {
                return Ok(());
            }
            self.insert_and_create(&rec).await?;
            self.fill_from_snapshot(&req.id, &snap).await
        }
        .await;
        drop(change);
        result?;
        tracing::info!(workspace = %req.id, snapshot = %snap.id, "workspace created from a snapshot");
        self.info(rec).await
    }

    async fn insert_and_create(&self, rec: &WorkspaceRecord) -> Result<(), EngineError> {
        let r = rec.clone();
        if !self.db.run(move |s| s.insert_workspace(&r)).await? {
            return Err(WorkspaceError::AlreadyExists(rec.id.clone()).into());
        }
        if let Err(e) = self
            .runtime
            .ensure_workspace(&rec.id, rec.quota_bytes)
            .await
        {
            let id = rec.id.clone();
            let _ = self.db.run(move |s| s.delete_workspace(&id)).await;
            return Err(rt(&rec.id, "creating the workspace")(e));
        }
        Ok(())
    }

    pub(crate) async fn get_workspace(&self, id: &str) -> Result<WorkspaceInfo, EngineError> {
        let rec = self.record(id).await?;
        self.info(rec).await
    }

    /// `InUse` while a live session has it mounted.
    pub(crate) async fn delete_workspace(&self, id: &str) -> Result<(), EngineError> {
        self.record(id).await?;
        let _change = self.locks.begin_change(id)?;
        self.drop_sandbox_snapshots(id, None).await?;
        self.runtime
            .delete_workspace(id)
            .await
            .map_err(rt(id, "deleting the workspace"))?;
        let wid = id.to_string();
        self.db
            .run(move |s| {
                s.delete_snapshots_of(&wid)?;
                s.delete_workspace(&wid)
            })
            .await?;
        tracing::info!(workspace = %id, "workspace deleted");
        Ok(())
    }

    /// Deletes the sandbox snapshots whose `/workspace` is a snapshot of
    /// workspace `id` (only snapshot `snap` of it, when given): without it
    /// they cannot start a session, so they go with it (the session 13
    /// attack found them listed after their workspace was gone). Done
    /// before the workspace's own storage goes, each one whole (storage,
    /// then record; deleting storage that is gone is no error), so a
    /// failure on the way leaves nothing half deleted.
    async fn drop_sandbox_snapshots(
        &self,
        id: &str,
        snap: Option<&str>,
    ) -> Result<(), EngineError> {
        let held: Vec<String> = self
            .db
            .run(|s| s.list_sandbox_snapshots())
            .await?
            .into_iter()
            .filter(|r| {
                r.workspace_id.as_deref() == Some(id)
                    && snap.is_none_or(|snap| r.workspace_snapshot.as_deref() == Some(snap))
            })
            .map(|r| r.id)
            .collect();
        for s in held {
            self.runtime
                .delete_sandbox_snapshot(&s)
                .await
                .map_err(EngineError::runtime("deleting a sandbox snapshot"))?;
            let key = s.clone();
            self.db
                .run(move |st| st.delete_sandbox_snapshot(&key))
                .await?;
            tracing::info!(workspace = %id, snapshot = %s, "sandbox snapshot deleted with its workspace snapshot");
        }
        Ok(())
    }

    /// A session-less file operation on workspace `id`.
    async fn ws_file(
        &self,
        id: &str,
        op: FileOp,
    ) -> Result<sandkasten_runtime::FileReply, EngineError> {
        self.record(id).await?;
        self.runtime
            .workspace_file(id, op)
            .await
            .map_err(rt(id, "accessing workspace files"))
    }

    /// Session-less file access. Paths are inside the workspace: `a/b`,
    /// `/a/b` and `/workspace/a/b` all name `<workspace>/a/b`.
    pub(crate) async fn workspace_list_dir(
        &self,
        id: &str,
        path: &str,
    ) -> Result<Vec<DirEntry>, EngineError> {
        let op = FileOp::ListDir {
            path: inside(path)?,
        };
        self.ws_file(id, op)
            .await?
            .into_entries()
            .map_err(EngineError::runtime("listing workspace files"))
    }

    /// Reads a workspace file as a stream (see [`FileReader`]). The
    /// workspace is held like an export's until the read ends or is
    /// dropped: delete, restore and import answer `InUse` meanwhile.
    pub(crate) async fn workspace_read_file(
        &self,
        id: &str,
        path: &str,
        max_bytes: Option<u64>,
    ) -> Result<FileReader, EngineError> {
        let cap = self.cfg.max_read_bytes;
        let inner = inside(path)?;
        self.record(id).await?;
        let hold = self.locks.hold(id)?;
        let stream = self
            .runtime
            .workspace_read(
                id,
                inner.clone(),
                Some(max_bytes.map_or(cap, |m| m.min(cap))),
            )
            .await
            .map_err(rt(id, "reading a workspace file"))?;
        Ok(FileReader::new(
            as_session_path(&inner),
            stream,
            Some(Box::new(hold)),
        ))
    }

    /// Returns the path written, as `/workspace/...`.
    pub(crate) async fn workspace_write_file(
        &self,
        id: &str,
        path: &str,
        data: Vec<u8>,
    ) -> Result<String, EngineError> {
        let p = inside(path)?;
        if p == "/" {
            return Err(crate::error::FileError::InvalidPath(
                "path names the workspace root, not a file".into(),
            )
            .into());
        }
        let op = FileOp::Write {
            path: p.clone(),
            data,
            mode: None,
        };
        self.ws_file(id, op)
            .await?
            .into_done()
            .map_err(EngineError::runtime("writing a workspace file"))?;
        Ok(as_session_path(&p))
    }

    /// Records workspace `rec` as a copy-on-write clone of `snap`; `false`
    /// (nothing recorded) where the runtime cannot clone.
    async fn clone_snapshot(
        &self,
        rec: &WorkspaceRecord,
        snap: &SnapshotRecord,
    ) -> Result<bool, EngineError> {
        let r = rec.clone();
        if !self.db.run(move |s| s.insert_workspace(&r)).await? {
            return Err(WorkspaceError::AlreadyExists(rec.id.clone()).into());
        }
        let source = self.locks.hold(&snap.workspace_id)?;
        let cloned = self
            .runtime
            .clone_snapshot(&snap.workspace_id, &snap.id, &rec.id)
            .await;
        drop(source);
        match cloned {
            Ok(true) => Ok(true),
            other => {
                let id = rec.id.clone();
                let _ = self.db.run(move |s| s.delete_workspace(&id)).await;
                other.map_err(rt(&snap.workspace_id, "cloning the snapshot"))
            }
        }
    }

    /// Copies snapshot `snap` into the freshly created workspace `id`
    /// (marked busy by the caller); deletes `id` again when that fails.
    async fn fill_from_snapshot(&self, id: &str, snap: &SnapshotRecord) -> Result<(), EngineError> {
        let source = self.locks.hold(&snap.workspace_id)?;
        let result = self
            .runtime
            .copy_snapshot(&snap.workspace_id, &snap.id, id)
            .await
            .map_err(rt(&snap.workspace_id, "copying the snapshot"));
        drop(source);
        if result.is_err() {
            let _ = self.runtime.delete_workspace(id).await;
            let wid = id.to_string();
            let _ = self.db.run(move |s| s.delete_workspace(&wid)).await;
        }
        result
    }

    /// Streams workspace `id` as a tar, in chunks. Returns once the first
    /// chunk is ready, so a failure before it (a runtime without export,
    /// a snapshot that cannot be taken, a missing volume) is an error
    /// response, never a 200 with an empty body; an error later ends the
    /// stream with it. Consistent (a temporary snapshot) where the runtime
    /// can snapshot. The workspace is held (delete, restore and import
    /// answer `InUse`) until the stream ends or is dropped.
    pub(crate) async fn export_workspace(&self, id: &str) -> Result<ExportStream, EngineError> {
        self.record(id).await?;
        let guard = self.locks.hold(id)?;
        let mut from = self
            .runtime
            .export_workspace(id)
            .await
            .map_err(rt(id, "exporting the workspace"))?;
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            let _guard = guard;
            loop {
                tokio::select! {
                    chunk = from.recv() => match chunk {
                        Some(c) => if tx.send(c).await.is_err() { return },
                        None => return,
                    },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(rx)
    }

    /// Where an upload to import may be spooled.
    pub(crate) fn scratch_dir(&self) -> std::path::PathBuf {
        self.runtime.scratch_dir()
    }

    /// Replaces workspace `id`'s content with the tar at `archive`;
    /// `InUse` while mounted. The workspace must exist.
    pub(crate) async fn import_workspace(
        &self,
        id: &str,
        archive: std::path::PathBuf,
        abandoned: sandkasten_runtime::Abandoned,
    ) -> Result<(), EngineError> {
        self.record(id).await?;
        let _change = self.locks.begin_change(id)?;
        self.runtime
            .import_workspace(id, archive, abandoned.clone())
            .await
            .inspect_err(|_| {
                if abandoned.is_cancelled() {
                    tracing::info!(workspace = %id, "workspace import stopped: its client went away; the content is unchanged");
                }
            })
            .map_err(rt(id, "importing into the workspace"))?;
        tracing::info!(workspace = %id, "workspace content imported");
        Ok(())
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

impl Workspaces {
    /// A consistent point-in-time snapshot, also while sessions write.
    pub(crate) async fn create_snapshot(
        &self,
        id: &str,
        label: Option<String>,
    ) -> Result<SnapshotInfo, EngineError> {
        let rec = self.record(id).await?;
        if rec.quota_bytes.is_some() {
            // The record comes before the storage (a crash in between
            // leaves a record the next use completes): a snapshot that
            // finds a create's record first waits for, or makes, the image
            // rather than taking the workspace for one without a quota.
            self.runtime
                .ensure_workspace(id, rec.quota_bytes)
                .await
                .map_err(rt(id, "creating the workspace"))?;
        }
        if let Some(l) = &label {
            if l.chars().count() > 256 {
                return Err(EngineError::InvalidRequest(
                    "label must be at most 256 characters".into(),
                ));
            }
        }
        let snap = format!("snap-{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
        self.runtime
            .snapshot_workspace(id, &snap)
            .await
            .map_err(rt(id, "snapshotting the workspace"))?;
        let rec = SnapshotRecord {
            id: snap,
            workspace_id: id.to_string(),
            created_at_ms: now_ms(),
            label,
        };
        let r = rec.clone();
        self.db.run(move |s| s.insert_snapshot(&r)).await?;
        tracing::info!(workspace = %id, snapshot = %rec.id, "snapshot created");
        Ok(snapshot_info(rec))
    }

    pub(crate) async fn list_snapshots(&self, id: &str) -> Result<Vec<SnapshotInfo>, EngineError> {
        self.record(id).await?;
        let wid = id.to_string();
        Ok(self
            .db
            .run(move |s| s.list_snapshots(&wid))
            .await?
            .into_iter()
            .map(snapshot_info)
            .collect())
    }

    async fn snapshot_record(&self, id: &str, snap: &str) -> Result<SnapshotRecord, EngineError> {
        self.record(id).await?;
        let sid = snap.to_string();
        self.db
            .run(move |s| s.get_snapshot(&sid))
            .await?
            .filter(|r| r.workspace_id == id)
            .ok_or_else(|| WorkspaceError::SnapshotNotFound(snap.to_string()).into())
    }

    /// Deletes snapshot `snap` of workspace `id`, and the sandbox
    /// snapshot it belongs to, if any.
    pub(crate) async fn delete_snapshot(&self, id: &str, snap: &str) -> Result<(), EngineError> {
        self.snapshot_record(id, snap).await?;
        self.drop_sandbox_snapshots(id, Some(snap)).await?;
        self.runtime
            .delete_snapshot(id, snap)
            .await
            .map_err(rt(id, "deleting the snapshot"))?;
        let sid = snap.to_string();
        self.db.run(move |s| s.delete_snapshot(&sid)).await?;
        Ok(())
    }

    /// Restores a snapshot in place; `InUse` while mounted.
    pub(crate) async fn restore_snapshot(&self, id: &str, snap: &str) -> Result<(), EngineError> {
        self.snapshot_record(id, snap).await?;
        let _change = self.locks.begin_change(id)?;
        self.runtime
            .restore_snapshot(id, snap)
            .await
            .map_err(rt(id, "restoring the snapshot"))?;
        tracing::info!(workspace = %id, snapshot = %snap, "snapshot restored");
        Ok(())
    }
}

/// The engine's workspace calls (the API's entry points), each one call of
/// the [`Workspaces`] part.
impl Engine {
    pub async fn list_workspaces(&self) -> Result<Vec<WorkspaceInfo>, EngineError> {
        self.inner.workspaces.list_workspaces().await
    }

    /// Explicit create; `AlreadyExists` when the id is taken.
    pub async fn create_workspace(
        &self,
        req: CreateWorkspace,
    ) -> Result<WorkspaceInfo, EngineError> {
        let w = self.inner.workspaces.clone();
        self.to_the_end(async move { w.create_workspace(req).await })
            .await
    }

    pub async fn get_workspace(&self, id: &str) -> Result<WorkspaceInfo, EngineError> {
        self.inner.workspaces.get_workspace(id).await
    }

    /// `InUse` while a live session has it mounted.
    pub async fn delete_workspace(&self, id: &str) -> Result<(), EngineError> {
        let (w, id) = (self.inner.workspaces.clone(), id.to_string());
        self.to_the_end(async move { w.delete_workspace(&id).await })
            .await
    }

    /// Session-less file access. Paths are inside the workspace: `a/b`,
    /// `/a/b` and `/workspace/a/b` all name `<workspace>/a/b`.
    pub async fn workspace_list_dir(
        &self,
        id: &str,
        path: &str,
    ) -> Result<Vec<DirEntry>, EngineError> {
        self.inner.workspaces.workspace_list_dir(id, path).await
    }

    /// Reads a workspace file as a stream (see
    /// [`Workspaces::workspace_read_file`]).
    pub async fn workspace_read_file(
        &self,
        id: &str,
        path: &str,
        max_bytes: Option<u64>,
    ) -> Result<FileReader, EngineError> {
        self.inner
            .workspaces
            .workspace_read_file(id, path, max_bytes)
            .await
    }

    /// Returns the path written, as `/workspace/...`.
    pub async fn workspace_write_file(
        &self,
        id: &str,
        path: &str,
        data: Vec<u8>,
    ) -> Result<String, EngineError> {
        self.inner
            .workspaces
            .workspace_write_file(id, path, data)
            .await
    }

    /// Streams workspace `id` as a tar (see [`Workspaces::export_workspace`]).
    pub async fn export_workspace(&self, id: &str) -> Result<ExportStream, EngineError> {
        self.inner.workspaces.export_workspace(id).await
    }

    /// Where an upload to import may be spooled.
    pub fn scratch_dir(&self) -> std::path::PathBuf {
        self.inner.workspaces.scratch_dir()
    }

    /// Replaces workspace `id`'s content with the tar at `archive`;
    /// `InUse` while mounted. The import holds the workspace to its end
    /// also when its caller goes away, but then stops at its next read of
    /// the archive and leaves the content as it was (unless it was past
    /// its last read).
    pub async fn import_workspace(
        &self,
        id: &str,
        archive: std::path::PathBuf,
    ) -> Result<(), EngineError> {
        let (w, id) = (self.inner.workspaces.clone(), id.to_string());
        let abandoned = sandkasten_runtime::Abandoned::new();
        // Cancels the import when this future is dropped before its end.
        let gone = abandoned.clone().drop_guard();
        let r = self
            .to_the_end(async move { w.import_workspace(&id, archive, abandoned).await })
            .await;
        gone.disarm();
        r
    }

    /// A consistent point-in-time snapshot, also while sessions write.
    pub async fn create_snapshot(
        &self,
        id: &str,
        label: Option<String>,
    ) -> Result<SnapshotInfo, EngineError> {
        let (w, id) = (self.inner.workspaces.clone(), id.to_string());
        self.to_the_end(async move { w.create_snapshot(&id, label).await })
            .await
    }

    pub async fn list_snapshots(&self, id: &str) -> Result<Vec<SnapshotInfo>, EngineError> {
        self.inner.workspaces.list_snapshots(id).await
    }

    pub async fn delete_snapshot(&self, id: &str, snap: &str) -> Result<(), EngineError> {
        let (w, id, snap) = (
            self.inner.workspaces.clone(),
            id.to_string(),
            snap.to_string(),
        );
        self.to_the_end(async move { w.delete_snapshot(&id, &snap).await })
            .await
    }

    /// Restores a snapshot in place; `InUse` while mounted.
    pub async fn restore_snapshot(&self, id: &str, snap: &str) -> Result<(), EngineError> {
        let (w, id, snap) = (
            self.inner.workspaces.clone(),
            id.to_string(),
            snap.to_string(),
        );
        self.to_the_end(async move { w.restore_snapshot(&id, &snap).await })
            .await
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

impl Workspaces {
    /// Applies `workspace.max_idle_days` and `workspace.max_total_gb`: at
    /// start, whenever a session with a workspace ends, and when the next
    /// workspace becomes idle-expired (a timer, not a poll); at least hourly
    /// for the size limit.
    pub(crate) async fn cleanup_loop(
        self: Arc<Self>,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let cfg = &self.cfg;
        if !cfg.enabled || (cfg.max_idle.is_none() && cfg.max_total_bytes.is_none()) {
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
                _ = self.cleanup_wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn cleanup_once(&self) -> Result<Option<i64>, EngineError> {
        let cfg = &self.cfg;
        let mut candidates = Vec::new();
        for rec in self.db.run(|s| s.list_workspaces()).await? {
            let mounted = self.locks.in_use(&rec.id);
            let size = if cfg.max_total_bytes.is_some() {
                self.runtime
                    .workspace_size(&rec.id)
                    .await
                    .map_err(rt(&rec.id, "measuring a workspace"))?
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
            cfg.max_idle.map(|d| d.as_millis() as i64),
            cfg.max_total_bytes,
        );
        for (id, reason) in plan.delete {
            match self.delete_workspace(&id).await {
                Ok(()) => {
                    tracing::info!(workspace = %id, %reason, "workspace deleted by the cleanup policy")
                }
                // Mounted meanwhile: it stays.
                Err(EngineError::Workspace(WorkspaceError::InUse { .. })) => {}
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

    #[test]
    fn client_paths_map_inside_the_workspace() {
        assert_eq!(inside("a/b").unwrap(), "/a/b");
        assert_eq!(inside("/a/b").unwrap(), "/a/b");
        assert_eq!(inside("/workspace/a/b").unwrap(), "/a/b");
        assert_eq!(inside("/workspace").unwrap(), "/");
        assert_eq!(inside("/workspaces/x").unwrap(), "/workspaces/x");
        assert_eq!(inside("").unwrap(), "/");
        assert!(inside("a\0b").is_err());
        assert!(check_workspace_id("user123-project456").is_ok());
        for bad in ["", ".hidden", "-x", "a/b", "a b", &"x".repeat(65), "ü"] {
            assert!(check_workspace_id(bad).is_err(), "{bad}");
        }
        assert_eq!(as_session_path("/a/b"), "/workspace/a/b");
        assert_eq!(as_session_path("/"), "/workspace");
    }
}
