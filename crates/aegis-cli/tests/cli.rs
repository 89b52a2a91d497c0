//! End-to-end tests of the `aegis` binary: help texts, key management, encryption round trips,
//! refusal of damaged or foreign files, key-file permissions and formats, rotation,
//! re-encryption, retirement and destruction of keys.
//!
//! Every test runs the real binary in its own temporary directory with `AEGIS_KEYSTORE=file`
//! and its own key file, so no OS keyring is ever touched.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use std::path::{Path, PathBuf};

use base64::Engine as _;
use common::{
    Aegis, Rng, Sandbox, assert_no_scratch, assert_one_line_error, chmod, files_under, mode, read,
    s, snapshot, write,
};

const HEADER: u64 = 99;
const TAG: u64 = 16;
const NONCE: u64 = 12;
const KIB64: u64 = 65536;
const MIB: usize = 1 << 20;

/// Size of a v2 file with `n` bytes of plaintext in chunks of `chunk` bytes.
fn v2_len(n: u64, chunk: u64) -> u64 {
    HEADER + n + TAG * n.div_ceil(chunk).max(1)
}

/// Size of a v1 blob with `n` bytes of plaintext.
fn v1_len(n: u64) -> u64 {
    NONCE + n + TAG
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().len()
}

fn stdout_text(out: &std::process::Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("stdout is UTF-8")
}

fn stderr_text(out: &std::process::Output) -> String {
    String::from_utf8(out.stderr.clone()).expect("stderr is UTF-8")
}

/// A sandbox with a fresh keyset.
fn initialized() -> (Sandbox, Aegis) {
    let sb = Sandbox::new();
    let a = sb.aegis();
    a.ok(["key", "init"]);
    (sb, a)
}

/// Encrypt `plaintext` (through stdin) into `out` in `format`.
fn encrypt_bytes(a: &Aegis, plaintext: &[u8], out: &Path, format: &str) {
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    a.ok_stdin(
        ["encrypt", "-", "-o", s(out), "--format", format],
        plaintext,
    );
}

// ---------------------------------------------------------------------------------------------
// Help
// ---------------------------------------------------------------------------------------------

#[test]
fn help_of_every_command_mentions_its_options() {
    let sb = Sandbox::new();
    let a = sb.aegis();
    let global = ["--keystore", "--key-file", "--allow-loose-permissions"];
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--help"],
            &["key", "encrypt", "decrypt", "reencrypt", "inspect"],
        ),
        (
            &["key", "--help"],
            &["init", "status", "rotate", "retire", "reinstate", "destroy"],
        ),
        (&["key", "init", "--help"], &[]),
        (&["key", "status", "--help"], &["--json"]),
        (&["key", "rotate", "--help"], &[]),
        (&["key", "retire", "--help"], &["--root", "<ID>"]),
        (&["key", "reinstate", "--help"], &["<ID>"]),
        (&["key", "destroy", "--help"], &["--confirm", "<ID>"]),
        (
            &["encrypt", "--help"],
            &[
                "<INPUT>",
                "--output",
                "--format",
                "v1",
                "v2",
                "--chunk-kib",
                "--force",
            ],
        ),
        (&["decrypt", "--help"], &["<INPUT>", "--output", "--force"]),
        (
            &["reencrypt", "--help"],
            &["<ROOTS>", "--migrate-v1", "--dry-run"],
        ),
        (&["inspect", "--help"], &["<FILES>"]),
        (&["help", "encrypt"], &["--chunk-kib"]),
    ];
    for (args, wanted) in cases {
        let out = a.ok(*args);
        let text = stdout_text(&out);
        assert!(text.contains("Usage: aegis"), "{args:?}: {text}");
        for w in wanted.iter().chain(global.iter()) {
            assert!(
                text.contains(w),
                "`aegis {}` does not mention {w}:\n{text}",
                args.join(" ")
            );
        }
    }
    let v = a.ok(["--version"]);
    assert!(stdout_text(&v).starts_with("aegis "));
    // Help needs no key and creates nothing.
    assert!(files_under(sb.path()).is_empty());
}

// ---------------------------------------------------------------------------------------------
// key init
// ---------------------------------------------------------------------------------------------

#[test]
fn key_init_creates_private_files_once() {
    let sb = Sandbox::new();
    let a = sb.aegis();
    let out = a.ok(["key", "init"]);
    let key = sb.key_file();
    let doc = sb.keyset_doc();
    assert_eq!(mode(&key), 0o600, "key file mode");
    assert_eq!(mode(&doc), 0o600, "keyset document mode");

    // The key file is URL-safe Base64 of 32 bytes, like the Python system writes it.
    let text = String::from_utf8(read(&key)).unwrap();
    let raw = base64::engine::general_purpose::URL_SAFE
        .decode(text.trim())
        .expect("URL-safe Base64");
    assert_eq!(raw.len(), 32);

    // The document is JSON naming the primary key, which `init` announced.
    let docv: serde_json::Value = serde_json::from_slice(&read(&doc)).unwrap();
    let primary = a.primary_id();
    assert_eq!(primary.len(), 16);
    assert!(stdout_text(&out).contains(&primary));
    assert!(docv.to_string().contains(&primary));
    let statuses = a.key_statuses();
    assert_eq!(statuses.len(), 1);
    assert_eq!(statuses[&primary], "primary");

    // A second init refuses and changes nothing.
    let before = (read(&key), read(&doc));
    let line = a.fail(["key", "init"]);
    assert!(line.contains("already exists"), "{line}");
    assert_eq!((read(&key), read(&doc)), before);
    assert_eq!(a.primary_id(), primary);

    // Without a key, commands that need one say to run `key init`.
    let other = sb.join("nothing-here.key");
    let b = sb.aegis_with_key(&other);
    let line = b.fail(["key", "status"]);
    assert!(line.contains("key init"), "{line}");
    assert!(!other.exists());
}

// ---------------------------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------------------------

const SIZES: &[usize] = &[0, 1, 65535, 65536, 65537, 3 * MIB, 4 * MIB, 4 * MIB + 1];

