#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! End-to-end rounds through the in-memory simulator (`docs/secagg.md` §8): a seeded server and
//! `n` clients exchanging encoded messages, with scripted and random dropouts in every stage,
//! duplicated, reordered and tampered messages.
//!
//! The invariant checked throughout: a round either completes with the exact sum of the inputs
//! of the clients it reports as survivors, or it aborts. It never returns a wrong sum.

use std::collections::BTreeMap;

use aegis_secagg::sim::{Faults, Outcome, Simulation};
use aegis_secagg::{
    AbortReason, Aggregate, ClientId, DropReason, Params, Policy, Refusal, ServerEvent, Stage,
};
use proptest::prelude::*;

const STAGES: [Stage; 5] = [
    Stage::AdvertiseKeys,
    Stage::ShareKeys,
    Stage::MaskedInputCollection,
    Stage::ConsistencyCheck,
    Stage::Unmasking,
];

/// Slack for the `f32` the mean is returned in (values are within `[-clip, clip]`, clip ≤ 2).
const MEAN_EPS: f64 = 1e-6;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn recommended(n: u32, m: u32) -> Params {
    // docs/secagg.md §3: k, t and the modulus are chosen from n and the policy.
    Params::recommended(n, m, 1.0, 100, &Policy::default()).unwrap()
}

/// Recommended parameters with a hand-picked degree and threshold (the Bell et al. graph).
fn with_graph(n: u32, m: u32, k: u32, t: u32) -> Params {
    let mut p = recommended(n, m);
    p.degree = k;
    p.threshold = t;
    p.validate().unwrap();
    p
}

fn run(params: &Params, seed: u64, faults: Faults) -> Outcome {
    Simulation::new(params.clone(), seed)
        .faults(faults)
        .run()
        .unwrap()
}

fn drops(pairs: &[(ClientId, Stage)]) -> Faults {
    Faults {
        drop_at: pairs.iter().copied().collect(),
        ..Faults::default()
    }
}

/// Every `Dropped` event, by client (a client is dropped at most once).
fn dropped(outcome: &Outcome) -> BTreeMap<ClientId, (Stage, DropReason)> {
    let mut out = BTreeMap::new();
    for e in &outcome.events {
        if let ServerEvent::Dropped {
            client,
            stage,
            reason,
        } = e
        {
            let previous = out.insert(*client, (*stage, reason.clone()));
            assert!(previous.is_none(), "client {client} dropped twice: {e:?}");
        }
    }
    out
}

/// The round completed with the exact sum and weight of its survivors (`docs/secagg.md` §2, §6).
fn assert_exact(outcome: &Outcome) -> &Aggregate {
    let a = match &outcome.result {
        Ok(a) => a,
        Err(e) => panic!(
            "the round aborted: {e}\nevents: {:?}\nrefusals: {:?}",
            outcome.events, outcome.refusals
        ),
    };
    assert_eq!(a.sums, outcome.expected_sums, "wrong sums");
    assert_eq!(a.weight_sum, outcome.expected_weight, "wrong weight sum");
    assert_eq!(a.sums.len(), a.params().vector_len as usize);
    a
}

/// The core invariant: exact, or an abort. Also checks what must hold whatever the faults: the
/// round reached a terminal state (the simulator reports `Cancelled` if it ran out of passes),
/// the survivors are sorted roster members that sent a masked input, and they are exactly the
/// clients the server did not drop by the end of MaskedInputCollection.
fn assert_exact_or_abort(outcome: &Outcome, n: u32) {
    let roster = Simulation::client_ids(n);
    let dropped = dropped(outcome);
    match &outcome.result {
        Ok(_) => {
            let a = assert_exact(outcome);
            assert!(a.survivors.windows(2).all(|w| w[0] < w[1]));
            // docs/secagg.md §2: U3 = the clients whose masked input arrived in time.
            let expected: Vec<ClientId> = roster
                .iter()
                .copied()
                .filter(|c| {
                    dropped
                        .get(c)
                        .is_none_or(|(s, _)| *s > Stage::MaskedInputCollection)
                })
                .collect();
            assert_eq!(a.survivors, expected, "survivors vs drop events");
            for (c, s) in &outcome.silenced {
                if *s <= Stage::MaskedInputCollection {
                    assert!(
                        !a.survivors.contains(c),
                        "client {c} silenced at {s} is a survivor"
                    );
                }
            }
            assert!(a.survivors.len() >= a.params().threshold as usize);
        }
        Err(AbortReason::Cancelled) => panic!(
            "the round did not reach a terminal state\nevents: {:?}",
            outcome.events
        ),
        Err(_) => {}
    }
}

