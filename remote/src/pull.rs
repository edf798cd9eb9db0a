//! `flow pull` (and `flow run --remote`): remote records and their objects into the local
//! cache, every object verified against its name before it is installed.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flow_cache::{Cache, ObjectState, Record, RecordState};
use futures_util::{stream, StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;

use crate::{Remote, RemoteError, Tally, Transfer};

/// A record larger than this is refused unread (records are small JSON files).
const RECORD_MAX: u64 = 256 << 20;

/// What a pull did.
#[derive(Debug, Default)]
pub struct PullReport {
    /// Downloaded and installed by this pull.
    pub pulled: Tally,
    /// Already in the local cache: records that read and whose objects verify (not
    /// downloaded), and objects of pulled records that were already stored.
    pub already_here: Tally,
    /// Keys asked for that the remote has no record of.
    pub not_on_remote: usize,
    /// Records not installed, each with why (an altered object, a failed request...).
    pub failed: Vec<RemoteError>,
    /// Wall time.
    pub elapsed: Duration,
}

impl PullReport {
    /// Adds what `other` did (for several pulls reported as one).
    pub fn merge(&mut self, other: PullReport) {
        self.pulled.add(other.pulled);
        self.already_here.add(other.already_here);
        self.not_on_remote += other.not_on_remote;
        self.failed.extend(other.failed);
        self.elapsed += other.elapsed;
    }
}

enum Got {
    Pulled(u64),
    AlreadyHere(u64),
}

enum RecordGot {
    Pulled(Vec<Got>),
    AlreadyHere { objects: usize, bytes: u64 },
    NotOnRemote,
}

impl Remote {
    /// Pulls the records of `keys` (every record on the remote when `None`) with the objects
    /// the local cache lacks. A local record that reads and whose objects verify is kept.
    ///
    /// Holds the local cache's run lock (shared), so `flow gc` cannot remove pulled objects
    /// before their record is written. A record that fails (an altered object, a request
    /// that failed) is reported in [`PullReport::failed`] and not installed; the others are.
    pub fn pull(&self, cache: &Cache, keys: Option<&[String]>) -> Result<PullReport, RemoteError> {
        let start = Instant::now();
        let _run = cache.run_guard()?;
        let t = Transfer::new(self, cache)?;
        let mut report = self.rt.block_on(pull_keys(Arc::clone(&t), keys))?;
        t.cache.flush()?;
        report.elapsed = start.elapsed();
        tracing::info!(
            remote = %self.url(),
            pulled = ?report.pulled,
            already_here = ?report.already_here,
            not_on_remote = report.not_on_remote,
            failed = report.failed.len(),
            "pull finished"
        );
        Ok(report)
    }
}

async fn pull_keys(t: Arc<Transfer>, keys: Option<&[String]>) -> Result<PullReport, RemoteError> {
    let mut report = PullReport::default();
    let remote = &t.remote;
    match remote.read_version().await? {
        Some(found) => remote.check_version(&found)?,
        None => match keys {
            // Nothing was ever pushed here.
            Some(keys) => {
                report.not_on_remote = keys.len();
                return Ok(report);
            }
            None if remote.list_record_keys().await?.is_empty() => return Ok(report),
            None => {
                return Err(RemoteError::Layout {
                    location: remote.location(&remote.version_path()),
                    problem: "is missing, but records are there: not a flow cache \
                              (or one pushed by another tool); nothing pulled"
                        .into(),
                })
            }
        },
    }
    let keys = match keys {
        Some(keys) => keys.to_vec(),
        None => remote.list_record_keys().await?,
    };
    let results = t.each(keys, pull_record).await;
    for result in results {
        match result {
            Ok(RecordGot::NotOnRemote) => report.not_on_remote += 1,
            Ok(RecordGot::AlreadyHere { objects, bytes }) => {
                report.already_here.records += 1;
                report.already_here.objects += objects;
                report.already_here.bytes += bytes;
            }
            Ok(RecordGot::Pulled(objects)) => {
                report.pulled.records += 1;
                for o in objects {
                    let tally = match o {
                        Got::Pulled(n) => (&mut report.pulled, n),
                        Got::AlreadyHere(n) => (&mut report.already_here, n),
                    };
                    tally.0.objects += 1;
                    tally.0.bytes += tally.1;
                }
            }
            Err(e) => report.failed.push(e),
        }
    }
    Ok(report)
}

/// Whether the local cache has `key`'s record with every object intact.
fn local_record(cache: &Cache, key: &str) -> Option<Record> {
    let RecordState::Ok(record) = cache.read_record(key) else {
        return None;
    };
    record
        .outputs
        .values()
        .all(|o| cache.check_object_quick(&o.hash) == ObjectState::Ok)
        .then_some(record)
}

async fn pull_record(t: Arc<Transfer>, key: String) -> Result<RecordGot, RemoteError> {
    let remote = &t.remote;
    let path = remote.record_path(&key);
    if let Some(local) = local_record(&t.cache, &key) {
        return Ok(RecordGot::AlreadyHere {
            objects: local.outputs.len(),
            bytes: local.outputs.values().map(|o| o.size).sum(),
        });
    }
    let bad = |reason: String| RemoteError::BadRecord {
        location: remote.location(&path),
        reason,
    };
    let got = {
        let _slot = t.slot().await;
        match remote.store.get(&path).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(RecordGot::NotOnRemote),
            Err(e) => return Err(remote.store_error("download", &path, &e)),
        }
    };
    if got.meta.size > RECORD_MAX {
        return Err(bad(format!(
            "{} bytes, more than a record has",
            got.meta.size
        )));
    }
    let bytes = got
        .bytes()
        .await
        .map_err(|e| remote.store_error("download", &path, &e))?;
    let record: Record =
        serde_json::from_slice(&bytes).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    if record.key != key {
        return Err(bad(format!("it holds the record of key {}", record.key)));
    }
    let mut objects: BTreeMap<String, u64> = BTreeMap::new();
    for (name, out) in &record.outputs {
        if !flow_cache::is_valid_hash(&out.hash) {
            return Err(bad(format!(
                "output {name:?} names an invalid object hash {:?}",
                out.hash
            )));
        }
        objects.insert(out.hash.clone(), out.size);
    }
    let got: Vec<Got> = stream::iter(objects)
        .map(|(hash, size)| pull_object(&t, &key, hash, size))
        .buffer_unordered(remote.opts.jobs)
        .try_collect()
        .await?;
    // Last: the cache refuses a record whose objects are not all stored.
    tokio::task::block_in_place(|| t.cache.write_record(&record))?;
    Ok(RecordGot::Pulled(got))
}

