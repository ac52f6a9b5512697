//! Section 16: one student on each network profile (issue 29). `bench/web/netprofiles.mjs` runs
//! it all inside `classcast-bench netlab` namespaces: WebRTC freezes, hls.js stalls on classcast
//! and on nginx-rtmp's HLS of the same stream through the same link, and the time to the first
//! WebRTC frame with UDP blocked.

use std::path::Path;

use super::procs::Output;
use super::sample::small_media;
use super::{Ctx, log, path_str};
use crate::args;

pub async fn run(ctx: &Ctx<'_>) -> anyhow::Result<()> {
    log(
        "16 network profiles: good, busy, poor Wi-Fi (WebRTC, hls.js on classcast and on nginx-rtmp HLS, 60 s each), then UDP blocked",
    );
    anyhow::ensure!(
        super::servers::on_path("nginx").is_some(),
        "the network-profile section needs nginx with the RTMP module (scripts/bench.sh installs it)"
    );
    super::g2g::npm_ci(ctx).await?;
    let small = small_media(ctx).await?;
    let ports: Vec<String> = (61..=66).map(|o| ctx.port(o).to_string()).collect();
    let a = Vec::from(args![
        "bench/web/netprofiles.mjs",
        "--bin",
        path_str(&ctx.cc),
        "--bench-bin",
        path_str(&ctx.bench),
        "--flv",
        path_str(&small),
        "--rtmp-module",
        super::servers::RTMP_MODULE,
        "--ports",
        ports.join(","),
        "--seconds",
        60,
        "--work",
        path_str(&ctx.work.join("netprofiles")),
        "--results",
        path_str(&ctx.results)
    ]);
    let cmd = ctx.launch.command(true, Path::new("node"), &a);
    ctx.sup.run("netprofiles.mjs", cmd, Output::Inherit).await
}
