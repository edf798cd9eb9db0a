//! The engine of `flow`: manifests become a DAG of content-keyed stage
//! instances; the scheduler runs what is stale and caches every result.
//!
//! The engine knows nothing about LLMs: stage kinds plug in through
//! [`stage::Stage`] and a [`stage::Registry`].

pub mod schema;
pub mod stage;
pub mod value;

pub use schema::{ParamSpec, ParamType};
pub use stage::{
    CancelToken, Context, Env, FileHasher, NoProgress, Outcome, OutputFile, ParamProblem, Params,
    Progress, Registry, Resources, Stage, StageError, Threads, Upstream,
};
pub use value::Value;
