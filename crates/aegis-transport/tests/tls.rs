//! TLS over real sockets on 127.0.0.1, with a PKI generated in a temporary directory: mTLS,
//! TLS 1.2 refused, certificate-less and foreign clients refused, optional client
//! authentication, server verification by the client, and the handshake timeout.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aegis_transport::pki::{self, PkiDir};
use aegis_transport::{
    AcceptorConfig, ClientAuth, ClientId, ClientTls, Connector, ServerTls, TlsConn, TlsIncoming,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CLIENT: ClientId = ClientId(7);
/// Bound on every wait in these tests, so a failure never hangs.
const WAIT: Duration = Duration::from_secs(20);

/// A PKI in a temporary directory: CA, server certificate (default SANs), client 7.
struct TestPki {
    _dir: tempfile::TempDir,
    pki: PkiDir,
}

impl TestPki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pki = pki::init(dir.path(), &pki::default_server_sans(), false).unwrap();
        pki::issue_client(dir.path(), CLIENT, false).unwrap();
        TestPki { _dir: dir, pki }
    }

    fn server(&self, auth: ClientAuth) -> Arc<rustls::ServerConfig> {
        ServerTls::from_pem_files(
            &self.pki.server_cert(),
            &self.pki.server_key(),
            auth,
            Some(&self.pki.ca_cert()),
        )
        .unwrap()
        .into_config()
        .unwrap()
    }

    /// A client trusting `self`'s CA, presenting client `id`'s certificate of `certs` (if any).
    fn client(&self, certs: Option<(&TestPki, ClientId)>) -> Connector {
        let identity = certs.map(|(p, id)| (p.pki.client_cert(id), p.pki.client_key(id)));
        let config = ClientTls::from_pem_files(
            &self.pki.ca_cert(),
            identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
        )
        .unwrap()
        .into_config()
        .unwrap();
        Connector::new(config).with_timeout(WAIT)
    }

    fn good_client(&self) -> Connector {
        self.client(Some((self, CLIENT)))
    }
}

async fn listen(
    config: Arc<rustls::ServerConfig>,
    opts: AcceptorConfig,
) -> (TlsIncoming, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (TlsIncoming::with_config(listener, config, opts), addr)
}

/// The next established connection, answering one 4-byte echo; panics if none comes in time.
async fn next_conn(incoming: &mut TlsIncoming) -> TlsConn {
    let mut conn = tokio::time::timeout(WAIT, incoming.accept())
        .await
        .expect("a connection in time")
        .expect("the acceptor is running");
    let mut buf = [0u8; 4];
    conn.read_exact(&mut buf).await.unwrap();
    conn.write_all(&buf).await.unwrap();
    conn.flush().await.unwrap();
    conn
}

/// Write "ping", read 4 bytes back.
async fn round_trip<S>(s: &mut S) -> std::io::Result<[u8; 4]>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    s.write_all(b"ping").await?;
    s.flush().await?;
    let mut buf = [0u8; 4];
    tokio::time::timeout(WAIT, s.read_exact(&mut buf))
        .await
        .expect("the server answers or closes in time")?;
    Ok(buf)
}

/// After a refused attempt: the server still works, and the next connection it delivers is
/// the good client's (so the refused one was never delivered).
async fn good_client_is_next(pki: &TestPki, incoming: &mut TlsIncoming, addr: SocketAddr) {
    let server = async { next_conn(incoming).await.client_id() };
    let client = async {
        let mut tls = pki.good_client().connect(addr, "localhost").await.unwrap();
        round_trip(&mut tls).await.unwrap()
    };
    let (id, echo) = tokio::join!(server, client);
    assert_eq!(&echo, b"ping");
    assert_eq!(id, Some(CLIENT), "the refused connection was delivered");
}

// (a)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_happy_path_server_sees_client_id() {
    let pki = TestPki::new();
    let (mut incoming, addr) =
        listen(pki.server(ClientAuth::Required), AcceptorConfig::default()).await;
    let server = tokio::spawn(async move {
        let conn = next_conn(&mut incoming).await;
        (
            conn.client_id(),
            conn.alpn_protocol().map(<[u8]>::to_vec),
            conn.peer_certificates().map(<[_]>::len),
            conn.remote_addr(),
        )
    });
    let mut tls = pki.good_client().connect(addr, "localhost").await.unwrap();
    let local = tls.get_ref().0.local_addr().unwrap();
    {
        let session = tls.get_ref().1;
        assert_eq!(
            session.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        assert_eq!(session.alpn_protocol(), Some(&b"h2"[..]));
    }
    assert_eq!(&round_trip(&mut tls).await.unwrap(), b"ping");
    let (id, alpn, chain_len, remote) = server.await.unwrap();
    assert_eq!(id, Some(CLIENT));
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(chain_len, Some(1));
    assert_eq!(remote, local);

    // The IP-address SANs work too.
    let (mut incoming, addr) =
        listen(pki.server(ClientAuth::Required), AcceptorConfig::default()).await;
    for name in ["127.0.0.1", "localhost"] {
        let (id, echo) = tokio::join!(
            async { next_conn(&mut incoming).await.client_id() },
            async {
                let mut tls = pki.good_client().connect(addr, name).await.unwrap();
                round_trip(&mut tls).await.unwrap()
            }
        );
        assert_eq!((id, &echo), (Some(CLIENT), b"ping"), "server name {name}");
    }
}

