//! # aegis-secagg — secure aggregation for AEGIS
//!
//! SecAgg+ (Bell et al. 2020) with the rounds of Bonawitz et al. 2017 in their active-adversary
//! form: the server learns the weighted sum of the clients' model updates and nothing else about
//! any single update, even if it deviates from the protocol, as long as the threshold holds.
//! The normative description is `docs/secagg.md`; section numbers below refer to it.
//!
//! What it does: the client and server state machines ([`ClientSession`], [`ServerSession`]),
//! the messages and their binary encoding ([`messages`]), the parameters and how `k`, `t` and
//! the modulus are chosen ([`params`]), quantization ([`quant`]), and an in-memory simulator
//! ([`sim`]). What it does not: any I/O, clock or OS randomness. Time is an input
//! ([`ServerSession::on_deadline`]) and every random draw comes from the RNG passed in, so the
//! core can run in an enclave and tests are reproducible.
//!
//! ```text
//!   client                                   server
//!   Setup            ◀───────────────────── roster, params, session id
//!   Advertise        ─── c_pk, s_pk, commit(b), sig ──▶      U1
//!   ShareKeysRequest ◀── neighbours' adverts
//!   Shares           ─── Enc(share(b), share(s_sk)) per neighbour ──▶ U2
//!   MaskedInputRequest ◀ shares addressed to me
//!   MaskedInput      ─── y = x + PRG(b) ± Σ PRG(s_uv) ──▶  U3 (summed on arrival)
//!   ConsistencyRequest ◀ U3
//!   Consistency      ─── sig(U3) ──▶                        U4
//!   UnmaskRequest    ◀── U3, dropped, neighbours' sigs
//!   Unmask           ─── b-shares of survivors, s-shares of dropped ──▶ Σx
//! ```
//!
//! ```
//! use aegis_secagg::{params::{Params, Policy}, sim::{Simulation, Faults}};
//! let params = Params::recommended(8, 100, 1.0, 10, &Policy::default())?;
//! let outcome = Simulation::new(params, 42).faults(Faults::default()).run()?;
//! let aggregate = outcome.result.expect("no dropouts, so the round completes");
//! assert_eq!(aggregate.sums, outcome.expected_sums);
//! # Ok::<(), aegis_secagg::Error>(())
//! ```

#![forbid(unsafe_code)]

pub mod client;
mod codec;
pub mod error;
pub mod graph;
pub mod keys;
pub mod messages;
pub mod params;
pub mod prg;
pub mod quant;
pub mod server;
pub mod shamir;
pub mod sim;
mod transcript;

pub use client::{ClientConfig, ClientSession, ClientState, RosterVerifier, TrustRoster};
pub use error::{AbortReason, DecodeError, DropReason, Error, Refusal};
pub use keys::{IdentityKey, IdentityPublicKey};
pub use messages::{ClientMessage, ServerMessage};
pub use params::{Params, Policy};
pub use quant::{Aggregate, QuantizedInput};
pub use server::{ServerEvent, ServerSession, ServerState};

/// A client's id in the roster (stable across rounds; assigned at enrolment).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientId(pub u64);

impl std::fmt::Display for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A round's session id: 32 random bytes drawn by the server, bound into every signature, key
/// derivation and message, so nothing from one round is accepted in another.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId(pub [u8; 32]);

impl std::fmt::Debug for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SessionId({:02x}{:02x}{:02x}{:02x}…)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

/// The stages of a round, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// Clients advertise signed public keys.
    AdvertiseKeys,
    /// Clients send encrypted shares of their secrets to their neighbours.
    ShareKeys,
    /// Clients send masked inputs.
    MaskedInputCollection,
    /// Clients sign the survivor set.
    ConsistencyCheck,
    /// Clients reveal the shares needed to unmask the sum.
    Unmasking,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::AdvertiseKeys => "AdvertiseKeys",
            Stage::ShareKeys => "ShareKeys",
            Stage::MaskedInputCollection => "MaskedInputCollection",
            Stage::ConsistencyCheck => "ConsistencyCheck",
            Stage::Unmasking => "Unmasking",
        })
    }
}
