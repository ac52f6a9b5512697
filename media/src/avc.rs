//! H.264 decoder configuration: the AVCDecoderConfigurationRecord carried in
//! the FLV sequence header (and, re-serialised, in the mp4 `avcC` box), plus
//! what the HLS layer needs from the SPS: display size and codec string.

use bytes::Bytes;
use h264_reader::nal::Nal;
use h264_reader::nal::RefNal;
use h264_reader::nal::sps::SeqParameterSet;

use crate::error::MediaError;

/// High-profile family `profile_idc`s whose avcC may carry the chroma /
/// bit-depth extension (ISO/IEC 14496-15 §5.3.3.1.2).
const HIGH_PROFILES: [u8; 4] = [100, 110, 122, 144];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvcConfigExt {
    pub chroma_format: u8,
    pub bit_depth_luma: u8,
    pub bit_depth_chroma: u8,
    pub sps_ext: Vec<Bytes>,
}

/// A parsed, validated AVCDecoderConfigurationRecord.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvcConfig {
    /// The record exactly as the publisher sent it. Used to detect a changed
    /// sequence header (publishers re-send identical ones routinely).
    pub record: Bytes,
    pub profile_idc: u8,
    pub constraint_flags: u8,
    pub level_idc: u8,
    /// Size of the NAL length prefix in samples (1, 2 or 4).
    pub nal_length_size: u8,
    pub sps: Vec<Bytes>,
    pub pps: Vec<Bytes>,
    pub ext: Option<AvcConfigExt>,
    /// Display size after SPS cropping (e.g. 852x480, not the coded 864x480).
    pub width: u32,
    pub height: u32,
}

impl AvcConfig {
    /// Parse an AVCDecoderConfigurationRecord and the first SPS in it.
    pub fn parse(record: Bytes) -> Result<Self, MediaError> {
        let mut r = Reader::new(&record);
        let version = r.u8("configurationVersion")?;
        if version != 1 {
            return Err(MediaError::InvalidAvcConfig("configurationVersion != 1"));
        }
        // The record's own profile/level bytes are skipped on purpose: the SPS
        // is authoritative and some muxers write stale values here.
        r.skip(3, "profile/level")?;
        let nal_length_size = (r.u8("lengthSizeMinusOne")? & 0x03) + 1;
        if nal_length_size == 3 {
            return Err(MediaError::InvalidAvcConfig("NAL length size 3"));
        }
        let num_sps = r.u8("numOfSequenceParameterSets")? & 0x1F;
        let mut sps = Vec::with_capacity(usize::from(num_sps));
        for _ in 0..num_sps {
            let len = usize::from(r.u16("sequenceParameterSetLength")?);
            let (start, end) = r.range(len, "sequenceParameterSetNALUnit")?;
            sps.push(record.slice(start..end));
        }
        let num_pps = r.u8("numOfPictureParameterSets")?;
        let mut pps = Vec::with_capacity(usize::from(num_pps));
        for _ in 0..num_pps {
            let len = usize::from(r.u16("pictureParameterSetLength")?);
            let (start, end) = r.range(len, "pictureParameterSetNALUnit")?;
            pps.push(record.slice(start..end));
        }
        let first_sps = sps
            .first()
            .ok_or(MediaError::InvalidAvcConfig("no SPS"))?
            .clone();
        if pps.is_empty() {
            return Err(MediaError::InvalidAvcConfig("no PPS"));
        }
        if first_sps.len() < 4 || first_sps[0] & 0x1F != 7 {
            return Err(MediaError::InvalidAvcConfig("first SPS is not an SPS NAL"));
        }
        let (profile_idc, constraint_flags, level_idc) = (first_sps[1], first_sps[2], first_sps[3]);

        // Many encoders omit the extension or write garbage there; it is
        // optional for decoders, so a malformed one is dropped, not fatal.
        let ext = if HIGH_PROFILES.contains(&profile_idc) && r.remaining() > 0 {
            parse_ext(&mut r, &record).ok()
        } else {
            None
        };

        let parsed = parse_sps(&first_sps)?;
        let (width, height) = parsed
            .pixel_dimensions()
            .map_err(|e| MediaError::InvalidSps(format!("{e:?}")))?;
        if width == 0 || height == 0 || width > u32::from(u16::MAX) || height > u32::from(u16::MAX)
        {
            return Err(MediaError::InvalidSps(format!(
                "unusable dimensions {width}x{height}"
            )));
        }

        Ok(AvcConfig {
            record,
            profile_idc,
            constraint_flags,
            level_idc,
            nal_length_size,
            sps,
            pps,
            ext,
            width,
            height,
        })
    }

