//! Rotary position embedding in the `rotate_half` layout (Hugging Face
//! llama), one pass forward and one backward.
//!
//! y = x * cos + rotate_half(x) * sin with rotate_half(x) = [-x2, x1].
//! Its transpose maps g to g * cos + [g2, -g1] * sin, which with the
//! tables' two equal halves is the same rotation with -sin: the backward
//! is the forward with the sign of sin flipped.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{by_dtype, frozen_data, min_rows, Real, Rows};

/// RoPE of `x` (B, H, T, D) with `cos`, `sin` (T, D) tables whose two
/// halves repeat (as [`crate::ops::rope_tables`] builds them).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (t, d) = cos.dims2()?;
    let dims = x.dims();
    if dims.len() != 4 || dims[2] != t || dims[3] != d || sin.dims() != cos.dims() || d % 2 != 0 {
        candle_core::bail!(
            "rope: x {:?} does not match tables {:?} of even width",
            dims,
            cos.dims()
        );
    }
    x.apply_op1(Rope {
        cos: cos.clone(),
        sin: sin.clone(),
        backward: false,
    })
}

#[derive(Clone)]
struct Rope {
    cos: Tensor,
    sin: Tensor,
    /// Rotates by -sin: the transpose of the forward rotation.
    backward: bool,
}

impl Rope {
    fn run<T: Real + candle_core::WithDType>(&self, x: &[T], r: Rows) -> Result<Vec<T>> {
        let (cos, sin) = (frozen_data::<T>(&self.cos)?, frozen_data::<T>(&self.sin)?);
        let d = r.cols;
        let t = cos.len() / d;
        let half = d / 2;
        let sign = if self.backward { -T::ONE } else { T::ONE };
        let mut out = vec![T::ZERO; r.rows * d];
        out.par_chunks_mut(d)
            .enumerate()
            .with_min_len(min_rows(d))
            .for_each(|(i, y)| {
                let x = r.row(x, i);
                let pos = i % t;
                let (c, s) = (&cos[pos * d..][..d], &sin[pos * d..][..d]);
                for k in 0..half {
                    y[k] = x[k] * c[k] - sign * x[k + half] * s[k];
                    y[k + half] = x[k + half] * c[k + half] + sign * x[k] * s[k + half];
                }
            });
        Ok(out)
    }
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let r = Rows::of(l, self.name())?;
        let out = by_dtype!("rope", s, |x| self.run(x, r)?);
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let transpose = Rope {
            backward: !self.backward,
            ..self.clone()
        };
        Ok(Some(grad.apply_op1_no_bwd(&transpose)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::check::same_value_and_gradient;
    use crate::ops;
    use candle_core::{DType, Device, Var};

    #[test]
    fn matches_composed_rotate_half() {
        let dev = Device::Cpu;
        let (t, d) = (5, 8);
        let (cos, sin) = ops::rope_tables(t, d, 10000.0, None, &dev).unwrap();
        let (cos, sin) = (
            cos.to_dtype(DType::F64).unwrap(),
            sin.to_dtype(DType::F64).unwrap(),
        );
        let x = Var::from_tensor(&Tensor::randn(0f64, 1.0, (2, 3, t, d), &dev).unwrap()).unwrap();
        same_value_and_gradient(
            &rope(&x, &cos, &sin).unwrap(),
            &ops::composed::rope(&x, &cos, &sin).unwrap(),
            &x,
            1e-12,
        );
    }
}
