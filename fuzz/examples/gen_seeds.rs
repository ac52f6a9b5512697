//! Writes the seed corpora in `fuzz/seeds/<target>/` (committed; regenerate with
//! `CARGO_TARGET_DIR=fuzz/target cargo run --manifest-path fuzz/Cargo.toml --example
//! gen_seeds`; the output is deterministic except for the playlists' msns and PDTs, which
//! come from the wall clock).
//!
//! - `rtmp_session`: a real OBS-like publish session (connect, createStream, publish,
//!   metadata, the fixture's first media tags, unpublish) produced by rml_rtmp's client
//!   against our `RtmpSession`, in the target's input layout, with and without the fixed
//!   handshake, plus a play request and a refused connect.
//! - `flv_media`: the fixture's sequence headers and a few media tag bodies, the bare
//!   AVC / AAC configs, and Enhanced RTMP v2 tags (HEVC, AV1, Opus, ModEx, multitrack).
//! - `hls_query`: rendered playlists (text mode), query strings and file names.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use media::flv_file::{FlvFile, TagKind};
use media::hls::playlist;
use media::hls::state::{CutPart, HlsConfig, Now, State};
use media::rtmp::{RtmpEvent, RtmpLimits, RtmpSession};
use rml_rtmp::sessions::{
    ClientSession, ClientSessionConfig, ClientSessionEvent, ClientSessionResult,
    PublishRequestType, StreamMetadata,
};
use rml_rtmp::time::RtmpTimestamp;

const FIXTURE: &[u8] = include_bytes!("../../media/src/testdata/avc_aac_640x360_4s.flv");

/// (FLV tag type, timestamp, body) of every tag of the fixture.
fn flv_tags() -> Vec<(u8, u32, Bytes)> {
    FlvFile::tags(Bytes::from_static(FIXTURE))
        .expect("the fixture is an FLV file")
        .into_iter()
        .map(|t| {
            let kind = match t.kind {
                TagKind::Audio => 8,
                TagKind::Video => 9,
                TagKind::Script => 18,
            };
            (kind, t.ts, t.body)
        })
        .collect()
}

fn write(dir: &Path, name: &str, data: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), data).unwrap();
}

/// Drives an rml_rtmp client against our server session; returns every byte the client sent
/// after the handshake.
struct Pair {
    client: ClientSession,
    server: RtmpSession,
    sent: Vec<u8>,
}

impl Pair {
    fn new() -> Self {
        let mut server = RtmpSession::new(RtmpLimits::default());
        let mut hs = vec![3u8];
        hs.extend([0u8; 1536 * 2]);
        server.feed(&hs).unwrap();
        // S0+S1+S2, then the session's opening messages (chunk size etc.) for the client.
        let out = server.take_output();
        let (mut client, mut initial) = ClientSession::new(ClientSessionConfig::new()).unwrap();
        initial.extend(client.handle_input(&out[1 + 2 * 1536..]).unwrap());
        let mut p = Pair {
            client,
            server,
            sent: Vec::new(),
        };
        p.send(initial, true);
        p
    }

    /// Sends the client's packets to the server, answers its requests (accepting when
    /// `accept`), feeds the server's replies back to the client, until quiet.
    fn send(&mut self, results: Vec<ClientSessionResult>, accept: bool) -> Vec<ClientSessionEvent> {
        let mut events = Vec::new();
        let mut queue = results;
        while !queue.is_empty() {
            let mut bytes = Vec::new();
            for r in queue.drain(..) {
                match r {
                    ClientSessionResult::OutboundResponse(p) => bytes.extend_from_slice(&p.bytes),
                    ClientSessionResult::RaisedEvent(e) => events.push(e),
                    ClientSessionResult::UnhandleableMessageReceived(_) => {}
                }
            }
            if bytes.is_empty() {
                break;
            }
            self.sent.extend_from_slice(&bytes);
            let mut pending = self
                .server
                .feed(&bytes)
                .expect("server accepts client bytes");
            while let Some(ev) = pending.pop() {
                match ev {
                    RtmpEvent::Connect { request_id, .. }
                    | RtmpEvent::Publish { request_id, .. }
                    | RtmpEvent::Play { request_id, .. } => {
                        if accept {
                            pending.extend(self.server.accept(request_id).unwrap());
                        } else {
                            self.server.reject(request_id, "X", "no").unwrap();
                        }
                    }
                    _ => {}
                }
            }
            let out = self.server.take_output();
            if !out.is_empty() {
                queue = self.client.handle_input(&out).unwrap();
            }
        }
        events
    }

