//! Sections 1–4: the master's control plane (tokens, heartbeats), publish → part latency, and
//! ingest CPU of classcast and its peers.

use super::sample::children;
use super::{Ctx, log, path_str};
use crate::args;

pub async fn tokens(ctx: &Ctx<'_>) -> anyhow::Result<()> {
    let p = ctx.port(0);
    log("1/4 tokens: POST /api/token, 64 connections, 10 s");
    let m = ctx.start_master("master-tokens", p).await?;
    ctx.bench_run(
        "tokens",
        &args![
            "tokens",
            "--master",
            ctx.master_url(p),
            "--secret",
            ctx.secret,
            "--concurrency",
            64,
            "--seconds",
            10,
            "--master-pid",
            m
        ],
    )
    .await?;
    ctx.sup.stop(m);
    Ok(())
}

pub async fn heartbeats(ctx: &Ctx<'_>) -> anyhow::Result<()> {
    let p = ctx.port(1);
    log("2/4 heartbeats: 1000 simulated slaves, 64 connections, 10 s");
    let m = ctx.start_master("master-heartbeats", p).await?;
    ctx.bench_run(
        "heartbeats",
        &args![
            "heartbeats",
            "--master",
            ctx.master_url(p),
            "--secret",
            ctx.secret,
            "--nodes",
            1000,
            "--concurrency",
            64,
            "--seconds",
            10,
            "--master-pid",
            m
        ],
    )
    .await?;
    ctx.sup.stop(m);
    Ok(())
}

/// A master and two slaves: publish → part at the origin, and the edge's lag behind it.
pub async fn latency(ctx: &Ctx<'_>) -> anyhow::Result<()> {
    let p = ctx.port(2);
    let (ha, ra) = (ctx.port(10), ctx.port(20));
    let (hb, rb) = (ctx.port(11), ctx.port(21));
    log("3/4 latency: publish → part at origin, edge lag (30 s)");
    let m = ctx.start_master("master-media", p).await?;
    let sa = ctx.start_slave("slave-a", p, ha, ra, &[]).await?;
    let sb = ctx.start_slave("slave-b", p, hb, rb, &[]).await?;
    ctx.wait_nodes(p, 2).await?;
    let (publish, origin) = ctx.teacher_key(p, "latency").await?;
    let edge = if origin == format!("http://127.0.0.1:{ha}") {
        format!("http://127.0.0.1:{hb}")
    } else {
        format!("http://127.0.0.1:{ha}")
    };
    eprintln!("origin {origin}, edge {edge}");
    ctx.bench_run(
        "latency",
        &args![
            "latency",
            "--publish",
            publish,
            "--origin",
            origin,
            "--edge",
            edge,
            "--secret",
            ctx.secret,
            "--flv",
            path_str(&ctx.flv),
            "--seconds",
            30,
            "--dump",
            path_str(&ctx.work.join("latency-parts.csv"))
        ],
    )
    .await?;
    ctx.sup.stop(sa);
    ctx.sup.stop(sb);
    ctx.sup.stop(m);
    Ok(())
}

/// `NAME?key=…` publish names (the part after `<rtmp base>/`) of `n` streams `prefix0…`.
pub async fn keys(
    ctx: &Ctx<'_>,
    master_port: u16,
    rtmp_port: u16,
    prefix: &str,
    n: usize,
) -> anyhow::Result<String> {
    let base = format!("rtmp://127.0.0.1:{rtmp_port}/live/");
    let mut out = Vec::new();
    for i in 0..n {
        let (url, _) = ctx
            .teacher_key(master_port, &format!("{prefix}{i}"))
            .await?;
        out.push(url.strip_prefix(&base).unwrap_or(&url).to_string());
    }
    Ok(out.join(","))
}

fn ingest_args(label: &str, pids: &str, base: &str, k: usize, flv: &str) -> Vec<String> {
    args![
        "ingest-cpu",
        "--label",
        label,
        "--pid",
        pids,
        "--publish-base",
        base,
        "--streams",
        k
    ]
    .into_iter()
    .chain(args!["--flv", flv, "--seconds", 30])
    .collect()
}

