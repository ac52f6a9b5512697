//! OBS's "GoLive" configuration request (OBS 30.2+ multitrack video, "Enhanced Broadcasting"):
//! OBS posts what it can do and the stream key the teacher pasted; we answer with the ladder
//! its encoders should send as one Enhanced RTMP multitrack publish, and the ingest URL of the
//! origin that key was minted for. The slave packages each track as a rendition (issue 33): no
//! transcoding anywhere. OBS is pointed here with `--config-url`, or the teacher pastes the
//! same JSON as its configuration override.

use axum::Json;
use axum::extract::State;
use common::ApiError;
use common::error::JsonBody;
use common::token::{Action, TokenVerifier};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::state::AppState;

/// The schema OBS 30.2–31 sends and reads (`GoLiveApi::Config`).
const SCHEMA_VERSION: &str = "2024-06-04";

/// The ladder offered, top first: (height, kbit/s at 30 fps). A rung above the teacher's
/// output size is left out.
const LADDER: [(u32, u64); 3] = [(1080, 4500), (720, 2500), (360, 800)];

#[derive(Debug, Deserialize)]
pub struct PostData {
    /// The stream key the teacher pasted in OBS: `<name>?key=<publish token>`.
    authentication: String,
    #[serde(default)]
    preferences: Preferences,
}

#[derive(Debug, Deserialize, Default)]
struct Preferences {
    maximum_aggregate_bitrate: Option<u64>,
    maximum_video_tracks: Option<u32>,
    #[serde(default)]
    width: u32,
    #[serde(default)]
    height: u32,
    framerate: Option<Framerate>,
}

#[derive(Debug, Deserialize, Clone, Copy)]
struct Framerate {
    numerator: u32,
    denominator: u32,
}

/// `POST /api/obs/golive`.
pub async fn golive(
    State(st): State<AppState>,
    JsonBody(post): JsonBody<PostData>,
) -> Result<Json<Value>, ApiError> {
    let refuse = |reason: &'static str, e: ApiError| {
        st.metrics.token_refusals.with_label_values(&[reason]).inc();
        tracing::info!(reason, error = %e, "OBS configuration request refused");
        e
    };
    let (name, key) = post.authentication.split_once("?key=").ok_or_else(|| {
        refuse(
            "obs_key",
            ApiError::unauthorized("the stream key is not one from the teacher page"),
        )
    })?;
    let path = common::stream_path(name)
        .ok_or_else(|| refuse("obs_key", ApiError::bad_request("invalid stream name")))?;
    let verifier = TokenVerifier::from_keys(&st.issuer.jwks().keys, &st.cfg.issuer)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let claims = verifier.verify(key).map_err(|e| {
        refuse(
            "obs_key",
            ApiError::unauthorized(format!("stream key refused: {e}")),
        )
    })?;
    if claims.action != Action::Publish || claims.path != path {
        return Err(refuse(
            "obs_key",
            ApiError::forbidden("this key does not publish that class"),
        ));
    }
    let origin = st
        .registry
        .snapshot()
        .into_iter()
        .find(|n| n.info.node_id == claims.node_id)
        .ok_or_else(|| {
            refuse(
                "obs_origin_gone",
                ApiError::unavailable(
                    "origin_gone",
                    "the slave this key was made for is gone; log in on the teacher page again",
                ),
            )
        })?;
    let rtmp = origin.info.rtmp_url.trim_end_matches('/');
    let protocol = if rtmp.starts_with("rtmps://") {
        "RTMPS"
    } else {
        "RTMP"
    };
    Ok(Json(json!({
        "meta": {
            "service": "classcast",
            "schema_version": SCHEMA_VERSION,
            "config_id": claims.jti,
        },
        "status": {
            "result": "success",
            "html_en_us": format!("classcast: {} renditions to {}", ladder(&post.preferences).len(), origin.info.node_name),
        },
        "ingest_endpoints": [{
            "protocol": protocol,
            "url_template": format!("{rtmp}/{{stream_key}}"),
            "authentication": post.authentication,
        }],
        "encoder_configurations": ladder(&post.preferences),
        "audio_configurations": {
            "live": [{
                "codec": "ffmpeg_aac",
                "track_id": 1,
                "channels": 2,
                "settings": { "bitrate": 128 },
            }],
        },
    })))
}

