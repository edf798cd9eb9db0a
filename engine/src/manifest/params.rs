//! Parameter values against their declarations: a list given for a scalar fans out (each
//! item checked, no item twice), anything else gets the scalar checks of
//! [`crate::schema::check_scalar`]. Used by stages, resources and profiles alike.

use std::collections::HashSet;

use super::{Loader, Located};
use crate::diag::Diagnostic;
use crate::schema::{check_scalar, type_error, ParamSpec};
use crate::value::Value;

impl Loader<'_> {
    /// Type and bound checks; widens integers where numbers are expected. A list for a
    /// scalar is a fan-out where `may_fan_out`, else a type error.
    pub(super) fn check_param(
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
            let mut seen = HashSet::new();
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

    /// A seed: a non-negative integer.
    /// A stage's `seed`: one seed, or a list of seeds that fans the stage out on an axis
    /// named `seed` (replicates). Returns the seeds (one for a plain seed).
    pub(super) fn seeds(&mut self, path: &str, v: &Located) -> Option<Vec<u64>> {
        let Value::List(items) = &v.value else {
            return self.seed(path, v).map(|s| vec![s]);
        };
        if items.is_empty() {
            self.err(Diagnostic::new(
                path,
                v.span.clone(),
                "an empty list of seeds fans out to no instances",
            ));
            return None;
        }
        let mut seeds = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let span = v.item_spans.get(i).cloned().unwrap_or(v.span.clone());
            let one = Located {
                value: item.clone(),
                span: span.clone(),
                item_spans: Vec::new(),
            };
            let seed = self.seed(path, &one)?;
            if seeds.contains(&seed) {
                self.err(Diagnostic::new(
                    path,
                    span,
                    format!("seed {seed} appears twice in the list"),
                ));
                return None;
            }
            seeds.push(seed);
        }
        Some(seeds)
    }

    pub(super) fn seed(&mut self, path: &str, v: &Located) -> Option<u64> {
        self.int_in(path, v, 0..=i64::MAX, "seed must be a non-negative integer")
            .map(|i| i as u64)
    }

    /// An integer in `range`; else an error at `path`: "`out_of_range`, found N", or a type
    /// error for a value that is not an integer.
    pub(super) fn int_in(
        &mut self,
        path: &str,
        v: &Located,
        range: std::ops::RangeInclusive<i64>,
        out_of_range: &str,
    ) -> Option<i64> {
        match v.value {
            Value::Int(i) if range.contains(&i) => Some(i),
            Value::Int(i) => {
                self.err(Diagnostic::new(
                    path,
                    v.span.clone(),
                    format!("{out_of_range}, found {i}"),
                ));
                None
            }
            ref other => {
                self.err(type_error(path, v.span.clone(), "an integer", other));
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::manifest::tests::errors;

    /// Each row: a stage written in TOML, and a part of its error (empty: none).
    #[test]
    fn fan_outs_and_seeds() {
        let rows = [
            ("n = [1, 2, 3]", ""),
            ("n = []", "an empty array fans out to no instances"),
            ("n = [1, 0]", "`n` must be at least 1, found 0"),
            ("n = [1, 2, 1]", "`1` appears twice in the fan-out"),
            ("task = [\"a\", \"b\"]", ""),
            (
                "task = [\"a\", \"c\"]",
                "must be one of `a`, `b`, found `c`",
            ),
            ("seed = 3", ""),
            ("seed = -1", "seed must be a non-negative integer, found -1"),
            ("seed = \"x\"", "`seed` must be an integer"),
            ("seed = [1, 2]", ""),
            ("seed = [1, 2, 1]", "seed 1 appears twice in the list"),
            (
                "seed = []",
                "an empty list of seeds fans out to no instances",
            ),
            (
                "seed = [1, -2]",
                "seed must be a non-negative integer, found -2",
            ),
        ];
        for (line, expected) in rows {
            let err = errors(&format!(
                "[flow]\nname = \"t\"\n[stages.s]\nkind = \"src\"\n{line}\n"
            ));
            if expected.is_empty() {
                assert!(err.is_empty(), "{line}: {err}");
            } else {
                assert!(err.contains(expected), "{line}: {err}");
            }
        }
    }

    /// The error points at the offending item of a fan-out, not at the whole list.
    #[test]
    fn fan_out_errors_point_at_the_item() {
        let err = errors("[flow]\nname = \"t\"\n[stages.s]\nkind = \"src\"\nn = [1, 0]\n");
        assert!(err.contains("t.toml:5:9"), "{err}");
    }
}
