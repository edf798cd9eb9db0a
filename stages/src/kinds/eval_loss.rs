//! `eval_loss`: test loss of a model on a dataset (Sec 4.1.2).
//!
//! The test loss is the mean token cross-entropy of the targets given the
//! inputs (the input tokens are masked, as in training; `loss = "all"`
//! scores every token), averaged over all predicted tokens of the dataset
//! (not per example). Perplexity is its exponential. The model is the base
//! model, or the base model plus the LoRA adapter of a `train_lora` stage.
//!
//! Beside the mean, each example's loss (its mean per scored token) and
//! scored tokens are written with its id (`per_example.csv`, see
//! [`per_example`]): the test loss is their token-weighted mean, and
//! intervals over test examples resample them.

use candle_core::{DType, Tensor, D};
use flow_engine::{Context, Outcome, ParamProblem, ParamSpec, Params, Stage, StageError, Threads};
use flow_train::data::Loss;
use flow_train::lora::Lora;
use flow_train::model::{Batch, CausalLm};
use flow_train::trainer::Monitor;
use flow_train::ops;

use crate::contracts::per_example::{self, ExampleLoss, PER_EXAMPLE_FILE};
use crate::contracts::{adapter, dataset};
use crate::toolkit::cores::thread_pool;
use crate::toolkit::models::load_causal_lm;
use crate::toolkit::params;
use crate::toolkit::training::{self, encode_all, other, trainer_error, StageMonitor};

pub struct EvalLoss;

/// The parameters of an `eval_loss` stage, read once.
struct Settings {
    loss: Loss,
    max_seq_len: usize,
    batch_size: usize,
    /// The base model's `[models.*]` entry; `None`: the adapter's.
    model: Option<String>,
    /// Whether an `adapter` input is given.
    with_adapter: bool,
}

impl Settings {
    fn from_params(p: &Params) -> Result<Self, StageError> {
        Ok(Settings {
            loss: training::loss(p)?,
            max_seq_len: params::count(p, "max_seq_len")?,
            batch_size: params::count(p, "batch_size")?,
            model: p.str("model").map(str::to_string),
            with_adapter: p.get("adapter").is_some(),
        })
    }
}

pub const EVAL_FILE: &str = "eval.json";

impl Stage for EvalLoss {
    fn kind(&self) -> &'static str {
        "eval_loss"
    }

    fn version(&self) -> u32 {
        // 2: each example's loss is written (`per_example.csv`); the mean
        // is the sum of the examples' token losses over their tokens.
        2
    }

    fn about(&self) -> &'static str {
        "Test loss (mean target-token cross-entropy) and perplexity of a base model, or a base \
         model plus a `train_lora` adapter, on a dataset; each example's loss beside it \
         (per_example.csv: id, loss, tokens)"
    }

    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::input("data", "stage with the test examples").required(),
            crate::resources::model_param(
                "model",
                "the base model (a `[models.*]` entry); default: the adapter's",
            ),
            ParamSpec::input(
                "adapter",
                "a `train_lora` stage whose adapter is applied; unset: the base model alone",
            ),
            ParamSpec::int(
                "max_seq_len",
                "tokens per example at most (prompt cut first)",
            )
            .min(2.0)
            .default(256),
            ParamSpec::choice(
                "loss",
                &["target", "all"],
                "which tokens are scored: the target only (input masked) or all",
            )
            .default("target"),
            ParamSpec::int("batch_size", "examples per forward pass")
                .min(1.0)
                .default(8)
                .execution(),
        ]
    }

    fn check(&self, params: &Params) -> Vec<ParamProblem> {
        if params.get("model").is_none() && params.get("adapter").is_none() {
            return vec![ParamProblem::new(
                "model",
                "is required when no `adapter` is given (the base model to evaluate)",
            )];
        }
        Vec::new()
    }

    fn threads(&self, _params: &Params, _: &flow_engine::Resources) -> Threads {
        Threads::All
    }

    fn run(&self, ctx: &mut Context<'_>) -> Result<Outcome, StageError> {
        let Settings {
            loss,
            max_seq_len: max_len,
            batch_size,
            model,
            with_adapter,
        } = Settings::from_params(ctx.params)?;
        let examples = dataset::read_nonempty(ctx.input("data")?, "to evaluate")?;
        let model_name = match model {
            Some(m) => m,
            None => adapter_base(ctx)?,
        };
        let device = flow_train::device();
        let loaded = load_causal_lm(ctx, &model_name, &device)?;
        let lora = if with_adapter {
            let up = ctx.input("adapter")?;
            if let Some(base) = adapter::base_model(up) {
                if base != model_name {
                    return Err(StageError::invalid(format!(
                        "adapter `{}` was trained on model `{base}`, not `{model_name}`",
                        up.instance
                    )));
                }
            }
            let lora = adapter::load(up, &device)?;
            lora.check_fits(&loaded.model.targets()).map_err(|e| {
                StageError::invalid(format!("adapter `{}`: {e:#}", up.instance))
            })?;
            Some((up.instance.clone(), lora))
        } else {
            None
        };
        let seqs = encode_all(&loaded.tokenizer, &examples, loss, max_len)?;
        ctx.progress
            .set_total(seqs.len().div_ceil(batch_size) as u64, "batches");
        let pool = thread_pool(ctx.threads)?;
        let monitor = StageMonitor {
            ctx: &*ctx,
            show_loss: false,
        };
        let scored = pool.install(|| {
            per_example_sums(
                loaded.model.as_ref(),
                lora.as_ref().map(|l| &l.1),
                &seqs,
                batch_size,
                loaded.tokenizer.eos,
                &monitor,
            )
        })?;
        let count: usize = scored.iter().map(|s| s.1).sum();
        if count == 0 {
            return Err(StageError::invalid("no target tokens to score"));
        }
        let sum: f64 = scored.iter().map(|s| s.0).sum();
        let test_loss = sum / count as f64;
        let rows: Vec<ExampleLoss> = examples
            .iter()
            .zip(&scored)
            .map(|(e, &(s, n))| ExampleLoss {
                id: e.id.clone(),
                loss: if n > 0 { s / n as f64 } else { f64::NAN },
                tokens: n,
            })
            .collect();
        let per_example_path = ctx.out_path(PER_EXAMPLE_FILE);
        per_example::write(&per_example_path, &rows)?;
        let perplexity = test_loss.exp();
        let what = match &lora {
            Some((inst, _)) => format!("{model_name} + adapter of `{inst}`"),
            None => format!("{model_name} (base)"),
        };
        ctx.log(format!(
            "{what} on {} examples: test loss {test_loss:.4}, perplexity {perplexity:.2}, {count} \
             tokens",
            seqs.len()
        ));
        let report = serde_json::json!({
            "model": what,
            "test_loss": test_loss,
            "perplexity": perplexity,
            "tokens": count,
            "examples": seqs.len(),
        });
        let out = ctx.out_path(EVAL_FILE);
        std::fs::write(
            &out,
            serde_json::to_string_pretty(&report).unwrap_or_default() + "\n",
        )
        .map_err(|e| StageError::io(format!("write {}", out.display()), e))?;
        Ok(Outcome::default()
            .output(EVAL_FILE, out)
            .published(PER_EXAMPLE_FILE, per_example_path)
            .metric("test_loss", test_loss)
            .metric("perplexity", perplexity)
            .metric("tokens", count as u64)
            .metric("examples", seqs.len() as u64)
            .metric("task", dataset::task_name(&examples)))
    }
}

