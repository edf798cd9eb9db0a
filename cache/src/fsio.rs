//! Small file-system helpers: atomic writes, directory fsync, "remove if present".

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tempfile::NamedTempFile;

use crate::CacheError;

/// Writes `bytes` to `dest` atomically: a temporary file in `tmp_dir` (same file system),
/// fsync, rename over `dest`, then a best-effort fsync of `dest`'s folder. A reader (or a
/// crash) sees either the old file or the complete new one, never a partial one.
pub(crate) fn write_atomic(tmp_dir: &Path, dest: &Path, bytes: &[u8]) -> Result<(), CacheError> {
    write_atomic_with_prefix(tmp_dir, "write-", dest, bytes)
}

/// [`write_atomic`] with the temporary file's name starting with `prefix`.
pub(crate) fn write_atomic_with_prefix(
    tmp_dir: &Path,
    prefix: &str,
    dest: &Path,
    bytes: &[u8],
) -> Result<(), CacheError> {
    let mut tmp = temp_file(tmp_dir, prefix)?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(CacheError::io("write", tmp.path()))?;
    tmp.persist(dest)
        .map_err(|e| CacheError::io("rename a temporary file onto", dest)(e.error))?;
    sync_parent(dest);
    Ok(())
}

/// A new empty temporary file in `tmp_dir`, deleted on drop unless persisted.
///
/// Created with the usual permissions (0666 less the umask) rather than tempfile's private
/// 0600, so a cache shared between users stays readable once the file is renamed into place.
pub(crate) fn temp_file(tmp_dir: &Path, prefix: &str) -> Result<NamedTempFile, CacheError> {
    let mut builder = tempfile::Builder::new();
    builder.prefix(prefix);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(fs::Permissions::from_mode(0o666));
    }
    builder
        .tempfile_in(tmp_dir)
        .map_err(CacheError::io("create a temporary file in", tmp_dir))
}

/// Serializes `value` as pretty JSON and writes it atomically to `dest`.
pub(crate) fn write_json_atomic(
    tmp_dir: &Path,
    dest: &Path,
    value: &impl Serialize,
) -> Result<(), CacheError> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|source| CacheError::Encode {
        path: dest.to_path_buf(),
        source,
    })?;
    bytes.push(b'\n');
    write_atomic(tmp_dir, dest, &bytes)
}

/// Outcome of reading a JSON file that may legitimately be absent.
pub(crate) enum JsonFile<T> {
    Missing,
    Unreadable(String),
    Ok(T),
}

/// Reads and decodes a JSON file; never fails, it reports what it found.
pub(crate) fn read_json<T: DeserializeOwned>(path: &Path) -> JsonFile<T> {
    match fs::read(path) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(v) => JsonFile::Ok(v),
            Err(e) => JsonFile::Unreadable(format!("{}: invalid JSON: {e}", path.display())),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => JsonFile::Missing,
        Err(e) => JsonFile::Unreadable(format!("{}: {e}", path.display())),
    }
}

/// fsync of the folder holding `path`, so a rename into it survives a power cut. Best
/// effort: some file systems refuse to fsync folders, and the rename itself already happened.
pub(crate) fn sync_parent(path: &Path) {
    if let Some(dir) = path.parent() {
        if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
            tracing::debug!("fsync of folder {} failed: {e}", dir.display());
        }
    }
}

/// Removes a file; a file that is already gone is fine.
pub(crate) fn remove_file_if_present(path: &Path) -> Result<(), CacheError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(CacheError::io("remove", path)(e)),
        _ => Ok(()),
    }
}

/// Removes a folder and everything in it; a folder that is already gone is fine.
pub(crate) fn remove_dir_if_present(path: &Path) -> Result<(), CacheError> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(CacheError::io("remove folder", path)(e))
        }
        _ => Ok(()),
    }
}

/// Creates a folder (and its parents) if missing.
pub(crate) fn create_dir(path: &Path) -> Result<(), CacheError> {
    fs::create_dir_all(path).map_err(CacheError::io("create folder", path))
}

/// Names of the entries in a folder; a missing folder has none.
pub(crate) fn list_dir(path: &Path) -> Result<Vec<fs::DirEntry>, CacheError> {
    let entries = match fs::read_dir(path) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(CacheError::io("list folder", path)(e)),
    };
    entries
        .collect::<io::Result<Vec<_>>>()
        .map_err(CacheError::io("list folder", path))
}

/// Total size in bytes of the files under `path` (0 if it cannot be read): for gc's report.
pub(crate) fn disk_size(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    fs::read_dir(path)
        .map(|entries| entries.flatten().map(|e| disk_size(&e.path())).sum())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("tmp");
        create_dir(&tmp).unwrap();
        let dest = dir.path().join("a.json");
        write_atomic(&tmp, &dest, b"one").unwrap();
        write_atomic(&tmp, &dest, b"two").unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"two");
        assert_eq!(list_dir(&tmp).unwrap().len(), 0);
    }

    #[test]
    fn remove_helpers_accept_missing_paths() {
        let dir = tempfile::tempdir().unwrap();
        remove_file_if_present(&dir.path().join("nope")).unwrap();
        remove_dir_if_present(&dir.path().join("nope")).unwrap();
        assert!(list_dir(&dir.path().join("nope")).unwrap().is_empty());
    }
}
