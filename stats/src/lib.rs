//! Uncertainty for flow's numbers, so that a figure says whether an effect is real.
//!
//! - [`t_interval`]: mean, sd and a Student-t confidence interval over replicates (seeds).
//! - [`bootstrap_mean`]: a percentile bootstrap interval of a mean (one seed: over the
//!   test examples).
//! - [`paired_contrast`]: a condition minus a reference on the same test examples and
//!   seeds, with a two-way (seeds x examples) paired bootstrap interval.
//! - [`trend`]: Spearman's rho of a metric against an ordered axis, with a one-sided
//!   permutation p-value in each direction.
//! - [`Verdict`]: `agrees` / `disagrees` / `inconclusive` by a rule fixed before the data.
//!
//! Every resampling is seeded (ChaCha8), so a rerun gives the same interval.

mod interval;
mod trend;
mod verdict;

pub use interval::{bootstrap_mean, paired_contrast, t_interval, Contrast, Method, Summary};
pub use trend::{spearman, trend, Trend};
pub use verdict::{Direction, Verdict};

/// The confidence level of every interval flow reports.
pub const LEVEL: f64 = 0.95;

/// Resamples of every bootstrap flow reports (the floor is 2000).
pub const RESAMPLES: usize = 4000;

/// Permutations of every trend test flow reports.
pub const PERMUTATIONS: usize = 4000;

/// Why a statistic could not be computed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StatsError {
    #[error("{what}: needs at least {needed} values, got {got}")]
    TooFew {
        what: &'static str,
        needed: usize,
        got: usize,
    },
    #[error("{what}: {detail}")]
    Shape { what: &'static str, detail: String },
    #[error("{what}: a value is not finite")]
    NotFinite { what: &'static str },
}

fn check_finite(what: &'static str, xs: &[f64]) -> Result<(), StatsError> {
    if xs.iter().all(|x| x.is_finite()) {
        Ok(())
    } else {
        Err(StatsError::NotFinite { what })
    }
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// Sample standard deviation (n - 1); 0 for one value.
fn sd(xs: &[f64]) -> f64 {
    if xs.len() < 2 {
        return 0.0;
    }
    let m = mean(xs);
    (xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (xs.len() - 1) as f64).sqrt()
}

/// The `q` quantile of sorted values, linear between order statistics (numpy's default).
fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}
