//! The messages of a round and their compact, versioned binary encoding (`docs/secagg.md` §7).
//!
//! Every message starts with the encoding version (1) and a type byte, then the 32-byte session
//! id, then its fields: integers little-endian, lists as a `u32` count and their items, byte
//! strings as a `u32` length and the bytes. The transport carries an encoded message as one
//! protobuf `bytes` field. Decoding never panics and never allocates more than the input holds.

use crate::codec::{Reader, Writer};
use crate::error::DecodeError;
use crate::keys::{IdentityPublicKey, PUBLIC_LEN, SIGNATURE_LEN};
use crate::params::{MAX_CLIENTS, MAX_VECTOR_LEN, Params};
use crate::shamir::{SHARE_LEN, Share};
use crate::{ClientId, SessionId};

/// The encoding version written by this build.
pub const VERSION: u8 = 1;
/// Largest credential (certificate chain or token binding) in a roster entry.
pub const MAX_CREDENTIAL_LEN: usize = 64 * 1024;
/// Length of an encrypted share bundle: version, two ids, two shares, the GCM tag.
pub const SHARE_CIPHERTEXT_LEN: usize = 1 + 8 + 8 + 2 * SHARE_LEN + 16;
const MAX_LIST: usize = MAX_CLIENTS as usize;
const MAX_REASON: usize = 1024;

/// One client of the round, as the server announces it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RosterEntry {
    /// The client's id.
    pub id: ClientId,
    /// Its long-term identity key.
    pub identity: IdentityPublicKey,
    /// Evidence binding `identity` to the client (for example its certificate), checked by a
    /// client's [`RosterVerifier`](crate::client::RosterVerifier).
    pub credential: Vec<u8>,
}

/// A client's signed key advertisement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Advertisement {
    /// The advertising client.
    pub id: ClientId,
    /// X25519 public key for share encryption.
    pub c_pk: [u8; PUBLIC_LEN],
    /// X25519 public key for pairwise masks.
    pub s_pk: [u8; PUBLIC_LEN],
    /// SHA-256 commitment to the self-mask seed.
    pub commitment: [u8; 32],
    /// Ed25519 signature over the above, the session id and the id, by the identity key.
    pub signature: [u8; SIGNATURE_LEN],
}

/// An encrypted share bundle between two clients, routed by the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncryptedShare {
    /// The recipient (in a client's `Shares`) or the sender (in `MaskedInputRequest`).
    pub peer: ClientId,
    /// AES-256-GCM ciphertext of the bundle, [`SHARE_CIPHERTEXT_LEN`] bytes.
    pub ciphertext: Vec<u8>,
}

/// A share revealed to the server during unmasking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevealedShare {
    /// Whose secret this is a share of.
    pub owner: ClientId,
    /// The share, held by the sender.
    pub share: Share,
}

/// Server → client.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum ServerMessage {
    /// Starts a round: parameters and the roster.
    Setup {
        /// The session.
        session: SessionId,
        /// The parameters.
        params: Params,
        /// Every client of the round, sorted by id.
        roster: Vec<RosterEntry>,
    },
    /// The advertisements of the recipient's neighbours that advertised.
    ShareKeysRequest {
        /// The session.
        session: SessionId,
        /// Neighbours' signed keys.
        adverts: Vec<Advertisement>,
    },
    /// The encrypted shares addressed to the recipient.
    MaskedInputRequest {
        /// The session.
        session: SessionId,
        /// One bundle per neighbour that shared, `peer` = the sender.
        shares: Vec<EncryptedShare>,
    },
    /// The survivor set U3 to sign.
    ConsistencyRequest {
        /// The session.
        session: SessionId,
        /// Clients whose masked input arrived, sorted.
        survivors: Vec<ClientId>,
    },
    /// The request to reveal shares.
    UnmaskRequest {
        /// The session.
        session: SessionId,
        /// The survivor set again (must equal the signed one).
        survivors: Vec<ClientId>,
        /// Neighbours whose key share is asked for (they shared keys but sent no input).
        dropped: Vec<ClientId>,
        /// Consistency signatures of the recipient's neighbours.
        signatures: Vec<(ClientId, [u8; SIGNATURE_LEN])>,
    },
    /// The round is over without a result.
    Abort {
        /// The session.
        session: SessionId,
        /// Why, for the logs.
        reason: String,
    },
}

