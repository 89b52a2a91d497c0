#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! A malicious server against honest clients, and malicious clients against an honest server.
//!
//! The harness runs one honest `ServerSession` and `n` honest `ClientSession`s and pumps their
//! messages by hand; the tests sit between the two and rewrite the server's messages (a
//! malicious server) or the clients' messages (a malicious client). Every rewritten server
//! message is first put through the wire encoding, so each attack is one a real server could
//! send. The protocol is described in `docs/secagg.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use aegis_secagg::messages::{Advertisement, RevealedShare, RosterEntry};
use aegis_secagg::{
    ClientConfig, ClientId, ClientMessage, ClientSession, ClientState, DropReason, Error,
    IdentityKey, Params, Policy, QuantizedInput, Refusal, ServerEvent, ServerMessage,
    ServerSession, SessionId, Stage, sim,
};
use chacha20::ChaCha20Rng;
use rand_core::SeedableRng;

type Batch = Vec<(ClientId, ServerMessage)>;

/// One server, `n` clients, and logs of everything that went between them.
struct Net {
    params: Params,
    roster: Vec<RosterEntry>,
    keys: Vec<Arc<IdentityKey>>,
    ids: Vec<ClientId>,
    server: ServerSession,
    clients: BTreeMap<ClientId, ClientSession>,
    rngs: BTreeMap<ClientId, ChaCha20Rng>,
    inputs: BTreeMap<ClientId, QuantizedInput>,
    /// Every message a client put in its outbox, in order.
    sent: Vec<(ClientId, ClientMessage)>,
    /// Every message delivered to a client (after any rewriting), in order.
    received: Vec<(ClientId, ServerMessage)>,
    /// Every server event.
    events: Vec<ServerEvent>,
}

impl Net {
    fn new(params: Params, seed: u64) -> Net {
        Net::with_server_seed(params, seed, seed ^ 0x5e55_1011)
    }

    /// Clients (identities and inputs) from `roster_seed`, the server (session id) from
    /// `server_seed`: two nets with the same roster seed are two rounds of the same clients.
    fn with_server_seed(params: Params, roster_seed: u64, server_seed: u64) -> Net {
        let (roster, keys) = sim::roster(params.num_clients, roster_seed).unwrap();
        let ids: Vec<ClientId> = roster.iter().map(|e| e.id).collect();
        let mut clients = BTreeMap::new();
        let mut rngs = BTreeMap::new();
        let mut inputs = BTreeMap::new();
        for (id, key) in ids.iter().zip(&keys) {
            let mut rng =
                ChaCha20Rng::seed_from_u64(server_seed.wrapping_mul(1_000_033).wrapping_add(id.0));
            let values: Vec<f32> = (0..u64::from(params.vector_len))
                .map(|j| ((id.0 * 7 + j * 3) % 23) as f32 / 11.0 - 1.0)
                .collect();
            let weight = 1 + (id.0 % u64::from(params.max_weight)) as u32;
            let input = QuantizedInput::quantize(&params, &values, weight, &mut rng).unwrap();
            // docs/secagg.md §2: the input may be supplied before Setup.
            let mut c = ClientSession::new(ClientConfig::new(*id, key.clone()));
            c.set_input(input.clone()).unwrap();
            clients.insert(*id, c);
            rngs.insert(*id, rng);
            inputs.insert(*id, input);
        }
        let mut srng = ChaCha20Rng::seed_from_u64(server_seed);
        let server = ServerSession::start(params.clone(), roster.clone(), &mut srng).unwrap();
        Net {
            params,
            roster,
            keys,
            ids,
            server,
            clients,
            rngs,
            inputs,
            sent: Vec::new(),
            received: Vec::new(),
            events: Vec::new(),
        }
    }

    fn t(&self) -> usize {
        self.params.threshold as usize
    }

    fn session(&self) -> SessionId {
        *self.server.session()
    }

    fn client(&self, id: ClientId) -> &ClientSession {
        &self.clients[&id]
    }

    fn neighbours(&self, id: ClientId) -> BTreeSet<ClientId> {
        self.server.neighbours(id).into_iter().collect()
    }

    /// Drains the server's outbox.
    fn server_batch(&mut self) -> Batch {
        let mut out = Vec::new();
        while let Some(m) = self.server.poll_outbox() {
            out.push(m);
        }
        out
    }

    /// Delivers one (possibly rewritten) server message. It must survive the wire encoding
    /// unchanged (docs/secagg.md §7), so the attack is one a real server can mount.
    fn deliver(&mut self, to: ClientId, msg: ServerMessage) -> Result<(), Error> {
        let wire = ServerMessage::decode(&msg.encode()).expect("the attack must be encodable");
        assert_eq!(wire, msg, "the attack must survive the wire encoding");
        self.deliver_raw(to, msg)
    }

    fn deliver_raw(&mut self, to: ClientId, msg: ServerMessage) -> Result<(), Error> {
        self.received.push((to, msg.clone()));
        let rng = self.rngs.get_mut(&to).unwrap();
        self.clients.get_mut(&to).unwrap().handle(msg, rng)
    }

    fn deliver_honest(&mut self, batch: Batch) {
        for (to, m) in batch {
            let kind = m.kind();
            let r = self.deliver(to, m);
            assert_eq!(r, Ok(()), "client {to} refused an honest {kind}");
        }
    }

    /// Drains one client's outbox (and logs it).
    fn drain(&mut self, id: ClientId) -> Vec<ClientMessage> {
        let c = self.clients.get_mut(&id).unwrap();
        let mut out = Vec::new();
        while let Some(m) = c.poll_outbox() {
            out.push(m);
        }
        self.sent.extend(out.iter().map(|m| (id, m.clone())));
        out
    }

    fn drain_all(&mut self) -> Vec<(ClientId, ClientMessage)> {
        let ids = self.ids.clone();
        let mut out = Vec::new();
        for id in ids {
            out.extend(self.drain(id).into_iter().map(|m| (id, m)));
        }
        out
    }

    /// Hands client messages to the server, which must never fail on them.
    fn forward(&mut self, msgs: Vec<(ClientId, ClientMessage)>) {
        for (from, m) in msgs {
            let kind = m.kind();
            let r = self.server.handle(from, m);
            assert_eq!(r, Ok(()), "the server failed on {kind} from {from}");
        }
        self.events.extend(self.server.take_events());
    }

    /// Runs the round honestly until the server's next batch is of `kind`, and returns that
    /// batch undelivered.
    fn advance_to(&mut self, kind: &str) -> Batch {
        for _ in 0..8 {
            let batch = self.server_batch();
            assert!(
                !batch.is_empty(),
                "stuck before {kind}: {:?}",
                self.server.state()
            );
            if batch[0].1.kind() == kind {
                assert!(batch.iter().all(|(_, m)| m.kind() == kind));
                return batch;
            }
            self.deliver_honest(batch);
            let out = self.drain_all();
            self.forward(out);
        }
        panic!("never reached {kind}");
    }

