//! Control-plane benchmarks against the master: token issuing and heartbeat ingestion.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use common::api::{Heartbeat, NodeStats, RegisterRequest, StreamReport};
use serde::Serialize;

use crate::http::{RawConn, socket_addr};
use crate::stats::{Summary, cpu_seconds, round1, self_cpu_seconds, system_busy_seconds};

/// CPU used by the master and by this process over a run.
#[derive(Debug, Clone, Serialize)]
pub struct CpuSplit {
    /// Master process CPU seconds over the measured window (None without `--master-pid`).
    pub master_cpu_s: Option<f64>,
    /// This load generator's CPU seconds over the same window.
    pub generator_cpu_s: f64,
    /// Everything else on the machine over the same window (other processes, kernel): should
    /// be near 0 on a quiet machine.
    pub other_cpu_s: f64,
    pub wall_s: f64,
}

impl CpuSplit {
    fn line(&self) -> String {
        let pct = |c: f64| c / self.wall_s * 100.0;
        match self.master_cpu_s {
            Some(m) => format!(
                "CPU over the run: master {:.0} % of a core, load generator {:.0} %, everything else {:.0} % (2 cores = 200 %)",
                pct(m),
                pct(self.generator_cpu_s),
                pct(self.other_cpu_s)
            ),
            None => format!(
                "CPU over the run: load generator {:.0} % of a core, everything else (master included) {:.0} %",
                pct(self.generator_cpu_s),
                pct(self.other_cpu_s)
            ),
        }
    }
}

struct CpuMeter {
    pid: Option<u32>,
    master0: Option<f64>,
    self0: f64,
    sys0: f64,
    t0: Instant,
}

impl CpuMeter {
    fn start(pid: Option<u32>) -> Self {
        Self {
            pid,
            master0: pid.and_then(|p| cpu_seconds(p).ok()),
            self0: self_cpu_seconds(),
            sys0: system_busy_seconds(),
            t0: Instant::now(),
        }
    }
    fn stop(&self) -> CpuSplit {
        let master = match (self.pid, self.master0) {
            (Some(p), Some(m0)) => cpu_seconds(p).ok().map(|m1| round1_cs(m1 - m0)),
            _ => None,
        };
        let generator = self_cpu_seconds() - self.self0;
        let system = system_busy_seconds() - self.sys0;
        CpuSplit {
            master_cpu_s: master,
            generator_cpu_s: round1_cs(generator),
            other_cpu_s: round1_cs((system - generator - master.unwrap_or(0.0)).max(0.0)),
            wall_s: self.t0.elapsed().as_secs_f64(),
        }
    }
}

