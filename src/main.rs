//! `classcast`: one binary for every role. `master` runs the control plane, `slave` an
//! ingest + LL-HLS edge, `up` a whole local cluster in one process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use common::secret::ClusterSecret;

/// Every request allocates a little (headers, the playlist copy, hyper's buffers) on whichever
/// tokio worker runs it; glibc's allocator spent ~16 % of a slave's CPU under 1,000 viewers,
/// partly waiting on its arena lock. mimalloc's per-thread free lists avoid both.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "classcast",
    version,
    about = "Live classroom streaming: RTMP in, LL-HLS out, across a cluster"
)]
struct Cli {
    /// Role to run when no subcommand is given (`MODE=master|slave`, as in the original design).
    #[arg(long, env = "MODE", global = true, hide = true)]
    mode: Option<String>,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the master: registry, load balancer, token issuer, pages.
    Master(MasterArgs),
    /// Run a slave: RTMP ingest and LL-HLS serving.
    Slave(Box<SlaveArgs>),
    /// Run a whole local cluster (a master and N slaves) on loopback, with generated secrets.
    Up(UpArgs),
    /// Exit 0 if the local node answers /health (for container HEALTHCHECKs).
    Healthcheck(HealthArgs),
}

#[derive(Args, Debug, Clone)]
struct Common {
    /// Shared secret for every call inside the cluster (at least 16 characters).
    #[arg(long, env = "CLUSTER_SECRET", hide_env_values = true)]
    cluster_secret: Option<String>,
    /// Development only: run without a configured secret, using a well-known one. Never in production.
    #[arg(long, env = "INSECURE_DEV", default_value_t = false)]
    insecure_dev: bool,
    /// Heartbeat interval in ms (slaves send, the master expects).
    #[arg(long, env = "HEARTBEAT_INTERVAL_MS", default_value_t = 5000)]
    heartbeat_interval_ms: u64,
    /// HTTP clients must send a complete request head within this time (slowloris guard).
    #[arg(long, env = "HTTP_HEADER_TIMEOUT_MS", default_value_t = 10_000)]
    http_header_timeout_ms: u64,
    /// An HTTP connection with no byte read or written for this long is closed (longer than
    /// the longest blocking playlist reload).
    #[arg(long, env = "HTTP_IDLE_TIMEOUT_MS", default_value_t = 30_000)]
    http_idle_timeout_ms: u64,
    /// Open HTTP connections at most; idle ones are closed first at the cap. 0: three quarters
    /// of the file descriptor limit (raised to the hard limit at start).
    #[arg(long, env = "HTTP_MAX_CONNECTIONS", default_value_t = 0)]
    http_max_connections: usize,
    /// Extra page origins allowed to call the viewer endpoints from a browser (comma-separated,
    /// e.g. a school's LMS that embeds the player: `https://lms.example.org`).
    #[arg(long, env = "CORS_ORIGINS", value_delimiter = ',')]
    cors_origins: Vec<String>,
}

#[derive(Args, Debug, Clone)]
struct MasterArgs {
    #[command(flatten)]
    common: Common,
    /// Address to listen on.
    #[arg(long, env = "MASTER_BIND", default_value = "0.0.0.0:8000")]
    bind: SocketAddr,
    /// Ed25519 signing key (PKCS#8 PEM); generated on first start if missing.
    #[arg(long, env = "JWT_KEY_FILE", default_value = "data/jwt-ed25519.pem")]
    jwt_key_file: PathBuf,
    /// File holding the cluster secret; read if it exists, else created when `--generate-secret` is set.
    #[arg(long, env = "CLUSTER_SECRET_FILE")]
    cluster_secret_file: Option<PathBuf>,
    /// With CLUSTER_SECRET_FILE: generate the secret into that file on first start.
    #[arg(long, env = "GENERATE_SECRET", default_value_t = false)]
    generate_secret: bool,
    /// Teachers log in with this to get a stream key (at least 12 characters). Unset: no
    /// teacher logins.
    #[arg(long, env = "TEACHER_PASSWORD", hide_env_values = true)]
    teacher_password: Option<String>,
    /// The base URL browsers open the pages at (`https://live.school.example`), when it is not
    /// the address slaves reach the master at: slaves allow it as a page origin.
    #[arg(long, env = "PUBLIC_URL")]
    public_url: Option<String>,
    /// CSP `frame-ancestors` of the pages: who may embed them (`'self' https://lms.example.org`).
    #[arg(long, env = "FRAME_ANCESTORS")]
    frame_ancestors: Option<String>,
    /// Viewer tokens one client address may mint per second, sustained (a school behind one
    /// NAT address joins through it all at once: keep it generous).
    #[arg(long, env = "TOKEN_RATE_PER_ADDR", default_value_t = 200.0)]
    token_rate_per_addr: f64,
    /// Tokens one address may mint in a burst before the sustained rate applies.
    #[arg(long, env = "TOKEN_BURST_PER_ADDR", default_value_t = 2000.0)]
    token_burst_per_addr: f64,
    #[command(flatten)]
    tuning: MasterTuning,
}

