//! Issue 32: class Q&A across the cluster. 300 simulated students on two edges post; the
//! teacher (at the origin) and readers on both edges get every accepted message once and in
//! one order; hide, mute and the rate limit hold on every slave; a reader whose edge is killed
//! resumes on another slave by event id with nothing lost or repeated.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::token::{Action, Role, SigningKey, new_claims};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::support::*;

/// A token for `user` on `node`, for the class `live/qa`.
fn token(c: &Cluster, key: &SigningKey, node: &str, user: &str, role: Role) -> String {
    let claims = new_claims(
        "classcast",
        user,
        role,
        node,
        "live/qa",
        Action::Read,
        Duration::from_secs(3600),
    );
    let _ = c;
    key.sign(&claims).unwrap()
}

/// Reads a class's events (Server-Sent Events) into a channel: (arrival, event).
fn reader(
    http: reqwest::Client,
    url: String,
) -> (
    mpsc::UnboundedReceiver<(Instant, Value)>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let r = http
            .get(&url)
            .timeout(Duration::from_secs(600))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{url}: {}", r.status());
        let mut body = r.bytes_stream();
        let mut buf = Vec::new();
        while let Some(Ok(chunk)) = body.next().await {
            buf.extend_from_slice(&chunk);
            while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = buf.drain(..end + 2).collect();
                for line in block.split(|b| *b == b'\n') {
                    if let Some(data) = line.strip_prefix(b"data:") {
                        let v: Value = serde_json::from_slice(data.trim_ascii_start()).unwrap();
                        let _ = tx.send((Instant::now(), v));
                    }
                }
            }
        }
    });
    (rx, task)
}

/// Takes events until `done` holds for what was taken, or `within` passes.
async fn take_until(
    rx: &mut mpsc::UnboundedReceiver<(Instant, Value)>,
    got: &mut Vec<(Instant, Value)>,
    within: Duration,
    done: impl Fn(&[(Instant, Value)]) -> bool,
) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while !done(got) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(e)) => got.push(e),
            _ => return false,
        }
    }
    true
}

