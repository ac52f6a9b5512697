//! Recorded classes over HTTP, from every slave: `GET /vod/{id}/{file}` with `index.m3u8` (the
//! VOD playlist), `init<N>.mp4`, `seg<M>.m4s`, `download.mp4` (the whole class as one
//! fragmented MP4) and `download-<K>.mp4` (its K-th part, when the teacher's encoder settings
//! changed during the class), with `Range`. The origin serves its own disk; any other slave asks the
//! master which node holds the recording, fetches from it with the cluster secret and keeps
//! what it fetched in a bounded cache ([`crate::vod_cache::VodCache`]); the holder keeps the files it served
//! recently in the same cache. Authorization is the live stream's: a
//! token for `rec/<id>` bound to this node, or the ticket its playlist listed, or a peer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use common::ApiError;
use common::api::paths;
use common::error::JsonBody;
use media::hls::names::{HlsFile, HlsQuery};

use crate::ctx::SlaveCtx;
use crate::recordings::Entry;
use crate::recordings::disk::{self, Recording};
use crate::serve::{Caller, PeerAuth};

pub fn router() -> Router<Arc<SlaveCtx>> {
    Router::new().route(paths::VOD, get(vod_file))
}

/// The master's orders about recordings (cluster secret).
pub fn internal_router() -> Router<Arc<SlaveCtx>> {
    Router::new().route(paths::RECORDING_FORGET, post(forget))
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum VodFile {
    Playlist,
    Init(u32),
    Segment(u64),
    /// 0: `download.mp4`, the whole class (or the list of its parts); K: `download-K.mp4`.
    Download(u32),
    /// `chat.json`: the messages a replay shows, with the times they were sent.
    Chat,
}

impl VodFile {
    fn parse(s: &str) -> Option<Self> {
        if s == "download.mp4" {
            return Some(Self::Download(0));
        }
        if s == "chat.json" {
            return Some(Self::Chat);
        }
        if let Some(k) = s
            .strip_prefix("download-")
            .and_then(|k| k.strip_suffix(".mp4"))
            .filter(|k| !k.starts_with('0') && k.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|k| k.parse().ok())
        {
            return Some(Self::Download(k));
        }
        match HlsFile::parse(s)? {
            HlsFile::Playlist => Some(Self::Playlist),
            HlsFile::Init(i) => Some(Self::Init(i)),
            HlsFile::Segment(m) => Some(Self::Segment(m)),
            HlsFile::Part(..) => None,
        }
    }

    fn name(self) -> String {
        match self {
            Self::Playlist => "index.m3u8".into(),
            Self::Init(i) => disk::init_name(i),
            Self::Segment(m) => disk::segment_name(m),
            Self::Download(0) => "download.mp4".into(),
            Self::Download(k) => format!("download-{k}.mp4"),
            Self::Chat => "chat.json".into(),
        }
    }
}

/// `GET /vod/{id}/{file}`, parsed and authorized.
struct VodRequest {
    id: String,
    /// `rec/<id>`, what tokens and tickets are bound to.
    path: String,
    file: VodFile,
    caller: Caller,
    range: Option<String>,
    /// `_HLS_skip=YES`: a delta update of a growing playlist.
    skip: bool,
}

impl FromRequestParts<Arc<SlaveCtx>> for VodRequest {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, ctx: &Arc<SlaveCtx>) -> Result<Self, ApiError> {
        let Path((id, file)) = Path::<(String, String)>::from_request_parts(parts, ctx)
            .await
            .map_err(|_| ApiError::not_found("not_found", "no such file"))?;
        let path = common::recording_path(&id)
            .ok_or_else(|| ApiError::not_found("not_found", "no such recording"))?;
        let file = VodFile::parse(&file)
            .ok_or_else(|| ApiError::not_found("not_found", "no such file"))?;
        let q =
            HlsQuery::parse(parts.uri.query()).map_err(|e| ApiError::bad_request(e.to_string()))?;
        let as_hls = match file {
            VodFile::Playlist => HlsFile::Playlist,
            _ => HlsFile::Segment(0),
        };
        let caller = crate::serve::authorize(ctx, parts, &q, &path, &as_hls)?;
        let range = parts
            .headers
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        Ok(VodRequest {
            id,
            path,
            file,
            caller,
            range,
            skip: q.skip,
        })
    }
}

