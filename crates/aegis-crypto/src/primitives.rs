//! The cryptographic primitives of the one provider AEGIS uses, for the other AEGIS crates.
//!
//! Every AEGIS crate takes its primitives from here, so the workspace compiles one provider
//! (aws-lc-rs) at one pinned version: X25519 key agreement, Ed25519 signatures, HKDF-SHA256,
//! AES-256-GCM, AES-CTR and SHA-256. Nothing here is home-made; these are the provider's modules
//! re-exported unchanged.

pub use aws_lc_rs::{aead, agreement, cipher, constant_time, digest, error, hkdf, hmac, signature};
