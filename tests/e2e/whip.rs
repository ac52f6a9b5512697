//! Issue 32: WHIP ingest. ffmpeg 9 (`-f whip`, PyPI imageio-ffmpeg) publishes H.264 + Opus to
//! the origin the master chose, with the class's publish token as the Bearer credential; an
//! edge serves it over LL-HLS to ffprobe and ffmpeg. Tokens that are not this class's publish
//! token on this node are refused, as is a second publisher.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

/// POSTs an SDP offer to a WHIP URL (as a WHEP one); the status and body.
async fn post_whip(c: &Cluster, url: &str, token: Option<&str>, sdp: &str) -> (u16, String) {
    let (status, body, _) = crate::webrtc::post_offer(c, url, token, sdp).await;
    (status, body)
}

/// ffmpeg 9 publishing a 320x240 test pattern and a sine over WHIP, without B-frames.
fn ffmpeg_whip(exe: &str, name: &str, url: &str, token: &str) -> Proc {
    let mut cmd = Command::new(exe);
    cmd.args(["-hide_banner", "-loglevel", "warning", "-nostdin", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc=size=320x240:rate=30"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-tune",
            "zerolatency",
        ])
        .args(["-bf", "0", "-g", "30", "-pix_fmt", "yuv420p"])
        .args(["-c:a", "libopus", "-b:a", "48k", "-ar", "48000", "-ac", "2"])
        .args(["-authorization", token, "-f", "whip", url]);
    Proc::spawn(name, log_dir("whip").join(format!("{name}.log")), &mut cmd)
}

fn publish_token(teacher: &Value) -> String {
    let key = teacher["stream_key"].as_str().unwrap();
    key.split_once("key=").unwrap().1.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_publishes_over_whip_and_an_edge_serves_it() {
    let Some(ffmpeg9) = ffmpeg9() else { return };
    // A publisher that vanishes without a DELETE is found by the idle deadline.
    let c = Cluster::start_with(
        "whip",
        2,
        Timings::default(),
        &[],
        &["--rtmp-idle-timeout-ms", "3000"],
    )
    .await;
    // A slave counts as healthy from its registration, and says it offers WebRTC in its first
    // heartbeat: until then a teacher's token has no whip_url (one CI run asked in between).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let t = loop {
        let t = c.teacher("whip").await.2;
        if t["whip_url"].is_string() || std::time::Instant::now() > deadline {
            break t;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        t["whip_url"].is_string(),
        "the teacher token has whip_url: {t}"
    );
    let whip = t["whip_url"].as_str().unwrap();
    let origin = t["node_id"].as_str().unwrap().to_string();
    assert!(whip.starts_with(&c.slave(&origin).base()), "{whip}");
    let token = publish_token(&t);

    // Not this class's publish token on this node: refused before any SDP work.
    let (_, _, sdp, _) = crate::webrtc::offer();
    let viewer = sign_student(&c, &origin, "live/whip", 600, None);
    let other_node = c.slaves.iter().find(|s| s.id != origin).unwrap().id.clone();
    let (_, _, other) = c.teacher("whip-other").await;
    let forged = format!("{}x", &token[..token.len() - 1]);
    let expired = {
        use common::token::{Action, Role, SigningKey, new_claims};
        let key = SigningKey::load_or_generate(&c.key_file).unwrap();
        let mut claims = new_claims(
            "classcast",
            "teacher",
            Role::Teacher,
            &origin,
            "live/whip",
            Action::Publish,
            Duration::from_secs(60),
        );
        claims.exp = common::now_unix() - 120;
        key.sign(&claims).unwrap()
    };
    for (what, tok, want) in [
        ("no token", None, 401),
        ("a forged token", Some(forged.as_str()), 401),
        ("an expired token", Some(expired.as_str()), 401),
        ("a viewer token", Some(viewer.as_str()), 403),
        (
            "another class's token",
            Some(&publish_token(&other)[..]),
            403,
        ),
    ] {
        let (status, body) = post_whip(&c, whip, tok, &sdp).await;
        assert_eq!(status, want, "{what}: {body}");
    }
    let elsewhere = whip.replace(&c.slave(&origin).base(), &c.slave(&other_node).base());
    let (status, body) = post_whip(&c, &elsewhere, Some(&token), &sdp).await;
    assert_eq!(status, 403, "the origin's token on another node: {body}");

    let mut publisher = ffmpeg_whip(&ffmpeg9, "publisher", whip, &token);
    c.wait_live("whip", 1).await;

    // An edge serves it: H.264 and Opus, the picture's size, decoded with no error.
    let jwt = sign_student(&c, &other_node, "live/whip", 600, None);
    let url = format!(
        "{}/live/whip/index.m3u8?jwt={jwt}",
        c.slave(&other_node).base()
    );
    let probe = ffprobe(&url).unwrap_or_else(|e| panic!("ffprobe from the edge: {e}"));
    let mut got = codecs(&probe);
    got.sort();
    assert_eq!(got, ["h264", "opus"], "{probe}");
    let v = probe["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["codec_name"] == "h264")
        .unwrap();
    assert_eq!(
        (v["width"].as_u64(), v["height"].as_u64()),
        (Some(320), Some(240))
    );
    let (ok, errors) = ffmpeg_decode(&url, 3);
    assert!(ok && errors.trim().is_empty(), "decode errors: {errors}");
    assert_mpv_plays(&url);
    let metrics = metrics_text(&c.http, &c.slave(&origin).base()).await;
    assert_eq!(
        metric_value(&metrics, "classcast_slave_whip_publishes_total"),
        Some(1.0)
    );

    // A second publisher on the live class is refused.
    let (status, body) = post_whip(&c, whip, Some(&token), &sdp).await;
    assert_eq!(status, 409, "a second publisher: {body}");

    // The publisher goes (ffmpeg's DELETE) and comes back within the grace period: the same
    // class goes on, with a discontinuity.
    let playlist_url = format!(
        "{}/live/whip/index.m3u8?jwt={viewer}",
        c.slave(&origin).base()
    );
    let before = c
        .http
        .get(&playlist_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (msn_before, _) = last_part(&before).expect("parts");
    publisher.terminate(Duration::from_secs(5));
    let mut again = ffmpeg_whip(&ffmpeg9, "publisher-again", whip, &token);
    let resumed = wait_until(Duration::from_secs(15), || async {
        let p = c
            .http
            .get(&playlist_url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        p.contains("#EXT-X-DISCONTINUITY") && last_part(&p).is_some_and(|(m, _)| m > msn_before + 1)
    })
    .await;
    assert!(resumed, "the class went on after the publisher came back");
    let recordings = get_json(&c.http, &format!("{}/api/recordings", c.master_url()))
        .await
        .unwrap_or(Value::Null);
    let of_class = recordings["recordings"]
        .as_array()
        .map(|a| a.iter().filter(|r| r["path"] == "live/whip").count())
        .unwrap_or(0);
    assert_eq!(of_class, 1, "the same recording goes on: {recordings}");

    // Cut off (kill -9, no DELETE): the class ends after the idle deadline and the grace.
    again.kill9();
    let ended = stream_gone(&c, "live/whip", Duration::from_secs(20)).await;
    assert!(ended, "the class ended after its publisher was cut off");
}
