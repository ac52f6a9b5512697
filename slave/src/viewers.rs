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

/// What the heartbeat reports: sessions now against the cap. Every engine admits through the
/// one counter, so the cap holds across them.
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
    /// Takes a slot if fewer than `cap` are taken: the check and the count in one step, so
    /// concurrent offers on several engines never pass the cap.
    pub fn try_admit(&self, cap: u32) -> bool {
        self.sessions
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .is_ok()
    }
    /// Gives a slot back (a session ended).
    pub fn leave(&self) {
        let _ = self
            .sessions
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
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
    fn webrtc_slots_never_pass_the_cap_across_threads() {
        let load = std::sync::Arc::new(WebRtcLoad::default());
        let admitted: u32 = (0..4)
            .map(|_| {
                let l = load.clone();
                std::thread::spawn(move || (0..100).filter(|_| l.try_admit(50)).count() as u32)
            })
            .map(|t| t.join().unwrap())
            .sum();
        assert_eq!((admitted, load.sessions()), (50, 50));
        load.leave();
        assert!(load.try_admit(50));
        assert!(!load.try_admit(50));
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
