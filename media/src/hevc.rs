//! H.265 decoder configuration: the HEVCDecoderConfigurationRecord an Enhanced RTMP `hvc1`
//! SequenceStart carries (and the mp4 `hvcC` box re-serialises), plus what the HLS layer needs
//! from the SPS: display size and the RFC 6381 codec string of ISO/IEC 14496-15 Annex E.

use std::num::NonZeroUsize;

use bytes::Bytes;
use h264_reader::rbsp::{BitRead, BitReader, ByteReader};
use mp4_atom::{Atom, Hvcc};

use crate::error::MediaError;

/// NAL unit types inside the record's arrays.
const NAL_SPS: u8 = 33;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HevcConfig {
    /// The record exactly as the publisher sent it.
    pub record: Bytes,
    /// The record parsed, as it goes into the `hvcC` box.
    pub hvcc: Hvcc,
    /// Display size after the SPS conformance window.
    pub width: u32,
    pub height: u32,
}

impl HevcConfig {
    pub fn parse(record: Bytes) -> Result<Self, MediaError> {
        let hvcc = Hvcc::decode_body(&mut &record[..])
            .map_err(|_| MediaError::InvalidVideoConfig("HEVCDecoderConfigurationRecord"))?;
        if hvcc.configuration_version != 1 {
            return Err(MediaError::InvalidVideoConfig(
                "hvcC configurationVersion != 1",
            ));
        }
        if hvcc.length_size_minus_one == 2 {
            return Err(MediaError::InvalidVideoConfig("hvcC NAL length size 3"));
        }
        let sps = hvcc
            .arrays
            .iter()
            .filter(|a| a.nal_unit_type == NAL_SPS)
            .flat_map(|a| a.nalus.iter())
            .next()
            .ok_or(MediaError::InvalidVideoConfig("hvcC without an SPS"))?;
        let (width, height) = sps_display_size(sps)?;
        if width == 0 || height == 0 || width > 16_384 || height > 16_384 {
            return Err(MediaError::InvalidSps(format!(
                "HEVC picture size {width}x{height}"
            )));
        }
        Ok(HevcConfig {
            record,
            hvcc,
            width,
            height,
        })
    }

    pub fn nal_length_size(&self) -> u8 {
        self.hvcc.length_size_minus_one + 1
    }

    /// Parameter sets and NAL length decide decoding; the rest of a re-sent record may differ.
    pub fn same_decoder_config(&self, other: &HevcConfig) -> bool {
        self.hvcc.arrays == other.hvcc.arrays
            && self.hvcc.length_size_minus_one == other.hvcc.length_size_minus_one
    }

    /// `hvc1.<space><profile>.<compatibility>.<tier><level>.<constraints>`, e.g.
    /// `hvc1.1.6.L93.B0` (ISO/IEC 14496-15 Annex E.3).
    pub fn codec_string(&self) -> String {
        let h = &self.hvcc;
        let space = match h.general_profile_space {
            1 => "A",
            2 => "B",
            3 => "C",
            _ => "",
        };
        // The 32 compatibility flags in reverse bit order, in hex without leading zeros.
        let compat = u32::from_be_bytes(h.general_profile_compatibility_flags).reverse_bits();
        let tier = if h.general_tier_flag { 'H' } else { 'L' };
        let mut constraints: &[u8] = &h.general_constraint_indicator_flags;
        while constraints.len() > 1 && constraints.last() == Some(&0) {
            constraints = &constraints[..constraints.len() - 1];
        }
        let constraints: Vec<String> = constraints.iter().map(|b| format!("{b:X}")).collect();
        format!(
            "hvc1.{space}{}.{compat:X}.{tier}{}.{}",
            h.general_profile_idc,
            h.general_level_idc,
            constraints.join(".")
        )
    }
}

