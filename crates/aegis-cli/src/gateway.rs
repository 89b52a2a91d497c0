//! `aegis gateway`: the HTTPS control plane, its first admin token, and the audit log check.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use aegis_gateway::{Db, GatewayConfig, Role};
use aegis_transport::ClientTls;
use aegis_transport::pki::{Ca, PkiDir};
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};

use crate::fl::{ClientAuthArg, host_of, note, runtime, server_tls, stop_signal};

/// Default database: a SQLite file in the working directory.
const DEFAULT_DATABASE: &str = "sqlite:aegis-gateway.db";

#[derive(Subcommand, Debug)]
pub(crate) enum GatewayCmd {
    /// Serve the API and the dashboard over HTTPS (TLS 1.3 only).
    Serve(ServeArgs),
    /// Issue a token straight into the database (the first admin token, or a recovery); it is
    /// printed once on stdout and stored only as a hash.
    Token(TokenArgs),
    /// The audit log.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Print the OpenAPI 3 document (the same as GET /openapi.json).
    Openapi,
}

#[derive(Subcommand, Debug)]
pub(crate) enum AuditCmd {
    /// Walk the hash chain; exit 1 naming the first entry that was changed, removed or
    /// inserted. Prints the head hash: keep it elsewhere to detect a rewritten chain.
    Verify {
        /// Database URL: sqlite:PATH or postgres://USER:PASSWORD@HOST/DB.
        #[arg(long, env = "AEGIS_GATEWAY_DATABASE", default_value = DEFAULT_DATABASE, hide_env_values = true)]
        database: String,
    },
}

#[derive(Args, Debug)]
pub(crate) struct TokenArgs {
    /// Database URL: sqlite:PATH or postgres://USER:PASSWORD@HOST/DB.
    #[arg(long, env = "AEGIS_GATEWAY_DATABASE", default_value = DEFAULT_DATABASE, hide_env_values = true)]
    database: String,
    /// admin or scientist (client tokens come from enrolment).
    #[arg(long, value_enum)]
    role: RoleArg,
    /// Who holds it (the audit log's actor).
    #[arg(long)]
    name: String,
    /// Lifetime in seconds [default: until revoked].
    #[arg(long, value_name = "SECS")]
    expires_in: Option<u64>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum RoleArg {
    Admin,
    Scientist,
}

#[derive(Args, Debug)]
pub(crate) struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    /// Database URL: sqlite:PATH (created if missing) or postgres://USER:PASSWORD@HOST/DB.
    /// Prefer the environment variable for URLs with a password.
    #[arg(long, env = "AEGIS_GATEWAY_DATABASE", default_value = DEFAULT_DATABASE, hide_env_values = true)]
    database: String,
    /// PKI directory: server.pem/server.key (the gateway's HTTPS certificate), ca.pem (client
    /// certificates and the FL server are verified against it), ca.key if present (signs
    /// enrolled clients' CSRs), admins/NAME.pem/.key (the gateway's certificate for the FL
    /// server's admin service).
    #[arg(long, value_name = "DIR")]
    pki: PathBuf,
    /// Client certificates on HTTPS: require, optional or off (a bearer token is needed in
    /// every mode).
    #[arg(long, value_enum, default_value = "optional")]
    mtls: ClientAuthArg,
    /// The FL server's admin service, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:7444")]
    fl_admin: String,
    /// The name the FL server's certificate must carry [default: the host of --fl-admin].
    #[arg(long)]
    fl_admin_name: Option<String>,
    /// Which administrator certificate in PKI/admins/ the gateway presents.
    #[arg(long, default_value = "gateway")]
    admin_name: String,
    /// Largest request body, bytes (larger: 413).
    #[arg(long, default_value_t = aegis_gateway::DEFAULT_MAX_BODY)]
    max_body: usize,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Role {
        match r {
            RoleArg::Admin => Role::Admin,
            RoleArg::Scientist => Role::Scientist,
        }
    }
}

