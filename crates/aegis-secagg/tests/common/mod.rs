#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! The harness shared by the integration tests `malicious.rs` and `states.rs`: one honest
//! `ServerSession` and `n` honest `ClientSession`s whose messages the test pumps by hand, with
//! logs of everything that went between them. The protocol is described in `docs/secagg.md`.
//!
//! Each test binary compiles this module on its own, so the helpers only one of them uses are
//! marked `#[allow(dead_code)]`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use aegis_secagg::messages::{RevealedShare, RosterEntry};
use aegis_secagg::{
    ClientConfig, ClientId, ClientMessage, ClientSession, ClientState, DropReason, Error,
    IdentityKey, Params, QuantizedInput, Refusal, ServerEvent, ServerMessage, ServerSession,
    SessionId, Stage, sim,
};
use chacha20::ChaCha20Rng;
use rand_core::SeedableRng;

pub(crate) type Batch = Vec<(ClientId, ServerMessage)>;

/// One server, `n` clients, and logs of everything that went between them.
pub(crate) struct Net {
    pub(crate) params: Params,
    #[allow(dead_code)]
    pub(crate) roster: Vec<RosterEntry>,
    #[allow(dead_code)]
    pub(crate) keys: Vec<Arc<IdentityKey>>,
    pub(crate) ids: Vec<ClientId>,
    pub(crate) server: ServerSession,
    pub(crate) clients: BTreeMap<ClientId, ClientSession>,
    pub(crate) rngs: BTreeMap<ClientId, ChaCha20Rng>,
    pub(crate) inputs: BTreeMap<ClientId, QuantizedInput>,
    /// Every message a client put in its outbox, in order.
    pub(crate) sent: Vec<(ClientId, ClientMessage)>,
    /// Every message delivered to a client (after any rewriting), in order.
    #[allow(dead_code)]
    pub(crate) received: Vec<(ClientId, ServerMessage)>,
    /// Every server event.
    pub(crate) events: Vec<ServerEvent>,
}

impl Net {
    /// `n` clients from `seed`, each holding its input before Setup.
    #[allow(dead_code)]
    pub(crate) fn new(params: Params, seed: u64) -> Net {
        Net::with_late(params, seed, &[])
    }

    /// Like [`Net::new`], but the clients whose index is in `late` get their input only when
    /// the test supplies it (the inputs are in `inputs` all the same).
    pub(crate) fn with_late(params: Params, seed: u64, late: &[usize]) -> Net {
        Net::build(params, seed, seed ^ 0x5e55_1011, late)
    }

    /// Clients (identities and inputs) from `roster_seed`, the server (session id) from
    /// `server_seed`: two nets with the same roster seed are two rounds of the same clients.
    #[allow(dead_code)]
    pub(crate) fn with_server_seed(params: Params, roster_seed: u64, server_seed: u64) -> Net {
        Net::build(params, roster_seed, server_seed, &[])
    }

