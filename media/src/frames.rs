//! Frames one by one, for players that take them as they arrive (WebRTC) rather than in LL-HLS
//! parts. [`FrameTap`] turns FLV tag bodies into [`TapItem`]s without copying a sample; the
//! wire codec ([`encode_item`], [`ItemDecoder`]) carries them from an origin to its edges.
//! No IO here: the slave pushes bytes in and takes items out.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::MediaError;
use crate::flv::{self, AudioPacket, VideoPacket};
// The packager's own RTMP clock, so that frames and parts agree on every timestamp.
use crate::packager::timeline::Timeline;

/// One thing a frame consumer needs, in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TapItem {
    /// An AVCDecoderConfigurationRecord: what the frames after it decode with.
    VideoConfig(Bytes),
    /// An AAC AudioSpecificConfig, or an Opus identification header (`OpusHead`).
    AudioConfig(Bytes),
    Video(VideoFrame),
    Audio(AudioFrame),
}

/// One access unit, length-prefixed (AVCC) as RTMP carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoFrame {
    /// Decode time on the stream's millisecond timeline.
    pub dts_ms: u64,
    /// Presentation minus decode time. Not zero only when the encoder reorders frames.
    pub cts_ms: i32,
    pub keyframe: bool,
    pub data: Bytes,
}

/// One raw AAC access unit (1024 samples) or one Opus packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioFrame {
    pub pts_ms: u64,
    pub data: Bytes,
}

/// FLV tag bodies in, frames out. Tracks whether the encoder uses B-frames (a composition
/// offset other than zero), which browsers' WebRTC decoders cannot play in order.
#[derive(Debug, Default)]
pub struct FrameTap {
    timeline: Timeline,
    bframes: bool,
}

impl FrameTap {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn has_bframes(&self) -> bool {
        self.bframes
    }

    pub fn push_video(&mut self, ts: u32, body: &Bytes) -> Result<Option<TapItem>, MediaError> {
        let tag = flv::parse_video_tag(body)?;
        // WebRTC viewers are sent H.264 only; other codecs reach them over LL-HLS.
        if tag.codec != flv::VideoCodec::Avc {
            return Ok(None);
        }
        let keyframe = tag.is_keyframe();
        Ok(match tag.packet {
            VideoPacket::SequenceHeader(rec) => Some(TapItem::VideoConfig(rec)),
            VideoPacket::Frame {
                composition_time_ms,
                data,
            } if !data.is_empty() => {
                if composition_time_ms != 0 {
                    self.bframes = true;
                }
                Some(TapItem::Video(VideoFrame {
                    dts_ms: self.timeline.map(ts),
                    cts_ms: composition_time_ms,
                    keyframe,
                    data,
                }))
            }
            _ => None,
        })
    }

    pub fn push_audio(&mut self, ts: u32, body: &Bytes) -> Result<Option<TapItem>, MediaError> {
        let tag = flv::parse_audio_tag(body)?;
        // AAC is transcoded by the WebRTC feed, Opus passes through; both reach it.
        Ok(match tag.packet {
            AudioPacket::SequenceHeader(asc) => Some(TapItem::AudioConfig(asc)),
            AudioPacket::Raw(data) if !data.is_empty() => Some(TapItem::Audio(AudioFrame {
                pts_ms: self.timeline.map(ts),
                data,
            })),
            AudioPacket::Raw(_) | AudioPacket::Ignored => None,
        })
    }
}

