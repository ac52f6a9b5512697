//! FLV VIDEODATA / AUDIODATA *body* parsing (the payload of an RTMP audio or
//! video message, i.e. an FLV tag without its 11-byte tag header).
//!
//! This sits directly on publisher-controlled bytes, so every accessor is
//! bounds-checked and every unknown value becomes a [`MediaError`]; nothing
//! here may panic. Payloads are returned as [`Bytes`] slices of the input so
//! sample data is never copied on its way to the mdat.
//!
//! Both the legacy header (`FrameType:4 | CodecID:4`) and the Enhanced RTMP v2
//! header (`IsExHeader:1 | FrameType:3 | PacketType:4 | [ModEx…] | FourCC:32`)
//! are recognised: video `avc1`, `hvc1`, `av01`; audio `mp4a`, `Opus`. Any
//! other codec, and multitrack packets, come back as errors for which
//! [`MediaError::unsupported`] names the reason, so the ingest can refuse the
//! publish instead of dropping every message without a word.

use bytes::Bytes;

use crate::error::MediaError;

/// FLV video frame type (the high nibble of the first body byte, or bits 4..6
/// with the enhanced header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoFrameType {
    Key,
    Inter,
    DisposableInter,
    GeneratedKey,
    /// "Video info / command frame": carries no picture.
    Command,
}

impl VideoFrameType {
    fn from_bits(v: u8) -> Result<Self, MediaError> {
        Ok(match v {
            1 => Self::Key,
            2 => Self::Inter,
            3 => Self::DisposableInter,
            4 => Self::GeneratedKey,
            5 => Self::Command,
            other => return Err(MediaError::InvalidVideoFrameType(other)),
        })
    }
}

/// Video codecs the packager understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodec {
    /// H.264, legacy codec id 7 or FourCC `avc1`.
    Avc,
    /// H.265, FourCC `hvc1`.
    Hevc,
    /// AV1, FourCC `av01`.
    Av1,
}

