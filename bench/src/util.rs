//! Small cluster helpers (readiness, teacher keys, viewer URLs) for `run` and for scripts.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use common::api::{TokenRequest, TokenResponse};
use common::token::Role;

/// Waits until `url` answers 2xx (and, with `min_nodes`, its `healthy_nodes` reaches it).
pub async fn wait(url: &str, min_nodes: Option<u64>, timeout: Duration) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        match http.get(url).send().await {
            Ok(r) if r.status().is_success() => {
                let Some(min) = min_nodes else { return Ok(()) };
                let v: serde_json::Value = r.json().await.unwrap_or_default();
                let n = v["healthy_nodes"].as_u64().unwrap_or(0);
                if n >= min {
                    return Ok(());
                }
                last = format!("{n} healthy nodes");
            }
            Ok(r) => last = format!("status {}", r.status()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{url}: not ready after {timeout:?} ({last})")
}

/// Logs in as a teacher and prints `<rtmp_url>/<stream_key> <hls base URL of that node>`.
pub async fn teacher_key(master: &str, password: &str, stream: &str) -> anyhow::Result<String> {
    let req = TokenRequest {
        role: Role::Teacher,
        user_id: "bench".into(),
        stream: Some(stream.into()),
        exclude: None,
        credential: Some(password.into()),
        recording: None,
        record: None,
    };
    let r = reqwest::Client::new()
        .post(format!("{}/api/token", master.trim_end_matches('/')))
        .json(&req)
        .send()
        .await?;
    let status = r.status();
    if !status.is_success() {
        bail!(
            "teacher token → {status}: {}",
            r.text().await.unwrap_or_default()
        );
    }
    let t: TokenResponse = r.json().await?;
    let rtmp = t
        .rtmp_url
        .context("no rtmp_url in a teacher token answer")?;
    let key = t
        .stream_key
        .context("no stream_key in a teacher token answer")?;
    let base = t
        .hls_url
        .split("/live/")
        .next()
        .unwrap_or_default()
        .to_string();
    Ok(format!("{}/{key} {base}", rtmp.trim_end_matches('/')))
}

/// A student's playlist URL (`hls_url` of a token answer, token in its query).
/// A student's WHEP URL and token (avoiding `exclude`), and the node that token names.
pub async fn whep_target(
    master: &str,
    stream: &str,
    exclude: Option<&str>,
) -> anyhow::Result<(String, String, String)> {
    let req = serde_json::json!({"role": "student", "user_id": "bench-webrtc", "stream": stream, "exclude": exclude});
    let r = reqwest::Client::new()
        .post(format!("{}/api/token", master.trim_end_matches('/')))
        .json(&req)
        .send()
        .await?;
    let t: TokenResponse = r.error_for_status()?.json().await?;
    let url = t
        .whep_url
        .ok_or_else(|| anyhow::anyhow!("no WebRTC offered: {:?}", t.webrtc))?;
    Ok((url, t.token, t.node_id))
}

pub async fn viewer_url(master: &str, stream: &str) -> anyhow::Result<String> {
    let req = TokenRequest {
        role: Role::Student,
        user_id: "bench-viewer".into(),
        stream: Some(stream.into()),
        exclude: None,
        credential: None,
        recording: None,
        record: None,
    };
    let r = reqwest::Client::new()
        .post(format!("{}/api/token", master.trim_end_matches('/')))
        .json(&req)
        .send()
        .await?;
    let status = r.status();
    if !status.is_success() {
        bail!(
            "student token → {status}: {}",
            r.text().await.unwrap_or_default()
        );
    }
    let t: TokenResponse = r.json().await?;
    Ok(t.hls_url)
}
