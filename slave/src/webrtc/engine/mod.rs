//! One engine: a task that owns a UDP socket (and an ICE-TCP listener) shared by its sessions
//! (str0m's `accepts` tells whose a datagram is), each session's sans-IO `Rtc`, and per stream
//! with viewers here one frame feed and one AAC → Opus transcoder its viewers share. A slave
//! runs one engine per core (`WEBRTC_ENGINES`), each on its own port; they share only the
//! admission counts (`WebRtcLoad`, `PendingByAddress`), so the cap holds across them.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::media::{KeyframeRequestKind, MediaKind, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::{Event, IceConnectionState, Input, Output, Rtc};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::admission::{CONNECT_DEADLINE, MAX_CANDIDATES, PendingByAddress, max_pending_per_addr};
use super::feed::{Feed, StreamFeed};

mod batch;
mod ladder;
mod media_out;

use super::session::{Command, NewSession, Refusal, Trickle, WhipFrame, pick_pt};
use crate::ctx::SlaveCtx;
pub(super) use ladder::INITIAL_ESTIMATE_BPS;

/// Datagrams read per wake-up before the sessions are driven.
const RECV_BATCH: usize = 64;

struct Session {
    rtc: Box<Rtc>,
    path: Arc<str>,
    viewer: String,
    /// The per-address slot this session holds until it connects (or ends unconnected).
    pending: Option<IpAddr>,
    /// Remote candidates taken so far (offer and trickle), at most MAX_CANDIDATES.
    remote_candidates: usize,
    created: Instant,
    next: Instant,
    connected: bool,
    video: Option<(Mid, Pt)>,
    audio: Option<(Mid, Pt)>,
    /// Video is written from a keyframe on.
    video_started: bool,
    /// Whose video this viewer gets: the class's own feed, or a rendition of its ladder.
    video_path: Arc<str>,
    /// The class's ladder, when it was sent as one.
    ladder: Option<ladder::Ladder>,
    /// Egress counters seen last, per mid, for the metrics' deltas.
    stats: HashMap<Mid, (u64, u64, u64, u64)>,
    /// A WHIP publisher: its received frames go here (bounded; a full queue drops the frame and
    /// asks the publisher for a keyframe). `None` for a viewer.
    publisher: Option<mpsc::Sender<WhipFrame>>,
}

impl Session {
    fn new(
        rtc: Box<Rtc>,
        path: Arc<str>,
        viewer: String,
        candidates: usize,
        now: Instant,
        publisher: Option<mpsc::Sender<WhipFrame>>,
    ) -> Self {
        Session {
            rtc,
            video_path: path.clone(),
            ladder: None,
            path,
            viewer,
            pending: None,
            remote_candidates: candidates,
            created: now,
            next: now,
            connected: false,
            video: None,
            audio: None,
            video_started: false,
            stats: HashMap::new(),
            publisher,
        }
    }
}

pub(super) struct Engine {
    ctx: Arc<SlaveCtx>,
    socket: UdpSocket,
    /// The address in our host candidate: what a datagram is addressed to, whatever the
    /// interface it arrived on.
    local: SocketAddr,
    sessions: HashMap<String, Session>,
    /// Whose datagrams come from an address (over UDP or TCP), learnt from `Rtc::accepts`:
    /// asking every session for every datagram would cost O(sessions) per packet.
    by_addr: HashMap<(Protocol, SocketAddr), String>,
    /// ICE-TCP: our passive candidate's address, and the viewers' connections.
    local_tcp: Option<SocketAddr>,
    tcp: super::tcp::TcpLinks,
    tcp_tx: mpsc::Sender<super::tcp::TcpEvent>,
    tcp_rx: mpsc::Receiver<super::tcp::TcpEvent>,
    streams: HashMap<Arc<str>, StreamFeed>,
    feed_tx: mpsc::Sender<(Arc<str>, Feed)>,
    feed_rx: mpsc::Receiver<(Arc<str>, Feed)>,
    /// Shared by every engine of the slave.
    load: Arc<super::WebRtcLoad>,
    pending: Arc<PendingByAddress>,
    /// Datagrams written since the last flush: sent `batch::BATCH` at a time.
    batch: batch::SendBatch,
}

