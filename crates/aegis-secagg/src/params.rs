//! Round parameters: the graph degree `k`, the threshold `t`, the modulus `2^b` and the
//! quantization, and how they are chosen (`docs/secagg.md` §3).

use crate::error::Error;

/// Largest vector length a session accepts (2^28 elements, 1 GiB of `u32`).
pub const MAX_VECTOR_LEN: u32 = 1 << 28;
/// Largest roster a session accepts.
pub const MAX_CLIENTS: u32 = 1 << 20;

/// Everything both sides must agree on for one round. Sent by the server in `Setup` and checked
/// by every client ([`Params::validate`] plus the client's own policy).
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    /// Number of clients in the roster, `n`.
    pub num_clients: u32,
    /// Neighbours per client, `k`: even, or `n - 1` for the complete graph.
    pub degree: u32,
    /// Shares needed to reconstruct a secret, `t`, with `k/2 < t ≤ k`.
    pub threshold: u32,
    /// Masked values live in `Z/2^b`; `1 ≤ b ≤ 32`.
    pub mod_bits: u8,
    /// Model values are quantized to integers `0..=quant_levels`.
    pub quant_levels: u32,
    /// Values are clipped to `[-clip, clip]` before quantization.
    pub clip: f32,
    /// Largest weight (for example the number of examples) a client may submit.
    pub max_weight: u32,
    /// Length `m` of the model update; the masked vector has `m + 1` entries (the weight first).
    pub vector_len: u32,
}

/// What the degree and threshold are chosen for (`docs/secagg.md` §3).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Policy {
    /// Fraction of clients expected to drop out over a round, `δ`.
    pub dropout_rate: f64,
    /// Fraction of clients that may collude with the server, `γ`.
    pub corrupt_fraction: f64,
    /// Security parameter σ: the chance that some client's two secrets both leak is ≤ 2^-σ.
    pub security_bits: u32,
    /// Correctness parameter η: the chance that dropouts at rate δ abort the round is ≤ 2^-η.
    pub correctness_bits: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            dropout_rate: 0.1,
            corrupt_fraction: 0.0,
            security_bits: 40,
            correctness_bits: 20,
        }
    }
}

/// `P[Binomial(k, p) ≥ x]`, summed in log space so large `k` does not underflow.
fn binomial_tail_ge(k: u32, p: f64, x: i64) -> f64 {
    if x <= 0 {
        return 1.0;
    }
    if x > i64::from(k) {
        return 0.0;
    }
    if p <= 0.0 {
        return 0.0;
    }
    if p >= 1.0 {
        return 1.0;
    }
    let (lp, lq) = (p.ln(), (1.0 - p).ln());
    let mut log_choose = 0.0f64; // ln C(k, 0)
    let mut total = 0.0f64;
    for i in 0..=k {
        if i64::from(i) >= x {
            total += (log_choose + f64::from(i) * lp + f64::from(k - i) * lq).exp();
        }
        // ln C(k, i+1) = ln C(k, i) + ln((k - i) / (i + 1))
        log_choose += (f64::from(k - i) / f64::from(i + 1)).ln();
    }
    total.min(1.0)
}

/// The smallest even degree `k` and a threshold `t` for `n` clients under `policy`:
/// `n·P[Bin(k, γ) ≥ 2t − k] ≤ 2^-σ` (colluders and the server never gather both shares of an
/// honest client) and `n·P[Bin(k, 1 − δ) < t] ≤ 2^-η` (dropouts rarely leave a client with fewer
/// than `t` live neighbours). Returns the complete graph (`k = n − 1`) when no smaller `k` works.
pub fn degree_and_threshold(n: u32, policy: &Policy) -> (u32, u32) {
    let nf = f64::from(n.max(1));
    let sec = 2f64.powi(-(policy.security_bits.min(128) as i32)) / nf;
    let cor = 2f64.powi(-(policy.correctness_bits.min(128) as i32)) / nf;
    let complete = n.saturating_sub(1).max(1);
    let mut k = 2;
    while k < complete {
        // t must exceed k/2 (a malicious server alone never gets both shares).
        for t in (k / 2 + 1)..=k {
            let leak =
                binomial_tail_ge(k, policy.corrupt_fraction, 2 * i64::from(t) - i64::from(k));
            let fail = 1.0 - binomial_tail_ge(k, 1.0 - policy.dropout_rate, i64::from(t));
            if leak <= sec && fail <= cor {
                return (k, t);
            }
            if leak <= sec {
                // A larger t only makes failures likelier.
                break;
            }
        }
        k += 2;
    }
    (complete, complete_threshold(complete, policy))
}

/// The threshold for the complete graph of degree `k`: the smallest `t > k/2` that is secure
/// under `policy`, or the largest one dropouts at rate δ still leave reachable if none is.
fn complete_threshold(k: u32, policy: &Policy) -> u32 {
    let nf = f64::from(k + 1);
    let sec = 2f64.powi(-(policy.security_bits.min(128) as i32)) / nf;
    let cor = 2f64.powi(-(policy.correctness_bits.min(128) as i32)) / nf;
    let lowest = k / 2 + 1;
    for t in lowest..=k {
        let leak = binomial_tail_ge(k, policy.corrupt_fraction, 2 * i64::from(t) - i64::from(k));
        if leak <= sec {
            return t;
        }
        let fail = 1.0 - binomial_tail_ge(k, 1.0 - policy.dropout_rate, i64::from(t));
        if fail > cor {
            return t.max(lowest);
        }
    }
    k
}