/// Without tampering, an honest client only refuses because the server aborted, or because it
/// saw fewer than `t` consistency signatures of its neighbours (`docs/secagg.md` §2, Unmasking).
/// And the server only drops clients that were silenced at that stage, that it pruned for lack
/// of neighbours after AdvertiseKeys, or that refused to unmask for that reason.
fn assert_honest_behaviour(outcome: &Outcome) {
    let abort_text = outcome.result.as_ref().err().map(ToString::to_string);
    for (c, r) in &outcome.refusals {
        match r {
            Refusal::ServerAborted(text) => {
                assert_eq!(Some(text), abort_text.as_ref(), "client {c}");
            }
            Refusal::TooFewNeighbours {
                stage: Stage::Unmasking,
                have,
                need,
            } => assert!(have < need),
            other => panic!("honest client {c} refused: {other:?}"),
        }
    }
    for (c, (stage, reason)) in dropped(outcome) {
        match reason {
            DropReason::Timeout(s) => {
                assert_eq!(s, stage, "client {c}");
                let silenced_here = outcome.silenced.get(&c) == Some(&s);
                let refused_unmask = s == Stage::Unmasking
                    && matches!(
                        outcome.refusals.get(&c),
                        Some(Refusal::TooFewNeighbours {
                            stage: Stage::Unmasking,
                            ..
                        })
                    );
                assert!(
                    silenced_here || refused_unmask,
                    "client {c} timed out at {s} but was silenced at {:?}",
                    outcome.silenced.get(&c)
                );
            }
            DropReason::TooFewNeighbours(Stage::AdvertiseKeys) => {
                assert_eq!(stage, Stage::AdvertiseKeys);
            }
            other => panic!("client {c} dropped at {stage} for {other:?}"),
        }
    }
}

/// The dequantized mean is within the quantization error of the plain weighted mean of the
/// clipped inputs (`docs/secagg.md` §6).
fn assert_mean_close(a: &Aggregate, plain_mean: &[f64]) -> f64 {
    let mean = a.mean().expect("positive weight");
    let bound = a.mean_error_bound();
    assert!(bound.is_finite() && bound > 0.0);
    assert_eq!(mean.len(), plain_mean.len());
    let mut worst = 0f64;
    for (i, (got, want)) in mean.iter().zip(plain_mean).enumerate() {
        let err = (f64::from(*got) - want).abs();
        assert!(
            err <= bound + MEAN_EPS,
            "element {i}: mean {got}, plain {want}, error {err} > bound {bound}"
        );
        worst = worst.max(err);
    }
    worst
}

/// Checks a round with scripted drops and nothing else: it completes exactly; clients silenced
/// at or before MaskedInputCollection are not survivors, those silenced later are (their masked
/// input is in the sum); each silenced client is dropped with `Timeout` at its stage; nobody
/// else is dropped or refuses.
fn assert_scripted_drops(params: &Params, seed: u64, script: &[(ClientId, Stage)]) {
    let outcome = run(params, seed, drops(script));
    let script: BTreeMap<ClientId, Stage> = script.iter().copied().collect();
    assert_eq!(outcome.silenced, script);
    let a = assert_exact(&outcome);
    // docs/secagg.md §2: U3 is fixed at MaskedInputCollection; later dropouts stay in the sum.
    let expected: Vec<ClientId> = Simulation::client_ids(params.num_clients)
        .into_iter()
        .filter(|c| {
            script
                .get(c)
                .is_none_or(|s| *s > Stage::MaskedInputCollection)
        })
        .collect();
    assert_eq!(a.survivors, expected, "script {script:?}");
    let dropped = dropped(&outcome);
    for (c, s) in &script {
        assert_eq!(
            dropped.get(c),
            Some(&(*s, DropReason::Timeout(*s))),
            "client {c} silenced at {s}"
        );
    }
    assert_eq!(
        dropped.keys().collect::<Vec<_>>(),
        script.keys().collect::<Vec<_>>(),
        "only the silenced clients are dropped"
    );
    assert!(outcome.refusals.is_empty(), "{:?}", outcome.refusals);
    assert_mean_close(a, &outcome.plain_mean);
}

