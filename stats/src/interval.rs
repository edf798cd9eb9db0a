//! Intervals of means and of paired differences.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use statrs::distribution::{ContinuousCDF, StudentsT};

use crate::{check_finite, mean, quantile_sorted, sd, StatsError};

/// How an interval was computed (written beside it, so a reader knows what it means).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Student's t over replicates: mean +- t(n-1) * sd / sqrt(n).
    StudentT,
    /// Percentile bootstrap of the mean.
    Bootstrap,
    /// Two-way paired bootstrap (seeds and test examples resampled independently).
    PairedBootstrap,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::StudentT => "student_t",
            Method::Bootstrap => "bootstrap",
            Method::PairedBootstrap => "paired_bootstrap",
        }
    }
}

/// A mean with its spread and confidence interval.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub n: usize,
    pub mean: f64,
    pub sd: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    pub level: f64,
    pub method: Method,
}

/// Mean, sample sd and the Student-t interval at `level` of `xs` (e.g. one metric over
/// seeds). Needs two values.
pub fn t_interval(xs: &[f64], level: f64) -> Result<Summary, StatsError> {
    const WHAT: &str = "t interval";
    if xs.len() < 2 {
        return Err(StatsError::TooFew {
            what: WHAT,
            needed: 2,
            got: xs.len(),
        });
    }
    check_finite(WHAT, xs)?;
    let n = xs.len();
    let (m, s) = (mean(xs), sd(xs));
    let t = StudentsT::new(0.0, 1.0, (n - 1) as f64)
        .map_err(|e| StatsError::Shape {
            what: WHAT,
            detail: e.to_string(),
        })?
        .inverse_cdf(0.5 + level / 2.0);
    let half = t * s / (n as f64).sqrt();
    Ok(Summary {
        n,
        mean: m,
        sd: s,
        ci_low: m - half,
        ci_high: m + half,
        level,
        method: Method::StudentT,
    })
}

/// Mean and sample sd of `xs`, with a percentile bootstrap interval of the mean
/// (`resamples` draws, seeded). For one replicate, over its test examples.
pub fn bootstrap_mean(
    xs: &[f64],
    level: f64,
    resamples: usize,
    seed: u64,
) -> Result<Summary, StatsError> {
    const WHAT: &str = "bootstrap interval";
    if xs.len() < 2 {
        return Err(StatsError::TooFew {
            what: WHAT,
            needed: 2,
            got: xs.len(),
        });
    }
    check_finite(WHAT, xs)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = xs.len();
    let mut means: Vec<f64> = (0..resamples.max(1))
        .map(|_| (0..n).map(|_| xs[rng.random_range(0..n)]).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    let alpha = 1.0 - level;
    Ok(Summary {
        n,
        mean: mean(xs),
        sd: sd(xs),
        ci_low: quantile_sorted(&means, alpha / 2.0),
        ci_high: quantile_sorted(&means, 1.0 - alpha / 2.0),
        level,
        method: Method::Bootstrap,
    })
}

/// A condition against a reference on the same units: the mean paired difference
/// (condition - reference) with its interval.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Contrast {
    pub estimate: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    pub level: f64,
    /// Seeds (rows) and test examples (columns) paired.
    pub seeds: usize,
    pub examples: usize,
    pub resamples: usize,
    pub method: Method,
}

