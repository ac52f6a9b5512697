//! Sections 5–7 of the benchmarks document: serving vs static nginx, viewers per slave, slave
//! memory (glass-to-glass, section 8, is `report_g2g.rs`). Each renders only when its results are present
//! (`BENCH_ONLY=… ./scripts/bench.sh` measures a subset and merges it into the last results).

use std::fmt::Write as _;

use serde_json::Value;

use super::{f, yes};

pub(super) fn s(v: &Value, k: &str) -> String {
    v[k].as_str().unwrap_or("?").to_string()
}

pub(super) fn when(v: &Value) -> String {
    v["measured"]
        .as_str()
        .map(|d| format!(" Measured {d}."))
        .unwrap_or_default()
}

/// The run of `server` on `kind` with the median rate (parts are run three times).
fn serving<'a>(r: &'a [Value], server: &str, kind: &str) -> Option<&'a Value> {
    let mut runs = serving_runs(r, server, kind);
    runs.sort_by(|a, b| f(a, "rps").total_cmp(&f(b, "rps")));
    runs.get(runs.len().saturating_sub(1) / 2).copied()
}

fn serving_runs<'a>(r: &'a [Value], server: &str, kind: &str) -> Vec<&'a Value> {
    r.iter()
        .filter(|v| v["bench"] == "serving" && v["server"] == server && v["kind"] == kind)
        .collect()
}

pub fn summary(w: &mut String, r: &[Value]) -> std::fmt::Result {
    for kind in ["part", "playlist-viewer"] {
        if let (Some(c), Some(n)) = (serving(r, "classcast", kind), serving(r, "nginx", kind)) {
            let ratio = f(c, "rps") / f(n, "rps");
            writeln!(
                w,
                "| serving a {kind} ({:.0} B), req/s vs static nginx | ≥ 1.0× | {ratio:.2}× ({:.0} vs {:.0} req/s) | {} |",
                f(c, "bytes"),
                f(c, "rps"),
                f(n, "rps"),
                yes(ratio >= 1.0)
            )?;
        }
    }
    if let (Some(v), Some(n)) = (viewers_run(r, false), viewers_run(r, true)) {
        let (c, n) = (max_ok(v), max_ok(n));
        writeln!(
            w,
            "| LL-HLS viewers per slave vs static nginx under the same synchronized bursts | ≥ 1.0× | {c:.0} vs {n:.0} viewers ({:.2}×) | {} |",
            c / n,
            yes(c >= n)
        )?;
    }
    if let Some(v) = viewers_run(r, false) {
        let best = f(v, "max_ok_viewers");
        let rate = f(v, "requests_per_viewer_s");
        let (best, rate) = if best.is_finite() {
            (best, rate)
        } else {
            let first = v["steps"].as_array().and_then(|a| a.first());
            (
                0.0,
                first.map_or(f64::NAN, |st| f(st, "requests_per_viewer_s")),
            )
        };
        if let Some(n) = serving(r, "nginx", "part") {
            let eq = f(n, "rps") / rate;
            writeln!(
                w,
                "| LL-HLS viewers per slave (part p99 < 50 ms, 0 errors) | ≥ 1.0× nginx-equivalent | {best:.0} viewers vs {eq:.0} ({:.2}×) | {} |",
                best / eq,
                yes(best >= eq)
            )?;
        }
        if let Some(st) = v["steps"]
            .as_array()
            .and_then(|a| a.iter().find(|x| f(x, "viewers") == 1000.0))
        {
            let m = f(st, "slave_rss_max_mib");
            writeln!(
                w,
                "| slave RSS, 1 stream + 1,000 viewers | ≤ 100 MB | {m:.1} MiB | {} |",
                yes(m * 1.048576 <= 100.0)
            )?;
        }
    }
    if let Some(m) = r
        .iter()
        .find(|v| v["bench"] == "ingest_cpu" && v["server"] == "classcast-memory")
    {
        let max = f(m, "rss_max_mib");
        writeln!(
            w,
            "| slave RSS, {} × 6.4 Mbit/s streams, no viewers | ≤ 100 MiB | {max:.1} MiB max | {} |",
            f(m, "streams"),
            yes(max <= 100.0)
        )?;
    }
    Ok(())
}

