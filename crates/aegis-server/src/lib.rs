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

mod admin;
pub mod auth;
mod error;
pub mod job;
pub mod metrics;
pub mod queue;
mod runner;
mod service;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aegis_client::Model;
use aegis_crypto::Keyset;
use aegis_proto::v1::federation_server::FederationServer;
use aegis_secagg::ClientId;
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

/// Everything the server needs besides its jobs.
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
    pub fn new(tls: Arc<rustls::ServerConfig>, state_dir: PathBuf, keys: Arc<Keyset>) -> Self {
        ServerConfig {
            tls,
            acceptor: AcceptorConfig::default(),
            tokens: None,
            state_dir,
            keys,
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
            .field("deadlines", &self.deadlines)
            .field("max_clients", &self.max_clients)
            .finish_non_exhaustive()
    }
}

/// The admin endpoint of [`serve`]: its own listener, and a TLS configuration that requires
/// client certificates from the deployment CA (only certificates naming an administrator,
/// `aegis://admin/<name>`, are then let through).
pub struct AdminEndpoint {
    /// Where the admin service listens (keep it off the clients' network).
    pub listener: TcpListener,
    /// TLS 1.3 with required client certificates.
    pub tls: Arc<rustls::ServerConfig>,
}

/// The federation service running: its registry, its events and the gRPC server task.
struct Federation {
    shared: Arc<service::Shared>,
    events: mpsc::Receiver<service::Event>,
    server: tokio::task::JoinHandle<std::result::Result<(), tonic::transport::Error>>,
    stop_serving: tokio::sync::oneshot::Sender<()>,
}

impl Federation {
    /// Starts serving clients on `listener`.
    fn start(listener: TcpListener, config: &ServerConfig, revoked: Vec<ClientId>) -> Self {
        // Frames waiting for the runner, at most: past that, connections' readers wait and
        // HTTP/2 flow control holds the clients back, so memory stays bounded (each masked
        // input can be megabytes).
        let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
        let shared = Arc::new(service::Shared::new(
            events_tx,
            config.tokens.clone(),
            config.deadlines.hello,
            config.max_clients,
            revoked.into_iter().collect(),
        ));
        let svc = FederationServer::new(service::FederationService {
            shared: Arc::clone(&shared),
        })
        .max_decoding_message_size(config.max_message)
        .max_encoding_message_size(config.max_message);
        // Idle connections count too: room for every client plus some that are arriving.
        let acceptor = AcceptorConfig {
            max_connections: config.max_clients.saturating_add(256),
            ..config.acceptor.clone()
        };
        let incoming = TlsIncoming::with_config(listener, Arc::clone(&config.tls), acceptor);
        let (stop_serving, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .initial_stream_window_size(Some(1 << 20))
                .initial_connection_window_size(Some(2 << 20))
                .http2_keepalive_interval(Some(Duration::from_secs(30)))
                .http2_keepalive_timeout(Some(Duration::from_secs(20)))
                .tcp_nodelay(true)
                // A client needs one stream; a few more tolerate a reconnect on the same
                // connection.
                .max_concurrent_streams(Some(4))
                .serve_with_incoming_shutdown(svc, incoming, async {
                    let _ = stopped.await;
                }),
        );
        Federation {
            shared,
            events,
            server,
            stop_serving,
        }
    }

    /// A runner for jobs over this federation's clients.
    fn runner(
        &mut self,
        config: &ServerConfig,
        events: mpsc::Receiver<service::Event>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<runner::Runner> {
        Ok(runner::Runner {
            shared: Arc::clone(&self.shared),
            events,
            shutdown,
            deadlines: config.deadlines.clone(),
            keys: Arc::clone(&config.keys),
            dir: JobDir::new(&config.state_dir, "-"),
            rng: runner::Runner::new_rng()?,
            on_round: config.on_round.clone(),
        })
    }

    /// Says goodbye on every stream, then stops the listener (waiting up to 10 s).
    async fn stop(self, job_finished: bool, reason: &str) {
        self.shared.close_all(job_finished, reason);
        let _ = self.stop_serving.send(());
        match tokio::time::timeout(Duration::from_secs(10), self.server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "gRPC server ended with an error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "gRPC server task failed"),
            Err(_) => tracing::warn!("clients did not close within 10 s"),
        }
    }
}

/// Chunks of a model of `params` parameters (with room for the safetensors header).
fn model_chunks(params: usize) -> usize {
    (params * 4 + 4096).div_ceil(aegis_proto::MODEL_CHUNK) + 1
}

/// Sets its watch to true when dropped.
struct StopOnDrop(watch::Sender<bool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(true);
    }
}

/// A watch that turns true when `shutdown` resolves — or ends any other way (a panic in it):
/// a receiver never sees its sender vanish while still false, which would make every wait on
/// it return at once.
fn shutdown_watch<F>(shutdown: F) -> (watch::Receiver<bool>, tokio::task::JoinHandle<()>)
where
    F: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        let _stop = StopOnDrop(tx);
        shutdown.await;
    });
    (rx, task)
}

