//! Ingest CPU: K real-time RTMP publishers into one server process, no viewers; the server's
//! CPU time (utime + stime from `/proc/<pid>/stat`) and RSS over the run.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use crate::rtmp::{PublishLog, Publisher, Target};
use crate::stats::{
    cpu_seconds_sum, rss_mib_sum, self_cpu_seconds, system_busy_seconds, thread_totals_sum,
};

pub struct IngestArgs {
    pub label: String,
    pub pids: Vec<u32>,
    pub publish_base: String,
    pub keys: Vec<String>,
    pub streams: usize,
    pub flv: std::path::PathBuf,
    pub seconds: f64,
    pub settle: f64,
    pub baseline: f64,
    pub metrics_url: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct IngestResult {
    pub bench: &'static str,
    pub server: String,
    pub streams: usize,
    pub seconds: f64,
    /// Server CPU seconds over the measured window.
    pub cpu_s: f64,
    /// Server CPU seconds per second of one stream.
    pub cpu_s_per_stream_s: f64,
    /// The same, in % of one core per stream.
    pub pct_core_per_stream: f64,
    /// Idle server CPU before publishing, % of a core (included in the figures above).
    pub idle_pct_core: f64,
    /// The same from the threads' schedstat (ns resolution), as a cross-check.
    pub pct_core_per_stream_schedstat: f64,
    /// Context switches of the server's threads per stream-second (≈ wake-ups).
    pub switches_per_stream_s: f64,
    /// Per stream, net of the idle figure.
    pub pct_core_per_stream_net: f64,
    /// Measured RTMP bytes sent per stream (chunk headers included), Mbit/s.
    pub ingest_mbps_per_stream: f64,
    pub rss_idle_mib: f64,
    pub rss_max_mib: f64,
    pub rss_end_mib: f64,
    /// At the end, the media the server said it held, by holder (`--metrics-url`), MiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_playlist_mib: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_gop_mib: Option<f64>,
    /// CPU of the Rust publishers (this process), % of a core per stream.
    pub publisher_pct_core_per_stream: f64,
    pub publisher_max_late_ms: f64,
    /// CPU of everything else on the machine over the window, % of a core (should be ~0).
    pub other_pct_core: f64,
    pub goal_pct_core_per_stream: f64,
}

pub async fn run(a: IngestArgs) -> anyhow::Result<IngestResult> {
    anyhow::ensure!(!a.pids.is_empty(), "--pid is required");
    anyhow::ensure!(a.streams > 0, "--streams must be positive");
    let flv = Arc::new(crate::flv::read(&a.flv)?);
    let keys: Vec<String> = (0..a.streams)
        .map(|i| {
            a.keys
                .get(i)
                .cloned()
                .unwrap_or_else(|| format!("bench{i}"))
        })
        .collect();

    // Idle baseline.
    let rss_idle = rss_mib_sum(&a.pids)?;
    let c0 = cpu_seconds_sum(&a.pids)?;
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(a.baseline)).await;
    let idle_pct = (cpu_seconds_sum(&a.pids)? - c0) / t.elapsed().as_secs_f64() * 100.0;

    let mut pubs = Vec::new();
    for k in &keys {
        let url = format!("{}/{k}", a.publish_base.trim_end_matches('/'));
        let target = Target::parse(&url)?;
        let p = Publisher::connect(&target)
            .await
            .with_context(|| format!("publish {}", target.name()))?;
        pubs.push(p);
    }
    let total = Duration::from_secs_f64(a.settle + a.seconds + 1.0);
    let logs: Vec<Arc<PublishLog>> = (0..pubs.len()).map(|_| Arc::default()).collect();
    let mut tasks = Vec::new();
    for (p, log) in pubs.into_iter().zip(&logs) {
        let (flv, log) = (flv.clone(), log.clone());
        tasks.push(tokio::spawn(async move { p.run(&flv, total, &log).await }));
    }
    tokio::time::sleep(Duration::from_secs_f64(a.settle)).await;

