//! The v1 blob of the specification: `NONCE(12) ‖ CIPHERTEXT ‖ TAG(16)`, AES-256-GCM under the
//! master key, random nonce, no associated data — byte for byte what Python `cryptography`'s
//! `AESGCM(key).encrypt(nonce, data, None)` gives with the nonce prepended.
//!
//! A v1 blob names no key, so [`open_with_keyset`] tries the primary key and then every
//! retained key; the tag tells them apart. Blobs are handled whole, in memory (the Python
//! system could not write blobs of 2 GiB or more).

use crate::error::{Error, Result};
use crate::gcm::{Gcm, NONCE, TAG};
use crate::key::{KeyId, SecretKey, fill_random};
use crate::keyset::Keyset;

/// Nonce length.
pub const NONCE_LEN: usize = NONCE;
/// Tag length.
pub const TAG_LEN: usize = TAG;

/// Smallest possible v1 blob (empty plaintext).
pub const OVERHEAD: usize = NONCE + TAG;

/// Largest plaintext of a v1 blob: 2^31 − 1 bytes, what Python `cryptography`'s `AESGCM` can
/// encrypt and decrypt (v1 exists for files the Python system must read; v2 has no limit).
pub const MAX_PLAINTEXT: u64 = (1 << 31) - 1;
/// Largest v1 blob.
pub const MAX_BLOB: u64 = MAX_PLAINTEXT + OVERHEAD as u64;

/// Seal `plaintext` into a new v1 blob.
pub fn seal(key: &SecretKey, plaintext: &[u8]) -> Result<Vec<u8>> {
    let mut blob = Vec::with_capacity(plaintext.len() + OVERHEAD);
    blob.extend_from_slice(&[0u8; NONCE]);
    blob.extend_from_slice(plaintext);
    seal_in_place(key, &mut blob)?;
    Ok(blob)
}

/// Seal in place: `buf` holds `NONCE` bytes of room followed by the plaintext; on return it
/// holds the blob. Saves a copy of large files.
pub fn seal_in_place(key: &SecretKey, buf: &mut Vec<u8>) -> Result<()> {
    if buf.len() < NONCE {
        return Err(Error::Malformed("seal_in_place needs NONCE bytes of room"));
    }
    if (buf.len() - NONCE) as u64 > MAX_PLAINTEXT {
        return Err(Error::TooLarge(
            "v1 blobs carry less than 2 GiB (the Python system's limit); use v2",
        ));
    }
    let mut nonce = [0u8; NONCE];
    fill_random(&mut nonce)?;
    let (head, body) = buf.split_at_mut(NONCE);
    head.copy_from_slice(&nonce);
    let tag = Gcm::new(key.expose())?.seal(nonce, &[], body)?;
    buf.extend_from_slice(&tag);
    Ok(())
}

/// Open a v1 blob with one key.
pub fn open(key: &SecretKey, blob: &[u8]) -> Result<Vec<u8>> {
    let mut buf = blob.to_vec();
    let n = open_in_place(key, &mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

/// Open in place with one key: on success the plaintext is `buf[..n]`, `n` returned. On failure
/// `buf` holds no plaintext.
pub fn open_in_place(key: &SecretKey, buf: &mut [u8]) -> Result<usize> {
    let (nonce, rest) = buf
        .split_first_chunk_mut::<NONCE>()
        .ok_or(Error::Malformed("shorter than a v1 blob (28 bytes)"))?;
    if rest.len() < TAG {
        return Err(Error::Malformed("shorter than a v1 blob (28 bytes)"));
    }
    let n = Gcm::new(key.expose())?.open(*nonce, &[], rest)?.len();
    buf.copy_within(NONCE..NONCE + n, 0);
    Ok(n)
}

/// Open a v1 blob with whichever key of the keyset opens it (primary first), and say which key
/// that was. The blob stays intact between attempts; the returned plaintext exists only after
/// its tag checked out.
pub fn open_with_keyset(keys: &Keyset, blob: &[u8]) -> Result<(Vec<u8>, KeyId)> {
    let (nonce, rest) = blob
        .split_first_chunk::<NONCE>()
        .ok_or(Error::Malformed("shorter than a v1 blob (28 bytes)"))?;
    let Some(body_len) = rest.len().checked_sub(TAG) else {
        return Err(Error::Malformed("shorter than a v1 blob (28 bytes)"));
    };
    let (ct, tag) = rest.split_at(body_len);
    let mut out = vec![0u8; body_len];
    let mut tried = 0;
    for key in keys.decryption_keys() {
        tried += 1;
        if Gcm::new(key.expose())?
            .open_detached(*nonce, &[], ct, tag, &mut out)
            .is_ok()
        {
            return Ok((out, key.id()));
        }
    }
    Err(Error::NoKeyOpens { tried })
}

/// [`open_with_keyset`] taking the blob by value: with a single usable key it decrypts in place
/// (no second buffer); with several, it keeps the blob intact between attempts. The plaintext
/// comes back zeroized on drop.
pub fn open_with_keyset_owned(
    keys: &Keyset,
    mut blob: Vec<u8>,
) -> Result<(zeroize::Zeroizing<Vec<u8>>, KeyId)> {
    let mut candidates = keys.decryption_keys();
    if let (Some(only), None) = (candidates.next(), candidates.next()) {
        return match open_in_place(only, &mut blob) {
            Ok(n) => {
                blob.truncate(n);
                Ok((zeroize::Zeroizing::new(blob), only.id()))
            }
            Err(Error::Decrypt) => Err(Error::NoKeyOpens { tried: 1 }),
            Err(e) => Err(e),
        };
    }
    let (pt, id) = open_with_keyset(keys, &blob)?;
    Ok((zeroize::Zeroizing::new(pt), id))
}
