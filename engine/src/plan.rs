//! From a validated manifest to the DAG of stage instances.
//!
//! Fan-out works on named axes. An axis is a (stage, parameter) pair that was
//! given a list; each instance carries the axis values that identify it. A
//! stage reading upstream instances joins them on shared axes, so
//! `eval(model = train, data = mix)` pairs `train@ratio=0.4` with
//! `mix@ratio=0.4` instead of forming a product. A gathering parameter takes
//! every upstream instance that agrees with the instance's own axes.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use petgraph::algo::toposort;
use petgraph::graph::{DiGraph, NodeIndex};

use crate::diag::{Diagnostic, ManifestErrors};
use crate::manifest::{stage_graph, Located, Manifest, Override};
use crate::schema::{ParamSpec, ParamType};
use crate::stage::{Params, Registry, Resources};
use crate::value::Value;

/// A fan-out dimension: the list-valued parameter `param` of stage `stage`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Axis {
    pub stage: String,
    pub param: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Binding {
    pub axis: Axis,
    pub value: Value,
}

/// One runnable instance of a stage.
#[derive(Clone, Debug)]
pub struct Instance {
    pub stage: String,
    pub kind: String,
    /// `stage` or `stage@axis=value,...`.
    pub name: String,
    pub bindings: Vec<Binding>,
    pub params: Params,
    /// Parameter name -> upstream instance indices (one for Input, many for Gather).
    pub inputs: BTreeMap<String, Vec<usize>>,
    pub seed: u64,
}

impl Instance {
    /// Bindings as (label, value) pairs, labelled as in the instance name.
    pub fn labelled_bindings(&self) -> Vec<(String, Value)> {
        label_bindings(&self.bindings)
    }
}

#[derive(Debug)]
pub struct Plan {
    pub instances: Vec<Instance>,
    /// Edges from upstream to downstream instance indices.
    pub graph: DiGraph<usize, ()>,
    /// Instance indices in an order where every upstream comes first.
    pub order: Vec<usize>,
    pub resources: Resources,
    pub profile: Option<String>,
    pub results: String,
}

impl Plan {
    pub fn by_name(&self, name: &str) -> Option<usize> {
        self.instances.iter().position(|i| i.name == name)
    }

    /// Instances of a stage, or the one instance with that name.
    pub fn select(&self, stage_or_instance: &str) -> Vec<usize> {
        let exact: Vec<usize> = self
            .instances
            .iter()
            .enumerate()
            .filter(|(_, i)| i.name == stage_or_instance || i.stage == stage_or_instance)
            .map(|(n, _)| n)
            .collect();
        exact
    }

    /// `targets` and everything they depend on.
    pub fn with_upstream(&self, targets: &[usize]) -> Vec<bool> {
        let mut keep = vec![false; self.instances.len()];
        let mut stack = targets.to_vec();
        while let Some(i) = stack.pop() {
            if keep[i] {
                continue;
            }
            keep[i] = true;
            for ups in self.instances[i].inputs.values() {
                stack.extend(ups.iter().copied());
            }
        }
        keep
    }

    /// Instances grouped by depth: every input of an instance is in an
    /// earlier group, so each group can be processed in parallel.
    pub fn levels(&self) -> Vec<Vec<usize>> {
        let mut depth = vec![0usize; self.instances.len()];
        let mut levels: Vec<Vec<usize>> = Vec::new();
        for &i in &self.order {
            let d = self.instances[i]
                .inputs
                .values()
                .flatten()
                .map(|&u| depth[u] + 1)
                .max()
                .unwrap_or(0);
            depth[i] = d;
            if levels.len() <= d {
                levels.resize_with(d + 1, Vec::new);
            }
            levels[d].push(i);
        }
        levels
    }

    /// Direct downstream instances of `i`.
    pub fn downstream(&self, i: usize) -> Vec<usize> {
        self.graph
            .neighbors(NodeIndex::new(i))
            .map(|n| self.graph[n])
            .collect()
    }
}

