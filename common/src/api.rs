//! The cluster's wire format: what slaves send the master and what the master answers.

use serde::{Deserialize, Serialize};

use crate::token::Role;

/// Header on playlists served to peers: Unix ms when the newest part became servable, so an
/// edge can measure its lag behind the origin.
pub const PART_TIME_HEADER: &str = "x-classcast-part-time";

/// The routes nodes call on each other, in one place for the servers and the clients.
pub mod paths {
    pub const REGISTER: &str = "/cluster/register";
    pub const HEARTBEAT: &str = "/cluster/stats";
    pub const UNREGISTER: &str = "/cluster/unregister";
    pub const ANNOUNCE: &str = "/cluster/streams/announce";
    pub const NODES: &str = "/cluster/nodes";
    pub const STREAMS: &str = "/cluster/streams";
    pub const ORIGIN: &str = "/cluster/streams/origin";
    /// A draining origin asks where its publisher should move (E-RTMP Reconnect Request).
    pub const MOVE_PUBLISHER: &str = "/cluster/streams/move";
    pub const BEST_NODE: &str = "/cluster/best-node";
    pub const PROMETHEUS_TARGETS: &str = "/prometheus/targets";
    pub const TOKEN: &str = "/api/token";
    /// OBS's multitrack configuration request ("GoLive"), answered with a ladder and an ingest.
    pub const OBS_GOLIVE: &str = "/api/obs/golive";
    /// On masters: every master's public origin, for the pages' fallback.
    pub const MASTERS: &str = "/api/masters";
    /// The link students open for a class (`?stream=`), and the same as a QR code.
    pub const STUDENT_LINK: &str = "/api/student-link";
    pub const STUDENT_QR: &str = "/qr.svg";
    pub const JWKS: &str = "/.well-known/jwks.json";
    pub const HEALTH: &str = "/health";
    pub const METRICS: &str = "/metrics";
    /// On slaves: the master's order to mirror a stream.
    pub const MIRROR_ORDER: &str = "/internal/mirror";
    /// On slaves: `/live/{name}/{file}`.
    pub const HLS: &str = "/live/{name}/{file}";
    /// On slaves: a rendition of a class published as a ladder, `/live/{name}/v{track}/{file}`.
    pub const HLS_RENDITION: &str = "/live/{name}/{rendition}/{file}";
    /// A recording's VOD playlist, init and media segments, and the whole class as one MP4.
    pub const VOD: &str = "/vod/{id}/{file}";
    /// The master's list of recordings, and deleting one (a teacher).
    pub const RECORDINGS: &str = "/api/recordings";
    pub const RECORDING_DELETE: &str = "/api/recordings/delete";
    /// Which slave holds a recording (peers).
    pub const RECORDING_ORIGIN: &str = "/cluster/recordings/origin";
    /// A slave deletes a recording it holds, or forgets its cached copy (the master's order).
    pub const RECORDING_FORGET: &str = "/internal/recordings/forget";
    /// The token check a cache in front of a slave makes for a viewer's playlist request.
    pub const HLS_AUTH: &str = "/auth/live/{name}/{file}";
    pub const HLS_RENDITION_AUTH: &str = "/auth/live/{name}/{rendition}/{file}";
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterRequest {
    pub node_id: String,
    pub node_name: String,
    /// Base URL a browser uses to reach the slave's HLS server, e.g. `http://10.0.0.5:8888`.
    pub public_url: String,
    /// `rtmp://host:port/live`, handed to teachers.
    pub rtmp_url: String,
    pub max_connections: u32,
    pub version: String,
    /// Base URL other slaves use to pull streams (defaults to `public_url`).
    #[serde(default)]
    pub internal_url: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterResponse {
    pub ok: bool,
    pub node_id: String,
    /// The master's Ed25519 public key, base64url (the JWK `x`).
    pub public_key: String,
    pub jwks: crate::token::Jwks,
    pub issuer: String,
    pub heartbeat_interval_ms: u64,
    /// Streams live elsewhere in the cluster right now, so a (re-)registering slave starts
    /// mirroring them without waiting for the next announcement.
    #[serde(default)]
    pub streams: Vec<MirrorOrder>,
    /// Page origins browsers may call a slave's viewer endpoints from (`scheme://host[:port]`):
    /// the master's public URL and its configured extra origins.
    #[serde(default)]
    pub page_origins: Vec<String>,
}

/// One stream as a slave reports it: either it is the origin (a publisher is connected to it)
/// or it mirrors the stream from `upstream`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StreamReport {
    pub path: String,
    pub origin: bool,
    #[serde(default)]
    pub upstream: Option<String>,
    /// The publisher's encoder uses B-frames: no browser plays it over WebRTC.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bframes: bool,
    /// The origin's publisher: `rtmp`, `rtmps` or `whip` (empty at an edge).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub publisher: String,
    /// The video is a codec WebRTC viewers are not sent (HEVC, AV1): LL-HLS only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hls_only_codec: bool,
}

/// Whether a playlist CODECS list has video that is sent to WebRTC viewers too (H.264), or
/// is audio only. HEVC and AV1 go to LL-HLS players only.
pub fn webrtc_codecs(codecs: &str) -> bool {
    !codecs
        .split(',')
        .any(|c| c.starts_with("hvc1") || c.starts_with("hev1") || c.starts_with("av01"))
}

/// A slave's WebRTC (WHEP) playback now.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct WebRtcStats {
    pub sessions: u32,
    /// `MAX_WEBRTC_VIEWERS`.
    pub capacity: u32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeStats {
    /// Viewer sessions: distinct token ids seen in the last few seconds.
    pub connections: u32,
    /// CPU %, 0–100 (of the whole host).
    pub cpu: f32,
    /// Memory %, 0–100 (of the whole host).
    pub memory: f32,
    #[serde(default)]
    pub egress_bytes_per_sec: u64,
    #[serde(default)]
    pub ingest_bytes_per_sec: u64,
    #[serde(default)]
    pub streams: Vec<StreamReport>,
    /// The recordings this node holds (it was their origin), newest first, at most
    /// [`MAX_REPORTED_RECORDINGS`].
    #[serde(default)]
    pub recordings: Vec<RecordingInfo>,
    /// None: this slave offers no WebRTC.
    #[serde(default)]
    pub webrtc: Option<WebRtcStats>,
}

/// Which node holds a recording, for an edge that serves it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordingOrigin {
    pub node_id: String,
    pub internal_url: String,
}