    let bytes = || -> u64 { logs.iter().map(|l| l.bytes.load(Ordering::Relaxed)).sum() };
    let th0 = thread_totals_sum(&a.pids)?;
    let (cpu0, self0, sys0, bytes0, t0) = (
        cpu_seconds_sum(&a.pids)?,
        self_cpu_seconds(),
        system_busy_seconds(),
        bytes(),
        Instant::now(),
    );
    let end = t0 + Duration::from_secs_f64(a.seconds);
    let mut rss_max: f64 = 0.0;
    while Instant::now() < end {
        rss_max = rss_max.max(rss_mib_sum(&a.pids)?);
        tokio::time::sleep(Duration::from_millis(250).min(end - Instant::now().min(end))).await;
    }
    let (cpu1, self1, sys1, bytes1, wall) = (
        cpu_seconds_sum(&a.pids)?,
        self_cpu_seconds(),
        system_busy_seconds(),
        bytes(),
        t0.elapsed().as_secs_f64(),
    );
    let th1 = thread_totals_sum(&a.pids)?;
    let rss_end = rss_mib_sum(&a.pids)?;
    rss_max = rss_max.max(rss_end);
    let held = match &a.metrics_url {
        Some(u) => Some(held_mib(u).await?),
        None => None,
    };
    for t in tasks {
        t.await?.context("publisher")?;
    }
    let k = keys.len() as f64;
    let cpu = cpu1 - cpu0;
    let per = cpu / (k * wall);
    let late = logs
        .iter()
        .map(|l| l.max_late_us.load(Ordering::Relaxed))
        .max()
        .unwrap_or(0);
    Ok(IngestResult {
        bench: "ingest_cpu",
        server: a.label,
        streams: keys.len(),
        seconds: a.seconds,
        cpu_s: r3(cpu),
        cpu_s_per_stream_s: r5(per),
        pct_core_per_stream: r3(per * 100.0),
        idle_pct_core: r3(idle_pct),
        pct_core_per_stream_schedstat: r3((th1.0 - th0.0) / (k * wall) * 100.0),
        switches_per_stream_s: (th1.1.saturating_sub(th0.1) as f64 / (k * wall)).round(),
        pct_core_per_stream_net: r3(((cpu / wall * 100.0) - idle_pct).max(0.0) / k),
        ingest_mbps_per_stream: r3((bytes1 - bytes0) as f64 * 8.0 / wall / k / 1e6),
        rss_idle_mib: r3(rss_idle),
        rss_max_mib: r3(rss_max),
        rss_end_mib: r3(rss_end),
        held_playlist_mib: held.map(|h| r3(h.0)),
        held_gop_mib: held.map(|h| r3(h.1)),
        publisher_pct_core_per_stream: r3((self1 - self0) / wall / k * 100.0),
        publisher_max_late_ms: late as f64 / 1000.0,
        other_pct_core: r3(
            ((sys1 - sys0) - (cpu1 - cpu0) - (self1 - self0)).max(0.0) / wall * 100.0,
        ),
        goal_pct_core_per_stream: 1.0,
    })
}

/// `classcast_slave_media_held_bytes` by holder (playlist, gop), in MiB.
async fn held_mib(url: &str) -> anyhow::Result<(f64, f64)> {
    let body = reqwest::get(url).await?.error_for_status()?.text().await?;
    let value = |holder: &str| -> anyhow::Result<f64> {
        let name = format!("classcast_slave_media_held_bytes{{held_by=\"{holder}\"}} ");
        let line = body
            .lines()
            .find_map(|l| l.strip_prefix(&name))
            .with_context(|| format!("{url} has no {name}"))?;
        Ok(line.trim().parse::<f64>()? / 1048576.0)
    };
    Ok((value("playlist")?, value("gop")?))
}

fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn r5(x: f64) -> f64 {
    (x * 100_000.0).round() / 100_000.0
}

pub fn print(r: &IngestResult) {
    println!(
        "== ingest-cpu: {} × RTMP publish into {} for {} s, no viewers ==",
        r.streams, r.server, r.seconds
    );
    println!(
        "  server CPU {:.2} s → {:.5} CPU-s per stream-second = {:.2} % of a core per stream (goal ≤ {:.0} %: {})",
        r.cpu_s,
        r.cpu_s_per_stream_s,
        r.pct_core_per_stream,
        r.goal_pct_core_per_stream,
        crate::latency::verdict(r.pct_core_per_stream <= r.goal_pct_core_per_stream)
    );
    println!(
        "  idle server {:.2} % of a core; net of idle {:.2} % per stream; schedstat cross-check {:.2} % per stream; {:.0} context switches per stream-second",
        r.idle_pct_core,
        r.pct_core_per_stream_net,
        r.pct_core_per_stream_schedstat,
        r.switches_per_stream_s
    );
    println!(
        "  ingest {:.2} Mbit/s per stream (RTMP bytes on the wire); RSS idle {:.1} MiB, max {:.1} MiB, end {:.1} MiB",
        r.ingest_mbps_per_stream, r.rss_idle_mib, r.rss_max_mib, r.rss_end_mib
    );
    println!(
        "  the Rust publishers used {:.2} % of a core per stream (same machine); worst pacing delay {:.1} ms",
        r.publisher_pct_core_per_stream, r.publisher_max_late_ms
    );
    println!(
        "  everything else on the machine used {:.1} % of a core; CPU time resolution is 10 ms (CLK_TCK = 100).",
        r.other_pct_core
    );
}
