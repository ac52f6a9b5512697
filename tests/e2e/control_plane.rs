//! Issue 2: the master's control plane, with simulated slaves speaking the real HTTP API to a
//! real master process, and real slave processes for restart and `up`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::token::{Action, TokenError, TokenVerifier};
use serde_json::{Value, json};

use crate::support::*;

/// Registers a simulated slave through the slave's own typed master client.
async fn register(c: &Cluster, id: &str, max: u32) -> Value {
    let client = slave::master_client::MasterClient::new(
        &c.master_url(),
        &common::secret::ClusterSecret::new(SECRET).unwrap(),
        id,
        c.http.clone(),
    );
    let req = common::api::RegisterRequest {
        node_id: id.into(),
        node_name: id.into(),
        public_url: format!("http://{id}.test:8888"),
        rtmp_url: format!("rtmp://{id}.test:1935/live"),
        max_connections: max,
        version: "test".into(),
        internal_url: None,
    };
    let resp = client.register(&req).await.expect("registration");
    serde_json::to_value(resp).unwrap()
}

async fn heartbeat(c: &Cluster, id: &str, connections: u32, streams: Value) -> (u16, Value) {
    let r = c
        .http
        .post(format!("{}/cluster/stats", c.master_url()))
        .bearer_auth(SECRET)
        .json(&json!({"node_id": id, "stats": {"connections": connections, "cpu": 1.0, "memory": 2.0, "streams": streams}}))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

fn node<'a>(nodes: &'a Value, id: &str) -> &'a Value {
    nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node_id"] == id)
        .unwrap_or(&Value::Null)
}

