//! End-to-end tests of `aegis certs`: the development PKI on disk, key file modes, refusals
//! (no CA, existing CA or certificate without --force, bad arguments), certificate contents.
//!
//! Every test runs the real binary in its own temporary directory.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use std::path::{Path, PathBuf};

use aegis_transport::tls::load_certs;
use aegis_transport::{ClientId, ClientIdExt};
use common::{
    Aegis, Sandbox, assert_no_scratch, assert_one_line_error, files_under, mode, read, s,
};

fn stdout_text(out: &std::process::Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("stdout is UTF-8")
}

/// The base64 body lines of every key file under `dir`, which no output may contain.
fn key_bodies(dir: &Path) -> Vec<String> {
    files_under(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "key"))
        .flat_map(|p| {
            String::from_utf8(read(&p))
                .unwrap()
                .lines()
                .filter(|l| !l.starts_with("-----"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `dir` holds no scratch files, and `text` (an output) no key material from it.
fn assert_clean(dir: &Path, text: &str) {
    assert_no_scratch(dir);
    for body in key_bodies(dir) {
        assert!(!text.contains(&body), "key material in the output: {text}");
    }
}

/// A fresh sandbox, the binary run in it, and the path of the directory `name` in it.
fn sandbox(name: &str) -> (Sandbox, Aegis, PathBuf) {
    let sb = Sandbox::new();
    let a = sb.aegis();
    let dir = sb.join(name);
    (sb, a, dir)
}

#[test]
fn init_and_issue_write_the_pki_with_private_keys() {
    let (sb, a, pki) = sandbox("pki");
    let out = a.ok(["certs", "init", "--dir", s(&pki)]);
    let text = stdout_text(&out);
    assert!(
        text.contains("ca.pem") && text.contains("server.pem"),
        "{text}"
    );
    assert!(text.contains("localhost, 127.0.0.1, ::1"), "{text}");
    assert_eq!(mode(&pki), 0o700);
    for (f, m) in [
        ("ca.pem", 0o644),
        ("ca.key", 0o600),
        ("server.pem", 0o644),
        ("server.key", 0o600),
    ] {
        assert_eq!(mode(&pki.join(f)), m, "{f}");
    }
    assert!(
        !sb.key_file().exists(),
        "certs needs no master key and creates none"
    );

    let out = a.ok(["certs", "issue", "--dir", s(&pki), "--client", "42"]);
    let text = stdout_text(&out);
    assert!(text.contains("aegis://client/42"), "{text}");
    let (cert, key) = (pki.join("clients/42.pem"), pki.join("clients/42.key"));
    assert_eq!(mode(&key), 0o600);
    assert_eq!(mode(&cert), 0o644);
    let der = load_certs(&cert).unwrap();
    assert_eq!(ClientId::from_certificate(&der[0]), Some(ClientId(42)));

    // The URI form of the id works too.
    a.ok([
        "certs",
        "issue",
        "--dir",
        s(&pki),
        "--client",
        "aegis://client/7",
    ]);
    assert_eq!(mode(&pki.join("clients/7.key")), 0o600);

    let mut names: Vec<String> = files_under(&pki)
        .iter()
        .map(|p| p.strip_prefix(&pki).unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "ca.key",
            "ca.pem",
            "clients/42.key",
            "clients/42.pem",
            "clients/7.key",
            "clients/7.pem",
            "server.key",
            "server.pem"
        ]
    );
    assert_clean(&pki, &text);
}

#[test]
fn issue_refuses_without_a_ca() {
    let (sb, a, pki) = sandbox("empty");
    let line = a.fail(["certs", "issue", "--dir", s(&pki), "--client", "1"]);
    assert!(
        line.contains("no CA in") && line.contains("ca.pem"),
        "{line}"
    );
    assert!(line.contains("aegis certs init"), "{line}");
    assert!(!pki.exists(), "nothing created");
    let line = a.fail(["certs", "issue", "--dir", s(&pki), "--server"]);
    assert!(line.contains("no CA in"), "{line}");

    // A CA certificate without its key is no CA either.
    let full = sb.join("full");
    a.ok(["certs", "init", "--dir", s(&full)]);
    std::fs::remove_file(full.join("ca.key")).unwrap();
    let line = a.fail(["certs", "issue", "--dir", s(&full), "--client", "1"]);
    assert!(line.contains("ca.key"), "{line}");
    assert!(!full.join("clients").exists());
}

#[test]
fn init_refuses_to_overwrite_without_force() {
    let (_sb, a, pki) = sandbox("pki");
    a.ok(["certs", "init", "--dir", s(&pki)]);
    a.ok(["certs", "issue", "--dir", s(&pki), "--client", "1"]);
    let pki_files = || -> Vec<Vec<u8>> {
        ["ca.pem", "ca.key", "server.pem", "server.key"]
            .iter()
            .map(|f| read(&pki.join(f)))
            .collect()
    };
    let before = pki_files();

    let line = a.fail(["certs", "init", "--dir", s(&pki)]);
    assert!(line.contains("already exists (use --force"), "{line}");
    assert!(line.contains("ca.pem"), "{line}");
    assert_eq!(before, pki_files(), "nothing was touched");

    let out = a.ok(["certs", "init", "--dir", s(&pki), "--force"]);
    let text = stdout_text(&out);
    assert!(text.contains("issue them again"), "{text}");
    assert_ne!(read(&pki.join("ca.key")), before[1], "a new CA");
    assert_eq!(mode(&pki.join("ca.key")), 0o600);
    assert_eq!(mode(&pki.join("server.key")), 0o600);
    assert_clean(&pki, &text);
}

#[test]
fn issue_refuses_to_overwrite_without_force_and_reissues_the_server() {
    let (_sb, a, pki) = sandbox("pki");
    a.ok(["certs", "init", "--dir", s(&pki), "--san", "fl.internal"]);
    a.ok(["certs", "issue", "--dir", s(&pki), "--client", "5"]);
    let key = read(&pki.join("clients/5.key"));
    let line = a.fail(["certs", "issue", "--dir", s(&pki), "--client", "5"]);
    assert!(
        line.contains("clients/5.pem already exists (use --force"),
        "{line}"
    );
    assert_eq!(read(&pki.join("clients/5.key")), key);
    a.ok([
        "certs",
        "issue",
        "--dir",
        s(&pki),
        "--client",
        "5",
        "--force",
    ]);
    assert_ne!(read(&pki.join("clients/5.key")), key);
    assert_eq!(mode(&pki.join("clients/5.key")), 0o600);

    let line = a.fail(["certs", "issue", "--dir", s(&pki), "--server"]);
    assert!(line.contains("server.pem already exists"), "{line}");
    let ca = read(&pki.join("ca.pem"));
    let out = a.ok([
        "certs",
        "issue",
        "--dir",
        s(&pki),
        "--server",
        "--san",
        "fl.example",
        "--san",
        "10.0.0.5",
        "--force",
    ]);
    assert!(stdout_text(&out).contains("fl.example, 10.0.0.5"));
    assert_eq!(read(&pki.join("ca.pem")), ca, "the CA stays");
    assert_eq!(mode(&pki.join("server.key")), 0o600);
}

#[test]
fn bad_arguments_are_one_line_errors() {
    let (sb, a, pki) = sandbox("pki");
    a.ok(["certs", "init", "--dir", s(&pki)]);
    for (args, needle) in [
        (vec!["--client", "x"], "invalid client id"),
        (vec!["--client", "-1"], "-1"),
        (
            vec!["--client", "18446744073709551616"],
            "invalid client id",
        ),
        (vec!["--client", "1", "--server"], "cannot be used with"),
        (vec!["--client", "1", "--san", "x"], "cannot be used with"),
        (vec![], "required"),
    ] {
        let mut full = vec!["certs", "issue", "--dir", s(&pki)];
        full.extend(&args);
        let out = a.run(&full);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let line = assert_one_line_error(&out, &format!("{args:?}"));
        assert!(line.contains(needle), "{args:?}: {line}");
    }
    let other = sb.join("other");
    let line = a.fail(["certs", "init", "--dir", s(&other), "--san", "not a name"]);
    assert!(line.contains("invalid subject alternative name"), "{line}");
    assert!(!other.join("ca.key").exists(), "nothing written");

    // Key-store settings do not matter to certs.
    let out = a
        .command(["certs", "init", "--dir", s(&sb.join("third"))])
        .env("AEGIS_KEYSTORE", "bogus")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// OpenSSL agrees: the client certificate verifies for client auth, the server certificate
/// for server auth, against the CA.
#[test]
fn openssl_verifies_the_certificates() {
    let have_openssl = std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_openssl {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!(
                "openssl is not installed (scripts/test-deps.sh installs it); CI=true requires it"
            );
        }
        eprintln!("SKIPPED: openssl is not installed");
        return;
    }
    let (_sb, a, pki) = sandbox("pki");
    a.ok(["certs", "init", "--dir", s(&pki)]);
    a.ok(["certs", "issue", "--dir", s(&pki), "--client", "3"]);
    for (cert, purpose) in [("clients/3.pem", "sslclient"), ("server.pem", "sslserver")] {
        let out = std::process::Command::new("openssl")
            .args(["verify", "-purpose", purpose, "-CAfile"])
            .arg(pki.join("ca.pem"))
            .arg(pki.join(cert))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{cert}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // And the wrong purpose fails (the EKUs are set).
    let out = std::process::Command::new("openssl")
        .args(["verify", "-purpose", "sslserver", "-CAfile"])
        .arg(pki.join("ca.pem"))
        .arg(pki.join("clients/3.pem"))
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a client certificate is no server certificate"
    );
}
