//! The LoRA training loop (AdamW, learning-rate schedule, gradient
//! accumulation, seeded shuffling, checkpoints), evaluation, and the PEFT
//! adapter format.
//!
//! Semantics follow a plain PyTorch + PEFT loop (and Hugging Face Trainer's
//! defaults): per micro-batch the loss is the mean cross-entropy over its
//! predicted tokens, divided by the number of micro-batches accumulated;
//! AdamW as `torch.optim.AdamW` (decoupled weight decay on every LoRA
//! tensor); the schedule is evaluated at the number of optimizer steps
//! already taken (step 0 uses the full learning rate after warm-up).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::error::{invalid, unsupported, Result, TrainError};
use crate::lora::{Adapter, Dropout, Lora, LoraConfig};
use crate::model::{scalar, Batch, CausalLm};

/// Learning-rate schedule. The default is `linear` decay to zero with no
/// warm-up: Hugging Face Trainer's default (`lr_scheduler_type="linear"`,
/// `warmup_steps=0`), which PEFT examples and, presumably, the paper use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Linear,
    Constant,
    Cosine,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainConfig {
    pub lora: LoraConfig,
    pub lr: f64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub schedule: Schedule,
    pub warmup_steps: usize,
    pub epochs: usize,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub seed: u64,
    /// Save a checkpoint every this many optimizer steps (0: never).
    pub checkpoint_every: usize,
    /// Apply the architecture's own dropout while training (GPT-2's and
    /// OPT's 0.1), as PyTorch does in training mode.
    #[serde(default = "yes")]
    pub model_dropout: bool,
    /// Train exactly this many optimizer steps, cycling through the data
    /// in reshuffled epochs (the last one partial), instead of `epochs`
    /// full passes: runs on data sets of different sizes then get the same
    /// optimization budget.
    #[serde(default)]
    pub max_steps: Option<usize>,
}

fn yes() -> bool {
    true
}

impl Default for TrainConfig {
    /// The paper's settings (Sec 4.1.2): rank 8, alpha 16, lr 1e-4, weight
    /// decay 1e-4, 3 epochs; AdamW's betas and epsilon as torch's defaults.
    fn default() -> Self {
        TrainConfig {
            lora: LoraConfig::default(),
            lr: 1e-4,
            weight_decay: 1e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            schedule: Schedule::Linear,
            warmup_steps: 0,
            epochs: 3,
            batch_size: 8,
            grad_accum: 1,
            seed: 0,
            checkpoint_every: 50,
            model_dropout: true,
            max_steps: None,
        }
    }
}

impl TrainConfig {
    pub fn steps_per_epoch(&self, n: usize) -> usize {
        n.div_ceil(self.batch_size).div_ceil(self.grad_accum)
    }

    /// Optimizer steps of a run on `n` examples: `max_steps` where set,
    /// else `epochs` full passes.
    pub fn total_steps(&self, n: usize) -> usize {
        self.max_steps
            .unwrap_or_else(|| self.steps_per_epoch(n) * self.epochs)
    }

    /// Learning rate of optimizer step `step` (0-based) of `total`.
    pub fn lr_at(&self, step: usize, total: usize) -> f64 {
        let w = self.warmup_steps;
        if step < w {
            return self.lr * step as f64 / w.max(1) as f64;
        }
        let rest = (total.saturating_sub(w)).max(1) as f64;
        let progress = (step - w) as f64 / rest;
        match self.schedule {
            Schedule::Constant => self.lr,
            Schedule::Linear => self.lr * (1.0 - progress).max(0.0),
            Schedule::Cosine => self.lr * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        }
    }
}