/// Client → server.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum ClientMessage {
    /// Signed public keys.
    Advertise {
        /// The session.
        session: SessionId,
        /// The advertisement.
        advert: Advertisement,
    },
    /// Encrypted shares, one per neighbour that advertised.
    Shares {
        /// The session.
        session: SessionId,
        /// `peer` = the recipient.
        shares: Vec<EncryptedShare>,
    },
    /// The masked input, packed `b` bits per entry.
    MaskedInput {
        /// The session.
        session: SessionId,
        /// `⌈(m + 1)·b / 8⌉` bytes.
        packed: Vec<u8>,
    },
    /// The signature over the survivor set.
    Consistency {
        /// The session.
        session: SessionId,
        /// Ed25519 signature by the identity key.
        signature: [u8; SIGNATURE_LEN],
    },
    /// Revealed shares.
    Unmask {
        /// The session.
        session: SessionId,
        /// Shares of survivors' self-mask seeds.
        self_mask: Vec<RevealedShare>,
        /// Shares of dropped clients' mask keys.
        keys: Vec<RevealedShare>,
    },
}

impl ServerMessage {
    /// The message kind, for errors and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ServerMessage::Setup { .. } => "Setup",
            ServerMessage::ShareKeysRequest { .. } => "ShareKeysRequest",
            ServerMessage::MaskedInputRequest { .. } => "MaskedInputRequest",
            ServerMessage::ConsistencyRequest { .. } => "ConsistencyRequest",
            ServerMessage::UnmaskRequest { .. } => "UnmaskRequest",
            ServerMessage::Abort { .. } => "Abort",
        }
    }

    /// The session the message belongs to.
    pub fn session(&self) -> &SessionId {
        match self {
            ServerMessage::Setup { session, .. }
            | ServerMessage::ShareKeysRequest { session, .. }
            | ServerMessage::MaskedInputRequest { session, .. }
            | ServerMessage::ConsistencyRequest { session, .. }
            | ServerMessage::UnmaskRequest { session, .. }
            | ServerMessage::Abort { session, .. } => session,
        }
    }

    /// The wire encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(64);
        w.u8(VERSION);
        match self {
            ServerMessage::Setup {
                session,
                params,
                roster,
            } => {
                w.u8(1);
                w.bytes(&session.0);
                encode_params(&mut w, params);
                w.count(roster.len());
                for e in roster {
                    w.u64(e.id.0);
                    w.bytes(&e.identity.0);
                    w.var_bytes(&e.credential);
                }
            }
            ServerMessage::ShareKeysRequest { session, adverts } => {
                w.u8(2);
                w.bytes(&session.0);
                w.count(adverts.len());
                adverts.iter().for_each(|a| encode_advert(&mut w, a));
            }
            ServerMessage::MaskedInputRequest { session, shares } => {
                w.u8(3);
                w.bytes(&session.0);
                encode_encrypted(&mut w, shares);
            }
            ServerMessage::ConsistencyRequest { session, survivors } => {
                w.u8(4);
                w.bytes(&session.0);
                encode_ids(&mut w, survivors);
            }
            ServerMessage::UnmaskRequest {
                session,
                survivors,
                dropped,
                signatures,
            } => {
                w.u8(5);
                w.bytes(&session.0);
                encode_ids(&mut w, survivors);
                encode_ids(&mut w, dropped);
                w.count(signatures.len());
                for (id, sig) in signatures {
                    w.u64(id.0);
                    w.bytes(sig);
                }
            }
            ServerMessage::Abort { session, reason } => {
                w.u8(6);
                w.bytes(&session.0);
                // At most MAX_REASON bytes, cut at a character boundary.
                let mut end = reason.len().min(MAX_REASON);
                while !reason.is_char_boundary(end) {
                    end -= 1;
                }
                w.var_bytes(reason.as_bytes().get(..end).unwrap_or_default());
            }
        }
        w.buf
    }

    /// Decodes a server message.
    pub fn decode(bytes: &[u8]) -> Result<ServerMessage, DecodeError> {
        let mut r = Reader::new(bytes);
        check_version(&mut r)?;
        let tag = r.u8()?;
        let session = SessionId(r.array()?);
        let msg = match tag {
            1 => {
                let params = decode_params(&mut r)?;
                let n = r.count(MAX_LIST, 8 + PUBLIC_LEN + 4)?;
                let mut roster = Vec::with_capacity(n);
                for _ in 0..n {
                    let id = ClientId(r.u64()?);
                    let identity = IdentityPublicKey(r.array()?);
                    let credential = r.var_bytes(MAX_CREDENTIAL_LEN)?.to_vec();
                    roster.push(RosterEntry {
                        id,
                        identity,
                        credential,
                    });
                }
                ServerMessage::Setup {
                    session,
                    params,
                    roster,
                }
            }
            2 => {
                let n = r.count(MAX_LIST, ADVERT_LEN)?;
                let adverts = (0..n)
                    .map(|_| decode_advert(&mut r))
                    .collect::<Result<_, _>>()?;
                ServerMessage::ShareKeysRequest { session, adverts }
            }
            3 => ServerMessage::MaskedInputRequest {
                session,
                shares: decode_encrypted(&mut r)?,
            },
            4 => ServerMessage::ConsistencyRequest {
                session,
                survivors: decode_ids(&mut r)?,
            },
            5 => {
                let survivors = decode_ids(&mut r)?;
                let dropped = decode_ids(&mut r)?;
                let n = r.count(MAX_LIST, 8 + SIGNATURE_LEN)?;
                let mut signatures = Vec::with_capacity(n);
                for _ in 0..n {
                    signatures.push((ClientId(r.u64()?), r.array()?));
                }
                ServerMessage::UnmaskRequest {
                    session,
                    survivors,
                    dropped,
                    signatures,
                }
            }
            6 => {
                let reason = std::str::from_utf8(r.var_bytes(MAX_REASON)?)
                    .map_err(|_| DecodeError::Invalid("reason is not UTF-8"))?
                    .to_owned();
                ServerMessage::Abort { session, reason }
            }
            t => return Err(DecodeError::UnknownType(t)),
        };
        r.finish()?;
        Ok(msg)
    }
}

