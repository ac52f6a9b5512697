//! The media path's error type.

/// Everything that can go wrong while turning publisher input into CMAF.
///
/// All of these are per-tag problems: when a `push_*` call returns one, that
/// tag was dropped and the packager is still usable, so the caller should log
/// and keep feeding rather than tear the stream down (unless it wants to be
/// strict with a misbehaving publisher).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    #[error("{what} truncated: need {need} bytes, have {have}")]
    Truncated {
        what: &'static str,
        need: usize,
        have: usize,
    },
    #[error("invalid FLV video frame type {0}")]
    InvalidVideoFrameType(u8),
    #[error("unsupported FLV video codec id {0} (only AVC/H.264 = 7 is supported)")]
    UnsupportedVideoCodec(u8),
    #[error("unsupported enhanced-RTMP video FourCC {:?}", String::from_utf8_lossy(.0))]
    UnsupportedVideoFourCc([u8; 4]),
    #[error("unsupported video packet type {0}")]
    UnsupportedVideoPacketType(u8),
    #[error("unsupported FLV audio sound format {0} (only AAC = 10 is supported)")]
    UnsupportedAudioFormat(u8),
    #[error("unsupported enhanced-RTMP audio FourCC {:?}", String::from_utf8_lossy(.0))]
    UnsupportedAudioFourCc([u8; 4]),
    #[error("enhanced-RTMP multitrack {0} is not packaged; send one track")]
    UnsupportedMultitrack(&'static str),
    #[error("more than {0} video tracks")]
    TooManyTracks(usize),
    #[error("unsupported audio packet type {0}")]
    UnsupportedAudioPacketType(u8),
    #[error("invalid AVCDecoderConfigurationRecord: {0}")]
    InvalidAvcConfig(&'static str),
    #[error("invalid video decoder configuration: {0}")]
    InvalidVideoConfig(&'static str),
    #[error("invalid H.264 SPS: {0}")]
    InvalidSps(String),
    #[error("invalid AVC sample: {0}")]
    InvalidAvcSample(&'static str),
    #[error("invalid AudioSpecificConfig: {0}")]
    InvalidAudioConfig(&'static str),
    #[error("{0} media data received before its sequence header")]
    MissingSequenceHeader(&'static str),
    #[error("buffer limit exceeded: {0}")]
    BufferLimit(&'static str),
    #[error("invalid frame stream: {0}")]
    InvalidFrameStream(&'static str),
    #[error("fMP4 encoding failed: {0}")]
    Mux(String),
}

impl MediaError {
    /// For an error that no later message can mend (a codec or a track layout the packager
    /// does not handle), what the publisher should change; `None` for per-message problems.
    pub fn unsupported(&self) -> Option<String> {
        let what = match self {
            MediaError::UnsupportedVideoCodec(id) => format!("{} video", legacy_video_name(*id)),
            MediaError::UnsupportedVideoFourCc(cc) => {
                format!("video codec {:?}", String::from_utf8_lossy(cc))
            }
            MediaError::UnsupportedAudioFormat(f) => format!("{} audio", legacy_audio_name(*f)),
            MediaError::UnsupportedAudioFourCc(cc) => {
                format!("audio codec {:?}", String::from_utf8_lossy(cc))
            }
            MediaError::UnsupportedMultitrack(kind) => {
                return Some(format!(
                    "this multitrack {kind} is not accepted: send one {kind} track, or a ladder of video tracks with one audio track"
                ));
            }
            MediaError::TooManyTracks(n) => {
                return Some(format!(
                    "more than {n} video tracks: send at most {n} renditions in one multitrack publish"
                ));
            }
            _ => return None,
        };
        Some(format!(
            "{what} is not accepted: send H.264, HEVC or AV1 video with AAC or Opus audio"
        ))
    }

    /// A short label for metrics: which kind of unsupported input this was.
    pub fn unsupported_label(&self) -> &'static str {
        match self {
            MediaError::UnsupportedVideoCodec(_) | MediaError::UnsupportedVideoFourCc(_) => {
                "video_codec"
            }
            MediaError::UnsupportedAudioFormat(_) | MediaError::UnsupportedAudioFourCc(_) => {
                "audio_codec"
            }
            MediaError::UnsupportedMultitrack(_) | MediaError::TooManyTracks(_) => "multitrack",
            _ => "other",
        }
    }
}

/// FLV's legacy CodecID names (video_file_format_spec_v10_1 §E.4.3.1).
fn legacy_video_name(id: u8) -> String {
    match id {
        2 => "Sorenson H.263".into(),
        3 | 6 => "Screen video".into(),
        4 | 5 => "VP6".into(),
        12 => "HEVC with a non-standard FLV codec id (use Enhanced RTMP)".into(),
        other => format!("FLV codec id {other}"),
    }
}

/// FLV's legacy SoundFormat names (§E.4.2.1).
fn legacy_audio_name(format: u8) -> String {
    match format {
        0 | 3 => "PCM".into(),
        1 => "ADPCM".into(),
        2 | 14 => "MP3".into(),
        4..=6 => "Nellymoser".into(),
        7 | 8 => "G.711".into(),
        11 => "Speex".into(),
        other => format!("FLV sound format {other}"),
    }
}

impl From<mp4_atom::Error> for MediaError {
    fn from(e: mp4_atom::Error) -> Self {
        MediaError::Mux(e.to_string())
    }
}
