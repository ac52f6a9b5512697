//! Renders the LL-HLS media playlist. No m3u8 crate writes the low-latency tags, so this is
//! ours; it is a pure function of the stream state, which is what lets an edge with the same
//! state render the same bytes as the origin.

use std::fmt::Write;

use super::state::{HlsConfig, State};

/// Segments at the live end whose parts are listed; older segments appear whole only.
pub const PART_SEGMENTS: usize = 3;

pub fn target_duration(st: &State, cfg: &HlsConfig) -> u64 {
    st.target_duration(cfg)
}

pub fn part_target(st: &State, cfg: &HlsConfig) -> f64 {
    st.part_target(cfg)
}

/// Smallest PART-HOLD-BACK a player is told to keep, in seconds, whatever the part length.
pub const MIN_PART_HOLD_BACK: f64 = 0.3;

/// `PART-HOLD-BACK`: three part targets, never under [`MIN_PART_HOLD_BACK`]. RFC 8216bis says
/// at least two (MUST) and three (SHOULD); Apple's authoring specification (§14.3) says three
/// (MUST) and its validator rejects less, and Apple's players are what a school's iPads run.
/// Two were served from `ed91707` to 12-07 for ~0.2 s of hls.js latency; that trade is not ours
/// to make (`conformance::PART_HOLD_BACK_APPLE` fails it). A player that honours the value
/// (hls.js and Shaka in low-latency mode) sits that far behind the newest part. The floor is
/// absolute because what the margin absorbs (Wi-Fi, encoder and scheduling jitter) is: 0.2 s
/// with 100 ms parts stalled in the benchmark. HOLD-BACK, for players that ignore parts, is
/// already at its minimum of three target durations.
pub fn part_hold_back(part_target: f64) -> f64 {
    (3.0 * part_target).max(MIN_PART_HOLD_BACK)
}

/// `query` is appended to every URI (e.g. `jwt=…`), so that players that know nothing of our
/// tokens carry them along.
pub fn render(st: &State, cfg: &HlsConfig, query: Option<&str>) -> String {
    let q = |uri: &str| match query {
        Some(q) if !q.is_empty() => format!("{uri}?{q}"),
        _ => uri.to_string(),
    };
    let target = target_duration(st, cfg);
    let part_target = part_target(st, cfg);
    let first_listed = st.segments.len().saturating_sub(cfg.window);
    let listed: Vec<_> = st.segments.iter().skip(first_listed).collect();
    let media_sequence = listed.first().map(|s| s.msn).unwrap_or(0);
    // Discontinuities dropped from the front still count, so that a player's DISCONTINUITY
    // sequence stays aligned as the window moves.
    let dropped_disc = st.discontinuity_seq
        + st.segments
            .iter()
            .take(first_listed)
            .filter(|s| s.discontinuity)
            .count() as u64;

    let mut out = String::with_capacity(256 + listed.len() * 400);
    out.push_str("#EXTM3U\n#EXT-X-VERSION:9\n");
    let _ = writeln!(out, "#EXT-X-TARGETDURATION:{target}");
    let _ = writeln!(
        out,
        "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={:.3},HOLD-BACK={:.3}",
        part_hold_back(part_target),
        3.0 * target as f64
    );
    let _ = writeln!(out, "#EXT-X-PART-INF:PART-TARGET={part_target:.3}");
    let _ = writeln!(out, "#EXT-X-MEDIA-SEQUENCE:{media_sequence}");
    if dropped_disc > 0 {
        let _ = writeln!(out, "#EXT-X-DISCONTINUITY-SEQUENCE:{dropped_disc}");
    }
    out.push_str("#EXT-X-INDEPENDENT-SEGMENTS\n");

    let parts_from = listed.len().saturating_sub(PART_SEGMENTS);
    let mut current_init = None;
    for (i, seg) in listed.iter().enumerate() {
        // Also on the first listed segment: an edge that joins now must learn of it to keep
        // its DISCONTINUITY-SEQUENCE in step with the origin's.
        if seg.discontinuity {
            out.push_str("#EXT-X-DISCONTINUITY\n");
        }
        if current_init != Some(seg.init_id) {
            let _ = writeln!(
                out,
                "#EXT-X-MAP:URI=\"{}\"",
                q(&format!("init{}.mp4", seg.init_id))
            );
            current_init = Some(seg.init_id);
        }
        let _ = writeln!(out, "#EXT-X-PROGRAM-DATE-TIME:{}", rfc3339_ms(seg.pdt_ms));
        if i >= parts_from {
            for (pi, p) in seg.parts.iter().enumerate() {
                let indep = if p.independent {
                    ",INDEPENDENT=YES"
                } else {
                    ""
                };
                let _ = writeln!(
                    out,
                    "#EXT-X-PART:DURATION={:.5},URI=\"{}\"{indep}",
                    p.duration,
                    q(&format!("part{}.{pi}.m4s", seg.msn))
                );
            }
        }
        if seg.complete {
            let _ = writeln!(out, "#EXTINF:{:.5},", seg.duration);
            out.push_str(&q(&format!("seg{}.m4s", seg.msn)));
            out.push('\n');
        }
    }
    if st.ended {
        out.push_str("#EXT-X-ENDLIST\n");
    } else if let Some((msn, idx)) = st.preload_hint(cfg, part_target) {
        let _ = writeln!(
            out,
            "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"{}\"",
            q(&format!("part{msn}.{idx}.m4s"))
        );
    }
    out
}

