//! LL-HLS over HTTP: playlists with blocking reload, init/segment/part bytes straight from
//! memory, every request token-checked (or cluster-secret-checked for edges pulling from us).

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use common::ApiError;
use common::token::Action;

use crate::SlaveCtx;
use crate::hls::playlist;
use crate::hls::store::{HlsStream, SegmentBody, State as StreamState};

pub fn router() -> Router<Arc<SlaveCtx>> {
    Router::new().route("/live/{name}/{file}", get(hls_file))
}

/// The files a stream directory holds.
#[derive(Debug, PartialEq)]
pub enum HlsFile {
    Playlist,
    Init(u32),
    Segment(u64),
    Part(u64, usize),
}

impl HlsFile {
    pub fn parse(s: &str) -> Option<Self> {
        if s == "index.m3u8" {
            return Some(HlsFile::Playlist);
        }
        fn num(t: &str) -> Option<&str> {
            (!t.is_empty() && t.len() <= 19 && t.bytes().all(|b| b.is_ascii_digit())).then_some(t)
        }
        if let Some(id) = s.strip_prefix("init").and_then(|r| r.strip_suffix(".mp4")) {
            return num(id)?.parse().ok().map(HlsFile::Init);
        }
        if let Some(m) = s.strip_prefix("seg").and_then(|r| r.strip_suffix(".m4s")) {
            return num(m)?.parse().ok().map(HlsFile::Segment);
        }
        if let Some(r) = s.strip_prefix("part").and_then(|r| r.strip_suffix(".m4s")) {
            let (m, i) = r.split_once('.')?;
            return Some(HlsFile::Part(num(m)?.parse().ok()?, num(i)?.parse().ok()?));
        }
        None
    }
}

/// The query parameters we act on. Unknown ones are ignored, as players add their own.
/// Values borrow from the request unless they had to be percent-decoded.
#[derive(Debug, Default, PartialEq)]
pub struct HlsQuery<'a> {
    pub jwt: Option<Cow<'a, str>>,
    /// A media ticket (`t=`), as listed after every URI of a viewer's playlist.
    pub ticket: Option<Cow<'a, str>>,
    pub msn: Option<u64>,
    pub part: Option<usize>,
}

impl<'a> HlsQuery<'a> {
    pub fn parse(raw: Option<&'a str>) -> Result<Self, ApiError> {
        let mut q = HlsQuery::default();
        let Some(raw) = raw else { return Ok(q) };
        if raw.len() > 8192 {
            return Err(ApiError::bad_request("query string too long"));
        }
        for (k, v) in url::form_urlencoded::parse(raw.as_bytes()) {
            match &*k {
                "jwt" | "token" => q.jwt = Some(v),
                "t" => q.ticket = Some(v),
                "_HLS_msn" => {
                    q.msn = Some(v.parse().map_err(|_| {
                        ApiError::bad_request("_HLS_msn must be a non-negative integer")
                    })?)
                }
                "_HLS_part" => {
                    q.part = Some(v.parse().map_err(|_| {
                        ApiError::bad_request("_HLS_part must be a non-negative integer")
                    })?)
                }
                _ => {}
            }
        }
        if q.part.is_some() && q.msn.is_none() {
            return Err(ApiError::bad_request("_HLS_part requires _HLS_msn"));
        }
        Ok(q)
    }
}

/// Who is asking: a viewer (by token, or by the media ticket its playlist listed) allowed until
/// `exp`, or another slave with the cluster secret.
enum Caller {
    Viewer { exp: u64, viewer: String },
    Peer,
}

