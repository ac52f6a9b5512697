//! Video part cutting: the open part's frames, the frame interval, and the run a cut part
//! becomes (durations fixed at the cut, the timeline kept gapless across parts).

use bytes::Bytes;

use super::{MAX_PART_SAMPLES, MAX_TS_JUMP_MS};
use crate::cmaf::{Sample, TrackRun, VIDEO_TIMESCALE, VIDEO_TRACK_ID};

/// Bytes in one part at most, for publishers whose timestamps never advance.
const MAX_PART_BYTES: usize = 32 << 20;
/// A single video sample never claims more than this; a longer gap (video stalled while audio
/// kept flowing) is left as a gap in the timeline instead of one frame frozen on screen for
/// minutes.
const MAX_VIDEO_SAMPLE_MS: u64 = MAX_TS_JUMP_MS;
/// Frame duration assumed until two frames have been seen (and for the last frame of a
/// flushed part).
const DEFAULT_FRAME_MS: u64 = 33;

#[derive(Debug)]
pub(super) struct VideoFrame {
    pub dts_ms: u64,
    pub cts_ms: i32,
    pub key: bool,
    pub data: Bytes,
}

/// A video run cut from the open part.
pub(super) struct VideoRun {
    pub run: TrackRun,
    pub duration_ms: u64,
    pub independent: bool,
    pub first_dts_ms: u64,
}

#[derive(Debug)]
pub(super) struct VideoCutter {
    /// The open part's samples (durations are fixed when it is cut).
    frames: Vec<VideoFrame>,
    bytes: usize,
    /// Recent frame duration: the rounding tolerance for cuts, and the duration given to a
    /// part's last frame when the part is cut before the next frame arrives.
    frame_ms: u64,
    /// Decode time of the previous frame, for `frame_ms`.
    last_dts_ms: Option<u64>,
    /// Where the previous part's video ended; the next part starts there so that the timeline
    /// stays gapless when a predicted last-frame duration was off by a millisecond.
    next_dts_ms: Option<u64>,
}

impl Default for VideoCutter {
    fn default() -> Self {
        Self {
            frames: Vec::new(),
            bytes: 0,
            frame_ms: DEFAULT_FRAME_MS,
            last_dts_ms: None,
            next_dts_ms: None,
        }
    }
}

impl VideoCutter {
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Half a frame: timestamps are whole ms, so 30 fps lands on 199/200/201 ms; this much
    /// slack picks the frame boundary nearest a target instead of overshooting by a frame.
    pub fn tolerance_ms(&self) -> u64 {
        self.frame_ms / 2
    }

    /// The first frame of an epoch: no interval to learn from the previous one.
    pub fn start_epoch_at(&mut self, dts_ms: u64) {
        self.last_dts_ms = Some(dts_ms);
    }

    /// Learns the frame interval from a frame's decode time.
    pub fn observe(&mut self, dts_ms: u64) {
        if let Some(last) = self.last_dts_ms {
            let step = dts_ms.saturating_sub(last);
            if (1..=1000).contains(&step) {
                self.frame_ms = step;
            }
        }
        self.last_dts_ms = Some(dts_ms);
    }

    /// Whether the open part must be cut before `frame` joins it: at a keyframe, at the part
    /// target, or at the bounds. Usually the part was already cut when its last frame arrived
    /// ([`VideoCutter::full_at`]); this catches keyframes and frames later than the frame rate
    /// promised.
    pub fn cut_before(&self, frame: &VideoFrame, part_target_ms: u64) -> bool {
        let Some(first) = self.frames.first() else {
            return false;
        };
        let part_elapsed = frame.dts_ms.saturating_sub(first.dts_ms);
        frame.key
            || part_elapsed + self.tolerance_ms() >= part_target_ms
            || self.frames.len() >= MAX_PART_SAMPLES
            || self.bytes + frame.data.len() > MAX_PART_BYTES
    }

    pub fn push(&mut self, frame: VideoFrame) {
        self.bytes += frame.data.len();
        self.frames.push(frame);
    }

    /// Where the open part ends if it is full now: its frames, the newest counted at the recent
    /// frame interval, reach the target. Waiting for the next frame's timestamp would hold
    /// every part back by one frame interval (33 ms at 30 fps) for a duration we can predict.
    pub fn full_at(&self, part_target_ms: u64) -> Option<u64> {
        let (first, last) = (self.frames.first()?, self.frames.last()?);
        let end = last.dts_ms.saturating_add(self.frame_ms);
        (end.saturating_sub(first.dts_ms) + self.frame_ms / 2 >= part_target_ms).then_some(end)
    }

    /// Forgets the open part and the timeline (a new epoch).
    pub fn reset(&mut self) {
        self.frames.clear();
        self.bytes = 0;
        self.next_dts_ms = None;
        self.last_dts_ms = None;
    }

    /// Forgets where the previous part ended (a re-init starts the timeline anew).
    pub fn restart_timeline(&mut self) {
        self.next_dts_ms = None;
    }

    /// Cuts the open part into a run ending at `end_ms` (the dts of the frame that starts the
    /// next part; `None` at a flush: one frame interval after the last frame).
    pub fn cut(&mut self, end_ms: Option<u64>) -> Option<VideoRun> {
        let frames = std::mem::take(&mut self.frames);
        self.bytes = 0;
        let first = frames.first()?;
        let independent = first.key;
        // Start where the previous part ended if that is within half a frame of this frame's
        // own time (a predicted duration was a millisecond off); the composition offset takes
        // the difference, so the frame is still presented at its own time.
        let first_dts = match self.next_dts_ms {
            Some(t)
                if t.abs_diff(first.dts_ms) <= self.frame_ms / 2
                    && frames.get(1).is_none_or(|n| t < n.dts_ms) =>
            {
                t
            }
            _ => first.dts_ms,
        };
        let last_dts = frames.last().map_or(first_dts, |f| f.dts_ms);
        let end = end_ms
            .unwrap_or(last_dts.saturating_add(self.frame_ms))
            .max(last_dts.max(first_dts) + 1);

        let mut total_ms = 0u64;
        let mut samples = Vec::with_capacity(frames.len());
        for (i, f) in frames.iter().enumerate() {
            let dts = if i == 0 { first_dts } else { f.dts_ms };
            let next = frames.get(i + 1).map_or(end, |n| n.dts_ms);
            let dur_ms = next.saturating_sub(dts).min(MAX_VIDEO_SAMPLE_MS);
            total_ms += dur_ms;
            // |cts| < 2^23 ms and the shift is under a frame, so * 90 stays inside i32.
            let shift = f.dts_ms as i64 - dts as i64;
            samples.push(Sample {
                data: f.data.clone(),
                duration: (dur_ms * 90) as u32,
                composition_offset: ((i64::from(f.cts_ms) + shift) * 90) as i32,
                is_sync: f.key,
            });
        }
        self.next_dts_ms = Some(first_dts + total_ms);
        Some(VideoRun {
            run: TrackRun {
                track_id: VIDEO_TRACK_ID,
                base_media_decode_time: first_dts.saturating_mul(u64::from(VIDEO_TIMESCALE / 1000)),
                samples,
            },
            duration_ms: total_ms,
            independent,
            first_dts_ms: first_dts,
        })
    }
}
