//! A `tokenizers::Tokenizer` built from a GGUF file's metadata.
//!
//! Supported: `tokenizer.ggml.model = "gpt2"` (byte-level BPE). The vocabulary
//! and merges come from the file, control tokens (type 3) become special added
//! tokens, user-defined ones (type 4) plain added tokens. The pre-tokenizer
//! follows `tokenizer.ggml.pre` the way llama.cpp does: `smollm`, `starcoder`,
//! `refact`, `codeshell` split every digit apart before the GPT-2 regex (the
//! same as SmolLM2's own `tokenizer.json`: `Digits(individual)` + `ByteLevel`);
//! `llama-bpe`/`llama3` use the Llama 3 regex; anything else the GPT-2 regex.

use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use serde_json::json;

use crate::{gguf_metadata, ModelError, Result};

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn strings(v: &Value, key: &str) -> Result<Vec<String>> {
    let items = v
        .to_vec()
        .map_err(|e| ModelError::Invalid(format!("GGUF `{key}`: {e}")))?;
    items
        .iter()
        .map(|x| {
            x.to_string()
                .cloned()
                .map_err(|e| ModelError::Invalid(format!("GGUF `{key}`: {e}")))
        })
        .collect()
}

/// The `tokenizer.json` text equivalent to a GGUF file's tokenizer.
pub fn tokenizer_json_from_gguf(path: &Path) -> Result<serde_json::Value> {
    tokenizer_json_from_gguf_content(&gguf_metadata(path)?, path)
}

/// [`tokenizer_json_from_gguf`] from the metadata of the GGUF file at
/// `path` (named in errors), already read.
pub fn tokenizer_json_from_gguf_content(
    content: &Content,
    path: &Path,
) -> Result<serde_json::Value> {
    let md = &content.metadata;
    let get = |k: &str| {
        md.get(k).ok_or_else(|| {
            ModelError::Invalid(format!("{}: no `{k}` in GGUF metadata", path.display()))
        })
    };
    let model = get("tokenizer.ggml.model")?
        .to_string()
        .map_err(|e| ModelError::Invalid(e.to_string()))?
        .clone();
    if model != "gpt2" {
        return Err(ModelError::Invalid(format!(
            "{}: cannot build a tokenizer for GGUF tokenizer model `{model}` (supported: gpt2); \
             put a tokenizer.json beside the weights or set `tokenizer`",
            path.display()
        )));
    }
    let tokens = strings(get("tokenizer.ggml.tokens")?, "tokenizer.ggml.tokens")?;
    let merges = strings(get("tokenizer.ggml.merges")?, "tokenizer.ggml.merges")?;
    let types: Vec<i32> = match md.get("tokenizer.ggml.token_type") {
        Some(v) => v
            .to_vec()
            .map_err(|e| ModelError::Invalid(e.to_string()))?
            .iter()
            .map(|x| x.to_i32().unwrap_or(1))
            .collect(),
        None => vec![1; tokens.len()],
    };
    let pre = md
        .get("tokenizer.ggml.pre")
        .and_then(|v| v.to_string().ok().cloned())
        .unwrap_or_else(|| "default".into());

    let mut vocab = serde_json::Map::new();
    let mut added = Vec::new();
    for (id, tok) in tokens.iter().enumerate() {
        vocab.insert(tok.clone(), json!(id));
        let ty = types.get(id).copied().unwrap_or(1);
        if ty == 3 || ty == 4 {
            added.push(json!({
                "id": id, "content": tok, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": ty == 3,
            }));
        }
    }
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let pre_tokenizer = match pre.as_str() {
        "smollm" | "starcoder" | "refact" | "codeshell" => json!({
            "type": "Sequence",
            "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level],
        }),
        "llama-bpe" | "llama3" | "llama-v3" | "smaug-bpe" | "dbrx" => json!({
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
            ],
        }),
        _ => byte_level.clone(),
    };
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": false, "vocab": vocab, "merges": merges,
        },
    }))
}

/// The tokenizer of a GGUF file, from its metadata: the one tokenizer
/// built from a GGUF, for generation and training alike.
pub fn gguf_tokenizer(path: &Path) -> Result<tokenizers::Tokenizer> {
    gguf_tokenizer_from_content(&gguf_metadata(path)?, path)
}

/// [`gguf_tokenizer`] from the metadata of the GGUF file at `path` (named
/// in errors), already read (and checked: [`crate::open_gguf`]).
pub fn gguf_tokenizer_from_content(
    content: &Content,
    path: &Path,
) -> Result<tokenizers::Tokenizer> {
    let json = tokenizer_json_from_gguf_content(content, path)?;
    let text = json.to_string();
    text.parse::<tokenizers::Tokenizer>().map_err(|e| {
        ModelError::Invalid(format!(
            "{}: cannot build the tokenizer: {e}",
            path.display()
        ))
    })
}
