//! The rules of RFC 8216bis and of Apple's HLS authoring specification (§14, Low-Latency HLS)
//! that a media playlist of ours can break, checked on its text: what the unit tests of the
//! renderers and the end-to-end tests (playlists from a real ffmpeg stream: live, edge,
//! recording) run every playlist through. Each rule has a name a failure quotes.

use std::fmt;

/// One broken rule: its name (where it is written) and what was seen.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    pub rule: &'static str,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.rule, self.detail)
    }
}

pub const EXTM3U_FIRST: &str = "RFC 8216bis EXTM3U: the first line is #EXTM3U";
pub const TARGETDURATION_ONCE: &str = "RFC 8216bis EXT-X-TARGETDURATION: exactly once (MUST)";
pub const EXTINF_WITHIN_TARGET: &str =
    "RFC 8216bis EXT-X-TARGETDURATION: every EXTINF, rounded to an integer, <= it (MUST)";
pub const PART_INF_WITH_PARTS: &str =
    "RFC 8216bis EXT-X-PART-INF: present when the playlist has EXT-X-PART (MUST)";
pub const PART_WITHIN_TARGET: &str =
    "RFC 8216bis EXT-X-PART-INF: every Partial Segment lasts <= PART-TARGET (MUST)";
pub const BLOCKING_RELOAD: &str = "RFC 8216bis EXT-X-SERVER-CONTROL / Apple authoring §14: a live playlist with parts offers CAN-BLOCK-RELOAD=YES (MUST)";
pub const PART_HOLD_BACK_RFC: &str =
    "RFC 8216bis EXT-X-SERVER-CONTROL: PART-HOLD-BACK >= 2 x PART-TARGET (MUST), >= 3 x (SHOULD)";
pub const PART_HOLD_BACK_APPLE: &str =
    "Apple HLS authoring §14.3: PART-HOLD-BACK >= 3 x PART-TARGET (MUST)";
pub const HOLD_BACK: &str =
    "RFC 8216bis EXT-X-SERVER-CONTROL: HOLD-BACK >= 3 x EXT-X-TARGETDURATION (MUST)";
pub const PROGRAM_DATE_TIME: &str =
    "Apple HLS authoring §14: low-latency playlists carry EXT-X-PROGRAM-DATE-TIME (MUST)";
pub const ONE_PRELOAD_HINT: &str =
    "RFC 8216bis EXT-X-PRELOAD-HINT: at most one per TYPE (MUST NOT more)";
pub const NO_HINT_AFTER_END: &str =
    "RFC 8216bis EXT-X-PRELOAD-HINT: none in a playlist with EXT-X-ENDLIST";
pub const PARTS_NEAR_THE_EDGE: &str =
    "RFC 8216bis EXT-X-PART: parts more than 3 target durations from the end are removed (SHOULD)";
pub const MEDIA_SEQUENCE_BEFORE_SEGMENTS: &str =
    "RFC 8216bis EXT-X-MEDIA-SEQUENCE: before the first Media Segment (MUST)";

pub const STREAM_INF_URI: &str =
    "RFC 8216bis EXT-X-STREAM-INF: the next line is the variant's URI (MUST)";
pub const STREAM_INF_BANDWIDTH: &str =
    "RFC 8216bis EXT-X-STREAM-INF: BANDWIDTH on every variant (REQUIRED), >= AVERAGE-BANDWIDTH";
pub const STREAM_INF_AVERAGE: &str =
    "Apple HLS authoring (multivariant playlists): AVERAGE-BANDWIDTH on every variant";
pub const STREAM_INF_CODECS: &str =
    "RFC 8216bis EXT-X-STREAM-INF: CODECS on every variant (SHOULD; Apple HLS authoring: MUST)";
pub const STREAM_INF_RESOLUTION: &str = "RFC 8216bis EXT-X-STREAM-INF: RESOLUTION on a variant with video (recommended; Apple HLS authoring: required)";
pub const STREAM_INF_FRAME_RATE: &str =
    "Apple HLS authoring (multivariant playlists): FRAME-RATE on a variant with video";
pub const MULTIVARIANT_NO_MEDIA_TAGS: &str = "RFC 8216bis 4.1: a Multivariant Playlist holds no Media Segment or Media Playlist tags (MUST NOT)";
pub const MULTIVARIANT_INDEPENDENT: &str = "Apple HLS authoring (multivariant playlists): EXT-X-INDEPENDENT-SEGMENTS when every segment starts with a keyframe";