    fn send_one(&mut self, r: ClientSessionResult) -> Vec<ClientSessionEvent> {
        self.send(vec![r], true)
    }
}

/// Input layout of the `rtmp_session` target: `[flags, split_seed, payload..]`.
fn rtmp_input(handshake: bool, policy: u8, seed: u8, chunks: &[u8]) -> Vec<u8> {
    let mut v = vec![(policy << 1) | u8::from(handshake), seed];
    if !handshake {
        v.push(3);
        v.extend([0u8; 1536 * 2]);
    }
    v.extend_from_slice(chunks);
    v
}

fn rtmp_seeds(root: &Path) {
    let dir = root.join("rtmp_session");
    let tags = flv_tags();

    let mut p = Pair::new();
    let r = p.client.request_connection("live".into()).unwrap();
    let ev = p.send_one(r);
    assert!(
        ev.iter()
            .any(|e| matches!(e, ClientSessionEvent::ConnectionRequestAccepted)),
        "{ev:?}"
    );
    let r = p
        .client
        .request_publishing("stream?key=abc".into(), PublishRequestType::Live)
        .unwrap();
    let ev = p.send_one(r);
    assert!(
        ev.iter()
            .any(|e| matches!(e, ClientSessionEvent::PublishRequestAccepted)),
        "{ev:?}"
    );
    let mut md = StreamMetadata::new();
    md.video_width = Some(640);
    md.video_height = Some(360);
    md.video_codec_id = Some(7);
    md.audio_codec_id = Some(10);
    md.audio_sample_rate = Some(44100);
    let r = p.client.publish_metadata(&md).unwrap();
    p.send_one(r);
    let connect_publish = p.sent.clone();
    for (kind, ts, body) in tags.iter().take(12) {
        // Keep the seed small: long frames are cut (still valid RTMP, invalid AVC).
        let body = body.slice(..body.len().min(600));
        let r = match kind {
            9 => p
                .client
                .publish_video_data(body, RtmpTimestamp::new(*ts), false)
                .unwrap(),
            8 => p
                .client
                .publish_audio_data(body, RtmpTimestamp::new(*ts), false)
                .unwrap(),
            _ => continue,
        };
        p.send_one(r);
    }
    let r = p.client.stop_publishing().unwrap();
    p.send(r, true);
    let full = p.sent.clone();

    write(&dir, "publish_hs", &rtmp_input(true, 0x7F, 0, &full));
    write(&dir, "publish_raw", &rtmp_input(false, 0x7F, 7, &full));
    write(
        &dir,
        "connect_publish_hs",
        &rtmp_input(true, 0x7F, 3, &connect_publish),
    );
    write(
        &dir,
        "publish_rejected_hs",
        &rtmp_input(true, 0x01, 1, &connect_publish),
    );

    let mut p = Pair::new();
    let r = p.client.request_connection("live".into()).unwrap();
    p.send_one(r);
    let r = p.client.request_playback("stream".into()).unwrap();
    p.send_one(r);
    write(&dir, "play_hs", &rtmp_input(true, 0x7F, 5, &p.sent));

    let mut p = Pair::new();
    let r = p.client.request_connection("other".into()).unwrap();
    p.send(vec![r], false);
    write(
        &dir,
        "connect_refused_raw",
        &rtmp_input(false, 0, 9, &p.sent),
    );
}

