//! Small numeric kernels written so that loops of them vectorize.

/// Dot product in 8 independent lanes, so the compiler vectorizes it.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// e^x within 5e-7 relative (0 below -87, +inf above 88), branch-free so a
/// loop of it vectorizes: the trainer's fused kernels' own, one copy for
/// training and generation.
pub use flow_train::fused::exp_f32 as exp;

/// SiLU(g) * u for every element (llama's gated feed-forward), into `out`.
pub fn swiglu(gate: &[f32], up: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 and FMA (checked once).
        return unsafe { swiglu_avx2(gate, up, out) };
    }
    swiglu_portable(gate, up, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn swiglu_avx2(gate: &[f32], up: &[f32], out: &mut [f32]) {
    swiglu_portable(gate, up, out)
}

#[inline(always)]
fn swiglu_portable(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + exp(-g)) * u;
    }
}

/// Whether the CPU has AVX2 and FMA (checked once): the kernels here and in attention.rs
/// dispatch on it. It lives in this lower module so attention depends on math, not back.
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx2() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swiglu_is_silu_of_the_gate_times_up() {
        let gate = [-3.0f32, -0.5, 0.0, 0.7, 4.0, 30.0, -100.0, 2.0, 1.0];
        let up = [1.0f32, 2.0, 3.0, -1.0, 0.5, 1.0, 1.0, -2.0, 0.25];
        let mut out = [0f32; 9];
        swiglu(&gate, &up, &mut out);
        for ((o, g), u) in out.iter().zip(gate).zip(up) {
            let want = g / (1.0 + (-g).exp()) * u;
            assert!(
                (o - want).abs() <= 1e-6 * want.abs().max(1.0),
                "{o} vs {want}"
            );
        }
    }
}