/// Builds the instance DAG for `profile` (None = the manifest as written).
pub fn plan(
    m: &Manifest,
    registry: &Registry,
    profile: Option<&str>,
) -> Result<Plan, ManifestErrors> {
    let mut diags = Vec::new();
    let overrides: &[Override] = match profile {
        None => &[],
        Some(p) => match m.profiles.get(p) {
            Some(o) => o,
            None => {
                let names: Vec<&str> = m.profiles.keys().map(String::as_str).collect();
                let d = Diagnostic::new(
                    "profile",
                    0..0,
                    format!("no profile `{p}` in this manifest"),
                );
                let list = format!("profiles are: {}", names.join(", "));
                let d = match crate::diag::near_miss(p, names.iter().copied()) {
                    _ if names.is_empty() => d.with_help("this manifest defines no `[profile.*]`"),
                    Some(near) => d.with_help(format!("did you mean `{near}`? ({list})")),
                    None => d.with_help(list),
                };
                return Err(m.errors(vec![d]));
            }
        },
    };

    let mut manifest_seed = m.seed;
    let mut results = m.results.clone();
    let mut replicates = m.replicates;
    for o in overrides.iter().filter(|o| o.stage == "flow") {
        match (o.param.as_str(), &o.value.value) {
            ("seed", Value::Int(s)) => manifest_seed = *s as u64,
            ("replicates", Value::Int(n)) => replicates = (*n).max(1) as u64,
            ("results", Value::Str(s)) => results = s.clone(),
            _ => {}
        }
    }

    let graph = stage_graph(m, registry);
    if toposort(&graph, None).is_err() {
        return Err(m.errors(vec![Diagnostic::new("stages", 0..0, "stages form a cycle")]));
    }
    let stage_order = file_order_toposort(&graph);

    let mut instances: Vec<Instance> = Vec::new();
    let mut by_stage: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for node in stage_order {
        let stage_name = &graph[node];
        let Some(decl) = m.stage(stage_name) else {
            continue;
        };
        let Some(kind) = registry.get(&decl.kind) else {
            continue;
        };
        let specs = kind.params();
        let (values, seeds) = resolve_values(
            decl.name.as_str(),
            &decl.params,
            decl.seeds.as_deref(),
            &specs,
            overrides,
            manifest_seed,
        );
        // Replicates: a seed list fans out on an axis `seed`; `[flow] replicates = N`
        // gives a replicable kind seeds s, s+1, ..., s+N-1 (the first is the seed it has
        // without replicates, so its instance keeps its key).
        let seeds = match seeds {
            Seeds::One(s) if replicates > 1 && kind.replicable() => {
                Seeds::Axis((0..replicates).map(|i| s.wrapping_add(i)).collect())
            }
            other => other,
        };
        let seed = match &seeds {
            Seeds::One(s) => *s,
            Seeds::Axis(list) => list[0],
        };

        // Join upstream instances on shared axes.
        let mut partials = vec![Partial::default()];
        for spec in specs.iter().filter(|s| s.ty == ParamType::Input) {
            let Some(located) = values.get(spec.name) else {
                continue;
            };
            let fanned = spec.ty.fans_out_on(&located.value);
            let sources: Vec<&str> = match &located.value {
                Value::Str(s) => vec![s.as_str()],
                Value::List(items) => items.iter().filter_map(Value::as_str).collect(),
                _ => continue,
            };
            let mut next = Vec::new();
            'join: for p in &partials {
                for source in &sources {
                    let mut base = p.clone();
                    if fanned {
                        let b = Binding {
                            axis: Axis {
                                stage: decl.name.clone(),
                                param: spec.name.to_string(),
                            },
                            value: Value::Str(source.to_string()),
                        };
                        base.own.insert(spec.name.to_string(), b.value.clone());
                        base.bindings.push(b);
                    }
                    for &u in by_stage.get(*source).map(Vec::as_slice).unwrap_or(&[]) {
                        if let Some(merged) = join(&base.bindings, &instances[u].bindings) {
                            let mut q = base.clone();
                            q.bindings = merged;
                            q.inputs.insert(spec.name.to_string(), vec![u]);
                            next.push(q);
                            if instances.len() + next.len() > m.max_instances {
                                break 'join;
                            }
                        }
                    }
                }
            }
            partials = next;
            if instances.len() + partials.len() > m.max_instances {
                diags.push(too_many(m, &decl.name, spec.name, located.span.clone()));
                return Err(m.errors(diags));
            }
        }

        // The stage's own list-valued parameters: product of their values.
        for spec in specs.iter().filter(|s| !s.is_reference()) {
            let Some(located) = values.get(spec.name) else {
                continue;
            };
            if !spec.ty.fans_out_on(&located.value) {
                continue;
            }
            let Value::List(items) = &located.value else {
                continue;
            };
            // Checked before the product is built: a 1e7-instance product must not
            // exhaust memory before it is refused.
            if partials
                .len()
                .saturating_mul(items.len())
                .saturating_add(instances.len())
                > m.max_instances
            {
                diags.push(too_many(m, &decl.name, spec.name, located.span.clone()));
                return Err(m.errors(diags));
            }
            let axis = Axis {
                stage: decl.name.clone(),
                param: spec.name.to_string(),
            };
            let mut next = Vec::new();
            for p in &partials {
                for item in items {
                    let mut q = p.clone();
                    q.bindings.push(Binding {
                        axis: axis.clone(),
                        value: item.clone(),
                    });
                    q.own.insert(spec.name.to_string(), item.clone());
                    next.push(q);
                }
            }
            partials = next;
        }

        if let Seeds::Axis(list) = &seeds {
            if instances.len() + partials.len().saturating_mul(list.len()) > m.max_instances {
                diags.push(too_many(m, &decl.name, "seed", decl.span.clone()));
                return Err(m.errors(diags));
            }
            let axis = Axis {
                stage: decl.name.clone(),
                param: "seed".to_string(),
            };
            let mut next = Vec::with_capacity(partials.len() * list.len());
            for p in &partials {
                for &s in list {
                    let mut q = p.clone();
                    q.bindings.push(Binding {
                        axis: axis.clone(),
                        value: Value::Int(s as i64),
                    });
                    q.seed = Some(s);
                    next.push(q);
                }
            }
            partials = next;
        }

        if partials.is_empty() {
            diags.push(Diagnostic::new(
                format!("stages.{}", decl.name),
                decl.span.clone(),
                format!(
                    "stage `{}` has no instances: its inputs share no fan-out values",
                    decl.name
                ),
            ));
        }

        let mut ids = Vec::new();
        for mut p in partials {
            // Gathered inputs: every upstream instance that agrees on shared axes.
            for spec in specs.iter().filter(|s| s.ty == ParamType::Gather) {
                let sources: Vec<&str> = match values.get(spec.name).map(|l| &l.value) {
                    Some(Value::Str(s)) => vec![s.as_str()],
                    Some(Value::List(items)) => items.iter().filter_map(Value::as_str).collect(),
                    _ => continue,
                };
                let gathered: Vec<usize> = sources
                    .iter()
                    .flat_map(|s| by_stage.get(*s).cloned().unwrap_or_default())
                    .filter(|&u| join(&p.bindings, &instances[u].bindings).is_some())
                    .collect();
                p.inputs.insert(spec.name.to_string(), gathered);
            }
            let mut params = BTreeMap::new();
            for spec in &specs {
                let v = match p.own.get(spec.name) {
                    Some(v) => Some(v.clone()),
                    None => values.get(spec.name).map(|l| l.value.clone()),
                };
                if let Some(v) = v {
                    params.insert(spec.name.to_string(), v);
                }
            }
            let params = Params::new(params);
            for problem in kind.check(&params) {
                let span = values
                    .get(problem.param.as_str())
                    .map(|l| l.span.clone())
                    .unwrap_or(decl.span.clone());
                let d = Diagnostic::new(
                    format!("stages.{}.{}", decl.name, problem.param),
                    span,
                    problem.message,
                );
                if !diags.contains(&d) {
                    diags.push(d);
                }
            }
            let name = instance_name(&decl.name, &p.bindings);
            ids.push(instances.len());
            instances.push(Instance {
                stage: decl.name.clone(),
                kind: decl.kind.clone(),
                name,
                bindings: p.bindings,
                params,
                inputs: p.inputs,
                seed: p.seed.unwrap_or(seed),
            });
        }
        by_stage.insert(decl.name.clone(), ids);
    }
    // Names identify instances in refs, `--stage` and results folders: two instances with
    // one name would overwrite each other's results.
    let mut names: HashMap<&str, usize> = HashMap::with_capacity(instances.len());
    for (i, inst) in instances.iter().enumerate() {
        if let Some(&first) = names.get(inst.name.as_str()) {
            let span = m.stage(&inst.stage).map(|d| d.span.clone()).unwrap_or(0..0);
            diags.push(Diagnostic::new(
                format!("stages.{}", inst.stage),
                span,
                format!(
                    "two instances have the name `{}` (of stage `{}` and `{}`); their \
                     fan-out values must differ in how they print",
                    inst.name, instances[first].stage, inst.stage
                ),
            ));
        } else {
            names.insert(&inst.name, i);
        }
    }
    if !diags.is_empty() {
        return Err(m.errors(diags));
    }

    let mut graph = DiGraph::new();
    let nodes: Vec<NodeIndex> = (0..instances.len()).map(|i| graph.add_node(i)).collect();
    for (i, inst) in instances.iter().enumerate() {
        // add_edge, not update_edge: the latter scans every edge of a node,
        // quadratic when one source feeds a thousand instances.
        let mut ups: Vec<usize> = inst.inputs.values().flatten().copied().collect();
        ups.sort_unstable();
        ups.dedup();
        for u in ups {
            graph.add_edge(nodes[u], nodes[i], ());
        }
    }
    // Instances were created stage by stage in topological order.
    let order = (0..instances.len()).collect();
    let resources = m.resource_values();
    Ok(Plan {
        instances,
        graph,
        order,
        resources,
        profile: profile.map(str::to_string),
        results,
    })
}

