//! Section 16 of the benchmarks document: one student on each network profile (issue 29), from
//! `bench/web/netprofiles.mjs`.

use std::fmt::Write as _;

use serde_json::Value;

use super::f;

const PROFILES: [(&str, &str); 3] = [
    ("good", "good Wi-Fi: 20 ± 5 ms RTT, 0.5 % loss, 20 Mbit/s"),
    (
        "busy",
        "busy Wi-Fi: 40 ± 20 ms, 3 % loss in bursts, 4 Mbit/s",
    ),
    ("poor", "poor Wi-Fi: 80 ± 40 ms, 8 % loss, 2 Mbit/s"),
];

fn run<'a>(r: &'a [Value], profile: &str, player: &str) -> Option<&'a Value> {
    r.iter()
        .rev()
        .find(|v| v["bench"] == "netprofile" && v["profile"] == profile && v["player"] == player)
}

fn ttff(r: &[Value]) -> Option<&Value> {
    r.iter().rev().find(|v| v["bench"] == "ttff_tcp")
}

pub fn summary(w: &mut String, r: &[Value]) -> std::fmt::Result {
    let (Some(b), Some(p)) = (run(r, "busy", "webrtc"), run(r, "poor", "hls-classcast")) else {
        return Ok(());
    };
    write!(
        w,
        "- **Network profiles** (section 16): WebRTC froze {:.1} times a minute on busy Wi-Fi; on \
         poor Wi-Fi hls.js stalled {:.1} times a minute on classcast",
        f(b, "freezes_per_min"),
        f(p, "stalls_per_min"),
    )?;
    if let Some(s) = p["shown_s"].as_f64() {
        write!(w, " ({s:.1} s of pictures shown in 60)")?;
    }
    if let Some(n) = run(r, "poor", "hls-nginx") {
        write!(w, " and {:.1} on nginx-rtmp's HLS", f(n, "stalls_per_min"))?;
        if let Some(s) = n["shown_s"].as_f64() {
            write!(w, " ({s:.1} s)")?;
        }
    }
    write!(w, ".")?;
    if let Some(t) = ttff(r) {
        write!(
            w,
            " With UDP blocked, the first WebRTC frame (ICE-TCP) came {:.0} ms after the page opened (median of 3).",
            f(t, "median_ms")
        )?;
    }
    writeln!(w)
}

pub fn section(w: &mut String, r: &[Value]) -> std::fmt::Result {
    if !r.iter().any(|v| v["bench"] == "netprofile") {
        return Ok(());
    }
    writeln!(
        w,
        "## 16. A student on lossy Wi-Fi, a capped link, or behind a UDP block"
    )?;
    writeln!(w)?;
    writeln!(
        w,
        "`BENCH_ONLY=netprofiles ./scripts/bench.sh`. `bench/web/netprofiles.mjs`: per profile, a \
         `classcast-bench netlab` namespace joined to this host by the user-space link emulator \
         (delay and jitter, a rate with a 200 ms queue, Gilbert–Elliott loss; the kernel has no \
         netem), a master and a slave and nginx-rtmp (HLS, 1 s fragments) on the lab's address, \
         both fed the 360p 1.4 Mbit/s test stream (`-c copy`), and Chromium inside the namespace, \
         60 s per player after it plays: the student page over WebRTC (Chromium's `freezeCount`), \
         the student page over LL-HLS (`webrtc=0`), and stock hls.js on nginx-rtmp's HLS \
         (`waiting` events once playing; pictures shown from `getVideoPlaybackQuality`, since a jump \
         ahead moves the playhead past pictures never shown). The student page leaves low latency \
         on a network that keeps stalling it (`master/web/live-hls.js`, \"steady\"; \"left low \
         latency\" in the table). The same profiles as the Wi-Fi classroom page test. \
         `NET_PROFILES=poor` (or any of good, busy, poor, udp-blocked) re-runs some."
    )?;
    writeln!(w)?;
    writeln!(
        w,
        "| profile | WebRTC freezes / min (freeze s) | NACKs | hls.js on classcast: stalls / min (pictures shown, playhead advance) | stock hls.js on nginx-rtmp HLS: stalls / min (pictures shown, playhead advance) |"
    )?;
    writeln!(w, "|---|---|---|---|---|")?;
    for (p, label) in PROFILES {
        let cell_rtc = run(r, p, "webrtc").map_or("–".to_string(), |v| {
            format!("{:.1} ({:.1} s)", f(v, "freezes_per_min"), f(v, "freeze_s"))
        });
        let nacks =
            run(r, p, "webrtc").map_or("–".to_string(), |v| format!("{:.0}", f(v, "nacks")));
        let hls = |player: &str| {
            run(r, p, player).map_or("–".to_string(), |v| {
                let jumps = v["jumps"]
                    .as_f64()
                    .map_or(String::new(), |j| format!(", {j:.0} jumps ahead"));
                // Pictures shown, where measured: a jump moves the playhead past pictures
                // never shown, so "played" alone flatters a player that jumps.
                let shown = v["shown_s"]
                    .as_f64()
                    .map_or(String::new(), |s| format!("{s:.1} s shown, "));
                let steady = if v["steady"].is_string() {
                    "; left low latency"
                } else {
                    ""
                };
                format!(
                    "{:.1} ({shown}{:.1} s played{jumps}{steady})",
                    f(v, "stalls_per_min"),
                    f(v, "played_s")
                )
            })
        };
        writeln!(
            w,
            "| {label} | {cell_rtc} | {nacks} | {} | {} |",
            hls("hls-classcast"),
            hls("hls-nginx")
        )?;
    }
    writeln!(w)?;
    if let Some(t) = ttff(r) {
        writeln!(
            w,
            "**UDP blocked** (the `udp-blocked` profile: good Wi-Fi with every UDP packet dropped): \
             from opening the student page to its first decoded WebRTC frame, over ICE-TCP (transport \
             seen: {}): {} ms, median **{:.0} ms**.",
            t["transports"],
            t["runs_ms"],
            f(t, "median_ms")
        )?;
        writeln!(w)?;
    }
    Ok(())
}
