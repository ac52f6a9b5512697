//! The multivariant playlist of a class published as a ladder (Enhanced RTMP multitrack): one
//! `EXT-X-STREAM-INF` per rendition, each pointing at that rendition's own LL-HLS media
//! playlist. Audio is muxed into every rendition's parts, so a variant's CODECS names both.
//!
//! The origin measures each variant from the rendition's segments ([`Variant::measure`]); an
//! edge copies the origin's values ([`parse`]), since it holds the same bytes but may not yet
//! hold as many segments.

use std::fmt::Write;

use super::state::State;

/// One rendition as the multivariant playlist lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    /// Relative to the multivariant playlist, without a query: `v1/index.m3u8`.
    pub uri: String,
    /// Peak segment bit rate (bits/s), RFC 8216bis §4.4.6.2.
    pub bandwidth: u64,
    pub average_bandwidth: u64,
    pub codecs: String,
    pub resolution: Option<(u32, u32)>,
    pub frame_rate: Option<f64>,
}

/// The URI of track `track`'s media playlist, relative to the class's directory.
pub fn rendition_uri(track: u8) -> String {
    format!("v{track}/index.m3u8")
}

impl Variant {
    /// The rendition's figures from what `st` holds. BANDWIDTH is the peak over complete
    /// segments in the window, AVERAGE-BANDWIDTH their mean; before the first segment completes
    /// both come from the parts so far. `None` until there is media and a codec string.
    pub fn measure(uri: String, st: &State, frame_rate: Option<f64>) -> Option<Variant> {
        if st.codecs.is_empty() {
            return None;
        }
        let (mut peak, mut bits, mut secs) = (0.0f64, 0.0f64, 0.0f64);
        for s in st
            .segments
            .iter()
            .filter(|s| s.complete && s.duration > 0.0)
        {
            let b = segment_bytes(s) as f64 * 8.0;
            peak = peak.max(b / s.duration);
            bits += b;
            secs += s.duration;
        }
        if secs == 0.0 {
            // Only the open segment: its parts so far, the first of which holds the keyframe,
            // so this errs high, as a peak should.
            for s in &st.segments {
                for p in &s.parts {
                    bits += p.data.len() as f64 * 8.0;
                    secs += p.duration;
                }
            }
            if secs == 0.0 {
                return None;
            }
            peak = bits / secs;
        }
        Some(Variant {
            uri,
            bandwidth: peak.ceil() as u64,
            average_bandwidth: (bits / secs).ceil() as u64,
            codecs: st.codecs.clone(),
            resolution: st.resolution,
            frame_rate,
        })
    }
}

fn segment_bytes(s: &super::state::Segment) -> usize {
    match &s.full {
        Some(f) if s.parts.is_empty() => f.len(),
        _ => s.parts.iter().map(|p| p.data.len()).sum(),
    }
}

/// The multivariant playlist; `query` (the viewer's `?jwt=…`, or empty) follows every URI.
pub fn render(variants: &[Variant], query: &str) -> String {
    let mut out = String::from("#EXTM3U\n#EXT-X-VERSION:9\n#EXT-X-INDEPENDENT-SEGMENTS\n");
    for v in variants {
        let _ = write!(
            out,
            "#EXT-X-STREAM-INF:BANDWIDTH={},AVERAGE-BANDWIDTH={},CODECS=\"{}\"",
            v.bandwidth, v.average_bandwidth, v.codecs
        );
        if let Some((w, h)) = v.resolution {
            let _ = write!(out, ",RESOLUTION={w}x{h}");
        }
        if let Some(f) = v.frame_rate {
            let _ = write!(out, ",FRAME-RATE={f:.3}");
        }
        let _ = writeln!(out, "\n{}{query}", v.uri);
    }
    out
}

/// Whether `text` is a multivariant playlist (what an edge checks on the origin's answer).
pub fn is_multivariant(text: &str) -> bool {
    text.lines().any(|l| l.starts_with("#EXT-X-STREAM-INF:"))
}

/// The variants of a multivariant playlist we rendered (an edge reading its origin's). URIs
/// lose their query. Lines it does not know are skipped.
pub fn parse(text: &str) -> Result<Vec<Variant>, String> {
    let mut out = Vec::new();
    let mut lines = text.lines();
    if lines.next().map(str::trim) != Some("#EXTM3U") {
        return Err("not a playlist".into());
    }
    while let Some(line) = lines.next() {
        let Some(attrs) = line.strip_prefix("#EXT-X-STREAM-INF:") else {
            continue;
        };
        let uri = lines.next().ok_or("EXT-X-STREAM-INF without a URI")?;
        let uri = uri.split('?').next().unwrap_or_default().trim().to_string();
        let mut v = Variant {
            uri,
            bandwidth: 0,
            average_bandwidth: 0,
            codecs: String::new(),
            resolution: None,
            frame_rate: None,
        };
        for (k, val) in attributes(attrs) {
            match k {
                "BANDWIDTH" => v.bandwidth = val.parse().map_err(|_| "bad BANDWIDTH")?,
                "AVERAGE-BANDWIDTH" => {
                    v.average_bandwidth = val.parse().map_err(|_| "bad AVERAGE-BANDWIDTH")?
                }
                "CODECS" => v.codecs = val.to_string(),
                "RESOLUTION" => {
                    let (w, h) = val.split_once('x').ok_or("bad RESOLUTION")?;
                    v.resolution = Some((
                        w.parse().map_err(|_| "bad RESOLUTION")?,
                        h.parse().map_err(|_| "bad RESOLUTION")?,
                    ));
                }
                "FRAME-RATE" => v.frame_rate = Some(val.parse().map_err(|_| "bad FRAME-RATE")?),
                _ => {}
            }
        }
        out.push(v);
    }
    Ok(out)
}

