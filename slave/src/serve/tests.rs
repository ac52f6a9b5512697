//! The slave's HTTP routes in-process (`oneshot`, no sockets): the token and ticket matrix,
//! blocking reload refusals, the parked bound and the cluster-secret extractor, in
//! milliseconds. The end-to-end tests keep what needs real processes.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use bytes::Bytes;
use common::secret::ClusterSecret;
use common::token::{Action, Role, SigningKey, TokenVerifier, new_claims};
use tower::ServiceExt;

use crate::ctx::{RtmpConfig, SlaveConfig, SlaveCtx};
use crate::hls::store::{HlsConfig, Source};

const SECRET: &str = "in-process-test-secret-0123";

struct Fixture {
    ctx: Arc<SlaveCtx>,
    key: SigningKey,
    msn: u64,
}

/// A registered slave `n1` holding `live/class`: one complete segment of two parts, and an
/// open one with one part.
fn fixture(max_parked: usize) -> Fixture {
    let secret = ClusterSecret::new(SECRET).unwrap();
    let cfg = SlaveConfig {
        node_id: "n1".into(),
        node_name: "n1".into(),
        master_urls: vec!["http://127.0.0.1:9".into()],
        secret,
        public_url: "http://127.0.0.1:8888".into(),
        internal_url: "http://127.0.0.1:8888".into(),
        rtmp_url: "rtmp://127.0.0.1:1935/live".into(),
        max_connections: 10,
        heartbeat_interval: None,
        hls: HlsConfig::default(),
        rtmp: RtmpConfig::default(),
        viewer_window: Duration::from_secs(10),
        upstream_url: None,
        // Holds stay under half the idle timeout: 0.5 s here.
        http: common::http::HttpLimits {
            idle_timeout: Duration::from_secs(1),
            max_connections: 64,
            ..Default::default()
        },
        cors_origins: Vec::new(),
        max_parked,
        chat_max_readers: 100,
        drain: Duration::from_millis(10),
        webrtc: Default::default(),
        behind_cache: false,
        record: Default::default(),
        client_ca: Vec::new(),
    };
    let ctx = SlaveCtx::new(cfg).unwrap();
    let (key, _) = SigningKey::generate().unwrap();
    ctx.set_verifier(TokenVerifier::from_public_x(&key.public_x(), "classcast").unwrap());
    let e = ctx
        .store
        .create("live/class", HlsConfig::default(), Source::Origin);
    let s = &e.stream;
    s.set_init(Bytes::from_static(b"init"), "avc1.64001f".into(), None);
    let d = Duration::from_millis(200);
    let (msn, _) = s.push_part(Bytes::from_static(b"p0"), d, true, true, false);
    s.push_part(Bytes::from_static(b"p1"), d, false, false, false);
    s.push_part(Bytes::from_static(b"p2"), d, true, true, false);
    Fixture { ctx, key, msn }
}

impl Fixture {
    fn token(&self, node: &str, path: &str, ttl: i64) -> String {
        let mut c = new_claims(
            "classcast",
            "viewer",
            Role::Student,
            node,
            path,
            Action::Read,
            Duration::from_secs(3600),
        );
        c.exp = (common::now_unix() as i64 + ttl) as u64;
        self.key.sign(&c).unwrap()
    }

    async fn get(&self, uri: &str, auth: Option<&str>) -> (StatusCode, String, String) {
        let mut req = Request::get(uri);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let r = crate::router(&self.ctx)
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = r.status();
        let retry = r
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        (status, String::from_utf8_lossy(&body).into_owned(), retry)
    }
}

