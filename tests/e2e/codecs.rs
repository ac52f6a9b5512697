//! Issue 33: what modern encoders send over Enhanced RTMP v2 (HEVC, AV1, Opus) is packaged and
//! plays from an edge; what cannot be packaged is refused with the reason, never accepted in
//! silence. The publisher is ffmpeg 9 (PyPI imageio-ffmpeg), the players Debian's ffprobe,
//! ffmpeg and mpv.

use std::time::Duration;

use crate::support::*;

/// A class name, ffmpeg 9's video and audio encoder options, and what the test expects.
type Publish<T> = (
    &'static str,
    &'static [&'static str],
    &'static [&'static str],
    T,
);

/// An edge's playlist URL for `name` (the slave that is not the origin), with its own token.
fn edge_url(c: &Cluster, origin: &str, name: &str) -> String {
    let edge = c
        .slaves
        .iter()
        .find(|s| s.id != origin)
        .expect("two slaves");
    let jwt = sign_student(c, &edge.id, &format!("live/{name}"), 600, None);
    format!("{}/live/{name}/index.m3u8?jwt={jwt}", edge.base())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hevc_av1_and_opus_over_enhanced_rtmp_play_from_an_edge() {
    let Some(ffmpeg9) = ffmpeg9() else { return };
    let c = Cluster::start("codecs", 2, Timings::default()).await;
    let cases: [Publish<[&str; 2]>; 3] = [
        (
            "hevc",
            &[
                "-c:v",
                "libx265",
                "-preset",
                "ultrafast",
                "-x265-params",
                "log-level=error:bframes=0",
            ],
            &["-c:a", "aac", "-b:a", "64k"],
            ["hevc", "aac"],
        ),
        (
            "av1",
            &[
                "-c:v",
                "libsvtav1",
                "-preset",
                "12",
                "-svtav1-params",
                "lp=1",
            ],
            &["-c:a", "libopus", "-b:a", "48k"],
            ["av1", "opus"],
        ),
        (
            "h264opus",
            &[
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-tune",
                "zerolatency",
            ],
            &["-c:a", "libopus", "-b:a", "48k"],
            ["h264", "opus"],
        ),
    ];
    for (name, video, audio, want) in cases {
        let (rtmp, key, t) = c.teacher(name).await;
        let origin = t["node_id"].as_str().unwrap().to_string();
        let mut publisher = ffmpeg9_publish(
            &ffmpeg9,
            "codecs",
            &format!("publisher-{name}"),
            &format!("{rtmp}/{key}"),
            video,
            audio,
        );
        c.wait_live(name, 1).await;
        let url = edge_url(&c, &origin, name);
        let probe = ffprobe(&url).unwrap_or_else(|e| panic!("{name}: ffprobe from the edge: {e}"));
        let mut got = codecs(&probe);
        got.sort();
        let mut want_sorted = want.to_vec();
        want_sorted.sort();
        assert_eq!(got, want_sorted, "{name}: {probe}");
        let video_stream = probe["streams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["codec_name"] == want[0])
            .unwrap();
        assert_eq!(
            (
                video_stream["width"].as_u64(),
                video_stream["height"].as_u64()
            ),
            (Some(320), Some(240)),
            "{name}: {video_stream}"
        );
        let (ok, errors) = ffmpeg_decode(&url, 3);
        assert!(
            ok && errors.trim().is_empty(),
            "{name}: decode errors: {errors}"
        );
        // HEVC and AV1 go to LL-HLS players only: the master offers no WHEP, the slave refuses it.
        if want[0] != "h264" {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            let tok = loop {
                let tok = c.student(name, "eve").await;
                if tok["webrtc"] == "codec" || std::time::Instant::now() > deadline {
                    break tok;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            assert_eq!(tok["webrtc"], "codec", "{name}: {tok}");
            assert!(tok.get("whep_url").is_none(), "{name}: {tok}");
            let node = tok["node_id"].as_str().unwrap();
            let whep = format!("{}/whep/live/{name}", c.slave(node).base());
            let (_, _, sdp, _) = crate::webrtc::offer();
            let (status, body, _) =
                crate::webrtc::post_offer(&c, &whep, tok["token"].as_str(), &sdp).await;
            assert_eq!(status, 422, "{name}: {body}");
            assert!(body.contains("\"codec\""), "{name}: {body}");
        }
        if name == "hevc" {
            assert_mpv_plays(&url);
        }
        publisher.terminate(Duration::from_secs(5));
    }
}

/// VP9 (which ffmpeg 9 writes as Enhanced RTMP `vp09`) and MP3 audio (legacy FLV) are not
/// packaged: the publish is ended at the first media message with an error status ffmpeg prints
/// and exits on, a log line, a metric, and the reason in the teacher's playlist answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_codec_that_cannot_be_packaged_is_refused_with_the_reason() {
    let Some(ffmpeg9) = ffmpeg9() else { return };
    let c = Cluster::start("codec_refused", 1, Timings::default()).await;
    let cases: [Publish<(&str, &str)>; 2] = [
        (
            "vp9",
            &[
                "-c:v",
                "libvpx-vp9",
                "-deadline",
                "realtime",
                "-cpu-used",
                "8",
            ],
            &["-c:a", "aac"],
            ("video_codec", "\"vp09\""),
        ),
        (
            "mp3",
            &["-c:v", "libx264", "-preset", "ultrafast"],
            &["-c:a", "libmp3lame", "-ar", "44100"],
            ("audio_codec", "MP3 audio"),
        ),
    ];
    let base = c.slaves[0].base();
    for (name, video, audio, (kind, reason)) in cases {
        let (rtmp, key, t) = c.teacher(name).await;
        let mut publisher = ffmpeg9_publish(
            &ffmpeg9,
            "codec_refused",
            &format!("publisher-{name}"),
            &format!("{rtmp}/{key}"),
            video,
            audio,
        );
        let status = publisher
            .wait_exit(Duration::from_secs(20))
            .unwrap_or_else(|| panic!("{name}: ffmpeg kept publishing a refused codec"));
        assert!(!status.success(), "{name}: ffmpeg exited {status}");
        let said = publisher.log_text();
        assert!(
            said.contains("Server error") && said.contains(reason),
            "{name}: ffmpeg did not print the server's reason:\n{said}"
        );
        let metrics = metrics_text(&c.http, &base).await;
        let series = format!("classcast_slave_publish_codec_refusals_total{{kind=\"{kind}\"}}");
        assert_eq!(
            metric_value(&metrics, &series),
            Some(1.0),
            "{name}: {series}"
        );
        assert!(
            c.slaves[0]
                .proc
                .log_text()
                .lines()
                .filter(|l| l.contains("publish refused") && l.contains(reason))
                .count()
                >= 1,
            "{name}: no log line names the reason"
        );
        // The teacher's preview asks the origin's playlist: the answer says why.
        let r = c
            .http
            .get(t["hls_url"].as_str().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 404, "{name}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"], "publish_refused", "{name}: {body}");
        assert!(
            body["message"].as_str().unwrap().contains(reason),
            "{name}: {body}"
        );
    }
    // A class in a codec that is packaged publishes on the same slave as before.
    let (rtmp, key, _) = c.teacher("after").await;
    let mut ok = c.publish("publisher-after", &rtmp, &key, None);
    c.wait_live("after", 1).await;
    ok.terminate(Duration::from_secs(5));
}
