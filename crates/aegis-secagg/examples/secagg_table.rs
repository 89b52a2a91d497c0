//! Prints the SecAgg+ cost table (Markdown): simulated rounds over a grid of roster sizes,
//! vector lengths, dropout rates and graphs, with server and client times, upload sizes, a
//! PRG-throughput lower bound for the server, and the issue's target checks.
//!
//! ```text
//! cargo run --release -p aegis-secagg --example secagg_table -- [--quick] [--budget-gb G]
//!     [--only n,m,drop,graph] [--seed S] [--parallel-clients]
//! ```
//!
//! `--quick`: only n ≤ 100 and m = 100k. `--only 100,1M,10%,secagg+`: one cell (graph is
//! `secagg+` or `complete`; m accepts `100k`/`1M`; drop accepts `0`, `10%` or `0.1`).
//! `--budget-gb G` (default 200): cells whose simulated client work, n × (k+1) × (m+1) × 4 B of
//! mask keystream, exceeds G·10⁹ B are skipped. Cells whose estimated memory does not fit in
//! 80% of the available memory are skipped too. Clients run one at a time (each may use every
//! core), so client times are not inflated by other clients; `--parallel-clients` runs them
//! concurrently (faster on many cores, but client times are then measured under contention).
//! Progress, one line per cell with its main figures, goes to stderr; the table to stdout.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use aegis_secagg::graph::Graph;
use aegis_secagg::params::{Params, Policy};
use aegis_secagg::prg::{MaskPrg, Sign, apply_masks_serial};
use aegis_secagg::sim::{Faults, Simulation};
use aegis_secagg::{ClientId, ServerSession, Stage};
use chacha20::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

const NS: [u32; 4] = [10, 100, 500, 1000];
const MS: [u32; 2] = [100_000, 1_000_000];
const DROPS: [u32; 2] = [0, 10];
const MAX_WEIGHT: u32 = 1000;
/// Bytes of memory the simulator holds per client per vector element (raw f32 input, the
/// quantized input and its copy in the session, the masked message, working buffers): peak RSS
/// measured at 19–20 B (n = 100, m = 1M and n = 1000, m = 100k), rounded up.
const MEM_PER_ELEMENT: u64 = 24;
/// Time model for the estimate, calibrated on a 2-core machine: simulator work per client per
/// element (input generation, quantization, packing, summing) …
const SECS_PER_ELEMENT: f64 = 35e-9;
/// … and per client per neighbour (key agreements, share encryption, Shamir, signatures).
const SECS_PER_EDGE: f64 = 300e-6;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cell {
    n: u32,
    m: u32,
    /// Dropout in percent (0 or 10).
    drop_pct: u32,
    complete: bool,
}

impl Cell {
    fn graph(&self) -> &'static str {
        if self.complete { "complete" } else { "SecAgg+" }
    }
}

struct Opts {
    quick: bool,
    only: Option<Cell>,
    budget_gb: f64,
    seed: u64,
    parallel_clients: bool,
}

fn usage() -> ! {
    eprintln!(
        "usage: secagg_table [--quick] [--budget-gb G] [--only n,m,drop,graph] [--seed S] \
         [--parallel-clients]\n  \
         e.g. --only 100,1M,10%,secagg+   (graph: secagg+ | complete)"
    );
    std::process::exit(2)
}

fn parse_m(s: &str) -> Option<u32> {
    let s = s.to_ascii_lowercase();
    let (num, mult) = if let Some(x) = s.strip_suffix('k') {
        (x, 1_000)
    } else if let Some(x) = s.strip_suffix('m') {
        (x, 1_000_000)
    } else {
        (s.as_str(), 1)
    };
    num.parse::<u32>().ok()?.checked_mul(mult)
}

fn parse_drop(s: &str) -> Option<u32> {
    if let Some(p) = s.strip_suffix('%') {
        return p.parse().ok();
    }
    let f: f64 = s.parse().ok()?;
    let pct = if f < 1.0 { f * 100.0 } else { f };
    Some(pct.round() as u32)
}

fn parse_cell(s: &str) -> Option<Cell> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    let [n, m, d, g] = parts.as_slice() else {
        return None;
    };
    let complete = match g.to_ascii_lowercase().as_str() {
        "secagg+" | "secaggplus" | "sa+" | "plus" => false,
        "complete" | "full" => true,
        _ => return None,
    };
    Some(Cell {
        n: n.parse().ok()?,
        m: parse_m(m)?,
        drop_pct: parse_drop(d)?,
        complete,
    })
}

