//! Garbage collection: keep what the refs of existing manifests point at, delete the rest.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::fsio::{self, JsonFile};
use crate::hash::{self, Hash};
use crate::lock::{self, RUN_LOCK};
use crate::{Cache, CacheError, RecordState, Refs};

/// What [`Cache::gc`] removed (or, in a dry run, would remove) and kept.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    /// Records of keys no refs point at (plus unreadable ones).
    pub records_removed: usize,
    /// Objects no kept record references.
    pub objects_removed: usize,
    /// Total size of everything removed: records, failures, objects, work and tmp folders.
    pub bytes_freed: u64,
    /// Work folders of keys no refs point at.
    pub work_dirs_removed: usize,
    /// Records kept.
    pub records_kept: usize,
    /// Objects kept.
    pub objects_kept: usize,
    /// Unreachable entries (records, objects, work and tmp entries) kept because they
    /// changed within the grace period: another machine may be writing them.
    pub young_kept: usize,
}

/// How long `flow gc` leaves unreachable entries alone after they last changed. The run
/// lock proves no run is active on this machine, but on a cache shared by several
/// machines (NFS, Lustre: `flock` may be node-local) a job elsewhere may be writing
/// objects, a record or a checkpoint right now.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3600);

impl Cache {
    /// Deletes everything not reachable from the refs of manifests that still exist.
    ///
    /// Takes the run lock exclusively without waiting: while any run holds a [`RunGuard`]
    /// this returns [`CacheError::Busy`]. Roots are the keys in refs files whose `manifest`
    /// still exists; refs of deleted manifests are dropped. Removed: records of unrooted
    /// keys (and unreadable records), failures and work folders of unrooted keys, objects
    /// referenced by no kept record (as an output or as a used input), everything in `tmp/`,
    /// and unused key lock files. An unreadable refs file stops gc with an error rather than
    /// guessing. With `dry_run` nothing is deleted; the report says what would be.
    ///
    /// [`RunGuard`]: crate::RunGuard
    ///
    /// On a read-only handle ([`Cache::open_read_only`]) gc is always a dry run and takes no
    /// lock, so it writes nothing at all.
    pub fn gc(&self, dry_run: bool) -> Result<GcReport, CacheError> {
        self.gc_with_grace(dry_run, Duration::ZERO)
    }

    /// [`Cache::gc`], keeping every unreachable record, failure, object, work folder and
    /// tmp entry that changed less than `grace` ago (see [`DEFAULT_GRACE`]).
    pub fn gc_with_grace(&self, dry_run: bool, grace: Duration) -> Result<GcReport, CacheError> {
        let dry_run = dry_run || self.read_only;
        let _exclusive = if self.read_only {
            None
        } else {
            Some(self.lock_run_exclusive()?)
        };
        let mut gc = Sweep {
            cache: self,
            dry_run,
            young_since: SystemTime::now().checked_sub(grace),
            report: GcReport::default(),
        };
        let roots = gc.roots()?;
        let keep_objects = gc.records(&roots)?;
        gc.failures(&roots)?;
        gc.objects(&keep_objects)?;
        gc.work_dirs(&roots)?;
        gc.tmp()?;
        gc.key_locks()?;
        tracing::info!(dry_run, report = ?gc.report, "gc finished");
        Ok(gc.report)
    }
}

/// How long gc waits for the run lock before reporting the cache busy: long enough for a
/// `flow status` to write its stat cache, far shorter than any run.
const RUN_LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(3);

impl Cache {
    fn lock_run_exclusive(&self) -> Result<std::fs::File, CacheError> {
        let run_lock = self.lock_path(RUN_LOCK);
        let start = std::time::Instant::now();
        loop {
            if let Some(file) = lock::try_lock_exclusive(&run_lock)? {
                return Ok(file);
            }
            if start.elapsed() > RUN_LOCK_PATIENCE {
                return Err(CacheError::Busy { path: run_lock });
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

/// One gc pass: the cache, whether to delete, and the running tally.
struct Sweep<'a> {
    cache: &'a Cache,
    dry_run: bool,
    /// Entries changed after this are young and kept (None: a zero grace).
    young_since: Option<SystemTime>,
    report: GcReport,
}

impl Sweep<'_> {
    /// Whether `path` (or, for a folder, anything directly in it) changed within the grace
    /// period; counted in the report when it is.
    fn young(&mut self, path: &Path) -> bool {
        let Some(since) = self.young_since else {
            return false;
        };
        let changed = |p: &Path| {
            std::fs::symlink_metadata(p)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t > since)
        };
        let young = changed(path)
            || (path.is_dir()
                && fsio::list_dir(path)
                    .unwrap_or_default()
                    .iter()
                    .any(|e| changed(&e.path())));
        self.report.young_kept += usize::from(young);
        young
    }

    /// Removes a file or folder (unless a dry run) and returns its size for the report.
    fn remove(&self, path: &Path) -> Result<u64, CacheError> {
        let size = fsio::disk_size(path);
        if !self.dry_run {
            tracing::debug!("gc removes {}", path.display());
            // symlink_metadata: a link is removed itself, never followed.
            let is_dir = std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir());
            if is_dir {
                fsio::remove_dir_if_present(path)?;
            } else {
                fsio::remove_file_if_present(path)?;
            }
        }
        Ok(size)
    }

