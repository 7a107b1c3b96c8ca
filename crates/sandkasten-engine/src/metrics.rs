//! In-memory counters behind `GET /v1/pool` and `GET /metrics`: lock-free
//! histograms with fixed buckets and a small ring of recent samples for
//! percentiles.

use crate::HistogramSnapshot;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the histogram buckets: sub-millisecond execs up
/// to the longest exec timeout.
const BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0, 60.0,
    120.0,
];

/// A Prometheus-style histogram.
pub(crate) struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub(crate) fn new() -> Histogram {
        Histogram {
            counts: Default::default(),
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub(crate) fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }

    /// Cumulative buckets, as Prometheus wants them.
    pub(crate) fn snapshot(&self) -> HistogramSnapshot {
        let mut acc = 0;
        let buckets = BUCKETS
            .iter()
            .zip(&self.counts)
            .map(|(b, c)| {
                acc += c.load(Ordering::Relaxed);
                (*b, acc)
            })
            .collect();
        HistogramSnapshot {
            buckets,
            count: self.count.load(Ordering::Relaxed),
            sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

/// The last `CAP` samples, for percentiles.
pub(crate) struct Recent {
    ring: Mutex<(Vec<f64>, usize)>,
}

const CAP: usize = 1024;

impl Recent {
    pub(crate) fn new() -> Recent {
        Recent {
            ring: Mutex::new((Vec::new(), 0)),
        }
    }

    pub(crate) fn push(&self, ms: f64) {
        let mut g = self.ring.lock().unwrap();
        let (v, next) = &mut *g;
        if v.len() < CAP {
            v.push(ms);
        } else {
            v[*next] = ms;
        }
        *next = (*next + 1) % CAP;
    }

    /// The `p`-th percentile (0–100, nearest rank) of the recent samples.
    pub(crate) fn percentile(&self, p: f64) -> Option<f64> {
        let mut v = self.ring.lock().unwrap().0.clone();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
        Some(v[rank.min(v.len()) - 1])
    }
}

/// Counters since start, for `GET /metrics`.
pub(crate) struct Counters {
    pub(crate) creates_pool: AtomicU64,
    pub(crate) creates_cold: AtomicU64,
    /// By final state, in the order of [`ENDED`].
    pub(crate) ended: [AtomicU64; 4],
    pub(crate) exec: Histogram,
    /// Cold creates' steps.
    pub(crate) cold_phases: PhaseTotals,
    /// Pooled creates' steps (taking and binding a pooled sandbox).
    pub(crate) pool_phases: PhaseTotals,
}

/// The steps of one create, timed back to back: each [`Phases::end`]
/// closes the step that began at the previous one.
pub(crate) struct Phases {
    step: std::time::Instant,
    pub(crate) list: Vec<(String, u64)>,
}

impl Phases {
    pub(crate) fn start() -> Phases {
        Phases {
            step: std::time::Instant::now(),
            list: Vec::new(),
        }
    }

    /// Ends step `name` (its time: since the previous step's end).
    pub(crate) fn end(&mut self, name: &str) {
        let now = std::time::Instant::now();
        self.list
            .push((name.to_string(), (now - self.step).as_micros() as u64));
        self.step = now;
    }
}

/// Steps of many creates: (name, total microseconds, count), in the order
/// first seen.
#[derive(Default)]
pub(crate) struct PhaseTotals(std::sync::Mutex<Vec<(String, u64, u64)>>);

impl PhaseTotals {
    /// Adds one create's steps.
    pub(crate) fn add(&self, phases: &[(String, u64)]) {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for (name, us) in phases {
            match all.iter_mut().find(|(n, _, _)| n == name) {
                Some(p) => {
                    p.1 += us;
                    p.2 += 1;
                }
                None => all.push((name.clone(), *us, 1)),
            }
        }
    }

    /// (name, total seconds, count) per step.
    pub(crate) fn snapshot(&self) -> Vec<(String, f64, u64)> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(n, us, count)| (n.clone(), *us as f64 / 1e6, *count))
            .collect()
    }
}

pub(crate) const ENDED: [crate::SessionState; 4] = [
    crate::SessionState::Destroyed,
    crate::SessionState::Expired,
    crate::SessionState::Lost,
    crate::SessionState::Failed,
];

impl Counters {
    pub(crate) fn new() -> Counters {
        Counters {
            creates_pool: AtomicU64::new(0),
            creates_cold: AtomicU64::new(0),
            ended: Default::default(),
            exec: Histogram::new(),
            cold_phases: Default::default(),
            pool_phases: Default::default(),
        }
    }

    pub(crate) fn ended(&self, state: crate::SessionState) {
        if let Some(i) = ENDED.iter().position(|s| *s == state) {
            self.ended[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(500)); // beyond the last bucket: +Inf only
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.buckets[0], (0.0005, 1));
        assert_eq!(s.buckets[3], (0.005, 2));
        assert_eq!(s.buckets.last().unwrap().1, 2);
        assert!((s.sum_seconds - 500.0033).abs() < 1e-6);
    }

    #[test]
    fn percentiles_use_nearest_rank_over_the_last_samples() {
        let r = Recent::new();
        assert_eq!(r.percentile(50.0), None);
        for i in 1..=100 {
            r.push(i as f64);
        }
        assert_eq!(r.percentile(50.0), Some(50.0));
        assert_eq!(r.percentile(95.0), Some(95.0));
        // Older samples fall out of the ring.
        for _ in 0..CAP {
            r.push(7.0);
        }
        assert_eq!(r.percentile(95.0), Some(7.0));
    }
}
