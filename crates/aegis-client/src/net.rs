//! Joining a federation: one gRPC stream to the server over TLS 1.3, authenticated by the
//! client certificate and/or a bearer token; per round, the global model arrives, the
//! [`Trainer`] runs while the SecAgg+ key exchange goes on, and the update leaves only masked.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aegis_crypto::primitives::digest;
use aegis_proto::v1::client_frame::Kind as ClientKind;
use aegis_proto::v1::federation_client::FederationClient;
use aegis_proto::v1::server_frame::Kind as ServerKind;
use aegis_proto::v1::{ClientFrame, Decline, Hello, RoundEnd, RoundStart, TrainReport};
use aegis_secagg::messages::ServerMessage;
use aegis_secagg::{
    ClientConfig, ClientId, ClientSession, ClientState, IdentityKey, QuantizedInput,
    RosterVerifier, Stage,
};
use aegis_transport::Connector;
use bytes::Bytes;
use chacha20::ChaCha20Rng;
use rand_core::SeedableRng;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::error::{Error, Result};
use crate::model::Model;
use crate::trainer::{TrainOutput, TrainSettings, Trainer};

/// Default limit on one gRPC message (a masked input of 16 M parameters fits).
pub const DEFAULT_MAX_MESSAGE: usize = 64 << 20;

/// Leave at a given point, as if the process died there (for fault drills and the demo).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DropAt {
    /// Round (1-based).
    pub round: u32,
    /// The stage whose request makes the client leave, without answering it.
    pub stage: Stage,
}

/// How to reach and authenticate to the server.
#[derive(Clone)]
pub struct ClientOptions {
    /// `host:port` of the server.
    pub server: String,
    /// Name the server certificate must carry (`localhost` for the development PKI).
    pub server_name: String,
    /// TLS 1.3 configuration ([`aegis_transport::ClientTls`]), with the client certificate
    /// when the server wants one.
    pub tls: Arc<rustls::ClientConfig>,
    /// Bearer token, when the server accepts tokens.
    pub token: Option<zeroize::Zeroizing<String>>,
    /// This client's id (the certificate's or the token's).
    pub id: ClientId,
    /// The key SecAgg messages are signed with: the certificate's key, or the key registered
    /// with the token.
    pub identity: Arc<IdentityKey>,
    /// Checks the roster the server sends (`CertRosterVerifier` with certificates).
    pub verifier: Arc<dyn RosterVerifier>,
    /// Largest gRPC message sent or accepted.
    pub max_message: usize,
    /// TCP connect + TLS handshake time limit.
    pub connect_timeout: Duration,
    /// Fault drill: leave at this point.
    pub drop_at: Option<DropAt>,
}

impl ClientOptions {
    /// Options for client `id` with its certificate and key from a PKI directory written by
    /// `aegis certs` ([`aegis_transport::pki::PkiDir`]): mutual TLS, the certificate's Ed25519
    /// key as the SecAgg identity, and rosters checked against the CA
    /// ([`aegis_transport::CertRosterVerifier`]).
    pub fn with_certificate(
        server: &str,
        ca: &std::path::Path,
        cert: &std::path::Path,
        key: &std::path::Path,
        id: ClientId,
    ) -> Result<ClientOptions> {
        let verifier = aegis_transport::CertRosterVerifier::from_pem_file(ca)
            .map_err(|e| Error::Connection(e.to_string()))?;
        ClientOptions::build(
            server,
            ca,
            Some((cert, key)),
            key,
            None,
            id,
            Arc::new(verifier),
        )
    }

    /// The options shared by both kinds of authentication.
    fn build(
        server: &str,
        ca: &std::path::Path,
        certificate: Option<(&std::path::Path, &std::path::Path)>,
        identity_key: &std::path::Path,
        token: Option<zeroize::Zeroizing<String>>,
        id: ClientId,
        verifier: Arc<dyn RosterVerifier>,
    ) -> Result<ClientOptions> {
        let tls = aegis_transport::ClientTls::from_pem_files(ca, certificate)
            .and_then(aegis_transport::ClientTls::into_config)
            .map_err(|e| Error::Connection(e.to_string()))?;
        let key_der = aegis_transport::tls::load_private_key(identity_key)
            .map_err(|e| Error::Connection(e.to_string()))?;
        let identity = IdentityKey::from_pkcs8(key_der.secret_der()).map_err(|_| {
            Error::InvalidArgument(format!(
                "{}: not an Ed25519 PKCS#8 key (client keys issued before Ed25519 must be re-issued)",
                identity_key.display()
            ))
        })?;
        Ok(ClientOptions {
            server: server.to_string(),
            server_name: "localhost".to_string(),
            tls,
            token,
            id,
            identity: Arc::new(identity),
            verifier,
            max_message: DEFAULT_MAX_MESSAGE,
            connect_timeout: Duration::from_secs(10),
            drop_at: None,
        })
    }
}