/// `count` clients spread over the roster, starting at `offset`.
fn spread(n: u32, count: usize, offset: usize) -> Vec<ClientId> {
    let ids = Simulation::client_ids(n);
    let step = ids.len() / count.max(1);
    (0..count)
        .map(|i| ids[(offset + i * step.max(1)) % ids.len()])
        .collect()
}

// ---------------------------------------------------------------------------------------------
// No faults
// ---------------------------------------------------------------------------------------------

#[test]
fn no_faults_complete_graph_sums_exactly() {
    // docs/secagg.md §3: 20 clients get the complete graph under the default policy.
    let params = recommended(20, 100);
    assert!(params.is_complete());
    let outcome = run(&params, 1, Faults::default());
    let a = assert_exact(&outcome);
    assert_eq!(a.survivors, Simulation::client_ids(20));
    assert!(outcome.refusals.is_empty());
    assert!(dropped(&outcome).is_empty());
    assert_mean_close(a, &outcome.plain_mean);
    // docs/secagg.md §2: each stage ends with every client having answered.
    let done: Vec<(Stage, usize)> = outcome
        .events
        .iter()
        .filter_map(|e| match e {
            ServerEvent::StageDone { stage, answered } => Some((*stage, *answered)),
            _ => None,
        })
        .collect();
    assert_eq!(done, STAGES.iter().map(|s| (*s, 20)).collect::<Vec<_>>());
}

#[test]
fn no_faults_sparse_graphs_sum_exactly() {
    // docs/secagg.md §3: the Bell et al. Harary graph with hand-picked k and t.
    for (n, m, k, t, seed) in [
        (12, 37, 4, 3, 2),
        (20, 64, 8, 5, 3),
        (9, 1, 2, 2, 4),
        (24, 300, 10, 8, 5),
    ] {
        let params = with_graph(n, m, k, t);
        assert!(!params.is_complete());
        let outcome = run(&params, seed, Faults::default());
        let a = assert_exact(&outcome);
        assert_eq!(a.survivors, Simulation::client_ids(n));
        assert!(outcome.refusals.is_empty(), "n={n} k={k}");
        assert_mean_close(a, &outcome.plain_mean);
    }
}

#[test]
fn coarse_quantization_stays_within_the_error_bound() {
    // docs/secagg.md §6: with few levels the bound is large enough to be meaningful.
    let mut params = recommended(10, 200);
    params.quant_levels = 64;
    params.max_weight = 50;
    params.validate().unwrap();
    for seed in 0..3 {
        let outcome = run(&params, seed, Faults::default());
        let a = assert_exact(&outcome);
        let bound = a.mean_error_bound();
        assert!(bound > 1e-3, "bound {bound}");
        let worst = assert_mean_close(a, &outcome.plain_mean);
        assert!(worst > 0.0, "64 levels cannot be exact everywhere");
        // Every quantized entry is at most L, so the sums are at most n·L.
        assert!(a.sums.iter().all(|&s| s <= 10 * 64));
    }
}

