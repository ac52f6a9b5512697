//! The master: registry of slaves, load balancer, token issuer, and the pages.

pub mod issuer;
pub mod metrics;
pub mod registry;
pub mod routes;
pub mod web;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use common::api::MirrorOrder;
use common::secret::ClusterSecret;
use common::token::SigningKey;

use crate::issuer::TokenIssuer;
use crate::metrics::MasterMetrics;
use crate::registry::{Registry, Thresholds, Transition};

#[derive(Debug, Clone)]
pub struct MasterConfig {
    pub bind: SocketAddr,
    pub secret: ClusterSecret,
    pub key_path: PathBuf,
    pub issuer: String,
    /// Teachers log in with this; `None` disables the teacher role.
    pub teacher_credential: Option<String>,
    pub heartbeat_interval: Duration,
    pub thresholds: Thresholds,
    pub token_ttl: Duration,
    pub publish_token_ttl: Duration,
    pub max_nodes: usize,
    pub http: common::http::HttpLimits,
}

impl MasterConfig {
    pub fn new(bind: SocketAddr, secret: ClusterSecret, key_path: PathBuf) -> Self {
        Self {
            bind,
            secret,
            key_path,
            issuer: "classcast".into(),
            teacher_credential: None,
            heartbeat_interval: Duration::from_secs(5),
            thresholds: Thresholds::default(),
            token_ttl: Duration::from_secs(3600),
            publish_token_ttl: Duration::from_secs(12 * 3600),
            max_nodes: 1024,
            http: Default::default(),
        }
    }
}

/// Everything a handler needs, cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub cfg: MasterConfig,
    pub secret: ClusterSecret,
    pub registry: Registry,
    pub issuer: TokenIssuer,
    pub metrics: MasterMetrics,
    pub http: reqwest::Client,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub fn new(cfg: MasterConfig) -> anyhow::Result<Self> {
        let key = SigningKey::load_or_generate(&cfg.key_path)?;
        let issuer = TokenIssuer::new(
            key,
            cfg.issuer.clone(),
            cfg.token_ttl,
            cfg.publish_token_ttl,
        );
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(3))
            .connect_timeout(Duration::from_secs(2))
            .build()?;
        Ok(Self(Arc::new(Inner {
            secret: cfg.secret.clone(),
            registry: Registry::new(cfg.thresholds.clone(), cfg.max_nodes),
            issuer,
            metrics: MasterMetrics::new(),
            http,
            cfg,
        })))
    }

    pub fn count_transition(&self, t: &Transition) {
        let to = t.to.map(|s| s.as_str()).unwrap_or("removed");
        self.metrics
            .status_transitions
            .with_label_values(&[to])
            .inc();
    }

    pub fn log_transition(&self, t: &Transition) {
        let from = t.from.map(|s| s.as_str()).unwrap_or("new");
        let to = t.to.map(|s| s.as_str()).unwrap_or("removed");
        tracing::info!(node_id = %t.node_id, from, to, "node status changed");
        self.count_transition(t);
    }

    /// Tells every other slave about a stream start or end, in the background. A slave that
    /// accepts starts mirroring at once, so routing may count it as serving the stream.
    pub fn fan_out_order(&self, order: MirrorOrder) {
        for (node_id, url) in self.registry.peers(&order.origin_node_id) {
            let st = self.clone();
            let order = order.clone();
            tokio::spawn(async move {
                let res = st
                    .http
                    .post(format!("{}/internal/mirror", url.trim_end_matches('/')))
                    .header("authorization", st.secret.bearer())
                    .json(&order)
                    .send()
                    .await;
                match res {
                    Ok(r) if r.status().is_success() => {
                        if order.live {
                            st.registry.mark_mirroring(&node_id, &order.path);
                        }
                    }
                    Ok(r) => {
                        tracing::warn!(%node_id, status = %r.status(), path = %order.path, "mirror order refused")
                    }
                    Err(e) => {
                        tracing::warn!(%node_id, error = %e, path = %order.path, "mirror order failed")
                    }
                }
            });
        }
    }

    pub fn router(&self) -> Router {
        Router::new()
            .merge(routes::cluster::router())
            .route("/api/token", post(routes::token::issue_token))
            .route("/.well-known/jwks.json", get(jwks))
            .route("/health", get(health))
            .route("/metrics", get(metrics))
            .merge(web::router())
            .layer(DefaultBodyLimit::max(common::MAX_JSON_BODY))
            .layer(tower_http::cors::CorsLayer::permissive())
            .with_state(self.clone())
    }
}

async fn jwks(State(st): State<AppState>) -> impl IntoResponse {
    axum::Json(st.issuer.key().jwks())
}

async fn health(State(st): State<AppState>) -> impl IntoResponse {
    let n = st.registry.cluster_nodes();
    axum::Json(serde_json::json!({
        "status": "ok",
        "role": "master",
        "version": common::VERSION,
        "nodes": n.total_nodes,
        "healthy_nodes": n.healthy_nodes,
    }))
}

async fn metrics(State(st): State<AppState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        st.metrics.render(&st.registry),
    )
}

/// Marks silent slaves Offline (and later forgets them), on a tick short enough for the
/// configured timeout.
pub fn spawn_sweeper(st: AppState) -> tokio::task::JoinHandle<()> {
    let period = (st.cfg.thresholds.offline_after / 10)
        .clamp(Duration::from_millis(50), Duration::from_secs(1));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            for t in st.registry.sweep(Instant::now()) {
                if t.to.is_none() {
                    tracing::info!(node_id = %t.node_id, "dropping a node offline past the grace period");
                }
                st.log_transition(&t);
            }
        }
    })
}

/// Runs the master on `listener` until `shutdown` resolves.
pub async fn serve(
    cfg: MasterConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let st = AppState::new(cfg)?;
    let sweeper = spawn_sweeper(st.clone());
    tracing::info!(addr = %listener.local_addr()?, "master listening");
    let res = axum::serve(
        listener,
        st.router()
            .into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await;
    sweeper.abort();
    Ok(res?)
}
