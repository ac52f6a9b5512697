//! The master's view of the cluster. Soft state only: every entry is rebuilt from registrations
//! and heartbeats, so a restarted master converges within one heartbeat interval.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::api::{
    ClusterNodes, ClusterStreams, NodeStats, NodeStatus, NodeView, RegisterRequest, StreamReport,
    StreamView,
};
use parking_lot::Mutex;

#[derive(Debug, Clone)]
pub struct Thresholds {
    pub warning_pct: f64,
    pub critical_pct: f64,
    pub offline_after: Duration,
    pub drop_after: Duration,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            warning_pct: 70.0,
            critical_pct: 90.0,
            offline_after: Duration::from_secs(30),
            drop_after: Duration::from_secs(600),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Node {
    pub info: RegisterRequest,
    pub stats: NodeStats,
    pub last_heartbeat: Instant,
    pub last_heartbeat_unix: f64,
    /// Tokens issued since the last heartbeat: viewers that are on their way but not yet in the
    /// slave's own count. Without this a burst of joins would all land on one node.
    pub pending: u32,
    pub status: NodeStatus,
    /// Streams this node was ordered to mirror: it serves them within a part or so, before its
    /// next heartbeat says so.
    pub mirroring: std::collections::BTreeSet<String>,
}

impl Node {
    /// Load the status is judged on: what the slave reported.
    pub fn load_pct(&self) -> f64 {
        pct(self.stats.connections, self.info.max_connections)
    }
    /// Load the balancer ranks on: reported plus promised.
    /// WebRTC offered, and its sessions plus the viewers sent here since the last heartbeat fill
    /// its capacity.
    fn webrtc_full_with_pending(&self) -> bool {
        self.stats
            .webrtc
            .is_some_and(|w| w.sessions.saturating_add(self.pending) >= w.capacity)
    }

    pub fn effective_load_pct(&self) -> f64 {
        pct(
            self.stats.connections.saturating_add(self.pending),
            self.info.max_connections,
        )
    }
    fn serves(&self, path: &str) -> bool {
        self.mirroring.contains(path) || self.stats.streams.iter().any(|s| s.path == path)
    }
    fn is_origin_of(&self, path: &str) -> bool {
        self.stats
            .streams
            .iter()
            .any(|s| s.origin && s.path == path)
    }
}

fn pct(n: u32, max: u32) -> f64 {
    if max == 0 {
        100.0
    } else {
        n as f64 * 100.0 / max as f64
    }
}

/// A status change, returned so that the caller logs and counts it outside the lock.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub node_id: String,
    pub from: Option<NodeStatus>,
    pub to: Option<NodeStatus>,
}

#[derive(Debug, PartialEq)]
pub enum HeartbeatOutcome {
    Accepted(NodeStatus, Option<Transition>),
    UnknownNode,
}

/// Which nodes may take a new viewer of a stream.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StreamFilter<'a> {
    /// Any node (the stream does not matter, e.g. a monitor).
    Any,
    /// Only nodes that serve `path` now.
    Serving(&'a str),
}

#[derive(Debug, Clone)]
pub struct Selected {
    pub node_id: String,
    pub node_name: String,
    pub public_url: String,
    pub rtmp_url: String,
    pub load_percentage: f64,
    pub status: NodeStatus,
    /// WebRTC offered by this node, and whether it has a session to spare.
    pub webrtc: Option<bool>,
}

impl Selected {
    fn of(n: &Node) -> Self {
        Selected {
            node_id: n.info.node_id.clone(),
            node_name: n.info.node_name.clone(),
            public_url: n.info.public_url.clone(),
            rtmp_url: n.info.rtmp_url.clone(),
            load_percentage: n.effective_load_pct(),
            status: n.status,
            webrtc: n.stats.webrtc.map(|w| w.sessions < w.capacity),
        }
    }
}

