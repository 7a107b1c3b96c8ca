//! The live sessions: one [`Session`] per running sandbox (built in one
//! place, [`Session::new`]) and the [`SessionTable`] that owns them, with
//! the capacity reservation of creates in flight.
//!
//! Concurrency: the table is a std mutex held only for map operations
//! (never across `.await`). Each session has one exec queue, a fair async
//! lock: a request takes its place when it arrives and runs on its own
//! task when its turn comes, so execs of one session run in arrival order,
//! sessions run in parallel, and no task hand-off lies on an exec's path.

use crate::error::SessionError;
use crate::{AcquireSource, OnTimeout, SessionInfo, SessionState};
use sandkasten_runtime::{AgentClient, NetworkPolicy, Sandbox, SandboxHandle};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::watch;

/// How long a session whose agent connection broke waits for its backend
/// to be reachable again before it is given up as `lost`.
pub(crate) const RECONNECT_PATIENCE: Duration = Duration::from_secs(60);

/// How long a reattached agent may take to answer its first ping.
pub(crate) const ATTACH_PING_TIMEOUT: Duration = Duration::from_secs(5);

/// One exec, as its turn comes.
pub(crate) struct ExecJob {
    pub(crate) cmd: String,
    pub(crate) timeout_ms: u64,
    pub(crate) max_output: u64,
    pub(crate) raw_output: bool,
}

/// What a session is, fixed at creation.
pub(crate) struct SessionParams {
    pub(crate) id: String,
    pub(crate) image: String,
    pub(crate) workspace_id: Option<String>,
    pub(crate) created_at: OffsetDateTime,
    pub(crate) expires_at: OffsetDateTime,
    pub(crate) ttl_seconds: u64,
    pub(crate) acquire_source: AcquireSource,
    pub(crate) cwd: String,
    pub(crate) disk_limit_mb: Option<u64>,
    pub(crate) network: NetworkPolicy,
    pub(crate) metadata: std::collections::BTreeMap<String, String>,
    pub(crate) on_timeout: OnTimeout,
    pub(crate) idle_timeout_seconds: Option<u64>,
}

/// A live session.
pub(crate) struct Session {
    pub(crate) id: String,
    pub(crate) image: String,
    pub(crate) workspace_id: Option<String>,
    created_at: OffsetDateTime,
    acquire_source: AcquireSource,
    metadata: std::collections::BTreeMap<String, String>,
    disk_limit_mb: Option<u64>,
    /// What its TTL's end (and its idle limit) does.
    pub(crate) on_timeout: OnTimeout,
    /// Seconds without activity after which `on_timeout` runs.
    pub(crate) idle_timeout_seconds: Option<u64>,
    /// The network policy in force.
    network: Mutex<NetworkPolicy>,
    /// Orders policy changes of this session (held across the runtime's
    /// change, by that change only).
    pub(crate) network_change: tokio::sync::Mutex<()>,
    /// The sandbox; a wake from hibernation replaces it.
    handle: Mutex<SandboxHandle>,
    /// The connection to the sandbox's agent; replaced when a connection
    /// through a remote engine breaks while the sandbox lives.
    agent: watch::Sender<AgentClient>,
    /// Set (then `agent` notified) when the watcher gave the sandbox up:
    /// callers waiting for a reconnection stop waiting.
    agent_lost: AtomicBool,
    /// Set (before `agent_lost`) when the watcher found the sandbox gone:
    /// calls its death cut answer [`SessionError::Lost`].
    sandbox_gone: AtomicBool,
    live: Mutex<Live>,
    /// Orders pauses and resumes of this session (held across the
    /// runtime's freeze or thaw, by those only).
    pub(crate) lifecycle: tokio::sync::Mutex<()>,
    /// The exec queue (see the module doc): execs take turns in arrival
    /// order (the lock is fair), each on its caller's task.
    pub(crate) exec_turn: Arc<tokio::sync::Mutex<()>>,
    /// Held from a pooled create until the first exec has answered (or
    /// `pool::REFILL_GRACE`): dropping it starts the pool's refill.
    refill: Mutex<Option<crate::pool::RefillGate>>,
    /// Execs running now: a call in use, so its TTL and idle limit do not
    /// run out under it (the reaper passes it by).
    execs_running: AtomicUsize,
    /// Set when the reaper passed the session by for an exec in flight:
    /// the exec's end wakes the reaper to look at the new deadline.
    reaper_passed: AtomicBool,
}