/// A topological order that keeps the manifest's order where dependencies
/// allow, so instance lists read like the file. Node indices follow file order.
fn file_order_toposort(graph: &DiGraph<String, ()>) -> Vec<NodeIndex> {
    let n = graph.node_count();
    let mut placed = vec![false; n];
    let mut order = Vec::with_capacity(n);
    while order.len() < n {
        let next = graph.node_indices().find(|&i| {
            !placed[i.index()]
                && graph
                    .neighbors_directed(i, petgraph::Direction::Incoming)
                    .all(|u| placed[u.index()])
        });
        let Some(i) = next else {
            break; // a cycle; rejected before planning
        };
        placed[i.index()] = true;
        order.push(i);
    }
    order
}

#[derive(Clone, Debug, Default)]
struct Partial {
    bindings: Vec<Binding>,
    /// The instance's seed when the stage fans out on `seed`.
    seed: Option<u64>,
    /// This stage's own fan-out values by parameter.
    own: BTreeMap<String, Value>,
    inputs: BTreeMap<String, Vec<usize>>,
}

/// Merges two binding lists if they agree on every shared axis.
fn join(a: &[Binding], b: &[Binding]) -> Option<Vec<Binding>> {
    let mut out = a.to_vec();
    for bb in b {
        match a.iter().find(|ab| ab.axis == bb.axis) {
            Some(ab) if ab.value != bb.value => return None,
            Some(_) => {}
            None => out.push(bb.clone()),
        }
    }
    Some(out)
}

