//! Issue 20: WebRTC playback (WHEP) from the origin and from an edge, with the viewer's
//! node-bound token; a Rust WHEP client (str0m) receives the media. Chromium plays it in
//! tests/web/pages.test.mjs.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::token::SigningKey;
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};

use crate::support::*;

/// What a WHEP client received.
#[derive(Debug, Default)]
pub struct Received {
    pub h264_frames: usize,
    pub opus_packets: usize,
    pub first_video_keyframe: Option<bool>,
    pub connected: bool,
}

/// A recvonly offer for video and audio, as a browser makes it.
pub fn offer() -> (Rtc, SdpPendingOffer, String, UdpSocket) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut rtc = Rtc::builder().build(Instant::now());
    rtc.add_local_candidate(Candidate::host(sock.local_addr().unwrap(), "udp").unwrap());
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
    let (offer, pending) = api.apply().unwrap();
    (rtc, pending, offer.to_sdp_string(), sock)
}

/// Runs the client for `secs` (or until the server closes), counting what arrives.
pub fn receive(
    mut rtc: Rtc,
    pending: SdpPendingOffer,
    answer: &str,
    sock: UdpSocket,
    secs: f64,
) -> Received {
    rtc.sdp_api()
        .accept_answer(pending, SdpAnswer::from_sdp_string(answer).unwrap())
        .unwrap();
    let local = sock.local_addr().unwrap();
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut got = Received::default();
    let mut buf = vec![0u8; 2000];
    while Instant::now() < end && rtc.is_alive() {
        let timeout = loop {
            match rtc.poll_output().unwrap() {
                Output::Timeout(t) => break t,
                Output::Transmit(t) => {
                    sock.send_to(&t.contents, t.destination).unwrap();
                }
                Output::Event(Event::Connected) => got.connected = true,
                Output::Event(Event::MediaData(d)) => match d.params.spec().codec {
                    Codec::H264 => {
                        got.first_video_keyframe.get_or_insert(d.is_keyframe());
                        got.h264_frames += 1;
                    }
                    Codec::Opus => got.opus_packets += 1,
                    _ => {}
                },
                Output::Event(_) => {}
            }
        };
        let wait = timeout
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_millis(1), Duration::from_millis(50));
        sock.set_read_timeout(Some(wait)).unwrap();
        let input = match sock.recv_from(&mut buf) {
            Ok((n, source)) => Input::Receive(
                Instant::now(),
                Receive {
                    proto: Protocol::Udp,
                    source,
                    destination: local,
                    contents: buf[..n].try_into().unwrap(),
                },
            ),
            Err(_) => Input::Timeout(Instant::now()),
        };
        if rtc.handle_input(input).is_err() {
            break;
        }
    }
    got
}

pub async fn post_offer(
    c: &Cluster,
    url: &str,
    token: Option<&str>,
    sdp: &str,
) -> (u16, String, Option<String>) {
    let mut req = c
        .http
        .post(url)
        .header("content-type", "application/sdp")
        .body(sdp.to_string());
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let location = r
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_string());
    (status, r.text().await.unwrap(), location)
}

async fn viewers(c: &Cluster, id: &str) -> u64 {
    get_json(&c.http, &format!("{}/health", c.slave(id).base()))
        .await
        .unwrap()["viewers"]
        .as_u64()
        .unwrap()
}

/// Publishes with 44.1 kHz audio (the transcoder resamples it to Opus's 48 kHz) and, when
/// asked, with B-frames.
fn publish(c: &Cluster, name: &str, rtmp: &str, key: &str, bframes: bool) -> Proc {
    let mut cmd = std::process::Command::new("ffmpeg");
    cmd.args(["-hide_banner", "-loglevel", "warning", "-nostdin", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc=size=640x360:rate=30"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "30",
            "-pix_fmt",
            "yuv420p",
        ]);
    if bframes {
        cmd.args(["-bf", "2"]);
    } else {
        cmd.args(["-tune", "zerolatency"]);
    }
    cmd.args([
        "-c:a",
        "aac",
        "-b:a",
        "64k",
        "-f",
        "flv",
        &format!("{rtmp}/{key}"),
    ]);
    Proc::spawn(name, log_dir(&c.test).join(format!("{name}.log")), &mut cmd)
}

