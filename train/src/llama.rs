//! The llama architecture (SmolLM2, Llama 3.x) with LoRA-capable linear
//! layers, matching Hugging Face's `LlamaForCausalLM`: RMSNorm, `rotate_half`
//! RoPE with the configured theta, grouped-query attention, SwiGLU MLP and
//! optionally tied embeddings.
//!
//! Base weights are plain tensors (never variables), so the base is frozen;
//! the LoRA matrices are [`Var`]s. Linear layers that share an input are
//! fused into one matmul (q/k/v, gate/up).

use std::collections::BTreeMap;

use crate::error::{invalid, unsupported, Result, TrainError};
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::lora::{adapt, Dropout, Lora, Module, Targets};
use crate::model::CausalLm;
use crate::ops;
use crate::weights::Weights;

/// Projections that can carry adapters, as PEFT names them inside a layer.
pub const MODULE_PATHS: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

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
    /// Llama 3.1+'s frequency-dependent RoPE scaling.
    #[serde(default)]
    pub rope_scaling: Option<ops::Llama3Scaling>,
    /// Dropout on the attention probabilities when training (0 for SmolLM2, Llama 3).
    #[serde(default)]
    pub attention_dropout: f64,
}

/// `config.json` of a Hugging Face llama checkpoint (its names and defaults).
#[derive(Clone, Debug, serde::Deserialize)]
pub struct HfConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// transformers 5 keeps theta and scaling here.
    #[serde(default)]
    pub rope_parameters: Option<serde_json::Value>,
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default = "default_positions")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub attention_dropout: f64,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
}

fn default_rms_eps() -> f64 {
    1e-6
}

fn default_positions() -> usize {
    2048
}

