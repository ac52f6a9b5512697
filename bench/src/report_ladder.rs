//! Section 15 of the benchmarks document: a teacher's ladder (issue 33). Ingest CPU of a
//! three-rendition multitrack class against its top rendition alone, and one student behind a
//! 1.5 Mbit/s link with and without the ladder (`bench/web/abr.mjs`).

use std::fmt::Write as _;

use serde_json::Value;

use super::f;

const LADDER: &str = "classcast-ladder3";
const TOP: &str = "classcast-top-only";

/// Section 4's table leaves these out: they are this section's.
pub fn is_ladder_ingest(server: &str) -> bool {
    server == LADDER || server == TOP
}

fn ingest<'a>(r: &'a [Value], server: &str) -> Option<&'a Value> {
    r.iter()
        .rev()
        .find(|v| v["bench"] == "ingest_cpu" && v["server"] == server)
}

/// The latest run per (class, player).
fn viewers(r: &[Value]) -> Vec<&Value> {
    let mut out: Vec<&Value> = Vec::new();
    for v in r.iter().filter(|v| v["bench"] == "abr_viewer") {
        out.retain(|o| o["mode"] != v["mode"] || o["transport"] != v["transport"]);
        out.push(v);
    }
    out
}

fn viewer<'a>(r: &[&'a Value], mode: &str, transport: &str) -> Option<&'a Value> {
    r.iter()
        .rev()
        .find(|v| v["mode"] == mode && v["transport"] == transport)
        .copied()
}

/// The height a run spent most of its seconds at.
fn main_height(v: &Value) -> String {
    v["seconds_at_height"]
        .as_object()
        .and_then(|m| {
            m.iter()
                .filter(|(h, _)| h.as_str() != "0")
                .max_by_key(|(_, n)| n.as_u64().unwrap_or(0))
                .map(|(h, _)| format!("{h}p"))
        })
        .unwrap_or_else(|| "?".into())
}

pub fn summary(w: &mut String, r: &[Value]) -> std::fmt::Result {
    let (Some(l), Some(t)) = (ingest(r, LADDER), ingest(r, TOP)) else {
        return Ok(());
    };
    let v = viewers(r);
    write!(
        w,
        "- **A teacher's ladder** (section 15): ingesting three renditions costs {:.2} % of a core \
         against {:.2} % for the top one alone ({:.2}×).",
        f(l, "pct_core_per_stream"),
        f(t, "pct_core_per_stream"),
        f(l, "pct_core_per_stream") / f(t, "pct_core_per_stream"),
    )?;
    if let (Some(a), Some(b)) = (viewer(&v, "ladder", "hls"), viewer(&v, "top-only", "hls")) {
        write!(
            w,
            " Behind 1.5 Mbit/s, hls.js got {:.2} Mbit/s at {} with {:.0} stalls from the ladder, \
             against {:.2} Mbit/s and {:.0} stalls from the top rendition alone.",
            f(a, "mbit_per_s"),
            main_height(a),
            f(a, "stalls"),
            f(b, "mbit_per_s"),
            f(b, "stalls"),
        )?;
    }
    writeln!(w)
}

pub fn section(w: &mut String, r: &[Value]) -> std::fmt::Result {
    let v = viewers(r);
    let (l, t) = (ingest(r, LADDER), ingest(r, TOP));
    if l.is_none() && v.is_empty() {
        return Ok(());
    }
    writeln!(w, "## 15. A teacher's ladder: ABR with no transcoding")?;
    writeln!(w)?;
    writeln!(
        w,
        "`BENCH_ONLY=ladder ./scripts/bench.sh`. ffmpeg 9 encodes 20 s of a 1080p test pattern as \
         one Enhanced RTMP multitrack FLV: 1080p at 3 Mbit/s, 720p at 1.5 and 360p at 0.5 (x264 \
         veryfast, a keyframe every second in each, no B-frames) with AAC at 128 kbit/s; the top \
         rendition alone is copied out of that file, so both runs carry the very same top track."
    )?;
    writeln!(w)?;
    if let (Some(l), Some(t)) = (l, t) {
        writeln!(
            w,
            "**Ingest.** One class into a fresh slave, 30 s, `classcast-bench ingest-cpu` as in \
             section 4 (the bench's Rust publisher sends the file's tags as they are, multitrack \
             ones included); recording and the WebRTC frame feed on."
        )?;
        writeln!(w)?;
        writeln!(
            w,
            "| class | Mbit/s in | % core | context switches per s | RSS max MiB |"
        )?;
        writeln!(w, "|---|---|---|---|---|")?;
        for (name, i) in [
            ("three renditions (multitrack)", l),
            ("top rendition only", t),
        ] {
            writeln!(
                w,
                "| {name} | {:.2} | **{:.2}** | {:.0} | {:.1} |",
                f(i, "ingest_mbps_per_stream"),
                f(i, "pct_core_per_stream"),
                f(i, "switches_per_stream_s"),
                f(i, "rss_max_mib"),
            )?;
        }
        writeln!(w)?;
        writeln!(
            w,
            "Ratio: **{:.2}×** the CPU for {:.2}× the bytes in.",
            f(l, "pct_core_per_stream") / f(t, "pct_core_per_stream"),
            f(l, "ingest_mbps_per_stream") / f(t, "ingest_mbps_per_stream"),
        )?;
        writeln!(w)?;
    }
    if !v.is_empty() {
        writeln!(
            w,
            "**One student behind 1.5 Mbit/s.** `bench/web/abr.mjs`: a `classcast-bench netlab` \
             namespace with the `capped` profile (1.5 Mbit/s, 20 ms round trip, a 200 ms queue, \
             no random loss), a master and a slave on the lab's address, ffmpeg 9 looping the file \
             with `-c copy`, and Chromium in the namespace on the student page for 60 s after it \
             plays: over LL-HLS (`webrtc=0`, hls.js as the page configures it), then over WebRTC. \
             Bytes are the slave's own counters over the 60 s (`classcast_slave_bytes_out_total`, \
             `…_webrtc_bytes_total`): what this one viewer cost the slave."
        )?;
        writeln!(w)?;
        writeln!(
            w,
            "| class | player | Mbit/s to the viewer | played (s of 60) | stalls (`waiting`) | jumps ahead (`seeking`) | freezes (WebRTC) | mostly at |"
        )?;
        writeln!(w, "|---|---|---|---|---|---|---|---|")?;
        for x in &v {
            if x["webrtc_played"] == false {
                writeln!(
                    w,
                    "| {} | WebRTC | – | did not play over WebRTC in 40 s: the page {} ({}) | | | | |",
                    x["mode"].as_str().unwrap_or("?"),
                    if x["page_mode"] == "hls" {
                        "fell back to LL-HLS"
                    } else {
                        "was still trying"
                    },
                    x["why"].as_str().unwrap_or("no reason given"),
                )?;
                continue;
            }
            writeln!(
                w,
                "| {} | {} | {:.2} | {:.1} | {:.0} | {} | {} | {} |",
                x["mode"].as_str().unwrap_or("?"),
                if x["transport"] == "hls" {
                    "hls.js (LL-HLS)"
                } else {
                    "WebRTC"
                },
                f(x, "mbit_per_s"),
                f(x, "played_s"),
                f(x, "stalls"),
                x["jumps"]
                    .as_f64()
                    .map_or("–".into(), |n| format!("{n:.0}")),
                x["freezes"]
                    .as_f64()
                    .map_or("–".into(), |n| format!("{n:.0}")),
                main_height(x),
            )?;
        }
        writeln!(w)?;
    }
    Ok(())
}
