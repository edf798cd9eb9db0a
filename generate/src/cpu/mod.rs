//! A llama decoder for the CPU on GGUF weights, written for generation speed:
//! quantized matrix products with SIMD kernels ([`quant`]), q/k/v and
//! gate/up fused into one product each, a KV cache per sequence that grows in
//! place, and one forward pass over any number of sequences, each adding any
//! number of tokens (a prompt, or one token per sequence while decoding).
//!
//! A sequence's numbers never depend on the other sequences of its pass, so
//! batching changes speed, not text.

mod attention;
mod math;
mod pool;
mod quant;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::Device;

pub use quant::{Acts, Format, QMatrix};

use crate::{GenError, Result};

#[derive(Clone, Debug)]
pub struct Config {
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub n_ff: usize,
    pub vocab: usize,
    /// Longest sequence run: the model's training context, at most 32K
    /// (the rope table's size).
    pub context: usize,
    rope_dim: usize,
    rope_base: f64,
    eps: f32,
}

struct Layer {
    attn_norm: Vec<f32>,
    /// q, k and v projections stacked: one product per layer.
    qkv: QMatrix,
    wo: QMatrix,
    ffn_norm: Vec<f32>,
    /// gate and up projections stacked.
    gate_up: QMatrix,
    down: QMatrix,
}

pub struct CpuLlama {
    cfg: Config,
    embed: QMatrix,
    /// `None`: tied to the embedding.
    output: Option<QMatrix>,
    norm: Vec<f32>,
    layers: Vec<Layer>,
    /// cos and sin of every position's rotation angles, `rope_dim / 2` each.
    cos: Vec<f32>,
    sin: Vec<f32>,
}

/// The keys and values a sequence has seen: one growing buffer per layer
/// and key-value head (`[layer * n_kv_head + head]`), position-major, so a
/// head's attention reads one contiguous run.
#[derive(Default)]
pub struct Cache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    len: usize,
}

impl Cache {
    /// Tokens processed so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// One sequence's part of a forward pass: its cache and the tokens it adds.
pub struct Step<'a> {
    pub cache: &'a mut Cache,
    pub tokens: &'a [u32],
}

fn cerr(e: candle_core::Error) -> GenError {
    GenError::Other(format!("candle: {e}"))
}

/// Rope cos/sin tables are built for at most this many positions.
const MAX_TABLE: usize = 32 * 1024;

