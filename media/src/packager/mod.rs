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

mod audio;
#[cfg(test)]
mod tests;
pub(crate) mod timeline;
mod video;

use std::time::Duration;

use bytes::Bytes;

use self::audio::{AudioFrame, AudioQueue};
use self::timeline::Clock;
use self::video::{VideoCutter, VideoFrame};
use crate::cmaf::{self, TrackRun};
use crate::codec::{AudioConfig, VideoConfig};
use crate::error::MediaError;
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
/// Samples in one part at most, for publishers whose timestamps never advance.
const MAX_PART_SAMPLES: usize = 1_000;

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

/// What a cut part is made of before it is muxed: its runs, duration, whether it starts with
/// a keyframe, and its first sample's publisher time.
type BuiltPart = (Vec<TrackRun>, Duration, bool, u64);

/// Sans-IO FLV → CMAF packager: epochs, inits and segments here; the video part cutter, the
/// audio queue and the timeline each own their state in their own module.
#[derive(Debug)]
pub struct Packager {
    part_target_ms: u64,
    segment_target_ms: u64,
    clock: Clock,
    video_cfg: Option<VideoConfig>,
    audio_cfg: Option<AudioConfig>,
    mode: Mode,
    /// `None` until the current epoch's Init has been emitted.
    init_sent: Option<InitTracks>,
    /// Audio appeared after the epoch's Init went out without it: start a
    /// new epoch at the next keyframe instead of dropping a GOP now.
    reinit_at_keyframe: bool,
    /// Any video message ever seen; rules out audio-only mode.
    video_seen: bool,
    audio_probe_start_ms: Option<u64>,
    video: VideoCutter,
    /// Audio waiting for a cut (video mode) or forming the open part
    /// (audio-only mode).
    audio: AudioQueue,
    part_starts_segment: bool,
    segment_start_ms: u64,
    sequence_number: u32,
}

