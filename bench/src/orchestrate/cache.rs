//! Section 9: a cache tier. The same LL-HLS viewer ramp against one slave on its own, then
//! through nginx (apt, the shipped deploy/nginx/classcast-cache.conf, one worker) in front of
//! a slave started with `--cache-url`, counting the requests per part that reach the slave.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;

use super::procs;
use super::sample::{children, small_media};
use super::{Ctx, log, path_str};
use crate::args;

/// The shipped cache configuration inside a minimal nginx.conf, moved into `dir`: cache paths,
/// the slave's port and the listening port rewritten (each must be found: the shipped file
/// changed otherwise).
fn cache_conf(ctx: &Ctx<'_>, dir: &Path, slave_port: u16, port: u16) -> anyhow::Result<String> {
    let shipped = ctx.root.join("deploy/nginx/classcast-cache.conf");
    let mut text = std::fs::read_to_string(&shipped)
        .with_context(|| format!("reading {}", shipped.display()))?;
    let d = path_str(dir);
    for (from, to) in [
        ("/var/cache/nginx/", format!("{d}/cache/")),
        (
            "server 127.0.0.1:8888;",
            format!("server 127.0.0.1:{slave_port};"),
        ),
        ("listen 8080;", format!("listen 127.0.0.1:{port};")),
        ("listen [::]:8080;", String::new()),
    ] {
        anyhow::ensure!(
            text.contains(from),
            "{} no longer has `{from}`",
            shipped.display()
        );
        text = text.replace(from, &to);
    }
    std::fs::create_dir_all(dir.join("cache"))?;
    std::fs::write(dir.join("classcast-cache.conf"), text)?;
    let user = if unsafe { libc::geteuid() } == 0 {
        "user root;"
    } else {
        ""
    };
    Ok(format!(
        "{user} worker_processes 1; pid {d}/nginx.pid;\n\
         events {{ worker_connections 16384; }}\n\
         http {{ access_log off; client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
         include {d}/classcast-cache.conf; }}\n"
    ))
}

async fn publish(ctx: &Ctx<'_>, p: u16, stream: &str) -> anyhow::Result<u32> {
    let small = small_media(ctx).await?;
    let pid = super::serving::publish_loop(ctx, p, stream, &small).await?;
    ctx.viewer_url(p, stream).await?;
    procs::sleep(Duration::from_secs(4)).await?; // a few segments in the window
    Ok(pid)
}

pub async fn run(ctx: &Ctx<'_>) -> anyhow::Result<()> {
    let steps = &ctx.args.cache_steps;
    let p = ctx.port(7);
    let m = ctx.start_master("master-cache", p).await?;

    log(&format!(
        "9 cache tier: {steps} LL-HLS viewers on one slave alone, then through nginx in front of one"
    ));
    let (hs, rs) = (ctx.port(8), ctx.port(9));
    let s = ctx.start_slave("slave-alone", p, hs, rs, &[]).await?;
    ctx.wait_nodes(p, 1).await?;
    let publisher = publish(ctx, p, "alone").await?;
    ctx.bench_run(
        "viewers slave alone",
        &args![
            "viewers",
            "--master",
            ctx.master_url(p),
            "--slave",
            format!("http://127.0.0.1:{hs}"),
            "--stream",
            "alone",
            "--steps",
            steps,
            "--seconds",
            10,
            "--slave-pid",
            s,
            "--label",
            "cache-tier:slave-alone",
            "--origin-metrics",
            format!("http://127.0.0.1:{hs}/metrics")
        ],
    )
    .await?;
    ctx.sup.stop(publisher);
    ctx.sup.stop(s);

    let (hc, rc, nc) = (ctx.port(16), ctx.port(17), ctx.port(18));
    let cache_url = format!("http://127.0.0.1:{nc}");
    let s = ctx
        .start_slave(
            "slave-behind-cache",
            p,
            hc,
            rc,
            &args!["--cache-url", cache_url],
        )
        .await?;
    ctx.wait_nodes(p, 1).await?;
    let dir = ctx.work.join("nginx-cache");
    let conf = cache_conf(ctx, &dir, hc, nc)?;
    let nginx = ctx.spawn_nginx("nginx-cache", &dir, &conf)?;
    ctx.wait_ports(nginx, &dir.join("logs/error.log"), &[nc])
        .await?;
    let publisher = publish(ctx, p, "cached").await?;
    let worker = children(nginx).first().copied().unwrap_or(nginx);
    ctx.bench_run(
        "viewers through the nginx cache",
        &args![
            "viewers",
            "--master",
            ctx.master_url(p),
            "--slave",
            cache_url,
            "--stream",
            "cached",
            "--steps",
            steps,
            "--seconds",
            10,
            "--slave-pid",
            worker,
            "--label",
            "cache-tier:through-nginx",
            "--origin-metrics",
            format!("http://127.0.0.1:{hc}/metrics")
        ],
    )
    .await?;
    ctx.sup.stop(publisher);
    ctx.sup.stop(nginx);
    ctx.sup.stop(s);
    ctx.sup.stop(m);
    Ok(())
}
