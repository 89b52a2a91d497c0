//! Connecting to a TLS server: TCP connect and the rustls handshake, under one timeout.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::error::{Error, Result};

/// Default time for the TCP connect plus the TLS handshake.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens TLS connections with one client configuration (see [`crate::tls::ClientTls`]).
#[derive(Clone)]
pub struct Connector {
    tls: TlsConnector,
    timeout: Duration,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// A connector with `config` and [`DEFAULT_CONNECT_TIMEOUT`].
    pub fn new(config: Arc<rustls::ClientConfig>) -> Self {
        Connector {
            tls: TlsConnector::from(config),
            timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }

    /// The same connector with another timeout for connect + handshake.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Connect to `addr` and run the handshake, checking the server certificate against
    /// `server_name` (a DNS name or an IP address).
    ///
    /// With TLS 1.3 a server that refuses the client's certificate says so only after the
    /// handshake: the first read then fails.
    pub async fn connect<A>(&self, addr: A, server_name: &str) -> Result<TlsStream<TcpStream>>
    where
        A: ToSocketAddrs + fmt::Display,
    {
        let name = ServerName::try_from(server_name.to_string())
            .map_err(|_| Error::InvalidServerName(server_name.to_string()))?;
        let peer = addr.to_string();
        let work = async {
            let tcp = TcpStream::connect(addr)
                .await
                .map_err(|e| Error::io(format!("connecting to {peer}"), e))?;
            let _ = tcp.set_nodelay(true);
            self.tls
                .connect(name, tcp)
                .await
                .map_err(|e| Error::io(format!("TLS handshake with {peer}"), e))
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(Error::HandshakeTimeout {
                peer,
                secs: self.timeout.as_secs_f64(),
            }),
        }
    }
}
