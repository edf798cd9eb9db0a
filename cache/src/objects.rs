//! Objects: immutable blobs stored by blake3 content hash at `objects/ab/<rest of hash>`.
//!
//! An object only ever appears under its final name by an atomic rename of a complete,
//! fsynced file whose hash was computed from the very bytes renamed, so a crash never leaves
//! a partial object, and two processes storing the same object at once both rename identical
//! content into place.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::hash::{self, Hash};
use crate::{fsio, Cache, CacheError};

/// What [`Cache::check_object`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ObjectState {
    /// Present and its content hashes to its name.
    Ok,
    /// Not stored (or not readable).
    Missing,
    /// Present, but its content hashes to something else (e.g. truncated or edited).
    Corrupt {
        /// The hash it is stored under.
        expected: Hash,
        /// The hash of its current content.
        actual: Hash,
    },
}

impl Cache {
    /// Stores the file at `src` as an object and returns its hash; `src` is gone afterwards.
    ///
    /// The file is moved into `tmp/` (a rename when on the same file system, else a copy),
    /// hashed there, fsynced and renamed to its final name. If the object already exists it
    /// is replaced by an identical copy, which also repairs a corrupt one.
    pub fn put_file(&self, src: &Path) -> Result<Hash, CacheError> {
        let meta = fs::metadata(src).map_err(CacheError::io("read metadata of", src))?;
        if !meta.is_file() {
            return Err(CacheError::NotAFile {
                path: src.to_path_buf(),
            });
        }
        let is_link = fs::symlink_metadata(src)
            .map_err(CacheError::io("read metadata of", src))?
            .file_type()
            .is_symlink();
        if is_link {
            // Renaming would store the link itself; store the target's bytes instead.
            return self.put_by_copy(src);
        }

        // Reserve a unique name in tmp/, then move `src` onto it. The hash is computed after
        // the move, from the file we own, so nobody can change it between hashing and storing.
        let staged = fsio::temp_file(&self.tmp_dir(), "put-")?.into_temp_path();
        match fs::rename(src, &staged) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::CrossesDevices => return self.put_by_copy(src),
            Err(e) => return Err(CacheError::io("move into the cache", src)(e)),
        }
        let (hash, _) = File::open(&staged)
            .and_then(|f| {
                let hashed = hash::hash_reader(&f)?;
                f.sync_all()?;
                Ok(hashed)
            })
            .map_err(CacheError::io("hash", &*staged))?;
        let dest = self.final_object_path(&hash)?;
        staged
            .persist(&dest)
            .map_err(|e| CacheError::io("rename a temporary file onto", &dest)(e.error))?;
        fsio::sync_parent(&dest);
        Ok(hash)
    }

    /// Stores `src` by copying it into `tmp/` (hashing while copying), then removes `src`.
    /// Used across file systems and for symbolic links.
    fn put_by_copy(&self, src: &Path) -> Result<Hash, CacheError> {
        let mut staged = fsio::temp_file(&self.tmp_dir(), "put-")?;
        let input = File::open(src).map_err(CacheError::io("open", src))?;
        let (hash, _) = hash::copy_hashing(input, io::BufWriter::new(staged.as_file_mut()))
            .map_err(CacheError::io("copy into the cache", src))?;
        staged
            .as_file()
            .sync_all()
            .map_err(CacheError::io("fsync", staged.path()))?;
        let dest = self.final_object_path(&hash)?;
        staged
            .persist(&dest)
            .map_err(|e| CacheError::io("rename a temporary file onto", &dest)(e.error))?;
        fsio::sync_parent(&dest);
        fsio::remove_file_if_present(src)?;
        Ok(hash)
    }

    /// Stores `bytes` as an object and returns its hash.
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<Hash, CacheError> {
        let hash = hash::hash_bytes(bytes);
        let dest = self.final_object_path(&hash)?;
        let mut staged = fsio::temp_file(&self.tmp_dir(), "put-")?;
        staged
            .write_all(bytes)
            .and_then(|()| staged.as_file().sync_all())
            .map_err(CacheError::io("write", staged.path()))?;
        staged
            .persist(&dest)
            .map_err(|e| CacheError::io("rename a temporary file onto", &dest)(e.error))?;
        fsio::sync_parent(&dest);
        Ok(hash)
    }

    /// Where the object `hash` lives (whether or not it is stored).
    ///
    /// This returns no error, so an invalid `hash` gives `objects/invalid-hash`, a name that
    /// is never created, instead of a path built from arbitrary text.
    pub fn object_path(&self, hash: &str) -> PathBuf {
        if hash::is_valid_hash(hash) {
            self.dir("objects").join(&hash[..2]).join(&hash[2..])
        } else {
            tracing::warn!("object_path called with an invalid hash {hash:?}");
            self.dir("objects").join("invalid-hash")
        }
    }

    /// The object path for a valid hash, with its shard folder created, ready for a rename.
    fn final_object_path(&self, hash: &str) -> Result<PathBuf, CacheError> {
        hash::check("hash", hash)?;
        let dest = self.object_path(hash);
        if let Some(shard) = dest.parent() {
            fsio::create_dir(shard)?;
        }
        Ok(dest)
    }

    /// Fully verifies an object by rehashing its content.
    ///
    /// An invalid `hash` or an unreadable file reports [`ObjectState::Missing`] (with a warning
    /// in the log), since no usable object exists under that name either way.
    pub fn check_object(&self, hash: &str) -> ObjectState {
        if !hash::is_valid_hash(hash) {
            tracing::warn!("check_object called with an invalid hash {hash:?}");
            return ObjectState::Missing;
        }
        let path = self.object_path(hash);
        let actual = match File::open(&path).and_then(hash::hash_reader) {
            Ok((actual, _)) => actual,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return ObjectState::Missing,
            Err(e) => {
                tracing::warn!("cannot read object {}: {e}", path.display());
                return ObjectState::Missing;
            }
        };
        if actual == hash {
            ObjectState::Ok
        } else {
            ObjectState::Corrupt {
                expected: hash.to_string(),
                actual,
            }
        }
    }

    /// Verifies an object like [`Cache::check_object`], but trusts the hash
    /// memoized for the same (size, mtime) in the stat cache, so checking a
    /// large cache stays fast. Overwriting or truncating an object changes its
    /// stamp, so damage is still found; stages fully verify what they read.
    pub fn check_object_quick(&self, hash: &str) -> ObjectState {
        if !hash::is_valid_hash(hash) {
            return ObjectState::Missing;
        }
        let path = self.object_path(hash);
        match self.hash_canonical_file(path.clone(), &path) {
            Ok(actual) if actual == hash => ObjectState::Ok,
            Ok(actual) => ObjectState::Corrupt {
                expected: hash.to_string(),
                actual,
            },
            Err(_) if !path.exists() => ObjectState::Missing,
            Err(e) => {
                tracing::warn!("cannot read object {}: {e}", path.display());
                ObjectState::Missing
            }
        }
    }

    /// Removes an object (e.g. a corrupt one, so a rerun can store a good copy). Removing a
    /// missing object is fine.
    pub fn remove_object(&self, hash: &str) -> Result<(), CacheError> {
        hash::check("hash", hash)?;
        fsio::remove_file_if_present(&self.object_path(hash))
    }

    /// Size of a stored object, or `None` if it is not stored.
    pub(crate) fn object_size(&self, hash: &str) -> Result<Option<u64>, CacheError> {
        hash::check("hash", hash)?;
        let path = self.object_path(hash);
        match fs::metadata(&path) {
            Ok(meta) if meta.is_file() => Ok(Some(meta.len())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CacheError::io("read metadata of", path)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::hash_bytes;
    use crate::test_util::cache;

    #[test]
    fn put_bytes_stores_and_verifies() {
        let (_d, c) = cache();
        let h = c.put_bytes(b"hello").unwrap();
        assert_eq!(h, hash_bytes(b"hello"));
        let path = c.object_path(&h);
        assert!(path.starts_with(c.root().join("objects").join(&h[..2])));
        assert_eq!(path.file_name().unwrap().to_str().unwrap(), &h[2..]);
        assert_eq!(fs::read(&path).unwrap(), b"hello");
        assert_eq!(c.check_object(&h), ObjectState::Ok);
        // Storing again is harmless.
        assert_eq!(c.put_bytes(b"hello").unwrap(), h);
        assert_eq!(c.check_object(&h), ObjectState::Ok);
        assert!(fsio::list_dir(&c.tmp_dir()).unwrap().is_empty());
    }

    #[test]
    fn put_file_moves_the_file_in() {
        let (_d, c) = cache();
        let tmp = c.temp_dir().unwrap();
        let src = tmp.path().join("out.bin");
        fs::write(&src, b"payload").unwrap();
        let h = c.put_file(&src).unwrap();
        assert_eq!(h, hash_bytes(b"payload"));
        assert!(!src.exists());
        assert_eq!(c.check_object(&h), ObjectState::Ok);

        // Existing object: the new source is just consumed.
        fs::write(&src, b"payload").unwrap();
        assert_eq!(c.put_file(&src).unwrap(), h);
        assert!(!src.exists());
        assert_eq!(c.check_object(&h), ObjectState::Ok);
        assert_eq!(fsio::list_dir(&c.tmp_dir()).unwrap().len(), 1); // only `tmp` itself
    }

    #[test]
    fn put_by_copy_stores_and_removes_source() {
        let (d, c) = cache();
        let src = d.path().join("elsewhere.txt");
        fs::write(&src, b"copied").unwrap();
        let h = c.put_by_copy(&src).unwrap();
        assert_eq!(h, hash_bytes(b"copied"));
        assert!(!src.exists());
        assert_eq!(c.check_object(&h), ObjectState::Ok);
    }

    #[cfg(unix)]
    #[test]
    fn put_file_of_a_symlink_stores_the_target_bytes() {
        let (d, c) = cache();
        let target = d.path().join("target.txt");
        fs::write(&target, b"target").unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let h = c.put_file(&link).unwrap();
        assert_eq!(h, hash_bytes(b"target"));
        let meta = fs::symlink_metadata(c.object_path(&h)).unwrap();
        assert!(meta.file_type().is_file());
        assert!(target.exists());
        assert!(fs::symlink_metadata(&link).is_err());
    }

    #[test]
    fn put_file_rejects_folders_and_missing_files() {
        let (d, c) = cache();
        assert!(matches!(
            c.put_file(d.path()),
            Err(CacheError::NotAFile { .. })
        ));
        let err = c.put_file(&d.path().join("nope")).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn corruption_is_detected_and_removal_allows_a_good_copy() {
        let (_d, c) = cache();
        let h = c.put_bytes(b"original content").unwrap();
        let path = c.object_path(&h);

        fs::write(&path, b"original").unwrap(); // truncated
        assert_eq!(
            c.check_object(&h),
            ObjectState::Corrupt {
                expected: h.clone(),
                actual: hash_bytes(b"original"),
            }
        );
        fs::write(&path, b"original CONTENT").unwrap(); // same size, edited
        assert!(matches!(c.check_object(&h), ObjectState::Corrupt { .. }));

        c.remove_object(&h).unwrap();
        assert_eq!(c.check_object(&h), ObjectState::Missing);
        c.remove_object(&h).unwrap(); // already gone: fine
        c.put_bytes(b"original content").unwrap();
        assert_eq!(c.check_object(&h), ObjectState::Ok);
    }

    #[test]
    fn quick_check_finds_overwritten_and_deleted_objects() {
        let (_dir, cache) = cache();
        let hash = cache.put_bytes(b"some output").unwrap();
        assert_eq!(cache.check_object_quick(&hash), ObjectState::Ok);
        let path = cache.object_path(&hash);
        let mut perms = fs::metadata(&path).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perms.set_readonly(false);
        fs::set_permissions(&path, perms).unwrap();
        fs::write(&path, b"some outpuT!").unwrap();
        assert!(matches!(
            cache.check_object_quick(&hash),
            ObjectState::Corrupt { .. }
        ));
        fs::remove_file(&path).unwrap();
        assert_eq!(cache.check_object_quick(&hash), ObjectState::Missing);
    }

    #[test]
    fn invalid_hashes_build_no_paths() {
        let (_d, c) = cache();
        let bad = "../../etc/passwd";
        assert_eq!(c.object_path(bad), c.root().join("objects/invalid-hash"));
        assert_eq!(c.check_object(bad), ObjectState::Missing);
        assert!(matches!(
            c.remove_object(bad),
            Err(CacheError::InvalidKey { what: "hash", .. })
        ));
        assert!(c.object_size(&"A".repeat(64)).is_err());
    }
}