pub(crate) fn gateway_cmd(cmd: GatewayCmd) -> Result<ExitCode> {
    match cmd {
        GatewayCmd::Serve(a) => serve(a),
        GatewayCmd::Token(a) => token(a),
        GatewayCmd::Audit(AuditCmd::Verify { database }) => verify(&database),
        GatewayCmd::Openapi => {
            println!("{}", aegis_gateway::openapi_json());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn token(a: TokenArgs) -> Result<ExitCode> {
    let rt = runtime()?;
    rt.block_on(async {
        aegis_gateway::auth::check_token_request(&a.name, a.expires_in)
            .map_err(|m| anyhow::anyhow!(m))?;
        let db = Db::connect(&a.database).await?;
        let token = aegis_gateway::auth::issue_stored_token(
            &db,
            &a.name,
            a.role.into(),
            None,
            a.expires_in,
        )
        .await?;
        db.audit(
            "cli",
            "token.issue",
            &token.0.id,
            "success",
            &format!(
                "name={:?} role={} (command line)",
                a.name,
                Role::from(a.role).as_str()
            ),
        )
        .await?;
        db.close().await;
        eprintln!(
            "token {} ({}) for {}: shown once, stored only as a hash",
            token.0.id,
            Role::from(a.role).as_str(),
            a.name
        );
        println!("{}", token.1.as_str());
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

fn verify(database: &str) -> Result<ExitCode> {
    let rt = runtime()?;
    let report = rt.block_on(async {
        let db = Db::connect_existing(database).await?;
        let r = db.verify_audit().await;
        db.close().await;
        Ok::<_, anyhow::Error>(r?)
    })?;
    match &report.first_error {
        None => {
            println!(
                "audit log intact: {} entries, head {}",
                report.entries, report.head
            );
            Ok(ExitCode::SUCCESS)
        }
        Some((seq, why)) => {
            eprintln!(
                "aegis: error: audit log TAMPERED at entry {seq}: {why} ({} entries checked)",
                report.entries
            );
            Ok(ExitCode::from(1))
        }
    }
}

/// Appends `key.rotate` to the gateway's audit log.
pub(crate) fn audit_key_rotation(url: &str, old: &str, new: &str) -> Result<()> {
    let actor = std::env::var("USER").unwrap_or_else(|_| "cli".into());
    runtime()?.block_on(async {
        let db = Db::connect(url).await?;
        db.audit(
            &format!("{actor} (command line)"),
            "key.rotate",
            new,
            "success",
            &format!("new primary key {new}; {old} retained for decryption"),
        )
        .await?;
        db.close().await;
        Ok(())
    })
}

fn serve(a: ServeArgs) -> Result<ExitCode> {
    let pki = PkiDir::new(&a.pki);
    let tls = server_tls(&pki, a.mtls.into())?;
    let ca = if pki.ca_key().exists() {
        Some(Ca::load(&a.pki).context("loading the CA (for enrolment)")?)
    } else {
        None
    };
    let (admin_cert, admin_key) = (pki.admin_cert(&a.admin_name), pki.admin_key(&a.admin_name));
    if !admin_cert.exists() {
        bail!(
            "{} is missing: issue it with `aegis certs issue --dir {} --admin {}`",
            admin_cert.display(),
            a.pki.display(),
            a.admin_name
        );
    }
    let fl_tls = ClientTls::from_pem_files(&pki.ca_cert(), Some((&admin_cert, &admin_key)))?
        .into_config()?;
    let fl_name = match &a.fl_admin_name {
        Some(n) => n.clone(),
        None => host_of(&a.fl_admin)?,
    };
    let rt = runtime()?;
    rt.block_on(async move {
        let db = Db::connect(&a.database).await?;
        let channel = aegis_client::net::lazy_channel(fl_tls, &a.fl_admin, &fl_name, Duration::from_secs(5))?;
        let fl = aegis_gateway::fl::FlAdmin::new(channel, aegis_server::DEFAULT_MAX_MESSAGE);
        let listener = tokio::net::TcpListener::bind(a.listen)
            .await
            .with_context(|| format!("listening on {}", a.listen))?;
        // Signals are handled before anyone is told the gateway is up.
        let stop = stop_signal()?;
        eprintln!(
            "aegis gateway: https://{}/ (TLS 1.3, client certificates {:?}, {} database), FL server admin at {}",
            a.listen,
            a.mtls,
            db.kind(),
            a.fl_admin
        );
        let config = GatewayConfig {
            tls,
            db,
            fl,
            ca,
            max_body: a.max_body,
            acceptor: aegis_transport::AcceptorConfig::default(),
            idle_timeout: aegis_gateway::serve::HEADER_READ_TIMEOUT,
        };
        aegis_gateway::serve(listener, config, async move {
            stop.await;
            note("aegis gateway: shutting down");
        })
        .await?;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The gateway of `aegis demo`, running.
pub(crate) struct DemoGateway {
    pub(crate) addr: std::net::SocketAddr,
    pub(crate) api: aegis_gateway::client::ApiClient,
    pub(crate) task: tokio::task::JoinHandle<aegis_gateway::Result<()>>,
    token: zeroize::Zeroizing<String>,
}

impl DemoGateway {
    /// The dashboard, signed in with the demo's admin token.
    pub(crate) fn dashboard_url(&self) -> String {
        format!(
            "https://localhost:{}/#token={}",
            self.addr.port(),
            self.token.as_str()
        )
    }
}

/// Starts the demo's gateway: SQLite in `dir`, an admin token, the FL server's admin service
/// at `fl_admin`; listens on `listen`, or on a free port when that one is taken.
pub(crate) async fn start_demo_gateway(
    dir: &std::path::Path,
    pki: &PkiDir,
    listen: SocketAddr,
    fl_admin: SocketAddr,
    tls: std::sync::Arc<rustls::ServerConfig>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<DemoGateway> {
    let db = Db::connect(&format!("sqlite:{}", dir.join("gateway.db").display())).await?;
    let (_, token) =
        aegis_gateway::auth::issue_stored_token(&db, "demo", Role::Admin, None, None).await?;
    db.audit(
        "cli",
        "token.issue",
        "demo",
        "success",
        "aegis demo's admin token",
    )
    .await?;
    let fl_tls = ClientTls::from_pem_files(
        &pki.ca_cert(),
        Some((&pki.admin_cert("gateway"), &pki.admin_key("gateway"))),
    )?
    .into_config()?;
    let channel = aegis_client::net::lazy_channel(
        fl_tls,
        &fl_admin.to_string(),
        "localhost",
        Duration::from_secs(5),
    )?;
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(_) => tokio::net::TcpListener::bind((listen.ip(), 0)).await?,
    };
    let addr = listener.local_addr()?;
    let config = GatewayConfig {
        tls,
        db,
        fl: aegis_gateway::fl::FlAdmin::new(channel, aegis_server::DEFAULT_MAX_MESSAGE),
        ca: Some(Ca::load(pki.dir())?),
        max_body: aegis_gateway::DEFAULT_MAX_BODY,
        acceptor: aegis_transport::AcceptorConfig::default(),
        idle_timeout: aegis_gateway::serve::HEADER_READ_TIMEOUT,
    };
    let task = tokio::spawn(aegis_gateway::serve(listener, config, shutdown));
    let roots = ClientTls::from_pem_files(&pki.ca_cert(), None)?.into_config()?;
    let api = aegis_gateway::client::ApiClient::new(roots, addr, "localhost", token.clone());
    Ok(DemoGateway {
        addr,
        api,
        task,
        token,
    })
}
