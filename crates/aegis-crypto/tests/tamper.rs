//! Tampering: every header byte, body and tag bits, truncation at every chunk boundary, swapped
//! / duplicated / reordered chunks, appended data, wrong keys — always an error, never plaintext.
//! Also: a failed decryption through the file API leaves no output file (docs/format.md §4.2).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use aegis_crypto::file::{self, Input, Output};
use aegis_crypto::{Error, Keyset, v1, v2};

const C: usize = 4096;
const SEALED: usize = C + 16;
const H: usize = v2::HEADER_LEN;

fn setup(len: usize) -> (Keyset, Vec<u8>, Vec<u8>) {
    let keys = Keyset::generate().unwrap();
    let pt: Vec<u8> = (0..len).map(|i| (i * 31 % 256) as u8).collect();
    let blob = v2::seal(
        keys.primary(),
        &pt,
        v2::Options {
            chunk_log2: 12,
            parallel: false,
        },
    )
    .unwrap();
    (keys, pt, blob)
}

fn chunks(blob: &[u8]) -> Vec<Vec<u8>> {
    blob[H..].chunks(SEALED).map(<[u8]>::to_vec).collect()
}

fn join(header: &[u8], cs: &[Vec<u8>]) -> Vec<u8> {
    let mut v = header.to_vec();
    for c in cs {
        v.extend_from_slice(c);
    }
    v
}

#[test]
fn every_header_byte_is_authenticated() {
    let (keys, _, blob) = setup(3 * C + 10);
    for i in 0..H {
        for bit in [0x01u8, 0x80] {
            let mut b = blob.clone();
            b[i] ^= bit;
            assert!(
                aegis_crypto::open(&keys, &b).is_err(),
                "header byte {i} bit {bit:#x}"
            );
        }
    }
}

#[test]
fn body_and_tag_bits_are_authenticated() {
    let (keys, _, blob) = setup(3 * C + 10);
    let positions = [
        H,
        H + 1,
        H + C - 1,
        H + C,
        H + C + 15,
        H + SEALED,
        H + 2 * SEALED + 3,
        blob.len() - 17,
        blob.len() - 1,
    ];
    for &p in &positions {
        let mut b = blob.clone();
        b[p] ^= 0x04;
        assert!(
            matches!(v2::open(&keys, &b), Err(Error::Decrypt)),
            "byte {p}"
        );
    }
}

#[test]
fn truncation_at_every_chunk_boundary_and_inside_tags() {
    let (keys, _, blob) = setup(5 * C);
    for k in 0..5 {
        let cut = H + k * SEALED;
        assert!(
            v2::open(&keys, &blob[..cut]).is_err(),
            "cut at chunk boundary {k}"
        );
        for back in [1, 8, 15, 16, 17] {
            assert!(v2::open(&keys, &blob[..cut + SEALED - back]).is_err());
        }
    }
    assert!(v2::open(&keys, &blob[..H - 1]).is_err());
    assert!(v2::open(&keys, &[]).is_err());
}

#[test]
fn reordered_duplicated_swapped_and_appended_chunks() {
    let (keys, pt, blob) = setup(4 * C + 100);
    let header = &blob[..H];
    let cs = chunks(&blob);
    assert_eq!(v2::open(&keys, &join(header, &cs)).unwrap(), pt);
    let mut swapped = cs.clone();
    swapped.swap(0, 1);
    assert!(v2::open(&keys, &join(header, &swapped)).is_err());
    let mut dup = cs.clone();
    dup.insert(1, cs[1].clone());
    assert!(v2::open(&keys, &join(header, &dup)).is_err());
    let mut dropped = cs.clone();
    dropped.remove(2);
    assert!(v2::open(&keys, &join(header, &dropped)).is_err());
    let mut appended = blob.clone();
    appended.extend_from_slice(&cs[0]);
    assert!(v2::open(&keys, &appended).is_err());
    appended.truncate(blob.len() + 1);
    assert!(v2::open(&keys, &appended).is_err());
}

#[test]
fn chunks_cannot_move_between_files_or_headers_between_files() {
    let (keys, _, a) = setup(2 * C + 1);
    let b = v2::seal(
        keys.primary(),
        &vec![9u8; 2 * C + 1],
        v2::Options {
            chunk_log2: 12,
            parallel: false,
        },
    )
    .unwrap();
    let mut mixed = a[..H].to_vec();
    mixed.extend_from_slice(&b[H..]);
    assert!(v2::open(&keys, &mixed).is_err());
    let mut mixed2 = a[..H + SEALED].to_vec();
    mixed2.extend_from_slice(&b[H + SEALED..]);
    assert!(v2::open(&keys, &mixed2).is_err());
}

#[test]
fn wrong_keys() {
    let (_, pt, blob) = setup(1000);
    let other = Keyset::generate().unwrap();
    assert!(matches!(
        v2::open(&other, &blob),
        Err(Error::UnknownKey { .. })
    ));
    let v1blob = v1::seal(other.primary(), &pt).unwrap();
    let mine = Keyset::generate().unwrap();
    assert!(matches!(
        aegis_crypto::open(&mine, &v1blob),
        Err(Error::NoKeyOpens { tried: 1 })
    ));
}

#[test]
fn failed_decryption_leaves_no_output_file_and_no_temp_files() {
    let (keys, pt, blob) = setup(3 * C + 7);
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.enc");
    std::fs::write(&good, &blob).unwrap();
    let out = dir.path().join("good");
    file::decrypt(
        &keys,
        &Input::Path(good),
        &Output::Path {
            path: out.clone(),
            overwrite: false,
        },
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), pt);

    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", blob[..H + SEALED].to_vec()),
        ("last-tag", {
            let mut b = blob.clone();
            *b.last_mut().unwrap() ^= 1;
            b
        }),
        ("v1-garbage", vec![7u8; 5000]),
    ];
    for (name, bytes) in cases {
        let input = dir.path().join(format!("{name}.enc"));
        std::fs::write(&input, bytes).unwrap();
        let out = dir.path().join(format!("{name}.out"));
        let r = file::decrypt(
            &keys,
            &Input::Path(input),
            &Output::Path {
                path: out.clone(),
                overwrite: false,
            },
            &mut |_| {},
        );
        assert!(r.is_err(), "{name}");
        assert!(!out.exists(), "{name}: no output file may be left");
    }
    for e in std::fs::read_dir(dir.path()).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!n.starts_with(".aegis-tmp-"), "temp file {n} left behind");
    }
}

#[test]
fn decryptor_keeps_failing_after_an_error() {
    use std::io::Read;
    let (keys, _, mut blob) = setup(3 * C);
    let last = blob.len() - 1;
    blob[last] ^= 1;
    let mut d = v2::Decryptor::new(&blob[..], &keys).unwrap().sequential();
    let mut buf = vec![0u8; 3 * C];
    let mut total = 0;
    let err = loop {
        match d.read(&mut buf) {
            Ok(0) => panic!("EOF without error"),
            Ok(n) => total += n,
            Err(e) => break e,
        }
    };
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    // The whole batch failed: nothing of it was released.
    assert_eq!(total, 0);
    assert!(d.read(&mut buf).is_err());
}
