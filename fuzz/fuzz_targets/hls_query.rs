//! HLS request parsing (`HlsQuery::parse`, `HlsFile::parse`) and the playlist parser an edge
//! runs on its upstream's playlist (`ParsedPlaylist::parse`), plus a render → parse round
//! trip.
//!
//! Input: `[mode, rest..]`.
//! - even `mode`: `rest` (lossily decoded as UTF-8) goes to all three parsers. Invariants: no
//!   panic; `_HLS_part` without `_HLS_msn` is always an error, and an `Ok` query never has a
//!   part without an msn; a file name that parses re-parses identically from its canonical
//!   spelling.
//! - odd `mode`: `rest` drives `arbitrary` to build stream state through the `State` API
//!   (origin parts, edge parts and whole segments, inits, publisher left, end, adopted origin
//!   header). `ParsedPlaylist::parse(render(state))` must succeed and give back the listed
//!   segments' msns, PDTs, discontinuities, init ids and durations (to the 5 decimals that are
//!   rendered), the parts of the last `PART_SEGMENTS` segments, and the header values.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use media::hls::names::{HlsFile, HlsQuery};
use media::hls::playlist::{self, PART_SEGMENTS, ParsedPlaylist};
use media::hls::state::{HlsConfig, Now, PartIn, State};
use std::time::Duration;

/// 9999-12-31T23:59:59.999Z: the renderer writes 4-digit years.
const MAX_PDT_MS: u64 = 253_402_300_799_999;

fn text_mode(s: &str) {
    // Queries.
    let r = HlsQuery::parse(Some(s));
    let mut has_msn = false;
    let mut has_part = false;
    for (k, _) in url::form_urlencoded::parse(s.as_bytes()) {
        has_msn |= k == "_HLS_msn";
        has_part |= k == "_HLS_part";
    }
    if has_part && !has_msn {
        assert!(r.is_err(), "_HLS_part without _HLS_msn accepted: {s:?}");
    }
    if let Ok(q) = &r {
        assert!(q.part.is_none() || q.msn.is_some(), "{s:?} -> {q:?}");
        assert_eq!(q.msn.is_some(), has_msn);
        assert_eq!(q.part.is_some(), has_part);
        assert!(s.len() <= 8192);
    }
    assert!(HlsQuery::parse(None).is_ok());

    // File names.
    if let Some(f) = HlsFile::parse(s) {
        let canonical = match &f {
            HlsFile::Playlist => "index.m3u8".to_string(),
            HlsFile::Init(id) => format!("init{id}.mp4"),
            HlsFile::Segment(msn) => format!("seg{msn}.m4s"),
            HlsFile::Part(msn, i) => format!("part{msn}.{i}.m4s"),
        };
        assert_eq!(HlsFile::parse(&canonical), Some(f), "{s:?}");
        assert!(!s.contains('/'), "{s:?}");
    }

    // Playlists: only "no panic". The parser reads our renderer's output; on other text
    // (e.g. a MEDIA-SEQUENCE after the first segment) its numbering is not meaningful, and the
    // round-trip mode is what checks its values.
    let _ = ParsedPlaylist::parse(s);
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// An origin part (`push_part` semantics, but with a chosen PDT for determinism).
    Part {
        new_segment: bool,
        duration_us: u32,
        independent: bool,
        discontinuity: bool,
        pdt_step_ms: u32,
        init_id: Option<u16>,
    },
    /// An edge inserting a whole segment it joined too late to get in parts.
    FullSegment {
        duration_us: u32,
        pdt_step_ms: u32,
        discontinuity: bool,
        init_id: u16,
    },
    SetInit(u8),
    PutInit(u16),
    PublisherLeft,
    End,
    AdoptHeader {
        target: u8,
        part_target_ms: u16,
        discontinuity_seq: u16,
    },
}

#[derive(Arbitrary, Debug)]
struct RoundTrip {
    first_msn: u32,
    first_pdt_ms: u64,
    window: u8,
    part_target_ms: u16,
    segment_target_ms: u16,
    /// 0: no query; 1: empty; else `jwt=` + a token from the JWT alphabet.
    query: (u8, Vec<u8>),
    ops: Vec<Op>,
}

