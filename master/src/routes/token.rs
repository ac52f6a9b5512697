//! `POST /api/token`: picks a slave for a viewer and mints a token bound to it.

use std::net::SocketAddr;

use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, header};
use common::api::{TokenRequest, TokenResponse};
use common::error::JsonBody;
use common::token::{Action, Role};
use common::{ApiError, stream_path};

use crate::registry::{Selected, StreamFilter};
use crate::state::AppState;

/// Names students type: letters (any script), digits, space and a few separators.
pub fn valid_user_id(id: &str) -> bool {
    let n = id.chars().count();
    (1..=64).contains(&n)
        && id.trim() == id
        && id
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_' | '.' | '@'))
}

/// The credential a request carries: the `credential` field, or `Authorization: Bearer`.
fn credential<'a>(req: &'a TokenRequest, headers: &'a HeaderMap) -> Option<&'a str> {
    req.credential.as_deref().or_else(|| {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
    })
}

pub async fn issue_token(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<JsonBody<TokenRequest>, ApiError>,
) -> Result<Json<TokenResponse>, ApiError> {
    let peer = peer.ip();
    let refuse = |reason: &'static str, e: ApiError| {
        st.metrics.token_refusals.with_label_values(&[reason]).inc();
        tracing::info!(%peer, reason, error = %e, "token request refused");
        e
    };
    if let Err(wait) = st.token_limiter.check(peer) {
        return Err(refuse(
            "rate_limited",
            ApiError::too_many(
                "rate_limited",
                "too many tokens from this address; try again shortly",
                wait,
            ),
        ));
    }
    let JsonBody(req) = body.map_err(|e| refuse("bad_request", e))?;
    if !valid_user_id(&req.user_id) {
        return Err(refuse(
            "bad_user_id",
            ApiError::bad_request("user_id must be 1–64 letters, digits, spaces or -_.@"),
        ));
    }
    // A recorded class: any role, no live stream involved (a teacher's still needs the password
    // below, so only students skip it here).
    if let Some(id) = req.recording.as_deref()
        && req.role == Role::Student
    {
        return recording_token(&st, &req, id).map_err(|e| refuse("recording", e));
    }
    let stream = req.stream.as_deref().unwrap_or("live/stream");
    let path = stream_path(stream).ok_or_else(|| {
        refuse(
            "bad_stream",
            ApiError::bad_request("stream must look like live/<name>, name of [A-Za-z0-9_-]"),
        )
    })?;
    let name = path.trim_start_matches("live/").to_string();

    // The teacher login and monitor tokens are for our own pages and scripts, never for a page
    // of another site that a student's browser happens to run.
    if req.role != Role::Student && super::teacher::cross_origin(&headers) {
        return Err(refuse(
            "cross_origin",
            ApiError::forbidden("teacher and monitor tokens are not issued to other sites' pages"),
        ));
    }
    if req.role == Role::Teacher {
        super::teacher::check_teacher(&st, peer, credential(&req, &headers))?;
    }
    // A monitor token reads any stream on any node: operators only.
    if req.role == Role::Monitor
        && !credential(&req, &headers).is_some_and(|c| st.cfg.secret.matches(c))
    {
        return Err(refuse(
            "monitor_credential",
            ApiError::unauthorized("a monitor token needs the cluster secret as its credential"),
        ));
    }

    if let Some(id) = req.recording.as_deref() {
        return recording_token(&st, &req, id).map_err(|e| refuse("recording", e));
    }

    let chosen: Selected = match req.role {
        // A teacher goes back to the stream's current origin, so a reconnect within the grace
        // period continues the same stream; otherwise to the least-loaded node.
        // A teacher who says the origin failed (`exclude`) gets another node: until the failed
        // origin is marked Offline it would otherwise be handed out again.
        Role::Teacher => st
            .registry
            .origin_of(&path)
            .filter(|o| Some(o.node_id.as_str()) != req.exclude.as_deref())
            .or_else(|| {
                st.registry
                    .select(StreamFilter::Any, req.exclude.as_deref(), false)
            }),
        Role::Student => {
            if !st.registry.is_live_anywhere(&path) {
                return Err(refuse(
                    "not_live",
                    ApiError::not_found(
                        "stream_not_live",
                        format!("{path} is not live yet; try again shortly"),
                    ),
                ));
            }
            st.registry
                .select(StreamFilter::Serving(&path), req.exclude.as_deref(), true)
        }
        Role::Monitor => st
            .registry
            .select(StreamFilter::Serving(&path), req.exclude.as_deref(), true)
            .or_else(|| {
                st.registry
                    .select(StreamFilter::Any, req.exclude.as_deref(), true)
            }),
    }
    .ok_or_else(|| {
        refuse(
            "no_node",
            ApiError::unavailable("no_node", "no slave can take a viewer now"),
        )
    })?;

    let (token, claims) = st
        .issuer
        .issue(&req.user_id, req.role, &chosen.node_id, &path, Action::Read)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let base = chosen.public_url.trim_end_matches('/');
    let mut resp = TokenResponse {
        hls_url: format!("{base}/live/{name}/index.m3u8?jwt={token}"),
        token,
        node_id: chosen.node_id.clone(),
        node_name: chosen.node_name.clone(),
        expires_at: claims.exp,
        rtmp_url: None,
        stream_key: None,
        whep_url: None,
        whip_url: None,
        webrtc: None,
    };
    let webrtc = match chosen.webrtc {
        None => "off",
        Some(_) if st.registry.has_bframes(&path) => "bframes",
        Some(_) if st.registry.hls_only_codec(&path) => "codec",
        Some(false) => "full",
        Some(true) => "ready",
    };
    if webrtc == "ready" && req.role != Role::Teacher {
        resp.whep_url = Some(format!("{base}/whep/live/{name}"));
    }
    resp.webrtc = Some(webrtc.to_string());
    if req.role == Role::Teacher {
        let publish = st
            .issuer
            .issue_publish(&req.user_id, &chosen.node_id, &path, req.record)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        resp.rtmp_url = Some(chosen.rtmp_url.clone());
        if chosen.webrtc.is_some() {
            resp.whip_url = Some(format!("{base}/whip/live/{name}"));
        }
        resp.stream_key = Some(format!("{name}?key={publish}"));
    }
    st.metrics
        .tokens_issued
        .with_label_values(&[req.role.as_str()])
        .inc();
    Ok(Json(resp))
}