#[test]
fn round_trips_through_files() {
    let (sb, a) = initialized();
    let primary = a.primary_id();
    let mut rng = Rng::new(1);
    for &n in SIZES {
        let pt = rng.bytes(n);
        let p = sb.join(&format!("plain-{n}"));
        write(&p, &pt);
        for format in ["v2", "v1"] {
            let enc = sb.join(&format!("plain-{n}.{format}.enc"));
            let dec = sb.join(&format!("plain-{n}.{format}.dec"));
            a.ok(["encrypt", s(&p), "-o", s(&enc), "--format", format]);
            let expect_len = if format == "v2" {
                v2_len(n as u64, KIB64)
            } else {
                v1_len(n as u64)
            };
            assert_eq!(file_len(&enc), expect_len, "{format} size for {n} bytes");
            let line = a.inspect(&enc);
            assert!(line.contains(&format!("format {format}")), "{line}");
            assert!(
                line.contains(&format!("{expect_len} bytes on disk")),
                "{line}"
            );
            assert!(line.contains(&format!("{n} bytes of plaintext")), "{line}");
            if format == "v2" {
                assert_eq!(a.key_of(&enc), primary, "{line}");
            }
            a.ok(["decrypt", s(&enc), "-o", s(&dec)]);
            assert!(read(&dec) == pt, "{format} round trip of {n} bytes");
        }
    }
    // Default names: INPUT.enc and back.
    let p = sb.join("named");
    let pt = rng.bytes(1000);
    write(&p, &pt);
    a.ok(["encrypt", s(&p)]);
    let enc = sb.join("named.enc");
    assert!(enc.exists());
    std::fs::remove_file(&p).unwrap();
    a.ok(["decrypt", s(&enc)]);
    assert_eq!(read(&p), pt);
    assert_no_scratch(sb.path());
}

#[test]
fn round_trips_through_stdin_and_stdout() {
    let (sb, a) = initialized();
    let mut rng = Rng::new(2);
    for &n in SIZES {
        let pt = rng.bytes(n);
        for format in ["v2", "v1"] {
            // `-` alone writes to stdout; `-o -` says so explicitly.
            let enc = a.ok_stdin(["encrypt", "-", "--format", format], &pt).stdout;
            let expect_len = if format == "v2" {
                v2_len(n as u64, KIB64)
            } else {
                v1_len(n as u64)
            };
            assert_eq!(enc.len() as u64, expect_len, "{format}, {n} bytes");
            let dec = a.ok_stdin(["decrypt", "-"], &enc).stdout;
            assert!(dec == pt, "{format} stdin round trip of {n} bytes");

            let enc2 = a
                .ok_stdin(["encrypt", "-", "-o", "-", "--format", format], &pt)
                .stdout;
            assert_ne!(enc, enc2, "fresh nonces and data keys every time");
            let dec2 = a.ok_stdin(["decrypt", "-", "-o", "-"], &enc2).stdout;
            assert!(dec2 == pt);
        }
    }
    // Mixed: file → stdout, stdin → file.
    let pt = rng.bytes(70_000);
    let p = sb.join("mixed");
    write(&p, &pt);
    let enc = a.ok(["encrypt", s(&p), "-o", "-"]).stdout;
    let out = sb.join("mixed.out");
    a.ok_stdin(["decrypt", "-", "-o", s(&out)], &enc);
    assert_eq!(read(&out), pt);
    assert_no_scratch(sb.path());
}

#[test]
fn small_chunks_and_invalid_chunk_sizes() {
    let (sb, a) = initialized();
    let mut rng = Rng::new(3);
    for n in [
        0usize,
        1,
        4095,
        4096,
        4097,
        100_000,
        4 * MIB,
        4 * MIB + 4097,
    ] {
        let pt = rng.bytes(n);
        let p = sb.join(&format!("c4-{n}"));
        write(&p, &pt);
        let enc = sb.join(&format!("c4-{n}.enc"));
        a.ok(["encrypt", s(&p), "-o", s(&enc), "--chunk-kib", "4"]);
        assert_eq!(
            file_len(&enc),
            v2_len(n as u64, 4096),
            "{n} bytes in 4 KiB chunks"
        );
        assert!(a.inspect(&enc).contains("chunk 4 KiB"));
        assert!(a.decrypt_to_vec(&enc) == pt, "4 KiB chunks, {n} bytes");
        let via_stdin = a.ok_stdin(["encrypt", "-", "--chunk-kib", "4"], &pt).stdout;
        assert_eq!(via_stdin.len() as u64, v2_len(n as u64, 4096));
        assert!(a.ok_stdin(["decrypt", "-"], &via_stdin).stdout == pt);
    }
    let p = sb.join("c4-100000");
    for bad in ["3", "0", "2", "100", "32768"] {
        let out = sb.join(&format!("bad-{bad}.enc"));
        let line = a.fail(["encrypt", s(&p), "-o", s(&out), "--chunk-kib", bad]);
        assert!(line.contains("chunk"), "{line}");
        assert!(!out.exists());
    }
    // The largest allowed chunk size works.
    let out = sb.join("big-chunks.enc");
    a.ok(["encrypt", s(&p), "-o", s(&out), "--chunk-kib", "16384"]);
    assert!(a.decrypt_to_vec(&out) == read(&p));
    assert_no_scratch(sb.path());
}

#[test]
fn existing_outputs_need_force() {
    let (sb, a) = initialized();
    let mut rng = Rng::new(4);
    let pt = rng.bytes(5000);
    let p = sb.join("in");
    write(&p, &pt);
    let enc = sb.join("in.enc");
    write(&enc, b"already here");
    for format in ["v2", "v1"] {
        let line = a.fail(["encrypt", s(&p), "-o", s(&enc), "--format", format]);
        assert!(line.contains("already exists"), "{line}");
        assert!(line.contains("--force"), "{line}");
        assert_eq!(read(&enc), b"already here");
    }
    a.ok(["encrypt", s(&p), "-o", s(&enc), "--force"]);
    assert!(a.decrypt_to_vec(&enc) == pt);

    // Decrypt: the default output `in` exists.
    let line = a.fail(["decrypt", s(&enc)]);
    assert!(line.contains("already exists"), "{line}");
    assert_eq!(read(&p), pt);
    let other = sb.join("other");
    write(&other, b"keep me");
    let line = a.fail(["decrypt", s(&enc), "-o", s(&other)]);
    assert!(line.contains("already exists"), "{line}");
    assert_eq!(read(&other), b"keep me");
    a.ok(["decrypt", s(&enc), "-o", s(&other), "--force"]);
    assert_eq!(read(&other), pt);
    a.ok(["decrypt", s(&enc), "-f"]);
    assert_eq!(read(&p), pt);

    // Misc one-line errors.
    let line = a.fail([
        "encrypt",
        s(&sb.join("missing")),
        "-o",
        s(&sb.join("m.enc")),
    ]);
    assert!(line.contains("missing"), "{line}");
    assert!(!sb.join("m.enc").exists());
    let line = a.fail(["decrypt", s(&p)]);
    assert!(line.contains("-o"), "no .enc suffix: {line}");
    assert_no_scratch(sb.path());
}

// ---------------------------------------------------------------------------------------------
// Refusing bad input
// ---------------------------------------------------------------------------------------------