/// Micro-batches of sequence indices for each optimizer step of one epoch.
pub fn epoch_plan(cfg: &TrainConfig, n: usize, epoch: usize) -> Vec<Vec<Vec<usize>>> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(
        cfg.seed ^ (0x9e37_79b9_7f4a_7c15u64.wrapping_mul(epoch as u64 + 1)),
    );
    order.shuffle(&mut rng);
    let micro: Vec<Vec<usize>> = order
        .chunks(cfg.batch_size)
        .map(<[usize]>::to_vec)
        .collect();
    micro
        .chunks(cfg.grad_accum)
        .map(<[Vec<usize>]>::to_vec)
        .collect()
}

/// What a run reports as it goes; `stop` is polled between steps.
pub trait Monitor {
    fn step(&self, _step: usize, _total: usize, _loss: f64, _lr: f64) {}
    fn stop(&self) -> bool {
        false
    }
}

pub struct Quiet;
impl Monitor for Quiet {}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainReport {
    /// (optimizer step, 1-based; mean training loss of that step).
    pub losses: Vec<(usize, f64)>,
    pub steps: usize,
    pub tokens: usize,
    /// Steps done by this process (not restored from a checkpoint).
    pub steps_run: usize,
    pub tokens_run: usize,
    pub seconds: f64,
    pub resumed_from: usize,
}

impl TrainReport {
    pub fn tokens_per_s(&self) -> f64 {
        if self.seconds > 0.0 {
            self.tokens_run as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// Why a run ended early when [`Monitor::stop`] asked it to (the state is
/// checkpointed): returned as [`TrainError::Stopped`].
#[derive(Debug)]
pub struct Stopped;
impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "training stopped")
    }
}
impl std::error::Error for Stopped {}

struct AdamState {
    m: Vec<Tensor>,
    v: Vec<Tensor>,
}

const CKPT: &str = "checkpoint.safetensors";

