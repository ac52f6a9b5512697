//! The decoder configurations the packager handles, one enum per track kind, so that the
//! packager, the init segment writer and the playlist ask one type for a codec string, a
//! picture size or a timescale whatever the publisher sent.

use bytes::Bytes;

use crate::aac::{AacConfig, SAMPLES_PER_FRAME};
use crate::av1::Av1Config;
use crate::avc::AvcConfig;
use crate::error::MediaError;
use crate::flv::{AudioCodec, VideoCodec};
use crate::hevc::HevcConfig;
use crate::opus::{self, OPUS_RATE, OpusConfig};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VideoConfig {
    Avc(AvcConfig),
    Hevc(HevcConfig),
    Av1(Av1Config),
}

impl VideoConfig {
    pub fn parse(codec: VideoCodec, record: Bytes) -> Result<Self, MediaError> {
        Ok(match codec {
            VideoCodec::Avc => VideoConfig::Avc(AvcConfig::parse(record)?),
            VideoCodec::Hevc => VideoConfig::Hevc(HevcConfig::parse(record)?),
            VideoCodec::Av1 => VideoConfig::Av1(Av1Config::parse(record)?),
        })
    }

    pub fn codec(&self) -> VideoCodec {
        match self {
            VideoConfig::Avc(_) => VideoCodec::Avc,
            VideoConfig::Hevc(_) => VideoCodec::Hevc,
            VideoConfig::Av1(_) => VideoCodec::Av1,
        }
    }

    /// Whether `other` decodes the same way: a re-sent header must not start a new init.
    pub fn same_decoder_config(&self, other: &VideoConfig) -> bool {
        match (self, other) {
            (VideoConfig::Avc(a), VideoConfig::Avc(b)) => a.same_decoder_config(b),
            (VideoConfig::Hevc(a), VideoConfig::Hevc(b)) => a.same_decoder_config(b),
            (VideoConfig::Av1(a), VideoConfig::Av1(b)) => a.same_decoder_config(b),
            _ => false,
        }
    }

    /// RFC 6381 codec string for the playlist's CODECS.
    pub fn codec_string(&self) -> String {
        match self {
            VideoConfig::Avc(c) => c.codec_string(),
            VideoConfig::Hevc(c) => c.codec_string(),
            VideoConfig::Av1(c) => c.codec_string(),
        }
    }

    pub fn size(&self) -> (u32, u32) {
        match self {
            VideoConfig::Avc(c) => (c.width, c.height),
            VideoConfig::Hevc(c) => (c.width, c.height),
            VideoConfig::Av1(c) => (c.width, c.height),
        }
    }

    /// Refuses a sample a browser's decoder would choke on. AVC and HEVC samples are
    /// length-prefixed NAL units; an AV1 sample is a run of OBUs, only checked for being there.
    pub fn validate_sample(&self, data: &[u8]) -> Result<(), MediaError> {
        match self {
            VideoConfig::Avc(c) => c.validate_sample(data),
            VideoConfig::Hevc(c) => crate::avc::validate_length_prefixed(data, c.nal_length_size()),
            VideoConfig::Av1(_) if data.is_empty() => {
                Err(MediaError::InvalidAvcSample("empty access unit"))
            }
            VideoConfig::Av1(_) => Ok(()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AudioConfig {
    Aac(AacConfig),
    Opus(OpusConfig),
}

impl AudioConfig {
    pub fn parse(codec: AudioCodec, header: Bytes) -> Result<Self, MediaError> {
        Ok(match codec {
            AudioCodec::Aac => AudioConfig::Aac(AacConfig::parse(header)?),
            AudioCodec::Opus => AudioConfig::Opus(OpusConfig::parse(header)?),
        })
    }

    pub fn codec(&self) -> AudioCodec {
        match self {
            AudioConfig::Aac(_) => AudioCodec::Aac,
            AudioConfig::Opus(_) => AudioCodec::Opus,
        }
    }

    /// The header bytes as sent: equal bytes, same decoder.
    pub fn header(&self) -> &Bytes {
        match self {
            AudioConfig::Aac(c) => &c.asc,
            AudioConfig::Opus(c) => &c.head,
        }
    }

    pub fn codec_string(&self) -> String {
        match self {
            AudioConfig::Aac(c) => c.codec_string(),
            AudioConfig::Opus(c) => c.codec_string().to_string(),
        }
    }

    /// The track's timescale: the sample rate.
    pub fn timescale(&self) -> u32 {
        match self {
            AudioConfig::Aac(c) => c.sample_rate,
            AudioConfig::Opus(_) => OPUS_RATE,
        }
    }

    /// Samples (in [`Self::timescale`] units) in one access unit.
    pub fn frame_samples(&self, frame: &[u8]) -> Result<u32, MediaError> {
        match self {
            AudioConfig::Aac(_) => Ok(SAMPLES_PER_FRAME),
            AudioConfig::Opus(_) => opus::packet_samples(frame),
        }
    }
}
