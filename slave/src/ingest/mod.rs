//! RTMP ingest: one task per connection, from TCP bytes through the rml_rtmp adapter and the
//! packager into the stream store, all on one thread of its own ([`IngestThread`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::tls::TlsAcceptor;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::runtime::Handle;

pub mod publish;

use self::publish::{Publishing, Refused};
use crate::ctx::SlaveCtx;
use media::rtmp::{self, RtmpEvent, RtmpSession, chunks, split_stream_key};

/// The RTMP connections' thread: a single-threaded runtime that owns the listener and every
/// publisher's socket, as an nginx worker does.
///
/// Why: on the shared multi-threaded runtime each RTMP message (~75 a second per stream) woke
/// a worker and, with the other worker idle, often a second one to steal it: with four
/// publishers, 79 context switches per stream-s and 0.91–2.0 % of a core per stream, against
/// 37 and 0.54–0.63 % with one worker (docs/benchmarks.md, "2026-12-02: issue 21"). A publisher
/// costs well under 1 % of a core here, so one thread is not what limits a slave. What ingest starts
/// that outlives a connection (the recorder, announcements, the grace timer) runs on the main
/// runtime (`main`), so that stopping ingest never cuts a recording short.
pub struct IngestThread {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    join: Option<std::thread::JoinHandle<()>>,
}

impl IngestThread {
    /// Moves the listeners (plain RTMP, RTMPS with its acceptor) to a new ingest thread; must be
    /// called from within the main runtime.
    pub fn start(
        ctx: Arc<SlaveCtx>,
        plain: Option<TcpListener>,
        tls: Option<(TcpListener, TlsAcceptor)>,
    ) -> std::io::Result<Self> {
        let main = Handle::current();
        let plain = plain.map(|l| l.into_std()).transpose()?;
        let tls = match tls {
            Some((l, a)) => Some((l.into_std()?, a)),
            None => None,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let join = std::thread::Builder::new()
            .name("rtmp-ingest".into())
            .spawn(move || {
                rt.block_on(async move {
                    // One cap for both listeners: a publisher is a publisher, in clear or not.
                    let slots = Arc::new(tokio::sync::Semaphore::new(ctx.cfg.rtmp.max_connections));
                    let mut listeners = Vec::new();
                    for (l, acceptor) in plain.map(|l| (l, None)).into_iter().chain(tls.map(|(l, a)| (l, Some(a)))) {
                        match TcpListener::from_std(l) {
                            Ok(l) => listeners.push(run_listener(ctx.clone(), l, acceptor, slots.clone(), main.clone())),
                            Err(e) => {
                                tracing::error!(error = %e, "rtmp listener could not join the ingest thread");
                                return;
                            }
                        }
                    }
                    tokio::select! {
                        _ = futures::future::join_all(listeners) => {}
                        _ = stopped => {}
                    }
                });
                // Connections still open are dropped here; their streams are ended by the
                // slave's shutdown.
                rt.shutdown_timeout(Duration::from_secs(1));
            })?;
        Ok(Self {
            stop: Some(stop),
            join: Some(join),
        })
    }

    /// Stops accepting and closes every RTMP connection.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(j) = self.join.take() {
            let _ = tokio::task::spawn_blocking(move || j.join()).await;
        }
    }
}

