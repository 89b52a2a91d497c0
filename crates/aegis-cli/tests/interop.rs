//! Interoperability with the Python system and with docs/format.md, file backend only.
//!
//! Every test runs real processes: the `aegis` binary (`AEGIS_KEYSTORE=file`, no D-Bus in its
//! environment, a temp directory as working directory) and the venv Python
//! (`$AEGIS_TEST_PYTHON`) running `tests/python/`:
//! - `python_system.py`: the Python system's key file and AES-GCM blobs;
//! - `v2_reference.py`: a decryptor written only from docs/format.md;
//! - `v2_forge.py`: an encryptor written only from docs/format.md, also able to break one rule
//!   of the spec at a time while keeping the MAC and tags valid.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

mod interop_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use interop_support::{
    aegis, data, is_python_key_text, mode, python, python_from_env, read, read_text, run,
    status_json, status_of, vector_dir,
};
use tempfile::TempDir;

/// The gating rule of this file: the Python interpreter, or skip (locally) / fail (CI=true).
fn need_python() -> Option<PathBuf> {
    match python_from_env() {
        Ok(p) => Some(p),
        Err(why) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("{why}: required under CI=true (run scripts/test.sh)")
        }
        Err(why) => {
            eprintln!("skipped: {why}");
            None
        }
    }
}

/// The key of docs/format.md §5 (bytes 00..1f) in its stored form (§1, the JSON example).
const TEST_KEY_TEXT: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const V2_MAGIC: &[u8] = b"AEGIS\0";
const HEADER_LEN: usize = 99;

/// `aegis` on the file backend, with no session bus to find.
fn aegis_file(dir: &Path) -> Command {
    let mut c = aegis(dir);
    c.env("AEGIS_KEYSTORE", "file")
        .env_remove("DBUS_SESSION_BUS_ADDRESS");
    c
}

fn tempdir() -> TempDir {
    tempfile::Builder::new()
        .prefix("aegis-interop-")
        .tempdir()
        .unwrap()
}

