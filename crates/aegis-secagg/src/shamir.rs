//! Shamir secret sharing of 32-byte secrets over GF(p), p = 2^61 − 1 (`docs/secagg.md` §4).
//!
//! A secret is cut into five limbs of at most 56 bits (7+7+7+7+4 bytes), each below p, and each
//! limb is shared with its own uniformly random polynomial of degree `t − 1`, evaluated at the
//! same nonzero point `x` for a given holder. p ≈ 2.3·10^18 is far larger than any roster, so
//! points are distinct and nonzero by construction (`x` = roster index + 1).

use rand_core::CryptoRng;
use zeroize::Zeroize;

/// The field modulus, the Mersenne prime 2^61 − 1.
pub const P: u64 = (1 << 61) - 1;
/// Limbs per secret.
pub const LIMBS: usize = 5;
/// Encoded size of one share: five little-endian `u64` limbs.
pub const SHARE_LEN: usize = LIMBS * 8;
/// Byte widths of the limbs of a 32-byte secret.
const LIMB_BYTES: [usize; LIMBS] = [7, 7, 7, 7, 4];

/// One holder's share of one secret (the holder's point `x` is implied by who holds it).
#[derive(Clone, PartialEq, Eq, Zeroize)]
#[zeroize(drop)]
pub struct Share(pub(crate) [u64; LIMBS]);

impl std::fmt::Debug for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Share(..)")
    }
}

impl Share {
    /// The wire encoding: five little-endian `u64`, each below p.
    pub fn to_bytes(&self) -> [u8; SHARE_LEN] {
        let mut out = [0u8; SHARE_LEN];
        for (chunk, limb) in out.chunks_exact_mut(8).zip(self.0.iter()) {
            chunk.copy_from_slice(&limb.to_le_bytes());
        }
        out
    }

    /// Decodes a share; `None` unless every limb is a canonical field element.
    pub fn from_bytes(bytes: &[u8; SHARE_LEN]) -> Option<Share> {
        let mut limbs = [0u64; LIMBS];
        for (limb, chunk) in limbs.iter_mut().zip(bytes.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            *limb = u64::from_le_bytes(b);
            if *limb >= P {
                return None;
            }
        }
        Some(Share(limbs))
    }
}

#[inline]
fn reduce(x: u128) -> u64 {
    // x < 2^122: fold twice.
    let lo = (x as u64) & P;
    let hi = (x >> 61) as u64;
    let s = lo + (hi & P) + (hi >> 61);
    let s = (s & P) + (s >> 61);
    if s >= P { s - P } else { s }
}

#[inline]
fn mul(a: u64, b: u64) -> u64 {
    reduce(u128::from(a) * u128::from(b))
}

#[inline]
fn add(a: u64, b: u64) -> u64 {
    let s = a + b;
    if s >= P { s - P } else { s }
}

#[inline]
fn sub(a: u64, b: u64) -> u64 {
    if a >= b { a - b } else { a + P - b }
}

fn pow(mut base: u64, mut e: u64) -> u64 {
    let mut acc = 1u64;
    while e > 0 {
        if e & 1 == 1 {
            acc = mul(acc, base);
        }
        base = mul(base, base);
        e >>= 1;
    }
    acc
}

fn inv(a: u64) -> u64 {
    pow(a, P - 2)
}

/// A uniform field element, by rejection sampling 61-bit values.
fn random_element<R: CryptoRng + ?Sized>(rng: &mut R) -> u64 {
    loop {
        let v = rng.next_u64() >> 3;
        if v < P {
            return v;
        }
    }
}

fn limbs_of(secret: &[u8; 32]) -> [u64; LIMBS] {
    let mut limbs = [0u64; LIMBS];
    let mut rest: &[u8] = secret;
    for (limb, width) in limbs.iter_mut().zip(LIMB_BYTES) {
        let (head, tail) = rest.split_at(width.min(rest.len()));
        let mut b = [0u8; 8];
        b.get_mut(..head.len())
            .into_iter()
            .for_each(|d| d.copy_from_slice(head));
        *limb = u64::from_le_bytes(b);
        b.zeroize();
        rest = tail;
    }
    limbs
}

fn secret_of(limbs: &[u64; LIMBS]) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    let mut at = 0usize;
    for (limb, width) in limbs.iter().zip(LIMB_BYTES) {
        if *limb >> (8 * width) != 0 {
            out.zeroize();
            return None;
        }
        let bytes = limb.to_le_bytes();
        let (src, dst) = (bytes.get(..width)?, out.get_mut(at..at + width)?);
        dst.copy_from_slice(src);
        at += width;
    }
    Some(out)
}

