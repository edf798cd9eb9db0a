//! Stage kinds of `flow`: real data, generation (topics, stories, QA pairs,
//! paraphrases and the paraphrase-replacement levels), mixing and subsets,
//! scoring, LoRA training, evaluation, sentence embeddings (their KL and
//! t-SNE), tables and figures with uncertainty over replicates, and the
//! paper's findings tested against the data.
//!
//! - [`kinds`]: one module per stage kind (`kinds/<kind>.rs`, or
//!   `kinds/<kind>/mod.rs` beside its `tests.rs`), each with its parameters
//!   read once into a typed `Settings`. A kind never imports another kind
//!   (`tests::kinds_import_no_other_kind` checks it): what kinds share lives
//!   in the modules below.
//! - [`contracts`]: the files one stage writes and another reads (datasets,
//!   topics, embeddings, adapters, t-SNE points, loss curves, per-example
//!   losses): their names, writers and readers.
//! - [`toolkit`]: helpers named for their job: parameters, model resolution
//!   and loading, sentence encoders, training, generation, text, cores, seeds,
//!   replicates, real corpora, JSON Lines, cache folders.
//! - [`resources`]: the resource kinds, `[models.*]` and `[generators.*]`:
//!   the fields of an entry, which of them stay out of content keys, and the
//!   parameters that name an entry.
//!
//! A new kind is its module under `kinds/` and one line in the list below.

pub mod contracts;
pub mod resources;
pub mod toolkit;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod testutil;

/// Declares the kind modules and registers their stages: one line a kind,
/// `module::Type`, in the order `flow kinds` has always listed them.
macro_rules! kinds {
    ($($module:ident :: $stage:ident),* $(,)?) => {
        /// One module per stage kind; see the crate documentation.
        pub mod kinds {
            $(pub mod $module;)*
        }

        /// The kind modules, as declared (for the layout test).
        #[cfg(test)]
        const KIND_MODULES: &[&str] = &[$(stringify!($module)),*];

        /// Registers every stage kind of this crate and the resource sections.
        pub fn register_all(registry: &mut flow_engine::Registry) {
            resources::register(registry);
            $(registry.register(kinds::$module::$stage);)*
        }
    };
}

kinds! {
    source::Source,
    mix::Mix,
    score::Score,
    table::Table,
    topics::Topics,
    generate_stories::GenerateStories,
    generate_qa::GenerateQa,
    paraphrase::Paraphrase,
    replace::Replace,
    train_lora::TrainLora,
    eval_loss::EvalLoss,
    plot::Plot,
    subset::Subset,
    embed::Embed,
    embed_kl::EmbedKl,
    tsne::Tsne,
    findings::Findings,
}
