#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! The wire encoding (`docs/secagg.md` §7): round trips of every message, the bit packing of
//! masked inputs, and a decoder that refuses every malformed input without panicking.

use std::sync::Arc;

use aegis_secagg::messages::{
    Advertisement, EncryptedShare, MAX_CREDENTIAL_LEN, RevealedShare, SHARE_CIPHERTEXT_LEN,
    VERSION, pack, unpack_add,
};
use aegis_secagg::params::{MAX_CLIENTS, MAX_VECTOR_LEN};
use aegis_secagg::shamir::{self, P, SHARE_LEN, Share};
use aegis_secagg::{
    ClientConfig, ClientId, ClientMessage, ClientSession, DecodeError, Params, Policy,
    QuantizedInput, ServerMessage, ServerSession, SessionId, sim,
};
use chacha20::ChaCha20Rng;
use proptest::prelude::*;
use rand_core::{Rng, SeedableRng};

// ---------------------------------------------------------------------------------------------
// Realistic values
// ---------------------------------------------------------------------------------------------

fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

fn random<const N: usize>(rng: &mut ChaCha20Rng) -> [u8; N] {
    let mut out = [0u8; N];
    rng.fill_bytes(&mut out);
    out
}

fn random_vec(rng: &mut ChaCha20Rng, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    rng.fill_bytes(&mut out);
    out
}

fn ids(list: &[u64]) -> Vec<ClientId> {
    list.iter().map(|&i| ClientId(i)).collect()
}

fn advert(rng: &mut ChaCha20Rng, id: u64) -> Advertisement {
    Advertisement {
        id: ClientId(id),
        c_pk: random(rng),
        s_pk: random(rng),
        commitment: random(rng),
        signature: random(rng),
    }
}

fn bundles(rng: &mut ChaCha20Rng, peers: &[u64]) -> Vec<EncryptedShare> {
    peers
        .iter()
        .map(|&p| EncryptedShare {
            peer: ClientId(p),
            ciphertext: random_vec(rng, SHARE_CIPHERTEXT_LEN),
        })
        .collect()
}

/// Shares of a random secret (docs/secagg.md §4), as a client reveals them.
fn revealed(rng: &mut ChaCha20Rng, owners: &[u64]) -> Vec<RevealedShare> {
    owners
        .iter()
        .map(|&o| {
            let secret: [u8; 32] = random(rng);
            let share = shamir::split(&secret, &[1, 2, 3, 4, 5], 3, rng)
                .into_iter()
                .nth((o % 5) as usize)
                .unwrap();
            RevealedShare {
                owner: ClientId(o),
                share,
            }
        })
        .collect()
}

/// One or more values of every server message variant.
fn server_messages() -> Vec<ServerMessage> {
    let mut r = rng(1);
    let session = SessionId(random(&mut r));
    let params = Params::recommended(5, 1000, 1.5, 100, &Policy::default()).unwrap();
    let (mut roster, _) = sim::roster(5, 3).unwrap();
    roster[1].credential = random_vec(&mut r, 1);
    roster[3].credential = random_vec(&mut r, 700);
    let mut small = params.clone();
    small.mod_bits = 13;
    small.quant_levels = 100;
    small.max_weight = 7;
    small.num_clients = 2;
    small.degree = 1;
    small.threshold = 1;
    vec![
        ServerMessage::Setup {
            session,
            params: params.clone(),
            roster: roster.clone(),
        },
        ServerMessage::Setup {
            session,
            params: small,
            roster: roster[..2].to_vec(),
        },
        ServerMessage::ShareKeysRequest {
            session,
            adverts: vec![advert(&mut r, 1007), advert(&mut r, 1014)],
        },
        ServerMessage::ShareKeysRequest {
            session,
            adverts: vec![],
        },
        ServerMessage::MaskedInputRequest {
            session,
            shares: bundles(&mut r, &[1000, 1007, 1021]),
        },
        ServerMessage::ConsistencyRequest {
            session,
            survivors: ids(&[1000, 1007, 1014, 1021]),
        },
        ServerMessage::UnmaskRequest {
            session,
            survivors: ids(&[1000, 1007, 1021]),
            dropped: ids(&[1014]),
            signatures: vec![
                (ClientId(1007), random(&mut r)),
                (ClientId(1021), random(&mut r)),
            ],
        },
        ServerMessage::UnmaskRequest {
            session,
            survivors: ids(&[1, u64::MAX]),
            dropped: vec![],
            signatures: vec![],
        },
        ServerMessage::Abort {
            session,
            reason: "client 1007 has 2 live neighbours after Unmasking, 3 needed".into(),
        },
        ServerMessage::Abort {
            session,
            reason: "réseau coupé ✂".into(),
        },
        ServerMessage::Abort {
            session,
            reason: String::new(),
        },
    ]
}

