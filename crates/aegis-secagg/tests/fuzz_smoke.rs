#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! The fuzz targets of `fuzz/` (cargo-fuzz, nightly) on stable: the same bodies
//! (`fuzz/harness.rs`) over a few thousand seeded random and mutated-valid inputs, so CI
//! exercises them without nightly or libFuzzer.
//!
//! `AEGIS_FUZZ_SEED_CORPUS=DIR cargo test -p aegis-secagg --test fuzz_smoke write_seed_corpus`
//! writes the valid messages of one honest round to `DIR/decode/` and a few honest scripts to
//! `DIR/server/`, as a starting corpus for `cargo +nightly fuzz run`.

#[path = "../../../fuzz/harness.rs"]
mod harness;

use chacha20::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

/// A random edit of `base`: bit flips, byte overwrites, truncation, extension, splicing of a
/// piece of `other`, or a field-sized overwrite with an extreme value.
fn mutate(base: &[u8], other: &[u8], rng: &mut ChaCha20Rng) -> Vec<u8> {
    let mut v = base.to_vec();
    let edits = 1 + rng.next_u32() % 4;
    for _ in 0..edits {
        let len = v.len().max(1);
        let at = (rng.next_u64() % len as u64) as usize;
        match rng.next_u32() % 7 {
            0 => {
                if let Some(b) = v.get_mut(at) {
                    *b ^= 1 << (rng.next_u32() % 8);
                }
            }
            1 => {
                if let Some(b) = v.get_mut(at) {
                    *b = rng.next_u32() as u8;
                }
            }
            2 => v.truncate(at),
            3 => {
                let n = 1 + rng.next_u32() as usize % 64;
                v.extend((0..n).map(|_| rng.next_u32() as u8));
            }
            4 if !other.is_empty() => {
                let from = (rng.next_u64() % other.len() as u64) as usize;
                let n = 1 + rng.next_u32() as usize % 64;
                let piece = &other[from..(from + n).min(other.len())];
                let at = at.min(v.len());
                v.splice(at..(at + piece.len()).min(v.len()), piece.iter().copied());
            }
            5 => {
                // A length or count field set to something extreme.
                let val: u32 = match rng.next_u32() % 4 {
                    0 => 0,
                    1 => u32::MAX,
                    2 => 1 << 20,
                    _ => rng.next_u32() % 4096,
                };
                for (k, b) in val.to_le_bytes().iter().enumerate() {
                    if let Some(x) = v.get_mut(at + k) {
                        *x = *b;
                    }
                }
            }
            _ => {
                // Change the version or the type tag.
                let i = (rng.next_u32() % 2) as usize;
                if let Some(b) = v.get_mut(i) {
                    *b = rng.next_u32() as u8;
                }
            }
        }
    }
    v
}

fn random_bytes(rng: &mut ChaCha20Rng, max: usize) -> Vec<u8> {
    let n = rng.next_u32() as usize % max;
    (0..n).map(|_| rng.next_u32() as u8).collect()
}

#[test]
fn decode_honest_messages_round_trip() {
    let transcript = harness::honest_transcript();
    // Setup, ShareKeysRequest, MaskedInputRequest, ConsistencyRequest, UnmaskRequest for 5
    // clients and their 5 answers each: 50 messages.
    assert!(transcript.len() >= 40, "only {} messages", transcript.len());
    for m in &transcript {
        harness::decode(m);
    }
}

#[test]
fn decode_random_and_mutated() {
    let transcript = harness::honest_transcript();
    let mut rng = ChaCha20Rng::seed_from_u64(0xdec0de);
    for _ in 0..2000 {
        harness::decode(&random_bytes(&mut rng, 300));
    }
    // Random bytes behind a valid version and each type tag, so decoding gets past the header.
    for tag in [1u8, 2, 3, 4, 5, 6, 0x81, 0x82, 0x83, 0x84, 0x85] {
        for _ in 0..100 {
            let mut v = vec![1, tag];
            v.extend(random_bytes(&mut rng, 200));
            harness::decode(&v);
        }
    }
    for i in 0..4000 {
        let base = &transcript[i % transcript.len()];
        let other = &transcript[(i * 7 + 3) % transcript.len()];
        harness::decode(&mutate(base, other, &mut rng));
    }
}

