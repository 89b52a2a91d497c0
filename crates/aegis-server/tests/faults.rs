//! Faults over real TLS 1.3 sockets on 127.0.0.1: a client leaving at each SecAgg+ stage, too
//! many clients leaving (the round aborts, the model stays), a client reconnecting mid-round,
//! and a server shut down mid-job that resumes from its encrypted checkpoint (and refuses to
//! resume under another keyset).
//!
//! Updates are fixed ([`FixedTrainer`]), so the global model after each round is known: the
//! initial model plus, per completed round, the weighted mean of that round's survivors'
//! updates, within the sum of the rounds' quantization bounds.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aegis_client::Model;
use aegis_client::net::{DropAt, Exit};
use aegis_secagg::Stage;
use aegis_server::{JobDir, JobSpec, RoundMetrics, metrics};
use common::*;
use tokio::sync::oneshot;

fn weight_sum(ids: &[u64]) -> u64 {
    ids.iter().map(|&i| u64::from(weight(i))).sum()
}

/// `got` = `initial` + Σ `means`, each coordinate within `bound` (the summed quantization
/// bounds of the rounds) plus f32 rounding.
fn assert_moved_by(initial: &Model, got: &Model, means: &[Vec<f64>], bound: f64) {
    assert!(bound < 1e-3, "quantization bound {bound}");
    let got = got.flatten();
    let initial = initial.flatten();
    assert_eq!(got.len(), initial.len());
    for (j, (g, init)) in got.iter().zip(&initial).enumerate() {
        let want = f64::from(*init) + means.iter().map(|mu| mu[j]).sum::<f64>();
        assert!(
            (f64::from(*g) - want).abs() <= bound + 1e-5,
            "coordinate {j}: {g} vs {want} (bound {bound})"
        );
    }
}

/// Sum of the rounds' quantization bounds (completed rounds only).
fn bound(history: &[RoundMetrics]) -> f64 {
    history
        .iter()
        .filter(|r| r.completed)
        .map(|r| r.quantization_error.unwrap())
        .sum()
}

/// The stage deadline of the fault tests: far above what any round may take, so a round that
/// ends quickly was ended by the disconnect, not by a deadline.
const STAGE_DEADLINE: Duration = Duration::from_secs(60);
/// What "much less than the stage deadline" means.
const QUICK: f64 = 30.0;

fn stage_index(stage: Stage) -> usize {
    let name = match stage {
        Stage::AdvertiseKeys => "advertise",
        Stage::ShareKeys => "share",
        Stage::MaskedInputCollection => "masked",
        Stage::ConsistencyCheck => "consistency",
        Stage::Unmasking => "unmask",
    };
    metrics::STAGES.iter().position(|s| *s == name).unwrap()
}

