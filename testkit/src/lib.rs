//! Test support shared by flow's crates (a dev-dependency only).
//!
//! A test whose real data, model or server is missing skips visibly, or fails where the
//! input must be there: [`skip_or_fail!`]. The rule is [`data_required`]: `FLOW_REQUIRE_DATA`
//! set to anything but ``, `0` or `false` (`.ci/run` sets it), else `CI` set likewise;
//! `FLOW_REQUIRE_DATA=0` skips even on CI.

pub mod moto;

use std::io::Write;
use std::path::{Path, PathBuf};

/// Whether a missing test input fails the test instead of skipping it.
pub fn data_required() -> bool {
    required_by(
        std::env::var("FLOW_REQUIRE_DATA").ok().as_deref(),
        std::env::var("CI").ok().as_deref(),
    )
}

fn required_by(require: Option<&str>, ci: Option<&str>) -> bool {
    let on = |v: &str| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false");
    match require {
        Some(v) => on(v),
        None => ci.is_some_and(on),
    }
}

/// `skip_or_fail!(what)`: the running test cannot run for want of `what` (what is missing
/// and how to provide it). See [`skip_or_fail`]; the macro names the calling crate.
#[macro_export]
macro_rules! skip_or_fail {
    ($what:expr) => {
        $crate::skip_or_fail(env!("CARGO_CRATE_NAME"), $what)
    };
}

/// Where the input must be there ([`data_required`]) this panics; else the skip is shown on
/// the terminal (written to stderr directly, which libtest does not capture, unlike
/// `eprintln!`) and appended to [`skipped_tests_file`], and the caller returns.
pub fn skip_or_fail(krate: &str, what: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("<unnamed>")
        .to_string();
    if data_required() {
        panic!(
            "{krate} {test}: missing test input: {what}\n(FLOW_REQUIRE_DATA or CI is set, so \
             this fails instead of skipping; FLOW_REQUIRE_DATA=0 skips)"
        );
    }
    let line = format!("SKIPPED {krate} {test}: {what}");
    let _ = writeln!(std::io::stderr().lock(), "{line}");
    record_skip(&skipped_tests_file(), &line);
}

/// Where skips are listed, one line each, appended across runs (each line starts with its
/// Unix time): `FLOW_SKIPPED_FILE`, else `<target dir>/flow-skipped-tests.txt` (the target
/// dir is the folder above the test binary that cargo marks with `CACHEDIR.TAG`).
pub fn skipped_tests_file() -> PathBuf {
    if let Some(p) = std::env::var_os("FLOW_SKIPPED_FILE").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            exe.ancestors()
                .skip(1)
                .find(|d| d.join("CACHEDIR.TAG").is_file())
                .map(Path::to_path_buf)
        })
        .or_else(|| std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from))
        .unwrap_or_else(std::env::temp_dir)
        .join("flow-skipped-tests.txt")
}

fn record_skip(file: &Path, line: &str) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // One write per line: parallel tests append whole lines.
    let _ = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .and_then(|mut f| f.write_all(format!("{now} {line}\n").as_bytes()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_input_fails_where_required_and_is_recorded_where_skipped() {
        assert!(!required_by(None, None));
        assert!(required_by(Some("1"), None));
        assert!(required_by(None, Some("true")));
        assert!(
            !required_by(Some("0"), Some("true")),
            "FLOW_REQUIRE_DATA=0 wins"
        );
        assert!(!required_by(None, Some("")));
        assert!(!required_by(Some("false"), None));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("skipped.txt");
        record_skip(&file, "SKIPPED a b: one");
        record_skip(&file, "SKIPPED a c: two");
        let text = std::fs::read_to_string(&file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[1].ends_with(" SKIPPED a c: two"), "{text}");
    }
}
