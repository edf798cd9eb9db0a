//! The GPT-2 architecture (124M to XL) with LoRA-capable projections,
//! matching Hugging Face's `GPT2LMHeadModel`: learned positions, pre-norm
//! LayerNorm blocks with biases, fused q/k/v (`c_attn`), the tanh GELU, tied
//! output. Conv1D weights are stored (in, out) in checkpoints and turned to
//! (out, in) at load; PEFT marks its adapters `fan_in_fan_out`.

use candle_core::{Device, Tensor};

use crate::error::{invalid, unsupported, Result};

use crate::lora::{adapt, model_dropout, Dropout, Lora, Module, Targets};
use crate::model::{check_positions, CausalLm};
use crate::ops::{self, Affine, Norm};
use crate::weights::Weights;

/// Projections that can carry adapters, as PEFT names them inside a block.
pub const MODULE_PATHS: [&str; 4] = ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"];

/// `config.json` of a GPT-2 checkpoint (Hugging Face names and defaults).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    #[serde(default)]
    pub n_inner: Option<usize>,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "default_activation")]
    pub activation_function: String,
    /// Dropout after the embeddings, on attention probabilities, and after
    /// each block's two output projections (training only; HF's 0.1 defaults).
    #[serde(default = "default_dropout")]
    pub embd_pdrop: f64,
    #[serde(default = "default_dropout")]
    pub attn_pdrop: f64,
    #[serde(default = "default_dropout")]
    pub resid_pdrop: f64,
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
    #[serde(default)]
    pub reorder_and_upcast_attn: bool,
}

fn default_dropout() -> f64 {
    0.1
}

fn default_eps() -> f64 {
    1e-5
}

fn default_activation() -> String {
    "gelu_new".into()
}

impl Config {
    pub fn inner(&self) -> usize {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }

    /// Where LoRA adapters can go (PEFT's default: c_attn).
    pub fn targets(&self) -> Targets {
        let d = self.n_embd;
        let ff = self.inner();
        let dims = [(d, 3 * d), (d, d), (d, ff), (ff, d)];
        Targets {
            arch: "gpt2",
            layers: self.n_layer,
            layer_prefix: "transformer.h.",
            modules: Module::list(&MODULE_PATHS, &dims),
            defaults: &["c_attn"],
            fan_in_fan_out: true,
        }
    }

    fn check(&self) -> Result<()> {
        if self.n_head == 0 || !self.n_embd.is_multiple_of(self.n_head) {
            invalid!(
                "config.json: n_embd {} is not a multiple of n_head {}",
                self.n_embd,
                self.n_head
            );
        }
        if self.scale_attn_by_inverse_layer_idx || self.reorder_and_upcast_attn {
            unsupported!(
                "config.json: scale_attn_by_inverse_layer_idx and reorder_and_upcast_attn \
                 (Mistral's GPT-2 variants) are not supported"
            );
        }
        Activation::parse(&self.activation_function)?;
        Ok(())
    }
}

/// The MLP's nonlinearity, by its Hugging Face name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `gelu_new`, `gelu_pytorch_tanh`: the tanh approximation.
    GeluTanh,
    /// `gelu`: the exact (erf) GELU.
    GeluErf,
    Relu,
}

impl Activation {
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "gelu" => Activation::GeluErf,
            "relu" => Activation::Relu,
            other => unsupported!("activation function `{other}` is not supported"),
        })
    }

    pub fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Activation::GeluTanh => ops::gelu_tanh(x),
            Activation::GeluErf => x.gelu_erf(),
            Activation::Relu => x.relu(),
        }
    }
}

pub struct Block {
    pub ln_1: Norm,
    pub c_attn: Affine,
    pub attn_proj: Affine,
    pub ln_2: Norm,
    pub c_fc: Affine,
    pub mlp_proj: Affine,
}

pub struct Gpt2 {
    pub config: Config,
    pub wte: Tensor,
    pub wpe: Tensor,
    pub blocks: Vec<Block>,
    pub ln_f: Norm,
    activation: Activation,
    device: Device,
}

