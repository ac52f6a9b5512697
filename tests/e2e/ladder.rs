//! Issue 33: a teacher's encoder sends the whole ABR ladder over Enhanced RTMP v2 multitrack
//! (ffmpeg 9, three H.264 renditions and one AAC track in one FLV). Every slave serves it as one
//! multivariant playlist over three LL-HLS renditions whose segments and parts line up, with
//! no transcoding.

use std::collections::BTreeMap;

use media::hls::conformance::check_multivariant_playlist;
use media::hls::multivariant;

use crate::support::*;

/// Per segment: its EXTINF (None while open) and its parts' durations, by media sequence.
type Cuts = BTreeMap<u64, (Option<String>, Vec<String>)>;

fn cuts(playlist: &str) -> Cuts {
    let mut out = Cuts::new();
    let mut msn = media_sequence(playlist).expect("media sequence");
    let (mut parts, mut extinf) = (Vec::new(), None);
    for l in playlist.lines() {
        if let Some(p) = l.strip_prefix("#EXT-X-PART:") {
            let d = p
                .split(',')
                .find_map(|a| a.strip_prefix("DURATION="))
                .unwrap();
            parts.push(d.to_string());
        } else if let Some(d) = l.strip_prefix("#EXTINF:") {
            extinf = Some(d.trim_end_matches(',').to_string());
        } else if !l.starts_with('#') && !l.is_empty() {
            out.insert(msn, (extinf.take(), std::mem::take(&mut parts)));
            msn += 1;
        }
    }
    out.insert(msn, (None, parts));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_obs_shaped_config_request_gets_a_ladder_whose_multitrack_publish_is_served_as_aligned_renditions()
 {
    let Some(ffmpeg9) = ffmpeg9() else { return };
    let c = Cluster::start("ladder", 2, Timings::default()).await;
    let (_, key, t) = c.teacher("ladder").await;
    let origin = t["node_id"].as_str().unwrap().to_string();
    // What OBS 31 posts to its `--config-url` (GoLiveApi::PostData), with the teacher's key.
    let golive = |key: &str| {
        serde_json::json!({
            "service": "classcast",
            "schema_version": "2024-06-04",
            "authentication": key,
            "client": {"name": "obs-studio", "version": "31.0.2", "supported_codecs": ["h264", "h265", "av1"]},
            "capabilities": {
                "cpu": {"physical_cores": 2, "logical_cores": 2, "speed": 3000, "name": "test"},
                "memory": {"total": 8u64 << 30, "free": 4u64 << 30},
                "system": {"version": "12", "name": "Debian", "build": 0, "release": "12", "revision": 0, "bits": 64, "arm": false, "armEmulation": false},
            },
            "preferences": {
                "vod_track_audio": false, "width": 1920, "height": 1080,
                "framerate": {"numerator": 30, "denominator": 1},
                "canvas_width": 1920, "canvas_height": 1080,
                "maximum_video_tracks": 3, "maximum_aggregate_bitrate": null,
            },
        })
    };
    let url = format!("{}/api/obs/golive", c.master_url());
    let bad = c
        .http
        .post(&url)
        .json(&golive("ladder?key=not.a.token"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401, "a key that is not ours is refused");
    let config: serde_json::Value = c
        .http
        .post(&url)
        .json(&golive(&key))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let heights: Vec<_> = config["encoder_configurations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["height"].as_u64(), e["settings"]["bf"].as_u64()))
        .collect();
    assert_eq!(
        heights,
        [
            (Some(1080), Some(0)),
            (Some(720), Some(0)),
            (Some(360), Some(0))
        ],
        "{config}"
    );
    let ingest = &config["ingest_endpoints"][0];
    let publish_url = ingest["url_template"]
        .as_str()
        .unwrap()
        .replace("{stream_key}", ingest["authentication"].as_str().unwrap());
    assert!(
        publish_url.contains(&format!(":{}/", c.slave(&origin).rtmp_port)),
        "{publish_url}"
    );
    // The ladder goes where OBS would send it.
    let mut publisher = ffmpeg9_ladder(&ffmpeg9, "ladder", "publisher", &publish_url);
    c.wait_live("ladder", 2).await;

    for slave in &c.slaves {
        let role = if slave.id == origin { "origin" } else { "edge" };
        let jwt = sign_student(&c, &slave.id, "live/ladder", 600, None);
        let base = format!("{}/live/ladder", slave.base());
        let url = format!("{base}/index.m3u8?jwt={jwt}");
        let text = c.http.get(&url).send().await.unwrap().text().await.unwrap();
        assert_eq!(
            check_multivariant_playlist(&text),
            vec![],
            "{role}'s multivariant playlist:\n{text}"
        );
        let variants = multivariant::parse(&text).unwrap();
        let got: Vec<_> = variants
            .iter()
            .map(|v| (v.uri.as_str(), v.resolution, v.frame_rate))
            .collect();
        assert_eq!(
            got,
            [
                ("v0/index.m3u8", Some((1920, 1080)), Some(30.0)),
                ("v1/index.m3u8", Some((1280, 720)), Some(30.0)),
                ("v2/index.m3u8", Some((640, 360)), Some(30.0)),
            ],
            "{role}:\n{text}"
        );
        for v in &variants {
            assert!(
                v.codecs.starts_with("avc1.") && v.codecs.ends_with(",mp4a.40.2"),
                "{role}: {v:?}"
            );
            assert!(v.average_bandwidth <= v.bandwidth, "{role}: {v:?}");
        }
        // Each rendition is measured at its own rate: 3, 1.5 and 0.5 Mbit/s asked of x264.
        let avg: Vec<u64> = variants.iter().map(|v| v.average_bandwidth).collect();
        assert!(
            avg[0] > avg[1] && avg[1] > avg[2],
            "{role}: {avg:?}\n{text}"
        );
        assert!(avg[2] < 1_000_000 && avg[0] > 1_500_000, "{role}: {avg:?}");
        println!("{role}: {text}");

        // The renditions' segments and parts line up: the same media sequence numbers, the
        // same EXTINF and the same part durations wherever two playlists hold a segment.
        let mut all = Vec::new();
        for v in &variants {
            let pl = c
                .http
                .get(format!("{base}/{}?jwt={jwt}", v.uri))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            assert_conforms(&format!("{role} {}", v.uri), &pl);
            all.push((v.uri.clone(), cuts(&pl)));
        }
        let (first_uri, first) = &all[0];
        let mut compared = 0;
        for (uri, other) in &all[1..] {
            for (msn, (extinf, parts)) in other {
                let Some((e0, p0)) = first.get(msn) else {
                    continue;
                };
                if extinf.is_some() && e0.is_some() {
                    assert_eq!(extinf, e0, "{role}: segment {msn} of {uri} and {first_uri}");
                    assert_eq!(parts, p0, "{role}: parts of {msn} in {uri} and {first_uri}");
                    compared += 1;
                }
            }
        }
        assert!(compared >= 2, "{role}: only {compared} segments in common");

        // Every rendition plays from this slave, at its own size, with no decoding error.
        for (v, (w, h)) in variants.iter().zip([(1920, 1080), (1280, 720), (640, 360)]) {
            let u = format!("{base}/{}?jwt={jwt}", v.uri);
            let probe = ffprobe(&u).unwrap_or_else(|e| panic!("{role} {}: {e}", v.uri));
            let mut got = codecs(&probe);
            got.sort();
            assert_eq!(got, ["aac", "h264"], "{role} {}", v.uri);
            let video = probe["streams"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["codec_name"] == "h264")
                .unwrap();
            assert_eq!(
                (video["width"].as_u64(), video["height"].as_u64()),
                (Some(w), Some(h)),
                "{role} {}",
                v.uri
            );
        }
        if role == "edge" {
            let (ok, errors) = ffmpeg_decode(&format!("{base}/v2/index.m3u8?jwt={jwt}"), 3);
            assert!(ok && errors.trim().is_empty(), "decode errors: {errors}");
            // mpv opens the multivariant playlist itself and picks a rendition.
            assert_mpv_plays(&url);
        }
    }
    // ffmpeg 9 declared its FourCCs in `connect` and published after reading our answer,
    // which states what we take (media::rtmp::enhanced).
    let log = c.slave(&origin).proc.log_text();
    assert!(
        log.contains("an Enhanced RTMP client") && log.contains(r#"fourccs=["avc1", "mp4a"]"#),
        "the origin saw ffmpeg's Enhanced RTMP connect"
    );
    publisher.terminate(std::time::Duration::from_secs(5));
}
