//! The daemon's budget for request bodies held whole in memory.
//!
//! A JSON body, a multipart upload, an E2B file upload or a unary RPC
//! message is read whole before its handler acts on it, and the handler
//! holds a decoded copy besides (about 2.5 times the body at the peak).
//! `max_body_mb` bounds one body; this bounds all of them at once: every
//! handler that buffers a body first claims its size here (its announced
//! `Content-Length`, at most the body limit, or the body limit when the
//! length is not announced) and keeps the claim until it has answered. A
//! claim that cannot be met waits (uploads queue instead of taking memory)
//! for at most [`BodyBudget::wait`], then fails, and the handler answers
//! 503 without reading the body.
//!
//! Bodies of at most [`SMALL_BODY`] bytes (commands, most JSON) claim
//! from a pool of their own ([`SMALL_POOL`] bytes), so they never wait
//! behind a large upload waiting for room (the semaphore serves waiters
//! in order).
//!
//! Bodies that are streamed (process stdin, workspace imports, the ports
//! proxy, E2B's `StreamInput`) claim nothing: they hold one chunk at a time.
//!
//! When a large claim is given back and no other large claim is held, the
//! allocator is asked to return its free pages to the system
//! (`malloc_trim`, on the blocking pool): glibc keeps what its arenas once
//! held.

use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Claims are counted in KiB (a semaphore counts at most `u32` permits at
/// once).
const UNIT: u64 = 1024;

/// A claim of at least this many bytes asks for a trim when it is the
/// last large one to go.
const TRIM_AFTER: u64 = 4 << 20;

/// Bodies up to this size claim from the small pool.
pub const SMALL_BODY: u64 = 64 << 10;

/// The small bodies' pool, besides the budget.
pub const SMALL_POOL: u64 = 16 << 20;

/// Bytes of request bodies held at once; cheap to clone (one budget).
#[derive(Clone, Debug)]
pub struct BodyBudget {
    sem: Arc<Semaphore>,
    units: u32,
    small: Arc<Semaphore>,
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

impl BodyClaim {
    /// Gives back all but `bytes` of the claim (a body of unannounced
    /// length, once read whole, holds what it is).
    pub fn shrink_to(&mut self, bytes: u64) {
        let Some(permit) = self.permit.as_mut() else {
            return;
        };
        let keep = bytes.div_ceil(UNIT) as usize;
        if let Some(extra) = permit.num_permits().checked_sub(keep).filter(|n| *n > 0) {
            drop(permit.split(extra));
        }
    }
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
            small: Arc::new(Semaphore::new((SMALL_POOL / UNIT) as usize)),
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
    /// hold). A body announced over `limit` claims `limit`: it is read up
    /// to the limit before its handler refuses it (413). An empty body
    /// claims nothing.
    pub async fn claim(&self, announced: Option<u64>, limit: u64) -> Result<BodyClaim, BodiesFull> {
        let bytes = announced.unwrap_or(limit).min(limit);
        if bytes == 0 {
            return Ok(BodyClaim {
                permit: None,
                last: None,
            });
        }
        let sem = if bytes <= SMALL_BODY {
            &self.small
        } else {
            &self.sem
        };
        // A body larger than the whole budget takes all of it (a small one
        // is far below its pool).
        let want = u32::try_from(bytes.div_ceil(UNIT))
            .unwrap_or(u32::MAX)
            .min(self.units);
        let full = || BodiesFull {
            total: self.total(),
            wait: self.wait,
        };
        match tokio::time::timeout(self.wait, sem.clone().acquire_many_owned(want)).await {
            Ok(Ok(permit)) => Ok(BodyClaim {
                permit: Some(permit),
                last: (bytes >= TRIM_AFTER).then(|| (self.sem.clone(), self.units)),
            }),
            // Never closed; a timeout is the budget staying full.
            Ok(Err(_)) | Err(_) => Err(full()),
        }
    }

    /// Bytes claimed now, small pool included (for tests and metrics).
    pub fn in_use(&self) -> u64 {
        let large = u64::from(self.units).saturating_sub(self.sem.available_permits() as u64);
        let small = (SMALL_POOL / UNIT).saturating_sub(self.small.available_permits() as u64);
        (large + small) * UNIT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[tokio::test]
    async fn claims_hold_room_until_dropped_and_wait_no_longer_than_told() {
        let b = BodyBudget::new(10 * MIB, Duration::from_millis(200));
        let a = b.claim(Some(6 * MIB), 64 * MIB).await.unwrap();
        assert_eq!(b.in_use(), 6 * MIB);
        // No room for another 6 MiB: it waits, then fails.
        let t = std::time::Instant::now();
        let e = b.claim(Some(6 * MIB), 64 * MIB).await.unwrap_err();
        assert!(
            t.elapsed() >= Duration::from_millis(200),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(e.total, 10 * MIB);
        // Room given back while one waits lets it in.
        let b2 = b.clone();
        let waiter = tokio::spawn(async move { b2.claim(Some(6 * MIB), 64 * MIB).await.is_ok() });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(a);
        assert!(waiter.await.unwrap());
        assert_eq!(b.in_use(), 0);
    }

    #[tokio::test]
    async fn unannounced_and_oversized_bodies_claim_the_limit() {
        let b = BodyBudget::new(200 * MIB, Duration::from_millis(50));
        let chunked = b.claim(None, 64 * MIB).await.unwrap();
        assert_eq!(b.in_use(), 64 * MIB);
        // Announced over the limit: read up to the limit, so it holds that.
        let over = b.claim(Some(65 * MIB), 64 * MIB).await.unwrap();
        assert_eq!(b.in_use(), 128 * MIB);
        let empty = b.claim(Some(0), 64 * MIB).await.unwrap();
        assert_eq!(b.in_use(), 128 * MIB);
        drop((over, empty));
        // A chunked body read whole keeps only its size.
        let mut chunked = chunked;
        chunked.shrink_to(3 * MIB);
        assert_eq!(b.in_use(), 3 * MIB);
        drop(chunked);
        // A body over the whole budget takes all of it, and is not refused.
        let small = BodyBudget::new(MIB, Duration::from_millis(50));
        let all = small.claim(Some(4 * MIB), 64 * MIB).await.unwrap();
        assert_eq!(small.in_use(), MIB);
        drop(all);
        assert_eq!(small.in_use(), 0);
    }

    #[tokio::test]
    async fn small_bodies_never_wait_behind_large_ones() {
        let b = BodyBudget::new(8 * MIB, Duration::from_secs(5));
        let held = b.claim(Some(7 * MIB), 64 * MIB).await.unwrap();
        // A large claim waits for room (the semaphore serves in order) ...
        let b2 = b.clone();
        let waiting =
            tokio::spawn(async move { b2.claim(Some(4 * MIB), 64 * MIB).await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(50)).await;
        // ... while a command's body goes in at once, from its own pool.
        let t = std::time::Instant::now();
        let small = b.claim(Some(300), 64 * MIB).await.unwrap();
        assert!(
            t.elapsed() < Duration::from_millis(100),
            "{:?}",
            t.elapsed()
        );
        drop((small, held));
        assert!(waiting.await.unwrap().is_ok());
    }
}
