//! AV1 decoder configuration: the AV1CodecConfigurationRecord an Enhanced RTMP `av01`
//! SequenceStart carries (the mp4 `av1C` box body), with the display size read from the
//! sequence header OBU inside it, and the codec string of the AV1 ISOBMFF binding §5.

use bytes::Bytes;
use h264_reader::rbsp::{BitRead, BitReader, BitReaderError};
use mp4_atom::{Atom, Av1c};

use crate::error::MediaError;

const OBU_SEQUENCE_HEADER: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Av1Config {
    pub record: Bytes,
    pub av1c: Av1c,
    /// `max_frame_{width,height}_minus_1 + 1` of the sequence header.
    pub width: u32,
    pub height: u32,
}

impl Av1Config {
    pub fn parse(record: Bytes) -> Result<Self, MediaError> {
        let av1c = Av1c::decode_body(&mut &record[..])
            .map_err(|_| MediaError::InvalidVideoConfig("AV1CodecConfigurationRecord"))?;
        let seq = sequence_header(&av1c.config_obus).ok_or(MediaError::InvalidVideoConfig(
            "av1C without a sequence header OBU",
        ))?;
        let (width, height) = max_frame_size(seq)
            .map_err(|e| MediaError::InvalidSps(format!("AV1 sequence header: {e:?}")))?;
        if width > 16_384 || height > 16_384 {
            return Err(MediaError::InvalidSps(format!(
                "AV1 picture size {width}x{height}"
            )));
        }
        Ok(Av1Config {
            record,
            av1c,
            width,
            height,
        })
    }

    pub fn same_decoder_config(&self, other: &Av1Config) -> bool {
        self.av1c == other.av1c
    }

    /// `av01.<profile>.<level><tier>.<bit depth>`, e.g. `av01.0.04M.08`.
    pub fn codec_string(&self) -> String {
        let c = &self.av1c;
        let depth = match (c.high_bitdepth, c.twelve_bit) {
            (true, true) => 12,
            (true, false) => 10,
            _ => 8,
        };
        let tier = if c.seq_tier_0 { 'H' } else { 'M' };
        format!(
            "av01.{}.{:02}{tier}.{depth:02}",
            c.seq_profile, c.seq_level_idx_0
        )
    }
}

/// The payload of the first sequence header OBU in `obus` (low-overhead format, sizes present).
fn sequence_header(mut obus: &[u8]) -> Option<&[u8]> {
    while let Some(&header) = obus.first() {
        let obu_type = (header >> 3) & 0x0F;
        let has_extension = header & 0x04 != 0;
        let has_size = header & 0x02 != 0;
        let mut at = 1 + usize::from(has_extension);
        let size = if has_size {
            let (size, n) = leb128(obus.get(at..)?)?;
            at += n;
            usize::try_from(size).ok()?
        } else {
            obus.len().checked_sub(at)?
        };
        let payload = obus.get(at..at.checked_add(size)?)?;
        if obu_type == OBU_SEQUENCE_HEADER {
            return Some(payload);
        }
        obus = &obus[at + size..];
    }
    None
}

fn leb128(b: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, byte) in b.iter().take(8).enumerate() {
        value |= u64::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// sequence_header_obu() (AV1 §5.5.1) as far as max_frame_height_minus_1.
fn max_frame_size(seq: &[u8]) -> Result<(u32, u32), BitReaderError> {
    let mut r = BitReader::new(seq);
    r.skip(3, "seq_profile")?;
    r.skip(1, "still_picture")?;
    let reduced = r.read_bit("reduced_still_picture_header")?;
    if reduced {
        r.skip(5, "seq_level_idx[0]")?;
    } else {
        let mut decoder_model_info = false;
        let mut buffer_delay_bits = 0u32;
        if r.read_bit("timing_info_present_flag")? {
            r.skip(64, "num_units_in_display_tick, time_scale")?;
            if r.read_bit("equal_picture_interval")? {
                uvlc(&mut r)?;
            }
            decoder_model_info = r.read_bit("decoder_model_info_present_flag")?;
            if decoder_model_info {
                buffer_delay_bits = r.read::<5, u32>("buffer_delay_length_minus_1")? + 1;
                r.skip(32 + 5 + 5, "decoder_model_info")?;
            }
        }
        let initial_display_delay = r.read_bit("initial_display_delay_present_flag")?;
        let operating_points = r.read::<5, u32>("operating_points_cnt_minus_1")? + 1;
        for _ in 0..operating_points {
            r.skip(12, "operating_point_idc")?;
            let level = r.read::<5, u8>("seq_level_idx")?;
            if level > 7 {
                r.skip(1, "seq_tier")?;
            }
            if decoder_model_info && r.read_bit("decoder_model_present_for_this_op")? {
                r.skip(2 * buffer_delay_bits + 1, "operating_parameters_info")?;
            }
            if initial_display_delay && r.read_bit("initial_display_delay_present_for_this_op")? {
                r.skip(4, "initial_display_delay_minus_1")?;
            }
        }
    }
    let width_bits = r.read::<4, u32>("frame_width_bits_minus_1")? + 1;
    let height_bits = r.read::<4, u32>("frame_height_bits_minus_1")? + 1;
    let width: u32 = r.read_var(width_bits, "max_frame_width_minus_1")?;
    let height: u32 = r.read_var(height_bits, "max_frame_height_minus_1")?;
    Ok((width + 1, height + 1))
}

/// uvlc() (AV1 §4.10.3).
fn uvlc<R: BitRead>(r: &mut R) -> Result<u32, BitReaderError> {
    let mut zeros = 0u32;
    while !r.read_bit("uvlc leading zero")? {
        zeros += 1;
        if zeros >= 32 {
            return Ok(u32::MAX);
        }
    }
    if zeros == 0 {
        return Ok(0);
    }
    let v: u32 = r.read_var(zeros, "uvlc value")?;
    Ok(v + ((1u32 << zeros) - 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hevc::tests::hex;

    /// The record SVT-AV1 (ffmpeg 9, `-c:v libsvtav1`, 320x240) sent in its SequenceStart.
    const SVT_320X240: &str = include_str!("testdata/av1c_320x240.hex");

    #[test]
    fn svt_av1_record() {
        let cfg = Av1Config::parse(Bytes::from(hex(SVT_320X240))).unwrap();
        assert_eq!((cfg.width, cfg.height), (320, 240));
        assert_eq!(cfg.codec_string(), "av01.0.00M.08");
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(Av1Config::parse(Bytes::from_static(&[0x81, 0, 0, 0])).is_err());
        assert!(Av1Config::parse(Bytes::new()).is_err());
        let full = hex(SVT_320X240);
        for n in 0..full.len() {
            let _ = Av1Config::parse(Bytes::copy_from_slice(&full[..n]));
        }
    }
}