#[test]
fn explicit_inputs_are_clipped_weighted_and_averaged() {
    // docs/secagg.md §6: values are clipped to [-c, c] and weighted by w ≤ W.
    let n = 6u32;
    let m = 4u32;
    let mut params = recommended(n, m);
    params.clip = 2.0;
    params.validate().unwrap();
    let inputs: Vec<(Vec<f32>, u32)> = (0..n)
        .map(|i| {
            let x = i as f32;
            (vec![0.5, -7.0, 3.0 - x, 0.25 * x - 0.5], 1 + 3 * i)
        })
        .collect();
    let outcome = Simulation::new(params.clone(), 11)
        .inputs(inputs.clone())
        .run()
        .unwrap();
    let a = assert_exact(&outcome);
    let total: f64 = inputs.iter().map(|(_, w)| f64::from(*w)).sum();
    assert_eq!(a.weight_sum, total as u64);
    let mine: Vec<f64> = (0..m as usize)
        .map(|j| {
            inputs
                .iter()
                .map(|(v, w)| f64::from(*w) * f64::from(v[j]).clamp(-2.0, 2.0))
                .sum::<f64>()
                / total
        })
        .collect();
    for (p, q) in outcome.plain_mean.iter().zip(&mine) {
        assert!((p - q).abs() < 1e-9);
    }
    assert_mean_close(a, &mine);
    let got = a.mean().unwrap();
    // A constant 0.5 averages to 0.5; a constant −7 clips to −2.
    assert!((f64::from(got[0]) - 0.5).abs() <= a.mean_error_bound() + MEAN_EPS);
    assert!((f64::from(got[1]) + 2.0).abs() <= a.mean_error_bound() + MEAN_EPS);
}

// ---------------------------------------------------------------------------------------------
// Scripted dropouts (docs/secagg.md §2, §8)
// ---------------------------------------------------------------------------------------------

#[test]
fn scripted_dropouts_in_each_stage_complete_graph() {
    let params = recommended(20, 50);
    for (si, &stage) in STAGES.iter().enumerate() {
        for count in 1..=3 {
            let script: Vec<(ClientId, Stage)> = spread(20, count, si + count)
                .into_iter()
                .map(|c| (c, stage))
                .collect();
            assert_scripted_drops(&params, 100 + si as u64 * 10 + count as u64, &script);
        }
    }
}

#[test]
fn scripted_dropouts_in_each_stage_sparse_graph() {
    // docs/secagg.md §3: k = 8, t = 5 leaves every client at least 5 live neighbours after
    // 3 dropouts.
    let params = with_graph(20, 50, 8, 5);
    for (si, &stage) in STAGES.iter().enumerate() {
        for count in 1..=3 {
            let script: Vec<(ClientId, Stage)> = spread(20, count, 2 * si + count)
                .into_iter()
                .map(|c| (c, stage))
                .collect();
            assert_scripted_drops(&params, 200 + si as u64 * 10 + count as u64, &script);
        }
    }
}

#[test]
fn scripted_dropouts_combined_across_stages() {
    let ids = Simulation::client_ids(20);
    // One, two, one, two and one dropouts in the five stages: seven in all.
    let script: Vec<(ClientId, Stage)> = vec![
        (ids[0], Stage::AdvertiseKeys),
        (ids[3], Stage::ShareKeys),
        (ids[7], Stage::ShareKeys),
        (ids[10], Stage::MaskedInputCollection),
        (ids[12], Stage::ConsistencyCheck),
        (ids[19], Stage::ConsistencyCheck),
        (ids[15], Stage::Unmasking),
    ];
    for seed in 0..3 {
        assert_scripted_drops(&recommended(20, 50), 300 + seed, &script);
    }
    // One per stage on the sparse graph: each client keeps at least 12 − 5 = 7 = t neighbours.
    let sparse = with_graph(20, 50, 12, 7);
    let script: Vec<(ClientId, Stage)> = STAGES
        .iter()
        .enumerate()
        .map(|(i, &s)| (ids[4 * i + 1], s))
        .collect();
    for seed in 0..3 {
        assert_scripted_drops(&sparse, 310 + seed, &script);
    }
}

#[test]
fn complete_graph_with_dropouts() {
    // docs/secagg.md §3: the Bonawitz et al. setting, every client a neighbour of every other.
    let sparse = with_graph(16, 40, 6, 4);
    let params = sparse.complete_graph(&Policy::default()).unwrap();
    assert_eq!(params.degree, 15);
    assert!(params.is_complete());
    let t = params.threshold;
    assert!(2 * t > params.degree && t <= params.degree);
    let ids = Simulation::client_ids(16);
    for (si, &stage) in STAGES.iter().enumerate() {
        assert_scripted_drops(
            &params,
            400 + si as u64,
            &[(ids[si], stage), (ids[15 - si], stage)],
        );
    }
    let mixed: Vec<(ClientId, Stage)> = STAGES
        .iter()
        .enumerate()
        .map(|(i, &s)| (ids[3 * i], s))
        .collect();
    assert_scripted_drops(&params, 410, &mixed);
}