/// Trains `lora` in place on `seqs` (token ids, target flags).
/// With `work_dir`, resumes from and writes checkpoints there.
pub fn train(
    model: &dyn CausalLm,
    lora: &Lora,
    seqs: &[(Vec<u32>, Vec<bool>)],
    cfg: &TrainConfig,
    pad: u32,
    work_dir: Option<&Path>,
    monitor: &dyn Monitor,
) -> Result<TrainReport> {
    if seqs.is_empty() {
        return Err(TrainError::Data("no training examples".into()));
    }
    let dev = model.device();
    let vars: Vec<(String, &Var)> = lora.named_vars();
    let mut adam = AdamState {
        m: vars
            .iter()
            .map(|(_, v)| v.zeros_like())
            .collect::<candle_core::Result<_>>()?,
        v: vars
            .iter()
            .map(|(_, v)| v.zeros_like())
            .collect::<candle_core::Result<_>>()?,
    };
    let total = cfg.total_steps(seqs.len());
    let mut report = TrainReport {
        losses: Vec::new(),
        steps: total,
        tokens: 0,
        steps_run: 0,
        tokens_run: 0,
        seconds: 0.0,
        resumed_from: 0,
    };
    let mut done = 0usize;
    if let Some(dir) = work_dir {
        if dir.join(CKPT).is_file() {
            done = restore(&dir.join(CKPT), &vars, &mut adam, &mut report, dev)?;
            report.resumed_from = done;
        }
    }
    let start = Instant::now();
    let mut step = 0usize;
    // Epochs until `total` steps are taken: `epochs` of them, or as many as
    // `max_steps` needs (every epoch has at least one step: seqs is not empty).
    let mut epoch = 0;
    'run: while step < total {
        for group in epoch_plan(cfg, seqs.len(), epoch) {
            if step >= total {
                break 'run;
            }
            if step < done {
                step += 1;
                continue;
            }
            if monitor.stop() {
                if let Some(dir) = work_dir {
                    save(&dir.join(CKPT), step, &vars, &adam, &report)?;
                }
                return Err(Stopped.into());
            }
            let lr = cfg.lr_at(step, total);
            let mut grads: Vec<Option<Tensor>> = vec![None; vars.len()];
            let mut step_loss = 0.0;
            let k = group.len() as f64;
            for (mi, micro) in group.iter().enumerate() {
                let items: Vec<(Vec<u32>, Vec<bool>)> =
                    micro.iter().map(|&i| seqs[i].clone()).collect();
                let batch = Batch::new(&items, pad, dev)?;
                report.tokens_run += batch.n_tokens;
                report.tokens += batch.n_tokens;
                if batch.n_labels == 0 {
                    continue;
                }
                let mut dropout = Dropout::new(
                    cfg.lora.dropout,
                    cfg.model_dropout,
                    cfg.seed
                        .wrapping_mul(1_000_003)
                        .wrapping_add((step * 64 + mi) as u64),
                );
                let sum = model.loss_sum(&batch, Some(lora), Some(&mut dropout))?;
                let loss = (sum / (batch.n_labels as f64 * k))?;
                step_loss += scalar(&loss)?;
                let g = loss.backward()?;
                for (i, (name, var)) in vars.iter().enumerate() {
                    let gi = g
                        .get(var.as_tensor())
                        .ok_or_else(|| TrainError::Invalid(format!("no gradient for {name}")))?;
                    grads[i] = Some(match grads[i].take() {
                        Some(acc) => (acc + gi)?,
                        None => gi.clone(),
                    });
                }
            }
            let t = (step + 1) as i32;
            let bc1 = 1.0 - cfg.beta1.powi(t);
            let bc2 = 1.0 - cfg.beta2.powi(t);
            for (i, (_, var)) in vars.iter().enumerate() {
                let Some(g) = grads[i].take() else { continue };
                let p = var.as_tensor();
                let p = (p * (1.0 - lr * cfg.weight_decay))?;
                adam.m[i] = ((&adam.m[i] * cfg.beta1)? + (&g * (1.0 - cfg.beta1))?)?;
                adam.v[i] = ((&adam.v[i] * cfg.beta2)? + (g.sqr()? * (1.0 - cfg.beta2))?)?;
                let denom = ((adam.v[i].sqrt()? / bc2.sqrt())? + cfg.eps)?;
                let upd = ((&adam.m[i] / denom)? * (lr / bc1))?;
                var.set(&(p - upd)?)?;
            }
            step += 1;
            report.steps_run += 1;
            report.losses.push((step, step_loss));
            monitor.step(step, total, step_loss, lr);
            if let Some(dir) = work_dir {
                if cfg.checkpoint_every > 0
                    && step.is_multiple_of(cfg.checkpoint_every)
                    && step < total
                {
                    save(&dir.join(CKPT), step, &vars, &adam, &report)?;
                }
            }
        }
        epoch += 1;
    }
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

fn save(
    path: &Path,
    step: usize,
    vars: &[(String, &Var)],
    adam: &AdamState,
    report: &TrainReport,
) -> Result<()> {
    let mut t: HashMap<String, Tensor> = HashMap::new();
    for (i, (name, var)) in vars.iter().enumerate() {
        t.insert(
            format!("param.{name}"),
            var.as_tensor().to_device(&Device::Cpu)?,
        );
        t.insert(format!("m.{name}"), adam.m[i].to_device(&Device::Cpu)?);
        t.insert(format!("v.{name}"), adam.v[i].to_device(&Device::Cpu)?);
    }
    t.insert("step".into(), Tensor::new(&[step as u32], &Device::Cpu)?);
    let n = report.losses.len();
    let steps: Vec<u32> = report.losses.iter().map(|(s, _)| *s as u32).collect();
    let losses: Vec<f64> = report.losses.iter().map(|(_, l)| *l).collect();
    t.insert(
        "loss_steps".into(),
        Tensor::from_vec(steps, n, &Device::Cpu)?,
    );
    t.insert(
        "loss_values".into(),
        Tensor::from_vec(losses, n, &Device::Cpu)?,
    );
    t.insert(
        "tokens".into(),
        Tensor::new(&[report.tokens as u64 as i64], &Device::Cpu)?,
    );
    let tmp = path.with_extension("tmp");
    candle_core::safetensors::save(&t, &tmp)
        .map_err(|e| TrainError::tensor(format!("writing checkpoint {}", tmp.display()), e))?;
    std::fs::rename(&tmp, path)
        .map_err(|e| TrainError::io(format!("rename to {}", path.display()), e))
}

