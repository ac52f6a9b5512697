//! The LL-HLS state of one stream: init segments, segments and their parts, held as `Bytes` so
//! that serving is a reference-count bump, never a copy per viewer.
//!
//! The same state serves an origin (parts come from the packager) and an edge (parts come from
//! the origin over HTTP): both insert parts by (media sequence number, part index), so an edge
//! that copies the origin's numbers, durations and program-date-times renders the same
//! playlist. Pure: the time of each change is an argument ([`Now`]); locking and waking
//! blocked requests belong to the caller.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

/// The moment a change happens at, on both clocks the state keeps.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub at: Instant,
    pub unix_ms: u64,
}

impl Now {
    /// The system's clocks now.
    pub fn system() -> Self {
        Self {
            at: Instant::now(),
            unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        }
    }
}

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
            // Four segments of 1 s: the shortest playlist RFC 8216 allows for a target
            // duration of 1 (three target durations, plus the segment being filled), and what
            // a player that ignores parts needs for its HOLD-BACK of 3 s. Media lives in memory,
            // so every segment listed costs two held (the retention margin in `trim`).
            window: 4,
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
    /// When the first part arrived here.
    pub first_part_at: Instant,
}

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

/// A part as the packager cut it, before it has a place in the stream.
#[derive(Debug, Clone)]
pub struct CutPart {
    pub data: Bytes,
    pub duration: Duration,
    pub independent: bool,
    pub starts_segment: bool,
    /// A publisher came back (or the init changed): the segment it opens is a discontinuity.
    pub discontinuity: bool,
}

/// One part to insert.
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
    /// Segments dropped from the front that carried a discontinuity (for
    /// EXT-X-DISCONTINUITY-SEQUENCE).
    pub discontinuity_seq: u64,
    pub publisher_connected: bool,
    pub publisher_left_at: Option<Instant>,
}

impl State {
    /// `EXT-X-TARGETDURATION`: RFC 8216 asks that every EXTINF, *rounded to the nearest
    /// integer*, be at most the target. Rounding up instead made 1.033 s segments (a 1 s GOP at
    /// 30 fps) a target of 2, hence a HOLD-BACK of 6 s and blocking holds of 6 s, for nothing.
    pub fn target_duration(&self, cfg: &HlsConfig) -> u64 {
        self.max_segment
            .max(cfg.segment_target.as_secs_f64())
            .round()
            .max(1.0) as u64
    }

    /// `PART-TARGET`: parts are cut on frame boundaries, so one can run a frame past the
    /// configured target; PART-TARGET must still cover it.
    pub fn part_target(&self, cfg: &HlsConfig) -> f64 {
        let t = self.max_part.max(cfg.part_target.as_secs_f64());
        (t * 1000.0).ceil() / 1000.0
    }

    /// How long a blocking request may be held: three target durations, the spec's suggestion.
    pub fn hold_time(&self, cfg: &HlsConfig) -> Duration {
        Duration::from_secs(3 * self.target_duration(cfg))
    }

    pub fn last_msn(&self) -> Option<u64> {
        self.segments.back().map(|s| s.msn)
    }

