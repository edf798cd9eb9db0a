//! The engine of `flow`: manifests become a DAG of content-keyed stage
//! instances; the scheduler runs what is stale and caches every result.
//!
//! The engine knows nothing about LLMs: stage kinds plug in through
//! [`stage::Stage`] and a [`stage::Registry`], and so do the kinds of resources stages
//! name (`[models.*]`, `[generators.*]`: [`resource::ResourceKind`]).

pub mod diag;
pub mod executor;
pub mod instance;
pub mod key;
pub mod manifest;
pub mod plan;
pub mod progress;
pub mod project;
pub mod publish;
pub mod reason;
pub mod resource;
pub mod run;
mod schedule;
pub mod schema;
pub mod session;
pub mod stage;
pub mod status;
#[cfg(test)]
mod testkit;
pub mod value;

pub use diag::{Diagnostic, ManifestErrors};
pub use executor::Executor;
pub use flow_cache::Area;
pub use instance::{run_instance, InstanceError, InstanceOptions, InstanceOutcome};
pub use manifest::{LoadError, Manifest};
pub use plan::{plan, Instance, Plan};
pub use reason::{Change, StaleReason};
pub use resource::{ResourceEntry, ResourceKind, Resources};
pub use run::{run, RunError, RunOptions, RunReport};
pub use schema::{ParamSpec, ParamType};
pub use session::Session;
pub use stage::{
    CancelToken, Context, Env, FileHasher, NoProgress, Outcome, OutputFile, ParamProblem, Params,
    Progress, Registry, Stage, StageError, Threads, Upstream,
};
pub use status::{evaluate, InstanceStatus, State};
pub use value::Value;
