//! Publisher time: RTMP's wrapping u32 milliseconds onto one u64 timeline shared by every
//! track, then clamped per track so that durations are never negative.

use super::MAX_TS_JUMP_MS;

/// Maps wrapping u32 RTMP milliseconds onto a u64 timeline shared by all tracks. Deltas are
/// taken against the most recent message of *any* track, which is what keeps audio and video
/// aligned across a u32 wrap.
#[derive(Debug, Default)]
pub(crate) struct Timeline {
    last: Option<(u32, u64)>,
}

impl Timeline {
    pub(crate) fn map(&mut self, raw: u32) -> u64 {
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

/// The shared timeline plus each track's last time: what a tag's timestamp means.
#[derive(Debug, Default)]
pub(super) struct Clock {
    timeline: Timeline,
    last_video_ms: Option<u64>,
    last_audio_ms: Option<u64>,
}

impl Clock {
    /// A video tag's decode time. Mapped even for frames that are dropped, so that the
    /// timeline stays continuous.
    pub fn video(&mut self, raw: u32) -> u64 {
        clamp_monotonic(&mut self.last_video_ms, self.timeline.map(raw))
    }

    pub fn audio(&mut self, raw: u32) -> u64 {
        clamp_monotonic(&mut self.last_audio_ms, self.timeline.map(raw))
    }
}

fn clamp_monotonic(last: &mut Option<u64>, t: u64) -> u64 {
    let t = last.map_or(t, |l| t.max(l));
    *last = Some(t);
    t
}

pub(super) fn ms_to_ticks(ms: u64, rate: u64) -> u64 {
    u64::try_from(u128::from(ms) * u128::from(rate) / 1000).unwrap_or(u64::MAX)
}