    /// Media bytes this stream holds: its inits, and every segment of the window and of the
    /// retention margin (parts, or the whole segment an edge received). What the allocator
    /// holds beyond this is its own.
    pub fn held_bytes(&self) -> usize {
        let inits: usize = self.inits.iter().map(|(_, b)| b.len()).sum();
        let media: usize = self
            .segments
            .iter()
            .map(|s| {
                s.full.as_ref().map_or(0, Bytes::len)
                    + s.parts.iter().map(|p| p.data.len()).sum::<usize>()
            })
            .sum();
        inits + media
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

    /// The part after the newest one: the next index of an open segment, or the first part of
    /// the next segment once the newest is complete. `None` before any segment.
    pub fn next_part(&self) -> Option<(u64, usize)> {
        let s = self.segments.back()?;
        Some(if s.complete {
            (s.msn + 1, 0)
        } else {
            (s.msn, s.parts.len())
        })
    }

    /// Whether (msn, idx) may be the next part to appear: [`State::next_part`], or the first
    /// part of the next segment while the newest is still open (a keyframe may end it at any
    /// part). What a blocking part request may wait for.
    pub fn may_come_next(&self, msn: u64, idx: usize) -> bool {
        match self.segments.back() {
            Some(s) if s.complete => msn == s.msn + 1 && idx == 0,
            Some(s) => (msn == s.msn && idx == s.parts.len()) || (msn == s.msn + 1 && idx == 0),
            None => idx == 0,
        }
    }

    /// The part a playlist's preload hint names. A segment that has reached its target ends at
    /// the next keyframe, which with a GOP of about the segment target is the next part: hint
    /// the next segment's first part then, so players that prefetch hints (Shaka) do not ask
    /// for a part that never comes. Half a part of slack: part durations are whole
    /// milliseconds, a 1 s segment of five 200 ms parts may add up to 0.999 s.
    pub fn preload_hint(&self, cfg: &HlsConfig, part_target: f64) -> Option<(u64, usize)> {
        let last = self.segments.back()?;
        let full = last.duration + part_target / 2.0 >= cfg.segment_target.as_secs_f64();
        Some(if last.complete || full {
            (last.msn + 1, 0)
        } else {
            (last.msn, last.parts.len())
        })
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

    /// Adds an init segment; returns its id and whether anything changed (an identical init
    /// is not added twice).
    pub fn set_init(
        &mut self,
        data: Bytes,
        codecs: String,
        resolution: Option<(u32, u32)>,
    ) -> (u32, bool) {
        if let Some((id, b)) = self.inits.last()
            && *b == data
        {
            return (*id, false);
        }
        let id = self.inits.last().map(|(i, _)| i + 1).unwrap_or(0);
        self.insert_init(id, data, codecs, resolution);
        (id, true)
    }

    /// Edges insert the origin's init under the origin's id; false if it is there already.
    pub fn put_init(
        &mut self,
        id: u32,
        data: Bytes,
        codecs: String,
        resolution: Option<(u32, u32)>,
    ) -> bool {
        if self.init(id).is_some() {
            return false;
        }
        self.insert_init(id, data, codecs, resolution);
        true
    }

    fn insert_init(&mut self, id: u32, data: Bytes, codecs: String, res: Option<(u32, u32)>) {
        self.inits.push((id, data));
        self.codecs = codecs;
        self.resolution = res;
        // Keep the inits still referenced by the window, plus the newest.
        if self.inits.len() > 4 {
            let oldest_used = self.segments.front().map(|s| s.init_id).unwrap_or(id);
            self.inits.retain(|(i, _)| *i >= oldest_used || *i == id);
        }
    }

    /// Where a part from the packager goes: the next index of the open segment, or a new
    /// segment (numbered from `msn_base` for the very first one) when `starts_segment`, with
    /// its program-date-time.
    pub fn place_part(&self, msn_base: u64, part: CutPart, now: Now) -> PartIn {
        let CutPart {
            data,
            duration,
            independent,
            starts_segment,
            discontinuity,
        } = part;
        // The part's first sample arrived about one part duration ago.
        let wall_ms = now.unix_ms.saturating_sub(duration.as_millis() as u64);
        let init_id = self.current_init_id();
        let (msn, index, first, pdt_ms) = match self.segments.back() {
            Some(s) if !starts_segment && !s.complete => (s.msn, s.parts.len(), false, s.pdt_ms),
            Some(s) => {
                // PROGRAM-DATE-TIME follows the media: the previous segment's date plus its
                // duration. Dating each segment by its arrival instead made the dates disagree
                // with EXTINF by the publisher's jitter (±30 ms seen), and players that place
                // segments by date (Shaka) then saw gaps and overlaps. Only a discontinuity
                // re-anchors on the wall clock, and never backwards: re-anchoring whenever the
                // publisher's clock had drifted a second made a date go back by a second (a
                // segment at 42.530 with EXTINF 1.0, the next at 42.496) when the publisher ran
                // ahead, and rewinding and replay seek by these dates.
                let follows = s.pdt_ms + (s.duration * 1000.0).round() as u64;
                let pdt = if discontinuity {
                    wall_ms.max(follows)
                } else {
                    follows
                };
                (s.msn + 1, 0, false, pdt)
            }
            None => (msn_base, 0, true, wall_ms),
        };
        PartIn {
            msn,
            index,
            data,
            duration: duration.as_secs_f64(),
            independent,
            pdt_ms,
            // A discontinuity before the very first segment means nothing.
            discontinuity: discontinuity && !first,
            init_id,
        }
    }

    /// Origin side: places a part from the packager ([`State::place_part`]) and inserts it.
    /// Returns the (msn, index) it got and whether it went in.
    pub fn push_cut(
        &mut self,
        cfg: &HlsConfig,
        msn_base: u64,
        cut: CutPart,
        now: Now,
    ) -> ((u64, usize), bool) {
        let p = self.place_part(msn_base, cut, now);
        let at = (p.msn, p.index);
        (at, self.insert_part(cfg, p, now))
    }

    /// Inserts a part at (msn, index). Parts must arrive in order; a part that opens segment
    /// `msn` completes every older open segment. Out-of-order or duplicate parts are ignored
    /// (false).
    pub fn insert_part(&mut self, cfg: &HlsConfig, p: PartIn, now: Now) -> bool {
        if self.ended {
            // A new publisher after the end starts a fresh stream, not this one.
            return false;
        }
        match self.segments.back() {
            Some(s) if p.msn == s.msn && !s.complete && p.index == s.parts.len() => {}
            Some(s) if p.msn > s.msn && p.index == 0 => {}
            None if p.index == 0 => {}
            _ => return false,
        }
        if self.segments.back().is_some_and(|s| p.msn > s.msn) {
            self.complete_last();
        }
        self.max_part = self.max_part.max(p.duration);
        if p.index == 0 {
            self.segments.push_back(Segment {
                msn: p.msn,
                parts: Vec::with_capacity(8),
                full: None,
                duration: 0.0,
                pdt_ms: p.pdt_ms,
                discontinuity: p.discontinuity,
                init_id: p.init_id,
                complete: false,
                first_part_at: now.at,
            });
            self.trim(cfg);
        }
        let seg = self.segments.back_mut().expect("just ensured");
        seg.duration += p.duration;
        seg.parts.push(Part {
            data: p.data,
            duration: p.duration,
            independent: p.independent,
            created_ms: now.unix_ms,
        });
        let d = seg.duration;
        self.max_segment = self.max_segment.max(d);
        true
    }

    /// Edge side: a whole segment from the origin, for segments older than the part window.
    #[allow(clippy::too_many_arguments)]
    pub fn insert_full_segment(
        &mut self,
        cfg: &HlsConfig,
        msn: u64,
        data: Bytes,
        duration: f64,
        pdt_ms: u64,
        discontinuity: bool,
        init_id: u32,
        now: Now,
    ) -> bool {
        if self.segments.back().is_some_and(|s| s.msn >= msn) {
            return false;
        }
        self.complete_last();
        self.max_segment = self.max_segment.max(duration);
        self.segments.push_back(Segment {
            msn,
            parts: Vec::new(),
            full: Some(data),
            duration,
            pdt_ms,
            discontinuity,
            init_id,
            complete: true,
            first_part_at: now.at,
        });
        self.trim(cfg);
        true
    }

    fn complete_last(&mut self) {
        if let Some(s) = self.segments.back_mut() {
            s.complete = true;
        }
    }

    /// Drops segments beyond the window plus a retention margin: RFC 8216 (6.2.2) has a
    /// segment that left the playlist stay available for its own duration plus that of the
    /// longest playlist it was in, so a player that just read an older playlist can still
    /// fetch everything it lists. With segments of about the target that is `window + 1` more.
    fn trim(&mut self, cfg: &HlsConfig) {
        let keep = 2 * cfg.window + 1;
        while self.segments.len() > keep {
            if let Some(s) = self.segments.pop_front()
                && s.discontinuity
            {
                self.discontinuity_seq += 1;
            }
        }
    }

    /// The publisher left (or the origin link of an edge went away): completes the open
    /// segment so players get everything that arrived.
    pub fn publisher_left(&mut self, now: Now) {
        self.publisher_connected = false;
        self.publisher_left_at = Some(now.at);
        self.complete_last();
    }

    pub fn publisher_joined(&mut self) {
        self.publisher_connected = true;
        self.publisher_left_at = None;
    }

    /// Ends the stream (the playlist gets ENDLIST); false if it had ended already.
    pub fn end(&mut self, now: Now) -> bool {
        if self.ended {
            return false;
        }
        self.complete_last();
        self.ended = true;
        self.ended_at = Some(now.at);
        true
    }

    /// Edges adopt the origin's targets and discontinuity count, so that their playlists agree
    /// even where the origin saw segments the edge never did. Returns whether anything changed.
    pub fn adopt_origin_header(
        &mut self,
        target: u64,
        part_target: f64,
        discontinuity_seq: u64,
    ) -> bool {
        let before = (self.max_segment, self.max_part, self.discontinuity_seq);
        self.max_segment = self.max_segment.max(target as f64);
        self.max_part = self.max_part.max(part_target);
        if self.segments.is_empty() {
            self.discontinuity_seq = discontinuity_seq;
        }
        before != (self.max_segment, self.max_part, self.discontinuity_seq)
    }
}

/// The state with the origin's calls, for this crate's tests (the slave's `HlsStream` adds
/// the lock and the wake-ups).
#[cfg(test)]
pub(crate) struct TestStream {
    cfg: HlsConfig,
    st: std::cell::RefCell<State>,
}

#[cfg(test)]
impl TestStream {
    pub fn new(_path: String, cfg: HlsConfig) -> Self {
        Self {
            cfg,
            st: Default::default(),
        }
    }

    pub fn read(&self) -> std::cell::Ref<'_, State> {
        self.st.borrow()
    }

    pub fn set_init(&self, data: Bytes, codecs: String, res: Option<(u32, u32)>) -> u32 {
        self.st.borrow_mut().set_init(data, codecs, res).0
    }

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
        self.st
            .borrow_mut()
            .push_cut(&self.cfg, 1_000_000, cut, Now::system())
            .0
    }

