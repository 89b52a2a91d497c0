//! Clipping, stochastic quantization and the weighted encoding (`docs/secagg.md` §6).
//!
//! A client with update `x` (length `m`) and weight `w ≤ W` submits the vector
//! `[w, q₁, …, q_m]` where `q_i = SR(w/W · (clip(x_i) + c) / 2c · L)` with stochastic rounding
//! `SR` drawn from the caller's RNG (unbiased: `E[q_i]` is the unrounded value). The server learns
//! only `Σw` and `Σq_i`, from which `Σ w·x_i = W·2c/L·Σq_i − c·Σw` and the weighted mean follow.

use rand_core::CryptoRng;

use crate::error::Error;
use crate::params::Params;

/// A client's input, quantized and ready to be masked: `[w, q₁, …, q_m]`.
#[derive(Clone, PartialEq, Eq)]
pub struct QuantizedInput(pub(crate) Vec<u32>);

impl std::fmt::Debug for QuantizedInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QuantizedInput(len {})", self.0.len())
    }
}

impl QuantizedInput {
    /// The entries (weight first). The client's own plaintext; never sent unmasked.
    pub fn values(&self) -> &[u32] {
        &self.0
    }

    /// Clips, scales by the weight and quantizes `update` under `params`, with stochastic
    /// rounding from `rng`. Refuses a wrong length, a weight above `max_weight` and non-finite
    /// values.
    pub fn quantize<R: CryptoRng + ?Sized>(
        params: &Params,
        update: &[f32],
        weight: u32,
        rng: &mut R,
    ) -> Result<QuantizedInput, Error> {
        if update.len() != params.vector_len as usize {
            return Err(Error::Input(format!(
                "the update has {} values, the round expects {}",
                update.len(),
                params.vector_len
            )));
        }
        if weight > params.max_weight {
            return Err(Error::Input(format!(
                "weight {weight} exceeds the maximum {}",
                params.max_weight
            )));
        }
        if update.iter().any(|v| !v.is_finite()) {
            return Err(Error::Input(
                "the update holds NaN or infinite values".into(),
            ));
        }
        let c = f64::from(params.clip);
        let l = f64::from(params.quant_levels);
        let scale = f64::from(weight) / f64::from(params.max_weight.max(1)) * l / (2.0 * c);
        let mut out = Vec::with_capacity(params.masked_len());
        out.push(weight);
        out.extend(update.iter().map(|&v| {
            let v = (f64::from(v).clamp(-c, c) + c) * scale;
            let floor = v.floor();
            let frac = v - floor;
            let up = (f64::from(rng.next_u32()) + 0.5) / 4_294_967_296.0 < frac;
            // floor ≤ w/W·L ≤ L, so the cast is exact.
            floor as u32 + u32::from(up)
        }));
        Ok(QuantizedInput(out))
    }

    /// An input given directly as quantized entries (weight first), checked against `params`.
    pub fn from_entries(params: &Params, entries: Vec<u32>) -> Result<QuantizedInput, Error> {
        if entries.len() != params.masked_len() {
            return Err(Error::Input("wrong number of entries".into()));
        }
        let mut it = entries.iter();
        if it.next().is_some_and(|&w| w > params.max_weight) {
            return Err(Error::Input("weight above the maximum".into()));
        }
        if it.any(|&q| q > params.quant_levels) {
            return Err(Error::Input("entry above the quantization levels".into()));
        }
        Ok(QuantizedInput(entries))
    }
}

/// The result of a round: the sums over the survivors, and their dequantized mean.
#[derive(Clone, Debug, PartialEq)]
pub struct Aggregate {
    /// Sum of the survivors' weights.
    pub weight_sum: u64,
    /// Sum of the survivors' quantized entries (without the weight), exact modulo 2^b (and exact
    /// outright, as the parameters guarantee no overflow).
    pub sums: Vec<u32>,
    /// The clients whose inputs are in the sum.
    pub survivors: Vec<crate::ClientId>,
    params: Params,
}

impl Aggregate {
    pub(crate) fn new(
        params: Params,
        weight_sum: u64,
        sums: Vec<u32>,
        survivors: Vec<crate::ClientId>,
    ) -> Self {
        Aggregate {
            weight_sum,
            sums,
            survivors,
            params,
        }
    }

    /// The parameters of the round.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// `Σ w·x_i` over the survivors (of the clipped values), dequantized.
    pub fn weighted_sum(&self) -> Vec<f64> {
        let c = f64::from(self.params.clip);
        let k = f64::from(self.params.max_weight) * 2.0 * c / f64::from(self.params.quant_levels);
        let offset = c * self.weight_sum as f64;
        self.sums
            .iter()
            .map(|&s| f64::from(s) * k - offset)
            .collect()
    }

    /// The weighted mean `Σ w·x_i / Σ w`; `None` when the weights sum to zero.
    pub fn mean(&self) -> Option<Vec<f32>> {
        if self.weight_sum == 0 {
            return None;
        }
        let w = self.weight_sum as f64;
        Some(
            self.weighted_sum()
                .into_iter()
                .map(|v| (v / w) as f32)
                .collect(),
        )
    }

    /// A bound on `|mean_i − true mean_i|` from quantization alone: each survivor's entry is off
    /// by less than one level, i.e. `W·2c/L` in the weighted sum.
    pub fn mean_error_bound(&self) -> f64 {
        if self.weight_sum == 0 {
            return f64::INFINITY;
        }
        let step = f64::from(self.params.max_weight) * 2.0 * f64::from(self.params.clip)
            / f64::from(self.params.quant_levels);
        step * self.survivors.len() as f64 / self.weight_sum as f64
    }
}
