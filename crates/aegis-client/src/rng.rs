//! Seeded randomness for shuffles and splits: ChaCha20 (RustCrypto `chacha20`) seeded from a
//! `u64`, so a seed gives the same split on every machine. Not used for anything secret.

use chacha20::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

pub(crate) struct SeededRng(ChaCha20Rng);

impl SeededRng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(ChaCha20Rng::seed_from_u64(seed))
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `0..n` (rejection sampling, no modulo bias); `n` must be nonzero.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - (u64::MAX % n.max(1));
        loop {
            let v = self.next_u64();
            if v < zone {
                return v % n.max(1);
            }
        }
    }

    /// Fisher–Yates.
    pub(crate) fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = usize::try_from(self.below(i as u64 + 1)).unwrap_or(0);
            items.swap(i, j);
        }
    }
}
