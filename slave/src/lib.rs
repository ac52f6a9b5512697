//! A slave: RTMP ingest → CMAF packaging → in-memory LL-HLS, token-checked serving, edge
//! mirroring, and the cluster agent. This file only wires them; the floors, bottom up:
//! `ctx` (configuration and the shared context), `hls` (the streams held here), `ingest` and
//! `mirror` (what fills them), `serve` (HTTP), `agent` (the heartbeat loop). The media path
//! itself, without IO, is the `media` crate. No module imports one above it.

pub mod agent;
pub mod chat;
pub mod ctx;
pub mod discovery;
pub mod frame_link;
pub mod hls;
pub mod ingest;
pub mod master_client;
pub mod metrics;
pub mod mirror;
pub mod recorder;
pub mod recordings;
pub mod serve;
pub mod tickets;
pub mod viewers;
pub mod vod;
pub mod vod_cache;
pub mod webrtc;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use common::ApiError;
use common::api::{MirrorOrder, paths};
use common::error::JsonBody;

pub use crate::ctx::{MISSING_STREAM_TTL, RtmpConfig, SlaveConfig, SlaveCtx};
use crate::hls::store::Source;
use crate::serve::PeerAuth;

/// Only the viewer endpoints (`/live/…`) answer browsers of other origins, and only the
/// cluster's page origins; `/internal`, `/metrics` and `/health` grant no origin at all.
pub fn router(ctx: &Arc<SlaveCtx>) -> Router {
    router_with(ctx, None)
}

/// The router with the WebRTC engine's handle (the WHEP routes answer 404 without one).
pub fn router_with(ctx: &Arc<SlaveCtx>, whep: Option<Arc<webrtc::Whep>>) -> Router {
    let c = ctx.clone();
    let cors = tower_http::cors::CorsLayer::new()
        .allow_origin(tower_http::cors::AllowOrigin::predicate(move |o, _| {
            o.to_str().is_ok_and(|o| c.allows_origin(o))
        }))
        .allow_methods([axum::http::Method::GET, axum::http::Method::HEAD])
        .allow_headers([axum::http::header::RANGE])
        .max_age(Duration::from_secs(600));
    // The same page origins may read the timing of what they fetched (Resource Timing's
    // protocol and phases, which a cross-origin response hides without this): how a page, or
    // a test, sees that parts come over HTTP/2.
    let c = ctx.clone();
    let timing = axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            let origin = req
                .headers()
                .get(axum::http::header::ORIGIN)
                .filter(|o| o.to_str().is_ok_and(|o| c.allows_origin(o)))
                .cloned();
            async move {
                let mut resp = next.run(req).await;
                if let Some(o) = origin {
                    resp.headers_mut().insert("timing-allow-origin", o);
                }
                resp
            }
        },
    );
    Router::new()
        .merge(
            serve::router()
                .merge(vod::router())
                .layer(cors)
                .layer(timing),
        )
        .merge(vod::internal_router())
        .merge(webrtc::router(ctx, whep))
        .merge(chat::router(ctx))
        .route(frame_link::ROUTE, get(frame_link::serve))
        .route(frame_link::ROUTE_RENDITION, get(frame_link::serve))
        .route(paths::HEALTH, get(health))
        .route(paths::METRICS, get(metrics))
        .route(paths::MIRROR_ORDER, post(mirror_order))
        .layer(DefaultBodyLimit::max(common::MAX_JSON_BODY))
        .with_state(ctx.clone())
}

/// Ends every stream published here, telling the master, as a graceful shutdown should.
async fn shutdown_streams(ctx: &Arc<SlaveCtx>) {
    for e in ctx.store.list() {
        if e.source == Source::Origin && !e.stream.is_ended() {
            e.stream.end();
            if !crate::hls::store::is_rendition_path(&e.stream.path) {
                ctx.masters.announce(&e.stream.path, false);
            }
        }
    }
    // Let the announcements go out before the process ends.
    tokio::time::sleep(Duration::from_millis(100)).await;
}

async fn health(State(ctx): State<Arc<SlaveCtx>>) -> impl IntoResponse {
    axum::Json(serde_json::json!({
        "status": "ok",
        "role": "slave",
        "node_id": ctx.cfg.node_id,
        "registered": ctx.verifier().is_some(),
        "viewers": ctx.viewers.count(),
        "streams": ctx.store.classes().iter().filter(|e| !e.stream.is_ended()).map(|e| e.stream.path.clone()).collect::<Vec<_>>(),
        "version": common::VERSION,
    }))
}

