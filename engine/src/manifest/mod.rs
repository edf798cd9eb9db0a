//! Manifest files: TOML parsed with spans, checked against the stage kinds'
//! declared parameters before anything runs.
//!
//! ```toml
//! include = ["common/x.toml"]  # stages, resources and profiles shared with other manifests
//! [flow]                       # name, seed, results, description
//! [profile.tiny]               # "stage.param" = value overrides
//! [models.NAME]                # a resource: sections and their fields are declared by
//! [generators.NAME]            #   the binary (`ResourceKind`), e.g. weights, text generators
//! [stages.NAME]                # kind = "...", then the kind's parameters
//! ```
//!
//! Loading is split by job, one module each: `toml_spans` turns TOML into values that
//! remember where they were written; `include` reads the included files and merges them;
//! `flow_section`, `resources` (the declared resource sections), `stages` and `profiles`
//! read the sections; `params` checks a value against its declaration (fan-out lists here,
//! the scalar checks in [`crate::schema`]); `references` checks that names point at
//! something; `graph` builds the stage graph and finds cycles.

mod flow_section;
mod graph;
mod include;
mod params;
mod profiles;
mod references;
mod resources;
mod stages;
pub(crate) mod toml_spans;

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::diag::{Diagnostic, ManifestErrors, SourceFile};
use crate::resource::Resources;
use crate::stage::{Registry, RESERVED_SECTIONS};
use crate::value::Value;

pub use flow_section::check_results_path;
pub use graph::{stage_graph, upstream_names};

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
    /// `seed = 3` is one seed; `seed = [1, 2, 3]` fans the stage out on an axis `seed`.
    pub seeds: Option<Vec<u64>>,
    pub params: BTreeMap<String, Located>,
}

/// A named entry of a resource section (`[models.NAME]`, `[generators.NAME]`: whatever the
/// registry declares).
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
    /// The files read through `include` (spans past `source` point into them).
    pub included: Vec<SourceFile>,
    pub name: String,
    pub seed: u64,
    pub results: String,
    pub description: Option<String>,
    /// `[flow] max_instances`: planning refuses a manifest that fans out to more.
    pub max_instances: usize,
    /// `[flow] replicates`: seeds given to every stage whose kind is replicable (training)
    /// and that sets no seed list of its own; 1 = no seed axis.
    pub replicates: u64,
    pub profiles: BTreeMap<String, Vec<Override>>,
    /// Resource entries by section, then name: `[SECTION.NAME]` for every section the
    /// registry declares ([`crate::resource::ResourceKind`]).
    pub resources: BTreeMap<String, BTreeMap<String, Resource>>,
    /// In the order written; included stages first, in include order.
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

/// The default of `[flow] max_instances`: far above any figure of the paper (hundreds of
/// instances), far below what exhausts memory while planning.
pub const DEFAULT_MAX_INSTANCES: usize = 100_000;

impl Manifest {
    pub fn load(path: &Path, registry: &Registry) -> Result<Manifest, LoadError> {
        let source = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, source, registry)
    }

    /// Loads a manifest from its text; files it includes are read relative to `path`.
    pub fn parse(path: &Path, source: String, registry: &Registry) -> Result<Manifest, LoadError> {
        let mut loader = Loader::new(registry, path);
        let manifest = loader.manifest(&source);
        let Loader {
            mut diags,
            included,
            ..
        } = loader;
        match manifest {
            Some(mut m) if diags.is_empty() => {
                m.source = source;
                m.included = included;
                Ok(m)
            }
            _ => {
                diags.sort_by_key(|d| d.span.start);
                Err(LoadError::Invalid(Box::new(ManifestErrors {
                    path: path.to_path_buf(),
                    source,
                    included,
                    diagnostics: diags,
                })))
            }
        }
    }

    /// The entries of the resource section `section` (none if the manifest has none).
    pub fn resource_entries(&self, section: &str) -> &BTreeMap<String, Resource> {
        static NONE: BTreeMap<String, Resource> = BTreeMap::new();
        self.resources.get(section).unwrap_or(&NONE)
    }

    /// The resources as stages see them: each entry's values, without where they were
    /// written.
    pub fn resource_values(&self) -> Resources {
        let mut out = Resources::default();
        for (section, entries) in &self.resources {
            for (name, r) in entries {
                let fields = r
                    .fields
                    .iter()
                    .map(|(k, v)| (k.clone(), v.value.clone()))
                    .collect();
                out.insert(section.clone(), name.clone(), fields);
            }
        }
        out
    }

    pub fn stage(&self, name: &str) -> Option<&StageDecl> {
        self.stages.iter().find(|s| s.name == name)
    }

    /// Wraps diagnostics found after loading (during planning) for display.
    pub fn errors(&self, diagnostics: Vec<Diagnostic>) -> ManifestErrors {
        ManifestErrors {
            path: self.path.clone(),
            source: self.source.clone(),
            included: self.included.clone(),
            diagnostics,
        }
    }

    /// `path:line:col` of a span offset, in whichever file it points into.
    pub fn location(&self, offset: usize) -> String {
        crate::diag::location(&self.path, &self.source, &self.included, offset)
    }
}