/// Every way of decrypting `bad` (a `*.enc` file) fails with one error line and writes no
/// output, and no temporary file is left in its directory.
fn assert_decrypt_rejected(a: &Aegis, bad: &Path) {
    let dir = bad.parent().unwrap();
    let what = bad.display().to_string();
    let out = dir.join("out.plain");
    assert!(!out.exists());
    let line = a.fail(["decrypt", s(bad), "-o", s(&out)]);
    assert!(!out.exists(), "{what}: output created ({line})");

    let default_out = bad.with_extension("");
    assert!(!default_out.exists());
    a.fail(["decrypt", s(bad)]);
    assert!(!default_out.exists(), "{what}: default output created");

    // --force over an existing file: the file is kept.
    let keep = dir.join("keep.plain");
    write(&keep, b"precious");
    a.fail(["decrypt", s(bad), "-o", s(&keep), "--force"]);
    assert_eq!(read(&keep), b"precious", "{what}: --force output clobbered");
    std::fs::remove_file(&keep).unwrap();

    // From stdin.
    let data = read(bad);
    a.fail_stdin(["decrypt", "-", "-o", s(&out)], &data);
    assert!(!out.exists(), "{what}: output created from stdin");
    let o = a.run_stdin(["decrypt", "-"], &data);
    assert!(
        !o.status.success(),
        "{what}: decrypting stdin to stdout succeeded"
    );

    assert_no_scratch(dir);
}

#[test]
fn garbage_is_refused() {
    let (sb, a) = initialized();
    let dir = sb.mkdir("garbage");
    let mut rng = Rng::new(5);
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("short", b"hello".to_vec()),
        (
            "text",
            b"this is not an encrypted file at all, just text\n".to_vec(),
        ),
        ("random-28", rng.bytes(28)),
        ("random-1k", rng.bytes(1024)),
        ("random-200k", rng.bytes(200_000)),
    ];
    let mut magic = b"AEGIS\0".to_vec();
    magic.extend(rng.bytes(500));
    cases.push(("magic-random", magic));
    let mut magic_ok = b"AEGIS\0\x02\x01\x10\0\0\0".to_vec();
    magic_ok.extend(rng.bytes(300));
    cases.push(("magic-version-random", magic_ok));
    cases.push(("magic-only", b"AEGIS\0".to_vec()));
    for (name, bytes) in cases {
        let p = dir.join(format!("{name}.enc"));
        write(&p, &bytes);
        assert_decrypt_rejected(&a, &p);
        assert_eq!(read(&p), bytes, "input changed");
    }
}

#[test]
fn truncated_files_are_refused() {
    let (sb, a) = initialized();
    let dir = sb.mkdir("trunc");
    let mut rng = Rng::new(6);
    let sealed = KIB64 + TAG;
    let src = sb.mkdir("src");

    // 3 MiB: 48 full chunks, the last one final.
    let pt = rng.bytes(3 * MIB);
    let full = src.join("three.enc");
    encrypt_bytes(&a, &pt, &full, "v2");
    let bytes = read(&full);
    let cuts: Vec<(String, u64)> = vec![
        ("header-0".into(), 0),
        ("header-50".into(), 50),
        ("header-98".into(), 98),
        ("k0".into(), HEADER),
        ("k1".into(), HEADER + sealed),
        ("k47".into(), HEADER + 47 * sealed),
        ("mid-chunk".into(), HEADER + 10 * sealed + 30_000),
        ("in-tag".into(), HEADER + 5 * sealed - 7),
        ("last-byte".into(), bytes.len() as u64 - 1),
    ];
    // 5 MiB + 100: two batches of decryption, a short final chunk.
    let pt5 = rng.bytes(5 * MIB + 100);
    let full5 = src.join("five.enc");
    encrypt_bytes(&a, &pt5, &full5, "v2");
    let bytes5 = read(&full5);
    let cuts5: Vec<(String, u64)> = vec![
        ("five-k64-batch".into(), HEADER + 64 * sealed),
        ("five-k65".into(), HEADER + 65 * sealed),
        ("five-k80".into(), HEADER + 80 * sealed),
        ("five-last-byte".into(), bytes5.len() as u64 - 1),
    ];
    // v1 blobs.
    let pt1 = rng.bytes(100_000);
    let full1 = src.join("one.enc");
    encrypt_bytes(&a, &pt1, &full1, "v1");
    let bytes1 = read(&full1);
    let cuts1: Vec<(String, u64)> = vec![
        ("v1-27".into(), 27),
        ("v1-28".into(), 28),
        ("v1-mid".into(), 50_000),
        ("v1-last-byte".into(), bytes1.len() as u64 - 1),
    ];
    for (cuts, whole) in [(cuts, &bytes), (cuts5, &bytes5), (cuts1, &bytes1)] {
        for (name, at) in cuts {
            let p = dir.join(format!("{name}.enc"));
            write(&p, &whole[..at as usize]);
            assert_decrypt_rejected(&a, &p);
        }
    }
    // Data appended after the final chunk (or after a v1 tag) is refused too.
    let mut appended: Vec<(String, Vec<u8>)> = Vec::new();
    for (name, whole) in [("three", &bytes), ("five", &bytes5), ("one", &bytes1)] {
        for (suffix, extra) in [
            ("1", vec![0u8]),
            ("16", rng.bytes(16)),
            (
                "chunk",
                whole[HEADER as usize..(HEADER + sealed) as usize].to_vec(),
            ),
            ("itself", whole.clone()),
        ] {
            let mut b = whole.clone();
            b.extend_from_slice(&extra);
            appended.push((format!("{name}-{suffix}"), b));
        }
    }
    for (name, b) in &appended {
        let p = dir.join(format!("appended-{name}.enc"));
        write(&p, b);
        assert_decrypt_rejected(&a, &p);
    }
    // The untruncated files are fine.
    assert!(a.decrypt_to_vec(&full) == pt);
    assert!(a.decrypt_to_vec(&full5) == pt5);
    assert!(a.decrypt_to_vec(&full1) == pt1);
}

