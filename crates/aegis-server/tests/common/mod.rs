//! A federation on 127.0.0.1 for the server's tests: a development PKI in a temporary
//! directory, a server task over real TLS 1.3 sockets, in-process clients.

#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aegis_client::net::{ClientOptions, ClientSummary};
use aegis_client::{Model, TrainOutput, Trainer};
use aegis_crypto::Keyset;
use aegis_secagg::ClientId;
use aegis_server::{Deadlines, JobOutcome, JobSpec, ServerConfig};
use aegis_transport::pki::{self, PkiDir};
use aegis_transport::{ClientAuth, ServerTls};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const DIGITS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../data/digits/digits.csv.gz"
);

/// Generous wall-clock bound on anything a test waits for.
pub const WAIT: Duration = Duration::from_secs(120);

pub struct Fed {
    pub dir: tempfile::TempDir,
    pub pki: PkiDir,
    pub keys: Arc<Keyset>,
}

pub struct RunningServer {
    pub addr: SocketAddr,
    pub task: JoinHandle<aegis_server::Result<JobOutcome>>,
    pub stop: Option<oneshot::Sender<()>>,
}

impl RunningServer {
    pub async fn outcome(self) -> aegis_server::Result<JobOutcome> {
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the server finished in time")
            .expect("the server task did not panic")
    }
}

impl Fed {
    pub fn new(clients: u64) -> Fed {
        let dir = tempfile::tempdir().unwrap();
        let pki = pki::init(&dir.path().join("pki"), &pki::default_server_sans(), false).unwrap();
        for id in 1..=clients {
            pki::issue_client(pki.dir(), aegis_transport::ClientId(id), false).unwrap();
        }
        Fed {
            dir,
            pki,
            keys: Arc::new(Keyset::generate().unwrap()),
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn server_tls(&self, auth: ClientAuth) -> Arc<rustls::ServerConfig> {
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

    /// A server configuration with short deadlines for tests, and its job.
    pub fn config(&self, job: JobSpec, model: Model) -> JobConfig {
        let mut c = ServerConfig::new(
            self.server_tls(ClientAuth::Required),
            self.state_dir(),
            Arc::clone(&self.keys),
        );
        c.deadlines = Deadlines {
            gather_grace: Duration::from_secs(3),
            stage: Duration::from_secs(20),
            training: Duration::from_secs(60),
            hello: Duration::from_secs(10),
        };
        JobConfig {
            server: c,
            job,
            model,
        }
    }

    pub async fn start(&self, config: JobConfig) -> RunningServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(config.run(listener, async {
            let _ = stopped.await;
        }));
        RunningServer {
            addr,
            task,
            stop: Some(stop),
        }
    }

    pub fn client(&self, addr: SocketAddr, id: u64) -> ClientOptions {
        let cid = aegis_transport::ClientId(id);
        ClientOptions::with_certificate(
            &addr.to_string(),
            &self.pki.ca_cert(),
            &self.pki.client_cert(cid),
            &self.pki.client_key(cid),
            ClientId(id),
        )
        .unwrap()
    }
}

pub fn spawn_client<T: Trainer + Send + 'static>(
    opts: ClientOptions,
    trainer: T,
) -> JoinHandle<aegis_client::Result<ClientSummary>> {
    tokio::spawn(async move { aegis_client::net::run(opts, trainer).await })
}

pub async fn join_client(
    h: JoinHandle<aegis_client::Result<ClientSummary>>,
) -> aegis_client::Result<ClientSummary> {
    tokio::time::timeout(WAIT, h)
        .await
        .expect("the client finished in time")
        .expect("the client task did not panic")
}

/// Returns a fixed update with a fixed weight: the aggregate is then known exactly.
#[derive(Clone)]
pub struct FixedTrainer {
    pub delta: Vec<f32>,
    pub weight: u32,
}

impl Trainer for FixedTrainer {
    fn train(&mut self, global: &Model) -> aegis_client::Result<TrainOutput> {
        Ok(TrainOutput {
            delta: global.unflatten(&self.delta)?,
            num_examples: self.weight,
            // A multiple of 0.01, which clients report exactly.
            loss: (self.weight % 100) as f32 / 100.0,
            accuracy: 0.5,
        })
    }
}

/// A small job for tests.
pub fn job(id: &str, rounds: u32, min_clients: u32) -> JobSpec {
    JobSpec {
        rounds,
        min_clients,
        // A full cohort starts the round at once (no gather grace).
        cohort: min_clients,
        max_weight: 1000,
        ..JobSpec::new(id)
    }
}

pub fn checkpoint(fed: &Fed, outcome: &JobOutcome) -> Model {
    aegis_server::job::read_checkpoint(&outcome.checkpoint, &fed.keys).unwrap()
}

pub fn path_exists(p: &Path) -> bool {
    p.exists()
}

/// Client `i`'s fixed update: distinct values in [−0.9, 0.9].
pub fn delta(i: u64, m: usize) -> Vec<f32> {
    (0..m)
        .map(|j| (((i as usize * 7 + j * 13) % 19) as f32 - 9.0) / 10.0)
        .collect()
}

/// Client `i`'s FedAvg weight.
pub fn weight(i: u64) -> u32 {
    10 * i as u32
}

/// Client `i`'s trainer: [`delta`] with [`weight`].
pub fn trainer(i: u64, m: usize) -> FixedTrainer {
    FixedTrainer {
        delta: delta(i, m),
        weight: weight(i),
    }
}

/// The weighted mean of the updates of `ids`, in f64.
pub fn fedavg(ids: &[u64], m: usize) -> Vec<f64> {
    let total: f64 = ids.iter().map(|&i| f64::from(weight(i))).sum();
    let mut mean = vec![0.0f64; m];
    for &i in ids {
        for (acc, d) in mean.iter_mut().zip(delta(i, m)) {
            *acc += f64::from(weight(i)) * f64::from(d) / total;
        }
    }
    mean
}

/// A server configuration and the one job it runs (`config.deadlines` etc. reach the server's
/// configuration).
pub struct JobConfig {
    pub server: ServerConfig,
    pub job: JobSpec,
    pub model: Model,
}

impl JobConfig {
    /// `aegis_server::run` with this configuration.
    pub fn run(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> impl std::future::Future<Output = aegis_server::Result<aegis_server::JobOutcome>> {
        aegis_server::run(listener, self.server, self.job, self.model, shutdown)
    }
}

impl std::ops::Deref for JobConfig {
    type Target = ServerConfig;
    fn deref(&self) -> &ServerConfig {
        &self.server
    }
}

impl std::ops::DerefMut for JobConfig {
    fn deref_mut(&mut self) -> &mut ServerConfig {
        &mut self.server
    }
}
