//! The OPT architecture (125M to 66B) with LoRA-capable projections,
//! matching Hugging Face's `OPTForCausalLM`: learned positions offset by 2,
//! LayerNorm before (most sizes) or after (350M) each block, q/k/v/out
//! projections and two-layer MLP with biases, ReLU, tied output, and the
//! optional `project_in`/`project_out` when the embedding is narrower than
//! the model (350M).

use candle_core::{Device, Tensor};

use crate::error::{invalid, unsupported, Result};

use crate::gpt2::Activation;
use crate::lora::{adapt, model_dropout, Dropout, Lora, Module, Targets};
use crate::model::{check_positions, CausalLm};
use crate::ops::{self, Affine, Norm};
use crate::weights::Weights;

/// OPT's learned positions start at index 2 (a fairseq legacy).
const POSITION_OFFSET: usize = 2;

/// Projections that can carry adapters, as PEFT names them inside a layer.
pub const MODULE_PATHS: [&str; 6] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.out_proj",
    "fc1",
    "fc2",
];

/// `config.json` of an OPT checkpoint (Hugging Face names and defaults).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub ffn_dim: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "yes")]
    pub do_layer_norm_before: bool,
    #[serde(default)]
    pub word_embed_proj_dim: Option<usize>,
    #[serde(default = "default_activation")]
    pub activation_function: String,
    #[serde(default = "yes")]
    pub enable_bias: bool,
    #[serde(default = "yes")]
    pub layer_norm_elementwise_affine: bool,
    #[serde(default, rename = "_remove_final_layer_norm")]
    pub remove_final_layer_norm: bool,
    /// Dropout after each block's attention output and MLP output, and on
    /// attention probabilities (training only; HF's defaults 0.1 and 0).
    #[serde(default = "default_dropout")]
    pub dropout: f64,
    #[serde(default)]
    pub attention_dropout: f64,
    /// Skipping whole layers while training is not implemented: must be 0.
    #[serde(default)]
    pub layerdrop: f64,
}

fn default_dropout() -> f64 {
    0.1
}

fn yes() -> bool {
    true
}

fn default_activation() -> String {
    "relu".into()
}

impl Config {
    fn embed_dim(&self) -> usize {
        self.word_embed_proj_dim.unwrap_or(self.hidden_size)
    }

    /// Where LoRA adapters can go (PEFT's default: q_proj, v_proj).
    pub fn targets(&self) -> Targets {
        let d = self.hidden_size;
        let ff = self.ffn_dim;
        let dims = [(d, d), (d, d), (d, d), (d, d), (d, ff), (ff, d)];
        Targets {
            arch: "opt",
            layers: self.num_hidden_layers,
            layer_prefix: "model.decoder.layers.",
            modules: Module::list(&MODULE_PATHS, &dims),
            defaults: &["q_proj", "v_proj"],
            fan_in_fan_out: false,
        }
    }
}

pub struct Layer {
    pub attn_norm: Norm,
    /// q, k and v stacked: (3 d, d).
    pub qkv: Affine,
    pub out_proj: Affine,
    pub mlp_norm: Norm,
    pub fc1: Affine,
    pub fc2: Affine,
}

pub struct Opt {
    pub config: Config,
    pub embed_tokens: Tensor,
    pub embed_positions: Tensor,
    pub project_in: Option<Tensor>,
    pub project_out: Option<Tensor>,
    pub layers: Vec<Layer>,
    pub final_norm: Option<Norm>,
    activation: Activation,
    device: Device,
}

