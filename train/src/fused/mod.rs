//! Fused CPU kernels, each with its backward pass, for the row-wise and
//! elementwise parts of a training step: softmax with the causal mask and
//! scale folded in, RMSNorm and LayerNorm over frozen weights, SwiGLU,
//! rotary embedding and tanh GELU.
//!
//! Composed from candle's primitives, each of these is several passes over
//! memory forward and more backward, with an intermediate tensor kept per
//! pass; here each is one pass forward and one backward. They run on f32
//! (training) and f64 (gradient checks); other devices keep the composed
//! versions in [`crate::ops`].

pub mod gelu;
pub mod norm;
pub mod rope;
pub mod softmax;
pub mod swiglu;

use std::ops::{Add, AddAssign, Div, Mul, Neg, Sub};

use candle_core::{Layout, Result};

/// The float types the kernels run on.
pub(crate) trait Real:
    Copy
    + Default
    + Send
    + Sync
    + PartialOrd
    + Add<Output = Self>
    + AddAssign
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + 'static
{
    const ZERO: Self;
    const ONE: Self;
    /// e^x: a fast vectorizable approximation for f32, std's for f64.
    fn exp(self) -> Self;
    fn sqrt(self) -> Self;
    fn of(x: f64) -> Self;
    fn max(self, other: Self) -> Self;
    fn tanh(self) -> Self;
}

impl Real for f32 {
    const ZERO: f32 = 0.0;
    const ONE: f32 = 1.0;
    #[inline(always)]
    fn exp(self) -> f32 {
        exp_f32(self)
    }
    #[inline(always)]
    fn sqrt(self) -> f32 {
        f32::sqrt(self)
    }
    #[inline(always)]
    fn of(x: f64) -> f32 {
        x as f32
    }
    #[inline(always)]
    fn max(self, other: f32) -> f32 {
        f32::max(self, other)
    }
    /// tanh(u) = 1 - 2 / (e^{2u} + 1): exact limits at both ends, no branches.
    #[inline(always)]
    fn tanh(self) -> f32 {
        1.0 - 2.0 / (exp_f32(2.0 * self) + 1.0)
    }
}

impl Real for f64 {
    const ZERO: f64 = 0.0;
    const ONE: f64 = 1.0;
    fn exp(self) -> f64 {
        f64::exp(self)
    }
    fn sqrt(self) -> f64 {
        f64::sqrt(self)
    }
    fn of(x: f64) -> f64 {
        x
    }
    fn max(self, other: f64) -> f64 {
        f64::max(self, other)
    }
    fn tanh(self) -> f64 {
        f64::tanh(self)
    }
}

/// e^x within 5e-7 relative, branch-free (0 below -87, inf above 88):
/// 2^k e^r with |r| <= ln2/2 and a degree-6 Taylor polynomial. Unlike
/// libm's expf it has no branches or calls, so a loop of it vectorizes.
/// The workspace's one copy: flow-generate's CPU kernels (softmax, SiLU)
/// use it too.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer in
    // plain SSE2 arithmetic; `round`/`floor` would be libm calls on the
    // baseline x86-64 target and stop the loop from vectorizing.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let k = (x * LOG2E + ROUND) - ROUND;
    let r = x - k * LN2_HI - k * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    p * f32::from_bits(((k as i32 + 127) as u32) << 23)
}

/// A tensor seen as rows of its last dimension, which must be contiguous;
/// the leading dimensions may be strided as a whole (a column slice of a
/// matrix qualifies).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rows {
    offset: usize,
    pub rows: usize,
    pub cols: usize,
    stride: usize,
}

impl Rows {
    pub fn of(l: &Layout, op: &str) -> Result<Rows> {
        let dims = l.dims();
        let strides = l.stride();
        let Some((&cols, lead)) = dims.split_last() else {
            candle_core::bail!("{op}: a scalar has no rows");
        };
        if cols > 1 && strides[dims.len() - 1] != 1 {
            candle_core::bail!("{op}: the last dimension is not contiguous");
        }
        let rows: usize = lead.iter().product();
        let stride = if lead.is_empty() {
            cols
        } else {
            strides[lead.len() - 1]
        };
        // The leading dimensions must collapse into one stride.
        for i in (0..lead.len().saturating_sub(1)).rev() {
            if dims[i] > 1 && strides[i] != strides[i + 1] * dims[i + 1] {
                candle_core::bail!("{op}: leading dimensions are not one stride");
            }
        }
        Ok(Rows {
            offset: l.start_offset(),
            rows,
            cols,
            stride,
        })
    }

