//! The sans-IO state machine that turns FLV tag bodies into CMAF chunks
//! (LL-HLS parts) grouped into segments.
//!
//! # Model
//! - An *epoch* is a run of parts that share one init segment. The first
//!   epoch starts at the first video keyframe; a new one starts after a
//!   changed AVC/AAC sequence header, a late-arriving audio track, or
//!   [`Packager::flush`]. Every epoch begins with [`PackagerOutput::Init`]
//!   followed by a part with `starts_segment: true`. **The caller must put an
//!   `EXT-X-DISCONTINUITY` (and a new `EXT-X-MAP`) before the first part after
//!   every `Init` except the very first one.**
//! - The `Init` of an epoch is emitted lazily, immediately before the first
//!   part of that epoch, so an AAC header that shows up a few frames after the
//!   first keyframe still makes it into the first init segment.
//! - Parts are cut on the arrival of the first video frame at or past the
//!   part target (the last frame's duration is only known then), and always
//!   at keyframes. A keyframe starts a new segment only once the current
//!   segment has reached the segment target, so segment length is the target
//!   rounded up to whole GOPs.
//! - Audio has no say in cutting while video exists: at a cut at video time
//!   `T`, all buffered audio with dts < `T` goes into that part. Audio that
//!   arrives late lands in the next part, which is harmless because audio
//!   tfdt is tracked by sample count, not by which part it lands in.
//! - With no video at all after [`AUDIO_ONLY_PROBE_MS`] of audio, the stream
//!   is packaged audio-only: every part is independent and segments start
//!   every segment target.
//!
//! # Timestamps
//! RTMP timestamps are u32 milliseconds that wrap after ~49.7 days and that
//! publishers sometimes jump. One shared timeline turns them into u64 ms
//! (tracks stay on a common clock even across a wrap); each track is then
//! clamped to be non-decreasing so small backwards steps cannot produce
//! negative durations. Jumps larger than [`MAX_TS_JUMP_MS`] are treated as a
//! publisher clock reset and rebased rather than trusted.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;

use crate::MediaError;
use crate::aac::{AacConfig, SAMPLES_PER_FRAME};
use crate::avc::AvcConfig;
use crate::cmaf::{self, AUDIO_TRACK_ID, Sample, TrackRun, VIDEO_TIMESCALE, VIDEO_TRACK_ID};
use crate::flv::{self, AudioPacket, VideoPacket};

/// A timestamp step bigger than this (either direction) is a clock reset,
/// not media time passing.
pub const MAX_TS_JUMP_MS: u64 = 10_000;
/// How long audio must flow with no video message at all before we give up
/// waiting for video and package audio-only.
pub const AUDIO_ONLY_PROBE_MS: u64 = 2_000;
/// Audio tfdt follows sample counts; only when that drifts this far from
/// the publisher's timestamps do we resync to them.
pub const AUDIO_RESYNC_MS: u64 = 50;
/// Bounds on audio buffered while waiting for video to cut a part. Hitting
/// one means video stalled (or a hostile publisher); the buffer is dropped.
pub const MAX_AUDIO_QUEUE_MS: u64 = 10_000;
const MAX_AUDIO_QUEUE_FRAMES: usize = 2_000;
const MAX_AUDIO_QUEUE_BYTES: usize = 8 << 20;
/// Bounds on one part, for publishers whose timestamps never advance.
const MAX_PART_SAMPLES: usize = 1_000;
const MAX_PART_BYTES: usize = 32 << 20;
/// A single video sample never claims more than this; a longer gap (video
/// stalled while audio kept flowing) is left as a gap in the timeline
/// instead of one frame frozen on screen for minutes.
const MAX_VIDEO_SAMPLE_MS: u64 = MAX_TS_JUMP_MS;
/// Frame duration assumed until two frames have been seen (and for the last
/// frame of a flushed part).
const DEFAULT_FRAME_MS: u64 = 33;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackagerConfig {
    /// Target LL-HLS part duration. Parts land on the video frame closest to
    /// it, so they may exceed it by up to half a frame.
    pub part_target: Duration,
    /// Minimum segment duration; segments end at the first keyframe after it.
    pub segment_target: Duration,
}

