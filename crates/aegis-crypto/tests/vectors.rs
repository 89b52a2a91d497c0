//! Known-answer tests: Wycheproof AES-256-GCM through our v1 wrapper, and the frozen v1/v2
//! vectors of `docs/format.md` §5 that every later version must still open.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::path::PathBuf;

use aegis_crypto::{Error, Format, Keyset, SecretKey, v1};

#[path = "support/vectors.rs"]
mod support;
use support::{pattern, test_key};

fn vector_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

#[test]
fn wycheproof_aes_256_gcm_through_v1() {
    let set = wycheproof::aead::TestSet::load(wycheproof::aead::TestName::AesGcm).unwrap();
    let mut checked = 0;
    for group in set.test_groups {
        // v1 is AES-256, 96-bit nonce, 128-bit tag, no associated data.
        if group.key_size != 256 || group.nonce_size != 96 || group.tag_size != 128 {
            continue;
        }
        for t in group.tests {
            if !t.aad.is_empty() {
                continue;
            }
            let key = SecretKey::from_bytes(t.key[..].try_into().unwrap());
            let mut blob = t.nonce.to_vec();
            blob.extend_from_slice(&t.ct);
            blob.extend_from_slice(&t.tag);
            let got = v1::open(&key, &blob);
            match t.result {
                wycheproof::TestResult::Valid => {
                    assert_eq!(got.unwrap(), &t.pt[..], "tc {}", t.tc_id);
                }
                wycheproof::TestResult::Invalid => {
                    assert!(got.is_err(), "tc {} must be rejected", t.tc_id);
                }
                wycheproof::TestResult::Acceptable => {}
            }
            checked += 1;
        }
    }
    assert!(checked > 20, "only {checked} Wycheproof vectors applied");
}

#[test]
fn key_id_derivation_is_frozen() {
    // docs/format.md §2: key id = HKDF-Expand(HKDF-Extract("", K), "aegis key id", 8).
    assert_eq!(
        test_key().id().to_string(),
        include_str!("vectors/key_id.txt").trim()
    );
}

#[derive(serde::Deserialize)]
struct Case {
    file: String,
    format: String,
    expect: String,
    #[serde(default)]
    plaintext_len: usize,
}

#[test]
fn frozen_vectors_still_open() {
    let manifest = std::fs::read_to_string(vector_dir().join("manifest.json")).unwrap();
    let cases: Vec<Case> = serde_json::from_str(&manifest).unwrap();
    assert!(cases.len() >= 12);
    let keys = Keyset::new(test_key(), None);
    for c in cases {
        let data = std::fs::read(vector_dir().join(&c.file)).unwrap();
        let fmt = Format::detect(&data).to_string();
        assert_eq!(fmt, c.format, "{}: format", c.file);
        let got = aegis_crypto::open(&keys, &data);
        match c.expect.as_str() {
            "ok" => assert_eq!(got.unwrap(), pattern(c.plaintext_len), "{}", c.file),
            "decrypt" => assert!(
                matches!(got, Err(Error::Decrypt | Error::NoKeyOpens { .. })),
                "{}: {got:?}",
                c.file
            ),
            "unknown_key" => assert!(
                matches!(got, Err(Error::UnknownKey { .. })),
                "{}: {got:?}",
                c.file
            ),
            "unsupported" => assert!(
                matches!(got, Err(Error::Unsupported { .. })),
                "{}: {got:?}",
                c.file
            ),
            "malformed" => assert!(
                matches!(got, Err(Error::Malformed(_))),
                "{}: {got:?}",
                c.file
            ),
            other => panic!("unknown expectation {other}"),
        }
    }
}