// ---------------------------------------------------------------------------------------------
// Below the threshold (docs/secagg.md §2, §3)
// ---------------------------------------------------------------------------------------------

/// The round aborted. Clients the server had already dropped were not told. Every client still
/// in the round was told and refused for that reason, except after an abort at the end of
/// Unmasking: by then every client still in the round has revealed its shares and completed, and
/// a completed session stays completed (`docs/secagg.md` §2, terminal states are final).
fn assert_clean_abort(outcome: &Outcome, n: u32) -> AbortReason {
    let reason = match &outcome.result {
        Err(AbortReason::Cancelled) => panic!("the round did not terminate"),
        Err(r) => r.clone(),
        Ok(a) => panic!("the round completed with {} survivors", a.survivors.len()),
    };
    let at_unmasking = matches!(reason, AbortReason::ReconstructionFailed(_))
        || stage_of(&reason) == Some(Stage::Unmasking);
    let told = Refusal::ServerAborted(reason.to_string());
    let dropped = dropped(outcome);
    for c in Simulation::client_ids(n) {
        let refusal = outcome.refusals.get(&c);
        if dropped.contains_key(&c) {
            assert_ne!(refusal, Some(&told), "dropped client {c} was told");
        } else if at_unmasking {
            assert_eq!(refusal, None, "client {c} had completed");
        } else {
            assert_eq!(refusal, Some(&told), "client {c} still in the round");
        }
    }
    reason
}

/// After an abort caused by dropouts alone, the only refusals are the server's abort.
fn assert_only_server_aborted(outcome: &Outcome) {
    for (c, r) in &outcome.refusals {
        assert!(
            matches!(r, Refusal::ServerAborted(_)),
            "client {c} refused: {r:?}"
        );
    }
}

fn stage_of(reason: &AbortReason) -> Option<Stage> {
    match reason {
        AbortReason::TooFewClients { stage, .. } | AbortReason::TooFewNeighbours { stage, .. } => {
            Some(*stage)
        }
        _ => None,
    }
}

#[test]
fn threshold_boundary_in_every_stage_complete_graph() {
    // n = 20, k = 19, t = 10. After d dropouts in one stage a client keeps 19 − d neighbours
    // (a responder's own share is not among those it reveals), so d = 9 still completes and
    // d = 10 must abort, in whichever stage the clients go silent.
    let params = recommended(20, 30);
    assert_eq!((params.degree, params.threshold), (19, 10));
    let ids = Simulation::client_ids(20);
    for (si, &stage) in STAGES.iter().enumerate() {
        let nine: Vec<(ClientId, Stage)> = ids.iter().take(9).map(|&c| (c, stage)).collect();
        assert_scripted_drops(&params, 500 + si as u64, &nine);

        let ten: Vec<(ClientId, Stage)> =
            ids.iter().skip(5).take(10).map(|&c| (c, stage)).collect();
        let outcome = run(&params, 510 + si as u64, drops(&ten));
        let reason = assert_clean_abort(&outcome, 20);
        assert_only_server_aborted(&outcome);
        assert_eq!(stage_of(&reason), Some(stage), "{reason}");
        match reason {
            AbortReason::TooFewClients { have, need, .. }
            | AbortReason::TooFewNeighbours { have, need, .. } => {
                assert!(have < need);
                assert_eq!(need, 10);
            }
            other => panic!("unexpected abort {other:?}"),
        }
    }
}

#[test]
fn more_than_n_minus_t_dropouts_abort_cleanly() {
    let params = recommended(20, 30);
    let ids = Simulation::client_ids(20);
    for (si, &stage) in STAGES.iter().enumerate() {
        for extra in [11usize, 20] {
            let script: Vec<(ClientId, Stage)> =
                ids.iter().take(extra).map(|&c| (c, stage)).collect();
            let outcome = run(&params, 600 + si as u64 * 7 + extra as u64, drops(&script));
            let reason = assert_clean_abort(&outcome, 20);
            assert_only_server_aborted(&outcome);
            assert_eq!(stage_of(&reason), Some(stage), "{reason}");
        }
    }
}

