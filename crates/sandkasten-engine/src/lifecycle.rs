//! Pause and resume: every process of a session's sandbox frozen (the
//! runtime's freezer: the cgroup freezer on native, the engine's pause on
//! docker), memory kept, no CPU used; its TTL stops and the paused limit
//! (`paused_ttl_seconds`) runs instead. Any call to a paused session
//! resumes it first ([`Engine::live`]). Pauses and resumes of one session
//! are ordered by its lifecycle lock.
//!
//! Hibernate and wake: the sandbox's processes end and its memory goes;
//! its filesystem state stays on disk ([`Runtime::hibernate`]: root
//! filesystem changes, `/tmp`, an ephemeral `/workspace`; a persistent
//! workspace is the workspace) with the shell's cwd and exported
//! variables (kept in the store). A wake starts a sandbox again on that
//! state under the same id ([`SandboxSpec::wake`]). Any call to a
//! hibernated session wakes it first.
//!
//! Timeouts: the end of a running session's TTL, or of its idle limit
//! (no API call and under [`IDLE_CPU_USEC`] of CPU time for
//! `idle_timeout_seconds`), runs its `on_timeout`: destroy, pause or
//! hibernate ([`Engine::timed_out`]).

use crate::error::SessionError;
use crate::session::{from_ms, ms, now, shell_quote};
use crate::sessions::Session;
use crate::{Engine, EngineError, ExecRequest, OnTimeout, SessionInfo, SessionState};
use sandkasten_runtime::{
    AgentClient, ProcEvent, ProcSpec, ProcStream, RuntimeError, Sandbox, SandboxHandle,
    SandboxSpec, Started, WorkspaceMount,
};
use sandkasten_store::SessionRecord;
use std::sync::Arc;
use time::OffsetDateTime;

/// CPU time a sandbox must use in one idle window to count as active
/// (a background job's output, a server's answers): an idle shell and
/// agent use none.
pub(crate) const IDLE_CPU_USEC: u64 = 5_000;

/// Where a hibernating sandbox whose `/tmp` is a tmpfs keeps its content
/// (in its root filesystem) until the wake puts it back.
const SAVED_TMP: &str = "/.sandkasten-hibernated-tmp.tar";

/// What a hibernated session keeps besides its filesystem (the store's
/// `hibernation` column, JSON).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Hibernation {
    /// The shell's exported variables when it hibernated.
    env: Vec<(String, String)>,
    /// Whether `/tmp` was saved into [`SAVED_TMP`].
    saved_tmp: bool,
}

/// Variables of the shell's environment a wake does not set again (the
/// shell sets them itself).
const SHELL_OWN: [&str; 4] = ["PWD", "OLDPWD", "SHLVL", "_"];

