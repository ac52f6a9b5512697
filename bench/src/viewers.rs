//! LL-HLS viewers per slave: N simulated players against one slave, ramped in steps.
//!
//! Each viewer does what hls.js does in low-latency mode once it plays at the live edge: a
//! blocking playlist reload for the part after the newest one it knows (`_HLS_msn`/`_HLS_part`,
//! taken from the playlist's `EXT-X-PRELOAD-HINT`), then a GET of the newest listed part, and
//! again. Each viewer has its own token from the master (`POST /api/token` as a student), so
//! every request pays the signature check and the playlist carries that viewer's JWT in every
//! URI, as for a real class. One keep-alive connection per viewer (the two requests alternate).
//!
//! As a reference for a server without blocking reload (static nginx), `--sync-*` runs the same
//! traffic shape on fixed URLs: every viewer is woken by one shared ticker each part interval,
//! as a part's publication wakes every blocked reload at once, and then GETs the playlist and the
//! part. That is the burst an LL-HLS slave has to absorb, so the two figures compare.
//!
//! The non-blocking requests are the part GETs: their latency is what a player waits for
//! media it has been told exists. Blocking reloads are expected to wait ~one part duration and
//! are counted (and checked for errors) but not put in the latency figure.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use tokio::sync::Mutex;

use crate::http::{RawConn, socket_addr};
use crate::stats::{Summary, cpu_seconds, rss_mib, self_cpu_seconds, system_busy_seconds};

pub struct ViewersArgs {
    pub master: String,
    pub slave: String,
    pub stream: String,
    pub steps: Vec<usize>,
    pub seconds: f64,
    pub warmup: f64,
    pub slave_pid: Option<u32>,
    pub goal_p99_ms: f64,
    /// Label of the server under test in the results (`classcast`, `nginx`).
    pub label: String,
    pub sync: Option<SyncArgs>,
    /// The `/metrics` URL of the classcast slave behind the server under test (a cache): each
    /// step then reports how many requests per part reached it.
    pub origin_metrics: Option<String>,
}

/// Synchronized fixed-URL viewers (no tokens, no blocking reload).
#[derive(Clone)]
pub struct SyncArgs {
    /// Path (and query) of the playlist and of the part, on `slave`.
    pub playlist: String,
    pub part: String,
    pub interval: Duration,
}

#[derive(Debug, Serialize)]
pub struct StepResult {
    pub viewers: usize,
    pub seconds: f64,
    pub part_gets: u64,
    pub playlist_gets: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Latency of the part GETs (the non-blocking requests).
    pub part_latency: Summary,
    /// Latency of the blocking playlist reloads (includes the wait for the part).
    pub playlist_latency: Summary,
    pub mean_playlist_kib: f64,
    pub mean_part_kib: f64,
    pub requests_per_viewer_s: f64,
    pub slave_cpu_pct: Option<f64>,
    pub generator_cpu_pct: f64,
    pub other_cpu_pct: f64,
    pub slave_rss_max_mib: Option<f64>,
    /// With `origin_metrics`: part and playlist requests that reached the slave during the
    /// measured seconds, per part it made meanwhile.
    pub origin_part_requests_per_part: Option<f64>,
    pub origin_playlist_requests_per_part: Option<f64>,
    pub ok: bool,
}

