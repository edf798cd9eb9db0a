//! GELU with the tanh approximation (GPT-2's `gelu_new`), forward and
//! backward as one elementwise pass each over f32 data, in parallel.
//!
//! candle's `gelu` computes it with libm's `tanhf` and `powf` per element,
//! and its backward composes several more tensor ops: on a GPT-2 training
//! step that was ~17% of the time. Here tanh comes from a branch-free exp
//! that vectorizes. f64 (gradient checks) uses std's tanh.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{exp_f32, Real};

const K0: f64 = 0.797_884_560_802_865_4; // sqrt(2 / pi)
const K1: f64 = 0.044_715;

/// `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`, differentiable (CPU).
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    x.apply_op1(Gelu)
}

#[inline(always)]
fn forward_f32(x: f32) -> f32 {
    let t = Real::tanh(K0 as f32 * (x + K1 as f32 * x * x * x));
    0.5 * x * (1.0 + t)
}

#[inline(always)]
fn derivative_f32(x: f32) -> f32 {
    let u = K0 as f32 * (x + K1 as f32 * x * x * x);
    // 1 - tanh(u), and 1 - tanh^2 = (1 - t)(1 + t), without cancellation.
    let s = 2.0 / (exp_f32(2.0 * u) + 1.0);
    let sech2 = s * (2.0 - s);
    0.5 * (2.0 - s) + 0.5 * x * sech2 * K0 as f32 * (1.0 + 3.0 * K1 as f32 * x * x)
}

fn forward_f64(x: f64) -> f64 {
    0.5 * x * (1.0 + (K0 * (x + K1 * x * x * x)).tanh())
}

fn derivative_f64(x: f64) -> f64 {
    let t = (K0 * (x + K1 * x * x * x)).tanh();
    0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * K0 * (1.0 + 3.0 * K1 * x * x)
}

/// Applies `f32_fn` / `f64_fn` to every element, in parallel chunks.
fn map(
    s: &CpuStorage,
    l: &Layout,
    f32_fn: fn(f32) -> f32,
    f64_fn: fn(f64) -> f64,
) -> Result<(CpuStorage, Shape)> {
    fn run<T: Copy + Send + Sync + Default>(
        src: &[T],
        l: &Layout,
        f: fn(T) -> T,
    ) -> Result<Vec<T>> {
        let src = match l.contiguous_offsets() {
            Some((a, b)) => &src[a..b],
            None => candle_core::bail!("gelu: non-contiguous input"),
        };
        let mut out = vec![T::default(); src.len()];
        out.par_chunks_mut(1 << 14)
            .zip(src.par_chunks(1 << 14))
            .for_each(|(o, s)| o.iter_mut().zip(s).for_each(|(o, &x)| *o = f(x)));
        Ok(out)
    }
    let out = match s {
        CpuStorage::F32(v) => CpuStorage::F32(run(v, l, f32_fn)?),
        CpuStorage::F64(v) => CpuStorage::F64(run(v, l, f64_fn)?),
        _ => candle_core::bail!("gelu: f32 or f64 only"),
    };
    Ok((out, l.shape().clone()))
}

struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "gelu-tanh"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        map(s, l, forward_f32, forward_f64)
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let d = x.contiguous()?.apply_op1_no_bwd(&GeluDerivative)?;
        Ok(Some(grad.mul(&d)?))
    }
}

struct GeluDerivative;

impl CustomOp1 for GeluDerivative {
    fn name(&self) -> &'static str {
        "gelu-tanh-derivative"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        map(s, l, derivative_f32, derivative_f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::check::max_diff;
    use candle_core::{DType, Device, Var};

    #[test]
    fn matches_exact_gelu_and_its_derivative() {
        let v: Vec<f64> = (-400..400).map(|i| i as f64 * 0.025).collect();
        let x64 = Var::from_vec(v, 800, &Device::Cpu).unwrap();
        let x32 = Var::from_tensor(&x64.to_dtype(DType::F32).unwrap()).unwrap();
        let (y64, y32) = (gelu_tanh(&x64).unwrap(), gelu_tanh(&x32).unwrap());
        // The f32 path (fast tanh) against the f64 one (std's tanh) and candle's.
        assert!(max_diff(&y32, &y64) < 1e-6);
        assert!(max_diff(&y32, &x32.gelu().unwrap()) < 2e-6);
        let g64 = y64.sum_all().unwrap().backward().unwrap();
        let g32 = y32.sum_all().unwrap().backward().unwrap();
        let (d64, d32) = (g64.get(&x64).unwrap(), g32.get(&x32).unwrap());
        let d = max_diff(d32, d64);
        // The fast exp is good to 5e-7 relative; the derivative sums terms of order 1.
        assert!(d < 3e-6, "f32 derivative off by {d}");
        // The f64 derivative against central finite differences.
        let h = 1e-6;
        for &x in &[-3.0, -0.7, 0.0, 0.3, 2.5] {
            let fd = (forward_f64(x + h) - forward_f64(x - h)) / (2.0 * h);
            assert!((fd - derivative_f64(x)).abs() < 1e-8, "{x}: {fd}");
        }
    }
}
