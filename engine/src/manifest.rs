//! Manifest files: TOML parsed with spans, checked against the stage kinds'
//! declared parameters before anything runs.
//!
//! ```toml
//! [flow]                       # name, seed, results, description
//! [profile.tiny]               # "stage.param" = value overrides
//! [models.NAME]                # where weights come from
//! [generators.NAME]            # how text is generated
//! [stages.NAME]                # kind = "...", then the kind's parameters
//! ```

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use petgraph::algo::tarjan_scc;
use petgraph::graph::DiGraph;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::diag::{Diagnostic, ManifestErrors};
use crate::schema::{quote_list, ParamSpec, ParamType};
use crate::stage::Registry;
use crate::value::Value;

/// A value from the manifest with where it was written.
#[derive(Clone, Debug, PartialEq)]
pub struct Located {
    pub value: Value,
    pub span: Range<usize>,
    /// Spans of the items when the value is an array (for per-item errors).
    pub item_spans: Vec<Range<usize>>,
}

#[derive(Clone, Debug)]
pub struct StageDecl {
    pub name: String,
    pub span: Range<usize>,
    pub kind: String,
    pub seed: Option<u64>,
    pub params: BTreeMap<String, Located>,
}

/// A named `[models.*]` or `[generators.*]` entry.
#[derive(Clone, Debug)]
pub struct Resource {
    pub name: String,
    pub span: Range<usize>,
    pub fields: BTreeMap<String, Located>,
}

/// One `"stage.param" = value` line of a profile.
#[derive(Clone, Debug)]
pub struct Override {
    /// `flow` for manifest-level settings, else a stage name.
    pub stage: String,
    pub param: String,
    /// Path inside a table-valued parameter (`train.lora.rank` -> `["rank"]`).
    pub field: Vec<String>,
    pub value: Located,
    pub key: String,
}

#[derive(Clone, Debug)]
pub struct Manifest {
    pub path: PathBuf,
    pub source: String,
    pub name: String,
    pub seed: u64,
    pub results: String,
    pub description: Option<String>,
    /// `[flow] max_instances`: planning refuses a manifest that fans out to more.
    pub max_instances: usize,
    pub profiles: BTreeMap<String, Vec<Override>>,
    pub models: BTreeMap<String, Resource>,
    pub generators: BTreeMap<String, Resource>,
    /// In the order written.
    pub stages: Vec<StageDecl>,
}

/// Why a manifest could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read manifest {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(Box<ManifestErrors>),
}

const TOP_KEYS: &[&str] = &["flow", "profile", "models", "generators", "stages"];
const FLOW_KEYS: &[&str] = &["name", "seed", "results", "description", "max_instances"];

/// The default of `[flow] max_instances`: far above any figure of the paper (hundreds of
/// instances), far below what exhausts memory while planning.
pub const DEFAULT_MAX_INSTANCES: usize = 100_000;

/// Why a `results` folder is refused: it must stay inside the project folder (an absolute
/// folder is given on the command line, `--results-dir`, where the user asks for it).
pub fn check_results_path(s: &str) -> Option<String> {
    let path = Path::new(s);
    if path.is_absolute() || s.starts_with('/') || s.starts_with('\\') {
        return Some(format!(
            "`{s}` is an absolute path; results stay inside the project folder \
             (use `--results-dir` / FLOW_RESULTS_DIR to publish elsewhere)"
        ));
    }
    if path.components().any(|c| {
        matches!(
            c,
            std::path::Component::ParentDir | std::path::Component::Prefix(_)
        )
    }) || s.split(['/', '\\']).any(|part| part == "..")
    {
        return Some(format!(
            "`{s}` leaves the project folder (`..`); results stay inside it \
             (use `--results-dir` / FLOW_RESULTS_DIR to publish elsewhere)"
        ));
    }
    None
}
/// Keys every stage accepts besides its kind's parameters.
const STAGE_COMMON: &[&str] = &["kind", "seed"];

