//! Every manifest in manifests/ passes `flow check` under no profile and under each
//! profile it declares: a profile override naming a stage or parameter that is not there,
//! a bad value or a cycle would otherwise reach users only when they run that profile
//! (most profiles are hours long and never run in CI).

use std::path::PathBuf;
use std::process::Command;

fn shipped_manifests() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("manifests");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("manifests/ exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

/// The names of the `[profile.NAME]` tables, read with toml rather than by the engine, so a
/// profile the engine failed to see is still checked.
fn profiles(path: &PathBuf) -> Vec<String> {
    let text = std::fs::read_to_string(path).expect("readable manifest");
    let doc: toml::Table = text.parse().expect("manifest is TOML");
    match doc.get("profile") {
        Some(toml::Value::Table(t)) => t.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

fn check(path: &PathBuf, profile: Option<&str>) -> Result<(), String> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flow"));
    cmd.arg("check").arg(path);
    if let Some(p) = profile {
        cmd.args(["--profile", p]);
    }
    let out = cmd.output().expect("flow runs");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} --profile {}: exit {:?}\n{}",
            path.display(),
            profile.unwrap_or("<none>"),
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

#[test]
fn every_manifest_checks_under_every_profile() {
    let manifests = shipped_manifests();
    assert!(
        manifests.len() >= 13,
        "expected a manifest per figure and table, found {}",
        manifests.len()
    );
    let mut failures = Vec::new();
    let mut checked = 0;
    for m in &manifests {
        let names = profiles(m);
        for profile in std::iter::once(None).chain(names.iter().map(|p| Some(p.as_str()))) {
            checked += 1;
            if let Err(e) = check(m, profile) {
                failures.push(e);
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(checked > manifests.len(), "no profile was checked");
}

#[test]
fn figure_manifests_have_the_tiny_cpu_and_paper_profiles() {
    for m in shipped_manifests() {
        let name = m.file_stem().unwrap().to_string_lossy().into_owned();
        if !(name.starts_with("fig") || name.starts_with("table")) {
            continue;
        }
        let have = profiles(&m);
        for needed in ["tiny", "cpu", "paper"] {
            assert!(
                have.iter().any(|p| p == needed),
                "{} has no `{needed}` profile (has {have:?})",
                m.display()
            );
        }
    }
}
