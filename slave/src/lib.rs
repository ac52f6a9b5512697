//! A slave: RTMP ingest → CMAF packaging → in-memory LL-HLS, token-checked serving, edge
//! mirroring, and the cluster agent. Modules follow the data path:
//! `ingest` → `media` → `hls` → `serve`, with `mirror` feeding `hls` from another slave.

pub mod agent;
pub mod hls;
pub mod ingest;
pub mod media;
pub mod metrics;
pub mod mirror;
pub mod serve;
pub mod tickets;
pub mod viewers;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use common::ApiError;
use common::api::MirrorOrder;
use common::error::JsonBody;
use common::secret::ClusterSecret;
use common::sysstats::SysStats;
use common::token::TokenVerifier;
use parking_lot::RwLock;

use crate::hls::store::{HlsConfig, Source, StreamStore};
use crate::ingest::rtmp::RtmpLimits;
use crate::metrics::SlaveMetrics;
use crate::viewers::ViewerTracker;

#[derive(Debug, Clone)]
pub struct RtmpConfig {
    pub limits: RtmpLimits,
    pub handshake_timeout: Duration,
    /// Silence this long closes a publishing connection.
    pub idle_timeout: Duration,
    /// From accept to an accepted publish.
    pub publish_timeout: Duration,
    pub max_connections: usize,
}