    /// Row `i` of `data`.
    #[inline]
    pub fn row<'a, T>(&self, data: &'a [T], i: usize) -> &'a [T] {
        &data[self.offset + i * self.stride..][..self.cols]
    }
}

/// Rows of two same-shaped inputs.
pub(crate) fn rows2(l1: &Layout, l2: &Layout, op: &str) -> Result<(Rows, Rows)> {
    if l1.dims() != l2.dims() {
        candle_core::bail!("{op}: shapes {:?} and {:?} differ", l1.dims(), l2.dims());
    }
    Ok((Rows::of(l1, op)?, Rows::of(l2, op)?))
}

/// Matches f32 and f64 storage, binding the slice to `$v` in `$body`
/// (which returns a `Vec` of the same type).
macro_rules! by_dtype {
    ($op:literal, $s:expr, |$v:ident| $body:expr) => {
        match $s {
            candle_core::CpuStorage::F32($v) => candle_core::CpuStorage::F32($body),
            candle_core::CpuStorage::F64($v) => candle_core::CpuStorage::F64($body),
            _ => candle_core::bail!("{}: f32 or f64 only", $op),
        }
    };
    ($op:literal, $s1:expr, $s2:expr, |$a:ident, $b:ident| $body:expr) => {
        match ($s1, $s2) {
            (candle_core::CpuStorage::F32($a), candle_core::CpuStorage::F32($b)) => {
                candle_core::CpuStorage::F32($body)
            }
            (candle_core::CpuStorage::F64($a), candle_core::CpuStorage::F64($b)) => {
                candle_core::CpuStorage::F64($body)
            }
            _ => candle_core::bail!("{}: f32 or f64 only, both the same", $op),
        }
    };
    ($op:literal, $s1:expr, $s2:expr, $s3:expr, |$a:ident, $b:ident, $c:ident| $body:expr) => {
        match ($s1, $s2, $s3) {
            (
                candle_core::CpuStorage::F32($a),
                candle_core::CpuStorage::F32($b),
                candle_core::CpuStorage::F32($c),
            ) => candle_core::CpuStorage::F32($body),
            (
                candle_core::CpuStorage::F64($a),
                candle_core::CpuStorage::F64($b),
                candle_core::CpuStorage::F64($c),
            ) => candle_core::CpuStorage::F64($body),
            _ => candle_core::bail!("{}: f32 or f64 only, all the same", $op),
        }
    };
}
pub(crate) use by_dtype;

/// The contiguous data of a frozen tensor (weights, tables) as `T`.
pub(crate) fn frozen_data<T: Real + candle_core::WithDType>(
    t: &candle_core::Tensor,
) -> Result<Vec<T>> {
    t.flatten_all()?.to_vec1::<T>()
}

/// Rows processed per parallel task: enough to amortize scheduling.
pub(crate) fn min_rows(cols: usize) -> usize {
    (4096 / cols.max(1)).max(1)
}

/// What the kernels' tests share: fused against composed.
#[cfg(test)]
pub(crate) mod check {
    use candle_core::{DType, Tensor, Var};

    pub fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        let d = (a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap()).unwrap();
        let d = d.abs().unwrap().flatten_all().unwrap();
        d.max(0).unwrap().to_scalar::<f64>().unwrap()
    }

    /// `fused` and `composed`, both computed from `input`, agree to `tol`
    /// in value and in the gradient of a random projection of them.
    pub fn same_value_and_gradient(fused: &Tensor, composed: &Tensor, input: &Var, tol: f64) {
        let d = max_diff(fused, composed);
        assert!(d < tol, "values off by {d}");
        let probe = fused.randn_like(0.0, 1.0).unwrap();
        let grad = |y: &Tensor| {
            let g = (y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            g.get(input).expect("a gradient reaches the input").clone()
        };
        let d = max_diff(&grad(fused), &grad(composed));
        assert!(d < tol, "gradients off by {d}");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn exp_f32_is_within_5e7_relative() {
        let mut worst = (0f64, 0f32);
        for i in -86_900..88_000 {
            let x = i as f32 * 1e-3;
            let exact = (x as f64).exp();
            let e = ((super::exp_f32(x) as f64) - exact).abs() / exact;
            if e > worst.0 {
                worst = (e, x);
            }
        }
        assert!(worst.0 < 5e-7, "{worst:?}");
        assert_eq!(super::exp_f32(f32::NEG_INFINITY), super::exp_f32(-87.0));
        assert_eq!(super::exp_f32(0.0), 1.0);
    }
}
