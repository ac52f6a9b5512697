//! The HTTP accept loop both nodes run. axum's `serve` has no timer at all, and a server on a
//! school network must not let a client hold sockets open for free: by trickling a header
//! (slowloris), by never sending the body it announced, by never reading its response, or by
//! parking idle keep-alive sockets until the file descriptors run out. So connections are driven
//! by hyper directly, each one admitted to a [`ConnTable`] that bounds how many are open and
//! closes the idle ones first when the bound is reached.
//!
//! The deadlines, and what each one stops:
//! - `header_read_timeout` (hyper's): a request head must be complete within this time of the
//!   connection starting to wait for it (after accept, or after the previous response). An idle
//!   keep-alive connection is therefore closed when it passes with no new request. It does not
//!   run while a request is being answered, so a parked blocking reload is not affected.
//! - `idle_timeout`: no byte read or written for this long closes the connection, whatever it
//!   is doing: a body never sent, a response never read. It must be longer than the longest
//!   blocking reload a node parks (the slave keeps its holds under half of it).
//! - `max_connections`: at the cap, the connections with no request in flight that were quiet
//!   the longest are closed to make room; only when every connection is busy is the newcomer
//!   refused. There is no per-address cap: a whole school may share one NAT address.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;
use tower::ServiceExt;

#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// A client must send a complete request head within this time of the connection waiting
    /// for one (after accept or after the previous response): the slowloris guard, and the
    /// keep-alive idle limit.
    pub header_read_timeout: Duration,
    /// No byte in either direction for this long closes the connection.
    pub idle_timeout: Duration,
    /// Open connections at most; 0 sizes it from the file descriptor limit.
    pub max_connections: usize,
    /// Largest request head (and read buffer) a connection may hold.
    pub max_buf_size: usize,
    /// HTTP/2 streams in flight per connection.
    pub h2_max_streams: u32,
    /// How long a graceful shutdown waits for requests in flight.
    pub drain: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            max_connections: 0,
            max_buf_size: 64 * 1024,
            h2_max_streams: 128,
            drain: Duration::from_secs(2),
        }
    }
}

/// File descriptors kept back from the HTTP cap for RTMP, upstream pulls, files and the like.
const FD_RESERVE: u64 = 256;

/// Raises the soft file descriptor limit to the hard one and returns the new soft limit.
pub fn raise_fd_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 {
            return 1024;
        }
        if l.rlim_cur < l.rlim_max {
            let want = libc::rlimit {
                rlim_cur: l.rlim_max,
                rlim_max: l.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                l.rlim_cur = l.rlim_max;
            }
        }
        l.rlim_cur
    }
}

/// The connection cap a node gets when none is configured: three quarters of the descriptors
/// left after the reserve (a `classcast up` process holds a master and its slaves).
pub fn default_max_connections(fd_limit: u64) -> usize {
    (fd_limit.saturating_sub(FD_RESERVE) * 3 / 4).clamp(64, 1 << 20) as usize
}

/// One admitted connection, as the table and its task see it.
struct Slot {
    id: u64,
    /// Milliseconds since the table's epoch of the last byte read or written.
    last_io_ms: AtomicU64,
    in_flight: AtomicU32,
    evict: Notify,
}

/// What the accept loop did, for a node's metrics.
#[derive(Default)]
pub struct HttpCounters {
    pub open: AtomicU64,
    /// Idle connections closed to make room at the cap.
    pub evicted: AtomicU64,
    /// New connections refused because every open one was busy.
    pub refused: AtomicU64,
    /// Connections closed by the idle timeout.
    pub idle_closed: AtomicU64,
    /// TLS handshakes that failed, and that did not complete within the deadline.
    pub tls_failed: AtomicU64,
    pub tls_timed_out: AtomicU64,
}

impl HttpCounters {
    /// Prometheus text for `<prefix>_http_connections…` series.
    pub fn render(&self, prefix: &str) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "# HELP {prefix}_http_connections Open HTTP connections\n\
             # TYPE {prefix}_http_connections gauge\n\
             {prefix}_http_connections {}\n\
             # HELP {prefix}_http_connections_closed_total HTTP connections closed by a bound, by bound\n\
             # TYPE {prefix}_http_connections_closed_total counter\n\
             {prefix}_http_connections_closed_total{{reason=\"evicted_at_cap\"}} {}\n\
             {prefix}_http_connections_closed_total{{reason=\"refused_at_cap\"}} {}\n\
             {prefix}_http_connections_closed_total{{reason=\"idle\"}} {}\n\
             {prefix}_http_connections_closed_total{{reason=\"tls_handshake_failed\"}} {}\n\
             {prefix}_http_connections_closed_total{{reason=\"tls_handshake_deadline\"}} {}\n",
            g(&self.open),
            g(&self.evicted),
            g(&self.refused),
            g(&self.idle_closed),
            g(&self.tls_failed),
            g(&self.tls_timed_out),
        )
    }
}

