//! Shared bins and densities, so samples of different sizes compare.

/// `bins + 1` equal-width edges spanning every finite value of every sample.
pub fn bin_edges<'a>(samples: impl IntoIterator<Item = &'a [f64]>, bins: usize) -> Vec<f64> {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in samples.into_iter().flatten().filter(|v| v.is_finite()) {
        lo = lo.min(*v);
        hi = hi.max(*v);
    }
    if !lo.is_finite() {
        return vec![0.0, 1.0];
    }
    if hi <= lo {
        // One distinct value: a unit-wide bin around it.
        hi = lo + 0.5;
        lo -= 0.5;
    }
    let bins = bins.max(1);
    let width = (hi - lo) / bins as f64;
    (0..=bins).map(|i| lo + width * i as f64).collect()
}

/// The density of `values` in each bin (integrates to 1 over the edges).
/// The last bin is closed, so the maximum value is counted.
pub fn density(values: &[f64], edges: &[f64]) -> Vec<f64> {
    let bins = edges.len().saturating_sub(1);
    let mut counts = vec![0usize; bins];
    if bins == 0 {
        return Vec::new();
    }
    let (lo, hi) = (edges[0], edges[bins]);
    let width = (hi - lo) / bins as f64;
    let mut n = 0usize;
    for &v in values {
        if !v.is_finite() || v < lo || v > hi {
            continue;
        }
        let i = (((v - lo) / width) as usize).min(bins - 1);
        counts[i] += 1;
        n += 1;
    }
    counts
        .iter()
        .map(|&c| {
            if n == 0 {
                0.0
            } else {
                c as f64 / (n as f64 * width)
            }
        })
        .collect()
}
