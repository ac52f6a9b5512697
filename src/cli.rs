//! The command line: every role's flags, each also an environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "classcast",
    version,
    about = "Live classroom streaming: RTMP in, LL-HLS out, across a cluster"
)]
pub(crate) struct Cli {
    /// Role to run when no subcommand is given (`MODE=master|slave`, as in the original design).
    #[arg(long, env = "MODE", global = true, hide = true)]
    pub(crate) mode: Option<String>,
    #[command(subcommand)]
    pub(crate) cmd: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Cmd {
    /// Run the master: registry, load balancer, token issuer, pages.
    Master(Box<MasterArgs>),
    /// Run a slave: RTMP ingest and LL-HLS serving.
    Slave(Box<SlaveArgs>),
    /// Run a whole local cluster (a master and N slaves) on loopback, with generated secrets.
    Up(Box<UpArgs>),
    /// Exit 0 if the local node answers /health (for container HEALTHCHECKs).
    Healthcheck(HealthArgs),
}

#[derive(Args, Debug, Clone)]
pub(crate) struct Common {
    /// Shared secret for every call inside the cluster (at least 16 characters).
    #[arg(long, env = "CLUSTER_SECRET", hide_env_values = true)]
    pub(crate) cluster_secret: Option<String>,
    /// Development only: run without a configured secret, using a well-known one. Never in production.
    #[arg(long, env = "INSECURE_DEV", default_value_t = false)]
    pub(crate) insecure_dev: bool,
    /// Heartbeat interval in ms (slaves send, the master expects).
    #[arg(long, env = "HEARTBEAT_INTERVAL_MS", default_value_t = 5000)]
    pub(crate) heartbeat_interval_ms: u64,
    /// HTTP clients must send a complete request head within this time (slowloris guard).
    #[arg(long, env = "HTTP_HEADER_TIMEOUT_MS", default_value_t = 10_000)]
    pub(crate) http_header_timeout_ms: u64,
    /// An HTTP connection with no byte read or written for this long is closed (longer than
    /// the longest blocking playlist reload).
    #[arg(long, env = "HTTP_IDLE_TIMEOUT_MS", default_value_t = 30_000)]
    pub(crate) http_idle_timeout_ms: u64,
    /// Open HTTP connections at most; idle ones are closed first at the cap. 0: three quarters
    /// of the file descriptor limit (raised to the hard limit at start).
    #[arg(long, env = "HTTP_MAX_CONNECTIONS", default_value_t = 0)]
    pub(crate) http_max_connections: usize,
    /// Extra page origins allowed to call the viewer endpoints from a browser (comma-separated,
    /// e.g. a school's LMS that embeds the player: `https://lms.example.org`).
    #[arg(long, env = "CORS_ORIGINS", value_delimiter = ',')]
    pub(crate) cors_origins: Vec<String>,
    #[command(flatten)]
    pub(crate) tls: TlsArgs,
}

/// TLS (issue 31): with a certificate, the node serves HTTPS (HTTP/2 and HTTP/1.1) on
/// HTTPS_BIND, a slave RTMPS on RTMPS_BIND, and the plain HTTP port only redirects (it still
/// answers /health).
#[derive(Args, Debug, Clone)]
pub(crate) struct TlsArgs {
    /// PEM certificate chain (leaf first). Rewritten files are served to new connections within
    /// TLS_RELOAD_MS, with no restart.
    #[arg(long, env = "TLS_CERT_FILE", requires = "tls_key_file")]
    pub(crate) tls_cert_file: Option<PathBuf>,
    /// PEM private key of TLS_CERT_FILE (keep it 0600).
    #[arg(long, env = "TLS_KEY_FILE", requires = "tls_cert_file")]
    pub(crate) tls_key_file: Option<PathBuf>,
    /// Extra CA certificates (PEM) trusted for calls to other nodes, beside the system's: a
    /// school's own CA.
    #[arg(long, env = "TLS_CA_FILE")]
    pub(crate) tls_ca_file: Option<PathBuf>,
    /// How often the certificate files are checked for a change.
    #[arg(long, env = "TLS_RELOAD_MS", default_value_t = 2000)]
    pub(crate) tls_reload_ms: u64,
    /// Where HTTPS listens when a certificate is configured (default: the plain listener's
    /// address on port 8443 for a master, 8889 for a slave).
    #[arg(long, env = "HTTPS_BIND")]
    pub(crate) https_bind: Option<SocketAddr>,
    /// Obtain and renew the certificate by ACME (HTTP-01 on the plain HTTP port, which must be
    /// reachable as port 80 of these names): comma-separated names or IP addresses.
    #[arg(
        long,
        env = "ACME_DOMAINS",
        value_delimiter = ',',
        conflicts_with = "tls_cert_file"
    )]
    pub(crate) acme_domains: Vec<String>,
    /// Contact address given to the ACME server (expiry warnings).
    #[arg(long, env = "ACME_EMAIL")]
    pub(crate) acme_email: Option<String>,
    #[arg(
        long,
        env = "ACME_DIRECTORY_URL",
        default_value = "https://acme-v02.api.letsencrypt.org/directory"
    )]
    pub(crate) acme_directory_url: String,
    /// CA of the ACME server's own HTTPS, when it is not publicly trusted (a school's step-ca).
    #[arg(long, env = "ACME_CA_FILE")]
    pub(crate) acme_ca_file: Option<PathBuf>,
    /// Where the ACME account key and certificates are kept (0600).
    #[arg(long, env = "ACME_DIR", default_value = "data/acme")]
    pub(crate) acme_dir: PathBuf,
    /// Renew when fewer days than this are left (or a third of the lifetime, if more).
    #[arg(long, env = "ACME_RENEW_BEFORE_DAYS", default_value_t = 30.0)]
    pub(crate) acme_renew_before_days: f64,
    /// Wait after a failed order before trying again (doubling up to an hour).
    #[arg(long, env = "ACME_RETRY_MS", default_value_t = 60_000)]
    pub(crate) acme_retry_ms: u64,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct MasterArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Address to listen on.
    #[arg(long, env = "MASTER_BIND", default_value = "0.0.0.0:8000")]
    pub(crate) bind: SocketAddr,
    /// Ed25519 signing key (PKCS#8 PEM); generated on first start if missing.
    #[arg(long, env = "JWT_KEY_FILE", default_value = "data/jwt-ed25519.pem")]
    pub(crate) jwt_key_file: PathBuf,
    /// Signing keys rotated out (comma-separated PEM files): still published, so the tokens
    /// they signed keep playing until they expire; never used to sign (docs/operations.md, key
    /// rotation).
    #[arg(long, env = "JWT_PREVIOUS_KEY_FILE", value_delimiter = ',')]
    pub(crate) jwt_previous_key_file: Vec<PathBuf>,
    /// File holding the cluster secret; read if it exists, else created when `--generate-secret` is set.
    #[arg(long, env = "CLUSTER_SECRET_FILE")]
    pub(crate) cluster_secret_file: Option<PathBuf>,
    /// With CLUSTER_SECRET_FILE: generate the secret into that file on first start.
    #[arg(long, env = "GENERATE_SECRET", default_value_t = false)]
    pub(crate) generate_secret: bool,
    /// Teachers log in with this to get a stream key (at least 12 characters). Unset: no
    /// teacher logins.
    #[arg(long, env = "TEACHER_PASSWORD", hide_env_values = true)]
    pub(crate) teacher_password: Option<String>,
    /// The base URL browsers open the pages at (`https://live.school.example`), when it is not
    /// the address slaves reach the master at: slaves allow it as a page origin.
    #[arg(long, env = "PUBLIC_URL")]
    pub(crate) public_url: Option<String>,
    /// Every master of this cluster as browsers reach them, comma-separated
    /// (`https://m1.school,https://m2.school`): a student page whose master is down asks another.
    #[arg(long, env = "MASTERS", value_delimiter = ',')]
    pub(crate) masters: Vec<String>,
    /// CSP `frame-ancestors` of the pages: who may embed them (`'self' https://lms.example.org`).
    #[arg(long, env = "FRAME_ANCESTORS")]
    pub(crate) frame_ancestors: Option<String>,
    /// Viewer tokens one client address may mint per second, sustained (a school behind one
    /// NAT address joins through it all at once: keep it generous).
    #[arg(long, env = "TOKEN_RATE_PER_ADDR", default_value_t = 200.0)]
    pub(crate) token_rate_per_addr: f64,
    /// Tokens one address may mint in a burst before the sustained rate applies.
    #[arg(long, env = "TOKEN_BURST_PER_ADDR", default_value_t = 2000.0)]
    pub(crate) token_burst_per_addr: f64,
    #[command(flatten)]
    pub(crate) tuning: MasterTuning,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct MasterTuning {
    /// Load % from which a node is Warning.
    #[arg(long, env = "WARNING_PCT", default_value_t = 70.0)]
    pub(crate) warning_pct: f64,
    /// Load % from which a node is Critical.
    #[arg(long, env = "CRITICAL_PCT", default_value_t = 90.0)]
    pub(crate) critical_pct: f64,
    /// A node silent this long is Offline.
    #[arg(long, env = "OFFLINE_AFTER_MS", default_value_t = 30_000)]
    pub(crate) offline_after_ms: u64,
    /// An Offline node is forgotten after this much more.
    #[arg(long, env = "DROP_AFTER_MS", default_value_t = 600_000)]
    pub(crate) drop_after_ms: u64,
    /// Viewer token lifetime.
    #[arg(long, env = "TOKEN_TTL_SECS", default_value_t = 3600)]
    pub(crate) token_ttl_secs: u64,
    /// Stream key (publish token) lifetime.
    #[arg(long, env = "PUBLISH_TOKEN_TTL_SECS", default_value_t = 43_200)]
    pub(crate) publish_token_ttl_secs: u64,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct SlaveArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// The master's base URL, or several, comma-separated: the slave registers with, heartbeats
    /// to and announces to every one of them (they must share JWT_KEY_FILE's key and the
    /// cluster secret), so any one master keeps students joining.
    #[arg(
        long,
        env = "MASTER_URL",
        default_value = "http://127.0.0.1:8000",
        value_delimiter = ','
    )]
    pub(crate) master_url: Vec<String>,
    #[arg(long, env = "CLUSTER_SECRET_FILE")]
    pub(crate) cluster_secret_file: Option<PathBuf>,
    /// Unique node id; default `<hostname>-<http port>`.
    #[arg(long, env = "NODE_ID")]
    pub(crate) node_id: Option<String>,
    #[arg(long, env = "NODE_NAME")]
    pub(crate) node_name: Option<String>,
    #[arg(long, env = "RTMP_BIND", default_value = "0.0.0.0:1935")]
    pub(crate) rtmp_bind: SocketAddr,
    /// Plain RTMP beside RTMPS; `false` leaves RTMPS the only way to publish.
    #[arg(long, env = "RTMP_PLAIN", default_value_t = true, action = clap::ArgAction::Set)]
    pub(crate) rtmp_plain: bool,
    /// Where RTMPS listens when a certificate is configured (1936 is MediaMTX's and OBS
    /// users' usual RTMPS port).
    #[arg(long, env = "RTMPS_BIND", default_value = "0.0.0.0:1936")]
    pub(crate) rtmps_bind: SocketAddr,
    #[arg(long, env = "HTTP_BIND", default_value = "0.0.0.0:8888")]
    pub(crate) http_bind: SocketAddr,
    /// Bind the RTMP listener to the first free port of this range (`1935-1944`) instead of
    /// RTMP_BIND's port: how replicas sharing a host network get distinct ports.
    #[arg(long, env = "RTMP_PORT_RANGE")]
    pub(crate) rtmp_port_range: Option<String>,
    /// Same for the HTTP listener (`8888-8897`).
    #[arg(long, env = "HTTP_PORT_RANGE")]
    pub(crate) http_port_range: Option<String>,
    /// Same for HTTPS and RTMPS when TLS is on (replicas on one host network).
    #[arg(long, env = "HTTPS_PORT_RANGE")]
    pub(crate) https_port_range: Option<String>,
    #[arg(long, env = "RTMPS_PORT_RANGE")]
    pub(crate) rtmps_port_range: Option<String>,
    /// Write the HTTP port actually bound to this file, for `classcast healthcheck` (which reads
    /// the same PORT_FILE) when the port comes from a range.
    #[arg(long, env = "PORT_FILE")]
    pub(crate) port_file: Option<PathBuf>,
    /// Base URL browsers reach this slave's HLS at, e.g. `http://10.0.0.5:8888`.
    #[arg(long, env = "PUBLIC_URL")]
    pub(crate) public_url: Option<String>,
    /// Host part of the public URLs when PUBLIC_URL is not given.
    #[arg(long, env = "PUBLIC_HOST")]
    pub(crate) public_host: Option<String>,
    /// Where this slave records the classes published to it (one folder per node, then one per
    /// class).
    #[arg(long, env = "RECORD_DIR", default_value = "data/recordings")]
    pub(crate) record_dir: PathBuf,
    #[command(flatten)]
    pub(crate) record: RecordTuning,
    /// Base URL of an HTTP cache in front of this slave (deploy/nginx/classcast-cache.conf):
    /// the master hands it to viewers instead of PUBLIC_URL, and playlists list media URIs
    /// that are the same for every viewer for a minute, so the cache fetches each part once.
    #[arg(long, env = "CACHE_URL")]
    pub(crate) cache_url: Option<String>,
    /// Base URL other slaves pull from (default: the public URL).
    #[arg(long, env = "INTERNAL_URL")]
    pub(crate) internal_url: Option<String>,
    /// Host other slaves pull from, with the HTTP port actually bound (when INTERNAL_URL can't
    /// be known in advance because the port comes from a range).
    #[arg(long, env = "INTERNAL_HOST")]
    pub(crate) internal_host: Option<String>,
    /// Viewer sessions this slave is sized for (100 % load).
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 500)]
    pub(crate) max_connections: u32,
    /// Pull every stream from this slave instead of its origin (edge of an edge).
    #[arg(long, env = "UPSTREAM_URL")]
    pub(crate) upstream_url: Option<String>,
    #[command(flatten)]
    pub(crate) media: MediaTuning,
}

