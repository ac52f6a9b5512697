//! The pages people use: student player, teacher console, admin dashboard.

use axum::Router;
use axum::response::Html;
use axum::routing::get;

use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/", get(index))
}

async fn index() -> Html<&'static str> {
    Html("<!doctype html><title>classcast</title><h1>classcast master</h1>")
}
