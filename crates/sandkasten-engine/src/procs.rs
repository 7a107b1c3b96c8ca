//! Background processes of a session (the agent's process model): start,
//! attach, list, stdin, signals, resize. Each call checks the session's
//! state first, counts as activity, and types the agent's failures
//! ([`crate::ProcessError`]).

use crate::{Engine, EngineError};
use sandkasten_runtime::{ProcInfo, ProcOutput, ProcRef, ProcSpec, PtySize, Started};

/// What a start answered.
pub enum StartedProcess {
    /// The process runs; nothing follows it here.
    Detached(ProcInfo),
    /// Its output from the first byte, then its end.
    Attached(ProcOutput),
}

impl Engine {
    /// Starts a background process in session `id`; with `attach`, its
    /// output streams back from its first byte.
    pub async fn start_process(
        &self,
        id: &str,
        spec: ProcSpec,
        attach: bool,
    ) -> Result<StartedProcess, EngineError> {
        if let Some(tag) = &spec.tag {
            check_process_tag(tag)?;
        }
        let (s, agent) = self.file_agent(id).await?;
        let started = self
            .file_done(&s, agent.proc_start(spec, attach).await)
            .await?;
        Ok(match started {
            Started::Detached(info) => StartedProcess::Detached(info),
            Started::Attached(out) => StartedProcess::Attached(out),
        })
    }

    /// Attaches to a process: its kept output first when `replay`, then
    /// live, then its end.
    pub async fn attach_process(
        &self,
        id: &str,
        proc: ProcRef,
        replay: bool,
    ) -> Result<ProcOutput, EngineError> {
        let (s, agent) = self.file_agent(id).await?;
        self.file_done(&s, agent.proc_attach(proc, replay).await)
            .await
    }

    /// Running and recently ended processes, oldest first.
    pub async fn list_processes(&self, id: &str) -> Result<Vec<ProcInfo>, EngineError> {
        let (s, agent) = self.file_agent(id).await?;
        self.file_done(&s, agent.proc_list().await).await
    }

    /// One process, by pid or tag.
    pub async fn process(&self, id: &str, proc: ProcRef) -> Result<ProcInfo, EngineError> {
        let list = self.list_processes(id).await?;
        let found = match &proc {
            ProcRef::Pid(pid) => list.into_iter().rev().find(|p| p.pid == *pid),
            ProcRef::Tag(tag) => list
                .into_iter()
                .rev()
                .find(|p| p.tag.as_deref() == Some(tag)),
        };
        found.ok_or_else(|| {
            crate::ProcessError::NotFound(match proc {
                ProcRef::Pid(pid) => format!("no process with pid {pid}"),
                ProcRef::Tag(tag) => format!("no process with tag {tag:?}"),
            })
            .into()
        })
    }

    /// Writes to a process's stdin; answers once it is written.
    pub async fn process_input(
        &self,
        id: &str,
        proc: ProcRef,
        data: Vec<u8>,
    ) -> Result<(), EngineError> {
        let (s, agent) = self.file_agent(id).await?;
        self.file_done(&s, agent.proc_input(proc, data).await).await
    }

    pub async fn close_process_stdin(&self, id: &str, proc: ProcRef) -> Result<(), EngineError> {
        let (s, agent) = self.file_agent(id).await?;
        self.file_done(&s, agent.proc_close_stdin(proc).await).await
    }

    /// Sends `signal` to the process's group.
    pub async fn signal_process(
        &self,
        id: &str,
        proc: ProcRef,
        signal: i32,
    ) -> Result<(), EngineError> {
        let (s, agent) = self.file_agent(id).await?;
        self.file_done(&s, agent.proc_signal(proc, signal).await)
            .await
    }

    pub async fn resize_process(
        &self,
        id: &str,
        proc: ProcRef,
        size: PtySize,
    ) -> Result<(), EngineError> {
        let (s, agent) = self.file_agent(id).await?;
        self.file_done(&s, agent.proc_resize(proc, size).await)
            .await
    }
}

/// Longest process tag.
pub const MAX_PROCESS_TAG: usize = 64;

/// A process tag, as every API names processes by it: 1 to
/// [`MAX_PROCESS_TAG`] characters of `[A-Za-z0-9._-]`, not all digits (a
/// pid).
pub fn check_process_tag(tag: &str) -> Result<(), EngineError> {
    let ok = !tag.is_empty()
        && tag.len() <= MAX_PROCESS_TAG
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !tag.bytes().all(|b| b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(EngineError::InvalidRequest(format!(
            "invalid tag {tag:?}: use 1-{MAX_PROCESS_TAG} characters of [A-Za-z0-9._-], not all digits"
        )))
    }
}
