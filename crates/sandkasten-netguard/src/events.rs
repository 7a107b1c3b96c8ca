//! The record of denials: per session, the most recent ones (bounded),
//! and a total for `/metrics`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Denials kept per session (older ones are dropped first).
const KEEP: usize = 1000;

pub use sandkasten_runtime::NetworkDenial as Denial;

/// Denials by session.
#[derive(Default)]
pub struct EventLog {
    by_session: Mutex<HashMap<String, VecDeque<Denial>>>,
    total: AtomicU64,
}

impl EventLog {
    pub fn record(&self, id: &str, denial: Denial) {
        tracing::debug!(session = id, destination = %denial.destination, reason = %denial.reason, "network denial");
        self.total.fetch_add(1, Ordering::Relaxed);
        let mut m = self.by_session.lock().unwrap_or_else(|e| e.into_inner());
        let q = m.entry(id.to_string()).or_default();
        if q.len() == KEEP {
            q.pop_front();
        }
        q.push_back(denial);
    }

    /// The session's denials, oldest first.
    pub fn list(&self, id: &str) -> Vec<Denial> {
        let m = self.by_session.lock().unwrap_or_else(|e| e.into_inner());
        m.get(id)
            .map(|q| q.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Forgets a session (destroyed).
    pub fn forget(&self, id: &str) {
        let mut m = self.by_session.lock().unwrap_or_else(|e| e.into_inner());
        m.remove(id);
    }

    /// Denials recorded since start, all sessions.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    #[test]
    fn keeps_the_latest_per_session_and_counts_all() {
        let log = EventLog::default();
        for i in 0..KEEP + 5 {
            log.record(
                "a",
                Denial {
                    at: SystemTime::now(),
                    destination: format!("n{i}.example"),
                    name: None,
                    reason: "test".into(),
                },
            );
        }
        let a = log.list("a");
        assert_eq!(a.len(), KEEP);
        assert_eq!(a[0].destination, "n5.example");
        assert!(log.list("b").is_empty());
        assert_eq!(log.total(), (KEEP + 5) as u64);
        log.forget("a");
        assert!(log.list("a").is_empty());
    }
}
