//! Recording at the origin: every complete segment of a class written to disk as it completes
//! ([`crate::recordings::disk`]), and retention.
//!
//! The recorder follows the stream's state (it wakes on the same version channel as blocked
//! playlist requests), so the ingest path never waits for a disk: writes run on the blocking
//! pool, and a disk that fails or fills stops the recording, never the class.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::ctx::SlaveCtx;
use crate::hls::store::{HlsStream, SegmentBody};
use crate::recordings::disk::{Header, Recording, RecordingWriter, SegmentEntry};
use crate::recordings::free_bytes;

/// One segment as the recorder takes it from the stream.
struct Pending {
    entry: SegmentEntry,
    init: Option<(u32, Bytes)>,
    parts: Vec<Bytes>,
}

/// The complete segments from `next` on (and the inits they need), and whether the stream
/// has ended.
fn collect(stream: &HlsStream, next: &mut Option<u64>) -> (Vec<Pending>, bool) {
    let st = stream.read();
    let mut out = Vec::new();
    for s in st.segments.iter().filter(|s| s.complete) {
        if next.is_some_and(|n| s.msn < n) {
            continue;
        }
        let parts = match s.body() {
            Some(SegmentBody::Parts(p)) => p,
            Some(SegmentBody::Whole(b)) => vec![b],
            None => continue,
        };
        out.push(Pending {
            entry: SegmentEntry {
                msn: s.msn,
                duration: s.duration,
                pdt_ms: s.pdt_ms,
                discontinuity: s.discontinuity,
                init_id: s.init_id,
                bytes: parts.iter().map(|p| p.len() as u64).sum(),
            },
            init: st.init(s.init_id).map(|b| (s.init_id, b.clone())),
            parts,
        });
        *next = Some(s.msn + 1);
    }
    (out, st.ended)
}

/// Why a recording stopped before its class ended.
fn stop_reason(e: &std::io::Error) -> &'static str {
    if e.raw_os_error() == Some(libc::ENOSPC) {
        "disk_full"
    } else {
        "write_error"
    }
}

/// Records `stream` (a class published here) until it ends.
pub fn spawn(ctx: Arc<SlaveCtx>, stream: Arc<HlsStream>) {
    let Some(root) = ctx.cfg.record.dir.clone() else {
        return;
    };
    tokio::spawn(async move {
        let started_ms = common::now_unix_ms();
        let name = stream.path.trim_start_matches("live/").to_string();
        let id = format!("{name}-{started_ms}");
        let header = Header {
            v: 1,
            path: stream.path.clone(),
            started_ms,
            node_id: ctx.cfg.node_id.clone(),
        };
        let min_free = ctx.cfg.record.min_free_bytes;
        if free_bytes(&root) < min_free {
            stopped(
                &ctx,
                &id,
                "disk_full",
                "less free space than RECORD_MIN_FREE_MB",
            );
            return;
        }
        let made = {
            let (root, id, header) = (root.clone(), id.clone(), header.clone());
            tokio::task::spawn_blocking(move || RecordingWriter::create(&root, &id, header)).await
        };
        let mut writer = match made {
            Ok(Ok(w)) => w,
            Ok(Err(e)) => return stopped(&ctx, &id, stop_reason(&e), &e.to_string()),
            Err(e) => return stopped(&ctx, &id, "write_error", &e.to_string()),
        };
        tracing::info!(%id, path = %stream.path, dir = %writer.dir().display(), "recording the class");
        let mut rx = stream.subscribe_completed();
        let mut next = None;
        let mut chat_next = 0;
        loop {
            let (batch, ended) = collect(&stream, &mut next);
            // The class's messages go with it, as they come: a replay shows them in step.
            let chat = stream.chat.since(chat_next);
            if let Some(last) = chat.last() {
                chat_next = last.id;
                let dir = writer.dir().to_path_buf();
                let res = tokio::task::spawn_blocking(move || append_chat(&dir, &chat)).await;
                if let Ok(Err(e)) = res {
                    tracing::warn!(%id, error = %e, "recording the class's messages failed");
                }
            }
            if !batch.is_empty() {
                if free_bytes(writer.dir()) < min_free {
                    publish(&ctx, &id, &writer, false);
                    return stopped(
                        &ctx,
                        &id,
                        "disk_full",
                        "less free space than RECORD_MIN_FREE_MB",
                    );
                }
                let bytes: u64 = batch.iter().map(|p| p.entry.bytes).sum();
                let res = tokio::task::spawn_blocking(move || {
                    for p in batch {
                        if let Some((iid, data)) = &p.init {
                            writer.init(*iid, data)?;
                        }
                        let parts: Vec<&[u8]> = p.parts.iter().map(|b| b.as_ref()).collect();
                        writer.segment(p.entry, &parts)?;
                    }
                    Ok::<_, std::io::Error>(writer)
                })
                .await;
                writer = match res {
                    Ok(Ok(w)) => w,
                    Ok(Err(e)) => return stopped(&ctx, &id, stop_reason(&e), &e.to_string()),
                    Err(e) => return stopped(&ctx, &id, "write_error", &e.to_string()),
                };
                ctx.metrics.recorded_bytes.inc_by(bytes);
                publish(&ctx, &id, &writer, !ended);
            }
            if ended {
                let res = tokio::task::spawn_blocking(move || {
                    writer.finish(common::now_unix_ms())?;
                    Ok::<_, std::io::Error>(writer)
                })
                .await;
                match res {
                    Ok(Ok(w)) => {
                        publish(&ctx, &id, &w, false);
                        tracing::info!(%id, segments = w.segments().len(), "recording finished");
                    }
                    Ok(Err(e)) => stopped(&ctx, &id, stop_reason(&e), &e.to_string()),
                    Err(e) => stopped(&ctx, &id, "write_error", &e.to_string()),
                }
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    });
}

/// The name of a recording's messages file: one JSON event per line, in the class's order.
pub const CHAT_FILE: &str = "chat.jsonl";

fn append_chat(
    dir: &std::path::Path,
    events: &[Arc<crate::hls::messages::Event>],
) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(CHAT_FILE))?;
    let mut buf = Vec::new();
    for e in events {
        serde_json::to_writer(&mut buf, &**e)?;
        buf.push(b'\n');
    }
    f.write_all(&buf)
}

