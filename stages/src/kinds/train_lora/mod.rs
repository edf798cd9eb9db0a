//! `train_lora`: LoRA fine-tuning of a local model on a dataset (Sec 4.1.2).
//!
//! Defaults are the paper's: rank 8, alpha 16, lr 1e-4, weight decay 1e-4,
//! 3 epochs, the final step's adapter. Target modules default to PEFT's
//! choice for llama (q_proj, v_proj); the schedule to Hugging Face
//! Trainer's (linear decay, no warm-up). The loss is on the target tokens
//! (the input masked out) unless `loss = "all"`. Examples are formatted as
//! plain text, not a chat template (see `flow_train::data`).
//!
//! `max_steps` trains a fixed number of optimizer steps instead of `epochs`
//! passes (cycling through the data, reshuffled each epoch): the control for
//! variable-size mixes (Fig. 6, 7), whose larger mixes otherwise also train
//! more steps, the paper's own explanation of their trend (App. D.2).
//!
//! Outputs: `adapter_config.json` + `adapter_model.safetensors` (PEFT's
//! format, loadable with `PeftModel.from_pretrained`) and `train_loss.csv`
//! (the training-loss curve, Fig. 14). Checkpoints go to the work folder
//! every `checkpoint_every` steps, so a killed run resumes. Metrics include
//! `steps`, `epochs_run` (steps over the steps of one epoch) and
//! `truncated_share` (examples cut to `max_seq_len`).

use flow_engine::{
    Context, Outcome, ParamProblem, ParamSpec, ParamType, Params, Stage, StageError, Threads, Value,
};
use flow_train::data::Loss;
use flow_train::lora::LoraConfig;
use flow_train::trainer::{self, Schedule, TrainConfig};

use crate::contracts::loss_curve::{self, LOSS_FILE};
use crate::contracts::{adapter, dataset};
use crate::toolkit::cores::thread_pool;
use crate::toolkit::models::load_causal_lm;
use crate::toolkit::params;
use crate::toolkit::training::{self, encode_examples, trainer_error, StageMonitor};

pub struct TrainLora;

/// The parameters of a `train_lora` stage, read once.
struct Settings {
    train: TrainConfig,
    loss: Loss,
    max_seq_len: usize,
    /// The base model's `[models.*]` entry.
    model: String,
}

