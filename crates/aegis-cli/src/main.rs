//! `aegis` — the one command of AEGIS: keys, encryption at rest, re-encryption, development
//! TLS certificates.
//!
//! Errors are one line on stderr with a non-zero exit; progress bars appear on long work when
//! stderr is a terminal. Settings come from flags, then `AEGIS_*` environment variables.

#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use aegis_crypto::file::{self, Input, Output};
use aegis_crypto::keyset::KeyStatus;
use aegis_crypto::reencrypt;
use aegis_crypto::store::{Backend, KeyStore, LockMode, StoreConfig};
use aegis_crypto::{Format, KeyId, Keyset, v2};
use aegis_transport::identity::parse_client_id;
use aegis_transport::pki as tls_pki;
use aegis_transport::{ClientId, ClientIdExt};
use anyhow::{Context, Result, bail};
use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// mimalloc instead of the system allocator (see bench/gateway.sh).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod fl;
mod gateway;

/// AEGIS: encryption at rest and key management for federated learning.
#[derive(Parser, Debug)]
#[command(name = "aegis", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    store: StoreArgs,
    #[command(subcommand)]
    cmd: Cmd,
}

// Settings that also come from the environment are read by hand (not with clap's `env`), so
// that an empty variable means "unset" instead of an error.
#[derive(Args, Debug)]
struct StoreArgs {
    /// Where the master keys live: the OS keyring when usable, else the key file (auto); or
    /// only one of them [env: AEGIS_KEYSTORE] [default: auto]
    #[arg(long, global = true, value_enum)]
    keystore: Option<KeystoreArg>,
    /// The key file (the primary key, URL-safe Base64); the keyset document is PATH.keyset
    /// [env: AEGIS_KEY_FILE] [default: aegis_key.key]
    #[arg(long, global = true)]
    key_file: Option<PathBuf>,
    /// Accept key files that group or others can read (not recommended).
    #[arg(
        long,
        global = true,
        env = "AEGIS_ALLOW_LOOSE_PERMISSIONS",
        action = clap::ArgAction::SetTrue,
        value_parser = clap::builder::FalseyValueParser::new()
    )]
    allow_loose_permissions: bool,
    /// OS keyring service name of the master key [env: AEGIS_KEYRING_SERVICE] [default:
    /// aegis_core]
    #[arg(long, global = true)]
    keyring_service: Option<String>,
    /// OS keyring user name of the primary key (the keyset document is USER/keyset) [env:
    /// AEGIS_KEYRING_USER] [default: aegis_master_key_v2]
    #[arg(long, global = true)]
    keyring_user: Option<String>,
}