/// A session's activity as persisted: its expiry and cwd, with the TTL
/// the expiry was computed with (see `Store::record_session_activity`).
#[derive(Debug, Clone)]
pub(crate) struct Activity {
    pub(crate) expires_at: OffsetDateTime,
    pub(crate) cwd: String,
    pub(crate) ttl_seconds: u64,
}

impl Activity {
    fn of(live: &Live) -> Activity {
        Activity {
            expires_at: live.expires_at,
            cwd: live.cwd.clone(),
            ttl_seconds: live.ttl_seconds,
        }
    }
}

struct Live {
    state: SessionState,
    expires_at: OffsetDateTime,
    /// How far each activity moves the expiry (changed by `set_ttl`).
    ttl_seconds: u64,
    cwd: String,
    /// The last activity the idle limit counts from.
    last_active: OffsetDateTime,
    /// The sandbox's CPU time (µs) at the last idle check.
    cpu_seen: Option<u64>,
}

impl Session {
    /// The one constructor (cold create, pooled create and recovery).
    pub(crate) fn new(p: SessionParams, sandbox: Sandbox) -> Arc<Session> {
        Arc::new(Session {
            id: p.id,
            image: p.image,
            workspace_id: p.workspace_id,
            created_at: p.created_at,
            acquire_source: p.acquire_source,
            metadata: p.metadata,
            disk_limit_mb: p.disk_limit_mb,
            on_timeout: p.on_timeout,
            idle_timeout_seconds: p.idle_timeout_seconds,
            network: Mutex::new(p.network),
            network_change: tokio::sync::Mutex::new(()),
            handle: Mutex::new(sandbox.handle),
            agent: watch::Sender::new(sandbox.agent),
            agent_lost: AtomicBool::new(false),
            sandbox_gone: AtomicBool::new(false),
            live: Mutex::new(Live {
                state: SessionState::Running,
                expires_at: p.expires_at,
                ttl_seconds: p.ttl_seconds,
                cwd: p.cwd,
                last_active: crate::session::now(),
                cpu_seen: None,
            }),
            lifecycle: tokio::sync::Mutex::new(()),
            exec_turn: Arc::new(tokio::sync::Mutex::new(())),
            refill: Mutex::new(None),
            execs_running: Default::default(),
            reaper_passed: AtomicBool::new(false),
        })
    }