fn attr<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let (_, attrs) = line.split_once(':')?;
    attrs.split(',').find_map(|a| {
        let (k, v) = a.split_once('=')?;
        (k.trim() == name).then_some(v.trim().trim_matches('"'))
    })
}

fn num(line: &str, name: &str) -> Option<f64> {
    attr(line, name)?.parse().ok()
}

/// Every rule above that `playlist` (a media playlist) breaks; empty when it conforms.
pub fn check_media_playlist(playlist: &str) -> Vec<Violation> {
    let mut v = Vec::new();
    let mut bad = |rule: &'static str, detail: String| v.push(Violation { rule, detail });
    let lines: Vec<&str> = playlist.lines().map(str::trim_end).collect();
    if lines.first() != Some(&"#EXTM3U") {
        bad(EXTM3U_FIRST, format!("{:?}", lines.first()));
    }
    let targets: Vec<f64> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("#EXT-X-TARGETDURATION:"))
        .filter_map(|t| t.trim().parse().ok())
        .collect();
    if targets.len() != 1 {
        bad(TARGETDURATION_ONCE, format!("{} found", targets.len()));
    }
    let target = targets.first().copied().unwrap_or(0.0);
    let part_target = lines
        .iter()
        .find(|l| l.starts_with("#EXT-X-PART-INF:"))
        .and_then(|l| num(l, "PART-TARGET"));
    let control = lines
        .iter()
        .find(|l| l.starts_with("#EXT-X-SERVER-CONTROL:"));
    let ended = lines.contains(&"#EXT-X-ENDLIST");
    let has_parts = lines.iter().any(|l| l.starts_with("#EXT-X-PART:"));

    // Segment durations, and where each part sits counted back from the end of the playlist.
    let mut seen_segment = false;
    let mut sequence_before = false;
    let mut pending_parts: Vec<f64> = Vec::new();
    let mut segments: Vec<(f64, Vec<f64>)> = Vec::new();
    let mut extinf = None;
    for l in &lines {
        if l.starts_with("#EXT-X-MEDIA-SEQUENCE:") && !seen_segment {
            sequence_before = true;
        } else if let Some(d) = l.strip_prefix("#EXTINF:") {
            let d: f64 = d
                .split(',')
                .next()
                .unwrap_or("")
                .trim()
                .parse()
                .unwrap_or(-1.0);
            if d.round() > target {
                bad(
                    EXTINF_WITHIN_TARGET,
                    format!("EXTINF {d} with target {target}"),
                );
            }
            extinf = Some(d);
        } else if l.starts_with("#EXT-X-PART:") {
            let d = num(l, "DURATION").unwrap_or(-1.0);
            if let Some(pt) = part_target
                && d > pt + 1e-9
            {
                bad(PART_WITHIN_TARGET, format!("{l} with PART-TARGET {pt}"));
            }
            pending_parts.push(d);
        } else if !l.starts_with('#') && !l.is_empty() {
            seen_segment = true;
            segments.push((
                extinf.take().unwrap_or(0.0),
                std::mem::take(&mut pending_parts),
            ));
        }
    }
    if seen_segment && !sequence_before {
        bad(MEDIA_SEQUENCE_BEFORE_SEGMENTS, String::new());
    }
    // Parts of the segment being filled, then of the complete ones from the newest back: a
    // part whose start is more than three target durations before the end should be gone.
    let mut from_end: f64 = pending_parts.iter().sum();
    for (duration, parts) in segments.iter().rev() {
        if !parts.is_empty() && from_end >= 3.0 * target + 1e-6 {
            bad(
                PARTS_NEAR_THE_EDGE,
                format!("parts {from_end:.3} s from the end (target {target})"),
            );
            break;
        }
        from_end += duration;
    }
    if has_parts && part_target.is_none() {
        bad(PART_INF_WITH_PARTS, String::new());
    }
    if has_parts && !ended && control.is_none_or(|c| attr(c, "CAN-BLOCK-RELOAD") != Some("YES")) {
        bad(BLOCKING_RELOAD, format!("{control:?}"));
    }
    if let (Some(pt), Some(c)) = (part_target, control) {
        let phb = num(c, "PART-HOLD-BACK");
        match phb {
            Some(h) if h + 1e-9 >= 3.0 * pt => {}
            Some(h) if h + 1e-9 >= 2.0 * pt => {
                bad(PART_HOLD_BACK_APPLE, format!("{h} with PART-TARGET {pt}"));
                bad(
                    PART_HOLD_BACK_RFC,
                    format!("{h} is under the SHOULD of {}", 3.0 * pt),
                );
            }
            Some(h) => {
                bad(PART_HOLD_BACK_APPLE, format!("{h} with PART-TARGET {pt}"));
                bad(
                    PART_HOLD_BACK_RFC,
                    format!("{h} is under the MUST of {}", 2.0 * pt),
                );
            }
            None if !ended => bad(PART_HOLD_BACK_RFC, "PART-HOLD-BACK missing".into()),
            None => {}
        }
    }
    if let Some(c) = control
        && let Some(h) = num(c, "HOLD-BACK")
        && h + 1e-9 < 3.0 * target
    {
        bad(HOLD_BACK, format!("{h} with target {target}"));
    }
    if part_target.is_some()
        && !lines
            .iter()
            .any(|l| l.starts_with("#EXT-X-PROGRAM-DATE-TIME:"))
    {
        bad(PROGRAM_DATE_TIME, String::new());
    }
    let hints: Vec<&&str> = lines
        .iter()
        .filter(|l| l.starts_with("#EXT-X-PRELOAD-HINT:"))
        .collect();
    for kind in ["PART", "MAP"] {
        let n = hints
            .iter()
            .filter(|l| attr(l, "TYPE") == Some(kind))
            .count();
        if n > 1 {
            bad(ONE_PRELOAD_HINT, format!("{n} of TYPE={kind}"));
        }
    }
    if ended && !hints.is_empty() {
        bad(NO_HINT_AFTER_END, String::new());
    }
    v
}