impl Opt {
    /// Builds the model from a checkpoint's tensors
    /// (`model.decoder.layers.0.self_attn.q_proj.weight`, `model.` optional).
    pub fn from_weights(config: Config, mut w: Weights, device: &Device) -> Result<Self> {
        let (d, ff, e) = (config.hidden_size, config.ffn_dim, config.embed_dim());
        if config.num_attention_heads == 0 || !d.is_multiple_of(config.num_attention_heads) {
            invalid!(
                "config.json: hidden_size {d} is not a multiple of num_attention_heads {}",
                config.num_attention_heads
            );
        }
        let activation = Activation::parse(&config.activation_function)?;
        if config.layerdrop > 0.0 {
            unsupported!(
                "config.json: layerdrop {} is not supported",
                config.layerdrop
            );
        }
        let dev = device.clone();
        let (affine_norm, bias) = (config.layer_norm_elementwise_affine, config.enable_bias);
        let norm = |w: &mut Weights, p: &str| -> Result<Norm> {
            if !affine_norm {
                return Ok(Norm {
                    w: Tensor::ones(d, w.dtype(), &dev)?,
                    b: Tensor::zeros(d, w.dtype(), &dev)?,
                });
            }
            Ok(Norm {
                w: w.take_shaped(&format!("{p}.weight"), &[d])?,
                b: w.take_shaped(&format!("{p}.bias"), &[d])?,
            })
        };
        let linear = |w: &mut Weights, p: &str, inp: usize, out: usize| -> Result<Affine> {
            let weight = w.take_shaped(&format!("{p}.weight"), &[out, inp])?;
            let b = if bias {
                w.take_shaped(&format!("{p}.bias"), &[out])?
            } else {
                Tensor::zeros(out, weight.dtype(), weight.device())?
            };
            Ok(Affine { w: weight, b })
        };
        let p = "decoder";
        let embed_tokens =
            w.take_shaped(&format!("{p}.embed_tokens.weight"), &[config.vocab_size, e])?;
        let embed_positions = w.take_shaped(
            &format!("{p}.embed_positions.weight"),
            &[config.max_position_embeddings + POSITION_OFFSET, d],
        )?;
        let (project_in, project_out) = if e != d {
            (
                Some(w.take_shaped(&format!("{p}.project_in.weight"), &[d, e])?),
                Some(w.take_shaped(&format!("{p}.project_out.weight"), &[e, d])?),
            )
        } else {
            (None, None)
        };
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let l = format!("{p}.layers.{i}");
            let q = linear(&mut w, &format!("{l}.self_attn.q_proj"), d, d)?;
            let k = linear(&mut w, &format!("{l}.self_attn.k_proj"), d, d)?;
            let v = linear(&mut w, &format!("{l}.self_attn.v_proj"), d, d)?;
            layers.push(Layer {
                attn_norm: norm(&mut w, &format!("{l}.self_attn_layer_norm"))?,
                qkv: Affine {
                    w: Tensor::cat(&[&q.w, &k.w, &v.w], 0)?.contiguous()?,
                    b: Tensor::cat(&[&q.b, &k.b, &v.b], 0)?,
                },
                out_proj: linear(&mut w, &format!("{l}.self_attn.out_proj"), d, d)?,
                mlp_norm: norm(&mut w, &format!("{l}.final_layer_norm"))?,
                fc1: linear(&mut w, &format!("{l}.fc1"), d, ff)?,
                fc2: linear(&mut w, &format!("{l}.fc2"), ff, d)?,
            });
        }
        let final_norm = if config.do_layer_norm_before && !config.remove_final_layer_norm {
            Some(norm(&mut w, &format!("{p}.final_layer_norm"))?)
        } else {
            None
        };
        Ok(Opt {
            activation,
            config,
            embed_tokens,
            embed_positions,
            project_in,
            project_out,
            layers,
            final_norm,
            device: device.clone(),
        })
    }
}

fn norm(x: &Tensor, n: &Norm) -> candle_core::Result<Tensor> {
    // OPT's LayerNorms use torch's default eps.
    n.forward(x, 1e-5)
}

impl CausalLm for Opt {
    fn hidden(
        &self,
        ids: &Tensor,
        lora: Option<&Lora>,
        mut train: Option<&mut Dropout>,
    ) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let cfg = &self.config;
        let d = cfg.hidden_size;
        check_positions(t, cfg.max_position_embeddings, "OPT")?;
        let heads = ops::Heads::multi_head(b, t, cfg.num_attention_heads, d);
        let dr = &mut train;
        let mut x = self.embed_tokens.index_select(&ids.flatten_all()?, 0)?;
        if let Some(p) = &self.project_in {
            x = ops::frozen_linear(&x, p)?;
        }
        // Right-padded sequences: real tokens sit at positions 0..len.
        let pos = self.embed_positions.narrow(0, POSITION_OFFSET, t)?;
        x = x
            .reshape((b, t, d))?
            .broadcast_add(&pos)?
            .reshape((b * t, d))?;
        let pre = cfg.do_layer_norm_before;
        for (li, l) in self.layers.iter().enumerate() {
            let h = if pre {
                norm(&x, &l.attn_norm)?
            } else {
                x.clone()
            };
            let qkv = l.qkv.forward(&h)?;
            let q = adapt(lora, li, "self_attn.q_proj", &h, qkv.narrow(1, 0, d)?, dr)?;
            let k = adapt(lora, li, "self_attn.k_proj", &h, qkv.narrow(1, d, d)?, dr)?;
            let v = adapt(
                lora,
                li,
                "self_attn.v_proj",
                &h,
                qkv.narrow(1, 2 * d, d)?,
                dr,
            )?;
            let o = ops::causal_attention(&q, &k, &v, heads, None, (cfg.attention_dropout, dr))?;
            let attn = adapt(
                lora,
                li,
                "self_attn.out_proj",
                &o,
                l.out_proj.forward(&o)?,
                dr,
            )?;
            x = (x + model_dropout(attn, cfg.dropout, dr)?)?;
            if !pre {
                x = norm(&x, &l.attn_norm)?;
            }

            let h = if pre {
                norm(&x, &l.mlp_norm)?
            } else {
                x.clone()
            };
            let fc1 = adapt(lora, li, "fc1", &h, l.fc1.forward(&h)?, dr)?;
            let act = self.activation.apply(&fc1)?;
            let fc2 = adapt(lora, li, "fc2", &act, l.fc2.forward(&act)?, dr)?;
            x = (x + model_dropout(fc2, cfg.dropout, dr)?)?;
            if !pre {
                x = norm(&x, &l.mlp_norm)?;
            }
        }
        if let Some(n) = &self.final_norm {
            x = norm(&x, n)?;
        }
        if let Some(p) = &self.project_out {
            x = ops::frozen_linear(&x, p)?;
        }
        Ok(x)
    }

    fn lm_head(&self) -> &Tensor {
        &self.embed_tokens
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn targets(&self) -> Targets {
        self.config.targets()
    }
}
