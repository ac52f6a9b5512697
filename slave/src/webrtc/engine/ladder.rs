//! WebRTC viewers of a class sent as a ladder (Enhanced RTMP multitrack): each viewer takes its
//! video from one rendition, chosen by str0m's send-side bandwidth estimate (transport-wide
//! congestion control), and is moved at the next keyframe of another rendition when the
//! estimate says so. No transcoding: every rendition is the teacher encoder's own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::hls::HlsStream;

/// The estimate a session starts with, before any feedback: the rendition under it is where a
/// viewer starts (720p in the usual 1080/720/360 ladder).
pub const INITIAL_ESTIMATE_BPS: u64 = 2_500_000;
/// A rendition fits when its mean bit rate is at most this share of the estimate: the rest is
/// audio, RTP and retransmission overhead, and the estimate's own error.
const HEADROOM: f64 = 0.85;
/// A move up needs more room than staying: the estimator overshoots a capped link's rate while
/// it probes (bench section 15: with 0.85 both ways a viewer behind 1.5 Mbit/s went up to 720p
/// and froze), so the hysteresis keeps a probe's overshoot from moving the viewer.
const UP_HEADROOM: f64 = 0.7;
/// How long the estimate must leave room for a higher rendition before a viewer is moved up,
/// and the least time between two moves up. Down is at once.
const UP_HOLD: Duration = Duration::from_secs(4);

/// One viewer's place in its class's ladder.
pub(super) struct Ladder {
    /// The renditions' feeds (the class's own path for track 0) and mean bit rates, highest
    /// first.
    pub renditions: Vec<(Arc<str>, u64)>,
    /// A rendition to move to at its next keyframe.
    pub switch_to: Option<Arc<str>>,
    up_since: Option<Instant>,
    last_up: Option<Instant>,
}

/// A move decided by [`Ladder::estimate`].
#[derive(Debug, PartialEq)]
pub(super) enum Move {
    Up,
    Down,
}

impl Ladder {
    /// The ladder of `class` as its feeds' paths and bit rates; `None` for a class of one track.
    pub fn of(class: &HlsStream) -> Option<Ladder> {
        let others = class.ladder();
        if others.is_empty() {
            return None;
        }
        // Viewers are sent H.264 (what every browser offers): a rendition in another codec is
        // left out of their ladder.
        let h264 = |s: &HlsStream| s.read().codecs.starts_with("avc1");
        let mut renditions: Vec<(Arc<str>, u64)> =
            std::iter::once((Arc::from(class.path.as_str()), class.average_bandwidth(0)))
                .chain(
                    others
                        .iter()
                        .filter(|(_, s)| h264(s))
                        .map(|(t, s)| (Arc::from(s.path.as_str()), s.average_bandwidth(*t))),
                )
                .collect();
        if renditions.len() < 2 {
            return None;
        }
        renditions.sort_by_key(|(_, b)| std::cmp::Reverse(*b));
        Some(Ladder {
            renditions,
            switch_to: None,
            up_since: None,
            last_up: None,
        })
    }

    /// The rendition that fits `estimate` (bits/s): the highest under it, else the lowest.
    pub fn fitting(&self, estimate: u64) -> Arc<str> {
        let room = estimate as f64 * HEADROOM;
        self.renditions
            .iter()
            .find(|(_, b)| *b as f64 <= room)
            .or(self.renditions.last())
            .map(|(p, _)| p.clone())
            .expect("a ladder has renditions")
    }

    fn bitrate(&self, path: &str) -> u64 {
        self.renditions
            .iter()
            .find(|(p, _)| &**p == path)
            .map_or(0, |(_, b)| *b)
    }

