//! The one error type of `aegis-crypto`.
//!
//! Decryption failures are deliberately coarse (wrong key, tampering and truncation look the
//! same), so the error text is no oracle. No variant ever carries key material.

use std::path::PathBuf;

use crate::key::KeyId;

/// Everything that can go wrong in `aegis-crypto`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Authentication failed: wrong key, or the data was modified or truncated.
    #[error("decryption failed: wrong key, or the data was modified or truncated")]
    Decrypt,

    /// A v1 blob that no available key opens.
    #[error(
        "decryption failed with each of the {tried} available key(s): wrong key, or the data was modified or truncated"
    )]
    NoKeyOpens {
        /// How many keys were tried.
        tried: usize,
    },

    /// A v2 file names a key that the keyset does not hold (or holds no material for).
    #[error("the file is encrypted under key {key_id}, which is not in the keyset")]
    UnknownKey {
        /// The key the file names.
        key_id: KeyId,
    },

    /// The input is not in a format this version understands.
    #[error("malformed input: {0}")]
    Malformed(&'static str),

    /// A v2 header with a version or suite this build does not know.
    #[error("unsupported AEGIS format version {version} / suite {suite}")]
    Unsupported {
        /// Format version byte.
        version: u8,
        /// Algorithm suite byte.
        suite: u8,
    },

    /// The data is larger than the format allows.
    #[error("input too large: {0}")]
    TooLarge(&'static str),

    /// A stored key is not valid Base64 of exactly 32 bytes.
    #[error("corrupt key in {location}: {reason} (the key was left untouched)")]
    CorruptKey {
        /// Where the key came from (a path or a keyring entry name).
        location: String,
        /// What is wrong with it (never the key itself).
        reason: &'static str,
    },

    /// A key file that group or others can read.
    #[error(
        "key file {path} is accessible by group or others (mode {mode:o}); run `chmod 600` on it, or pass --allow-loose-permissions"
    )]
    LoosePermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },

    /// The OS keyring failed in a way that is not "no entry".
    #[error("OS keyring: {0}")]
    Keyring(String),

    /// Several keyring items match the entry and hold different values.
    #[error("OS keyring: {0}")]
    KeyringConflict(String),

    /// The keyset is not in a state that allows the operation.
    #[error("{0}")]
    Keyset(String),

    /// An operating-system I/O error, with what we were doing. The cause is part of the
    /// message (and deliberately not also a `source()`, so a printed chain says it once).
    #[error("{context}: {cause}")]
    Io {
        /// What was being done, and on which path.
        context: String,
        /// The underlying error.
        cause: std::io::Error,
    },

    /// The output file exists and replacing it was not asked for.
    #[error("{} already exists (use --force to replace it)", .0.display())]
    Exists(PathBuf),

    /// The system random number generator or a primitive failed.
    #[error("cryptographic primitive failed: {0}")]
    Primitive(&'static str),
}

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error with its context.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            cause: source,
        }
    }
}

/// Attach context to `io::Result`s.
pub(crate) trait IoContext<T> {
    /// Map an `io::Error` to [`Error::Io`] with a context computed lazily.
    fn ctx<F: FnOnce() -> String>(self, f: F) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx<F: FnOnce() -> String>(self, f: F) -> Result<T> {
        self.map_err(|e| Error::io(f(), e))
    }
}