pub struct Registry {
    nodes: Mutex<BTreeMap<String, Node>>,
    pub thresholds: Thresholds,
    pub max_nodes: usize,
}

impl Registry {
    pub fn new(thresholds: Thresholds, max_nodes: usize) -> Self {
        Self {
            nodes: Mutex::new(BTreeMap::new()),
            thresholds,
            max_nodes,
        }
    }

    fn status_for(&self, load: f64) -> NodeStatus {
        if load >= self.thresholds.critical_pct {
            NodeStatus::Critical
        } else if load >= self.thresholds.warning_pct {
            NodeStatus::Warning
        } else {
            NodeStatus::Healthy
        }
    }

    /// Idempotent: registering again refreshes the node's details and keeps its stats.
    pub fn register(&self, info: RegisterRequest) -> Result<Option<Transition>, RegistryFull> {
        let mut nodes = self.nodes.lock();
        let now = Instant::now();
        if let Some(node) = nodes.get_mut(&info.node_id) {
            node.info = info;
            node.last_heartbeat = now;
            node.last_heartbeat_unix = unix_f64();
            let from = node.status;
            node.status = self.status_for(node.load_pct());
            return Ok((from != node.status).then(|| Transition {
                node_id: node.info.node_id.clone(),
                from: Some(from),
                to: Some(node.status),
            }));
        }
        if nodes.len() >= self.max_nodes {
            return Err(RegistryFull(self.max_nodes));
        }
        let id = info.node_id.clone();
        nodes.insert(
            id.clone(),
            Node {
                info,
                stats: NodeStats::default(),
                last_heartbeat: now,
                last_heartbeat_unix: unix_f64(),
                pending: 0,
                status: NodeStatus::Healthy,
                mirroring: Default::default(),
            },
        );
        Ok(Some(Transition {
            node_id: id,
            from: None,
            to: Some(NodeStatus::Healthy),
        }))
    }

    pub fn heartbeat(&self, node_id: &str, stats: NodeStats) -> HeartbeatOutcome {
        let mut nodes = self.nodes.lock();
        let Some(node) = nodes.get_mut(node_id) else {
            return HeartbeatOutcome::UnknownNode;
        };
        node.stats = stats;
        node.pending = 0;
        node.last_heartbeat = Instant::now();
        node.last_heartbeat_unix = unix_f64();
        let from = node.status;
        node.status = self.status_for(node.load_pct());
        let t = (from != node.status).then(|| Transition {
            node_id: node_id.to_string(),
            from: Some(from),
            to: Some(node.status),
        });
        HeartbeatOutcome::Accepted(node.status, t)
    }

    pub fn unregister(&self, node_id: &str) -> Option<Transition> {
        let mut nodes = self.nodes.lock();
        nodes.remove(node_id).map(|n| Transition {
            node_id: node_id.to_string(),
            from: Some(n.status),
            to: None,
        })
    }

    /// Applies an origin's stream start/end at once, ahead of its next heartbeat.
    pub fn announce(&self, node_id: &str, path: &str, live: bool) -> bool {
        let mut nodes = self.nodes.lock();
        if !nodes.contains_key(node_id) {
            return false;
        }
        if !live {
            for n in nodes.values_mut() {
                n.mirroring.remove(path);
                n.stats.streams.retain(|s| s.path != path || s.origin);
            }
        }
        let Some(node) = nodes.get_mut(node_id) else {
            return false;
        };
        node.stats.streams.retain(|s| s.path != path);
        if live {
            node.stats.streams.push(StreamReport {
                path: path.to_string(),
                origin: true,
                upstream: None,
                bframes: false,
                hls_only_codec: false,
                publisher: String::new(),
            });
        }
        true
    }