impl ClientOptions {
    /// Options for client `id` authenticating with a bearer token (no client certificate):
    /// the SecAgg identity is the Ed25519 key in `identity_key` (PKCS#8 PEM) whose public half
    /// the server's token file records. Without certificates a client cannot check its
    /// neighbours' identities itself ([`aegis_secagg::TrustRoster`]): token mode protects
    /// against the network and other clients, but trusts the server's roster
    /// (docs/threat-model.md).
    pub fn with_token(
        server: &str,
        ca: &std::path::Path,
        token: zeroize::Zeroizing<String>,
        identity_key: &std::path::Path,
        id: ClientId,
    ) -> Result<ClientOptions> {
        ClientOptions::build(
            server,
            ca,
            None,
            identity_key,
            Some(token),
            id,
            Arc::new(aegis_secagg::TrustRoster),
        )
    }
}

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("server", &self.server)
            .field("id", &self.id)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// What one round looked like from this client.
#[derive(Clone, Debug, PartialEq)]
pub struct RoundReport {
    /// Round number.
    pub round: u32,
    /// Whether the round completed.
    pub completed: bool,
    /// Whether this client's update is in the aggregate.
    pub included: bool,
    /// The server's reason when it aborted.
    pub reason: String,
    /// Local metrics, if training ran.
    pub loss: Option<f32>,
    /// See `loss`.
    pub accuracy: Option<f32>,
}

/// How a client's participation ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Exit {
    /// The job ran all its rounds.
    JobFinished,
    /// The server stopped before the end of the job (it resumes the job when it runs again),
    /// or the job failed; the server's reason.
    ServerStopped(String),
    /// The server ended the stream without saying why.
    ServerClosed,
    /// The client left on purpose ([`ClientOptions::drop_at`]).
    Dropped(DropAt),
}

/// Summary of a client's run.
#[derive(Clone, Debug)]
pub struct ClientSummary {
    /// How it ended.
    pub exit: Exit,
    /// The job the server ran.
    pub job_id: String,
    /// Every round this client was sampled into.
    pub rounds: Vec<RoundReport>,
}

/// TCP + TLS 1.3 for tonic: our rustls connector, whatever the URI.
#[derive(Clone)]
struct TlsConnector {
    connector: Connector,
    addr: String,
    server_name: String,
}

impl tower_service::Service<Uri> for TlsConnector {
    type Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;
    type Error = aegis_transport::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tls = this
                .connector
                .connect(this.addr.as_str(), &this.server_name)
                .await?;
            Ok(hyper_util::rt::TokioIo::new(tls))
        })
    }
}

/// Opens an HTTP/2 channel to the server over TLS 1.3.
pub async fn connect(opts: &ClientOptions) -> Result<Channel> {
    endpoint(&opts.server)?
        .connect_with_connector(tls_connector(
            Arc::clone(&opts.tls),
            &opts.server,
            &opts.server_name,
            opts.connect_timeout,
        ))
        .await
        .map_err(|e| Error::Connection(format!("{}: {}", opts.server, error_chain(&e))))
}

/// An HTTP/2 channel to a gRPC server (`HOST:PORT`) over TLS 1.3 with `tls` (which may carry
/// a client certificate), connected on first use and reconnected when it breaks. The
/// gateway reaches the FL server's admin service through one.
pub fn lazy_channel(
    tls: Arc<rustls::ClientConfig>,
    server: &str,
    server_name: &str,
    connect_timeout: Duration,
) -> Result<Channel> {
    let connector = tls_connector(tls, server, server_name, connect_timeout);
    Ok(endpoint(server)?
        .connect_timeout(connect_timeout)
        .connect_with_connector_lazy(connector))
}

fn tls_connector(
    tls: Arc<rustls::ClientConfig>,
    server: &str,
    server_name: &str,
    timeout: Duration,
) -> TlsConnector {
    TlsConnector {
        connector: Connector::new(tls).with_timeout(timeout),
        addr: server.to_string(),
        server_name: server_name.to_string(),
    }
}

fn endpoint(server: &str) -> Result<Endpoint> {
    let uri = format!("https://{server}");
    Ok(Endpoint::from_shared(uri)
        .map_err(|e| Error::InvalidArgument(format!("server address {server:?}: {e}")))?
        .initial_stream_window_size(Some(1 << 20))
        .initial_connection_window_size(Some(2 << 20))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
        .tcp_nodelay(true))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = inner.source();
    }
    s
}