/// A stage's seeds: one, or a list that fans it out on an axis `seed`.
enum Seeds {
    One(u64),
    Axis(Vec<u64>),
}

impl Seeds {
    /// A list of one seed is that seed: replicates need two.
    fn of(list: &[u64]) -> Seeds {
        match list {
            [one] => Seeds::One(*one),
            _ => Seeds::Axis(list.to_vec()),
        }
    }
}

/// Parameter values after the profile's overrides and the defaults, and the seeds.
fn resolve_values(
    stage: &str,
    given: &BTreeMap<String, Located>,
    own_seeds: Option<&[u64]>,
    specs: &[ParamSpec],
    overrides: &[Override],
    manifest_seed: u64,
) -> (BTreeMap<&'static str, Located>, Seeds) {
    let mut seed = match own_seeds {
        Some(list) => Seeds::of(list),
        None => Seeds::One(manifest_seed),
    };
    let mut values: BTreeMap<&'static str, Located> = BTreeMap::new();
    for spec in specs {
        if let Some(v) = given.get(spec.name) {
            values.insert(spec.name, v.clone());
        } else if let Some(d) = &spec.default {
            values.insert(spec.name, located(d.clone(), 0..0));
        }
    }
    for o in overrides.iter().filter(|o| o.stage == stage) {
        if o.param == "seed" {
            match &o.value.value {
                Value::Int(s) => seed = Seeds::One(*s as u64),
                Value::List(items) => {
                    let list: Vec<u64> = items
                        .iter()
                        .filter_map(|v| v.as_i64().map(|i| i as u64))
                        .collect();
                    if !list.is_empty() {
                        seed = Seeds::of(&list);
                    }
                }
                _ => {}
            }
            continue;
        }
        let Some(spec) = specs.iter().find(|s| s.name == o.param) else {
            continue;
        };
        if o.field.is_empty() {
            values.insert(spec.name, o.value.clone());
            continue;
        }
        // A field inside a table parameter: merge into the current table.
        let entry = values
            .entry(spec.name)
            .or_insert_with(|| located(Value::Table(BTreeMap::new()), o.value.span.clone()));
        set_field(&mut entry.value, &o.field, o.value.value.clone());
        entry.span = o.value.span.clone();
    }
    (values, seed)
}

