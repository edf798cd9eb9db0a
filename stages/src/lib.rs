//! Stage kinds of `flow`: real data sources, mixing, scoring and tables.
//!
//! Every data stage exchanges one format, [`dataset`] (`data.jsonl`).

pub mod data;
pub mod dataset;
pub mod params;
pub mod seeds;
pub mod source;

#[cfg(test)]
mod testutil;

pub use source::Source;

/// Registers every stage kind of this crate.
pub fn register_all(registry: &mut flow_engine::Registry) {
    registry.register(Source);
}
