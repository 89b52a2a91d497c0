#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! Per-state tests of the two state machines (`docs/secagg.md` §2: rounds and states).
//!
//! Client: each state takes exactly its message kind and refuses every other one with
//! `Refusal::UnexpectedMessage`; an exact repeat of the last accepted message is ignored;
//! terminal states are final; `Abort` ends the session; the input can come before `Setup` or
//! after the `MaskedInputRequest`. Server: repeats and earlier-stage messages are ignored,
//! later-stage messages drop their sender, unknown senders are errors, deadlines drop the
//! silent, `cancel` tells everyone, and a finished server accepts nothing.

mod common;

use std::collections::BTreeMap;

use aegis_secagg::{
    AbortReason, ClientId, ClientMessage, ClientState, DropReason, Error, Params, Policy,
    QuantizedInput, Refusal, ServerEvent, ServerMessage, ServerSession, ServerState, SessionId,
    Stage,
};
use chacha20::ChaCha20Rng;
use common::{Net, find};
use rand_core::SeedableRng;

/// Five clients on the complete graph, k = 4, t = 3 (docs/secagg.md §3).
fn five() -> Params {
    let p = Params::recommended(5, 3, 1.0, 8, &Policy::default()).unwrap();
    assert_eq!((p.degree, p.threshold), (4, 3));
    p
}

/// Seven clients on the complete graph, k = 6, t = 4: two may be lost.
fn seven() -> Params {
    let p = Params::recommended(7, 3, 1.0, 8, &Policy::default()).unwrap();
    assert_eq!((p.degree, p.threshold), (6, 4));
    p
}

const SEED: u64 = 2024;
const KINDS: [&str; 5] = [
    "Setup",
    "ShareKeysRequest",
    "MaskedInputRequest",
    "ConsistencyRequest",
    "UnmaskRequest",
];

/// Everything client 0 receives in an honest round from `SEED`, by kind. Every net built from
/// `SEED` has the same session id, graph and messages.
fn reference() -> BTreeMap<&'static str, ServerMessage> {
    let mut net = Net::new(five(), SEED);
    let me = net.ids[0];
    let mut seen = BTreeMap::new();
    for _ in 0..8 {
        let batch = net.server_batch();
        if batch.is_empty() {
            break;
        }
        for (to, m) in &batch {
            if *to == me {
                seen.insert(m.kind(), m.clone());
            }
        }
        net.step(batch);
    }
    net.assert_exact_sum(&net.ids.clone());
    assert_eq!(seen.len(), 5);
    seen
}

/// A message of the same kind as `m` that is not an exact repeat of it.
fn variant(m: &ServerMessage) -> ServerMessage {
    let mut m = m.clone();
    match &mut m {
        ServerMessage::Setup { roster, .. } => roster[1].credential.push(1),
        ServerMessage::ShareKeysRequest { adverts, .. } => {
            adverts.pop();
        }
        ServerMessage::MaskedInputRequest { shares, .. } => {
            shares.pop();
        }
        ServerMessage::ConsistencyRequest { survivors, .. } => {
            survivors.pop();
        }
        ServerMessage::UnmaskRequest { signatures, .. } => {
            signatures.pop();
        }
        _ => panic!(),
    }
    m
}

/// The same message under another session id.
fn other_session(m: &ServerMessage) -> ServerMessage {
    let mut m = m.clone();
    let s = SessionId([0xee; 32]);
    match &mut m {
        ServerMessage::Setup { session, .. }
        | ServerMessage::ShareKeysRequest { session, .. }
        | ServerMessage::MaskedInputRequest { session, .. }
        | ServerMessage::ConsistencyRequest { session, .. }
        | ServerMessage::UnmaskRequest { session, .. }
        | ServerMessage::Abort { session, .. } => *session = s,
        _ => panic!(),
    }
    m
}

/// The client states in order (docs/secagg.md §2), by the name `ClientState::name` gives.
const STATES: [&str; 6] = [
    "Setup",
    "ShareKeysRequest",
    "MaskedInputRequest",
    "input",
    "ConsistencyRequest",
    "UnmaskRequest",
];

