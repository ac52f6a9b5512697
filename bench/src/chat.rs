//! Class messages a slave relays: N students reading the class's messages (Server-Sent Events),
//! posters sending M messages a second in chat mode (so every reader gets every message), for
//! a fixed time. Reports what reached the readers, how late (from the origin taking a message
//! to a reader reading it), and the slave's CPU and memory meanwhile.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};

use crate::stats::{Summary, cpu_seconds, round1, rss_mib};

#[derive(Debug, Serialize)]
pub struct ChatResult {
    pub bench: &'static str,
    pub label: String,
    pub readers: usize,
    pub readers_connected: usize,
    pub rate_per_s: f64,
    pub seconds: f64,
    pub posted: u64,
    pub accepted: u64,
    pub delivered: u64,
    /// accepted × readers: what every reader should have got.
    pub expected: u64,
    pub delivered_per_s: f64,
    pub lag_ms: Summary,
    pub server_cpu_pct: Option<f64>,
    pub server_rss_mib: Option<f64>,
    pub command: String,
}

/// The chat URL and the token response of a new student `user` of `stream`.
async fn student(
    http: &reqwest::Client,
    master: &str,
    stream: &str,
    user: &str,
) -> anyhow::Result<String> {
    let v: Value = http
        .post(format!("{master}/api/token"))
        .json(&json!({"role": "student", "user_id": user, "stream": stream}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let hls = v["hls_url"].as_str().context("no hls_url")?;
    Ok(hls.replace("/index.m3u8?", "/chat?"))
}

#[allow(clippy::too_many_arguments)]
pub async fn run(
    master: &str,
    stream: &str,
    teacher_password: &str,
    readers: usize,
    rate: f64,
    seconds: f64,
    pid: Option<u32>,
    label: String,
) -> anyhow::Result<ChatResult> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(readers + 64)
        .build()?;
    // The teacher opens the class to chat: every reader then gets every message.
    let t: Value = http
        .post(format!("{master}/api/token"))
        .json(&json!({"role": "teacher", "user_id": "teacher", "stream": stream, "credential": teacher_password}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let teacher_chat = t["hls_url"]
        .as_str()
        .context("no hls_url")?
        .replace("/index.m3u8?", "/chat?");
    http.post(teacher_chat.replace("/chat?", "/chat/moderate?"))
        .json(&json!({"mode": "chat"}))
        .send()
        .await?
        .error_for_status()?;

    let names: Vec<String> = (0..readers).map(|i| format!("reader{i}")).collect();
    let urls: Vec<String> = futures::stream::iter(names.iter())
        .map(|n| student(&http, master, stream, n))
        .buffered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let posters_n = ((rate * 3.0).ceil() as usize).max(1);
    let posters: Vec<String> = futures::stream::iter(0..posters_n)
        .map(|i| {
            let http = http.clone();
            async move { student(&http, master, stream, &format!("poster{i}")).await }
        })
        .buffered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;

    let delivered = Arc::new(AtomicU64::new(0));
    let connected = Arc::new(AtomicU64::new(0));
    let lags = Arc::new(std::sync::Mutex::new(Vec::<f64>::new()));
    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for url in urls {
        let (http, delivered, connected, lags, measuring) = (
            http.clone(),
            delivered.clone(),
            connected.clone(),
            lags.clone(),
            measuring.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let Ok(r) = http.get(&url).send().await else {
                return;
            };
            if !r.status().is_success() {
                return;
            }
            connected.fetch_add(1, Ordering::Relaxed);
            let mut body = r.bytes_stream();
            let mut buf = Vec::new();
            while let Some(Ok(chunk)) = body.next().await {
                buf.extend_from_slice(&chunk);
                while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
                    let block: Vec<u8> = buf.drain(..end + 2).collect();
                    for line in block.split(|b| *b == b'\n') {
                        let Some(data) = line.strip_prefix(b"data:") else {
                            continue;
                        };
                        let Ok(e) = serde_json::from_slice::<Value>(data.trim_ascii_start()) else {
                            continue;
                        };
                        if e["type"] != "message" || !measuring.load(Ordering::Relaxed) {
                            continue;
                        }
                        delivered.fetch_add(1, Ordering::Relaxed);
                        let lag = common_now_ms().saturating_sub(e["at_ms"].as_u64().unwrap_or(0));
                        if let Ok(mut l) = lags.lock() {
                            l.push(lag as f64);
                        }
                    }
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while (connected.load(Ordering::Relaxed) as usize) < readers && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let readers_connected = connected.load(Ordering::Relaxed) as usize;

    measuring.store(true, Ordering::Relaxed);
    let c0 = pid.and_then(|p| cpu_seconds(p).ok());
    let t0 = Instant::now();
    let (mut posted, mut accepted) = (0u64, 0u64);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let mut i = 0usize;
    while t0.elapsed().as_secs_f64() < seconds {
        tick.tick().await;
        let url = &posters[i % posters.len()];
        i += 1;
        posted += 1;
        let ok = http
            .post(url)
            .json(&json!({"text": format!("message {i}")}))
            .send()
            .await
            .is_ok_and(|r| r.status().as_u16() == 201);
        accepted += u64::from(ok);
    }
    let elapsed = t0.elapsed().as_secs_f64();
    // What was posted last reaches the readers.
    tokio::time::sleep(Duration::from_secs(2)).await;
    measuring.store(false, Ordering::Relaxed);
    let cpu = match (pid, c0) {
        (Some(p), Some(c0)) => cpu_seconds(p)
            .ok()
            .map(|c| round1((c - c0) / (elapsed + 2.0) * 100.0)),
        _ => None,
    };
    let rss = pid.and_then(|p| rss_mib(p).ok()).map(round1);
    for t in tasks {
        t.abort();
    }
    let delivered = delivered.load(Ordering::Relaxed);
    let lags = std::mem::take(&mut *lags.lock().unwrap());
    Ok(ChatResult {
        bench: "chat_relay",
        label,
        readers,
        readers_connected,
        rate_per_s: rate,
        seconds: round1(elapsed),
        posted,
        accepted,
        delivered,
        expected: accepted * readers_connected as u64,
        delivered_per_s: round1(delivered as f64 / elapsed),
        lag_ms: Summary::of_ms(lags),
        server_cpu_pct: cpu,
        server_rss_mib: rss,
        command: format!(
            "classcast-bench chat-relay --readers {readers} --rate {rate} --seconds {seconds}"
        ),
    })
}

fn common_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn print(r: &ChatResult) {
    eprintln!(
        "chat {}: {} readers ({} connected), {}/s posted ({} accepted), {} delivered of {} ({:.0}/s), lag {}, slave {:?} % CPU, {:?} MiB",
        r.label,
        r.readers,
        r.readers_connected,
        r.rate_per_s,
        r.accepted,
        r.delivered,
        r.expected,
        r.delivered_per_s,
        r.lag_ms.line(),
        r.server_cpu_pct,
        r.server_rss_mib,
    );
}
