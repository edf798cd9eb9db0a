//! Target (completion / answer) length distribution in tokens (Fig. 3).

use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Lengths {
    pub count: usize,
    pub mean: f64,
    pub median: f64,
    pub p10: f64,
    pub p90: f64,
    pub min: usize,
    pub max: usize,
    /// `[length, number of targets]` for every length that occurs.
    pub histogram: Vec<(usize, usize)>,
}

/// Summary of `lengths`; quantiles interpolate linearly between order
/// statistics (numpy's default). Empty input gives zeros.
pub fn summarize(lengths: &[usize]) -> Lengths {
    let mut sorted = lengths.to_vec();
    sorted.sort_unstable();
    let count = sorted.len();
    if count == 0 {
        return Lengths {
            count,
            mean: 0.0,
            median: 0.0,
            p10: 0.0,
            p90: 0.0,
            min: 0,
            max: 0,
            histogram: Vec::new(),
        };
    }
    let mut histogram: Vec<(usize, usize)> = Vec::new();
    for &len in &sorted {
        match histogram.last_mut() {
            Some((l, c)) if *l == len => *c += 1,
            _ => histogram.push((len, 1)),
        }
    }
    Lengths {
        count,
        mean: sorted.iter().sum::<usize>() as f64 / count as f64,
        median: quantile(&sorted, 0.5),
        p10: quantile(&sorted, 0.1),
        p90: quantile(&sorted, 0.9),
        min: sorted[0],
        max: sorted[count - 1],
        histogram,
    }
}

fn quantile(sorted: &[usize], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    let frac = pos - lo as f64;
    sorted[lo] as f64 + frac * (sorted[hi] as f64 - sorted[lo] as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_summary() {
        let s = summarize(&[5, 1, 3, 3, 10]);
        assert_eq!(s.count, 5);
        assert_eq!(s.mean, 4.4);
        assert_eq!(s.median, 3.0);
        // sorted 1 3 3 5 10: p10 at 0.4 -> 1 + 0.4 * 2; p90 at 3.6 -> 5 + 0.6 * 5
        assert!((s.p10 - 1.8).abs() < 1e-12);
        assert!((s.p90 - 8.0).abs() < 1e-12);
        assert_eq!((s.min, s.max), (1, 10));
        assert_eq!(s.histogram, vec![(1, 1), (3, 2), (5, 1), (10, 1)]);
        assert_eq!(summarize(&[]).count, 0);
        assert_eq!(summarize(&[4, 6]).median, 5.0);
    }
}
