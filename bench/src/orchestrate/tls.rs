//! Section 13 (issue 31): serving over HTTPS. One slave with TLS on (a certificate from a CA
//! this run makes) and one live stream; the newest part a viewer fetches, served by the slave
//! and by static nginx with TLS on the same certificate and key, over HTTPS/1.1 and HTTP/2,
//! loaded by h2load (nghttp2's load generator: both protocols, one tool).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use super::procs::Output;
use super::sample::small_media;
use super::serving::{chmod, publish_loop};
use super::{Ctx, log, path_str};
use crate::args;

/// The test CA and the node certificate (127.0.0.1), as PEM files in `dir`.
fn make_pki(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir)?;
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "classcast bench CA");
    let issuer = rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate()?)?;
    let key = rcgen::KeyPair::generate()?;
    let leaf =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])?.signed_by(&key, &issuer)?;
    let (ca_f, cert_f, key_f) = (
        dir.join("ca.pem"),
        dir.join("node.pem"),
        dir.join("node.key"),
    );
    std::fs::write(&ca_f, issuer.pem())?;
    std::fs::write(&cert_f, leaf.pem())?;
    std::fs::write(&key_f, key.serialize_pem())?;
    chmod(&key_f, 0o600)?;
    Ok((ca_f, cert_f, key_f))
}

async fn get(client: &reqwest::Client, url: &str) -> anyhow::Result<Vec<u8>> {
    let r = client.get(url).send().await?;
    anyhow::ensure!(r.status().is_success(), "GET {url} → {}", r.status());
    Ok(r.bytes().await?.to_vec())
}

/// The figures of one h2load run, as a result line.
pub fn parse_h2load(out: &str, label: &str, server: &str, proto: &str, bytes: u64) -> String {
    let (mut rps, mut mean, mut done, mut failed) = (0.0, 0.0, 0u64, 0u64);
    for line in out.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("finished in ") {
            // "finished in 8.00s, 12345.67 req/s, 100.00MB/s"
            rps = rest
                .split(", ")
                .nth(1)
                .and_then(|x| x.strip_suffix(" req/s"))
                .and_then(|x| x.parse().ok())
                .unwrap_or(0.0);
        } else if let Some(rest) = t.strip_prefix("requests: ") {
            // "N total, N started, N done, N succeeded, N failed, N errored, N timeout"
            for part in rest.split(", ") {
                let mut it = part.split_whitespace();
                let (n, what) = (it.next().and_then(|n| n.parse().ok()), it.next());
                match (n, what) {
                    (Some(n), Some("succeeded")) => done = n,
                    (Some(n), Some("failed")) => failed = n,
                    _ => {}
                }
            }
        } else if let Some(rest) = t.strip_prefix("time for request:") {
            // "min max mean sd +/- sd", each with a unit
            mean = rest
                .split_whitespace()
                .nth(2)
                .map(super::serving::wrk_ms)
                .unwrap_or(0.0);
        }
    }
    serde_json::json!({
        "bench": "https", "label": label, "server": server, "proto": proto, "bytes": bytes,
        "rps": (rps * 10.0_f64).round() / 10.0, "mean_ms": (mean * 100.0_f64).round() / 100.0,
        "succeeded": done, "failed": failed,
    })
    .to_string()
}

