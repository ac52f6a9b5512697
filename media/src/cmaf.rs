//! CMAF writers: the init segment (ftyp+moov) and fragments (moof+mdat).
//!
//! Leaf boxes come from mp4-atom. Three things are written by hand:
//! - container boxes (`moov`, `trak`, `mdia`, `minf`, `mvex`): mp4-atom's
//!   `nested!` encoder emits optional children before repeated ones, which
//!   yields `moov = [mvhd, mvex, trak..]` and `minf = [dinf, stbl, vmhd]`.
//!   That is legal ISO-BMFF but not the order every player has been tested
//!   with, so we concatenate children in the conventional order ourselves;
//! - `mdat`: mp4-atom's `Mdat` owns a `Vec<u8>`, which would force an extra
//!   copy of every sample; we write its 8-byte header and append the
//!   `Bytes` directly;
//! - the two-pass `trun.data_offset` fix-up (offsets depend on the encoded
//!   moof size).

use bytes::{BufMut, Bytes, BytesMut};
use mp4_atom::esds::{DecoderConfig, DecoderSpecific, EsDescriptor, SLConfig};
use mp4_atom::{
    Audio, Av01, Avc1, Avcc, AvccExt, Codec, Dinf, Dref, Esds, FourCC, Ftyp, Hdlr, Hvc1, Mdhd,
    Mfhd, Moof, Mp4a, Mvhd, Opus, Smhd, Stbl, Stco, Stsd, Tfdt, Tfhd, Tkhd, Traf, Trex, Trun,
    TrunEntry, Url, Visual, Vmhd, u24,
};

use super::aac::AacConfig;
use super::avc::AvcConfig;
use crate::codec::{AudioConfig, VideoConfig};
use crate::error::MediaError;

/// Fixed track ids so playlists/init segments stay comparable across
/// re-inits of the same stream.
pub const VIDEO_TRACK_ID: u32 = 1;
pub const AUDIO_TRACK_ID: u32 = 2;
/// MPEG-TS heritage; every HLS stack handles it and ms timestamps map exactly.
pub const VIDEO_TIMESCALE: u32 = 90_000;

/// ISO/IEC 14496-12 sample flags: `sample_depends_on = 2` (an I-frame).
pub const SAMPLE_FLAGS_SYNC: u32 = 0x0200_0000;
/// `sample_depends_on = 1` plus `sample_is_non_sync_sample`.
pub const SAMPLE_FLAGS_NON_SYNC: u32 = 0x0101_0000;

/// One sample for a [`TrackRun`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// AVCC access unit (video) or raw AAC frame (audio), copied to mdat as is.
    pub data: Bytes,
    /// In track timescale units.
    pub duration: u32,
    /// pts - dts in track timescale units (signed: trun version 1).
    pub composition_offset: i32,
    pub is_sync: bool,
}

/// All samples of one track inside one fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackRun {
    pub track_id: u32,
    /// tfdt: decode time of the first sample, in track timescale units.
    pub base_media_decode_time: u64,
    pub samples: Vec<Sample>,
}

/// Build `ftyp` + `moov` for the given tracks (video is track 1, audio track 2).
pub fn init_segment(
    video: Option<&VideoConfig>,
    audio: Option<&AudioConfig>,
) -> Result<Bytes, MediaError> {
    if video.is_none() && audio.is_none() {
        return Err(MediaError::Mux("init segment without tracks".into()));
    }
    let mut out = Vec::with_capacity(1024);
    encode(
        &Ftyp {
            major_brand: FourCC::new(b"iso6"),
            minor_version: 0,
            compatible_brands: vec![
                FourCC::new(b"iso6"),
                FourCC::new(b"cmfc"),
                FourCC::new(b"isom"),
                FourCC::new(b"mp41"),
                FourCC::new(b"dash"),
            ],
        },
        &mut out,
    )?;

    let mut moov = Vec::with_capacity(1024);
    encode(
        &Mvhd {
            timescale: 1000,
            rate: 1.into(),
            volume: 1.into(),
            next_track_id: AUDIO_TRACK_ID + 1,
            ..Default::default()
        },
        &mut moov,
    )?;
    let mut mvex = Vec::new();
    if let Some(v) = video {
        moov.extend_from_slice(&video_trak(v)?);
        encode(&trex(VIDEO_TRACK_ID), &mut mvex)?;
    }
    if let Some(a) = audio {
        moov.extend_from_slice(&audio_trak(a)?);
        encode(&trex(AUDIO_TRACK_ID), &mut mvex)?;
    }
    moov.extend_from_slice(&container(b"mvex", &[&mvex])?);
    out.extend_from_slice(&container(b"moov", &[&moov])?);
    Ok(Bytes::from(out))
}

