//! The client side of a round, as a state machine without I/O (`docs/secagg.md` §2).
//!
//! ```text
//! ExpectSetup ─Setup→ ExpectShareKeysRequest ─ShareKeysRequest→ ExpectMaskedInputRequest
//!   ─MaskedInputRequest→ (ExpectInput →) ExpectConsistencyRequest ─ConsistencyRequest→
//!   ExpectUnmaskRequest ─UnmaskRequest→ Completed            any refusal → Aborted (final)
//! ```
//!
//! Each state is a struct named for what it waits on; handling a message consumes it and yields
//! the next, so the secrets of one stage are dropped (and zeroized) as soon as they are used.
//! Messages to send go to an outbox the transport drains.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use rand_core::CryptoRng;
use rayon::prelude::*;
use zeroize::Zeroizing;

use crate::error::{Error, Refusal};
use crate::graph::{Graph, index_of};
use crate::keys::{
    AgreementSecret, IdentityKey, IdentityPublicKey, open_share, pair_key, seal_share,
};
use crate::messages::{
    Advertisement, ClientMessage, EncryptedShare, RevealedShare, RosterEntry, SHARE_CIPHERTEXT_LEN,
    ServerMessage, pack,
};
use crate::params::Params;
use crate::prg::{MaskPrg, Sign, apply_masks};
use crate::quant::QuantizedInput;
use crate::shamir::{SHARE_LEN, Share, split};
use crate::transcript::{self, advert_payload, commitment, consistency_payload, share_aad};
use crate::{ClientId, SessionId, Stage};

/// Decides whether a roster entry's identity key really belongs to that client (for example by
/// checking that `credential` is a certificate from the deployment CA naming `id` and holding
/// `identity`). The transport supplies it; [`TrustRoster`] accepts the server's word.
pub trait RosterVerifier: Send + Sync {
    /// Whether `entry` is acceptable.
    fn verify(&self, entry: &RosterEntry) -> bool;
}

/// Accepts every roster entry: the server is trusted to bind identities (honest-but-curious PKI).
#[derive(Clone, Copy, Debug, Default)]
pub struct TrustRoster;

impl RosterVerifier for TrustRoster {
    fn verify(&self, _: &RosterEntry) -> bool {
        true
    }
}

/// A client's configuration: who it is and what it accepts.
#[derive(Clone)]
pub struct ClientConfig {
    /// This client's id.
    pub id: ClientId,
    /// Its long-term identity key.
    pub identity: Arc<IdentityKey>,
    /// Checks neighbours' roster entries.
    pub verifier: Arc<dyn RosterVerifier>,
    /// Longest vector accepted (bounds memory).
    pub max_vector_len: u32,
    /// Smallest threshold accepted (a server asking for tiny thresholds is refused).
    pub min_threshold: u32,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("id", &self.id)
            .field("identity", &self.identity.public())
            .finish_non_exhaustive()
    }
}

impl ClientConfig {
    /// A configuration with the default policy (any vector up to 2^28, thresholds ≥ 2 — except
    /// for a two-client roster — and the server's roster trusted).
    pub fn new(id: ClientId, identity: Arc<IdentityKey>) -> ClientConfig {
        ClientConfig {
            id,
            identity,
            verifier: Arc::new(TrustRoster),
            max_vector_len: crate::params::MAX_VECTOR_LEN,
            min_threshold: 2,
        }
    }
}

/// What the client learnt from `Setup`.
#[derive(Debug)]
struct Round {
    session: SessionId,
    params: Params,
    ids: Vec<ClientId>,
    identities: Vec<IdentityPublicKey>,
    me: ClientId,
    /// Neighbour ids, sorted.
    neighbours: Vec<ClientId>,
}

impl Round {
    fn identity(&self, id: ClientId) -> Option<&IdentityPublicKey> {
        index_of(&self.ids, id).and_then(|i| self.identities.get(i as usize))
    }
    fn x_of(&self, id: ClientId) -> Option<u64> {
        index_of(&self.ids, id).map(|i| u64::from(i) + 1)
    }
    fn is_neighbour(&self, id: ClientId) -> bool {
        self.neighbours.binary_search(&id).is_ok()
    }
    fn threshold(&self) -> usize {
        self.params.threshold as usize
    }
}