impl VideoCodec {
    pub fn name(self) -> &'static str {
        match self {
            VideoCodec::Avc => "H.264",
            VideoCodec::Hevc => "HEVC",
            VideoCodec::Av1 => "AV1",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VideoPacket {
    /// Decoder configuration (AVCDecoderConfigurationRecord for AVC).
    SequenceHeader(Bytes),
    /// One access unit in length-prefixed (AVCC) form.
    Frame {
        /// pts - dts in milliseconds (signed 24-bit on the wire).
        composition_time_ms: i32,
        data: Bytes,
    },
    EndOfSequence,
    /// Something legal that carries no samples (command frames, enhanced
    /// RTMP metadata). Callers should just skip it.
    Ignored,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoTag {
    pub frame_type: VideoFrameType,
    pub codec: VideoCodec,
    pub packet: VideoPacket,
}

impl VideoTag {
    pub fn is_keyframe(&self) -> bool {
        matches!(
            self.frame_type,
            VideoFrameType::Key | VideoFrameType::GeneratedKey
        )
    }
}

/// Legacy FLV video codec id for AVC.
const CODEC_ID_AVC: u8 = 7;

/// Enhanced-RTMP video packet types.
mod ex_video {
    pub const SEQUENCE_START: u8 = 0;
    pub const CODED_FRAMES: u8 = 1;
    pub const SEQUENCE_END: u8 = 2;
    pub const CODED_FRAMES_X: u8 = 3;
    pub const METADATA: u8 = 4;
    pub const MULTITRACK: u8 = 6;
}

/// Audio and video share the ModEx and Multitrack packet type values.
const EX_MOD_EX: u8 = 7;

/// Skips the ModEx prefixes after an enhanced header byte, returning the real
/// packet type and the offset of what follows (the FourCC or the multitrack
/// header). The only ModEx type defined so far is a sub-millisecond timestamp
/// offset, which a millisecond timeline has no use for.
fn skip_mod_ex(body: &[u8], mut packet_type: u8) -> Result<(u8, usize), MediaError> {
    let mut at = 1;
    // Each ModEx costs at least two bytes, so the loop ends with the body.
    while packet_type == EX_MOD_EX {
        need(body, at + 1, "ModEx size")?;
        let mut size = usize::from(body[at]) + 1;
        at += 1;
        if size == 256 {
            need(body, at + 2, "ModEx size")?;
            size = usize::from(u16::from_be_bytes([body[at], body[at + 1]])) + 1;
            at += 2;
        }
        need(body, at + size + 1, "ModEx data")?;
        at += size;
        packet_type = body[at] & 0x0F;
        at += 1;
    }
    Ok((packet_type, at))
}

/// Parse an FLV VIDEODATA body.
pub fn parse_video_tag(body: &Bytes) -> Result<VideoTag, MediaError> {
    let first = *body.first().ok_or(MediaError::Truncated {
        what: "video tag",
        need: 1,
        have: 0,
    })?;
    if first & 0x80 != 0 {
        return parse_enhanced_video(first, body);
    }

    let frame_type = VideoFrameType::from_bits(first >> 4)?;
    let codec_id = first & 0x0F;
    if codec_id != CODEC_ID_AVC {
        return Err(MediaError::UnsupportedVideoCodec(codec_id));
    }
    let codec = VideoCodec::Avc;
    // A command frame body is a single info byte, not an AVC packet; checking
    // it before the length check keeps short-but-valid command frames legal.
    if frame_type == VideoFrameType::Command {
        return Ok(VideoTag {
            frame_type,
            codec,
            packet: VideoPacket::Ignored,
        });
    }
    need(body, 5, "AVC video tag")?;
    let packet = match body[1] {
        0 => VideoPacket::SequenceHeader(body.slice(5..)),
        1 => VideoPacket::Frame {
            composition_time_ms: si24(&body[2..5]),
            data: body.slice(5..),
        },
        2 => VideoPacket::EndOfSequence,
        other => return Err(MediaError::UnsupportedVideoPacketType(other)),
    };
    Ok(VideoTag {
        frame_type,
        codec,
        packet,
    })
}

fn parse_enhanced_video(first: u8, body: &Bytes) -> Result<VideoTag, MediaError> {
    let frame_type = VideoFrameType::from_bits((first >> 4) & 0x07)?;
    let (packet_type, at) = skip_mod_ex(body, first & 0x0F)?;
    if packet_type == ex_video::MULTITRACK {
        return Err(MediaError::UnsupportedMultitrack("video"));
    }
    need(body, at + 4, "enhanced video tag")?;
    let fourcc: [u8; 4] = [body[at], body[at + 1], body[at + 2], body[at + 3]];
    let at = at + 4;
    let codec = match &fourcc {
        b"avc1" => VideoCodec::Avc,
        b"hvc1" => VideoCodec::Hevc,
        b"av01" => VideoCodec::Av1,
        _ => return Err(MediaError::UnsupportedVideoFourCc(fourcc)),
    };
    if frame_type == VideoFrameType::Command && packet_type != ex_video::METADATA {
        return Ok(VideoTag {
            frame_type,
            codec,
            packet: VideoPacket::Ignored,
        });
    }
    let packet = match packet_type {
        ex_video::SEQUENCE_START => VideoPacket::SequenceHeader(body.slice(at..)),
        // Only avc1 and hvc1 carry a composition time; AV1 never reorders in the container.
        ex_video::CODED_FRAMES if codec != VideoCodec::Av1 => {
            need(body, at + 3, "enhanced coded frames")?;
            VideoPacket::Frame {
                composition_time_ms: si24(&body[at..at + 3]),
                data: body.slice(at + 3..),
            }
        }
        ex_video::CODED_FRAMES | ex_video::CODED_FRAMES_X => VideoPacket::Frame {
            composition_time_ms: 0,
            data: body.slice(at..),
        },
        ex_video::SEQUENCE_END => VideoPacket::EndOfSequence,
        ex_video::METADATA => VideoPacket::Ignored,
        // MPEG2TSSequenceStart: an AV1 config in MPEG-TS form, which no encoder sends over RTMP.
        other => return Err(MediaError::UnsupportedVideoPacketType(other)),
    };
    Ok(VideoTag {
        frame_type,
        codec,
        packet,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioCodec {
    /// AAC, legacy SoundFormat 10 or FourCC `mp4a`.
    Aac,
    /// Opus, FourCC `Opus`.
    Opus,
}

impl AudioCodec {
    pub fn name(self) -> &'static str {
        match self {
            AudioCodec::Aac => "AAC",
            AudioCodec::Opus => "Opus",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AudioPacket {
    /// The decoder configuration: an AudioSpecificConfig for AAC, the Opus
    /// identification header (`OpusHead`) for Opus.
    SequenceHeader(Bytes),
    /// One raw access unit: an AAC frame without ADTS (1024 samples), or one
    /// Opus packet.
    Raw(Bytes),
    /// Legal and carries no samples (sequence end, a multichannel layout).
    Ignored,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioTag {
    pub codec: AudioCodec,
    pub packet: AudioPacket,
}

const SOUND_FORMAT_AAC: u8 = 10;
/// Enhanced-RTMP marker in the SoundFormat nibble: a FourCC follows.
const SOUND_FORMAT_EX_HEADER: u8 = 9;

/// Enhanced-RTMP audio packet types.
mod ex_audio {
    pub const SEQUENCE_START: u8 = 0;
    pub const CODED_FRAMES: u8 = 1;
    pub const SEQUENCE_END: u8 = 2;
    pub const MULTICHANNEL_CONFIG: u8 = 4;
    pub const MULTITRACK: u8 = 5;
}

/// Parse an FLV AUDIODATA body.
pub fn parse_audio_tag(body: &Bytes) -> Result<AudioTag, MediaError> {
    let first = *body.first().ok_or(MediaError::Truncated {
        what: "audio tag",
        need: 1,
        have: 0,
    })?;
    let format = first >> 4;
    match format {
        SOUND_FORMAT_AAC => {}
        SOUND_FORMAT_EX_HEADER => return parse_enhanced_audio(first, body),
        other => return Err(MediaError::UnsupportedAudioFormat(other)),
    }
    // The rate/size/channel bits of the first byte are fixed for AAC and
    // meaningless; the AudioSpecificConfig is authoritative.
    need(body, 2, "AAC audio tag")?;
    let packet = match body[1] {
        0 => AudioPacket::SequenceHeader(body.slice(2..)),
        1 => AudioPacket::Raw(body.slice(2..)),
        other => return Err(MediaError::UnsupportedAudioPacketType(other)),
    };
    Ok(AudioTag {
        codec: AudioCodec::Aac,
        packet,
    })
}

fn parse_enhanced_audio(first: u8, body: &Bytes) -> Result<AudioTag, MediaError> {
    let (packet_type, at) = skip_mod_ex(body, first & 0x0F)?;
    if packet_type == ex_audio::MULTITRACK {
        return Err(MediaError::UnsupportedMultitrack("audio"));
    }
    need(body, at + 4, "enhanced audio tag")?;
    let fourcc: [u8; 4] = [body[at], body[at + 1], body[at + 2], body[at + 3]];
    let at = at + 4;
    let codec = match &fourcc {
        b"mp4a" => AudioCodec::Aac,
        b"Opus" => AudioCodec::Opus,
        _ => return Err(MediaError::UnsupportedAudioFourCc(fourcc)),
    };
    let packet = match packet_type {
        ex_audio::SEQUENCE_START => AudioPacket::SequenceHeader(body.slice(at..)),
        ex_audio::CODED_FRAMES => AudioPacket::Raw(body.slice(at..)),
        ex_audio::SEQUENCE_END | ex_audio::MULTICHANNEL_CONFIG => AudioPacket::Ignored,
        other => return Err(MediaError::UnsupportedAudioPacketType(other)),
    };
    Ok(AudioTag { codec, packet })
}

fn need(body: &[u8], n: usize, what: &'static str) -> Result<(), MediaError> {
    if body.len() < n {
        Err(MediaError::Truncated {
            what,
            need: n,
            have: body.len(),
        })
    } else {
        Ok(())
    }
}

/// Big-endian signed 24-bit integer; caller guarantees 3 bytes.
fn si24(b: &[u8]) -> i32 {
    // Shift into the top of an i32 and arithmetic-shift back to sign-extend.
    (i32::from(b[0]) << 24 | i32::from(b[1]) << 16 | i32::from(b[2]) << 8) >> 8
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(v: &[u8]) -> Bytes {
        Bytes::copy_from_slice(v)
    }

    #[test]
    fn avc_sequence_header() {
        let tag = parse_video_tag(&b(&[0x17, 0, 0, 0, 0, 1, 2, 3])).unwrap();
        assert!(tag.is_keyframe());
        assert_eq!(tag.codec, VideoCodec::Avc);
        assert_eq!(tag.packet, VideoPacket::SequenceHeader(b(&[1, 2, 3])));
    }

    #[test]
    fn avc_nalu_with_negative_cts() {
        let tag = parse_video_tag(&b(&[0x27, 1, 0xFF, 0xFF, 0xDF, 9, 9])).unwrap();
        assert_eq!(tag.frame_type, VideoFrameType::Inter);
        assert!(!tag.is_keyframe());
        assert_eq!(
            tag.packet,
            VideoPacket::Frame {
                composition_time_ms: -33,
                data: b(&[9, 9])
            }
        );
        let tag = parse_video_tag(&b(&[0x17, 1, 0x00, 0x00, 0x43])).unwrap();
        assert_eq!(
            tag.packet,
            VideoPacket::Frame {
                composition_time_ms: 67,
                data: Bytes::new()
            }
        );
    }

    #[test]
    fn avc_end_of_sequence_and_command() {
        let tag = parse_video_tag(&b(&[0x17, 2, 0, 0, 0])).unwrap();
        assert_eq!(tag.packet, VideoPacket::EndOfSequence);
        let tag = parse_video_tag(&b(&[0x57, 0])).unwrap();
        assert_eq!(tag.packet, VideoPacket::Ignored);
    }

    #[test]
    fn unsupported_video() {
        // VP6
        assert_eq!(
            parse_video_tag(&b(&[0x14, 0, 0, 0, 0])),
            Err(MediaError::UnsupportedVideoCodec(4))
        );
        // Enhanced RTMP VP9 sequence start
        assert_eq!(
            parse_video_tag(&b(&[0x90, b'v', b'p', b'0', b'9', 1])),
            Err(MediaError::UnsupportedVideoFourCc(*b"vp09"))
        );
        // Multitrack, behind a ModEx prefix
        assert_eq!(
            parse_video_tag(&b(&[0x97, 2, 0, 0, 0, 0x06, 0, b'a', b'v', b'c', b'1'])),
            Err(MediaError::UnsupportedMultitrack("video"))
        );
        assert!(matches!(
            parse_video_tag(&b(&[0x17, 1])),
            Err(MediaError::Truncated { .. })
        ));
        assert!(parse_video_tag(&Bytes::new()).is_err());
        assert_eq!(
            parse_video_tag(&b(&[0x07, 1, 0, 0, 0])),
            Err(MediaError::InvalidVideoFrameType(0))
        );
    }

    #[test]
    fn enhanced_avc() {
        // SequenceStart, keyframe
        let tag = parse_video_tag(&b(&[0x90, b'a', b'v', b'c', b'1', 7])).unwrap();
        assert!(tag.is_keyframe());
        assert_eq!(tag.packet, VideoPacket::SequenceHeader(b(&[7])));
        // CodedFrames with cts
        let tag = parse_video_tag(&b(&[0xA1, b'a', b'v', b'c', b'1', 0, 0, 5, 1])).unwrap();
        assert_eq!(
            tag.packet,
            VideoPacket::Frame {
                composition_time_ms: 5,
                data: b(&[1])
            }
        );
        // CodedFramesX, no cts
        let tag = parse_video_tag(&b(&[0x93, b'a', b'v', b'c', b'1', 4])).unwrap();
        assert_eq!(
            tag.packet,
            VideoPacket::Frame {
                composition_time_ms: 0,
                data: b(&[4])
            }
        );
    }

    #[test]
    fn aac() {
        let tag = parse_audio_tag(&b(&[0xAF, 0, 0x12, 0x10])).unwrap();
        assert_eq!(tag.packet, AudioPacket::SequenceHeader(b(&[0x12, 0x10])));
        let tag = parse_audio_tag(&b(&[0xAF, 1, 0x21])).unwrap();
        assert_eq!(tag.packet, AudioPacket::Raw(b(&[0x21])));
        assert_eq!(
            parse_audio_tag(&b(&[0x2F, 1])),
            Err(MediaError::UnsupportedAudioFormat(2))
        );
        assert_eq!(
            parse_audio_tag(&b(&[0x90, b'.', b'm', b'p', b'3'])),
            Err(MediaError::UnsupportedAudioFourCc(*b".mp3"))
        );
        assert!(parse_audio_tag(&b(&[0xAF])).is_err());
        assert!(parse_audio_tag(&Bytes::new()).is_err());
    }

    #[test]
    fn enhanced_hevc_and_av1_as_ffmpeg_9_sends_them() {
        // hvc1 CodedFrames carries a composition time, like avc1.
        let tag = parse_video_tag(&b(&[0x91, b'h', b'v', b'c', b'1', 0, 0, 33, 7])).unwrap();
        assert_eq!(tag.codec, VideoCodec::Hevc);
        assert!(tag.is_keyframe());
        assert_eq!(
            tag.packet,
            VideoPacket::Frame {
                composition_time_ms: 33,
                data: b(&[7])
            }
        );
        // av01 CodedFrames does not.
        let tag = parse_video_tag(&b(&[0xA1, b'a', b'v', b'0', b'1', 0x12, 0])).unwrap();
        assert_eq!(tag.codec, VideoCodec::Av1);
        assert!(!tag.is_keyframe());
        assert_eq!(
            tag.packet,
            VideoPacket::Frame {
                composition_time_ms: 0,
                data: b(&[0x12, 0])
            }
        );
        // Metadata (colorInfo) in a command frame.
        let tag = parse_video_tag(&b(&[0xD4, b'h', b'v', b'c', b'1', 2, 0])).unwrap();
        assert_eq!(tag.packet, VideoPacket::Ignored);
    }

    #[test]
    fn mod_ex_prefixes_are_skipped() {
        // ModEx of 3 bytes (a nanosecond offset), then CodedFramesX.
        let tag =
            parse_video_tag(&b(&[0x97, 2, 0, 1, 2, 0x03, b'a', b'v', b'c', b'1', 9])).unwrap();
        assert_eq!(
            tag.packet,
            VideoPacket::Frame {
                composition_time_ms: 0,
                data: b(&[9])
            }
        );
        // A 256-byte ModEx uses the 16-bit size.
        let mut v = vec![0x97, 255, 0, 255];
        v.extend(std::iter::repeat_n(0u8, 256));
        v.extend([0x02, b'a', b'v', b'c', b'1']);
        assert_eq!(
            parse_video_tag(&b(&v)).unwrap().packet,
            VideoPacket::EndOfSequence
        );
        // Truncated ModEx is an error, not a panic.
        assert!(parse_video_tag(&b(&[0x97, 5, 0])).is_err());
        assert!(parse_audio_tag(&b(&[0x97, 255])).is_err());
    }

    #[test]
    fn enhanced_audio() {
        let tag = parse_audio_tag(&b(&[0x90, b'O', b'p', b'u', b's', 1, 2])).unwrap();
        assert_eq!(tag.codec, AudioCodec::Opus);
        assert_eq!(tag.packet, AudioPacket::SequenceHeader(b(&[1, 2])));
        let tag = parse_audio_tag(&b(&[0x91, b'O', b'p', b'u', b's', 0xF8])).unwrap();
        assert_eq!(tag.packet, AudioPacket::Raw(b(&[0xF8])));
        let tag = parse_audio_tag(&b(&[0x94, b'O', b'p', b'u', b's', 1, 1])).unwrap();
        assert_eq!(tag.packet, AudioPacket::Ignored);
        let tag = parse_audio_tag(&b(&[0x91, b'm', b'p', b'4', b'a', 0x21])).unwrap();
        assert_eq!(tag.codec, AudioCodec::Aac);
        assert_eq!(tag.packet, AudioPacket::Raw(b(&[0x21])));
        assert_eq!(
            parse_audio_tag(&b(&[0x95, 0, b'O', b'p', b'u', b's'])),
            Err(MediaError::UnsupportedMultitrack("audio"))
        );
    }
}
