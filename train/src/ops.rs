//! Differentiable building blocks for the training path.
//!
//! candle's fused `rms_norm`, `layer_norm`, `rope*` and `softmax_last_dim`
//! have no backward pass (candle issues 2168, 2977, 3568, 3569): gradients
//! through them are silently dropped. On the CPU the norms, RoPE, the
//! attention softmax and SwiGLU run as our own fused kernels with their
//! backward ([`crate::fused`]); elsewhere they are composed here from
//! primitives that have one. [`frozen_linear`] is a matmul against a frozen
//! weight whose backward computes only the input gradient (candle's own
//! matmul backward always computes the weight gradient too, which for a
//! frozen base model is half the backward work thrown away).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, D};

use crate::fused;
use crate::lora::{model_dropout, Dropout};

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

/// RMSNorm as in Hugging Face's `LlamaRMSNorm` (f32): `x / sqrt(mean(x^2) + eps) * w`,
/// `w` frozen.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    if x.device().is_cpu() {
        return fused::norm::rms_norm(x, w, eps);
    }
    composed::rms_norm(x, w, eps)
}

/// LayerNorm as torch's `nn.LayerNorm` (biased variance): `(x - mean) / sqrt(var + eps) * w + b`,
/// `w` and `b` frozen.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    if x.device().is_cpu() {
        return fused::norm::layer_norm(x, w, b, eps);
    }
    composed::layer_norm(x, w, b, eps)
}

/// `silu(gate) * up`, the llama MLP's activation.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if gate.device().is_cpu() {
        return fused::swiglu::swiglu(gate, up);
    }
    gate.silu()? * up
}

/// GELU with the tanh approximation (GPT-2's `gelu_new`).
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() {
        return fused::gelu::gelu_tanh(x);
    }
    x.gelu()
}

/// Rotary embedding in the `rotate_half` layout (Hugging Face llama),
/// `x` (B, H, T, D), `cos`, `sin` (T, D) from [`rope_tables`].
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() {
        return fused::rope::rope(x, cos, sin);
    }
    composed::rope(x, cos, sin)
}

/// The same operations from candle's differentiable primitives: for
/// devices without our kernels, and as the kernels' test references.
pub mod composed {
    use candle_core::{Result, Tensor, D};

    /// RMSNorm from primitives.
    pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
        let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
        let inv = (ms + eps)?.sqrt()?.recip()?;
        x.broadcast_mul(&inv)?.broadcast_mul(w)
    }

    /// LayerNorm from primitives.
    pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
        let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let inv = (var + eps)?.sqrt()?.recip()?;
        centred
            .broadcast_mul(&inv)?
            .broadcast_mul(w)?
            .broadcast_add(b)
    }

    /// RoPE from primitives: `x * cos + rotate_half(x) * sin`.
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
}

/// A frozen weight (out, in) and its bias.
pub struct Affine {
    pub w: Tensor,
    pub b: Tensor,
}

impl Affine {
    /// `x @ w^T + b`, gradients to `x` only.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        frozen_linear(x, &self.w)?.broadcast_add(&self.b)
    }
}

/// A LayerNorm's weight and bias.
pub struct Norm {
    pub w: Tensor,
    pub b: Tensor,
}

impl Norm {
    pub fn forward(&self, x: &Tensor, eps: f64) -> Result<Tensor> {
        layer_norm(x, &self.w, &self.b, eps)
    }
}

