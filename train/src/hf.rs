//! Loading a Hugging Face checkpoint folder: `config.json` says the
//! architecture (`model_type`: llama, gpt2, opt), the weights are
//! `model.safetensors` or the shards listed in `model.safetensors.index.json`
//! (memory-mapped, converted to f32 tensor by tensor), or PyTorch's
//! `pytorch_model.bin` where a repository has nothing else; the tokenizer
//! comes from `flow_models` (`tokenizer.json`, or `vocab.json` + `merges.txt`).
//!
//! Hugging Face checkpoints keep q/k in the `rotate_half` layout the llama
//! code here uses (no un-permuting, unlike GGUF).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use crate::error::{Result, TrainError};
use crate::gpt2::{self, Gpt2};
use crate::llama::{self, Llama};
use crate::model::CausalLm;
use crate::opt::{self, Opt};
use crate::tokenizer::Tokenizer;
use crate::weights::Weights;

const CONFIG: &str = "config.json";
const SINGLE: &str = "model.safetensors";
const INDEX: &str = "model.safetensors.index.json";
/// PyTorch's pickle, what older repositories (OPT) have instead.
const PICKLE: &str = "pytorch_model.bin";

/// Architectures this loader reads, by `model_type`.
pub const ARCHITECTURES: [&str; 3] = ["llama", "gpt2", "opt"];

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| TrainError::io(format!("cannot read {}", path.display()), e))?;
    serde_json::from_str(&text)
        .map_err(|e| TrainError::json(format!("{} is not valid JSON", path.display()), e))
}

/// Where a checkpoint's tensors are.
enum WeightFiles {
    /// One file, or the shards an index lists.
    Safetensors(Vec<PathBuf>),
    Pickle(PathBuf),
}

/// The weight files of the checkpoint in `dir`.
fn weight_files(dir: &Path) -> Result<WeightFiles> {
    let single = dir.join(SINGLE);
    if single.is_file() {
        return Ok(WeightFiles::Safetensors(vec![single]));
    }
    let index = dir.join(INDEX);
    if index.is_file() {
        let j = read_json(&index)?;
        let map = j["weight_map"]
            .as_object()
            .ok_or_else(|| TrainError::Invalid(format!("{}: no `weight_map`", index.display())))?;
        let mut files: Vec<PathBuf> = map
            .values()
            .filter_map(|v| v.as_str())
            .map(|f| dir.join(f))
            .collect();
        files.sort();
        files.dedup();
        if let Some(missing) = files.iter().find(|f| !f.is_file()) {
            return Err(TrainError::Invalid(format!(
                "{} lists {}, which is not there",
                index.display(),
                missing.display()
            )));
        }
        return Ok(WeightFiles::Safetensors(files));
    }
    let pickle = dir.join(PICKLE);
    if pickle.is_file() {
        return Ok(WeightFiles::Pickle(pickle));
    }
    Err(TrainError::Invalid(format!(
        "{} has none of {SINGLE}, {INDEX}, {PICKLE}",
        dir.display()
    )))
}

/// Every tensor of the checkpoint, in its stored dtype, on the CPU; each
/// safetensors header is checked first ([`flow_models::guard`]).
fn read_tensors(dir: &Path) -> Result<BTreeMap<String, Tensor>> {
    let files = match weight_files(dir)? {
        WeightFiles::Safetensors(files) => files,
        WeightFiles::Pickle(pickle) => {
            let tensors = candle_core::pickle::read_all(&pickle).map_err(|e| {
                TrainError::tensor(
                    format!("cannot read the PyTorch weights {}", pickle.display()),
                    e,
                )
            })?;
            return Ok(tensors.into_iter().collect());
        }
    };
    // Every header is checked (length, JSON, offsets and sizes within the
    // file) before candle maps the file.
    for f in &files {
        flow_models::guard::check_safetensors_file(f)?;
    }
    // Safety: the files are only read; a concurrent writer would be a user error,
    // as for every tool that maps checkpoints (transformers, candle).
    let st = unsafe { MmapedSafetensors::multi(&files) }.map_err(|e| {
        TrainError::tensor(
            format!("cannot read the safetensors in {}", dir.display()),
            e,
        )
    })?;
    let mut out = BTreeMap::new();
    for (name, _) in st.tensors() {
        let t = st
            .load(&name, &Device::Cpu)
            .map_err(|e| TrainError::tensor(format!("tensor `{name}`"), e))?;
        out.insert(name, t);
    }
    Ok(out)
}

