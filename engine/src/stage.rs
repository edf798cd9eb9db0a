//! The API between the engine and stage kinds.
//!
//! A stage kind declares its parameters and turns resolved parameters plus
//! upstream files into output files and metrics. It knows nothing about the
//! DAG, fan-out or the cache: the engine hands it paths and collects paths.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::resource::ResourceKind;
pub use crate::resource::Resources;
use crate::schema::ParamSpec;
use crate::value::Value;

/// Errors a stage reports. The message is shown to the user as is.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The input data or parameters cannot produce a result (too few
    /// examples, a missing file): the user must change something.
    #[error("{0}")]
    Invalid(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cancelled")]
    Cancelled,
    #[error("{0}")]
    Other(String),
}

impl StageError {
    pub fn invalid(msg: impl Into<String>) -> Self {
        StageError::Invalid(msg.into())
    }
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        StageError::Io {
            context: context.into(),
            source,
        }
    }
}

/// How much of the machine a stage instance occupies while it runs, so the
/// scheduler does not oversubscribe the cores under `-j N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Threads {
    /// Light work (I/O, small transforms): one slot.
    One,
    /// Needs this many cores.
    Exactly(usize),
    /// CPU-heavy (training, generation, large scoring): every slot.
    All,
}

/// Resolved parameters of one stage instance: every declared parameter is
/// present (given, from a profile, from the fan-out, or its default) unless it
/// is optional and unset.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Params {
    values: BTreeMap<String, Value>,
}

impl Params {
    pub fn new(values: BTreeMap<String, Value>) -> Self {
        Params { values }
    }
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.values.get(name)
    }
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Value)> {
        self.values.iter()
    }
    pub fn str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(Value::as_str)
    }
    pub fn int(&self, name: &str) -> Option<i64> {
        self.get(name).and_then(Value::as_i64)
    }
    pub fn float(&self, name: &str) -> Option<f64> {
        self.get(name).and_then(Value::as_f64)
    }
    pub fn bool(&self, name: &str) -> Option<bool> {
        self.get(name).and_then(Value::as_bool)
    }
    /// The value of a parameter the schema guarantees (required or defaulted).
    pub fn require_str(&self, name: &str) -> Result<&str, StageError> {
        self.str(name)
            .ok_or_else(|| StageError::Other(format!("internal: parameter `{name}` missing")))
    }
    pub fn require_int(&self, name: &str) -> Result<i64, StageError> {
        self.int(name)
            .ok_or_else(|| StageError::Other(format!("internal: parameter `{name}` missing")))
    }
    pub fn require_float(&self, name: &str) -> Result<f64, StageError> {
        self.float(name)
            .ok_or_else(|| StageError::Other(format!("internal: parameter `{name}` missing")))
    }
    pub fn insert(&mut self, name: impl Into<String>, value: Value) {
        self.values.insert(name.into(), value);
    }
}

/// One finished upstream instance as a stage sees it.
#[derive(Clone, Debug)]
pub struct Upstream {
    /// Instance name, e.g. `mix@ratio=0.4`.
    pub instance: String,
    /// The fan-out values that identify this instance, e.g. `[("ratio", 0.4)]`.
    pub bindings: Vec<(String, Value)>,
    /// Output files by name, read-only paths inside the cache.
    pub files: BTreeMap<String, PathBuf>,
    /// The metrics the upstream stage reported.
    pub metrics: serde_json::Map<String, serde_json::Value>,
}

