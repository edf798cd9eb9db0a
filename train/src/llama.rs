//! The llama architecture (SmolLM2, Llama 3.x) with LoRA-capable linear
//! layers, matching Hugging Face's `LlamaForCausalLM`: RMSNorm, `rotate_half`
//! RoPE with the configured theta, grouped-query attention, SwiGLU MLP and
//! optionally tied embeddings.
//!
//! Base weights are plain tensors (never variables), so the base is frozen;
//! the LoRA matrices are [`Var`]s. Linear layers that share an input are
//! fused into one matmul (q/k/v, gate/up).

use std::collections::BTreeMap;

use anyhow::{bail, Context as _, Result};
use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::ops;

/// Architecture hyperparameters, read from the weights' metadata.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
}

impl Config {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// A tiny random-weight config for tests.
    pub fn tiny() -> Self {
        Config {
            vocab_size: 64,
            hidden_size: 16,
            intermediate_size: 24,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            max_position_embeddings: 64,
            tie_word_embeddings: true,
        }
    }

    /// `(in, out)` of a projection by its Hugging Face name.
    pub fn module_shape(&self, module: &str) -> Result<(usize, usize)> {
        let d = self.hidden_size;
        let kv = self.num_key_value_heads * self.head_dim();
        let ff = self.intermediate_size;
        Ok(match module {
            "q_proj" | "o_proj" => (d, d),
            "k_proj" | "v_proj" => (d, kv),
            "gate_proj" | "up_proj" => (d, ff),
            "down_proj" => (ff, d),
            other => bail!(
                "unknown LoRA target module `{other}` (llama has q_proj, k_proj, v_proj, \
                 o_proj, gate_proj, up_proj, down_proj)"
            ),
        })
    }
}

pub const MODULES: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// Base weights of one decoder layer, in Hugging Face orientation (out, in).
pub struct Layer {
    pub input_layernorm: Tensor,
    /// q, k and v stacked: (d + 2 kv, d).
    pub qkv: Tensor,
    pub o_proj: Tensor,
    pub post_attention_layernorm: Tensor,
    /// gate and up stacked: (2 ff, d).
    pub gate_up: Tensor,
    pub down_proj: Tensor,
}

pub struct Llama {
    pub config: Config,
    pub embed_tokens: Tensor,
    pub layers: Vec<Layer>,
    pub norm: Tensor,
    /// The output projection (the embedding when tied).
    pub lm_head: Tensor,
    pub device: Device,
}

