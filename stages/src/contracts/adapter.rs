//! A LoRA adapter in PEFT's format (`adapter_config.json` +
//! `adapter_model.safetensors`, loadable with `PeftModel.from_pretrained`),
//! and the metric `base_model`: the `[models.*]` entry it was trained on.
//! Written by `train_lora`, read by `eval_loss`.

use std::path::Path;

use flow_engine::{Outcome, StageError, Upstream};
use flow_train::lora::Lora;

use crate::toolkit::training::other;

pub const ADAPTER_CONFIG: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// The metric naming the base model.
pub const BASE_MODEL: &str = "base_model";

/// Writes `lora`, trained on `base_model`, into `dir`; `outcome` gets both
/// files as outputs.
pub fn output(
    outcome: Outcome,
    lora: &Lora,
    dir: &Path,
    base_model: &str,
) -> Result<Outcome, StageError> {
    flow_train::trainer::save_peft(lora, dir, base_model).map_err(other)?;
    Ok(outcome
        .output(ADAPTER_CONFIG, dir.join(ADAPTER_CONFIG))
        .output(ADAPTER_WEIGHTS, dir.join(ADAPTER_WEIGHTS)))
}

/// The `[models.*]` entry an upstream adapter says it was trained on.
pub fn base_model(up: &Upstream) -> Option<&str> {
    up.metrics.get(BASE_MODEL).and_then(|v| v.as_str())
}

/// The adapter of an upstream `train_lora` instance.
pub fn load(up: &Upstream, device: &flow_train::Device) -> Result<Lora, StageError> {
    flow_train::trainer::load_peft_files(
        up.file(ADAPTER_CONFIG)?,
        up.file(ADAPTER_WEIGHTS)?,
        device,
    )
    .map_err(other)
}
