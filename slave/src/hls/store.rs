//! Every stream this node serves: the pure LL-HLS [`State`] of each behind a lock, with a
//! version channel that wakes blocked playlist and part requests, and a rendering cache.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use media::hls::multivariant::{self, Variant};
use media::hls::playlist::Rendered;
pub use media::hls::state::{CutPart, HlsConfig, Now, Part, PartIn, Segment, SegmentBody, State};
use parking_lot::RwLock;
use tokio::sync::watch;

pub struct HlsStream {
    pub path: String,
    pub cfg: HlsConfig,
    state: RwLock<State>,
    /// Bumped on every change; blocked playlist and part requests wait on it.
    version: watch::Sender<u64>,
    /// The newest complete segment and whether the stream ended: what the recorder waits on,
    /// so that it wakes once a segment and not at every part.
    completed: watch::Sender<(Option<u64>, bool)>,
    pub created: Instant,
    /// First media sequence number of an origin stream: the creation time in seconds, so a
    /// re-published path never reuses a URI that a cache may hold as immutable.
    msn_base: u64,
    /// The last rendering and the version it was made at.
    rendered: parking_lot::Mutex<Option<(u64, Arc<Rendered>)>>,
    /// The same media frame by frame, for WebRTC viewers and edges' frame links.
    pub frames: super::frames::FrameFeed,
    /// The class's messages (Q&A), kept with the stream: a publisher who comes back within the
    /// grace period finds them.
    pub chat: Arc<super::messages::ClassChat>,
    /// How the class's publisher reaches this origin (`rtmp`, `rtmps`, `whip`).
    publisher_kind: parking_lot::Mutex<&'static str>,
    /// A class published as a ladder (multitrack): its other renditions by track id, each a
    /// stream of its own at `<path>/v<id>`. This stream is track 0. Empty for one track.
    ladder: RwLock<Vec<(u8, Arc<HlsStream>)>>,
    /// The video's frame rate: measured by the origin's ingest, copied by an edge.
    frame_rate: parking_lot::Mutex<Option<f64>>,
    /// On an edge, the origin's figures for this rendition (its multivariant playlist's line).
    mirrored_variant: parking_lot::Mutex<Option<Variant>>,
}

impl HlsStream {
    pub fn new(path: String, cfg: HlsConfig) -> Self {
        Self {
            path,
            cfg,
            state: RwLock::new(State::default()),
            version: watch::channel(0).0,
            completed: watch::channel((None, false)).0,
            created: Instant::now(),
            msn_base: common::now_unix(),
            rendered: parking_lot::Mutex::new(None),
            frames: Default::default(),
            chat: Default::default(),
            publisher_kind: parking_lot::Mutex::new(""),
            ladder: Default::default(),
            frame_rate: Default::default(),
            mirrored_variant: Default::default(),
        }
    }

    /// Another rendition of `main`'s class at `path`: the same settings and the same media
    /// sequence numbering, so that equal cuts give equal URIs in every rendition.
    fn rendition_of(path: String, main: &HlsStream) -> Self {
        Self {
            msn_base: main.msn_base,
            ..Self::new(path, main.cfg.clone())
        }
    }

    /// The other renditions (track id, stream), empty unless the class is a ladder.
    pub fn ladder(&self) -> Vec<(u8, Arc<HlsStream>)> {
        self.ladder.read().clone()
    }

    /// Whether the class is sent as a ladder: what every playlist request asks, without the
    /// clone `ladder()` makes.
    pub fn has_ladder(&self) -> bool {
        !self.ladder.read().is_empty()
    }

    pub fn rendition(&self, track: u8) -> Option<Arc<HlsStream>> {
        self.ladder
            .read()
            .iter()
            .find(|(t, _)| *t == track)
            .map(|(_, s)| s.clone())
    }

    pub fn add_rendition(&self, track: u8, stream: Arc<HlsStream>) {
        let mut l = self.ladder.write();
        l.retain(|(t, _)| *t != track);
        l.push((track, stream));
        l.sort_by_key(|(t, _)| *t);
    }

