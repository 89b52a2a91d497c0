//! # aegis-client — the AEGIS federated-learning client SDK
//!
//! What it does: loads the digits dataset, splits it into deterministic non-IID shards, keeps
//! shards encrypted at rest (aegis-crypto v2, decrypted only in memory), holds models as named
//! f32 tensors (safetensors on disk, one flat vector for secure aggregation) and trains a
//! softmax-regression model locally with mini-batch SGD.
//! What it does not: networking or secure aggregation (see `aegis-secagg`, `aegis-transport`).
//!
//! ```text
//! digits.csv.gz ─▶ data::load_digits ─▶ Dataset ─▶ split_non_iid ─▶ shards ─▶ write_encrypted
//!                                                                               │
//! global Model ─▶ trainer::SoftmaxTrainer::train ◀─ read_encrypted ◀────────────┘
//!                        │
//!                        └─▶ TrainOutput { delta = local − global, num_examples, loss, accuracy }
//! ```

#![forbid(unsafe_code)]

pub mod data;
pub mod error;
pub mod model;
pub mod net;
mod rng;
pub mod trainer;

pub use data::Dataset;
pub use error::{Error, Result};
pub use model::{Model, Tensor};
pub use trainer::{SoftmaxTrainer, TrainOutput, TrainSettings, Trainer, evaluate};
