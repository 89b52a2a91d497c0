//! Bodies of the aegis-secagg fuzz targets, shared by the cargo-fuzz targets in
//! `fuzz/fuzz_targets/` (nightly, libFuzzer) and by `crates/aegis-secagg/tests/fuzz_smoke.rs`
//! (stable, seeded random and mutated-valid inputs), which include this file with `#[path]`.
//!
//! - [`decode`]: arbitrary bytes → `ServerMessage::decode` and `ClientMessage::decode`; whatever
//!   decodes must re-encode to bytes that decode to an equal value (and re-encode identically).
//! - [`server`]: a `ServerSession` over a 5-client roster, fed a script read from the input:
//!   honest clients' messages, arbitrary bytes, mutated honest messages, cross-client replays,
//!   messages from outside the roster and deadlines; then the round is driven to its end with
//!   honest messages and deadlines. It must never panic, and a round that only ever saw honest
//!   messages and deadlines must, if it completes, produce the exact sum of its survivors.

#![allow(dead_code)]

use std::sync::{Arc, OnceLock};

use aegis_secagg::client::{ClientConfig, ClientSession};
use aegis_secagg::keys::IdentityKey;
use aegis_secagg::messages::{ClientMessage, RosterEntry, ServerMessage};
use aegis_secagg::params::{Params, Policy};
use aegis_secagg::quant::QuantizedInput;
use aegis_secagg::server::{ServerSession, ServerState};
use aegis_secagg::sim;
use aegis_secagg::{ClientId, Error};
use chacha20::ChaCha20Rng;
use rand_core::SeedableRng;

/// Roster size of the server target.
pub(crate) const N: u32 = 5;
/// Vector length of the server target (small: the PRG is not what is fuzzed).
pub(crate) const M: u32 = 6;
/// Most script operations read from one input.
const MAX_OPS: usize = 96;
/// Passes of honest delivery and deadlines after the script (each stage needs at most two).
const FINISH_PASSES: usize = 16;

/// Whether `x` equals itself (false for a value holding a NaN, such as `Setup` with a NaN clip).
#[allow(clippy::eq_op)]
fn reflexive<T: PartialEq>(x: &T) -> bool {
    x == x
}

/// The `decode` target.
pub(crate) fn decode(data: &[u8]) {
    if let Ok(msg) = ServerMessage::decode(data) {
        let bytes = msg.encode();
        let again = match ServerMessage::decode(&bytes) {
            Ok(m) => m,
            Err(e) => panic!("re-encoded {} does not decode: {e}", msg.kind()),
        };
        if reflexive(&msg) {
            assert!(msg == again, "{} changed in a round trip", msg.kind());
        }
        assert!(
            again.encode() == bytes,
            "{} re-encodes differently",
            msg.kind()
        );
    }
    if let Ok(msg) = ClientMessage::decode(data) {
        let bytes = msg.encode();
        let again = match ClientMessage::decode(&bytes) {
            Ok(m) => m,
            Err(e) => panic!("re-encoded {} does not decode: {e}", msg.kind()),
        };
        assert!(msg == again, "{} changed in a round trip", msg.kind());
        assert!(
            again.encode() == bytes,
            "{} re-encodes differently",
            msg.kind()
        );
    }
}

/// The roster and identity keys of the server target (made once: key generation is not what is
/// fuzzed).
pub(crate) fn fixture() -> &'static (Vec<RosterEntry>, Vec<Arc<IdentityKey>>) {
    static FIXTURE: OnceLock<(Vec<RosterEntry>, Vec<Arc<IdentityKey>>)> = OnceLock::new();
    FIXTURE.get_or_init(|| match sim::roster(N, 1) {
        Ok(r) => r,
        Err(e) => panic!("roster: {e}"),
    })
}

pub(crate) fn params() -> Params {
    match Params::recommended(N, M, 1.0, 10, &Policy::default()) {
        Ok(p) => p,
        Err(e) => panic!("params: {e}"),
    }
}

/// Reads script operations from the fuzz input.
struct Script<'a> {
    data: &'a [u8],
}

impl Script<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.data.split_first()?;
        self.data = rest;
        Some(b)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes([self.byte()?, self.byte()?]))
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }
}

/// One honest client and the messages it has produced but the script has not delivered yet.
struct Honest {
    id: ClientId,
    session: ClientSession,
    rng: ChaCha20Rng,
    queue: std::collections::VecDeque<Vec<u8>>,
    input: Vec<u32>,
}

/// A server, its honest clients, and what was delivered.
pub(crate) struct World {
    server: ServerSession,
    clients: Vec<Honest>,
    /// Every honest message produced so far (for replays), with its author's index.
    history: Vec<(usize, Vec<u8>)>,
    /// Whether anything but honest messages and deadlines reached the server.
    tainted: bool,
}