fn messages(events: &[(Instant, Value)]) -> Vec<(u64, String)> {
    events
        .iter()
        .filter(|(_, e)| e["type"] == "message")
        .map(|(_, e)| {
            (
                e["id"].as_u64().unwrap(),
                e["text"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

async fn post(http: &reqwest::Client, base: &str, jwt: &str, text: &str) -> (u16, HeaderInfo) {
    let r = http
        .post(format!("{base}/live/qa/chat?jwt={jwt}"))
        .json(&json!({ "text": text }))
        .send()
        .await
        .unwrap();
    let retry = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    (r.status().as_u16(), retry)
}

type HeaderInfo = Option<String>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn class_questions_reach_everyone_once_in_one_order_and_survive_an_edge() {
    // Two masters, three slaves; the teacher logs in on the second master.
    let mut c = Cluster::start("chat", 0, Timings::default()).await;
    let port_b = free_port();
    let mut master_b = c.spawn_master_on(port_b);
    let master_b_url = format!("http://127.0.0.1:{port_b}");
    c.slave_master_urls = Some(format!("{},{master_b_url}", c.master_url()));
    // Master B binds before the slaves pick their ports, and a slave whose port another process
    // took in between is started again on new ones (`settle`).
    assert!(
        wait_until(Duration::from_secs(15), || healthy(&c.http, &master_b_url)).await,
        "master B is up"
    );
    for i in 1..=3 {
        c.add_slave(&format!("s{i}"), &[]);
    }
    c.settle(3).await;
    c.wait_healthy(3).await;
    let seen_by_b = wait_until(Duration::from_secs(30), || async {
        get_json(&c.http, &format!("{master_b_url}/cluster/nodes"))
            .await
            .is_some_and(|v| v["healthy_nodes"].as_u64() == Some(3))
    })
    .await;
    assert!(seen_by_b, "the second master sees the three slaves");
    let t: Value = c
        .http
        .post(format!("{master_b_url}/api/token"))
        .json(&json!({"role": "teacher", "user_id": "teacher", "stream": "qa", "credential": TEACHER}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rtmp = t["rtmp_url"].as_str().unwrap().to_string();
    let key = t["stream_key"].as_str().unwrap().to_string();
    let mut publisher = c.publish("publisher", &rtmp, &key, None);
    // Every slave mirrors the class (the master's order), as when its students watch: a first
    // request on an edge that does not yet mirror waits up to a part for the mirror to start.
    c.wait_live("qa", 3).await;
    let origin = t["node_id"].as_str().unwrap().to_string();
    let edges: Vec<String> = c
        .slaves
        .iter()
        .map(|s| s.id.clone())
        .filter(|id| *id != origin)
        .collect();
    let signing = SigningKey::load_or_generate(&c.key_file).unwrap();
    let bases: HashMap<String, String> =
        c.slaves.iter().map(|s| (s.id.clone(), s.base())).collect();
    let base = |id: &str| bases[id].clone();
    let teacher_jwt = t["token"].as_str().unwrap().to_string();

    // The teacher opens the class to chat, so that every student reader sees every message.
    let r = c
        .http
        .post(format!(
            "{}/live/qa/chat/moderate?jwt={teacher_jwt}",
            base(&origin)
        ))
        .json(&json!({ "mode": "chat" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    // Readers: the teacher at the origin, a student on each edge.
    let (mut teacher_rx, _t1) = reader(
        c.http.clone(),
        format!("{}/live/qa/chat?jwt={teacher_jwt}", base(&origin)),
    );
    let mut edge_rx = Vec::new();
    for (i, e) in edges.iter().enumerate() {
        let jwt = token(&c, &signing, e, &format!("reader{i}"), Role::Student);
        edge_rx.push(reader(
            c.http.clone(),
            format!("{}/live/qa/chat?jwt={jwt}", base(e)),
        ));
    }

    // 300 students, half on each edge, one question each, 30 at a time.
    let students: Vec<(String, String, String)> = (0..300)
        .map(|i| {
            let node = edges[i % 2].clone();
            let name = format!("student{i}");
            let jwt = token(&c, &signing, &node, &name, Role::Student);
            (base(&node), name, jwt)
        })
        .collect();
    let sent: Arc<std::sync::Mutex<HashMap<String, Instant>>> = Default::default();
    let posts = futures::stream::iter(students.iter().cloned())
        .map(|(b, name, jwt)| {
            let http = c.http.clone();
            let sent = sent.clone();
            async move {
                let text = format!("question from {name} <script>alert(1)</script>");
                sent.lock().unwrap().insert(text.clone(), Instant::now());
                post(&http, &b, &jwt, &text).await.0
            }
        })
        .buffer_unordered(30)
        .collect::<Vec<u16>>()
        .await;
    assert!(
        posts.iter().all(|s| *s == 201),
        "every post accepted: {posts:?}"
    );

    let mut teacher_got = Vec::new();
    let all = |g: &[(Instant, Value)]| messages(g).len() >= 300;
    assert!(
        take_until(
            &mut teacher_rx,
            &mut teacher_got,
            Duration::from_secs(15),
            all
        )
        .await,
        "the teacher got {} of 300",
        messages(&teacher_got).len()
    );
    let teacher_order = messages(&teacher_got);
    let mut ids: Vec<u64> = teacher_order.iter().map(|m| m.0).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in order");
    ids.dedup();
    assert_eq!(ids.len(), 300, "each once");
    assert!(
        teacher_order
            .iter()
            .all(|m| m.1.contains("<script>alert(1)</script>")),
        "text as sent, never altered"
    );
    // From post to the teacher: p99 under a second.
    let sent = sent.lock().unwrap().clone();
    let mut lat: Vec<f64> = teacher_got
        .iter()
        .filter(|(_, e)| e["type"] == "message")
        .map(|(at, e)| {
            at.duration_since(sent[e["text"].as_str().unwrap()])
                .as_secs_f64()
        })
        .collect();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let p99 = lat[lat.len() * 99 / 100];
    eprintln!(
        "post → teacher: p50 {:.3} s, p99 {p99:.3} s",
        lat[lat.len() / 2]
    );
    assert!(p99 < 1.0, "p99 {p99} s");
    // Each edge's reader saw the same messages in the same order.
    let mut edge_got = Vec::new();
    for (rx, _) in edge_rx.iter_mut() {
        let mut got = Vec::new();
        assert!(take_until(rx, &mut got, Duration::from_secs(10), all).await);
        assert_eq!(messages(&got), teacher_order, "one order for everyone");
        edge_got.push(got);
    }

    // The teacher's master goes: the class's messages do not pass through masters.
    master_b.kill9();
    let (b3, _, jwt3) = &students[3];
    assert_eq!(
        post(&c.http, b3, jwt3, "after the master died").await.0,
        201
    );
    let arrived =
        |g: &[(Instant, Value)]| g.iter().any(|(_, e)| e["text"] == "after the master died");
    assert!(
        take_until(
            &mut teacher_rx,
            &mut teacher_got,
            Duration::from_secs(1),
            arrived
        )
        .await
    );

    // Hide: gone from every reader within a second.
    let hidden = teacher_order[5].0;
    let at = Instant::now();
    let r = c
        .http
        .post(format!(
            "{}/live/qa/chat/moderate?jwt={teacher_jwt}",
            base(&origin)
        ))
        .json(&json!({ "hide": hidden }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    for ((rx, _), got) in edge_rx.iter_mut().zip(edge_got.iter_mut()) {
        let is_hide = |g: &[(Instant, Value)]| {
            g.iter()
                .any(|(_, e)| e["type"] == "hide" && e["message"] == hidden)
        };
        assert!(take_until(rx, got, Duration::from_secs(1), is_hide).await);
    }
    assert!(at.elapsed() < Duration::from_secs(1));

    // Mute: the student's next post is refused on their edge within a second.
    let (b7, _, jwt7) = &students[7];
    let r = c
        .http
        .post(format!(
            "{}/live/qa/chat/moderate?jwt={teacher_jwt}",
            base(&origin)
        ))
        .json(&json!({ "mute": "student7" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let muted = wait_until(Duration::from_secs(1), || async {
        post(&c.http, b7, jwt7, "again").await.0 == 403
    })
    .await;
    assert!(muted, "a muted student's post is refused");

    // A student's token at another node, a forged one, and a student moderating: refused.
    let (_, _, jwt9) = &students[9];
    let other_edge = base(&edges[1 - 9 % 2]);
    assert_eq!(post(&c.http, &other_edge, jwt9, "elsewhere").await.0, 403);
    assert_eq!(
        post(&c.http, &students[9].0, "x.y.z", "forged").await.0,
        401
    );
    let r = c
        .http
        .post(format!(
            "{}/live/qa/chat/moderate?jwt={jwt9}",
            students[9].0
        ))
        .json(&json!({ "mute": "student10" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "a student does not moderate");

    // The rate: a fourth post at once gets 429 with Retry-After.
    let (b8, _, jwt8) = &students[8];
    let mut last = (0, None);
    for i in 0..4 {
        last = post(&c.http, b8, jwt8, &format!("burst {i}")).await;
    }
    assert_eq!(last.0, 429);
    assert!(last.1.is_some(), "Retry-After");

    // An edge killed mid-class: its reader resumes on the other edge from its last id.
    let (mut rx0, task0) = edge_rx.remove(0);
    let got0 = edge_got.remove(0);
    let mut got0 = got0;
    while let Ok(e) = rx0.try_recv() {
        got0.push(e);
    }
    let last_id = got0
        .iter()
        .map(|(_, e)| e["id"].as_u64().unwrap())
        .max()
        .unwrap();
    c.slave_mut(&edges[0]).proc.kill9();
    task0.abort();
    // Posts go on meanwhile, on the surviving edge.
    for (b, _, jwt) in students.iter().skip(1).step_by(2).skip(10).take(5) {
        assert_eq!(post(&c.http, b, jwt, "after the edge died").await.0, 201);
    }
    let jwt = token(&c, &signing, &edges[1], "reader0", Role::Student);
    let (mut resumed, _t) = reader(
        c.http.clone(),
        format!("{}/live/qa/chat?jwt={jwt}&after={last_id}", base(&edges[1])),
    );
    let mut after = Vec::new();
    let five = |g: &[(Instant, Value)]| {
        g.iter()
            .filter(|(_, e)| e["text"] == "after the edge died")
            .count()
            >= 5
    };
    assert!(take_until(&mut resumed, &mut after, Duration::from_secs(10), five).await);
    let ids: Vec<u64> = after
        .iter()
        .map(|(_, e)| e["id"].as_u64().unwrap())
        .collect();
    let expected: Vec<u64> = (last_id + 1..=*ids.last().unwrap()).collect();
    assert_eq!(ids, expected, "no event lost or repeated across the move");

    // The messages go with the recording: a replay (here from the edge left) gets what the
    // class saw, with the times they were sent, less the hidden one.
    publisher.terminate(Duration::from_secs(5));
    let rec =
        crate::recording::wait_recording(&c, "qa", "finished", |r| r["recording"] == false).await;
    // A token of the edge left (the master may still count the killed one for a heartbeat).
    let rec_id = rec["id"].as_str().unwrap();
    let claims = new_claims(
        "classcast",
        "replay",
        Role::Student,
        &edges[1],
        &format!("rec/{rec_id}"),
        Action::Read,
        Duration::from_secs(600),
    );
    let url = format!(
        "{}/vod/{rec_id}/chat.json?jwt={}",
        base(&edges[1]),
        signing.sign(&claims).unwrap()
    );
    let replay: Value = c.http.get(&url).send().await.unwrap().json().await.unwrap();
    let shown: Vec<u64> = replay["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    for (id, _) in &teacher_order {
        assert_eq!(
            shown.contains(id),
            *id != hidden,
            "message {id} in the replay"
        );
    }
    let started = rec["started_ms"].as_u64().unwrap();
    assert!(
        replay["messages"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["at_ms"].as_u64().unwrap() >= started),
        "times on the class's clock"
    );
}