/// Waits for the server's `ShareKeysRequest`.
pub struct ExpectShareKeysRequest {
    round: Round,
    c_sk: AgreementSecret,
    s_sk: AgreementSecret,
    b_seed: Zeroizing<[u8; 32]>,
}

/// Waits for the server's `MaskedInputRequest`.
pub struct ExpectMaskedInputRequest {
    round: Round,
    /// Keys of the share bundles each advertised neighbour sends us.
    recv_keys: BTreeMap<ClientId, Zeroizing<[u8; 32]>>,
    b_seed: Zeroizing<[u8; 32]>,
    /// Pairwise mask seeds with the neighbours that advertised.
    mask_seeds: BTreeMap<ClientId, Zeroizing<[u8; 32]>>,
}

/// Has the encrypted shares, waits for the caller's input.
pub struct ExpectInput {
    round: Round,
    b_seed: Zeroizing<[u8; 32]>,
    mask_seeds: BTreeMap<ClientId, Zeroizing<[u8; 32]>>,
    /// Neighbours that shared with us (U2 ∩ N), with their shares (self-mask, key).
    held: BTreeMap<ClientId, (Share, Share)>,
}

/// Waits for the survivor set to sign.
pub struct ExpectConsistencyRequest {
    round: Round,
    held: BTreeMap<ClientId, (Share, Share)>,
}

/// Waits for the unmasking request.
pub struct ExpectUnmaskRequest {
    round: Round,
    held: BTreeMap<ClientId, (Share, Share)>,
    survivors: Vec<ClientId>,
}

/// The client's state. Terminal states are final.
#[non_exhaustive]
pub enum ClientState {
    /// Waits for `Setup`.
    ExpectSetup,
    /// Waits for neighbours' keys.
    ExpectShareKeysRequest(Box<ExpectShareKeysRequest>),
    /// Waits for the encrypted shares.
    ExpectMaskedInputRequest(Box<ExpectMaskedInputRequest>),
    /// Waits for [`ClientSession::set_input`].
    ExpectInput(Box<ExpectInput>),
    /// Waits for the survivor set.
    ExpectConsistencyRequest(Box<ExpectConsistencyRequest>),
    /// Waits for the unmasking request.
    ExpectUnmaskRequest(Box<ExpectUnmaskRequest>),
    /// Done: the shares are revealed.
    Completed,
    /// Refused to go on.
    Aborted(Refusal),
}

impl ClientState {
    /// The state's name.
    pub fn name(&self) -> &'static str {
        match self {
            ClientState::ExpectSetup => "Setup",
            ClientState::ExpectShareKeysRequest(_) => "ShareKeysRequest",
            ClientState::ExpectMaskedInputRequest(_) => "MaskedInputRequest",
            ClientState::ExpectInput(_) => "input",
            ClientState::ExpectConsistencyRequest(_) => "ConsistencyRequest",
            ClientState::ExpectUnmaskRequest(_) => "UnmaskRequest",
            ClientState::Completed => "nothing (completed)",
            ClientState::Aborted(_) => "nothing (aborted)",
        }
    }

    fn round(&self) -> Option<&Round> {
        match self {
            ClientState::ExpectShareKeysRequest(s) => Some(&s.round),
            ClientState::ExpectMaskedInputRequest(s) => Some(&s.round),
            ClientState::ExpectInput(s) => Some(&s.round),
            ClientState::ExpectConsistencyRequest(s) => Some(&s.round),
            ClientState::ExpectUnmaskRequest(s) => Some(&s.round),
            _ => None,
        }
    }
}

impl std::fmt::Debug for ClientState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientState::Aborted(r) => write!(f, "Aborted({r})"),
            other => write!(f, "Expect{}", other.name()),
        }
    }
}

/// One client's participation in one round.
pub struct ClientSession {
    config: ClientConfig,
    state: ClientState,
    input: Option<QuantizedInput>,
    params: Option<Params>,
    outbox: VecDeque<ClientMessage>,
    last: Option<ServerMessage>,
}

impl std::fmt::Debug for ClientSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSession")
            .field("id", &self.config.id)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

type Step = Result<ClientState, Refusal>;