/// Run `openssl s_client` against `addr` with `args`; `None` (after printing why) when openssl
/// is missing outside CI; a failure when it is missing in CI.
async fn s_client(addr: SocketAddr, pki: &TestPki, args: &[&str]) -> Option<std::process::Output> {
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
    let mut cmd = tokio::process::Command::new(openssl);
    cmd.arg("s_client")
        .args(["-connect", &addr.to_string(), "-servername", "localhost"])
        .args(["-CAfile", pki.pki.ca_cert().to_str().unwrap()])
        .args(["-cert", pki.pki.client_cert(CLIENT).to_str().unwrap()])
        .args(["-key", pki.pki.client_key(CLIENT).to_str().unwrap()])
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

// (b) with OpenSSL, the reference client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_openssl_client_refused() {
    let pki = TestPki::new();
    let (mut incoming, addr) =
        listen(pki.server(ClientAuth::Required), AcceptorConfig::default()).await;

    // Control: the same command with TLS 1.3 gets a session, so a failure below is the
    // protocol version and not the command line.
    let Some(ok) = s_client(addr, &pki, &["-tls1_3"]).await else {
        return;
    };
    let ok_text = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success() && ok_text.contains("TLSv1.3"),
        "openssl -tls1_3 should connect: {:?}\n{ok_text}\n{}",
        ok.status,
        String::from_utf8_lossy(&ok.stderr)
    );
    let conn = tokio::time::timeout(WAIT, incoming.accept())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(conn.client_id(), Some(CLIENT));
    drop(conn);

    let out = s_client(addr, &pki, &["-tls1_2"]).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "openssl s_client -tls1_2 must fail:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("New, (NONE), Cipher is (NONE)") && !stdout.contains("New, TLSv1.2"),
        "a TLS 1.2 session was established:\n{stdout}"
    );
    assert!(
        stderr.contains("alert protocol version") || stderr.contains("alert number 70"),
        "expected a protocol_version alert:\n{stderr}"
    );
    good_client_is_next(&pki, &mut incoming, addr).await;
}

// (b) with a rustls client that speaks only TLS 1.2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_rustls_client_refused() {
    let pki = TestPki::new();
    let (mut incoming, addr) =
        listen(pki.server(ClientAuth::Required), AcceptorConfig::default()).await;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(aegis_transport::tls::load_certs(&pki.pki.ca_cert()).unwrap()[0].clone())
        .unwrap();
    let chain = aegis_transport::tls::load_certs(&pki.pki.client_cert(CLIENT)).unwrap();
    let key = aegis_transport::tls::load_private_key(&pki.pki.client_key(CLIENT)).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let err = Connector::new(Arc::new(config))
        .connect(addr, "localhost")
        .await
        .expect_err("a TLS 1.2-only client must be refused");
    let msg = err.to_string();
    assert!(
        msg.contains("TLS handshake with") && msg.to_lowercase().contains("protocolversion"),
        "{msg}"
    );
    good_client_is_next(&pki, &mut incoming, addr).await;
}

// (c)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_required_refuses_certless_client_before_any_data() {
    let pki = TestPki::new();
    let (mut incoming, addr) =
        listen(pki.server(ClientAuth::Required), AcceptorConfig::default()).await;
    // With TLS 1.3 the client's side of the handshake may complete; the refusal arrives with
    // the first read. Either way no data may flow.
    match pki.client(None).connect(addr, "localhost").await {
        Err(e) => eprintln!("refused during the handshake: {e}"),
        Ok(mut tls) => {
            let r = round_trip(&mut tls).await;
            assert!(
                r.is_err(),
                "the server answered a certificate-less client: {r:?}"
            );
            let msg = r.unwrap_err().to_string();
            assert!(msg.to_lowercase().contains("certificate"), "{msg}");
        }
    }
    good_client_is_next(&pki, &mut incoming, addr).await;
}