#[test]
fn flipped_bits_are_refused() {
    let (sb, a) = initialized();
    let dir = sb.mkdir("flip");
    let src = sb.mkdir("src");
    let mut rng = Rng::new(7);
    let sealed = KIB64 + TAG;

    let pt = rng.bytes(200_000);
    let v2 = src.join("v2.enc");
    encrypt_bytes(&a, &pt, &v2, "v2");
    let v2b = read(&v2);
    let last = v2b.len() as u64 - 1;
    let v2_flips: Vec<(&str, u64, u8)> = vec![
        ("magic", 0, 0x01),
        ("version", 6, 0x01),
        ("suite", 7, 0x01),
        ("chunklog", 8, 0x01),
        ("reserved", 9, 0x80),
        ("keyid", 12, 0x01),
        ("nonce-prefix", 22, 0x04),
        ("wrapped-key", 40, 0x10),
        ("mac-first", 67, 0x01),
        ("mac-last", 98, 0x80),
        ("body-first", 99, 0x01),
        ("body-mid", HEADER + sealed + 1234, 0x20),
        ("tag-chunk0", HEADER + KIB64 + 3, 0x01),
        ("last-tag", last, 0x01),
        ("last-tag-first", last - 15, 0x40),
    ];
    // Multi-batch file: a flip in the second batch or the last tag must not leave the first
    // batch's plaintext anywhere.
    let pt5 = rng.bytes(5 * MIB + 3);
    let v25 = src.join("v2-5m.enc");
    encrypt_bytes(&a, &pt5, &v25, "v2");
    let v25b = read(&v25);
    let last5 = v25b.len() as u64 - 1;
    let v25_flips: Vec<(&str, u64, u8)> = vec![
        ("5m-batch2", HEADER + 64 * sealed + 10, 0x01),
        ("5m-last-tag", last5, 0x01),
    ];
    let pt1 = rng.bytes(70_000);
    let v1 = src.join("v1.enc");
    encrypt_bytes(&a, &pt1, &v1, "v1");
    let v1b = read(&v1);
    let last1 = v1b.len() as u64 - 1;
    let v1_flips: Vec<(&str, u64, u8)> = vec![
        ("v1-nonce", 0, 0x01),
        ("v1-body", 12, 0x01),
        ("v1-mid", 35_000, 0x08),
        ("v1-tag", last1, 0x01),
    ];
    for (flips, whole) in [(v2_flips, &v2b), (v25_flips, &v25b), (v1_flips, &v1b)] {
        for (name, at, bit) in flips {
            let mut b = whole.clone();
            b[at as usize] ^= bit;
            let p = dir.join(format!("{name}.enc"));
            write(&p, &b);
            assert_decrypt_rejected(&a, &p);
        }
    }
    assert!(a.decrypt_to_vec(&v2) == pt);
    assert!(a.decrypt_to_vec(&v25) == pt5);
    assert!(a.decrypt_to_vec(&v1) == pt1);
}

#[test]
fn files_of_another_keyset_are_refused() {
    let (sb, a) = initialized();
    let other_key = sb.join("other.key");
    let b = sb.aegis_with_key(&other_key);
    // --key-file overrides AEGIS_KEY_FILE.
    a.ok(["--key-file", s(&other_key), "key", "init"]);
    assert!(other_key.exists());
    assert_ne!(a.primary_id(), b.primary_id());
    let via_flag = a.ok(["key", "status", "--json", "--key-file", s(&other_key)]);
    let via_flag: serde_json::Value = serde_json::from_slice(&via_flag.stdout).unwrap();
    assert_eq!(via_flag["primary"].as_str().unwrap(), b.primary_id());
    let dir = sb.mkdir("foreign");
    let mut rng = Rng::new(8);
    for (name, format, n) in [
        ("v2", "v2", 1000),
        ("v2-empty", "v2", 0),
        ("v2-big", "v2", 300_000),
        ("v1", "v1", 1000),
        ("v1-empty", "v1", 0),
    ] {
        let pt = rng.bytes(n);
        let p = dir.join(format!("{name}.enc"));
        encrypt_bytes(&b, &pt, &p, format);
        let line = a.fail(["decrypt", s(&p), "-o", "-"]);
        if format == "v2" {
            assert!(
                line.contains(&b.primary_id()),
                "names the missing key: {line}"
            );
        }
        assert_decrypt_rejected(&a, &p);
        // Its own keyset opens it.
        assert!(b.decrypt_to_vec(&p) == pt);
    }
}

// ---------------------------------------------------------------------------------------------
// inspect
// ---------------------------------------------------------------------------------------------

#[test]
fn inspect_shows_format_key_and_sizes() {
    let (sb, a) = initialized();
    let primary = a.primary_id();
    let mut rng = Rng::new(9);
    let pt = rng.bytes(100_000);
    let v2 = sb.join("a.enc");
    let v1 = sb.join("b.enc");
    encrypt_bytes(&a, &pt, &v2, "v2");
    encrypt_bytes(&a, &pt, &v1, "v1");
    let l2 = a.inspect(&v2);
    assert!(l2.contains("format v2"), "{l2}");
    assert!(l2.contains(&format!("key {primary}")), "{l2}");
    assert!(l2.contains("chunk 64 KiB"), "{l2}");
    assert!(
        l2.contains(&format!("{} bytes on disk", v2_len(100_000, KIB64))),
        "{l2}"
    );
    assert!(l2.contains("100000 bytes of plaintext"), "{l2}");
    let l1 = a.inspect(&v1);
    assert!(l1.contains("format v1"), "{l1}");
    assert!(l1.contains("100028 bytes on disk"), "{l1}");
    assert!(l1.contains("100000 bytes of plaintext"), "{l1}");

    // inspect needs no key at all.
    let nokey = sb.aegis_with_key(&sb.join("absent.key"));
    assert_eq!(nokey.inspect(&v2), l2);

    // Several files: one line each.
    let out = a.ok(["inspect", s(&v2), s(&v1)]);
    assert_eq!(stdout_text(&out).lines().count(), 2);

    // A truncated v2 file has no plaintext size.
    let t = sb.join("t.enc");
    write(&t, &read(&v2)[..104]);
    let lt = a.inspect(&t);
    assert!(lt.contains("format v2") && lt.contains('?'), "{lt}");

    // A missing file fails (one line), also among good ones.
    let missing = sb.join("missing.enc");
    let line = a.fail(["inspect", s(&missing)]);
    assert!(line.contains("missing.enc"), "{line}");
    let out = a.run(["inspect", s(&v2), s(&missing)]);
    assert!(!out.status.success());
    assert_eq!(stdout_text(&out).lines().count(), 1);
    assert!(stderr_text(&out).contains("missing.enc"));
}

// ---------------------------------------------------------------------------------------------
// Key file permissions and formats
// ---------------------------------------------------------------------------------------------

/// Every command that needs the key, with `old` a retained key id and `data` a directory.
fn key_commands(sb: &Sandbox, old: &str, plain: &Path, enc: &Path) -> Vec<Vec<String>> {
    let data = s(sb.path()).to_string();
    let out = s(&sb.join("never-written")).to_string();
    vec![
        vec!["key".into(), "status".into()],
        vec!["key".into(), "status".into(), "--json".into()],
        vec!["key".into(), "rotate".into()],
        vec![
            "key".into(),
            "retire".into(),
            old.into(),
            "--root".into(),
            data.clone(),
        ],
        vec!["key".into(), "reinstate".into(), old.into()],
        vec![
            "key".into(),
            "destroy".into(),
            old.into(),
            "--confirm".into(),
            old.into(),
        ],
        vec!["encrypt".into(), s(plain).into(), "-o".into(), out.clone()],
        vec!["decrypt".into(), s(enc).into(), "-o".into(), out],
        vec!["reencrypt".into(), data],
    ]
}

