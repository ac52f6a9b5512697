//! The FLV → CMAF `Packager` state machine, plus `cmaf::fragment` on arbitrary runs.
//!
//! The input (via `arbitrary`) is a packager config and a sequence of operations built around
//! the real AVC sequence header and AAC config of `media/src/testdata/
//! avc_aac_640x360_4s.flv` (plus a second pair, to change configs mid-stream): headers,
//! synthetic AVCC frames, AAC frames, the fixture's real tags, raw bodies, flushes, all with
//! byte-level mutations and timestamps that step, go back, jump and wrap.
//!
//! Invariants checked on every output:
//! - never panics;
//! - the first output ever is an `Init`, and every `Init` is followed, in the same batch, by a
//!   `Part` that starts a segment with a keyframe (what the ingest relies on to place
//!   `EXT-X-DISCONTINUITY`/`EXT-X-MAP`); an `Init` is ftyp+moov with an ASCII codecs string;
//! - every `Part` is exactly one `moof` whose size field is consistent, followed by one `mdat`
//!   that runs to the end; the moof decodes (mp4-atom) and its trun data offsets and sample
//!   sizes cover the mdat payload exactly;
//! - part durations are bounded (part target + one clamped timestamp step + one frame);
//! - moof sequence numbers strictly increase across the packager's whole life.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use media::cmaf::{self, Sample, TrackRun};
use media::flv_file::{FlvFile, TagKind};
use media::packager::MAX_TS_JUMP_MS;
use media::{Packager, PackagerConfig, PackagerOutput};
use mp4_atom::{Decode, Moof, TrunSamples};

const FIXTURE: &[u8] = include_bytes!("../../media/src/testdata/avc_aac_640x360_4s.flv");

/// 852x480 High@3.1 sequence header body (the `SEQ_HDR_852X480` unit-test fixture).
const ALT_AVC_HDR: &str = "17000000000164001fffe1001a6764001facd940d83de7f0110000030001000003003c0f18319601000468ef8fcbfdf8f800";
/// AAC-LC 48 kHz stereo sequence header body (the fixture is 44.1 kHz mono).
const ALT_AAC_HDR: &[u8] = &[0xAF, 0x00, 0x11, 0x90];

struct Fixture {
    avc_hdr: Bytes,
    aac_hdr: Bytes,
    alt_avc_hdr: Bytes,
    /// (is_video, body) of every media tag after the two headers.
    tags: Vec<(bool, Bytes)>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let all: Vec<(bool, Bytes)> = FlvFile::tags(Bytes::from_static(FIXTURE))
            .expect("the fixture is an FLV file")
            .into_iter()
            .filter(|t| t.kind != TagKind::Script)
            .map(|t| (t.kind == TagKind::Video, t.body))
            .collect();
        let avc_hdr = all.iter().find(|(v, b)| *v && b[1] == 0).unwrap().1.clone();
        let aac_hdr = all
            .iter()
            .find(|(v, b)| !*v && b[1] == 0)
            .unwrap()
            .1
            .clone();
        let tags = all.into_iter().filter(|(_, b)| b[1] != 0).collect();
        let alt_avc_hdr = (0..ALT_AVC_HDR.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&ALT_AVC_HDR[i..i + 2], 16).unwrap())
            .collect::<Vec<u8>>()
            .into();
        Fixture {
            avc_hdr,
            aac_hdr,
            alt_avc_hdr,
            tags,
        }
    })
}

#[derive(Arbitrary, Debug)]
enum Ts {
    Step(u8),
    Back(u8),
    BigStep(u16),
    Jump(u32),
    Same,
}

#[derive(Arbitrary, Debug)]
enum Mutation {
    None,
    Flip { at: u16, bit: u8 },
    Set { at: u16, val: u8 },
    Truncate(u16),
    Append(Vec<u8>),
}