    /// Keys in the refs of manifests that still exist; drops the refs of deleted manifests.
    /// All refs are read before anything is dropped, so an unreadable one deletes nothing.
    fn roots(&mut self) -> Result<HashSet<Hash>, CacheError> {
        let mut all = Vec::new();
        for entry in fsio::list_dir(&self.cache.dir("refs"))? {
            let Some(scope) = hash_named(&entry.file_name(), ".json") else {
                continue;
            };
            let path = entry.path();
            match fsio::read_json::<Refs>(&path) {
                JsonFile::Ok(refs) => all.push((scope, path, refs)),
                JsonFile::Missing => {}
                JsonFile::Unreadable(reason) => {
                    return Err(CacheError::Unreadable { path, reason });
                }
            }
        }
        let mut roots = HashSet::new();
        for (scope, path, refs) in all {
            if refs.manifest.as_os_str().is_empty() || !refs.manifest.exists() {
                tracing::info!(
                    "dropping refs of deleted manifest {}",
                    refs.manifest.display()
                );
                self.remove(&path)?;
                self.remove(&self.cache.lock_path(&format!("refs-{scope}.lock")))?;
                continue;
            }
            roots.extend(refs.keys().filter(|k| hash::is_valid_hash(k)).cloned());
        }
        Ok(roots)
    }

    /// Keeps rooted, readable records and removes the others; returns the objects the kept
    /// records reference.
    fn records(&mut self, roots: &HashSet<Hash>) -> Result<HashSet<Hash>, CacheError> {
        let mut keep = HashSet::new();
        for entry in fsio::list_dir(&self.cache.dir("records"))? {
            let Some(key) = hash_named(&entry.file_name(), ".json") else {
                continue;
            };
            if roots.contains(&key) {
                match self.cache.read_record(&key) {
                    RecordState::Ok(record) => {
                        self.report.records_kept += 1;
                        keep.extend(record.outputs.into_values().map(|o| o.hash));
                        let inputs = record.key_fields.inputs.into_values().flatten();
                        keep.extend(inputs.flat_map(|i| i.outputs.into_values()));
                        continue;
                    }
                    RecordState::Missing => continue,
                    // Unusable anyway: the engine recomputes the key.
                    RecordState::Unreadable(_) => {}
                }
            }
            if self.young(&entry.path()) {
                // Its objects stay too: a job elsewhere wrote them just before it.
                if let RecordState::Ok(record) = self.cache.read_record(&key) {
                    keep.extend(record.outputs.into_values().map(|o| o.hash));
                }
                continue;
            }
            self.report.bytes_freed += self.remove(&entry.path())?;
            self.report.records_removed += 1;
        }
        Ok(keep)
    }