fn restore(
    path: &Path,
    vars: &[(String, &Var)],
    adam: &mut AdamState,
    report: &mut TrainReport,
    dev: &Device,
) -> Result<usize> {
    let t = candle_core::safetensors::load(path, dev)
        .map_err(|e| TrainError::tensor(format!("reading checkpoint {}", path.display()), e))?;
    let get = |k: &str| -> Result<&Tensor> {
        t.get(k).ok_or_else(|| {
            TrainError::Invalid(format!("checkpoint {} has no `{k}`", path.display()))
        })
    };
    for (i, (name, var)) in vars.iter().enumerate() {
        var.set(get(&format!("param.{name}"))?)?;
        adam.m[i] = get(&format!("m.{name}"))?.clone();
        adam.v[i] = get(&format!("v.{name}"))?.clone();
    }
    let step = get("step")?.to_vec1::<u32>()?[0] as usize;
    let steps = get("loss_steps")?.to_vec1::<u32>()?;
    let losses = get("loss_values")?.to_vec1::<f64>()?;
    report.losses = steps.into_iter().map(|s| s as usize).zip(losses).collect();
    report.tokens = get("tokens")?.to_vec1::<i64>()?[0] as usize;
    Ok(step)
}

/// Summed target cross-entropy and number of predicted tokens over `seqs`.
pub fn eval_sum(
    model: &dyn CausalLm,
    lora: Option<&Lora>,
    seqs: &[(Vec<u32>, Vec<bool>)],
    batch_size: usize,
    pad: u32,
    monitor: &dyn Monitor,
) -> Result<(f64, usize)> {
    let (mut sum, mut count) = (0.0, 0);
    for_each_batch(model, seqs, batch_size, pad, monitor, |_, _, batch| {
        sum += scalar(&model.loss_sum(batch, lora, None)?.detach())?;
        count += batch.n_labels;
        Ok(())
    })?;
    Ok((sum, count))
}

/// Each sequence's scored-token cross-entropies, in position order, in the
/// order of `seqs`: what [`eval_sum`] sums, kept apart per token so that
/// callers can report each example and split off its end token
/// ([`crate::data::Scored`]). Batched as [`eval_sum`] (sorted by length,
/// one forward pass a batch); `monitor` sees one step a batch.
pub fn token_losses(
    model: &dyn CausalLm,
    lora: Option<&Lora>,
    seqs: &[(Vec<u32>, Vec<bool>)],
    batch_size: usize,
    pad: u32,
    monitor: &dyn Monitor,
) -> Result<Vec<Vec<f64>>> {
    let mut out = vec![Vec::new(); seqs.len()];
    for_each_batch(
        model,
        seqs,
        batch_size,
        pad,
        monitor,
        |chunk, items, batch| {
            let losses = batch_token_losses(model, lora, batch)?;
            // Batch::new lists the scored positions example by example.
            let mut at = 0;
            for (&i, (toks, target)) in chunk.iter().zip(items) {
                let n = (1..toks.len()).filter(|&j| target[j]).count();
                let Some(mine) = losses.get(at..at + n) else {
                    invalid!(
                        "internal: {} scored tokens in a batch of more",
                        losses.len()
                    );
                };
                out[i] = mine.to_vec();
                at += n;
            }
            if at != losses.len() {
                invalid!(
                    "internal: {} scored tokens in a batch of {at}",
                    losses.len()
                );
            }
            Ok(())
        },
    )?;
    Ok(out)
}

