//! Section 15: a teacher's ladder (issue 33). (a) Ingest CPU of one class sent as three H.264
//! renditions in one Enhanced RTMP multitrack publish, against the same class as its top
//! rendition only (the very same track, copied out of the ladder file). (b) What one student
//! behind a 1.5 Mbit/s link costs and gets, ladder against top only, over LL-HLS and WebRTC
//! (`bench/web/abr.mjs`). Both need ffmpeg 9 (`FFMPEG9`, installed by scripts/bench.sh): it
//! writes the multitrack file and publishes it with `-c copy`.

use std::path::{Path, PathBuf};

use super::procs::Output;
use super::{Ctx, log, path_str};
use crate::args;

fn ffmpeg9() -> anyhow::Result<String> {
    let exe = std::env::var("FFMPEG9").unwrap_or_else(|_| "ffmpeg9".into());
    let ok = std::process::Command::new(&exe)
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success());
    anyhow::ensure!(
        ok,
        "the ladder section needs ffmpeg 9 ({exe}); scripts/bench.sh installs it and sets FFMPEG9"
    );
    Ok(exe)
}

/// The ladder (1080p 3 Mbit/s, 720p 1.5, 360p 0.5, keyframes every second in all three, AAC
/// 128 kbit/s), 20 s, and its top rendition alone; cached under target/bench-media.
async fn media(ctx: &Ctx<'_>, exe: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
    let ladder = ctx.media.join("ladder-1080-720-360-20s.flv");
    let top = ctx.media.join("ladder-top-only-20s.flv");
    let run = |name: &'static str, a: Vec<String>| {
        let cmd = ctx.launch.command(false, Path::new(exe), &a);
        ctx.sup.run(name, cmd, Output::Inherit)
    };
    if std::fs::metadata(&ladder).map(|m| m.len()).unwrap_or(0) == 0 {
        log("encoding the ladder (ffmpeg 9, ~25 s)");
        let tmp = ladder.with_extension("tmp.flv");
        let mut a = Vec::from(args![
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=1920x1080:rate=30",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=48000",
            "-t",
            "20",
            "-filter_complex",
            "[0:v]noise=alls=20:allf=t,split=3[a][b][c];[b]scale=1280:720[b2];[c]scale=640:360[c2]",
            "-map",
            "[a]",
            "-map",
            "[b2]",
            "-map",
            "[c2]",
            "-map",
            "1:a",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-g",
            "30",
            "-keyint_min",
            "30",
            "-sc_threshold",
            "0",
            "-bf",
            "0",
            "-pix_fmt",
            "yuv420p"
        ]);
        for (i, rate) in ["3000k", "1500k", "500k"].iter().enumerate() {
            a.extend(args![
                format!("-b:v:{i}"),
                rate,
                format!("-maxrate:v:{i}"),
                rate,
                format!("-bufsize:v:{i}"),
                rate
            ]);
        }
        a.extend(args!["-c:a", "aac", "-b:a", "128k", path_str(&tmp)]);
        run("ffmpeg 9 (ladder)", a).await?;
        std::fs::rename(&tmp, &ladder)?;
    }
    if std::fs::metadata(&top).map(|m| m.len()).unwrap_or(0) == 0 {
        let tmp = top.with_extension("tmp.flv");
        let a = Vec::from(args![
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-i",
            path_str(&ladder),
            "-map",
            "0:v:0",
            "-map",
            "0:a",
            "-c",
            "copy",
            path_str(&tmp)
        ]);
        run("ffmpeg 9 (top rendition)", a).await?;
        std::fs::rename(&tmp, &top)?;
    }
    Ok((ladder, top))
}

pub async fn run(ctx: &Ctx<'_>) -> anyhow::Result<()> {
    let exe = ffmpeg9()?;
    let (ladder, top) = media(ctx, &exe).await?;
    log("15a ladder ingest: one class as 3 renditions against its top rendition only, 30 s each");
    let p = ctx.port(55);
    let (h, r) = (ctx.port(56), ctx.port(57));
    let m = ctx.start_master("master-ladder", p).await?;
    for (label, flv) in [("classcast-ladder3", &ladder), ("classcast-top-only", &top)] {
        let s = ctx.start_slave("slave-ladder", p, h, r, &[]).await?;
        ctx.wait_nodes(p, 1).await?;
        let base = format!("rtmp://127.0.0.1:{r}/live");
        let mut a = Vec::from(args![
            "ingest-cpu",
            "--label",
            label,
            "--pid",
            s,
            "--publish-base",
            base,
            "--streams",
            1,
            "--flv",
            path_str(flv),
            "--seconds",
            30
        ]);
        a.extend(args![
            "--keys",
            super::sections::keys(ctx, p, r, &format!("{label}-"), 1).await?
        ]);
        ctx.bench_run("ingest-cpu ladder", &a).await?;
        ctx.sup.stop(s);
    }
    ctx.sup.stop(m);

    log("15b one student behind 1.5 Mbit/s: ladder against top only, LL-HLS and WebRTC, 60 s each");
    super::g2g::npm_ci(ctx).await?;
    let a = Vec::from(args![
        "bench/web/abr.mjs",
        "--bin",
        path_str(&ctx.cc),
        "--bench-bin",
        path_str(&ctx.bench),
        "--ffmpeg9",
        exe,
        "--ladder",
        path_str(&ladder),
        "--single",
        path_str(&top),
        "--ports",
        format!("{},{},{}", ctx.port(58), ctx.port(59), ctx.port(60)),
        "--seconds",
        60,
        "--work",
        path_str(&ctx.work.join("abr")),
        "--results",
        path_str(&ctx.results)
    ]);
    let cmd = ctx.launch.command(true, Path::new("node"), &a);
    ctx.sup.run("abr.mjs", cmd, Output::Inherit).await
}
