//! SwiGLU, `silu(gate) * up`, the llama MLP's activation: one pass forward;
//! backward gives both inputs' gradients in one pass.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{by_dtype, min_rows, rows2, Real, Rows};

/// `silu(gate) * up` elementwise, differentiable in both.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.apply_op2(up, SwiGlu)
}

struct SwiGlu;

#[inline(always)]
fn sigmoid<T: Real>(x: T) -> T {
    T::ONE / (T::ONE + (-x).exp())
}

fn forward<T: Real>(gate: &[T], rg: Rows, up: &[T], ru: Rows) -> Vec<T> {
    let mut out = vec![T::ZERO; rg.rows * rg.cols];
    out.par_chunks_mut(rg.cols)
        .enumerate()
        .with_min_len(min_rows(rg.cols))
        .for_each(|(i, y)| {
            for ((y, &g), &u) in y.iter_mut().zip(rg.row(gate, i)).zip(ru.row(up, i)) {
                *y = g * sigmoid(g) * u;
            }
        });
    out
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (rg, ru) = rows2(l1, l2, self.name())?;
        let out = by_dtype!("swiglu", s1, s2, |g, u| forward(g, rg, u, ru));
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // Both gradients from one pass, stacked: [d gate; d up].
        let both = gate.apply_op3_no_bwd(up, &grad.contiguous()?, &SwiGluBackward)?;
        let shape = gate.shape();
        let half = shape.elem_count();
        let part = |i: usize| both.narrow(0, i * half, half)?.reshape(shape);
        Ok((Some(part(0)?), Some(part(1)?)))
    }
}

/// Inputs: gate, up and the output gradient; output: `[d gate; d up]`
/// flat, each contiguous in the inputs' shape.
struct SwiGluBackward;

fn backward<T: Real>(gate: &[T], rg: Rows, up: &[T], ru: Rows, g: &[T], rd: Rows) -> Vec<T> {
    let (rows, cols) = (rg.rows, rg.cols);
    let mut out = vec![T::ZERO; 2 * rows * cols];
    let (d_gate, d_up) = out.split_at_mut(rows * cols);
    d_gate
        .par_chunks_mut(cols)
        .zip(d_up.par_chunks_mut(cols))
        .enumerate()
        .with_min_len(min_rows(cols))
        .for_each(|(i, (dg, du))| {
            let (gate, up, grad) = (rg.row(gate, i), ru.row(up, i), rd.row(g, i));
            for k in 0..cols {
                let (x, s) = (gate[k], sigmoid(gate[k]));
                du[k] = grad[k] * x * s;
                dg[k] = grad[k] * up[k] * s * (T::ONE + x * (T::ONE - s));
            }
        });
    out
}

impl CustomOp3 for SwiGluBackward {
    fn name(&self) -> &'static str {
        "swiglu-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (rg, ru) = rows2(l1, l2, self.name())?;
        let (_, rd) = rows2(l1, l3, self.name())?;
        let out = by_dtype!("swiglu-backward", s1, s2, s3, |g, u, d| backward(
            g, rg, u, ru, d, rd
        ));
        Ok((out, Shape::from(2 * l1.shape().elem_count())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::check::{max_diff, same_value_and_gradient};
    use candle_core::{DType, Device, Var};

    /// Against candle's `silu(gate) * up`, with gate and up column slices
    /// of one matrix (as the fused gate/up projection gives them).
    #[test]
    fn matches_composed_silu_times_up() {
        let dev = Device::Cpu;
        let gu = Var::from_tensor(&Tensor::randn(0f64, 3.0, (6, 16), &dev).unwrap()).unwrap();
        let (gate, up) = (gu.narrow(1, 0, 8).unwrap(), gu.narrow(1, 8, 8).unwrap());
        let composed = (gate.silu().unwrap() * &up).unwrap();
        same_value_and_gradient(&swiglu(&gate, &up).unwrap(), &composed, &gu, 1e-12);
        // f32 with the fast exp.
        let (g32, u32_) = (
            gate.to_dtype(DType::F32).unwrap(),
            up.to_dtype(DType::F32).unwrap(),
        );
        assert!(max_diff(&swiglu(&g32, &u32_).unwrap(), &composed) < 1e-4);
    }
}
