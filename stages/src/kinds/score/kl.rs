//! KL divergence between token unigram distributions (Table 2).
//!
//! KL(reference || data) = sum_w P(w) ln(P(w) / Q(w)), natural log, over the
//! union vocabulary V of both sets, with additive smoothing
//! P(w) = (c_ref(w) + alpha) / (N_ref + alpha |V|), likewise Q with c_data.
//! Tokens are those of input + target (QA: question + answer, no context).
//!
//! The default alpha = 0.5 is the Krichevsky-Trofimov (Jeffreys-prior)
//! estimator, the classical choice when the estimate is judged by log loss,
//! which is what KL measures; add-one over-smooths rare words, while a tiny
//! alpha makes the value hinge on how many reference words the data lacks.

use serde::Serialize;

pub const VARIANT: &str = "token unigram KL(reference || data), additive smoothing over the union \
                           vocabulary, natural log";

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Kl {
    pub variant: &'static str,
    pub value: f64,
    pub alpha: f64,
    pub vocab: usize,
    pub reference_tokens: u64,
    pub data_tokens: u64,
}

/// `reference[w]` and `data[w]` count token w (ids over the union vocabulary).
pub fn unigram_kl(reference: &[u64], data: &[u64], alpha: f64) -> Kl {
    debug_assert_eq!(reference.len(), data.len());
    let vocab = reference
        .iter()
        .zip(data)
        .filter(|(r, d)| **r + **d > 0)
        .count();
    let n_ref: u64 = reference.iter().sum();
    let n_data: u64 = data.iter().sum();
    let denom_p = n_ref as f64 + alpha * vocab as f64;
    let denom_q = n_data as f64 + alpha * vocab as f64;
    let value = reference
        .iter()
        .zip(data)
        .filter(|(r, d)| **r + **d > 0)
        .map(|(&r, &d)| {
            let p = (r as f64 + alpha) / denom_p;
            let q = (d as f64 + alpha) / denom_q;
            p * (p / q).ln()
        })
        .sum();
    Kl {
        variant: VARIANT,
        value,
        alpha,
        vocab,
        reference_tokens: n_ref,
        data_tokens: n_data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_sets_have_zero_divergence() {
        let kl = unigram_kl(&[3, 1, 0, 2], &[3, 1, 0, 2], 0.5);
        assert_eq!(kl.value, 0.0);
        assert_eq!(kl.vocab, 3);
    }

    #[test]
    fn hand_computed_value() {
        // V = {a, b}, alpha = 1, reference counts (1, 1), data counts (2, 0):
        // P = (2/4, 2/4), Q = (3/4, 1/4).
        let kl = unigram_kl(&[1, 1], &[2, 0], 1.0);
        let want = 0.5 * (0.5f64 / 0.75).ln() + 0.5 * (0.5f64 / 0.25).ln();
        assert!((kl.value - want).abs() < 1e-15, "{} vs {want}", kl.value);
        assert!(kl.value > 0.0);
        // Not symmetric.
        assert_ne!(kl.value, unigram_kl(&[2, 0], &[1, 1], 1.0).value);
    }
}
