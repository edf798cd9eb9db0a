//! `embed`: sentence embeddings of a dataset's examples (Fig. 4, Table 2).
//!
//! What sentence-transformers computes for all-MiniLM-L6-v2, on candle: the
//! text of an example is `input + " " + target` (for QA the question and the
//! answer; the long context is left out, as the paper does for Fig. 4), cut
//! to `max_seq_len` tokens including [CLS] and [SEP] (the model's 256), run
//! through the BERT encoder, mean-pooled over the attention mask and
//! L2-normalised. `sample` examples are chosen by a seeded hash of their ids
//! (the paper plots 1000 random points).
//!
//! Outputs: `embeddings.npy` and `ids.json` (see [`embeddings`]) and the
//! metrics `n`, `dim`, `model`, `truncated`, `mean_tokens`,
//! `cosine_diversity`. The encoders are in [`crate::toolkit::encoder`].
//!
//! BERT encoders (`model_type = "bert"`: all-MiniLM-L6-v2) and MPNet
//! encoders (`"mpnet"`: all-mpnet-base-v2, the paper's choice) run; another
//! architecture is a clear error.

use flow_engine::{Context, Outcome, ParamSpec, Params, Stage, StageError, Threads};

use crate::contracts::dataset::{self, Example};
use crate::contracts::embeddings::{self, Row};
use crate::toolkit::cores::thread_pool;
use crate::toolkit::encoder::{Encoder, DEFAULT_MODEL};
use crate::toolkit::models::resolve_model;
use crate::toolkit::{params, seeds};

pub struct Embed;

/// The parameters of an `embed` stage, read once.
struct Settings {
    sample: usize,
    max_seq_len: usize,
    batch_size: usize,
    model: String,
}

impl Settings {
    fn from_params(p: &Params) -> Result<Self, StageError> {
        Ok(Settings {
            sample: params::count(p, "sample")?,
            max_seq_len: params::count(p, "max_seq_len")?,
            batch_size: params::count(p, "batch_size")?,
            model: params::string(p, "model")?,
        })
    }
}

impl Stage for Embed {
    fn kind(&self) -> &'static str {
        "embed"
    }

    fn version(&self) -> u32 {
        // 2: the `cosine_diversity` metric.
        2
    }

    fn about(&self) -> &'static str {
        "Sentence embeddings (BERT or MPNet encoder, mean pooling, L2 norm; all-MiniLM-L6-v2 by \
         default, all-mpnet-base-v2 as in the paper) \
         of `input + \" \" + target` for a seeded sample of a dataset (embeddings.npy, ids.json), \
         and their semantic diversity (`cosine_diversity`: mean cosine distance of two texts)"
    }

    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::input("data", "stage whose examples are embedded").required(),
            crate::resources::model_param(
                "model",
                "a `[models.*]` entry or known name of a BERT or MPNet sentence encoder",
            )
            .default(DEFAULT_MODEL),
            ParamSpec::int(
                "sample",
                "examples embedded, chosen by a seeded hash of their ids; 0: all",
            )
            .min(0.0)
            .default(1000),
            ParamSpec::int(
                "max_seq_len",
                "tokens per text at most, [CLS] and [SEP] included (the model's: 256)",
            )
            .min(2.0)
            .default(256),
            ParamSpec::int("batch_size", "texts per forward pass")
                .min(1.0)
                .default(32)
                .execution(),
        ]
    }

    fn threads(&self, _params: &Params, _: &flow_engine::Resources) -> Threads {
        Threads::All
    }

    fn run(&self, ctx: &mut Context<'_>) -> Result<Outcome, StageError> {
        let Settings {
            sample,
            max_seq_len: max_len,
            batch_size,
            model: model_name,
        } = Settings::from_params(ctx.params)?;
        let examples = dataset::read_nonempty(ctx.input("data")?, "to embed")?;
        let chosen = choose(&examples, sample, ctx.seed);
        let texts: Vec<String> = chosen.iter().map(|e| text_of(e)).collect();

        let resolved = resolve_model(ctx, &model_name, flow_models::Format::Safetensors)
            .map_err(|e| StageError::invalid(e.to_string()))?;
        let device = flow_train::device();
        let encoder = Encoder::load(&model_name, &resolved, max_len, &device)?;
        ctx.progress
            .set_total(texts.len().div_ceil(batch_size) as u64, "batches");
        let pool = thread_pool(ctx.threads)?;
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let started = std::time::Instant::now();
        let out = pool.install(|| {
            encoder.embed(&refs, batch_size, ctx.cancel, &|n| ctx.progress.advance(n))
        })?;
        let secs = started.elapsed().as_secs_f64();
        ctx.log(format!(
            "{} texts -> {}-d in {secs:.1}s ({:.1} texts/s), {} cut at {max_len} tokens",
            texts.len(),
            encoder.dim,
            texts.len() as f64 / secs.max(1e-9),
            out.truncated
        ));

        let rows: Vec<Row> = chosen.iter().map(|e| Row::of(e)).collect();
        let outcome = embeddings::output(ctx, &out.vectors, encoder.dim, &rows)?
            .metric("n", texts.len() as u64)
            .metric("dim", encoder.dim as u64)
            .metric("model", model_name)
            .metric("truncated", out.truncated as u64)
            .metric("mean_tokens", out.tokens as f64 / texts.len().max(1) as f64);
        Ok(match mean_cosine_distance(&out.vectors, encoder.dim) {
            Some(d) => outcome.metric("cosine_diversity", d),
            None => outcome,
        })
    }
}

/// Semantic diversity of a set: the mean cosine distance between the
/// embeddings of two different texts, `1 - mean_{i != j} cos(v_i, v_j)`;
/// `None` below two texts. Distinct-n counts repeated word runs, which a set
/// of stories on one topic need not have: this sees the shared topic. In
/// O(n d), not O(n^2 d): for unit vectors `|sum u_i|^2 = n + sum_{i != j} u_i . u_j`.
pub fn mean_cosine_distance(vectors: &[f32], dim: usize) -> Option<f64> {
    let n = vectors.len().checked_div(dim)?;
    if n < 2 {
        return None;
    }
    let mut sum = vec![0f64; dim];
    for v in vectors.chunks_exact(dim) {
        let norm = v.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
        let norm = norm.max(1e-12);
        for (s, &x) in sum.iter_mut().zip(v) {
            *s += x as f64 / norm;
        }
    }
    let sq: f64 = sum.iter().map(|s| s * s).sum();
    let pairs = (n * (n - 1)) as f64;
    Some(1.0 - (sq - n as f64) / pairs)
}

/// The text embedded for one example: the paper's "question (story context)
/// and answer (story completion)" concatenated, without a QA context.
pub fn text_of(e: &Example) -> String {
    format!("{} {}", e.input, e.target)
}

/// `sample` examples (all when 0 or more than there are), by ascending seeded
/// hash of the id: a larger sample only adds points to a smaller one.
fn choose(examples: &[Example], sample: usize, seed: u64) -> Vec<&Example> {
    let mut ranked: Vec<(u64, usize)> = examples
        .iter()
        .enumerate()
        .map(|(i, e)| (seeds::item_hash(seed, "embed/sample", &e.id), i))
        .collect();
    ranked.sort_unstable();
    let k = if sample == 0 {
        examples.len()
    } else {
        sample.min(examples.len())
    };
    ranked[..k].iter().map(|&(_, i)| &examples[i]).collect()
}

#[cfg(test)]
mod tests;
