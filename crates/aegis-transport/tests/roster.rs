//! SecAgg roster entries bound to client certificates (`docs/secagg.md` §10), with a PKI in a
//! temporary directory: a genuine entry verifies; entries with another CA's certificate, a
//! mismatched id, a foreign identity key, garbage or a non-Ed25519 certificate are refused;
//! and a whole round between a `ServerSession` and three `ClientSession`s whose identity keys
//! are their TLS keys completes, while a server that swaps in an identity key of its own is
//! refused by the honest neighbours.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::collections::BTreeMap;
use std::sync::Arc;

use aegis_secagg::messages::RosterEntry;
use aegis_secagg::{
    ClientConfig, ClientMessage, ClientSession, Error as SecaggError, IdentityKey, Params, Policy,
    QuantizedInput, Refusal, RosterVerifier, ServerSession,
};
use aegis_transport::pki::{self, PkiDir};
use aegis_transport::roster::roster_entry;
use aegis_transport::{CertRosterVerifier, ClientId, ClientIdExt, tls};
use chacha20::ChaCha20Rng;
use rand_core::SeedableRng;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

const IDS: [ClientId; 3] = [ClientId(1), ClientId(2), ClientId(3)];

/// A PKI in a temporary directory: CA, server certificate, clients 1, 2 and 3.
struct TestPki {
    _dir: tempfile::TempDir,
    pki: PkiDir,
}

impl TestPki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pki = pki::init(dir.path(), &pki::default_server_sans(), false).unwrap();
        for id in IDS {
            pki::issue_client(dir.path(), id, false).unwrap();
        }
        TestPki { _dir: dir, pki }
    }

    fn ca(&self) -> Vec<CertificateDer<'static>> {
        tls::load_certs(&self.pki.ca_cert()).unwrap()
    }

    fn verifier(&self) -> CertRosterVerifier {
        CertRosterVerifier::from_pem_file(&self.pki.ca_cert()).unwrap()
    }

    fn cert(&self, id: ClientId) -> Vec<u8> {
        tls::load_certs(&self.pki.client_cert(id)).unwrap()[0].to_vec()
    }

    /// The client's SecAgg identity: the private key of its TLS certificate.
    fn identity(&self, id: ClientId) -> IdentityKey {
        match tls::load_private_key(&self.pki.client_key(id)).unwrap() {
            PrivateKeyDer::Pkcs8(k) => IdentityKey::from_pkcs8(k.secret_pkcs8_der()).unwrap(),
            _ => panic!("the client key is not PKCS#8"),
        }
    }

    fn entry(&self, id: ClientId) -> RosterEntry {
        roster_entry(id, &self.cert(id)).unwrap()
    }

    /// A certificate for client `id` signed by this CA, valid for client authentication, but
    /// with an ECDSA P-256 key.
    fn p256_client_cert(&self, id: ClientId) -> Vec<u8> {
        let ca_key =
            rcgen::KeyPair::from_pem(&std::fs::read_to_string(self.pki.ca_key()).unwrap()).unwrap();
        let issuer = rcgen::Issuer::from_ca_cert_der(&self.ca()[0], ca_key).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = vec![rcgen::SanType::URI(id.uri().try_into().unwrap())];
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, id.common_name());
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        params.signed_by(&key, &issuer).unwrap().der().to_vec()
    }
}

fn refused(verifier: &CertRosterVerifier, entry: &RosterEntry, why: &str) -> String {
    assert!(!verifier.verify(entry), "{why}: accepted");
    let e = verifier.check(entry).unwrap_err().to_string();
    println!("{why}: {e}");
    e
}

#[test]
fn genuine_entry_verifies_and_binds_the_tls_key() {
    let p = TestPki::new();
    let v = p.verifier();
    for id in IDS {
        let entry = p.entry(id);
        assert_eq!(entry.id, id);
        assert_eq!(entry.credential, p.cert(id));
        // The roster identity is the key of the client's TLS key file.
        assert_eq!(entry.identity, p.identity(id).public());
        assert!(v.verify(&entry), "{:?}", v.check(&entry));
    }
    // `new` from DER roots verifies the same.
    let v = CertRosterVerifier::new(&p.ca()).unwrap();
    assert!(v.verify(&p.entry(IDS[0])));
    assert!(CertRosterVerifier::new(&[]).is_err());
}

