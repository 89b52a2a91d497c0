//! Keys and the uses of the provider's primitives (`docs/secagg.md` §5): Ed25519 identities,
//! X25519 agreement, HKDF-SHA256 derivations, AES-256-GCM for shares, SHA-256 commitments.

use aegis_crypto::primitives::signature::KeyPair as _;
use aegis_crypto::primitives::{aead, agreement, digest, hkdf, signature};
use rand_core::CryptoRng;
use zeroize::{Zeroize, Zeroizing};

use crate::error::Error;
use crate::{ClientId, SessionId};

/// Length of a public key (X25519 or Ed25519).
pub const PUBLIC_LEN: usize = 32;
/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// A client's long-term Ed25519 identity key. The transport binds its public half to the
/// client's certificate or token; it signs the advertised keys and the consistency set.
pub struct IdentityKey {
    pair: signature::Ed25519KeyPair,
    public: IdentityPublicKey,
}

impl std::fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityKey")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

/// The public half of an identity key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct IdentityPublicKey(pub [u8; PUBLIC_LEN]);

impl std::fmt::Debug for IdentityPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "IdentityPublicKey({:02x}{:02x}{:02x}{:02x}…)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

impl IdentityKey {
    /// A fresh identity key from `rng`.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Result<IdentityKey, Error> {
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(seed.as_mut());
        IdentityKey::from_seed(&seed)
    }

    /// The identity key of a 32-byte Ed25519 seed (as kept in a key file).
    pub fn from_seed(seed: &[u8; 32]) -> Result<IdentityKey, Error> {
        let pair =
            signature::Ed25519KeyPair::from_seed_unchecked(seed).map_err(|_| Error::Primitive)?;
        IdentityKey::from_pair(pair)
    }

    /// The identity key of an Ed25519 private key in PKCS#8 (v1 or v2) DER, such as the key
    /// file of a client certificate issued by `aegis-transport`'s development PKI, whose key
    /// is the client's identity key. A v2 document's public key must match its private key.
    /// Anything else (another algorithm, malformed DER) is [`Error::Primitive`].
    pub fn from_pkcs8(der: &[u8]) -> Result<IdentityKey, Error> {
        let pair = signature::Ed25519KeyPair::from_pkcs8(der).map_err(|_| Error::Primitive)?;
        IdentityKey::from_pair(pair)
    }

    fn from_pair(pair: signature::Ed25519KeyPair) -> Result<IdentityKey, Error> {
        let mut public = [0u8; PUBLIC_LEN];
        let pk = pair.public_key().as_ref();
        if pk.len() != PUBLIC_LEN {
            return Err(Error::Primitive);
        }
        public.copy_from_slice(pk);
        Ok(IdentityKey {
            pair,
            public: IdentityPublicKey(public),
        })
    }

    /// The public key.
    pub fn public(&self) -> IdentityPublicKey {
        self.public
    }

    pub(crate) fn sign(&self, msg: &[u8]) -> [u8; SIGNATURE_LEN] {
        let sig = self.pair.sign(msg);
        let mut out = [0u8; SIGNATURE_LEN];
        out.iter_mut().zip(sig.as_ref()).for_each(|(o, s)| *o = *s);
        out
    }
}

impl IdentityPublicKey {
    pub(crate) fn verify(&self, msg: &[u8], sig: &[u8; SIGNATURE_LEN]) -> bool {
        signature::UnparsedPublicKey::new(&signature::ED25519, &self.0)
            .verify(msg, sig)
            .is_ok()
    }
}

/// An X25519 secret (the `c` key for share encryption or the `s` key for pairwise masks).
#[derive(Zeroize)]
#[zeroize(drop)]
pub(crate) struct AgreementSecret(pub(crate) [u8; 32]);

impl AgreementSecret {
    pub(crate) fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> AgreementSecret {
        let mut s = [0u8; 32];
        rng.fill_bytes(&mut s);
        AgreementSecret(s)
    }

    fn private(&self) -> Result<agreement::PrivateKey, Error> {
        agreement::PrivateKey::from_private_key(&agreement::X25519, &self.0)
            .map_err(|_| Error::Primitive)
    }

    pub(crate) fn public(&self) -> Result<[u8; PUBLIC_LEN], Error> {
        let pk = self
            .private()?
            .compute_public_key()
            .map_err(|_| Error::Primitive)?;
        let mut out = [0u8; PUBLIC_LEN];
        if pk.as_ref().len() != PUBLIC_LEN {
            return Err(Error::Primitive);
        }
        out.copy_from_slice(pk.as_ref());
        Ok(out)
    }

    /// X25519 with `peer`. `None` if the peer key is a low-order point (all-zero shared secret).
    pub(crate) fn agree(
        &self,
        peer: &[u8; PUBLIC_LEN],
    ) -> Result<Option<Zeroizing<[u8; 32]>>, Error> {
        let private = self.private()?;
        let peer = agreement::UnparsedPublicKey::new(&agreement::X25519, peer);
        let shared = agreement::agree(&private, peer, (), |ikm| {
            let mut out = Zeroizing::new([0u8; 32]);
            if ikm.len() == 32 {
                out.copy_from_slice(ikm);
            }
            Ok(out)
        });
        match shared {
            Ok(ikm) if ikm.iter().any(|&b| b != 0) => Ok(Some(ikm)),
            _ => Ok(None),
        }
    }
}

