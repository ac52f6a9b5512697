//! Class Q&A: students ask, the teacher answers everyone, hides, pins, mutes, and chooses
//! whether students see each other's messages. The class's origin orders and keeps the log
//! (`crate::hls::messages::ChatLog`, kept beside the class's stream); an edge mirrors it over one long response from its upstream, as it
//! mirrors media, and forwards its students' posts there. Pages read over Server-Sent Events
//! with their own token and resume by event id on any slave, so a student who moves slave
//! misses nothing and sees nothing twice.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use common::ApiError;
use common::token::{Action, Claims, Role};
use futures::StreamExt;
use serde::Deserialize;

use crate::ctx::SlaveCtx;
use crate::hls::messages::{self as log, ClassChat, Event, EventKind, Refusal, visible};
use crate::hls::store::{Source, StreamEntry};
use crate::serve::PeerAuth;

/// How long an edge keeps its mirror's link with no reader left.
const LINGER: Duration = Duration::from_secs(10);

pub fn router(ctx: &Arc<SlaveCtx>) -> Router<Arc<SlaveCtx>> {
    let c = ctx.clone();
    // The pages run on a master's origin: the cluster's page origins may read and post.
    let cors = tower_http::cors::CorsLayer::new()
        .allow_origin(tower_http::cors::AllowOrigin::predicate(move |o, _| {
            o.to_str().is_ok_and(|o| c.allows_origin(o))
        }))
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION])
        .max_age(Duration::from_secs(600));
    Router::new()
        .route("/live/{name}/chat", get(read).post(ask))
        .route("/live/{name}/chat/moderate", post(moderate))
        .layer(cors)
        .route("/internal/chat/live/{name}", get(feed).post(forwarded))
}

#[derive(Deserialize)]
struct ChatQuery {
    jwt: Option<String>,
    /// Resume after this event id (as `Last-Event-ID` does).
    after: Option<u64>,
}

/// The caller's token for this class on this node (read role; a teacher's token is a
/// teacher's), from `?jwt=` (EventSource sends no headers) or `Authorization: Bearer`.
fn claims(
    ctx: &SlaveCtx,
    path: &str,
    q: &ChatQuery,
    headers: &HeaderMap,
) -> Result<Arc<Claims>, ApiError> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let token = q.jwt.as_deref().or(bearer);
    let verifier = ctx.verifier().ok_or_else(|| {
        ApiError::unavailable(
            "not_registered",
            "this node has not registered with the master yet",
        )
    })?;
    Ok(verifier.authorize(token, &ctx.cfg.node_id, path, Action::Read)?)
}

async fn class(ctx: &Arc<SlaveCtx>, name: &str) -> Result<(String, Arc<StreamEntry>), ApiError> {
    let path = common::stream_path(name)
        .ok_or_else(|| ApiError::not_found("not_found", "no such class"))?;
    let entry = ctx
        .find_stream(&path)
        .await
        .filter(|e| !e.stream.is_ended())
        .ok_or_else(|| {
            ApiError::not_found("stream_not_found", format!("{path} is not live here"))
        })?;
    Ok((path, entry))
}

/// Counts a reader for as long as its response lives.
struct Reader(Arc<SlaveCtx>);

impl Drop for Reader {
    fn drop(&mut self) {
        self.0.chat_readers.fetch_sub(1, Ordering::Relaxed);
        self.0.metrics.chat_readers.dec();
    }
}