/// The value of an environment variable, `None` when unset or empty.
fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl StoreArgs {
    fn key_file(&self) -> PathBuf {
        self.key_file
            .clone()
            .or_else(|| env_nonempty("AEGIS_KEY_FILE").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(aegis_crypto::store::DEFAULT_KEY_FILE))
    }

    fn config(&self) -> Result<StoreConfig> {
        let backend = match self.keystore {
            Some(k) => k,
            None => match env_nonempty("AEGIS_KEYSTORE") {
                None => KeystoreArg::Auto,
                Some(v) => KeystoreArg::from_str(&v, true).map_err(|_| {
                    anyhow::anyhow!("AEGIS_KEYSTORE={v}: expected auto, keyring or file")
                })?,
            },
        };
        Ok(StoreConfig {
            backend: match backend {
                KeystoreArg::Auto => Backend::Auto,
                KeystoreArg::Keyring => Backend::Keyring,
                KeystoreArg::File => Backend::File,
            },
            key_file: self.key_file(),
            allow_loose_permissions: self.allow_loose_permissions,
            service: self
                .keyring_service
                .clone()
                .or_else(|| env_nonempty("AEGIS_KEYRING_SERVICE"))
                .unwrap_or_else(|| aegis_crypto::store::SERVICE.to_string()),
            user: self
                .keyring_user
                .clone()
                .or_else(|| env_nonempty("AEGIS_KEYRING_USER"))
                .unwrap_or_else(|| aegis_crypto::store::PRIMARY_USER.to_string()),
        })
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum KeystoreArg {
    Auto,
    Keyring,
    File,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Manage master keys.
    #[command(subcommand)]
    Key(KeyCmd),
    /// Encrypt a file (or stdin, as `-`).
    Encrypt(EncryptArgs),
    /// Decrypt a v1 or v2 file (or stdin, as `-`); nothing is written unless it authenticates.
    Decrypt(DecryptArgs),
    /// Bring every encrypted file under DIRs to the primary key (crash-safe, resumable).
    Reencrypt(ReencryptArgs),
    /// Show the format, key id and sizes of encrypted files (no key needed, no secrets shown).
    Inspect {
        /// Files to describe.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// A development PKI for TLS: a CA, the server certificate, client certificates.
    #[command(subcommand)]
    Certs(CertsCmd),
    /// Bearer tokens for FL clients without certificates.
    #[command(subcommand)]
    Tokens(fl::TokensCmd),
    /// Run the FL server: a job of FedAvg rounds with secure aggregation over TLS 1.3,
    /// checkpoints encrypted at rest; resumes the job after a restart.
    Server(fl::ServerArgs),
    /// The gateway: HTTPS control plane (jobs, enrolment, tokens, audit log, dashboard).
    #[command(subcommand)]
    Gateway(gateway::GatewayCmd),
    /// Run an FL client: train locally on encrypted data, send only masked updates.
    Client(fl::ClientArgs),
    /// Everything at once on this machine: keys, PKI, encrypted non-IID digits shards, a server
    /// and clients over TLS 1.3 on 127.0.0.1, rounds with a dropout; prints a table per round.
    Demo(fl::DemoArgs),
}

#[derive(Subcommand, Debug)]
enum CertsCmd {
    /// Create a CA (ca.pem, ca.key) and a server certificate (server.pem, server.key) in DIR;
    /// refused if DIR already has them, unless --force. Keys are written 0600.
    Init {
        /// The PKI directory (created 0700 if missing).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// A name of the server: DNS name or IP address (repeatable) [default: localhost,
        /// 127.0.0.1, ::1].
        #[arg(long = "san", value_name = "NAME")]
        sans: Vec<String>,
        /// Replace an existing CA and server certificate (client certificates of the old CA
        /// are then refused).
        #[arg(long)]
        force: bool,
    },
    /// Issue a client certificate (clients/ID.pem, clients/ID.key), an administrator
    /// certificate (admins/NAME.pem, .key: `--admin gateway` for the gateway) or a new server
    /// certificate from the CA in DIR.
    Issue(IssueArgs),
}

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("subject").required(true).args(["client", "server", "admin"])))]
struct IssueArgs {
    /// The PKI directory (made by `aegis certs init`).
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// A client certificate for client ID (a u64): URI SAN aegis://client/ID, CN
    /// aegis-client-ID.
    #[arg(long, value_name = "ID", value_parser = parse_client_id)]
    client: Option<ClientId>,
    /// A new server certificate (server.pem, server.key).
    #[arg(long)]
    server: bool,
    /// An administrator certificate (admins/NAME.pem, admins/NAME.key) for the FL server's
    /// admin service, e.g. `--admin gateway` for the gateway: URI SAN aegis://admin/NAME.
    #[arg(long, value_name = "NAME")]
    admin: Option<String>,
    /// With --server: a name of the server, DNS name or IP address (repeatable) [default:
    /// localhost, 127.0.0.1, ::1].
    #[arg(long = "san", value_name = "NAME", conflicts_with = "client")]
    sans: Vec<String>,
    /// Replace the certificate and key if they exist.
    #[arg(long)]
    force: bool,
}

