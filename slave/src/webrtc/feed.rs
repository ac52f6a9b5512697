//! One stream's frames on their way into the engine: a forwarder task per stream with WebRTC
//! viewers here, and what the engine keeps per stream (decoder configs, the latest GOP for a
//! session that connects now, the transcoder, the wall clock both tracks are mapped to).

use std::sync::Arc;
use std::time::{Duration, Instant};

use media::frames::TapItem;
use tokio::sync::mpsc;

use super::transcode::OpusTranscoder;
use crate::hls::HlsStream;

pub(super) enum Feed {
    Item(Arc<TapItem>),
    /// The forwarder fell behind the stream: frames were lost, the next keyframe resumes.
    Lagged,
}

/// One stream with viewers here.
pub(super) struct StreamFeed {
    pub(super) forwarder: tokio::task::JoinHandle<()>,
    pub(super) avc: Option<media::AvcConfig>,
    pub(super) opus: Option<OpusTranscoder>,
    /// The publisher sends Opus itself (Enhanced RTMP): its packets go out as they are.
    pub(super) opus_passthrough: bool,
    /// Video since the latest keyframe, Annex B, for sessions that connect now.
    pub(super) gop: Vec<(u64, Arc<[u8]>)>,
    /// Stream time (ms) and the instant it is sent at: the wall clock RTCP sender reports map
    /// both tracks to, which keeps them in sync in the browser.
    pub(super) epoch: Option<(u64, Instant)>,
    pub(super) sessions: usize,
}

impl StreamFeed {
    pub(super) fn wallclock(&mut self, ms: u64) -> Instant {
        let (base, at) = *self.epoch.get_or_insert((ms, Instant::now()));
        if ms >= base {
            at + Duration::from_millis(ms - base)
        } else {
            at.checked_sub(Duration::from_millis(base - ms))
                .unwrap_or(at)
        }
    }
}

/// Carries one stream's frames into the engine: the configurations and latest GOP first, then
/// everything as it arrives.
pub(super) async fn forward(
    stream: Arc<HlsStream>,
    path: Arc<str>,
    tx: mpsc::Sender<(Arc<str>, Feed)>,
) {
    let (start, mut rx) = stream.frames.subscribe();
    for item in start {
        if tx.send((path.clone(), Feed::Item(item))).await.is_err() {
            return;
        }
    }
    loop {
        let f = match rx.recv().await {
            Ok(i) => Feed::Item(i),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(%path, lost = n, "webrtc feed fell behind; resuming at the next keyframe");
                Feed::Lagged
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        if tx.send((path.clone(), f)).await.is_err() {
            return;
        }
    }
}