/// A fresh net from `SEED` with client 0 in the state named `state` (client 0 has no input,
/// so it stops in `ExpectInput` after the MaskedInputRequest; for the later states it gets its
/// input there).
fn net_in(state: &str) -> (Net, ClientId) {
    let mut net = Net::with_late(five(), SEED, &[0]);
    let me = net.ids[0];
    let upto = match state {
        "input" => "MaskedInputRequest",
        s => s,
    };
    let mut reached = false;
    for _ in 0..8 {
        let batch = net.server_batch();
        if batch[0].1.kind() == upto {
            // The batch is drained from the server; only "input" needs it delivered.
            if state == "input" {
                net.deliver_honest(batch);
            }
            reached = true;
            break;
        }
        net.deliver_honest(batch);
        if matches!(net.client(me).state(), ClientState::ExpectInput(_)) {
            net.supply_input(me).unwrap();
        }
        let out = net.drain_all();
        net.forward(out);
    }
    assert!(reached);
    assert_eq!(net.client(me).state().name(), state);
    assert!(net.drain(me).is_empty());
    (net, me)
}

// ---------------------------------------------------------------------------------------------
// Client (docs/secagg.md §2).
// ---------------------------------------------------------------------------------------------

#[test]
fn each_client_state_takes_only_its_message_kind() {
    let reference = reference();
    for state in STATES {
        for kind in KINDS {
            if kind == state {
                continue;
            }
            let (mut net, me) = net_in(state);
            let msg = variant(&reference[kind]);
            let r = net.deliver(me, msg);
            let want = Refusal::UnexpectedMessage {
                expected: state,
                got: kind,
            };
            net.assert_refused(me, r, &want);
        }
    }
}

#[test]
fn each_client_state_accepts_its_message_kind() {
    // docs/secagg.md §2: the state after each message, and what it sends.
    let reference = reference();
    let steps = [
        ("Setup", Some("Advertise"), "ShareKeysRequest"),
        ("ShareKeysRequest", Some("Shares"), "MaskedInputRequest"),
        ("MaskedInputRequest", None, "input"),
        ("ConsistencyRequest", Some("Consistency"), "UnmaskRequest"),
        ("UnmaskRequest", Some("Unmask"), "nothing (completed)"),
    ];
    for (kind, sends, next) in steps {
        let (mut net, me) = net_in(kind);
        assert_eq!(net.deliver(me, reference[kind].clone()), Ok(()));
        assert_eq!(net.client(me).state().name(), next);
        let out: Vec<&str> = net.drain(me).iter().map(ClientMessage::kind).collect();
        assert_eq!(out, sends.into_iter().collect::<Vec<_>>());
    }
}

#[test]
fn exact_repeat_of_the_last_accepted_message_is_ignored() {
    let mut net = Net::with_late(five(), SEED, &[0]);
    let me = net.ids[0];
    let mut repeats = 0;
    for _ in 0..8 {
        let batch = net.server_batch();
        if batch.is_empty() {
            break;
        }
        for (to, m) in batch {
            assert_eq!(net.deliver(to, m.clone()), Ok(()));
            if to != me {
                continue;
            }
            let state = net.client(me).state().name();
            let first = net.drain(me);
            // The retransmission: accepted silently, nothing re-sent, the state unchanged.
            assert_eq!(net.deliver(me, m.clone()), Ok(()));
            assert_eq!(net.client(me).state().name(), state);
            assert!(net.drain(me).is_empty(), "{} re-answered", m.kind());
            repeats += 1;
            if state == "input" {
                net.supply_input(me).unwrap();
                assert_eq!(net.client(me).state().name(), "ConsistencyRequest");
                // Still a repeat after the input moved the state on.
                assert_eq!(net.deliver(me, m), Ok(()));
            }
            let mut all = first;
            all.extend(net.drain(me));
            net.forward(all.into_iter().map(|x| (me, x)).collect());
        }
        let out = net.drain_all();
        net.forward(out);
    }
    assert_eq!(repeats, 5);
    assert!(matches!(net.client(me).state(), ClientState::Completed));
    net.assert_exact_sum(&net.ids.clone());
}