pub fn sections(w: &mut String, r: &[Value]) -> std::fmt::Result {
    if r.iter().any(|v| v["bench"] == "serving") {
        let first = r.iter().find(|v| v["bench"] == "serving").expect("checked");
        writeln!(w, "## 5. Serving the same bytes: classcast vs static nginx")?;
        writeln!(w)?;
        writeln!(
            w,
            "`BENCH_ONLY=serving ./scripts/bench.sh`.{} One master, one slave; ffmpeg publishes a 640×360 \
             30 fps x264 1.4 Mbit/s + AAC 96 kbit/s FLV with `-c copy` (looped, real time). The script takes \
             a student token from the master, fetches the playlist a viewer gets, picks the newest listed \
             part and copies those exact bytes (part, viewer playlist, peer playlist) into `/dev/shm`, served \
             by nginx (1 worker, `sendfile on`, `tcp_nopush on`, no access log). `wrk -t2 -c200 -d8s \
             --latency` then hits each URL in turn, all under `chrt -r 1`, wrk on the same 2 cores. \
             classcast's part and viewer playlist carry the viewer's JWT in the query (as a player sends \
             it); the peer playlist is fetched with `Authorization: Bearer <cluster secret>`.",
            when(first)
        )?;
        writeln!(w)?;
        writeln!(
            w,
            "| what | bytes | classcast req/s | classcast p50 / p99 ms | nginx req/s | nginx p50 / p99 ms | classcast / nginx | non-2xx (cc / nginx) |"
        )?;
        writeln!(w, "| --- | --- | --- | --- | --- | --- | --- | --- |")?;
        for (kind, name) in [
            ("part", "part (viewer token)"),
            (
                "playlist-viewer",
                "playlist as a viewer gets it (its JWT in every URI)",
            ),
            ("playlist-peer", "playlist as a peer gets it (no token)"),
        ] {
            if let (Some(c), Some(n)) = (serving(r, "classcast", kind), serving(r, "nginx", kind)) {
                writeln!(
                    w,
                    "| {name} | {:.0} | **{:.0}** | {:.2} / {:.2} | {:.0} | {:.2} / {:.2} | **{:.2}×** | {} / {} |",
                    f(c, "bytes"),
                    f(c, "rps"),
                    f(c, "p50_ms"),
                    f(c, "p99_ms"),
                    f(n, "rps"),
                    f(n, "p50_ms"),
                    f(n, "p99_ms"),
                    f(c, "rps") / f(n, "rps"),
                    f(c, "non2xx"),
                    f(n, "non2xx")
                )?;
            }
        }
        let (cc, ng) = (
            serving_runs(r, "classcast", "part"),
            serving_runs(r, "nginx", "part"),
        );
        if cc.len() > 1 && cc.len() == ng.len() {
            let runs: Vec<String> = cc
                .iter()
                .zip(&ng)
                .map(|(c, n)| {
                    format!(
                        "{:.0} vs {:.0} req/s ({:.2}×)",
                        f(c, "rps"),
                        f(n, "rps"),
                        f(c, "rps") / f(n, "rps")
                    )
                })
                .collect();
            writeln!(w)?;
            writeln!(
                w,
                "The part row is the median of {} runs, each classcast then nginx on the newest part \
                 then listed: {}.",
                cc.len(),
                runs.join("; ")
            )?;
        }
        writeln!(w)?;
    }

    if let Some(v) = viewers_run(r, false) {
        writeln!(w, "## 6. LL-HLS viewers per slave")?;
        writeln!(w)?;
        writeln!(
            w,
            "`BENCH_ONLY=viewers ./scripts/bench.sh` (steps from `VIEWER_STEPS`).{} Same slave and stream as \
             section 5. `classcast-bench viewers` takes {} and, for each step, starts N viewers (joining \
             over ~1 s), lets them play 3 s and measures 10 s. Each viewer is one keep-alive HTTP/1.1 \
             connection doing what hls.js does at the live edge in low-latency mode: a blocking playlist \
             reload for the part named by the last `EXT-X-PRELOAD-HINT` (`_HLS_msn`/`_HLS_part`), then a \
             GET of the newest `EXT-X-PART` it lists. The part GETs are the non-blocking requests whose \
             p99 is the criterion (goal < {:.0} ms with 0 errors); reloads wait for the next part by \
             design and are only checked for errors. \"other\" is every other process on the machine.",
            when(v),
            s(v, "tokens"),
            f(v, "goal_p99_ms")
        )?;
        writeln!(w)?;
        viewers_table(w, v, "slave")?;
        let best = f(v, "max_ok_viewers");
        // Without a passing step, the rate of the smallest step stands in for the ratio (0×).
        let rate = if best.is_finite() {
            f(v, "requests_per_viewer_s")
        } else {
            v["steps"]
                .as_array()
                .and_then(|a| a.first())
                .map_or(f64::NAN, |st| f(st, "requests_per_viewer_s"))
        };
        let best = if best.is_finite() { best } else { 0.0 };
        writeln!(
            w,
            "- Largest N with part p99 < {:.0} ms and 0 errors: **{}**; requests per viewer per second \
             measured there: **{rate:.2}**. Slave RSS before the viewers joined: {:.1} MiB.",
            f(v, "goal_p99_ms"),
            if best > 0.0 {
                format!("{best:.0}")
            } else {
                "none".into()
            },
            f(v, "slave_rss_idle_mib")
        )?;
        if let Some(n) = serving(r, "nginx", "part") {
            let eq = f(n, "rps") / rate;
            writeln!(
                w,
                "- nginx-equivalent = static nginx's {:.0} req/s on the same part bytes (section 5) ÷ \
                 {rate:.2} = **{eq:.0} viewers**; ratio **{:.2}×** (goal ≥ 1.0×: {}).",
                f(n, "rps"),
                best / eq,
                yes(best >= eq)
            )?;
        }
        writeln!(w)?;
        if let Some(n) = viewers_run(r, true) {
            writeln!(
                w,
                "**The same traffic shape against static nginx.** The nginx-equivalent above divides a \
                 throughput measured with evenly spread requests; LL-HLS viewers are not evenly spread: \
                 a new part wakes every blocked reload at once and every viewer then asks for that part. \
                 `classcast-bench viewers --sync-playlist … --sync-part …` reproduces that burst on \
                 fixed URLs: N keep-alive connections woken together by one ticker every 200 ms (the part \
                 target), each GETting the viewer playlist and then the part, the same bytes as above \
                 from `/dev/shm`, served by nginx (1 worker, `sendfile on`). Same generator, same \
                 criterion (part GET p99 < {:.0} ms, 0 errors); nginx's CPU is its worker's.",
                f(n, "goal_p99_ms")
            )?;
            writeln!(w)?;
            viewers_table(w, n, "nginx")?;
            let (c, nn) = (max_ok(v), max_ok(n));
            writeln!(
                w,
                "- Largest N with part p99 < {:.0} ms: classcast **{c:.0}**, nginx **{nn:.0}**: \
                 **{:.2}×** (goal ≥ 1.0×: {}).",
                f(n, "goal_p99_ms"),
                c / nn,
                yes(c >= nn)
            )?;
            writeln!(w)?;
        }
    }

    if let Some(m) = r
        .iter()
        .find(|v| v["bench"] == "ingest_cpu" && v["server"] == "classcast-memory")
    {
        writeln!(w, "## 7. Slave memory with 10 streams and no viewers")?;
        writeln!(w)?;
        writeln!(
            w,
            "`BENCH_ONLY=memory ./scripts/bench.sh`.{} `classcast-bench ingest-cpu` publishes {} copies of \
             the 6 Mbit/s 720p file of section 4 into a fresh slave and samples its RSS every 250 ms: \
             **{:.1} MiB idle, {:.1} MiB max** with {} streams ({:.1} MiB per stream over idle; CPU {:.2} % \
             of a core per stream). The 1,000-viewer figure is in section 6.",
            when(m),
            f(m, "streams"),
            f(m, "rss_idle_mib"),
            f(m, "rss_max_mib"),
            f(m, "streams"),
            (f(m, "rss_max_mib") - f(m, "rss_idle_mib")) / f(m, "streams"),
            f(m, "pct_core_per_stream")
        )?;
        if let (Some(pl), Some(gop)) = (m["held_playlist_mib"].as_f64(), m["held_gop_mib"].as_f64())
        {
            let end = f(m, "rss_end_mib");
            writeln!(w)?;
            writeln!(
                w,
                "At the end the slave said it held {pl:.1} MiB of media in its playlist windows \
                 (the listed segments and the retention margin RFC 8216bis 6.2.2 asks for) and \
                 {gop:.1} MiB in their own buffers in the latest GOPs kept for WebRTC newcomers (the rest of \
                 each GOP points into its parts; `classcast_slave_media_held_bytes`). \
                 RSS then was {end:.1} MiB: {:.1} MiB over idle plus media held, which is the \
                 allocator's own (free pages not yet given back, fragmentation) and per-stream state.",
                end - f(m, "rss_idle_mib") - pl - gop
            )?;
        }
        writeln!(w)?;
    }

    Ok(())
}