#[derive(Subcommand, Debug)]
enum KeyCmd {
    /// Create the first master key (in the OS keyring when usable, else in the key file).
    Init,
    /// List the keys: id, status, creation time, where they are stored.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Make a new primary key; the old one stays for decryption. Then run `aegis reencrypt`.
    Rotate {
        /// Record the rotation in the gateway's audit log (sqlite:PATH or postgres://…).
        #[arg(
            long,
            env = "AEGIS_GATEWAY_DATABASE",
            hide_env_values = true,
            value_name = "URL"
        )]
        audit_database: Option<String>,
    },
    /// Stop using a retained key; refused while any file under the roots still needs it.
    Retire {
        /// The key id (16 hex digits, see `aegis key status`).
        id: KeyId,
        /// Directories whose files are checked (all of them; at least one).
        #[arg(long = "root", required = true)]
        roots: Vec<PathBuf>,
    },
    /// Undo `retire`.
    Reinstate {
        /// The key id.
        id: KeyId,
    },
    /// Erase a retired key for good (crypto-shredding): files still under it become unreadable.
    Destroy {
        /// The key id.
        id: KeyId,
        /// Repeat the key id to confirm.
        #[arg(long, value_name = "ID")]
        confirm: Option<KeyId>,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum FormatArg {
    /// NONCE ‖ CIPHERTEXT ‖ TAG, readable by the Python system.
    V1,
    /// Chunked stream with a header (default).
    V2,
}

#[derive(Args, Debug)]
struct EncryptArgs {
    /// Input file, or `-` for stdin.
    input: PathBuf,
    /// Output file, or `-` for stdout [default: INPUT.enc, stdout for stdin].
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "v2")]
    format: FormatArg,
    /// v2 chunk size in KiB (a power of two, 4..=16384).
    #[arg(long, default_value_t = 64)]
    chunk_kib: u32,
    /// Replace the output file if it exists.
    #[arg(short, long)]
    force: bool,
}

#[derive(Args, Debug)]
struct DecryptArgs {
    /// Input file, or `-` for stdin.
    input: PathBuf,
    /// Output file, or `-` for stdout [default: INPUT without `.enc`, stdout for stdin].
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Replace the output file if it exists.
    #[arg(short, long)]
    force: bool,
}