impl Manifest {
    pub fn load(path: &Path, registry: &Registry) -> Result<Manifest, LoadError> {
        let source = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, source, registry)
    }

    pub fn parse(path: &Path, source: String, registry: &Registry) -> Result<Manifest, LoadError> {
        let mut diags = Vec::new();
        let manifest = {
            let parsed = DeTable::parse(&source);
            match parsed {
                Ok(table) => Some(Loader::new(registry, &mut diags).manifest(path, table)),
                Err(err) => {
                    let span = err.span().unwrap_or(0..0);
                    diags.push(Diagnostic::new(
                        "(syntax)",
                        span,
                        format!("invalid TOML: {}", err.message().trim()),
                    ));
                    None
                }
            }
        };
        match manifest {
            Some(mut m) if diags.is_empty() => {
                m.source = source;
                Ok(m)
            }
            _ => {
                diags.sort_by_key(|d| d.span.start);
                Err(LoadError::Invalid(Box::new(ManifestErrors {
                    path: path.to_path_buf(),
                    source,
                    diagnostics: diags,
                })))
            }
        }
    }

    pub fn stage(&self, name: &str) -> Option<&StageDecl> {
        self.stages.iter().find(|s| s.name == name)
    }

    /// Wraps diagnostics found after loading (during planning) for display.
    pub fn errors(&self, diagnostics: Vec<Diagnostic>) -> ManifestErrors {
        ManifestErrors {
            path: self.path.clone(),
            source: self.source.clone(),
            diagnostics,
        }
    }
}

type Entry<'i> = (Spanned<std::borrow::Cow<'i, str>>, Spanned<DeValue<'i>>);

struct Loader<'r, 'd> {
    registry: &'r Registry,
    diags: &'d mut Vec<Diagnostic>,
}

impl<'r, 'd> Loader<'r, 'd> {
    fn new(registry: &'r Registry, diags: &'d mut Vec<Diagnostic>) -> Self {
        Loader { registry, diags }
    }

    fn err(&mut self, d: Diagnostic) {
        self.diags.push(d);
    }

    fn manifest(&mut self, path: &Path, doc: Spanned<DeTable<'_>>) -> Manifest {
        let mut m = Manifest {
            path: path.to_path_buf(),
            source: String::new(),
            name: String::new(),
            seed: 0,
            results: String::new(),
            description: None,
            max_instances: DEFAULT_MAX_INSTANCES,
            profiles: BTreeMap::new(),
            models: BTreeMap::new(),
            generators: BTreeMap::new(),
            stages: Vec::new(),
        };
        let doc = doc.into_inner();
        let mut flow_seen = false;
        let mut stages_raw = None;
        let mut profiles_raw = None;
        for (key, value) in doc {
            let span = key.span();
            match key.get_ref().as_ref() {
                "flow" => {
                    flow_seen = true;
                    if let Some(t) = self.table("flow", value) {
                        self.flow_section(&mut m, t);
                    }
                }
                "profile" => profiles_raw = self.table("profile", value),
                "models" => m.models = self.resources("models", value),
                "generators" => m.generators = self.resources("generators", value),
                "stages" => stages_raw = self.table("stages", value),
                other => {
                    let d = Diagnostic::new(other, span, format!("unknown section `{other}`"));
                    self.err(d.suggest_or(other, TOP_KEYS.iter().copied(), || {
                        format!("sections are {}", quote_list(TOP_KEYS))
                    }));
                }
            }
        }
        if !flow_seen {
            self.err(
                Diagnostic::new("flow", 0..0, "missing `[flow]` section")
                    .with_help("add `[flow]` with at least `name = \"...\"`"),
            );
        }
        match stages_raw {
            Some(t) => self.stages(&mut m, t),
            None => self.err(
                Diagnostic::new(
                    "stages",
                    0..0,
                    "no stages: the manifest has no `[stages.*]`",
                )
                .with_help("add a stage, e.g. `[stages.real]` with `kind = \"source\"`"),
            ),
        }
        if let Some(t) = profiles_raw {
            self.profiles(&mut m, t);
        }
        self.check_references(&m);
        self.check_cycles(&m);
        if m.results.is_empty() {
            m.results = format!("results/{}", m.name);
        }
        m
    }

