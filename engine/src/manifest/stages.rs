//! `[stages.*]`: each stage's kind, seed and parameters, checked against the kind's
//! declarations. Stages keep the order they are written in (included files' first).

use std::collections::BTreeMap;

use super::toml_spans::Entry;
use super::{valid_name, Loader, Manifest, StageDecl};
use crate::diag::Diagnostic;
use crate::schema::{quote_list, type_error};
use crate::value::Value;

/// Keys every stage accepts besides its kind's parameters.
const STAGE_COMMON: &[&str] = &["kind", "seed"];

impl Loader<'_> {
    /// Reads the `[stages.*]` of one file; a name another file defined already is an
    /// error naming both.
    pub(super) fn stages(&mut self, m: &mut Manifest, entries: Vec<Entry<'_>>) {
        let kinds: Vec<&str> = self.registry.kinds().collect();
        for (key, value) in entries {
            let name = key.get_ref().to_string();
            let path = format!("stages.{name}");
            let key_span = self.at(key.span());
            if !valid_name(&name) {
                self.err(Diagnostic::new(
                    &path,
                    key_span,
                    format!("invalid stage name `{name}`: use letters, digits, `-` and `_`"),
                ));
                continue;
            }
            if let Some(first) = m.stage(&name).map(|s| s.span.clone()) {
                let d = self.defined_twice(&format!("stage `{name}`"), &path, first, key_span);
                self.err(d);
                continue;
            }
            let Some(fields) = self.table(&path, value) else {
                continue;
            };
            let mut decl = StageDecl {
                name: name.clone(),
                span: key_span,
                kind: String::new(),
                seeds: None,
                params: BTreeMap::new(),
            };
            let mut raw = Vec::new();
            for (fkey, fvalue) in fields {
                let fname = fkey.get_ref().to_string();
                let fpath = format!("{path}.{fname}");
                let fspan = self.at(fkey.span());
                if let Some(v) = self.value(&fpath, fvalue) {
                    raw.push((fname, fspan, v));
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
                    "seed" => decl.seeds = self.seeds(&fpath, &v),
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
}

#[cfg(test)]
mod tests {
    use crate::manifest::tests::{errors, load};
    use crate::value::Value;

    /// Each row: a stage's table, and a part of its error (empty: none).
    #[test]
    fn stage_tables_are_checked() {
        let rows = [
            ("[stages.s]\nkind = \"src\"\nn = 3\nseed = 1\n", ""),
            (
                "[stages.\"a b\"]\nkind = \"src\"\n",
                "invalid stage name `a b`",
            ),
            (
                "[stages]\nt = 1\n",
                "`stages.t` must be a table, found an integer",
            ),
            ("[stages.s]\nn = 3\n", "stage `s` has no `kind`"),
            ("[stages.s]\nkind = \"srd\"\n", "unknown stage kind `srd`"),
            ("[stages.s]\nkind = \"srd\"\n", "did you mean `src`?"),
            ("[stages.s]\nkind = \"banana\"\n", "kinds are `"),
            (
                "[stages.s]\nkind = 3\n",
                "`kind` must be a string, found integer `3`",
            ),
            (
                "[stages.s]\nkind = \"src\"\nm = 3\n",
                "unknown parameter `m` for stage kind `src`",
            ),
            (
                "[stages.s]\nkind = \"src\"\ntitel = \"x\"\n",
                "did you mean `title`?",
            ),
            (
                "[stages.s]\nkind = \"src\"\nzzzz = 1\n",
                "`src` takes `n`, `task`",
            ),
            (
                "[stages.s]\nkind = \"table\"\n",
                "stage `s` (kind `table`) needs `from`",
            ),
            (
                "[stages.s]\nkind = \"src\"\n[stages.t]\nkind = \"table\"\nfrom = \"s\"\n",
                "",
            ),
        ];
        for (table, expected) in rows {
            let err = errors(&format!("[flow]\nname = \"t\"\n{table}"));
            if expected.is_empty() {
                assert!(err.is_empty(), "{table}: {err}");
            } else {
                assert!(err.contains(expected), "{table}: {err}");
            }
        }
    }

    #[test]
    fn parameters_are_checked_and_widened() {
        let m = load(
            "[flow]\nname = \"t\"\n[stages.a]\nkind = \"src\"\n[stages.b]\nkind = \"src\"\n\
             [stages.m]\nkind = \"mix\"\nreal = \"a\"\ngenerated = \"b\"\nratio = 1\nseed = 9\n",
        );
        let mix = m.stage("m").unwrap();
        assert_eq!(mix.kind, "mix");
        assert_eq!(mix.seeds, Some(vec![9]));
        assert_eq!(mix.params["ratio"].value, Value::Float(1.0));
        // Declared defaults are filled in while planning, not here.
        assert!(!mix.params.contains_key("lora"));
    }
}