/// Serves clients on `listener` and runs one job until its last round, or until `shutdown`
/// resolves (the round in progress is cancelled, clients are told, and the job resumes from
/// its last checkpoint when the server runs again). Streams end when the job ends.
pub async fn run<F>(
    listener: TcpListener,
    config: ServerConfig,
    job: JobSpec,
    initial_model: Model,
    shutdown: F,
) -> Result<JobOutcome>
where
    F: Future<Output = ()> + Send + 'static,
{
    job.validate()?;
    let mut fed = Federation::start(listener, &config, Vec::new());
    // Resuming keeps the model's layout, so its size (in chunks) is known now.
    fed.shared
        .set_job(&job.id, model_chunks(initial_model.num_params()));
    let (stop, stopper) = shutdown_watch(shutdown);
    let (_unused_tx, unused_rx) = mpsc::channel(1);
    let events = std::mem::replace(&mut fed.events, unused_rx);
    let mut runner = fed.runner(&config, events, stop)?;
    runner.dir = JobDir::new(&config.state_dir, &job.id);
    let outcome = runner.run(job, initial_model).await;
    stopper.abort();
    // Graceful end: every stream completes, then the listener stops.
    match &outcome {
        Ok(o) if o.finished => fed.stop(true, "the job is complete").await,
        Ok(_) => {
            fed.stop(false, "the server is stopping; the job resumes later")
                .await;
        }
        // The details (paths, I/O errors) are for the server's operator, not its clients.
        Err(_) => fed.stop(false, "the job failed on the server").await,
    }
    outcome
}

/// Serves clients on `listener` and the admin service on `admin`, and runs the jobs the admin
/// service queues, one at a time in submission order, until `shutdown` resolves. Clients stay
/// connected between jobs. Jobs survive restarts: queued ones stay queued, the running one
/// resumes from its last checkpoint.
pub async fn serve<F>(
    listener: TcpListener,
    admin: AdminEndpoint,
    config: ServerConfig,
    shutdown: F,
) -> Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let queue = Arc::new(queue::Queue::open(
        &config.state_dir,
        Arc::clone(&config.keys),
    )?);
    let revoked_path = config.state_dir.join("revoked.json");
    let mut fed = Federation::start(listener, &config, admin::load_revoked(&revoked_path)?);
    // Clients connect before the jobs they will serve are known: their queues have room for
    // the largest model a job can be submitted with (one admin message).
    fed.shared.set_job("", model_chunks(config.max_message / 4));
    let admin_svc = aegis_proto::admin::admin_server::AdminServer::new(admin::AdminService {
        queue: Arc::clone(&queue),
        shared: Arc::clone(&fed.shared),
        revoked_path,
        revoked_file: std::sync::Mutex::new(()),
    })
    .max_decoding_message_size(config.max_message)
    .max_encoding_message_size(config.max_message);
    // Administrators are few: a small connection bound keeps other certificate holders of the
    // CA (which the handshake accepts; the service then refuses them) from holding many slots.
    let admin_incoming = TlsIncoming::with_config(
        admin.listener,
        admin.tls,
        AcceptorConfig {
            max_connections: 64,
            ..AcceptorConfig::default()
        },
    );
    let (admin_stop_tx, admin_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let admin_server = tokio::spawn(
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .serve_with_incoming_shutdown(admin_svc, admin_incoming, async {
                let _ = admin_stop_rx.await;
            }),
    );

    let (mut stop, stopper) = shutdown_watch(shutdown);
    let (_unused_tx, unused_rx) = mpsc::channel(1);
    let events = std::mem::replace(&mut fed.events, unused_rx);
    let mut runner = fed.runner(&config, events, stop.clone())?;
    let result = loop {
        if *stop.borrow() {
            break Ok(());
        }
        // Idle: wait for a job, dropping whatever clients send between jobs.
        let next = tokio::select! {
            next = queue.next() => next,
            ev = runner.events.recv() => { if ev.is_none() { break Ok(()); } continue; }
            // A shutdown future that ended without resolving (it panicked) also stops the
            // server: `changed` fails from then on, and waiting on it again would spin.
            changed = stop.changed() => {
                if changed.is_err() {
                    break Ok(());
                }
                continue;
            }
        };
        let (spec, model, job_stop) = match next {
            Ok(n) => n,
            Err(e) => break Err(e),
        };
        let id = spec.id.clone();
        tracing::info!(job = %id, rounds = spec.rounds, "job starting");
        fed.shared.set_job(&id, model_chunks(model.num_params()));
        runner.dir = JobDir::new(&config.state_dir, &id);
        // The job stops when it is cancelled or the server stops.
        let (job_tx, job_rx) = watch::channel(false);
        let forward = {
            let (mut global, mut cancelled) = (stop.clone(), job_stop);
            tokio::spawn(async move {
                tokio::select! {
                    _ = global.wait_for(|s| *s) => {}
                    _ = cancelled.wait_for(|s| *s) => {}
                }
                let _ = job_tx.send(true);
            })
        };
        runner.shutdown = job_rx;
        let outcome = runner.run(spec, model).await;
        forward.abort();
        match &outcome {
            Ok(o) => {
                queue.finish(&id, Ok(()), o.finished);
                tracing::info!(job = %id, finished = o.finished, rounds_done = o.state.rounds_done, "job ended");
            }
            Err(e) => {
                tracing::error!(job = %id, error = %e, "job failed");
                queue.finish(&id, Err(e), false);
            }
        }
        fed.shared.set_job("", 0);
    };
    queue.stop_running();
    stopper.abort();
    let _ = admin_stop_tx.send(());
    fed.stop(false, "the server is stopping").await;
    if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(5), admin_server)
        .await
        .unwrap_or(Ok(Ok(())))
    {
        tracing::warn!(error = %e, "admin server ended with an error");
    }
    result
}