/// `GET /live/{name}/chat`: the class's events this viewer may see, as Server-Sent Events.
async fn read(
    State(ctx): State<Arc<SlaveCtx>>,
    Path(name): Path<String>,
    Query(q): Query<ChatQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (path, entry) = class(&ctx, &name).await?;
    let claims = claims(&ctx, &path, &q, &headers)?;
    let max = ctx.cfg.chat_max_readers;
    if ctx.chat_readers.fetch_add(1, Ordering::Relaxed) >= max {
        ctx.chat_readers.fetch_sub(1, Ordering::Relaxed);
        ctx.metrics
            .chat_refusals
            .with_label_values(&["readers_full"])
            .inc();
        return Err(ApiError::unavailable(
            "chat_full",
            format!("this slave serves {max} message readers (CHAT_MAX_READERS); ask the master for another"),
        )
        .retry_after(5));
    }
    ctx.metrics.chat_readers.inc();
    let guard = Reader(ctx.clone());
    if entry.source != Source::Origin {
        ensure_link(&ctx, &entry);
    }
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .or(q.after)
        .unwrap_or(0);
    let teacher = claims.role == Role::Teacher;
    let who = claims.sub.clone();
    let chat = entry.stream.chat.clone();
    let (backlog, rx) = chat.subscribe(after);
    let live = futures::stream::unfold(rx, |mut rx| async move {
        match rx.recv().await {
            Ok(e) => Some((e, rx)),
            // Fell behind: end; the page resumes by id from the log.
            Err(_) => None,
        }
    });
    let mut last = after;
    let metrics = ctx.clone();
    let events = futures::stream::iter(backlog)
        .chain(live)
        .filter_map(move |e| {
            let keep = e.id > last && {
                let chat_mode = chat.log.lock().chat_mode();
                visible(&e, teacher, &who, chat_mode)
            };
            if e.id > last {
                last = e.id;
            }
            let out = keep.then(|| {
                let _hold = &guard;
                metrics.metrics.chat_events_out.inc();
                let lag = common::now_unix_ms().saturating_sub(e.at_ms) as f64 / 1000.0;
                metrics.metrics.chat_delivery_seconds.observe(lag);
                Ok::<_, Infallible>(
                    SseEvent::default()
                        .id(e.id.to_string())
                        .data(serde_json::to_string(&*e).unwrap_or_default()),
                )
            });
            std::future::ready(out)
        });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(10)))
        .into_response())
}

#[derive(Deserialize)]
struct Ask {
    text: String,
}

/// `POST /live/{name}/chat` `{"text": …}`: a student's question (or the teacher's answer to
/// everyone). Checked here (length, mute, the viewer's rate), numbered at the origin.
async fn ask(
    State(ctx): State<Arc<SlaveCtx>>,
    Path(name): Path<String>,
    Query(q): Query<ChatQuery>,
    headers: HeaderMap,
    Json(body): Json<Ask>,
) -> Result<Response, ApiError> {
    let (path, entry) = class(&ctx, &name).await?;
    let claims = claims(&ctx, &path, &q, &headers)?;
    let teacher = claims.role == Role::Teacher;
    let viewer = crate::tickets::viewer_id(&claims.jti);
    let admitted = {
        let mut log = entry.stream.chat.log.lock();
        if teacher {
            log::check_text(&body.text)
        } else {
            log.admit(&viewer, &claims.sub, &body.text, Instant::now())
        }
    };
    admitted.map_err(|r| refusal(&ctx, r))?;
    let post = Forward {
        from: claims.sub.clone(),
        teacher,
        text: body.text,
    };
    let id = send_on(&ctx, &entry, &name, post).await?;
    ctx.metrics.chat_messages_in.inc();
    Ok((StatusCode::CREATED, Json(serde_json::json!({ "id": id }))).into_response())
}

fn refusal(ctx: &SlaveCtx, r: Refusal) -> ApiError {
    let (label, e) = match r {
        Refusal::Empty => ("empty", ApiError::bad_request("the message is empty")),
        Refusal::TooLong => (
            "too_long",
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_long",
                format!("a message has at most {} characters", log::MAX_TEXT),
            ),
        ),
        Refusal::Muted => (
            "muted",
            ApiError::new(
                StatusCode::FORBIDDEN,
                "muted",
                "the teacher has muted you for this class",
            ),
        ),
        Refusal::TooFast(secs) => (
            "rate",
            ApiError::too_many(
                "too_fast",
                format!(
                    "one message every {} s; try again in {secs} s",
                    log::REFILL_MS / 1000.0
                ),
                secs,
            ),
        ),
    };
    ctx.metrics.chat_refusals.with_label_values(&[label]).inc();
    e
}