#[tokio::test(flavor = "multi_thread")]
async fn whep_plays_from_the_origin_and_an_edge_with_the_viewers_token_only() {
    let c = Cluster::start("webrtc", 2, Timings::default()).await;
    let (rtmp, key, t) = c.teacher("class").await;
    let origin = t["node_id"].as_str().unwrap().to_string();
    let edge = if origin == "s1" { "s2" } else { "s1" }.to_string();
    let _pubr = publish(&c, "publisher", &rtmp, &key, false);
    c.wait_live("class", 1).await;

    // The master offers WebRTC with the same token that plays LL-HLS.
    let tok = c
        .token(serde_json::json!({"role": "student", "user_id": "ann", "stream": "class", "exclude": edge}))
        .await
        .unwrap();
    assert_eq!(tok["node_id"], origin.as_str());
    assert_eq!(tok["webrtc"], "ready");
    let whep = tok["whep_url"]
        .as_str()
        .expect("whep_url offered")
        .to_string();
    assert_eq!(whep, format!("{}/whep/live/class", c.slave(&origin).base()));
    let token = tok["token"].as_str().unwrap();

    // The token matrix, on a real offer.
    let (_, _, sdp, _) = offer();
    let other_key = SigningKey::generate().unwrap().0;
    let cases = [
        ("none", None, 401),
        (
            "forged",
            Some(sign_student(
                &c,
                &origin,
                "live/class",
                600,
                Some(&other_key),
            )),
            401,
        ),
        (
            "expired",
            Some(sign_student(&c, &origin, "live/class", -10, None)),
            401,
        ),
        (
            "other node",
            Some(sign_student(&c, &edge, "live/class", 600, None)),
            403,
        ),
        (
            "other stream",
            Some(sign_student(&c, &origin, "live/other", 600, None)),
            403,
        ),
    ];
    for (what, tok, want) in cases {
        let (status, body, _) = post_offer(&c, &whep, tok.as_deref(), &sdp).await;
        assert_eq!(status, want, "{what}: {body}");
    }
    let (status, body, _) = post_offer(&c, &whep, Some(token), "v=0 not an offer").await;
    assert_eq!(status, 400, "a body that is no SDP offer: {body}");

    // A valid one: 201, an answer, a session URL; H.264 from a keyframe and Opus arrive.
    let (rtc, pending, sdp, sock) = offer();
    let (status, answer, location) = post_offer(&c, &whep, Some(token), &sdp).await;
    assert_eq!(status, 201, "{answer}");
    let location = location.expect("a Location for the session");
    assert!(answer.contains("a=ice-lite"), "ICE-lite answer");
    let before = viewers(&c, &origin).await;
    let client = tokio::task::spawn_blocking(move || receive(rtc, pending, &answer, sock, 3.0));
    // A viewer counts while media flows.
    assert!(
        wait_until(Duration::from_secs(3), || async {
            viewers(&c, &origin).await > before
        })
        .await,
        "the WebRTC viewer is counted"
    );
    let got = client.await.unwrap();
    assert!(got.connected, "{got:?}");
    assert!(got.h264_frames >= 40, "H.264 frames in 3 s: {got:?}");
    assert!(
        got.opus_packets >= 75,
        "Opus packets in 3 s (50 a second): {got:?}"
    );
    assert_eq!(got.first_video_keyframe, Some(true), "starts at a keyframe");

    // DELETE ends it, and the count drops at once (not at the end of the viewer window).
    let session = format!("{}{location}", c.slave(&origin).base());
    let r = c.http.delete(&session).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        wait_until(Duration::from_secs(1), || async {
            viewers(&c, &origin).await == before
        })
        .await,
        "the viewer count drops after DELETE"
    );
    assert_eq!(c.http.delete(&session).send().await.unwrap().status(), 404);
    let m = metrics_text(&c.http, &c.slave(&origin).base()).await;
    assert!(
        metric_value(&m, "classcast_slave_webrtc_packets_total").unwrap_or(0.0) > 100.0,
        "{m}"
    );
    assert_eq!(
        metric_value(&m, "classcast_slave_webrtc_sessions"),
        Some(0.0)
    );

    // From the edge: frames come over the frame link from the origin, not in whole parts.
    let tok = c
        .token(serde_json::json!({"role": "student", "user_id": "bob", "stream": "class", "exclude": origin}))
        .await
        .unwrap();
    assert_eq!(tok["node_id"], edge.as_str());
    let (rtc, pending, sdp, sock) = offer();
    let (status, answer, _) = post_offer(
        &c,
        tok["whep_url"].as_str().unwrap(),
        tok["token"].as_str(),
        &sdp,
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    let got = tokio::task::spawn_blocking(move || receive(rtc, pending, &answer, sock, 3.0))
        .await
        .unwrap();
    assert!(
        got.h264_frames >= 40 && got.opus_packets >= 75,
        "from the edge: {got:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_with_bframes_is_refused_over_whep_and_still_plays_over_hls() {
    let c = Cluster::start("webrtc_bframes", 1, Timings::default()).await;
    let (rtmp, key, _) = c.teacher("bf").await;
    let _pubr = publish(&c, "publisher", &rtmp, &key, true);
    c.wait_live("bf", 1).await;
    // The slave learns of the B-frames from the first reordered frame; the master from the
    // next heartbeat.
    let deadline = Instant::now() + Duration::from_secs(5);
    let tok = loop {
        let tok = c.student("bf", "eve").await;
        if tok["webrtc"] == "bframes" || Instant::now() > deadline {
            break tok;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        tok["webrtc"], "bframes",
        "the master says why WebRTC is not offered: {tok}"
    );
    assert!(tok.get("whep_url").is_none(), "no WHEP URL offered: {tok}");
    let url = format!("{}/whep/live/bf", c.slave("s1").base());
    let (_, _, sdp, _) = offer();
    let (status, body, _) = post_offer(&c, &url, tok["token"].as_str(), &sdp).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body.contains("\"bframes\"") && body.contains("B-frames"),
        "{body}"
    );
    // LL-HLS plays the same stream.
    let probe = ffprobe(tok["hls_url"].as_str().unwrap()).expect("LL-HLS plays");
    assert!(codecs(&probe).iter().any(|c| c == "h264"), "{probe}");
}
