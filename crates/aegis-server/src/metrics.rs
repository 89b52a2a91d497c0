//! Per-round metrics: who took part, who dropped where, how long each stage took, bytes moved
//! and the clients' reported local metrics.

use serde::{Deserialize, Serialize};

/// Stage names in order, for tables.
pub const STAGES: [&str; 5] = ["advertise", "share", "masked", "consistency", "unmask"];

/// What one round did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RoundMetrics {
    /// 1-based round number.
    pub round: u32,
    /// Whether the global model moved.
    pub completed: bool,
    /// Why the round aborted, if it did.
    pub abort_reason: Option<String>,
    /// Clients connected when the round started.
    pub connected: u32,
    /// Clients sampled into the round.
    pub sampled: u32,
    /// Clients whose update is in the aggregate.
    pub survived: u32,
    /// Clients dropped in each stage ([`STAGES`] order).
    pub dropped: [u32; 5],
    /// Seconds each stage took ([`STAGES`] order; 0 for stages not reached).
    pub stage_seconds: [f64; 5],
    /// Seconds from the round's start to its end (model download included).
    pub seconds: f64,
    /// Application bytes the server sent (model + secure aggregation).
    pub bytes_sent: u64,
    /// Application bytes the server received.
    pub bytes_received: u64,
    /// SecAgg+ neighbourhood degree and threshold of the round.
    pub degree: u32,
    /// See `degree`.
    pub threshold: u32,
    /// Model parameters aggregated.
    pub params: u64,
    /// Total examples of the survivors (capped weights, from the aggregate).
    pub weight_sum: u64,
    /// Mean of the local losses reported by the survivors (in the clear, unweighted: example
    /// counts are only known masked).
    pub loss: Option<f64>,
    /// Mean of the local accuracies reported by the survivors.
    pub accuracy: Option<f64>,
    /// Bound on the absolute error of each aggregated coordinate from quantization.
    pub quantization_error: Option<f64>,
}

impl RoundMetrics {
    /// Clients dropped in all stages.
    pub fn dropped_total(&self) -> u32 {
        self.dropped.iter().sum()
    }
}
