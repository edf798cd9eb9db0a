//! Scratch space: per-key work folders that survive crashes, and throwaway temp folders.

use std::path::PathBuf;

use crate::hash;
use crate::{fsio, Cache, CacheError};

impl Cache {
    /// `work/<key>/`, created if missing. It survives crashes, so checkpoints and journals
    /// kept there let an interrupted stage resume; the engine removes it after success.
    pub fn work_dir(&self, key: &str) -> Result<PathBuf, CacheError> {
        hash::check("key", key)?;
        let dir = self.dir("work").join(key);
        fsio::create_dir(&dir)?;
        Ok(dir)
    }

    /// Removes `work/<key>/` and everything in it (fine if it does not exist).
    pub fn remove_work_dir(&self, key: &str) -> Result<(), CacheError> {
        hash::check("key", key)?;
        fsio::remove_dir_if_present(&self.dir("work").join(key))
    }

    /// A fresh empty folder inside `tmp/`, removed on drop. It is on the same file system as
    /// `objects/`, so [`Cache::put_file`] of a file written there is a rename, not a copy.
    pub fn temp_dir(&self) -> Result<tempfile::TempDir, CacheError> {
        let tmp = self.tmp_dir();
        tempfile::Builder::new()
            .prefix("dir-")
            .tempdir_in(&tmp)
            .map_err(CacheError::io("create a temporary folder in", tmp))
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use crate::hash::hash_bytes;
    use crate::test_util::cache;

    #[test]
    fn work_dir_is_created_and_removed() {
        let (_d, c) = cache();
        let key = hash_bytes(b"k");
        let dir = c.work_dir(&key).unwrap();
        assert_eq!(dir, c.root().join("work").join(&key));
        fs::write(dir.join("journal"), b"1\n").unwrap();
        // Calling again keeps what is there (resume after a crash).
        assert!(c.work_dir(&key).unwrap().join("journal").exists());
        c.remove_work_dir(&key).unwrap();
        assert!(!dir.exists());
        c.remove_work_dir(&key).unwrap();
        assert!(c.work_dir("..").is_err());
        assert!(c.remove_work_dir("..").is_err());
    }

    #[test]
    fn temp_dir_is_inside_tmp_and_removed_on_drop() {
        let (_d, c) = cache();
        let t = c.temp_dir().unwrap();
        let path = t.path().to_path_buf();
        assert!(path.starts_with(c.root().join("tmp")));
        assert!(fs::read_dir(&path).unwrap().next().is_none());
        drop(t);
        assert!(!path.exists());
    }
}
