//! The daemon's budget for request bodies held whole in memory.
//!
//! A JSON body, a multipart upload, an E2B file upload or a unary RPC
//! message is read whole before its handler acts on it, and the handler
//! holds a decoded copy besides (about 2.5 times the body at the peak).
//! `max_body_mb` bounds one body; this bounds all of them at once: every
//! handler that buffers a body first claims its size here (its announced
//! `Content-Length`, or the body limit when the length is not announced)
//! and keeps the claim until it has answered. A claim that cannot be met
//! waits (uploads queue instead of taking memory) for at most
//! [`BodyBudget::wait`], then fails, and the handler answers 503
//! without reading the body.
//!
//! Bodies that are streamed (process stdin, workspace imports, the ports
//! proxy, E2B's `StreamInput`) claim nothing: they hold one chunk at a time.
//!
//! When the last claim of a large body is given back, the allocator is
//! asked to return its free pages to the system (`malloc_trim`, on the
//! blocking pool): glibc keeps what its arenas once held, and the daemon
//! stayed at hundreds of MB after a burst of uploads.

use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Claims are counted in KiB (a semaphore counts at most `u32` permits at
/// once).
const UNIT: u64 = 1024;

/// A claim of at least this many bytes asks for a trim when it is the
/// last to go.
const TRIM_AFTER: u64 = 4 << 20;

/// Bytes of request bodies held at once; cheap to clone (one budget).
#[derive(Clone, Debug)]
pub struct BodyBudget {
    sem: Arc<Semaphore>,
    units: u32,
    wait: Duration,
}

/// Room claimed for one body; given back when dropped.
#[derive(Debug)]
#[must_use = "the room is given back when the claim is dropped"]
pub struct BodyClaim {
    permit: Option<OwnedSemaphorePermit>,
    /// The budget's semaphore and size, to see whether this was the last
    /// claim (only for claims of at least `TRIM_AFTER`).
    last: Option<(Arc<Semaphore>, u32)>,
}

impl Drop for BodyClaim {
    fn drop(&mut self) {
        drop(self.permit.take());
        let Some((sem, units)) = self.last.take() else {
            return;
        };
        if sem.available_permits() == units as usize {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn_blocking(trim);
            }
        }
    }
}

/// Gives the allocator's free pages back to the system.
fn trim() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The budget stayed taken for the whole wait.
#[derive(Debug, thiserror::Error)]
#[error(
    "the daemon is holding {total} bytes of request bodies (its limit, body_memory_mb); \
     no room came within {} s: retry",
    wait.as_secs()
)]
pub struct BodiesFull {
    pub total: u64,
    pub wait: Duration,
}

impl BodyBudget {
    /// A budget of `total` bytes; a claim waits at most `wait` for room.
    pub fn new(total: u64, wait: Duration) -> BodyBudget {
        let units = u32::try_from(total.div_ceil(UNIT).max(1)).unwrap_or(u32::MAX);
        BodyBudget {
            sem: Arc::new(Semaphore::new(units as usize)),
            units,
            wait,
        }
    }

    /// The budget in bytes.
    pub fn total(&self) -> u64 {
        u64::from(self.units) * UNIT
    }

    /// How long a claim waits for room.
    pub fn wait(&self) -> Duration {
        self.wait
    }

    /// Claims room for a body of `announced` bytes (its `Content-Length`;
    /// `None` when the body is chunked: then `limit`, the most it may
    /// hold). A body announced over `limit` claims nothing: its handler
    /// refuses it (413) before reading it. An empty body claims nothing.
    pub async fn claim(&self, announced: Option<u64>, limit: u64) -> Result<BodyClaim, BodiesFull> {
        let bytes = match announced {
            Some(n) if n > limit => 0,
            Some(n) => n,
            None => limit,
        };
        if bytes == 0 {
            return Ok(BodyClaim {
                permit: None,
                last: None,
            });
        }
        // A body larger than the whole budget takes all of it.
        let units = u32::try_from(bytes.div_ceil(UNIT))
            .unwrap_or(u32::MAX)
            .min(self.units);
        let full = || BodiesFull {
            total: self.total(),
            wait: self.wait,
        };
        match tokio::time::timeout(self.wait, self.sem.clone().acquire_many_owned(units)).await {
            Ok(Ok(permit)) => Ok(BodyClaim {
                permit: Some(permit),
                last: (bytes >= TRIM_AFTER).then(|| (self.sem.clone(), self.units)),
            }),
            // Never closed; a timeout is the budget staying full.
            Ok(Err(_)) | Err(_) => Err(full()),
        }
    }

    /// Bytes claimed now (for tests and metrics).
    pub fn in_use(&self) -> u64 {
        u64::from(self.units).saturating_sub(self.sem.available_permits() as u64) * UNIT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn claims_hold_room_until_dropped_and_wait_no_longer_than_told() {
        let b = BodyBudget::new(10 << 20, Duration::from_millis(200));
        let a = b.claim(Some(6 << 20), 64 << 20).await.unwrap();
        assert_eq!(b.in_use(), 6 << 20);
        // No room for another 6 MiB: it waits, then fails.
        let t = std::time::Instant::now();
        let e = b.claim(Some(6 << 20), 64 << 20).await.unwrap_err();
        assert!(
            t.elapsed() >= Duration::from_millis(200),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(e.total, 10 << 20);
        // Room given back while one waits lets it in.
        let b2 = b.clone();
        let waiter = tokio::spawn(async move { b2.claim(Some(6 << 20), 64 << 20).await.is_ok() });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(a);
        assert!(waiter.await.unwrap());
        assert_eq!(b.in_use(), 0);
    }

    #[tokio::test]
    async fn unannounced_bodies_claim_the_limit_and_refused_ones_nothing() {
        let b = BodyBudget::new(100 << 20, Duration::from_millis(50));
        let chunked = b.claim(None, 64 << 20).await.unwrap();
        assert_eq!(b.in_use(), 64 << 20);
        let over = b.claim(Some(65 << 20), 64 << 20).await.unwrap();
        let empty = b.claim(Some(0), 64 << 20).await.unwrap();
        assert_eq!(b.in_use(), 64 << 20);
        drop((chunked, over, empty));
        // A body over the whole budget takes all of it, and is not refused.
        let small = BodyBudget::new(1 << 20, Duration::from_millis(50));
        let all = small.claim(Some(4 << 20), 64 << 20).await.unwrap();
        assert_eq!(small.in_use(), 1 << 20);
        drop(all);
        assert_eq!(small.in_use(), 0);
    }
}