impl ClientSession {
    /// A session waiting for `Setup`.
    pub fn new(config: ClientConfig) -> ClientSession {
        ClientSession {
            config,
            state: ClientState::ExpectSetup,
            input: None,
            params: None,
            outbox: VecDeque::new(),
            last: None,
        }
    }

    /// The current state.
    pub fn state(&self) -> &ClientState {
        &self.state
    }

    /// The round's parameters, once `Setup` has been accepted (needed to quantize the input).
    pub fn params(&self) -> Option<&Params> {
        self.params.as_ref()
    }

    /// The next message to send, if any.
    pub fn poll_outbox(&mut self) -> Option<ClientMessage> {
        self.outbox.pop_front()
    }

    /// Whether the session has ended (completed or aborted).
    pub fn is_terminal(&self) -> bool {
        matches!(self.state, ClientState::Completed | ClientState::Aborted(_))
    }

    /// Supplies the quantized input (any time before or after the `MaskedInputRequest`).
    pub fn set_input(&mut self, input: QuantizedInput) -> Result<(), Error> {
        if let Some(p) = &self.params
            && input.0.len() != p.masked_len()
        {
            return Err(Error::Input(
                "the input does not have the round's length".into(),
            ));
        }
        self.input = Some(input);
        if matches!(self.state, ClientState::ExpectInput(_)) {
            let state = std::mem::replace(&mut self.state, ClientState::ExpectSetup);
            if let ClientState::ExpectInput(s) = state {
                let next = self.masked_input(*s);
                return self.settle(next);
            }
        }
        Ok(())
    }

    /// Handles an encoded server message.
    pub fn handle_bytes<R: CryptoRng + ?Sized>(
        &mut self,
        bytes: &[u8],
        rng: &mut R,
    ) -> Result<(), Error> {
        match ServerMessage::decode(bytes) {
            Ok(msg) => self.handle(msg, rng),
            Err(e) => {
                if self.is_terminal() {
                    return self.terminal_error();
                }
                // Undecodable bytes from the server: refuse, the server is faulty.
                self.outbox.clear();
                self.state = ClientState::Aborted(Refusal::Undecodable(e));
                self.terminal_error()
            }
        }
    }

    /// Handles one server message. An exact repeat of the last accepted message is ignored
    /// (retransmission); anything else out of order or invalid aborts the session, which then
    /// keeps returning the same error.
    pub fn handle<R: CryptoRng + ?Sized>(
        &mut self,
        msg: ServerMessage,
        rng: &mut R,
    ) -> Result<(), Error> {
        if matches!(self.state, ClientState::Aborted(_)) {
            return self.terminal_error();
        }
        if self.last.as_ref() == Some(&msg) {
            // A retransmission of the last accepted message (also after completing).
            return Ok(());
        }
        if self.is_terminal() {
            return self.terminal_error();
        }
        if let ServerMessage::Abort { reason, .. } = &msg {
            // Only an abort for this session counts (or any, before Setup).
            if self
                .state
                .round()
                .is_none_or(|r| r.session == *msg.session())
            {
                self.outbox.clear();
                self.state = ClientState::Aborted(Refusal::ServerAborted(reason.clone()));
                return self.terminal_error();
            }
        }
        if let Some(round) = self.state.round()
            && round.session != *msg.session()
        {
            self.outbox.clear();
            self.state = ClientState::Aborted(Refusal::WrongSession);
            return self.terminal_error();
        }
        let state = std::mem::replace(&mut self.state, ClientState::ExpectSetup);
        let expected = state.name();
        let kept = msg.clone();
        let next = match (state, msg) {
            (
                ClientState::ExpectSetup,
                ServerMessage::Setup {
                    session,
                    params,
                    roster,
                },
            ) => self.setup(session, params, roster, rng),
            (
                ClientState::ExpectShareKeysRequest(s),
                ServerMessage::ShareKeysRequest { adverts, .. },
            ) => self.share_keys(*s, adverts, rng),
            (
                ClientState::ExpectMaskedInputRequest(s),
                ServerMessage::MaskedInputRequest { shares, .. },
            ) => match open_shares(*s, shares) {
                Ok(waiting) if self.input.is_some() => self.masked_input(waiting),
                Ok(waiting) => Ok(ClientState::ExpectInput(Box::new(waiting))),
                Err(r) => Err(r),
            },
            (
                ClientState::ExpectConsistencyRequest(s),
                ServerMessage::ConsistencyRequest { survivors, .. },
            ) => self.consistency(*s, survivors),
            (
                ClientState::ExpectUnmaskRequest(s),
                ServerMessage::UnmaskRequest {
                    survivors,
                    dropped,
                    signatures,
                    ..
                },
            ) => self.unmask(*s, survivors, dropped, signatures),
            (_, msg) => Err(Refusal::UnexpectedMessage {
                expected,
                got: msg.kind(),
            }),
        };
        if next.is_ok() {
            // Only an accepted message may be repeated harmlessly.
            self.last = Some(kept);
        }
        self.settle(next)
    }

