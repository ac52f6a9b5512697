//! WebRTC playback (WHEP, draft-ietf-wish-whep): `POST /whep/live/{name}` with an SDP offer and
//! the viewer's node-bound token → `201 Created`, the answer, and a session URL for `PATCH`
//! (trickle ICE) and `DELETE`. ICE-lite; H.264 passed through, AAC → Opus once per stream and
//! engine. The media itself is driven by [`engine`]s, one per core, each a task with its own UDP
//! port and its sessions (sans-IO str0m); a viewer's sessions always go to the same engine.

pub mod admission;
mod engine;
mod feed;
mod session;
pub mod tcp;
pub mod transcode;
mod whip;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Extension, Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{patch, post};
use common::ApiError;
use common::token::Action;
use tokio::sync::{mpsc, oneshot};

use crate::ctx::SlaveCtx;

pub use crate::ctx::WebRtcConfig;
use crate::viewers::WebRtcLoad;

/// The default `MAX_WEBRTC_VIEWERS` per engine (one engine per core): what one core feeds with
/// room left for ingest, the transcoder and signalling (docs/benchmarks.md section 11).
pub const VIEWERS_PER_ENGINE: u32 = 100;

/// The handle the HTTP side talks to the engines through.
pub struct Whep {
    engines: Vec<EngineLink>,
    pub load: Arc<WebRtcLoad>,
    refusals: admission::RefusalLog,
    /// The DTLS certificate every session presents (made once at start).
    cert: Option<str0m::crypto::dtls::DtlsCert>,
    /// Sessions being set up at once: signalling never takes more than one core from the
    /// media, however many offers arrive together.
    setups: tokio::sync::Semaphore,
}

/// One engine, as the HTTP side reaches it.
struct EngineLink {
    cmds: mpsc::Sender<session::Command>,
    candidate: SocketAddr,
    /// The ICE-TCP passive candidate, for viewers whose network drops UDP.
    tcp_candidate: Option<SocketAddr>,
}

/// Binds the engines' UDP ports and starts them. The candidates' address is resolved once here.
pub async fn start(ctx: &Arc<SlaveCtx>) -> anyhow::Result<Option<Arc<Whep>>> {
    let cfg = &ctx.cfg.webrtc;
    if !cfg.enabled {
        return Ok(None);
    }
    let ip = resolve(&cfg.host).await?;
    // The candidate's own address when it is this host's: replies then leave from the address
    // the browser sent to, whatever interface routes back to it (a slave with several
    // addresses answering from another fails every ICE check over UDP). A public address
    // behind 1:1 NAT is not local: any address then.
    let bind_ip = match std::net::UdpSocket::bind((ip, 0)) {
        Ok(_) => ip,
        Err(_) => IpAddr::from([0u8; 4]),
    };
    let n = cfg.engines.max(1);
    let sockets = bind_udp(bind_ip, cfg.udp_ports, n).await?;
    let load = ctx.webrtc_load.clone();
    load.enabled.store(true, Ordering::Relaxed);
    let pending = Arc::new(admission::PendingByAddress::default());
    let mut engines = Vec::with_capacity(n);
    for socket in sockets {
        // A deeper send buffer rides out a burst (a keyframe to hundreds of viewers at once)
        // instead of dropping datagrams.
        let _ = set_send_buffer(&socket);
        let candidate = SocketAddr::new(ip, socket.local_addr()?.port());
        let (tx, rx) = mpsc::channel(256);
        let mut engine = engine::Engine::new(
            ctx.clone(),
            socket,
            candidate,
            load.clone(),
            pending.clone(),
        );
        // ICE-TCP on the same port number as the UDP socket (TCP's port space is its own).
        let mut tcp_candidate = None;
        if cfg.tcp {
            match tokio::net::TcpListener::bind((bind_ip, candidate.port())).await {
                Ok(l) => {
                    let c = SocketAddr::new(ip, candidate.port());
                    let max = cfg.max_viewers as usize / n + 20;
                    engine = engine.with_tcp(l, c, max);
                    tcp_candidate = Some(c);
                }
                Err(e) => tracing::warn!(
                    port = candidate.port(),
                    error = %e,
                    "webrtc: TCP port taken; viewers whose network drops UDP get LL-HLS (WEBRTC_TCP=false silences this)"
                ),
            }
        }
        tokio::spawn(engine.run(rx));
        tracing::info!(engine = engines.len(), %candidate, tcp = ?tcp_candidate, "webrtc engine ready");
        engines.push(EngineLink {
            cmds: tx,
            candidate,
            tcp_candidate,
        });
    }
    tracing::info!(engines = n, max = cfg.max_viewers, "webrtc (WHEP) ready");
    Ok(Some(Arc::new(Whep {
        engines,
        load,
        refusals: admission::RefusalLog::new(Duration::from_secs(10)),
        cert: str0m::crypto::from_feature_flags()
            .dtls_provider
            .generate_certificate(),
        setups: tokio::sync::Semaphore::new(1),
    })))
}

