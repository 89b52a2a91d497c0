//! The mask PRG: AES-256-CTR keyed by a full 256-bit seed (`docs/secagg.md` §5).
//!
//! Element `j` of the mask of seed `s` is the little-endian `u32` at bytes `4j..4j+4` of the
//! AES-256-CTR keystream under key `s`, with a 128-bit big-endian counter block starting at 0.
//! Masks are added modulo 2^32 and reduced modulo 2^b at the end (2^b divides 2^32). Because CTR
//! can start at any block, a vector is processed in cache-sized pieces, each piece receiving every
//! mask while it stays in L1, and the pieces are spread over the cores.

use aegis_crypto::primitives::cipher::{
    AES_256, EncryptingKey, EncryptionContext, UnboundCipherKey,
};
use rayon::prelude::*;

use crate::error::Error;

/// Elements per keystream block (16 bytes / 4).
const PER_BLOCK: usize = 4;
/// Elements per piece kept in L1 while every mask is applied: 4096 × 4 B = 16 KiB.
const PIECE: usize = 4096;

/// Whether a mask is added or subtracted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sign {
    /// Add the mask.
    Plus,
    /// Subtract the mask.
    Minus,
}

/// One mask generator: an expanded AES-256 key.
pub struct MaskPrg {
    key: EncryptingKey,
}

impl std::fmt::Debug for MaskPrg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MaskPrg(..)")
    }
}

impl MaskPrg {
    /// A generator keyed by `seed`.
    pub fn new(seed: &[u8; 32]) -> Result<MaskPrg, Error> {
        let key = UnboundCipherKey::new(&AES_256, seed).map_err(|_| Error::Primitive)?;
        Ok(MaskPrg {
            key: EncryptingKey::ctr(key).map_err(|_| Error::Primitive)?,
        })
    }

    /// Writes the keystream for elements `start..start + out.len()/4` into `out` (zeroed first).
    /// `start` must be a multiple of 4 (one AES block).
    fn keystream(&self, start: usize, out: &mut [u8]) -> Result<(), Error> {
        out.fill(0);
        let block = (start / PER_BLOCK) as u128;
        let iv = EncryptionContext::Iv128(block.to_be_bytes().into());
        self.key
            .less_safe_encrypt(out, iv)
            .map_err(|_| Error::Primitive)?;
        Ok(())
    }
}

/// Applies one piece of every mask to `acc`, which holds elements `start..start + acc.len()`.
fn apply_piece(
    acc: &mut [u32],
    start: usize,
    masks: &[(&MaskPrg, Sign)],
    buf: &mut [u8],
) -> Result<(), Error> {
    let bytes = acc.len() * 4;
    let ks = buf.get_mut(..bytes).ok_or(Error::Primitive)?;
    for (prg, sign) in masks {
        prg.keystream(start, ks)?;
        let words = ks.as_chunks::<4>().0.iter().map(|c| u32::from_le_bytes(*c));
        match sign {
            Sign::Plus => acc
                .iter_mut()
                .zip(words)
                .for_each(|(a, w)| *a = a.wrapping_add(w)),
            Sign::Minus => acc
                .iter_mut()
                .zip(words)
                .for_each(|(a, w)| *a = a.wrapping_sub(w)),
        }
    }
    Ok(())
}

/// Adds (or subtracts) every mask to `acc` (element 0 of `acc` is element 0 of each mask),
/// spreading the pieces over all cores.
pub fn apply_masks(acc: &mut [u32], masks: &[(&MaskPrg, Sign)]) -> Result<(), Error> {
    if masks.is_empty() {
        return Ok(());
    }
    // Tasks of whole pieces, about four per thread (bounded below by one piece).
    let threads = rayon::current_num_threads().max(1);
    let pieces = acc.len().div_ceil(PIECE);
    let task = pieces.div_ceil(4 * threads).max(1) * PIECE;
    if pieces <= 1 || threads == 1 {
        return apply_masks_serial(acc, masks);
    }
    acc.par_chunks_mut(task)
        .enumerate()
        .try_for_each(|(k, chunk)| -> Result<(), Error> {
            let mut buf = vec![0u8; PIECE * 4];
            for (p, piece) in chunk.chunks_mut(PIECE).enumerate() {
                apply_piece(piece, k * task + p * PIECE, masks, &mut buf)?;
            }
            Ok(())
        })
}

/// Single-threaded variant for callers that parallelise at another level.
pub fn apply_masks_serial(acc: &mut [u32], masks: &[(&MaskPrg, Sign)]) -> Result<(), Error> {
    let mut buf = vec![0u8; PIECE * 4];
    for (p, piece) in acc.chunks_mut(PIECE).enumerate() {
        apply_piece(piece, p * PIECE, masks, &mut buf)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn mask_is_the_ctr_keystream_and_pieces_agree() {
        let seed = [7u8; 32];
        let prg = MaskPrg::new(&seed).unwrap();
        let n = PIECE * 37 + 1234;
        let mut whole = vec![0u8; n * 4];
        prg.keystream(0, &mut whole).unwrap();
        let expect: Vec<u32> = whole
            .as_chunks::<4>()
            .0
            .iter()
            .map(|c| u32::from_le_bytes(*c))
            .collect();
        let mut par = vec![0u32; n];
        apply_masks(&mut par, &[(&prg, Sign::Plus)]).unwrap();
        assert_eq!(par, expect);
        let mut ser = vec![0u32; n];
        apply_masks_serial(&mut ser, &[(&prg, Sign::Plus)]).unwrap();
        assert_eq!(ser, expect);
        apply_masks(&mut par, &[(&prg, Sign::Minus)]).unwrap();
        assert!(par.iter().all(|&v| v == 0));
    }

    #[test]
    fn different_seeds_give_different_masks() {
        let a = MaskPrg::new(&[1u8; 32]).unwrap();
        let b = MaskPrg::new(&[2u8; 32]).unwrap();
        let mut x = vec![0u32; 64];
        let mut y = vec![0u32; 64];
        apply_masks(&mut x, &[(&a, Sign::Plus)]).unwrap();
        apply_masks(&mut y, &[(&b, Sign::Plus)]).unwrap();
        assert_ne!(x, y);
    }
}
