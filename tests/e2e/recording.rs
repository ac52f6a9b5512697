//! Issue 19: the class is kept. The origin records every segment as it completes; after
//! `kill -9` what is on disk plays with no repair step, and the restarted slave lists and
//! serves it; a finished class plays as VOD from an edge (ffprobe, mpv), with Range and a
//! one-file download; tokens are bound to their recording; teachers delete; retention and a
//! full disk stop recording without touching the class.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::*;

async fn recordings(c: &Cluster) -> Vec<Value> {
    get_json(&c.http, &format!("{}/api/recordings", c.master_url()))
        .await
        .and_then(|v| v["recordings"].as_array().cloned())
        .unwrap_or_default()
}

/// The recording of `stream` once `pred` holds for it.
pub(crate) async fn wait_recording(
    c: &Cluster,
    stream: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let path = format!("live/{stream}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(r) = recordings(c)
            .await
            .into_iter()
            .find(|r| r["path"] == path.as_str() && pred(r))
        {
            return r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no recording of {stream} {what}: {:?}",
            recordings(c).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Seconds of media ffprobe reads from `url` (a playlist or a file), decoding it all first
/// with ffmpeg, which must report no error.
fn decodes_for(url: &str) -> f64 {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-i", url, "-f", "null", "-"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.trim().is_empty(),
        "ffmpeg decoding {url}: {err}"
    );
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=duration",
            "-of",
            "csv=p=0",
            url,
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0.0)
}

/// Every program-date-time of `playlist` follows the one before it by that segment's EXTINF
/// (within 5 ms), except across a discontinuity, where it may only move forward.
fn dates_follow_durations(playlist: &str) {
    let (mut prev, mut dur, mut disc, mut n) = (None::<u64>, None::<f64>, false, 0);
    for line in playlist.lines() {
        if let Some(d) = line.strip_prefix("#EXT-X-PROGRAM-DATE-TIME:") {
            let at = media::hls::playlist::parse_rfc3339_ms(d).expect("a date");
            if let (Some(p), Some(len)) = (prev, dur) {
                let follows = p as f64 + len * 1000.0;
                if disc {
                    assert!(at as f64 >= follows - 5.0, "a date went back at {d}");
                } else {
                    assert!(
                        (at as f64 - follows).abs() <= 5.0,
                        "{d} is not {follows} ms"
                    );
                }
                n += 1;
            }
            (prev, dur, disc) = (Some(at), None, false);
        } else if let Some(d) = line.strip_prefix("#EXTINF:") {
            dur = d.trim_end_matches(',').parse().ok();
        } else if line == "#EXT-X-DISCONTINUITY" {
            disc = true;
        }
    }
    assert!(n >= 2, "too few dated segments to check:\n{playlist}");
}

fn only_subdir(dir: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(dirs.len(), 1, "recordings in {}: {dirs:?}", dir.display());
    dirs[0].clone()
}

async fn recording_token(c: &Cluster, id: &str, exclude: Option<&str>) -> Value {
    let mut body = json!({"role": "student", "user_id": "replay", "recording": id});
    if let Some(x) = exclude {
        body["exclude"] = json!(x);
    }
    c.token(body).await.expect("a token for the recording")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_20_s_leaves_a_recording_that_plays_and_is_served_after_restart() {
    let mut c = Cluster::start("recording_crash", 1, Timings::default()).await;
    let (rtmp, key, _) = c.teacher("crash").await;
    let _publisher = c.publish("publisher", &rtmp, &key, Some(30));
    // 20 s into the class (by the recording's own clock: 19 s of media written) the origin dies.
    wait_recording(&c, "crash", "with 19 s", |r| {
        r["duration_s"].as_f64().unwrap_or(0.0) >= 19.0
    })
    .await;
    // While the class runs its recording is a growing EVENT playlist with delta updates.
    let live = wait_recording(&c, "crash", "still recording", |r| r["recording"] == true).await;
    let v = recording_token(&c, live["id"].as_str().unwrap(), None).await;
    let url = v["hls_url"].as_str().unwrap();
    let full = c.http.get(url).send().await.unwrap().text().await.unwrap();
    let delta = c
        .http
        .get(format!("{url}&_HLS_skip=YES"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(full.contains("#EXT-X-PLAYLIST-TYPE:EVENT") && full.contains("CAN-SKIP-UNTIL=6.0"));
    assert_conforms("growing recording", &full);
    assert!(
        !full.contains("#EXT-X-SKIP") && !full.contains("ENDLIST"),
        "{full}"
    );
    assert!(delta.contains("#EXT-X-SKIP:SKIPPED-SEGMENTS="), "{delta}");
    assert!(
        delta.len() * 2 < full.len(),
        "a delta update is not smaller"
    );
    c.slave_mut("s1").proc.kill9();

    // What is on disk plays as it is: no moov needed, no index repair.
    let dir = only_subdir(&c.record_dir("s1").join("s1"));
    let secs = decodes_for(dir.join("index.m3u8").to_str().unwrap());
    assert!(secs >= 18.0, "only {secs} s of the class on disk");
    let index = std::fs::read_to_string(dir.join("index.jsonl")).unwrap();
    assert!(
        !index.contains("end_ms"),
        "a crashed recording has no end line"
    );

    // The slave comes back, finds it, and it plays as VOD.
    c.restart_slave("s1", &[]);
    let r = wait_recording(&c, "crash", "after the restart", |r| {
        r["recording"] == false
    })
    .await;
    assert!(r["duration_s"].as_f64().unwrap() >= 18.0, "{r}");
    let v = recording_token(&c, r["id"].as_str().unwrap(), None).await;
    let url = v["hls_url"].as_str().unwrap();
    assert!(url.contains("/vod/"), "{url}");
    let probe = ffprobe(url).expect("the recording plays as VOD");
    assert!(codecs(&probe).contains(&"h264".to_string()), "{probe}");
    let text = c.http.get(url).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("#EXT-X-PLAYLIST-TYPE:VOD") && text.contains("#EXT-X-ENDLIST"));
    assert_conforms("recording (VOD)", &text);
    dates_follow_durations(&text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_back_within_the_grace_period_continues_the_same_recording() {
    let c = Cluster::start("recording_reconnect", 1, Timings::default()).await;
    let (rtmp, key, _) = c.teacher("again").await;
    let mut first = c.publish("publisher-1", &rtmp, &key, Some(4));
    first.wait_exit(Duration::from_secs(30));
    // Back at once (the grace period is 2 s here): the same class, the same recording.
    let mut second = c.publish("publisher-2", &rtmp, &key, Some(4));
    second.wait_exit(Duration::from_secs(30));
    let rec = wait_recording(&c, "again", "finished", |r| r["recording"] == false).await;
    let all: Vec<Value> = recordings(&c)
        .await
        .into_iter()
        .filter(|r| r["path"] == "live/again")
        .collect();
    assert_eq!(all.len(), 1, "one recording for the class: {all:?}");
    let v = recording_token(&c, rec["id"].as_str().unwrap(), None).await;
    let url = v["hls_url"].as_str().unwrap();
    let text = c.http.get(url).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("#EXT-X-DISCONTINUITY"), "{text}");
    dates_follow_durations(&text);
    let secs = decodes_for(url);
    assert!(secs >= 7.0, "playable across the reconnect: {secs} s");
}

/// Issue 30: a teacher who reconnects with other encoder settings (640x360, then 1280x720)
/// downloads the whole class, in two files: `download.mp4` lists them (300) instead of
/// stopping at the change, from the holder and from an edge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_class_whose_encoder_settings_change_downloads_whole_in_parts() {
    let c = Cluster::start("recording_parts", 2, Timings::default()).await;
    let (rtmp, key, t) = c.teacher("parts").await;
    let origin = t["node_id"].as_str().unwrap().to_string();
    let url = format!("{rtmp}/{key}");
    let mut first = ffmpeg_publish_sized(&c.test, "publisher-360p", &url, Some(4), "640x360");
    first.wait_exit(Duration::from_secs(30));
    let mut second = ffmpeg_publish_sized(&c.test, "publisher-720p", &url, Some(4), "1280x720");
    second.wait_exit(Duration::from_secs(30));
    let rec = wait_recording(&c, "parts", "finished", |r| r["recording"] == false).await;
    let total = rec["duration_s"].as_f64().unwrap();
    assert!(total >= 7.0, "{rec}");
    for exclude in [None, Some(origin.as_str())] {
        let v = recording_token(&c, rec["id"].as_str().unwrap(), exclude).await;
        let whole = v["hls_url"]
            .as_str()
            .unwrap()
            .replace("index.m3u8", "download.mp4");
        let r = c.http.get(&whole).send().await.unwrap();
        assert_eq!(r.status(), 300, "from {}", v["node_id"]);
        let list: Value = r.json().await.unwrap();
        let parts = list["parts"].as_array().unwrap();
        assert_eq!(parts.len(), 2, "{list}");
        assert!(
            list["message"].as_str().unwrap().contains("2 files"),
            "{list}"
        );
        let mut decoded = 0.0;
        for (i, (p, want)) in parts.iter().zip(["640x360", "1280x720"]).enumerate() {
            let file = p["file"].as_str().unwrap();
            assert_eq!(file, format!("download-{}.mp4", i + 1));
            let bytes = c
                .http
                .get(whole.replace("download.mp4", file))
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            let path = log_dir(&c.test).join(format!("part{}-{}.mp4", i + 1, v["node_id"]));
            std::fs::write(&path, &bytes).unwrap();
            let probe = ffprobe(path.to_str().unwrap()).expect("each part is an MP4");
            let size = format!(
                "{}x{}",
                probe["streams"][0]["width"], probe["streams"][0]["height"]
            );
            assert_eq!(size, want, "part {} keeps its settings", i + 1);
            decoded += decodes_for(path.to_str().unwrap());
        }
        println!(
            "from {}: the parts decode to {decoded:.2} s of a {total:.2} s class",
            v["node_id"]
        );
        assert!(
            (decoded - total).abs() < 1.0,
            "the parts hold the whole class: {decoded} of {total} s"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_class_plays_from_an_edge_downloads_and_is_deleted() {
    let c = Cluster::start("recording_vod", 2, Timings::default()).await;
    let (rtmp, key, t) = c.teacher("vod").await;
    let origin = t["node_id"].as_str().unwrap().to_string();
    let mut publisher = c.publish("publisher", &rtmp, &key, Some(8));
    publisher.wait_exit(Duration::from_secs(30));
    let rec = wait_recording(&c, "vod", "finished", |r| r["recording"] == false).await;
    let id = rec["id"].as_str().unwrap().to_string();
    assert_eq!(rec["node_id"], origin.as_str());
    assert!(rec["duration_s"].as_f64().unwrap() >= 6.0, "{rec}");

    // From the edge, not the origin: ffprobe and mpv.
    let v = recording_token(&c, &id, Some(&origin)).await;
    assert_ne!(v["node_id"], origin.as_str(), "the token names the edge");
    let url = v["hls_url"].as_str().unwrap().to_string();
    let secs = decodes_for(&url);
    assert!(secs >= 6.0, "the edge served {secs} s");
    // From the start: Debian's mpv (with ffmpeg 5.1) fails `--start` on any fMP4 HLS VOD,
    // ffmpeg's own output included; the seek to the middle is checked in Chromium
    // (tests/web/pages.test.mjs).
    assert_mpv_plays(&url);

    // The whole class as one MP4, with Range.
    let dl = url.replace("index.m3u8", "download.mp4");
    let r = c
        .http
        .get(&dl)
        .header("range", "bytes=0-99")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert!(
        r.headers()["content-range"]
            .to_str()
            .unwrap()
            .starts_with("bytes 0-99/")
    );
    let head = r.bytes().await.unwrap();
    assert_eq!(head.len(), 100);
    assert_eq!(&head[4..8], b"ftyp");
    let file = log_dir("recording_vod").join("class.mp4");
    let all = c.http.get(&dl).send().await.unwrap().bytes().await.unwrap();
    std::fs::write(&file, &all).unwrap();
    let secs = decodes_for(file.to_str().unwrap());
    assert!(secs >= 6.0, "the download holds {secs} s");
    // RFC 9110 14.1.1: a last position past the end, even past 64 bits, means the end.
    let r = c
        .http
        .get(&dl)
        .header("range", "bytes=0-18446744073709551616")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    let want = format!("bytes 0-{}/{}", all.len() - 1, all.len());
    assert_eq!(r.headers()["content-range"].to_str().unwrap(), want);

    // A token is bound to its recording.
    let (rtmp, key, _) = c.teacher("other").await;
    let mut p2 = c.publish("publisher-2", &rtmp, &key, Some(3));
    p2.wait_exit(Duration::from_secs(30));
    let other = wait_recording(&c, "other", "finished", |r| r["recording"] == false).await;
    let wrong = url.replace(
        &format!("/vod/{id}/"),
        &format!("/vod/{}/", other["id"].as_str().unwrap()),
    );
    assert_eq!(c.http.get(&wrong).send().await.unwrap().status(), 403);
    let forged = format!("{}?jwt=not.a.token", url.split('?').next().unwrap());
    assert_eq!(c.http.get(&forged).send().await.unwrap().status(), 401);

    // The teacher deletes it: gone from the list, from the holder's disk, from the edge.
    let r = c
        .http
        .post(format!("{}/api/recordings/delete", c.master_url()))
        .json(&json!({"id": id, "credential": TEACHER}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    assert!(recordings(&c).await.iter().all(|r| r["id"] != id.as_str()));
    assert!(
        !c.record_dir(&origin).join(&id).exists(),
        "files left on the holder"
    );
    let gone = wait_until(Duration::from_secs(10), || async {
        c.http
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status() == 404)
    })
    .await;
    assert!(gone, "the edge still serves a deleted recording");
    let r = c
        .http
        .post(format!("{}/api/recordings/delete", c.master_url()))
        .json(&json!({"id": other["id"], "credential": "wrong-password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "a wrong password deletes nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_and_a_full_disk_stop_recordings_not_classes() {
    let mut c = Cluster::start_with(
        "recording_policy",
        0,
        Timings::default(),
        &[],
        // A disk "fuller" than any: every recording stops at once.
        &["--record-min-free-mb", "1000000000"],
    )
    .await;
    c.add_slave("s1", &[]);
    c.wait_healthy(1).await;
    let (rtmp, key, _) = c.teacher("full").await;
    let _publisher = c.publish("publisher", &rtmp, &key, None);
    c.wait_live("full", 1).await;
    let v = c.student("full", "viewer").await;
    ffprobe(v["hls_url"].as_str().unwrap()).expect("the class plays while recording is stopped");
    let metrics = metrics_text(&c.http, &c.slave("s1").base()).await;
    assert_eq!(
        metric_value(
            &metrics,
            r#"classcast_slave_recordings_stopped_total{reason="disk_full"}"#
        ),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        c.slave("s1")
            .proc
            .log_text()
            .contains("recording stopped; the live class carries on")
    );

    // Retention: a recording older than the age limit is deleted when the slave starts.
    let dir = c.record_dir("s2").join("s2");
    {
        let mut w = slave::recordings::disk::RecordingWriter::create(
            &dir,
            "old-1000",
            slave::recordings::disk::Header {
                v: 1,
                path: "live/old".into(),
                started_ms: 1000,
                node_id: "s2".into(),
            },
        )
        .unwrap();
        w.finish(2000).unwrap();
    }
    // And by size: two recent recordings of 600 KiB over a 1 MiB budget lose the older one.
    let now = common::now_unix_ms();
    for (id, started) in [("older", now - 60_000), ("newer", now - 30_000)] {
        let mut w = slave::recordings::disk::RecordingWriter::create(
            &dir,
            id,
            slave::recordings::disk::Header {
                v: 1,
                path: format!("live/{id}"),
                started_ms: started,
                node_id: "s2".into(),
            },
        )
        .unwrap();
        w.init(0, b"init").unwrap();
        let seg = slave::recordings::disk::SegmentEntry {
            msn: 1,
            duration: 1.0,
            pdt_ms: started,
            discontinuity: false,
            init_id: 0,
            bytes: 600 << 10,
        };
        w.segment(seg, &[&vec![0u8; 600 << 10]]).unwrap();
        w.finish(started + 1000).unwrap();
    }
    c.slave_flags.clear();
    c.add_slave(
        "s2",
        &["--record-max-age-days", "1", "--record-max-mb", "1"],
    );
    let deleted = wait_until(Duration::from_secs(10), || async {
        !dir.join("old-1000").exists() && !dir.join("older").exists()
    })
    .await;
    assert!(
        deleted,
        "retention left a recording past its age, or the oldest over the size"
    );
    assert!(
        dir.join("newer").exists(),
        "retention deleted the newest first"
    );
}
