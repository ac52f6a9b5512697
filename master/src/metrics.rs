//! The master's Prometheus metrics. Per-node series are keyed by node id, whose number the
//! registry bounds (`max_nodes`), so label cardinality stays bounded.

use prometheus::{
    Encoder, GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry as PromRegistry, TextEncoder,
};

use crate::registry::Registry;
use common::api::NodeStatus;

pub struct MasterMetrics {
    prom: PromRegistry,
    pub nodes_by_status: IntGaugeVec,
    pub tokens_issued: IntCounterVec,
    pub token_refusals: IntCounterVec,
    pub status_transitions: IntCounterVec,
    pub heartbeats: IntCounterVec,
    node_load: GaugeVec,
    node_heartbeat_age: GaugeVec,
    node_connections: IntGaugeVec,
    /// 1 for each node's current status, 0 for the others: dashboards and alerts read the
    /// status the master decided instead of re-deriving it from load and heartbeat age.
    node_status: IntGaugeVec,
}

impl MasterMetrics {
    pub fn new() -> Self {
        let prom = PromRegistry::new();
        let nodes_by_status = IntGaugeVec::new(
            Opts::new("classcast_master_nodes", "Registered slaves by status"),
            &["status"],
        )
        .unwrap();
        let tokens_issued = IntCounterVec::new(
            Opts::new(
                "classcast_master_tokens_issued_total",
                "Tokens issued by role",
            ),
            &["role"],
        )
        .unwrap();
        let token_refusals = IntCounterVec::new(
            Opts::new(
                "classcast_master_token_refusals_total",
                "Token requests refused, by reason",
            ),
            &["reason"],
        )
        .unwrap();
        let status_transitions = IntCounterVec::new(
            Opts::new(
                "classcast_master_status_transitions_total",
                "Node status changes, by new status",
            ),
            &["to"],
        )
        .unwrap();
        let heartbeats = IntCounterVec::new(
            Opts::new(
                "classcast_master_heartbeats_total",
                "Heartbeats received, by outcome",
            ),
            &["outcome"],
        )
        .unwrap();
        let node_load = GaugeVec::new(
            Opts::new(
                "classcast_master_node_load_percent",
                "Reported load % per slave",
            ),
            &["node_id"],
        )
        .unwrap();
        let node_heartbeat_age = GaugeVec::new(
            Opts::new(
                "classcast_master_node_heartbeat_age_seconds",
                "Seconds since each slave's last heartbeat",
            ),
            &["node_id"],
        )
        .unwrap();
        let node_connections = IntGaugeVec::new(
            Opts::new(
                "classcast_master_node_connections",
                "Viewer sessions per slave",
            ),
            &["node_id"],
        )
        .unwrap();
        let node_status = IntGaugeVec::new(
            Opts::new(
                "classcast_master_node_status",
                "1 for a slave's current status, 0 for the others",
            ),
            &["node_id", "status"],
        )
        .unwrap();
        for c in [
            Box::new(node_status.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(nodes_by_status.clone()),
            Box::new(tokens_issued.clone()),
            Box::new(token_refusals.clone()),
            Box::new(status_transitions.clone()),
            Box::new(heartbeats.clone()),
            Box::new(node_load.clone()),
            Box::new(node_heartbeat_age.clone()),
            Box::new(node_connections.clone()),
        ] {
            prom.register(c).unwrap();
        }
        for s in NodeStatus::ALL {
            status_transitions.with_label_values(&[s.as_str()]);
        }
        status_transitions.with_label_values(&["removed"]);
        for r in ["student", "teacher", "monitor"] {
            tokens_issued.with_label_values(&[r]);
        }
        Self {
            prom,
            nodes_by_status,
            tokens_issued,
            token_refusals,
            status_transitions,
            heartbeats,
            node_load,
            node_heartbeat_age,
            node_connections,
            node_status,
        }
    }

    /// Renders the text format, refreshing the per-node gauges from the registry first so that
    /// dropped nodes disappear instead of lingering as stale series.
    pub fn render(&self, registry: &Registry) -> String {
        let view = registry.cluster_nodes();
        self.node_load.reset();
        self.node_heartbeat_age.reset();
        self.node_connections.reset();
        self.node_status.reset();
        for s in NodeStatus::ALL {
            let n = view.nodes.iter().filter(|v| v.status == s).count();
            self.nodes_by_status
                .with_label_values(&[s.as_str()])
                .set(n as i64);
        }
        for v in &view.nodes {
            let id = v.node_id.as_str();
            self.node_load
                .with_label_values(&[id])
                .set(v.load_percentage);
            self.node_heartbeat_age
                .with_label_values(&[id])
                .set(v.heartbeat_age_secs);
            self.node_connections
                .with_label_values(&[id])
                .set(v.current_connections as i64);
            for s in NodeStatus::ALL {
                let on = i64::from(v.status == s);
                self.node_status
                    .with_label_values(&[id, s.as_str()])
                    .set(on);
            }
        }
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.prom.gather(), &mut buf)
            .ok();
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for MasterMetrics {
    fn default() -> Self {
        Self::new()
    }
}
