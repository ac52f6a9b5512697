//! Issue 29: WebRTC bounded like HTTP. Every input a WHEP peer controls has a bound enforced
//! before the engine task that sends every viewer's media does any work, and a viewer playing
//! meanwhile keeps receiving frames. The same in Chromium: tests/web/pages.test.mjs.

use std::time::{Duration, Instant};

use futures::future::join_all;
use serde_json::Value;

use crate::support::*;
use crate::webrtc::{offer, post_offer, receive};

const CAP: usize = 3;

async fn post(c: &Cluster, url: &str, token: &str, sdp: String) -> (u16, String, Option<String>) {
    post_offer(c, url, Some(token), &sdp).await
}

async fn patch(c: &Cluster, url: &str, frag: String) -> (u16, String) {
    let r = c
        .http
        .patch(url)
        .header("content-type", "application/trickle-ice-sdpfrag")
        .body(frag)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn candidates(n: usize, from: usize) -> String {
    (from..from + n)
        .map(|i| {
            format!(
                "a=candidate:{i} 1 udp 2122260223 10.{}.{}.{} {} typ host\r\n",
                i / 65536 % 256,
                i / 256 % 256,
                i % 256,
                10_000 + i % 50_000
            )
        })
        .collect()
}

/// An offer of `mlines` recvonly video m-lines, each with a few payload types.
fn wide_offer(mlines: usize) -> String {
    let (_, _, sdp, _) = offer();
    let (head, _) = sdp.split_once("m=").unwrap();
    let mut s = head.to_string();
    for m in 0..mlines {
        s += &format!(
            "m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\nc=IN IP4 0.0.0.0\r\na=mid:{m}\r\na=recvonly\r\n\
             a=rtcp-mux\r\na=rtpmap:96 H264/90000\r\na=rtpmap:97 rtx/90000\r\n"
        );
    }
    s
}

async fn webrtc_of(c: &Cluster, node: &str) -> Value {
    let v = c.nodes().await;
    v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node_id"] == node)
        .map(|n| n["webrtc"].clone())
        .unwrap_or(Value::Null)
}

fn whep_url(c: &Cluster, node: &str) -> String {
    format!("{}/whep/live/b", c.slave(node).base())
}

#[tokio::test(flavor = "multi_thread")]
async fn webrtc_sessions_are_bounded() {
    let cap = CAP.to_string();
    let c = Cluster::start_with(
        "webrtc_bounds",
        2,
        Timings::default(),
        &[],
        // Two engines, whatever the machine's cores: the cap holds across them.
        &["--max-webrtc-viewers", &cap, "--webrtc-engines", "2"],
    )
    .await;
    let (rtmp, key, t) = c.teacher("b").await;
    let origin = t["node_id"].as_str().unwrap().to_string();
    let edge = if origin == "s1" { "s2" } else { "s1" }.to_string();
    let _pubr = ffmpeg_publish(&c.test, "publisher", &format!("{rtmp}/{key}"), None);
    c.wait_live("b", 2).await;
    let url = whep_url(&c, &origin);
    let pid = c.slave(&origin).proc.child.id();

    // A viewer plays over WebRTC through everything below.
    let viewer_token = sign_student(&c, &origin, "live/b", 600, None);
    let (rtc, pending, sdp, sock) = offer();
    let (status, answer, viewer_session) = post(&c, &url, &viewer_token, sdp).await;
    assert_eq!(status, 201, "{answer}");
    let viewer_session = format!("{}{}", c.slave(&origin).base(), viewer_session.unwrap());
    let viewer = tokio::task::spawn_blocking(move || receive(rtc, pending, &answer, sock, 12.0));
    let t0 = Instant::now();

    // Offers are bounded by m-lines, codecs and candidates before any is parsed, and cost
    // next to nothing: 200 offers of 132 m-lines.
    let rss_before = rss_bytes(pid);
    for chunk in 0..10 {
        let r = join_all((0..20).map(|i| {
            let tok = sign_student(&c, &origin, "live/b", 600, None);
            let _ = (chunk, i);
            let url = url.clone();
            let c = &c;
            async move { post(c, &url, &tok, wide_offer(132)).await }
        }))
        .await;
        for (status, body, _) in r {
            assert_eq!(status, 422, "132 m-lines: {body}");
            assert!(
                body.contains("offer_too_large") && body.contains("m-lines"),
                "{body}"
            );
        }
    }
    let rss_growth = rss_bytes(pid).saturating_sub(rss_before);
    println!("200 offers of 132 m-lines: RSS +{} KiB", rss_growth / 1024);
    assert!(rss_growth < 16 << 20, "RSS grew {rss_growth} bytes");
    let (_, _, mut sdp, _) = offer();
    sdp.push_str(&candidates(33, 0));
    let tok = sign_student(&c, &origin, "live/b", 600, None);
    let (status, body, _) = post(&c, &url, &tok, sdp).await;
    assert_eq!(status, 422, "33 candidates in an offer: {body}");

    // Trickled candidates: 32 per session in all; a flood is refused before any is parsed.
    let tok = sign_student(&c, &origin, "live/b", 600, None);
    let (_, _, sdp, _) = offer();
    let (status, body, loc) = post(&c, &url, &tok, sdp).await;
    assert_eq!(status, 201, "{body}");
    let session = format!("{}{}", c.slave(&origin).base(), loc.unwrap());
    assert_eq!(patch(&c, &session, candidates(20, 0)).await.0, 204);
    let (status, body) = patch(&c, &session, candidates(20, 20)).await;
    assert_eq!(status, 422, "40 candidates in one session: {body}");
    let flood_start = Instant::now();
    let mut refused = 0;
    for round in 0..10 {
        let r =
            join_all((0..20).map(|i| patch(&c, &session, candidates(800, (round * 20 + i) * 800))))
                .await;
        refused += r.iter().filter(|(s, _)| *s == 422).count();
    }
    println!(
        "200 PATCHes of 800 candidates refused in {:?}",
        flood_start.elapsed()
    );
    assert_eq!(refused, 200);
    assert_eq!(c.http.delete(&session).send().await.unwrap().status(), 200);

    // One token, one session: 20 concurrent offers with the same token leave one session.
    let tok = sign_student(&c, &origin, "live/b", 600, None);
    let r = join_all((0..20).map(|_| {
        let (_, _, sdp, _) = offer();
        post(&c, &url, &tok, sdp)
    }))
    .await;
    let mut alive = 0;
    for (status, body, loc) in r {
        assert_eq!(status, 201, "{body}");
        let s = format!("{}{}", c.slave(&origin).base(), loc.unwrap());
        if c.http.delete(&s).send().await.unwrap().status() == 200 {
            alive += 1;
        }
    }
    assert_eq!(
        alive, 1,
        "each offer with the same token replaced the one before"
    );

    // The cap: concurrent offers from distinct viewers never pass it (the viewer holds one).
    let r = join_all((0..8).map(|_| {
        let tok = sign_student(&c, &origin, "live/b", 600, None);
        let (_, _, sdp, _) = offer();
        let url = url.clone();
        let c = &c;
        async move { post(c, &url, &tok, sdp).await }
    }))
    .await;
    let created: Vec<_> = r.iter().filter(|(s, _, _)| *s == 201).collect();
    assert_eq!(created.len(), CAP - 1, "{r:?}");
    for (status, body, _) in r.iter().filter(|(s, _, _)| *s != 201) {
        assert_eq!(*status, 503, "{body}");
        assert!(
            body.contains("webrtc_full") && body.contains("MAX_WEBRTC_VIEWERS"),
            "{body}"
        );
    }

    // The master sees the origin full: the next student goes to the edge, with WebRTC there.
    assert!(
        wait_until(Duration::from_secs(3), || async {
            webrtc_of(&c, &origin).await["sessions"].as_u64() == Some(CAP as u64)
        })
        .await,
        "{}",
        webrtc_of(&c, &origin).await
    );
    let tok = c.student("b", "next").await;
    assert_eq!(tok["node_id"], edge.as_str(), "{tok}");
    assert_eq!(tok["webrtc"], "ready", "{tok}");
    assert!(
        tok["whep_url"]
            .as_str()
            .unwrap()
            .starts_with(&c.slave(&edge).base())
    );

    // The edge full too: no WHEP URL, and the reason.
    for _ in 0..CAP {
        let t = sign_student(&c, &edge, "live/b", 600, None);
        let (_, _, sdp, _) = offer();
        assert_eq!(post(&c, &whep_url(&c, &edge), &t, sdp).await.0, 201);
    }
    assert!(
        wait_until(Duration::from_secs(3), || async {
            webrtc_of(&c, &edge).await["sessions"].as_u64() == Some(CAP as u64)
        })
        .await
    );
    let tok = c.student("b", "late").await;
    assert_eq!(tok["webrtc"], "full", "{tok}");
    assert!(tok.get("whep_url").is_none(), "{tok}");
    assert!(tok["hls_url"].is_string(), "LL-HLS still offered: {tok}");

    // The viewer played through all of it: frames kept coming for its whole run.
    let got = viewer.await.unwrap();
    let secs = t0.elapsed().as_secs_f64().min(12.0);
    println!("viewer during the abuse: {got:?} in {secs:.1} s");
    assert!(got.connected, "{got:?}");
    assert!(
        got.h264_frames as f64 >= 25.0 * (secs - 1.0),
        "the playing viewer kept its frames (~30/s): {got:?}"
    );
    let _ = c.http.delete(&viewer_session).send().await;

    // Refusals are counted each, and logged once per reason per 10 s.
    let m = metrics_text(&c.http, &c.slave(&origin).base()).await;
    let log = c.slave(&origin).proc.log_text();
    let lines = log.matches("whep request refused").count();
    println!("refusal log lines: {lines}");
    assert!(m.contains("reason=\"offer_too_large\"} 201"), "{m}");
    assert!(lines <= 6, "{lines} refusal lines for ~400 refusals");
}

/// Unconnected sessions from one address stop at half the capacity (429): a class behind one
/// NAT joins at once, but one address cannot hold every slot with sessions that never connect.
#[tokio::test(flavor = "multi_thread")]
async fn unconnected_sessions_per_address_are_bounded() {
    let c = Cluster::start_with(
        "webrtc_pending",
        1,
        Timings::default(),
        &[],
        &["--max-webrtc-viewers", "60", "--webrtc-engines", "2"],
    )
    .await;
    let (rtmp, key, _) = c.teacher("b").await;
    let _pubr = ffmpeg_publish(&c.test, "publisher", &format!("{rtmp}/{key}"), None);
    c.wait_live("b", 1).await;
    let url = whep_url(&c, "s1");
    let r = join_all((0..40).map(|_| {
        let tok = sign_student(&c, "s1", "live/b", 600, None);
        let (_, _, sdp, _) = offer();
        let url = url.clone();
        let c = &c;
        async move { post(c, &url, &tok, sdp).await }
    }))
    .await;
    let created = r.iter().filter(|(s, _, _)| *s == 201).count();
    let limited: Vec<_> = r.iter().filter(|(s, _, _)| *s == 429).collect();
    assert_eq!(created, 30, "{r:?}");
    assert_eq!(limited.len(), 10, "{r:?}");
    // The sessions are spread over both engines (a session's URL names its engine), and the
    // per-address count is the slave's, not each engine's.
    let engines: std::collections::BTreeSet<_> = r
        .iter()
        .filter_map(|(_, _, loc)| loc.as_deref()?.rsplit_once('-').map(|(_, k)| k.to_string()))
        .collect();
    assert_eq!(engines.into_iter().collect::<Vec<_>>(), ["0", "1"], "{r:?}");
    assert!(
        limited[0].1.contains("pending_per_address"),
        "{}",
        limited[0].1
    );
}
