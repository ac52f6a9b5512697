//! AAC AudioSpecificConfig (ISO/IEC 14496-3 §1.6.2.1), as carried in the FLV
//! AAC sequence header and, verbatim, in the mp4 `esds` box.

use bytes::Bytes;

use crate::error::MediaError;

/// Samples per AAC access unit. Also true for HE-AAC when counted at the core
/// (AAC-LC) sample rate, which is the rate we use as the track timescale.
pub const SAMPLES_PER_FRAME: u32 = 1024;

const SAMPLE_RATES: [u32; 13] = [
    96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AacConfig {
    /// The AudioSpecificConfig exactly as received; written unchanged into
    /// esds so extensions we don't parse (SBR/PS signalling) survive.
    pub asc: Bytes,
    /// Audio object type (2 = AAC-LC, 5 = HE-AAC, 29 = HE-AACv2, ...).
    pub object_type: u8,
    /// 4-bit sampling frequency index; 0xF means `sample_rate` was explicit.
    pub sample_rate_index: u8,
    /// Core sampling rate in Hz; also the audio track timescale.
    pub sample_rate: u32,
    pub channel_config: u8,
}

impl AacConfig {
    pub fn parse(asc: Bytes) -> Result<Self, MediaError> {
        let mut r = BitReader::new(&asc);
        let mut object_type = r.read(5)? as u8;
        if object_type == 31 {
            object_type = 32 + r.read(6)? as u8;
        }
        if object_type == 0 {
            return Err(MediaError::InvalidAudioConfig("audio object type 0"));
        }
        let sample_rate_index = r.read(4)? as u8;
        let sample_rate = match sample_rate_index {
            0x0F => r.read(24)?,
            i => *SAMPLE_RATES
                .get(usize::from(i))
                .ok_or(MediaError::InvalidAudioConfig(
                    "reserved sampling frequency index",
                ))?,
        };
        // An absurd explicit rate would make the timescale meaningless (and
        // 0 would divide by zero downstream).
        if !(1000..=384_000).contains(&sample_rate) {
            return Err(MediaError::InvalidAudioConfig("sample rate out of range"));
        }
        let channel_config = r.read(4)? as u8;
        Ok(AacConfig {
            asc,
            object_type,
            sample_rate_index,
            sample_rate,
            channel_config,
        })
    }

    /// RFC 6381 codec string, e.g. `mp4a.40.2`.
    pub fn codec_string(&self) -> String {
        format!("mp4a.40.{}", self.object_type)
    }

    /// Channel count for the mp4a sample entry. Decoders take the real layout
    /// from the ASC; this is only informative, so unknown layouts (0 = PCE)
    /// fall back to stereo.
    pub fn channel_count(&self) -> u16 {
        match self.channel_config {
            1..=6 => u16::from(self.channel_config),
            7 | 12 | 14 => 8,
            11 => 7,
            13 => 24,
            _ => 2,
        }
    }
}

/// MSB-first bit reader over a byte slice.
struct BitReader<'a> {
    buf: &'a [u8],
    bit: usize,
}

impl<'a> BitReader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        BitReader { buf, bit: 0 }
    }

    fn read(&mut self, n: u32) -> Result<u32, MediaError> {
        let mut v = 0u32;
        for _ in 0..n {
            let byte = self.buf.get(self.bit / 8).ok_or(MediaError::Truncated {
                what: "AudioSpecificConfig",
                need: self.bit / 8 + 1,
                have: self.buf.len(),
            })?;
            let b = (byte >> (7 - (self.bit % 8))) & 1;
            v = (v << 1) | u32::from(b);
            self.bit += 1;
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: &[u8]) -> Result<AacConfig, MediaError> {
        AacConfig::parse(Bytes::copy_from_slice(v))
    }

    #[test]
    fn lc_44100_mono_with_sbr_sync_extension() {
        // ffmpeg's native encoder: LC, 44.1 kHz, mono, plus a backwards
        // compatible "no SBR" sync extension we must carry but not parse.
        let c = parse(&[0x12, 0x08, 0x56, 0xE5, 0x00]).unwrap();
        assert_eq!(c.object_type, 2);
        assert_eq!(c.sample_rate, 44100);
        assert_eq!(c.sample_rate_index, 4);
        assert_eq!(c.channel_config, 1);
        assert_eq!(c.codec_string(), "mp4a.40.2");
        assert_eq!(c.asc.len(), 5);
    }

    #[test]
    fn lc_48000_stereo() {
        let c = parse(&[0x11, 0x90]).unwrap();
        assert_eq!(
            (c.object_type, c.sample_rate, c.channel_count()),
            (2, 48000, 2)
        );
    }

    #[test]
    fn explicit_rate_and_escape_object_type() {
        // AOT 2, index 0xF, rate 0x00BB80 (48000), channels 2:
        // 00010 1111 000000001011101110000000 0010 ...
        let c = parse(&[0x17, 0x80, 0x5D, 0xC0, 0x10]).unwrap();
        assert_eq!((c.sample_rate_index, c.sample_rate), (0x0F, 48000));
        assert_eq!(c.channel_config, 2);
        // AOT escape: 31 then 6 bits (value 10 -> AOT 42 USAC), index 3, ch 2
        // 11111 001010 0011 0010 -> 1111 1001 0100 0110 010x
        let c = parse(&[0xF9, 0x46, 0x40]).unwrap();
        assert_eq!(c.object_type, 42);
        assert_eq!(c.sample_rate, 48000);
        assert_eq!(c.channel_config, 2);
    }

    #[test]
    fn rejects_bad() {
        assert!(parse(&[]).is_err());
        assert!(parse(&[0x12]).is_err());
        assert!(parse(&[0x00, 0x00]).is_err()); // AOT 0
        assert!(parse(&[0x16, 0x80]).is_err()); // index 13 reserved
        assert!(parse(&[0x17, 0x80, 0x00, 0x00, 0x10]).is_err()); // explicit rate 0
    }
}
