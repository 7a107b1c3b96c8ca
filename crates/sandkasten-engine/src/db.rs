//! The store as the engine uses it: every SQLite call runs on the blocking
//! pool (never on an async worker, since a write may wait up to the busy
//! timeout), and the activity of execs and file calls (expiry, cwd) goes
//! to one writer task that coalesces it, so the hot path never waits for
//! the database at all.

use sandkasten_store::{Store, StoreError};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// What the activity writer is told.
enum Activity {
    /// A session's latest activity, as persisted for recovery.
    Touch {
        id: String,
        expires_at_ms: i64,
        cwd: String,
    },
    /// Answer once everything sent before is written.
    Flush(oneshot::Sender<()>),
}

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub(crate) struct Db {
    store: Arc<Store>,
    activity: mpsc::UnboundedSender<Activity>,
}

impl Db {
    /// Wraps `store` and starts the activity writer (it ends when the last
    /// handle is dropped).
    pub(crate) fn new(store: Arc<Store>) -> Db {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_activity(store.clone(), rx));
        Db {
            store,
            activity: tx,
        }
    }

    /// Runs `f` against the store on the blocking pool.
    pub(crate) async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || f(&store)).await {
            Ok(r) => r,
            Err(e) => Err(StoreError::Task(e.to_string())),
        }
    }

    /// Records a session's activity without waiting: the writer persists
    /// the latest value per session in batches.
    pub(crate) fn record_activity(&self, id: &str, expires_at_ms: i64, cwd: &str) {
        let _ = self.activity.send(Activity::Touch {
            id: id.to_string(),
            expires_at_ms,
            cwd: cwd.to_string(),
        });
    }

    /// Waits until all activity recorded so far is in the store (at
    /// shutdown).
    pub(crate) async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.activity.send(Activity::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

/// Writes activity as it arrives; whatever queued while a batch was being
/// written goes in the next one, one row per session.
async fn write_activity(store: Arc<Store>, mut rx: mpsc::UnboundedReceiver<Activity>) {
    while let Some(first) = rx.recv().await {
        let mut batch: HashMap<String, (i64, String)> = HashMap::new();
        let mut flushed = Vec::new();
        let mut next = Some(first);
        while let Some(a) = next {
            match a {
                Activity::Touch {
                    id,
                    expires_at_ms,
                    cwd,
                } => {
                    batch.insert(id, (expires_at_ms, cwd));
                }
                Activity::Flush(done) => flushed.push(done),
            }
            next = rx.try_recv().ok();
        }
        let store = store.clone();
        let written = tokio::task::spawn_blocking(move || {
            for (id, (exp, cwd)) in batch {
                if let Err(e) = store.touch_session(&id, exp, &cwd) {
                    tracing::warn!(session = %id, "recording activity: {e}");
                }
            }
        })
        .await;
        if let Err(e) = written {
            tracing::warn!("recording activity: {e}");
        }
        for done in flushed {
            let _ = done.send(());
        }
    }
}
