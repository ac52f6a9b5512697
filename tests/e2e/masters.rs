//! Issue 18 (its first part): several masters for one cluster. Every slave reports to every
//! master; masters share the signing key, so a token from any of them plays on every slave;
//! one master killed while students join costs no join and interrupts no viewer.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::bounds::{keep_viewing, view_once};
use crate::support::*;

async fn nodes_at(http: &reqwest::Client, master: &str) -> Value {
    get_json(http, &format!("{master}/cluster/nodes"))
        .await
        .unwrap_or(Value::Null)
}

async fn token_at(http: &reqwest::Client, master: &str, body: &Value) -> Result<Value, String> {
    let r = http
        .post(format!("{master}/api/token"))
        .timeout(Duration::from_secs(2))
        .json(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if r.status() != 200 {
        return Err(format!("{}", r.status()));
    }
    r.json().await.map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_masters_share_the_cluster_and_survive_each_other() {
    let mut c = Cluster::start("two_masters", 0, Timings::default()).await;
    let port_b = free_port();
    let mut master_b = c.spawn_master_on(port_b);
    let (a, b) = (c.master_url(), format!("http://127.0.0.1:{port_b}"));
    c.slave_master_urls = Some(format!("{a},{b}"));
    c.add_slave("s1", &[]);
    c.add_slave("s2", &[]);
    for m in [&a, &b] {
        let ok = wait_until(Duration::from_secs(30), || async {
            nodes_at(&c.http, m).await["healthy_nodes"].as_u64() == Some(2)
        })
        .await;
        assert!(
            ok,
            "{m} did not see both slaves: {}",
            nodes_at(&c.http, m).await
        );
    }

    // A teacher key from master A; the class goes live in both masters' directories.
    let (rtmp, key, _) = c.teacher("multi").await;
    let _publisher = c.publish("publisher", &rtmp, &key, None);
    for m in [&a, &b] {
        let ok = wait_until(Duration::from_secs(30), || async {
            get_json(&c.http, &format!("{m}/cluster/streams"))
                .await
                .is_some_and(|v| {
                    v["streams"].as_array().is_some_and(|s| {
                        s.iter().any(|s| {
                            s["path"] == "live/multi"
                                && s["serving"].as_array().is_some_and(|x| x.len() == 2)
                        })
                    })
                })
        })
        .await;
        assert!(ok, "{m} does not list live/multi on both slaves");
    }

    // Tokens from either master play on either slave (each master balances on its own).
    let mut played = std::collections::BTreeSet::new();
    for (i, m) in [&a, &b, &a, &b].into_iter().enumerate() {
        for node in ["s1", "s2"] {
            let other = if node == "s1" { "s2" } else { "s1" };
            let v = token_at(
                &c.http,
                m,
                &json!({"role":"student","user_id":format!("u{i}{node}"),"stream":"multi","exclude":other}),
            )
            .await
            .unwrap_or_else(|e| panic!("a token from {m}: {e}"));
            assert_eq!(v["node_id"], node);
            view_once(&c.http, v["hls_url"].as_str().unwrap())
                .await
                .unwrap_or_else(|e| panic!("a token from {m} on {node}: {e}"));
            played.insert((m.clone(), node));
        }
    }
    assert_eq!(played.len(), 4, "every master × every slave");

    // A viewer keeps playing while master A dies; joins go on through B, as the pages do
    // (try one master, then the other).
    let url = token_at(
        &c.http,
        &a,
        &json!({"role":"student","user_id":"stays","stream":"multi"}),
    )
    .await
    .unwrap()["hls_url"]
        .as_str()
        .unwrap()
        .to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let viewer = keep_viewing(c.http.clone(), url, stop.clone());
    c.master.as_mut().unwrap().kill9();
    let (mut joined, mut failed) = (0, Vec::new());
    let t0 = Instant::now();
    let mut i = 0u32;
    // About 50 joins a second for 20 s, half asked of each master first.
    while t0.elapsed() < Duration::from_secs(20) {
        i += 1;
        let body = json!({"role":"student","user_id":format!("late{i}"),"stream":"multi"});
        let (first, second) = if i.is_multiple_of(2) {
            (&a, &b)
        } else {
            (&b, &a)
        };
        match token_at(&c.http, first, &body).await {
            Ok(_) => joined += 1,
            Err(_) => match token_at(&c.http, second, &body).await {
                Ok(_) => joined += 1,
                Err(e) => failed.push(e),
            },
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        failed.is_empty(),
        "joins failed with master A down: {failed:?}"
    );
    assert!(joined >= 600, "only {joined} joins in 20 s");

    // A restarted master rebuilds its registry and directory from the next heartbeats: each
    // slave's next heartbeat gets a 404 and it registers again at once.
    c.start_master();
    let up = wait_until(Duration::from_secs(10), || async {
        healthy(&c.http, &a).await
    })
    .await;
    assert!(up, "master A did not come back");
    let t1 = Instant::now();
    let ok = wait_until(Duration::from_secs(10), || async {
        nodes_at(&c.http, &a).await["healthy_nodes"].as_u64() == Some(2)
            && get_json(&c.http, &format!("{a}/cluster/streams"))
                .await
                .is_some_and(|v| v["streams"].as_array().is_some_and(|s| !s.is_empty()))
    })
    .await;
    assert!(
        ok,
        "master A did not rebuild: {}",
        nodes_at(&c.http, &a).await
    );
    let took = t1.elapsed();
    println!(
        "master A rebuilt in {took:?} (heartbeat every {} ms)",
        c.timings.heartbeat_ms
    );
    assert!(
        took <= Duration::from_millis(3 * c.timings.heartbeat_ms + 100),
        "rebuilding took {took:?}, more than a heartbeat or so"
    );
    stop.store(true, Ordering::Relaxed);
    let (ok, errors, first, last) = viewer.await.unwrap();
    assert!(ok >= 10 && last > first, "the viewer stopped: {errors:?}");
    assert!(
        errors.is_empty(),
        "the viewer saw errors while a master died: {errors:?}"
    );
    master_b.terminate(Duration::from_secs(3));
}

/// Three masters each hand out a burst of 50 student tokens at once to three idle slaves: each
/// master spreads its own burst by the tokens it promised, so the sum stays near 50/50/50.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_masters_balance_their_bursts() {
    // A long heartbeat so that no heartbeat resets the promised counts mid-burst.
    let t = Timings {
        heartbeat_ms: 2000,
        offline_after_ms: 10_000,
        ..Default::default()
    };
    let mut c = Cluster::start("three_masters", 0, t).await;
    let ports = [free_port(), free_port()];
    let others: Vec<Proc> = ports.iter().map(|p| c.spawn_master_on(*p)).collect();
    let masters: Vec<String> = std::iter::once(c.master_url())
        .chain(ports.iter().map(|p| format!("http://127.0.0.1:{p}")))
        .collect();
    c.slave_master_urls = Some(masters.join(","));
    for id in ["s1", "s2", "s3"] {
        c.add_slave(id, &[]);
    }
    for m in &masters {
        let ok = wait_until(Duration::from_secs(30), || async {
            nodes_at(&c.http, m).await["healthy_nodes"].as_u64() == Some(3)
        })
        .await;
        assert!(ok, "{m} did not see the three slaves");
    }
    let (rtmp, key, _) = c.teacher("burst3").await;
    let _publisher = c.publish("publisher", &rtmp, &key, None);
    for m in &masters {
        let ok = wait_until(Duration::from_secs(30), || async {
            get_json(&c.http, &format!("{m}/cluster/streams"))
                .await
                .is_some_and(|v| {
                    v["streams"].as_array().is_some_and(|s| {
                        s.iter()
                            .any(|s| s["serving"].as_array().is_some_and(|x| x.len() == 3))
                    })
                })
        })
        .await;
        assert!(ok, "{m} does not list the class on all three slaves");
    }
    // Wait for a fresh heartbeat round so every master starts from zero promised tokens.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let mut tasks = Vec::new();
    for m in &masters {
        for i in 0..50 {
            let (http, m) = (c.http.clone(), m.clone());
            tasks.push(tokio::spawn(async move {
                let body = json!({"role":"student","user_id":format!("b{i}"),"stream":"burst3"});
                token_at(&http, &m, &body)
                    .await
                    .map(|v| v["node_id"].as_str().unwrap().to_string())
            }));
        }
    }
    let mut per_node = std::collections::BTreeMap::<String, i64>::new();
    for t in tasks {
        *per_node
            .entry(t.await.unwrap().expect("a token"))
            .or_default() += 1;
    }
    println!("three masters × 50: {per_node:?}");
    assert_eq!(per_node.values().sum::<i64>(), 150);
    for (node, n) in &per_node {
        assert!((n - 50).abs() <= 3, "{node} got {n}: {per_node:?}");
    }
    drop(others);
}

/// Key rotation without downtime: the master restarted with a new signing key and the old one
/// as `--jwt-previous-key-file` publishes both, so tokens of either key play; restarted without
/// the old key, the old key's tokens are refused and the new ones still play.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_keeps_old_tokens_for_the_overlap_only() {
    let mut c = Cluster::start("key_rotation", 1, Timings::default()).await;
    let (rtmp, key, _) = c.teacher("rotate").await;
    let _publisher = c.publish("publisher", &rtmp, &key, None);
    c.wait_live("rotate", 1).await;
    let old_token = c.student("rotate", "before").await;
    let old_url = old_token["hls_url"].as_str().unwrap().to_string();
    ffprobe(&old_url).expect("a token of the first key plays");

    // Rotate: the old key file moves aside and is published as the previous key.
    let old_key = log_dir("key_rotation").join("jwt-old.pem");
    c.master.take().unwrap().terminate(Duration::from_secs(5));
    std::fs::rename(&c.key_file, &old_key).unwrap();
    c.master_flags = vec![
        "--jwt-previous-key-file".into(),
        old_key.to_str().unwrap().into(),
    ];
    c.start_master();
    let jwks = wait_for_jwks(&c, 2).await;
    let new_kid = jwks["keys"][0]["kid"].as_str().unwrap().to_string();
    // The slave learns the new key when it re-registers (one heartbeat after the restart),
    // which is also when the restarted master learns the stream again.
    c.wait_live("rotate", 1).await;
    let new_token = c.student("rotate", "during").await;
    let new_url = new_token["hls_url"].as_str().unwrap().to_string();
    let ok = wait_until(Duration::from_secs(10), || async {
        view_once(&c.http, &new_url).await.is_ok()
    })
    .await;
    assert!(ok, "a token of the new key {new_kid} never played");
    ffprobe(&new_url).expect("a token of the new key plays");
    ffprobe(&old_url).expect("during the overlap a token of the old key still plays");

    // The overlap ends: the master no longer publishes the old key.
    c.master.take().unwrap().terminate(Duration::from_secs(5));
    c.master_flags.clear();
    c.start_master();
    wait_for_jwks(&c, 1).await;
    let refused = wait_until(Duration::from_secs(10), || async {
        c.http
            .get(&old_url)
            .send()
            .await
            .is_ok_and(|r| r.status() == 401)
    })
    .await;
    assert!(refused, "a token of the dropped key still plays");
    ffprobe(&new_url).expect("after the overlap a token of the new key plays");
}

/// The master's published key set once it holds `n` keys.
async fn wait_for_jwks(c: &Cluster, n: usize) -> Value {
    let url = format!("{}/.well-known/jwks.json", c.master_url());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = get_json(&c.http, &url).await.unwrap_or(Value::Null);
        if v["keys"].as_array().is_some_and(|k| k.len() == n) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "the master does not publish {n} keys: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `MASTER_URL=dns+http://name:port` (how slaves find every master pod behind a headless
/// Service on Kubernetes): the slave reports to the address the name resolves to, and a token
/// from that master plays on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_master_entry_reaches_the_masters_it_names() {
    let mut c = Cluster::start("dns_masters", 0, Timings::default()).await;
    c.slave_master_urls = Some(format!("dns+http://localhost:{}", c.master_port));
    c.add_slave("s1", &[]);
    c.wait_healthy(1).await;
    let (rtmp, key, _) = c.teacher("dns").await;
    let _publisher = c.publish("publisher", &rtmp, &key, None);
    c.wait_live("dns", 1).await;
    let v = c.student("dns", "viewer").await;
    ffprobe(v["hls_url"].as_str().unwrap()).expect("a token from the resolved master plays");
    let log = c.slave("s1").proc.log_text();
    assert!(
        log.contains(&format!("master=http://127.0.0.1:{}", c.master_port)),
        "the slave did not report to the resolved address"
    );
}