#[test]
fn completed_is_final() {
    let reference = reference();
    let (mut net, me) = net_in("UnmaskRequest");
    assert_eq!(net.deliver(me, reference["UnmaskRequest"].clone()), Ok(()));
    assert_eq!(net.drain(me).len(), 1);
    assert!(net.client(me).is_terminal());
    let session = net.session();
    let mut others: Vec<ServerMessage> = KINDS.iter().map(|k| variant(&reference[k])).collect();
    others.push(ServerMessage::Abort {
        session,
        reason: "late".into(),
    });
    others.push(other_session(&reference["Setup"]));
    for m in others {
        assert_eq!(net.deliver(me, m), Err(Error::Completed));
        assert!(matches!(net.client(me).state(), ClientState::Completed));
        assert!(net.drain(me).is_empty());
    }
    // The exact repeat of the request is a retransmission: ignored, no second Unmask.
    assert_eq!(net.deliver(me, reference["UnmaskRequest"].clone()), Ok(()));
    assert!(net.drain(me).is_empty());
}

#[test]
fn aborted_is_final() {
    let reference = reference();
    let (mut net, me) = net_in("ConsistencyRequest");
    let first = variant(&reference["UnmaskRequest"]);
    let r = net.deliver(me, first);
    let want = Refusal::UnexpectedMessage {
        expected: "ConsistencyRequest",
        got: "UnmaskRequest",
    };
    net.assert_refused(me, r, &want);
    let session = net.session();
    let mut later: Vec<ServerMessage> = KINDS.iter().map(|k| reference[k].clone()).collect();
    // The refused message itself included (its exact repeat is refused too).
    later.extend(KINDS.iter().map(|k| variant(&reference[k])));
    later.push(ServerMessage::Abort {
        session,
        reason: "late".into(),
    });
    later.push(other_session(&reference["ConsistencyRequest"]));
    for m in later {
        // The genuine ConsistencyRequest too: the refusal is final.
        let r = net.deliver(me, m);
        net.assert_refused(me, r, &want);
    }
}

/// `handle` documents: "anything else out of order or invalid aborts the session, which then
/// keeps returning the same error"; only a repeat of the last *accepted* message is ignored.
#[test]
fn repeat_of_the_refused_message_still_returns_the_refusal() {
    let reference = reference();
    let (mut net, me) = net_in("ShareKeysRequest");
    let bad = variant(&reference["UnmaskRequest"]);
    let r = net.deliver(me, bad.clone());
    let want = Refusal::UnexpectedMessage {
        expected: "ShareKeysRequest",
        got: "UnmaskRequest",
    };
    net.assert_refused(me, r, &want);
    let r = net.deliver(me, bad);
    net.assert_refused(me, r, &want);
}

#[test]
fn server_abort_ends_the_session_in_every_state() {
    for state in STATES {
        let (mut net, me) = net_in(state);
        let session = net.session();
        let r = net.deliver(
            me,
            ServerMessage::Abort {
                session,
                reason: "maintenance".into(),
            },
        );
        net.assert_refused(me, r, &Refusal::ServerAborted("maintenance".into()));
    }
    // Before Setup the session is unknown, so an Abort of any session counts.
    let (mut net, me) = net_in("Setup");
    let r = net.deliver(
        me,
        ServerMessage::Abort {
            session: SessionId([3; 32]),
            reason: "x".into(),
        },
    );
    net.assert_refused(me, r, &Refusal::ServerAborted("x".into()));
}