// (d)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_cert_from_another_ca_refused() {
    let pki = TestPki::new();
    let other = TestPki::new();
    let (mut incoming, addr) =
        listen(pki.server(ClientAuth::Required), AcceptorConfig::default()).await;
    match pki
        .client(Some((&other, CLIENT)))
        .connect(addr, "localhost")
        .await
    {
        Err(e) => eprintln!("refused during the handshake: {e}"),
        Ok(mut tls) => {
            let r = round_trip(&mut tls).await;
            assert!(r.is_err(), "the server answered a foreign client: {r:?}");
        }
    }
    // Optional client authentication still verifies a certificate that is presented.
    let (mut opt_incoming, opt_addr) =
        listen(pki.server(ClientAuth::Optional), AcceptorConfig::default()).await;
    match pki
        .client(Some((&other, CLIENT)))
        .connect(opt_addr, "localhost")
        .await
    {
        Err(e) => eprintln!("refused during the handshake: {e}"),
        Ok(mut tls) => {
            let r = round_trip(&mut tls).await;
            assert!(
                r.is_err(),
                "optional auth accepted a foreign certificate: {r:?}"
            );
        }
    }
    good_client_is_next(&pki, &mut incoming, addr).await;
    good_client_is_next(&pki, &mut opt_incoming, opt_addr).await;
}

// (e)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_accepts_certless_client_without_identity() {
    let pki = TestPki::new();
    let (mut incoming, addr) =
        listen(pki.server(ClientAuth::Optional), AcceptorConfig::default()).await;
    let (conn, echo) = tokio::join!(next_conn(&mut incoming), async {
        let mut tls = pki.client(None).connect(addr, "localhost").await.unwrap();
        round_trip(&mut tls).await.unwrap()
    });
    assert_eq!(&echo, b"ping");
    assert_eq!(conn.client_id(), None);
    assert!(conn.peer_certificates().is_none());
    // A client with a certificate is identified.
    good_client_is_next(&pki, &mut incoming, addr).await;

    // `require_client_id` drops the certificate-less client at the acceptor.
    let opts = AcceptorConfig {
        require_client_id: true,
        ..AcceptorConfig::default()
    };
    let (mut incoming, addr) = listen(pki.server(ClientAuth::Optional), opts).await;
    let mut tls = pki.client(None).connect(addr, "localhost").await.unwrap();
    assert!(round_trip(&mut tls).await.is_err());
    good_client_is_next(&pki, &mut incoming, addr).await;
}

// (f)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_refuses_wrong_name_and_foreign_server() {
    let pki = TestPki::new();
    let other = TestPki::new();
    let (mut incoming, addr) =
        listen(pki.server(ClientAuth::Required), AcceptorConfig::default()).await;

    let err = pki
        .good_client()
        .connect(addr, "aegis.example")
        .await
        .expect_err("a certificate for localhost is not valid for aegis.example");
    assert!(err.to_string().contains("not valid for name"), "{err}");

    let err = pki
        .good_client()
        .connect(addr, "192.0.2.1")
        .await
        .expect_err("nor for another IP address");
    assert!(err.to_string().contains("not valid for name"), "{err}");

    // A client that trusts another CA refuses this server.
    let err = other
        .client(Some((&pki, CLIENT)))
        .connect(addr, "localhost")
        .await
        .expect_err("the server certificate is from an unknown CA");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    // Even a CA with the same name (but another key) is told apart.
    let ca_der = aegis_transport::tls::load_certs(&pki.pki.ca_cert()).unwrap();
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der[0]).unwrap();
    let cn = ca
        .subject()
        .iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap();
    assert!(cn.starts_with("AEGIS development CA "), "{cn}");
    let same_name = aegis_transport::pki::Ca::generate(cn).unwrap();
    let roots = vec![same_name.cert_der().clone()];
    let config = ClientTls {
        roots,
        identity: None,
    }
    .into_config()
    .unwrap();
    let err = Connector::new(config)
        .connect(addr, "localhost")
        .await
        .expect_err("a look-alike CA is not the CA");
    assert!(
        err.to_string().contains("invalid peer certificate"),
        "{err}"
    );

    assert!(matches!(
        pki.good_client().connect(addr, "not a name!").await,
        Err(aegis_transport::Error::InvalidServerName(_))
    ));
    good_client_is_next(&pki, &mut incoming, addr).await;
}

