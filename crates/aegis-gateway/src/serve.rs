//! HTTPS for the axum router over aegis-transport's acceptor (TLS 1.3 only, handshake timeouts,
//! bounded handshakes and connections) with hyper's header-read and keep-alive timers, and the
//! response headers every answer carries.

use aegis_transport::{PeerInfo, TlsIncoming};
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;

/// How long a connection may stay silent before its next request's headers (HTTP/1.1; hyper
/// starts the clock as soon as it waits for a request), and the HTTP/2 ping interval and
/// timeout: idle connections cannot keep the bounded connection slots forever.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Serves `app` on every connection `incoming` yields until `shutdown` resolves, then lets
/// requests in progress finish (up to 10 s). HTTP/2 when ALPN chose it, HTTP/1.1 otherwise, with
/// hyper's timers on: headers must arrive within `idle_timeout` (so an idle connection is
/// closed after it), HTTP/2 peers must answer pings.
pub async fn run<F>(
    mut incoming: TlsIncoming,
    app: axum::Router,
    idle_timeout: std::time::Duration,
    shutdown: F,
) where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    // One builder per protocol, chosen by the connection's ALPN: hyper's version sniffing
    // would wait for the first bytes without a timeout, before any of the timers below apply.
    let mut h1 = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).http1_only();
    h1.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(idle_timeout)
        .keep_alive(true);
    let mut h2 = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).http2_only();
    h2.http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(idle_timeout)
        .keep_alive_timeout(std::time::Duration::from_secs(20))
        .max_concurrent_streams(64);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let conn = tokio::select! {
            c = incoming.accept() => match c {
                Some(c) => c,
                None => break,
            },
            () = &mut shutdown => break,
        };
        let builder = if conn.alpn_protocol() == Some(b"h2".as_slice()) {
            &h2
        } else {
            &h1
        };
        let peer = Peer(conn.peer_info());
        let router = app.clone();
        let service =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer.clone()));
                let mut router = router.clone();
                // A Router is always ready; `call` needs no `poll_ready` first.
                tower_service::Service::call(&mut router, req)
            });
        let served = builder
            .serve_connection(TokioIo::new(conn), service)
            .into_owned();
        let watched = graceful.watch(served);
        tokio::spawn(async move {
            if let Err(e) = watched.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(incoming);
    if tokio::time::timeout(std::time::Duration::from_secs(10), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections did not finish within 10 s");
    }
}

/// The peer of a request: address and verified client certificate, if any
/// (`ConnectInfo<Peer>` in handlers).
#[derive(Clone, Debug)]
pub struct Peer(pub PeerInfo);

impl std::ops::Deref for Peer {
    type Target = PeerInfo;
    fn deref(&self) -> &PeerInfo {
        &self.0
    }
}

/// The dashboard's and API's Content-Security-Policy: everything from the gateway itself, no
/// inline script, nothing framed.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// Adds security headers (HSTS, no sniffing, no framing, no referrer, CSP unless the route set
/// its own) and counts responses by status class.
pub async fn headers(
    axum::extract::State(state): axum::extract::State<std::sync::Arc<crate::state::AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let mut res = next.run(req).await;
    let class = (res.status().as_u16() / 100).clamp(1, 5) as usize - 1;
    if let Some(c) = state.metrics.responses.get(class) {
        c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    let h = res.headers_mut();
    h.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(CSP));
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    h.insert(
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    res
}
