//! Issue 16: every connection bounded. Slowloris, floods, hostile RTMP before publish, password
//! guessing, viewer inflation and cross-site browsers, against the real binary with short limits
//! (flags), real sockets and real ffmpeg publishing while the attacks run.

use std::io::{Read, Write};
use std::net::{IpAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::*;

const HEADER_MS: u64 = 2000;
const IDLE_MS: u64 = 4000;
/// Connections per node in the flood test: 400 silent sockets go past it well within the
/// header timeout (which closes silent sockets by itself).
const CAP: usize = 100;

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// The three slow clients: each must be closed at its deadline, not before, not much after.
fn slowloris(port: u16, what: &str, post_path: &str) {
    let slack = Duration::from_millis(1500);
    // A half-sent header.
    let mut s = connect(port);
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").unwrap();
    let t = time_to_close(&mut s, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("{what}: a half header was still open after 10 s"));
    assert!(
        t >= Duration::from_millis(HEADER_MS - 100) && t < Duration::from_millis(HEADER_MS) + slack,
        "{what}: half header closed after {t:?} (header timeout {HEADER_MS} ms)"
    );

    // A header trickled one byte every 200 ms: the deadline is not reset by each byte.
    let mut s = connect(port);
    let t0 = Instant::now();
    let mut closed_at = None;
    for b in b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n" {
        if s.write_all(&[*b]).is_err() {
            closed_at = Some(t0.elapsed());
            break;
        }
        s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let mut buf = [0u8; 512];
        match s.read(&mut buf) {
            Ok(0) => {
                closed_at = Some(t0.elapsed());
                break;
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                closed_at = Some(t0.elapsed());
                break;
            }
        }
    }
    let t = closed_at.unwrap_or_else(|| panic!("{what}: a trickled header was never closed"));
    assert!(
        t < Duration::from_millis(HEADER_MS) + slack,
        "{what}: trickled header closed only after {t:?}"
    );

    // An idle keep-alive connection after one complete request: closed when no new request
    // head arrives within the header timeout.
    let mut s = connect(port);
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).unwrap();
    assert!(
        std::str::from_utf8(&buf[..n])
            .unwrap()
            .starts_with("HTTP/1.1 200"),
        "{what}: /health answered"
    );
    let t = time_to_close(&mut s, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("{what}: an idle keep-alive socket was still open after 10 s"));
    assert!(
        t < Duration::from_millis(HEADER_MS) + slack,
        "{what}: idle keep-alive closed after {t:?}"
    );

    // A request head past the 64 KiB bound: refused (431) or closed, not buffered.
    let mut s = connect(port);
    let big = format!(
        "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(80 * 1024)
    );
    let _ = s.write_all(big.as_bytes());
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut head = [0u8; 64];
    let n = s.read(&mut head).unwrap_or(0);
    let answer = String::from_utf8_lossy(&head[..n]).to_string();
    assert!(
        n == 0 || answer.starts_with("HTTP/1.1 431"),
        "{what}: an 80 KiB head got {answer:?}"
    );

    // A body announced and never sent: closed at the idle timeout (no byte either way).
    let mut s = connect(port);
    // With the cluster secret, so that the handler waits for the body instead of refusing.
    s.write_all(
        format!(
            "POST {post_path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {SECRET}\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
        )
        .as_bytes(),
    )
    .unwrap();
    let t = time_to_close(&mut s, Duration::from_secs(15))
        .unwrap_or_else(|| panic!("{what}: a stalled body was still open after 15 s"));
    assert!(
        t >= Duration::from_millis(IDLE_MS - 200) && t < Duration::from_millis(IDLE_MS) + slack,
        "{what}: stalled body closed after {t:?} (idle timeout {IDLE_MS} ms)"
    );
}

/// Opens `n` sockets that each send part of a request head and then nothing.
fn flood(port: u16, n: usize) -> Vec<TcpStream> {
    let partial = format!(
        "GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: {}",
        "a".repeat(16 * 1024)
    );
    (0..n)
        .filter_map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
            let _ = s.write_all(partial.as_bytes());
            Some(s)
        })
        .collect()
}

