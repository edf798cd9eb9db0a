//! Supervised fine-tuning examples: how an example becomes tokens, and
//! which of them carry the loss.
//!
//! Format (plain text, no chat template: SmolLM2-Instruct's ChatML template
//! would insert a default system prompt, which is not part of the data):
//! - stories: `{input}\n` then the target `{target}`;
//! - QA: `{context}\n\nQuestion: {input}\nAnswer:` then the target ` {target}`.
//!
//! The target is followed by the end-of-text token. Prompt and target are
//! tokenized separately and concatenated, so the boundary is exact. With
//! `Loss::Target` only target tokens (and the end token) are predicted;
//! with `Loss::All` every token after the first is.

use crate::error::Result;
use crate::tokenizer::Tokenizer;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Loss {
    Target,
    All,
}

/// An example reduced to what training needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Text {
    pub context: Option<String>,
    pub input: String,
    pub target: String,
}

/// Prompt and target strings of an example.
pub fn format(t: &Text) -> (String, String) {
    match &t.context {
        Some(ctx) => (
            format!("{ctx}\n\nQuestion: {}\nAnswer:", t.input),
            format!(" {}", t.target),
        ),
        None => (format!("{}\n", t.input), t.target.clone()),
    }
}

/// Token ids and per-token target flags, at most `max_len` tokens: the
/// prompt is cut from the left first (the target is what is scored), then
/// the target from the right.
pub fn encode(
    tok: &Tokenizer,
    t: &Text,
    loss: Loss,
    max_len: usize,
) -> Result<(Vec<u32>, Vec<bool>)> {
    let (prompt, target) = format(t);
    let mut p = tok.encode(&prompt)?;
    if let Some(bos) = tok.bos {
        p.insert(0, bos);
    }
    let mut g = tok.encode(&target)?;
    g.push(tok.eos);
    if g.len() >= max_len {
        g.truncate(max_len.saturating_sub(1).max(1));
    }
    if p.len() + g.len() > max_len {
        let keep = max_len - g.len();
        p.drain(..p.len() - keep);
    }
    let flags: Vec<bool> = p
        .iter()
        .map(|_| loss == Loss::All)
        .chain(g.iter().map(|_| true))
        .collect();
    p.extend(g);
    Ok((p, flags))
}
