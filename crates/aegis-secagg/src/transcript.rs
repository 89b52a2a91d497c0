//! What is signed, committed to and bound as associated data (`docs/secagg.md` §5). Every
//! payload starts with a distinct label and the session id, so nothing signed in one stage or one
//! session is accepted in another.

use crate::keys::sha256;
use crate::messages::Advertisement;
use crate::{ClientId, SessionId};

pub(crate) const ADVERTISE: &[u8] = b"aegis-secagg v1 advertise\0";
pub(crate) const CONSISTENCY: &[u8] = b"aegis-secagg v1 consistency\0";
pub(crate) const SHARE_AAD: &[u8] = b"aegis-secagg v1 share\0";
pub(crate) const COMMIT: &[u8] = b"aegis-secagg v1 self-mask commitment\0";
pub(crate) const SHARE_KEY: &[u8] = b"aegis-secagg v1 share key\0";
pub(crate) const MASK_KEY: &[u8] = b"aegis-secagg v1 pairwise mask\0";

/// The bytes an advertisement's signature covers.
pub(crate) fn advert_payload(session: &SessionId, a: &Advertisement) -> Vec<u8> {
    let mut m = Vec::with_capacity(ADVERTISE.len() + 32 + 8 + 96);
    m.extend_from_slice(ADVERTISE);
    m.extend_from_slice(&session.0);
    m.extend_from_slice(&a.id.0.to_le_bytes());
    m.extend_from_slice(&a.c_pk);
    m.extend_from_slice(&a.s_pk);
    m.extend_from_slice(&a.commitment);
    m
}

/// The bytes a consistency signature covers: the signer and a hash of the survivor set.
pub(crate) fn consistency_payload(
    session: &SessionId,
    signer: ClientId,
    survivors: &[ClientId],
) -> Vec<u8> {
    let mut ids = Vec::with_capacity(4 + 8 * survivors.len());
    ids.extend_from_slice(&(survivors.len() as u64).to_le_bytes());
    survivors
        .iter()
        .for_each(|id| ids.extend_from_slice(&id.0.to_le_bytes()));
    let digest = sha256(&[&ids]);
    let mut m = Vec::with_capacity(CONSISTENCY.len() + 32 + 8 + 32);
    m.extend_from_slice(CONSISTENCY);
    m.extend_from_slice(&session.0);
    m.extend_from_slice(&signer.0.to_le_bytes());
    m.extend_from_slice(&digest);
    m
}

/// Associated data of the share bundle from `from` to `to`.
pub(crate) fn share_aad(session: &SessionId, from: ClientId, to: ClientId) -> Vec<u8> {
    let mut m = Vec::with_capacity(SHARE_AAD.len() + 48);
    m.extend_from_slice(SHARE_AAD);
    m.extend_from_slice(&session.0);
    m.extend_from_slice(&from.0.to_le_bytes());
    m.extend_from_slice(&to.0.to_le_bytes());
    m
}

/// The commitment to a self-mask seed.
pub(crate) fn commitment(session: &SessionId, id: ClientId, seed: &[u8; 32]) -> [u8; 32] {
    sha256(&[COMMIT, &session.0, &id.0.to_le_bytes(), seed])
}