fn parse_args() -> Opts {
    let mut o = Opts {
        quick: false,
        only: None,
        budget_gb: 200.0,
        seed: 1,
        parallel_clients: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => o.quick = true,
            "--parallel-clients" => o.parallel_clients = true,
            "--only" => {
                o.only = Some(
                    args.next()
                        .as_deref()
                        .and_then(parse_cell)
                        .unwrap_or_else(|| usage()),
                );
            }
            "--budget-gb" => {
                o.budget_gb = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|v: &f64| *v > 0.0)
                    .unwrap_or_else(|| usage());
            }
            "--seed" => {
                o.seed = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage());
            }
            "-h" | "--help" => usage(),
            _ => usage(),
        }
    }
    o
}

fn cells(o: &Opts) -> Vec<Cell> {
    if let Some(c) = o.only {
        return vec![c];
    }
    let mut out = Vec::new();
    for n in NS {
        for m in MS {
            for drop_pct in DROPS {
                for complete in [false, true] {
                    if o.quick && (n > 100 || m != 100_000) {
                        continue;
                    }
                    out.push(Cell {
                        n,
                        m,
                        drop_pct,
                        complete,
                    });
                }
            }
        }
    }
    out
}

fn params_of(c: &Cell) -> Result<Params, aegis_secagg::Error> {
    let policy = Policy::default();
    let p = Params::recommended(c.n, c.m, 1.0, MAX_WEIGHT, &policy)?;
    if c.complete {
        p.complete_graph(&policy)
    } else {
        Ok(p)
    }
}

/// Mask keystream all simulated clients expand: each its self mask and one pairwise mask per
/// neighbour, over m + 1 elements.
fn client_keystream_bytes(p: &Params) -> f64 {
    f64::from(p.num_clients) * f64::from(p.degree + 1) * (f64::from(p.vector_len) + 1.0) * 4.0
}

/// Estimated wall time of a simulated round.
fn estimate(p: &Params, prg_bps: f64, cores: usize) -> Duration {
    let n = f64::from(p.num_clients);
    let secs = client_keystream_bytes(p) / prg_bps / cores as f64
        + n * (f64::from(p.vector_len) + 1.0) * SECS_PER_ELEMENT
        + n * f64::from(p.degree) * SECS_PER_EDGE;
    Duration::from_secs_f64(secs)
}

fn mem_bytes(p: &Params) -> u64 {
    u64::from(p.num_clients) * (u64::from(p.vector_len) + 1) * MEM_PER_ELEMENT + (256 << 20)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".into())
}

fn mem_available() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Single-core PRG throughput in bytes of keystream per second: `apply_masks_serial` of 64
/// masks over 1M elements, best of 3.
fn prg_throughput() -> Result<f64, aegis_secagg::Error> {
    const MASKS: usize = 64;
    const LEN: usize = 1 << 20;
    let prgs: Vec<MaskPrg> = (0..MASKS)
        .map(|i| MaskPrg::new(&[i as u8; 32]))
        .collect::<Result<_, _>>()?;
    let refs: Vec<(&MaskPrg, Sign)> = prgs.iter().map(|p| (p, Sign::Plus)).collect();
    let mut acc = vec![0u32; LEN];
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let t0 = Instant::now();
        apply_masks_serial(&mut acc, &refs)?;
        best = best.min(t0.elapsed());
    }
    std::hint::black_box(&acc);
    Ok((MASKS * LEN * 4) as f64 / best.as_secs_f64().max(1e-9))
}

struct Row {
    cell: Cell,
    k: u32,
    t: u32,
    result: Result<Measured, String>,
}

struct Measured {
    survivors: usize,
    dropped: usize,
    pairs: u64,
    server: Duration,
    final_step: Duration,
    client_mean: Duration,
    client_max: Duration,
    bytes_up: usize,
    masked_ratio: f64,
    bound: Duration,
    wall: Duration,
}

