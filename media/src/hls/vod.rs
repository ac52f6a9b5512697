//! The playlist of a recorded class: every segment from the start (`EXT-X-PLAYLIST-TYPE:VOD`
//! and `EXT-X-ENDLIST` once the class ended, `EVENT` while it is still recorded), dates
//! following the media as in the live playlist. Pure: the caller says which segments exist.

use std::fmt::Write as _;

use super::playlist::rfc3339_ms;

#[derive(Debug, Clone, PartialEq)]
pub struct VodSegment {
    pub msn: u64,
    pub duration: f64,
    pub pdt_ms: u64,
    pub discontinuity: bool,
    pub init_id: u32,
}

/// The VOD playlist of `segments` (a finished class), each URI followed by `query` (a media
/// ticket, or nothing on disk).
pub fn render(segments: &[VodSegment], query: &str) -> String {
    render_as(segments, query, true, false)
}

/// Segments a delta update may skip from the front of a growing playlist: those that end more
/// than `CAN-SKIP-UNTIL` before its end (rfc8216bis 6.2.5.1: at least six target durations).
fn skippable(segments: &[VodSegment], can_skip_until: f64) -> usize {
    let total: f64 = segments.iter().map(|s| s.duration).sum();
    let mut end = 0.0;
    segments
        .iter()
        .take_while(|s| {
            end += s.duration;
            end <= total - can_skip_until
        })
        .count()
}

/// `ended`: a finished class (`VOD`, `ENDLIST`); otherwise an `EVENT` playlist that grows with
/// the class, offering delta updates (`CAN-SKIP-UNTIL`): with `skip` (`_HLS_skip=YES`) the
/// segments older than that are one `EXT-X-SKIP` line, so a player following an hour-long class
/// does not fetch the whole hour every second.
pub fn render_as(segments: &[VodSegment], query: &str, ended: bool, skip: bool) -> String {
    let target = segments
        .iter()
        .map(|s| s.duration)
        .fold(1.0_f64, f64::max)
        .round()
        .max(1.0) as u64;
    let can_skip_until = 6 * target;
    let skipped = if skip && !ended {
        skippable(segments, can_skip_until as f64)
    } else {
        0
    };
    let mut out = String::with_capacity(160 + (segments.len() - skipped) * 96);
    // EXT-X-SKIP needs version 9.
    out.push_str(if skipped > 0 {
        "#EXTM3U\n#EXT-X-VERSION:9\n"
    } else {
        "#EXTM3U\n#EXT-X-VERSION:7\n"
    });
    let _ = writeln!(out, "#EXT-X-TARGETDURATION:{target}");
    let _ = writeln!(
        out,
        "#EXT-X-PLAYLIST-TYPE:{}",
        if ended { "VOD" } else { "EVENT" }
    );
    if !ended {
        let _ = writeln!(
            out,
            "#EXT-X-SERVER-CONTROL:CAN-SKIP-UNTIL={can_skip_until}.0"
        );
    }
    let _ = writeln!(
        out,
        "#EXT-X-MEDIA-SEQUENCE:{}",
        segments.first().map_or(0, |s| s.msn)
    );
    out.push_str("#EXT-X-INDEPENDENT-SEGMENTS\n");
    if skipped > 0 {
        let _ = writeln!(out, "#EXT-X-SKIP:SKIPPED-SEGMENTS={skipped}");
    }
    let mut prev: Option<&VodSegment> = skipped.checked_sub(1).map(|i| &segments[i]);
    let mut first = true;
    for s in &segments[skipped..] {
        // A segment the recorder never got (a gap in the numbers) is a discontinuity too.
        let gap = prev.is_some_and(|p| s.msn != p.msn + 1);
        if prev.is_some() && (s.discontinuity || gap) {
            out.push_str("#EXT-X-DISCONTINUITY\n");
        }
        // After a skip the init is named again: the first listed segment needs it.
        if first || prev.is_none_or(|p| p.init_id != s.init_id) {
            let _ = writeln!(out, "#EXT-X-MAP:URI=\"init{}.mp4{query}\"", s.init_id);
        }
        let _ = writeln!(out, "#EXT-X-PROGRAM-DATE-TIME:{}", rfc3339_ms(s.pdt_ms));
        let _ = writeln!(out, "#EXTINF:{:.5},\nseg{}.m4s{query}", s.duration, s.msn);
        prev = Some(s);
        first = false;
    }
    if ended {
        out.push_str("#EXT-X-ENDLIST\n");
    }
    out
}