fn trex(track_id: u32) -> Trex {
    Trex {
        track_id,
        default_sample_description_index: 1,
        ..Default::default()
    }
}

fn video_trak(v: &VideoConfig) -> Result<Vec<u8>, MediaError> {
    let (width, height) = v.size();
    // Every config parser already bounds the size to u16.
    let width = u16::try_from(width).map_err(|_| MediaError::Mux("width > 65535".into()))?;
    let height = u16::try_from(height).map_err(|_| MediaError::Mux("height > 65535".into()))?;
    let tkhd = Tkhd {
        track_id: VIDEO_TRACK_ID,
        enabled: true,
        in_movie: true,
        width: width.into(),
        height: height.into(),
        ..Default::default()
    };
    let visual = Visual {
        data_reference_index: 1,
        width,
        height,
        compressor: "".into(),
        ..Default::default()
    };
    let entry: Codec = match v {
        VideoConfig::Avc(avc) => avc1(avc, visual).into(),
        VideoConfig::Hevc(hevc) => Hvc1 {
            visual,
            hvcc: hevc.hvcc.clone(),
            ..Default::default()
        }
        .into(),
        VideoConfig::Av1(av1) => Av01 {
            visual,
            av1c: av1.av1c.clone(),
            ..Default::default()
        }
        .into(),
    };
    let mut minf_children = Vec::new();
    encode(&Vmhd::default(), &mut minf_children)?;
    encode(&dinf(), &mut minf_children)?;
    encode(&stbl(entry), &mut minf_children)?;
    trak(
        &tkhd,
        &Mdhd {
            timescale: VIDEO_TIMESCALE,
            language: "und".into(),
            ..Default::default()
        },
        &Hdlr {
            handler: FourCC::new(b"vide"),
            name: "VideoHandler".into(),
        },
        &minf_children,
    )
}

fn avc1(v: &AvcConfig, visual: Visual) -> Avc1 {
    // Re-serialised from the parsed record rather than copied raw: mp4-atom's
    // Avc1 only takes a structured Avcc, and going through our own parser
    // means a malformed optional extension is dropped instead of shipped.
    let avcc = Avcc {
        configuration_version: 1,
        avc_profile_indication: v.profile_idc,
        profile_compatibility: v.constraint_flags,
        avc_level_indication: v.level_idc,
        length_size: v.nal_length_size,
        sequence_parameter_sets: v.sps.iter().map(|s| s.to_vec()).collect(),
        picture_parameter_sets: v.pps.iter().map(|s| s.to_vec()).collect(),
        ext: v.ext.as_ref().map(|e| AvccExt {
            chroma_format: e.chroma_format,
            bit_depth_luma: e.bit_depth_luma,
            bit_depth_chroma: e.bit_depth_chroma,
            sequence_parameter_sets_ext: e.sps_ext.iter().map(|s| s.to_vec()).collect(),
        }),
    };
    Avc1 {
        visual,
        avcc,
        ..Default::default()
    }
}

fn audio_trak(a: &AudioConfig) -> Result<Vec<u8>, MediaError> {
    let tkhd = Tkhd {
        track_id: AUDIO_TRACK_ID,
        enabled: true,
        in_movie: true,
        alternate_group: 1,
        volume: 1.into(),
        ..Default::default()
    };
    let entry: Codec = match a {
        AudioConfig::Aac(aac) => mp4a(aac).into(),
        AudioConfig::Opus(opus) => Opus {
            audio: Audio {
                data_reference_index: 1,
                channel_count: opus.channel_count(),
                sample_size: 16,
                sample_rate: 48_000u16.into(),
            },
            dops: opus.dops.clone(),
            btrt: None,
        }
        .into(),
    };
    let mut minf_children = Vec::new();
    encode(&Smhd::default(), &mut minf_children)?;
    encode(&dinf(), &mut minf_children)?;
    encode(&stbl(entry), &mut minf_children)?;
    trak(
        &tkhd,
        &Mdhd {
            timescale: a.timescale(),
            language: "und".into(),
            ..Default::default()
        },
        &Hdlr {
            handler: FourCC::new(b"soun"),
            name: "SoundHandler".into(),
        },
        &minf_children,
    )
}