impl ClientMessage {
    /// The message kind, for errors and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientMessage::Advertise { .. } => "Advertise",
            ClientMessage::Shares { .. } => "Shares",
            ClientMessage::MaskedInput { .. } => "MaskedInput",
            ClientMessage::Consistency { .. } => "Consistency",
            ClientMessage::Unmask { .. } => "Unmask",
        }
    }

    /// The session the message belongs to.
    pub fn session(&self) -> &SessionId {
        match self {
            ClientMessage::Advertise { session, .. }
            | ClientMessage::Shares { session, .. }
            | ClientMessage::MaskedInput { session, .. }
            | ClientMessage::Consistency { session, .. }
            | ClientMessage::Unmask { session, .. } => session,
        }
    }

    /// The wire encoding.
    pub fn encode(&self) -> Vec<u8> {
        let cap = match self {
            ClientMessage::MaskedInput { packed, .. } => packed.len() + 48,
            _ => 128,
        };
        let mut w = Writer::with_capacity(cap);
        w.u8(VERSION);
        match self {
            ClientMessage::Advertise { session, advert } => {
                w.u8(0x81);
                w.bytes(&session.0);
                encode_advert(&mut w, advert);
            }
            ClientMessage::Shares { session, shares } => {
                w.u8(0x82);
                w.bytes(&session.0);
                encode_encrypted(&mut w, shares);
            }
            ClientMessage::MaskedInput { session, packed } => {
                w.u8(0x83);
                w.bytes(&session.0);
                w.var_bytes(packed);
            }
            ClientMessage::Consistency { session, signature } => {
                w.u8(0x84);
                w.bytes(&session.0);
                w.bytes(signature);
            }
            ClientMessage::Unmask {
                session,
                self_mask,
                keys,
            } => {
                w.u8(0x85);
                w.bytes(&session.0);
                for list in [self_mask, keys] {
                    w.count(list.len());
                    for s in list {
                        w.u64(s.owner.0);
                        w.bytes(&s.share.to_bytes());
                    }
                }
            }
        }
        w.buf
    }

    /// Decodes a client message.
    pub fn decode(bytes: &[u8]) -> Result<ClientMessage, DecodeError> {
        let mut r = Reader::new(bytes);
        check_version(&mut r)?;
        let tag = r.u8()?;
        let session = SessionId(r.array()?);
        let msg = match tag {
            0x81 => ClientMessage::Advertise {
                session,
                advert: decode_advert(&mut r)?,
            },
            0x82 => ClientMessage::Shares {
                session,
                shares: decode_encrypted(&mut r)?,
            },
            0x83 => {
                let max = (MAX_VECTOR_LEN as usize + 1) * 4;
                ClientMessage::MaskedInput {
                    session,
                    packed: r.var_bytes(max)?.to_vec(),
                }
            }
            0x84 => ClientMessage::Consistency {
                session,
                signature: r.array()?,
            },
            0x85 => {
                let mut lists = [Vec::new(), Vec::new()];
                for list in &mut lists {
                    let n = r.count(MAX_LIST, 8 + SHARE_LEN)?;
                    list.reserve(n);
                    for _ in 0..n {
                        let owner = ClientId(r.u64()?);
                        let share =
                            Share::from_bytes(&r.array()?).ok_or(DecodeError::Invalid("share"))?;
                        list.push(RevealedShare { owner, share });
                    }
                }
                let [self_mask, keys] = lists;
                ClientMessage::Unmask {
                    session,
                    self_mask,
                    keys,
                }
            }
            t => return Err(DecodeError::UnknownType(t)),
        };
        r.finish()?;
        Ok(msg)
    }
}