/// A playlist rendered without a query (what a peer gets) with `query` after every URI: how an
/// edge lists its own tickets in the origin's playlist.
pub fn splice_query(text: &str, query: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if !line.starts_with('#') {
            out.push_str(line);
            out.push_str(query);
        } else if let Some(rest) = line.strip_prefix("#EXT-X-MAP:URI=\"") {
            let (uri, tail) = rest.split_once('"').unwrap_or((rest, ""));
            out.push_str("#EXT-X-MAP:URI=\"");
            out.push_str(uri);
            out.push_str(query);
            out.push('"');
            out.push_str(tail);
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(msn: u64, init_id: u32, discontinuity: bool) -> VodSegment {
        VodSegment {
            msn,
            duration: 1.0,
            pdt_ms: 1_796_000_000_000 + msn * 1000,
            discontinuity,
            init_id,
        }
    }

    #[test]
    fn a_finished_class_is_a_vod_playlist() {
        let p = render(
            &[
                seg(5, 0, false),
                seg(6, 0, false),
                seg(7, 1, true),
                seg(9, 1, false),
            ],
            "?t=x",
        );
        assert!(p.contains("#EXT-X-PLAYLIST-TYPE:VOD\n"));
        assert!(p.contains("#EXT-X-MEDIA-SEQUENCE:5\n"));
        assert!(p.ends_with("#EXT-X-ENDLIST\n"));
        assert_eq!(p.matches("#EXT-X-MAP:").count(), 2);
        assert!(p.contains("#EXT-X-MAP:URI=\"init1.mp4?t=x\""));
        // The reconnect and the missing segment 8.
        assert_eq!(p.matches("#EXT-X-DISCONTINUITY\n").count(), 2);
        assert!(p.contains("seg9.m4s?t=x\n"));
        assert_eq!(p.matches("#EXTINF:1.00000,").count(), 4);
        assert_eq!(crate::hls::conformance::check_media_playlist(&p), vec![]);
    }

    #[test]
    fn an_edge_splices_its_ticket_into_the_origin_playlist() {
        let segs = [seg(5, 0, false), seg(6, 1, true)];
        assert_eq!(
            splice_query(&render(&segs, ""), "?t=x"),
            render(&segs, "?t=x")
        );
    }

    #[test]
    fn a_class_still_recorded_is_an_event_playlist() {
        let p = render_as(&[seg(5, 0, false)], "", false, false);
        assert!(p.contains("#EXT-X-PLAYLIST-TYPE:EVENT\n"));
        assert!(p.contains("#EXT-X-SERVER-CONTROL:CAN-SKIP-UNTIL=6.0\n"));
        assert!(!p.contains("ENDLIST"));
        assert_eq!(crate::hls::conformance::check_media_playlist(&p), vec![]);
    }

    #[test]
    fn a_delta_update_skips_what_is_older_than_can_skip_until() {
        let segs: Vec<VodSegment> = (0..20).map(|i| seg(100 + i, 0, i == 9)).collect();
        let full = render_as(&segs, "?t=x", false, false);
        let delta = render_as(&segs, "?t=x", false, true);
        // 20 s listed, CAN-SKIP-UNTIL 6 s: the 14 segments ending by 14 s are skipped.
        assert!(delta.contains("#EXT-X-VERSION:9\n"));
        assert!(delta.contains("#EXT-X-SKIP:SKIPPED-SEGMENTS=14\n"));
        assert!(delta.contains("#EXT-X-MEDIA-SEQUENCE:100\n"));
        assert_eq!(delta.matches("#EXTINF:").count(), 6);
        assert!(!delta.contains("seg113.m4s") && delta.contains("seg114.m4s?t=x"));
        assert!(delta.contains("#EXT-X-MAP:URI=\"init0.mp4?t=x\""));
        // The tail is the full playlist's tail, line for line.
        let tail = |p: &str| p.split("seg113.m4s?t=x\n").last().unwrap().to_string();
        assert_eq!(
            tail(&full),
            delta
                .split_once("#EXT-X-PROGRAM-DATE-TIME:")
                .map(|(_, t)| format!("#EXT-X-PROGRAM-DATE-TIME:{t}"))
                .unwrap()
        );
        // With a 10-minute window a delta update stays within 2× of a playlist of the live
        // window (7 segments): what a player reloads does not grow with the class.
        let long: Vec<VodSegment> = (0..600).map(|i| seg(100 + i, 0, false)).collect();
        let window = render_as(&long[..7], "?t=x", false, false).len();
        let delta_long = render_as(&long, "?t=x", false, true).len();
        let full_long = render_as(&long, "?t=x", false, false).len();
        assert!(delta_long <= 2 * window, "{delta_long} bytes vs {window}");
        assert!(full_long > 50 * window);
        // A finished class and a short one are never skipped.
        assert!(!render_as(&segs, "", true, true).contains("EXT-X-SKIP"));
        assert!(!render_as(&segs[..5], "", false, true).contains("EXT-X-SKIP"));
    }
}