/// Downloads one object into the cache's `tmp/`, hashing as it comes, and installs it only
/// if it hashes to its name and has the record's size.
async fn pull_object(t: &Transfer, key: &str, hash: String, size: u64) -> Result<Got, RemoteError> {
    let hash = hash.as_str();
    let lock = t.object_lock(hash);
    let mut done = lock.lock().await;
    if *done || t.cache.check_object_quick(hash) == ObjectState::Ok {
        *done = true;
        return Ok(Got::AlreadyHere(size));
    }
    let _slot = t.slot().await;
    let remote = &t.remote;
    let path = remote.object_path(hash);
    let location = remote.location(&path);
    let got = remote
        .store
        .get(&path)
        .await
        .map_err(|e| remote.store_error("download", &path, &e))?;
    let wrong_size = |actual: u64| RemoteError::WrongSize {
        location: location.clone(),
        expected: size,
        actual,
        key: key.to_string(),
    };
    if got.meta.size != size {
        return Err(wrong_size(got.meta.size));
    }
    let staging = t.cache.temp_dir()?;
    let file_path = staging.path().join("object");
    let mut file =
        std::fs::File::create(&file_path).map_err(RemoteError::io("create", &file_path))?;
    let mut hasher = blake3::Hasher::new();
    let mut total = 0u64;
    let mut chunks = got.into_stream();
    while let Some(chunk) = chunks
        .try_next()
        .await
        .map_err(|e| remote.store_error("download", &path, &e))?
    {
        total += chunk.len() as u64;
        if total > size {
            return Err(wrong_size(total));
        }
        hasher.update(&chunk);
        tokio::task::block_in_place(|| file.write_all(&chunk))
            .map_err(RemoteError::io("write", &file_path))?;
    }
    if total != size {
        return Err(wrong_size(total));
    }
    let actual = hasher.finalize().to_hex().to_string();
    if actual != hash {
        return Err(RemoteError::Corrupt {
            location,
            expected: hash.to_string(),
            actual,
            key: key.to_string(),
        });
    }
    drop(file);
    // put_file rehashes what it renames into place: it never stores under a wrong name.
    let stored = tokio::task::block_in_place(|| t.cache.put_file(&file_path))?;
    if stored != hash {
        return Err(RemoteError::Corrupt {
            location,
            expected: hash.to_string(),
            actual: stored,
            key: key.to_string(),
        });
    }
    *done = true;
    Ok(Got::Pulled(size))
}