/// Whether `pk` is a usable X25519 public key: agreement with it under a fixed clamped scalar
/// is not all-zero (clamping clears the cofactor, so only small-order points give zero). The
/// server checks this on every advertisement, so a client cannot make its neighbours abort by
/// advertising a degenerate key.
pub(crate) fn usable_x25519(pk: &[u8; PUBLIC_LEN]) -> bool {
    AgreementSecret([0x5a; 32])
        .agree(pk)
        .ok()
        .flatten()
        .is_some()
}

/// HKDF-SHA256 (salt = session id, info = label ‖ id a ‖ id b) of an X25519 shared secret.
pub(crate) fn pair_key(
    shared: &[u8; 32],
    session: &SessionId,
    label: &[u8],
    a: ClientId,
    b: ClientId,
) -> Result<Zeroizing<[u8; 32]>, Error> {
    hkdf32(
        shared,
        &session.0,
        &[label, &a.0.to_le_bytes(), &b.0.to_le_bytes()],
    )
}

/// HKDF-SHA256 to 32 bytes.
pub(crate) fn hkdf32(
    ikm: &[u8],
    salt: &[u8],
    info: &[&[u8]],
) -> Result<Zeroizing<[u8; 32]>, Error> {
    struct Len32;
    impl hkdf::KeyType for Len32 {
        fn len(&self) -> usize {
            32
        }
    }
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(ikm);
    let okm = prk.expand(info, Len32).map_err(|_| Error::Primitive)?;
    let mut out = Zeroizing::new([0u8; 32]);
    okm.fill(out.as_mut()).map_err(|_| Error::Primitive)?;
    Ok(out)
}

/// SHA-256 over the concatenation of `parts`.
pub(crate) fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    let d = ctx.finish();
    let mut out = [0u8; 32];
    out.iter_mut().zip(d.as_ref()).for_each(|(o, s)| *o = *s);
    out
}

/// Encrypts a share bundle under a single-use pair key (the nonce can be fixed: the key is
/// derived for this session, this sender and this recipient, and encrypts one message).
pub(crate) fn seal_share(key: &[u8; 32], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, Error> {
    let key = aead::LessSafeKey::new(
        aead::UnboundKey::new(&aead::AES_256_GCM, key).map_err(|_| Error::Primitive)?,
    );
    let mut buf = plaintext.to_vec();
    key.seal_in_place_append_tag(
        aead::Nonce::assume_unique_for_key([0u8; 12]),
        aead::Aad::from(aad),
        &mut buf,
    )
    .map_err(|_| Error::Primitive)?;
    Ok(buf)
}

/// Opens a share bundle; `None` if it does not authenticate. No plaintext is released otherwise.
pub(crate) fn open_share(
    key: &[u8; 32],
    aad: &[u8],
    ciphertext: &[u8],
) -> Option<Zeroizing<Vec<u8>>> {
    let key = aead::LessSafeKey::new(aead::UnboundKey::new(&aead::AES_256_GCM, key).ok()?);
    let mut buf = Zeroizing::new(ciphertext.to_vec());
    let n = key
        .open_in_place(
            aead::Nonce::assume_unique_for_key([0u8; 12]),
            aead::Aad::from(aad),
            buf.as_mut_slice(),
        )
        .ok()?
        .len();
    buf.truncate(n);
    Some(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ed25519 PKCS#8 document (v2 with the public key, or v1) from the provider.
    fn pkcs8(v2: bool) -> Vec<u8> {
        signature::Ed25519KeyPair::generate()
            .and_then(|p| if v2 { p.to_pkcs8() } else { p.to_pkcs8v1() })
            .map(|d| d.as_ref().to_vec())
            .unwrap_or_default()
    }

    #[test]
    fn from_pkcs8_loads_the_key_and_signs_with_it() {
        for v2 in [true, false] {
            loads(&pkcs8(v2));
        }
    }

    fn loads(der: &[u8]) {
        assert!(!der.is_empty());
        let key = IdentityKey::from_pkcs8(der);
        assert!(key.is_ok(), "{key:?}");
        let Ok(key) = key else { return };
        let pair = signature::Ed25519KeyPair::from_pkcs8(der);
        let public = pair.as_ref().map(|p| p.public_key().as_ref().to_vec());
        assert_eq!(public.ok().as_deref(), Some(key.public().0.as_slice()));
        let sig = key.sign(b"message");
        assert!(key.public().verify(b"message", &sig));
        assert!(!key.public().verify(b"another message", &sig));
    }

    #[test]
    fn from_pkcs8_refuses_other_keys_and_garbage() {
        assert!(IdentityKey::from_pkcs8(&[]).is_err());
        assert!(IdentityKey::from_pkcs8(b"not a key").is_err());
        let mut der = pkcs8(true);
        if let Some(last) = der.last_mut() {
            *last ^= 1; // the embedded public key no longer matches
        }
        assert!(IdentityKey::from_pkcs8(&der).is_err());
        // An ECDSA P-256 PKCS#8 key is not an identity key.
        let p256 = signature::EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_ASN1_SIGNING)
            .and_then(|p| p.to_pkcs8v1())
            .map(|d| d.as_ref().to_vec())
            .unwrap_or_default();
        assert!(!p256.is_empty());
        assert!(IdentityKey::from_pkcs8(&p256).is_err());
    }
}
