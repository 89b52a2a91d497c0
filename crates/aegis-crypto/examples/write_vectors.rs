//! Writes the frozen test vectors of `docs/format.md` §5 (run once; kept to document how they
//! were made).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::path::PathBuf;

use aegis_crypto::{v1, v2};

#[path = "../tests/support/vectors.rs"]
mod support;
use support::{pattern, test_key};

fn vector_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

/// Writes the vectors. They are frozen: this only ever ran once, to create them; it is kept to
/// document how they were made (`AEGIS_WRITE_VECTORS=1 cargo run -p aegis-crypto --example
/// write_vectors`).
fn main() {
    if std::env::var_os("AEGIS_WRITE_VECTORS").is_none() {
        eprintln!("the vectors are frozen; set AEGIS_WRITE_VECTORS=1 only to create a new set");
        std::process::exit(2);
    }
    let dir = vector_dir();
    let key = test_key();
    let mut manifest = Vec::new();
    let mut put = |name: &str, bytes: &[u8], format: &str, expect: &str, len: usize| {
        std::fs::write(dir.join(name), bytes).unwrap();
        manifest.push(serde_json::json!({"file": name, "format": format, "expect": expect, "plaintext_len": len}));
    };
    let small = v2::Options {
        chunk_log2: 12,
        parallel: false,
    };
    for len in [0usize, 1, 4095, 4096, 4097, 12288] {
        let blob = v2::seal(&key, &pattern(len), small).unwrap();
        put(&format!("v2_chunk4k_{len}.aegis"), &blob, "v2", "ok", len);
    }
    let blob = v2::seal(&key, &pattern(65537), v2::Options::default()).unwrap();
    put("v2_chunk64k_65537.aegis", &blob, "v2", "ok", 65537);

    let three = v2::seal(&key, &pattern(12288), small).unwrap();
    let sealed = 4096 + 16;
    let h = v2::HEADER_LEN;
    put(
        "bad_v2_truncated_at_chunk_boundary.aegis",
        &three[..h + sealed],
        "v2",
        "decrypt",
        0,
    );
    put(
        "bad_v2_truncated_in_tag.aegis",
        &three[..three.len() - 5],
        "v2",
        "decrypt",
        0,
    );
    put("bad_v2_header_only.aegis", &three[..h], "v2", "decrypt", 0);
    let mut swapped = three[..h].to_vec();
    swapped.extend_from_slice(&three[h + sealed..h + 2 * sealed]);
    swapped.extend_from_slice(&three[h..h + sealed]);
    swapped.extend_from_slice(&three[h + 2 * sealed..]);
    put("bad_v2_chunks_swapped.aegis", &swapped, "v2", "decrypt", 0);
    let mut appended = three.clone();
    appended.push(0);
    put("bad_v2_byte_appended.aegis", &appended, "v2", "decrypt", 0);
    let mut flipped = three.clone();
    flipped[20] ^= 1; // nonce prefix: header MAC fails
    put(
        "bad_v2_header_bit_flipped.aegis",
        &flipped,
        "v2",
        "decrypt",
        0,
    );
    let mut body = three.clone();
    body[h + sealed + 100] ^= 0x80;
    put("bad_v2_body_bit_flipped.aegis", &body, "v2", "decrypt", 0);
    let mut other_key = three.clone();
    other_key[12] ^= 1; // key id
    put(
        "bad_v2_unknown_key.aegis",
        &other_key,
        "v2",
        "unknown_key",
        0,
    );
    let mut version = three.clone();
    version[6] = 3;
    put("bad_v2_version_3.aegis", &version, "v2", "unsupported", 0);
    let mut chunk = three.clone();
    chunk[8] = 30;
    put("bad_v2_chunk_size.aegis", &chunk, "v2", "malformed", 0);

    let v1 = v1::seal(&key, &pattern(1000)).unwrap();
    put("v1_1000.bin", &v1, "v1", "ok", 1000);
    let mut v1bad = v1.clone();
    v1bad[500] ^= 1;
    put("bad_v1_bit_flipped.bin", &v1bad, "v1", "decrypt", 0);
    put("bad_v1_short.bin", &v1[..20], "v1", "malformed", 0);

    std::fs::write(dir.join("key_id.txt"), format!("{}\n", key.id())).unwrap();
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_string_pretty(&manifest).unwrap() + "\n",
    )
    .unwrap();
}
