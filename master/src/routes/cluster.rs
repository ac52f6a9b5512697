//! Intra-cluster API: registration, heartbeats, stream announcements, and the cluster views.

use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use common::api::{
    Heartbeat, HeartbeatResponse, MirrorOrder, RegisterRequest, RegisterResponse, StreamAnnounce,
    UnregisterRequest, paths,
};
use common::error::JsonBody;
use common::{ApiError, stream_path};

use crate::registry::HeartbeatOutcome;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(paths::REGISTER, post(register))
        .route(paths::HEARTBEAT, post(heartbeat))
        .route(paths::UNREGISTER, post(unregister))
        .route(paths::ANNOUNCE, post(announce))
        .route(paths::NODES, get(nodes))
        .route(paths::STREAMS, get(streams))
        .route(paths::ORIGIN, get(origin))
        .route(paths::BEST_NODE, get(best_node))
        .route(paths::MOVE_PUBLISHER, post(move_publisher))
        .route(paths::PROMETHEUS_TARGETS, get(prometheus_targets))
}

/// A caller holding the cluster secret (another node or an operator's script); 401 otherwise,
/// with a log line naming the route.
pub struct ClusterPeer;

impl FromRequestParts<AppState> for ClusterPeer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, ApiError> {
        st.cfg.secret.check(&parts.headers).inspect_err(|e| {
            tracing::warn!(route = %parts.uri.path(), error = %e, "refused a cluster call without a valid cluster secret");
        })?;
        Ok(ClusterPeer)
    }
}

/// Longest URL a node may register (scheme, host, port and a path prefix fit easily).
const MAX_URL_LEN: usize = 512;
const MAX_NODE_NAME_BYTES: usize = 128;
const MAX_VERSION_BYTES: usize = 64;

fn valid_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn valid_base_url(u: &str, schemes: &[&str]) -> bool {
    u.len() <= MAX_URL_LEN
        && url::Url::parse(u).is_ok_and(|p| schemes.contains(&p.scheme()) && p.host().is_some())
}

/// Free text shown on the pages: at most `max_bytes` of UTF-8 (refused whole when longer, never
/// cut, so never inside a character), no control characters.
fn valid_text(s: &str, max_bytes: usize) -> bool {
    s.len() <= max_bytes && !s.chars().any(char::is_control)
}

async fn register(
    State(st): State<AppState>,
    _: ClusterPeer,
    body: Result<JsonBody<RegisterRequest>, ApiError>,
) -> Result<Json<RegisterResponse>, ApiError> {
    let JsonBody(req) = body?;
    if !valid_node_id(&req.node_id) {
        return Err(ApiError::bad_request(
            "node_id must be 1–64 chars of [A-Za-z0-9._-]",
        ));
    }
    if !valid_text(&req.node_name, MAX_NODE_NAME_BYTES) {
        return Err(ApiError::bad_request(format!(
            "node_name must be at most {MAX_NODE_NAME_BYTES} bytes of UTF-8, with no control characters"
        )));
    }
    if !valid_text(&req.version, MAX_VERSION_BYTES) {
        return Err(ApiError::bad_request(format!(
            "version must be at most {MAX_VERSION_BYTES} bytes of UTF-8, with no control characters"
        )));
    }
    if !valid_base_url(&req.public_url, &["http", "https"]) {
        return Err(ApiError::bad_request(
            "public_url must be an absolute http(s) URL of at most 512 bytes",
        ));
    }
    if let Some(u) = &req.internal_url
        && !valid_base_url(u, &["http", "https"])
    {
        return Err(ApiError::bad_request(
            "internal_url must be an absolute http(s) URL of at most 512 bytes",
        ));
    }
    if !valid_base_url(&req.rtmp_url, &["rtmp", "rtmps"]) {
        return Err(ApiError::bad_request(
            "rtmp_url must be an absolute rtmp:// URL of at most 512 bytes",
        ));
    }
    if req.max_connections == 0 {
        return Err(ApiError::bad_request("max_connections must be positive"));
    }
    let node_id = req.node_id.clone();
    let public_url = req.public_url.clone();
    let t = st.registry.register(req).map_err(|e| {
        tracing::warn!(%node_id, "{e}");
        ApiError::unavailable("cluster_full", e.to_string())
    })?;
    match t {
        Some(t) if t.from.is_none() => {
            tracing::info!(%node_id, %public_url, "slave registered");
            st.count_transition(&t);
        }
        Some(t) => st.log_transition(&t),
        None => tracing::debug!(%node_id, "slave re-registered"),
    }
    let streams = st.registry.live_orders(&node_id);
    for o in &streams {
        st.registry.mark_mirroring(&node_id, &o.path);
    }
    Ok(Json(RegisterResponse {
        ok: true,
        node_id,
        public_key: st.issuer.key().public_x(),
        jwks: st.issuer.jwks(),
        issuer: st.issuer.issuer.clone(),
        heartbeat_interval_ms: st.cfg.heartbeat_interval.as_millis() as u64,
        streams,
        page_origins: st.page_origins(),
    }))
}

