//! LoRA fine-tuning and test-loss evaluation on candle, for `flow`'s
//! `train_lora` and `eval_loss` stages.
//!
//! - [`model`]: what training needs of a model ([`CausalLm`]), and batches.
//! - [`llama`], [`gpt2`], [`opt`]: the architectures, frozen base with LoRA
//!   adapters, matching Hugging Face's implementations.
//! - [`lora`]: adapters, their initialization and PEFT names.
//! - [`gguf`], [`hf`]: loading weights and tokenizer from a GGUF file (q/k
//!   un-permuted) or a Hugging Face checkpoint folder.
//! - [`data`]: how an example becomes tokens and which tokens carry the loss.
//! - [`trainer`]: AdamW training loop, checkpoints, evaluation, PEFT format.
//! - [`ops`]: differentiable RMSNorm, LayerNorm, RoPE, softmax, attention,
//!   cross-entropy and a frozen-weight linear whose backward skips the
//!   weight gradient; on the CPU the row-wise ones run as [`fused`] kernels.
//! - [`error`]: [`TrainError`], what every fallible function here returns.

pub mod data;
pub mod error;
pub mod fused;
pub mod gguf;
pub mod gpt2;
pub mod hf;
pub mod llama;
pub mod lora;
pub mod model;
pub mod ops;
pub mod opt;
pub mod tokenizer;
pub mod trainer;
pub mod weights;

use std::path::Path;

pub use candle_core::Device;
pub use error::TrainError;
pub use model::CausalLm;
pub use tokenizer::Tokenizer;

/// Makes candle's idle elementwise workers sleep after 100 spins instead
/// of 25 000. candle runs elementwise ops on its own thread pool beside
/// rayon's (which runs the matmuls); on a machine with few cores its
/// spinning workers took the cores the matmuls needed (8% of a training
/// step's samples were spin-waits on 2 cores). An explicit
/// `CANDLE_BARRIER_POOL_SPIN_LIMIT` is kept. Call at startup, before
/// other threads exist (it sets an environment variable).
pub fn limit_idle_spinning() {
    const VAR: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";
    if std::env::var_os(VAR).is_none() {
        std::env::set_var(VAR, "100");
    }
}

/// The device to run on: CUDA when built with the `cuda` feature and a GPU
/// is present, else the CPU.
pub fn device() -> Device {
    #[cfg(feature = "cuda")]
    {
        if let Ok(d) = Device::new_cuda(0) {
            return d;
        }
    }
    Device::Cpu
}

/// A model of any supported architecture and its tokenizer.
pub struct Loaded {
    pub model: Box<dyn CausalLm>,
    pub tokenizer: Tokenizer,
}

/// Loads a model from a GGUF file (llama, with the tokenizer `flow_models`
/// builds from its metadata, the one generation uses), or from the Hugging
/// Face checkpoint folder that holds `weights` (`model.safetensors`, its
/// shards' index, or `pytorch_model.bin`) with the given tokenizer
/// (default: `tokenizer.json` in that folder).
pub fn load(
    weights: &Path,
    tokenizer: Option<tokenizers::Tokenizer>,
    device: &Device,
) -> Result<Loaded, TrainError> {
    if weights.extension().and_then(|e| e.to_str()) == Some("gguf") {
        let g = gguf::load(weights, device)?;
        return Ok(Loaded {
            model: Box::new(g.model),
            tokenizer: g.tokenizer,
        });
    }
    let dir = if weights.is_dir() {
        weights
    } else {
        weights.parent().unwrap_or(Path::new("."))
    };
    let inner = match tokenizer {
        Some(t) => t,
        None => {
            let path = dir.join("tokenizer.json");
            let tk = tokenizers::Tokenizer::from_file(&path)
                .map_err(|e| TrainError::Invalid(format!("cannot load {}: {e}", path.display())))?;
            // Its padding (every encoding is padded to it) is bounded.
            flow_models::guard::check_tokenizer(&tk, &path)?;
            tk
        }
    };
    let loaded = Loaded {
        model: hf::load_model(dir, device, candle_core::DType::F32)?,
        tokenizer: hf::tokenizer(dir, inner)?,
    };
    let vocab = loaded.model.vocab_size();
    let t = &loaded.tokenizer;
    let outside = t.inner.get_vocab_size(true) > vocab
        || t.eos as usize >= vocab
        || t.bos.is_some_and(|b| b as usize >= vocab);
    if outside {
        return Err(TrainError::Invalid(format!(
            "{}: the tokenizer ({} tokens, end token {}) does not fit the model's {vocab}-token \
             vocabulary",
            dir.display(),
            t.inner.get_vocab_size(true),
            t.eos
        )));
    }
    Ok(loaded)
}

/// Every LoRA target module name of the supported architectures (for
/// checking a manifest before the model is loaded).
pub fn known_module_names() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    let all = llama::MODULE_PATHS
        .iter()
        .chain(&gpt2::MODULE_PATHS)
        .chain(&opt::MODULE_PATHS);
    for path in all {
        let name = path.rsplit('.').next().unwrap_or(path);
        if !out.contains(&name) {
            out.push(name);
        }
    }
    out
}
