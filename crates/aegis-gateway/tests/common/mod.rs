//! Test harness: a real FL server in queue mode (admin service over mTLS) and a real gateway,
//! both on 127.0.0.1 over TLS 1.3, a development PKI, and a small HTTPS client.
#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aegis_client::{Model, TrainOutput, Trainer};
use aegis_gateway::{Db, GatewayConfig};
use aegis_server::{Deadlines, ServerConfig};
use aegis_transport::pki::{self, Ca, PkiDir};
use aegis_transport::{ClientAuth, ClientTls, Connector, ServerTls};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::Value;
use tempfile::TempDir;
use tokio::sync::oneshot;

/// A database URL for the gateway: a fresh SQLite file, or a fresh PostgreSQL database on the
/// server named by `AEGIS_TEST_POSTGRES_URL` (scripts/test.sh starts one). `None` when no
/// PostgreSQL server is configured outside CI; in CI its absence is a failure.
pub async fn database(kind: &str, dir: &Path) -> Option<String> {
    match kind {
        "sqlite" => Some(format!("sqlite:{}", dir.join("gateway.db").display())),
        _ => {
            let Ok(base) = std::env::var("AEGIS_TEST_POSTGRES_URL") else {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "AEGIS_TEST_POSTGRES_URL is not set in CI: scripts/test.sh must start PostgreSQL"
                );
                eprintln!("SKIPPED: AEGIS_TEST_POSTGRES_URL is not set (run scripts/test.sh)");
                return None;
            };
            sqlx::any::install_default_drivers();
            let mut raw = [0u8; 6];
            aegis_crypto::key::fill_random(&mut raw).unwrap();
            let name = format!("aegis_test_{}", hex::encode(raw));
            let pool = sqlx::AnyPool::connect(&base)
                .await
                .expect("PostgreSQL reachable");
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&pool)
                .await
                .unwrap();
            pool.close().await;
            let (prefix, _) = base.rsplit_once('/').expect("URL with a database");
            Some(format!("{prefix}/{name}"))
        }
    }
}

pub struct Env {
    pub dir: TempDir,
    pub pki: PathBuf,
    pub db_url: String,
    pub fl_addr: SocketAddr,
    pub gw_addr: SocketAddr,
    pub admin_token: String,
    fl_stop: Option<oneshot::Sender<()>>,
    gw_stop: Option<oneshot::Sender<()>>,
    fl_task: Option<tokio::task::JoinHandle<aegis_server::Result<()>>>,
    gw_task: Option<tokio::task::JoinHandle<aegis_gateway::Result<()>>>,
}

pub struct Resp {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Options of [`Env::start`].
pub struct Opts {
    pub mtls: ClientAuth,
    pub max_body: usize,
    pub idle_timeout: Duration,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            mtls: ClientAuth::Optional,
            max_body: 64 * 1024,
            idle_timeout: aegis_gateway::serve::HEADER_READ_TIMEOUT,
        }
    }
}

impl Env {
    pub async fn start(db_url: String, opts: Opts) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let pki_dir = dir.path().join("pki");
        pki::init(&pki_dir, &pki::default_server_sans(), false).unwrap();
        pki::issue_admin(&pki_dir, "gateway", false).unwrap();
        let p = PkiDir::new(&pki_dir);

