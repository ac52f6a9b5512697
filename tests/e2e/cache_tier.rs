//! Issue 18: a cache tier from the shelf. nginx from apt with the shipped
//! deploy/nginx/classcast-cache.conf in front of one slave started with `--cache-url`: the master
//! hands viewers the cache's URL, 300 simulated LL-HLS viewers (the bench's generator) play
//! through it while the slave sees a few requests per part, every viewer is still counted, a
//! forged or expired token gets 401 through the cache, and parts are byte-identical.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::token::{Action, Role, SigningKey, new_claims};
use serde_json::Value;

use crate::support::*;

/// nginx with the shipped configuration, its paths and ports moved into the test's directory.
struct Nginx {
    proc: Proc,
    port: u16,
}

impl Nginx {
    fn start_on(test: &str, upstream_port: u16, port: u16) -> Nginx {
        let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("nginx is not installed (apt-get install nginx; scripts/test.sh does)");
        let dir = log_dir(test).join("nginx");
        let _ = std::fs::remove_dir_all(&dir);
        for d in ["cache", "tmp"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let shipped = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nginx/classcast-cache.conf"),
        )
        .unwrap();
        let conf = rewrite(
            &shipped,
            &[
                ("/var/cache/nginx/", &format!("{}/cache/", dir.display())),
                (
                    "server 127.0.0.1:8888;",
                    &format!("server 127.0.0.1:{upstream_port};"),
                ),
                ("listen 8080;", &format!("listen 127.0.0.1:{port};")),
                ("listen [::]:8080;", ""),
            ],
        );
        std::fs::write(dir.join("classcast-cache.conf"), conf).unwrap();
        let d = dir.display();
        let user = if unsafe { libc::geteuid() } == 0 {
            "user root;"
        } else {
            ""
        };
        std::fs::write(
            dir.join("nginx.conf"),
            format!(
                "daemon off; {user} worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log notice;\n\
                 events {{ worker_connections 4096; }}\n\
                 http {{ access_log {d}/access.log; client_body_temp_path {d}/tmp/body; proxy_temp_path {d}/tmp/proxy;\n\
                 fastcgi_temp_path {d}/tmp/fastcgi; uwsgi_temp_path {d}/tmp/uwsgi; scgi_temp_path {d}/tmp/scgi;\n\
                 include {d}/classcast-cache.conf; }}\n"
            ),
        )
        .unwrap();
        let mut cmd = Command::new(nginx);
        cmd.args(["-p", &d.to_string(), "-c", &format!("{d}/nginx.conf")]);
        let proc = Proc::spawn("nginx", dir.join("nginx.out"), &mut cmd);
        let t0 = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "nginx did not start: {}",
                std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Nginx { proc, port }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// nginx's master ends its workers on SIGTERM; killed outright it would leave them running.
impl Drop for Nginx {
    fn drop(&mut self) {
        self.proc.terminate(Duration::from_secs(5));
    }
}

/// The shipped file with each `(from, to)` replaced; a `from` that is not there fails the test
/// (the shipped file changed under it).
fn rewrite(text: &str, subs: &[(&str, &str)]) -> String {
    let mut out = text.to_string();
    for (from, to) in subs {
        assert!(
            out.contains(from),
            "deploy/nginx/classcast-cache.conf lost `{from}`"
        );
        out = out.replace(from, to);
    }
    out
}

fn bench_bin() -> PathBuf {
    let p = Path::new(BIN).with_file_name("classcast-bench");
    assert!(
        p.exists(),
        "{} is missing: `cargo build -p classcast-bench` (the workspace test run builds it)",
        p.display()
    );
    p
}

async fn slave_metrics(c: &Cluster) -> String {
    metrics_text(&c.http, &c.slave("s1").base()).await
}

fn counter(text: &str, series: &str) -> f64 {
    metric_value(text, series).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_in_front_of_a_slave_serves_many_viewers_for_a_few_requests_per_part() {
    let mut c = Cluster::start("cache_tier", 0, Timings::default()).await;
    // The slave's port is known once it runs; the cache's port is chosen first.
    let cache_port = free_port();
    let cache_url = format!("http://127.0.0.1:{cache_port}");
    c.add_slave("s1", &["--cache-url", &cache_url]);
    c.wait_healthy(1).await;
    let nginx = Nginx::start_on("cache_tier", c.slave("s1").http_port, cache_port);
    assert_eq!(nginx.url(), cache_url);

    let (rtmp, key, _) = c.teacher("cached").await;
    let _publisher = c.publish("publisher", &rtmp, &key, None);
    c.wait_live("cached", 1).await;

    // The master hands out the cache's URL, and a real player reads the stream through it.
    let v = c.student("cached", "probe").await;
    let hls = v["hls_url"].as_str().unwrap().to_string();
    assert!(
        hls.starts_with(&cache_url),
        "token names {hls}, not the cache"
    );
    let probe = ffprobe(&hls).expect("ffprobe plays through the cache");
    assert!(codecs(&probe).contains(&"h264".to_string()), "{probe}");

    // 300 LL-HLS viewers through the cache.
    let before = slave_metrics(&c).await;
    let mut child = Command::new(bench_bin())
        .args([
            "viewers",
            "--master",
            &c.master_url(),
            "--slave",
            &cache_url,
        ])
        .args(["--stream", "cached", "--steps", "300", "--seconds", "8"])
        .args(["--warmup", "3", "--goal-p99-ms", "1000"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The most viewers the master saw on the slave while they played.
    let mut most_counted = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the viewer generator hangs"
        );
        let n = c.nodes().await["nodes"][0]["current_connections"]
            .as_u64()
            .unwrap_or(0);
        most_counted = most_counted.max(n);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = child.wait_with_output().unwrap();
    let after = slave_metrics(&c).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "viewer generator failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let step = &result["steps"][0];
    assert_eq!(
        step["errors"], 0,
        "viewers through the cache saw errors: {step}"
    );
    let part_gets = step["part_gets"].as_f64().unwrap();
    let delta = |series: &str| counter(&after, series) - counter(&before, series);
    let parts_made = delta("classcast_slave_parts_total");
    let part_requests = delta(r#"classcast_slave_http_requests_total{kind="part"}"#);
    let playlist_requests = delta(r#"classcast_slave_http_requests_total{kind="playlist"}"#);
    eprintln!(
        "through the cache: {part_gets} part GETs by viewers; at the slave {part_requests} part and \
         {playlist_requests} playlist requests for {parts_made} parts made"
    );
    assert!(parts_made > 20.0, "too few parts were made: {parts_made}");
    assert!(
        part_gets > 100.0 * parts_made,
        "the viewers played too little: {part_gets} part GETs for {parts_made} parts"
    );
    // A part is fetched again when the shared ticket's bucket turns: a few per part at most.
    assert!(
        part_requests <= 3.0 * parts_made,
        "{part_requests} part requests reached the slave for {parts_made} parts"
    );
    assert!(
        playlist_requests <= 6.0 * parts_made,
        "{playlist_requests} playlist requests reached the slave for {parts_made} parts"
    );

    // Every viewer is still counted, by the token check the cache makes (a few per viewer in
    // the run, not one per request), and the count reaches the master.
    let checks = delta("classcast_slave_cache_auth_checks_total");
    assert!(
        (300.0..=300.0 * 6.0).contains(&checks),
        "{checks} token checks by the cache for 300 viewers"
    );
    assert!(
        (295..=302).contains(&most_counted),
        "the master counted {most_counted} viewers behind the cache, not 300"
    );

    // Authorization is kept: a forged and an expired token get 401 through the cache.
    let (other, _) = SigningKey::generate().unwrap();
    let claims = |ttl: u64| {
        new_claims(
            "classcast",
            "mallory",
            Role::Student,
            "s1",
            "live/cached",
            Action::Read,
            Duration::from_secs(ttl),
        )
    };
    let forged = other.sign(&claims(600)).unwrap();
    let master_key = SigningKey::load(&c.key_file).unwrap();
    let mut old = claims(600);
    old.exp = common::now_unix() - 5;
    let expired = master_key.sign(&old).unwrap();
    for (what, token) in [("forged", forged), ("expired", expired)] {
        let url = format!("{cache_url}/live/cached/index.m3u8?jwt={token}");
        let r = c.http.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 401, "a {what} token through the cache");
    }
    // A ticket that is not the slave's is a miss the slave refuses.
    let r = c
        .http
        .get(format!(
            "{cache_url}/live/cached/part1.0.m4s?t=9999999999.AAAAAAAAAAA.forgedforgedforgedforg"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "a forged media ticket through the cache");

    // Parts through the cache are the slave's bytes.
    let text = c.http.get(&hls).send().await.unwrap().text().await.unwrap();
    let uri = text
        .lines()
        .filter(|l| l.starts_with("#EXT-X-PART:"))
        .filter_map(|l| l.split("URI=\"").nth(1)?.split('"').next())
        .next()
        .expect("a part in the playlist");
    let via_cache = c
        .http
        .get(format!("{cache_url}/live/cached/{uri}"))
        .send()
        .await
        .unwrap();
    assert_eq!(via_cache.status(), 200);
    let via_cache = via_cache.bytes().await.unwrap();
    let direct = c
        .http
        .get(format!("{}/live/cached/{uri}", c.slave("s1").base()))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(
        !direct.is_empty() && via_cache == direct,
        "part bytes differ through the cache"
    );
}
