//! A stream's frames as they arrive, beside its LL-HLS parts: what WebRTC viewers and edges'
//! frame links read. Holds the decoder configurations and the frames since the latest
//! keyframe, so that a newcomer starts with a picture at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use media::frames::{TapItem, VideoFrame};
use parking_lot::Mutex;
use tokio::sync::broadcast;

/// Items in flight to one subscriber before it is told it lagged (about 4 s of 30 fps video
/// with its audio).
const CHANNEL: usize = 512;
/// Bounds on what the latest GOP may hold; a publisher that never sends a keyframe gets no
/// cache past them, not unbounded memory.
const MAX_GOP_ITEMS: usize = 600;
const MAX_GOP_BYTES: usize = 16 << 20;

#[derive(Default)]
struct Latest {
    video_config: Option<Arc<TapItem>>,
    audio_config: Option<Arc<TapItem>>,
    /// Video frames from the latest keyframe on (no audio: a newcomer hears from now).
    gop: Vec<Arc<TapItem>>,
    gop_bytes: usize,
    /// How many of `gop`'s first frames now point into parts (`share_with_part`).
    shared: usize,
}

pub struct FrameFeed {
    tx: broadcast::Sender<Arc<TapItem>>,
    latest: Mutex<Latest>,
    bframes: AtomicBool,
    /// Unix ms of the last item: whether frames are flowing here now.
    last_ms: AtomicU64,
    /// Where a mirrored stream's frames come from (the edge's upstream), and whether the link
    /// to it runs (`frame_link`).
    pub upstream: std::sync::OnceLock<String>,
    pub linked: AtomicBool,
}

impl Default for FrameFeed {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(CHANNEL).0,
            latest: Mutex::default(),
            bframes: AtomicBool::new(false),
            last_ms: AtomicU64::new(0),
            upstream: Default::default(),
            linked: AtomicBool::new(false),
        }
    }
}

