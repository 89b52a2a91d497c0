//! Accepting TLS connections: TCP accept, the handshake in its own task under a timeout, a
//! bounded number of handshakes at once, and only established connections handed on.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::identity::{ClientId, ClientIdExt};

/// Default time a client has to complete the TLS handshake.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Default number of handshakes (and established connections not yet taken) at once.
pub const DEFAULT_MAX_HANDSHAKES: usize = 256;

/// Pause after a failed `accept` (e.g. out of file descriptors), so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// How [`TlsIncoming`] accepts.
#[derive(Clone, Debug)]
pub struct AcceptorConfig {
    /// Time a client has from the TCP accept to the end of the TLS handshake; a client that
    /// takes longer is disconnected.
    pub handshake_timeout: Duration,
    /// Handshakes in progress (plus established connections not yet taken from the
    /// [`TlsIncoming`]) at most; further TCP connections wait in the listen backlog.
    pub max_handshakes: usize,
    /// Drop connections whose client certificate names no client (`aegis://client/<id>`),
    /// including certificate-less ones. Use it with [`crate::tls::ClientAuth::Required`].
    pub require_client_id: bool,
    /// Open connections at most (established ones included, until they close); further TCP
    /// connections wait in the listen backlog. Bounds what idle connections can hold.
    pub max_connections: usize,
}

/// Default [`AcceptorConfig::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 16_384;

impl Default for AcceptorConfig {
    fn default() -> Self {
        AcceptorConfig {
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_handshakes: DEFAULT_MAX_HANDSHAKES,
            require_client_id: false,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// What the server knows of a connection's peer. With the `tonic` feature, tonic puts it in
/// every request's extensions (`request.extensions().get::<PeerInfo>()`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's address.
    pub remote_addr: SocketAddr,
    /// The client its certificate names, if any (see [`TlsConn::client_id`]).
    pub client_id: Option<ClientId>,
    /// The peer's end-entity certificate, verified against the CA during the handshake (for
    /// example to bind a SecAgg identity to it, [`crate::roster::roster_entry`]).
    pub certificate: Option<CertificateDer<'static>>,
}

/// An established server-side TLS connection: the stream, the peer address and the client
/// identity from its certificate (verified against the CA during the handshake).
///
/// Reads and writes go to the TLS stream.
#[derive(Debug)]
pub struct TlsConn {
    stream: TlsStream<TcpStream>,
    remote_addr: SocketAddr,
    client_id: Option<ClientId>,
    /// This connection's place under [`AcceptorConfig::max_connections`], freed on drop.
    _slot: OwnedSemaphorePermit,
}

impl TlsConn {
    /// The client named by the peer certificate's `aegis://client/<id>` URI SAN; `None` for
    /// a certificate-less client or a certificate that names no (or more than one) client.
    pub fn client_id(&self) -> Option<ClientId> {
        self.client_id
    }

    /// The peer's address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.remote_addr
    }

    /// The peer's address and client identity.
    pub fn peer_info(&self) -> PeerInfo {
        PeerInfo {
            remote_addr: self.remote_addr,
            client_id: self.client_id,
            certificate: self.peer_certificates().and_then(<[_]>::first).cloned(),
        }
    }

    /// The peer's certificate chain, end entity first, if it presented one.
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.stream.get_ref().1.peer_certificates()
    }

    /// The negotiated ALPN protocol (`h2` with the configurations of [`crate::tls`]).
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.stream.get_ref().1.alpn_protocol()
    }

    /// The tokio-rustls stream.
    pub fn get_ref(&self) -> &TlsStream<TcpStream> {
        &self.stream
    }

    /// The tokio-rustls stream, unwrapped.
    pub fn into_inner(self) -> TlsStream<TcpStream> {
        self.stream
    }
}

