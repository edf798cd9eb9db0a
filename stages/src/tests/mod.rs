//! Tests across modules: the layout rule (a kind never imports another
//! kind; contracts and toolkit import none), and chains of kinds, which no
//! kind's own tests may build.

mod generation;
mod scoring;
mod training;
mod window;

use std::path::{Path, PathBuf};

/// Every `.rs` file below `dir`, with its path relative to `dir`.
fn rust_files(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                out.push((path.strip_prefix(dir).unwrap().to_path_buf(), text));
            }
        }
    }
    out.sort();
    out
}

fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The kind modules `text` names: after `kinds::` (one, or a `{...}`
/// group), and after a `super::` chain when the name is a kind's.
fn kinds_named(text: &str) -> Vec<String> {
    let mut named = Vec::new();
    for (i, _) in text.match_indices("kinds::") {
        let rest = &text[i + "kinds::".len()..];
        match rest.strip_prefix('{') {
            Some(group) => {
                let group = &group[..group.find('}').unwrap_or(group.len())];
                named.extend(group.split(',').map(|m| ident(m.trim()).to_string()));
            }
            None => named.push(ident(rest).to_string()),
        }
    }
    for (i, _) in text.match_indices("super::") {
        if text[..i].ends_with("super::") {
            continue; // the middle of a chain, counted from its start
        }
        let mut rest = &text[i..];
        while let Some(r) = rest.strip_prefix("super::") {
            rest = r;
        }
        let name = ident(rest);
        if crate::KIND_MODULES.contains(&name) {
            named.push(name.to_string());
        }
    }
    named.retain(|n| !n.is_empty());
    named
}

#[test]
fn kinds_import_no_other_kind() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut problems = Vec::new();
    let mut seen = Vec::new();
    for (rel, text) in rust_files(&src.join("kinds")) {
        let first = rel.components().next().unwrap().as_os_str();
        let own = first.to_str().unwrap().trim_end_matches(".rs").to_string();
        if !crate::KIND_MODULES.contains(&own.as_str()) {
            problems.push(format!(
                "kinds/{}: `{own}` is not a registered kind (lib.rs)",
                rel.display()
            ));
        }
        for other in kinds_named(&text).into_iter().filter(|k| *k != own) {
            problems.push(format!(
                "kinds/{} (kind `{own}`) uses kind `{other}`: move what they share to \
                 contracts/ or toolkit/",
                rel.display()
            ));
        }
        seen.push(own);
    }
    for kind in crate::KIND_MODULES {
        if !seen.iter().any(|s| s == kind) {
            problems.push(format!("kind `{kind}` has no module under kinds/"));
        }
    }
    for shared in ["contracts", "toolkit"] {
        for (rel, text) in rust_files(&src.join(shared)) {
            for kind in kinds_named(&text) {
                problems.push(format!(
                    "{shared}/{} uses kind `{kind}`: shared code must not depend on a kind",
                    rel.display()
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_layout_check_sees_imports() {
    let named = kinds_named(
        "use crate::kinds::embed::Row;\nuse crate::kinds::{mix, score::Score};\n\
         use super::super::topics::X;\nuse super::*;\nuse super::Settings;",
    );
    assert_eq!(named, ["embed", "mix", "score", "topics"]);
}
