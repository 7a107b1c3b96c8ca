//! The engine: sessions from create to destroy, exec, files, the TTL
//! reaper, the watchers that notice a dead sandbox, and recovery at start.
//! It composes the parts that own their state: the [`SessionTable`], the
//! [`Pool`], the [`WorkspaceLocks`] and the store behind [`Db`].
//!
//! A create is three steps: [`Engine::validate`] (the request against the
//! config; nothing is reserved yet), [`Engine::acquire`] (a pooled sandbox
//! bound to the request, or a cold one), [`Engine::register`] (listed,
//! watched).

use crate::db::Db;
use crate::error::{FileError, ImageError, PortError, SessionError, WorkspaceError};
use crate::pool::{Health, Pool, WarmTemplate};
use crate::sessions::{
    ExecJob, Session, SessionParams, SessionTable, ATTACH_PING_TIMEOUT, RECONNECT_PATIENCE,
};
use crate::text::OutputCleaner;
use crate::workspace::{MountGuard, WorkspaceConfig, Workspaces};
use crate::{
    AcquireSource, CreateSession, DirEntry, EngineConfig, EngineError, ExecEvent, ExecRequest,
    ExecResult, ExecStream, FileReader, FileStat, SessionInfo, SessionState, SessionStats,
};
use sandkasten_runtime::{
    AgentClient, ExecReply, NetworkPolicy, PortStream, Runtime, RuntimeError, Sandbox,
    SandboxHandle, SandboxSpec, WorkspaceMount,
};
use sandkasten_store::{SessionRecord, Store};
use std::sync::atomic::Ordering;
use std::sync::Arc;
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
    pub(crate) db: Db,
    pub(crate) sessions: Arc<SessionTable>,
    /// Wakes the reaper when an expiry moves earlier.
    pub(crate) reaper_wake: Notify,
    /// Set by [`Engine::shutdown`]: creates answer `ShuttingDown`.
    closing: std::sync::atomic::AtomicBool,
    pub(crate) workspaces: Arc<Workspaces>,
    pool: Arc<Pool>,
    counters: crate::metrics::Counters,
    /// Steps that run to their end once started (`Engine::to_the_end`, a
    /// session's destroy): a shutdown waits for them, so a step a
    /// request began is never cut halfway when the daemon stops.
    pub(crate) steps: tokio_util::task::TaskTracker,
}

pub(crate) fn ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