#[test]
fn messages_of_another_session_are_refused_in_every_state() {
    let reference = reference();
    for state in &STATES[1..] {
        let (mut net, me) = net_in(state);
        let kind = if *state == "input" {
            "ConsistencyRequest"
        } else {
            state
        };
        let r = net.deliver(me, other_session(&reference[kind]));
        net.assert_refused(me, r, &Refusal::WrongSession);
        // An Abort of another session is not this session's abort.
        let (mut net, me) = net_in(state);
        let r = net.deliver(
            me,
            ServerMessage::Abort {
                session: SessionId([4; 32]),
                reason: "other".into(),
            },
        );
        net.assert_refused(me, r, &Refusal::WrongSession);
    }
}

#[test]
fn set_input_before_setup_and_after_the_masked_input_request() {
    // Client 0 gets its input before Setup (in Net::new), client 1 only in ExpectInput.
    let mut net = Net::with_late(five(), 7, &[1]);
    let late = net.ids[1];
    let batch = net.advance_to("MaskedInputRequest");
    net.deliver_honest(batch);
    assert_eq!(net.client(late).state().name(), "input");
    assert!(net.drain(late).is_empty());
    // A wrong length is refused without harm.
    let other = Params {
        vector_len: 4,
        ..five()
    };
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let wrong = QuantizedInput::quantize(&other, &[0.0; 4], 1, &mut rng).unwrap();
    let c = net.clients.get_mut(&late).unwrap();
    assert!(matches!(c.set_input(wrong), Err(Error::Input(_))));
    assert_eq!(c.state().name(), "input");
    assert!(c.poll_outbox().is_none());
    // The right input masks and sends at once.
    let input = net.inputs[&late].clone();
    let c = net.clients.get_mut(&late).unwrap();
    assert_eq!(c.set_input(input), Ok(()));
    assert_eq!(c.state().name(), "ConsistencyRequest");
    let out = net.drain_all();
    assert_eq!(
        out.iter()
            .filter(|(_, m)| m.kind() == "MaskedInput")
            .count(),
        5
    );
    net.forward(out);
    net.finish();
    net.assert_exact_sum(&net.ids.clone());
}

#[test]
fn set_input_between_setup_and_the_masked_input_request() {
    let mut net = Net::with_late(five(), 8, &[2]);
    let me = net.ids[2];
    let batch = net.advance_to("MaskedInputRequest");
    assert_eq!(net.client(me).state().name(), "MaskedInputRequest");
    let input = net.inputs[&me].clone();
    let c = net.clients.get_mut(&me).unwrap();
    assert_eq!(c.set_input(input), Ok(()));
    assert_eq!(c.state().name(), "MaskedInputRequest");
    assert!(c.poll_outbox().is_none());
    net.deliver_honest(batch);
    assert_eq!(net.client(me).state().name(), "ConsistencyRequest");
    let out = net.drain_all();
    net.forward(out);
    net.finish();
    net.assert_exact_sum(&net.ids.clone());
}

#[test]
fn input_of_the_wrong_length_for_the_round_is_refused_at_setup() {
    let other = Params {
        vector_len: 9,
        ..five()
    };
    let mut net = Net::with_late(five(), 9, &[0]);
    let me = net.ids[0];
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let wrong = QuantizedInput::quantize(&other, &[0.5; 9], 1, &mut rng).unwrap();
    // Before Setup the length cannot be checked yet.
    assert_eq!(net.clients.get_mut(&me).unwrap().set_input(wrong), Ok(()));
    let setup = find(&net.server_batch(), me);
    let r = net.deliver(me, setup);
    assert!(matches!(r, Err(Error::Refused(Refusal::BadParams(_)))));
    assert!(net.drain(me).is_empty(), "no Advertise after the refusal");
}

// ---------------------------------------------------------------------------------------------
// Server (docs/secagg.md §2).
// ---------------------------------------------------------------------------------------------

const STAGES: [(Stage, &str); 5] = [
    (Stage::AdvertiseKeys, "Setup"),
    (Stage::ShareKeys, "ShareKeysRequest"),
    (Stage::MaskedInputCollection, "MaskedInputRequest"),
    (Stage::ConsistencyCheck, "ConsistencyRequest"),
    (Stage::Unmasking, "UnmaskRequest"),
];

