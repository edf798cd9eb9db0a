//! Reading resolved parameters the schema has already validated.

use flow_engine::{Params, StageError};

/// An optional count (`int`, `min = 1`) as usize.
pub fn opt_count(params: &Params, name: &str) -> Result<Option<usize>, StageError> {
    params
        .int(name)
        .map(|v| {
            usize::try_from(v)
                .map_err(|_| StageError::Other(format!("internal: `{name}` = {v} is negative")))
        })
        .transpose()
}

/// A list of strings (`List(Str)` or `List(Choice)`); missing means empty.
pub fn str_list(params: &Params, name: &str) -> Result<Vec<String>, StageError> {
    let Some(value) = params.get(name) else {
        return Ok(Vec::new());
    };
    let items = value
        .as_list()
        .ok_or_else(|| StageError::Other(format!("internal: `{name}` is not a list")))?;
    items
        .iter()
        .map(|v| {
            v.as_str().map(str::to_string).ok_or_else(|| {
                StageError::Other(format!("internal: `{name}` has a non-string item"))
            })
        })
        .collect()
}