fn set_field(target: &mut Value, path: &[String], value: Value) {
    let Some((first, rest)) = path.split_first() else {
        *target = value;
        return;
    };
    if !matches!(target, Value::Table(_)) {
        *target = Value::Table(BTreeMap::new());
    }
    if let Value::Table(map) = target {
        let slot = map
            .entry(first.clone())
            .or_insert(Value::Table(BTreeMap::new()));
        set_field(slot, rest, value);
    }
}

fn located(value: Value, span: Range<usize>) -> Located {
    Located {
        value,
        span,
        item_spans: Vec::new(),
    }
}

fn too_many(m: &Manifest, stage: &str, param: &str, span: Range<usize>) -> Diagnostic {
    Diagnostic::new(
        format!("stages.{stage}.{param}"),
        span,
        format!(
            "stage `{stage}` fans out past {} instances in all at `{param}`",
            m.max_instances
        ),
    )
    .with_help(format!(
        "raise the limit with `[flow] max_instances = N` if this is intended (default {})",
        crate::manifest::DEFAULT_MAX_INSTANCES
    ))
}

/// Labels bindings by parameter name, qualified by stage only when two axes
/// of one instance share a parameter name.
fn label_bindings(bindings: &[Binding]) -> Vec<(String, Value)> {
    bindings
        .iter()
        .map(|b| {
            let ambiguous = bindings
                .iter()
                .filter(|o| o.axis.param == b.axis.param)
                .count()
                > 1;
            let label = if ambiguous {
                format!("{}.{}", b.axis.stage, b.axis.param)
            } else {
                b.axis.param.clone()
            };
            (label, b.value.clone())
        })
        .collect()
}

