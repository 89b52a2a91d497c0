//! The server's error type. Messages never contain key material, tokens or model values.

use std::path::PathBuf;

/// Everything that can stop the server or a job.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A state or token file is malformed.
    #[error("{path}: {reason}")]
    BadFile {
        /// The file involved.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Encryption at rest failed (wrong key, tampered checkpoint, …).
    #[error("checkpoint encryption: {0}")]
    Crypto(#[from] aegis_crypto::Error),
    /// A model could not be read, written or combined with an update.
    #[error("model: {0}")]
    Model(#[from] aegis_client::Error),
    /// Secure aggregation refused the configuration.
    #[error("secure aggregation: {0}")]
    SecAgg(#[from] aegis_secagg::Error),
    /// TLS configuration or PKI problem.
    #[error("transport: {0}")]
    Transport(#[from] aegis_transport::Error),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Serve(String),
    /// The job's configuration is unusable.
    #[error("job configuration: {0}")]
    Config(String),
    /// The job stopped: too many rounds in a row aborted.
    #[error("job {job} failed: {reason}")]
    JobFailed {
        /// Job id.
        job: String,
        /// Why.
        reason: String,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}