fn live(path: &str, origin: bool) -> Value {
    json!([{"path": path, "origin": origin, "live": true}])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_statuses_tokens_balance_and_refusals() {
    let t = Timings {
        heartbeat_ms: 200,
        offline_after_ms: 1000,
        grace_ms: 1000,
        token_ttl_secs: 2,
        ..Default::default()
    };
    let c = Cluster::start("control_plane", 0, t).await;

    // --- Registration and its refusals.
    let reg = register(&c, "a", 100).await;
    let again = register(&c, "a", 100).await; // idempotent
    assert_eq!(reg["public_key"], again["public_key"]);
    assert_eq!(reg["heartbeat_interval_ms"], 200);
    let jwks = get_json(
        &c.http,
        &format!("{}/.well-known/jwks.json", c.master_url()),
    )
    .await
    .unwrap();
    assert_eq!(jwks["keys"][0]["x"], reg["public_key"]);
    assert_eq!(c.nodes().await["total_nodes"], 1);

    let url = format!("{}/cluster/register", c.master_url());
    let body = json!({"node_id":"rogue","node_name":"r","public_url":"http://x:1","rtmp_url":"rtmp://x/live","max_connections":1,"version":"x"});
    let r = c.http.post(&url).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 401, "no secret");
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "unauthorized");
    let r = c
        .http
        .post(&url)
        .bearer_auth("wrong-secret-wrong-secret")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "wrong secret");
    let r = c
        .http
        .post(&url)
        .bearer_auth(SECRET)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "bad_json");
    let big = format!("{{\"node_id\":\"{}\"}}", "x".repeat(70 * 1024));
    let r = c
        .http
        .post(&url)
        .bearer_auth(SECRET)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert!(r.json::<Value>().await.unwrap()["error"].is_string());
    assert!(
        node(&c.nodes().await, "rogue").is_null(),
        "rogue node must not be registered"
    );

    // --- Status transitions from real load figures.
    let stream = live("live/stream", true);
    for (conns, want) in [
        (69, "healthy"),
        (70, "warning"),
        (90, "critical"),
        (10, "healthy"),
    ] {
        let (code, v) = heartbeat(&c, "a", conns, stream.clone()).await;
        assert_eq!(code, 200);
        assert_eq!(v["status"], want, "at {conns}%");
        let n = c.nodes().await;
        assert_eq!(node(&n, "a")["status"], want);
        assert_eq!(node(&n, "a")["current_connections"], conns);
        assert_eq!(node(&n, "a")["load_percentage"], conns as f64);
    }
    // Offline after the timeout, back to Healthy after a heartbeat.
    let t0 = Instant::now();
    assert!(
        wait_until(Duration::from_secs(5), || async {
            node(&c.nodes().await, "a")["status"] == "offline"
        })
        .await
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(800),
        "offline too early: {:?}",
        t0.elapsed()
    );
    let (code, v) = heartbeat(&c, "a", 5, stream.clone()).await;
    assert_eq!((code, v["status"].as_str()), (200, Some("healthy")));
    let metrics = metrics_text(&c.http, &c.master_url()).await;
    assert!(
        metrics.contains("classcast_master_status_transitions_total{to=\"offline\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("classcast_master_status_transitions_total{to=\"warning\"} 1"));
    assert!(metrics.contains("classcast_master_node_load_percent{node_id=\"a\"} 5"));

    // Unknown node → 404 telling it to re-register.
    let (code, v) = heartbeat(&c, "ghost", 1, json!([])).await;
    assert_eq!(code, 404);
    assert_eq!(v["error"], "unknown_node");
    assert!(v["message"].as_str().unwrap().contains("re-register"));

    // --- Tokens: node binding, verification with the registration key, expiry.
    let v = c.student("stream", "alice").await;
    assert_eq!(v["node_id"], "a");
    assert!(
        v["hls_url"]
            .as_str()
            .unwrap()
            .starts_with("http://a.test:8888/live/stream/index.m3u8?jwt=")
    );
    let token = v["token"].as_str().unwrap();
    let verifier =
        TokenVerifier::from_public_x(reg["public_key"].as_str().unwrap(), "classcast").unwrap();
    let claims = verifier
        .authorize(Some(token), "a", "live/stream", Action::Read)
        .unwrap();
    assert_eq!(
        (claims.sub.as_str(), claims.node_id.as_str()),
        ("alice", "a")
    );
    assert!(!claims.jti.is_empty());
    let other = common::token::SigningKey::generate().unwrap().0;
    let wrong = TokenVerifier::from_public_x(&other.public_x(), "classcast").unwrap();
    assert!(matches!(wrong.verify(token), Err(TokenError::Invalid(_))));
    // TTL is 2 s here: the token expires.
    let fresh =
        TokenVerifier::from_public_x(reg["public_key"].as_str().unwrap(), "classcast").unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(fresh.verify(token).unwrap_err(), TokenError::Expired);

    // Bad inputs to /api/token.
    for bad in [
        json!({"role":"student","user_id":"<script>","stream":"stream"}),
        json!({"role":"student","user_id":"","stream":"stream"}),
        json!({"role":"student","user_id":"x".repeat(65)}),
        json!({"role":"student","user_id":"bob","stream":"../etc"}),
    ] {
        let (code, v) = c.token(bad.clone()).await.unwrap_err();
        assert_eq!(code, 400, "{bad}");
        assert!(v["error"].is_string() && v["message"].is_string());
    }
    let (code, _) = c
        .token(json!({"role":"teacher","user_id":"t","credential":"nope"}))
        .await
        .unwrap_err();
    assert_eq!(code, 401);
    let (code, v) = c
        .token(json!({"role":"student","user_id":"bob","stream":"notlive"}))
        .await
        .unwrap_err();
    assert_eq!((code, v["error"].as_str()), (404, Some("stream_not_live")));

    // --- Burst balance: 150 concurrent tokens over 3 idle slaves land 50/50/50 ±1.
    register(&c, "b", 1000).await;
    register(&c, "c", 1000).await;
    register(&c, "a", 1000).await;
    for id in ["a", "b", "c"] {
        heartbeat(&c, id, 0, live("live/burst", id == "a")).await;
    }
    let reqs = (0..150).map(|i| {
        let c = &c;
        async move {
            c.student("burst", &format!("s{i}")).await["node_id"]
                .as_str()
                .unwrap()
                .to_string()
        }
    });
    let mut counts = BTreeMap::new();
    for id in futures::future::join_all(reqs).await {
        *counts.entry(id).or_insert(0) += 1;
    }
    assert_eq!(counts.len(), 3, "{counts:?}");
    for (id, n) in &counts {
        assert!((49..=51).contains(n), "{id} got {n}: {counts:?}");
    }

    // --- Critical only as a last resort, Offline never, `exclude` honoured.
    heartbeat(&c, "a", 950, live("live/burst", true)).await; // critical
    heartbeat(&c, "b", 750, live("live/burst", false)).await; // warning
    heartbeat(&c, "c", 800, live("live/burst", false)).await; // warning
    assert_eq!(
        c.student("burst", "w1").await["node_id"],
        "b",
        "warning nodes still take viewers"
    );
    let v = c
        .token(json!({"role":"student","user_id":"w2","stream":"burst","exclude":"b"}))
        .await
        .unwrap();
    assert_eq!(v["node_id"], "c");
    let best = get_json(&c.http, &format!("{}/cluster/best-node", c.master_url()))
        .await
        .unwrap();
    assert!(best["node_id"] == "b" || best["node_id"] == "c");
    // Let b and c go offline (only a keeps heartbeating): a, although critical, is the only choice.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        heartbeat(&c, "a", 950, live("live/burst", true)).await;
        let n = c.nodes().await;
        if node(&n, "b")["status"] == "offline" && node(&n, "c")["status"] == "offline" {
            break;
        }
        assert!(Instant::now() < deadline, "b and c never went offline");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(c.student("burst", "w3").await["node_id"], "a");
    // Nothing left at all → 503 with a JSON error.
    c.http
        .post(format!("{}/cluster/unregister", c.master_url()))
        .bearer_auth(SECRET)
        .json(&json!({"node_id":"a"}))
        .send()
        .await
        .unwrap();
    let (code, v) = c
        .token(json!({"role":"monitor","user_id":"m","credential":SECRET}))
        .await
        .unwrap_err();
    assert_eq!((code, v["error"].as_str()), (503, Some("no_node")));
    let r = c
        .http
        .get(format!("{}/cluster/best-node", c.master_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_restart_slave_reregisters_and_key_survives() {
    let t = Timings {
        heartbeat_ms: 300,
        ..Default::default()
    };
    let mut c = Cluster::start("master_restart", 1, t).await;
    let jwks1 = get_json(
        &c.http,
        &format!("{}/.well-known/jwks.json", c.master_url()),
    )
    .await
    .unwrap();
    let tok = c
        .token(json!({"role":"monitor","user_id":"m","credential":SECRET}))
        .await
        .unwrap();
    c.master.as_mut().unwrap().kill9();
    c.start_master();
    // Within one heartbeat (plus process start) the slave is back.
    let t0 = Instant::now();
    c.wait_healthy(1).await;
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "re-registration took {:?}",
        t0.elapsed()
    );
    let jwks2 = get_json(
        &c.http,
        &format!("{}/.well-known/jwks.json", c.master_url()),
    )
    .await
    .unwrap();
    assert_eq!(jwks1, jwks2, "the signing key must survive a restart");
    // A token from before the restart still verifies on the slave.
    let s = c.slave("s1");
    let r = c
        .http
        .get(format!(
            "{}/live/stream/index.m3u8?jwt={}",
            s.base(),
            tok["token"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        404,
        "token accepted (the stream is simply not live)"
    );
    assert!(c.slave("s1").proc.log_text().contains("re-registering"));

    // Graceful slave shutdown unregisters.
    let st = c.slave_mut("s1").proc.terminate(Duration::from_secs(5));
    assert!(
        st.is_some_and(|s| s.success()),
        "slave exits cleanly on SIGTERM"
    );
    assert!(
        wait_until(Duration::from_secs(3), || async {
            c.nodes().await["total_nodes"] == 0
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_runs_a_whole_cluster() {
    let dir = log_dir("up");
    let master_port = free_port();
    let mut cmd = std::process::Command::new(BIN);
    cmd.args([
        "up",
        "--slaves",
        "3",
        "--master-port",
        &master_port.to_string(),
    ])
    .args([
        "--rtmp-port-base",
        "0",
        "--http-port-base",
        "0",
        "--heartbeat-interval-ms",
        "300",
    ])
    .args(["--data-dir", dir.join("data").to_str().unwrap()]);
    let p = Proc::spawn("up", dir.join("up.log"), &mut cmd);
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{master_port}/cluster/nodes");
    let ok = wait_until(Duration::from_secs(20), || async {
        get_json(&http, &url)
            .await
            .is_some_and(|v| v["healthy_nodes"] == 3)
    })
    .await;
    assert!(
        ok,
        "up did not show 3 healthy slaves; log:\n{}",
        p.log_text()
    );
    let log = p.log_text();
    assert!(
        log.contains("/teacher") && log.contains("Students:"),
        "up prints next steps:\n{log}"
    );
}

#[test]
fn refuses_to_start_without_a_secret() {
    let out = std::process::Command::new(BIN)
        .args(["master", "--bind", "127.0.0.1:0"])
        .env_remove("CLUSTER_SECRET")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no cluster secret"));
    let out = std::process::Command::new(BIN)
        .args(["slave"])
        .env_remove("CLUSTER_SECRET")
        .env("MODE", "slave")
        .output()
        .unwrap();
    assert!(!out.status.success());
}
