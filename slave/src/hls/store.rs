//! Segments and parts of every stream, held in memory as `Bytes` so that a response is a
//! reference-count bump, never a copy per viewer.
//!
//! The same structure serves an origin (parts come from the packager) and an edge (parts come
//! from the origin over HTTP): both insert parts by (media sequence number, part index), so an
//! edge that copies the origin's numbers, durations and program-date-times renders the same
//! playlist.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use parking_lot::RwLock;
use tokio::sync::watch;

/// How far a stream's PROGRAM-DATE-TIME may run from the wall clock before it is re-anchored
/// (a publisher whose clock runs slow or fast; a real encoder drifts far less).
const PDT_MAX_DRIFT_MS: u64 = 1_000;

#[derive(Debug, Clone)]
pub struct HlsConfig {
    pub part_target: Duration,
    pub segment_target: Duration,
    /// Segments listed in the playlist.
    pub window: usize,
    /// How long a publisher may be gone before the stream ends.
    pub grace: Duration,
    /// How long an ended stream stays around (so players read ENDLIST) before it is dropped.
    pub linger: Duration,
}

impl Default for HlsConfig {
    fn default() -> Self {
        Self {
            part_target: Duration::from_millis(200),
            segment_target: Duration::from_secs(1),
            window: 7,
            grace: Duration::from_secs(10),
            linger: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Part {
    pub data: Bytes,
    pub duration: f64,
    pub independent: bool,
    /// Unix ms when the part became servable here (edges compare it to the origin's).
    pub created_ms: u64,
}

/// What a segment is made of, for serving without copying.
#[derive(Debug, Clone)]
pub enum SegmentBody {
    Whole(Bytes),
    Parts(Vec<Bytes>),
}

impl SegmentBody {
    pub fn len(&self) -> usize {
        match self {
            SegmentBody::Whole(b) => b.len(),
            SegmentBody::Parts(p) => p.iter().map(Bytes::len).sum(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, Clone)]
pub struct Segment {
    pub msn: u64,
    pub parts: Vec<Part>,
    /// Whole-segment bytes, only for a segment an edge received whole (it joined late). A
    /// segment built from parts is served as its parts back to back, so media is held once.
    pub full: Option<Bytes>,
    pub duration: f64,
    /// Wall-clock of the first sample, as written in `EXT-X-PROGRAM-DATE-TIME`.
    pub pdt_ms: u64,
    pub discontinuity: bool,
    pub init_id: u32,
    pub complete: bool,
    /// When the first part arrived here, for the publish → part latency metric.
    pub first_part_at: Instant,
}

/// One part to insert.
impl Segment {
    /// The segment's bytes (reference-counted, not copied), once it is complete.
    pub fn body(&self) -> Option<SegmentBody> {
        if !self.complete {
            return None;
        }
        Some(match &self.full {
            Some(b) => SegmentBody::Whole(b.clone()),
            None => SegmentBody::Parts(self.parts.iter().map(|p| p.data.clone()).collect()),
        })
    }
}

#[derive(Debug, Clone)]
pub struct PartIn {
    pub msn: u64,
    pub index: usize,
    pub data: Bytes,
    pub duration: f64,
    pub independent: bool,
    /// Only read when this part opens a segment.
    pub pdt_ms: u64,
    pub discontinuity: bool,
    pub init_id: u32,
}

#[derive(Debug, Default)]
pub struct State {
    pub inits: Vec<(u32, Bytes)>,
    pub codecs: String,
    pub resolution: Option<(u32, u32)>,
    pub segments: VecDeque<Segment>,
    pub ended: bool,
    pub ended_at: Option<Instant>,
    /// Largest part duration seen: PART-TARGET must cover every part.
    pub max_part: f64,
    /// Largest segment duration seen: TARGETDURATION must cover every segment.
    pub max_segment: f64,
    pub discontinuity_seq: u64,
    /// Segments dropped from the front that carried a discontinuity (for
    /// EXT-X-DISCONTINUITY-SEQUENCE).
    pub publisher_connected: bool,
    pub publisher_left_at: Option<Instant>,
}

impl State {
    pub fn last_msn(&self) -> Option<u64> {
        self.segments.back().map(|s| s.msn)
    }
    pub fn segment(&self, msn: u64) -> Option<&Segment> {
        let first = self.segments.front()?.msn;
        let i = msn.checked_sub(first)? as usize;
        self.segments.get(i)
    }
    /// (msn, index) of the newest part, if any.
    pub fn last_part(&self) -> Option<(u64, usize)> {
        let s = self.segments.back()?;
        (!s.parts.is_empty()).then(|| (s.msn, s.parts.len() - 1))
    }
    /// Whether part `idx` of segment `msn` exists, or can never exist because the segment
    /// completed with fewer parts.
    pub fn part_settled(&self, msn: u64, idx: usize) -> bool {
        match self.segment(msn) {
            Some(s) => s.parts.len() > idx || s.complete,
            None => self.last_msn().is_some_and(|l| l > msn),
        }
    }
    pub fn init(&self, id: u32) -> Option<&Bytes> {
        self.inits.iter().find(|(i, _)| *i == id).map(|(_, b)| b)
    }
    pub fn current_init_id(&self) -> u32 {
        self.inits.last().map(|(i, _)| *i).unwrap_or(0)
    }
}

pub struct HlsStream {
    pub path: String,
    pub cfg: HlsConfig,
    state: RwLock<State>,
    /// Bumped on every change; blocked playlist and part requests wait on it.
    version: watch::Sender<u64>,
    pub created: Instant,
    /// First media sequence number of an origin stream: the creation time in seconds, so a
    /// re-published path never reuses a URI that a cache may hold as immutable.
    msn_base: u64,
    /// The last rendering and the version it was made at.
    rendered: parking_lot::Mutex<Option<(u64, Arc<super::playlist::Rendered>)>>,
}

impl HlsStream {
    pub fn new(path: String, cfg: HlsConfig) -> Self {
        Self {
            path,
            cfg,
            state: RwLock::new(State::default()),
            version: watch::channel(0).0,
            created: Instant::now(),
            msn_base: common::now_unix(),
            rendered: parking_lot::Mutex::new(None),
        }
    }

    pub fn read(&self) -> parking_lot::RwLockReadGuard<'_, State> {
        self.state.read()
    }

    /// The playlist for the current state, rendered once per change however many viewers ask.
    pub fn rendered(&self) -> Arc<super::playlist::Rendered> {
        let st = self.state.read();
        // Read under the state lock: every change bumps the version while holding the write
        // lock's effects, so (version, state) are consistent here.
        let version = *self.version.borrow();
        let mut cache = self.rendered.lock();
        if let Some((v, r)) = cache.as_ref()
            && *v == version
        {
            return r.clone();
        }
        let r = Arc::new(super::playlist::Rendered::new(&st, &self.cfg));
        *cache = Some((version, r.clone()));
        r
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Called with the state's write lock held, so that a reader under the read lock always
    /// sees a version that matches the state (the rendering cache relies on it).
    fn bump(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    /// Adds an init segment; returns its id. An identical init is not added twice.
    pub fn set_init(&self, data: Bytes, codecs: String, resolution: Option<(u32, u32)>) -> u32 {
        let mut st = self.state.write();
        if let Some((id, b)) = st.inits.last()
            && *b == data
        {
            return *id;
        }
        let id = st.inits.last().map(|(i, _)| i + 1).unwrap_or(0);
        self.insert_init_locked(&mut st, id, data, codecs, resolution);
        self.bump();
        drop(st);
        id
    }

    /// Edges insert the origin's init under the origin's id.
    pub fn put_init(&self, id: u32, data: Bytes, codecs: String, resolution: Option<(u32, u32)>) {
        let mut st = self.state.write();
        if st.init(id).is_some() {
            return;
        }
        self.insert_init_locked(&mut st, id, data, codecs, resolution);
        self.bump();
        drop(st);
    }

    fn insert_init_locked(
        &self,
        st: &mut State,
        id: u32,
        data: Bytes,
        codecs: String,
        resolution: Option<(u32, u32)>,
    ) {
        st.inits.push((id, data));
        st.codecs = codecs;
        st.resolution = resolution;
        // Keep the inits still referenced by the window, plus the newest.
        if st.inits.len() > 4 {
            let oldest_used = st.segments.front().map(|s| s.init_id).unwrap_or(id);
            st.inits.retain(|(i, _)| *i >= oldest_used || *i == id);
        }
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
        // The part's first sample arrived about one part duration ago.
        let wall_ms = common::now_unix_ms().saturating_sub(duration.as_millis() as u64);
        let (msn, index, init_id, first, pdt_ms) = {
            let st = self.state.read();
            let init_id = st.current_init_id();
            match st.segments.back() {
                Some(s) if !starts_segment && !s.complete => {
                    (s.msn, s.parts.len(), init_id, false, s.pdt_ms)
                }
                Some(s) => {
                    // PROGRAM-DATE-TIME follows the media: the previous segment's date plus
                    // its duration. Dating each segment by its arrival instead made the dates
                    // disagree with EXTINF by the publisher's jitter (±30 ms seen), and players
                    // that place segments by date (Shaka) then saw gaps and overlaps. Re-anchor
                    // at a discontinuity, or once the publisher's clock has drifted too far.
                    let follows = s.pdt_ms + (s.duration * 1000.0).round() as u64;
                    let pdt = if discontinuity || follows.abs_diff(wall_ms) > PDT_MAX_DRIFT_MS {
                        wall_ms
                    } else {
                        follows
                    };
                    (s.msn + 1, 0, init_id, false, pdt)
                }
                None => (self.msn_base, 0, init_id, true, wall_ms),
            }
        };
        // A discontinuity before the very first segment means nothing.
        let discontinuity = discontinuity && !first;
        self.insert_part(PartIn {
            msn,
            index,
            data,
            duration: duration.as_secs_f64(),
            independent,
            pdt_ms,
            discontinuity,
            init_id,
        });
        (msn, index)
    }

    /// Inserts a part at (msn, index). Parts must arrive in order; a part that opens segment
    /// `msn` completes every older open segment. Out-of-order or duplicate parts are ignored.
    pub fn insert_part(&self, p: PartIn) -> bool {
        let mut st = self.state.write();
        if st.ended {
            // A new publisher after the end starts a fresh stream object, not this one.
            return false;
        }
        match st.segments.back() {
            Some(s) if p.msn == s.msn && !s.complete && p.index == s.parts.len() => {}
            Some(s) if p.msn > s.msn && p.index == 0 => {}
            None if p.index == 0 => {}
            _ => return false,
        }
        if st.segments.back().is_some_and(|s| p.msn > s.msn) {
            self.complete_last(&mut st);
        }
        st.max_part = st.max_part.max(p.duration);
        if p.index == 0 {
            st.segments.push_back(Segment {
                msn: p.msn,
                parts: Vec::with_capacity(8),
                full: None,
                duration: 0.0,
                pdt_ms: p.pdt_ms,
                discontinuity: p.discontinuity,
                init_id: p.init_id,
                complete: false,
                first_part_at: Instant::now(),
            });
            self.trim(&mut st);
        }
        let seg = st.segments.back_mut().expect("just ensured");
        seg.duration += p.duration;
        seg.parts.push(Part {
            data: p.data,
            duration: p.duration,
            independent: p.independent,
            created_ms: common::now_unix_ms(),
        });
        let d = seg.duration;
        st.max_segment = st.max_segment.max(d);
        self.bump();
        drop(st);
        true
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
        let mut st = self.state.write();
        if st.segments.back().is_some_and(|s| s.msn >= msn) {
            return false;
        }
        self.complete_last(&mut st);
        st.max_segment = st.max_segment.max(duration);
        st.segments.push_back(Segment {
            msn,
            parts: Vec::new(),
            full: Some(data),
            duration,
            pdt_ms,
            discontinuity,
            init_id,
            complete: true,
            first_part_at: Instant::now(),
        });
        self.trim(&mut st);
        self.bump();
        drop(st);
        true
    }

    fn complete_last(&self, st: &mut State) {
        if let Some(s) = st.segments.back_mut()
            && !s.complete
        {
            s.complete = true;
        }
    }

    /// Drops segments beyond the window plus a retention margin of three target durations,
    /// so that a player that just read an older playlist can still fetch what it lists.
    fn trim(&self, st: &mut State) {
        let target = st
            .max_segment
            .max(self.cfg.segment_target.as_secs_f64())
            .max(0.1);
        let keep_extra =
            (3.0 * target / self.cfg.segment_target.as_secs_f64().max(0.1)).ceil() as usize + 1;
        while st.segments.len() > self.cfg.window + keep_extra {
            if let Some(s) = st.segments.pop_front()
                && s.discontinuity
            {
                st.discontinuity_seq += 1;
            }
        }
    }

    /// The publisher left (or the origin link of an edge went away): completes the open
    /// segment so players get everything that arrived.
    pub fn publisher_left(&self) {
        let mut st = self.state.write();
        st.publisher_connected = false;
        st.publisher_left_at = Some(Instant::now());
        self.complete_last(&mut st);
        self.bump();
        drop(st);
    }

    pub fn publisher_joined(&self) {
        let mut st = self.state.write();
        st.publisher_connected = true;
        st.publisher_left_at = None;
    }

    /// Ends the stream: the playlist gets ENDLIST and blocked requests return at once.
    pub fn end(&self) {
        let mut st = self.state.write();
        if st.ended {
            return;
        }
        self.complete_last(&mut st);
        st.ended = true;
        st.ended_at = Some(Instant::now());
        self.bump();
        drop(st);
    }

    /// Edges adopt the origin's targets and discontinuity count, so that their playlists agree
    /// even where the origin saw segments the edge never did.
    pub fn adopt_origin_header(&self, target: u64, part_target: f64, discontinuity_seq: u64) {
        let mut st = self.state.write();
        let before = (st.max_segment, st.max_part, st.discontinuity_seq);
        st.max_segment = st.max_segment.max(target as f64);
        st.max_part = st.max_part.max(part_target);
        if st.segments.is_empty() {
            st.discontinuity_seq = discontinuity_seq;
        }
        if before != (st.max_segment, st.max_part, st.discontinuity_seq) {
            self.bump();
        }
    }

    pub fn is_ended(&self) -> bool {
        self.state.read().ended
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

/// Role of a stream on this node.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A publisher is (or was, within the grace) connected here.
    Origin,
    /// Mirrored from the node at `upstream`.
    Edge { upstream_node: String },
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

    pub fn remove_if_same(&self, path: &str, stream: &Arc<HlsStream>) {
        self.streams
            .remove_if(path, |_, e| Arc::ptr_eq(&e.stream, stream));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn part(n: u8) -> Bytes {
        Bytes::from(vec![n; 10])
    }

    #[test]
    fn parts_segments_and_completion() {
        let s = HlsStream::new("live/x".into(), HlsConfig::default());
        s.set_init(
            Bytes::from_static(b"init"),
            "avc1.64001f".into(),
            Some((640, 360)),
        );
        let d = Duration::from_millis(200);
        let (b, _) = s.push_part(part(1), d, true, true, false);
        assert_eq!(s.push_part(part(2), d, false, false, false), (b, 1));
        assert!(!s.read().segment(b).unwrap().complete);
        assert_eq!(s.push_part(part(3), d, true, true, false), (b + 1, 0));
        let st = s.read();
        let seg0 = st.segment(b).unwrap();
        assert!(seg0.complete);
        assert_eq!(seg0.body().unwrap().len(), 20);
        assert!(seg0.full.is_none(), "media is held once, as parts");
        assert!((seg0.duration - 0.4).abs() < 1e-9);
        assert!(st.part_settled(b, 5)); // segment b completed with 2 parts
        assert!(!st.part_settled(b + 1, 1));
    }

    #[test]
    fn program_date_time_follows_the_media() {
        let s = HlsStream::new("live/x".into(), HlsConfig::default());
        let d = Duration::from_millis(200);
        let (b, _) = s.push_part(part(1), d, true, true, false);
        s.push_part(part(2), d, false, false, false);
        // Whatever the wall clock does between arrivals, the next date is the last one plus
        // the segment's duration: 0.4 s.
        std::thread::sleep(Duration::from_millis(30));
        s.push_part(part(3), d, true, true, false);
        let before = common::now_unix_ms();
        s.push_part(part(4), d, true, true, true);
        let after = common::now_unix_ms();
        let st = s.read();
        let pdt = |m| st.segment(m).unwrap().pdt_ms;
        assert_eq!(pdt(b + 1), pdt(b) + 400);
        // A discontinuity re-anchors on the wall clock: its first sample came one part ago
        // (here the parts came faster than real time, so the media would say later).
        assert_ne!(pdt(b + 2), pdt(b + 1) + 200);
        assert!((before - 200..=after - 200).contains(&pdt(b + 2)));
    }

    #[test]
    fn out_of_order_parts_are_refused() {
        let s = HlsStream::new("live/x".into(), HlsConfig::default());
        assert!(!s.insert_part(PartIn {
            msn: 0,
            index: 1,
            data: part(1),
            duration: 0.2,
            independent: true,
            pdt_ms: 0,
            discontinuity: false,
            init_id: 0
        }));
        assert!(s.insert_part(PartIn {
            msn: 5,
            index: 0,
            data: part(1),
            duration: 0.2,
            independent: true,
            pdt_ms: 7,
            discontinuity: false,
            init_id: 0
        }));
        assert!(!s.insert_part(PartIn {
            msn: 5,
            index: 0,
            data: part(1),
            duration: 0.2,
            independent: true,
            pdt_ms: 7,
            discontinuity: false,
            init_id: 0
        }));
        assert_eq!(s.read().last_part(), Some((5, 0)));
    }

    #[test]
    fn window_is_trimmed() {
        let cfg = HlsConfig {
            window: 3,
            ..Default::default()
        };
        let s = HlsStream::new("live/x".into(), cfg);
        for _ in 0..50 {
            s.push_part(part(0), Duration::from_secs(1), true, true, false);
        }
        let st = s.read();
        assert!(st.segments.len() <= 3 + 4);
        assert_eq!(st.last_msn(), Some(s.msn_base + 49));
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
