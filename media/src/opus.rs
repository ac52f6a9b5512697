//! Opus in CMAF (the Opus-in-ISOBMFF encapsulation): the identification header an Enhanced
//! RTMP `Opus` SequenceStart carries (`OpusHead`, RFC 7845 §5.1) becomes the `dOps` box, and
//! each packet's duration comes from its TOC byte (RFC 6716 §3.1).

use bytes::Bytes;
use mp4_atom::{Dops, OpusChannelMapping};

use crate::error::MediaError;

/// Opus always decodes at 48 kHz; its CMAF track uses that timescale.
pub const OPUS_RATE: u32 = 48_000;
/// A packet carries at most 120 ms.
const MAX_PACKET_SAMPLES: u32 = 5_760;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpusConfig {
    /// `OpusHead` exactly as the publisher sent it.
    pub head: Bytes,
    pub dops: Dops,
}

impl OpusConfig {
    pub fn parse(head: Bytes) -> Result<Self, MediaError> {
        let bad = MediaError::InvalidAudioConfig;
        if head.len() < 19 || &head[..8] != b"OpusHead" {
            return Err(bad("not an OpusHead"));
        }
        if head[8] >> 4 != 0 {
            return Err(bad("OpusHead version"));
        }
        let channels = head[9];
        if channels == 0 {
            return Err(bad("OpusHead with no channels"));
        }
        let family = head[18];
        let channel_mapping = if family == 0 {
            if channels > 2 {
                return Err(bad("mapping family 0 with more than 2 channels"));
            }
            None
        } else {
            let table = head
                .get(19..21 + usize::from(channels))
                .ok_or(bad("OpusHead channel mapping table truncated"))?;
            Some(OpusChannelMapping {
                family,
                stream_count: table[0],
                coupled_count: table[1],
                channel_mapping: table[2..].to_vec(),
            })
        };
        let dops = Dops {
            output_channel_count: channels,
            pre_skip: u16::from_le_bytes([head[10], head[11]]),
            input_sample_rate: u32::from_le_bytes([head[12], head[13], head[14], head[15]]),
            output_gain: i16::from_le_bytes([head[16], head[17]]),
            channel_mapping,
        };
        // Encoding checks the mapping table the way a demuxer would.
        let mut scratch = Vec::new();
        mp4_atom::Encode::encode(&dops, &mut scratch)
            .map_err(|_| bad("OpusHead channel mapping table is inconsistent"))?;
        Ok(OpusConfig { head, dops })
    }

    pub fn channel_count(&self) -> u16 {
        u16::from(self.dops.output_channel_count)
    }

    pub fn codec_string(&self) -> &'static str {
        "opus"
    }
}

/// Samples (at 48 kHz) in one Opus packet, from its TOC byte and, for code 3, its frame count.
pub fn packet_samples(packet: &[u8]) -> Result<u32, MediaError> {
    let toc = *packet
        .first()
        .ok_or(MediaError::InvalidAudioConfig("empty Opus packet"))?;
    let config = toc >> 3;
    let frame = match config {
        // SILK-only: 10, 20, 40, 60 ms.
        0..=11 => [480, 960, 1920, 2880][usize::from(config & 3)],
        // Hybrid: 10, 20 ms.
        12..=15 => [480, 960][usize::from(config & 1)],
        // CELT-only: 2.5, 5, 10, 20 ms.
        _ => [120, 240, 480, 960][usize::from(config & 3)],
    };
    let frames = match toc & 3 {
        0 => 1,
        1 | 2 => 2,
        _ => u32::from(
            packet.get(1).ok_or(MediaError::InvalidAudioConfig(
                "Opus code 3 without a count",
            ))? & 0x3F,
        ),
    };
    let samples = frame * frames;
    if samples == 0 || samples > MAX_PACKET_SAMPLES {
        return Err(MediaError::InvalidAudioConfig("Opus packet duration"));
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hevc::tests::hex;

    /// The OpusHead libopus (ffmpeg 9) sent in its SequenceStart: mono, pre-skip 312, 48 kHz.
    const LIBOPUS_HEAD: &str = include_str!("testdata/opus_head.hex");

    #[test]
    fn libopus_head() {
        let cfg = OpusConfig::parse(Bytes::from(hex(LIBOPUS_HEAD))).unwrap();
        assert_eq!(cfg.channel_count(), 1);
        assert_eq!(cfg.dops.pre_skip, 312);
        assert_eq!(cfg.dops.input_sample_rate, 48_000);
        assert!(cfg.dops.channel_mapping.is_none());
        assert!(OpusConfig::parse(Bytes::from_static(b"OpusTags\x01\x01")).is_err());
        let full = hex(LIBOPUS_HEAD);
        for n in 0..full.len() {
            assert!(OpusConfig::parse(Bytes::copy_from_slice(&full[..n])).is_err());
        }
    }

    #[test]
    fn packet_durations() {
        // CELT 20 ms, one frame (what libopus sends by default).
        assert_eq!(packet_samples(&[0xF8]).unwrap(), 960);
        // SILK 60 ms, two frames.
        assert_eq!(packet_samples(&[(3 << 3) | 1]).unwrap(), 5_760);
        // CELT 2.5 ms, code 3 with 4 frames.
        assert_eq!(packet_samples(&[(16 << 3) | 3, 4]).unwrap(), 480);
        // Code 3 over 120 ms is invalid.
        assert!(packet_samples(&[(3 << 3) | 3, 3]).is_err());
        assert!(packet_samples(&[]).is_err());
    }
}
