//! The one error type of the crate. Every message is one line, names the file or the peer it
//! is about, and never contains key material.

use std::path::PathBuf;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error, with what was being done. The cause is part of the message (and not also
    /// a `source()`, so a printed chain says it once).
    #[error("{context}: {cause}")]
    Io {
        /// What was being done, and on which path or peer.
        context: String,
        /// The underlying error.
        cause: std::io::Error,
    },

    /// A PEM file that does not hold what it should.
    #[error("{}: {reason}", .path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it (never its contents).
        reason: String,
    },

    /// There is no CA in the PKI directory.
    #[error("no CA in {}: {} not found (create one with `aegis certs init`)", .dir.display(), .missing.display())]
    NoCa {
        /// The PKI directory.
        dir: PathBuf,
        /// The file that is missing.
        missing: PathBuf,
    },

    /// A file that would be replaced exists and replacing it was not asked for.
    #[error("{} already exists (use --force to replace it)", .0.display())]
    Exists(PathBuf),

    /// A subject alternative name that is neither a DNS name nor an IP address.
    #[error("invalid subject alternative name {0:?}: expected a DNS name or an IP address")]
    InvalidSan(String),

    /// A server name the client cannot check a certificate against.
    #[error("invalid server name {0:?}: expected a DNS name or an IP address")]
    InvalidServerName(String),

    /// Certificate generation or parsing failed.
    #[error("certificate: {0}")]
    Certificate(String),

    /// A TLS configuration that rustls refuses (for example a key that does not match the
    /// certificate, or client authentication without a CA).
    #[error("TLS configuration: {0}")]
    Config(String),

    /// The TLS handshake did not finish in time.
    #[error("TLS handshake with {peer} timed out after {secs:.1} s")]
    HandshakeTimeout {
        /// The peer address.
        peer: String,
        /// The timeout.
        secs: f64,
    },

    /// A file-system helper of `aegis-crypto` failed (atomic or private file writes).
    #[error(transparent)]
    Fs(#[from] aegis_crypto::Error),
}

impl Error {
    /// An [`Error::Io`] with a context.
    pub(crate) fn io(context: impl Into<String>, cause: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            cause,
        }
    }
}

/// `Result<T, aegis_transport::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;