/// Reads a manifest and the files it includes into one [`Manifest`], collecting every
/// problem as a [`Diagnostic`]. Its jobs live in the sibling modules, one `impl` each.
pub(crate) struct Loader<'r> {
    registry: &'r Registry,
    diags: Vec<Diagnostic>,
    /// The manifest's path and text (file 0 of the span space).
    path: PathBuf,
    source: String,
    /// Files read through `include`, in the order read.
    included: Vec<SourceFile>,
    /// Where the file being read starts in the span space (0: the manifest itself).
    base: usize,
    /// Whether the file being read is an included one.
    in_include: bool,
    /// `include` bookkeeping: files read, the chain being read (cycles).
    files: include::Files,
    /// Profile lines from every file, checked once every stage is known.
    raw_profiles: Vec<profiles::RawProfile>,
}

/// What one file held, for checks that need every file.
#[derive(Default)]
struct Seen {
    flow: bool,
    stages: bool,
}

impl<'r> Loader<'r> {
    fn new(registry: &'r Registry, path: &Path) -> Self {
        Loader {
            registry,
            diags: Vec::new(),
            path: path.to_path_buf(),
            source: String::new(),
            included: Vec::new(),
            base: 0,
            in_include: false,
            files: include::Files::new(path),
            raw_profiles: Vec::new(),
        }
    }

    fn err(&mut self, d: Diagnostic) {
        self.diags.push(d);
    }

    /// A span of the file being read, moved into the manifest's span space.
    fn at(&self, span: Range<usize>) -> Range<usize> {
        span.start + self.base..span.end + self.base
    }

    /// `path:line:col` of an offset of the span space (for messages naming two places).
    fn location(&self, offset: usize) -> String {
        crate::diag::location(&self.path, &self.source, &self.included, offset)
    }

    fn manifest(&mut self, source: &str) -> Option<Manifest> {
        let mut m = Manifest {
            path: self.path.clone(),
            source: String::new(),
            included: Vec::new(),
            name: String::new(),
            seed: 0,
            results: String::new(),
            description: None,
            max_instances: DEFAULT_MAX_INSTANCES,
            replicates: 1,
            profiles: BTreeMap::new(),
            resources: BTreeMap::new(),
            stages: Vec::new(),
        };
        self.source = source.to_string();
        let mut seen = Seen::default();
        if !self.file(&mut m, source, &mut seen) {
            return None; // the manifest itself is not TOML
        }
        if !seen.flow {
            self.err(
                Diagnostic::new("flow", 0..0, "missing `[flow]` section")
                    .with_help("add `[flow]` with at least `name = \"...\"`"),
            );
        }
        if !seen.stages {
            self.err(
                Diagnostic::new(
                    "stages",
                    0..0,
                    "no stages: the manifest has no `[stages.*]`",
                )
                .with_help("add a stage, e.g. `[stages.real]` with `kind = \"source\"`"),
            );
        }
        self.profiles(&mut m);
        self.check_references(&m);
        self.check_cycles(&m);
        if m.results.is_empty() {
            m.results = format!("results/{}", m.name);
        }
        Some(m)
    }