/// The paired difference `condition - reference`, where `condition[s][e]` and
/// `reference[s][e]` are the same test example `e` under the same seed `s`.
///
/// The interval is a two-way percentile bootstrap: each resample draws seeds and test
/// examples with replacement, independently, and averages the differences of the drawn
/// cells, so both sources of noise (training randomness, which test examples) widen it.
/// With one seed it is the ordinary paired bootstrap over examples.
pub fn paired_contrast(
    condition: &[Vec<f64>],
    reference: &[Vec<f64>],
    level: f64,
    resamples: usize,
    seed: u64,
) -> Result<Contrast, StatsError> {
    const WHAT: &str = "paired contrast";
    if condition.len() != reference.len() || condition.is_empty() {
        return Err(StatsError::Shape {
            what: WHAT,
            detail: format!(
                "{} seeds against {} (they must be the same, and at least one)",
                condition.len(),
                reference.len()
            ),
        });
    }
    let examples = condition[0].len();
    let mut diffs: Vec<Vec<f64>> = Vec::with_capacity(condition.len());
    for (c, r) in condition.iter().zip(reference) {
        if c.len() != examples || r.len() != examples {
            return Err(StatsError::Shape {
                what: WHAT,
                detail: "every seed must score the same test examples".into(),
            });
        }
        check_finite(WHAT, c)?;
        check_finite(WHAT, r)?;
        diffs.push(c.iter().zip(r).map(|(a, b)| a - b).collect());
    }
    if examples < 2 {
        return Err(StatsError::TooFew {
            what: WHAT,
            needed: 2,
            got: examples,
        });
    }
    let seeds = diffs.len();
    let cell_mean = |rows: &[usize], cols: &[usize]| {
        let mut total = 0.0;
        for &s in rows {
            for &e in cols {
                total += diffs[s][e];
            }
        }
        total / (rows.len() * cols.len()) as f64
    };
    let all_rows: Vec<usize> = (0..seeds).collect();
    let all_cols: Vec<usize> = (0..examples).collect();
    let estimate = cell_mean(&all_rows, &all_cols);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut rows = vec![0usize; seeds];
    let mut cols = vec![0usize; examples];
    let mut stats = Vec::with_capacity(resamples.max(1));
    for _ in 0..resamples.max(1) {
        if seeds > 1 {
            rows.iter_mut()
                .for_each(|r| *r = rng.random_range(0..seeds));
        } else {
            rows[0] = 0;
        }
        cols.iter_mut()
            .for_each(|c| *c = rng.random_range(0..examples));
        stats.push(cell_mean(&rows, &cols));
    }
    stats.sort_by(f64::total_cmp);
    let alpha = 1.0 - level;
    Ok(Contrast {
        estimate,
        ci_low: quantile_sorted(&stats, alpha / 2.0),
        ci_high: quantile_sorted(&stats, 1.0 - alpha / 2.0),
        level,
        seeds,
        examples,
        resamples: resamples.max(1),
        method: Method::PairedBootstrap,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    /// By hand: xs = 1, 2, 3, 4: mean 2.5, sd sqrt(5/3) = 1.2909944,
    /// t(0.975, 3) = 3.1824463, half width 3.1824463 * 1.2909944 / 2 = 2.0542.
    #[test]
    fn t_interval_by_hand() {
        let s = t_interval(&[1.0, 2.0, 3.0, 4.0], 0.95).unwrap();
        assert!(close(s.mean, 2.5, 1e-12));
        assert!(close(s.sd, (5.0f64 / 3.0).sqrt(), 1e-12));
        assert!(close(s.ci_low, 2.5 - 2.054_260_3, 1e-6), "{s:?}");
        assert!(close(s.ci_high, 2.5 + 2.054_260_3, 1e-6), "{s:?}");
        assert!(matches!(
            t_interval(&[1.0], 0.95),
            Err(StatsError::TooFew { .. })
        ));
        assert!(matches!(
            t_interval(&[1.0, f64::NAN], 0.95),
            Err(StatsError::NotFinite { .. })
        ));
    }

    #[test]
    fn bootstrap_is_seeded_and_brackets_the_mean() {
        let xs: Vec<f64> = (0..50).map(|i| (i as f64 * 0.37).sin()).collect();
        let a = bootstrap_mean(&xs, 0.95, 2000, 7).unwrap();
        let b = bootstrap_mean(&xs, 0.95, 2000, 7).unwrap();
        assert_eq!(a, b);
        assert!(a.ci_low < a.mean && a.mean < a.ci_high);
        // Close to the normal-theory interval for 50 values.
        let t = t_interval(&xs, 0.95).unwrap();
        assert!(close(
            a.ci_high - a.ci_low,
            t.ci_high - t.ci_low,
            0.2 * (t.ci_high - t.ci_low)
        ));
    }

    #[test]
    fn paired_contrast_sees_a_shift_that_unpaired_noise_hides() {
        // Examples differ a lot from each other; the condition is the reference + 0.1.
        let reference: Vec<Vec<f64>> = (0..3)
            .map(|s| {
                (0..40)
                    .map(|e| (e as f64) * 0.5 + s as f64 * 0.01)
                    .collect()
            })
            .collect();
        let condition: Vec<Vec<f64>> = reference
            .iter()
            .map(|r| {
                r.iter()
                    .enumerate()
                    .map(|(e, x)| x + 0.1 + if e % 2 == 0 { 0.01 } else { -0.01 })
                    .collect()
            })
            .collect();
        let c = paired_contrast(&condition, &reference, 0.95, 2000, 1).unwrap();
        assert!(close(c.estimate, 0.1, 1e-9), "{c:?}");
        assert!(c.ci_low > 0.08 && c.ci_high < 0.12, "{c:?}");
        assert_eq!((c.seeds, c.examples), (3, 40));
        let err = paired_contrast(&condition[..2], &reference, 0.95, 10, 1).unwrap_err();
        assert!(matches!(err, StatsError::Shape { .. }));
    }
}