/// Runs `each(indexes, items, batch)` over `seqs` in batches of `batch_size`, sorted by
/// length (padding stays small; callers' results do not depend on the order), skipping
/// batches with nothing scored; `monitor` sees one step a batch and can stop it.
fn for_each_batch(
    model: &dyn CausalLm,
    seqs: &[(Vec<u32>, Vec<bool>)],
    batch_size: usize,
    pad: u32,
    monitor: &dyn Monitor,
    mut each: impl FnMut(&[usize], &[(Vec<u32>, Vec<bool>)], &Batch) -> Result<()>,
) -> Result<()> {
    let mut order: Vec<usize> = (0..seqs.len()).collect();
    order.sort_by_key(|&i| seqs[i].0.len());
    let chunks: Vec<&[usize]> = order.chunks(batch_size.max(1)).collect();
    for (step, chunk) in chunks.iter().enumerate() {
        if monitor.stop() {
            return Err(Stopped.into());
        }
        let items: Vec<(Vec<u32>, Vec<bool>)> = chunk.iter().map(|&i| seqs[i].clone()).collect();
        let batch = Batch::new(&items, pad, model.device())?;
        if batch.n_labels > 0 {
            each(chunk, &items, &batch)?;
        }
        monitor.step(step + 1, chunks.len(), 0.0, 0.0);
    }
    Ok(())
}

/// The cross-entropy of every scored token of a batch, in the batch's order
/// (as [`CausalLm::loss_sum`] computes them before summing; in f32 at least).
fn batch_token_losses(
    model: &dyn CausalLm,
    lora: Option<&Lora>,
    batch: &Batch,
) -> Result<Vec<f64>> {
    use candle_core::D;
    let hidden = model.hidden(&batch.ids, lora, None)?;
    let picked = hidden.index_select(&batch.positions, 0)?;
    let logits = crate::ops::frozen_linear(&picked, model.lm_head())?;
    let logits = match logits.dtype() {
        DType::F32 | DType::F64 => logits,
        _ => logits.to_dtype(DType::F32)?,
    };
    let max = logits.max_keepdim(D::Minus1)?;
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let label = shifted.gather(&batch.labels.unsqueeze(1)?, 1)?;
    let losses: Tensor = (lse - label)?.squeeze(1)?;
    Ok(losses
        .to_dtype(DType::F64)?
        .to_device(&Device::Cpu)?
        .to_vec1::<f64>()?)
}

/// Writes `adapter_config.json` and `adapter_model.safetensors` (PEFT).
pub fn save_peft(lora: &Lora, dir: &Path, base_model: &str) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| TrainError::io(format!("create {}", dir.display()), e))?;
    let c = &lora.config;
    let config = serde_json::json!({
        "alpha_pattern": {},
        "auto_mapping": null,
        "base_model_name_or_path": base_model,
        "bias": "none",
        "fan_in_fan_out": lora.fan_in_fan_out,
        "inference_mode": true,
        "init_lora_weights": true,
        "layers_pattern": null,
        "layers_to_transform": null,
        "lora_alpha": c.alpha,
        "lora_dropout": c.dropout,
        "modules_to_save": null,
        "peft_type": "LORA",
        "r": c.rank,
        "rank_pattern": {},
        "revision": null,
        "target_modules": c.target_modules,
        "task_type": "CAUSAL_LM",
        "use_dora": false,
        "use_rslora": false
    });
    let config_path = dir.join("adapter_config.json");
    let text = serde_json::to_string_pretty(&config)
        .map_err(|e| TrainError::json(format!("writing {}", config_path.display()), e))?;
    std::fs::write(&config_path, text + "\n")
        .map_err(|e| TrainError::io(format!("write {}", config_path.display()), e))?;
    let mut t: HashMap<String, Tensor> = HashMap::new();
    for (name, var) in lora.named_vars() {
        t.insert(name, var.as_tensor().to_device(&Device::Cpu)?);
    }
    let weights_path = dir.join("adapter_model.safetensors");
    candle_core::safetensors::save(&t, &weights_path)
        .map_err(|e| TrainError::tensor(format!("writing {}", weights_path.display()), e))
}