impl HfConfig {
    /// The model config; RoPE types other than the default and `llama3` are an error.
    pub fn into_config(self) -> Result<Config> {
        if self.attention_bias || self.mlp_bias {
            unsupported!(
                "config.json: llama variants with attention_bias or mlp_bias are not supported"
            );
        }
        let heads = self.num_attention_heads;
        if heads == 0 || !self.hidden_size.is_multiple_of(heads) {
            invalid!(
                "config.json: hidden_size {} is not a multiple of num_attention_heads {heads}",
                self.hidden_size
            );
        }
        if let Some(hd) = self.head_dim {
            if hd != self.hidden_size / heads {
                unsupported!(
                    "config.json: head_dim {hd} != hidden_size / num_attention_heads (unsupported)"
                );
            }
        }
        let rope = self.rope_parameters.or(self.rope_scaling);
        let theta = self
            .rope_theta
            .or_else(|| rope.as_ref().and_then(|r| r["rope_theta"].as_f64()))
            .unwrap_or(10000.0);
        let rope_scaling = match &rope {
            None => None,
            Some(r) => match r["rope_type"].as_str().or(r["type"].as_str()) {
                None | Some("default") => None,
                Some("llama3") => Some(serde_json::from_value(r.clone()).map_err(|e| {
                    TrainError::json(
                        "config.json: llama3 rope scaling needs factor, low_freq_factor, \
                         high_freq_factor and original_max_position_embeddings",
                        e,
                    )
                })?),
                Some(other) => unsupported!("config.json: RoPE type `{other}` is not supported"),
            },
        };
        Ok(Config {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: heads,
            num_key_value_heads: self.num_key_value_heads.unwrap_or(heads),
            rms_norm_eps: self.rms_norm_eps,
            rope_theta: theta,
            max_position_embeddings: self.max_position_embeddings,
            tie_word_embeddings: self.tie_word_embeddings,
            rope_scaling,
            attention_dropout: self.attention_dropout,
        })
    }
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
            rope_scaling: None,
            attention_dropout: 0.0,
        }
    }

    /// Where LoRA adapters can go (PEFT's default: q_proj, v_proj).
    pub fn targets(&self) -> Targets {
        let d = self.hidden_size;
        let kv = self.num_key_value_heads * self.head_dim();
        let ff = self.intermediate_size;
        let dims = [(d, d), (d, kv), (d, kv), (d, d), (d, ff), (d, ff), (ff, d)];
        Targets {
            arch: "llama",
            layers: self.num_hidden_layers,
            layer_prefix: "model.layers.",
            modules: Module::list(&MODULE_PATHS, &dims),
            defaults: &["q_proj", "v_proj"],
            fan_in_fan_out: false,
        }
    }
}

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
        t: BTreeMap<String, Tensor>,
        device: &Device,
    ) -> Result<Self> {
        Self::from_weights(config, Weights::new(t, &[], device), device)
    }

    /// [`Llama::from_tensors`] from a checkpoint's [`Weights`].
    pub fn from_weights(config: Config, mut w: Weights, device: &Device) -> Result<Self> {
        let d = config.hidden_size;
        let valid = config.num_attention_heads > 0
            && d.is_multiple_of(config.num_attention_heads)
            && config.num_key_value_heads > 0
            && config
                .num_attention_heads
                .is_multiple_of(config.num_key_value_heads);
        if !valid {
            invalid!(
                "llama config: {d} wide with {} heads and {} kv heads is not a valid shape",
                config.num_attention_heads,
                config.num_key_value_heads
            );
        }
        let kv = config.num_key_value_heads * config.head_dim();
        let ff = config.intermediate_size;
        let embed_tokens = w.take_shaped("model.embed_tokens.weight", &[config.vocab_size, d])?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let mut take =
                |name: &str, shape: &[usize]| w.take_shaped(&format!("{p}.{name}.weight"), shape);
            let q = take("self_attn.q_proj", &[d, d])?;
            let k = take("self_attn.k_proj", &[kv, d])?;
            let v = take("self_attn.v_proj", &[kv, d])?;
            let gate = take("mlp.gate_proj", &[ff, d])?;
            let up = take("mlp.up_proj", &[ff, d])?;
            layers.push(Layer {
                input_layernorm: take("input_layernorm", &[d])?,
                qkv: Tensor::cat(&[&q, &k, &v], 0)?.contiguous()?,
                o_proj: take("self_attn.o_proj", &[d, d])?,
                post_attention_layernorm: take("post_attention_layernorm", &[d])?,
                gate_up: Tensor::cat(&[&gate, &up], 0)?.contiguous()?,
                down_proj: take("mlp.down_proj", &[d, ff])?,
            });
        }
        let norm = w.take_shaped("model.norm.weight", &[d])?;
        // Some checkpoints leave `tie_word_embeddings` unset but store no head.
        let lm_head = if config.tie_word_embeddings || !w.contains("lm_head.weight") {
            embed_tokens.clone()
        } else {
            w.take_shaped("lm_head.weight", &[config.vocab_size, d])?
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
        let targets = config.targets();
        for i in 0..config.num_hidden_layers {
            let p = format!("model.layers.{i}");
            for m in &targets.modules {
                t.insert(
                    format!("{p}.{}.weight", m.path),
                    rand((m.out_dim, m.in_dim), 1.0 / (m.in_dim as f32).sqrt())?,
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
}

impl CausalLm for Llama {
    fn hidden(
        &self,
        ids: &Tensor,
        lora: Option<&Lora>,
        mut train: Option<&mut Dropout>,
    ) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let cfg = &self.config;
        let d = cfg.hidden_size;
        let heads = ops::Heads {
            batch: b,
            len: t,
            heads: cfg.num_attention_heads,
            kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim(),
        };
        let kv = heads.kv_heads * heads.head_dim;
        let ff = cfg.intermediate_size;
        let dt = self.dtype();
        let (cos, sin) = ops::rope_tables(
            t,
            heads.head_dim,
            cfg.rope_theta,
            cfg.rope_scaling.as_ref(),
            &self.device,
        )?;
        let (cos, sin) = (cos.to_dtype(dt)?, sin.to_dtype(dt)?);
        let dr = &mut train;

        let mut x = self.embed_tokens.index_select(&ids.flatten_all()?, 0)?; // (n, d)
        for (li, layer) in self.layers.iter().enumerate() {
            let h = ops::rms_norm(&x, &layer.input_layernorm, cfg.rms_norm_eps)?;
            let qkv = ops::frozen_linear(&h, &layer.qkv)?;
            let q = adapt(lora, li, "self_attn.q_proj", &h, qkv.narrow(1, 0, d)?, dr)?;
            let k = adapt(lora, li, "self_attn.k_proj", &h, qkv.narrow(1, d, kv)?, dr)?;
            let v = adapt(
                lora,
                li,
                "self_attn.v_proj",
                &h,
                qkv.narrow(1, d + kv, kv)?,
                dr,
            )?;
            let o = ops::causal_attention(
                &q,
                &k,
                &v,
                heads,
                Some((&cos, &sin)),
                (cfg.attention_dropout, dr),
            )?;
            let attn = ops::frozen_linear(&o, &layer.o_proj)?;
            x = (x + adapt(lora, li, "self_attn.o_proj", &o, attn, dr)?)?;

            let h = ops::rms_norm(&x, &layer.post_attention_layernorm, cfg.rms_norm_eps)?;
            let gu = ops::frozen_linear(&h, &layer.gate_up)?;
            let gate = adapt(lora, li, "mlp.gate_proj", &h, gu.narrow(1, 0, ff)?, dr)?;
            let up = adapt(lora, li, "mlp.up_proj", &h, gu.narrow(1, ff, ff)?, dr)?;
            let act = ops::swiglu(&gate, &up)?;
            let down = ops::frozen_linear(&act, &layer.down_proj)?;
            x = (x + adapt(lora, li, "mlp.down_proj", &act, down, dr)?)?;
        }
        Ok(ops::rms_norm(&x, &self.norm, cfg.rms_norm_eps)?)
    }

    fn lm_head(&self) -> &Tensor {
        &self.lm_head
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn targets(&self) -> Targets {
        self.config.targets()
    }
}