fn instance_name(stage: &str, bindings: &[Binding]) -> String {
    if bindings.is_empty() {
        return stage.to_string();
    }
    let parts: Vec<String> = label_bindings(bindings)
        .into_iter()
        .map(|(k, v)| format!("{k}={}", v.name_part()))
        .collect();
    format!("{stage}@{}", parts.join(","))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::manifest::{LoadError, Manifest};
    use crate::testkit;

    fn load(text: &str) -> Manifest {
        match Manifest::parse(Path::new("t.toml"), text.to_string(), &testkit::registry()) {
            Ok(m) => m,
            Err(LoadError::Invalid(e)) => panic!("{}", e.render()),
            Err(e) => panic!("{e}"),
        }
    }

    fn names(p: &Plan) -> Vec<&str> {
        p.instances.iter().map(|i| i.name.as_str()).collect()
    }

    const BASE: &str = "[flow]\nname = \"t\"\nseed = 5\n";

    #[test]
    fn lists_fan_out_and_two_lists_form_a_product() {
        let m = load(&format!(
            "{BASE}[stages.s]\nkind = \"src\"\nn = [1, 2]\ntask = [\"a\", \"b\"]\n"
        ));
        let p = plan(&m, &testkit::registry(), None).unwrap();
        assert_eq!(
            names(&p),
            [
                "s@n=1,task=a",
                "s@n=1,task=b",
                "s@n=2,task=a",
                "s@n=2,task=b"
            ]
        );
        assert_eq!(p.instances[3].params.int("n"), Some(2));
        assert_eq!(p.instances[3].params.str("task"), Some("b"));
    }

    /// Values holding `,` `=` `/` gave two instances one name (and one results folder).
    #[test]
    fn instance_names_and_folders_are_injective() {
        let m = load(&format!(
            "{BASE}[stages.s]\nkind = \"src\"\ntitle = [\"a,y_label=b\", \"a\"]\n\
             y_label = [\"c\", \"b,y_label=c\"]\n\
             [stages.p]\nkind = \"src\"\ntitle = [\"x/y\", \"x_y\", \"..\", \"%2F\"]\n"
        ));
        let p = plan(&m, &testkit::registry(), None).unwrap();
        assert_eq!(p.instances.len(), 8);
        let names: std::collections::HashSet<&str> =
            p.instances.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names.len(), 8, "{:?}", super::tests::names(&p));
        let folders: std::collections::HashSet<std::path::PathBuf> = p
            .instances
            .iter()
            .map(|i| crate::publish::instance_folder(&i.stage, &i.name))
            .collect();
        assert_eq!(folders.len(), 8);
        for f in &folders {
            // One folder per instance inside its stage's folder: nothing climbs out.
            assert_eq!(f.components().count(), 2, "{}", f.display());
            assert!(
                !f.components().any(|c| c.as_os_str() == ".."),
                "{}",
                f.display()
            );
        }
        assert!(names.contains("p@title=x%2Fy"));
        assert!(names.contains("p@title=%252F"));
    }

    /// A fan-out past the limit is refused at the parameter that crosses it, before the
    /// product is built (1e7 instances used to abort on allocation).
    #[test]
    fn plans_past_the_instance_limit_are_refused_with_a_located_error() {
        let list = |n: usize| {
            let items: Vec<String> = (0..n).map(|i| format!("\"v{i}\"")).collect();
            format!("[{}]", items.join(", "))
        };
        let ns: Vec<String> = (1..=216).map(|i| i.to_string()).collect();
        let m = load(&format!(
            "{BASE}[stages.s]\nkind = \"src\"\nn = [{}]\ntitle = {}\ny_label = {}\n",
            ns.join(", "),
            list(216),
            list(216)
        ));
        let err = plan(&m, &testkit::registry(), None).unwrap_err().render();
        assert!(err.contains("fans out past 100000 instances"), "{err}");
        assert!(err.contains("max_instances"), "{err}");

        let m = load(
            "[flow]\nname = \"t\"\nmax_instances = 5\n[stages.s]\nkind = \"src\"\n\
             n = [1, 2, 3]\ntitle = [\"a\", \"b\"]\n",
        );
        let err = plan(&m, &testkit::registry(), None).unwrap_err().render();
        assert!(err.contains("stages.s.title"), "{err}");
        let m = load(
            "[flow]\nname = \"t\"\nmax_instances = 6\n[stages.s]\nkind = \"src\"\n\
             n = [1, 2, 3]\ntitle = [\"a\", \"b\"]\n",
        );
        assert_eq!(
            plan(&m, &testkit::registry(), None)
                .unwrap()
                .instances
                .len(),
            6
        );
    }

    /// `seed = [..]` fans a stage out on an axis `seed`; downstream follows it, and
    /// everything upstream is shared (no data per training seed).
    #[test]
    fn seed_lists_fan_out_on_a_seed_axis_that_downstream_follows() {
        let m = load(&format!(
            "{BASE}[stages.r]\nkind = \"src\"\n[stages.train]\nkind = \"eval\"\n\
             model = \"r\"\ndata = \"r\"\nseed = [1, 2, 3]\n\
             [stages.ev]\nkind = \"eval\"\nmodel = \"train\"\ndata = \"r\"\n\
             [stages.t]\nkind = \"table\"\nfrom = \"ev\"\n"
        ));
        let p = plan(&m, &testkit::registry(), None).unwrap();
        let of = |stage: &str| -> Vec<&Instance> {
            p.instances.iter().filter(|i| i.stage == stage).collect()
        };
        assert_eq!(of("r").len(), 1, "upstream is shared by every seed");
        let trains = of("train");
        assert_eq!(
            trains
                .iter()
                .map(|i| (i.name.as_str(), i.seed))
                .collect::<Vec<_>>(),
            [
                ("train@seed=1", 1),
                ("train@seed=2", 2),
                ("train@seed=3", 3)
            ]
        );
        let evals = of("ev");
        assert_eq!(evals.len(), 3);
        assert_eq!(evals[1].name, "ev@seed=2");
        assert_eq!(
            p.instances[evals[1].inputs["model"][0]].name,
            "train@seed=2"
        );
        assert_eq!(evals[1].seed, 5, "a follower keeps its own seed");
        assert_eq!(of("t")[0].inputs["from"].len(), 3);
    }

    /// `[flow] replicates = N` gives replicable kinds N seeds starting at the seed they
    /// have without it, so the first replicate keeps its key; other kinds are untouched.
    #[test]
    fn replicates_give_training_kinds_seeds_from_their_own() {
        let text = "[stages.r]\nkind = \"src\"\n[stages.train]\nkind = \"eval\"\n\
                    model = \"r\"\ndata = \"r\"\n";
        let one = plan(&load(&format!("{BASE}{text}")), &testkit::registry(), None).unwrap();
        let m = load(&format!("{BASE}replicates = 3\n{text}"));
        let three = plan(&m, &testkit::registry(), None).unwrap();
        assert_eq!(
            names(&three),
            ["r", "train@seed=5", "train@seed=6", "train@seed=7"]
        );
        assert_eq!(one.instances[1].seed, three.instances[1].seed);
        let profile = load(&format!(
            "{BASE}{text}[profile.p]\n\"flow.replicates\" = 2\n[profile.q]\n\"train.seed\" = [9, 4]\n"
        ));
        let p = plan(&profile, &testkit::registry(), Some("p")).unwrap();
        assert_eq!(names(&p), ["r", "train@seed=5", "train@seed=6"]);
        let q = plan(&profile, &testkit::registry(), Some("q")).unwrap();
        assert_eq!(names(&q), ["r", "train@seed=9", "train@seed=4"]);
    }

    #[test]
    fn downstream_follows_and_joins_on_shared_axes() {
        let m = load(&format!(
            "{BASE}[stages.r]\nkind = \"src\"\n[stages.g]\nkind = \"src\"\nn = 3\n\
             [stages.mix]\nkind = \"mix\"\nreal = \"r\"\ngenerated = \"g\"\nratio = [0.2, 0.4]\n\
             [stages.train]\nkind = \"eval\"\nmodel = \"mix\"\ndata = \"r\"\n\
             [stages.eval]\nkind = \"eval\"\nmodel = \"train\"\ndata = \"mix\"\n\
             [stages.t]\nkind = \"table\"\nfrom = \"eval\"\n"
        ));
        let p = plan(&m, &testkit::registry(), None).unwrap();
        let evals: Vec<&Instance> = p.instances.iter().filter(|i| i.stage == "eval").collect();
        // Paired on mix.ratio, not a 2 x 2 product.
        assert_eq!(evals.len(), 2);
        assert_eq!(evals[0].name, "eval@ratio=0.2");
        let model = &p.instances[evals[0].inputs["model"][0]];
        let data = &p.instances[evals[0].inputs["data"][0]];
        assert_eq!(model.name, "train@ratio=0.2");
        assert_eq!(data.name, "mix@ratio=0.2");
        let table = p.instances.iter().find(|i| i.stage == "t").unwrap();
        assert_eq!(table.name, "t");
        assert_eq!(table.inputs["from"].len(), 2);
        // Every upstream comes first in the order.
        for (pos, &i) in p.order.iter().enumerate() {
            for ups in p.instances[i].inputs.values() {
                for u in ups {
                    assert!(p.order[..pos].contains(u));
                }
            }
        }
    }

    #[test]
    fn input_lists_fan_out_over_sources() {
        let m = load(&format!(
            "{BASE}[stages.a]\nkind = \"src\"\n[stages.b]\nkind = \"src\"\n\
             [stages.e]\nkind = \"eval\"\nmodel = [\"a\", \"b\"]\ndata = \"a\"\n"
        ));
        let p = plan(&m, &testkit::registry(), None).unwrap();
        assert_eq!(names(&p), ["a", "b", "e@model=a", "e@model=b"]);
    }

    #[test]
    fn profiles_override_values_and_table_fields() {
        let m = load(&format!(
            "{BASE}[profile.tiny]\n\"s.n\" = 2\nmix.lora.rank = 4\n\"flow.seed\" = 9\n\
             [stages.s]\nkind = \"src\"\nn = 100\n\
             [stages.mix]\nkind = \"mix\"\nreal = \"s\"\ngenerated = \"s\"\nratio = 0.5\n"
        ));
        let full = plan(&m, &testkit::registry(), None).unwrap();
        assert_eq!(full.instances[0].params.int("n"), Some(100));
        assert_eq!(full.instances[0].seed, 5);
        let tiny = plan(&m, &testkit::registry(), Some("tiny")).unwrap();
        assert_eq!(tiny.instances[0].params.int("n"), Some(2));
        assert_eq!(tiny.instances[0].seed, 9);
        let lora = tiny.instances[1]
            .params
            .get("lora")
            .and_then(Value::as_table)
            .unwrap();
        assert_eq!(lora.get("rank"), Some(&Value::Int(4)));
        assert_eq!(lora.get("alpha"), Some(&Value::Float(16.0)));
    }

    #[test]
    fn unknown_profile_is_an_error_with_a_suggestion() {
        let m = load(&format!(
            "{BASE}[profile.tiny]\n\"s.n\" = 2\n[stages.s]\nkind = \"src\"\n"
        ));
        let err = plan(&m, &testkit::registry(), Some("tinny")).unwrap_err();
        assert!(
            err.render().contains("did you mean `tiny`?"),
            "{}",
            err.render()
        );
    }
}
