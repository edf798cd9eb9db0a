//! flow's content-addressed cache.
//!
//! Layout under the cache root:
//!
//! ```text
//! VERSION                 layout version ("1")
//! objects/ab/<62 hex>     immutable blobs, named by their blake3 hash
//! records/<key>.json      what a stage instance produced (outputs, metrics, log)
//! failures/<key>.json     the last failure of a key
//! refs/<scope>.json       per manifest scope: the key each instance had at its last run
//! locks/                  lock files (run.lock, key-<key>.lock, refs-<scope>.lock)
//! work/<key>/             scratch space that survives crashes (checkpoints)
//! tmp/                    temporary files, renamed into place when complete
//! stat-cache.json         (path, size, mtime, inode, ctime) -> hash of external files
//! journal/                Area::Journal: answers of generation requests, by request
//! downloads/              Area::Downloads: files fetched from the Hugging Face hub
//! jobs/                   Area::Jobs: scripts and logs of `flow run --executor` jobs
//! ```
//!
//! Everything that is read by another process is written to `tmp/` first, fsynced, then
//! renamed into place, so a crash (even `kill -9`) never leaves a partial file under a final
//! name, and a record is only written once all of its objects are stored. The areas are
//! handed out by [`Cache::area`] (and, by path, [`Area::dir_name`]); their contents belong to
//! the code that writes them, and gc leaves them alone.

mod area;
mod error;
mod fsio;
mod gc;
mod hash;
mod lock;
mod objects;
mod records;
mod refs;
mod scratch;
mod stat_cache;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

pub use area::Area;
pub use error::CacheError;
pub use gc::{GcReport, DEFAULT_GRACE as GC_GRACE};
pub use hash::{hash_bytes, is_valid_hash, Hash};
pub use lock::{KeyLock, RunGuard};
pub use objects::ObjectState;
pub use records::{Executed, Failure, InputRef, KeyFields, OutputRef, Record, RecordState};
pub use refs::Refs;

/// The temporary file of a `VERSION` being written, in the cache root.
const VERSION_TMP_PREFIX: &str = ".flow-version-";

/// The cache layout version this crate reads and writes.
pub const LAYOUT_VERSION: u32 = 1;

const SUBDIRS: [&str; 7] = [
    "objects", "records", "failures", "refs", "locks", "work", "tmp",
];

/// A cache folder. Cheap to share between threads (`&Cache` is enough for every operation).
#[derive(Debug)]
pub struct Cache {
    root: PathBuf,
    stat: stat_cache::StatCache,
    /// Opened with [`Cache::open_read_only`]: nothing is written, not even the stat cache.
    read_only: bool,
}

impl Cache {
    /// Opens (creating if missing) a cache rooted at `root`.
    ///
    /// Fails with [`CacheError::Version`] if the folder holds a cache of another layout
    /// version, and with [`CacheError::NotACache`] if it is a non-empty folder that is not a
    /// flow cache (so a mistyped `--cache-dir $HOME` never gets flow's layout, or a gc).
    pub fn open(root: &Path) -> Result<Cache, CacheError> {
        check_is_cache_or_empty(root)?;
        fsio::create_dir(root)?;
        // An absolute, symlink-free root makes every object path canonical by
        // construction, so verifying objects needs no path resolution.
        let root = std::fs::canonicalize(root).map_err(CacheError::io("resolve", root))?;
        check_version(&root)?;
        for dir in SUBDIRS {
            fsio::create_dir(&root.join(dir))?;
        }
        let stat = stat_cache::StatCache::load(&root.join(stat_cache::FILE_NAME));
        Ok(Cache {
            root,
            stat,
            read_only: false,
        })
    }

    /// Opens a cache for reading only (`flow status`, `flow gc --dry-run`): nothing is
    /// created or written, so it works on a read-only or full file system. A missing folder
    /// reads as an empty cache; a folder that is not a flow cache is refused as by
    /// [`Cache::open`].
    pub fn open_read_only(root: &Path) -> Result<Cache, CacheError> {
        check_is_cache_or_empty(root)?;
        let root = match std::fs::canonicalize(root) {
            Ok(root) => {
                check_version_read_only(&root)?;
                root
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::path::absolute(root).map_err(CacheError::io("resolve", root))?
            }
            Err(e) => return Err(CacheError::io("resolve", root)(e)),
        };
        let stat = stat_cache::StatCache::load(&root.join(stat_cache::FILE_NAME));
        Ok(Cache {
            root,
            stat,
            read_only: true,
        })
    }

    /// Whether this handle was opened with [`Cache::open_read_only`].
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// The cache root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn tmp_dir(&self) -> PathBuf {
        self.dir("tmp")
    }
}

