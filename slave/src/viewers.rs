//! Viewer sessions: the distinct token ids (`jti`) seen in a sliding window. This is what the
//! slave reports as `connections`, because HLS has no connection that lasts a session.

use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use dashmap::DashMap;

pub struct ViewerTracker {
    seen: DashMap<Box<str>, Instant>,
    window: Duration,
    /// Bound on tracked ids, so a flood of distinct tokens cannot grow memory without limit.
    max: usize,
    /// Viewers with a connection that lasts (WebRTC): present until released, whatever the
    /// window. Counted once with the window's ids.
    held: DashMap<Box<str>, u32>,
}

impl ViewerTracker {
    pub fn new(window: Duration) -> Self {
        Self {
            seen: DashMap::new(),
            window,
            max: 1_000_000,
            held: DashMap::new(),
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
        let recent = self
            .seen
            .iter()
            .filter(|e| e.value().elapsed() <= w && !self.held.contains_key(e.key()))
            .count();
        (recent + self.held.len()) as u32
    }

    /// A WebRTC session of `id` has media flowing.
    pub fn hold(&self, id: &str) {
        *self.held.entry(id.into()).or_insert(0) += 1;
    }

    /// That session ended: the viewer counts no more, at once (not at the end of the window).
    pub fn release(&self, id: &str) {
        self.held.remove_if_mut(id, |_, n| {
            *n -= 1;
            *n == 0
        });
        // Its window entry, from an LL-HLS start before WebRTC took over, goes too.
        self.seen.remove(id);
    }
}

/// What the heartbeat reports: sessions now against the cap.
#[derive(Default)]
pub struct WebRtcLoad {
    sessions: AtomicU32,
    /// The engine runs (WEBRTC=true and its UDP port bound).
    pub enabled: AtomicBool,
}

impl WebRtcLoad {
    pub fn sessions(&self) -> u32 {
        self.sessions.load(Ordering::Relaxed)
    }
    pub fn set_sessions(&self, n: usize) {
        self.sessions.store(n as u32, Ordering::Relaxed);
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

    #[test]
    fn held_sessions_count_once_until_released() {
        let v = ViewerTracker::new(Duration::from_secs(60));
        v.touch("a");
        v.hold("a");
        v.hold("b");
        v.hold("b");
        assert_eq!(v.count(), 2);
        v.release("b");
        assert_eq!(v.count(), 2);
        v.release("b");
        v.release("a");
        assert_eq!(v.count(), 0);
    }
}