async fn metrics(State(ctx): State<Arc<SlaveCtx>>) -> impl IntoResponse {
    ctx.metrics.viewers.set(ctx.viewers.count() as i64);
    ctx.metrics.parked.set(ctx.parked.count() as i64);
    let (mut playlist, mut gop, mut gop_in_parts) = (0, 0, 0);
    for e in ctx.store.list() {
        playlist += e.stream.read().held_bytes();
        let (own, shared) = e.stream.frames.gop_bytes();
        gop += own;
        gop_in_parts += shared;
    }
    let held = &ctx.metrics.media_held_bytes;
    held.with_label_values(&["playlist"]).set(playlist as i64);
    held.with_label_values(&["gop"]).set(gop as i64);
    held.with_label_values(&["gop_in_parts"])
        .set(gop_in_parts as i64);
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
    _: PeerAuth,
    body: Result<JsonBody<MirrorOrder>, ApiError>,
) -> Result<impl IntoResponse, ApiError> {
    let JsonBody(order) = body?;
    if common::stream_path(&order.path).as_deref() != Some(order.path.as_str()) {
        return Err(ApiError::bad_request("bad stream path"));
    }
    mirror::handle_order(&ctx, order);
    Ok(axum::Json(serde_json::json!({"ok": true})))
}

/// A slave's listeners. With TLS on, `http` only redirects to `https`, and RTMPS may be the
/// only way to publish (`rtmp` off).
pub struct Listeners {
    pub rtmp: Option<tokio::net::TcpListener>,
    pub rtmps: Option<(tokio::net::TcpListener, common::tls::TlsAcceptor)>,
    pub http: tokio::net::TcpListener,
    pub https: Option<common::listeners::Https>,
}

impl Listeners {
    /// Plain RTMP and HTTP only.
    pub fn plain(rtmp: tokio::net::TcpListener, http: tokio::net::TcpListener) -> Self {
        Self {
            rtmp: Some(rtmp),
            rtmps: None,
            http,
            https: None,
        }
    }
}

/// Runs a slave on the given listeners until `shutdown` resolves, then unregisters.
pub async fn serve(
    cfg: SlaveConfig,
    listeners: Listeners,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let Listeners {
        rtmp,
        rtmps,
        http,
        https,
    } = listeners;
    let ctx = SlaveCtx::new(cfg)?;
    ctx.set_finder(mirror::EdgeMirror);
    let whep = webrtc::start(&ctx).await?;
    let addr = |l: Option<&tokio::net::TcpListener>| l.and_then(|l| l.local_addr().ok());
    tracing::info!(node_id = %ctx.cfg.node_id, rtmp = ?addr(rtmp.as_ref()), rtmps = ?addr(rtmps.as_ref().map(|x| &x.0)),
        http = %http.local_addr()?, https = ?addr(https.as_ref().map(|x| &x.listener)), public_url = %ctx.cfg.public_url, "slave listening");
    let ingest = ingest::IngestThread::start(ctx.clone(), rtmp, rtmps)?;
    let retention = tokio::spawn(recorder::retention_loop(ctx.clone()));
    // One heartbeat loop per master: each master holds the whole registry on its own.
    let masters = discovery::MasterSet::new(ctx.clone())?;
    let discovery = tokio::spawn(masters.clone().run());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(common::listeners::serve_node(
        http,
        https,
        router_with(&ctx, whep),
        ctx.cfg.http.clone(),
        ctx.conns.clone(),
        async move {
            let _ = rx.await;
        },
    ));
    shutdown.await;
    // Drain: no master names this node from now on (the heartbeat loops stop first, or they
    // would re-register it), viewers' playlists answer 503 so players move to another slave,
    // and media and peers are still served for the drain time.
    tracing::info!(drain = ?ctx.cfg.drain, "slave draining: leaving the masters, sending viewers elsewhere");
    discovery.abort();
    masters.stop();
    ctx.draining
        .store(true, std::sync::atomic::Ordering::Relaxed);
    // Publishers that can reconnect (Enhanced RTMP) are asked to move to another slave the
    // master names; they ask the master while it still knows this node.
    ctx.drain_signal.send_replace(true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    ctx.masters.unregister().await;
    tokio::time::sleep(ctx.cfg.drain).await;
    tracing::info!("slave shutting down");
    ingest.stop().await;
    retention.abort();
    shutdown_streams(&ctx).await;
    let _ = tx.send(());
    // Blocked playlist requests would hold the graceful shutdown for seconds; cap it.
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    Ok(())
}
