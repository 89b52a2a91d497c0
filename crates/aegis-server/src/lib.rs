//! # aegis-server — the AEGIS federated-learning server
//!
//! What it does: serves the `aegis.fl.v1.Federation` gRPC service (one stream per client) over
//! TLS 1.3 only, with client certificates (`aegis-transport`) and/or bearer tokens
//! ([`auth`]); runs a job of FedAvg rounds over a model of named f32 tensors, each round
//! aggregated by a SecAgg+ [`aegis_secagg::ServerSession`] (the server only ever sees the
//! weighted sum of the updates), with per-stage deadlines; writes the global model after each
//! round as an encrypted (aegis-crypto v2) safetensors checkpoint, atomically, and resumes a job
//! from its last checkpoint after a restart ([`job`]); records per-round [`metrics`].
//!
//! What it does not: choose or train models (clients do), or hold any client's data.
//!
//! ```text
//!  clients ══ gRPC / HTTP/2 / TLS 1.3 ══▶ TlsIncoming ─▶ service (auth, registry)
//!                                                            │ events (frames, closes)
//!                                                            ▼
//!                     state.json + round-N.aegis ◀── runner: gather → RoundStart + model
//!                                                     → SecAgg+ session ⇄ clients → FedAvg
//! ```

#![forbid(unsafe_code)]

pub mod auth;
mod error;
pub mod job;
pub mod metrics;
mod runner;
mod service;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aegis_client::Model;
use aegis_crypto::Keyset;
use aegis_proto::v1::federation_server::FederationServer;
use aegis_transport::{AcceptorConfig, TlsIncoming};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

pub use auth::{Identity, Method, TokenTable};
pub use error::{Error, Result};
pub use job::{JobDir, JobSpec, JobState};
pub use metrics::RoundMetrics;
pub use runner::{Deadlines, JobOutcome};

/// Called after every round with its metrics.
pub type RoundHook = Arc<dyn Fn(&RoundMetrics) + Send + Sync>;

/// Client frames queued for the round runner at most.
const EVENT_QUEUE: usize = 256;

/// Default limit on one gRPC message: a masked input of 16 M parameters fits.
pub const DEFAULT_MAX_MESSAGE: usize = 64 << 20;

/// Everything the server needs.
pub struct ServerConfig {
    /// TLS 1.3 configuration ([`aegis_transport::ServerTls`]).
    pub tls: Arc<rustls::ServerConfig>,
    /// Handshake timeout and limits.
    pub acceptor: AcceptorConfig,
    /// Bearer tokens accepted besides client certificates.
    pub tokens: Option<TokenTable>,
    /// Where jobs keep their state and checkpoints.
    pub state_dir: PathBuf,
    /// Keys for the checkpoints (the primary key encrypts).
    pub keys: Arc<Keyset>,
    /// The job.
    pub job: JobSpec,
    /// The model a fresh job starts from (ignored when resuming).
    pub initial_model: Model,
    /// Deadlines.
    pub deadlines: Deadlines,
    /// Largest gRPC message accepted or sent.
    pub max_message: usize,
    /// Connected clients at most.
    pub max_clients: usize,
    /// Called after each round.
    pub on_round: Option<RoundHook>,
}

impl ServerConfig {
    /// A configuration with default deadlines, limits (10 000 clients, 64 MiB messages) and
    /// acceptor settings, no tokens and no hook.
    pub fn new(
        tls: Arc<rustls::ServerConfig>,
        state_dir: PathBuf,
        keys: Arc<Keyset>,
        job: JobSpec,
        initial_model: Model,
    ) -> ServerConfig {
        ServerConfig {
            tls,
            acceptor: AcceptorConfig::default(),
            tokens: None,
            state_dir,
            keys,
            job,
            initial_model,
            deadlines: Deadlines::default(),
            max_message: DEFAULT_MAX_MESSAGE,
            max_clients: 10_000,
            on_round: None,
        }
    }
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("state_dir", &self.state_dir)
            .field("job", &self.job)
            .field("deadlines", &self.deadlines)
            .finish_non_exhaustive()
    }
}

/// Serves clients on `listener` and runs the job until its last round, or until `shutdown`
/// resolves (the round in progress is cancelled, clients are told, and the job resumes from
/// its last checkpoint when the server runs again). Streams end when the job ends.
pub async fn run<F>(listener: TcpListener, config: ServerConfig, shutdown: F) -> Result<JobOutcome>
where
    F: Future<Output = ()> + Send + 'static,
{
    config.job.validate()?;
    // Resuming keeps the model's layout, so its size (in chunks) is known now.
    let model_bytes = config.initial_model.num_params() * 4 + 4096;
    let model_chunks = model_bytes.div_ceil(aegis_proto::MODEL_CHUNK) + 1;
    // Frames waiting for the runner, at most: past that, connections' readers wait and HTTP/2
    // flow control holds the clients back, so memory stays bounded (each masked input can be
    // megabytes).
    let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
    let shared = Arc::new(service::Shared::new(
        events_tx,
        config.tokens,
        config.deadlines.hello,
        config.max_clients,
        config.job.id.clone(),
        model_chunks,
    ));
    let svc = FederationServer::new(service::FederationService {
        shared: Arc::clone(&shared),
    })
    .max_decoding_message_size(config.max_message)
    .max_encoding_message_size(config.max_message);
    // Idle connections count too: room for every client plus some that are arriving.
    let acceptor = AcceptorConfig {
        max_connections: config.max_clients.saturating_add(256),
        ..config.acceptor
    };
    let incoming = TlsIncoming::with_config(listener, config.tls, acceptor);

    let (stop_tx, stop_rx) = watch::channel(false);
    let (serve_stop_tx, serve_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let stopper = tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .initial_stream_window_size(Some(1 << 20))
            .initial_connection_window_size(Some(2 << 20))
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .tcp_nodelay(true)
            // A client needs one stream; a few more tolerate a reconnect on the same connection.
            .max_concurrent_streams(Some(4))
            .serve_with_incoming_shutdown(svc, incoming, async {
                let _ = serve_stop_rx.await;
            }),
    );

    let runner = runner::Runner {
        shared: Arc::clone(&shared),
        events: events_rx,
        shutdown: stop_rx,
        deadlines: config.deadlines,
        keys: config.keys,
        dir: JobDir::new(&config.state_dir, &config.job.id),
        rng: runner::Runner::new_rng()?,
        on_round: config.on_round,
    };
    let outcome = runner.run(config.job, config.initial_model).await;

    // Graceful end: every stream completes, then the listener stops.
    match &outcome {
        Ok(o) if o.finished => shared.close_all(true, "the job is complete"),
        Ok(_) => shared.close_all(false, "the server is stopping; the job resumes later"),
        // The details (paths, I/O errors) are for the server's operator, not its clients.
        Err(_) => shared.close_all(false, "the job failed on the server"),
    }
    stopper.abort();
    let _ = serve_stop_tx.send(());
    match tokio::time::timeout(Duration::from_secs(10), server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "gRPC server ended with an error"),
        Ok(Err(e)) => tracing::warn!(error = %e, "gRPC server task failed"),
        Err(_) => tracing::warn!("clients did not close within 10 s"),
    }
    outcome
}
