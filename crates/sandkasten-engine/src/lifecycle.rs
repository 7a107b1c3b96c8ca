//! Pause and resume: every process of a session's sandbox frozen (the
//! runtime's freezer: the cgroup freezer on native, the engine's pause on
//! docker), memory kept, no CPU used; its TTL stops and the paused limit
//! (`paused_ttl_seconds`) runs instead. Any call to a paused session
//! resumes it first ([`Engine::live`]). Pauses and resumes of one session
//! are ordered by its lifecycle lock.

use crate::error::SessionError;
use crate::session::{ms, now};
use crate::sessions::Session;
use crate::{Engine, EngineError, SessionInfo, SessionState};
use std::sync::Arc;
use time::OffsetDateTime;

impl Engine {
    /// Freezes a running session. `SESSION_NOT_RUNNING` for any other
    /// state (a paused one included): nothing changes.
    pub async fn pause_session(&self, id: &str) -> Result<SessionInfo, EngineError> {
        let s = self.inner.sessions.get(id)?;
        let _order = s.lifecycle.lock().await;
        if s.state() != SessionState::Running {
            return Err(SessionError::NotRunning {
                id: id.to_string(),
                state: s.state(),
            }
            .into());
        }
        self.inner
            .runtime
            .pause(&s.handle)
            .await
            .map_err(EngineError::runtime("pausing the sandbox"))?;
        let until = now() + time::Duration::seconds(self.inner.cfg.paused_ttl_seconds as i64);
        let persisted = s.set_paused(until);
        let (expires, cwd) = match persisted {
            Ok(p) => p,
            Err(e) => {
                // Destroyed meanwhile: its destroy thaws it.
                return Err(e.into());
            }
        };
        self.persist_state(id, SessionState::Paused, expires, cwd)
            .await?;
        self.inner.reaper_wake.notify_one();
        Ok(s.info())
    }

    /// Thaws a paused session; its TTL counts again from now.
    /// `SESSION_NOT_PAUSED` for a session that is not paused.
    pub async fn resume_session(&self, id: &str) -> Result<SessionInfo, EngineError> {
        let s = self.inner.sessions.get(id)?;
        if s.state() != SessionState::Paused {
            return Err(SessionError::NotPaused {
                id: id.to_string(),
                state: s.state(),
            }
            .into());
        }
        self.resume(&s).await?;
        Ok(s.info())
    }

    /// Thaws `s` if it is (still) paused.
    pub(crate) async fn resume(&self, s: &Arc<Session>) -> Result<(), EngineError> {
        let _order = s.lifecycle.lock().await;
        if s.state() != SessionState::Paused {
            return Ok(());
        }
        self.inner
            .runtime
            .resume(&s.handle)
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
        if let Err(e) = self.inner.runtime.pause(&s.handle).await {
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
}
