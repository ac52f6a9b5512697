//! Recorded classes: the list (from the slaves' heartbeats), which slave holds one (for
//! edges), and deletion by a teacher (the holder deletes its files, every other slave drops
//! what it cached).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use common::ApiError;
use common::api::{RecordingInfo, RecordingOrigin, paths};
use common::error::JsonBody;
use serde::{Deserialize, Serialize};

use super::cluster::ClusterPeer;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(paths::RECORDINGS, get(list))
        .route(paths::RECORDING_DELETE, post(delete))
        .route(paths::RECORDING_ORIGIN, get(origin))
}

#[derive(Debug, Serialize)]
struct Listed {
    #[serde(flatten)]
    info: RecordingInfo,
    node_id: String,
}

/// Every recording of the cluster, newest first.
async fn list(State(st): State<AppState>) -> Json<serde_json::Value> {
    let mut all: Vec<Listed> = st
        .registry
        .snapshot()
        .into_iter()
        .flat_map(|n| {
            let node = n.info.node_id.clone();
            n.stats.recordings.into_iter().map(move |info| Listed {
                info,
                node_id: node.clone(),
            })
        })
        .collect();
    all.sort_by_key(|r| std::cmp::Reverse(r.info.started_ms));
    Json(serde_json::json!({ "recordings": all }))
}

#[derive(Deserialize)]
struct IdQuery {
    id: String,
}

async fn origin(
    State(st): State<AppState>,
    _: ClusterPeer,
    Query(q): Query<IdQuery>,
) -> Result<Json<RecordingOrigin>, ApiError> {
    let (node_id, internal_url, _) = st
        .registry
        .recording_holder(&q.id)
        .ok_or_else(|| ApiError::not_found("recording_not_found", "no node holds it"))?;
    Ok(Json(RecordingOrigin {
        node_id,
        internal_url,
    }))
}

#[derive(Deserialize)]
struct DeleteRequest {
    id: String,
    credential: Option<String>,
}

async fn delete(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: axum::http::HeaderMap,
    body: Result<JsonBody<DeleteRequest>, ApiError>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let JsonBody(req) = body?;
    if super::teacher::cross_origin(&headers) {
        return Err(ApiError::forbidden(
            "recordings are deleted from this master's own teacher page only",
        ));
    }
    super::teacher::check_teacher(&st, peer.ip(), req.credential.as_deref())?;
    if !common::valid_recording_id(&req.id) {
        return Err(ApiError::bad_request("bad recording id"));
    }
    let (holder_id, _, _) = st
        .registry
        .recording_holder(&req.id)
        .ok_or_else(|| ApiError::not_found("recording_not_found", "no node holds it"))?;
    let mut deleted = false;
    for (node_id, url) in st.registry.peers("") {
        let order = serde_json::json!({ "id": req.id, "delete": node_id == holder_id });
        let r = st
            .http
            .post(format!(
                "{}{}",
                url.trim_end_matches('/'),
                paths::RECORDING_FORGET
            ))
            .header(axum::http::header::AUTHORIZATION, st.cfg.secret.bearer())
            .json(&order)
            .send()
            .await;
        match r {
            Ok(r) if r.status().is_success() => deleted |= node_id == holder_id,
            Ok(r) => {
                tracing::warn!(%node_id, status = %r.status(), "recording delete order refused")
            }
            Err(e) => tracing::warn!(%node_id, error = %e, "recording delete order failed"),
        }
    }
    if !deleted {
        return Err(ApiError::unavailable(
            "holder_unreachable",
            "the slave holding the recording did not delete it; try again",
        ));
    }
    st.registry.forget_recording(&req.id);
    tracing::info!(id = %req.id, %holder_id, %peer, "recording deleted by a teacher");
    Ok(Json(serde_json::json!({ "ok": true })))
}