    /// The top-level keys of a manifest file: its own sections and the declared resource
    /// sections.
    fn top_keys(&self) -> Vec<&'r str> {
        let registry = self.registry;
        RESERVED_SECTIONS
            .iter()
            .copied()
            .chain(registry.resource_kinds().map(|k| k.section))
            .collect()
    }

    /// Reads one file (the manifest or an included one, at `self.base`): first what it
    /// includes, then its own sections. False when it is not TOML.
    fn file(&mut self, m: &mut Manifest, text: &str, seen: &mut Seen) -> bool {
        let doc = match toml::de::DeTable::parse(text) {
            Ok(doc) => doc,
            Err(err) => {
                let span = self.at(err.span().unwrap_or(0..0));
                self.err(Diagnostic::new(
                    "(syntax)",
                    span,
                    format!("invalid TOML: {}", err.message().trim()),
                ));
                return false;
            }
        };
        let mut entries: Vec<_> = doc.into_inner().into_iter().collect();
        if let Some(pos) = entries.iter().position(|(k, _)| k.get_ref() == "include") {
            let (_, value) = entries.remove(pos);
            self.includes(m, value, seen);
        }
        let mut stages_raw = None;
        for (key, value) in entries {
            let span = self.at(key.span());
            match key.get_ref().as_ref() {
                "flow" if self.in_include => self.err(
                    Diagnostic::new(
                        "flow",
                        span,
                        "`[flow]` belongs to the manifest, not to a file it includes",
                    )
                    .with_help("move it to the manifest that includes this file"),
                ),
                "flow" => {
                    seen.flow = true;
                    if let Some(t) = self.table("flow", value) {
                        self.flow_section(m, t);
                    }
                }
                "profile" => {
                    if let Some(t) = self.table("profile", value) {
                        self.collect_profiles(t);
                    }
                }
                "stages" => {
                    stages_raw = self.table("stages", value);
                    seen.stages |= stages_raw.is_some();
                }
                other if self.registry.resource_kind(other).is_some() => {
                    self.resources(m, other, value)
                }
                other => {
                    let sections = self.top_keys();
                    let d = Diagnostic::new(other, span, format!("unknown section `{other}`"));
                    self.err(d.suggest_or(other, sections.iter().copied(), || {
                        format!("sections are {}", crate::schema::quote_list(&sections))
                    }));
                }
            }
        }
        if let Some(t) = stages_raw {
            self.stages(m, t);
        }
        true
    }
}

/// Letters, digits, `-` and `_`: names of stages, resources and the manifest.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::testkit;

    /// The rendered errors of `text` (with a stage added when it has none).
    pub(crate) fn errors(text: &str) -> String {
        let mut text = text.to_string();
        if !text.contains("[stages.") {
            text.push_str("[stages.s]\nkind = \"src\"\n");
        }
        errors_at(Path::new("t.toml"), &text)
    }

    /// The rendered errors of the manifest `text` read as `path`; empty when it loads.
    pub(crate) fn errors_at(path: &Path, text: &str) -> String {
        match Manifest::parse(path, text.to_string(), &testkit::registry()) {
            Ok(_) => String::new(),
            Err(LoadError::Invalid(e)) => e.render(),
            Err(e) => e.to_string(),
        }
    }

    pub(crate) fn load(text: &str) -> Manifest {
        Manifest::parse(Path::new("t.toml"), text.to_string(), &testkit::registry())
            .unwrap_or_else(|e| panic!("{e}"))
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

    #[test]
    fn sections_are_checked_and_required() {
        let cases: &[(&str, &str)] = &[
            (
                "[flow]\nname = \"t\"\n[stagez.s]\n",
                "did you mean `stages`?",
            ),
            ("[stages.s]\nkind = \"src\"\n", "missing `[flow]` section"),
            ("[flow]\nname = \"t\"\n", "no stages"),
            (
                "stages = 3\n[flow]\nname = \"t\"\n",
                "`stages` must be a table",
            ),
            ("[flow\n", "invalid TOML"),
        ];
        for (text, expected) in cases {
            let err = errors_at(Path::new("t.toml"), text);
            assert!(err.contains(expected), "{text:?}: {err}");
        }
    }

    #[test]
    fn stages_keep_the_order_they_are_written_in() {
        let m = load(
            "[flow]\nname = \"t\"\n[stages.b]\nkind = \"src\"\n[stages.a]\nkind = \"src\"\n\
             [stages.c]\nkind = \"table\"\nfrom = \"a\"\n",
        );
        let names: Vec<&str> = m.stages.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["b", "a", "c"]);
    }
}