fn ms(d: Duration) -> String {
    let v = d.as_secs_f64() * 1e3;
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// `pct`% of the roster (rounded), chosen with a seeded RNG.
fn choose_dropped(n: u32, pct: u32, seed: u64) -> Vec<ClientId> {
    let ids = Simulation::client_ids(n);
    let count = ((u64::from(n) * u64::from(pct) + 50) / 100) as usize;
    let mut idx: Vec<usize> = (0..ids.len()).collect();
    let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0xd409_0075);
    for i in 0..count.min(idx.len()) {
        let j = i + (rng.next_u64() % (idx.len() - i) as u64) as usize;
        idx.swap(i, j);
    }
    idx.iter()
        .take(count)
        .filter_map(|&i| ids.get(i).copied())
        .collect()
}

/// Survivor–dropped neighbour pairs in the round's graph. The simulator draws the session id
/// first from `ChaCha20Rng::seed_from_u64(seed)`; starting a server the same way reproduces it.
fn pairs(
    p: &Params,
    seed: u64,
    survivors: &[ClientId],
    dropped: &[ClientId],
) -> Result<u64, aegis_secagg::Error> {
    let (roster, _) = aegis_secagg::sim::roster(p.num_clients, seed)?;
    let ids: Vec<ClientId> = roster.iter().map(|e| e.id).collect();
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let server = ServerSession::start(p.clone(), roster, &mut rng)?;
    let graph = Graph::new(server.session(), p.num_clients, p.degree)?;
    let index = |id: &ClientId| ids.binary_search(id).ok().map(|i| i as u32);
    let surv: BTreeSet<u32> = survivors.iter().filter_map(index).collect();
    let mut count = 0u64;
    for d in dropped.iter().filter_map(index) {
        count += graph
            .neighbours(d)
            .iter()
            .filter(|w| surv.contains(w))
            .count() as u64;
    }
    Ok(count)
}

fn run_cell(
    c: &Cell,
    p: &Params,
    o: &Opts,
    prg_bps: f64,
    cores: usize,
) -> Result<Measured, String> {
    let seed = o.seed;
    let dropped = choose_dropped(c.n, c.drop_pct, seed);
    let mut faults = Faults::default();
    for &id in &dropped {
        faults.drop_at.insert(id, Stage::MaskedInputCollection);
    }
    let t0 = Instant::now();
    let mut sim = Simulation::new(p.clone(), seed).faults(faults);
    if !o.parallel_clients {
        sim = sim.sequential_clients();
    }
    let outcome = sim.run().map_err(|e| format!("simulation error: {e}"))?;
    let wall = t0.elapsed();
    let agg = match &outcome.result {
        Ok(a) => a,
        Err(r) => return Err(format!("round aborted: {r}")),
    };
    if agg.sums != outcome.expected_sums || agg.weight_sum != outcome.expected_weight {
        return Err("WRONG SUM".into());
    }
    let survivors = agg.survivors.len();
    let pair_count =
        pairs(p, seed, &agg.survivors, &dropped).map_err(|e| format!("graph rebuild: {e}"))?;
    let s = &outcome.stats;
    let bytes = (survivors as f64 + pair_count as f64) * (f64::from(c.m) + 1.0) * 4.0;
    let bound = Duration::from_secs_f64(bytes / prg_bps / cores as f64);
    let ideal = f64::from(c.m) * f64::from(p.mod_bits) / 8.0;
    Ok(Measured {
        survivors,
        dropped: dropped.len(),
        pairs: pair_count,
        server: s.server_time,
        final_step: s.server_final_step,
        client_mean: s.client_time_mean,
        client_max: s.client_time_max,
        bytes_up: s.client_bytes_up_max,
        masked_ratio: s.masked_input_bytes as f64 / ideal,
        bound,
        wall,
    })
}

fn row_line(r: &Row) -> String {
    let c = &r.cell;
    let m = if c.m.is_multiple_of(1_000_000) {
        format!("{}M", c.m / 1_000_000)
    } else if c.m.is_multiple_of(1000) {
        format!("{}k", c.m / 1000)
    } else {
        c.m.to_string()
    };
    let head = format!(
        "| {} | {} | {}% | {} | {} | {} |",
        c.n,
        m,
        c.drop_pct,
        c.graph(),
        r.k,
        r.t
    );
    match &r.result {
        Ok(x) => format!(
            "{head} {} | {} | {} | {} | {} | {} | {:.4} | {} | {:.2} |",
            x.survivors,
            ms(x.server),
            ms(x.final_step),
            ms(x.client_mean),
            ms(x.client_max),
            x.bytes_up,
            x.masked_ratio,
            ms(x.bound),
            x.server.as_secs_f64() / x.bound.as_secs_f64().max(1e-12),
        ),
        Err(why) => format!("{head} {why} | | | | | | | | |"),
    }
}