async fn vod_file(State(ctx): State<Arc<SlaveCtx>>, req: Result<VodRequest, ApiError>) -> Response {
    let res = match req {
        Ok(req) => match ctx.recordings.get(&req.id) {
            Some(e) => local(&ctx, &e, &req).await,
            None => remote(&ctx, &req).await,
        },
        Err(e) => Err(e),
    };
    res.unwrap_or_else(|e| {
        ctx.metrics.http_refusals.with_label_values(&[e.code]).inc();
        if e.status == StatusCode::UNAUTHORIZED || e.status == StatusCode::FORBIDDEN {
            tracing::info!(error = %e, "vod request refused");
        }
        e.into_response()
    })
}

/// What follows every URI of the playlist: the viewer's ticket, nothing for a peer.
fn query_for(ctx: &SlaveCtx, req: &VodRequest) -> String {
    match &req.caller {
        Caller::Viewer { exp, viewer } => {
            format!("?t={}", ctx.tickets.mint(&req.path, *exp, viewer))
        }
        Caller::Peer => String::new(),
    }
}

fn playlist_response(body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/vnd.apple.mpegurl"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

fn not_found() -> ApiError {
    ApiError::not_found("not_found", "no such file in this recording")
}

async fn local(ctx: &SlaveCtx, e: &Entry, req: &VodRequest) -> Result<Response, ApiError> {
    let rec = &e.rec;
    match req.file {
        VodFile::Playlist => {
            let q = query_for(ctx, req);
            let text =
                media::hls::vod::render_as(&disk::view(&rec.segments), &q, !e.live, req.skip);
            Ok(playlist_response(text))
        }
        VodFile::Init(i) if rec.segments.iter().any(|s| s.init_id == i) => {
            let data = read_cached(ctx, req, rec.init_file(i)).await?;
            Ok(ranged(ctx, data, req.range.as_deref(), "video/mp4"))
        }
        VodFile::Segment(m) if rec.segments.iter().any(|s| s.msn == m) => {
            let data = read_cached(ctx, req, rec.segment_file(m)).await?;
            Ok(ranged(ctx, data, req.range.as_deref(), "video/mp4"))
        }
        VodFile::Download(k) => download(ctx, rec, k, req.range.as_deref()),
        VodFile::Chat => {
            let file = rec.dir.join(crate::recorder::CHAT_FILE);
            let text = tokio::task::spawn_blocking(move || {
                std::fs::read_to_string(file).unwrap_or_default()
            })
            .await
            .unwrap_or_default();
            let events: Vec<crate::hls::messages::Event> = text
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            let shown = crate::hls::messages::replay(&events);
            Ok((
                [(header::CACHE_CONTROL, "no-cache")],
                axum::Json(serde_json::json!({ "messages": shown })),
            )
                .into_response())
        }
        _ => Err(not_found()),
    }
}

/// A recorded file, from the cache when a viewer asked for it recently: a class replayed by a
/// room full of students reads each file once, and serving it is then a reference-count bump,
/// as for live parts.
async fn read_cached(
    ctx: &SlaveCtx,
    req: &VodRequest,
    path: std::path::PathBuf,
) -> Result<Bytes, ApiError> {
    let key = format!("{}/{}", req.id, req.file.name());
    if let Some(b) = ctx.vod_cache.get(&key) {
        return Ok(b);
    }
    let data = read(path).await?;
    ctx.vod_cache.put(key, data.clone());
    Ok(data)
}

async fn read(path: std::path::PathBuf) -> Result<Bytes, ApiError> {
    tokio::fs::read(&path).await.map(Bytes::from).map_err(|e| {
        tracing::warn!(path = %path.display(), error = %e, "reading a recorded file failed");
        not_found()
    })
}

/// A `Range: bytes=…` header against a body of `len` bytes: the (start, end exclusive) to
/// send, `Ok(None)` for the whole body, `Err` for a range that cannot be satisfied (416).
/// Positions are digits of any length (RFC 9110 14.1.1): a last position or suffix length
/// past the body, even past 64 bits, means its end or all of it, not an error.
fn parse_range(h: Option<&str>, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = h.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Ok(None);
    };
    // One range only; a list of ranges gets the whole body, which RFC 9110 allows.
    if spec.contains(',') {
        return Ok(None);
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (a, b) = (a.trim(), b.trim());
    let (start, end) = if a.is_empty() {
        let n = position(b)?;
        if n == 0 {
            return Err(());
        }
        (len.saturating_sub(n), len)
    } else {
        let s = position(a)?;
        let e = if b.is_empty() {
            len
        } else {
            let last = position(b)?;
            if last < s {
                return Err(());
            }
            last.saturating_add(1).min(len)
        };
        (s, e)
    };
    if start >= len || start >= end {
        return Err(());
    }
    Ok(Some((start, end)))
}

/// `1*DIGIT`, saturating: a number too large for 64 bits is past any body.
fn position(s: &str) -> Result<u64, ()> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(());
    }
    Ok(s.parse().unwrap_or(u64::MAX))
}