impl Mutation {
    fn apply(&self, b: Bytes) -> Bytes {
        match self {
            Mutation::None => b,
            Mutation::Flip { at, bit } if !b.is_empty() => {
                let mut v = b.to_vec();
                let i = usize::from(*at) % v.len();
                v[i] ^= 1 << (bit % 8);
                v.into()
            }
            Mutation::Set { at, val } if !b.is_empty() => {
                let mut v = b.to_vec();
                let i = usize::from(*at) % v.len();
                v[i] = *val;
                v.into()
            }
            Mutation::Truncate(n) => b.slice(..usize::from(*n).min(b.len())),
            Mutation::Append(extra) => {
                let mut v = b.to_vec();
                v.extend_from_slice(extra);
                v.into()
            }
            _ => b,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    AvcHeader {
        alt: bool,
        ts: Ts,
        m: Mutation,
    },
    AacHeader {
        alt: bool,
        ts: Ts,
        m: Mutation,
    },
    /// A synthetic AVCC access unit: one NAL per entry of `nals` (its payload length).
    Video {
        ts: Ts,
        key: bool,
        cts: i16,
        nals: Vec<u8>,
        m: Mutation,
    },
    Audio {
        ts: Ts,
        len: u8,
        m: Mutation,
    },
    /// One of the fixture's real frames.
    Real {
        index: u16,
        ts: Ts,
        m: Mutation,
    },
    RawVideo {
        ts: Ts,
        body: Vec<u8>,
    },
    RawAudio {
        ts: Ts,
        body: Vec<u8>,
    },
    Flush,
    /// `cmaf::fragment` directly, on arbitrary runs.
    Fragment {
        seq: u32,
        runs: Vec<RunSpec>,
    },
}

#[derive(Arbitrary, Debug)]
struct RunSpec {
    track_id: u8,
    tfdt: u64,
    samples: Vec<(u8, u32, i32, bool)>,
}

#[derive(Arbitrary, Debug)]
struct Input {
    part_target_ms: u16,
    segment_target_ms: u16,
    ops: Vec<Op>,
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

/// Checks moof+mdat framing; returns the mfhd sequence number.
fn check_fragment(data: &[u8], runs: Option<&[TrackRun]>) -> u32 {
    assert!(data.len() >= 8 + 16 + 8, "part too short: {}", data.len());
    assert_eq!(&data[4..8], b"moof", "part must start with moof");
    let moof_len = be32(data, 0) as usize;
    assert!(
        moof_len >= 8 + 16 && moof_len + 8 <= data.len(),
        "moof size {moof_len} inconsistent with part of {}",
        data.len()
    );
    assert_eq!(&data[12..16], b"mfhd", "moof starts with mfhd");
    let seq = be32(data, 20);
    assert_eq!(
        &data[moof_len + 4..moof_len + 8],
        b"mdat",
        "moof is followed by mdat"
    );
    assert_eq!(
        be32(data, moof_len) as usize,
        data.len() - moof_len,
        "mdat runs to the end of the part"
    );
    let mut buf = &data[..moof_len];
    let moof = Moof::decode(&mut buf).expect("moof decodes");
    assert!(buf.is_empty(), "moof decoded to its size");
    assert_eq!(moof.mfhd.sequence_number, seq);
    let mut expect_off = moof_len + 8;
    for (i, traf) in moof.traf.iter().enumerate() {
        assert!(traf.tfhd.default_base_is_moof);
        assert_eq!(traf.trun.len(), 1);
        let entries: &[mp4_atom::TrunEntry] = match &traf.trun[0].samples {
            TrunSamples::Explicit(e) => e,
            // mp4-atom encodes a run without samples (only `fragment` callers can ask for
            // one; the packager never does) as an inherited run of 0.
            TrunSamples::Inherited { count: 0, .. } => &[],
            other => panic!("explicit trun expected, got {other:?}"),
        };
        assert_eq!(traf.trun[0].data_offset, Some(expect_off as i32));
        let len: usize = entries.iter().map(|e| e.size.unwrap() as usize).sum();
        if let Some(runs) = runs {
            let run = &runs[i];
            assert_eq!(traf.tfhd.track_id, run.track_id);
            assert_eq!(
                traf.tfdt.as_ref().unwrap().base_media_decode_time,
                run.base_media_decode_time
            );
            assert_eq!(entries.len(), run.samples.len());
            let mut at = expect_off;
            for (e, s) in entries.iter().zip(&run.samples) {
                assert_eq!(e.duration, Some(s.duration));
                assert_eq!(&data[at..at + s.data.len()], &s.data[..]);
                at += s.data.len();
            }
        }
        expect_off += len;
    }
    assert_eq!(expect_off, data.len(), "samples exactly fill the mdat");
    seq
}

fn check_init(data: &[u8], codecs: &str) {
    assert!(codecs.is_ascii() && !codecs.is_empty(), "{codecs:?}");
    assert!(data.len() >= 16);
    assert_eq!(&data[4..8], b"ftyp");
    let ftyp = be32(data, 0) as usize;
    assert!(ftyp + 8 <= data.len());
    assert_eq!(&data[ftyp + 4..ftyp + 8], b"moov");
    assert_eq!(be32(data, ftyp) as usize, data.len() - ftyp);
}

struct Checker {
    part_bound: Duration,
    seen_output: bool,
    last_seq: Option<u32>,
    /// (inits, audio-only inits, parts, segment starts), for `CLASSCAST_FUZZ_STATS`.
    counts: [u32; 4],
}

/// `CLASSCAST_FUZZ_STATS=1 <binary> -runs=0 <corpus>` prints what each input produced, to
/// see which packager paths the corpus reaches.
fn stats_enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("CLASSCAST_FUZZ_STATS").is_some())
}

impl Checker {
    fn check(&mut self, outs: &[PackagerOutput]) {
        for (i, o) in outs.iter().enumerate() {
            if !self.seen_output {
                assert!(
                    matches!(o, PackagerOutput::Init { .. }),
                    "first output must be an Init"
                );
                self.seen_output = true;
            }
            match o {
                PackagerOutput::Init {
                    data,
                    codecs,
                    width,
                    ..
                } => {
                    self.counts[0] += 1;
                    self.counts[1] += u32::from(*width == 0);
                    check_init(data, codecs);
                    assert!(
                        matches!(
                            outs.get(i + 1),
                            Some(PackagerOutput::Part {
                                starts_segment: true,
                                independent: true,
                                ..
                            })
                        ),
                        "an Init must be followed by a segment-starting, independent Part"
                    );
                }
                PackagerOutput::Part {
                    data,
                    duration,
                    independent,
                    starts_segment,
                    ..
                } => {
                    self.counts[2] += 1;
                    self.counts[3] += u32::from(*starts_segment);
                    let seq = check_fragment(data, None);
                    if let Some(last) = self.last_seq {
                        assert!(seq > last, "moof sequence {seq} after {last}");
                    }
                    self.last_seq = Some(seq);
                    assert!(
                        *duration <= self.part_bound,
                        "part of {duration:?} (bound {:?})",
                        self.part_bound
                    );
                    assert!(
                        !*starts_segment || *independent,
                        "segments start on keyframes"
                    );
                }
            }
        }
    }
}

fn video_body(key: bool, cts: i16, nals: &[u8]) -> Bytes {
    let cts = i32::from(cts).to_be_bytes();
    let mut v = vec![if key { 0x17 } else { 0x27 }, 1, cts[1], cts[2], cts[3]];
    let nals: &[u8] = if nals.is_empty() {
        &[4]
    } else {
        &nals[..nals.len().min(8)]
    };
    for (i, &n) in nals.iter().enumerate() {
        v.extend_from_slice(&(u32::from(n) + 1).to_be_bytes());
        v.push(if key && i == 0 { 0x65 } else { 0x41 });
        v.extend(std::iter::repeat_n(0x80 | n, usize::from(n)));
    }
    v.into()
}

fuzz_target!(|input: Input| {
    let fx = fixture();
    let cfg = PackagerConfig {
        part_target: Duration::from_millis(1 + u64::from(input.part_target_ms) % 2000),
        segment_target: Duration::from_millis(1 + u64::from(input.segment_target_ms) % 6000),
    };
    let mut p = Packager::new(cfg);
    let mut chk = Checker {
        // One clamped timestamp step (<= MAX_TS_JUMP_MS) past the target, plus a frame
        // (video: the assumed last-frame duration; audio: 1024 samples at >= 1 kHz).
        part_bound: cfg.part_target + Duration::from_millis(MAX_TS_JUMP_MS + 1100),
        seen_output: false,
        last_seq: None,
        counts: [0; 4],
    };
    let mut now: u32 = 0;
    let mut tick = |ts: &Ts| {
        now = match *ts {
            Ts::Step(d) => now.wrapping_add(u32::from(d)),
            Ts::Back(d) => now.wrapping_sub(u32::from(d)),
            Ts::BigStep(d) => now.wrapping_add(u32::from(d)),
            Ts::Jump(t) => t,
            Ts::Same => now,
        };
        now
    };
    for op in input.ops.iter().take(512) {
        let out = match op {
            Op::AvcHeader { alt, ts, m } => {
                let h = if *alt { &fx.alt_avc_hdr } else { &fx.avc_hdr };
                p.push_video(tick(ts), m.apply(h.clone()))
            }
            Op::AacHeader { alt, ts, m } => {
                let h = if *alt {
                    Bytes::from_static(ALT_AAC_HDR)
                } else {
                    fx.aac_hdr.clone()
                };
                p.push_audio(tick(ts), m.apply(h))
            }
            Op::Video {
                ts,
                key,
                cts,
                nals,
                m,
            } => p.push_video(tick(ts), m.apply(video_body(*key, *cts, nals))),
            Op::Audio { ts, len, m } => {
                let mut v = vec![0xAF, 1];
                v.extend(std::iter::repeat_n(0x21, usize::from(*len)));
                p.push_audio(tick(ts), m.apply(v.into()))
            }
            Op::Real { index, ts, m } => {
                let (video, body) = &fx.tags[usize::from(*index) % fx.tags.len()];
                let body = m.apply(body.clone());
                if *video {
                    p.push_video(tick(ts), body)
                } else {
                    p.push_audio(tick(ts), body)
                }
            }
            Op::RawVideo { ts, body } => p.push_video(tick(ts), Bytes::copy_from_slice(body)),
            Op::RawAudio { ts, body } => p.push_audio(tick(ts), Bytes::copy_from_slice(body)),
            Op::Flush => Ok(p.flush()),
            Op::Fragment { seq, runs } => {
                let runs: Vec<TrackRun> = runs
                    .iter()
                    .take(4)
                    .map(|r| TrackRun {
                        track_id: u32::from(r.track_id),
                        base_media_decode_time: r.tfdt,
                        samples: r
                            .samples
                            .iter()
                            .take(64)
                            .map(|&(len, duration, cts, sync)| Sample {
                                data: vec![len; usize::from(len)].into(),
                                duration,
                                composition_offset: cts,
                                is_sync: sync,
                            })
                            .collect(),
                    })
                    .collect();
                if let Ok(data) = cmaf::fragment(*seq, &runs) {
                    assert_eq!(check_fragment(&data, Some(&runs)), *seq);
                }
                continue;
            }
        };
        if let Ok(out) = out {
            chk.check(&out);
        }
    }
    chk.check(&p.flush());
    if stats_enabled() {
        let [inits, audio_only, parts, segments] = chk.counts;
        eprintln!(
            "STATS inits={inits} audio_only_inits={audio_only} parts={parts} segments={segments}"
        );
    }
});
