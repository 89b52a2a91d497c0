//! HTTPS for axum over aegis-transport's acceptor (TLS 1.3 only, handshake timeouts, bounded
//! handshakes and connections), and the response headers every answer carries.

use std::net::SocketAddr;

use aegis_transport::{PeerInfo, TlsConn, TlsIncoming};
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use axum::serve::IncomingStream;

/// axum's listener over established TLS connections.
pub struct TlsListener {
    incoming: TlsIncoming,
    addr: SocketAddr,
}

impl TlsListener {
    /// Wraps an acceptor.
    pub fn new(incoming: TlsIncoming) -> std::io::Result<TlsListener> {
        let addr = incoming.local_addr()?;
        Ok(TlsListener { incoming, addr })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsConn;
    type Addr = PeerInfo;

    async fn accept(&mut self) -> (TlsConn, PeerInfo) {
        match self.incoming.accept().await {
            Some(conn) => {
                let peer = conn.peer_info();
                (conn, peer)
            }
            // The accept task ended (its listener failed): accept nothing more; graceful
            // shutdown still ends the server.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<PeerInfo> {
        Ok(PeerInfo {
            remote_addr: self.addr,
            client_id: None,
            certificate: None,
        })
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

impl axum::extract::connect_info::Connected<IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Peer {
        Peer(stream.remote_addr().clone())
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