#[test]
fn sparse_graph_too_many_dropouts_abort_cleanly() {
    // k = 4, t = 3: half the roster silent leaves most clients below t.
    let params = with_graph(12, 20, 4, 3);
    let ids = Simulation::client_ids(12);
    for (si, &stage) in STAGES.iter().enumerate() {
        let script: Vec<(ClientId, Stage)> = ids.iter().step_by(2).map(|&c| (c, stage)).collect();
        let outcome = run(&params, 700 + si as u64, drops(&script));
        assert_clean_abort(&outcome, 12);
    }
}

#[test]
fn clients_left_with_too_few_advertised_neighbours_are_pruned() {
    // docs/secagg.md §2: after AdvertiseKeys, clients with fewer than t neighbours in U1 are
    // dropped, repeatedly until none is left. On H(k, n) with t = k/2 + 1 (§3) one pruned client
    // takes the whole ring with it: if v lost k/2 neighbours, its live ring neighbour v + 1 has
    // lost all of those except perhaps v − k/2, plus v itself, so k/2 as well, and so on around
    // the ring. The round then aborts with no client left; without a prune it completes.
    let params = with_graph(16, 20, 4, 3);
    let ids = Simulation::client_ids(16);
    let (mut pruned_rounds, mut intact_rounds) = (0, 0);
    for seed in 0..12u64 {
        // One, two or three silent clients: one can never leave a client below t.
        let script: Vec<(ClientId, Stage)> = [1usize, 9, 2]
            .iter()
            .take(1 + seed as usize % 3)
            .map(|&i| (ids[(i + seed as usize) % 16], Stage::AdvertiseKeys))
            .collect();
        let outcome = run(&params, 800 + seed, drops(&script));
        assert_exact_or_abort(&outcome, 16);
        assert_honest_behaviour(&outcome);
        let pruned: Vec<ClientId> = dropped(&outcome)
            .into_iter()
            .filter(|(_, (_, r))| *r == DropReason::TooFewNeighbours(Stage::AdvertiseKeys))
            .map(|(c, _)| c)
            .collect();
        if pruned.is_empty() {
            intact_rounds += 1;
            assert_scripted_drops(&params, 800 + seed, &script);
            continue;
        }
        pruned_rounds += 1;
        assert_eq!(pruned.len(), 16 - script.len(), "the prune cascades");
        assert!(pruned.iter().all(|c| !outcome.silenced.contains_key(c)));
        assert_eq!(
            outcome.result,
            Err(AbortReason::TooFewClients {
                stage: Stage::AdvertiseKeys,
                have: 0,
                need: 3
            })
        );
        assert_clean_abort(&outcome, 16);
        assert!(outcome.refusals.is_empty(), "nobody is left to tell");
    }
    assert!(pruned_rounds > 0, "no seed exercised pruning");
    assert!(intact_rounds > 0, "no seed left the graph intact");
}

// ---------------------------------------------------------------------------------------------
// Random faults (docs/secagg.md §8)
// ---------------------------------------------------------------------------------------------

#[test]
fn random_dropouts_duplicates_and_reordering_complete_exactly_or_abort() {
    let cases = [
        with_graph(12, 30, 4, 3),
        with_graph(14, 10, 6, 4),
        recommended(10, 25),
    ];
    let (mut completed, mut aborted) = (0, 0);
    for (ci, params) in cases.iter().enumerate() {
        for seed in 0..14u64 {
            let faults = Faults {
                drop_rate: 0.15 + 0.05 * (seed % 3) as f64,
                duplicate_rate: 0.2,
                reorder: seed % 2 == 0,
                ..Faults::default()
            };
            let outcome = run(params, 1000 * ci as u64 + seed, faults);
            assert_exact_or_abort(&outcome, params.num_clients);
            assert_honest_behaviour(&outcome);
            match outcome.result {
                Ok(_) => completed += 1,
                Err(_) => aborted += 1,
            }
        }
    }
    // Both outcomes are exercised.
    assert!(completed >= 10, "completed {completed}");
    assert!(aborted >= 1, "aborted {aborted}");
}