/// `n` UDP sockets: ports `lo`, `lo + 1`, … for one port given (any free ports for 0), or the
/// first `n` free ports of a range.
async fn bind_udp(
    ip: IpAddr,
    (lo, hi): (u16, u16),
    n: usize,
) -> anyhow::Result<Vec<tokio::net::UdpSocket>> {
    let mut sockets = Vec::with_capacity(n);
    if lo == 0 || lo >= hi {
        for k in 0..n {
            let port = if lo == 0 {
                0
            } else {
                lo.saturating_add(k as u16)
            };
            let s = tokio::net::UdpSocket::bind((ip, port)).await.map_err(|e| {
                anyhow::anyhow!(
                    "WEBRTC_UDP_PORT {port} (engine {k} of {n}: the engines take consecutive ports) on {ip}: {e}; set another port, fewer WEBRTC_ENGINES, or WEBRTC=false"
                )
            })?;
            sockets.push(s);
        }
        return Ok(sockets);
    }
    for port in lo..=hi {
        if let Ok(s) = tokio::net::UdpSocket::bind((ip, port)).await {
            sockets.push(s);
            if sockets.len() == n {
                return Ok(sockets);
            }
        }
    }
    anyhow::bail!(
        "WEBRTC_UDP_PORT_RANGE {lo}-{hi}: {} of the {n} UDP ports the engines need are free on {ip}; widen the range, set fewer WEBRTC_ENGINES, or WEBRTC=false",
        sockets.len()
    )
}

fn set_send_buffer(s: &tokio::net::UdpSocket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let size: libc::c_int = 8 << 20;
    // SAFETY: a valid fd and a c_int option value of the right length.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

async fn resolve(host: &str) -> anyhow::Result<IpAddr> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ip);
    }
    let mut addrs = tokio::net::lookup_host((host, 0))
        .await
        .map_err(|e| anyhow::anyhow!("WEBRTC_HOST {host:?} does not resolve: {e}"))?;
    addrs
        .find(|a| a.is_ipv4())
        .map(|a| a.ip())
        .ok_or_else(|| anyhow::anyhow!("WEBRTC_HOST {host:?} has no IPv4 address"))
}

/// 128 random bits (the session URL is the capability to end it, as the WHEP draft has it),
/// then the engine that holds the session.
fn session_id(engine: usize) -> String {
    let mut b = [0u8; 16];
    aws_lc_rs::rand::fill(&mut b).expect("system randomness");
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{hex}-{engine}")
}

/// The caller's `Authorization: Bearer` token for `path` on this node, for `action`: the
/// token's own error (401/403) otherwise.
fn bearer_claims(
    ctx: &SlaveCtx,
    headers: &HeaderMap,
    path: &str,
    action: Action,
) -> Result<Arc<common::token::Claims>, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let verifier = ctx.verifier().ok_or_else(|| {
        ApiError::unavailable(
            "not_registered",
            "this node has not registered with the master yet",
        )
    })?;
    Ok(verifier.authorize(token, &ctx.cfg.node_id, path, action)?)
}

impl Whep {
    /// The engine a key's sessions go to: always the same one for one viewer, so a new offer
    /// with the viewer's token replaces the old session in one step on that engine.
    fn engine_for(&self, key: &str) -> usize {
        // FNV-1a: stable, and spread enough over a class's random token ids.
        let h = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        (h % self.engines.len() as u64) as usize
    }