/// `K=V` pairs of an attribute list; quoted values may hold commas (CODECS does).
pub(super) fn attributes(s: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let Some((k, after)) = rest.split_once('=') else {
            break;
        };
        let (v, next) = if let Some(q) = after.strip_prefix('"') {
            match q.split_once('"') {
                Some((v, n)) => (v, n.strip_prefix(',').unwrap_or(n)),
                None => (q, ""),
            }
        } else {
            match after.split_once(',') {
                Some((v, n)) => (v, n),
                None => (after, ""),
            }
        };
        out.push((k.trim(), v));
        rest = next;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hls::conformance::check_multivariant_playlist;

    fn ladder() -> Vec<Variant> {
        vec![
            Variant {
                uri: rendition_uri(0),
                bandwidth: 3_100_000,
                average_bandwidth: 2_600_000,
                codecs: "avc1.640028,mp4a.40.2".into(),
                resolution: Some((1920, 1080)),
                frame_rate: Some(30.0),
            },
            Variant {
                uri: rendition_uri(2),
                bandwidth: 450_000,
                average_bandwidth: 400_000,
                codecs: "avc1.64001e,mp4a.40.2".into(),
                resolution: Some((640, 360)),
                frame_rate: Some(29.97),
            },
        ]
    }

    #[test]
    fn renders_what_it_parses_and_conforms() {
        let text = render(&ladder(), "?jwt=a.b.c");
        assert!(is_multivariant(&text));
        assert!(text.contains(
            "#EXT-X-STREAM-INF:BANDWIDTH=3100000,AVERAGE-BANDWIDTH=2600000,CODECS=\"avc1.640028,mp4a.40.2\",RESOLUTION=1920x1080,FRAME-RATE=30.000\nv0/index.m3u8?jwt=a.b.c\n"
        ));
        assert_eq!(check_multivariant_playlist(&text), vec![]);
        let back = parse(&text).unwrap();
        assert_eq!(back[0], ladder()[0]);
        assert_eq!(back[1].frame_rate, Some(29.97));
        assert!(parse("nope").is_err());
    }

    #[test]
    fn a_variant_without_codecs_or_resolution_breaks_the_rules() {
        let mut l = ladder();
        l[1].codecs.clear();
        l[1].resolution = None;
        l[1].frame_rate = None;
        let rules: Vec<_> = check_multivariant_playlist(&render(&l, ""))
            .into_iter()
            .map(|v| v.rule)
            .collect();
        use crate::hls::conformance::*;
        assert!(rules.contains(&STREAM_INF_CODECS), "{rules:?}");
        assert!(rules.contains(&STREAM_INF_RESOLUTION), "{rules:?}");
        assert!(rules.contains(&STREAM_INF_FRAME_RATE), "{rules:?}");
    }

    #[test]
    fn measured_from_segments_peak_and_average() {
        use crate::hls::state::{CutPart, HlsConfig, Now};
        use bytes::Bytes;
        use std::time::Duration;
        let cfg = HlsConfig::default();
        let mut st = State::default();
        assert!(Variant::measure(rendition_uri(0), &st, None).is_none());
        st.set_init(
            Bytes::from_static(b"init"),
            "avc1.64001e".into(),
            Some((640, 360)),
        );
        let mut push = |bytes: usize, starts: bool| {
            st.push_cut(
                &cfg,
                0,
                CutPart {
                    data: Bytes::from(vec![0; bytes]),
                    duration: Duration::from_millis(500),
                    independent: starts,
                    starts_segment: starts,
                    discontinuity: false,
                },
                Now::system(),
            );
        };
        // Segment 0: 1000 bytes in 1 s; segment 1: 3000 bytes in 1 s; segment 2 open.
        push(500, true);
        push(500, false);
        push(2000, true);
        push(1000, false);
        push(100, true);
        let v = Variant::measure(rendition_uri(0), &st, Some(30.0)).unwrap();
        assert_eq!((v.bandwidth, v.average_bandwidth), (24_000, 16_000));
        assert_eq!(v.resolution, Some((640, 360)));
    }
}
