//! Helpers the kinds share, one module per job. Nothing here is a stage
//! kind, and nothing here imports one.
//!
//! - [`params`]: reading validated parameters into a kind's `Settings`.
//! - [`models`]: `[models.*]` entries resolved to weights; causal language
//!   models loaded for training and evaluation.
//! - [`encoder`]: BERT and MPNet sentence encoders (`embed`).
//! - [`training`]: around `flow_train`: the loss parameter, encoding,
//!   progress and errors (`train_lora`, `eval_loss`).
//! - [`generation`]: the journaled generator, batches, retries and counters
//!   of the generation kinds, and their common parameters.
//! - [`text`]: prompt templates, sentences, list markers, CSV fields.
//! - [`cores`]: the thread pool of the cores a stage was granted.
//! - [`seeds`]: seeded randomness, one stream per purpose.
//! - [`replicates`]: instances that differ only in `seed`, their means and
//!   95% intervals (`table`, `plot`).
//! - [`corpora`]: the real datasets, from a local mirror or the hub (`source`).
//! - [`jsonl`]: JSON Lines reading with errors that name the line.
//! - [`cache_dirs`]: folders kept under the cache (generation journal, downloads).

pub mod cache_dirs;
pub mod cores;
pub mod corpora;
pub mod encoder;
pub mod generation;
pub mod jsonl;
pub mod models;
pub mod params;
pub mod replicates;
pub mod seeds;
pub mod text;
pub mod training;