/// Refuses a folder that exists, holds something, and has no `VERSION` file: it is not a
/// flow cache, and creating the layout there (or collecting its `tmp/`) would touch a
/// user's files.
fn check_is_cache_or_empty(root: &Path) -> Result<(), CacheError> {
    let entries = match fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotADirectory => {
            return Err(CacheError::NotACache {
                path: root.to_path_buf(),
                found: "it is a file".into(),
            })
        }
        Err(e) => return Err(CacheError::io("list folder", root)(e)),
    };
    if root.join("VERSION").is_file() {
        return Ok(());
    }
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    // Only the temporary VERSION of a cache another process is creating right now: it
    // writes VERSION before anything else, so nothing else can be there yet. VERSION
    // itself may have landed between the check above and the listing.
    if names.iter().all(|n| n.starts_with(VERSION_TMP_PREFIX)) || root.join("VERSION").is_file() {
        return Ok(());
    }
    names.sort();
    let shown: Vec<&str> = names.iter().take(3).map(String::as_str).collect();
    Err(CacheError::NotACache {
        path: root.to_path_buf(),
        found: format!(
            "it holds {}{} and no VERSION file",
            shown.join(", "),
            if names.len() > 3 { ", ..." } else { "" }
        ),
    })
}

/// [`check_version`] without writing: a folder with no VERSION yet is an empty cache.
fn check_version_read_only(root: &Path) -> Result<(), CacheError> {
    let path = root.join("VERSION");
    match fs::read_to_string(&path) {
        Ok(text) if text.trim() == LAYOUT_VERSION.to_string() => Ok(()),
        Ok(text) => Err(CacheError::Version {
            path,
            found: text.trim().chars().take(40).collect(),
            expected: LAYOUT_VERSION,
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CacheError::io("read", path)(e)),
    }
}

/// Reads VERSION, or writes it when the cache is new.
fn check_version(root: &Path) -> Result<(), CacheError> {
    let path = root.join("VERSION");
    match fs::read_to_string(&path) {
        Ok(text) if text.trim() == LAYOUT_VERSION.to_string() => Ok(()),
        Ok(text) => Err(CacheError::Version {
            path,
            found: text.trim().chars().take(40).collect(),
            expected: LAYOUT_VERSION,
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // VERSION is the first thing a new cache holds (its temporary file sits in the
            // root itself), so a concurrent `open` never sees a layout without it. Two
            // processes creating the cache at once write the same content, so either rename
            // winning is fine.
            fsio::write_atomic_with_prefix(
                root,
                VERSION_TMP_PREFIX,
                &path,
                format!("{LAYOUT_VERSION}\n").as_bytes(),
            )
        }
        Err(e) => Err(CacheError::io("read", path)(e)),
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    use super::*;

    /// A fresh cache in a temporary folder (kept alive by the returned guard).
    pub fn cache() -> (tempfile::TempDir, Cache) {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = Cache::open(&dir.path().join("cache")).expect("open cache");
        (dir, cache)
    }

    /// Writes `bytes` to `path` and dates it `age_s` seconds in the past (a settled file,
    /// whose hash the stat cache memoizes).
    pub fn write_dated(path: &Path, bytes: &[u8], age_s: u64) {
        fs::write(path, bytes).unwrap();
        let when = std::time::SystemTime::now() - std::time::Duration::from_secs(age_s);
        fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(when)
            .unwrap();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::thread;

    use super::*;

    #[test]
    fn open_creates_layout_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("c");
        let cache = Cache::open(&root).unwrap();
        assert_eq!(cache.root(), root);
        for d in SUBDIRS {
            assert!(root.join(d).is_dir(), "{d}");
        }
        assert_eq!(fs::read_to_string(root.join("VERSION")).unwrap(), "1\n");
        Cache::open(&root).unwrap();
    }

    #[test]
    fn other_layout_version_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("VERSION"), "2\n").unwrap();
        let err = Cache::open(dir.path()).unwrap_err();
        assert!(matches!(err, CacheError::Version { ref found, .. } if found == "2"));
        assert!(err.to_string().contains("VERSION"), "{err}");
        // Nothing of the version-1 layout was created in the foreign cache.
        assert!(!dir.path().join("objects").exists());
    }

    /// A mistyped `--cache-dir $HOME` must not get flow's layout, nor a gc of `$HOME/tmp`.
    #[test]
    fn a_folder_that_is_not_a_cache_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("tmp")).unwrap();
        fs::write(dir.path().join("tmp").join("precious"), b"mine").unwrap();
        fs::write(dir.path().join("notes.txt"), b"mine").unwrap();
        for err in [
            Cache::open(dir.path()).unwrap_err(),
            Cache::open_read_only(dir.path()).unwrap_err(),
        ] {
            assert!(matches!(err, CacheError::NotACache { .. }), "{err}");
            assert!(err.to_string().contains("is not a flow cache"), "{err}");
        }
        assert!(!dir.path().join("objects").exists());
        assert!(dir.path().join("tmp").join("precious").is_file());
        // Empty or missing folders become caches.
        let empty = dir.path().join("tmp").join("empty");
        fs::create_dir(&empty).unwrap();
        Cache::open(&empty).unwrap();
        Cache::open(&dir.path().join("new")).unwrap();
    }

    /// A read-only handle works on a cache it cannot write, and on a missing folder.
    #[test]
    fn read_only_opens_write_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let ro = Cache::open_read_only(&missing).unwrap();
        assert!(matches!(
            ro.read_record(&hash_bytes(b"k")),
            RecordState::Missing
        ));
        ro.flush().unwrap();
        assert!(!missing.exists());

        let c = Cache::open(&dir.path().join("c")).unwrap();
        let f = dir.path().join("data");
        test_util::write_dated(&f, b"data", 60);
        let ro = Cache::open_read_only(c.root()).unwrap();
        ro.hash_file(&f).unwrap();
        ro.flush().unwrap();
        assert!(!c.root().join("stat-cache.json").exists());
    }

    /// `status` beside `gc`: the stat cache's write goes through `tmp/`, which gc empties;
    /// while gc holds the cache the write is skipped instead of failing.
    #[test]
    fn flush_beside_gc_neither_fails() {
        let (d, c) = test_util::cache();
        let f = d.path().join("data");
        test_util::write_dated(&f, b"data", 60);
        let stop = AtomicBool::new(false);
        thread::scope(|s| {
            let gc = s.spawn(|| {
                for _ in 0..200 {
                    c.gc(false).unwrap();
                }
                stop.store(true, Ordering::SeqCst);
            });
            while !stop.load(Ordering::SeqCst) {
                let other = Cache::open(c.root()).unwrap();
                other.hash_file(&f).unwrap();
                other.flush().unwrap();
            }
            gc.join().unwrap();
        });
    }

    #[test]
    fn cache_is_send_and_sync() {
        fn assert_both<T: Send + Sync>() {}
        assert_both::<Cache>();
    }

    /// Several threads store the same objects and records (as concurrent runs would) while
    /// another reads; afterwards everything verifies and no temporary file is left.
    #[test]
    fn concurrent_writers_of_the_same_objects_and_records() {
        let (_d, c) = test_util::cache();
        let shared_key = hash_bytes(b"shared");
        let scope = hash_bytes(b"scope");
        let payloads: Vec<Vec<u8>> = (0..4u8)
            .map(|i| vec![i; 200_000 + usize::from(i)])
            .collect();
        let hashes: Vec<Hash> = payloads.iter().map(|p| hash_bytes(p)).collect();
        let outputs: Vec<(String, Hash, u64)> = hashes
            .iter()
            .zip(&payloads)
            .enumerate()
            .map(|(i, (h, p))| (format!("out{i}"), h.clone(), p.len() as u64))
            .collect();
        let output_refs: Vec<(&str, &Hash, u64)> = outputs
            .iter()
            .map(|(n, h, s)| (n.as_str(), h, *s))
            .collect();
        let shared_record = records::tests::record(&shared_key, &output_refs);
        let done = AtomicBool::new(false);

        thread::scope(|s| {
            let reader = s.spawn(|| {
                while !done.load(Ordering::SeqCst) {
                    match c.read_record(&shared_key) {
                        RecordState::Missing | RecordState::Ok(_) => {}
                        RecordState::Unreadable(r) => panic!("reader saw a partial record: {r}"),
                    }
                }
            });
            let writers: Vec<_> = (0..4)
                .map(|t| {
                    let (c, payloads, shared_record) = (&c, &payloads, &shared_record);
                    let (shared_key, scope, output_refs) = (&shared_key, &scope, &output_refs);
                    s.spawn(move || {
                        for round in 0..8 {
                            let _run = c.run_guard().unwrap();
                            for (i, p) in payloads.iter().enumerate() {
                                if (i + t + round) % 2 == 0 {
                                    c.put_bytes(p).unwrap();
                                } else {
                                    let dir = c.temp_dir().unwrap();
                                    let f = dir.path().join("out");
                                    fs::write(&f, p).unwrap();
                                    c.put_file(&f).unwrap();
                                }
                            }
                            {
                                let _key = c.lock_key(shared_key).unwrap();
                                c.write_record(shared_record).unwrap();
                            }
                            let own = hash_bytes(format!("{t}-{round}").as_bytes());
                            c.write_record(&records::tests::record(&own, output_refs))
                                .unwrap();
                            c.update_refs(scope, |r| {
                                r.instances.insert(format!("{t}-{round}"), own.clone());
                            })
                            .unwrap();
                        }
                    })
                })
                .collect();
            for w in writers {
                w.join().unwrap();
            }
            done.store(true, Ordering::SeqCst);
            reader.join().unwrap();
        });

        for h in &hashes {
            assert_eq!(c.check_object(h), ObjectState::Ok);
        }
        assert_eq!(
            c.read_record(&shared_key),
            RecordState::Ok(shared_record.clone())
        );
        let refs = c.read_refs(&scope);
        assert_eq!(refs.instances.len(), 32);
        for key in refs.instances.values() {
            assert!(matches!(c.read_record(key), RecordState::Ok(_)));
        }
        assert!(fsio::list_dir(&c.root().join("tmp")).unwrap().is_empty());
    }

    const CRASH_ROOT_ENV: &str = "FLOW_CACHE_TEST_CRASH_ROOT";

    /// Not a test on its own: the body of the child processes of
    /// `kill_9_leaves_no_partial_object_or_record`. Does nothing unless the variable is set.
    #[test]
    fn crash_child_writer() {
        let Some(root) = std::env::var_os(CRASH_ROOT_ENV) else {
            return;
        };
        let c = Cache::open(Path::new(&root)).unwrap();
        let _run = c.run_guard().unwrap();
        let pid = std::process::id();
        // Bounded, in case the parent dies before killing us.
        for i in 0..5_000u32 {
            let size = (i as usize % 5 + 1) * 300_000;
            let unit = format!("{pid}-{i};");
            let data = unit.repeat(size / unit.len() + 1);
            let dir = c.temp_dir().unwrap();
            let f = dir.path().join("out");
            fs::write(&f, &data).unwrap();
            let a = c.put_file(&f).unwrap();
            let b = c.put_bytes(&data.as_bytes()[..size / 2]).unwrap();
            let key = hash_bytes(unit.as_bytes());
            let rec = records::tests::record(
                &key,
                &[("a", &a, data.len() as u64), ("b", &b, (size / 2) as u64)],
            );
            c.write_record(&rec).unwrap();
        }
    }

    /// Four writer processes are killed with SIGKILL mid-flight; every record they left
    /// must read back whole and point at objects that verify, and no object may be partial.
    #[cfg(unix)]
    #[test]
    fn kill_9_leaves_no_partial_object_or_record() {
        use std::process::{Command, Stdio};
        use std::time::{Duration, Instant};

        let (_d, c) = test_util::cache();
        let exe = std::env::current_exe().unwrap();
        let mut children: Vec<_> = (0..4)
            .map(|_| {
                Command::new(&exe)
                    .args(["--exact", "tests::crash_child_writer", "--test-threads=1"])
                    .env(CRASH_ROOT_ENV, c.root())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        // Let them get going: wait for some records (bounded), then kill mid-write.
        let start = Instant::now();
        while fsio::list_dir(&c.root().join("records")).unwrap().len() < 8
            && start.elapsed() < Duration::from_secs(60)
        {
            thread::sleep(Duration::from_millis(20));
        }
        for child in &mut children {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
        }

        let verify = |c: &Cache| {
            let mut records = 0;
            for e in fsio::list_dir(&c.root().join("records")).unwrap() {
                let name = e.file_name().into_string().unwrap();
                let key = name.strip_suffix(".json").unwrap();
                let RecordState::Ok(rec) = c.read_record(key) else {
                    panic!("record {name} is not whole");
                };
                for out in rec.outputs.values() {
                    assert_eq!(c.check_object(&out.hash), ObjectState::Ok);
                }
                records += 1;
            }
            for shard in fsio::list_dir(&c.root().join("objects")).unwrap() {
                for e in fsio::list_dir(&shard.path()).unwrap() {
                    let hash = format!(
                        "{}{}",
                        shard.file_name().to_str().unwrap(),
                        e.file_name().to_str().unwrap()
                    );
                    assert_eq!(c.check_object(&hash), ObjectState::Ok, "partial object");
                }
            }
            records
        };
        assert!(verify(&c) > 0);

        // The dead runs' locks were released by the OS, so gc may run and clear tmp/.
        c.update_refs(&hash_bytes(b"scope"), |r| {
            r.manifest = c.root().join("VERSION")
        })
        .unwrap();
        c.gc(false).unwrap();
        assert!(fsio::list_dir(&c.root().join("tmp")).unwrap().is_empty());
        verify(&c);
    }
}
