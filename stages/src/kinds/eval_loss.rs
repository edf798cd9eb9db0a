//! `eval_loss`: test loss of a model on a dataset (Sec 4.1.2).
//!
//! The test loss is the mean token cross-entropy of the targets given the
//! inputs (the input tokens are masked, as in training; `loss = "all"`
//! scores every token), averaged over all predicted tokens of the dataset
//! (not per example). Perplexity is its exponential. The model is the base
//! model, or the base model plus the LoRA adapter of a `train_lora` stage.
//!
//! Two losses are reported. `test_loss` leaves out the end-of-text token
//! after each target: how well the model predicts where to stop is a format
//! effect that favours whatever trained longer: in the quickstart,
//! SmolLM2-135M's loss on that one token falls from 5.27 to 0.07 nats, 0.42
//! of the 0.75-nat gain with it (3.365 -> 2.619; 3.185 -> 2.859 without).
//! `test_loss_with_end` scores it too (the number before version 3; training
//! still learns it), and `end_token_loss` is its mean alone.
//!
//! Beside the means, each example's losses (its mean per scored token) and
//! scored tokens, without and with the end token, are written with its id
//! (`per_example.csv`, see [`per_example`]): the test losses are their
//! token-weighted means, and intervals over test examples resample them.

use flow_engine::{Context, Outcome, ParamProblem, ParamSpec, Params, Stage, StageError, Threads};
use flow_train::data::{Loss, Scored};
use flow_train::trainer;

use crate::contracts::per_example::{self, ExampleLoss, WithEnd, PER_EXAMPLE_FILE};
use crate::contracts::{adapter, dataset};
use crate::toolkit::cores::thread_pool;
use crate::toolkit::models::load_causal_lm;
use crate::toolkit::params;
use crate::toolkit::training::{self, encode_examples, trainer_error, StageMonitor};

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
        // 3: `test_loss` leaves out the end-of-text token (the loss with
        // it is `test_loss_with_end`); `truncated_share`.
        3
    }

    fn about(&self) -> &'static str {
        "Test loss (mean target-token cross-entropy, the end-of-text token left out) and \
         perplexity of a base model, or a base model plus a `train_lora` adapter, on a \
         dataset; also with the end token (test_loss_with_end) and the share of examples cut \
         to max_seq_len; each example's losses beside them (per_example.csv: id, loss, \
         tokens, loss_with_end, tokens_with_end)"
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
            lora.check_fits(&loaded.model.targets())
                .map_err(|e| StageError::invalid(format!("adapter `{}`: {e:#}", up.instance)))?;
            Some((up.instance.clone(), lora))
        } else {
            None
        };
        let encoded = encode_examples(&loaded.tokenizer, &examples, loss, max_len)?;
        let truncated_share = training::truncated_share(ctx, &encoded, max_len);
        let ends: Vec<bool> = encoded.iter().map(|e| e.ends).collect();
        let seqs = training::seqs(encoded);
        ctx.progress
            .set_total(seqs.len().div_ceil(batch_size) as u64, "batches");
        let pool = thread_pool(ctx.threads)?;
        let monitor = StageMonitor {
            ctx: &*ctx,
            show_loss: false,
        };
        let losses = pool
            .install(|| {
                trainer::token_losses(
                    loaded.model.as_ref(),
                    lora.as_ref().map(|l| &l.1),
                    &seqs,
                    batch_size,
                    loaded.tokenizer.eos,
                    &monitor,
                )
            })
            .map_err(trainer_error)?;
        let scored: Vec<Scored> = losses
            .iter()
            .zip(&ends)
            .map(|(l, &end)| Scored::of(l, end))
            .collect();
        let t = Totals::of(&scored);
        if t.text_tokens == 0 {
            return Err(StageError::invalid(format!(
                "no target tokens to score besides the end-of-text token ({} examples, \
                 max_seq_len = {max_len})",
                seqs.len()
            )));
        }
        let (test_loss, with_end) = (t.text_loss(), t.with_end_loss());
        let (rows, rows_with_end) = per_example_rows(&examples, &scored);
        let per_example_path = ctx.out_path(PER_EXAMPLE_FILE);
        per_example::write_with_end(&per_example_path, &rows, &rows_with_end)?;
        let perplexity = test_loss.exp();
        let what = match &lora {
            Some((inst, _)) => format!("{model_name} + adapter of `{inst}`"),
            None => format!("{model_name} (base)"),
        };
        let end_loss = t.end_loss();
        ctx.log(format!(
            "{what} on {} examples: test loss {test_loss:.4} (perplexity {perplexity:.2}) over \
             {} target tokens; with the end token {with_end:.4} over {}; the end token alone \
             {end_loss:.4}",
            seqs.len(),
            t.text_tokens,
            t.text_tokens + t.ends,
        ));
        let mut report = serde_json::json!({
            "model": what,
            "test_loss": test_loss,
            "perplexity": perplexity,
            "tokens": t.text_tokens,
            "test_loss_with_end": with_end,
            "perplexity_with_end": with_end.exp(),
            "tokens_with_end": t.text_tokens + t.ends,
            "examples": seqs.len(),
            "truncated_share": truncated_share,
        });
        // JSON has no NaN: no end token scored (every target cut) is null.
        report["end_token_loss"] = serde_json::json!(end_loss.is_finite().then_some(end_loss));
        let out = ctx.out_path(EVAL_FILE);
        std::fs::write(
            &out,
            serde_json::to_string_pretty(&report).unwrap_or_default() + "\n",
        )
        .map_err(|e| StageError::io(format!("write {}", out.display()), e))?;
        let mut outcome = Outcome::default()
            .output(EVAL_FILE, out)
            .published(PER_EXAMPLE_FILE, per_example_path)
            .metric(per_example::METRIC, test_loss)
            .metric(per_example::EXP_METRIC, perplexity)
            .metric("tokens", t.text_tokens as u64)
            .metric(per_example::WITH_END_METRIC, with_end)
            .metric(per_example::EXP_WITH_END_METRIC, with_end.exp())
            .metric("tokens_with_end", (t.text_tokens + t.ends) as u64)
            .metric("examples", seqs.len() as u64)
            .metric("truncated_share", truncated_share)
            .metric("task", dataset::task_name(&examples));
        if end_loss.is_finite() {
            outcome = outcome.metric("end_token_loss", end_loss);
        }
        Ok(outcome)
    }
}

