//! Section 8: glass-to-glass in headless Chromium: one encoder → classcast (200 and 100 ms
//! parts), nginx-rtmp HLS (and xiu HLS and HTTP-FLV with XIU=1), then one long run of
//! classcast counting stalls.

use std::path::Path;
use std::time::Duration;

use super::procs::{self, Output};
use super::{Ctx, log, path_str};
use crate::args;

async fn fetch_ok(url: &str) -> bool {
    match reqwest::Client::new().get(url).send().await {
        Ok(r) => r.status().is_success(),
        Err(_) => false,
    }
}

async fn fetch_text(url: &str) -> String {
    match reqwest::Client::new().get(url).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// The web dependencies of bench/web (npm ci once).
pub(super) async fn npm_ci(ctx: &Ctx<'_>) -> anyhow::Result<()> {
    let web = ctx.root.join("bench/web");
    let missing = ["hls.js", "shaka-player", "playwright-core", "mpegts.js"]
        .iter()
        .any(|m| !web.join(format!("node_modules/{m}/package.json")).is_file());
    if missing {
        let mut cmd = std::process::Command::new("npm");
        cmd.args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&web);
        ctx.sup.run("npm ci", cmd, Output::Inherit).await?;
    }
    Ok(())
}

pub async fn run(ctx: &Ctx<'_>) -> anyhow::Result<()> {
    let xiu = ctx.xiu.is_some();
    log(&format!(
        "8 glass-to-glass: one encoder → classcast (parts 200 ms), classcast (100 ms), nginx-rtmp HLS{}",
        if xiu { ", xiu HLS" } else { "" }
    ));
    npm_ci(ctx).await?;
    let (pa, ha, ra) = (ctx.port(5), ctx.port(14), ctx.port(24));
    let (pb, hb, rb) = (ctx.port(6), ctx.port(15), ctx.port(25));
    let (rn, hn) = (ctx.port(32), ctx.port(33));
    let (rx, hx, fx) = (ctx.port(36), ctx.port(37), ctx.port(38));
    // g2g.mjs serves its page from its own port: the slaves allow that origin, as a school
    // allows the LMS that embeds the player.
    let page_port = ctx.port(39);
    let mut ctx = ctx.clone();
    ctx.launch.env.push((
        "CORS_ORIGINS".into(),
        format!("http://127.0.0.1:{page_port}"),
    ));
    let ctx = &ctx;

    let part = |ms: u32| args!["--part-target-ms", ms];
    ctx.start_master("master-g2g-200", pa).await?;
    ctx.start_slave("slave-g2g-200", pa, ha, ra, &part(200))
        .await?;
    ctx.start_master("master-g2g-100", pb).await?;
    ctx.start_slave("slave-g2g-100", pb, hb, rb, &part(100))
        .await?;
    ctx.wait_nodes(pa, 1).await?;
    ctx.wait_nodes(pb, 1).await?;

    let gn = ctx.work.join("nginx-g2g");
    std::fs::create_dir_all(gn.join("hls"))?;
    // nginx's worker (nobody) serves these.
    for d in [&ctx.work, &gn, &gn.join("hls")] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))?;
    }
    let conf = ctx.nginx_hls_conf(&gn, rn, hn);
    let n = ctx.spawn_nginx("nginx-rtmp-hls", &gn, &conf)?;
    ctx.wait_ports(n, &gn.join("logs/error.log"), &[rn]).await?;

    let mut publish_x = Vec::new();
    if xiu {
        // xiu with HLS: 1 s MPEG-TS segments (one per GOP), 10 in the playlist (see
        // write_xiu_conf); and HTTP-FLV, its low-latency output.
        let dir = ctx.work.join("xiu-g2g");
        ctx.write_xiu_conf(&dir, rx, hx, Some(fx))?;
        ctx.start_xiu(&dir, &[rx, hx, fx]).await?;
        publish_x.push(format!("rtmp://127.0.0.1:{rx}/live/g2g"));
    }
    let (pub_a, _) = ctx.teacher_key(pa, "g2g").await?;
    let (pub_b, _) = ctx.teacher_key(pb, "g2g").await?;
    let epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let mut a = Vec::from(args![
        "bench/web/publish.mjs",
        epoch,
        pub_a,
        pub_b,
        format!("rtmp://127.0.0.1:{rn}/live/g2g")
    ]);
    a.extend(publish_x);
    let cmd = ctx.launch.command(true, Path::new("node"), &a);
    ctx.sup.spawn(
        "publish.mjs",
        cmd,
        Output::Log(ctx.work.join("publisher-g2g.log")),
    )?;
    let url_a = ctx.viewer_url(pa, "g2g").await?;
    let url_b = ctx.viewer_url(pb, "g2g").await?;
    let url_n = format!("http://127.0.0.1:{hn}/hls/g2g.m3u8");
    let url_x = format!("http://127.0.0.1:{hx}/live/g2g/g2g.m3u8");
    let url_xf = format!("http://127.0.0.1:{fx}/live/g2g.flv");
    for _ in 0..100 {
        if fetch_ok(&url_n).await && fetch_ok(&url_a).await && (!xiu || fetch_ok(&url_x).await) {
            break;
        }
        procs::sleep(Duration::from_millis(200)).await?;
    }
    procs::sleep(Duration::from_secs(5)).await?;
    // The playlists the HLS-only servers serve at this point (for the record, in the work dir).
    std::fs::write(ctx.work.join("nginx-g2g.m3u8"), fetch_text(&url_n).await)?;
    if xiu {
        std::fs::write(ctx.work.join("xiu-g2g.m3u8"), fetch_text(&url_x).await)?;
    }

    let g2g = |label: String, player: &str, cfg: String, src: &str, extra: &[&str]| {
        let mut a = Vec::from(args![
            "bench/web/g2g.mjs",
            "--port",
            page_port,
            "--runs",
            ctx.args.g2g_runs,
            "--seconds",
            30,
            "--epoch",
            epoch,
            "--out",
            path_str(&ctx.results),
            "--label",
            label,
            "--player",
            player,
            "--cfg",
            cfg,
            "--src",
            src
        ]);
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let node = |a: Vec<String>| {
        let cmd = ctx.launch.command(true, Path::new("node"), &a);
        ctx.sup.run("g2g.mjs", cmd, Output::Inherit)
    };
    // G2G_HLS_EXTRA adds hls.js settings to every hls.js configuration (its results get the
    // label suffix G2G_SUFFIX).
    let x = if ctx.args.g2g_hls_extra.is_empty() {
        String::new()
    } else {
        format!(",{}", ctx.args.g2g_hls_extra)
    };
    let sfx = &ctx.args.g2g_suffix;
    let ll = format!("{{\"lowLatencyMode\":true{x}}}");
    let sync1 = format!("{{\"lowLatencyMode\":true,\"liveSyncDurationCount\":1{x}}}");
    // G2G_PLAYERS picks which kinds run (hls, student, native, shaka, whep, mpegts).
    let players: Vec<&String> = ctx
        .args
        .g2g_players
        .iter()
        .filter(|p| !p.is_empty())
        .collect();
    let on = |kind: &str| players.is_empty() || players.iter().any(|p| *p == kind);
    // The page-player runs, in order: (kind for G2G_PLAYERS, label, player, config, source).
    // - the student page: what it plays when WebRTC is off or refused, on the defaults (200 ms
    //   parts): its own hls.js settings (master/web/live-hls.js: low-latency, catch-up, and a
    //   jump back to the live sync position when more than a little behind);
    // - nginx-rtmp's HLS in stock hls.js: a page that does nothing special (its playlist has no
    //   parts, so hls.js keeps its default three target durations behind the end);
    // - Chromium's own HLS player (no library, no settings) on the defaults.
    let runs = [
        (
            "hls",
            format!("classcast-part200{sfx}"),
            "hls",
            ll.clone(),
            &url_a,
        ),
        (
            "student",
            format!("classcast-part200+student-page{sfx}"),
            "hls",
            "student".into(),
            &url_a,
        ),
        (
            "hls",
            format!("classcast-part100{sfx}"),
            "hls",
            ll.clone(),
            &url_b,
        ),
        ("hls", format!("nginx-rtmp-hls1s{sfx}"), "hls", ll, &url_n),
        (
            "native",
            "classcast-part200".into(),
            "native",
            "{}".into(),
            &url_a,
        ),
    ];
    for (kind, label, player, cfg, src) in runs {
        if on(kind) {
            node(g2g(label, player, cfg, src, &[])).await?;
        }
    }
    // xiu's HLS server sends no CORS header: its Chromium runs without web security (the page
    // comes from g2g.mjs's own port). Like nginx-rtmp's HLS it has no parts, so hls.js starts
    // one target duration (liveSyncDurationCount 1; xiu says 2 s) behind the end.
    let nosec = ["--web-security", "off"];
    if xiu && on("hls") {
        node(g2g(format!("xiu-hls1s{sfx}"), "hls", sync1, &url_x, &nosec)).await?;
        // Its HTTP-FLV in mpegts.js: no stash buffer (frames go to MSE as they come) and
        // playback-rate live sync (1.2× while more than 0.5 s is buffered, down to 0.3 s; with
        // the defaults, 1.2 s and 0.8 s, it stays wherever in the GOP it joined).
        let cfg = r#"{"enableStashBuffer":false,"liveSync":true,"liveSyncMaxLatency":0.5,"liveSyncTargetLatency":0.3}"#;
        node(g2g(
            "xiu-httpflv".into(),
            "mpegts",
            cfg.into(),
            &url_xf,
            &[],
        ))
        .await?;
    }
    if ctx.args.g2g_shaka && on("shaka") {
        let ll = r#"{"streaming":{"lowLatencyMode":true}}"#.to_string();
        node(g2g("classcast-part200".into(), "shaka", ll, &url_a, &[])).await?;
        node(g2g(
            "nginx-rtmp-hls1s".into(),
            "shaka",
            "{}".into(),
            &url_n,
            &[],
        ))
        .await?;
        if xiu {
            node(g2g(
                "xiu-hls1s".into(),
                "shaka",
                "{}".into(),
                &url_x,
                &nosec,
            ))
            .await?;
        }
    }
    // WebRTC (WHEP) with the defaults, from the origin and from an edge of the same master.
    if ctx.args.g2g_webrtc && on("whep") {
        let (he, re) = (ctx.port(45), ctx.port(46));
        ctx.start_slave("slave-g2g-edge", pa, he, re, &part(200))
            .await?;
        ctx.wait_nodes(pa, 2).await?;
        let master = ctx.master_url(pa);
        let (url, token, origin) =
            crate::util::whep_target(&master, "g2g", Some("slave-g2g-edge")).await?;
        node(g2g(
            format!("classcast-webrtc-origin{sfx}"),
            "whep",
            "{}".into(),
            &url,
            &["--token", &token],
        ))
        .await?;
        let (url, token, _) = crate::util::whep_target(&master, "g2g", Some(&origin)).await?;
        node(g2g(
            format!("classcast-webrtc-edge{sfx}"),
            "whep",
            "{}".into(),
            &url,
            &["--token", &token],
        ))
        .await?;
    }
    // One long run of what a user gets by default (200 ms parts, the student page's hls.js
    // settings), for its stalls and drift.
    let long = ctx.args.g2g_long_s;
    if long > 0 && on("student") {
        log(&format!(
            "8b stalls: classcast (default 200 ms parts), the student page's hls.js settings, one run of {long} s"
        ));
        let samples = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let lag = tokio::spawn(edge_lag_sampler(url_a.clone(), samples.clone()));
        let run = node(Vec::from(args![
            "bench/web/g2g.mjs",
            "--port",
            page_port,
            "--bench",
            "g2g_long",
            "--runs",
            1,
            "--seconds",
            long,
            "--epoch",
            epoch,
            "--out",
            path_str(&ctx.results),
            "--label",
            "classcast-part200+student-page",
            "--player",
            "hls",
            "--cfg",
            "student",
            "--src",
            url_a
        ]))
        .await;
        lag.abort();
        let samples = samples.lock().map(|v| v.clone()).unwrap_or_default();
        run?;
        let line = edge_lag_line("classcast-part200+student-page", &samples);
        println!("{line}");
        super::finish::append(&ctx.results, &line)?;
    }
    // The publisher, nginx, the slaves and masters (and xiu): newest first.
    ctx.sup.stop_all();
    Ok(())
}

