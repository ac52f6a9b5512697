//! Section 11: WebRTC viewers per slave. One slave, one 1.5 Mbit/s stream (360p30 at 1,400
//! kbit/s + 96 kbit/s AAC), then `classcast-bench whep-viewers` at each step of WEBRTC_STEPS;
//! first the slave's CPU with no viewer, so that one viewer's step shows the transcoder's cost.

use std::io::Write as _;
use std::time::Duration;

use super::procs;
use super::sample::small_media;
use super::{Ctx, log};
use crate::args;

pub async fn run(ctx: &Ctx<'_>) -> anyhow::Result<()> {
    let steps = ctx.args.webrtc_steps.clone();
    log(&format!(
        "11 WebRTC viewers: {steps} WHEP clients on one slave"
    ));
    let p = ctx.port(41);
    ctx.start_master("master-webrtc", p).await?;
    let (h, r) = (ctx.port(42), ctx.port(43));
    // The cap lifted, so the steps measure what the slave can feed past its default of 150.
    let s = ctx
        .start_slave(
            "slave-webrtc",
            p,
            h,
            r,
            &args!["--max-webrtc-viewers", 5000],
        )
        .await?;
    ctx.wait_nodes(p, 1).await?;
    let small = small_media(ctx).await?;
    let publisher = super::serving::publish_loop(ctx, p, "rtc", &small).await?;
    ctx.viewer_url(p, "rtc").await?;
    procs::sleep(Duration::from_secs(3)).await?;

    // The slave with its publisher and no viewer: what every step is compared with.
    let c0 = crate::stats::cpu_seconds(s)?;
    let t0 = std::time::Instant::now();
    procs::sleep(Duration::from_secs(10)).await?;
    let idle = (crate::stats::cpu_seconds(s)? - c0) / t0.elapsed().as_secs_f64() * 100.0;
    let line = serde_json::json!({"bench": "webrtc_baseline", "server_cpu_pct": crate::stats::round1(idle)});
    writeln!(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&ctx.results)?,
        "{line}"
    )?;

    for n in steps
        .split(',')
        .filter_map(|x| x.trim().parse::<usize>().ok())
    {
        ctx.bench_run(
            "whep-viewers",
            &args![
                "whep-viewers",
                "--master",
                ctx.master_url(p),
                "--stream",
                "rtc",
                "--viewers",
                n,
                "--seconds",
                10,
                "--pid",
                s,
                "--label",
                format!("webrtc:{n}")
            ],
        )
        .await?;
        // The clients are gone; the slave notices their silence (ICE consent) before the next.
        procs::sleep(Duration::from_secs(12)).await?;
    }
    ctx.sup.stop(publisher);
    Ok(())
}