impl World {
    pub(crate) fn new() -> World {
        let (roster, keys) = fixture();
        let p = params();
        let server = match ServerSession::start(
            p.clone(),
            roster.clone(),
            &mut ChaCha20Rng::seed_from_u64(7),
        ) {
            Ok(s) => s,
            Err(e) => panic!("server start: {e}"),
        };
        let clients = roster
            .iter()
            .zip(keys)
            .enumerate()
            .map(|(k, (entry, key))| {
                let mut session = ClientSession::new(ClientConfig::new(entry.id, key.clone()));
                // Weight first, then small quantized values, all distinct per client.
                let input: Vec<u32> = (0..p.masked_len() as u32)
                    .map(|j| {
                        if j == 0 {
                            1 + k as u32
                        } else {
                            (j * 31 + k as u32 * 7) % 100
                        }
                    })
                    .collect();
                let q = match QuantizedInput::from_entries(&p, input.clone()) {
                    Ok(q) => q,
                    Err(e) => panic!("input: {e}"),
                };
                if let Err(e) = session.set_input(q) {
                    panic!("set_input: {e}");
                }
                Honest {
                    id: entry.id,
                    session,
                    rng: ChaCha20Rng::seed_from_u64(100 + k as u64),
                    queue: Default::default(),
                    input,
                }
            })
            .collect();
        let mut w = World {
            server,
            clients,
            history: Vec::new(),
            tainted: false,
        };
        w.pump();
        w
    }

    /// Routes the server's outbox to the honest clients and queues what they answer.
    fn pump(&mut self) {
        while let Some((to, msg)) = self.server.poll_outbox() {
            let bytes = msg.encode();
            if let Some((k, c)) = self
                .clients
                .iter_mut()
                .enumerate()
                .find(|(_, c)| c.id == to)
            {
                // A refusal is a legitimate outcome for an honest client (the server may have
                // been fed garbage); only a panic is a finding.
                let _ = c.session.handle_bytes(&bytes, &mut c.rng);
                while let Some(out) = c.session.poll_outbox() {
                    let b = out.encode();
                    self.history.push((k, b.clone()));
                    c.queue.push_back(b);
                }
            }
        }
    }

    fn deliver(&mut self, k: usize, bytes: &[u8]) {
        let Some(id) = self.clients.get(k).map(|c| c.id) else {
            return;
        };
        match self.server.handle_bytes(id, bytes) {
            Ok(()) | Err(Error::Completed | Error::Aborted(_)) => {}
            Err(e) => panic!("handle_bytes from a roster member returned {e}"),
        }
        self.pump();
    }

    fn deliver_honest(&mut self, k: usize) -> bool {
        let Some(bytes) = self.clients.get_mut(k).and_then(|c| c.queue.pop_front()) else {
            return false;
        };
        self.deliver(k, &bytes);
        true
    }

    fn deadline(&mut self) {
        self.server.on_deadline();
        self.pump();
    }

    /// Runs one script operation; `None` when the input is exhausted.
    fn step(&mut self, s: &mut Script<'_>) -> Option<()> {
        let op = s.byte()?;
        let k = usize::from(op >> 3) % self.clients.len();
        match op & 7 {
            0..=2 => {
                self.deliver_honest(k);
            }
            3 => self.deadline(),
            4 => {
                // Arbitrary bytes from client k.
                let len = usize::from(s.u16()?) % 2048;
                let bytes = s.bytes(len).to_vec();
                self.tainted = true;
                self.deliver(k, &bytes);
            }
            5 => {
                // Client k's next honest message, mutated: up to 4 edits, then maybe resized.
                let edits = s.byte()?;
                let mut flips = Vec::new();
                for _ in 0..(edits & 3) + 1 {
                    flips.push((usize::from(s.u16()?), s.byte()?));
                }
                let Some(mut bytes) = self.clients.get_mut(k).and_then(|c| c.queue.pop_front())
                else {
                    return Some(());
                };
                for (at, v) in flips {
                    let len = bytes.len().max(1);
                    if let Some(b) = bytes.get_mut(at % len) {
                        *b ^= v.max(1);
                    }
                }
                match edits >> 5 {
                    0 => bytes.truncate(bytes.len().saturating_sub(usize::from(edits & 31))),
                    1 => bytes.extend(std::iter::repeat_n(edits, usize::from(edits & 31))),
                    _ => {}
                }
                self.tainted = true;
                self.deliver(k, &bytes);
            }
            6 => {
                // Replay an earlier honest message, as client k (its author or another).
                if self.history.is_empty() {
                    return Some(());
                }
                let i = usize::from(s.u16()?) % self.history.len();
                let (author, bytes) = self.history.get(i)?.clone();
                if author != k {
                    self.tainted = true;
                }
                self.deliver(k, &bytes);
            }
            _ => {
                // From outside the roster: refused without touching the round.
                let len = usize::from(s.byte()?);
                let bytes = s.bytes(len).to_vec();
                let r = self.server.handle_bytes(ClientId(u64::from(op)), &bytes);
                assert!(
                    matches!(r, Err(Error::UnknownClient(_))),
                    "a sender outside the roster got {r:?}"
                );
            }
        }
        Some(())
    }