#[test]
fn loose_key_file_permissions_are_refused() {
    let (sb, a) = initialized();
    let old = a.primary_id();
    let plain = sb.join("p");
    write(&plain, b"some plaintext");
    let enc = sb.join("p.enc");
    a.ok(["encrypt", s(&plain), "-o", s(&enc)]);
    a.ok(["key", "rotate"]);
    let key = sb.key_file();
    let doc = sb.keyset_doc();
    let before = (read(&key), read(&doc));
    let cmds = key_commands(&sb, &old, &plain, &enc);

    for loose in [0o644, 0o640, 0o604] {
        chmod(&key, loose);
        for cmd in &cmds {
            let line = a.fail(cmd);
            assert!(
                line.contains("chmod 600"),
                "{cmd:?} with mode {loose:o}: {line}"
            );
            assert!(line.contains("--allow-loose-permissions"), "{line}");
            assert!(!sb.join("never-written").exists());
            assert_eq!(
                (read(&key), read(&doc)),
                before,
                "{cmd:?} changed the keyset"
            );
            assert_eq!(mode(&key), loose, "{cmd:?} changed the mode");
        }
    }
    // A loose keyset document is refused the same way.
    chmod(&key, 0o600);
    chmod(&doc, 0o644);
    for cmd in &cmds {
        let line = a.fail(cmd);
        assert!(line.contains("chmod 600"), "{cmd:?}: {line}");
        assert!(line.contains(".keyset"), "names the document: {line}");
    }
    assert_eq!((read(&key), read(&doc)), before);
    chmod(&doc, 0o600);
    // Owner-only but read-only is fine.
    chmod(&key, 0o400);
    a.ok(["key", "status"]);
    chmod(&key, 0o600);

    // --allow-loose-permissions makes every command work.
    chmod(&key, 0o644);
    chmod(&doc, 0o644);
    let flag = "--allow-loose-permissions";
    a.ok(["key", "status", flag]);
    let out = sb.join("out.enc");
    a.ok(["encrypt", s(&plain), "-o", s(&out), flag]);
    let back = sb.join("back");
    a.ok([flag, "decrypt", s(&enc), "-o", s(&back)]);
    assert_eq!(read(&back), b"some plaintext");
    a.ok(["reencrypt", s(&sb.mkdir("empty-dir")), flag]);
    a.ok(["key", "rotate", flag]);
    // Rewritten key files are private again.
    assert_eq!(mode(&key), 0o600);
    assert_eq!(mode(&doc), 0o600);
    a.ok(["key", "status"]);
    assert_no_scratch(sb.path());
}

#[test]
fn corrupt_key_files_are_refused_and_left_alone() {
    let mut rng = Rng::new(10);
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE.encode(b);
    let corrupt: Vec<(&str, Vec<u8>)> = vec![
        ("not-base64", b"not-base64!!".to_vec()),
        (
            "16-bytes",
            format!("{}\n", b64(&rng.bytes(16))).into_bytes(),
        ),
        ("33-bytes", b64(&rng.bytes(33)).into_bytes()),
        ("empty", Vec::new()),
        (
            "mixed-alphabets",
            b"+/-_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".to_vec(),
        ),
        ("binary", vec![0xff, 0xfe, 0x00, 0x01]),
    ];
    for (name, bytes) in &corrupt {
        // Alone (no keyset document), and next to the document of a real keyset.
        for with_doc in [false, true] {
            let sb = Sandbox::new();
            let a = sb.aegis();
            let plain = sb.join("p");
            write(&plain, b"x");
            if with_doc {
                a.ok(["key", "init"]);
            }
            let key = sb.key_file();
            write(&key, bytes);
            chmod(&key, 0o600);
            let doc_before = sb.keyset_doc().exists().then(|| read(&sb.keyset_doc()));
            for cmd in [
                vec!["key", "status"],
                vec!["key", "rotate"],
                vec!["encrypt", s(&plain), "-o", "p.enc"],
                vec!["reencrypt", s(sb.path())],
            ] {
                let line = a.fail(&cmd);
                assert!(
                    line.contains("corrupt key") && line.contains(KEYNAME),
                    "{name}, {cmd:?}: {line}"
                );
                assert!(line.contains("left untouched"), "{line}");
                assert_eq!(&read(&key), bytes, "{name}: {cmd:?} changed the key file");
                let doc_now = sb.keyset_doc().exists().then(|| read(&sb.keyset_doc()));
                assert_eq!(doc_now, doc_before, "{name}: {cmd:?} changed the document");
                assert!(!sb.join("p.enc").exists());
            }
            // init never overwrites a corrupt key file.
            let line = a.fail(["key", "init"]);
            assert!(line.contains("already exists"), "{line}");
            assert_eq!(&read(&key), bytes);
            assert_no_scratch(sb.path());
        }
    }

    // A corrupt keyset document next to a good key is refused and left alone too.
    let (sb, a) = initialized();
    let doc = sb.keyset_doc();
    write(&doc, b"{ not json");
    chmod(&doc, 0o600);
    let key_before = read(&sb.key_file());
    for cmd in [vec!["key", "status"], vec!["key", "rotate"]] {
        let line = a.fail(&cmd);
        assert!(line.contains("keyset document"), "{line}");
        assert_eq!(read(&doc), b"{ not json");
        assert_eq!(read(&sb.key_file()), key_before);
    }
}

const KEYNAME: &str = "aegis_key.key";

/// 32 key bytes whose Base64 uses `-`/`_` (URL-safe) or `+`/`/` (standard).
fn python_key_bytes(rng: &mut Rng) -> [u8; 32] {
    let mut raw = [0u8; 32];
    rng.fill(&mut raw);
    raw[..3].copy_from_slice(&[0xfb, 0xff, 0xbf]);
    raw
}