    /// Marks silent nodes Offline and forgets long-silent ones.
    pub fn sweep(&self, now: Instant) -> Vec<Transition> {
        let mut nodes = self.nodes.lock();
        let mut out = Vec::new();
        let th = &self.thresholds;
        nodes.retain(|id, node| {
            let age = now.saturating_duration_since(node.last_heartbeat);
            if age >= th.offline_after + th.drop_after {
                out.push(Transition {
                    node_id: id.clone(),
                    from: Some(node.status),
                    to: None,
                });
                return false;
            }
            if age >= th.offline_after && node.status != NodeStatus::Offline {
                out.push(Transition {
                    node_id: id.clone(),
                    from: Some(node.status),
                    to: Some(NodeStatus::Offline),
                });
                node.status = NodeStatus::Offline;
                // An offline node serves nothing; routing must not count on its streams.
                node.stats.streams.clear();
                node.mirroring.clear();
                node.stats.connections = 0;
            }
            true
        });
        out
    }

    /// Picks the least-loaded node and counts the new viewer against it, atomically, so that
    /// concurrent requests spread instead of piling onto the same node.
    ///
    /// Healthy and Warning nodes compete on load; Critical nodes only when no other is left;
    /// Offline never. `exclude` is skipped unless it is the only candidate left.
    pub fn select(
        &self,
        filter: StreamFilter<'_>,
        exclude: Option<&str>,
        reserve: bool,
    ) -> Option<Selected> {
        let mut nodes = self.nodes.lock();
        let best = |skip_excluded: bool, allow_critical: bool| {
            nodes
                .values()
                .filter(|n| match n.status {
                    NodeStatus::Healthy | NodeStatus::Warning => true,
                    NodeStatus::Critical => allow_critical,
                    NodeStatus::Offline => false,
                })
                .filter(|n| !(skip_excluded && Some(n.info.node_id.as_str()) == exclude))
                .filter(|n| match filter {
                    StreamFilter::Any => true,
                    StreamFilter::Serving(p) => n.serves(p),
                })
                // A viewer goes to a node with a WebRTC session to spare before one whose WebRTC
                // is full (it would only get LL-HLS there), then by load.
                .min_by(|a, b| {
                    let full = |n: &Node| {
                        matches!(filter, StreamFilter::Serving(_)) && n.webrtc_full_with_pending()
                    };
                    full(a)
                        .cmp(&full(b))
                        .then_with(|| a.effective_load_pct().total_cmp(&b.effective_load_pct()))
                        .then_with(|| a.pending.cmp(&b.pending))
                        .then_with(|| a.info.node_id.cmp(&b.info.node_id))
                })
                .map(|n| n.info.node_id.clone())
        };
        let id = best(true, false)
            .or_else(|| best(true, true))
            .or_else(|| best(false, false))
            .or_else(|| best(false, true))?;
        let node = nodes.get_mut(&id)?;
        if reserve {
            node.pending = node.pending.saturating_add(1);
        }
        Some(Selected::of(node))
    }

    /// The origin of `path`, if a non-offline node claims it.
    pub fn origin_of(&self, path: &str) -> Option<Selected> {
        let nodes = self.nodes.lock();
        nodes
            .values()
            .find(|n| n.status != NodeStatus::Offline && n.is_origin_of(path))
            .map(Selected::of)
    }

    /// Records that `node_id` accepted an order to mirror `path`.
    pub fn mark_mirroring(&self, node_id: &str, path: &str) {
        if let Some(n) = self.nodes.lock().get_mut(node_id) {
            n.mirroring.insert(path.to_string());
        }
    }

    /// Every live stream with an origin, as orders for a slave that just (re-)registered.
    pub fn live_orders(&self, for_node: &str) -> Vec<common::api::MirrorOrder> {
        let nodes = self.nodes.lock();
        let mut out = Vec::new();
        for n in nodes
            .values()
            .filter(|n| n.status != NodeStatus::Offline && n.info.node_id != for_node)
        {
            for s in n.stats.streams.iter().filter(|s| s.origin) {
                out.push(common::api::MirrorOrder {
                    path: s.path.clone(),
                    origin_node_id: n.info.node_id.clone(),
                    origin_url: n
                        .info
                        .internal_url
                        .clone()
                        .unwrap_or_else(|| n.info.public_url.clone()),
                    live: true,
                });
            }
        }
        out
    }