impl Default for RtmpConfig {
    fn default() -> Self {
        Self {
            limits: RtmpLimits::default(),
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            publish_timeout: Duration::from_secs(10),
            max_connections: 128,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SlaveConfig {
    pub node_id: String,
    pub node_name: String,
    pub master_url: String,
    pub secret: ClusterSecret,
    /// Base URL browsers use for HLS.
    pub public_url: String,
    /// Base URL other slaves use to pull streams.
    pub internal_url: String,
    /// `rtmp://host:port/live`, what teachers paste into OBS.
    pub rtmp_url: String,
    pub max_connections: u32,
    /// Overrides the interval the master asks for (tests).
    pub heartbeat_interval: Option<Duration>,
    pub hls: HlsConfig,
    pub rtmp: RtmpConfig,
    pub viewer_window: Duration,
    /// Edge of an edge: pull every stream from this slave instead of the origin.
    pub upstream_url: Option<String>,
    pub http: common::http::HttpLimits,
    /// Page origins browsers may play from besides the master's (an LMS embedding the player).
    pub cors_origins: Vec<String>,
    /// Blocking requests parked at once.
    pub max_parked: usize,
}

/// Everything the slave's tasks share.
pub struct SlaveCtx {
    pub cfg: SlaveConfig,
    pub store: StreamStore,
    pub viewers: ViewerTracker,
    pub metrics: SlaveMetrics,
    pub sys: SysStats,
    pub http: reqwest::Client,
    pub tickets: tickets::TicketKey,
    /// The open HTTP connections (bounded).
    pub conns: Arc<common::http::ConnTable>,
    pub parked: serve::ParkedRequests,
    /// Streams the master said are not live, and when it said so: asked again only after
    /// [`MISSING_STREAM_TTL`], however many viewers ask for them meanwhile.
    pub missing: dashmap::DashMap<String, std::time::Instant>,
    verifier: RwLock<Option<TokenVerifier>>,
    page_origins: RwLock<std::collections::HashSet<String>>,
}

/// How long a slave remembers that a stream is not live anywhere.
pub const MISSING_STREAM_TTL: Duration = Duration::from_secs(1);

impl SlaveCtx {
    pub fn new(cfg: SlaveConfig) -> anyhow::Result<Arc<Self>> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            .build()?;
        Ok(Arc::new(Self {
            tickets: tickets::TicketKey::derive(&cfg.secret, &cfg.node_id),
            viewers: ViewerTracker::new(cfg.viewer_window),
            conns: common::http::ConnTable::for_limits(&cfg.http),
            parked: serve::ParkedRequests::new(cfg.max_parked),
            missing: Default::default(),
            page_origins: RwLock::new(Self::own_origins(&cfg)),
            cfg,
            store: StreamStore::default(),
            metrics: SlaveMetrics::new(),
            sys: SysStats::default(),
            http,
            verifier: RwLock::new(None),
        }))
    }

    /// The master's public key arrives with registration; until then nothing can be verified.
    pub fn verifier(&self) -> Option<TokenVerifier> {
        self.verifier.read().clone()
    }

    pub fn set_verifier(&self, v: TokenVerifier) {
        *self.verifier.write() = Some(v);
    }

    /// The master's origin as we reach it and our configured extras: allowed before the master
    /// tells us its public one.
    fn own_origins(cfg: &SlaveConfig) -> std::collections::HashSet<String> {
        common::http::origin_of(&cfg.master_url)
            .into_iter()
            .chain(cfg.cors_origins.iter().cloned())
            .collect()
    }

    /// The page origins the master announced at registration, added to our own.
    pub fn set_page_origins(&self, from_master: &[String]) {
        let mut all = Self::own_origins(&self.cfg);
        all.extend(
            from_master
                .iter()
                .filter_map(|o| common::http::origin_of(o)),
        );
        *self.page_origins.write() = all;
    }

    pub fn allows_origin(&self, origin: &str) -> bool {
        self.page_origins.read().contains(origin)
    }

    /// Only the viewer endpoints (`/live/…`) answer browsers of other origins, and only the
    /// cluster's page origins; `/internal`, `/metrics` and `/health` grant no origin at all.
    pub fn router(self: &Arc<Self>) -> Router {
        let ctx = self.clone();
        let cors = tower_http::cors::CorsLayer::new()
            .allow_origin(tower_http::cors::AllowOrigin::predicate(move |o, _| {
                o.to_str().is_ok_and(|o| ctx.allows_origin(o))
            }))
            .allow_methods([axum::http::Method::GET, axum::http::Method::HEAD])
            .allow_headers([axum::http::header::RANGE])
            .max_age(Duration::from_secs(600));
        Router::new()
            .merge(serve::router().layer(cors))
            .route("/health", get(health))
            .route("/metrics", get(metrics))
            .route("/internal/mirror", post(mirror_order))
            .layer(DefaultBodyLimit::max(common::MAX_JSON_BODY))
            .with_state(self.clone())
    }

    /// Ends every stream published here, telling the master, as a graceful shutdown should.
    pub async fn shutdown(self: &Arc<Self>) {
        for e in self.store.list() {
            if e.source == Source::Origin && !e.stream.is_ended() {
                e.stream.end();
                self.announce(&e.stream.path, false);
            }
        }
        // Let the announcements go out before the unregister.
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.unregister().await;
    }
}

async fn health(State(ctx): State<Arc<SlaveCtx>>) -> impl IntoResponse {
    axum::Json(serde_json::json!({
        "status": "ok",
        "role": "slave",
        "node_id": ctx.cfg.node_id,
        "registered": ctx.verifier().is_some(),
        "viewers": ctx.viewers.count(),
        "streams": ctx.store.list().iter().filter(|e| !e.stream.is_ended()).map(|e| e.stream.path.clone()).collect::<Vec<_>>(),
        "version": common::VERSION,
    }))
}

async fn metrics(State(ctx): State<Arc<SlaveCtx>>) -> impl IntoResponse {
    ctx.metrics.viewers.set(ctx.viewers.count() as i64);
    ctx.metrics.parked.set(ctx.parked.count() as i64);
    let mut body = ctx.metrics.render();
    body.push_str(&ctx.conns.counters.render("classcast_slave"));
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        body,
    )
}

async fn mirror_order(
    State(ctx): State<Arc<SlaveCtx>>,
    headers: HeaderMap,
    body: Result<JsonBody<MirrorOrder>, ApiError>,
) -> Result<impl IntoResponse, ApiError> {
    ctx.cfg.secret.check(&headers)?;
    let JsonBody(order) = body?;
    if common::stream_path(&order.path).as_deref() != Some(order.path.as_str()) {
        return Err(ApiError::bad_request("bad stream path"));
    }
    mirror::handle_order(&ctx, order);
    Ok(axum::Json(serde_json::json!({"ok": true})))
}

/// Runs a slave on the given listeners until `shutdown` resolves, then unregisters.
pub async fn serve(
    cfg: SlaveConfig,
    rtmp: tokio::net::TcpListener,
    http: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let ctx = SlaveCtx::new(cfg)?;
    tracing::info!(node_id = %ctx.cfg.node_id, rtmp = %rtmp.local_addr()?, http = %http.local_addr()?, public_url = %ctx.cfg.public_url, "slave listening");
    let ingest = tokio::spawn(ingest::run_listener(ctx.clone(), rtmp));
    let agent = tokio::spawn(agent::Agent::new(ctx.clone()).run());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(common::http::serve(
        http,
        ctx.router(),
        ctx.cfg.http.clone(),
        ctx.conns.clone(),
        async move {
            let _ = rx.await;
        },
    ));
    shutdown.await;
    tracing::info!("slave shutting down");
    ingest.abort();
    ctx.shutdown().await;
    agent.abort();
    let _ = tx.send(());
    // Blocked playlist requests would hold the graceful shutdown for seconds; cap it.
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    Ok(())
}
