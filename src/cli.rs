//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::executors::{ExecutorArgs, RunInstanceArgs};

#[derive(Parser, Debug)]
#[command(
    name = "flow",
    version,
    about = "Declarative, content-cached dataflow for studying LLM-generated training data",
    long_about = "Runs TOML manifests: a DAG of content-keyed stages (data sources, generation, \
                  mixing, scoring, LoRA training, evaluation, figures). Every result is cached by \
                  a blake3 key of its inputs; only what is stale reruns."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub dirs: Dirs,
}

/// Where things live; none of this changes results.
#[derive(Args, Debug, Clone)]
pub struct Dirs {
    /// Cache folder (default: `.flow/` in the manifest's project root)
    #[arg(long, global = true, env = "FLOW_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Local mirror of the datasets (layout: rocstories/stories.jsonl, narrativeqa/*.jsonl);
    /// without it data comes from the Hugging Face hub
    #[arg(long, global = true, env = "FLOW_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Local models folder, searched before the Hugging Face cache and hub
    #[arg(long, global = true, env = "FLOW_MODELS_DIR", value_name = "DIR")]
    pub models_dir: Option<PathBuf>,
    /// Publish results here instead of the manifest's `results` folder (which must stay
    /// inside the project); the one way to publish to an absolute path
    #[arg(long, global = true, env = "FLOW_RESULTS_DIR", value_name = "DIR")]
    pub results_dir: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run what is stale, reuse the rest
    Run(RunArgs),
    /// Show each stage instance: fresh, stale (and why) or failed
    Status(StatusArgs),
    /// Show one stage (or instance): parameters, inputs, outputs, metrics, log
    Show(ShowArgs),
    /// Delete cache entries that no manifest's last run points at
    Gc(GcArgs),
    /// Check a manifest without running anything
    Check(ManifestArgs),
    /// List the stage kinds and their parameters
    Kinds(KindsArgs),
    /// Upload the cache's records and their objects to a remote cache (create-only)
    Push(crate::remote::TransferArgs),
    /// Download records and their objects from a remote cache, each object verified
    Pull(crate::remote::TransferArgs),
    /// Compute one instance into the cache (what `flow run --executor` jobs run)
    #[command(hide = true)]
    RunInstance(RunInstanceArgs),
}

#[derive(Args, Debug)]
pub struct ManifestArgs {
    /// The manifest (TOML)
    pub manifest: PathBuf,
    /// Apply the overrides of `[profile.NAME]`
    #[arg(long, short)]
    pub profile: Option<String>,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub manifest: ManifestArgs,
    /// Only bring these stages or instances (and what they need) up to date
    #[arg(long = "stage", value_name = "STAGE")]
    pub stages: Vec<String>,
    /// Recompute these stages or instances even if fresh
    #[arg(long, value_name = "STAGE")]
    pub force: Vec<String>,
    /// Print what would run, and why, without running it
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// Cores to use at once (default: all)
    #[arg(long, short)]
    pub jobs: Option<usize>,
    /// No progress bars
    #[arg(long)]
    pub no_progress: bool,
    #[command(flatten)]
    pub executor: ExecutorArgs,
    #[command(flatten)]
    pub remote: crate::remote::RemoteOpts,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub manifest: ManifestArgs,
    /// Machine-readable output (schema: docs/status.md)
    #[arg(long)]
    pub json: bool,
    /// Rehash every cached output the plan uses instead of trusting its size and mtime
    #[arg(long)]
    pub verify: bool,
}

#[derive(Args, Debug)]
pub struct ShowArgs {
    #[command(flatten)]
    pub manifest: ManifestArgs,
    /// A stage name (all its instances) or an instance name such as `mix@ratio=0.4`
    pub stage: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct GcArgs {
    /// Report what would be deleted without deleting
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// Leave unreachable entries that changed less than this many seconds ago: on a cache
    /// shared by several machines, a job elsewhere may be writing them (0: no grace)
    #[arg(long, value_name = "SECONDS", default_value_t = flow_cache::GC_GRACE.as_secs())]
    pub grace: u64,
}

#[derive(Args, Debug)]
pub struct KindsArgs {
    /// Show the parameters of one kind
    pub kind: Option<String>,
}
