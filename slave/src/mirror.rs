//! Edge mirroring: an edge pulls a stream from its origin (or from another edge) over LL-HLS,
//! copying media sequence numbers, parts, durations and program-date-times, and serves it from
//! memory. One upstream connection per stream, however many viewers the edge has.

use std::sync::Arc;
use std::time::Duration;

use common::api::MirrorOrder;

use crate::ctx::SlaveCtx;
use crate::hls::store::{HlsStream, PartIn, Source, StreamEntry};
use media::hls::multivariant::{self, Variant};
use media::hls::playlist::{ParsedPlaylist, ParsedSegment};

use common::api::PART_TIME_HEADER;

/// Handles an order from the master: start mirroring a stream that went live elsewhere, or
/// end a mirrored stream whose origin ended it.
pub fn handle_order(ctx: &Arc<SlaveCtx>, order: MirrorOrder) {
    if order.origin_node_id == ctx.cfg.node_id {
        return;
    }
    if order.live {
        start(ctx, &order.path, &order.origin_node_id, &order.origin_url);
    } else if let Some(e) = ctx.store.get(&order.path)
        && matches!(e.source, Source::Edge { .. })
    {
        // The pull loop notices the ENDLIST itself; this only covers a lost last poll.
        let stream = e.stream.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            stream.end();
        });
    }
}

/// Starts mirroring `path` unless this node already serves it.
pub fn start(
    ctx: &Arc<SlaveCtx>,
    path: &str,
    origin_node_id: &str,
    origin_url: &str,
) -> Option<Arc<StreamEntry>> {
    if let Some(e) = ctx.store.get(path)
        && !e.stream.is_ended()
    {
        return Some(e);
    }
    // Edge of an edge: a configured upstream replaces the origin as where we pull from; the
    // stream's origin stays what we report.
    let upstream_url = ctx
        .cfg
        .upstream_url
        .clone()
        .unwrap_or_else(|| origin_url.to_string());
    let entry = ctx.store.create(
        path,
        ctx.cfg.hls.clone(),
        Source::Edge {
            origin_node: origin_node_id.to_string(),
        },
    );
    tracing::info!(%path, upstream = %upstream_url, "mirroring stream");
    let _ = entry.stream.frames.upstream.set(upstream_url.clone());
    let ctx2 = ctx.clone();
    let stream = entry.stream.clone();
    tokio::spawn(async move {
        ctx2.metrics.upstream_connections.inc();
        pull(&ctx2, &stream, &upstream_url).await;
        ctx2.metrics.upstream_connections.dec();
        stream.end();
        tracing::info!(path = %stream.path, "mirror ended");
    });
    Some(entry)
}

/// The edge mirror, as serving sees it: a stream this node lacks is looked up at the master and
/// mirrored on demand.
pub struct EdgeMirror;

impl crate::ctx::StreamFinder for EdgeMirror {
    fn find<'a>(
        &'a self,
        ctx: &'a Arc<SlaveCtx>,
        path: &'a str,
    ) -> futures::future::BoxFuture<'a, Option<Arc<StreamEntry>>> {
        Box::pin(start_on_demand(ctx, path))
    }
}

/// A viewer asked for a stream we do not have: ask the master where it lives and mirror it.
/// The answer "not live" is remembered for a moment, so that requests for a stream the cluster
/// does not have cost the master one lookup a second, not one per request.
pub async fn start_on_demand(ctx: &Arc<SlaveCtx>, path: &str) -> Option<Arc<StreamEntry>> {
    if ctx
        .missing
        .get(path)
        .is_some_and(|t| t.elapsed() < crate::ctx::MISSING_STREAM_TTL)
    {
        return None;
    }
    let found = lookup_origin(ctx, path).await;
    if found.is_none() {
        if ctx.missing.len() > 10_000 {
            ctx.missing
                .retain(|_, t| t.elapsed() < crate::ctx::MISSING_STREAM_TTL);
        }
        ctx.missing
            .insert(path.to_string(), std::time::Instant::now());
    }
    found
}

async fn lookup_origin(ctx: &Arc<SlaveCtx>, path: &str) -> Option<Arc<StreamEntry>> {
    ctx.metrics.origin_lookups.inc();
    let order = ctx.masters.origin_of(path).await?;
    if order.origin_node_id == ctx.cfg.node_id || !order.live {
        return None;
    }
    let e = start(ctx, path, &order.origin_node_id, &order.origin_url)?;
    // Give the first pull a moment so the viewer's first playlist is not empty.
    e.stream
        .wait_for(Duration::from_secs(2), |st| st.last_part().is_some())
        .await;
    Some(e)
}