/// A masked input borrowed from its encoding (the server sums it without copying it).
/// The session id of an encoded client or server message, read from its header alone (version,
/// type, session id) without decoding the rest; `None` when the header is malformed. A
/// transport uses it to set aside messages of an earlier round before they reach a session
/// (which would drop their sender for a wrong session).
pub fn peek_session(bytes: &[u8]) -> Option<SessionId> {
    let mut r = Reader::new(bytes);
    check_version(&mut r).ok()?;
    r.u8().ok()?;
    r.array().ok().map(SessionId)
}

pub(crate) fn decode_masked_input(bytes: &[u8]) -> Result<Option<(SessionId, &[u8])>, DecodeError> {
    let mut r = Reader::new(bytes);
    check_version(&mut r)?;
    if r.u8()? != 0x83 {
        return Ok(None);
    }
    let session = SessionId(r.array()?);
    let packed = r.var_bytes((MAX_VECTOR_LEN as usize + 1) * 4)?;
    r.finish()?;
    Ok(Some((session, packed)))
}

fn check_version(r: &mut Reader<'_>) -> Result<(), DecodeError> {
    match r.u8()? {
        VERSION => Ok(()),
        v => Err(DecodeError::Version(v)),
    }
}

fn encode_params(w: &mut Writer, p: &Params) {
    w.u32(p.num_clients);
    w.u32(p.degree);
    w.u32(p.threshold);
    w.u8(p.mod_bits);
    w.u32(p.quant_levels);
    w.f32(p.clip);
    w.u32(p.max_weight);
    w.u32(p.vector_len);
}

fn decode_params(r: &mut Reader<'_>) -> Result<Params, DecodeError> {
    Ok(Params {
        num_clients: r.u32()?,
        degree: r.u32()?,
        threshold: r.u32()?,
        mod_bits: r.u8()?,
        quant_levels: r.u32()?,
        clip: r.f32()?,
        max_weight: r.u32()?,
        vector_len: r.u32()?,
    })
}

