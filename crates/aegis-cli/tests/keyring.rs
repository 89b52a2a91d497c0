//! The `aegis` CLI against a real Secret Service (gnome-keyring on the private session bus of
//! scripts/with-secret-service.sh), side by side with the Python system's `keyring` calls.
//!
//! Each test uses its own keyring service name (`--keyring-service aegis_test_…`) and deletes
//! its items at the end, except `python_first_key_is_found_and_rotated_in_place`, the only
//! test that uses the real defaults `aegis_core` / `aegis_master_key_v2` (it refuses to run if
//! such an item already exists). The fallback tests make the keyring unreachable instead.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

mod interop_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use interop_support::{
    aegis, data, is_python_key_text, python, python_from_env, read, read_text, run, run_for,
    script, secret_service_from_env, status_json, status_of, unique_name,
};
use tempfile::TempDir;

/// The gating rule of this file: the venv Python and a verified Secret Service, or skip
/// (locally) / fail (CI=true).
fn need_python_and_secret_service() -> Option<PathBuf> {
    let why = match (python_from_env(), secret_service_from_env()) {
        (Ok(py), Ok(())) => return Some(py),
        (Err(a), Ok(())) | (Ok(_), Err(a)) => a,
        (Err(a), Err(b)) => format!("{a}; {b}"),
    };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{why}: required under CI=true (run scripts/test.sh)");
    }
    eprintln!("skipped: {why}");
    None
}

const USER: &str = "aegis_master_key_v2";
const PY_APP: &str = "Python keyring library";
/// The fallback must be quick: a hang is a failure.
const FALLBACK_LIMIT: Duration = Duration::from_secs(20);

fn tempdir() -> TempDir {
    tempfile::Builder::new()
        .prefix("aegis-keyring-")
        .tempdir()
        .unwrap()
}

/// `aegis --keystore auto [--keyring-service S]` in `dir` (no key file there unless a test
/// puts one).
fn aegis_auto(dir: &Path, service: Option<&str>) -> Command {
    let mut c = aegis(dir);
    c.args(["--keystore", "auto"]);
    if let Some(s) = service {
        c.args(["--keyring-service", s]);
    }
    c
}

/// Make the session bus unreachable for `c`: an address with no socket behind it and no
/// XDG_RUNTIME_DIR; or (`none`) no address at all.
fn without_keyring(c: &mut Command, none: bool) -> &mut Command {
    if none {
        c.env_remove("DBUS_SESSION_BUS_ADDRESS");
    } else {
        c.env("DBUS_SESSION_BUS_ADDRESS", "unix:path=/nonexistent");
    }
    c.env_remove("XDG_RUNTIME_DIR")
}

/// A keyring service name owned by one test; its items are deleted on drop.
struct Service {
    name: String,
    py: PathBuf,
}

impl Service {
    fn new(py: &Path, tag: &str) -> Self {
        Service {
            name: unique_name(tag),
            py: py.to_path_buf(),
        }
    }

