//! The development PKI on disk: layout, key file modes, refusal to overwrite, certificate
//! contents (CA constraints, SANs, EKUs), and errors that name the file but never the key.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::net::IpAddr;
use std::path::Path;

use aegis_transport::pki::{self, Ca, PkiDir};
use aegis_transport::tls::{load_certs, load_private_key};
use aegis_transport::{ClientAuth, ClientId, ClientIdExt, ClientTls, Error, ServerTls};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn with_cert<T>(p: &Path, f: impl FnOnce(&X509Certificate<'_>) -> T) -> T {
    let der = load_certs(p).unwrap();
    assert_eq!(der.len(), 1, "{} holds one certificate", p.display());
    let (rest, cert) = X509Certificate::from_der(&der[0]).unwrap();
    assert!(rest.is_empty());
    f(&cert)
}

fn sans(cert: &X509Certificate<'_>) -> Vec<String> {
    cert.subject_alternative_name()
        .unwrap()
        .map(|e| {
            e.value
                .general_names
                .iter()
                .map(|n| match n {
                    GeneralName::DNSName(d) => format!("dns:{d}"),
                    GeneralName::URI(u) => format!("uri:{u}"),
                    GeneralName::IPAddress(b) => {
                        let ip: IpAddr = match b.len() {
                            4 => <[u8; 4]>::try_from(*b).unwrap().into(),
                            16 => <[u8; 16]>::try_from(*b).unwrap().into(),
                            _ => panic!("bad IP SAN"),
                        };
                        format!("ip:{ip}")
                    }
                    other => format!("{other:?}"),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn common_name(cert: &X509Certificate<'_>) -> String {
    cert.subject()
        .iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn init_writes_the_layout_with_private_keys() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("pki");
    let p = pki::init(&root, &pki::default_server_sans(), false).unwrap();
    assert_eq!(mode(&root), 0o700, "a new PKI directory is private");
    for key in [p.ca_key(), p.server_key()] {
        assert_eq!(mode(&key), 0o600, "{}", key.display());
        let text = std::fs::read_to_string(&key).unwrap();
        assert!(text.starts_with("-----BEGIN PRIVATE KEY-----"), "PKCS#8");
    }
    for cert in [p.ca_cert(), p.server_cert()] {
        assert_eq!(mode(&cert), 0o644, "{}", cert.display());
    }
    let (c, k) = pki::issue_client(&root, ClientId(42), false).unwrap();
    assert_eq!(
        (c.clone(), k.clone()),
        (p.client_cert(ClientId(42)), p.client_key(ClientId(42)))
    );
    assert!(c.ends_with("clients/42.pem") && k.ends_with("clients/42.key"));
    assert_eq!(mode(&k), 0o600);
    assert_eq!(mode(&c), 0o644);
    // No temporary files left behind.
    let mut names: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["ca.key", "ca.pem", "clients", "server.key", "server.pem"]
    );
}

#[test]
fn certificates_say_what_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let p = pki::init(dir.path(), &pki::default_server_sans(), false).unwrap();
    pki::issue_client(dir.path(), ClientId(u64::MAX), false).unwrap();

    with_cert(&p.ca_cert(), |ca| {
        let bc = ca.basic_constraints().unwrap().unwrap().value;
        assert!(bc.ca);
        assert_eq!(bc.path_len_constraint, Some(0));
        let ku = ca.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign());
        assert!(common_name(ca).starts_with("AEGIS development CA "));
        assert_eq!(ca.subject(), ca.issuer(), "self-signed");
    });
    let ca_subject = with_cert(&p.ca_cert(), |ca| ca.subject().to_string());

    with_cert(&p.server_cert(), |s| {
        assert_eq!(sans(s), ["dns:localhost", "ip:127.0.0.1", "ip:::1"]);
        let eku = s.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth);
        assert!(!s.basic_constraints().unwrap().is_some_and(|b| b.value.ca));
        assert_eq!(s.issuer().to_string(), ca_subject);
        assert!(s.validity().is_valid());
    });

    with_cert(&p.client_cert(ClientId(u64::MAX)), |c| {
        assert_eq!(sans(c), [format!("uri:aegis://client/{}", u64::MAX)]);
        assert_eq!(common_name(c), format!("aegis-client-{}", u64::MAX));
        let eku = c.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        assert_eq!(c.issuer().to_string(), ca_subject);
        assert!(c.validity().is_valid());
    });
    let der = load_certs(&p.client_cert(ClientId(u64::MAX))).unwrap();
    assert_eq!(
        ClientId::from_certificate(&der[0]),
        Some(ClientId(u64::MAX))
    );
    // A server certificate names no client.
    let der = load_certs(&p.server_cert()).unwrap();
    assert_eq!(ClientId::from_certificate(&der[0]), None);
}

#[test]
fn custom_server_sans_and_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = ["fl.internal", "10.1.2.3", "fe80::1"]
        .map(String::from)
        .to_vec();
    let p = pki::init(dir.path(), &names, false).unwrap();
    with_cert(&p.server_cert(), |s| {
        assert_eq!(sans(s), ["dns:fl.internal", "ip:10.1.2.3", "ip:fe80::1"]);
        assert_eq!(common_name(s), "fl.internal");
    });
    for bad in ["", "has space", "a..b", "ünï"] {
        let other = tempfile::tempdir().unwrap();
        let err = pki::init(other.path(), &[bad.to_string()], false).unwrap_err();
        assert!(matches!(err, Error::InvalidSan(_)), "{bad:?}: {err}");
        assert!(
            !PkiDir::new(other.path()).ca_key().exists(),
            "nothing written"
        );
    }
    let err = pki::issue_server(dir.path(), &[], true).unwrap_err();
    assert!(err.to_string().contains("at least one"), "{err}");
    // Re-issuing the server certificate needs force, and then keeps the CA.
    let ca_before = std::fs::read(p.ca_cert()).unwrap();
    let err = pki::issue_server(dir.path(), &["new.internal".into()], false).unwrap_err();
    assert!(matches!(err, Error::Exists(_)), "{err}");
    pki::issue_server(dir.path(), &["new.internal".into()], true).unwrap();
    with_cert(&p.server_cert(), |s| {
        assert_eq!(sans(s), ["dns:new.internal"])
    });
    assert_eq!(std::fs::read(p.ca_cert()).unwrap(), ca_before);
}

#[test]
fn nothing_is_overwritten_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let p = pki::init(dir.path(), &pki::default_server_sans(), false).unwrap();
    let ca_key = std::fs::read(p.ca_key()).unwrap();
    let err = pki::init(dir.path(), &pki::default_server_sans(), false).unwrap_err();
    assert!(
        matches!(&err, Error::Exists(path) if path == &p.ca_cert()),
        "{err}"
    );
    assert!(err.to_string().contains("already exists"), "{err}");
    assert_eq!(std::fs::read(p.ca_key()).unwrap(), ca_key, "CA untouched");

    // A lone CA key (an interrupted init) is protected too.
    std::fs::remove_file(p.ca_cert()).unwrap();
    let err = pki::init(dir.path(), &pki::default_server_sans(), false).unwrap_err();
    assert!(
        matches!(&err, Error::Exists(path) if path == &p.ca_key()),
        "{err}"
    );
    // So is a server certificate left without its CA.
    std::fs::remove_file(p.ca_key()).unwrap();
    let err = pki::init(dir.path(), &pki::default_server_sans(), false).unwrap_err();
    assert!(
        matches!(&err, Error::Exists(path) if path == &p.server_cert()),
        "{err}"
    );

    pki::init(dir.path(), &pki::default_server_sans(), true).unwrap();
    assert_ne!(
        std::fs::read(p.ca_key()).unwrap(),
        ca_key,
        "forced: a new CA"
    );
    assert_eq!(mode(&p.ca_key()), 0o600, "still private after replacement");

    pki::issue_client(dir.path(), ClientId(1), false).unwrap();
    let first = std::fs::read(p.client_key(ClientId(1))).unwrap();
    let err = pki::issue_client(dir.path(), ClientId(1), false).unwrap_err();
    assert!(matches!(err, Error::Exists(_)), "{err}");
    assert_eq!(std::fs::read(p.client_key(ClientId(1))).unwrap(), first);
    pki::issue_client(dir.path(), ClientId(1), true).unwrap();
    assert_ne!(std::fs::read(p.client_key(ClientId(1))).unwrap(), first);
    assert_eq!(mode(&p.client_key(ClientId(1))), 0o600);
}