/// `(part requests, playlist requests, parts made)` of a classcast slave, from its metrics.
async fn origin_counts(url: &str) -> Option<(f64, f64, f64)> {
    let text = reqwest::get(url).await.ok()?.text().await.ok()?;
    let value = |series: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
    };
    Some((
        value(r#"classcast_slave_http_requests_total{kind="part"}"#)?,
        value(r#"classcast_slave_http_requests_total{kind="playlist"}"#)?,
        value("classcast_slave_parts_total")?,
    ))
}

#[derive(Debug, Serialize)]
pub struct ViewersResult {
    pub bench: &'static str,
    pub label: String,
    /// `ll-hls` (blocking reloads) or `synchronized` (fixed URLs on a shared ticker).
    pub mode: &'static str,
    pub goal_p99_ms: f64,
    pub tokens: &'static str,
    pub steps: Vec<StepResult>,
    /// Largest N with part p99 < goal and 0 errors.
    pub max_ok_viewers: Option<usize>,
    pub requests_per_viewer_s: Option<f64>,
    pub slave_rss_idle_mib: Option<f64>,
}

#[derive(Default)]
struct Counters {
    part_gets: AtomicU64,
    playlist_gets: AtomicU64,
    errors: AtomicU64,
    part_bytes: AtomicU64,
    playlist_bytes: AtomicU64,
}

struct Shared {
    counters: Counters,
    measuring: AtomicBool,
    stop: AtomicBool,
    part_ms: Mutex<Vec<f64>>,
    playlist_ms: Mutex<Vec<f64>>,
    first_error: Mutex<Option<String>>,
}

/// One viewer's latencies, merged into `Shared` when it stops (no lock per request).
#[derive(Default)]
struct Tally {
    part_ms: Vec<f64>,
    playlist_ms: Vec<f64>,
}

impl Tally {
    /// Counts a 200 answer of `len` bytes that took since `t0`, while the step is measured.
    fn ok(&mut self, sh: &Shared, is_part: bool, t0: Instant, len: usize) {
        if !sh.measuring.load(Ordering::Relaxed) {
            return;
        }
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        let c = &sh.counters;
        let (lat, gets, bytes) = if is_part {
            (&mut self.part_ms, &c.part_gets, &c.part_bytes)
        } else {
            (&mut self.playlist_ms, &c.playlist_gets, &c.playlist_bytes)
        };
        lat.push(ms);
        gets.fetch_add(1, Ordering::Relaxed);
        bytes.fetch_add(len as u64, Ordering::Relaxed);
    }

    async fn merge_into(self, sh: &Shared) {
        sh.part_ms.lock().await.extend(self.part_ms);
        sh.playlist_ms.lock().await.extend(self.playlist_ms);
    }
}

impl Shared {
    fn error(&self, e: String) {
        if self.measuring.load(Ordering::Relaxed) {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut f) = self.first_error.try_lock()
                && f.is_none()
            {
                *f = Some(e);
            }
        }
    }
}

