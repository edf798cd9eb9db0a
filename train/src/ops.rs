//! Differentiable building blocks for the training path.
//!
//! candle's fused `rms_norm`, `layer_norm`, `rope*` and `softmax_last_dim`
//! have no backward pass (candle issues 2168, 2977, 3568, 3569): gradients
//! through them are silently dropped. Everything here is written with
//! primitives that do have one, plus [`frozen_linear`], a matmul against a
//! frozen weight whose backward computes only the input gradient (candle's
//! own matmul backward always computes the weight gradient too, which for a
//! frozen base model is half the backward work thrown away).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, D};

/// `x @ w^T` for a frozen `w` (out, in): gradients flow to `x` only.
pub fn frozen_linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let in_dim = *dims.last().expect("rank >= 1");
    let n: usize = dims[..dims.len() - 1].iter().product();
    let x2 = x.reshape((n, in_dim))?;
    let y = x2.detach().matmul(&w.t()?)?.contiguous()?;
    let y = if x.track_op() {
        x2.apply_op2_arc(
            &y,
            std::sync::Arc::new(Box::new(FrozenGrad { w: w.clone() })),
        )?
    } else {
        y
    };
    let mut out = dims;
    *out.last_mut().expect("rank >= 1") = w.dim(0)?;
    y.reshape(out)
}

/// Passes through a precomputed `x @ w^T`; its backward is `grad @ w`.
struct FrozenGrad {
    w: Tensor,
}

impl CustomOp2 for FrozenGrad {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(
        &self,
        _s1: &CpuStorage,
        _l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Ok((s2.try_clone(l2)?, l2.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _s1: &candle_core::CudaStorage,
        _l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        Ok((s2.try_clone(l2)?, l2.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _y: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.matmul(&self.w)?), None))
    }
}

/// RMSNorm as in Hugging Face's `LlamaRMSNorm` (f32): `x / sqrt(mean(x^2) + eps) * w`.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    let inv = (ms + eps)?.sqrt()?.recip()?;
    x.broadcast_mul(&inv)?.broadcast_mul(w)
}

/// Rotary embedding in the `rotate_half` layout (Hugging Face llama):
/// `x * cos + rotate_half(x) * sin`, with `x` (B, H, T, D) and `cos`, `sin` (T, D).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let half = d / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?
}

/// Softmax over the last dimension, from differentiable primitives.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    let s = e.sum_keepdim(D::Minus1)?;
    e.broadcast_div(&s)
}

/// Summed cross-entropy of `logits` (N, V) against `labels` (N) u32.
pub fn cross_entropy_sum(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let picked = shifted.gather(&labels.unsqueeze(1)?, 1)?;
    (lse - picked)?.sum_all()
}

/// (T, D) cos and sin tables for `rotate_half` RoPE with base `theta`.
pub fn rope_tables(
    t: usize,
    head_dim: usize,
    theta: f64,
    device: &candle_core::Device,
) -> Result<(Tensor, Tensor)> {
    let half = head_dim / 2;
    let mut cos = Vec::with_capacity(t * head_dim);
    let mut sin = Vec::with_capacity(t * head_dim);
    // Same arithmetic as transformers: inv_freq in f32, then pos * inv_freq in f32.
    let inv: Vec<f32> = (0..half)
        .map(|i| (1.0 / theta.powf((2 * i) as f64 / head_dim as f64)) as f32)
        .collect();
    for pos in 0..t {
        for rep in 0..2 {
            let _ = rep;
            for f in &inv {
                let a = pos as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
    }
    Ok((
        Tensor::from_vec(cos, (t, head_dim), device)?,
        Tensor::from_vec(sin, (t, head_dim), device)?,
    ))
}

/// Additive causal mask (rows, T) for rows laid out as `groups` blocks of T
/// query positions: row r is position r % T and sees keys 0..=r % T.
pub fn causal_mask(groups: usize, t: usize, device: &candle_core::Device) -> Result<Tensor> {
    let mut m = vec![0f32; groups * t * t];
    for g in 0..groups {
        for i in 0..t {
            for j in (i + 1)..t {
                m[(g * t + i) * t + j] = f32::NEG_INFINITY;
            }
        }
    }
    Tensor::from_vec(m, (groups * t, t), device)?.to_dtype(DType::F32)
}
