//! Crash safety of `aegis reencrypt`: the process is killed with SIGKILL at pseudo-random
//! moments of its work, with key rotations in between, and after every kill every file must
//! still decrypt, with the keyset on disk, to its original plaintext. A final run must then
//! bring everything under the primary key and leave no scratch files.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aegis_crypto::store::{Backend, KeyStore, StoreConfig};
use common::{
    Aegis, Rng, Sandbox, assert_no_scratch, assert_success, files_under, is_aegis_scratch, read, s,
};

const SEED: u64 = 0xAE61_5C4A_5E00_0001;
/// Small v2 files (split over the two subdirectories).
const SMALL_V2: usize = 300;
/// v1 files of 64 KiB – 1 MiB.
const MEDIUM_V1: usize = 20;
/// v1 files of about 8 MiB.
const BIG_V1: usize = 3;
/// Kill rounds.
const ROUNDS: usize = 15;
/// Rotate before every this many rounds (and after a round in which the run finished).
const ROTATE_EVERY: usize = 4;
/// At most this many keys live at once.
const MAX_KEYS: usize = 8;
const SIGKILL: i32 = 9;

/// Relative path → plaintext.
type Expected = BTreeMap<PathBuf, Vec<u8>>;

fn load_keys(sb: &Sandbox, when: &str) -> aegis_crypto::Keyset {
    let store = KeyStore::new(StoreConfig {
        backend: Backend::File,
        key_file: sb.key_file(),
        ..StoreConfig::default()
    });
    let (keys, _) = store
        .load()
        .unwrap_or_else(|e| panic!("{when}: the keyset on disk does not load: {e}"));
    keys
}

/// The v1 files (and every 50th v2 file) are written by `aegis encrypt`; the other small v2
/// files are sealed in-process with the same key (every `aegis encrypt` fsyncs, which makes
/// hundreds of them slow).
fn build_tree(sb: &Sandbox, a: &Aegis, data: &Path, rng: &mut Rng) -> Expected {
    let keys = load_keys(sb, "building the tree");
    let mut expected = Expected::new();
    let subdirs = ["alpha", "beta"];
    for d in subdirs {
        std::fs::create_dir_all(data.join(d)).unwrap();
    }
    for i in 0..SMALL_V2 {
        let n = rng.below(4097) as usize;
        let rel = Path::new(subdirs[i % 2]).join(format!("small-{i:03}.enc"));
        let pt = rng.bytes(n);
        if i % 50 == 0 {
            a.ok_stdin(["encrypt", "-", "-o", s(&data.join(&rel))], &pt);
        } else {
            let sealed = aegis_crypto::seal(keys.primary(), &pt, aegis_crypto::Format::V2).unwrap();
            std::fs::write(data.join(&rel), sealed).unwrap();
        }
        expected.insert(rel, pt);
    }
    let mut v1 = |rel: PathBuf, pt: Vec<u8>| {
        a.ok_stdin(
            ["encrypt", "-", "-o", s(&data.join(&rel)), "--format", "v1"],
            &pt,
        );
        expected.insert(rel, pt);
    };
    for i in 0..MEDIUM_V1 {
        let n = rng.range(64 << 10, 1 << 20) as usize;
        let rel = Path::new(subdirs[i % 2]).join(format!("medium-{i:02}.v1"));
        v1(rel, rng.bytes(n));
    }
    for i in 0..BIG_V1 {
        let n = (8 << 20) - rng.below(64 << 10) as usize;
        let rel = Path::new(subdirs[i % 2]).join(format!("big-{i}.v1"));
        v1(rel, rng.bytes(n));
    }
    expected
}

fn copy_tree(from: &Path, to: &Path) {
    for f in files_under(from) {
        let dest = to.join(f.strip_prefix(from).unwrap());
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(&f, &dest).unwrap();
    }
}

/// Every expected file exists and decrypts with the keyset on disk to its plaintext (through
/// the library, in-process; a few also through the binary). Scratch files are ignored.
fn verify_all(
    sb: &Sandbox,
    a: &Aegis,
    data: &Path,
    expected: &Expected,
    rng: &mut Rng,
    when: &str,
) {
    let keys = load_keys(sb, when);
    let mut seen = BTreeSet::new();
    for f in files_under(data) {
        if is_aegis_scratch(&f) {
            continue;
        }
        let rel = f.strip_prefix(data).unwrap().to_path_buf();
        let Some(pt) = expected.get(&rel) else {
            panic!("{when}: unexpected file {}", rel.display());
        };
        let got = aegis_crypto::open(&keys, &read(&f))
            .unwrap_or_else(|e| panic!("{when}: {} does not decrypt: {e}", rel.display()));
        assert!(
            got == *pt,
            "{when}: {} decrypts to the wrong plaintext",
            rel.display()
        );
        seen.insert(rel);
    }
    let missing: Vec<&PathBuf> = expected.keys().filter(|k| !seen.contains(*k)).collect();
    assert!(missing.is_empty(), "{when}: files lost: {missing:?}");
    for _ in 0..3 {
        let (rel, pt) = expected
            .iter()
            .nth(rng.below(expected.len() as u64) as usize)
            .unwrap();
        let got = a.decrypt_to_vec(&data.join(rel));
        assert!(got == *pt, "{when}: aegis decrypt of {}", rel.display());
    }
}

