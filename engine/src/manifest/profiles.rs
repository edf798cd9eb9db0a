//! `[profile.*]`: named sets of `"stage.param" = value` overrides.
//!
//! Profiles are read in two steps: each file's lines are collected as it is read
//! ([`Loader::collect_profiles`]), and checked once every stage of every file is known
//! ([`Loader::profiles`]). A manifest has the profiles it declares itself (`[profile.NAME]`,
//! which may be empty); an included file's `[profile.NAME]` adds its lines to the
//! manifest's profile of that name, and is not used by a manifest without one. The same
//! line in two places is an error naming both.

use std::collections::{BTreeSet, HashMap};
use std::ops::Range;

use toml::de::DeValue;
use toml::Spanned;

use super::toml_spans::Entry;
use super::{check_results_path, Loader, Located, Manifest, Override};
use crate::diag::{near_miss, Diagnostic};
use crate::schema::{type_error, ParamType};
use crate::value::Value;

/// One `[profile.NAME]` table of one file, its lines not yet checked.
pub(super) struct RawProfile {
    name: String,
    /// Written in the manifest itself (not in an included file).
    own: bool,
    span: Range<usize>,
    lines: Vec<RawLine>,
}

/// One override line: its key split at the dots.
struct RawLine {
    segments: Vec<String>,
    key_span: Range<usize>,
    value: Located,
}

