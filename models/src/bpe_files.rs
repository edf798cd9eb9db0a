//! A `tokenizers::Tokenizer` from the files of a slow GPT-2-style tokenizer
//! (`vocab.json` + `merges.txt`, as OPT's repositories ship, with no
//! `tokenizer.json`): byte-level BPE, the special tokens named in
//! `tokenizer_config.json`, and BOS prepended when it says `add_bos_token`.

use std::path::Path;

use serde_json::{json, Value};

use crate::{ModelError, Result};

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| ModelError::io(format!("read {}", path.display()), e))
}

fn token_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// The `tokenizer.json` equivalent of `vocab.json` + `merges.txt`.
pub fn tokenizer_json_from_vocab_merges(
    vocab_path: &Path,
    merges_path: &Path,
    config_path: Option<&Path>,
) -> Result<Value> {
    let vocab: serde_json::Map<String, Value> =
        serde_json::from_str(&read(vocab_path)?).map_err(|e| {
            ModelError::Invalid(format!(
                "{} is not a JSON vocabulary: {e}",
                vocab_path.display()
            ))
        })?;
    let merges: Vec<String> = read(merges_path)?
        .lines()
        .filter(|l| !l.starts_with("#version") && !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    let config: Value = match config_path {
        Some(p) if p.is_file() => serde_json::from_str(&read(p)?)
            .map_err(|e| ModelError::Invalid(format!("{} is not JSON: {e}", p.display())))?,
        _ => json!({}),
    };
    let id_of = |t: &str| vocab.get(t).and_then(Value::as_u64);
    let mut specials: Vec<String> = ["bos_token", "eos_token", "unk_token", "pad_token"]
        .iter()
        .filter_map(|k| token_text(&config[*k]))
        .collect();
    if let Some(m) = config["added_tokens_decoder"].as_object() {
        specials.extend(m.values().filter_map(token_text));
    }
    specials.sort();
    specials.dedup();
    let added: Vec<Value> = specials
        .iter()
        .filter_map(|t| {
            id_of(t).map(|id| {
                json!({"id": id, "content": t, "single_word": false, "lstrip": false,
                       "rstrip": false, "normalized": false, "special": true})
            })
        })
        .collect();
    let add_prefix_space = config["add_prefix_space"].as_bool().unwrap_or(false);
    let bos = token_text(&config["bos_token"]);
    let post_processor = match (&bos, config["add_bos_token"].as_bool()) {
        (Some(b), Some(true)) => {
            let id = id_of(b).ok_or_else(|| {
                ModelError::Invalid(format!(
                    "bos_token `{b}` is not in {}",
                    vocab_path.display()
                ))
            })?;
            json!({
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": b, "type_id": 0}},
                           {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": b, "type_id": 0}},
                         {"Sequence": {"id": "A", "type_id": 0}},
                         {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {b.as_str(): {"id": b, "ids": [id], "tokens": [b]}}
            })
        }
        _ => Value::Null,
    };
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": add_prefix_space,
                          "trim_offsets": true, "use_regex": true},
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                    "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": token_text(&config["unk_token"]),
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges}
    }))
}

/// The tokenizer of `vocab.json` + `merges.txt` (+ `tokenizer_config.json`).
pub fn tokenizer_from_vocab_merges(
    vocab: &Path,
    merges: &Path,
    config: Option<&Path>,
) -> Result<tokenizers::Tokenizer> {
    let j = tokenizer_json_from_vocab_merges(vocab, merges, config)?;
    tokenizers::Tokenizer::from_bytes(j.to_string().as_bytes()).map_err(|e| {
        ModelError::Invalid(format!(
            "cannot build a tokenizer from {} and {}: {e}",
            vocab.display(),
            merges.display()
        ))
    })
}
