//! References: every stage name a parameter gives (inputs, gathered stages) and every
//! resource name (`[models.*]`, `[generators.*]`...) must name something the manifest defines, wherever
//! it was defined (the manifest or a file it includes).

use std::ops::Range;

use super::{Loader, Manifest};
use crate::diag::Diagnostic;
use crate::schema::{quote_list, ParamType};
use crate::value::Value;

impl Loader<'_> {
    /// References to stages and resources must name something that exists.
    pub(super) fn check_references(&mut self, m: &Manifest) {
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
                    (ParamType::Input | ParamType::Resource(_), Value::Str(s)) => {
                        vec![(s.clone(), v.span.clone())]
                    }
                    (
                        ParamType::Input | ParamType::Gather | ParamType::Resource(_),
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
                        ParamType::Resource(section) => {
                            let pool = m.resource_entries(section);
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
}

#[cfg(test)]
mod tests {
    use crate::manifest::tests::errors;

    /// Each row: stages referring to others, and a part of the error (empty: none).
    #[test]
    fn references_must_name_something() {
        let src = "[stages.a]\nkind = \"src\"\n[stages.b]\nkind = \"src\"\n";
        let rows = [
            (
                "[stages.m]\nkind = \"mix\"\nreal = \"a\"\ngenerated = \"b\"\nratio = 1",
                "",
            ),
            (
                "[stages.m]\nkind = \"mix\"\nreal = \"aa\"\ngenerated = \"b\"\nratio = 1",
                "no stage named `aa`",
            ),
            (
                "[stages.m]\nkind = \"mix\"\nreal = \"zzz\"\ngenerated = \"b\"\nratio = 1",
                "stages are `a`, `b`, `m`",
            ),
            (
                "[stages.m]\nkind = \"mix\"\nreal = \"m\"\ngenerated = \"b\"\nratio = 1",
                "stage `m` cannot take its own output as `real`",
            ),
            (
                "[stages.m]\nkind = \"mix\"\nreal = [\"a\", \"c\"]\ngenerated = \"b\"\nratio = 1",
                "no stage named `c`",
            ),
            ("[stages.t]\nkind = \"table\"\nfrom = [\"a\", \"b\"]", ""),
            (
                "[stages.t]\nkind = \"table\"\nfrom = [\"a\", \"x\"]",
                "no stage named `x`",
            ),
            (
                "[stages.t]\nkind = \"table\"\nfrom = \"t\"",
                "stage `t` cannot take its own output as `from`",
            ),
        ];
        for (stages, expected) in rows {
            let err = errors(&format!("[flow]\nname = \"t\"\n{src}{stages}\n"));
            if expected.is_empty() {
                assert!(err.is_empty(), "{stages}: {err}");
            } else {
                assert!(err.contains(expected), "{stages}: {err}");
            }
        }
    }

    /// The error points at the item of a list that names nothing.
    #[test]
    fn a_bad_item_is_pointed_at() {
        let err = errors(
            "[flow]\nname = \"t\"\n[stages.a]\nkind = \"src\"\n\
             [stages.t]\nkind = \"table\"\nfrom = [\"a\", \"x\"]\n",
        );
        assert!(err.contains("t.toml:7:14"), "{err}");
    }
}