impl Loader<'_> {
    /// Collects the `[profile.*]` tables of the file being read.
    pub(super) fn collect_profiles(&mut self, entries: Vec<Entry<'_>>) {
        for (key, value) in entries {
            let name = key.get_ref().to_string();
            let span = self.at(key.span());
            let path = format!("profile.{name}");
            let Some(fields) = self.table(&path, value) else {
                continue;
            };
            let mut lines = Vec::new();
            for (fkey, fvalue) in fields {
                let segments: Vec<String> = fkey.get_ref().split('.').map(str::to_string).collect();
                let key_span = self.at(fkey.span());
                self.flatten(&path, &segments, key_span, fvalue, &mut lines);
            }
            self.raw_profiles.push(RawProfile {
                name,
                own: !self.in_include,
                span,
                lines,
            });
        }
    }

    /// Unquoted dotted keys (`train.epochs = 1`) arrive as nested tables; quoted
    /// ones (`"train.epochs" = 1`) as one key. Both mean the same override.
    fn flatten(
        &mut self,
        profile_path: &str,
        segments: &[String],
        key_span: Range<usize>,
        value: Spanned<DeValue<'_>>,
        out: &mut Vec<RawLine>,
    ) {
        if segments.len() < 2 {
            if let DeValue::Table(_) = value.get_ref() {
                if let DeValue::Table(t) = value.into_inner() {
                    for (k, v) in t {
                        let mut segs = segments.to_vec();
                        segs.extend(k.get_ref().split('.').map(str::to_string));
                        let span = self.at(k.span());
                        self.flatten(profile_path, &segs, span, v, out);
                    }
                }
                return;
            }
        }
        let key = format!("{profile_path}.\"{}\"", segments.join("."));
        if let Some(value) = self.value(&key, value) {
            out.push(RawLine {
                segments: segments.to_vec(),
                key_span,
                value,
            });
        }
    }

    /// Checks the collected lines against the manifest's stages and files them under the
    /// profiles the manifest declares.
    pub(super) fn profiles(&mut self, m: &mut Manifest) {
        let raw = std::mem::take(&mut self.raw_profiles);
        let declared: BTreeSet<&str> = raw
            .iter()
            .filter(|p| p.own)
            .map(|p| p.name.as_str())
            .collect();
        for name in &declared {
            m.profiles.insert(name.to_string(), Vec::new());
        }
        // Where each (profile, line) was first written.
        let mut first: HashMap<(&str, String), Range<usize>> = HashMap::new();
        for p in &raw {
            if !declared.contains(p.name.as_str()) {
                // Meant for manifests that declare it; a near miss of one this manifest
                // declares is a typo.
                if let Some(near) = near_miss(&p.name, declared.iter().copied()) {
                    self.err(
                        Diagnostic::new(
                            format!("profile.{}", p.name),
                            p.span.clone(),
                            format!(
                                "profile `{}` of an included file is not a profile of this \
                                 manifest",
                                p.name
                            ),
                        )
                        .with_help(format!(
                            "did you mean `{near}`? (a manifest has the profiles it declares)"
                        )),
                    );
                }
                continue;
            }
            let path = format!("profile.{}", p.name);
            for line in &p.lines {
                let dotted = line.segments.join(".");
                let key = format!("{path}.\"{dotted}\"");
                match first.get(&(p.name.as_str(), dotted.clone())) {
                    Some(span) => {
                        let d = self.defined_twice(
                            &format!("`{dotted}` in profile `{}`", p.name),
                            &key,
                            span.clone(),
                            line.key_span.clone(),
                        );
                        self.err(d);
                        continue;
                    }
                    None => {
                        first.insert((p.name.as_str(), dotted.clone()), line.key_span.clone());
                    }
                }
                if let Some(o) = self.check_override(m, &key, p.own, line) {
                    m.profiles.entry(p.name.clone()).or_default().push(o);
                }
            }
        }
    }

    /// One line of a profile, checked against what it overrides.
    fn check_override(
        &mut self,
        m: &Manifest,
        key: &str,
        own: bool,
        line: &RawLine,
    ) -> Option<Override> {
        let segments = &line.segments;
        let key_span = line.key_span.clone();
        let v = line.value.clone();
        let dotted = segments.join(".");
        if segments.len() < 2 {
            self.err(
                Diagnostic::new(
                    key,
                    key_span,
                    format!("profile key `{dotted}` must be `stage.parameter`"),
                )
                .with_help("write e.g. `\"train.epochs\" = 1`"),
            );
            return None;
        }
        let stage = segments[0].clone();
        let param = segments[1].clone();
        let field = segments[2..].to_vec();
        let done = |value: Located| {
            Some(Override {
                stage: stage.clone(),
                param: param.clone(),
                field: field.clone(),
                value,
                key: key.to_string(),
            })
        };
        if stage == "flow" {
            if !own {
                self.err(
                    Diagnostic::new(
                        key,
                        key_span,
                        format!(
                            "`flow.{param}` can be overridden by the manifest's own profiles only"
                        ),
                    )
                    .with_help("move the line to the profile in the manifest"),
                );
                return None;
            }
            match param.as_str() {
                "seed" if field.is_empty() => {
                    self.seed(key, &v);
                }
                "replicates" if field.is_empty() => {
                    self.replicates(key, &v);
                }
                "results" | "description" if field.is_empty() => match &v.value {
                    Value::Str(s) if param == "results" => {
                        if let Some(problem) = check_results_path(s) {
                            self.err(Diagnostic::new(key, v.span.clone(), problem));
                        }
                    }
                    Value::Str(_) => {}
                    other => self.err(type_error(key, v.span.clone(), "a string", other)),
                },
                _ => {
                    self.err(
                        Diagnostic::new(
                            key,
                            key_span,
                            format!("`flow.{param}` cannot be overridden by a profile"),
                        )
                        .with_help(
                            "profiles may set `flow.seed`, `flow.replicates`, `flow.results` and \
                             `flow.description`",
                        ),
                    );
                    return None;
                }
            }
            return done(v);
        }
        let Some(decl) = m.stage(&stage) else {
            self.err(
                Diagnostic::new(
                    key,
                    key_span,
                    format!("profile overrides unknown stage `{stage}`"),
                )
                .suggest(&stage, m.stages.iter().map(|s| s.name.as_str())),
            );
            return None;
        };
        let kind = self.registry.get(&decl.kind)?; // an unknown kind is already reported
        let specs = kind.params();
        if param == "seed" && field.is_empty() {
            self.seeds(key, &v);
            return done(v);
        }
        let Some(spec) = specs.iter().find(|s| s.name == param) else {
            self.err(
                Diagnostic::new(
                    key,
                    key_span,
                    format!(
                        "stage `{stage}` (kind `{}`) has no parameter `{param}`",
                        decl.kind
                    ),
                )
                .suggest(&param, specs.iter().map(|s| s.name)),
            );
            return None;
        };
        let mut spec = spec.clone();
        for f in &field {
            let ParamType::Table(fields) = &spec.ty else {
                self.err(Diagnostic::new(
                    key,
                    key_span.clone(),
                    format!("`{stage}.{param}` is not a table, so `{dotted}` names nothing"),
                ));
                return None;
            };
            match fields.iter().find(|s| s.name == f) {
                Some(inner) => spec = inner.clone(),
                None => {
                    self.err(
                        Diagnostic::new(
                            key,
                            key_span.clone(),
                            format!("`{stage}.{param}` has no field `{f}`"),
                        )
                        .suggest(f, fields.iter().map(|s| s.name)),
                    );
                    return None;
                }
            }
        }
        let v = self.check_param(key, &spec, v, field.is_empty());
        done(v)
    }
}

