//! Every manifest in tests/malformed/ must be rejected by `flow check` with
//! its own clear error: the expected text (first line `# expect: ...`), the
//! file with line and column, exit code 2, and never a panic.

use std::path::PathBuf;
use std::process::Command;

fn corpus() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/malformed");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/malformed exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

/// The `# expect:` and optional `# at: LINE:COL` header lines.
fn expectations(text: &str) -> (String, Option<String>) {
    let mut expect = None;
    let mut at = None;
    for line in text.lines().take_while(|l| l.starts_with('#')) {
        if let Some(e) = line.strip_prefix("# expect:") {
            expect = Some(e.trim().to_string());
        }
        if let Some(a) = line.strip_prefix("# at:") {
            at = Some(a.trim().to_string());
        }
    }
    (
        expect.expect("each corpus file starts with `# expect:`"),
        at,
    )
}

#[test]
fn corpus_is_large_enough() {
    assert!(
        corpus().len() >= 30,
        "the corpus must hold at least 30 manifests"
    );
}

#[test]
fn every_malformed_manifest_gets_its_own_located_error() {
    let mut failures = Vec::new();
    for path in corpus() {
        let text = std::fs::read_to_string(&path).expect("readable");
        let (expect, at) = expectations(&text);
        let out = Command::new(env!("CARGO_BIN_EXE_flow"))
            .arg("check")
            .arg(&path)
            .env_remove("RUST_LOG")
            .output()
            .expect("flow runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let located = format!("{}:", path.display());
        let mut problems = Vec::new();
        if out.status.code() != Some(2) {
            problems.push(format!("exit code {:?}, expected 2", out.status.code()));
        }
        if stderr.contains("panicked") {
            problems.push("panicked".to_string());
        }
        if !stderr.contains(&expect) {
            problems.push(format!("missing `{expect}`"));
        }
        match &at {
            Some(at) => {
                if !stderr.contains(&format!("{located}{at}")) {
                    problems.push(format!("missing location {located}{at}"));
                }
            }
            None => {
                let has_location = stderr.match_indices(&located).any(|(i, _)| {
                    let rest = &stderr[i + located.len()..];
                    let mut parts = rest.splitn(3, ':');
                    let line = parts.next().unwrap_or("");
                    let col = parts.next().unwrap_or("");
                    !line.is_empty()
                        && line.chars().all(|c| c.is_ascii_digit())
                        && col.chars().next().is_some_and(|c| c.is_ascii_digit())
                });
                if !has_location {
                    problems.push("no file:line:col location".to_string());
                }
            }
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{name}: {}\n--- stderr ---\n{stderr}",
                problems.join("; ")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
