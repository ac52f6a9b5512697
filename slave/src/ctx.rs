//! The node's configuration and the context every stage shares. The ground floor: it imports
//! no stage (ingest, mirror, serve, agent), so every stage can import it.

use std::sync::Arc;
use std::time::Duration;

use common::secret::ClusterSecret;
use common::sysstats::SysStats;
use common::token::TokenVerifier;
use media::rtmp::RtmpLimits;
use parking_lot::RwLock;

use crate::hls::store::{HlsConfig, ParkedRequests, StreamEntry, StreamStore};
use crate::master_client::Masters;
use crate::metrics::SlaveMetrics;
use crate::tickets;
use crate::viewers::ViewerTracker;

#[derive(Debug, Clone)]
pub struct RtmpConfig {
    pub limits: RtmpLimits,
    pub handshake_timeout: Duration,
    /// Silence this long closes a publishing connection.
    pub idle_timeout: Duration,
    /// From accept to an accepted publish.
    pub publish_timeout: Duration,
    pub max_connections: usize,
}

impl Default for RtmpConfig {
    fn default() -> Self {
        Self {
            limits: RtmpLimits::default(),
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            publish_timeout: Duration::from_secs(10),
            max_connections: 128,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SlaveConfig {
    pub node_id: String,
    pub node_name: String,
    /// Every master (`MASTER_URL` may list several); the slave reports to each.
    pub master_urls: Vec<String>,
    pub secret: ClusterSecret,
    /// Base URL browsers use for HLS.
    pub public_url: String,
    /// Base URL other slaves use to pull streams.
    pub internal_url: String,
    /// `rtmp://host:port/live`, what teachers paste into OBS.
    pub rtmp_url: String,
    pub max_connections: u32,
    /// Overrides the interval the master asks for (tests).
    pub heartbeat_interval: Option<Duration>,
    pub hls: HlsConfig,
    pub rtmp: RtmpConfig,
    pub viewer_window: Duration,
    /// Edge of an edge: pull every stream from this slave instead of the origin.
    pub upstream_url: Option<String>,
    pub http: common::http::HttpLimits,
    /// Page origins browsers may play from besides the master's (an LMS embedding the player).
    pub cors_origins: Vec<String>,
    /// Blocking requests parked at once.
    pub max_parked: usize,
    /// Class-message readers (open Server-Sent Events responses) at once.
    pub chat_max_readers: usize,
    /// Recording at the origin: where, by default or not, retention.
    pub record: crate::recordings::RecordConfig,
    /// A shared HTTP cache sits in front of this slave (`CACHE_URL`, deploy/nginx): viewers'
    /// playlists list shared media tickets and may be cached.
    pub behind_cache: bool,
    /// On SIGTERM: how long the slave keeps serving (media, and peers) after it stopped taking
    /// viewers, while its players move to other slaves.
    pub drain: Duration,
    pub webrtc: WebRtcConfig,
    /// CA certificates trusted beside the system's for calls to masters and other slaves
    /// (`TLS_CA_FILE`).
    pub client_ca: Vec<reqwest::Certificate>,
}

#[derive(Debug, Clone)]
/// WebRTC playback (`slave/src/webrtc/`).
pub struct WebRtcConfig {
    pub enabled: bool,
    /// One port per engine: `lo`, `lo + 1`, … (`lo == hi`), the first free ones of `lo..=hi`, or
    /// any free ones (`(0, 0)`).
    pub udp_ports: (u16, u16),
    /// The IP (or a name resolving to one) in the host candidate.
    pub host: String,
    pub max_viewers: u32,
    /// Engines (tasks, each with its own UDP port and its share of the sessions): one per core.
    pub engines: usize,
    /// ICE-TCP (a passive TCP candidate on the UDP port's number) for networks that drop UDP.
    pub tcp: bool,
}

impl Default for WebRtcConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            udp_ports: (0, 0),
            host: "127.0.0.1".into(),
            max_viewers: 200,
            engines: 2,
            tcp: true,
        }
    }
}