impl Drop for IngestThread {
    fn drop(&mut self) {
        // A slave dropped without `stop` (a test's task aborted) still ends its thread.
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Accepts RTMP connections, at most `max_connections` at once: past it a newcomer is closed at
/// once (a connection that has not published yet is closed at its publish deadline, so the room
/// it takes is bounded in time too).
async fn run_listener(
    ctx: Arc<SlaveCtx>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    slots: Arc<tokio::sync::Semaphore>,
    main: Handle,
) {
    let mut last_warn: Option<Instant> = None;
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "rtmp accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            ctx.metrics
                .rtmp_refusals
                .with_label_values(&["connection_cap"])
                .inc();
            if last_warn.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                last_warn = Some(Instant::now());
                tracing::warn!(%peer, max = ctx.cfg.rtmp.max_connections, "rtmp connection cap reached; refusing");
            }
            drop(sock);
            continue;
        };
        let ctx = ctx.clone();
        let main = main.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _slot = slot;
            ctx.metrics.rtmp_connections.inc();
            let kind = if tls.is_some() { "rtmps" } else { "rtmp" };
            let mut conn = Connection::new(ctx.clone(), peer, main, kind);
            sock.set_nodelay(true).ok();
            let res = match tls {
                None => conn.run(sock).await,
                // The TLS handshake is part of the RTMP handshake's deadline.
                Some(acceptor) => {
                    match tokio::time::timeout(
                        ctx.cfg.rtmp.handshake_timeout,
                        acceptor.accept(sock),
                    )
                    .await
                    {
                        Ok(Ok(tls)) => conn.run(tls).await,
                        Ok(Err(e)) => Err(anyhow::anyhow!("RTMPS: TLS handshake failed: {e}")),
                        Err(_) => {
                            ctx.metrics
                                .rtmp_refusals
                                .with_label_values(&["tls_handshake_deadline"])
                                .inc();
                            Err(anyhow::anyhow!(
                                "RTMPS: TLS handshake not completed in time"
                            ))
                        }
                    }
                }
            };
            conn.finish();
            ctx.metrics.rtmp_connections.dec();
            match res {
                Ok(()) => tracing::debug!(%peer, "rtmp connection closed"),
                Err(e) => tracing::warn!(%peer, error = %e, "rtmp connection closed with an error"),
            }
        });
    }
}

struct Connection {
    ctx: Arc<SlaveCtx>,
    peer: SocketAddr,
    publishing: Option<Publishing>,
    /// `rtmp` or `rtmps`: what the class's pages say the teacher publishes over.
    kind: &'static str,
    /// A publish key given in the connect's app (`live?key=…`), as in the tcUrl of a Reconnect
    /// Request: it takes precedence over the key in the stream name.
    app_key: Option<String>,
    /// Who the accepted publish key names and its recording choice, for a move.
    claims: Option<(String, Option<bool>)>,
    /// The main runtime: the synchronous handlers below enter it, so what they spawn
    /// (recorder, announcements, grace timer) lives there and not on the ingest thread.
    main: Handle,
}

impl Connection {
    fn new(ctx: Arc<SlaveCtx>, peer: SocketAddr, main: Handle, kind: &'static str) -> Self {
        Self {
            ctx,
            peer,
            publishing: None,
            kind,
            main,
            app_key: None,
            claims: None,
        }
    }