async fn heartbeat(
    State(st): State<AppState>,
    _: ClusterPeer,
    body: Result<JsonBody<Heartbeat>, ApiError>,
) -> Result<Json<HeartbeatResponse>, ApiError> {
    let JsonBody(mut hb) = body?;
    // A heartbeat is small; a node claiming thousands of streams is broken or hostile.
    hb.stats.streams.truncate(256);
    hb.stats
        .streams
        .retain(|s| stream_path(&s.path).as_deref() == Some(s.path.as_str()));
    hb.stats
        .recordings
        .truncate(common::api::MAX_REPORTED_RECORDINGS);
    hb.stats.recordings.retain(|r| {
        common::valid_recording_id(&r.id)
            && stream_path(&r.path).as_deref() == Some(r.path.as_str())
    });
    match st.registry.heartbeat(&hb.node_id, hb.stats) {
        HeartbeatOutcome::Accepted(status, t) => {
            st.metrics.heartbeats.with_label_values(&["ok"]).inc();
            if let Some(t) = t {
                st.log_transition(&t);
            }
            Ok(Json(HeartbeatResponse { ok: true, status }))
        }
        HeartbeatOutcome::UnknownNode => {
            st.metrics
                .heartbeats
                .with_label_values(&["unknown_node"])
                .inc();
            tracing::info!(node_id = %hb.node_id, "heartbeat from an unknown node; asking it to re-register");
            Err(ApiError::not_found(
                "unknown_node",
                "this master does not know the node: re-register at POST /cluster/register",
            ))
        }
    }
}

async fn unregister(
    State(st): State<AppState>,
    _: ClusterPeer,
    body: Result<JsonBody<UnregisterRequest>, ApiError>,
) -> Result<impl IntoResponse, ApiError> {
    let JsonBody(req) = body?;
    match st.registry.unregister(&req.node_id) {
        Some(t) => {
            tracing::info!(node_id = %req.node_id, "slave unregistered");
            st.count_transition(&t);
            Ok(Json(serde_json::json!({"ok": true})))
        }
        None => Err(ApiError::not_found("unknown_node", "no such node")),
    }
}

async fn announce(
    State(st): State<AppState>,
    _: ClusterPeer,
    body: Result<JsonBody<StreamAnnounce>, ApiError>,
) -> Result<impl IntoResponse, ApiError> {
    let JsonBody(a) = body?;
    let path = stream_path(&a.path).ok_or_else(|| ApiError::bad_request("bad stream path"))?;
    if !st.registry.announce(&a.node_id, &path, a.live) {
        return Err(ApiError::not_found(
            "unknown_node",
            "re-register at POST /cluster/register",
        ));
    }
    tracing::info!(node_id = %a.node_id, %path, live = a.live, "stream announced");
    let origin_url = st.registry.internal_url(&a.node_id).unwrap_or_default();
    let order = MirrorOrder {
        path,
        origin_node_id: a.node_id.clone(),
        origin_url,
        live: a.live,
    };
    st.fan_out_order(order);
    Ok(Json(serde_json::json!({"ok": true})))
}

