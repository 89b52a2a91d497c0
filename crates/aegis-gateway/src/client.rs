//! A small HTTPS client of the gateway's API (TLS 1.3 through `aegis-transport`, HTTP/1.1),
//! for `aegis demo` and scripts written in Rust.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use aegis_transport::Connector;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};

use crate::error::{Error, Result};

/// An API client: one TLS connection per request, bearer token on every request.
pub struct ApiClient {
    connector: Connector,
    addr: SocketAddr,
    server_name: String,
    token: zeroize::Zeroizing<String>,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("addr", &self.addr)
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// An answer.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Body.
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON.
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
            .map_err(|e| Error::Io(format!("the gateway's answer is not JSON: {e}")))
    }
}

impl ApiClient {
    /// A client of the gateway at `addr` whose certificate names `server_name`, trusting
    /// `tls`'s roots.
    pub fn new(
        tls: Arc<rustls::ClientConfig>,
        addr: SocketAddr,
        server_name: &str,
        token: zeroize::Zeroizing<String>,
    ) -> ApiClient {
        let mut tls = Arc::unwrap_or_clone(tls);
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        ApiClient {
            connector: Connector::new(Arc::new(tls)).with_timeout(Duration::from_secs(10)),
            addr,
            server_name: server_name.to_string(),
            token,
        }
    }

    /// Sends a request with an optional JSON body.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        json: Option<&serde_json::Value>,
    ) -> Result<Answer> {
        let tls = self.connector.connect(self.addr, &self.server_name).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| Error::Io(format!("HTTP: {e}")))?;
        let conn = tokio::spawn(conn);
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.server_name.as_str())
            .header("authorization", format!("Bearer {}", self.token.as_str()));
        let body = match json {
            Some(v) => {
                req = req.header("content-type", "application/json");
                Bytes::from(v.to_string())
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(body))
            .map_err(|e| Error::Io(format!("HTTP request: {e}")))?;
        let res = sender
            .send_request(req)
            .await
            .map_err(|e| Error::Io(format!("HTTP: {e}")))?;
        let status = res.status().as_u16();
        let body = res
            .into_body()
            .collect()
            .await
            .map_err(|e| Error::Io(format!("HTTP body: {e}")))?
            .to_bytes();
        conn.abort();
        Ok(Answer { status, body })
    }
}