    async fn run<S: AsyncRead + AsyncWrite + Unpin>(&mut self, mut sock: S) -> anyhow::Result<()> {
        let limits = self.ctx.cfg.rtmp.clone();
        let mut session = RtmpSession::new(limits.limits.clone());
        let mut buf = vec![0u8; 64 * 1024];
        let accepted = Instant::now();
        let handshake_deadline = accepted + limits.handshake_timeout;
        // One deadline from accept to an accepted publish, whatever the peer sends meanwhile.
        let publish_deadline = accepted + limits.publish_timeout;
        let mut drain = self.ctx.drain_signal.subscribe();
        let mut asked_to_move = false;
        loop {
            let (timeout, why) = if session.publishing() {
                (limits.idle_timeout, "idle")
            } else if session.handshake_done() {
                let left = publish_deadline.saturating_duration_since(Instant::now());
                (left.min(limits.idle_timeout), "publish_deadline")
            } else {
                let left = handshake_deadline.min(publish_deadline);
                (
                    left.saturating_duration_since(Instant::now()),
                    "handshake_deadline",
                )
            };
            let read = tokio::time::timeout(timeout, sock.read(&mut buf));
            let read = tokio::select! {
                r = read => r,
                Ok(()) = drain.changed(), if !asked_to_move && *drain.borrow() => {
                    asked_to_move = true;
                    self.ask_to_move(&mut session).await;
                    let out = session.take_output();
                    if !out.is_empty() {
                        sock.write_all(&out).await?;
                    }
                    continue;
                }
            };
            let n = match read {
                Ok(Ok(0)) => return Ok(()),
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => {
                    self.ctx
                        .metrics
                        .rtmp_refusals
                        .with_label_values(&[why])
                        .inc();
                    match why {
                        "idle" => anyhow::bail!("idle for {timeout:?}"),
                        "publish_deadline" => anyhow::bail!(
                            "no accepted publish within {:?} of connecting",
                            limits.publish_timeout
                        ),
                        _ => anyhow::bail!("handshake not completed in time"),
                    }
                }
            };
            let events = session.feed(&buf[..n]);
            if let Err(e) = &events {
                let reason = match e {
                    rtmp::RtmpError::Chunk(chunks::ChunkError::ChunkSize(..)) => "chunk_size",
                    rtmp::RtmpError::Chunk(chunks::ChunkError::MessageTooLarge(..))
                    | rtmp::RtmpError::MessageTooLarge(..) => "message_too_large",
                    _ => "protocol",
                };
                self.ctx
                    .metrics
                    .rtmp_refusals
                    .with_label_values(&[reason])
                    .inc();
            }
            let out = session.take_output();
            if !out.is_empty() {
                sock.write_all(&out).await?;
            }
            let mut pending = std::collections::VecDeque::from(events?);
            while let Some(ev) = pending.pop_front() {
                let flow = {
                    let _main = self.main.enter();
                    self.handle(&mut session, ev)?
                };
                let out = session.take_output();
                if !out.is_empty() {
                    sock.write_all(&out).await?;
                }
                match flow {
                    Flow::Continue(more) => pending.extend(more),
                    Flow::Close(reason) => {
                        let _ = sock.flush().await;
                        // An encoder reads what the server says only between its own messages:
                        // what it still sends is read and dropped until it hangs up, for at most
                        // REFUSAL_LINGER, so that it sees the refusal instead of a reset.
                        let linger = tokio::time::Instant::now() + REFUSAL_LINGER;
                        while let Ok(Ok(n)) =
                            tokio::time::timeout_at(linger, sock.read(&mut buf)).await
                            && n > 0
                        {}
                        let _ = sock.shutdown().await;
                        anyhow::bail!("{reason}");
                    }
                }
            }
        }
    }

