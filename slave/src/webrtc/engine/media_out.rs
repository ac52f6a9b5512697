//! What the engine writes to viewers: a stream's feed (started by the first session that takes
//! it), each item (configs, frames, audio) to every connected viewer of that stream, and a newly
//! connected viewer's start at the latest GOP.
//! A child of the engine's module, so it works on the engine's own state.

use std::sync::Arc;

use media::frames::TapItem;
use str0m::media::{Frequency, MediaTime};

use super::Engine;
use crate::webrtc::feed::Feed;
use crate::webrtc::transcode::{OPUS_RATE, OpusTranscoder};

impl Engine {
    /// One more session takes `stream`'s frames: its feed starts with the first.
    pub(super) fn subscribe(&mut self, stream: &Arc<crate::hls::HlsStream>) {
        let path: Arc<str> = stream.path.as_str().into();
        if !self.streams.contains_key(&path) {
            let forwarder = tokio::spawn(crate::webrtc::feed::forward(
                stream.clone(),
                path.clone(),
                self.feed_tx.clone(),
            ));
            self.streams.insert(
                path.clone(),
                crate::webrtc::feed::StreamFeed {
                    forwarder,
                    avc: None,
                    opus: None,
                    opus_passthrough: false,
                    gop: Vec::new(),
                    epoch: None,
                    sessions: 0,
                },
            );
            self.ctx.metrics.opus_transcoders.inc();
        }
        self.streams.get_mut(&path).expect("inserted").sessions += 1;
    }

    /// A session just connected: the stream's latest GOP, so the picture comes at once.
    pub(super) fn start(&mut self, id: &str) {
        let Some(s) = self.sessions.get_mut(id) else {
            return;
        };
        let Some(feed) = self.streams.get_mut(&s.video_path) else {
            return;
        };
        let Some((mid, pt)) = s.video else {
            return;
        };
        let gop = feed.gop.clone();
        let class = class_of(&s.video_path).to_string();
        for (pts_ms, au) in gop {
            let Some(wall) = self
                .streams
                .get_mut(class.as_str())
                .map(|c| c.wallclock(pts_ms))
            else {
                return;
            };
            if let Some(w) = s.rtc.writer(mid)
                && w.write(pt, wall, MediaTime::from_90khz(pts_ms * 90), au)
                    .is_ok()
            {
                s.video_started = true;
            }
        }
        let id = id.to_string();
        self.drive(&id);
    }