// (g)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_time_out_without_blocking_others() {
    let pki = TestPki::new();
    let timeout = Duration::from_millis(1500);
    let opts = AcceptorConfig {
        handshake_timeout: timeout,
        max_handshakes: 4,
        ..AcceptorConfig::default()
    };
    let (mut incoming, addr) = listen(pki.server(ClientAuth::Required), opts).await;
    let start = Instant::now();
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    // A well-behaved client is served while the silent ones are still being waited for.
    good_client_is_next(&pki, &mut incoming, addr).await;
    assert!(
        start.elapsed() < timeout,
        "the good client waited for the silent ones ({:?})",
        start.elapsed()
    );
    // Each silent client is disconnected after the timeout, having received nothing.
    for mut s in silent {
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("the silent connection is closed by the server")
            .unwrap_or(0);
        assert_eq!(
            n, 0,
            "the server sent data to a client that never said hello"
        );
    }
    let waited = start.elapsed();
    assert!(waited >= timeout, "closed before the timeout ({waited:?})");
    assert!(
        waited < timeout + Duration::from_secs(5),
        "closed late ({waited:?})"
    );
    // Nothing was delivered for them.
    good_client_is_next(&pki, &mut incoming, addr).await;
}

// (g) the bound on concurrent handshakes holds, and the timeout frees a slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_slots_are_bounded_and_freed_by_the_timeout() {
    let pki = TestPki::new();
    let timeout = Duration::from_millis(600);
    let opts = AcceptorConfig {
        handshake_timeout: timeout,
        max_handshakes: 1,
        ..AcceptorConfig::default()
    };
    let (mut incoming, addr) = listen(pki.server(ClientAuth::Required), opts).await;
    let start = Instant::now();
    let _silent = TcpStream::connect(addr).await.unwrap();
    // Let the acceptor take the silent connection into its only slot.
    tokio::time::sleep(Duration::from_millis(100)).await;
    good_client_is_next(&pki, &mut incoming, addr).await;
    assert!(
        start.elapsed() >= timeout,
        "the good client got a slot while the only one was taken ({:?})",
        start.elapsed()
    );
}

/// Dropping the `TlsIncoming` closes the listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_incoming_stops_accepting() {
    let pki = TestPki::new();
    let (incoming, addr) =
        listen(pki.server(ClientAuth::Required), AcceptorConfig::default()).await;
    assert_eq!(incoming.local_addr().unwrap(), addr);
    drop(incoming);
    // The accept task is aborted asynchronously; give it a moment.
    let mut refused = false;
    for _ in 0..50 {
        if TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        refused,
        "the listener is still open after the TlsIncoming was dropped"
    );
}

/// `TlsIncoming` is a `Stream` of `io::Result<TlsConn>`, the shape tonic's
/// `serve_with_incoming` takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incoming_is_a_stream_of_io_results() {
    fn assert_stream<S>(_: &S)
    where
        S: tokio_stream::Stream<Item = std::io::Result<TlsConn>> + Send + Unpin + 'static,
    {
    }
    fn assert_io<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static>() {}
    assert_io::<TlsConn>();

    let pki = TestPki::new();
    let (mut incoming, addr) =
        listen(pki.server(ClientAuth::Required), AcceptorConfig::default()).await;
    assert_stream(&incoming);
    let next = std::future::poll_fn(|cx| {
        tokio_stream::Stream::poll_next(std::pin::Pin::new(&mut incoming), cx)
    });
    let connector = pki.good_client();
    let (conn, _tls) = tokio::join!(next, connector.connect(addr, "localhost"));
    assert_eq!(conn.unwrap().unwrap().client_id(), Some(CLIENT));
}

// Open connections are bounded: past `max_connections`, a new client's handshake waits until
// an established connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_connections_are_bounded_and_freed_on_close() {
    let pki = TestPki::new();
    let opts = AcceptorConfig {
        max_connections: 2,
        ..AcceptorConfig::default()
    };
    let (mut incoming, addr) = listen(pki.server(ClientAuth::Required), opts).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let connector = pki.good_client();
        let client = async {
            let mut tls = connector.connect(addr, "localhost").await.unwrap();
            assert_eq!(&round_trip(&mut tls).await.unwrap(), b"ping");
            tls
        };
        held.push(tokio::join!(next_conn(&mut incoming), client));
    }
    // A third client gets no handshake while both connections are open.
    let third = tokio::spawn({
        let connector = pki.good_client();
        async move {
            let mut tls = connector.connect(addr, "localhost").await.unwrap();
            round_trip(&mut tls).await
        }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !third.is_finished(),
        "a third connection was served past the bound"
    );
    // Closing one (the server side drops it) lets the third through.
    drop(held.pop());
    let conn = next_conn(&mut incoming).await;
    assert_eq!(conn.client_id(), Some(CLIENT));
    assert_eq!(&third.await.unwrap().unwrap(), b"ping");
}