#[test]
fn reencrypt_survives_sigkill_at_any_moment() {
    let started = Instant::now();
    // The seed can be overridden to explore other schedules; the checks stay the same.
    let seed = std::env::var("AEGIS_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(SEED);
    println!("seed {seed}");
    let mut rng = Rng::new(seed);
    let sb = Sandbox::new();
    let a = sb.aegis();
    a.ok(["key", "init"]);
    let data = sb.mkdir("data");
    let expected = build_tree(&sb, &a, &data, &mut rng);
    println!(
        "tree: {} files, {} MiB, built in {:.1?}",
        expected.len(),
        expected.values().map(Vec::len).sum::<usize>() >> 20,
        started.elapsed()
    );
    a.ok(["key", "rotate"]);
    let mut n_keys = 2;

    // How long one uninterrupted run takes, on a copy of the tree.
    let calib = sb.join("calibration");
    copy_tree(&data, &calib);
    let t0 = Instant::now();
    a.ok(["reencrypt", s(&calib)]);
    let mut full_run = t0.elapsed();
    std::fs::remove_dir_all(&calib).unwrap();
    println!("one uninterrupted run: {full_run:.2?}");

    let mut landed = 0;
    let mut left_scratch = 0;
    let mut prev_finished = false;
    for round in 0..ROUNDS {
        if round > 0 && (round % ROTATE_EVERY == 0 || prev_finished) && n_keys < MAX_KEYS {
            a.ok(["key", "rotate"]);
            n_keys += 1;
        }
        let micros = u64::try_from(full_run.as_micros()).unwrap_or(u64::MAX);
        let delay = Duration::from_micros(rng.below(micros.saturating_add(1)));
        let t = Instant::now();
        let mut child = a.spawn(["reencrypt", s(&data)]);
        std::thread::sleep(delay);
        let running = child.try_wait().unwrap().is_none();
        if running {
            // SIGKILL; harmless if it exited in the meantime.
            let _ = child.kill();
        }
        let out = child.wait_with_output().unwrap();
        let killed = out.status.signal() == Some(SIGKILL);
        if killed {
            landed += 1;
        } else {
            assert_success(&out, &format!("round {round}: reencrypt"));
            full_run = full_run.max(t.elapsed());
        }
        prev_finished = !killed;
        let scratch = files_under(&data)
            .iter()
            .filter(|p| is_aegis_scratch(p))
            .count();
        if scratch > 0 {
            left_scratch += 1;
        }
        println!(
            "round {round:2}: {n_keys} keys, kill after {delay:.2?}: {}, {scratch} scratch file(s) left",
            if killed {
                "killed mid-run"
            } else {
                "run had finished"
            }
        );
        verify_all(
            &sb,
            &a,
            &data,
            &expected,
            &mut rng,
            &format!("after round {round}"),
        );
    }

    // A run to completion brings everything under the primary key.
    a.ok(["reencrypt", s(&data)]);
    assert_no_scratch(&data);
    verify_all(&sb, &a, &data, &expected, &mut rng, "after the final run");
    let primary = a.primary_id();
    let files: Vec<PathBuf> = expected.keys().map(|r| data.join(r)).collect();
    let mut args = vec!["inspect".to_string()];
    args.extend(files.iter().map(|p| s(p).to_string()));
    let out = a.ok(&args);
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), files.len());
    for line in text.lines() {
        if line.contains("format v2") {
            assert!(
                line.contains(&format!("key {primary}")),
                "not under the primary: {line}"
            );
        } else {
            assert!(line.contains("format v1"), "{line}");
        }
    }
    // Every old key can be retired (no file, v1 included, needs it) ...
    let statuses = a.key_statuses();
    assert_eq!(statuses.len(), n_keys);
    for (id, status) in &statuses {
        if *id != primary {
            assert_eq!(status, "retained");
            a.ok(["key", "retire", id.as_str(), "--root", s(&data)]);
        }
    }
    // ... and with only the primary able to decrypt, everything still does.
    verify_all(
        &sb,
        &a,
        &data,
        &expected,
        &mut rng,
        "with every old key retired",
    );
    assert_no_scratch(&data);
    println!(
        "{landed} of {ROUNDS} kills landed mid-run ({left_scratch} left a temporary file or \
         journal behind); {n_keys} keys; total {:.1?}",
        started.elapsed()
    );
    assert!(landed > 0, "no kill landed while reencrypt was running");
}
