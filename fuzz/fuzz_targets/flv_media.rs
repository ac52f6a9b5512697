//! FLV VIDEODATA / AUDIODATA bodies (legacy and Enhanced RTMP v2, multitrack split into its
//! tracks) and the decoder configs they carry: AVC, HEVC, AV1, AAC, Opus.
//!
//! The whole input is tried as a video tag body, an audio tag body, and as every config
//! record; a sequence header found by the tag parsers is parsed as its codec's config too, and
//! a video frame is validated against the config, an Opus packet timed by its TOC. Invariants: no panic anywhere; a config that parses has an ASCII RFC 6381 codec
//! string of the expected shape and sane fields, and can be written into an init segment.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use media::cmaf;
use media::flv::{AudioPacket, VideoPacket, parse_audio_tag, parse_video_tag};
use media::multitrack::{self, Split};
use media::av1::Av1Config;
use media::hevc::HevcConfig;
use media::opus::{OpusConfig, packet_samples};
use media::{AacConfig, AudioConfig, AvcConfig, VideoConfig};

fn check_avc(cfg: &AvcConfig) {
    let c = cfg.codec_string();
    assert!(c.is_ascii(), "{c:?}");
    assert!(
        c.len() == 11
            && c.starts_with("avc1.")
            && c[5..]
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
        "{c:?}"
    );
    assert!(matches!(cfg.nal_length_size, 1 | 2 | 4));
    assert!((1..=65535).contains(&cfg.width) && (1..=65535).contains(&cfg.height));
    assert!(!cfg.sps.is_empty() && !cfg.pps.is_empty());
    assert!(cfg.same_decoder_config(cfg));
    // A config that parses is accepted by the packager only if it muxes; either way no panic.
    let _ = cmaf::init_segment(Some(&VideoConfig::Avc(cfg.clone())), None);
}

/// Any video config that parses: a codec string of its family, a picture, an init segment.
fn check_video(cfg: &VideoConfig) {
    let c = cfg.codec_string();
    assert!(c.is_ascii() && c.len() < 64, "{c:?}");
    assert!(["avc1.", "hvc1.", "av01."].iter().any(|p| c.starts_with(p)), "{c:?}");
    let (w, h) = cfg.size();
    assert!((1..=65535).contains(&w) && (1..=65535).contains(&h), "{w}x{h}");
    assert!(cfg.same_decoder_config(cfg));
    let _ = cmaf::init_segment(Some(cfg), None);
}

fn check_audio(cfg: &AudioConfig) {
    let c = cfg.codec_string();
    assert!(c == "opus" || c.starts_with("mp4a.40."), "{c:?}");
    assert!(cfg.timescale() > 0);
    let _ = cmaf::init_segment(None, Some(cfg));
}

fn check_aac(cfg: &AacConfig) {
    let c = cfg.codec_string();
    assert!(c.is_ascii(), "{c:?}");
    let n = c.strip_prefix("mp4a.40.").expect("mp4a.40.N");
    assert!(n.parse::<u8>().is_ok_and(|n| n > 0), "{c:?}");
    assert!((1000..=384_000).contains(&cfg.sample_rate));
    assert!(cfg.sample_rate_index <= 0x0F && cfg.channel_config <= 0x0F);
    assert!(cfg.channel_count() > 0);
    let _ = cmaf::init_segment(None, Some(&AudioConfig::Aac(cfg.clone())));
}

/// x264 852x480 High@3.1 AVCDecoderConfigurationRecord (the `SEQ_HDR_852X480` unit-test
/// fixture without its 5-byte FLV header).
const AVC_RECORD: &str =
    "0164001fffe1001a6764001facd940d83de7f0110000030001000003003c0f18319601000468ef8fcbfdf8f800";

/// The fixture record re-labelled with NAL length sizes 1, 2 and 4.
fn known_configs() -> &'static [AvcConfig] {
    static CFGS: std::sync::OnceLock<Vec<AvcConfig>> = std::sync::OnceLock::new();
    CFGS.get_or_init(|| {
        let rec: Vec<u8> = (0..AVC_RECORD.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&AVC_RECORD[i..i + 2], 16).unwrap())
            .collect();
        [0u8, 1, 3]
            .iter()
            .map(|m| {
                let mut r = rec.clone();
                r[4] = 0xFC | m;
                AvcConfig::parse(Bytes::from(r)).expect("fixture parses")
            })
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let body = Bytes::copy_from_slice(data);

    // Multitrack: every track a split gives is an ordinary body, no longer than the input
    // plus its rebuilt header, and itself never multitrack; each is parsed like a tag.
    for video in [true, false] {
        if let Ok(Split::Tracks(tracks)) = multitrack::split(&body, video) {
            for (_, t) in tracks {
                assert!(t.len() <= data.len() + 5);
                assert_eq!(multitrack::split(&t, video), Ok(Split::Single));
                let _ = if video {
                    parse_video_tag(&t).map(drop)
                } else {
                    parse_audio_tag(&t).map(drop)
                };
            }
        }
    }

    if let Ok(tag) = parse_video_tag(&body) {
        match tag.packet {
            VideoPacket::SequenceHeader(rec) => {
                if let Ok(cfg) = VideoConfig::parse(tag.codec, rec) {
                    check_video(&cfg);
                    if let VideoConfig::Avc(avc) = &cfg {
                        check_avc(avc);
                    }
                }
            }
            VideoPacket::Frame { data, .. } => {
                for cfg in known_configs() {
                    let _ = cfg.validate_sample(&data);
                }
            }
            VideoPacket::EndOfSequence | VideoPacket::Ignored => {}
        }
    }
    if let Ok(tag) = parse_audio_tag(&body) {
        match tag.packet {
            AudioPacket::SequenceHeader(header) => {
                if let Ok(cfg) = AudioConfig::parse(tag.codec, header) {
                    check_audio(&cfg);
                    if let AudioConfig::Aac(aac) = &cfg {
                        check_aac(aac);
                    }
                }
            }
            AudioPacket::Raw(d) => {
                assert!(d.len() < data.len());
                if let Ok(n) = packet_samples(&d) {
                    assert!((120..=5760).contains(&n));
                }
            }
            AudioPacket::Ignored => {}
        }
    }
    if let Ok(cfg) = AvcConfig::parse(body.clone()) {
        check_avc(&cfg);
        // The record as a sample: exercises the NAL length walk with a real length size.
        let _ = cfg.validate_sample(data);
    }
    if let Ok(cfg) = HevcConfig::parse(body.clone()) {
        check_video(&VideoConfig::Hevc(cfg));
    }
    if let Ok(cfg) = Av1Config::parse(body.clone()) {
        check_video(&VideoConfig::Av1(cfg));
    }
    if let Ok(cfg) = OpusConfig::parse(body.clone()) {
        check_audio(&AudioConfig::Opus(cfg));
    }
    if let Ok(cfg) = AacConfig::parse(body) {
        check_aac(&cfg);
    }
});
