//! The slave's Prometheus metrics. Per-stream series are bounded by the number of live streams.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry as PromRegistry, TextEncoder,
};

pub struct SlaveMetrics {
    prom: PromRegistry,
    pub rtmp_connections: IntGauge,
    pub publish_refusals: IntCounter,
    /// Enhanced RTMP publishers asked to reconnect to another slave while this one drains.
    pub rtmp_reconnect_requests: IntCounter,
    pub media_errors: IntCounter,
    pub ingest_bytes: IntCounter,
    pub parts: IntCounter,
    pub part_publish_seconds: Histogram,
    pub http_requests: IntCounterVec,
    /// `http_requests` by kind, resolved once: a label lookup per request is measurable at
    /// thousands of requests per second.
    pub requests_by_kind: [IntCounter; 4],
    pub http_refusals: IntCounterVec,
    pub bytes_out: IntCounter,
    pub viewers: IntGauge,
    pub streams: IntGauge,
    pub mirror_lag_seconds: Histogram,
    pub upstream_reconnects: IntCounter,
    pub upstream_connections: IntGauge,
    pub origin_lookups: IntCounter,
    /// RTMP connections closed by a bound before publishing, by bound.
    pub rtmp_refusals: IntCounterVec,
    /// Accepted publishes ended because the packager cannot serve what they send.
    pub codec_refusals: IntCounterVec,
    /// WHIP publishes accepted, refused (by reason), and frames dropped on a full queue.
    pub whip_publishes: IntCounter,
    pub whip_refusals: IntCounterVec,
    pub whip_dropped_frames: IntCounter,
    /// Class messages: posts taken here, events sent to readers, readers now, refusals by
    /// reason, and how long after the origin took an event a reader here was sent it.
    pub chat_messages_in: IntCounter,
    pub chat_events_out: IntCounter,
    pub chat_readers: IntGauge,
    pub chat_refusals: IntCounterVec,
    pub chat_delivery_seconds: Histogram,
    pub parked: IntGauge,
    /// Viewer token checks made by a cache in front of this node.
    pub cache_auth_checks: IntCounter,
    pub recorded_bytes: IntCounter,
    pub recordings: IntGauge,
    pub recording_disk_free: IntGauge,
    /// Recordings stopped before their class ended, by reason (`disk_full`, `write_error`).
    pub recordings_stopped: IntCounterVec,
    /// WebRTC (WHEP) sessions with media flowing.
    pub webrtc_sessions: IntGauge,
    pub webrtc_bytes: IntCounter,
    pub webrtc_packets: IntCounter,
    pub webrtc_nacks: IntCounter,
    pub webrtc_plis: IntCounter,
    /// WHEP offers refused, by reason.
    pub webrtc_refusals: IntCounterVec,
    /// AAC → Opus transcoders running (one per stream with WebRTC viewers).
    pub opus_transcoders: IntGauge,
    /// WebRTC viewers of a ladder moved to another rendition, by direction (up, down).
    pub webrtc_rendition_switches: IntCounterVec,
    /// Media bytes held in memory, by what holds them (`playlist`: the window and its
    /// retention margin; `gop`: the latest GOP kept for WebRTC newcomers, in its own buffers;
    /// `gop_in_parts`: the GOP's frames that point into parts, already counted in `playlist`).
    /// Set at each scrape.
    pub media_held_bytes: IntGaugeVec,
}