    /// Expects a table; reports otherwise.
    fn table<'i>(&mut self, key: &str, value: Spanned<DeValue<'i>>) -> Option<Vec<Entry<'i>>> {
        let span = value.span();
        match value.into_inner() {
            DeValue::Table(t) => Some(t.into_iter().collect()),
            other => {
                self.err(Diagnostic::new(
                    key,
                    span,
                    format!("`{key}` must be a table, found {}", de_type(&other)),
                ));
                None
            }
        }
    }

    fn flow_section(&mut self, m: &mut Manifest, entries: Vec<Entry<'_>>) {
        let mut name_seen = false;
        for (key, value) in entries {
            let k = key.get_ref().to_string();
            let path = format!("flow.{k}");
            let Some(v) = self.value(&path, value) else {
                continue;
            };
            match k.as_str() {
                "name" => match &v.value {
                    Value::Str(s) if valid_name(s) => {
                        name_seen = true;
                        m.name = s.clone();
                    }
                    Value::Str(s) => self.err(Diagnostic::new(
                        &path,
                        v.span,
                        format!("invalid name `{s}`: use letters, digits, `-` and `_`"),
                    )),
                    other => self.err(type_error(&path, v.span.clone(), "a string", other)),
                },
                "seed" => {
                    if let Some(seed) = self.seed(&path, &v) {
                        m.seed = seed;
                    }
                }
                "results" => match &v.value {
                    Value::Str(s) if !s.trim().is_empty() => match check_results_path(s) {
                        None => m.results = s.clone(),
                        Some(problem) => self.err(Diagnostic::new(&path, v.span.clone(), problem)),
                    },
                    other => self.err(type_error(&path, v.span.clone(), "a folder path", other)),
                },
                "max_instances" => match &v.value {
                    Value::Int(n) if *n >= 1 => m.max_instances = *n as usize,
                    other => self.err(type_error(
                        &path,
                        v.span.clone(),
                        "a positive integer",
                        other,
                    )),
                },
                "description" => match &v.value {
                    Value::Str(s) => m.description = Some(s.clone()),
                    other => self.err(type_error(&path, v.span.clone(), "a string", other)),
                },
                _ => self.err(
                    Diagnostic::new(&path, key.span(), format!("unknown key `{k}` in `[flow]`"))
                        .suggest(&k, FLOW_KEYS.iter().copied()),
                ),
            }
        }
        if !name_seen && !self.diags.iter().any(|d| d.key == "flow.name") {
            self.err(
                Diagnostic::new("flow.name", 0..0, "`[flow]` needs `name`")
                    .with_help("add `name = \"my-experiment\"` under `[flow]`"),
            );
        }
    }

    fn seed(&mut self, path: &str, v: &Located) -> Option<u64> {
        match v.value {
            Value::Int(i) if i >= 0 => Some(i as u64),
            Value::Int(i) => {
                self.err(Diagnostic::new(
                    path,
                    v.span.clone(),
                    format!("seed must be a non-negative integer, found {i}"),
                ));
                None
            }
            ref other => {
                self.err(type_error(path, v.span.clone(), "an integer", other));
                None
            }
        }
    }

    fn resources(
        &mut self,
        section: &str,
        value: Spanned<DeValue<'_>>,
    ) -> BTreeMap<String, Resource> {
        let mut out = BTreeMap::new();
        let Some(entries) = self.table(section, value) else {
            return out;
        };
        let specs = self.registry.resource_params(section);
        for (key, value) in entries {
            let name = key.get_ref().to_string();
            let path = format!("{section}.{name}");
            if !valid_name(&name) {
                self.err(Diagnostic::new(
                    &path,
                    key.span(),
                    format!("invalid name `{name}`: use letters, digits, `-` and `_`"),
                ));
                continue;
            }
            let Some(fields) = self.table(&path, value) else {
                continue;
            };
            let mut resource = Resource {
                name: name.clone(),
                span: key.span(),
                fields: BTreeMap::new(),
            };
            for (fkey, fvalue) in fields {
                let fname = fkey.get_ref().to_string();
                let fpath = format!("{path}.{fname}");
                let Some(v) = self.value(&fpath, fvalue) else {
                    continue;
                };
                match specs.iter().find(|s| s.name == fname) {
                    Some(spec) => {
                        let v = self.check_param(&fpath, spec, v, false);
                        resource.fields.insert(fname, v);
                    }
                    None => self.err(
                        Diagnostic::new(
                            &fpath,
                            fkey.span(),
                            format!("unknown key `{fname}` in `[{path}]`"),
                        )
                        .suggest(&fname, specs.iter().map(|s| s.name)),
                    ),
                }
            }
            for spec in specs.iter().filter(|s| s.required) {
                if !resource.fields.contains_key(spec.name) {
                    self.err(Diagnostic::new(
                        &path,
                        resource.span.clone(),
                        format!("`[{path}]` needs `{}` ({})", spec.name, spec.help),
                    ));
                }
            }
            out.insert(name, resource);
        }
        out
    }

    fn stages(&mut self, m: &mut Manifest, entries: Vec<Entry<'_>>) {
        let kinds: Vec<&str> = self.registry.kinds().collect();
        for (key, value) in entries {
            let name = key.get_ref().to_string();
            let path = format!("stages.{name}");
            if !valid_name(&name) {
                self.err(Diagnostic::new(
                    &path,
                    key.span(),
                    format!("invalid stage name `{name}`: use letters, digits, `-` and `_`"),
                ));
                continue;
            }
            let Some(fields) = self.table(&path, value) else {
                continue;
            };
            let mut decl = StageDecl {
                name: name.clone(),
                span: key.span(),
                kind: String::new(),
                seed: None,
                params: BTreeMap::new(),
            };
            let mut raw = Vec::new();
            for (fkey, fvalue) in fields {
                let fname = fkey.get_ref().to_string();
                let fpath = format!("{path}.{fname}");
                if let Some(v) = self.value(&fpath, fvalue) {
                    raw.push((fname, fkey.span(), v));
                }
            }
            // The kind decides which keys are valid, so read it first.
            match raw.iter().find(|(k, _, _)| k == "kind") {
                None => self.err(
                    Diagnostic::new(
                        &path,
                        decl.span.clone(),
                        format!("stage `{name}` has no `kind`"),
                    )
                    .with_help(format!("kinds are {}", quote_list(&kinds))),
                ),
                Some((_, _, v)) => match &v.value {
                    Value::Str(k) if self.registry.get(k).is_some() => decl.kind = k.clone(),
                    Value::Str(k) => {
                        let d = Diagnostic::new(
                            format!("{path}.kind"),
                            v.span.clone(),
                            format!("unknown stage kind `{k}`"),
                        );
                        self.err(d.suggest_or(k, kinds.iter().copied(), || {
                            format!("kinds are {}", quote_list(&kinds))
                        }));
                    }
                    other => self.err(type_error(
                        &format!("{path}.kind"),
                        v.span.clone(),
                        "a string",
                        other,
                    )),
                },
            }
            let specs = match self.registry.get(&decl.kind) {
                Some(stage) => stage.params(),
                None => {
                    m.stages.push(decl);
                    continue;
                }
            };
            for (fname, kspan, v) in raw {
                let fpath = format!("{path}.{fname}");
                match fname.as_str() {
                    "kind" => {}
                    "seed" => decl.seed = self.seed(&fpath, &v),
                    _ => match specs.iter().find(|s| s.name == fname) {
                        Some(spec) => {
                            let v = self.check_param(&fpath, spec, v, true);
                            decl.params.insert(fname, v);
                        }
                        None => {
                            let names = specs
                                .iter()
                                .map(|s| s.name)
                                .chain(STAGE_COMMON.iter().copied());
                            let d = Diagnostic::new(
                                &fpath,
                                kspan,
                                format!(
                                    "unknown parameter `{fname}` for stage kind `{}`",
                                    decl.kind
                                ),
                            );
                            self.err(d.suggest_or(&fname, names, || {
                                format!(
                                    "`{}` takes {}",
                                    decl.kind,
                                    quote_list(&specs.iter().map(|s| s.name).collect::<Vec<_>>())
                                )
                            }));
                        }
                    },
                }
            }
            for spec in specs.iter().filter(|s| s.required && s.default.is_none()) {
                if !decl.params.contains_key(spec.name) {
                    self.err(Diagnostic::new(
                        format!("{path}.{}", spec.name),
                        decl.span.clone(),
                        format!(
                            "stage `{name}` (kind `{}`) needs `{}`: {}",
                            decl.kind, spec.name, spec.help
                        ),
                    ));
                }
            }
            m.stages.push(decl);
        }
    }

    fn profiles(&mut self, m: &mut Manifest, entries: Vec<Entry<'_>>) {
        for (key, value) in entries {
            let profile = key.get_ref().to_string();
            let path = format!("profile.{profile}");
            let Some(fields) = self.table(&path, value) else {
                continue;
            };
            let mut overrides = Vec::new();
            for (fkey, fvalue) in fields {
                let segments: Vec<String> = fkey.get_ref().split('.').map(str::to_string).collect();
                self.flatten_override(m, &path, &segments, fkey.span(), fvalue, &mut overrides);
            }
            m.profiles.insert(profile, overrides);
        }
    }

    /// Unquoted dotted keys (`train.epochs = 1`) arrive as nested tables; quoted
    /// ones (`"train.epochs" = 1`) as one key. Both mean the same override.
    fn flatten_override(
        &mut self,
        m: &Manifest,
        profile_path: &str,
        segments: &[String],
        key_span: Range<usize>,
        value: Spanned<DeValue<'_>>,
        out: &mut Vec<Override>,
    ) {
        if segments.len() < 2 {
            if let DeValue::Table(_) = value.get_ref() {
                let inner = value.into_inner();
                if let DeValue::Table(t) = inner {
                    for (k, v) in t {
                        let mut segs = segments.to_vec();
                        segs.extend(k.get_ref().split('.').map(str::to_string));
                        self.flatten_override(m, profile_path, &segs, k.span(), v, out);
                    }
                }
                return;
            }
        }
        let dotted = segments.join(".");
        let key = format!("{profile_path}.\"{dotted}\"");
        let Some(v) = self.value(&key, value) else {
            return;
        };
        if segments.len() < 2 {
            self.err(
                Diagnostic::new(
                    &key,
                    key_span,
                    format!("profile key `{dotted}` must be `stage.parameter`"),
                )
                .with_help("write e.g. `\"train.epochs\" = 1`"),
            );
            return;
        }
        let stage = segments[0].clone();
        let param = segments[1].clone();
        let field = segments[2..].to_vec();
        if stage == "flow" {
            match param.as_str() {
                "seed" if field.is_empty() => {
                    self.seed(&key, &v);
                }
                "results" | "description" if field.is_empty() => match &v.value {
                    Value::Str(s) if param == "results" => {
                        if let Some(problem) = check_results_path(s) {
                            self.err(Diagnostic::new(&key, v.span.clone(), problem));
                        }
                    }
                    Value::Str(_) => {}
                    other => self.err(type_error(&key, v.span.clone(), "a string", other)),
                },
                _ => {
                    self.err(
                        Diagnostic::new(
                            &key,
                            key_span,
                            format!("`flow.{param}` cannot be overridden by a profile"),
                        )
                        .with_help(
                            "profiles may set `flow.seed`, `flow.results` and `flow.description`",
                        ),
                    );
                    return;
                }
            }
            out.push(Override {
                stage,
                param,
                field,
                value: v,
                key,
            });
            return;
        }
        let Some(decl) = m.stage(&stage) else {
            self.err(
                Diagnostic::new(
                    &key,
                    key_span,
                    format!("profile overrides unknown stage `{stage}`"),
                )
                .suggest(&stage, m.stages.iter().map(|s| s.name.as_str())),
            );
            return;
        };
        let Some(kind) = self.registry.get(&decl.kind) else {
            return; // the unknown kind is already reported
        };
        let specs = kind.params();
        if param == "seed" && field.is_empty() {
            self.seed(&key, &v);
            out.push(Override {
                stage,
                param,
                field,
                value: v,
                key,
            });
            return;
        }
        let Some(spec) = specs.iter().find(|s| s.name == param) else {
            self.err(
                Diagnostic::new(
                    &key,
                    key_span,
                    format!(
                        "stage `{stage}` (kind `{}`) has no parameter `{param}`",
                        decl.kind
                    ),
                )
                .suggest(&param, specs.iter().map(|s| s.name)),
            );
            return;
        };
        let mut spec = spec.clone();
        for f in &field {
            let ParamType::Table(fields) = &spec.ty else {
                self.err(Diagnostic::new(
                    &key,
                    key_span.clone(),
                    format!("`{stage}.{param}` is not a table, so `{dotted}` names nothing"),
                ));
                return;
            };
            match fields.iter().find(|s| s.name == f) {
                Some(inner) => spec = inner.clone(),
                None => {
                    self.err(
                        Diagnostic::new(
                            &key,
                            key_span.clone(),
                            format!("`{stage}.{param}` has no field `{f}`"),
                        )
                        .suggest(f, fields.iter().map(|s| s.name)),
                    );
                    return;
                }
            }
        }
        let v = self.check_param(&key, &spec, v, field.is_empty());
        out.push(Override {
            stage,
            param,
            field,
            value: v,
            key,
        });
    }

    /// Converts a TOML value, rejecting what parameters never hold (datetimes).
    fn value(&mut self, key: &str, value: Spanned<DeValue<'_>>) -> Option<Located> {
        let span = value.span();
        let mut item_spans = Vec::new();
        if let DeValue::Array(items) = value.get_ref() {
            item_spans = items.iter().map(|i| i.span()).collect();
        }
        match convert(value) {
            Ok(v) => Some(Located {
                value: v,
                span,
                item_spans,
            }),
            Err((span, msg)) => {
                self.err(Diagnostic::new(key, span, msg));
                None
            }
        }
    }

    /// Type and bound checks; widens integers where numbers are expected.
    fn check_param(
        &mut self,
        key: &str,
        spec: &ParamSpec,
        mut v: Located,
        may_fan_out: bool,
    ) -> Located {
        if spec.ty.fans_out_on(&v.value) {
            if !may_fan_out {
                self.err(type_error(
                    key,
                    v.span.clone(),
                    &spec.ty.describe(),
                    &v.value,
                ));
                return v;
            }
            let Value::List(items) = &mut v.value else {
                return v;
            };
            if items.is_empty() {
                self.err(Diagnostic::new(
                    key,
                    v.span.clone(),
                    "an empty array fans out to no instances",
                ));
            }
            for (i, item) in items.iter_mut().enumerate() {
                let span = v.item_spans.get(i).cloned().unwrap_or(v.span.clone());
                if let Some(d) = check_scalar(key, spec, item, span) {
                    self.err(d);
                }
            }
            // By canonical encoding: values are not Hash (floats), and a linear scan per
            // item made a 100k-value list take seconds.
            let mut seen = std::collections::HashSet::new();
            for (i, item) in items.iter().enumerate() {
                let mut encoded = Vec::new();
                item.encode_canonical(&mut encoded);
                if !seen.insert(encoded) {
                    let span = v.item_spans.get(i).cloned().unwrap_or(v.span.clone());
                    self.err(Diagnostic::new(
                        key,
                        span,
                        format!("`{item}` appears twice in the fan-out"),
                    ));
                }
            }
            return v;
        }
        let span = v.span.clone();
        if let Some(d) = check_scalar(key, spec, &mut v.value, span) {
            self.err(d);
        }
        v
    }

    /// References to stages and resources must name something that exists.
    fn check_references(&mut self, m: &Manifest) {
        let names: Vec<&str> = m.stages.iter().map(|s| s.name.as_str()).collect();
        for decl in &m.stages {
            let Some(kind) = self.registry.get(&decl.kind) else {
                continue;
            };
            for spec in kind.params() {
                let Some(v) = decl.params.get(spec.name) else {
                    continue;
                };
                let key = format!("stages.{}.{}", decl.name, spec.name);
                let targets: Vec<(String, Range<usize>)> = match (&spec.ty, &v.value) {
                    (ParamType::Input | ParamType::Model | ParamType::Generator, Value::Str(s)) => {
                        vec![(s.clone(), v.span.clone())]
                    }
                    (
                        ParamType::Input
                        | ParamType::Gather
                        | ParamType::Model
                        | ParamType::Generator,
                        Value::List(items),
                    ) => items
                        .iter()
                        .enumerate()
                        .filter_map(|(i, item)| {
                            item.as_str().map(|s| {
                                (
                                    s.to_string(),
                                    v.item_spans.get(i).cloned().unwrap_or(v.span.clone()),
                                )
                            })
                        })
                        .collect(),
                    (ParamType::Gather, Value::Str(s)) => vec![(s.clone(), v.span.clone())],
                    _ => continue,
                };
                for (target, span) in targets {
                    match &spec.ty {
                        ParamType::Input | ParamType::Gather => {
                            if target == decl.name {
                                self.err(Diagnostic::new(
                                    &key,
                                    span,
                                    format!(
                                        "stage `{}` cannot take its own output as `{}`",
                                        decl.name, spec.name
                                    ),
                                ));
                            } else if !names.contains(&target.as_str()) {
                                let d = Diagnostic::new(
                                    &key,
                                    span,
                                    format!("no stage named `{target}`"),
                                );
                                self.err(d.suggest_or(&target, names.iter().copied(), || {
                                    format!("stages are {}", quote_list(&names))
                                }));
                            }
                        }
                        ParamType::Model | ParamType::Generator => {
                            let (section, pool) = if spec.ty == ParamType::Model {
                                ("models", &m.models)
                            } else {
                                ("generators", &m.generators)
                            };
                            if !pool.contains_key(&target) {
                                let d = Diagnostic::new(
                                    &key,
                                    span,
                                    format!("no `[{section}.{target}]` in this manifest"),
                                );
                                let keys = pool.keys().map(String::as_str);
                                self.err(d.suggest_or(&target, keys, || {
                                    format!("add a `[{section}.{target}]` section")
                                }));
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    fn check_cycles(&mut self, m: &Manifest) {
        let graph = stage_graph(m, self.registry);
        for scc in tarjan_scc(&graph) {
            if scc.len() < 2 {
                continue;
            }
            // Walk the cycle in edge order so the message reads as a path.
            // Start at the stage written first so the message is stable.
            let mut members: Vec<_> = scc.clone();
            members.sort_by_key(|n| n.index());
            let mut order = vec![members[0]];
            let mut current = members[0];
            while order.len() < members.len() {
                let Some(next) = graph
                    .neighbors(current)
                    .find(|n| members.contains(n) && !order.contains(n))
                else {
                    break;
                };
                order.push(next);
                current = next;
            }
            let names: Vec<&str> = order.iter().map(|&i| graph[i].as_str()).collect();
            let first = names[0];
            let span = m.stage(first).map(|s| s.span.clone()).unwrap_or(0..0);
            self.err(Diagnostic::new(
                format!("stages.{first}"),
                span,
                format!("stages form a cycle: {} -> {first}", names.join(" -> ")),
            ));
        }
    }
}

/// Stage-level dependency graph (edges point downstream).
pub fn stage_graph(m: &Manifest, registry: &Registry) -> DiGraph<String, ()> {
    let mut graph = DiGraph::new();
    let nodes: BTreeMap<&str, _> = m
        .stages
        .iter()
        .map(|s| (s.name.as_str(), graph.add_node(s.name.clone())))
        .collect();
    for decl in &m.stages {
        for up in upstream_names(decl, registry) {
            if let (Some(&from), Some(&to)) =
                (nodes.get(up.as_str()), nodes.get(decl.name.as_str()))
            {
                graph.update_edge(from, to, ());
            }
        }
    }
    graph
}

/// Names of the stages a declaration reads (Input and Gather parameters).
pub fn upstream_names(decl: &StageDecl, registry: &Registry) -> Vec<String> {
    let Some(kind) = registry.get(&decl.kind) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for spec in kind.params().iter().filter(|s| s.is_reference()) {
        match decl.params.get(spec.name).map(|v| &v.value) {
            Some(Value::Str(s)) => out.push(s.clone()),
            Some(Value::List(items)) => {
                out.extend(items.iter().filter_map(|i| i.as_str().map(str::to_string)))
            }
            _ => {}
        }
    }
    out
}

fn check_scalar(
    key: &str,
    spec: &ParamSpec,
    value: &mut Value,
    span: Range<usize>,
) -> Option<Diagnostic> {
    match (&spec.ty, &*value) {
        (ParamType::Bool, Value::Bool(_)) => None,
        (ParamType::Int, Value::Int(i)) => bound_error(key, spec, *i as f64, span),
        (ParamType::Float, Value::Int(i)) => {
            let x = *i as f64;
            *value = Value::Float(x);
            bound_error(key, spec, x, span)
        }
        (ParamType::Float, Value::Float(x)) => {
            if !x.is_finite() {
                return Some(Diagnostic::new(
                    key,
                    span,
                    format!("`{}` must be finite, found {x}", spec.name),
                ));
            }
            bound_error(key, spec, *x, span)
        }
        (
            ParamType::Str | ParamType::Input | ParamType::Model | ParamType::Generator,
            Value::Str(s),
        ) => {
            if s.is_empty() {
                Some(Diagnostic::new(
                    key,
                    span,
                    format!("`{}` must not be empty", spec.name),
                ))
            } else {
                None
            }
        }
        (ParamType::Choice(options), Value::Str(s)) => {
            if options.contains(&s.as_str()) {
                None
            } else {
                let d = Diagnostic::new(
                    key,
                    span,
                    format!(
                        "`{}` must be one of {}, found `{s}`",
                        spec.name,
                        quote_list(options)
                    ),
                );
                Some(d.suggest(s, options.iter().copied()))
            }
        }
        (ParamType::List(item), Value::List(items)) => {
            let item_spec = ParamSpec {
                ty: (**item).clone(),
                ..spec.clone()
            };
            let mut items = items.clone();
            for it in items.iter_mut() {
                if let Some(d) = check_scalar(key, &item_spec, it, span.clone()) {
                    return Some(d);
                }
            }
            *value = Value::List(items);
            None
        }
        (ParamType::Gather, Value::Str(s)) if !s.is_empty() => None,
        (ParamType::Gather, Value::List(items))
            if !items.is_empty() && items.iter().all(|i| matches!(i, Value::Str(_))) =>
        {
            None
        }
        (ParamType::Table(fields), Value::Table(map)) => {
            let mut map = map.clone();
            for (k, v) in map.iter_mut() {
                let fkey = format!("{key}.{k}");
                match fields.iter().find(|f| f.name == k) {
                    Some(f) => {
                        if f.ty.fans_out_on(v) {
                            return Some(type_error(&fkey, span, &f.ty.describe(), v));
                        }
                        if let Some(d) = check_scalar(&fkey, f, v, span.clone()) {
                            return Some(d);
                        }
                    }
                    None => {
                        return Some(
                            Diagnostic::new(
                                &fkey,
                                span,
                                format!("unknown field `{k}` in `{}`", spec.name),
                            )
                            .suggest(k, fields.iter().map(|f| f.name)),
                        )
                    }
                }
            }
            for f in fields {
                if !map.contains_key(f.name) {
                    if let Some(d) = &f.default {
                        map.insert(f.name.to_string(), d.clone());
                    } else if f.required {
                        return Some(Diagnostic::new(
                            key,
                            span,
                            format!("`{}` needs field `{}` ({})", spec.name, f.name, f.help),
                        ));
                    }
                }
            }
            *value = Value::Table(map);
            None
        }
        (ty, other) => Some(type_error(key, span, &ty.describe(), other)),
    }
}

fn bound_error(key: &str, spec: &ParamSpec, x: f64, span: Range<usize>) -> Option<Diagnostic> {
    spec.check_bounds(x).map(|rule| {
        Diagnostic::new(
            key,
            span,
            format!("`{}` {rule}, found {}", spec.name, trim_num(x)),
        )
    })
}

fn trim_num(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

fn type_error(key: &str, span: Range<usize>, expected: &str, found: &Value) -> Diagnostic {
    let name = key.rsplit('.').next().unwrap_or(key).trim_matches('"');
    Diagnostic::new(
        key,
        span,
        format!(
            "`{name}` must be {expected}, found {} `{found}`",
            found.type_name()
        ),
    )
}

fn de_type(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a datetime",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

fn convert(value: Spanned<DeValue<'_>>) -> Result<Value, (Range<usize>, String)> {
    let span = value.span();
    Ok(match value.into_inner() {
        DeValue::String(s) => Value::Str(s.into_owned()),
        DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) => Value::Int(n),
            Err(_) => return Err((span, format!("integer `{i}` does not fit in 64 bits"))),
        },
        DeValue::Float(f) => match f.as_str().parse::<f64>() {
            Ok(x) if x.is_finite() => Value::Float(x),
            _ => return Err((span, format!("`{f}` is not a finite number"))),
        },
        DeValue::Boolean(b) => Value::Bool(b),
        DeValue::Datetime(d) => {
            return Err((span, format!("datetimes are not supported here (`{d}`)")))
        }
        DeValue::Array(items) => {
            Value::List(items.into_iter().map(convert).collect::<Result<_, _>>()?)
        }
        DeValue::Table(t) => {
            let mut map = BTreeMap::new();
            for (k, v) in t {
                map.insert(k.into_inner().into_owned(), convert(v)?);
            }
            Value::Table(map)
        }
    })
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit;

    /// The rendered errors of `text` (with a stage added when it has none).
    fn errors(text: &str) -> String {
        let mut text = text.to_string();
        if !text.contains("[stages.") {
            text.push_str("[stages.s]\nkind = \"src\"\n");
        }
        match Manifest::parse(Path::new("t.toml"), text, &testkit::registry()) {
            Ok(_) => String::new(),
            Err(LoadError::Invalid(e)) => e.render(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn results_stay_inside_the_project() {
        for bad in ["../../x", "/tmp/x", "a/../../b", "results/.."] {
            let err = errors(&format!("[flow]\nname = \"t\"\nresults = \"{bad}\"\n"));
            assert!(err.contains("flow.results"), "{bad}: {err}");
            assert!(err.contains("--results-dir"), "{bad}: {err}");
            let err = errors(&format!(
                "[flow]\nname = \"t\"\n[stages.s]\nkind = \"src\"\n\
                 [profile.p]\n\"flow.results\" = \"{bad}\"\n"
            ));
            assert!(err.contains("--results-dir"), "profile {bad}: {err}");
        }
        for good in ["results", "out/figs", ".", "a/./b"] {
            let err = errors(&format!("[flow]\nname = \"t\"\nresults = \"{good}\"\n"));
            assert!(err.is_empty(), "{good}: {err}");
        }
    }

    #[test]
    fn numbers_past_their_bounds_are_refused_where_they_are_written() {
        let err =
            errors("[flow]\nname = \"t\"\n[stages.s]\nkind = \"src\"\nn = 9223372036854775807\n");
        assert!(err.contains("stages.s.n"), "{err}");
        assert!(err.contains("4294967295"), "{err}");
        let err = errors("[flow]\nname = \"t\"\nmax_instances = 0\n");
        assert!(err.contains("max_instances"), "{err}");
    }

    /// A 100k-value fan-out is checked for duplicates in linear time (it took seconds).
    #[test]
    fn duplicate_fan_out_values_are_found_in_long_lists() {
        let mut items: Vec<String> = (1..=100_000).map(|i| i.to_string()).collect();
        items.push("77".into());
        let err = errors(&format!(
            "[flow]\nname = \"t\"\nmax_instances = 200000\n[stages.s]\nkind = \"src\"\nn = [{}]\n",
            items.join(", ")
        ));
        assert!(err.contains("`77` appears twice"), "{err}");
    }
}