/// Recording at the origin (every slave records what is published to it).
#[derive(Args, Debug, Clone)]
pub(crate) struct RecordTuning {
    /// false: this slave never records (whatever the teacher chooses).
    #[arg(long, env = "RECORD", default_value_t = true, action = clap::ArgAction::Set)]
    pub(crate) record: bool,
    /// Record a class unless its teacher switched recording off (the teacher page's switch).
    #[arg(long, env = "RECORD_BY_DEFAULT", default_value_t = true, action = clap::ArgAction::Set)]
    pub(crate) record_by_default: bool,
    /// Finished recordings older than this many days are deleted (0: never by age).
    #[arg(long, env = "RECORD_MAX_AGE_DAYS", default_value_t = 30.0)]
    pub(crate) record_max_age_days: f64,
    /// Finished recordings are deleted, oldest first, while they take more than this many
    /// MiB in all (0: no limit).
    #[arg(long, env = "RECORD_MAX_MB", default_value_t = 0)]
    pub(crate) record_max_mb: u64,
    /// A recording stops (the class carries on) when the disk has less free space than this.
    #[arg(long, env = "RECORD_MIN_FREE_MB", default_value_t = 1024)]
    pub(crate) record_min_free_mb: u64,
    /// How often retention runs (also at start).
    #[arg(long, env = "RECORD_RETENTION_EVERY_MS", default_value_t = 60_000)]
    pub(crate) record_retention_every_ms: u64,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct MediaTuning {
    /// LL-HLS part target.
    #[arg(long, env = "PART_TARGET_MS", default_value_t = 200)]
    pub(crate) part_target_ms: u64,
    /// Segment target (segments start at keyframes, so a longer GOP makes longer segments).
    #[arg(long, env = "SEGMENT_TARGET_MS", default_value_t = 1000)]
    pub(crate) segment_target_ms: u64,
    /// Segments listed in the playlist (at least 3; each one listed costs two held in memory,
    /// as RFC 8216 keeps a segment for a playlist's length after it leaves).
    #[arg(long, env = "PLAYLIST_WINDOW", default_value_t = 4)]
    pub(crate) window: usize,
    /// How long a stream waits for its publisher to come back before it ends.
    #[arg(long, env = "PUBLISH_GRACE_MS", default_value_t = 10_000)]
    pub(crate) grace_ms: u64,
    /// A viewer counts as connected for this long after its last request.
    #[arg(long, env = "VIEWER_WINDOW_MS", default_value_t = 10_000)]
    pub(crate) viewer_window_ms: u64,
    /// RTMP handshake timeout.
    #[arg(long, env = "RTMP_HANDSHAKE_TIMEOUT_MS", default_value_t = 10_000)]
    pub(crate) rtmp_handshake_timeout_ms: u64,
    /// RTMP idle timeout.
    #[arg(long, env = "RTMP_IDLE_TIMEOUT_MS", default_value_t = 30_000)]
    pub(crate) rtmp_idle_timeout_ms: u64,
    /// From accept to an accepted publish: an RTMP connection that has not published by then
    /// is closed, whatever it sends meanwhile.
    #[arg(long, env = "RTMP_PUBLISH_TIMEOUT_MS", default_value_t = 10_000)]
    pub(crate) rtmp_publish_timeout_ms: u64,
    /// Open RTMP connections at most (publishers and connections still on their way to it).
    #[arg(long, env = "RTMP_MAX_CONNECTIONS", default_value_t = 128)]
    pub(crate) rtmp_max_connections: usize,
    /// On SIGTERM the slave leaves the masters at once and answers viewers' playlists with 503
    /// (players move to another slave) for this long before it exits.
    #[arg(long, env = "DRAIN_MS", default_value_t = 3000)]
    pub(crate) drain_ms: u64,
    /// Readers of class messages (Q&A) at once, each an open Server-Sent Events response; past
    /// it, 503 with Retry-After.
    #[arg(long, env = "CHAT_MAX_READERS", default_value_t = 2000)]
    pub(crate) chat_max_readers: usize,
    /// Blocking playlist and part requests parked at once; past it, 503 with Retry-After.
    #[arg(long, env = "MAX_PARKED_REQUESTS", default_value_t = 8192)]
    pub(crate) max_parked_requests: usize,
    /// Offer WebRTC playback (WHEP at /whep/live/<name>) beside LL-HLS.
    #[arg(long, env = "WEBRTC", default_value_t = true, action = clap::ArgAction::Set)]
    pub(crate) webrtc: bool,
    /// The first UDP port of this slave's WebRTC engines (ICE-lite host candidates); engine k
    /// takes this port + k; 0 takes free ports. `up` gives slave i this port + i × engines.
    #[arg(long, env = "WEBRTC_UDP_PORT", default_value_t = 8189)]
    pub(crate) webrtc_udp_port: u16,
    /// Also accept WebRTC over TCP (ICE-TCP, RFC 6544) on the same port number, for viewers
    /// whose network drops UDP: open TCP WEBRTC_UDP_PORT in the firewall too.
    #[arg(long, env = "WEBRTC_TCP", default_value_t = true, action = clap::ArgAction::Set)]
    pub(crate) webrtc_tcp: bool,
    /// Bind the first free UDP ports of this range (`8189-8218`), one per engine, instead: how
    /// replicas sharing a host network get distinct ports.
    #[arg(long, env = "WEBRTC_UDP_PORT_RANGE")]
    pub(crate) webrtc_udp_port_range: Option<String>,
    /// The address browsers send WebRTC media to (an IP). Default: PUBLIC_HOST or the public
    /// URL's host, resolved.
    #[arg(long, env = "WEBRTC_HOST")]
    pub(crate) webrtc_host: Option<String>,
    /// WebRTC viewers this slave takes at once; past it WHEP answers 503 and the master sends
    /// viewers to a slave with room, or offers LL-HLS. Default: 100 per engine (per core), what
    /// one core feeds with room left for ingest, the transcoder and signalling on a slower
    /// school PC (docs/benchmarks.md section 11 measures the cost per viewer).
    #[arg(long, env = "MAX_WEBRTC_VIEWERS")]
    pub(crate) max_webrtc_viewers: Option<u32>,
    /// WebRTC engines: tasks that each send their share of the sessions' media from their own
    /// UDP port (WEBRTC_UDP_PORT, +1, …). 0: one per core.
    #[arg(long, env = "WEBRTC_ENGINES", default_value_t = 0)]
    pub(crate) webrtc_engines: usize,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct UpArgs {
    /// Number of slaves.
    #[arg(long, env = "SLAVES", default_value_t = 2)]
    pub(crate) slaves: usize,
    /// Host browsers and OBS use to reach this machine.
    #[arg(long, env = "PUBLIC_HOST", default_value = "127.0.0.1")]
    pub(crate) public_host: String,
    /// Address the listeners bind to.
    #[arg(long, env = "BIND_HOST", default_value = "127.0.0.1")]
    pub(crate) bind_host: String,
    /// The one-PC classroom: bind every interface, advertise this machine's LAN address to
    /// students (printed with a QR code, also shown on the teacher page), keep OBS on loopback.
    #[arg(long, env = "LAN", default_value_t = false)]
    pub(crate) lan: bool,
    #[arg(long, env = "MASTER_PORT", default_value_t = 8000)]
    pub(crate) master_port: u16,
    /// First slave's RTMP port; slave i uses base + i.
    #[arg(long, env = "RTMP_PORT_BASE", default_value_t = 1935)]
    pub(crate) rtmp_port_base: u16,
    /// First slave's HTTP port; slave i uses base + i.
    #[arg(long, env = "HTTP_PORT_BASE", default_value_t = 8888)]
    pub(crate) http_port_base: u16,
    /// Where the generated signing key is kept.
    #[arg(long, env = "DATA_DIR", default_value = "data")]
    pub(crate) data_dir: PathBuf,
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 500)]
    pub(crate) max_connections: u32,
    #[arg(long, env = "HEARTBEAT_INTERVAL_MS", default_value_t = 5000)]
    pub(crate) heartbeat_interval_ms: u64,
    /// Teacher password; generated when not given.
    #[arg(long, env = "TEACHER_PASSWORD", hide_env_values = true)]
    pub(crate) teacher_password: Option<String>,
    #[command(flatten)]
    pub(crate) tuning: MasterTuning,
    #[command(flatten)]
    pub(crate) media: MediaTuning,
    /// Slaves record under DATA_DIR/recordings/<slave>.
    #[command(flatten)]
    pub(crate) record: RecordTuning,
    /// TLS for the whole cluster with a certificate for PUBLIC_HOST: the master on HTTPS_PORT,
    /// slave i on HTTPS_PORT_BASE + i and RTMPS_PORT_BASE + i (the plain ports then redirect).
    #[arg(long, env = "TLS_CERT_FILE", requires = "tls_key_file")]
    pub(crate) tls_cert_file: Option<PathBuf>,
    #[arg(long, env = "TLS_KEY_FILE", requires = "tls_cert_file")]
    pub(crate) tls_key_file: Option<PathBuf>,
    /// The CA of that certificate, when it is not publicly trusted (the nodes verify one another).
    #[arg(long, env = "TLS_CA_FILE")]
    pub(crate) tls_ca_file: Option<PathBuf>,
    #[arg(long, env = "HTTPS_PORT", default_value_t = 8443)]
    pub(crate) https_port: u16,
    #[arg(long, env = "HTTPS_PORT_BASE", default_value_t = 9443)]
    pub(crate) https_port_base: u16,
    #[arg(long, env = "RTMPS_PORT_BASE", default_value_t = 4936)]
    pub(crate) rtmps_port_base: u16,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct HealthArgs {
    /// URL to probe; default: the master or slave port on 127.0.0.1 chosen by MODE.
    #[arg(long, env = "HEALTHCHECK_URL")]
    pub(crate) url: Option<String>,
}