        // The FL server, in queue mode.
        let keys = Arc::new(aegis_crypto::Keyset::generate().unwrap());
        let fl_tls = ServerTls::from_pem_files(
            &p.server_cert(),
            &p.server_key(),
            ClientAuth::Required,
            Some(&p.ca_cert()),
        )
        .unwrap()
        .into_config()
        .unwrap();
        let admin_tls = fl_tls.clone();
        let mut config = ServerConfig::new(fl_tls, dir.path().join("state"), keys);
        config.deadlines = Deadlines {
            gather_grace: Duration::from_millis(500),
            stage: Duration::from_secs(20),
            training: Duration::from_secs(30),
            hello: Duration::from_secs(10),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fl_addr = listener.local_addr().unwrap();
        let admin_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin_addr = admin_listener.local_addr().unwrap();
        let (fl_stop, stopped) = oneshot::channel::<()>();
        let fl_task = tokio::spawn(aegis_server::serve(
            listener,
            aegis_server::AdminEndpoint {
                listener: admin_listener,
                tls: admin_tls,
            },
            config,
            async {
                let _ = stopped.await;
            },
        ));

        // The gateway.
        let db = Db::connect(&db_url).await.unwrap();
        let (row, token) = aegis_gateway::auth::issue_stored_token(
            &db,
            "ops",
            aegis_gateway::Role::Admin,
            None,
            None,
        )
        .await
        .unwrap();
        assert!(row.id.starts_with("tok_"));
        let admin_client_tls = ClientTls::from_pem_files(
            &p.ca_cert(),
            Some((&p.admin_cert("gateway"), &p.admin_key("gateway"))),
        )
        .unwrap()
        .into_config()
        .unwrap();
        let channel = aegis_client::net::lazy_channel(
            admin_client_tls,
            &admin_addr.to_string(),
            "localhost",
            Duration::from_secs(5),
        )
        .unwrap();
        let gw_tls = ServerTls::from_pem_files(
            &p.server_cert(),
            &p.server_key(),
            opts.mtls,
            Some(&p.ca_cert()),
        )
        .unwrap()
        .into_config()
        .unwrap();
        let config = GatewayConfig {
            tls: gw_tls,
            db,
            fl: aegis_gateway::fl::FlAdmin::new(channel, 64 << 20),
            ca: Some(Ca::load(&pki_dir).unwrap()),
            max_body: opts.max_body,
            acceptor: aegis_transport::AcceptorConfig::default(),
            idle_timeout: opts.idle_timeout,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gw_addr = listener.local_addr().unwrap();
        let (gw_stop, stopped) = oneshot::channel::<()>();
        let gw_task = tokio::spawn(aegis_gateway::serve(listener, config, async {
            let _ = stopped.await;
        }));
        Env {
            dir,
            pki: pki_dir,
            db_url,
            fl_addr,
            gw_addr,
            admin_token: token.to_string(),
            fl_stop: Some(fl_stop),
            gw_stop: Some(gw_stop),
            fl_task: Some(fl_task),
            gw_task: Some(gw_task),
        }
    }

    pub fn pki(&self) -> PkiDir {
        PkiDir::new(&self.pki)
    }

    /// An HTTPS/1.1 client trusting the dev CA, optionally with a client certificate.
    /// A TLS 1.3 connection to the gateway (no HTTP yet).
    pub async fn tls(&self) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        self.client(None)
            .connector
            .connect(self.gw_addr, "localhost")
            .await
            .unwrap()
    }

    pub fn client(&self, identity: Option<(&Path, &Path)>) -> HttpsClient {
        let mut cfg = Arc::unwrap_or_clone(
            ClientTls::from_pem_files(&self.pki().ca_cert(), identity)
                .unwrap()
                .into_config()
                .unwrap(),
        );
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        HttpsClient {
            connector: Connector::new(Arc::new(cfg)).with_timeout(Duration::from_secs(5)),
            addr: self.gw_addr,
        }
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Resp {
        self.client(None)
            .request("GET", path, token, None)
            .await
            .unwrap()
    }

    pub async fn post_json(
        &self,
        path: &str,
        token: Option<&str>,
        body: &serde_json::Value,
    ) -> Resp {
        self.client(None)
            .request(
                "POST",
                path,
                token,
                Some(("application/json", body.to_string().into_bytes())),
            )
            .await
            .unwrap()
    }

    pub async fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, Vec<u8>)>,
    ) -> Resp {
        self.client(None)
            .request(method, path, token, body)
            .await
            .unwrap()
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.gw_stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.gw_task.take() {
            tokio::time::timeout(Duration::from_secs(15), t)
                .await
                .expect("gateway stops")
                .unwrap()
                .unwrap();
        }
        if let Some(s) = self.fl_stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.fl_task.take() {
            tokio::time::timeout(Duration::from_secs(15), t)
                .await
                .expect("FL server stops")
                .unwrap()
                .unwrap();
        }
    }
}