/// The dataset's sums over its examples' [`Scored`] tokens.
#[derive(Debug, Default, PartialEq)]
struct Totals {
    text_sum: f64,
    text_tokens: usize,
    end_sum: f64,
    /// Examples whose end token is scored.
    ends: usize,
}

impl Totals {
    fn of(scored: &[Scored]) -> Totals {
        let mut t = Totals::default();
        for s in scored {
            t.text_sum += s.text_sum;
            t.text_tokens += s.text_tokens;
            if let Some(e) = s.end {
                t.end_sum += e;
                t.ends += 1;
            }
        }
        t
    }

    /// `test_loss`: the mean over the target tokens but the end token.
    fn text_loss(&self) -> f64 {
        self.text_sum / self.text_tokens as f64
    }

    /// `test_loss_with_end`: the mean over every scored token.
    fn with_end_loss(&self) -> f64 {
        (self.text_sum + self.end_sum) / (self.text_tokens + self.ends) as f64
    }

    /// The end token's mean loss; NaN where none is scored.
    fn end_loss(&self) -> f64 {
        self.end_sum / self.ends as f64
    }
}

/// Each example's mean losses without and with its end token (NaN where
/// it has no such token), in the dataset's order.
fn per_example_rows(
    examples: &[dataset::Example],
    scored: &[Scored],
) -> (Vec<ExampleLoss>, Vec<WithEnd>) {
    let mean = |sum: f64, n: usize| if n > 0 { sum / n as f64 } else { f64::NAN };
    examples
        .iter()
        .zip(scored)
        .map(|(e, s)| {
            let (sum, n) = s.with_end();
            (
                ExampleLoss {
                    id: e.id.clone(),
                    loss: mean(s.text_sum, s.text_tokens),
                    tokens: s.text_tokens,
                },
                WithEnd {
                    loss: mean(sum, n),
                    tokens: n,
                },
            )
        })
        .unzip()
}

