//! What an edge fetched of recordings it does not hold: their files (which never change) up to
//! a byte budget, the playlists of classes still recorded for a second, and which node holds
//! each recording. Data only; `crate::vod` fills and reads it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use bytes::Bytes;
use dashmap::DashMap;
use parking_lot::Mutex;

/// Bytes fetched from recordings' origins, kept up to a budget, oldest out first. Recorded
/// files never change, so nothing in it goes stale; deleting a recording forgets its entries.
pub struct VodCache {
    map: DashMap<String, Bytes>,
    order: Mutex<VecDeque<String>>,
    bytes: AtomicUsize,
    max: usize,
    /// Which node holds a recording, asked of the master, remembered for a while.
    pub(crate) origins: DashMap<String, (String, Instant)>,
    /// Playlists of classes still recorded (they grow): kept for a second, so the viewers an
    /// edge has rewinding a live class cost its holder one request a second, not one each.
    pub(crate) growing: DashMap<String, (Bytes, Instant)>,
}

impl VodCache {
    pub fn new(max: usize) -> Self {
        Self {
            map: DashMap::new(),
            order: Mutex::new(VecDeque::new()),
            bytes: AtomicUsize::new(0),
            max,
            origins: DashMap::new(),
            growing: DashMap::new(),
        }
    }

    pub(crate) fn get(&self, key: &str) -> Option<Bytes> {
        self.map.get(key).map(|b| b.clone())
    }

    pub(crate) fn put(&self, key: String, data: Bytes) {
        if data.len() > self.max / 4 || self.map.contains_key(&key) {
            return;
        }
        self.bytes.fetch_add(data.len(), Ordering::Relaxed);
        self.map.insert(key.clone(), data);
        let mut order = self.order.lock();
        order.push_back(key);
        while self.bytes.load(Ordering::Relaxed) > self.max {
            let Some(old) = order.pop_front() else { break };
            if let Some((_, b)) = self.map.remove(&old) {
                self.bytes.fetch_sub(b.len(), Ordering::Relaxed);
            }
        }
    }

    pub fn forget(&self, id: &str) {
        let prefix = format!("{id}/");
        self.map.retain(|k, b| {
            let keep = !k.starts_with(&prefix);
            if !keep {
                self.bytes.fetch_sub(b.len(), Ordering::Relaxed);
            }
            keep
        });
        self.origins.remove(id);
        self.growing.retain(|k, _| !k.starts_with(&prefix));
    }

    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }
}