/// How far the live edge of the playlist at `url` is behind the wall clock, every 2 s:
/// `(s since the first sample, ms)`. The edge is the end of the newest part on the playlist's
/// own clock (PROGRAM-DATE-TIME is the wall clock when the stream began, advanced by media
/// durations only), so a lag that grows means the media arrives ever later than real time —
/// the publisher falling behind — whatever the player does.
/// It is aborted when the long run ends, so it keeps its samples in `out`.
async fn edge_lag_sampler(url: String, out: std::sync::Arc<std::sync::Mutex<Vec<(f64, f64)>>>) {
    let t0 = std::time::Instant::now();
    loop {
        if let Some(lag) = edge_lag_ms(&fetch_text(&url).await) {
            let at = t0.elapsed().as_secs_f64();
            if let Ok(mut v) = out.lock() {
                v.push((at, lag));
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

fn edge_lag_ms(playlist: &str) -> Option<f64> {
    let p = media::hls::playlist::ParsedPlaylist::parse(playlist).ok()?;
    let last = p.segments.last()?;
    let media_s = last
        .duration
        .unwrap_or_else(|| last.parts.iter().map(|x| x.duration).sum());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_millis() as f64;
    Some(now - (last.pdt_ms as f64 + media_s * 1000.0))
}

/// The `g2g_edge_lag` result line: the median lag of each whole minute.
fn edge_lag_line(label: &str, samples: &[(f64, f64)]) -> String {
    let mut by_minute = Vec::new();
    for m in 0.. {
        let (lo, hi) = (m as f64 * 60.0, (m + 1) as f64 * 60.0);
        if samples.last().is_none_or(|l| l.0 < hi - 2.0) {
            break;
        }
        let mut w: Vec<f64> = samples
            .iter()
            .filter(|s| s.0 >= lo && s.0 < hi)
            .map(|s| s.1)
            .collect();
        w.sort_by(f64::total_cmp);
        by_minute.push(w.get(w.len() / 2).map_or(f64::NAN, |v| v.round()));
    }
    // The key order g2g.mjs writes (bench, label, player), by which a subset run replaces it.
    format!(
        "{{\"bench\":\"g2g_edge_lag\",\"label\":{},\"player\":\"hls\",\"samples\":{},\"lag_by_minute_ms\":{}}}",
        serde_json::Value::from(label),
        samples.len(),
        serde_json::Value::from(by_minute)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_edge_is_the_newest_parts_end_on_the_playlists_clock() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let pdt = media::hls::playlist::rfc3339_ms(now - 3000);
        let text = format!(
            "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXT-X-PART-INF:PART-TARGET=0.2\n#EXT-X-MEDIA-SEQUENCE:7\n\
             #EXT-X-MAP:URI=\"init0.mp4\"\n#EXT-X-PROGRAM-DATE-TIME:{pdt}\n\
             #EXT-X-PART:DURATION=0.20000,URI=\"part7.0.m4s\",INDEPENDENT=YES\n\
             #EXT-X-PART:DURATION=0.20000,URI=\"part7.1.m4s\"\n"
        );
        let lag = edge_lag_ms(&text).expect("a lag");
        assert!((2550.0..2700.0).contains(&lag), "{lag}");
    }

    #[test]
    fn the_lag_line_has_one_median_per_whole_minute() {
        let samples: Vec<(f64, f64)> = (0..75)
            .map(|i| (i as f64 * 2.0, 100.0 + i as f64))
            .collect();
        let line = edge_lag_line("x", &samples);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["lag_by_minute_ms"], serde_json::json!([115.0, 145.0]));
        assert_eq!(v["samples"], 75);
    }
}
