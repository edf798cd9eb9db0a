//! `[flow]`: the manifest's name, seed, results folder, description and instance limit.
//! Only the manifest itself has one (an included file's is refused in `mod.rs`).

use std::path::{Component, Path};

use super::toml_spans::Entry;
use super::{valid_name, Loader, Located, Manifest};
use crate::diag::Diagnostic;
use crate::schema::type_error;
use crate::value::Value;

const FLOW_KEYS: &[&str] = &[
    "name",
    "seed",
    "results",
    "description",
    "max_instances",
    "replicates",
];

/// The most replicates `[flow] replicates` may ask for.
pub const MAX_REPLICATES: i64 = 1000;

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
    if path
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::Prefix(_)))
        || s.split(['/', '\\']).any(|part| part == "..")
    {
        return Some(format!(
            "`{s}` leaves the project folder (`..`); results stay inside it \
             (use `--results-dir` / FLOW_RESULTS_DIR to publish elsewhere)"
        ));
    }
    None
}

impl Loader<'_> {
    pub(super) fn flow_section(&mut self, m: &mut Manifest, entries: Vec<Entry<'_>>) {
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
                "replicates" => {
                    if let Some(n) = self.replicates(&path, &v) {
                        m.replicates = n;
                    }
                }
                "description" => match &v.value {
                    Value::Str(s) => m.description = Some(s.clone()),
                    other => self.err(type_error(&path, v.span.clone(), "a string", other)),
                },
                _ => {
                    let span = self.at(key.span());
                    let d = Diagnostic::new(&path, span, format!("unknown key `{k}` in `[flow]`"));
                    self.err(if k == "include" {
                        d.with_help(
                            "`include` is a top-level key: put it above the first `[section]`",
                        )
                    } else {
                        d.suggest(&k, FLOW_KEYS.iter().copied())
                    });
                }
            }
        }
        if !name_seen && !self.diags.iter().any(|d| d.key == "flow.name") {
            self.err(
                Diagnostic::new("flow.name", 0..0, "`[flow]` needs `name`")
                    .with_help("add `name = \"my-experiment\"` under `[flow]`"),
            );
        }
    }
}

impl Loader<'_> {
    /// `replicates = N`: 1 to [`MAX_REPLICATES`].
    pub(super) fn replicates(&mut self, path: &str, v: &Located) -> Option<u64> {
        let rule = format!("replicates must be between 1 and {MAX_REPLICATES}");
        self.int_in(path, v, 1..=MAX_REPLICATES, &rule)
            .map(|n| n as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::tests::{errors, load};

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
            assert_eq!(check_results_path(good), None);
        }
    }

    /// Each row: the lines of `[flow]`, and a part of the error (empty: none).
    #[test]
    fn flow_keys_are_checked() {
        let rows = [
            (
                "name = \"t\"\nseed = 3\ndescription = \"d\"\nmax_instances = 5",
                "",
            ),
            ("name = \"a b\"", "invalid name `a b`"),
            ("name = 3", "`name` must be a string"),
            ("seed = 1", "`[flow]` needs `name`"),
            (
                "name = \"t\"\nseed = -3",
                "seed must be a non-negative integer",
            ),
            (
                "name = \"t\"\nresults = \"\"",
                "`results` must be a folder path",
            ),
            (
                "name = \"t\"\nmax_instances = 0",
                "`max_instances` must be a positive integer",
            ),
            ("name = \"t\"\nreplicates = 3", ""),
            (
                "name = \"t\"\nreplicates = 0",
                "replicates must be between 1 and 1000, found 0",
            ),
            (
                "name = \"t\"\nreplicates = \"2\"",
                "`replicates` must be an integer",
            ),
            (
                "name = \"t\"\ndescription = 1",
                "`description` must be a string",
            ),
            ("name = \"t\"\nsede = 1", "did you mean `seed`?"),
            (
                "name = \"t\"\ninclude = [\"x.toml\"]",
                "`include` is a top-level key",
            ),
        ];
        for (lines, expected) in rows {
            let err = errors(&format!("[flow]\n{lines}\n"));
            if expected.is_empty() {
                assert!(err.is_empty(), "{lines}: {err}");
            } else {
                assert!(err.contains(expected), "{lines}: {err}");
            }
        }
    }

    #[test]
    fn results_default_to_the_name() {
        let m = load("[flow]\nname = \"t\"\nseed = 4\n[stages.s]\nkind = \"src\"\n");
        assert_eq!((m.results.as_str(), m.seed), ("results/t", 4));
    }
}
