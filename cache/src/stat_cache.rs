//! Hashes of external files (data files, model weights), memoized by (path, size, mtime,
//! inode, ctime) in memory and in `stat-cache.json`, so planning a manifest does not rehash
//! unchanged files. The ctime is what catches an edit in place that restores size and mtime
//! (`touch -d` sets the mtime but moves the ctime); the inode catches a file replaced by
//! another.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, Metadata};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::fsio::{self, JsonFile};
use crate::hash::{self, Hash};
use crate::{lock, Cache, CacheError};

/// File name of the persisted stat cache, under the cache root.
pub(crate) const FILE_NAME: &str = "stat-cache.json";
const FORMAT_VERSION: u32 = 2;

/// A file modified this recently may change again within the same mtime tick without its
/// stamp changing, so its hash is not memoized (the "racy timestamp" problem).
const RACY_WINDOW: Duration = Duration::from_secs(2);

/// How often to rehash a file that keeps changing while it is being hashed.
const HASH_ATTEMPTS: usize = 3;

/// What identifies one version of a file without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    size: u64,
    mtime_ns: i128,
    /// Unix: device and inode number; 0 elsewhere.
    dev: u64,
    ino: u64,
    /// Unix: status-change time in ns; 0 elsewhere.
    ctime_ns: i128,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Entry {
    stamp: Stamp,
    hash: Hash,
}

/// On-disk form: canonical path (UTF-8 only) -> entry.
#[derive(Default, Serialize, Deserialize)]
struct OnDisk {
    version: u32,
    entries: BTreeMap<String, Entry>,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<PathBuf, Entry>,
    /// Something was memoized since the last flush.
    dirty: bool,
}

/// The in-memory memo; the `Mutex` makes [`Cache::hash_file`] callable from many threads.
#[derive(Debug)]
pub(crate) struct StatCache {
    state: Mutex<State>,
}