    pub fn set_frame_rate(&self, fps: Option<f64>) {
        *self.frame_rate.lock() = fps;
    }

    pub fn set_mirrored_variant(&self, v: Variant) {
        *self.frame_rate.lock() = v.frame_rate;
        *self.mirrored_variant.lock() = Some(v);
    }

    /// This rendition's line in the multivariant playlist.
    fn variant(&self, track: u8) -> Option<Variant> {
        let uri = multivariant::rendition_uri(track);
        if let Some(v) = self.mirrored_variant.lock().clone() {
            return Some(Variant { uri, ..v });
        }
        Variant::measure(uri, &self.state.read(), *self.frame_rate.lock())
    }

    /// Rendition `track`'s mean bit rate (what WebRTC viewers are switched by); 0 before it
    /// has media.
    pub fn average_bandwidth(&self, track: u8) -> u64 {
        self.variant(track).map_or(0, |v| v.average_bandwidth)
    }

    /// The multivariant playlist of a ladder (`None` for a class of one track), with `query`
    /// after every URI. A rendition with no media yet is left out until it has some.
    pub fn multivariant(&self, query: &str) -> Option<String> {
        let ladder = self.ladder();
        if ladder.is_empty() {
            return None;
        }
        let variants: Vec<Variant> = std::iter::once(self.variant(0))
            .chain(ladder.iter().map(|(t, s)| s.variant(*t)))
            .flatten()
            .collect();
        Some(multivariant::render(&variants, query))
    }

    pub fn publisher_kind(&self) -> &'static str {
        *self.publisher_kind.lock()
    }

    pub fn set_publisher_kind(&self, kind: &'static str) {
        *self.publisher_kind.lock() = kind;
    }

    pub fn read(&self) -> parking_lot::RwLockReadGuard<'_, State> {
        self.state.read()
    }

    /// The playlist for the current state, rendered once per change however many viewers ask.
    pub fn rendered(&self) -> Arc<Rendered> {
        let st = self.state.read();
        // Read under the state lock: every change bumps the version while holding the write
        // lock, so (version, state) are consistent here.
        let version = *self.version.borrow();
        let mut cache = self.rendered.lock();
        if let Some((v, r)) = cache.as_ref()
            && *v == version
        {
            return r.clone();
        }
        let r = Arc::new(Rendered::new(&st, &self.cfg));
        *cache = Some((version, r.clone()));
        r
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Changes when a segment completes or the stream ends.
    pub fn subscribe_completed(&self) -> watch::Receiver<(Option<u64>, bool)> {
        self.completed.subscribe()
    }

    /// Applies `change` under the write lock and wakes waiters if it says something changed.
    /// The version is bumped with the lock held, so that a reader under the read lock always
    /// sees a version that matches the state (the rendering cache relies on it).
    fn change<T>(&self, change: impl FnOnce(&mut State) -> (T, bool)) -> T {
        let mut st = self.state.write();
        let (out, changed) = change(&mut st);
        if changed {
            self.version.send_modify(|v| *v += 1);
            let done = (
                st.segments.iter().rev().find(|s| s.complete).map(|s| s.msn),
                st.ended,
            );
            self.completed.send_if_modified(|c| {
                let new = *c != done;
                *c = done;
                new
            });
        }
        out
    }

    /// Adds an init segment; returns its id. An identical init is not added twice.
    pub fn set_init(&self, data: Bytes, codecs: String, resolution: Option<(u32, u32)>) -> u32 {
        self.change(|st| st.set_init(data, codecs, resolution))
    }

    /// Edges insert the origin's init under the origin's id.
    pub fn put_init(&self, id: u32, data: Bytes, codecs: String, resolution: Option<(u32, u32)>) {
        self.change(|st| ((), st.put_init(id, data, codecs, resolution)))
    }

    /// Origin side: appends a part from the packager, opening a new segment when asked.
    /// Returns the (msn, index) the part got.
    pub fn push_part(
        &self,
        data: Bytes,
        duration: Duration,
        independent: bool,
        starts_segment: bool,
        discontinuity: bool,
    ) -> (u64, usize) {
        let cut = CutPart {
            data,
            duration,
            independent,
            starts_segment,
            discontinuity,
        };
        let now = Now::system();
        self.change(|st| st.push_cut(&self.cfg, self.msn_base, cut, now))
    }

    /// Inserts a part at (msn, index); see [`State::insert_part`].
    pub fn insert_part(&self, p: PartIn) -> bool {
        let now = Now::system();
        self.change(|st| {
            let ok = st.insert_part(&self.cfg, p, now);
            (ok, ok)
        })
    }

    /// Edge side: a whole segment from the origin, for segments older than the part window.
    pub fn insert_full_segment(
        &self,
        msn: u64,
        data: Bytes,
        duration: f64,
        pdt_ms: u64,
        discontinuity: bool,
        init_id: u32,
    ) -> bool {
        let now = Now::system();
        self.change(|st| {
            let ok = st.insert_full_segment(
                &self.cfg,
                msn,
                data,
                duration,
                pdt_ms,
                discontinuity,
                init_id,
                now,
            );
            (ok, ok)
        })
    }

    /// The publisher left (or the origin link of an edge went away).
    pub fn publisher_left(&self) {
        self.change(|st| (st.publisher_left(Now::system()), true))
    }

    pub fn publisher_joined(&self) {
        self.change(|st| (st.publisher_joined(), false))
    }

    /// Ends the stream: the playlist gets ENDLIST and blocked requests return at once.
    pub fn end(&self) {
        self.change(|st| ((), st.end(Now::system())))
    }

    /// See [`State::adopt_origin_header`].
    pub fn adopt_origin_header(&self, target: u64, part_target: f64, discontinuity_seq: u64) {
        self.change(|st| {
            (
                (),
                st.adopt_origin_header(target, part_target, discontinuity_seq),
            )
        })
    }

    pub fn is_ended(&self) -> bool {
        self.state.read().ended
    }

    /// Whether any part was ever packaged.
    pub fn has_parts(&self) -> bool {
        self.state.read().last_part().is_some()
    }

    /// Waits until `ready(state)` holds, the stream ends, or `timeout` passes. Returns whether
    /// the condition holds.
    pub async fn wait_for(&self, timeout: Duration, ready: impl Fn(&State) -> bool) -> bool {
        let mut rx = self.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            {
                let st = self.state.read();
                if ready(&st) {
                    return true;
                }
                if st.ended {
                    return false;
                }
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => return ready(&self.state.read()),
            }
        }
    }
}