    /// The send-side estimate changed for a viewer whose video now comes from `current`:
    /// whether (and where) to move it. A move is made at the target's next keyframe.
    pub fn estimate(&mut self, current: &Arc<str>, estimate: u64, now: Instant) -> Option<Move> {
        let mut target = self.fitting(estimate);
        // Higher than where the viewer is (or heads): only with the larger room.
        let heading = self.switch_to.clone().unwrap_or_else(|| current.clone());
        if self.bitrate(&target) > self.bitrate(&heading) {
            let up = self.fitting((estimate as f64 * UP_HEADROOM / HEADROOM) as u64);
            target = if self.bitrate(&up) > self.bitrate(&heading) {
                up
            } else {
                heading.clone()
            };
        }
        if target == heading {
            self.up_since = None;
            return None;
        }
        if self.bitrate(&target) < self.bitrate(&heading) {
            self.up_since = None;
            self.switch_to = (target != *current).then_some(target);
            return Some(Move::Down);
        }
        let since = *self.up_since.get_or_insert(now);
        let rested = self.last_up.is_none_or(|t| now - t >= UP_HOLD);
        if now - since >= UP_HOLD && rested {
            self.up_since = None;
            self.last_up = Some(now);
            self.switch_to = (target != *current).then_some(target);
            return Some(Move::Up);
        }
        None
    }

    /// What the estimator probes toward for a viewer on `current`: the next rendition up, with
    /// headroom (the top one's at the top). Probing only one step up keeps the padding a capped
    /// link must absorb to what a move up would need.
    pub fn desired_bps(&self, current: &str) -> u64 {
        let i = self
            .renditions
            .iter()
            .position(|(p, _)| &**p == current)
            .unwrap_or(0);
        let next = &self.renditions[i.saturating_sub(1)];
        (next.1 as f64 / UP_HEADROOM) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ladder() -> Ladder {
        Ladder {
            renditions: vec![
                (Arc::from("live/c"), 3_600_000),
                (Arc::from("live/c/v1"), 1_800_000),
                (Arc::from("live/c/v2"), 650_000),
            ],
            switch_to: None,
            up_since: None,
            last_up: None,
        }
    }

    #[test]
    fn down_at_once_up_only_after_the_estimate_held() {
        let mut l = ladder();
        let (top, mid, low): (Arc<str>, Arc<str>, Arc<str>) =
            ("live/c".into(), "live/c/v1".into(), "live/c/v2".into());
        assert_eq!(l.fitting(INITIAL_ESTIMATE_BPS), mid);
        assert_eq!(l.fitting(100_000), low);
        // Probing goes one step up: from 360p toward 720p, from 720p toward 1080p.
        assert_eq!(l.desired_bps(&low), (1_800_000f64 / UP_HEADROOM) as u64);
        assert_eq!(l.desired_bps(&mid), (3_600_000f64 / UP_HEADROOM) as u64);
        assert_eq!(l.desired_bps(&top), (3_600_000f64 / UP_HEADROOM) as u64);
        let t0 = Instant::now();
        // A 1.5 Mbit/s link: the estimate falls under 720p's rate.
        assert_eq!(l.estimate(&mid, 1_300_000, t0), Some(Move::Down));
        assert_eq!(l.switch_to.as_ref(), Some(&low));
        // Moved (the engine clears `switch_to` at the keyframe).
        l.switch_to = None;
        assert_eq!(l.estimate(&low, 1_300_000, t0), None);
        // 2.2 Mbit/s would hold 720p, but is not room enough to move up to it.
        for s in 0..10 {
            assert_eq!(
                l.estimate(&low, 2_200_000, t0 + Duration::from_secs(s)),
                None
            );
        }
        // Room for the top: not before UP_HOLD.
        assert_eq!(
            l.estimate(&low, 6_000_000, t0 + Duration::from_secs(1)),
            None
        );
        assert_eq!(
            l.estimate(&low, 6_000_000, t0 + Duration::from_secs(3)),
            None
        );
        assert_eq!(
            l.estimate(&low, 6_000_000, t0 + Duration::from_secs(5)),
            Some(Move::Up)
        );
        assert_eq!(l.switch_to.as_ref(), Some(&top));
        // A dip cancels a pending move up.
        assert_eq!(
            l.estimate(&low, 900_000, t0 + Duration::from_secs(6)),
            Some(Move::Down)
        );
        assert_eq!(l.switch_to, None);
    }
}
