//! What a model entry may name. A hub repository, a revision, a file and a
//! package become folders and files under the models folder, so none of
//! them may climb out of it (`..`, an absolute path, a backslash).

use crate::{ModelError, ModelSpec, Result};

/// Checks the `hub`, `revision`, `file` and `package` of `spec`; the error
/// names the model, the key and what is wrong with its value.
pub(crate) fn check_spec(spec: &ModelSpec) -> Result<()> {
    let bad = |key: &str, value: &str, why: String| {
        ModelError::Invalid(format!(
            "model `{}`: `{key}` = {value:?} is not allowed: {why}",
            crate::label(spec)
        ))
    };
    if let Some(v) = &spec.hub {
        check_hub(v).map_err(|why| bad("hub", v, why))?;
    }
    if let Some(v) = &spec.revision {
        check_revision(v).map_err(|why| bad("revision", v, why))?;
    }
    if let Some(v) = &spec.file {
        check_rel_path(v).map_err(|why| bad("file", v, why))?;
    }
    if let Some(v) = &spec.package {
        check_package(v).map_err(|why| bad("package", v, why))?;
    }
    Ok(())
}

/// A path inside a repository or package: relative, `/`-separated, no
/// empty, `.` or `..` segment, no backslash or control character.
pub(crate) fn check_rel_path(p: &str) -> std::result::Result<(), String> {
    if p.is_empty() {
        return Err("it is empty".into());
    }
    if p.chars().any(|c| c.is_control()) {
        return Err("it has a control character".into());
    }
    if p.contains('\\') {
        return Err("it has a backslash (paths use `/`)".into());
    }
    let b = p.as_bytes();
    if p.starts_with('/') || (b.len() >= 2 && b[1] == b':' && b[0].is_ascii_alphabetic()) {
        return Err("it is an absolute path (give a path inside the repository)".into());
    }
    for seg in p.split('/') {
        match seg {
            "" => return Err("it has an empty path segment (`//` or a trailing `/`)".into()),
            "." | ".." => {
                return Err(format!(
                    "it has a `{seg}` segment, which would lead out of the models folder"
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// A Hugging Face repository id: `owner/name` (or a legacy `name`), each
/// part letters, digits, `-`, `_` and `.`, not starting or ending with `-`
/// or `.`, without `--` or `..`, at most 96 characters.
pub(crate) fn check_hub(id: &str) -> std::result::Result<(), String> {
    let parts: Vec<&str> = id.split('/').collect();
    if parts.len() > 2 {
        return Err("a repository is `owner/name`".into());
    }
    for part in parts {
        if part.is_empty() {
            return Err("a repository is `owner/name`, neither part empty".into());
        }
        if part.len() > 96 {
            return Err("a part is longer than 96 characters".into());
        }
        if let Some(c) = part
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return Err(format!(
                "it has {c:?}; a repository id has letters, digits, `-`, `_` and `.`"
            ));
        }
        if part.contains("..") || part.contains("--") {
            return Err("it has `..` or `--`".into());
        }
        if part.starts_with(['-', '.']) || part.ends_with(['-', '.']) {
            return Err("a part starts or ends with `-` or `.`".into());
        }
    }
    Ok(())
}

/// A branch, tag, commit or `refs/pr/N`: a relative path (see
/// [`check_rel_path`]) of letters, digits and `-_./+@=~`.
pub(crate) fn check_revision(rev: &str) -> std::result::Result<(), String> {
    check_rel_path(rev)?;
    if rev.len() > 256 {
        return Err("it is longer than 256 characters".into());
    }
    if let Some(c) = rev.chars().find(|c| {
        !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | '+' | '@' | '=' | '~'))
    }) {
        return Err(format!(
            "it has {c:?}; a revision has letters, digits and `-_./+@=~`"
        ));
    }
    if rev.split('/').any(|seg| seg.starts_with('.')) {
        return Err("a segment starts with `.`".into());
    }
    Ok(())
}

/// A PyPI project name: letters, digits, `-`, `_`, `.`, starting and ending
/// with a letter or digit.
pub(crate) fn check_package(name: &str) -> std::result::Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(
            "a PyPI project name has letters, digits, `-`, `_` and `.`, and starts and ends \
             with a letter or digit"
                .into(),
        )
    }
}
