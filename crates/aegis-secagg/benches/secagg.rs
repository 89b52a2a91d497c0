//! Criterion benchmarks of aegis-secagg: mask PRG throughput, Shamir split/combine, client
//! message handling and a full simulated round. Small and quick (10 samples, short measurement
//! times); the cost table of the issue is `examples/secagg_table.rs` (`bench/secagg.sh`).

#![allow(clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::time::Duration;

use aegis_secagg::client::{ClientConfig, ClientSession};
use aegis_secagg::messages::{ClientMessage, ServerMessage};
use aegis_secagg::params::{Params, Policy};
use aegis_secagg::prg::{MaskPrg, Sign, apply_masks, apply_masks_serial};
use aegis_secagg::shamir::{Share, combine, lagrange_at_zero, split};
use aegis_secagg::sim::{Faults, Simulation, roster};
use aegis_secagg::{ServerSession, SessionId, Stage};
use chacha20::ChaCha20Rng;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use rand_core::{Rng, SeedableRng};

const PRG_LEN: usize = 1 << 20;

fn prg(c: &mut Criterion) {
    let prgs: Vec<MaskPrg> = (0..16u8)
        .map(|i| MaskPrg::new(&[i; 32]).expect("AES key"))
        .collect();
    let mut acc = vec![0u32; PRG_LEN];
    let mut g = c.benchmark_group("prg");
    for masks in [1usize, 16] {
        let refs: Vec<(&MaskPrg, Sign)> =
            prgs.iter().take(masks).map(|p| (p, Sign::Plus)).collect();
        g.throughput(Throughput::Bytes((masks * PRG_LEN * 4) as u64));
        g.bench_function(format!("serial/1M elements/{masks} masks"), |b| {
            b.iter(|| apply_masks_serial(black_box(&mut acc), &refs).expect("prg"));
        });
        g.bench_function(format!("parallel/1M elements/{masks} masks"), |b| {
            b.iter(|| apply_masks(black_box(&mut acc), &refs).expect("prg"));
        });
    }
    g.finish();
}

fn shamir(c: &mut Criterion) {
    const T: usize = 20;
    const K: u64 = 38;
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let mut secret = [0u8; 32];
    rng.fill_bytes(&mut secret);
    let xs: Vec<u64> = (1..=K).collect();
    let shares = split(&secret, &xs, T, &mut rng);
    let window: Vec<u64> = xs.iter().copied().take(T).collect();
    let coeffs = lagrange_at_zero(&window).expect("distinct points");
    let refs: Vec<&Share> = shares.iter().take(T).collect();
    let mut g = c.benchmark_group("shamir");
    g.bench_function("split/t=20/38 holders", |b| {
        b.iter(|| split(black_box(&secret), &xs, T, &mut rng));
    });
    g.bench_function("lagrange_at_zero/t=20", |b| {
        b.iter(|| lagrange_at_zero(black_box(&window)));
    });
    g.bench_function("combine/t=20", |b| {
        b.iter(|| {
            let out = combine(black_box(&refs), &coeffs);
            assert_eq!(out, Some(secret));
        });
    });
    g.finish();
}

/// Client-side handling of `Setup` (graph, key generation, signed advertisement) and the
/// encoding and decoding of one masked input.
fn messages(c: &mut Criterion) {
    const N: u32 = 100;
    let params = Params::recommended(N, 10_000, 1.0, 10, &Policy::default()).expect("params");
    let (entries, keys) = roster(N, 1).expect("roster");
    let id = entries.first().expect("non-empty").id;
    let identity = keys.first().expect("non-empty").clone();
    let mut server =
        ServerSession::start(params.clone(), entries, &mut ChaCha20Rng::seed_from_u64(2))
            .expect("server");
    let setup: ServerMessage = server.poll_outbox().expect("Setup queued").1;
    let setup_bytes = setup.encode();
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let mut g = c.benchmark_group("client");
    g.bench_function("Setup → Advertise (n=100)", |b| {
        b.iter_batched(
            || ClientSession::new(ClientConfig::new(id, identity.clone())),
            |mut s| {
                s.handle_bytes(&setup_bytes, &mut rng)
                    .expect("setup accepted");
                s.poll_outbox().expect("advertisement")
            },
            BatchSize::SmallInput,
        );
    });
    let mut packed = vec![0u8; params.packed_len()];
    rng.fill_bytes(&mut packed);
    let msg = ClientMessage::MaskedInput {
        session: SessionId([7; 32]),
        packed,
    };
    let bytes = msg.encode();
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function("MaskedInput encode (m=10k)", |b| {
        b.iter(|| black_box(&msg).encode())
    });
    g.bench_function("MaskedInput decode (m=10k)", |b| {
        b.iter(|| ClientMessage::decode(black_box(&bytes)).expect("decodes"));
    });
    g.finish();
}

fn round(c: &mut Criterion) {
    const N: u32 = 20;
    const M: u32 = 10_000;
    let params = Params::recommended(N, M, 1.0, 10, &Policy::default()).expect("params");
    let mut g = c.benchmark_group("round");
    for drop_pct in [0usize, 10] {
        let mut faults = Faults::default();
        let ids = Simulation::client_ids(N);
        for id in ids
            .iter()
            .step_by(100 / drop_pct.max(1))
            .take(N as usize * drop_pct / 100)
        {
            faults.drop_at.insert(*id, Stage::MaskedInputCollection);
        }
        g.bench_function(
            format!("n=20 m=10k k={} drop={drop_pct}%", params.degree),
            |b| {
                b.iter(|| {
                    let o = Simulation::new(params.clone(), 9)
                        .faults(faults.clone())
                        .run()
                        .expect("simulation");
                    assert!(o.result.is_ok(), "{:?}", o.result);
                    o.stats.server_time
                });
            },
        );
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    targets = prg, shamir, messages, round
}
criterion_main!(benches);