#[test]
fn duplicates_and_reordering_alone_always_complete() {
    for (ci, params) in [recommended(10, 40), with_graph(15, 40, 6, 4)]
        .iter()
        .enumerate()
    {
        for seed in 0..6u64 {
            let faults = Faults {
                duplicate_rate: 0.5,
                reorder: true,
                ..Faults::default()
            };
            let outcome = run(params, 2000 + 10 * ci as u64 + seed, faults);
            let a = assert_exact(&outcome);
            assert_eq!(a.survivors, Simulation::client_ids(params.num_clients));
            assert!(dropped(&outcome).is_empty(), "{:?}", outcome.events);
            assert!(outcome.refusals.is_empty(), "{:?}", outcome.refusals);
            // The server saw the duplicates and ignored them.
            assert!(
                outcome
                    .events
                    .iter()
                    .any(|e| matches!(e, ServerEvent::Ignored { .. }))
            );
            assert_mean_close(a, &outcome.plain_mean);
        }
    }
}

#[test]
fn tampered_rounds_terminate_with_consistent_survivors() {
    // Whatever a flipped bit does, the round ends (no hang) and the survivor set agrees with the
    // server's drop events. Exactness under tampering is checked by the next test.
    let params = with_graph(12, 30, 6, 4);
    for seed in 0..16u64 {
        let faults = Faults {
            tamper_rate: 0.03,
            drop_rate: 0.05,
            duplicate_rate: 0.1,
            reorder: true,
            ..Faults::default()
        };
        let outcome = run(&params, 3000 + seed, faults);
        assert!(!matches!(outcome.result, Err(AbortReason::Cancelled)));
        if let Ok(a) = &outcome.result {
            let dropped = dropped(&outcome);
            for c in &a.survivors {
                assert!(
                    dropped
                        .get(c)
                        .is_none_or(|(s, _)| *s > Stage::MaskedInputCollection)
                );
            }
            for (c, s) in &outcome.silenced {
                if *s <= Stage::MaskedInputCollection {
                    assert!(!a.survivors.contains(c));
                }
            }
        }
    }
}

#[test]
fn tampering_never_yields_a_wrong_sum() {
    // docs/secagg.md §8: a flipped bit anywhere but in a masked input's payload (which only TLS
    // protects) is caught by a signature, AES-GCM, a commitment or the session binding, so the
    // round completes exactly or aborts.
    let cases = [
        Params::recommended(12, 30, 1.0, 10, &Policy::default()).unwrap(),
        with_graph(16, 20, 6, 4),
    ];
    let mut completed_despite_tampering = 0;
    for (ci, params) in cases.iter().enumerate() {
        for seed in 0..24u64 {
            let faults = Faults {
                tamper_rate: 0.03,
                ..Faults::default()
            };
            let outcome = run(params, 5000 + 100 * ci as u64 + seed, faults);
            assert_exact_or_abort(&outcome, params.num_clients);
            let caught = !dropped(&outcome).is_empty() || !outcome.refusals.is_empty();
            if outcome.result.is_ok() && caught {
                completed_despite_tampering += 1;
            }
        }
    }
    assert!(completed_despite_tampering > 0);
}

// ---------------------------------------------------------------------------------------------
// Small moduli (docs/secagg.md §3, §7)
// ---------------------------------------------------------------------------------------------

/// Parameters with a `b`-bit modulus and as many levels and as large a weight as it allows.
fn small_modulus(n: u32, m: u32, bits: u8) -> Params {
    let mut p = recommended(n, m);
    p.mod_bits = bits;
    let room = ((1u64 << bits) - 1) / u64::from(n);
    p.quant_levels = room as u32;
    p.max_weight = (room as u32).min(1000);
    p.validate().unwrap();
    p
}