#[derive(Args, Debug, Clone)]
struct MasterTuning {
    /// Load % from which a node is Warning.
    #[arg(long, env = "WARNING_PCT", default_value_t = 70.0)]
    warning_pct: f64,
    /// Load % from which a node is Critical.
    #[arg(long, env = "CRITICAL_PCT", default_value_t = 90.0)]
    critical_pct: f64,
    /// A node silent this long is Offline.
    #[arg(long, env = "OFFLINE_AFTER_MS", default_value_t = 30_000)]
    offline_after_ms: u64,
    /// An Offline node is forgotten after this much more.
    #[arg(long, env = "DROP_AFTER_MS", default_value_t = 600_000)]
    drop_after_ms: u64,
    /// Viewer token lifetime.
    #[arg(long, env = "TOKEN_TTL_SECS", default_value_t = 3600)]
    token_ttl_secs: u64,
    /// Stream key (publish token) lifetime.
    #[arg(long, env = "PUBLISH_TOKEN_TTL_SECS", default_value_t = 43_200)]
    publish_token_ttl_secs: u64,
}

#[derive(Args, Debug, Clone)]
struct SlaveArgs {
    #[command(flatten)]
    common: Common,
    /// The master's base URL.
    #[arg(long, env = "MASTER_URL", default_value = "http://127.0.0.1:8000")]
    master_url: String,
    #[arg(long, env = "CLUSTER_SECRET_FILE")]
    cluster_secret_file: Option<PathBuf>,
    /// Unique node id; default `<hostname>-<http port>`.
    #[arg(long, env = "NODE_ID")]
    node_id: Option<String>,
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    #[arg(long, env = "RTMP_BIND", default_value = "0.0.0.0:1935")]
    rtmp_bind: SocketAddr,
    #[arg(long, env = "HTTP_BIND", default_value = "0.0.0.0:8888")]
    http_bind: SocketAddr,
    /// Bind the RTMP listener to the first free port of this range (`1935-1944`) instead of
    /// RTMP_BIND's port: how replicas sharing a host network get distinct ports.
    #[arg(long, env = "RTMP_PORT_RANGE")]
    rtmp_port_range: Option<String>,
    /// Same for the HTTP listener (`8888-8897`).
    #[arg(long, env = "HTTP_PORT_RANGE")]
    http_port_range: Option<String>,
    /// Write the HTTP port actually bound to this file, for `classcast healthcheck` (which reads
    /// the same PORT_FILE) when the port comes from a range.
    #[arg(long, env = "PORT_FILE")]
    port_file: Option<PathBuf>,
    /// Base URL browsers reach this slave's HLS at, e.g. `http://10.0.0.5:8888`.
    #[arg(long, env = "PUBLIC_URL")]
    public_url: Option<String>,
    /// Host part of the public URLs when PUBLIC_URL is not given.
    #[arg(long, env = "PUBLIC_HOST")]
    public_host: Option<String>,
    /// Base URL other slaves pull from (default: the public URL).
    #[arg(long, env = "INTERNAL_URL")]
    internal_url: Option<String>,
    /// Host other slaves pull from, with the HTTP port actually bound (when INTERNAL_URL can't
    /// be known in advance because the port comes from a range).
    #[arg(long, env = "INTERNAL_HOST")]
    internal_host: Option<String>,
    /// Viewer sessions this slave is sized for (100 % load).
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 500)]
    max_connections: u32,
    /// Pull every stream from this slave instead of its origin (edge of an edge).
    #[arg(long, env = "UPSTREAM_URL")]
    upstream_url: Option<String>,
    #[command(flatten)]
    media: MediaTuning,
}