    fn build(params: Params, roster_seed: u64, server_seed: u64, late: &[usize]) -> Net {
        let (roster, keys) = sim::roster(params.num_clients, roster_seed).unwrap();
        let ids: Vec<ClientId> = roster.iter().map(|e| e.id).collect();
        let mut clients = BTreeMap::new();
        let mut rngs = BTreeMap::new();
        let mut inputs = BTreeMap::new();
        for (k, (id, key)) in ids.iter().zip(&keys).enumerate() {
            let mut rng =
                ChaCha20Rng::seed_from_u64(server_seed.wrapping_mul(1_000_033).wrapping_add(id.0));
            let values: Vec<f32> = (0..u64::from(params.vector_len))
                .map(|j| ((id.0 * 7 + j * 3) % 23) as f32 / 11.0 - 1.0)
                .collect();
            let weight = 1 + (id.0 % u64::from(params.max_weight)) as u32;
            let input = QuantizedInput::quantize(&params, &values, weight, &mut rng).unwrap();
            // docs/secagg.md §2: the input may be supplied before Setup.
            let mut c = ClientSession::new(ClientConfig::new(*id, key.clone()));
            if !late.contains(&k) {
                c.set_input(input.clone()).unwrap();
            }
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

    #[allow(dead_code)]
    pub(crate) fn t(&self) -> usize {
        self.params.threshold as usize
    }

    pub(crate) fn session(&self) -> SessionId {
        *self.server.session()
    }

    pub(crate) fn client(&self, id: ClientId) -> &ClientSession {
        &self.clients[&id]
    }

    /// Supplies `id` its input (a client created late by [`Net::with_late`]).
    #[allow(dead_code)]
    pub(crate) fn supply_input(&mut self, id: ClientId) -> Result<(), Error> {
        let input = self.inputs[&id].clone();
        self.clients.get_mut(&id).unwrap().set_input(input)
    }

    #[allow(dead_code)]
    pub(crate) fn neighbours(&self, id: ClientId) -> BTreeSet<ClientId> {
        self.server.neighbours(id).into_iter().collect()
    }

    /// Drains the server's outbox.
    pub(crate) fn server_batch(&mut self) -> Batch {
        let mut out = Vec::new();
        while let Some(m) = self.server.poll_outbox() {
            out.push(m);
        }
        out
    }

    /// Delivers one (possibly rewritten) server message. It must survive the wire encoding
    /// unchanged (docs/secagg.md §7), so the attack is one a real server can mount.
    pub(crate) fn deliver(&mut self, to: ClientId, msg: ServerMessage) -> Result<(), Error> {
        let wire = ServerMessage::decode(&msg.encode()).expect("the attack must be encodable");
        assert_eq!(wire, msg, "the attack must survive the wire encoding");
        self.deliver_raw(to, msg)
    }

    /// Delivers one server message as a struct, bypassing the wire encoding.
    pub(crate) fn deliver_raw(&mut self, to: ClientId, msg: ServerMessage) -> Result<(), Error> {
        self.received.push((to, msg.clone()));
        let rng = self.rngs.get_mut(&to).unwrap();
        self.clients.get_mut(&to).unwrap().handle(msg, rng)
    }

    /// Delivers a batch that every client must accept.
    pub(crate) fn deliver_honest(&mut self, batch: Batch) {
        for (to, m) in batch {
            let kind = m.kind();
            let r = self.deliver(to, m);
            assert_eq!(r, Ok(()), "client {to} refused an honest {kind}");
        }
    }

    /// Drains one client's outbox (and logs it).
    pub(crate) fn drain(&mut self, id: ClientId) -> Vec<ClientMessage> {
        let c = self.clients.get_mut(&id).unwrap();
        let mut out = Vec::new();
        while let Some(m) = c.poll_outbox() {
            out.push(m);
        }
        self.sent.extend(out.iter().map(|m| (id, m.clone())));
        out
    }

    pub(crate) fn drain_all(&mut self) -> Vec<(ClientId, ClientMessage)> {
        let ids = self.ids.clone();
        let mut out = Vec::new();
        for id in ids {
            out.extend(self.drain(id).into_iter().map(|m| (id, m)));
        }
        out
    }

    /// Hands client messages to the server, which must never fail on them.
    pub(crate) fn forward(&mut self, msgs: Vec<(ClientId, ClientMessage)>) {
        for (from, m) in msgs {
            let kind = m.kind();
            let r = self.server.handle(from, m);
            assert_eq!(r, Ok(()), "the server failed on {kind} from {from}");
        }
        self.take_events();
    }

    /// The server's new events (also logged in `events`).
    pub(crate) fn take_events(&mut self) -> Vec<ServerEvent> {
        let new = self.server.take_events();
        self.events.extend(new.iter().cloned());
        new
    }

    /// One honest exchange: delivers `batch`, and forwards every answer to the server.
    pub(crate) fn step(&mut self, batch: Batch) {
        self.deliver_honest(batch);
        let out = self.drain_all();
        self.forward(out);
    }

    /// Runs the round honestly until the server's next batch is of `kind`, and returns that
    /// batch undelivered.
    pub(crate) fn advance_to(&mut self, kind: &str) -> Batch {
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
            self.step(batch);
        }
        panic!("never reached {kind}");
    }

    /// Runs the rest of the round honestly (clients already terminal are skipped; a stage
    /// nobody answers any more ends at the deadline) until the server is terminal.
    pub(crate) fn finish(&mut self) {
        for _ in 0..16 {
            if self.server.is_terminal() {
                return;
            }
            let batch = self.server_batch();
            if batch.is_empty() {
                self.server.on_deadline();
                self.take_events();
                continue;
            }
            let live = batch
                .into_iter()
                .filter(|(to, _)| !self.client(*to).is_terminal())
                .collect();
            self.step(live);
        }
        panic!("the round did not end: {:?}", self.server.state());
    }

    /// The server completed with exactly the sum of its survivors' inputs (docs/secagg.md §6,
    /// §7: the weight first, then the values).
    pub(crate) fn assert_exact_sum(&self, survivors: &[ClientId]) {
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

    /// Every client but `gone`, in roster order.
    pub(crate) fn ids_without(&self, gone: ClientId) -> Vec<ClientId> {
        self.ids.iter().copied().filter(|&i| i != gone).collect()
    }

    pub(crate) fn dropped(&self) -> Vec<(ClientId, Stage, DropReason)> {
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

    #[allow(dead_code)]
    pub(crate) fn unmasks(&self) -> Vec<(ClientId, &[RevealedShare], &[RevealedShare])> {
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
    #[allow(dead_code)]
    pub(crate) fn assert_no_double_reveal(&self) {
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

    /// `id` refused with exactly `expected`, stays aborted with it, and sends nothing.
    pub(crate) fn assert_refused(
        &mut self,
        id: ClientId,
        res: Result<(), Error>,
        expected: &Refusal,
    ) {
        self.assert_refused_with(id, res, |r| r == expected);
        match self.client(id).state() {
            ClientState::Aborted(r) => assert_eq!(r, expected),
            s => panic!("client {id} is in {s:?}, not aborted"),
        }
    }

    /// `id` refused with a refusal `ok` accepts, is aborted (terminal) with that same
    /// refusal, and sends nothing.
    pub(crate) fn assert_refused_with(
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
        assert!(self.client(id).is_terminal(), "client {id} is not terminal");
        assert!(self.drain(id).is_empty(), "client {id} sent after refusing");
    }
}

/// The message `batch` holds for `id`.
pub(crate) fn find(batch: &Batch, id: ClientId) -> ServerMessage {
    batch
        .iter()
        .find(|(to, _)| *to == id)
        .map(|(_, m)| m.clone())
        .unwrap_or_else(|| panic!("nothing for {id}"))
}