#[test]
fn server_ignores_repeats_and_earlier_stage_messages() {
    let mut net = Net::new(five(), 31);
    let mut previous: Option<(ClientId, ClientMessage)> = None;
    for (stage, kind) in STAGES {
        let batch = net.advance_to(kind);
        assert_eq!(net.server.state().stage(), Some(stage));
        net.deliver_honest(batch);
        let mut out = net.drain_all();
        let last = out.pop().unwrap();
        let first = out[0].clone();
        net.forward(out);
        // A retransmission of an answer already in.
        assert_eq!(net.server.handle(first.0, first.1.clone()), Ok(()));
        let ev = net.take_events();
        assert_eq!(
            ev,
            vec![ServerEvent::Ignored {
                client: first.0,
                stage,
                why: "repeated message",
            }]
        );
        // A late message of the previous stage.
        if let Some((from, m)) = previous.take() {
            assert_eq!(net.server.handle(from, m), Ok(()));
            let ev = net.take_events();
            assert_eq!(
                ev,
                vec![ServerEvent::Ignored {
                    client: from,
                    stage,
                    why: "message of an earlier stage",
                }]
            );
        }
        assert_eq!(net.server.state().stage(), Some(stage), "still waiting");
        assert!(net.server.poll_outbox().is_none());
        previous = Some(last.clone());
        net.forward(vec![last]);
        let done = net
            .events
            .iter()
            .any(|e| matches!(e, ServerEvent::StageDone { stage: s, answered: 5 } if *s == stage));
        assert!(done, "{stage} did not end when the last client answered");
    }
    assert!(net.dropped().is_empty());
    net.assert_exact_sum(&net.ids.clone());
}

/// docs/secagg.md §2: a second, different message for a stage is ignored; the first stays.
#[test]
fn server_keeps_the_first_of_two_different_messages() {
    let mut net = Net::new(five(), 32);
    let batch = net.advance_to("ShareKeysRequest");
    net.deliver_honest(batch);
    let out = net.drain_all();
    let (from, first) = out[1].clone();
    let ClientMessage::Shares {
        session,
        mut shares,
    } = first
    else {
        panic!()
    };
    // Same shape, different ciphertexts: if the server kept this one, the recipients could not
    // open their shares and would refuse.
    shares.iter_mut().for_each(|s| s.ciphertext[20] ^= 1);
    let second = ClientMessage::Shares { session, shares };
    let mut out = out;
    out.insert(2, (from, second));
    for (id, m) in out {
        assert_eq!(net.server.handle(id, m), Ok(()));
    }
    let ev = net.take_events();
    assert!(ev.contains(&ServerEvent::Ignored {
        client: from,
        stage: Stage::ShareKeys,
        why: "repeated message",
    }));
    net.finish();
    assert!(net.dropped().is_empty());
    net.assert_exact_sum(&net.ids.clone());
}

/// Builds a client message for a session.
type Forge = fn(SessionId) -> ClientMessage;

