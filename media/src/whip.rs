//! WHIP ingest's adapter onto the RTMP path: frames that a WebRTC stack has depacketized
//! (H.264 access units in Annex B, Opus packets, each with its RTP time) become the FLV tag
//! bodies an RTMP publisher sends. Everything after it — packager, frame tap, recorder, edges —
//! then treats a WHIP class as the RTMP class it is. No IO: frames in, tags out.
//!
//! The timeline: each track's first frame is placed at its arrival (milliseconds since the
//! publish began, given by the caller), and every later frame at that point plus its RTP time
//! since the first. Audio and video thus start in step to within the network's jitter. Once
//! both tracks' RTCP sender reports have come (a second or so in), the audio track is moved
//! once onto the video's place on the sender's own clock ([`RtpToFlv::sender_report`]), which
//! takes the network's jitter out of lip sync; from there both follow their RTP clocks, which
//! never drift apart inside one encoder.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::MediaError;

/// H.264 NAL unit types that matter here.
const NAL_IDR: u8 = 5;
const NAL_SPS: u8 = 7;
const NAL_PPS: u8 = 8;
const NAL_AUD: u8 = 9;

/// Largest access unit taken (a 4K keyframe is well under it).
const MAX_ACCESS_UNIT: usize = 8 << 20;

/// One FLV tag for the ingest path: its millisecond timestamp, body, and whether it is video.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlvTag {
    pub ts_ms: u32,
    pub body: Bytes,
    pub video: bool,
}

#[derive(Debug, Default)]
struct TrackClock {
    /// (first RTP time, its arrival in ms).
    base: Option<(u64, u64)>,
}

impl TrackClock {
    fn ms(&mut self, arrival_ms: u64, rtp: u64, rate: u64) -> u32 {
        let (rtp0, ms0) = *self.base.get_or_insert((rtp, arrival_ms));
        let delta = (rtp as i128 - rtp0 as i128) * 1000 / rate as i128;
        (ms0 as i128 + delta).clamp(0, i128::from(u32::MAX)) as u32
    }
}

/// Depacketized WebRTC media in, FLV tag bodies out.
#[derive(Debug, Default)]
pub struct RtpToFlv {
    video: TrackClock,
    audio: TrackClock,
    /// The parameter sets the last sequence header carried.
    sps: Option<Bytes>,
    pps: Option<Bytes>,
    /// A keyframe with parameter sets has been sent: inter frames may follow.
    video_started: bool,
    audio_started: bool,
    /// Per track, the sender's clock minus our timeline (ms), from its first sender report.
    video_offset: Option<f64>,
    audio_offset: Option<f64>,
    /// The audio track has been put in step with the video by the sender reports.
    synced: bool,
}

impl RtpToFlv {
    pub fn new() -> Self {
        Self::default()
    }

    /// A track's RTCP sender report: `ntp_ms` (the sender's wall clock, Unix ms) was RTP time
    /// `rtp` on that track. When both tracks have reported, the audio's place on the timeline is
    /// corrected once by how far its arrival-based anchor was from the video's on the sender's
    /// clock. Later reports change nothing: one encoder's clocks do not drift apart.
    /// Returns the correction made (ms), the one time it is made.
    pub fn sender_report(&mut self, video: bool, ntp_ms: f64, rtp: u64) -> Option<f64> {
        if self.synced {
            return None;
        }
        let (clock, rate, offset) = if video {
            (&self.video, 90_000.0, &mut self.video_offset)
        } else {
            (&self.audio, 48_000.0, &mut self.audio_offset)
        };
        let (rtp0, ms0) = clock.base?;
        // RTP times are 32-bit on the wire; the report's may lack the extension the frames have.
        let delta = (rtp as u32).wrapping_sub(rtp0 as u32) as i32;
        let at = ms0 as f64 + f64::from(delta) * 1000.0 / rate;
        offset.get_or_insert(ntp_ms - at);
        if let (Some(v), Some(a)) = (self.video_offset, self.audio_offset)
            && let Some((r, m)) = self.audio.base
        {
            self.audio.base = Some((r, (m as f64 + a - v).max(0.0).round() as u64));
            self.synced = true;
            return Some(a - v);
        }
        None
    }

