//! The key-file store: 0600 from creation, loose permissions refused, corrupt keys reported and
//! never overwritten, Python-written keys adopted, rotation persisted and crash-ordered
//! (docs/format.md §1).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use aegis_crypto::store::{Backend, KeyStore, Location, StoreConfig};
use aegis_crypto::{Error, KeyStatus, SecretKey};
use base64::Engine as _;

fn store(dir: &Path) -> KeyStore {
    KeyStore::new(StoreConfig {
        backend: Backend::File,
        key_file: dir.join("aegis_key.key"),
        ..StoreConfig::default()
    })
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn init_creates_0600_files_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let (ks, loc) = s.init().unwrap();
    let kf = dir.path().join("aegis_key.key");
    assert_eq!(loc, Location::File(kf.clone()));
    assert_eq!(mode(&kf), 0o600);
    assert_eq!(mode(&dir.path().join("aegis_key.key.keyset")), 0o600);
    let text = std::fs::read_to_string(&kf).unwrap();
    assert_eq!(text.len(), 44, "URL-safe Base64 with padding, no newline");
    assert_eq!(SecretKey::from_base64(&text, "t").unwrap(), *ks.primary());
    let before = std::fs::read(&kf).unwrap();
    assert!(s.init().is_err());
    assert_eq!(std::fs::read(&kf).unwrap(), before);
    let (again, _) = s.load().unwrap();
    assert_eq!(again.primary_id(), ks.primary_id());
}

#[test]
fn init_is_0600_even_with_a_permissive_umask() {
    // The mode is given to open(2) at creation, so group/other bits never exist, whatever the
    // umask (umask only removes bits). Other tests of this binary only create 0600 files too.
    let old = rustix::process::umask(rustix::fs::Mode::empty());
    let dir = tempfile::tempdir().unwrap();
    let r = store(dir.path()).init();
    rustix::process::umask(old);
    r.unwrap();
    assert_eq!(mode(&dir.path().join("aegis_key.key")), 0o600);
    assert_eq!(mode(&dir.path().join("aegis_key.key.keyset")), 0o600);
}

#[test]
fn loose_permissions_are_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    s.init().unwrap();
    let kf = dir.path().join("aegis_key.key");
    for m in [0o640, 0o604, 0o660, 0o644] {
        std::fs::set_permissions(&kf, std::fs::Permissions::from_mode(m)).unwrap();
        let err = s.load().unwrap_err();
        assert!(
            matches!(err, Error::LoosePermissions { .. }),
            "{m:o}: {err}"
        );
        assert!(err.to_string().contains("chmod 600"));
    }
    let lax = KeyStore::new(StoreConfig {
        allow_loose_permissions: true,
        ..s.config().clone()
    });
    lax.load().unwrap();
}

#[test]
fn corrupt_keys_are_errors_and_left_untouched() {
    for bad in [&b"not-base64!!"[..], b"", b"AAAA", &[0xff, 0xfe, 0x00][..]] {
        let dir = tempfile::tempdir().unwrap();
        let kf = dir.path().join("aegis_key.key");
        std::fs::write(&kf, bad).unwrap();
        std::fs::set_permissions(&kf, std::fs::Permissions::from_mode(0o600)).unwrap();
        let s = store(dir.path());
        let err = s.load().unwrap_err();
        assert!(matches!(err, Error::CorruptKey { .. }), "{err}");
        assert!(s.init().is_err(), "init must not overwrite a corrupt key");
        assert_eq!(std::fs::read(&kf).unwrap(), bad);
        // The error names the file but never any key material.
        assert!(err.to_string().contains("aegis_key.key"));
    }
    // Base64 of 16 bytes: valid Base64, wrong length.
    let dir = tempfile::tempdir().unwrap();
    let kf = dir.path().join("aegis_key.key");
    let short = base64::engine::general_purpose::URL_SAFE.encode([1u8; 16]);
    std::fs::write(&kf, &short).unwrap();
    std::fs::set_permissions(&kf, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(matches!(
        store(dir.path()).load(),
        Err(Error::CorruptKey { .. })
    ));
}

#[test]
fn python_written_key_is_adopted_and_remembered() {
    let dir = tempfile::tempdir().unwrap();
    let kf = dir.path().join("aegis_key.key");
    let raw = [0x5au8; 32];
    // Python: base64.urlsafe_b64encode(key), perhaps with a newline.
    let text = format!(
        "{}\n",
        base64::engine::general_purpose::URL_SAFE.encode(raw)
    );
    aegis_crypto::fsutil::create_private(&kf, text.as_bytes()).unwrap();
    let s = store(dir.path());
    let (ks, _) = s.load().unwrap();
    assert_eq!(ks.primary().expose(), &raw);
    assert_eq!(ks.entries()[0].created, None);
    // The keyset document now remembers the adopted key ...
    assert!(dir.path().join("aegis_key.key.keyset").exists());
    // ... so if the Python system later overwrites the key file, the old key still decrypts.
    let newer = base64::engine::general_purpose::URL_SAFE.encode([0x6bu8; 32]);
    aegis_crypto::fsutil::replace_private(&kf, newer.as_bytes()).unwrap();
    let (ks2, _) = s.load().unwrap();
    assert_eq!(ks2.primary().expose(), &[0x6bu8; 32]);
    assert!(
        ks2.decryption_key(SecretKey::from_bytes(raw).id())
            .is_some()
    );
}

#[test]
fn standard_base64_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let kf = dir.path().join("aegis_key.key");
    let raw = [0xfbu8; 32]; // encodes with '+' and '/' in the standard alphabet
    let text = base64::engine::general_purpose::STANDARD.encode(raw);
    assert!(text.contains('+') || text.contains('/'));
    aegis_crypto::fsutil::create_private(&kf, text.as_bytes()).unwrap();
    let (ks, _) = store(dir.path()).load().unwrap();
    assert_eq!(ks.primary().expose(), &raw);
}

#[test]
fn rotation_retire_destroy_persist_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let (mut ks, loc) = s.init().unwrap();
    let k1 = ks.primary_id();
    let k2 = ks.rotate().unwrap();
    s.save(&ks, &loc).unwrap();
    assert_eq!(mode(&dir.path().join("aegis_key.key")), 0o600);
    let (mut ks, _) = s.load().unwrap();
    assert_eq!(ks.primary_id(), k2);
    assert_eq!(ks.entry(k1).unwrap().status, KeyStatus::Retained);
    ks.retire(k1).unwrap();
    ks.destroy(k1).unwrap();
    s.save(&ks, &loc).unwrap();
    let (ks, _) = s.load().unwrap();
    let e = ks.entry(k1).unwrap();
    assert_eq!(e.status, KeyStatus::Destroyed);
    assert!(e.material().is_none());
    let doc = std::fs::read_to_string(dir.path().join("aegis_key.key.keyset")).unwrap();
    assert_eq!(
        doc.matches("\"key\"").count(),
        1,
        "only the primary's material remains"
    );
}

#[test]
fn missing_store_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = store(dir.path()).load().unwrap_err().to_string();
    assert!(err.contains("aegis key init"), "{err}");
}