#[test]
fn server_drops_a_client_sending_a_later_stage_message() {
    let cases: [(&str, Forge, &str); 3] = [
        (
            "Setup",
            |session| ClientMessage::Consistency {
                session,
                signature: [1; 64],
            },
            "Consistency",
        ),
        (
            "ShareKeysRequest",
            |session| ClientMessage::MaskedInput {
                session,
                packed: vec![0; 16],
            },
            "MaskedInput",
        ),
        (
            "MaskedInputRequest",
            |session| ClientMessage::Unmask {
                session,
                self_mask: vec![],
                keys: vec![],
            },
            "Unmask",
        ),
    ];
    for (kind, forge, got) in cases {
        let mut net = Net::new(seven(), 33);
        let cheat = net.ids[3];
        let batch = net.advance_to(kind);
        let stage = net.server.state().stage().unwrap();
        net.deliver_honest(batch);
        let mut out = net.drain_all();
        let (pos, _) = out
            .iter()
            .enumerate()
            .find(|(_, (id, _))| *id == cheat)
            .unwrap();
        let genuine = out.remove(pos);
        assert_eq!(net.server.handle(cheat, forge(net.session())), Ok(()));
        assert_eq!(
            net.take_events(),
            vec![ServerEvent::Dropped {
                client: cheat,
                stage,
                reason: DropReason::UnexpectedMessage { stage, got },
            }]
        );
        assert!(!net.server.is_live(cheat));
        // Its genuine answer now comes too late.
        assert_eq!(net.server.handle(genuine.0, genuine.1), Ok(()));
        assert_eq!(
            net.take_events(),
            vec![ServerEvent::Ignored {
                client: cheat,
                stage,
                why: "client already dropped",
            }]
        );
        net.forward(out);
        net.finish();
        let survivors: Vec<ClientId> = net.ids_without(cheat);
        net.assert_exact_sum(&survivors);
        assert_eq!(net.dropped().len(), 1);
    }
}

#[test]
fn server_returns_unknown_client_for_ids_outside_the_roster() {
    let mut net = Net::new(five(), 34);
    let batch = net.advance_to("ShareKeysRequest");
    let stranger = ClientId(1);
    assert!(!net.ids.contains(&stranger));
    let msg = ClientMessage::Consistency {
        session: net.session(),
        signature: [0; 64],
    };
    assert_eq!(
        net.server.handle(stranger, msg.clone()),
        Err(Error::UnknownClient(stranger))
    );
    assert_eq!(
        net.server.handle_bytes(stranger, &msg.encode()),
        Err(Error::UnknownClient(stranger))
    );
    assert!(net.take_events().is_empty());
    assert_eq!(net.server.state().stage(), Some(Stage::ShareKeys));
    assert!(net.server.poll_outbox().is_none());
    net.step(batch);
    net.finish();
    net.assert_exact_sum(&net.ids.clone());
}

#[test]
fn deadline_drops_the_silent_and_moves_on_in_every_stage() {
    for (stage, kind) in STAGES {
        let mut net = Net::new(seven(), 35);
        let silent = net.ids[5];
        let batch = net.advance_to(kind);
        net.deliver_honest(batch);
        let out: Vec<_> = net
            .drain_all()
            .into_iter()
            .filter(|(id, _)| *id != silent)
            .collect();
        net.forward(out);
        // Everybody else answered; the server waits for the silent one.
        assert_eq!(net.server.state().stage(), Some(stage));
        assert!(net.server.poll_outbox().is_none());
        net.server.on_deadline();
        let ev = net.take_events();
        assert_eq!(
            ev[..2],
            [
                ServerEvent::Dropped {
                    client: silent,
                    stage,
                    reason: DropReason::Timeout(stage),
                },
                ServerEvent::StageDone { stage, answered: 6 },
            ]
        );
        assert!(!net.server.is_live(silent));
        if stage == Stage::Unmasking {
            assert!(net.server.is_terminal());
        } else {
            assert!(net.server.state().stage() > Some(stage));
            let next = net.server_batch();
            assert_eq!(next.len(), 6);
            assert!(next.iter().all(|(to, _)| *to != silent));
            net.step(next);
        }
        net.finish();
        // Its input is in the sum once the masked input arrived (docs/secagg.md §2).
        let survivors: Vec<ClientId> = if stage >= Stage::ConsistencyCheck {
            net.ids.clone()
        } else {
            net.ids_without(silent)
        };
        net.assert_exact_sum(&survivors);
        // A deadline on a finished server changes nothing.
        net.server.on_deadline();
        assert!(net.server.aggregate().is_some());
        assert!(net.take_events().is_empty());
    }
}

