//! Errors, drop reasons and abort reasons. None of them carries key material or mask values.

use crate::{ClientId, Stage};

/// Why bytes could not be decoded as a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The bytes end before the message does.
    #[error("message truncated")]
    Truncated,
    /// Bytes follow the end of the message.
    #[error("trailing bytes after the message")]
    TrailingBytes,
    /// The encoding version is not one this build reads.
    #[error("unsupported message version {0}")]
    Version(u8),
    /// The message type tag is unknown.
    #[error("unknown message type {0}")]
    UnknownType(u8),
    /// A list or byte string is longer than the decoder allows.
    #[error("a list or field is longer than allowed")]
    TooLong,
    /// A field holds a value outside its domain (a non-canonical share, an unsorted list, …).
    #[error("invalid field: {0}")]
    Invalid(&'static str),
}

/// Why the server dropped one client from the round. The round goes on without it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DropReason {
    /// No message from the client before the stage's deadline.
    #[error("no answer before the deadline of {0}")]
    Timeout(Stage),
    /// The client's bytes did not decode.
    #[error("undecodable message: {0}")]
    Malformed(DecodeError),
    /// A message of the wrong kind for the stage.
    #[error("unexpected message in {stage}: {got}")]
    UnexpectedMessage {
        /// Stage the server was in.
        stage: Stage,
        /// Kind of message received.
        got: &'static str,
    },
    /// A message for another session (a replay or a misrouted message).
    #[error("message for another session")]
    WrongSession,
    /// Two different messages for the same stage.
    #[error("two different messages in {0}")]
    Equivocation(Stage),
    /// A signature that does not verify under the client's identity key.
    #[error("bad signature in {0}")]
    BadSignature(Stage),
    /// An advertised X25519 key of small order (agreement with it would be all-zero).
    #[error("degenerate public key in the advertisement")]
    BadKey,
    /// Encrypted shares not addressed to exactly the client's live neighbours, or of the wrong size.
    #[error("encrypted shares do not match the neighbourhood")]
    BadShares,
    /// A masked input of the wrong length.
    #[error("masked input of the wrong length")]
    BadMaskedInput,
    /// Unmasking shares for the wrong set of peers, or malformed.
    #[error("unmasking shares do not match the request")]
    BadUnmaskShares,
    /// Fewer than `t` live neighbours left: the client cannot take part any more.
    #[error("fewer than the threshold of live neighbours in {0}")]
    TooFewNeighbours(Stage),
    /// The transport reported the client gone (its connection closed) before it answered.
    #[error("disconnected in {0}")]
    Disconnected(Stage),
}

/// Why a round ended without a result.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AbortReason {
    /// Fewer clients than needed are left after a stage.
    #[error("only {have} clients left after {stage}, {need} needed")]
    TooFewClients {
        /// Stage after which the count fell short.
        stage: Stage,
        /// Clients left.
        have: usize,
        /// Clients needed.
        need: usize,
    },
    /// A client whose secret is needed has fewer than `t` live neighbours to reveal it.
    #[error("client {client} has {have} live neighbours after {stage}, {need} needed")]
    TooFewNeighbours {
        /// The client whose secret could not be recovered.
        client: ClientId,
        /// Stage after which the count fell short.
        stage: Stage,
        /// Live neighbours.
        have: usize,
        /// The threshold.
        need: usize,
    },
    /// The revealed shares of a client's secret do not reconstruct the committed value.
    #[error("shares of client {0} do not reconstruct its committed secret")]
    ReconstructionFailed(ClientId),
    /// A primitive of the crypto provider failed unexpectedly.
    #[error("internal cryptographic failure")]
    Internal,
    /// The operator cancelled the round.
    #[error("cancelled")]
    Cancelled,
    /// The server told this client it aborted (client side).
    #[error("the server aborted the round: {0}")]
    ServerAborted(String),
}

/// Why an honest client refused to go on. Each one is either a server fault or a sign of an
/// active attack; the client ends in `Aborted` and reveals nothing more.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// Parameters that are unsafe or outside this client's policy.
    #[error("unacceptable parameters: {0}")]
    BadParams(&'static str),
    /// The roster does not list this client, or lists another identity key for it.
    #[error("this client is not in the roster under its identity key")]
    NotInRoster,
    /// The roster is unsorted, has duplicates, or a credential failed verification.
    #[error("invalid roster: {0}")]
    BadRoster(&'static str),
    /// A message of the wrong kind for the state.
    #[error("unexpected {got} while waiting for {expected}")]
    UnexpectedMessage {
        /// What the state waits on.
        expected: &'static str,
        /// What came.
        got: &'static str,
    },
    /// A message for another session (a replay).
    #[error("message for another session")]
    WrongSession,
    /// Bytes from the server that do not decode.
    #[error("undecodable message from the server: {0}")]
    Undecodable(DecodeError),
    /// A peer's advertised keys are not signed by its identity key.
    #[error("forged or invalid key advertisement of client {0}")]
    BadAdvertisement(ClientId),
    /// A peer that is not a neighbour, or listed twice.
    #[error("client {0} is not an expected neighbour here")]
    UnexpectedPeer(ClientId),
    /// An encrypted share that does not decrypt or does not belong to this pair.
    #[error("the encrypted share from client {0} does not open")]
    BadShare(ClientId),
    /// Fewer than `t` neighbours left.
    #[error("only {have} neighbours left in {stage}, {need} needed")]
    TooFewNeighbours {
        /// The stage.
        stage: Stage,
        /// Neighbours left.
        have: usize,
        /// The threshold.
        need: usize,
    },
    /// The survivor set is malformed, smaller than `t`, omits this client, or lists a survivor
    /// that never shared keys with it.
    #[error("invalid survivor set: {0}")]
    BadSurvivors(&'static str),
    /// The survivor set in the unmasking request differs from the one this client signed.
    #[error("survivor set differs from the signed consistency set")]
    InconsistentSurvivors,
    /// A consistency signature that does not verify.
    #[error("forged consistency signature of client {0}")]
    BadConsistencySignature(ClientId),
    /// Both the self-mask share and the key share of one peer were asked for.
    #[error("asked for both shares of client {0}")]
    BothSharesRequested(ClientId),
    /// The server aborted the round.
    #[error("the server aborted the round: {0}")]
    ServerAborted(String),
}

/// Errors returned to the caller of a session (API misuse or an ended session).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The parameters are invalid or unsafe (for example, the sum could overflow the modulus).
    #[error("invalid parameters: {0}")]
    Params(String),
    /// The input does not fit the parameters (length, weight, non-finite values).
    #[error("invalid input: {0}")]
    Input(String),
    /// A message from a client that is not in the roster.
    #[error("client {0} is not in the roster")]
    UnknownClient(ClientId),
    /// The client refused to go on; the session is aborted and stays so.
    #[error("refused: {0}")]
    Refused(Refusal),
    /// The round aborted; the session stays aborted.
    #[error("round aborted: {0}")]
    Aborted(AbortReason),
    /// The session has completed; no further message is accepted.
    #[error("the session has completed")]
    Completed,
    /// Bytes that do not decode.
    #[error("undecodable message: {0}")]
    Decode(#[from] DecodeError),
    /// A primitive of the crypto provider failed unexpectedly.
    #[error("cryptographic primitive failed")]
    Primitive,
}