#[test]
fn issue_needs_a_ca_that_matches_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let err = pki::issue_client(dir.path(), ClientId(1), false).unwrap_err();
    assert!(matches!(err, Error::NoCa { .. }), "{err}");
    assert!(err.to_string().contains("ca.pem"), "{err}");
    assert!(!dir.path().join("clients").exists(), "nothing created");

    let p = pki::init(dir.path(), &pki::default_server_sans(), false).unwrap();
    // The CA loads back and issues certificates that chain to the CA on disk.
    let ca = Ca::load(dir.path()).unwrap();
    assert_eq!(ca.cert_der(), &load_certs(&p.ca_cert()).unwrap()[0]);

    // The key of another CA is refused by name.
    let other = tempfile::tempdir().unwrap();
    let q = pki::init(other.path(), &pki::default_server_sans(), false).unwrap();
    std::fs::copy(q.ca_key(), p.ca_key()).unwrap();
    let err = Ca::load(dir.path()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("ca.key") && msg.contains("not the private key of"),
        "{msg}"
    );
}

#[test]
fn errors_name_the_file_and_never_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let p = pki::init(dir.path(), &pki::default_server_sans(), false).unwrap();
    let key_text = std::fs::read_to_string(p.server_key()).unwrap();
    let body: String = key_text.lines().nth(1).unwrap().to_string();

    // A damaged key: the error names the file, not its contents.
    let damaged = dir.path().join("damaged.key");
    std::fs::write(
        &damaged,
        key_text.replace(&body[..20], "!!!!secret-bits!!!!!"),
    )
    .unwrap();
    let msg = load_private_key(&damaged).unwrap_err().to_string();
    assert!(msg.contains("damaged.key"), "{msg}");
    assert!(
        !msg.contains("secret-bits") && !msg.contains(&body[20..40]),
        "{msg}"
    );
    assert_eq!(msg.lines().count(), 1);

    // A certificate where a key should be.
    let msg = load_private_key(&p.server_cert()).unwrap_err().to_string();
    assert!(
        msg.contains("server.pem") && msg.contains("no private key"),
        "{msg}"
    );
    // A key where a certificate should be.
    let msg = load_certs(&p.server_key()).unwrap_err().to_string();
    assert!(
        msg.contains("server.key") && msg.contains("no certificate"),
        "{msg}"
    );
    assert!(!msg.contains(&body[..20]), "{msg}");
    // A missing file.
    let msg = load_certs(&dir.path().join("nope.pem"))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("reading") && msg.contains("nope.pem"), "{msg}");

    // A key that does not match the certificate.
    let q = tempfile::tempdir().unwrap();
    let other = pki::init(q.path(), &pki::default_server_sans(), false).unwrap();
    let err =
        ServerTls::from_pem_files(&p.server_cert(), &other.server_key(), ClientAuth::Off, None)
            .unwrap()
            .into_config()
            .unwrap_err();
    assert!(
        err.to_string().contains("server certificate and key"),
        "{err}"
    );
    // Client authentication without a CA file.
    let err = ServerTls::from_pem_files(
        &p.server_cert(),
        &p.server_key(),
        ClientAuth::Required,
        None,
    )
    .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");

    // Debug output holds no key material.
    let ca = Ca::load(dir.path()).unwrap();
    let issued = ca.issue_client(ClientId(3)).unwrap();
    let key_body: String = issued.key_pem().lines().nth(1).unwrap().to_string();
    let server = ServerTls::from_pem_files(
        &p.server_cert(),
        &p.server_key(),
        ClientAuth::Required,
        Some(&p.ca_cert()),
    )
    .unwrap();
    let client = ClientTls {
        roots: vec![ca.cert_der().clone()],
        identity: Some((vec![issued.cert_der().clone()], issued.key_der())),
    };
    for dbg in [
        format!("{ca:?}"),
        format!("{issued:?}"),
        format!("{server:?}"),
        format!("{client:?}"),
    ] {
        assert!(dbg.contains("[secret]"), "{dbg}");
        assert!(
            !dbg.contains(&key_body[..16]) && !dbg.contains(&body[..16]),
            "{dbg}"
        );
    }
}
