//! # aegis-crypto — encryption at rest for AEGIS
//!
//! What it does: AES-256-GCM encryption of training data and model checkpoints in two formats,
//! keysets with rotation, the key stores (OS keyring, key file) and crash-safe re-encryption.
//! What it does not: networking, async, secure aggregation (see `aegis-secagg`).
//!
//! ```text
//!            ┌──────────── Keyset (primary + retained keys) ◀── store::KeyStore (keyring | file)
//!            │
//! plaintext ─┼─ v1::seal ──▶ NONCE ‖ CT ‖ TAG                (the Python system's blob)
//!            └─ v2::Encryptor ──▶ header ‖ chunk₀ ‖ … ‖ chunkₙ  (streaming, per-file data key)
//! ```
//!
//! Two levels of API, as in `age`: [`seal`]/[`open`] for byte slices, and the streaming
//! [`v2::Encryptor`]/[`v2::Decryptor`] over `Write`/`Read` for files of any size.
//!
//! ```
//! use aegis_crypto::{Format, Keyset, open, seal};
//! let keys = Keyset::generate()?;
//! let blob = seal(keys.primary(), b"weights", Format::V2)?;
//! assert_eq!(open(&keys, &blob)?, b"weights");
//! let legacy = seal(keys.primary(), b"weights", Format::V1)?;
//! assert_eq!(legacy.len(), 12 + 7 + 16);
//! assert_eq!(open(&keys, &legacy)?, b"weights");
//! # Ok::<(), aegis_crypto::Error>(())
//! ```
//!
//! The byte-level formats are specified in `docs/format.md`.

#![forbid(unsafe_code)]

pub mod error;
pub mod file;
pub mod fsutil;
mod gcm;
pub mod key;
pub mod keyset;
pub mod primitives;
pub mod reencrypt;
pub mod store;
pub mod v1;
pub mod v2;

pub use error::{Error, Result};
pub use key::{KeyId, SecretKey};
pub use keyset::{KeyStatus, Keyset};

/// The on-disk formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `NONCE ‖ CIPHERTEXT ‖ TAG`, the Python system's blob.
    V1,
    /// The chunked stream with a header (default for new files).
    V2,
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::V1 => "v1",
            Format::V2 => "v2",
        })
    }
}

impl Format {
    /// Which format a file starting with `prefix` is in. Anything without the v2 magic is taken
    /// for a v1 blob (which has no header to recognise it by).
    pub fn detect(prefix: &[u8]) -> Format {
        if v2::has_magic(prefix) {
            Format::V2
        } else {
            Format::V1
        }
    }
}

/// Encrypt a byte slice under `key` in the given format.
pub fn seal(key: &SecretKey, plaintext: &[u8], format: Format) -> Result<Vec<u8>> {
    match format {
        Format::V1 => v1::seal(key, plaintext),
        Format::V2 => v2::seal(key, plaintext, v2::Options::default()),
    }
}

/// Decrypt a v1 or v2 blob with whichever key of `keys` it needs.
pub fn open(keys: &Keyset, data: &[u8]) -> Result<Vec<u8>> {
    match Format::detect(data) {
        Format::V1 => v1::open_with_keyset(keys, data).map(|(pt, _)| pt),
        Format::V2 => v2::open(keys, data),
    }
}
