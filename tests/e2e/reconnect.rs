//! Issue 33: Enhanced RTMP v2 "Reconnect Request". When an origin drains (SIGTERM), a publisher
//! that said in `connect` it can reconnect (`capsEx` Reconnect) is asked to, with the tcUrl of
//! another slave the master names and a publish key for it there; the class goes on from that
//! slave without the teacher doing anything.
//!
//! The publisher is a minimal Rust client (rml_rtmp's chunk codec and handshake, commands
//! written by hand): no encoder we can run here implements the request. ffmpeg 9's RTMP client
//! has no handler for it (its binary has no `ReconnectRequest` string), and OBS does not run
//! headless here. The same client checks what we answer to an Enhanced RTMP `connect`.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use media::flv_file::{FlvFile, TagKind};
use rml_rtmp::chunk_io::{ChunkDeserializer, ChunkSerializer};
use rml_rtmp::messages::RtmpMessage;
use rml_rtmp::rml_amf0::Amf0Value;
use rml_rtmp::time::RtmpTimestamp;

use crate::support::*;

type Props = HashMap<String, Amf0Value>;

struct Client {
    s: TcpStream,
    ser: ChunkSerializer,
    de: ChunkDeserializer,
    stream_id: u32,
}

fn string(props: &Props, k: &str) -> String {
    match props.get(k) {
        Some(Amf0Value::Utf8String(s)) => s.clone(),
        _ => String::new(),
    }
}

