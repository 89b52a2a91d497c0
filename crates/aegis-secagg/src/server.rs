//! The server side of a round, as a state machine without I/O (`docs/secagg.md` §2).
//!
//! ```text
//! ExpectAdvertisements → ExpectShares → ExpectMaskedInputs → ExpectConsistency
//!   → ExpectUnmaskingShares → Completed(Aggregate)          any stage → Aborted(reason) (final)
//! ```
//!
//! A stage ends when every live client has answered or when the caller reports the deadline
//! ([`ServerSession::on_deadline`]); clients that did not answer are dropped with
//! [`DropReason::Timeout`]. A bad message drops only its sender. Thresholds are checked at each
//! transition; a round that can no longer be unmasked ends in `Aborted` at once.

use std::collections::{BTreeMap, HashMap, VecDeque};

use rand_core::CryptoRng;
use rayon::prelude::*;

use crate::error::{AbortReason, DropReason, Error};
use crate::graph::{Graph, index_of};
use crate::keys::{AgreementSecret, IdentityPublicKey, SIGNATURE_LEN, pair_key, usable_x25519};
use crate::messages::{
    Advertisement, ClientMessage, EncryptedShare, RevealedShare, RosterEntry, SHARE_CIPHERTEXT_LEN,
    ServerMessage, decode_masked_input, unpack_add,
};
use crate::params::Params;
use crate::prg::{MaskPrg, Sign, apply_masks};
use crate::quant::Aggregate;
use crate::shamir::{Share, combine, lagrange_at_zero};
use crate::transcript::{self, advert_payload, commitment, consistency_payload};
use crate::{ClientId, SessionId, Stage};

/// How many different subsets of shares are tried before a reconstruction is declared failed
/// (a client may reveal a wrong share; the commitment check tells): the first `t` shares, then
/// the first `t` leaving out each of the first 32 shares in turn.
const RECONSTRUCTION_ATTEMPTS: usize = 33;

/// What happened during a round, for logs and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerEvent {
    /// A client was dropped.
    Dropped {
        /// The client.
        client: ClientId,
        /// The stage.
        stage: Stage,
        /// Why.
        reason: DropReason,
    },
    /// A message was ignored (a retransmission, a late message, or a second different message
    /// for a stage whose first one was accepted).
    Ignored {
        /// The sender.
        client: ClientId,
        /// The stage.
        stage: Stage,
        /// Why.
        why: &'static str,
    },
    /// A stage ended with this many clients having answered.
    StageDone {
        /// The stage.
        stage: Stage,
        /// Clients that answered.
        answered: usize,
    },
}

/// Per-client progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Live,
    Dropped,
}

/// Data every state shares.
struct Ctx {
    session: SessionId,
    params: Params,
    ids: Vec<ClientId>,
    identities: Vec<IdentityPublicKey>,
    neighbours: Vec<Vec<u32>>,
    status: Vec<Status>,
    /// Clients the transport reported gone; dropped as soon as a stage waits for them.
    gone: Vec<bool>,
    events: Vec<ServerEvent>,
    outbox: VecDeque<(ClientId, ServerMessage)>,
}

impl Ctx {
    fn id(&self, i: u32) -> ClientId {
        self.ids
            .get(i as usize)
            .copied()
            .unwrap_or(ClientId(u64::MAX))
    }
    fn live(&self, i: u32) -> bool {
        self.status.get(i as usize) == Some(&Status::Live)
    }
    fn drop_client(&mut self, i: u32, stage: Stage, reason: DropReason) {
        if let Some(s) = self.status.get_mut(i as usize)
            && *s == Status::Live
        {
            *s = Status::Dropped;
            let client = self.id(i);
            self.events.push(ServerEvent::Dropped {
                client,
                stage,
                reason,
            });
        }
    }
    fn nb(&self, i: u32) -> &[u32] {
        self.neighbours
            .get(i as usize)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }
    fn t(&self) -> usize {
        self.params.threshold as usize
    }
    fn n(&self) -> u32 {
        self.ids.len() as u32
    }
}

/// Waits for key advertisements.
pub struct ExpectAdvertisements {
    adverts: Vec<Option<Advertisement>>,
}

/// Waits for encrypted shares.
pub struct ExpectShares {
    adverts: Vec<Option<Advertisement>>,
    u1: Vec<bool>,
    shares: Vec<Option<Vec<EncryptedShare>>>,
}

/// Waits for masked inputs, summing them as they come.
pub struct ExpectMaskedInputs {
    adverts: Vec<Option<Advertisement>>,
    u2: Vec<bool>,
    u3: Vec<bool>,
    sum: Vec<u32>,
}

/// Waits for signatures over the survivor set.
pub struct ExpectConsistency {
    adverts: Vec<Option<Advertisement>>,
    u2: Vec<bool>,
    u3: Vec<bool>,
    survivors: Vec<ClientId>,
    sum: Vec<u32>,
    sigs: Vec<Option<[u8; SIGNATURE_LEN]>>,
}

/// Waits for the revealed shares.
pub struct ExpectUnmaskingShares {
    adverts: Vec<Option<Advertisement>>,
    u2: Vec<bool>,
    u3: Vec<bool>,
    survivors: Vec<ClientId>,
    sum: Vec<u32>,
    /// Per responder: shares of survivors' seeds and of dropped clients' keys, by owner index.
    revealed: Vec<Option<Revealed>>,
    /// What each client was asked for.
    asked: Vec<Option<(Vec<u32>, Vec<u32>)>>,
}

/// One responder's revealed shares: of survivors' self-mask seeds and of dropped clients' mask
/// keys, by owner index.
type Revealed = (BTreeMap<u32, Share>, BTreeMap<u32, Share>);

