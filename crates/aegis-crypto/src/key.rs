//! Master keys, key ids and the derivations from them.
//!
//! A master key is 32 random bytes. It is stored as URL-safe Base64 text (what the Python
//! system writes), and its [`KeyId`] is derived from it, so a key written by the Python system
//! gets the same id everywhere without any extra metadata:
//!
//! ```text
//! PRK    = HKDF-Extract(salt = "", IKM = master key)              (SHA-256)
//! key id = HKDF-Expand(PRK, "aegis key id", 8)
//! KEK    = HKDF-Expand(PRK, "aegis v2 key wrap", 32)              (AES-256-KW)
//! ```

use std::fmt;
use std::str::FromStr;

use aws_lc_rs::hkdf;
use base64::Engine as _;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::{Error, Result};

/// Length of every AES-256 key in this crate.
pub const KEY_LEN: usize = 32;

/// HKDF info for the key id.
const INFO_KEY_ID: &[u8] = b"aegis key id";
/// HKDF info for the v2 key-encryption key.
const INFO_KEK: &[u8] = b"aegis v2 key wrap";

/// The 8-byte identifier of a master key, derived from the key (shown as 16 hex digits).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 8]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl FromStr for KeyId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let mut id = [0u8; 8];
        hex::decode_to_slice(s.trim(), &mut id)
            .map_err(|_| Error::Keyset(format!("`{s}` is not a key id (16 hex digits)")))?;
        Ok(KeyId(id))
    }
}

impl serde::Serialize for KeyId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for KeyId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A 256-bit secret key (master key or per-file data key). Zeroized on drop; its `Debug` shows
/// only the key id.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SecretKey([u8; KEY_LEN]);

impl SecretKey {
    /// A fresh random key from the operating system's CSPRNG.
    pub fn generate() -> Result<Self> {
        let mut k = [0u8; KEY_LEN];
        fill_random(&mut k)?;
        Ok(SecretKey(k))
    }

    /// Wrap raw bytes (the caller zeroizes its copy).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        SecretKey(bytes)
    }

    /// Raw key bytes. Handle with care.
    pub fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Parse the text form: URL-safe or standard Base64 of exactly 32 bytes, padding optional,
    /// surrounding whitespace ignored. `location` names the source for error messages.
    pub fn from_base64(text: &str, location: &str) -> Result<Self> {
        let t = text.trim();
        if t.is_empty() {
            return Err(Error::CorruptKey {
                location: location.to_string(),
                reason: "empty",
            });
        }
        let urlsafe = t.contains(['-', '_']);
        let standard = t.contains(['+', '/']);
        if urlsafe && standard {
            return Err(Error::CorruptKey {
                location: location.to_string(),
                reason: "mixes URL-safe and standard Base64 alphabets",
            });
        }
        // Lenient like Python's b64decode: padding optional, non-zero trailing bits accepted.
        let config = base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true);
        let alphabet = if standard {
            &base64::alphabet::STANDARD
        } else {
            &base64::alphabet::URL_SAFE
        };
        let engine = base64::engine::GeneralPurpose::new(alphabet, config);
        let bytes = Zeroizing::new(engine.decode(t).map_err(|_| Error::CorruptKey {
            location: location.to_string(),
            reason: "not valid Base64",
        })?);
        let arr: [u8; KEY_LEN] = bytes.as_slice().try_into().map_err(|_| Error::CorruptKey {
            location: location.to_string(),
            reason: "does not decode to exactly 32 bytes",
        })?;
        Ok(SecretKey(arr))
    }

    /// The text form the Python system writes: URL-safe Base64 with padding (44 characters).
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(base64::engine::general_purpose::URL_SAFE.encode(self.0))
    }

    fn prk(&self) -> hkdf::Prk {
        hkdf::Salt::new(hkdf::HKDF_SHA256, &[]).extract(&self.0)
    }

    /// The key id of this key (as a master key).
    pub fn id(&self) -> KeyId {
        let mut id = [0u8; 8];
        hkdf_expand(&self.prk(), INFO_KEY_ID, &mut id);
        KeyId(id)
    }

    /// The AES-256-KW key-encryption key derived from this master key for v2 headers.
    pub(crate) fn kek(&self) -> Zeroizing<[u8; KEY_LEN]> {
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        hkdf_expand(&self.prk(), INFO_KEK, k.as_mut());
        k
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({}, <redacted>)", self.id())
    }
}