/// The viewers result of classcast (LL-HLS, blocking reloads) or of the synchronized nginx
/// reference.
fn viewers_run(r: &[Value], synchronized: bool) -> Option<&Value> {
    // Section 9's runs (labels `cache-tier:…`) are not section 6's.
    r.iter().find(|v| {
        v["bench"] == "viewers"
            && (v["mode"] == "synchronized") == synchronized
            && !v["label"]
                .as_str()
                .is_some_and(|l| l.starts_with("cache-tier:"))
    })
}

/// Largest passing step, 0 when none passed.
fn max_ok(v: &Value) -> f64 {
    let b = f(v, "max_ok_viewers");
    if b.is_finite() { b } else { 0.0 }
}

fn viewers_table(w: &mut String, v: &Value, server: &str) -> std::fmt::Result {
    writeln!(
        w,
        "| viewers | part GET p50 / p95 / p99 / max ms | errors | req / viewer / s | playlist p50 ms | playlist / part KiB | {server} CPU % | generator % | other % | {server} RSS max MiB |"
    )?;
    writeln!(
        w,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    )?;
    for st in v["steps"].as_array().into_iter().flatten() {
        writeln!(
            w,
            "| {} | {:.1} / {:.1} / **{:.1}** / {:.1} | {} | {:.2} | {:.0} | {:.1} / {:.1} | {:.0} | {:.0} | {:.0} | {:.1} |",
            f(st, "viewers"),
            f(st, "part_latency.p50_ms"),
            f(st, "part_latency.p95_ms"),
            f(st, "part_latency.p99_ms"),
            f(st, "part_latency.max_ms"),
            f(st, "errors"),
            f(st, "requests_per_viewer_s"),
            f(st, "playlist_latency.p50_ms"),
            f(st, "mean_playlist_kib"),
            f(st, "mean_part_kib"),
            f(st, "slave_cpu_pct"),
            f(st, "generator_cpu_pct"),
            f(st, "other_cpu_pct"),
            f(st, "slave_rss_max_mib")
        )?;
    }
    writeln!(w)
}
