//! What the trainer needs of a model, whatever its architecture: final
//! hidden states with adapters applied, the output projection, and where
//! adapters can go.

use candle_core::{DType, Device, Tensor};

use crate::error::{Result, TrainError};
use crate::lora::{Dropout, Lora, Targets};
use crate::ops;

/// A causal language model with a frozen base whose projections can carry
/// LoRA adapters.
pub trait CausalLm: Send + Sync {
    /// Final hidden states (B*T, d) of right-padded `ids` (B, T); `train`
    /// is the training-time dropout (none when evaluating).
    fn hidden(
        &self,
        ids: &Tensor,
        lora: Option<&Lora>,
        train: Option<&mut Dropout>,
    ) -> Result<Tensor>;

    /// The output projection (V, d) (the embedding when tied).
    fn lm_head(&self) -> &Tensor;

    fn device(&self) -> &Device;

    /// Where adapters can go, and PEFT's defaults.
    fn targets(&self) -> Targets;

    fn vocab_size(&self) -> usize {
        self.lm_head().dims()[0]
    }

    fn dtype(&self) -> DType {
        self.lm_head().dtype()
    }

    /// Summed cross-entropy of the predicted tokens of a batch. Logits are
    /// computed only at the positions that carry a label.
    fn loss_sum(
        &self,
        batch: &Batch,
        lora: Option<&Lora>,
        train: Option<&mut Dropout>,
    ) -> Result<Tensor> {
        let hidden = self.hidden(&batch.ids, lora, train)?;
        let picked = hidden.index_select(&batch.positions, 0)?;
        let logits = ops::frozen_linear(&picked, self.lm_head())?;
        Ok(ops::cross_entropy_sum(&logits, &batch.labels)?)
    }

    /// Full logits (B, T, V), for parity checks.
    fn logits(&self, ids: &Tensor, lora: Option<&Lora>) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let hidden = self.hidden(ids, lora, None)?;
        let logits = ops::frozen_linear(&hidden, self.lm_head())?;
        Ok(logits.reshape((b, t, self.vocab_size()))?)
    }
}

/// One padded batch: token ids (B, T), the flat positions b*T + t whose
/// next token is predicted, and those next tokens.
pub struct Batch {
    pub ids: Tensor,
    pub positions: Tensor,
    pub labels: Tensor,
    pub n_labels: usize,
    pub n_tokens: usize,
}

impl Batch {
    /// `seqs`: (token ids, per-token "is a target" flags). Position t is a
    /// prediction when token t+1 is a target.
    pub fn new(seqs: &[(Vec<u32>, Vec<bool>)], pad: u32, device: &Device) -> Result<Self> {
        let t = seqs.iter().map(|s| s.0.len()).max().unwrap_or(0).max(1);
        let b = seqs.len();
        let mut ids = vec![pad; b * t];
        let mut positions = Vec::new();
        let mut labels = Vec::new();
        let mut n_tokens = 0;
        for (i, (toks, target)) in seqs.iter().enumerate() {
            n_tokens += toks.len();
            ids[i * t..i * t + toks.len()].copy_from_slice(toks);
            for j in 1..toks.len() {
                if target[j] {
                    positions.push((i * t + j - 1) as u32);
                    labels.push(toks[j]);
                }
            }
        }
        let n_labels = labels.len();
        Ok(Batch {
            ids: Tensor::from_vec(ids, (b, t), device)?,
            positions: Tensor::from_vec(positions, n_labels, device)?,
            labels: Tensor::from_vec(labels, n_labels, device)?,
            n_labels,
            n_tokens,
        })
    }
}

/// An error when `len` tokens exceed a model's learned `positions`.
pub fn check_positions(len: usize, positions: usize, arch: &str) -> Result<()> {
    if len > positions {
        return Err(TrainError::Data(format!(
            "sequence of {len} tokens is longer than {arch}'s {positions} positions (lower \
             max_seq_len)"
        )));
    }
    Ok(())
}

/// Reads a scalar tensor as f64 on the CPU.
pub fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?
        .to_device(&Device::Cpu)?
        .to_scalar::<f64>()?)
}