    fn settle(&mut self, next: Step) -> Result<(), Error> {
        match next {
            Ok(state) => {
                self.state = state;
                Ok(())
            }
            Err(refusal) => {
                self.outbox.clear();
                self.state = ClientState::Aborted(refusal);
                self.terminal_error()
            }
        }
    }

    fn terminal_error(&self) -> Result<(), Error> {
        match &self.state {
            ClientState::Aborted(r) => Err(Error::Refused(r.clone())),
            _ => Err(Error::Completed),
        }
    }

    fn setup<R: CryptoRng + ?Sized>(
        &mut self,
        session: SessionId,
        params: Params,
        roster: Vec<RosterEntry>,
        rng: &mut R,
    ) -> Step {
        params
            .validate()
            .map_err(|_| Refusal::BadParams("inconsistent or overflowing parameters"))?;
        if params.vector_len > self.config.max_vector_len {
            return Err(Refusal::BadParams("vector longer than this client accepts"));
        }
        if params.threshold < self.config.min_threshold.min(params.degree) {
            return Err(Refusal::BadParams("threshold below this client's minimum"));
        }
        if roster.len() != params.num_clients as usize {
            return Err(Refusal::BadRoster(
                "roster size differs from the parameters",
            ));
        }
        if roster
            .windows(2)
            .any(|w| matches!(w, [a, b] if a.id >= b.id))
        {
            return Err(Refusal::BadRoster(
                "roster not sorted by id or has duplicates",
            ));
        }
        let ids: Vec<ClientId> = roster.iter().map(|e| e.id).collect();
        let me = self.config.id;
        let my_index = index_of(&ids, me).ok_or(Refusal::NotInRoster)?;
        if roster.get(my_index as usize).map(|e| e.identity) != Some(self.config.identity.public())
        {
            return Err(Refusal::NotInRoster);
        }
        let graph = Graph::new(&session, params.num_clients, params.degree)
            .map_err(|_| Refusal::BadParams("graph"))?;
        let mut neighbours: Vec<ClientId> = graph
            .neighbours(my_index)
            .into_iter()
            .filter_map(|i| ids.get(i as usize).copied())
            .collect();
        neighbours.sort_unstable();
        for id in &neighbours {
            let entry = index_of(&ids, *id)
                .and_then(|i| roster.get(i as usize))
                .ok_or(Refusal::BadRoster("neighbour"))?;
            if !self.config.verifier.verify(entry) {
                return Err(Refusal::BadRoster("a neighbour's credential was rejected"));
            }
        }
        let identities = roster.iter().map(|e| e.identity).collect();
        let c_sk = AgreementSecret::generate(rng);
        let s_sk = AgreementSecret::generate(rng);
        let mut b_seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(b_seed.as_mut());
        let mut advert = Advertisement {
            id: me,
            c_pk: c_sk
                .public()
                .map_err(|_| Refusal::BadParams("key generation"))?,
            s_pk: s_sk
                .public()
                .map_err(|_| Refusal::BadParams("key generation"))?,
            commitment: commitment(&session, me, &b_seed),
            signature: [0u8; 64],
        };
        advert.signature = self
            .config
            .identity
            .sign(&advert_payload(&session, &advert));
        self.outbox
            .push_back(ClientMessage::Advertise { session, advert });
        self.params = Some(params.clone());
        if self
            .input
            .as_ref()
            .is_some_and(|i| i.0.len() != params.masked_len())
        {
            self.input = None;
            return Err(Refusal::BadParams(
                "the round's vector length differs from the input's",
            ));
        }
        let round = Round {
            session,
            params,
            ids,
            identities,
            me,
            neighbours,
        };
        Ok(ClientState::ExpectShareKeysRequest(Box::new(
            ExpectShareKeysRequest {
                round,
                c_sk,
                s_sk,
                b_seed,
            },
        )))
    }