impl Gpt2 {
    /// Builds the model from a checkpoint's tensors (`h.0.attn.c_attn.weight`,
    /// with or without the `transformer.` prefix).
    pub fn from_weights(config: Config, mut w: Weights, device: &Device) -> Result<Self> {
        config.check()?;
        let (d, ff) = (config.n_embd, config.inner());
        let norm = |w: &mut Weights, p: &str| -> Result<Norm> {
            Ok(Norm {
                w: w.take_shaped(&format!("{p}.weight"), &[d])?,
                b: w.take_shaped(&format!("{p}.bias"), &[d])?,
            })
        };
        // Conv1D: weight (in, out), stored transposed to (out, in).
        let conv = |w: &mut Weights, p: &str, inp: usize, out: usize| -> Result<Affine> {
            let weight = w.take_shaped(&format!("{p}.weight"), &[inp, out])?;
            Ok(Affine {
                w: weight.t()?.contiguous()?,
                b: w.take_shaped(&format!("{p}.bias"), &[out])?,
            })
        };
        let wte = w.take_shaped("wte.weight", &[config.vocab_size, d])?;
        let wpe = w.take_shaped("wpe.weight", &[config.n_positions, d])?;
        let mut blocks = Vec::with_capacity(config.n_layer);
        for i in 0..config.n_layer {
            let p = format!("h.{i}");
            blocks.push(Block {
                ln_1: norm(&mut w, &format!("{p}.ln_1"))?,
                c_attn: conv(&mut w, &format!("{p}.attn.c_attn"), d, 3 * d)?,
                attn_proj: conv(&mut w, &format!("{p}.attn.c_proj"), d, d)?,
                ln_2: norm(&mut w, &format!("{p}.ln_2"))?,
                c_fc: conv(&mut w, &format!("{p}.mlp.c_fc"), d, ff)?,
                mlp_proj: conv(&mut w, &format!("{p}.mlp.c_proj"), ff, d)?,
            });
        }
        let ln_f = norm(&mut w, "ln_f")?;
        Ok(Gpt2 {
            activation: Activation::parse(&config.activation_function)?,
            config,
            wte,
            wpe,
            blocks,
            ln_f,
            device: device.clone(),
        })
    }
}

impl CausalLm for Gpt2 {
    fn hidden(
        &self,
        ids: &Tensor,
        lora: Option<&Lora>,
        mut train: Option<&mut Dropout>,
    ) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let cfg = &self.config;
        let d = cfg.n_embd;
        check_positions(t, cfg.n_positions, "GPT-2")?;
        let heads = ops::Heads::multi_head(b, t, cfg.n_head, d);
        let dr = &mut train;
        let tok = self.wte.index_select(&ids.flatten_all()?, 0)?;
        let pos = self.wpe.narrow(0, 0, t)?;
        let x = tok
            .reshape((b, t, d))?
            .broadcast_add(&pos)?
            .reshape((b * t, d))?;
        let mut x = model_dropout(x, cfg.embd_pdrop, dr)?;
        for (li, blk) in self.blocks.iter().enumerate() {
            let h = blk.ln_1.forward(&x, cfg.layer_norm_epsilon)?;
            let qkv = adapt(lora, li, "attn.c_attn", &h, blk.c_attn.forward(&h)?, dr)?;
            let (q, k, v) = (
                qkv.narrow(1, 0, d)?,
                qkv.narrow(1, d, d)?,
                qkv.narrow(1, 2 * d, d)?,
            );
            let o = ops::causal_attention(&q, &k, &v, heads, None, (cfg.attn_pdrop, dr))?;
            let attn = adapt(lora, li, "attn.c_proj", &o, blk.attn_proj.forward(&o)?, dr)?;
            x = (x + model_dropout(attn, cfg.resid_pdrop, dr)?)?;

            let h = blk.ln_2.forward(&x, cfg.layer_norm_epsilon)?;
            let fc = adapt(lora, li, "mlp.c_fc", &h, blk.c_fc.forward(&h)?, dr)?;
            let act = self.activation.apply(&fc)?;
            let out = adapt(
                lora,
                li,
                "mlp.c_proj",
                &act,
                blk.mlp_proj.forward(&act)?,
                dr,
            )?;
            x = (x + model_dropout(out, cfg.resid_pdrop, dr)?)?;
        }
        Ok(self.ln_f.forward(&x, cfg.layer_norm_epsilon)?)
    }

    fn lm_head(&self) -> &Tensor {
        &self.wte
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn targets(&self) -> Targets {
        self.config.targets()
    }
}