/// Writes an AVCC access unit as Annex B (start codes), with the configuration's SPS and PPS
/// in front of a keyframe so that a decoder can start there (RFC 6184 in-band parameter sets).
pub fn avcc_to_annexb(
    data: &[u8],
    nal_length_size: u8,
    parameter_sets: Option<(&[Bytes], &[Bytes])>,
) -> Result<Vec<u8>, MediaError> {
    const START: [u8; 4] = [0, 0, 0, 1];
    let n = usize::from(nal_length_size);
    if !(1..=4).contains(&n) {
        return Err(MediaError::InvalidAvcSample("NAL length size"));
    }
    let mut out = Vec::with_capacity(data.len() + 64);
    if let Some((sps, pps)) = parameter_sets {
        for ps in sps.iter().chain(pps) {
            out.extend_from_slice(&START);
            out.extend_from_slice(ps);
        }
    }
    let mut rest = data;
    while !rest.is_empty() {
        if rest.len() < n {
            return Err(MediaError::InvalidAvcSample("truncated NAL length"));
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        rest = &rest[n..];
        if len > rest.len() {
            return Err(MediaError::InvalidAvcSample(
                "NAL longer than the access unit",
            ));
        }
        // Access unit delimiters and in-band parameter sets of the encoder's own are kept:
        // decoders take them, and dropping them would only cost a scan.
        out.extend_from_slice(&START);
        out.extend_from_slice(&rest[..len]);
        rest = &rest[len..];
    }
    Ok(out)
}

/// The largest item the wire codec carries: far above any access unit an encoder sends a
/// classroom, far below what would let a peer make us buffer without bound.
pub const MAX_WIRE_ITEM: usize = 8 << 20;
const HEADER: usize = 1 + 1 + 8 + 4 + 4;

/// One item as `kind u8 | flags u8 | time u64 | cts i32 | len u32 | data` (big-endian).
pub fn encode_item(item: &TapItem, out: &mut BytesMut) {
    let (kind, flags, time, cts, data) = match item {
        TapItem::VideoConfig(d) => (0u8, 0u8, 0u64, 0i32, d),
        TapItem::AudioConfig(d) => (1, 0, 0, 0, d),
        TapItem::Video(v) => (2, u8::from(v.keyframe), v.dts_ms, v.cts_ms, &v.data),
        TapItem::Audio(a) => (3, 0, a.pts_ms, 0, &a.data),
    };
    out.reserve(HEADER + data.len());
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u64(time);
    out.put_i32(cts);
    out.put_u32(data.len() as u32);
    out.put_slice(data);
}

/// Push bytes as they come off the connection, take whole items out.
#[derive(Debug, Default)]
pub struct ItemDecoder {
    buf: BytesMut,
}

impl ItemDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole item; `Ok(None)` until one has arrived. An error leaves the decoder
    /// unusable: the connection is to be dropped.
    pub fn next_item(&mut self) -> Result<Option<TapItem>, MediaError> {
        if self.buf.len() < HEADER {
            return Ok(None);
        }
        let h = &self.buf[..HEADER];
        let kind = h[0];
        let flags = h[1];
        let time = u64::from_be_bytes(h[2..10].try_into().expect("8 bytes"));
        let cts = i32::from_be_bytes(h[10..14].try_into().expect("4 bytes"));
        let len = u32::from_be_bytes(h[14..18].try_into().expect("4 bytes")) as usize;
        if len > MAX_WIRE_ITEM {
            return Err(MediaError::InvalidFrameStream("frame item too large"));
        }
        if kind > 3 || flags > 1 {
            return Err(MediaError::InvalidFrameStream("unknown frame item"));
        }
        if self.buf.len() < HEADER + len {
            return Ok(None);
        }
        let _ = self.buf.split_to(HEADER);
        let data = self.buf.split_to(len).freeze();
        Ok(Some(match kind {
            0 => TapItem::VideoConfig(data),
            1 => TapItem::AudioConfig(data),
            2 => TapItem::Video(VideoFrame {
                dts_ms: time,
                cts_ms: cts,
                keyframe: flags == 1,
                data,
            }),
            _ => TapItem::Audio(AudioFrame { pts_ms: time, data }),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeline_continues_across_the_u32_wrap() {
        let mut t = Timeline::default();
        assert_eq!(t.map(u32::MAX - 10), u64::from(u32::MAX - 10));
        assert_eq!(t.map(5), u64::from(u32::MAX) + 6);
        // A small step back is a step back, not a wrap.
        assert_eq!(t.map(3), u64::from(u32::MAX) + 4);
    }

    #[test]
    fn annexb_puts_parameter_sets_before_a_keyframe() {
        let au = [0, 0, 0, 2, 0x65, 0xAA, 0, 0, 0, 1, 0x06];
        let sps = [Bytes::from_static(&[0x67, 1])];
        let pps = [Bytes::from_static(&[0x68, 2])];
        let out = avcc_to_annexb(&au, 4, Some((&sps, &pps))).unwrap();
        assert_eq!(
            out,
            [
                0, 0, 0, 1, 0x67, 1, 0, 0, 0, 1, 0x68, 2, 0, 0, 0, 1, 0x65, 0xAA, 0, 0, 0, 1, 0x06
            ]
        );
        assert!(avcc_to_annexb(&[0, 0, 0, 9, 1], 4, None).is_err());
        assert!(avcc_to_annexb(&au, 0, None).is_err());
    }

    #[test]
    fn bframes_are_recognised_by_their_composition_offset() {
        let mut tap = FrameTap::new();
        // Keyframe, AVC NALU, cts 0, one NAL.
        let key = Bytes::from_static(&[0x17, 1, 0, 0, 0, 0, 0, 0, 1, 0x65]);
        let Some(TapItem::Video(v)) = tap.push_video(40, &key).unwrap() else {
            panic!("a frame")
        };
        assert!(v.keyframe && v.dts_ms == 40 && !tap.has_bframes());
        let reordered = Bytes::from_static(&[0x27, 1, 0, 0, 80, 0, 0, 0, 1, 0x41]);
        tap.push_video(80, &reordered).unwrap();
        assert!(tap.has_bframes());
    }

    #[test]
    fn wire_items_round_trip_in_any_chunking() {
        let items = vec![
            TapItem::VideoConfig(Bytes::from_static(b"avcC")),
            TapItem::AudioConfig(Bytes::from_static(&[0x12, 0x10])),
            TapItem::Video(VideoFrame {
                dts_ms: 1 << 40,
                cts_ms: -3,
                keyframe: true,
                data: Bytes::from(vec![7u8; 3000]),
            }),
            TapItem::Audio(AudioFrame {
                pts_ms: 99,
                data: Bytes::from_static(b"aac"),
            }),
        ];
        let mut wire = BytesMut::new();
        for i in &items {
            encode_item(i, &mut wire);
        }
        for chunk in [1, 7, 4096] {
            let mut d = ItemDecoder::new();
            let mut got = Vec::new();
            for c in wire.chunks(chunk) {
                d.push(c);
                while let Some(i) = d.next_item().unwrap() {
                    got.push(i);
                }
            }
            assert_eq!(got, items);
        }
    }

    #[test]
    fn a_huge_or_unknown_item_is_refused_before_it_is_buffered() {
        let mut d = ItemDecoder::new();
        let mut h = vec![2u8, 0];
        h.extend_from_slice(&[0; 12]);
        h.extend_from_slice(&(MAX_WIRE_ITEM as u32 + 1).to_be_bytes());
        d.push(&h);
        assert!(d.next_item().is_err());
        let mut d = ItemDecoder::new();
        d.push(&[9u8; HEADER]);
        assert!(d.next_item().is_err());
    }
}
