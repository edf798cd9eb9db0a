//! Sentence encoders on candle: what sentence-transformers computes for
//! all-MiniLM-L6-v2 (BERT) and all-mpnet-base-v2 (MPNet). Texts are cut to
//! `max_len` tokens including `[CLS]` and `[SEP]`, run through the encoder,
//! mean-pooled over the attention mask and L2-normalised. Another
//! architecture is a clear error. Used by `embed`.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use flow_engine::{CancelToken, StageError};

mod mpnet;

/// The encoder `embed` uses when a manifest names none.
pub const DEFAULT_MODEL: &str = "all-minilm-l6-v2";

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

/// Reads `config.json` and refuses architectures `embed` cannot run.
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

#[cfg(test)]
mod tests;