/// The `[models.*]` entry an adapter was trained on, so that a grid over
/// models fans out once, in `train_lora`.
fn adapter_base(ctx: &Context<'_>) -> Result<String, StageError> {
    let up = ctx.input("adapter")?;
    adapter::base_model(up).map(str::to_string).ok_or_else(|| {
        StageError::invalid(format!(
            "adapter `{}` does not say which model it was trained on; set `model`",
            up.instance
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contracts::dataset::Task;
    use crate::testutil::{data_upstream, example, inputs, model_resources, params, run_in};

    /// By hand: token losses [1, 2, 3] ending in the end token; [4], its end
    /// token cut away; [0.5], an empty target (only the end token). Text:
    /// (1 + 2 + 4) / 3 tokens; with the end token: (7 + 3 + 0.5) / 5 = 2.1;
    /// the end token alone (3 + 0.5) / 2. And with_end * tokens_with_end =
    /// text * tokens + the end tokens' losses.
    #[test]
    fn both_losses_from_hand_made_token_losses() {
        let scored = [
            Scored::of(&[1.0, 2.0, 3.0], true),
            Scored::of(&[4.0], false),
            Scored::of(&[0.5], true),
        ];
        let t = Totals::of(&scored);
        assert_eq!(
            (t.text_sum, t.text_tokens, t.end_sum, t.ends),
            (7.0, 3, 3.5, 2)
        );
        assert_eq!(t.text_loss(), 7.0 / 3.0);
        assert_eq!(t.with_end_loss(), 2.1);
        assert_eq!(t.end_loss(), 1.75);
        let identity = t.with_end_loss() * 5.0 - (t.text_loss() * 3.0 + t.end_sum);
        assert!(identity.abs() < 1e-12, "{identity}");
        assert!(Totals::of(&[Scored::of(&[1.0], false)]).end_loss().is_nan());

        let examples: Vec<_> = ["a", "b", "c"]
            .iter()
            .map(|id| example(id, Task::Story, None, "In.", "Out."))
            .collect();
        let (rows, with_end) = per_example_rows(&examples, &scored);
        let got: Vec<(&str, usize)> = rows.iter().map(|r| (r.id.as_str(), r.tokens)).collect();
        assert_eq!(got, [("a", 2), ("b", 1), ("c", 0)]);
        assert_eq!((rows[0].loss, rows[1].loss), (1.5, 4.0));
        assert!(rows[2].loss.is_nan());
        let ends: Vec<(f64, usize)> = with_end.iter().map(|w| (w.loss, w.tokens)).collect();
        assert_eq!(ends, [(2.0, 3), (4.0, 1), (0.5, 1)]);
        // The rows break down the two metrics.
        assert_eq!(per_example::token_weighted_mean(&rows), t.text_loss());
        let as_rows: Vec<ExampleLoss> = rows
            .iter()
            .zip(&with_end)
            .map(|(r, w)| ExampleLoss {
                id: r.id.clone(),
                loss: w.loss,
                tokens: w.tokens,
            })
            .collect();
        let mean = per_example::token_weighted_mean(&as_rows);
        assert!((mean - t.with_end_loss()).abs() < 1e-12, "{mean}");
    }

    /// The tiny GPT-2 checkpoint of the trainer's fixtures (32 positions,
    /// one token a character): both losses through the stage, and the
    /// share of examples cut to `max_seq_len`. 4 examples, one too long for
    /// 24 tokens (its prompt is cut), one whose target is too long (its end
    /// token is cut away).
    #[test]
    fn both_losses_and_the_truncated_share_on_a_tiny_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let fixture =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../train/tests/fixtures/gpt2");
        let resources = model_resources("tiny_gpt2", &fixture, Some("safetensors"));
        let examples = vec![
            example("a", Task::Story, None, "Ab.", "Cd."),
            example(
                "b",
                Task::Story,
                None,
                "An input much too long to fit.",
                "Ef.",
            ),
            example("c", Task::Story, None, "Gh.", "Ij kl."),
            example(
                "d",
                Task::Story,
                None,
                "M.",
                "A target far too long to fit in.",
            ),
        ];
        let up = data_upstream(dir.path(), "test", &examples);
        let p = params(
            &EvalLoss,
            &[
                ("data", "test".into()),
                ("model", "tiny_gpt2".into()),
                ("max_seq_len", 24.into()),
            ],
        );
        let ran = run_in(
            &EvalLoss,
            &p,
            inputs(vec![("data", up)]),
            &resources,
            7,
            None,
        )
        .unwrap();
        assert_eq!(ran.num("truncated_share"), 0.5);
        // Text tokens: 3 + 3 + 6 + 23 (the cut target: 24 less the one
        // prompt token left, its end token cut); one end token each but the
        // last.
        assert_eq!(ran.num("tokens"), 35.0);
        assert_eq!(ran.num("tokens_with_end"), 38.0);
        let (text, with_end, end) = (
            ran.num("test_loss"),
            ran.num("test_loss_with_end"),
            ran.num("end_token_loss"),
        );
        assert!(text.is_finite() && with_end.is_finite() && end.is_finite());
        let identity = with_end * 38.0 - (text * 35.0 + end * 3.0);
        assert!(identity.abs() < 1e-9, "{identity}");
        assert!((ran.num("perplexity") - text.exp()).abs() < 1e-9);
        assert!((ran.num("perplexity_with_end") - with_end.exp()).abs() < 1e-9);
        let path = ran.file(PER_EXAMPLE_FILE);
        let rows = per_example::read(&path).unwrap();
        let ends = per_example::read_with_end(&path).unwrap().unwrap();
        let tokens: Vec<(usize, usize)> = rows
            .iter()
            .zip(&ends)
            .map(|(r, e)| (r.tokens, e.tokens))
            .collect();
        assert_eq!(tokens, [(3, 4), (3, 4), (6, 7), (23, 23)]);
        assert!((per_example::token_weighted_mean(&rows) - text).abs() < 1e-9);
        assert!((per_example::token_weighted_mean(&ends) - with_end).abs() < 1e-9);
        assert!(
            ran.log.iter().any(|l| l.contains("2 of 4 examples")),
            "{:?}",
            ran.log
        );
    }

    /// Real SmolLM2-135M on 16 real test stories: the text-only loss and the
    /// loss with the end token differ, both finite, and the end token (one
    /// a story, none cut at 96 tokens) accounts for the difference.
    #[test]
    fn the_real_model_scores_the_end_token_apart() {
        let (Some(model), Some(stories)) = (smollm2(), crate::testutil::real_stories(16)) else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let up = data_upstream(dir.path(), "test", &stories);
        let resources = model_resources("smollm2", &model, None);
        let p = params(
            &EvalLoss,
            &[
                ("data", "test".into()),
                ("model", "smollm2".into()),
                ("max_seq_len", 96.into()),
            ],
        );
        let ran = run_in(
            &EvalLoss,
            &p,
            inputs(vec![("data", up)]),
            &resources,
            7,
            None,
        )
        .unwrap();
        let (text, with_end, end) = (
            ran.num("test_loss"),
            ran.num("test_loss_with_end"),
            ran.num("end_token_loss"),
        );
        let (n, n_end) = (ran.num("tokens"), ran.num("tokens_with_end"));
        eprintln!(
            "SmolLM2 base on 16 stories: text {text:.4}, with end {with_end:.4}, end {end:.4}"
        );
        assert!(text.is_finite() && with_end.is_finite() && end.is_finite());
        assert!((text - with_end).abs() > 1e-3, "{text} vs {with_end}");
        assert_eq!((ran.num("truncated_share"), n_end - n), (0.0, 16.0));
        let identity = with_end * n_end - (text * n + end * 16.0);
        assert!(identity.abs() < 1e-6 * with_end * n_end, "{identity}");
    }

    /// The SmolLM2 GGUF (as `stages/src/tests/training.rs` finds it): `None`,
    /// the skip shown, when it is absent and not required.
    fn smollm2() -> Option<std::path::PathBuf> {
        let spec = flow_models::ModelSpec {
            name: Some("smollm2-135m-instruct".into()),
            format: Some(flow_models::Format::Gguf),
            ..Default::default()
        };
        let env = flow_models::ModelEnv {
            offline: flow_models::offline_from_env() || !crate::testutil::data_required(),
            ..flow_models::ModelEnv::from_env()
        };
        match flow_models::resolve(&spec, &env) {
            Ok(m) => Some(m.weights),
            Err(e) => {
                crate::testutil::skip_or_fail(&format!("no SmolLM2 GGUF: {e}"));
                None
            }
        }
    }
}