/// An `Abort` whose reason holds invalid UTF-8: `ServerMessage::decode` replaces each bad byte
/// with U+FFFD (3 bytes, `from_utf8_lossy`), so 342 bytes of 0xFF decode to a 1026-byte
/// reason; `encode` cuts reasons at 1024 bytes, in the middle of the last U+FFFD, and the
/// re-decoded reason is 342 × U+FFFD minus the last plus a new U+FFFD for the cut bytes —
/// a different string (1024 → 1023 + 3 bytes). 380 bytes in all: 01 06, 32 × 00, 56 01 00 00,
/// 342 × FF.
#[test]
fn decode_abort_with_invalid_utf8_round_trips() {
    let mut v = vec![1u8, 6];
    v.extend([0u8; 32]);
    v.extend(342u32.to_le_bytes());
    v.extend([0xffu8; 342]);
    assert_eq!(v.len(), 380);
    harness::decode(&v);
}

/// Scripts that deliver only honest messages and deadlines in a random order: the round must
/// complete (or abort) and, when it completes, be exact.
#[test]
fn server_honest_scripts() {
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let mut completed = 0;
    for _ in 0..60 {
        // Ops 0..=2 (honest delivery) for random clients, with an occasional deadline (3).
        let script: Vec<u8> = (0..64)
            .map(|_| {
                let client = (rng.next_u32() % 5) as u8;
                let op = if rng.next_u32() % 64 == 0 { 3 } else { 0 };
                (client << 3) | op
            })
            .collect();
        let ran = harness::server(&script);
        assert!(!ran.tainted);
        // Without a deadline in the script nobody is dropped: the round must complete.
        assert!(
            ran.completed || script.iter().any(|op| op & 7 == 3),
            "an honest round without deadlines did not complete: {script:?}"
        );
        completed += usize::from(ran.completed);
    }
    eprintln!("{completed} of 60 honest rounds completed");
    // A deadline in the middle of a stage drops the clients that have not answered yet, and
    // with n = 5, t = 3 two drops abort the round; 33 of these 60 complete.
    assert!(
        completed >= 20,
        "only {completed} of 60 honest rounds completed"
    );
}

/// Random scripts: every operation, with random and mutated bytes.
#[test]
fn server_random_scripts() {
    let mut rng = ChaCha20Rng::seed_from_u64(6);
    for i in 0..600 {
        let len = 1 + rng.next_u32() as usize % if i % 3 == 0 { 4000 } else { 400 };
        let script: Vec<u8> = (0..len).map(|_| rng.next_u32() as u8).collect();
        harness::server(&script);
    }
}

/// Scripts biased towards the mutation and replay operations, so mutated valid messages reach
/// every stage.
#[test]
fn server_mutation_scripts() {
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let mut completed = 0;
    for _ in 0..400 {
        let mut script = Vec::new();
        for _ in 0..48 {
            let client = (rng.next_u32() % 5) as u8;
            let op = match rng.next_u32() % 32 {
                0..=27 => 0,
                28 => 5,
                29 => 6,
                30 => 4,
                _ => 3,
            };
            script.push((client << 3) | op);
            match op {
                5 => {
                    let edits = rng.next_u32() as u8;
                    script.push(edits);
                    for _ in 0..(edits & 3) + 1 {
                        script.extend((rng.next_u32() as u16).to_le_bytes());
                        script.push(rng.next_u32() as u8);
                    }
                }
                6 => script.extend((rng.next_u32() as u16).to_le_bytes()),
                4 => {
                    let n = rng.next_u32() as u16 % 200;
                    script.extend(n.to_le_bytes());
                    script.extend((0..n).map(|_| rng.next_u32() as u8));
                }
                _ => {}
            }
        }
        completed += usize::from(harness::server(&script).completed);
    }
    eprintln!("{completed} of 400 mutated rounds completed");
    // Mutations mostly drop their sender, and with 5 clients and t = 3 two drops abort the
    // round; 33 of these 400 complete.
    assert!(
        completed >= 15,
        "only {completed} of 400 mutated rounds completed"
    );
}

/// Writes a starting corpus for the cargo-fuzz targets when `AEGIS_FUZZ_SEED_CORPUS` is set.
#[test]
fn write_seed_corpus() {
    let Some(dir) = std::env::var_os("AEGIS_FUZZ_SEED_CORPUS") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let decode = dir.join("decode");
    let server = dir.join("server");
    std::fs::create_dir_all(&decode).unwrap();
    std::fs::create_dir_all(&server).unwrap();
    for (i, m) in harness::honest_transcript().iter().enumerate() {
        std::fs::write(decode.join(format!("honest-{i:02}")), m).unwrap();
    }
    let mut rng = ChaCha20Rng::seed_from_u64(8);
    for i in 0..8 {
        let script: Vec<u8> = (0..64)
            .map(|_| (((rng.next_u32() % 5) as u8) << 3) | if i % 2 == 0 { 0 } else { 5 })
            .collect();
        std::fs::write(server.join(format!("script-{i}")), script).unwrap();
    }
}
