//! An in-memory simulator: one server and `n` clients exchanging encoded messages, with scripted
//! and random dropouts in every stage, duplicated, reordered and tampered messages, all driven by
//! one seed (`docs/secagg.md` §8). Tests, benchmarks and the crate example use it; it is also the
//! reference for driving the state machines from a transport.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chacha20::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use rayon::prelude::*;

use crate::client::{ClientConfig, ClientSession};
use crate::error::{AbortReason, Error, Refusal};
use crate::keys::IdentityKey;
use crate::messages::{ClientMessage, RosterEntry, ServerMessage};
use crate::params::Params;
use crate::quant::{Aggregate, QuantizedInput};
use crate::server::{ServerEvent, ServerSession};
use crate::{ClientId, Stage};

/// What goes wrong during a simulated round.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Clients that go silent from a stage on (they send nothing for that stage or later).
    pub drop_at: BTreeMap<ClientId, Stage>,
    /// Probability that a client goes silent at a uniformly chosen stage.
    pub drop_rate: f64,
    /// Probability that a message is delivered twice.
    pub duplicate_rate: f64,
    /// Probability that one random bit of a message is flipped in flight. The payload of a
    /// masked input is left alone (only its header can be hit): nothing in the protocol can
    /// tell a flipped bit there from a different input, and in deployment TLS authenticates it;
    /// a server that alters it only corrupts its own result (`docs/secagg.md` §8).
    pub tamper_rate: f64,
    /// Deliver each batch of messages in a random order.
    pub reorder: bool,
}

/// Per-party costs of a simulated round.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Time spent inside the server's `handle`/`on_deadline` (decoding included), for the whole
    /// round: summing masked inputs as they arrive, checking signatures, unmasking.
    pub server_time: Duration,
    /// Time of the server's last step alone: from the last answer (or deadline) of the
    /// Unmasking stage to the result (reconstruction and mask removal), i.e. the latency the
    /// round adds once every client has answered.
    pub server_final_step: Duration,
    /// Largest total time one client spent inside its session.
    pub client_time_max: Duration,
    /// Mean total time per client.
    pub client_time_mean: Duration,
    /// Largest number of bytes one client sent.
    pub client_bytes_up_max: usize,
    /// Largest number of bytes one client received.
    pub client_bytes_down_max: usize,
    /// Bytes of one masked-input message.
    pub masked_input_bytes: usize,
}

/// The result of a simulated round and what it should have been.
#[derive(Debug)]
pub struct Outcome {
    /// The server's result.
    pub result: Result<Aggregate, AbortReason>,
    /// The plain sum of the quantized inputs of the clients the server reports as survivors
    /// (equals `result.sums` exactly when the round completes).
    pub expected_sums: Vec<u32>,
    /// The plain sum of their weights.
    pub expected_weight: u64,
    /// The weighted mean of their clipped float inputs.
    pub plain_mean: Vec<f64>,
    /// Each client's final state: `None` if it completed or was silenced, else its refusal.
    pub refusals: BTreeMap<ClientId, Refusal>,
    /// Clients that were silenced by the fault script.
    pub silenced: BTreeMap<ClientId, Stage>,
    /// Everything the server recorded.
    pub events: Vec<ServerEvent>,
    /// Costs.
    pub stats: Stats,
}

/// A simulated round.
pub struct Simulation {
    params: Params,
    seed: u64,
    faults: Faults,
    inputs: Option<Vec<(Vec<f32>, u32)>>,
    sequential: bool,
}

struct SimClient {
    id: ClientId,
    session: ClientSession,
    rng: ChaCha20Rng,
    silent_from: Option<Stage>,
    time: Duration,
    up: usize,
    down: usize,
    input: QuantizedInput,
    raw: (Vec<f32>, u32),
}

fn stage_of(msg: &ClientMessage) -> Stage {
    match msg {
        ClientMessage::Advertise { .. } => Stage::AdvertiseKeys,
        ClientMessage::Shares { .. } => Stage::ShareKeys,
        ClientMessage::MaskedInput { .. } => Stage::MaskedInputCollection,
        ClientMessage::Consistency { .. } => Stage::ConsistencyCheck,
        ClientMessage::Unmask { .. } => Stage::Unmasking,
    }
}

const STAGES: [Stage; 5] = [
    Stage::AdvertiseKeys,
    Stage::ShareKeys,
    Stage::MaskedInputCollection,
    Stage::ConsistencyCheck,
    Stage::Unmasking,
];

impl Simulation {
    /// A round with `params.num_clients` clients, random inputs, no faults, and every random
    /// choice drawn from `seed`.
    pub fn new(params: Params, seed: u64) -> Simulation {
        Simulation {
            params,
            seed,
            faults: Faults::default(),
            inputs: None,
            sequential: false,
        }
    }

    /// Sets the faults.
    pub fn faults(mut self, faults: Faults) -> Simulation {
        self.faults = faults;
        self
    }

