//! The key and plaintexts of the frozen vectors (docs/format.md §5), shared by the vector test
//! and the example that wrote them.

use aegis_crypto::SecretKey;

/// The test key of docs/format.md: bytes 00 01 02 … 1f.
pub(crate) fn test_key() -> SecretKey {
    let mut k = [0u8; 32];
    for (i, b) in k.iter_mut().enumerate() {
        *b = i as u8;
    }
    SecretKey::from_bytes(k)
}

/// Plaintext of the frozen vectors: byte i is i mod 251.
pub(crate) fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}
