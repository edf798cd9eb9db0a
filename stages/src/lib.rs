//! Stage kinds of `flow`: real data, generation, mixing, scoring, training,
//! evaluation, embeddings, tables and figures.
//!
//! - [`kinds`]: one module per stage kind (`kinds/<kind>.rs`, or
//!   `kinds/<kind>/mod.rs` beside its `tests.rs`), each with its parameters
//!   read once into a typed `Settings`. A kind never imports another kind
//!   (`tests::kinds_import_no_other_kind` checks it): what kinds share lives
//!   in the two modules below.
//! - [`contracts`]: the files one stage writes and another reads (datasets,
//!   topics, embeddings, adapters, t-SNE points, loss curves): their names,
//!   writers and readers.
//! - [`toolkit`]: helpers named for their job: model resolution and loading,
//!   training, generation, text, cores, seeds, parameters, real corpora.
//! - [`resources`]: what `[models.*]` and `[generators.*]` entries accept.
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
}