impl Engine {
    pub(super) fn new(
        ctx: Arc<SlaveCtx>,
        socket: UdpSocket,
        local: SocketAddr,
        load: Arc<super::WebRtcLoad>,
        pending: Arc<PendingByAddress>,
    ) -> Self {
        let (feed_tx, feed_rx) = mpsc::channel(4096);
        let (tcp_tx, tcp_rx) = mpsc::channel(1024);
        Self {
            ctx,
            socket,
            local,
            sessions: HashMap::new(),
            by_addr: HashMap::new(),
            local_tcp: None,
            tcp: Default::default(),
            tcp_tx,
            tcp_rx,
            streams: HashMap::new(),
            feed_tx,
            feed_rx,
            load,
            pending,
            batch: Default::default(),
        }
    }

    /// Offers ICE-TCP on `listener` (its address is the passive candidate's), with at most
    /// `max` connections at once.
    pub(super) fn with_tcp(
        mut self,
        listener: tokio::net::TcpListener,
        candidate: SocketAddr,
        max: usize,
    ) -> Self {
        self.local_tcp = Some(candidate);
        tokio::spawn(super::tcp::listen(listener, max, self.tcp_tx.clone()));
        self
    }

    pub(super) async fn run(mut self, mut cmds: mpsc::Receiver<Command>) {
        let mut buf = vec![0u8; 2048];
        loop {
            let deadline = self
                .sessions
                .values()
                .map(|s| s.next)
                .min()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
            tokio::select! {
                r = self.socket.recv_from(&mut buf) => {
                    if let Ok((n, from)) = r {
                        self.receive(&buf[..n], Protocol::Udp, from);
                        for _ in 1..RECV_BATCH {
                            match self.socket.try_recv_from(&mut buf) {
                                Ok((n, from)) => self.receive(&buf[..n], Protocol::Udp, from),
                                Err(_) => break,
                            }
                        }
                    }
                }
                Some(ev) = self.tcp_rx.recv() => match ev {
                    super::tcp::TcpEvent::Opened { peer, tx } => self.tcp.opened(peer, tx),
                    super::tcp::TcpEvent::Frame { peer, data } => {
                        self.receive(&data, Protocol::Tcp, peer)
                    }
                    super::tcp::TcpEvent::Closed { peer } => self.tcp.closed(&peer),
                },
                c = cmds.recv() => match c {
                    Some(c) => self.command(c),
                    None => break,
                },
                Some((path, f)) = self.feed_rx.recv() => {
                    self.feed(&path, f);
                    // Drain what else is queued before driving sessions again.
                    while let Ok((path, f)) = self.feed_rx.try_recv() {
                        self.feed(&path, f);
                    }
                }
                _ = tokio::time::sleep_until(deadline.into()) => {}
            }
            self.timeouts();
            self.reap();
            self.batch.flush(&self.socket);
        }
        let ids: Vec<String> = self.sessions.keys().cloned().collect();
        for id in ids {
            if let Some(s) = self.sessions.get_mut(&id) {
                s.rtc.disconnect();
            }
        }
        self.reap();
    }

