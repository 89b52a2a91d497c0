//! AES-256-GCM through aws-lc-rs: the one AEAD of this crate.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, MAX_TAG_LEN, NONCE_LEN, Nonce, UnboundKey};

use zeroize::Zeroize;

use crate::error::{Error, Result};
use crate::key::KEY_LEN;

/// GCM nonce length (96 bits).
pub(crate) const NONCE: usize = NONCE_LEN;
/// GCM tag length (128 bits).
pub(crate) const TAG: usize = MAX_TAG_LEN;

/// An AES-256-GCM key schedule, ready to seal and open.
pub(crate) struct Gcm(LessSafeKey);

impl Gcm {
    pub(crate) fn new(key: &[u8; KEY_LEN]) -> Result<Self> {
        let k =
            UnboundKey::new(&AES_256_GCM, key).map_err(|_| Error::Primitive("AES-256-GCM key"))?;
        Ok(Gcm(LessSafeKey::new(k)))
    }

    /// Encrypt `buf` in place and return the tag.
    pub(crate) fn seal(&self, nonce: [u8; NONCE], aad: &[u8], buf: &mut [u8]) -> Result<[u8; TAG]> {
        let tag = self
            .0
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), buf)
            .map_err(|_| Error::TooLarge("AES-GCM message limit"))?;
        let mut out = [0u8; TAG];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Encrypt `pt` into `ct` (same length) and write the tag into `tag`, leaving `pt` intact.
    pub(crate) fn seal_into(
        &self,
        nonce: [u8; NONCE],
        aad: &[u8],
        pt: &[u8],
        ct: &mut [u8],
        tag: &mut [u8],
    ) -> Result<()> {
        self.0
            .seal_out_of_place_scatter(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                pt,
                ct,
                &[],
                tag,
            )
            .map_err(|_| Error::TooLarge("AES-GCM message limit"))
    }

    /// Decrypt `ct_and_tag` in place; returns the plaintext prefix. On failure the buffer is
    /// zeroized, so no unauthenticated plaintext survives in it.
    pub(crate) fn open<'a>(
        &self,
        nonce: [u8; NONCE],
        aad: &[u8],
        ct_and_tag: &'a mut [u8],
    ) -> Result<&'a mut [u8]> {
        let n = ct_and_tag.len().checked_sub(TAG).ok_or(Error::Decrypt)?;
        let ok = self
            .0
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                ct_and_tag,
            )
            .is_ok();
        if ok {
            Ok(ct_and_tag.get_mut(..n).ok_or(Error::Decrypt)?)
        } else {
            ct_and_tag.zeroize();
            Err(Error::Decrypt)
        }
    }

    /// Decrypt `ct` with its detached `tag` into `out` (same length), leaving the input intact.
    /// On failure `out` is zeroized.
    pub(crate) fn open_detached(
        &self,
        nonce: [u8; NONCE],
        aad: &[u8],
        ct: &[u8],
        tag: &[u8],
        out: &mut [u8],
    ) -> Result<()> {
        let ok = self
            .0
            .open_separate_gather(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                ct,
                tag,
                out,
            )
            .is_ok();
        if ok {
            Ok(())
        } else {
            out.zeroize();
            Err(Error::Decrypt)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tamper_is_detected() -> Result<()> {
        let g = Gcm::new(&[1; 32])?;
        let mut buf = b"hello world".to_vec();
        let tag = g.seal([2; 12], b"", &mut buf)?;
        buf.extend_from_slice(&tag);
        let mut bad = buf.clone();
        if let Some(b) = bad.get_mut(3) {
            *b ^= 1;
        }
        assert!(g.open([2; 12], b"", &mut bad).is_err());
        assert!(g.open([3; 12], b"", &mut buf.clone()).is_err());
        assert_eq!(g.open([2; 12], b"", &mut buf)?, b"hello world");
        Ok(())
    }
}
