//! Load generator for `bench/fl.sh`: many FL clients in one process, each with its own TLS 1.3
//! connection to an `aegis server` (a separate process, so its CPU time is its own).
//!
//! ```text
//! fl_load setup --dir DIR --clients N --params M    # PKI with N client certificates + model.safetensors
//! fl_load run --dir DIR --server ADDR --clients N --params M --drop 0.1 --rounds R
//! ```
//!
//! Every client submits a fixed pseudo-random update (no training: the bench measures the
//! protocol). With `--drop F`, in every round a fraction F of the clients, drawn at random,
//! leaves at a random SecAgg stage and reconnects for the next round. Prints per-client
//! timings and the process's peak RSS as JSON on stdout.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use aegis_client::net::{ClientOptions, DropAt, Exit};
use aegis_client::{Model, TrainOutput, Trainer};
use aegis_secagg::{ClientId, Stage};
use aegis_transport::pki;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn num<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    arg(args, name).map_or(default, |v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}: bad value {v:?}"))
    })
}

/// A model of `params` parameters as one tensor (plus a 1-element bias, so names vary).
fn model(params: usize) -> Model {
    let mut m = Model::softmax_regression(1, 1).unwrap();
    m.tensors.clear();
    m.tensors.insert(
        "w".into(),
        aegis_client::Tensor::new(vec![params], vec![0.0; params]).unwrap(),
    );
    m
}

struct Fixed {
    seed: u64,
}

impl Trainer for Fixed {
    fn train(&mut self, global: &Model) -> aegis_client::Result<TrainOutput> {
        let n = global.num_params();
        let mut x = self.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let delta: Vec<f32> = (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.02
            })
            .collect();
        Ok(TrainOutput {
            delta: global.unflatten(&delta)?,
            num_examples: 100,
            loss: 1.0,
            accuracy: 0.5,
        })
    }
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// User + system CPU seconds of this process so far (/proc/self/stat; USER_HZ is 100 on
/// Linux).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
}

fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    lim.current = lim.maximum;
    let _ = setrlimit(Resource::Nofile, lim);
}

const STAGES: [Stage; 5] = [
    Stage::AdvertiseKeys,
    Stage::ShareKeys,
    Stage::MaskedInputCollection,
    Stage::ConsistencyCheck,
    Stage::Unmasking,
];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = PathBuf::from(arg(&args, "--dir").expect("--dir DIR"));
    let clients: u64 = num(&args, "--clients", 100);
    let params: usize = num(&args, "--params", 1_000_000);
    match args.first().map(String::as_str) {
        Some("setup") => {
            let p = pki::init(&dir.join("pki"), &pki::default_server_sans(), true).unwrap();
            let ca = pki::Ca::load(p.dir()).unwrap();
            std::fs::create_dir_all(p.clients_dir()).unwrap();
            for id in 1..=clients {
                let id = aegis_transport::ClientId(id);
                ca.issue_client(id)
                    .unwrap()
                    .write(&p.client_cert(id), &p.client_key(id), true)
                    .unwrap();
            }
            std::fs::write(
                dir.join("model.safetensors"),
                model(params).to_safetensors().unwrap(),
            )
            .unwrap();
        }
        Some("run") => run(&args, &dir, clients),
        _ => panic!("usage: fl_load setup|run --dir DIR [...]"),
    }
}

fn run(args: &[String], dir: &std::path::Path, clients: u64) {
    raise_fd_limit();
    let server = arg(args, "--server").expect("--server ADDR");
    let drop: f64 = num(args, "--drop", 0.0);
    let rounds: u32 = num(args, "--rounds", 1);
    let seed: u64 = num(args, "--seed", 1);
    let p = pki::PkiDir::new(&dir.join("pki"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // Who drops when: client → (round, stage), drawn from the seed.
    let mut x = seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut plan: Vec<Vec<DropAt>> = vec![Vec::new(); clients as usize];
    for round in 1..=rounds {
        let k = (clients as f64 * drop).round() as usize;
        let mut ids: Vec<usize> = (0..clients as usize).collect();
        for i in (1..ids.len()).rev() {
            let j = (next() % (i as u64 + 1)) as usize;
            ids.swap(i, j);
        }
        for &i in ids.iter().take(k) {
            plan[i].push(DropAt {
                round,
                stage: STAGES[(next() % 5) as usize],
            });
        }
    }
    let start = Instant::now();
    let times = rt.block_on(async move {
        let mut tasks = Vec::new();
        for id in 1..=clients {
            let tid = aegis_transport::ClientId(id);
            let mut opts = ClientOptions::with_certificate(
                &server,
                &p.ca_cert(),
                &p.client_cert(tid),
                &p.client_key(tid),
                ClientId(id),
            )
            .unwrap();
            opts.connect_timeout = Duration::from_secs(60);
            let drops = plan[id as usize - 1].clone();
            tasks.push(tokio::spawn(async move {
                let mut drops = drops.into_iter();
                let mut drop_at = drops.next();
                let t0 = Instant::now();
                loop {
                    let o = ClientOptions {
                        drop_at,
                        ..opts.clone()
                    };
                    match aegis_client::net::run(o, Fixed { seed: id }).await {
                        Ok(s) if matches!(s.exit, Exit::Dropped(d) if d.round >= rounds) => {
                            // Left in the last round: nothing to come back for.
                            return Ok(t0.elapsed().as_secs_f64());
                        }
                        Ok(s) if matches!(s.exit, Exit::Dropped(_)) => {
                            drop_at = drops.next();
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Ok(_) => return Ok(t0.elapsed().as_secs_f64()),
                        Err(e) => return Err(format!("client {id}: {e}")),
                    }
                }
            }));
        }
        let mut ok = Vec::new();
        let mut failed = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                Ok(s) => ok.push(s),
                Err(e) => failed.push(e),
            }
        }
        (ok, failed)
    });
    let (ok, failed) = times;
    for f in failed.iter().take(5) {
        eprintln!("{f}");
    }
    println!(
        "{{\"clients\": {clients}, \"finished\": {}, \"failed\": {}, \"seconds\": {:.3}, \"cpu_seconds\": {:.3}, \"peak_rss_kib\": {}}}",
        ok.len(),
        failed.len(),
        start.elapsed().as_secs_f64(),
        cpu_seconds(),
        peak_rss_kib()
    );
    if !failed.is_empty() {
        std::process::exit(1);
    }
}
