//! Section 8 of the benchmarks document, glass-to-glass in headless Chromium, and its rows of
//! the summary table.

use std::fmt::Write as _;

use serde_json::Value;

use super::extra::{s, when};
use super::{f, yes};

/// The summary rows: each classcast hls.js configuration, classcast's best against every peer's,
/// and the long run's stalls and drift.
pub fn summary(w: &mut String, r: &[Value]) -> std::fmt::Result {
    for (label, player, runs) in g2g_groups(r) {
        if !label.starts_with("classcast") || player != "hls" {
            continue;
        }
        let p50 = median(runs.iter().map(|v| f(v, "p50_ms")).collect());
        let stalls: f64 = runs.iter().map(|v| f(v, "waiting")).sum();
        writeln!(
            w,
            "| glass-to-glass p50, hls.js low-latency, {label} | ≤ 0.8 s, 0 stalls | {:.2} s (median of {} runs), {stalls:.0} stalls | {} |",
            p50 / 1000.0,
            runs.len(),
            yes(p50 <= 800.0 && stalls == 0.0)
        )?;
    }
    // Each server's best configuration (lowest median p50 over any player and setting) against
    // classcast's best.
    let mut best: Vec<(String, f64, String)> = Vec::new();
    for (label, player, runs) in g2g_groups(r) {
        if runs
            .iter()
            .any(|v| f(v, "frames") == 0.0 || f(v, "frames").is_nan())
        {
            continue;
        }
        let server = label.split('-').next().unwrap_or("").to_string();
        let p50 = median(runs.iter().map(|v| f(v, "p50_ms")).collect());
        let what = format!("{label} with {player}");
        match best.iter_mut().find(|b| b.0 == server) {
            Some(b) if p50 < b.1 => *b = (server, p50, what),
            Some(_) => {}
            None => best.push((server, p50, what)),
        }
    }
    if let Some(cc) = best.iter().find(|b| b.0 == "classcast") {
        let peers: Vec<_> = best.iter().filter(|b| b.0 != "classcast").collect();
        if !peers.is_empty() {
            let list = peers
                .iter()
                .map(|b| format!("{} {:.2} s ({})", b.0, b.1 / 1000.0, b.2))
                .collect::<Vec<_>>()
                .join(", ");
            writeln!(
                w,
                "| glass-to-glass: classcast's best configuration ahead of every peer's best (medians) | ahead of all | classcast {:.2} s ({}); {list} | {} |",
                cc.1 / 1000.0,
                cc.2,
                yes(peers.iter().all(|b| cc.1 < b.1))
            )?;
        }
    }
    for v in long_runs(r) {
        let n = f(v, "waiting");
        writeln!(
            w,
            "| stalls over {}, hls.js low-latency, {} | 0 stalls | {n} stalls ({:.1} s stalled), p50 {:.2} s, {} frames | {} |",
            duration(f(v, "seconds")),
            s(v, "label"),
            f(v, "stalled_ms") / 1000.0,
            f(v, "p50_ms") / 1000.0,
            f(v, "frames"),
            yes(n == 0.0 && f(v, "frames") > 0.0)
        )?;
        let per_min = minutes(&v["p50_by_minute_ms"]);
        if let (Some(a), Some(b)) = (per_min.first(), per_min.last()) {
            let lag = edge_lag(r, s(v, "label").as_str())
                .map(|l| format!("; the live edge behind the wall clock: {}", l.join(" → ")))
                .unwrap_or_default();
            writeln!(
                w,
                "| latency drift over {}: last minute's p50 − first's | ≤ 50 ms | {:+.0} ms ({a:.0} → {b:.0} ms{lag}) | {} |",
                duration(f(v, "seconds")),
                b - a,
                yes(b - a <= 50.0)
            )?;
        }
    }
    Ok(())
}

