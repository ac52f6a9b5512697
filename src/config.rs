//! From flags to each role's configuration: secrets, limits, URLs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use common::secret::ClusterSecret;

use crate::cli::{Common, MasterTuning, MediaTuning, SlaveArgs, TlsArgs};

pub(crate) const INSECURE_DEV_SECRET: &str = "classcast-insecure-dev-secret-do-not-use";

pub(crate) fn resolve_secret(
    c: &Common,
    file: Option<&PathBuf>,
    generate: bool,
) -> anyhow::Result<ClusterSecret> {
    if let Some(s) = &c.cluster_secret {
        return ClusterSecret::new(s.trim());
    }
    if let Some(f) = file {
        match std::fs::read_to_string(f) {
            Ok(s) => {
                return ClusterSecret::new(s.trim()).with_context(|| format!("{}", f.display()));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && generate => {
                let s = ClusterSecret::generate();
                if let Some(d) = f.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(d)?;
                }
                common::secret::write_private(f, s.expose())
                    .with_context(|| format!("writing {}", f.display()))?;
                tracing::info!(file = %f.display(), "generated a cluster secret");
                return Ok(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // A slave may start before the master wrote the shared file: wait for it.
                for _ in 0..600 {
                    std::thread::sleep(Duration::from_millis(100));
                    if let Ok(s) = std::fs::read_to_string(f) {
                        return ClusterSecret::new(s.trim());
                    }
                }
                anyhow::bail!("{} did not appear", f.display());
            }
            Err(e) => return Err(e).with_context(|| format!("{}", f.display())),
        }
    }
    if c.insecure_dev {
        tracing::warn!(
            "!!! INSECURE DEV MODE: using a well-known cluster secret. Anyone can join this cluster. Never use this in production. !!!"
        );
        return ClusterSecret::new(INSECURE_DEV_SECRET);
    }
    anyhow::bail!(
        "no cluster secret: set CLUSTER_SECRET (or CLUSTER_SECRET_FILE), or pass --insecure-dev for a throwaway local run"
    )
}

/// The node's certificate: from files (loaded now, then watched for changes) or from ACME
/// (the stored one now when still good; ordered and renewed in the background), with the
/// HTTP-01 answers the plain port must serve. `None` when TLS is off.
/// A node's certificate store, and the ACME HTTP-01 answers its plain port serves (ACME only).
pub(crate) type NodeCerts = (
    Arc<common::tls::CertStore>,
    Option<Arc<common::acme::Http01>>,
);

pub(crate) fn node_certs(t: &TlsArgs) -> anyhow::Result<Option<NodeCerts>> {
    let store = common::tls::CertStore::new();
    if let (Some(cert), Some(key)) = (&t.tls_cert_file, &t.tls_key_file) {
        common::tls::CertFiles {
            cert: cert.clone(),
            key: key.clone(),
        }
        .load_and_watch(store.clone(), Duration::from_millis(t.tls_reload_ms))?;
        return Ok(Some((store, None)));
    }
    let domains: Vec<String> = t
        .acme_domains
        .iter()
        .map(|d| d.trim().to_string())
        .filter(|d| !d.is_empty())
        .collect();
    if domains.is_empty() {
        return Ok(None);
    }
    let http01 = common::acme::Http01::new();
    let cfg = common::acme::AcmeConfig {
        domains,
        email: t.acme_email.clone(),
        directory_url: t.acme_directory_url.clone(),
        directory_ca: t.acme_ca_file.clone(),
        dir: t.acme_dir.clone(),
        renew_before: Duration::from_secs_f64(t.acme_renew_before_days.max(0.0) * 86_400.0),
        retry: Duration::from_millis(t.acme_retry_ms.max(100)),
    };
    tokio::spawn(common::acme::run(cfg, store.clone(), http01.clone()));
    Ok(Some((store, Some(http01))))
}

/// The CA certificates of TLS_CA_FILE, trusted beside the system's for calls to other nodes.
pub(crate) fn client_ca(t: &TlsArgs) -> anyhow::Result<Vec<reqwest::Certificate>> {
    // An empty TLS_CA_FILE (a compose default) is no file.
    match t.tls_ca_file.as_ref().filter(|f| !f.as_os_str().is_empty()) {
        Some(f) => common::tls::ca_certificates(f),
        None => Ok(Vec::new()),
    }
}

/// With TLS on, a node never sends the cluster secret to another over plain HTTP, except on
/// this machine's loopback.
pub(crate) fn refuse_clear_text(what: &str, urls: &[String]) -> anyhow::Result<()> {
    for u in urls {
        let u = u.trim();
        if let Some(rest) = u.strip_prefix("http://") {
            let host = url_host(u).unwrap_or_default();
            let loopback = host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            anyhow::ensure!(
                loopback,
                "{what} {u:?} is plain HTTP while TLS is on: the cluster secret would cross the network in clear text; use https://{rest}"
            );
        }
    }
    Ok(())
}

pub(crate) fn thresholds(t: &MasterTuning) -> master::registry::Thresholds {
    master::registry::Thresholds {
        warning_pct: t.warning_pct,
        critical_pct: t.critical_pct,
        offline_after: Duration::from_millis(t.offline_after_ms),
        drop_after: Duration::from_millis(t.drop_after_ms),
    }
}

pub(crate) fn http_limits(c: &Common) -> common::http::HttpLimits {
    common::http::HttpLimits {
        header_read_timeout: Duration::from_millis(c.http_header_timeout_ms.max(100)),
        idle_timeout: Duration::from_millis(c.http_idle_timeout_ms.max(500)),
        max_connections: c.http_max_connections,
        ..Default::default()
    }
}

/// Origins as browsers send them (`scheme://host[:port]`), refusing anything else by name.
pub(crate) fn origins(list: &[String]) -> anyhow::Result<Vec<String>> {
    list.iter()
        .map(|o| o.trim())
        .filter(|o| !o.is_empty())
        .map(|o| {
            common::http::origin_of(o).with_context(|| {
                format!("CORS_ORIGINS: {o:?} is not an http(s) origin like https://lms.example.org")
            })
        })
        .collect()
}

pub(crate) fn master_config(
    bind: SocketAddr,
    secret: ClusterSecret,
    key: PathBuf,
    teacher: Option<String>,
    hb_ms: u64,
    t: &MasterTuning,
) -> master::MasterConfig {
    let mut cfg = master::MasterConfig::new(bind, secret, key);
    cfg.teacher_credential = teacher;
    cfg.heartbeat_interval = Duration::from_millis(hb_ms);
    cfg.thresholds = thresholds(t);
    cfg.token_ttl = Duration::from_secs(t.token_ttl_secs);
    cfg.publish_token_ttl = Duration::from_secs(t.publish_token_ttl_secs);
    cfg
}

pub(crate) fn hls_config(m: &MediaTuning) -> slave::hls::store::HlsConfig {
    slave::hls::store::HlsConfig {
        part_target: Duration::from_millis(m.part_target_ms.clamp(50, 2000)),
        segment_target: Duration::from_millis(m.segment_target_ms.clamp(200, 20_000)),
        window: m.window.clamp(3, 60),
        grace: Duration::from_millis(m.grace_ms),
        linger: Duration::from_secs(30),
    }
}

pub(crate) fn rtmp_config(m: &MediaTuning) -> slave::RtmpConfig {
    slave::RtmpConfig {
        handshake_timeout: Duration::from_millis(m.rtmp_handshake_timeout_ms),
        idle_timeout: Duration::from_millis(m.rtmp_idle_timeout_ms),
        publish_timeout: Duration::from_millis(m.rtmp_publish_timeout_ms.max(100)),
        max_connections: m.rtmp_max_connections.max(1),
        ..Default::default()
    }
}

pub(crate) fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "slave".into())
}