impl StatCache {
    /// Loads `path`; a missing or unreadable file starts an empty memo (it is only a cache).
    pub(crate) fn load(path: &Path) -> StatCache {
        let entries = match fsio::read_json::<OnDisk>(path) {
            JsonFile::Ok(disk) if disk.version == FORMAT_VERSION => disk
                .entries
                .into_iter()
                .map(|(p, e)| (PathBuf::from(p), e))
                .collect(),
            JsonFile::Ok(_) | JsonFile::Missing => HashMap::new(),
            JsonFile::Unreadable(reason) => {
                tracing::warn!("ignoring stat cache: {reason}");
                HashMap::new()
            }
        };
        StatCache {
            state: Mutex::new(State {
                entries,
                dirty: false,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves a usable map; carry on with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Cache {
    /// blake3 of the file at `path`, memoized by (canonical path, size, mtime in ns).
    ///
    /// Hashing happens outside the memo's lock, so several threads hash different files at
    /// once. A file that changes while being hashed is hashed again.
    pub fn hash_file(&self, path: &Path) -> Result<Hash, CacheError> {
        let canonical = fs::canonicalize(path).map_err(CacheError::io("resolve", path))?;
        self.hash_canonical_file(canonical, path)
    }

    /// [`Cache::hash_file`] for a path known to be canonical (objects under
    /// the canonical cache root); `shown` names the file in errors.
    pub(crate) fn hash_canonical_file(
        &self,
        canonical: PathBuf,
        shown: &Path,
    ) -> Result<Hash, CacheError> {
        let path = shown;
        let meta = fs::metadata(&canonical).map_err(CacheError::io("read metadata of", path))?;
        if !meta.is_file() {
            return Err(CacheError::NotAFile {
                path: path.to_path_buf(),
            });
        }
        let mut before = stamp(&meta);
        if let Some(entry) = self.stat.state().entries.get(&canonical) {
            if Some(entry.stamp) == before {
                return Ok(entry.hash.clone());
            }
        }

        for _ in 0..HASH_ATTEMPTS {
            let file = File::open(&canonical).map_err(CacheError::io("open", path))?;
            let (hash, _) = hash::hash_reader(&file).map_err(CacheError::io("hash", path))?;
            let meta = file
                .metadata()
                .map_err(CacheError::io("read metadata of", path))?;
            let after = stamp(&meta);
            if after != before {
                before = after; // changed under us: try again with the new version
                continue;
            }
            if let Some(stamp) = after.filter(|_| settled(&meta)) {
                let mut state = self.stat.state();
                state.entries.insert(
                    canonical,
                    Entry {
                        stamp,
                        hash: hash.clone(),
                    },
                );
                state.dirty = true;
            }
            return Ok(hash);
        }
        Err(CacheError::io("hash", path)(std::io::Error::other(
            "the file kept changing while it was being hashed",
        )))
    }

    /// Writes the stat cache if anything was memoized since the last flush (atomically,
    /// merged with what other processes wrote meanwhile, dropping files that no longer exist).
    ///
    /// A read-only handle writes nothing. The write goes through `tmp/`, which gc empties
    /// while it holds the run lock, so the flush holds the run lock shared; while gc holds
    /// it the flush is skipped (the memo is only a cache, and is written next time).
    pub fn flush(&self) -> Result<(), CacheError> {
        if self.read_only {
            return Ok(());
        }
        let Some(_not_during_gc) = lock::try_lock_shared(&self.lock_path(lock::RUN_LOCK))? else {
            tracing::debug!("gc holds the cache: the stat cache is written next time");
            return Ok(());
        };
        let ours: Vec<(String, Entry)> = {
            let state = self.stat.state();
            if !state.dirty {
                return Ok(());
            }
            state
                .entries
                .iter()
                .filter_map(|(p, e)| Some((p.to_str()?.to_string(), e.clone())))
                .collect()
        };
        let path = self.root().join(FILE_NAME);
        let _lock = lock::lock_exclusive(&self.lock_path("stat-cache.lock"))?;
        let mut disk = match fsio::read_json::<OnDisk>(&path) {
            JsonFile::Ok(disk) if disk.version == FORMAT_VERSION => disk,
            _ => OnDisk::default(),
        };
        disk.version = FORMAT_VERSION;
        disk.entries.extend(ours);
        disk.entries.retain(|p, _| Path::new(p).exists());
        fsio::write_json_atomic(&self.tmp_dir(), &path, &disk)?;
        self.stat.state().dirty = false;
        Ok(())
    }
}

fn stamp(meta: &Metadata) -> Option<Stamp> {
    let mtime = meta.modified().ok()?;
    let mtime_ns = match mtime.duration_since(UNIX_EPOCH) {
        Ok(after) => after.as_nanos() as i128,
        Err(before) => -(before.duration().as_nanos() as i128),
    };
    let (dev, ino, ctime_ns) = identity(meta);
    Some(Stamp {
        size: meta.len(),
        mtime_ns,
        dev,
        ino,
        ctime_ns,
    })
}

#[cfg(unix)]
fn identity(meta: &Metadata) -> (u64, u64, i128) {
    use std::os::unix::fs::MetadataExt;
    let ctime_ns = i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec());
    (meta.dev(), meta.ino(), ctime_ns)
}

#[cfg(not(unix))]
fn identity(_meta: &Metadata) -> (u64, u64, i128) {
    (0, 0, 0)
}

/// True when the file was last modified long enough ago that its stamp can be trusted.
fn settled(meta: &Metadata) -> bool {
    meta.modified()
        .ok()
        .and_then(|m| SystemTime::now().duration_since(m).ok())
        .is_some_and(|age| age > RACY_WINDOW)
}

#[cfg(test)]
mod tests {
    use std::thread;

    use super::*;
    use crate::hash::hash_bytes;
    use crate::test_util::{cache, write_dated};

    fn set_mtime(path: &Path, when: SystemTime) {
        File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(when)
            .unwrap();
    }

    /// The memo entry for `f`, if any.
    fn memo(c: &Cache, f: &Path) -> Option<Entry> {
        let canonical = fs::canonicalize(f).unwrap();
        c.stat.state().entries.get(&canonical).cloned()
    }

    #[test]
    fn memo_is_used_while_the_file_is_unchanged() {
        let (d, c) = cache();
        let f = d.path().join("data.txt");
        write_dated(&f, b"aaaa", 100);
        assert_eq!(c.hash_file(&f).unwrap(), hash_bytes(b"aaaa"));
        let entry = memo(&c, &f).expect("a settled file is memoized");
        // A forged entry for the same stamp answers: proof the memo is consulted.
        let forged = hash_bytes(b"forged");
        c.stat.state().entries.insert(
            fs::canonicalize(&f).unwrap(),
            Entry {
                stamp: entry.stamp,
                hash: forged.clone(),
            },
        );
        assert_eq!(c.hash_file(&f).unwrap(), forged);
    }

    /// An edit in place that restores size and mtime (a byte flipped, `touch -d`) moves the
    /// ctime, so the file is rehashed instead of reported unchanged.
    #[test]
    fn an_edit_keeping_size_and_mtime_is_still_seen() {
        let (d, c) = cache();
        let f = d.path().join("data.txt");
        write_dated(&f, b"aaaa", 100);
        let mtime = fs::metadata(&f).unwrap().modified().unwrap();
        assert_eq!(c.hash_file(&f).unwrap(), hash_bytes(b"aaaa"));
        // ctime has a nanosecond clock, but let it move visibly on coarse file systems too.
        thread::sleep(Duration::from_millis(20));
        fs::write(&f, b"bbbb").unwrap();
        set_mtime(&f, mtime);
        assert_eq!(c.hash_file(&f).unwrap(), hash_bytes(b"bbbb"));
        // A new file (new inode) in its place with the old stamp is seen too.
        let g = d.path().join("other.txt");
        write_dated(&g, b"cccc", 100);
        set_mtime(&g, mtime);
        fs::rename(&g, &f).unwrap();
        assert_eq!(c.hash_file(&f).unwrap(), hash_bytes(b"cccc"));
    }

    #[test]
    fn memo_is_invalidated_when_size_or_mtime_changes() {
        let (d, c) = cache();
        let f = d.path().join("data.txt");
        write_dated(&f, b"aaaa", 100);
        assert_eq!(c.hash_file(&f).unwrap(), hash_bytes(b"aaaa"));

        // Size changes (mtime forced back to the old value).
        let mtime = fs::metadata(&f).unwrap().modified().unwrap();
        fs::write(&f, b"aaaaa").unwrap();
        set_mtime(&f, mtime);
        assert_eq!(c.hash_file(&f).unwrap(), hash_bytes(b"aaaaa"));

        // Only mtime changes (same size, new content).
        write_dated(&f, b"bbbbb", 50);
        assert_eq!(c.hash_file(&f).unwrap(), hash_bytes(b"bbbbb"));
    }

    #[test]
    fn recently_modified_files_are_not_memoized() {
        let (d, c) = cache();
        let f = d.path().join("fresh.txt");
        fs::write(&f, b"aaaa").unwrap();
        let mtime = fs::metadata(&f).unwrap().modified().unwrap();
        assert_eq!(c.hash_file(&f).unwrap(), hash_bytes(b"aaaa"));
        fs::write(&f, b"bbbb").unwrap();
        set_mtime(&f, mtime); // same stamp, as a change within one mtime tick would give
        assert_eq!(c.hash_file(&f).unwrap(), hash_bytes(b"bbbb"));
    }

    #[test]
    fn memo_persists_across_opens_via_flush() {
        let (d, c) = cache();
        let stat_file = c.root().join(FILE_NAME);
        c.flush().unwrap();
        assert!(!stat_file.exists(), "nothing memoized, nothing written");

        let f = d.path().join("weights.bin");
        write_dated(&f, b"weights", 100);
        let mtime = fs::metadata(&f).unwrap().modified().unwrap();
        c.hash_file(&f).unwrap();
        c.flush().unwrap();
        assert!(stat_file.exists());

        let _ = mtime;
        let reopened = Cache::open(c.root()).unwrap();
        assert!(memo(&reopened, &f).is_some(), "the memo was read back");
        assert_eq!(reopened.hash_file(&f).unwrap(), hash_bytes(b"weights"));

        // Entries of deleted files are dropped at the next flush.
        let g = d.path().join("other.bin");
        write_dated(&g, b"other", 100);
        reopened.hash_file(&g).unwrap();
        fs::remove_file(&f).unwrap();
        reopened.flush().unwrap();
        let text = fs::read_to_string(&stat_file).unwrap();
        assert!(
            text.contains("other.bin") && !text.contains("weights.bin"),
            "{text}"
        );
    }

    #[test]
    fn unreadable_stat_cache_is_ignored() {
        let (d, c) = cache();
        fs::write(c.root().join(FILE_NAME), b"garbage").unwrap();
        let c = Cache::open(c.root()).unwrap();
        let f = d.path().join("x");
        write_dated(&f, b"x", 100);
        assert_eq!(c.hash_file(&f).unwrap(), hash_bytes(b"x"));
        c.flush().unwrap();
    }

    #[test]
    fn callable_from_several_threads() {
        let (d, c) = cache();
        let files: Vec<PathBuf> = (0..8)
            .map(|i| {
                let f = d.path().join(format!("f{i}"));
                write_dated(&f, format!("content {i}").as_bytes(), 100);
                f
            })
            .collect();
        thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for (i, f) in files.iter().enumerate() {
                        let want = hash_bytes(format!("content {i}").as_bytes());
                        assert_eq!(c.hash_file(f).unwrap(), want);
                    }
                });
            }
        });
        c.flush().unwrap();
    }

    #[test]
    fn folders_and_missing_files_are_errors_naming_the_path() {
        let (d, c) = cache();
        assert!(matches!(
            c.hash_file(d.path()),
            Err(CacheError::NotAFile { .. })
        ));
        let err = c.hash_file(&d.path().join("missing.bin")).unwrap_err();
        assert!(err.to_string().contains("missing.bin"), "{err}");
    }
}
