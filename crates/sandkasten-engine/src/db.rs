//! The store as the engine uses it: every SQLite call runs on the blocking
//! pool (never on an async worker, since a write may wait up to the busy
//! timeout), and the activity of execs and file calls (expiry, cwd) goes
//! to one writer task that coalesces it, so the hot path never waits for
//! the database at all.

use crate::sessions::Activity;
use sandkasten_store::{Store, StoreError};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Notify};

/// What the activity writer is told.
enum Message {
    /// A session's latest activity, as persisted for recovery.
    Touch { id: String, activity: Activity },
    /// Answer once everything sent before is written.
    Flush(oneshot::Sender<()>),
}

/// How long the activity writer gathers before it writes: a session's
/// activity in this window is one row write, and a steady stream of execs
/// costs one transaction per window instead of one each. A daemon killed
/// without a shutdown loses at most this much activity: its sessions'
/// expiries are that much early after the restart (and the cwd the API
/// shows is the one before; the shell keeps its own).
const ACTIVITY_WINDOW: Duration = Duration::from_millis(500);

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub(crate) struct Db {
    store: Arc<Store>,
    activity: mpsc::UnboundedSender<Message>,
    /// Ends the writer's window early (a flush waits for it).
    flush_now: Arc<Notify>,
}

impl Db {
    /// Wraps `store` and starts the activity writer (it ends when the last
    /// handle is dropped).
    pub(crate) fn new(store: Arc<Store>) -> Db {
        let (tx, rx) = mpsc::unbounded_channel();
        let flush_now = Arc::new(Notify::new());
        tokio::spawn(write_activity(store.clone(), rx, flush_now.clone()));
        Db {
            store,
            activity: tx,
            flush_now,
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
    pub(crate) fn record_activity(&self, id: &str, activity: Activity) {
        let _ = self.activity.send(Message::Touch {
            id: id.to_string(),
            activity,
        });
    }

    /// Waits until all activity recorded so far is in the store (at
    /// shutdown).
    pub(crate) async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.activity.send(Message::Flush(tx)).is_ok() {
            self.flush_now.notify_one();
            let _ = rx.await;
        }
    }
}

/// Writes activity in batches: from the first message, whatever arrives
/// within [`ACTIVITY_WINDOW`] (or until a flush is asked for) is one
/// transaction with one row per session, its latest activity. The writer
/// does not receive during the window, so the messages in it wake nobody
/// (an exec's record costs it no task switch). The writes
/// are conditional (`Store::record_session_activity`), so an activity that
/// waited here never overwrites an expiry that a TTL change or a pause
/// wrote directly in the meantime.
async fn write_activity(
    store: Arc<Store>,
    mut rx: mpsc::UnboundedReceiver<Message>,
    flush_now: Arc<Notify>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch: HashMap<String, Activity> = HashMap::new();
        let mut flushed = Vec::new();
        if !matches!(first, Message::Flush(_)) {
            tokio::select! {
                () = tokio::time::sleep(ACTIVITY_WINDOW) => {}
                () = flush_now.notified() => {}
            }
        }
        let mut next = Some(first);
        while let Some(m) = next {
            match m {
                Message::Touch { id, activity } => {
                    batch.insert(id, activity);
                }
                Message::Flush(done) => flushed.push(done),
            }
            next = rx.try_recv().ok();
        }
        let store = store.clone();
        let written = tokio::task::spawn_blocking(move || {
            let rows: Vec<(&str, i64, &str, u64)> = batch
                .iter()
                .map(|(id, a)| {
                    let exp = (a.expires_at.unix_timestamp_nanos() / 1_000_000) as i64;
                    (id.as_str(), exp, a.cwd.as_str(), a.ttl_seconds)
                })
                .collect();
            if let Err(e) = store.record_sessions_activity(&rows) {
                tracing::warn!("recording activity: {e}");
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
