//! Where a manifest's cache and results live.
//!
//! The project root is the nearest folder above the manifest that holds a
//! `.flow/` cache or a `.git` checkout (so `manifests/fig5.toml` in a
//! repository caches into the repository's `.flow/`), else the manifest's own
//! folder. The cache can be moved with `--cache-dir` / `FLOW_CACHE_DIR`.

use std::path::{Path, PathBuf};

pub fn project_root(manifest: &Path) -> PathBuf {
    let dir = manifest
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
    find_root_from(&dir).unwrap_or(dir)
}

/// The nearest ancestor of `start` (inclusive) holding `.flow/` or `.git`.
pub fn find_root_from(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .find(|d| d.join(".flow").is_dir() || d.join(".git").exists())
        .map(Path::to_path_buf)
}

pub fn default_cache_dir(root: &Path) -> PathBuf {
    root.join(".flow")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_the_checkout_above_the_manifest() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(".git")).unwrap();
        std::fs::create_dir_all(dir.path().join("manifests")).unwrap();
        let m = dir.path().join("manifests/a.toml");
        let root = project_root(&m);
        assert_eq!(root, std::fs::canonicalize(dir.path()).unwrap());
    }
}