/// The `[models.*]` entry an adapter was trained on, so that a grid over
/// models fans out once, in `train_lora`.
fn adapter_base(ctx: &Context<'_>) -> Result<String, StageError> {
    let up = ctx.input("adapter")?;
    adapter::base_model(up)
        .map(str::to_string)
        .ok_or_else(|| {
            StageError::invalid(format!(
                "adapter `{}` does not say which model it was trained on; set `model`",
                up.instance
            ))
        })
}

/// Each sequence's summed cross-entropy over its scored tokens, and how
/// many were scored, in the order of `seqs`. Batches as
/// `flow_train::trainer::eval_sum` does (sorted by length to keep padding
/// small; one forward pass a batch), with the per-token losses kept apart.
fn per_example_sums(
    model: &dyn CausalLm,
    lora: Option<&Lora>,
    seqs: &[(Vec<u32>, Vec<bool>)],
    batch_size: usize,
    pad: u32,
    monitor: &dyn Monitor,
) -> Result<Vec<(f64, usize)>, StageError> {
    let mut order: Vec<usize> = (0..seqs.len()).collect();
    order.sort_by_key(|&i| seqs[i].0.len());
    let mut out = vec![(0.0, 0); seqs.len()];
    let chunks: Vec<&[usize]> = order.chunks(batch_size.max(1)).collect();
    for (step, chunk) in chunks.iter().enumerate() {
        if monitor.stop() {
            return Err(StageError::Cancelled);
        }
        let items: Vec<(Vec<u32>, Vec<bool>)> = chunk.iter().map(|&i| seqs[i].clone()).collect();
        let batch = Batch::new(&items, pad, model.device()).map_err(trainer_error)?;
        if batch.n_labels > 0 {
            let losses = token_losses(model, lora, &batch).map_err(other)?;
            // Batch::new lists the scored positions example by example.
            let mut at = 0;
            for (&i, (toks, target)) in chunk.iter().zip(&items) {
                let n = (1..toks.len()).filter(|&j| target[j]).count();
                out[i] = (losses[at..at + n].iter().sum(), n);
                at += n;
            }
            if at != losses.len() {
                return Err(StageError::Other(format!(
                    "internal: {} scored tokens in a batch of {at}",
                    losses.len()
                )));
            }
        }
        monitor.step(step + 1, chunks.len(), 0.0, 0.0);
    }
    Ok(out)
}

/// The cross-entropy of every scored token of a batch, in the batch's order
/// (as `CausalLm::loss_sum` computes them before summing; in f32 at least).
fn token_losses(
    model: &dyn CausalLm,
    lora: Option<&Lora>,
    batch: &Batch,
) -> Result<Vec<f64>, Box<dyn std::error::Error>> {
    let hidden = model.hidden(&batch.ids, lora, None)?;
    let picked = hidden.index_select(&batch.positions, 0)?;
    let logits = ops::frozen_linear(&picked, model.lm_head())?;
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
        .to_device(&candle_core::Device::Cpu)?
        .to_vec1::<f64>()?)
}