/// The ports a slave bound; what it advertises follows them (https over http, rtmps over rtmp).
pub(crate) struct SlavePorts {
    pub(crate) http: u16,
    pub(crate) https: Option<u16>,
    pub(crate) rtmp: Option<u16>,
    pub(crate) rtmps: Option<u16>,
}

pub(crate) fn slave_config(
    a: &SlaveArgs,
    secret: ClusterSecret,
    ports: &SlavePorts,
) -> anyhow::Result<slave::SlaveConfig> {
    let http_port = ports.http;
    let engines = match a.media.webrtc_engines {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let host = match (&a.public_host, a.http_bind.ip()) {
        (Some(h), _) => h.clone(),
        (None, ip) if ip.is_loopback() => ip.to_string(),
        (None, ip) if !ip.is_unspecified() => ip.to_string(),
        (None, _) => {
            let h = hostname();
            if a.public_url.is_none() {
                tracing::warn!(host = %h, "PUBLIC_URL/PUBLIC_HOST not set; advertising the hostname. Set PUBLIC_HOST to an address browsers can reach.");
            }
            h
        }
    };
    let own_url = a.public_url.clone().unwrap_or_else(|| match ports.https {
        Some(p) => format!("https://{host}:{p}"),
        None => format!("http://{host}:{http_port}"),
    });
    // Behind a cache, viewers are sent to the cache; other slaves still pull from us.
    let public_url = match &a.cache_url {
        Some(c) => {
            common::http::origin_of(c).context("CACHE_URL must be an http(s) URL")?;
            c.trim_end_matches('/').to_string()
        }
        None => own_url.clone(),
    };
    let node_id = a
        .node_id
        .clone()
        .unwrap_or_else(|| format!("{}-{http_port}", hostname()));
    anyhow::ensure!(
        a.master_url.iter().any(|u| !u.trim().is_empty()),
        "MASTER_URL (--master-url) names no master"
    );
    let record_node: String = node_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    Ok(slave::SlaveConfig {
        node_name: a.node_name.clone().unwrap_or_else(|| node_id.clone()),
        node_id,
        master_urls: a
            .master_url
            .iter()
            .map(|u| u.trim().to_string())
            .filter(|u| !u.is_empty())
            .collect(),
        secret,
        internal_url: a
            .internal_url
            .clone()
            .or_else(|| {
                a.internal_host.as_ref().map(|h| match ports.https {
                    Some(p) => format!("https://{h}:{p}"),
                    None => format!("http://{h}:{http_port}"),
                })
            })
            .unwrap_or(own_url),
        // Teachers are handed RTMPS when this slave offers it.
        rtmp_url: match (ports.rtmps, ports.rtmp) {
            (Some(p), _) => format!("rtmps://{host}:{p}/live"),
            (None, Some(p)) => format!("rtmp://{host}:{p}/live"),
            (None, None) => anyhow::bail!(
                "neither RTMP nor RTMPS listens: RTMP_PLAIN=false needs TLS_CERT_FILE"
            ),
        },
        public_url,
        max_connections: a.max_connections.max(1),
        heartbeat_interval: Some(Duration::from_millis(
            a.common.heartbeat_interval_ms.max(50),
        )),
        hls: hls_config(&a.media),
        rtmp: rtmp_config(&a.media),
        viewer_window: Duration::from_millis(a.media.viewer_window_ms),
        upstream_url: a.upstream_url.clone(),
        http: http_limits(&a.common),
        cors_origins: origins(&a.common.cors_origins)?,
        max_parked: a.media.max_parked_requests.max(1),
        chat_max_readers: a.media.chat_max_readers,
        drain: Duration::from_millis(a.media.drain_ms),
        behind_cache: a.cache_url.is_some(),
        webrtc: slave::webrtc::WebRtcConfig {
            enabled: a.media.webrtc,
            udp_ports: match a.media.webrtc_udp_port_range.as_deref() {
                Some(r) => crate::parse_range(r).context("WEBRTC_UDP_PORT_RANGE")?,
                None => (a.media.webrtc_udp_port, a.media.webrtc_udp_port),
            },
            host: a
                .media
                .webrtc_host
                .clone()
                .or_else(|| a.public_host.clone())
                .or_else(|| a.public_url.as_deref().and_then(url_host))
                .unwrap_or_else(|| host.clone()),
            max_viewers: a
                .media
                .max_webrtc_viewers
                .unwrap_or(slave::webrtc::VIEWERS_PER_ENGINE * engines as u32),
            engines,
            tcp: a.media.webrtc_tcp,
        },
        client_ca: client_ca(&a.common.tls)?,
        record: slave::recordings::RecordConfig {
            // One folder per node, so that slaves sharing a disk (compose replicas on one
            // volume) never list, serve or expire one another's recordings.
            dir: a.record.record.then(|| a.record_dir.join(&record_node)),
            by_default: a.record.record_by_default,
            max_age: if a.record.record_max_age_days > 0.0 {
                Duration::from_secs_f64(a.record.record_max_age_days * 86_400.0)
            } else {
                Duration::MAX
            },
            max_bytes: a.record.record_max_mb.saturating_mul(1 << 20),
            min_free_bytes: a.record.record_min_free_mb.saturating_mul(1 << 20),
            retention_every: Duration::from_millis(a.record.record_retention_every_ms.max(100)),
        },
    })
}

/// `h` of `scheme://h[:port][/…]` (brackets kept off an IPv6 address).
fn url_host(u: &str) -> Option<String> {
    let rest = u.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => authority.split(':').next()?,
    };
    (!host.is_empty()).then(|| host.to_string())
}

/// A teacher password short enough to guess online is refused at start, naming the flag.
pub(crate) const MIN_TEACHER_PASSWORD: usize = 12;

pub(crate) fn check_teacher_password(p: Option<&str>) -> anyhow::Result<()> {
    if let Some(p) = p
        && p.chars().count() < MIN_TEACHER_PASSWORD
    {
        anyhow::bail!(
            "TEACHER_PASSWORD (--teacher-password) must be at least {MIN_TEACHER_PASSWORD} characters; it is {}",
            p.chars().count()
        );
    }
    Ok(())
}