/// One or more values of every client message variant.
fn client_messages() -> Vec<ClientMessage> {
    let mut r = rng(2);
    let session = SessionId(random(&mut r));
    let values: Vec<u32> = (0..101).map(|_| r.next_u32() & 0xf_ffff).collect();
    vec![
        ClientMessage::Advertise {
            session,
            advert: advert(&mut r, 1000),
        },
        ClientMessage::Shares {
            session,
            shares: bundles(&mut r, &[1007, 1014, 1021, 1028]),
        },
        ClientMessage::MaskedInput {
            session,
            packed: pack(&values, 20),
        },
        ClientMessage::MaskedInput {
            session,
            packed: pack(&values[..3], 32),
        },
        ClientMessage::Consistency {
            session,
            signature: random(&mut r),
        },
        ClientMessage::Unmask {
            session,
            self_mask: revealed(&mut r, &[1000, 1007, 1021]),
            keys: revealed(&mut r, &[1014]),
        },
        ClientMessage::Unmask {
            session,
            self_mask: vec![],
            keys: vec![],
        },
    ]
}

/// Every message of a real round between a server and five clients (`docs/secagg.md` §2), one
/// of which goes silent before its masked input so the unmasking carries key shares, plus the
/// aborts of a cancelled round.
fn captured_round() -> (Vec<ServerMessage>, Vec<ClientMessage>) {
    let params = Params::recommended(5, 40, 1.0, 10, &Policy::default()).unwrap();
    let (entries, keys) = sim::roster(5, 9).unwrap();
    let mut r = rng(3);
    let mut server = ServerSession::start(params.clone(), entries.clone(), &mut r).unwrap();
    let mut clients: Vec<(ClientId, ClientSession)> = entries
        .iter()
        .zip(&keys)
        .map(|(e, k)| {
            let mut c = ClientSession::new(ClientConfig::new(e.id, Arc::clone(k)));
            let input = QuantizedInput::quantize(&params, &[0.25; 40], 3, &mut r).unwrap();
            c.set_input(input).unwrap();
            (e.id, c)
        })
        .collect();
    let silent = entries[4].id;
    let (mut to_clients, mut to_server) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        if server.is_terminal() {
            break;
        }
        while let Some((to, msg)) = server.poll_outbox() {
            to_clients.push(msg.clone());
            let (_, c) = clients.iter_mut().find(|(id, _)| *id == to).unwrap();
            c.handle(msg, &mut r).unwrap();
        }
        let mut delivered = false;
        for (id, c) in &mut clients {
            while let Some(msg) = c.poll_outbox() {
                to_server.push(msg.clone());
                if *id == silent && matches!(msg, ClientMessage::MaskedInput { .. }) {
                    continue;
                }
                server.handle(*id, msg).unwrap();
                delivered = true;
            }
        }
        if !delivered {
            server.on_deadline();
        }
    }
    assert!(server.aggregate().is_some(), "{:?}", server.state());
    let mut cancelled =
        ServerSession::start(params, entries, &mut rng(4)).expect("a second round starts");
    while cancelled.poll_outbox().is_some() {}
    cancelled.cancel();
    while let Some((_, msg)) = cancelled.poll_outbox() {
        to_clients.push(msg);
    }
    (to_clients, to_server)
}