    pub fn end(&self) {
        self.st.borrow_mut().end(Now::system());
    }

    pub fn publisher_left(&self) {
        self.st.borrow_mut().publisher_left(Now::system());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(n: u8) -> Bytes {
        Bytes::from(vec![n; 10])
    }

    fn push(
        st: &mut State,
        cfg: &HlsConfig,
        n: u8,
        starts: bool,
        disc: bool,
        now: Now,
    ) -> (u64, usize) {
        let cut = CutPart {
            data: part(n),
            duration: Duration::from_millis(200),
            independent: starts,
            starts_segment: starts,
            discontinuity: disc,
        };
        let p = st.place_part(1000, cut, now);
        let at = (p.msn, p.index);
        assert!(st.insert_part(cfg, p, now));
        at
    }

    #[test]
    fn parts_segments_and_completion() {
        let (cfg, now) = (HlsConfig::default(), Now::system());
        let mut st = State::default();
        st.set_init(
            Bytes::from_static(b"init"),
            "avc1.64001f".into(),
            Some((640, 360)),
        );
        let (b, _) = push(&mut st, &cfg, 1, true, false, now);
        assert_eq!(b, 1000);
        assert_eq!(push(&mut st, &cfg, 2, false, false, now), (b, 1));
        assert!(!st.segment(b).unwrap().complete);
        assert_eq!(st.next_part(), Some((b, 2)));
        assert!(st.may_come_next(b, 2) && st.may_come_next(b + 1, 0));
        assert!(!st.may_come_next(b, 3));
        assert_eq!(push(&mut st, &cfg, 3, true, false, now), (b + 1, 0));
        let seg0 = st.segment(b).unwrap();
        assert!(seg0.complete);
        assert_eq!(seg0.body().unwrap().len(), 20);
        assert!(seg0.full.is_none(), "media is held once, as parts");
        assert!((seg0.duration - 0.4).abs() < 1e-9);
        assert!(st.part_settled(b, 5)); // segment b completed with 2 parts
        assert!(!st.part_settled(b + 1, 1));
        assert!(st.end(now));
        assert_eq!(st.next_part(), Some((b + 2, 0)));
        assert!(!st.end(now), "ends once");
    }

    #[test]
    fn program_date_time_follows_the_media() {
        let cfg = HlsConfig::default();
        let t0 = Now::system();
        let later = |ms: u64| Now {
            at: t0.at + Duration::from_millis(ms),
            unix_ms: t0.unix_ms + ms,
        };
        let mut st = State::default();
        let (b, _) = push(&mut st, &cfg, 1, true, false, t0);
        push(&mut st, &cfg, 2, false, false, later(10));
        // Whatever the wall clock does between arrivals, the next date is the last one plus
        // the segment's duration: 0.4 s.
        push(&mut st, &cfg, 3, true, false, later(40));
        push(&mut st, &cfg, 4, true, true, later(5000));
        let pdt = |m| st.segment(m).unwrap().pdt_ms;
        assert_eq!(pdt(b + 1), pdt(b) + 400);
        // A discontinuity re-anchors on the wall clock: its first sample came one part ago.
        assert_eq!(pdt(b + 2), t0.unix_ms + 5000 - 200);
    }

    #[test]
    fn program_date_time_never_goes_back() {
        // Every segment of the test held at once.
        let cfg = HlsConfig {
            window: 7,
            ..Default::default()
        };
        let t0 = Now::system();
        let at = |ms: i64| Now {
            at: t0.at,
            unix_ms: (t0.unix_ms as i64 + ms) as u64,
        };
        let mut st = State::default();
        let (b, _) = push(&mut st, &cfg, 1, true, false, t0);
        // The publisher runs seconds ahead of the wall clock (a burst), then comes back with a
        // discontinuity while the wall clock is still behind the media: dates only go forward.
        for i in 0..8 {
            push(&mut st, &cfg, 2 + i, true, false, at(-3000));
        }
        push(&mut st, &cfg, 10, true, true, at(-2000));
        // Then far behind the wall clock: a discontinuity re-anchors forward.
        push(&mut st, &cfg, 11, true, true, at(60_000));
        let segs: Vec<_> = st.segments.iter().collect();
        for w in segs.windows(2) {
            let follows = w[0].pdt_ms + (w[0].duration * 1000.0).round() as u64;
            if w[1].discontinuity {
                assert!(
                    w[1].pdt_ms >= follows,
                    "a date went back at msn {}",
                    w[1].msn
                );
            } else {
                assert_eq!(
                    w[1].pdt_ms, follows,
                    "dates disagree with EXTINF at msn {}",
                    w[1].msn
                );
            }
        }
        assert_eq!(
            st.segments.back().unwrap().pdt_ms,
            t0.unix_ms + 60_000 - 200
        );
        assert!(st.segment(b).is_some());
    }

    #[test]
    fn target_duration_rounds_to_the_nearest_second() {
        let cfg = HlsConfig::default();
        let mut st = State::default();
        for (longest, target) in [(1.0, 1), (1.0333, 1), (1.49, 1), (1.5, 2), (2.2, 2)] {
            st.max_segment = longest;
            assert_eq!(st.target_duration(&cfg), target, "{longest}");
        }
        let long = HlsConfig {
            segment_target: Duration::from_secs(4),
            ..Default::default()
        };
        st.max_segment = 1.0;
        assert_eq!(st.target_duration(&long), 4);
    }

    #[test]
    fn out_of_order_parts_are_refused() {
        let (cfg, now) = (HlsConfig::default(), Now::system());
        let mut st = State::default();
        let p = |msn, index| PartIn {
            msn,
            index,
            data: part(1),
            duration: 0.2,
            independent: true,
            pdt_ms: 7,
            discontinuity: false,
            init_id: 0,
        };
        assert!(!st.insert_part(&cfg, p(0, 1), now));
        assert!(st.insert_part(&cfg, p(5, 0), now));
        assert!(!st.insert_part(&cfg, p(5, 0), now));
        assert_eq!(st.last_part(), Some((5, 0)));
    }

    #[test]
    fn window_is_trimmed_and_dropped_segments_stay_for_a_playlist_length() {
        let cfg = HlsConfig {
            window: 4,
            ..Default::default()
        };
        let now = Now::system();
        let mut st = State::default();
        for i in 0..50u64 {
            let cut = CutPart {
                data: part(0),
                duration: Duration::from_secs(1),
                independent: true,
                starts_segment: true,
                discontinuity: false,
            };
            let p = st.place_part(7, cut, now);
            st.insert_part(&cfg, p, now);
            // The playlist lists the newest `window`; everything that left it within the
            // last `window + 1` segments is still held (RFC 8216 6.2.2).
            let held = st.segments.len() as u64;
            assert_eq!(held, (i + 1).min(9), "after {} segments", i + 1);
        }
        assert_eq!(st.segments.front().map(|s| s.msn), Some(7 + 49 - 8));
        assert_eq!(st.last_msn(), Some(7 + 49));
        // Listed: three whole segments and the one being filled.
        let text = super::super::playlist::render(&st, &cfg, None);
        assert!(text.contains(&format!("#EXT-X-MEDIA-SEQUENCE:{}\n", 7 + 46)));
        assert_eq!(text.matches("#EXTINF").count(), 3);
    }
}