    /// Keeps a pooled create's refill back until the first exec has
    /// answered, at most `pool::REFILL_GRACE`.
    pub(crate) fn hold_refill(self: &Arc<Self>, gate: crate::pool::RefillGate) {
        *self.refill.lock().unwrap() = Some(gate);
        let s = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(crate::pool::REFILL_GRACE).await;
            if let Some(s) = s.upgrade() {
                s.release_refill();
            }
        });
    }

    /// An exec starts; its end (`exec_ended`) counts as activity.
    pub(crate) fn exec_started(&self) {
        self.execs_running.fetch_add(1, Ordering::SeqCst);
    }

    /// An exec has ended: the TTL and the idle limit count from now.
    /// Whether the reaper must look again: it passed the session by while
    /// the exec ran (and sleeps until some other deadline).
    pub(crate) fn exec_ended(&self, now: OffsetDateTime) -> bool {
        let _ = self.touch(now);
        self.execs_running.fetch_sub(1, Ordering::SeqCst);
        self.reaper_passed.swap(false, Ordering::SeqCst)
    }

    /// Whether an exec runs (or waits for its turn) now; if so, the reaper
    /// passes the session by, which the exec's end answers by waking it.
    pub(crate) fn pass_by_in_use(&self) -> bool {
        if self.execs_running.load(Ordering::SeqCst) == 0 {
            return false;
        }
        self.reaper_passed.store(true, Ordering::SeqCst);
        // An exec that ended between the two saw no mark: look again.
        self.execs_running.load(Ordering::SeqCst) > 0
    }

    /// Lets the pool refill (a no-op after the first time).
    pub(crate) fn release_refill(&self) {
        let gate = self.refill.lock().unwrap().take();
        drop(gate);
    }

    pub(crate) fn info(&self) -> SessionInfo {
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
            disk_limit_mb: self.disk_limit_mb,
            network: self.network.lock().unwrap().clone(),
            metadata: self.metadata.clone(),
            ttl_seconds: live.ttl_seconds,
            on_timeout: self.on_timeout,
            idle_timeout_seconds: self.idle_timeout_seconds,
        }
    }

    /// Its sandbox as it is now.
    pub(crate) fn handle(&self) -> SandboxHandle {
        self.handle.lock().unwrap().clone()
    }

    /// When the idle limit runs out for a running session (`None`: no
    /// limit, or not running).
    pub(crate) fn idle_deadline(&self) -> Option<OffsetDateTime> {
        let secs = self.idle_timeout_seconds?;
        let live = self.live.lock().unwrap();
        (live.state == SessionState::Running)
            .then(|| live.last_active + time::Duration::seconds(secs as i64))
    }

    /// An idle check found `cpu_usec` of CPU time: whether the sandbox used
    /// at least `min_usec` since the last check (which then counts as
    /// activity from `now`). The first check only records.
    pub(crate) fn cpu_active(&self, cpu_usec: u64, min_usec: u64, now: OffsetDateTime) -> bool {
        let mut live = self.live.lock().unwrap();
        let active = match live.cpu_seen {
            Some(seen) => cpu_usec.saturating_sub(seen) >= min_usec,
            None => true,
        };
        live.cpu_seen = Some(cpu_usec);
        if active {
            live.last_active = now;
        }
        active
    }

    /// Running → Hibernated, expiring at `expires_at` unless woken;
    /// returns (expiry, cwd) to persist. `NotRunning` unless it runs.
    pub(crate) fn set_hibernated(
        &self,
        expires_at: OffsetDateTime,
    ) -> Result<(OffsetDateTime, String), SessionError> {
        self.suspend(SessionState::Hibernated, expires_at)
    }

    /// Hibernated → Running on a new sandbox, its TTL counting from `now`;
    /// returns (expiry, cwd) to persist.
    pub(crate) fn set_woken(
        &self,
        sandbox: Sandbox,
        now: OffsetDateTime,
    ) -> Result<(OffsetDateTime, String), SessionError> {
        let mut live = self.live.lock().unwrap();
        if live.state != SessionState::Hibernated {
            return Err(SessionError::NotRunning {
                id: self.id.clone(),
                state: live.state,
            });
        }
        *self.handle.lock().unwrap() = sandbox.handle;
        self.agent_lost.store(false, Ordering::SeqCst);
        self.sandbox_gone.store(false, Ordering::SeqCst);
        self.agent.send_replace(sandbox.agent);
        live.state = SessionState::Running;
        live.expires_at = now + time::Duration::seconds(live.ttl_seconds as i64);
        live.last_active = now;
        live.cpu_seen = None;
        Ok((live.expires_at, live.cwd.clone()))
    }

    /// Records the policy a change put in force.
    pub(crate) fn set_network(&self, policy: NetworkPolicy) {
        *self.network.lock().unwrap() = policy;
    }

    /// The policy in force.
    pub(crate) fn network(&self) -> NetworkPolicy {
        self.network.lock().unwrap().clone()
    }

    pub(crate) fn state(&self) -> SessionState {
        self.live.lock().unwrap().state
    }

    /// Expiry of a running, paused or hibernated session (`None`
    /// otherwise): the TTL of a running one, the paused or hibernated
    /// limit of the others.
    pub(crate) fn expiry(&self) -> Option<OffsetDateTime> {
        let live = self.live.lock().unwrap();
        matches!(
            live.state,
            SessionState::Running | SessionState::Paused | SessionState::Hibernated
        )
        .then_some(live.expires_at)
    }

    /// Running → Paused, expiring at `expires_at` unless resumed; returns
    /// (expiry, cwd) to persist.
    pub(crate) fn set_paused(
        &self,
        expires_at: OffsetDateTime,
    ) -> Result<(OffsetDateTime, String), SessionError> {
        self.suspend(SessionState::Paused, expires_at)
    }

    /// Running → `to` (paused or hibernated), expiring at `expires_at`
    /// unless resumed; `NotRunning` unless it runs.
    fn suspend(
        &self,
        to: SessionState,
        expires_at: OffsetDateTime,
    ) -> Result<(OffsetDateTime, String), SessionError> {
        let mut live = self.live.lock().unwrap();
        if live.state != SessionState::Running {
            return Err(SessionError::NotRunning {
                id: self.id.clone(),
                state: live.state,
            });
        }
        live.state = to;
        live.expires_at = expires_at;
        Ok((live.expires_at, live.cwd.clone()))
    }

    /// Paused → Running, its TTL counting from `now` (a resume is
    /// activity); returns (expiry, cwd) to persist.
    pub(crate) fn set_resumed(
        &self,
        now: OffsetDateTime,
    ) -> Result<(OffsetDateTime, String), SessionError> {
        let mut live = self.live.lock().unwrap();
        if live.state != SessionState::Paused {
            return Err(SessionError::NotPaused {
                id: self.id.clone(),
                state: live.state,
            });
        }
        live.state = SessionState::Running;
        live.expires_at = now + time::Duration::seconds(live.ttl_seconds as i64);
        Ok((live.expires_at, live.cwd.clone()))
    }

    /// Checks that the session runs and extends its TTL by this activity.
    pub(crate) fn touch(&self, now: OffsetDateTime) -> Result<(), SessionError> {
        let mut live = self.live.lock().unwrap();
        if live.state != SessionState::Running {
            return Err(SessionError::NotRunning {
                id: self.id.clone(),
                state: live.state,
            });
        }
        live.expires_at = now + time::Duration::seconds(live.ttl_seconds as i64);
        live.last_active = now;
        Ok(())
    }

    /// Sets a new TTL and expires the session `ttl_seconds` from `now`;
    /// returns the new expiry. `NotRunning` unless it runs.
    pub(crate) fn set_ttl(
        &self,
        ttl_seconds: u64,
        now: OffsetDateTime,
    ) -> Result<OffsetDateTime, SessionError> {
        let mut live = self.live.lock().unwrap();
        if live.state != SessionState::Running {
            return Err(SessionError::NotRunning {
                id: self.id.clone(),
                state: live.state,
            });
        }
        live.ttl_seconds = ttl_seconds;
        live.expires_at = now + time::Duration::seconds(ttl_seconds as i64);
        Ok(live.expires_at)
    }

    /// Running, Paused or Hibernated → Destroying (returned: the state
    /// before); `NotRunning` from any other state.
    pub(crate) fn begin_destroy(&self) -> Result<SessionState, SessionError> {
        let mut live = self.live.lock().unwrap();
        if !matches!(
            live.state,
            SessionState::Running | SessionState::Paused | SessionState::Hibernated
        ) {
            return Err(SessionError::NotRunning {
                id: self.id.clone(),
                state: live.state,
            });
        }
        let before = live.state;
        live.state = SessionState::Destroying;
        Ok(before)
    }

    /// Destroying → a final state.
    pub(crate) fn finish(&self, state: SessionState) {
        debug_assert!(state.is_final());
        self.live.lock().unwrap().state = state;
        self.give_up_agent();
    }

    /// Records the shell's cwd after an exec; returns the activity to
    /// persist.
    pub(crate) fn set_cwd(&self, cwd: &str) -> Activity {
        let mut live = self.live.lock().unwrap();
        live.cwd = cwd.to_string();
        Activity::of(&live)
    }

    /// Expiry, cwd and TTL as they are, to persist.
    pub(crate) fn activity(&self) -> Activity {
        Activity::of(&self.live.lock().unwrap())
    }

    /// The current agent connection, as it is.
    pub(crate) fn agent(&self) -> AgentClient {
        self.agent.borrow().clone()
    }

    /// Swaps in a new connection to the same sandbox.
    pub(crate) fn replace_agent(&self, agent: AgentClient) {
        self.agent.send_replace(agent);
    }

    /// Stops callers waiting for a reconnection (the sandbox is gone or
    /// the session ends).
    pub(crate) fn give_up_agent(&self) {
        self.agent_lost.store(true, Ordering::SeqCst);
        self.agent.send_modify(|_| {});
    }

    /// The watcher found the sandbox gone (its PID 1 died): gives the
    /// agent up, and calls cut by the death answer `Lost`.
    pub(crate) fn lose_sandbox(&self) {
        self.sandbox_gone.store(true, Ordering::SeqCst);
        self.give_up_agent();
    }

    /// Whether the sandbox is gone, once the watcher has decided about a
    /// closed agent connection (waits as [`Session::connected_agent`]).
    pub(crate) async fn sandbox_gone_verdict(&self) -> bool {
        self.connected_agent().await;
        self.sandbox_gone.load(Ordering::SeqCst)
    }

    /// A connected agent: while the watcher reconnects a broken one
    /// (remote engines), the call waits for it, at most as long as the
    /// watcher tries; then the closed one (whose calls fail).
    pub(crate) async fn connected_agent(&self) -> AgentClient {
        let current = self.agent();
        if current.is_connected() {
            return current;
        }
        let mut rx = self.agent.subscribe();
        let lost = &self.agent_lost;
        let wait = async move {
            rx.wait_for(|a| a.is_connected() || lost.load(Ordering::SeqCst))
                .await
                .map(|a| a.clone())
        };
        match tokio::time::timeout(RECONNECT_PATIENCE + ATTACH_PING_TIMEOUT, wait).await {
            Ok(Ok(a)) => a,
            _ => current,
        }
    }
}

