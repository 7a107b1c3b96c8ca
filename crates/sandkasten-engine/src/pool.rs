//! The pre-warmed pool: per configured image, a few running sandboxes
//! (ephemeral `/workspace`, default limits) ready to become sessions.
//!
//! - **Fill.** One loop per image keeps `idle + in_flight` at the target.
//!   It wakes on events only: a claim over (a taken sandbox put back or
//!   discarded; promoted, once the new session's first exec has answered
//!   or [`REFILL_GRACE`] has passed, whichever comes first: never at the
//!   take, so that a refill competes neither with the claim nor with the
//!   first command for CPU), a sandbox discarded or filled, or the next
//!   idle deadline. Fills across all images share a small semaphore,
//!   so refills never take every core from live requests; a failing image
//!   backs off exponentially (the error is kept for `GET /v1/pool`).
//! - **Acquire** never waits: it pops the oldest idle sandbox, proves it
//!   alive (its agent answers a ping), and otherwise reports a miss so the
//!   create goes cold at once. The create then binds the request to it
//!   (workspace mount, env, TTL: see `Engine::create_session`) and either
//!   promotes it ([`Taken::promote`]) or gives it back.
//! - **Health.** A watcher per pooled sandbox throws it away the moment its
//!   agent connection closes; sandboxes idle longer than `max_idle` are
//!   replaced.
//! - **Records.** Every pooled sandbox has a `pool_entries` row from the
//!   moment it runs; handing it out turns the row into a session row in one
//!   transaction. At start, rows left by a crash are destroyed (the pool is
//!   rebuilt from the current config, which is how a changed config resizes
//!   it); SIGTERM drains the pool (`Engine::shutdown`).

use crate::db::Db;
use crate::metrics::{Histogram, Recent};
use crate::session::ms;
use crate::{EngineError, ImagePoolStats, PoolStats};
use sandkasten_runtime::{
    AgentClient, Limits, NetworkMode, Runtime, RuntimeError, SandboxHandle, SandboxSpec,
    WorkspaceMount,
};
use sandkasten_store::{PoolEntryRecord, SessionRecord, StoreError};
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

/// How long a pooled sandbox's agent may take to answer the health ping
/// (a live one answers in well under a millisecond; a create must never be
/// much slower than a cold one because of a stuck pooled sandbox).
const HEALTH_TIMEOUT: Duration = Duration::from_millis(100);
/// How long a promoted sandbox's refill waits at most for the session's
/// first exec (a session that runs none does not hold the pool back).
pub(crate) const REFILL_GRACE: Duration = Duration::from_millis(200);
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Pool settings (from the daemon's `pool:` config).
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Image → number of idle sandboxes to keep; empty: no pool.
    pub images: BTreeMap<String, usize>,
    /// Replace a pooled sandbox unused for this long.
    pub max_idle: Duration,
    /// Sandboxes started at the same time to fill the pool (all images).
    pub max_concurrent_fills: usize,
}

/// For the engine's own tests only (see `EngineConfig`'s `Default`).
#[cfg(test)]
impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            images: BTreeMap::new(),
            max_idle: Duration::from_secs(1800),
            max_concurrent_fills: 2,
        }
    }
}