    /// The engine holding session `id` (named in its URL).
    fn engine_of(&self, id: &str) -> Option<&EngineLink> {
        let k: usize = id.rsplit_once('-')?.1.parse().ok()?;
        self.engines.get(k)
    }

    /// The engines' UDP candidates (what the firewall must let through).
    pub fn candidates(&self) -> Vec<SocketAddr> {
        self.engines.iter().map(|e| e.candidate).collect()
    }

    /// A session's state and answer from `offer`: on the blocking pool, one at a time, never on
    /// the engine's task. The outer error is ours (busy, stopped), the inner one the offer's.
    /// `bwe`: the initial bandwidth estimate, for a class sent as a ladder.
    async fn set_up(
        &self,
        engine: usize,
        offer: Bytes,
        bwe: Option<u64>,
    ) -> Result<anyhow::Result<(Box<str0m::Rtc>, String)>, ApiError> {
        let e = &self.engines[engine];
        let (local, local_tcp, cert) = (e.candidate, e.tcp_candidate, self.cert.clone());
        let _turn = tokio::time::timeout(SETUP_WAIT, self.setups.acquire())
            .await
            .map_err(|_| {
                ApiError::unavailable(
                    "busy",
                    "too many WebRTC offers at once; try again in a moment",
                )
            })?
            .map_err(|_| ApiError::unavailable("webrtc_down", "the WebRTC engine stopped"))?;
        tokio::task::spawn_blocking(move || {
            session::new_session(&offer, local, local_tcp, cert, bwe)
        })
        .await
        .map_err(|_| ApiError::internal("session setup panicked"))
    }
}

/// `201 Created` with the SDP answer and the session's URL, as WHEP and WHIP answer.
fn created(answer: String, location: &str) -> Response {
    let mut r = (StatusCode::CREATED, answer).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/sdp"),
    );
    if let Ok(v) = HeaderValue::from_str(location) {
        h.insert(header::LOCATION, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Longest an offer waits for its turn to be set up before 503 `busy`.
const SETUP_WAIT: Duration = Duration::from_secs(5);

/// Largest SDP offer taken: a browser's is 5–10 KB.
const MAX_OFFER: usize = 64 * 1024;

pub fn router(ctx: &Arc<SlaveCtx>, whep: Option<Arc<Whep>>) -> Router<Arc<SlaveCtx>> {
    let c = ctx.clone();
    // The student page runs on a master's origin and posts with a bearer token: a preflighted
    // cross-origin call, answered for the cluster's page origins only.
    let cors = tower_http::cors::CorsLayer::new()
        .allow_origin(tower_http::cors::AllowOrigin::predicate(move |o, _| {
            o.to_str().is_ok_and(|o| c.allows_origin(o))
        }))
        .allow_methods([Method::POST, Method::PATCH, Method::DELETE])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::IF_MATCH,
        ])
        .expose_headers([header::LOCATION, header::ETAG])
        .max_age(Duration::from_secs(600));
    Router::new()
        .route("/whep/live/{name}", post(offer))
        .route("/whep/session/{id}", patch(trickle).delete(end))
        .route("/whip/live/{name}", post(whip::publish))
        .route("/whip/session/{id}", patch(trickle).delete(end))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_OFFER))
        .layer(Extension(whep))
        .layer(cors)
}

/// Every refusal is counted; one line per reason per 10 s is logged (see `RefusalLog`).
fn refuse(
    ctx: &SlaveCtx,
    whep: Option<&Whep>,
    status: StatusCode,
    code: &'static str,
    msg: String,
) -> ApiError {
    count_refusal(ctx, whep, code, &format!("{status}: {msg}"));
    ApiError::new(status, code, msg)
}

/// Counts a refusal, and logs it unless its reason was logged in the last 10 s.
fn count_refusal(ctx: &SlaveCtx, whep: Option<&Whep>, code: &str, detail: &str) {
    ctx.metrics.webrtc_refusals.with_label_values(&[code]).inc();
    if let Some(skipped) = whep.map_or(Some(0), |w| w.refusals.admit(code)) {
        tracing::warn!(reason = code, %detail, not_logged_since_last = skipped, "whep request refused");
    }
}