fn mp4a(a: &AacConfig) -> Mp4a {
    Mp4a {
        audio: Audio {
            data_reference_index: 1,
            channel_count: a.channel_count(),
            sample_size: 16,
            // 16.16 field: rates >= 64 kHz don't fit; the esds ASC and the
            // mdhd timescale are what decoders actually use.
            sample_rate: u16::try_from(a.sample_rate).unwrap_or(0).into(),
        },
        esds: Esds {
            es_desc: EsDescriptor {
                es_id: AUDIO_TRACK_ID as u16,
                dec_config: DecoderConfig {
                    object_type_indication: 0x40, // MPEG-4 Audio
                    stream_type: 0x05,            // AudioStream
                    up_stream: 0,
                    buffer_size_db: u24::default(),
                    max_bitrate: 0,
                    avg_bitrate: 0,
                    dec_specific: Some(DecoderSpecific {
                        profile: a.object_type,
                        freq_index: a.sample_rate_index,
                        chan_conf: a.channel_config,
                        raw: a.asc.to_vec(),
                    }),
                },
                sl_config: SLConfig {},
                ..Default::default()
            },
        },
        btrt: None,
        taic: None,
    }
}

fn dinf() -> Dinf {
    Dinf {
        dref: Dref {
            entries: vec![Url::default().into()],
        },
    }
}

/// Sample tables are empty in a fragmented file; only stsd matters.
fn stbl(codec: Codec) -> Stbl {
    Stbl {
        stsd: Stsd {
            codecs: vec![codec],
        },
        stco: Some(Stco::default()),
        ..Default::default()
    }
}

fn trak(
    tkhd: &Tkhd,
    mdhd: &Mdhd,
    hdlr: &Hdlr,
    minf_children: &[u8],
) -> Result<Vec<u8>, MediaError> {
    let mut mdia = Vec::new();
    encode(mdhd, &mut mdia)?;
    encode(hdlr, &mut mdia)?;
    mdia.extend_from_slice(&container(b"minf", &[minf_children])?);
    let mut trak = Vec::new();
    encode(tkhd, &mut trak)?;
    trak.extend_from_slice(&container(b"mdia", &[&mdia])?);
    container(b"trak", &[&trak])
}

/// Build one `moof` + `mdat` holding every run in `tracks`, in order.
///
/// The mdat holds each track's samples contiguously, in the same order as
/// the trafs, and each trun's `data_offset` is relative to the start of the
/// moof (tfhd `default-base-is-moof`, as CMAF requires).
pub fn fragment(sequence_number: u32, tracks: &[TrackRun]) -> Result<Bytes, MediaError> {
    let mut moof = Moof {
        mfhd: Mfhd { sequence_number },
        traf: tracks.iter().map(traf).collect(),
    };
    // Pass 1 with zero offsets just to learn the moof size: data_offset is
    // always present and always 4 bytes, so the value can't change the size.
    let mut encoded = Vec::new();
    encode(&moof, &mut encoded)?;
    let moof_len = encoded.len();

    let mut payload_len = 0usize;
    for (traf, run) in moof.traf.iter_mut().zip(tracks) {
        let offset = moof_len + MDAT_HEADER_LEN + payload_len;
        let offset =
            i32::try_from(offset).map_err(|_| MediaError::Mux("fragment too large".into()))?;
        for trun in &mut traf.trun {
            trun.data_offset = Some(offset);
        }
        payload_len += run.samples.iter().map(|s| s.data.len()).sum::<usize>();
    }
    encoded.clear();
    encode(&moof, &mut encoded)?;
    if encoded.len() != moof_len {
        return Err(MediaError::Mux("moof size changed between passes".into()));
    }

    let mdat_len = u32::try_from(MDAT_HEADER_LEN + payload_len)
        .map_err(|_| MediaError::Mux("mdat larger than 4 GiB".into()))?;
    let mut out = BytesMut::with_capacity(moof_len + mdat_len as usize);
    out.extend_from_slice(&encoded);
    out.put_u32(mdat_len);
    out.put_slice(b"mdat");
    for run in tracks {
        for s in &run.samples {
            out.put_slice(&s.data);
        }
    }
    Ok(out.freeze())
}