#[cfg(feature = "tonic")]
impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.peer_info()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// The established TLS connections of a listener, as an async iterator ([`TlsIncoming::accept`])
/// or a `Stream` of `io::Result<TlsConn>` (the shape of tonic's `serve_with_incoming`).
///
/// A background task accepts TCP connections and runs each handshake in a task of its own
/// under [`AcceptorConfig::handshake_timeout`]; failed and timed-out handshakes are logged at
/// debug level and dropped, so one slow or hostile client never holds up the others. At most
/// [`AcceptorConfig::max_handshakes`] handshakes run at once. Dropping the `TlsIncoming`
/// closes the listener and aborts the handshakes in progress.
#[derive(Debug)]
pub struct TlsIncoming {
    rx: mpsc::Receiver<TlsConn>,
    local_addr: io::Result<SocketAddr>,
    task: tokio::task::AbortHandle,
}

impl TlsIncoming {
    /// Accept on `listener` with `config` and the default [`AcceptorConfig`].
    ///
    /// # Panics
    /// Outside a Tokio runtime (it spawns the accept task).
    pub fn new(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> Self {
        Self::with_config(listener, config, AcceptorConfig::default())
    }

    /// Accept on `listener` with `config` and `opts`.
    ///
    /// # Panics
    /// Outside a Tokio runtime (it spawns the accept task).
    pub fn with_config(
        listener: TcpListener,
        config: Arc<rustls::ServerConfig>,
        opts: AcceptorConfig,
    ) -> Self {
        let local_addr = listener.local_addr();
        let max = opts.max_handshakes.max(1);
        let (tx, rx) = mpsc::channel(max);
        let task = tokio::spawn(accept_loop(
            listener,
            TlsAcceptor::from(config),
            AcceptorConfig {
                max_handshakes: max,
                ..opts
            },
            tx,
        ));
        TlsIncoming {
            rx,
            local_addr,
            task: task.abort_handle(),
        }
    }

    /// The listener's address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match &self.local_addr {
            Ok(a) => Ok(*a),
            Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
        }
    }

    /// The next established connection; `None` once the accept task has ended.
    pub async fn accept(&mut self) -> Option<TlsConn> {
        self.rx.recv().await
    }
}

impl Drop for TlsIncoming {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl tokio_stream::Stream for TlsIncoming {
    type Item = io::Result<TlsConn>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().rx.poll_recv(cx).map(|c| c.map(Ok))
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    opts: AcceptorConfig,
    tx: mpsc::Sender<TlsConn>,
) {
    let permits = Arc::new(Semaphore::new(opts.max_handshakes));
    let slots = Arc::new(Semaphore::new(opts.max_connections.max(1)));
    // Aborted (with every handshake in it) when this task is.
    let mut handshakes = JoinSet::new();
    loop {
        while handshakes.try_join_next().is_some() {}
        let slot = tokio::select! {
            () = tx.closed() => break,
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => break,
            },
        };
        let permit = tokio::select! {
            () = tx.closed() => break,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (tcp, peer) = tokio::select! {
            () = tx.closed() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a TCP connection failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        handshakes.spawn(handshake(
            tcp,
            peer,
            acceptor.clone(),
            opts.clone(),
            tx.clone(),
            permit,
            slot,
        ));
    }
}

async fn handshake(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    opts: AcceptorConfig,
    tx: mpsc::Sender<TlsConn>,
    permit: OwnedSemaphorePermit,
    slot: OwnedSemaphorePermit,
) {
    let stream = match tokio::time::timeout(opts.handshake_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed; connection dropped");
            return;
        }
        Err(_) => {
            tracing::debug!(
                %peer,
                timeout_ms = opts.handshake_timeout.as_millis(),
                "TLS handshake timed out; connection dropped"
            );
            return;
        }
    };
    let client_id = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(ClientId::from_certificate);
    if opts.require_client_id && client_id.is_none() {
        tracing::debug!(%peer, "client certificate names no client; connection dropped");
        return;
    }
    tracing::debug!(%peer, client = ?client_id.map(|c| c.0), "TLS connection established");
    let conn = TlsConn {
        stream,
        remote_addr: peer,
        client_id,
        _slot: slot,
    };
    // The permit is held until the connection is taken, so connections nobody takes count
    // against the limit too. A closed receiver drops the connection.
    let _ = tx.send(conn).await;
    drop(permit);
}