    fn share_keys<R: CryptoRng + ?Sized>(
        &mut self,
        s: ExpectShareKeysRequest,
        adverts: Vec<Advertisement>,
        rng: &mut R,
    ) -> Step {
        let ExpectShareKeysRequest {
            round,
            c_sk,
            s_sk,
            b_seed,
        } = s;
        let mut seen = BTreeMap::new();
        for a in adverts {
            if !round.is_neighbour(a.id) || seen.contains_key(&a.id) {
                return Err(Refusal::UnexpectedPeer(a.id));
            }
            seen.insert(a.id, a);
        }
        // Signature checks and agreements are independent per neighbour: spread them over the
        // cores. The first failure by id is reported, whatever the scheduling.
        let forged = seen
            .par_iter()
            .filter(|(id, a)| {
                !round
                    .identity(**id)
                    .is_some_and(|k| k.verify(&advert_payload(&round.session, a), &a.signature))
            })
            .map(|(id, _)| *id)
            .min();
        if let Some(id) = forged {
            return Err(Refusal::BadAdvertisement(id));
        }
        let t = round.threshold();
        if seen.len() < t {
            return Err(Refusal::TooFewNeighbours {
                stage: Stage::ShareKeys,
                have: seen.len(),
                need: t,
            });
        }
        let peers: Vec<&Advertisement> = seen.values().collect();
        let xs: Vec<u64> = peers.iter().filter_map(|a| round.x_of(a.id)).collect();
        let b_shares = split(&b_seed, &xs, t, rng);
        let s_shares = split(&s_sk.0, &xs, t, rng);
        let me = round.me;
        let session = round.session;
        let derived: Vec<Result<PeerKeys, Refusal>> = peers
            .par_iter()
            .zip(b_shares.par_iter().zip(s_shares.par_iter()))
            .map(|(a, (b, s))| peer_keys(&session, me, &c_sk, &s_sk, a, b, s))
            .collect();
        let mut out = Vec::with_capacity(peers.len());
        let mut mask_seeds = BTreeMap::new();
        let mut recv_keys = BTreeMap::new();
        for d in derived {
            let d = d?;
            out.push(d.bundle);
            recv_keys.insert(d.id, d.recv_key);
            mask_seeds.insert(d.id, d.mask_seed);
        }
        self.outbox.push_back(ClientMessage::Shares {
            session: round.session,
            shares: out,
        });
        Ok(ClientState::ExpectMaskedInputRequest(Box::new(
            ExpectMaskedInputRequest {
                round,
                recv_keys,
                b_seed,
                mask_seeds,
            },
        )))
    }

    fn masked_input(&mut self, s: ExpectInput) -> Step {
        let ExpectInput {
            round,
            b_seed,
            mask_seeds,
            held,
        } = s;
        let Some(input) = self.input.take() else {
            return Err(Refusal::BadParams("no input"));
        };
        let mut acc = input.0;
        let me = round.me;
        let mut prgs = Vec::with_capacity(held.len() + 1);
        prgs.push((
            MaskPrg::new(&b_seed).map_err(|_| Refusal::BadParams("prg"))?,
            Sign::Plus,
        ));
        for id in held.keys() {
            let seed = mask_seeds.get(id).ok_or(Refusal::UnexpectedPeer(*id))?;
            let sign = if me < *id { Sign::Plus } else { Sign::Minus };
            prgs.push((
                MaskPrg::new(seed).map_err(|_| Refusal::BadParams("prg"))?,
                sign,
            ));
        }
        let refs: Vec<(&MaskPrg, Sign)> = prgs.iter().map(|(p, s)| (p, *s)).collect();
        apply_masks(&mut acc, &refs).map_err(|_| Refusal::BadParams("prg"))?;
        let packed = pack(&acc, round.params.mod_bits);
        self.outbox.push_back(ClientMessage::MaskedInput {
            session: round.session,
            packed,
        });
        Ok(ClientState::ExpectConsistencyRequest(Box::new(
            ExpectConsistencyRequest { round, held },
        )))
    }