#[derive(serde::Serialize, Deserialize)]
struct Forward {
    from: String,
    teacher: bool,
    text: String,
}

/// At the origin: numbered and kept. At an edge: sent to the upstream with the cluster secret
/// (which sends it on, if it is an edge too).
async fn send_on(
    ctx: &Arc<SlaveCtx>,
    entry: &Arc<StreamEntry>,
    name: &str,
    post: Forward,
) -> Result<u64, ApiError> {
    if entry.source == Source::Origin {
        if !post.teacher && entry.stream.chat.log.lock().is_muted(&post.from) {
            return Err(refusal(ctx, Refusal::Muted));
        }
        let e = entry.stream.chat.append(EventKind::Message {
            from: post.from,
            teacher: post.teacher,
            text: post.text,
        });
        return Ok(e.id);
    }
    let upstream = entry.stream.frames.upstream.get().cloned().ok_or_else(|| {
        ApiError::unavailable("no_upstream", "this class's origin is not known here yet")
    })?;
    let url = format!(
        "{}/internal/chat/live/{name}",
        upstream.trim_end_matches('/')
    );
    let r = ctx
        .http
        .post(&url)
        .header("authorization", ctx.cfg.secret.bearer())
        .timeout(Duration::from_secs(5))
        .json(&post)
        .send()
        .await
        .map_err(|e| {
            ApiError::unavailable("origin_unreachable", format!("the class's origin: {e}"))
        })?;
    let status = r.status();
    let v: serde_json::Value = r.json().await.unwrap_or_default();
    if !status.is_success() {
        let code = StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let msg = v["message"]
            .as_str()
            .unwrap_or("refused at the origin")
            .to_string();
        return Err(ApiError::new(code, "refused_at_origin", msg));
    }
    v["id"]
        .as_u64()
        .ok_or_else(|| ApiError::unavailable("origin_unreachable", "no id from the origin"))
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum Moderation {
    Hide(u64),
    Pin(Option<u64>),
    Mute(String),
    Mode(String),
}

/// `POST /live/{name}/chat/moderate` (the teacher's token, at the origin): `{"hide": id}`,
/// `{"pin": id | null}`, `{"mute": "name"}`, `{"mode": "chat" | "qa"}`.
async fn moderate(
    State(ctx): State<Arc<SlaveCtx>>,
    Path(name): Path<String>,
    Query(q): Query<ChatQuery>,
    headers: HeaderMap,
    Json(m): Json<Moderation>,
) -> Result<Response, ApiError> {
    let (path, entry) = class(&ctx, &name).await?;
    let claims = claims(&ctx, &path, &q, &headers)?;
    if claims.role != Role::Teacher {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "not_teacher",
            "only the class's teacher moderates",
        ));
    }
    if entry.source != Source::Origin {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_origin",
            "moderate at the class's origin",
        ));
    }
    let kind = match m {
        Moderation::Hide(message) => EventKind::Hide { message },
        Moderation::Pin(message) => EventKind::Pin { message },
        Moderation::Mute(name) if !name.is_empty() && name.len() <= 128 => EventKind::Mute { name },
        Moderation::Mode(m) if m == "chat" || m == "qa" => EventKind::Mode { chat: m == "chat" },
        _ => {
            return Err(ApiError::bad_request(
                "hide, pin, mute (a name) or mode (chat or qa)",
            ));
        }
    };
    let e = entry.stream.chat.append(kind);
    Ok((StatusCode::CREATED, Json(serde_json::json!({ "id": e.id }))).into_response())
}