/// A secret to reconstruct: owner index, whether it is a mask key (else a self-mask seed), and
/// the shares at hand with their points.
type Job = (u32, bool, Vec<(u64, Share)>);

/// A reconstructed secret: owner index, whether it is a mask key, the secret.
type Recovered = (u32, bool, [u8; 32]);

/// Seeds of masks to remove, with the sign to remove them with.
type Seeds = Vec<(zeroize::Zeroizing<[u8; 32]>, Sign)>;

/// The server's state. Terminal states are final.
#[non_exhaustive]
pub enum ServerState {
    /// Waiting for advertisements.
    ExpectAdvertisements(ExpectAdvertisements),
    /// Waiting for shares.
    ExpectShares(ExpectShares),
    /// Waiting for masked inputs.
    ExpectMaskedInputs(ExpectMaskedInputs),
    /// Waiting for consistency signatures.
    ExpectConsistency(ExpectConsistency),
    /// Waiting for unmasking shares.
    ExpectUnmaskingShares(ExpectUnmaskingShares),
    /// The round produced its aggregate.
    Completed(Aggregate),
    /// The round ended without a result.
    Aborted(AbortReason),
}

impl ServerState {
    /// The stage the state belongs to (`None` when terminal).
    pub fn stage(&self) -> Option<Stage> {
        Some(match self {
            ServerState::ExpectAdvertisements(_) => Stage::AdvertiseKeys,
            ServerState::ExpectShares(_) => Stage::ShareKeys,
            ServerState::ExpectMaskedInputs(_) => Stage::MaskedInputCollection,
            ServerState::ExpectConsistency(_) => Stage::ConsistencyCheck,
            ServerState::ExpectUnmaskingShares(_) => Stage::Unmasking,
            ServerState::Completed(_) | ServerState::Aborted(_) => return None,
        })
    }
}

impl std::fmt::Debug for ServerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerState::Completed(a) => write!(f, "Completed({} survivors)", a.survivors.len()),
            ServerState::Aborted(r) => write!(f, "Aborted({r})"),
            s => write!(f, "Expect({:?})", s.stage()),
        }
    }
}

/// The server's side of one round.
pub struct ServerSession {
    ctx: Ctx,
    state: ServerState,
}