impl Settings {
    fn from_params(p: &Params, seed: u64) -> Result<Self, StageError> {
        Ok(Settings {
            train: train_config(p, seed)?,
            loss: training::loss(p)?,
            max_seq_len: params::count(p, "max_seq_len")?,
            model: params::string(p, "model")?,
        })
    }
}

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
    /// LoRA initialization and data order come from the seed: replicates train again.
    fn replicable(&self) -> bool {
        true
    }

    fn about(&self) -> &'static str {
        "Fine-tune a local model with LoRA on a dataset (loss on the targets); writes a PEFT \
         adapter and the training-loss curve"
    }

    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::input("data", "stage with the training examples").required(),
            crate::resources::model_param("model", "the base model (a `[models.*]` entry)")
                .required(),
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
            ParamSpec::int("epochs", "passes over the data (unless `max_steps` is set)")
                .min(1.0)
                .default(3),
            ParamSpec::int(
                "max_steps",
                "train exactly this many optimizer steps, cycling through the data in \
                 reshuffled epochs (the last one partial), instead of `epochs` passes: the same \
                 budget for data sets of different sizes",
            )
            .min(1.0),
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
        let Settings {
            train: cfg,
            loss,
            max_seq_len: max_len,
            model: model_name,
        } = Settings::from_params(ctx.params, ctx.seed)?;
        let examples = dataset::read_nonempty(ctx.input("data")?, "to train on")?;
        let pool = thread_pool(ctx.threads)?;
        let device = flow_train::device();
        let loaded = load_causal_lm(ctx, &model_name, &device)?;
        let encoded = encode_examples(&loaded.tokenizer, &examples, loss, max_len)?;
        let truncated_share = training::truncated_share(ctx, &encoded, max_len);
        let seqs = training::seqs(encoded);
        let targets = loaded.model.targets();
        let lora = flow_train::lora::Lora::init(&targets, &cfg.lora, cfg.seed, &device)
            .map_err(|e| StageError::invalid(format!("lora.target_modules: {e:#}")))?;
        let total = cfg.total_steps(seqs.len());
        let epochs_run = total as f64 / cfg.steps_per_epoch(seqs.len()) as f64;
        let budget = match cfg.max_steps {
            Some(n) => format!("max_steps = {n} ({epochs_run:.2} epochs)"),
            None => format!("{} epochs", cfg.epochs),
        };
        ctx.log(format!(
            "{} examples, {budget}, {total} optimizer steps; {} model; LoRA r={} alpha={} on \
             {} ({} trainable parameters); device {:?}",
            seqs.len(),
            targets.arch,
            cfg.lora.rank,
            cfg.lora.alpha,
            lora.config.target_modules.join(", "),
            lora.num_params(),
            device
        ));
        ctx.progress.set_total(total as u64, "steps");
        let monitor = StageMonitor {
            ctx: &*ctx,
            show_loss: true,
        };
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
        let outcome = adapter::output(Outcome::default(), &lora, &adapter_dir, &model_name)?;
        let csv = ctx.out_path(LOSS_FILE);
        loss_curve::write_csv(&csv, &report.losses)?;
        let final_loss = report.losses.last().map(|l| l.1).unwrap_or(f64::NAN);
        ctx.log(format!(
            "final training loss {final_loss:.4}; {:.1} tokens/s over {} steps in {:.0} s",
            report.tokens_per_s(),
            report.steps_run,
            report.seconds
        ));
        Ok(outcome
            .published(LOSS_FILE, csv)
            .metric("train_loss", final_loss)
            .metric(loss_curve::METRIC, loss_curve::to_metric(&report.losses))
            .metric("steps", report.steps as u64)
            .metric("epochs_run", epochs_run)
            .metric("examples", seqs.len() as u64)
            .metric("truncated_share", truncated_share)
            .metric("tokens", report.tokens as u64)
            .metric("tokens_per_s", report.tokens_per_s())
            .metric("trainable_params", lora.num_params() as u64)
            .metric(adapter::BASE_MODEL, model_name)
            .metric("task", dataset::task_name(&examples)))
    }
}

/// The `lora` table: its fields, else the defaults [`lora_fields`] declares.
fn lora_config(p: &Params) -> Result<LoraConfig, StageError> {
    let table = p.get("lora").and_then(Value::as_table);
    let fields = lora_fields();
    let field = |k: &str| params::field(table, &fields, k);
    let missing = |k: &str| StageError::Other(format!("internal: `lora.{k}` missing"));
    Ok(LoraConfig {
        rank: field("rank")
            .and_then(Value::as_i64)
            .ok_or_else(|| missing("rank"))? as usize,
        alpha: field("alpha")
            .and_then(Value::as_f64)
            .ok_or_else(|| missing("alpha"))?,
        dropout: field("dropout")
            .and_then(Value::as_f64)
            .ok_or_else(|| missing("dropout"))?,
        // None: PEFT's choice for the architecture.
        target_modules: field("target_modules")
            .and_then(Value::as_list)
            .map(|list| {
                list.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
    })
}

fn train_config(p: &Params, seed: u64) -> Result<TrainConfig, StageError> {
    let count = |n: &str| params::count(p, n);
    Ok(TrainConfig {
        lora: lora_config(p)?,
        lr: p.require_float("lr")?,
        weight_decay: p.require_float("weight_decay")?,
        beta1: p.require_float("beta1")?,
        beta2: p.require_float("beta2")?,
        eps: p.require_float("eps")?,
        schedule: match p.require_str("schedule")? {
            "constant" => Schedule::Constant,
            "cosine" => Schedule::Cosine,
            _ => Schedule::Linear,
        },
        warmup_steps: count("warmup_steps")?,
        epochs: count("epochs")?,
        max_steps: params::opt_count(p, "max_steps")?,
        batch_size: count("batch_size")?,
        grad_accum: count("grad_accum")?,
        seed,
        checkpoint_every: count("checkpoint_every")?,
        model_dropout: params::flag(p, "model_dropout")?,
    })
}

#[cfg(test)]
mod tests;