fn unsatisfiable(len: u64) -> Response {
    let mut r = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
        r.headers_mut().insert(header::CONTENT_RANGE, v);
    }
    r
}

fn media_headers(h: &mut HeaderMap, ct: &'static str, len: u64) {
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
}

/// `data`, or the part of it `range` asks for (206).
fn ranged(ctx: &SlaveCtx, data: Bytes, range: Option<&str>, ct: &'static str) -> Response {
    let len = data.len() as u64;
    let (status, body, content_range) = match parse_range(range, len) {
        Err(()) => return unsatisfiable(len),
        Ok(None) => (StatusCode::OK, data, None),
        Ok(Some((s, e))) => (
            StatusCode::PARTIAL_CONTENT,
            data.slice(s as usize..e as usize),
            Some(format!("bytes {s}-{}/{len}", e - 1)),
        ),
    };
    ctx.metrics.bytes_out.inc_by(body.len() as u64);
    let n = body.len() as u64;
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    media_headers(r.headers_mut(), ct, n);
    if let Some(v) = content_range.and_then(|v| HeaderValue::from_str(&v).ok()) {
        r.headers_mut().insert(header::CONTENT_RANGE, v);
    }
    r
}

/// A recording's parts: runs of consecutive segments with the same init segment. A new one
/// starts where the teacher's encoder settings changed (a new resolution, say), which one
/// MP4 cannot hold; a reconnect with the same settings continues the part.
fn parts(rec: &Recording) -> Vec<&[disk::SegmentEntry]> {
    rec.segments
        .chunk_by(|a, b| a.init_id == b.init_id)
        .collect()
}

/// `download.mp4`: the whole class as one fragmented MP4, when it has one part; with more,
/// `300 Multiple Choices` listing `download-<K>.mp4` for each, so that no client takes the
/// first part for the class. `download-<K>.mp4`: the K-th part (its init segment and every
/// segment of it). Streamed from the files, with `Range`.
fn download(
    ctx: &SlaveCtx,
    rec: &Recording,
    part: u32,
    range: Option<&str>,
) -> Result<Response, ApiError> {
    let parts = parts(rec);
    if part == 0 && parts.len() > 1 {
        let list: Vec<serde_json::Value> = parts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                serde_json::json!({
                    "file": format!("download-{}.mp4", i + 1),
                    "duration_s": p.iter().map(|s| s.duration).sum::<f64>(),
                })
            })
            .collect();
        tracing::info!(id = %rec.id, parts = parts.len(), "download.mp4 of a class in parts: listed them");
        let body = serde_json::json!({
            "error": "multiple_parts",
            "message": format!("the teacher's encoder settings changed {} time(s) during this class, so it downloads as {} files", parts.len() - 1, parts.len()),
            "parts": list,
        });
        let mut r = (StatusCode::MULTIPLE_CHOICES, axum::Json(body)).into_response();
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return Ok(r);
    }
    let segments = *parts
        .get((part.max(1) - 1) as usize)
        .ok_or_else(not_found)?;
    let first = segments.first().ok_or_else(not_found)?;
    let init = rec.init_file(first.init_id);
    let init_len = std::fs::metadata(&init).map_err(|_| not_found())?.len();
    let mut files = vec![(init, init_len)];
    for s in segments {
        files.push((rec.segment_file(s.msn), s.bytes));
    }
    let len: u64 = files.iter().map(|(_, n)| n).sum();
    let (status, start, end) = match parse_range(range, len) {
        Err(()) => return Ok(unsatisfiable(len)),
        Ok(None) => (StatusCode::OK, 0, len),
        Ok(Some((s, e))) => (StatusCode::PARTIAL_CONTENT, s, e),
    };
    ctx.metrics.bytes_out.inc_by(end - start);
    let stream = futures::stream::unfold(
        (files, 0usize, 0u64),
        move |(files, mut i, mut at)| async move {
            // Skip whole files before the range, then read one file per step.
            while i < files.len() && at + files[i].1 <= start {
                at += files[i].1;
                i += 1;
            }
            if i >= files.len() || at >= end {
                return None;
            }
            let (path, n) = files[i].clone();
            let data = match tokio::fs::read(&path).await {
                Ok(d) => Bytes::from(d),
                Err(e) => {
                    // The stream ends after the error: nothing past the index.
                    return Some((Err(e), (files, usize::MAX, at)));
                }
            };
            let from = start.saturating_sub(at) as usize;
            let to = ((end - at).min(n)) as usize;
            let chunk = data.slice(from.min(data.len())..to.min(data.len()));
            Some((Ok::<_, std::io::Error>(chunk), (files, i + 1, at + n)))
        },
    );
    let mut r = Response::new(Body::from_stream(stream));
    *r.status_mut() = status;
    media_headers(r.headers_mut(), "video/mp4", end - start);
    let name = match (part, parts.len()) {
        (_, 1) => format!("attachment; filename=\"{}.mp4\"", rec.id),
        (k, n) => format!("attachment; filename=\"{}-part{k}of{n}.mp4\"", rec.id),
    };
    if let Ok(v) = HeaderValue::from_str(&name) {
        r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{len}", end - 1))
    {
        r.headers_mut().insert(header::CONTENT_RANGE, v);
    }
    Ok(r)
}

