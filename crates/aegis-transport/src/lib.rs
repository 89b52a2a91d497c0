//! # aegis-transport — TLS 1.3 between the AEGIS server and its clients
//!
//! What it does:
//! - [`pki`]: a development PKI — a CA, a server certificate, client certificates that name
//!   their client (`aegis://client/<id>`) — written as PEM files, private keys 0600.
//! - [`tls`]: rustls configurations that speak **TLS 1.3 only** (1.2 is refused), offer ALPN
//!   `h2`, use the aws-lc-rs provider explicitly and verify client certificates against the
//!   deployment CA ([`ClientAuth`]: required, optional or off).
//! - [`acceptor`]: [`TlsIncoming`] turns a `TcpListener` into a stream of established
//!   connections ([`TlsConn`], with the peer's [`ClientId`]); each handshake runs in its own
//!   task under a timeout, a bounded number at once, failures dropped.
//! - [`connect`]: [`Connector`], TCP connect plus handshake for clients.
//! - [`roster`]: SecAgg identities bound to client certificates — [`CertRosterVerifier`]
//!   checks a roster entry's certificate against the CA, and [`roster::roster_entry`] builds
//!   an entry from a connected client's certificate.
//!
//! What it does not: gRPC, HTTP, bearer tokens, certificate revocation, or any protocol above
//! the TLS byte stream. [`TlsIncoming`] is shaped for tonic's `serve_with_incoming` (a
//! `Stream` of `io::Result<TlsConn>`); the optional feature `tonic` implements tonic's
//! `Connected` for [`TlsConn`], so handlers find a [`PeerInfo`] (address, [`ClientId`]) in
//! each request's extensions. Without the feature this crate does not depend on tonic.
//!
//! ```
//! use std::sync::Arc;
//! use aegis_transport::{ClientAuth, ClientId, ClientTls, Connector, ServerTls, TlsIncoming};
//! use aegis_transport::pki::{Ca, default_server_sans};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let ca = Ca::generate("example CA")?;
//! let server = ca.issue_server(&default_server_sans())?;
//! let client = ca.issue_client(ClientId(7))?;
//!
//! let server_config = ServerTls {
//!     cert_chain: vec![server.cert_der().clone()],
//!     key: server.key_der(),
//!     client_auth: ClientAuth::Required,
//!     client_ca: vec![ca.cert_der().clone()],
//! }
//! .into_config()?;
//! let client_config = ClientTls {
//!     roots: vec![ca.cert_der().clone()],
//!     identity: Some((vec![client.cert_der().clone()], client.key_der())),
//! }
//! .into_config()?;
//!
//! let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
//! rt.block_on(async {
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//!     let addr = listener.local_addr()?;
//!     let mut incoming = TlsIncoming::new(listener, server_config);
//!     let server = tokio::spawn(async move {
//!         let mut conn = incoming.accept().await.ok_or("no connection")?;
//!         let mut buf = [0u8; 4];
//!         conn.read_exact(&mut buf).await?;
//!         conn.write_all(&buf).await?;
//!         conn.flush().await?;
//!         Ok::<_, Box<dyn std::error::Error + Send + Sync>>(conn.client_id())
//!     });
//!     let mut tls = Connector::new(client_config).connect(addr, "localhost").await?;
//!     tls.write_all(b"ping").await?;
//!     let mut echo = [0u8; 4];
//!     tls.read_exact(&mut echo).await?;
//!     assert_eq!(&echo, b"ping");
//!     assert_eq!(server.await?.map_err(|e| e.to_string())?, Some(ClientId(7)));
//!     Ok(())
//! })
//! # }
//! ```

#![forbid(unsafe_code)]

pub mod acceptor;
pub mod connect;
mod error;
pub mod identity;
pub mod pki;
pub mod roster;
pub mod tls;

pub use acceptor::{AcceptorConfig, PeerInfo, TlsConn, TlsIncoming};
pub use connect::Connector;
pub use error::{Error, Result};
pub use identity::{ClientId, ClientIdExt};
pub use roster::CertRosterVerifier;
pub use tls::{ClientAuth, ClientTls, ServerTls};