    fn failures(&mut self, roots: &HashSet<Hash>) -> Result<(), CacheError> {
        for entry in fsio::list_dir(&self.cache.dir("failures"))? {
            match hash_named(&entry.file_name(), ".json") {
                Some(key) if !roots.contains(&key) && !self.young(&entry.path()) => {
                    self.report.bytes_freed += self.remove(&entry.path())?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn objects(&mut self, keep: &HashSet<Hash>) -> Result<(), CacheError> {
        for shard in fsio::list_dir(&self.cache.dir("objects"))? {
            let Some(prefix) = shard.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if prefix.len() != 2 || !shard.path().is_dir() {
                continue;
            }
            for entry in fsio::list_dir(&shard.path())? {
                let Some(rest) = entry.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                let hash = format!("{prefix}{rest}");
                if !hash::is_valid_hash(&hash) {
                    continue; // not ours: leave it alone
                }
                if keep.contains(&hash) || self.young(&entry.path()) {
                    self.report.objects_kept += 1;
                } else {
                    self.report.bytes_freed += self.remove(&entry.path())?;
                    self.report.objects_removed += 1;
                }
            }
        }
        Ok(())
    }

    fn work_dirs(&mut self, roots: &HashSet<Hash>) -> Result<(), CacheError> {
        for entry in fsio::list_dir(&self.cache.dir("work"))? {
            match hash_named(&entry.file_name(), "") {
                Some(key) if !roots.contains(&key) && !self.young(&entry.path()) => {
                    self.report.bytes_freed += self.remove(&entry.path())?;
                    self.report.work_dirs_removed += 1;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Everything in tmp/ is a leftover of this machine (no run is active here while gc
    /// holds the run lock); a young entry may be another machine's write in progress.
    fn tmp(&mut self) -> Result<(), CacheError> {
        for entry in fsio::list_dir(&self.cache.tmp_dir())? {
            if self.young(&entry.path()) {
                continue;
            }
            self.report.bytes_freed += self.remove(&entry.path())?;
        }
        Ok(())
    }

    /// Key lock files are recreated on demand; delete those nobody holds so they do not
    /// pile up (one per key ever computed).
    fn key_locks(&mut self) -> Result<(), CacheError> {
        if self.dry_run {
            return Ok(());
        }
        for entry in fsio::list_dir(&self.cache.dir("locks"))? {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let is_key_lock = name
                .strip_prefix("key-")
                .and_then(|n| n.strip_suffix(".lock"))
                .is_some_and(hash::is_valid_hash);
            if !is_key_lock {
                continue;
            }
            // Held means some process is using it right now: leave it.
            if let Some(_held) = lock::try_lock_exclusive(&entry.path())? {
                self.remove(&entry.path())?;
            }
        }
        Ok(())
    }
}

/// The hash in a file name of the form `<hash><suffix>`, if it has that form.
fn hash_named(name: &OsStr, suffix: &str) -> Option<Hash> {
    let stem = name.to_str()?.strip_suffix(suffix)?;
    hash::is_valid_hash(stem).then(|| stem.to_string())
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::PathBuf;

    use super::*;
    use crate::hash::hash_bytes;
    use crate::records::tests::record;
    use crate::test_util::cache;
    use crate::{Failure, ObjectState};

    /// A stage that started (its key in `running`) keeps its work folder through gc, and so
    /// does a key whose record a run wrote before it died (rooted in `instances` at once).
    #[test]
    fn keys_of_a_run_that_died_are_kept() {
        let (dir, c) = cache();
        let manifest = dir.path().join("flow.toml");
        fs::write(&manifest, "").unwrap();
        let scope = hash_bytes(b"scope");
        let k_running = hash_bytes(b"running");
        let k_done = hash_bytes(b"done");
        let k_stray = hash_bytes(b"stray");
        let o = c.put_bytes(b"out").unwrap();
        c.write_record(&record(&k_done, &[("a", &o, 3)])).unwrap();
        c.write_record(&record(&k_stray, &[("a", &o, 3)])).unwrap();
        fs::write(c.work_dir(&k_running).unwrap().join("checkpoint"), b"ckpt").unwrap();
        fs::write(c.work_dir(&k_stray).unwrap().join("checkpoint"), b"x").unwrap();
        c.update_refs(&scope, |r| {
            r.manifest = manifest.clone();
            r.running.insert("train".into(), k_running.clone());
            r.instances.insert("source".into(), k_done.clone());
        })
        .unwrap();
        let report = c.gc(false).unwrap();
        assert!(c
            .root()
            .join("work")
            .join(&k_running)
            .join("checkpoint")
            .is_file());
        assert!(matches!(c.read_record(&k_done), RecordState::Ok(_)));
        assert_eq!(c.check_object(&o), ObjectState::Ok);
        // What nothing roots still goes.
        assert!(matches!(c.read_record(&k_stray), RecordState::Missing));
        assert!(!c.root().join("work").join(&k_stray).exists());
        assert_eq!((report.records_removed, report.work_dirs_removed), (1, 1));
    }

    /// `gc --dry-run` on a read-only handle creates, locks and deletes nothing.
    #[test]
    fn a_read_only_dry_run_writes_nothing() {
        let (_dir, c) = cache();
        let k = hash_bytes(b"k");
        let o = c.put_bytes(b"o").unwrap();
        c.write_record(&record(&k, &[("a", &o, 1)])).unwrap();
        fs::write(c.root().join("tmp").join("leftover"), b"x").unwrap();
        let before = tree(c.root());
        let ro = Cache::open_read_only(c.root()).unwrap();
        let report = ro.gc(false).unwrap();
        assert_eq!(report.records_removed, 1, "it reports what it would remove");
        assert_eq!(tree(c.root()), before);
    }

    /// Every path under `root` with its size and mtime.
    fn tree(root: &std::path::Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for e in fs::read_dir(&dir).unwrap().flatten() {
                let m = e.metadata().unwrap();
                if m.is_dir() {
                    stack.push(e.path());
                }
                out.push((e.path(), m.len(), m.modified().unwrap()));
            }
        }
        out.sort();
        out
    }

    struct World {
        _dir: tempfile::TempDir,
        cache: Cache,
        manifest: PathBuf,
        k_kept: Hash,
        k_deleted_manifest: Hash,
        k_unrooted: Hash,
        o_kept: Hash,
        o_shared: Hash,
        o_deleted_manifest: Hash,
        o_unrooted: Hash,
        o_orphan: Hash,
    }

    fn failure(key: &Hash) -> Failure {
        Failure {
            key: key.clone(),
            stage: "s".into(),
            instance: "s".into(),
            error: "boom".into(),
            unix: 0.0,
            ..Default::default()
        }
    }

    /// Three records: one rooted by an existing manifest, one rooted only by the refs of a
    /// deleted manifest, one rooted by nothing; plus an orphan object and leftovers.
    fn world() -> World {
        let (dir, c) = cache();
        let manifest = dir.path().join("flow.toml");
        fs::write(&manifest, "").unwrap();
        let gone = dir.path().join("gone.toml");
        fs::write(&gone, "").unwrap();

        let put = |s: &str| c.put_bytes(s.as_bytes()).unwrap();
        let (o_kept, o_shared, o_deleted_manifest, o_unrooted, o_orphan) = (
            put("kept"),
            put("shared"),
            put("deleted-m"),
            put("unrooted"),
            put("orphan"),
        );
        let k_kept = hash_bytes(b"k-kept");
        let k_deleted_manifest = hash_bytes(b"k-deleted-manifest");
        let k_unrooted = hash_bytes(b"k-unrooted");
        c.write_record(&record(&k_kept, &[("a", &o_kept, 4), ("b", &o_shared, 6)]))
            .unwrap();
        c.write_record(&record(
            &k_deleted_manifest,
            &[("a", &o_deleted_manifest, 9)],
        ))
        .unwrap();
        c.write_record(&record(
            &k_unrooted,
            &[("a", &o_unrooted, 8), ("b", &o_shared, 6)],
        ))
        .unwrap();

        c.update_refs(&hash_bytes(b"scope-1"), |r| {
            r.manifest = manifest.clone();
            r.instances.insert("kept".into(), k_kept.clone());
        })
        .unwrap();
        c.update_refs(&hash_bytes(b"scope-2"), |r| {
            r.manifest = gone.clone();
            r.instances.insert("x".into(), k_deleted_manifest.clone());
        })
        .unwrap();
        fs::remove_file(&gone).unwrap();

        for k in [&k_kept, &k_unrooted] {
            c.write_failure(&failure(k)).unwrap();
            fs::write(c.work_dir(k).unwrap().join("journal"), b"x").unwrap();
        }
        fs::write(c.root().join("tmp/leftover"), b"partial").unwrap();
        fs::create_dir(c.root().join("tmp/dir-leftover")).unwrap();
        drop(c.lock_key(&k_unrooted).unwrap());
        drop(c.run_guard().unwrap()); // so gc creates no lock file in the snapshots

        World {
            _dir: dir,
            cache: c,
            manifest,
            k_kept,
            k_deleted_manifest,
            k_unrooted,
            o_kept,
            o_shared,
            o_deleted_manifest,
            o_unrooted,
            o_orphan,
        }
    }

    /// Every file under the cache root, for "nothing changed" checks.
    fn snapshot(root: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for e in fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p.clone());
                }
                out.push(p);
            }
        }
        out.sort();
        out
    }

    #[test]
    fn gc_removes_unrooted_and_keeps_rooted_and_dry_run_deletes_nothing() {
        let w = world();
        let c = &w.cache;
        let before = snapshot(c.root());
        let dry = c.gc(true).unwrap();
        assert_eq!(snapshot(c.root()), before, "dry run deleted something");

        let report = c.gc(false).unwrap();
        assert_eq!(report, dry, "dry run predicts the real run");
        assert_eq!(report.records_removed, 2);
        assert_eq!(report.records_kept, 1);
        assert_eq!(report.objects_removed, 3);
        assert_eq!(report.objects_kept, 2);
        assert_eq!(report.work_dirs_removed, 1);
        assert!(report.bytes_freed > 0);

        assert!(matches!(c.read_record(&w.k_kept), RecordState::Ok(_)));
        assert_eq!(c.read_record(&w.k_deleted_manifest), RecordState::Missing);
        assert_eq!(c.read_record(&w.k_unrooted), RecordState::Missing);
        for o in [&w.o_kept, &w.o_shared] {
            assert_eq!(c.check_object(o), ObjectState::Ok);
        }
        for o in [&w.o_deleted_manifest, &w.o_unrooted, &w.o_orphan] {
            assert_eq!(c.check_object(o), ObjectState::Missing);
        }
        assert!(c.read_failure(&w.k_kept).is_some());
        assert!(c.read_failure(&w.k_unrooted).is_none());
        assert!(c.root().join("work").join(&w.k_kept).exists());
        assert!(!c.root().join("work").join(&w.k_unrooted).exists());
        assert!(fsio::list_dir(&c.tmp_dir()).unwrap().is_empty());
        // Refs of the deleted manifest are dropped; the others stay.
        assert_eq!(c.read_refs(&hash_bytes(b"scope-2")), Refs::default());
        assert_eq!(c.read_refs(&hash_bytes(b"scope-1")).manifest, w.manifest);
        assert!(!c.lock_path(&format!("key-{}.lock", w.k_unrooted)).exists());

        // A second pass finds nothing more to do.
        let again = c.gc(false).unwrap();
        assert_eq!((again.records_removed, again.objects_removed), (0, 0));
        assert_eq!((again.records_kept, again.objects_kept), (1, 2));
    }

    /// With a grace period nothing unreachable that changed within it is removed (another
    /// machine may be writing it); once it is older, it goes.
    #[test]
    fn young_unreachable_entries_survive_a_grace_period() {
        let w = world();
        let c = &w.cache;
        let report = c.gc_with_grace(false, Duration::from_secs(3600)).unwrap();
        assert_eq!(
            (
                report.records_removed,
                report.objects_removed,
                report.work_dirs_removed
            ),
            (0, 0, 0)
        );
        assert!(report.young_kept > 0);
        assert!(fsio::list_dir(&c.tmp_dir()).unwrap().len() >= 2);
        // Backdate everything: now it is old, and the same sweep removes it.
        let old = SystemTime::now() - Duration::from_secs(7200);
        for p in &snapshot(c.root()) {
            std::fs::File::open(p)
                .and_then(|f| f.set_modified(old))
                .unwrap();
        }
        let report = c.gc_with_grace(false, Duration::from_secs(3600)).unwrap();
        assert!(
            report.records_removed > 0 && report.objects_removed > 0,
            "{report:?}"
        );
        assert!(fsio::list_dir(&c.tmp_dir()).unwrap().is_empty());
        assert!(!c.root().join("work").join(&w.k_unrooted).exists());
    }

    #[test]
    fn gc_is_refused_while_a_run_holds_the_cache() {
        let w = world();
        let c = &w.cache;
        let guard = c.run_guard().unwrap();
        let err = c.gc(false).unwrap_err();
        assert!(matches!(err, CacheError::Busy { .. }), "{err}");
        assert!(err.to_string().contains("run.lock"), "{err}");
        assert!(matches!(c.read_record(&w.k_unrooted), RecordState::Ok(_)));
        drop(guard);
        c.gc(false).unwrap();
    }

    #[test]
    fn unreadable_refs_stop_gc_before_deleting_anything() {
        let w = world();
        let c = &w.cache;
        let path = c.refs_path(&hash_bytes(b"scope-3")).unwrap();
        fs::write(&path, b"{").unwrap();
        let before = snapshot(c.root());
        let err = c.gc(false).unwrap_err();
        assert!(matches!(err, CacheError::Unreadable { .. }), "{err}");
        assert!(err.to_string().contains("scope") || err.to_string().contains(".json"));
        assert_eq!(snapshot(c.root()), before);
    }

    #[test]
    fn unreadable_rooted_record_is_removed() {
        let w = world();
        let c = &w.cache;
        fs::write(c.root().join(format!("records/{}.json", w.k_kept)), b"{").unwrap();
        let report = c.gc(false).unwrap();
        assert_eq!(report.records_kept, 0);
        assert_eq!(c.read_record(&w.k_kept), RecordState::Missing);
        assert_eq!(c.check_object(&w.o_kept), ObjectState::Missing);
    }
}
