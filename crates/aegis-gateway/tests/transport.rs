//! The gateway's TLS: 1.3 only (an OpenSSL client limited to 1.2 is refused), and client
//! certificates required when configured.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::time::Duration;

use aegis_transport::{ClientAuth, ClientId, pki};
use common::*;

/// `openssl s_client` against the gateway; `None` (after saying why) when openssl is missing
/// outside CI.
async fn s_client(env: &Env, args: &[&str]) -> Option<std::process::Output> {
    let openssl = ["/usr/bin/openssl", "/usr/local/bin/openssl"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let Some(openssl) = openssl else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "openssl is not installed (scripts/test-deps.sh installs it); CI=true requires it"
        );
        eprintln!("SKIPPED: openssl is not installed");
        return None;
    };
    let mut cmd = tokio::process::Command::new(openssl);
    cmd.arg("s_client")
        .args([
            "-connect",
            &env.gw_addr.to_string(),
            "-servername",
            "localhost",
        ])
        .args(["-CAfile", env.pki().ca_cert().to_str().unwrap()])
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    Some(
        tokio::time::timeout(Duration::from_secs(20), cmd.output())
            .await
            .expect("openssl finished in time")
            .expect("running openssl"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_is_refused_and_tls13_negotiated() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::start(
        database("sqlite", dir.path()).await.unwrap(),
        Opts::default(),
    )
    .await;
    if let Some(ok) = s_client(&env, &["-tls1_3", "-brief"]).await {
        let text =
            String::from_utf8_lossy(&ok.stderr).to_string() + &String::from_utf8_lossy(&ok.stdout);
        assert!(
            ok.status.success() && text.contains("TLSv1.3"),
            "TLS 1.3 should connect:\n{text}"
        );
        let refused = s_client(&env, &["-tls1_2", "-brief"]).await.unwrap();
        let text = String::from_utf8_lossy(&refused.stderr).to_string();
        assert!(!refused.status.success(), "TLS 1.2 was accepted:\n{text}");
        assert!(text.contains("alert") || text.contains("version"), "{text}");
    }
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_client_certificates_refuse_clients_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Opts {
        mtls: ClientAuth::Required,
        ..Opts::default()
    };
    let env = Env::start(database("sqlite", dir.path()).await.unwrap(), opts).await;
    // Without a certificate: the handshake (or the first read) fails; no HTTP answer at all.
    let refused = env
        .client(None)
        .request("GET", "/healthz", None, None)
        .await;
    assert!(
        refused.is_err(),
        "a client without a certificate got an answer"
    );
    // A certificate from another CA is refused too.
    let other = tempfile::tempdir().unwrap();
    pki::init(other.path(), &pki::default_server_sans(), false).unwrap();
    let (cert, key) = pki::issue_client(other.path(), ClientId(5), false).unwrap();
    assert!(
        env.client(Some((&cert, &key)))
            .request("GET", "/healthz", None, None)
            .await
            .is_err()
    );
    // A certificate from the deployment CA gets through TLS; the token still decides the role.
    let (cert, key) = pki::issue_client(&env.pki, ClientId(5), false).unwrap();
    let c = env.client(Some((&cert, &key)));
    let ok = c.request("GET", "/healthz", None, None).await.unwrap();
    assert_eq!(ok.status, 200);
    assert_eq!(
        c.request("GET", "/v1/jobs", None, None)
            .await
            .unwrap()
            .status,
        401
    );
    let token = env.admin_token.clone();
    assert_eq!(
        c.request("GET", "/v1/jobs", Some(&token), None)
            .await
            .unwrap()
            .status,
        200
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed() {
    use tokio::io::AsyncReadExt as _;
    let dir = tempfile::tempdir().unwrap();
    let opts = Opts {
        idle_timeout: Duration::from_secs(1),
        ..Opts::default()
    };
    let env = Env::start(database("sqlite", dir.path()).await.unwrap(), opts).await;
    // A TLS connection that never sends a request does not keep its slot.
    let mut silent = env.tls().await;
    let mut buf = [0u8; 512];
    let start = std::time::Instant::now();
    let read = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf))
        .await
        .expect("the gateway closed the idle connection");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "closed too early"
    );
    // Connections that do send requests are served as usual.
    assert_eq!(env.get("/healthz", None).await.status, 200);
    env.stop().await;
}
