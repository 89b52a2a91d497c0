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

mod common;

use std::collections::{BTreeMap, BTreeSet};

use aegis_secagg::messages::{Advertisement, EncryptedShare, RevealedShare, RosterEntry};
use aegis_secagg::{
    ClientConfig, ClientId, ClientMessage, ClientSession, ClientState, DropReason, Error, Params,
    Policy, Refusal, ServerMessage, SessionId, Stage,
};
use chacha20::ChaCha20Rng;
use common::{Batch, Net, find};
use rand_core::SeedableRng;

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

/// A ConsistencyRequest of `net`'s session for `survivors`.
fn consistency_request(net: &Net, survivors: Vec<ClientId>) -> ServerMessage {
    ServerMessage::ConsistencyRequest {
        session: net.session(),
        survivors,
    }
}

fn consistency_sig(m: &ClientMessage) -> [u8; 64] {
    match m {
        ClientMessage::Consistency { signature, .. } => *signature,
        other => panic!("expected Consistency, got {}", other.kind()),
    }
}

/// Sends each client of the ConsistencyRequest batch the set `set_of(id)` and returns, per
/// client, the set it signed and its signature (the server never sees them).
fn split_consistency(
    net: &mut Net,
    batch: Batch,
    set_of: impl Fn(ClientId) -> Vec<ClientId>,
) -> BTreeMap<ClientId, (Vec<ClientId>, [u8; 64])> {
    let mut signed = BTreeMap::new();
    for (to, _) in batch {
        let survivors = set_of(to);
        let r = net.deliver(to, consistency_request(net, survivors.clone()));
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

/// A consistency signature as an UnmaskRequest carries it: the signer and the signature.
type Signature = (ClientId, [u8; 64]);

/// Runs to the UnmaskRequest batch and delivers the one for client `me_index` rewritten by
/// `f(survivors, dropped, signatures)`; returns the net, the client and its answer.
fn tampered_unmask_request(
    seed: u64,
    me_index: usize,
    f: impl FnOnce(&mut Vec<ClientId>, &mut Vec<ClientId>, &mut Vec<Signature>),
) -> (Net, ClientId, Result<(), Error>) {
    let mut net = Net::new(complete7(), seed);
    let batch = net.advance_to("UnmaskRequest");
    let me = net.ids[me_index];
    let mut m = find(&batch, me);
    let ServerMessage::UnmaskRequest {
        survivors,
        dropped,
        signatures,
        ..
    } = &mut m
    else {
        panic!()
    };
    f(survivors, dropped, signatures);
    let r = net.deliver(me, m);
    (net, me, r)
}

#[test]
fn survivor_set_changed_after_signing_is_refused() {
    let (mut net, me, r) = tampered_unmask_request(22, 1, |survivors, dropped, signatures| {
        let gone = survivors[4];
        survivors.retain(|&i| i != gone);
        *dropped = vec![gone];
        signatures.retain(|(i, _)| *i != gone);
    });
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
    let r = net.deliver(me, consistency_request(&net, smaller));
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

/// Sends client 0 of a fresh net from `seed` the ConsistencyRequest for `survivors(net)` (as a
/// struct, past the wire decoder, if `raw`): it must refuse with `BadSurvivors`, signing nothing.
fn assert_bad_survivors(seed: u64, raw: bool, survivors: impl Fn(&Net) -> Vec<ClientId>) {
    let mut net = Net::new(complete7(), seed);
    let _ = net.advance_to("ConsistencyRequest");
    let me = net.ids[0];
    let msg = consistency_request(&net, survivors(&net));
    let r = if raw {
        net.deliver_raw(me, msg)
    } else {
        net.deliver(me, msg)
    };
    net.assert_refused_with(me, r, |r| matches!(r, Refusal::BadSurvivors(_)));
    assert!(net.sent.iter().all(|(_, m)| m.kind() != "Consistency"));
}

#[test]
fn invalid_survivor_sets_are_refused() {
    // Fewer survivors than t (but including the client).
    assert_bad_survivors(31, false, |net| net.ids[..net.t() - 1].to_vec());
    // The client itself missing.
    assert_bad_survivors(32, false, |net| net.ids[1..].to_vec());
    // A survivor that is not in the roster.
    assert_bad_survivors(33, false, |net| {
        let mut survivors = net.ids.clone();
        survivors.push(ClientId(u64::MAX));
        survivors
    });
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
    let r = net.deliver(me, consistency_request(&net, survivors));
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
    // Two distinct clients, padded to t = 4 entries and 3 "neighbours" with repeats.
    assert_bad_survivors(36, true, |net| {
        let ids = &net.ids;
        vec![ids[0], ids[1], ids[1], ids[1], ids[1]]
    });
    // An unsorted set (binary searches over it would be meaningless).
    assert_bad_survivors(37, true, |net| {
        let mut survivors = net.ids.clone();
        survivors.swap(1, 2);
        survivors
    });
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
            let r = net.deliver(to, consistency_request(&net, u3.clone()));
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
    // A flipped bit; one neighbour's (valid) signature presented as another's.
    /// Forges one signature in place and returns its claimed signer.
    type Forge = fn(&mut Vec<Signature>) -> ClientId;
    let forgeries: [(u64, usize, Forge); 2] = [
        (51, 0, |signatures| {
            signatures[3].1[40] ^= 0x01;
            signatures[3].0
        }),
        (52, 6, |signatures| {
            signatures[0].1 = signatures[1].1;
            signatures[0].0
        }),
    ];
    for (seed, me_index, forge) in forgeries {
        let mut forged = None;
        let (mut net, me, r) = tampered_unmask_request(seed, me_index, |_, _, signatures| {
            forged = Some(forge(signatures));
        });
        let forged = forged.unwrap();
        net.assert_refused(me, r, &Refusal::BadConsistencySignature(forged));
        assert!(net.unmasks().is_empty());
    }
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

/// Runs a round in which `cheat`'s message of `kind` is rewritten in place by `f`; checks the
/// server dropped it for `reason` at `stage` and completed with the exact sum of the survivors
/// (the cheat among them if `cheat_survives`).
fn cheating_client(
    params: Params,
    seed: u64,
    kind: &str,
    f: impl Fn(&Net, ClientId, &mut ClientMessage),
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
                f(&net, cheat, m);
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

/// The cheat's Advertise rewritten by `f(net, session, advert)`: dropped at AdvertiseKeys for
/// `reason`, before its input could count.
fn cheating_advert(
    seed: u64,
    f: impl Fn(&Net, &mut SessionId, &mut Advertisement),
    reason: DropReason,
) {
    let rewrite = |net: &Net, _: ClientId, m: &mut ClientMessage| {
        let ClientMessage::Advertise { session, advert } = m else {
            unreachable!()
        };
        f(net, session, advert);
    };
    let stage = Stage::AdvertiseKeys;
    cheating_client(
        complete7(),
        seed,
        "Advertise",
        rewrite,
        stage,
        reason,
        false,
    );
}

/// The cheat's Shares rewritten by `f(net, cheat, shares)`: dropped at ShareKeys for
/// `BadShares`, before its input could count.
fn cheating_shares(
    params: Params,
    seed: u64,
    f: impl Fn(&Net, ClientId, &mut Vec<EncryptedShare>),
) {
    let rewrite = |net: &Net, cheat: ClientId, m: &mut ClientMessage| {
        let ClientMessage::Shares { shares, .. } = m else {
            unreachable!()
        };
        f(net, cheat, shares);
    };
    let (stage, reason) = (Stage::ShareKeys, DropReason::BadShares);
    cheating_client(params, seed, "Shares", rewrite, stage, reason, false);
}

/// The cheat's Unmask rewritten by `f(net, cheat, self_mask, keys)`: dropped at Unmasking for
/// `BadUnmaskShares`; its input is already in the sum, so it stays a survivor.
fn cheating_unmask(
    params: Params,
    seed: u64,
    f: impl Fn(&Net, ClientId, &mut Vec<RevealedShare>, &mut Vec<RevealedShare>),
) {
    let rewrite = |net: &Net, cheat: ClientId, m: &mut ClientMessage| {
        let ClientMessage::Unmask {
            self_mask, keys, ..
        } = m
        else {
            unreachable!()
        };
        f(net, cheat, self_mask, keys);
    };
    let (stage, reason) = (Stage::Unmasking, DropReason::BadUnmaskShares);
    cheating_client(params, seed, "Unmask", rewrite, stage, reason, true);
}

#[test]
fn server_drops_a_client_message_for_another_session() {
    cheating_advert(
        81,
        |_, session, _| *session = SessionId([7; 32]),
        DropReason::WrongSession,
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
    let survivors: Vec<ClientId> = net.ids_without(cheat);
    net.assert_exact_sum(&survivors);
}

#[test]
fn server_drops_a_bad_advert_signature() {
    cheating_advert(
        82,
        |_, _, advert| advert.signature[0] ^= 0x80,
        DropReason::BadSignature(Stage::AdvertiseKeys),
    );
}

#[test]
fn server_drops_an_advert_under_another_id() {
    cheating_advert(
        83,
        |net, _, advert| advert.id = net.ids[0],
        DropReason::BadSignature(Stage::AdvertiseKeys),
    );
}

#[test]
fn server_drops_shares_for_the_wrong_neighbours() {
    // A share addressed to a non-neighbour instead of a neighbour (sparse graph).
    cheating_shares(sparse12(), 84, |net, cheat, shares| {
        let nb = net.neighbours(cheat);
        let stranger = *net
            .ids
            .iter()
            .find(|i| **i != cheat && !nb.contains(i))
            .unwrap();
        shares[0].peer = stranger;
    });
    // One neighbour left out.
    cheating_shares(sparse12(), 85, |_, _, shares| {
        shares.pop();
    });
    // A truncated ciphertext.
    cheating_shares(complete7(), 86, |_, _, shares| {
        shares[1].ciphertext.pop();
    });
}

#[test]
fn server_drops_a_masked_input_of_the_wrong_length() {
    for (params, extra) in [(complete7(), true), (sparse12(), false)] {
        cheating_client(
            params,
            87,
            "MaskedInput",
            move |_, _, m| {
                let ClientMessage::MaskedInput { packed, .. } = m else {
                    unreachable!()
                };
                if extra {
                    packed.push(0);
                } else {
                    packed.pop();
                }
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
        |_, _, m| {
            let ClientMessage::Consistency { signature, .. } = m else {
                unreachable!()
            };
            signature[5] ^= 4;
        },
        Stage::ConsistencyCheck,
        DropReason::BadSignature(Stage::ConsistencyCheck),
        true,
    );
}

#[test]
fn server_drops_unmask_shares_for_peers_it_did_not_ask_about() {
    // A self-mask share of itself (never asked).
    cheating_unmask(complete7(), 89, |_, cheat, self_mask, _| {
        let share = self_mask[0].share.clone();
        self_mask.push(RevealedShare {
            owner: cheat,
            share,
        });
    });
    // A key share of a survivor (nobody dropped, so no key share was asked for).
    cheating_unmask(complete7(), 90, |net, _, self_mask, keys| {
        keys.push(RevealedShare {
            owner: net.ids[0],
            share: self_mask[0].share.clone(),
        });
    });
    // One asked-for share replaced by a share of a peer it was not asked about (same count).
    cheating_unmask(complete7(), 92, |_, cheat, self_mask, _| {
        self_mask[1].owner = cheat;
        self_mask.sort_by_key(|r| r.owner);
    });
    // A share missing.
    cheating_unmask(sparse12(), 91, |_, _, self_mask, _| {
        self_mask.pop();
    });
}