/// The model in the Hugging Face folder `dir`, in f32 (or `dtype`) on `device`.
pub fn load_model(dir: &Path, device: &Device, dtype: DType) -> Result<Box<dyn CausalLm>> {
    let config_path = dir.join(CONFIG);
    let config = read_json(&config_path)?;
    let model_type = config["model_type"]
        .as_str()
        .ok_or_else(|| TrainError::Invalid(format!("{}: no `model_type`", config_path.display())))?
        .to_string();
    let parse_err = |e| {
        TrainError::json(
            format!(
                "{} does not describe a {model_type} model",
                config_path.display()
            ),
            e,
        )
    };
    let tensors = read_tensors(dir)?;
    // Layer, head and width counts are bounded by the tensors present before
    // a model is sized by them.
    let shapes: Vec<(&str, &[usize])> = tensors
        .iter()
        .map(|(n, t)| (n.as_str(), t.dims()))
        .collect();
    flow_models::guard::check_config_json(&config, shapes, &config_path)?;
    match model_type.as_str() {
        "llama" => {
            let c: llama::HfConfig = serde_json::from_value(config).map_err(parse_err)?;
            let cfg = c.into_config()?;
            let w = Weights::new(tensors, &[], device).with_dtype(dtype);
            Ok(Box::new(Llama::from_weights(cfg, w, device)?))
        }
        "gpt2" => {
            let c: gpt2::Config = serde_json::from_value(config).map_err(parse_err)?;
            let w = Weights::new(tensors, &["transformer."], device).with_dtype(dtype);
            Ok(Box::new(Gpt2::from_weights(c, w, device)?))
        }
        "opt" => {
            let c: opt::Config = serde_json::from_value(config).map_err(parse_err)?;
            let w = Weights::new(tensors, &["model."], device).with_dtype(dtype);
            Ok(Box::new(Opt::from_weights(c, w, device)?))
        }
        other => Err(TrainError::Unsupported(format!(
            "{}: model_type `{other}` is not supported for training (supported: {})",
            config_path.display(),
            ARCHITECTURES.join(", ")
        ))),
    }
}

/// The tokenizer `inner` of the checkpoint in `dir`, with the end token
/// from `tokenizer_config.json` (else `config.json`'s `eos_token_id`), and
/// a BOS token when the tokenizer adds one itself.
pub fn tokenizer(dir: &Path, inner: tokenizers::Tokenizer) -> Result<Tokenizer> {
    let config = read_json(&dir.join(CONFIG))?;
    let id_of = |v: &serde_json::Value| -> Option<u32> {
        match v {
            serde_json::Value::Number(n) => n.as_u64().map(|x| x as u32),
            serde_json::Value::Array(a) => a.first().and_then(|x| x.as_u64()).map(|x| x as u32),
            _ => None,
        }
    };
    let tk_config = read_json(&dir.join("tokenizer_config.json")).ok();
    let eos_text = tk_config.as_ref().and_then(|c| match &c["eos_token"] {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content").and_then(|v| v.as_str()).map(String::from),
        _ => None,
    });
    let eos = eos_text
        .and_then(|t| inner.token_to_id(&t))
        .or_else(|| id_of(&config["eos_token_id"]))
        .ok_or_else(|| {
            TrainError::Invalid(format!(
                "{}: no end-of-text token (eos_token in tokenizer_config.json or eos_token_id \
                 in config.json)",
                dir.display()
            ))
        })?;
    // Whether the tokenizer itself prepends BOS (Llama 3 does, GPT-2 does not).
    let probe = inner
        .encode("a", true)
        .map_err(|e| TrainError::Tokenize(e.to_string()))?;
    let bos = id_of(&config["bos_token_id"]).filter(|b| probe.get_ids().first() == Some(b));
    Ok(Tokenizer { inner, eos, bos })
}