/// 6 clients, client 4 leaves in round 1 when asked for `stage`; 2 rounds, min 3, cohort 6.
async fn one_client_leaves_at(stage: Stage) {
    const DROPPER: u64 = 4;
    let fed = Fed::new(6);
    let model = Model::softmax_regression(4, 3).unwrap();
    let m = model.num_params();
    let spec = JobSpec {
        cohort: 6,
        ..job("leave", 2, 3)
    };
    let mut config = fed.config(spec, model.clone());
    // Round 2 has 5 clients for a cohort of 6: it starts after the grace.
    config.deadlines.gather_grace = Duration::from_secs(1);
    config.deadlines.stage = STAGE_DEADLINE;
    let server = fed.start(config).await;
    let drop = DropAt { round: 1, stage };
    let clients: Vec<_> = (1..=6)
        .map(|i| {
            let mut opts = fed.client(server.addr, i);
            if i == DROPPER {
                opts.drop_at = Some(drop);
            }
            (i, spawn_client(opts, trainer(i, m)))
        })
        .collect();
    let outcome = server.outcome().await.unwrap();
    assert!(outcome.finished);

    // The masked input of a client that leaves at ConsistencyCheck or Unmasking is already in
    // the sum: it stays a survivor.
    let input_in = matches!(stage, Stage::ConsistencyCheck | Stage::Unmasking);
    let honest: Vec<u64> = (1..=6).filter(|&i| i != DROPPER).collect();
    let survivors1: Vec<u64> = if input_in {
        (1..=6).collect()
    } else {
        honest.clone()
    };

    for (i, c) in clients {
        let s = join_client(c).await.unwrap();
        if i == DROPPER {
            assert_eq!(s.exit, Exit::Dropped(drop));
            assert!(s.rounds.is_empty(), "{:?}", s.rounds);
        } else {
            assert_eq!(s.exit, Exit::JobFinished);
            let r: Vec<_> = s.rounds.iter().map(|r| r.round).collect();
            assert_eq!(r, [1, 2], "client {i}");
            assert!(
                s.rounds.iter().all(|r| r.completed && r.included),
                "client {i}: {:?}",
                s.rounds
            );
        }
    }

    let h = &outcome.state.history;
    assert_eq!(h.len(), 2);
    let r1 = &h[0];
    assert!(r1.completed, "{r1:?}");
    assert_eq!(r1.abort_reason, None);
    assert_eq!((r1.round, r1.connected, r1.sampled), (1, 6, 6), "{r1:?}");
    assert_eq!(r1.survived, survivors1.len() as u32, "{r1:?}");
    assert_eq!(r1.weight_sum, weight_sum(&survivors1), "{r1:?}");
    // The server records the disconnect as a drop in the stage it happened in, whether or not
    // the client's input is in: a client that leaves at ConsistencyCheck or Unmasking is
    // dropped from that stage on (`ServerSession::disconnected`: nobody waits for its
    // signature or its shares) while its masked input stays in the sum, so `survived` (the
    // aggregate's survivors) still counts it.
    let mut dropped = [0u32; 5];
    dropped[stage_index(stage)] = 1;
    assert_eq!(r1.dropped, dropped, "{r1:?}");
    // The stage deadline is 60 s (plus 60 s of training for masked inputs): the disconnect,
    // not a deadline, ended the wait.
    assert!(r1.seconds < QUICK, "round 1 took {} s: {r1:?}", r1.seconds);

    let r2 = &h[1];
    assert!(r2.completed, "{r2:?}");
    assert_eq!(
        (r2.round, r2.connected, r2.sampled, r2.survived),
        (2, 5, 5, 5),
        "{r2:?}"
    );
    assert_eq!(r2.dropped_total(), 0, "{r2:?}");
    assert_eq!(r2.weight_sum, weight_sum(&honest));
    assert!(r2.seconds < QUICK, "round 2 took {} s: {r2:?}", r2.seconds);

    assert_moved_by(
        &model,
        &checkpoint(&fed, &outcome),
        &[fedavg(&survivors1, m), fedavg(&honest, m)],
        bound(h),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_at_advertise_keys_is_left_out() {
    one_client_leaves_at(Stage::AdvertiseKeys).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_at_share_keys_is_left_out() {
    one_client_leaves_at(Stage::ShareKeys).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_at_masked_input_collection_is_left_out() {
    one_client_leaves_at(Stage::MaskedInputCollection).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_at_consistency_check_stays_in_the_aggregate() {
    one_client_leaves_at(Stage::ConsistencyCheck).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_at_unmasking_stays_in_the_aggregate() {
    one_client_leaves_at(Stage::Unmasking).await;
}

/// 4 clients, 3 leave at ShareKeys in round 1: the round aborts and the model stays; they come
/// back (same ids, new connections) and round 2 completes with all 4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_dropouts_abort_the_round_and_returning_clients_complete_the_next() {
    let fed = Fed::new(4);
    let model = Model::softmax_regression(4, 3).unwrap();
    let m = model.num_params();
    let spec = JobSpec {
        cohort: 4,
        max_consecutive_aborts: 3,
        ..job("aborts", 2, 4)
    };
    let mut config = fed.config(spec, model.clone());
    config.deadlines.stage = STAGE_DEADLINE;
    // What state.json names as the global model once round 1 has been recorded.
    let dir = JobDir::new(&fed.state_dir(), "aborts");
    let after_round_1 = Arc::new(Mutex::new(None::<String>));
    {
        let dir = dir.clone();
        let seen = Arc::clone(&after_round_1);
        config.on_round = Some(Arc::new(move |r: &RoundMetrics| {
            if r.round == 1 {
                let state = dir.load_state().unwrap().unwrap();
                assert_eq!(state.rounds_done, 1);
                *seen.lock().unwrap() = Some(state.checkpoint);
            }
        }));
    }
    let server = fed.start(config).await;
    let drop = DropAt {
        round: 1,
        stage: Stage::ShareKeys,
    };
    let stayer = spawn_client(fed.client(server.addr, 1), trainer(1, m));
    let leavers: Vec<_> = (2..=4)
        .map(|i| {
            let mut opts = fed.client(server.addr, i);
            opts.drop_at = Some(drop);
            spawn_client(opts, trainer(i, m))
        })
        .collect();
    for c in leavers {
        let s = join_client(c).await.unwrap();
        assert_eq!(s.exit, Exit::Dropped(drop));
        assert!(s.rounds.is_empty());
    }
    // They come back: new connections, same ids, no fault.
    let returned: Vec<_> = (2..=4)
        .map(|i| spawn_client(fed.client(server.addr, i), trainer(i, m)))
        .collect();
    let outcome = server.outcome().await.unwrap();
    assert!(outcome.finished);

    let s = join_client(stayer).await.unwrap();
    assert_eq!(s.exit, Exit::JobFinished);
    assert_eq!(s.rounds.len(), 2, "{:?}", s.rounds);
    assert!(!s.rounds[0].completed && !s.rounds[0].included);
    assert!(!s.rounds[0].reason.is_empty());
    assert!(s.rounds[1].completed && s.rounds[1].included);
    for c in returned {
        let s = join_client(c).await.unwrap();
        assert_eq!(s.exit, Exit::JobFinished);
        assert_eq!(s.rounds.len(), 1, "{:?}", s.rounds);
        assert_eq!(s.rounds[0].round, 2);
        assert!(s.rounds[0].completed && s.rounds[0].included);
    }

    let h = &outcome.state.history;
    assert_eq!(h.len(), 2);
    let r1 = &h[0];
    assert!(!r1.completed, "{r1:?}");
    let reason = r1.abort_reason.as_deref().expect("an abort reason");
    assert!(!reason.is_empty());
    assert_eq!((r1.sampled, r1.survived), (4, 0), "{r1:?}");
    assert_eq!(r1.dropped, [0, 3, 0, 0, 0], "{r1:?}");
    assert_eq!(r1.quantization_error, None);
    assert!(r1.seconds < QUICK, "round 1 took {} s: {r1:?}", r1.seconds);
    let r2 = &h[1];
    assert!(r2.completed, "{r2:?}");
    assert_eq!((r2.sampled, r2.survived, r2.dropped_total()), (4, 4, 0));

    // The aborted round left the global model as it was: state.json still named the initial
    // checkpoint after round 1, no checkpoint of round 1 exists, and the initial one decrypts
    // to the initial model.
    assert_eq!(
        after_round_1.lock().unwrap().as_deref(),
        Some(JobDir::checkpoint_name(0).as_str())
    );
    assert!(!dir.path().join(JobDir::checkpoint_name(1)).exists());
    let initial = dir
        .read_checkpoint(&JobDir::checkpoint_name(0), &fed.keys)
        .unwrap();
    assert_eq!(initial.flatten(), model.flatten());
    assert_eq!(outcome.state.checkpoint, JobDir::checkpoint_name(2));
    assert_moved_by(
        &model,
        &checkpoint(&fed, &outcome),
        &[fedavg(&[1, 2, 3, 4], m)],
        bound(h),
    );
}

/// A client leaves at MaskedInputCollection in round 1 and reconnects at once: round 1
/// completes without it, round 2 includes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reconnecting_mid_round_takes_part_in_the_next_round() {
    const BOUNCER: u64 = 3;
    let fed = Fed::new(5);
    let model = Model::softmax_regression(4, 3).unwrap();
    let m = model.num_params();
    let spec = JobSpec {
        cohort: 5,
        ..job("reconnect", 2, 4)
    };
    let mut config = fed.config(spec, model.clone());
    config.deadlines.stage = STAGE_DEADLINE;
    // Round 2 starts as soon as the full cohort (the reconnected client included) is there;
    // the grace only bounds the wait should the reconnect be slow.
    config.deadlines.gather_grace = Duration::from_secs(10);
    let server = fed.start(config).await;
    let drop = DropAt {
        round: 1,
        stage: Stage::MaskedInputCollection,
    };
    let mut clients = Vec::new();
    let mut first_run = None;
    for i in 1..=5 {
        let mut opts = fed.client(server.addr, i);
        if i == BOUNCER {
            opts.drop_at = Some(drop);
            first_run = Some(spawn_client(opts, trainer(i, m)));
        } else {
            clients.push(spawn_client(opts, trainer(i, m)));
        }
    }
    let s = join_client(first_run.unwrap()).await.unwrap();
    assert_eq!(s.exit, Exit::Dropped(drop));
    let second_run = spawn_client(fed.client(server.addr, BOUNCER), trainer(BOUNCER, m));
    let outcome = server.outcome().await.unwrap();
    assert!(outcome.finished);

    let s = join_client(second_run).await.unwrap();
    assert_eq!(s.exit, Exit::JobFinished);
    assert_eq!(s.rounds.len(), 1, "{:?}", s.rounds);
    assert_eq!(s.rounds[0].round, 2);
    assert!(
        s.rounds[0].completed && s.rounds[0].included,
        "{:?}",
        s.rounds
    );
    for c in clients {
        let s = join_client(c).await.unwrap();
        assert_eq!(s.exit, Exit::JobFinished);
        assert_eq!(s.rounds.len(), 2);
        assert!(s.rounds.iter().all(|r| r.completed && r.included));
    }

    let h = &outcome.state.history;
    assert_eq!(h.len(), 2);
    let (r1, r2) = (&h[0], &h[1]);
    assert!(r1.completed && r2.completed, "{h:?}");
    assert_eq!((r1.sampled, r1.survived), (5, 4), "{r1:?}");
    assert_eq!(r1.dropped, [0, 0, 1, 0, 0], "{r1:?}");
    assert!(r1.seconds < QUICK, "round 1 took {} s: {r1:?}", r1.seconds);
    assert_eq!(
        (r2.sampled, r2.survived, r2.dropped_total()),
        (5, 5, 0),
        "{r2:?}"
    );
    assert_eq!(r2.weight_sum, weight_sum(&[1, 2, 3, 4, 5]));
    assert_moved_by(
        &model,
        &checkpoint(&fed, &outcome),
        &[fedavg(&[1, 2, 4, 5], m), fedavg(&[1, 2, 3, 4, 5], m)],
        bound(h),
    );
}

/// Binds 127.0.0.1:0 and runs the server until `shutdown` fires.
async fn start_until(config: common::JobConfig, shutdown: oneshot::Receiver<()>) -> RunningServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(config.run(listener, async move {
        let _ = shutdown.await;
    }));
    RunningServer {
        addr,
        task,
        stop: None,
    }
}

/// A job of 3 rounds; the server shuts down after round 1 (from the round hook), refuses to
/// resume under another keyset, then resumes with the right one on a new port with new
/// clients and runs rounds 2 and 3 only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_shut_down_mid_job_resumes_from_its_checkpoint() {
    let fed = Fed::new(4);
    let model = Model::softmax_regression(4, 3).unwrap();
    let m = model.num_params();
    let all = [1, 2, 3, 4];

    // First run: shut down once round 1 is recorded.
    let mut config = fed.config(job("resume", 3, 4), model.clone());
    let (stop, stopped) = oneshot::channel::<()>();
    let stop = Mutex::new(Some(stop));
    config.on_round = Some(Arc::new(move |r: &RoundMetrics| {
        if r.round == 1
            && let Some(tx) = stop.lock().unwrap().take()
        {
            let _ = tx.send(());
        }
    }));
    let server = start_until(config, stopped).await;
    let clients: Vec<_> = all
        .iter()
        .map(|&i| spawn_client(fed.client(server.addr, i), trainer(i, m)))
        .collect();
    let first = server.outcome().await.unwrap();
    assert!(!first.finished);
    assert_eq!(first.state.rounds_done, 1);
    assert_eq!(first.state.history.len(), 1);
    assert!(first.state.history[0].completed);
    assert_eq!(first.state.checkpoint, JobDir::checkpoint_name(1));
    for c in clients {
        let s = join_client(c).await.unwrap();
        assert_eq!(
            s.exit,
            Exit::ServerStopped("the server is stopping; the job resumes later".into())
        );
        // Round 1 completed for every client; a round 2 cut short by the shutdown (if it had
        // started) did not complete.
        assert!(s.rounds[0].round == 1 && s.rounds[0].completed && s.rounds[0].included);
        assert!(
            s.rounds.iter().skip(1).all(|r| !r.completed),
            "{:?}",
            s.rounds
        );
    }
    let dir = JobDir::new(&fed.state_dir(), "resume");
    let saved = dir.load_state().unwrap().unwrap();
    assert_eq!(saved.rounds_done, 1);
    assert!(!dir.path().join(JobDir::checkpoint_name(2)).exists());

    // Another keyset cannot decrypt the checkpoint: the server refuses to resume (an error,
    // not a panic, and state.json is left as it was).
    let mut wrong = fed.config(job("resume", 3, 4), model.clone());
    wrong.keys = Arc::new(aegis_crypto::Keyset::generate().unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let res = tokio::time::timeout(WAIT, wrong.run(listener, std::future::pending()))
        .await
        .expect("the server gave up in time");
    match res {
        Err(aegis_server::Error::Crypto(_)) => {}
        other => panic!("resuming under another keyset: {other:?}"),
    }
    let after = dir.load_state().unwrap().unwrap();
    assert_eq!(after.rounds_done, 1);
    assert_eq!(after.checkpoint, saved.checkpoint);

    // Resume with the right keyset, new port, new clients.
    let server = fed
        .start(fed.config(job("resume", 3, 4), model.clone()))
        .await;
    let clients: Vec<_> = all
        .iter()
        .map(|&i| spawn_client(fed.client(server.addr, i), trainer(i, m)))
        .collect();
    let outcome = server.outcome().await.unwrap();
    assert!(outcome.finished);
    for c in clients {
        let s = join_client(c).await.unwrap();
        assert_eq!(s.exit, Exit::JobFinished);
        let r: Vec<_> = s.rounds.iter().map(|r| r.round).collect();
        assert_eq!(r, [2, 3], "the resumed server ran rounds 2 and 3 only");
        assert!(s.rounds.iter().all(|r| r.completed && r.included));
    }
    let h = &outcome.state.history;
    let rounds: Vec<u32> = h.iter().map(|r| r.round).collect();
    assert_eq!(rounds, [1, 2, 3]);
    assert_eq!(h[0], first.state.history[0], "round 1's record is kept");
    assert!(h.iter().all(|r| r.completed && r.survived == 4), "{h:?}");
    assert_eq!(outcome.state.rounds_done, 3);
    assert_eq!(outcome.state.checkpoint, JobDir::checkpoint_name(3));
    let mean = fedavg(&all, m);
    assert_moved_by(
        &model,
        &checkpoint(&fed, &outcome),
        &[mean.clone(), mean.clone(), mean],
        bound(h),
    );
}

/// Its first training takes `slow` and then fails (`fail`) or succeeds; later ones train like
/// [`FixedTrainer`].
struct SlowFailOnce {
    calls: u32,
    slow: Duration,
    fail: bool,
    fixed: FixedTrainer,
}

impl aegis_client::Trainer for SlowFailOnce {
    fn train(&mut self, global: &Model) -> aegis_client::Result<aegis_client::TrainOutput> {
        self.calls += 1;
        if self.calls == 1 {
            std::thread::sleep(self.slow);
            if self.fail {
                return Err(aegis_client::Error::TrainCommand(
                    "the trainer crashed".into(),
                ));
            }
        }
        self.fixed.train(global)
    }
}

/// A client whose training fails only after round 1's masked-input deadline: the server drops
/// it from round 1 by the deadline; its `Decline` of round 1 then arrives while round 2 runs,
/// and must not drop it from round 2 (it answers round 2 in time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_decline_of_one_round_does_not_drop_the_client_from_the_next() {
    late_in_round_1(true).await;
}

/// The same, but the slow training succeeds: the client's masked input of round 1 (and its
/// report) arrive while round 2 runs; they are set aside (their session is round 1's), not held
/// against the client in round 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_masked_input_of_one_round_does_not_drop_the_client_from_the_next() {
    late_in_round_1(false).await;
}

async fn late_in_round_1(fail: bool) {
    const SLOW: u64 = 4;
    let fed = Fed::new(4);
    let model = Model::softmax_regression(4, 3).unwrap();
    let m = model.num_params();
    let mut config = fed.config(
        job(if fail { "late-decline" } else { "late-input" }, 2, 4),
        model.clone(),
    );
    // Round 1's masked inputs are due ~3 s after it starts; the slow client's training fails
    // at ~4 s, during round 2's advertisement stage (due at ~5 s).
    config.deadlines.stage = Duration::from_secs(2);
    config.deadlines.training = Duration::from_secs(1);
    let server = fed.start(config).await;
    let clients: Vec<_> = (1..=4)
        .map(|i| {
            let opts = fed.client(server.addr, i);
            if i == SLOW {
                spawn_client(
                    opts,
                    SlowFailOnce {
                        calls: 0,
                        slow: Duration::from_secs(4),
                        fail,
                        fixed: trainer(i, m),
                    },
                )
            } else {
                spawn_client(opts, trainer(i, m))
            }
        })
        .collect();
    let outcome = server.outcome().await.unwrap();
    for c in clients {
        join_client(c).await.unwrap();
    }
    let h = &outcome.state.history;
    assert_eq!(h.len(), 2);
    let (r1, r2) = (&h[0], &h[1]);
    assert!(r1.completed && r2.completed, "{h:?}");
    assert_eq!((r1.survived, r1.dropped), (3, [0, 0, 1, 0, 0]), "{r1:?}");
    assert_eq!(
        (r2.survived, r2.dropped),
        (4, [0; 5]),
        "round 2 dropped the client for its late message of round 1: {r2:?}"
    );
    assert_moved_by(
        &model,
        &checkpoint(&fed, &outcome),
        &[fedavg(&[1, 2, 3], m), fedavg(&[1, 2, 3, 4], m)],
        bound(h),
    );
}