impl Params {
    /// Parameters for `n` clients and vectors of length `m`, with the degree and threshold of
    /// [`degree_and_threshold`], a 32-bit modulus, and as many quantization levels as the modulus
    /// allows for `n` summands. `max_weight` bounds the weight a client may submit.
    pub fn recommended(
        n: u32,
        m: u32,
        clip: f32,
        max_weight: u32,
        policy: &Policy,
    ) -> Result<Params, Error> {
        let (degree, threshold) = degree_and_threshold(n, policy);
        let mod_bits = 32u8;
        let room = (u64::from(u32::MAX)) / u64::from(n.max(1));
        let quant_levels = u32::try_from(room.min(1 << 24)).unwrap_or(1 << 24);
        let p = Params {
            num_clients: n,
            degree,
            threshold,
            mod_bits,
            quant_levels,
            clip,
            max_weight,
            vector_len: m,
        };
        p.validate()?;
        Ok(p)
    }

    /// The complete graph (every client a neighbour of every other): the Bonawitz et al. setting.
    pub fn complete_graph(mut self, policy: &Policy) -> Result<Params, Error> {
        let k = self.num_clients.saturating_sub(1);
        self.degree = k;
        self.threshold = complete_threshold(k, policy);
        self.validate()?;
        Ok(self)
    }

    /// Whether the graph is complete.
    pub fn is_complete(&self) -> bool {
        self.degree + 1 >= self.num_clients
    }

    /// The modulus mask `2^b − 1`.
    pub fn modulus_mask(&self) -> u32 {
        if self.mod_bits >= 32 {
            u32::MAX
        } else {
            (1u32 << self.mod_bits) - 1
        }
    }

    /// Length of the masked vector: the weight, then the `m` values.
    pub fn masked_len(&self) -> usize {
        self.vector_len as usize + 1
    }

    /// Bytes of a packed masked vector: `⌈(m + 1)·b / 8⌉`.
    pub fn packed_len(&self) -> usize {
        (self.masked_len() * usize::from(self.mod_bits)).div_ceil(8)
    }

    /// Checks that the parameters are consistent and safe: `2 ≤ n`, `k` even or `n − 1`,
    /// `k/2 < t ≤ k`, and that `n` summands of the largest quantized value and of the largest
    /// weight both fit below `2^b` (otherwise the sum would wrap and be silently wrong).
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: &str| Err(Error::Params(m.to_owned()));
        let n = self.num_clients;
        if !(2..=MAX_CLIENTS).contains(&n) {
            return bad("the roster must have between 2 and 2^20 clients");
        }
        if self.degree == 0 || self.degree > n - 1 {
            return bad("the degree must be between 1 and n - 1");
        }
        if self.degree < n - 1 && self.degree % 2 == 1 {
            return bad("the degree must be even unless the graph is complete");
        }
        if self.threshold == 0 || self.threshold > self.degree {
            return bad("the threshold must be between 1 and the degree");
        }
        if 2 * u64::from(self.threshold) <= u64::from(self.degree) {
            return bad(
                "the threshold must exceed half the degree, or a malicious server could gather both shares of a client",
            );
        }
        if !(1..=32).contains(&self.mod_bits) {
            return bad("the modulus must be 2^b with 1 <= b <= 32");
        }
        if self.quant_levels == 0 {
            return bad("at least one quantization level is needed");
        }
        if !(self.clip.is_finite() && self.clip > 0.0) {
            return bad("the clipping bound must be a positive finite number");
        }
        if self.vector_len == 0 || self.vector_len > MAX_VECTOR_LEN {
            return bad("the vector length must be between 1 and 2^28");
        }
        let modulus = 1u64 << self.mod_bits;
        if u64::from(n) * u64::from(self.quant_levels) >= modulus {
            return bad(
                "n x quant_levels must stay below 2^b, or the sum can overflow the modulus",
            );
        }
        if u64::from(n) * u64::from(self.max_weight) >= modulus {
            return bad(
                "n x max_weight must stay below 2^b, or the weight sum can overflow the modulus",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn tail_matches_exact_small_cases() {
        // Bin(4, 0.5): P[X >= 3] = 5/16.
        assert!((binomial_tail_ge(4, 0.5, 3) - 5.0 / 16.0).abs() < 1e-12);
        assert_eq!(binomial_tail_ge(4, 0.5, 0), 1.0);
        assert_eq!(binomial_tail_ge(4, 0.5, 5), 0.0);
    }

    #[test]
    fn degree_grows_like_log_n() {
        let p = Policy::default();
        let (k100, t100) = degree_and_threshold(100, &p);
        let (k1000, t1000) = degree_and_threshold(1000, &p);
        assert!(k100 < 99 && k1000 < 60, "k100={k100} k1000={k1000}");
        assert!(k1000 >= k100);
        assert!(2 * t100 > k100 && 2 * t1000 > k1000);
        // A small roster gets the complete graph.
        assert_eq!(degree_and_threshold(10, &p).0, 9);
    }

    #[test]
    fn overflowing_configurations_are_refused() {
        let mut p = Params::recommended(100, 10, 1.0, 1000, &Policy::default()).unwrap();
        p.quant_levels = u32::MAX / 50;
        assert!(p.validate().is_err());
        let mut p = Params::recommended(100, 10, 1.0, 1000, &Policy::default()).unwrap();
        p.max_weight = u32::MAX / 10;
        assert!(p.validate().is_err());
        let mut p = Params::recommended(100, 10, 1.0, 1000, &Policy::default()).unwrap();
        p.threshold = p.degree / 2;
        assert!(p.validate().is_err());
    }
}