impl CpuLlama {
    /// Reads a llama GGUF. Q4_0, Q4_1 and Q8_0 matrices run as they are;
    /// other formats (F16, F32, k-quants) are converted to Q8_0.
    pub fn from_gguf(content: &gguf_file::Content, file: &mut std::fs::File) -> Result<Self> {
        let md = |k: &str| {
            content
                .metadata
                .get(k)
                .ok_or_else(|| GenError::Other(format!("GGUF metadata: `{k}` is missing")))
        };
        let arch = md("general.architecture")?
            .to_string()
            .map_err(cerr)?
            .clone();
        if arch != "llama" {
            return Err(GenError::Other(format!(
                "GGUF architecture `{arch}`: the local generator runs llama models"
            )));
        }
        // Block, head and width counts, the rope dimension and the context
        // are checked against the tensors before anything is sized by them.
        flow_models::guard::check_llama_hparams(content, std::path::Path::new("(GGUF)"))
            .map_err(|e| GenError::Model(e.into()))?;
        let num = |k: &str| -> Result<usize> {
            Ok(md(&format!("llama.{k}"))?.to_u32().map_err(cerr)? as usize)
        };
        let n_embd = num("embedding_length")?;
        let n_head = num("attention.head_count")?;
        if n_head == 0 || !n_embd.is_multiple_of(n_head) {
            return Err(GenError::Other(format!(
                "GGUF: {n_head} attention heads do not divide the width {n_embd}"
            )));
        }
        let head_dim = n_embd / n_head;
        let embed = matrix(&tensor(content, file, "token_embd.weight")?)?;
        let cfg = Config {
            n_layer: num("block_count")?,
            n_embd,
            n_head,
            n_kv_head: num("attention.head_count_kv").unwrap_or(n_head),
            head_dim,
            n_ff: num("feed_forward_length")?,
            vocab: embed.rows(),
            context: num("context_length").unwrap_or(4096).min(MAX_TABLE),
            rope_dim: num("rope.dimension_count").unwrap_or(head_dim),
            rope_base: md("llama.rope.freq_base")
                .and_then(|v| v.to_f32().map_err(cerr))
                .unwrap_or(10000.0) as f64,
            eps: md("llama.attention.layer_norm_rms_epsilon")?
                .to_f32()
                .map_err(cerr)?,
        };
        let output = match content.tensor_infos.contains_key("output.weight") {
            true => Some(matrix(&tensor(content, file, "output.weight")?)?),
            false => None,
        };
        let norm = vector(&tensor(content, file, "output_norm.weight")?)?;
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for l in 0..cfg.n_layer {
            let mut get = |name: &str| tensor(content, file, &format!("blk.{l}.{name}.weight"));
            let qkv = stack(
                l,
                "attn_q, attn_k and attn_v",
                vec![
                    matrix(&get("attn_q")?)?,
                    matrix(&get("attn_k")?)?,
                    matrix(&get("attn_v")?)?,
                ],
            )?;
            let gate_up = stack(
                l,
                "ffn_gate and ffn_up",
                vec![matrix(&get("ffn_gate")?)?, matrix(&get("ffn_up")?)?],
            )?;
            layers.push(Layer {
                attn_norm: vector(&get("attn_norm")?)?,
                qkv,
                wo: matrix(&get("attn_output")?)?,
                ffn_norm: vector(&get("ffn_norm")?)?,
                gate_up,
                down: matrix(&get("ffn_down")?)?,
            });
        }
        // Llama 3.1+ scale RoPE per frequency; llama.cpp stores the divisors here.
        let factors = match content.tensor_infos.contains_key("rope_freqs.weight") {
            true => Some(vector(&tensor(content, file, "rope_freqs.weight")?)?),
            false => None,
        };
        if factors
            .as_ref()
            .is_some_and(|f| f.len() != cfg.rope_dim / 2)
        {
            return Err(GenError::Other(
                "GGUF: rope_freqs.weight does not have one factor per rotated pair".into(),
            ));
        }
        let (cos, sin) = rope_tables(&cfg, factors.as_deref());
        let model = CpuLlama {
            cfg,
            embed,
            output,
            norm,
            layers,
            cos,
            sin,
        };
        model.check_shapes()?;
        Ok(model)
    }

