//! v1 and v2 round trips over the sizes that matter (0, 1, chunk − 1, chunk, chunk + 1, batch
//! boundaries, large), both API levels, sequential and parallel, and arbitrary write/read
//! splits (proptest).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::io::{Read, Write};

use aegis_crypto::{Format, Keyset, open, seal, v1, v2};
use proptest::prelude::*;

fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

const BATCH: usize = 4 << 20;

#[test]
fn v1_sizes() {
    let keys = Keyset::generate().unwrap();
    for len in [0, 1, 15, 16, 17, 4095, 4096, 65536, 1 << 20] {
        let pt = data(len, len as u64);
        let blob = v1::seal(keys.primary(), &pt).unwrap();
        assert_eq!(blob.len(), len + 28);
        assert_eq!(open(&keys, &blob).unwrap(), pt);
        assert_eq!(v1::open(keys.primary(), &blob).unwrap(), pt);
    }
}

#[test]
fn v1_nonces_are_fresh() {
    let keys = Keyset::generate().unwrap();
    let a = v1::seal(keys.primary(), b"same").unwrap();
    let b = v1::seal(keys.primary(), b"same").unwrap();
    assert_ne!(a[..12], b[..12]);
}

#[test]
fn v2_sizes_around_chunks_and_batches() {
    let keys = Keyset::generate().unwrap();
    for chunk_log2 in [12u8, 16] {
        let c = 1usize << chunk_log2;
        let sizes = [
            0,
            1,
            c - 1,
            c,
            c + 1,
            2 * c,
            3 * c + 5,
            BATCH - 1,
            BATCH,
            BATCH + 1,
            2 * BATCH + c,
        ];
        for &len in &sizes {
            for parallel in [false, true] {
                let pt = data(len, len as u64 ^ u64::from(chunk_log2));
                let opts = v2::Options {
                    chunk_log2,
                    parallel,
                };
                let blob = v2::seal(keys.primary(), &pt, opts).unwrap();
                let h = v2::Header::parse(&blob).unwrap();
                assert_eq!(
                    h.plaintext_len(blob.len() as u64),
                    Some(len as u64),
                    "len {len} c {c}"
                );
                assert_eq!(h.key_id(), keys.primary_id());
                assert_eq!(
                    v2::open(&keys, &blob).unwrap(),
                    pt,
                    "len {len} c {c} par {parallel}"
                );
                let mut out = Vec::new();
                v2::Decryptor::new(&blob[..], &keys)
                    .unwrap()
                    .sequential()
                    .decrypt_to(&mut out)
                    .unwrap();
                assert_eq!(out, pt);
            }
        }
    }
}