#[derive(Args, Debug, Clone)]
struct MediaTuning {
    /// LL-HLS part target.
    #[arg(long, env = "PART_TARGET_MS", default_value_t = 200)]
    part_target_ms: u64,
    /// Segment target (segments start at keyframes, so a longer GOP makes longer segments).
    #[arg(long, env = "SEGMENT_TARGET_MS", default_value_t = 1000)]
    segment_target_ms: u64,
    /// Segments listed in the playlist.
    #[arg(long, env = "PLAYLIST_WINDOW", default_value_t = 7)]
    window: usize,
    /// How long a stream waits for its publisher to come back before it ends.
    #[arg(long, env = "PUBLISH_GRACE_MS", default_value_t = 10_000)]
    grace_ms: u64,
    /// A viewer counts as connected for this long after its last request.
    #[arg(long, env = "VIEWER_WINDOW_MS", default_value_t = 10_000)]
    viewer_window_ms: u64,
    /// RTMP handshake timeout.
    #[arg(long, env = "RTMP_HANDSHAKE_TIMEOUT_MS", default_value_t = 10_000)]
    rtmp_handshake_timeout_ms: u64,
    /// RTMP idle timeout.
    #[arg(long, env = "RTMP_IDLE_TIMEOUT_MS", default_value_t = 30_000)]
    rtmp_idle_timeout_ms: u64,
    /// From accept to an accepted publish: an RTMP connection that has not published by then
    /// is closed, whatever it sends meanwhile.
    #[arg(long, env = "RTMP_PUBLISH_TIMEOUT_MS", default_value_t = 10_000)]
    rtmp_publish_timeout_ms: u64,
    /// Open RTMP connections at most (publishers and connections still on their way to it).
    #[arg(long, env = "RTMP_MAX_CONNECTIONS", default_value_t = 128)]
    rtmp_max_connections: usize,
    /// Blocking playlist and part requests parked at once; past it, 503 with Retry-After.
    #[arg(long, env = "MAX_PARKED_REQUESTS", default_value_t = 8192)]
    max_parked_requests: usize,
}

#[derive(Args, Debug, Clone)]
struct UpArgs {
    /// Number of slaves.
    #[arg(long, env = "SLAVES", default_value_t = 2)]
    slaves: usize,
    /// Host browsers and OBS use to reach this machine.
    #[arg(long, env = "PUBLIC_HOST", default_value = "127.0.0.1")]
    public_host: String,
    /// Address the listeners bind to.
    #[arg(long, env = "BIND_HOST", default_value = "127.0.0.1")]
    bind_host: String,
    #[arg(long, env = "MASTER_PORT", default_value_t = 8000)]
    master_port: u16,
    /// First slave's RTMP port; slave i uses base + i.
    #[arg(long, env = "RTMP_PORT_BASE", default_value_t = 1935)]
    rtmp_port_base: u16,
    /// First slave's HTTP port; slave i uses base + i.
    #[arg(long, env = "HTTP_PORT_BASE", default_value_t = 8888)]
    http_port_base: u16,
    /// Where the generated signing key is kept.
    #[arg(long, env = "DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 500)]
    max_connections: u32,
    #[arg(long, env = "HEARTBEAT_INTERVAL_MS", default_value_t = 5000)]
    heartbeat_interval_ms: u64,
    /// Teacher password; generated when not given.
    #[arg(long, env = "TEACHER_PASSWORD", hide_env_values = true)]
    teacher_password: Option<String>,
    #[command(flatten)]
    tuning: MasterTuning,
    #[command(flatten)]
    media: MediaTuning,
}

#[derive(Args, Debug, Clone)]
struct HealthArgs {
    /// URL to probe; default: the master or slave port on 127.0.0.1 chosen by MODE.
    #[arg(long, env = "HEALTHCHECK_URL")]
    url: Option<String>,
}

const INSECURE_DEV_SECRET: &str = "classcast-insecure-dev-secret-do-not-use";