impl Llama {
    /// Builds the model from Hugging Face-named tensors
    /// (`model.layers.0.self_attn.q_proj.weight`, ...), `rotate_half` layout.
    pub fn from_tensors(
        config: Config,
        mut t: BTreeMap<String, Tensor>,
        device: &Device,
    ) -> Result<Self> {
        let mut take = |name: &str| -> Result<Tensor> {
            let w = t
                .remove(name)
                .with_context(|| format!("weights have no tensor `{name}`"))?;
            Ok(w.to_dtype(DType::F32)?.to_device(device)?.contiguous()?)
        };
        let embed_tokens = take("model.embed_tokens.weight")?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let q = take(&format!("{p}.self_attn.q_proj.weight"))?;
            let k = take(&format!("{p}.self_attn.k_proj.weight"))?;
            let v = take(&format!("{p}.self_attn.v_proj.weight"))?;
            let gate = take(&format!("{p}.mlp.gate_proj.weight"))?;
            let up = take(&format!("{p}.mlp.up_proj.weight"))?;
            layers.push(Layer {
                input_layernorm: take(&format!("{p}.input_layernorm.weight"))?,
                qkv: Tensor::cat(&[&q, &k, &v], 0)?.contiguous()?,
                o_proj: take(&format!("{p}.self_attn.o_proj.weight"))?,
                post_attention_layernorm: take(&format!("{p}.post_attention_layernorm.weight"))?,
                gate_up: Tensor::cat(&[&gate, &up], 0)?.contiguous()?,
                down_proj: take(&format!("{p}.mlp.down_proj.weight"))?,
            });
        }
        let norm = take("model.norm.weight")?;
        let lm_head = if config.tie_word_embeddings {
            embed_tokens.clone()
        } else {
            take("lm_head.weight")?
        };
        Ok(Llama {
            config,
            embed_tokens,
            layers,
            norm,
            lm_head,
            device: device.clone(),
        })
    }

    /// The same model with every weight in `dtype` (f64 for gradient checks).
    pub fn to_dtype(mut self, dtype: DType) -> Result<Self> {
        let cv = |t: &Tensor| t.to_dtype(dtype);
        self.embed_tokens = cv(&self.embed_tokens)?;
        self.norm = cv(&self.norm)?;
        self.lm_head = cv(&self.lm_head)?;
        for l in &mut self.layers {
            l.input_layernorm = cv(&l.input_layernorm)?;
            l.qkv = cv(&l.qkv)?;
            l.o_proj = cv(&l.o_proj)?;
            l.post_attention_layernorm = cv(&l.post_attention_layernorm)?;
            l.gate_up = cv(&l.gate_up)?;
            l.down_proj = cv(&l.down_proj)?;
        }
        Ok(self)
    }

    pub fn dtype(&self) -> DType {
        self.embed_tokens.dtype()
    }

    /// Random weights (tests).
    pub fn random(config: Config, seed: u64, device: &Device) -> Result<Self> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut t = BTreeMap::new();
        let mut rand = |shape: (usize, usize), scale: f32| -> Result<Tensor> {
            let v: Vec<f32> = (0..shape.0 * shape.1)
                .map(|_| rng.random_range(-scale..scale))
                .collect();
            Ok(Tensor::from_vec(v, shape, device)?)
        };
        let d = config.hidden_size;
        t.insert(
            "model.embed_tokens.weight".into(),
            rand((config.vocab_size, d), 1.0)?,
        );
        for i in 0..config.num_hidden_layers {
            let p = format!("model.layers.{i}");
            for m in MODULES {
                let (inp, out) = config.module_shape(m)?;
                let group = if m.ends_with("_proj") && m.len() == 6 {
                    "self_attn"
                } else {
                    "mlp"
                };
                t.insert(
                    format!("{p}.{group}.{m}.weight"),
                    rand((out, inp), 1.0 / (inp as f32).sqrt())?,
                );
            }
            for n in ["input_layernorm", "post_attention_layernorm"] {
                let w = (rand((1, d), 0.2)? + 1.0)?.squeeze(0)?;
                t.insert(format!("{p}.{n}.weight"), w);
            }
        }
        t.insert(
            "model.norm.weight".into(),
            (rand((1, d), 0.2)? + 1.0)?.squeeze(0)?,
        );
        Llama::from_tensors(config, t, device)
    }

    /// Final hidden states (B*T, d) of right-padded `ids` (B, T).
    pub fn hidden(
        &self,
        ids: &Tensor,
        lora: Option<&Lora>,
        dropout: Option<&mut Dropout>,
    ) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let cfg = &self.config;
        let d = cfg.hidden_size;
        let hd = cfg.head_dim();
        let nh = cfg.num_attention_heads;
        let nkv = cfg.num_key_value_heads;
        let groups = nh / nkv;
        let kv = nkv * hd;
        let n = b * t;
        let dt = self.dtype();
        let (cos, sin) = ops::rope_tables(t, hd, cfg.rope_theta, &self.device)?;
        let (cos, sin) = (cos.to_dtype(dt)?, sin.to_dtype(dt)?);
        let mask = ops::causal_mask(groups, t, &self.device)?.to_dtype(dt)?;
        let scale = 1.0 / (hd as f64).sqrt();
        let mut dropout = dropout;

        let mut x = self.embed_tokens.index_select(&ids.flatten_all()?, 0)?; // (n, d)
        for (li, layer) in self.layers.iter().enumerate() {
            let h = ops::rms_norm(&x, &layer.input_layernorm, cfg.rms_norm_eps)?;
            let qkv = ops::frozen_linear(&h, &layer.qkv)?;
            let mut q = qkv.narrow(1, 0, d)?;
            let mut k = qkv.narrow(1, d, kv)?;
            let mut v = qkv.narrow(1, d + kv, kv)?;
            if let Some(lora) = lora {
                for (m, y) in [("q_proj", &mut q), ("k_proj", &mut k), ("v_proj", &mut v)] {
                    if let Some(a) = lora.get(li, m) {
                        *y = (&*y + a.forward(&h, dropout.as_deref_mut())?)?;
                    }
                }
            }
            let q = q.reshape((b, t, nh, hd))?.transpose(1, 2)?.contiguous()?;
            let k = k.reshape((b, t, nkv, hd))?.transpose(1, 2)?.contiguous()?;
            let v = v.reshape((b, t, nkv, hd))?.transpose(1, 2)?.contiguous()?;
            let q = (ops::rope(&q, &cos, &sin)? * scale)?;
            let k = ops::rope(&k, &cos, &sin)?;
            // Grouped-query attention without repeating k and v: the query
            // heads that share a kv head are stacked along the rows.
            let q = q.reshape((b, nkv, groups * t, hd))?;
            let scores = q.matmul(&k.t()?)?.broadcast_add(&mask)?;
            let p = ops::softmax_last_dim(&scores)?;
            let o = p.matmul(&v)?; // (b, nkv, groups*t, hd)
            let o = o
                .reshape((b, nh, t, hd))?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((n, d))?;
            let mut attn = ops::frozen_linear(&o, &layer.o_proj)?;
            if let Some(a) = lora.and_then(|l| l.get(li, "o_proj")) {
                attn = (attn + a.forward(&o, dropout.as_deref_mut())?)?;
            }
            x = (x + attn)?;

            let h = ops::rms_norm(&x, &layer.post_attention_layernorm, cfg.rms_norm_eps)?;
            let ff = cfg.intermediate_size;
            let gu = ops::frozen_linear(&h, &layer.gate_up)?;
            let mut gate = gu.narrow(1, 0, ff)?;
            let mut up = gu.narrow(1, ff, ff)?;
            if let Some(lora) = lora {
                for (m, y) in [("gate_proj", &mut gate), ("up_proj", &mut up)] {
                    if let Some(a) = lora.get(li, m) {
                        *y = (&*y + a.forward(&h, dropout.as_deref_mut())?)?;
                    }
                }
            }
            let act = (gate.silu()? * up)?;
            let mut down = ops::frozen_linear(&act, &layer.down_proj)?;
            if let Some(a) = lora.and_then(|l| l.get(li, "down_proj")) {
                down = (down + a.forward(&act, dropout.as_deref_mut())?)?;
            }
            x = (x + down)?;
        }
        Ok(ops::rms_norm(&x, &self.norm, cfg.rms_norm_eps)?)
    }

    /// Summed cross-entropy and count of the predicted tokens of a batch.
    /// Logits are computed only at the positions that carry a label.
    pub fn loss_sum(
        &self,
        batch: &Batch,
        lora: Option<&Lora>,
        dropout: Option<&mut Dropout>,
    ) -> Result<Tensor> {
        let hidden = self.hidden(&batch.ids, lora, dropout)?;
        let picked = hidden.index_select(&batch.positions, 0)?;
        let logits = ops::frozen_linear(&picked, &self.lm_head)?;
        Ok(ops::cross_entropy_sum(&logits, &batch.labels)?)
    }

    /// Full logits (B, T, V), for parity checks.
    pub fn logits(&self, ids: &Tensor, lora: Option<&Lora>) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let hidden = self.hidden(ids, lora, None)?;
        let logits = ops::frozen_linear(&hidden, &self.lm_head)?;
        Ok(logits.reshape((b, t, self.config.vocab_size))?)
    }
}

