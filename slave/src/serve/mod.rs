//! LL-HLS over HTTP: playlists with blocking reload, init/segment/part bytes straight from
//! memory. Every request is authorized by the [`HlsRequest`] extractor before a handler runs;
//! one handler per file kind.

mod auth;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use common::ApiError;
use common::api::paths;
use media::hls::names::HlsFile;

pub(crate) use self::auth::authorize;
pub use self::auth::{Caller, HlsRequest, PeerAuth};
use crate::ctx::SlaveCtx;
use crate::hls::store::{HlsStream, SegmentBody, Source, State as StreamState};

pub fn router() -> Router<Arc<SlaveCtx>> {
    Router::new()
        .route(paths::HLS, get(hls_file))
        .route(paths::HLS_RENDITION, get(hls_file))
        .route(paths::HLS_AUTH, get(viewer_auth))
        .route(paths::HLS_RENDITION_AUTH, get(viewer_auth))
}

/// `GET /auth/live/{name}/{file}?jwt=…`: the check a cache in front of this slave makes
/// (nginx `auth_request`) before it answers a viewer's playlist from its cache: 204 for a
/// token this node accepts for that stream, 401/403 otherwise. The viewer counts here, since
/// behind a cache its media requests never reach the slave.
async fn viewer_auth(
    State(ctx): State<Arc<SlaveCtx>>,
    req: Result<HlsRequest, ApiError>,
) -> Response {
    match req {
        Ok(HlsRequest {
            caller: Caller::Viewer { viewer, .. },
            ..
        }) => {
            ctx.metrics.cache_auth_checks.inc();
            if viewer != crate::tickets::SHARED_VIEWER {
                ctx.viewers.touch(&viewer);
            }
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => {
            ctx.metrics.http_refusals.with_label_values(&[e.code]).inc();
            tracing::info!(error = %e, "cache auth check refused");
            e.into_response()
        }
    }
}

async fn hls_file(State(ctx): State<Arc<SlaveCtx>>, req: Result<HlsRequest, ApiError>) -> Response {
    let res = match req {
        Ok(req) => serve(&ctx, req).await,
        Err(e) => Err(e),
    };
    res.unwrap_or_else(|e| {
        ctx.metrics.http_refusals.with_label_values(&[e.code]).inc();
        if e.status == StatusCode::UNAUTHORIZED || e.status == StatusCode::FORBIDDEN {
            tracing::info!(error = %e, "hls request refused");
        }
        e.into_response()
    })
}

async fn serve(ctx: &Arc<SlaveCtx>, req: HlsRequest) -> Result<Response, ApiError> {
    // A viewer may arrive before the mirror order: the stream is then found on demand.
    let entry = ctx.find_stream(&req.path).await;
    // A class whose publish was refused for its codec: the preview shows why.
    if entry.as_ref().is_none_or(|e| !e.stream.has_parts())
        && let Some(why) = ctx.publish_refusal(&req.path)
    {
        return Err(ApiError::not_found("publish_refused", why));
    }
    let entry = entry.ok_or_else(|| {
        ApiError::not_found("stream_not_found", format!("{} is not live here", req.path))
    })?;
    let stream = &match req.rendition {
        None if req.file == HlsFile::Playlist && entry.stream.has_ladder() => {
            ctx.metrics.requests_by_kind[0].inc();
            return multivariant(ctx, &entry.stream, &req).await;
        }
        None | Some(0) => entry.stream.clone(),
        Some(track) => rendition(&entry.stream, track, entry.source != Source::Origin)
            .await
            .ok_or_else(|| {
                ApiError::not_found(
                    "not_found",
                    format!("{} has no rendition v{track}", req.path),
                )
            })?,
    };
    let kind = match req.file {
        HlsFile::Playlist => 0,
        HlsFile::Init(_) => 1,
        HlsFile::Segment(_) => 2,
        HlsFile::Part(..) => 3,
    };
    ctx.metrics.requests_by_kind[kind].inc();
    match req.file {
        HlsFile::Playlist => playlist(ctx, stream, &req).await,
        HlsFile::Init(id) => init(ctx, stream, id).await,
        HlsFile::Segment(msn) => segment(ctx, stream, msn).await,
        HlsFile::Part(msn, idx) => part(ctx, stream, msn, idx).await,
    }
}

/// Rendition `track` of a class. An edge learns a ladder from its origin's multivariant
/// playlist just after it starts mirroring the class, so a player that asks that soon waits a
/// moment.
async fn rendition(class: &HlsStream, track: u8, mirrored: bool) -> Option<Arc<HlsStream>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        if let Some(s) = class.rendition(track) {
            return Some(s);
        }
        if !mirrored || class.is_ended() || tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The multivariant playlist of a class published as a ladder. The first request waits (as a
/// media playlist's does) until every rendition has a whole segment, so that every variant is
/// listed with figures measured from one.
async fn multivariant(
    ctx: &SlaveCtx,
    class: &Arc<HlsStream>,
    req: &HlsRequest,
) -> Result<Response, ApiError> {
    let has_segment = |st: &StreamState| st.segments.iter().any(|s| s.complete);
    park(ctx, class, has_segment).await?;
    for (_, r) in class.ladder() {
        park(ctx, &r, has_segment).await?;
    }
    // Each rendition's playlist is authorized as the class's is: by the viewer's token (a JWT
    // is URL-safe as it is; anything else was refused by the token check already).
    let query = match (&req.caller, &req.jwt) {
        (Caller::Viewer { .. }, Some(jwt))
            if jwt
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) =>
        {
            format!("?jwt={jwt}")
        }
        _ => String::new(),
    };
    let body = class
        .multivariant(&query)
        .ok_or_else(|| ApiError::not_found("not_found", "no such playlist"))?;
    Ok(respond(
        ctx,
        body.into(),
        "application/vnd.apple.mpegurl",
        "no-cache",
    ))
}

async fn playlist(
    ctx: &SlaveCtx,
    stream: &Arc<HlsStream>,
    req: &HlsRequest,
) -> Result<Response, ApiError> {
    if matches!(req.caller, Caller::Viewer { .. })
        && ctx.draining.load(std::sync::atomic::Ordering::Relaxed)
    {
        return Err(ApiError::unavailable(
            "draining",
            "this node is shutting down; ask the master for another",
        )
        .retry_after(1));
    }
    // What follows every URI: the viewer's media ticket (shared by every viewer behind a
    // cache), nothing for a peer.
    let shared = ctx.cfg.behind_cache && matches!(req.caller, Caller::Viewer { .. });
    let query = match &req.caller {
        Caller::Viewer { .. } if shared => {
            let exp = crate::tickets::shared_expiry(common::now_unix());
            let t = ctx
                .tickets
                .mint(&req.path, exp, crate::tickets::SHARED_VIEWER);
            format!("?t={t}")
        }
        Caller::Viewer { exp, viewer } => {
            format!("?t={}", ctx.tickets.mint(&req.path, *exp, viewer))
        }
        Caller::Peer => String::new(),
    };
    let body = playlist_response(ctx, stream, req.msn, req.part, &query).await?;
    // A playlist with per-viewer tickets must never be shared. A shared one may be: a blocking
    // reload's answer (keyed by `_HLS_msn`/`_HLS_part`) stays right for a while; the plain
    // playlist for one second, the smallest a cache's max-age can say.
    let cache = match (shared, req.msn) {
        (false, _) => "no-cache",
        (true, Some(_)) => "public, max-age=6",
        (true, None) => "public, max-age=1",
    };
    let mut r = respond(ctx, body.into(), "application/vnd.apple.mpegurl", cache);
    if matches!(req.caller, Caller::Peer) {
        let newest = stream
            .read()
            .segments
            .back()
            .and_then(|s| s.parts.last())
            .map(|p| p.created_ms);
        if let Some(t) = newest {
            r.headers_mut()
                .insert(common::api::PART_TIME_HEADER, HeaderValue::from(t));
        }
    }
    Ok(r)
}

async fn init(ctx: &SlaveCtx, stream: &Arc<HlsStream>, id: u32) -> Result<Response, ApiError> {
    // The first init arrives with the first keyframe: wait briefly for it.
    park(ctx, stream, |st| st.init(id).is_some()).await?;
    let data = stream.read().init(id).cloned();
    data.map(|d| media(ctx, d))
        .ok_or_else(|| ApiError::not_found("not_found", "no such init segment"))
}

async fn segment(ctx: &SlaveCtx, stream: &Arc<HlsStream>, msn: u64) -> Result<Response, ApiError> {
    let known = {
        let st = stream.read();
        st.segment(msn).is_some() || st.last_msn().is_some_and(|l| msn == l + 1)
    };
    if !known {
        return Err(ApiError::not_found("not_found", "no such segment"));
    }
    park(ctx, stream, |st| {
        st.segment(msn).is_some_and(|s| s.complete)
    })
    .await?;
    let body = stream.read().segment(msn).and_then(|s| s.body());
    body.map(|b| segment_response(ctx, b))
        .ok_or_else(|| ApiError::not_found("not_found", "segment not available"))
}

async fn part(
    ctx: &SlaveCtx,
    stream: &Arc<HlsStream>,
    msn: u64,
    idx: usize,
) -> Result<Response, ApiError> {
    let get = |st: &StreamState| {
        st.segment(msn)
            .and_then(|s| s.parts.get(idx))
            .map(|p| p.data.clone())
    };
    let (found, next) = {
        let st = stream.read();
        (get(&st), st.may_come_next(msn, idx))
    };
    if let Some(d) = found {
        return Ok(media(ctx, d));
    }
    if !next {
        return Err(ApiError::not_found("not_found", "no such part"));
    }
    // A preload-hinted part: hold the request until it exists.
    park(ctx, stream, |st| st.part_settled(msn, idx)).await?;
    let d = get(&stream.read());
    d.map(|d| media(ctx, d))
        .ok_or_else(|| ApiError::not_found("not_found", "part not available"))
}

/// The stream's hold time, kept under half the HTTP idle timeout so that a parked request
/// never looks idle.
fn hold_time(ctx: &SlaveCtx, stream: &HlsStream) -> Duration {
    stream
        .read()
        .hold_time(&stream.cfg)
        .min(ctx.cfg.http.idle_timeout / 2)
}

/// Holds a request until `ready` holds or the hold time passes (returning whether it held),
/// counted against the parked bound: past it, 503 with `Retry-After`.
async fn park(
    ctx: &SlaveCtx,
    stream: &HlsStream,
    ready: impl Fn(&StreamState) -> bool,
) -> Result<bool, ApiError> {
    if ready(&stream.read()) {
        return Ok(true);
    }
    if stream.is_ended() {
        return Ok(false);
    }
    let Some(_slot) = ctx.parked.enter() else {
        tracing::warn!(path = %stream.path, max = ctx.parked.max(), "too many parked requests; refusing a blocking one");
        return Err(ApiError::unavailable(
            "too_many_waiting",
            "this node holds as many blocking requests as it can; retry shortly",
        )
        .retry_after(1));
    };
    Ok(stream.wait_for(hold_time(ctx, stream), ready).await)
}

async fn playlist_response(
    ctx: &SlaveCtx,
    stream: &Arc<HlsStream>,
    msn: Option<u64>,
    part: Option<usize>,
    query: &str,
) -> Result<String, ApiError> {
    if let Some(msn) = msn {
        {
            let st = stream.read();
            let last = st.last_msn();
            let base = last.unwrap_or(0);
            if !st.ended && msn > base + 2 && last.is_some() {
                return Err(ApiError::bad_request(format!(
                    "_HLS_msn={msn} is too far ahead (last is {base})"
                )));
            }
        }
        let ready = move |st: &StreamState| match part {
            Some(p) => st.part_settled(msn, p),
            None => {
                st.segment(msn).is_some_and(|s| s.complete)
                    || st.last_msn().is_some_and(|l| l > msn)
            }
        };
        let ok = park(ctx, stream, ready).await?;
        if !ok && !stream.is_ended() {
            return Err(ApiError::unavailable(
                "not_ready",
                "the requested part did not appear in time",
            ));
        }
    } else {
        // Plain-HLS players need at least one whole segment; a playlist of parts only would
        // make them give up. Hold the very first request until a segment completes.
        let has_segment = |st: &StreamState| st.segments.iter().any(|s| s.complete);
        park(ctx, stream, has_segment).await?;
    }
    Ok(stream.rendered().join_with(query))
}

fn respond(
    ctx: &SlaveCtx,
    body: Bytes,
    content_type: &'static str,
    cache: &'static str,
) -> Response {
    ctx.metrics.bytes_out.inc_by(body.len() as u64);
    let mut r = Response::new(Body::from(body));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    r
}

/// A segment as its parts back to back: the bytes are shared with the parts, never copied.
fn segment_response(ctx: &SlaveCtx, body: SegmentBody) -> Response {
    match body {
        SegmentBody::Whole(b) => media(ctx, b),
        SegmentBody::Parts(parts) => {
            let len = parts.iter().map(Bytes::len).sum::<usize>();
            ctx.metrics.bytes_out.inc_by(len as u64);
            let stream =
                futures::stream::iter(parts.into_iter().map(Ok::<_, std::convert::Infallible>));
            let mut r = Response::new(Body::from_stream(stream));
            let h = r.headers_mut();
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("video/mp4"));
            h.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=31536000, immutable"),
            );
            r
        }
    }
}

fn media(ctx: &SlaveCtx, data: Bytes) -> Response {
    respond(
        ctx,
        data,
        "video/mp4",
        "public, max-age=31536000, immutable",
    )
}