pub async fn run(ctx: &Ctx<'_>) -> anyhow::Result<()> {
    log(
        "13 https: a part over HTTPS/1.1 and HTTP/2, classcast vs nginx with TLS on the same certificate (h2load)",
    );
    let (p, hs, rs, https, rtmps, ns) = (
        ctx.port(44),
        ctx.port(47),
        ctx.port(48),
        ctx.port(49),
        ctx.port(50),
        ctx.port(51),
    );
    let dir = ctx.work.join("tls");
    let (ca, cert, key) = make_pki(&dir)?;
    let m = ctx.start_master("master-https", p).await?;
    let tls = args![
        "--tls-cert-file",
        path_str(&cert),
        "--tls-key-file",
        path_str(&key),
        "--https-bind",
        format!("127.0.0.1:{https}"),
        "--rtmps-bind",
        format!("127.0.0.1:{rtmps}")
    ];
    let s = ctx.start_slave("slave-https", p, hs, rs, &tls).await?;
    ctx.wait_nodes(p, 1).await?;
    let small = small_media(ctx).await?;
    let publisher = publish_loop(ctx, p, "https", &small).await?;
    let vurl = ctx.viewer_url(p, "https").await?;
    anyhow::ensure!(
        vurl.starts_with("https://"),
        "the viewer URL is not https: {vurl}"
    );
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&std::fs::read(&ca)?)?])
        .build()?;
    let _ = super::retry(100, Duration::from_millis(200), || get(&client, &vurl)).await;
    super::procs::sleep(Duration::from_secs(4)).await?;

    let shm = PathBuf::from(format!(
        "/dev/shm/classcast-bench-https.{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&shm)?;
    chmod(&shm, 0o755)?;
    std::fs::write(shm.join("part.m4s"), b"")?;
    chmod(&shm.join("part.m4s"), 0o644)?;
    let nginx = start_nginx_tls(ctx, &shm, ns, &cert, &key, &ca).await;
    // The newest listed part as a viewer fetches it: re-read before each classcast run, since a
    // part leaves the slave's window (9 s by default) before two 8 s runs are over.
    let newest_part = || async {
        let viewer = get(&client, &vurl).await?;
        let part = super::serving::newest_listed_part(&String::from_utf8_lossy(&viewer))
            .context("no EXT-X-PART in the viewer playlist")?;
        let base = vurl.split('?').next().unwrap_or(&vurl);
        let base = base.strip_suffix("/index.m3u8").context("viewer URL")?;
        let url = format!("{base}/{part}");
        let bytes = get(&client, &url).await?;
        anyhow::Ok((url, bytes))
    };
    let result = async {
        let nginx = nginx?;
        let nginx_url = format!("https://127.0.0.1:{ns}/part.m4s");
        for (proto, h1) in [("h1", true), ("h2", false)] {
            // nginx serves the very bytes classcast serves in the same pair of runs.
            let (part_url, part) = newest_part().await?;
            std::fs::write(shm.join("part.m4s"), &part)?;
            eprintln!("{part_url}: {} bytes", part.len());
            let n = part.len() as u64;
            let label = format!("part-classcast-{proto}");
            h2load(ctx, &label, "classcast", proto, h1, &part_url, n).await?;
            let label = format!("part-nginx-{proto}");
            h2load(ctx, &label, "nginx", proto, h1, &nginx_url, n).await?;
        }
        ctx.sup.stop(nginx);
        anyhow::Ok(())
    }
    .await;
    let _ = std::fs::remove_dir_all(&shm);
    ctx.sup.stop(publisher);
    ctx.sup.stop(s);
    ctx.sup.stop(m);
    result
}

/// One `h2load -t2 -c200 -m1 -D 8` run (HTTP/1.1 with `--h1`, else HTTP/2 by ALPN) → one line.
async fn h2load(
    ctx: &Ctx<'_>,
    label: &str,
    server: &str,
    proto: &str,
    h1: bool,
    url: &str,
    bytes: u64,
) -> anyhow::Result<()> {
    let mut a = Vec::from(args!["-t2", "-c200", "-m1", "-D", "8"]);
    if h1 {
        a.push("--h1".into());
    }
    a.push(url.to_string());
    let out = ctx.work.join(format!("h2load-{label}.txt"));
    let cmd = ctx.launch.command(true, Path::new("h2load"), &a);
    ctx.sup
        .run(&format!("h2load {label}"), cmd, Output::Log(out.clone()))
        .await?;
    let text = std::fs::read_to_string(&out)?;
    print!("{text}");
    let mut line = parse_h2load(&text, label, server, proto, bytes);
    anyhow::ensure!(
        !line.contains("\"succeeded\":0,"),
        "{label}: no request succeeded (see {})",
        out.display()
    );
    // The command, for the report.
    if let Ok(mut v) = serde_json::from_str::<serde_json::Value>(&line) {
        v["command"] = format!("h2load {}", a.join(" ")).into();
        line = v.to_string();
    }
    println!("{line}");
    super::finish::append(&ctx.results, &line)
}

/// Static nginx (1 worker, sendfile off under TLS as nginx does) with TLS 1.3 and HTTP/2 on
/// `port`, serving `root` with the slave's certificate and key.
async fn start_nginx_tls(
    ctx: &Ctx<'_>,
    root: &Path,
    port: u16,
    cert: &Path,
    key: &Path,
    ca: &Path,
) -> anyhow::Result<u32> {
    let dir = ctx.work.join(format!("nginx-tls-{port}"));
    let d = path_str(&dir);
    // nginx 1.22 (Debian 12) takes `http2` on the listen line (`http2 on;` came in 1.25.1).
    let conf = format!(
        "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/logs/error.log warn;\n\
         events {{ worker_connections 4096; }}\nhttp {{\n  access_log off; sendfile on; \
         tcp_nopush on; keepalive_requests 1000000; http2_max_requests 1000000;\n  \
         types {{ video/mp4 m4s; }}\n  server {{ listen 127.0.0.1:{port} ssl http2; \
         ssl_certificate {}; ssl_certificate_key {}; ssl_protocols TLSv1.3; root {}; }}\n}}\n",
        cert.display(),
        key.display(),
        root.display()
    );
    let pid = ctx.spawn_nginx("nginx-tls", &dir, &conf)?;
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&std::fs::read(ca)?)?])
        .build()?;
    let url = format!("https://127.0.0.1:{port}/part.m4s");
    super::retry(100, Duration::from_millis(100), || get(&client, &url))
        .await
        .with_context(|| format!("nginx with TLS never answered {url}"))?;
    Ok(pid)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_h2load_figures() {
        let out = "finished in 8.00s, 24521.38 req/s, 1.01GB/s\n\
            requests: 196171 total, 196371 started, 196171 done, 196170 succeeded, 1 failed, 1 errored, 0 timeout\n\
            status codes: 196170 2xx, 0 3xx, 0 4xx, 0 5xx\n\
            \x20                    min         max         mean         sd        +/- sd\n\
            time for request:      351us     45.31ms      8.11ms      3.02ms    71.23%\n";
        let v: serde_json::Value =
            serde_json::from_str(&super::parse_h2load(out, "l", "nginx", "h2", 40000)).unwrap();
        assert_eq!(v["rps"], 24521.4);
        assert_eq!(v["mean_ms"], 8.11);
        assert_eq!(v["succeeded"], 196170);
        assert_eq!(v["failed"], 1);
    }
}