impl std::fmt::Debug for ServerSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerSession")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl ServerSession {
    /// Starts a round over `roster` (sorted by id, no duplicates, `params.num_clients` long):
    /// draws the session id from `rng` and queues `Setup` for every client.
    pub fn start<R: CryptoRng + ?Sized>(
        params: Params,
        roster: Vec<RosterEntry>,
        rng: &mut R,
    ) -> Result<ServerSession, Error> {
        params.validate()?;
        if roster.len() != params.num_clients as usize {
            return Err(Error::Params(
                "the roster size differs from num_clients".into(),
            ));
        }
        if roster
            .windows(2)
            .any(|w| matches!(w, [a, b] if a.id >= b.id))
        {
            return Err(Error::Params(
                "the roster must be sorted by id without duplicates".into(),
            ));
        }
        let mut session = SessionId([0u8; 32]);
        rng.fill_bytes(&mut session.0);
        let graph = Graph::new(&session, params.num_clients, params.degree)?;
        let n = params.num_clients;
        let neighbours = (0..n).map(|i| graph.neighbours(i)).collect();
        let ctx = Ctx {
            session,
            params: params.clone(),
            ids: roster.iter().map(|e| e.id).collect(),
            identities: roster.iter().map(|e| e.identity).collect(),
            neighbours,
            status: vec![Status::Live; n as usize],
            gone: vec![false; n as usize],
            events: Vec::new(),
            outbox: VecDeque::new(),
        };
        let mut s = ServerSession {
            state: ServerState::ExpectAdvertisements(ExpectAdvertisements {
                adverts: vec![None; n as usize],
            }),
            ctx,
        };
        // Every client gets every id and identity key (it derives the graph from the ids), but
        // only its neighbours' credentials, the only ones it checks: this keeps a Setup at
        // O(n + k) credentials instead of O(n) certificates per client (docs/secagg.md §2).
        let mut keep = vec![false; n as usize];
        for i in 0..n {
            keep.iter_mut().for_each(|k| *k = false);
            for &j in s.ctx.nb(i) {
                if let Some(k) = keep.get_mut(j as usize) {
                    *k = true;
                }
            }
            let entries = roster
                .iter()
                .zip(&keep)
                .map(|(e, &k)| RosterEntry {
                    id: e.id,
                    identity: e.identity,
                    credential: if k { e.credential.clone() } else { Vec::new() },
                })
                .collect();
            let id = s.ctx.id(i);
            s.ctx.outbox.push_back((
                id,
                ServerMessage::Setup {
                    session,
                    params: params.clone(),
                    roster: entries,
                },
            ));
        }
        Ok(s)
    }

    /// The session id.
    pub fn session(&self) -> &SessionId {
        &self.ctx.session
    }

    /// The parameters.
    pub fn params(&self) -> &Params {
        &self.ctx.params
    }

    /// The current state.
    pub fn state(&self) -> &ServerState {
        &self.state
    }

    /// The result, once completed.
    pub fn aggregate(&self) -> Option<&Aggregate> {
        match &self.state {
            ServerState::Completed(a) => Some(a),
            _ => None,
        }
    }

    /// The next message to send, with its recipient.
    pub fn poll_outbox(&mut self) -> Option<(ClientId, ServerMessage)> {
        self.ctx.outbox.pop_front()
    }

    /// Takes the events recorded since the last call.
    pub fn take_events(&mut self) -> Vec<ServerEvent> {
        std::mem::take(&mut self.ctx.events)
    }

    /// The neighbours of `client` (ids), for the transport's routing and for tests.
    pub fn neighbours(&self, client: ClientId) -> Vec<ClientId> {
        index_of(&self.ctx.ids, client)
            .map(|i| self.ctx.nb(i).iter().map(|&j| self.ctx.id(j)).collect())
            .unwrap_or_default()
    }

    /// Whether `client` is still taking part.
    pub fn is_live(&self, client: ClientId) -> bool {
        index_of(&self.ctx.ids, client).is_some_and(|i| self.ctx.live(i))
    }

    /// Whether the round has ended.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self.state,
            ServerState::Completed(_) | ServerState::Aborted(_)
        )
    }

    fn terminal_error(&self) -> Result<(), Error> {
        match &self.state {
            ServerState::Aborted(r) => Err(Error::Aborted(r.clone())),
            _ => Err(Error::Completed),
        }
    }

    /// Handles encoded bytes from `from`: undecodable bytes drop that client. A masked input is
    /// summed straight from `bytes`, without a copy.
    pub fn handle_bytes(&mut self, from: ClientId, bytes: &[u8]) -> Result<(), Error> {
        let i = index_of(&self.ctx.ids, from).ok_or(Error::UnknownClient(from))?;
        if self.is_terminal() {
            return self.terminal_error();
        }
        let incoming = match decode_masked_input(bytes) {
            Ok(Some((session, packed))) => Ok(Incoming::Masked { session, packed }),
            Ok(None) => ClientMessage::decode(bytes).map(Incoming::Owned),
            Err(e) => Err(e),
        };
        match incoming {
            Ok(msg) => self.dispatch(i, msg),
            Err(e) => {
                if let Some(stage) = self.state.stage() {
                    self.ctx.drop_client(i, stage, DropReason::Malformed(e));
                }
                self.advance_if_complete();
                Ok(())
            }
        }
    }

    /// Handles one message from `from`. A bad message drops that client (see
    /// [`take_events`](Self::take_events)); `Err` only for a sender outside the roster or a
    /// session that has ended.
    pub fn handle(&mut self, from: ClientId, msg: ClientMessage) -> Result<(), Error> {
        let i = index_of(&self.ctx.ids, from).ok_or(Error::UnknownClient(from))?;
        match msg {
            ClientMessage::MaskedInput { session, packed } => self.dispatch(
                i,
                Incoming::Masked {
                    session,
                    packed: &packed,
                },
            ),
            other => self.dispatch(i, Incoming::Owned(other)),
        }
    }

    fn dispatch(&mut self, i: u32, msg: Incoming<'_>) -> Result<(), Error> {
        if self.is_terminal() {
            return self.terminal_error();
        }
        let from = self.ctx.id(i);
        let Some(stage) = self.state.stage() else {
            return self.terminal_error();
        };
        if !self.ctx.live(i) {
            self.ctx.events.push(ServerEvent::Ignored {
                client: from,
                stage,
                why: "client already dropped",
            });
            return Ok(());
        }
        if *msg.session() != self.ctx.session {
            self.ctx.drop_client(i, stage, DropReason::WrongSession);
            self.advance_if_complete();
            return Ok(());
        }
        let msg_stage = msg.stage();
        if msg_stage < stage {
            self.ctx.events.push(ServerEvent::Ignored {
                client: from,
                stage,
                why: "message of an earlier stage",
            });
            return Ok(());
        }
        if msg_stage > stage {
            self.ctx.drop_client(
                i,
                stage,
                DropReason::UnexpectedMessage {
                    stage,
                    got: msg.kind(),
                },
            );
            self.advance_if_complete();
            return Ok(());
        }
        let ctx = &mut self.ctx;
        let verdict = match (&mut self.state, msg) {
            (
                ServerState::ExpectAdvertisements(s),
                Incoming::Owned(ClientMessage::Advertise { advert, .. }),
            ) => s.accept(ctx, i, advert),
            (
                ServerState::ExpectShares(s),
                Incoming::Owned(ClientMessage::Shares { shares, .. }),
            ) => s.accept(ctx, i, shares),
            (ServerState::ExpectMaskedInputs(s), Incoming::Masked { packed, .. }) => {
                s.accept(ctx, i, packed)
            }
            (
                ServerState::ExpectConsistency(s),
                Incoming::Owned(ClientMessage::Consistency { signature, .. }),
            ) => s.accept(ctx, i, signature),
            (
                ServerState::ExpectUnmaskingShares(s),
                Incoming::Owned(ClientMessage::Unmask {
                    self_mask, keys, ..
                }),
            ) => s.accept(ctx, i, self_mask, keys),
            _ => Verdict::Drop(DropReason::UnexpectedMessage {
                stage,
                got: "message",
            }),
        };
        match verdict {
            Verdict::Accepted => {}
            Verdict::Repeat => ctx.events.push(ServerEvent::Ignored {
                client: from,
                stage,
                why: "repeated message",
            }),
            Verdict::Drop(reason) => ctx.drop_client(i, stage, reason),
        }
        self.advance_if_complete();
        Ok(())
    }

    /// The caller's clock says the current stage's deadline has passed: clients that have not
    /// answered are dropped and the round moves on (or aborts).
    pub fn on_deadline(&mut self) {
        let Some(stage) = self.state.stage() else {
            return;
        };
        let n = self.ctx.n();
        for i in 0..n {
            if self.ctx.live(i) && !self.answered(i) {
                self.ctx.drop_client(i, stage, DropReason::Timeout(stage));
            }
        }
        self.advance();
    }

    /// The transport says `client`'s connection is gone: it will send nothing more. A client
    /// that has not answered the current stage is dropped now (reason
    /// [`DropReason::Disconnected`]), so the stage need not wait for its deadline; one that has
    /// answered keeps its contribution to this stage and is dropped when the next stage starts.
    /// Unknown clients and ended rounds are ignored.
    pub fn disconnected(&mut self, client: ClientId) {
        let Some(i) = index_of(&self.ctx.ids, client) else {
            return;
        };
        if let Some(g) = self.ctx.gone.get_mut(i as usize) {
            *g = true;
        }
        self.drop_gone();
    }

    /// Drops the gone clients the current stage is waiting for, then advances if nobody else
    /// is awaited.
    fn drop_gone(&mut self) {
        let Some(stage) = self.state.stage() else {
            return;
        };
        for i in 0..self.ctx.n() {
            if self.ctx.gone.get(i as usize) == Some(&true) && self.ctx.live(i) && !self.answered(i)
            {
                self.ctx
                    .drop_client(i, stage, DropReason::Disconnected(stage));
            }
        }
        self.advance_if_complete();
    }

    /// Ends the round now; live clients are told.
    pub fn cancel(&mut self) {
        if !self.is_terminal() {
            self.abort(AbortReason::Cancelled);
        }
    }

    fn answered(&self, i: u32) -> bool {
        let i = i as usize;
        match &self.state {
            ServerState::ExpectAdvertisements(s) => s.adverts.get(i).is_some_and(Option::is_some),
            ServerState::ExpectShares(s) => s.shares.get(i).is_some_and(Option::is_some),
            ServerState::ExpectMaskedInputs(s) => s.u3.get(i).copied().unwrap_or(false),
            ServerState::ExpectConsistency(s) => s.sigs.get(i).is_some_and(Option::is_some),
            ServerState::ExpectUnmaskingShares(s) => s.revealed.get(i).is_some_and(Option::is_some),
            _ => true,
        }
    }

    fn advance_if_complete(&mut self) {
        let n = self.ctx.n();
        if !self.is_terminal() && (0..n).all(|i| !self.ctx.live(i) || self.answered(i)) {
            self.advance();
        }
    }

    fn abort(&mut self, reason: AbortReason) {
        let text = reason.to_string();
        for i in 0..self.ctx.n() {
            if self.ctx.live(i) {
                let id = self.ctx.id(i);
                self.ctx.outbox.push_back((
                    id,
                    ServerMessage::Abort {
                        session: self.ctx.session,
                        reason: text.clone(),
                    },
                ));
            }
        }
        self.state = ServerState::Aborted(reason);
    }

    /// Ends the current stage with the answers in hand.
    fn advance(&mut self) {
        let Some(stage) = self.state.stage() else {
            return;
        };
        let state = std::mem::replace(
            &mut self.state,
            ServerState::Aborted(AbortReason::Cancelled),
        );
        let answered = (0..self.ctx.n()).filter(|&i| self.ctx.live(i)).count();
        self.ctx
            .events
            .push(ServerEvent::StageDone { stage, answered });
        let next = match state {
            ServerState::ExpectAdvertisements(s) => s.finish(&mut self.ctx),
            ServerState::ExpectShares(s) => s.finish(&mut self.ctx),
            ServerState::ExpectMaskedInputs(s) => s.finish(&mut self.ctx),
            ServerState::ExpectConsistency(s) => s.finish(&mut self.ctx),
            ServerState::ExpectUnmaskingShares(s) => s.finish(&mut self.ctx),
            done => Ok(done),
        };
        match next {
            Ok(state) => {
                self.state = state;
                if self.ctx.gone.contains(&true) {
                    self.drop_gone();
                }
            }
            Err(reason) => self.abort(reason),
        }
    }
}