#[derive(Args, Debug)]
struct ReencryptArgs {
    /// Directories (or files) to process, recursively.
    #[arg(required = true)]
    roots: Vec<PathBuf>,
    /// Turn v1 blobs into v2 files (the Python system can then no longer read them).
    #[arg(long)]
    migrate_v1: bool,
    /// Only report what would be done.
    #[arg(long)]
    dry_run: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("AEGIS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .without_time()
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            // One line: the chain joined, no backtrace.
            let msg = e
                .chain()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(": ");
            eprintln!("aegis: error: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// `--help` and `--version` print as usual; a usage error is one line (the first of clap's
/// message) with exit code 2.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        };
    }
    // clap's message is "error: …" possibly continued on indented lines, then a blank line and
    // usage; keep the message, on one line.
    let text = e.render().to_string();
    let msg = text
        .lines()
        .take_while(|l| !l.trim().is_empty() && !l.starts_with("Usage:"))
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ");
    let msg = msg.trim_start_matches("error: ");
    eprintln!("aegis: error: {msg} (see `aegis --help`)");
    ExitCode::from(2)
}

fn run(cli: Cli) -> Result<ExitCode> {
    // Certificates need no master key: no key-store settings are read for them.
    let cli = match cli.cmd {
        Cmd::Certs(c) => return certs_cmd(c),
        // The demo makes its own key file; it never touches the configured key store.
        Cmd::Demo(a) => return fl::demo_cmd(a),
        Cmd::Tokens(t) => return fl::tokens_cmd(t),
        Cmd::Gateway(g) => return gateway::gateway_cmd(g),
        cmd => Cli { cmd, ..cli },
    };
    let ks = KeyStore::new(cli.store.config()?);
    match cli.cmd {
        Cmd::Key(k) => key_cmd(&ks, &cli.store, k),
        Cmd::Encrypt(a) => encrypt(&ks, a),
        Cmd::Decrypt(a) => decrypt(&ks, a),
        Cmd::Reencrypt(a) => reencrypt_cmd(&ks, &cli.store, a),
        Cmd::Inspect { files } => inspect(&files),
        Cmd::Certs(c) => certs_cmd(c),
        Cmd::Server(a) => fl::server_cmd(&ks, a),
        Cmd::Client(a) => fl::client_cmd(&ks, a),
        Cmd::Demo(a) => fl::demo_cmd(a),
        Cmd::Tokens(t) => fl::tokens_cmd(t),
        Cmd::Gateway(g) => gateway::gateway_cmd(g),
    }
}

/// The given server names, or the defaults.
fn sans_or_default(sans: Vec<String>) -> Vec<String> {
    if sans.is_empty() {
        tls_pki::default_server_sans()
    } else {
        sans
    }
}

fn certs_cmd(cmd: CertsCmd) -> Result<ExitCode> {
    match cmd {
        CertsCmd::Init { dir, sans, force } => {
            let sans = sans_or_default(sans);
            let had_ca = tls_pki::PkiDir::new(&dir).ca_key().exists();
            let pki = tls_pki::init(&dir, &sans, force)?;
            println!(
                "created CA {} (key {}, 0600)",
                pki.ca_cert().display(),
                pki.ca_key().display()
            );
            println!(
                "created server certificate {} for {} (key {}, 0600)",
                pki.server_cert().display(),
                sans.join(", "),
                pki.server_key().display()
            );
            if had_ca && pki.clients_dir().exists() {
                println!(
                    "note: client certificates in {} are from the replaced CA; issue them again",
                    pki.clients_dir().display()
                );
            }
            println!(
                "next: `aegis certs issue --dir {} --client ID` for each client",
                dir.display()
            );
        }
        CertsCmd::Issue(a) => match a.client {
            None if a.admin.is_some() => {
                let name = a.admin.unwrap_or_default();
                let (cert, key) = tls_pki::issue_admin(&a.dir, &name, a.force)?;
                println!(
                    "issued administrator certificate {} for aegis://admin/{name} (key {}, 0600)",
                    cert.display(),
                    key.display()
                );
            }
            Some(id) => {
                let (cert, key) = tls_pki::issue_client(&a.dir, id, a.force)?;
                println!(
                    "issued client certificate {} for {} (key {}, 0600)",
                    cert.display(),
                    id.uri(),
                    key.display()
                );
            }
            None => {
                let sans = sans_or_default(a.sans);
                let (cert, key) = tls_pki::issue_server(&a.dir, &sans, a.force)?;
                println!(
                    "issued server certificate {} for {} (key {}, 0600)",
                    cert.display(),
                    sans.join(", "),
                    key.display()
                );
            }
        },
    }
    Ok(ExitCode::SUCCESS)
}

fn key_cmd(store: &KeyStore, args: &StoreArgs, cmd: KeyCmd) -> Result<ExitCode> {
    match cmd {
        KeyCmd::Init => {
            let (keys, loc) = store.init()?;
            println!("created primary key {} in {loc}", keys.primary_id());
        }
        KeyCmd::Status { json } => {
            let (keys, loc) = store.load()?;
            print_status(&keys, &loc.to_string(), json)?;
        }
        KeyCmd::Rotate { audit_database } => {
            let ((old, new), _, loc) = store.update(|keys| {
                let old = keys.primary_id();
                Ok((old, keys.rotate()?))
            })?;
            println!("new primary key {new} in {loc}; {old} is retained for decryption");
            if let Some(url) = audit_database {
                gateway::audit_key_rotation(&url, &old.to_string(), &new.to_string())
                    .context("the key was rotated, but recording it in the audit log failed")?;
                println!("recorded in the gateway's audit log");
            }
            println!("next: `aegis reencrypt DIR...` brings existing files under {new}");
        }
        KeyCmd::Retire { id, roots } => {
            // The keyset and the trees stay fixed from the scan to the retirement: no rotation
            // and no reencrypt can slip a file under the key in between.
            let lock = store.lock(LockMode::Exclusive)?;
            let _trees = reencrypt::lock_roots(&roots)?;
            let (keys, _) = store.load()?;
            if keys.entry(id).is_none() {
                bail!("no key {id} in the keyset");
            }
            let usage = reencrypt::scan(&keys, &roots, &exclusions(args))?;
            if !usage.journals.is_empty() {
                bail!(
                    "an interrupted re-encryption left {} journal(s) (first: {}); run `aegis reencrypt` first",
                    usage.journals.len(),
                    usage
                        .journals
                        .first()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default()
                );
            }
            if let Some(files) = usage.by_key.get(&id) {
                bail!(
                    "key {id} is still needed by {} file(s) under the given roots (first: {}); run `aegis reencrypt` first",
                    files.len(),
                    files
                        .first()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default()
                );
            }
            if let Some((p, why)) = usage.failed.first() {
                bail!(
                    "{} file(s) could not be checked (first: {}: {why}); nothing was changed",
                    usage.failed.len(),
                    p.display()
                );
            }
            drop(keys);
            store.update_held(&lock, |keys| keys.retire(id))?;
            println!(
                "key {id} retired (no file under the given roots needs it); `aegis key destroy {id}` erases it"
            );
        }
        KeyCmd::Reinstate { id } => {
            store.update(|keys| keys.reinstate(id))?;
            println!("key {id} is retained again and decrypts");
        }
        KeyCmd::Destroy { id, confirm } => {
            let (keys, _) = store.load()?;
            match keys.entry(id).map(|e| e.status) {
                None => bail!("no key {id} in the keyset"),
                Some(KeyStatus::Retired | KeyStatus::Destroyed) => {}
                Some(s) => bail!(
                    "key {id} is {s}; retire it (which checks no file needs it) before destroying it"
                ),
            }
            if confirm != Some(id) {
                bail!(
                    "destroying key {id} makes every file still under it unreadable for ever; repeat the id to confirm: --confirm {id}"
                );
            }
            drop(keys);
            store.update(|keys| keys.destroy(id))?;
            println!("key {id} destroyed");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_status(keys: &Keyset, loc: &str, json: bool) -> Result<()> {
    if json {
        let keys_json: Vec<serde_json::Value> = keys
            .entries()
            .iter()
            .map(|e| {
                serde_json::json!({
                    "id": e.id.to_string(),
                    "status": e.status.to_string(),
                    "created": e.created,
                    "changed": e.changed,
                })
            })
            .collect();
        let doc = serde_json::json!({ "location": loc, "primary": keys.primary_id().to_string(), "keys": keys_json });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!("keyset in {loc}");
    println!("{:<18} {:<10} CREATED", "ID", "STATUS");
    for e in keys.entries() {
        println!(
            "{:<18} {:<10} {}",
            e.id.to_string(),
            e.status.to_string(),
            KeyStore::describe_time(e.created)
        );
    }
    Ok(())
}

fn exclusions(args: &StoreArgs) -> Vec<PathBuf> {
    let key_file = args.key_file();
    let beside = |ext: &str| {
        let mut p = key_file.clone().into_os_string();
        p.push(ext);
        PathBuf::from(p)
    };
    vec![beside(".keyset"), beside(".lock"), key_file.clone()]
}

fn is_dash(p: &Path) -> bool {
    p.as_os_str() == "-"
}

fn input_of(p: &Path) -> Input {
    if is_dash(p) {
        Input::Stdin
    } else {
        Input::Path(p.to_path_buf())
    }
}

fn output_of(p: PathBuf, force: bool) -> Output {
    if is_dash(&p) {
        Output::Stdout
    } else {
        Output::Path {
            path: p,
            overwrite: force,
        }
    }
}

fn bytes_bar(input: &Path) -> ProgressBar {
    let len = if is_dash(input) {
        None
    } else {
        std::fs::metadata(input).ok().map(|m| m.len())
    };
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(len, target);
    if let Ok(style) =
        ProgressStyle::with_template("{bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
    {
        bar.set_style(style);
    }
    bar
}

fn encrypt(store: &KeyStore, a: EncryptArgs) -> Result<ExitCode> {
    let (keys, _) = store.load()?;
    let chunk_log2 = match a.chunk_kib {
        k if k.is_power_of_two() && (4..=16384).contains(&k) => 10 + k.trailing_zeros() as u8,
        k => bail!("--chunk-kib {k}: must be a power of two from 4 to 16384"),
    };
    let output = match a.output {
        Some(o) => o,
        None if is_dash(&a.input) => PathBuf::from("-"),
        None => {
            let mut o = a.input.clone().into_os_string();
            o.push(".enc");
            PathBuf::from(o)
        }
    };
    let format = match a.format {
        FormatArg::V1 => Format::V1,
        FormatArg::V2 => Format::V2,
    };
    let bar = bytes_bar(&a.input);
    let out = file::encrypt(
        keys.primary(),
        &input_of(&a.input),
        &output_of(output.clone(), a.force),
        format,
        v2::Options {
            chunk_log2,
            ..v2::Options::default()
        },
        &mut |n| bar.inc(n),
    )
    .with_context(|| format!("encrypting {}", a.input.display()))?;
    bar.finish_and_clear();
    if !is_dash(&output) {
        eprintln!(
            "encrypted {} bytes → {} ({}, key {})",
            out.plaintext_len,
            output.display(),
            out.format,
            out.key_id
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn decrypt(store: &KeyStore, a: DecryptArgs) -> Result<ExitCode> {
    let (keys, _) = store.load()?;
    let output = match a.output {
        Some(o) => o,
        None if is_dash(&a.input) => PathBuf::from("-"),
        None => match a.input.extension() {
            Some(e) if e == "enc" => a.input.with_extension(""),
            _ => bail!(
                "cannot derive the output name from {} (no .enc suffix); pass -o OUT or -o -",
                a.input.display()
            ),
        },
    };
    let bar = bytes_bar(&a.input);
    let out = file::decrypt(
        &keys,
        &input_of(&a.input),
        &output_of(output.clone(), a.force),
        &mut |n| bar.inc(n),
    )
    .with_context(|| format!("decrypting {}", a.input.display()))?;
    bar.finish_and_clear();
    if !is_dash(&output) {
        eprintln!(
            "decrypted {} bytes → {} ({}, key {})",
            out.plaintext_len,
            output.display(),
            out.format,
            out.key_id
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn reencrypt_cmd(store: &KeyStore, args: &StoreArgs, a: ReencryptArgs) -> Result<ExitCode> {
    // Shared: several runs at once are fine, but no key change until they end.
    let _keyset = store.lock(LockMode::Shared)?;
    let (keys, _) = store.load()?;
    let opts = reencrypt::Options {
        migrate_v1: a.migrate_v1,
        dry_run: a.dry_run,
        exclude: exclusions(args),
    };
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(None, target);
    if let Ok(style) = ProgressStyle::with_template("{bar:30} {pos}/{len} files {wide_msg}") {
        bar.set_style(style);
    }
    let report = reencrypt::reencrypt(&keys, &a.roots, &opts, &mut |p, total| {
        bar.set_length(total as u64);
        bar.set_message(p.display().to_string());
        bar.inc(1);
    })?;
    bar.finish_and_clear();
    let verb = if a.dry_run {
        " (dry run: nothing written)"
    } else {
        ""
    };
    println!(
        "{} files scanned under primary key {}: {} already current, {} v2 rewrapped, {} v1 re-encrypted, {} v1 migrated to v2{verb}",
        report.scanned,
        keys.primary_id(),
        report.current,
        report.rewrapped,
        report.reencrypted_v1,
        report.migrated_v1
    );
    if report.recovered + report.temp_removed > 0 {
        println!(
            "recovered from an interrupted run: {} header(s) repaired, {} temporary file(s) removed",
            report.recovered, report.temp_removed
        );
    }
    if !report.not_opened.is_empty() {
        eprintln!(
            "note: {} file(s) open with no available key (not AEGIS files, or under a retired/destroyed key), left as they are; first: {}",
            report.not_opened.len(),
            report
                .not_opened
                .first()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        );
    }
    for (p, k) in &report.unknown_key {
        eprintln!(
            "aegis: {}: under key {k}, which this keyset cannot use",
            p.display()
        );
    }
    for (p, why) in &report.failed {
        eprintln!("aegis: {}: {why}", p.display());
    }
    if !report.failed.is_empty() || !report.unknown_key.is_empty() {
        bail!(
            "{} file(s) could not be brought under the primary key",
            report.failed.len() + report.unknown_key.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn inspect(files: &[PathBuf]) -> Result<ExitCode> {
    let mut failed = 0;
    for f in files {
        match file::inspect(f) {
            Ok(i) => {
                let key = i
                    .key_id
                    .map(|k| k.to_string())
                    .unwrap_or_else(|| "- (v1 names no key)".into());
                let chunk = i
                    .chunk_size
                    .map(|c| format!(", chunk {} KiB", c / 1024))
                    .unwrap_or_default();
                let pt = i
                    .plaintext_len
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "? (truncated or not an AEGIS file)".into());
                println!(
                    "{}: format {}, key {key}{chunk}, {} bytes on disk, {pt} bytes of plaintext",
                    f.display(),
                    i.format,
                    i.file_len
                );
            }
            Err(e) => {
                failed += 1;
                eprintln!("aegis: error: {}: {e}", f.display());
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