#[test]
fn another_cas_certificate_is_refused() {
    let p = TestPki::new();
    let other = TestPki::new();
    // A well-formed entry for client 1, certified by another CA.
    let entry = other.entry(IDS[0]);
    assert!(other.verifier().verify(&entry));
    refused(&p.verifier(), &entry, "another CA");
}

#[test]
fn mismatched_id_is_refused() {
    let p = TestPki::new();
    let v = p.verifier();
    // Client 1's certificate and key under id 2, and under an id that is in no certificate.
    for id in [2, 99] {
        let mut entry = p.entry(IDS[0]);
        entry.id = ClientId(id);
        let e = refused(&v, &entry, "mismatched id");
        assert!(e.contains("names client 1"), "{e}");
    }
    // roster_entry refuses to build it in the first place.
    assert!(roster_entry(IDS[1], &p.cert(IDS[0])).is_err());
}

#[test]
fn identity_key_other_than_the_certificates_is_refused() {
    let p = TestPki::new();
    let v = p.verifier();
    let mut entry = p.entry(IDS[0]);
    entry.identity = p.identity(IDS[1]).public();
    let e = refused(&v, &entry, "foreign identity");
    assert!(e.contains("not the certificate's key"), "{e}");
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    entry.identity = IdentityKey::generate(&mut rng).unwrap().public();
    refused(&v, &entry, "fresh identity");
}

#[test]
fn garbage_credential_is_refused() {
    let p = TestPki::new();
    let v = p.verifier();
    let genuine = p.entry(IDS[0]);
    let mut truncated = genuine.credential.clone();
    truncated.truncate(truncated.len() / 2);
    let mut flipped = genuine.credential.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1; // breaks the CA's signature
    let mut trailing = genuine.credential.clone();
    trailing.push(0);
    for (what, bytes) in [
        ("empty", Vec::new()),
        ("garbage", b"not a certificate".to_vec()),
        ("truncated", truncated),
        ("bad signature", flipped),
        ("trailing byte", trailing),
    ] {
        let entry = RosterEntry {
            credential: bytes.clone(),
            ..genuine.clone()
        };
        refused(&v, &entry, what);
        assert!(roster_entry(IDS[0], &bytes).is_err() || what == "bad signature");
    }
}

#[test]
fn non_ed25519_certificate_is_refused() {
    let p = TestPki::new();
    let v = p.verifier();
    let genuine = p.entry(IDS[0]);
    // The server's P-256 certificate: no client name, no clientAuth, no Ed25519 key.
    let server = tls::load_certs(&p.pki.server_cert()).unwrap()[0].to_vec();
    let entry = RosterEntry {
        credential: server.clone(),
        ..genuine.clone()
    };
    refused(&v, &entry, "server certificate");
    assert!(roster_entry(IDS[0], &server).is_err());
    // A CA-issued client certificate naming client 1 with a P-256 key: only the key type is
    // wrong, and that alone refuses it.
    let p256 = p.p256_client_cert(IDS[0]);
    let entry = RosterEntry {
        credential: p256.clone(),
        ..genuine
    };
    let e = refused(&v, &entry, "P-256 client certificate");
    assert!(e.contains("Ed25519"), "{e}");
    let e = roster_entry(IDS[0], &p256).unwrap_err().to_string();
    assert!(e.contains("Ed25519"), "{e}");
}

/// One server and three clients whose identity keys are their TLS keys and whose verifier is
/// a [`CertRosterVerifier`] on the deployment CA.
struct Round {
    server: ServerSession,
    clients: BTreeMap<aegis_secagg::ClientId, (ClientSession, ChaCha20Rng)>,
    inputs: BTreeMap<aegis_secagg::ClientId, QuantizedInput>,
}

fn params() -> Params {
    Params::recommended(3, 8, 1.0, 4, &Policy::default()).unwrap()
}