/// A decoded client message; a masked input stays borrowed from its bytes.
enum Incoming<'a> {
    Owned(ClientMessage),
    Masked {
        session: SessionId,
        packed: &'a [u8],
    },
}

impl Incoming<'_> {
    fn session(&self) -> &SessionId {
        match self {
            Incoming::Owned(m) => m.session(),
            Incoming::Masked { session, .. } => session,
        }
    }
    fn kind(&self) -> &'static str {
        match self {
            Incoming::Owned(m) => m.kind(),
            Incoming::Masked { .. } => "MaskedInput",
        }
    }
    fn stage(&self) -> Stage {
        match self {
            Incoming::Owned(ClientMessage::Advertise { .. }) => Stage::AdvertiseKeys,
            Incoming::Owned(ClientMessage::Shares { .. }) => Stage::ShareKeys,
            Incoming::Owned(ClientMessage::MaskedInput { .. }) | Incoming::Masked { .. } => {
                Stage::MaskedInputCollection
            }
            Incoming::Owned(ClientMessage::Consistency { .. }) => Stage::ConsistencyCheck,
            Incoming::Owned(ClientMessage::Unmask { .. }) => Stage::Unmasking,
        }
    }
}

enum Verdict {
    Accepted,
    Repeat,
    Drop(DropReason),
}

/// Keeps the first message of a stage. A later one, identical (a retransmission) or not (an
/// equivocation), is ignored: the first stays authoritative, and dropping the client instead
/// would not undo what its first message already contributed.
fn first_wins<T: PartialEq>(slot: &mut Option<T>, value: T) -> Option<Verdict> {
    match slot {
        Some(old) if *old == value => Some(Verdict::Repeat),
        Some(_) => Some(Verdict::Repeat),
        None => {
            *slot = Some(value);
            None
        }
    }
}

type Next = Result<ServerState, AbortReason>;

