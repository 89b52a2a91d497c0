//! `aegis server`, `aegis client` and `aegis demo`: federated learning over TLS 1.3 with
//! secure aggregation and encrypted checkpoints.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aegis_client::data::{Dataset, parse_digits_csv, split_non_iid};
use aegis_client::net::{ClientOptions, DropAt, Exit};
use aegis_client::{Model, SoftmaxTrainer, evaluate};
use aegis_crypto::Keyset;
use aegis_crypto::store::{Backend, KeyStore, StoreConfig};
use aegis_secagg::Stage;
use aegis_server::metrics::STAGES;
use aegis_server::{Deadlines, JobSpec, RoundMetrics, ServerConfig, TokenTable};
use aegis_transport::pki::{self as tls_pki, PkiDir};
use aegis_transport::{ClientAuth, ServerTls};
use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};

/// The UCI optical digits set (CC BY 4.0, see data/digits/README.md), built into the binary
/// so the demo runs from anywhere.
const DIGITS_GZ: &[u8] = include_bytes!("../../../data/digits/digits.csv.gz");

/// Marks a directory made by `aegis demo` (which may then be reused).
const DEMO_MARKER: &str = ".aegis-demo";

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum ClientAuthArg {
    /// Every client presents a certificate from the CA.
    Require,
    /// Certificates are verified when presented; tokens otherwise.
    Optional,
    /// No client certificates (tokens only).
    Off,
}

/// Settings of the job a server runs.
#[derive(Args, Debug, Clone)]
pub(crate) struct JobArgs {
    /// Job id (names the directory of its state and checkpoints).
    #[arg(long = "job", default_value = "job", value_name = "ID")]
    job_id: String,
    /// Rounds to run (aborted rounds count).
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    /// Clients sampled per round at most.
    #[arg(long, default_value_t = 100)]
    cohort: u32,
    /// Clients needed to start a round.
    #[arg(long, default_value_t = 3)]
    min_clients: u32,
    /// Per-coordinate clipping bound of updates.
    #[arg(long, default_value_t = 1.0)]
    clip: f32,
    /// Largest FedAvg weight (example count) a client may submit.
    #[arg(long, default_value_t = 10_000)]
    max_weight: u32,
    /// Expected dropout fraction per round (chooses the SecAgg+ graph and threshold).
    #[arg(long, default_value_t = 0.1)]
    dropout_rate: f64,
    /// Local epochs per round.
    #[arg(long, default_value_t = 2)]
    epochs: u32,
    /// Local mini-batch size.
    #[arg(long, default_value_t = 16)]
    batch_size: u32,
    /// Local SGD step size.
    #[arg(long, default_value_t = 0.1)]
    lr: f32,
}

impl JobArgs {
    fn spec(&self) -> JobSpec {
        JobSpec {
            rounds: self.rounds,
            cohort: self.cohort,
            min_clients: self.min_clients,
            clip: self.clip,
            max_weight: self.max_weight,
            dropout_rate: self.dropout_rate,
            epochs: self.epochs,
            batch_size: self.batch_size,
            learning_rate: self.lr,
            ..JobSpec::new(&self.job_id)
        }
    }
}

