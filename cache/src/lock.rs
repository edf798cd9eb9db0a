//! Advisory file locks under `locks/`.
//!
//! These are `flock`-style locks on open files (std `File::lock*`): the OS drops them when
//! the file is closed or the process dies (even by `kill -9`), so a crashed run never leaves
//! the cache locked. They exclude other processes and also other handles in this process.
//! Lock files are never deleted while anyone may use them (deleting a lock file that someone
//! waits on would let two holders in); gc tidies key locks only while it holds the run lock.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use crate::hash;
use crate::{Cache, CacheError};

/// Exclusive lock on one key: only its holder computes the key. Released on drop.
#[derive(Debug)]
#[must_use = "the lock is released as soon as this is dropped"]
pub struct KeyLock {
    _file: File,
}

/// Shared lock held for the whole of a run; gc takes the same lock exclusively.
/// Released on drop.
#[derive(Debug)]
#[must_use = "the lock is released as soon as this is dropped"]
pub struct RunGuard {
    _file: File,
}

/// The run lock, shared by runs and taken exclusively by gc.
pub(crate) const RUN_LOCK: &str = "run.lock";

impl Cache {
    /// Blocks until this handle holds the exclusive lock for `key`.
    ///
    /// Concurrent `flow run`s use it so only one computes a key while the others wait and
    /// then find its record. Callers should hold a [`RunGuard`] while they hold key locks.
    pub fn lock_key(&self, key: &str) -> Result<KeyLock, CacheError> {
        hash::check("key", key)?;
        let path = self.lock_path(&format!("key-{key}.lock"));
        let file = open_lock_file(&path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                tracing::info!("waiting for another run that is computing key {key}");
                file.lock().map_err(CacheError::io("lock", &path))?;
            }
            Err(TryLockError::Error(e)) => return Err(CacheError::io("lock", path)(e)),
        }
        Ok(KeyLock { _file: file })
    }

    /// Takes the lock for `key` if nobody holds it: `Ok(None)` when another handle (or
    /// process) does. A job computing a key for a controller that holds its lock uses it to
    /// take the lock over if the controller is gone.
    pub fn try_lock_key(&self, key: &str) -> Result<Option<KeyLock>, CacheError> {
        hash::check("key", key)?;
        let path = self.lock_path(&format!("key-{key}.lock"));
        Ok(try_lock_exclusive(&path)?.map(|file| KeyLock { _file: file }))
    }

    /// Takes the run lock shared, for the whole of a run (waits while gc runs).
    pub fn run_guard(&self) -> Result<RunGuard, CacheError> {
        let path = self.lock_path(RUN_LOCK);
        let file = open_lock_file(&path)?;
        match file.try_lock_shared() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                tracing::info!("waiting for gc to finish with the cache");
                file.lock_shared().map_err(CacheError::io("lock", &path))?;
            }
            Err(TryLockError::Error(e)) => return Err(CacheError::io("lock", path)(e)),
        }
        Ok(RunGuard { _file: file })
    }

    pub(crate) fn lock_path(&self, name: &str) -> PathBuf {
        self.dir("locks").join(name)
    }
}

/// Opens (creating) a lock file. Read+write so exclusive locks work on every platform.
pub(crate) fn open_lock_file(path: &Path) -> Result<File, CacheError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(CacheError::io("open lock file", path))
}

/// Blocks until `path` is locked exclusively; the lock lasts as long as the returned file.
pub(crate) fn lock_exclusive(path: &Path) -> Result<File, CacheError> {
    let file = open_lock_file(path)?;
    file.lock().map_err(CacheError::io("lock", path))?;
    Ok(file)
}

/// Tries to lock `path` exclusively without waiting: `Ok(None)` if someone else holds it.
pub(crate) fn try_lock_exclusive(path: &Path) -> Result<Option<File>, CacheError> {
    let file = open_lock_file(path)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(e)) => Err(CacheError::io("lock", path)(e)),
    }
}

/// Tries to lock `path` shared without waiting: `Ok(None)` if someone holds it exclusively.
pub(crate) fn try_lock_shared(path: &Path) -> Result<Option<File>, CacheError> {
    let file = open_lock_file(path)?;
    match file.try_lock_shared() {
        Ok(()) => Ok(Some(file)),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(e)) => Err(CacheError::io("lock", path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc;
    use std::thread;
    use std::time::Duration;

    use super::*;
    use crate::hash::hash_bytes;
    use crate::test_util::cache;

    #[test]
    fn lock_key_excludes_a_second_holder_until_the_first_drops() {
        let (_d, c) = cache();
        let key = hash_bytes(b"key");
        let first = c.lock_key(&key).unwrap();
        let released = AtomicBool::new(false);
        let (acquired_tx, acquired_rx) = mpsc::channel();
        thread::scope(|s| {
            s.spawn(|| {
                let _second = c.lock_key(&key).unwrap();
                // The second holder may only get in after the first let go.
                acquired_tx.send(released.load(Ordering::SeqCst)).unwrap();
            });
            // While the first lock is held the second thread stays blocked.
            assert!(acquired_rx
                .recv_timeout(Duration::from_millis(300))
                .is_err());
            released.store(true, Ordering::SeqCst);
            drop(first);
            let saw_release = acquired_rx.recv_timeout(Duration::from_secs(30)).unwrap();
            assert!(saw_release);
        });
    }

    #[test]
    fn try_lock_key_fails_while_another_holds_it() {
        let (_d, c) = cache();
        let key = hash_bytes(b"key");
        let first = c.lock_key(&key).unwrap();
        assert!(c.try_lock_key(&key).unwrap().is_none());
        drop(first);
        let second = c.try_lock_key(&key).unwrap();
        assert!(second.is_some());
        assert!(c.try_lock_key(&key).unwrap().is_none());
    }

    #[test]
    fn different_keys_do_not_block_each_other() {
        let (_d, c) = cache();
        let _a = c.lock_key(&hash_bytes(b"a")).unwrap();
        let _b = c.lock_key(&hash_bytes(b"b")).unwrap();
    }

    #[test]
    fn run_guards_are_shared_and_exclude_an_exclusive_lock() {
        let (_d, c) = cache();
        let g1 = c.run_guard().unwrap();
        let g2 = c.run_guard().unwrap();
        let path = c.lock_path(RUN_LOCK);
        assert!(try_lock_exclusive(&path).unwrap().is_none());
        drop(g1);
        assert!(try_lock_exclusive(&path).unwrap().is_none());
        drop(g2);
        assert!(try_lock_exclusive(&path).unwrap().is_some());
    }

    #[test]
    fn lock_key_rejects_invalid_keys() {
        let (_d, c) = cache();
        assert!(matches!(
            c.lock_key("../run"),
            Err(CacheError::InvalidKey { what: "key", .. })
        ));
    }
}
