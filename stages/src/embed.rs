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
//! Outputs: `embeddings.npy` (float32, shape `[n, dim]`, row i is the i-th
//! entry of `ids.json`), `ids.json` (`[{"id", "task", "origin"}]`) and the
//! metrics `n`, `dim`, `model`, `truncated`, `mean_tokens`.
//!
//! BERT encoders (`model_type = "bert"`: all-MiniLM-L6-v2) and MPNet
//! encoders (`"mpnet"`: all-mpnet-base-v2, the paper's choice) run; another
//! architecture is a clear error.

use std::io::Write;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};

mod mpnet;
use flow_engine::{CancelToken, Context, Outcome, ParamSpec, Params, Stage, StageError, Threads};
use serde::{Deserialize, Serialize};

use crate::dataset::{self, Example};
use crate::generation::resolve_model;
use crate::seeds;
use crate::train_lora::thread_pool;

pub const EMBEDDINGS_FILE: &str = "embeddings.npy";
pub const IDS_FILE: &str = "ids.json";
/// The model named when a manifest names none.
pub const DEFAULT_MODEL: &str = "all-minilm-l6-v2";

pub struct Embed;

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
            ParamSpec::model(
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
        let sample = ctx.params.require_int("sample")? as usize;
        let max_len = ctx.params.require_int("max_seq_len")? as usize;
        let batch_size = ctx.params.require_int("batch_size")? as usize;
        let model_name = ctx.params.require_str("model")?.to_string();
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

        let emb_path = ctx.out_path(EMBEDDINGS_FILE);
        write_npy(&emb_path, &out.vectors, texts.len(), encoder.dim)?;
        let rows: Vec<Row> = chosen
            .iter()
            .map(|e| Row {
                id: e.id.clone(),
                task: e.task.as_str().to_string(),
                origin: match e.origin {
                    dataset::Origin::Real => "real".into(),
                    dataset::Origin::Generated => "generated".into(),
                },
            })
            .collect();
        let ids_path = ctx.out_path(IDS_FILE);
        let json = serde_json::to_string(&rows)
            .map_err(|e| StageError::Other(format!("encode ids: {e}")))?;
        std::fs::write(&ids_path, json + "\n")
            .map_err(|e| StageError::io(format!("write {}", ids_path.display()), e))?;
        let outcome = Outcome::default()
            .output(EMBEDDINGS_FILE, emb_path)
            .output(IDS_FILE, ids_path)
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

/// One row of `ids.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub id: String,
    pub task: String,
    pub origin: String,
}

/// The encoders `embed` runs.
enum Network {
    Bert(BertModel),
    MpNet(mpnet::MpNet),
}

/// What `config.json` says, per architecture.
#[derive(Debug)]
enum NetworkConfig {
    Bert(Config),
    MpNet(mpnet::Config),
}

impl NetworkConfig {
    fn max_positions(&self) -> usize {
        match self {
            NetworkConfig::Bert(c) => c.max_position_embeddings,
            // Positions start after the padding index (RoBERTa's convention).
            NetworkConfig::MpNet(c) => c
                .max_position_embeddings
                .saturating_sub(c.pad_token_id)
                .saturating_sub(1),
        }
    }
    fn pad_id(&self) -> usize {
        match self {
            NetworkConfig::Bert(c) => c.pad_token_id,
            NetworkConfig::MpNet(c) => c.pad_token_id,
        }
    }
    fn dim(&self) -> usize {
        match self {
            NetworkConfig::Bert(c) => c.hidden_size,
            NetworkConfig::MpNet(c) => c.hidden_size,
        }
    }
}

/// A sentence encoder with its tokenizer.
pub struct Encoder {
    model: Network,
    tokenizer: tokenizers::Tokenizer,
    pad_id: u32,
    max_len: usize,
    pub dim: usize,
    device: Device,
}

/// Embeddings of a list of texts, row-major.
pub struct Encoded {
    pub vectors: Vec<f32>,
    /// Texts cut at `max_len` tokens.
    pub truncated: usize,
    /// Tokens fed to the model (after cutting), for the mean length.
    pub tokens: usize,
}

fn candle_err(what: &str) -> impl Fn(candle_core::Error) -> StageError + '_ {
    move |e| StageError::Other(format!("{what}: {e}"))
}