/// Everything the slave's tasks share.
pub struct SlaveCtx {
    pub cfg: SlaveConfig,
    pub store: StreamStore,
    pub viewers: ViewerTracker,
    pub metrics: SlaveMetrics,
    pub sys: SysStats,
    pub http: reqwest::Client,
    pub tickets: tickets::TicketKey,
    /// The open HTTP connections (bounded).
    pub conns: Arc<common::http::ConnTable>,
    pub parked: ParkedRequests,
    /// Set on shutdown: viewers' playlists get 503, so players move elsewhere.
    pub draining: std::sync::atomic::AtomicBool,
    /// Turns true when the drain starts: RTMP publishers that can reconnect are asked to move.
    pub drain_signal: tokio::sync::watch::Sender<bool>,
    /// Streams the master said are not live, and when it said so: asked again only after
    /// [`MISSING_STREAM_TTL`], however many viewers ask for them meanwhile.
    pub missing: dashmap::DashMap<String, std::time::Instant>,
    /// Why the last publish on a path was refused after it was accepted (a codec or layout the
    /// packager cannot serve), so the teacher's preview says so instead of waiting forever.
    pub publish_refusals: dashmap::DashMap<String, (String, std::time::Instant)>,
    /// Class-message readers now (bounded by `chat_max_readers`).
    pub chat_readers: std::sync::atomic::AtomicUsize,
    /// The masters, for announcements and origin lookups.
    pub masters: Masters,
    /// The recordings on this node's disk.
    pub recordings: crate::recordings::Recordings,
    /// Recorded files fetched from other nodes.
    pub vod_cache: crate::vod_cache::VodCache,
    /// WebRTC sessions now, for the heartbeat (the engine itself lives in `webrtc`).
    pub webrtc_load: Arc<crate::viewers::WebRtcLoad>,
    verifier: RwLock<Option<TokenVerifier>>,
    /// The keys each master publishes (by master URL), whose union the verifier accepts.
    master_keys: RwLock<std::collections::BTreeMap<String, (String, Vec<common::token::Jwk>)>>,
    page_origins: RwLock<std::collections::HashSet<String>>,
    /// Where a stream this node lacks comes from (the edge mirror), set once at start.
    finder: std::sync::OnceLock<Box<dyn StreamFinder>>,
}

/// How long a refused publish's reason is kept, and how many paths at most.
pub const PUBLISH_REFUSAL_TTL: Duration = Duration::from_secs(600);
const MAX_PUBLISH_REFUSALS: usize = 256;

/// How long a slave remembers that a stream is not live anywhere.
pub const MISSING_STREAM_TTL: Duration = Duration::from_secs(1);

impl SlaveCtx {
    pub fn new(cfg: SlaveConfig) -> anyhow::Result<Arc<Self>> {
        let http = common::tls::client(&cfg.client_ca, |b| {
            b.connect_timeout(Duration::from_secs(2))
                .pool_max_idle_per_host(64)
                .tcp_nodelay(true)
        })?;
        Ok(Arc::new(Self {
            tickets: tickets::TicketKey::derive(&cfg.secret, &cfg.node_id),
            viewers: ViewerTracker::new(cfg.viewer_window),
            conns: common::http::ConnTable::for_limits(&cfg.http),
            parked: ParkedRequests::new(cfg.max_parked),
            draining: Default::default(),
            drain_signal: tokio::sync::watch::channel(false).0,
            masters: Masters::new(&cfg.secret, &cfg.node_id, http.clone()),
            recordings: Default::default(),
            vod_cache: crate::vod_cache::VodCache::new(256 << 20),
            webrtc_load: Default::default(),
            finder: std::sync::OnceLock::new(),
            missing: Default::default(),
            publish_refusals: Default::default(),
            chat_readers: Default::default(),
            page_origins: RwLock::new(Self::own_origins(&cfg)),
            cfg,
            store: StreamStore::default(),
            metrics: SlaveMetrics::new(),
            sys: SysStats::default(),
            http,
            verifier: RwLock::new(None),
            master_keys: Default::default(),
        }))
    }

    /// A long response from another slave (`url`, with the cluster secret): an edge's links to
    /// its upstream (frames, class messages). Errs unless it answers with a success.
    pub async fn peer_stream(&self, url: &str) -> anyhow::Result<reqwest::Response> {
        let resp = self
            .http
            .get(url)
            .header("authorization", self.cfg.secret.bearer())
            .timeout(Duration::from_secs(24 * 3600))
            .send()
            .await?;
        anyhow::ensure!(
            resp.status().is_success(),
            "upstream answered {}",
            resp.status()
        );
        Ok(resp)
    }

    /// Remembers why a publish on `path` was refused. The map is bounded: an attacker with a
    /// valid key for many paths fills it only up to [`MAX_PUBLISH_REFUSALS`], oldest out first.
    pub fn remember_publish_refusal(&self, path: &str, why: String) {
        self.publish_refusals
            .retain(|_, (_, at)| at.elapsed() < PUBLISH_REFUSAL_TTL);
        if self.publish_refusals.len() >= MAX_PUBLISH_REFUSALS
            && let Some(oldest) = self
                .publish_refusals
                .iter()
                .min_by_key(|e| e.value().1)
                .map(|e| e.key().clone())
        {
            self.publish_refusals.remove(&oldest);
        }
        self.publish_refusals
            .insert(path.to_string(), (why, std::time::Instant::now()));
    }