impl Client {
    /// Handshake and `connect` to `app` declaring `caps_ex`; returns the client and the
    /// properties of the server's `_result`.
    fn connect(port: u16, app: &str, caps_ex: f64) -> (Client, Props) {
        let s = rtmp_handshake(port);
        let mut c = Client {
            s,
            ser: ChunkSerializer::new(),
            de: ChunkDeserializer::new(),
            stream_id: 0,
        };
        let p = c
            .ser
            .set_max_chunk_size(65536, RtmpTimestamp::new(0))
            .unwrap();
        c.s.write_all(&p.bytes).unwrap();
        let props: Props = [
            ("app", Amf0Value::Utf8String(app.into())),
            ("type", Amf0Value::Utf8String("nonprivate".into())),
            (
                "flashVer",
                Amf0Value::Utf8String("FMLE/3.0 (compatible; test)".into()),
            ),
            (
                "tcUrl",
                Amf0Value::Utf8String(format!("rtmp://127.0.0.1:{port}/{app}")),
            ),
            ("capsEx", Amf0Value::Number(caps_ex)),
            (
                "fourCcList",
                Amf0Value::StrictArray(vec![
                    Amf0Value::Utf8String("avc1".into()),
                    Amf0Value::Utf8String("mp4a".into()),
                ]),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        c.command("connect", 1.0, Amf0Value::Object(props), vec![], 0);
        let result = c.until(|m| match m {
            RtmpMessage::Amf0Command {
                command_name,
                command_object: Amf0Value::Object(p),
                ..
            } if command_name == "_result" => Some(p.clone()),
            _ => None,
        });
        (c, result)
    }

    fn send(&mut self, m: RtmpMessage, ts: u32, stream_id: u32) {
        let payload = m
            .into_message_payload(RtmpTimestamp::new(ts), stream_id)
            .unwrap();
        let p = self.ser.serialize(&payload, false, false).unwrap();
        self.s.write_all(&p.bytes).unwrap();
    }

    fn command(
        &mut self,
        name: &str,
        txn: f64,
        obj: Amf0Value,
        args: Vec<Amf0Value>,
        stream_id: u32,
    ) {
        self.send(
            RtmpMessage::Amf0Command {
                command_name: name.into(),
                transaction_id: txn,
                command_object: obj,
                additional_arguments: args,
            },
            0,
            stream_id,
        );
    }

    /// The next message, if one comes within `wait`.
    fn next(&mut self, wait: Duration) -> Option<RtmpMessage> {
        if let Ok(Some(p)) = self.de.get_next_message(&[]) {
            return self.absorb(p.to_rtmp_message().unwrap());
        }
        self.s.set_read_timeout(Some(wait)).unwrap();
        let mut buf = [0u8; 8192];
        let n = match self.s.read(&mut buf) {
            Ok(0) => panic!("the server closed the connection"),
            Ok(n) => n,
            Err(_) => return None,
        };
        match self.de.get_next_message(&buf[..n]).unwrap() {
            Some(p) => self.absorb(p.to_rtmp_message().unwrap()),
            None => None,
        }
    }

    fn absorb(&mut self, m: RtmpMessage) -> Option<RtmpMessage> {
        if let RtmpMessage::SetChunkSize { size } = m {
            self.de.set_max_chunk_size(size as usize).unwrap();
            return None;
        }
        Some(m)
    }

    fn until<T>(&mut self, mut f: impl FnMut(&RtmpMessage) -> Option<T>) -> T {
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Some(m) = self.next(Duration::from_millis(200))
                && let Some(t) = f(&m)
            {
                return t;
            }
        }
        panic!("no answer from the server in 10 s");
    }

    /// createStream, then publish `stream_key`, until `NetStream.Publish.Start`.
    fn publish(&mut self, stream_key: &str) {
        self.command("createStream", 2.0, Amf0Value::Null, vec![], 0);
        self.stream_id = self.until(|m| match m {
            RtmpMessage::Amf0Command {
                command_name,
                transaction_id,
                additional_arguments,
                ..
            } if command_name == "_result" && *transaction_id == 2.0 => {
                match additional_arguments.first() {
                    Some(Amf0Value::Number(n)) => Some(*n as u32),
                    _ => None,
                }
            }
            _ => None,
        });
        let sid = self.stream_id;
        self.command(
            "publish",
            3.0,
            Amf0Value::Null,
            vec![
                Amf0Value::Utf8String(stream_key.into()),
                Amf0Value::Utf8String("live".into()),
            ],
            sid,
        );
        let code = self.until(|m| status(m).map(|p| string(&p, "code")));
        assert_eq!(code, "NetStream.Publish.Start");
    }

    fn tag(&mut self, video: bool, ts: u32, body: Bytes) {
        let m = if video {
            RtmpMessage::VideoData { data: body }
        } else {
            RtmpMessage::AudioData { data: body }
        };
        let sid = self.stream_id;
        self.send(m, ts, sid);
    }
}

fn status(m: &RtmpMessage) -> Option<Props> {
    match m {
        RtmpMessage::Amf0Command {
            command_name,
            additional_arguments,
            ..
        } if command_name == "onStatus" => match additional_arguments.first() {
            Some(Amf0Value::Object(p)) => Some(p.clone()),
            _ => None,
        },
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_origin_asks_an_enhanced_rtmp_publisher_to_reconnect_to_another_slave() {
    let mut c = Cluster::start_with(
        "reconnect",
        2,
        Timings::default(),
        &[],
        &["--drain-ms", "5000"],
    )
    .await;
    let (rtmp, key, t) = c.teacher("moving").await;
    let origin = t["node_id"].as_str().unwrap().to_string();
    let other = c.slaves.iter().find(|s| s.id != origin).unwrap();
    let (other_id, other_rtmp) = (other.id.clone(), other.rtmp_port);
    let port: u16 = rtmp
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches("/live")
        .parse()
        .unwrap();

    // Ten seconds of H.264 + AAC with a keyframe a second, looped by the client.
    let flv = log_dir("reconnect").join("class.flv");
    let ok = std::process::Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=320x240:rate=30",
        ])
        .args([
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=48000",
            "-t",
            "10",
        ])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "30",
            "-bf",
            "0",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-f",
            "flv",
        ])
        .arg(&flv)
        .status()
        .unwrap();
    assert!(ok.success());
    let file = FlvFile::parse(Bytes::from(std::fs::read(&flv).unwrap())).unwrap();

    let (tx, rx) = std::sync::mpsc::channel::<&'static str>();
    let client = std::thread::spawn(move || {
        // Reconnect | Multitrack | ModEx, as OBS 31 declares.
        let (mut a, result) = Client::connect(port, "live", 7.0);
        let caps = match result.get("capsEx") {
            Some(Amf0Value::Number(n)) => *n as u32,
            _ => 0,
        };
        let video_map = matches!(result.get("videoFourCcInfoMap"), Some(Amf0Value::Object(m)) if m.contains_key("hvc1"));
        a.publish(&key);
        tx.send("publishing").unwrap();
        let start = Instant::now();
        let (mut moved_at, mut request) = (None::<Instant>, None::<Props>);
        let mut frames_after_move = 0;
        'outer: for lap in 0.. {
            for tag in &file.tags {
                if tag.kind == TagKind::Script {
                    continue;
                }
                let ts = lap * 10_000 + tag.ts;
                while start.elapsed() < Duration::from_millis(u64::from(ts)) {
                    if request.is_none()
                        && let Some(m) = a.next(Duration::from_millis(5))
                        && let Some(p) = status(&m)
                        && string(&p, "code") == "NetConnection.Connect.ReconnectRequest"
                    {
                        request = Some(p);
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                let video = tag.kind == TagKind::Video;
                // Asked to move: at the next keyframe, connect to the tcUrl given, publish the
                // same stream there, and leave the old server.
                if let Some(r) = &request
                    && moved_at.is_none()
                    && video
                    && tag.body.first().is_some_and(|f| f >> 4 == 1)
                {
                    let tc_url = string(r, "tcUrl");
                    let rest = tc_url
                        .strip_prefix("rtmp://127.0.0.1:")
                        .expect("tcUrl on this host");
                    let (p, app) = rest.split_once('/').unwrap();
                    let (mut nb, _) = Client::connect(p.parse().unwrap(), app, 7.0);
                    nb.publish(&key);
                    // The audio and video configs again, as an encoder starting a new
                    // connection sends them.
                    for h in file.tags.iter().filter(|t| t.is_sequence_header()) {
                        nb.tag(h.kind == TagKind::Video, ts, h.body.clone());
                    }
                    drop(std::mem::replace(&mut a, nb));
                    moved_at = Some(Instant::now());
                    tx.send("moved").unwrap();
                }
                a.tag(video, ts, tag.body.clone());
                if moved_at.is_some() && video {
                    frames_after_move += 1;
                }
                if moved_at.is_some_and(|t| t.elapsed() > Duration::from_secs(4))
                    || start.elapsed() > Duration::from_secs(40)
                {
                    break 'outer;
                }
            }
        }
        (caps, video_map, request, frames_after_move)
    });

    let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
    let recv = |what: &'static str, secs: u64| {
        let rx = rx.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                rx.lock().unwrap().recv_timeout(Duration::from_secs(secs))
            })
            .await
            .unwrap()
            .unwrap_or_else(|_| panic!("the client never got to {what}"))
        }
    };
    assert_eq!(recv("publishing", 15).await, "publishing");
    c.wait_live("moving", 2).await;
    c.slave(&origin).proc.signal(libc::SIGTERM);
    assert_eq!(recv("moved", 15).await, "moved");
    let (caps, video_map, request, frames) =
        tokio::task::spawn_blocking(move || client.join().unwrap())
            .await
            .unwrap();
    assert_eq!(
        caps & 7,
        7,
        "the connect _result states Reconnect, Multitrack and ModEx: capsEx {caps}"
    );
    assert!(
        video_map,
        "the connect _result lists hvc1 in videoFourCcInfoMap"
    );
    let request = request.expect("a reconnect request");
    assert_eq!(string(&request, "level"), "status");
    let tc_url = string(&request, "tcUrl");
    assert!(
        tc_url.starts_with(&format!("rtmp://127.0.0.1:{other_rtmp}/live?key=")),
        "the tcUrl names the other slave with a key for it: {tc_url}"
    );
    assert!(frames > 60, "frames went on at the new slave: {frames}");
    // The class is live at the other slave, which is now its origin, and plays there.
    let ok = wait_until(Duration::from_secs(10), || async {
        let v = get_json(&c.http, &format!("{}/cluster/streams", c.master_url()))
            .await
            .unwrap_or_default();
        v["streams"].as_array().is_some_and(|a| {
            a.iter()
                .any(|s| s["path"] == "live/moving" && s["origin"] == other_id.as_str())
        })
    })
    .await;
    assert!(ok, "live/moving has {other_id} as its origin");
    let jwt = sign_student(&c, &other_id, "live/moving", 600, None);
    let probe = ffprobe(&format!(
        "{}/live/moving/index.m3u8?jwt={jwt}",
        c.slave(&other_id).base()
    ))
    .unwrap();
    let mut got = codecs(&probe);
    got.sort();
    assert_eq!(got, ["aac", "h264"]);
    let metrics = metrics_text(&c.http, &c.slave(&other_id).base()).await;
    assert!(
        metrics.contains("classcast_slave_rtmp_reconnect_requests_total 0"),
        "the new origin asked nobody"
    );
    c.slaves.retain(|s| s.id != origin);
}