const ORIGIN_TTL: Duration = Duration::from_secs(10);
const GROWING_TTL: Duration = Duration::from_secs(1);

/// The internal URL of the node holding recording `id`.
async fn origin_url(ctx: &SlaveCtx, id: &str) -> Result<String, ApiError> {
    if let Some(o) = ctx.vod_cache.origins.get(id)
        && o.1.elapsed() < ORIGIN_TTL
    {
        return Ok(o.0.clone());
    }
    let o = ctx
        .masters
        .recording_origin(id)
        .await
        .filter(|o| o.node_id != ctx.cfg.node_id)
        .ok_or_else(|| {
            ApiError::not_found("recording_not_found", "no node holds this recording")
        })?;
    let url = o.internal_url.trim_end_matches('/').to_string();
    ctx.vod_cache
        .origins
        .insert(id.to_string(), (url.clone(), Instant::now()));
    Ok(url)
}

async fn fetch(
    ctx: &SlaveCtx,
    url: &str,
    range: Option<&str>,
) -> Result<reqwest::Response, ApiError> {
    let mut rq = ctx
        .http
        .get(url)
        .header(header::AUTHORIZATION, ctx.cfg.secret.bearer())
        .timeout(Duration::from_secs(20));
    if let Some(r) = range {
        rq = rq.header(header::RANGE, r);
    }
    let r = rq.send().await.map_err(|e| {
        ApiError::unavailable("origin_unreachable", format!("the recording's node: {e}"))
    })?;
    match r.status() {
        s if s.is_success() || s == StatusCode::MULTIPLE_CHOICES => Ok(r),
        StatusCode::NOT_FOUND => Err(not_found()),
        s => Err(ApiError::unavailable(
            "origin_refused",
            format!("the recording's node answered {s}"),
        )),
    }
}

