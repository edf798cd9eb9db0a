//! The folders stages keep in the cache's areas (see `flow_cache::Area`), outside the
//! cached stage results: the generation journal and hub downloads.

use std::path::PathBuf;

use flow_engine::{Area, Env};

/// The request journal every generation stage shares: `<journal area>/generate/`.
pub fn generation_journal(env: &Env) -> PathBuf {
    env.area(Area::Journal).join("generate")
}

/// Where a dataset file of hub repository `repo` at `revision` is kept:
/// `<downloads area>/huggingface/datasets/<repo>/<revision>/<file>`.
pub fn hub_dataset_file(env: &Env, repo: &str, revision: &str, file: &str) -> PathBuf {
    env.area(Area::Downloads)
        .join("huggingface")
        .join("datasets")
        .join(repo)
        .join(revision)
        .join(file)
}
