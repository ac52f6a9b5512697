//! The pages people use: student player (`/`), teacher console (`/teacher`), cluster dashboard
//! (`/admin`). Plain HTML/JS compiled into the binary, with hls.js bundled (never a CDN).

use axum::Router;
use axum::extract::Path;
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
        .route("/static/{file}", get(asset))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .layer(axum::middleware::map_response(headers))
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
        "teacher.js" => (
            include_bytes!("../web/teacher.js"),
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