pub(crate) fn from_ms(v: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(v as i128 * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

pub(crate) fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// A create request checked against the config.
struct ValidCreate {
    image: String,
    ttl: u64,
    workspace_id: Option<String>,
    /// A session without `workspace_id` keeps one named after it.
    persist_by_default: bool,
    env: Vec<(String, String)>,
    /// The disk limit to enforce (None: the backend enforces none).
    disk_limit_mb: Option<u64>,
    /// The network policy, within the operator's cap.
    network: NetworkPolicy,
    metadata: std::collections::BTreeMap<String, String>,
    on_timeout: crate::OnTimeout,
    idle_timeout_seconds: Option<u64>,
    /// Start on a copy of this sandbox snapshot.
    from_snapshot: Option<String>,
    /// The pool to take from: the image's, or the snapshot's.
    pool_key: String,
}

/// A sandbox acquired for a create, with the identity it got.
struct Acquired {
    record: SessionRecord,
    sandbox: Sandbox,
    source: AcquireSource,
    /// Holds the workspace against deletion until the session is listed
    /// (then the listed session holds it).
    mount: Option<MountGuard>,
    /// The network policy in force.
    network: NetworkPolicy,
    /// A pooled sandbox's refill, held until the first exec (see
    /// [`crate::pool::RefillGate`]).
    refill: Option<crate::pool::RefillGate>,
}

impl Engine {
    /// Builds the engine, recovers sessions from the store and starts the
    /// reaper, the pool and the workspace cleanup. Background work stops
    /// when `shutdown` is cancelled.
    pub async fn start(
        cfg: EngineConfig,
        runtime: Arc<dyn Runtime>,
        store: Arc<Store>,
        shutdown: CancellationToken,
    ) -> Result<Engine, EngineError> {
        let db = Db::new(store);
        let sessions = Arc::new(SessionTable::new(cfg.max_sessions));
        let pool = Arc::new(Pool::new(
            cfg.pool.clone(),
            runtime.clone(),
            db.clone(),
            WarmTemplate {
                limits: cfg.limits.clone(),
                // The default's mode. Where the runtime gives running
                // sandboxes their policy, `full` means a link that allows
                // nothing yet: the request's policy is set when the sandbox
                // is handed out (one rules transaction), and a create
                // asking for `none` removes the link.
                network: cfg.network.default.mode,
                readonly_rootfs: cfg.readonly_rootfs,
            },
        ));
        let workspaces = Arc::new(Workspaces::new(
            WorkspaceConfig::from_engine(&cfg),
            runtime.clone(),
            db.clone(),
            sessions.clone(),
        ));
        let engine = Engine {
            inner: Arc::new(Inner {
                workspaces: workspaces.clone(),
                cfg,
                runtime,
                db,
                sessions,
                reaper_wake: Notify::new(),
                closing: Default::default(),
                steps: tokio_util::task::TaskTracker::new(),
                pool: pool.clone(),
                counters: crate::metrics::Counters::new(),
            }),
        };
        pool.recover().await?;
        engine.recover().await?;
        pool.start(shutdown.clone());
        tokio::spawn(workspaces.cleanup_loop(shutdown.clone()));
        let reaper = engine.clone();
        tokio::spawn(async move { reaper.reap(shutdown).await });
        Ok(engine)
    }

    /// The uid and gid commands run as inside this daemon's sandboxes
    /// (the runtime's: 1000 on native, `docker.sandbox_uid` on docker).
    pub fn sandbox_ids(&self) -> (u32, u32) {
        self.inner.runtime.sandbox_ids()
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.cfg
    }

    /// Lists a session and starts its watcher.
    pub(crate) fn register(&self, session: Arc<Session>) {
        self.inner.sessions.insert(session.clone());
        // Watch only once listed, so an instant death is not missed.
        self.watch(&session);
        self.inner.reaper_wake.notify_one();
    }

    /// Reattaches to sandboxes that survived a restart; cleans up the rest.
    async fn recover(&self) -> Result<(), EngineError> {
        let records = self.inner.db.run(|s| s.list_live_sessions()).await?;
        for rec in records {
            if rec.state == SessionState::Hibernated {
                self.recover_hibernated(&rec).await;
                continue;
            }
            let handle = SandboxHandle {
                id: rec.id.clone(),
                pid: rec.pid,
                start_time: rec.pid_start_time,
            };
            let alive = match rec.state {
                // A pause that a crash cut after the freeze, before its
                // state was stored, left a frozen sandbox whose agent
                // cannot answer: thawed first (a no-op for one that is not
                // frozen), or the session would be taken for lost.
                SessionState::Running => {
                    let _ = self.inner.runtime.resume(&handle).await;
                    self.reconnect(&handle).await.ok()
                }
                // A frozen agent does not answer: thawed for the reattach,
                // frozen again right after (its processes run for that
                // moment).
                // A thaw that fails may find a sandbox a cut resume had
                // already thawed (docker answers 500 "is not paused"): the
                // agent's answer decides, not the thaw's.
                SessionState::Paused => {
                    if let Err(e) = self.inner.runtime.resume(&handle).await {
                        tracing::warn!(session = %rec.id, "thawing a paused sandbox: {e}");
                    }
                    self.reconnect(&handle).await.ok()
                }
                _ => None,
            };
            let network = stored_policy(&rec);
            let alive = match alive {
                // The sandbox's rules are rebuilt from the stored policy
                // (the runtime started with none; for `none` a link left by
                // a change the crash interrupted goes); one that cannot get
                // them back is given up rather than left open or cut off.
                Some(found) if self.inner.runtime.network_policies() => {
                    match self.inner.runtime.set_network(&handle, &network).await {
                        Ok(()) => Some(found),
                        Err(e) => {
                            tracing::warn!(session = %rec.id, "restoring the network policy failed: {e}");
                            None
                        }
                    }
                }
                other => other,
            };
            match alive {
                Some((sandbox, cwd)) => {
                    tracing::info!(session = %rec.id, "reattached to running sandbox");
                    let session = Session::new(recovered_params(&rec, cwd), sandbox);
                    let paused = rec.state == SessionState::Paused;
                    self.register(session.clone());
                    if paused {
                        self.repause(&session, from_ms(rec.expires_at_ms)).await;
                    }
                }
                None => {
                    tracing::info!(session = %rec.id, state = %rec.state.as_str(), "sandbox is gone; cleaning up");
                    if let Err(e) = self.inner.runtime.destroy(&handle).await {
                        tracing::warn!(session = %rec.id, "cleanup of lost sandbox failed: {e}");
                    }
                    self.inner.counters.ended(SessionState::Lost);
                    let (id, at) = (rec.id.clone(), ms(now()));
                    self.inner
                        .db
                        .run(move |s| s.set_session_state(&id, SessionState::Lost, Some(at)))
                        .await?;
                }
            }
        }
        // Sandbox snapshots no record names: a crash between the storage
        // and the record (of a snapshot, or of a fork's) left them.
        let recorded: std::collections::HashSet<String> = self
            .inner
            .db
            .run(|s| s.list_sandbox_snapshots())
            .await?
            .into_iter()
            .map(|r| r.id)
            .collect();
        match self.inner.runtime.list_sandbox_snapshots().await {
            Ok(held) => {
                let orphans = held
                    .into_iter()
                    .filter(|s| crate::snapshots::is_sandbox_snapshot(s) && !recorded.contains(s));
                for snap in orphans {
                    tracing::info!(snapshot = %snap, "removing a sandbox snapshot no record names");
                    if let Err(e) = self.inner.runtime.delete_sandbox_snapshot(&snap).await {
                        tracing::warn!(snapshot = %snap, "removing an orphaned snapshot: {e}");
                    }
                }
            }
            Err(e) => tracing::warn!("listing sandbox snapshots: {e}"),
        }
        // Sandboxes on the host the store does not list as live are orphans.
        let known = self.inner.sessions.ids();
        let on_host = self
            .inner
            .runtime
            .list_sandboxes()
            .await
            .map_err(EngineError::runtime("listing sandboxes"))?;
        for id in on_host.into_iter().filter(|id| !known.contains(id)) {
            tracing::info!(session = %id, "removing orphaned sandbox");
            let handle = SandboxHandle::unproven(id.clone());
            if let Err(e) = self.inner.runtime.destroy(&handle).await {
                tracing::warn!(session = %id, "removing orphan failed: {e}");
            }
        }
        Ok(())
    }

    /// Ends sessions whose TTL ran out (a running one by its
    /// `on_timeout`, a paused or hibernated one for good) and runs the
    /// `on_timeout` of running ones idle past their limit; sleeps until
    /// the next deadline.
    async fn reap(&self, shutdown: CancellationToken) {
        // Sessions whose `on_timeout` runs now, each on a task of its own:
        // a pause or hibernate waits for the session's lifecycle lock (a
        // hibernate a client asked for holds it through its exec), which
        // must not hold up every other session's timeout.
        let timing_out: TimingOut = Arc::default();
        loop {
            let t = now();
            let mut next: Option<OffsetDateTime> = None;
            let mut soonest = |at: OffsetDateTime| next = Some(next.map_or(at, |n| n.min(at)));
            let (mut expired, mut idle) = (Vec::new(), Vec::new());
            for s in self.inner.sessions.all() {
                // A call in use: its end restarts the clocks and wakes
                // this loop when they had run out.
                if s.state() == SessionState::Running && s.pass_by_in_use() {
                    continue;
                }
                if let Some(expires_at) = s.expiry() {
                    if expires_at <= t {
                        expired.push(s);
                        continue;
                    }
                    soonest(expires_at);
                }
                if let Some(idle_at) = s.idle_deadline() {
                    if idle_at <= t {
                        idle.push(s);
                    } else {
                        soonest(idle_at);
                    }
                }
            }
            for s in expired {
                if s.state() == SessionState::Running {
                    self.time_out_apart(&timing_out, s, true);
                    continue;
                }
                tracing::info!(session = %s.id, state = s.state().as_str(), "session expired");
                // On a task of its own: a hibernated session's destroy
                // waits for a wake in flight.
                self.expire_apart(&timing_out, s);
            }
            for s in idle {
                if self.busy_anyway(&s).await {
                    if let Some(at) = s.idle_deadline() {
                        soonest(at);
                    }
                    continue;
                }
                self.time_out_apart(&timing_out, s, false);
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

    /// Destroys the paused or hibernated `s` whose limit ran out, on a
    /// task of its own unless its timeout already runs (`timing_out`).
    fn expire_apart(&self, timing_out: &TimingOut, s: Arc<Session>) {
        self.apart(timing_out, s, |engine, s| async move {
            if let Err(e) = engine.end_session(&s.id, SessionState::Expired).await {
                tracing::warn!(session = %s.id, "destroying expired session: {e}");
            }
        });
    }

    /// Runs `s`'s `on_timeout` on a task of its own unless it already runs
    /// (`timing_out`); the reaper looks again when it is done.
    fn time_out_apart(&self, timing_out: &TimingOut, s: Arc<Session>, ttl: bool) {
        self.apart(timing_out, s, move |engine, s| async move {
            engine.timed_out(&s, ttl).await
        });
    }

    /// Runs `step` for `s` on a task of its own unless a step of the
    /// reaper's already runs for it; wakes the reaper when done.
    fn apart<F, Fut>(&self, timing_out: &TimingOut, s: Arc<Session>, step: F)
    where
        F: FnOnce(Engine, Arc<Session>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let fresh = timing_out
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(s.id.clone());
        if !fresh {
            return;
        }
        let (engine, timing_out) = (self.clone(), timing_out.clone());
        // A step of its own: a shutdown waits for it as for a client's.
        self.inner.steps.spawn(async move {
            let id = s.id.clone();
            step(engine.clone(), s).await;
            timing_out
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            engine.inner.reaper_wake.notify_one();
        });
    }

    /// Watches the agent connection of a running session. When it closes
    /// while the session runs, the sandbox is asked for again
    /// ([`Runtime::attach`]: the same PID 1, proven, and an agent that
    /// answers): a connection through a remote engine can break while the
    /// sandbox lives, and is then replaced. A sandbox that is gone (its
    /// PID 1 was killed or crashed) is cleaned up and marked `lost` at once
    /// instead of answering errors until its TTL.
    pub(crate) fn watch(&self, s: &Arc<Session>) {
        let engine = self.clone();
        let mut agent = s.agent();
        let handle = s.handle();
        let id = s.id.clone();
        let weak = Arc::downgrade(s);
        tokio::spawn(async move {
            loop {
                agent.closed().await;
                let Some(session) = weak.upgrade() else {
                    return;
                };
                if session.state() != SessionState::Running {
                    session.give_up_agent();
                    return;
                }
                match engine.reconnect_patiently(&handle).await {
                    Some((fresh, _)) => {
                        tracing::info!(session = %id, "agent connection closed; reconnected to the running sandbox");
                        session.replace_agent(fresh.agent.clone());
                        agent = fresh.agent;
                    }
                    None => {
                        session.lose_sandbox();
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
    async fn reconnect(&self, handle: &SandboxHandle) -> Result<(Sandbox, String), RuntimeError> {
        let gone = || RuntimeError::Gone(handle.id.clone());
        let attach = async {
            let sandbox = self.inner.runtime.attach(handle).await?;
            match sandbox.agent.ping().await {
                Ok(cwd) => Ok((sandbox, cwd)),
                Err(_) => Err(gone()),
            }
        };
        tokio::time::timeout(ATTACH_PING_TIMEOUT, attach)
            .await
            .unwrap_or_else(|_| Err(gone()))
    }

    /// [`Engine::reconnect`], retried while the backend cannot tell (a
    /// remote engine out of reach), with backoff, for up to
    /// [`RECONNECT_PATIENCE`]; `None` once the sandbox is gone or that time
    /// is up. (A bounded retry: there is no event for a remote engine
    /// coming back.)
    async fn reconnect_patiently(&self, handle: &SandboxHandle) -> Option<(Sandbox, String)> {
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

    /// A running session, its TTL extended by this activity; a paused one
    /// is resumed first (any call to it resumes it).
    pub(crate) async fn live(&self, id: &str) -> Result<Arc<Session>, EngineError> {
        let s = self.inner.sessions.get(id)?;
        match s.state() {
            SessionState::Paused => self.resume(&s).await?,
            SessionState::Hibernated => self.wake(&s).await?,
            _ => {}
        }
        s.touch(now())?;
        Ok(s)
    }

    /// Persists the activity (expiry and cwd) of a session, without
    /// waiting for the database.
    fn persist_activity(&self, s: &Session) {
        self.inner.db.record_activity(&s.id, s.activity());
    }

    pub async fn create_session(&self, req: CreateSession) -> Result<SessionInfo, EngineError> {
        if self.inner.closing.load(Ordering::SeqCst) {
            return Err(SessionError::ShuttingDown.into());
        }
        let (v, made_ws) = self.validate_with_snapshot(req).await?;
        let reserved = self.inner.sessions.reserve();
        let _reservation = match reserved {
            Ok(r) => r,
            Err(e) => {
                self.drop_made_workspace(made_ws).await;
                return Err(e.into());
            }
        };
        let acquired = match self.acquire(v).await {
            Ok(a) => a,
            Err(e) => {
                self.drop_made_workspace(made_ws).await;
                return Err(e);
            }
        };
        let source = acquired.source;
        match source {
            AcquireSource::Pool => &self.inner.counters.creates_pool,
            AcquireSource::Cold => &self.inner.counters.creates_cold,
        }
        .fetch_add(1, Ordering::Relaxed);
        let rec = acquired.record;
        let session = Session::new(
            SessionParams {
                id: rec.id.clone(),
                image: rec.image,
                workspace_id: rec.workspace_id,
                created_at: from_ms(rec.created_at_ms),
                expires_at: from_ms(rec.expires_at_ms),
                ttl_seconds: rec.ttl_seconds,
                acquire_source: source,
                cwd: rec.cwd,
                disk_limit_mb: rec.disk_limit_mb,
                network: acquired.network,
                metadata: rec.metadata,
                on_timeout: rec
                    .on_timeout
                    .as_deref()
                    .and_then(crate::OnTimeout::parse)
                    .unwrap_or_default(),
                idle_timeout_seconds: rec.idle_timeout_seconds,
            },
            acquired.sandbox,
        );
        let info = session.info();
        if let Some(gate) = acquired.refill {
            session.hold_refill(gate);
        }
        self.register(session);
        // Listed now: the session holds its workspace from here on.
        drop(acquired.mount);
        tracing::debug!(session = %info.id, source = source.as_str(), "session created");
        Ok(info)
    }

    /// Checks a create request against the config.
    fn validate(&self, req: CreateSession) -> Result<ValidCreate, EngineError> {
        let cfg = &self.inner.cfg;
        let image = req
            .image
            .filter(|i| !i.is_empty())
            .unwrap_or_else(|| cfg.default_image.clone());
        if !cfg.allowed_images.is_empty() && !cfg.allowed_images.contains(&image) {
            return Err(
                ImageError::Invalid(format!("image {image} is not in allowed_images")).into(),
            );
        }
        let ws_cfg = self.inner.workspaces.config();
        if let Some(ws) = &req.workspace_id {
            if !ws_cfg.enabled {
                return Err(WorkspaceError::Disabled.into());
            }
            crate::check_workspace_id(ws)?;
        }
        validate_env(&req.env)?;
        validate_metadata(&req.metadata)?;
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
        let disk_limit_mb = match req.disk_limit_mb {
            Some(mb) if mb < 1 => {
                return Err(EngineError::InvalidRequest(format!(
                    "disk_limit_mb must be at least 1, got {mb}"
                )))
            }
            Some(mb) if mb as u64 > cfg.max_disk_limit_mb => {
                return Err(EngineError::InvalidRequest(format!(
                    "disk_limit_mb must be at most {} (this daemon's defaults.max_disk_limit_mb), got {mb}",
                    cfg.max_disk_limit_mb
                )))
            }
            Some(mb) => Some(mb as u64),
            None => cfg.limits.disk_mb,
        };
        let network = cfg.network.for_create(req.network, req.network_mode)?;
        self.runtime_takes(&network)?;
        let on_timeout = req.on_timeout.unwrap_or(cfg.on_timeout);
        if on_timeout == crate::OnTimeout::Hibernate && !self.inner.runtime.can_hibernate() {
            return Err(EngineError::Unsupported {
                what: "on_timeout: hibernate".into(),
                runtime: self.inner.runtime.name(),
            });
        }
        let idle_timeout_seconds = match req.idle_timeout_seconds {
            Some(0) => None,
            Some(t) if t > 30 * 24 * 3600 => {
                return Err(EngineError::InvalidRequest(
                    "idle_timeout_seconds must be at most 2592000 (30 days)".into(),
                ))
            }
            Some(t) => Some(t),
            None => cfg.idle_timeout_seconds,
        };
        Ok(ValidCreate {
            image,
            ttl,
            workspace_id: req.workspace_id,
            persist_by_default: ws_cfg.enabled && ws_cfg.persist_by_default,
            env: req.env,
            disk_limit_mb: disk_limit_mb.filter(|_| self.inner.runtime.disk_limit_enforced()),
            network,
            metadata: req.metadata,
            on_timeout,
            idle_timeout_seconds,
            from_snapshot: None,
            pool_key: String::new(),
        })
    }

    /// [`Engine::validate`], and for a create from a sandbox snapshot
    /// (`from_snapshot`, or an `image` naming one) its image and a new
    /// workspace copied from its workspace (returned, to be deleted if the
    /// create fails before it is listed).
    async fn validate_with_snapshot(
        &self,
        mut req: CreateSession,
    ) -> Result<(ValidCreate, Option<String>), EngineError> {
        let named = req
            .image
            .as_deref()
            .filter(|i| crate::is_sandbox_snapshot(i))
            .map(str::to_string);
        let snap = match (req.from_snapshot.take(), named) {
            (None, None) => {
                let mut v = self.validate(req)?;
                v.pool_key = v.image.clone();
                return Ok((v, None));
            }
            (Some(s), None) if req.image.is_some() => {
                return Err(EngineError::InvalidRequest(format!(
                    "from_snapshot {s} starts on that snapshot's image: leave image out"
                )))
            }
            (Some(s), _) | (None, Some(s)) => s,
        };
        if req.workspace_id.is_some() {
            return Err(EngineError::InvalidRequest(format!(
                "a create from snapshot {snap} gets a copy of its workspace: leave workspace_id out"
            )));
        }
        let (image, ws) = self.prepare_from_snapshot(&snap).await?;
        req.image = Some(image);
        req.workspace_id = ws.clone();
        match self.validate(req) {
            Ok(mut v) => {
                // The pool holds sandboxes of a snapshot without a
                // persistent workspace only.
                v.pool_key = if ws.is_none() {
                    snap.clone()
                } else {
                    String::new()
                };
                v.from_snapshot = Some(snap);
                Ok((v, ws))
            }
            Err(e) => {
                self.drop_made_workspace(ws).await;
                Err(e)
            }
        }
    }

    /// Deletes a workspace a failed create from a snapshot made.
    async fn drop_made_workspace(&self, ws: Option<String>) {
        if let Some(ws) = ws {
            if let Err(e) = self.delete_workspace(&ws).await {
                tracing::warn!(workspace = %ws, "deleting the copy of a failed create: {e}");
            }
        }
    }

    /// `Unsupported` when the runtime cannot enforce `policy`: one that
    /// takes no policies honours the mode alone, so entries are refused
    /// rather than ignored.
    fn runtime_takes(&self, policy: &NetworkPolicy) -> Result<(), EngineError> {
        let rt = &self.inner.runtime;
        if let Some(why) = rt.network_unsupported().filter(|_| policy.is_full()) {
            return Err(EngineError::Unsupported {
                what: why,
                runtime: rt.name(),
            });
        }
        if rt.network_policies() || (policy.allow_out.is_empty() && policy.deny_out.is_empty()) {
            return Ok(());
        }
        Err(EngineError::Unsupported {
            what: "network allow_out/deny_out entries".into(),
            runtime: rt.name(),
        })
    }

    /// A sandbox for the request: a pooled one when one is idle and can
    /// take the request (never a wait), else a cold one. The workspace is
    /// held against deletion until the session is listed.
    async fn acquire(&self, v: ValidCreate) -> Result<Acquired, EngineError> {
        let started = std::time::Instant::now();
        let mut phases = crate::metrics::Phases::start();
        let pool = &self.inner.pool;
        // A host whose disk is (nearly) full refuses new sandboxes until
        // space returns; running sessions are not touched. Checked while
        // a pooled sandbox is taken (and proven alive): independent work.
        let room = || async {
            self.inner
                .runtime
                .check_room()
                .await
                .map_err(EngineError::runtime("checking free space"))
        };
        let wants_workspace = v.workspace_id.is_some() || v.persist_by_default;
        // A runtime without policies cannot change a pooled sandbox's mode;
        // one with policies could remove a pooled sandbox's link, but
        // deleting a veth waits for the kernel's RCU grace periods (tens of
        // ms, more than a cold create): a create without network is served
        // cold where pooled sandboxes wait with a link (default mode full).
        let other_mode = v.network.mode != self.inner.cfg.network.default.mode
            && (!self.inner.runtime.network_policies() || !v.network.is_full());
        // A pooled sandbox that needs nothing bound (no workspace, no
        // variables, the default limit, no policy to set) becomes the
        // session while it is pinged: nothing would change between the
        // two, so its record need not wait for the answer. A slow answer
        // (a busy host) is no reason to throw it away then; a dead one is.
        let plain = !wants_workspace
            && v.env.is_empty()
            && !(v.network.is_full() && self.inner.runtime.network_policies())
            && v.disk_limit_mb
                .is_none_or(|mb| Some(mb) == self.inner.cfg.limits.disk_mb);
        let (room, mut taken) = if (wants_workspace && !self.inner.runtime.can_bind_workspace())
            || other_mode
            || v.pool_key.is_empty()
        {
            pool.record_miss(&v.pool_key);
            (room().await, None)
        } else if plain {
            match pool.take_unchecked(&v.pool_key) {
                Some(t) => {
                    let mut record = session_record(&v, t.warm().id.clone(), None);
                    pooled_record(&mut record, t.warm());
                    // The record is written once the free-space check
                    // passed, while the ping is on its way.
                    let (health, stored) = tokio::join!(t.health(), async {
                        room().await?;
                        Ok::<_, EngineError>(t.record(record.clone()).await)
                    });
                    phases.end("room, ping and store: promote");
                    match (stored, health) {
                        (Ok(Ok(())), Health::Alive | Health::Slow) => {
                            let promoted = t.promoted(started);
                            return Ok(self.pooled(record, promoted, None, v.network, phases));
                        }
                        (Ok(Ok(())), Health::Dead) => {
                            // Never handed out: its record ends as failed.
                            let (id, at) = (record.id.clone(), ms(now()));
                            let _ = self
                                .inner
                                .db
                                .run(move |s| {
                                    s.set_session_state(&id, SessionState::Failed, Some(at))
                                })
                                .await;
                            tracing::warn!(sandbox = %record.id, "discarding a dead pooled sandbox; creating cold");
                            t.discard().await;
                            (Ok(()), None)
                        }
                        (Ok(Err(e)), _) => {
                            t.discard().await;
                            return Err(e.into());
                        }
                        (Err(e), health) => {
                            if health == Health::Dead {
                                t.discard().await;
                            } else {
                                t.put_back();
                            }
                            return Err(e);
                        }
                    }
                }
                None => (room().await, None),
            }
        } else {
            tokio::join!(room(), pool.take(&v.pool_key))
        };
        if let Err(e) = room {
            if let Some(t) = taken {
                t.put_back();
            }
            return Err(e);
        }
        phases.end("room and pool: take");
        let id = match &taken {
            Some(t) => t.warm().id.clone(),
            None => new_id(),
        };
        let workspace_id = v
            .workspace_id
            .clone()
            .or_else(|| v.persist_by_default.then(|| id.clone()));
        let mount: Option<MountGuard> = match &workspace_id {
            Some(ws) => match self.inner.workspaces.begin_mount(ws).await {
                Ok(g) => Some(g),
                Err(e) => {
                    if let Some(t) = taken.take() {
                        t.put_back();
                    }
                    return Err(e);
                }
            },
            None => None,
        };
        if taken.is_some() && mount.is_some() {
            phases.end("workspace: hold");
        }
        let mut record = session_record(&v, id, workspace_id);

        // Late binding: the pooled sandbox takes on this request's identity.
        if let Some(t) = taken {
            match self
                .bind_warm(
                    t.warm(),
                    record.workspace_id.as_deref(),
                    &v.env,
                    v.disk_limit_mb,
                    &v.network,
                    &mut phases,
                )
                .await
            {
                Ok(()) => {
                    pooled_record(&mut record, t.warm());
                    let promoted = t.promote(record.clone(), started).await?;
                    phases.end("store: promote");
                    return Ok(self.pooled(record, promoted, mount, v.network, phases));
                }
                Err(e) => {
                    tracing::warn!(session = %record.id, "preparing a pooled sandbox failed ({e}); creating cold");
                    t.discard().await;
                    // The pooled sandbox's id stays with it. A workspace
                    // named after the session by persist_by_default keeps
                    // the first name.
                    record.id = new_id();
                }
            }
        }
        let sandbox = self
            .create_cold(&mut record, &v.env, &v.network, v.from_snapshot.clone())
            .await?;
        Ok(Acquired {
            record,
            sandbox,
            source: AcquireSource::Cold,
            mount,
            network: v.network,
            refill: None,
        })
    }

    /// A pooled sandbox promoted to the session `record`, its create's
    /// phases counted.
    fn pooled(
        &self,
        record: SessionRecord,
        (handle, agent, refill): (SandboxHandle, AgentClient, crate::pool::RefillGate),
        mount: Option<MountGuard>,
        network: NetworkPolicy,
        phases: crate::metrics::Phases,
    ) -> Acquired {
        let phases = phases.list;
        tracing::debug!(target: "sandkasten::create", session = %record.id, ?phases, "pooled create");
        self.inner.counters.pool_phases.add(&phases);
        Acquired {
            record,
            sandbox: Sandbox {
                handle,
                agent,
                phases_us: Vec::new(),
            },
            source: AcquireSource::Pool,
            mount,
            network,
            refill: Some(refill),
        }
    }

    /// Creates a sandbox from scratch for `record` (inserted here).
    async fn create_cold(
        &self,
        record: &mut SessionRecord,
        env: &[(String, String)],
        network: &NetworkPolicy,
        from_snapshot: Option<String>,
    ) -> Result<Sandbox, EngineError> {
        let policies = self.inner.runtime.network_policies();
        let cfg = &self.inner.cfg;
        let rec = record.clone();
        let mut phases = crate::metrics::Phases::start();
        self.inner.db.run(move |s| s.insert_session(&rec)).await?;
        phases.end("store: insert");
        let spec = SandboxSpec {
            id: record.id.clone(),
            image: record.image.clone(),
            limits: sandkasten_runtime::Limits {
                disk_mb: record.disk_limit_mb,
                ..cfg.limits.clone()
            },
            // A runtime with policies starts a `full` sandbox with a link
            // that allows nothing and gives it its policy once it runs
            // (below), the same way as a pooled one.
            network: network.mode,
            readonly_rootfs: cfg.readonly_rootfs,
            workspace: match &record.workspace_id {
                Some(ws) => WorkspaceMount::Persistent(ws.clone()),
                None => WorkspaceMount::Ephemeral,
            },
            env: env.to_vec(),
            wake: false,
            from_snapshot,
        };
        let created = match self.inner.runtime.create(spec).await {
            Ok(s) if policies && network.is_full() => {
                match self.inner.runtime.set_network(&s.handle, network).await {
                    Ok(()) => Ok(s),
                    Err(e) => {
                        if let Err(d) = self.inner.runtime.destroy(&s.handle).await {
                            tracing::warn!(session = %record.id, "destroying a sandbox whose network failed: {d}");
                        }
                        Err((e, "giving the sandbox its network"))
                    }
                }
            }
            Ok(s) => Ok(s),
            Err(e) => Err((e, "creating the sandbox")),
        };
        phases.end("runtime");
        let sandbox = match created {
            Ok(mut s) => {
                // The runtime's own steps, inside "runtime".
                let inner = std::mem::take(&mut s.phases_us);
                let at = phases.list.len() - 1;
                for (i, (n, us)) in inner.into_iter().enumerate() {
                    phases
                        .list
                        .insert(at + 1 + i, (format!("runtime: {n}"), us));
                }
                s
            }
            Err((e, context)) => {
                record.state = SessionState::Failed;
                self.inner.counters.ended(SessionState::Failed);
                let (id, at) = (record.id.clone(), ms(now()));
                let _ = self
                    .inner
                    .db
                    .run(move |s| s.set_session_state(&id, SessionState::Failed, Some(at)))
                    .await;
                return Err(EngineError::runtime(context)(e));
            }
        };
        record.state = SessionState::Running;
        record.pid = sandbox.handle.pid;
        record.pid_start_time = sandbox.handle.start_time;
        let (id, pid, st) = (record.id.clone(), record.pid, record.pid_start_time);
        self.inner
            .db
            .run(move |s| s.set_session_sandbox(&id, SessionState::Running, pid, st))
            .await?;
        phases.end("store: running");
        let phases = phases.list;
        tracing::debug!(target: "sandkasten::create", session = %record.id, ?phases, "cold create");
        self.inner.counters.cold_phases.add(&phases);
        Ok(sandbox)
    }

    /// Gives a pooled sandbox the request's disk limit, workspace and
    /// environment: the limit is set (pooled sandboxes run with the
    /// default one), the workspace is mounted into its running mount
    /// namespace, then one command in its shell exports the variables and
    /// re-enters `/workspace`. Nothing is deferred to the first exec.
    async fn bind_warm(
        &self,
        warm: &crate::pool::Warm,
        workspace: Option<&str>,
        env: &[(String, String)],
        disk_limit_mb: Option<u64>,
        network: &NetworkPolicy,
        phases: &mut crate::metrics::Phases,
    ) -> Result<(), RuntimeError> {
        let (handle, agent) = (&warm.handle, &warm.agent);
        if network.is_full() && self.inner.runtime.network_policies() {
            self.inner.runtime.set_network(handle, network).await?;
            phases.end("network");
        }
        if let Some(mb) = disk_limit_mb.filter(|mb| Some(*mb) != self.inner.cfg.limits.disk_mb) {
            self.inner.runtime.set_disk_limit(handle, mb).await?;
            phases.end("disk limit");
        }
        if let Some(ws) = workspace {
            self.inner.runtime.bind_workspace(handle, ws).await?;
            phases.end("workspace: bind");
        }
        let cd = workspace.map(|_| "cd /workspace && unset OLDPWD".to_string());
        if !env.is_empty() || cd.is_some() {
            prime_shell(agent, env, cd).await?;
            phases.end("shell: env and cd");
        }
        Ok(())
    }

    /// Counters and histograms for `GET /metrics`.
    pub fn metrics(&self) -> crate::MetricsSnapshot {
        let (mut running, mut destroying) = (0u64, 0u64);
        for s in self.inner.sessions.all() {
            match s.state() {
                SessionState::Running => running += 1,
                SessionState::Destroying => destroying += 1,
                _ => {}
            }
        }
        let c = &self.inner.counters;
        crate::MetricsSnapshot {
            pool: self.pool_stats(),
            sessions: vec![
                ("creating", self.inner.sessions.creating() as u64),
                ("running", running),
                ("destroying", destroying),
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
            network_denials: self.inner.runtime.network_denials_total(),
            cold_create_phases: c.cold_phases.snapshot(),
            pool_create_phases: c.pool_phases.snapshot(),
        }
    }

    /// The pool per image (`GET /v1/pool`).
    /// The images sessions can start: the runtime's, within
    /// `allowed_images` when that is set.
    pub async fn list_images(&self) -> Result<Vec<crate::ImageInfo>, EngineError> {
        let mut images = self
            .inner
            .runtime
            .list_images()
            .await
            .map_err(EngineError::runtime("listing images"))?;
        let allowed = &self.inner.cfg.allowed_images;
        if !allowed.is_empty() {
            images.retain(|i| allowed.contains(&i.name));
        }
        // Sandbox snapshots are images too (of their own image's family).
        let snaps = self.inner.db.run(|st| st.list_sandbox_snapshots()).await?;
        images.extend(
            snaps
                .into_iter()
                .filter(|s| allowed.is_empty() || allowed.contains(&s.image))
                .map(|s| crate::ImageInfo {
                    name: s.id,
                    digest: format!("snapshot of {}", s.session_id),
                    size_bytes: 0,
                    builtin: false,
                }),
        );
        Ok(images)
    }

    pub fn pool_stats(&self) -> crate::PoolStats {
        self.inner.pool.stats()
    }

    /// Graceful shutdown: new creates answer `ShuttingDown`; the pool
    /// stops filling, waits for fills in flight and destroys every idle
    /// pooled sandbox; recorded activity is flushed to the store. Sessions
    /// stay running.
    pub async fn shutdown(&self) {
        self.inner.closing.store(true, Ordering::SeqCst);
        // Lifecycle and workspace steps and destroys in flight (a request
        // the HTTP server stopped waiting for may have begun one) end
        // first.
        self.inner.steps.close();
        if tokio::time::timeout(STEPS_GRACE, self.inner.steps.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                in_flight = self.inner.steps.len(),
                "lifecycle steps still running {} s into the shutdown; stopping anyway",
                STEPS_GRACE.as_secs()
            );
        }
        self.inner.pool.drain().await;
        self.inner.db.flush().await;
    }

    pub async fn list_sessions(&self) -> Vec<SessionInfo> {
        let mut out: Vec<SessionInfo> =
            self.inner.sessions.all().iter().map(|s| s.info()).collect();
        out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        out
    }

    pub async fn get_session(&self, id: &str) -> Result<SessionInfo, EngineError> {
        Ok(self.inner.sessions.get(id)?.info())
    }

    /// `PUT /v1/sessions/{id}/network`: replaces a running session's
    /// policy. Checked like a create's (nothing changes when it is
    /// refused); in force for new connections when this returns, stored so
    /// that a restart keeps it. Changes of one session apply in order.
    pub async fn set_network(
        &self,
        id: &str,
        req: crate::NetworkRequest,
    ) -> Result<SessionInfo, EngineError> {
        let s = self.live(id).await?;
        let policy = self.inner.cfg.network.resolve(req)?;
        self.runtime_takes(&policy)?;
        let _order = s.network_change.lock().await;
        if s.network() != policy {
            if !self.inner.runtime.network_policies() {
                return Err(EngineError::Unsupported {
                    what: "changing the network of a running session".into(),
                    runtime: self.inner.runtime.name(),
                });
            }
            self.inner
                .runtime
                .set_network(&s.handle(), &policy)
                .await
                .map_err(EngineError::runtime("changing the sandbox's network"))?;
            let (sid, text) = (s.id.clone(), policy.to_text());
            // In force already: record it even if the store fails, so
            // the session reports what holds.
            s.set_network(policy);
            self.inner
                .db
                .run(move |st| st.set_session_network(&sid, &text))
                .await?;
        }
        Ok(s.info())
    }

    /// `GET /v1/sessions/{id}/network/events`: what the session's policy
    /// refused (names its DNS asked for, connections the proxy reset),
    /// oldest first, the latest 1000.
    pub async fn network_events(
        &self,
        id: &str,
    ) -> Result<Vec<sandkasten_runtime::NetworkDenial>, EngineError> {
        let s = self.inner.sessions.get(id)?;
        Ok(self.inner.runtime.network_events(&s.id))
    }

    /// Sets a running session's TTL (1 s to 30 days) and expires it that
    /// long from now (each later activity moves the expiry that far again,
    /// as with the TTL given at create); persisted, so a restart keeps it.
    pub async fn set_ttl(&self, id: &str, ttl_seconds: u64) -> Result<SessionInfo, EngineError> {
        if ttl_seconds == 0 || ttl_seconds > 30 * 24 * 3600 {
            return Err(EngineError::InvalidRequest(format!(
                "ttl_seconds must be 1 to 2592000 (30 days), got {ttl_seconds}"
            )));
        }
        let s = self.inner.sessions.get(id)?;
        let expires_at = s.set_ttl(ttl_seconds, now())?;
        let (sid, at) = (s.id.clone(), ms(expires_at));
        self.inner
            .db
            .run(move |st| st.set_session_ttl(&sid, ttl_seconds, at))
            .await?;
        // The reaper may sleep until a later expiry than the new one.
        self.inner.reaper_wake.notify_one();
        Ok(s.info())
    }

    pub async fn destroy_session(&self, id: &str) -> Result<(), EngineError> {
        self.end_session(id, SessionState::Destroyed).await
    }

    /// Moves a session through Destroying to `final_state`. Runs to its
    /// end in its own task once started, so a caller that goes away (a
    /// client disconnecting during a DELETE) never leaves a session half
    /// destroyed.
    pub(crate) async fn end_session(
        &self,
        id: &str,
        final_state: SessionState,
    ) -> Result<(), EngineError> {
        let s = self.inner.sessions.get(id)?;
        let before = s.begin_destroy()?;
        let engine = self.clone();
        let step = async move {
            // A wake in flight (a hibernated session's: it holds the
            // lifecycle lock from its state check to its end) finishes
            // first, finds the session destroying and stops the sandbox
            // it started; then the storage goes. Only a wake: a running
            // session's pause or hibernate may wait for a long exec, which
            // the destroy ends.
            let _order = match before {
                SessionState::Hibernated => Some(s.lifecycle.lock().await),
                _ => None,
            };
            engine.finish_session(s.clone(), final_state).await
        };
        match self.inner.steps.spawn(step).await {
            Ok(r) => r,
            Err(e) => Err(EngineError::Runtime {
                context: "destroying the sandbox",
                source: RuntimeError::task("destroying a session")(e),
            }),
        }
    }

    /// The rest of [`Engine::end_session`], after Running → Destroying.
    async fn finish_session(
        &self,
        s: Arc<Session>,
        final_state: SessionState,
    ) -> Result<(), EngineError> {
        let id = s.id.as_str();
        let sid = id.to_string();
        self.inner
            .db
            .run(move |st| st.set_session_state(&sid, SessionState::Destroying, None))
            .await?;
        let result = self.inner.runtime.destroy(&s.handle()).await;
        s.finish(final_state);
        self.inner.counters.ended(final_state);
        let (sid, at) = (id.to_string(), ms(now()));
        let stored = self
            .inner
            .db
            .run(move |st| st.set_session_state(&sid, final_state, Some(at)))
            .await;
        // Unlisted only once its end is stored: a client that no longer
        // finds the session finds its final state after a restart too.
        self.inner.sessions.remove(id);
        if let Some(ws) = &s.workspace_id {
            // Idle time counts from the end of the last use.
            self.inner.workspaces.session_ended(ws).await;
        }
        stored?;
        result.map_err(EngineError::runtime("destroying the sandbox"))
    }

    /// Usage of a running session (activity: its TTL restarts) or of a
    /// paused one (reading it does not resume it).
    pub async fn session_stats(&self, id: &str) -> Result<SessionStats, EngineError> {
        let s = self.inner.sessions.get(id)?;
        match s.state() {
            SessionState::Paused => {}
            // Nothing runs and no memory is held: nothing to read.
            SessionState::Hibernated => return Ok(SessionStats::default()),
            _ => s.touch(now())?,
        }
        self.inner
            .runtime
            .stats(&s.handle())
            .await
            .map_err(EngineError::runtime("reading sandbox stats"))
    }

    /// A connection to TCP `port` (1-65535) on the loopback of session
    /// `id`'s sandbox, whatever its network mode (the ports proxy). Counts
    /// as activity of the session (its TTL restarts).
    pub async fn connect_port(&self, id: &str, port: u16) -> Result<PortStream, EngineError> {
        if port == 0 {
            return Err(EngineError::InvalidRequest(
                "port must be from 1 to 65535".into(),
            ));
        }
        let s = self.live(id).await?;
        match self.inner.runtime.connect_port(&s.handle(), port).await {
            Ok(stream) => Ok(stream),
            Err(RuntimeError::PortClosed(port)) => Err(PortError::NotListening {
                session: id.to_string(),
                port,
            }
            .into()),
            Err(e @ RuntimeError::Io { .. }) if matches!(&e, RuntimeError::Io { source, .. } if crate::error::out_of_descriptors(source)) => {
                Err(EngineError::runtime("connecting to a port in the sandbox")(
                    e,
                ))
            }
            Err(RuntimeError::Io { context, source }) => Err(PortError::Unreachable {
                session: id.to_string(),
                port,
                message: format!("{context}: {source}"),
            }
            .into()),
            Err(e) => Err(EngineError::runtime("connecting to a port in the sandbox")(
                e,
            )),
        }
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

    /// Runs a command in the session's shell and answers with its whole
    /// output. It runs on the caller's task when its turn comes (no other
    /// task in between); dropped before its end (the client went away), it
    /// is interrupted in the sandbox.
    pub async fn exec(&self, id: &str, req: ExecRequest) -> Result<ExecResult, EngineError> {
        let (timeout_ms, max_output) = self.exec_params(&req)?;
        let s = self.live(id).await?;
        let job = ExecJob {
            cmd: req.cmd,
            timeout_ms,
            max_output,
            raw_output: req.raw_output,
        };
        let _in_use = ExecInUse::new(self, &s);
        let turn = s.exec_turn.clone().lock_owned().await;
        let turn = self.on_running(&s, turn).await?;
        self.exec_on_turn(&s, job, turn).await
    }

    /// An exec whose caller holds the session's exec turn for longer (a
    /// hibernate: no exec queued behind its own may run until it is done):
    /// it runs on a turn of its own.
    pub(crate) async fn exec_holding_turn(
        &self,
        s: &Arc<Session>,
        req: ExecRequest,
    ) -> Result<ExecResult, EngineError> {
        let (timeout_ms, max_output) = self.exec_params(&req)?;
        let job = ExecJob {
            cmd: req.cmd,
            timeout_ms,
            max_output,
            raw_output: req.raw_output,
        };
        let own = Arc::new(tokio::sync::Mutex::new(())).lock_owned().await;
        self.exec_on_turn(s, job, own).await
    }

    /// Runs `job` on `turn` and collects its answer.
    async fn exec_on_turn(
        &self,
        s: &Arc<Session>,
        job: ExecJob,
        turn: tokio::sync::OwnedMutexGuard<()>,
    ) -> Result<ExecResult, EngineError> {
        let mut sink = ExecSink::Collect {
            output: String::new(),
            end: None,
        };
        self.run_exec(s, job, &mut sink, turn).await;
        let ExecSink::Collect { output, end } = sink else {
            unreachable!("the sink stays what it was made")
        };
        match end {
            Some(ExecEvent::Done {
                exit_code,
                cwd,
                duration_ms,
                timed_out,
                truncated,
            }) => Ok(ExecResult {
                exit_code,
                cwd,
                output,
                truncated,
                duration_ms,
                timed_out,
            }),
            Some(ExecEvent::Error { message }) => Err(self
                .lost_or(s, SessionError::AgentLost(message).into())
                .await),
            _ => {
                let e = SessionError::AgentLost("the exec ended without a result".into());
                Err(self.lost_or(s, e.into()).await)
            }
        }
    }

    /// Starts a streamed exec: it takes its place in the session's queue
    /// now (execs of one session run in arrival order) and runs on a task
    /// of its own. Errors before the command starts are returned here;
    /// later ones arrive as `ExecEvent::Error`. Dropping the stream
    /// interrupts the command (or takes it out of the queue).
    pub async fn exec_stream(&self, id: &str, req: ExecRequest) -> Result<ExecStream, EngineError> {
        let (timeout_ms, max_output) = self.exec_params(&req)?;
        let s = self.live(id).await?;
        let job = ExecJob {
            cmd: req.cmd,
            timeout_ms,
            max_output,
            raw_output: req.raw_output,
        };
        let in_use = ExecInUse::new(self, &s);
        let (tx, rx) = mpsc::channel::<ExecEvent>(64);
        // The lock is fair in the order of first polls: polled here, the
        // place is this call's, whenever the task below runs.
        let mut turn = Box::pin(s.exec_turn.clone().lock_owned());
        let first = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(std::future::Future::poll(turn.as_mut(), cx))
        })
        .await;
        let engine = self.clone();
        tokio::spawn(async move {
            let turn = match first {
                std::task::Poll::Ready(t) => t,
                std::task::Poll::Pending => tokio::select! {
                    t = turn => t,
                    // The client went away before its turn.
                    () = tx.closed() => return,
                },
            };
            if tx.is_closed() {
                return;
            }
            let turn = match engine.on_running(&s, turn).await {
                Ok(t) => t,
                Err(e) => {
                    let message = e.to_string();
                    let _ = tx.send(ExecEvent::Error { message }).await;
                    return;
                }
            };
            engine
                .run_exec(&s, job, &mut ExecSink::Stream(tx), turn)
                .await;
            drop(in_use);
        });
        Ok(rx)
    }

    /// The exec turn `turn` on a running sandbox: a session paused (or
    /// hibernated) while the exec waited for its turn (a pause waits for
    /// the execs before it, then holds none) is resumed first, and the
    /// exec takes its turn again.
    async fn on_running(
        &self,
        s: &Arc<Session>,
        mut turn: tokio::sync::OwnedMutexGuard<()>,
    ) -> Result<tokio::sync::OwnedMutexGuard<()>, EngineError> {
        loop {
            match s.state() {
                SessionState::Paused | SessionState::Hibernated => {
                    drop(turn);
                    self.live(&s.id).await?;
                    turn = s.exec_turn.clone().lock_owned().await;
                }
                _ => return Ok(turn),
            }
        }
    }

    /// Runs one exec whose turn (`turn`, the session's exec lock) has
    /// come, its events to `sink`.
    async fn run_exec(
        &self,
        s: &Session,
        job: ExecJob,
        sink: &mut ExecSink,
        turn: tokio::sync::OwnedMutexGuard<()>,
    ) {
        let started = std::time::Instant::now();
        let agent = s.connected_agent().await;
        let handle = match agent.exec(job.cmd, job.timeout_ms, job.max_output) {
            Ok(h) => h,
            Err(e) => {
                sink.take(ExecEvent::Error {
                    message: format!("sandbox agent unavailable: {e}"),
                })
                .await;
                return;
            }
        };
        // The agent enforces the timeout; this deadline only catches an
        // agent that stopped answering altogether.
        let deadline =
            tokio::time::Instant::now() + std::time::Duration::from_millis(job.timeout_ms + 15_000);
        let id = handle.id;
        // Dropped before the end (the caller went away), the exec is
        // interrupted in the sandbox and keeps the turn until it ended.
        let mut run = Running {
            agent: agent.clone(),
            handle: Some(handle),
            turn: Some(turn),
            deadline,
        };
        let mut cleaner = OutputCleaner::new(job.raw_output);
        let guard = tokio::time::sleep_until(deadline);
        tokio::pin!(guard);
        let mut cancelled = false;
        loop {
            let Some(handle) = run.handle.as_mut() else {
                return;
            };
            tokio::select! {
                reply = handle.next() => {
                    let event = match reply {
                        Some(ExecReply::Output(data)) => {
                            let text = cleaner.push(&data);
                            if text.is_empty() { continue; }
                            ExecEvent::Chunk { data: text, timestamp_ms: ms(now()) }
                        }
                        Some(ExecReply::Done(d)) => {
                            run.handle = None;
                            let rest = cleaner.finish();
                            if !rest.is_empty() {
                                sink.take(ExecEvent::Chunk { data: rest, timestamp_ms: ms(now()) }).await;
                            }
                            self.inner.counters.exec.observe(started.elapsed());
                            self.inner.db.record_activity(&s.id, s.set_cwd(&d.cwd));
                            // The pool may refill now (a pooled session's first exec).
                            s.release_refill();
                            sink.take(ExecEvent::Done {
                                exit_code: d.exit_code,
                                cwd: d.cwd,
                                duration_ms: d.duration_ms,
                                timed_out: d.timed_out,
                                truncated: d.truncated,
                            }).await;
                            return;
                        }
                        Some(ExecReply::Refused(message)) => ExecEvent::Error { message },
                        None => ExecEvent::Error { message: "the sandbox agent connection closed".into() },
                    };
                    let last = matches!(event, ExecEvent::Error { .. });
                    if last {
                        run.handle = None;
                    }
                    if !sink.take(event).await && !cancelled {
                        // The consumer is gone: interrupted; its end is
                        // still awaited here (the turn passes on after it).
                        cancelled = true;
                        agent.request_cancel(id);
                    }
                    if last { return; }
                }
                () = sink.gone(), if !cancelled => {
                    cancelled = true;
                    agent.request_cancel(id);
                }
                _ = &mut guard => {
                    run.handle = None;
                    sink.take(ExecEvent::Error { message: "the sandbox agent stopped answering".into() }).await;
                    return;
                }
            }
        }
    }

    /// Resolves a client path to an absolute in-sandbox path.
    pub(crate) fn resolve(path: &str) -> Result<String, EngineError> {
        if path.is_empty() {
            return Err(FileError::InvalidPath("path must not be empty".into()).into());
        }
        if path.contains('\0') {
            return Err(FileError::InvalidPath("path must not contain NUL bytes".into()).into());
        }
        Ok(if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/workspace/{path}")
        })
    }

    /// The agent of a running session (TTL extended) for a file call.
    pub(crate) async fn file_agent(
        &self,
        id: &str,
    ) -> Result<(Arc<Session>, AgentClient), EngineError> {
        let s = self.live(id).await?;
        let agent = s.connected_agent().await;
        Ok((s, agent))
    }

    /// Ends a file call: its activity recorded, its error typed (a call
    /// cut by the death of the sandbox is [`SessionError::Lost`]).
    pub(crate) async fn file_done<T>(
        &self,
        s: &Session,
        r: Result<T, RuntimeError>,
    ) -> Result<T, EngineError> {
        match r {
            Err(RuntimeError::Agent(m)) => {
                let e =
                    EngineError::runtime("talking to the sandbox agent")(RuntimeError::Agent(m));
                Err(self.lost_or(s, e).await)
            }
            r => {
                self.persist_activity(s);
                r.map_err(EngineError::runtime("talking to the sandbox agent"))
            }
        }
    }

    /// What a call whose agent connection failed answers: once the
    /// session's watcher has decided (it reconnects to a sandbox that
    /// lives, or gives a dead one up), [`SessionError::Lost`] if the
    /// sandbox is gone, else `err`.
    pub(crate) async fn lost_or(&self, s: &Session, err: EngineError) -> EngineError {
        if s.sandbox_gone_verdict().await {
            SessionError::Lost(s.id.clone()).into()
        } else {
            err
        }
    }

    /// Reads a file as a stream (see [`FileReader`]), at most `max_bytes`
    /// and never more than `max_read_bytes`. Relative paths resolve
    /// against `/workspace`. Answers once the sandbox's first reply is in:
    /// a file that cannot be read is an error here, before any content.
    pub async fn read_file(
        &self,
        id: &str,
        path: &str,
        max_bytes: Option<u64>,
    ) -> Result<FileReader, EngineError> {
        let path = Self::resolve(path)?;
        let cap = self.inner.cfg.max_read_bytes;
        let max = Some(max_bytes.map_or(cap, |m| m.min(cap)));
        let (s, agent) = self.file_agent(id).await?;
        let stream = self
            .file_done(&s, agent.read_file(path.clone(), max).await)
            .await?;
        Ok(FileReader::new(path, stream, None))
    }

    /// Writes a whole file, creating parents; returns the absolute path.
    pub async fn write_file(
        &self,
        id: &str,
        path: &str,
        data: Vec<u8>,
    ) -> Result<String, EngineError> {
        let path = Self::resolve(path)?;
        let (s, agent) = self.file_agent(id).await?;
        self.file_done(&s, agent.write_file(path.clone(), data, None).await)
            .await?;
        Ok(path)
    }

    pub async fn list_dir(&self, id: &str, path: &str) -> Result<Vec<DirEntry>, EngineError> {
        let path = Self::resolve(path)?;
        let (s, agent) = self.file_agent(id).await?;
        self.file_done(&s, agent.list_dir(path).await).await
    }

    pub async fn stat(&self, id: &str, path: &str) -> Result<FileStat, EngineError> {
        let path = Self::resolve(path)?;
        let (s, agent) = self.file_agent(id).await?;
        self.file_done(&s, agent.stat(path).await).await
    }

    pub async fn mkdir(&self, id: &str, path: &str, parents: bool) -> Result<String, EngineError> {
        let path = Self::resolve(path)?;
        let (s, agent) = self.file_agent(id).await?;
        self.file_done(&s, agent.mkdir(path.clone(), parents).await)
            .await?;
        Ok(path)
    }

    pub async fn remove(&self, id: &str, path: &str, recursive: bool) -> Result<(), EngineError> {
        let path = Self::resolve(path)?;
        let (s, agent) = self.file_agent(id).await?;
        self.file_done(&s, agent.remove(path, recursive).await)
            .await
    }

    /// Renames `from` to `to` inside the sandbox (replacing a file there,
    /// creating `to`'s missing parents); returns the absolute new path.
    pub async fn rename(&self, id: &str, from: &str, to: &str) -> Result<String, EngineError> {
        let from = Self::resolve(from)?;
        let to = Self::resolve(to)?;
        let (s, agent) = self.file_agent(id).await?;
        self.file_done(&s, agent.rename(from, to.clone()).await)
            .await?;
        Ok(to)
    }
}

/// The network policy a store row recorded: rows from before policies
/// (and any the engine cannot read back) had no network.
/// A stored session's parameters, as recovery lists it again (the shell's
/// cwd as its sandbox reports it, or as stored).
pub(crate) fn recovered_params(rec: &SessionRecord, cwd: String) -> SessionParams {
    SessionParams {
        id: rec.id.clone(),
        image: rec.image.clone(),
        workspace_id: rec.workspace_id.clone(),
        created_at: from_ms(rec.created_at_ms),
        expires_at: from_ms(rec.expires_at_ms),
        ttl_seconds: rec.ttl_seconds,
        acquire_source: rec.acquire_source,
        cwd,
        disk_limit_mb: rec.disk_limit_mb,
        network: stored_policy(rec),
        metadata: rec.metadata.clone(),
        on_timeout: crate::lifecycle::on_timeout_of(rec),
        idle_timeout_seconds: rec.idle_timeout_seconds,
    }
}

pub(crate) fn stored_policy(rec: &SessionRecord) -> NetworkPolicy {
    match rec.network.as_deref().map(NetworkPolicy::from_text) {
        Some(Ok(p)) => p,
        Some(Err(e)) => {
            tracing::warn!(session = %rec.id, "unreadable stored network policy ({e}); none");
            NetworkPolicy::none()
        }
        None => NetworkPolicy::none(),
    }
}

fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Metadata of a create request: at most 64 keys of 1 to 256 bytes,
/// values of at most 4096 bytes.
fn validate_metadata(m: &std::collections::BTreeMap<String, String>) -> Result<(), EngineError> {
    if m.len() > 64 {
        return Err(EngineError::InvalidRequest(
            "metadata: at most 64 keys".into(),
        ));
    }
    for (k, v) in m {
        if k.is_empty() || k.len() > 256 {
            return Err(EngineError::InvalidRequest(format!(
                "metadata: keys must be 1 to 256 bytes, got {} bytes",
                k.len()
            )));
        }
        if v.len() > 4096 {
            return Err(EngineError::InvalidRequest(format!(
                "metadata: the value of {k:?} is over 4096 bytes"
            )));
        }
    }
    Ok(())
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
/// Gives a running sandbox's shell `env` (exported, and kept by the agent
/// for shells it starts later: after `exit`, a timeout) and runs `cd` in
/// it: one command, nothing when there is nothing to do.
pub(crate) async fn prime_shell(
    agent: &AgentClient,
    env: &[(String, String)],
    cd: Option<String>,
) -> Result<(), RuntimeError> {
    if !env.is_empty() {
        agent.set_env(env.to_vec()).await?;
    }
    let mut cmd = String::new();
    for (k, v) in env {
        cmd.push_str(&format!("export {k}={}\n", shell_quote(v)));
    }
    if let Some(cd) = cd {
        cmd.push_str(&cd);
        cmd.push('\n');
    }
    if cmd.is_empty() {
        return Ok(());
    }
    let done = agent.exec(cmd, 10_000, 64 * 1024)?.finish().await?;
    if done.exit_code != 0 {
        return Err(RuntimeError::Agent(format!(
            "shell setup exited with {}",
            done.exit_code
        )));
    }
    Ok(())
}

pub(crate) fn shell_quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', "'\\''"))
}

/// A session record that a pooled sandbox becomes: running, its process.
fn pooled_record(record: &mut SessionRecord, warm: &crate::pool::Warm) {
    record.state = SessionState::Running;
    record.acquire_source = AcquireSource::Pool;
    record.pid = warm.handle.pid;
    record.pid_start_time = warm.handle.start_time;
}

/// The store record of a session being created from `v` (not started yet).
fn session_record(v: &ValidCreate, id: String, workspace_id: Option<String>) -> SessionRecord {
    let created_at = now();
    SessionRecord {
        id,
        image: v.image.clone(),
        state: SessionState::Creating,
        workspace_id,
        cwd: "/workspace".into(),
        ttl_seconds: v.ttl,
        created_at_ms: ms(created_at),
        expires_at_ms: ms(created_at + time::Duration::seconds(v.ttl as i64)),
        acquire_source: AcquireSource::Cold,
        pid: 0,
        pid_start_time: 0,
        ended_at_ms: None,
        disk_limit_mb: v.disk_limit_mb,
        network: Some(v.network.to_text()),
        metadata: v.metadata.clone(),
        on_timeout: Some(v.on_timeout.as_str().to_string()),
        idle_timeout_seconds: v.idle_timeout_seconds,
        hibernation: None,
    }
}

/// Where an exec's events go.
enum ExecSink {
    /// Kept for one answer: the output, and the event that ended the exec.
    Collect {
        output: String,
        end: Option<ExecEvent>,
    },
    /// To a stream's consumer.
    Stream(mpsc::Sender<ExecEvent>),
}

impl ExecSink {
    /// Takes one event; false once nobody listens any more.
    async fn take(&mut self, ev: ExecEvent) -> bool {
        match self {
            ExecSink::Collect { output, end } => {
                match ev {
                    ExecEvent::Chunk { data, .. } => output.push_str(&data),
                    ev => *end = Some(ev),
                }
                true
            }
            ExecSink::Stream(tx) => tx.send(ev).await.is_ok(),
        }
    }

    /// Resolves once nobody listens any more (never for an answer that
    /// is collected: its caller dropping the exec is what ends it).
    async fn gone(&self) {
        match self {
            ExecSink::Collect { .. } => std::future::pending().await,
            ExecSink::Stream(tx) => tx.closed().await,
        }
    }
}

/// An exec sent to the agent. Dropped before its end (its caller went
/// away), it is interrupted in the sandbox, and the session's turn passes
/// on only once the agent has ended it (or `deadline` passed), as when
/// the caller had waited: the next exec's own deadline does not run while
/// it waits behind this one in the agent.
struct Running {
    agent: AgentClient,
    /// `None` once the exec has ended.
    handle: Option<sandkasten_runtime::ExecHandle>,
    turn: Option<tokio::sync::OwnedMutexGuard<()>>,
    deadline: tokio::time::Instant,
}

impl Drop for Running {
    fn drop(&mut self) {
        let Some(handle) = self.handle.take() else {
            return;
        };
        self.agent.request_cancel(handle.id);
        let (turn, deadline) = (self.turn.take(), self.deadline);
        tokio::spawn(async move {
            let _turn = turn;
            let _ = tokio::time::timeout_at(deadline, handle.finish()).await;
        });
    }
}

/// How long a shutdown waits for lifecycle steps in flight (after the
/// HTTP server's own grace for requests): a step queued behind a long
/// exec, a large import, must not keep the daemon from stopping.
const STEPS_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Sessions a step of the reaper runs for (see `Engine::apart`).
type TimingOut = Arc<std::sync::Mutex<std::collections::HashSet<String>>>;

/// An exec in use, from its arrival to its end (dropped): its session's
/// TTL and idle limit do not run out under it, and count from its end.
pub(crate) struct ExecInUse {
    engine: Engine,
    session: Arc<Session>,
}

impl ExecInUse {
    pub(crate) fn new(engine: &Engine, session: &Arc<Session>) -> ExecInUse {
        session.exec_started();
        ExecInUse {
            engine: engine.clone(),
            session: session.clone(),
        }
    }
}

impl Drop for ExecInUse {
    fn drop(&mut self) {
        if self.session.exec_ended(now()) {
            // The reaper passed it by while it ran: it looks again.
            self.engine.inner.reaper_wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_resolve_under_workspace() {
        assert_eq!(Engine::resolve("a/b.txt").unwrap(), "/workspace/a/b.txt");
        assert_eq!(Engine::resolve("/etc/hosts").unwrap(), "/etc/hosts");
        assert!(Engine::resolve("").is_err());
        assert!(Engine::resolve("a\0b").is_err());
    }

    #[test]
    fn env_names_and_sizes_are_checked() {
        assert!(validate_env(&[("A_1".into(), "x".into())]).is_ok());
        for bad in ["", "1A", "A-B", "Ä"] {
            assert!(validate_env(&[(bad.into(), "x".into())]).is_err(), "{bad}");
        }
        assert!(validate_env(&[("A".into(), "a\0b".into())]).is_err());
        let many: Vec<_> = (0..129).map(|i| (format!("V{i}"), String::new())).collect();
        assert!(validate_env(&many).is_err());
        assert!(validate_env(&[("BIG".into(), "x".repeat(65 * 1024))]).is_err());
    }

    #[test]
    fn shell_quoting_survives_single_quotes() {
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