#[test]
fn small_moduli_sum_exactly_and_pack_tightly() {
    for (n, m, bits, k, t) in [
        (20u32, 300u32, 20u8, 19u32, 10u32),
        (20, 123, 20, 8, 5),
        (10, 77, 13, 9, 5),
        (8, 50, 7, 6, 4),
        (6, 11, 31, 5, 3),
        (7, 9, 5, 6, 4),
    ] {
        let mut params = small_modulus(n, m, bits);
        params.degree = k;
        params.threshold = t;
        params.validate().unwrap();
        let ids = Simulation::client_ids(n);
        for (seed, script) in [
            (0u64, vec![]),
            (1, vec![(ids[1], Stage::MaskedInputCollection)]),
            (
                2,
                vec![(ids[2], Stage::ShareKeys), (ids[3], Stage::Unmasking)],
            ),
        ] {
            let outcome = run(&params, 4000 + seed + u64::from(bits), drops(&script));
            let a = assert_exact(&outcome);
            assert!(
                a.weight_sum < 1u64 << bits && a.sums.iter().all(|&s| u64::from(s) < 1u64 << bits),
                "sums fit the modulus"
            );
            assert_mean_close(a, &outcome.plain_mean);
            // docs/secagg.md §7: the masked input is ⌈(m+1)·b/8⌉ bytes plus a small header.
            let tight = (f64::from(m) + 1.0) * f64::from(bits) / 8.0;
            let size = outcome.stats.masked_input_bytes as f64;
            assert!(
                size <= 1.05 * tight + 64.0,
                "b={bits} m={m}: {size} bytes for {tight} bytes of payload"
            );
            assert!(size >= tight, "b={bits} m={m}: {size} < {tight}");
            assert_eq!(
                outcome.stats.masked_input_bytes,
                params.packed_len() + 38,
                "docs/secagg.md §7: ⌈(m + 1)·b/8⌉ + 38 bytes"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Properties (docs/secagg.md §2, §3, §8)
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Case {
    params: Params,
    script: Vec<(ClientId, Stage)>,
    seed: u64,
}

/// n in 3..=24, m in 1..=300, the recommended graph or a hand-picked even k < n − 1 with
/// k/2 < t ≤ k, and a random set of dropouts, each at a random stage.
fn case() -> impl Strategy<Value = Case> {
    (3u32..=24, 1u32..=300)
        .prop_flat_map(|(n, m)| {
            let graph = if n >= 4 {
                prop_oneof![
                    Just(None::<(u32, u32)>),
                    (1..=(n - 2) / 2)
                        .prop_flat_map(|h| (Just(2 * h), h + 1..=2 * h))
                        .prop_map(Some),
                ]
                .boxed()
            } else {
                Just(None).boxed()
            };
            let script = proptest::collection::btree_map(0..n, 0usize..5, 0..=(n as usize / 2 + 1));
            (Just(n), Just(m), graph, script, any::<u64>())
        })
        .prop_map(|(n, m, graph, script, seed)| {
            let mut params = recommended(n, m);
            if let Some((k, t)) = graph {
                params.degree = k;
                params.threshold = t;
            }
            params.validate().unwrap();
            let ids = Simulation::client_ids(n);
            let script = script
                .into_iter()
                .map(|(i, s)| (ids[i as usize], STAGES[s]))
                .collect();
            Case {
                params,
                script,
                seed,
            }
        })
}

/// No regression files: this crate's tests write nothing outside their target directory.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(48))]

    #[test]
    fn prop_random_dropouts_complete_exactly_or_abort(c in case()) {
        let outcome = run(&c.params, c.seed, drops(&c.script));
        assert_exact_or_abort(&outcome, c.params.num_clients);
        assert_honest_behaviour(&outcome);
        if let Err(reason) = &outcome.result {
            prop_assert!(!c.script.is_empty(), "aborted without dropouts: {reason}");
            assert_clean_abort(&outcome, c.params.num_clients);
        }
    }
}

proptest! {
    #![proptest_config(config(24))]

    #[test]
    fn prop_no_dropouts_always_complete(c in case()) {
        let outcome = run(&c.params, c.seed, Faults::default());
        let a = assert_exact(&outcome);
        prop_assert_eq!(&a.survivors, &Simulation::client_ids(c.params.num_clients));
        prop_assert!(outcome.refusals.is_empty());
        assert_mean_close(a, &outcome.plain_mean);
    }
}