#[test]
fn key_files_written_by_python_are_accepted() {
    let mut rng = Rng::new(11);
    let raw = python_key_bytes(&mut rng);
    let expected_id = aegis_crypto::SecretKey::from_bytes(raw).id().to_string();
    let url = base64::engine::general_purpose::URL_SAFE.encode(raw);
    let std_b64 = base64::engine::general_purpose::STANDARD.encode(raw);
    assert!(url.starts_with("-_-_") && std_b64.starts_with("+/+/"));
    let forms = [
        ("python", format!("{url}\n")),
        ("urlsafe-unpadded", url.trim_end_matches('=').to_string()),
        ("standard", format!("{std_b64}\n")),
        (
            "standard-unpadded",
            std_b64.trim_end_matches('=').to_string(),
        ),
        ("crlf-and-spaces", format!("  {url}\r\n")),
    ];
    for (name, text) in forms {
        let sb = Sandbox::new();
        let a = sb.aegis();
        let key = sb.key_file();
        write(&key, text.as_bytes());
        chmod(&key, 0o600);
        assert_eq!(a.primary_id(), expected_id, "{name}");
        let pt = rng.bytes(10_000);
        let p = sb.join("p");
        write(&p, &pt);
        let e2 = sb.join("p.v2.enc");
        let e1 = sb.join("p.v1.enc");
        a.ok(["encrypt", s(&p), "-o", s(&e2)]);
        a.ok(["encrypt", s(&p), "-o", s(&e1), "--format", "v1"]);
        assert_eq!(a.key_of(&e2), expected_id, "{name}");
        assert!(a.decrypt_to_vec(&e2) == pt);
        assert!(a.decrypt_to_vec(&e1) == pt);

        // The v1 blob is the Python system's: AES-256-GCM under the raw key.
        let k = aegis_crypto::SecretKey::from_bytes(raw);
        assert!(
            aegis_crypto::v1::open(&k, &read(&e1)).unwrap() == pt,
            "{name}"
        );
        // And a blob sealed with the raw key decrypts.
        let py_blob = aegis_crypto::v1::seal(&k, b"from python").unwrap();
        let pb = sb.join("py.enc");
        write(&pb, &py_blob);
        assert_eq!(a.decrypt_to_vec(&pb), b"from python");

        // The key file itself is never rewritten by using it.
        assert_eq!(read(&key), text.as_bytes(), "{name}");
        let doc = sb.keyset_doc();
        if doc.exists() {
            assert_eq!(mode(&doc), 0o600);
        }
        assert_no_scratch(sb.path());
    }
}

#[test]
fn a_key_replaced_by_python_is_adopted_and_the_old_one_kept() {
    let (sb, a) = initialized();
    let old = a.primary_id();
    let mut rng = Rng::new(12);
    let pt = rng.bytes(3000);
    let e2 = sb.join("old.v2.enc");
    let e1 = sb.join("old.v1.enc");
    encrypt_bytes(&a, &pt, &e2, "v2");
    encrypt_bytes(&a, &pt, &e1, "v1");
    // The Python system writes a new key into the key file.
    let raw = python_key_bytes(&mut rng);
    let key = sb.key_file();
    write(
        &key,
        format!(
            "{}\n",
            base64::engine::general_purpose::URL_SAFE.encode(raw)
        )
        .as_bytes(),
    );
    chmod(&key, 0o600);
    let new = aegis_crypto::SecretKey::from_bytes(raw).id().to_string();
    let st = a.key_statuses();
    assert_eq!(a.primary_id(), new);
    assert_eq!(st[&new], "primary");
    assert_eq!(st[&old], "retained");
    assert!(a.decrypt_to_vec(&e2) == pt);
    assert!(a.decrypt_to_vec(&e1) == pt);
}

// ---------------------------------------------------------------------------------------------
// Rotation and re-encryption
// ---------------------------------------------------------------------------------------------