    fn check_shapes(&self) -> Result<()> {
        let c = &self.cfg;
        let kv = c.n_kv_head * c.head_dim;
        let bad = |what: &str| {
            Err(GenError::Other(format!(
                "GGUF: {what} has an unexpected shape"
            )))
        };
        if c.n_kv_head == 0
            || !c.n_head.is_multiple_of(c.n_kv_head)
            || c.rope_dim > c.head_dim
            || !c.rope_dim.is_multiple_of(2)
        {
            return bad("the attention configuration");
        }
        for (i, l) in self.layers.iter().enumerate() {
            let ok = l.qkv.rows() == c.n_embd + 2 * kv
                && l.qkv.cols() == c.n_embd
                && (l.wo.rows(), l.wo.cols()) == (c.n_embd, c.n_embd)
                && (l.gate_up.rows(), l.gate_up.cols()) == (2 * c.n_ff, c.n_embd)
                && (l.down.rows(), l.down.cols()) == (c.n_embd, c.n_ff)
                && l.attn_norm.len() == c.n_embd
                && l.ffn_norm.len() == c.n_embd;
            if !ok {
                return bad(&format!("layer {i}"));
            }
        }
        if self.output().cols() != c.n_embd || self.norm.len() != c.n_embd {
            return bad("the output layer");
        }
        Ok(())
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    fn output(&self) -> &QMatrix {
        self.output.as_ref().unwrap_or(&self.embed)
    }

    /// Runs every step's tokens through the model, appending them to the
    /// step's cache, and returns the logits after each step's last token.
    pub fn forward(&self, steps: &mut [Step]) -> Result<Vec<Vec<f32>>> {
        let c = &self.cfg;
        let (d, hd) = (c.n_embd, c.head_dim);
        let (q_dim, kv_dim) = (c.n_head * hd, c.n_kv_head * hd);
        // (step, position) of every row of this pass.
        let mut rows: Vec<(usize, usize)> = Vec::new();
        for (s, step) in steps.iter_mut().enumerate() {
            if step.tokens.is_empty() {
                return Err(GenError::Other("a forward step without tokens".into()));
            }
            let end = step.cache.len + step.tokens.len();
            if end > c.context {
                return Err(GenError::Other(format!(
                    "the sequence would reach {end} tokens; the model takes at most {}",
                    c.context
                )));
            }
            if let Some(t) = step.tokens.iter().find(|&&t| t as usize >= c.vocab) {
                return Err(GenError::Other(format!(
                    "token id {t} is outside the vocabulary"
                )));
            }
            if step.cache.k.is_empty() {
                step.cache.k = vec![Vec::new(); c.n_layer * c.n_kv_head];
                step.cache.v = vec![Vec::new(); c.n_layer * c.n_kv_head];
            }
            rows.extend((0..step.tokens.len()).map(|j| (s, step.cache.len + j)));
        }
        let n = rows.len();
        let mut x = vec![0f32; n * d];
        let tokens = steps.iter().flat_map(|s| s.tokens.iter());
        for (xr, &t) in x.chunks_exact_mut(d).zip(tokens) {
            self.embed.row_f32(t as usize, xr);
        }
        let mut xn = vec![0f32; n * d];
        let mut acts = Acts::default();
        let mut qkv = vec![0f32; n * (q_dim + 2 * kv_dim)];
        let mut att = vec![0f32; n * q_dim];
        let mut proj = vec![0f32; n * d];
        let mut gu = vec![0f32; n * 2 * c.n_ff];
        let mut h = vec![0f32; n * c.n_ff];
        for (l, layer) in self.layers.iter().enumerate() {
            // This layer's key-value heads in every cache.
            let heads = l * c.n_kv_head..(l + 1) * c.n_kv_head;
            rms_norm(&x, &layer.attn_norm, c.eps, &mut xn);
            acts.quantize(&xn, d);
            layer.qkv.matmul(&acts, &mut qkv);
            for (row, &(s, pos)) in qkv.chunks_exact_mut(q_dim + 2 * kv_dim).zip(&rows) {
                let (q, kv) = row.split_at_mut(q_dim);
                let (k, v) = kv.split_at_mut(kv_dim);
                self.rope(q, pos);
                self.rope(k, pos);
                let cache = &mut steps[s].cache;
                for ((ck, cv), (k, v)) in cache.k[heads.clone()]
                    .iter_mut()
                    .zip(&mut cache.v[heads.clone()])
                    .zip(k.chunks_exact(hd).zip(v.chunks_exact(hd)))
                {
                    ck.extend_from_slice(k);
                    cv.extend_from_slice(v);
                }
            }
            let keys: Vec<&[Vec<f32>]> = steps.iter().map(|s| &s.cache.k[heads.clone()]).collect();
            let values: Vec<&[Vec<f32>]> =
                steps.iter().map(|s| &s.cache.v[heads.clone()]).collect();
            self.attention(&qkv, &rows, &keys, &values, &mut att);
            acts.quantize(&att, q_dim);
            layer.wo.matmul(&acts, &mut proj);
            add(&mut x, &proj);

            rms_norm(&x, &layer.ffn_norm, c.eps, &mut xn);
            acts.quantize(&xn, d);
            layer.gate_up.matmul(&acts, &mut gu);
            for (hr, g_u) in h.chunks_exact_mut(c.n_ff).zip(gu.chunks_exact(2 * c.n_ff)) {
                let (g, u) = g_u.split_at(c.n_ff);
                math::swiglu(g, u, hr);
            }
            acts.quantize(&h, c.n_ff);
            layer.down.matmul(&acts, &mut proj);
            add(&mut x, &proj);
        }
        for step in steps.iter_mut() {
            step.cache.len += step.tokens.len();
        }
        // Only each step's last row goes on to the (large) output layer.
        let mut last = Vec::with_capacity(steps.len() * d);
        let mut end = 0;
        for step in steps.iter() {
            end += step.tokens.len();
            last.extend_from_slice(&x[(end - 1) * d..end * d]);
        }
        let mut last_n = vec![0f32; last.len()];
        rms_norm(&last, &self.norm, c.eps, &mut last_n);
        acts.quantize(&last_n, d);
        let mut logits = vec![0f32; steps.len() * c.vocab];
        self.output().matmul(&acts, &mut logits);
        Ok(logits.chunks_exact(c.vocab).map(<[f32]>::to_vec).collect())
    }

    /// Rotates each head of `x` by the angles of `pos` (llama's interleaved
    /// pairs: GGUF stores q and k permuted for it).
    fn rope(&self, x: &mut [f32], pos: usize) {
        let half = self.cfg.rope_dim / 2;
        let cos = &self.cos[pos * half..(pos + 1) * half];
        let sin = &self.sin[pos * half..(pos + 1) * half];
        for head in x.chunks_exact_mut(self.cfg.head_dim) {
            for i in 0..half {
                let (a, b) = (head[2 * i], head[2 * i + 1]);
                head[2 * i] = a * cos[i] - b * sin[i];
                head[2 * i + 1] = a * sin[i] + b * cos[i];
            }
        }
    }

    /// Causal attention of every row's query heads over its sequence's cache.
    fn attention(
        &self,
        qkv: &[f32],
        rows: &[(usize, usize)],
        keys: &[&[Vec<f32>]],
        values: &[&[Vec<f32>]],
        out: &mut [f32],
    ) {
        let c = &self.cfg;
        let hd = c.head_dim;
        let (q_dim, kv_dim) = (c.n_head * hd, c.n_kv_head * hd);
        let group = c.n_head / c.n_kv_head;
        let scale = 1.0 / (hd as f32).sqrt();
        let head = |i: usize, o: &mut [f32]| {
            let (r, h) = (i / c.n_head, i % c.n_head);
            let (s, pos) = rows[r];
            let head = attention::Head {
                q: &qkv[r * (q_dim + 2 * kv_dim) + h * hd..][..hd],
                keys: &keys[s][h / group],
                values: &values[s][h / group],
                len: pos + 1,
                scale,
            };
            attention::attend(&head, o);
        };
        let work: usize = rows.iter().map(|&(_, pos)| pos + 1).sum::<usize>() * c.n_head * hd;
        if work < 1 << 14 {
            out.chunks_exact_mut(hd)
                .enumerate()
                .for_each(|(i, o)| head(i, o));
        } else {
            let heads = out.len() / hd;
            let out = pool::SendPtr::new(out);
            pool::parallel(heads, |i| {
                // SAFETY: head i owns out[i * hd..(i + 1) * hd].
                head(i, unsafe {
                    std::slice::from_raw_parts_mut(out.at(i * hd), hd)
                })
            });
        }
    }
}

fn tensor(content: &gguf_file::Content, file: &mut std::fs::File, name: &str) -> Result<QTensor> {
    content
        .tensor(file, name, &Device::Cpu)
        .map_err(|e| GenError::Other(format!("GGUF tensor `{name}`: {e}")))
}

/// [`QMatrix::stack`], an error (not a panic) where the widths differ.
fn stack(layer: usize, what: &str, parts: Vec<QMatrix>) -> Result<QMatrix> {
    if parts.iter().any(|p| p.cols() != parts[0].cols()) {
        let widths: Vec<usize> = parts.iter().map(|p| p.cols()).collect();
        return Err(GenError::Other(format!(
            "GGUF: layer {layer}: {what} have different widths {widths:?}"
        )));
    }
    Ok(QMatrix::stack(parts))
}

fn matrix(t: &QTensor) -> Result<QMatrix> {
    let dims = t.shape().dims();
    let (rows, cols) = match dims {
        [r, c] => (*r, *c),
        _ => return Err(GenError::Other(format!("a matrix of shape {dims:?}"))),
    };
    if !cols.is_multiple_of(quant::BLOCK) {
        return Err(GenError::Other(format!(
            "a matrix {cols} wide: the local generator needs widths in multiples of {}",
            quant::BLOCK
        )));
    }
    let format = match t.dtype() {
        GgmlDType::Q4_0 => Some(Format::Q4_0),
        GgmlDType::Q4_1 => Some(Format::Q4_1),
        GgmlDType::Q8_0 => Some(Format::Q8_0),
        _ => None,
    };
    Ok(match format {
        Some(f) => QMatrix::from_ggml(f, rows, cols, &t.data().map_err(cerr)?),
        None => QMatrix::quantize_q8_0(rows, cols, &vector(t)?),
    })
}

fn vector(t: &QTensor) -> Result<Vec<f32>> {
    t.dequantize(&Device::Cpu)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(cerr)
}

/// cos/sin of every position's angles; `factors` divide the frequencies
/// (llama.cpp's `rope_freqs`, Llama 3.1+'s long-context scaling).
fn rope_tables(c: &Config, factors: Option<&[f32]>) -> (Vec<f32>, Vec<f32>) {
    let half = c.rope_dim / 2;
    let positions = c.context;
    let freqs: Vec<f64> = (0..half)
        .map(|i| {
            let f = c.rope_base.powf(-((2 * i) as f64) / c.rope_dim as f64);
            f / factors.map_or(1.0, |fs| fs[i] as f64)
        })
        .collect();
    let mut cos = Vec::with_capacity(positions * half);
    let mut sin = Vec::with_capacity(positions * half);
    for p in 0..positions {
        for f in &freqs {
            let a = p as f64 * f;
            cos.push(a.cos() as f32);
            sin.push(a.sin() as f32);
        }
    }
    (cos, sin)
}

fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let ms = math::dot(xr, xr) / d as f32;
        let s = 1.0 / (ms + eps).sqrt();
        for ((o, &v), &w) in or.iter_mut().zip(xr).zip(w) {
            *o = v * s * w;
        }
    }
}

fn add(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(x, y)| *x += y);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_frequency_factors_divide_the_frequencies() {
        let c = Config {
            n_layer: 1,
            n_embd: 8,
            n_head: 1,
            n_kv_head: 1,
            head_dim: 8,
            n_ff: 8,
            vocab: 8,
            context: 4,
            rope_dim: 8,
            rope_base: 10000.0,
            eps: 1e-5,
        };
        let (plain_cos, _) = rope_tables(&c, None);
        let (cos, sin) = rope_tables(&c, Some(&[1.0, 2.0, 4.0, 8.0]));
        // A factor of 1 leaves the first pair as it was; the others turn slower.
        assert_eq!(cos[4], plain_cos[4]);
        assert!(cos[5] > plain_cos[5]);
        // Position 3, pair i: angle 3 * 10000^(-2i/8) / factor_i.
        for (i, factor) in [1.0f64, 2.0, 4.0, 8.0].iter().enumerate() {
            let angle = 3.0 * 10000f64.powf(-((2 * i) as f64) / 8.0) / factor;
            assert!((cos[3 * 4 + i] as f64 - angle.cos()).abs() < 1e-6);
            assert!((sin[3 * 4 + i] as f64 - angle.sin()).abs() < 1e-6);
        }
    }
}