impl Encoder {
    pub fn load(
        name: &str,
        resolved: &flow_models::ResolvedModel,
        max_len: usize,
        device: &Device,
    ) -> Result<Encoder, StageError> {
        if resolved.format != flow_models::Format::Safetensors {
            return Err(StageError::invalid(format!(
                "model `{name}` resolved to {} weights ({}); `embed` reads safetensors BERT \
                 encoders such as `{DEFAULT_MODEL}`",
                resolved.format.as_str(),
                resolved.weights.display()
            )));
        }
        let config_path = resolved.weights.with_file_name("config.json");
        let config = read_config(name, &config_path)?;
        if max_len > config.max_positions() {
            return Err(StageError::invalid(format!(
                "max_seq_len {max_len} is more than model `{name}` has positions for ({})",
                config.max_positions()
            )));
        }
        let bytes = std::fs::read(&resolved.weights)
            .map_err(|e| StageError::io(format!("read {}", resolved.weights.display()), e))?;
        // The header (length, JSON, offsets and sizes) is checked before
        // candle reads it, and config.json's layer, head and width counts
        // against the tensors it lists before the encoder is sized by them.
        let guard = |e: flow_models::FileError| StageError::invalid(format!("model `{name}`: {e}"));
        let header = flow_models::guard::check_safetensors_bytes(&bytes, &resolved.weights)
            .map_err(guard)?;
        let config_json: serde_json::Value = std::fs::read_to_string(&config_path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        flow_models::guard::check_config_json(&config_json, header.shapes(), &config_path)
            .map_err(guard)?;
        let vb = VarBuilder::from_buffered_safetensors(bytes, DType::F32, device)
            .map_err(|e| StageError::invalid(format!("model `{name}`: weights: {e}")))?;
        let bad = |e: candle_core::Error| {
            StageError::invalid(format!(
                "model `{name}`: {} does not hold the weights its config.json describes: {e}",
                resolved.weights.display()
            ))
        };
        let model = match &config {
            NetworkConfig::Bert(c) => Network::Bert(BertModel::load(vb, c).map_err(bad)?),
            NetworkConfig::MpNet(c) => Network::MpNet(mpnet::MpNet::load(vb, c).map_err(bad)?),
        };
        let mut tokenizer = flow_models::load_tokenizer(resolved)
            .map_err(|e| StageError::invalid(format!("model `{name}`: {e}")))?;
        // tokenizer.json ships with truncation at 128 and fixed padding;
        // sentence-transformers overrides both (max_seq_length, pad to the
        // longest), and so does this: padding is done per batch below.
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: max_len,
                ..Default::default()
            }))
            .map_err(|e| StageError::invalid(format!("model `{name}`: tokenizer: {e}")))?;
        tokenizer.with_padding(None);
        Ok(Encoder {
            model,
            tokenizer,
            pad_id: config.pad_id() as u32,
            max_len,
            dim: config.dim(),
            device: device.clone(),
        })
    }

    /// Embeds `texts` in batches of `batch_size`; `advance` is told of each
    /// finished batch. The order of the output is the order of `texts`.
    pub fn embed(
        &self,
        texts: &[&str],
        batch_size: usize,
        cancel: &CancelToken,
        advance: &dyn Fn(u64),
    ) -> Result<Encoded, StageError> {
        let enc = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| StageError::Other(format!("tokenize: {e}")))?;
        let ids: Vec<&[u32]> = enc.iter().map(|e| e.get_ids()).collect();
        let truncated = enc
            .iter()
            .filter(|e| !e.get_overflowing().is_empty())
            .count();
        let tokens = ids.iter().map(|t| t.len()).sum();
        // Batches of similar lengths pad little; masked positions do not
        // change a text's embedding, so the grouping does not either.
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| (ids[i].len(), i));
        let mut vectors = vec![0f32; texts.len() * self.dim];
        for chunk in order.chunks(batch_size.max(1)) {
            cancel.check()?;
            let rows = self.forward(chunk.iter().map(|&i| ids[i]))?;
            for (row, &i) in rows.chunks(self.dim).zip(chunk) {
                vectors[i * self.dim..(i + 1) * self.dim].copy_from_slice(row);
            }
            advance(1);
        }
        Ok(Encoded {
            vectors,
            truncated,
            tokens,
        })
    }

    /// One padded batch through the encoder, pooled and normalised.
    fn forward<'a>(&self, batch: impl Iterator<Item = &'a [u32]>) -> Result<Vec<f32>, StageError> {
        let batch: Vec<&[u32]> = batch.collect();
        let b = batch.len();
        let t = batch.iter().map(|s| s.len()).max().unwrap_or(0).max(1);
        debug_assert!(t <= self.max_len);
        let mut ids = vec![self.pad_id; b * t];
        let mut mask = vec![0f32; b * t];
        for (r, seq) in batch.iter().enumerate() {
            ids[r * t..r * t + seq.len()].copy_from_slice(seq);
            mask[r * t..r * t + seq.len()].fill(1.0);
        }
        let e = candle_err("embed");
        let ids = Tensor::from_vec(ids, (b, t), &self.device).map_err(&e)?;
        let mask = Tensor::from_vec(mask, (b, t), &self.device).map_err(&e)?;
        let hidden = match &self.model {
            Network::Bert(m) => {
                let types = ids.zeros_like().map_err(&e)?;
                m.forward(&ids, &types, Some(&mask)).map_err(&e)?
            }
            Network::MpNet(m) => m.forward(&ids, &mask).map_err(&e)?,
        };
        // sentence-transformers Pooling(mean): sum over unmasked tokens / max(count, 1e-9).
        let m = mask.unsqueeze(2).map_err(&e)?;
        let summed = hidden
            .broadcast_mul(&m)
            .and_then(|x| x.sum(1))
            .map_err(&e)?;
        let counts = m.sum(1).and_then(|c| c.maximum(1e-9)).map_err(&e)?;
        let pooled = summed.broadcast_div(&counts).map_err(&e)?;
        // Normalize: x / max(||x||, 1e-12), as torch.nn.functional.normalize.
        let norm = pooled
            .sqr()
            .and_then(|x| x.sum_keepdim(1))
            .and_then(|x| x.sqrt())
            .and_then(|x| x.maximum(1e-12))
            .map_err(&e)?;
        pooled
            .broadcast_div(&norm)
            .and_then(|x| x.flatten_all())
            .and_then(|x| x.to_vec1::<f32>())
            .map_err(&e)
    }
}