    /// Runs the rest of the round honestly (clients already terminal are skipped; a stage
    /// nobody answers any more ends at the deadline) until the server is terminal.
    fn finish(&mut self) {
        for _ in 0..16 {
            if self.server.is_terminal() {
                return;
            }
            let batch = self.server_batch();
            if batch.is_empty() {
                self.server.on_deadline();
                self.events.extend(self.server.take_events());
                continue;
            }
            for (to, m) in batch {
                if !self.client(to).is_terminal() {
                    let kind = m.kind();
                    let r = self.deliver(to, m);
                    assert_eq!(r, Ok(()), "client {to} refused an honest {kind}");
                }
            }
            let out = self.drain_all();
            self.forward(out);
        }
        panic!("the round did not end: {:?}", self.server.state());
    }

    /// The server completed with exactly the sum of its survivors' inputs (docs/secagg.md §6).
    fn assert_exact_sum(&self, survivors: &[ClientId]) {
        let agg = self
            .server
            .aggregate()
            .unwrap_or_else(|| panic!("round did not complete: {:?}", self.server.state()));
        assert_eq!(agg.survivors, survivors);
        let mut weight = 0u64;
        let mut sums = vec![0u32; self.params.vector_len as usize];
        for id in survivors {
            let v = self.inputs[id].values();
            weight += u64::from(v[0]);
            for (s, q) in sums.iter_mut().zip(&v[1..]) {
                *s = s.wrapping_add(*q);
            }
        }
        assert_eq!(agg.weight_sum, weight);
        assert_eq!(agg.sums, sums);
    }

    fn dropped(&self) -> Vec<(ClientId, Stage, DropReason)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                ServerEvent::Dropped {
                    client,
                    stage,
                    reason,
                } => Some((*client, *stage, reason.clone())),
                _ => None,
            })
            .collect()
    }

    fn unmasks(&self) -> Vec<(ClientId, &[RevealedShare], &[RevealedShare])> {
        self.sent
            .iter()
            .filter_map(|(from, m)| match m {
                ClientMessage::Unmask {
                    self_mask, keys, ..
                } => Some((*from, self_mask.as_slice(), keys.as_slice())),
                _ => None,
            })
            .collect()
    }

    /// The global safety property (docs/secagg.md §4, §3): no honest client ever reveals both
    /// shares of one owner, and for no owner do the honest clients together reveal `t`
    /// self-mask shares and `t` key shares.
    fn assert_no_double_reveal(&self) {
        let mut b: BTreeMap<ClientId, BTreeSet<ClientId>> = BTreeMap::new();
        let mut s: BTreeMap<ClientId, BTreeSet<ClientId>> = BTreeMap::new();
        let mut revealers = BTreeSet::new();
        for (holder, self_mask, keys) in self.unmasks() {
            assert!(revealers.insert(holder), "client {holder} revealed twice");
            for r in self_mask {
                b.entry(r.owner).or_default().insert(holder);
            }
            for r in keys {
                s.entry(r.owner).or_default().insert(holder);
            }
        }
        let t = self.t();
        for id in &self.ids {
            let (bs, ss) = (b.get(id).cloned(), s.get(id).cloned());
            let (bs, ss) = (bs.unwrap_or_default(), ss.unwrap_or_default());
            let both: Vec<_> = bs.intersection(&ss).collect();
            assert!(both.is_empty(), "{both:?} revealed both shares of {id}");
            assert!(
                bs.len() < t || ss.len() < t,
                "the server holds {} self-mask shares and {} key shares of {id} (t = {t})",
                bs.len(),
                ss.len()
            );
        }
    }

    /// `id` refused with exactly `expected`, stays aborted, and sends nothing.
    fn assert_refused(&mut self, id: ClientId, res: Result<(), Error>, expected: &Refusal) {
        self.assert_refused_with(id, res, |r| r == expected);
        if let ClientState::Aborted(r) = self.client(id).state() {
            assert_eq!(r, expected);
        }
    }

    fn assert_refused_with(
        &mut self,
        id: ClientId,
        res: Result<(), Error>,
        ok: impl Fn(&Refusal) -> bool,
    ) {
        match &res {
            Err(Error::Refused(r)) => assert!(ok(r), "client {id} refused with {r:?}"),
            other => panic!("client {id} did not refuse: {other:?}"),
        }
        match self.client(id).state() {
            ClientState::Aborted(r) => {
                assert_eq!(res, Err(Error::Refused(r.clone())));
            }
            s => panic!("client {id} is in {s:?}, not aborted"),
        }
        assert!(self.drain(id).is_empty(), "client {id} sent after refusing");
    }
}

/// Seven clients on the complete graph: k = 6, t = 4 (docs/secagg.md §3).
fn complete7() -> Params {
    let p = Params::recommended(7, 5, 1.0, 10, &Policy::default()).unwrap();
    assert_eq!((p.degree, p.threshold), (6, 4));
    p
}

/// Twelve clients on a Harary graph of degree 6, t = 4, a 24-bit modulus (docs/secagg.md §3).
fn sparse12() -> Params {
    let p = Params {
        num_clients: 12,
        degree: 6,
        threshold: 4,
        mod_bits: 24,
        quant_levels: 1 << 16,
        clip: 1.0,
        max_weight: 10,
        vector_len: 6,
    };
    p.validate().unwrap();
    p
}

fn survivors_of(m: &ServerMessage) -> Vec<ClientId> {
    match m {
        ServerMessage::ConsistencyRequest { survivors, .. }
        | ServerMessage::UnmaskRequest { survivors, .. } => survivors.clone(),
        other => panic!("no survivor set in {}", other.kind()),
    }
}

fn consistency_sig(m: &ClientMessage) -> [u8; 64] {
    match m {
        ClientMessage::Consistency { signature, .. } => *signature,
        other => panic!("expected Consistency, got {}", other.kind()),
    }
}

fn find(batch: &Batch, id: ClientId) -> ServerMessage {
    batch
        .iter()
        .find(|(to, _)| *to == id)
        .map(|(_, m)| m.clone())
        .unwrap_or_else(|| panic!("nothing for {id}"))
}

/// Sends each client of the ConsistencyRequest batch the set `set_of(id)` and returns, per
/// client, the set it signed and its signature (the server never sees them).
fn split_consistency(
    net: &mut Net,
    batch: Batch,
    set_of: impl Fn(ClientId) -> Vec<ClientId>,
) -> BTreeMap<ClientId, (Vec<ClientId>, [u8; 64])> {
    let session = net.session();
    let mut signed = BTreeMap::new();
    for (to, _) in batch {
        let survivors = set_of(to);
        let r = net.deliver(
            to,
            ServerMessage::ConsistencyRequest {
                session,
                survivors: survivors.clone(),
            },
        );
        assert_eq!(r, Ok(()), "client {to} refused a valid survivor set");
        let out = net.drain(to);
        assert_eq!(out.len(), 1);
        signed.insert(to, (survivors, consistency_sig(&out[0])));
    }
    signed
}

// ---------------------------------------------------------------------------------------------
// Inconsistent survivor sets (docs/secagg.md §2 ConsistencyCheck, §4).
// ---------------------------------------------------------------------------------------------

