//! The enums the store persists as text: a session's lifecycle state and
//! where its sandbox came from. The store takes and returns these, never
//! strings; the names in the database are fixed by released migrations.

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};

/// Lifecycle of a session.
///
/// ```text
/// Creating ──► Running ──► Destroying ──► Destroyed
///    │          │ ▲ │  └──(ttl)──► Destroying ──► Expired
///    │   (pause)▼ │(resume)   └──(sandbox died)──► Lost
///    │         Paused ──(paused ttl, destroy)──► Destroying
///    │   Running ⇄ Hibernated (hibernate; wake) ──(hibernated ttl, destroy)──► Destroying
///    └──(fail)──► Failed
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionState {
    Creating,
    Running,
    Destroying,
    Destroyed,
    Expired,
    Lost,
    Failed,
    /// Every process frozen, memory kept; its TTL does not run (a paused
    /// session has its own limit).
    Paused,
    /// No process runs and no memory is held; the sandbox's filesystem
    /// state is kept on disk and a wake starts it again on it.
    Hibernated,
}

impl SessionState {
    /// Every state.
    pub const ALL: [SessionState; 9] = [
        SessionState::Creating,
        SessionState::Running,
        SessionState::Destroying,
        SessionState::Destroyed,
        SessionState::Expired,
        SessionState::Lost,
        SessionState::Failed,
        SessionState::Paused,
        SessionState::Hibernated,
    ];

    /// Its name (in the database and on the wire).
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Creating => "creating",
            SessionState::Running => "running",
            SessionState::Destroying => "destroying",
            SessionState::Destroyed => "destroyed",
            SessionState::Expired => "expired",
            SessionState::Lost => "lost",
            SessionState::Failed => "failed",
            SessionState::Paused => "paused",
            SessionState::Hibernated => "hibernated",
        }
    }

    pub fn parse(s: &str) -> Option<SessionState> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// States after which a session never runs again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            SessionState::Destroyed
                | SessionState::Expired
                | SessionState::Lost
                | SessionState::Failed
        )
    }
}

/// Where a session's sandbox came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AcquireSource {
    /// A pre-warmed sandbox from the pool.
    Pool,
    /// Started for this session.
    Cold,
}

impl AcquireSource {
    pub fn as_str(self) -> &'static str {
        match self {
            AcquireSource::Pool => "pool",
            AcquireSource::Cold => "cold",
        }
    }

    pub fn parse(s: &str) -> Option<AcquireSource> {
        [AcquireSource::Pool, AcquireSource::Cold]
            .into_iter()
            .find(|a| a.as_str() == s)
    }
}

macro_rules! text_enum {
    ($t:ty) => {
        impl ToSql for $t {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.as_str()))
            }
        }
        impl FromSql for $t {
            fn column_result(v: ValueRef<'_>) -> FromSqlResult<Self> {
                let s = v.as_str()?;
                <$t>::parse(s).ok_or_else(|| {
                    FromSqlError::Other(format!("unknown {} {s:?}", stringify!($t)).into())
                })
            }
        }
    };
}
text_enum!(SessionState);
text_enum!(AcquireSource);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_roundtrip_and_final_states_are_the_four_ends() {
        for st in SessionState::ALL {
            assert_eq!(SessionState::parse(st.as_str()), Some(st));
        }
        let finals: Vec<_> = SessionState::ALL
            .into_iter()
            .filter(|s| s.is_final())
            .collect();
        assert_eq!(finals.len(), 4);
        assert!(!SessionState::Running.is_final());
        assert_eq!(AcquireSource::parse("pool"), Some(AcquireSource::Pool));
        assert_eq!(AcquireSource::parse("warm"), None);
    }
}
