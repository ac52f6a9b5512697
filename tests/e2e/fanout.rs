//! Issue 4: every slave serves every stream. Three slaves as separate processes; ffmpeg
//! publishes to one, students read from the others.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::*;

fn strip_tokens(p: &str) -> String {
    p.lines()
        .map(|l| {
            l.split("?t=")
                .next()
                .unwrap()
                .trim_end_matches('"')
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_slave_serves_the_class() {
    let t = Timings {
        heartbeat_ms: 300,
        offline_after_ms: 1500,
        grace_ms: 2000,
        ..Default::default()
    };
    let mut c = Cluster::start("fanout", 3, t).await;

    // Before class starts, students get a JSON 404 they can poll on.
    let (code, v) = c
        .token(json!({"role":"student","user_id":"early","stream":"lesson"}))
        .await
        .unwrap_err();
    assert_eq!((code, v["error"].as_str()), (404, Some("stream_not_live")));

    // The teacher publishes to whichever slave the master names: that slave is the origin.
    let (rtmp_url, key, teacher) = c.teacher("lesson").await;
    let origin_id = teacher["node_id"].as_str().unwrap().to_string();
    let edges: Vec<String> = c
        .slaves
        .iter()
        .map(|s| s.id.clone())
        .filter(|id| *id != origin_id)
        .collect();
    let mut publisher = c.publish("publisher", &rtmp_url, &key, None);
    c.wait_live("lesson", 3).await;
    let streams = get_json(&c.http, &format!("{}/cluster/streams", c.master_url()))
        .await
        .unwrap();
    assert_eq!(streams["streams"][0]["origin"], origin_id.as_str());

    // --- Fan-out: tokens for each edge, ffprobe decodes the class from both.
    for edge in &edges {
        let v = c.token(json!({"role":"student","user_id":format!("on-{edge}"),"stream":"lesson","exclude":origin_id})).await.unwrap();
        let mut v = v;
        // `exclude` names one node; ask until we land on this edge (the balancer alternates).
        for _ in 0..10 {
            if v["node_id"] == edge.as_str() {
                break;
            }
            v = c.token(json!({"role":"student","user_id":"again","stream":"lesson","exclude":origin_id})).await.unwrap();
        }
        assert_eq!(v["node_id"], edge.as_str());
        let hls = v["hls_url"].as_str().unwrap();
        assert!(
            hls.starts_with(&c.slave(edge).base()),
            "the token names the edge's URL"
        );
        let edge_playlist = c.http.get(hls).send().await.unwrap().text().await.unwrap();
        assert_conforms("live (edge)", &edge_playlist);
        let probe = ffprobe(hls).unwrap_or_else(|e| panic!("ffprobe on {edge}: {e}"));
        assert_eq!(codecs(&probe), vec!["h264", "aac"]);
        assert_eq!(probe["streams"][0]["width"], 640);
    }

    // --- Identical playlists for the same _HLS_msn on every slave.
    let origin_base = c.slave(&origin_id).base();
    let p = peer_get(&c.http, &format!("{origin_base}/live/lesson/index.m3u8"))
        .await
        .text()
        .await
        .unwrap();
    let (m, _) = last_part(&p).unwrap();
    let target = m + 1;
    let fetches = c.slaves.iter().map(|s| {
        let url = format!(
            "{}/live/lesson/index.m3u8?_HLS_msn={target}&_HLS_part=0",
            s.base()
        );
        let http = c.http.clone();
        async move { peer_get(&http, &url).await.text().await.unwrap() }
    });
    let lists = futures::future::join_all(fetches).await;
    // Blocking requests return as soon as part 0 exists; a fast slave may already list part 1.
    // Compare everything up to and including the requested part.
    let cut = |p: &str| {
        let end = p
            .find(&format!("part{target}.0.m4s"))
            .unwrap_or_else(|| panic!("part {target}.0 missing:\n{p}"));
        p[..end].to_string()
    };
    for (s, l) in c.slaves.iter().zip(&lists) {
        assert_eq!(
            cut(l),
            cut(&lists[0]),
            "{} differs from {}",
            s.id,
            c.slaves[0].id
        );
    }
    assert!(lists[0].contains("#EXT-X-PROGRAM-DATE-TIME"));

    // --- Switching slaves: a reader moves from edge B to edge C at the same msn, no gap.
    let (b, cc) = (c.slave(&edges[0]).base(), c.slave(&edges[1]).base());
    let on_b = peer_get(&c.http, &format!("{b}/live/lesson/index.m3u8"))
        .await
        .text()
        .await
        .unwrap();
    let (bm, bi) = last_part(&on_b).unwrap();
    let on_c = peer_get(
        &c.http,
        &format!(
            "{cc}/live/lesson/index.m3u8?_HLS_msn={bm}&_HLS_part={}",
            bi + 1
        ),
    )
    .await
    .text()
    .await
    .unwrap();
    let from_b = strip_tokens(&on_b);
    let from_c = strip_tokens(&on_c);
    // Every segment B listed is in C's playlist, with the same PDT, and C continues it.
    let segs = |p: &str| {
        p.lines()
            .filter(|l| l.starts_with("seg"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let (sb, sc) = (segs(&from_b), segs(&from_c));
    let last_b = sb.last().unwrap();
    assert!(sc.contains(last_b), "C lacks {last_b}");
    assert!(
        last_part(&on_c).unwrap() > (bm, bi),
        "C continues after B's last part"
    );
    let part_b = c
        .http
        .get(format!("{b}/live/lesson/part{bm}.{bi}.m4s"))
        .header("authorization", format!("Bearer {SECRET}"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let part_c = c
        .http
        .get(format!("{cc}/live/lesson/part{bm}.{bi}.m4s"))
        .header("authorization", format!("Bearer {SECRET}"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(
        part_b, part_c,
        "the same part is the same bytes on both edges"
    );
    let pdt = |p: &str| {
        p.lines()
            .filter(|l| l.starts_with("#EXT-X-PROGRAM-DATE-TIME"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let (pb, pc) = (pdt(&from_b), pdt(&from_c));
    assert!(
        pb.iter().rev().take(2).all(|x| pc.contains(x)),
        "PDTs agree"
    );

    // --- One upstream per edge, however many viewers.
    let edge = c.slave(&edges[0]);
    let mut viewers = Vec::new();
    for i in 0..50 {
        let tok = {
            let mut v = c
                .token(json!({"role":"student","user_id":format!("v{i}"),"stream":"lesson"}))
                .await
                .unwrap();
            while v["node_id"] != edge.id.as_str() {
                v = c
                    .token(json!({"role":"student","user_id":format!("v{i}"),"stream":"lesson"}))
                    .await
                    .unwrap();
            }
            v["token"].as_str().unwrap().to_string()
        };
        let url = format!("{}/live/lesson/index.m3u8?jwt={tok}", edge.base());
        let http = c.http.clone();
        viewers.push(tokio::spawn(async move {
            let mut n = 0;
            for _ in 0..10 {
                let r = http.get(&url).send().await.unwrap();
                assert_eq!(r.status(), 200);
                let text = r.text().await.unwrap();
                let (m, i) = last_part(&text).unwrap();
                let _ = http
                    .get(format!("{url}&_HLS_msn={m}&_HLS_part={}", i + 1))
                    .send()
                    .await
                    .unwrap();
                n += 1;
            }
            n
        }));
    }
    for v in viewers {
        assert_eq!(v.await.unwrap(), 10);
    }
    let m = metrics_text(&c.http, &edge.base()).await;
    assert!(
        m.contains("classcast_slave_upstream_connections 1\n"),
        "exactly one upstream:\n{m}"
    );
    assert!(m.contains("classcast_slave_viewers"));
    let lag = metric(&m, "classcast_slave_mirror_lag_seconds_sum")
        / metric(&m, "classcast_slave_mirror_lag_seconds_count").max(1.0);
    assert!(lag < 0.2, "mean mirror lag {lag}s on loopback");
    // What the slaves hold for the class, by holder: the edge mirrors the window, the origin
    // holds it and its latest GOP, and neither holds much more than the origin took in (the
    // fMP4 boxes and the init segment add a little to the RTMP bytes).
    let held = |m: &str, by: &str| {
        metric(
            m,
            &format!("classcast_slave_media_held_bytes{{held_by=\"{by}\"}}"),
        )
    };
    let om = metrics_text(&c.http, &origin_base).await;
    let taken = metric(&om, "classcast_slave_ingest_bytes_total");
    for (who, text) in [("origin", &om), ("edge", &m)] {
        let window = held(text, "playlist");
        assert!(
            window > 0.0 && window <= 1.5 * taken + 65536.0,
            "{who} holds {window} B of media, origin took {taken} B"
        );
    }
    // The origin's GOP points into the parts cut from it (one copy of the media): within a
    // second, some of it does.
    let mut shared = 0.0;
    for _ in 0..20 {
        let om = metrics_text(&c.http, &origin_base).await;
        shared = held(&om, "gop_in_parts");
        if shared > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        shared > 0.0,
        "the origin's GOP shares no bytes with its parts"
    );
    // The slave ran itself again with mimalloc's options in its environment (src/allocator.rs).
    let environ = std::fs::read(format!("/proc/{}/environ", edge.proc.child.id())).unwrap();
    assert!(
        environ
            .split(|b| *b == 0)
            .any(|v| v == b"MIMALLOC_ARENA_EAGER_COMMIT=0"),
        "the slave runs with mimalloc's arenas committed on demand"
    );

    // --- Master restart: the directory is rebuilt within one heartbeat.
    c.master.as_mut().unwrap().kill9();
    c.start_master();
    let t0 = Instant::now();
    c.wait_live("lesson", 3).await;
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "directory rebuilt in {:?}",
        t0.elapsed()
    );

    // --- An edge dies: the other edge is unaffected, and routing avoids the dead one.
    let dead = edges[1].clone();
    c.slave_mut(&dead).proc.kill9();
    let alive = c.slave(&edges[0]).base();
    let before = last_part(
        &peer_get(&c.http, &format!("{alive}/live/lesson/index.m3u8"))
            .await
            .text()
            .await
            .unwrap(),
    );
    assert!(
        wait_until(Duration::from_secs(5), || async {
            last_part(
                &peer_get(&c.http, &format!("{alive}/live/lesson/index.m3u8"))
                    .await
                    .text()
                    .await
                    .unwrap_or_default(),
            ) > before
        })
        .await
    );
    assert!(
        wait_until(Duration::from_secs(5), || async {
            let n = c.nodes().await;
            n["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["node_id"] == dead.as_str() && x["status"] == "offline")
        })
        .await
    );
    for i in 0..20 {
        let v = c.student("lesson", &format!("after{i}")).await;
        assert_ne!(
            v["node_id"],
            dead.as_str(),
            "no token goes to an offline node"
        );
    }

    // --- The origin's publisher stops: after the grace the edges end the stream too.
    publisher.terminate(Duration::from_secs(3));
    let edge_pl = format!("{alive}/live/lesson/index.m3u8");
    let ok = wait_until(Duration::from_secs(12), || async {
        peer_get(&c.http, &edge_pl)
            .await
            .text()
            .await
            .unwrap_or_default()
            .contains("#EXT-X-ENDLIST")
    })
    .await;
    assert!(ok, "the edge did not end the stream");
    let ok = wait_until(Duration::from_secs(5), || async {
        let v: Value = get_json(&c.http, &format!("{}/cluster/streams", c.master_url()))
            .await
            .unwrap_or(Value::Null);
        v["streams"].as_array().is_some_and(|a| a.is_empty())
    })
    .await;
    assert!(ok, "the directory forgets the ended stream");
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_of_an_edge_pulls_once() {
    let t = Timings::default();
    let mut c = Cluster::start("edge_of_edge", 2, t).await;
    // s3 mirrors everything from s2 instead of the origin.
    let upstream = format!("--upstream-url={}", c.slave("s2").base());
    c.add_slave("s3", &[&upstream]);
    c.wait_healthy(3).await;
    let v = c.token(json!({"role":"teacher","user_id":"t","stream":"far","credential":TEACHER,"exclude":"s2"})).await.unwrap();
    // Make sure s1 is the origin (the far site pulls via s2).
    let v = if v["node_id"] == "s1" {
        v
    } else {
        let mut v = v;
        while v["node_id"] != "s1" {
            v = c.token(json!({"role":"teacher","user_id":"t","stream":"far","credential":TEACHER,"exclude":v["node_id"]})).await.unwrap();
        }
        v
    };
    let _p = c.publish(
        "publisher",
        v["rtmp_url"].as_str().unwrap(),
        v["stream_key"].as_str().unwrap(),
        None,
    );
    c.wait_live("far", 3).await;
    let s3 = c.slave("s3").base();
    let ok = wait_until(Duration::from_secs(10), || async {
        last_part(
            &peer_get(&c.http, &format!("{s3}/live/far/index.m3u8"))
                .await
                .text()
                .await
                .unwrap_or_default(),
        )
        .is_some()
    })
    .await;
    assert!(ok, "s3 serves the stream");
    let probe = ffprobe(&format!("{s3}/live/far/index.m3u8?jwt={}", {
        let mut t = c.student("far", "x").await;
        while t["node_id"] != "s3" {
            t = c.student("far", "x").await;
        }
        t["token"].as_str().unwrap().to_string()
    }))
    .unwrap();
    assert_eq!(codecs(&probe), vec!["h264", "aac"]);
    let s3m = c
        .http
        .get(format!("{s3}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(s3m.contains("classcast_slave_upstream_connections 1\n"));
    let log = c.slave("s3").proc.log_text();
    assert!(
        log.contains(&format!("upstream={}", c.slave("s2").base())),
        "s3 pulls from s2:\n{log}"
    );
}
