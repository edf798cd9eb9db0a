//! The stage graph (edges from each stage to the stages that read it) and its cycles.

use std::collections::BTreeMap;

use petgraph::algo::tarjan_scc;
use petgraph::graph::DiGraph;

use super::{Loader, Manifest, StageDecl};
use crate::diag::Diagnostic;
use crate::stage::Registry;
use crate::value::Value;

/// Stage-level dependency graph (edges point downstream); node `i` is the `i`-th stage.
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

impl Loader<'_> {
    /// One error per cycle, at the stage of the cycle written first.
    pub(super) fn check_cycles(&mut self, m: &Manifest) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::tests::{errors, load};
    use crate::testkit;

    const SRC: &str = "[flow]\nname = \"t\"\n[stages.a]\nkind = \"src\"\n";

    #[test]
    fn edges_point_downstream() {
        let m = load(&format!(
            "{SRC}[stages.b]\nkind = \"src\"\n\
             [stages.m]\nkind = \"mix\"\nreal = \"a\"\ngenerated = \"b\"\nratio = 1\n\
             [stages.t]\nkind = \"table\"\nfrom = [\"m\", \"a\"]\n"
        ));
        let registry = testkit::registry();
        let g = stage_graph(&m, &registry);
        let mut edges: Vec<(String, String)> = g
            .edge_indices()
            .map(|e| {
                let (a, b) = g.edge_endpoints(e).unwrap();
                (g[a].clone(), g[b].clone())
            })
            .collect();
        edges.sort();
        let expected = [("a", "m"), ("a", "t"), ("b", "m"), ("m", "t")];
        assert_eq!(edges, expected.map(|(a, b)| (a.to_string(), b.to_string())));
        assert_eq!(upstream_names(m.stage("t").unwrap(), &registry), ["m", "a"]);
        assert!(upstream_names(m.stage("a").unwrap(), &registry).is_empty());
    }

    #[test]
    fn cycles_read_as_a_path_from_the_stage_written_first() {
        let err = errors(&format!(
            "{SRC}[stages.x]\nkind = \"eval\"\nmodel = \"y\"\ndata = \"a\"\n\
             [stages.y]\nkind = \"eval\"\nmodel = \"z\"\ndata = \"a\"\n\
             [stages.z]\nkind = \"eval\"\nmodel = \"x\"\ndata = \"a\"\n"
        ));
        assert!(
            err.contains("stages form a cycle: x -> z -> y -> x"),
            "{err}"
        );
        assert!(err.contains("key `stages.x`"), "{err}");
        let err = errors(&format!("{SRC}[stages.t]\nkind = \"table\"\nfrom = [\"a\", \"u\"]\n[stages.u]\nkind = \"table\"\nfrom = \"t\"\n"));
        assert!(err.contains("stages form a cycle: t -> u -> t"), "{err}");
    }
}