    fn consistency(&mut self, s: ExpectConsistencyRequest, survivors: Vec<ClientId>) -> Step {
        let ExpectConsistencyRequest { round, held } = s;
        let t = round.threshold();
        if survivors.windows(2).any(|w| matches!(w, [a, b] if a >= b)) {
            return Err(Refusal::BadSurvivors("not sorted or has duplicates"));
        }
        if survivors.len() < t {
            return Err(Refusal::BadSurvivors("fewer survivors than the threshold"));
        }
        if survivors.binary_search(&round.me).is_err() {
            return Err(Refusal::BadSurvivors("this client is missing"));
        }
        if survivors
            .iter()
            .any(|id| index_of(&round.ids, *id).is_none())
        {
            return Err(Refusal::BadSurvivors("a survivor is not in the roster"));
        }
        let mut live = 0usize;
        for id in survivors.iter().filter(|id| round.is_neighbour(**id)) {
            if !held.contains_key(id) {
                return Err(Refusal::BadSurvivors(
                    "a neighbour listed as survivor never shared keys with this client",
                ));
            }
            live += 1;
        }
        if live < t {
            return Err(Refusal::TooFewNeighbours {
                stage: Stage::ConsistencyCheck,
                have: live,
                need: t,
            });
        }
        let signature =
            self.config
                .identity
                .sign(&consistency_payload(&round.session, round.me, &survivors));
        self.outbox.push_back(ClientMessage::Consistency {
            session: round.session,
            signature,
        });
        Ok(ClientState::ExpectUnmaskRequest(Box::new(
            ExpectUnmaskRequest {
                round,
                held,
                survivors,
            },
        )))
    }

    fn unmask(
        &mut self,
        s: ExpectUnmaskRequest,
        survivors: Vec<ClientId>,
        dropped: Vec<ClientId>,
        signatures: Vec<(ClientId, [u8; 64])>,
    ) -> Step {
        let ExpectUnmaskRequest {
            round,
            held,
            survivors: signed,
        } = s;
        if survivors != signed {
            return Err(Refusal::InconsistentSurvivors);
        }
        let mut seen = Vec::with_capacity(signatures.len());
        for (id, _) in &signatures {
            if !round.is_neighbour(*id) || signed.binary_search(id).is_err() || seen.contains(id) {
                return Err(Refusal::UnexpectedPeer(*id));
            }
            seen.push(*id);
        }
        let forged = signatures
            .par_iter()
            .filter(|(id, sig)| {
                !round.identity(*id).is_some_and(|k| {
                    k.verify(&consistency_payload(&round.session, *id, &signed), sig)
                })
            })
            .map(|(id, _)| *id)
            .min();
        if let Some(id) = forged {
            return Err(Refusal::BadConsistencySignature(id));
        }
        let valid = signatures.len();
        let t = round.threshold();
        if valid < t {
            return Err(Refusal::TooFewNeighbours {
                stage: Stage::Unmasking,
                have: valid,
                need: t,
            });
        }
        if dropped.windows(2).any(|w| matches!(w, [a, b] if a >= b)) {
            return Err(Refusal::BadSurvivors(
                "dropped list not sorted or has duplicates",
            ));
        }
        let mut keys = Vec::with_capacity(dropped.len());
        for d in &dropped {
            if signed.binary_search(d).is_ok() {
                // Never both shares of one peer: d is a survivor, its self-mask share goes out.
                return Err(Refusal::BothSharesRequested(*d));
            }
            let (_, s_share) = held.get(d).ok_or(Refusal::UnexpectedPeer(*d))?;
            keys.push(RevealedShare {
                owner: *d,
                share: s_share.clone(),
            });
        }
        let self_mask = held
            .iter()
            .filter(|(id, _)| signed.binary_search(id).is_ok())
            .map(|(id, (b, _))| RevealedShare {
                owner: *id,
                share: b.clone(),
            })
            .collect();
        self.outbox.push_back(ClientMessage::Unmask {
            session: round.session,
            self_mask,
            keys,
        });
        Ok(ClientState::Completed)
    }
}

/// What a client derives for one neighbour at ShareKeys.
struct PeerKeys {
    id: ClientId,
    bundle: EncryptedShare,
    recv_key: Zeroizing<[u8; 32]>,
    mask_seed: Zeroizing<[u8; 32]>,
}