impl Round {
    fn new(p: &TestPki, roster: Vec<RosterEntry>) -> Round {
        let params = params();
        let verifier: Arc<dyn RosterVerifier> = Arc::new(p.verifier());
        let mut clients = BTreeMap::new();
        let mut inputs = BTreeMap::new();
        for id in IDS {
            let sid = id;
            let config = ClientConfig {
                verifier: verifier.clone(),
                ..ClientConfig::new(sid, Arc::new(p.identity(id)))
            };
            let mut rng = ChaCha20Rng::seed_from_u64(100 + id.0);
            let values: Vec<f32> = (0..params.vector_len)
                .map(|j| ((id.0 as u32 * 7 + j * 3) % 23) as f32 / 11.0 - 1.0)
                .collect();
            let input = QuantizedInput::quantize(&params, &values, id.0 as u32, &mut rng).unwrap();
            let mut c = ClientSession::new(config);
            c.set_input(input.clone()).unwrap();
            clients.insert(sid, (c, rng));
            inputs.insert(sid, input);
        }
        let mut srng = ChaCha20Rng::seed_from_u64(7);
        let server = ServerSession::start(params, roster, &mut srng).unwrap();
        Round {
            server,
            clients,
            inputs,
        }
    }

    /// Delivers the server's messages (through the wire encoding) and returns each client's
    /// result.
    fn deliver(&mut self) -> Vec<(aegis_secagg::ClientId, Result<(), SecaggError>)> {
        let mut results = Vec::new();
        while let Some((to, msg)) = self.server.poll_outbox() {
            let (c, rng) = self.clients.get_mut(&to).unwrap();
            results.push((to, c.handle_bytes(&msg.encode(), rng)));
        }
        results
    }

    /// Hands every client's answers (through the wire encoding) to the server.
    fn collect(&mut self) {
        let mut out: Vec<(aegis_secagg::ClientId, ClientMessage)> = Vec::new();
        for (id, (c, _)) in &mut self.clients {
            while let Some(m) = c.poll_outbox() {
                out.push((*id, m));
            }
        }
        for (from, m) in out {
            self.server.handle_bytes(from, &m.encode()).unwrap();
        }
    }
}

#[test]
fn round_with_certificate_bound_identities() {
    let p = TestPki::new();
    // The server builds the roster from its connected clients' certificates.
    let roster: Vec<RosterEntry> = IDS.iter().map(|&id| p.entry(id)).collect();
    let mut round = Round::new(&p, roster);
    for _ in 0..8 {
        if round.server.is_terminal() {
            break;
        }
        for (id, r) in round.deliver() {
            assert_eq!(r, Ok(()), "client {id} refused an honest message");
        }
        round.collect();
    }
    let agg = round
        .server
        .aggregate()
        .unwrap_or_else(|| panic!("the round did not complete: {:?}", round.server.state()));
    let ids: Vec<_> = round.inputs.keys().copied().collect();
    assert_eq!(agg.survivors, ids);
    let mut weight = 0u64;
    let mut sums = vec![0u32; params().vector_len as usize];
    for input in round.inputs.values() {
        let v = input.values();
        weight += u64::from(v[0]);
        for (s, q) in sums.iter_mut().zip(&v[1..]) {
            *s = s.wrapping_add(*q);
        }
    }
    assert_eq!(agg.weight_sum, weight);
    assert_eq!(agg.sums, sums);
    for (c, _) in round.clients.values() {
        assert!(c.is_terminal());
    }
}

#[test]
fn server_swapping_an_identity_is_refused() {
    let p = TestPki::new();
    // A malicious server keeps client 3's certificate but puts a key of its own in the
    // roster, so it could impersonate client 3 to its neighbours.
    let mut roster: Vec<RosterEntry> = IDS.iter().map(|&id| p.entry(id)).collect();
    let mut rng = ChaCha20Rng::seed_from_u64(66);
    let forged = IdentityKey::generate(&mut rng).unwrap();
    roster[2].identity = forged.public();
    let mut round = Round::new(&p, roster);
    let results = round.deliver();
    assert_eq!(results.len(), 3);
    for (id, r) in results {
        let (c, _) = round.clients.get_mut(&id).unwrap();
        if id.0 == 3 {
            // Client 3 does not find its own key in the roster.
            assert_eq!(r, Err(SecaggError::Refused(Refusal::NotInRoster)));
        } else {
            // The honest neighbours check client 3's credential and refuse.
            assert!(
                matches!(r, Err(SecaggError::Refused(Refusal::BadRoster(_)))),
                "client {id}: {r:?}"
            );
        }
        assert!(c.is_terminal());
        assert!(c.poll_outbox().is_none(), "client {id} sent after refusing");
    }
}
