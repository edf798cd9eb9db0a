//! The real corpora (ROCStories, NarrativeQA) and where they come from: a
//! local mirror (`--data-dir`, `FLOW_DATA_DIR`) laid out like `shared/data`,
//! or else the Hugging Face hub. Read by `source`.

pub mod hub;
pub mod narrativeqa;
pub mod rocstories;

use std::path::{Path, PathBuf};

use flow_engine::{Env, StageError};

/// The mirror layout, for error messages.
pub const LAYOUT: &str = "<data_dir>/rocstories/stories.jsonl, \
     <data_dir>/narrativeqa/documents.jsonl and <data_dir>/narrativeqa/qaps.jsonl \
     (JSON Lines, as in the project's shared/data folder; see its README.md)";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dataset {
    RocStories,
    NarrativeQa,
}

impl Dataset {
    pub fn parse(name: &str) -> Result<Self, StageError> {
        match name {
            "rocstories" => Ok(Dataset::RocStories),
            "narrativeqa" => Ok(Dataset::NarrativeQa),
            other => Err(StageError::Other(format!(
                "internal: unknown dataset `{other}`"
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dataset::RocStories => "rocstories",
            Dataset::NarrativeQa => "narrativeqa",
        }
    }

    /// The mirror files this dataset reads, relative to the data dir.
    pub fn mirror_files(self) -> &'static [&'static str] {
        match self {
            Dataset::RocStories => &[rocstories::MIRROR_FILE],
            Dataset::NarrativeQa => &[narrativeqa::DOCUMENTS_FILE, narrativeqa::QAPS_FILE],
        }
    }
}

/// Where a dataset is read from on this machine.
#[derive(Clone, Debug, PartialEq)]
pub enum Location {
    Mirror(PathBuf),
    Hub,
}

impl Location {
    pub fn of(env: &Env) -> Self {
        match &env.data_dir {
            Some(dir) => Location::Mirror(dir.clone()),
            None => Location::Hub,
        }
    }
}

/// A file of the mirror, or an error naming the path and the layout.
pub fn mirror_file(root: &Path, rel: &str) -> Result<PathBuf, StageError> {
    let path = root.join(rel);
    if path.is_file() {
        Ok(path)
    } else {
        Err(StageError::invalid(format!(
            "the data dir {} has no {rel} (looked for {}); expected layout: {LAYOUT}",
            root.display(),
            path.display()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_mirror_file_names_path_and_layout() {
        let dir = tempfile::tempdir().unwrap();
        let err = mirror_file(dir.path(), rocstories::MIRROR_FILE)
            .unwrap_err()
            .to_string();
        assert!(err.contains("rocstories/stories.jsonl"), "{err}");
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
        assert!(err.contains("expected layout"), "{err}");
    }
}