/// A token for a recorded class, on the least-loaded slave: every slave serves every
/// recording (an edge fetches it from the slave that holds it).
fn recording_token(
    st: &AppState,
    req: &TokenRequest,
    id: &str,
) -> Result<Json<TokenResponse>, ApiError> {
    let path = common::recording_path(id)
        .ok_or_else(|| ApiError::bad_request("a recording id is [A-Za-z0-9_-], 1–96 long"))?;
    if st.registry.recording_holder(id).is_none() {
        return Err(ApiError::not_found(
            "recording_not_found",
            format!("no slave holds recording {id}"),
        ));
    }
    let chosen = st
        .registry
        .select(StreamFilter::Any, req.exclude.as_deref(), true)
        .ok_or_else(|| ApiError::unavailable("no_node", "no slave can take a viewer now"))?;
    let (token, claims) = st
        .issuer
        .issue(&req.user_id, req.role, &chosen.node_id, &path, Action::Read)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let base = chosen.public_url.trim_end_matches('/');
    st.metrics
        .tokens_issued
        .with_label_values(&[req.role.as_str()])
        .inc();
    Ok(Json(TokenResponse {
        hls_url: format!("{base}/vod/{id}/index.m3u8?jwt={token}"),
        token,
        node_id: chosen.node_id,
        node_name: chosen.node_name,
        expires_at: claims.exp,
        rtmp_url: None,
        stream_key: None,
        whep_url: None,
        whip_url: None,
        webrtc: None,
    }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn user_ids() {
        use super::valid_user_id as v;
        assert!(v("alice"));
        assert!(v("Kim Min-jun"));
        assert!(v("김민준"));
        assert!(!v(""));
        assert!(!v(" alice"));
        assert!(!v("a<script>"));
        assert!(!v(&"x".repeat(65)));
    }
}