/// The server drops X from the survivor set for half of X's neighbours, collects everybody's
/// signature, and then tries every UnmaskRequest it can build. Nobody may reveal anything.
#[test]
fn inconsistent_survivor_sets_on_the_complete_graph_are_refused() {
    let mut net = Net::new(complete7(), 11);
    let ids = net.ids.clone();
    let batch = net.advance_to("ConsistencyRequest");
    let full = survivors_of(&batch[0].1);
    assert_eq!(full, ids);
    let x = ids[0];
    let without_x: Vec<ClientId> = full.iter().copied().filter(|&i| i != x).collect();
    // A = {X, 1, 2, 3} sign the full set; B = {4, 5, 6} (half of X's 6 neighbours) sign U3 \ {X}.
    let in_b = |id: ClientId| ids[4..].contains(&id);
    let signed = split_consistency(&mut net, batch, |id| {
        if in_b(id) {
            without_x.clone()
        } else {
            full.clone()
        }
    });
    let session = net.session();
    let sigs_of = |who: &[ClientId]| -> Vec<(ClientId, [u8; 64])> {
        who.iter().map(|id| (*id, signed[id].1)).collect()
    };
    let t = net.t();
    let req = |survivors: &Vec<ClientId>, dropped: Vec<ClientId>, signatures| {
        ServerMessage::UnmaskRequest {
            session,
            survivors: survivors.clone(),
            dropped,
            signatures,
        }
    };

    // X and client 1: their own set with every valid signature the server has for it (3 < t).
    for me in [ids[0], ids[1]] {
        let others: Vec<ClientId> = ids[..4].iter().copied().filter(|&i| i != me).collect();
        let r = net.deliver(me, req(&full, vec![], sigs_of(&others)));
        let want = Refusal::TooFewNeighbours {
            stage: Stage::Unmasking,
            have: 3,
            need: t,
        };
        net.assert_refused(me, r, &want);
    }
    // Client 2: its own set padded with B's signatures, which are over the other set.
    let everyone_else = [ids[0], ids[1], ids[3], ids[4], ids[5], ids[6]];
    let r = net.deliver(ids[2], req(&full, vec![], sigs_of(&everyone_else)));
    net.assert_refused(ids[2], r, &Refusal::BadConsistencySignature(ids[4]));
    // Client 3: the request built from the other set.
    let r = net.deliver(ids[3], req(&without_x, vec![x], sigs_of(&ids[4..])));
    net.assert_refused(ids[3], r, &Refusal::InconsistentSurvivors);
    // Client 4 (B): its own set, X dropped, the two other B signatures.
    let r = net.deliver(ids[4], req(&without_x, vec![x], sigs_of(&ids[5..])));
    let want = Refusal::TooFewNeighbours {
        stage: Stage::Unmasking,
        have: 2,
        need: t,
    };
    net.assert_refused(ids[4], r, &want);
    // Client 5 (B): the full set with t valid signatures over it; it signed the other one.
    let r = net.deliver(ids[5], req(&full, vec![], sigs_of(&ids[..4])));
    net.assert_refused(ids[5], r, &Refusal::InconsistentSurvivors);
    // Client 6 (B): its own set with A's signatures (over the full set) mixed in.
    let mixed = [ids[1], ids[2], ids[3], ids[4], ids[5]];
    let r = net.deliver(ids[6], req(&without_x, vec![x], sigs_of(&mixed)));
    net.assert_refused(ids[6], r, &Refusal::BadConsistencySignature(ids[1]));

    assert!(net.unmasks().is_empty(), "an honest client revealed shares");
    assert!(net.clients.values().all(|c| c.is_terminal()));
    net.assert_no_double_reveal();
}

/// A signature by a client outside the signed set is refused, even from a neighbour.
#[test]
fn signature_from_outside_the_signed_set_is_refused() {
    let mut net = Net::new(complete7(), 12);
    let ids = net.ids.clone();
    let batch = net.advance_to("ConsistencyRequest");
    let full = survivors_of(&batch[0].1);
    let x = ids[0];
    let without_x: Vec<ClientId> = full.iter().copied().filter(|&i| i != x).collect();
    let signed = split_consistency(&mut net, batch, |id| {
        if id == x {
            full.clone()
        } else {
            without_x.clone()
        }
    });
    let session = net.session();
    // X signed only the full set, which is not the set client 1 signed.
    let signatures = [x, ids[2], ids[3], ids[4], ids[5]]
        .iter()
        .map(|id| (*id, signed[id].1))
        .collect();
    let r = net.deliver(
        ids[1],
        ServerMessage::UnmaskRequest {
            session,
            survivors: without_x,
            dropped: vec![x],
            signatures,
        },
    );
    net.assert_refused(ids[1], r, &Refusal::UnexpectedPeer(x));
    assert!(net.unmasks().is_empty());
}

/// The best a malicious server can do with two survivor sets, swept over graphs, seeds and
/// splits of X's neighbourhood. Each client is sent its own set, X's key share requested if X is
/// not in it, with every valid neighbour signature the server holds for that set. A client
/// reveals exactly when t of its neighbours signed its set, and the union of all reveals never
/// holds t shares of both secrets of X.
#[test]
fn two_survivor_sets_never_leak_both_secrets() {
    let mut b_shares_of_x = 0usize;
    let mut s_shares_of_x = 0usize;
    for (params, seed) in [(sparse12(), 1u64), (sparse12(), 2), (complete7(), 3)] {
        let k = params.degree as usize;
        for in_b in 1..k {
            for wide in [false, true] {
                let (b, s) = partition_attack(params.clone(), seed, in_b, wide);
                b_shares_of_x += b;
                s_shares_of_x += s;
            }
        }
    }
    // The sweep did reach reveals of both kinds, so the safety assertions were not vacuous.
    assert!(b_shares_of_x > 0 && s_shares_of_x > 0);
}

