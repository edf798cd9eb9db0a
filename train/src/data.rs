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
//! with `Loss::All` every token after the first is. Training scores the end
//! token (the model learns where to stop); evaluation reports the loss with
//! and without it ([`Scored`]), since predicting the stop is a format effect
//! that favours whatever trained longer.

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

/// An example as tokens: what [`encode`] returns, and what was cut.
#[derive(Clone, Debug, PartialEq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    /// Per token: whether it is predicted (carries the loss).
    pub target: Vec<bool>,
    /// Whether the prompt or the target lost tokens to `max_len`.
    pub truncated: bool,
    /// Whether the last token is the end-of-text token after the target
    /// (false when the target was cut from the right, which drops it).
    pub ends: bool,
}

/// Token ids and per-token target flags, at most `max_len` tokens: the
/// prompt is cut from the left first (the target is what is scored), then
/// the target from the right. [`encode_example`] also says what was cut.
pub fn encode(
    tok: &Tokenizer,
    t: &Text,
    loss: Loss,
    max_len: usize,
) -> Result<(Vec<u32>, Vec<bool>)> {
    let e = encode_example(tok, t, loss, max_len)?;
    Ok((e.ids, e.target))
}

/// [`encode`], with whether anything was cut and whether the end token is
/// still there.
pub fn encode_example(tok: &Tokenizer, t: &Text, loss: Loss, max_len: usize) -> Result<Encoded> {
    let (prompt, target) = format(t);
    let mut p = tok.encode(&prompt)?;
    if let Some(bos) = tok.bos {
        p.insert(0, bos);
    }
    let mut g = tok.encode(&target)?;
    g.push(tok.eos);
    Ok(join(p, g, loss, max_len))
}

/// Prompt `p` and target `g` (its last token the end token) cut to
/// `max_len` tokens and joined.
fn join(mut p: Vec<u32>, mut g: Vec<u32>, loss: Loss, max_len: usize) -> Encoded {
    let (p_len, g_len) = (p.len(), g.len());
    if g.len() >= max_len {
        // At least one prompt token stays: the first token is never predicted.
        g.truncate(max_len.saturating_sub(1).max(1));
    }
    if p.len() + g.len() > max_len {
        let keep = max_len.saturating_sub(g.len());
        p.drain(..p.len() - keep);
    }
    let truncated = p.len() < p_len || g.len() < g_len;
    let ends = g.len() == g_len;
    let target: Vec<bool> = p
        .iter()
        .map(|_| loss == Loss::All)
        .chain(g.iter().map(|_| true))
        .collect();
    p.extend(g);
    Encoded {
        ids: p,
        target,
        truncated,
        ends,
    }
}

/// The share of `examples` that lost tokens to `max_len` (0 for none).
pub fn truncated_share(examples: &[Encoded]) -> f64 {
    if examples.is_empty() {
        return 0.0;
    }
    examples.iter().filter(|e| e.truncated).count() as f64 / examples.len() as f64
}

/// One example's scored-token cross-entropies split into the text (every
/// scored token but the end token) and the end token.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Scored {
    /// Summed cross-entropy of the scored tokens but the end token.
    pub text_sum: f64,
    pub text_tokens: usize,
    /// The end token's cross-entropy, where it is scored.
    pub end: Option<f64>,
}

impl Scored {
    /// `losses`: the example's scored tokens in order (as
    /// [`crate::trainer::token_losses`] gives them); `ends`: whether the last
    /// of them is the end token ([`Encoded::ends`]; it is always scored).
    pub fn of(losses: &[f64], ends: bool) -> Scored {
        let (text, end) = match losses.split_last() {
            Some((last, rest)) if ends => (rest, Some(*last)),
            _ => (losses, None),
        };
        Scored {
            text_sum: text.iter().sum(),
            text_tokens: text.len(),
            end,
        }
    }