pub fn section(w: &mut String, r: &[Value]) -> std::fmt::Result {
    let groups = g2g_groups(r);
    let long = long_runs(r);
    if !groups.is_empty() || !long.is_empty() {
        writeln!(w, "## 8. Glass-to-glass in headless Chromium")?;
        writeln!(w)?;
        writeln!(
            w,
            "`BENCH_ONLY=g2g ./scripts/bench.sh` (runs per configuration from `G2G_RUNS`).{} \
             `bench/web/publish.mjs` draws 640×360 frames at 30 fps whose top rows carry the wall clock \
             (ms since a start epoch, 24 bits + an 8-bit check, as 40×40 px black/white blocks) and pipes \
             them, with silent audio from the same clock, into **one** ffmpeg (x264 veryfast zerolatency, \
             GOP 1 s, 2 Mbit/s with film-grain noise, AAC 64 kbit/s) whose tee muxer publishes the same \
             encoded stream to classcast with 200 ms parts, classcast with 100 ms parts (two one-slave \
             clusters) and nginx-rtmp with HLS (`hls_fragment 1s; hls_playlist_length 4s`, its shortest \
             sensible setting with a 1 s GOP), at once. `bench/web/g2g.mjs` opens `page.html` in \
             headless Chromium (playwright-core; `--no-sandbox --disable-gpu \
             --disable-background-networking`), which plays it with hls.js 1.7.4 (the light build we \
             ship), Shaka Player, or Chromium's own HLS player (`native`: the playlist URL set as the \
             video's `src`, no library), draws the video to a canvas every animation frame, decodes the clock \
             and records Date.now() − clock for every new frame shown; with hls.js it also samples \
             `hls.latency` (the player's own distance behind the live edge it computes from the \
             playlist) and the media buffered ahead, so that glass-to-glass minus the first is what \
             happens before a frame is listed. Each run is a fresh page of 30 s; \
             the first 5 s after the first frame are not counted; stalls are `waiting` events after \
             playback started. Everything runs on the same 2 cores under `chrt -r 1`. nginx-rtmp's \
             HLS plays in stock hls.js (`lowLatencyMode` only; its playlist has no parts, so hls.js \
             starts its default three target durations behind the end) and stock Shaka.",
            when(groups.first().map_or_else(|| long[0], |g| g.2[0]))
        )?;
        writeln!(w)?;
        if groups.iter().any(|g| g.0.starts_with("xiu")) {
            writeln!(
                w,
                "With `XIU=1` the same tee also feeds **xiu** (version in the Machine section): RTMP in, \
                 HLS out with `[hls] fragment = 1` and `live_ts_count = 10`. xiu cuts an MPEG-TS segment \
                 at the first keyframe at least `fragment` whole seconds after the previous cut, so with \
                 this 1 s GOP that is one segment per GOP, its shortest setting (0 would also cut at \
                 every audio frame); the playlist has no parts, so a player cannot be nearer the live \
                 edge than a whole segment plus the playlist reload. It lists 10 segments because xiu \
                 deletes a segment's file as soon as it leaves the playlist: with 4, Shaka (which \
                 starts 3 target durations behind the end) sometimes asked for one already gone (404) \
                 and never played; hls.js counts from the end, so the length does not move it. hls.js plays it \
                 like nginx-rtmp's HLS, with `liveSyncDurationCount: 1` (start one target duration \
                 behind the end of the playlist instead of the default 3; less than a segment leaves \
                 the player waiting for the next one; `lowLatencyMode` has nothing to act on without \
                 parts), Shaka with its defaults. Unlike nginx-rtmp's, xiu's playlist says \
                 `#EXT-X-TARGETDURATION:2` with 1 s segments: it keeps the longest segment duration \
                 seen, rounded up to whole seconds, so one segment a little over 1 s makes it 2 for \
                 the rest of the stream, and hls.js's start offset with it. xiu's HLS server sends no \
                 CORS header, so \
                 its runs use a Chromium launched with `--disable-web-security` (the page comes from \
                 `g2g.mjs`'s own port); nothing else differs."
            )?;
            writeln!(w)?;
        }
        if groups.iter().any(|g| g.1 == "mpegts") {
            writeln!(
                w,
                "`mpegts` rows play HTTP-FLV (xiu's `/live/NAME.flv`: the RTMP tags relayed over one \
                 long HTTP response, no segments at all) with mpegts.js 1.8.2 in the same page, with \
                 the stash buffer off (each tag goes to Media Source Extensions as it arrives) and \
                 `liveSync` tightened to `liveSyncMaxLatency: 0.5`, `liveSyncTargetLatency: 0.3` \
                 (plays at 1.2× while more than 0.5 s is buffered, down to 0.3 s; with the defaults, \
                 1.2 s and 0.8 s, it stays wherever in the GOP it joined, 0.4–1.2 s from run to run). It \
                 is not HLS, and not something a classcast viewer could use, but it shows what the \
                 same server delivers without segmenting."
            )?;
            writeln!(w)?;
        }
    }
    if !groups.is_empty() {
        writeln!(
            w,
            "| server | player (config) | run | start ms | frames | p50 ms | p95 ms | min / max ms | hls.js latency / buffer p50 ms | stalls | decode failures | errors |"
        )?;
        writeln!(
            w,
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
        )?;
        for (label, player, runs) in &groups {
            for v in runs {
                let own = if v["player_latency_p50_ms"].is_number() {
                    format!(
                        "{:.0} / {:.0}",
                        f(v, "player_latency_p50_ms"),
                        f(v, "buffer_p50_ms")
                    )
                } else {
                    "–".into()
                };
                writeln!(
                    w,
                    "| {label} | {player} `{}` | {} | {} | {own} | {} | {} | {} |",
                    v["cfg"],
                    f(v, "run"),
                    latency_cells(v),
                    stalls(v),
                    f(v, "decode_failures"),
                    errors(v)
                )?;
            }
        }
        writeln!(w)?;
        for (label, player, runs) in &groups {
            let p50s: Vec<f64> = runs.iter().map(|v| f(v, "p50_ms")).collect();
            let lo = p50s.iter().cloned().fold(f64::INFINITY, f64::min);
            let hi = p50s.iter().cloned().fold(0.0, f64::max);
            writeln!(
                w,
                "- {label}, {player}: p50 {:.2}–{:.2} s over {} runs (median {:.2} s), {} stalls in total.",
                lo / 1000.0,
                hi / 1000.0,
                runs.len(),
                median(p50s.clone()) / 1000.0,
                runs.iter().map(|v| f(v, "waiting")).sum::<f64>()
            )?;
        }
        writeln!(w)?;
    }
    if !long.is_empty() {
        writeln!(w, "### Stalls over a long run")?;
        writeln!(w)?;
        writeln!(
            w,
            "`G2G_LONG_S` (default 300; 0 skips it): after the runs above, against the same live \
             stream, **one** run of that many seconds of classcast with its default 200 ms parts in \
             hls.js with what the student page plays when WebRTC is off or refused (the defaults a \
             user gets: low-latency mode with catch-up at up to 1.5× speed until 2026-12-02, then \
             `master/web/live-hls.js`, which also jumps back to the live sync position), measured \
             as above (5 s warm-up). A stall is a `waiting` event once playback had \
             started; its time runs until the next `playing` (one still open at the end counts up to \
             the end). \"Longest freeze\" is the largest gap between two new frames on screen after \
             the warm-up, which would also catch a freeze the player did not report. Decoded / dropped \
             frames are `video.getVideoPlaybackQuality()` (`totalVideoFrames`, `droppedVideoFrames`) \
             at the end; \"p50 per minute\" is the p50 of each whole minute after the warm-up, to \
             show whether the latency drifts.{}",
            when(long[0])
        )?;
        writeln!(w)?;
        writeln!(
            w,
            "| server | player (config) | length | start ms | frames shown | p50 ms | p95 ms | min / max ms | p50 per minute ms | stalls | stalled | longest freeze ms | decoded / dropped frames | errors |"
        )?;
        writeln!(
            w,
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
        )?;
        for v in &long {
            let per_min: Vec<String> = v["p50_by_minute_ms"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|m| m.as_f64().map_or("?".into(), |m| format!("{m:.0}")))
                .collect();
            writeln!(
                w,
                "| {} | {} `{}` | {} | {} | {} | **{}** | {:.1} s | {:.0} | {} / {} | {} |",
                s(v, "label"),
                s(v, "player"),
                v["cfg"],
                duration(f(v, "seconds")),
                latency_cells(v),
                if per_min.is_empty() {
                    "–".to_string()
                } else {
                    per_min.join(", ")
                },
                f(v, "waiting"),
                f(v, "stalled_ms") / 1000.0,
                f(v, "max_frame_gap_ms"),
                f(v, "decoded_frames"),
                f(v, "dropped_frames"),
                errors(v)
            )?;
        }
        writeln!(w)?;
        for (label, lag) in long
            .iter()
            .filter_map(|v| Some((s(v, "label"), edge_lag(r, s(v, "label").as_str())?)))
        {
            writeln!(
                w,
                "Beside the long run ({label}), the bench read the slave's playlist every 2 s: how far its live \
                 edge (the end of the newest part on the playlist's PROGRAM-DATE-TIME clock, which is \
                 the wall clock when the stream began advanced by media durations only) is behind the \
                 wall clock, median per minute: {}. A lag that grows with the latency means the media \
                 reaches the slave ever later than real time (the publisher falling behind), not the \
                 player drifting.",
                lag.join(", ")
            )?;
            writeln!(w)?;
        }
        for v in &long {
            let at: Vec<String> = v["stalls"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|st| {
                    let a = st.as_array()?;
                    Some(format!(
                        "{:.1} s ({:.0} ms)",
                        a.first()?.as_f64()?,
                        a.get(1)?.as_f64()?
                    ))
                })
                .collect();
            if !at.is_empty() {
                writeln!(
                    w,
                    "- {}: stalls at (seconds after the first frame, how long): {}.",
                    s(v, "label"),
                    at.join(", ")
                )?;
                writeln!(w)?;
            }
        }
    }
    Ok(())
}