/// One padded batch: token ids (B, T), the flat positions b*T + t whose
/// next token is predicted, and those next tokens.
pub struct Batch {
    pub ids: Tensor,
    pub positions: Tensor,
    pub labels: Tensor,
    pub n_labels: usize,
    pub n_tokens: usize,
}

impl Batch {
    /// `seqs`: (token ids, per-token "is a target" flags). Position t is a
    /// prediction when token t+1 is a target.
    pub fn new(seqs: &[(Vec<u32>, Vec<bool>)], pad: u32, device: &Device) -> Result<Self> {
        let t = seqs.iter().map(|s| s.0.len()).max().unwrap_or(0).max(1);
        let b = seqs.len();
        let mut ids = vec![pad; b * t];
        let mut positions = Vec::new();
        let mut labels = Vec::new();
        let mut n_tokens = 0;
        for (i, (toks, target)) in seqs.iter().enumerate() {
            n_tokens += toks.len();
            ids[i * t..i * t + toks.len()].copy_from_slice(toks);
            for j in 1..toks.len() {
                if target[j] {
                    positions.push((i * t + j - 1) as u32);
                    labels.push(toks[j]);
                }
            }
        }
        let n_labels = labels.len();
        Ok(Batch {
            ids: Tensor::from_vec(ids, (b, t), device)?,
            positions: Tensor::from_vec(positions, n_labels, device)?,
            labels: Tensor::from_vec(labels, n_labels, device)?,
            n_labels,
            n_tokens,
        })
    }
}

/// LoRA settings (PEFT's `LoraConfig` fields that matter here).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub target_modules: Vec<String>,
}

impl Default for LoraConfig {
    /// PEFT's defaults for llama (q_proj, v_proj), rank 8 and alpha 16 as in the paper.
    fn default() -> Self {
        LoraConfig {
            rank: 8,
            alpha: 16.0,
            dropout: 0.0,
            target_modules: vec!["q_proj".into(), "v_proj".into()],
        }
    }
}