const MDAT_HEADER_LEN: usize = 8;

/// Where the samples of a fragment that [`fragment`] built begin: the mdat's payload, right
/// after the moof. The first run's samples (the video's, in a part the packager cuts) start
/// there, back to back and in order. `None` for bytes not laid out that way.
pub fn samples_start(fragment: &[u8]) -> Option<usize> {
    let size = |at: usize| -> Option<usize> {
        Some(u32::from_be_bytes(fragment.get(at..at + 4)?.try_into().ok()?) as usize)
    };
    let moof = size(0)?;
    (fragment.get(4..8)? == b"moof" && fragment.get(moof + 4..moof + 8)? == b"mdat")
        .then_some(moof + MDAT_HEADER_LEN)
}

fn traf(run: &TrackRun) -> Traf {
    // Omitting the cts column when every offset is zero (no B-frames, or
    // audio) saves 4 bytes per sample and is what other muxers do.
    let has_cts = run.samples.iter().any(|s| s.composition_offset != 0);
    let entries: Vec<TrunEntry> = run
        .samples
        .iter()
        .map(|s| TrunEntry {
            duration: Some(s.duration),
            size: Some(s.data.len() as u32),
            flags: Some(if s.is_sync {
                SAMPLE_FLAGS_SYNC
            } else {
                SAMPLE_FLAGS_NON_SYNC
            }),
            cts: has_cts.then_some(i64::from(s.composition_offset)),
        })
        .collect();
    Traf {
        tfhd: Tfhd {
            track_id: run.track_id,
            default_base_is_moof: true,
            ..Default::default()
        },
        tfdt: Some(Tfdt {
            base_media_decode_time: run.base_media_decode_time,
        }),
        trun: vec![Trun {
            data_offset: Some(0),
            samples: entries.into(),
        }],
        ..Default::default()
    }
}

fn encode<T: mp4_atom::Encode>(atom: &T, out: &mut Vec<u8>) -> Result<(), MediaError> {
    atom.encode(out).map_err(MediaError::from)
}

