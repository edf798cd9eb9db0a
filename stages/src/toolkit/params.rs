//! Reading resolved parameters the schema has already validated, for the
//! kinds' `Settings::from_params`.
//!
//! The engine fills every declared default in before a stage runs (and
//! `testutil::params` does the same in tests), so a defaulted
//! parameter is read with a `require_*` and its default is written once, in
//! its `ParamSpec`. Fields of a table parameter and of resource entries are
//! not filled in: [`field`] falls back to the default their spec declares.

use std::collections::BTreeMap;

use flow_engine::{ParamSpec, Params, StageError, Value};

fn internal(name: &str, what: &str) -> StageError {
    StageError::Other(format!("internal: `{name}` {what}"))
}

/// A count (`int`, `min >= 0`, required or defaulted) as usize.
pub fn count(params: &Params, name: &str) -> Result<usize, StageError> {
    let v = params.require_int(name)?;
    usize::try_from(v).map_err(|_| internal(name, &format!("= {v} is negative")))
}

/// An optional count (`int`, `min = 1`) as usize.
pub fn opt_count(params: &Params, name: &str) -> Result<Option<usize>, StageError> {
    params
        .int(name)
        .map(|v| usize::try_from(v).map_err(|_| internal(name, &format!("= {v} is negative"))))
        .transpose()
}

/// A string (required or defaulted), owned.
pub fn string(params: &Params, name: &str) -> Result<String, StageError> {
    params.require_str(name).map(str::to_string)
}

/// A boolean (required or defaulted).
pub fn flag(params: &Params, name: &str) -> Result<bool, StageError> {
    params
        .bool(name)
        .ok_or_else(|| internal(name, "is missing (not a boolean)"))
}

/// A list of strings (`List(Str)` or `List(Choice)`); missing means empty.
pub fn str_list(params: &Params, name: &str) -> Result<Vec<String>, StageError> {
    let Some(value) = params.get(name) else {
        return Ok(Vec::new());
    };
    let items = value
        .as_list()
        .ok_or_else(|| internal(name, "is not a list"))?;
    items
        .iter()
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| internal(name, "has a non-string item"))
        })
        .collect()
}

/// Field `name` of a table (a table parameter, a `[models.*]` or
/// `[generators.*]` entry): its value, else the default `specs` declare
/// for it, else `None`.
pub fn field<'a>(
    table: Option<&'a BTreeMap<String, Value>>,
    specs: &'a [ParamSpec],
    name: &str,
) -> Option<&'a Value> {
    table.and_then(|t| t.get(name)).or_else(|| {
        specs
            .iter()
            .find(|s| s.name == name)
            .and_then(|s| s.default.as_ref())
    })
}

/// A string field of a table, as given (no default).
pub fn table_str(table: &BTreeMap<String, Value>, name: &str) -> Option<String> {
    table.get(name).and_then(Value::as_str).map(str::to_string)
}