impl FrameFeed {
    pub fn push(&self, item: TapItem) {
        let item = Arc::new(item);
        {
            let mut l = self.latest.lock();
            match &*item {
                TapItem::VideoConfig(_) => {
                    // A new encoder configuration (a publisher back within the grace period,
                    // perhaps with B-frames now off): judged again from its own frames.
                    self.bframes.store(false, Ordering::Relaxed);
                    l.video_config = Some(item.clone());
                    l.gop.clear();
                    l.gop_bytes = 0;
                    l.shared = 0;
                }
                TapItem::AudioConfig(_) => l.audio_config = Some(item.clone()),
                TapItem::Video(v) => {
                    if v.cts_ms != 0 && !self.bframes.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            "a stream's encoder uses B-frames: WebRTC playback is refused for it (LL-HLS plays it)"
                        );
                    }
                    if v.keyframe {
                        l.gop.clear();
                        l.gop_bytes = 0;
                        l.shared = 0;
                    }
                    if (v.keyframe || !l.gop.is_empty())
                        && l.gop.len() < MAX_GOP_ITEMS
                        && l.gop_bytes + v.data.len() <= MAX_GOP_BYTES
                    {
                        l.gop_bytes += v.data.len();
                        l.gop.push(item.clone());
                    } else if !v.keyframe {
                        // Past the bounds the cache no longer starts a decoder: drop it whole.
                        l.gop.clear();
                        l.gop_bytes = 0;
                        l.shared = 0;
                    }
                }
                TapItem::Audio(_) => {}
            }
            // Sent under the lock, so that a subscriber's snapshot and its channel never
            // miss or repeat an item between them.
            let _ = self.tx.send(item);
        }
        self.last_ms.store(common::now_unix_ms(), Ordering::Relaxed);
    }

    /// Points the cached GOP's frames at their copies in `part`, a part just cut from them, so
    /// that the GOP and the playlist window hold the media once: the frames' own buffers (the
    /// RTMP messages they came in) are then freed. A part's mdat holds its video samples first,
    /// as sent and in order (`media::cmaf::samples_start`); a frame is shared only if its bytes
    /// are found there, so anything else (another layout, a frame the packager changed) leaves
    /// the GOP as it was. That check reads each video byte once more, once per part.
    pub fn share_with_part(&self, part: &Bytes) {
        let Some(mut at) = media::cmaf::samples_start(part) else {
            return;
        };
        let mut l = self.latest.lock();
        let l = &mut *l;
        while let Some(item) = l.gop.get(l.shared) {
            let TapItem::Video(v) = &**item else { break };
            let end = at + v.data.len();
            if part.get(at..end) != Some(&v.data[..]) {
                break;
            }
            let shared = VideoFrame {
                data: part.slice(at..end),
                ..v.clone()
            };
            l.gop[l.shared] = Arc::new(TapItem::Video(shared));
            l.shared += 1;
            at = end;
        }
    }

    /// What a newcomer starts with (configurations, then the latest GOP) and the channel of
    /// everything after it.
    pub fn subscribe(&self) -> (Vec<Arc<TapItem>>, broadcast::Receiver<Arc<TapItem>>) {
        let l = self.latest.lock();
        let mut start: Vec<_> = l
            .video_config
            .iter()
            .chain(l.audio_config.iter())
            .cloned()
            .collect();
        start.extend(l.gop.iter().cloned());
        (start, self.tx.subscribe())
    }

    pub fn set_bframes(&self, yes: bool) {
        self.bframes.store(yes, Ordering::Relaxed);
    }

    /// The encoder reorders frames: no browser plays this stream over WebRTC.
    pub fn has_bframes(&self) -> bool {
        self.bframes.load(Ordering::Relaxed)
    }

    /// Frames arrived within the last `ms`.
    pub fn flowing(&self, ms: u64) -> bool {
        common::now_unix_ms().saturating_sub(self.last_ms.load(Ordering::Relaxed)) <= ms
    }

    /// Media bytes of the latest GOP kept for newcomers: (held by it alone, shared with parts).
    pub fn gop_bytes(&self) -> (usize, usize) {
        let l = self.latest.lock();
        let shared: usize = l.gop[..l.shared]
            .iter()
            .map(|i| match &**i {
                TapItem::Video(v) => v.data.len(),
                _ => 0,
            })
            .sum();
        (l.gop_bytes - shared, shared)
    }

    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use media::frames::{AudioFrame, VideoFrame};

    fn video(ts: u64, key: bool) -> TapItem {
        TapItem::Video(VideoFrame {
            dts_ms: ts,
            cts_ms: 0,
            keyframe: key,
            data: Bytes::from_static(b"au"),
        })
    }

    #[test]
    fn a_newcomer_starts_at_the_latest_keyframe_with_the_configs() {
        let f = FrameFeed::default();
        f.push(TapItem::VideoConfig(Bytes::from_static(b"avcC")));
        f.push(TapItem::AudioConfig(Bytes::from_static(&[0x12, 0x10])));
        f.push(video(0, true));
        f.push(video(40, false));
        f.push(video(80, true));
        f.push(TapItem::Audio(AudioFrame {
            pts_ms: 80,
            data: Bytes::from_static(b"a"),
        }));
        f.push(video(120, false));
        let (start, mut rx) = f.subscribe();
        let times: Vec<_> = start
            .iter()
            .filter_map(|i| match &**i {
                TapItem::Video(v) => Some(v.dts_ms),
                _ => None,
            })
            .collect();
        assert_eq!(times, [80, 120]);
        assert!(matches!(*start[0], TapItem::VideoConfig(_)));
        assert!(matches!(*start[1], TapItem::AudioConfig(_)));
        f.push(video(160, false));
        assert!(matches!(&*rx.try_recv().unwrap(), TapItem::Video(v) if v.dts_ms == 160));
        assert!(f.flowing(1000));
    }

    #[test]
    fn bframes_are_judged_again_after_a_new_encoder_config() {
        let f = FrameFeed::default();
        f.push(TapItem::VideoConfig(Bytes::from_static(b"avcC")));
        f.push(TapItem::Video(VideoFrame {
            dts_ms: 0,
            cts_ms: 66,
            keyframe: true,
            data: Bytes::from_static(b"au"),
        }));
        assert!(f.has_bframes());
        f.push(TapItem::VideoConfig(Bytes::from_static(b"avcC2")));
        f.push(video(40, true));
        assert!(!f.has_bframes());
    }

    /// A part as the packager cuts it (`media::cmaf::fragment`): a run of video samples, then
    /// one of audio; with `audio_first`, the other way round.
    fn part_with(video: &[&[u8]], audio: &[u8], audio_first: bool) -> Bytes {
        use media::cmaf::{Sample, TrackRun, fragment};
        let run = |track_id, samples: &[&[u8]]| TrackRun {
            track_id,
            base_media_decode_time: 0,
            samples: samples
                .iter()
                .map(|d| Sample {
                    data: Bytes::copy_from_slice(d),
                    duration: 3000,
                    composition_offset: 0,
                    is_sync: false,
                })
                .collect(),
        };
        let (v, a) = (run(1, video), run(2, &[audio]));
        let runs = if audio_first { [a, v] } else { [v, a] };
        fragment(1, &runs).unwrap()
    }

    fn part_of(video: &[&[u8]], audio: &[u8]) -> Bytes {
        part_with(video, audio, false)
    }

    fn frame(dts_ms: u64, keyframe: bool, data: &[u8]) -> TapItem {
        TapItem::Video(VideoFrame {
            dts_ms,
            cts_ms: 0,
            keyframe,
            data: Bytes::copy_from_slice(data),
        })
    }

    fn gop_points_into(f: &FrameFeed, part: &Bytes) -> Vec<bool> {
        let range = part.as_ptr_range();
        f.latest
            .lock()
            .gop
            .iter()
            .map(|i| match &**i {
                TapItem::Video(v) => range.contains(&v.data.as_ptr()),
                _ => false,
            })
            .collect()
    }

    #[test]
    fn the_gop_shares_the_bytes_of_the_parts_cut_from_it() {
        let f = FrameFeed::default();
        f.push(frame(0, true, b"key-frame"));
        f.push(frame(33, false, b"delta-1"));
        f.push(frame(66, false, b"delta-2"));
        let first = part_of(&[b"key-frame", b"delta-1"], b"aac");
        f.share_with_part(&first);
        assert_eq!(gop_points_into(&f, &first), [true, true, false]);
        assert_eq!(f.gop_bytes(), (7, 16));
        let second = part_of(&[b"delta-2"], b"");
        f.share_with_part(&second);
        assert_eq!(gop_points_into(&f, &second), [false, false, true]);
        assert_eq!(f.gop_bytes(), (0, 23));
        // What a newcomer gets is the same frames, byte for byte.
        let (start, _rx) = f.subscribe();
        let data: Vec<&[u8]> = start
            .iter()
            .filter_map(|i| match &**i {
                TapItem::Video(v) => Some(&v.data[..]),
                _ => None,
            })
            .collect();
        assert_eq!(data, [&b"key-frame"[..], b"delta-1", b"delta-2"]);
        // A keyframe starts a GOP of its own bytes again.
        f.push(frame(100, true, b"key-2"));
        assert_eq!(f.gop_bytes(), (5, 0));
    }

    #[test]
    fn a_part_that_does_not_hold_the_frames_shares_nothing() {
        let f = FrameFeed::default();
        f.push(frame(0, true, b"key-frame"));
        f.push(frame(33, false, b"delta-1"));
        // Audio first, a changed sample, not a part at all: each leaves the GOP as it was.
        for part in [
            part_with(&[b"key-frame", b"delta-1"], b"aac", true),
            part_of(&[b"key-framX", b"delta-1"], b""),
            Bytes::from_static(b"key-framedelta-1"),
        ] {
            f.share_with_part(&part);
            assert_eq!(gop_points_into(&f, &part), [false, false]);
        }
        assert_eq!(f.gop_bytes(), (16, 0));
    }

    #[test]
    fn a_gop_past_its_bounds_is_dropped_not_grown() {
        let f = FrameFeed::default();
        f.push(video(0, true));
        for i in 1..=MAX_GOP_ITEMS as u64 + 5 {
            f.push(video(i, false));
        }
        assert!(f.latest.lock().gop.is_empty());
        f.push(video(10_000, true));
        assert_eq!(f.latest.lock().gop.len(), 1);
    }
}
