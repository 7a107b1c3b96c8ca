//! What the DNS server opened for each sandbox, until when: the proxy's
//! way to tell an address a sandbox resolved from one it made up.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Resolved {
    by_session: Mutex<HashMap<String, HashMap<IpAddr, Instant>>>,
}

impl Resolved {
    /// Notes `addr` open for sandbox `id` for `ttl` (extending, never
    /// shortening, what is there).
    pub fn open(&self, id: &str, addr: IpAddr, ttl: Duration) {
        let until = Instant::now() + ttl;
        let mut m = self.by_session.lock().unwrap_or_else(|e| e.into_inner());
        let s = m.entry(id.to_string()).or_default();
        // Drop what has expired while we are here: bounded by what the
        // sandbox resolved within the longest TTL.
        let now = Instant::now();
        s.retain(|_, t| *t > now);
        let t = s.entry(addr).or_insert(until);
        *t = (*t).max(until);
    }

    /// Whether `addr` is open for sandbox `id` now.
    pub fn is_open(&self, id: &str, addr: IpAddr) -> bool {
        let m = self.by_session.lock().unwrap_or_else(|e| e.into_inner());
        m.get(id)
            .and_then(|s| s.get(&addr))
            .is_some_and(|t| *t > Instant::now())
    }

    /// Forgets a sandbox (destroyed, or its policy changed: what it
    /// resolved under the old one is not open under the new); the
    /// addresses that were still open.
    pub fn take(&self, id: &str) -> Vec<IpAddr> {
        let mut m = self.by_session.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        m.remove(id)
            .map(|s| {
                s.into_iter()
                    .filter(|(_, t)| *t > now)
                    .map(|(a, _)| a)
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_until_the_ttl_and_per_sandbox() {
        let r = Resolved::default();
        let a: IpAddr = "203.0.113.1".parse().unwrap();
        r.open("s1", a, Duration::from_secs(60));
        assert!(r.is_open("s1", a));
        assert!(!r.is_open("s2", a));
        r.open("s1", "203.0.113.2".parse().unwrap(), Duration::ZERO);
        assert!(!r.is_open("s1", "203.0.113.2".parse().unwrap()));
        assert_eq!(r.take("s1"), vec![a]);
        assert!(!r.is_open("s1", a));
    }
}