struct Tree {
    data: PathBuf,
    /// path → (format at creation, plaintext)
    files: Vec<(PathBuf, &'static str, Vec<u8>)>,
}

fn make_tree(sb: &Sandbox, a: &Aegis, rng: &mut Rng) -> Tree {
    let data = sb.mkdir("data");
    let mut files = Vec::new();
    for (rel, format, n) in [
        ("a.v2", "v2", 200_000usize),
        ("empty.v2", "v2", 0),
        ("sub/c.v2", "v2", 70_000),
        ("sub/deeper/d.v2", "v2", 1),
        ("sub/b.v1", "v1", 100_000),
        ("e.v1", "v1", 0),
    ] {
        let pt = rng.bytes(n);
        let p = data.join(rel);
        encrypt_bytes(a, &pt, &p, format);
        files.push((p, format, pt));
    }
    Tree { data, files }
}

fn assert_tree_decrypts(a: &Aegis, t: &Tree) {
    for (p, _, pt) in &t.files {
        assert!(a.decrypt_to_vec(p) == *pt, "{} decrypts", p.display());
    }
}

#[test]
fn rotation_and_reencryption() {
    let (sb, a) = initialized();
    let mut rng = Rng::new(13);
    let t = make_tree(&sb, &a, &mut rng);
    let v1_file = t.data.join("sub/b.v1");
    chmod(&v1_file, 0o640);
    let k1 = a.primary_id();

    let out = a.ok(["key", "rotate"]);
    let k2 = a.primary_id();
    assert_ne!(k1, k2);
    assert!(stdout_text(&out).contains(&k2));
    let st = a.key_statuses();
    assert_eq!(st.len(), 2);
    assert_eq!(st[&k2], "primary");
    assert_eq!(st[&k1], "retained");
    // Files from before the rotation still decrypt.
    assert_tree_decrypts(&a, &t);

    // Dry run: reports, writes nothing.
    let before = snapshot(&t.data);
    let out = a.ok(["reencrypt", "--dry-run", s(&t.data)]);
    let text = stdout_text(&out);
    assert!(text.contains("dry run"), "{text}");
    assert!(text.contains("6 files scanned"), "{text}");
    assert!(text.contains("4 v2 rewrapped"), "{text}");
    assert!(text.contains("2 v1 re-encrypted"), "{text}");
    assert_eq!(snapshot(&t.data), before, "--dry-run changed files");
    assert_no_scratch(&t.data);

    // The real run.
    let out = a.ok(["reencrypt", s(&t.data)]);
    let text = stdout_text(&out);
    assert!(text.contains(&k2), "{text}");
    assert!(
        text.contains("0 already current, 4 v2 rewrapped, 2 v1 re-encrypted, 0 v1 migrated"),
        "{text}"
    );
    assert_no_scratch(&t.data);
    for (p, format, _) in &t.files {
        let old = &before[p];
        let new = read(p);
        assert_eq!(new.len(), old.len(), "{}: size", p.display());
        assert_eq!(a.format_of(p), *format);
        if *format == "v2" {
            // Only the header was rewritten.
            assert_eq!(new[99..], old[99..], "{}: body changed", p.display());
            assert_ne!(new[..99], old[..99], "{}: header unchanged", p.display());
            assert_eq!(a.key_of(p), k2);
        } else {
            assert_ne!(new, *old, "{}: v1 blob not re-encrypted", p.display());
        }
    }
    assert_eq!(mode(&v1_file), 0o640, "re-encryption keeps the mode");
    assert_tree_decrypts(&a, &t);

    // A second run finds everything current.
    let snap = snapshot(&t.data);
    let out = a.ok(["reencrypt", s(&t.data)]);
    let text = stdout_text(&out);
    assert!(
        text.contains("6 already current, 0 v2 rewrapped, 0 v1 re-encrypted, 0 v1 migrated"),
        "{text}"
    );
    assert_eq!(snapshot(&t.data), snap);

    // Nothing needs the old key any more: it can be retired, and everything still decrypts
    // (retired keys do not decrypt, so every file really is under the new one).
    a.ok(["key", "retire", &k1, "--root", s(&t.data)]);
    assert_eq!(a.key_statuses()[&k1], "retired");
    assert_tree_decrypts(&a, &t);

    // --migrate-v1 turns v1 blobs (even under the primary) into v2 files.
    let out = a.ok(["reencrypt", "--migrate-v1", s(&t.data)]);
    let text = stdout_text(&out);
    assert!(text.contains("2 v1 migrated to v2"), "{text}");
    for (p, _, _) in &t.files {
        assert_eq!(a.format_of(p), "v2", "{}", p.display());
        assert_eq!(a.key_of(p), k2);
    }
    assert_eq!(mode(&v1_file), 0o640, "migration keeps the mode");
    assert_tree_decrypts(&a, &t);
    let out = a.ok(["reencrypt", "--migrate-v1", s(&t.data)]);
    assert!(stdout_text(&out).contains("6 already current"));

    // A single file as the root.
    a.ok(["key", "rotate"]);
    let k3 = a.primary_id();
    let one = t.data.join("a.v2");
    let out = a.ok(["reencrypt", s(&one)]);
    assert!(
        stdout_text(&out).contains("1 files scanned"),
        "{}",
        stdout_text(&out)
    );
    assert_eq!(a.key_of(&one), k3);
    assert_eq!(a.key_of(&t.data.join("sub/c.v2")), k2);
    assert_no_scratch(&t.data);
}

#[test]
fn reencrypt_migrates_v1_under_an_old_key() {
    let (sb, a) = initialized();
    let mut rng = Rng::new(14);
    let t = make_tree(&sb, &a, &mut rng);
    a.ok(["key", "rotate"]);
    let k2 = a.primary_id();
    let out = a.ok(["reencrypt", "--migrate-v1", s(&t.data)]);
    let text = stdout_text(&out);
    assert!(
        text.contains("4 v2 rewrapped, 0 v1 re-encrypted, 2 v1 migrated to v2"),
        "{text}"
    );
    for (p, _, _) in &t.files {
        assert_eq!(a.format_of(p), "v2");
        assert_eq!(a.key_of(p), k2);
    }
    assert_tree_decrypts(&a, &t);
    assert_no_scratch(&t.data);
}

#[test]
fn retire_reinstate_destroy() {
    let (sb, a) = initialized();
    let mut rng = Rng::new(15);
    let t = make_tree(&sb, &a, &mut rng);
    let k1 = a.primary_id();
    // Files kept outside the root stay under the first key.
    let outside = sb.mkdir("outside");
    let out_v2 = outside.join("kept.v2.enc");
    let out_v1 = outside.join("kept.v1.enc");
    let out_pt = rng.bytes(5000);
    encrypt_bytes(&a, &out_pt, &out_v2, "v2");
    encrypt_bytes(&a, &out_pt, &out_v1, "v1");

    a.ok(["key", "rotate"]);
    let k2 = a.primary_id();

    // Refused while files under the root need the key.
    let line = a.fail(["key", "retire", &k1, "--root", s(&t.data)]);
    assert!(line.contains("6 file(s)"), "{line}");
    assert!(line.contains("reencrypt"), "{line}");
    assert_eq!(a.key_statuses()[&k1], "retained");
    // The primary, an unknown id and a malformed id are refused.
    let line = a.fail(["key", "retire", &k2, "--root", s(&t.data)]);
    assert!(line.contains("primary"), "{line}");
    let line = a.fail(["key", "retire", "0123456789abcdef", "--root", s(&t.data)]);
    assert!(line.contains("0123456789abcdef"), "{line}");
    assert!(
        !a.run(["key", "retire", "xyz", "--root", s(&t.data)])
            .status
            .success()
    );

    a.ok(["reencrypt", s(&t.data)]);
    let out = a.ok(["key", "retire", &k1, "--root", s(&t.data)]);
    assert!(stdout_text(&out).contains(&k1));
    assert_eq!(a.key_statuses()[&k1], "retired");
    assert_tree_decrypts(&a, &t);
    // A retired key does not decrypt.
    for p in [&out_v2, &out_v1] {
        a.fail(["decrypt", s(p), "-o", "-"]);
    }

    // Reinstate brings it back.
    a.ok(["key", "reinstate", &k1]);
    assert_eq!(a.key_statuses()[&k1], "retained");
    assert!(a.decrypt_to_vec(&out_v2) == out_pt);
    assert!(a.decrypt_to_vec(&out_v1) == out_pt);

    // Destroy refuses a key that is not retired, and the primary.
    let line = a.fail(["key", "destroy", &k1, "--confirm", &k1]);
    assert!(line.contains("retire"), "{line}");
    let line = a.fail(["key", "destroy", &k2, "--confirm", &k2]);
    assert!(line.contains("primary"), "{line}");
    a.ok(["key", "retire", &k1, "--root", s(&t.data)]);
    // Destroy needs --confirm with the same id.
    let doc_before = read(&sb.keyset_doc());
    let line = a.fail(["key", "destroy", &k1]);
    assert!(line.contains(&format!("--confirm {k1}")), "{line}");
    let line = a.fail(["key", "destroy", &k1, "--confirm", &k2]);
    assert!(line.contains("--confirm"), "{line}");
    assert_eq!(read(&sb.keyset_doc()), doc_before);
    assert_eq!(a.key_statuses()[&k1], "retired");

    let out = a.ok(["key", "destroy", &k1, "--confirm", &k1]);
    assert!(stdout_text(&out).contains("destroyed"));
    assert_eq!(a.key_statuses()[&k1], "destroyed");
    // The material is gone from the document.
    let doc: serde_json::Value = serde_json::from_slice(&read(&sb.keyset_doc())).unwrap();
    let entry = doc["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == k1.as_str())
        .expect("destroyed key is listed");
    assert!(entry["key"].is_null(), "material kept: {entry}");

    // Files still under it are unreadable; no output appears.
    for p in [&out_v2, &out_v1] {
        assert_decrypt_rejected(&a, p);
    }
    let line = a.fail(["decrypt", s(&out_v2), "-o", "-"]);
    assert!(line.contains(&k1), "{line}");
    // A destroyed key cannot be reinstated; everything else still works.
    let line = a.fail(["key", "reinstate", &k1]);
    assert!(line.contains("destroyed"), "{line}");
    assert_tree_decrypts(&a, &t);
    // Re-encryption leaves the orphaned files alone and says why.
    let snap = snapshot(&outside);
    let out = a.run(["reencrypt", s(&outside)]);
    assert_eq!(snapshot(&outside), snap);
    assert!(!stderr_text(&out).is_empty());
}

#[test]
fn reencrypt_leaves_other_files_alone() {
    let (sb, a) = initialized();
    let mut rng = Rng::new(16);
    // The root is the sandbox itself, key file and keyset document included.
    let root = sb.path();
    let plain: Vec<(&str, Vec<u8>)> = vec![
        ("notes.txt", b"meeting notes\nline two\n".to_vec()),
        ("empty.txt", Vec::new()),
        ("short.bin", b"0123456789".to_vec()),
        ("random.bin", rng.bytes(1000)),
        (
            "fake.txt",
            b"AEGIS is the name of this project, not a header\n".to_vec(),
        ),
        (
            "sub/readme.md",
            b"# Readme\n\nNothing secret here, but long enough.\n".to_vec(),
        ),
        ("sub/big.bin", rng.bytes(300_000)),
    ];
    for (rel, b) in &plain {
        write(&sb.join(rel), b);
    }
    let pt = rng.bytes(80_000);
    let e2 = sb.join("sub/x.v2.enc");
    let e1 = sb.join("y.v1.enc");
    encrypt_bytes(&a, &pt, &e2, "v2");
    encrypt_bytes(&a, &pt, &e1, "v1");
    a.ok(["key", "rotate"]);
    let k1_k2 = a.key_statuses();
    let k2 = a.primary_id();
    let key_before = read(&sb.key_file());
    let doc_before = read(&sb.keyset_doc());

    let out = a.ok(["reencrypt", s(root)]);
    let text = stdout_text(&out);
    assert!(text.contains("1 v2 rewrapped, 1 v1 re-encrypted"), "{text}");
    let err = stderr_text(&out);
    assert!(
        err.contains("7 file(s)"),
        "a note about the files left alone: {err}"
    );
    for (rel, b) in &plain {
        assert_eq!(&read(&sb.join(rel)), b, "{rel} changed");
    }
    assert_eq!(read(&sb.key_file()), key_before, "key file touched");
    assert_eq!(
        read(&sb.keyset_doc()),
        doc_before,
        "keyset document touched"
    );
    assert_eq!(a.key_statuses(), k1_k2);
    assert_eq!(a.key_of(&e2), k2);
    assert!(a.decrypt_to_vec(&e2) == pt);
    assert!(a.decrypt_to_vec(&e1) == pt);
    assert_no_scratch(root);

    // retire sees the same: nothing but the plain files, which need no key.
    let old = k1_k2.keys().find(|k| **k != k2).unwrap().clone();
    a.ok(["key", "retire", &old, "--root", s(root)]);
    assert!(a.decrypt_to_vec(&e1) == pt);
}

#[test]
fn one_line_errors_for_bad_roots() {
    let (sb, a) = initialized();
    let missing = sb.join("no-such-dir");
    let line = a.fail(["reencrypt", s(&missing)]);
    assert!(line.contains("no-such-dir"), "{line}");
    let id = a.primary_id();
    let line = a.fail(["key", "retire", &id, "--root", s(&missing)]);
    assert!(!line.is_empty());
    // assert_one_line_error is also usable on raw outputs.
    let out = a.run(["decrypt", s(&missing), "-o", "-"]);
    assert_one_line_error(&out, "decrypt of a missing file");
}

#[test]
fn io_errors_do_not_repeat_their_cause() {
    let (sb, a) = initialized();
    let line = a.fail(["decrypt", s(&sb.join("missing.enc")), "-o", "-"]);
    assert_eq!(
        line.matches("No such file or directory").count(),
        1,
        "cause repeated: {line}"
    );
    let p = sb.join("x");
    write(&p, b"x");
    write(&sb.join("x.enc"), b"exists");
    let line = a.fail(["encrypt", s(&p)]);
    assert!(
        line.matches("already exists").count() <= 2,
        "cause repeated: {line}"
    );
    assert!(
        line.matches("entity already exists").count() <= 1,
        "cause repeated: {line}"
    );
}

#[test]
fn concurrent_rotations_lose_no_key() {
    // Eight `aegis key rotate` at once: the keyset lock serializes them, so every new key ends
    // up in the keyset (without it, one process's document write can drop another's key).
    let (_sb, a) = initialized();
    let children: Vec<_> = (0..8).map(|_| a.spawn(["key", "rotate"])).collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        common::assert_success(&out, "concurrent rotate");
    }
    let statuses = a.key_statuses();
    assert_eq!(statuses.len(), 9, "{statuses:?}");
    assert_eq!(statuses.values().filter(|s| *s == "primary").count(), 1);
    assert_eq!(statuses.values().filter(|s| *s == "retained").count(), 8);
}

#[test]
fn one_reencrypt_per_tree_at_a_time() {
    let (sb, a) = initialized();
    let dir = sb.mkdir("data");
    encrypt_bytes(&a, b"payload", &dir.join("f.enc"), "v2");
    a.ok(["key", "rotate"]);
    // Another run holds the tree (the lock is a flock on the root directory).
    let holder = std::fs::File::open(&dir).unwrap();
    holder.lock().unwrap();
    let line = a.fail(["reencrypt", s(&dir)]);
    assert!(line.contains("another `aegis reencrypt`"), "{line}");
    drop(holder);
    a.ok(["reencrypt", s(&dir)]);
    assert_eq!(a.key_of(&dir.join("f.enc")), a.primary_id());
}

#[test]
fn a_decryption_killed_midway_leaves_no_plaintext_behind() {
    // The ciphertext arrives on stdin; after half of it (several authenticated batches already
    // decrypted into the output's temporary file) the process is killed. Nothing may remain in
    // the directory: the temporary file is unnamed until the commit.
    use std::io::Write as _;
    let (sb, a) = initialized();
    let dir = sb.mkdir("out");
    let pt = common::Rng::new(11).bytes(24 << 20);
    let enc = sb.join("big.enc");
    encrypt_bytes(&a, &pt, &enc, "v2");
    let blob = read(&enc);
    let mut cmd = a.command(["decrypt", "-", "-o", s(&dir.join("plain"))]);
    cmd.stdin(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&blob[..blob.len() / 2]).unwrap();
    stdin.flush().unwrap();
    // Give it time to decrypt and write what it has.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    child.kill().unwrap();
    let _ = child.wait();
    drop(stdin);
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "files left behind: {left:?}");
}
