//! The slave's side of the control plane: register (with backoff until the master is up),
//! heartbeat with real figures, re-register when the master forgets us, announce streams at
//! once, unregister on shutdown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::api::{
    Heartbeat, NodeStats, RegisterRequest, RegisterResponse, StreamAnnounce, StreamReport,
    UnregisterRequest,
};
use common::token::TokenVerifier;

use crate::SlaveCtx;
use crate::hls::store::Source;

pub struct Agent {
    ctx: Arc<SlaveCtx>,
    last_sample: Instant,
    last_bytes_out: u64,
    last_ingest: u64,
}

impl Agent {
    pub fn new(ctx: Arc<SlaveCtx>) -> Self {
        Self {
            ctx,
            last_sample: Instant::now(),
            last_bytes_out: 0,
            last_ingest: 0,
        }
    }

    fn url(&self, p: &str) -> String {
        format!("{}{p}", self.ctx.cfg.master_url.trim_end_matches('/'))
    }

    fn register_request(&self) -> RegisterRequest {
        let c = &self.ctx.cfg;
        RegisterRequest {
            node_id: c.node_id.clone(),
            node_name: c.node_name.clone(),
            public_url: c.public_url.clone(),
            rtmp_url: c.rtmp_url.clone(),
            max_connections: c.max_connections,
            version: common::VERSION.into(),
            internal_url: Some(c.internal_url.clone()),
        }
    }

    /// One registration attempt.
    async fn register_once(&self) -> anyhow::Result<RegisterResponse> {
        let resp = self
            .ctx
            .http
            .post(self.url("/cluster/register"))
            .header("authorization", self.ctx.cfg.secret.bearer())
            .json(&self.register_request())
            .send()
            .await?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            anyhow::bail!("master answered {status}: {body}");
        }
        let r: RegisterResponse = resp.json().await?;
        let verifier = TokenVerifier::from_public_x(&r.public_key, &r.issuer)?;
        self.ctx.set_verifier(verifier);
        self.ctx.set_page_origins(&r.page_origins);
        for order in r.streams.clone() {
            crate::mirror::handle_order(&self.ctx, order);
        }
        Ok(r)
    }

    /// Registers, retrying with backoff until the master answers.
    pub async fn register(&self) -> RegisterResponse {
        let mut backoff = Duration::from_millis(200);
        loop {
            match self.register_once().await {
                Ok(r) => {
                    tracing::info!(node_id = %self.ctx.cfg.node_id, master = %self.ctx.cfg.master_url, "registered with the master");
                    return r;
                }
                Err(e) => {
                    tracing::warn!(error = %e, ?backoff, "registration failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    pub fn stats(&mut self) -> NodeStats {
        let ctx = &self.ctx;
        let (cpu, memory) = ctx.sys.sample();
        let elapsed = self.last_sample.elapsed().as_secs_f64().max(0.001);
        self.last_sample = Instant::now();
        let out = ctx.metrics.bytes_out.get();
        let ingest = ctx.metrics.ingest_bytes.get();
        let egress = ((out - self.last_bytes_out) as f64 / elapsed) as u64;
        let ingest_rate = ((ingest - self.last_ingest) as f64 / elapsed) as u64;
        self.last_bytes_out = out;
        self.last_ingest = ingest;
        let connections = ctx.viewers.count();
        ctx.metrics.viewers.set(connections as i64);
        let streams: Vec<StreamReport> = ctx
            .store
            .list()
            .iter()
            .filter(|e| !e.stream.is_ended())
            .map(|e| StreamReport {
                path: e.stream.path.clone(),
                origin: e.source == Source::Origin,
                upstream: match &e.source {
                    Source::Edge { upstream_node } => Some(upstream_node.clone()),
                    Source::Origin => None,
                },
                live: !e.stream.is_ended(),
            })
            .collect();
        ctx.metrics
            .streams
            .set(streams.iter().filter(|s| s.live).count() as i64);
        NodeStats {
            connections,
            cpu,
            memory,
            egress_bytes_per_sec: egress,
            ingest_bytes_per_sec: ingest_rate,
            streams,
        }
    }

    /// Heartbeats until the task is dropped. A 404 means the master forgot us (it restarted):
    /// re-register and heartbeat again at once, so the master's view is whole again within one
    /// interval.
    pub async fn run(mut self) {
        let r = self.register().await;
        let interval = self
            .ctx
            .cfg
            .heartbeat_interval
            .unwrap_or(Duration::from_millis(r.heartbeat_interval_ms.max(100)));
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.ctx.viewers.purge();
            self.ctx.store.sweep();
            let hb = Heartbeat {
                node_id: self.ctx.cfg.node_id.clone(),
                stats: self.stats(),
            };
            let res = self
                .ctx
                .http
                .post(self.url("/cluster/stats"))
                .header("authorization", self.ctx.cfg.secret.bearer())
                .json(&hb)
                .send()
                .await;
            match res {
                Ok(r) if r.status().is_success() => {}
                Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => {
                    tracing::info!("master does not know this node; re-registering");
                    if self.register_once().await.is_ok() {
                        tick.reset_immediately();
                    }
                }
                Ok(r) => tracing::warn!(status = %r.status(), "heartbeat refused"),
                Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
            }
        }
    }
}

impl SlaveCtx {
    /// Tells the master at once that a stream started or ended here (the heartbeat would be up
    /// to an interval late, and edges and routing wait on this).
    pub fn announce(self: &Arc<Self>, path: &str, live: bool) {
        let ctx = self.clone();
        let body = StreamAnnounce {
            node_id: self.cfg.node_id.clone(),
            path: path.to_string(),
            live,
        };
        tokio::spawn(async move {
            let url = format!(
                "{}/cluster/streams/announce",
                ctx.cfg.master_url.trim_end_matches('/')
            );
            for attempt in 0..5u32 {
                let res = ctx
                    .http
                    .post(&url)
                    .header("authorization", ctx.cfg.secret.bearer())
                    .json(&body)
                    .send()
                    .await;
                match res {
                    Ok(r) if r.status().is_success() => return,
                    Ok(r) => {
                        tracing::warn!(status = %r.status(), path = %body.path, "stream announcement refused")
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, path = %body.path, "stream announcement failed")
                    }
                }
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
        });
    }

    /// Best effort, on graceful shutdown.
    pub async fn unregister(&self) {
        let url = format!(
            "{}/cluster/unregister",
            self.cfg.master_url.trim_end_matches('/')
        );
        let body = UnregisterRequest {
            node_id: self.cfg.node_id.clone(),
        };
        match self
            .http
            .post(url)
            .header("authorization", self.cfg.secret.bearer())
            .json(&body)
            .timeout(Duration::from_secs(2))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => tracing::info!("unregistered from the master"),
            Ok(r) => tracing::warn!(status = %r.status(), "unregister refused"),
            Err(e) => tracing::warn!(error = %e, "unregister failed"),
        }
    }
}
