//! Criterion benchmarks of the at-rest half, in memory (no file I/O): the v1 blob, the v2
//! stream (one core and all cores), and the v2 header rewrap that key rotation costs per file.
//!
//! ```text
//! cargo bench -p aegis-crypto --bench atrest            # everything, about 1–2 minutes
//! cargo bench -p aegis-crypto --bench atrest -- v2_     # only the v2 groups
//! ```
//!
//! Throughput is plaintext bytes per second. `bench/atrest.sh` measures the same code through
//! the `aegis` binary on real files and compares it with OpenSSL and Python `cryptography`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use aegis_crypto::{Keyset, v1, v2};
use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};

const MIB: usize = 1 << 20;
/// log2 of the v2 chunk size benchmarked (the CLI default, 64 KiB).
const CHUNK_LOG2: u8 = 16;

/// `len` bytes of cheap pseudo-random data (AES does not care what it encrypts).
fn data(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

fn label(len: usize) -> String {
    format!("{}MiB", len / MIB)
}

fn keys() -> (Keyset, Keyset) {
    let keyset = Keyset::generate().unwrap();
    let mut ks2 = keyset.clone();
    ks2.rotate().unwrap();
    (keyset, ks2)
}

/// Ten samples in about three seconds per benchmark (the whole run stays near 1.5 minutes).
/// Flat sampling: a 64 MiB iteration takes tens of milliseconds, too long for the linear mode.
fn configure(g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
}

fn bench_v1(c: &mut Criterion) {
    let (keyset, _) = keys();
    let key = keyset.primary();
    let mut g = c.benchmark_group("v1");
    configure(&mut g);
    for len in [MIB, 64 * MIB] {
        let pt = data(len);
        let blob = v1::seal(key, &pt).unwrap();
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_with_input(BenchmarkId::new("seal", label(len)), &pt, |b, pt| {
            b.iter(|| v1::seal(key, black_box(pt)).unwrap());
        });
        g.bench_with_input(BenchmarkId::new("open", label(len)), &blob, |b, blob| {
            b.iter(|| v1::open(key, black_box(blob)).unwrap());
        });
    }
    g.finish();
}

fn bench_v2_encrypt(c: &mut Criterion) {
    let (keyset, _) = keys();
    let key = keyset.primary();
    let len = 64 * MIB;
    let pt = data(len);
    let mut g = c.benchmark_group("v2_encrypt");
    configure(&mut g);
    g.throughput(Throughput::Bytes(len as u64));
    for parallel in [false, true] {
        let name = if parallel { "parallel" } else { "sequential" };
        g.bench_with_input(BenchmarkId::new(name, label(len)), &pt, |b, pt| {
            b.iter(|| {
                let opts = v2::Options {
                    chunk_log2: CHUNK_LOG2,
                    parallel,
                };
                v2::Encryptor::new(std::io::sink(), key, opts)
                    .unwrap()
                    .encrypt_from(&mut black_box(&pt[..]))
                    .unwrap()
            });
        });
    }
    g.finish();
}

fn bench_v2_decrypt(c: &mut Criterion) {
    let (keyset, _) = keys();
    let len = 64 * MIB;
    let pt = data(len);
    let opts = v2::Options {
        chunk_log2: CHUNK_LOG2,
        parallel: true,
    };
    let blob = v2::seal(keyset.primary(), &pt, opts).unwrap();
    let mut g = c.benchmark_group("v2_decrypt");
    configure(&mut g);
    g.throughput(Throughput::Bytes(len as u64));
    g.bench_with_input(
        BenchmarkId::new("open_to_vec", label(len)),
        &blob,
        |b, blob| {
            b.iter(|| v2::open(&keyset, black_box(blob)).unwrap());
        },
    );
    g.bench_with_input(
        BenchmarkId::new("sequential", label(len)),
        &blob,
        |b, blob| {
            b.iter(|| {
                v2::Decryptor::new(black_box(&blob[..]), &keyset)
                    .unwrap()
                    .sequential()
                    .decrypt_to(&mut std::io::sink())
                    .unwrap()
            });
        },
    );
    g.bench_with_input(
        BenchmarkId::new("parallel", label(len)),
        &blob,
        |b, blob| {
            b.iter(|| {
                v2::Decryptor::new(black_box(&blob[..]), &keyset)
                    .unwrap()
                    .decrypt_to(&mut std::io::sink())
                    .unwrap()
            });
        },
    );
    g.finish();
}

/// The floor under v2: aws-lc's AES-256-GCM through aws-lc-rs, sealing a preallocated 64 MiB
/// buffer in place in 64 KiB chunks on one core — no staging copy, no allocation, no threads.
/// v2's one-core figure divided by this one is what the stream layer costs.
fn bench_aead_floor(c: &mut Criterion) {
    use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7u8; 32]).unwrap());
    let len = 64 * MIB;
    let mut buf = data(len);
    let mut g = c.benchmark_group("aead_floor");
    configure(&mut g);
    g.throughput(Throughput::Bytes(len as u64));
    g.bench_function(
        BenchmarkId::new("aws_lc_seal_in_place_64KiB_chunks", label(len)),
        |b| {
            b.iter(|| {
                for (i, chunk) in buf.chunks_mut(1 << CHUNK_LOG2).enumerate() {
                    let mut n = [0u8; 12];
                    n[..8].copy_from_slice(&(i as u64).to_be_bytes());
                    let tag = key
                        .seal_in_place_separate_tag(
                            Nonce::assume_unique_for_key(n),
                            Aad::empty(),
                            chunk,
                        )
                        .unwrap();
                    let _ = black_box(tag);
                }
            });
        },
    );
    g.finish();
}

fn bench_rewrap(c: &mut Criterion) {
    let (keyset, ks2) = keys();
    let new_key = ks2.primary();
    let blob = v2::seal(keyset.primary(), &data(4096), v2::Options::default()).unwrap();
    let mut g = c.benchmark_group("v2_rewrap");
    configure(&mut g);
    g.sample_size(20).sampling_mode(SamplingMode::Auto);
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse_rewrap_header", |b| {
        b.iter(|| {
            v2::Header::parse(black_box(&blob))
                .unwrap()
                .rewrap(&keyset, new_key)
                .unwrap()
        });
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_aead_floor,
    bench_v1,
    bench_v2_encrypt,
    bench_v2_decrypt,
    bench_rewrap
);
criterion_main!(benches);
