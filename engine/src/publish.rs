//! Copies published outputs (tables, figures) and a metrics summary into the
//! manifest's results folder, rewriting only files whose content changed.
//!
//! The results folder may hold a user's own files (`results = "."`), so flow
//! keeps a ledger of what it published there (`.flow-published.json`) and
//! never overwrites a file it did not write itself. Every copy is verified
//! against the object's hash while it is made: a damaged cache object is
//! never published.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use flow_cache::Record;
use serde::{Deserialize, Serialize};

use crate::session::Session;

/// Temporary files of an interrupted publish start with this; the next
/// publish removes them.
const TMP_PREFIX: &str = ".flow-tmp-";

/// What flow published into a results folder: relative path -> blake3 of its content.
pub const LEDGER: &str = ".flow-published.json";

/// Why publishing stopped. What was computed stays cached either way.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("cannot publish results to {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "refusing to overwrite {}: flow did not publish it (a file of yours?); \
         move it away, or set another `results` folder",
        path.display()
    )]
    NotOurs { path: PathBuf },
    #[error(
        "the cached output behind {} is corrupt (its content no longer matches hash {hash}); \
         the object was removed: run again to recompute it",
        path.display()
    )]
    Corrupt { path: PathBuf, hash: String },
}

#[derive(Default, Serialize, Deserialize)]
struct Ledger {
    files: BTreeMap<String, String>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PublishError + '_ {
    move |source| PublishError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Publishes the outputs and metrics of `done`. `metrics.json` keeps the
/// entries of instances this run did not touch (a `--stage` run or a Ctrl-C
/// does not shrink it) and drops those no longer in the plan.
pub fn publish(
    session: &Session<'_>,
    done: &BTreeMap<usize, &Record>,
) -> Result<Vec<PathBuf>, PublishError> {
    let root = session.results_dir();
    // Runs publishing into one folder take turns (a key lock named after the folder):
    // each reads the ledger, writes its files and writes the ledger back before the
    // next reads it. Without the turn, a run holding a stale ledger took a file another
    // run had just published for a user's and refused to overwrite it. Where locks do
    // not work, the merge below still keeps every run's entries.
    let turn = blake3::hash(format!("publish\0{}", root.display()).as_bytes()).to_hex();
    let _turn = session.cache.lock_key(turn.as_str()).ok();
    remove_leftovers(&root);
    let ledger_path = root.join(LEDGER);
    let mut ledger: Ledger = std::fs::read(&ledger_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let result = publish_into(session, done, &root, &mut ledger);
    // The ledger is written even when a file failed, so what was published is known;
    // merged with what a concurrent run wrote meanwhile.
    if let Some(theirs) = std::fs::read(&ledger_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Ledger>(&b).ok())
    {
        for (path, hash) in theirs.files {
            ledger.files.entry(path).or_insert(hash);
        }
    }
    if !ledger.files.is_empty() {
        let text = serde_json::to_vec_pretty(&ledger).unwrap_or_default();
        write_atomic(&ledger_path, &text)?;
    }
    result
}

fn publish_into(
    session: &Session<'_>,
    done: &BTreeMap<usize, &Record>,
    root: &Path,
    ledger: &mut Ledger,
) -> Result<Vec<PathBuf>, PublishError> {
    let mut written = Vec::new();
    let mut metrics = serde_json::Map::new();
    for (&i, record) in done {
        let inst = &session.plan.instances[i];
        if !record.metrics.is_empty() {
            metrics.insert(
                inst.name.clone(),
                serde_json::Value::Object(record.metrics.clone()),
            );
        }
        for (name, out) in record.outputs.iter().filter(|(_, o)| o.publish) {
            let rel = instance_folder(&inst.stage, &inst.name).join(name);
            let src = session.cache.object_path(&out.hash);
            let dest = root.join(&rel);
            match copy_if_changed(&src, &dest, &rel, &out.hash, ledger) {
                Err(PublishError::Corrupt { path, hash }) => {
                    let _ = session.cache.remove_object(&hash);
                    return Err(PublishError::Corrupt { path, hash });
                }
                other => other?,
            }
            written.push(dest);
        }
    }
    let dest = root.join("metrics.json");
    let in_plan: HashSet<&str> = session
        .plan
        .instances
        .iter()
        .map(|i| i.name.as_str())
        .collect();
    if owned(&dest, Path::new("metrics.json"), ledger) {
        let previous: serde_json::Map<String, serde_json::Value> = std::fs::read(&dest)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        for (name, value) in previous {
            if in_plan.contains(name.as_str()) && !metrics.contains_key(&name) {
                metrics.insert(name, value);
            }
        }
    }
    if !metrics.is_empty() {
        let text =
            serde_json::to_string_pretty(&serde_json::Value::Object(metrics)).unwrap_or_default();
        let hash = blake3::hash(text.as_bytes()).to_hex();
        write_if_changed(
            &dest,
            Path::new("metrics.json"),
            text.as_bytes(),
            &hash,
            ledger,
        )?;
        written.push(dest);
    }
    Ok(written)
}

/// `table` -> `table/`; `table@model=d6` -> `table/model=d6/`. Instance
/// names escape path separators (see `Value::name_part`), so this is one
/// folder per instance, inside the stage's folder.
pub fn instance_folder(stage: &str, instance: &str) -> PathBuf {
    match instance.split_once('@') {
        None => PathBuf::from(stage),
        Some((_, bindings)) => PathBuf::from(stage).join(bindings.replace(['/', '\\'], "_")),
    }
}

fn ledger_key(rel: &Path) -> String {
    rel.to_string_lossy().replace('\\', "/")
}

/// Whether flow may write `dest`: it does not exist, or flow published it.
fn owned(dest: &Path, rel: &Path, ledger: &Ledger) -> bool {
    ledger.files.contains_key(&ledger_key(rel)) || std::fs::symlink_metadata(dest).is_err()
}

fn copy_if_changed(
    src: &Path,
    dest: &Path,
    rel: &Path,
    hash: &str,
    ledger: &mut Ledger,
) -> Result<(), PublishError> {
    let bytes = std::fs::read(src).map_err(io(src))?;
    if blake3::hash(&bytes).to_hex().as_str() != hash {
        return Err(PublishError::Corrupt {
            path: dest.to_path_buf(),
            hash: hash.to_string(),
        });
    }
    write_if_changed(dest, rel, &bytes, hash, ledger)
}

/// Writes `bytes` (whose blake3 is `hash`) to `dest` unless it holds them already.
fn write_if_changed(
    dest: &Path,
    rel: &Path,
    bytes: &[u8],
    hash: &str,
    ledger: &mut Ledger,
) -> Result<(), PublishError> {
    let key = ledger_key(rel);
    let same = std::fs::read(dest).is_ok_and(|old| old == bytes);
    if !same {
        if !owned(dest, rel, ledger) {
            return Err(PublishError::NotOurs {
                path: dest.to_path_buf(),
            });
        }
        write_atomic(dest, bytes)?;
    }
    // An identical file is adopted: flow would have written exactly it.
    ledger.files.insert(key, hash.to_string());
    Ok(())
}

fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<(), PublishError> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!("{TMP_PREFIX}{}-{name}", std::process::id()));
    let mut file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    file.write_all(bytes).map_err(io(&tmp))?;
    drop(file);
    std::fs::rename(&tmp, dest).map_err(io(dest))
}

/// Deletes temporary files a killed run left in the results folder. Symlinked
/// folders are not followed: a link loop must not hang the walk, and a link
/// out of the folder must not reach someone else's files.
fn remove_leftovers(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(ty) = entry.file_type() else { continue };
        if ty.is_dir() {
            remove_leftovers(&entry.path());
        } else if ty.is_file() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(TMP_PREFIX) else {
                continue;
            };
            // Another run publishing into this folder right now owns its temporary file.
            let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
            if !pid.is_some_and(process_alive) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// Whether process `pid` is running (Linux: `/proc/<pid>`). Elsewhere it is taken as
/// running: a leftover is kept rather than another run's file deleted.
fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    #[cfg(target_os = "linux")]
    {
        Path::new("/proc").join(pid.to_string()).exists()
    }
    #[cfg(not(target_os = "linux"))]
    {
        true
    }
}

/// Every file under `dir`, without following symlinked folders; for `flow status`.
pub fn list_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(ty) = entry.file_type() else { continue };
        let name = entry.file_name();
        if ty.is_dir() {
            list_files(&entry.path(), out);
        } else if name != LEDGER {
            out.push(entry.path());
        }
    }
}
