//! Downloads from the Hugging Face hub, kept under the cache folder.
//!
//! TLS is rustls verified by the operating system's certificate store
//! (rustls-platform-verifier), so a corporate proxy's root CA installed on
//! the machine is trusted; `HTTPS_PROXY`/`ALL_PROXY` are honoured by ureq,
//! `HF_ENDPOINT` selects a hub mirror and `HF_TOKEN` is sent if set.

use std::path::{Path, PathBuf};

use flow_engine::StageError;

/// The local path of a dataset file of `repo` at `revision`, downloading it
/// on first use. Never run from tests: this machine has no route to the hub.
pub fn dataset_file(
    cache_dir: &Path,
    repo: &str,
    revision: &str,
    file: &str,
) -> Result<PathBuf, StageError> {
    let dest = cache_dir
        .join("downloads")
        .join("huggingface")
        .join("datasets")
        .join(repo)
        .join(revision)
        .join(file);
    if dest.is_file() {
        return Ok(dest);
    }
    let endpoint =
        std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".to_string());
    let url = format!(
        "{}/datasets/{repo}/resolve/{revision}/{file}",
        endpoint.trim_end_matches('/')
    );
    download(&url, &dest)?;
    Ok(dest)
}

#[cfg(feature = "hub")]
fn download(url: &str, dest: &Path) -> Result<(), StageError> {
    use std::io::Write;
    use std::sync::Arc;
    use ureq::tls::{RootCerts, TlsConfig, TlsProvider};

    let tls = TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .root_certs(RootCerts::PlatformVerifier)
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .build();
    let agent = ureq::Agent::config_builder()
        .tls_config(tls)
        .timeout_global(Some(std::time::Duration::from_secs(600)))
        .build()
        .new_agent();
    let mut request = agent.get(url);
    if let Ok(token) = std::env::var("HF_TOKEN") {
        request = request.header("Authorization", &format!("Bearer {token}"));
    }
    let failed = |e: &dyn std::fmt::Display| {
        StageError::Other(format!(
            "download {url} failed: {e} (offline? set FLOW_DATA_DIR or --data-dir to a local \
             mirror instead; layout: {})",
            super::LAYOUT
        ))
    };
    let response = request.call().map_err(|e| failed(&e))?;
    let parent = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)
        .map_err(|e| StageError::io(format!("create {}", parent.display()), e))?;
    // Temp file + rename: an interrupted download never looks complete.
    let tmp = dest.with_extension(format!("part{}", std::process::id()));
    let mut out = std::fs::File::create(&tmp)
        .map_err(|e| StageError::io(format!("create {}", tmp.display()), e))?;
    let mut body = response.into_body().into_reader();
    std::io::copy(&mut body, &mut out).map_err(|e| failed(&e))?;
    out.flush()
        .map_err(|e| StageError::io(format!("write {}", tmp.display()), e))?;
    std::fs::rename(&tmp, dest)
        .map_err(|e| StageError::io(format!("rename to {}", dest.display()), e))
}

#[cfg(not(feature = "hub"))]
fn download(url: &str, _dest: &Path) -> Result<(), StageError> {
    Err(StageError::invalid(format!(
        "cannot download {url}: flow-stages was built without the `hub` feature; set \
         FLOW_DATA_DIR or --data-dir to a local mirror (layout: {})",
        super::LAYOUT
    )))
}
