//! Sessions: creation, lookup, exec, files, destruction, the TTL reaper and
//! recovery at start.
//!
//! Concurrency: the session table is a std mutex held only for map
//! operations (never across `.await`); each session serialises its execs
//! with its own async mutex, so execs in different sessions run in
//! parallel and execs in one session run in arrival order.

use crate::text::OutputCleaner;
use crate::{
    AcquireSource, CreateSession, DirEntry, EngineConfig, EngineError, ExecEvent, ExecRequest,
    ExecResult, ExecStream, FileContent, FileStat, ImageInfo, SessionInfo, SessionState,
    SessionStats,
};
use sandkasten_protocol::{ErrorKind, Request, Response};
use sandkasten_runtime::{
    AgentClient, Runtime, RuntimeError, SandboxHandle, SandboxSpec, WorkspaceMount,
};
use sandkasten_store::{SessionRecord, Store};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use time::OffsetDateTime;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

/// The engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) cfg: EngineConfig,
    pub(crate) runtime: Arc<dyn Runtime>,
    pub(crate) store: Arc<Store>,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    /// Creates in progress (they count against `max_sessions`).
    creating: AtomicUsize,
    /// Wakes the reaper when an expiry moves earlier.
    reaper_wake: Notify,
    /// Workspaces being mounted by creates in flight, and being deleted:
    /// a delete never races a mount.
    pub(crate) ws_guard: Mutex<WorkspaceGuard>,
    /// Wakes the workspace cleanup (a session ended).
    pub(crate) cleanup_wake: Notify,
    pub(crate) pool: crate::pool::Pool,
    pub(crate) counters: crate::metrics::Counters,
}

/// See [`Inner::ws_guard`].
#[derive(Default)]
pub(crate) struct WorkspaceGuard {
    pub(crate) mounting: HashMap<String, usize>,
    pub(crate) deleting: std::collections::HashSet<String>,
}

struct Session {
    id: String,
    image: String,
    workspace_id: Option<String>,
    created_at: OffsetDateTime,
    ttl_seconds: u64,
    acquire_source: AcquireSource,
    handle: SandboxHandle,
    /// The connection to the sandbox's agent; replaced when a connection
    /// through a remote engine breaks while the sandbox lives (see
    /// [`Engine::watch`]).
    agent: tokio::sync::watch::Sender<AgentClient>,
    /// Set (then `agent` notified) when the watcher gave the sandbox up:
    /// callers waiting for a reconnection stop waiting.
    agent_lost: std::sync::atomic::AtomicBool,
    live: Mutex<Live>,
    exec_lock: tokio::sync::Mutex<()>,
}

impl Session {
    /// The current agent connection, as it is.
    fn agent(&self) -> AgentClient {
        self.agent.borrow().clone()
    }

    /// Stops callers waiting for a reconnection (the sandbox is gone or
    /// the session ends).
    fn give_up_agent(&self) {
        self.agent_lost
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.agent.send_modify(|_| {});
    }

    /// A connected agent: while the watcher reconnects a broken one
    /// (remote engines), the call waits for it, at most as long as the
    /// watcher tries; then the closed one (whose calls fail).
    async fn connected_agent(&self) -> AgentClient {
        let current = self.agent();
        if current.is_connected() {
            return current;
        }
        let mut rx = self.agent.subscribe();
        let lost = &self.agent_lost;
        let wait = async move {
            rx.wait_for(|a| a.is_connected() || lost.load(std::sync::atomic::Ordering::SeqCst))
                .await
                .map(|a| a.clone())
        };
        match tokio::time::timeout(RECONNECT_PATIENCE + ATTACH_PING_TIMEOUT, wait).await {
            Ok(Ok(a)) => a,
            _ => current,
        }
    }
}

struct Live {
    state: SessionState,
    expires_at: OffsetDateTime,
    cwd: String,
}

/// How long a session whose agent connection broke waits for its backend
/// to be reachable again before it is given up as `lost`.
const RECONNECT_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// How long a reattached agent may take to answer its first ping.
const ATTACH_PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

pub(crate) fn ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