fn server_tag(m: &ServerMessage) -> u8 {
    match m {
        ServerMessage::Setup { .. } => 0x01,
        ServerMessage::ShareKeysRequest { .. } => 0x02,
        ServerMessage::MaskedInputRequest { .. } => 0x03,
        ServerMessage::ConsistencyRequest { .. } => 0x04,
        ServerMessage::UnmaskRequest { .. } => 0x05,
        ServerMessage::Abort { .. } => 0x06,
        other => panic!("unknown variant {other:?}"),
    }
}

fn client_tag(m: &ClientMessage) -> u8 {
    match m {
        ClientMessage::Advertise { .. } => 0x81,
        ClientMessage::Shares { .. } => 0x82,
        ClientMessage::MaskedInput { .. } => 0x83,
        ClientMessage::Consistency { .. } => 0x84,
        ClientMessage::Unmask { .. } => 0x85,
        other => panic!("unknown variant {other:?}"),
    }
}

const SERVER_TAGS: [u8; 6] = [1, 2, 3, 4, 5, 6];
const CLIENT_TAGS: [u8; 5] = [0x81, 0x82, 0x83, 0x84, 0x85];

// ---------------------------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------------------------

/// The header of `docs/secagg.md` §7, the round trip, and canonical bytes.
fn check_server_round_trip(m: &ServerMessage) {
    let bytes = m.encode();
    assert_eq!(bytes[0], VERSION);
    assert_eq!(bytes[1], server_tag(m));
    assert_eq!(&bytes[2..34], &m.session().0);
    let back = ServerMessage::decode(&bytes).unwrap();
    assert_eq!(&back, m);
    assert_eq!(back.kind(), m.kind());
    assert_eq!(back.encode(), bytes);
}

fn check_client_round_trip(m: &ClientMessage) {
    let bytes = m.encode();
    assert_eq!(bytes[0], VERSION);
    assert_eq!(bytes[1], client_tag(m));
    assert_eq!(&bytes[2..34], &m.session().0);
    let back = ClientMessage::decode(&bytes).unwrap();
    assert_eq!(&back, m);
    assert_eq!(back.kind(), m.kind());
    assert_eq!(back.encode(), bytes);
}

#[test]
fn every_server_message_round_trips() {
    let messages = server_messages();
    let tags: std::collections::BTreeSet<u8> = messages.iter().map(server_tag).collect();
    assert_eq!(tags.into_iter().collect::<Vec<_>>(), SERVER_TAGS);
    messages.iter().for_each(check_server_round_trip);
}

#[test]
fn every_client_message_round_trips() {
    let messages = client_messages();
    let tags: std::collections::BTreeSet<u8> = messages.iter().map(client_tag).collect();
    assert_eq!(tags.into_iter().collect::<Vec<_>>(), CLIENT_TAGS);
    messages.iter().for_each(check_client_round_trip);
}

#[test]
fn every_message_of_a_real_round_round_trips() {
    let (server, client) = captured_round();
    let s: std::collections::BTreeSet<u8> = server.iter().map(server_tag).collect();
    let c: std::collections::BTreeSet<u8> = client.iter().map(client_tag).collect();
    assert_eq!(s.into_iter().collect::<Vec<_>>(), SERVER_TAGS);
    assert_eq!(c.into_iter().collect::<Vec<_>>(), CLIENT_TAGS);
    server.iter().for_each(check_server_round_trip);
    client.iter().for_each(check_client_round_trip);
    // The unmasking of the round with a dropout carries key shares of the dropped client.
    assert!(client.iter().any(|m| matches!(
        m,
        ClientMessage::Unmask { keys, .. } if !keys.is_empty()
    )));
}

