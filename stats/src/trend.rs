//! Trends along an ordered axis (Gen-D0..D6, the generated share): Spearman's rank
//! correlation with permutation p-values.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::{check_finite, StatsError};

/// Spearman's rho of a metric against an ordered axis, with one-sided permutation
/// p-values: `p_increasing` is the chance of a rho at least this large if the metric did
/// not depend on the axis, `p_decreasing` of one at least this small.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Trend {
    pub rho: f64,
    pub p_increasing: f64,
    pub p_decreasing: f64,
    /// Points (every replicate at every level counts).
    pub n: usize,
    pub permutations: usize,
    pub method: &'static str,
}

/// Ranks with ties given their average rank (1-based).
fn ranks(xs: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..xs.len()).collect();
    order.sort_by(|&a, &b| xs[a].total_cmp(&xs[b]));
    let mut out = vec![0.0; xs.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && xs[order[j + 1]] == xs[order[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            out[k] = rank;
        }
        i = j + 1;
    }
    out
}

fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma) * (x - ma);
        sbb += (y - mb) * (y - mb);
    }
    if saa == 0.0 || sbb == 0.0 {
        return 0.0;
    }
    sab / (saa * sbb).sqrt()
}

/// Spearman's rho (the Pearson correlation of the ranks, ties averaged, as scipy does);
/// 0 when either side is constant.
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    pearson(&ranks(x), &ranks(y))
}

/// Spearman's rho of `y` against the ordered axis `x`, with permutation p-values
/// (`permutations` shuffles of `y`, seeded; p = (hits + 1) / (permutations + 1)).
pub fn trend(x: &[f64], y: &[f64], permutations: usize, seed: u64) -> Result<Trend, StatsError> {
    const WHAT: &str = "trend";
    if x.len() != y.len() {
        return Err(StatsError::Shape {
            what: WHAT,
            detail: format!("{} axis values for {} metric values", x.len(), y.len()),
        });
    }
    if x.len() < 3 {
        return Err(StatsError::TooFew {
            what: WHAT,
            needed: 3,
            got: x.len(),
        });
    }
    check_finite(WHAT, x)?;
    check_finite(WHAT, y)?;
    let rx = ranks(x);
    let ry = ranks(y);
    let rho = pearson(&rx, &ry);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut shuffled = ry.clone();
    let (mut up, mut down) = (0usize, 0usize);
    // A tolerance so that permutations tying the observed rho count as at least as extreme.
    let eps = 1e-12;
    for _ in 0..permutations {
        shuffled.shuffle(&mut rng);
        let r = pearson(&rx, &shuffled);
        if r >= rho - eps {
            up += 1;
        }
        if r <= rho + eps {
            down += 1;
        }
    }
    let p = |hits: usize| (hits + 1) as f64 / (permutations + 1) as f64;
    Ok(Trend {
        rho,
        p_increasing: p(up),
        p_decreasing: p(down),
        n: x.len(),
        permutations,
        method: "spearman_permutation",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_average_ties() {
        assert_eq!(ranks(&[10.0, 20.0, 20.0, 5.0]), [2.0, 3.5, 3.5, 1.0]);
    }

    #[test]
    fn a_monotone_rise_is_a_significant_increase() {
        let x: Vec<f64> = (0..7).flat_map(|l| [l as f64; 3]).collect();
        let y: Vec<f64> = x
            .iter()
            .enumerate()
            .map(|(i, l)| l * 0.1 + (i % 3) as f64 * 0.001)
            .collect();
        let t = trend(&x, &y, 2000, 3).unwrap();
        assert!(t.rho > 0.95, "{t:?}");
        assert!(t.p_increasing < 0.01, "{t:?}");
        assert!(t.p_decreasing > 0.99, "{t:?}");
        assert_eq!(t, trend(&x, &y, 2000, 3).unwrap(), "seeded");
    }

    #[test]
    fn no_trend_is_not_significant() {
        let x: Vec<f64> = (0..7).flat_map(|l| [l as f64; 3]).collect();
        let y: Vec<f64> = (0..21).map(|i| ((i * 7919) % 13) as f64).collect();
        let t = trend(&x, &y, 2000, 3).unwrap();
        assert!(t.p_increasing > 0.05 && t.p_decreasing > 0.05, "{t:?}");
    }
}