    /// One H.264 access unit in Annex B, at `rtp` (90 kHz). Returns a sequence header first
    /// when the parameter sets are new or changed. Frames before the first keyframe with its
    /// parameter sets are dropped.
    pub fn push_video(
        &mut self,
        arrival_ms: u64,
        rtp: u64,
        annexb: &[u8],
    ) -> Result<Vec<FlvTag>, MediaError> {
        if annexb.len() > MAX_ACCESS_UNIT {
            return Err(MediaError::BufferLimit("WHIP access unit over 8 MiB"));
        }
        let mut key = false;
        let mut avcc = BytesMut::with_capacity(annexb.len() + 16);
        let (mut sps, mut pps) = (None, None);
        for nal in annexb_nals(annexb) {
            match nal[0] & 0x1F {
                NAL_SPS => sps = Some(Bytes::copy_from_slice(nal)),
                NAL_PPS => pps = Some(Bytes::copy_from_slice(nal)),
                NAL_AUD => continue,
                NAL_IDR => key = true,
                _ => {}
            }
            avcc.put_u32(nal.len() as u32);
            avcc.put_slice(nal);
        }
        if avcc.is_empty() {
            return Ok(Vec::new());
        }
        let ts_ms = self.video.ms(arrival_ms, rtp, 90_000);
        let mut out = Vec::new();
        let changed = |new: &Option<Bytes>, old: &Option<Bytes>| new.is_some() && new != old;
        if changed(&sps, &self.sps) || changed(&pps, &self.pps) {
            if let Some(s) = sps {
                self.sps = Some(s);
            }
            if let Some(p) = pps {
                self.pps = Some(p);
            }
            if let (Some(s), Some(p)) = (&self.sps, &self.pps) {
                let record = avc_record(s, p)?;
                out.push(FlvTag {
                    ts_ms,
                    body: video_body(true, 0, &record),
                    video: true,
                });
            }
        }
        if key && self.sps.is_some() && self.pps.is_some() {
            self.video_started = true;
        }
        if !self.video_started {
            return Ok(out);
        }
        out.push(FlvTag {
            ts_ms,
            body: video_body(key, 1, &avcc),
            video: true,
        });
        Ok(out)
    }

    /// One Opus packet at `rtp` (48 kHz). The first one is preceded by the Opus sequence start
    /// (an `OpusHead` for two channels, WebRTC's Opus signalling).
    pub fn push_audio(&mut self, arrival_ms: u64, rtp: u64, packet: &[u8]) -> Vec<FlvTag> {
        if packet.is_empty() || packet.len() > 1500 * 4 {
            return Vec::new();
        }
        let ts_ms = self.audio.ms(arrival_ms, rtp, 48_000);
        let mut out = Vec::with_capacity(2);
        if !self.audio_started {
            self.audio_started = true;
            out.push(FlvTag {
                ts_ms,
                body: opus_body(0, &opus_head()),
                video: false,
            });
        }
        out.push(FlvTag {
            ts_ms,
            body: opus_body(1, packet),
            video: false,
        });
        out
    }
}

/// The NAL units of an Annex B byte stream (3- or 4-byte start codes), without the codes.
fn annexb_nals(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let ends: Vec<usize> = starts
        .iter()
        .skip(1)
        .map(|&s| {
            // The next start code began 3 bytes before its payload, 4 with a leading zero.
            let mut e = s - 3;
            while e > 0 && data[e - 1] == 0 {
                e -= 1;
            }
            e
        })
        .chain(std::iter::once(data.len()))
        .collect();
    starts
        .into_iter()
        .zip(ends)
        .filter(|(s, e)| e > s)
        .map(move |(s, e)| &data[s..e])
}

/// An AVCDecoderConfigurationRecord with one SPS and one PPS and 4-byte NAL lengths.
fn avc_record(sps: &[u8], pps: &[u8]) -> Result<Bytes, MediaError> {
    if sps.len() < 4 || sps.len() > 0xFFFF || pps.is_empty() || pps.len() > 0xFFFF {
        return Err(MediaError::InvalidAvcConfig("WHIP SPS/PPS size"));
    }
    let mut r = BytesMut::with_capacity(11 + sps.len() + pps.len());
    r.put_u8(1);
    r.put_slice(&sps[1..4]);
    r.put_u8(0xFF);
    r.put_u8(0xE1);
    r.put_u16(sps.len() as u16);
    r.put_slice(sps);
    r.put_u8(1);
    r.put_u16(pps.len() as u16);
    r.put_slice(pps);
    Ok(r.freeze())
}

/// A legacy FLV AVC video body: sequence header (`packet` 0) or NAL units (1), no reordering.
fn video_body(key: bool, packet: u8, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + payload.len());
    b.put_u8(if key { 0x17 } else { 0x27 });
    b.put_u8(packet);
    b.put_slice(&[0, 0, 0]);
    b.put_slice(payload);
    b.freeze()
}

/// An Enhanced RTMP `Opus` audio body: SequenceStart (0) or CodedFrames (1).
fn opus_body(packet: u8, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + payload.len());
    b.put_u8(0x90 | packet);
    b.put_slice(b"Opus");
    b.put_slice(payload);
    b.freeze()
}

