//! WebRTC viewers per slave: N WHEP clients (str0m, one UDP socket and one task each) play one
//! stream for a while; what each received, what it lost, and the slave's CPU meanwhile.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use str0m::change::SdpAnswer;
use str0m::media::{Direction, MediaKind};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::net::UdpSocket;

pub struct WhepArgs {
    /// Per client: the slave's `/whep/live/NAME` and its own token.
    pub targets: Vec<(String, String)>,
    pub viewers: usize,
    pub seconds: f64,
    /// The slave's PID, for its CPU.
    pub pid: Option<u32>,
    pub label: String,
    /// The clients' address (their host candidate): loopback, or a lab namespace's own.
    pub bind: std::net::IpAddr,
}

#[derive(Debug, Serialize)]
pub struct WhepResult {
    pub bench: &'static str,
    pub label: String,
    pub viewers: usize,
    pub connected: usize,
    pub seconds: f64,
    /// RTP packets received per viewer per second (median).
    pub packets_per_viewer_s: f64,
    /// Mean of what the clients' receive statistics count as lost (fraction, last report).
    pub loss_mean: f64,
    pub loss_max: f64,
    /// The middle client's: one client starved by its own process (a CI machine's shared
    /// cores) moves the mean, not this.
    pub loss_median: f64,
    pub mbit_s_total: f64,
    pub server_cpu_pct: Option<f64>,
    pub generator_cpu_pct: f64,
}

#[derive(Default)]
struct One {
    connected: bool,
    packets: u64,
    bytes: u64,
    loss: f64,
}

async fn client(
    bind: std::net::IpAddr,
    url: String,
    token: String,
    until: Instant,
    done: Arc<AtomicU64>,
) -> anyhow::Result<One> {
    let sock = UdpSocket::bind((bind, 0)).await?;
    let local = sock.local_addr()?;
    let mut rtc = Rtc::builder()
        .set_stats_interval(Some(Duration::from_secs(1)))
        .build(Instant::now());
    rtc.add_local_candidate(Candidate::host(local, "udp")?);
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
    let (offer, pending) = api.apply().expect("media added");
    let r = reqwest::Client::new()
        .post(&url)
        .bearer_auth(&token)
        .header("content-type", "application/sdp")
        .body(offer.to_sdp_string())
        .send()
        .await?;
    anyhow::ensure!(r.status().as_u16() == 201, "WHEP answered {}", r.status());
    let answer = SdpAnswer::from_sdp_string(&r.text().await?)?;
    rtc.sdp_api().accept_answer(pending, answer)?;
    let mut one = One::default();
    let mut per_mid = std::collections::HashMap::new();
    let mut buf = vec![0u8; 2000];
    while Instant::now() < until && rtc.is_alive() {
        let timeout = loop {
            match rtc.poll_output()? {
                Output::Timeout(t) => break t,
                Output::Transmit(t) => {
                    let _ = sock.try_send_to(&t.contents, t.destination);
                }
                Output::Event(Event::Connected) => one.connected = true,
                Output::Event(Event::MediaIngressStats(s)) => {
                    per_mid.insert(
                        s.mid,
                        (s.packets, s.bytes, f64::from(s.loss.unwrap_or(0.0))),
                    );
                }
                Output::Event(_) => {}
            }
        };
        let wait = timeout.min(until).saturating_duration_since(Instant::now());
        let input = match tokio::time::timeout(wait, sock.recv_from(&mut buf)).await {
            Ok(Ok((n, source))) => Input::Receive(
                Instant::now(),
                Receive {
                    proto: Protocol::Udp,
                    source,
                    destination: local,
                    contents: buf[..n].try_into()?,
                },
            ),
            _ => Input::Timeout(Instant::now()),
        };
        rtc.handle_input(input)?;
    }
    for (p, b, l) in per_mid.values() {
        one.packets += p;
        one.bytes += b;
        one.loss = one.loss.max(*l);
    }
    done.fetch_add(1, Ordering::Relaxed);
    Ok(one)
}

/// `n` student tokens for `stream`, fetched before the clients start (50 requests at a time),
/// each with the WHEP URL of the slave it names.
pub async fn targets(
    master: &str,
    stream: &str,
    n: usize,
) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let batch = (n - out.len()).min(50);
        let got = futures::future::join_all(
            (0..batch).map(|_| crate::util::whep_target(master, stream, None)),
        )
        .await;
        for t in got {
            let (url, token, _) = t?;
            out.push((url, token));
        }
    }
    Ok(out)
}

pub async fn run(a: WhepArgs) -> anyhow::Result<WhepResult> {
    let start = Instant::now();
    // Joins spread over a second, as a class joins; the measured window starts once all have.
    let ramp = Duration::from_millis(1000);
    let until = start + ramp + Duration::from_secs_f64(a.seconds) + Duration::from_secs(2);
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (i, (url, token)) in a.targets.iter().cloned().enumerate().take(a.viewers) {
        let done = done.clone();
        let bind = a.bind;
        let at = start + ramp.mul_f64(i as f64 / a.viewers.max(1) as f64);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            client(bind, url, token, until, done).await
        }));
    }
    // CPU over the measured window only (after the joins and their DTLS handshakes).
    tokio::time::sleep_until((start + ramp + Duration::from_secs(2)).into()).await;
    let (s0, g0, t0) = (
        a.pid.and_then(|p| crate::stats::cpu_seconds(p).ok()),
        crate::stats::self_cpu_seconds(),
        Instant::now(),
    );
    tokio::time::sleep_until(until.into()).await;
    let dt = t0.elapsed().as_secs_f64();
    let s1 = a.pid.and_then(|p| crate::stats::cpu_seconds(p).ok());
    let g1 = crate::stats::self_cpu_seconds();
    let mut ones = Vec::new();
    for t in tasks {
        match t.await? {
            Ok(o) => ones.push(o),
            Err(e) => eprintln!("whep client: {e}"),
        }
    }
    let total = start.elapsed().as_secs_f64() - ramp.as_secs_f64() / 2.0;
    let mut pps: Vec<f64> = ones.iter().map(|o| o.packets as f64 / total).collect();
    pps.sort_by(f64::total_cmp);
    let losses: Vec<f64> = ones.iter().map(|o| o.loss).collect();
    Ok(WhepResult {
        bench: "webrtc_viewers",
        label: a.label,
        viewers: a.viewers,
        connected: ones.iter().filter(|o| o.connected).count(),
        seconds: a.seconds,
        packets_per_viewer_s: crate::stats::round1(pps.get(pps.len() / 2).copied().unwrap_or(0.0)),
        loss_mean: crate::stats::round3(losses.iter().sum::<f64>() / losses.len().max(1) as f64),
        loss_max: crate::stats::round3(losses.iter().copied().fold(0.0, f64::max)),
        loss_median: crate::stats::round3({
            let mut l = losses.clone();
            l.sort_by(f64::total_cmp);
            l.get(l.len() / 2).copied().unwrap_or(0.0)
        }),
        mbit_s_total: crate::stats::round1(
            ones.iter().map(|o| o.bytes as f64).sum::<f64>() * 8.0 / total / 1e6,
        ),
        server_cpu_pct: match (s0, s1) {
            (Some(a), Some(b)) => Some(crate::stats::round1((b - a) / dt * 100.0)),
            _ => None,
        },
        generator_cpu_pct: crate::stats::round1((g1 - g0) / dt * 100.0),
    })
}