#[test]
fn a_disconnect_ends_the_wait_without_a_deadline_in_every_stage() {
    for (stage, kind) in STAGES {
        let mut net = Net::new(seven(), 37);
        let gone = net.ids[5];
        let batch = net.advance_to(kind);
        net.deliver_honest(batch);
        let out: Vec<_> = net
            .drain_all()
            .into_iter()
            .filter(|(id, _)| *id != gone)
            .collect();
        net.forward(out);
        assert_eq!(net.server.state().stage(), Some(stage));
        // No deadline: the transport reports the connection closed.
        net.server.disconnected(gone);
        let ev = net.take_events();
        assert_eq!(
            ev[..2],
            [
                ServerEvent::Dropped {
                    client: gone,
                    stage,
                    reason: DropReason::Disconnected(stage),
                },
                ServerEvent::StageDone { stage, answered: 6 },
            ]
        );
        if stage != Stage::Unmasking {
            assert!(net.server.state().stage() > Some(stage));
            let next = net.server_batch();
            net.step(next);
        }
        net.finish();
        let survivors: Vec<ClientId> = if stage >= Stage::ConsistencyCheck {
            net.ids.clone()
        } else {
            net.ids_without(gone)
        };
        net.assert_exact_sum(&survivors);
        // Reports after the end, and of strangers, change nothing.
        net.server.disconnected(gone);
        net.server.disconnected(ClientId(1));
        assert!(net.take_events().is_empty());
    }
}

#[test]
fn a_client_that_answered_then_disconnected_is_dropped_when_the_next_stage_starts() {
    let mut net = Net::new(seven(), 38);
    let gone = net.ids[2];
    // Everybody advertises; then `gone` disconnects: its advert stands, and ShareKeys does
    // not wait for it.
    let batch = net.advance_to("ShareKeysRequest");
    assert_eq!(net.server.state().stage(), Some(Stage::ShareKeys));
    net.server.disconnected(gone);
    assert!(!net.server.is_live(gone));
    assert_eq!(
        net.take_events(),
        [ServerEvent::Dropped {
            client: gone,
            stage: Stage::ShareKeys,
            reason: DropReason::Disconnected(Stage::ShareKeys),
        }]
    );
    let batch: Vec<_> = batch.into_iter().filter(|(to, _)| *to != gone).collect();
    net.step(batch);
    net.finish();
    net.assert_exact_sum(&net.ids_without(gone));
}

#[test]
fn deadline_aborts_when_too_few_clients_answer() {
    let mut net = Net::new(five(), 36);
    let batch = net.advance_to("ShareKeysRequest");
    net.deliver_honest(batch);
    let keep = [net.ids[0], net.ids[1]];
    let out: Vec<_> = net
        .drain_all()
        .into_iter()
        .filter(|(id, _)| keep.contains(id))
        .collect();
    net.forward(out);
    net.server.on_deadline();
    assert!(matches!(
        net.server.state(),
        ServerState::Aborted(AbortReason::TooFewClients {
            stage: Stage::ShareKeys,
            have: 2,
            need: 3,
        })
    ));
    let aborts = net.server_batch();
    let to: Vec<ClientId> = aborts.iter().map(|(to, _)| *to).collect();
    assert_eq!(to, keep);
    for (to, m) in aborts {
        let r = net.deliver(to, m);
        assert!(matches!(r, Err(Error::Refused(Refusal::ServerAborted(_)))));
    }
}