/// Drops, one at a time, live members of `set` with fewer than `t` neighbours in `set`, until
/// none is left (removing one can push a neighbour below `t`).
fn prune(ctx: &mut Ctx, set: &mut [bool], stage: Stage) {
    let t = ctx.t();
    loop {
        let weak: Vec<u32> = (0..ctx.n())
            .filter(|&i| set.get(i as usize).copied().unwrap_or(false))
            .filter(|&i| {
                ctx.nb(i)
                    .iter()
                    .filter(|&&j| set.get(j as usize).copied().unwrap_or(false))
                    .count()
                    < t
            })
            .collect();
        if weak.is_empty() {
            return;
        }
        for i in weak {
            if let Some(s) = set.get_mut(i as usize) {
                *s = false;
            }
            ctx.drop_client(i, stage, DropReason::TooFewNeighbours(stage));
        }
    }
}

fn count(set: &[bool]) -> usize {
    set.iter().filter(|&&b| b).count()
}

fn member(set: &[bool], i: u32) -> bool {
    set.get(i as usize).copied().unwrap_or(false)
}

/// Neighbours of `i` in `set`.
fn nb_in(ctx: &Ctx, i: u32, set: &[bool]) -> usize {
    ctx.nb(i).iter().filter(|&&j| member(set, j)).count()
}

fn need_clients(ctx: &Ctx, set: &[bool], stage: Stage) -> Result<(), AbortReason> {
    let have = count(set);
    let need = ctx.t().max(2);
    if have < need {
        return Err(AbortReason::TooFewClients { stage, have, need });
    }
    Ok(())
}

impl ExpectAdvertisements {
    /// Keeps the first advertisement of each client; its signature and keys are checked when the
    /// stage ends, all at once on every core.
    fn accept(&mut self, ctx: &mut Ctx, i: u32, advert: Advertisement) -> Verdict {
        if advert.id != ctx.id(i) {
            return Verdict::Drop(DropReason::BadSignature(Stage::AdvertiseKeys));
        }
        match self.adverts.get_mut(i as usize) {
            Some(slot) => first_wins(slot, advert).unwrap_or(Verdict::Accepted),
            None => Verdict::Drop(DropReason::BadSignature(Stage::AdvertiseKeys)),
        }
    }

    fn finish(mut self, ctx: &mut Ctx) -> Next {
        // Signatures under the roster identity, and keys of large order.
        let session = ctx.session;
        let verdicts: Vec<Option<DropReason>> = self
            .adverts
            .par_iter()
            .zip(ctx.identities.par_iter())
            .map(|(advert, identity)| {
                let a = advert.as_ref()?;
                if !identity.verify(&advert_payload(&session, a), &a.signature) {
                    return Some(DropReason::BadSignature(Stage::AdvertiseKeys));
                }
                if !usable_x25519(&a.c_pk) || !usable_x25519(&a.s_pk) {
                    return Some(DropReason::BadKey);
                }
                None
            })
            .collect();
        for (i, verdict) in verdicts.into_iter().enumerate() {
            if let Some(reason) = verdict {
                ctx.drop_client(i as u32, Stage::AdvertiseKeys, reason);
                if let Some(slot) = self.adverts.get_mut(i) {
                    *slot = None;
                }
            }
        }
        let mut u1: Vec<bool> = (0..ctx.n())
            .map(|i| ctx.live(i) && self.adverts.get(i as usize).is_some_and(Option::is_some))
            .collect();
        prune(ctx, &mut u1, Stage::AdvertiseKeys);
        need_clients(ctx, &u1, Stage::AdvertiseKeys)?;
        for i in (0..ctx.n()).filter(|&i| member(&u1, i)) {
            let adverts = ctx
                .nb(i)
                .iter()
                .filter(|&&j| member(&u1, j))
                .filter_map(|&j| self.adverts.get(j as usize).cloned().flatten())
                .collect();
            let id = ctx.id(i);
            ctx.outbox.push_back((
                id,
                ServerMessage::ShareKeysRequest {
                    session: ctx.session,
                    adverts,
                },
            ));
        }
        let n = ctx.n() as usize;
        Ok(ServerState::ExpectShares(ExpectShares {
            adverts: self.adverts,
            u1,
            shares: vec![None; n],
        }))
    }
}

impl ExpectShares {
    fn accept(&mut self, ctx: &mut Ctx, i: u32, mut shares: Vec<EncryptedShare>) -> Verdict {
        // Exactly one bundle of the right size per neighbour in U1.
        let mut expected: Vec<ClientId> = ctx
            .nb(i)
            .iter()
            .filter(|&&j| member(&self.u1, j))
            .map(|&j| ctx.id(j))
            .collect();
        expected.sort_unstable();
        shares.sort_by_key(|s| s.peer);
        let ok = shares.len() == expected.len()
            && shares
                .iter()
                .zip(&expected)
                .all(|(s, e)| s.peer == *e && s.ciphertext.len() == SHARE_CIPHERTEXT_LEN);
        if !ok {
            return Verdict::Drop(DropReason::BadShares);
        }
        match self.shares.get_mut(i as usize) {
            Some(slot) => first_wins(slot, shares).unwrap_or(Verdict::Accepted),
            None => Verdict::Drop(DropReason::BadShares),
        }
    }

