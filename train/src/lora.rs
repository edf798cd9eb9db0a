//! LoRA adapters as PEFT makes them, over any architecture's projections.
//!
//! An architecture describes where adapters can go with [`Targets`]; a
//! [`Lora`] holds one [`Adapter`] per (layer, module path) and names its
//! tensors as PEFT does (`base_model.model.<layer prefix><i>.<path>.lora_A.weight`).

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{invalid, Result};

/// A projection that can carry an adapter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Module {
    /// Path inside a layer, as in Hugging Face names: `self_attn.q_proj`, `attn.c_attn`.
    pub path: &'static str,
    pub in_dim: usize,
    pub out_dim: usize,
}

impl Module {
    /// Modules from their paths and (in, out) sizes.
    pub fn list(paths: &[&'static str], dims: &[(usize, usize)]) -> Vec<Module> {
        paths
            .iter()
            .zip(dims)
            .map(|(&path, &(in_dim, out_dim))| Module {
                path,
                in_dim,
                out_dim,
            })
            .collect()
    }

    /// The last part of the path (`q_proj`), what PEFT's `target_modules` names.
    pub fn name(&self) -> &'static str {
        self.path.rsplit('.').next().unwrap_or(self.path)
    }
}

/// Where adapters can go in one architecture, and PEFT's defaults for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Targets {
    pub arch: &'static str,
    pub layers: usize,
    /// Hugging Face name of the layers, before the index: `model.layers.`.
    pub layer_prefix: &'static str,
    pub modules: Vec<Module>,
    /// PEFT's default `target_modules` for this architecture.
    pub defaults: &'static [&'static str],
    /// PEFT's `fan_in_fan_out`: GPT-2's Conv1D stores its weights (in, out).
    pub fan_in_fan_out: bool,
}

impl Targets {
    /// Modules a target selects: as in PEFT, its name or a suffix of its path.
    pub fn select(&self, target: &str) -> Vec<&Module> {
        self.modules
            .iter()
            .filter(|m| m.path == target || m.path.ends_with(&format!(".{target}")))
            .collect()
    }

    /// The targets to use: the given ones (each must select a module), or
    /// PEFT's defaults when none are given.
    pub fn resolve(&self, targets: &[String]) -> Result<Vec<String>> {
        if targets.is_empty() {
            return Ok(self.defaults.iter().map(|s| s.to_string()).collect());
        }
        for t in targets {
            if self.select(t).is_empty() {
                invalid!(
                    "unknown LoRA target module `{t}` ({} has {})",
                    self.arch,
                    self.names().join(", ")
                );
            }
        }
        Ok(targets.to_vec())
    }

    /// Distinct module names, in order.
    pub fn names(&self) -> Vec<&'static str> {
        let mut out: Vec<&'static str> = Vec::new();
        for m in &self.modules {
            if !out.contains(&m.name()) {
                out.push(m.name());
            }
        }
        out
    }

    fn module(&self, path: &str) -> Option<&Module> {
        self.modules.iter().find(|m| m.path == path)
    }
}

/// LoRA settings (PEFT's `LoraConfig` fields that matter here).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// Empty: PEFT's default for the architecture ([`Targets::defaults`]).
    pub target_modules: Vec<String>,
}