/// Why a pooled sandbox could not be started or prepared.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("starting a pooled sandbox: {0}")]
    Start(#[source] RuntimeError),
    #[error("warming up the shell: {0}")]
    WarmUp(#[source] RuntimeError),
    #[error("recording the pooled sandbox: {0}")]
    Record(#[source] StoreError),
    #[error("the pool is closing")]
    Closing,
}

/// What every pooled sandbox is started with (a session's defaults).
#[derive(Debug, Clone)]
pub(crate) struct WarmTemplate {
    pub(crate) limits: Limits,
    pub(crate) network: NetworkMode,
    pub(crate) readonly_rootfs: bool,
}

/// A ready sandbox in the pool.
pub(crate) struct Warm {
    pub(crate) id: String,
    pub(crate) handle: SandboxHandle,
    pub(crate) agent: AgentClient,
    born: Instant,
}

/// A pooled sandbox taken for a create: it becomes a session
/// ([`Taken::promote`]), goes back unchanged ([`Taken::put_back`]), or is
/// thrown away ([`Taken::discard`]). Dropped otherwise (the create was
/// cancelled half-way), it is destroyed: a pooled sandbox is a pool entry
/// or a session, never neither.
pub(crate) struct Taken {
    pool: Arc<Pool>,
    image: Arc<ImagePool>,
    warm: Option<Warm>,
    /// Promoted: the [`RefillGate`] wakes the fill loop, not the drop.
    promoted: bool,
    /// Its session record is written ([`Taken::record`]): dropped before
    /// it is promoted, the record is marked failed.
    recorded: AtomicBool,
}

/// How a taken sandbox answered its ping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Health {
    Alive,
    /// No answer within [`HEALTH_TIMEOUT`] (a busy host), connection open.
    Slow,
    /// Its connection is closed or the ping failed.
    Dead,
}

/// Wakes its image's fill loop when dropped: the session a pooled sandbox
/// became holds it until its first exec has answered (or
/// [`REFILL_GRACE`]), so that the refill does not slow that exec down.
pub(crate) struct RefillGate {
    image: Arc<ImagePool>,
}

impl Drop for RefillGate {
    fn drop(&mut self) {
        self.image.wake.notify_one();
    }
}

impl Taken {
    fn new(pool: Arc<Pool>, image: Arc<ImagePool>, warm: Warm) -> Taken {
        Taken {
            pool,
            image,
            warm: Some(warm),
            promoted: false,
            recorded: AtomicBool::new(false),
        }
    }

    /// The sandbox (present until promoted, put back or discarded).
    pub(crate) fn warm(&self) -> &Warm {
        self.warm.as_ref().expect("a taken sandbox is used once")
    }

    fn take_warm(&mut self) -> Warm {
        self.warm.take().expect("a taken sandbox is used once")
    }

    /// Turns its pool record into the session `record` (one transaction)
    /// and counts the hit; on failure the sandbox is destroyed. The gate
    /// starts the refill when dropped.
    pub(crate) async fn promote(
        self,
        record: SessionRecord,
        started: Instant,
    ) -> Result<(SandboxHandle, AgentClient, RefillGate), EngineError> {
        match self.record(record).await {
            Ok(()) => Ok(self.promoted(started)),
            Err(e) => {
                self.discard().await;
                Err(e.into())
            }
        }
    }

    /// The store half of [`Taken::promote`]: its pool record becomes the
    /// session `record` (one transaction).
    pub(crate) async fn record(&self, record: SessionRecord) -> Result<(), StoreError> {
        self.pool
            .db
            .run(move |s| s.promote_pool_entry(&record))
            .await?;
        self.recorded.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// The rest of [`Taken::promote`], once [`Taken::record`] succeeded.
    pub(crate) fn promoted(mut self, started: Instant) -> (SandboxHandle, AgentClient, RefillGate) {
        self.image.record_hit(started.elapsed());
        self.pool.acquire_hist.observe(started.elapsed());
        let w = self.take_warm();
        self.promoted = true;
        let gate = RefillGate {
            image: self.image.clone(),
        };
        (w.handle, w.agent, gate)
    }

    /// Pings its agent.
    pub(crate) async fn health(&self) -> Health {
        match tokio::time::timeout(HEALTH_TIMEOUT, self.warm().agent.ping()).await {
            Ok(Ok(_)) => Health::Alive,
            Ok(Err(_)) => Health::Dead,
            Err(_) => Health::Slow,
        }
    }

    /// Puts it back unused, first in line.
    pub(crate) fn put_back(mut self) {
        let w = self.take_warm();
        self.image.idle.lock().unwrap().push_front(w);
    }

    /// Destroys it (it could not be prepared) and counts a miss.
    pub(crate) async fn discard(mut self) {
        let w = self.take_warm();
        self.image.discarded.fetch_add(1, Ordering::Relaxed);
        self.image.record_miss();
        self.pool.destroy_warm_now(w).await;
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        if let Some(w) = self.warm.take() {
            tracing::warn!(sandbox = %w.id, "a create was cancelled while preparing a pooled sandbox; destroying it");
            if self.recorded.load(Ordering::SeqCst) {
                // Its record says running: it ends as failed.
                let (db, id, at) = (
                    self.pool.db.clone(),
                    w.id.clone(),
                    ms(crate::session::now()),
                );
                tokio::spawn(async move {
                    let _ = db
                        .run(move |s| {
                            s.set_session_state(
                                &id,
                                sandkasten_store::SessionState::Failed,
                                Some(at),
                            )
                        })
                        .await;
                });
            }
            self.image.discarded.fetch_add(1, Ordering::Relaxed);
            self.pool.destroy_warm(w);
        }
        // The refill starts once the claim is over (put back or discarded;
        // promoted: when the session drops its gate), so that it never
        // competes with the claim for CPU.
        if !self.promoted {
            self.image.wake.notify_one();
        }
    }
}

/// One image's pool.
pub(crate) struct ImagePool {
    image: String,
    target: usize,
    idle: Mutex<VecDeque<Warm>>,
    in_flight: AtomicUsize,
    hits: AtomicU64,
    misses: AtomicU64,
    discarded: AtomicU64,
    recycled: AtomicU64,
    refill_failures: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// Consecutive failures (drives the backoff).
    failing: AtomicU64,
    waits: Recent,
    /// Wakes the fill loop.
    wake: Notify,
}

/// The pool of all images: owns its sandboxes, their records and its fill
/// loops.
pub(crate) struct Pool {
    cfg: PoolConfig,
    runtime: Arc<dyn Runtime>,
    db: Db,
    template: WarmTemplate,
    images: BTreeMap<String, Arc<ImagePool>>,
    fill_slots: Arc<Semaphore>,
    /// Set by the drain: fills destroy what they started, acquires miss.
    closing: AtomicBool,
    /// Signalled whenever a fill ends (the drain waits for in-flight ones).
    fill_ended: Notify,
    pub(crate) acquire_hist: Histogram,
}

impl Pool {
    pub(crate) fn new(
        cfg: PoolConfig,
        runtime: Arc<dyn Runtime>,
        db: Db,
        template: WarmTemplate,
    ) -> Pool {
        let images = cfg
            .images
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(image, n)| {
                (
                    image.clone(),
                    Arc::new(ImagePool {
                        image: image.clone(),
                        target: *n,
                        idle: Mutex::new(VecDeque::new()),
                        in_flight: AtomicUsize::new(0),
                        hits: AtomicU64::new(0),
                        misses: AtomicU64::new(0),
                        discarded: AtomicU64::new(0),
                        recycled: AtomicU64::new(0),
                        refill_failures: AtomicU64::new(0),
                        last_error: Mutex::new(None),
                        failing: AtomicU64::new(0),
                        waits: Recent::new(),
                        wake: Notify::new(),
                    }),
                )
            })
            .collect();
        Pool {
            fill_slots: Arc::new(Semaphore::new(cfg.max_concurrent_fills.max(1))),
            cfg,
            runtime,
            db,
            template,
            images,
            closing: AtomicBool::new(false),
            fill_ended: Notify::new(),
            acquire_hist: Histogram::new(),
        }
    }

    /// Counts a create of `image` that did not use the pool.
    pub(crate) fn record_miss(&self, image: &str) {
        if let Some(p) = self.images.get(image) {
            p.record_miss();
        }
    }

    pub(crate) fn stats(&self) -> PoolStats {
        PoolStats {
            images: self
                .images
                .iter()
                .map(|(name, p)| {
                    (
                        name.clone(),
                        ImagePoolStats {
                            target: p.target,
                            idle: p.idle.lock().unwrap().len(),
                            in_flight: p.in_flight.load(Ordering::SeqCst),
                            hits: p.hits.load(Ordering::Relaxed),
                            misses: p.misses.load(Ordering::Relaxed),
                            discarded: p.discarded.load(Ordering::Relaxed),
                            recycled: p.recycled.load(Ordering::Relaxed),
                            refill_failures: p.refill_failures.load(Ordering::Relaxed),
                            last_error: p.last_error.lock().unwrap().clone(),
                            acquire_wait_p50_ms: p.waits.percentile(50.0),
                            acquire_wait_p95_ms: p.waits.percentile(95.0),
                        },
                    )
                })
                .collect(),
        }
    }
}

impl ImagePool {
    pub(crate) fn record_hit(&self, wait: Duration) {
        self.hits.fetch_add(1, Ordering::Relaxed);
        self.waits.push(wait.as_secs_f64() * 1000.0);
    }

    pub(crate) fn record_miss(&self) {
        self.misses.fetch_add(1, Ordering::Relaxed);
    }

    fn remove(&self, id: &str) -> Option<Warm> {
        let mut idle = self.idle.lock().unwrap();
        let pos = idle.iter().position(|w| w.id == id)?;
        idle.remove(pos)
    }
}

impl Pool {
    /// Destroys pooled sandboxes a previous run left (after a crash); the
    /// pool is rebuilt from the current config.
    pub(crate) async fn recover(&self) -> Result<(), EngineError> {
        let left = self.db.run(|s| s.list_pool_entries()).await?;
        if !left.is_empty() {
            tracing::info!(
                count = left.len(),
                "destroying pooled sandboxes left by the previous run"
            );
        }
        for e in left {
            let handle = SandboxHandle {
                id: e.id.clone(),
                pid: e.pid,
                start_time: e.pid_start_time,
            };
            if let Err(err) = self.runtime.destroy(&handle).await {
                tracing::warn!(sandbox = %e.id, "destroying a leftover pooled sandbox: {err}");
            }
            let id = e.id.clone();
            self.db.run(move |s| s.delete_pool_entry(&id)).await?;
        }
        Ok(())
    }

    /// Starts one fill loop per pooled image.
    pub(crate) fn start(self: &Arc<Self>, shutdown: CancellationToken) {
        for p in self.images.values() {
            tracing::info!(image = %p.image, target = p.target, "filling the pool");
            let pool = self.clone();
            let p = p.clone();
            let stop = shutdown.clone();
            tokio::spawn(async move { pool.fill_loop(p, stop).await });
        }
    }

    async fn fill_loop(self: Arc<Self>, p: Arc<ImagePool>, shutdown: CancellationToken) {
        let pool = &self;
        loop {
            if shutdown.is_cancelled() || pool.closing.load(Ordering::SeqCst) {
                return;
            }
            self.recycle_idle(&p);
            let have = p.idle.lock().unwrap().len() + p.in_flight.load(Ordering::SeqCst);
            for _ in have..p.target {
                p.in_flight.fetch_add(1, Ordering::SeqCst);
                let pool = self.clone();
                let p = p.clone();
                let stop = shutdown.clone();
                tokio::spawn(async move { pool.fill_one(p, stop).await });
            }
            let next_recycle = p
                .idle
                .lock()
                .unwrap()
                .iter()
                .map(|w| w.born + pool.cfg.max_idle)
                .min();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = p.wake.notified() => {}
                _ = sleep_until(next_recycle) => {}
            }
        }
    }

    /// Replaces sandboxes that sat unused longer than `max_idle`.
    fn recycle_idle(self: &Arc<Self>, p: &Arc<ImagePool>) {
        let max_idle = self.cfg.max_idle;
        let old: Vec<Warm> = {
            let mut idle = p.idle.lock().unwrap();
            let (old, keep): (Vec<Warm>, Vec<Warm>) =
                idle.drain(..).partition(|w| w.born.elapsed() >= max_idle);
            idle.extend(keep);
            old
        };
        for w in old {
            tracing::debug!(image = %p.image, sandbox = %w.id, "recycling an idle pooled sandbox");
            p.recycled.fetch_add(1, Ordering::Relaxed);
            self.destroy_warm(w);
        }
    }

    /// Starts one sandbox for the pool (counted in `in_flight` by the
    /// caller).
    async fn fill_one(self: Arc<Self>, p: Arc<ImagePool>, shutdown: CancellationToken) {
        let pool = &self;
        let result = async {
            let _slot = pool
                .fill_slots
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| PoolError::Closing)?;
            if pool.closing.load(Ordering::SeqCst) || shutdown.is_cancelled() {
                return Ok(None);
            }
            self.start_warm(&p).await.map(Some)
        }
        .await;
        let mut filled = false;
        match result {
            Ok(Some(w)) => {
                p.failing.store(0, Ordering::SeqCst);
                if pool.closing.load(Ordering::SeqCst) {
                    self.destroy_warm(w);
                } else {
                    self.watch_warm(&p, &w);
                    let idle = {
                        let mut idle = p.idle.lock().unwrap();
                        idle.push_back(w);
                        idle.len()
                    };
                    filled = idle >= p.target;
                }
            }
            Ok(None) => {}
            Err(e) => {
                let n = p.failing.fetch_add(1, Ordering::SeqCst);
                p.refill_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(image = %p.image, "pool refill failed: {e}");
                *p.last_error.lock().unwrap() = Some(e.to_string());
                let backoff =
                    (BACKOFF_MIN * 2u32.saturating_pow(n.min(16) as u32)).min(BACKOFF_MAX);
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(backoff) => {}
                }
            }
        }
        p.in_flight.fetch_sub(1, Ordering::SeqCst);
        if filled && p.in_flight.load(Ordering::SeqCst) == 0 {
            tracing::info!(image = %p.image, target = p.target, "pool at target");
        }
        pool.fill_ended.notify_waiters();
        p.wake.notify_one();
    }

    /// Creates one pooled sandbox and records it.
    async fn start_warm(self: &Arc<Self>, p: &ImagePool) -> Result<Warm, PoolError> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        // A sandbox snapshot held by the pool: its image, on its state.
        let (image, from_snapshot) = if crate::is_sandbox_snapshot(&p.image) {
            let key = p.image.clone();
            let found = self
                .db
                .run(move |st| st.get_sandbox_snapshot(&key))
                .await
                .ok()
                .flatten()
                .ok_or_else(|| PoolError::Start(RuntimeError::ImageNotFound(p.image.clone())))?;
            (found.image, Some(p.image.clone()))
        } else {
            (p.image.clone(), None)
        };
        let spec = SandboxSpec {
            id: id.clone(),
            image,
            limits: self.template.limits.clone(),
            network: self.template.network,
            readonly_rootfs: self.template.readonly_rootfs,
            workspace: WorkspaceMount::Ephemeral,
            env: Vec::new(),
            wake: false,
            from_snapshot,
        };
        let sandbox = self.runtime.create(spec).await.map_err(PoolError::Start)?;
        let w = Warm {
            id: id.clone(),
            handle: sandbox.handle,
            agent: sandbox.agent,
            born: Instant::now(),
        };
        // One command through the shell now, so that whatever its first
        // command costs (page faults, lazy init) is paid here and not by
        // the session's first exec.
        if let Err(e) = warm_up(&w.agent).await {
            self.destroy_warm(w);
            return Err(PoolError::WarmUp(e));
        }
        let rec = PoolEntryRecord {
            id,
            image: p.image.clone(),
            pid: w.handle.pid,
            pid_start_time: w.handle.start_time,
            created_at_ms: ms(time::OffsetDateTime::now_utc()),
        };
        if let Err(e) = self.db.run(move |s| s.insert_pool_entry(&rec)).await {
            self.destroy_warm(w);
            return Err(PoolError::Record(e));
        }
        Ok(w)
    }

    /// Throws a pooled sandbox away the moment its agent connection closes
    /// (it died while idle); once handed out, the session's own watcher
    /// takes over and this one finds nothing to do.
    fn watch_warm(self: &Arc<Self>, p: &Arc<ImagePool>, w: &Warm) {
        let engine = self.clone();
        let p = p.clone();
        let agent = w.agent.clone();
        let id = w.id.clone();
        tokio::spawn(async move {
            agent.closed().await;
            if let Some(w) = p.remove(&id) {
                tracing::warn!(image = %p.image, sandbox = %id, "a pooled sandbox died; replacing it");
                p.discarded.fetch_add(1, Ordering::Relaxed);
                engine.destroy_warm(w);
                p.wake.notify_one();
            }
        });
    }

    /// Destroys a pooled sandbox and its record in the background.
    fn destroy_warm(self: &Arc<Self>, w: Warm) {
        let pool = self.clone();
        tokio::spawn(async move { pool.destroy_warm_now(w).await });
    }

    async fn destroy_warm_now(&self, w: Warm) {
        if let Err(e) = self.runtime.destroy(&w.handle).await {
            tracing::warn!(sandbox = %w.id, "destroying a pooled sandbox: {e}");
        }
        let id = w.id.clone();
        if let Err(e) = self.db.run(move |s| s.delete_pool_entry(&id)).await {
            tracing::warn!(sandbox = %w.id, "deleting a pool record: {e}");
        }
    }

    /// Takes a live pooled sandbox of `image`, or `None` at once (the
    /// create goes cold; a miss is counted). Dead ones met on the way are
    /// discarded.
    /// Takes the first idle sandbox whose agent connection is open without
    /// asking it anything: the caller pings it ([`Taken::answers`]) along
    /// with its other steps.
    pub(crate) fn take_unchecked(self: &Arc<Self>, image: &str) -> Option<Taken> {
        let p = self.images.get(image)?.clone();
        if self.closing.load(Ordering::SeqCst) {
            return None;
        }
        loop {
            let w = p.idle.lock().unwrap().pop_front();
            let Some(w) = w else {
                p.record_miss();
                return None;
            };
            if w.agent.is_connected() {
                return Some(Taken::new(self.clone(), p, w));
            }
            tracing::warn!(image = %image, sandbox = %w.id, "discarding a dead pooled sandbox");
            p.discarded.fetch_add(1, Ordering::Relaxed);
            self.destroy_warm(w);
            p.wake.notify_one();
        }
    }

    pub(crate) async fn take(self: &Arc<Self>, image: &str) -> Option<Taken> {
        let p = self.images.get(image)?.clone();
        if self.closing.load(Ordering::SeqCst) {
            return None;
        }
        // Slow ones go back at the end, after this acquire.
        let mut skipped = Vec::new();
        loop {
            let w = p.idle.lock().unwrap().pop_front();
            let Some(w) = w else {
                p.idle.lock().unwrap().extend(skipped);
                p.record_miss();
                return None;
            };
            let ping = if w.agent.is_connected() {
                tokio::time::timeout(HEALTH_TIMEOUT, w.agent.ping()).await
            } else {
                Ok(Err(RuntimeError::Agent("agent connection closed".into())))
            };
            match ping {
                Ok(Ok(_)) => {
                    p.idle.lock().unwrap().extend(skipped);
                    return Some(Taken::new(self.clone(), p, w));
                }
                Err(_) => {
                    // Alive but slow (a busy host): not handed out now, not
                    // thrown away either; the create goes on without it.
                    tracing::debug!(image = %image, sandbox = %w.id, "pooled sandbox slow to answer; skipped");
                    skipped.push(w);
                }
                Ok(Err(_)) => {
                    tracing::warn!(image = %image, sandbox = %w.id, "discarding a dead pooled sandbox");
                    p.discarded.fetch_add(1, Ordering::Relaxed);
                    self.destroy_warm(w);
                    p.wake.notify_one();
                }
            }
        }
    }

    /// Graceful shutdown: stops filling, waits for fills in flight, and
    /// destroys every idle pooled sandbox.
    pub(crate) async fn drain(&self) {
        let pool = self;
        pool.closing.store(true, Ordering::SeqCst);
        for p in pool.images.values() {
            loop {
                let ended = pool.fill_ended.notified();
                if p.in_flight.load(Ordering::SeqCst) == 0 {
                    break;
                }
                ended.await;
            }
        }
        let all: Vec<Warm> = pool
            .images
            .values()
            .flat_map(|p| p.idle.lock().unwrap().drain(..).collect::<Vec<_>>())
            .collect();
        if !all.is_empty() {
            tracing::info!(count = all.len(), "draining the pool");
        }
        futures::future::join_all(all.into_iter().map(|w| self.destroy_warm_now(w))).await;
    }
}

async fn warm_up(agent: &AgentClient) -> Result<(), RuntimeError> {
    let done = agent.exec("true".into(), 10_000, 1024)?.finish().await?;
    if done.exit_code != 0 {
        return Err(RuntimeError::Agent(format!(
            "`true` exited with {}",
            done.exit_code
        )));
    }
    Ok(())
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}
