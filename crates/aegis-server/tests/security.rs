//! What the server must refuse, over real TLS 1.3 sockets on 127.0.0.1: a client without a
//! certificate when mTLS is required, a certificate from another CA, wrong or missing bearer
//! tokens and a token used under another client's id, a client signing secure aggregation
//! with a key other than its certificate's, and TLS 1.2. After each refusal the server goes on
//! serving honest clients, and a refused client's update never reaches the model.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use aegis_client::Model;
use aegis_client::net::{ClientOptions, Exit};
use aegis_proto::v1::client_frame::Kind as ClientKind;
use aegis_proto::v1::federation_client::FederationClient;
use aegis_proto::v1::server_frame::Kind as ServerKind;
use aegis_proto::v1::{ClientFrame, Hello, RoundEnd};
use aegis_secagg::{
    ClientConfig, ClientId, ClientSession, IdentityKey, ServerMessage, TrustRoster,
};
use aegis_server::{JobOutcome, RoundMetrics, TokenTable};
use aegis_transport::pki;
use aegis_transport::{ClientAuth, ClientTls};
use chacha20::ChaCha20Rng;
use common::*;
use rand_core::SeedableRng;
use tokio::io::AsyncReadExt as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use zeroize::Zeroizing;

fn os_rng() -> ChaCha20Rng {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).unwrap();
    ChaCha20Rng::from_seed(seed)
}

/// A freshly generated SecAgg identity key.
fn fresh_identity() -> IdentityKey {
    IdentityKey::generate(&mut os_rng()).unwrap()
}

/// The one round of `outcome` completed with exactly `honest` in the aggregate, and the
/// global model moved by their weighted mean (within the quantization bound).
fn assert_round_of(fed: &Fed, outcome: &JobOutcome, initial: &Model, honest: &[u64]) {
    assert!(outcome.finished);
    let h = &outcome.state.history;
    assert_eq!(h.len(), 1);
    let r = &h[0];
    assert!(r.completed, "{r:?}");
    assert_eq!(r.survived, honest.len() as u32, "{r:?}");
    let total: u64 = honest.iter().map(|&i| u64::from(weight(i))).sum();
    assert_eq!(r.weight_sum, total, "{r:?}");
    let m = initial.num_params();
    let mut mean = vec![0.0f64; m];
    for &i in honest {
        for (acc, d) in mean.iter_mut().zip(delta(i, m)) {
            *acc += f64::from(weight(i)) * f64::from(d) / total as f64;
        }
    }
    let bound = r.quantization_error.unwrap();
    assert!(bound < 1e-3, "quantization bound {bound}");
    let got = checkpoint(fed, outcome).flatten();
    for ((g, init), mu) in got.iter().zip(initial.flatten()).zip(&mean) {
        let want = f64::from(init) + mu;
        assert!(
            (f64::from(*g) - want).abs() <= bound + 1e-5,
            "{g} vs {want} (bound {bound})"
        );
    }
}

/// Runs honest certificate clients `ids` to the end of the job and checks they took part.
async fn run_honest(fed: &Fed, addr: SocketAddr, ids: &[u64], m: usize) {
    let clients: Vec<_> = ids
        .iter()
        .map(|&i| spawn_client(fed.client(addr, i), trainer(i, m)))
        .collect();
    for c in clients {
        let s = join_client(c).await.unwrap();
        assert_eq!(s.exit, Exit::JobFinished);
        assert!(
            s.rounds.iter().all(|r| r.completed && r.included),
            "{:?}",
            s.rounds
        );
    }
}

/// Options for a client presenting no certificate (server verified against the CA), with
/// `token` if any, signing secure aggregation with `identity`.
fn certless(
    fed: &Fed,
    addr: SocketAddr,
    id: u64,
    token: Option<String>,
    identity: IdentityKey,
) -> ClientOptions {
    ClientOptions {
        server: addr.to_string(),
        server_name: "localhost".into(),
        tls: ClientTls::from_pem_files(&fed.pki.ca_cert(), None)
            .unwrap()
            .into_config()
            .unwrap(),
        token: token.map(Zeroizing::new),
        id: ClientId(id),
        identity: Arc::new(identity),
        verifier: Arc::new(TrustRoster),
        max_message: aegis_client::net::DEFAULT_MAX_MESSAGE,
        connect_timeout: Duration::from_secs(10),
        drop_at: None,
    }
}

