//! One class being published here, whatever brings its media (an RTMP connection, a WHIP
//! session): who may publish it, its packager and frame tap, the stream it fills, and the grace
//! period when the publisher leaves. Both ingest paths hand it FLV tag bodies.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use common::token::Action;
use media::{MediaError, Packager, PackagerConfig, PackagerOutput};

use crate::ctx::SlaveCtx;
use crate::hls::store::{HlsStream, Source};

/// Why a publish is refused: an RTMP status code (WHIP maps it to an HTTP status) and the
/// reason for the publisher.
pub type Refused = (&'static str, String);

/// Status codes of a refused publish.
pub const BAD_NAME: &str = "NetStream.Publish.BadName";
pub const UNAUTHORIZED: &str = "NetStream.Publish.Unauthorized";

/// A publish this node accepted: the class's path, whether the token asks for it to be
/// recorded, and who the token names (what a move to another node carries over).
pub struct Authorized {
    pub path: String,
    pub record: Option<bool>,
    pub user: String,
}

/// Checks a publish token for `name` on this node, and that nobody else is live on the path.
pub fn authorize(
    ctx: &SlaveCtx,
    name: &str,
    token: Option<&str>,
    peer: &str,
) -> Result<Authorized, Refused> {
    let path =
        common::stream_path(name).ok_or((BAD_NAME, format!("invalid stream name {name:?}")))?;
    let verifier = ctx.verifier().ok_or((
        UNAUTHORIZED,
        "node not registered with the master yet".to_string(),
    ))?;
    let claims = verifier
        .authorize(token, &ctx.cfg.node_id, &path, Action::Publish)
        .map_err(|e| (UNAUTHORIZED, format!("stream key refused: {e}")))?;
    take_over_mirror(ctx, &path, peer);
    path_free(ctx, &path)?;
    tracing::info!(%peer, %path, user = %claims.sub, "publish accepted");
    Ok(Authorized {
        path,
        record: claims.rec,
        user: claims.sub.clone(),
    })
}

/// A publish key for this node makes it the class's origin: the master mints one for a node
/// only when it sends the teacher there (a draining origin's publisher moving, a teacher whose
/// origin failed). A mirror this node keeps of the class from elsewhere ends, so that the
/// publisher does not wait for the old origin's end to reach it.
fn take_over_mirror(ctx: &SlaveCtx, path: &str, peer: &str) {
    if let Some(e) = ctx.store.get(path)
        && e.source != Source::Origin
        && !e.stream.is_ended()
    {
        tracing::info!(%peer, %path, "a publish key for this node: its mirror of the class ends and it becomes the origin");
        e.stream.end();
        for (_, r) in e.stream.ladder() {
            r.end();
        }
    }
}

/// Nobody else publishes `path` here, and it is not another node's class.
pub fn path_free(ctx: &SlaveCtx, path: &str) -> Result<(), Refused> {
    if let Some(e) = ctx.store.get(path) {
        let st = e.stream.read();
        if st.publisher_connected && !st.ended {
            return Err((BAD_NAME, format!("{path} is already being published")));
        }
        if e.source != Source::Origin && !st.ended {
            return Err((
                BAD_NAME,
                format!("{path} is live on another node; publish there"),
            ));
        }
    }
    Ok(())
}

/// What a publisher fills, once accepted.
pub struct Publishing {
    ctx: Arc<SlaveCtx>,
    /// Who publishes, for log lines (an address, or a WHIP session).
    peer: String,
    pub stream: Arc<HlsStream>,
    /// Track 0: the class's own stream, the one recorded and sent to WebRTC viewers.
    main: Track,
    /// The other video tracks of a multitrack ladder, by track id, each packaged into a
    /// rendition stream of its own with the class's audio muxed in.
    renditions: Vec<(u8, Track)>,
    /// The audio decoder configuration, for a rendition whose first tag comes after it.
    audio_config: Option<(u32, Bytes)>,
    announced: bool,
    /// When recent media messages arrived, by timestamp: what the publish → part latency
    /// metric measures from. Bounded to a few seconds of messages.
    arrivals: std::collections::VecDeque<(u64, Instant)>,
}

/// One video track and what it fills: a packager, the stream its parts go to, and the frames
/// for WebRTC viewers.
struct Track {
    stream: Arc<HlsStream>,
    packager: Packager,
    /// The next part opens a segment with a DISCONTINUITY (a publisher came back).
    discontinuity: bool,
    started: bool,
    /// The same messages frame by frame, for WebRTC viewers (`HlsStream::frames`).
    tap: media::frames::FrameTap,
    /// Recent video frame timestamps, for the frame rate the multivariant playlist states.
    frame_times: std::collections::VecDeque<u32>,
}

impl Track {
    fn new(ctx: &SlaveCtx, stream: Arc<HlsStream>, resumed: bool) -> Self {
        Track {
            stream,
            packager: Packager::new(PackagerConfig {
                part_target: ctx.cfg.hls.part_target,
                segment_target: ctx.cfg.hls.segment_target,
            }),
            discontinuity: resumed,
            started: false,
            tap: Default::default(),
            frame_times: Default::default(),
        }
    }

    fn video(&mut self, timestamp: u32, data: Bytes) -> Result<Vec<PackagerOutput>, MediaError> {
        if let Ok(Some(item)) = self.tap.push_video(timestamp, &data) {
            self.stream.frames.push(item);
        }
        if let Ok(tag) = media::flv::parse_video_tag(&data)
            && matches!(tag.packet, media::flv::VideoPacket::Frame { .. })
        {
            self.count_frame(timestamp);
        }
        self.packager.push_video(timestamp, data)
    }

    fn count_frame(&mut self, timestamp: u32) {
        const WINDOW: usize = 61;
        if self.frame_times.len() == WINDOW {
            self.frame_times.pop_front();
        }
        self.frame_times.push_back(timestamp);
        if self.frame_times.len() == WINDOW || self.frame_times.len().is_multiple_of(15) {
            let span = self
                .frame_times
                .back()
                .unwrap_or(&0)
                .wrapping_sub(self.frame_times[0]);
            if span > 0 {
                let fps = (self.frame_times.len() - 1) as f64 * 1000.0 / f64::from(span);
                self.stream.set_frame_rate(Some(common_frame_rate(fps)));
            }
        }
    }

    /// Applies the packager's outputs; returns the first sample time of each part placed.
    fn apply(&mut self, outputs: Vec<PackagerOutput>) -> Vec<u64> {
        let mut placed = Vec::new();
        for o in outputs {
            match o {
                PackagerOutput::Init {
                    data,
                    codecs,
                    width,
                    height,
                } => {
                    let res = (width > 0 && height > 0).then_some((width, height));
                    self.stream.set_init(data, codecs, res);
                    // A new init mid-stream (SPS change, late audio track) needs a
                    // DISCONTINUITY before the next part, as a reconnect does.
                    if self.started {
                        self.discontinuity = true;
                    }
                }
                PackagerOutput::Part {
                    data,
                    duration,
                    independent,
                    starts_segment,
                    first_dts_ms,
                } => {
                    let disc = self.discontinuity && starts_segment;
                    if disc {
                        self.discontinuity = false;
                    }
                    let starts = starts_segment || !self.started;
                    self.started = true;
                    self.stream.frames.share_with_part(&data);
                    self.stream
                        .push_part(data, duration, independent, starts, disc);
                    placed.push(first_dts_ms);
                }
            }
        }
        placed
    }
}

/// Frame rates are measured from millisecond timestamps: the nearest common rate within 1 %,
/// else the measure rounded to a hundredth.
fn common_frame_rate(fps: f64) -> f64 {
    [23.976, 24.0, 25.0, 29.97, 30.0, 48.0, 50.0, 59.94, 60.0]
        .into_iter()
        .filter(|r| (fps - r).abs() / r < 0.01)
        .min_by(|a, b| (fps - a).abs().total_cmp(&(fps - b).abs()))
        .unwrap_or((fps * 100.0).round() / 100.0)
}

#[cfg(test)]
#[test]
fn frame_rates_snap_to_the_nearest_common_one() {
    assert_eq!(common_frame_rate(29.98), 29.97);
    assert_eq!(common_frame_rate(29.99), 30.0);
    assert_eq!(common_frame_rate(30.2), 30.0);
    assert_eq!(common_frame_rate(25.1), 25.0);
    assert_eq!(common_frame_rate(12.345), 12.35);
}

impl Publishing {
    /// Starts (or, within the grace period, resumes) the class at `path`. Must run on the main
    /// runtime: the recorder it may start outlives the publisher.
    pub fn start(
        ctx: &Arc<SlaveCtx>,
        path: &str,
        record: Option<bool>,
        kind: &'static str,
        peer: String,
    ) -> Self {
        let (stream, resumed) = match ctx.store.get(path) {
            Some(e) if !e.stream.is_ended() => (e.stream.clone(), true),
            _ => (
                ctx.store
                    .create(path, ctx.cfg.hls.clone(), Source::Origin)
                    .stream
                    .clone(),
                false,
            ),
        };
        // A new class is recorded from its first segment; a publisher coming back within the
        // grace period continues the same stream, and so the same recording.
        if !resumed && record.unwrap_or(ctx.cfg.record.by_default) {
            crate::recorder::spawn(ctx.clone(), stream.clone());
        }
        stream.publisher_joined();
        stream.set_publisher_kind(kind);
        if resumed {
            tracing::info!(%path, "publisher came back within the grace period; continuing with a discontinuity");
        }
        // A resumed stream is already announced; a new one is announced with its first part,
        // so that routing never sends a viewer to a stream with nothing to play yet.
        Publishing {
            ctx: ctx.clone(),
            peer,
            main: Track::new(ctx, stream.clone(), resumed),
            stream,
            renditions: Vec::new(),
            audio_config: None,
            announced: resumed,
            arrivals: Default::default(),
        }
    }

    /// One FLV tag body. A per-message problem is counted and the message dropped; an error is
    /// returned only for input no later message can mend (`MediaError::unsupported`).
    pub fn media(&mut self, timestamp: u32, data: Bytes, video: bool) -> Result<(), MediaError> {
        self.ctx.metrics.ingest_bytes.inc_by(data.len() as u64);
        if self.arrivals.len() >= 512 {
            self.arrivals.pop_front();
        }
        self.arrivals
            .push_back((u64::from(timestamp), Instant::now()));
        let tracks = match media::multitrack::split(&data, video) {
            Ok(media::multitrack::Split::Single) => vec![(0, data)],
            Ok(media::multitrack::Split::Tracks(t)) => t,
            Err(e) => return self.dropped(e),
        };
        for (track, body) in tracks {
            let r = if video {
                self.video(track, timestamp, body)
            } else {
                self.audio(track, timestamp, body)
            };
            r?;
        }
        Ok(())
    }

    fn video(&mut self, track: u8, timestamp: u32, data: Bytes) -> Result<(), MediaError> {
        if track == 0 {
            let out = self.main.video(timestamp, data);
            return match out {
                Ok(o) => {
                    self.apply_main(o);
                    Ok(())
                }
                Err(e) => self.dropped(e),
            };
        }
        let at = match self.renditions.iter().position(|(t, _)| *t == track) {
            Some(i) => i,
            None => {
                if self.renditions.len() + 1 >= media::multitrack::MAX_VIDEO_TRACKS {
                    return Err(MediaError::TooManyTracks(
                        media::multitrack::MAX_VIDEO_TRACKS,
                    ));
                }
                let stream = self
                    .ctx
                    .store
                    .rendition(&self.stream, track, Source::Origin);
                let resumed = stream.has_parts();
                stream.publisher_joined();
                let mut t = Track::new(&self.ctx, stream, resumed);
                if let Some((ts, cfg)) = &self.audio_config {
                    let _ = t.packager.push_audio(*ts, cfg.clone());
                }
                tracing::info!(peer = %self.peer, path = %t.stream.path, track, "a rendition of the class's ladder");
                self.renditions.push((track, t));
                self.renditions.len() - 1
            }
        };
        let t = &mut self.renditions[at].1;
        match t.video(timestamp, data) {
            Ok(o) => {
                t.apply(o);
                Ok(())
            }
            Err(e) => self.dropped(e),
        }
    }

    /// Audio goes to every rendition: each one's parts carry it, so a player switching
    /// renditions never switches audio. Only audio track 0 is kept.
    fn audio(&mut self, track: u8, timestamp: u32, data: Bytes) -> Result<(), MediaError> {
        if track != 0 {
            return Ok(());
        }
        if let Ok(tag) = media::flv::parse_audio_tag(&data)
            && matches!(tag.packet, media::flv::AudioPacket::SequenceHeader(_))
        {
            self.audio_config = Some((timestamp, data.clone()));
        }
        if let Ok(Some(item)) = self.main.tap.push_audio(timestamp, &data) {
            self.stream.frames.push(item);
        }
        for (_, t) in &mut self.renditions {
            if let Ok(o) = t.packager.push_audio(timestamp, data.clone()) {
                t.apply(o);
            }
        }
        match self.main.packager.push_audio(timestamp, data) {
            Ok(o) => {
                self.apply_main(o);
                Ok(())
            }
            Err(e) => self.dropped(e),
        }
    }

    /// A message the packager could not use: counted and dropped, unless no later message can
    /// mend it.
    fn dropped(&self, e: MediaError) -> Result<(), MediaError> {
        if e.unsupported().is_some() {
            return Err(e);
        }
        self.ctx.metrics.media_errors.inc();
        tracing::debug!(peer = %self.peer, error = %e, "dropped a media message");
        Ok(())
    }

    /// The publish sends what no part can be made of (`e.unsupported()` is `why`): the log,
    /// the metric and the teacher's preview say so. The caller tells the publisher and ends it.
    pub fn refused(&self, e: &MediaError, why: &str) {
        let path = &self.stream.path;
        tracing::warn!(peer = %self.peer, %path, error = %e, "publish refused: {why}");
        self.ctx
            .metrics
            .codec_refusals
            .with_label_values(&[e.unsupported_label()])
            .inc();
        self.ctx.remember_publish_refusal(path, why.to_string());
    }

    fn apply_main(&mut self, outputs: Vec<PackagerOutput>) {
        for first_dts_ms in self.main.apply(outputs) {
            self.ctx.metrics.parts.inc();
            // From the arrival of the part's first sample to the part being servable: the part
            // duration plus what the server adds.
            let first = self
                .arrivals
                .iter()
                .min_by_key(|(ts, _)| ts.abs_diff(first_dts_ms));
            if let Some((_, at)) = first {
                let latency = at.elapsed().as_secs_f64();
                self.ctx.metrics.part_publish_seconds.observe(latency);
            }
            if !self.announced {
                self.announced = true;
                self.ctx.publish_refusals.remove(&self.stream.path);
                self.ctx.masters.announce(&self.stream.path, true);
            }
        }
    }

    /// The publisher is gone (unpublish or disconnect): flush, then end the stream unless the
    /// publisher comes back within the grace period. Must run on the main runtime.
    pub fn stop(mut self, why: &str) {
        let rest = self.main.packager.flush();
        self.apply_main(rest);
        self.stream.publisher_left();
        for (_, t) in &mut self.renditions {
            let rest = t.packager.flush();
            t.apply(rest);
            t.stream.publisher_left();
        }
        tracing::info!(peer = %self.peer, path = %self.stream.path, why, "publisher left; grace period started");
        let ctx = self.ctx.clone();
        let stream = self.stream.clone();
        tokio::spawn(async move {
            tokio::time::sleep(stream.cfg.grace).await;
            let gone = {
                let st = stream.read();
                !st.publisher_connected
                    && st
                        .publisher_left_at
                        .is_some_and(|t| t.elapsed() >= stream.cfg.grace)
            };
            if gone && !stream.is_ended() {
                tracing::info!(path = %stream.path, "publisher did not come back; stream ended");
                stream.end();
                for (_, r) in stream.ladder() {
                    r.end();
                }
                ctx.masters.announce(&stream.path, false);
            }
        });
    }
}
