//! The domain of Sandkasten: sessions and their lifecycle, exec, files, the
//! TTL reaper and recovery after a restart. No HTTP, no SQL, no concrete
//! backend: it holds an `Arc<dyn Runtime>` and a `Store`.

mod config;
mod error;
mod metrics;
mod pool;
mod session;
mod text;
mod types;
mod workspace;

pub use config::EngineConfig;
pub use error::EngineError;
pub use pool::PoolConfig;
pub use types::*;

use tokio::sync::mpsc;

/// Lifecycle of a session.
///
/// ```text
/// Creating ──► Running ──► Destroying ──► Destroyed
///    │            │  └──(ttl)──► Destroying ──► Expired
///    └──(fail)──► Failed   └──(sandbox died)──► Lost
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    Creating,
    Running,
    Destroying,
    Destroyed,
    Expired,
    Lost,
    Failed,
}

/// A stream of exec events; dropping it interrupts the command.
pub type ExecStream = mpsc::Receiver<ExecEvent>;

pub use session::{valid_workspace_id, Engine};
impl SessionState {
    /// Every state, for parsing stored names.
    pub const ALL: [SessionState; 7] = [
        SessionState::Creating,
        SessionState::Running,
        SessionState::Destroying,
        SessionState::Destroyed,
        SessionState::Expired,
        SessionState::Lost,
        SessionState::Failed,
    ];

    /// States after which a session never runs again.
    pub const FINAL: [&'static str; 4] = ["destroyed", "expired", "lost", "failed"];

    pub fn parse(s: &str) -> Option<SessionState> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Creating => "creating",
            SessionState::Running => "running",
            SessionState::Destroying => "destroying",
            SessionState::Destroyed => "destroyed",
            SessionState::Expired => "expired",
            SessionState::Lost => "lost",
            SessionState::Failed => "failed",
        }
    }
}