    fn finish(mut self, ctx: &mut Ctx) -> Next {
        let u2: Vec<bool> = (0..ctx.n())
            .map(|i| ctx.live(i) && self.shares.get(i as usize).is_some_and(Option::is_some))
            .collect();
        need_clients(ctx, &u2, Stage::ShareKeys)?;
        let t = ctx.t();
        // A client of U2 with fewer than t neighbours in U2 will refuse to go on, and its key
        // could not be reconstructed for its neighbours: the round cannot complete.
        for i in (0..ctx.n()).filter(|&i| member(&u2, i)) {
            let have = nb_in(ctx, i, &u2);
            if have < t {
                return Err(AbortReason::TooFewNeighbours {
                    client: ctx.id(i),
                    stage: Stage::ShareKeys,
                    have,
                    need: t,
                });
            }
        }
        // Route: for each recipient, the bundles addressed to it by its neighbours in U2.
        let n = ctx.n() as usize;
        let mut inbox: Vec<Vec<EncryptedShare>> = vec![Vec::new(); n];
        for j in (0..ctx.n()).filter(|&j| member(&u2, j)) {
            let from = ctx.id(j);
            for s in self
                .shares
                .get_mut(j as usize)
                .and_then(Option::take)
                .unwrap_or_default()
            {
                if let Some(to) = index_of(&ctx.ids, s.peer)
                    && member(&u2, to)
                    && let Some(list) = inbox.get_mut(to as usize)
                {
                    list.push(EncryptedShare {
                        peer: from,
                        ciphertext: s.ciphertext,
                    });
                }
            }
        }
        for (i, shares) in inbox.into_iter().enumerate() {
            if member(&u2, i as u32) {
                let id = ctx.id(i as u32);
                ctx.outbox.push_back((
                    id,
                    ServerMessage::MaskedInputRequest {
                        session: ctx.session,
                        shares,
                    },
                ));
            }
        }
        let len = ctx.params.masked_len();
        Ok(ServerState::ExpectMaskedInputs(ExpectMaskedInputs {
            adverts: self.adverts,
            u2,
            u3: vec![false; n],
            sum: vec![0u32; len],
        }))
    }
}

impl ExpectMaskedInputs {
    fn accept(&mut self, ctx: &mut Ctx, i: u32, packed: &[u8]) -> Verdict {
        if member(&self.u3, i) {
            return Verdict::Repeat;
        }
        if !member(&self.u2, i) {
            return Verdict::Drop(DropReason::UnexpectedMessage {
                stage: Stage::MaskedInputCollection,
                got: "MaskedInput",
            });
        }
        if packed.len() != ctx.params.packed_len() {
            return Verdict::Drop(DropReason::BadMaskedInput);
        }
        // Check the padding before touching the sum, so a bad input leaves it unchanged.
        if !padding_ok(packed, ctx.params.mod_bits, ctx.params.masked_len()) {
            return Verdict::Drop(DropReason::BadMaskedInput);
        }
        if unpack_add(packed, ctx.params.mod_bits, &mut self.sum).is_none() {
            return Verdict::Drop(DropReason::BadMaskedInput);
        }
        if let Some(s) = self.u3.get_mut(i as usize) {
            *s = true;
        }
        Verdict::Accepted
    }

    fn finish(self, ctx: &mut Ctx) -> Next {
        let u3: Vec<bool> = (0..ctx.n())
            .map(|i| ctx.live(i) && member(&self.u3, i))
            .collect();
        need_clients(ctx, &u3, Stage::MaskedInputCollection)?;
        check_recoverable(ctx, &self.u2, &u3, &u3, Stage::MaskedInputCollection)?;
        let survivors: Vec<ClientId> = (0..ctx.n())
            .filter(|&i| member(&u3, i))
            .map(|i| ctx.id(i))
            .collect();
        for &id in &survivors {
            ctx.outbox.push_back((
                id,
                ServerMessage::ConsistencyRequest {
                    session: ctx.session,
                    survivors: survivors.clone(),
                },
            ));
        }
        let n = ctx.n() as usize;
        Ok(ServerState::ExpectConsistency(ExpectConsistency {
            adverts: self.adverts,
            u2: self.u2,
            u3,
            survivors,
            sum: self.sum,
            sigs: vec![None; n],
        }))
    }
}

/// Whether the bits past the last entry of a packed vector are zero.
fn padding_ok(packed: &[u8], bits: u8, len: usize) -> bool {
    let used = len * usize::from(bits);
    let spare = packed.len() * 8 - used;
    spare == 0 || packed.last().is_some_and(|&b| b >> (8 - spare) == 0)
}

/// Every survivor (`u3`) and every client of `u2 \ u3` with a surviving neighbour must keep at
/// least `t` neighbours in `revealers`, or its secret cannot be reconstructed.
fn check_recoverable(
    ctx: &Ctx,
    u2: &[bool],
    u3: &[bool],
    revealers: &[bool],
    stage: Stage,
) -> Result<(), AbortReason> {
    let t = ctx.t();
    for i in 0..ctx.n() {
        let needed = member(u3, i) || (member(u2, i) && ctx.nb(i).iter().any(|&j| member(u3, j)));
        if needed {
            let have = nb_in(ctx, i, revealers);
            if have < t {
                return Err(AbortReason::TooFewNeighbours {
                    client: ctx.id(i),
                    stage,
                    have,
                    need: t,
                });
            }
        }
    }
    Ok(())
}

impl ExpectConsistency {
    /// Keeps the first signature of each survivor; signatures are verified when the stage ends,
    /// all at once on every core.
    fn accept(&mut self, _ctx: &mut Ctx, i: u32, signature: [u8; SIGNATURE_LEN]) -> Verdict {
        if !member(&self.u3, i) {
            return Verdict::Drop(DropReason::UnexpectedMessage {
                stage: Stage::ConsistencyCheck,
                got: "Consistency",
            });
        }
        match self.sigs.get_mut(i as usize) {
            Some(slot) => first_wins(slot, signature).unwrap_or(Verdict::Accepted),
            None => Verdict::Drop(DropReason::BadSignature(Stage::ConsistencyCheck)),
        }
    }