    fn receive(&mut self, data: &[u8], proto: Protocol, source: SocketAddr) {
        let Ok(contents) = data.try_into() else {
            return;
        };
        let destination = match (proto, self.local_tcp) {
            (Protocol::Tcp, Some(tcp)) => tcp,
            _ => self.local,
        };
        let input = Input::Receive(
            Instant::now(),
            Receive {
                proto,
                source,
                destination,
                contents,
            },
        );
        let known = self
            .by_addr
            .get(&(proto, source))
            .filter(|id| {
                self.sessions
                    .get(*id)
                    .is_some_and(|s| s.rtc.accepts(&input))
            })
            .cloned();
        let id = match known {
            Some(id) => id,
            None => {
                let Some((id, _)) = self.sessions.iter().find(|(_, s)| s.rtc.accepts(&input))
                else {
                    // A TCP connection no session claims holds a slot for nothing: close it.
                    if proto == Protocol::Tcp {
                        self.tcp.closed(&source);
                    }
                    return;
                };
                let id = id.clone();
                self.by_addr.insert((proto, source), id.clone());
                id
            }
        };
        let s = self.sessions.get_mut(&id).expect("found above");
        if let Err(e) = s.rtc.handle_input(input) {
            tracing::debug!(session = %id, error = %e, "webrtc input refused; closing the session");
            s.rtc.disconnect();
        }
        self.drive(&id);
    }