    /// Some node reports that `path`'s video is a codec WebRTC viewers are not sent.
    pub fn hls_only_codec(&self, path: &str) -> bool {
        self.nodes.lock().values().any(|n| {
            n.stats
                .streams
                .iter()
                .any(|s| s.path == path && s.hls_only_codec)
        })
    }

    /// Some node reports that `path`'s encoder uses B-frames.
    pub fn has_bframes(&self, path: &str) -> bool {
        self.nodes
            .lock()
            .values()
            .any(|n| n.stats.streams.iter().any(|s| s.path == path && s.bframes))
    }

    pub fn is_live_anywhere(&self, path: &str) -> bool {
        self.nodes
            .lock()
            .values()
            .any(|n| n.status != NodeStatus::Offline && n.serves(path))
    }

    /// Nodes (id, internal base URL) other than `except` that are not offline.
    pub fn peers(&self, except: &str) -> Vec<(String, String)> {
        self.nodes
            .lock()
            .values()
            .filter(|n| n.info.node_id != except && n.status != NodeStatus::Offline)
            .map(|n| {
                let url = n
                    .info
                    .internal_url
                    .clone()
                    .unwrap_or_else(|| n.info.public_url.clone());
                (n.info.node_id.clone(), url)
            })
            .collect()
    }

    pub fn internal_url(&self, node_id: &str) -> Option<String> {
        self.nodes.lock().get(node_id).map(|n| {
            n.info
                .internal_url
                .clone()
                .unwrap_or_else(|| n.info.public_url.clone())
        })
    }

    /// The node holding recording `id`: its id, internal URL, and what it says of it.
    pub fn recording_holder(
        &self,
        id: &str,
    ) -> Option<(String, String, common::api::RecordingInfo)> {
        self.nodes.lock().values().find_map(|n| {
            let r = n.stats.recordings.iter().find(|r| r.id == id)?.clone();
            let url = n
                .info
                .internal_url
                .clone()
                .unwrap_or_else(|| n.info.public_url.clone());
            Some((n.info.node_id.clone(), url, r))
        })
    }

    /// A deleted recording leaves the directory at once (the holder's next heartbeat agrees).
    pub fn forget_recording(&self, id: &str) {
        for n in self.nodes.lock().values_mut() {
            n.stats.recordings.retain(|r| r.id != id);
        }
    }

    pub fn snapshot(&self) -> Vec<Node> {
        self.nodes.lock().values().cloned().collect()
    }

    pub fn cluster_nodes(&self) -> ClusterNodes {
        let now = Instant::now();
        let nodes = self.snapshot();
        let views: Vec<NodeView> = nodes
            .iter()
            .map(|n| NodeView {
                node_id: n.info.node_id.clone(),
                node_name: n.info.node_name.clone(),
                current_connections: n.stats.connections,
                max_connections: n.info.max_connections,
                pending_tokens: n.pending,
                load_percentage: round2(n.load_pct()),
                cpu_usage: n.stats.cpu,
                memory_usage: n.stats.memory,
                egress_bytes_per_sec: n.stats.egress_bytes_per_sec,
                status: n.status,
                last_heartbeat: n.last_heartbeat_unix,
                heartbeat_age_secs: round2(
                    now.saturating_duration_since(n.last_heartbeat)
                        .as_secs_f64(),
                ),
                public_url: n.info.public_url.clone(),
                rtmp_url: n.info.rtmp_url.clone(),
                version: n.info.version.clone(),
                streams: n.stats.streams.clone(),
                webrtc: n.stats.webrtc,
            })
            .collect();
        let online = views.iter().filter(|v| v.status != NodeStatus::Offline);
        let total_connections: u64 = online.clone().map(|v| v.current_connections as u64).sum();
        let total_capacity: u64 = online.map(|v| v.max_connections as u64).sum();
        ClusterNodes {
            total_nodes: views.len(),
            healthy_nodes: views
                .iter()
                .filter(|v| v.status == NodeStatus::Healthy)
                .count(),
            total_connections,
            total_capacity,
            utilization: if total_capacity == 0 {
                0.0
            } else {
                round2(total_connections as f64 * 100.0 / total_capacity as f64)
            },
            nodes: views,
        }
    }