/// The engine's handle, given to the routes by `router`'s layer (none with WEBRTC=false).
type EngineHandle = Extension<Option<Arc<Whep>>>;

async fn offer(
    State(ctx): State<Arc<SlaveCtx>>,
    Extension(whep): EngineHandle,
    conn: Option<Extension<ConnectInfo<SocketAddr>>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let path = format!("{}/{name}", common::APP);
    if !common::valid_stream_name(&name) {
        return Err(ApiError::not_found("not_found", "no such stream"));
    }
    let whep = whep.ok_or_else(|| {
        refuse(
            &ctx,
            None,
            StatusCode::NOT_FOUND,
            "webrtc_off",
            "this slave does not offer WebRTC (WEBRTC=false); play over LL-HLS".into(),
        )
    })?;
    let w = Some(&*whep);
    // The same token model as LL-HLS: bound to this node and this stream. The token's own
    // error (401/403) is the answer; the refusal is counted and logged as every other.
    let claims = bearer_claims(&ctx, &headers, &path, Action::Read)
        .inspect_err(|e| count_refusal(&ctx, Some(&whep), "token", &e.to_string()))?;
    if ctx.draining.load(Ordering::Relaxed) {
        return Err(refuse(
            &ctx,
            w,
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "this slave is shutting down; ask the master for another".into(),
        ));
    }
    // A cheap early answer; the engine makes the binding check when it inserts the session.
    if whep.load.sessions() >= ctx.cfg.webrtc.max_viewers {
        return Err(full(&ctx, w));
    }
    let entry = ctx
        .find_stream(&path)
        .await
        .filter(|e| !e.stream.is_ended())
        .ok_or_else(|| ApiError::not_found("not_found", "no such stream live here"))?;
    let ladder = entry.stream.ladder();
    if entry.source != crate::hls::store::Source::Origin {
        crate::frame_link::ensure(&ctx, &entry);
        for (_, r) in &ladder {
            if let Some(e) = ctx.store.get(&r.path) {
                crate::frame_link::ensure(&ctx, &e);
            }
        }
    }
    if !common::api::webrtc_codecs(&entry.stream.read().codecs) {
        return Err(refuse(&ctx, w, StatusCode::UNPROCESSABLE_ENTITY, "codec", "this class's video is HEVC or AV1, which is sent to players over LL-HLS only; play over LL-HLS (for WebRTC the teacher can choose H.264)".into()));
    }
    if entry.stream.frames.has_bframes() {
        return Err(refuse(&ctx, w, StatusCode::UNPROCESSABLE_ENTITY, "bframes", "this stream's encoder uses B-frames, which browsers cannot play over WebRTC; play over LL-HLS (the teacher can set B-frames to 0)".into()));
    }
    let text = std::str::from_utf8(&body).map_err(|_| {
        refuse(
            &ctx,
            w,
            StatusCode::BAD_REQUEST,
            "bad_offer",
            "the body is not an SDP offer".into(),
        )
    })?;
    let candidates = admission::check_offer(text).map_err(|e| {
        refuse(
            &ctx,
            w,
            StatusCode::UNPROCESSABLE_ENTITY,
            "offer_too_large",
            e.to_string(),
        )
    })?;
    let viewer = crate::tickets::viewer_id(&claims.jti);
    let k = whep.engine_for(&viewer);
    // Parsing the offer and building the session's state is the costly part of signalling.
    let (rtc, answer) = whep
        .set_up(
            k,
            body.clone(),
            (!ladder.is_empty()).then_some(engine::INITIAL_ESTIMATE_BPS),
        )
        .await
        .inspect_err(|e| count_refusal(&ctx, w, e.code, &e.message))?
        .map_err(|e| {
            refuse(
                &ctx,
                w,
                StatusCode::BAD_REQUEST,
                "bad_offer",
                format!("offer not accepted: {e}"),
            )
        })?;
    let (tx, rx) = oneshot::channel();
    let id = session_id(k);
    whep.engines[k]
        .cmds
        .send(session::Command::Open {
            session: session::NewSession {
                id: id.clone(),
                rtc,
                stream: entry.stream.clone(),
                viewer,
                client: conn.map(|Extension(ConnectInfo(a))| a.ip()),
                candidates,
                publisher: None,
            },
            reply: tx,
        })
        .await
        .map_err(|_| ApiError::unavailable("webrtc_down", "the WebRTC engine stopped"))?;
    match rx
        .await
        .map_err(|_| ApiError::unavailable("webrtc_down", "the WebRTC engine stopped"))?
    {
        Ok(replaced) => {
            tracing::info!(%path, session = %id, replaced, "whep session created");
        }
        Err(session::Refusal::Full) => return Err(full(&ctx, w)),
        Err(session::Refusal::PendingFromAddress) => {
            return Err(refuse(
                &ctx,
                w,
                StatusCode::TOO_MANY_REQUESTS,
                "pending_per_address",
                format!(
                    "{} WebRTC sessions from this address are still connecting; try again in a moment",
                    admission::max_pending_per_addr(ctx.cfg.webrtc.max_viewers)
                ),
            ));
        }
    }
    Ok(created(answer, &format!("/whep/session/{id}")))
}

