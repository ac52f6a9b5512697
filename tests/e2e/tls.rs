//! Issue 31: nothing in clear text. Nodes serve HTTPS (HTTP/2 by ALPN) and RTMPS with a
//! certificate from files signed by a test CA (a school's own CA), verify each other against
//! it, reload a replaced certificate without a restart, and keep every HTTP bound over TLS.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

/// A test CA and the certificates it signs, as files in `dir`.
pub(crate) struct Pki {
    dir: PathBuf,
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    pub(crate) ca_file: PathBuf,
}

impl Pki {
    pub(crate) fn new(dir: &Path) -> Pki {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "classcast test school CA");
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let issuer =
            rcgen::CertifiedIssuer::self_signed(p, rcgen::KeyPair::generate().unwrap()).unwrap();
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, issuer.pem()).unwrap();
        Pki {
            dir: dir.into(),
            issuer,
            ca_file,
        }
    }

    /// A new key and certificate for `names`, written to `<stem>.pem` and `<stem>.key` (the
    /// key 0600, as an operator keeps it). Returns the paths and the certificate's DER.
    pub(crate) fn leaf(&self, stem: &str, names: &[&str]) -> (PathBuf, PathBuf, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let p =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        let (c, k) = (
            self.dir.join(format!("{stem}.pem")),
            self.dir.join(format!("{stem}.key")),
        );
        // Replaced by rename, as certbot and Kubernetes replace them.
        let tmp = self.dir.join(format!("{stem}.key.new"));
        let _ = std::fs::remove_file(&tmp);
        common::secret::write_private(&tmp, &key.serialize_pem()).unwrap();
        std::fs::rename(&tmp, &k).unwrap();
        std::fs::write(&tmp, cert.pem()).unwrap();
        std::fs::rename(&tmp, &c).unwrap();
        (c, k, cert.der().to_vec())
    }

    /// A client that trusts this CA only.
    fn client(&self) -> reqwest::Client {
        trusting(&self.ca_file)
    }
}

/// A client that trusts the CA certificate in `ca` only, and reports the peer's certificate.
pub(crate) fn trusting(ca: &Path) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap();
    reqwest::Client::builder()
        .tls_certs_only([ca])
        .tls_info(true)
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// Whether `url` answers (any status) within `secs`.
pub(crate) async fn answers_within(c: &reqwest::Client, url: &str, secs: u64) -> bool {
    wait_until(Duration::from_secs(secs), || async {
        c.get(url).send().await.is_ok()
    })
    .await
}

