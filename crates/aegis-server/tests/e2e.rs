//! End to end over real TLS 1.3 sockets on 127.0.0.1: a server and in-process clients run
//! FedAvg rounds with SecAgg+; the global model moves by the weighted mean of the updates
//! (within the quantization bound), digits accuracy improves, and checkpoints are encrypted.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use std::path::Path;

use aegis_client::data::{load_digits, split_non_iid};
use aegis_client::net::Exit;
use aegis_client::{Model, SoftmaxTrainer, evaluate};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_model_moves_by_the_weighted_mean_of_the_updates() {
    let fed = Fed::new(5);
    let model = Model::softmax_regression(4, 3).unwrap();
    let m = model.num_params();
    let server = fed
        .start(fed.config(job("exact", 2, 5), model.clone()))
        .await;
    let clients: Vec<_> = (1..=5)
        .map(|i| {
            spawn_client(
                fed.client(server.addr, i),
                FixedTrainer {
                    delta: delta(i, m),
                    weight: 10 * i as u32,
                },
            )
        })
        .collect();
    let outcome = server.outcome().await.unwrap();
    assert!(outcome.finished);
    for c in clients {
        let s = join_client(c).await.unwrap();
        assert_eq!(s.exit, Exit::JobFinished);
        assert_eq!(s.job_id, "exact");
        assert_eq!(s.rounds.len(), 2);
        assert!(s.rounds.iter().all(|r| r.completed && r.included));
    }
    let h = &outcome.state.history;
    assert_eq!(h.len(), 2);
    for r in h {
        assert!(r.completed, "{r:?}");
        assert_eq!((r.sampled, r.survived, r.dropped_total()), (5, 5, 0));
        assert_eq!(r.weight_sum, 150);
        assert_eq!(r.params, m as u64);
        assert!(r.bytes_sent > 0 && r.bytes_received > 0);
        // Loss is reported as weight/100 (0.1 … 0.5); the server averages the reports plainly
        // (example counts stay masked).
        let want = 0.3;
        assert!((r.loss.unwrap() - want).abs() < 1e-6, "{r:?}");
    }
    // Plain weighted mean, computed here in f64.
    let mut mean = vec![0.0f64; m];
    for i in 1..=5u64 {
        for (acc, d) in mean.iter_mut().zip(delta(i, m)) {
            *acc += 10.0 * i as f64 * f64::from(d) / 150.0;
        }
    }
    let bound = h[0].quantization_error.unwrap() + h[1].quantization_error.unwrap();
    assert!(bound < 1e-3, "quantization bound {bound}");
    let got = checkpoint(&fed, &outcome).flatten();
    for ((g, init), mu) in got.iter().zip(model.flatten()).zip(&mean) {
        let want = f64::from(init) + 2.0 * mu;
        assert!(
            (f64::from(*g) - want).abs() <= bound + 1e-5,
            "{g} vs {want} (bound {bound})"
        );
    }
    // Checkpoints are encrypted at rest: no safetensors header in the clear.
    let blob = std::fs::read(&outcome.checkpoint).unwrap();
    assert!(aegis_crypto::v2::has_magic(&blob));
    assert!(!blob.windows(6).any(|w| w == b"weight"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digits_accuracy_improves_over_federated_rounds() {
    let (train, test) = load_digits(Path::new(DIGITS))
        .unwrap()
        .train_test_split(1, 0.2)
        .unwrap();
    let shards = split_non_iid(&train, 8, 42).unwrap();
    let fed = Fed::new(8);
    let model = Model::softmax_regression(64, 10).unwrap();
    let (_, acc0) = evaluate(&model, &test).unwrap();
    let server = fed.start(fed.config(job("digits", 4, 8), model)).await;
    let clients: Vec<_> = shards
        .into_iter()
        .enumerate()
        .map(|(i, data)| {
            let id = i as u64 + 1;
            spawn_client(
                fed.client(server.addr, id),
                SoftmaxTrainer {
                    data,
                    epochs: 1,
                    batch_size: 16,
                    learning_rate: 0.1,
                    seed: id,
                },
            )
        })
        .collect();
    let outcome = server.outcome().await.unwrap();
    for c in clients {
        join_client(c).await.unwrap();
    }
    let dir = aegis_server::JobDir::new(&fed.state_dir(), "digits");
    let accs: Vec<f32> = (1..=4)
        .map(|r| {
            let m = dir
                .read_checkpoint(&aegis_server::JobDir::checkpoint_name(r), &fed.keys)
                .unwrap();
            evaluate(&m, &test).unwrap().1
        })
        .collect();
    eprintln!("test accuracy: initial {acc0}, by round {accs:?}");
    assert!(outcome.state.history.iter().all(|r| r.completed));
    assert!(accs[3] > accs[0] && accs[0] > acc0, "{accs:?}");
    assert!(accs[3] >= 0.7, "{accs:?}");
    let reported = outcome.state.history[3].accuracy.unwrap();
    assert!(reported > 0.5, "clients' local accuracy {reported}");
}