#[test]
fn cancel_aborts_and_tells_the_live_clients() {
    let mut net = Net::new(seven(), 37);
    let gone = net.ids[2];
    // Drop one client at the first deadline.
    let batch = net.advance_to("Setup");
    net.deliver_honest(batch);
    let out: Vec<_> = net
        .drain_all()
        .into_iter()
        .filter(|(id, _)| *id != gone)
        .collect();
    net.forward(out);
    net.server.on_deadline();
    net.take_events();
    let pending = net.server_batch();
    assert_eq!(pending[0].1.kind(), "ShareKeysRequest");
    net.deliver_honest(pending);
    // The Shares answers never reach the server.
    assert_eq!(net.drain_all().len(), 6);

    net.server.cancel();
    assert!(matches!(
        net.server.state(),
        ServerState::Aborted(AbortReason::Cancelled)
    ));
    assert!(net.server.is_terminal());
    let aborts = net.server_batch();
    let to: Vec<ClientId> = aborts.iter().map(|(to, _)| *to).collect();
    let live: Vec<ClientId> = net.ids_without(gone);
    assert_eq!(to, live);
    let reason = AbortReason::Cancelled.to_string();
    for (to, m) in aborts {
        assert_eq!(
            m,
            ServerMessage::Abort {
                session: net.session(),
                reason: reason.clone(),
            }
        );
        let r = net.deliver(to, m);
        assert_eq!(
            r,
            Err(Error::Refused(Refusal::ServerAborted(reason.clone())))
        );
        assert!(net.drain(to).is_empty());
    }
    // Final: messages are refused, and neither cancel nor the deadline does anything more.
    let msg = ClientMessage::Consistency {
        session: net.session(),
        signature: [0; 64],
    };
    let err = Err(Error::Aborted(AbortReason::Cancelled));
    assert_eq!(net.server.handle(net.ids[0], msg.clone()), err);
    assert_eq!(net.server.handle_bytes(net.ids[0], &msg.encode()), err);
    net.server.cancel();
    net.server.on_deadline();
    assert!(net.server.poll_outbox().is_none());
    assert!(net.take_events().is_empty());
    assert!(matches!(
        net.server.state(),
        ServerState::Aborted(AbortReason::Cancelled)
    ));
}

#[test]
fn completed_server_accepts_nothing() {
    let mut net = Net::new(five(), 38);
    net.finish();
    net.assert_exact_sum(&net.ids.clone());
    let before = net.server.aggregate().cloned();
    let session = net.session();
    let msgs = [
        ClientMessage::Consistency {
            session,
            signature: [0; 64],
        },
        ClientMessage::Unmask {
            session,
            self_mask: vec![],
            keys: vec![],
        },
    ];
    for m in msgs {
        assert_eq!(
            net.server.handle(net.ids[1], m.clone()),
            Err(Error::Completed)
        );
        assert_eq!(
            net.server.handle_bytes(net.ids[1], &m.encode()),
            Err(Error::Completed)
        );
    }
    net.server.cancel();
    net.server.on_deadline();
    assert!(net.server.poll_outbox().is_none());
    assert!(net.take_events().is_empty());
    assert_eq!(net.server.aggregate().cloned(), before);
    // The client side of a finished round is final as well (docs/secagg.md §2).
    for id in net.ids.clone() {
        assert!(matches!(net.client(id).state(), ClientState::Completed));
    }
}

#[test]
fn setup_carries_only_the_neighbours_credentials() {
    // 40 clients, SecAgg+ graph: every Setup lists every id and identity key, but credentials
    // only of the recipient's neighbours (the only ones it checks), so a Setup does not grow
    // with n certificates.
    let params = Params::recommended(40, 8, 1.0, 10, &Policy::default()).unwrap();
    assert!(!params.is_complete());
    let (mut roster, _keys) = aegis_secagg::sim::roster(40, 77).unwrap();
    for e in &mut roster {
        e.credential = format!("certificate of {}", e.id).into_bytes();
    }
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let mut server = ServerSession::start(params, roster.clone(), &mut rng).unwrap();
    let mut count = 0;
    while let Some((to, msg)) = server.poll_outbox() {
        let ServerMessage::Setup { roster: got, .. } = msg else {
            panic!("only Setup messages at the start");
        };
        let neighbours = server.neighbours(to);
        assert_eq!(neighbours.len(), server.params().degree as usize);
        assert_eq!(got.len(), roster.len());
        for (g, e) in got.iter().zip(&roster) {
            assert_eq!((g.id, g.identity), (e.id, e.identity));
            if neighbours.contains(&g.id) {
                assert_eq!(g.credential, e.credential);
            } else {
                assert!(g.credential.is_empty(), "{to} got {}'s credential", g.id);
            }
        }
        count += 1;
    }
    assert_eq!(count, 40);
}