impl Upstream {
    pub fn file(&self, name: &str) -> Result<&Path, StageError> {
        self.files.get(name).map(PathBuf::as_path).ok_or_else(|| {
            StageError::invalid(format!(
                "input `{}` has no output `{name}` (it has: {})",
                self.instance,
                self.files.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })
    }
}

/// Where things live on this machine. Nothing here enters a content key.
#[derive(Clone, Debug, Default)]
pub struct Env {
    /// Local mirror of datasets (`--data-dir`, `FLOW_DATA_DIR`).
    pub data_dir: Option<PathBuf>,
    /// Local models folder (`FLOW_MODELS_DIR`).
    pub models_dir: Option<PathBuf>,
    /// The folder of the manifest, for relative paths in it.
    pub manifest_dir: PathBuf,
    /// The cache root, for stages that keep downloads or journals there.
    pub cache_dir: PathBuf,
}

impl Env {
    /// The folder of a cache area (journals, downloads): see [`flow_cache::Area`]. Not
    /// created here; the stage creates what it writes.
    pub fn area(&self, area: flow_cache::Area) -> PathBuf {
        self.cache_dir.join(area.dir_name())
    }
}

/// Cooperative cancellation (Ctrl-C): long stages poll it between items.
#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
    pub fn check(&self) -> Result<(), StageError> {
        if self.is_cancelled() {
            Err(StageError::Cancelled)
        } else {
            Ok(())
        }
    }
}

/// Progress sink; the engine draws bars from it.
pub trait Progress: Send + Sync {
    fn set_total(&self, total: u64, unit: &str);
    fn advance(&self, n: u64);
    fn message(&self, msg: &str);
}

/// A progress sink that ignores everything (tests, quiet runs).
pub struct NoProgress;

impl Progress for NoProgress {
    fn set_total(&self, _: u64, _: &str) {}
    fn advance(&self, _: u64) {}
    fn message(&self, _: &str) {}
}

/// Everything a stage instance may read while it runs.
pub struct Context<'a> {
    pub instance: &'a str,
    pub params: &'a Params,
    /// Upstream instances by parameter name. An `Input` parameter has exactly
    /// one entry; a `Gather` parameter has one per gathered instance.
    pub inputs: &'a BTreeMap<String, Vec<Upstream>>,
    pub resources: &'a Resources,
    /// The manifest seed (or the stage's own `seed`): every random choice
    /// derives from it and the parameters, so a key always means one result.
    pub seed: u64,
    pub env: &'a Env,
    /// An empty folder for this run's output files.
    pub out_dir: &'a Path,
    /// A folder that survives a crash of this instance (same key), for
    /// checkpoints and journals; removed once the instance succeeds.
    pub work_dir: &'a Path,
    /// Cores this instance may use.
    pub threads: usize,
    pub cancel: &'a CancelToken,
    pub progress: &'a dyn Progress,
    log: Vec<String>,
}

impl<'a> Context<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        instance: &'a str,
        params: &'a Params,
        inputs: &'a BTreeMap<String, Vec<Upstream>>,
        resources: &'a Resources,
        seed: u64,
        env: &'a Env,
        out_dir: &'a Path,
        work_dir: &'a Path,
        threads: usize,
        cancel: &'a CancelToken,
        progress: &'a dyn Progress,
    ) -> Self {
        Context {
            instance,
            params,
            inputs,
            resources,
            seed,
            env,
            out_dir,
            work_dir,
            threads,
            cancel,
            progress,
            log: Vec::new(),
        }
    }

    /// The single upstream instance of an `Input` parameter.
    pub fn input(&self, name: &str) -> Result<&Upstream, StageError> {
        self.inputs
            .get(name)
            .and_then(|v| v.first())
            .ok_or_else(|| StageError::Other(format!("internal: input `{name}` missing")))
    }

    /// All gathered instances of a `Gather` parameter.
    pub fn gathered(&self, name: &str) -> &[Upstream] {
        self.inputs.get(name).map(Vec::as_slice).unwrap_or(&[])
    }

    /// A line for the stage's log (kept in its record, shown by `flow show`).
    pub fn log(&mut self, line: impl Into<String>) {
        let line = line.into();
        tracing::info!(instance = self.instance, "{line}");
        self.log.push(line);
    }

    pub fn take_log(&mut self) -> Vec<String> {
        std::mem::take(&mut self.log)
    }

    /// Path for an output file named `name` inside the output folder.
    pub fn out_path(&self, name: &str) -> PathBuf {
        self.out_dir.join(name)
    }
}

/// One output file of a finished stage instance.
#[derive(Clone, Debug)]
pub struct OutputFile {
    /// The name downstream stages ask for, e.g. `data.jsonl`.
    pub name: String,
    /// Where the stage wrote it (inside `out_dir`).
    pub path: PathBuf,
    /// Copied into the manifest's results folder (figures, tables).
    pub publish: bool,
}

/// What a stage instance produced.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub outputs: Vec<OutputFile>,
    pub metrics: serde_json::Map<String, serde_json::Value>,
}