#[derive(Args, Debug)]
pub(crate) struct ServerArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7443")]
    listen: SocketAddr,
    /// PKI directory from `aegis certs init` (server.pem, server.key, ca.pem).
    #[arg(long, value_name = "DIR")]
    pki: PathBuf,
    /// Client certificates: require, optional or off.
    #[arg(long, value_enum, default_value = "require")]
    client_auth: ClientAuthArg,
    /// Token file (from `aegis tokens issue`): bearer tokens accepted besides certificates
    /// (re-read at start only).
    #[arg(long, value_name = "FILE")]
    tokens: Option<PathBuf>,
    /// Where jobs keep their state and encrypted checkpoints.
    #[arg(long, default_value = "aegis-state", value_name = "DIR")]
    state_dir: PathBuf,
    /// Initial model, safetensors (F32 tensors) [default: softmax regression 64 → 10, for
    /// the digits data].
    #[arg(long, value_name = "FILE")]
    model: Option<PathBuf>,
    /// Deadline of each secure-aggregation stage, seconds.
    #[arg(long, default_value_t = 30)]
    stage_timeout: u64,
    /// Extra time clients have to train, seconds.
    #[arg(long, default_value_t = 300)]
    train_timeout: u64,
    /// Once enough clients are connected, seconds to wait for a full cohort.
    #[arg(long, default_value_t = 5)]
    gather_grace: u64,
    /// Connected clients at most.
    #[arg(long, default_value_t = 10_000)]
    max_clients: usize,
    /// Run as a long-lived server whose jobs come from the admin service on ADDR (the
    /// gateway): mutual TLS with certificates naming an administrator (`aegis certs issue
    /// --admin NAME`); jobs run one at a time and survive restarts. The job flags below are
    /// then not used.
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<SocketAddr>,
    #[command(flatten)]
    job: JobArgs,
}

/// Parses `ROUND:STAGE` (stages: advertise, share, masked, consistency, unmask).
fn parse_drop_at(s: &str) -> Result<DropAt, String> {
    let (r, st) = s
        .split_once(':')
        .ok_or_else(|| "expected ROUND:STAGE, e.g. 2:masked".to_string())?;
    let round = r.parse().map_err(|_| format!("bad round {r:?}"))?;
    Ok(DropAt {
        round,
        stage: parse_stage(st)?,
    })
}

fn parse_stage(s: &str) -> Result<Stage, String> {
    Ok(match s {
        "advertise" => Stage::AdvertiseKeys,
        "share" => Stage::ShareKeys,
        "masked" => Stage::MaskedInputCollection,
        "consistency" => Stage::ConsistencyCheck,
        "unmask" => Stage::Unmasking,
        _ => {
            return Err(format!(
                "unknown stage {s:?} (advertise, share, masked, consistency, unmask)"
            ));
        }
    })
}

#[derive(Args, Debug)]
pub(crate) struct ClientArgs {
    /// The server, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:7443")]
    server: String,
    /// The name the server's certificate must carry [default: the host of --server].
    #[arg(long)]
    server_name: Option<String>,
    /// PKI directory: ca.pem and, unless --token-file is given, clients/ID.pem and
    /// clients/ID.key.
    #[arg(long, value_name = "DIR")]
    pki: PathBuf,
    /// This client's id.
    #[arg(long)]
    id: u64,
    /// Authenticate with the bearer token in FILE (from `aegis tokens issue`) instead of a
    /// client certificate.
    #[arg(long, value_name = "FILE", requires = "identity_key")]
    token_file: Option<PathBuf>,
    /// With --token-file: the Ed25519 key (PEM) that signs this client's SecAgg messages.
    #[arg(long, value_name = "FILE", requires = "token_file")]
    identity_key: Option<PathBuf>,
    /// Local training data for the built-in softmax trainer: a digits shard encrypted at rest
    /// (as `aegis demo` writes them), decrypted in memory with the master key.
    #[arg(long, value_name = "FILE")]
    data: Option<PathBuf>,
    /// Train with an external command instead: it reads the global model from
    /// $AEGIS_GLOBAL_MODEL and writes the trained model to $AEGIS_LOCAL_MODEL (safetensors)
    /// and {"num_examples":N,"loss":L,"accuracy":A} to $AEGIS_METRICS.
    #[arg(long, value_name = "CMD", conflicts_with = "data")]
    train_cmd: Option<String>,
    /// Working directory of --train-cmd.
    #[arg(long, value_name = "DIR", default_value = ".")]
    work_dir: PathBuf,
    /// Fault drill: leave in round ROUND when asked for STAGE (advertise, share, masked,
    /// consistency, unmask), as if the process died.
    #[arg(long, value_name = "ROUND:STAGE", value_parser = parse_drop_at, hide = true)]
    drop_at: Option<DropAt>,
}