/// Splits `secret` into one share per point of `xs` (nonzero and distinct), any `t` of which
/// reconstruct it. Coefficients are drawn uniformly from GF(p) with `rng`.
pub fn split<R: CryptoRng + ?Sized>(
    secret: &[u8; 32],
    xs: &[u64],
    t: usize,
    rng: &mut R,
) -> Vec<Share> {
    let mut secret_limbs = limbs_of(secret);
    let mut coeffs = vec![0u64; LIMBS * t.max(1)];
    for (limb, poly) in secret_limbs.iter().zip(coeffs.chunks_exact_mut(t.max(1))) {
        let mut it = poly.iter_mut();
        if let Some(c0) = it.next() {
            *c0 = *limb;
        }
        for c in it {
            *c = random_element(rng);
        }
    }
    let shares = xs
        .iter()
        .map(|&x| {
            let mut s = [0u64; LIMBS];
            for (out, poly) in s.iter_mut().zip(coeffs.chunks_exact(t.max(1))) {
                // Horner from the highest coefficient.
                *out = poly.iter().rev().fold(0u64, |acc, &c| add(mul(acc, x), c));
            }
            Share(s)
        })
        .collect();
    coeffs.zeroize();
    secret_limbs.zeroize();
    shares
}

/// The Lagrange coefficients at 0 for the points `xs` (nonzero and distinct): reusable for every
/// secret reconstructed from the same holders.
pub fn lagrange_at_zero(xs: &[u64]) -> Option<Vec<u64>> {
    let mut out = Vec::with_capacity(xs.len());
    for (i, &xi) in xs.iter().enumerate() {
        if xi == 0 || xi >= P {
            return None;
        }
        let mut num = 1u64;
        let mut den = 1u64;
        for (j, &xj) in xs.iter().enumerate() {
            if i != j {
                if xj == xi {
                    return None;
                }
                num = mul(num, xj);
                den = mul(den, sub(xj, xi));
            }
        }
        out.push(mul(num, inv(den)));
    }
    Some(out)
}

/// Reconstructs a secret from shares and the matching Lagrange coefficients (from
/// [`lagrange_at_zero`] over the holders' points). `None` if the result is not a 32-byte secret,
/// which reveals corrupted shares; the caller still checks it against a commitment.
pub fn combine(shares: &[&Share], coeffs: &[u64]) -> Option<[u8; 32]> {
    if shares.len() != coeffs.len() || shares.is_empty() {
        return None;
    }
    let mut limbs = [0u64; LIMBS];
    for (share, &l) in shares.iter().zip(coeffs) {
        for (acc, &y) in limbs.iter_mut().zip(share.0.iter()) {
            *acc = add(*acc, mul(y, l));
        }
    }
    let out = secret_of(&limbs);
    limbs.zeroize();
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use chacha20::ChaCha20Rng;
    use rand_core::{Rng, SeedableRng};

    #[test]
    fn field_arithmetic() {
        assert_eq!(mul(P - 1, P - 1), 1);
        assert_eq!(add(P - 1, 1), 0);
        assert_eq!(sub(0, 1), P - 1);
        for a in [1u64, 2, 12345, P - 2, 1 << 60] {
            assert_eq!(mul(a, inv(a)), 1);
        }
    }

    #[test]
    fn any_t_shares_reconstruct_fewer_do_not() {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        let xs: Vec<u64> = (1..=9).collect();
        let shares = split(&secret, &xs, 5, &mut rng);
        for subset in [[0usize, 1, 2, 3, 4], [4, 5, 6, 7, 8], [0, 2, 4, 6, 8]] {
            let pts: Vec<u64> = subset.iter().map(|&i| xs[i]).collect();
            let sh: Vec<&Share> = subset.iter().map(|&i| &shares[i]).collect();
            assert_eq!(
                combine(&sh, &lagrange_at_zero(&pts).unwrap()).unwrap(),
                secret
            );
        }
        // Four shares interpolate a different value (almost surely not even a 32-byte secret).
        let pts = [1u64, 2, 3, 4];
        let sh: Vec<&Share> = (0..4).map(|i| &shares[i]).collect();
        assert_ne!(combine(&sh, &lagrange_at_zero(&pts).unwrap()), Some(secret));
    }

    #[test]
    fn points_must_be_distinct_and_nonzero() {
        assert!(lagrange_at_zero(&[1, 2, 2]).is_none());
        assert!(lagrange_at_zero(&[0, 1]).is_none());
        assert!(lagrange_at_zero(&[P, 1]).is_none());
    }

    #[test]
    fn non_canonical_shares_are_rejected() {
        let mut bytes = [0u8; SHARE_LEN];
        bytes[..8].copy_from_slice(&P.to_le_bytes());
        assert!(Share::from_bytes(&bytes).is_none());
        bytes[..8].copy_from_slice(&(P - 1).to_le_bytes());
        assert!(Share::from_bytes(&bytes).is_some());
    }

    #[test]
    fn extreme_secrets_round_trip() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        for secret in [[0u8; 32], [0xff; 32]] {
            let shares = split(&secret, &[3, 5, 7], 2, &mut rng);
            let sh = [&shares[1], &shares[2]];
            assert_eq!(
                combine(&sh, &lagrange_at_zero(&[5, 7]).unwrap()).unwrap(),
                secret
            );
        }
    }
}