impl Packager {
    pub fn new(cfg: PackagerConfig) -> Self {
        Packager {
            // Zero targets would cut on every frame; one ms is the same
            // behaviour without special cases.
            part_target_ms: (cfg.part_target.as_millis() as u64).max(1),
            segment_target_ms: (cfg.segment_target.as_millis() as u64).max(1),
            clock: Clock::default(),
            video_cfg: None,
            audio_cfg: None,
            mode: Mode::AwaitKeyframe,
            init_sent: None,
            reinit_at_keyframe: false,
            video_seen: false,
            audio_probe_start_ms: None,
            video: VideoCutter::default(),
            audio: AudioQueue::default(),
            part_starts_segment: false,
            segment_start_ms: 0,
            sequence_number: 1,
        }
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
            VideoPacket::SequenceHeader(record) => self.on_video_config(tag.codec, record),
            VideoPacket::Frame {
                composition_time_ms,
                data,
            } => {
                if self.video_cfg.as_ref().map(VideoConfig::codec) != Some(tag.codec) {
                    return Err(MediaError::MissingSequenceHeader(tag.codec.name()));
                }
                self.on_video_frame(ts_ms, key, composition_time_ms, data)
            }
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
            AudioPacket::SequenceHeader(header) => self.on_audio_config(tag.codec, header),
            AudioPacket::Raw(data) => {
                if self.audio_cfg.as_ref().map(AudioConfig::codec) != Some(tag.codec) {
                    return Err(MediaError::MissingSequenceHeader(tag.codec.name()));
                }
                self.on_audio_frame(ts_ms, data)
            }
            AudioPacket::Ignored => Ok(Vec::new()),
        }
    }

    /// Publisher left: emit whatever is buffered as a final part. Feeding
    /// more afterwards starts a new epoch (new Init, discontinuity).
    pub fn flush(&mut self) -> Vec<PackagerOutput> {
        let out = self.emit_part(None);
        self.restart_epoch();
        out
    }

    fn on_video_config(
        &mut self,
        codec: crate::flv::VideoCodec,
        record: Bytes,
    ) -> Result<Vec<PackagerOutput>, MediaError> {
        let cfg = VideoConfig::parse(codec, record)?;
        if self
            .video_cfg
            .as_ref()
            .is_some_and(|c| c.same_decoder_config(&cfg))
        {
            // OBS and friends re-send headers; not a change.
            return Ok(Vec::new());
        }
        // Prove it can be muxed now, so the lazy Init later cannot fail.
        cmaf::init_segment(Some(&cfg), self.audio_cfg.as_ref())?;
        let mut out = Vec::new();
        if self.mode != Mode::AwaitKeyframe {
            let (width, height) = cfg.size();
            tracing::info!(codec = %cfg.codec_string(), width, height,
                "video sequence header changed mid-stream; starting new epoch");
            // Buffered frames belong to the old parameter sets and the old init.
            out = self.emit_part(None);
            self.restart_epoch();
        }
        self.video_cfg = Some(cfg);
        Ok(out)
    }

    fn on_audio_config(
        &mut self,
        codec: crate::flv::AudioCodec,
        header: Bytes,
    ) -> Result<Vec<PackagerOutput>, MediaError> {
        let cfg = AudioConfig::parse(codec, header)?;
        if self
            .audio_cfg
            .as_ref()
            .is_some_and(|c| c.header() == cfg.header())
        {
            return Ok(Vec::new());
        }
        cmaf::init_segment(self.video_cfg.as_ref(), Some(&cfg))?;
        let mut out = Vec::new();
        match (self.mode, self.init_sent) {
            (Mode::AwaitKeyframe, _) => {}
            // Epoch running but its Init not out yet: the Init will carry the
            // new config; frames queued under the old one must not.
            (_, None) => self.audio.clear(),
            (Mode::Video, Some(tracks)) if !tracks.audio => {
                tracing::info!(
                    "audio track appeared after video started; re-init at next keyframe"
                );
                self.reinit_at_keyframe = true;
            }
            (_, Some(_)) => {
                tracing::info!("audio sequence header changed mid-stream; starting new epoch");
                out = self.emit_part(None);
                self.restart_epoch();
            }
        }
        self.audio_cfg = Some(cfg);
        Ok(out)
    }

    fn on_video_frame(
        &mut self,
        ts_ms: u32,
        key: bool,
        cts_ms: i32,
        data: Bytes,
    ) -> Result<Vec<PackagerOutput>, MediaError> {
        let dts_ms = self.clock.video(ts_ms);
        let video_cfg = self
            .video_cfg
            .as_ref()
            .ok_or(MediaError::MissingSequenceHeader("video"))?;
        video_cfg.validate_sample(&data)?;
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
            self.video.start_epoch_at(dts_ms);
            self.open_part(dts_ms, true);
            self.video.push(frame);
            return Ok(self.cut_if_full());
        }

        let mut out = Vec::new();
        self.video.observe(dts_ms);
        let seg_elapsed = dts_ms.saturating_sub(self.segment_start_ms);
        let new_segment = key
            && (self.reinit_at_keyframe
                || seg_elapsed + self.video.tolerance_ms() >= self.segment_target_ms);
        if self.video.cut_before(&frame, self.part_target_ms) {
            out = self.emit_part(Some(dts_ms));
        }
        if self.video.is_empty() {
            if new_segment && self.reinit_at_keyframe {
                self.reinit_at_keyframe = false;
                self.init_sent = None;
                self.audio.restart_timeline();
                self.video.restart_timeline();
            }
            self.open_part(dts_ms, new_segment);
        }
        self.video.push(frame);
        out.extend(self.cut_if_full());
        Ok(out)
    }

    /// Cuts the open part as soon as it is full (see [`VideoCutter::full_at`]).
    fn cut_if_full(&mut self) -> Vec<PackagerOutput> {
        match self.video.full_at(self.part_target_ms) {
            Some(end) => self.emit_part(Some(end)),
            None => Vec::new(),
        }
    }

    fn open_part(&mut self, first_dts_ms: u64, starts_segment: bool) {
        self.part_starts_segment = starts_segment;
        if starts_segment {
            self.segment_start_ms = first_dts_ms;
        }
    }

    fn on_audio_frame(
        &mut self,
        ts_ms: u32,
        data: Bytes,
    ) -> Result<Vec<PackagerOutput>, MediaError> {
        let dts_ms = self.clock.audio(ts_ms);
        let audio_cfg = self
            .audio_cfg
            .as_ref()
            .ok_or(MediaError::MissingSequenceHeader("audio"))?;
        let rate = audio_cfg.timescale();
        if data.is_empty() {
            return Ok(Vec::new());
        }
        let samples = audio_cfg.frame_samples(&data)?;
        let frame = AudioFrame {
            dts_ms,
            samples,
            data,
        };
        match self.mode {
            Mode::AwaitKeyframe => {
                if self.video_seen || self.video_cfg.is_some() {
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
                self.audio.push(frame)?;
                Ok(Vec::new())
            }
            Mode::Video => {
                if self.init_sent.is_some_and(|t| !t.audio) {
                    // The running epoch has no audio track; wait for re-init.
                    return Ok(Vec::new());
                }
                self.audio.push(frame)?;
                Ok(Vec::new())
            }
            Mode::AudioOnly => {
                let frame_ms = u64::from(samples) * 1000 / u64::from(rate);
                let tol = frame_ms / 2;
                if self.audio.is_empty() {
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
                self.audio.push(frame)?;
                if self.audio.buffered_ms(rate) + tol >= self.part_target_ms
                    || self.audio.len() >= MAX_PART_SAMPLES
                {
                    return Ok(self.emit_part(None));
                }
                Ok(Vec::new())
            }
        }
    }

    /// End the current epoch: the next part needs a fresh Init and starts a
    /// segment.
    fn restart_epoch(&mut self) {
        self.video.reset();
        self.audio.clear();
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

    fn build_video_part(&mut self, end_ms: Option<u64>) -> Option<BuiltPart> {
        let Some(v) = self.video.cut(end_ms) else {
            // The part was cut when its last frame came; at a flush, audio that arrived since
            // (the tail after the last video frame) still goes out, as a part of its own.
            return match end_ms {
                None => self.build_audio_only_part(),
                Some(_) => None,
            };
        };
        let mut runs = vec![v.run];
        let audio = self.audio.take_before(end_ms);
        if let Some(cfg) = &self.audio_cfg
            && let Some(run) = self.audio.run(audio, cfg.timescale())
        {
            runs.push(run);
        }
        Some((
            runs,
            Duration::from_millis(v.duration_ms),
            v.independent,
            v.first_dts_ms,
        ))
    }

    fn build_audio_only_part(&mut self) -> Option<BuiltPart> {
        let frames = self.audio.take_before(None);
        let first_dts = frames.first()?.dts_ms;
        let rate = self.audio_cfg.as_ref()?.timescale();
        let ticks: u64 = frames.iter().map(|f| u64::from(f.samples)).sum();
        let duration =
            Duration::from_nanos((u128::from(ticks) * 1_000_000_000 / u128::from(rate)) as u64);
        let run = self.audio.run(frames, rate)?;
        Some((vec![run], duration, true, first_dts))
    }

    fn make_init(&mut self) -> Result<PackagerOutput, MediaError> {
        let video = match self.mode {
            Mode::Video => self.video_cfg.as_ref(),
            _ => None,
        };
        let audio = self.audio_cfg.as_ref();
        let data = cmaf::init_segment(video, audio)?;
        let codecs: Vec<String> = video
            .map(VideoConfig::codec_string)
            .into_iter()
            .chain(audio.map(AudioConfig::codec_string))
            .collect();
        let (width, height) = video.map_or((0, 0), VideoConfig::size);
        self.init_sent = Some(InitTracks {
            audio: audio.is_some(),
        });
        Ok(PackagerOutput::Init {
            data,
            codecs: codecs.join(","),
            width,
            height,
        })
    }
}