    /// One item of a stream's feed, written to every connected session of that stream.
    pub(super) fn feed(&mut self, path: &Arc<str>, f: Feed) {
        let Some(feed) = self.streams.get_mut(path) else {
            return;
        };
        let item = match f {
            Feed::Lagged => {
                feed.gop.clear();
                for s in self
                    .sessions
                    .values_mut()
                    .filter(|s| s.video_path == *path && s.publisher.is_none())
                {
                    s.video_started = false;
                }
                return;
            }
            Feed::Item(i) => i,
        };
        match &*item {
            TapItem::VideoConfig(rec) => {
                feed.avc = media::AvcConfig::parse(rec.clone()).ok();
                feed.gop.clear();
            }
            // An Opus publisher's packets need no transcoder; AAC is transcoded once per stream.
            TapItem::AudioConfig(head) if head.starts_with(b"OpusHead") => {
                feed.opus = None;
                feed.opus_passthrough = true;
            }
            TapItem::AudioConfig(asc) => {
                feed.opus_passthrough = false;
                match OpusTranscoder::new(asc) {
                    Ok(t) => feed.opus = Some(t),
                    Err(e) => {
                        tracing::warn!(%path, error = %e, "no Opus for this stream's audio; WebRTC viewers get video only");
                        feed.opus = None;
                    }
                }
            }
            TapItem::Audio(a) if feed.opus_passthrough => {
                let wall = feed.wallclock(a.pts_ms);
                let rtp = MediaTime::new(a.pts_ms * 48, Frequency::FORTY_EIGHT_KHZ);
                let ids = self.write_audio(path, wall, rtp, Arc::from(&a.data[..]));
                self.drive_all(ids);
            }
            TapItem::Video(v) => {
                if v.cts_ms != 0 {
                    // B-frames: no browser decodes them in order. Close; players fall back.
                    for s in self
                        .sessions
                        .values_mut()
                        .filter(|s| s.video_path == *path && s.publisher.is_none())
                    {
                        s.rtc.disconnect();
                    }
                    return;
                }
                let Some(avc) = &feed.avc else { return };
                let ps = v
                    .keyframe
                    .then_some((avc.sps.as_slice(), avc.pps.as_slice()));
                let Ok(au) = media::frames::avcc_to_annexb(&v.data, avc.nal_length_size, ps) else {
                    return;
                };
                let au: Arc<[u8]> = au.into();
                if v.keyframe {
                    feed.gop.clear();
                }
                if (v.keyframe || !feed.gop.is_empty()) && feed.gop.len() < 600 {
                    feed.gop.push((v.dts_ms, au.clone()));
                }
                // A rendition's video is timed on its class's clock, as the audio is.
                let own = feed.wallclock(v.dts_ms);
                let class = class_of(path);
                let wall = match self.streams.get_mut(class) {
                    Some(c) if class != &**path => c.wallclock(v.dts_ms),
                    _ => own,
                };
                let rtp = MediaTime::from_90khz(v.dts_ms * 90);
                if v.keyframe {
                    self.move_at_keyframe(path);
                }
                let ids = self.write_all(
                    |s| s.video_path == *path,
                    |s| {
                        let Some((mid, pt)) = s.video else {
                            return false;
                        };
                        if !s.video_started && !v.keyframe {
                            return false;
                        }
                        s.video_started = true;
                        s.rtc
                            .writer(mid)
                            .is_some_and(|w| w.write(pt, wall, rtp, au.clone()).is_ok())
                    },
                );
                self.drive_all(ids);
            }
            TapItem::Audio(a) => {
                let Some(opus) = feed.opus.as_mut() else {
                    return;
                };
                let packets = match opus.push(a.pts_ms, &a.data) {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::debug!(%path, error = %e, "an AAC frame did not decode");
                        return;
                    }
                };
                let timed: Vec<_> = packets
                    .into_iter()
                    .map(|p| {
                        let wall = feed.wallclock(p.pts * 1000 / u64::from(OPUS_RATE));
                        let rtp = MediaTime::new(p.pts, Frequency::FORTY_EIGHT_KHZ);
                        (wall, rtp, Arc::<[u8]>::from(&p.data[..]))
                    })
                    .collect();
                let mut ids = Vec::new();
                for (wall, rtp, data) in timed {
                    ids = self.write_audio(path, wall, rtp, data);
                }
                self.drive_all(ids);
            }
        }
    }

    /// A keyframe of `path` came: viewers waiting to move to that rendition take their video
    /// from it from this frame on.
    fn move_at_keyframe(&mut self, path: &Arc<str>) {
        for s in self.sessions.values_mut() {
            let Some(l) = s.ladder.as_mut() else { continue };
            if l.switch_to.as_ref() != Some(path) {
                continue;
            }
            l.switch_to = None;
            let up = l.renditions.iter().position(|(p, _)| p == path)
                < l.renditions.iter().position(|(p, _)| *p == s.video_path);
            s.video_path = path.clone();
            let desired = str0m::bwe::Bitrate::bps(l.desired_bps(path));
            s.rtc.bwe().set_desired_bitrate(desired);
            self.ctx
                .metrics
                .webrtc_rendition_switches
                .with_label_values(&[if up { "up" } else { "down" }])
                .inc();
        }
    }

    /// One Opus packet to every connected viewer of `path` with audio; the ones written to.
    fn write_audio(
        &mut self,
        path: &Arc<str>,
        wall: std::time::Instant,
        rtp: MediaTime,
        data: Arc<[u8]>,
    ) -> Vec<String> {
        self.write_all(
            |s| s.path == *path,
            |s| {
                let Some((mid, pt)) = s.audio else {
                    return false;
                };
                s.rtc
                    .writer(mid)
                    .is_some_and(|w| w.write(pt, wall, rtp, data.clone()).is_ok())
            },
        )
    }
}

/// The class a feed belongs to: a rendition's path is `live/<name>/v<track>`.
fn class_of(path: &str) -> &str {
    match path.rsplit_once('/') {
        Some((class, _)) if crate::hls::store::is_rendition_path(path) => class,
        _ => path,
    }
}