/// RFC 7845 §5.1: two channels, libopus's usual pre-skip, 48 kHz, no gain, family 0.
fn opus_head() -> Vec<u8> {
    let mut h = b"OpusHead".to_vec();
    h.push(1);
    h.push(2);
    h.extend_from_slice(&312u16.to_le_bytes());
    h.extend_from_slice(&48_000u32.to_le_bytes());
    h.extend_from_slice(&0i16.to_le_bytes());
    h.push(0);
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::avc::tests::{SEQ_HDR_852X480, hex};
    use crate::packager::{Packager, PackagerConfig, PackagerOutput};

    /// The SPS and PPS of the 852x480 fixture, as Annex B, in front of an IDR slice.
    fn keyframe() -> Vec<u8> {
        let rec = hex(SEQ_HDR_852X480);
        let cfg = crate::AvcConfig::parse(Bytes::from(rec[5..].to_vec())).unwrap();
        let mut au = Vec::new();
        for nal in [
            &cfg.sps[0][..],
            &cfg.pps[0][..],
            &[0x65, 0x88, 0x84, 0x00][..],
        ] {
            au.extend_from_slice(&[0, 0, 0, 1]);
            au.extend_from_slice(nal);
        }
        au
    }

    #[test]
    fn annexb_splits_on_three_and_four_byte_codes() {
        let data = [
            0, 0, 0, 1, 9, 0xF0, 0, 0, 1, 0x65, 1, 2, 0, 0, 0, 1, 0x41, 3,
        ];
        let nals: Vec<&[u8]> = annexb_nals(&data).collect();
        assert_eq!(nals, vec![&[9, 0xF0][..], &[0x65, 1, 2], &[0x41, 3]]);
        assert_eq!(annexb_nals(&[]).count(), 0);
        assert_eq!(annexb_nals(&[0, 0, 1]).count(), 0);
    }

    #[test]
    fn whip_frames_package_into_parts_with_both_tracks() {
        let mut a = RtpToFlv::new();
        // Inter frames before the first keyframe are dropped.
        assert!(
            a.push_video(0, 1000, &[0, 0, 0, 1, 0x41, 1])
                .unwrap()
                .is_empty()
        );
        let mut p = Packager::new(PackagerConfig::default());
        let mut out = Vec::new();
        let mut feed = |tags: Vec<FlvTag>, p: &mut Packager| {
            for t in tags {
                let r = if t.video {
                    p.push_video(t.ts_ms, t.body)
                } else {
                    p.push_audio(t.ts_ms, t.body)
                };
                out.extend(r.unwrap());
            }
        };
        // 2 s at 30 fps, a keyframe a second, with 20 ms Opus packets; audio starts 15 ms
        // after video, in RTP time of its own.
        let mut events: Vec<(u64, bool, u64)> = (0..60).map(|f| (f * 100 / 3, true, f)).collect();
        events.extend((0..100).map(|i| (15 + i * 20, false, i)));
        events.sort();
        for (ms, video, n) in events {
            if video {
                let au = if n % 30 == 0 {
                    keyframe()
                } else {
                    vec![0, 0, 0, 1, 0x41, 0x9A, n as u8]
                };
                let tags = a.push_video(ms, 777 + n * 3000, &au).unwrap();
                if n == 0 {
                    assert_eq!(tags.len(), 2, "sequence header, then the keyframe");
                    assert_eq!(tags[0].body[..2], [0x17, 0]);
                }
                feed(tags, &mut p);
            } else {
                feed(a.push_audio(ms, 5 + n * 960, &[0xFC, 0xFF, 0xFE]), &mut p);
            }
        }
        feed(Vec::new(), &mut p);
        let inits: Vec<&String> = out
            .iter()
            .filter_map(|o| match o {
                PackagerOutput::Init { codecs, .. } => Some(codecs),
                _ => None,
            })
            .collect();
        assert_eq!(inits, vec!["avc1.64001f,opus"]);
        let parts = out
            .iter()
            .filter(|o| matches!(o, PackagerOutput::Part { .. }))
            .count();
        assert!(parts >= 9, "{parts} parts");
    }

    #[test]
    fn sender_reports_put_audio_in_step_with_video_once() {
        let mut a = RtpToFlv::new();
        // Both tracks start at the same instant on the sender; the audio's first packet is
        // 40 ms late through the network.
        a.push_video(0, 1_000, &keyframe()).unwrap();
        a.push_audio(40, 5_000, &[0xFC]);
        // Half a second later on the sender's clock (Unix ms 10,000.5 s), reported per track.
        a.sender_report(true, 10_000_500.0, 1_000 + 45_000);
        let before = a.push_audio(600, 5_000 + 24_000, &[0xFC]);
        assert_eq!(before[0].ts_ms, 540, "not corrected on one track's report");
        a.sender_report(false, 10_000_500.0, 5_000 + 24_000);
        let after = a.push_audio(610, 5_000 + 24_000, &[0xFC]);
        assert_eq!(
            after[0].ts_ms, 500,
            "audio at the video's place on the sender's clock"
        );
        let v = a
            .push_video(620, 1_000 + 45_000, &[0, 0, 0, 1, 0x41, 1])
            .unwrap();
        assert_eq!(v[0].ts_ms, 500);
        // Only once: a later report does not move it again.
        a.sender_report(false, 10_001_000.0, 5_000 + 24_000);
        assert_eq!(a.push_audio(700, 5_000 + 24_000, &[0xFC])[0].ts_ms, 500);
    }

    #[test]
    fn timestamps_follow_rtp_from_each_tracks_arrival() {
        let mut c = TrackClock::default();
        assert_eq!(c.ms(100, 90_000, 90_000), 100);
        assert_eq!(c.ms(150, 90_000 + 4_500, 90_000), 150);
        // A frame older than the first clamps at the start of the class, not below.
        assert_eq!(c.ms(0, 0, 90_000), 0);
    }
}