#[cfg(test)]
mod tests {
    use crate::manifest::tests::{errors, load};
    use crate::value::Value;

    const BASE: &str = "[flow]\nname = \"t\"\n[stages.s]\nkind = \"src\"\n\
                        [stages.m]\nkind = \"mix\"\nreal = \"s\"\ngenerated = \"s\"\nratio = 0.5\n";

    /// Each row: the lines of `[profile.p]`, and a part of the error (empty: none).
    #[test]
    fn profile_lines_are_checked() {
        let rows = [
            ("\"s.n\" = 2", ""),
            ("s.n = 2", ""),
            ("\"m.lora.rank\" = 4", ""),
            ("m.lora = { rank = 4, alpha = 2 }", ""),
            ("m.lora.rank = 4", ""),
            ("\"s.seed\" = 3", ""),
            ("\"flow.seed\" = 3", ""),
            ("\"flow.description\" = \"d\"", ""),
            ("\"s\" = 2", "profile key `s` must be `stage.parameter`"),
            ("\"x.n\" = 2", "profile overrides unknown stage `x`"),
            ("\"ss.n\" = 2", "did you mean `s`?"),
            (
                "\"s.nn\" = 2",
                "stage `s` (kind `src`) has no parameter `nn`",
            ),
            ("\"s.n\" = 0", "`n` must be at least 1, found 0"),
            ("\"s.n\" = [1, 2]", ""),
            ("\"s.seed\" = -1", "seed must be a non-negative integer"),
            (
                "\"s.n.x\" = 1",
                "`s.n` is not a table, so `s.n.x` names nothing",
            ),
            ("\"m.lora.rnak\" = 1", "`m.lora` has no field `rnak`"),
            (
                "\"m.lora.rank\" = [1, 2]",
                "`rank` must be an integer, found array",
            ),
            (
                "\"flow.name\" = \"x\"",
                "`flow.name` cannot be overridden by a profile",
            ),
            ("\"flow.seed\" = \"x\"", "`seed` must be an integer"),
            ("\"flow.description\" = 1", "`description` must be a string"),
            (
                "\"s.n\" = 2\ns.n = 3",
                "`s.n` in profile `p` is defined twice",
            ),
        ];
        for (lines, expected) in rows {
            let err = errors(&format!("{BASE}[profile.p]\n{lines}\n"));
            if expected.is_empty() {
                assert!(err.is_empty(), "{lines}: {err}");
            } else {
                assert!(err.contains(expected), "{lines}: {err}");
            }
        }
    }

    #[test]
    fn profiles_keep_their_lines_in_order() {
        let m = load(&format!(
            "{BASE}[profile.cpu]\n[profile.tiny]\n\"s.n\" = 2\n\"m.lora.rank\" = 4\n\"flow.seed\" = 9\n"
        ));
        assert_eq!(m.profiles.keys().collect::<Vec<_>>(), ["cpu", "tiny"]);
        assert!(m.profiles["cpu"].is_empty());
        let tiny: Vec<(&str, &str, &[String], &Value)> = m.profiles["tiny"]
            .iter()
            .map(|o| {
                (
                    o.stage.as_str(),
                    o.param.as_str(),
                    o.field.as_slice(),
                    &o.value.value,
                )
            })
            .collect();
        let rank = ["rank".to_string()];
        assert_eq!(
            tiny,
            [
                ("s", "n", &[][..], &Value::Int(2)),
                ("m", "lora", &rank[..], &Value::Int(4)),
                ("flow", "seed", &[][..], &Value::Int(9)),
            ]
        );
    }
}