fn from_ms(v: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(v as i128 * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// Valid workspace ids: 1–64 of `[A-Za-z0-9._-]`, not starting with `.`/`-`.
pub fn valid_workspace_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && !id.starts_with(['.', '-'])
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

pub(crate) fn runtime_err(context: &'static str) -> impl FnOnce(RuntimeError) -> EngineError {
    move |source| match source {
        RuntimeError::ImageNotFound(i) => EngineError::InvalidImage(format!("unknown image {i}")),
        RuntimeError::InvalidArchive(m) => EngineError::InvalidRequest(m),
        RuntimeError::Unsupported(what, rt) => {
            EngineError::InvalidRequest(format!("{what} is not supported by the {rt} runtime"))
        }
        source => EngineError::Runtime { context, source },
    }
}

impl Session {
    fn info(&self) -> SessionInfo {
        let live = self.live.lock().unwrap();
        SessionInfo {
            id: self.id.clone(),
            image: self.image.clone(),
            status: live.state,
            cwd: live.cwd.clone(),
            workspace_id: self.workspace_id.clone(),
            created_at: self.created_at,
            expires_at: live.expires_at,
            acquire_source: self.acquire_source,
        }
    }
}

impl Engine {
    /// Builds the engine, recovers sessions from the store and starts the
    /// reaper. Background work stops when `shutdown` is cancelled.
    pub async fn start(
        cfg: EngineConfig,
        runtime: Arc<dyn Runtime>,
        store: Arc<Store>,
        shutdown: CancellationToken,
    ) -> Result<Engine, EngineError> {
        let cfg_pool = cfg.pool.clone();
        let engine = Engine {
            inner: Arc::new(Inner {
                cfg,
                runtime,
                store,
                sessions: Mutex::new(HashMap::new()),
                creating: AtomicUsize::new(0),
                reaper_wake: Notify::new(),
                ws_guard: Mutex::new(WorkspaceGuard::default()),
                cleanup_wake: Notify::new(),
                pool: crate::pool::Pool::new(cfg_pool),
                counters: crate::metrics::Counters::new(),
            }),
        };
        engine.recover_pool().await?;
        engine.recover().await?;
        engine.start_pool(shutdown.clone());
        let reaper = engine.clone();
        let cleaner = engine.clone();
        let cleaner_stop = shutdown.clone();
        tokio::spawn(async move { reaper.reap(shutdown).await });
        tokio::spawn(async move { cleaner.cleanup_loop(cleaner_stop).await });
        Ok(engine)
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.cfg
    }

    /// Reattaches to sandboxes that survived a restart; cleans up the rest.
    async fn recover(&self) -> Result<(), EngineError> {
        let store = &self.inner.store;
        let records = store.list_sessions_except(&SessionState::FINAL)?;
        for rec in records {
            let handle = SandboxHandle {
                id: rec.id.clone(),
                pid: rec.pid,
                start_time: rec.pid_start_time,
            };
            let alive = if rec.state == SessionState::Running.as_str() {
                self.reconnect(&handle).await.ok()
            } else {
                None
            };
            match alive {
                Some((sandbox, cwd)) => {
                    tracing::info!(session = %rec.id, "reattached to running sandbox");
                    let session = Arc::new(Session {
                        id: rec.id.clone(),
                        image: rec.image.clone(),
                        workspace_id: rec.workspace_id.clone(),
                        created_at: from_ms(rec.created_at_ms),
                        ttl_seconds: rec.ttl_seconds,
                        acquire_source: if rec.acquire_source == "pool" {
                            AcquireSource::Pool
                        } else {
                            AcquireSource::Cold
                        },
                        handle: sandbox.handle,
                        agent: tokio::sync::watch::Sender::new(sandbox.agent),
                        agent_lost: Default::default(),
                        live: Mutex::new(Live {
                            state: SessionState::Running,
                            expires_at: from_ms(rec.expires_at_ms),
                            cwd,
                        }),
                        exec_lock: tokio::sync::Mutex::new(()),
                    });
                    self.inner
                        .sessions
                        .lock()
                        .unwrap()
                        .insert(rec.id.clone(), session.clone());
                    self.watch(&session);
                }
                None => {
                    tracing::info!(session = %rec.id, state = %rec.state, "sandbox is gone; cleaning up");
                    if let Err(e) = self.inner.runtime.destroy(&handle).await {
                        tracing::warn!(session = %rec.id, "cleanup of lost sandbox failed: {e}");
                    }
                    self.inner.counters.ended(SessionState::Lost);
                    store.set_session_state(
                        &rec.id,
                        SessionState::Lost.as_str(),
                        Some(ms(now())),
                    )?;
                }
            }
        }
        // Sandboxes on disk the store does not list as live are orphans.
        let known: Vec<String> = self
            .inner
            .sessions
            .lock()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        let on_disk = self
            .inner
            .runtime
            .list_sandboxes()
            .await
            .map_err(runtime_err("listing sandboxes"))?;
        for id in on_disk.into_iter().filter(|id| !known.contains(id)) {
            tracing::info!(session = %id, "removing orphaned sandbox");
            let handle = SandboxHandle {
                id: id.clone(),
                pid: 0,
                start_time: 0,
            };
            if let Err(e) = self.inner.runtime.destroy(&handle).await {
                tracing::warn!(session = %id, "removing orphan failed: {e}");
            }
        }
        Ok(())
    }

    /// Destroys sessions whose TTL ran out; sleeps until the next expiry.
    async fn reap(&self, shutdown: CancellationToken) {
        loop {
            let t = now();
            let mut next: Option<OffsetDateTime> = None;
            let mut expired = Vec::new();
            for s in self.inner.sessions.lock().unwrap().values() {
                let live = s.live.lock().unwrap();
                if live.state != SessionState::Running {
                    continue;
                }
                if live.expires_at <= t {
                    expired.push(s.id.clone());
                } else {
                    next = Some(next.map_or(live.expires_at, |n| n.min(live.expires_at)));
                }
            }
            for id in expired {
                tracing::info!(session = %id, "session expired");
                if let Err(e) = self.end_session(&id, SessionState::Expired).await {
                    tracing::warn!(session = %id, "destroying expired session: {e}");
                }
            }
            let wait = next
                .map(|n| (n - now()).max(time::Duration::ZERO))
                .map(|d| std::time::Duration::from_millis(d.whole_milliseconds() as u64 + 1))
                .unwrap_or(std::time::Duration::from_secs(3600));
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.inner.reaper_wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Watches the agent connection of a running session. When it closes
    /// while the session runs, the sandbox is asked for again
    /// ([`Runtime::attach`]: the same PID 1, proven, and an agent that
    /// answers): a connection through a remote engine can break while the
    /// sandbox lives, and is then replaced. A sandbox that is gone (its
    /// PID 1 was killed or crashed) is cleaned up and marked `lost` at once
    /// instead of answering errors until its TTL.
    fn watch(&self, s: &Arc<Session>) {
        let engine = self.clone();
        let mut agent = s.agent();
        let handle = s.handle.clone();
        let id = s.id.clone();
        let weak = Arc::downgrade(s);
        tokio::spawn(async move {
            loop {
                agent.closed().await;
                let Some(session) = weak.upgrade() else {
                    return;
                };
                if session.live.lock().unwrap().state != SessionState::Running {
                    session.give_up_agent();
                    return;
                }
                match engine.reconnect_patiently(&handle).await {
                    Some((fresh, _)) => {
                        tracing::info!(session = %id, "agent connection closed; reconnected to the running sandbox");
                        session.agent.send_replace(fresh.agent.clone());
                        agent = fresh.agent;
                    }
                    None => {
                        session.give_up_agent();
                        tracing::warn!(session = %id, "sandbox agent connection closed; the sandbox is gone");
                        if let Err(e) = engine.end_session(&id, SessionState::Lost).await {
                            tracing::warn!(session = %id, "cleaning up a lost sandbox: {e}");
                        }
                        return;
                    }
                }
            }
        });
    }

    /// The sandbox `handle` names with a new agent connection, and its
    /// shell's cwd, if that sandbox still runs and its agent answers (not
    /// merely accepts: a sandbox whose agent is stuck is treated like a
    /// dead one, `Gone`).
    async fn reconnect(
        &self,
        handle: &SandboxHandle,
    ) -> Result<(sandkasten_runtime::Sandbox, String), RuntimeError> {
        let gone = || RuntimeError::Gone(handle.id.clone());
        let attach = async {
            let sandbox = self.inner.runtime.attach(handle).await?;
            match sandbox.agent.call(Request::Ping).await {
                Ok(Response::Pong { cwd, .. }) => Ok((sandbox, cwd)),
                _ => Err(gone()),
            }
        };
        tokio::time::timeout(ATTACH_PING_TIMEOUT, attach)
            .await
            .unwrap_or_else(|_| Err(gone()))
    }

    /// [`Engine::reconnect`], retried while the backend cannot tell (a
    /// remote engine out of reach), with backoff, for up to
    /// [`RECONNECT_PATIENCE`]; `None` once the sandbox is gone or that time
    /// is up.
    async fn reconnect_patiently(
        &self,
        handle: &SandboxHandle,
    ) -> Option<(sandkasten_runtime::Sandbox, String)> {
        let deadline = tokio::time::Instant::now() + RECONNECT_PATIENCE;
        let mut wait = std::time::Duration::from_millis(250);
        loop {
            match self.reconnect(handle).await {
                Ok(found) => return Some(found),
                Err(RuntimeError::Gone(_)) => return None,
                Err(e) => {
                    if tokio::time::Instant::now() + wait > deadline {
                        tracing::warn!(session = %handle.id, "giving up reconnecting: {e}");
                        return None;
                    }
                    tracing::warn!(session = %handle.id, "reconnecting to the sandbox: {e}");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(std::time::Duration::from_secs(5));
                }
            }
        }
    }

    /// Live sessions that mount workspace `ws`.
    pub(crate) fn session_ids_with_workspace(&self, ws: &str) -> Vec<String> {
        self.inner
            .sessions
            .lock()
            .unwrap()
            .values()
            .filter(|s| s.workspace_id.as_deref() == Some(ws))
            .map(|s| s.id.clone())
            .collect()
    }

    fn live_count(&self) -> usize {
        self.inner.sessions.lock().unwrap().len()
    }

    fn session(&self, id: &str) -> Result<Arc<Session>, EngineError> {
        self.inner
            .sessions
            .lock()
            .unwrap()
            .get(id)
            .cloned()
            .ok_or_else(|| EngineError::SessionNotFound(id.to_string()))
    }

    /// A running session, its TTL extended by this activity.
    fn active(&self, id: &str) -> Result<Arc<Session>, EngineError> {
        let s = self.session(id)?;
        {
            let mut live = s.live.lock().unwrap();
            if live.state != SessionState::Running {
                return Err(EngineError::SessionNotRunning {
                    id: id.to_string(),
                    state: live.state.as_str(),
                });
            }
            live.expires_at = now() + time::Duration::seconds(s.ttl_seconds as i64);
        }
        Ok(s)
    }

    /// Persists the activity (expiry and cwd) of a session.
    fn persist_activity(&self, s: &Session) {
        let (exp, cwd) = {
            let live = s.live.lock().unwrap();
            (live.expires_at, live.cwd.clone())
        };
        if let Err(e) = self.inner.store.touch_session(&s.id, ms(exp), &cwd) {
            tracing::warn!(session = %s.id, "recording activity: {e}");
        }
    }

    pub async fn create_session(&self, req: CreateSession) -> Result<SessionInfo, EngineError> {
        let cfg = &self.inner.cfg;
        let image = req
            .image
            .filter(|i| !i.is_empty())
            .unwrap_or_else(|| cfg.default_image.clone());
        if !cfg.allowed_images.is_empty() && !cfg.allowed_images.contains(&image) {
            return Err(EngineError::InvalidImage(format!(
                "image {image} is not in allowed_images"
            )));
        }
        if let Some(ws) = &req.workspace_id {
            if !cfg.workspace_enabled {
                return Err(EngineError::WorkspaceDisabled);
            }
            if !valid_workspace_id(ws) {
                return Err(EngineError::InvalidWorkspace(format!(
                    "invalid workspace_id {ws:?}: use 1-64 characters of [A-Za-z0-9._-], not starting with '.' or '-'"
                )));
            }
        }
        validate_env(&req.env)?;
        let ttl = match req.ttl_seconds {
            Some(0) => {
                return Err(EngineError::InvalidRequest(
                    "ttl_seconds must be at least 1".into(),
                ))
            }
            Some(t) if t > 30 * 24 * 3600 => {
                return Err(EngineError::InvalidRequest(
                    "ttl_seconds must be at most 2592000 (30 days)".into(),
                ))
            }
            Some(t) => t,
            None => cfg.session_ttl_seconds,
        };
        // Reserve capacity before the slow part.
        let reserved = self.inner.creating.fetch_add(1, Ordering::SeqCst) + 1;
        struct Reservation<'a>(&'a AtomicUsize);
        impl Drop for Reservation<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let _reservation = Reservation(&self.inner.creating);
        if self.live_count() + reserved > cfg.max_sessions {
            return Err(EngineError::CapacityExhausted(cfg.max_sessions));
        }

        // A pooled sandbox when one is idle; never a wait.
        let started = std::time::Instant::now();
        // A session without workspace_id keeps one named after it.
        let persist_by_default = cfg.workspace_enabled && cfg.workspace_persist_by_default;
        let wants_workspace = req.workspace_id.is_some() || persist_by_default;
        let mut warm = if wants_workspace && !self.inner.runtime.can_bind_workspace() {
            if let Some(p) = self.inner.pool.image(&image) {
                p.record_miss();
            }
            None
        } else {
            self.take_warm(&image).await
        };
        let id = match &warm {
            Some((_, w)) => w.id.clone(),
            None => uuid::Uuid::new_v4().simple().to_string(),
        };
        let workspace_id = req
            .workspace_id
            .clone()
            .or_else(|| persist_by_default.then(|| id.clone()));
        // Hold the workspace against deletion until the session is listed.
        let _mount = match &workspace_id {
            Some(ws) => match self.begin_mount(ws).await {
                Ok(g) => Some(g),
                Err(e) => {
                    if let Some((p, w)) = warm.take() {
                        p.put_back(w);
                    }
                    return Err(e);
                }
            },
            None => None,
        };
        let created_at = now();
        let expires_at = created_at + time::Duration::seconds(ttl as i64);
        let mut record = SessionRecord {
            id: id.clone(),
            image: image.clone(),
            state: SessionState::Creating.as_str().into(),
            workspace_id: workspace_id.clone(),
            cwd: "/workspace".into(),
            ttl_seconds: ttl,
            created_at_ms: ms(created_at),
            expires_at_ms: ms(expires_at),
            acquire_source: AcquireSource::Cold.as_str().into(),
            pid: 0,
            pid_start_time: 0,
            ended_at_ms: None,
        };

        // Late binding: the pooled sandbox takes on this request's identity.
        let mut served = None;
        let took_warm = warm.is_some();
        if let Some((p, w)) = warm.take() {
            match self.bind_warm(&w, workspace_id.as_deref(), &req.env).await {
                Ok(()) => {
                    record.state = SessionState::Running.as_str().into();
                    record.acquire_source = AcquireSource::Pool.as_str().into();
                    record.pid = w.handle.pid;
                    record.pid_start_time = w.handle.start_time;
                    match self.inner.store.promote_pool_entry(&record) {
                        Ok(()) => {
                            p.record_hit(started.elapsed());
                            self.inner.pool.acquire_hist.observe(started.elapsed());
                            served = Some((w.handle, w.agent, AcquireSource::Pool));
                        }
                        Err(e) => {
                            self.discard_taken(&p, w).await;
                            return Err(e.into());
                        }
                    }
                }
                Err(why) => {
                    tracing::warn!(session = %id, "preparing a pooled sandbox failed ({why}); creating cold");
                    self.discard_taken(&p, w).await;
                    p.record_miss();
                }
            }
        }
        let (handle, agent, source) = match served {
            Some(s) => s,
            None => {
                if took_warm {
                    // The pooled sandbox's id stays with it (back in the
                    // pool or being destroyed). A workspace named after the
                    // session by persist_by_default keeps the first name.
                    record.id = uuid::Uuid::new_v4().simple().to_string();
                }
                let sandbox = self.create_cold(&mut record, &req.env).await?;
                (sandbox.handle, sandbox.agent, AcquireSource::Cold)
            }
        };
        match source {
            AcquireSource::Pool => &self.inner.counters.creates_pool,
            AcquireSource::Cold => &self.inner.counters.creates_cold,
        }
        .fetch_add(1, Ordering::Relaxed);
        let id = record.id.clone();
        let session = Arc::new(Session {
            id: id.clone(),
            image,
            workspace_id,
            created_at,
            ttl_seconds: ttl,
            acquire_source: source,
            handle,
            agent: tokio::sync::watch::Sender::new(agent),
            agent_lost: Default::default(),
            live: Mutex::new(Live {
                state: SessionState::Running,
                expires_at,
                cwd: "/workspace".into(),
            }),
            exec_lock: tokio::sync::Mutex::new(()),
        });
        let info = session.info();
        self.inner
            .sessions
            .lock()
            .unwrap()
            .insert(id.clone(), session.clone());
        // Watch only once listed, so an instant death is not missed.
        self.watch(&session);
        self.inner.reaper_wake.notify_one();
        tracing::debug!(session = %id, source = source.as_str(), "session created");
        Ok(info)
    }

    /// Creates a sandbox from scratch for `record` (inserted here).
    async fn create_cold(
        &self,
        record: &mut SessionRecord,
        env: &[(String, String)],
    ) -> Result<sandkasten_runtime::Sandbox, EngineError> {
        let cfg = &self.inner.cfg;
        self.inner.store.insert_session(record)?;
        let spec = SandboxSpec {
            id: record.id.clone(),
            image: record.image.clone(),
            limits: cfg.limits.clone(),
            network: cfg.network,
            readonly_rootfs: cfg.readonly_rootfs,
            workspace: match &record.workspace_id {
                Some(ws) => WorkspaceMount::Persistent(ws.clone()),
                None => WorkspaceMount::Ephemeral,
            },
            env: env.to_vec(),
        };
        let sandbox = match self.inner.runtime.create(spec).await {
            Ok(s) => s,
            Err(e) => {
                record.state = SessionState::Failed.as_str().into();
                self.inner.counters.ended(SessionState::Failed);
                let _ =
                    self.inner
                        .store
                        .set_session_state(&record.id, &record.state, Some(ms(now())));
                return Err(runtime_err("creating the sandbox")(e));
            }
        };
        self.inner.store.set_session_sandbox(
            &record.id,
            SessionState::Running.as_str(),
            sandbox.handle.pid,
            sandbox.handle.start_time,
        )?;
        Ok(sandbox)
    }

    /// Gives a pooled sandbox the request's workspace and environment: the
    /// workspace is mounted into its running mount namespace, then one
    /// command in its shell exports the variables and re-enters
    /// `/workspace`. Nothing is deferred to the first exec.
    async fn bind_warm(
        &self,
        w: &crate::pool::Warm,
        workspace: Option<&str>,
        env: &[(String, String)],
    ) -> Result<(), String> {
        if let Some(ws) = workspace {
            self.inner
                .runtime
                .bind_workspace(&w.handle, ws)
                .await
                .map_err(|e| e.to_string())?;
        }
        if !env.is_empty() {
            // For shells the agent starts later (after `exit`, a timeout).
            match w.agent.call(Request::SetEnv { env: env.to_vec() }).await {
                Ok(Response::Ok) => {}
                Ok(other) => return Err(format!("setting env: unexpected reply {other:?}")),
                Err(e) => return Err(format!("setting env: {e}")),
            }
        }
        let mut cmd = String::new();
        for (k, v) in env {
            cmd.push_str(&format!("export {k}={}\n", shell_quote(v)));
        }
        if workspace.is_some() {
            cmd.push_str("cd /workspace && unset OLDPWD\n");
        }
        if cmd.is_empty() {
            return Ok(());
        }
        let mut h = w
            .agent
            .exec(cmd, 10_000, 64 * 1024)
            .map_err(|e| e.to_string())?;
        while let Some(reply) = h.replies.recv().await {
            match reply {
                Response::ExecOutput { .. } => continue,
                Response::ExecDone { exit_code: 0, .. } => return Ok(()),
                Response::ExecDone { exit_code, .. } => {
                    return Err(format!("shell setup exited with {exit_code}"))
                }
                other => return Err(format!("shell setup: unexpected reply {other:?}")),
            }
        }
        Err("shell setup: the agent connection closed".into())
    }

    /// Counters and histograms for `GET /metrics`.
    pub fn metrics(&self) -> crate::MetricsSnapshot {
        let mut live = [0u64; 3];
        for sess in self.inner.sessions.lock().unwrap().values() {
            match sess.live.lock().unwrap().state {
                SessionState::Running => live[1] += 1,
                SessionState::Destroying => live[2] += 1,
                _ => {}
            }
        }
        live[0] = self.inner.creating.load(Ordering::SeqCst) as u64;
        let c = &self.inner.counters;
        crate::MetricsSnapshot {
            pool: self.pool_stats(),
            sessions: vec![
                ("creating", live[0]),
                ("running", live[1]),
                ("destroying", live[2]),
            ],
            sessions_ended: crate::metrics::ENDED
                .iter()
                .zip(&c.ended)
                .map(|(st, n)| (st.as_str(), n.load(Ordering::Relaxed)))
                .collect(),
            creates: vec![
                ("pool", c.creates_pool.load(Ordering::Relaxed)),
                ("cold", c.creates_cold.load(Ordering::Relaxed)),
            ],
            exec_duration: c.exec.snapshot(),
            pool_acquire: self.inner.pool.acquire_hist.snapshot(),
        }
    }

    pub async fn list_sessions(&self) -> Vec<SessionInfo> {
        let mut out: Vec<SessionInfo> = self
            .inner
            .sessions
            .lock()
            .unwrap()
            .values()
            .map(|s| s.info())
            .collect();
        out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        out
    }

    pub async fn get_session(&self, id: &str) -> Result<SessionInfo, EngineError> {
        Ok(self.session(id)?.info())
    }

    pub async fn destroy_session(&self, id: &str) -> Result<(), EngineError> {
        self.end_session(id, SessionState::Destroyed).await
    }

    /// Moves a session through Destroying to `final_state`.
    async fn end_session(&self, id: &str, final_state: SessionState) -> Result<(), EngineError> {
        let s = self.session(id)?;
        {
            let mut live = s.live.lock().unwrap();
            if live.state != SessionState::Running {
                return Err(EngineError::SessionNotRunning {
                    id: id.to_string(),
                    state: live.state.as_str(),
                });
            }
            live.state = SessionState::Destroying;
        }
        self.inner
            .store
            .set_session_state(id, SessionState::Destroying.as_str(), None)?;
        let result = self.inner.runtime.destroy(&s.handle).await;
        self.inner.sessions.lock().unwrap().remove(id);
        if let Some(ws) = &s.workspace_id {
            // Idle time counts from the end of the last use.
            if let Err(e) = self.inner.store.touch_workspace(ws, ms(now())) {
                tracing::warn!(workspace = %ws, "recording workspace use: {e}");
            }
            self.inner.cleanup_wake.notify_one();
        }
        s.live.lock().unwrap().state = final_state;
        self.inner.counters.ended(final_state);
        self.inner
            .store
            .set_session_state(id, final_state.as_str(), Some(ms(now())))?;
        result.map_err(runtime_err("destroying the sandbox"))
    }

    pub async fn session_stats(&self, id: &str) -> Result<SessionStats, EngineError> {
        let s = self.active(id)?;
        self.inner
            .runtime
            .stats(&s.handle)
            .await
            .map_err(runtime_err("reading sandbox stats"))
    }

    fn exec_params(&self, req: &ExecRequest) -> Result<(u64, u64), EngineError> {
        if req.cmd.trim().is_empty() {
            return Err(EngineError::InvalidRequest("cmd must not be empty".into()));
        }
        if req.cmd.contains('\0') {
            return Err(EngineError::InvalidRequest(
                "cmd must not contain NUL bytes".into(),
            ));
        }
        let cfg = &self.inner.cfg;
        let timeout = match req.timeout_ms {
            Some(0) => {
                return Err(EngineError::InvalidRequest(
                    "timeout_ms must be at least 1".into(),
                ))
            }
            Some(t) => t.min(cfg.max_exec_timeout_ms),
            None => cfg.default_exec_timeout_ms.min(cfg.max_exec_timeout_ms),
        };
        Ok((timeout, cfg.max_output_bytes))
    }

    pub async fn exec(&self, id: &str, req: ExecRequest) -> Result<ExecResult, EngineError> {
        let mut rx = self.exec_stream_inner(id, req).await?;
        let mut output = String::new();
        while let Some(ev) = rx.recv().await {
            match ev {
                ExecEvent::Chunk { data, .. } => output.push_str(&data),
                ExecEvent::Done {
                    exit_code,
                    cwd,
                    duration_ms,
                    timed_out,
                    truncated,
                } => {
                    return Ok(ExecResult {
                        exit_code,
                        cwd,
                        output,
                        truncated,
                        duration_ms,
                        timed_out,
                    })
                }
                ExecEvent::Error { message } => return Err(EngineError::Internal(message)),
            }
        }
        Err(EngineError::Internal("exec ended without a result".into()))
    }

    /// Starts a streamed exec. Errors before the command starts are
    /// returned here; later ones arrive as `ExecEvent::Error`.
    pub async fn exec_stream(&self, id: &str, req: ExecRequest) -> Result<ExecStream, EngineError> {
        self.exec_stream_inner(id, req).await
    }

    async fn exec_stream_inner(
        &self,
        id: &str,
        req: ExecRequest,
    ) -> Result<ExecStream, EngineError> {
        let (timeout_ms, max_output) = self.exec_params(&req)?;
        let s = self.active(id)?;
        let (tx, rx) = mpsc::channel::<ExecEvent>(64);
        let engine = self.clone();
        tokio::spawn(async move {
            let _turn = s.exec_lock.lock().await;
            let started = std::time::Instant::now();
            let agent = s.connected_agent().await;
            let mut handle = match agent.exec(req.cmd, timeout_ms, max_output) {
                Ok(h) => h,
                Err(e) => {
                    let _ = tx
                        .send(ExecEvent::Error {
                            message: format!("sandbox agent unavailable: {e}"),
                        })
                        .await;
                    return;
                }
            };
            let mut cleaner = OutputCleaner::new(req.raw_output);
            // The agent enforces the timeout; this guard only catches an
            // agent that stopped answering altogether.
            let guard = tokio::time::sleep(std::time::Duration::from_millis(timeout_ms + 15_000));
            tokio::pin!(guard);
            let mut cancelled = false;
            loop {
                tokio::select! {
                    reply = handle.replies.recv() => {
                        let event = match reply {
                            Some(Response::ExecOutput { data }) => {
                                let text = cleaner.push(&data);
                                if text.is_empty() { continue; }
                                ExecEvent::Chunk { data: text, timestamp_ms: ms(now()) }
                            }
                            Some(Response::ExecDone { exit_code, cwd, timed_out, truncated, duration_ms }) => {
                                let rest = cleaner.finish();
                                if !rest.is_empty() {
                                    let _ = tx.send(ExecEvent::Chunk { data: rest, timestamp_ms: ms(now()) }).await;
                                }
                                engine.inner.counters.exec.observe(started.elapsed());
                                s.live.lock().unwrap().cwd = cwd.clone();
                                engine.persist_activity(&s);
                                let _ = tx.send(ExecEvent::Done { exit_code, cwd, duration_ms, timed_out, truncated }).await;
                                return;
                            }
                            Some(Response::Error { kind: ErrorKind::InvalidRequest, message }) => {
                                ExecEvent::Error { message }
                            }
                            Some(other) => ExecEvent::Error { message: format!("unexpected agent reply: {other:?}") },
                            None => ExecEvent::Error { message: "the sandbox agent connection closed".into() },
                        };
                        let last = matches!(event, ExecEvent::Error { .. });
                        if tx.send(event).await.is_err() && !cancelled {
                            cancelled = true;
                            let _ = agent.cancel(handle.id).await;
                        }
                        if last { return; }
                    }
                    _ = tx.closed(), if !cancelled => {
                        cancelled = true;
                        let _ = agent.cancel(handle.id).await;
                    }
                    _ = &mut guard => {
                        let _ = tx.send(ExecEvent::Error { message: "the sandbox agent stopped answering".into() }).await;
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }

    /// Resolves a client path to an absolute in-sandbox path.
    fn resolve(path: &str) -> Result<String, EngineError> {
        if path.is_empty() {
            return Err(EngineError::InvalidPath("path must not be empty".into()));
        }
        if path.contains('\0') {
            return Err(EngineError::InvalidPath(
                "path must not contain NUL bytes".into(),
            ));
        }
        Ok(if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/workspace/{path}")
        })
    }

    async fn file_call(&self, id: &str, req: Request) -> Result<Response, EngineError> {
        let s = self.active(id)?;
        let resp = s
            .connected_agent()
            .await
            .call(req)
            .await
            .map_err(runtime_err("talking to the sandbox agent"))?;
        self.persist_activity(&s);
        file_reply(resp)
    }

    /// Relative paths resolve against `/workspace`.
    pub async fn read_file(
        &self,
        id: &str,
        path: &str,
        max_bytes: Option<u64>,
    ) -> Result<FileContent, EngineError> {
        let path = Self::resolve(path)?;
        let cap = self.inner.cfg.max_read_bytes;
        let max = Some(max_bytes.map_or(cap, |m| m.min(cap)));
        match self
            .file_call(
                id,
                Request::ReadFile {
                    path,
                    max_bytes: max,
                },
            )
            .await?
        {
            Response::FileData {
                path,
                data,
                truncated,
            } => Ok(FileContent {
                path,
                data,
                truncated,
            }),
            other => Err(unexpected(other)),
        }
    }

    /// Writes a whole file, creating parents; returns the absolute path.
    pub async fn write_file(
        &self,
        id: &str,
        path: &str,
        data: Vec<u8>,
    ) -> Result<String, EngineError> {
        let path = Self::resolve(path)?;
        match self
            .file_call(
                id,
                Request::WriteFile {
                    path: path.clone(),
                    data,
                    mode: None,
                },
            )
            .await?
        {
            Response::Ok => Ok(path),
            other => Err(unexpected(other)),
        }
    }

    pub async fn list_dir(&self, id: &str, path: &str) -> Result<Vec<DirEntry>, EngineError> {
        let path = Self::resolve(path)?;
        match self.file_call(id, Request::ListDir { path }).await? {
            Response::Entries(e) => Ok(e),
            other => Err(unexpected(other)),
        }
    }

    pub async fn stat(&self, id: &str, path: &str) -> Result<FileStat, EngineError> {
        let path = Self::resolve(path)?;
        match self.file_call(id, Request::Stat { path }).await? {
            Response::Stat(s) => Ok(s),
            other => Err(unexpected(other)),
        }
    }

    pub async fn mkdir(&self, id: &str, path: &str, parents: bool) -> Result<String, EngineError> {
        let path = Self::resolve(path)?;
        match self
            .file_call(
                id,
                Request::Mkdir {
                    path: path.clone(),
                    parents,
                },
            )
            .await?
        {
            Response::Ok => Ok(path),
            other => Err(unexpected(other)),
        }
    }

    pub async fn remove(&self, id: &str, path: &str, recursive: bool) -> Result<(), EngineError> {
        let path = Self::resolve(path)?;
        match self
            .file_call(id, Request::Remove { path, recursive })
            .await?
        {
            Response::Ok => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    pub async fn list_images(&self) -> Result<Vec<ImageInfo>, EngineError> {
        self.inner
            .runtime
            .list_images()
            .await
            .map_err(runtime_err("listing images"))
    }

    /// Imports an archive (already on local disk) as image `name`.
    pub async fn import_image(
        &self,
        name: &str,
        archive: PathBuf,
    ) -> Result<ImageInfo, EngineError> {
        self.inner
            .runtime
            .import_image(name, archive)
            .await
            .map_err(runtime_err("importing an image"))
    }

    /// Refused with `ImageInUse` while a live session uses it.
    pub async fn remove_image(&self, name: &str) -> Result<(), EngineError> {
        let user = self
            .inner
            .sessions
            .lock()
            .unwrap()
            .values()
            .find(|s| s.image == name)
            .map(|s| s.id.clone());
        if let Some(session) = user {
            return Err(EngineError::ImageInUse {
                image: name.to_string(),
                session,
            });
        }
        self.inner
            .runtime
            .remove_image(name)
            .await
            .map_err(|e| match e {
                RuntimeError::ImageNotFound(n) => EngineError::ImageNotFound(n),
                e => runtime_err("removing an image")(e),
            })
    }
}

/// A file operation's reply: its typed error mapped onto the engine's (the
/// one table for the agent and for session-less workspace access).
pub(crate) fn file_reply(resp: Response) -> Result<Response, EngineError> {
    match resp {
        Response::Error { kind, message } => Err(match kind {
            ErrorKind::NotFound => EngineError::FileNotFound(message),
            ErrorKind::PermissionDenied => EngineError::PermissionDenied(message),
            ErrorKind::AlreadyExists => EngineError::AlreadyExists(message),
            ErrorKind::IsADirectory
            | ErrorKind::NotADirectory
            | ErrorKind::InvalidPath
            | ErrorKind::DirectoryNotEmpty => EngineError::InvalidPath(message),
            ErrorKind::InvalidRequest => EngineError::InvalidRequest(message),
            ErrorKind::Io => EngineError::Internal(message),
        }),
        ok => Ok(ok),
    }
}

/// Environment variables of a create request: names of `[A-Za-z_][A-Za-z0-9_]*`
/// (at most 128 of them, 64 KiB in all), values without NUL bytes.
fn validate_env(env: &[(String, String)]) -> Result<(), EngineError> {
    if env.len() > 128 {
        return Err(EngineError::InvalidRequest(
            "env: at most 128 variables".into(),
        ));
    }
    let mut total = 0;
    for (k, v) in env {
        let valid = !k.is_empty()
            && k.len() <= 256
            && !k.starts_with(|c: char| c.is_ascii_digit())
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid {
            return Err(EngineError::InvalidRequest(format!(
                "env: invalid variable name {k:?} (use letters, digits and _, not starting with a digit)"
            )));
        }
        if v.contains('\0') {
            return Err(EngineError::InvalidRequest(format!(
                "env: the value of {k} contains a NUL byte"
            )));
        }
        total += k.len() + v.len();
    }
    if total > 64 * 1024 {
        return Err(EngineError::InvalidRequest(
            "env: at most 64 KiB of names and values".into(),
        ));
    }
    Ok(())
}

/// `v` as one single-quoted shell word.
fn shell_quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', "'\\''"))
}

pub(crate) fn unexpected(resp: Response) -> EngineError {
    EngineError::Internal(format!("unexpected agent reply: {resp:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_ids_follow_the_contract() {
        for ok in ["a", "user123-project456", "A.b_c-d", &"x".repeat(64)] {
            assert!(valid_workspace_id(ok), "{ok}");
        }
        for bad in ["", ".hidden", "-x", "a/b", "a b", &"x".repeat(65), "ü"] {
            assert!(!valid_workspace_id(bad), "{bad}");
        }
    }

    #[test]
    fn relative_paths_resolve_under_workspace() {
        assert_eq!(Engine::resolve("a/b.txt").unwrap(), "/workspace/a/b.txt");
        assert_eq!(Engine::resolve("/etc/hosts").unwrap(), "/etc/hosts");
        assert!(Engine::resolve("").is_err());
        assert!(Engine::resolve("a\0b").is_err());
    }
}