impl Engine {
    /// Runs `step` on a task of its own, so that it ends though its caller
    /// goes away: a client that disconnects drops its request's future,
    /// and a lifecycle step cut halfway would leave a sandbox frozen that
    /// is stored as running, a woken sandbox nobody records, a snapshot
    /// nobody lists, children nobody holds. [`Engine::shutdown`] waits
    /// for these steps, for a grace (the HTTP server's shutdown stops
    /// waiting for requests after its own; their steps go on).
    pub(crate) async fn to_the_end<T: Send + 'static>(
        &self,
        step: impl std::future::Future<Output = Result<T, EngineError>> + Send + 'static,
    ) -> Result<T, EngineError> {
        self.inner.steps.spawn(step).await.unwrap_or_else(|e| {
            Err(EngineError::Runtime {
                context: "a lifecycle step",
                source: RuntimeError::io("its task", std::io::Error::other(e.to_string())),
            })
        })
    }

    /// A lifecycle step's backend failure as its client sees it: when the
    /// session was destroyed (or began to be) meanwhile, the step lost a
    /// race with that DELETE, which is 404 or 409, not the daemon's fault
    /// (session 15's attack: a resume, hibernate, pause or fork racing a
    /// DELETE answered 500).
    pub(crate) fn ended_meanwhile(&self, id: &str, e: EngineError) -> EngineError {
        let lost_the_race = matches!(
            e,
            EngineError::Runtime { .. }
                | EngineError::Session(SessionError::AgentLost(_) | SessionError::NotPaused { .. })
        );
        if !lost_the_race {
            return e;
        }
        match self.inner.sessions.get(id) {
            Err(_) => SessionError::NotFound(id.to_string()).into(),
            Ok(s) => match s.state() {
                SessionState::Running | SessionState::Paused | SessionState::Hibernated => e,
                state => SessionError::NotRunning {
                    id: id.to_string(),
                    state,
                }
                .into(),
            },
        }
    }

    /// Freezes a running session. `SESSION_NOT_RUNNING` for any other
    /// state (a paused one included): nothing changes.
    pub async fn pause_session(&self, id: &str) -> Result<SessionInfo, EngineError> {
        let (e, id) = (self.clone(), id.to_string());
        self.to_the_end(async move {
            let done = e.pause_now(&id).await;
            done.map_err(|x| e.ended_meanwhile(&id, x))
        })
        .await
    }

    async fn pause_now(&self, id: &str) -> Result<SessionInfo, EngineError> {
        let s = self.inner.sessions.get(id)?;
        let _order = s.lifecycle.lock().await;
        // The execs before this call end first (as before a hibernate):
        // frozen in the middle, an exec would answer nothing until a
        // resume. Execs after it resume the session (any call does).
        let _turn = running_turn(&s).await?;
        let not_running = |s: &Session| -> EngineError {
            SessionError::NotRunning {
                id: id.to_string(),
                state: s.state(),
            }
            .into()
        };
        let rt = &self.inner.runtime;
        let handle = s.handle();
        if let Err(e) = rt.pause(&handle).await {
            // A freeze left half done (its processes dying under a
            // destroy) would hold that destroy forever: undone.
            if let Err(t) = rt.resume(&handle).await {
                tracing::debug!(session = %id, "thawing after a failed pause: {t}");
            }
            if s.state() != SessionState::Running {
                return Err(not_running(&s));
            }
            return Err(EngineError::runtime("pausing the sandbox")(e));
        }
        let until = now() + time::Duration::seconds(self.inner.cfg.paused_ttl_seconds as i64);
        let persisted = s.set_paused(until);
        let (expires, cwd) = match persisted {
            Ok(p) => p,
            Err(e) => {
                // A destroy began during the freeze: its kill, checked
                // for a frozen sandbox before the freeze, waits for the
                // thaw.
                if let Err(t) = rt.resume(&handle).await {
                    tracing::debug!(session = %id, "thawing for a destroy: {t}");
                }
                return Err(e.into());
            }
        };
        self.persist_state(id, SessionState::Paused, expires, cwd)
            .await?;
        self.inner.reaper_wake.notify_one();
        Ok(s.info())
    }

    /// Thaws a paused session or wakes a hibernated one; its TTL counts
    /// again from now. `SESSION_NOT_PAUSED` for a session that is neither.
    pub async fn resume_session(&self, id: &str) -> Result<SessionInfo, EngineError> {
        let s = self.inner.sessions.get(id)?;
        let settled = |e| self.ended_meanwhile(id, e);
        match s.state() {
            SessionState::Paused => self.resume(&s).await.map_err(settled)?,
            SessionState::Hibernated => self.wake(&s).await.map_err(settled)?,
            state => {
                return Err(SessionError::NotPaused {
                    id: id.to_string(),
                    state,
                }
                .into())
            }
        }
        // Destroyed (or lost) while it was resumed: not a running session
        // to answer with (session 15's attack: 200 with `destroying`).
        match s.state() {
            SessionState::Running => Ok(s.info()),
            state => Err(SessionError::NotRunning {
                id: id.to_string(),
                state,
            }
            .into()),
        }
    }

    /// Thaws `s` if it is (still) paused.
    pub(crate) async fn resume(&self, s: &Arc<Session>) -> Result<(), EngineError> {
        let (e, s) = (self.clone(), s.clone());
        self.to_the_end(async move {
            let _order = s.lifecycle.lock().await;
            e.resume_locked(&s).await
        })
        .await
    }

    /// [`Engine::resume`] with the lifecycle lock held.
    async fn resume_locked(&self, s: &Arc<Session>) -> Result<(), EngineError> {
        if s.state() != SessionState::Paused {
            return Ok(());
        }
        self.inner
            .runtime
            .resume(&s.handle())
            .await
            .map_err(EngineError::runtime("resuming the sandbox"))?;
        let (expires, cwd) = s.set_resumed(now())?;
        self.persist_state(&s.id, SessionState::Running, expires, cwd)
            .await?;
        self.inner.reaper_wake.notify_one();
        Ok(())
    }

    /// After a restart: a session stored as paused, thawed for its
    /// reattach, is frozen again with its stored limit. One that cannot
    /// be frozen again stays running (and says so in the log).
    pub(crate) async fn repause(&self, s: &Arc<Session>, until: OffsetDateTime) {
        let _order = s.lifecycle.lock().await;
        if let Err(e) = self.inner.runtime.pause(&s.handle()).await {
            tracing::warn!(session = %s.id, "pausing a recovered session again: {e}; it runs");
            return;
        }
        if let Ok((expires, cwd)) = s.set_paused(until) {
            if let Err(e) = self
                .persist_state(&s.id, SessionState::Paused, expires, cwd)
                .await
            {
                tracing::warn!(session = %s.id, "recording a recovered pause: {e}");
            }
        }
        self.inner.reaper_wake.notify_one();
    }

    async fn persist_state(
        &self,
        id: &str,
        state: SessionState,
        expires: OffsetDateTime,
        cwd: String,
    ) -> Result<(), EngineError> {
        let (id, at) = (id.to_string(), ms(expires));
        self.inner
            .db
            .run(move |st| {
                st.set_session_state(&id, state, None)?;
                st.touch_session(&id, at, &cwd)
            })
            .await?;
        Ok(())
    }

    /// Hibernates a running (or paused: thawed first) session: its
    /// processes end, its memory is freed, its filesystem state and the
    /// shell's cwd and exported variables are kept; it expires after
    /// `hibernated_ttl_seconds` unless woken. `SESSION_NOT_RUNNING` for any
    /// other state; `UNSUPPORTED` where the backend cannot.
    pub async fn hibernate_session(&self, id: &str) -> Result<SessionInfo, EngineError> {
        let (e, id) = (self.clone(), id.to_string());
        self.to_the_end(async move {
            let done = e.hibernate_now(&id).await;
            done.map_err(|x| e.ended_meanwhile(&id, x))
        })
        .await
    }

    async fn hibernate_now(&self, id: &str) -> Result<SessionInfo, EngineError> {
        let rt = &self.inner.runtime;
        if !rt.can_hibernate() {
            return Err(EngineError::Unsupported {
                what: "hibernate".into(),
                runtime: rt.name(),
            });
        }
        let s = self.inner.sessions.get(id)?;
        // Held throughout: a pause cannot freeze the sandbox under the
        // steps below (their exec would wait for a thaw), a second
        // hibernate finds this one done.
        let _order = s.lifecycle.lock().await;
        self.resume_locked(&s).await?;
        // The exec turn, after the execs before this call, held to the
        // end: an exec queued behind the hibernate runs after it, on the
        // woken sandbox (it would be cut by the stop), and the steps'
        // own exec runs on a turn of its own.
        let _turn = running_turn(&s).await?;
        // A call in use to its end: the TTL does not run out under it.
        let _in_use = crate::session::ExecInUse::new(self, &s);
        // The shell's exported variables, after the execs before this
        // call, written to a file and read back
        // exactly (the terminal would change the bytes). The file is in
        // `/dev/shm` (memory: a sandbox whose disk limit is reached still
        // hibernates), made first by the sandbox's root under a random
        // name, writable by all: in the sticky directory the sandbox user
        // can write it but not swap it for a symlink to a file only root
        // may read, which root's read would follow. `command` runs the
        // program even where the shell has a function named `env`; `>|`
        // writes even under `set -C`.
        let agent = s.agent();
        let env_file = format!("/dev/shm/.sandkasten-env-{}", uuid::Uuid::new_v4().simple());
        root_run(
            &agent,
            &format!("set -C; : > {env_file} && chmod 666 {env_file}"),
        )
        .await
        .map_err(|e| hibernate_failed(format!("making the environment's file: {e}")))?;
        let done = self
            .exec_holding_turn(
                &s,
                ExecRequest {
                    cmd: format!("\\command env -0 >| {env_file}"),
                    timeout_ms: Some(10_000),
                    raw_output: true,
                },
            )
            .await;
        // Read and removed whatever the exec did (through the agent of now:
        // a connection may have been replaced meanwhile).
        let agent = s.connected_agent().await;
        let env = root_run(&agent, &format!("cat {env_file}; rm -f {env_file}")).await;
        let done = done?;
        if done.exit_code != 0 {
            return Err(hibernate_failed(format!(
                "reading the shell's environment exited with {}: {}",
                done.exit_code, done.output
            )));
        }
        let env = env?;
        let env = parse_env0(&env);
        let saved_tmp = !rt.hibernate_keeps_tmp();
        if saved_tmp {
            root_run(
                &agent,
                &format!("rm -f {SAVED_TMP} && tar -C /tmp -cpf {SAVED_TMP} ."),
            )
            .await
            .map_err(|e| hibernate_failed(format!("saving /tmp: {e}")))?;
        }
        let kept = serde_json::to_string(&Hibernation { env, saved_tmp })
            .map_err(|e| hibernate_failed(e.to_string()))?;
        let until = now() + time::Duration::seconds(self.inner.cfg.hibernated_ttl_seconds as i64);
        let (expires, cwd) = s.set_hibernated(until)?;
        let (sid, at) = (id.to_string(), ms(expires));
        self.inner
            .db
            .run(move |st| {
                st.set_session_hibernation(&sid, SessionState::Hibernated, Some(&kept))?;
                st.touch_session(&sid, at, &cwd)
            })
            .await?;
        if let Err(e) = rt.hibernate(&s.handle()).await {
            // Whatever is left of it is woken again on its next call;
            // a sandbox still running keeps running until then.
            tracing::warn!(session = %id, "hibernating: {e}");
            return Err(EngineError::runtime("hibernating the sandbox")(e));
        }
        self.inner.reaper_wake.notify_one();
        tracing::info!(session = %id, "session hibernated");
        Ok(s.info())
    }

    /// Wakes a hibernated session (any call to it does): a sandbox started
    /// again on its kept filesystem, the shell in its cwd with its
    /// variables, `/tmp` as it was; its TTL counts from now.
    pub(crate) async fn wake(&self, s: &Arc<Session>) -> Result<(), EngineError> {
        let (e, s) = (self.clone(), s.clone());
        self.to_the_end(async move { e.wake_now(&s).await }).await
    }

    async fn wake_now(&self, s: &Arc<Session>) -> Result<(), EngineError> {
        let _order = s.lifecycle.lock().await;
        if s.state() != SessionState::Hibernated {
            return Ok(());
        }
        let sid = s.id.clone();
        let rec = self
            .inner
            .db
            .run(move |st| st.get_session(&sid))
            .await?
            .ok_or_else(|| SessionError::NotFound(s.id.clone()))?;
        let kept: Hibernation = rec
            .hibernation
            .as_deref()
            .and_then(|h| serde_json::from_str(h).ok())
            .unwrap_or(Hibernation {
                env: Vec::new(),
                saved_tmp: false,
            });
        let info = s.info();
        let network = s.network();
        let rt = &self.inner.runtime;
        let spec = SandboxSpec {
            id: s.id.clone(),
            image: s.image.clone(),
            limits: sandkasten_runtime::Limits {
                disk_mb: info.disk_limit_mb,
                ..self.inner.cfg.limits.clone()
            },
            network: network.mode,
            readonly_rootfs: self.inner.cfg.readonly_rootfs,
            workspace: match &s.workspace_id {
                Some(ws) => WorkspaceMount::Persistent(ws.clone()),
                None => WorkspaceMount::Ephemeral,
            },
            env: kept.env.clone(),
            wake: true,
            from_snapshot: None,
        };
        let sandbox = rt
            .create(spec)
            .await
            .map_err(EngineError::runtime("waking the sandbox"))?;
        // Its pid first: a crash from here on finds it and stops it again.
        let (sid, pid, st) = (s.id.clone(), sandbox.handle.pid, sandbox.handle.start_time);
        self.inner
            .db
            .run(move |db| db.set_session_sandbox(&sid, SessionState::Hibernated, pid, st))
            .await?;
        if let Err(e) = self
            .restore_shell(&sandbox, &network, &kept, &info.cwd)
            .await
        {
            if let Err(h) = rt.hibernate(&sandbox.handle).await {
                tracing::warn!(session = %s.id, "stopping a sandbox whose wake failed: {h}");
            }
            return Err(EngineError::runtime("restoring the woken sandbox")(e));
        }
        let handle = sandbox.handle.clone();
        let (expires, cwd) = match s.set_woken(sandbox, now()) {
            Ok(woken) => woken,
            Err(e) => {
                // Destroyed meanwhile (its destroy waits for this wake):
                // the sandbox started here is nobody's.
                if let Err(d) = rt.destroy(&handle).await {
                    tracing::warn!(session = %s.id, "stopping a sandbox woken for a destroyed session: {d}");
                }
                return Err(e.into());
            }
        };
        let (sid, at) = (s.id.clone(), ms(expires));
        self.inner
            .db
            .run(move |st| {
                st.set_session_hibernation(&sid, SessionState::Running, None)?;
                st.touch_session(&sid, at, &cwd)
            })
            .await?;
        self.watch(s);
        self.inner.reaper_wake.notify_one();
        tracing::info!(session = %s.id, "session woken");
        Ok(())
    }

    /// A woken sandbox's network policy, `/tmp` and shell state.
    async fn restore_shell(
        &self,
        sandbox: &Sandbox,
        network: &sandkasten_runtime::NetworkPolicy,
        kept: &Hibernation,
        cwd: &str,
    ) -> Result<(), RuntimeError> {
        let rt = &self.inner.runtime;
        if rt.network_policies() && network.is_full() {
            rt.set_network(&sandbox.handle, network).await?;
        }
        if kept.saved_tmp {
            root_run(
                &sandbox.agent,
                &format!("tar -C /tmp -xpf {SAVED_TMP} && rm -f {SAVED_TMP}"),
            )
            .await
            .map_err(|e| RuntimeError::Agent(format!("restoring /tmp: {e}")))?;
        }
        // Also for backends whose new shell did not start with them
        // (docker).
        let cd = format!("cd {} 2>/dev/null; unset OLDPWD", shell_quote(cwd));
        crate::session::prime_shell(&sandbox.agent, &kept.env, Some(cd)).await
    }

    /// After a restart: a session stored as hibernated is listed again
    /// without a sandbox (one a crash left running is stopped).
    pub(crate) async fn recover_hibernated(&self, rec: &SessionRecord) {
        let handle = SandboxHandle {
            id: rec.id.clone(),
            pid: rec.pid,
            start_time: rec.pid_start_time,
        };
        if let Err(e) = self.inner.runtime.hibernate(&handle).await {
            tracing::warn!(session = %rec.id, "stopping a hibernated sandbox's leftovers: {e}");
        }
        let agent = match tokio::net::UnixStream::pair() {
            Ok((ours, _theirs)) => AgentClient::from_stream(ours),
            Err(e) => {
                tracing::warn!(session = %rec.id, "listing a hibernated session: {e}");
                return;
            }
        };
        let session = Session::new(
            crate::session::recovered_params(rec, rec.cwd.clone()),
            Sandbox {
                handle,
                agent,
                phases_us: Vec::new(),
            },
        );
        let _ = session.set_hibernated(from_ms(rec.expires_at_ms));
        self.register(session);
        tracing::info!(session = %rec.id, "hibernated session listed again");
    }

    /// A running session's TTL or idle limit ran out: its `on_timeout`.
    /// A pause or hibernate that fails at the TTL's end destroys it (the
    /// TTL is a promise); at the idle limit's end it only logs.
    pub(crate) async fn timed_out(&self, s: &Arc<Session>, ttl: bool) {
        let id = s.id.clone();
        let done = match s.on_timeout {
            OnTimeout::Destroy if ttl => {
                tracing::info!(session = %id, "session expired");
                self.end_session(&id, SessionState::Expired)
                    .await
                    .map(|_| ())
            }
            OnTimeout::Destroy => {
                tracing::info!(session = %id, "session idle; destroying it");
                self.end_session(&id, SessionState::Expired)
                    .await
                    .map(|_| ())
            }
            OnTimeout::Pause => {
                tracing::info!(session = %id, ttl, "session timed out; pausing it");
                self.pause_session(&id).await.map(|_| ())
            }
            OnTimeout::Hibernate => {
                tracing::info!(session = %id, ttl, "session timed out; hibernating it");
                self.hibernate_session(&id).await.map(|_| ())
            }
        };
        match done {
            Ok(()) => {}
            Err(e)
                if ttl
                    && matches!(s.on_timeout, OnTimeout::Hibernate)
                    && s.state() == SessionState::Running
                    && self.pause_session(&id).await.is_ok() =>
            {
                // Paused, everything kept: its paused limit runs now.
                tracing::warn!(session = %id, "hibernating at the timeout failed ({e}); paused instead");
            }
            Err(e) if ttl && s.state() == SessionState::Running => {
                tracing::warn!(session = %id, "timeout action failed ({e}); destroying");
                if let Err(e) = self.end_session(&id, SessionState::Expired).await {
                    tracing::warn!(session = %id, "destroying expired session: {e}");
                }
            }
            Err(e) => tracing::warn!(session = %id, "timeout action failed: {e}"),
        }
    }

    /// The idle limit of `s` ran out by the clock: whether its sandbox
    /// was active anyway (CPU time), which then counts as activity.
    pub(crate) async fn busy_anyway(&self, s: &Arc<Session>) -> bool {
        match self.inner.runtime.stats(&s.handle()).await {
            Ok(st) => s.cpu_active(st.cpu_usage_usec, IDLE_CPU_USEC, now()),
            // Not measurable: judged by the API alone.
            Err(_) => false,
        }
    }
}