/// What the writer holds now becomes what this node serves and reports.
fn publish(ctx: &SlaveCtx, id: &str, w: &RecordingWriter, live: bool) {
    ctx.recordings.put(
        Recording {
            id: id.to_string(),
            dir: w.dir().to_path_buf(),
            header: w.header().clone(),
            segments: w.segments().to_vec(),
            ended: !live,
        },
        live,
    );
    ctx.metrics.recordings.set(ctx.recordings.count() as i64);
}

fn stopped(ctx: &SlaveCtx, id: &str, reason: &'static str, detail: &str) {
    tracing::error!(%id, reason, detail, "recording stopped; the live class carries on");
    ctx.metrics
        .recordings_stopped
        .with_label_values(&[reason])
        .inc();
    // What was written so far stays: a finished recording, without its end line.
    if let Some(e) = ctx.recordings.get(id)
        && e.live
    {
        ctx.recordings.put(e.rec.clone(), false);
    }
}

/// Deletes finished recordings past `RECORD_MAX_AGE_*` and, oldest first, while all of them
/// take more than `RECORD_MAX_BYTES`. At start and then every `retention_every`.
pub async fn retention_loop(ctx: Arc<SlaveCtx>) {
    let Some(root) = ctx.cfg.record.dir.clone() else {
        return;
    };
    let cfg = ctx.cfg.record.clone();
    {
        let root = root.clone();
        let c = ctx.clone();
        let _ = tokio::task::spawn_blocking(move || c.recordings.load(&root)).await;
        ctx.metrics.recordings.set(ctx.recordings.count() as i64);
    }
    let mut tick = tokio::time::interval(cfg.retention_every);
    loop {
        tick.tick().await;
        ctx.metrics
            .recording_disk_free
            .set(free_bytes(&root).min(i64::MAX as u64) as i64);
        let now_ms = common::now_unix_ms();
        let mut total = ctx.recordings.total_bytes();
        for e in ctx.recordings.finished_oldest_first() {
            let age = Duration::from_millis(now_ms.saturating_sub(e.rec.header.started_ms));
            let over = cfg.max_bytes > 0 && total > cfg.max_bytes;
            if age <= cfg.max_age && !over {
                continue;
            }
            let why = if over { "total size" } else { "age" };
            tracing::info!(id = %e.rec.id, why, "retention: deleting a recording");
            total = total.saturating_sub(e.rec.bytes());
            delete(&ctx, &e.rec.id).await;
        }
    }
}

/// Removes a recording from this node, files and all.
pub async fn delete(ctx: &Arc<SlaveCtx>, id: &str) -> bool {
    let Some(e) = ctx.recordings.remove(id) else {
        return false;
    };
    // What this node served of it recently goes too (the cache would answer for it).
    ctx.vod_cache.forget(id);
    let dir = e.rec.dir.clone();
    let res = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
    if let Ok(Err(err)) = res {
        tracing::warn!(%id, error = %err, "deleting a recording's files failed");
    }
    ctx.metrics.recordings.set(ctx.recordings.count() as i64);
    true
}
