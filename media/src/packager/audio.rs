//! The audio queue: AAC frames waiting for a video cut (or forming an audio-only part), and
//! the sample-count timeline their runs follow.

use std::collections::VecDeque;

use bytes::Bytes;

use super::timeline::ms_to_ticks;
use super::{AUDIO_RESYNC_MS, MAX_AUDIO_QUEUE_MS};
use crate::cmaf::{AUDIO_TRACK_ID, Sample, TrackRun};
use crate::error::MediaError;

pub(super) const MAX_AUDIO_QUEUE_FRAMES: usize = 2_000;
const MAX_AUDIO_QUEUE_BYTES: usize = 8 << 20;

#[derive(Debug)]
pub(super) struct AudioFrame {
    pub dts_ms: u64,
    /// Duration in track timescale units (1024 for AAC, from the TOC for Opus).
    pub samples: u32,
    pub data: Bytes,
}

#[derive(Debug, Default)]
pub(super) struct AudioQueue {
    frames: VecDeque<AudioFrame>,
    bytes: usize,
    /// Where the next run's tfdt should be if audio is continuous.
    next_tfdt: Option<u64>,
}

impl AudioQueue {
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Publisher time from the oldest queued frame to the newest.
    #[cfg(test)]
    pub fn span_ms(&self) -> u64 {
        match (self.frames.front(), self.frames.back()) {
            (Some(a), Some(b)) => b.dts_ms - a.dts_ms,
            _ => 0,
        }
    }

    /// Media time buffered, at `rate` Hz.
    pub fn buffered_ms(&self, rate: u32) -> u64 {
        let samples: u64 = self.frames.iter().map(|f| u64::from(f.samples)).sum();
        samples * 1000 / u64::from(rate)
    }

    /// Queues a frame; past the bounds (video stalled, or a hostile publisher) the whole queue
    /// is dropped.
    pub fn push(&mut self, frame: AudioFrame) -> Result<(), MediaError> {
        let span = self
            .frames
            .front()
            .map_or(0, |f| frame.dts_ms.saturating_sub(f.dts_ms));
        if span > MAX_AUDIO_QUEUE_MS
            || self.frames.len() >= MAX_AUDIO_QUEUE_FRAMES
            || self.bytes + frame.data.len() > MAX_AUDIO_QUEUE_BYTES
        {
            self.clear();
            return Err(MediaError::BufferLimit(
                "audio buffered without video to cut a part; dropped",
            ));
        }
        self.bytes += frame.data.len();
        self.frames.push_back(frame);
        Ok(())
    }

    /// Drops every frame and the tfdt continuity (a new epoch or config).
    pub fn clear(&mut self) {
        self.frames.clear();
        self.bytes = 0;
        self.next_tfdt = None;
    }

    /// Forgets the tfdt continuity only (a re-init keeps the queued frames).
    pub fn restart_timeline(&mut self) {
        self.next_tfdt = None;
    }

    /// Takes the frames before `end` (all of them with `None`).
    pub fn take_before(&mut self, end: Option<u64>) -> Vec<AudioFrame> {
        let n = match end {
            Some(end) => self.frames.iter().take_while(|f| f.dts_ms < end).count(),
            None => self.frames.len(),
        };
        let out: Vec<AudioFrame> = self.frames.drain(..n).collect();
        self.bytes = self.frames.iter().map(|f| f.data.len()).sum();
        out
    }

    /// Turns frames into a run whose tfdt continues the previous one by sample count,
    /// resyncing to the publisher's timestamps only when they disagree by more than
    /// [`AUDIO_RESYNC_MS`]. Deriving every tfdt straight from ms timestamps would jitter by up
    /// to 1 ms per part and leave micro-gaps/overlaps that some decoders click on.
    pub fn run(&mut self, frames: Vec<AudioFrame>, rate: u32) -> Option<TrackRun> {
        let first = frames.first()?;
        let rate = u64::from(rate);
        let from_ts = ms_to_ticks(first.dts_ms, rate);
        let tfdt = match self.next_tfdt {
            Some(expected) if expected.abs_diff(from_ts) <= rate * AUDIO_RESYNC_MS / 1000 => {
                expected
            }
            _ => from_ts,
        };
        let ticks: u64 = frames.iter().map(|f| u64::from(f.samples)).sum();
        self.next_tfdt = Some(tfdt.saturating_add(ticks));
        Some(TrackRun {
            track_id: AUDIO_TRACK_ID,
            base_media_decode_time: tfdt,
            samples: frames
                .into_iter()
                .map(|f| Sample {
                    data: f.data,
                    duration: f.samples,
                    composition_offset: 0,
                    is_sync: true,
                })
                .collect(),
        })
    }
}
