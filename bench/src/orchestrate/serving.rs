//! Sections 5–7 on one master: serving (wrk on a part and the playlists, classcast vs static
//! nginx), viewers per slave (the LL-HLS player ramp, and the same bursts on static nginx), and
//! the memory of a slave ingesting 10 streams.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};

use super::procs::{self, Output};
use super::sample::{children, small_media};
use super::{Ctx, log, path_str};
use crate::args;

/// A tmpfs dir (removed on drop) holding the bytes static nginx serves.
struct Shm(PathBuf);

impl Drop for Shm {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(super) async fn get(url: &str, bearer: Option<&str>) -> anyhow::Result<Vec<u8>> {
    let mut req = reqwest::Client::new().get(url);
    if let Some(b) = bearer {
        req = req.header("Authorization", format!("Bearer {b}"));
    }
    let r = req.send().await?;
    if !r.status().is_success() {
        bail!("GET {url} → {}", r.status());
    }
    Ok(r.bytes().await?.to_vec())
}

pub(super) fn chmod(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// The URI of the newest part a playlist lists (not the preload hint): as a player at the live
/// edge fetches it.
pub(super) fn newest_listed_part(playlist: &str) -> Option<String> {
    playlist
        .lines()
        .rfind(|l| l.starts_with("#EXT-X-PART:"))
        .and_then(|l| l.split("URI=\"").nth(1))
        .and_then(|u| u.split('"').next())
        .map(str::to_string)
}

/// wrk's (and h2load's) duration with unit → milliseconds.
pub(super) fn wrk_ms(v: &str) -> f64 {
    let num = |s: &str| s.parse::<f64>().unwrap_or(0.0);
    if let Some(x) = v.strip_suffix("us") {
        num(x) / 1000.0
    } else if let Some(x) = v.strip_suffix("ms") {
        num(x)
    } else if let Some(x) = v.strip_suffix('s') {
        num(x) * 1000.0
    } else {
        num(v)
    }
}

/// The figures of one wrk run, as the result line of the `serving` bench.
pub fn parse_wrk(out: &str, label: &str, server: &str, kind: &str, bytes: u64) -> String {
    let (mut rps, mut p50, mut p99, mut non2xx, mut err) = (0.0, 0.0, 0.0, 0u64, String::new());
    for line in out.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if line.contains("Requests/sec:") {
            rps = f.get(1).and_then(|x| x.parse().ok()).unwrap_or(0.0);
        } else if line.starts_with(' ') && f.first() == Some(&"50%") {
            p50 = wrk_ms(f.get(1).unwrap_or(&""));
        } else if line.starts_with(' ') && f.first() == Some(&"99%") {
            p99 = wrk_ms(f.get(1).unwrap_or(&""));
        } else if line.contains("Non-2xx or 3xx responses:") {
            non2xx = f.get(4).and_then(|x| x.parse().ok()).unwrap_or(0);
        } else if let Some(rest) = line.trim_start().strip_prefix("Socket errors:") {
            err = rest.trim_start().to_string();
        }
    }
    // The key order and rounding (%.0f, %.2f) of the line the shell version printed with awk.
    let q = |s: &str| serde_json::Value::from(s).to_string();
    format!(
        "{{\"bench\":\"serving\",\"label\":{},\"server\":{},\"kind\":{},\"bytes\":{bytes},\"rps\":{:.0},\"p50_ms\":{p50:.2},\"p99_ms\":{p99:.2},\"non2xx\":{non2xx},\"socket_errors\":{}}}",
        q(label),
        q(server),
        q(kind),
        rps,
        q(&err)
    )
}

/// The newest complete part the viewer playlist at `vurl` lists (not the preload hint), and its
/// bytes: it stays available for the 2 × PLAYLIST_WINDOW + 1 segments a slave holds (9 s by
/// default), longer than wrk's 8 s.
async fn newest_part(base: &str, vurl: &str) -> anyhow::Result<(String, Vec<u8>)> {
    let listed = get(vurl, None).await?;
    let part = newest_listed_part(&String::from_utf8_lossy(&listed))
        .context("no EXT-X-PART in the viewer playlist")?;
    let bytes = get(&format!("{base}/{part}"), None).await?;
    Ok((part, bytes))
}

/// One `wrk -t2 -c200 -d8s --latency` run → one result line.
pub(super) async fn wrk_run(
    ctx: &Ctx<'_>,
    (label, server, kind): (&str, &str, &str),
    bytes: u64,
    url: &str,
    header: Option<String>,
) -> anyhow::Result<()> {
    let mut a = Vec::from(args!["-t2", "-c200", "-d8s", "--latency"]);
    if let Some(h) = header {
        a.extend(args!["-H", h]);
    }
    a.push(url.to_string());
    let out = ctx.work.join(format!("wrk-{label}.txt"));
    let cmd = ctx.launch.command(true, Path::new("wrk"), &a);
    ctx.sup
        .run(&format!("wrk {label}"), cmd, Output::Log(out.clone()))
        .await?;
    let text = std::fs::read_to_string(&out)?;
    print!("{text}");
    let line = parse_wrk(&text, label, server, kind, bytes);
    println!("{line}");
    super::finish::append(&ctx.results, &line)
}

pub async fn run(ctx: &Ctx<'_>) -> anyhow::Result<()> {
    let want = |s| ctx.args.want(s);
    let p = ctx.port(4);
    let (hs, rs, ns) = (ctx.port(13), ctx.port(23), ctx.port(31));
    let m = ctx.start_master("master-serving", p).await?;
    if want("serving") || want("viewers") {
        serve_and_view(ctx, p, hs, rs, ns).await?;
    }
    if want("memory") {
        log("7 memory: slave RSS with 10 streams (6 Mbit/s each) and no viewers");
        let s = ctx.start_slave("slave-memory", p, hs, rs, &[]).await?;
        ctx.wait_nodes(p, 1).await?;
        let keys = super::sections::keys(ctx, p, rs, "mem", 10).await?;
        ctx.bench_run(
            "ingest-cpu memory",
            &args![
                "ingest-cpu",
                "--label",
                "classcast-memory",
                "--pid",
                s,
                "--publish-base",
                format!("rtmp://127.0.0.1:{rs}/live"),
                "--streams",
                10,
                "--keys",
                keys,
                "--flv",
                path_str(&ctx.flv),
                "--seconds",
                20,
                "--metrics-url",
                format!("http://127.0.0.1:{hs}/metrics")
            ],
        )
        .await?;
        ctx.sup.stop(s);
    }
    ctx.sup.stop(m);
    Ok(())
}

/// ffmpeg publishing `media` to a new class `stream` on the master at port `p`, looped in real
/// time with `-c copy` (publishing costs no encoder); its pid.
pub(super) async fn publish_loop(
    ctx: &Ctx<'_>,
    p: u16,
    stream: &str,
    media: &Path,
) -> anyhow::Result<u32> {
    let (publish, _) = ctx.teacher_key(p, stream).await?;
    let a = args![
        "-hide_banner",
        "-loglevel",
        "error",
        "-nostdin",
        "-re",
        "-stream_loop",
        "-1",
        "-i",
        path_str(media),
        "-c",
        "copy",
        "-f",
        "flv",
        publish
    ];
    let cmd = ctx.launch.command(true, Path::new("ffmpeg"), &a);
    ctx.sup.spawn(
        &format!("ffmpeg publisher {stream}"),
        cmd,
        Output::Log(ctx.work.join(format!("publisher-{stream}.log"))),
    )
}

/// One slave with one live ~1.5 Mbit/s stream; the bytes a viewer gets (its playlist, the
/// newest listed part as it is listed: with the media ticket) and the bare playlist an edge
/// gets, copied into tmpfs for static nginx.
async fn serve_and_view(ctx: &Ctx<'_>, p: u16, hs: u16, rs: u16, ns: u16) -> anyhow::Result<()> {
    let small = small_media(ctx).await?;
    let s = ctx.start_slave("slave-serving", p, hs, rs, &[]).await?;
    ctx.wait_nodes(p, 1).await?;
    let publisher = publish_loop(ctx, p, "serve", &small).await?;
    let vurl = ctx.viewer_url(p, "serve").await?;
    let _ = super::retry(100, Duration::from_millis(200), || get(&vurl, None)).await;
    procs::sleep(Duration::from_secs(4)).await?; // a few segments in the window

    let shm = Shm(PathBuf::from(format!(
        "/dev/shm/classcast-bench.{}",
        std::process::id()
    )));
    std::fs::create_dir_all(&shm.0)?;
    chmod(&shm.0, 0o755)?; // nginx's worker runs as nobody
    let plain = vurl.split('?').next().unwrap_or(&vurl).to_string();
    let base = plain
        .strip_suffix("/index.m3u8")
        .context("viewer URL without /index.m3u8")?
        .to_string();
    // nginx first (on placeholders, rewritten below), so that the part picked below is as
    // young as can be when wrk starts.
    for name in ["viewer.m3u8", "peer.m3u8", "part.m4s"] {
        let f = shm.0.join(name);
        std::fs::write(&f, b"")?;
        chmod(&f, 0o644)?;
    }
    let nst = ctx.start_nginx_static(&shm.0, ns).await?;
    let viewer = get(&vurl, None).await?;
    let peer = get(&plain, Some(&ctx.secret)).await?;
    let (part, part_bytes) = newest_part(&base, &vurl).await?;
    for (name, bytes) in [
        ("viewer.m3u8", &viewer),
        ("peer.m3u8", &peer),
        ("part.m4s", &part_bytes),
    ] {
        let f = shm.0.join(name);
        std::fs::write(&f, bytes)?;
        chmod(&f, 0o644)?;
    }
    let (pb, vb, peb) = (
        part_bytes.len() as u64,
        viewer.len() as u64,
        peer.len() as u64,
    );
    eprintln!("part {part}: {pb} bytes; viewer playlist {vb} bytes, peer playlist {peb} bytes");

    if ctx.args.want("serving") {
        log(
            "5 serving: one ~40 KB part and the playlist, classcast vs static nginx (wrk -t2 -c200 -d8s)",
        );
        let n = |f: &str| format!("http://127.0.0.1:{ns}/{f}");
        let bearer = Some(format!("Authorization: Bearer {}", ctx.secret));
        // Three runs in turn (the goal is on their median), each on the newest part then
        // listed: a part stays available about 9 s, wrk runs 8.
        for run in 1..=3 {
            let (part, bytes) = newest_part(&base, &vurl).await?;
            std::fs::write(shm.0.join("part.m4s"), &bytes)?;
            let pb = bytes.len() as u64;
            wrk_run(
                ctx,
                (&format!("part-classcast-{run}"), "classcast", "part"),
                pb,
                &format!("{base}/{part}"),
                None,
            )
            .await?;
            wrk_run(
                ctx,
                (&format!("part-nginx-{run}"), "nginx", "part"),
                pb,
                &n("part.m4s"),
                None,
            )
            .await?;
        }
        let pv = "playlist-viewer";
        wrk_run(
            ctx,
            ("playlist-viewer-classcast", "classcast", pv),
            vb,
            &vurl,
            None,
        )
        .await?;
        let nv = n("viewer.m3u8");
        wrk_run(ctx, ("playlist-viewer-nginx", "nginx", pv), vb, &nv, None).await?;
        let pp = "playlist-peer";
        wrk_run(
            ctx,
            ("playlist-peer-classcast", "classcast", pp),
            peb,
            &plain,
            bearer,
        )
        .await?;
        let np = n("peer.m3u8");
        wrk_run(ctx, ("playlist-peer-nginx", "nginx", pp), peb, &np, None).await?;
    }

    if ctx.args.want("viewers") {
        let steps = &ctx.args.viewer_steps;
        log(&format!(
            "6 viewers per slave: {steps} LL-HLS players, 10 s each"
        ));
        ctx.bench_run(
            "viewers classcast",
            &args![
                "viewers",
                "--master",
                ctx.master_url(p),
                "--slave",
                format!("http://127.0.0.1:{hs}"),
                "--stream",
                "serve",
                "--steps",
                steps,
                "--seconds",
                10,
                "--slave-pid",
                s
            ],
        )
        .await?;
        // The same burst shape on static nginx: every viewer woken at once each 200 ms, then
        // the viewer playlist and the part (the bytes classcast served), from tmpfs.
        log("6b viewers reference: static nginx, the same synchronized bursts on fixed URLs");
        let worker = children(nst).first().copied().unwrap_or(nst);
        ctx.bench_run(
            "viewers nginx",
            &args![
                "viewers",
                "--master",
                "unused",
                "--slave",
                format!("http://127.0.0.1:{ns}"),
                "--stream",
                "serve",
                "--steps",
                steps,
                "--seconds",
                10,
                "--slave-pid",
                worker,
                "--label",
                "nginx",
                "--sync-playlist",
                "/viewer.m3u8",
                "--sync-part",
                "/part.m4s",
                "--sync-interval-ms",
                200
            ],
        )
        .await?;
    }
    ctx.sup.stop(nst);
    drop(shm);
    ctx.sup.stop(publisher);
    ctx.sup.stop(s);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_to_result_line() {
        let out = "Running 10s test @ http://127.0.0.1:1/part.m4s\n  2 threads and 200 connections\n\
  Latency Distribution\n     50%    1.23ms\n     75%    2.00ms\n     90%    3.00ms\n     99%  850.00us\n\
  123456 requests in 10.00s, 4.00GB read\n  Socket errors: connect 0, read 3, write 0, timeout 0\n\
  Non-2xx or 3xx responses: 7\nRequests/sec:  12345.67\nTransfer/sec:    409.60MB\n";
        let v: serde_json::Value =
            serde_json::from_str(&parse_wrk(out, "part-nginx", "nginx", "part", 40000)).unwrap();
        assert_eq!(v["rps"], 12346);
        assert_eq!(v["p50_ms"], 1.23);
        assert_eq!(v["p99_ms"], 0.85);
        assert_eq!(v["non2xx"], 7);
        assert_eq!(v["socket_errors"], "connect 0, read 3, write 0, timeout 0");
        assert_eq!(v["bytes"], 40000);
    }
}