    fn handle(&mut self, session: &mut RtmpSession, ev: RtmpEvent) -> anyhow::Result<Flow> {
        let peer = self.peer;
        match ev {
            RtmpEvent::Connect { request_id, app } => {
                let (app, query) = app.split_once('?').unwrap_or((&app, ""));
                self.app_key = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("key="))
                    .map(str::to_string);
                if app.trim_end_matches('/') != common::APP {
                    tracing::warn!(%peer, %app, "rtmp connect refused: unknown app");
                    session.reject(
                        request_id,
                        "NetConnection.Connect.Rejected",
                        "unknown app; use /live",
                    )?;
                    return Ok(Flow::Close(format!("unknown app {app:?}")));
                }
                let caps = session.client_caps();
                if caps.enhanced {
                    tracing::info!(%peer, caps_ex = caps.caps_ex, fourccs = ?caps.fourccs, "an Enhanced RTMP client; the connect answer states what this server takes");
                }
                Ok(Flow::Continue(session.accept(request_id)?))
            }
            RtmpEvent::Publish {
                request_id,
                stream_key,
                ..
            } => match self.authorize_publish(&stream_key) {
                Ok(a) => {
                    let more = session.accept(request_id)?;
                    self.publishing = Some(Publishing::start(
                        &self.ctx,
                        &a.path,
                        a.record,
                        self.kind,
                        self.peer.to_string(),
                    ));
                    self.claims = Some((a.user, a.record));
                    Ok(Flow::Continue(more))
                }
                Err((code, why)) => {
                    let (name, _) = split_stream_key(&stream_key);
                    tracing::warn!(%peer, stream = %name, reason = %why, "publish refused");
                    self.ctx.metrics.publish_refusals.inc();
                    session.reject(request_id, code, &why)?;
                    Ok(Flow::Close(format!("publish refused: {why}")))
                }
            },
            RtmpEvent::Play {
                request_id,
                stream_key,
            } => {
                let (name, _) = split_stream_key(&stream_key);
                tracing::info!(%peer, stream = %name, "rtmp play refused: this server plays over HLS");
                session.reject(
                    request_id,
                    "NetStream.Play.Failed",
                    "play over HLS: /live/<name>/index.m3u8",
                )?;
                Ok(Flow::Close("rtmp play is not offered".into()))
            }
            RtmpEvent::PublishFinished => {
                self.stop_publishing("unpublished");
                Ok(Flow::Continue(Vec::new()))
            }
            RtmpEvent::Video { timestamp, data } => self.media(session, timestamp, data, true),
            RtmpEvent::Audio { timestamp, data } => self.media(session, timestamp, data, false),
            RtmpEvent::Metadata => Ok(Flow::Continue(Vec::new())),
        }
    }

    /// Checks the publish token in `name?key=TOKEN`, or the one the connect's app carried
    /// (see [`publish::authorize`]).
    fn authorize_publish(&self, stream_key: &str) -> Result<publish::Authorized, Refused> {
        if self.publishing.is_some() {
            return Err((
                publish::BAD_NAME,
                "this connection already publishes".into(),
            ));
        }
        let (name, key) = split_stream_key(stream_key);
        let key = self.app_key.as_deref().or(key);
        publish::authorize(&self.ctx, name, key, &self.peer.to_string())
    }

    /// This slave drains: a publisher that said it can reconnect (Enhanced RTMP `capsEx`) is
    /// asked to, to the slave the master names, with a publish key for it in the tcUrl. It
    /// keeps publishing here until it has moved; one that cannot is left to the drain.
    async fn ask_to_move(&mut self, session: &mut RtmpSession) {
        let (Some(p), Some((user, rec))) = (&self.publishing, self.claims.clone()) else {
            return;
        };
        let path = p.stream.path.clone();
        if session.client_caps().caps_ex & rtmp::enhanced::caps_ex::RECONNECT == 0 {
            tracing::info!(peer = %self.peer, %path, "draining: this publisher did not say it can reconnect; it stays until the drain ends");
            return;
        }
        let ctx = self.ctx.clone();
        let p2 = path.clone();
        // The master client lives on the main runtime.
        let target = self
            .main
            .spawn(async move { ctx.masters.move_publisher(&p2, &user, rec).await })
            .await
            .ok()
            .flatten();
        let Some(t) = target else {
            tracing::warn!(peer = %self.peer, %path, "draining: no master named another slave for this publisher");
            return;
        };
        let tc_url = format!("{}?key={}", t.rtmp_url.trim_end_matches('/'), t.key);
        match session.request_reconnect(
            &tc_url,
            "this server is shutting down; the class continues on another",
        ) {
            Ok(true) => {
                self.ctx.metrics.rtmp_reconnect_requests.inc();
                tracing::info!(peer = %self.peer, %path, to = %t.node_id, "draining: asked the publisher to reconnect to another slave");
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(peer = %self.peer, %path, error = %e, "reconnect request not sent")
            }
        }
    }

    fn media(
        &mut self,
        session: &mut RtmpSession,
        timestamp: u32,
        data: Bytes,
        video: bool,
    ) -> anyhow::Result<Flow> {
        let Some(p) = self.publishing.as_mut() else {
            return Ok(Flow::Continue(Vec::new()));
        };
        let Err(e) = p.media(timestamp, data, video) else {
            return Ok(Flow::Continue(Vec::new()));
        };
        // Only what no later message can mend comes back: say so to the encoder (an error
        // onStatus) and close. Accepting it would leave the class "waiting for the stream".
        let why = e.unsupported().unwrap_or_else(|| e.to_string());
        p.refused(&e, &why);
        session.fail_publish("NetStream.Publish.Rejected", &why)?;
        self.stop_publishing("codec refused");
        Ok(Flow::Close(format!("publish refused: {why}")))
    }

    fn stop_publishing(&mut self, why: &str) {
        if let Some(p) = self.publishing.take() {
            p.stop(why);
        }
    }

    fn finish(&mut self) {
        let _main = self.main.enter();
        self.stop_publishing("connection closed");
    }
}

/// How long a refused connection is kept open for its peer to read the refusal.
const REFUSAL_LINGER: Duration = Duration::from_secs(2);

enum Flow {
    Continue(Vec<RtmpEvent>),
    Close(String),
}