pub(crate) fn on_timeout_of(rec: &SessionRecord) -> OnTimeout {
    rec.on_timeout
        .as_deref()
        .and_then(OnTimeout::parse)
        .unwrap_or_default()
}

/// The exec turn of running session `s` (its lifecycle lock held), after
/// the execs before it; `NotRunning` when it does not run, before or
/// after the wait.
async fn running_turn(s: &Session) -> Result<tokio::sync::OwnedMutexGuard<()>, EngineError> {
    let not_running = || -> EngineError {
        SessionError::NotRunning {
            id: s.id.clone(),
            state: s.state(),
        }
        .into()
    };
    if s.state() != SessionState::Running {
        return Err(not_running());
    }
    let turn = s.exec_turn.clone().lock_owned().await;
    if s.state() != SessionState::Running {
        return Err(not_running());
    }
    Ok(turn)
}

fn hibernate_failed(why: String) -> EngineError {
    EngineError::runtime("hibernating the sandbox")(RuntimeError::Agent(why))
}

/// Runs `script` with `sh -c` as the sandbox's root, outside the shell;
/// its stdout, or an error with its stderr when it fails.
async fn root_run(agent: &AgentClient, script: &str) -> Result<Vec<u8>, EngineError> {
    let spec = ProcSpec {
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env: Vec::new(),
        cwd: Some("/".into()),
        root: true,
        pty: None,
        stdin: false,
        tag: None,
    };
    let mut out = match agent
        .proc_start(spec, true)
        .await
        .map_err(EngineError::runtime("running a lifecycle step"))?
    {
        Started::Attached(out) => out,
        Started::Detached(_) => return Err(hibernate_failed("the process did not attach".into())),
    };
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    loop {
        match out
            .next()
            .await
            .map_err(EngineError::runtime("running a lifecycle step"))?
        {
            ProcEvent::Output { stream, data } => match stream {
                ProcStream::Stderr => stderr.extend_from_slice(&data),
                _ => stdout.extend_from_slice(&data),
            },
            ProcEvent::End(end) => {
                if end.exit_code == 0 {
                    return Ok(stdout);
                }
                return Err(hibernate_failed(format!(
                    "`{script}` failed ({end:?}): {}",
                    String::from_utf8_lossy(&stderr).trim()
                )));
            }
        }
    }
}

/// `env -0` output as (name, value) pairs, without the shell's own.
fn parse_env0(raw: &[u8]) -> Vec<(String, String)> {
    raw.split(|b| *b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            let (k, v) = kv.split_once('=')?;
            let valid = !k.is_empty()
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !k.starts_with(|c: char| c.is_ascii_digit());
            (valid && !SHELL_OWN.contains(&k)).then(|| (k.to_string(), v.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env0_parses_values_with_newlines_and_equals_and_drops_the_shells_own() {
        let raw = b"A=1\0B=x=y\nz\0PWD=/w\0BASH_FUNC_f%%=() { :; }\0_=/usr/bin/env\0";
        assert_eq!(
            parse_env0(raw),
            vec![
                ("A".to_string(), "1".to_string()),
                ("B".to_string(), "x=y\nz".to_string())
            ]
        );
    }
}
