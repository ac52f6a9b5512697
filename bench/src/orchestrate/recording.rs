//! Section 10: what recording costs and what replay serves. Ingest CPU of one slave with
//! recording on and off (1 and 4 publishers, 30 s each, the same run), the disk bytes a
//! stream-hour takes, the playlist bytes a player reloads for 1, 10 and 60-minute classes with
//! and without delta updates, and a recorded segment served from disk against static nginx
//! serving the same bytes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use super::serving::{chmod, get, wrk_run};
use super::{Ctx, log, path_str};
use crate::args;

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

/// The playlist bytes a player reloads, rendered by the slave's own renderer for a class of
/// `minutes` of 1 s segments (with a ticket as long as a real one after every URI).
fn playlist_bytes(ctx: &Ctx<'_>) -> anyhow::Result<()> {
    let q = format!("?t=1796150000.{}.{}", "A".repeat(11), "B".repeat(22));
    for minutes in [1u64, 10, 60] {
        let segs: Vec<media::hls::vod::VodSegment> = (0..minutes * 60)
            .map(|i| media::hls::vod::VodSegment {
                msn: 1_796_000_000 + i,
                duration: 1.0,
                pdt_ms: 1_796_000_000_000 + i * 1000,
                discontinuity: false,
                init_id: 0,
            })
            .collect();
        let full = media::hls::vod::render_as(&segs, &q, false, false).len();
        let delta = media::hls::vod::render_as(&segs, &q, false, true).len();
        let line = format!(
            "{{\"bench\":\"playlist_bytes\",\"minutes\":{minutes},\"full\":{full},\"delta\":{delta}}}"
        );
        println!("{line}");
        super::finish::append(&ctx.results, &line)?;
    }
    Ok(())
}

pub async fn run(ctx: &Ctx<'_>) -> anyhow::Result<()> {
    let p = ctx.port(19);
    let (h, r, n) = (ctx.port(26), ctx.port(27), ctx.port(28));
    let flv = path_str(&ctx.flv);
    log("10 recording: ingest CPU with recording on and off, disk per stream-hour, replay serving");
    playlist_bytes(ctx)?;
    let m = ctx.start_master("master-recording", p).await?;
    let rec_root = ctx.work.join("recordings-section");
    for (label, on) in [
        ("classcast-record-on", true),
        ("classcast-record-off", false),
    ] {
        for k in [1usize, 4] {
            let dir = rec_root.join(format!("{label}-{k}"));
            let s = ctx
                .start_slave(
                    "slave-rec",
                    p,
                    h,
                    r,
                    &args![
                        "--record-dir",
                        path_str(&dir),
                        "--record",
                        on,
                        "--grace-ms",
                        1000
                    ],
                )
                .await?;
            ctx.wait_nodes(p, 1).await?;
            let base = format!("rtmp://127.0.0.1:{r}/live");
            let keys = super::sections::keys(ctx, p, r, &format!("rec{k}{}-", on as u8), k).await?;
            let a = args![
                "ingest-cpu",
                "--label",
                label,
                "--pid",
                s,
                "--publish-base",
                base,
                "--streams",
                k,
                "--keys",
                keys,
                "--flv",
                flv.clone(),
                "--seconds",
                30
            ];
            ctx.bench_run(&format!("ingest-cpu {label} {k}"), &a)
                .await?;
            if on && k == 1 {
                let bytes = dir_bytes(&dir);
                let line = format!(
                    "{{\"bench\":\"recording_disk\",\"streams\":1,\"seconds\":30,\"bytes\":{bytes},\"bytes_per_stream_hour\":{}}}",
                    bytes * 120
                );
                println!("{line}");
                super::finish::append(&ctx.results, &line)?;
                replay_serving(ctx, p, n).await?;
            }
            ctx.sup.stop(s);
        }
    }
    ctx.sup.stop(m);
    Ok(())
}

/// wrk on a recorded segment as a viewer fetches it (its ticket), then static nginx serving
/// the same bytes from tmpfs.
async fn replay_serving(ctx: &Ctx<'_>, p: u16, nginx_port: u16) -> anyhow::Result<()> {
    let master = ctx.master_url(p);
    let http = reqwest::Client::new();
    // The class ends a grace period (1 s here) after its publisher stopped.
    let rec = super::retry(100, Duration::from_millis(300), || async {
        let v: serde_json::Value = http
            .get(format!("{master}/api/recordings"))
            .send()
            .await?
            .json()
            .await?;
        v["recordings"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["recording"] == false).cloned())
            .context("no finished recording yet")
    })
    .await?;
    let id = rec["id"].as_str().context("recording id")?.to_string();
    let tok: serde_json::Value = http
        .post(format!("{master}/api/token"))
        .json(&serde_json::json!({"role": "student", "user_id": "bench", "recording": id}))
        .send()
        .await?
        .json()
        .await?;
    let url = tok["hls_url"].as_str().context("hls_url")?.to_string();
    let text = String::from_utf8(get(&url, None).await?)?;
    let uris: Vec<&str> = text.lines().filter(|l| l.starts_with("seg")).collect();
    let uri = uris.get(uris.len() / 2).context("no segment listed")?;
    let base = url.rsplit_once('/').context("url")?.0.to_string();
    let seg_url = format!("{base}/{uri}");
    let bytes = get(&seg_url, None).await?;
    let shm = PathBuf::from(format!(
        "/dev/shm/classcast-bench-vod.{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&shm)?;
    chmod(&shm, 0o755)?;
    std::fs::write(shm.join("part.m4s"), &bytes)?;
    chmod(&shm.join("part.m4s"), 0o644)?;
    let nst = ctx.start_nginx_static(&shm, nginx_port).await?;
    let len = bytes.len() as u64;
    log(&format!(
        "10b a recorded segment ({len} B) from the slave's disk vs static nginx (wrk -t2 -c200 -d8s)"
    ));
    wrk_run(
        ctx,
        ("vod-segment-classcast", "classcast", "vod-segment"),
        len,
        &seg_url,
        None,
    )
    .await?;
    wrk_run(
        ctx,
        ("vod-segment-nginx", "nginx", "vod-segment"),
        len,
        &format!("http://127.0.0.1:{nginx_port}/part.m4s"),
        None,
    )
    .await?;
    ctx.sup.stop(nst);
    let _ = std::fs::remove_dir_all(&shm);
    Ok(())
}
