//! Who is asking, as extractors: [`PeerAuth`] for the cluster's own calls (the cluster
//! secret), [`HlsRequest`] for a stream's files (a viewer's token or media ticket, or a peer).
//! Every HLS authorization decision is made here, once per request.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use common::ApiError;
use common::token::Action;
use media::hls::names::{HlsFile, HlsQuery};

use crate::ctx::SlaveCtx;

/// A caller holding the cluster secret; 401 otherwise.
pub struct PeerAuth;

impl FromRequestParts<Arc<SlaveCtx>> for PeerAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, ctx: &Arc<SlaveCtx>) -> Result<Self, ApiError> {
        ctx.cfg.secret.check(&parts.headers).inspect_err(|e| {
            tracing::warn!(route = %parts.uri.path(), error = %e, "refused a cluster call without a valid cluster secret");
        })?;
        Ok(PeerAuth)
    }
}

/// Who is asking for a stream's file: a viewer (by token, or by the media ticket its playlist
/// listed) allowed until `exp`, or another slave with the cluster secret.
pub enum Caller {
    Viewer { exp: u64, viewer: String },
    Peer,
}

/// `GET /live/{name}/{file}` (or `/live/{name}/v{track}/{file}` for a rendition of a ladder),
/// parsed and authorized.
pub struct HlsRequest {
    /// `live/<name>`: the class, what tokens and tickets name.
    pub path: String,
    /// The rendition asked for, when the URI names one.
    pub rendition: Option<u8>,
    /// The viewer's token as given, for the URIs of a multivariant playlist (each rendition's
    /// playlist needs it, as the class's does).
    pub jwt: Option<String>,
    pub file: HlsFile,
    /// `_HLS_msn` / `_HLS_part` of a blocking reload.
    pub msn: Option<u64>,
    pub part: Option<usize>,
    pub caller: Caller,
}

impl FromRequestParts<Arc<SlaveCtx>> for HlsRequest {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, ctx: &Arc<SlaveCtx>) -> Result<Self, ApiError> {
        let Path(params) = Path::<Vec<(String, String)>>::from_request_parts(parts, ctx)
            .await
            .map_err(|_| ApiError::not_found("not_found", "no such file"))?;
        let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let (Some(name), Some(file)) = (param("name"), param("file")) else {
            return Err(ApiError::not_found("not_found", "no such file"));
        };
        let rendition = match param("rendition") {
            None => None,
            Some(r) => Some(
                r.strip_prefix('v')
                    .filter(|n| {
                        !n.is_empty() && n.len() <= 3 && n.bytes().all(|b| b.is_ascii_digit())
                    })
                    .and_then(|n| n.parse::<u8>().ok())
                    .ok_or_else(|| ApiError::not_found("not_found", "no such rendition"))?,
            ),
        };
        if !common::valid_stream_name(name) {
            return Err(ApiError::not_found("not_found", "no such stream"));
        }
        let file =
            HlsFile::parse(file).ok_or_else(|| ApiError::not_found("not_found", "no such file"))?;
        let path = format!("{}/{name}", common::APP);
        let q =
            HlsQuery::parse(parts.uri.query()).map_err(|e| ApiError::bad_request(e.to_string()))?;
        let caller = authorize(ctx, parts, &q, &path, &file)?;
        Ok(HlsRequest {
            path,
            rendition,
            jwt: q.jwt.as_deref().map(str::to_string),
            file,
            msn: q.msn,
            part: q.part,
            caller,
        })
    }
}

/// The one authorization rule for a stream's files (live or recorded, `path` being
/// `live/<name>` or `rec/<id>`): the cluster secret, or a media ticket for media, or a token
/// bound to this node and `path`.
pub(crate) fn authorize(
    ctx: &SlaveCtx,
    parts: &Parts,
    q: &HlsQuery<'_>,
    path: &str,
    file: &HlsFile,
) -> Result<Caller, ApiError> {
    if parts.headers.contains_key(header::AUTHORIZATION) && q.jwt.is_none() && q.ticket.is_none() {
        ctx.cfg.secret.check(&parts.headers)?;
        return Ok(Caller::Peer);
    }
    if let Some(t) = q.ticket.as_deref()
        && q.jwt.is_none()
    {
        // The playlist keeps the token check.
        if *file == HlsFile::Playlist {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "token_missing",
                "a playlist needs the viewer's token (jwt=…); tickets are for media URIs",
            ));
        }
        let (exp, viewer) = ctx
            .tickets
            .check(t, path, common::now_unix())
            .map_err(|e| ApiError::new(StatusCode::UNAUTHORIZED, e.code(), e.to_string()))?;
        // A viewer counts once it fetches media, never for a playlist alone. A shared ticket
        // (behind a cache) names no viewer.
        if viewer != crate::tickets::SHARED_VIEWER {
            ctx.viewers.touch(viewer);
        }
        return Ok(Caller::Viewer {
            exp,
            viewer: viewer.to_string(),
        });
    }
    let verifier = ctx.verifier().ok_or_else(|| {
        ApiError::unavailable(
            "not_registered",
            "this node has not registered with the master yet",
        )
    })?;
    let claims = verifier.authorize(q.jwt.as_deref(), &ctx.cfg.node_id, path, Action::Read)?;
    let viewer = crate::tickets::viewer_id(&claims.jti);
    if *file != HlsFile::Playlist {
        ctx.viewers.touch(&viewer);
    }
    Ok(Caller::Viewer {
        exp: claims.exp,
        viewer,
    })
}