/// The encoder ladder for what OBS says it outputs: every rung at or under its output height
/// (the top one at its own size when that is between rungs), at most its track count, scaled
/// down to its aggregate bitrate. H.264 without B-frames (so WebRTC viewers get it as it is)
/// and a keyframe every second (so parts and segments are cut on time and renditions align).
fn ladder(p: &Preferences) -> Vec<Value> {
    let (w, h) = if p.width > 0 && p.height > 0 {
        (p.width, p.height)
    } else {
        (1920, 1080)
    };
    let fps = p.framerate.filter(|f| f.numerator > 0 && f.denominator > 0);
    let fps_value = fps.map_or(30.0, |f| f64::from(f.numerator) / f64::from(f.denominator));
    let mut rungs: Vec<(u32, u32, u64)> = Vec::new();
    if !LADDER.iter().any(|(rh, _)| *rh == h) {
        // The teacher's own size first, at the rate of the rung under it scaled up.
        let below = LADDER.iter().find(|(rh, _)| *rh < h).unwrap_or(&LADDER[2]);
        let kbps = below.1 * u64::from(h) / u64::from(below.0);
        rungs.push((w, h, kbps));
    }
    for (rh, kbps) in LADDER.iter().filter(|(rh, _)| *rh <= h) {
        // Even dimensions, the aspect of the output.
        let rw = ((u64::from(w) * u64::from(*rh) / u64::from(h)) as u32 + 1) & !1;
        rungs.push((rw, *rh, *kbps));
    }
    let max_tracks = p.maximum_video_tracks.unwrap_or(3).clamp(1, 3) as usize;
    rungs.truncate(max_tracks);
    // Rates are for 30 fps; 60 fps wants about half as much again.
    let fps_scale = if fps_value > 31.0 { 1.5 } else { 1.0 };
    let total: f64 = rungs.iter().map(|r| r.2 as f64 * fps_scale).sum();
    let budget = p
        .maximum_aggregate_bitrate
        .map_or(f64::INFINITY, |b| b as f64);
    let scale = if total > budget { budget / total } else { 1.0 } * fps_scale;
    rungs
        .into_iter()
        .map(|(rw, rh, kbps)| {
            json!({
                "type": "obs_x264",
                "width": rw,
                "height": rh,
                "framerate": fps.map_or(json!({"numerator": 30, "denominator": 1}), |f| json!({"numerator": f.numerator, "denominator": f.denominator})),
                "settings": {
                    "rate_control": "CBR",
                    "bitrate": ((kbps as f64 * scale) as u64).max(200),
                    "keyint_sec": 1,
                    "bf": 0,
                    "preset": "veryfast",
                    "profile": "high",
                },
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefs(w: u32, h: u32, tracks: Option<u32>, max: Option<u64>) -> Preferences {
        Preferences {
            maximum_aggregate_bitrate: max,
            maximum_video_tracks: tracks,
            width: w,
            height: h,
            framerate: Some(Framerate {
                numerator: 30,
                denominator: 1,
            }),
        }
    }

    fn sizes(l: &[Value]) -> Vec<(u64, u64, u64)> {
        l.iter()
            .map(|e| {
                (
                    e["width"].as_u64().unwrap(),
                    e["height"].as_u64().unwrap(),
                    e["settings"]["bitrate"].as_u64().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn the_ladder_follows_the_output_its_tracks_and_its_budget() {
        assert_eq!(
            sizes(&ladder(&prefs(1920, 1080, None, None))),
            [(1920, 1080, 4500), (1280, 720, 2500), (640, 360, 800)]
        );
        assert_eq!(
            sizes(&ladder(&prefs(1280, 720, Some(2), None))),
            [(1280, 720, 2500), (640, 360, 800)]
        );
        // Between rungs: its own size on top.
        assert_eq!(
            sizes(&ladder(&prefs(1600, 900, Some(3), None)))[0],
            (1600, 900, 3125)
        );
        // An aggregate budget scales every rung.
        let l = sizes(&ladder(&prefs(1920, 1080, None, Some(3900))));
        assert_eq!(l.iter().map(|r| r.2).sum::<u64>(), 3900);
        for e in ladder(&prefs(1920, 1080, None, None)) {
            assert_eq!(
                (
                    e["settings"]["bf"].as_u64(),
                    e["settings"]["keyint_sec"].as_u64()
                ),
                (Some(0), Some(1))
            );
        }
    }
}