    fn finish(mut self, ctx: &mut Ctx) -> Next {
        let session = ctx.session;
        let forged: Vec<bool> = self
            .sigs
            .par_iter()
            .zip(ctx.identities.par_iter())
            .zip(ctx.ids.par_iter())
            .map(|((sig, identity), id)| {
                sig.as_ref().is_some_and(|sig| {
                    !identity.verify(&consistency_payload(&session, *id, &self.survivors), sig)
                })
            })
            .collect();
        for (i, bad) in forged.into_iter().enumerate() {
            if bad {
                ctx.drop_client(
                    i as u32,
                    Stage::ConsistencyCheck,
                    DropReason::BadSignature(Stage::ConsistencyCheck),
                );
                if let Some(slot) = self.sigs.get_mut(i) {
                    *slot = None;
                }
            }
        }
        let u4: Vec<bool> = (0..ctx.n())
            .map(|i| ctx.live(i) && self.sigs.get(i as usize).is_some_and(Option::is_some))
            .collect();
        // A signer reveals only if it sees t signatures of its neighbours.
        let t = ctx.t();
        let revealers: Vec<bool> = (0..ctx.n())
            .map(|i| member(&u4, i) && nb_in(ctx, i, &u4) >= t)
            .collect();
        check_recoverable(ctx, &self.u2, &self.u3, &revealers, Stage::ConsistencyCheck)?;
        let n = ctx.n() as usize;
        let mut asked = vec![None; n];
        for i in (0..ctx.n()).filter(|&i| member(&u4, i)) {
            let mut survivors_nb: Vec<u32> = ctx
                .nb(i)
                .iter()
                .copied()
                .filter(|&j| member(&self.u3, j))
                .collect();
            survivors_nb.sort_unstable();
            let mut dropped: Vec<u32> = ctx
                .nb(i)
                .iter()
                .copied()
                .filter(|&j| member(&self.u2, j) && !member(&self.u3, j))
                .collect();
            dropped.sort_unstable();
            let signatures = ctx
                .nb(i)
                .iter()
                .filter(|&&j| member(&u4, j))
                .filter_map(|&j| {
                    self.sigs
                        .get(j as usize)
                        .copied()
                        .flatten()
                        .map(|s| (ctx.id(j), s))
                })
                .collect();
            let msg = ServerMessage::UnmaskRequest {
                session: ctx.session,
                survivors: self.survivors.clone(),
                dropped: dropped.iter().map(|&j| ctx.id(j)).collect(),
                signatures,
            };
            let id = ctx.id(i);
            ctx.outbox.push_back((id, msg));
            if let Some(slot) = asked.get_mut(i as usize) {
                *slot = Some((survivors_nb, dropped));
            }
        }
        // Clients in U3 that did not sign stay survivors (their input is in the sum) but are no
        // longer waited for.
        for i in 0..ctx.n() {
            if ctx.live(i) && !member(&u4, i) {
                ctx.drop_client(
                    i,
                    Stage::ConsistencyCheck,
                    DropReason::Timeout(Stage::ConsistencyCheck),
                );
            }
        }
        Ok(ServerState::ExpectUnmaskingShares(ExpectUnmaskingShares {
            adverts: self.adverts,
            u2: self.u2,
            u3: self.u3,
            survivors: self.survivors,
            sum: self.sum,
            revealed: vec![None; n],
            asked,
        }))
    }
}

impl ExpectUnmaskingShares {
    fn accept(
        &mut self,
        ctx: &mut Ctx,
        i: u32,
        self_mask: Vec<RevealedShare>,
        keys: Vec<RevealedShare>,
    ) -> Verdict {
        let Some(Some((want_b, want_s))) = self.asked.get(i as usize) else {
            return Verdict::Drop(DropReason::UnexpectedMessage {
                stage: Stage::Unmasking,
                got: "Unmask",
            });
        };
        let to_map = |list: Vec<RevealedShare>, want: &[u32]| -> Option<BTreeMap<u32, Share>> {
            let mut m = BTreeMap::new();
            for r in list {
                let j = index_of(&ctx.ids, r.owner)?;
                if want.binary_search(&j).is_err() || m.insert(j, r.share).is_some() {
                    return None;
                }
            }
            (m.len() == want.len()).then_some(m)
        };
        let (Some(b), Some(s)) = (to_map(self_mask, want_b), to_map(keys, want_s)) else {
            return Verdict::Drop(DropReason::BadUnmaskShares);
        };
        match self.revealed.get_mut(i as usize) {
            Some(slot) => first_wins(slot, (b, s)).unwrap_or(Verdict::Accepted),
            None => Verdict::Drop(DropReason::BadUnmaskShares),
        }
    }