impl SlaveMetrics {
    pub fn new() -> Self {
        let prom = PromRegistry::new();
        let ic = |n: &str, h: &str| IntCounter::new(n, h).unwrap();
        let ig = |n: &str, h: &str| IntGauge::new(n, h).unwrap();
        let http_requests = IntCounterVec::new(
            Opts::new(
                "classcast_slave_http_requests_total",
                "HLS requests by kind",
            ),
            &["kind"],
        )
        .unwrap();
        let m = Self {
            rtmp_connections: ig("classcast_slave_rtmp_connections", "Open RTMP connections"),
            publish_refusals: ic(
                "classcast_slave_publish_refusals_total",
                "RTMP publishes refused",
            ),
            rtmp_reconnect_requests: ic(
                "classcast_slave_rtmp_reconnect_requests_total",
                "Enhanced RTMP publishers asked to reconnect to another slave while this one drains",
            ),
            media_errors: ic(
                "classcast_slave_media_errors_total",
                "Media messages that could not be parsed",
            ),
            ingest_bytes: ic(
                "classcast_slave_ingest_bytes_total",
                "Media bytes received over RTMP",
            ),
            parts: ic(
                "classcast_slave_parts_total",
                "LL-HLS parts produced or mirrored",
            ),
            part_publish_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "classcast_slave_part_publish_seconds",
                    "Time from a part's first sample arriving over RTMP to the part being servable (includes the part duration)",
                )
                .buckets(vec![0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 2.0]),
            )
            .unwrap(),
            http_refusals: IntCounterVec::new(
                Opts::new(
                    "classcast_slave_http_refusals_total",
                    "HLS requests refused, by reason",
                ),
                &["reason"],
            )
            .unwrap(),
            bytes_out: ic("classcast_slave_bytes_out_total", "HLS body bytes sent"),
            viewers: ig(
                "classcast_slave_viewers",
                "Viewer sessions (distinct tokens in the window)",
            ),
            streams: ig("classcast_slave_streams", "Streams served by this node"),
            mirror_lag_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "classcast_slave_mirror_lag_seconds",
                    "Time from a part appearing on the origin to it being servable on this edge",
                )
                .buckets(vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0]),
            )
            .unwrap(),
            upstream_reconnects: ic(
                "classcast_slave_upstream_reconnects_total",
                "Edge → origin reconnects",
            ),
            upstream_connections: ig(
                "classcast_slave_upstream_connections",
                "Streams mirrored from an upstream",
            ),
            origin_lookups: ic(
                "classcast_slave_origin_lookups_total",
                "Questions to the master about where a stream this node lacks is live",
            ),
            rtmp_refusals: IntCounterVec::new(
                Opts::new(
                    "classcast_slave_rtmp_refusals_total",
                    "RTMP connections refused or closed by a bound, by bound",
                ),
                &["reason"],
            )
            .unwrap(),
            codec_refusals: IntCounterVec::new(
                Opts::new(
                    "classcast_slave_publish_codec_refusals_total",
                    "Publishes ended at their first media message because the codec or track \
                     layout cannot be packaged, by what (video_codec, audio_codec, multitrack)",
                ),
                &["kind"],
            )
            .unwrap(),
            whip_publishes: ic(
                "classcast_slave_whip_publishes_total",
                "WHIP publishes accepted (a session created for a class)",
            ),
            whip_refusals: IntCounterVec::new(
                Opts::new(
                    "classcast_slave_whip_refusals_total",
                    "WHIP publishes refused, by reason",
                ),
                &["reason"],
            )
            .unwrap(),
            whip_dropped_frames: ic(
                "classcast_slave_whip_dropped_frames_total",
                "Frames a WHIP publisher sent that its class's queue had no room for",
            ),
            chat_messages_in: ic(
                "classcast_slave_chat_messages_in_total",
                "Class messages posted by viewers of this slave and accepted",
            ),
            chat_events_out: ic(
                "classcast_slave_chat_events_out_total",
                "Class message events sent to readers here",
            ),
            chat_readers: ig(
                "classcast_slave_chat_readers",
                "Open class-message readers (Server-Sent Events responses)",
            ),
            chat_refusals: IntCounterVec::new(
                Opts::new(
                    "classcast_slave_chat_refusals_total",
                    "Class messages and readers refused, by reason",
                ),
                &["reason"],
            )
            .unwrap(),
            chat_delivery_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "classcast_slave_chat_delivery_seconds",
                    "From the origin taking a class message to a reader here being sent it",
                )
                .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
            )
            .unwrap(),
            parked: ig(
                "classcast_slave_parked_requests",
                "Blocking playlist and part requests waiting now",
            ),
            cache_auth_checks: ic(
                "classcast_slave_cache_auth_checks_total",
                "Viewer token checks a cache in front of this node made (one per viewer per few seconds)",
            ),
            recorded_bytes: ic(
                "classcast_slave_recorded_bytes_total",
                "Media bytes written to recordings",
            ),
            recordings: ig(
                "classcast_slave_recordings",
                "Recordings on this node's disk",
            ),
            recording_disk_free: ig(
                "classcast_slave_recording_disk_free_bytes",
                "Free bytes on the file system of RECORD_DIR",
            ),
            recordings_stopped: IntCounterVec::new(
                Opts::new(
                    "classcast_slave_recordings_stopped_total",
                    "Recordings stopped before their class ended (the class carried on), by reason",
                ),
                &["reason"],
            )
            .unwrap(),
            webrtc_sessions: ig(
                "classcast_slave_webrtc_sessions",
                "WebRTC sessions with media flowing",
            ),
            webrtc_bytes: ic(
                "classcast_slave_webrtc_bytes_total",
                "RTP bytes sent to WebRTC viewers",
            ),
            webrtc_packets: ic(
                "classcast_slave_webrtc_packets_total",
                "RTP packets sent to WebRTC viewers",
            ),
            webrtc_nacks: ic(
                "classcast_slave_webrtc_nacks_total",
                "NACKs received from WebRTC viewers",
            ),
            webrtc_plis: ic(
                "classcast_slave_webrtc_plis_total",
                "Picture loss indications received from WebRTC viewers (answered by the next keyframe)",
            ),
            webrtc_refusals: IntCounterVec::new(
                Opts::new(
                    "classcast_slave_webrtc_refusals_total",
                    "WHEP offers refused, by reason",
                ),
                &["reason"],
            )
            .unwrap(),
            opus_transcoders: ig(
                "classcast_slave_opus_transcoders",
                "AAC to Opus transcoders running (one per stream with WebRTC viewers)",
            ),
            webrtc_rendition_switches: IntCounterVec::new(
                Opts::new(
                    "classcast_slave_webrtc_rendition_switches_total",
                    "WebRTC viewers of a class sent as a ladder moved to another rendition by \
                     their bandwidth estimate, by direction (up, down)",
                ),
                &["direction"],
            )
            .unwrap(),
            media_held_bytes: IntGaugeVec::new(
                Opts::new(
                    "classcast_slave_media_held_bytes",
                    "Media bytes held in memory, by holder: playlist (window and retention \
                     margin), gop (the latest GOP for WebRTC newcomers, in its own buffers), \
                     gop_in_parts (GOP frames pointing into parts, counted in playlist)",
                ),
                &["held_by"],
            )
            .unwrap(),
            requests_by_kind: ["playlist", "init", "segment", "part"]
                .map(|k| http_requests.with_label_values(&[k])),
            http_requests,
            prom,
        };
        let cs: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.rtmp_connections.clone()),
            Box::new(m.rtmp_reconnect_requests.clone()),
            Box::new(m.publish_refusals.clone()),
            Box::new(m.media_errors.clone()),
            Box::new(m.ingest_bytes.clone()),
            Box::new(m.parts.clone()),
            Box::new(m.part_publish_seconds.clone()),
            Box::new(m.http_requests.clone()),
            Box::new(m.http_refusals.clone()),
            Box::new(m.bytes_out.clone()),
            Box::new(m.viewers.clone()),
            Box::new(m.streams.clone()),
            Box::new(m.mirror_lag_seconds.clone()),
            Box::new(m.upstream_reconnects.clone()),
            Box::new(m.upstream_connections.clone()),
            Box::new(m.origin_lookups.clone()),
            Box::new(m.rtmp_refusals.clone()),
            Box::new(m.codec_refusals.clone()),
            Box::new(m.webrtc_rendition_switches.clone()),
            Box::new(m.media_held_bytes.clone()),
            Box::new(m.whip_publishes.clone()),
            Box::new(m.whip_refusals.clone()),
            Box::new(m.whip_dropped_frames.clone()),
            Box::new(m.chat_messages_in.clone()),
            Box::new(m.chat_events_out.clone()),
            Box::new(m.chat_readers.clone()),
            Box::new(m.chat_refusals.clone()),
            Box::new(m.chat_delivery_seconds.clone()),
            Box::new(m.parked.clone()),
            Box::new(m.cache_auth_checks.clone()),
            Box::new(m.recorded_bytes.clone()),
            Box::new(m.recordings.clone()),
            Box::new(m.recording_disk_free.clone()),
            Box::new(m.recordings_stopped.clone()),
            Box::new(m.webrtc_sessions.clone()),
            Box::new(m.webrtc_bytes.clone()),
            Box::new(m.webrtc_packets.clone()),
            Box::new(m.webrtc_nacks.clone()),
            Box::new(m.webrtc_plis.clone()),
            Box::new(m.webrtc_refusals.clone()),
            Box::new(m.opus_transcoders.clone()),
        ];
        for c in cs {
            m.prom.register(c).unwrap();
        }
        m
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.prom.gather(), &mut buf)
            .ok();
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for SlaveMetrics {
    fn default() -> Self {
        Self::new()
    }
}