/// `GET /internal/chat/live/{name}?after=N` (cluster secret): every event, for an edge's mirror.
async fn feed(
    State(ctx): State<Arc<SlaveCtx>>,
    _: PeerAuth,
    Path(name): Path<String>,
    Query(q): Query<ChatQuery>,
) -> Result<Response, ApiError> {
    let (_, entry) = class(&ctx, &name).await?;
    if entry.source != Source::Origin {
        ensure_link(&ctx, &entry);
    }
    let (backlog, rx) = entry.stream.chat.subscribe(q.after.unwrap_or(0));
    let live =
        futures::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.ok().map(|e| (e, rx)) },
        );
    let events = futures::stream::iter(backlog).chain(live).map(|e| {
        Ok::<_, Infallible>(
            SseEvent::default().data(serde_json::to_string(&*e).unwrap_or_default()),
        )
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(10)))
        .into_response())
}

/// `POST /internal/chat/live/{name}` (cluster secret): an edge's student's post, checked there.
async fn forwarded(
    State(ctx): State<Arc<SlaveCtx>>,
    _: PeerAuth,
    Path(name): Path<String>,
    Json(post): Json<Forward>,
) -> Result<Response, ApiError> {
    let (_, entry) = class(&ctx, &name).await?;
    log::check_text(&post.text).map_err(|r| refusal(&ctx, r))?;
    let id = send_on(&ctx, &entry, &name, post).await?;
    Ok((StatusCode::CREATED, Json(serde_json::json!({ "id": id }))).into_response())
}

/// Starts an edge's mirror of its upstream's log unless it runs; it stops once nobody here
/// has read for [`LINGER`].
fn ensure_link(ctx: &Arc<SlaveCtx>, entry: &Arc<StreamEntry>) {
    let Some(upstream) = entry.stream.frames.upstream.get().cloned() else {
        return;
    };
    let chat = entry.stream.chat.clone();
    if chat.linked.swap(true, Ordering::AcqRel) {
        return;
    }
    let ctx = ctx.clone();
    let stream = entry.stream.clone();
    tokio::spawn(async move {
        let name = stream.path.trim_start_matches("live/").to_string();
        let mut idle_since: Option<Instant> = None;
        while !stream.is_ended() {
            let after = chat.log.lock().last_id();
            let url = format!(
                "{}/internal/chat/live/{name}?after={after}",
                upstream.trim_end_matches('/')
            );
            if let Err(e) = pull(&ctx, &chat, &url).await {
                tracing::info!(path = %stream.path, error = %e, "class messages link lost");
            }
            if chat.readers() == 0 {
                let since = *idle_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= LINGER {
                    break;
                }
            } else {
                idle_since = None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        chat.linked.store(false, Ordering::Release);
    });
}

/// One link: events in until the upstream ends it, or nobody here has read for LINGER.
async fn pull(ctx: &SlaveCtx, chat: &ClassChat, url: &str) -> anyhow::Result<()> {
    let resp = ctx.peer_stream(url).await?;
    let mut body = resp.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    let mut idle_since: Option<Instant> = None;
    loop {
        let chunk = match tokio::time::timeout(Duration::from_secs(1), body.next()).await {
            Ok(Some(c)) => c?,
            Ok(None) => return Ok(()),
            Err(_) => Default::default(),
        };
        buf.extend_from_slice(&chunk);
        // An event is `data: {json}` lines ended by a blank line; keep-alives are comments.
        anyhow::ensure!(
            buf.len() <= 64 * 1024,
            "an event over 64 KiB from the upstream"
        );
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let block: Vec<u8> = buf.drain(..end + 2).collect();
            for line in block.split(|b| *b == b'\n') {
                if let Some(json) = line.strip_prefix(b"data:") {
                    let e: Event = serde_json::from_slice(json.trim_ascii_start())?;
                    chat.mirror(Arc::new(e));
                }
            }
        }
        if chat.readers() == 0 {
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= LINGER {
                return Ok(());
            }
        } else {
            idle_since = None;
        }
    }
}