    /// Summed cross-entropy and count of every scored token, the end token
    /// included.
    pub fn with_end(&self) -> (f64, usize) {
        match self.end {
            Some(e) => (self.text_sum + e, self.text_tokens + 1),
            None => (self.text_sum, self.text_tokens),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The character-level tokenizer of the tiny GPT-2 fixture (one token a
    /// character), with `</s>` (id 2) as the end token and no BOS.
    fn chars() -> Tokenizer {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/gpt2/tokenizer.json");
        Tokenizer {
            inner: tokenizers::Tokenizer::from_file(path).unwrap(),
            eos: 2,
            bos: None,
        }
    }

    fn story(input: &str, target: &str) -> Text {
        Text {
            context: None,
            input: input.into(),
            target: target.into(),
        }
    }

    /// "abc\n" (4 prompt tokens) + "de" + end (3 target tokens) = 7 tokens.
    #[test]
    fn short_examples_are_not_cut_and_keep_their_end_token() {
        let tok = chars();
        let e = encode_example(&tok, &story("abc", "de"), Loss::Target, 7).unwrap();
        assert_eq!(e.ids.len(), 7);
        assert_eq!(e.target, [false, false, false, false, true, true, true]);
        assert!(!e.truncated && e.ends);
        assert_eq!(e.ids[6], 2);
        let all = encode_example(&tok, &story("abc", "de"), Loss::All, 64).unwrap();
        assert_eq!(all.target, [true; 7]);
        assert!(!all.truncated && all.ends);
        // `encode` is the same tokens.
        assert_eq!(
            encode(&tok, &story("abc", "de"), Loss::Target, 7).unwrap(),
            (e.ids, e.target)
        );
    }

    /// One token too many: the prompt loses its first character; far too
    /// many: the target is cut from the right and loses its end token.
    #[test]
    fn over_long_examples_are_flagged() {
        let tok = chars();
        let e = encode_example(&tok, &story("abc", "de"), Loss::Target, 6).unwrap();
        assert_eq!(e.ids.len(), 6);
        assert_eq!(tok.encode("bc\nde").unwrap(), e.ids[..5]);
        assert!(e.truncated && e.ends);
        let e = encode_example(&tok, &story("abc", "defgh"), Loss::Target, 4).unwrap();
        // 3 target tokens (of 6) and 1 prompt token.
        assert_eq!(e.ids, tok.encode("\ndef").unwrap());
        assert_eq!(e.target, [false, true, true, true]);
        assert!(e.truncated && !e.ends);
        // A degenerate length does not panic.
        let e = encode_example(&tok, &story("abc", "de"), Loss::Target, 0).unwrap();
        assert!(e.truncated && !e.ends);
    }

    #[test]
    fn the_truncated_share_counts_cut_examples() {
        let tok = chars();
        let examples: Vec<Encoded> = [
            ("abc", "de"),
            ("abcdefgh", "ij"),
            ("a", "b"),
            ("a", "bcdefghij"),
        ]
        .iter()
        .map(|(i, t)| encode_example(&tok, &story(i, t), Loss::Target, 8).unwrap())
        .collect();
        let cut: Vec<bool> = examples.iter().map(|e| e.truncated).collect();
        assert_eq!(cut, [false, true, false, true]);
        assert_eq!(truncated_share(&examples), 0.5);
        assert_eq!(truncated_share(&examples[..1]), 0.0);
        assert_eq!(truncated_share(&[]), 0.0);
    }

    /// Token losses 1, 2, 3 with the end token last: text 1 + 2 over 2
    /// tokens (mean 1.5), end 3, with the end 6 over 3 (mean 2); and
    /// with-end sum = text sum + end loss.
    #[test]
    fn scored_tokens_split_into_text_and_end() {
        let s = Scored::of(&[1.0, 2.0, 3.0], true);
        assert_eq!((s.text_sum, s.text_tokens, s.end), (3.0, 2, Some(3.0)));
        assert_eq!(s.with_end(), (6.0, 3));
        // Without the end token (cut away) everything is text.
        let s = Scored::of(&[1.0, 2.0, 3.0], false);
        assert_eq!((s.text_sum, s.text_tokens, s.end), (6.0, 3, None));
        assert_eq!(s.with_end(), (6.0, 3));
        // An empty target: only the end token is scored.
        let s = Scored::of(&[0.5], true);
        assert_eq!((s.text_sum, s.text_tokens, s.end), (0.0, 0, Some(0.5)));
        assert_eq!(Scored::of(&[], true), Scored::default());
    }
}
