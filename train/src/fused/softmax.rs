//! Causal softmax of attention scores with the 1/sqrt(d) scale folded in:
//! one pass forward, one backward, and no mask tensor.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{by_dtype, min_rows, rows2, Real, Rows};

/// `softmax(scale * x)` over the last dimension (T keys) where row r is
/// query position `r % T` and sees keys `0..=r % T` (later keys get
/// probability 0). `x` is (.., rows, T) with rows a multiple of T, as the
/// stacked query groups of grouped-query attention are.
pub fn causal_softmax(x: &Tensor, scale: f64) -> Result<Tensor> {
    x.apply_op1(CausalSoftmax { scale })
}

struct CausalSoftmax {
    scale: f64,
}

fn forward<T: Real>(x: &[T], r: Rows, scale: f64) -> Vec<T> {
    let t = r.cols;
    let scale = T::of(scale);
    let mut out = vec![T::ZERO; r.rows * t];
    out.par_chunks_mut(t)
        .enumerate()
        .with_min_len(min_rows(t))
        .for_each(|(i, y)| {
            let seen = i % t + 1;
            let x = &r.row(x, i)[..seen];
            let m = x.iter().fold(x[0], |m, &v| m.max(v)) * scale;
            let mut z = T::ZERO;
            for (y, &v) in y.iter_mut().zip(x) {
                *y = (v * scale - m).exp();
                z += *y;
            }
            let inv = T::ONE / z;
            y[..seen].iter_mut().for_each(|y| *y = *y * inv);
        });
    out
}

/// dx = scale * y * (g - sum(g * y)) per row; masked keys have y = 0.
fn backward<T: Real>(y: &[T], ry: Rows, g: &[T], rg: Rows, scale: f64) -> Vec<T> {
    let t = ry.cols;
    let scale = T::of(scale);
    let mut out = vec![T::ZERO; ry.rows * t];
    out.par_chunks_mut(t)
        .enumerate()
        .with_min_len(min_rows(t))
        .for_each(|(i, dx)| {
            let seen = i % t + 1;
            let (y, g) = (&ry.row(y, i)[..seen], &rg.row(g, i)[..seen]);
            let mut dot = T::ZERO;
            for (&y, &g) in y.iter().zip(g) {
                dot += y * g;
            }
            for ((dx, &y), &g) in dx.iter_mut().zip(y).zip(g) {
                *dx = scale * y * (g - dot);
            }
        });
    out
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let r = Rows::of(l, self.name())?;
        if r.rows % r.cols != 0 {
            candle_core::bail!(
                "causal-softmax: {} rows are not blocks of {}",
                r.rows,
                r.cols
            );
        }
        let out = by_dtype!("causal-softmax", s, |x| forward(x, r, self.scale));
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        Ok(Some(y.apply_op2_no_bwd(
            &grad,
            &CausalSoftmaxBackward { scale: self.scale },
        )?))
    }
}

struct CausalSoftmaxBackward {
    scale: f64,
}

impl CustomOp2 for CausalSoftmaxBackward {
    fn name(&self) -> &'static str {
        "causal-softmax-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (ry, rg) = rows2(l1, l2, self.name())?;
        let out = by_dtype!("causal-softmax-backward", s1, s2, |y, g| backward(
            y, ry, g, rg, self.scale
        ));
        Ok((out, l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::check::{max_diff, same_value_and_gradient};
    use crate::ops;
    use candle_core::{DType, Device, Var, D};

    /// Against the composed softmax of scaled, masked scores, forward and
    /// backward, in f64 and f32, with two query groups of 5 positions.
    #[test]
    fn matches_composed_masked_softmax() {
        let dev = Device::Cpu;
        let (groups, t, scale) = (2, 5, 0.37);
        let x =
            Var::from_tensor(&Tensor::randn(0f64, 2.0, (3, groups * t, t), &dev).unwrap()).unwrap();
        let mask = ops::causal_mask(groups, t, &dev).unwrap();
        let masked = (x.as_tensor() * scale)
            .unwrap()
            .broadcast_add(&mask.to_dtype(DType::F64).unwrap())
            .unwrap();
        let reference = ops::composed::softmax_last_dim(&masked).unwrap();
        let fused = causal_softmax(&x, scale).unwrap();
        same_value_and_gradient(&fused, &reference, &x, 1e-12);
        // f32: the fast exp is good to 5e-7 relative.
        let y32 = causal_softmax(&x.to_dtype(DType::F32).unwrap(), scale).unwrap();
        assert!(max_diff(&y32, &fused) < 2e-6);
        // Rows sum to one and masked keys are exactly zero.
        let sums = y32.sum(D::Minus1).unwrap().flatten_all().unwrap();
        assert!(sums
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .all(|s| (s - 1.0).abs() < 1e-5));
        let first: Vec<f32> = y32.get(0).unwrap().get(0).unwrap().to_vec1().unwrap();
        assert_eq!(first[0], 1.0);
        assert!(first[1..].iter().all(|&p| p == 0.0));
    }
}