    /// Whether `other` configures the decoder identically. Publishers re-send
    /// sequence headers (some before every keyframe) and may re-serialise
    /// them slightly differently (e.g. with/without the High-profile
    /// extension); only a change in parameter sets or NAL length size
    /// warrants a new init segment and a playlist discontinuity.
    pub fn same_decoder_config(&self, other: &AvcConfig) -> bool {
        self.sps == other.sps
            && self.pps == other.pps
            && self.nal_length_size == other.nal_length_size
    }

    /// RFC 6381 codec string, e.g. `avc1.64001f`.
    pub fn codec_string(&self) -> String {
        format!(
            "avc1.{:02x}{:02x}{:02x}",
            self.profile_idc, self.constraint_flags, self.level_idc
        )
    }

    /// Check that an AVCC access unit is a clean sequence of length-prefixed
    /// NAL units. A browser's MSE decoder treats a corrupt sample as a fatal
    /// error for the whole session, so garbage is refused here instead of
    /// being forwarded to every viewer.
    pub fn validate_sample(&self, data: &[u8]) -> Result<(), MediaError> {
        validate_length_prefixed(data, self.nal_length_size)
    }
}

/// Checks that an access unit is a clean run of NAL units, each behind a big-endian length of
/// `length_size` bytes (AVCC for H.264, the same form for HEVC).
pub fn validate_length_prefixed(data: &[u8], length_size: u8) -> Result<(), MediaError> {
    let n = usize::from(length_size);
    if data.is_empty() {
        return Err(MediaError::InvalidAvcSample("empty access unit"));
    }
    let mut pos = 0usize;
    while pos < data.len() {
        let prefix = data
            .get(pos..pos + n)
            .ok_or(MediaError::InvalidAvcSample("truncated NAL length prefix"))?;
        let len = prefix
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        if len == 0 {
            return Err(MediaError::InvalidAvcSample("zero-length NAL unit"));
        }
        pos = pos
            .checked_add(n)
            .and_then(|p| p.checked_add(len))
            .ok_or(MediaError::InvalidAvcSample("NAL length overflow"))?;
        if pos > data.len() {
            return Err(MediaError::InvalidAvcSample("NAL unit overruns sample"));
        }
    }
    Ok(())
}

fn parse_sps(sps: &[u8]) -> Result<SeqParameterSet, MediaError> {
    let parse = |bytes: &[u8]| {
        SeqParameterSet::from_bits(RefNal::new(bytes, &[], true).rbsp_bits())
            .map_err(|e| MediaError::InvalidSps(format!("{e:?}")))
    };
    match parse(sps) {
        Ok(parsed) => Ok(parsed),
        Err(first_err) => {
            // h264-reader refuses frame sizes above the MaxFS of the declared
            // level, and some encoders under-declare their level. Decoders
            // don't care, and refusing the whole stream over a label would
            // be worse, so retry as level 6.2 (the largest limits) on a
            // scratch copy. Byte 3 is level_idc and precedes any
            // emulation-prevention bytes, so patching it is safe.
            let mut relabelled = sps.to_vec();
            if let Some(level) = relabelled.get_mut(3) {
                *level = 62;
            }
            let parsed = parse(&relabelled).map_err(|_| first_err.clone())?;
            tracing::warn!(error = %first_err, "SPS violates its declared level; accepted anyway");
            Ok(parsed)
        }
    }
}

fn parse_ext(r: &mut Reader<'_>, record: &Bytes) -> Result<AvcConfigExt, MediaError> {
    let chroma_format = r.u8("chroma_format")? & 0x03;
    let bit_depth_luma = (r.u8("bit_depth_luma")? & 0x07) + 8;
    let bit_depth_chroma = (r.u8("bit_depth_chroma")? & 0x07) + 8;
    let n = r.u8("numOfSequenceParameterSetExt")?;
    let mut sps_ext = Vec::with_capacity(usize::from(n));
    for _ in 0..n {
        let len = usize::from(r.u16("sequenceParameterSetExtLength")?);
        let (start, end) = r.range(len, "sequenceParameterSetExtNALUnit")?;
        sps_ext.push(record.slice(start..end));
    }
    Ok(AvcConfigExt {
        chroma_format,
        bit_depth_luma,
        bit_depth_chroma,
        sps_ext,
    })
}

