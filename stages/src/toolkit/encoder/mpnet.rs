//! The MPNet encoder (all-mpnet-base-v2, the paper's Fig. 4 model), as
//! Hugging Face's `MPNetModel` computes it: word + learned position
//! embeddings (positions counted from `pad_token_id + 1`, as RoBERTa), then
//! post-norm BERT-style layers whose attention adds a T5-style relative
//! position bias (32 buckets, shared by all layers).
//!
//! candle-transformers has no MPNet; inference only, so candle-nn's fused
//! ops are fine here.

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{embedding, layer_norm, linear, Embedding, LayerNorm, Linear, VarBuilder};

/// `config.json` of an MPNet checkpoint.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_buckets")]
    pub relative_attention_num_buckets: usize,
    #[serde(default = "default_pad")]
    pub pad_token_id: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
}

fn default_eps() -> f64 {
    1e-5
}
fn default_buckets() -> usize {
    32
}
fn default_pad() -> usize {
    1
}
fn default_act() -> String {
    "gelu".into()
}

/// T5's bucketing of a relative position (bidirectional, max distance 128).
fn bucket(relative: i64, num_buckets: usize) -> u32 {
    let half = (num_buckets / 2) as i64;
    let n = -relative;
    let mut ret = if n < 0 { half } else { 0 };
    let n = n.abs();
    let max_exact = half / 2;
    ret += if n < max_exact {
        n
    } else {
        let large = max_exact as f32
            + ((n as f32 / max_exact as f32).ln() / (128f32 / max_exact as f32).ln()
                * (half - max_exact) as f32);
        (large as i64).min(half - 1)
    };
    ret as u32
}

struct Layer {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    attn_norm: LayerNorm,
    up: Linear,
    down: Linear,
    out_norm: LayerNorm,
}

pub struct MpNet {
    words: Embedding,
    positions: Embedding,
    embed_norm: LayerNorm,
    layers: Vec<Layer>,
    relative_bias: Embedding,
    config: Config,
}

impl MpNet {
    pub fn load(vb: VarBuilder, config: &Config) -> Result<Self> {
        if config.hidden_act != "gelu" {
            candle_core::bail!("MPNet hidden_act `{}` is not supported", config.hidden_act);
        }
        // Checkpoints saved from a wrapper prefix every name with `mpnet.`.
        let vb = if vb.contains_tensor("mpnet.embeddings.word_embeddings.weight") {
            vb.pp("mpnet")
        } else {
            vb
        };
        let (d, ff, eps) = (
            config.hidden_size,
            config.intermediate_size,
            config.layer_norm_eps,
        );
        let e = vb.pp("embeddings");
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let l = vb.pp(format!("encoder.layer.{i}"));
            let a = l.pp("attention");
            layers.push(Layer {
                q: linear(d, d, a.pp("attn.q"))?,
                k: linear(d, d, a.pp("attn.k"))?,
                v: linear(d, d, a.pp("attn.v"))?,
                o: linear(d, d, a.pp("attn.o"))?,
                attn_norm: layer_norm(d, eps, a.pp("LayerNorm"))?,
                up: linear(d, ff, l.pp("intermediate.dense"))?,
                down: linear(ff, d, l.pp("output.dense"))?,
                out_norm: layer_norm(d, eps, l.pp("output.LayerNorm"))?,
            });
        }
        Ok(MpNet {
            words: embedding(config.vocab_size, d, e.pp("word_embeddings"))?,
            positions: embedding(
                config.max_position_embeddings,
                d,
                e.pp("position_embeddings"),
            )?,
            embed_norm: layer_norm(d, eps, e.pp("LayerNorm"))?,
            relative_bias: embedding(
                config.relative_attention_num_buckets,
                config.num_attention_heads,
                vb.pp("encoder.relative_attention_bias"),
            )?,
            layers,
            config: config.clone(),
        })
    }

    /// Position ids as `create_position_ids_from_input_ids`: padding keeps
    /// `pad`, real tokens count up from `pad + 1`.
    fn position_ids(&self, mask: &[f32], b: usize, t: usize, dev: &Device) -> Result<Tensor> {
        let pad = self.config.pad_token_id as u32;
        let mut ids = vec![pad; b * t];
        for r in 0..b {
            let mut n = 0;
            for c in 0..t {
                if mask[r * t + c] > 0.0 {
                    n += 1;
                    ids[r * t + c] = pad + n;
                }
            }
        }
        Tensor::from_vec(ids, (b, t), dev)
    }

    /// (1, H, T, T) relative position bias.
    fn position_bias(&self, t: usize, dev: &Device) -> Result<Tensor> {
        let buckets: Vec<u32> = (0..t)
            .flat_map(|q| {
                (0..t).map(move |k| {
                    bucket(
                        k as i64 - q as i64,
                        self.config.relative_attention_num_buckets,
                    )
                })
            })
            .collect();
        let buckets = Tensor::from_vec(buckets, (t, t), dev)?;
        self.relative_bias
            .forward(&buckets)? // (T, T, H)
            .permute((2, 0, 1))?
            .unsqueeze(0)?
            .contiguous()
    }

    /// Final hidden states (B, T, D) of right-padded `ids` with `mask` (B, T) of 1/0.
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let dev = ids.device();
        let h = self.config.num_attention_heads;
        let d = self.config.hidden_size;
        let hd = d / h;
        let mask_v: Vec<f32> = mask.flatten_all()?.to_vec1()?;
        let pos = self.position_ids(&mask_v, b, t, dev)?;
        let x = (self.words.forward(ids)? + self.positions.forward(&pos)?)?;
        let mut x = self.embed_norm.forward(&x)?;
        // Padding keys get a large negative score, as HF's extended mask.
        let key_mask = ((mask.to_dtype(DType::F32)? - 1.0)? * 1e9)?.reshape((b, 1, 1, t))?;
        let bias = self.position_bias(t, dev)?.broadcast_add(&key_mask)?;
        let heads = |y: Tensor| -> Result<Tensor> {
            y.reshape((b, t, h, hd))?.transpose(1, 2)?.contiguous()
        };
        for l in &self.layers {
            let q = heads(l.q.forward(&x)?)?;
            let k = heads(l.k.forward(&x)?)?;
            let v = heads(l.v.forward(&x)?)?;
            let scores = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?.broadcast_add(&bias)?;
            let p = candle_nn::ops::softmax(&scores, D::Minus1)?;
            let c = p.matmul(&v)?.transpose(1, 2)?.reshape((b, t, d))?;
            let a = l.attn_norm.forward(&(l.o.forward(&c)? + &x)?)?;
            let f = l.up.forward(&a)?.gelu_erf()?;
            x = l.out_norm.forward(&(l.down.forward(&f)? + a)?)?;
        }
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::bucket;

    #[test]
    fn relative_positions_fall_in_t5_buckets() {
        // Exact buckets for |n| < 8, one side in 0..16 and the other in 16..32.
        assert_eq!(bucket(0, 32), 0);
        assert_eq!(bucket(-3, 32), 3);
        assert_eq!(bucket(3, 32), 19);
        // Logarithmic beyond, capped at the last bucket of each side.
        assert_eq!(bucket(-8, 32), 8);
        assert_eq!(bucket(-500, 32), 15);
        assert_eq!(bucket(500, 32), 31);
    }
}
