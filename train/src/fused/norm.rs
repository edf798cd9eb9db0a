//! RMSNorm and LayerNorm over frozen weights: one pass forward and one
//! backward per row, the inverse scale recomputed rather than stored.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{by_dtype, frozen_data, min_rows, rows2, Real, Rows};

/// Which normalization, with its frozen weight (and bias).
#[derive(Clone)]
enum Kind {
    /// `x / sqrt(mean(x^2) + eps) * w` (Hugging Face's `LlamaRMSNorm`).
    Rms { w: Tensor },
    /// `(x - mean) / sqrt(var + eps) * w + b` (torch's `nn.LayerNorm`).
    Layer { w: Tensor, b: Tensor },
}

#[derive(Clone)]
struct Norm {
    kind: Kind,
    eps: f64,
}

/// RMSNorm of the rows of `x`; `w` is frozen (no gradient).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    refuse_trainable(&[w])?;
    x.apply_op1(Norm {
        kind: Kind::Rms { w: w.clone() },
        eps,
    })
}

/// LayerNorm of the rows of `x`; `w` and `b` are frozen (no gradient).
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    refuse_trainable(&[w, b])?;
    x.apply_op1(Norm {
        kind: Kind::Layer {
            w: w.clone(),
            b: b.clone(),
        },
        eps,
    })
}

/// These kernels give no gradient to the weights: a trainable weight would
/// silently not learn.
fn refuse_trainable(weights: &[&Tensor]) -> Result<()> {
    if weights.iter().any(|w| w.track_op()) {
        candle_core::bail!("fused norm: weights must be frozen (no gradient flows to them)");
    }
    Ok(())
}

/// Mean and inverse standard deviation of a row (mean 0 for RMSNorm).
#[inline]
fn moments<T: Real>(x: &[T], centred: bool, eps: f64) -> (T, T) {
    let n = T::of(x.len() as f64);
    let mean = if centred {
        let mut s = T::ZERO;
        x.iter().for_each(|&v| s += v);
        s / n
    } else {
        T::ZERO
    };
    let mut sq = T::ZERO;
    x.iter().for_each(|&v| sq += (v - mean) * (v - mean));
    (mean, T::ONE / (sq / n + T::of(eps)).sqrt())
}

impl Norm {
    fn params<T: Real + candle_core::WithDType>(&self) -> Result<(Vec<T>, Option<Vec<T>>)> {
        Ok(match &self.kind {
            Kind::Rms { w } => (frozen_data(w)?, None),
            Kind::Layer { w, b } => (frozen_data(w)?, Some(frozen_data(b)?)),
        })
    }

    fn forward<T: Real + candle_core::WithDType>(&self, x: &[T], r: Rows) -> Result<Vec<T>> {
        let (w, b) = self.params::<T>()?;
        check_width(w.len(), r.cols)?;
        let mut out = vec![T::ZERO; r.rows * r.cols];
        out.par_chunks_mut(r.cols)
            .enumerate()
            .with_min_len(min_rows(r.cols))
            .for_each(|(i, y)| {
                let x = r.row(x, i);
                let (mean, inv) = moments(x, b.is_some(), self.eps);
                for ((y, &v), &w) in y.iter_mut().zip(x).zip(&w) {
                    *y = (v - mean) * inv * w;
                }
                if let Some(b) = &b {
                    y.iter_mut().zip(b).for_each(|(y, &b)| *y += b);
                }
            });
        Ok(out)
    }

    /// With x^ = (x - mean) * inv and h = g * w:
    /// RMSNorm dx = inv * (h - x^ * mean(h * x^)),
    /// LayerNorm dx = inv * (h - mean(h) - x^ * mean(h * x^)).
    fn backward<T: Real + candle_core::WithDType>(
        &self,
        x: &[T],
        rx: Rows,
        g: &[T],
        rg: Rows,
    ) -> Result<Vec<T>> {
        let (w, b) = self.params::<T>()?;
        let centred = b.is_some();
        let n = T::of(rx.cols as f64);
        let mut out = vec![T::ZERO; rx.rows * rx.cols];
        out.par_chunks_mut(rx.cols)
            .enumerate()
            .with_min_len(min_rows(rx.cols))
            .for_each(|(i, dx)| {
                let (x, g) = (rx.row(x, i), rg.row(g, i));
                let (mean, inv) = moments(x, centred, self.eps);
                let (mut h_sum, mut hx_sum) = (T::ZERO, T::ZERO);
                for ((&v, &g), &w) in x.iter().zip(g).zip(&w) {
                    let h = g * w;
                    h_sum += h;
                    hx_sum += h * (v - mean) * inv;
                }
                let h_mean = if centred { h_sum / n } else { T::ZERO };
                let hx_mean = hx_sum / n;
                for (((dx, &v), &g), &w) in dx.iter_mut().zip(x).zip(g).zip(&w) {
                    *dx = inv * (g * w - h_mean - (v - mean) * inv * hx_mean);
                }
            });
        Ok(out)
    }
}

fn check_width(weights: usize, cols: usize) -> Result<()> {
    if weights != cols {
        candle_core::bail!("fused norm: {weights} weights for rows of {cols}");
    }
    Ok(())
}

impl CustomOp1 for Norm {
    fn name(&self) -> &'static str {
        "fused-norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let r = Rows::of(l, self.name())?;
        let out = by_dtype!("fused-norm", s, |x| self.forward(x, r)?);
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(grad, &NormBackward(self.clone()))?))
    }
}

struct NormBackward(Norm);

impl CustomOp2 for NormBackward {
    fn name(&self) -> &'static str {
        "fused-norm-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (rx, rg) = rows2(l1, l2, self.name())?;
        let out = by_dtype!("fused-norm-backward", s1, s2, |x, g| self
            .0
            .backward(x, rx, g, rg)?);
        Ok((out, l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::check::same_value_and_gradient;
    use crate::ops::composed;
    use candle_core::{DType, Device, Var};

    /// Fused against composed, values and input gradients, on a column
    /// slice (strided rows) of a wider matrix.
    #[test]
    fn rms_and_layer_norm_match_composed() {
        let dev = Device::Cpu;
        let wide = Var::from_tensor(&Tensor::randn(0.5f64, 2.0, (7, 20), &dev).unwrap()).unwrap();
        let x = wide.narrow(1, 4, 12).unwrap();
        let w = Tensor::randn(1f64, 0.3, 12, &dev).unwrap();
        let b = Tensor::randn(0f64, 0.3, 12, &dev).unwrap();
        same_value_and_gradient(
            &rms_norm(&x, &w, 1e-5).unwrap(),
            &composed::rms_norm(&x, &w, 1e-5).unwrap(),
            &wide,
            1e-12,
        );
        same_value_and_gradient(
            &layer_norm(&x, &w, &b, 1e-5).unwrap(),
            &composed::layer_norm(&x, &w, &b, 1e-5).unwrap(),
            &wide,
            1e-12,
        );
    }

    #[test]
    fn trainable_weights_are_refused() {
        let dev = Device::Cpu;
        let x = Tensor::ones((2, 4), DType::F32, &dev).unwrap();
        let w = Var::ones(4, DType::F32, &dev).unwrap();
        let err = rms_norm(&x, &w, 1e-5).unwrap_err().to_string();
        assert!(err.contains("frozen"), "{err}");
    }
}
