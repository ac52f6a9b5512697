//! The pages people use: student player (`/`), teacher console (`/teacher`), cluster dashboard
//! (`/admin`). Plain HTML/JS compiled into the binary, with hls.js bundled (never a CDN).

use axum::Router;
use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;

use crate::AppState;

pub fn router() -> Router<AppState> {
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