async fn nodes(State(st): State<AppState>) -> impl IntoResponse {
    Json(st.registry.cluster_nodes())
}

async fn streams(State(st): State<AppState>) -> impl IntoResponse {
    Json(st.registry.cluster_streams())
}

async fn best_node(State(st): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let s = st
        .registry
        .select(crate::registry::StreamFilter::Any, None, false)
        .ok_or_else(|| ApiError::unavailable("no_node", "no slave can take a viewer now"))?;
    Ok((
        StatusCode::OK,
        Json(serde_json::json!({
            "node_id": s.node_id,
            "node_name": s.node_name,
            "public_url": s.public_url,
            "load_percentage": s.load_percentage,
            "status": s.status,
        })),
    ))
}

/// A draining origin's publisher moves (E-RTMP Reconnect Request): the least-loaded other
/// slave, and a publish key for the class there, for the same teacher and recording choice.
async fn move_publisher(
    State(st): State<AppState>,
    _: ClusterPeer,
    JsonBody(m): JsonBody<common::api::MovePublisher>,
) -> Result<Json<common::api::PublisherMove>, ApiError> {
    let path = stream_path(&m.path).ok_or_else(|| ApiError::bad_request("bad stream path"))?;
    let to = st
        .registry
        .select(crate::registry::StreamFilter::Any, Some(&m.node_id), false)
        .ok_or_else(|| ApiError::unavailable("no_node", "no other slave can take the class"))?;
    let key = st
        .issuer
        .issue_publish(&m.user, &to.node_id, &path, m.rec)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    tracing::info!(%path, from = %m.node_id, to = %to.node_id, "publisher moves with its draining origin");
    Ok(Json(common::api::PublisherMove {
        node_id: to.node_id,
        rtmp_url: to.rtmp_url,
        key,
    }))
}

#[derive(serde::Deserialize)]
struct OriginQuery {
    path: String,
}

/// Where an edge pulls `path` from, for a viewer that arrived before the mirror order.
async fn origin(
    State(st): State<AppState>,
    _: ClusterPeer,
    axum::extract::Query(q): axum::extract::Query<OriginQuery>,
) -> Result<Json<MirrorOrder>, ApiError> {
    let path = stream_path(&q.path).ok_or_else(|| ApiError::bad_request("bad stream path"))?;
    let o = st
        .registry
        .origin_of(&path)
        .ok_or_else(|| ApiError::not_found("stream_not_live", format!("{path} is not live")))?;
    let origin_url = st.registry.internal_url(&o.node_id).unwrap_or(o.public_url);
    Ok(Json(MirrorOrder {
        path,
        origin_node_id: o.node_id,
        origin_url,
        live: true,
    }))
}

/// Prometheus HTTP service discovery: every slave not Offline, scraped at its internal URL.
async fn prometheus_targets(State(st): State<AppState>) -> impl IntoResponse {
    let targets: Vec<serde_json::Value> = st
        .registry
        .snapshot()
        .into_iter()
        .filter(|n| n.status != common::api::NodeStatus::Offline)
        .filter_map(|n| {
            let base = n.info.internal_url.clone().unwrap_or_else(|| n.info.public_url.clone());
            let u = url::Url::parse(&base).ok()?;
            let hostport = format!("{}:{}", u.host_str()?, u.port_or_known_default()?);
            Some(serde_json::json!({
                "targets": [hostport],
                "labels": {"node_id": n.info.node_id, "node_name": n.info.node_name, "role": "slave"}
            }))
        })
        .collect();
    Json(targets)
}