/// Reads `config.json` and refuses architectures this stage cannot run.
fn read_config(name: &str, path: &Path) -> Result<NetworkConfig, StageError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        StageError::invalid(format!(
            "model `{name}`: cannot read {} (the encoder's config, expected beside the \
             weights): {e}",
            path.display()
        ))
    })?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| StageError::invalid(format!("{}: {e}", path.display())))?;
    let model_type = json["model_type"].as_str().unwrap_or("").to_string();
    let bad = |e: serde_json::Error| {
        StageError::invalid(format!(
            "{}: not a {model_type} config: {e}",
            path.display()
        ))
    };
    match model_type.as_str() {
        "bert" => Ok(NetworkConfig::Bert(
            serde_json::from_value(json).map_err(bad)?,
        )),
        "mpnet" => Ok(NetworkConfig::MpNet(
            serde_json::from_value(json).map_err(bad)?,
        )),
        _ => Err(StageError::invalid(format!(
            "model `{name}` is a `{model_type}` model ({}); `embed` runs BERT and MPNet \
             encoders, such as `{DEFAULT_MODEL}` or all-mpnet-base-v2",
            path.display()
        ))),
    }
}

/// Writes a float32 matrix as a `.npy` file (format 1.0, C order), which
/// numpy reads with `np.load`.
pub fn write_npy(path: &Path, data: &[f32], rows: usize, cols: usize) -> Result<(), StageError> {
    let io = |e| StageError::io(format!("write {}", path.display()), e);
    let mut header =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    // Magic (6) + version (2) + length (2) + header + '\n', padded to 64 bytes.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    f.write_all(b"\x93NUMPY\x01\x00").map_err(io)?;
    f.write_all(&(header.len() as u16).to_le_bytes())
        .map_err(io)?;
    f.write_all(header.as_bytes()).map_err(io)?;
    for x in data {
        f.write_all(&x.to_le_bytes()).map_err(io)?;
    }
    f.flush().map_err(io)
}

/// A float32 matrix read from a `.npy` file written by [`write_npy`].
pub fn read_npy(path: &Path) -> Result<(Vec<f32>, usize, usize), StageError> {
    let bad = |why: &str| StageError::invalid(format!("{}: {why}", path.display()));
    let bytes =
        std::fs::read(path).map_err(|e| StageError::io(format!("read {}", path.display()), e))?;
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" || bytes[6] != 1 {
        return Err(bad("not a version 1 .npy file"));
    }
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = bytes
        .get(10..10 + hlen)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| bad("truncated header"))?;
    if !header.contains("'descr': '<f4'") || !header.contains("'fortran_order': False") {
        return Err(bad("not a C-order float32 array"));
    }
    let shape = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad("no shape"))?;
    let dims: Vec<usize> = shape
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|_| bad("bad shape"))?;
    let [rows, cols] = dims[..] else {
        return Err(bad("not a matrix"));
    };
    let body = &bytes[10 + hlen..];
    if body.len() != rows * cols * 4 {
        return Err(bad("size does not match the shape"));
    }
    let data = body
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok((data, rows, cols))
}

/// The embeddings of one finished `embed` instance.
pub struct Embeddings {
    pub instance: String,
    pub rows: Vec<Row>,
    pub dim: usize,
    /// Row-major, `rows.len() * dim`.
    pub data: Vec<f32>,
}

impl Embeddings {
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }
}

/// Reads the outputs of an upstream `embed` instance.
pub fn read(up: &flow_engine::Upstream) -> Result<Embeddings, StageError> {
    let (data, n, dim) = read_npy(up.file(EMBEDDINGS_FILE)?)?;
    let ids_path = up.file(IDS_FILE)?;
    let text = std::fs::read_to_string(ids_path)
        .map_err(|e| StageError::io(format!("read {}", ids_path.display()), e))?;
    let rows: Vec<Row> = serde_json::from_str(&text)
        .map_err(|e| StageError::invalid(format!("{}: {e}", ids_path.display())))?;
    if rows.len() != n {
        return Err(StageError::invalid(format!(
            "`{}`: {} ids for {n} embeddings",
            up.instance,
            rows.len()
        )));
    }
    Ok(Embeddings {
        instance: up.instance.clone(),
        rows,
        dim,
        data,
    })
}

#[cfg(test)]
mod tests;