    pub fn cluster_streams(&self) -> ClusterStreams {
        let mut by_path: BTreeMap<String, StreamView> = BTreeMap::new();
        for n in self
            .snapshot()
            .iter()
            .filter(|n| n.status != NodeStatus::Offline)
        {
            for s in &n.stats.streams {
                let e = by_path.entry(s.path.clone()).or_insert_with(|| StreamView {
                    path: s.path.clone(),
                    origin: String::new(),
                    serving: Vec::new(),
                    publisher: String::new(),
                });
                if s.origin {
                    e.origin = n.info.node_id.clone();
                    e.publisher = s.publisher.clone();
                }
                e.serving.push(n.info.node_id.clone());
            }
        }
        ClusterStreams {
            streams: by_path
                .into_values()
                .filter(|s| !s.origin.is_empty() || !s.serving.is_empty())
                .collect(),
        }
    }
}

#[derive(Debug)]
pub struct RegistryFull(pub usize);

impl std::fmt::Display for RegistryFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the cluster already has its maximum of {} nodes", self.0)
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn unix_f64() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(id: &str, max: u32) -> RegisterRequest {
        RegisterRequest {
            node_id: id.into(),
            node_name: id.into(),
            public_url: format!("http://{id}:8888"),
            rtmp_url: format!("rtmp://{id}:1935/live"),
            max_connections: max,
            version: "t".into(),
            internal_url: None,
        }
    }

    fn stats(c: u32) -> NodeStats {
        NodeStats {
            connections: c,
            ..Default::default()
        }
    }

    #[test]
    fn status_thresholds() {
        let r = Registry::new(Thresholds::default(), 10);
        r.register(req("a", 100)).unwrap();
        assert!(matches!(
            r.heartbeat("a", stats(69)),
            HeartbeatOutcome::Accepted(NodeStatus::Healthy, None)
        ));
        assert!(matches!(
            r.heartbeat("a", stats(70)),
            HeartbeatOutcome::Accepted(NodeStatus::Warning, Some(_))
        ));
        assert!(matches!(
            r.heartbeat("a", stats(90)),
            HeartbeatOutcome::Accepted(NodeStatus::Critical, Some(_))
        ));
        assert!(matches!(
            r.heartbeat("a", stats(10)),
            HeartbeatOutcome::Accepted(NodeStatus::Healthy, Some(_))
        ));
        assert_eq!(r.heartbeat("zz", stats(1)), HeartbeatOutcome::UnknownNode);
    }

    #[test]
    fn offline_then_dropped() {
        let th = Thresholds {
            offline_after: Duration::from_secs(30),
            drop_after: Duration::from_secs(60),
            ..Default::default()
        };
        let r = Registry::new(th, 10);
        r.register(req("a", 100)).unwrap();
        let t0 = Instant::now();
        assert!(r.sweep(t0 + Duration::from_secs(29)).is_empty());
        let t = r.sweep(t0 + Duration::from_secs(31));
        assert_eq!(t[0].to, Some(NodeStatus::Offline));
        assert!(r.select(StreamFilter::Any, None, true).is_none());
        let t = r.sweep(t0 + Duration::from_secs(95));
        assert_eq!(t[0].to, None);
        assert_eq!(r.cluster_nodes().total_nodes, 0);
    }

    #[test]
    fn burst_spreads_evenly() {
        let r = Registry::new(Thresholds::default(), 10);
        for id in ["a", "b", "c"] {
            r.register(req(id, 1000)).unwrap();
        }
        let mut counts = BTreeMap::new();
        for _ in 0..150 {
            let s = r.select(StreamFilter::Any, None, true).unwrap();
            *counts.entry(s.node_id).or_insert(0) += 1;
        }
        assert_eq!(
            counts.values().copied().collect::<Vec<_>>(),
            vec![50, 50, 50]
        );
    }

    #[test]
    fn critical_only_as_last_resort_and_exclude() {
        let r = Registry::new(Thresholds::default(), 10);
        r.register(req("a", 100)).unwrap();
        r.register(req("b", 100)).unwrap();
        r.heartbeat("a", stats(95));
        r.heartbeat("b", stats(75));
        // Warning beats Critical even though both are loaded.
        assert_eq!(
            r.select(StreamFilter::Any, None, false).unwrap().node_id,
            "b"
        );
        // Excluding the warning node leaves the critical one.
        assert_eq!(
            r.select(StreamFilter::Any, Some("b"), false)
                .unwrap()
                .node_id,
            "a"
        );
        r.heartbeat("b", stats(10));
        assert_eq!(
            r.select(StreamFilter::Any, Some("b"), false)
                .unwrap()
                .node_id,
            "a"
        );
        assert_eq!(
            r.select(StreamFilter::Any, Some("a"), false)
                .unwrap()
                .node_id,
            "b"
        );
    }

    #[test]
    fn viewers_go_where_webrtc_has_room_first() {
        let r = Registry::new(Thresholds::default(), 10);
        for id in ["a", "b"] {
            r.register(req(id, 100)).unwrap();
        }
        let webrtc = |sessions, conns| NodeStats {
            connections: conns,
            webrtc: Some(common::api::WebRtcStats {
                sessions,
                capacity: 4,
            }),
            ..Default::default()
        };
        // a is the less loaded but its WebRTC is full: b gets the viewer.
        r.heartbeat("a", webrtc(4, 4));
        r.heartbeat("b", webrtc(2, 40));
        r.announce("a", "live/x", true);
        r.announce("b", "live/x", false);
        r.mark_mirroring("b", "live/x");
        let pick = || {
            r.select(StreamFilter::Serving("live/x"), None, true)
                .unwrap()
        };
        let first = pick();
        assert_eq!(first.node_id, "b");
        assert_eq!(first.webrtc, Some(true));
        // b has 2 sessions and now 2 viewers on their way: full too, so load decides again.
        assert_eq!(pick().node_id, "b");
        assert_eq!(pick().node_id, "a", "both full: the less loaded");
        // A teacher's pick (any node) is by load alone.
        assert_eq!(
            r.select(StreamFilter::Any, None, false).unwrap().node_id,
            "a"
        );
    }

    #[test]
    fn stream_filter_and_directory() {
        let r = Registry::new(Thresholds::default(), 10);
        r.register(req("a", 100)).unwrap();
        r.register(req("b", 100)).unwrap();
        assert!(
            r.select(StreamFilter::Serving("live/x"), None, false)
                .is_none()
        );
        r.announce("a", "live/x", true);
        assert_eq!(
            r.select(StreamFilter::Serving("live/x"), None, false)
                .unwrap()
                .node_id,
            "a"
        );
        assert_eq!(r.origin_of("live/x").unwrap().node_id, "a");
        let s = r.cluster_streams();
        assert_eq!(s.streams[0].origin, "a");
        r.announce("a", "live/x", false);
        assert!(!r.is_live_anywhere("live/x"));
    }

    #[test]
    fn registry_is_bounded() {
        let r = Registry::new(Thresholds::default(), 2);
        r.register(req("a", 1)).unwrap();
        r.register(req("b", 1)).unwrap();
        assert!(r.register(req("c", 1)).is_err());
        // Re-registering an existing node is still fine.
        assert!(r.register(req("a", 1)).is_ok());
    }
}