#[test]
fn v2_large_stream_through_read_and_write() {
    // 40 MiB: ten batches, through the Write and Read interfaces with odd buffer sizes.
    let keys = Keyset::generate().unwrap();
    let pt = data(40 << 20, 7);
    let mut enc = v2::Encryptor::new(Vec::new(), keys.primary(), v2::Options::default()).unwrap();
    for piece in pt.chunks(1_000_003) {
        enc.write_all(piece).unwrap();
    }
    let blob = enc.finish().unwrap();
    let mut dec = v2::Decryptor::new(&blob[..], &keys).unwrap();
    let mut out = Vec::new();
    let mut buf = vec![0u8; 77_777];
    loop {
        let n = dec.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    assert!(out == pt);
}

#[test]
fn rotation_keeps_old_files_readable_and_rewrap_moves_them() {
    let mut keys = Keyset::generate().unwrap();
    let pt = data(100_000, 1);
    let v1blob = seal(keys.primary(), &pt, Format::V1).unwrap();
    let v2blob = seal(keys.primary(), &pt, Format::V2).unwrap();
    let old = keys.primary_id();
    keys.rotate().unwrap();
    assert_eq!(open(&keys, &v1blob).unwrap(), pt);
    assert_eq!(open(&keys, &v2blob).unwrap(), pt);
    let h = v2::Header::parse(&v2blob).unwrap();
    let new = h.rewrap(&keys, keys.primary()).unwrap();
    assert_eq!(new.key_id(), keys.primary_id());
    let mut moved = new.to_bytes().to_vec();
    moved.extend_from_slice(&v2blob[v2::HEADER_LEN..]);
    // Only the header changed; with the old key retired the moved file still opens.
    keys.retire(old).unwrap();
    assert_eq!(open(&keys, &moved).unwrap(), pt);
    assert!(
        open(&keys, &v2blob).is_err(),
        "old header needs the retired key"
    );
    assert!(open(&keys, &v1blob).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn v2_any_size_any_split(
        len in 0usize..70_000,
        chunk_log2 in 12u8..=14,
        write_split in 1usize..9000,
        read_split in 1usize..9000,
        parallel in any::<bool>(),
    ) {
        let keys = Keyset::generate().unwrap();
        let pt = data(len, len as u64);
        let mut enc = v2::Encryptor::new(Vec::new(), keys.primary(), v2::Options { chunk_log2, parallel }).unwrap();
        for piece in pt.chunks(write_split) {
            enc.write_all(piece).unwrap();
        }
        let blob = enc.finish().unwrap();
        // Same length as the one-shot API.
        let c = 1usize << chunk_log2;
        let chunks = len.div_ceil(c).max(1);
        prop_assert_eq!(blob.len(), v2::HEADER_LEN + len + 16 * chunks);
        let mut dec = v2::Decryptor::new(&blob[..], &keys).unwrap();
        let mut out = Vec::new();
        let mut buf = vec![0u8; read_split];
        loop {
            let n = dec.read(&mut buf).unwrap();
            if n == 0 { break; }
            out.extend_from_slice(&buf[..n]);
        }
        prop_assert_eq!(&out, &pt);
        // The slice API reads what the streaming writer wrote.
        prop_assert_eq!(v2::open(&keys, &blob).unwrap(), pt);
    }

    #[test]
    fn v2_any_truncation_fails(len in 1usize..20_000, cut_frac in 0.0f64..1.0) {
        let keys = Keyset::generate().unwrap();
        let pt = data(len, 3);
        let blob = v2::seal(keys.primary(), &pt, v2::Options { chunk_log2: 12, parallel: false }).unwrap();
        let cut = ((blob.len() as f64) * cut_frac) as usize;
        prop_assume!(cut < blob.len());
        prop_assert!(v2::open(&keys, &blob[..cut]).is_err());
    }
}

#[test]
fn file_pipeline_agrees_with_the_slice_api() {
    use aegis_crypto::file::{self, Input, Output};
    let keys = Keyset::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (chunk_log2, len) in [
        (12u8, 0usize),
        (12, 1),
        (12, 4096),
        (12, BATCH),
        (12, BATCH + 1),
        (16, 3 * BATCH + 65_537),
        (16, 2 * BATCH),
    ] {
        let pt = data(len, len as u64 + 99);
        let src = dir.path().join(format!("p{chunk_log2}-{len}"));
        std::fs::write(&src, &pt).unwrap();
        let enc = dir.path().join(format!("e{chunk_log2}-{len}"));
        let opts = v2::Options {
            chunk_log2,
            parallel: len % 2 == 0,
        };
        let mut seen = 0u64;
        let out = file::encrypt(
            keys.primary(),
            &Input::Path(src),
            &Output::Path {
                path: enc.clone(),
                overwrite: false,
            },
            Format::V2,
            opts,
            &mut |n| seen += n,
        )
        .unwrap();
        assert_eq!((out.plaintext_len, seen), (len as u64, len as u64));
        let blob = std::fs::read(&enc).unwrap();
        // Pipelined writer → streaming reader.
        assert!(v2::open(&keys, &blob).unwrap() == pt, "len {len}");
        // Streaming writer → pipelined reader.
        let other = dir.path().join(format!("o{chunk_log2}-{len}"));
        std::fs::write(&other, v2::seal(keys.primary(), &pt, opts).unwrap()).unwrap();
        let dec = dir.path().join(format!("d{chunk_log2}-{len}"));
        let got = file::decrypt(
            &keys,
            &Input::Path(other),
            &Output::Path {
                path: dec.clone(),
                overwrite: false,
            },
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(got.plaintext_len, len as u64);
        assert!(std::fs::read(&dec).unwrap() == pt);
    }
}
