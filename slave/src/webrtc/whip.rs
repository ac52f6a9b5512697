//! WHIP ingest (draft-ietf-wish-whip): `POST /whip/live/{name}` with the publisher's SDP offer
//! and the class's publish token as the Bearer credential → `201 Created`, the answer, and a
//! session URL whose `DELETE` ends the publish. The session lives in the WebRTC engine like a
//! viewer's (ICE-lite on the same UDP port); its frames go to a task of its own that turns them
//! into FLV tags (`media::whip`) for the same publishing path RTMP feeds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Extension, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use common::ApiError;
use common::token::Action;
use tokio::sync::{mpsc, oneshot};

use super::session::{self, WhipFrame};
use super::{EngineHandle, bearer_claims, created, session_id};
use crate::ctx::SlaveCtx;
use crate::ingest::publish::{self, Publishing};

/// Frames queued between the engine and the class's packaging task: about 4 s of 30 fps video
/// with its audio. A full queue drops frames (and asks for a keyframe), never blocks the engine.
const QUEUE: usize = 512;

fn refuse(ctx: &SlaveCtx, status: StatusCode, code: &'static str, msg: String) -> ApiError {
    ctx.metrics.whip_refusals.with_label_values(&[code]).inc();
    tracing::warn!(reason = code, %msg, "whip publish refused");
    ApiError::new(status, code, msg)
}

pub(super) async fn publish(
    State(ctx): State<Arc<SlaveCtx>>,
    Extension(engine): EngineHandle,
    conn: Option<Extension<ConnectInfo<SocketAddr>>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let path = common::stream_path(&name)
        .ok_or_else(|| ApiError::not_found("not_found", "invalid stream name"))?;
    let engine = engine.ok_or_else(|| {
        refuse(
            &ctx,
            StatusCode::NOT_FOUND,
            "webrtc_off",
            "this slave has WebRTC off (WEBRTC=false); publish over RTMP".into(),
        )
    })?;
    // The stream key's rules: bound to this node and this class, publish role.
    let claims = bearer_claims(&ctx, &headers, &path, Action::Publish).inspect_err(|e| {
        ctx.metrics
            .whip_refusals
            .with_label_values(&["token"])
            .inc();
        tracing::warn!(%path, error = %e, "whip publish refused");
    })?;
    publish::path_free(&ctx, &path)
        .map_err(|(_, why)| refuse(&ctx, StatusCode::CONFLICT, "already_published", why))?;
    let k = engine.engine_for(&claims.jti);
    let (rtc, answer) = engine.set_up(k, body, None).await?.map_err(|e| {
        refuse(
            &ctx,
            StatusCode::BAD_REQUEST,
            "bad_offer",
            format!("offer not accepted (H.264 and Opus are): {e}"),
        )
    })?;
    // Checked again after the setup's await: the first of two racing publishers wins.
    publish::path_free(&ctx, &path)
        .map_err(|(_, why)| refuse(&ctx, StatusCode::CONFLICT, "already_published", why))?;
    let id = session_id(k);
    let publishing = Publishing::start(&ctx, &path, claims.rec, "whip", format!("whip {id}"));
    let (frames_tx, frames_rx) = mpsc::channel(QUEUE);
    let (tx, rx) = oneshot::channel();
    engine.engines[k]
        .cmds
        .send(session::Command::Open {
            session: session::NewSession {
                id: id.clone(),
                rtc,
                stream: publishing.stream.clone(),
                viewer: format!("whip:{}", claims.jti),
                client: conn.map(|Extension(ConnectInfo(a))| a.ip()),
                candidates: 0,
                publisher: Some(frames_tx),
            },
            reply: tx,
        })
        .await
        .map_err(|_| ApiError::unavailable("webrtc_down", "the WebRTC engine stopped"))?;
    if !matches!(rx.await, Ok(Ok(_))) {
        publishing.stop("the WebRTC engine refused the session");
        return Err(ApiError::unavailable(
            "webrtc_down",
            "the WebRTC engine stopped",
        ));
    }
    ctx.metrics.whip_publishes.inc();
    tracing::info!(%path, session = %id, user = %claims.sub, "whip publish accepted");
    tokio::spawn(package(
        ctx.clone(),
        engine.clone(),
        id.clone(),
        publishing,
        frames_rx,
    ));
    Ok(created(answer, &format!("/whip/session/{id}")))
}

/// The class's packaging task: frames in, FLV tags through the publishing path, until the
/// session ends (DELETE, ICE gone) or no media came for the RTMP idle deadline.
async fn package(
    ctx: Arc<SlaveCtx>,
    engine: Arc<super::Whep>,
    id: String,
    mut publishing: Publishing,
    mut frames: mpsc::Receiver<WhipFrame>,
) {
    let mut adapter = media::whip::RtpToFlv::new();
    let t0 = Instant::now();
    let idle = ctx.cfg.rtmp.idle_timeout;
    let why = loop {
        let frame = match tokio::time::timeout(idle, frames.recv()).await {
            Ok(Some(f)) => f,
            Ok(None) => break "session ended".to_string(),
            Err(_) => break format!("no media for {idle:?}"),
        };
        let ms = frame.at.saturating_duration_since(t0).as_millis() as u64;
        if let Some((ntp, rtp)) = frame.sender {
            let ntp_ms = ntp
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64() * 1000.0);
            if let Some(shift) = adapter.sender_report(frame.video, ntp_ms, rtp) {
                tracing::info!(session = %id, shift_ms = shift, "whip: audio put in step with video by the sender reports");
            }
        }
        let tags = if frame.video {
            match adapter.push_video(ms, frame.rtp, &frame.data) {
                Ok(t) => t,
                Err(e) => {
                    ctx.metrics.media_errors.inc();
                    tracing::debug!(session = %id, error = %e, "dropped a WHIP frame");
                    continue;
                }
            }
        } else {
            adapter.push_audio(ms, frame.rtp, &frame.data)
        };
        let mut refused = None;
        for t in tags {
            if let Err(e) = publishing.media(t.ts_ms, t.body, t.video) {
                let why = e.unsupported().unwrap_or_else(|| e.to_string());
                publishing.refused(&e, &why);
                refused = Some(why);
                break;
            }
        }
        if let Some(why) = refused {
            break format!("refused: {why}");
        }
    };
    // Whatever ended it, the engine's session goes too (a no-op if it is already gone).
    let (tx, _rx) = oneshot::channel();
    if let Some(e) = engine.engine_of(&id) {
        let _ = e.cmds.send(session::Command::Close { id, reply: tx }).await;
    }
    publishing.stop(&why);
}