/// The live sessions, and the creates in flight that count against the
/// session limit.
pub(crate) struct SessionTable {
    map: Mutex<HashMap<String, Arc<Session>>>,
    creating: AtomicUsize,
    max: usize,
}

/// A create's place under the session limit; released when dropped.
pub(crate) struct Reservation<'a>(&'a AtomicUsize);

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl SessionTable {
    pub(crate) fn new(max: usize) -> SessionTable {
        SessionTable {
            map: Mutex::new(HashMap::new()),
            creating: AtomicUsize::new(0),
            max,
        }
    }

    /// Reserves room for one more session; `CapacityExhausted` at the
    /// limit (live sessions plus creates in flight).
    pub(crate) fn reserve(&self) -> Result<Reservation<'_>, SessionError> {
        let reserved = self.creating.fetch_add(1, Ordering::SeqCst) + 1;
        let r = Reservation(&self.creating);
        if self.len() + reserved > self.max {
            return Err(SessionError::CapacityExhausted(self.max));
        }
        Ok(r)
    }

    /// Creates in flight.
    pub(crate) fn creating(&self) -> usize {
        self.creating.load(Ordering::SeqCst)
    }

    pub(crate) fn len(&self) -> usize {
        self.map.lock().unwrap().len()
    }

    pub(crate) fn get(&self, id: &str) -> Result<Arc<Session>, SessionError> {
        self.map
            .lock()
            .unwrap()
            .get(id)
            .cloned()
            .ok_or_else(|| SessionError::NotFound(id.to_string()))
    }

    pub(crate) fn insert(&self, s: Arc<Session>) {
        self.map.lock().unwrap().insert(s.id.clone(), s);
    }

    pub(crate) fn remove(&self, id: &str) {
        self.map.lock().unwrap().remove(id);
    }

    pub(crate) fn all(&self) -> Vec<Arc<Session>> {
        self.map.lock().unwrap().values().cloned().collect()
    }

    pub(crate) fn ids(&self) -> Vec<String> {
        self.map.lock().unwrap().keys().cloned().collect()
    }

    /// A live session that mounts workspace `ws`, if any.
    pub(crate) fn user_of_workspace(&self, ws: &str) -> Option<String> {
        self.map
            .lock()
            .unwrap()
            .values()
            .find(|s| s.workspace_id.as_deref() == Some(ws))
            .map(|s| s.id.clone())
    }
}