impl LoraConfig {
    pub fn scaling(&self) -> f64 {
        self.alpha / self.rank as f64
    }
}

/// One adapter: `B A x * alpha / r`, A (r, in), B (out, r).
pub struct Adapter {
    pub a: Var,
    pub b: Var,
    pub scaling: f64,
}

impl Adapter {
    /// The adapter's contribution for input `x` (N, in), with LoRA dropout
    /// on `x` when training.
    pub fn forward(
        &self,
        x: &Tensor,
        dropout: Option<&mut Dropout>,
    ) -> candle_core::Result<Tensor> {
        let dropped = match dropout {
            Some(dr) if dr.p > 0.0 => Some(dr.apply(x)?),
            _ => None,
        };
        let x = dropped.as_ref().unwrap_or(x);
        let h = x.matmul(&self.a.as_tensor().t()?)?;
        h.matmul(&self.b.as_tensor().t()?)? * self.scaling
    }
}

/// All adapters of a model, keyed by (layer, module).
pub struct Lora {
    pub config: LoraConfig,
    pub adapters: BTreeMap<(usize, String), Adapter>,
}

impl Lora {
    /// PEFT's initialization: A kaiming-uniform (a = sqrt(5)), i.e.
    /// U(-1/sqrt(in), 1/sqrt(in)); B zeros.
    pub fn init(
        model_cfg: &Config,
        config: &LoraConfig,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        Self::init_dtype(model_cfg, config, seed, device, DType::F32)
    }

    /// [`Lora::init`] with tensors of `dtype`.
    pub fn init_dtype(
        model_cfg: &Config,
        config: &LoraConfig,
        seed: u64,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut adapters = BTreeMap::new();
        for m in &config.target_modules {
            model_cfg.module_shape(m)?;
        }
        for layer in 0..model_cfg.num_hidden_layers {
            for m in MODULES {
                if !config.target_modules.iter().any(|t| t == m) {
                    continue;
                }
                let (inp, out) = model_cfg.module_shape(m)?;
                let bound = 1.0 / (inp as f32).sqrt();
                let a: Vec<f32> = (0..config.rank * inp)
                    .map(|_| rng.random_range(-bound..bound))
                    .collect();
                let a = Tensor::from_vec(a, (config.rank, inp), device)?.to_dtype(dtype)?;
                let a = Var::from_tensor(&a)?;
                let b = Var::from_tensor(&Tensor::zeros((out, config.rank), dtype, device)?)?;
                adapters.insert(
                    (layer, m.to_string()),
                    Adapter {
                        a,
                        b,
                        scaling: config.scaling(),
                    },
                );
            }
        }
        Ok(Lora {
            config: config.clone(),
            adapters,
        })
    }

    pub fn get(&self, layer: usize, module: &str) -> Option<&Adapter> {
        self.adapters.get(&(layer, module.to_string()))
    }

    /// Trainable tensors with their PEFT names, in a fixed order.
    pub fn named_vars(&self) -> Vec<(String, &Var)> {
        let mut out = Vec::new();
        for ((layer, m), ad) in &self.adapters {
            let group = if ["gate_proj", "up_proj", "down_proj"].contains(&m.as_str()) {
                "mlp"
            } else {
                "self_attn"
            };
            let base = format!("base_model.model.model.layers.{layer}.{group}.{m}");
            out.push((format!("{base}.lora_A.weight"), &ad.a));
            out.push((format!("{base}.lora_B.weight"), &ad.b));
        }
        out
    }

    pub fn num_params(&self) -> usize {
        self.named_vars().iter().map(|(_, v)| v.elem_count()).sum()
    }
}

/// LoRA dropout (inverted, as torch's `nn.Dropout`), seeded per step so a
/// resumed run draws the same masks.
pub struct Dropout {
    pub p: f64,
    pub rng: ChaCha8Rng,
}

impl Dropout {
    pub fn new(p: f64, seed: u64) -> Self {
        Dropout {
            p,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }
    pub fn apply(&mut self, x: &Tensor) -> candle_core::Result<Tensor> {
        let n = x.elem_count();
        let keep = 1.0 - self.p;
        let m: Vec<f32> = (0..n)
            .map(|_| {
                if self.rng.random::<f64>() < keep {
                    (1.0 / keep) as f32
                } else {
                    0.0
                }
            })
            .collect();
        x * Tensor::from_vec(m, x.shape(), x.device())?.to_dtype(x.dtype())?
    }
}

/// Reads `x` as f32 on the CPU (scalars and small tensors).
pub fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?
        .to_device(&Device::Cpu)?
        .to_scalar::<f64>()?)
}