/// Both agreements with neighbour `a`, the three keys derived from them (`docs/secagg.md` §5),
/// and the encrypted bundle of its shares.
fn peer_keys(
    session: &SessionId,
    me: ClientId,
    c_sk: &AgreementSecret,
    s_sk: &AgreementSecret,
    a: &Advertisement,
    b: &Share,
    s: &Share,
) -> Result<PeerKeys, Refusal> {
    let id = a.id;
    let bad = |_| Refusal::BadAdvertisement(id);
    let (lo, hi) = if me < id { (me, id) } else { (id, me) };
    let c_shared = c_sk
        .agree(&a.c_pk)
        .map_err(bad)?
        .ok_or(Refusal::BadAdvertisement(id))?;
    let s_shared = s_sk
        .agree(&a.s_pk)
        .map_err(bad)?
        .ok_or(Refusal::BadAdvertisement(id))?;
    let share_key = pair_key(&c_shared, session, transcript::SHARE_KEY, me, id).map_err(bad)?;
    let recv_key = pair_key(&c_shared, session, transcript::SHARE_KEY, id, me).map_err(bad)?;
    let mask_seed = pair_key(&s_shared, session, transcript::MASK_KEY, lo, hi).map_err(bad)?;
    let mut bundle = Zeroizing::new(Vec::with_capacity(1 + 16 + 2 * SHARE_LEN));
    bundle.push(1);
    bundle.extend_from_slice(&me.0.to_le_bytes());
    bundle.extend_from_slice(&id.0.to_le_bytes());
    bundle.extend_from_slice(&b.to_bytes());
    bundle.extend_from_slice(&s.to_bytes());
    let ciphertext = seal_share(&share_key, &share_aad(session, me, id), &bundle).map_err(bad)?;
    Ok(PeerKeys {
        id,
        bundle: EncryptedShare {
            peer: id,
            ciphertext,
        },
        recv_key,
        mask_seed,
    })
}

/// Opens the share bundles addressed to us: each from a neighbour that advertised, once.
fn open_shares(
    s: ExpectMaskedInputRequest,
    shares: Vec<EncryptedShare>,
) -> Result<ExpectInput, Refusal> {
    let ExpectMaskedInputRequest {
        round,
        recv_keys,
        b_seed,
        mask_seeds,
    } = s;
    let me = round.me;
    let mut held = BTreeMap::new();
    for EncryptedShare { peer, ciphertext } in shares {
        let Some(key) = recv_keys.get(&peer) else {
            return Err(Refusal::UnexpectedPeer(peer));
        };
        if held.contains_key(&peer) {
            return Err(Refusal::UnexpectedPeer(peer));
        }
        if ciphertext.len() != SHARE_CIPHERTEXT_LEN {
            return Err(Refusal::BadShare(peer));
        }
        let plain = open_share(key, &share_aad(&round.session, peer, me), &ciphertext)
            .ok_or(Refusal::BadShare(peer))?;
        let parsed = parse_bundle(&plain, peer, me).ok_or(Refusal::BadShare(peer))?;
        held.insert(peer, parsed);
    }
    let t = round.threshold();
    if held.len() < t {
        return Err(Refusal::TooFewNeighbours {
            stage: Stage::MaskedInputCollection,
            have: held.len(),
            need: t,
        });
    }
    Ok(ExpectInput {
        round,
        b_seed,
        mask_seeds,
        held,
    })
}

/// Parses a decrypted bundle: version 1, the sender, the recipient, two canonical shares.
fn parse_bundle(plain: &[u8], from: ClientId, to: ClientId) -> Option<(Share, Share)> {
    let (version, rest) = plain.split_first()?;
    let (f, rest) = rest.split_first_chunk::<8>()?;
    let (t, rest) = rest.split_first_chunk::<8>()?;
    let (b, rest) = rest.split_first_chunk::<SHARE_LEN>()?;
    let (s, rest) = rest.split_first_chunk::<SHARE_LEN>()?;
    if *version != 1
        || !rest.is_empty()
        || u64::from_le_bytes(*f) != from.0
        || u64::from_le_bytes(*t) != to.0
    {
        return None;
    }
    Some((Share::from_bytes(b)?, Share::from_bytes(s)?))
}
