//! A node's listeners: plain HTTP, and with TLS on the HTTPS one beside it, the plain port
//! then only redirecting (and answering `/health` and ACME challenges).

use std::io;
use std::sync::Arc;

use axum::Router;
use tokio::net::TcpListener;

use crate::http::{ConnTable, HttpLimits, Transport, serve};

/// A node's HTTPS listener, with the ACME HTTP-01 answers its plain port serves when its
/// certificate comes from ACME.
pub struct Https {
    pub listener: TcpListener,
    pub acceptor: crate::tls::TlsAcceptor,
    pub acme: Option<Arc<crate::acme::Http01>>,
}

/// A node's HTTP listeners: the plain one, and with TLS on the HTTPS one, whose port the plain
/// one redirects to. Both share `table`, so the connection cap counts them together.
pub async fn serve_node(
    plain: TcpListener,
    https: Option<Https>,
    app: Router,
    limits: HttpLimits,
    table: Arc<ConnTable>,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let Some(https) = https else {
        return serve(plain, app, limits, table, Transport::Plain, shutdown).await;
    };
    let port = https.listener.local_addr()?.port();
    let plain_app = match &https.acme {
        Some(h) => app.clone().merge(h.router()),
        None => app.clone(),
    };
    let (tx, rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let redirecting = serve(
        plain,
        redirect_to_https(plain_app, port),
        limits.clone(),
        table.clone(),
        Transport::Plain,
        stopped(rx.clone()),
    );
    let secure = serve(
        https.listener,
        app,
        limits,
        table,
        Transport::Tls(https.acceptor),
        stopped(rx),
    );
    let stop = async move {
        shutdown.await;
        let _ = tx.send(true);
    };
    let ((), a, b) = tokio::join!(stop, redirecting, secure);
    a.and(b)
}

/// With TLS on, the plain HTTP port answers `/health` (probes, load balancers) and ACME HTTP-01
/// challenges; every other request is sent to the same path on `https_port` (308 keeps the
/// method and body).
pub fn redirect_to_https(app: Router, https_port: u16) -> Router {
    app.layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| async move {
            let path = req.uri().path();
            if path == "/health" || path.starts_with("/.well-known/acme-challenge/") {
                return next.run(req).await;
            }
            use axum::response::IntoResponse;
            let host = req
                .headers()
                .get(hyper::header::HOST)
                .and_then(|h| h.to_str().ok())
                .and_then(host_of);
            let Some(host) = host else {
                return (
                    hyper::StatusCode::BAD_REQUEST,
                    "this port serves HTTPS clients only through a redirect, which needs a Host header",
                )
                    .into_response();
            };
            let port = if https_port == 443 { String::new() } else { format!(":{https_port}") };
            let pq = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
            (
                hyper::StatusCode::PERMANENT_REDIRECT,
                [(hyper::header::LOCATION, format!("https://{host}{port}{pq}"))],
            )
                .into_response()
        },
    ))
}

/// The host of a `Host` header, without its port; `None` when it is not a plain name or address.
fn host_of(h: &str) -> Option<&str> {
    let host = match h.strip_prefix('[') {
        Some(v6) => &h[..v6.find(']')? + 2],
        None => h.split(':').next()?,
    };
    let ok = !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'[' | b']' | b':'));
    ok.then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_hosts() {
        assert_eq!(host_of("school.example:8080"), Some("school.example"));
        assert_eq!(host_of("[::1]:8080"), Some("[::1]"));
        assert_eq!(host_of("10.0.0.5"), Some("10.0.0.5"));
        assert_eq!(host_of("evil.example/\r\nx"), None);
        assert_eq!(host_of(""), None);
    }
}
