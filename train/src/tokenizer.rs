//! A tokenizer plus the special ids training needs.

use crate::error::{Result, TrainError};

pub struct Tokenizer {
    pub inner: tokenizers::Tokenizer,
    /// Appended after each target.
    pub eos: u32,
    /// Prepended to each example when the model's own tokenizer does so.
    pub bos: Option<u32>,
}

impl Tokenizer {
    /// Token ids of `text`, with no special tokens added (BOS and EOS are
    /// placed by [`crate::data::encode`]).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| TrainError::Tokenize(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }
}
