//! Helpers for the unit tests: real data, parameters with defaults, and a
//! hand-built [`Context`] the way the engine builds one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use flow_engine::{
    CancelToken, Context, Env, NoProgress, Outcome, Params, Resources, Stage, StageError, Upstream,
    Value,
};
use tempfile::TempDir;

use crate::dataset::{self, Example, Origin, Task, DATA_FILE};

/// The real data folder: `FLOW_DATA_DIR`, else `shared/data` beside the
/// workspace. `None` (with the reason printed) when it is absent.
pub fn data_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("FLOW_DATA_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"));
    if dir.join("rocstories/stories.jsonl").is_file() {
        Some(dir)
    } else {
        eprintln!(
            "SKIPPED: no real data at {} (set FLOW_DATA_DIR to a copy of shared/data)",
            dir.display()
        );
        None
    }
}

/// Given parameters plus the declared defaults, as the engine resolves them.
pub fn params(stage: &dyn Stage, given: &[(&str, Value)]) -> Params {
    let specs = stage.params();
    let mut params = Params::default();
    for spec in &specs {
        if let Some(default) = &spec.default {
            params.insert(spec.name, default.clone());
        }
    }
    for (name, value) in given {
        assert!(
            specs.iter().any(|s| s.name == *name),
            "{} has no parameter `{name}`",
            stage.kind()
        );
        params.insert(*name, value.clone());
    }
    params
}

/// A finished run: what the stage returned, its log, and its output folder.
pub struct Ran {
    pub outcome: Outcome,
    pub log: Vec<String>,
    /// Keeps the output folder alive as long as the run.
    _dir: TempDir,
}

impl Ran {
    pub fn file(&self, name: &str) -> PathBuf {
        let out = self.outcome.outputs.iter().find(|o| o.name == name);
        out.unwrap_or_else(|| panic!("no output `{name}`"))
            .path
            .clone()
    }
    pub fn data(&self) -> Vec<Example> {
        dataset::read(&self.file(DATA_FILE)).unwrap()
    }
    pub fn metric(&self, name: &str) -> &serde_json::Value {
        self.outcome
            .metrics
            .get(name)
            .unwrap_or_else(|| panic!("no metric `{name}` in {:?}", self.outcome.metrics))
    }
    /// This run as an upstream instance of a later stage.
    pub fn upstream(&self, instance: &str, bindings: Vec<(String, Value)>) -> Upstream {
        Upstream {
            instance: instance.to_string(),
            bindings,
            files: self
                .outcome
                .outputs
                .iter()
                .map(|o| (o.name.clone(), o.path.clone()))
                .collect(),
            metrics: self.outcome.metrics.clone(),
        }
    }
}

pub fn run(
    stage: &dyn Stage,
    params: &Params,
    inputs: BTreeMap<String, Vec<Upstream>>,
    seed: u64,
    data_dir: Option<&Path>,
) -> Result<Ran, StageError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_dir = dir.path().join("out");
    let work_dir = dir.path().join("work");
    std::fs::create_dir_all(&out_dir).expect("out dir");
    std::fs::create_dir_all(&work_dir).expect("work dir");
    let env = Env {
        data_dir: data_dir.map(Path::to_path_buf),
        cache_dir: dir.path().join("cache"),
        ..Env::default()
    };
    let resources = Resources::default();
    let cancel = CancelToken::default();
    let mut ctx = Context::new(
        "test",
        params,
        &inputs,
        &resources,
        seed,
        &env,
        &out_dir,
        &work_dir,
        2,
        &cancel,
        &NoProgress,
    );
    let outcome = stage.run(&mut ctx)?;
    let log = ctx.take_log();
    Ok(Ran {
        outcome,
        log,
        _dir: dir,
    })
}

/// An upstream instance holding `examples` as its `data.jsonl`.
pub fn data_upstream(dir: &Path, instance: &str, examples: &[Example]) -> Upstream {
    let path = dir.join(format!("{instance}.jsonl"));
    dataset::write(&path, examples).expect("write data");
    Upstream {
        instance: instance.to_string(),
        bindings: Vec::new(),
        files: BTreeMap::from([(DATA_FILE.to_string(), path)]),
        metrics: Default::default(),
    }
}

pub fn inputs(list: Vec<(&str, Upstream)>) -> BTreeMap<String, Vec<Upstream>> {
    let mut map: BTreeMap<String, Vec<Upstream>> = BTreeMap::new();
    for (name, up) in list {
        map.entry(name.to_string()).or_default().push(up);
    }
    map
}

/// A story example with the given id and texts.
pub fn example(id: &str, task: Task, group: Option<&str>, input: &str, target: &str) -> Example {
    Example {
        id: id.to_string(),
        task,
        group: group.map(str::to_string),
        context: None,
        input: input.to_string(),
        target: target.to_string(),
        origin: Origin::Real,
        alt_targets: Vec::new(),
        extra: Default::default(),
    }
}