fn flv_seeds(root: &Path) {
    let dir = root.join("flv_media");
    let tags = flv_tags();
    for (n, (kind, _, body)) in tags
        .iter()
        .filter(|t| t.0 == 8 || t.0 == 9)
        .take(10)
        .enumerate()
    {
        write(
            &dir,
            &format!("tag{n}_{kind}"),
            &body[..body.len().min(1024)],
        );
    }
    let avc = tags.iter().find(|t| t.0 == 9).unwrap();
    write(&dir, "avc_record", &avc.2[5..]);
    let aac = tags.iter().find(|t| t.0 == 8).unwrap();
    write(&dir, "aac_asc", &aac.2[2..]);
    write(
        &dir,
        "enhanced_avc1_seq",
        &[&[0x90u8, b'a', b'v', b'c', b'1'][..], &avc.2[5..]].concat(),
    );
    // Enhanced RTMP v2 as ffmpeg 9 writes it (HEVC + AAC, AV1 + Opus): the sequence starts,
    // the metadata, the first frames, and ModEx / multitrack headers by hand.
    for (name, file) in [
        ("hevc", &include_bytes!("../../media/src/testdata/hevc_aac_320x240_2s.flv")[..]),
        ("av1", &include_bytes!("../../media/src/testdata/av1_opus_320x240_2s.flv")[..]),
    ] {
        let tags = FlvFile::tags(Bytes::from_static(file)).expect("an FLV file");
        for (n, t) in tags
            .iter()
            .filter(|t| !matches!(t.kind, TagKind::Script))
            .take(6)
            .enumerate()
        {
            write(&dir, &format!("ertmp_{name}_{n}"), &t.body[..t.body.len().min(1024)]);
        }
    }
    write(&dir, "ertmp_modex_avc1", &[0x97, 2, 0, 1, 2, 0x03, b'a', b'v', b'c', b'1', 0, 0, 0, 1, 9]);
    write(&dir, "ertmp_multitrack", &[0x96, 0x00, b'a', b'v', b'c', b'1', 0, 0, 0, 0]);
    // ManyTracks (two avc1 tracks with sizes) and ManyTracksManyCodecs (avc1 + hvc1).
    write(&dir, "ertmp_many_tracks", &[
        0x96, 0x11, b'a', b'v', b'c', b'1', 0, 0, 0, 4, 0, 0, 0, 9, 3, 0, 0, 5, 0, 0, 0, 8, 8,
    ]);
    write(&dir, "ertmp_many_codecs", &[
        0x96, 0x21, b'a', b'v', b'c', b'1', 0, 0, 0, 4, 0, 0, 0, 1, b'h', b'v', b'c', b'1', 1,
        0, 0, 4, 0, 0, 0, 2,
    ]);
    write(&dir, "ertmp_audio_one_track", &[0x95, 0x01, b'm', b'p', b'4', b'a', 2, 0xaa]);
    write(&dir, "asc_explicit_rate", &[0x17, 0x80, 0x5D, 0xC0, 0x10]);
    write(&dir, "asc_escape_aot", &[0xF9, 0x46, 0x40]);
}

fn hls_seeds(root: &Path) {
    let dir = root.join("hls_query");
    let text = |s: &str| [&[0u8][..], s.as_bytes()].concat();
    for (i, q) in [
        "jwt=a.b.c&_HLS_msn=5&_HLS_part=2&x=1",
        "_HLS_part=1",
        "token=x&_HLS_msn=18446744073709551615",
        "_HLS_msn=%35&_HLS_part=0",
    ]
    .iter()
    .enumerate()
    {
        write(&dir, &format!("query{i}"), &text(q));
    }
    for (i, f) in ["index.m3u8", "init3.mp4", "seg12.m4s", "part12.4.m4s"]
        .iter()
        .enumerate()
    {
        write(&dir, &format!("file{i}"), &text(f));
    }
    // Regression: the minimized input of the MEDIA-SEQUENCE overflow found while fuzzing
    // (see `media_sequence_overflow_is_an_error` in media/src/hls/playlist.rs).
    write(
        &dir,
        "regress_media_sequence_overflow",
        &text(
            "#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:18446744073709551615\n\
             #EXT-X-PROGRAM-DATE-TIME:2026-11-19:26:40123Z\n#EXT-X-PROGRAM-DATE-TIME:",
        ),
    );
    let cfg = HlsConfig::default();
    let mut s = State::default();
    let now = Now::system();
    s.set_init(Bytes::from_static(b"i"), "avc1".into(), None);
    for i in 0..23 {
        if i == 12 {
            s.set_init(Bytes::from_static(b"j"), "avc1".into(), None);
        }
        let cut = CutPart {
            data: Bytes::from_static(b"p"),
            duration: Duration::from_millis(200),
            independent: i % 5 == 0,
            starts_segment: i % 5 == 0,
            discontinuity: i == 10,
        };
        let p = s.place_part(1_795_000_000, cut, now);
        s.insert_part(&cfg, p, now);
    }
    write(
        &dir,
        "playlist_live",
        &text(&playlist::render(&s, &cfg, Some("jwt=abc"))),
    );
    s.end(now);
    write(
        &dir,
        "playlist_ended",
        &text(&playlist::render(&s, &cfg, None)),
    );
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("seeds");
    rtmp_seeds(&root);
    flv_seeds(&root);
    hls_seeds(&root);
    println!("seeds written to {}", root.display());
}
