//! The master's configuration and the state every handler shares.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::api::MirrorOrder;
use common::secret::ClusterSecret;
use common::token::SigningKey;

use crate::issuer::TokenIssuer;
use crate::metrics::MasterMetrics;
use crate::ratelimit;
use crate::registry::{Registry, Thresholds, Transition};

#[derive(Debug, Clone)]
pub struct MasterConfig {
    pub bind: SocketAddr,
    pub secret: ClusterSecret,
    pub key_path: PathBuf,
    /// Keys rotated out: published for verification, never used to sign.
    pub previous_key_paths: Vec<PathBuf>,
    pub issuer: String,
    /// Teachers log in with this; `None` disables the teacher role.
    pub teacher_credential: Option<String>,
    pub heartbeat_interval: Duration,
    pub thresholds: Thresholds,
    pub token_ttl: Duration,
    pub publish_token_ttl: Duration,
    pub max_nodes: usize,
    pub http: common::http::HttpLimits,
    /// Origin browsers open the pages at, when it differs from the one slaves reach us at.
    pub public_url: Option<String>,
    /// Extra page origins allowed to mint viewer tokens and play from a browser (an LMS).
    pub cors_origins: Vec<String>,
    /// Every master of the cluster, as browsers reach them (origins): the pages fall back to
    /// another one when theirs is down, and each allows the others' pages to mint tokens.
    pub masters: Vec<String>,
    /// CSP `frame-ancestors` of the pages.
    pub frame_ancestors: String,
    /// Viewer tokens per client address.
    pub token_rate: ratelimit::Rate,
    /// Failed teacher logins an address gets before it is throttled.
    pub login_free_failures: u32,
    /// CA certificates trusted beside the system's for calls to slaves (`TLS_CA_FILE`).
    pub client_ca: Vec<reqwest::Certificate>,
}

impl MasterConfig {
    pub fn new(bind: SocketAddr, secret: ClusterSecret, key_path: PathBuf) -> Self {
        Self {
            bind,
            secret,
            key_path,
            previous_key_paths: Vec::new(),
            issuer: "classcast".into(),
            teacher_credential: None,
            heartbeat_interval: Duration::from_secs(5),
            thresholds: Thresholds::default(),
            token_ttl: Duration::from_secs(3600),
            publish_token_ttl: Duration::from_secs(12 * 3600),
            max_nodes: 1024,
            http: Default::default(),
            public_url: None,
            cors_origins: Vec::new(),
            masters: Vec::new(),
            frame_ancestors: "'self'".into(),
            token_rate: Default::default(),
            login_free_failures: 5,
            client_ca: Vec::new(),
        }
    }
}

/// Everything a handler needs, cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub cfg: MasterConfig,
    pub registry: Registry,
    pub issuer: TokenIssuer,
    pub metrics: MasterMetrics,
    pub http: reqwest::Client,
    /// The open HTTP connections (bounded).
    pub conns: Arc<common::http::ConnTable>,
    pub token_limiter: ratelimit::AddrRateLimiter,
    pub login_throttle: ratelimit::LoginThrottle,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub fn new(cfg: MasterConfig) -> anyhow::Result<Self> {
        let key = SigningKey::load_or_generate(&cfg.key_path)?;
        // A previous key that is not there is skipped (on Kubernetes it is an optional item of
        // the key Secret, present only during a rotation); one that is there must load.
        let mut previous = Vec::new();
        for p in &cfg.previous_key_paths {
            if p.exists() {
                previous.push(SigningKey::load(p)?);
            } else {
                tracing::warn!(path = %p.display(), "no previous signing key there; publishing only the current one");
            }
        }
        let issuer = TokenIssuer::new(
            key,
            cfg.issuer.clone(),
            cfg.token_ttl,
            cfg.publish_token_ttl,
        )
        .with_previous(previous);
        let http = common::tls::client(&cfg.client_ca, |b| {
            b.timeout(Duration::from_secs(3))
                .connect_timeout(Duration::from_secs(2))
        })?;
        Ok(Self(Arc::new(Inner {
            token_limiter: ratelimit::AddrRateLimiter::new(cfg.token_rate),
            login_throttle: ratelimit::LoginThrottle::new(
                cfg.login_free_failures.max(1),
                Duration::from_secs(300),
            ),
            registry: Registry::new(cfg.thresholds.clone(), cfg.max_nodes),
            issuer,
            metrics: MasterMetrics::new(),
            http,
            conns: common::http::ConnTable::for_limits(&cfg.http),
            cfg,
        })))
    }

    pub fn count_transition(&self, t: &Transition) {
        let to = t.to.map(|s| s.as_str()).unwrap_or("removed");
        self.metrics
            .status_transitions
            .with_label_values(&[to])
            .inc();
    }

    pub fn log_transition(&self, t: &Transition) {
        let from = t.from.map(|s| s.as_str()).unwrap_or("new");
        let to = t.to.map(|s| s.as_str()).unwrap_or("removed");
        tracing::info!(node_id = %t.node_id, from, to, "node status changed");
        self.count_transition(t);
    }

    /// Tells every other slave about a stream start or end, in the background. A slave that
    /// accepts starts mirroring at once, so routing may count it as serving the stream.
    pub fn fan_out_order(&self, order: MirrorOrder) {
        for (node_id, url) in self.registry.peers(&order.origin_node_id) {
            let st = self.clone();
            let order = order.clone();
            tokio::spawn(async move {
                let res = st
                    .http
                    .post(format!("{}/internal/mirror", url.trim_end_matches('/')))
                    .header("authorization", st.cfg.secret.bearer())
                    .json(&order)
                    .send()
                    .await;
                match res {
                    Ok(r) if r.status().is_success() => {
                        if order.live {
                            st.registry.mark_mirroring(&node_id, &order.path);
                        }
                    }
                    Ok(r) => {
                        tracing::warn!(%node_id, status = %r.status(), path = %order.path, "mirror order refused")
                    }
                    Err(e) => {
                        tracing::warn!(%node_id, error = %e, path = %order.path, "mirror order failed")
                    }
                }
            });
        }
    }

    /// The page origins slaves allow browsers to play from: ours and the configured extras.
    pub fn page_origins(&self) -> Vec<String> {
        self.cfg
            .public_url
            .iter()
            .chain(&self.cfg.cors_origins)
            .chain(&self.cfg.masters)
            .cloned()
            .collect()
    }
}