/// Ingest CPU: classcast (a master and a fresh slave per run, nothing pulls from it), then
/// nginx-rtmp and xiu ingesting the same streams when enabled.
pub async fn ingest(ctx: &Ctx<'_>) -> anyhow::Result<()> {
    let p = ctx.port(3);
    let (hc, rc) = (ctx.port(12), ctx.port(22));
    let flv = path_str(&ctx.flv);
    log("4/4 ingest CPU: 1 and 4 publishers into one slave, 30 s each");
    let m = ctx.start_master("master-ingest", p).await?;
    for k in [1, 4] {
        let s = ctx.start_slave("slave-c", p, hc, rc, &[]).await?;
        ctx.wait_nodes(p, 1).await?;
        let base = format!("rtmp://127.0.0.1:{rc}/live");
        let mut a = ingest_args("classcast", &s.to_string(), &base, k, &flv);
        a.extend(args![
            "--keys",
            keys(ctx, p, rc, &format!("ingest{k}-"), k).await?
        ]);
        ctx.bench_run("ingest-cpu classcast", &a).await?;
        ctx.sup.stop(s);
    }
    ctx.sup.stop(m);

    if ctx.nginx {
        let rn = ctx.port(30);
        // Relaying only (`live on`), then packaging HLS (1 s fragments to tmpfs, so no disk is
        // measured): the reference a school would pick instead of classcast for HLS.
        let relay = ctx.work.join("nginx");
        let hls = std::path::PathBuf::from(format!(
            "/dev/shm/classcast-bench-nginx-hls-{}",
            std::process::id()
        ));
        let runs = [
            ("nginx-rtmp", "", ctx.nginx_rtmp_conf(&relay, rn), &relay),
            (
                "nginx-rtmp-hls",
                " with `hls on` (1 s fragments to tmpfs)",
                ctx.nginx_hls_conf(&hls, rn, ctx.port(31)),
                &hls,
            ),
        ];
        for (label, what, conf, dir) in runs {
            log(&format!(
                "4b ingest CPU reference: nginx-rtmp{what}, 1 and 4 publishers, 30 s each"
            ));
            for k in [1, 4] {
                let n = ctx.spawn_nginx(label, dir, &conf)?;
                ctx.wait_ports(n, &dir.join("logs/error.log"), &[rn])
                    .await?;
                let mut pids = vec![n];
                pids.extend(children(n));
                let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
                let base = format!("rtmp://127.0.0.1:{rn}/live");
                let a = ingest_args(label, &pids.join(","), &base, k, &flv);
                ctx.bench_run(&format!("ingest-cpu {label}"), &a).await?;
                ctx.sup.stop(n);
            }
        }
        let _ = std::fs::remove_dir_all(&hls);
    }

    if ctx.xiu.is_some() {
        let (rx, hx) = (ctx.port(34), ctx.port(35));
        log("4c ingest CPU peer: xiu with HLS (1 s segments), 1 and 4 publishers, 30 s each");
        for k in [1, 4] {
            let dir = ctx.work.join(format!("xiu-ingest-{k}"));
            ctx.write_xiu_conf(&dir, rx, hx, None)?;
            let x = ctx.start_xiu(&dir, &[rx, hx]).await?;
            let base = format!("rtmp://127.0.0.1:{rx}/live");
            let a = ingest_args("xiu", &x.to_string(), &base, k, &flv);
            ctx.bench_run("ingest-cpu xiu", &a).await?;
            ctx.sup.stop(x);
            // It packaged HLS all along (it logs each segment; the files go when the publishers
            // stop).
            let segs = std::fs::read_to_string(dir.join("xiu.log"))
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("on_hls success"))
                .count();
            eprintln!("xiu wrote {segs} HLS segments");
        }
    }
    Ok(())
}