/// Reads a PEFT LoRA adapter written by [`save_peft`] or by PEFT itself.
pub fn load_peft(dir: &Path, device: &Device) -> Result<Lora> {
    load_peft_files(
        &dir.join("adapter_config.json"),
        &dir.join("adapter_model.safetensors"),
        device,
    )
}

/// [`load_peft`] from the two files wherever they are.
pub fn load_peft_files(config_path: &Path, weights_path: &Path, device: &Device) -> Result<Lora> {
    let dir = config_path;
    let text = std::fs::read_to_string(config_path).map_err(|e| {
        TrainError::io(format!("{} is not a PEFT adapter config", dir.display()), e)
    })?;
    let j: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| TrainError::json(format!("{} is not valid JSON", dir.display()), e))?;
    if j["peft_type"] != "LORA" {
        unsupported!("adapter in {} is not LoRA", dir.display());
    }
    if j["use_dora"] == true || j["use_rslora"] == true {
        unsupported!("DoRA and rsLoRA adapters are not supported");
    }
    let Some(rank) = j["r"].as_u64() else {
        invalid!("adapter_config.json: no `r`");
    };
    let rank = rank as usize;
    let Some(alpha) = j["lora_alpha"].as_f64() else {
        invalid!("adapter_config.json: no `lora_alpha`");
    };
    let target_modules: Vec<String> = match &j["target_modules"] {
        serde_json::Value::Array(a) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        serde_json::Value::String(s) => vec![s.clone()],
        _ => unsupported!("adapter_config.json: unsupported `target_modules`"),
    };
    let config = LoraConfig {
        rank,
        alpha,
        dropout: j["lora_dropout"].as_f64().unwrap_or(0.0),
        target_modules,
    };
    let tensors = candle_core::safetensors::load(weights_path, device).map_err(|e| {
        TrainError::tensor(
            format!("reading adapter weights {}", weights_path.display()),
            e,
        )
    })?;
    let mut adapters = BTreeMap::new();
    let mut layer_prefix: Option<String> = None;
    for (name, a) in &tensors {
        let Some(prefix) = name.strip_suffix(".lora_A.weight") else {
            continue;
        };
        let Some(b) = tensors.get(&format!("{prefix}.lora_B.weight")) else {
            invalid!("adapter has {name} but no lora_B");
        };
        let Some((layers, layer, path)) = split_peft_name(prefix) else {
            invalid!("unexpected adapter tensor name {name}");
        };
        match &layer_prefix {
            Some(p) if *p != layers => invalid!("adapter mixes layers `{p}N` and `{layers}N`"),
            _ => layer_prefix = Some(layers),
        }
        adapters.insert(
            (layer, path),
            Adapter {
                a: Var::from_tensor(&a.to_dtype(DType::F32)?)?,
                b: Var::from_tensor(&b.to_dtype(DType::F32)?)?,
                scaling: config.scaling(),
            },
        );
    }
    Ok(Lora {
        config,
        adapters,
        layer_prefix: layer_prefix
            .ok_or_else(|| TrainError::Invalid("the adapter holds no LoRA tensors".into()))?,
        fan_in_fan_out: j["fan_in_fan_out"] == true,
    })
}

/// `base_model.model.model.layers.3.self_attn.q_proj` ->
/// (`model.layers.`, 3, `self_attn.q_proj`): the layer index is the first
/// all-digit part.
fn split_peft_name(name: &str) -> Option<(String, usize, String)> {
    let rest = name.strip_prefix("base_model.model.")?;
    let parts: Vec<&str> = rest.split('.').collect();
    let i = parts
        .iter()
        .position(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))?;
    if i == 0 || i + 1 >= parts.len() {
        return None;
    }
    let layers = format!("{}.", parts[..i].join("."));
    Some((layers, parts[i].parse().ok()?, parts[i + 1..].join(".")))
}