    /// Delivers every queued honest message, then the deadline, until the round ends.
    fn finish(&mut self) {
        for _ in 0..FINISH_PASSES {
            if self.server.is_terminal() {
                break;
            }
            let mut any = false;
            for k in 0..self.clients.len() {
                while self.deliver_honest(k) {
                    any = true;
                }
            }
            if !any && !self.server.is_terminal() {
                self.deadline();
            }
        }
        assert!(
            self.server.is_terminal(),
            "round did not end: {:?}",
            self.server
        );
    }

    /// If the round completed on honest messages only, its sum is the survivors' exact sum.
    fn check(&self) {
        if self.tainted {
            return;
        }
        let ServerState::Completed(agg) = self.server.state() else {
            return;
        };
        let mut sum = vec![0u32; params().masked_len()];
        for c in &self.clients {
            if agg.survivors.binary_search(&c.id).is_ok() {
                for (s, v) in sum.iter_mut().zip(&c.input) {
                    *s = s.wrapping_add(*v);
                }
            }
        }
        assert_eq!(
            u64::from(sum.first().copied().unwrap_or(0)),
            agg.weight_sum,
            "weight sum of an honest round"
        );
        assert_eq!(
            sum.get(1..).unwrap_or_default(),
            agg.sums.as_slice(),
            "sum of an honest round"
        );
    }

    /// Honest messages produced so far (for seeding mutations).
    pub(crate) fn history(&self) -> impl Iterator<Item = &[u8]> {
        self.history.iter().map(|(_, b)| b.as_slice())
    }
}

/// How a `server` run ended (for the smoke test's coverage checks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ran {
    /// The round completed (else it aborted).
    pub(crate) completed: bool,
    /// Something other than honest messages and deadlines reached the server.
    pub(crate) tainted: bool,
}

/// The `server` target.
pub(crate) fn server(data: &[u8]) -> Ran {
    let mut w = World::new();
    let mut s = Script { data };
    for _ in 0..MAX_OPS {
        if w.step(&mut s).is_none() {
            break;
        }
    }
    w.finish();
    w.check();
    Ran {
        completed: matches!(w.server.state(), ServerState::Completed(_)),
        tainted: w.tainted,
    }
}

/// Every message of one honest round (server's and clients'), encoded: seeds for mutation.
pub(crate) fn honest_transcript() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let (roster, keys) = fixture();
    let p = params();
    let mut server = match ServerSession::start(
        p.clone(),
        roster.clone(),
        &mut ChaCha20Rng::seed_from_u64(7),
    ) {
        Ok(s) => s,
        Err(e) => panic!("server start: {e}"),
    };
    let mut clients: Vec<(ClientId, ClientSession, ChaCha20Rng)> = roster
        .iter()
        .zip(keys)
        .enumerate()
        .map(|(k, (e, key))| {
            let mut s = ClientSession::new(ClientConfig::new(e.id, key.clone()));
            let q = QuantizedInput::from_entries(&p, vec![1; p.masked_len()]);
            if let Ok(q) = q {
                let _ = s.set_input(q);
            }
            (e.id, s, ChaCha20Rng::seed_from_u64(k as u64))
        })
        .collect();
    for _ in 0..FINISH_PASSES {
        if server.is_terminal() {
            break;
        }
        let mut inbound = Vec::new();
        while let Some((to, msg)) = server.poll_outbox() {
            let bytes = msg.encode();
            out.push(bytes.clone());
            if let Some((_, c, rng)) = clients.iter_mut().find(|(id, _, _)| *id == to) {
                let _ = c.handle_bytes(&bytes, rng);
                while let Some(m) = c.poll_outbox() {
                    inbound.push((to, m.encode()));
                }
            }
        }
        if inbound.is_empty() {
            server.on_deadline();
        }
        for (from, bytes) in inbound {
            out.push(bytes.clone());
            let _ = server.handle_bytes(from, &bytes);
        }
    }
    out
}
