//! What the HTTP side and the engine say to each other about sessions, and the signalling work
//! that builds one (`new_session`, run on the blocking pool, never on the engine's task).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::change::SdpOffer;
use str0m::format::Codec;
use str0m::media::{MediaKind, Mid, Pt};
use str0m::{Candidate, Rtc};
use tokio::sync::{mpsc, oneshot};

use crate::hls::HlsStream;

/// A session built by [`new_session`] off the engine's task, to be admitted or refused there.
pub(super) struct NewSession {
    pub id: String,
    pub rtc: Box<Rtc>,
    pub stream: Arc<HlsStream>,
    pub viewer: String,
    pub client: Option<IpAddr>,
    /// Remote candidates the offer carried (they count toward the session's budget).
    pub candidates: usize,
    /// A WHIP publisher's session: where the frames it receives go. `None` for a viewer.
    pub publisher: Option<mpsc::Sender<WhipFrame>>,
}

/// One frame a WHIP publisher sent, depacketized by str0m, for the class's publishing task.
pub struct WhipFrame {
    pub video: bool,
    /// RTP time (90 kHz video, 48 kHz Opus), extended past the 32-bit wrap.
    pub rtp: u64,
    pub at: Instant,
    pub data: Arc<[u8]>,
    /// The track's latest RTCP sender report: the sender's wall clock and its RTP time.
    pub sender: Option<(std::time::SystemTime, u64)>,
}

pub(super) enum Command {
    /// Admitted or refused in one step with the insert, so the cap is never passed.
    /// `Ok(true)`: it replaced the viewer's earlier session.
    Open {
        session: NewSession,
        reply: oneshot::Sender<Result<bool, Refusal>>,
    },
    Close {
        id: String,
        reply: oneshot::Sender<bool>,
    },
    Candidates {
        id: String,
        candidates: Vec<Candidate>,
        reply: oneshot::Sender<Trickle>,
    },
}

pub(super) enum Refusal {
    /// MAX_WEBRTC_VIEWERS sessions exist.
    Full,
    /// `max_pending_per_addr` sessions from this client address have not connected yet.
    PendingFromAddress,
}

pub(super) enum Trickle {
    Added,
    NotFound,
    TooMany,
}

/// A session's state from a viewer's offer, and the answer: the SDP work, done wherever the
/// caller runs it (the blocking pool), not on the engine's task.
pub(super) fn new_session(
    offer: &[u8],
    local: SocketAddr,
    local_tcp: Option<SocketAddr>,
    cert: Option<str0m::crypto::dtls::DtlsCert>,
    bwe: Option<u64>,
) -> anyhow::Result<(Box<Rtc>, String)> {
    let offer = std::str::from_utf8(offer)?;
    let offer = SdpOffer::from_sdp_string(offer)?;
    let mut config = Rtc::builder()
        .set_ice_lite(true)
        .clear_codecs()
        .enable_h264(true)
        .enable_opus(true)
        .set_stats_interval(Some(Duration::from_secs(1)));
    // One certificate for the slave's sessions: generating a key pair per offer was most of
    // what an offer cost.
    if let Some(cert) = cert {
        config = config.set_dtls_cert(cert);
    }
    // A class sent as a ladder: the send-side estimate (transport-wide congestion control)
    // picks each viewer's rendition.
    if let Some(initial) = bwe {
        config = config.enable_bwe(Some(str0m::bwe::Bitrate::bps(initial)));
    }
    let mut rtc = config.build(Instant::now());
    rtc.add_local_candidate(Candidate::host(local, "udp")?);
    if let Some(tcp) = local_tcp {
        rtc.add_local_candidate(
            Candidate::builder()
                .tcp()
                .host(tcp)
                .tcptype(str0m::net::TcpType::Passive)
                .build()?,
        );
    }
    let answer = rtc.sdp_api().accept_offer(offer)?;
    Ok((Box::new(rtc), answer.to_sdp_string()))
}

/// The payload type to send `kind` with: H.264 in packetization mode 1 (what RFC 6184 FU-A
/// needs), Opus for audio.
pub(super) fn pick_pt(rtc: &mut Rtc, mid: Mid, kind: MediaKind) -> Option<Pt> {
    let w = rtc.writer(mid)?;
    let mut best: Option<(u8, Pt)> = None;
    for p in w.payload_params() {
        let spec = p.spec();
        let rank = match (kind, spec.codec) {
            (MediaKind::Audio, Codec::Opus) => 1,
            // Constrained baseline first: every decoder takes it, and a browser decodes a
            // main or high profile stream under it too.
            (MediaKind::Video, Codec::H264) if spec.format.packetization_mode == Some(1) => {
                if spec.format.profile_level_id == Some(0x42e01f) {
                    2
                } else {
                    1
                }
            }
            _ => 0,
        };
        if rank > 0 && best.is_none_or(|(r, _)| rank > r) {
            best = Some((rank, p.pt()));
        }
    }
    best.map(|(_, pt)| pt)
}
