//! Viewer sessions: the distinct token ids (`jti`) seen in a sliding window. This is what the
//! slave reports as `connections`, because HLS has no connection that lasts a session.

use std::time::{Duration, Instant};

use dashmap::DashMap;

pub struct ViewerTracker {
    seen: DashMap<Box<str>, Instant>,
    window: Duration,
    /// Bound on tracked ids, so a flood of distinct tokens cannot grow memory without limit.
    max: usize,
}

impl ViewerTracker {
    pub fn new(window: Duration) -> Self {
        Self {
            seen: DashMap::new(),
            window,
            max: 1_000_000,
        }
    }

    pub fn touch(&self, jti: &str) {
        if let Some(mut t) = self.seen.get_mut(jti) {
            *t = Instant::now();
            return;
        }
        if self.seen.len() >= self.max {
            self.purge();
        }
        self.seen.insert(jti.into(), Instant::now());
    }

    pub fn purge(&self) {
        let w = self.window;
        self.seen.retain(|_, t| t.elapsed() <= w);
    }

    pub fn count(&self) -> u32 {
        let w = self.window;
        self.seen
            .iter()
            .filter(|e| e.value().elapsed() <= w)
            .count() as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn distinct_ids_in_window() {
        let v = ViewerTracker::new(Duration::from_millis(100));
        v.touch("a");
        v.touch("a");
        v.touch("b");
        assert_eq!(v.count(), 2);
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(v.count(), 0);
        v.purge();
        assert_eq!(v.seen.len(), 0);
    }
}
