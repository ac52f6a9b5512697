//! The recordings on this node's disk ([`disk`] is their on-disk form) and how recording is
//! configured. Data only: the recorder task that writes them and the retention loop live in
//! [`crate::recorder`].

pub mod disk;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::api::RecordingInfo;
use parking_lot::RwLock;

use disk::Recording;

#[derive(Debug, Clone)]
pub struct RecordConfig {
    /// Where recordings live; `None`: this node records nothing.
    pub dir: Option<PathBuf>,
    /// Record a class whose stream key does not say.
    pub by_default: bool,
    /// Finished recordings older than this are deleted.
    pub max_age: Duration,
    /// Finished recordings are deleted, oldest first, while all of them take more than this
    /// (0: no limit).
    pub max_bytes: u64,
    /// A recording stops when the disk has less free space than this.
    pub min_free_bytes: u64,
    /// How often retention runs (and at start).
    pub retention_every: Duration,
}

impl Default for RecordConfig {
    fn default() -> Self {
        Self {
            dir: None,
            by_default: true,
            max_age: Duration::from_secs(30 * 86_400),
            max_bytes: 0,
            min_free_bytes: 1 << 30,
            retention_every: Duration::from_secs(60),
        }
    }
}

/// The recordings on this node's disk: what an index says, kept in memory.
#[derive(Default)]
pub struct Recordings {
    all: RwLock<BTreeMap<String, Arc<Entry>>>,
}

pub struct Entry {
    pub rec: Recording,
    /// Still being written.
    pub live: bool,
}

impl Recordings {
    /// Loads every recording under `dir` (a restart finds the ones before it).
    pub fn load(&self, dir: &Path) {
        let found = disk::scan(dir);
        let mut all = self.all.write();
        for rec in found {
            tracing::info!(id = %rec.id, segments = rec.segments.len(), ended = rec.ended, "recording found on disk");
            all.insert(rec.id.clone(), Arc::new(Entry { rec, live: false }));
        }
    }

    pub fn get(&self, id: &str) -> Option<Arc<Entry>> {
        self.all.read().get(id).cloned()
    }

    pub(crate) fn put(&self, rec: Recording, live: bool) {
        self.all
            .write()
            .insert(rec.id.clone(), Arc::new(Entry { rec, live }));
    }

    pub fn remove(&self, id: &str) -> Option<Arc<Entry>> {
        self.all.write().remove(id)
    }

    /// Newest first, for the heartbeat.
    pub fn infos(&self) -> Vec<RecordingInfo> {
        let mut v: Vec<RecordingInfo> = self
            .all
            .read()
            .values()
            .map(|e| RecordingInfo {
                id: e.rec.id.clone(),
                path: e.rec.header.path.clone(),
                started_ms: e.rec.header.started_ms,
                duration_s: (e.rec.duration_s() * 1000.0).round() / 1000.0,
                bytes: e.rec.bytes(),
                recording: e.live,
            })
            .collect();
        v.sort_by_key(|r| std::cmp::Reverse(r.started_ms));
        v.truncate(common::api::MAX_REPORTED_RECORDINGS);
        v
    }

    pub fn total_bytes(&self) -> u64 {
        self.all.read().values().map(|e| e.rec.bytes()).sum()
    }

    pub fn count(&self) -> usize {
        self.all.read().len()
    }

    pub(crate) fn finished_oldest_first(&self) -> Vec<Arc<Entry>> {
        let mut v: Vec<Arc<Entry>> = self
            .all
            .read()
            .values()
            .filter(|e| !e.live)
            .cloned()
            .collect();
        v.sort_by_key(|e| e.rec.header.started_ms);
        v
    }
}

/// Free bytes on the file system holding `dir` (`u64::MAX` when it cannot be asked).
pub fn free_bytes(dir: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return u64::MAX;
    };
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a zeroed out-struct, as statvfs(3) wants.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return u64::MAX;
    }
    (s.f_bavail as u64).saturating_mul(s.f_frsize as u64)
}
