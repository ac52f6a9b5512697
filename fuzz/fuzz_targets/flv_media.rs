//! FLV VIDEODATA / AUDIODATA bodies and the AVC / AAC decoder configs they carry.
//!
//! The whole input is tried as a video tag body, an audio tag body, an
//! AVCDecoderConfigurationRecord and an AudioSpecificConfig; a sequence header found by the
//! tag parsers is parsed as its config too, and a video frame is validated against the
//! config. Invariants: no panic anywhere; a config that parses has an ASCII RFC 6381 codec
//! string of the expected shape and sane fields, and can be written into an init segment.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use media::cmaf;
use media::flv::{AudioPacket, VideoPacket, parse_audio_tag, parse_video_tag};
use media::{AacConfig, AvcConfig};

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
    let _ = cmaf::init_segment(Some(cfg), None);
}

fn check_aac(cfg: &AacConfig) {
    let c = cfg.codec_string();
    assert!(c.is_ascii(), "{c:?}");
    let n = c.strip_prefix("mp4a.40.").expect("mp4a.40.N");
    assert!(n.parse::<u8>().is_ok_and(|n| n > 0), "{c:?}");
    assert!((1000..=384_000).contains(&cfg.sample_rate));
    assert!(cfg.sample_rate_index <= 0x0F && cfg.channel_config <= 0x0F);
    assert!(cfg.channel_count() > 0);
    let _ = cmaf::init_segment(None, Some(cfg));
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

    if let Ok(tag) = parse_video_tag(&body) {
        match tag.packet {
            VideoPacket::SequenceHeader(rec) => {
                if let Ok(cfg) = AvcConfig::parse(rec) {
                    check_avc(&cfg);
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
            AudioPacket::SequenceHeader(asc) => {
                if let Ok(cfg) = AacConfig::parse(asc) {
                    check_aac(&cfg);
                }
            }
            AudioPacket::Raw(d) => assert_eq!(d.len() + 2, data.len()),
        }
    }
    if let Ok(cfg) = AvcConfig::parse(body.clone()) {
        check_avc(&cfg);
        // The record as a sample: exercises the NAL length walk with a real length size.
        let _ = cfg.validate_sample(data);
    }
    if let Ok(cfg) = AacConfig::parse(body) {
        check_aac(&cfg);
    }
});