/// Minimal bounds-checked big-endian cursor.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn range(&mut self, n: usize, what: &'static str) -> Result<(usize, usize), MediaError> {
        if self.remaining() < n {
            return Err(MediaError::Truncated {
                what,
                need: n,
                have: self.remaining(),
            });
        }
        let start = self.pos;
        self.pos += n;
        Ok((start, self.pos))
    }

    fn skip(&mut self, n: usize, what: &'static str) -> Result<(), MediaError> {
        self.range(n, what).map(|_| ())
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, MediaError> {
        let (s, _) = self.range(1, what)?;
        Ok(self.buf[s])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, MediaError> {
        let (s, _) = self.range(2, what)?;
        Ok(u16::from_be_bytes([self.buf[s], self.buf[s + 1]]))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// x264 852x480 High@3.1 sequence header body (FLV tag body, 5-byte AVC
    /// header included) as produced by `ffmpeg -f lavfi -i
    /// testsrc=size=852x480 -c:v libx264 -f flv`. 852 is not a multiple of
    /// 16, so the SPS carries frame cropping (coded width 864).
    pub const SEQ_HDR_852X480: &str = "17000000000164001fffe1001a6764001facd940d83de7f0110000030001000003003c0f18319601000468ef8fcbfdf8f800";

    pub fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn cropped_sps_852x480() {
        let body = hex(SEQ_HDR_852X480);
        let cfg = AvcConfig::parse(Bytes::copy_from_slice(&body[5..])).unwrap();
        assert_eq!((cfg.width, cfg.height), (852, 480));
        assert_eq!(cfg.codec_string(), "avc1.64001f");
        assert_eq!(cfg.nal_length_size, 4);
        assert_eq!(cfg.sps.len(), 1);
        assert_eq!(cfg.pps.len(), 1);
        let ext = cfg
            .ext
            .expect("x264 High profile writes the avcC extension");
        assert_eq!(
            (ext.chroma_format, ext.bit_depth_luma, ext.bit_depth_chroma),
            (1, 8, 8)
        );
    }

    #[test]
    fn under_declared_level_is_tolerated() {
        // 852x480 (1620 MBs) labelled level 1.0 (MaxFS 99).
        let mut body = hex(SEQ_HDR_852X480);
        body[5 + 11] = 10;
        let record = Bytes::from(body).slice(5..);
        let sps = &record[8..8 + 26];
        assert_eq!(sps[3], 10);
        assert!(
            SeqParameterSet::from_bits(RefNal::new(sps, &[], true).rbsp_bits()).is_err(),
            "h264-reader alone refuses it"
        );
        let cfg = AvcConfig::parse(record).unwrap();
        assert_eq!((cfg.width, cfg.height), (852, 480));
        assert_eq!(cfg.codec_string(), "avc1.64000a", "signalled level is kept");
    }

    #[test]
    fn rejects_bad_records() {
        let body = hex(SEQ_HDR_852X480);
        let record = &body[5..];
        for len in 0..record.len() - 4 {
            // Every truncation that cuts into SPS/PPS must fail cleanly;
            // cutting only the optional extension is allowed to succeed.
            let r = AvcConfig::parse(Bytes::copy_from_slice(&record[..len]));
            if len < 6 + 2 + 26 + 1 + 2 + 4 {
                assert!(r.is_err(), "len {len} should fail");
            }
        }
        let mut bad = record.to_vec();
        bad[0] = 2;
        assert!(AvcConfig::parse(Bytes::from(bad)).is_err());
    }

    #[test]
    fn validate_sample() {
        let body = hex(SEQ_HDR_852X480);
        let cfg = AvcConfig::parse(Bytes::copy_from_slice(&body[5..])).unwrap();
        assert!(cfg.validate_sample(&[0, 0, 0, 2, 0x65, 0x88]).is_ok());
        assert!(
            cfg.validate_sample(&[0, 0, 0, 2, 0x65, 0x88, 0, 0, 0, 1, 0x06])
                .is_ok()
        );
        assert!(cfg.validate_sample(&[0, 0, 0, 3, 0x65, 0x88]).is_err());
        assert!(cfg.validate_sample(&[0, 0, 0, 1, 0x65, 0]).is_err());
        assert!(cfg.validate_sample(&[0, 0, 0, 0]).is_err());
        assert!(cfg.validate_sample(&[]).is_err());
        // Annex-B start code instead of a length prefix.
        assert!(
            cfg.validate_sample(&[0, 0, 0, 1, 0x65, 0x88, 0x84])
                .is_err()
        );
    }
}
