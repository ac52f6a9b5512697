//! Issue 11: the teacher's real tools. OBS Studio (headless under Xvfb, software rendering) and
//! GStreamer publish; ffprobe reads from an edge. See ../shared/notes/rtmp-clients.md.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};

use crate::support::*;

/// A virtual X display for OBS.
struct Xvfb {
    display: String,
    _proc: Proc,
}

impl Xvfb {
    fn start(test: &str) -> Xvfb {
        let n = (100..400)
            .find(|n| !Path::new(&format!("/tmp/.X{n}-lock")).exists())
            .unwrap();
        let mut cmd = Command::new("Xvfb");
        cmd.args([
            &format!(":{n}"),
            "-screen",
            "0",
            "1280x720x24",
            "-nolisten",
            "tcp",
        ]);
        let p = Proc::spawn(
            "xvfb",
            log_dir(test).join(format!("xvfb-{n}.log")),
            &mut cmd,
        );
        let sock = format!("/tmp/.X11-unix/X{n}");
        let t0 = Instant::now();
        while !Path::new(&sock).exists() && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
        Xvfb {
            display: format!(":{n}"),
            _proc: p,
        }
    }
}

/// OBS Studio run from a generated profile: Custom service with the server and key exactly as
/// the master hands them to a teacher, x264 CBR, keyframe interval 1 s, 1280x720 at 30 fps.
struct Obs {
    proc: Proc,
    config: PathBuf,
    ws_port: u16,
}

impl Obs {
    fn start(test: &str, name: &str, x: &Xvfb, server: &str, key: &str) -> Obs {
        let config = log_dir(test).join(format!("obs-{name}"));
        let _ = std::fs::remove_dir_all(&config);
        let c = config.join("obs-studio");
        std::fs::create_dir_all(c.join("basic/profiles/P")).unwrap();
        std::fs::create_dir_all(c.join("basic/scenes")).unwrap();
        let ws_port = free_port();
        std::fs::write(
            c.join("global.ini"),
            format!(
                "[General]\nFirstRun=true\nEnableAutoUpdates=false\nConfirmOnExit=false\n\
                 [Basic]\nProfile=P\nProfileDir=P\nSceneCollection=C\nSceneCollectionFile=C\n\
                 [OBSWebSocket]\nFirstLoad=false\nServerEnabled=true\nServerPort={ws_port}\nAuthRequired=false\nAlertsEnabled=false\n"
            ),
        )
        .unwrap();
        std::fs::write(
            c.join("basic/profiles/P/basic.ini"),
            "[General]\nName=P\n[Output]\nMode=Advanced\n[AdvOut]\nEncoder=obs_x264\nTrackIndex=1\n\
             [Video]\nBaseCX=1280\nBaseCY=720\nOutputCX=1280\nOutputCY=720\nFPSType=0\nFPSCommon=30\n\
             [Audio]\nSampleRate=48000\nChannelSetup=Stereo\n",
        )
        .unwrap();
        let service = json!({"type": "rtmp_custom", "settings": {"server": server, "key": key, "use_auth": false}});
        std::fs::write(c.join("basic/profiles/P/service.json"), service.to_string()).unwrap();
        let encoder = json!({"rate_control": "CBR", "bitrate": 2500, "keyint_sec": 1, "preset": "veryfast", "tune": "zerolatency"});
        std::fs::write(
            c.join("basic/profiles/P/streamEncoder.json"),
            encoder.to_string(),
        )
        .unwrap();
        let scene = json!({
            "name": "C", "current_scene": "S", "current_program_scene": "S", "scene_order": [{"name": "S"}],
            "sources": [
                {"id": "scene", "versioned_id": "scene", "name": "S", "uuid": "11111111-1111-1111-1111-111111111111",
                 "settings": {"items": [{"name": "Color", "id": 1, "visible": true, "pos": {"x": 0, "y": 0}, "scale": {"x": 1, "y": 1}, "bounds_type": 0}], "id_counter": 1}},
                {"id": "color_source", "versioned_id": "color_source_v3", "name": "Color", "uuid": "22222222-2222-2222-2222-222222222222",
                 "settings": {"color": 4278255360u32, "width": 1280, "height": 720}}
            ]
        });
        std::fs::write(c.join("basic/scenes/C.json"), scene.to_string()).unwrap();
        let mut cmd = Command::new("obs");
        cmd.args([
            "--multi",
            "--disable-missing-files-check",
            "--profile",
            "P",
            "--collection",
            "C",
            "--startstreaming",
            "--minimize-to-tray",
        ])
        .env("DISPLAY", &x.display)
        .env("XDG_CONFIG_HOME", &config)
        .env("LIBGL_ALWAYS_SOFTWARE", "1")
        .env("QT_QPA_PLATFORM", "xcb")
        .current_dir(&config);
        let proc = Proc::spawn(
            &format!("obs-{name}"),
            log_dir(test).join(format!("obs-{name}.out")),
            &mut cmd,
        );
        Obs {
            proc,
            config,
            ws_port,
        }
    }