fn g2g_groups(r: &[Value]) -> Vec<(String, String, Vec<&Value>)> {
    let mut out: Vec<(String, String, Vec<&Value>)> = Vec::new();
    for v in r.iter().filter(|v| v["bench"] == "g2g") {
        let (l, p) = (s(v, "label"), s(v, "player"));
        match out.iter_mut().find(|(a, b, _)| *a == l && *b == p) {
            Some(g) => g.2.push(v),
            None => out.push((l, p, vec![v])),
        }
    }
    out
}

/// Error count and the distinct errors a run recorded (player error codes, with file and status).
fn errors(v: &Value) -> String {
    let list: Vec<String> = v["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e.as_str().map(str::to_string))
        .collect();
    let n = v["error_count"].as_u64().unwrap_or(list.len() as u64);
    if n == 0 {
        return "0".into();
    }
    let mut distinct: Vec<String> = list
        .iter()
        .map(|e| {
            // `1001 part123.4.m4s 404` → `1001 part 404`: the code, the kind of file, the status.
            let w: Vec<&str> = e.split(' ').collect();
            match w.as_slice() {
                [code, file, rest @ ..] => {
                    let kind: String = file
                        .chars()
                        .take_while(|c| c.is_ascii_alphabetic())
                        .collect();
                    let mut out = vec![code.to_string(), kind];
                    out.extend(rest.iter().map(|r| r.to_string()));
                    out.join(" ")
                }
                _ => e.clone(),
            }
        })
        .collect();
    distinct.sort();
    distinct.dedup();
    format!("{n}: {}", distinct.join(", "))
}

/// `N`, or `N (X.X s)` when the run measured how long its stalls lasted.
fn stalls(v: &Value) -> String {
    let n = f(v, "waiting");
    match v["stalled_ms"].as_f64() {
        Some(ms) if n > 0.0 => format!("{n} ({:.1} s)", ms / 1000.0),
        _ => format!("{n}"),
    }
}

/// "5 minutes", "1 minute", "90 s".
fn duration(seconds: f64) -> String {
    if seconds >= 60.0 && seconds % 60.0 == 0.0 {
        let m = seconds / 60.0;
        format!("{m} minute{}", if m == 1.0 { "" } else { "s" })
    } else {
        format!("{seconds} s")
    }
}

fn long_runs(r: &[Value]) -> Vec<&Value> {
    r.iter().filter(|v| v["bench"] == "g2g_long").collect()
}

fn median(mut x: Vec<f64>) -> f64 {
    x.retain(|v| v.is_finite());
    if x.is_empty() {
        return f64::NAN;
    }
    x.sort_by(f64::total_cmp);
    x[x.len() / 2]
}

fn minutes(v: &Value) -> Vec<f64> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_f64)
        .collect()
}

/// The `g2g_edge_lag` line sampled beside the long run labelled `long`, per minute, as
/// "123 ms" cells (the first such lines were labelled with the long run's label up to its `+`).
fn edge_lag(r: &[Value], long: &str) -> Option<Vec<String>> {
    let v = r.iter().rfind(|v| {
        v["bench"] == "g2g_edge_lag"
            && (v["label"] == long || long.split('+').next() == v["label"].as_str())
    })?;
    let m: Vec<String> = minutes(&v["lag_by_minute_ms"])
        .iter()
        .map(|m| format!("{m:.0} ms"))
        .collect();
    (!m.is_empty()).then_some(m)
}

/// The cells every glass-to-glass row shares: start ms | frames | p50 | p95 | min / max.
fn latency_cells(v: &Value) -> String {
    format!(
        "{:.0} | {} | **{:.0}** | {:.0} | {:.0} / {:.0}",
        f(v, "startup_ms"),
        f(v, "frames"),
        f(v, "p50_ms"),
        f(v, "p95_ms"),
        f(v, "min_ms"),
        f(v, "max_ms")
    )
}