fn full(ctx: &SlaveCtx, whep: Option<&Whep>) -> ApiError {
    refuse(
        ctx,
        whep,
        StatusCode::SERVICE_UNAVAILABLE,
        "webrtc_full",
        format!(
            "this slave's WebRTC sessions are full (MAX_WEBRTC_VIEWERS {}); play over LL-HLS or ask the master again",
            ctx.cfg.webrtc.max_viewers
        ),
    )
}

async fn end(
    State(_): State<Arc<SlaveCtx>>,
    Extension(whep): EngineHandle,
    Path(id): Path<String>,
) -> Result<(StatusCode, &'static str), ApiError> {
    let engine = whep
        .as_ref()
        .and_then(|w| w.engine_of(&id))
        .ok_or_else(|| ApiError::not_found("not_found", "no such session"))?;
    let (tx, rx) = oneshot::channel();
    let _ = engine
        .cmds
        .send(session::Command::Close { id, reply: tx })
        .await;
    match rx.await {
        // A body: ffmpeg's WHIP muxer reports an empty answer to its DELETE as an error.
        Ok(true) => Ok((StatusCode::OK, "session ended\n")),
        _ => Err(ApiError::not_found("not_found", "no such session")),
    }
}

/// Trickle ICE (`application/trickle-ice-sdpfrag`): the browser's candidates, one
/// `a=candidate:` line each. ICE-lite needs none (the browser's checks reach us first), but a
/// browser that sends them is answered as the draft asks. A session takes
/// `admission::MAX_CANDIDATES` in all; more are refused before any is parsed.
async fn trickle(
    State(ctx): State<Arc<SlaveCtx>>,
    Extension(whep): EngineHandle,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let whep = whep.ok_or_else(|| ApiError::not_found("not_found", "no such session"))?;
    let text =
        std::str::from_utf8(&body).map_err(|_| ApiError::bad_request("not an SDP fragment"))?;
    let too_many = || {
        refuse(
            &ctx,
            Some(&whep),
            StatusCode::UNPROCESSABLE_ENTITY,
            "too_many_candidates",
            format!(
                "a session takes at most {} ICE candidates",
                admission::MAX_CANDIDATES
            ),
        )
    };
    if admission::count_candidates(text) > admission::MAX_CANDIDATES {
        return Err(too_many());
    }
    let candidates = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("a="))
        .filter(|l| l.starts_with("candidate:"))
        .filter_map(|l| str0m::Candidate::from_sdp_string(l).ok())
        .collect();
    let engine = whep
        .engine_of(&id)
        .ok_or_else(|| ApiError::not_found("not_found", "no such session"))?;
    let (tx, rx) = oneshot::channel();
    let _ = engine
        .cmds
        .send(session::Command::Candidates {
            id,
            candidates,
            reply: tx,
        })
        .await;
    match rx.await {
        Ok(session::Trickle::Added) => Ok(StatusCode::NO_CONTENT),
        Ok(session::Trickle::TooMany) => Err(too_many()),
        _ => Err(ApiError::not_found("not_found", "no such session")),
    }
}