    /// Why the last publish on `path` was refused, if that was within [`PUBLISH_REFUSAL_TTL`].
    pub fn publish_refusal(&self, path: &str) -> Option<String> {
        let e = self.publish_refusals.get(path)?;
        (e.1.elapsed() < PUBLISH_REFUSAL_TTL).then(|| e.0.clone())
    }

    /// The master's public key arrives with registration; until then nothing can be verified.
    pub fn verifier(&self) -> Option<TokenVerifier> {
        self.verifier.read().clone()
    }

    pub fn set_verifier(&self, v: TokenVerifier) {
        *self.verifier.write() = Some(v);
    }

    /// Records the keys `master` publishes and accepts the union of every master's keys. During
    /// a key rotation the masters publish the new key and the previous one; a key is refused
    /// once no master publishes it. The verifier (and its cache of verified tokens) is rebuilt
    /// only when the union changes, so a token of a dropped key is not served from the cache.
    pub fn set_master_keys(
        &self,
        master: &str,
        issuer: &str,
        keys: Vec<common::token::Jwk>,
    ) -> anyhow::Result<()> {
        let mut all = self.master_keys.write();
        let before = Self::key_union(&all);
        all.insert(master.to_string(), (issuer.to_string(), keys));
        self.rebuild_verifier(&all, before)
    }

    /// A master that is gone (no longer resolved) stops vouching for its keys.
    pub fn forget_master_keys(&self, master: &str) -> anyhow::Result<()> {
        let mut all = self.master_keys.write();
        let before = Self::key_union(&all);
        if all.remove(master).is_none() || all.is_empty() {
            // The last master's keys stay: tokens keep playing while no master is reachable.
            return Ok(());
        }
        self.rebuild_verifier(&all, before)
    }

    fn key_union(
        all: &std::collections::BTreeMap<String, (String, Vec<common::token::Jwk>)>,
    ) -> Vec<(String, String)> {
        let mut u: Vec<(String, String)> = all
            .values()
            .flat_map(|(_, ks)| ks.iter().map(|k| (k.kid.clone(), k.x.clone())))
            .collect();
        u.sort();
        u.dedup();
        u
    }

    fn rebuild_verifier(
        &self,
        all: &std::collections::BTreeMap<String, (String, Vec<common::token::Jwk>)>,
        before: Vec<(String, String)>,
    ) -> anyhow::Result<()> {
        let after = Self::key_union(all);
        if after == before && self.verifier.read().is_some() {
            return Ok(());
        }
        let Some((issuer, _)) = all.values().next() else {
            return Ok(());
        };
        let mut keys: Vec<common::token::Jwk> = Vec::new();
        for (_, ks) in all.values() {
            for k in ks {
                if !keys.iter().any(|have| have.kid == k.kid && have.x == k.x) {
                    keys.push(k.clone());
                }
            }
        }
        let v = TokenVerifier::from_keys(&keys, issuer)?;
        tracing::info!(
            keys = ?after.iter().map(|(kid, _)| kid.as_str()).collect::<Vec<_>>(),
            "token verification keys"
        );
        self.set_verifier(v);
        Ok(())
    }

    /// The master's origin as we reach it and our configured extras: allowed before the master
    /// tells us its public one.
    fn own_origins(cfg: &SlaveConfig) -> std::collections::HashSet<String> {
        cfg.master_urls
            .iter()
            .filter_map(|u| common::http::origin_of(u))
            .chain(cfg.cors_origins.iter().cloned())
            .collect()
    }

    /// The page origins a master announced at registration, added to those we allow (every
    /// master's pages may play from this slave).
    pub fn add_page_origins(&self, from_master: &[String]) {
        self.page_origins.write().extend(
            from_master
                .iter()
                .filter_map(|o| common::http::origin_of(o)),
        );
    }

    pub fn allows_origin(&self, origin: &str) -> bool {
        self.page_origins.read().contains(origin)
    }

    /// Installs what finds streams this node lacks (once, at start).
    pub fn set_finder(&self, f: impl StreamFinder + 'static) {
        let _ = self.finder.set(Box::new(f));
    }

    /// The stream at `path`: held here, or found (mirrored on demand) if the cluster has it.
    pub async fn find_stream(self: &Arc<Self>, path: &str) -> Option<Arc<StreamEntry>> {
        if let Some(e) = self.store.get(path) {
            return Some(e);
        }
        self.finder.get()?.find(self, path).await
    }
}

/// How serving gets a stream it does not hold, without knowing who provides it: the edge
/// mirror implements it by asking the master where the stream lives and mirroring it.
pub trait StreamFinder: Send + Sync {
    fn find<'a>(
        &'a self,
        ctx: &'a Arc<SlaveCtx>,
        path: &'a str,
    ) -> futures::future::BoxFuture<'a, Option<Arc<StreamEntry>>>;
}
