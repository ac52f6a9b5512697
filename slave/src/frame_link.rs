//! Frames from the origin to an edge as they arrive, for the edge's WebRTC viewers: LL-HLS
//! mirroring moves whole parts (200 ms), which WebRTC must not wait for. One long HTTP response
//! per stream, items in `media::frames`' wire format, the cluster secret as for every peer call.
//! Started by the first WebRTC viewer of a mirrored stream; ends when none is left.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use common::ApiError;
use futures::StreamExt;
use media::frames::{ItemDecoder, encode_item};

use crate::ctx::SlaveCtx;
use crate::hls::store::{Source, StreamEntry};
use crate::serve::PeerAuth;

pub const ROUTE: &str = "/internal/frames/live/{name}";
/// A rendition of a class sent as a ladder: `/internal/frames/live/{name}/v{track}`.
pub const ROUTE_RENDITION: &str = "/internal/frames/live/{name}/{rendition}";
/// How long a link stays up with no WebRTC viewer left, so that a viewer who reloads finds it.
const LINGER: Duration = Duration::from_secs(10);

/// Starts the link for a mirrored stream unless it runs.
pub fn ensure(ctx: &Arc<SlaveCtx>, entry: &Arc<StreamEntry>) {
    if entry.source == Source::Origin {
        return;
    }
    let Some(upstream) = entry.stream.frames.upstream.get().cloned() else {
        return;
    };
    if entry.stream.frames.linked.swap(true, Ordering::AcqRel) {
        return;
    }
    let ctx = ctx.clone();
    let stream = entry.stream.clone();
    tokio::spawn(async move {
        let url = format!(
            "{}/internal/frames/{}",
            upstream.trim_end_matches('/'),
            stream.path
        );
        let mut idle_since: Option<tokio::time::Instant> = None;
        while !stream.is_ended() {
            match pull(&ctx, &stream, &url).await {
                Ok(()) => tracing::debug!(path = %stream.path, "frame link ended by the upstream"),
                Err(e) => tracing::info!(path = %stream.path, error = %e, "frame link lost"),
            }
            // Another viewer may have come meanwhile; only a link nobody reads stops.
            if stream.frames.subscribers() == 0 {
                let since = *idle_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() >= LINGER {
                    break;
                }
            } else {
                idle_since = None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        stream.frames.linked.store(false, Ordering::Release);
    });
}

/// One connection: items in until the upstream ends it, or nobody here has read for LINGER.
async fn pull(ctx: &SlaveCtx, stream: &crate::hls::HlsStream, url: &str) -> anyhow::Result<()> {
    let resp = ctx.peer_stream(url).await?;
    let mut body = resp.bytes_stream();
    let mut dec = ItemDecoder::new();
    let mut idle_since: Option<tokio::time::Instant> = None;
    loop {
        let chunk = match tokio::time::timeout(Duration::from_secs(1), body.next()).await {
            Ok(Some(c)) => c?,
            Ok(None) => return Ok(()),
            // No frame for a second: the publisher paused. Keep the link while it is read.
            Err(_) => Default::default(),
        };
        dec.push(&chunk);
        while let Some(item) = dec.next_item()? {
            stream.frames.push(item);
        }
        if stream.frames.subscribers() == 0 {
            let since = *idle_since.get_or_insert_with(tokio::time::Instant::now);
            if since.elapsed() >= LINGER {
                return Ok(());
            }
        } else {
            idle_since = None;
        }
        if stream.is_ended() {
            return Ok(());
        }
    }
}

/// The upstream side: a stream's feed as one response, from its configurations and latest GOP
/// on. A reader that falls behind the channel is cut off (it reconnects to a fresh start).
pub async fn serve(
    State(ctx): State<Arc<SlaveCtx>>,
    _: PeerAuth,
    Path(params): Path<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let (name, rendition) = (
        params
            .iter()
            .find(|(k, _)| k == "name")
            .map(|(_, v)| v.as_str()),
        params
            .iter()
            .find(|(k, _)| k == "rendition")
            .map(|(_, v)| v.as_str()),
    );
    let path = match (name, rendition) {
        (Some(n), None) if common::valid_stream_name(n) => format!("{}/{n}", common::APP),
        (Some(n), Some(r))
            if common::valid_stream_name(n)
                && r.strip_prefix('v').is_some_and(|t| t.parse::<u8>().is_ok()) =>
        {
            format!("{}/{n}/{r}", common::APP)
        }
        _ => return Err(ApiError::not_found("not_found", "no such stream")),
    };
    let entry = ctx
        .store
        .get(&path)
        .filter(|e| !e.stream.is_ended())
        .ok_or_else(|| ApiError::not_found("not_found", "no such stream live here"))?;
    // An edge serving an edge: its own link feeds this one.
    ensure(&ctx, &entry);
    let (start, rx) = entry.stream.frames.subscribe();
    let stream = entry.stream.clone();
    let head = futures::stream::iter(start);
    let live = futures::stream::unfold(rx, move |mut rx| {
        let stream = stream.clone();
        async move {
            loop {
                match tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
                    Ok(Ok(item)) => return Some((item, rx)),
                    Ok(Err(_)) => return None,
                    Err(_) if stream.is_ended() => return None,
                    Err(_) => continue,
                }
            }
        }
    });
    let body = head.chain(live).map(|item| {
        let mut b = BytesMut::new();
        encode_item(&item, &mut b);
        Ok::<_, std::io::Error>(b.freeze())
    });
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
        Body::from_stream(body),
    )
        .into_response())
}