impl PartialEq for SecretKey {
    fn eq(&self, other: &Self) -> bool {
        aws_lc_rs::constant_time::verify_slices_are_equal(&self.0, &other.0).is_ok()
    }
}
impl Eq for SecretKey {}

/// HKDF-Expand into `out` (len ≤ 255 × 32, always true here).
pub(crate) fn hkdf_expand(prk: &hkdf::Prk, info: &[u8], out: &mut [u8]) {
    struct Len(usize);
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    let info = [info];
    // Expansion only fails when the length exceeds 255 × HashLen; our lengths are ≤ 32.
    if let Ok(okm) = prk.expand(&info, Len(out.len()))
        && okm.fill(out).is_ok()
    {
        return;
    }
    unreachable_kdf();
}

#[cold]
fn unreachable_kdf() -> ! {
    // Only reachable if aws-lc refuses an HKDF output of ≤ 32 bytes, which it never does.
    std::process::abort()
}

/// Fill `buf` from the operating system's CSPRNG (`getrandom(2)` on Linux). Straight from the
/// kernel rather than through aws-lc's DRBG, whose first use costs ~50 ms of CPU-jitter seeding
/// per process — noticeable for a command-line tool run once per file.
pub fn fill_random(buf: &mut [u8]) -> Result<()> {
    getrandom::fill(buf).map_err(|_| Error::Primitive("operating-system random number generator"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_forms_are_accepted() -> Result<()> {
        let k = SecretKey::from_bytes([0xfb; 32]);
        let url = k.to_base64();
        assert!(url.contains('-') || url.contains('_'));
        assert_eq!(url.len(), 44);
        assert_eq!(SecretKey::from_base64(&url, "t")?, k);
        assert_eq!(SecretKey::from_base64(url.trim_end_matches('='), "t")?, k);
        // A non-canonical last character (trailing bits set) decodes as Python decodes it.
        let mut odd = url.trim_end_matches('=').to_string();
        // [0xfb; 32] ends in "s" (index 44, 101100): "t" (101101) sets a trailing bit.
        assert_eq!(odd.pop(), Some('s'));
        odd.push('t');
        assert_eq!(SecretKey::from_base64(&odd, "t")?, k);
        let std = base64::engine::general_purpose::STANDARD.encode([0xfb; 32]);
        assert_eq!(SecretKey::from_base64(&format!("{std}\n"), "t")?, k);
        Ok(())
    }

    #[test]
    fn bad_keys_are_refused() {
        for bad in ["", "   ", "abc", "!!!!", "AAAA", &"A".repeat(60)] {
            assert!(matches!(
                SecretKey::from_base64(bad, "t"),
                Err(Error::CorruptKey { .. })
            ));
        }
    }

    #[test]
    fn debug_hides_the_key() {
        let k = SecretKey::from_bytes([7; 32]);
        let dbg = format!("{k:?}");
        assert!(!dbg.contains(&*k.to_base64()));
        assert!(!dbg.contains("7, 7"));
        assert!(dbg.contains(&k.id().to_string()));
    }

    #[test]
    fn key_id_is_stable() {
        // Frozen: ids are written into v2 headers and keyset metadata.
        let k = SecretKey::from_bytes([0u8; 32]);
        assert_eq!(k.id().to_string().len(), 16);
        assert_eq!(k.id(), SecretKey::from_bytes([0u8; 32]).id());
        assert_ne!(k.id(), SecretKey::from_bytes([1u8; 32]).id());
    }
}