/// Sizes of the attention of one batch.
#[derive(Clone, Copy, Debug)]
pub struct Heads {
    pub batch: usize,
    pub len: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl Heads {
    /// Plain multi-head attention (every query head has its own k and v)
    /// over a model `width` wide.
    pub fn multi_head(batch: usize, len: usize, heads: usize, width: usize) -> Self {
        Heads {
            batch,
            len,
            heads,
            kv_heads: heads,
            head_dim: width / heads,
        }
    }
}

/// Causal self-attention of right-padded sequences: `q` (B*T, H*D), `k` and
/// `v` (B*T, KV*D), rotary tables when the model uses RoPE, and the
/// probabilities' dropout when training. Returns (B*T, H*D).
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    s: Heads,
    rope_tables: Option<(&Tensor, &Tensor)>,
    probs_dropout: (f64, &mut Option<&mut Dropout>),
) -> Result<Tensor> {
    let (b, t, hd) = (s.batch, s.len, s.head_dim);
    let groups = s.heads / s.kv_heads;
    let split = |x: &Tensor, h: usize| -> Result<Tensor> {
        x.reshape((b, t, h, hd))?.transpose(1, 2)?.contiguous()
    };
    let (mut q, mut k, v) = (
        split(q, s.heads)?,
        split(k, s.kv_heads)?,
        split(v, s.kv_heads)?,
    );
    if let Some((cos, sin)) = rope_tables {
        q = rope(&q, cos, sin)?;
        k = rope(&k, cos, sin)?;
    }
    let scale = 1.0 / (hd as f64).sqrt();
    // Grouped-query attention without repeating k and v: the query heads
    // that share a kv head are stacked along the rows.
    let q = q.reshape((b, s.kv_heads, groups * t, hd))?;
    let scores = q.matmul(&k.t()?)?;
    let p = if scores.device().is_cpu() {
        fused::softmax::causal_softmax(&scores, scale)?
    } else {
        let mask = causal_mask(groups, t, scores.device())?.to_dtype(scores.dtype())?;
        composed::softmax_last_dim(&(scores * scale)?.broadcast_add(&mask)?)?
    };
    let p = model_dropout(p, probs_dropout.0, probs_dropout.1)?;
    p.matmul(&v)? // (b, kv, groups*t, hd)
        .reshape((b, s.heads, t, hd))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((b * t, s.heads * hd))
}

/// Summed cross-entropy of `logits` (N, V) against `labels` (N) u32.
pub fn cross_entropy_sum(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let picked = shifted.gather(&labels.unsqueeze(1)?, 1)?;
    (lse - picked)?.sum_all()
}

/// Llama 3.1's RoPE scaling (`rope_type = "llama3"`): long wavelengths
/// slowed by `factor`, short ones kept, a smooth blend between.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Llama3Scaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: f64,
}

impl Llama3Scaling {
    /// As transformers' `_compute_llama3_parameters`.
    fn apply(&self, inv_freq: f64) -> f64 {
        let old = self.original_max_position_embeddings;
        let low_wavelen = old / self.low_freq_factor;
        let high_wavelen = old / self.high_freq_factor;
        let wavelen = 2.0 * std::f64::consts::PI / inv_freq;
        if wavelen < high_wavelen {
            inv_freq
        } else if wavelen > low_wavelen {
            inv_freq / self.factor
        } else {
            let smooth = (old / wavelen - self.low_freq_factor)
                / (self.high_freq_factor - self.low_freq_factor);
            (1.0 - smooth) * inv_freq / self.factor + smooth * inv_freq
        }
    }
}

/// (T, D) cos and sin tables for `rotate_half` RoPE with base `theta`.
pub fn rope_tables(
    t: usize,
    head_dim: usize,
    theta: f64,
    scaling: Option<&Llama3Scaling>,
    device: &candle_core::Device,
) -> Result<(Tensor, Tensor)> {
    let half = head_dim / 2;
    let mut cos = Vec::with_capacity(t * head_dim);
    let mut sin = Vec::with_capacity(t * head_dim);
    // Same arithmetic as transformers: inv_freq in f32, then pos * inv_freq in f32.
    let inv: Vec<f32> = (0..half)
        .map(|i| {
            let f = 1.0 / theta.powf((2 * i) as f64 / head_dim as f64);
            scaling.map_or(f, |s| s.apply(f)) as f32
        })
        .collect();
    for pos in 0..t {
        // The table repeats for the two halves of `rotate_half`.
        for _half in 0..2 {
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
