//! The pages people use: student player (`/`), teacher console (`/teacher`), cluster dashboard
//! (`/admin`). Plain HTML/JS compiled into the binary, with hls.js bundled (never a CDN).

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;

use crate::state::AppState;

/// The pages' Content-Security-Policy: our own scripts and styles only (no inline code at all),
/// media from MSE blobs, playlists and parts from any slave, framing as configured.
pub fn content_security_policy(frame_ancestors: &str) -> String {
    format!(
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         media-src 'self' blob:; worker-src 'self' blob:; connect-src 'self' http: https:; \
         object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors {frame_ancestors}"
    )
}

pub fn router(st: AppState) -> Router<AppState> {
    // Tokens travel in URLs: no Referer may carry them to another site.
    let csp = HeaderValue::from_str(&content_security_policy(&st.cfg.frame_ancestors))
        .unwrap_or_else(|_| HeaderValue::from_static("frame-ancestors 'self'"));
    let headers = move |mut r: Response| {
        let csp = csp.clone();
        async move {
            let h = r.headers_mut();
            h.insert(header::CONTENT_SECURITY_POLICY, csp);
            h.insert(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            );
            h.insert(
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            );
            r
        }
    };
    Router::new()
        .route(
            "/",
            get(|| async { page(include_str!("../web/index.html")) }),
        )
        .route(
            "/teacher",
            get(|| async { page(include_str!("../web/teacher.html")) }),
        )
        .route(
            "/admin",
            get(|| async { page(include_str!("../web/admin.html")) }),
        )
        .route(common::api::paths::STUDENT_LINK, get(student_link))
        .route(common::api::paths::STUDENT_QR, get(student_qr))
        .route("/static/{file}", get(asset))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .layer(axum::middleware::map_response(headers))
}

#[derive(serde::Deserialize)]
struct LinkQuery {
    stream: String,
}

/// The link students open for a class: the master's public URL (`PUBLIC_URL`; `up --lan` sets
/// it to the machine's LAN address), else the host the teacher's browser used.
fn student_url(
    st: &AppState,
    headers: &axum::http::HeaderMap,
    stream: &str,
) -> Result<String, common::ApiError> {
    if !common::valid_stream_name(stream) {
        return Err(common::ApiError::bad_request("bad class name"));
    }
    let base = match &st.cfg.public_url {
        Some(u) => u.trim_end_matches('/').to_string(),
        None => {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .filter(|h| {
                    !h.is_empty()
                        && h.len() <= 255
                        && h.bytes().all(|b| {
                            b.is_ascii_alphanumeric()
                                || matches!(b, b'.' | b'-' | b':' | b'[' | b']')
                        })
                })
                .ok_or_else(|| common::ApiError::bad_request("no usable Host header"))?;
            format!("http://{host}")
        }
    };
    Ok(format!("{base}/?stream={stream}"))
}

async fn student_link(
    State(st): State<AppState>,
    headers: axum::http::HeaderMap,
    Query(q): Query<LinkQuery>,
) -> Result<Response, common::ApiError> {
    let url = student_url(&st, &headers, &q.stream)?;
    Ok(axum::Json(serde_json::json!({ "url": url })).into_response())
}

/// The student link as a QR code (SVG) for phones to scan off the teacher's screen.
async fn student_qr(
    State(st): State<AppState>,
    headers: axum::http::HeaderMap,
    Query(q): Query<LinkQuery>,
) -> Result<Response, common::ApiError> {
    let url = student_url(&st, &headers, &q.stream)?;
    let code = qrcode::QrCode::new(url.as_bytes())
        .map_err(|e| common::ApiError::bad_request(format!("no QR code for this link: {e}")))?;
    let svg = code
        .render::<qrcode::render::svg::Color>()
        .min_dimensions(256, 256)
        .quiet_zone(true)
        .build();
    Ok((
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        svg,
    )
        .into_response())
}

fn page(html: &'static str) -> Response {
    let mut r = Html(html).into_response();
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    r
}

async fn asset(Path(file): Path<String>) -> Response {
    let (body, ct): (&'static [u8], &str) = match file.as_str() {
        "app.css" => (include_bytes!("../web/app.css"), "text/css; charset=utf-8"),
        "student.js" => (
            include_bytes!("../web/student.js"),
            "text/javascript; charset=utf-8",
        ),
        "live-hls.js" => (
            include_bytes!("../web/live-hls.js"),
            "text/javascript; charset=utf-8",
        ),
        "teacher.js" => (
            include_bytes!("../web/teacher.js"),
            "text/javascript; charset=utf-8",
        ),
        "classchat.js" => (
            include_bytes!("../web/classchat.js"),
            "text/javascript; charset=utf-8",
        ),
        "golive.js" => (
            include_bytes!("../web/golive.js"),
            "text/javascript; charset=utf-8",
        ),
        "admin.js" => (
            include_bytes!("../web/admin.js"),
            "text/javascript; charset=utf-8",
        ),
        "hls.light.min.js" => (
            include_bytes!("../web/vendor/hls.light.min.js"),
            "text/javascript; charset=utf-8",
        ),
        _ => return (StatusCode::NOT_FOUND, "no such file").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, ct),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}
