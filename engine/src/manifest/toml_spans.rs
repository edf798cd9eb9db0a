//! TOML with spans: the parser's values become [`Value`]s that remember where they were
//! written ([`Located`]), with spans moved into the manifest's span space (each file of a
//! manifest has its own range of offsets; see [`crate::diag::SourceFile`]).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ops::Range;

use toml::de::DeValue;
use toml::Spanned;

use super::{Loader, Located};
use crate::diag::Diagnostic;
use crate::value::Value;

/// One `key = value` of a TOML table, with the spans the parser gives (in its file).
pub(super) type Entry<'i> = (Spanned<Cow<'i, str>>, Spanned<DeValue<'i>>);

impl Loader<'_> {
    /// Expects a table; reports otherwise.
    pub(super) fn table<'i>(
        &mut self,
        key: &str,
        value: Spanned<DeValue<'i>>,
    ) -> Option<Vec<Entry<'i>>> {
        let span = self.at(value.span());
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

    /// Converts a TOML value, rejecting what parameters never hold (datetimes).
    pub(super) fn value(&mut self, key: &str, value: Spanned<DeValue<'_>>) -> Option<Located> {
        match located(value, self.base) {
            Ok(v) => Some(v),
            Err((span, msg)) => {
                self.err(Diagnostic::new(key, span, msg));
                None
            }
        }
    }
}

/// A TOML value with its span and its items' spans, moved by `base`.
fn located(value: Spanned<DeValue<'_>>, base: usize) -> Result<Located, (Range<usize>, String)> {
    let shift = |s: Range<usize>| s.start + base..s.end + base;
    let span = shift(value.span());
    let mut item_spans = Vec::new();
    if let DeValue::Array(items) = value.get_ref() {
        item_spans = items.iter().map(|i| shift(i.span())).collect();
    }
    match convert(value) {
        Ok(v) => Ok(Located {
            value: v,
            span,
            item_spans,
        }),
        Err((span, msg)) => Err((shift(span), msg)),
    }
}

/// How a TOML value is named in messages ("found an array").
pub(super) fn de_type(v: &DeValue<'_>) -> &'static str {
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

/// A TOML value as a [`Value`]; the error has the span (in the value's file) of what
/// cannot be one.
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

/// The value of `v = TOML` (for tests of checks that take values).
#[cfg(test)]
pub(crate) fn value_of(toml: &str) -> Value {
    let text = format!("v = {toml}");
    let doc = toml::de::DeTable::parse(&text).unwrap_or_else(|e| panic!("{toml}: {e}"));
    let (_, v) = doc.into_inner().into_iter().next().expect("one key");
    convert(v).unwrap_or_else(|(_, e)| panic!("{toml}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The located value of `v = TOML`, as if its file started at `base`.
    fn located_at(toml: &str, base: usize) -> Result<Located, (Range<usize>, String)> {
        let text = format!("v = {toml}");
        let doc = toml::de::DeTable::parse(&text).unwrap();
        let (_, v) = doc.into_inner().into_iter().next().unwrap();
        located(v, base)
    }

    /// Each row: a value as written, and what it converts to (or a part of the error).
    #[test]
    fn toml_values_convert_or_say_why_not() {
        let rows: &[(&str, Result<Value, &str>)] = &[
            ("1", Ok(Value::Int(1))),
            ("0x10", Ok(Value::Int(16))),
            ("-2", Ok(Value::Int(-2))),
            ("1.5", Ok(Value::Float(1.5))),
            ("true", Ok(Value::Bool(true))),
            ("\"a\"", Ok(Value::Str("a".into()))),
            (
                "[1, \"a\"]",
                Ok(Value::List(vec![Value::Int(1), Value::Str("a".into())])),
            ),
            (
                "{ b = 1, a = [] }",
                Ok(Value::Table(BTreeMap::from([
                    ("a".to_string(), Value::List(vec![])),
                    ("b".to_string(), Value::Int(1)),
                ]))),
            ),
            ("nan", Err("`nan` is not a finite number")),
            ("-inf", Err("`-inf` is not a finite number")),
            ("1979-05-27", Err("datetimes are not supported here")),
            ("[1, 1979-05-27]", Err("datetimes are not supported here")),
            ("18446744073709551616", Err("does not fit in 64 bits")),
        ];
        for (toml, expected) in rows {
            let got = located_at(toml, 0).map(|l| l.value);
            match (&got, expected) {
                (Ok(v), Ok(e)) => assert_eq!(v, e, "{toml}"),
                (Err((_, msg)), Err(part)) => assert!(msg.contains(part), "{toml}: {msg}"),
                _ => panic!("{toml}: got {got:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn spans_are_moved_into_the_manifests_span_space() {
        // `v = [1, 2]`: the array starts at 4, its items at 5 and 8.
        let l = located_at("[1, 2]", 0).unwrap();
        assert_eq!(
            (l.span.clone(), l.item_spans.clone()),
            (4..10, vec![5..6, 8..9])
        );
        let l = located_at("[1, 2]", 100).unwrap();
        assert_eq!((l.span, l.item_spans), (104..110, vec![105..106, 108..109]));
        // An error inside the array points at the item, also moved.
        let (span, _) = located_at("[1, nan]", 100).unwrap_err();
        assert_eq!(span, 108..111);
    }
}
