//! SecAgg roster identities bound to client certificates (`docs/secagg.md` §10).
//!
//! A client certificate issued by the development PKI ([`crate::pki`]) has an Ed25519 key,
//! and that key is the client's SecAgg identity key: the roster entry of client `id` carries
//! the certificate's Ed25519 public key as its `identity` and the certificate (DER) as its
//! `credential`. The server builds the entries from its connected clients' certificates with
//! [`roster_entry`]; every client checks its neighbours' entries with [`CertRosterVerifier`],
//! so a server cannot put a key of its own choosing in the roster (a Sybil attack) without a
//! certificate from the deployment CA for it.
//!
//! Certificate revocation is not checked (as in [`crate::tls`]).

use std::path::Path;
use std::sync::Arc;

use aegis_secagg::keys::PUBLIC_LEN;
use aegis_secagg::messages::RosterEntry;
use aegis_secagg::{IdentityPublicKey, RosterVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::{CertificateDer, UnixTime};

use crate::error::{Error, Result};
use crate::identity::{ClientId, ClientIdExt};

/// Verifies SecAgg roster entries against the deployment CA: an entry is accepted only if its
/// credential is a client certificate that chains to one of the CA certificates, is valid now
/// for client authentication (`clientAuth`), names exactly the client
/// `aegis://client/<entry.id>`, and has an Ed25519 subject public key equal to
/// `entry.identity`.
#[derive(Debug, Clone)]
pub struct CertRosterVerifier {
    verifier: Arc<dyn ClientCertVerifier>,
}

impl CertRosterVerifier {
    /// A verifier trusting the CA certificates `roots` (at least one), checked with the same
    /// rustls/webpki verifier (aws-lc-rs provider) the TLS server uses for client
    /// certificates.
    pub fn new(roots: &[CertificateDer<'static>]) -> Result<CertRosterVerifier> {
        let store = Arc::new(crate::tls::root_store(roots)?);
        let verifier = WebPkiClientVerifier::builder_with_provider(store, crate::tls::provider())
            .build()
            .map_err(|e| Error::Config(format!("roster certificate verifier: {e}")))?;
        Ok(CertRosterVerifier { verifier })
    }

    /// A verifier trusting the CA certificate(s) in a PEM file (such as the PKI's `ca.pem`).
    pub fn from_pem_file(ca: &Path) -> Result<CertRosterVerifier> {
        CertRosterVerifier::new(&crate::tls::load_certs(ca)?)
    }

    /// Why `entry` is refused, or `Ok` if it is acceptable at `now`.
    pub fn check_at(&self, entry: &RosterEntry, now: UnixTime) -> Result<()> {
        let cert = CertificateDer::from(entry.credential.as_slice());
        self.verifier
            .verify_client_cert(&cert, &[], now)
            .map_err(|e| Error::Certificate(format!("roster entry {}: {e}", entry.id)))?;
        let certified = certified_identity(&cert, ClientId(entry.id.0))?;
        if certified != entry.identity {
            return Err(Error::Certificate(format!(
                "roster entry {}: the identity key is not the certificate's key",
                entry.id
            )));
        }
        Ok(())
    }

    /// Why `entry` is refused, or `Ok` if it is acceptable now.
    pub fn check(&self, entry: &RosterEntry) -> Result<()> {
        self.check_at(entry, UnixTime::now())
    }
}

impl RosterVerifier for CertRosterVerifier {
    fn verify(&self, entry: &RosterEntry) -> bool {
        match self.check(entry) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!("refusing a roster entry: {e}");
                false
            }
        }
    }
}

/// The roster entry of client `id` from its certificate (DER): `identity` is the certificate's
/// Ed25519 public key, `credential` the certificate. Refused if the certificate does not name
/// exactly `aegis://client/<id>` or its key is not Ed25519.
///
/// This does not verify the certificate against the CA: the server takes `cert_der` from a
/// connection whose handshake already did (and the clients check again with
/// [`CertRosterVerifier`]).
pub fn roster_entry(id: ClientId, cert_der: &[u8]) -> Result<RosterEntry> {
    let identity = certified_identity(&CertificateDer::from(cert_der), id)?;
    Ok(RosterEntry {
        id,
        identity,
        credential: cert_der.to_vec(),
    })
}

/// The Ed25519 identity key of a certificate that names exactly client `id`.
fn certified_identity(cert: &CertificateDer<'_>, id: ClientId) -> Result<IdentityPublicKey> {
    match ClientId::from_certificate(cert) {
        Some(named) if named == id => {}
        Some(named) => {
            return Err(Error::Certificate(format!(
                "the certificate names client {named}, not client {id}"
            )));
        }
        None => {
            return Err(Error::Certificate(format!(
                "the certificate of client {id} does not name exactly one client"
            )));
        }
    }
    ed25519_key(cert).ok_or_else(|| {
        Error::Certificate(format!(
            "the certificate of client {id} has no Ed25519 key (RFC 8410)"
        ))
    })
}

/// The subject public key of `cert` if it is Ed25519 (algorithm 1.3.101.112 without
/// parameters, 32 bytes).
fn ed25519_key(cert: &CertificateDer<'_>) -> Option<IdentityPublicKey> {
    let (rest, x509) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    if !rest.is_empty() {
        return None;
    }
    let spki = x509.public_key();
    if spki.algorithm.algorithm != x509_parser::oid_registry::OID_SIG_ED25519
        || spki.algorithm.parameters.is_some()
        || spki.subject_public_key.unused_bits != 0
    {
        return None;
    }
    let key: [u8; PUBLIC_LEN] = spki.subject_public_key.data.as_ref().try_into().ok()?;
    Some(IdentityPublicKey(key))
}
