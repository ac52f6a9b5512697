//! Per-address limits on the two requests a client can make for free: minting viewer tokens
//! (a token bucket, generous enough for a whole school behind one NAT address) and guessing the
//! teacher password (a back-off that grows with each failure).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use dashmap::DashMap;

/// Addresses tracked at most; past it, entries that no longer limit anything are dropped.
const MAX_TRACKED: usize = 100_000;

#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

impl Default for Rate {
    fn default() -> Self {
        Self {
            per_second: 200.0,
            burst: 2000.0,
        }
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// A token bucket per client address.
pub struct AddrRateLimiter {
    rate: Rate,
    buckets: DashMap<IpAddr, Bucket>,
}

impl AddrRateLimiter {
    pub fn new(rate: Rate) -> Self {
        Self {
            rate,
            buckets: DashMap::new(),
        }
    }

    /// Takes one from `addr`'s bucket; `Err(seconds)` to wait when it is empty.
    pub fn check(&self, addr: IpAddr) -> Result<(), u64> {
        let Rate { per_second, burst } = self.rate;
        if self.buckets.len() >= MAX_TRACKED {
            // A bucket refilled to the brim limits nothing: forget it.
            let full = Duration::from_secs_f64(burst / per_second.max(1e-9));
            self.buckets.retain(|_, b| b.at.elapsed() < full);
        }
        let now = Instant::now();
        let mut b = self.buckets.entry(addr).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let refill = now.duration_since(b.at).as_secs_f64() * per_second;
        b.tokens = (b.tokens + refill).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - b.tokens) / per_second.max(1e-9)).ceil().max(1.0) as u64)
        }
    }
}

struct Failures {
    count: u32,
    blocked_until: Option<Instant>,
    last: Instant,
}

/// Failed logins per address: the `free`-th failure blocks the address for 5 s, and each
/// failure after a block ends doubles it (10 s, 20 s … up to `max_block`). Requests while
/// blocked are refused unchecked. A success clears the address.
pub struct LoginThrottle {
    free: u32,
    max_block: Duration,
    /// Failures older than this are forgotten.
    forget_after: Duration,
    by_addr: DashMap<IpAddr, Failures>,
}

impl LoginThrottle {
    pub fn new(free: u32, max_block: Duration) -> Self {
        Self {
            free,
            max_block,
            forget_after: Duration::from_secs(3600),
            by_addr: DashMap::new(),
        }
    }

    /// `Err(seconds)` while `addr` is blocked.
    pub fn check(&self, addr: IpAddr) -> Result<(), u64> {
        let Some(f) = self.by_addr.get(&addr) else {
            return Ok(());
        };
        match f.blocked_until {
            Some(t) if t > Instant::now() => Err(t
                .duration_since(Instant::now())
                .as_secs_f64()
                .ceil()
                .max(1.0) as u64),
            _ => Ok(()),
        }
    }

    /// Records a failure; returns the block it starts, if any.
    pub fn failed(&self, addr: IpAddr) -> Option<Duration> {
        if self.by_addr.len() >= MAX_TRACKED {
            let forget = self.forget_after;
            self.by_addr.retain(|_, f| f.last.elapsed() < forget);
        }
        let now = Instant::now();
        let mut f = self.by_addr.entry(addr).or_insert(Failures {
            count: 0,
            blocked_until: None,
            last: now,
        });
        if now.duration_since(f.last) > self.forget_after {
            f.count = 0;
        }
        f.count = f.count.saturating_add(1);
        f.last = now;
        if f.count < self.free {
            return None;
        }
        let doublings = (f.count - self.free).min(20);
        let block = Duration::from_secs(5u64 << doublings).min(self.max_block);
        f.blocked_until = Some(now + block);
        Some(block)
    }

    pub fn succeeded(&self, addr: IpAddr) {
        self.by_addr.remove(&addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn bucket_allows_the_burst_then_the_rate() {
        let l = AddrRateLimiter::new(Rate {
            per_second: 10.0,
            burst: 5.0,
        });
        for _ in 0..5 {
            assert!(l.check(ip("10.0.0.1")).is_ok());
        }
        assert_eq!(l.check(ip("10.0.0.1")), Err(1));
        // Another address has its own bucket.
        assert!(l.check(ip("10.0.0.2")).is_ok());
        std::thread::sleep(Duration::from_millis(120));
        assert!(l.check(ip("10.0.0.1")).is_ok());
    }

    #[test]
    fn login_blocks_grow_and_a_success_clears() {
        let t = LoginThrottle::new(3, Duration::from_secs(60));
        let a = ip("10.0.0.1");
        assert_eq!(t.failed(a), None);
        assert_eq!(t.failed(a), None);
        assert!(t.check(a).is_ok());
        assert_eq!(t.failed(a), Some(Duration::from_secs(5)));
        assert!(t.check(a).is_err());
        assert_eq!(t.failed(a), Some(Duration::from_secs(10)));
        assert_eq!(t.failed(a), Some(Duration::from_secs(20)));
        for _ in 0..30 {
            t.failed(a);
        }
        assert_eq!(t.failed(a), Some(Duration::from_secs(60)));
        assert!(t.check(ip("10.0.0.2")).is_ok());
        t.succeeded(a);
        assert!(t.check(a).is_ok());
    }
}
