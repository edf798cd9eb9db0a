//! Downloads from the Hugging Face hub, kept under the cache folder.
//!
//! The download itself is `flow_models::hub_download`, shared with the
//! models: TLS is rustls verified by the operating system's certificate
//! store, `HTTPS_PROXY`/`ALL_PROXY` are honoured, `HF_ENDPOINT` selects a hub
//! mirror, and `HF_TOKEN` goes only to that endpoint's host (over HTTPS or
//! loopback), never along a redirect to another host. A file is checked
//! against the hub's sha256 or size and removed when it does not match.

use std::path::{Path, PathBuf};

use flow_engine::StageError;

/// The local path of a dataset file of `repo` at `revision`, downloading it
/// on first use. Never run from tests: this machine has no route to the hub.
pub fn dataset_file(
    env: &flow_engine::Env,
    repo: &str,
    revision: &str,
    file: &str,
) -> Result<PathBuf, StageError> {
    let dest = crate::toolkit::cache_dirs::hub_dataset_file(env, repo, revision, file);
    if dest.is_file() {
        return Ok(dest);
    }
    let path = format!("datasets/{repo}/resolve/{revision}/{file}");
    download(&path, &dest)?;
    Ok(dest)
}

#[cfg(feature = "hub")]
fn download(path: &str, dest: &Path) -> Result<(), StageError> {
    flow_models::hub_download(path, dest).map_err(|e| {
        StageError::Other(format!(
            "hub download failed: {e} (offline? set FLOW_DATA_DIR or --data-dir to a local \
             mirror instead; layout: {})",
            super::LAYOUT
        ))
    })
}

#[cfg(not(feature = "hub"))]
fn download(path: &str, _dest: &Path) -> Result<(), StageError> {
    Err(StageError::invalid(format!(
        "cannot download {path} from the hub: flow-stages was built without the `hub` feature; set \
         FLOW_DATA_DIR or --data-dir to a local mirror (layout: {})",
        super::LAYOUT
    )))
}