fn round1_cs(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn bearer(secret: &str) -> String {
    format!("Bearer {secret}")
}

fn fake_node(prefix: &str, i: usize, max_connections: u32) -> RegisterRequest {
    // Loopback addresses on ports nothing listens on: the master never calls a fake node
    // unless a stream is announced, which these benchmarks never do.
    RegisterRequest {
        node_id: format!("{prefix}-{i:04}"),
        node_name: format!("{prefix} {i}"),
        public_url: format!("http://127.0.0.1:{}", 20_000 + (i % 10_000)),
        rtmp_url: format!("rtmp://127.0.0.1:{}/live", 30_000 + (i % 10_000)),
        max_connections,
        version: "bench".into(),
        internal_url: None,
    }
}

async fn post_json(
    conn: &mut RawConn,
    path: &str,
    auth: &str,
    body: &[u8],
) -> anyhow::Result<(u16, Vec<u8>)> {
    let r = conn
        .request("POST", path, &[("authorization", auth)], Some(body))
        .await?;
    Ok((r.status, r.body.to_vec()))
}

// ---------------------------------------------------------------------------------------------
// tokens

pub struct TokensArgs {
    pub master: String,
    pub secret: String,
    pub concurrency: usize,
    pub seconds: f64,
    pub nodes: usize,
    pub master_pid: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct TokensResult {
    pub bench: &'static str,
    pub concurrency: usize,
    pub seconds: f64,
    pub tokens: u64,
    pub tokens_per_sec: f64,
    pub errors: u64,
    pub latency: Summary,
    /// Tokens per fake node, as the responses named them.
    pub spread: BTreeMap<String, u64>,
    /// (max − min) / mean of the spread, in %.
    pub spread_imbalance_pct: f64,
    pub cpu: CpuSplit,
    /// Tokens per CPU-second of the master: its cost per token, whatever else runs.
    pub tokens_per_master_cpu_s: Option<f64>,
    pub goal_tokens_per_sec: f64,
}

fn heartbeat_body(node_id: &str, streams: Vec<StreamReport>, connections: u32) -> Vec<u8> {
    serde_json::to_vec(&Heartbeat {
        node_id: node_id.to_string(),
        stats: NodeStats {
            connections,
            cpu: 12.5,
            memory: 30.0,
            egress_bytes_per_sec: 0,
            ingest_bytes_per_sec: 0,
            streams,
            ..Default::default()
        },
    })
    .expect("serializable")
}

pub async fn tokens(a: TokensArgs) -> anyhow::Result<TokensResult> {
    let addr = socket_addr(&a.master)?;
    let auth = bearer(&a.secret);
    let mut ctl = RawConn::new(addr);
    let nodes: Vec<RegisterRequest> = (0..a.nodes)
        .map(|i| fake_node("bench-tok", i, 10_000_000))
        .collect();
    for n in &nodes {
        let (s, b) = post_json(
            &mut ctl,
            "/cluster/register",
            &auth,
            &serde_json::to_vec(n)?,
        )
        .await?;
        if s != 200 {
            bail!(
                "register {} → {s}: {}",
                n.node_id,
                String::from_utf8_lossy(&b)
            );
        }
    }
    let hb_bodies: Vec<Vec<u8>> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            heartbeat_body(
                &n.node_id,
                vec![StreamReport {
                    path: "live/bench".into(),
                    origin: i == 0,
                    upstream: (i != 0).then(|| nodes[0].node_id.clone()),
                    bframes: false,
                    hls_only_codec: false,
                    publisher: String::new(),
                }],
                0,
            )
        })
        .collect();
    for b in &hb_bodies {
        let (s, body) = post_json(&mut ctl, "/cluster/stats", &auth, b).await?;
        if s != 200 {
            bail!("heartbeat → {s}: {}", String::from_utf8_lossy(&body));
        }
    }
    // Keep the fake nodes online (and their pending counts fresh) during the run.
    let stop = Arc::new(AtomicBool::new(false));
    let hb_task = {
        let stop = stop.clone();
        let auth = auth.clone();
        tokio::spawn(async move {
            let mut c = RawConn::new(addr);
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                for b in &hb_bodies {
                    if let Err(e) = post_json(&mut c, "/cluster/stats", &auth, b).await {
                        eprintln!("heartbeat failed: {e}");
                    }
                }
            }
        })
    };
    // The stream must be routable before the clock starts.
    let probe = br#"{"role":"student","user_id":"probe","stream":"bench"}"#;
    let mut ok = false;
    for _ in 0..50 {
        let r = ctl.request("POST", "/api/token", &[], Some(probe)).await?;
        if r.status == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !ok {
        bail!("students cannot get a token for live/bench: is the master fresh?");
    }

    let counter = Arc::new(AtomicU64::new(0));
    let node_ids: Arc<Vec<String>> = Arc::new(nodes.iter().map(|n| n.node_id.clone()).collect());
    // One second of warm-up on the same connections, not counted.
    let warmup = Duration::from_secs(1);
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + Duration::from_secs_f64(a.seconds);
    let mut workers = Vec::new();
    for _ in 0..a.concurrency {
        let counter = counter.clone();
        let node_ids = node_ids.clone();
        workers.push(tokio::spawn(async move {
            let mut conn = RawConn::new(addr);
            let mut lat: Vec<f64> = Vec::with_capacity(1 << 14);
            let mut per_node = vec![0u64; node_ids.len()];
            let mut errors = 0u64;
            let mut printed = 0u32;
            let mut body = Vec::with_capacity(96);
            loop {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                let i = counter.fetch_add(1, Ordering::Relaxed);
                body.clear();
                body.extend_from_slice(br#"{"role":"student","user_id":"u"#);
                body.extend_from_slice(i.to_string().as_bytes());
                body.extend_from_slice(br#"","stream":"bench"}"#);
                let t = Instant::now();
                let res = conn.request("POST", "/api/token", &[], Some(&body)).await;
                let dt = t.elapsed();
                let counted = t >= measure_from && t < end;
                match res {
                    Ok(r) if r.status == 200 => {
                        if counted {
                            lat.push(dt.as_secs_f64() * 1000.0);
                            if let Some(k) = node_of(r.body, &node_ids) {
                                per_node[k] += 1;
                            }
                        }
                    }
                    Ok(r) => {
                        if counted {
                            errors += 1;
                        }
                        printed += 1;
                        if printed <= 3 {
                            eprintln!(
                                "token request → {}: {}",
                                r.status,
                                String::from_utf8_lossy(r.body)
                            );
                        }
                    }
                    Err(e) => {
                        if counted {
                            errors += 1;
                        }
                        printed += 1;
                        if printed <= 3 {
                            eprintln!("token request failed: {e}");
                        }
                    }
                }
            }
            (lat, per_node, errors)
        }));
    }
    // CPU is measured over the counted window only.
    tokio::time::sleep_until(measure_from.into()).await;
    let meter = CpuMeter::start(a.master_pid);
    tokio::time::sleep_until(end.into()).await;
    let cpu = meter.stop();
    let mut lat = Vec::new();
    let mut per_node = vec![0u64; node_ids.len()];
    let mut errors = 0;
    for w in workers {
        let (l, p, e) = w.await?;
        lat.extend(l);
        for (a, b) in per_node.iter_mut().zip(p) {
            *a += b;
        }
        errors += e;
    }
    stop.store(true, Ordering::Relaxed);
    hb_task.abort();
    let n = lat.len() as u64;
    let per_cpu = cpu
        .master_cpu_s
        .filter(|c| *c > 0.0)
        .map(|c| (n as f64 / c).round());
    let spread: BTreeMap<String, u64> = node_ids.iter().cloned().zip(per_node.clone()).collect();
    let mean = n as f64 / node_ids.len().max(1) as f64;
    let imbalance = if mean > 0.0 {
        let max = *per_node.iter().max().unwrap_or(&0) as f64;
        let min = *per_node.iter().min().unwrap_or(&0) as f64;
        (max - min) / mean * 100.0
    } else {
        0.0
    };
    Ok(TokensResult {
        bench: "tokens",
        concurrency: a.concurrency,
        seconds: a.seconds,
        tokens: n,
        tokens_per_sec: round1(n as f64 / a.seconds),
        errors,
        latency: Summary::of_ms(lat),
        spread,
        spread_imbalance_pct: (imbalance * 100.0).round() / 100.0,
        cpu,
        tokens_per_master_cpu_s: per_cpu,
        goal_tokens_per_sec: 20_000.0,
    })
}

/// Which of `ids` the `"node_id":"…"` field of a token response names.
fn node_of(body: &[u8], ids: &[String]) -> Option<usize> {
    const KEY: &[u8] = br#""node_id":""#;
    let at = body.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let rest = &body[at..];
    let end = rest.iter().position(|b| *b == b'"')?;
    let id = &rest[..end];
    ids.iter().position(|n| n.as_bytes() == id)
}

pub fn print_tokens(r: &TokensResult) {
    println!(
        "== tokens: POST /api/token, {} keep-alive connections, {} s ==",
        r.concurrency, r.seconds
    );
    println!(
        "  {} tokens, {:.0} tokens/s (goal ≥ {:.0}), errors {}",
        r.tokens, r.tokens_per_sec, r.goal_tokens_per_sec, r.errors
    );
    println!("  latency: {}", r.latency.line());
    let spread: Vec<String> = r.spread.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!(
        "  spread: {} (max−min = {:.2} % of the mean)",
        spread.join(" "),
        r.spread_imbalance_pct
    );
    println!("  {}", r.cpu.line());
    if let Some(p) = r.tokens_per_master_cpu_s {
        println!(
            "  master cost: {:.0} tokens per CPU-second ({:.1} µs of master CPU per token)",
            p,
            1e6 / p
        );
    }
    println!("  note: the load generator runs on the same 2 cores as the master.");
}

// ---------------------------------------------------------------------------------------------
// heartbeats

pub struct HeartbeatsArgs {
    pub master: String,
    pub secret: String,
    pub nodes: usize,
    pub concurrency: usize,
    pub seconds: f64,
    pub master_pid: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct HeartbeatsResult {
    pub bench: &'static str,
    pub nodes: usize,
    pub concurrency: usize,
    pub seconds: f64,
    pub registrations_per_sec: f64,
    pub heartbeats: u64,
    pub heartbeats_per_sec: f64,
    pub errors: u64,
    pub latency: Summary,
    /// GET /cluster/nodes, sequential, while the heartbeat load runs.
    pub nodes_view_under_load: Summary,
    /// GET /cluster/nodes, sequential, with the master idle.
    pub nodes_view_idle: Summary,
    pub nodes_view_bytes: usize,
    pub nodes_view_total_nodes: u64,
    /// What 1000 real slaves send at the default 5 s interval.
    pub real_load_per_sec: f64,
    pub cpu: CpuSplit,
    /// Heartbeats per CPU-second of the master.
    pub heartbeats_per_master_cpu_s: Option<f64>,
}

fn sim_heartbeat(node_id: &str, i: usize) -> Vec<u8> {
    // Realistic content: a few hundred viewers and one or two streams per node.
    let room = format!("live/room{}", i % 50);
    let mut streams = vec![StreamReport {
        path: room,
        origin: i.is_multiple_of(20),
        upstream: (!i.is_multiple_of(20)).then(|| "sim-0000".to_string()),
        bframes: false,
        hls_only_codec: false,
        publisher: String::new(),
    }];
    if i.is_multiple_of(3) {
        streams.push(StreamReport {
            path: format!("live/extra{}", i % 7),
            origin: false,
            upstream: Some("sim-0001".into()),
            bframes: false,
            hls_only_codec: false,
            publisher: String::new(),
        });
    }
    heartbeat_body(node_id, streams, (i * 37 % 400) as u32)
}

async fn get_nodes(conn: &mut RawConn) -> anyhow::Result<(Duration, usize, u64)> {
    let t = Instant::now();
    let r = conn.request("GET", "/cluster/nodes", &[], None).await?;
    let dt = t.elapsed();
    if r.status != 200 {
        bail!("GET /cluster/nodes → {}", r.status);
    }
    let total = serde_json::from_slice::<serde_json::Value>(r.body)
        .ok()
        .and_then(|v| v.get("total_nodes").and_then(|n| n.as_u64()))
        .unwrap_or(0);
    Ok((dt, r.body.len(), total))
}

pub async fn heartbeats(a: HeartbeatsArgs) -> anyhow::Result<HeartbeatsResult> {
    let addr = socket_addr(&a.master)?;
    let auth: Arc<str> = bearer(&a.secret).into();
    let nodes: Arc<Vec<RegisterRequest>> =
        Arc::new((0..a.nodes).map(|i| fake_node("sim", i, 500)).collect());
    // Register every node, `concurrency` at a time.
    let t_reg = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut regs = Vec::new();
    for _ in 0..a.concurrency.min(a.nodes).max(1) {
        let (nodes, next, auth) = (nodes.clone(), next.clone(), auth.clone());
        regs.push(tokio::spawn(async move {
            let mut c = RawConn::new(addr);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(n) = nodes.get(i) else { break };
                let (s, b) =
                    post_json(&mut c, "/cluster/register", &auth, &serde_json::to_vec(n)?).await?;
                if s != 200 {
                    bail!(
                        "register {} → {s}: {}",
                        n.node_id,
                        String::from_utf8_lossy(&b)
                    );
                }
            }
            anyhow::Ok(())
        }));
    }
    for r in regs {
        r.await??;
    }
    let reg_rate = a.nodes as f64 / t_reg.elapsed().as_secs_f64();
    let bodies: Arc<Vec<Vec<u8>>> = Arc::new(
        nodes
            .iter()
            .enumerate()
            .map(|(i, n)| sim_heartbeat(&n.node_id, i))
            .collect(),
    );

    let warmup = Duration::from_secs(1);
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + Duration::from_secs_f64(a.seconds);
    let counter = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..a.concurrency {
        let (bodies, counter, auth) = (bodies.clone(), counter.clone(), auth.clone());
        workers.push(tokio::spawn(async move {
            let mut c = RawConn::new(addr);
            let mut lat = Vec::with_capacity(1 << 14);
            let mut errors = 0u64;
            let mut printed = 0u32;
            let hdr = [("authorization", &*auth)];
            loop {
                if Instant::now() >= end {
                    break;
                }
                let i = counter.fetch_add(1, Ordering::Relaxed) as usize % bodies.len();
                let t = Instant::now();
                let res = c
                    .request("POST", "/cluster/stats", &hdr, Some(&bodies[i]))
                    .await;
                let dt = t.elapsed();
                let counted = t >= measure_from && t < end;
                match res {
                    Ok(r) if r.status == 200 => {
                        if counted {
                            lat.push(dt.as_secs_f64() * 1000.0);
                        }
                    }
                    Ok(r) => {
                        if counted {
                            errors += 1;
                        }
                        printed += 1;
                        if printed <= 3 {
                            eprintln!(
                                "heartbeat → {}: {}",
                                r.status,
                                String::from_utf8_lossy(r.body)
                            );
                        }
                    }
                    Err(e) => {
                        if counted {
                            errors += 1;
                        }
                        printed += 1;
                        if printed <= 3 {
                            eprintln!("heartbeat failed: {e}");
                        }
                    }
                }
            }
            (lat, errors)
        }));
    }
    // The cluster view, read by an operator's dashboard while the heartbeats pour in.
    let poller = tokio::spawn(async move {
        let mut c = RawConn::new(addr);
        let mut lat = Vec::new();
        tokio::time::sleep_until(measure_from.into()).await;
        while Instant::now() < end {
            if let Ok((dt, _, _)) = get_nodes(&mut c).await {
                lat.push(dt);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        lat
    });
    tokio::time::sleep_until(measure_from.into()).await;
    let meter = CpuMeter::start(a.master_pid);
    tokio::time::sleep_until(end.into()).await;
    let cpu = meter.stop();
    let mut lat = Vec::new();
    let mut errors = 0;
    for w in workers {
        let (l, e) = w.await?;
        lat.extend(l);
        errors += e;
    }
    let under_load = poller.await?;
    let mut c = RawConn::new(addr);
    let mut idle = Vec::new();
    let mut bytes = 0;
    let mut total = 0;
    for _ in 0..50 {
        let (dt, b, t) = get_nodes(&mut c).await.context("GET /cluster/nodes")?;
        idle.push(dt);
        bytes = b;
        total = t;
    }
    let n = lat.len() as u64;
    let per_cpu = cpu
        .master_cpu_s
        .filter(|c| *c > 0.0)
        .map(|c| (n as f64 / c).round());
    Ok(HeartbeatsResult {
        bench: "heartbeats",
        nodes: a.nodes,
        concurrency: a.concurrency,
        seconds: a.seconds,
        registrations_per_sec: round1(reg_rate),
        heartbeats: n,
        heartbeats_per_sec: round1(n as f64 / a.seconds),
        errors,
        latency: Summary::of_ms(lat),
        nodes_view_under_load: Summary::of_durations(&under_load),
        nodes_view_idle: Summary::of_durations(&idle),
        nodes_view_bytes: bytes,
        nodes_view_total_nodes: total,
        real_load_per_sec: a.nodes as f64 / 5.0,
        cpu,
        heartbeats_per_master_cpu_s: per_cpu,
    })
}

pub fn print_heartbeats(r: &HeartbeatsResult) {
    println!(
        "== heartbeats: {} simulated slaves, POST /cluster/stats round-robin, {} connections, {} s ==",
        r.nodes, r.concurrency, r.seconds
    );
    println!(
        "  registration: {:.0} registrations/s",
        r.registrations_per_sec
    );
    println!(
        "  {} heartbeats, {:.0} heartbeats/s, errors {} (real load: {} nodes / 5 s = {:.0}/s, {:.0}× headroom)",
        r.heartbeats,
        r.heartbeats_per_sec,
        r.errors,
        r.nodes,
        r.real_load_per_sec,
        r.heartbeats_per_sec / r.real_load_per_sec.max(1.0)
    );
    println!("  latency: {}", r.latency.line());
    println!(
        "  GET /cluster/nodes ({} nodes, {} KiB): idle {}",
        r.nodes_view_total_nodes,
        r.nodes_view_bytes / 1024,
        r.nodes_view_idle.line()
    );
    println!(
        "    under heartbeat load: {}",
        r.nodes_view_under_load.line()
    );
    println!("  {}", r.cpu.line());
    println!("  note: the load generator runs on the same 2 cores as the master.");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_from_responses() {
        let ids = vec!["a-1".to_string(), "a-2".to_string()];
        assert_eq!(
            node_of(br#"{"token":"x","node_id":"a-2","n":1}"#, &ids),
            Some(1)
        );
        assert_eq!(node_of(br#"{"token":"x"}"#, &ids), None);
    }
}