fn find(rows: &[Row], n: u32, m: u32, drop_pct: u32, complete: bool) -> Vec<&Row> {
    rows.iter()
        .filter(|r| {
            r.cell
                == Cell {
                    n,
                    m,
                    drop_pct,
                    complete,
                }
        })
        .collect()
}

fn verdict(ok: bool) -> &'static str {
    if ok { "PASS" } else { "FAIL" }
}

fn main() {
    let o = parse_args();
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let budget = o.budget_gb * 1e9;
    let mem_cap = mem_available().map(|b| b / 10 * 8);
    let prg_bps = match prg_throughput() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("PRG measurement failed: {e}");
            std::process::exit(1)
        }
    };
    let cells = cells(&o);
    // Plan: which cells run, and a rough time estimate.
    let mut plan = Vec::new();
    let mut planned_bytes = 0.0;
    let mut est = Duration::ZERO;
    for c in &cells {
        let p = params_of(c);
        let skip = match &p {
            Err(e) => Some(format!("bad parameters: {e}")),
            Ok(p) if client_keystream_bytes(p) > budget => Some(format!(
                "skipped (simulation cost: {:.0} GB of client keystream > --budget-gb {})",
                client_keystream_bytes(p) / 1e9,
                o.budget_gb
            )),
            Ok(p) if mem_cap.is_some_and(|cap| mem_bytes(p) > cap) => Some(format!(
                "skipped (memory: ~{:.1} GB needed)",
                mem_bytes(p) as f64 / 1e9
            )),
            Ok(p) => {
                planned_bytes += client_keystream_bytes(p);
                est += estimate(p, prg_bps, cores);
                None
            }
        };
        plan.push((*c, p, skip));
    }
    println!("# SecAgg+ simulated rounds");
    println!();
    println!(
        "Machine: {cores} cores. PRG (AES-256-CTR mask expansion, `apply_masks_serial`, 64 masks × 1M \
         elements, one core, best of 3): {:.2} GB/s. Seed {}. Budget {} GB of client keystream per cell.",
        prg_bps / 1e9,
        o.seed,
        o.budget_gb
    );
    println!(
        "Planned: {} of {} cells, {:.0} GB of client keystream; estimated {:.0} s (the rest skipped, see the table).",
        plan.iter().filter(|(_, _, s)| s.is_none()).count(),
        plan.len(),
        planned_bytes / 1e9,
        est.as_secs_f64()
    );
    println!();
    let mut rows = Vec::new();
    let load_start = loadavg();
    let started = Instant::now();
    for (c, p, skip) in plan {
        let (k, t) = p.as_ref().map_or((0, 0), |p| (p.degree, p.threshold));
        let result = match (skip, p) {
            (Some(why), _) => Err(why),
            (None, Err(e)) => Err(format!("bad parameters: {e}")),
            (None, Ok(p)) => {
                eprint!(
                    "running n={} m={} drop={}% {} (k={k}, t={t}; estimated {:.0} s) … ",
                    c.n,
                    c.m,
                    c.drop_pct,
                    c.graph(),
                    estimate(&p, prg_bps, cores).as_secs_f64()
                );
                let r = run_cell(&c, &p, &o, prg_bps, cores);
                match &r {
                    Ok(x) => eprintln!(
                        "{:.1} s wall ({} dropped, {} survivor–dropped pairs; server {} ms, \
                         client mean {} ms)",
                        x.wall.as_secs_f64(),
                        x.dropped,
                        x.pairs,
                        ms(x.server),
                        ms(x.client_mean)
                    ),
                    Err(e) => eprintln!("{e}"),
                }
                r
            }
        };
        rows.push(Row {
            cell: c,
            k,
            t,
            result,
        });
    }
    println!(
        "| n | m | dropout | graph | k | t | survivors | server ms/round | unmask step ms | client ms mean | \
         client ms max | bytes up/client (max) | masked ÷ (m·b/8) | PRG bound ms | server ÷ bound |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!("{}", row_line(r));
    }
    println!();
    let clients = if o.parallel_clients {
        format!(
            "The simulator ran the clients in parallel on the {cores} cores \
             (`--parallel-clients`), so per-client times are measured under contention: each \
             client's work shared the cores with the others'."
        )
    } else {
        format!(
            "The simulator ran the clients one at a time (`Simulation::sequential_clients`), \
             each free to use all {cores} cores, so per-client times are wall times without \
             other clients competing for the cores (`--parallel-clients` runs them concurrently, \
             under contention)."
        )
    };
    println!(
        "Notes: dropouts are scripted: 10% of the clients (chosen with a seeded RNG) go silent at \
         MaskedInputCollection, after sharing keys, so the server reconstructs their mask keys and \
         removes every survivor–dropped pairwise mask (the expensive case). Server time is the \
         time inside the server's `handle_bytes`/`on_deadline` for the whole round (decoding \
         included, masked inputs summed as they arrive); the unmask step is the last call alone, \
         from the last unmasking answer to the result. {clients} Bytes up is the largest total one client sent in the round. \
         Masked ÷ (m·b/8) is the encoded MaskedInput message over the bare m·b/8 bytes of the m \
         values (it carries m + 1 entries, the weight first, plus a 42-byte header). PRG bound = \
         (survivors + survivor–dropped neighbour pairs) × (m + 1) × 4 B ÷ single-core PRG \
         throughput ÷ {cores} cores: the mask keystream the server must expand to unmask; the \
         pairs are counted on the round's graph, rebuilt from the simulator's seed. Wall time \
         for the table: {:.0} s; load average {} at the start, {} at the end (the machine may \
         be shared).",
        started.elapsed().as_secs_f64(),
        load_start,
        loadavg(),
    );
    println!();
    println!("Reference figures (published, other hardware):");
    println!(
        "- Flower 1.42 SecAgg+ server, n = 100, 10% dropouts: 7.4 s (m = 100k) and 14.8 s (m = 1M) per round."
    );
    println!(
        "- Bonawitz et al. (CCS 2017), complete graph, n = 500, m = 100k, 10% dropouts: 62 s server time."
    );
    println!();
    println!("Targets:");
    let check = |label: &str, rows: Vec<&Row>, f: &dyn Fn(&Measured) -> (bool, String)| {
        if rows.is_empty() {
            println!("- NOT RUN: {label} (cell not in this run)");
        }
        for r in rows {
            match &r.result {
                Ok(x) => {
                    let (ok, detail) = f(x);
                    println!("- {}: {label}: {detail}", verdict(ok));
                }
                Err(why) => println!("- NOT RUN: {label}: {why}"),
            }
        }
    };
    check(
        "n=100, m=1M, 10% dropout, SecAgg+: server ≤ 0.3 s",
        find(&rows, 100, 1_000_000, 10, false),
        &|x| {
            let s = x.server.as_secs_f64();
            (s <= 0.3, format!("{s:.3} s"))
        },
    );
    check(
        "complete graph n=500, m=100k, 10% dropout: server ≤ 3 s",
        find(&rows, 500, 100_000, 10, true),
        &|x| {
            let s = x.server.as_secs_f64();
            (s <= 3.0, format!("{s:.3} s"))
        },
    );
    let mode = if o.parallel_clients {
        "clients in parallel, under contention"
    } else {
        "clients one at a time"
    };
    let mut n1000 = find(&rows, 1000, 100_000, 0, false);
    n1000.extend(find(&rows, 1000, 100_000, 10, false));
    check(
        "client n=1000 (SecAgg+), m=100k: mean client time ≤ 15 ms",
        n1000,
        &|x| {
            let v = x.client_mean.as_secs_f64() * 1e3;
            (v <= 15.0, format!("{v:.2} ms ({mode})"))
        },
    );
    let ran: Vec<&Row> = rows.iter().filter(|r| r.result.is_ok()).collect();
    let worst = ran
        .iter()
        .filter_map(|r| r.result.as_ref().ok())
        .map(|x| x.masked_ratio)
        .fold(0.0f64, f64::max);
    if ran.is_empty() {
        println!("- NOT RUN: masked upload ≤ 1.05 × m·b/8 bytes (no cell ran)");
    } else {
        println!(
            "- {}: masked upload ≤ 1.05 × m·b/8 bytes: worst {:.4}× over {} cells",
            verdict(worst <= 1.05),
            worst,
            ran.len()
        );
    }
}