fn status_error(s: &tonic::Status) -> Error {
    let mut text = if s.message().is_empty() {
        format!("{:?}", s.code())
    } else {
        format!("{:?}: {}", s.code(), s.message())
    };
    // The TLS alert (certificate required, unknown CA, …) is in the source chain.
    if let Some(source) = std::error::Error::source(s) {
        let chain = error_chain(source);
        if !text.contains(&chain) {
            text.push_str(": ");
            text.push_str(&chain);
        }
    }
    match s.code() {
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
            Error::Protocol(format!("refused by the server: {text}"))
        }
        _ => Error::Connection(text),
    }
}

fn os_rng() -> Result<ChaCha20Rng> {
    let mut seed = zeroize::Zeroizing::new([0u8; 32]);
    getrandom::fill(&mut seed[..])
        .map_err(|e| Error::InvalidArgument(format!("OS randomness: {e}")))?;
    Ok(ChaCha20Rng::from_seed(*seed))
}

/// The stage a server message asks for.
fn stage_of(bytes: &[u8]) -> Option<Stage> {
    match ServerMessage::decode(bytes).ok()? {
        ServerMessage::Setup { .. } => Some(Stage::AdvertiseKeys),
        ServerMessage::ShareKeysRequest { .. } => Some(Stage::ShareKeys),
        ServerMessage::MaskedInputRequest { .. } => Some(Stage::MaskedInputCollection),
        ServerMessage::ConsistencyRequest { .. } => Some(Stage::ConsistencyCheck),
        ServerMessage::UnmaskRequest { .. } => Some(Stage::Unmasking),
        _ => None,
    }
}

/// Training in progress: its output and how long it took.
type Training = tokio::task::JoinHandle<Result<(TrainOutput, Duration)>>;

/// One round in progress.
struct Round {
    start: RoundStart,
    model: Vec<u8>,
    global: Option<Arc<Model>>,
    session: Option<ClientSession>,
    training: Option<Training>,
    trained: Option<TrainOutput>,
    input_set: bool,
    failed: bool,
}