#[derive(Args, Debug)]
pub(crate) struct DemoArgs {
    /// Directory for everything the demo makes (keys, PKI, encrypted data, checkpoints);
    /// reused only if an earlier demo made it.
    #[arg(long, default_value = "aegis-demo", value_name = "DIR")]
    dir: PathBuf,
    /// Clients.
    #[arg(long, default_value_t = 10)]
    clients: u32,
    /// Rounds.
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    /// Clients that drop out (one per round from round 2, each at a different stage); each
    /// reconnects for the rounds after.
    #[arg(long, default_value_t = 1)]
    dropout: u32,
    /// Local epochs per round.
    #[arg(long, default_value_t = 2)]
    epochs: u32,
    /// Local SGD step size.
    #[arg(long, default_value_t = 0.5)]
    lr: f32,
    /// Where the gateway (API and dashboard) listens; when the port is taken, another free
    /// port is used.
    #[arg(long, default_value = "127.0.0.1:8443")]
    gateway_listen: SocketAddr,
    /// Keep the gateway and the server running after the job (until Ctrl-C), to browse the
    /// dashboard.
    #[arg(long)]
    serve: bool,
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn softmax_digits_model() -> Result<Model> {
    Ok(Model::softmax_regression(64, 10)?)
}

fn load_keys(ks: &KeyStore) -> Result<Arc<Keyset>> {
    let (keys, _) = ks
        .load()
        .context("loading the master key (run `aegis key init`)")?;
    Ok(Arc::new(keys))
}

#[derive(clap::Subcommand, Debug)]
pub(crate) enum TokensCmd {
    /// Issue a bearer token for a client: its hash (and the client's new SecAgg identity
    /// key's public half) goes into the server's token file; the token and the private key go
    /// to OUT/ID.token and OUT/ID.identity.key (0600), for the client only.
    Issue {
        /// The server's token file (created 0600 if missing).
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
        /// The client's id.
        #[arg(long)]
        client: u64,
        /// Where the client's token and identity key are written.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

pub(crate) fn tokens_cmd(cmd: TokensCmd) -> Result<ExitCode> {
    match cmd {
        TokensCmd::Issue { file, client, out } => {
            let key_path = out.join(format!("{client}.identity.key"));
            let token_path = out.join(format!("{client}.token"));
            if token_path.exists() {
                bail!("{} exists; remove it first", token_path.display());
            }
            let public = tls_pki::write_identity_key(&key_path)?;
            let token = zeroize::Zeroizing::new(TokenTable::issue(
                &file,
                aegis_transport::ClientId(client),
                &aegis_secagg::IdentityPublicKey(public),
            )?);
            let line = zeroize::Zeroizing::new(format!("{}\n", token.as_str()));
            aegis_crypto::fsutil::create_private(&token_path, line.as_bytes())?;
            println!(
                "issued a token for client {client}: {} (0600), identity key {} (0600); its hash is in {}",
                token_path.display(),
                key_path.display(),
                file.display()
            );
            println!(
                "give the client both files: aegis client --id {client} --token-file {} --identity-key {} --pki <dir with ca.pem>",
                token_path.display(),
                key_path.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

impl From<ClientAuthArg> for ClientAuth {
    fn from(a: ClientAuthArg) -> ClientAuth {
        match a {
            ClientAuthArg::Require => ClientAuth::Required,
            ClientAuthArg::Optional => ClientAuth::Optional,
            ClientAuthArg::Off => ClientAuth::Off,
        }
    }
}

/// TLS 1.3 with the PKI's server certificate, client certificates verified against its CA.
pub(crate) fn server_tls(pki: &PkiDir, auth: ClientAuth) -> Result<Arc<rustls::ServerConfig>> {
    Ok(ServerTls::from_pem_files(
        &pki.server_cert(),
        &pki.server_key(),
        auth,
        Some(&pki.ca_cert()),
    )?
    .into_config()?)
}

pub(crate) fn server_cmd(ks: &KeyStore, a: ServerArgs) -> Result<ExitCode> {
    let keys = load_keys(ks)?;
    let pki = PkiDir::new(&a.pki);
    let tls = server_tls(&pki, a.client_auth.into())?;
    let tokens = a.tokens.as_deref().map(TokenTable::load).transpose()?;
    if matches!(a.client_auth, ClientAuthArg::Off) && tokens.is_none() {
        bail!("--client-auth off needs --tokens: clients must authenticate somehow");
    }
    let mut config = ServerConfig::new(tls, a.state_dir.clone(), keys);
    config.tokens = tokens;
    config.max_clients = a.max_clients;
    config.deadlines = Deadlines {
        gather_grace: Duration::from_secs(a.gather_grace),
        stage: Duration::from_secs(a.stage_timeout),
        training: Duration::from_secs(a.train_timeout),
        ..Deadlines::default()
    };
    config.on_round = Some(Arc::new(|m: &RoundMetrics| {
        eprintln!("{}", round_line(m, None));
    }));
    if let Some(admin_addr) = a.admin_listen {
        return serve_queue(&pki, a.listen, admin_addr, config);
    }
    let model = match &a.model {
        Some(p) => {
            let bytes = std::fs::read(p).with_context(|| format!("{}", p.display()))?;
            Model::from_safetensors(&bytes).with_context(|| format!("{}", p.display()))?
        }
        None => softmax_digits_model()?,
    };
    let job = a.job.spec();
    let rt = runtime()?;
    let outcome = rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(a.listen)
            .await
            .with_context(|| format!("listening on {}", a.listen))?;
        let stop = stop_signal()?;
        eprintln!(
            "aegis server: listening on {} (TLS 1.3, client auth {:?}), job {}",
            a.listen, a.client_auth, a.job.job_id
        );
        let shutdown = async move {
            stop.await;
            note("aegis server: shutting down (the job resumes from its last checkpoint)");
        };
        Ok::<_, anyhow::Error>(aegis_server::run(listener, config, job, model, shutdown).await?)
    })?;
    println!(
        "job {}: {} of {} rounds done; global model (encrypted): {}",
        outcome.state.spec.id,
        outcome.state.rounds_done,
        outcome.state.spec.rounds,
        outcome.checkpoint.display()
    );
    Ok(if outcome.finished {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

/// A line on stderr that never panics (stderr may be a closed pipe when a service stops).
pub(crate) fn note(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// SIGINT or SIGTERM; both handlers are installed when this returns (inside a runtime).
pub(crate) fn stop_signal() -> Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}

/// `aegis server --admin-listen`: the job queue, fed by the admin service.
fn serve_queue(
    pki: &PkiDir,
    listen: SocketAddr,
    admin_addr: SocketAddr,
    config: ServerConfig,
) -> Result<ExitCode> {
    let admin_tls = server_tls(pki, ClientAuth::Required)?;
    let rt = runtime()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        let admin_listener = tokio::net::TcpListener::bind(admin_addr)
            .await
            .with_context(|| format!("listening on {admin_addr}"))?;
        let stop = stop_signal()?;
        eprintln!(
            "aegis server: clients on {listen}, admin service on {admin_addr} (TLS 1.3, mutual TLS for administrators); waiting for jobs"
        );
        let shutdown = async move {
            stop.await;
            note("aegis server: shutting down (a running job resumes after a restart)");
        };
        let admin = aegis_server::AdminEndpoint {
            listener: admin_listener,
            tls: admin_tls,
        };
        aegis_server::serve(listener, admin, config, shutdown).await?;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn client_cmd(ks: &KeyStore, a: ClientArgs) -> Result<ExitCode> {
    let pki = PkiDir::new(&a.pki);
    let cid = aegis_transport::ClientId(a.id);
    let mut opts = match (&a.token_file, &a.identity_key) {
        (Some(token_file), Some(key)) => {
            aegis_crypto::fsutil::check_private(token_file)?;
            let token = zeroize::Zeroizing::new(
                std::fs::read_to_string(token_file)
                    .with_context(|| format!("{}", token_file.display()))?
                    .trim()
                    .to_string(),
            );
            ClientOptions::with_token(&a.server, &pki.ca_cert(), token, key, cid)?
        }
        _ => ClientOptions::with_certificate(
            &a.server,
            &pki.ca_cert(),
            &pki.client_cert(cid),
            &pki.client_key(cid),
            cid,
        )?,
    };
    opts.server_name = match &a.server_name {
        Some(n) => n.clone(),
        None => host_of(&a.server)?,
    };
    opts.drop_at = a.drop_at;
    let rt = runtime()?;
    let summary = if let Some(cmd) = &a.train_cmd {
        let trainer = aegis_client::trainer::CommandTrainer::new(cmd, &a.work_dir)?;
        rt.block_on(aegis_client::net::run(opts, trainer))?
    } else {
        let Some(data) = &a.data else {
            bail!("give --data FILE (an encrypted shard) or --train-cmd CMD");
        };
        let keys = load_keys(ks)?;
        let data =
            Dataset::read_encrypted(data, &keys).with_context(|| format!("{}", data.display()))?;
        let trainer = SoftmaxTrainer {
            data,
            epochs: 2,
            batch_size: 16,
            learning_rate: 0.1,
            seed: a.id,
        };
        rt.block_on(aegis_client::net::run(opts, trainer))?
    };
    for r in &summary.rounds {
        println!(
            "round {}: {}{}",
            r.round,
            if r.completed { "completed" } else { "aborted" },
            if r.included {
                ", my update included"
            } else {
                ""
            }
        );
    }
    Ok(match summary.exit {
        Exit::JobFinished => {
            println!("the job is complete");
            ExitCode::SUCCESS
        }
        Exit::ServerStopped(reason) => {
            eprintln!("aegis client: the server stopped: {reason}");
            ExitCode::from(3)
        }
        Exit::ServerClosed => {
            eprintln!("aegis client: the server closed the connection");
            ExitCode::from(3)
        }
        Exit::Dropped(_) => ExitCode::from(3),
    })
}

/// The host part of `HOST:PORT` (`[::1]:7443` → `::1`), the name to check the certificate for.
pub(crate) fn host_of(server: &str) -> Result<String> {
    let host = match server.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map(|(h, _)| h),
        None => server.rsplit_once(':').map(|(h, _)| h),
    };
    match host {
        Some(h) if !h.is_empty() => Ok(h.to_string()),
        _ => bail!("--server {server:?}: expected HOST:PORT"),
    }
}

/// `"<count><sep><stage>"` for every stage that dropped clients.
fn drops(m: &RoundMetrics, sep: &str, close: &str) -> Vec<String> {
    STAGES
        .iter()
        .zip(m.dropped)
        .filter(|(_, d)| *d > 0)
        .map(|(s, d)| format!("{d}{sep}{s}{close}"))
        .collect()
}

/// One line per round for logs.
fn round_line(m: &RoundMetrics, test: Option<(f32, f32)>) -> String {
    let drops = drops(m, " in ", "");
    format!(
        "round {}: {} — {}/{} survived{}{}, {:.2} s",
        m.round,
        if m.completed { "completed" } else { "aborted" },
        m.survived,
        m.sampled,
        if drops.is_empty() {
            String::new()
        } else {
            format!(", dropped {}", drops.join(", "))
        },
        test.map(|(l, a)| format!(", test accuracy {a:.3} loss {l:.3}"))
            .unwrap_or_default(),
        m.seconds
    )
}

/// A string field of a JSON object ("" when absent).
fn json_str<'a>(v: &'a serde_json::Value, key: &str) -> &'a str {
    v.get(key).and_then(serde_json::Value::as_str).unwrap_or("")
}

fn human_bytes(b: u64) -> String {
    if b >= 1 << 20 {
        format!("{:.1} MiB", b as f64 / f64::from(1u32 << 20))
    } else {
        format!("{:.1} KiB", b as f64 / 1024.0)
    }
}

/// Prepares `dir`: creates it, or reuses one an earlier demo made (its contents are replaced).
fn demo_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        let empty = std::fs::read_dir(dir)
            .with_context(|| format!("{}", dir.display()))?
            .next()
            .is_none();
        if !empty {
            if !dir.join(DEMO_MARKER).exists() {
                bail!(
                    "{} exists and was not made by `aegis demo`; choose another --dir",
                    dir.display()
                );
            }
            for sub in [
                "pki",
                "clients",
                "state",
                "aegis_key.key",
                "aegis_key.key.keyset",
                "gateway.db",
                "gateway.db-wal",
                "gateway.db-shm",
            ] {
                let p = dir.join(sub);
                if p.is_dir() {
                    std::fs::remove_dir_all(&p).with_context(|| format!("{}", p.display()))?;
                } else if p.exists() {
                    std::fs::remove_file(&p).with_context(|| format!("{}", p.display()))?;
                }
            }
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
    std::fs::write(dir.join(DEMO_MARKER), b"made by aegis demo\n")
        .with_context(|| format!("{}", dir.display()))?;
    Ok(())
}

const DROP_STAGES: [Stage; 5] = [
    Stage::MaskedInputCollection,
    Stage::ShareKeys,
    Stage::ConsistencyCheck,
    Stage::AdvertiseKeys,
    Stage::Unmasking,
];

pub(crate) fn demo_cmd(a: DemoArgs) -> Result<ExitCode> {
    let started = Instant::now();
    if a.clients < 3 {
        bail!("--clients must be at least 3");
    }
    if a.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    if a.dropout > a.clients.saturating_sub(3) {
        bail!(
            "--dropout leaves fewer than 3 clients; at most {}",
            a.clients - 3
        );
    }
    let dir = a.dir.clone();
    demo_dir(&dir)?;

    // 1. A master key in a key file of the demo directory (the OS keyring is left alone).
    let ks = KeyStore::new(StoreConfig {
        backend: Backend::File,
        key_file: dir.join("aegis_key.key"),
        ..StoreConfig::default()
    });
    let (keys, _) = ks.init().context("creating the demo's master key")?;
    let keys = Arc::new(keys);

    // 2. A development PKI: CA, server certificate, one certificate per client.
    let pki = tls_pki::init(&dir.join("pki"), &tls_pki::default_server_sans(), false)?;
    for id in 1..=u64::from(a.clients) {
        tls_pki::issue_client(pki.dir(), aegis_transport::ClientId(id), false)?;
    }
    tls_pki::issue_admin(pki.dir(), "gateway", false)?;

    // 3. Data: the digits set split 80/20; the 80% dealt out non-IID (≤ 2 labels per client),
    //    each shard encrypted at rest.
    let all = parse_digits_csv(flate2::read::GzDecoder::new(DIGITS_GZ))?;
    let (train, test) = all.train_test_split(1, 0.2)?;
    let shards = split_non_iid(&train, a.clients as usize, 42)?;
    let mut shard_paths = Vec::new();
    for (i, shard) in shards.iter().enumerate() {
        let d = dir.join("clients").join((i + 1).to_string());
        std::fs::create_dir_all(&d).with_context(|| format!("{}", d.display()))?;
        let p = d.join("train.aegis");
        shard.write_encrypted(&p, keys.primary())?;
        shard_paths.push(p);
    }
    drop(shards);
    println!(
        "aegis demo: {} clients, {} rounds, {} dropout(s); everything in {}",
        a.clients,
        a.rounds,
        a.dropout,
        dir.display()
    );
    println!(
        "  keys: {} (0600) · PKI: {} · data: {} encrypted shards of {} digits (test set: {})",
        dir.join("aegis_key.key").display(),
        pki.dir().display(),
        a.clients,
        train.len(),
        test.len()
    );

    // 4. The FL server (jobs from its admin service) and the gateway, over TLS 1.3 on
    //    127.0.0.1; the job goes through the gateway's API like any scientist's.
    let state_dir = dir.join("state");
    let job_request = serde_json::json!({
        "name": "digits demo",
        "model": {"kind": "softmax_regression", "inputs": 64, "classes": 10},
        "rounds": a.rounds,
        "cohort_size": a.clients,
        "min_clients": 3,
        "secagg": {"max_weight": 1000},
        "train": {"epochs": a.epochs, "batch_size": 16, "learning_rate": a.lr},
    });
    let (round_tx, mut round_rx) = tokio::sync::mpsc::unbounded_channel::<RoundMetrics>();
    let mut config = ServerConfig::new(
        server_tls(&pki, ClientAuth::Required)?,
        state_dir.clone(),
        Arc::clone(&keys),
    );
    config.deadlines = Deadlines {
        gather_grace: Duration::from_secs(5),
        stage: Duration::from_secs(20),
        training: Duration::from_secs(60),
        ..Deadlines::default()
    };
    config.on_round = Some(Arc::new(move |m: &RoundMetrics| {
        let _ = round_tx.send(m.clone());
    }));

    let rt = runtime()?;
    let (job_id, rounds_done) = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let admin_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let admin_addr = admin_listener.local_addr()?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let mut server = tokio::spawn(aegis_server::serve(
            listener,
            aegis_server::AdminEndpoint {
                listener: admin_listener,
                tls: server_tls(&pki, ClientAuth::Required)?,
            },
            config,
            stopped(stop_rx.clone()),
        ));
        let gw = crate::gateway::start_demo_gateway(
            &dir,
            &pki,
            a.gateway_listen,
            admin_addr,
            server_tls(&pki, ClientAuth::Optional)?,
            stopped(stop_rx.clone()),
        )
        .await?;
        println!("  FL server: {addr} (TLS 1.3 only, mutual TLS, SecAgg+) · admin service: {admin_addr}");
        println!(
            "  gateway:   https://localhost:{}/ (TLS 1.3 only; API, OpenAPI at /docs, dashboard)",
            gw.addr.port()
        );
        let created = gw.api.request("POST", "/v1/jobs", Some(&job_request)).await?;
        if created.status != 201 {
            bail!(
                "the gateway refused the job ({}): {}",
                created.status,
                String::from_utf8_lossy(&created.body)
            );
        }
        let created = created.json()?;
        let job_id = json_str(&created, "id").to_string();
        if job_id.is_empty() {
            bail!("the gateway's answer has no job id");
        }
        println!("  job {job_id} submitted through POST /v1/jobs\n");
        let mut clients = Vec::new();
        for (i, path) in shard_paths.iter().enumerate() {
            let id = i as u64 + 1;
            let cid = aegis_transport::ClientId(id);
            let mut opts = ClientOptions::with_certificate(
                &addr.to_string(),
                &pki.ca_cert(),
                &pki.client_cert(cid),
                &pki.client_key(cid),
                cid,
            )?;
            // The last `dropout` clients leave, one per round from round 2.
            let k = u64::from(a.clients) - id;
            if k < u64::from(a.dropout) {
                opts.drop_at = Some(DropAt {
                    round: 2 + k as u32,
                    stage: DROP_STAGES
                        .get(k as usize % DROP_STAGES.len())
                        .copied()
                        .unwrap_or(Stage::MaskedInputCollection),
                });
            }
            let path = path.clone();
            let keys = Arc::clone(&keys);
            clients.push(tokio::spawn(async move {
                let trainer = |keys: &Keyset| -> aegis_client::Result<SoftmaxTrainer> {
                    Ok(SoftmaxTrainer {
                        data: Dataset::read_encrypted(&path, keys)?,
                        epochs: 2,
                        batch_size: 16,
                        learning_rate: 0.1,
                        seed: id,
                    })
                };
                let first = aegis_client::net::run(opts.clone(), trainer(&keys)?).await?;
                if let Exit::Dropped(_) = first.exit {
                    // A dropped client comes back (a new connection) for the next rounds.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let again = ClientOptions {
                        drop_at: None,
                        ..opts
                    };
                    return aegis_client::net::run(again, trainer(&keys)?).await;
                }
                Ok(first)
            }));
        }
        print_header();
        let dirp = aegis_server::JobDir::new(&state_dir, &job_id);
        let mut rounds_seen = 0;
        while rounds_seen < a.rounds {
            let m = tokio::select! {
                m = round_rx.recv() => m.context("the server stopped")?,
                res = &mut server => match res? {
                    Ok(()) => bail!("the FL server stopped before the job ended"),
                    Err(e) => return Err(e.into()),
                },
            };
            let test_metrics = if m.completed {
                let model = dirp.read_checkpoint(&aegis_server::JobDir::checkpoint_name(m.round), &keys)?;
                Some(evaluate(&model, &test)?)
            } else {
                None
            };
            print_row(&m, test_metrics);
            rounds_seen += 1;
        }
        // The job's status, as the gateway reports it.
        let deadline = Instant::now() + Duration::from_secs(30);
        let job = loop {
            let got = gw.api.request("GET", &format!("/v1/jobs/{job_id}"), None).await?;
            let job = got.json()?;
            if !["running", "queued"].contains(&json_str(&job, "status")) {
                break job;
            }
            if Instant::now() > deadline {
                bail!("job {job_id} did not end in time");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        if json_str(&job, "status") != "completed" {
            bail!(
                "job {job_id} ended as {}: {}",
                json_str(&job, "status"),
                json_str(&job, "error")
            );
        }
        let rounds_done = job
            .get("rounds_done")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        println!("\ndashboard: {}", gw.dashboard_url());
        println!(
            "  (the certificate is from the demo's CA, {}: trust it in the browser or accept the warning; the token in the link is an admin token of this demo)",
            pki.ca_cert().display()
        );
        if a.serve {
            println!("serving until Ctrl-C (or SIGTERM) …");
            stop_signal()?.await;
        }
        let _ = stop_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(15), gw.task).await;
        match tokio::time::timeout(Duration::from_secs(15), server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => return Err(e.into()),
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => bail!("the server did not stop in time"),
        }
        for c in clients {
            // Clients end when the server stops; the job is over.
            let _ = tokio::time::timeout(Duration::from_secs(5), c).await;
        }
        Ok::<_, anyhow::Error>((job_id, rounds_done))
    })?;
    let checkpoint = aegis_server::JobDir::new(&state_dir, &job_id)
        .path()
        .join(aegis_server::JobDir::checkpoint_name(rounds_done as u32));
    let key_file = dir.join("aegis_key.key");
    println!(
        "global model after round {rounds_done}: {} (safetensors, AES-256-GCM v2 at rest)",
        checkpoint.display()
    );
    println!(
        "decrypt it: aegis --keystore file --key-file {} decrypt {} -o model.safetensors",
        key_file.display(),
        checkpoint.display()
    );
    println!("done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(ExitCode::SUCCESS)
}

fn print_header() {
    println!(
        "{:>5}  {:>9}  {:>10}  {:<22}  {:>8}  {:>9}  {:>9}  {:>7}  {:>9}  {:>9}",
        "round",
        "status",
        "survivors",
        "dropouts (stage)",
        "test acc",
        "test loss",
        "local acc",
        "time s",
        "sent",
        "received"
    );
}

fn print_row(m: &RoundMetrics, test: Option<(f32, f32)>) {
    let drops = drops(m, " (", ")");
    let (loss, acc) = test.map_or(("–".to_string(), "–".to_string()), |(l, a)| {
        (format!("{l:.3}"), format!("{a:.3}"))
    });
    println!(
        "{:>5}  {:>9}  {:>10}  {:<22}  {:>8}  {:>9}  {:>9}  {:>7.2}  {:>9}  {:>9}",
        m.round,
        if m.completed { "ok" } else { "aborted" },
        format!("{}/{}", m.survived, m.sampled),
        if drops.is_empty() {
            "0".to_string()
        } else {
            drops.join(", ")
        },
        acc,
        loss,
        m.accuracy.map_or("–".to_string(), |a| format!("{a:.3}")),
        m.seconds,
        human_bytes(m.bytes_sent),
        human_bytes(m.bytes_received)
    );
    if !std::io::stdout().is_terminal() {
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
    }
}