/// The open connections, bounded.
pub struct ConnTable {
    slots: Mutex<HashMap<u64, Arc<Slot>>>,
    next_id: AtomicU64,
    epoch: Instant,
    max: usize,
    last_warn_ms: AtomicU64,
    pub counters: HttpCounters,
}

impl ConnTable {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            slots: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            epoch: Instant::now(),
            max: max.max(1),
            last_warn_ms: AtomicU64::new(0),
            counters: HttpCounters::default(),
        })
    }

    /// A table for `limits`: its cap, or one sized from the file descriptor limit (raised to
    /// the hard limit first).
    pub fn for_limits(limits: &HttpLimits) -> Arc<Self> {
        let fds = raise_fd_limit();
        let max = match limits.max_connections {
            0 => default_max_connections(fds),
            n => n,
        };
        Self::new(max)
    }

    pub fn max(&self) -> usize {
        self.max
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Admits a new connection, closing idle ones first when the table is full.
    fn admit(&self) -> Option<Arc<Slot>> {
        let mut slots = self.slots.lock();
        if slots.len() >= self.max {
            // Evict a small batch at once, so a flood does not pay a full scan per accept.
            let batch = (self.max / 64).clamp(1, 256);
            let mut idle: Vec<(u64, u64)> = slots
                .values()
                .filter(|s| s.in_flight.load(Ordering::Relaxed) == 0)
                .map(|s| (s.last_io_ms.load(Ordering::Relaxed), s.id))
                .collect();
            if idle.is_empty() {
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                self.warn_full("every connection is busy; refusing a new one");
                return None;
            }
            idle.sort_unstable();
            for (_, id) in idle.into_iter().take(batch) {
                if let Some(s) = slots.remove(&id) {
                    s.evict.notify_one();
                    self.counters.evicted.fetch_add(1, Ordering::Relaxed);
                }
            }
            self.warn_full("closing the longest-idle connections to make room");
        }
        let slot = Arc::new(Slot {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            last_io_ms: AtomicU64::new(self.now_ms()),
            in_flight: AtomicU32::new(0),
            evict: Notify::new(),
        });
        slots.insert(slot.id, slot.clone());
        self.counters
            .open
            .store(slots.len() as u64, Ordering::Relaxed);
        Some(slot)
    }

    fn remove(&self, id: u64) {
        let mut slots = self.slots.lock();
        slots.remove(&id);
        self.counters
            .open
            .store(slots.len() as u64, Ordering::Relaxed);
    }

    /// At most one line a second: under a flood the log must not become the bottleneck.
    fn warn_full(&self, what: &str) {
        let now = self.now_ms();
        let last = self.last_warn_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 1000
            && self
                .last_warn_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                max_connections = self.max,
                evicted = self.counters.evicted.load(Ordering::Relaxed),
                refused = self.counters.refused.load(Ordering::Relaxed),
                "HTTP connection cap reached: {what}"
            );
        }
    }
}

/// The socket, noting when a byte last moved.
struct TrackedIo {
    inner: TcpStream,
    slot: Arc<Slot>,
    epoch: Instant,
}

