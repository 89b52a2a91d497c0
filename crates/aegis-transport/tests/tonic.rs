//! `TlsIncoming` under tonic 0.14's own `Server::serve_with_incoming` (feature `tonic`): HTTP/2
//! requests over TLS 1.3 reach the service, which reads the peer's `PeerInfo` (client id)
//! from the request extensions; a certificate-less client gets no response.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::convert::Infallible;
use std::future::Ready;
use std::task::{Context, Poll};
use std::time::Duration;

use aegis_transport::{
    AcceptorConfig, ClientAuth, ClientId, ClientTls, Connector, PeerInfo, ServerTls, TlsIncoming,
    pki,
};

const WAIT: Duration = Duration::from_secs(20);

/// Answers every request with the caller's client id in `x-aegis-client` (or `none`).
#[derive(Clone)]
struct WhoAmI;

impl tower_service::Service<http::Request<tonic::body::Body>> for WhoAmI {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let who = match req.extensions().get::<PeerInfo>() {
            Some(PeerInfo {
                client_id: Some(id),
                ..
            }) => id.to_string(),
            Some(_) => "none".to_string(),
            None => "no-peer-info".to_string(),
        };
        let resp = http::Response::builder()
            .header("content-type", "application/grpc")
            .header("grpc-status", "0")
            .header("x-aegis-client", who)
            .body(tonic::body::Body::empty())
            .unwrap();
        std::future::ready(Ok(resp))
    }
}

/// One HTTP/2 request over a fresh TLS connection; the `x-aegis-client` header of the answer.
async fn ask(connector: &Connector, addr: std::net::SocketAddr) -> Result<String, String> {
    let tls = connector
        .connect(addr, "localhost")
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut h2, conn) = h2::client::handshake(tls)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = http::Request::post("https://localhost/aegis.Test/WhoAmI")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (resp, _) = h2.send_request(req, true).map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(WAIT, resp)
        .await
        .expect("an answer or an error in time")
        .map_err(|e| e.to_string())?;
    assert_eq!(resp.status(), 200);
    Ok(resp
        .headers()
        .get("x-aegis-client")
        .expect("the header")
        .to_str()
        .unwrap()
        .to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonic_serves_tls_incoming_and_sees_the_client_id() {
    let dir = tempfile::tempdir().unwrap();
    let p = pki::init(dir.path(), &pki::default_server_sans(), false).unwrap();
    pki::issue_client(dir.path(), ClientId(11), false).unwrap();
    let server_config = ServerTls::from_pem_files(
        &p.server_cert(),
        &p.server_key(),
        ClientAuth::Required,
        Some(&p.ca_cert()),
    )
    .unwrap()
    .into_config()
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = TlsIncoming::with_config(listener, server_config, AcceptorConfig::default());
    let server =
        tokio::spawn(tonic::transport::Server::builder().serve_with_incoming(WhoAmI, incoming));

    let client = ClientTls::from_pem_files(
        &p.ca_cert(),
        Some((&p.client_cert(ClientId(11)), &p.client_key(ClientId(11)))),
    )
    .unwrap()
    .into_config()
    .unwrap();
    let connector = Connector::new(client).with_timeout(WAIT);
    assert_eq!(ask(&connector, addr).await.unwrap(), "11");
    // A second connection, same answer.
    assert_eq!(ask(&connector, addr).await.unwrap(), "11");

    // Without a client certificate the first request fails (the refusal arrives after the
    // TLS 1.3 handshake), and the service is never called.
    let certless = ClientTls::from_pem_files(&p.ca_cert(), None)
        .unwrap()
        .into_config()
        .unwrap();
    let err = ask(&Connector::new(certless).with_timeout(WAIT), addr)
        .await
        .expect_err("no answer for a certificate-less client");
    eprintln!("certless client: {err}");

    assert!(!server.is_finished(), "the server keeps serving");
    assert_eq!(ask(&connector, addr).await.unwrap(), "11");
    server.abort();
}