/// One split: `in_b` of X's neighbours get `U3 \ {X}`; if `wide`, so does everybody outside X's
/// closed neighbourhood. Returns how many self-mask and key shares of X the server got.
fn partition_attack(params: Params, seed: u64, in_b: usize, wide: bool) -> (usize, usize) {
    let mut net = Net::new(params, seed);
    let batch = net.advance_to("ConsistencyRequest");
    let full = survivors_of(&batch[0].1);
    let x = net.ids[(seed as usize * 5) % net.ids.len()];
    let nx: Vec<ClientId> = net.neighbours(x).into_iter().collect();
    let b_side: BTreeSet<ClientId> = if wide {
        let a_side: BTreeSet<ClientId> = nx[in_b..].iter().copied().chain([x]).collect();
        net.ids
            .iter()
            .copied()
            .filter(|i| !a_side.contains(i))
            .collect()
    } else {
        nx[..in_b].iter().copied().collect()
    };
    let without_x: Vec<ClientId> = full.iter().copied().filter(|&i| i != x).collect();
    let signed = split_consistency(&mut net, batch, |id| {
        if b_side.contains(&id) {
            without_x.clone()
        } else {
            full.clone()
        }
    });
    let session = net.session();
    let t = net.t();
    for me in net.ids.clone() {
        let (mine, _) = &signed[&me];
        let nb = net.neighbours(me);
        let signers: Vec<(ClientId, [u8; 64])> = nb
            .iter()
            .filter(|d| signed[d].0 == *mine)
            .map(|d| (*d, signed[d].1))
            .collect();
        let dropped: Vec<ClientId> = nb
            .iter()
            .copied()
            .filter(|d| mine.binary_search(d).is_err())
            .collect();
        let have = signers.len();
        let r = net.deliver(
            me,
            ServerMessage::UnmaskRequest {
                session,
                survivors: mine.clone(),
                dropped: dropped.clone(),
                signatures: signers,
            },
        );
        if have >= t {
            assert_eq!(r, Ok(()), "client {me} had {have} signatures");
            assert!(matches!(net.client(me).state(), ClientState::Completed));
            let out = net.drain(me);
            let [
                ClientMessage::Unmask {
                    self_mask, keys, ..
                },
            ] = out.as_slice()
            else {
                panic!("client {me} sent {out:?}");
            };
            let b_owners: Vec<ClientId> = self_mask.iter().map(|r| r.owner).collect();
            let s_owners: Vec<ClientId> = keys.iter().map(|r| r.owner).collect();
            let want_b: Vec<ClientId> = nb
                .iter()
                .copied()
                .filter(|d| mine.binary_search(d).is_ok())
                .collect();
            assert_eq!(b_owners, want_b);
            assert_eq!(s_owners, dropped);
        } else {
            let want = Refusal::TooFewNeighbours {
                stage: Stage::Unmasking,
                have,
                need: t,
            };
            net.assert_refused(me, r, &want);
        }
    }
    net.assert_no_double_reveal();
    let count = |key: bool| {
        net.unmasks()
            .iter()
            .filter(|(_, b, s)| (if key { s } else { b }).iter().any(|r| r.owner == x))
            .count()
    };
    (count(false), count(true))
}

// ---------------------------------------------------------------------------------------------
// Malformed unmasking requests (docs/secagg.md §2 Unmasking, §4).
// ---------------------------------------------------------------------------------------------

#[test]
fn request_for_both_shares_of_a_survivor_is_refused_and_the_round_still_completes() {
    let mut net = Net::new(complete7(), 21);
    let ids = net.ids.clone();
    let batch = net.advance_to("UnmaskRequest");
    let victim = ids[2];
    let me = ids[5];
    for (to, m) in batch {
        if to != me {
            net.deliver_honest(vec![(to, m)]);
            continue;
        }
        let ServerMessage::UnmaskRequest {
            session,
            survivors,
            dropped,
            signatures,
        } = m
        else {
            panic!()
        };
        assert!(dropped.is_empty() && survivors.contains(&victim));
        let r = net.deliver(
            me,
            ServerMessage::UnmaskRequest {
                session,
                survivors,
                dropped: vec![victim],
                signatures,
            },
        );
        net.assert_refused(me, r, &Refusal::BothSharesRequested(victim));
    }
    let out = net.drain_all();
    net.forward(out);
    net.assert_no_double_reveal();
    // The others' shares suffice (each survivor keeps 5 ≥ t revealing neighbours): the
    // server completes at the deadline with every input in the sum.
    net.finish();
    net.assert_exact_sum(&ids);
    assert!(
        net.dropped()
            .contains(&(me, Stage::Unmasking, DropReason::Timeout(Stage::Unmasking)))
    );
}

#[test]
fn survivor_set_changed_after_signing_is_refused() {
    let mut net = Net::new(complete7(), 22);
    let ids = net.ids.clone();
    let batch = net.advance_to("UnmaskRequest");
    let me = ids[1];
    let gone = ids[4];
    let ServerMessage::UnmaskRequest {
        session,
        survivors,
        signatures,
        ..
    } = find(&batch, me)
    else {
        panic!()
    };
    let smaller: Vec<ClientId> = survivors.iter().copied().filter(|&i| i != gone).collect();
    let signatures = signatures.into_iter().filter(|(i, _)| *i != gone).collect();
    let r = net.deliver(
        me,
        ServerMessage::UnmaskRequest {
            session,
            survivors: smaller,
            dropped: vec![gone],
            signatures,
        },
    );
    net.assert_refused(me, r, &Refusal::InconsistentSurvivors);
    assert!(net.unmasks().is_empty());
}