/// A plain (non-full) box whose body is the concatenation of `children`.
fn container(kind: &[u8; 4], children: &[&[u8]]) -> Result<Vec<u8>, MediaError> {
    let body: usize = children.iter().map(|c| c.len()).sum();
    let size = u32::try_from(8 + body).map_err(|_| MediaError::Mux("box too large".into()))?;
    let mut out = Vec::with_capacity(8 + body);
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(kind);
    for c in children {
        out.extend_from_slice(c);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::avc::tests::{SEQ_HDR_852X480, hex};
    use mp4_atom::{Any, Decode, Moov, TrunSamples};

    fn avc() -> AvcConfig {
        AvcConfig::parse(Bytes::from(hex(SEQ_HDR_852X480)).slice(5..)).unwrap()
    }

    fn aac() -> AacConfig {
        AacConfig::parse(Bytes::from_static(&[0x12, 0x10])).unwrap()
    }

    #[test]
    fn init_segment_roundtrips_through_mp4_atom() {
        let init = init_segment(
            Some(&VideoConfig::Avc(avc())),
            Some(&AudioConfig::Aac(aac())),
        )
        .unwrap();
        let mut buf = &init[..];
        let ftyp = Ftyp::decode(&mut buf).unwrap();
        assert_eq!(ftyp.major_brand, FourCC::new(b"iso6"));
        // Conventional child order, not mp4-atom's.
        assert_eq!(&buf[4..8], b"moov");
        assert_eq!(&buf[12..16], b"mvhd");
        let moov = Moov::decode(&mut buf).unwrap();
        assert!(buf.is_empty());
        assert_eq!(moov.trak.len(), 2);
        let v = &moov.trak[0];
        assert_eq!(v.tkhd.track_id, VIDEO_TRACK_ID);
        assert_eq!(v.mdia.mdhd.timescale, VIDEO_TIMESCALE);
        let Codec::Avc1(avc1) = &v.mdia.minf.stbl.stsd.codecs[0] else {
            panic!("expected avc1");
        };
        assert_eq!((avc1.visual.width, avc1.visual.height), (852, 480));
        assert_eq!(avc1.avcc.length_size, 4);
        let a = &moov.trak[1];
        assert_eq!(a.tkhd.track_id, AUDIO_TRACK_ID);
        assert_eq!(a.mdia.mdhd.timescale, 44100);
        let Codec::Mp4a(mp4a) = &a.mdia.minf.stbl.stsd.codecs[0] else {
            panic!("expected mp4a");
        };
        let ds = mp4a.esds.es_desc.dec_config.dec_specific.as_ref().unwrap();
        assert_eq!(ds.raw, vec![0x12, 0x10]);
        assert_eq!(moov.mvex.unwrap().trex.len(), 2);
    }

    #[test]
    fn avcc_matches_original_record() {
        // Re-serialising a well-formed record must be byte-identical, or the
        // avcC we ship would differ from what the encoder intended.
        let cfg = avc();
        let init = init_segment(Some(&VideoConfig::Avc(cfg.clone())), None).unwrap();
        let pos = init
            .windows(4)
            .position(|w| w == b"avcC")
            .expect("avcC present");
        let size = u32::from_be_bytes(init[pos - 4..pos].try_into().unwrap()) as usize;
        assert_eq!(&init[pos + 4..pos - 4 + size], &cfg.record[..]);
    }

    #[test]
    fn fragment_data_offsets_point_at_samples() {
        let v = TrackRun {
            track_id: VIDEO_TRACK_ID,
            base_media_decode_time: 90_000,
            samples: vec![
                Sample {
                    data: Bytes::from_static(b"KEYFRAME"),
                    duration: 3000,
                    composition_offset: 6000,
                    is_sync: true,
                },
                Sample {
                    data: Bytes::from_static(b"B"),
                    duration: 3000,
                    composition_offset: -3000,
                    is_sync: false,
                },
            ],
        };
        let a = TrackRun {
            track_id: AUDIO_TRACK_ID,
            base_media_decode_time: 44100,
            samples: vec![Sample {
                data: Bytes::from_static(b"AAC"),
                duration: 1024,
                composition_offset: 0,
                is_sync: true,
            }],
        };
        let frag = fragment(7, &[v, a]).unwrap();
        let mut buf = &frag[..];
        let Any::Moof(moof) = Any::decode(&mut buf).unwrap() else {
            panic!("expected moof first");
        };
        assert_eq!(moof.mfhd.sequence_number, 7);
        assert_eq!(&buf[4..8], b"mdat");
        let start = samples_start(&frag).unwrap();
        assert_eq!(&frag[start..start + 12], b"KEYFRAMEBAAC");
        assert_eq!(samples_start(b"KEYFRAMEBAAC"), None);
        let expect: [(&[u8], u64); 2] = [(b"KEYFRAMEB", 90_000), (b"AAC", 44100)];
        for (traf, (payload, tfdt)) in moof.traf.iter().zip(expect) {
            assert!(traf.tfhd.default_base_is_moof);
            assert_eq!(traf.tfdt.as_ref().unwrap().base_media_decode_time, tfdt);
            let trun = &traf.trun[0];
            let off = trun.data_offset.unwrap() as usize;
            let TrunSamples::Explicit(entries) = &trun.samples else {
                panic!("explicit samples");
            };
            let len: u32 = entries.iter().map(|e| e.size.unwrap()).sum();
            assert_eq!(&frag[off..off + len as usize], payload);
        }
        let TrunSamples::Explicit(entries) = &moof.traf[0].trun[0].samples else {
            unreachable!()
        };
        assert_eq!(entries[0].flags, Some(SAMPLE_FLAGS_SYNC));
        assert_eq!(entries[1].flags, Some(SAMPLE_FLAGS_NON_SYNC));
        assert_eq!(entries[1].cts, Some(-3000));
        // Signed cts requires trun version 1 (byte 8 of the trun box).
        let trun_pos = frag.windows(4).position(|w| w == b"trun").unwrap();
        assert_eq!(frag[trun_pos + 4], 1);
    }
}