    /// Runs the clients one after another (each may still use every core inside), so that
    /// per-client times are measured without other clients competing for the cores. By default
    /// clients run in parallel, which is faster for large rosters.
    pub fn sequential_clients(mut self) -> Simulation {
        self.sequential = true;
        self
    }

    /// Sets the clients' float inputs and weights (in roster order).
    pub fn inputs(mut self, inputs: Vec<(Vec<f32>, u32)>) -> Simulation {
        self.inputs = Some(inputs);
        self
    }

    /// The ids the simulated roster uses: spaced, not contiguous, sorted.
    pub fn client_ids(n: u32) -> Vec<ClientId> {
        (0..u64::from(n)).map(|i| ClientId(1000 + 7 * i)).collect()
    }

    /// Runs the round to its end.
    pub fn run(self) -> Result<Outcome, Error> {
        let p = self.params.clone();
        let n = p.num_clients;
        let mut rng = ChaCha20Rng::seed_from_u64(self.seed);
        let mut fault_rng = ChaCha20Rng::seed_from_u64(self.seed ^ 0x5eed_fa17);
        let ids = Simulation::client_ids(n);
        let mut clients = Vec::with_capacity(n as usize);
        let mut roster = Vec::with_capacity(n as usize);
        for (k, &id) in ids.iter().enumerate() {
            let mut crng =
                ChaCha20Rng::seed_from_u64(self.seed.wrapping_mul(1_000_003).wrapping_add(id.0));
            let identity = Arc::new(IdentityKey::generate(&mut crng)?);
            roster.push(RosterEntry {
                id,
                identity: identity.public(),
                credential: Vec::new(),
            });
            let raw = match self.inputs.as_ref().and_then(|v| v.get(k)) {
                Some(r) => r.clone(),
                None => {
                    let values = (0..p.vector_len)
                        .map(|_| (crng.next_u32() as f32 / u32::MAX as f32) * 2.4 - 1.2)
                        .collect();
                    (values, 1 + crng.next_u32() % p.max_weight.max(1))
                }
            };
            let input = QuantizedInput::quantize(&p, &raw.0, raw.1.min(p.max_weight), &mut crng)?;
            let mut session = ClientSession::new(ClientConfig::new(id, identity));
            session.set_input(input.clone())?;
            let mut silent_from = self.faults.drop_at.get(&id).copied();
            if self.faults.drop_rate > 0.0
                && (fault_rng.next_u64() as f64 / u64::MAX as f64) < self.faults.drop_rate
            {
                let s = STAGES
                    .get((fault_rng.next_u32() % 5) as usize)
                    .copied()
                    .unwrap_or(Stage::Unmasking);
                silent_from = Some(silent_from.map_or(s, |o| o.min(s)));
            }
            clients.push(SimClient {
                id,
                session,
                rng: crng,
                silent_from,
                time: Duration::ZERO,
                up: 0,
                down: 0,
                input,
                raw,
            });
        }
        let mut server_time = Duration::ZERO;
        let started = Instant::now();
        let mut server = ServerSession::start(p.clone(), roster, &mut rng)?;
        server_time += started.elapsed();
        let mut masked_input_bytes = 0usize;
        let mut final_step: Option<Duration> = None;
        let mut events = Vec::new();
        // Bounded: each stage needs at most two passes (answers, then the deadline).
        for _ in 0..32 {
            if server.is_terminal() {
                break;
            }
            // Server → clients.
            let mut batches: BTreeMap<ClientId, Vec<Vec<u8>>> = BTreeMap::new();
            while let Some((to, msg)) = server.poll_outbox() {
                for bytes in self.faulty(&mut fault_rng, msg.encode()) {
                    batches.entry(to).or_default().push(bytes);
                }
            }
            clients.par_iter_mut().for_each(|c| {
                let Some(batch) = batches.get(&c.id) else {
                    return;
                };
                for bytes in batch {
                    c.down += bytes.len();
                    if c.session.is_terminal() {
                        continue;
                    }
                    let t0 = Instant::now();
                    let _ = c.session.handle_bytes(bytes, &mut c.rng);
                    c.time += t0.elapsed();
                }
            });
            // Clients → server.
            let mut inbound: Vec<(ClientId, Vec<u8>)> = Vec::new();
            for c in &mut clients {
                while let Some(msg) = c.session.poll_outbox() {
                    if c.silent_from.is_some_and(|s| stage_of(&msg) >= s) {
                        continue;
                    }
                    let t0 = Instant::now();
                    let bytes = msg.encode();
                    c.time += t0.elapsed();
                    if matches!(msg, ClientMessage::MaskedInput { .. }) {
                        masked_input_bytes = bytes.len();
                    }
                    c.up += bytes.len();
                    for b in self.faulty(&mut fault_rng, bytes) {
                        inbound.push((c.id, b));
                    }
                }
            }
            if self.faults.reorder {
                shuffle(&mut inbound, &mut fault_rng);
            }
            let progressed = !inbound.is_empty();
            for (from, bytes) in inbound {
                let t0 = Instant::now();
                let _ = server.handle_bytes(from, &bytes);
                let spent = t0.elapsed();
                server_time += spent;
                if server.is_terminal() && final_step.is_none() {
                    final_step = Some(spent);
                }
            }
            if !progressed && !server.is_terminal() {
                let t0 = Instant::now();
                server.on_deadline();
                let spent = t0.elapsed();
                server_time += spent;
                if server.is_terminal() {
                    final_step = Some(spent);
                }
            }
            events.extend(server.take_events());
        }
        // Tell the clients about an abort (for their final states).
        while let Some((to, msg)) = server.poll_outbox() {
            if let Some(c) = clients.iter_mut().find(|c| c.id == to) {
                let _ = c.session.handle(msg, &mut c.rng);
            }
        }
        events.extend(server.take_events());
        let result = match server.state() {
            crate::server::ServerState::Completed(a) => Ok(a.clone()),
            crate::server::ServerState::Aborted(r) => Err(r.clone()),
            _ => Err(AbortReason::Cancelled),
        };
        let survivors: Vec<ClientId> = match &result {
            Ok(a) => a.survivors.clone(),
            Err(_) => Vec::new(),
        };
        let m = p.vector_len as usize;
        let mut expected_sums = vec![0u32; m];
        let mut expected_weight = 0u64;
        let mut weighted = vec![0f64; m];
        let clip = f64::from(p.clip);
        for c in clients
            .iter()
            .filter(|c| survivors.binary_search(&c.id).is_ok())
        {
            let v = c.input.values();
            expected_weight += u64::from(v.first().copied().unwrap_or(0));
            for (s, q) in expected_sums.iter_mut().zip(v.iter().skip(1)) {
                *s = s.wrapping_add(*q);
            }
            let w = f64::from(c.raw.1);
            for (acc, x) in weighted.iter_mut().zip(&c.raw.0) {
                *acc += w * f64::from(*x).clamp(-clip, clip);
            }
        }
        let plain_mean = weighted
            .iter()
            .map(|x| x / expected_weight.max(1) as f64)
            .collect();
        let refusals = clients
            .iter()
            .filter_map(|c| match c.session.state() {
                crate::client::ClientState::Aborted(r) => Some((c.id, r.clone())),
                _ => None,
            })
            .collect();
        let silenced = clients
            .iter()
            .filter_map(|c| c.silent_from.map(|s| (c.id, s)))
            .collect();
        let nclients = clients.len().max(1) as u32;
        let stats = Stats {
            server_time,
            server_final_step: final_step.unwrap_or_default(),
            client_time_max: clients.iter().map(|c| c.time).max().unwrap_or_default(),
            client_time_mean: clients.iter().map(|c| c.time).sum::<Duration>() / nclients,
            client_bytes_up_max: clients.iter().map(|c| c.up).max().unwrap_or(0),
            client_bytes_down_max: clients.iter().map(|c| c.down).max().unwrap_or(0),
            masked_input_bytes,
        };
        Ok(Outcome {
            result,
            expected_sums,
            expected_weight,
            plain_mean,
            refusals,
            silenced,
            events,
            stats,
        })
    }