fn authorize(
    ctx: &SlaveCtx,
    headers: &HeaderMap,
    q: &HlsQuery<'_>,
    path: &str,
    kind: &HlsFile,
) -> Result<Caller, ApiError> {
    if headers.contains_key(header::AUTHORIZATION) && q.jwt.is_none() && q.ticket.is_none() {
        ctx.cfg.secret.check(headers)?;
        return Ok(Caller::Peer);
    }
    if let Some(t) = q.ticket.as_deref()
        && q.jwt.is_none()
    {
        // The playlist keeps the token check and the viewer count.
        if *kind == HlsFile::Playlist {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "token_missing",
                "a playlist needs the viewer's token (jwt=…); tickets are for media URIs",
            ));
        }
        let (exp, viewer) = ctx.tickets.check(t, path, common::now_unix())?;
        // A viewer counts once it fetches media, never for a playlist alone.
        ctx.viewers.touch(viewer);
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
    if *kind != HlsFile::Playlist {
        ctx.viewers.touch(&viewer);
    }
    Ok(Caller::Viewer {
        exp: claims.exp,
        viewer,
    })
}

async fn hls_file(
    State(ctx): State<Arc<SlaveCtx>>,
    Path((name, file)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    match serve_file(&ctx, &name, &file, raw.as_deref(), &headers).await {
        Ok(r) => r,
        Err(e) => {
            ctx.metrics.http_refusals.with_label_values(&[e.code]).inc();
            if e.status == StatusCode::UNAUTHORIZED || e.status == StatusCode::FORBIDDEN {
                tracing::info!(stream = %name, %file, error = %e, "hls request refused");
            }
            e.into_response()
        }
    }
}

async fn serve_file(
    ctx: &Arc<SlaveCtx>,
    name: &str,
    file: &str,
    raw: Option<&str>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    if !common::valid_stream_name(name) {
        return Err(ApiError::not_found("not_found", "no such stream"));
    }
    let kind =
        HlsFile::parse(file).ok_or_else(|| ApiError::not_found("not_found", "no such file"))?;
    let path = format!("{}/{name}", common::APP);
    let q = HlsQuery::parse(raw)?;
    let caller = authorize(ctx, headers, &q, &path, &kind)?;
    let entry = match ctx.store.get(&path) {
        Some(e) => e,
        None => {
            // A viewer may arrive before the mirror order: start mirroring on demand.
            match crate::mirror::start_on_demand(ctx, &path).await {
                Some(e) => e,
                None => {
                    return Err(ApiError::not_found(
                        "stream_not_found",
                        format!("{path} is not live here"),
                    ));
                }
            }
        }
    };
    let stream = &entry.stream;
    let kind_index = match kind {
        HlsFile::Playlist => 0,
        HlsFile::Init(_) => 1,
        HlsFile::Segment(_) => 2,
        HlsFile::Part(..) => 3,
    };
    ctx.metrics.requests_by_kind[kind_index].inc();
    match kind {
        HlsFile::Playlist => {
            // What follows every URI: the viewer's media ticket, nothing for a peer.
            let query = match &caller {
                Caller::Viewer { exp, viewer } => {
                    format!("?t={}", ctx.tickets.mint(&path, *exp, viewer))
                }
                Caller::Peer => String::new(),
            };
            let body = playlist_response(ctx, stream, &q, &query).await?;
            let mut r = respond(
                ctx,
                body.into(),
                "application/vnd.apple.mpegurl",
                "no-cache",
            );
            if matches!(caller, Caller::Peer) {
                let newest = stream
                    .read()
                    .segments
                    .back()
                    .and_then(|s| s.parts.last())
                    .map(|p| p.created_ms);
                if let Some(t) = newest {
                    r.headers_mut()
                        .insert(crate::mirror::PART_TIME_HEADER, HeaderValue::from(t));
                }
            }
            Ok(r)
        }
        HlsFile::Init(id) => {
            let data = stream.read().init(id).cloned();
            let data =
                match data {
                    Some(d) => d,
                    None => {
                        // The first init arrives with the first keyframe; wait briefly for it.
                        park(ctx, stream, |st| st.init(id).is_some()).await?;
                        stream.read().init(id).cloned().ok_or_else(|| {
                            ApiError::not_found("not_found", "no such init segment")
                        })?
                    }
                };
            Ok(media(ctx, data))
        }
        HlsFile::Segment(msn) => {
            let ready = |st: &StreamState| st.segment(msn).is_some_and(|s| s.complete);
            let known = {
                let st = stream.read();
                st.segment(msn).is_some() || st.last_msn().is_some_and(|l| msn == l + 1)
            };
            if !known {
                return Err(ApiError::not_found("not_found", "no such segment"));
            }
            park(ctx, stream, ready).await?;
            let body = stream.read().segment(msn).and_then(|s| s.body());
            body.map(|b| segment_response(ctx, b))
                .ok_or_else(|| ApiError::not_found("not_found", "segment not available"))
        }
        HlsFile::Part(msn, idx) => {
            let get = |st: &StreamState| {
                st.segment(msn)
                    .and_then(|s| s.parts.get(idx))
                    .map(|p| p.data.clone())
            };
            let (found, next) = {
                let st = stream.read();
                let next = match st.segments.back() {
                    Some(s) if s.complete => msn == s.msn + 1 && idx == 0,
                    Some(s) => {
                        (msn == s.msn && idx == s.parts.len()) || (msn == s.msn + 1 && idx == 0)
                    }
                    None => idx == 0,
                };
                (get(&st), next)
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
    }
}

/// About three target durations, the spec's suggestion for holding a blocking request; under
/// half the HTTP idle timeout, so a parked request never looks idle.
fn hold_time(ctx: &SlaveCtx, stream: &HlsStream) -> Duration {
    let st = stream.read();
    let target = playlist::target_duration(&st, &stream.cfg);
    Duration::from_secs(3 * target).min(ctx.cfg.http.idle_timeout / 2)
}

/// Requests parked at once (blocking reloads, preload-hinted parts), bounded: each holds a
/// task, a timer and a connection, and a client can open as many as it likes.
pub struct ParkedRequests {
    now: AtomicUsize,
    max: usize,
}

pub struct ParkedSlot<'a>(&'a AtomicUsize);

impl Drop for ParkedSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ParkedRequests {
    pub fn new(max: usize) -> Self {
        Self {
            now: AtomicUsize::new(0),
            max,
        }
    }

    pub fn count(&self) -> usize {
        self.now.load(Ordering::Relaxed)
    }

    fn enter(&self) -> Option<ParkedSlot<'_>> {
        if self.now.fetch_add(1, Ordering::Relaxed) >= self.max {
            self.now.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(ParkedSlot(&self.now))
    }
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
    let Some(_slot) = ctx.parked.enter() else {
        tracing::warn!(path = %stream.path, max = ctx.parked.max, "too many parked requests; refusing a blocking one");
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
    q: &HlsQuery<'_>,
    query: &str,
) -> Result<String, ApiError> {
    if let Some(msn) = q.msn {
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
        let part = q.part;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names() {
        assert_eq!(HlsFile::parse("index.m3u8"), Some(HlsFile::Playlist));
        assert_eq!(HlsFile::parse("init3.mp4"), Some(HlsFile::Init(3)));
        assert_eq!(HlsFile::parse("seg12.m4s"), Some(HlsFile::Segment(12)));
        assert_eq!(HlsFile::parse("part12.4.m4s"), Some(HlsFile::Part(12, 4)));
        for bad in [
            "",
            "seg.m4s",
            "seg-1.m4s",
            "part1.m4s",
            "part1..m4s",
            "../x",
            "seg1.m4s/..",
            "init.mp4",
            "seg99999999999999999999.m4s",
        ] {
            assert_eq!(HlsFile::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn queries() {
        assert_eq!(HlsQuery::parse(None).unwrap(), HlsQuery::default());
        let q = HlsQuery::parse(Some("jwt=a.b.c&_HLS_msn=5&_HLS_part=2&x=1")).unwrap();
        assert_eq!(
            (q.jwt.as_deref(), q.msn, q.part),
            (Some("a.b.c"), Some(5), Some(2))
        );
        let q = HlsQuery::parse(Some("t=123.abc&jwt=a%2Eb")).unwrap();
        assert_eq!(
            (q.ticket.as_deref(), q.jwt.as_deref()),
            (Some("123.abc"), Some("a.b"))
        );
        assert_eq!(
            HlsQuery::parse(Some("_HLS_part=1")).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            HlsQuery::parse(Some("_HLS_msn=-1")).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            HlsQuery::parse(Some("_HLS_msn=abc")).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
    }
}
