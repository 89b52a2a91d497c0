//! The one error type of the client SDK. Messages never contain key material or data values.

use std::path::PathBuf;

/// Everything that can go wrong in the client SDK.
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
    /// A line of the digits CSV is malformed.
    #[error("line {line}: {reason}")]
    Csv {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A serialized dataset is malformed.
    #[error("invalid dataset encoding: {0}")]
    DatasetFormat(String),
    /// Encryption or decryption failed (wrong key, tampered or truncated file, …).
    #[error("encryption layer: {0}")]
    Crypto(#[from] aegis_crypto::Error),
    /// A safetensors file could not be read or written.
    #[error("safetensors: {0}")]
    Safetensors(String),
    /// A tensor has a dtype other than F32.
    #[error("tensor {name:?} has dtype {dtype}, only F32 is supported")]
    UnsupportedDtype {
        /// Tensor name.
        name: String,
        /// The dtype found.
        dtype: String,
    },
    /// Shapes or lengths do not match.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// An argument is out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The connection to the server failed or was refused.
    #[error("connection: {0}")]
    Connection(String),
    /// The server broke the protocol (or refused this client).
    #[error("protocol: {0}")]
    Protocol(String),
    /// Secure aggregation refused the server's request or failed.
    #[error("secure aggregation: {0}")]
    SecAgg(#[from] aegis_secagg::Error),
    /// An external training command failed.
    #[error("training command: {0}")]
    TrainCommand(String),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