#[test]
fn survivor_set_grown_after_signing_is_refused() {
    let mut net = Net::new(complete7(), 23);
    let ids = net.ids.clone();
    let batch = net.advance_to("ConsistencyRequest");
    let me = ids[3];
    let gone = ids[6];
    let smaller: Vec<ClientId> = ids.iter().copied().filter(|&i| i != gone).collect();
    let r = net.deliver(
        me,
        ServerMessage::ConsistencyRequest {
            session: net.session(),
            survivors: smaller,
        },
    );
    assert_eq!(r, Ok(()));
    assert_eq!(net.drain(me).len(), 1);
    // Everybody else signs the full set; the server asks `me` to reveal for the full set.
    let others: Batch = batch.into_iter().filter(|(to, _)| *to != me).collect();
    net.deliver_honest(others);
    let sigs: Vec<(ClientId, [u8; 64])> = net
        .drain_all()
        .iter()
        .map(|(id, m)| (*id, consistency_sig(m)))
        .collect();
    let r = net.deliver(
        me,
        ServerMessage::UnmaskRequest {
            session: net.session(),
            survivors: ids.clone(),
            dropped: vec![],
            signatures: sigs,
        },
    );
    net.assert_refused(me, r, &Refusal::InconsistentSurvivors);
    assert!(net.unmasks().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Invalid survivor sets (docs/secagg.md §2 ConsistencyCheck, §3).
// ---------------------------------------------------------------------------------------------

#[test]
fn invalid_survivor_sets_are_refused() {
    let session_and_batch = |seed| {
        let mut net = Net::new(complete7(), seed);
        let batch = net.advance_to("ConsistencyRequest");
        (net, batch)
    };
    let is_bad = |r: &Refusal| matches!(r, Refusal::BadSurvivors(_));

    // Fewer survivors than t (but including the client).
    let (mut net, _) = session_and_batch(31);
    let ids = net.ids.clone();
    let me = ids[0];
    let survivors = ids[..net.t() - 1].to_vec();
    let r = net.deliver(
        me,
        ServerMessage::ConsistencyRequest {
            session: net.session(),
            survivors,
        },
    );
    net.assert_refused_with(me, r, is_bad);

    // The client itself missing.
    let (mut net, _) = session_and_batch(32);
    let survivors: Vec<ClientId> = ids[1..].to_vec();
    let r = net.deliver(
        me,
        ServerMessage::ConsistencyRequest {
            session: net.session(),
            survivors,
        },
    );
    net.assert_refused_with(me, r, is_bad);

    // A survivor that is not in the roster.
    let (mut net, _) = session_and_batch(33);
    let mut survivors = ids.clone();
    survivors.push(ClientId(u64::MAX));
    let r = net.deliver(
        me,
        ServerMessage::ConsistencyRequest {
            session: net.session(),
            survivors,
        },
    );
    net.assert_refused_with(me, r, is_bad);
    assert!(net.sent.iter().all(|(_, m)| m.kind() != "Consistency"));
}

/// A neighbour listed as a survivor whose shares the server withheld from this client.
#[test]
fn survivor_that_never_shared_with_the_client_is_refused() {
    let mut net = Net::new(complete7(), 34);
    let ids = net.ids.clone();
    let me = ids[2];
    let hidden = ids[5];
    let batch = net.advance_to("MaskedInputRequest");
    for (to, m) in batch {
        let m = match m {
            ServerMessage::MaskedInputRequest { session, shares } if to == me => {
                ServerMessage::MaskedInputRequest {
                    session,
                    shares: shares.into_iter().filter(|s| s.peer != hidden).collect(),
                }
            }
            m => m,
        };
        net.deliver_honest(vec![(to, m)]);
    }
    let out = net.drain_all();
    net.forward(out);
    let batch = net.server_batch();
    assert!(survivors_of(&find(&batch, me)).contains(&hidden));
    let r = net.deliver(me, find(&batch, me));
    net.assert_refused_with(me, r, |r| matches!(r, Refusal::BadSurvivors(_)));
}

/// On a sparse graph, a set with ≥ t members but fewer than t of the client's neighbours.
#[test]
fn survivor_set_with_too_few_neighbours_is_refused() {
    let mut net = Net::new(sparse12(), 35);
    let _ = net.advance_to("ConsistencyRequest");
    let me = net.ids[0];
    let nb = net.neighbours(me);
    let keep: BTreeSet<ClientId> = nb.iter().copied().take(3).collect();
    let survivors: Vec<ClientId> = net
        .ids
        .iter()
        .copied()
        .filter(|i| *i == me || keep.contains(i) || !nb.contains(i))
        .collect();
    assert!(survivors.len() >= net.t());
    let r = net.deliver(
        me,
        ServerMessage::ConsistencyRequest {
            session: net.session(),
            survivors,
        },
    );
    let want = Refusal::TooFewNeighbours {
        stage: Stage::ConsistencyCheck,
        have: 3,
        need: 4,
    };
    net.assert_refused(me, r, &want);
}

/// `Refusal::BadSurvivors` covers a malformed set. The wire decoder rejects unsorted or
/// repeated ids, but `ClientSession::handle` takes the struct directly: a set that repeats one
/// neighbour to reach the size and neighbour thresholds must be refused there too.
#[test]
fn survivor_set_with_repeated_ids_is_refused() {
    let mut net = Net::new(complete7(), 36);
    let _ = net.advance_to("ConsistencyRequest");
    let ids = net.ids.clone();
    let me = ids[0];
    // Two distinct clients, padded to t = 4 entries and 3 "neighbours" with repeats.
    let survivors = vec![me, ids[1], ids[1], ids[1], ids[1]];
    let r = net.deliver_raw(
        me,
        ServerMessage::ConsistencyRequest {
            session: net.session(),
            survivors,
        },
    );
    net.assert_refused_with(me, r, |r| matches!(r, Refusal::BadSurvivors(_)));

    // An unsorted set (binary searches over it would be meaningless).
    let mut net = Net::new(complete7(), 37);
    let _ = net.advance_to("ConsistencyRequest");
    let mut survivors = net.ids.clone();
    survivors.swap(1, 2);
    let r = net.deliver_raw(
        me,
        ServerMessage::ConsistencyRequest {
            session: net.session(),
            survivors,
        },
    );
    net.assert_refused_with(me, r, |r| matches!(r, Refusal::BadSurvivors(_)));
}

/// Likewise for the `dropped` list of an UnmaskRequest handed over as a struct: unsorted or
/// repeated ids are refused and nothing is revealed.
#[test]
fn malformed_dropped_lists_are_refused() {
    for (seed, dropped) in [(38u64, [5usize, 5]), (39, [6, 5])] {
        let mut net = Net::new(complete7(), seed);
        let ids = net.ids.clone();
        let batch = net.advance_to("ConsistencyRequest");
        // Clients 5 and 6 "dropped" after the masked input: everyone signs U3 without them.
        let u3: Vec<ClientId> = ids[..5].to_vec();
        let session = net.session();
        let mut sigs = Vec::new();
        for (to, _) in batch.into_iter().filter(|(to, _)| u3.contains(to)) {
            let r = net.deliver(
                to,
                ServerMessage::ConsistencyRequest {
                    session,
                    survivors: u3.clone(),
                },
            );
            assert_eq!(r, Ok(()));
            sigs.push((to, consistency_sig(&net.drain(to)[0])));
        }
        let me = ids[0];
        let signatures = sigs.into_iter().filter(|(i, _)| *i != me).collect();
        let r = net.deliver_raw(
            me,
            ServerMessage::UnmaskRequest {
                session,
                survivors: u3.clone(),
                dropped: dropped.iter().map(|&k| ids[k]).collect(),
                signatures,
            },
        );
        net.assert_refused_with(me, r, |r| matches!(r, Refusal::BadSurvivors(_)));
        assert!(net.unmasks().is_empty());
    }
}

// ---------------------------------------------------------------------------------------------
// Forged signatures (docs/secagg.md §5: what is signed).
// ---------------------------------------------------------------------------------------------

/// Runs to the ShareKeysRequest batch, rewrites the one for `me` and returns the result.
fn tampered_share_keys(
    seed: u64,
    me_index: usize,
    f: impl FnOnce(&mut Vec<Advertisement>),
) -> (Net, ClientId, Result<(), Error>) {
    let mut net = Net::new(complete7(), seed);
    let batch = net.advance_to("ShareKeysRequest");
    let me = net.ids[me_index];
    let ServerMessage::ShareKeysRequest {
        session,
        mut adverts,
    } = find(&batch, me)
    else {
        panic!()
    };
    f(&mut adverts);
    let r = net.deliver(me, ServerMessage::ShareKeysRequest { session, adverts });
    (net, me, r)
}

#[test]
fn forged_advertisements_are_refused() {
    // A flipped bit in one neighbour's signature.
    let (mut net, me, r) = tampered_share_keys(41, 0, |a| a[2].signature[7] ^= 0x10);
    let victim = net.ids[3];
    net.assert_refused(me, r, &Refusal::BadAdvertisement(victim));

    // Another neighbour's c_pk under the original signature (a key substitution).
    let (mut net, me, r) = tampered_share_keys(42, 0, |a| a[1].c_pk = a[4].c_pk);
    let victim = net.ids[2];
    net.assert_refused(me, r, &Refusal::BadAdvertisement(victim));

    // The same for s_pk and for the self-mask commitment.
    let (mut net, me, r) = tampered_share_keys(43, 1, |a| a[0].s_pk = a[5].s_pk);
    let victim = net.ids[0];
    net.assert_refused(me, r, &Refusal::BadAdvertisement(victim));
    let (mut net, me, r) = tampered_share_keys(44, 1, |a| a[3].commitment[0] ^= 1);
    let victim = net.ids[4];
    net.assert_refused(me, r, &Refusal::BadAdvertisement(victim));

    // One neighbour's advert relabelled as another's (all of it, signature included).
    let (mut net, me, r) = tampered_share_keys(45, 6, |a| {
        let id = a[0].id;
        a[0] = a[1].clone();
        a[0].id = id;
        a.sort_by_key(|x| x.id);
    });
    let victim = net.ids[0];
    net.assert_refused(me, r, &Refusal::BadAdvertisement(victim));
}

#[test]
fn malformed_advertisement_lists_are_refused() {
    // The client's own advert handed back to it.
    let mut net = Net::new(complete7(), 46);
    let batch = net.advance_to("ShareKeysRequest");
    let me = net.ids[0];
    let own = net
        .sent
        .iter()
        .find_map(|(from, m)| match m {
            ClientMessage::Advertise { advert, .. } if *from == me => Some(advert.clone()),
            _ => None,
        })
        .unwrap();
    let ServerMessage::ShareKeysRequest {
        session,
        mut adverts,
    } = find(&batch, me)
    else {
        panic!()
    };
    adverts.push(own);
    let r = net.deliver(me, ServerMessage::ShareKeysRequest { session, adverts });
    net.assert_refused(me, r, &Refusal::UnexpectedPeer(me));

    // A neighbour listed twice.
    let (mut net, me, r) = tampered_share_keys(47, 2, |a| a.push(a[0].clone()));
    let twice = net.ids[0];
    net.assert_refused(me, r, &Refusal::UnexpectedPeer(twice));

    // Fewer than t adverts.
    let (mut net, me, r) = tampered_share_keys(48, 2, |a| a.truncate(3));
    let want = Refusal::TooFewNeighbours {
        stage: Stage::ShareKeys,
        have: 3,
        need: 4,
    };
    net.assert_refused(me, r, &want);

    // A non-neighbour's advert on a sparse graph.
    let mut net = Net::new(sparse12(), 49);
    let batch = net.advance_to("ShareKeysRequest");
    let me = net.ids[0];
    let nb = net.neighbours(me);
    let stranger = *net
        .ids
        .iter()
        .find(|i| **i != me && !nb.contains(i))
        .unwrap();
    let foreign = find(&batch, net.neighbours(stranger).into_iter().next().unwrap());
    let ServerMessage::ShareKeysRequest {
        adverts: theirs, ..
    } = foreign
    else {
        panic!()
    };
    let stolen = theirs.into_iter().find(|a| a.id == stranger);
    let ServerMessage::ShareKeysRequest {
        session,
        mut adverts,
    } = find(&batch, me)
    else {
        panic!()
    };
    adverts.push(stolen.expect("the stranger advertised to its neighbours"));
    adverts.sort_by_key(|a| a.id);
    let r = net.deliver(me, ServerMessage::ShareKeysRequest { session, adverts });
    net.assert_refused(me, r, &Refusal::UnexpectedPeer(stranger));
}

#[test]
fn forged_consistency_signatures_are_refused() {
    // A flipped bit.
    let mut net = Net::new(complete7(), 51);
    let batch = net.advance_to("UnmaskRequest");
    let me = net.ids[0];
    let ServerMessage::UnmaskRequest {
        session,
        survivors,
        dropped,
        mut signatures,
    } = find(&batch, me)
    else {
        panic!()
    };
    signatures[3].1[40] ^= 0x01;
    let forged = signatures[3].0;
    let r = net.deliver(
        me,
        ServerMessage::UnmaskRequest {
            session,
            survivors: survivors.clone(),
            dropped: dropped.clone(),
            signatures: signatures.clone(),
        },
    );
    net.assert_refused(me, r, &Refusal::BadConsistencySignature(forged));

    // One neighbour's (valid) signature presented as another's.
    let mut net = Net::new(complete7(), 52);
    let batch = net.advance_to("UnmaskRequest");
    let me = net.ids[6];
    let ServerMessage::UnmaskRequest {
        session,
        survivors,
        dropped,
        mut signatures,
    } = find(&batch, me)
    else {
        panic!()
    };
    signatures[0].1 = signatures[1].1;
    let forged = signatures[0].0;
    let r = net.deliver(
        me,
        ServerMessage::UnmaskRequest {
            session,
            survivors,
            dropped,
            signatures,
        },
    );
    net.assert_refused(me, r, &Refusal::BadConsistencySignature(forged));
    assert!(net.unmasks().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Replays from an earlier round (docs/secagg.md §5: the session id is bound everywhere).
// ---------------------------------------------------------------------------------------------

const ROSTER_SEED: u64 = 61;
const ROUND1: u64 = 1001;
const ROUND2: u64 = 1002;

/// Round 1, run to completion; everything each client received, by kind.
fn round1() -> (SessionId, BTreeMap<(ClientId, &'static str), ServerMessage>) {
    let mut net = Net::with_server_seed(complete7(), ROSTER_SEED, ROUND1);
    net.finish();
    net.assert_exact_sum(&net.ids.clone());
    let mut by_kind = BTreeMap::new();
    for (to, m) in &net.received {
        by_kind.insert((*to, m.kind()), m.clone());
    }
    (net.session(), by_kind)
}

#[test]
fn replayed_messages_from_an_earlier_round_are_refused() {
    let (s1, old) = round1();
    for kind in [
        "Setup",
        "ShareKeysRequest",
        "MaskedInputRequest",
        "ConsistencyRequest",
        "UnmaskRequest",
    ] {
        let mut net = Net::with_server_seed(complete7(), ROSTER_SEED, ROUND2);
        assert_ne!(net.session(), s1);
        let me = net.ids[3];
        let next = if kind == "Setup" {
            // A Setup replayed to a client that already has the round-2 Setup.
            let b = net.advance_to("ShareKeysRequest");
            find(&b, me)
        } else {
            find(&net.advance_to(kind), me)
        };
        assert_eq!(
            next.kind(),
            if kind == "Setup" {
                "ShareKeysRequest"
            } else {
                kind
            }
        );
        let r = net.deliver(me, old[&(me, kind)].clone());
        net.assert_refused(me, r, &Refusal::WrongSession);
        // The genuine round-2 message no longer helps.
        let r = net.deliver(me, next);
        assert_eq!(r, Err(Error::Refused(Refusal::WrongSession)));
        assert!(net.drain(me).is_empty());
    }
}

#[test]
fn round1_advert_rewrapped_in_round2_is_refused() {
    let (_, old) = round1();
    let mut net = Net::with_server_seed(complete7(), ROSTER_SEED, ROUND2);
    let batch = net.advance_to("ShareKeysRequest");
    let me = net.ids[1];
    let ServerMessage::ShareKeysRequest {
        adverts: old_adverts,
        ..
    } = &old[&(me, "ShareKeysRequest")]
    else {
        panic!()
    };
    let ServerMessage::ShareKeysRequest {
        session,
        mut adverts,
    } = find(&batch, me)
    else {
        panic!()
    };
    // Replace one neighbour's round-2 advert by its round-1 advert (validly signed in round 1).
    let victim = adverts[2].id;
    adverts[2] = old_adverts.iter().find(|a| a.id == victim).unwrap().clone();
    let r = net.deliver(me, ServerMessage::ShareKeysRequest { session, adverts });
    net.assert_refused(me, r, &Refusal::BadAdvertisement(victim));
}

// ---------------------------------------------------------------------------------------------
// Setup: roster and parameters (docs/secagg.md §2 Setup, §3).
// ---------------------------------------------------------------------------------------------

/// Delivers client 2 a Setup rewritten by `f`; returns the net and the refusal, if any.
fn tampered_setup(
    seed: u64,
    f: impl FnOnce(&mut Params, &mut Vec<RosterEntry>, &Net),
) -> (Net, Option<Refusal>) {
    let mut net = Net::new(complete7(), seed);
    let batch = net.server_batch();
    let me = net.ids[2];
    let ServerMessage::Setup {
        session,
        mut params,
        mut roster,
    } = find(&batch, me)
    else {
        panic!()
    };
    assert_eq!(roster, net.roster);
    f(&mut params, &mut roster, &net);
    let r = net.deliver(
        me,
        ServerMessage::Setup {
            session,
            params,
            roster,
        },
    );
    let refusal = match r {
        Ok(()) => {
            assert!(matches!(
                net.client(me).state(),
                ClientState::ExpectShareKeysRequest(_)
            ));
            assert_eq!(net.drain(me).len(), 1, "one Advertise");
            None
        }
        Err(e) => {
            let Error::Refused(refusal) = e else {
                panic!("{e:?}")
            };
            net.assert_refused(me, Err(Error::Refused(refusal.clone())), &refusal);
            Some(refusal)
        }
    };
    (net, refusal)
}

#[test]
fn roster_with_another_identity_key_is_refused() {
    let (_, r) = tampered_setup(71, |_, roster, net| {
        roster[2].identity = net.keys[5].public();
    });
    assert_eq!(r, Some(Refusal::NotInRoster));
    // Untouched, the same Setup is accepted.
    let (_, r) = tampered_setup(71, |_, _, _| {});
    assert_eq!(r, None);
}

#[test]
fn roster_without_the_client_is_refused() {
    let (_, r) = tampered_setup(72, |_, roster, _| {
        roster[2].id = ClientId(roster[2].id.0 + 1);
    });
    assert_eq!(r, Some(Refusal::NotInRoster));
}

#[test]
fn unsafe_parameters_are_refused() {
    let is_bad = |r: Option<Refusal>| matches!(r, Some(Refusal::BadParams(_)));
    // t ≤ k/2: a malicious server could gather both shares alone.
    let (_, r) = tampered_setup(73, |p, _, _| p.threshold = p.degree / 2);
    assert!(is_bad(r));
    // n × L ≥ 2^b: the sum could wrap.
    let (_, r) = tampered_setup(74, |p, _, _| {
        p.quant_levels = (u32::MAX / p.num_clients) + 1;
    });
    assert!(is_bad(r));
    // n × max_weight ≥ 2^b, with a smaller modulus.
    let (_, r) = tampered_setup(75, |p, _, _| {
        p.mod_bits = 16;
        p.quant_levels = 100;
        p.max_weight = (1 << 16) / p.num_clients + 1;
    });
    assert!(is_bad(r));
    // An odd degree on an incomplete graph.
    let (_, r) = tampered_setup(76, |p, _, _| {
        p.degree = 3;
        p.threshold = 2;
    });
    assert!(is_bad(r));
    // A different vector length from the input the client already holds.
    let (_, r) = tampered_setup(77, |p, _, _| p.vector_len += 1);
    assert!(is_bad(r));
    // Control: the largest safe quantization is accepted.
    let (_, r) = tampered_setup(78, |p, _, _| {
        p.quant_levels = u32::MAX / p.num_clients;
    });
    assert_eq!(r, None);
}

/// A threshold that is safe (t > k/2) but below the client's own minimum is refused.
#[test]
fn threshold_below_the_clients_minimum_is_refused() {
    let mut net = Net::new(complete7(), 79);
    let batch = net.server_batch();
    let me = net.ids[0];
    let setup = find(&batch, me);
    let mut rng = ChaCha20Rng::seed_from_u64(79);
    for (min, accepted) in [(4, true), (5, false)] {
        let mut config = ClientConfig::new(me, net.keys[0].clone());
        config.min_threshold = min;
        let mut c = ClientSession::new(config);
        let r = c.handle(setup.clone(), &mut rng);
        if accepted {
            assert_eq!(r, Ok(()));
            assert!(c.poll_outbox().is_some());
        } else {
            assert!(matches!(r, Err(Error::Refused(Refusal::BadParams(_)))));
            assert!(matches!(
                c.state(),
                ClientState::Aborted(Refusal::BadParams(_))
            ));
            assert!(c.poll_outbox().is_none());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Malicious clients against the honest server (docs/secagg.md §2: a bad message drops only its
// sender; the round goes on).
// ---------------------------------------------------------------------------------------------

/// Runs a round in which `cheat`'s message of `kind` is rewritten by `f`; checks the server
/// dropped it for `reason` at `stage` and completed with the exact sum of `survivors`.
fn cheating_client(
    params: Params,
    seed: u64,
    kind: &str,
    f: impl Fn(&Net, ClientId, ClientMessage) -> ClientMessage,
    stage: Stage,
    reason: DropReason,
    cheat_survives: bool,
) {
    let mut net = Net::new(params, seed);
    let cheat = net.ids[4];
    let mut rewritten = false;
    for _ in 0..8 {
        let batch = net.server_batch();
        if batch.is_empty() {
            break;
        }
        for (to, m) in batch {
            if !net.client(to).is_terminal() {
                net.deliver_honest(vec![(to, m)]);
            }
        }
        let mut out = net.drain_all();
        for (from, m) in &mut out {
            if *from == cheat && m.kind() == kind {
                *m = f(&net, cheat, m.clone());
                rewritten = true;
            }
        }
        net.forward(out);
        if net.server.is_terminal() {
            break;
        }
    }
    assert!(rewritten, "no {kind} to rewrite");
    assert!(!net.server.is_live(cheat));
    let drops = net.dropped();
    assert_eq!(drops, vec![(cheat, stage, reason)]);
    let mut survivors = net.ids.clone();
    if !cheat_survives {
        survivors.retain(|&i| i != cheat);
    }
    net.assert_exact_sum(&survivors);
    net.assert_no_double_reveal();
    // Whatever the cheat sends later is ignored, and the finished server refuses it.
    assert_eq!(
        net.server.handle(
            cheat,
            ClientMessage::Consistency {
                session: net.session(),
                signature: [0; 64],
            }
        ),
        Err(Error::Completed)
    );
}

#[test]
fn server_drops_a_client_message_for_another_session() {
    cheating_client(
        complete7(),
        81,
        "Advertise",
        |_, _, m| match m {
            ClientMessage::Advertise { advert, .. } => ClientMessage::Advertise {
                session: SessionId([7; 32]),
                advert,
            },
            _ => unreachable!(),
        },
        Stage::AdvertiseKeys,
        DropReason::WrongSession,
        false,
    );
}

#[test]
fn server_drops_a_replayed_round1_message() {
    // A round-1 Shares message replayed in round 2 (same client, same roster).
    let mut r1 = Net::with_server_seed(complete7(), ROSTER_SEED, ROUND1);
    r1.finish();
    let cheat = r1.ids[4];
    let old = r1
        .sent
        .iter()
        .find(|(from, m)| *from == cheat && m.kind() == "Shares")
        .map(|(_, m)| m.clone())
        .unwrap();
    let mut net = Net::with_server_seed(complete7(), ROSTER_SEED, ROUND2);
    let batch = net.advance_to("ShareKeysRequest");
    net.deliver_honest(batch);
    let mut out = net.drain_all();
    for (from, m) in &mut out {
        if *from == cheat {
            *m = old.clone();
        }
    }
    net.forward(out);
    assert_eq!(
        net.dropped(),
        vec![(cheat, Stage::ShareKeys, DropReason::WrongSession)]
    );
    net.finish();
    let survivors: Vec<ClientId> = net.ids.iter().copied().filter(|&i| i != cheat).collect();
    net.assert_exact_sum(&survivors);
}

#[test]
fn server_drops_a_bad_advert_signature() {
    cheating_client(
        complete7(),
        82,
        "Advertise",
        |_, _, m| match m {
            ClientMessage::Advertise {
                session,
                mut advert,
            } => {
                advert.signature[0] ^= 0x80;
                ClientMessage::Advertise { session, advert }
            }
            _ => unreachable!(),
        },
        Stage::AdvertiseKeys,
        DropReason::BadSignature(Stage::AdvertiseKeys),
        false,
    );
}

#[test]
fn server_drops_an_advert_under_another_id() {
    cheating_client(
        complete7(),
        83,
        "Advertise",
        |net, _, m| match m {
            ClientMessage::Advertise {
                session,
                mut advert,
            } => {
                advert.id = net.ids[0];
                ClientMessage::Advertise { session, advert }
            }
            _ => unreachable!(),
        },
        Stage::AdvertiseKeys,
        DropReason::BadSignature(Stage::AdvertiseKeys),
        false,
    );
}

#[test]
fn server_drops_shares_for_the_wrong_neighbours() {
    // A share addressed to a non-neighbour instead of a neighbour (sparse graph).
    cheating_client(
        sparse12(),
        84,
        "Shares",
        |net, cheat, m| match m {
            ClientMessage::Shares {
                session,
                mut shares,
            } => {
                let nb = net.neighbours(cheat);
                let stranger = *net
                    .ids
                    .iter()
                    .find(|i| **i != cheat && !nb.contains(i))
                    .unwrap();
                shares[0].peer = stranger;
                ClientMessage::Shares { session, shares }
            }
            _ => unreachable!(),
        },
        Stage::ShareKeys,
        DropReason::BadShares,
        false,
    );
    // One neighbour left out.
    cheating_client(
        sparse12(),
        85,
        "Shares",
        |_, _, m| match m {
            ClientMessage::Shares {
                session,
                mut shares,
            } => {
                shares.pop();
                ClientMessage::Shares { session, shares }
            }
            _ => unreachable!(),
        },
        Stage::ShareKeys,
        DropReason::BadShares,
        false,
    );
    // A truncated ciphertext.
    cheating_client(
        complete7(),
        86,
        "Shares",
        |_, _, m| match m {
            ClientMessage::Shares {
                session,
                mut shares,
            } => {
                shares[1].ciphertext.pop();
                ClientMessage::Shares { session, shares }
            }
            _ => unreachable!(),
        },
        Stage::ShareKeys,
        DropReason::BadShares,
        false,
    );
}

#[test]
fn server_drops_a_masked_input_of_the_wrong_length() {
    for (params, extra) in [(complete7(), true), (sparse12(), false)] {
        cheating_client(
            params,
            87,
            "MaskedInput",
            move |_, _, m| match m {
                ClientMessage::MaskedInput {
                    session,
                    mut packed,
                } => {
                    if extra {
                        packed.push(0);
                    } else {
                        packed.pop();
                    }
                    ClientMessage::MaskedInput { session, packed }
                }
                _ => unreachable!(),
            },
            Stage::MaskedInputCollection,
            DropReason::BadMaskedInput,
            false,
        );
    }
}

#[test]
fn server_drops_a_forged_consistency_signature() {
    // The cheat's input is already in the sum: it stays a survivor, its self-mask is rebuilt.
    cheating_client(
        complete7(),
        88,
        "Consistency",
        |_, _, m| match m {
            ClientMessage::Consistency {
                session,
                mut signature,
            } => {
                signature[5] ^= 4;
                ClientMessage::Consistency { session, signature }
            }
            _ => unreachable!(),
        },
        Stage::ConsistencyCheck,
        DropReason::BadSignature(Stage::ConsistencyCheck),
        true,
    );
}

#[test]
fn server_drops_unmask_shares_for_peers_it_did_not_ask_about() {
    // A self-mask share of itself (never asked).
    cheating_client(
        complete7(),
        89,
        "Unmask",
        |_, cheat, m| match m {
            ClientMessage::Unmask {
                session,
                mut self_mask,
                keys,
            } => {
                let share = self_mask[0].share.clone();
                self_mask.push(RevealedShare {
                    owner: cheat,
                    share,
                });
                ClientMessage::Unmask {
                    session,
                    self_mask,
                    keys,
                }
            }
            _ => unreachable!(),
        },
        Stage::Unmasking,
        DropReason::BadUnmaskShares,
        true,
    );
    // A key share of a survivor (nobody dropped, so no key share was asked for).
    cheating_client(
        complete7(),
        90,
        "Unmask",
        |net, _, m| match m {
            ClientMessage::Unmask {
                session,
                self_mask,
                mut keys,
            } => {
                keys.push(RevealedShare {
                    owner: net.ids[0],
                    share: self_mask[0].share.clone(),
                });
                ClientMessage::Unmask {
                    session,
                    self_mask,
                    keys,
                }
            }
            _ => unreachable!(),
        },
        Stage::Unmasking,
        DropReason::BadUnmaskShares,
        true,
    );
    // One asked-for share replaced by a share of a peer it was not asked about (same count).
    cheating_client(
        complete7(),
        92,
        "Unmask",
        |_, cheat, m| match m {
            ClientMessage::Unmask {
                session,
                mut self_mask,
                keys,
            } => {
                self_mask[1].owner = cheat;
                self_mask.sort_by_key(|r| r.owner);
                ClientMessage::Unmask {
                    session,
                    self_mask,
                    keys,
                }
            }
            _ => unreachable!(),
        },
        Stage::Unmasking,
        DropReason::BadUnmaskShares,
        true,
    );
    // A share missing.
    cheating_client(
        sparse12(),
        91,
        "Unmask",
        |_, _, m| match m {
            ClientMessage::Unmask {
                session,
                mut self_mask,
                keys,
            } => {
                self_mask.pop();
                ClientMessage::Unmask {
                    session,
                    self_mask,
                    keys,
                }
            }
            _ => unreachable!(),
        },
        Stage::Unmasking,
        DropReason::BadUnmaskShares,
        true,
    );
}