#[test]
fn field_layout_matches_the_specification() {
    // docs/secagg.md §7: integers little-endian, lists a u32 count then the items.
    let session = SessionId([0xab; 32]);
    let bytes = ServerMessage::ConsistencyRequest {
        session,
        survivors: ids(&[1, 0x0102_0304_0506_0708]),
    }
    .encode();
    let mut want = vec![1u8, 0x04];
    want.extend_from_slice(&[0xab; 32]);
    want.extend_from_slice(&2u32.to_le_bytes());
    want.extend_from_slice(&1u64.to_le_bytes());
    want.extend_from_slice(&0x0102_0304_0506_0708u64.to_le_bytes());
    assert_eq!(bytes, want);

    let signature = [0x5a; 64];
    let bytes = ClientMessage::Consistency { session, signature }.encode();
    assert_eq!(bytes.len(), 34 + 64);
    assert_eq!(&bytes[34..], &signature);

    // A masked upload is ⌈(m + 1)·b/8⌉ + 38 bytes.
    for (entries, bits) in [(101usize, 20u8), (7, 13), (1, 1), (100_001, 32)] {
        let packed = pack(&vec![1u32; entries], bits);
        assert_eq!(packed.len(), (entries * usize::from(bits)).div_ceil(8));
        let bytes = ClientMessage::MaskedInput { session, packed }.encode();
        assert_eq!(bytes.len(), (entries * usize::from(bits)).div_ceil(8) + 38);
    }

    // A share is five little-endian limbs (docs/secagg.md §4).
    let mut r = rng(5);
    let share = shamir::split(&random(&mut r), &[1, 2, 3], 2, &mut r).remove(0);
    let bytes = ClientMessage::Unmask {
        session,
        self_mask: vec![RevealedShare {
            owner: ClientId(9),
            share: share.clone(),
        }],
        keys: vec![],
    }
    .encode();
    assert_eq!(bytes.len(), 34 + 4 + 8 + SHARE_LEN + 4);
    assert_eq!(&bytes[46..46 + SHARE_LEN], &share.to_bytes());
    for limb in bytes[46..46 + SHARE_LEN].chunks(8) {
        assert!(u64::from_le_bytes(limb.try_into().unwrap()) < P);
    }
}