impl Default for LoraConfig {
    /// Rank 8 and alpha 16 as in the paper; PEFT's default targets.
    fn default() -> Self {
        LoraConfig {
            rank: 8,
            alpha: 16.0,
            dropout: 0.0,
            target_modules: Vec::new(),
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

/// `y` plus the adapter of (`layer`, `path`) applied to `x`, if there is one.
pub fn adapt(
    lora: Option<&Lora>,
    layer: usize,
    path: &str,
    x: &Tensor,
    y: Tensor,
    dropout: &mut Option<&mut Dropout>,
) -> candle_core::Result<Tensor> {
    match lora.and_then(|l| l.get(layer, path)) {
        Some(a) => y + a.forward(x, dropout.as_deref_mut())?,
        None => Ok(y),
    }
}

/// All adapters of a model, keyed by (layer, module path).
pub struct Lora {
    /// With the target modules resolved (never empty).
    pub config: LoraConfig,
    pub adapters: BTreeMap<(usize, String), Adapter>,
    pub layer_prefix: String,
    pub fan_in_fan_out: bool,
}

impl Lora {
    /// PEFT's initialization: A kaiming-uniform (a = sqrt(5)), i.e.
    /// U(-1/sqrt(in), 1/sqrt(in)); B zeros.
    pub fn init(
        targets: &Targets,
        config: &LoraConfig,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        Self::init_dtype(targets, config, seed, device, DType::F32)
    }

    /// [`Lora::init`] with tensors of `dtype`.
    pub fn init_dtype(
        targets: &Targets,
        config: &LoraConfig,
        seed: u64,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let mut config = config.clone();
        config.target_modules = targets.resolve(&config.target_modules)?;
        let chosen: Vec<&Module> = targets
            .modules
            .iter()
            .filter(|m| {
                config
                    .target_modules
                    .iter()
                    .any(|t| targets.select(t).contains(m))
            })
            .collect();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut adapters = BTreeMap::new();
        for layer in 0..targets.layers {
            for m in &chosen {
                let bound = 1.0 / (m.in_dim as f32).sqrt();
                let a: Vec<f32> = (0..config.rank * m.in_dim)
                    .map(|_| rng.random_range(-bound..bound))
                    .collect();
                let a = Tensor::from_vec(a, (config.rank, m.in_dim), device)?.to_dtype(dtype)?;
                let b = Tensor::zeros((m.out_dim, config.rank), dtype, device)?;
                adapters.insert(
                    (layer, m.path.to_string()),
                    Adapter {
                        a: Var::from_tensor(&a)?,
                        b: Var::from_tensor(&b)?,
                        scaling: config.scaling(),
                    },
                );
            }
        }
        Ok(Lora {
            config,
            adapters,
            layer_prefix: targets.layer_prefix.to_string(),
            fan_in_fan_out: targets.fan_in_fan_out,
        })
    }

    pub fn get(&self, layer: usize, path: &str) -> Option<&Adapter> {
        self.adapters.get(&(layer, path.to_string()))
    }

    /// Trainable tensors with their PEFT names, in a fixed order.
    pub fn named_vars(&self) -> Vec<(String, &Var)> {
        let mut out = Vec::new();
        for ((layer, path), ad) in &self.adapters {
            let base = format!("base_model.model.{}{layer}.{path}", self.layer_prefix);
            out.push((format!("{base}.lora_A.weight"), &ad.a));
            out.push((format!("{base}.lora_B.weight"), &ad.b));
        }
        out
    }

    pub fn num_params(&self) -> usize {
        self.named_vars().iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Checks that every adapter fits a module of `targets` (an adapter
    /// trained on another architecture or size is an error, not a no-op).
    pub fn check_fits(&self, targets: &Targets) -> Result<()> {
        if self.layer_prefix != targets.layer_prefix {
            invalid!(
                "the adapter's layers are named `{}N`, the {} model's `{}N`: it was trained on \
                 another architecture",
                self.layer_prefix,
                targets.arch,
                targets.layer_prefix
            );
        }
        for ((layer, path), ad) in &self.adapters {
            let Some(m) = targets.module(path) else {
                invalid!(
                    "the adapter has a module `{path}` that {} has not",
                    targets.arch
                );
            };
            if *layer >= targets.layers {
                invalid!(
                    "the adapter has layer {layer}; the model has {} layers",
                    targets.layers
                );
            }
            let (r, inp) = ad.a.as_tensor().dims2()?;
            let (out, r2) = ad.b.as_tensor().dims2()?;
            if inp != m.in_dim || out != m.out_dim || r != r2 {
                invalid!(
                    "adapter {path} of layer {layer} is ({out}x{r2})({r}x{inp}); the model's \
                     projection is {}x{}",
                    m.out_dim,
                    m.in_dim
                );
            }
        }
        Ok(())
    }
}

/// Training-time dropout (inverted, as torch's `nn.Dropout`), seeded per
/// step so a resumed run draws the same masks. `p` is LoRA's dropout on the
/// adapters' input; with `model` set, the architecture's own dropout (its
/// config's, e.g. GPT-2's 0.1) also applies, as in PyTorch's training mode.
pub struct Dropout {
    pub p: f64,
    pub model: bool,
    pub rng: ChaCha8Rng,
}

impl Dropout {
    pub fn new(p: f64, model: bool, seed: u64) -> Self {
        Dropout {
            p,
            model,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// LoRA's dropout on `x`.
    pub fn apply(&mut self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.apply_p(x, self.p)
    }

    /// Zeroes each entry of `x` with probability `p`, scaling the rest by 1 / (1 - p).
    pub fn apply_p(&mut self, x: &Tensor, p: f64) -> candle_core::Result<Tensor> {
        if p <= 0.0 {
            return Ok(x.clone());
        }
        let n = x.elem_count();
        let keep = 1.0 - p;
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

/// The architecture's dropout with probability `p` when training with
/// model dropout on; `x` unchanged otherwise.
pub fn model_dropout(
    x: Tensor,
    p: f64,
    train: &mut Option<&mut Dropout>,
) -> candle_core::Result<Tensor> {
    match train.as_deref_mut() {
        Some(d) if d.model && p > 0.0 => d.apply_p(&x, p),
        _ => Ok(x),
    }
}