impl Outcome {
    pub fn output(mut self, name: &str, path: PathBuf) -> Self {
        self.outputs.push(OutputFile {
            name: name.to_string(),
            path,
            publish: false,
        });
        self
    }
    pub fn published(mut self, name: &str, path: PathBuf) -> Self {
        self.outputs.push(OutputFile {
            name: name.to_string(),
            path,
            publish: true,
        });
        self
    }
    pub fn metric(mut self, name: &str, value: impl Into<serde_json::Value>) -> Self {
        self.metrics.insert(name.to_string(), value.into());
        self
    }
}

/// A problem with one parameter found by a stage's own cross-checks.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamProblem {
    pub param: String,
    pub message: String,
}

impl ParamProblem {
    pub fn new(param: impl Into<String>, message: impl Into<String>) -> Self {
        ParamProblem {
            param: param.into(),
            message: message.into(),
        }
    }
}

/// A stage kind. One value of it serves every instance of that kind.
pub trait Stage: Send + Sync {
    /// The `kind = "..."` name.
    fn kind(&self) -> &'static str;
    /// Bump when a change to the implementation changes results: every
    /// cached result of this kind becomes stale ("implementation changed").
    fn version(&self) -> u32;
    /// Whether `[flow] replicates = N` gives this kind N seeds (training: its randomness
    /// is what replicates measure). A stage's own `seed = [..]` fans out any kind.
    fn replicable(&self) -> bool {
        false
    }
    /// One line for `flow` help and errors.
    fn about(&self) -> &'static str;
    /// The declared parameters; validation runs against these.
    fn params(&self) -> Vec<ParamSpec>;
    /// Checks across parameters of one instance (after types and bounds).
    fn check(&self, _params: &Params) -> Vec<ParamProblem> {
        Vec::new()
    }
    /// Content hashes of external inputs (data files, weights) that must enter
    /// the key, as (label, hash) pairs. Called during planning, so it must be
    /// cheap or memoized: use [`FileHasher`].
    fn fingerprint(
        &self,
        _params: &Params,
        _env: &Env,
        _hasher: &dyn FileHasher,
    ) -> Result<Vec<(String, String)>, StageError> {
        Ok(Vec::new())
    }
    /// Cores one instance keeps busy; `resources` are the manifest's resources (an HTTP
    /// generator needs no local cores).
    fn threads(&self, _params: &Params, _resources: &Resources) -> Threads {
        Threads::One
    }
    fn run(&self, ctx: &mut Context<'_>) -> Result<Outcome, StageError>;
}

/// Hashes files for fingerprints, remembering results by path, size and
/// modification time so planning stays fast.
pub trait FileHasher: Send + Sync {
    fn hash_file(&self, path: &Path) -> Result<String, StageError>;
}

/// The stage kinds and resource kinds a binary knows about.
#[derive(Default)]
pub struct Registry {
    kinds: BTreeMap<&'static str, Arc<dyn Stage>>,
    /// The declared resource sections, in the order declared.
    resources: Vec<ResourceKind>,
}

/// Top-level keys of a manifest that are not resource sections.
pub(crate) const RESERVED_SECTIONS: &[&str] = &["include", "flow", "profile", "stages"];

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn register(&mut self, stage: impl Stage + 'static) {
        self.kinds.insert(stage.kind(), Arc::new(stage));
    }
    pub fn get(&self, kind: &str) -> Option<&Arc<dyn Stage>> {
        self.kinds.get(kind)
    }
    pub fn kinds(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.kinds.keys().copied()
    }
    /// Declares a kind of resource: the manifest then accepts `[SECTION.NAME]` entries of
    /// its fields, and parameters of type `ParamType::Resource(SECTION)` may name them.
    /// Declaring a section again replaces it.
    ///
    /// # Panics
    /// When the section is one of the manifest's own (`flow`, `stages`, ...).
    pub fn register_resource(&mut self, kind: ResourceKind) {
        assert!(
            !RESERVED_SECTIONS.contains(&kind.section),
            "`{}` is a section of the manifest itself, not a resource",
            kind.section
        );
        match self
            .resources
            .iter_mut()
            .find(|k| k.section == kind.section)
        {
            Some(old) => *old = kind,
            None => self.resources.push(kind),
        }
    }
    /// The declaration of a resource section, if there is one.
    pub fn resource_kind(&self, section: &str) -> Option<&ResourceKind> {
        self.resources.iter().find(|k| k.section == section)
    }
    /// Every declared resource kind, in the order declared.
    pub fn resource_kinds(&self) -> impl Iterator<Item = &ResourceKind> + '_ {
        self.resources.iter()
    }
}