    /// Applies duplication and tampering to one message in flight.
    fn faulty(&self, rng: &mut ChaCha20Rng, mut bytes: Vec<u8>) -> Vec<Vec<u8>> {
        let f = &self.faults;
        if f.tamper_rate > 0.0 && unit(rng) < f.tamper_rate && !bytes.is_empty() {
            // A masked input (type 0x83) is hit only in its 38-byte header.
            let span = if bytes.get(1) == Some(&0x83) {
                bytes.len().min(38)
            } else {
                bytes.len()
            };
            let bit = (rng.next_u64() % (span as u64 * 8)) as usize;
            if let Some(b) = bytes.get_mut(bit / 8) {
                *b ^= 1 << (bit % 8);
            }
        }
        if f.duplicate_rate > 0.0 && unit(rng) < f.duplicate_rate {
            vec![bytes.clone(), bytes]
        } else {
            vec![bytes]
        }
    }
}

fn unit(rng: &mut ChaCha20Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

fn shuffle<T>(v: &mut [T], rng: &mut ChaCha20Rng) {
    for i in (1..v.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

/// Convenience for tests: a roster entry list and identities for `n` clients from `seed`.
pub fn roster(n: u32, seed: u64) -> Result<(Vec<RosterEntry>, Vec<Arc<IdentityKey>>), Error> {
    let mut entries = Vec::new();
    let mut keys = Vec::new();
    for id in Simulation::client_ids(n) {
        let mut crng = ChaCha20Rng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(id.0));
        let k = Arc::new(IdentityKey::generate(&mut crng)?);
        entries.push(RosterEntry {
            id,
            identity: k.public(),
            credential: Vec::new(),
        });
        keys.push(k);
    }
    Ok((entries, keys))
}

/// Decodes a server message the simulator routed (for tests that intercept traffic).
pub fn decode_server(bytes: &[u8]) -> Option<ServerMessage> {
    ServerMessage::decode(bytes).ok()
}