/// Requests parked at once (blocking reloads, preload-hinted parts), bounded: each holds a
/// task, a timer and a connection, and a client can open as many as it likes.
pub struct ParkedRequests {
    now: AtomicUsize,
    max: usize,
}

pub struct ParkedSlot<'a>(&'a AtomicUsize);

impl Drop for ParkedSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ParkedRequests {
    pub fn new(max: usize) -> Self {
        Self {
            now: AtomicUsize::new(0),
            max,
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    pub fn count(&self) -> usize {
        self.now.load(Ordering::Relaxed)
    }

    pub fn enter(&self) -> Option<ParkedSlot<'_>> {
        if self.now.fetch_add(1, Ordering::Relaxed) >= self.max {
            self.now.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(ParkedSlot(&self.now))
    }
}

/// Role of a stream on this node.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A publisher is (or was, within the grace) connected here.
    Origin,
    /// Mirrored; `origin_node` publishes it (we may pull it through another edge).
    Edge { origin_node: String },
}

pub struct StreamEntry {
    pub stream: Arc<HlsStream>,
    pub source: Source,
}

/// Every stream this node serves, by path (`live/<name>`).
#[derive(Default)]
pub struct StreamStore {
    streams: DashMap<String, Arc<StreamEntry>>,
}

impl StreamStore {
    pub fn get(&self, path: &str) -> Option<Arc<StreamEntry>> {
        self.streams.get(path).map(|e| e.clone())
    }