async fn metrics(c: &Cluster, base: &str) -> String {
    c.http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// A viewer as a player behaves: playlist with its token, then the newest part by the ticket
/// the playlist lists. Returns the part's (msn, index).
pub async fn view_once(http: &reqwest::Client, hls_url: &str) -> Result<(u64, usize), String> {
    let r = http.get(hls_url).send().await.map_err(|e| e.to_string())?;
    if r.status() != 200 {
        return Err(format!("playlist {}", r.status()));
    }
    let text = r.text().await.map_err(|e| e.to_string())?;
    let (msn, idx) = last_part(&text).ok_or("no part listed")?;
    let uri = text
        .lines()
        .rfind(|l| l.starts_with("#EXT-X-PART:"))
        .and_then(|l| l.split("URI=\"").nth(1)?.split('"').next())
        .ok_or("no part URI")?;
    let base = hls_url.rsplit_once('/').unwrap().0;
    let r = http
        .get(format!("{base}/{uri}"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if r.status() != 200 {
        return Err(format!("part {}", r.status()));
    }
    let b = r.bytes().await.map_err(|e| e.to_string())?;
    if b.len() < 8 || &b[4..8] != b"moof" {
        return Err("part is not a moof".into());
    }
    Ok((msn, idx))
}

/// What a viewer saw: requests that worked, errors, first and last part played.
pub type Viewing = (u32, Vec<String>, Option<(u64, usize)>, Option<(u64, usize)>);

/// A viewer that keeps playing until `stop`.
pub fn keep_viewing(
    http: reqwest::Client,
    url: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Viewing> {
    tokio::spawn(async move {
        let (mut ok, mut errors, mut first, mut last) = (0, Vec::new(), None, None);
        while !stop.load(Ordering::Relaxed) {
            match view_once(&http, &url).await {
                Ok(p) => {
                    ok += 1;
                    first = first.or(Some(p));
                    last = Some(p);
                }
                Err(e) => errors.push(e),
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        (ok, errors, first, last)
    })
}

/// HTTP on both nodes: slowloris, a stalled body, a connection flood past the cap while a real
/// viewer plays, the file descriptor limit, and the parked-request bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_deadlines_connection_cap_and_parked_requests() {
    // The nodes start with a soft limit below the hard one and must raise it.
    let (soft, hard) = halve_soft_fd_limit();
    assert!(
        soft < hard || std::env::var("CI").is_err(),
        "soft and hard descriptor limits are equal ({hard}): the raise cannot be tested"
    );
    let (idle, cap) = (IDLE_MS.to_string(), CAP.to_string());
    let http_flags = [
        "--http-idle-timeout-ms",
        idle.as_str(),
        "--http-max-connections",
        cap.as_str(),
    ];
    let slave_flags = [&http_flags[..], &["--max-parked-requests", "10"]].concat();
    let t = Timings {
        http_header_timeout_ms: HEADER_MS,
        ..Default::default()
    };
    let c = Cluster::start_with("bounds_http", 1, t, &http_flags, &slave_flags).await;
    let slave = c.slave("s1");
    let (master_port, slave_port) = (c.master_port, slave.http_port);

    // Both nodes raised their descriptor limit to the hard one.
    for pid in [c.master.as_ref().unwrap().child.id(), slave.proc.child.id()] {
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap();
        let v: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(v[3], v[4], "soft limit not raised to the hard one: {line}");
    }

    let (sl_master, sl_slave) = (
        tokio::task::spawn_blocking(move || slowloris(master_port, "master", "/cluster/stats")),
        tokio::task::spawn_blocking(move || slowloris(slave_port, "slave", "/internal/mirror")),
    );
    sl_master.await.unwrap();
    sl_slave.await.unwrap();

    // A real stream and a real viewer for the flood.
    let (rtmp, key, _) = c.teacher("flood").await;
    let _publisher = c.publish("publisher", &rtmp, &key, None);
    c.wait_live("flood", 1).await;
    let url = c.student("flood", "viewer").await["hls_url"]
        .as_str()
        .unwrap()
        .to_string();
    view_once(&c.http, &url)
        .await
        .expect("viewer plays before the flood");

    let master_pid = c.master.as_ref().unwrap().child.id();
    let (rss_before, master_rss_before) = (rss_bytes(slave.proc.child.id()), rss_bytes(master_pid));
    let stop = Arc::new(AtomicBool::new(false));
    let viewer = keep_viewing(c.http.clone(), url.clone(), stop.clone());
    // Twice the cap of silent sockets at each node, each holding a 16 KiB partial header.
    let socks = tokio::task::spawn_blocking(move || {
        let mut a = flood(master_port, 400);
        a.extend(flood(slave_port, 400));
        a
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss_flood, master_rss_flood) = (rss_bytes(slave.proc.child.id()), rss_bytes(master_pid));
    let health_ok = Arc::new(AtomicU64::new(0));
    for _ in 0..10 {
        let r = c
            .http
            .get(format!("{}/health", c.master_url()))
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        assert!(
            r.is_ok_and(|r| r.status() == 200),
            "master /health failed during the flood"
        );
        health_ok.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let (ok, errors, first, last) = viewer.await.unwrap();
    drop(socks);
    println!(
        "flood: viewer {ok} ok, errors {errors:?}, {first:?} → {last:?}; slave RSS {} → {} MiB",
        rss_before >> 20,
        rss_flood >> 20
    );
    assert!(
        ok >= 5 && last > first,
        "the viewer stopped during the flood"
    );
    assert!(
        errors.len() <= 1,
        "the viewer saw errors during the flood: {errors:?}"
    );
    assert!(
        rss_flood < rss_before + (48 << 20),
        "400 flood sockets grew the slave by {} MiB",
        (rss_flood - rss_before) >> 20
    );
    assert!(
        master_rss_flood < master_rss_before + (48 << 20),
        "400 flood sockets grew the master by {} MiB",
        master_rss_flood.saturating_sub(master_rss_before) >> 20
    );
    for (base, prefix) in [
        (c.master_url(), "classcast_master"),
        (slave.base(), "classcast_slave"),
    ] {
        let m = metrics(&c, &base).await;
        let evicted = metric_value(
            &m,
            &format!("{prefix}_http_connections_closed_total{{reason=\"evicted_at_cap\"}}"),
        )
        .unwrap_or(0.0);
        assert!(
            evicted >= 150.0,
            "{prefix}: only {evicted} evicted at the cap"
        );
        let open = metric_value(&m, &format!("{prefix}_http_connections")).unwrap();
        assert!(
            open <= CAP as f64,
            "{prefix}: {open} connections open past the cap"
        );
    }

    // Parked blocking requests: past 10, 503 with Retry-After.
    let text = c.http.get(&url).send().await.unwrap().text().await.unwrap();
    let (msn, _) = last_part(&text).unwrap();
    let ahead = format!("{url}&_HLS_msn={}&_HLS_part=0", msn + 2);
    let parked: Vec<_> = (0..16)
        .map(|_| {
            let (http, u) = (c.http.clone(), ahead.clone());
            tokio::spawn(async move {
                let r = http.get(u).send().await.unwrap();
                let retry = r.headers().get("retry-after").cloned();
                (r.status().as_u16(), retry)
            })
        })
        .collect();
    let mut refused = 0;
    for p in parked {
        let (status, retry) = p.await.unwrap();
        if status == 503 {
            refused += 1;
            assert!(retry.is_some(), "503 without Retry-After");
        } else {
            assert_eq!(status, 200);
        }
    }
    assert!(
        (6..=16).contains(&refused),
        "{refused} of 16 blocking requests refused with a bound of 10"
    );
    view_once(&c.http, &url).await.expect("viewer plays after");
}

/// RTMP before publish: one deadline from accept, a small bound on unfinished messages, chunk
/// sizes bounded, a connection cap; a real ffmpeg stream and a viewer carry on throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmp_bounds_before_publish() {
    let c = Cluster::start_with(
        "bounds_rtmp",
        1,
        Timings::default(),
        &[],
        &[
            "--rtmp-publish-timeout-ms",
            "2000",
            "--rtmp-max-connections",
            "50",
        ],
    )
    .await;
    let slave = c.slave("s1");
    let port = slave.rtmp_port;
    let (rtmp, key, _) = c.teacher("rtmp").await;
    let _publisher = c.publish("publisher", &rtmp, &key, None);
    c.wait_live("rtmp", 1).await;
    let url = c.student("rtmp", "viewer").await["hls_url"]
        .as_str()
        .unwrap()
        .to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let viewer = keep_viewing(c.http.clone(), url.clone(), stop.clone());

    // Handshake, then a control message every 300 ms: closed at the publish deadline anyway.
    let t = tokio::task::spawn_blocking(move || {
        let mut s = rtmp_handshake(port);
        let t0 = Instant::now();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let ack = chunk0(2, 0x05, 4, &2_500_000u32.to_be_bytes());
        let mut buf = [0u8; 4096];
        while t0.elapsed() < Duration::from_secs(10) {
            if s.write_all(&ack).is_err() {
                return Some(t0.elapsed());
            }
            match s.read(&mut buf) {
                Ok(0) => return Some(t0.elapsed()),
                Err(e)
                    if !matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Some(t0.elapsed());
                }
                _ => {}
            }
        }
        None
    })
    .await
    .unwrap()
    .expect("control messages kept an unpublished RTMP connection open for 10 s");
    assert!(
        t < Duration::from_millis(3500),
        "unpublished connection closed after {t:?} (deadline 2 s)"
    );

    // A message announcing 200 KiB before any publish: closed at once, before the deadline.
    let t = tokio::task::spawn_blocking(move || {
        let mut s = rtmp_handshake(port);
        s.write_all(&chunk0(3, 0x14, 200 * 1024, &[0x02u8; 128]))
            .unwrap();
        time_to_close(&mut s, Duration::from_secs(5))
    })
    .await
    .unwrap()
    .expect("a 200 KiB unfinished message before publish was not refused");
    assert!(t < Duration::from_millis(1500), "took {t:?}");

    // Set Chunk Size 0x7fffffff: closed at once.
    let t = tokio::task::spawn_blocking(move || {
        let mut s = rtmp_handshake(port);
        s.write_all(&chunk0(2, 0x01, 4, &0x7fff_ffffu32.to_be_bytes()))
            .unwrap();
        time_to_close(&mut s, Duration::from_secs(5))
    })
    .await
    .unwrap()
    .expect("Set Chunk Size 0x7fffffff was accepted");
    assert!(t < Duration::from_millis(1500), "took {t:?}");

    // 300 idle RTMP sockets: past the cap of 50 refused at once, the rest closed at the
    // deadline; the stream and the viewer carry on.
    let rss_before = rss_bytes(slave.proc.child.id());
    let socks: Vec<TcpStream> = tokio::task::spawn_blocking(move || {
        (0..300)
            .filter_map(|_| TcpStream::connect(("127.0.0.1", port)).ok())
            .collect()
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let m = metrics(&c, &slave.base()).await;
    let capped = metric_value(
        &m,
        "classcast_slave_rtmp_refusals_total{reason=\"connection_cap\"}",
    )
    .unwrap_or(0.0);
    assert!(
        capped >= 240.0,
        "only {capped} RTMP connections refused at the cap"
    );
    let ok = wait_until(Duration::from_secs(8), || async {
        let m = metrics(&c, &slave.base()).await;
        metric_value(&m, "classcast_slave_rtmp_connections") == Some(1.0)
    })
    .await;
    assert!(ok, "idle RTMP sockets were not closed at the deadline");
    let rss_after = rss_bytes(slave.proc.child.id());
    drop(socks);
    stop.store(true, Ordering::Relaxed);
    let (ok, errors, first, last) = viewer.await.unwrap();
    assert!(ok >= 10 && last > first, "the viewer stopped: {errors:?}");
    assert!(errors.is_empty(), "the viewer saw errors: {errors:?}");
    assert!(
        rss_after < rss_before + (32 << 20),
        "idle RTMP sockets grew the slave by {} MiB",
        (rss_after.saturating_sub(rss_before)) >> 20
    );
    // The slots came back: a new publisher is accepted.
    let (rtmp2, key2, _) = c.teacher("rtmp2").await;
    let mut p2 = c.publish("publisher2", &rtmp2, &key2, Some(2));
    assert!(
        p2.wait_exit(Duration::from_secs(20)).unwrap().success(),
        "a publisher after the flood"
    );
    let log = slave.proc.log_text();
    assert!(
        log.contains("no accepted publish within"),
        "deadline closes are logged"
    );
    assert!(
        log.contains("peer set chunk size 2147483647"),
        "chunk size refusals are logged"
    );
}

async fn token_from(ip: &str, master: &str, body: Value) -> reqwest::Response {
    reqwest::Client::builder()
        .local_address(ip.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
        .post(format!("{master}/api/token"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// The master's front door: password guessing, viewer inflation, cross-site browsers, monitor
/// tokens, hostile registrations, and the slave's memory of missing streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_inflation_origins_and_cluster_input() {
    // The inflation case mints 2,000 tokens from this one address on top of the rest.
    let c = Cluster::start_with(
        "bounds_front",
        2,
        Timings::default(),
        &["--token-burst-per-addr", "5000"],
        &[],
    )
    .await;
    let master = c.master_url();

    // --- Teacher password guessing from 127.0.0.2: 429 with Retry-After, logged with the
    // address; the right password from 127.0.0.1 works at once.
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..20 {
        let r = token_from(
            "127.0.0.2",
            &master,
            json!({"role":"teacher","user_id":"t","stream":"front","credential":"wrong-password-1"}),
        )
        .await;
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            retry_after = r.headers().get("retry-after").cloned();
        }
    }
    assert_eq!(&statuses[..5], &[401; 5], "{statuses:?}");
    assert!(
        statuses[5..].iter().all(|s| *s == 429),
        "guessing was not throttled: {statuses:?}"
    );
    assert!(retry_after.is_some(), "429 without Retry-After");
    let r = token_from(
        "127.0.0.1",
        &master,
        json!({"role":"teacher","user_id":"t","stream":"front","credential":TEACHER}),
    )
    .await;
    assert_eq!(r.status(), 200, "the right password from another address");
    let log = c.master.as_ref().unwrap().log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("wrong teacher password") && l.contains("127.0.0.2")),
        "refusals are logged with the address"
    );

    // --- Inflation: 2,000 student tokens, one playlist each: no viewer counted, no load.
    let (rtmp, key, _) = c.teacher("front").await;
    let _publisher = c.publish("publisher", &rtmp, &key, None);
    c.wait_live("front", 2).await;
    let limit = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = Vec::new();
    for i in 0..2000 {
        let (http, limit, master) = (c.http.clone(), limit.clone(), master.clone());
        tasks.push(tokio::spawn(async move {
            let _p = limit.acquire_owned().await.unwrap();
            let r = http
                .post(format!("{master}/api/token"))
                .json(&json!({"role":"student","user_id":format!("ghost{i}"),"stream":"front"}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let v: Value = r.json().await.unwrap();
            let r = http
                .get(v["hls_url"].as_str().unwrap())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let counts = |n: &Value| -> Vec<(u64, f64)> {
        n["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| {
                (
                    x["current_connections"].as_u64().unwrap(),
                    x["load_percentage"].as_f64().unwrap(),
                )
            })
            .collect()
    };
    // Two heartbeats later the slaves still report nobody.
    tokio::time::sleep(Duration::from_millis(3 * c.timings.heartbeat_ms)).await;
    let n = c.nodes().await;
    assert!(
        counts(&n)
            .iter()
            .all(|&(conns, load)| conns == 0 && load == 0.0),
        "minted-but-unplayed tokens moved the load: {n}"
    );
    // Three viewers that fetch parts are counted.
    for i in 0..3 {
        let url = c.student("front", &format!("real{i}")).await["hls_url"]
            .as_str()
            .unwrap()
            .to_string();
        view_once(&c.http, &url).await.unwrap();
    }
    let ok = wait_until(Duration::from_secs(5), || async {
        counts(&c.nodes().await).iter().map(|x| x.0).sum::<u64>() == 3
    })
    .await;
    assert!(ok, "playing viewers not counted: {}", c.nodes().await);

    // --- Browsers: no CORS grant for an unlisted origin on the teacher login, the cluster API,
    // the admin view or the slave's internal routes; the pages carry their headers.
    let evil = "http://evil.example";
    for (method, url) in [
        ("OPTIONS", format!("{master}/api/token")),
        ("OPTIONS", format!("{master}/cluster/register")),
        ("OPTIONS", format!("{master}/cluster/nodes")),
        ("GET", format!("{master}/cluster/nodes")),
        ("GET", format!("{master}/admin")),
        ("OPTIONS", format!("{}/internal/mirror", c.slaves[0].base())),
        (
            "OPTIONS",
            format!("{}/live/front/index.m3u8", c.slaves[0].base()),
        ),
    ] {
        let r = c
            .http
            .request(method.parse().unwrap(), &url)
            .header("origin", evil)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
            .await
            .unwrap();
        assert!(
            r.headers().get("access-control-allow-origin").is_none(),
            "{method} {url} granted {evil}"
        );
    }
    // The cluster's own page origin may play from a slave.
    let r = c
        .http
        .request(
            "OPTIONS".parse().unwrap(),
            format!("{}/live/front/index.m3u8", c.slaves[0].base()),
        )
        .header("origin", &master)
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap()),
        Some(master.as_str()),
        "the master's page origin may fetch HLS"
    );
    // A teacher login posted by another site's page is refused even with the right password.
    let r = c
        .http
        .post(format!("{master}/api/token"))
        .header("origin", evil)
        .json(&json!({"role":"teacher","user_id":"t","stream":"front","credential":TEACHER}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "cross-site teacher login");
    for page in ["/", "/teacher", "/admin"] {
        let r = c.http.get(format!("{master}{page}")).send().await.unwrap();
        let h = r.headers();
        let csp = h
            .get("content-security-policy")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        assert!(
            csp.contains("script-src 'self'") && csp.contains("frame-ancestors"),
            "{page}: CSP {csp:?}"
        );
        assert_eq!(h.get("x-content-type-options").unwrap(), "nosniff");
        assert_eq!(h.get("referrer-policy").unwrap(), "no-referrer");
    }

    // --- Monitor tokens need the cluster secret.
    let (code, v) = c
        .token(json!({"role":"monitor","user_id":"m","stream":"nothing"}))
        .await
        .unwrap_err();
    assert_eq!(code, 401, "monitor token without a credential: {v}");
    let mon = c
        .token(json!({"role":"monitor","user_id":"m","stream":"nothing","credential":SECRET}))
        .await
        .expect("monitor token with the cluster secret");

    // --- A stream the cluster lacks: the slave asks the master once a second at most.
    let before = metric_value(
        &metrics(
            &c,
            &format!(
                "http://{}",
                mon["hls_url"].as_str().unwrap().split('/').nth(2).unwrap()
            ),
        )
        .await,
        "classcast_slave_origin_lookups_total",
    )
    .unwrap_or(0.0);
    let t0 = Instant::now();
    for _ in 0..20 {
        let r = c
            .http
            .get(mon["hls_url"].as_str().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
    }
    let slave_base = format!(
        "http://{}",
        mon["hls_url"].as_str().unwrap().split('/').nth(2).unwrap()
    );
    let after = metric_value(
        &metrics(&c, &slave_base).await,
        "classcast_slave_origin_lookups_total",
    )
    .unwrap();
    let allowed = 1.0 + t0.elapsed().as_secs_f64().ceil();
    assert!(
        after - before <= allowed,
        "20 requests for a missing stream asked the master {} times",
        after - before
    );

    // --- Registration input: multi-byte names over the bound, long URLs, bad schemes → 400,
    // and the master keeps serving.
    let register = |body: Value| {
        let (http, master) = (c.http.clone(), master.clone());
        async move {
            http.post(format!("{master}/cluster/register"))
                .bearer_auth(SECRET)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let good = json!({"node_id":"x1","node_name":"X","public_url":"http://x.test:8888",
                      "rtmp_url":"rtmp://x.test:1935/live","max_connections":10,"version":"t"});
    let with = |k: &str, v: Value| {
        let mut b = good.clone();
        b[k] = v;
        b
    };
    for (what, body) in [
        (
            "200-byte multi-byte node_name",
            with("node_name", json!("é".repeat(100).repeat(2))),
        ),
        (
            "an 80-byte version of two-byte characters",
            with("version", json!("ü".repeat(40))),
        ),
        ("a control character", with("node_name", json!("a\u{7}b"))),
        (
            "a 600-byte public_url",
            with(
                "public_url",
                json!(format!("http://x.test/{}", "a".repeat(600))),
            ),
        ),
        (
            "a javascript: URL",
            with("public_url", json!("javascript:alert(1)")),
        ),
    ] {
        assert_eq!(register(body).await, 400, "{what}");
    }
    assert_eq!(register(good).await, 200, "a valid registration");
    assert!(healthy(&c.http, &master).await, "the master keeps serving");
}

/// Per-address token minting limit, the teacher password length, and secrets at rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_rate_limit_password_length_and_secret_files() {
    let dir = log_dir("bounds_master_alone");
    // A master refuses a short teacher password, naming the flag.
    let out = std::process::Command::new(BIN)
        .args(["master", "--bind", "127.0.0.1:0"])
        .args(["--jwt-key-file", dir.join("k0.pem").to_str().unwrap()])
        .env("CLUSTER_SECRET", SECRET)
        .env("TEACHER_PASSWORD", "short-pw")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("TEACHER_PASSWORD") && err.contains("12"),
        "{err}"
    );

    // --generate-secret writes the cluster secret 0600 (and the signing key too).
    let secret_file = dir.join("cluster.secret");
    let key_file = dir.join("k1.pem");
    let _ = std::fs::remove_file(&secret_file);
    let _ = std::fs::remove_file(&key_file);
    let port = free_port();
    let mut m = Proc::spawn(
        "master",
        dir.join("master.log"),
        std::process::Command::new(BIN)
            .args(["master", "--bind", &format!("127.0.0.1:{port}")])
            .args(["--jwt-key-file", key_file.to_str().unwrap()])
            .args(["--cluster-secret-file", secret_file.to_str().unwrap()])
            .arg("--generate-secret")
            .args([
                "--token-rate-per-addr",
                "0.2",
                "--token-burst-per-addr",
                "20",
            ])
            .env_remove("CLUSTER_SECRET")
            .env("TEACHER_PASSWORD", TEACHER)
            .env("LOG", "info"),
    );
    let http = reqwest::Client::new();
    let master = format!("http://127.0.0.1:{port}");
    assert!(
        wait_until(Duration::from_secs(10), || async {
            get_json(&http, &format!("{master}/health")).await.is_some()
        })
        .await
    );
    use std::os::unix::fs::PermissionsExt;
    for f in [&secret_file, &key_file] {
        let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} is {mode:o}", f.display());
    }

    // 20 tokens in a burst from one address, then 429 with Retry-After; another address is
    // not affected. (No stream is live: the limit comes first, then 404.)
    let body = json!({"role":"student","user_id":"s","stream":"none"});
    let mut statuses = Vec::new();
    for _ in 0..25 {
        statuses.push(token_from("127.0.0.1", &master, body.clone()).await);
    }
    let codes: Vec<u16> = statuses.iter().map(|r| r.status().as_u16()).collect();
    assert!(codes[..20].iter().all(|s| *s == 404), "{codes:?}");
    assert!(codes[20..].iter().all(|s| *s == 429), "{codes:?}");
    assert!(statuses[24].headers().get("retry-after").is_some());
    assert_eq!(
        token_from("127.0.0.3", &master, body.clone())
            .await
            .status(),
        404,
        "another address has its own budget"
    );
    m.terminate(Duration::from_secs(3));
}