#[test]
fn abort_reasons_are_cut_at_one_kibibyte() {
    let session = SessionId([7; 32]);
    let long = "x".repeat(3000);
    let bytes = ServerMessage::Abort {
        session,
        reason: long.clone(),
    }
    .encode();
    assert_eq!(bytes.len(), 34 + 4 + 1024);
    match ServerMessage::decode(&bytes).unwrap() {
        ServerMessage::Abort { reason, .. } => assert_eq!(reason, long[..1024]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_cut_abort_reason_stays_utf8() {
    // docs/secagg.md §7: the reason is UTF-8 of at most 1 KiB. Cutting a long reason must not
    // split a character (3-byte '€': 1024 is not a multiple of 3).
    let session = SessionId([7; 32]);
    let long = "€".repeat(400);
    let bytes = ServerMessage::Abort {
        session,
        reason: long.clone(),
    }
    .encode();
    let len = u32::from_le_bytes(bytes[34..38].try_into().unwrap()) as usize;
    assert!(len <= 1024);
    assert!(
        std::str::from_utf8(&bytes[38..]).is_ok(),
        "invalid UTF-8 on the wire"
    );
    match ServerMessage::decode(&bytes).unwrap() {
        ServerMessage::Abort { reason, .. } => assert!(long.starts_with(&reason)),
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Refusals (docs/secagg.md §7)
// ---------------------------------------------------------------------------------------------

fn all_encodings() -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let (captured_s, captured_c) = captured_round();
    let server = server_messages()
        .iter()
        .chain(&captured_s)
        .map(ServerMessage::encode)
        .collect();
    let client = client_messages()
        .iter()
        .chain(&captured_c)
        .map(ClientMessage::encode)
        .collect();
    (server, client)
}

#[test]
fn every_truncation_is_refused() {
    let (server, client) = all_encodings();
    for bytes in &server {
        for cut in 0..bytes.len() {
            assert_eq!(
                ServerMessage::decode(&bytes[..cut]),
                Err(DecodeError::Truncated),
                "tag {:#x} cut at {cut} of {}",
                bytes[1],
                bytes.len()
            );
        }
    }
    for bytes in &client {
        for cut in 0..bytes.len() {
            assert_eq!(
                ClientMessage::decode(&bytes[..cut]),
                Err(DecodeError::Truncated),
                "tag {:#x} cut at {cut} of {}",
                bytes[1],
                bytes.len()
            );
        }
    }
}

#[test]
fn trailing_bytes_are_refused() {
    let (server, client) = all_encodings();
    for extra in [&[0u8][..], &[0xff; 9][..]] {
        for bytes in &server {
            let mut b = bytes.clone();
            b.extend_from_slice(extra);
            assert_eq!(ServerMessage::decode(&b), Err(DecodeError::TrailingBytes));
        }
        for bytes in &client {
            let mut b = bytes.clone();
            b.extend_from_slice(extra);
            assert_eq!(ClientMessage::decode(&b), Err(DecodeError::TrailingBytes));
        }
    }
}

#[test]
fn other_versions_are_refused() {
    let (server, client) = all_encodings();
    for v in [0u8, 2, 0x7f, 0xff] {
        for bytes in &server {
            let mut b = bytes.clone();
            b[0] = v;
            assert_eq!(ServerMessage::decode(&b), Err(DecodeError::Version(v)));
        }
        for bytes in &client {
            let mut b = bytes.clone();
            b[0] = v;
            assert_eq!(ClientMessage::decode(&b), Err(DecodeError::Version(v)));
        }
    }
    assert_eq!(ServerMessage::decode(&[2]), Err(DecodeError::Version(2)));
    assert_eq!(ClientMessage::decode(&[0]), Err(DecodeError::Version(0)));
}

#[test]
fn unknown_types_are_refused() {
    let (server, client) = all_encodings();
    for tag in 0..=u8::MAX {
        for bytes in &server {
            let mut b = bytes.clone();
            b[1] = tag;
            let got = ServerMessage::decode(&b);
            if SERVER_TAGS.contains(&tag) {
                if tag == bytes[1] {
                    assert!(got.is_ok());
                }
            } else {
                assert_eq!(got, Err(DecodeError::UnknownType(tag)));
            }
        }
        for bytes in &client {
            let mut b = bytes.clone();
            b[1] = tag;
            let got = ClientMessage::decode(&b);
            if CLIENT_TAGS.contains(&tag) {
                if tag == bytes[1] {
                    assert!(got.is_ok());
                }
            } else {
                assert_eq!(got, Err(DecodeError::UnknownType(tag)));
            }
        }
    }
    // A client message is not a server message, and the other way round.
    for bytes in &client {
        assert_eq!(
            ServerMessage::decode(bytes),
            Err(DecodeError::UnknownType(bytes[1]))
        );
    }
    for bytes in &server {
        assert_eq!(
            ClientMessage::decode(bytes),
            Err(DecodeError::UnknownType(bytes[1]))
        );
    }
}

#[test]
fn id_lists_must_be_strictly_increasing() {
    let session = SessionId([1; 32]);
    for bad in [
        vec![5u64, 3],
        vec![4, 4],
        vec![1, 2, 9, 8],
        vec![u64::MAX, 0],
    ] {
        let m = ServerMessage::ConsistencyRequest {
            session,
            survivors: ids(&bad),
        };
        assert!(
            matches!(
                ServerMessage::decode(&m.encode()),
                Err(DecodeError::Invalid(_))
            ),
            "{bad:?}"
        );
        let m = ServerMessage::UnmaskRequest {
            session,
            survivors: ids(&[1, 2, 3]),
            dropped: ids(&bad),
            signatures: vec![],
        };
        assert!(matches!(
            ServerMessage::decode(&m.encode()),
            Err(DecodeError::Invalid(_))
        ));
        let m = ServerMessage::UnmaskRequest {
            session,
            survivors: ids(&bad),
            dropped: ids(&[7]),
            signatures: vec![],
        };
        assert!(matches!(
            ServerMessage::decode(&m.encode()),
            Err(DecodeError::Invalid(_))
        ));
    }
    // Sorted, gaps allowed, extremes allowed.
    for good in [vec![], vec![0u64], vec![0, 1, u64::MAX]] {
        let m = ServerMessage::ConsistencyRequest {
            session,
            survivors: ids(&good),
        };
        assert_eq!(ServerMessage::decode(&m.encode()), Ok(m));
    }
}

#[test]
fn non_canonical_shares_are_refused() {
    // docs/secagg.md §4: every limb of a share is below p = 2^61 − 1.
    let mut r = rng(6);
    let m = ClientMessage::Unmask {
        session: SessionId([2; 32]),
        self_mask: revealed(&mut r, &[10, 20]),
        keys: revealed(&mut r, &[30]),
    };
    let bytes = m.encode();
    // Offsets of each share: header 34, count 4, then (owner 8, share 40) per item; the key list
    // has its own count.
    let first = 34 + 4 + 8;
    let share_offsets = [first, first + 48, first + 48 + 40 + 4 + 8];
    for &at in &share_offsets {
        for limb in 0..5 {
            for bad in [P, P + 1, u64::MAX, 1 << 63] {
                let mut b = bytes.clone();
                b[at + 8 * limb..at + 8 * limb + 8].copy_from_slice(&bad.to_le_bytes());
                assert_eq!(
                    ClientMessage::decode(&b),
                    Err(DecodeError::Invalid("share")),
                    "share at {at}, limb {limb} = {bad:#x}"
                );
            }
            // The largest canonical limb is accepted and re-encodes identically.
            let mut b = bytes.clone();
            b[at + 8 * limb..at + 8 * limb + 8].copy_from_slice(&(P - 1).to_le_bytes());
            assert_eq!(ClientMessage::decode(&b).unwrap().encode(), b);
        }
    }
    assert!(Share::from_bytes(&[0xff; SHARE_LEN]).is_none());
}

#[test]
fn oversized_lengths_are_refused_before_allocating() {
    let session = SessionId([3; 32]);
    let header = |tag: u8| {
        let mut b = vec![VERSION, tag];
        b.extend_from_slice(&session.0);
        b
    };
    // A list count above 2^20.
    let mut b = header(0x04);
    b.extend_from_slice(&(MAX_CLIENTS + 1).to_le_bytes());
    assert_eq!(ServerMessage::decode(&b), Err(DecodeError::TooLong));
    // A count within the limit but beyond what the input holds.
    let mut b = header(0x04);
    b.extend_from_slice(&MAX_CLIENTS.to_le_bytes());
    b.extend_from_slice(&[0; 64]);
    assert_eq!(ServerMessage::decode(&b), Err(DecodeError::Truncated));
    let mut b = header(0x85);
    b.extend_from_slice(&MAX_CLIENTS.to_le_bytes());
    assert_eq!(ClientMessage::decode(&b), Err(DecodeError::Truncated));
    // A masked input longer than (2^28 + 1) entries of 32 bits.
    let mut b = header(0x83);
    let max = (MAX_VECTOR_LEN + 1) * 4;
    b.extend_from_slice(&(max + 1).to_le_bytes());
    assert_eq!(ClientMessage::decode(&b), Err(DecodeError::TooLong));
    let mut b = header(0x83);
    b.extend_from_slice(&max.to_le_bytes());
    assert_eq!(ClientMessage::decode(&b), Err(DecodeError::Truncated));
    // A share ciphertext longer than 113 bytes.
    let m = ClientMessage::Shares {
        session,
        shares: vec![EncryptedShare {
            peer: ClientId(1),
            ciphertext: vec![0; SHARE_CIPHERTEXT_LEN + 1],
        }],
    };
    assert_eq!(
        ClientMessage::decode(&m.encode()),
        Err(DecodeError::TooLong)
    );
    // An abort reason longer than 1 KiB.
    let mut b = header(0x06);
    b.extend_from_slice(&1025u32.to_le_bytes());
    b.extend_from_slice(&[b'x'; 1025]);
    assert_eq!(ServerMessage::decode(&b), Err(DecodeError::TooLong));
    // A credential longer than 64 KiB.
    let (mut roster, _) = sim::roster(2, 1).unwrap();
    roster[0].credential = vec![0; MAX_CREDENTIAL_LEN + 1];
    let m = ServerMessage::Setup {
        session,
        params: Params::recommended(2, 1, 1.0, 1, &Policy::default()).unwrap(),
        roster: roster.clone(),
    };
    assert_eq!(
        ServerMessage::decode(&m.encode()),
        Err(DecodeError::TooLong)
    );
    roster[0].credential = vec![0; MAX_CREDENTIAL_LEN];
    let m = ServerMessage::Setup {
        session,
        params: Params::recommended(2, 1, 1.0, 1, &Policy::default()).unwrap(),
        roster: roster.clone(),
    };
    check_server_round_trip(&m);
}

// ---------------------------------------------------------------------------------------------
// Packing (docs/secagg.md §7, type 0x83)
// ---------------------------------------------------------------------------------------------

#[test]
fn packing_is_least_significant_bit_first() {
    assert_eq!(pack(&[1], 1), [0x01]);
    assert_eq!(pack(&[1, 0, 1, 1], 1), [0b1101]);
    assert_eq!(pack(&[3, 1], 2), [0b0111]);
    assert_eq!(pack(&[0xabc], 12), [0xbc, 0x0a]);
    assert_eq!(pack(&[0xabc, 0xdef], 12), [0xbc, 0xfa, 0xde]);
    assert_eq!(pack(&[0x0102_0304], 32), [4, 3, 2, 1]);
    assert_eq!(pack(&[0x7f, 0x7f], 7), [0xff, 0x3f]);
    // Bits above the width are not packed.
    assert_eq!(pack(&[0xff], 4), pack(&[0x0f], 4));
    assert!(pack(&[], 17).is_empty());
}

/// Values below 2^bits.
fn masked(values: &[u32], bits: u8) -> Vec<u32> {
    let mask = if bits == 32 {
        u32::MAX
    } else {
        (1 << bits) - 1
    };
    values.iter().map(|v| v & mask).collect()
}

/// pack → unpack_add round trip and the refusals of unpack_add, for one width.
fn check_packing(values: &[u32], bits: u8, acc0: &[u32]) {
    let values = masked(values, bits);
    let packed = pack(&values, bits);
    assert_eq!(packed.len(), (values.len() * usize::from(bits)).div_ceil(8));
    let mut acc = vec![0u32; values.len()];
    assert_eq!(unpack_add(&packed, bits, &mut acc), Some(()));
    assert_eq!(acc, values, "bits {bits}");
    // Adds into the accumulator modulo 2^32.
    let mut acc: Vec<u32> = acc0.iter().copied().cycle().take(values.len()).collect();
    let expect: Vec<u32> = acc
        .iter()
        .zip(&values)
        .map(|(a, v)| a.wrapping_add(*v))
        .collect();
    assert_eq!(unpack_add(&packed, bits, &mut acc), Some(()));
    assert_eq!(acc, expect);
    // A wrong length is refused.
    let mut acc = vec![0u32; values.len()];
    let mut longer = packed.clone();
    longer.push(0);
    assert_eq!(unpack_add(&longer, bits, &mut acc), None);
    if !packed.is_empty() {
        assert_eq!(
            unpack_add(&packed[..packed.len() - 1], bits, &mut acc),
            None
        );
    }
    // So are nonzero padding bits.
    let spare = packed.len() * 8 - values.len() * usize::from(bits);
    for bit in 0..spare {
        let mut bad = packed.clone();
        *bad.last_mut().unwrap() |= 0x80 >> bit;
        let mut acc = vec![0u32; values.len()];
        assert_eq!(unpack_add(&bad, bits, &mut acc), None, "bits {bits}");
    }
}

#[test]
fn packing_round_trips_at_every_width() {
    let mut r = rng(7);
    for bits in 1..=32u8 {
        for len in [0usize, 1, 2, 3, 7, 8, 9, 63, 64, 65, 301] {
            let values: Vec<u32> = (0..len).map(|_| r.next_u32()).collect();
            check_packing(&values, bits, &[u32::MAX, 1, 0x8000_0000]);
            check_packing(&vec![u32::MAX; len], bits, &[0]);
            check_packing(&vec![0; len], bits, &[7]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

/// No regression files: this crate's tests write nothing outside their target directory.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A decoded message re-encodes to exactly the bytes it came from (the encoding is canonical),
/// except an abort reason that was not UTF-8 (decoded lossily).
fn check_canonical(bytes: &[u8]) {
    if let Ok(m) = ServerMessage::decode(bytes)
        && !matches!(m, ServerMessage::Abort { .. })
    {
        assert_eq!(m.encode(), bytes);
    }
    if let Ok(m) = ClientMessage::decode(bytes) {
        assert_eq!(m.encode(), bytes);
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn pack_unpack_round_trips(
        bits in 1u8..=32,
        values in proptest::collection::vec(any::<u32>(), 0..400),
        acc0 in proptest::collection::vec(any::<u32>(), 1..4),
    ) {
        check_packing(&values, bits, &acc0);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = ServerMessage::decode(&bytes);
        let _ = ClientMessage::decode(&bytes);
        check_canonical(&bytes);
    }

    #[test]
    fn arbitrary_bodies_after_a_valid_header_never_panic(
        server in any::<bool>(),
        tag in 0usize..6,
        body in proptest::collection::vec(any::<u8>(), 0..400),
    ) {
        let mut bytes = vec![VERSION, if server { SERVER_TAGS[tag] } else { CLIENT_TAGS[tag % 5] }];
        bytes.extend_from_slice(&[0; 32]);
        bytes.extend_from_slice(&body);
        check_canonical(&bytes);
    }

    #[test]
    fn mutated_valid_messages_never_panic(
        which in any::<prop::sample::Index>(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut all: Vec<Vec<u8>> = server_messages().iter().map(ServerMessage::encode).collect();
        all.extend(client_messages().iter().map(ClientMessage::encode));
        let mut bytes = all[which.index(all.len())].clone();
        for (at, v) in &edits {
            let i = at.index(bytes.len());
            bytes[i] = *v;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        check_canonical(&bytes);
    }
}

#[test]
fn the_session_id_is_read_from_the_header_of_every_message() {
    for m in server_messages() {
        let bytes = m.encode();
        assert_eq!(
            aegis_secagg::messages::peek_session(&bytes),
            Some(*m.session()),
            "{}",
            m.kind()
        );
    }
    for m in client_messages() {
        let bytes = m.encode();
        assert_eq!(
            aegis_secagg::messages::peek_session(&bytes),
            Some(*m.session()),
            "{}",
            m.kind()
        );
        // Only the header is read: a message cut right after it still names its session.
        assert_eq!(
            aegis_secagg::messages::peek_session(&bytes[..34]),
            Some(*m.session())
        );
        assert_eq!(aegis_secagg::messages::peek_session(&bytes[..33]), None);
    }
    assert_eq!(aegis_secagg::messages::peek_session(&[]), None);
    assert_eq!(aegis_secagg::messages::peek_session(&[9; 40]), None);
}