/// Reads the SPS (H.265 §7.3.2.2) as far as the conformance window.
fn sps_display_size(sps: &[u8]) -> Result<(u32, u32), MediaError> {
    let bad = |e| MediaError::InvalidSps(format!("HEVC SPS: {e:?}"));
    let two = NonZeroUsize::new(2).expect("two");
    let mut r = BitReader::new(ByteReader::skipping_bytes(sps, two));
    r.skip(4, "sps_video_parameter_set_id").map_err(bad)?;
    let max_sub_layers_minus1: u8 = r.read::<3, u8>("sps_max_sub_layers_minus1").map_err(bad)?;
    r.skip(1, "sps_temporal_id_nesting_flag").map_err(bad)?;
    skip_profile_tier_level(&mut r, max_sub_layers_minus1).map_err(bad)?;
    r.read_ue("sps_seq_parameter_set_id").map_err(bad)?;
    let chroma_format_idc = r.read_ue("chroma_format_idc").map_err(bad)?;
    if chroma_format_idc > 3 {
        return Err(MediaError::InvalidSps(format!(
            "HEVC chroma_format_idc {chroma_format_idc}"
        )));
    }
    let separate_colour_planes =
        chroma_format_idc == 3 && r.read_bit("separate_colour_plane_flag").map_err(bad)?;
    let mut width = r.read_ue("pic_width_in_luma_samples").map_err(bad)?;
    let mut height = r.read_ue("pic_height_in_luma_samples").map_err(bad)?;
    if r.read_bit("conformance_window_flag").map_err(bad)? {
        let left = r.read_ue("conf_win_left_offset").map_err(bad)?;
        let right = r.read_ue("conf_win_right_offset").map_err(bad)?;
        let top = r.read_ue("conf_win_top_offset").map_err(bad)?;
        let bottom = r.read_ue("conf_win_bottom_offset").map_err(bad)?;
        let chroma = if separate_colour_planes {
            0
        } else {
            chroma_format_idc
        };
        let (sub_w, sub_h) = match chroma {
            1 => (2, 2),
            2 => (2, 1),
            _ => (1, 1),
        };
        let crop_w = left.saturating_add(right).saturating_mul(sub_w);
        let crop_h = top.saturating_add(bottom).saturating_mul(sub_h);
        width = width.saturating_sub(crop_w);
        height = height.saturating_sub(crop_h);
    }
    Ok((width, height))
}

/// profile_tier_level(1, maxNumSubLayersMinus1), H.265 §7.3.3: nothing in it is needed here,
/// the record already carries the general profile, tier and level.
fn skip_profile_tier_level<R: BitRead>(
    r: &mut R,
    max_sub_layers_minus1: u8,
) -> Result<(), h264_reader::rbsp::BitReaderError> {
    // general_profile_space … general_level_idc: 2+1+5+32+4+43+1+8 bits.
    r.skip(96, "general_profile_tier_level")?;
    let mut profile_present = [false; 8];
    let mut level_present = [false; 8];
    for i in 0..usize::from(max_sub_layers_minus1) {
        profile_present[i] = r.read_bit("sub_layer_profile_present_flag")?;
        level_present[i] = r.read_bit("sub_layer_level_present_flag")?;
    }
    if max_sub_layers_minus1 > 0 {
        r.skip(
            2 * (8 - u32::from(max_sub_layers_minus1)),
            "reserved_zero_2bits",
        )?;
    }
    for i in 0..usize::from(max_sub_layers_minus1) {
        if profile_present[i] {
            r.skip(88, "sub_layer_profile")?;
        }
        if level_present[i] {
            r.skip(8, "sub_layer_level_idc")?;
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The record x265 (ffmpeg 9, `-c:v libx265`, 320x240) sent in its SequenceStart.
    pub const X265_320X240: &str = include_str!("testdata/hvcc_320x240.hex");

    pub fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn x265_record() {
        let cfg = HevcConfig::parse(Bytes::from(hex(X265_320X240))).unwrap();
        assert_eq!((cfg.width, cfg.height), (320, 240));
        assert_eq!(cfg.nal_length_size(), 4);
        assert_eq!(cfg.codec_string(), "hvc1.1.6.L60.90");
        assert!(cfg.same_decoder_config(&cfg.clone()));
    }

    #[test]
    fn garbage_is_an_error() {
        for bad in [
            &[][..],
            &[1],
            &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16],
        ] {
            assert!(HevcConfig::parse(Bytes::copy_from_slice(bad)).is_err());
        }
        // A valid record truncated anywhere never panics.
        let full = hex(X265_320X240);
        for n in 0..full.len() {
            let _ = HevcConfig::parse(Bytes::copy_from_slice(&full[..n]));
        }
    }
}