    /// Installs a fresh stream object at `path`, replacing an ended one.
    pub fn create(&self, path: &str, cfg: HlsConfig, source: Source) -> Arc<StreamEntry> {
        let e = Arc::new(StreamEntry {
            stream: Arc::new(HlsStream::new(path.into(), cfg)),
            source,
        });
        self.streams.insert(path.to_string(), e.clone());
        e
    }

    /// The stream of rendition `track` of `main`'s class, made if it is not here yet (or ended).
    pub fn rendition(&self, main: &HlsStream, track: u8, source: Source) -> Arc<HlsStream> {
        if let Some(s) = main.rendition(track)
            && !s.is_ended()
        {
            return s;
        }
        let path = rendition_path(&main.path, track);
        let stream = Arc::new(HlsStream::rendition_of(path.clone(), main));
        self.streams.insert(
            path,
            Arc::new(StreamEntry {
                stream: stream.clone(),
                source,
            }),
        );
        main.add_rendition(track, stream.clone());
        stream
    }

    /// The classes: every stream but the renditions of a ladder (which are reached through
    /// their class).
    pub fn classes(&self) -> Vec<Arc<StreamEntry>> {
        self.streams
            .iter()
            .filter(|e| !is_rendition_path(e.key()))
            .map(|e| e.value().clone())
            .collect()
    }

    pub fn list(&self) -> Vec<Arc<StreamEntry>> {
        self.streams.iter().map(|e| e.value().clone()).collect()
    }

    /// Drops streams that ended more than `linger` ago.
    pub fn sweep(&self) {
        self.streams.retain(|_, e| {
            let st = e.stream.read();
            st.ended_at
                .is_none_or(|t| t.elapsed() <= e.stream.cfg.linger)
        });
    }
}

/// Where rendition `track` of the class at `path` is kept: `live/<name>/v<track>`, a path no
/// class can have (a stream name has no `/`). Track 0 is the class's own path.
pub fn rendition_path(path: &str, track: u8) -> String {
    if track == 0 {
        path.to_string()
    } else {
        format!("{path}/v{track}")
    }
}

pub fn is_rendition_path(path: &str) -> bool {
    path.matches('/').count() > 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(n: u8) -> Bytes {
        Bytes::from(vec![n; 10])
    }

    #[test]
    fn an_origin_numbers_segments_from_its_creation_time() {
        let s = HlsStream::new("live/x".into(), HlsConfig::default());
        let d = Duration::from_millis(200);
        let (b, _) = s.push_part(part(1), d, true, true, false);
        assert_eq!(b, s.msn_base);
        assert_eq!(s.push_part(part(2), d, false, false, false), (b, 1));
        assert_eq!(s.push_part(part(3), d, true, true, false), (b + 1, 0));
        assert!(s.read().segment(b).unwrap().complete);
    }

    #[test]
    fn the_recorders_signal_changes_per_segment_not_per_part() {
        let s = HlsStream::new("live/x".into(), HlsConfig::default());
        let mut rx = s.subscribe_completed();
        let d = Duration::from_millis(200);
        let (b, _) = s.push_part(part(1), d, true, true, false);
        s.push_part(part(2), d, false, false, false);
        // Parts of the open segment: nothing for the recorder yet.
        assert!(!rx.has_changed().unwrap());
        s.push_part(part(3), d, true, true, false);
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), (Some(b), false));
        s.push_part(part(4), d, false, false, false);
        assert!(!rx.has_changed().unwrap());
        s.end();
        assert_eq!(*rx.borrow_and_update(), (Some(b + 1), true));
    }

    #[tokio::test]
    async fn wait_for_wakes_on_new_part() {
        let s = Arc::new(HlsStream::new("live/x".into(), HlsConfig::default()));
        let s2 = s.clone();
        let waiter = tokio::spawn(async move {
            s2.wait_for(Duration::from_secs(5), |st| st.last_part().is_some())
                .await
        });
        tokio::task::yield_now().await;
        s.push_part(part(1), Duration::from_millis(200), true, true, false);
        assert!(waiter.await.unwrap());
        // Times out when nothing comes.
        assert!(
            !s.wait_for(Duration::from_millis(50), |st| st
                .last_part()
                .is_some_and(|p| p.1 == 1))
                .await
        );
    }
}