/// Every rule above that `playlist` (a multivariant playlist) breaks; empty when it conforms.
pub fn check_multivariant_playlist(playlist: &str) -> Vec<Violation> {
    let mut v = Vec::new();
    let mut bad = |rule: &'static str, detail: String| v.push(Violation { rule, detail });
    let lines: Vec<&str> = playlist.lines().map(str::trim_end).collect();
    if lines.first() != Some(&"#EXTM3U") {
        bad(EXTM3U_FIRST, format!("{:?}", lines.first()));
    }
    if !lines.contains(&"#EXT-X-INDEPENDENT-SEGMENTS") {
        bad(MULTIVARIANT_INDEPENDENT, String::new());
    }
    for (i, l) in lines.iter().enumerate() {
        for media in [
            "#EXTINF",
            "#EXT-X-TARGETDURATION",
            "#EXT-X-MEDIA-SEQUENCE",
            "#EXT-X-PART",
            "#EXT-X-MAP",
            "#EXT-X-ENDLIST",
        ] {
            if l.starts_with(media) {
                bad(MULTIVARIANT_NO_MEDIA_TAGS, (*l).to_string());
            }
        }
        let Some(attrs) = l.strip_prefix("#EXT-X-STREAM-INF:") else {
            continue;
        };
        if lines
            .get(i + 1)
            .is_none_or(|u| u.is_empty() || u.starts_with('#'))
        {
            bad(STREAM_INF_URI, (*l).to_string());
        }
        let a = crate::hls::multivariant::attributes(attrs);
        let get = |k: &str| a.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
        let bw = get("BANDWIDTH").and_then(|b| b.parse::<u64>().ok());
        let avg = get("AVERAGE-BANDWIDTH").and_then(|b| b.parse::<u64>().ok());
        match (bw, avg) {
            (None, _) => bad(STREAM_INF_BANDWIDTH, (*l).to_string()),
            (Some(b), Some(a)) if a > b => bad(STREAM_INF_BANDWIDTH, (*l).to_string()),
            _ => {}
        }
        if avg.is_none() {
            bad(STREAM_INF_AVERAGE, (*l).to_string());
        }
        let codecs = get("CODECS").unwrap_or_default();
        if codecs.is_empty() {
            bad(STREAM_INF_CODECS, (*l).to_string());
        }
        let video = codecs.is_empty()
            || codecs.split(',').any(|c| {
                ["avc1", "avc3", "hvc1", "hev1", "av01"]
                    .iter()
                    .any(|p| c.starts_with(p))
            });
        if video && get("RESOLUTION").is_none() {
            bad(STREAM_INF_RESOLUTION, (*l).to_string());
        }
        if video
            && get("FRAME-RATE")
                .and_then(|f| f.parse::<f64>().ok())
                .is_none()
        {
            bad(STREAM_INF_FRAME_RATE, (*l).to_string());
        }
    }
    if !lines.iter().any(|l| l.starts_with("#EXT-X-STREAM-INF:")) {
        bad(STREAM_INF_URI, "no variant".into());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "#EXTM3U\n#EXT-X-VERSION:9\n#EXT-X-TARGETDURATION:1\n\
        #EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=0.600,HOLD-BACK=3.000\n\
        #EXT-X-PART-INF:PART-TARGET=0.200\n#EXT-X-MEDIA-SEQUENCE:7\n\
        #EXT-X-MAP:URI=\"init0.mp4\"\n#EXT-X-PROGRAM-DATE-TIME:2026-12-07T00:00:00.000Z\n\
        #EXTINF:1.00000,\nseg7.m4s\n\
        #EXT-X-PART:DURATION=0.20000,URI=\"part8.0.m4s\",INDEPENDENT=YES\n\
        #EXT-X-PART:DURATION=0.20000,URI=\"part8.1.m4s\"\n\
        #EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part8.2.m4s\"\n";

    fn rules(p: &str) -> Vec<&'static str> {
        check_media_playlist(p).iter().map(|v| v.rule).collect()
    }

    #[test]
    fn a_conforming_playlist_passes() {
        assert_eq!(check_media_playlist(GOOD), vec![]);
    }

    #[test]
    fn each_rule_catches_its_break() {
        let two_parts = GOOD.replace("PART-HOLD-BACK=0.600", "PART-HOLD-BACK=0.400");
        assert_eq!(
            rules(&two_parts),
            vec![PART_HOLD_BACK_APPLE, PART_HOLD_BACK_RFC]
        );
        let one_part = GOOD.replace("PART-HOLD-BACK=0.600", "PART-HOLD-BACK=0.200");
        assert!(check_media_playlist(&one_part)[1].detail.contains("MUST"));
        assert_eq!(
            rules(&GOOD.replace("HOLD-BACK=3.000", "HOLD-BACK=2.000")),
            vec![HOLD_BACK]
        );
        assert_eq!(
            rules(&GOOD.replace("#EXTINF:1.00000", "#EXTINF:1.60000")),
            vec![EXTINF_WITHIN_TARGET]
        );
        assert_eq!(
            rules(&GOOD.replace(
                "DURATION=0.20000,URI=\"part8.1",
                "DURATION=0.25000,URI=\"part8.1"
            )),
            vec![PART_WITHIN_TARGET]
        );
        assert_eq!(
            rules(&GOOD.replace("CAN-BLOCK-RELOAD=YES,", "")),
            vec![BLOCKING_RELOAD]
        );
        assert_eq!(
            rules(&GOOD.replace("#EXT-X-PART-INF:PART-TARGET=0.200\n", "")),
            vec![PART_INF_WITH_PARTS]
        );
        assert_eq!(
            rules(&GOOD.replace("#EXT-X-PROGRAM-DATE-TIME:2026-12-07T00:00:00.000Z\n", "")),
            vec![PROGRAM_DATE_TIME]
        );
        assert_eq!(
            rules(&format!("{GOOD}#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"x\"\n")),
            vec![ONE_PRELOAD_HINT]
        );
        assert_eq!(
            rules(&format!("{GOOD}#EXT-X-ENDLIST\n")),
            vec![NO_HINT_AFTER_END]
        );
        assert_eq!(rules(&GOOD.replace("#EXTM3U\n", "")), vec![EXTM3U_FIRST]);
        assert_eq!(
            rules(&GOOD.replace(
                "#EXT-X-TARGETDURATION:1\n",
                "#EXT-X-TARGETDURATION:1\n#EXT-X-TARGETDURATION:1\n"
            )),
            vec![TARGETDURATION_ONCE]
        );
        let late_sequence = GOOD
            .replace("#EXT-X-MEDIA-SEQUENCE:7\n", "")
            .replace("seg7.m4s\n", "seg7.m4s\n#EXT-X-MEDIA-SEQUENCE:7\n");
        assert_eq!(rules(&late_sequence), vec![MEDIA_SEQUENCE_BEFORE_SEGMENTS]);
        // Parts of a segment 4 s back: more than three target durations from the end.
        let old_parts = GOOD.replace(
            "#EXTINF:1.00000,\nseg7.m4s\n",
            "#EXT-X-PART:DURATION=0.20000,URI=\"part4.0.m4s\"\n#EXTINF:1.00000,\nseg4.m4s\n\
             #EXTINF:1.00000,\nseg5.m4s\n#EXTINF:1.00000,\nseg6.m4s\n#EXTINF:1.00000,\nseg7.m4s\n",
        );
        assert_eq!(rules(&old_parts), vec![PARTS_NEAR_THE_EDGE]);
    }
}
