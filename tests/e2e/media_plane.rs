//! Issue 3: RTMP ingest → LL-HLS on one slave, with real ffmpeg publishing and reading.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::token::{Action, Role, SigningKey, new_claims};
use serde_json::json;

use crate::support::*;

fn sign(c: &Cluster, node: &str, path: &str, ttl_secs: i64) -> String {
    sign_student(c, node, path, ttl_secs, None)
}

fn uri_of(playlist: &str, prefix: &str) -> String {
    playlist
        .lines()
        .find_map(|l| {
            if l.starts_with(prefix) {
                return Some(l.to_string());
            }
            let i = l.find(&format!("URI=\"{prefix}"))?;
            Some(l[i + 5..].split('"').next()?.to_string())
        })
        .unwrap_or_else(|| panic!("no {prefix} URI in\n{playlist}"))
}

async fn last_part_now(c: &Cluster, base: &str) -> Option<(u64, usize)> {
    let r = peer_get(&c.http, &format!("{base}/live/class/index.m3u8")).await;
    last_part(&r.text().await.ok()?)
}

async fn assert_still_advancing(c: &Cluster, base: &str, what: &str) {
    let before = last_part_now(c, base).await;
    let ok = wait_until(Duration::from_secs(5), || async {
        last_part_now(c, base).await > before
    })
    .await;
    assert!(ok, "the good stream stopped advancing after {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_hls_tokens_blocking_reload_and_hostile_rtmp() {
    let t = Timings {
        heartbeat_ms: 300,
        grace_ms: 2500,
        ..Default::default()
    };
    let c = Cluster::start("media_plane", 2, t).await;
    let (s1, s2) = (c.slave("s1"), c.slave("s2"));

    // --- Publish refusals: no key, a forged key, a key for another node.
    let rtmp1 = format!("rtmp://127.0.0.1:{}/live", s1.rtmp_port);
    let forged = {
        let other = SigningKey::generate().unwrap().0;
        let claims = new_claims(
            "classcast",
            "eve",
            Role::Teacher,
            "s1",
            "live/class",
            Action::Publish,
            Duration::from_secs(60),
        );
        other.sign(&claims).unwrap()
    };
    let (_, key_s2, _) = {
        // A teacher key is bound to the node the master picks; make one for s2 by asking with s1 excluded.
        let v = c.token(json!({"role":"teacher","user_id":"t","stream":"class","credential":TEACHER,"exclude":"s1"})).await.unwrap();
        assert_eq!(v["node_id"], "s2");
        (
            v["rtmp_url"].as_str().unwrap().to_string(),
            v["stream_key"].as_str().unwrap().to_string(),
            (),
        )
    };
    for (name, key) in [
        ("nokey", "class".to_string()),
        ("forged", format!("class?key={forged}")),
        ("othernode", key_s2),
    ] {
        let mut p = c.publish(&format!("pub-{name}"), &rtmp1, &key, Some(3));
        let st = p
            .wait_exit(Duration::from_secs(15))
            .expect("refused publisher must exit");
        assert!(!st.success(), "{name}: ffmpeg must see the refusal");
    }
    let log = s1.proc.log_text();
    assert!(
        log.matches("publish refused").count() >= 3,
        "refusals are logged:\n{log}"
    );

    // --- The teacher publishes with the key from the master.
    let (rtmp_url, key, teacher) = c.teacher("class").await;
    let node = teacher["node_id"].as_str().unwrap().to_string();
    let origin = c.slave(&node);
    let mut publisher = c.publish("publisher", &rtmp_url, &key, None);
    c.wait_live("class", 1).await;

    // A second publisher on the live path is refused; the first carries on.
    let mut hijack = c.publish("hijack", &rtmp_url, &key, Some(3));
    assert!(
        !hijack.wait_exit(Duration::from_secs(15)).unwrap().success(),
        "second publisher refused"
    );
    assert!(
        publisher.child.try_wait().unwrap().is_none(),
        "first publisher still streaming"
    );

    // --- Real-client path: ffprobe and ffmpeg read from the slave the token names.
    let v = c
        .token(json!({"role":"student","user_id":"reader","stream":"class"}))
        .await
        .unwrap();
    let hls = v["hls_url"].as_str().unwrap().to_string();
    let probe = ffprobe(&hls).unwrap_or_else(|e| panic!("ffprobe failed: {e}"));
    assert_eq!(codecs(&probe), vec!["h264", "aac"], "{probe}");
    let video = &probe["streams"][0];
    assert_eq!(
        (video["width"].as_u64(), video["height"].as_u64()),
        (Some(640), Some(360))
    );
    let (ok, err) = ffmpeg_decode(&hls, 5);
    assert!(
        ok && err.trim().is_empty(),
        "5 s decode must be clean: {err}"
    );

    // --- Token matrix on the origin.
    let base = origin.base();
    let good = sign(&c, &node, "live/class", 600);
    let pl_url = format!("{base}/live/class/index.m3u8");
    // The student page's origin (the master's) may read it from a browser.
    let r = c
        .http
        .get(format!("{pl_url}?jwt={good}"))
        .header("origin", c.master_url())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/vnd.apple.mpegurl");
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        c.master_url().as_str()
    );
    let playlist = r.text().await.unwrap();
    for tag in [
        "#EXT-X-VERSION:",
        // ffmpeg's 1 s GOP at 30 fps gives segments of about 1.03 s: EXTINF rounds to 1, so the
        // target is 1 and HOLD-BACK 3 s (RFC 8216 rounds, it does not ceil).
        "#EXT-X-TARGETDURATION:1\n",
        "HOLD-BACK=3.000",
        "#EXT-X-PART-INF:PART-TARGET=0.2",
        "CAN-BLOCK-RELOAD=YES",
        // Three part targets: Apple's MUST, RFC 8216bis's SHOULD.
        "PART-HOLD-BACK=0.6",
        "#EXT-X-MAP:URI=",
        "#EXT-X-PROGRAM-DATE-TIME:",
        "#EXT-X-PART:",
        "#EXT-X-PRELOAD-HINT:TYPE=PART",
        "#EXTINF:",
    ] {
        assert!(playlist.contains(tag), "playlist lacks {tag}:\n{playlist}");
    }
    assert_conforms("live (origin)", &playlist);
    // Every URI carries the viewer's media ticket (not the JWT), so plain players work
    // unchanged and the playlist stays small.
    let ticket = uri_of(&playlist, "part")
        .split_once("?t=")
        .map(|(_, t)| t.trim_end_matches('"').to_string())
        .expect("part URIs carry a ticket");
    assert!(ticket.len() < 52 && !playlist.contains(&good), "{ticket}");
    assert!(
        playlist
            .lines()
            .filter(|l| l.contains(".m4s") || l.contains(".mp4"))
            .all(|l| l.contains(&format!("?t={ticket}")))
    );
    for prefix in ["init", "seg", "part"] {
        let uri = uri_of(&playlist, prefix);
        let r = c
            .http
            .get(format!("{base}/live/class/{uri}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{uri}");
        assert_eq!(r.headers()["content-type"], "video/mp4");
        assert!(
            r.headers()["cache-control"]
                .to_str()
                .unwrap()
                .contains("immutable")
        );
        let body = r.bytes().await.unwrap();
        let want: &[u8] = if prefix == "init" { b"ftyp" } else { b"moof" };
        assert_eq!(&body[4..8], want, "{uri} starts with {want:?}");
    }
    let other_node = if node == "s1" { "s2" } else { "s1" };
    // Algorithm confusion: `alg: none`, and HS256 keyed with the (public) verification key.
    let alg_none = {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let payload = good.split('.').nth(1).unwrap();
        format!(
            "{}.{payload}.",
            b64.encode(br#"{"alg":"none","typ":"JWT"}"#)
        )
    };
    let signing = SigningKey::load_or_generate(&c.key_file).unwrap();
    let claims = new_claims(
        "classcast",
        "mallory",
        Role::Student,
        &node,
        "live/class",
        Action::Read,
        Duration::from_secs(600),
    );
    let hs_x = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(signing.public_x().as_bytes()),
    )
    .unwrap();
    let hs_raw = {
        use base64::Engine;
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(signing.public_x())
            .unwrap();
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(&raw),
        )
        .unwrap()
    };
    let cases = [
        ("alg none", format!("jwt={alg_none}"), 401, "token_invalid"),
        (
            "hs256 with the public key",
            format!("jwt={hs_x}"),
            401,
            "token_invalid",
        ),
        (
            "hs256 with the raw public key",
            format!("jwt={hs_raw}"),
            401,
            "token_invalid",
        ),
        ("missing", String::new(), 401, "token_missing"),
        (
            "garbage",
            "jwt=abc.def.ghi".to_string(),
            401,
            "token_invalid",
        ),
        ("forged", format!("jwt={forged}"), 401, "token_invalid"),
        (
            "expired",
            format!("jwt={}", sign(&c, &node, "live/class", -10)),
            401,
            "token_expired",
        ),
        (
            "other node",
            format!("jwt={}", sign(&c, other_node, "live/class", 600)),
            403,
            "token_wrong_node",
        ),
        (
            "other stream",
            format!("jwt={}", sign(&c, &node, "live/other", 600)),
            403,
            "token_wrong_stream",
        ),
    ];
    let seg = uri_of(&playlist, "seg");
    let seg = seg.split('?').next().unwrap();
    // Tickets: only for media, only for this stream, node and secret, only until the JWT's exp.
    let ticket_key = |node: &str| {
        slave::tickets::TicketKey::derive(
            &common::secret::ClusterSecret::new(SECRET).unwrap(),
            node,
        )
    };
    let now = common::now_unix();
    let mut tampered = ticket.clone().into_bytes();
    let last = tampered.len() - 1;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let ticket_cases = [
        (
            "ticket on a playlist",
            "index.m3u8",
            ticket.clone(),
            401,
            "token_missing",
        ),
        ("tampered ticket", seg, tampered, 401, "ticket_invalid"),
        (
            "ticket of another stream",
            seg,
            ticket_key(&node).mint("live/other", now + 600, "AAAAAAAAAAA"),
            401,
            "ticket_invalid",
        ),
        (
            "ticket of another node",
            seg,
            ticket_key(other_node).mint("live/class", now + 600, "AAAAAAAAAAA"),
            401,
            "ticket_invalid",
        ),
        (
            "expired ticket",
            seg,
            ticket_key(&node).mint("live/class", now - 1, "AAAAAAAAAAA"),
            401,
            "ticket_expired",
        ),
        (
            "this node's ticket",
            seg,
            ticket_key(&node).mint("live/class", now + 600, "AAAAAAAAAAA"),
            200,
            "",
        ),
    ];
    // One request per (case, file): token cases on both the playlist and a segment, ticket
    // cases on the file they name.
    let checks = cases
        .into_iter()
        .flat_map(|(what, q, status, code)| {
            ["index.m3u8", seg].map(|file| (what, file, q.clone(), status, code))
        })
        .chain(
            ticket_cases
                .into_iter()
                .map(|(what, file, t, status, code)| (what, file, format!("t={t}"), status, code)),
        );
    for (what, file, q, status, code) in checks {
        let r = c
            .http
            .get(format!("{base}/live/class/{file}?{q}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{what} on {file}");
        if status != 200 {
            let v: serde_json::Value = r.json().await.unwrap();
            assert_eq!(v["error"], code, "{what} on {file}");
        }
    }
    // Path traversal and unknown files are 404, not a filesystem read.
    for bad in [
        "/live/class/..%2F..%2Fetc%2Fpasswd",
        "/live/..%2Fclass/index.m3u8",
        "/live/class/seg1.ts",
    ] {
        let r = c
            .http
            .get(format!("{base}{bad}?jwt={good}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{bad}");
    }
    // Unknown stream: 404.
    let r = c
        .http
        .get(format!(
            "{base}/live/nothing/index.m3u8?jwt={}",
            sign(&c, &node, "live/nothing", 60)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // --- Blocking reload.
    let (m, i) = last_part(&playlist).unwrap();
    // The part after (m, i); if segment m completes first, (m+1, 0) also satisfies the wait.
    let next = (m, i + 1);
    let t0 = Instant::now();
    let r = c
        .http
        .get(format!(
            "{pl_url}?jwt={good}&_HLS_msn={}&_HLS_part={}",
            next.0, next.1
        ))
        .send()
        .await
        .unwrap();
    let held = t0.elapsed();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(
        last_part(&text).unwrap() >= next,
        "blocking reload returned before the part existed"
    );
    assert!(
        held < Duration::from_millis(200 + 600),
        "held {held:?}, more than a part target plus margin"
    );
    // Far ahead → 400; _HLS_part without _HLS_msn → 400.
    let r = c
        .http
        .get(format!("{pl_url}?jwt={good}&_HLS_msn={}", m + 10))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = c
        .http
        .get(format!("{pl_url}?jwt={good}&_HLS_part=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // A preload-hinted part blocks until it exists.
    let hint = text
        .lines()
        .find(|l| l.starts_with("#EXT-X-PRELOAD-HINT"))
        .unwrap();
    let uri = hint
        .split("URI=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let t0 = Instant::now();
    let r = c
        .http
        .get(format!("{base}/live/class/{uri}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "preload hint part");
    assert_eq!(&r.bytes().await.unwrap()[4..8], b"moof");
    assert!(t0.elapsed() < Duration::from_millis(800));

    // --- Hostile RTMP: each closes only its own connection.
    let port = origin.rtmp_port;
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(&[0xffu8; 1537]).unwrap();
    assert!(
        closed_by_server(&mut s, Duration::from_secs(5)),
        "garbage handshake"
    );
    assert_still_advancing(&c, &base, "garbage handshake").await;

    let mut s = rtmp_handshake(port);
    let amf = [&[0x02u8, 0x00, 0x07][..], b"connect"].concat();
    s.write_all(&chunk0(3, 0x14, amf.len() as u32, &amf))
        .unwrap();
    assert!(
        closed_by_server(&mut s, Duration::from_secs(5)),
        "one-value AMF command"
    );
    assert_still_advancing(&c, &base, "one-value AMF command").await;

    let mut s = rtmp_handshake(port);
    // Two messages interleaved on different chunk streams, the second continued with a
    // type-3 header on a chunk stream that never started one.
    let mut bytes = chunk0(3, 0x14, 300, &[0x02u8; 128]);
    bytes.extend(chunk0(4, 0x14, 300, &[0x05u8; 128]));
    bytes.push(0xc5);
    bytes.extend([0x00u8; 128]);
    bytes.push(0xc3);
    bytes.extend([0x00u8; 172]);
    s.write_all(&bytes).unwrap();
    assert!(
        closed_by_server(&mut s, Duration::from_secs(10)),
        "interleaved chunk streams"
    );
    assert_still_advancing(&c, &base, "interleaved chunk streams").await;

    let mut s = rtmp_handshake(port);
    // Set Chunk Size 64 KiB, then a message that claims 16 MiB and keeps coming.
    let mut bytes = chunk0(2, 0x01, 4, &65536u32.to_be_bytes());
    bytes.extend(chunk0(5, 0x09, 0xff_ffff, &vec![0x17u8; 65536]));
    s.write_all(&bytes).unwrap();
    let chunk: Vec<u8> = std::iter::once(0xc5u8)
        .chain(std::iter::repeat_n(0u8, 65536))
        .collect();
    let mut closed = false;
    for _ in 0..200 {
        if s.write_all(&chunk).is_err() {
            closed = true;
            break;
        }
    }
    assert!(
        closed || closed_by_server(&mut s, Duration::from_secs(5)),
        "oversized message"
    );
    assert_still_advancing(&c, &base, "oversized message").await;
    let log = origin.proc.log_text();
    assert!(
        log.contains("rtmp connection closed with an error"),
        "hostile peers are logged"
    );
    assert!(healthy(&c.http, &base).await);

    // --- Viewer sessions reach the master as connections.
    assert!(
        wait_until(Duration::from_secs(5), || async {
            let n = c.nodes().await;
            n["nodes"].as_array().unwrap().iter().any(|x| {
                x["node_id"] == node.as_str() && x["current_connections"].as_u64() >= Some(1)
            })
        })
        .await,
        "viewer count never reached the master"
    );

    // --- Publisher reconnects within the grace: a reader goes on, DISCONTINUITY, no gap.
    let reader_url = pl_url.clone();
    let reader_tok = good.clone();
    let http = c.http.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let reader = tokio::spawn(async move {
        let mut statuses = Vec::new();
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            let r = http
                .get(format!("{reader_url}?jwt={reader_tok}"))
                .send()
                .await
                .unwrap();
            statuses.push(r.status().as_u16());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        statuses
    });
    publisher.kill9();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut publisher = c.publish("publisher2", &rtmp_url, &key, None);
    let ok = wait_until(Duration::from_secs(10), || async {
        let r = peer_get(&c.http, &pl_url).await;
        r.text()
            .await
            .unwrap_or_default()
            .contains("#EXT-X-DISCONTINUITY")
    })
    .await;
    assert!(ok, "resumed stream has a DISCONTINUITY");
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let statuses = reader.await.unwrap();
    assert!(
        statuses.iter().all(|s| *s == 200),
        "reader saw {statuses:?}"
    );
    let text = peer_get(&c.http, &pl_url).await.text().await.unwrap();
    assert!(!text.contains("ENDLIST"));
    let msns: Vec<u64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("seg")?.split('.').next()?.parse().ok())
        .collect();
    assert!(
        msns.windows(2).all(|w| w[1] == w[0] + 1),
        "gap in media sequence: {msns:?}"
    );

    // --- Publisher leaves for good: ENDLIST after the grace period, then the path is free.
    publisher.terminate(Duration::from_secs(3));
    let t0 = Instant::now();
    let ok = wait_until(Duration::from_secs(10), || async {
        peer_get(&c.http, &pl_url)
            .await
            .text()
            .await
            .unwrap_or_default()
            .contains("#EXT-X-ENDLIST")
    })
    .await;
    assert!(ok, "no ENDLIST after the grace period");
    assert!(
        t0.elapsed() >= Duration::from_millis(2000),
        "ended before the grace period: {:?}",
        t0.elapsed()
    );
    let mut again = c.publish("publisher3", &rtmp_url, &key, Some(2));
    assert!(
        again.wait_exit(Duration::from_secs(20)).unwrap().success(),
        "the path can be published again"
    );

    // --- Metrics carry the media figures.
    let m = c
        .http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "classcast_slave_ingest_bytes_total",
        "classcast_slave_part_publish_seconds_count",
        "classcast_slave_bytes_out_total",
        "classcast_slave_http_refusals_total",
        "classcast_slave_publish_refusals_total",
    ] {
        assert!(m.contains(name), "metrics lack {name}");
    }
    let _ = s2;
}
