//! rustls configurations for AEGIS: TLS 1.3 only, ALPN `h2`, the aws-lc-rs provider chosen
//! explicitly (never the process default, which panics when two providers are compiled in),
//! and client certificates verified against the deployment CA.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// The ALPN protocol both sides offer: HTTP/2, for gRPC.
pub const ALPN_H2: &[u8] = b"h2";

/// The crypto provider of every AEGIS TLS configuration: aws-lc-rs.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The only protocol version AEGIS speaks.
static TLS13_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// Whether (and how) a server asks for client certificates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// Every client must present a certificate issued by the CA (mTLS).
    Required,
    /// A client may present a certificate (then it must verify); certificate-less clients are
    /// accepted and have no identity.
    Optional,
    /// No client certificates are asked for.
    Off,
}

/// What a TLS server needs. `Debug` never shows the key.
pub struct ServerTls {
    /// The server certificate, then any intermediates.
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// The server's private key.
    pub key: PrivateKeyDer<'static>,
    /// Client certificate policy.
    pub client_auth: ClientAuth,
    /// The CA(s) client certificates must chain to (unused when `client_auth` is `Off`).
    pub client_ca: Vec<CertificateDer<'static>>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert_chain_len", &self.cert_chain.len())
            .field("key", &"[secret]")
            .field("client_auth", &self.client_auth)
            .field("client_ca_len", &self.client_ca.len())
            .finish()
    }
}

impl ServerTls {
    /// Load the certificate chain, key and (unless `client_auth` is `Off`) the client CA from
    /// PEM files.
    pub fn from_pem_files(
        cert_chain: &Path,
        key: &Path,
        client_auth: ClientAuth,
        client_ca: Option<&Path>,
    ) -> Result<Self> {
        let client_ca = match (client_auth, client_ca) {
            (ClientAuth::Off, _) => Vec::new(),
            (_, Some(p)) => load_certs(p)?,
            (_, None) => {
                return Err(Error::Config(
                    "client authentication needs a CA certificate file".into(),
                ));
            }
        };
        Ok(ServerTls {
            cert_chain: load_certs(cert_chain)?,
            key: load_private_key(key)?,
            client_auth,
            client_ca,
        })
    }

    /// The rustls server configuration: TLS 1.3 only, ALPN `h2`, client certificates per
    /// [`ClientAuth`].
    pub fn into_config(self) -> Result<Arc<rustls::ServerConfig>> {
        let provider = provider();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(TLS13_ONLY)
            .map_err(|e| Error::Config(e.to_string()))?;
        let builder = match self.client_auth {
            ClientAuth::Off => builder.with_no_client_auth(),
            auth => {
                let roots = Arc::new(root_store(&self.client_ca)?);
                let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider);
                let verifier = if auth == ClientAuth::Optional {
                    verifier.allow_unauthenticated()
                } else {
                    verifier
                };
                let verifier = verifier
                    .build()
                    .map_err(|e| Error::Config(format!("client certificate verifier: {e}")))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(self.cert_chain, self.key)
            .map_err(|e| Error::Config(format!("server certificate and key: {e}")))?;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Arc::new(config))
    }
}

/// What a TLS client needs. `Debug` never shows the key.
pub struct ClientTls {
    /// The CA(s) the server certificate must chain to.
    pub roots: Vec<CertificateDer<'static>>,
    /// The client certificate chain and key, for mTLS.
    pub identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("roots_len", &self.roots.len())
            .field(
                "identity",
                &self
                    .identity
                    .as_ref()
                    .map(|(chain, _)| format!("{} certificate(s), key [secret]", chain.len())),
            )
            .finish()
    }
}

impl ClientTls {
    /// Load the CA file and, if given, the client certificate and key files (PEM).
    pub fn from_pem_files(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<Self> {
        let identity = match identity {
            Some((cert, key)) => Some((load_certs(cert)?, load_private_key(key)?)),
            None => None,
        };
        Ok(ClientTls {
            roots: load_certs(ca)?,
            identity,
        })
    }

    /// The rustls client configuration: TLS 1.3 only, ALPN `h2`, the server verified against
    /// `roots`, the client certificate presented when asked.
    pub fn into_config(self) -> Result<Arc<rustls::ClientConfig>> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(TLS13_ONLY)
            .map_err(|e| Error::Config(e.to_string()))?
            .with_root_certificates(root_store(&self.roots)?);
        let mut config = match self.identity {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| Error::Config(format!("client certificate and key: {e}")))?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Arc::new(config))
    }
}

pub(crate) fn root_store(certs: &[CertificateDer<'static>]) -> Result<RootCertStore> {
    if certs.is_empty() {
        return Err(Error::Config("no CA certificate to trust".into()));
    }
    let mut roots = RootCertStore::empty();
    for c in certs {
        roots
            .add(c.clone())
            .map_err(|e| Error::Config(format!("CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// Warn (not fail: mounted secrets are often 0644) when a private key file is accessible by
/// group or others.
pub(crate) fn warn_if_loose(path: &Path) {
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = aegis_crypto::fsutil::mode_of(&meta);
        if mode & 0o077 != 0 {
            tracing::warn!(
                "private key {} is accessible by group or others (mode {mode:o}); run `chmod 600` on it",
                path.display()
            );
        }
    }
}

fn read_file(path: &Path) -> Result<Zeroizing<Vec<u8>>> {
    std::fs::read(path)
        .map(Zeroizing::new)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))
}

/// Every certificate in a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let bytes = read_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Pem {
            path: path.to_path_buf(),
            reason: format!("malformed PEM ({e})"),
        })?;
    if certs.is_empty() {
        return Err(Error::Pem {
            path: path.to_path_buf(),
            reason: "no certificate (expected a PEM CERTIFICATE block)".into(),
        });
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1). Errors say what is wrong, never
/// what the file contains. A key file that group or others can read is used, with a warning.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    warn_if_loose(path);
    let bytes = read_file(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| Error::Pem {
        path: path.to_path_buf(),
        reason: match e {
            rustls_pki_types::pem::Error::NoItemsFound => {
                "no private key (expected a PEM PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block)"
                    .into()
            }
            // Other parse errors may quote the file; say only that it is malformed.
            _ => "malformed PEM private key".into(),
        },
    })
}