    fn finish(self, ctx: &mut Ctx) -> Next {
        let t = ctx.t();
        let n = ctx.n();
        let mut lagrange: HashMap<Vec<u64>, Vec<u64>> = HashMap::new();
        // Secrets to recover: survivors' self-mask seeds, and the mask keys of dropped clients
        // with a surviving neighbour.
        let dropped: Vec<u32> = (0..n)
            .filter(|&i| {
                member(&self.u2, i)
                    && !member(&self.u3, i)
                    && ctx.nb(i).iter().any(|&j| member(&self.u3, j))
            })
            .collect();
        let survivors: Vec<u32> = (0..n).filter(|&i| member(&self.u3, i)).collect();
        let mut jobs: Vec<Job> = Vec::with_capacity(survivors.len() + dropped.len());
        for (&owner, is_key) in survivors
            .iter()
            .map(|o| (o, false))
            .chain(dropped.iter().map(|o| (o, true)))
        {
            let mut shares = Vec::new();
            for &holder in ctx.nb(owner) {
                if let Some(Some((b, s))) = self.revealed.get(holder as usize) {
                    let map = if is_key { s } else { b };
                    if let Some(share) = map.get(&owner) {
                        shares.push((u64::from(holder) + 1, share.clone()));
                    }
                }
            }
            if shares.len() < t {
                return Err(AbortReason::TooFewNeighbours {
                    client: ctx.id(owner),
                    stage: Stage::Unmasking,
                    have: shares.len(),
                    need: t,
                });
            }
            shares.sort_by_key(|(x, _)| *x);
            // Precompute the coefficients for the first window (shared by most secrets).
            let xs: Vec<u64> = shares.iter().take(t).map(|(x, _)| *x).collect();
            if let std::collections::hash_map::Entry::Vacant(e) = lagrange.entry(xs)
                && let Some(c) = lagrange_at_zero(e.key())
            {
                e.insert(c);
            }
            jobs.push((owner, is_key, shares));
        }
        let session = ctx.session;
        let results: Vec<Result<Recovered, AbortReason>> = jobs
            .par_iter()
            .map(|(owner, is_key, shares)| {
                let id = ctx.id(*owner);
                let check = |secret: &[u8; 32]| -> bool {
                    if *is_key {
                        let expect = self
                            .adverts
                            .get(*owner as usize)
                            .and_then(|a| a.as_ref())
                            .map(|a| a.s_pk);
                        AgreementSecret(*secret).public().ok() == expect
                    } else {
                        let expect = self
                            .adverts
                            .get(*owner as usize)
                            .and_then(|a| a.as_ref())
                            .map(|a| a.commitment);
                        Some(commitment(&session, id, secret)) == expect
                    }
                };
                // First the first t shares; then, if a revealed share was wrong, the first t
                // shares leaving out one share at a time (any single bad share is survived when
                // more than t shares are at hand).
                let leave_out = std::iter::once(None).chain((0..shares.len()).map(Some));
                for skip in leave_out.take(RECONSTRUCTION_ATTEMPTS) {
                    let window: Vec<&(u64, Share)> = shares
                        .iter()
                        .enumerate()
                        .filter(|(k, _)| Some(*k) != skip)
                        .map(|(_, s)| s)
                        .take(t)
                        .collect();
                    if window.len() < t {
                        continue;
                    }
                    let xs: Vec<u64> = window.iter().map(|(x, _)| *x).collect();
                    let coeffs = match lagrange.get(&xs) {
                        Some(c) => c.clone(),
                        None => match lagrange_at_zero(&xs) {
                            Some(c) => c,
                            None => continue,
                        },
                    };
                    let refs: Vec<&Share> = window.iter().map(|(_, s)| s).collect();
                    if let Some(secret) = combine(&refs, &coeffs)
                        && check(&secret)
                    {
                        return Ok((*owner, *is_key, secret));
                    }
                }
                Err(AbortReason::ReconstructionFailed(id))
            })
            .collect();
        let mut seeds: Seeds = Vec::new();
        let mut key_jobs = Vec::new();
        for r in results {
            let (owner, is_key, secret) = r?;
            if is_key {
                key_jobs.push((owner, AgreementSecret(secret)));
            } else {
                seeds.push((zeroize::Zeroizing::new(secret), Sign::Minus));
            }
        }
        // Pairwise masks between each dropped client and its surviving neighbours.
        let pair_seeds: Vec<Result<Seeds, AbortReason>> = key_jobs
            .par_iter()
            .map(|(d, secret)| {
                let did = ctx.id(*d);
                let mut out = Vec::new();
                for &w in ctx.nb(*d).iter().filter(|&&w| member(&self.u3, w)) {
                    let wid = ctx.id(w);
                    let Some(Some(a)) = self.adverts.get(w as usize) else {
                        return Err(AbortReason::ReconstructionFailed(wid));
                    };
                    let shared = secret
                        .agree(&a.s_pk)
                        .ok()
                        .flatten()
                        .ok_or(AbortReason::ReconstructionFailed(did))?;
                    let (lo, hi) = if wid < did { (wid, did) } else { (did, wid) };
                    let seed = pair_key(&shared, &session, transcript::MASK_KEY, lo, hi)
                        .map_err(|_| AbortReason::ReconstructionFailed(did))?;
                    // w added the mask if w < d, subtracted it otherwise: undo that.
                    out.push((seed, if wid < did { Sign::Minus } else { Sign::Plus }));
                }
                Ok(out)
            })
            .collect();
        for r in pair_seeds {
            seeds.extend(r?);
        }
        let prgs: Vec<(MaskPrg, Sign)> = seeds
            .iter()
            .map(|(s, sign)| MaskPrg::new(s).map(|p| (p, *sign)))
            .collect::<Result<_, _>>()
            .map_err(|_| AbortReason::Internal)?;
        let refs: Vec<(&MaskPrg, Sign)> = prgs.iter().map(|(p, s)| (p, *s)).collect();
        let mut sum = self.sum;
        apply_masks(&mut sum, &refs).map_err(|_| AbortReason::Internal)?;
        let mask = ctx.params.modulus_mask();
        sum.iter_mut().for_each(|v| *v &= mask);
        let weight_sum = sum.first().copied().map(u64::from).unwrap_or(0);
        let sums = sum.get(1..).map(<[u32]>::to_vec).unwrap_or_default();
        Ok(ServerState::Completed(Aggregate::new(
            ctx.params.clone(),
            weight_sum,
            sums,
            self.survivors,
        )))
    }
}
