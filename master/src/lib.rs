//! The master: registry of slaves, load balancer, token issuer, and the pages.

pub mod issuer;
pub mod metrics;
pub mod ratelimit;
pub mod registry;
pub mod routes;
pub mod state;
pub mod web;

use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use common::api::paths;

pub use crate::state::{AppState, Inner, MasterConfig};

/// Only `POST /api/token` answers other origins, and only the configured ones (the pages
/// are same-origin and need no grant); the cluster API, the views and the metrics answer
/// no preflight at all, so a page a student opens cannot use the student's browser on them.
pub fn router(st: &AppState) -> Router {
    // Other masters' pages fall back to us when their master is down.
    let allowed: std::collections::HashSet<String> = st
        .cfg
        .cors_origins
        .iter()
        .chain(&st.cfg.masters)
        .cloned()
        .collect();
    let token_cors = tower_http::cors::CorsLayer::new()
        .allow_origin(tower_http::cors::AllowOrigin::predicate(move |o, _| {
            o.to_str().is_ok_and(|o| allowed.contains(o))
        }))
        .allow_methods([axum::http::Method::POST])
        .allow_headers([axum::http::header::CONTENT_TYPE])
        .max_age(Duration::from_secs(600));
    Router::new()
        .merge(routes::cluster::router())
        .merge(routes::recordings::router())
        .route(
            paths::TOKEN,
            post(routes::token::issue_token).layer(token_cors),
        )
        .route(paths::OBS_GOLIVE, post(routes::obs::golive))
        .route(paths::MASTERS, get(masters))
        .route(paths::JWKS, get(jwks))
        .route(paths::HEALTH, get(health))
        .route(paths::METRICS, get(metrics))
        .merge(web::router(st.clone()))
        .layer(DefaultBodyLimit::max(common::MAX_JSON_BODY))
        .with_state(st.clone())
}

/// Every master of the cluster, for the pages' fallback.
async fn masters(State(st): State<AppState>) -> impl IntoResponse {
    axum::Json(serde_json::json!({ "masters": st.cfg.masters }))
}

async fn jwks(State(st): State<AppState>) -> impl IntoResponse {
    axum::Json(st.issuer.jwks())
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
        st.metrics.render(&st.registry) + &st.conns.counters.render("classcast_master"),
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
/// With `https` (a listener and its TLS acceptor), `listener` only redirects to it.
pub async fn serve(
    cfg: MasterConfig,
    listener: tokio::net::TcpListener,
    https: Option<common::listeners::Https>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let st = AppState::new(cfg)?;
    let sweeper = spawn_sweeper(st.clone());
    let https_addr = match &https {
        Some(h) => Some(h.listener.local_addr()?),
        None => None,
    };
    tracing::info!(addr = %listener.local_addr()?, https = ?https_addr, max_connections = st.conns.max(), "master listening");
    let res = common::listeners::serve_node(
        listener,
        https,
        router(&st),
        st.cfg.http.clone(),
        st.conns.clone(),
        shutdown,
    )
    .await;
    sweeper.abort();
    Ok(res?)
}
