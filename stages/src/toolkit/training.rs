//! What `train_lora` and `eval_loss` share around `flow_train`: the `loss`
//! parameter, examples encoded as token sequences, progress and
//! cancellation for the trainer, and its errors as stage errors.

use flow_engine::{Context, Params, StageError};
use flow_train::data::{self, Encoded, Loss, Text};
use flow_train::trainer::{Monitor, Stopped};

use crate::contracts::dataset::Example;

/// Any error, with its causes, as a stage error.
pub fn other(e: impl std::fmt::Display) -> StageError {
    StageError::Other(format!("{e:#}"))
}

/// A trainer error as a stage error: a stop on request is a cancellation.
pub fn trainer_error(e: flow_train::TrainError) -> StageError {
    if matches!(e, flow_train::TrainError::Stopped(Stopped)) {
        StageError::Cancelled
    } else {
        other(e)
    }
}

/// The `loss` parameter (`target` or `all`): which tokens carry the loss.
pub fn loss(params: &Params) -> Result<Loss, StageError> {
    Ok(match params.require_str("loss")? {
        "all" => Loss::All,
        _ => Loss::Target,
    })
}

/// Token ids and per-token target flags of each example.
pub type Seqs = Vec<(Vec<u32>, Vec<bool>)>;

/// Every example as plain text (not a chat template; see
/// `flow_train::data`), cut to `max_len` tokens, prompt first.
pub fn encode_all(
    tok: &flow_train::Tokenizer,
    examples: &[Example],
    loss: Loss,
    max_len: usize,
) -> Result<Seqs, StageError> {
    Ok(seqs(encode_examples(tok, examples, loss, max_len)?))
}

/// [`encode_all`], with what was cut from each example and whether its end
/// token is still there.
pub fn encode_examples(
    tok: &flow_train::Tokenizer,
    examples: &[Example],
    loss: Loss,
    max_len: usize,
) -> Result<Vec<Encoded>, StageError> {
    examples
        .iter()
        .map(|e| {
            let text = Text {
                context: e.context.clone(),
                input: e.input.clone(),
                target: e.target.clone(),
            };
            data::encode_example(tok, &text, loss, max_len)
                .map_err(|err| StageError::invalid(format!("example `{}`: {err:#}", e.id)))
        })
        .collect()
}

/// The token ids and target flags of encoded examples, as the trainer takes them.
pub fn seqs(encoded: Vec<Encoded>) -> Seqs {
    encoded.into_iter().map(|e| (e.ids, e.target)).collect()
}

/// The share of `encoded` examples cut to `max_seq_len`, logged when some
/// are: a cut prompt (a QA context cut from the left) changes what is
/// learned or scored, and should be visible.
pub fn truncated_share(ctx: &mut Context<'_>, encoded: &[Encoded], max_len: usize) -> f64 {
    let share = data::truncated_share(encoded);
    if share > 0.0 {
        let n = encoded.iter().filter(|e| e.truncated).count();
        ctx.log(format!(
            "{n} of {} examples ({:.1}%) were cut to max_seq_len = {max_len} tokens (the prompt \
             from the left, then the target from the right)",
            encoded.len(),
            100.0 * share
        ));
    }
    share
}

/// The trainer's view of a stage: each step (or batch) advances the
/// progress, the loss is shown where `show_loss` (training), and a
/// cancelled stage stops it.
pub struct StageMonitor<'a, 'b> {
    pub ctx: &'a Context<'b>,
    pub show_loss: bool,
}

impl Monitor for StageMonitor<'_, '_> {
    fn step(&self, step: usize, total: usize, loss: f64, lr: f64) {
        self.ctx.progress.advance(1);
        if self.show_loss && lr > 0.0 {
            self.ctx
                .progress
                .message(&format!("step {step}/{total} loss {loss:.4}"));
        }
    }
    fn stop(&self) -> bool {
        self.ctx.cancel.is_cancelled()
    }
}
