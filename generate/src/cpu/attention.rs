//! Causal attention of one query head over a sequence's cached keys and
//! values: the part of a decoding step that grows with the context.

use super::math::{dot, exp, has_avx2};

/// One head's inputs: its query, and its keys and values one position
/// after the other (`q.len()` floats each).
pub struct Head<'a> {
    pub q: &'a [f32],
    pub keys: &'a [f32],
    pub values: &'a [f32],
    /// Positions attended to: 0..len.
    pub len: usize,
    pub scale: f32,
}

/// Writes softmax(q K^T * scale) V into `out`.
pub fn attend(h: &Head, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 and FMA (checked once).
        return unsafe { attend_avx2(h, out) };
    }
    attend_portable(h, out)
}

/// The same code compiled for AVX2: the loops below vectorize 8 wide.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_avx2(h: &Head, out: &mut [f32]) {
    attend_portable(h, out)
}

#[inline(always)]
fn attend_portable(h: &Head, out: &mut [f32]) {
    let d = h.q.len();
    let mut scores: Vec<f32> = h.keys[..h.len * d]
        .chunks_exact(d)
        .map(|k| dot(h.q, k) * h.scale)
        .collect();
    let max = scores.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
    scores.iter_mut().for_each(|v| *v = exp(*v - max));
    let sum: f32 = scores.iter().sum();
    out.fill(0.0);
    for (w, v) in scores.iter().zip(h.values.chunks_exact(d)) {
        let w = w / sum;
        out.iter_mut().zip(v).for_each(|(o, v)| *o += w * v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_is_a_softmax_weighted_mean_of_the_values() {
        // Two positions (and a third, not attended to), head size 8.
        let q = [1.0f32, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        let mut keys = vec![0f32; 24];
        let mut values = vec![0f32; 24];
        keys[0] = 1.0; // position 0: q.k = 1
        keys[8] = 3.0; // position 1: q.k = 3
        keys[16] = 9.0;
        values[0..8].fill(2.0);
        values[8..16].fill(-1.0);
        values[16..24].fill(100.0);
        let h = Head {
            q: &q,
            keys: &keys,
            values: &values,
            len: 2,
            scale: 0.5,
        };
        let mut out = [0f32; 8];
        attend(&h, &mut out);
        let (w0, w1) = (0.5f32.exp(), 1.5f32.exp());
        let want = (2.0 * w0 - w1) / (w0 + w1);
        for o in out {
            assert!((o - want).abs() < 1e-6, "{o} vs {want}");
        }
        let mut portable = [0f32; 8];
        attend_portable(&h, &mut portable);
        assert_eq!(out, portable);
    }
}