/// Connects with the TLS configuration of `opts` and reads: the server's verdict on the client
/// certificate (TLS 1.3 sends it after the client's side of the handshake). Returns the error.
async fn tls_refusal(opts: &ClientOptions) -> String {
    let connector = aegis_transport::Connector::new(Arc::clone(&opts.tls));
    match connector
        .connect(opts.server.as_str(), &opts.server_name)
        .await
    {
        Err(e) => e.to_string(),
        Ok(mut tls) => {
            let mut buf = [0u8; 64];
            match tokio::time::timeout(WAIT, tls.read(&mut buf))
                .await
                .expect("the server answered in time")
            {
                Err(e) => e.to_string(),
                Ok(n) => panic!("the server accepted the connection (read {n} bytes)"),
            }
        }
    }
}

/// The SDK's error for a connection the server refused at the TLS layer. (It reports only
/// tonic's "transport error": the TLS alert that says why is in the status' source chain,
/// which `aegis_client::net` does not include in its message.)
fn assert_sdk_connection_error(err: &str) {
    assert!(
        err.starts_with("connection:") && err.contains("transport error"),
        "expected a refused connection: {err}"
    );
}

/// Runs a client expected to be refused; returns the error text.
async fn refused(opts: ClientOptions, m: usize) -> String {
    let id = opts.id.0;
    match join_client(spawn_client(opts, trainer(id, m))).await {
        Ok(s) => panic!("client {id} was accepted: {s:?}"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_refuses_a_client_without_a_certificate() {
    let fed = Fed::new(3);
    let model = Model::softmax_regression(4, 3).unwrap();
    let m = model.num_params();
    let server = fed
        .start(fed.config(job("no-cert", 1, 3), model.clone()))
        .await;

    // TLS 1.3 lets the client finish its side of the handshake before the server has seen
    // (the absence of) its certificate: the refusal arrives on the first request.
    let opts = certless(&fed, server.addr, 1, None, fresh_identity());
    let alert = tls_refusal(&opts).await;
    assert!(
        alert.contains("received fatal alert: CertificateRequired"),
        "expected a certificate_required alert: {alert}"
    );
    let err = refused(opts, m).await;
    assert_sdk_connection_error(&err);

    // The server goes on serving.
    run_honest(&fed, server.addr, &[1, 2, 3], m).await;
    let outcome = server.outcome().await.unwrap();
    assert_round_of(&fed, &outcome, &model, &[1, 2, 3]);
    assert_eq!(outcome.state.history[0].sampled, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_refuses_a_certificate_from_another_ca() {
    let fed = Fed::new(3);
    let other = pki::init(
        &fed.dir.path().join("other-pki"),
        &pki::default_server_sans(),
        false,
    )
    .unwrap();
    pki::issue_client(other.dir(), aegis_transport::ClientId(1), false).unwrap();
    let model = Model::softmax_regression(4, 3).unwrap();
    let m = model.num_params();
    let server = fed
        .start(fed.config(job("other-ca", 1, 3), model.clone()))
        .await;

    // A certificate naming client 1, issued by another CA (the server itself is verified
    // against the right CA, so only the client certificate is wrong).
    let cid = aegis_transport::ClientId(1);
    let opts = ClientOptions::with_certificate(
        &server.addr.to_string(),
        &fed.pki.ca_cert(),
        &other.client_cert(cid),
        &other.client_key(cid),
        ClientId(1),
    )
    .unwrap();
    let alert = tls_refusal(&opts).await;
    assert!(
        alert.contains("received fatal alert: UnknownCA"),
        "expected an unknown_ca alert: {alert}"
    );
    let err = refused(opts, m).await;
    assert_sdk_connection_error(&err);

    run_honest(&fed, server.addr, &[1, 2, 3], m).await;
    let outcome = server.outcome().await.unwrap();
    assert_round_of(&fed, &outcome, &model, &[1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_authenticate_and_bad_tokens_are_refused() {
    let fed = Fed::new(0);
    let model = Model::softmax_regression(4, 3).unwrap();
    let m = model.num_params();
    let path = fed.dir.path().join("tokens.json");
    let identities: Vec<IdentityKey> = (0..3).map(|_| fresh_identity()).collect();
    let tokens: Vec<String> = identities
        .iter()
        .zip(1u64..)
        .map(|(k, id)| TokenTable::issue(&path, ClientId(id), &k.public()).unwrap())
        .collect();
    let mut config = fed.config(job("tokens", 1, 3), model.clone());
    config.tls = fed.server_tls(ClientAuth::Off);
    config.tokens = Some(TokenTable::load(&path).unwrap());
    assert_eq!(config.tokens.as_ref().unwrap().len(), 3);
    let server = fed.start(config).await;
    let addr = server.addr;

    // A token nobody issued.
    let err = refused(
        certless(
            &fed,
            addr,
            1,
            Some(format!(
                "{}{}",
                aegis_server::auth::TOKEN_PREFIX,
                "A".repeat(43)
            )),
            fresh_identity(),
        ),
        m,
    )
    .await;
    assert!(err.contains("Unauthenticated"), "wrong token: {err}");
    assert!(
        err.contains("unknown or revoked token"),
        "wrong token: {err}"
    );
    // No token (and no certificate).
    let err = refused(certless(&fed, addr, 1, None, fresh_identity()), m).await;
    assert!(err.contains("Unauthenticated"), "no token: {err}");
    // Client 1's token, by a client that calls itself client 2: the server authenticates it
    // as client 1 (its Welcome says so) and the SDK refuses to go on as someone else. (This
    // runs before the honest clients connect: a second connection of client 1 would replace
    // the honest one.)
    let err = refused(
        certless(&fed, addr, 2, Some(tokens[0].clone()), fresh_identity()),
        m,
    )
    .await;
    assert!(
        err.starts_with("protocol:"),
        "token of another client: {err}"
    );
    assert!(
        err.contains("authenticated this client as 1, expected 2"),
        "token of another client: {err}"
    );

    // The three token clients complete a round.
    let clients: Vec<_> = identities
        .into_iter()
        .zip(tokens)
        .zip(1u64..)
        .map(|((k, t), id)| spawn_client(certless(&fed, addr, id, Some(t), k), trainer(id, m)))
        .collect();
    for c in clients {
        let s = join_client(c).await.unwrap();
        assert_eq!(s.exit, Exit::JobFinished);
        assert_eq!(s.rounds.len(), 1);
        assert!(s.rounds[0].completed && s.rounds[0].included);
    }
    let outcome = server.outcome().await.unwrap();
    assert_round_of(&fed, &outcome, &model, &[1, 2, 3]);
}

/// Client 2 authenticates with its own certificate but its SDK is given another SecAgg key.
/// The SDK notices first: the roster the server sends binds client 2 to its certificate's key,
/// so its session refuses `Setup` and it sends nothing; the server drops it when the
/// advertisement stage's deadline passes. The round completes without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_signing_with_a_key_not_in_its_certificate_is_left_out() {
    const IMPOSTOR: u64 = 2;
    let fed = Fed::new(4);
    let model = Model::softmax_regression(4, 3).unwrap();
    let m = model.num_params();
    let mut config = fed.config(job("impostor", 1, 4), model.clone());
    // The impostor never answers: keep the deadline it is dropped at short.
    config.deadlines.stage = Duration::from_secs(3);
    let server = fed.start(config).await;
    let clients: Vec<_> = (1..=4)
        .map(|i| {
            let mut opts = fed.client(server.addr, i);
            if i == IMPOSTOR {
                opts.identity = Arc::new(fresh_identity());
            }
            (i, spawn_client(opts, trainer(i, m)))
        })
        .collect();
    let outcome = server.outcome().await.unwrap();
    for (i, c) in clients {
        let s = join_client(c).await.unwrap();
        assert_eq!(s.exit, Exit::JobFinished);
        assert_eq!(s.rounds.len(), 1);
        assert!(s.rounds[0].completed);
        assert_eq!(s.rounds[0].included, i != IMPOSTOR, "client {i}");
    }
    let r = &outcome.state.history[0];
    assert_eq!((r.sampled, r.survived), (4, 3), "{r:?}");
    assert_eq!(r.dropped, [1, 0, 0, 0, 0], "{r:?}");
    assert_round_of(&fed, &outcome, &model, &[1, 3, 4]);
}

/// A client that authenticates with its own valid certificate but signs its SecAgg
/// advertisement with `forged`: it rewrites its own entry of the roster in `Setup` to the
/// forged key, so its (otherwise honest) session signs with it instead of refusing. Returns
/// the `RoundEnd`s it received.
async fn forging_client(opts: ClientOptions, forged: IdentityKey) -> Vec<RoundEnd> {
    let me = opts.id;
    let forged = Arc::new(forged);
    let channel = aegis_client::net::connect(&opts).await.unwrap();
    let mut grpc = FederationClient::new(channel);
    let (tx, rx) = mpsc::channel::<ClientFrame>(16);
    tx.send(ClientFrame {
        kind: Some(ClientKind::Hello(Hello {
            protocol: aegis_proto::PROTOCOL,
            agent: "forger".into(),
        })),
    })
    .await
    .unwrap();
    let mut inbound = grpc
        .join(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut rng = os_rng();
    let mut session = None;
    let mut ends = Vec::new();
    while let Some(frame) = inbound.message().await.unwrap() {
        match frame.kind {
            Some(ServerKind::Welcome(w)) => assert_eq!(w.client_id, me.0),
            Some(ServerKind::Secagg(bytes)) => {
                let msg = match ServerMessage::decode(&bytes).unwrap() {
                    ServerMessage::Setup {
                        session: sid,
                        params,
                        mut roster,
                    } => {
                        for e in roster.iter_mut().filter(|e| e.id == me) {
                            e.identity = forged.public();
                        }
                        session = Some(ClientSession::new(ClientConfig {
                            verifier: Arc::new(TrustRoster),
                            ..ClientConfig::new(me, Arc::clone(&forged))
                        }));
                        ServerMessage::Setup {
                            session: sid,
                            params,
                            roster,
                        }
                    }
                    other => other,
                };
                let Some(s) = session.as_mut() else { continue };
                // After the advertisement the server sends it nothing but the end.
                s.handle(msg, &mut rng).unwrap();
                while let Some(out) = s.poll_outbox() {
                    tx.send(ClientFrame {
                        kind: Some(ClientKind::Secagg(out.encode().into())),
                    })
                    .await
                    .unwrap();
                }
            }
            Some(ServerKind::End(end)) => ends.push(end),
            _ => {}
        }
    }
    ends
}

/// The server itself checks advertisement signatures against the key in the client's
/// certificate: a client that does send an advertisement signed with another key is dropped at
/// the end of the advertisement stage (without waiting for any deadline), and its update never
/// reaches the model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_drops_an_advertisement_signed_with_another_key() {
    const FORGER: u64 = 2;
    let fed = Fed::new(4);
    let model = Model::softmax_regression(4, 3).unwrap();
    let m = model.num_params();
    let mut config = fed.config(job("forger", 1, 4), model.clone());
    config.deadlines.stage = Duration::from_secs(60);
    let server = fed.start(config).await;
    let forger = tokio::spawn(forging_client(
        fed.client(server.addr, FORGER),
        fresh_identity(),
    ));
    let honest: Vec<_> = [1, 3, 4]
        .into_iter()
        .map(|i| spawn_client(fed.client(server.addr, i), trainer(i, m)))
        .collect();
    let outcome = server.outcome().await.unwrap();
    let ends = tokio::time::timeout(WAIT, forger).await.unwrap().unwrap();
    assert_eq!(ends.len(), 1);
    assert!(ends[0].completed && !ends[0].included, "{ends:?}");
    for c in honest {
        let s = join_client(c).await.unwrap();
        assert!(s.rounds.iter().all(|r| r.completed && r.included));
    }
    let r: &RoundMetrics = &outcome.state.history[0];
    assert_eq!((r.sampled, r.survived), (4, 3), "{r:?}");
    assert_eq!(r.dropped, [1, 0, 0, 0, 0], "{r:?}");
    assert!(r.seconds < 30.0, "round took {} s: {r:?}", r.seconds);
    assert_round_of(&fed, &outcome, &model, &[1, 3, 4]);
}

/// `openssl s_client` against the server with `args`; `None` (after printing why) when openssl
/// is missing outside CI; a failure when it is missing in CI.
async fn s_client(fed: &Fed, addr: SocketAddr, args: &[&str]) -> Option<std::process::Output> {
    let openssl = ["/usr/bin/openssl", "/usr/local/bin/openssl"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .map(Path::to_path_buf)
        .or_else(|| {
            let out = std::process::Command::new("sh")
                .args(["-c", "command -v openssl"])
                .output()
                .ok()?;
            let p = String::from_utf8(out.stdout).ok()?.trim().to_string();
            (!p.is_empty()).then(|| p.into())
        });
    let Some(openssl) = openssl else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!(
                "openssl is not installed (scripts/test-deps.sh installs it); CI=true requires it"
            );
        }
        eprintln!("SKIPPED: openssl is not installed; the openssl TLS 1.2 check did not run");
        return None;
    };
    let id = aegis_transport::ClientId(1);
    let mut cmd = tokio::process::Command::new(openssl);
    cmd.arg("s_client")
        .args(["-connect", &addr.to_string(), "-servername", "localhost"])
        .args(["-CAfile", fed.pki.ca_cert().to_str().unwrap()])
        .args(["-cert", fed.pki.client_cert(id).to_str().unwrap()])
        .args(["-key", fed.pki.client_key(id).to_str().unwrap()])
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    Some(
        tokio::time::timeout(WAIT, cmd.output())
            .await
            .expect("openssl s_client finished in time")
            .expect("running openssl"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_refuses_tls_1_2() {
    let fed = Fed::new(3);
    let model = Model::softmax_regression(4, 3).unwrap();
    let m = model.num_params();
    let server = fed
        .start(fed.config(job("tls12", 1, 3), model.clone()))
        .await;

    // Control: the same command with TLS 1.3 gets a session, so a failure below is the
    // protocol version and not the command line.
    if let Some(ok) = s_client(&fed, server.addr, &["-tls1_3"]).await {
        let ok_text = String::from_utf8_lossy(&ok.stdout);
        assert!(
            ok.status.success() && ok_text.contains("TLSv1.3"),
            "openssl -tls1_3 should connect: {:?}\n{ok_text}\n{}",
            ok.status,
            String::from_utf8_lossy(&ok.stderr)
        );

        let out = s_client(&fed, server.addr, &["-tls1_2"]).await.unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "openssl s_client -tls1_2 must fail:\n{stdout}\n{stderr}"
        );
        // (openssl prints "Protocol  : TLSv1.2" in its SSL-Session block even when no session
        // was established, as here: what it asked for. "New, (NONE), Cipher is (NONE)" is the
        // line that says no session exists.)
        assert!(
            stdout.contains("New, (NONE), Cipher is (NONE)") && !stdout.contains("New, TLSv1.2"),
            "a TLS 1.2 session was established:\n{stdout}"
        );
        assert!(
            stderr.contains("alert protocol version") || stderr.contains("alert number 70"),
            "expected a protocol_version alert:\n{stderr}"
        );
    }

    // The server goes on serving.
    run_honest(&fed, server.addr, &[1, 2, 3], m).await;
    let outcome = server.outcome().await.unwrap();
    assert_round_of(&fed, &outcome, &model, &[1, 2, 3]);
}