    /// OBS's own log.
    fn log(&self) -> String {
        let dir = self.config.join("obs-studio/logs");
        let mut out = String::new();
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                out.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
        out
    }

    /// Waits for OBS to report the outcome of its connection attempt: Some(true) on success.
    async fn connected(&self, within: Duration) -> Option<bool> {
        let t0 = Instant::now();
        while t0.elapsed() < within {
            let log = self.log();
            for line in log.lines().filter(|l| l.contains("Connection to rtmp")) {
                if line.trim_end().ends_with("successful") {
                    return Some(true);
                }
                if line.contains("failed") {
                    return Some(false);
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        None
    }

    /// Stops streaming gracefully through OBS's websocket (protocol v5: Hello, Identify, Request).
    async fn stop_stream(&self) {
        let (mut ws, _) =
            tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}", self.ws_port))
                .await
                .expect("obs websocket");
        let recv = |m: tokio_tungstenite::tungstenite::Message| {
            serde_json::from_str::<Value>(m.to_text().unwrap_or("{}")).unwrap_or(Value::Null)
        };
        let hello = recv(ws.next().await.unwrap().unwrap());
        assert_eq!(hello["op"], 0);
        ws.send(json!({"op": 1, "d": {"rpcVersion": 1}}).to_string().into())
            .await
            .unwrap();
        assert_eq!(recv(ws.next().await.unwrap().unwrap())["op"], 2);
        ws.send(
            json!({"op": 6, "d": {"requestType": "StopStream", "requestId": "stop"}})
                .to_string()
                .into(),
        )
        .await
        .unwrap();
        loop {
            let m = recv(ws.next().await.unwrap().unwrap());
            if m["op"] == 7 {
                assert_eq!(m["d"]["requestStatus"]["result"], true, "StopStream: {m}");
                break;
            }
        }
    }
}

async fn ended_everywhere(c: &Cluster, stream: &str, within: Duration) -> bool {
    wait_until(within, || async {
        let mut all = true;
        for s in &c.slaves {
            let r = peer_get(&c.http, &format!("{}/live/{stream}/index.m3u8", s.base())).await;
            let text = r.text().await.unwrap_or_default();
            all &= text.contains("#EXT-X-ENDLIST");
        }
        all
    })
    .await
}

/// A student token on a slave that is not `origin`.
async fn edge_url(c: &Cluster, stream: &str, origin: &str) -> String {
    for i in 0..20 {
        let v = c.token(json!({"role": "student", "user_id": format!("e{i}"), "stream": stream, "exclude": origin})).await.unwrap();
        if v["node_id"] != origin {
            return v["hls_url"].as_str().unwrap().to_string();
        }
    }
    panic!("no edge serves {stream}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obs_studio_streams_stops_and_is_refused() {
    let t = Timings {
        grace_ms: 2000,
        ..Default::default()
    };
    let c = Cluster::start("obs", 2, t).await;
    let x = Xvfb::start("obs");

    // Forged key: OBS is refused, says so, and no stream appears.
    let (server, real_key, teacher) = c.teacher("obsclass").await;
    let origin = teacher["node_id"].as_str().unwrap().to_string();
    let forged = {
        let other = common::token::SigningKey::generate().unwrap().0;
        let claims = common::token::new_claims(
            "classcast",
            "eve",
            common::token::Role::Teacher,
            &origin,
            "live/obsclass",
            common::token::Action::Publish,
            Duration::from_secs(60),
        );
        format!("obsclass?key={}", other.sign(&claims).unwrap())
    };
    let mut bad = Obs::start("obs", "forged", &x, &server, &forged);
    assert_eq!(
        bad.connected(Duration::from_secs(30)).await,
        Some(false),
        "OBS must report the refusal:\n{}",
        bad.log()
    );
    bad.proc.kill9();
    let streams = get_json(&c.http, &format!("{}/cluster/streams", c.master_url()))
        .await
        .unwrap();
    assert_eq!(
        streams["streams"],
        json!([]),
        "a refused publisher creates no stream"
    );
    assert!(
        c.slave(&origin).proc.log_text().contains("publish refused"),
        "the server logs who tried and why"
    );

    // The real key: OBS goes live; after 15 s a student on the edge sees OBS's real output.
    let obs = Obs::start("obs", "live", &x, &server, &real_key);
    assert_eq!(
        obs.connected(Duration::from_secs(30)).await,
        Some(true),
        "OBS did not connect:\n{}",
        obs.log()
    );
    c.wait_live("obsclass", 2).await;
    tokio::time::sleep(Duration::from_secs(15)).await;
    let url = edge_url(&c, "obsclass", &origin).await;
    let probe = ffprobe(&url).unwrap_or_else(|e| panic!("ffprobe from the edge: {e}"));
    assert_eq!(codecs(&probe), vec!["h264", "aac"], "{probe}");
    assert_eq!(
        (
            probe["streams"][0]["width"].as_u64(),
            probe["streams"][0]["height"].as_u64()
        ),
        (Some(1280), Some(720))
    );

    // Stopped cleanly through OBS's websocket: the stream ends on origin and edges after the
    // grace period, and the path can be published again at once.
    let t0 = Instant::now();
    obs.stop_stream().await;
    assert!(
        ended_everywhere(&c, "obsclass", Duration::from_secs(15)).await,
        "clean stop did not end the stream everywhere"
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(1800),
        "ended before the grace period"
    );
    let mut again = c.publish("republish1", &server, &real_key, Some(2));
    assert!(
        again.wait_exit(Duration::from_secs(20)).unwrap().success(),
        "the path can be published again"
    );
    drop(obs);

    // OBS killed (no FCUnpublish, just a closed socket): the same.
    assert!(ended_everywhere(&c, "obsclass", Duration::from_secs(15)).await);
    let mut obs = Obs::start("obs", "killed", &x, &server, &real_key);
    assert_eq!(
        obs.connected(Duration::from_secs(30)).await,
        Some(true),
        "OBS did not connect:\n{}",
        obs.log()
    );
    c.wait_live("obsclass", 2).await;
    // Let the edge pick the new stream up before the kill.
    let url = edge_url(&c, "obsclass", &origin).await;
    assert!(ffprobe(&url).is_ok());
    obs.proc.kill9();
    assert!(
        ended_everywhere(&c, "obsclass", Duration::from_secs(15)).await,
        "killed OBS did not end the stream everywhere"
    );
    let mut again = c.publish("republish2", &server, &real_key, Some(2));
    assert!(
        again.wait_exit(Duration::from_secs(20)).unwrap().success(),
        "the path can be published again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gstreamer_rtmp2sink_and_rtmpsink_publish() {
    let c = Cluster::start("gstreamer", 2, Timings::default()).await;
    for (sink, stream) in [("rtmp2sink", "gst2"), ("rtmpsink", "gst1")] {
        let (server, key, teacher) = c.teacher(stream).await;
        let origin = teacher["node_id"].as_str().unwrap().to_string();
        let location = if sink == "rtmpsink" {
            format!("{server}/{key} live=1")
        } else {
            format!("{server}/{key}")
        };
        let pipeline = format!(
            "videotestsrc is-live=true ! video/x-raw,width=640,height=360,framerate=30/1 ! x264enc tune=zerolatency key-int-max=30 speed-preset=ultrafast \
             ! h264parse ! flvmux streamable=true name=m ! {sink} location=\"{location}\" audiotestsrc is-live=true ! voaacenc ! m."
        );
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &format!("exec gst-launch-1.0 -q {pipeline}")]);
        let _gst = Proc::spawn(
            sink,
            log_dir("gstreamer").join(format!("{sink}.log")),
            &mut cmd,
        );
        c.wait_live(stream, 2).await;
        let url = edge_url(&c, stream, &origin).await;
        let probe = ffprobe(&url).unwrap_or_else(|e| panic!("{sink}: ffprobe from the edge: {e}"));
        assert_eq!(codecs(&probe), vec!["h264", "aac"], "{sink}: {probe}");
        assert_eq!(probe["streams"][0]["width"], 640, "{sink}");
        let (ok, err) = ffmpeg_decode(&url, 3);
        assert!(
            ok && err.trim().is_empty(),
            "{sink}: decode from the edge: {err}"
        );
    }
}