impl TrackedIo {
    fn touch(&self) {
        self.slot
            .last_io_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl AsyncRead for TrackedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl AsyncWrite for TrackedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Counts a request in flight on its connection until its response is produced (or the
/// request is dropped with the connection).
struct InFlight(Arc<Slot>);

impl InFlight {
    fn start(slot: &Arc<Slot>) -> Self {
        slot.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(slot.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a listener speaks: plain HTTP, or TLS (HTTP/2 or HTTP/1.1 by ALPN).
#[derive(Clone)]
pub enum Transport {
    Plain,
    Tls(crate::tls::TlsAcceptor),
}

/// `Strict-Transport-Security` on every HTTPS response: a year, the usual value once a site is
/// known to stay on HTTPS (subdomains are not ours to speak for).
const HSTS: &str = "max-age=31536000";

/// Serves `app` on `listener` until `shutdown` resolves. Handlers can extract
/// `ConnectInfo<SocketAddr>` (the peer's address). Over TLS the handshake must complete within
/// `header_read_timeout` of the accept, the same deadline a request head has.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    table: Arc<ConnTable>,
    transport: Transport,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_buf_size.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_streams)
        .max_header_list_size(limits.max_buf_size.max(8192) as u32)
        // An HTTP/2 connection has no per-request head deadline: a client that opened streams
        // and went silent is found by pings (and by the idle deadline below).
        .keep_alive_interval(limits.header_read_timeout)
        .keep_alive_timeout(limits.header_read_timeout);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (sock, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Some(slot) = table.admit() else {
                    drop(sock);
                    continue;
                };
                let _ = sock.set_nodelay(true);
                let io = TrackedIo { inner: sock, slot: slot.clone(), epoch: table.epoch };
                let conn = Conn { app: app.clone(), builder: builder.clone(), table: table.clone(), slot, peer, limits: limits.clone() };
                match &transport {
                    Transport::Plain => {
                        let fut = conn.serve(io, false, graceful.watcher());
                        tokio::spawn(fut);
                    }
                    Transport::Tls(acceptor) => {
                        let handshake = acceptor.accept(io);
                        let watcher = graceful.watcher();
                        tokio::spawn(async move {
                            let deadline = conn.limits.header_read_timeout;
                            match tokio::time::timeout(deadline, handshake).await {
                                Ok(Ok(tls)) => conn.serve(tls, true, watcher).await,
                                Ok(Err(e)) => {
                                    conn.table.counters.tls_failed.fetch_add(1, Ordering::Relaxed);
                                    tracing::debug!(peer = %conn.peer, error = %e, "TLS handshake failed");
                                    conn.table.remove(conn.slot.id);
                                }
                                Err(_) => {
                                    conn.table.counters.tls_timed_out.fetch_add(1, Ordering::Relaxed);
                                    tracing::debug!(peer = %conn.peer, "TLS handshake not completed within {deadline:?}");
                                    conn.table.remove(conn.slot.id);
                                }
                            }
                        });
                    }
                }
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(limits.drain, graceful.shutdown()).await;
    Ok(())
}

/// One admitted connection, before its protocol runs.
struct Conn {
    app: Router,
    builder: Builder<TokioExecutor>,
    table: Arc<ConnTable>,
    slot: Arc<Slot>,
    peer: SocketAddr,
    limits: HttpLimits,
}

impl Conn {
    /// Runs the connection until it ends, is evicted at the cap, or is idle too long.
    fn serve<I>(
        self,
        io: I,
        tls: bool,
        graceful: hyper_util::server::graceful::Watcher,
    ) -> impl Future<Output = ()> + Send + 'static
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Conn {
            app,
            builder,
            table,
            slot,
            peer,
            limits,
        } = self;
        let svc = {
            let slot = slot.clone();
            hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                let guard = InFlight::start(&slot);
                let call = app.clone().oneshot(req.map(axum::body::Body::new));
                async move {
                    let mut r = call.await;
                    drop(guard);
                    if tls && let Ok(resp) = &mut r {
                        resp.headers_mut()
                            .entry(hyper::header::STRICT_TRANSPORT_SECURITY)
                            .or_insert(hyper::header::HeaderValue::from_static(HSTS));
                    }
                    r
                }
            })
        };
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(io), svc)
            .into_owned();
        let conn = graceful.watch(conn);
        let idle = limits.idle_timeout.max(Duration::from_millis(100));
        async move {
            let mut conn = std::pin::pin!(conn);
            loop {
                let last = slot.last_io_ms.load(Ordering::Relaxed);
                let deadline = table.epoch + Duration::from_millis(last) + idle;
                tokio::select! {
                    _ = &mut conn => break,
                    _ = slot.evict.notified() => break,
                    _ = tokio::time::sleep_until(deadline) => {
                        if slot.last_io_ms.load(Ordering::Relaxed) == last {
                            table.counters.idle_closed.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(%peer, "closing an HTTP connection idle for {idle:?}");
                            break;
                        }
                    }
                }
            }
            table.remove(slot.id);
        }
    }
}

/// The origin (`scheme://host[:port]`, as browsers send it in `Origin`) of an http(s) URL; the
/// default port is left out, as browsers leave it out.
pub fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => ":80",
        "https" => ":443",
        _ => return None,
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    if authority.is_empty() || authority.contains('@') || authority.len() > 255 {
        return None;
    }
    let authority = authority.to_ascii_lowercase();
    let authority = authority.strip_suffix(default_port).unwrap_or(&authority);
    Some(format!("{scheme}://{authority}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        assert_eq!(
            origin_of("http://127.0.0.1:8000/x?y").as_deref(),
            Some("http://127.0.0.1:8000")
        );
        assert_eq!(
            origin_of("HTTPS://LMS.example.org:443").as_deref(),
            Some("https://lms.example.org")
        );
        assert_eq!(origin_of("ftp://x"), None);
        assert_eq!(origin_of("http://user@x"), None);
        assert_eq!(origin_of("http://"), None);
    }

    #[tokio::test]
    async fn the_cap_closes_the_longest_idle_connection_first() {
        let t = ConnTable::new(2);
        let a = t.admit().unwrap();
        let b = t.admit().unwrap();
        // `b` is busy, `a` idle: a newcomer takes `a`'s place.
        b.in_flight.fetch_add(1, Ordering::Relaxed);
        let c = t.admit().unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(100), a.evict.notified())
                .await
                .is_ok(),
            "the idle connection was not told to close"
        );
        // Now `b` and `c` are both busy: the next one is refused.
        c.in_flight.fetch_add(1, Ordering::Relaxed);
        assert!(t.admit().is_none());
        assert_eq!(t.counters.refused.load(Ordering::Relaxed), 1);
        assert_eq!(t.counters.evicted.load(Ordering::Relaxed), 1);
    }
}