/// Joins the server and takes part in rounds until the server ends the stream.
pub async fn run<T: Trainer + Send + 'static>(
    opts: ClientOptions,
    trainer: T,
) -> Result<ClientSummary> {
    let channel = connect(&opts).await?;
    let mut grpc = FederationClient::new(channel)
        .max_decoding_message_size(opts.max_message)
        .max_encoding_message_size(opts.max_message);
    let (tx, rx) = mpsc::channel::<ClientFrame>(16);
    let hello = ClientFrame {
        kind: Some(ClientKind::Hello(Hello {
            protocol: aegis_proto::PROTOCOL,
            agent: format!("aegis-client/{}", env!("CARGO_PKG_VERSION")),
        })),
    };
    tx.send(hello)
        .await
        .map_err(|_| Error::Connection("stream closed".into()))?;
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(token) = &opts.token {
        let mut value: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
            format!("Bearer {}", token.as_str())
                .parse()
                .map_err(|_| Error::InvalidArgument("the token is not printable ASCII".into()))?;
        value.set_sensitive(true);
        request.metadata_mut().insert("authorization", value);
    }
    let mut inbound = grpc
        .join(request)
        .await
        .map_err(|s| status_error(&s))?
        .into_inner();
    let welcome = match inbound.message().await.map_err(|s| status_error(&s))? {
        Some(f) => match f.kind {
            Some(ServerKind::Welcome(w)) => w,
            _ => return Err(Error::Protocol("the server did not answer Hello".into())),
        },
        None => return Err(Error::Protocol("the server closed the stream".into())),
    };
    if welcome.client_id != opts.id.0 {
        return Err(Error::Protocol(format!(
            "the server authenticated this client as {}, expected {}",
            welcome.client_id, opts.id
        )));
    }
    tracing::info!(client = %opts.id, job = %welcome.job_id, "joined");

    let trainer = Arc::new(Mutex::new(trainer));
    let mut rng = Some(os_rng()?);
    let mut round: Option<Round> = None;
    let mut reports = Vec::new();
    let mut exit = None;
    let send = |frame: ClientFrame| {
        let tx = tx.clone();
        async move {
            tx.send(frame)
                .await
                .map_err(|_| Error::Connection("stream closed".into()))
        }
    };
    loop {
        let frame = match inbound.message().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(s) => return Err(status_error(&s)),
        };
        match frame.kind {
            Some(ServerKind::Round(start)) => {
                tracing::debug!(round = start.round, "round announced");
                let config = ClientConfig {
                    verifier: Arc::clone(&opts.verifier),
                    ..ClientConfig::new(opts.id, Arc::clone(&opts.identity))
                };
                let cap = usize::try_from(start.model_len).unwrap_or(usize::MAX);
                if cap > opts.max_message.saturating_mul(64) {
                    return Err(Error::Protocol(format!(
                        "model of {cap} bytes is beyond this client's limit"
                    )));
                }
                round = Some(Round {
                    // Reserved up to this client's own message limit, whatever the server
                    // announces; a larger model grows as chunks arrive.
                    model: Vec::with_capacity(cap.min(opts.max_message)),
                    start,
                    global: None,
                    session: Some(ClientSession::new(config)),
                    training: None,
                    trained: None,
                    input_set: false,
                    failed: false,
                });
            }
            Some(ServerKind::Model(chunk)) => {
                let Some(r) = round.as_mut() else {
                    return Err(Error::Protocol("model data outside a round".into()));
                };
                if r.global.is_some() {
                    return Err(Error::Protocol("model data after the whole model".into()));
                }
                if (r.model.len() + chunk.data.len()) as u64 > r.start.model_len {
                    return Err(Error::Protocol("more model bytes than announced".into()));
                }
                r.model.extend_from_slice(&chunk.data);
                if r.model.len() as u64 == r.start.model_len {
                    let sha = digest::digest(&digest::SHA256, &r.model);
                    if sha.as_ref() != r.start.model_sha256.as_ref() {
                        return Err(Error::Protocol("the global model's SHA-256 differs".into()));
                    }
                    let global = Arc::new(Model::from_safetensors(&r.model)?);
                    r.model = Vec::new();
                    r.global = Some(Arc::clone(&global));
                    let trainer = Arc::clone(&trainer);
                    let settings = r.start.train.map(|c| TrainSettings {
                        epochs: c.epochs,
                        batch_size: c.batch_size,
                        learning_rate: c.learning_rate,
                    });
                    r.training = Some(tokio::task::spawn_blocking(move || {
                        // A trainer that panicked once is used again (its panic failed only
                        // that round).
                        let mut t = trainer
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        if let Some(s) = &settings {
                            t.configure(s);
                        }
                        let started = Instant::now();
                        t.train(&global).map(|out| (out, started.elapsed()))
                    }));
                }
            }
            Some(ServerKind::Secagg(bytes)) => {
                let Some(r) = round.as_mut() else {
                    continue;
                };
                if r.failed {
                    continue;
                }
                if let Some(drop) = opts.drop_at
                    && drop.round == r.start.round
                    && stage_of(&bytes) == Some(drop.stage)
                {
                    tracing::info!(round = drop.round, stage = %drop.stage, "leaving (fault drill)");
                    return Ok(ClientSummary {
                        exit: Exit::Dropped(drop),
                        job_id: welcome.job_id,
                        rounds: reports,
                    });
                }
                let outcome = step(r, &mut rng, bytes, &send).await;
                if let Err(e) = outcome {
                    tracing::warn!(round = r.start.round, error = %e, "left the round");
                    r.failed = true;
                    if let Some(t) = r.training.take() {
                        t.abort();
                    }
                    // Tell the server at once (unless it ended the round itself), so it does
                    // not wait for this client until the stage deadline.
                    if !matches!(
                        e,
                        Error::SecAgg(aegis_secagg::Error::Refused(
                            aegis_secagg::Refusal::ServerAborted(_)
                        ))
                    ) {
                        let _ = send(ClientFrame {
                            kind: Some(ClientKind::Decline(Decline {
                                round: r.start.round,
                                reason: decline_reason(&e),
                            })),
                        })
                        .await;
                    }
                }
            }
            Some(ServerKind::End(end)) => {
                let r = round.take();
                reports.push(finish(end, r.as_ref()));
            }
            Some(ServerKind::Goodbye(g)) => {
                tracing::info!(finished = g.job_finished, reason = %g.reason, "the server said goodbye");
                exit = Some(if g.job_finished {
                    Exit::JobFinished
                } else {
                    Exit::ServerStopped(g.reason)
                });
            }
            Some(ServerKind::Welcome(_)) | None => {
                return Err(Error::Protocol("unexpected frame from the server".into()));
            }
        }
    }
    Ok(ClientSummary {
        exit: exit.unwrap_or(Exit::ServerClosed),
        job_id: welcome.job_id,
        rounds: reports,
    })
}