fn tls_flags(cert: &Path, key: &Path, ca: &Path) -> Vec<String> {
    [
        "--tls-cert-file",
        cert.to_str().unwrap(),
        "--tls-key-file",
        key.to_str().unwrap(),
        "--tls-ca-file",
        ca.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec()
}

fn spawn_master(test: &str, plain: u16, https: u16, tls: &[String], extra: &[&str]) -> Proc {
    let dir = log_dir(test);
    let mut cmd = Command::new(BIN);
    cmd.arg("master")
        .args(["--bind", &format!("127.0.0.1:{plain}")])
        .args(["--https-bind", &format!("127.0.0.1:{https}")])
        .args(["--jwt-key-file", dir.join("jwt.pem").to_str().unwrap()])
        .args(["--heartbeat-interval-ms", "300"])
        .args(tls)
        .args(extra)
        .env("CLUSTER_SECRET", SECRET)
        .env("TEACHER_PASSWORD", TEACHER)
        .env("LOG", "info");
    Proc::spawn("master", dir.join(format!("master-{https}.log")), &mut cmd)
}

/// A slave with RTMPS only (plain RTMP off), HTTPS and a redirecting plain port. Returns the
/// process and its (rtmps, https) ports.
fn spawn_slave(test: &str, id: &str, master: &str, tls: &[String]) -> (Proc, u16, u16) {
    let (rtmps, http, https) = (free_port(), free_port(), free_port());
    let dir = log_dir(test);
    let mut cmd = Command::new(BIN);
    cmd.arg("slave")
        .args(["--master-url", master])
        .args(["--node-id", id])
        .args(["--rtmp-plain", "false"])
        .args(["--rtmps-bind", &format!("127.0.0.1:{rtmps}")])
        .args(["--http-bind", &format!("127.0.0.1:{http}")])
        .args(["--https-bind", &format!("127.0.0.1:{https}")])
        .args(["--public-host", "127.0.0.1"])
        .args(["--heartbeat-interval-ms", "300"])
        .args(["--webrtc-udp-port", "0", "--webrtc-tcp", "false"])
        .args(["--drain-ms", "300"])
        .args([
            "--record-dir",
            dir.join(format!("rec-{id}")).to_str().unwrap(),
        ])
        .args(tls)
        .env("CLUSTER_SECRET", SECRET)
        .env("LOG", "info");
    let p = Proc::spawn(id, dir.join(format!("{id}.log")), &mut cmd);
    (p, rtmps, https)
}

/// A TCP proxy the test owns, keeping every byte that crosses it in either direction: what an
/// on-path attacker on the school's network would capture.
struct Capture {
    port: u16,
    bytes: Arc<parking_lot::Mutex<Vec<u8>>>,
}

impl Capture {
    async fn start(target: u16) -> Capture {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let bytes = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let kept = bytes.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = l.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, kept.clone()));
                tokio::spawn(pump(sr, cw, kept.clone()));
            }
        });
        Capture { port, bytes }
    }

    fn captured(&self) -> Vec<u8> {
        self.bytes.lock().clone()
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    kept: Arc<parking_lot::Mutex<Vec<u8>>>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 {
            break;
        }
        {
            let mut k = kept.lock();
            if k.len() < 256 << 20 {
                k.extend_from_slice(&buf[..n]);
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

fn contains(hay: &[u8], needle: &str) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

async fn json_ok(r: reqwest::Response) -> Value {
    let s = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    assert!(s.is_success(), "{s}: {v}");
    v
}

pub(crate) fn peer_cert(r: &reqwest::Response) -> Vec<u8> {
    r.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|t| t.peer_certificate())
        .expect("a TLS peer certificate")
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmps_publish_https_edges_http2_and_nothing_in_clear_text() {
    let test = "tls_cluster";
    let pki = Pki::new(&log_dir(test));
    let (cert, key, _) = pki.leaf("node", &["localhost", "127.0.0.1"]);
    let tls = tls_flags(&cert, &key, &pki.ca_file);
    let (mp, ms) = (free_port(), free_port());
    let _master = spawn_master(test, mp, ms, &tls, &[]);
    // Slaves, teacher and students reach the master through a capturing proxy.
    let wire = Capture::start(ms).await;
    let master = format!("https://127.0.0.1:{}", wire.port);
    let c = pki.client();
    assert!(
        answers_within(&c, &format!("https://127.0.0.1:{ms}/health"), 15).await,
        "the master never answered over HTTPS"
    );
    let _s1 = spawn_slave(test, "s1", &master, &tls);
    let _s2 = spawn_slave(test, "s2", &master, &tls);
    assert!(
        wait_until(Duration::from_secs(30), || async {
            get_json(&c, &format!("{master}/cluster/nodes"))
                .await
                .is_some_and(|v| v["healthy_nodes"] == 2)
        })
        .await,
        "two slaves did not register over HTTPS"
    );

    // The plain port redirects everything but /health (and ACME challenges) to HTTPS.
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = plain
        .post(format!("http://127.0.0.1:{mp}/api/token"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(
        r.headers()["location"],
        format!("https://127.0.0.1:{ms}/api/token").as_str()
    );
    let r = plain
        .get(format!("http://127.0.0.1:{mp}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("strict-transport-security").is_none());

    // A teacher is handed RTMPS; HSTS is on every HTTPS answer.
    let r = c
        .post(format!("{master}/api/token"))
        .json(&json!({"role": "teacher", "user_id": "t", "stream": "tls", "credential": TEACHER}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["strict-transport-security"], "max-age=31536000");
    let teacher = json_ok(r).await;
    let rtmps_url = teacher["rtmp_url"].as_str().unwrap().to_string();
    let stream_key = teacher["stream_key"].as_str().unwrap().to_string();
    assert!(rtmps_url.starts_with("rtmps://127.0.0.1:"), "{rtmps_url}");
    let origin_port: u16 = rtmps_url
        .trim_start_matches("rtmps://127.0.0.1:")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();

    // ffmpeg publishes over RTMPS through a second capturing proxy, verifying the certificate
    // against the school CA; with another CA it refuses to connect.
    let rtmp_wire = Capture::start(origin_port).await;
    let via = rtmps_url.replace(&origin_port.to_string(), &rtmp_wire.port.to_string());
    let bad_ca = log_dir(test).join("other-ca.pem");
    std::fs::write(
        &bad_ca,
        rcgen::generate_simple_self_signed(vec!["other".to_string()])
            .unwrap()
            .cert
            .pem(),
    )
    .unwrap();
    let refused = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=320x240:rate=30",
            "-t",
            "1",
        ])
        .args([
            "-c:v",
            "libx264",
            "-tls_verify",
            "1",
            "-ca_file",
            bad_ca.to_str().unwrap(),
        ])
        .args(["-f", "flv", &format!("{via}/{stream_key}")])
        .output()
        .unwrap();
    assert!(
        !refused.status.success(),
        "ffmpeg published to a certificate its CA did not sign"
    );
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("certificate"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let _publisher = ffmpeg_publish_with(
        test,
        "ffmpeg-rtmps",
        &format!("{via}/{stream_key}"),
        Some(60),
        "640x360",
        &[
            "-tls_verify",
            "1",
            "-ca_file",
            pki.ca_file.to_str().unwrap(),
        ],
    );
    assert!(
        wait_until(Duration::from_secs(30), || async {
            get_json(&c, &format!("{master}/cluster/streams"))
                .await
                .is_some_and(|v| {
                    v["streams"].as_array().is_some_and(|a| {
                        a.iter().any(|s| {
                            s["path"] == "live/tls"
                                && s["serving"].as_array().map(Vec::len) == Some(2)
                        })
                    })
                })
        })
        .await,
        "the class did not go live on both slaves over RTMPS"
    );

    // A student on the edge gets https URLs; ffprobe verifies the edge's certificate and plays.
    let origin_id = teacher["node_id"].as_str().unwrap().to_string();
    let student = json_ok(
        c.post(format!("{master}/api/token"))
            .json(
                &json!({"role": "student", "user_id": "s", "stream": "tls", "exclude": origin_id}),
            )
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_ne!(student["node_id"], teacher["node_id"]);
    let hls = student["hls_url"].as_str().unwrap().to_string();
    assert!(hls.starts_with("https://127.0.0.1:"), "{hls}");
    if let Some(w) = student["whep_url"].as_str() {
        assert!(w.starts_with("https://"), "{w}");
    }
    let probe = Command::new("ffprobe")
        .args(["-v", "error", "-rw_timeout", "15000000", "-tls_verify", "1"])
        .args(["-ca_file", pki.ca_file.to_str().unwrap()])
        .args(["-show_entries", "stream=codec_name", "-of", "json", &hls])
        .output()
        .unwrap();
    let probe: Value = serde_json::from_slice(&probe.stdout).unwrap_or(Value::Null);
    assert_eq!(
        codecs(&probe),
        vec!["h264", "aac"],
        "ffprobe over HTTPS from the edge"
    );

    // The edge's playlist over HTTP/2 (ALPN), and the HTTP/2 stream bound on it.
    let r = c.get(&hls).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    let playlist = r.text().await.unwrap();
    assert_conforms("media playlist over HTTP/2", &playlist);
    let (msn, _) = last_part(&playlist).expect("parts");
    let edge: url::Url = hls.parse().unwrap();
    let held = format!(
        "{}?_HLS_msn={}&_HLS_part=0&{}",
        edge.path(),
        msn + 1,
        edge.query().unwrap()
    );
    let h2 = h2_flood(edge.port().unwrap(), &held, 160).await;
    println!("HTTP/2 flood of 160 held requests: {h2:?}");
    assert_eq!(
        h2.max_streams,
        Some(128),
        "the edge's SETTINGS_MAX_CONCURRENT_STREAMS"
    );
    assert!(
        h2.refused >= 1,
        "streams past the bound were refused: {h2:?}"
    );
    assert!(
        h2.answered >= 100,
        "streams within the bound were answered: {h2:?}"
    );
    assert_eq!(h2.answered + h2.refused, 160, "{h2:?}");

    // Nothing sensitive crossed either wire in clear text: the teacher's password, the
    // cluster secret (every slave's registration and heartbeats), the stream key (the publish
    // token, in the RTMP URL), the student's token.
    let master_wire = wire.captured();
    let publish_wire = rtmp_wire.captured();
    assert!(
        master_wire.len() > 20_000,
        "the master's wire carried {} bytes",
        master_wire.len()
    );
    assert!(
        publish_wire.len() > 100_000,
        "the publish wire carried {} bytes",
        publish_wire.len()
    );
    for (what, secret) in [
        ("teacher password", TEACHER),
        ("cluster secret", SECRET),
        ("stream key", stream_key.as_str()),
        ("student token", student["token"].as_str().unwrap()),
        ("token header", "eyJhbGciOi"),
        ("RTMP command", "publish"),
    ] {
        assert!(
            !contains(&master_wire, secret),
            "the {what} crossed the master's wire in clear text"
        );
        assert!(
            !contains(&publish_wire, secret),
            "the {what} crossed the RTMPS wire in clear text"
        );
    }
}

#[derive(Debug, Default)]
struct H2Flood {
    max_streams: Option<u32>,
    answered: u32,
    refused: u32,
}

/// Opens an HTTP/2 connection (TLS, ALPN h2, any certificate) and sends `n` GETs of `path` at
/// once, without waiting for the server's SETTINGS: a client ignoring the stream bound.
async fn h2_flood(port: u16, path: &str, n: u32) -> H2Flood {
    let mut tls = tls_connect(port, &[b"h2"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // SETTINGS: INITIAL_WINDOW_SIZE 2^31-1, then the connection window opened as far.
    out.extend(frame(0x4, 0, 0, &[0, 4, 0x7f, 0xff, 0xff, 0xff]));
    out.extend(frame(0x8, 0, 0, &0x7fff_0000u32.to_be_bytes()));
    for i in 0..n {
        let mut block = vec![0x82, 0x87]; // :method GET, :scheme https
        block.push(0x04); // :path, literal without indexing
        hpack_str(&mut block, path);
        block.push(0x01); // :authority
        hpack_str(&mut block, "127.0.0.1");
        out.extend(frame(0x1, 0x5, 2 * i + 1, &block)); // END_STREAM | END_HEADERS
    }
    tls.write_all(&out).await.unwrap();
    let mut res = H2Flood::default();
    let deadline = Instant::now() + Duration::from_secs(15);
    while res.answered + res.refused < n && Instant::now() < deadline {
        let mut head = [0u8; 9];
        let read = tokio::time::timeout(Duration::from_secs(5), tls.read_exact(&mut head)).await;
        let Ok(Ok(_)) = read else { break };
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut body = vec![0u8; len];
        tls.read_exact(&mut body).await.unwrap();
        match head[3] {
            0x1 => res.answered += 1,
            0x3 if body == 7u32.to_be_bytes() => res.refused += 1, // REFUSED_STREAM
            0x4 if head[4] & 1 == 0 => {
                for s in body.chunks(6) {
                    if s.len() == 6 && s[..2] == [0, 3] {
                        res.max_streams = Some(u32::from_be_bytes([s[2], s[3], s[4], s[5]]));
                    }
                }
                tls.write_all(&frame(0x4, 1, 0, &[])).await.unwrap();
            }
            0x7 => break, // GOAWAY
            _ => {}
        }
    }
    res
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend(payload);
    f
}

/// An HPACK string literal, not Huffman-coded: a 7-bit-prefix length, then the bytes.
fn hpack_str(out: &mut Vec<u8>, s: &str) {
    let mut n = s.len();
    if n < 127 {
        out.push(n as u8);
    } else {
        out.push(127);
        n -= 127;
        while n >= 128 {
            out.push((n % 128) as u8 | 0x80);
            n /= 128;
        }
        out.push(n as u8);
    }
    out.extend(s.as_bytes());
}

/// Any certificate is accepted: the bound tests care about the server's deadlines, not its name.
#[derive(Debug)]
struct AnyCert;

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

async fn tls_connect(
    port: u16,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(AnyCert))
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let sock = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect("localhost".try_into().unwrap(), sock)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_certificate_is_served_to_the_next_connection_with_no_restart() {
    let test = "tls_reload";
    let pki = Pki::new(&log_dir(test));
    let (cert, key, first) = pki.leaf("node", &["127.0.0.1"]);
    let mut tls = tls_flags(&cert, &key, &pki.ca_file);
    tls.extend(["--tls-reload-ms".to_string(), "100".to_string()]);
    let (mp, ms) = (free_port(), free_port());
    let master = spawn_master(test, mp, ms, &tls, &[]);
    let url = format!("https://127.0.0.1:{ms}/health");
    let kept = pki.client();
    assert!(
        answers_within(&kept, &url, 15).await,
        "the master never answered over HTTPS"
    );
    let r = kept.get(&url).send().await.unwrap();
    assert_eq!(peer_cert(&r), first);

    // The files are rewritten with a new key and certificate: the next connection gets them.
    let (_, _, second) = pki.leaf("node", &["127.0.0.1"]);
    assert_ne!(first, second);
    let t0 = Instant::now();
    assert!(
        wait_until(Duration::from_secs(10), || async {
            pki.client()
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| peer_cert(&r) == second)
        })
        .await,
        "new connections never got the new certificate"
    );
    println!(
        "new certificate served {:?} after the files changed",
        t0.elapsed()
    );
    // The connection opened before goes on, with the certificate it was opened with.
    let r = kept.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        peer_cert(&r),
        first,
        "the kept connection was dropped and reopened"
    );

    // A half-written pair is not installed: the node keeps serving the last good certificate.
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nMIIB").unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || async {
            master
                .log_text()
                .contains("do not load; still serving the previous certificate")
        })
        .await,
        "a broken certificate file was not reported"
    );
    let r = pki.client().get(&url).send().await.unwrap();
    assert_eq!(peer_cert(&r), second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_slowloris_is_closed_at_the_deadline() {
    let test = "tls_slowloris";
    let pki = Pki::new(&log_dir(test));
    let (cert, key, _) = pki.leaf("node", &["127.0.0.1"]);
    let tls = tls_flags(&cert, &key, &pki.ca_file);
    let (mp, ms) = (free_port(), free_port());
    let _master = spawn_master(test, mp, ms, &tls, &["--http-header-timeout-ms", "1000"]);
    let c = pki.client();
    assert!(answers_within(&c, &format!("https://127.0.0.1:{ms}/health"), 15).await);
    // 1. A connection that never starts its handshake, and one that sends half a ClientHello.
    let mut silent = std::net::TcpStream::connect(("127.0.0.1", ms)).unwrap();
    let mut half = std::net::TcpStream::connect(("127.0.0.1", ms)).unwrap();
    std::io::Write::write_all(&mut half, &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).unwrap();
    let t0 = Instant::now();
    for (what, s) in [
        ("a silent connection", &mut silent),
        ("half a ClientHello", &mut half),
    ] {
        assert!(
            closed_by_server(s, Duration::from_secs(5)),
            "{what} was not closed"
        );
        let t = t0.elapsed();
        println!("{what}: closed after {t:?}");
        assert!(
            t >= Duration::from_millis(800),
            "{what} closed before the deadline: {t:?}"
        );
    }
    // 2. A complete handshake, then a request head trickled a byte at a time.
    let mut s = tls_connect(ms, &[b"http/1.1"]).await;
    s.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        .await
        .unwrap();
    let t0 = Instant::now();
    let mut closed = None;
    while t0.elapsed() < Duration::from_secs(5) {
        if s.write_all(b"x").await.is_err() {
            closed = Some(t0.elapsed());
            break;
        }
        let mut b = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(200), s.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = Some(t0.elapsed());
                break;
            }
            Ok(Ok(n)) => {
                // hyper answers 408 before it closes: that counts as closed.
                assert!(
                    String::from_utf8_lossy(&b[..n]).contains("408"),
                    "{}",
                    String::from_utf8_lossy(&b[..n])
                );
            }
            Err(_) => {}
        }
    }
    println!("a trickled header over TLS: closed after {closed:?}");
    let t = closed.expect("a trickled header over TLS was not closed");
    assert!(t < Duration::from_millis(2500), "closed late: {t:?}");
    let m = c
        .get(format!("https://127.0.0.1:{ms}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metric_value(
            &m,
            "classcast_master_http_connections_closed_total{reason=\"tls_handshake_deadline\"}"
        )
        .unwrap_or(0.0)
            >= 2.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_with_a_certificate_serves_https_rtmps_and_prints_https_steps() {
    let test = "tls_up";
    let dir = log_dir(test);
    let pki = Pki::new(&dir);
    let (cert, key, _) = pki.leaf("node", &["127.0.0.1"]);
    let (mp, ms) = (free_port(), free_port());
    let mut cmd = Command::new(BIN);
    cmd.args(["up", "--slaves", "2", "--master-port", &mp.to_string()])
        .args(["--https-port", &ms.to_string()])
        .args(["--rtmp-port-base", "0", "--http-port-base", "0"])
        .args(["--https-port-base", "0", "--rtmps-port-base", "0"])
        .args(["--webrtc-udp-port", "0", "--heartbeat-interval-ms", "300"])
        .args(["--data-dir", dir.join("data").to_str().unwrap()])
        .args(tls_flags(&cert, &key, &pki.ca_file));
    let up = Proc::spawn("up", dir.join("up.log"), &mut cmd);
    let c = pki.client();
    let master = format!("https://127.0.0.1:{ms}");
    assert!(
        wait_until(Duration::from_secs(20), || async {
            get_json(&c, &format!("{master}/cluster/nodes"))
                .await
                .is_some_and(|v| v["healthy_nodes"] == 2)
        })
        .await,
        "up's slaves did not register over HTTPS:\n{}",
        up.log_text()
    );
    let nodes = get_json(&c, &format!("{master}/cluster/nodes"))
        .await
        .unwrap();
    for n in nodes["nodes"].as_array().unwrap() {
        assert!(
            n["public_url"]
                .as_str()
                .unwrap()
                .starts_with("https://127.0.0.1:"),
            "{n}"
        );
        assert!(
            n["rtmp_url"]
                .as_str()
                .unwrap()
                .starts_with("rtmps://127.0.0.1:"),
            "{n}"
        );
    }
    let log = up.log_text();
    for step in [
        format!("master     {master}/"),
        format!("open {master}/teacher"),
        format!("Students: open {master}/?stream=stream"),
    ] {
        assert!(log.contains(&step), "up prints {step:?}:\n{log}");
    }
    assert!(
        !log.contains("http://127.0.0.1"),
        "a step in clear text:\n{log}"
    );
}