    fn timeouts(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.next <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            if let Some(s) = self.sessions.get_mut(&id) {
                if !s.connected && s.created.elapsed() > CONNECT_DEADLINE {
                    tracing::info!(session = %id, "webrtc session never connected; dropped");
                    s.rtc.disconnect();
                    continue;
                }
                if s.rtc.handle_input(Input::Timeout(now)).is_err() {
                    s.rtc.disconnect();
                }
            }
            self.drive(&id);
        }
    }

    /// Polls a session until it has nothing more to send now.
    fn drive(&mut self, id: &str) {
        let Some(s) = self.sessions.get_mut(id) else {
            return;
        };
        let mut connected_now = false;
        loop {
            if !s.rtc.is_alive() {
                s.next = Instant::now();
                break;
            }
            match s.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    s.next = t;
                    break;
                }
                Ok(Output::Transmit(t)) => {
                    // A full socket buffer (or TCP queue) loses the datagram, as the network
                    // may; NACKs and the next keyframe repair it.
                    if t.proto == Protocol::Tcp {
                        self.tcp.send(&t.destination, &t.contents);
                    } else {
                        self.batch
                            .push(&self.socket, t.destination, t.contents.into());
                    }
                }
                Ok(Output::Event(e)) => match e {
                    Event::Connected => {
                        s.connected = true;
                        connected_now = true;
                        if let Some(ip) = s.pending.take() {
                            self.pending.give_back(ip);
                        }
                    }
                    Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                        s.rtc.disconnect();
                    }
                    Event::MediaAdded(m) => {
                        let pt = pick_pt(&mut s.rtc, m.mid, m.kind);
                        match (m.kind, pt) {
                            (MediaKind::Video, Some(pt)) => s.video = Some((m.mid, pt)),
                            (MediaKind::Audio, Some(pt)) => s.audio = Some((m.mid, pt)),
                            _ => {}
                        }
                    }
                    Event::MediaData(d) => {
                        let Some(tx) = &s.publisher else { continue };
                        let frame = WhipFrame {
                            video: d.params.spec().codec.is_video(),
                            rtp: d.time.numer(),
                            at: d.network_time,
                            sender: d
                                .last_sender_info
                                .map(|sr| (sr.ntp_time, sr.rtp_time.numer())),
                            data: d.data,
                        };
                        let video = frame.video;
                        if tx.try_send(frame).is_err() {
                            // The packager fell behind (or the class ended): the next picture
                            // must not depend on the lost one.
                            self.ctx.metrics.whip_dropped_frames.inc();
                            if video
                                && let Some((mid, _)) = s.video
                                && let Some(mut w) = s.rtc.writer(mid)
                            {
                                let _ = w.request_keyframe(None, KeyframeRequestKind::Pli);
                            }
                        }
                    }
                    Event::EgressBitrateEstimate(str0m::bwe::BweKind::Twcc(b)) => {
                        let now = Instant::now();
                        let current = s.video_path.clone();
                        if let Some(l) = s.ladder.as_mut()
                            && let Some(m) = l.estimate(&current, b.as_u64(), now)
                        {
                            let dir = if m == ladder::Move::Up { "up" } else { "down" };
                            tracing::debug!(session = %id, estimate = b.as_u64(), to = ?l.switch_to, dir, "rendition move");
                        }
                    }
                    Event::KeyframeRequest(_) => {
                        // RTMP cannot ask the teacher's encoder for a keyframe: the stream's
                        // next one answers it (counted from the egress stats).
                    }
                    Event::MediaEgressStats(st) => {
                        let m = &self.ctx.metrics;
                        let last = s.stats.entry(st.mid).or_default();
                        m.webrtc_bytes.inc_by(st.bytes.saturating_sub(last.0));
                        m.webrtc_packets.inc_by(st.packets.saturating_sub(last.1));
                        m.webrtc_nacks.inc_by(st.nacks.saturating_sub(last.2));
                        m.webrtc_plis
                            .inc_by((st.plis + st.firs).saturating_sub(last.3));
                        *last = (st.bytes, st.packets, st.nacks, st.plis + st.firs);
                        // A viewer keeps counting while its session lives.
                    }
                    _ => {}
                },
                Err(e) => {
                    tracing::debug!(session = %id, error = %e, "webrtc session failed");
                    s.rtc.disconnect();
                }
            }
        }
        if connected_now && s.publisher.is_some() {
            // A decoder starts at a keyframe: ask for one now rather than wait for the GOP.
            if let Some((mid, _)) = s.video
                && let Some(mut w) = s.rtc.writer(mid)
            {
                let _ = w.request_keyframe(None, KeyframeRequestKind::Pli);
            }
            tracing::info!(session = %id, path = %s.path, "whip session connected; media flowing");
            return;
        }
        if connected_now {
            if let Some(l) = &s.ladder {
                let desired = str0m::bwe::Bitrate::bps(l.desired_bps(&s.video_path));
                s.rtc.bwe().set_desired_bitrate(desired);
            }
            let (path, viewer) = (s.path.clone(), s.viewer.clone());
            self.ctx.viewers.hold(&viewer);
            self.ctx.metrics.webrtc_sessions.inc();
            tracing::info!(session = %id, %path, "webrtc session connected; media flowing");
            self.start(id);
        }
    }

    fn command(&mut self, c: Command) {
        match c {
            Command::Open { session, reply } => {
                let _ = reply.send(self.open(session));
            }
            Command::Close { id, reply } => {
                let found = match self.sessions.get_mut(&id) {
                    Some(s) => {
                        s.rtc.disconnect();
                        true
                    }
                    None => false,
                };
                self.reap();
                let _ = reply.send(found);
            }
            Command::Candidates {
                id,
                candidates,
                reply,
            } => {
                let r = match self.sessions.get_mut(&id) {
                    Some(s) if s.remote_candidates + candidates.len() > MAX_CANDIDATES => {
                        Trickle::TooMany
                    }
                    Some(s) => {
                        s.remote_candidates += candidates.len();
                        for c in candidates {
                            s.rtc.add_remote_candidate(c);
                        }
                        Trickle::Added
                    }
                    None => Trickle::NotFound,
                };
                if matches!(r, Trickle::Added) {
                    self.drive(&id);
                }
                let _ = reply.send(r);
            }
        }
    }

    /// Admission and insert in one step on this task. One viewer (token id), one session: a
    /// new offer replaces the old one, so a token cannot fill the slave.
    fn open(&mut self, new: NewSession) -> Result<bool, Refusal> {
        let NewSession {
            id,
            rtc,
            stream,
            viewer,
            client,
            candidates,
            publisher,
        } = new;
        let now = Instant::now();
        let path: Arc<str> = stream.path.as_str().into();
        if publisher.is_some() {
            // A publisher takes no viewer slot and no stream feed; one per class is checked
            // before it gets here (`publish::authorize`).
            self.sessions.insert(
                id.clone(),
                Session::new(rtc, path, viewer, candidates, now, publisher),
            );
            self.drive(&id);
            return Ok(false);
        }
        let earlier: Vec<String> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.viewer == viewer)
            .map(|(id, _)| id.clone())
            .collect();
        let replaced = !earlier.is_empty();
        for old in earlier {
            if let Some(s) = self.sessions.get_mut(&old) {
                s.rtc.disconnect();
            }
        }
        if replaced {
            self.reap();
        }
        let cap = self.ctx.cfg.webrtc.max_viewers;
        if !self.load.try_admit(cap) {
            return Err(Refusal::Full);
        }
        if let Some(ip) = client
            && !self.pending.try_take(ip, max_pending_per_addr(cap))
        {
            self.load.leave();
            return Err(Refusal::PendingFromAddress);
        }
        let ladder = ladder::Ladder::of(&stream);
        self.subscribe(&stream);
        let mut session = Session::new(rtc, path, viewer, candidates, now, None);
        session.pending = client;
        if let Some(l) = ladder {
            // Every rendition's frames come in; the viewer starts on the one under the
            // initial estimate.
            for (_, r) in stream.ladder() {
                self.subscribe(&r);
            }
            session.video_path = l.fitting(ladder::INITIAL_ESTIMATE_BPS);
            session.ladder = Some(l);
        }
        self.sessions.insert(id.clone(), session);
        self.drive(&id);
        Ok(replaced)
    }

    /// Drops sessions that ended, and streams nobody here watches any more.
    fn reap(&mut self) {
        let dead: Vec<String> = self
            .sessions
            .iter()
            .filter(|(_, s)| !s.rtc.is_alive())
            .map(|(id, _)| id.clone())
            .collect();
        if dead.is_empty() {
            return;
        }
        for id in dead {
            let s = self.sessions.remove(&id).expect("listed");
            if let Some(ip) = s.pending {
                self.pending.give_back(ip);
            }
            if s.publisher.is_some() {
                // Dropping it closes the publisher's queue: the class's grace period starts.
                tracing::info!(session = %id, path = %s.path, "whip session ended");
                continue;
            }
            self.load.leave();
            if s.connected {
                self.ctx.viewers.release(&s.viewer);
                self.ctx.metrics.webrtc_sessions.dec();
            }
            tracing::info!(session = %id, path = %s.path, "webrtc session ended");
            let feeds: Vec<Arc<str>> = match &s.ladder {
                Some(l) => l.renditions.iter().map(|(p, _)| p.clone()).collect(),
                None => vec![s.path.clone()],
            };
            for path in feeds {
                if let Some(f) = self.streams.get_mut(&path) {
                    f.sessions -= 1;
                    if f.sessions == 0 {
                        f.forwarder.abort();
                        self.streams.remove(&path);
                        self.ctx.metrics.opus_transcoders.dec();
                    }
                }
            }
        }
        let sessions = &self.sessions;
        let tcp = &mut self.tcp;
        self.by_addr.retain(|(proto, peer), id| {
            let live = sessions.contains_key(id);
            if !live && *proto == Protocol::Tcp {
                tcp.closed(peer);
            }
            live
        });
    }

    /// Runs `write` on every connected viewer session `takes`; returns the ones written to.
    fn write_all(
        &mut self,
        takes: impl Fn(&Session) -> bool,
        mut write: impl FnMut(&mut Session) -> bool,
    ) -> Vec<String> {
        self.sessions
            .iter_mut()
            // A WHIP publisher of the same class receives; it is never written to.
            .filter(|(_, s)| s.connected && takes(s) && s.publisher.is_none() && s.rtc.is_alive())
            .filter_map(|(id, s)| write(s).then(|| id.clone()))
            .collect()
    }

    fn drive_all(&mut self, ids: Vec<String>) {
        for id in ids {
            self.drive(&id);
        }
    }
}