/// The `error` code of a JSON refusal.
fn code(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .unwrap_or_else(|e| panic!("{e}: {body:?}"))["error"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[tokio::test]
async fn tokens_and_tickets() {
    let f = fixture(16);
    let pl = "/live/class/index.m3u8";
    let good = f.token("n1", "live/class", 600);
    let (s, body, _) = f.get(&format!("{pl}?jwt={good}"), None).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert!(body.contains("#EXT-X-PART-INF"), "{body}");
    assert!(!body.contains(&good), "the JWT is not repeated in URIs");
    let seg_uri = body
        .lines()
        .find(|l| l.starts_with("seg"))
        .expect("a complete segment")
        .to_string();
    assert!(seg_uri.contains("?t="), "{seg_uri}");
    // The ticket reads media, counts the viewer, and is refused for the playlist.
    assert_eq!(f.ctx.viewers.count(), 0, "a playlist alone counts nobody");
    let (s, body, _) = f.get(&format!("/live/class/{seg_uri}"), None).await;
    assert_eq!((s, body.as_str()), (StatusCode::OK, "p0p1"));
    assert_eq!(f.ctx.viewers.count(), 1);
    let ticket = seg_uri.split_once("?t=").unwrap().1;
    // The last MAC character changed (to something it is not).
    let tampered = {
        let (head, last) = ticket.split_at(ticket.len() - 1);
        format!("{head}{}", if last == "A" { "B" } else { "A" })
    };
    let (s, body, _) = f.get(&format!("{pl}?t={ticket}"), None).await;
    assert_eq!(
        (s, code(&body).as_str()),
        (StatusCode::UNAUTHORIZED, "token_missing")
    );

    for (what, query, status, want) in [
        (
            "no token",
            String::new(),
            StatusCode::UNAUTHORIZED,
            "token_missing",
        ),
        (
            "garbage",
            "?jwt=a.b.c".into(),
            StatusCode::UNAUTHORIZED,
            "token_invalid",
        ),
        (
            "expired",
            format!("?jwt={}", f.token("n1", "live/class", -10)),
            StatusCode::UNAUTHORIZED,
            "token_expired",
        ),
        (
            "another node's",
            format!("?jwt={}", f.token("n2", "live/class", 600)),
            StatusCode::FORBIDDEN,
            "token_wrong_node",
        ),
        (
            "another stream's",
            format!("?jwt={}", f.token("n1", "live/other", 600)),
            StatusCode::FORBIDDEN,
            "token_wrong_stream",
        ),
        (
            "a tampered ticket",
            format!("?t={tampered}"),
            StatusCode::UNAUTHORIZED,
            "ticket_invalid",
        ),
    ] {
        let (s, body, _) = f
            .get(&format!("/live/class/seg{}.m4s{query}", f.msn), None)
            .await;
        assert_eq!((s, code(&body).as_str()), (status, want), "{what}: {body}");
    }
    // Paths outside the URL space are no file at all.
    for bad in [
        "/live/class/../x",
        "/live/cl%20ass/index.m3u8",
        "/live/class/seg.m4s",
    ] {
        let (s, _, _) = f.get(&format!("{bad}?jwt={good}"), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{bad}");
    }
}

#[tokio::test]
async fn blocking_reload_refusals_and_the_parked_bound() {
    let f = fixture(1);
    let good = f.token("n1", "live/class", 600);
    let pl = format!("/live/class/index.m3u8?jwt={good}");
    let next = f.msn + 1;
    for (query, want) in [
        ("&_HLS_part=1".to_string(), "_HLS_part requires _HLS_msn"),
        ("&_HLS_msn=-1".to_string(), "_HLS_msn must be"),
        (format!("&_HLS_msn={}", next + 3), "too far ahead"),
    ] {
        let (s, body, _) = f.get(&format!("{pl}{query}"), None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert!(body.contains(want), "{query}: {body}");
    }
    // The next part never comes: 503 once the hold passes.
    let t0 = std::time::Instant::now();
    let (s, body, _) = f
        .get(&format!("{pl}&_HLS_msn={next}&_HLS_part=1"), None)
        .await;
    assert_eq!(
        (s, code(&body).as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "not_ready")
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t0.elapsed()
    );
    // A part that exists answers at once; one that cannot come next is 404.
    let (s, body, _) = f
        .get(&format!("/live/class/part{next}.0.m4s?jwt={good}"), None)
        .await;
    assert_eq!((s, body.as_str()), (StatusCode::OK, "p2"));
    let (s, _, _) = f
        .get(&format!("/live/class/part{next}.5.m4s?jwt={good}"), None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // With one parked request held, the next blocking one is refused with Retry-After.
    let held = {
        let f2 = Fixture {
            ctx: f.ctx.clone(),
            key: SigningKey::generate().unwrap().0,
            msn: f.msn,
        };
        let uri = format!("{pl}&_HLS_msn={next}&_HLS_part=1");
        tokio::spawn(async move { f2.get(&uri, None).await.0 })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (s, body, retry) = f
        .get(&format!("/live/class/part{next}.1.m4s?jwt={good}"), None)
        .await;
    assert_eq!(
        (s, code(&body).as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "too_many_waiting")
    );
    assert_eq!(retry, "1");
    assert_eq!(held.await.unwrap(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn peers_need_the_cluster_secret() {
    let f = fixture(16);
    let pl = "/live/class/index.m3u8";
    let (s, body, _) = f.get(pl, Some(&format!("Bearer {SECRET}"))).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        !body.contains("?t="),
        "a peer's playlist carries no tickets"
    );
    let (s, _, _) = f.get(pl, Some("Bearer not-the-secret-at-all")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // The mirror order route is the PeerAuth extractor's.
    let order = serde_json::json!({"path":"live/x","origin_node_id":"n9",
                                   "origin_url":"http://127.0.0.1:9","live":false});
    for (auth, want) in [
        (None, StatusCode::UNAUTHORIZED),
        (
            Some("Bearer wrong-secret-0123456789"),
            StatusCode::UNAUTHORIZED,
        ),
        (Some(&*format!("Bearer {SECRET}")), StatusCode::OK),
    ] {
        let mut req = Request::post("/internal/mirror").header("content-type", "application/json");
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let r = crate::router(&f.ctx)
            .oneshot(req.body(Body::from(order.to_string())).unwrap())
            .await
            .unwrap();
        assert_eq!(r.status(), want, "{auth:?}");
    }
}

/// A multitrack publish (ffmpeg 9's three-rendition ladder, a committed fixture) through the
/// publishing path: the class's playlist is a multivariant one, each rendition's conforms, an
/// unknown rendition is 404, and a fifth video track ends the publish with its reason.
#[tokio::test]
async fn a_ladder_is_a_multivariant_playlist_and_a_fifth_video_track_is_refused() {
    use media::flv_file::{FlvFile, TagKind};
    let f = fixture(16);
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../media/src/testdata/ladder_h264_aac.flv"
    );
    let file = FlvFile::parse(Bytes::from(std::fs::read(path).unwrap())).unwrap();
    let mut p = crate::ingest::publish::Publishing::start(
        &f.ctx,
        "live/lad",
        Some(false),
        "rtmp",
        "test".into(),
    );
    let mut second_track_header = None;
    for t in &file.tags {
        let video = match t.kind {
            TagKind::Video => true,
            TagKind::Audio => false,
            TagKind::Script => continue,
        };
        if video && t.body[0] & 0x0F == 6 && second_track_header.is_none() {
            second_track_header = Some(t.body.clone());
        }
        p.media(t.ts, t.body.clone(), video).unwrap();
    }
    let jwt = f.token("n1", "live/lad", 600);
    let (s, body, _) = f
        .get(&format!("/live/lad/index.m3u8?jwt={jwt}"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(
        media::hls::conformance::check_multivariant_playlist(&body),
        vec![],
        "{body}"
    );
    let variants = media::hls::multivariant::parse(&body).unwrap();
    let sizes: Vec<_> = variants.iter().map(|v| v.resolution).collect();
    assert_eq!(sizes, [Some((320, 180)), Some((160, 90)), Some((96, 54))]);
    assert!(body.contains(&format!("v1/index.m3u8?jwt={jwt}")), "{body}");
    for v in &variants {
        let (s, pl, _) = f.get(&format!("/live/lad/{}?jwt={jwt}", v.uri), None).await;
        assert_eq!(s, StatusCode::OK, "{}: {pl}", v.uri);
        assert_eq!(
            media::hls::conformance::check_media_playlist(&pl),
            vec![],
            "{pl}"
        );
        // Without the token, a rendition is refused as the class is.
        let (s, _, _) = f.get(&format!("/live/lad/{}", v.uri), None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    let (s, _, _) = f
        .get(&format!("/live/lad/v7/index.m3u8?jwt={jwt}"), None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _, _) = f
        .get(&format!("/live/lad/x1/index.m3u8?jwt={jwt}"), None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // A fourth video track is taken; a fifth is not.
    let mut header = second_track_header.expect("a multitrack tag").to_vec();
    header[6] = 3;
    p.media(0, Bytes::from(header.clone()), true).unwrap();
    header[6] = 4;
    let e = p.media(0, Bytes::from(header), true).unwrap_err();
    assert!(
        e.unsupported().unwrap().contains("at most 4 renditions"),
        "{e}"
    );
    // Only the class is reported, not its renditions.
    let classes: Vec<_> = f
        .ctx
        .store
        .classes()
        .iter()
        .map(|e| e.stream.path.clone())
        .collect();
    assert!(classes.contains(&"live/lad".to_string()) && !classes.iter().any(|c| c.contains("/v")));
}

/// A publish key for this node ends a mirror of the class here: the master made this node the
/// origin (a draining origin's publisher moving to it).
#[tokio::test]
async fn a_publish_key_for_this_node_takes_the_class_over_from_its_mirror() {
    let f = fixture(16);
    // A mirror of `path` from n2, and a teacher's publish key for `path` on `node`.
    let mirror_and_key = |path: &str, node: &str| {
        let mirror = f.ctx.store.create(
            path,
            HlsConfig::default(),
            Source::Edge {
                origin_node: "n2".into(),
            },
        );
        let claims = new_claims(
            "classcast",
            "teacher",
            Role::Teacher,
            node,
            path,
            Action::Publish,
            Duration::from_secs(600),
        );
        (mirror, f.key.sign(&claims).unwrap())
    };
    let (mirror, key) = mirror_and_key("live/moved", "n1");
    let a = crate::ingest::publish::authorize(&f.ctx, "moved", Some(&key), "test").unwrap();
    assert_eq!(
        (a.path.as_str(), a.user.as_str()),
        ("live/moved", "teacher")
    );
    assert!(mirror.stream.is_ended());
    // Another node's key takes nothing over.
    let (other, key) = mirror_and_key("live/other", "n2");
    assert!(crate::ingest::publish::authorize(&f.ctx, "other", Some(&key), "test").is_err());
    assert!(!other.stream.is_ended());
}