fn resolve_secret(
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

fn thresholds(t: &MasterTuning) -> master::registry::Thresholds {
    master::registry::Thresholds {
        warning_pct: t.warning_pct,
        critical_pct: t.critical_pct,
        offline_after: Duration::from_millis(t.offline_after_ms),
        drop_after: Duration::from_millis(t.drop_after_ms),
    }
}

fn http_limits(c: &Common) -> common::http::HttpLimits {
    common::http::HttpLimits {
        header_read_timeout: Duration::from_millis(c.http_header_timeout_ms.max(100)),
        idle_timeout: Duration::from_millis(c.http_idle_timeout_ms.max(500)),
        max_connections: c.http_max_connections,
        ..Default::default()
    }
}

/// Origins as browsers send them (`scheme://host[:port]`), refusing anything else by name.
fn origins(list: &[String]) -> anyhow::Result<Vec<String>> {
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

fn master_config(
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

fn hls_config(m: &MediaTuning) -> slave::hls::store::HlsConfig {
    slave::hls::store::HlsConfig {
        part_target: Duration::from_millis(m.part_target_ms.clamp(50, 2000)),
        segment_target: Duration::from_millis(m.segment_target_ms.clamp(200, 20_000)),
        window: m.window.clamp(3, 60),
        grace: Duration::from_millis(m.grace_ms),
        linger: Duration::from_secs(30),
    }
}

fn rtmp_config(m: &MediaTuning) -> slave::RtmpConfig {
    slave::RtmpConfig {
        handshake_timeout: Duration::from_millis(m.rtmp_handshake_timeout_ms),
        idle_timeout: Duration::from_millis(m.rtmp_idle_timeout_ms),
        publish_timeout: Duration::from_millis(m.rtmp_publish_timeout_ms.max(100)),
        max_connections: m.rtmp_max_connections.max(1),
        ..Default::default()
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "slave".into())
}

fn slave_config(
    a: &SlaveArgs,
    secret: ClusterSecret,
    http_port: u16,
    rtmp_port: u16,
) -> anyhow::Result<slave::SlaveConfig> {
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
    let public_url = a
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{host}:{http_port}"));
    let node_id = a
        .node_id
        .clone()
        .unwrap_or_else(|| format!("{}-{http_port}", hostname()));
    Ok(slave::SlaveConfig {
        node_name: a.node_name.clone().unwrap_or_else(|| node_id.clone()),
        node_id,
        master_url: a.master_url.clone(),
        secret,
        internal_url: a
            .internal_url
            .clone()
            .or_else(|| {
                a.internal_host
                    .as_ref()
                    .map(|h| format!("http://{h}:{http_port}"))
            })
            .unwrap_or_else(|| public_url.clone()),
        rtmp_url: format!("rtmp://{host}:{rtmp_port}/live"),
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
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("{what}: cannot listen on {addr}"))
}

fn parse_range(r: &str) -> anyhow::Result<(u16, u16)> {
    let (a, b) = r.split_once('-').unwrap_or((r, r));
    let (a, b): (u16, u16) = (a.trim().parse()?, b.trim().parse()?);
    anyhow::ensure!(a <= b, "port range {r:?} is empty");
    Ok((a, b))
}

/// Binds `addr`, or with a range the first free port of it (on `addr`'s IP).
async fn bind_in_range(
    addr: SocketAddr,
    range: Option<&str>,
    what: &str,
) -> anyhow::Result<tokio::net::TcpListener> {
    let Some(range) = range else {
        return bind(addr, what).await;
    };
    let (lo, hi) = parse_range(range).with_context(|| format!("{what} port range"))?;
    for port in lo..=hi {
        if let Ok(l) = tokio::net::TcpListener::bind(SocketAddr::new(addr.ip(), port)).await {
            return Ok(l);
        }
    }
    anyhow::bail!("{what}: no free port in {lo}-{hi} on {}", addr.ip())
}

/// A teacher password short enough to guess online is refused at start, naming the flag.
const MIN_TEACHER_PASSWORD: usize = 12;

fn check_teacher_password(p: Option<&str>) -> anyhow::Result<()> {
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

async fn run_master(a: MasterArgs) -> anyhow::Result<()> {
    check_teacher_password(a.teacher_password.as_deref())?;
    let secret = resolve_secret(&a.common, a.cluster_secret_file.as_ref(), a.generate_secret)?;
    let mut cfg = master_config(
        a.bind,
        secret,
        a.jwt_key_file.clone(),
        a.teacher_password.clone(),
        a.common.heartbeat_interval_ms,
        &a.tuning,
    );
    cfg.http = http_limits(&a.common);
    cfg.cors_origins = origins(&a.common.cors_origins)?;
    cfg.public_url = match a.public_url.as_deref() {
        Some(u) => Some(common::http::origin_of(u).context("PUBLIC_URL must be an http(s) URL")?),
        None => None,
    };
    if let Some(f) = &a.frame_ancestors {
        cfg.frame_ancestors = f.clone();
    }
    cfg.token_rate = master::ratelimit::Rate {
        per_second: a.token_rate_per_addr,
        burst: a.token_burst_per_addr,
    };
    let listener = bind(a.bind, "master").await?;
    master::serve(cfg, listener, shutdown_signal()).await
}

async fn run_slave(a: SlaveArgs) -> anyhow::Result<()> {
    let secret = resolve_secret(&a.common, a.cluster_secret_file.as_ref(), false)?;
    let rtmp = bind_in_range(a.rtmp_bind, a.rtmp_port_range.as_deref(), "rtmp").await?;
    let http = bind_in_range(a.http_bind, a.http_port_range.as_deref(), "http").await?;
    if let Some(f) = &a.port_file {
        std::fs::write(f, http.local_addr()?.port().to_string())
            .with_context(|| format!("writing {}", f.display()))?;
    }
    let cfg = slave_config(
        &a,
        secret,
        http.local_addr()?.port(),
        rtmp.local_addr()?.port(),
    )?;
    slave::serve(cfg, rtmp, http, shutdown_signal()).await
}

async fn run_up(a: UpArgs) -> anyhow::Result<()> {
    let secret = ClusterSecret::generate();
    let teacher = a
        .teacher_password
        .clone()
        .unwrap_or_else(|| ClusterSecret::generate().expose()[..16].to_string());
    check_teacher_password(Some(&teacher))?;
    let master_bind: SocketAddr = format!("{}:{}", a.bind_host, a.master_port).parse()?;
    let master_listener = bind(master_bind, "master").await?;
    let master_port = master_listener.local_addr()?.port();
    let master_url = format!("http://127.0.0.1:{master_port}");
    let mcfg = master_config(
        master_bind,
        secret.clone(),
        a.data_dir.join("jwt-ed25519.pem"),
        Some(teacher.clone()),
        a.heartbeat_interval_ms,
        &a.tuning,
    );
    let mut mcfg = mcfg;
    mcfg.public_url = common::http::origin_of(&format!("http://{}:{master_port}", a.public_host));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(master::serve(
        mcfg,
        master_listener,
        wait(stop_rx.clone()),
    )));
    let mut slaves = Vec::new();
    for i in 0..a.slaves {
        let port = |base: u16| if base == 0 { 0 } else { base + i as u16 };
        let rtmp = bind(
            format!("{}:{}", a.bind_host, port(a.rtmp_port_base)).parse()?,
            "rtmp",
        )
        .await?;
        let http = bind(
            format!("{}:{}", a.bind_host, port(a.http_port_base)).parse()?,
            "http",
        )
        .await?;
        let (hp, rp) = (http.local_addr()?.port(), rtmp.local_addr()?.port());
        let args = SlaveArgs {
            common: Common {
                cluster_secret: None,
                insecure_dev: false,
                heartbeat_interval_ms: a.heartbeat_interval_ms,
                http_header_timeout_ms: 10_000,
                http_idle_timeout_ms: 30_000,
                http_max_connections: 0,
                cors_origins: Vec::new(),
            },
            master_url: master_url.clone(),
            cluster_secret_file: None,
            node_id: Some(format!("slave-{}", i + 1)),
            node_name: Some(format!("Slave {}", i + 1)),
            rtmp_bind: rtmp.local_addr()?,
            http_bind: http.local_addr()?,
            rtmp_port_range: None,
            http_port_range: None,
            port_file: None,
            public_url: None,
            public_host: Some(a.public_host.clone()),
            internal_url: Some(format!("http://127.0.0.1:{hp}")),
            internal_host: None,
            max_connections: a.max_connections,
            upstream_url: None,
            media: a.media.clone(),
        };
        let cfg = slave_config(&args, secret.clone(), hp, rp)?;
        slaves.push((
            cfg.node_id.clone(),
            cfg.rtmp_url.clone(),
            cfg.public_url.clone(),
        ));
        tasks.push(tokio::spawn(slave::serve(
            cfg,
            rtmp,
            http,
            wait(stop_rx.clone()),
        )));
    }
    let host = &a.public_host;
    println!("\nclasscast is up: a master and {} slave(s).\n", a.slaves);
    println!("  master     http://{host}:{master_port}/   (cluster view: /admin, /cluster/nodes)");
    for (id, rtmp, http) in &slaves {
        println!("  {id:<10} {rtmp}   {http}");
    }
    println!(
        "\nTeacher: open http://{host}:{master_port}/teacher and log in with password {teacher}"
    );
    println!(
        "         (or: curl -s -XPOST http://{host}:{master_port}/api/token -H 'content-type: application/json' \\"
    );
    println!(
        "                -d '{{\"role\":\"teacher\",\"user_id\":\"teacher\",\"credential\":\"{teacher}\"}}')"
    );
    println!(
        "         then put the Server and Stream Key it shows into OBS (Settings → Stream → Custom)."
    );
    println!("Students: open http://{host}:{master_port}/ , type a name, and watch.\n");
    println!("Press Ctrl-C to stop.");
    shutdown_signal().await;
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    Ok(())
}

async fn healthcheck(a: HealthArgs, mode: Option<&str>) -> anyhow::Result<()> {
    let url = a.url.unwrap_or_else(|| match mode {
        Some("slave") => {
            let from_file = std::env::var("PORT_FILE")
                .ok()
                .and_then(|f| std::fs::read_to_string(f).ok())
                .map(|p| p.trim().to_string());
            let port = from_file
                .or_else(|| {
                    std::env::var("HTTP_BIND")
                        .ok()
                        .and_then(|b| b.rsplit(':').next().map(str::to_string))
                })
                .unwrap_or("8888".into());
            format!("http://127.0.0.1:{port}/health")
        }
        _ => {
            let port = std::env::var("MASTER_BIND")
                .ok()
                .and_then(|b| b.rsplit(':').next().map(str::to_string))
                .unwrap_or("8000".into());
            format!("http://127.0.0.1:{port}/health")
        }
    });
    let r = reqwest::Client::new()
        .get(&url)
        .timeout(Duration::from_secs(3))
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "{url} answered {}", r.status());
    println!("ok {url}");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LOG").unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let cmd = match cli.cmd {
        Some(c) => c,
        None => match cli.mode.as_deref() {
            // `MODE=master classcast` parses the role's flags from the environment.
            Some("master") => Cmd::Master(MasterArgs::parse_from_env()),
            Some("slave") => Cmd::Slave(Box::new(SlaveArgs::parse_from_env())),
            Some(m) => anyhow::bail!("MODE must be master or slave, not {m:?}"),
            None => {
                use clap::CommandFactory;
                Cli::command().print_help()?;
                std::process::exit(2);
            }
        },
    };
    rt.block_on(async move {
        match cmd {
            Cmd::Master(a) => run_master(a).await,
            Cmd::Slave(a) => run_slave(*a).await,
            Cmd::Up(a) => run_up(a).await,
            Cmd::Healthcheck(a) => healthcheck(a, cli.mode.as_deref()).await,
        }
    })
}

/// Parses a role's flags from the environment alone (for `MODE=…` without a subcommand).
trait FromEnv: Sized {
    fn parse_from_env() -> Self;
}

impl<T: Args> FromEnv for T {
    fn parse_from_env() -> Self {
        let cmd = T::augment_args(clap::Command::new("classcast").no_binary_name(true));
        let m = cmd.get_matches_from(Vec::<String>::new());
        T::from_arg_matches(&m).unwrap_or_else(|e| e.exit())
    }
}