const ADVERT_LEN: usize = 8 + 3 * 32 + SIGNATURE_LEN;

fn encode_advert(w: &mut Writer, a: &Advertisement) {
    w.u64(a.id.0);
    w.bytes(&a.c_pk);
    w.bytes(&a.s_pk);
    w.bytes(&a.commitment);
    w.bytes(&a.signature);
}

fn decode_advert(r: &mut Reader<'_>) -> Result<Advertisement, DecodeError> {
    Ok(Advertisement {
        id: ClientId(r.u64()?),
        c_pk: r.array()?,
        s_pk: r.array()?,
        commitment: r.array()?,
        signature: r.array()?,
    })
}

fn encode_encrypted(w: &mut Writer, shares: &[EncryptedShare]) {
    w.count(shares.len());
    for s in shares {
        w.u64(s.peer.0);
        w.var_bytes(&s.ciphertext);
    }
}

fn decode_encrypted(r: &mut Reader<'_>) -> Result<Vec<EncryptedShare>, DecodeError> {
    let n = r.count(MAX_LIST, 12)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let peer = ClientId(r.u64()?);
        let ciphertext = r.var_bytes(SHARE_CIPHERTEXT_LEN)?.to_vec();
        out.push(EncryptedShare { peer, ciphertext });
    }
    Ok(out)
}

fn encode_ids(w: &mut Writer, ids: &[ClientId]) {
    w.count(ids.len());
    ids.iter().for_each(|id| w.u64(id.0));
}

/// A list of ids, which must be strictly increasing (sorted, no duplicates).
fn decode_ids(r: &mut Reader<'_>) -> Result<Vec<ClientId>, DecodeError> {
    let n = r.count(MAX_LIST, 8)?;
    let mut out: Vec<ClientId> = Vec::with_capacity(n);
    for _ in 0..n {
        let id = ClientId(r.u64()?);
        if out.last().is_some_and(|&last| last >= id) {
            return Err(DecodeError::Invalid("id list not strictly increasing"));
        }
        out.push(id);
    }
    Ok(out)
}

/// Packs entries (each below 2^b) into `⌈len·b/8⌉` bytes, least significant bits first.
pub fn pack(values: &[u32], bits: u8) -> Vec<u8> {
    if bits == 32 {
        let mut out = Vec::with_capacity(values.len() * 4);
        values
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        return out;
    }
    let bits = u32::from(bits);
    let mut out = Vec::with_capacity((values.len() * bits as usize).div_ceil(8));
    let mut acc = 0u64;
    let mut have = 0u32;
    let mask = (1u64 << bits) - 1;
    for &v in values {
        acc |= (u64::from(v) & mask) << have;
        have += bits;
        while have >= 8 {
            out.push(acc as u8);
            acc >>= 8;
            have -= 8;
        }
    }
    if have > 0 {
        out.push(acc as u8);
    }
    out
}

/// Adds the `len` entries packed in `bytes` into `acc` (mod 2^32); `None` if `bytes` has the
/// wrong length or nonzero padding bits.
pub fn unpack_add(bytes: &[u8], bits: u8, acc: &mut [u32]) -> Option<()> {
    let len = acc.len();
    if bytes.len() != (len * usize::from(bits)).div_ceil(8) {
        return None;
    }
    if bits == 32 {
        let (words, _) = bytes.as_chunks::<4>();
        acc.iter_mut()
            .zip(words)
            .for_each(|(a, w)| *a = a.wrapping_add(u32::from_le_bytes(*w)));
        return Some(());
    }
    let bits = u32::from(bits);
    let mask = (1u64 << bits) - 1;
    let mut acc_bits = 0u64;
    let mut have = 0u32;
    let mut it = bytes.iter();
    for a in acc.iter_mut() {
        while have < bits {
            acc_bits |= u64::from(*it.next()?) << have;
            have += 8;
        }
        *a = a.wrapping_add((acc_bits & mask) as u32);
        acc_bits >>= bits;
        have -= bits;
    }
    (acc_bits == 0).then_some(())
}
