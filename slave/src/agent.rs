//! The slave's side of the control plane: register (with backoff until the master is up),
//! heartbeat with real figures, re-register when the master forgets us, announce streams at
//! once, unregister on shutdown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::api::{Heartbeat, NodeStats, RegisterRequest, RegisterResponse, StreamReport};

use crate::ctx::SlaveCtx;
use crate::hls::store::Source;
use crate::master_client::{HeartbeatError, MasterClient};

/// The heartbeat loop towards one master (a slave runs one per master).
pub struct Agent {
    ctx: Arc<SlaveCtx>,
    master: MasterClient,
    last_sample: Instant,
    last_bytes_out: u64,
    last_ingest: u64,
}

impl Agent {
    pub fn new(ctx: Arc<SlaveCtx>, master: MasterClient) -> Self {
        Self {
            ctx,
            master,
            last_sample: Instant::now(),
            last_bytes_out: 0,
            last_ingest: 0,
        }
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
        let r = self.master.register(&self.register_request()).await?;
        self.ctx
            .set_master_keys(self.master.url(), &r.issuer, r.jwks.keys.clone())?;
        self.ctx.add_page_origins(&r.page_origins);
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
                    tracing::info!(node_id = %self.ctx.cfg.node_id, master = %self.master.url(), "registered with the master");
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
            .classes()
            .iter()
            .filter(|e| !e.stream.is_ended())
            .map(|e| StreamReport {
                path: e.stream.path.clone(),
                origin: e.source == Source::Origin,
                upstream: match &e.source {
                    Source::Edge { origin_node } => Some(origin_node.clone()),
                    Source::Origin => None,
                },
                bframes: e.stream.frames.has_bframes(),
                hls_only_codec: !common::api::webrtc_codecs(&e.stream.read().codecs),
                publisher: match e.source {
                    Source::Origin => e.stream.publisher_kind().to_string(),
                    Source::Edge { .. } => String::new(),
                },
            })
            .collect();
        ctx.metrics.streams.set(streams.len() as i64);
        NodeStats {
            connections,
            cpu,
            memory,
            egress_bytes_per_sec: egress,
            ingest_bytes_per_sec: ingest_rate,
            streams,
            recordings: ctx.recordings.infos(),
            webrtc: ctx
                .webrtc_load
                .enabled
                .load(std::sync::atomic::Ordering::Relaxed)
                .then(|| common::api::WebRtcStats {
                    sessions: ctx.webrtc_load.sessions(),
                    capacity: ctx.cfg.webrtc.max_viewers,
                }),
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
            match self.master.heartbeat(&hb).await {
                Ok(()) => {}
                Err(HeartbeatError::UnknownNode) => {
                    tracing::info!("master does not know this node; re-registering");
                    if self.register_once().await.is_ok() {
                        tick.reset_immediately();
                    }
                }
                Err(e) => tracing::warn!(error = %e, "heartbeat did not land"),
            }
        }
    }
}