    /// Every Secret Service item with attribute service=NAME (all collections).
    fn items(&self) -> Vec<serde_json::Value> {
        let r = run(python(&self.py, Path::new("/"), "python_system.py")
            .args(["keyring-items", &self.name]))
        .ok();
        serde_json::from_str::<serde_json::Value>(&r.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    /// The items of `user` (exact username attribute).
    fn items_of(&self, user: &str) -> Vec<serde_json::Value> {
        self.items()
            .into_iter()
            .filter(|i| i["attributes"]["username"] == user)
            .collect()
    }

    /// Python `keyring.set_password`; `-` stores a new key. Returns the stored text.
    fn py_set(&self, value: &str) -> String {
        let r = run(python(&self.py, Path::new("/"), "python_system.py").args([
            "keyring-set",
            &self.name,
            USER,
            value,
        ]))
        .ok();
        if value == "-" {
            r.out().to_string()
        } else {
            value.to_string()
        }
    }

    /// Python `keyring.get_password`.
    fn py_get(&self) -> String {
        run(python(&self.py, Path::new("/"), "python_system.py").args([
            "keyring-get",
            &self.name,
            USER,
        ]))
        .ok()
        .out()
        .to_string()
    }

    /// `secret-tool store --label x service NAME username USER extra N` holding `value`.
    fn secret_tool_store(&self, extra: &str, value: &str) {
        run_for(
            Command::new("secret-tool").args([
                "store",
                "--label",
                "aegis test duplicate",
                "service",
                &self.name,
                "username",
                USER,
                "extra",
                extra,
            ]),
            Some(value.as_bytes()),
            interop_support::TIMEOUT,
        )
        .ok();
    }

    /// Number of items `secret-tool search --all service NAME username USER` lists.
    fn secret_tool_count(&self) -> usize {
        let r = run(Command::new("secret-tool")
            .args(["search", "--all", "service", &self.name, "username", USER]));
        r.stdout.lines().filter(|l| l.starts_with('[')).count()
    }

    /// Delete every item of the service; returns how many there were.
    fn clear(&self) -> usize {
        let r = run(python(&self.py, Path::new("/"), "python_system.py")
            .args(["keyring-clear", &self.name]))
        .ok();
        r.out().parse().unwrap()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        // Best effort, never panics (this may run while a failed test unwinds).
        let _ = Command::new(&self.py)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .arg(script("python_system.py"))
            .args(["keyring-clear", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The §2 key id of a key text, computed by the Python side.
fn py_key_id(py: &Path, dir: &Path, key_text: &str) -> String {
    let kf = dir.join(format!("id-{}.key", &unique_name("k")));
    std::fs::write(&kf, key_text).unwrap();
    let r = run(python(py, dir, "v2_reference.py").arg("--key-id").arg(&kf)).ok();
    std::fs::remove_file(&kf).unwrap();
    r.out().to_string()
}

fn new_key_text(py: &Path) -> String {
    run(python(py, Path::new("/"), "python_system.py").arg("new-key-text"))
        .ok()
        .out()
        .to_string()
}

fn assert_no_key_file(dir: &Path) {
    for f in ["aegis_key.key", "aegis_key.key.keyset"] {
        assert!(
            !dir.join(f).exists(),
            "{f} was created in {}",
            dir.display()
        );
    }
}

/// B.1 — the Python system's key in the keyring (real default names) is found first in auto
/// mode, decrypts its blobs, and `aegis key rotate` replaces it in place: Python then reads
/// the new key, in the same form, and decrypts what aegis writes.
#[test]
fn python_first_key_is_found_and_rotated_in_place() {
    let Some(py) = need_python_and_secret_service() else {
        return;
    };
    let svc = Service {
        name: "aegis_core".to_string(),
        py: py.clone(),
    };
    let existing = svc.items();
    if !existing.is_empty() {
        // Never touch (or clean up) someone's real key.
        std::mem::forget(svc);
        panic!("this Secret Service already holds aegis_core items; refusing to run");
    }
    let tmp = tempdir();
    let dir = tmp.path();

    let k1 = svc.py_set("-");
    assert!(is_python_key_text(&k1));
    let id1 = py_key_id(&py, dir, &k1);
    let plain = data(3000, 700);
    std::fs::write(dir.join("p"), &plain).unwrap();
    run(python(&py, dir, "python_system.py").args([
        "encrypt",
        "--keyring",
        "aegis_core",
        "p",
        "p.enc",
    ]))
    .ok();

    // Defaults only: no --keyring-service, nothing in the environment.
    let r = run(aegis_auto(dir, None).args(["decrypt", "p.enc", "-o", "p.out"])).ok();
    assert!(read(&dir.join("p.out")) == plain);
    assert!(
        !r.stderr.to_lowercase().contains("warn"),
        "unexpected warning: {r:#?}"
    );
    assert_no_key_file(dir);

    let rot = run(aegis_auto(dir, None).args(["key", "rotate"])).ok();
    assert!(
        rot.stdout
            .contains("OS keyring (aegis_core/aegis_master_key_v2)"),
        "{rot:#?}"
    );
    let k2 = svc.py_get();
    assert!(is_python_key_text(&k2), "keyring holds {k2:?} after rotate");
    assert_ne!(k1, k2, "rotate left the old key in the keyring item");
    let id2 = py_key_id(&py, dir, &k2);
    let st = status_json(&mut aegis_auto(dir, None));
    assert_eq!(st["primary"], id2.as_str(), "{st:#}");
    assert_eq!(status_of(&st, &id1).as_deref(), Some("retained"), "{st:#}");

    // aegis writes under the new key; Python (reading the keyring) decrypts it.
    let plain2 = data(100_000, 701);
    std::fs::write(dir.join("q"), &plain2).unwrap();
    run(aegis_auto(dir, None).args(["encrypt", "--format", "v1", "q", "-o", "q.enc"])).ok();
    run(python(&py, dir, "python_system.py").args([
        "decrypt",
        "--keyring",
        "aegis_core",
        "q.enc",
        "q.out",
    ]))
    .ok();
    assert!(read(&dir.join("q.out")) == plain2);
    // The old blob still opens (k1 is retained).
    run(aegis_auto(dir, None).args(["decrypt", "p.enc", "-o", "p.out2"])).ok();
    assert!(read(&dir.join("p.out2")) == plain);

    // Exactly one primary item, Python's, updated in place.
    assert_eq!(svc.secret_tool_count(), 1, "secret-tool search --all");
    let prim = svc.items_of(USER);
    assert_eq!(prim.len(), 1, "{prim:#?}");
    assert_eq!(prim[0]["attributes"]["application"], PY_APP, "{prim:#?}");
    assert_eq!(prim[0]["secret"], k2.as_str());
    assert_no_key_file(dir);

    assert!(svc.clear() >= 2, "primary item and keyset document");
    assert!(svc.items().is_empty());
}

/// B.2 — aegis creates the item first (auto mode → keyring, no key file), tagged like Python's;
/// a later Python `set_password` updates that same item, and aegis adopts the new key as
/// primary, keeping the old one as retained.
#[test]
fn aegis_first_item_is_updated_in_place_by_python() {
    let Some(py) = need_python_and_secret_service() else {
        return;
    };
    let svc = Service::new(&py, "rustfirst");
    let tmp = tempdir();
    let dir = tmp.path();

    let init = run(aegis_auto(dir, Some(&svc.name)).args(["key", "init"])).ok();
    assert!(
        init.stdout
            .contains(&format!("OS keyring ({}/{USER})", svc.name)),
        "{init:#?}"
    );
    assert_no_key_file(dir);
    let prim = svc.items_of(USER);
    assert_eq!(prim.len(), 1, "{prim:#?}");
    assert_eq!(prim[0]["attributes"]["application"], PY_APP, "{prim:#?}");
    let k1 = prim[0]["secret"].as_str().unwrap().to_string();
    assert!(is_python_key_text(&k1), "{k1:?}");
    assert_eq!(svc.py_get(), k1, "Python reads aegis's item");
    let doc = svc.items_of(&format!("{USER}/keyset"));
    assert_eq!(doc.len(), 1, "keyset document item: {doc:#?}");
    let id1 = py_key_id(&py, dir, &k1);
    let st = status_json(&mut aegis_auto(dir, Some(&svc.name)));
    assert_eq!(st["primary"], id1.as_str(), "{st:#}");

    // The Python system writes another key.
    let k2 = svc.py_set("-");
    assert_ne!(k1, k2);
    assert_eq!(
        svc.secret_tool_count(),
        1,
        "Python added an item instead of updating"
    );
    let prim = svc.items_of(USER);
    assert_eq!(prim.len(), 1, "{prim:#?}");
    assert_eq!(prim[0]["secret"], k2.as_str());

    let id2 = py_key_id(&py, dir, &k2);
    let st = status_json(&mut aegis_auto(dir, Some(&svc.name)));
    assert_eq!(st["primary"], id2.as_str(), "{st:#}");
    assert_eq!(status_of(&st, &id1).as_deref(), Some("retained"), "{st:#}");
    // The adoption was recorded in the keyset document.
    let doc = svc.items_of(&format!("{USER}/keyset"));
    assert_eq!(doc.len(), 1);
    let doc_text = doc[0]["secret"].as_str().unwrap();
    assert!(
        doc_text.contains(&id1) && doc_text.contains(&id2),
        "keyset document does not list both keys"
    );
    assert_no_key_file(dir);

    assert!(svc.clear() >= 2);
}

/// B.3 — two items for the same service/user but different attribute sets: differing values
/// are refused (one line, non-zero, no fallback to a key file that is present); equal values
/// work with a warning, and a rotation then writes every duplicate.
#[test]
fn duplicate_items_are_refused_unless_they_agree() {
    let Some(py) = need_python_and_secret_service() else {
        return;
    };
    let svc = Service::new(&py, "dup");
    let tmp = tempdir();
    let dir = tmp.path();
    // A key file is present: auto mode must not fall back to it here.
    run(python(&py, dir, "python_system.py").args(["new-key-file", "aegis_key.key"])).ok();
    std::fs::write(dir.join("p"), b"plaintext").unwrap();
    let (k1, k2) = (new_key_text(&py), new_key_text(&py));
    svc.secret_tool_store("1", &k1);
    svc.secret_tool_store("2", &k2);
    assert_eq!(svc.secret_tool_count(), 2);

    for args in [
        &["key", "status"][..],
        &["key", "rotate"][..],
        &["encrypt", "p", "-o", "x.enc"][..],
    ] {
        let r = run(aegis_auto(dir, Some(&svc.name)).args(args)).failed();
        let lines = r.stderr_lines();
        assert_eq!(lines.len(), 1, "{args:?}: {r:#?}");
        assert!(
            lines[0].contains("hold different values"),
            "{args:?}: {r:#?}"
        );
        assert!(lines[0].starts_with("aegis: error:"), "{r:#?}");
    }
    // Nothing was written anywhere.
    let items = svc.items();
    assert_eq!(items.len(), 2, "{items:#?}");
    assert!(!dir.join("x.enc").exists());

    // The same key in both: accepted, with a warning.
    assert_eq!(svc.clear(), 2);
    svc.secret_tool_store("1", &k1);
    svc.secret_tool_store("2", &k1);
    let empty = tempdir();
    let r = run(aegis_auto(empty.path(), Some(&svc.name)).args(["key", "status", "--json"])).ok();
    let st: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(st["primary"], py_key_id(&py, dir, &k1).as_str(), "{st:#}");
    assert!(
        r.stderr_lines().iter().any(|l| l.contains("duplicate")),
        "no warning about the duplicates: {r:#?}"
    );

    // A rotation writes the new key into both items (they stay consistent).
    run(aegis_auto(empty.path(), Some(&svc.name)).args(["key", "rotate"])).ok();
    let prim = svc.items_of(USER);
    assert_eq!(prim.len(), 2, "{prim:#?}");
    assert_eq!(prim[0]["secret"], prim[1]["secret"], "duplicates diverged");
    assert_ne!(
        prim[0]["secret"],
        k1.as_str(),
        "rotation did not reach the items"
    );
    run(aegis_auto(empty.path(), Some(&svc.name)).args(["key", "status"])).ok();
    assert_no_key_file(empty.path());

    assert!(svc.clear() >= 2);
}

/// B.4 — the keyring unreachable (bus address with no socket, or no address at all): auto
/// mode uses the key file with exactly one warning line, quickly; with no key file it fails.
#[test]
fn unreachable_keyring_falls_back_to_the_key_file() {
    // Needs neither Python nor the Secret Service: it makes the keyring unreachable.
    let tmp = tempdir();
    let dir = tmp.path();
    let init = run(aegis(dir).args(["--keystore", "file", "key", "init"])).ok();
    assert!(init.stdout.contains("key file"), "{init:#?}");
    let key = read_text(&dir.join("aegis_key.key"));
    let st = status_json(aegis(dir).args(["--keystore", "file"]));
    let id = st["primary"].as_str().unwrap().to_string();
    std::fs::write(dir.join("p"), data(10_000, 800)).unwrap();

    for none in [false, true] {
        let r = run_for(
            without_keyring(&mut aegis_auto(dir, None), none).args(["key", "status"]),
            None,
            FALLBACK_LIMIT,
        )
        .ok();
        assert!(r.stdout.contains("key file"), "{r:#?}");
        assert!(r.stdout.contains(&id), "{r:#?}");
        let lines = r.stderr_lines();
        assert_eq!(lines.len(), 1, "exactly one warning line expected: {r:#?}");
        assert!(lines[0].contains("keyring"), "{r:#?}");
        assert!(lines[0].contains("WARN"), "{r:#?}");

        // Real work in fallback mode too.
        let enc = format!("p{none}.enc");
        run_for(
            without_keyring(&mut aegis_auto(dir, None), none).args(["encrypt", "p", "-o", &enc]),
            None,
            FALLBACK_LIMIT,
        )
        .ok();
        let out = format!("p{none}.out");
        run_for(
            without_keyring(&mut aegis_auto(dir, None), none).args(["decrypt", &enc, "-o", &out]),
            None,
            FALLBACK_LIMIT,
        )
        .ok();
        assert!(read(&dir.join(&out)) == read(&dir.join("p")));
    }
    assert_eq!(read_text(&dir.join("aegis_key.key")), key);

    // No key file: ONE line on stderr (the error), non-zero, and the error must not claim the
    // keyring has no entry: it could not be read.
    let empty = tempdir();
    for none in [false, true] {
        let r = run_for(
            without_keyring(&mut aegis_auto(empty.path(), None), none).args(["key", "status"]),
            None,
            FALLBACK_LIMIT,
        )
        .failed();
        let lines = r.stderr_lines();
        assert_eq!(lines.len(), 1, "{r:#?}");
        assert!(lines[0].starts_with("aegis: error:"), "{r:#?}");
        assert!(lines[0].contains("keyring"), "{r:#?}");
        assert!(lines[0].contains("aegis_key.key"), "{r:#?}");
        assert!(
            !lines[0].contains("neither keyring entry"),
            "claims there is no keyring entry although the keyring was unreachable: {r:#?}"
        );
        assert!(r.stdout.is_empty(), "{r:#?}");
    }
    assert_no_key_file(empty.path());
}

/// B.5 — `--keystore keyring` with the keyring unreachable: a one-line error, no fallback to a
/// key file that is right there, and `key init` creates nothing.
#[test]
fn keyring_only_mode_does_not_fall_back() {
    let tmp = tempdir();
    let dir = tmp.path();
    run(aegis(dir).args(["--keystore", "file", "key", "init"])).ok();
    let empty = tempdir();
    for none in [false, true] {
        for (d, args) in [
            (dir, &["key", "status"][..]),
            (dir, &["key", "rotate"][..]),
            (empty.path(), &["key", "init"][..]),
        ] {
            let mut c = aegis(d);
            c.args(["--keystore", "keyring"]);
            let r = run_for(
                without_keyring(&mut c, none).args(args),
                None,
                FALLBACK_LIMIT,
            )
            .failed();
            let lines = r.stderr_lines();
            assert_eq!(lines.len(), 1, "{args:?}: {r:#?}");
            assert!(lines[0].starts_with("aegis: error:"), "{r:#?}");
            assert!(r.stdout.is_empty(), "{r:#?}");
        }
    }
    assert_no_key_file(empty.path());
}

/// The primary item is gone (the Python system ran `keyring.delete_password`) but the keyset
/// document item still holds every key, retained ones included. `aegis key init` must not
/// overwrite that document (the key-file backend refuses when `aegis_key.key.keyset` exists
/// without `aegis_key.key`): it is the only copy of keys that existing files need.
#[test]
fn init_never_overwrites_an_orphaned_keyset_document() {
    let Some(py) = need_python_and_secret_service() else {
        return;
    };
    let svc = Service::new(&py, "orphan");
    let tmp = tempdir();
    let dir = tmp.path();
    run(aegis_auto(dir, Some(&svc.name)).args(["key", "init"])).ok();
    std::fs::write(dir.join("p"), b"needs the first key").unwrap();
    run(aegis_auto(dir, Some(&svc.name)).args(["encrypt", "p", "-o", "p.enc"])).ok();
    run(aegis_auto(dir, Some(&svc.name)).args(["key", "rotate"])).ok();
    let doc_user = format!("{USER}/keyset");
    let doc_before = svc.items_of(&doc_user)[0]["secret"].clone();

    run(python(&py, dir, "python_system.py").args(["keyring-delete", &svc.name, USER])).ok();
    assert!(svc.items_of(USER).is_empty());
    assert_eq!(svc.items_of(&doc_user).len(), 1);

    let r = run(aegis_auto(dir, Some(&svc.name)).args(["key", "init"]));
    let doc_after = svc.items_of(&doc_user)[0]["secret"].clone();
    assert!(
        doc_after == doc_before,
        "key init overwrote the keyset document: the previous keys are gone: {r:#?}"
    );
    let r = r.failed();
    assert_eq!(r.stderr_lines().len(), 1, "{r:#?}");
    assert_no_key_file(dir);
}