enum PullEnd {
    /// The origin ended the stream (ENDLIST): end it here too.
    Ended,
    /// The class is a ladder: the origin answered with its multivariant playlist.
    Ladder(Vec<Variant>),
    /// Lost the link: reconnect.
    Lost(String),
}

async fn pull(ctx: &Arc<SlaveCtx>, stream: &Arc<HlsStream>, upstream: &str) {
    let name = stream.path.trim_start_matches("live/");
    let mut base = format!("{}/live/{name}", upstream.trim_end_matches('/'));
    let mut backoff = Duration::from_millis(100);
    loop {
        match pull_once(ctx, stream, &base).await {
            PullEnd::Ended => return,
            PullEnd::Ladder(variants) => {
                // Track 0 is this stream, pulled from its own media playlist from now on;
                // every other track is a stream of its own with a pull of its own.
                base = format!("{base}/v0");
                mirror_ladder(ctx, stream, upstream, variants);
            }
            PullEnd::Lost(why) => {
                if stream.is_ended() {
                    return;
                }
                ctx.metrics.upstream_reconnects.inc();
                // Time since media last arrived (or since the mirror started).
                let idle = stream
                    .read()
                    .segments
                    .back()
                    .map(|s| s.first_part_at.elapsed())
                    .unwrap_or_else(|| stream.created.elapsed());
                if idle < Duration::from_secs(3) {
                    backoff = Duration::from_millis(100);
                }
                tracing::warn!(path = %stream.path, %why, ?backoff, "lost upstream; reconnecting");
                // An upstream that stays unreachable past the publisher grace is gone for good.
                if idle > stream.cfg.grace + Duration::from_secs(5) {
                    tracing::warn!(path = %stream.path, "upstream unreachable past the grace period; ending");
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// The renditions of a class published as a ladder, as its origin lists them: each mirrored
/// like a stream, with the origin's figures for the multivariant playlist this edge serves.
fn mirror_ladder(
    ctx: &Arc<SlaveCtx>,
    class: &Arc<HlsStream>,
    upstream: &str,
    variants: Vec<Variant>,
) {
    let source = ctx
        .store
        .get(&class.path)
        .map(|e| e.source.clone())
        .unwrap_or(Source::Origin);
    for v in variants {
        let Some(track) = v
            .uri
            .strip_prefix('v')
            .and_then(|r| r.strip_suffix("/index.m3u8"))
            .and_then(|n| n.parse::<u8>().ok())
        else {
            continue;
        };
        if track == 0 {
            class.set_mirrored_variant(v);
            continue;
        }
        if class.rendition(track).is_some_and(|r| !r.is_ended()) {
            continue;
        }
        let stream = ctx.store.rendition(class, track, source.clone());
        stream.set_mirrored_variant(v);
        let _ = stream.frames.upstream.set(upstream.to_string());
        tracing::info!(path = %stream.path, "mirroring a rendition of the class's ladder");
        let (ctx, upstream) = (ctx.clone(), upstream.to_string());
        let pulled: futures::future::BoxFuture<'static, ()> = Box::pin(async move {
            pull(&ctx, &stream, &upstream).await;
            stream.end();
        });
        tokio::spawn(pulled);
    }
}

async fn pull_once(ctx: &Arc<SlaveCtx>, stream: &Arc<HlsStream>, base: &str) -> PullEnd {
    let auth = ctx.cfg.secret.bearer();
    let mut first = true;
    loop {
        // Next thing we need: the part after our newest one.
        let next = stream.read().next_part();
        let url = match next {
            Some((m, p)) if !first => format!("{base}/index.m3u8?_HLS_msn={m}&_HLS_part={p}"),
            _ => format!("{base}/index.m3u8"),
        };
        let resp = match ctx
            .http
            .get(&url)
            .header("authorization", &auth)
            .timeout(Duration::from_secs(15))
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => return PullEnd::Lost(e.to_string()),
        };
        match resp.status().as_u16() {
            200 => {}
            // Not an end: an upstream edge that restarted has not re-mirrored yet. The end of a
            // stream comes as ENDLIST or as the master's order; a 404 that lasts past the grace
            // period ends it in `pull`.
            404 => return PullEnd::Lost("upstream does not have the stream (yet)".into()),
            // Blocking reload timed out (publisher paused); ask again.
            503 => {
                first = true;
                continue;
            }
            400 => {
                // We asked too far ahead (the origin restarted numbering): resync.
                first = true;
                continue;
            }
            s => return PullEnd::Lost(format!("upstream answered {s}")),
        }
        let part_time = resp
            .headers()
            .get(PART_TIME_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let text = match resp.text().await {
            Ok(t) => t,
            Err(e) => return PullEnd::Lost(e.to_string()),
        };
        if first && multivariant::is_multivariant(&text) {
            return match multivariant::parse(&text) {
                Ok(v) => PullEnd::Ladder(v),
                Err(e) => PullEnd::Lost(format!("unparseable upstream multivariant playlist: {e}")),
            };
        }
        let pl = match ParsedPlaylist::parse(&text) {
            Ok(p) => p,
            Err(e) => return PullEnd::Lost(format!("unparseable upstream playlist: {e}")),
        };
        first = false;
        stream.adopt_origin_header(
            pl.target_duration,
            pl.part_target,
            pl.discontinuity_sequence,
        );
        if let Err(e) = sync(ctx, stream, base, &pl).await {
            return PullEnd::Lost(e);
        }
        if let Some(t) = part_time {
            let lag = common::now_unix_ms().saturating_sub(t);
            ctx.metrics.mirror_lag_seconds.observe(lag as f64 / 1000.0);
        }
        if pl.ended {
            return PullEnd::Ended;
        }
    }
}

/// Brings the local copy up to the upstream playlist: missing inits, whole segments for the
/// old part of the window, parts for the live end.
async fn sync(
    ctx: &Arc<SlaveCtx>,
    stream: &Arc<HlsStream>,
    base: &str,
    pl: &ParsedPlaylist,
) -> Result<(), String> {
    let auth = ctx.cfg.secret.bearer();
    let get = |url: String| {
        let auth = auth.clone();
        async move {
            let r = ctx
                .http
                .get(&url)
                .header("authorization", auth)
                .timeout(Duration::from_secs(10))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if !r.status().is_success() {
                return Err(format!("{url}: {}", r.status()));
            }
            r.bytes().await.map_err(|e| e.to_string())
        }
    };
    let (codecs, res) = {
        let st = stream.read();
        (st.codecs.clone(), st.resolution)
    };
    for seg in &pl.segments {
        if stream.read().init(seg.init_id).is_none() {
            let data = get(format!("{base}/init{}.mp4", seg.init_id)).await?;
            stream.put_init(seg.init_id, data, codecs.clone(), res);
        }
        let (have_parts, have_segment) = {
            let st = stream.read();
            match st.segment(seg.msn) {
                Some(s) => (s.parts.len(), true),
                None => (0, false),
            }
        };
        let local_last = stream.read().last_msn();
        if !have_segment && local_last.is_some_and(|l| l > seg.msn) {
            continue; // Older than what we hold: already scrolled past.
        }
        if seg.parts.is_empty() {
            if !have_segment && seg.duration.is_some() {
                let data = get(format!("{base}/seg{}.m4s", seg.msn)).await?;
                stream.insert_full_segment(
                    seg.msn,
                    data,
                    seg.duration.unwrap_or(0.0),
                    seg.pdt_ms,
                    seg.discontinuity,
                    seg.init_id,
                );
            }
            continue;
        }
        for (i, p) in seg.parts.iter().enumerate().skip(have_parts) {
            let data = get(format!("{base}/part{}.{i}.m4s", seg.msn)).await?;
            insert(ctx, stream, seg, i, data, p.duration, p.independent);
        }
        if seg.duration.is_some() && pl.segments.last().map(|s| s.msn) == Some(seg.msn) {
            // The upstream completed its newest segment (publisher left): do the same.
            if pl.ended || stream.read().segment(seg.msn).is_some_and(|s| !s.complete) {
                stream.publisher_left();
            }
        }
    }
    Ok(())
}

fn insert(
    ctx: &SlaveCtx,
    stream: &HlsStream,
    seg: &ParsedSegment,
    index: usize,
    data: bytes::Bytes,
    duration: f64,
    independent: bool,
) {
    if stream.insert_part(PartIn {
        msn: seg.msn,
        index,
        data,
        duration,
        independent,
        pdt_ms: seg.pdt_ms,
        discontinuity: seg.discontinuity,
        init_id: seg.init_id,
    }) {
        ctx.metrics.parts.inc();
    }
}