/// The round's session and the RNG, moved out for a blocking task (which gives them back). A
/// task that failed took the generator with it: a fresh one is drawn.
fn take_parts(
    r: &mut Round,
    rng: &mut Option<ChaCha20Rng>,
) -> Result<(ClientSession, ChaCha20Rng)> {
    let session = r
        .session
        .take()
        .ok_or_else(|| Error::Protocol("no session".into()))?;
    let g = match rng.take() {
        Some(g) => g,
        None => os_rng()?,
    };
    Ok((session, g))
}

/// `v` rounded to a multiple of `1 / per_unit` (non-finite values become 0).
fn coarse(v: f32, per_unit: f32) -> f32 {
    if v.is_finite() {
        (v * per_unit).round() / per_unit
    } else {
        0.0
    }
}

/// What a client tells the server when it leaves a round: the kind of failure, never local
/// paths or file contents.
fn decline_reason(e: &Error) -> String {
    match e {
        Error::SecAgg(e) => format!("secure aggregation: {e}"),
        Error::Protocol(_) | Error::Connection(_) => "protocol error".into(),
        _ => "local training failed".into(),
    }
}

fn finish(end: RoundEnd, r: Option<&Round>) -> RoundReport {
    let trained = r.and_then(|r| r.trained.as_ref());
    let report = RoundReport {
        round: end.round,
        completed: end.completed,
        included: end.included,
        reason: end.reason,
        loss: trained.map(|t| t.loss),
        accuracy: trained.map(|t| t.accuracy),
    };
    tracing::info!(
        round = report.round,
        completed = report.completed,
        included = report.included,
        reason = %report.reason,
        "round ended"
    );
    report
}

/// Handles one SecAgg message: advances the session, supplies the input when asked, and
/// sends what the session produced.
async fn step<S, F>(
    r: &mut Round,
    rng: &mut Option<ChaCha20Rng>,
    bytes: Bytes,
    send: &S,
) -> Result<()>
where
    S: Fn(ClientFrame) -> F,
    F: std::future::Future<Output = Result<()>>,
{
    let (mut session, mut g) = take_parts(r, rng)?;
    let (session, g, res) = tokio::task::spawn_blocking(move || {
        let res = session.handle_bytes(&bytes, &mut g);
        (session, g, res)
    })
    .await
    .map_err(|e| Error::Protocol(format!("secure aggregation task: {e}")))?;
    *rng = Some(g);
    r.session = Some(session);
    res?;
    if !r.input_set
        && matches!(
            r.session.as_ref().map(ClientSession::state),
            Some(ClientState::ExpectInput(_))
        )
    {
        supply_input(r, rng, send).await?;
    }
    if let Some(session) = r.session.as_mut() {
        while let Some(msg) = session.poll_outbox() {
            send(ClientFrame {
                kind: Some(ClientKind::Secagg(Bytes::from(msg.encode()))),
            })
            .await?;
        }
    }
    Ok(())
}

/// Waits for training, reports its metrics, quantizes the update and hands it to the session
/// (which masks it).
async fn supply_input<S, F>(r: &mut Round, rng: &mut Option<ChaCha20Rng>, send: &S) -> Result<()>
where
    S: Fn(ClientFrame) -> F,
    F: std::future::Future<Output = Result<()>>,
{
    let round = r.start.round;
    let training = r
        .training
        .take()
        .ok_or_else(|| Error::Protocol("masked input requested before the model".into()))?;
    let (out, took) = match training.await {
        Ok(Ok(done)) => done,
        // The caller declines the round.
        Ok(Err(e)) => return Err(e),
        Err(e) => return Err(Error::TrainCommand(format!("training task: {e}"))),
    };
    let (mut session, mut g) = take_parts(r, rng)?;
    let params = session
        .params()
        .cloned()
        .ok_or_else(|| Error::Protocol("no parameters".into()))?;
    let weight = out.num_examples.min(params.max_weight);
    send(ClientFrame {
        kind: Some(ClientKind::Report(TrainReport {
            round,
            // Coarse on purpose: exact values would let the server recover the example
            // count (e.g. accuracy = correct / n), which stays masked.
            loss: coarse(out.loss, 100.0),
            accuracy: coarse(out.accuracy, 100.0),
            train_seconds: coarse(took.as_secs_f32(), 10.0),
        })),
    })
    .await?;
    let delta = out.delta.flatten();
    let (session, g, res) = tokio::task::spawn_blocking(move || {
        let res = QuantizedInput::quantize(&params, &delta, weight, &mut g)
            .and_then(|input| session.set_input(input));
        (session, g, res)
    })
    .await
    .map_err(|e| Error::Protocol(format!("masking task: {e}")))?;
    *rng = Some(g);
    r.session = Some(session);
    r.trained = Some(out);
    r.input_set = true;
    res?;
    Ok(())
}
