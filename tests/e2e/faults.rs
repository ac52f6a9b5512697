//! Issue 8: faults under load. Kill/restart cases live beside the features they break
//! (fan-out, media plane, control plane); here is the join storm.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::*;

/// 1,000 tokens/s for 10 s while viewers play: every request answered, no viewer interrupted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_storm_while_viewers_play() {
    // 1,000 joins a second from one address, as a large school behind one NAT address.
    let c = Cluster::start_with(
        "join_storm",
        2,
        Timings::default(),
        &[
            "--token-rate-per-addr",
            "2000",
            "--token-burst-per-addr",
            "2000",
        ],
        &[],
    )
    .await;
    let (rtmp, key, _) = c.teacher("storm").await;
    let _publisher = c.publish("publisher", &rtmp, &key, None);
    c.wait_live("storm", 2).await;

    // Two viewers keep playing (playlist + newest part) throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let mut viewers = Vec::new();
    for i in 0..2 {
        let v = c.student("storm", &format!("viewer{i}")).await;
        let url = v["hls_url"].as_str().unwrap().to_string();
        let (http, stop) = (c.http.clone(), stop.clone());
        viewers.push(tokio::spawn(async move {
            let (mut bad, mut ok, mut first, mut last) = (0, 0, None, None);
            while !stop.load(Ordering::Relaxed) {
                match http.get(&url).send().await {
                    Ok(r) if r.status() == 200 => {
                        let p = last_part(&r.text().await.unwrap_or_default());
                        first = first.or(p);
                        last = p;
                        ok += 1;
                    }
                    _ => bad += 1,
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            (ok, bad, first, last)
        }));
    }

    let master = c.master_url();
    let (okc, errc) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    // Tokens per slave, from the node each token names.
    let per_node = Arc::new(parking_lot::Mutex::new(std::collections::HashMap::<
        String,
        u64,
    >::new()));
    let limit = Arc::new(tokio::sync::Semaphore::new(64));
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut sent = 0u64;
    let mut tasks = Vec::new();
    // 10 requests every 10 ms = 1,000/s, for 10 s.
    while start.elapsed() < Duration::from_secs(10) {
        tick.tick().await;
        for _ in 0..10 {
            sent += 1;
            let (http, url, okc, errc, limit, per_node) = (
                c.http.clone(),
                format!("{master}/api/token"),
                okc.clone(),
                errc.clone(),
                limit.clone(),
                per_node.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let _permit = limit.acquire_owned().await.unwrap();
                let body = json!({"role": "student", "user_id": format!("storm{sent}"), "stream": "storm"});
                let res = http.post(url).json(&body).send().await;
                let v: Option<serde_json::Value> = match res {
                    Ok(r) if r.status() == 200 => r.json().await.ok(),
                    _ => None,
                };
                match v.as_ref().and_then(|v| v["node_id"].as_str()) {
                    Some(node) => {
                        okc.fetch_add(1, Ordering::Relaxed);
                        *per_node.lock().entry(node.to_string()).or_default() += 1;
                    }
                    None => {
                        errc.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let took = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (ok, err) = (okc.load(Ordering::Relaxed), errc.load(Ordering::Relaxed));
    println!("join storm: {ok} tokens in {took:?}, {err} errors");
    assert_eq!(err, 0, "token errors during the storm");
    assert_eq!(ok, sent);
    assert!(sent >= 9_900, "sent only {sent}");
    assert!(
        took < Duration::from_secs(12),
        "the master fell behind: {took:?} for 10 s of joins"
    );
    for v in viewers {
        let (ok, bad, first, last) = v.await.unwrap();
        assert_eq!(bad, 0, "a viewer saw errors during the storm");
        assert!(
            ok > 10 && last > first,
            "a viewer stopped advancing: {first:?} → {last:?}"
        );
    }
    // The joins spread over both slaves: routing follows the tokens promised since each
    // heartbeat, so neither slave takes the whole storm.
    let per_node = per_node.lock().clone();
    println!("join storm: tokens per slave {per_node:?}");
    assert_eq!(per_node.len(), 2, "{per_node:?}");
    for (node, n) in &per_node {
        assert!(
            *n * 3 >= ok,
            "{node} got only {n} of {ok} tokens: {per_node:?}"
        );
    }
}

/// SIGTERM drains a slave: no master names it from that moment, its viewers' playlists answer
/// 503, and a playing student (a player that asks for another token when its slave fails, as
/// the student page does) is playing from another slave within 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_a_slave() {
    // A 3 s drain: what is observed below happens within it.
    let mut c =
        Cluster::start_with("drain", 2, Timings::default(), &[], &["--drain-ms", "3000"]).await;
    let (rtmp, key, t) = c.teacher("drain").await;
    let origin = t["node_id"].as_str().unwrap().to_string();
    let edge = if origin == "s1" { "s2" } else { "s1" }.to_string();
    let _publisher = c.publish("publisher", &rtmp, &key, None);
    c.wait_live("drain", 2).await;
    // A student on the edge, playing; then the edge is told to stop.
    let v = c
        .token(json!({"role":"student","user_id":"drained","stream":"drain","exclude":origin}))
        .await
        .unwrap();
    assert_eq!(v["node_id"], edge.as_str());
    let mut url = v["hls_url"].as_str().unwrap().to_string();
    crate::bounds::view_once(&c.http, &url).await.unwrap();
    let t0 = Instant::now();
    c.slave(&edge).proc.signal(libc::SIGTERM);
    // No new token names it, at once.
    let gone = wait_until(Duration::from_secs(1), || async {
        c.nodes().await["nodes"]
            .as_array()
            .is_some_and(|n| n.iter().all(|x| x["node_id"] != edge.as_str()))
    })
    .await;
    assert!(
        gone,
        "the draining slave still listed after 1 s: {}",
        c.nodes().await
    );
    for i in 0..10 {
        let v = c.student("drain", &format!("new{i}")).await;
        assert_ne!(
            v["node_id"],
            edge.as_str(),
            "a new token named the draining slave"
        );
    }
    // Its viewers' playlists answer 503 while it still serves (the drain lasts 3 s).
    let r = c.http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 503, "a draining slave's playlist");
    assert!(r.headers().get("retry-after").is_some());
    // The player moves: a new token (avoiding the failed slave) and playback from the other.
    let moved = loop {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the student did not move within 5 s"
        );
        if crate::bounds::view_once(&c.http, &url).await.is_ok() {
            continue;
        }
        let v = c
            .token(json!({"role":"student","user_id":"drained","stream":"drain","exclude":edge}))
            .await
            .unwrap();
        url = v["hls_url"].as_str().unwrap().to_string();
        if crate::bounds::view_once(&c.http, &url).await.is_ok() {
            break v["node_id"].as_str().unwrap().to_string();
        }
    };
    println!("drain: moved to {moved} in {:?}", t0.elapsed());
    assert_eq!(moved, origin);
    let st = c.slave_mut(&edge).proc.wait_exit(Duration::from_secs(10));
    assert!(
        st.is_some_and(|s| s.success()),
        "the drained slave exits cleanly"
    );
}