fn round_trip(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let rt = RoundTrip::arbitrary(u)?;
    let cfg = HlsConfig {
        part_target: Duration::from_millis(1 + u64::from(rt.part_target_ms) % 5000),
        segment_target: Duration::from_millis(1 + u64::from(rt.segment_target_ms) % 20_000),
        window: 1 + usize::from(rt.window) % 12,
        ..HlsConfig::default()
    };
    let mut s = State::default();
    let now = Now::system();
    let mut pdt = rt.first_pdt_ms % (MAX_PDT_MS / 2);
    let mut next_pdt = |step: u32| {
        pdt = (pdt + u64::from(step)).min(MAX_PDT_MS);
        pdt
    };
    // Segment numbers as an origin assigns them (creation time in seconds) or an edge copies.
    let first_msn = u64::from(rt.first_msn);
    for op in rt.ops.iter().take(256) {
        match op {
            Op::Part {
                new_segment,
                duration_us,
                independent,
                discontinuity,
                pdt_step_ms,
                init_id,
            } => {
                let (msn, index) = match s.segments.back() {
                    Some(b) if !new_segment && !b.complete => (b.msn, b.parts.len()),
                    Some(b) => (b.msn + 1, 0),
                    None => (first_msn, 0),
                };
                let init_id = init_id.map_or_else(|| s.current_init_id(), u32::from);
                let p = PartIn {
                    msn,
                    index,
                    data: Bytes::from_static(b"p"),
                    duration: f64::from(*duration_us) / 1e6,
                    independent: *independent,
                    pdt_ms: next_pdt(*pdt_step_ms),
                    discontinuity: *discontinuity,
                    init_id,
                };
                s.insert_part(&cfg, p, now);
            }
            Op::FullSegment {
                duration_us,
                pdt_step_ms,
                discontinuity,
                init_id,
            } => {
                let msn = s.last_msn().map_or(first_msn, |m| m + 1);
                s.insert_full_segment(
                    &cfg,
                    msn,
                    Bytes::from_static(b"s"),
                    f64::from(*duration_us) / 1e6,
                    next_pdt(*pdt_step_ms),
                    *discontinuity,
                    u32::from(*init_id),
                    now,
                );
            }
            Op::SetInit(b) => {
                s.set_init(Bytes::copy_from_slice(&[*b]), "avc1.64001f".into(), None);
            }
            Op::PutInit(id) => {
                s.put_init(u32::from(*id), Bytes::from_static(b"i"), "".into(), None);
            }
            Op::PublisherLeft => s.publisher_left(now),
            Op::End => {
                s.end(now);
            }
            Op::AdoptHeader {
                target,
                part_target_ms,
                discontinuity_seq,
            } => {
                s.adopt_origin_header(
                    u64::from(*target),
                    f64::from(*part_target_ms) / 1000.0,
                    u64::from(*discontinuity_seq),
                );
            }
        }
    }

    const JWT: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.";
    let token: String = rt
        .query
        .1
        .iter()
        .map(|b| JWT[usize::from(*b) % JWT.len()] as char)
        .collect();
    let query = match rt.query.0 % 3 {
        0 => None,
        1 => Some(String::new()),
        _ => Some(format!("jwt={token}")),
    };

    let st = &s;
    let text = playlist::render(&st, &cfg, query.as_deref());
    let p = ParsedPlaylist::parse(&text).unwrap_or_else(|e| panic!("{e}: {text}"));

    let first_listed = st.segments.len().saturating_sub(cfg.window);
    let listed: Vec<_> = st.segments.iter().skip(first_listed).collect();
    let dropped_disc = st.discontinuity_seq
        + st.segments
            .iter()
            .take(first_listed)
            .filter(|s| s.discontinuity)
            .count() as u64;
    assert_eq!(
        p.target_duration,
        playlist::target_duration(&st, &cfg),
        "{text}"
    );
    assert_eq!(p.part_target, playlist::part_target(&st, &cfg), "{text}");
    assert_eq!(
        p.media_sequence,
        listed.first().map_or(0, |s| s.msn),
        "{text}"
    );
    assert_eq!(p.discontinuity_sequence, dropped_disc, "{text}");
    assert_eq!(p.ended, st.ended, "{text}");
    assert_eq!(p.segments.len(), listed.len(), "{text}");
    let rendered = |d: f64| format!("{d:.5}").parse::<f64>().unwrap();
    let parts_from = listed.len().saturating_sub(PART_SEGMENTS);
    for (i, (got, want)) in p.segments.iter().zip(&listed).enumerate() {
        assert_eq!(got.msn, want.msn, "{text}");
        assert_eq!(got.pdt_ms, want.pdt_ms, "{text}");
        assert_eq!(got.discontinuity, want.discontinuity, "{text}");
        assert_eq!(got.init_id, want.init_id, "{text}");
        assert_eq!(
            got.duration,
            want.complete.then(|| rendered(want.duration)),
            "{text}"
        );
        if i >= parts_from {
            assert_eq!(got.parts.len(), want.parts.len(), "{text}");
            for (gp, wp) in got.parts.iter().zip(&want.parts) {
                assert_eq!(gp.duration, rendered(wp.duration), "{text}");
                assert_eq!(gp.independent, wp.independent, "{text}");
            }
        } else {
            assert!(got.parts.is_empty(), "{text}");
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let [mode, rest @ ..] = data else {
        return;
    };
    if mode % 2 == 0 {
        text_mode(&String::from_utf8_lossy(rest));
    } else {
        let _ = round_trip(&mut Unstructured::new(rest));
    }
});