/// Student tokens for `stream`, fetched over a few keep-alive connections.
async fn fetch_tokens(master: &str, stream: &str, n: usize) -> anyhow::Result<Vec<String>> {
    let addr = socket_addr(master)?;
    let conns = 16.min(n.max(1));
    let mut tasks = Vec::new();
    for c in 0..conns {
        let stream = stream.to_string();
        tasks.push(tokio::spawn(async move {
            let mut conn = RawConn::new(addr);
            let mut out = Vec::new();
            let mut i = c;
            while i < n {
                let body = format!(r#"{{"role":"student","user_id":"v{i}","stream":"{stream}"}}"#);
                let r = conn
                    .request("POST", "/api/token", &[], Some(body.as_bytes()))
                    .await?;
                if r.status != 200 {
                    bail!(
                        "token {i} → {}: {}",
                        r.status,
                        String::from_utf8_lossy(r.body)
                    );
                }
                let v: serde_json::Value = serde_json::from_slice(r.body)?;
                out.push(v["token"].as_str().context("no token")?.to_string());
                i += conns;
            }
            anyhow::Ok(out)
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(all)
}

/// `(msn, part, uri)` of the last `URI="…partM.P.m4s…"` on a line starting with `prefix`; the
/// URI keeps its query (the media ticket), as a player requests it.
fn last_part<'t>(text: &'t str, prefix: &str) -> Option<(u64, u64, &'t str)> {
    let at = text.rfind(prefix)?;
    let line = text[at..].lines().next()?;
    let u = &line[line.find("URI=\"")? + 5..];
    let uri = u.split('"').next()?;
    let r = uri
        .split('?')
        .next()?
        .strip_prefix("part")?
        .strip_suffix(".m4s")?;
    let (m, p) = r.split_once('.')?;
    Some((m.parse().ok()?, p.parse().ok()?, uri))
}

async fn viewer(addr: std::net::SocketAddr, base: String, token: String, sh: Arc<Shared>) {
    let mut conn = RawConn::new(addr);
    let mut next: Option<(u64, u64)> = None;
    let mut fetched: Option<(u64, u64)> = None;
    let mut tally = Tally::default();
    while !sh.stop.load(Ordering::Relaxed) {
        let path = match next {
            Some((m, p)) => format!("{base}/index.m3u8?jwt={token}&_HLS_msn={m}&_HLS_part={p}"),
            None => format!("{base}/index.m3u8?jwt={token}"),
        };
        let t0 = Instant::now();
        let newest = match conn.request("GET", &path, &[], None).await {
            Ok(r) if r.status == 200 => {
                tally.ok(&sh, false, t0, r.body.len());
                let text = std::str::from_utf8(r.body).unwrap_or("");
                next = last_part(text, "#EXT-X-PRELOAD-HINT:").map(|(m, p, _)| (m, p));
                last_part(text, "#EXT-X-PART:").map(|(m, p, u)| (m, p, format!("{base}/{u}")))
            }
            Ok(r) => {
                sh.error(format!("playlist → {}", r.status));
                next = None;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => {
                sh.error(format!("playlist: {e:#}"));
                next = None;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some((m, p, path)) = newest else { continue };
        if fetched == Some((m, p)) {
            continue;
        }
        fetched = Some((m, p));
        let t0 = Instant::now();
        match conn.request("GET", &path, &[], None).await {
            Ok(r) if r.status == 200 => tally.ok(&sh, true, t0, r.body.len()),
            Ok(r) => sh.error(format!("part{m}.{p} → {}", r.status)),
            Err(e) => sh.error(format!("part{m}.{p}: {e:#}")),
        }
    }
    tally.merge_into(&sh).await;
}

/// A viewer of fixed URLs, woken by the shared ticker (see the module docs).
async fn sync_viewer(
    addr: std::net::SocketAddr,
    sync: SyncArgs,
    mut tick: tokio::sync::watch::Receiver<u64>,
    sh: Arc<Shared>,
) {
    let mut conn = RawConn::new(addr);
    let mut tally = Tally::default();
    while !sh.stop.load(Ordering::Relaxed) {
        if tick.changed().await.is_err() {
            break;
        }
        for (path, is_part) in [(&sync.playlist, false), (&sync.part, true)] {
            let t0 = Instant::now();
            match conn.request("GET", path, &[], None).await {
                Ok(r) if r.status == 200 => tally.ok(&sh, is_part, t0, r.body.len()),
                Ok(r) => sh.error(format!("{path} → {}", r.status)),
                Err(e) => sh.error(format!("{path}: {e:#}")),
            }
        }
    }
    tally.merge_into(&sh).await;
}

async fn step(a: &ViewersArgs, tokens: &[String], n: usize) -> anyhow::Result<StepResult> {
    let addr = socket_addr(&a.slave)?;
    let base = format!("/live/{}", a.stream);
    let sh = Arc::new(Shared {
        counters: Counters::default(),
        measuring: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        part_ms: Mutex::new(Vec::new()),
        playlist_ms: Mutex::new(Vec::new()),
        first_error: Mutex::new(None),
    });
    let mut tasks = Vec::with_capacity(n);
    let (tick_tx, tick_rx) = tokio::sync::watch::channel(0u64);
    let ticker = a.sync.as_ref().map(|s| {
        let every = s.interval;
        tokio::spawn(async move {
            let mut iv = tokio::time::interval(every);
            iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut n = 0u64;
            loop {
                iv.tick().await;
                n += 1;
                if tick_tx.send(n).is_err() {
                    break;
                }
            }
        })
    });
    // Joins spread over ~1 s, as a class arriving.
    let gap = Duration::from_secs_f64(1.0 / n as f64);
    for i in 0..n {
        tasks.push(match &a.sync {
            Some(s) => tokio::spawn(sync_viewer(addr, s.clone(), tick_rx.clone(), sh.clone())),
            None => tokio::spawn(viewer(
                addr,
                base.clone(),
                tokens[i % tokens.len()].clone(),
                sh.clone(),
            )),
        });
        if i % 16 == 15 {
            tokio::time::sleep(gap * 16).await;
        }
    }
    tokio::time::sleep(Duration::from_secs_f64(a.warmup)).await;
    let slave0 = a.slave_pid.and_then(|p| cpu_seconds(p).ok());
    let origin0 = match &a.origin_metrics {
        Some(u) => origin_counts(u).await,
        None => None,
    };
    let self0 = self_cpu_seconds();
    let sys0 = system_busy_seconds();
    let t0 = Instant::now();
    sh.measuring.store(true, Ordering::Relaxed);
    let mut rss_max: Option<f64> = None;
    while t0.elapsed().as_secs_f64() < a.seconds {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if let Some(r) = a.slave_pid.and_then(|p| rss_mib(p).ok()) {
            rss_max = Some(rss_max.map_or(r, |m: f64| m.max(r)));
        }
    }
    sh.measuring.store(false, Ordering::Relaxed);
    let wall = t0.elapsed().as_secs_f64();
    let origin1 = match &a.origin_metrics {
        Some(u) => origin_counts(u).await,
        None => None,
    };
    let per_part = origin0
        .zip(origin1)
        .and_then(|((p0, l0, n0), (p1, l1, n1))| {
            let made = n1 - n0;
            (made > 0.0).then(|| ((p1 - p0) / made, (l1 - l0) / made))
        });
    let slave_cpu = a
        .slave_pid
        .and_then(|p| cpu_seconds(p).ok())
        .zip(slave0)
        .map(|(b, a)| b - a);
    let gen_cpu = self_cpu_seconds() - self0;
    let sys_cpu = system_busy_seconds() - sys0;
    sh.stop.store(true, Ordering::Relaxed);
    if let Some(t) = ticker {
        t.abort();
    }
    drop(tick_rx);
    // Blocked reloads return within a hold time; do not wait for them all.
    let deadline = Instant::now() + Duration::from_secs(5);
    for t in tasks {
        let left = deadline.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, t).await.is_err() {
            break;
        }
    }
    let c = &sh.counters;
    let parts = c.part_gets.load(Ordering::Relaxed);
    let pls = c.playlist_gets.load(Ordering::Relaxed);
    let errors = c.errors.load(Ordering::Relaxed);
    let part_latency = Summary::of_ms(std::mem::take(&mut *sh.part_ms.lock().await));
    let playlist_latency = Summary::of_ms(std::mem::take(&mut *sh.playlist_ms.lock().await));
    let kib = |b: u64, k: u64| {
        if k == 0 {
            0.0
        } else {
            b as f64 / k as f64 / 1024.0
        }
    };
    let pct = |x: f64| (x / wall * 1000.0).round() / 10.0;
    let ok = errors == 0 && part_latency.n > 0 && part_latency.p99_ms < a.goal_p99_ms;
    Ok(StepResult {
        viewers: n,
        seconds: wall,
        part_gets: parts,
        playlist_gets: pls,
        errors,
        first_error: sh.first_error.lock().await.clone(),
        part_latency,
        playlist_latency,
        mean_playlist_kib: kib(c.playlist_bytes.load(Ordering::Relaxed), pls),
        mean_part_kib: kib(c.part_bytes.load(Ordering::Relaxed), parts),
        requests_per_viewer_s: (parts + pls) as f64 / n as f64 / wall,
        slave_cpu_pct: slave_cpu.map(pct),
        generator_cpu_pct: pct(gen_cpu),
        other_cpu_pct: pct(sys_cpu - gen_cpu - slave_cpu.unwrap_or(0.0)),
        slave_rss_max_mib: rss_max,
        origin_part_requests_per_part: per_part.map(|p| crate::stats::round3(p.0)),
        origin_playlist_requests_per_part: per_part.map(|p| crate::stats::round3(p.1)),
        ok,
    })
}

pub async fn run(a: ViewersArgs) -> anyhow::Result<ViewersResult> {
    let max = a.steps.iter().copied().max().unwrap_or(0);
    let rss_idle = a.slave_pid.and_then(|p| rss_mib(p).ok());
    let tokens = if a.sync.is_some() {
        Vec::new()
    } else {
        let t = fetch_tokens(&a.master, &a.stream, max).await?;
        eprintln!("viewers: {} tokens from the master", t.len());
        t
    };
    let mut steps = Vec::new();
    for &n in &a.steps {
        let s = step(&a, &tokens, n).await?;
        print_step(&s);
        let stop = !s.ok && s.part_latency.p99_ms > 4.0 * a.goal_p99_ms;
        steps.push(s);
        if stop {
            eprintln!("viewers: p99 far over the goal; not ramping further");
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let best = steps.iter().filter(|s| s.ok).max_by_key(|s| s.viewers);
    Ok(ViewersResult {
        bench: "viewers",
        label: a.label.clone(),
        mode: if a.sync.is_some() {
            "synchronized"
        } else {
            "ll-hls"
        },
        goal_p99_ms: a.goal_p99_ms,
        tokens: if a.sync.is_some() {
            "fixed URLs, no tokens"
        } else {
            "one student token per viewer (POST /api/token) in its playlist requests; media by the ticket the playlist lists"
        },
        max_ok_viewers: best.map(|s| s.viewers),
        requests_per_viewer_s: best.map(|s| s.requests_per_viewer_s),
        slave_rss_idle_mib: rss_idle,
        steps,
    })
}

pub fn print_step(s: &StepResult) {
    eprintln!(
        "viewers {:>5}: part GET {} | reload p50 {:.0} ms | {} parts, {} reloads, {} errors{} | {:.2} req/viewer/s | playlist {:.1} KiB, part {:.1} KiB | slave CPU {:?} %, gen {:.0} %, other {:.0} %, RSS max {:?} MiB{}",
        s.viewers,
        s.part_latency.line(),
        s.playlist_latency.p50_ms,
        s.part_gets,
        s.playlist_gets,
        s.errors,
        s.first_error
            .as_ref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default(),
        s.requests_per_viewer_s,
        s.mean_playlist_kib,
        s.mean_part_kib,
        s.slave_cpu_pct,
        s.generator_cpu_pct,
        s.other_cpu_pct,
        s.slave_rss_max_mib,
        if s.ok { "  OK" } else { "" }
    );
    if let (Some(p), Some(l)) = (
        s.origin_part_requests_per_part,
        s.origin_playlist_requests_per_part,
    ) {
        eprintln!(
            "               at the slave behind: {p:.2} part and {l:.2} playlist requests per part made"
        );
    }
}

pub fn print(r: &ViewersResult) {
    eprintln!(
        "largest N with part p99 < {} ms and 0 errors: {:?} ({:?} requests/viewer/s)",
        r.goal_p99_ms, r.max_ok_viewers, r.requests_per_viewer_s
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_from_playlist() {
        let t = "#EXT-X-PART:DURATION=0.2,URI=\"part3.1.m4s?t=1.a\"\n#EXT-X-PART:DURATION=0.2,URI=\"part3.2.m4s?t=1.a\"\n#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part3.3.m4s\"\n";
        assert_eq!(
            last_part(t, "#EXT-X-PART:"),
            Some((3, 2, "part3.2.m4s?t=1.a"))
        );
        assert_eq!(
            last_part(t, "#EXT-X-PRELOAD-HINT:"),
            Some((3, 3, "part3.3.m4s"))
        );
    }
}