/// A rendered playlist cut at every URI's query position, so that a viewer's token is spliced
/// in with one copy per request instead of a full render.
#[derive(Debug)]
pub struct Rendered {
    pieces: Vec<String>,
    len: usize,
}

const SPLICE: &str = "\u{0}";

impl Rendered {
    pub fn new(st: &State, cfg: &HlsConfig) -> Self {
        let text = render(st, cfg, Some(SPLICE));
        let pieces: Vec<String> = text
            .split(&format!("?{SPLICE}"))
            .map(str::to_string)
            .collect();
        let len = pieces.iter().map(String::len).sum();
        Self { pieces, len }
    }

    /// The playlist with `query` (e.g. `?jwt=…`, or empty) after every URI.
    pub fn join_with(&self, query: &str) -> String {
        let mut out = String::with_capacity(self.len + self.pieces.len() * query.len());
        for (i, p) in self.pieces.iter().enumerate() {
            if i > 0 {
                out.push_str(query);
            }
            out.push_str(p);
        }
        out
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` from Unix milliseconds.
pub fn rfc3339_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let sod = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60,
        ms % 1000
    )
}

/// Parses our own `rfc3339_ms` output back (edges copy PDTs from the origin's playlist).
pub fn parse_rfc3339_ms(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let ms = if b.get(19) == Some(&b'.') {
        num(20..23).unwrap_or(0)
    } else {
        0
    };
    // Days from civil (inverse of the above).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    u64::try_from(secs * 1000 + ms).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hls::state::TestStream as HlsStream;
    use bytes::Bytes;
    use std::time::Duration;

    #[test]
    fn dates() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_795_000_000_123), "2026-11-18T11:06:40.123Z");
        for ms in [0u64, 951_782_400_000, 1_795_000_000_123, 4_107_542_399_999] {
            assert_eq!(parse_rfc3339_ms(&rfc3339_ms(ms)), Some(ms));
        }
    }

    #[test]
    fn renders_ll_hls_tags_and_tokens() {
        let cfg = HlsConfig::default();
        let s = HlsStream::new("live/x".into(), cfg.clone());
        s.set_init(Bytes::from_static(b"i"), "avc1".into(), None);
        let d = Duration::from_millis(200);
        for i in 0..12 {
            s.push_part(Bytes::from_static(b"p"), d, i % 5 == 0, i % 5 == 0, false);
        }
        let p = render(&s.read(), &cfg, Some("jwt=T"));
        assert!(p.starts_with("#EXTM3U\n"));
        assert!(p.contains("#EXT-X-PART-INF:PART-TARGET=0.200\n"));
        assert!(p.contains("CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=0.600,HOLD-BACK=3.000\n"));
        // Three parts, never under 0.3 s.
        assert!((part_hold_back(0.2) - 0.6).abs() < 1e-9);
        assert!((part_hold_back(0.1) - 0.3).abs() < 1e-9);
        assert_eq!(part_hold_back(0.05), 0.3);
        assert_eq!(part_hold_back(1.0), 3.0);
        assert_eq!(super::super::conformance::check_media_playlist(&p), vec![]);
        assert!(p.contains("#EXT-X-MAP:URI=\"init0.mp4?jwt=T\""));
        let b = s.read().segments[0].msn;
        assert!(p.contains(&format!("#EXTINF:1.00000,\nseg{b}.m4s?jwt=T\n")));
        assert!(p.contains(&format!(
            "#EXT-X-PART:DURATION=0.20000,URI=\"part{}.1.m4s?jwt=T\"\n",
            b + 2
        )));
        assert!(p.contains(&format!(
            "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part{}.2.m4s?jwt=T\"\n",
            b + 2
        )));
        assert!(p.contains("#EXT-X-PROGRAM-DATE-TIME:"));
        assert!(!p.contains("ENDLIST"));
        s.end();
        let p = render(&s.read(), &cfg, None);
        assert!(p.ends_with("#EXT-X-ENDLIST\n"));
        assert!(!p.contains("PRELOAD-HINT"));
        assert!(!p.contains("jwt"));
    }

    #[test]
    fn spliced_equals_rendered() {
        let cfg = HlsConfig::default();
        let s = HlsStream::new("live/x".into(), cfg.clone());
        s.set_init(Bytes::from_static(b"i"), "avc1".into(), None);
        for i in 0..17 {
            s.push_part(
                Bytes::from_static(b"p"),
                Duration::from_millis(200),
                i % 5 == 0,
                i % 5 == 0,
                false,
            );
        }
        let r = Rendered::new(&s.read(), &cfg);
        assert_eq!(
            r.join_with("?jwt=T"),
            render(&s.read(), &cfg, Some("jwt=T"))
        );
        assert_eq!(r.join_with(""), render(&s.read(), &cfg, None));
    }

    #[test]
    fn hint_moves_to_the_next_segment_when_durations_fall_a_millisecond_short() {
        let cfg = HlsConfig::default();
        let s = HlsStream::new("live/x".into(), cfg.clone());
        s.set_init(Bytes::from_static(b"i"), "avc1".into(), None);
        for (i, ms) in [200, 199, 200, 200, 200].into_iter().enumerate() {
            s.push_part(
                Bytes::from_static(b"p"),
                Duration::from_millis(ms),
                i == 0,
                i == 0,
                false,
            );
        }
        let b = s.read().segments[0].msn;
        let p = render(&s.read(), &cfg, None);
        assert!(
            p.contains(&format!(
                "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part{}.0.m4s\"",
                b + 1
            )),
            "{p}"
        );
    }

    #[test]
    fn discontinuity_after_reconnect() {
        let cfg = HlsConfig::default();
        let s = HlsStream::new("live/x".into(), cfg.clone());
        let d = Duration::from_millis(500);
        s.push_part(Bytes::from_static(b"p"), d, true, true, false);
        s.publisher_left();
        s.push_part(Bytes::from_static(b"p"), d, true, true, true);
        let p = render(&s.read(), &cfg, None);
        let b = s.read().segments[0].msn;
        assert!(
            p.contains(&format!("seg{b}.m4s\n#EXT-X-DISCONTINUITY\n")),
            "{p}"
        );
    }
}

/// An origin's playlist as an edge reads it. Only our own renderer's output needs to parse.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ParsedPlaylist {
    pub target_duration: u64,
    pub part_target: f64,
    pub media_sequence: u64,
    pub discontinuity_sequence: u64,
    pub segments: Vec<ParsedSegment>,
    pub ended: bool,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct ParsedSegment {
    pub msn: u64,
    pub pdt_ms: u64,
    pub discontinuity: bool,
    pub init_id: u32,
    pub parts: Vec<ParsedPart>,
    /// `Some` once the segment is complete (`EXTINF`).
    pub duration: Option<f64>,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct ParsedPart {
    pub duration: f64,
    pub independent: bool,
}

fn attr<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let key = format!("{name}=");
    let mut rest = line;
    loop {
        let i = rest.find(&key)?;
        let before = rest[..i].chars().last();
        let v = &rest[i + key.len()..];
        if matches!(before, None | Some(',') | Some(':')) {
            return Some(if let Some(q) = v.strip_prefix('"') {
                q.split('"').next().unwrap_or("")
            } else {
                v.split(',').next().unwrap_or("")
            });
        }
        rest = v;
    }
}

impl ParsedPlaylist {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut lines = text.lines();
        if lines.next().map(str::trim) != Some("#EXTM3U") {
            return Err("not an m3u8 playlist".into());
        }
        let mut p = ParsedPlaylist::default();
        let mut init_id = 0u32;
        let mut pending_disc = false;
        let mut cur: Option<ParsedSegment> = None;
        let num = |s: &str| {
            s.trim()
                .parse::<u64>()
                .map_err(|_| format!("bad number {s:?}"))
        };
        let float = |s: &str| {
            s.trim()
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite() && *f >= 0.0)
                .ok_or(format!("bad duration {s:?}"))
        };
        while let Some(line) = lines.next() {
            let line = line.trim();
            if let Some(v) = line.strip_prefix("#EXT-X-TARGETDURATION:") {
                p.target_duration = num(v)?;
            } else if let Some(v) = line.strip_prefix("#EXT-X-PART-INF:") {
                p.part_target =
                    float(attr(v, "PART-TARGET").ok_or("PART-INF without PART-TARGET")?)?;
            } else if let Some(v) = line.strip_prefix("#EXT-X-MEDIA-SEQUENCE:") {
                p.media_sequence = num(v)?;
            } else if let Some(v) = line.strip_prefix("#EXT-X-DISCONTINUITY-SEQUENCE:") {
                p.discontinuity_sequence = num(v)?;
            } else if line == "#EXT-X-DISCONTINUITY" {
                pending_disc = true;
            } else if let Some(v) = line.strip_prefix("#EXT-X-MAP:") {
                let uri = attr(v, "URI").ok_or("MAP without URI")?;
                let id = uri
                    .strip_prefix("init")
                    .and_then(|r| r.split(".mp4").next())
                    .ok_or("bad MAP URI")?;
                init_id = id.parse().map_err(|_| "bad init id")?;
            } else if let Some(v) = line.strip_prefix("#EXT-X-PROGRAM-DATE-TIME:") {
                // Our renderer opens every segment with its PDT.
                if let Some(s) = cur.take() {
                    p.segments.push(s);
                }
                let msn = p
                    .media_sequence
                    .checked_add(p.segments.len() as u64)
                    .ok_or("media sequence number overflow")?;
                cur = Some(ParsedSegment {
                    msn,
                    pdt_ms: parse_rfc3339_ms(v).ok_or("bad PROGRAM-DATE-TIME")?,
                    discontinuity: std::mem::take(&mut pending_disc),
                    init_id,
                    parts: Vec::new(),
                    duration: None,
                });
            } else if let Some(v) = line.strip_prefix("#EXT-X-PART:") {
                let seg = cur.as_mut().ok_or("PART before PROGRAM-DATE-TIME")?;
                seg.parts.push(ParsedPart {
                    duration: float(attr(v, "DURATION").ok_or("PART without DURATION")?)?,
                    independent: attr(v, "INDEPENDENT") == Some("YES"),
                });
            } else if let Some(v) = line.strip_prefix("#EXTINF:") {
                let seg = cur.as_mut().ok_or("EXTINF before PROGRAM-DATE-TIME")?;
                seg.duration = Some(float(v.split(',').next().unwrap_or(""))?);
                lines.next();
            } else if line == "#EXT-X-ENDLIST" {
                p.ended = true;
            }
        }
        if let Some(s) = cur.take() {
            p.segments.push(s);
        }
        Ok(p)
    }
}

#[cfg(test)]
mod parse_tests {
    use super::*;
    use crate::hls::state::TestStream as HlsStream;
    use bytes::Bytes;
    use std::time::Duration;

    #[test]
    fn parses_what_we_render() {
        let cfg = HlsConfig::default();
        let s = HlsStream::new("live/x".into(), cfg.clone());
        s.set_init(Bytes::from_static(b"i"), "avc1".into(), None);
        for i in 0..23 {
            s.push_part(
                Bytes::from_static(b"p"),
                Duration::from_millis(200),
                i % 5 == 0,
                i % 5 == 0,
                i == 10,
            );
        }
        let text = render(&s.read(), &cfg, Some("jwt=abc"));
        let p = ParsedPlaylist::parse(&text).unwrap();
        let st = s.read();
        let listed: Vec<_> = st
            .segments
            .iter()
            .skip(st.segments.len().saturating_sub(cfg.window))
            .collect();
        assert_eq!(p.segments.len(), listed.len());
        assert_eq!(p.media_sequence, listed[0].msn);
        assert_eq!(p.part_target, 0.2);
        for (a, b) in p.segments.iter().zip(listed) {
            assert_eq!(a.msn, b.msn);
            assert_eq!(a.pdt_ms, b.pdt_ms);
            assert_eq!(a.discontinuity, b.discontinuity);
            assert_eq!(a.duration.is_some(), b.complete);
        }
        assert_eq!(p.segments.last().unwrap().parts.len(), 3);
        assert!(ParsedPlaylist::parse("garbage").is_err());
        assert!(ParsedPlaylist::parse("#EXTM3U\n#EXT-X-PART:DURATION=1\n").is_err());
    }

    /// A crash of the `hls_query` fuzz target (fuzz/fuzz_targets/hls_query.rs; input minimized
    /// with libFuzzer's `-minimize_crash`): the second segment's msn, MEDIA-SEQUENCE + 1,
    /// overflowed u64 — a panic with overflow checks, a wrapped msn 0 without.
    #[test]
    fn media_sequence_overflow_is_an_error() {
        let input: &[u8] = b"#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:18446744073709551615\n\
            #EXT-X-PROGRAM-DATE-TIME:2026-11-19:26:40123Z\n#EXT-X-PROGRAM-DATE-TIME:";
        let text = std::str::from_utf8(input).unwrap();
        assert!(ParsedPlaylist::parse(text).is_err());
        // One segment at the very last msn still fits.
        let p = ParsedPlaylist::parse(text.trim_end_matches("#EXT-X-PROGRAM-DATE-TIME:")).unwrap();
        assert_eq!(p.segments.len(), 1);
        assert_eq!(p.segments[0].msn, u64::MAX);
    }
}