fn write(p: &Path, bytes: &[u8]) {
    std::fs::write(p, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", p.display()));
}

/// Write a key file with mode 0600 (as the Python system creates it).
fn write_key_file(p: &Path, text: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(p)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// The plaintext of the frozen vectors: byte i is i mod 251.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// Python system: decrypt a v1 blob with the key in `key_file`.
fn py_decrypt(py: &Path, dir: &Path, key_file: &str, input: &str, output: &str) -> bool {
    run(python(py, dir, "python_system.py").args([
        "decrypt",
        "--key-file",
        key_file,
        input,
        output,
    ]))
    .status
    .success()
}

/// §2 key id of the key in `key_file`, computed by the reference implementation.
fn ref_key_id(py: &Path, dir: &Path, key_file: &str) -> String {
    let r = run(python(py, dir, "v2_reference.py").args(["--key-id", key_file])).ok();
    let id = r.out().to_string();
    assert_eq!(id.len(), 16, "key id {id:?}");
    id
}

/// The reference's view of a v2 header.
fn ref_header(py: &Path, dir: &Path, file: &Path) -> serde_json::Value {
    let r = run(python(py, dir, "v2_reference.py").arg("--header").arg(file)).ok();
    serde_json::from_str(&r.stdout).unwrap()
}

/// Reference decryption; on failure returns the stderr (and checks the error contract: one
/// line, non-zero exit, no output file).
fn ref_decrypt(
    py: &Path,
    dir: &Path,
    key_file: &str,
    input: &Path,
    out: &Path,
) -> Result<(), String> {
    let _ = std::fs::remove_file(out);
    let r = run(python(py, dir, "v2_reference.py")
        .arg(key_file)
        .arg(input)
        .arg(out));
    if r.status.success() {
        return Ok(());
    }
    let lines = r.stderr_lines();
    assert_eq!(lines.len(), 1, "one-line error expected: {r:#?}");
    assert!(lines[0].starts_with("v2_reference: error: "), "{r:#?}");
    assert!(
        !out.exists(),
        "{} written despite the failure",
        out.display()
    );
    Err(lines[0].clone())
}

const PY_SIZES: [usize; 4] = [0, 1, 1000, (1 << 20) + 7];

/// A.1: the Python system's key file and blobs open with `aegis decrypt`.
#[test]
fn python_key_file_and_blobs_decrypt_with_aegis() {
    let Some(py) = need_python() else { return };
    let tmp = tempdir();
    let dir = tmp.path();
    run(python(&py, dir, "python_system.py").args(["new-key-file", "aegis_key.key"])).ok();
    let key_text = read_text(&dir.join("aegis_key.key"));
    assert!(is_python_key_text(&key_text), "{key_text:?}");
    assert_eq!(mode(&dir.join("aegis_key.key")), 0o600);

    for (i, &len) in PY_SIZES.iter().enumerate() {
        let plain = data(len, 100 + i as u64);
        let (p, b, o) = (format!("p{i}"), format!("p{i}.enc"), format!("o{i}"));
        write(&dir.join(&p), &plain);
        run(python(&py, dir, "python_system.py").args([
            "encrypt",
            "--key-file",
            "aegis_key.key",
            &p,
            &b,
        ]))
        .ok();
        assert_eq!(read(&dir.join(&b)).len(), len + 28, "nonce ‖ ct ‖ tag");
        run(aegis_file(dir).args(["decrypt", &b, "-o", &o])).ok();
        assert!(
            read(&dir.join(&o)) == plain,
            "size {len}: plaintext differs"
        );
    }
    // Reading the key changed nothing in it.
    assert_eq!(read_text(&dir.join("aegis_key.key")), key_text);
    // aegis recorded the adopted key in a keyset document next to it, as docs/format.md §1
    // describes: mode 0600, format 1, the key as primary in its stored form, no times (the
    // key existed before aegis saw it: "times are Unix seconds or absent").
    let doc_path = dir.join("aegis_key.key.keyset");
    assert_eq!(mode(&doc_path), 0o600);
    let doc: serde_json::Value = serde_json::from_slice(&read(&doc_path)).unwrap();
    assert_eq!(doc["format"], 1, "{doc:#}");
    let keys = doc["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1, "{doc:#}");
    assert_eq!(
        keys[0]["id"],
        ref_key_id(&py, dir, "aegis_key.key").as_str()
    );
    assert_eq!(keys[0]["status"], "primary");
    assert_eq!(keys[0]["key"], key_text.as_str());
    for k in keys[0].as_object().unwrap().keys() {
        assert!(
            ["id", "status", "created", "changed", "key"].contains(&k.as_str()),
            "field {k} is not in docs/format.md §1"
        );
    }
    assert!(keys[0].get("created").is_none_or(serde_json::Value::is_u64));
}

/// docs/format.md §1, readers: the URL-safe form, standard Base64, missing padding and
/// surrounding whitespace are all the same key; anything that does not decode to exactly 32
/// bytes is refused and left untouched. (No Python needed.)
#[test]
fn stored_key_forms_of_the_spec() {
    // [0xfb; 32]: every character of the URL-safe form that differs from standard Base64.
    const URLSAFE: &str = "-_v7-_v7-_v7-_v7-_v7-_v7-_v7-_v7-_v7-_v7-_s=";
    let standard = URLSAFE.replace('-', "+").replace('_', "/");
    let tmp = tempdir();
    let dir = tmp.path();
    write_key_file(&dir.join("canonical.key"), URLSAFE);
    write(&dir.join("p"), &data(10_000, 900));
    for format in ["v1", "v2"] {
        let enc = format!("p.{format}");
        run(aegis_file(dir).args([
            "--key-file",
            "canonical.key",
            "encrypt",
            "--format",
            format,
            "p",
            "-o",
            &enc,
        ]))
        .ok();
    }
    let accepted = [
        ("standard", standard.clone()),
        ("unpadded", URLSAFE.trim_end_matches('=').to_string()),
        (
            "standard unpadded",
            standard.trim_end_matches('=').to_string(),
        ),
        ("newline", format!("{URLSAFE}\n")),
        ("whitespace", format!("  \t{standard}\r\n\n")),
    ];
    for (i, (what, text)) in accepted.iter().enumerate() {
        let kf = format!("ok{i}.key");
        write_key_file(&dir.join(&kf), text);
        for format in ["v1", "v2"] {
            let out = format!("out{i}.{format}");
            let enc = format!("p.{format}");
            let r = run(aegis_file(dir).args(["--key-file", &kf, "decrypt", &enc, "-o", &out]));
            assert!(r.status.success(), "{what} key form refused: {r:#?}");
            assert!(read(&dir.join(&out)) == read(&dir.join("p")), "{what}");
        }
        assert_eq!(
            read_text(&dir.join(&kf)),
            *text,
            "{what}: key file rewritten"
        );
    }
    let refused = [
        ("31 bytes", "-_v7-_v7-_v7-_v7-_v7-_v7-_v7-_v7-_v7-_v7-w=="),
        ("33 bytes", "-_v7-_v7-_v7-_v7-_v7-_v7-_v7-_v7-_v7-_v7-_v7"),
        ("empty", ""),
        ("not Base64", "this is not a key, not at all, no no no no!"),
    ];
    for (i, (what, text)) in refused.iter().enumerate() {
        let kf = format!("bad{i}.key");
        write_key_file(&dir.join(&kf), text);
        for args in [
            &["key", "status"][..],
            &["key", "rotate"][..],
            &["key", "init"][..],
            &["decrypt", "p.v1", "-o", "never"][..],
        ] {
            let r = run(aegis_file(dir).args(["--key-file", &kf]).args(args));
            assert!(
                !r.status.success(),
                "{what} key accepted by {args:?}: {r:#?}"
            );
            assert_eq!(r.stderr_lines().len(), 1, "{what} {args:?}: {r:#?}");
            assert_eq!(read_text(&dir.join(&kf)), *text, "{what}: key file changed");
        }
        assert!(!dir.join("never").exists());
    }
}

/// A.2: `aegis key init` + `aegis encrypt --format v1` → the Python system decrypts.
#[test]
fn aegis_v1_blobs_decrypt_with_python() {
    let Some(py) = need_python() else { return };
    let tmp = tempdir();
    let dir = tmp.path();
    let init = run(aegis_file(dir).args(["key", "init"])).ok();
    assert!(init.stdout.contains("key file"), "{init:#?}");
    let key_text = read_text(&dir.join("aegis_key.key"));
    assert!(is_python_key_text(&key_text), "key file holds {key_text:?}");
    assert_eq!(mode(&dir.join("aegis_key.key")), 0o600);

    for (i, &len) in PY_SIZES.iter().enumerate() {
        let plain = data(len, 200 + i as u64);
        let (p, b, o) = (format!("p{i}"), format!("p{i}.enc"), format!("o{i}"));
        write(&dir.join(&p), &plain);
        run(aegis_file(dir).args(["encrypt", "--format", "v1", &p, "-o", &b])).ok();
        let blob = read(&dir.join(&b));
        assert_eq!(blob.len(), len + 28);
        assert!(!blob.starts_with(V2_MAGIC));
        assert!(
            py_decrypt(&py, dir, "aegis_key.key", &b, &o),
            "python could not decrypt the {len}-byte blob"
        );
        assert!(
            read(&dir.join(&o)) == plain,
            "size {len}: plaintext differs"
        );
    }
}

/// A.3: after `aegis key rotate` the key file holds the new key, Python-style, and Python reads
/// what aegis writes after the rotation and what `aegis reencrypt` rewrote (v1 stays v1).
#[test]
fn rotation_keeps_the_key_file_python_compatible() {
    let Some(py) = need_python() else { return };
    let tmp = tempdir();
    let dir = tmp.path();
    run(aegis_file(dir).args(["key", "init"])).ok();
    let k1 = read_text(&dir.join("aegis_key.key"));
    let id1 = ref_key_id(&py, dir, "aegis_key.key");
    std::fs::copy(dir.join("aegis_key.key"), dir.join("k1.key")).unwrap();

    std::fs::create_dir(dir.join("data")).unwrap();
    let old_plain = data(5000, 301);
    write(&dir.join("old"), &old_plain);
    run(aegis_file(dir).args(["encrypt", "--format", "v1", "old", "-o", "data/old.enc"])).ok();

    let rot = run(aegis_file(dir).args(["key", "rotate"])).ok();
    let k2 = read_text(&dir.join("aegis_key.key"));
    assert!(
        is_python_key_text(&k2),
        "after rotate the key file holds {k2:?}"
    );
    assert_ne!(k2, k1, "rotate did not change the key file");
    assert_eq!(mode(&dir.join("aegis_key.key")), 0o600);
    let id2 = ref_key_id(&py, dir, "aegis_key.key");
    assert!(rot.stdout.contains(&id2), "{rot:#?}");
    let st = status_json(&mut aegis_file(dir));
    assert_eq!(st["primary"], id2.as_str(), "{st:#}");
    assert_eq!(status_of(&st, &id1).as_deref(), Some("retained"), "{st:#}");

    // Written after the rotation: Python with the new key file reads it.
    let new_plain = data(70_000, 302);
    write(&dir.join("new"), &new_plain);
    run(aegis_file(dir).args(["encrypt", "--format", "v1", "new", "-o", "data/new.enc"])).ok();
    assert!(py_decrypt(
        &py,
        dir,
        "aegis_key.key",
        "data/new.enc",
        "new.out"
    ));
    assert!(read(&dir.join("new.out")) == new_plain);
    // The old blob is still under k1 until re-encrypted.
    assert!(!py_decrypt(&py, dir, "aegis_key.key", "data/old.enc", "x"));

    let re = run(aegis_file(dir).args(["reencrypt", "data"])).ok();
    assert!(re.stdout.contains("1 v1 re-encrypted"), "{re:#?}");
    let blob = read(&dir.join("data/old.enc"));
    assert!(!blob.starts_with(V2_MAGIC), "reencrypt turned v1 into v2");
    assert_eq!(blob.len(), old_plain.len() + 28);
    assert!(py_decrypt(
        &py,
        dir,
        "aegis_key.key",
        "data/old.enc",
        "old.out"
    ));
    assert!(read(&dir.join("old.out")) == old_plain);
    assert!(!py_decrypt(&py, dir, "k1.key", "data/old.enc", "x"));
    assert_eq!(
        read_text(&dir.join("aegis_key.key")),
        k2,
        "reencrypt touched the key file"
    );
}

/// One entry of the vectors' manifest.json.
struct Case {
    file: String,
    format: String,
    expect: String,
    plaintext_len: usize,
}

fn manifest() -> Vec<Case> {
    let doc: serde_json::Value =
        serde_json::from_slice(&read(&vector_dir().join("manifest.json"))).unwrap();
    doc.as_array()
        .unwrap()
        .iter()
        .map(|e| Case {
            file: e["file"].as_str().unwrap().to_string(),
            format: e["format"].as_str().unwrap().to_string(),
            expect: e["expect"].as_str().unwrap().to_string(),
            plaintext_len: usize::try_from(e["plaintext_len"].as_u64().unwrap()).unwrap(),
        })
        .collect()
}

/// A.4 (vectors): the reference decryptor, written from docs/format.md only, opens every `ok`
/// frozen vector and refuses every bad one, for the reason the manifest gives.
#[test]
fn reference_decryptor_agrees_with_the_frozen_vectors() {
    let Some(py) = need_python() else { return };
    let tmp = tempdir();
    let dir = tmp.path();
    write_key_file(&dir.join("k"), TEST_KEY_TEXT);
    let id = ref_key_id(&py, dir, "k");
    assert_eq!(id, "dbc03d52eeaf5bd6", "docs/format.md §2");
    assert_eq!(id, read_text(&vector_dir().join("key_id.txt")).trim());

    let manifest = manifest();
    let (mut ok, mut bad_v2) = (0, 0);
    for case in &manifest {
        let input = vector_dir().join(&case.file);
        let out = dir.join(format!("{}.out", case.file));
        let got = ref_decrypt(&py, dir, "k", &input, &out);
        if case.expect == "ok" {
            assert!(got.is_ok(), "{}: {got:?}", case.file);
            assert!(
                read(&out) == pattern(case.plaintext_len),
                "{}: wrong plaintext",
                case.file
            );
            if case.format == "v2" {
                let h = ref_header(&py, dir, &input);
                assert_eq!(h["key_id"], id.as_str(), "{}", case.file);
            }
            ok += 1;
            continue;
        }
        let err = got.expect_err(&format!("{} must be refused", case.file));
        let want = match case.expect.as_str() {
            "decrypt" => "decryption failed",
            "unknown_key" => "not in the keyset",
            "unsupported" => "unsupported",
            "malformed" => "malformed",
            other => panic!("manifest: unknown expectation {other}"),
        };
        assert!(err.contains(want), "{}: {err}", case.file);
        if case.file.starts_with("bad_v2_") {
            bad_v2 += 1;
        }
    }
    assert_eq!(ok, 8, "ok vectors in the manifest");
    let listed = std::fs::read_dir(vector_dir())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("bad_v2_")
        })
        .count();
    assert_eq!(
        bad_v2, listed,
        "every bad_v2_* file is in the manifest and refused"
    );
    assert!(bad_v2 >= 10);
}

/// A.4 (aegis output): the reference decrypts what `aegis encrypt` writes (v2, default and
/// 4 KiB chunks), agrees on the key id with the header and `aegis key status --json`, and
/// still decrypts after `aegis reencrypt` rewrapped the files to a new key — which replaced
/// only the header (§4.3).
#[test]
fn reference_decryptor_opens_aegis_v2_files_before_and_after_rewrap() {
    let Some(py) = need_python() else { return };
    let tmp = tempdir();
    let dir = tmp.path();
    run(aegis_file(dir).args(["key", "init"])).ok();
    let id1 = ref_key_id(&py, dir, "aegis_key.key");
    assert_eq!(status_json(&mut aegis_file(dir))["primary"], id1.as_str());
    std::fs::copy(dir.join("aegis_key.key"), dir.join("k1.key")).unwrap();
    std::fs::create_dir(dir.join("data")).unwrap();

    let sizes = [0, 1, 4095, 4096, 4097, 65536, 65537, (1 << 20) + 7];
    let mut files = Vec::new();
    for (chunk, c_log2) in [(None, 16u8), (Some("4"), 12u8)] {
        for (i, &len) in sizes.iter().enumerate() {
            let plain = data(len, 400 + i as u64 + u64::from(c_log2));
            let name = format!("p{c_log2}_{len}");
            write(&dir.join(&name), &plain);
            let enc = dir.join("data").join(format!("{name}.enc"));
            let mut cmd = aegis_file(dir);
            cmd.arg("encrypt").arg(&name).arg("-o").arg(&enc);
            if let Some(k) = chunk {
                cmd.args(["--chunk-kib", k]);
            }
            run(&mut cmd).ok();
            let bytes = read(&enc);
            assert!(bytes.starts_with(V2_MAGIC));
            let h = ref_header(&py, dir, &enc);
            assert_eq!(h["chunk_log2"], c_log2, "{name}");
            assert_eq!(h["key_id"], id1.as_str(), "{name}: header key id");
            let out = dir.join(format!("{name}.out"));
            ref_decrypt(&py, dir, "aegis_key.key", &enc, &out)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(read(&out) == plain, "{name}: plaintext differs");
            files.push((name, enc, plain, bytes, h));
        }
    }

    run(aegis_file(dir).args(["key", "rotate"])).ok();
    let id2 = ref_key_id(&py, dir, "aegis_key.key");
    assert_ne!(id1, id2);
    let st = status_json(&mut aegis_file(dir));
    assert_eq!(st["primary"], id2.as_str());
    let re = run(aegis_file(dir).args(["reencrypt", "data"])).ok();
    assert!(
        re.stdout.contains(&format!("{} v2 rewrapped", files.len())),
        "{re:#?}"
    );

    for (name, enc, plain, before, h1) in &files {
        let after = read(enc);
        let h2 = ref_header(&py, dir, enc);
        assert_eq!(
            h2["key_id"],
            id2.as_str(),
            "{name}: header key id after rewrap"
        );
        assert_eq!(h2["chunk_log2"], h1["chunk_log2"], "{name}: same c");
        assert_eq!(h2["nonce_prefix"], h1["nonce_prefix"], "{name}: same P");
        assert_ne!(h2["wrapped_dk"], h1["wrapped_dk"], "{name}");
        assert_eq!(after.len(), before.len(), "{name}");
        assert!(
            after[HEADER_LEN..] == before[HEADER_LEN..],
            "{name}: rewrap changed the chunks"
        );
        let out = dir.join(format!("{name}.out2"));
        ref_decrypt(&py, dir, "aegis_key.key", enc, &out)
            .unwrap_or_else(|e| panic!("{name} after rewrap: {e}"));
        assert!(
            read(&out) == *plain,
            "{name}: plaintext differs after rewrap"
        );
        let err = ref_decrypt(&py, dir, "k1.key", enc, &out).expect_err("old key must not open it");
        assert!(err.contains("not in the keyset"), "{err}");
    }
}

/// The other direction: v2 files written by the reference encryptor (docs/format.md only)
/// open with `aegis decrypt`.
#[test]
fn aegis_decrypts_reference_encrypted_v2_files() {
    let Some(py) = need_python() else { return };
    let tmp = tempdir();
    let dir = tmp.path();
    run(python(&py, dir, "python_system.py").args(["new-key-file", "aegis_key.key"])).ok();
    for c in ["12", "16"] {
        for len in [0, 1, 4096, 4097, 70_000] {
            let plain = data(len, 500 + len as u64);
            let name = format!("f{c}_{len}");
            write(&dir.join(&name), &plain);
            let enc = format!("{name}.aegis");
            run(python(&py, dir, "v2_forge.py").args([
                "aegis_key.key",
                &name,
                &enc,
                "--chunk-log2",
                c,
            ]))
            .ok();
            let out = format!("{name}.out");
            run(aegis_file(dir).args(["decrypt", &enc, "-o", &out])).ok();
            assert!(read(&dir.join(&out)) == plain, "{name}: plaintext differs");
        }
    }
}

/// Files that break one rule of docs/format.md while carrying a valid MAC and valid tags:
/// both `aegis decrypt` and the reference must refuse them (one line, non-zero, no output).
#[test]
fn aegis_refuses_files_the_spec_forbids() {
    let Some(py) = need_python() else { return };
    let tmp = tempdir();
    let dir = tmp.path();
    run(python(&py, dir, "python_system.py").args(["new-key-file", "aegis_key.key"])).ok();
    run(python(&py, dir, "python_system.py").args(["new-key-file", "other.key"])).ok();
    let other_id = ref_key_id(&py, dir, "other.key");
    write(&dir.join("p4096"), &data(4096, 600));
    write(&dir.join("p100"), &data(100, 601));
    let cases: Vec<(&str, &str, Vec<String>)> = vec![
        ("version 3", "p100", vec!["--version".into(), "3".into()]),
        ("suite 2", "p100", vec!["--suite".into(), "2".into()]),
        ("suite 0", "p100", vec!["--suite".into(), "0".into()]),
        (
            "reserved 000001",
            "p100",
            vec!["--reserved".into(), "000001".into()],
        ),
        (
            "reserved 800000",
            "p100",
            vec!["--reserved".into(), "800000".into()],
        ),
        (
            "chunk log2 11",
            "p100",
            vec!["--chunk-log2".into(), "11".into()],
        ),
        (
            "chunk log2 25",
            "p100",
            vec!["--chunk-log2".into(), "25".into()],
        ),
        (
            "empty chunk after a full last chunk",
            "p4096",
            vec!["--chunk-log2".into(), "12".into(), "--empty-last".into()],
        ),
        (
            "key id of another key",
            "p100",
            vec!["--key-id".into(), other_id],
        ),
    ];
    for (i, (what, input, args)) in cases.iter().enumerate() {
        let enc = format!("forged{i}.aegis");
        run(python(&py, dir, "v2_forge.py")
            .args(["aegis_key.key", input, &enc])
            .args(args))
        .ok();
        let r = run(aegis_file(dir).args(["decrypt", &enc, "-o", "out"]));
        assert!(
            !r.status.success(),
            "aegis accepted a file with {what}: {r:#?}"
        );
        assert_eq!(r.stderr_lines().len(), 1, "{what}: {r:#?}");
        assert!(!dir.join("out").exists(), "{what}: output written");
        let e = ref_decrypt(&py, dir, "aegis_key.key", &dir.join(&enc), &dir.join("out"));
        assert!(e.is_err(), "the reference accepted a file with {what}");
    }
    // Sanity: without a broken rule the same generator's file opens in both.
    run(python(&py, dir, "v2_forge.py").args([
        "aegis_key.key",
        "p4096",
        "fine.aegis",
        "--chunk-log2",
        "12",
    ]))
    .ok();
    run(aegis_file(dir).args(["decrypt", "fine.aegis", "-o", "fine.out"])).ok();
    ref_decrypt(
        &py,
        dir,
        "aegis_key.key",
        &dir.join("fine.aegis"),
        &dir.join("fine.ref"),
    )
    .unwrap();
    assert!(read(&dir.join("fine.out")) == read(&dir.join("p4096")));
    assert!(read(&dir.join("fine.ref")) == read(&dir.join("p4096")));
}
