//! Copies published outputs (tables, figures) and a metrics summary into the
//! manifest's results folder, rewriting only files whose content changed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use flow_cache::{CacheError, Record};

use crate::session::Session;

/// Temporary files of an interrupted publish start with this; the next
/// publish removes them.
const TMP_PREFIX: &str = ".flow-tmp-";

pub fn publish(
    session: &Session<'_>,
    done: &BTreeMap<usize, &Record>,
) -> Result<Vec<PathBuf>, CacheError> {
    let root = session.results_dir();
    remove_leftovers(&root);
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
            let dest = root
                .join(instance_folder(&inst.stage, &inst.name))
                .join(name);
            let src = session.cache.object_path(&out.hash);
            copy_if_changed(&src, &dest, &out.hash)?;
            written.push(dest);
        }
    }
    if !metrics.is_empty() {
        let text =
            serde_json::to_string_pretty(&serde_json::Value::Object(metrics)).unwrap_or_default();
        let dest = root.join("metrics.json");
        write_if_changed(&dest, text.as_bytes())?;
        written.push(dest);
    }
    Ok(written)
}

/// `table` -> `table/`; `table@model=d6` -> `table/model=d6/`.
pub fn instance_folder(stage: &str, instance: &str) -> PathBuf {
    match instance.split_once('@') {
        None => PathBuf::from(stage),
        Some((_, bindings)) => PathBuf::from(stage).join(bindings.replace(['/', '\\'], "_")),
    }
}

fn io(path: &Path, source: std::io::Error) -> CacheError {
    CacheError::Io {
        action: "publish results",
        path: path.to_path_buf(),
        source,
    }
}

fn copy_if_changed(src: &Path, dest: &Path, hash: &str) -> Result<(), CacheError> {
    if let Ok(bytes) = std::fs::read(dest) {
        if blake3::hash(&bytes).to_hex().as_str() == hash {
            return Ok(());
        }
    }
    let bytes = std::fs::read(src).map_err(|e| io(src, e))?;
    write_atomic(dest, &bytes)
}

fn write_if_changed(dest: &Path, bytes: &[u8]) -> Result<(), CacheError> {
    if std::fs::read(dest).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    write_atomic(dest, bytes)
}

fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<(), CacheError> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!("{TMP_PREFIX}{}-{name}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, dest).map_err(|e| io(dest, e))
}

/// Deletes temporary files a killed run left in the results folder.
fn remove_leftovers(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            remove_leftovers(&path);
        } else if entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
            let _ = std::fs::remove_file(&path);
        }
    }
}