pub struct HttpsClient {
    connector: Connector,
    addr: SocketAddr,
}

impl HttpsClient {
    /// One request on a fresh TLS 1.3 connection; `Err` when the connection or handshake
    /// fails.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<Resp, String> {
        let tls = self
            .connector
            .connect(self.addr, "localhost")
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let (ctype, bytes) = body.unwrap_or(("", Vec::new()));
        if !ctype.is_empty() {
            req = req.header("content-type", ctype);
        }
        let req = req.body(Full::new(Bytes::from(bytes))).unwrap();
        let res = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let body = res
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(Resp {
            status,
            headers,
            body,
        })
    }
}

/// A trainer whose update is fixed: every parameter moves by `step`.
pub struct StepTrainer {
    pub step: f32,
}

impl Trainer for StepTrainer {
    fn train(&mut self, global: &Model) -> aegis_client::Result<TrainOutput> {
        let delta = vec![self.step; global.num_params()];
        Ok(TrainOutput {
            delta: global.unflatten(&delta)?,
            num_examples: 10,
            loss: 0.5,
            accuracy: 0.75,
        })
    }
}

/// Runs FL client `id` with a certificate from the PKI until the server ends its stream.
pub fn spawn_client(
    env: &Env,
    id: u64,
    step: f32,
) -> tokio::task::JoinHandle<aegis_client::Result<aegis_client::net::Exit>> {
    spawn_client_with(env, id, StepTrainer { step })
}

/// Runs FL client `id` with `trainer` and a certificate from the PKI.
pub fn spawn_client_with<T: Trainer + Send + 'static>(
    env: &Env,
    id: u64,
    trainer: T,
) -> tokio::task::JoinHandle<aegis_client::Result<aegis_client::net::Exit>> {
    let p = env.pki();
    let cid = aegis_transport::ClientId(id);
    if !p.client_cert(cid).exists() {
        pki::issue_client(&env.pki, cid, false).unwrap();
    }
    let opts = aegis_client::net::ClientOptions::with_certificate(
        &env.fl_addr.to_string(),
        &p.ca_cert(),
        &p.client_cert(cid),
        &p.client_key(cid),
        cid,
    )
    .unwrap();
    tokio::spawn(async move {
        aegis_client::net::run(opts, trainer)
            .await
            .map(|report| report.exit)
    })
}

/// The tool named by `var`; `None` (skip) when unset outside CI, a failure in CI.
pub fn tool(var: &str) -> Option<PathBuf> {
    match std::env::var_os(var) {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{var} is not set in CI: scripts/test.sh must install the tool and set it"
            );
            eprintln!("SKIPPED: {var} is not set (run scripts/test.sh)");
            None
        }
    }
}

/// Polls `GET /v1/jobs/{id}` until `done` holds, for at most `within`.
pub async fn wait_job(
    env: &Env,
    token: &str,
    id: &str,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let start = Instant::now();
    loop {
        let r = env.get(&format!("/v1/jobs/{id}"), Some(token)).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let j = r.json();
        if done(&j) {
            return j;
        }
        assert!(
            !["failed", "completed"].contains(&j["status"].as_str().unwrap_or("")),
            "job ended as {}: {}",
            j["status"],
            j["error"]
        );
        assert!(
            start.elapsed() < within,
            "job not in the wanted state within {within:?}: status {}, rounds_done {}",
            j["status"],
            j["rounds_done"]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Issues a scientist token named `name` with the admin token.
pub async fn scientist_token(env: &Env, name: &str) -> String {
    let r = env
        .post_json(
            "/v1/tokens",
            Some(&env.admin_token),
            &serde_json::json!({"name": name, "role": "scientist"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    r.json()["token"].as_str().unwrap().to_string()
}

/// Creates a job with `body`; its id.
pub async fn create_job(env: &Env, token: &str, body: &serde_json::Value) -> String {
    let r = env.post_json("/v1/jobs", Some(token), body).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    r.json()["id"].as_str().unwrap().to_string()
}