/// An edge's answer: from the cache, or fetched from the recording's node (and cached).
async fn remote(ctx: &Arc<SlaveCtx>, req: &VodRequest) -> Result<Response, ApiError> {
    let key = match (req.file, req.skip) {
        (VodFile::Playlist, true) => format!("{}/index.m3u8?_HLS_skip=YES", req.id),
        _ => format!("{}/{}", req.id, req.file.name()),
    };
    if let Some(b) = ctx.vod_cache.get(&key) {
        return Ok(match req.file {
            VodFile::Playlist => playlist_response(media::hls::vod::splice_query(
                std::str::from_utf8(&b).unwrap_or(""),
                &query_for(ctx, req),
            )),
            _ => ranged(ctx, b, req.range.as_deref(), "video/mp4"),
        });
    }
    let base = origin_url(ctx, &req.id).await?;
    let mut url = format!("{base}/vod/{}/{}", req.id, req.file.name());
    if req.skip && req.file == VodFile::Playlist {
        // Edges ask the holder for delta updates too.
        url.push_str("?_HLS_skip=YES");
    }
    match req.file {
        VodFile::Chat => {
            // Small, and growing with a class still running: passed through, never cached.
            let r = fetch(ctx, &url, None).await?;
            let body = r
                .bytes()
                .await
                .map_err(|e| ApiError::unavailable("origin_unreachable", e.to_string()))?;
            Ok((
                [
                    (header::CONTENT_TYPE, "application/json"),
                    (header::CACHE_CONTROL, "no-cache"),
                ],
                body,
            )
                .into_response())
        }
        VodFile::Download(_) => {
            // Streamed through, never cached (a class is hundreds of megabytes); a list of
            // parts (300) passes through as it is.
            let r = fetch(ctx, &url, req.range.as_deref()).await?;
            let status = r.status();
            let headers = r.headers().clone();
            let mut out = Response::new(Body::from_stream(r.bytes_stream()));
            *out.status_mut() = status;
            for h in [
                header::CONTENT_TYPE,
                header::CONTENT_LENGTH,
                header::CONTENT_RANGE,
                header::CONTENT_DISPOSITION,
                header::ACCEPT_RANGES,
                header::CACHE_CONTROL,
            ] {
                if let Some(v) = headers.get(&h) {
                    out.headers_mut().insert(h, v.clone());
                }
            }
            Ok(out)
        }
        VodFile::Playlist => {
            let fresh = ctx
                .vod_cache
                .growing
                .get(&key)
                .filter(|e| e.1.elapsed() < GROWING_TTL)
                .map(|e| e.0.clone());
            if let Some(b) = fresh {
                return Ok(playlist_response(media::hls::vod::splice_query(
                    std::str::from_utf8(&b).unwrap_or(""),
                    &query_for(ctx, req),
                )));
            }
            let text = fetch(ctx, &url, None)
                .await?
                .text()
                .await
                .map_err(|e| ApiError::unavailable("origin_unreachable", e.to_string()))?;
            // A finished class's playlist never changes again: keep it.
            if text.contains("#EXT-X-ENDLIST") {
                ctx.vod_cache.put(key, Bytes::from(text.clone()));
            } else {
                ctx.vod_cache
                    .growing
                    .retain(|_, e| e.1.elapsed() < GROWING_TTL);
                ctx.vod_cache
                    .growing
                    .insert(key, (Bytes::from(text.clone()), Instant::now()));
            }
            Ok(playlist_response(media::hls::vod::splice_query(
                &text,
                &query_for(ctx, req),
            )))
        }
        VodFile::Init(_) | VodFile::Segment(_) => {
            let b = fetch(ctx, &url, None)
                .await?
                .bytes()
                .await
                .map_err(|e| ApiError::unavailable("origin_unreachable", e.to_string()))?;
            ctx.vod_cache.put(key, b.clone());
            Ok(ranged(ctx, b, req.range.as_deref(), "video/mp4"))
        }
    }
}

#[derive(serde::Deserialize)]
struct ForgetOrder {
    id: String,
    /// The holder deletes its files; every other node drops what it cached.
    #[serde(default)]
    delete: bool,
}

async fn forget(
    State(ctx): State<Arc<SlaveCtx>>,
    _: PeerAuth,
    body: Result<JsonBody<ForgetOrder>, ApiError>,
) -> Result<Response, ApiError> {
    let JsonBody(o) = body?;
    if !common::valid_recording_id(&o.id) {
        return Err(ApiError::bad_request("bad recording id"));
    }
    ctx.vod_cache.forget(&o.id);
    let deleted = o.delete && crate::recorder::delete(&ctx, &o.id).await;
    if deleted {
        tracing::info!(id = %o.id, "recording deleted on the master's order");
    }
    Ok(axum::Json(serde_json::json!({ "ok": true, "deleted": deleted })).into_response())
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 100), Ok(None));
        assert_eq!(parse_range(Some("bytes=0-9"), 100), Ok(Some((0, 10))));
        assert_eq!(parse_range(Some("bytes=90-"), 100), Ok(Some((90, 100))));
        assert_eq!(parse_range(Some("bytes=-10"), 100), Ok(Some((90, 100))));
        assert_eq!(parse_range(Some("bytes=95-200"), 100), Ok(Some((95, 100))));
        assert_eq!(parse_range(Some("bytes=100-"), 100), Err(()));
        assert_eq!(parse_range(Some("bytes=5-2"), 100), Err(()));
        assert_eq!(parse_range(Some("bytes=x-"), 100), Err(()));
        assert_eq!(parse_range(Some("bytes=0-1,5-6"), 100), Ok(None));
        // RFC 9110 14.1.1: positions past the body, even past 64 bits, end at its end.
        assert_eq!(
            parse_range(Some("bytes=0-18446744073709551616"), 100),
            Ok(Some((0, 100)))
        );
        assert_eq!(
            parse_range(Some("bytes=-99999999999999999999999"), 100),
            Ok(Some((0, 100)))
        );
        assert_eq!(
            parse_range(Some("bytes=18446744073709551616-"), 100),
            Err(())
        );
        assert_eq!(parse_range(Some("bytes=+1-5"), 100), Err(()));
        assert_eq!(parse_range(Some("items=0-1"), 100), Ok(None));
    }
}