impl Default for PackagerConfig {
    fn default() -> Self {
        PackagerConfig {
            part_target: Duration::from_millis(200),
            segment_target: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PackagerOutput {
    /// A new init segment (ftyp+moov). Emitted before the first part and
    /// whenever the track set or a decoder config changes; every `Init`
    /// after the first one needs a discontinuity in the playlist.
    Init {
        data: Bytes,
        /// RFC 6381 codecs for the playlist, e.g. `avc1.64001f,mp4a.40.2`.
        codecs: String,
        /// Display size (0x0 for audio-only).
        width: u32,
        height: u32,
    },
    /// A CMAF chunk = one LL-HLS part (moof+mdat).
    Part {
        data: Bytes,
        duration: Duration,
        /// Starts with a video keyframe (always true audio-only).
        independent: bool,
        starts_segment: bool,
        /// Publisher time (unwrapped RTMP ms) of the part's first sample,
        /// for glass-to-glass latency measurements.
        first_dts_ms: u64,
    },
}

#[derive(Debug)]
struct VideoFrame {
    dts_ms: u64,
    cts_ms: i32,
    key: bool,
    data: Bytes,
}

#[derive(Debug)]
struct AudioFrame {
    dts_ms: u64,
    data: Bytes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Before the first keyframe, or after an epoch ended: drop everything
    /// until a keyframe (or enough audio to go audio-only).
    AwaitKeyframe,
    Video,
    AudioOnly,
}

/// Which tracks the last emitted init segment declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct InitTracks {
    audio: bool,
}

/// Maps wrapping u32 RTMP milliseconds onto a u64 timeline shared by all
/// tracks. Deltas are taken against the most recent message of *any* track,
/// which is what keeps audio and video aligned across a u32 wrap.
#[derive(Debug, Default)]
struct Timeline {
    last: Option<(u32, u64)>,
}

impl Timeline {
    fn map(&mut self, raw: u32) -> u64 {
        let out = match self.last {
            None => u64::from(raw),
            Some((last_raw, last_out)) => {
                let delta = i64::from(raw.wrapping_sub(last_raw) as i32);
                if delta.unsigned_abs() > MAX_TS_JUMP_MS {
                    tracing::warn!(
                        from = last_raw,
                        to = raw,
                        "RTMP timestamp jump; rebasing publisher timeline"
                    );
                    last_out
                } else if delta >= 0 {
                    last_out.saturating_add(delta.unsigned_abs())
                } else {
                    last_out.saturating_sub(delta.unsigned_abs())
                }
            }
        };
        self.last = Some((raw, out));
        out
    }
}

/// Sans-IO FLV → CMAF packager. See the module docs for the model.
#[derive(Debug)]
pub struct Packager {
    part_target_ms: u64,
    segment_target_ms: u64,
    timeline: Timeline,
    last_video_ms: Option<u64>,
    last_audio_ms: Option<u64>,
    avc: Option<AvcConfig>,
    aac: Option<AacConfig>,
    mode: Mode,
    /// `None` until the current epoch's Init has been emitted.
    init_sent: Option<InitTracks>,
    /// Audio appeared after the epoch's Init went out without it: start a
    /// new epoch at the next keyframe instead of dropping a GOP now.
    reinit_at_keyframe: bool,
    /// Any video message ever seen; rules out audio-only mode.
    video_seen: bool,
    audio_probe_start_ms: Option<u64>,
    /// The open part's video samples (durations are fixed when it is cut).
    part_video: Vec<VideoFrame>,
    part_bytes: usize,
    part_starts_segment: bool,
    segment_start_ms: u64,
    /// Audio waiting for a cut (video mode) or forming the open part
    /// (audio-only mode).
    audio_queue: VecDeque<AudioFrame>,
    audio_queue_bytes: usize,
    /// Where the next audio run's tfdt should be if audio is continuous.
    next_audio_tfdt: Option<u64>,
    /// Recent video frame duration: the rounding tolerance for cuts, and the duration given
    /// to a part's last frame when the part is cut before the next frame arrives.
    frame_ms: u64,
    /// Decode time of the previous video frame, for `frame_ms`.
    last_frame_dts_ms: Option<u64>,
    /// Where the previous part's video ended; the next part starts there so that the video
    /// timeline stays gapless when a predicted last-frame duration was off by a millisecond.
    next_video_dts_ms: Option<u64>,
    sequence_number: u32,
}

impl Packager {
    pub fn new(cfg: PackagerConfig) -> Self {
        Packager {
            // Zero targets would cut on every frame; one ms is the same
            // behaviour without special cases.
            part_target_ms: (cfg.part_target.as_millis() as u64).max(1),
            segment_target_ms: (cfg.segment_target.as_millis() as u64).max(1),
            timeline: Timeline::default(),
            last_video_ms: None,
            last_audio_ms: None,
            avc: None,
            aac: None,
            mode: Mode::AwaitKeyframe,
            init_sent: None,
            reinit_at_keyframe: false,
            video_seen: false,
            audio_probe_start_ms: None,
            part_video: Vec::new(),
            part_bytes: 0,
            part_starts_segment: false,
            segment_start_ms: 0,
            audio_queue: VecDeque::new(),
            audio_queue_bytes: 0,
            next_audio_tfdt: None,
            frame_ms: DEFAULT_FRAME_MS,
            last_frame_dts_ms: None,
            next_video_dts_ms: None,
            sequence_number: 1,
        }
    }

    /// The current AVC configuration, if a sequence header has been seen.
    pub fn video_config(&self) -> Option<&AvcConfig> {
        self.avc.as_ref()
    }

    /// The current AAC configuration, if a sequence header has been seen.
    pub fn audio_config(&self) -> Option<&AacConfig> {
        self.aac.as_ref()
    }

    /// Feed one FLV video tag body with its RTMP timestamp.
    ///
    /// An `Err` means this tag was dropped; the packager stays consistent and
    /// the caller may keep feeding.
    pub fn push_video(
        &mut self,
        ts_ms: u32,
        body: Bytes,
    ) -> Result<Vec<PackagerOutput>, MediaError> {
        // Set before parsing: a publisher sending video we can't decode
        // (e.g. HEVC) should get errors, not a silent audio-only stream.
        self.video_seen = true;
        let tag = flv::parse_video_tag(&body)?;
        let key = tag.is_keyframe();
        match tag.packet {
            VideoPacket::SequenceHeader(record) => self.on_avc_config(record),
            VideoPacket::Frame {
                composition_time_ms,
                data,
            } => self.on_video_frame(ts_ms, key, composition_time_ms, data),
            // End-of-sequence precedes unpublish, where the caller flushes.
            VideoPacket::EndOfSequence | VideoPacket::Ignored => Ok(Vec::new()),
        }
    }

    /// Feed one FLV audio tag body with its RTMP timestamp. Errors as for
    /// [`Packager::push_video`].
    pub fn push_audio(
        &mut self,
        ts_ms: u32,
        body: Bytes,
    ) -> Result<Vec<PackagerOutput>, MediaError> {
        let tag = flv::parse_audio_tag(&body)?;
        match tag.packet {
            AudioPacket::SequenceHeader(asc) => self.on_aac_config(asc),
            AudioPacket::Raw(data) => self.on_audio_frame(ts_ms, data),
        }
    }

    /// Publisher left: emit whatever is buffered as a final part. Feeding
    /// more afterwards starts a new epoch (new Init, discontinuity).
    pub fn flush(&mut self) -> Vec<PackagerOutput> {
        let out = self.emit_part(None);
        self.restart_epoch();
        out
    }

    fn on_avc_config(&mut self, record: Bytes) -> Result<Vec<PackagerOutput>, MediaError> {
        let cfg = AvcConfig::parse(record)?;
        if self
            .avc
            .as_ref()
            .is_some_and(|c| c.same_decoder_config(&cfg))
        {
            // OBS and friends re-send headers; not a change.
            return Ok(Vec::new());
        }
        // Prove it can be muxed now, so the lazy Init later cannot fail.
        cmaf::init_segment(Some(&cfg), self.aac.as_ref())?;
        let mut out = Vec::new();
        if self.mode != Mode::AwaitKeyframe {
            tracing::info!(codec = %cfg.codec_string(), width = cfg.width, height = cfg.height,
                "AVC sequence header changed mid-stream; starting new epoch");
            // Buffered frames belong to the old SPS/PPS and the old init.
            out = self.emit_part(None);
            self.restart_epoch();
        }
        self.avc = Some(cfg);
        Ok(out)
    }

    fn on_aac_config(&mut self, asc: Bytes) -> Result<Vec<PackagerOutput>, MediaError> {
        let cfg = AacConfig::parse(asc)?;
        if self.aac.as_ref().is_some_and(|c| c.asc == cfg.asc) {
            return Ok(Vec::new());
        }
        cmaf::init_segment(self.avc.as_ref(), Some(&cfg))?;
        let mut out = Vec::new();
        match (self.mode, self.init_sent) {
            (Mode::AwaitKeyframe, _) => {}
            // Epoch running but its Init not out yet: the Init will carry the
            // new config; frames queued under the old one must not.
            (_, None) => self.clear_audio_queue(),
            (Mode::Video, Some(tracks)) if !tracks.audio => {
                tracing::info!(
                    "audio track appeared after video started; re-init at next keyframe"
                );
                self.reinit_at_keyframe = true;
            }
            (_, Some(_)) => {
                tracing::info!("AAC sequence header changed mid-stream; starting new epoch");
                out = self.emit_part(None);
                self.restart_epoch();
            }
        }
        self.aac = Some(cfg);
        Ok(out)
    }

    fn on_video_frame(
        &mut self,
        ts_ms: u32,
        key: bool,
        cts_ms: i32,
        data: Bytes,
    ) -> Result<Vec<PackagerOutput>, MediaError> {
        // Map time even for frames we drop so the timeline stays continuous.
        let dts_ms = clamp_monotonic(&mut self.last_video_ms, self.timeline.map(ts_ms));
        let avc = self
            .avc
            .as_ref()
            .ok_or(MediaError::MissingSequenceHeader("AVC"))?;
        avc.validate_sample(&data)?;
        let frame = VideoFrame {
            dts_ms,
            cts_ms,
            key,
            data,
        };

        if self.mode != Mode::Video {
            // AudioOnly can't coexist with a video config (a sequence header
            // restarts the epoch), so this is only ever AwaitKeyframe.
            if !key {
                return Ok(Vec::new());
            }
            self.mode = Mode::Video;
            self.audio_probe_start_ms = None;
            self.last_frame_dts_ms = Some(dts_ms);
            self.open_part(&frame, true);
            self.push_part_frame(frame);
            return Ok(self.cut_if_full());
        }

        let mut out = Vec::new();
        if let Some(last) = self.last_frame_dts_ms {
            let step = dts_ms.saturating_sub(last);
            if (1..=1000).contains(&step) {
                self.frame_ms = step;
            }
        }
        self.last_frame_dts_ms = Some(dts_ms);
        // Timestamps are whole ms, so 30 fps lands on 199/200/201 ms; half a frame of slack
        // picks the frame boundary nearest the target instead of overshooting by a whole frame.
        let tol = self.frame_ms / 2;
        let seg_elapsed = dts_ms.saturating_sub(self.segment_start_ms);
        let new_segment =
            key && (self.reinit_at_keyframe || seg_elapsed + tol >= self.segment_target_ms);
        if let Some(first) = self.part_video.first() {
            // Usually the part was already cut when its last frame arrived (below); this
            // catches keyframes and frames that came later than the frame rate promised.
            let part_elapsed = dts_ms.saturating_sub(first.dts_ms);
            let cut = key
                || part_elapsed + tol >= self.part_target_ms
                || self.part_video.len() >= MAX_PART_SAMPLES
                || self.part_bytes + frame.data.len() > MAX_PART_BYTES;
            if cut {
                out = self.emit_part(Some(dts_ms));
            }
        }
        if self.part_video.is_empty() {
            if new_segment && self.reinit_at_keyframe {
                self.reinit_at_keyframe = false;
                self.init_sent = None;
                self.next_audio_tfdt = None;
                self.next_video_dts_ms = None;
            }
            self.open_part(&frame, new_segment);
        }
        self.push_part_frame(frame);
        out.extend(self.cut_if_full());
        Ok(out)
    }

    /// Cuts the open part as soon as its frames, the newest counted at the recent frame
    /// interval, reach the target: waiting for the next frame's timestamp would hold every
    /// part back by one frame interval (33 ms at 30 fps) for a duration we can predict.
    fn cut_if_full(&mut self) -> Vec<PackagerOutput> {
        let (Some(first), Some(last)) = (self.part_video.first(), self.part_video.last()) else {
            return Vec::new();
        };
        let end = last.dts_ms.saturating_add(self.frame_ms);
        if end.saturating_sub(first.dts_ms) + self.frame_ms / 2 >= self.part_target_ms {
            self.emit_part(Some(end))
        } else {
            Vec::new()
        }
    }

    fn open_part(&mut self, first: &VideoFrame, starts_segment: bool) {
        self.part_starts_segment = starts_segment;
        if starts_segment {
            self.segment_start_ms = first.dts_ms;
        }
    }

    fn push_part_frame(&mut self, frame: VideoFrame) {
        self.part_bytes += frame.data.len();
        self.part_video.push(frame);
    }

    fn on_audio_frame(
        &mut self,
        ts_ms: u32,
        data: Bytes,
    ) -> Result<Vec<PackagerOutput>, MediaError> {
        let dts_ms = clamp_monotonic(&mut self.last_audio_ms, self.timeline.map(ts_ms));
        let rate = self
            .aac
            .as_ref()
            .ok_or(MediaError::MissingSequenceHeader("AAC"))?
            .sample_rate;
        if data.is_empty() {
            return Ok(Vec::new());
        }
        let frame = AudioFrame { dts_ms, data };
        match self.mode {
            Mode::AwaitKeyframe => {
                if self.video_seen || self.avc.is_some() {
                    return Ok(Vec::new());
                }
                let start = *self.audio_probe_start_ms.get_or_insert(dts_ms);
                if dts_ms.saturating_sub(start) < AUDIO_ONLY_PROBE_MS {
                    return Ok(Vec::new());
                }
                tracing::info!(
                    "no video after {AUDIO_ONLY_PROBE_MS} ms of audio; packaging audio-only"
                );
                self.mode = Mode::AudioOnly;
                self.part_starts_segment = true;
                self.segment_start_ms = dts_ms;
                self.enqueue_audio(frame)?;
                Ok(Vec::new())
            }
            Mode::Video => {
                if self.init_sent.is_some_and(|t| !t.audio) {
                    // The running epoch has no audio track; wait for re-init.
                    return Ok(Vec::new());
                }
                self.enqueue_audio(frame)?;
                Ok(Vec::new())
            }
            Mode::AudioOnly => {
                let frame_ms = u64::from(SAMPLES_PER_FRAME) * 1000 / u64::from(rate);
                let tol = frame_ms / 2;
                if self.audio_queue.is_empty() {
                    let seg_elapsed = dts_ms.saturating_sub(self.segment_start_ms);
                    // Parts are whole AAC frames (e.g. 192 ms at 48 kHz), so
                    // "at least the target" would overshoot by almost a part
                    // (1152 ms); pick the part boundary nearest the target.
                    // A new epoch (no Init sent yet) always opens a segment.
                    self.part_starts_segment = self.init_sent.is_none()
                        || seg_elapsed + self.part_target_ms / 2 >= self.segment_target_ms;
                    if self.part_starts_segment {
                        self.segment_start_ms = dts_ms;
                    }
                }
                self.enqueue_audio(frame)?;
                let buffered_ms =
                    self.audio_queue.len() as u64 * u64::from(SAMPLES_PER_FRAME) * 1000
                        / u64::from(rate);
                if buffered_ms + tol >= self.part_target_ms
                    || self.audio_queue.len() >= MAX_PART_SAMPLES
                {
                    return Ok(self.emit_part(None));
                }
                Ok(Vec::new())
            }
        }
    }

    fn enqueue_audio(&mut self, frame: AudioFrame) -> Result<(), MediaError> {
        let span = self
            .audio_queue
            .front()
            .map_or(0, |f| frame.dts_ms.saturating_sub(f.dts_ms));
        if span > MAX_AUDIO_QUEUE_MS
            || self.audio_queue.len() >= MAX_AUDIO_QUEUE_FRAMES
            || self.audio_queue_bytes + frame.data.len() > MAX_AUDIO_QUEUE_BYTES
        {
            self.clear_audio_queue();
            return Err(MediaError::BufferLimit(
                "audio buffered without video to cut a part; dropped",
            ));
        }
        self.audio_queue_bytes += frame.data.len();
        self.audio_queue.push_back(frame);
        Ok(())
    }

    fn clear_audio_queue(&mut self) {
        self.audio_queue.clear();
        self.audio_queue_bytes = 0;
        self.next_audio_tfdt = None;
    }

    /// End the current epoch: the next part needs a fresh Init and starts a
    /// segment.
    fn restart_epoch(&mut self) {
        self.part_video.clear();
        self.next_video_dts_ms = None;
        self.last_frame_dts_ms = None;
        self.part_bytes = 0;
        self.clear_audio_queue();
        self.init_sent = None;
        self.reinit_at_keyframe = false;
        self.audio_probe_start_ms = None;
        self.part_starts_segment = true;
        // `video_seen` (not `avc`) decides: a video sequence header ending an
        // audio-only epoch is processed before `avc` is updated.
        self.mode = if self.mode == Mode::AudioOnly && !self.video_seen {
            Mode::AudioOnly
        } else {
            Mode::AwaitKeyframe
        };
    }

    /// Close the open part. `end_ms` is the dts of the frame that starts the
    /// next part; `None` (flush) means "everything buffered, estimate the
    /// last duration".
    fn emit_part(&mut self, end_ms: Option<u64>) -> Vec<PackagerOutput> {
        let mut out = Vec::new();
        let built = match self.mode {
            Mode::AwaitKeyframe => return out,
            Mode::Video => self.build_video_part(end_ms),
            Mode::AudioOnly => self.build_audio_only_part(),
        };
        let Some((runs, duration, independent, first_dts_ms)) = built else {
            return out;
        };
        if self.init_sent.is_none() {
            match self.make_init() {
                Ok(init) => out.push(init),
                Err(e) => {
                    // Can't happen: configs are test-encoded when accepted.
                    tracing::error!(error = %e, "init segment encoding failed; part dropped");
                    return out;
                }
            }
        }
        match cmaf::fragment(self.sequence_number, &runs) {
            Ok(data) => {
                self.sequence_number = self.sequence_number.wrapping_add(1).max(1);
                out.push(PackagerOutput::Part {
                    data,
                    duration,
                    independent,
                    starts_segment: std::mem::take(&mut self.part_starts_segment),
                    first_dts_ms,
                });
            }
            Err(e) => {
                tracing::error!(error = %e, "fragment encoding failed; part dropped");
            }
        }
        out
    }

    fn build_video_part(
        &mut self,
        end_ms: Option<u64>,
    ) -> Option<(Vec<TrackRun>, Duration, bool, u64)> {
        let frames = std::mem::take(&mut self.part_video);
        self.part_bytes = 0;
        let Some(first) = frames.first() else {
            // The part was cut when its last frame came; at a flush, audio that arrived since
            // (the tail after the last video frame) still goes out, as a part of its own.
            return match end_ms {
                None => self.build_audio_only_part(),
                Some(_) => None,
            };
        };
        let independent = first.key;
        // Start where the previous part ended if that is within half a frame of this frame's
        // own time (a predicted duration was a millisecond off); the composition offset takes
        // the difference, so the frame is still presented at its own time.
        let first_dts = match self.next_video_dts_ms {
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
        self.next_video_dts_ms = Some(first_dts + total_ms);
        let mut runs = vec![TrackRun {
            track_id: VIDEO_TRACK_ID,
            base_media_decode_time: first_dts.saturating_mul(u64::from(VIDEO_TIMESCALE / 1000)),
            samples,
        }];

        let audio: Vec<AudioFrame> = match end_ms {
            Some(end) => {
                let n = self
                    .audio_queue
                    .iter()
                    .take_while(|f| f.dts_ms < end)
                    .count();
                self.audio_queue.drain(..n).collect()
            }
            None => self.audio_queue.drain(..).collect(),
        };
        self.audio_queue_bytes = self.audio_queue.iter().map(|f| f.data.len()).sum();
        if let Some(run) = self.audio_run(audio) {
            runs.push(run);
        }
        Some((
            runs,
            Duration::from_millis(total_ms),
            independent,
            first_dts,
        ))
    }

    fn build_audio_only_part(&mut self) -> Option<(Vec<TrackRun>, Duration, bool, u64)> {
        let frames: Vec<AudioFrame> = self.audio_queue.drain(..).collect();
        self.audio_queue_bytes = 0;
        let first_dts = frames.first()?.dts_ms;
        let rate = u64::from(self.aac.as_ref()?.sample_rate);
        let ticks = frames.len() as u64 * u64::from(SAMPLES_PER_FRAME);
        let duration =
            Duration::from_nanos((u128::from(ticks) * 1_000_000_000 / u128::from(rate)) as u64);
        let run = self.audio_run(frames)?;
        Some((vec![run], duration, true, first_dts))
    }

    /// Turn buffered AAC frames into a run whose tfdt continues the previous
    /// one by sample count, resyncing to the publisher's timestamps only when
    /// they disagree by more than [`AUDIO_RESYNC_MS`]. Deriving every tfdt
    /// straight from ms timestamps would jitter by up to 1 ms per part and
    /// leave micro-gaps/overlaps that some decoders click on.
    fn audio_run(&mut self, frames: Vec<AudioFrame>) -> Option<TrackRun> {
        let first = frames.first()?;
        let rate = u64::from(self.aac.as_ref()?.sample_rate);
        let from_ts = ms_to_ticks(first.dts_ms, rate);
        let tfdt = match self.next_audio_tfdt {
            Some(expected) if expected.abs_diff(from_ts) <= rate * AUDIO_RESYNC_MS / 1000 => {
                expected
            }
            _ => from_ts,
        };
        self.next_audio_tfdt =
            Some(tfdt.saturating_add(frames.len() as u64 * u64::from(SAMPLES_PER_FRAME)));
        Some(TrackRun {
            track_id: AUDIO_TRACK_ID,
            base_media_decode_time: tfdt,
            samples: frames
                .into_iter()
                .map(|f| Sample {
                    data: f.data,
                    duration: SAMPLES_PER_FRAME,
                    composition_offset: 0,
                    is_sync: true,
                })
                .collect(),
        })
    }

    fn make_init(&mut self) -> Result<PackagerOutput, MediaError> {
        let video = match self.mode {
            Mode::Video => self.avc.as_ref(),
            _ => None,
        };
        let audio = self.aac.as_ref();
        let data = cmaf::init_segment(video, audio)?;
        let codecs: Vec<String> = video
            .map(AvcConfig::codec_string)
            .into_iter()
            .chain(audio.map(AacConfig::codec_string))
            .collect();
        self.init_sent = Some(InitTracks {
            audio: audio.is_some(),
        });
        Ok(PackagerOutput::Init {
            data,
            codecs: codecs.join(","),
            width: video.map_or(0, |v| v.width),
            height: video.map_or(0, |v| v.height),
        })
    }
}

fn clamp_monotonic(last: &mut Option<u64>, t: u64) -> u64 {
    let t = last.map_or(t, |l| t.max(l));
    *last = Some(t);
    t
}

fn ms_to_ticks(ms: u64, rate: u64) -> u64 {
    u64::try_from(u128::from(ms) * u128::from(rate) / 1000).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::avc::tests::{SEQ_HDR_852X480, hex};
    use mp4_atom::{Decode, Moof, TrunEntry, TrunSamples};
    use std::collections::HashMap;
    use std::process::Command;

    /// 4 s of ffmpeg testsrc 640x360@30 (x264 High, GOP 30, 2 B-frames) plus
    /// a 440 Hz sine (AAC-LC 44.1 kHz mono), muxed to FLV by ffmpeg:
    /// `ffmpeg -f lavfi -i testsrc=size=640x360:rate=30 -f lavfi -i
    /// sine=frequency=440:sample_rate=44100 -t 4 -c:v libx264 -preset veryfast
    /// -crf 38 -g 30 -keyint_min 30 -sc_threshold 0 -bf 2 -pix_fmt yuv420p
    /// -c:a aac -b:a 48k -f flv`. 360 is not a multiple of 16, so this also
    /// covers SPS cropping.
    const FIXTURE: &[u8] = include_bytes!("../testdata/avc_aac_640x360_4s.flv");

    struct FlvTag {
        kind: u8,
        ts: u32,
        body: Bytes,
    }

    /// Minimal FLV *file* reader: 9-byte header, then (prev-tag-size, tag)*.
    /// Yields tag bodies exactly as an RTMP server hands them over.
    fn read_flv(file: &[u8]) -> Vec<FlvTag> {
        assert_eq!(&file[..3], b"FLV");
        let mut off = u32::from_be_bytes(file[5..9].try_into().unwrap()) as usize + 4;
        let mut tags = Vec::new();
        while off + 11 <= file.len() {
            let kind = file[off];
            let size =
                u32::from_be_bytes([0, file[off + 1], file[off + 2], file[off + 3]]) as usize;
            let ts =
                u32::from_be_bytes([file[off + 7], file[off + 4], file[off + 5], file[off + 6]]);
            let body = Bytes::copy_from_slice(&file[off + 11..off + 11 + size]);
            tags.push(FlvTag { kind, ts, body });
            off += 11 + size + 4;
        }
        tags
    }

    #[derive(Debug)]
    struct Run {
        track_id: u32,
        tfdt: u64,
        entries: Vec<TrunEntry>,
    }

    /// Decode a Part with mp4-atom and check its structure on the way.
    fn inspect(data: &[u8]) -> (u32, Vec<Run>) {
        assert_eq!(&data[4..8], b"moof", "part must start with moof");
        let mut buf = data;
        let moof = Moof::decode(&mut buf).expect("moof decodes");
        assert_eq!(&buf[4..8], b"mdat");
        assert_eq!(
            u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize,
            buf.len()
        );
        let mdat_start = data.len() - buf.len() + 8;
        let mut expect_off = mdat_start;
        let runs = moof
            .traf
            .iter()
            .map(|t| {
                assert!(t.tfhd.default_base_is_moof);
                assert_eq!(t.trun.len(), 1);
                let TrunSamples::Explicit(entries) = &t.trun[0].samples else {
                    panic!("explicit trun expected");
                };
                // Each track's data must start right where the previous ended.
                assert_eq!(t.trun[0].data_offset, Some(expect_off as i32));
                expect_off += entries
                    .iter()
                    .map(|e| e.size.unwrap() as usize)
                    .sum::<usize>();
                Run {
                    track_id: t.tfhd.track_id,
                    tfdt: t.tfdt.as_ref().unwrap().base_media_decode_time,
                    entries: entries.clone(),
                }
            })
            .collect();
        assert_eq!(expect_off, data.len(), "samples must exactly fill mdat");
        (moof.mfhd.sequence_number, runs)
    }

    fn parts(out: &[PackagerOutput]) -> Vec<(&Bytes, Duration, bool, bool, u64)> {
        out.iter()
            .filter_map(|o| match o {
                PackagerOutput::Part {
                    data,
                    duration,
                    independent,
                    starts_segment,
                    first_dts_ms,
                } => Some((
                    data,
                    *duration,
                    *independent,
                    *starts_segment,
                    *first_dts_ms,
                )),
                _ => None,
            })
            .collect()
    }

    fn inits(out: &[PackagerOutput]) -> Vec<(usize, &str, u32, u32)> {
        out.iter()
            .enumerate()
            .filter_map(|(i, o)| match o {
                PackagerOutput::Init {
                    codecs,
                    width,
                    height,
                    ..
                } => Some((i, codecs.as_str(), *width, *height)),
                _ => None,
            })
            .collect()
    }

    /// Runs `cmd`; `None` if it isn't installed (the decoder checks are
    /// skipped on machines without ffmpeg, but run wherever it exists).
    fn run_tool(cmd: &str, args: &[&str]) -> Option<std::process::Output> {
        match Command::new(cmd).args(args).output() {
            Ok(o) => Some(o),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                eprintln!("{cmd} not installed; skipping real-decoder check");
                None
            }
            Err(e) => panic!("running {cmd}: {e}"),
        }
    }

    /// What was fed to the packager, for cross-checking its output.
    struct Fed {
        /// (dts, pts) in ms of every video frame, in decode order.
        video: Vec<(i64, i64)>,
        audio_frames: usize,
    }

    fn package_flv(file: &[u8], cfg: PackagerConfig) -> (Vec<PackagerOutput>, Fed) {
        let mut p = Packager::new(cfg);
        let mut out = Vec::new();
        let mut fed = Fed {
            video: Vec::new(),
            audio_frames: 0,
        };
        for t in read_flv(file) {
            match t.kind {
                9 => {
                    if let Ok(flv::VideoTag {
                        packet:
                            VideoPacket::Frame {
                                composition_time_ms,
                                ..
                            },
                        ..
                    }) = flv::parse_video_tag(&t.body)
                        && (!fed.video.is_empty() || t.body[0] >> 4 == 1)
                    {
                        let dts = i64::from(t.ts);
                        fed.video.push((dts, dts + i64::from(composition_time_ms)));
                    }
                    out.extend(p.push_video(t.ts, t.body).unwrap());
                }
                8 => {
                    // Audio arriving before the first keyframe is dropped.
                    if t.body.get(1) == Some(&1) && !fed.video.is_empty() {
                        fed.audio_frames += 1;
                    }
                    out.extend(p.push_audio(t.ts, t.body).unwrap());
                }
                _ => {}
            }
        }
        out.extend(p.flush());
        (out, fed)
    }

    /// Structural invariants of a packaged stream that starts on a keyframe
    /// and has no config changes. Returns the `first_dts_ms` of every part
    /// that starts a segment.
    fn check_structure(out: &[PackagerOutput], fed: &Fed, cfg: PackagerConfig) -> Vec<u64> {
        let inits = inits(out);
        assert_eq!(inits.len(), 1, "exactly one Init");
        assert_eq!(inits[0].0, 0, "Init comes first");

        let parts = parts(out);
        let last = parts.len() - 1;
        let mut seg_starts = Vec::new();
        let (mut video_samples, mut audio_samples) = (0usize, 0usize);
        let mut next_tfdt: HashMap<u32, u64> = HashMap::new();
        let mut max_frame_ms = 0u64;
        for (i, (data, duration, independent, starts_segment, first_dts_ms)) in
            parts.iter().enumerate()
        {
            if *starts_segment {
                assert!(independent, "segments start on keyframes");
                seg_starts.push(*first_dts_ms);
            }
            let (seq, runs) = inspect(data);
            assert_eq!(seq, i as u32 + 1, "moof sequence numbers count parts");
            for run in &runs {
                let dur: u64 = run
                    .entries
                    .iter()
                    .map(|e| u64::from(e.duration.unwrap()))
                    .sum();
                // Both tracks must be gapless part to part.
                if let Some(expected) = next_tfdt.get(&run.track_id) {
                    assert_eq!(
                        run.tfdt, *expected,
                        "track {} tfdt continuity",
                        run.track_id
                    );
                }
                next_tfdt.insert(run.track_id, run.tfdt + dur);
                match run.track_id {
                    1 => {
                        video_samples += run.entries.len();
                        assert_eq!(run.tfdt, first_dts_ms * 90);
                        assert_eq!(Duration::from_micros(dur * 100 / 9), *duration);
                        assert_eq!(
                            run.entries[0].flags == Some(cmaf::SAMPLE_FLAGS_SYNC),
                            *independent
                        );
                        let longest = run.entries.iter().map(|e| e.duration.unwrap()).max();
                        max_frame_ms = max_frame_ms.max(u64::from(longest.unwrap()) / 90);
                    }
                    2 => audio_samples += run.entries.len(),
                    other => panic!("unexpected track {other}"),
                }
            }
            // Never more than half a frame over target; shorter only where a
            // keyframe or the end of the stream cut the part.
            let over = duration.saturating_sub(cfg.part_target);
            assert!(
                over <= Duration::from_millis(max_frame_ms / 2 + 1),
                "part {i} lasts {duration:?}"
            );
            let next_starts_gop = parts.get(i + 1).is_some_and(|p| p.2);
            if i < last && !next_starts_gop {
                assert!(
                    cfg.part_target.saturating_sub(*duration)
                        <= Duration::from_millis(max_frame_ms / 2 + 1),
                    "part {i} lasts {duration:?}"
                );
            }
        }
        assert_eq!(video_samples, fed.video.len());
        assert_eq!(audio_samples, fed.audio_frames);
        seg_starts
    }

    /// Concatenate init + parts into an .mp4 and make ffprobe/ffmpeg agree
    /// that it holds exactly what was fed. Skipped without ffmpeg installed.
    fn check_with_ffmpeg(out: &[PackagerOutput], fed: &Fed, name: &str) {
        let (_, codecs, width, height) = inits(out)[0];
        let mut file = Vec::new();
        for o in out {
            match o {
                PackagerOutput::Init { data, .. } | PackagerOutput::Part { data, .. } => {
                    file.extend_from_slice(data)
                }
            }
        }
        let path =
            std::env::temp_dir().join(format!("classcast-media-{name}-{}.mp4", std::process::id()));
        std::fs::write(&path, &file).unwrap();
        let path_s = path.to_str().unwrap();
        eprintln!("wrote {path_s} ({codecs}, {width}x{height})");

        let Some(probe) = run_tool(
            "ffprobe",
            &["-v", "error", "-count_frames", "-show_streams", path_s],
        ) else {
            return;
        };
        let stdout = String::from_utf8_lossy(&probe.stdout);
        assert!(
            probe.status.success() && probe.stderr.is_empty(),
            "ffprobe: {}",
            String::from_utf8_lossy(&probe.stderr)
        );
        let streams: Vec<HashMap<&str, &str>> = stdout
            .split("[STREAM]")
            .skip(1)
            .map(|s| s.lines().filter_map(|l| l.split_once('=')).collect())
            .collect();
        let v = streams
            .iter()
            .find(|s| s["codec_type"] == "video")
            .expect("video stream");
        eprintln!(
            "ffprobe video: codec_name={} profile={} width={} height={} nb_read_frames={}",
            v["codec_name"], v["profile"], v["width"], v["height"], v["nb_read_frames"]
        );
        assert_eq!(v["codec_name"], "h264");
        assert_eq!(v["width"], width.to_string());
        assert_eq!(v["height"], height.to_string());
        assert_eq!(v["nb_read_frames"], fed.video.len().to_string());
        if fed.audio_frames > 0 {
            let a = streams
                .iter()
                .find(|s| s["codec_type"] == "audio")
                .expect("audio stream");
            eprintln!(
                "ffprobe audio: codec_name={} profile={} sample_rate={} channels={} nb_read_frames={}",
                a["codec_name"], a["profile"], a["sample_rate"], a["channels"], a["nb_read_frames"]
            );
            assert_eq!(a["codec_name"], "aac");
            assert_eq!(a["nb_read_frames"], fed.audio_frames.to_string());
        }

        // Timestamps must survive exactly: dts = FLV ts, pts = ts + cts.
        let packets = run_tool(
            "ffprobe",
            &[
                "-v",
                "error",
                "-select_streams",
                "v:0",
                "-show_entries",
                "packet=dts,pts",
                "-of",
                "csv=p=0",
                path_s,
            ],
        )
        .unwrap();
        let got: Vec<(i64, i64)> = String::from_utf8_lossy(&packets.stdout)
            .lines()
            .map(|l| {
                let (pts, dts) = l.split_once(',').unwrap();
                (dts.trim().parse().unwrap(), pts.trim().parse().unwrap())
            })
            .collect();
        let want: Vec<(i64, i64)> = fed.video.iter().map(|(d, p)| (d * 90, p * 90)).collect();
        assert_eq!(got, want, "video (dts, pts) in 90 kHz");

        let decode = run_tool("ffmpeg", &["-v", "error", "-i", path_s, "-f", "null", "-"]).unwrap();
        assert!(
            decode.status.success() && decode.stderr.is_empty(),
            "ffmpeg decode errors: {}",
            String::from_utf8_lossy(&decode.stderr)
        );
        // Kept on failure (the asserts above panic first) for inspection.
        if std::env::var_os("MEDIA_KEEP_MP4").is_none() {
            let _ = std::fs::remove_file(&path);
        }
    }

    #[test]
    fn end_to_end_real_flv_plays_in_ffmpeg() {
        let cfg = PackagerConfig::default();
        let (out, fed) = package_flv(FIXTURE, cfg);
        assert_eq!(fed.video.len(), 120);
        let (_, codecs, w, h) = inits(&out)[0];
        assert_eq!((w, h), (640, 360));
        assert!(codecs.starts_with("avc1.6400"), "{codecs}");
        assert!(codecs.ends_with(",mp4a.40.2"), "{codecs}");

        let seg_starts = check_structure(&out, &fed, cfg);
        // Within a millisecond: see `segments_follow_gop_not_target`.
        assert_eq!(
            seg_starts.len(),
            4,
            "GOP 1 s -> 1 s segments: {seg_starts:?}"
        );
        assert!(
            seg_starts
                .iter()
                .zip([0, 1000, 2000, 3000])
                .all(|(&a, b)| a.abs_diff(b) <= 1),
            "GOP 1 s -> 1 s segments: {seg_starts:?}"
        );
        // 1 s GOPs split evenly into 200 ms parts, then the audio that came after the last
        // video frame, flushed as a short part of its own.
        let parts = parts(&out);
        assert_eq!(parts.len(), 21);
        assert!(
            parts[..20]
                .iter()
                .all(|p| p.1.as_millis().abs_diff(200) <= 1),
            "{:?}",
            parts.iter().map(|p| p.1).collect::<Vec<_>>()
        );
        let (_, tail) = inspect(parts[20].0);
        assert!(tail.len() == 1 && tail[0].track_id == 2, "audio only");

        check_with_ffmpeg(&out, &fed, "fixture");
    }

    /// Dev tool: `MEDIA_FLV=/path/to/file.flv cargo test external_flv --
    /// --ignored --nocapture` runs the same checks on any FLV (e.g. an OBS
    /// recording) that starts with a keyframe and has no mid-stream changes.
    #[test]
    #[ignore = "needs MEDIA_FLV=<file>"]
    fn external_flv() {
        let path = std::env::var("MEDIA_FLV").expect("set MEDIA_FLV");
        let file = std::fs::read(&path).unwrap();
        let cfg = PackagerConfig::default();
        let (out, fed) = package_flv(&file, cfg);
        let seg_starts = check_structure(&out, &fed, cfg);
        eprintln!(
            "{} parts, segments start at {seg_starts:?}",
            parts(&out).len()
        );
        check_with_ffmpeg(&out, &fed, "external");
    }

    // ---- synthetic streams -------------------------------------------------

    fn avc_hdr() -> Bytes {
        Bytes::from(hex(SEQ_HDR_852X480))
    }

    /// The fixture's 640x360 sequence header, as a "different" SPS.
    fn avc_hdr_640() -> Bytes {
        read_flv(FIXTURE)
            .into_iter()
            .find(|t| t.kind == 9 && t.body[1] == 0)
            .unwrap()
            .body
    }

    fn vframe(key: bool, cts_ms: i32, tag: u8) -> Bytes {
        let c = cts_ms.to_be_bytes();
        let nal = if key { 0x65 } else { 0x41 };
        Bytes::from(vec![
            if key { 0x17 } else { 0x27 },
            1,
            c[1],
            c[2],
            c[3],
            0,
            0,
            0,
            2,
            nal,
            tag,
        ])
    }

    fn aac_hdr() -> Bytes {
        Bytes::from_static(&[0xAF, 0, 0x11, 0x90]) // LC 48 kHz stereo
    }

    fn aframe(tag: u8) -> Bytes {
        Bytes::from(vec![0xAF, 1, 0x21, tag])
    }

    /// Feed `secs` of 30 fps video (GOP `gop` frames) and 48 kHz audio,
    /// timestamps starting at `t0` (wrapping), in RTMP-like interleaving.
    fn feed_av(
        p: &mut Packager,
        t0: u32,
        first_frame: u64,
        frames: u64,
        gop: u64,
    ) -> Vec<PackagerOutput> {
        let mut out = Vec::new();
        let mut next_audio = (first_frame * 1000 / 30) as f64;
        for i in first_frame..first_frame + frames {
            let ts = (i * 1000 / 30) as u32;
            while next_audio < f64::from(ts) {
                let ats = t0.wrapping_add(next_audio.round() as u32);
                out.extend(p.push_audio(ats, aframe(1)).unwrap());
                next_audio += 1024.0 * 1000.0 / 48000.0;
            }
            out.extend(
                p.push_video(t0.wrapping_add(ts), vframe(i % gop == 0, 0, i as u8))
                    .unwrap(),
            );
        }
        out
    }

    #[test]
    fn nothing_before_first_keyframe_then_init_then_parts() {
        let mut p = Packager::new(PackagerConfig::default());
        assert!(p.push_audio(0, aac_hdr()).unwrap().is_empty());
        assert!(p.push_video(0, avc_hdr()).unwrap().is_empty());
        // Inter frames and audio before the first keyframe are dropped.
        for i in 0..5u32 {
            assert!(
                p.push_video(i * 33, vframe(false, 0, 0))
                    .unwrap()
                    .is_empty()
            );
            assert!(p.push_audio(i * 21, aframe(0)).unwrap().is_empty());
        }
        // Frames 5..29 are inter frames too; the first keyframe is frame 30.
        let out = feed_av(&mut p, 0, 5, 60, 30);
        let inits = inits(&out);
        assert_eq!(inits.len(), 1);
        assert_eq!(inits[0], (0, "avc1.64001f,mp4a.40.2", 852, 480));
        let parts = parts(&out);
        assert!(
            parts[0].3 && parts[0].2,
            "first part starts a segment with a keyframe"
        );
        assert_eq!(parts[0].4, 1000, "first part starts at the keyframe");
        let (_, runs) = inspect(parts[0].0);
        assert_eq!(runs[0].entries.len(), 6);
        assert_eq!(runs[0].tfdt, 1000 * 90);
        assert!(
            runs[1].tfdt >= 1000 * 48,
            "no audio from before the keyframe"
        );
    }

    #[test]
    fn segments_follow_gop_not_target() {
        // GOP 2 s with a 1 s target -> 2 s segments, 200 ms parts.
        let mut p = Packager::new(PackagerConfig::default());
        p.push_audio(0, aac_hdr()).unwrap();
        p.push_video(0, avc_hdr()).unwrap();
        let mut out = feed_av(&mut p, 0, 0, 180, 60);
        out.extend(p.flush());
        let parts = parts(&out);
        // Parts are cut when their last frame arrives, its duration predicted from the frame
        // interval; 30 fps in whole ms (33/33/34) makes that a millisecond off at times, and
        // the next part starts where the last one ended to keep the timeline gapless.
        let near = |a: u64, b: u64| a.abs_diff(b) <= 1;
        let seg: Vec<u64> = parts.iter().filter(|p| p.3).map(|p| p.4).collect();
        assert_eq!(seg.len(), 3, "{seg:?}");
        assert!(
            seg.iter().zip([0, 2000, 4000]).all(|(&a, b)| near(a, b)),
            "{seg:?}"
        );
        for (i, part) in parts.iter().enumerate().take(parts.len() - 1) {
            assert!(
                near(part.1.as_millis() as u64, 200),
                "part {i}: {:?}",
                part.1
            );
            // Keyframes land only at part starts, so independence is exact.
            let gop_offset = part.4 % 2000;
            assert_eq!(part.2, gop_offset <= 1 || gop_offset >= 1999, "part {i}");
        }
    }

    #[test]
    fn sps_change_mid_stream_starts_new_epoch() {
        let mut p = Packager::new(PackagerConfig::default());
        p.push_audio(0, aac_hdr()).unwrap();
        p.push_video(0, avc_hdr()).unwrap();
        let mut out = feed_av(&mut p, 0, 0, 45, 30);
        // Identical header re-sent: not a change. Nor is the same SPS/PPS
        // re-serialised without the optional High-profile extension.
        assert!(p.push_video(1500, avc_hdr()).unwrap().is_empty());
        let no_ext = avc_hdr().slice(..avc_hdr().len() - 4);
        assert!(p.push_video(1500, no_ext).unwrap().is_empty());
        let flushed = p.push_video(1500, avc_hdr_640()).unwrap();
        assert_eq!(
            parts(&flushed).len(),
            1,
            "old-config frames flushed at once"
        );
        out.extend(flushed);
        // Inter frames until the next keyframe are dropped.
        out.extend(feed_av(&mut p, 0, 45, 45, 30));
        out.extend(p.flush());
        let inits = inits(&out);
        assert_eq!(inits.len(), 2);
        assert_eq!((inits[1].2, inits[1].3), (640, 360));
        let PackagerOutput::Part {
            starts_segment,
            independent,
            first_dts_ms,
            ..
        } = &out[inits[1].0 + 1]
        else {
            panic!("Init must be followed by a Part");
        };
        assert!(*starts_segment && *independent);
        assert_eq!(*first_dts_ms, 2000);
        let seqs: Vec<u32> = parts(&out).iter().map(|p| inspect(p.0).0).collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    }

    #[test]
    fn timestamps_unwrap_across_u32_wrap() {
        let mut p = Packager::new(PackagerConfig::default());
        let t0 = u32::MAX - 1_500;
        p.push_audio(t0, aac_hdr()).unwrap();
        p.push_video(t0, avc_hdr()).unwrap();
        let mut out = feed_av(&mut p, t0, 0, 120, 30);
        out.extend(p.flush());
        let mut next: HashMap<u32, u64> = HashMap::new();
        let mut video_start = None;
        for part in parts(&out) {
            let (_, runs) = inspect(part.0);
            for r in runs {
                let dur: u64 = r
                    .entries
                    .iter()
                    .map(|e| u64::from(e.duration.unwrap()))
                    .sum();
                if let Some(n) = next.get(&r.track_id) {
                    assert_eq!(r.tfdt, *n, "track {} continuous across wrap", r.track_id);
                }
                next.insert(r.track_id, r.tfdt + dur);
                if r.track_id == 1 {
                    video_start.get_or_insert(r.tfdt);
                }
            }
        }
        assert_eq!(video_start, Some(u64::from(t0) * 90));
        assert!(
            next[&1] > u64::from(u32::MAX) * 90,
            "timeline went past 2^32 ms"
        );
        // Audio stays within a frame of video on the shared timeline.
        let audio_end_ms = next[&2] / 48;
        let video_end_ms = next[&1] / 90;
        assert!(audio_end_ms.abs_diff(video_end_ms) < 100);
    }

    #[test]
    fn small_backward_jump_is_clamped_and_big_jump_rebased() {
        let mut p = Packager::new(PackagerConfig::default());
        p.push_video(0, avc_hdr()).unwrap();
        let mut out = Vec::new();
        let ts = [
            0u32, 33, 67, 60, 100, 133, 167, 200, 233, 5_000_000, 5_000_033, 5_000_067,
        ];
        for (i, t) in ts.iter().enumerate() {
            out.extend(p.push_video(*t, vframe(i == 0, 0, 0)).unwrap());
        }
        out.extend(p.flush());
        let mut expect_tfdt = None;
        let mut total = 0u64;
        for part in parts(&out) {
            let (_, runs) = inspect(part.0);
            if let Some(e) = expect_tfdt {
                assert_eq!(runs[0].tfdt, e);
            }
            let dur: u64 = runs[0]
                .entries
                .iter()
                .map(|e| u64::from(e.duration.unwrap()))
                .sum();
            total += dur;
            expect_tfdt = Some(runs[0].tfdt + dur);
        }
        // 0..233 then the 5e6 jump collapses onto 233: ~300 ms in total,
        // not 83 minutes.
        assert!(total / 90 < 400, "total {} ms", total / 90);
    }

    #[test]
    fn late_audio_track_triggers_reinit_at_next_keyframe() {
        let mut p = Packager::new(PackagerConfig::default());
        p.push_video(0, avc_hdr()).unwrap();
        let mut out = Vec::new();
        for i in 0..90u64 {
            let ts = (i * 1000 / 30) as u32;
            if i == 15 {
                out.extend(p.push_audio(ts, aac_hdr()).unwrap());
            }
            if i >= 15 {
                out.extend(p.push_audio(ts, aframe(0)).unwrap());
            }
            out.extend(p.push_video(ts, vframe(i % 30 == 0, 0, 0)).unwrap());
        }
        let inits = inits(&out);
        assert_eq!(inits.len(), 2, "{inits:?}");
        assert_eq!(inits[0].1, "avc1.64001f");
        assert_eq!(inits[1].1, "avc1.64001f,mp4a.40.2");
        for (i, o) in out.iter().enumerate() {
            if let PackagerOutput::Part {
                data,
                first_dts_ms,
                starts_segment,
                ..
            } = o
            {
                let (_, runs) = inspect(data);
                let after_reinit = i > inits[1].0;
                assert_eq!(runs.len() == 2, after_reinit, "audio only after re-init");
                if i == inits[1].0 + 1 {
                    assert!(*starts_segment);
                    assert_eq!(*first_dts_ms, 1000);
                }
            }
        }
    }

    #[test]
    fn audio_only_stream() {
        let mut p = Packager::new(PackagerConfig::default());
        p.push_audio(0, aac_hdr()).unwrap();
        let mut out = Vec::new();
        // 6 s of 48 kHz AAC.
        for i in 0..281u64 {
            out.extend(
                p.push_audio((i * 1024 * 1000 / 48000) as u32, aframe(0))
                    .unwrap(),
            );
        }
        out.extend(p.flush());
        let inits = inits(&out);
        assert_eq!(inits, vec![(0, "mp4a.40.2", 0, 0)]);
        let parts = parts(&out);
        assert!(parts.len() >= 15);
        let seg: Vec<u64> = parts.iter().filter(|p| p.3).map(|p| p.4).collect();
        assert!(seg.len() >= 3, "{seg:?}");
        for w in seg.windows(2) {
            assert!((w[1] - w[0]).abs_diff(1000) <= 110, "{seg:?}");
        }
        for part in &parts[..parts.len() - 1] {
            assert!(part.2, "audio-only parts are independent");
            assert!(part.1.abs_diff(Duration::from_millis(200)) <= Duration::from_millis(22));
            let (_, runs) = inspect(part.0);
            assert_eq!(runs.len(), 1);
            assert_eq!(runs[0].track_id, AUDIO_TRACK_ID);
        }
    }

    #[test]
    fn audio_buffer_is_bounded_when_video_stalls() {
        let mut p = Packager::new(PackagerConfig::default());
        p.push_audio(0, aac_hdr()).unwrap();
        p.push_video(0, avc_hdr()).unwrap();
        p.push_video(0, vframe(true, 0, 0)).unwrap();
        let mut errors = 0;
        for i in 1..1000u64 {
            match p.push_audio((i * 1024 * 1000 / 48000) as u32, aframe(0)) {
                Err(MediaError::BufferLimit(_)) => errors += 1,
                Err(e) => panic!("{e}"),
                Ok(_) => {}
            }
            assert!(p.audio_queue.len() <= MAX_AUDIO_QUEUE_FRAMES);
            let span = p
                .audio_queue
                .back()
                .map_or(0, |b| b.dts_ms - p.audio_queue[0].dts_ms);
            assert!(span <= MAX_AUDIO_QUEUE_MS);
        }
        assert!(errors >= 2);
        // Video resuming still works.
        let out = p.push_video(21_400, vframe(true, 0, 0)).unwrap();
        assert_eq!(parts(&out).len(), 1);
    }

    #[test]
    fn errors_leave_packager_usable() {
        let mut p = Packager::new(PackagerConfig::default());
        assert_eq!(
            p.push_video(0, vframe(true, 0, 0)),
            Err(MediaError::MissingSequenceHeader("AVC"))
        );
        assert_eq!(
            p.push_audio(0, aframe(0)),
            Err(MediaError::MissingSequenceHeader("AAC"))
        );
        assert!(matches!(
            p.push_video(0, Bytes::from_static(&[0x12, 0])),
            Err(MediaError::UnsupportedVideoCodec(2))
        ));
        p.push_video(0, avc_hdr()).unwrap();
        p.push_audio(0, aac_hdr()).unwrap();
        // Annex-B instead of AVCC is refused, not forwarded to viewers.
        assert!(matches!(
            p.push_video(
                0,
                Bytes::from_static(&[0x17, 1, 0, 0, 0, 0, 0, 0, 1, 0x65, 0x88, 0x84])
            ),
            Err(MediaError::InvalidAvcSample(_))
        ));
        let out = feed_av(&mut p, 0, 0, 10, 30);
        assert!(out.is_empty() || !inits(&out).is_empty());
        assert_eq!(parts(&p.flush()).len() + parts(&out).len(), 2);
    }

    // ---- robustness --------------------------------------------------------

    /// xorshift64*: deterministic, dependency-free.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn mutate(rng: &mut Rng, real: &[u8]) -> Vec<u8> {
        let mut v = if rng.below(4) == 0 {
            let firsts = [0x17, 0x27, 0x57, 0x90, 0x91, 0xA3, 0xAF, 0x9F, 0x00];
            let mut v: Vec<u8> = (0..rng.below(48)).map(|_| rng.next() as u8).collect();
            if let Some(b) = v.first_mut() {
                *b = firsts[rng.below(firsts.len())];
            }
            v
        } else {
            real.to_vec()
        };
        if !v.is_empty() && rng.below(2) == 0 {
            let len = rng.below(v.len() + 1);
            v.truncate(len);
        }
        for _ in 0..rng.below(4) {
            if !v.is_empty() {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
        }
        v
    }

    /// `MEDIA_FUZZ_ITERS=200000 cargo test fuzz` for a longer soak.
    fn fuzz_iters(default: usize) -> usize {
        std::env::var("MEDIA_FUZZ_ITERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    #[test]
    fn fuzz_parsers_and_packager_never_panic() {
        let tags: Vec<FlvTag> = read_flv(FIXTURE)
            .into_iter()
            .filter(|t| t.kind == 8 || t.kind == 9)
            .collect();
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut p = Packager::new(PackagerConfig::default());
        let mut ts = 0u32;
        let mut produced = 0usize;
        for i in 0..fuzz_iters(6000) {
            // Headers are mutated far more often than their share of the
            // stream so SPS/ASC parsing gets real coverage.
            let real = if rng.below(8) == 0 {
                &tags[rng.below(3)]
            } else {
                &tags[rng.below(tags.len())]
            };
            let body = Bytes::from(mutate(&mut rng, &real.body));
            let _ = flv::parse_video_tag(&body);
            let _ = flv::parse_audio_tag(&body);
            if body.len() > 5 {
                let _ = AvcConfig::parse(body.slice(5..));
            }
            if body.len() > 2 {
                let _ = AacConfig::parse(body.slice(2..));
            }
            ts = match rng.below(20) {
                0 => rng.next() as u32,
                1 => ts.wrapping_sub(rng.below(100) as u32),
                _ => ts.wrapping_add(rng.below(40) as u32),
            };
            let r = if real.kind == 9 {
                p.push_video(ts, body)
            } else {
                p.push_audio(ts, body)
            };
            produced += r.map_or(0, |o| o.len());
            // Keep the packager fed with valid tags too so it gets past the
            // header checks into the part/segment logic.
            let r = if real.kind == 9 {
                p.push_video(ts, real.body.clone())
            } else {
                p.push_audio(ts, real.body.clone())
            };
            produced += r.map_or(0, |o| o.len());
            if i % 997 == 0 {
                produced += p.flush().len();
            }
            assert!(p.audio_queue.len() <= MAX_AUDIO_QUEUE_FRAMES);
            assert!(p.part_video.len() <= MAX_PART_SAMPLES);
        }
        assert!(
            produced > 50,
            "fuzz loop never reached packaging ({produced})"
        );
    }

    #[test]
    fn fuzz_sps_bits() {
        // Bit flips inside the SPS exercise h264-reader's SPS parser, which
        // sees publisher bytes directly.
        let record = Bytes::from(hex(SEQ_HDR_852X480)).slice(5..);
        let mut rng = Rng(42);
        let mut ok = 0;
        for _ in 0..fuzz_iters(5000) {
            let mut v = record.to_vec();
            for _ in 0..1 + rng.below(3) {
                let i = 9 + rng.below(26); // the SPS NAL body
                v[i] ^= 1 << rng.below(8);
            }
            if let Ok(c) = AvcConfig::parse(Bytes::from(v)) {
                ok += 1;
                let _ = cmaf::init_segment(Some(&c), None);
            }
        }
        assert!(ok > 0);
    }
}
