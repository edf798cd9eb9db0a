//! Stage kinds of `flow`: real data sources, mixing, scoring and tables.
//!
//! Every data stage exchanges one format, [`dataset`] (`data.jsonl`).

pub mod data;
pub mod dataset;
pub mod embed;
pub mod embed_kl;
pub mod eval_loss;
pub mod generate_qa;
pub mod generate_stories;
pub mod generation;
pub mod mix;
pub mod params;
pub mod paraphrase;
pub mod plot;
pub mod replace;
pub mod resources;
pub mod score;
pub mod seeds;
pub mod source;
pub mod subset;
pub mod table;
pub mod topics;
pub mod train_lora;
pub mod tsne;

#[cfg(test)]
mod testutil;

pub use mix::Mix;
pub use score::Score;
pub use source::Source;
pub use table::Table;

/// Registers every stage kind of this crate.
pub fn register_all(registry: &mut flow_engine::Registry) {
    resources::register(registry);
    registry.register(Source);
    registry.register(Mix);
    registry.register(Score);
    registry.register(Table);
    registry.register(topics::Topics);
    registry.register(generate_stories::GenerateStories);
    registry.register(generate_qa::GenerateQa);
    registry.register(paraphrase::Paraphrase);
    registry.register(replace::Replace);
    registry.register(train_lora::TrainLora);
    registry.register(eval_loss::EvalLoss);
    registry.register(plot::Plot);
    registry.register(subset::Subset);
    registry.register(embed::Embed);
    registry.register(embed_kl::EmbedKl);
    registry.register(tsne::Tsne);
}