/// Recordings a heartbeat lists at most (the newest).
pub const MAX_REPORTED_RECORDINGS: usize = 256;

/// One recorded class, as its origin slave reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RecordingInfo {
    /// `<stream name>-<start unix ms>`: URL-safe, unique per class.
    pub id: String,
    /// The live stream it recorded, `live/<name>`.
    pub path: String,
    /// Unix ms of the first segment.
    pub started_ms: u64,
    /// Seconds of media on disk.
    pub duration_s: f64,
    pub bytes: u64,
    /// Still being recorded (the class is live).
    pub recording: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heartbeat {
    pub node_id: String,
    pub stats: NodeStats,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    pub ok: bool,
    pub status: NodeStatus,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnregisterRequest {
    pub node_id: String,
}

/// Sent by an origin the moment a stream starts or ends, so edges and routing react at once
/// instead of on the next heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamAnnounce {
    pub node_id: String,
    pub path: String,
    pub live: bool,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    Healthy,
    Warning,
    Critical,
    Offline,
}

impl NodeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Healthy => "healthy",
            NodeStatus::Warning => "warning",
            NodeStatus::Critical => "critical",
            NodeStatus::Offline => "offline",
        }
    }
    pub const ALL: [NodeStatus; 4] = [
        NodeStatus::Healthy,
        NodeStatus::Warning,
        NodeStatus::Critical,
        NodeStatus::Offline,
    ];
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeView {
    pub node_id: String,
    pub node_name: String,
    pub current_connections: u32,
    pub max_connections: u32,
    /// Tokens issued since the last heartbeat, counted as load until the slave reports them.
    pub pending_tokens: u32,
    pub load_percentage: f64,
    pub cpu_usage: f32,
    pub memory_usage: f32,
    pub egress_bytes_per_sec: u64,
    pub status: NodeStatus,
    /// Unix seconds (float) of the last heartbeat.
    pub last_heartbeat: f64,
    pub heartbeat_age_secs: f64,
    pub public_url: String,
    pub rtmp_url: String,
    pub version: String,
    pub streams: Vec<StreamReport>,
    /// WebRTC sessions against the cap (none: WebRTC off on that slave).
    #[serde(default)]
    pub webrtc: Option<WebRtcStats>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterNodes {
    pub total_nodes: usize,
    pub healthy_nodes: usize,
    pub total_connections: u64,
    pub total_capacity: u64,
    pub utilization: f64,
    pub nodes: Vec<NodeView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamView {
    pub path: String,
    pub origin: String,
    pub serving: Vec<String>,
    /// How the teacher publishes (`rtmp`, `rtmps`, `whip`), as the origin reports it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub publisher: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterStreams {
    pub streams: Vec<StreamView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRequest {
    pub role: Role,
    pub user_id: String,
    #[serde(default)]
    pub stream: Option<String>,
    /// A node the caller just failed on; it is skipped if any other node qualifies.
    #[serde(default)]
    pub exclude: Option<String>,
    /// The teacher credential (also accepted as `Authorization: Bearer`).
    #[serde(default)]
    pub credential: Option<String>,
    /// A recording to play (its id) instead of a live stream: the token reads `rec/<id>` on
    /// the least-loaded slave, and `hls_url` is its VOD playlist.
    #[serde(default)]
    pub recording: Option<String>,
    /// Teacher only: record this class (`None`: the slave's `RECORD_BY_DEFAULT`).
    #[serde(default)]
    pub record: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenResponse {
    pub token: String,
    pub node_id: String,
    pub node_name: String,
    pub hls_url: String,
    pub expires_at: u64,
    /// Teacher only: the OBS "Server" field.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub rtmp_url: Option<String>,
    /// Teacher only: where a browser or a WHIP encoder (OBS 30+, ffmpeg 8+) publishes the class,
    /// with the publish token (the key's `key=` part) as the Bearer credential. Absent where
    /// the origin has WebRTC off.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub whip_url: Option<String>,
    /// Teacher only: the OBS "Stream Key" field, `<name>?key=<publish token>`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub stream_key: Option<String>,
    /// The WHEP endpoint of the same node for the same token, when that node offers WebRTC for
    /// this stream now (the page plays it, and LL-HLS when it fails).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub whep_url: Option<String>,
    /// Live streams: whether WebRTC is offered, and if not why (`ready`, `bframes`, `codec`, `full`,
    /// `off`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub webrtc: Option<String>,
}

/// Slave → master: this draining origin's publisher of `path` should move.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MovePublisher {
    /// The draining origin.
    pub node_id: String,
    pub path: String,
    /// The publish token's subject and recording choice, carried to the new key.
    pub user: String,
    pub rec: Option<bool>,
}

/// Where a moved publisher goes: another slave's RTMP URL and a publish key for it there.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublisherMove {
    pub node_id: String,
    pub rtmp_url: String,
    /// The publish token for `node_id`.
    pub key: String,
}

/// Master → slave: a stream went live (or ended) on `origin_node_id`; mirror it (or stop).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MirrorOrder {
    pub path: String,
    pub origin_node_id: String,
    /// Base URL the edge pulls from (the origin's internal URL).
    pub origin_url: String,
    pub live: bool,
}
