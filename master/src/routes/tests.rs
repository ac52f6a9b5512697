//! The master's cluster and token routes in-process (`oneshot`, no sockets): the cluster-secret
//! extractor, registration input, and the token route's refusals.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{Request, StatusCode};
use common::secret::ClusterSecret;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::state::{AppState, MasterConfig};

const SECRET: &str = "in-process-master-secret-0123";
const TEACHER: &str = "teacher-password-123";

fn state() -> AppState {
    let dir = std::env::temp_dir().join(format!(
        "classcast-master-routes-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("jwt.pem");
    let _ = std::fs::remove_file(&key);
    let mut cfg = MasterConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        ClusterSecret::new(SECRET).unwrap(),
        key,
    );
    cfg.teacher_credential = Some(TEACHER.into());
    cfg.http.max_connections = 16;
    AppState::new(cfg).unwrap()
}

async fn call(
    st: &AppState,
    from: &str,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (StatusCode, Value, Option<String>) {
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let body = match body {
        Some(b) => {
            req = req.header("content-type", "application/json");
            Body::from(b.to_string())
        }
        None => Body::empty(),
    };
    let peer: SocketAddr = format!("{from}:40000").parse().unwrap();
    let r = crate::router(st)
        .layer(MockConnectInfo(peer))
        .oneshot(req.body(body).unwrap())
        .await
        .unwrap();
    let status = r.status();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let bytes = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        retry,
    )
}

fn registration(id: &str) -> Value {
    json!({"node_id": id, "node_name": id, "public_url": format!("http://{id}.test:8888"),
           "rtmp_url": format!("rtmp://{id}.test:1935/live"), "max_connections": 10, "version": "t"})
}

#[tokio::test]
async fn the_cluster_secret_guards_every_cluster_call() {
    let st = state();
    let bearer = format!("Bearer {SECRET}");
    let auth = [("authorization", bearer.as_str())];
    for (uri, body) in [
        ("/cluster/register", registration("a")),
        (
            "/cluster/stats",
            json!({"node_id":"a","stats":{"connections":0,"cpu":0.0,"memory":0.0}}),
        ),
        (
            "/cluster/streams/announce",
            json!({"node_id":"a","path":"live/x","live":true}),
        ),
        ("/cluster/unregister", json!({"node_id":"a"})),
    ] {
        let (s, _, _) = call(&st, "10.0.0.1", "POST", uri, &[], Some(body.clone())).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{uri} without the secret");
        let wrong = [("authorization", "Bearer wrong-secret-0123456789")];
        let (s, _, _) = call(&st, "10.0.0.1", "POST", uri, &wrong, Some(body)).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{uri} with a wrong secret");
    }
    let (s, v, _) = call(
        &st,
        "10.0.0.1",
        "GET",
        "/cluster/streams/origin?path=live/x",
        &[],
        None,
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    // With it: register, then the registry has the node.
    let (s, v, _) = call(
        &st,
        "10.0.0.1",
        "POST",
        "/cluster/register",
        &auth,
        Some(registration("a")),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["page_origins"].is_array());
    // Input is checked on character boundaries: 400, never a panic.
    let mut long = registration("b");
    long["node_name"] = json!("é".repeat(100));
    let (s, v, _) = call(
        &st,
        "10.0.0.1",
        "POST",
        "/cluster/register",
        &auth,
        Some(long),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v, _) = call(&st, "10.0.0.1", "GET", "/cluster/nodes", &[], None).await;
    assert_eq!((s, v["total_nodes"].as_u64()), (StatusCode::OK, Some(1)));
}

#[tokio::test]
async fn token_route_refusals() {
    let st = state();
    let bearer = format!("Bearer {SECRET}");
    let auth = [("authorization", bearer.as_str())];
    call(
        &st,
        "10.0.0.1",
        "POST",
        "/cluster/register",
        &auth,
        Some(registration("a")),
    )
    .await;

    // A student for a stream that is not live: 404.
    let student = json!({"role":"student","user_id":"s","stream":"class"});
    let (s, v, _) = call(&st, "10.0.0.5", "POST", "/api/token", &[], Some(student)).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("stream_not_live"))
    );

    // Monitor tokens need the cluster secret.
    let monitor = json!({"role":"monitor","user_id":"m"});
    let (s, _, _) = call(
        &st,
        "10.0.0.5",
        "POST",
        "/api/token",
        &[],
        Some(monitor.clone()),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, v, _) = call(&st, "10.0.0.5", "POST", "/api/token", &auth, Some(monitor)).await;
    assert_eq!(s, StatusCode::OK, "{v}");

    // A teacher login from another site's page: 403, even with the right password.
    let teacher = json!({"role":"teacher","user_id":"t","stream":"class","credential":TEACHER});
    let cross = [
        ("origin", "http://evil.example"),
        ("host", "master.school:8000"),
    ];
    let (s, _, _) = call(
        &st,
        "10.0.0.6",
        "POST",
        "/api/token",
        &cross,
        Some(teacher.clone()),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let same = [
        ("origin", "http://master.school:8000"),
        ("host", "master.school:8000"),
    ];
    let (s, v, _) = call(
        &st,
        "10.0.0.6",
        "POST",
        "/api/token",
        &same,
        Some(teacher.clone()),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");

    // Guessing from one address: 401 × 5, then 429 with Retry-After; another address is fine.
    let wrong =
        json!({"role":"teacher","user_id":"t","stream":"class","credential":"nope-nope-nope"});
    let mut statuses = Vec::new();
    let mut retry = None;
    for _ in 0..8 {
        let (s, _, r) = call(
            &st,
            "10.0.0.7",
            "POST",
            "/api/token",
            &[],
            Some(wrong.clone()),
        )
        .await;
        statuses.push(s.as_u16());
        retry = retry.or(r);
    }
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429, 429, 429]);
    assert!(retry.is_some_and(|r| r.parse::<u64>().unwrap() >= 1));
    let (s, _, _) = call(
        &st,
        "10.0.0.7",
        "POST",
        "/api/token",
        &[],
        Some(teacher.clone()),
    )
    .await;
    assert_eq!(
        s,
        StatusCode::TOO_MANY_REQUESTS,
        "blocked addresses are not checked at all"
    );
    let (s, _, _) = call(&st, "10.0.0.8", "POST", "/api/token", &[], Some(teacher)).await;
    assert_eq!(s, StatusCode::OK);
}
