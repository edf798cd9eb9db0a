//! `flow push`: local records and their objects to the remote, objects first, create-only.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flow_cache::{Cache, Record, RecordState};
use futures_util::{stream, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, WriteMultipart};

use crate::{Inner, Remote, RemoteError, Tally, Transfer};

/// What a push did.
#[derive(Debug, Default)]
pub struct PushReport {
    /// Uploaded by this push.
    pub pushed: Tally,
    /// Found on the remote already: records listed there before the push (their objects
    /// are not looked at) or written meanwhile by another pusher, and objects whose
    /// create-only upload found them there.
    pub already_there: Tally,
    /// Records not pushed, each with why (a damaged local object, a failed request...).
    pub failed: Vec<RemoteError>,
    /// Wall time.
    pub elapsed: Duration,
}

/// What became of one object.
enum Sent {
    Pushed(u64),
    AlreadyThere(u64),
    /// Another record of this push already handled it.
    Duplicate,
}

/// What became of one record.
struct RecordSent {
    record_pushed: bool,
    objects: Vec<Sent>,
}

impl Remote {
    /// Pushes the records of `keys` (every local record when `None`) with their objects.
    ///
    /// Holds the local cache's run lock (shared), so `flow gc` cannot remove what is being
    /// pushed. A record that fails is reported in [`PushReport::failed`] and the others go
    /// on; only a failure to reach the remote at all (listing it, its `VERSION`) is an error.
    pub fn push(&self, cache: &Cache, keys: Option<&[String]>) -> Result<PushReport, RemoteError> {
        let start = Instant::now();
        let _run = cache.run_guard()?;
        let keys = match keys {
            Some(keys) => keys.to_vec(),
            None => cache.record_keys()?,
        };
        let t = Transfer::new(self, cache)?;
        let mut report = self.rt.block_on(push_keys(t, keys))?;
        report.elapsed = start.elapsed();
        tracing::info!(
            remote = %self.url(),
            pushed = ?report.pushed,
            already_there = ?report.already_there,
            failed = report.failed.len(),
            "push finished"
        );
        Ok(report)
    }
}

async fn push_keys(t: Arc<Transfer>, keys: Vec<String>) -> Result<PushReport, RemoteError> {
    let mut report = PushReport::default();
    if keys.is_empty() {
        return Ok(report);
    }
    t.remote.ensure_version().await?;
    let remote: HashSet<String> = t.remote.list_record_keys().await?.into_iter().collect();
    let (there, todo): (Vec<String>, Vec<String>) =
        keys.into_iter().partition(|k| remote.contains(k));
    report.already_there.records = there.len();

    let results = t.each(todo, push_record).await;
    for result in results {
        let sent = match result {
            Ok(sent) => sent,
            Err(e) => {
                report.failed.push(e);
                continue;
            }
        };
        if sent.record_pushed {
            report.pushed.records += 1;
        } else {
            report.already_there.records += 1;
        }
        for o in sent.objects {
            match o {
                Sent::Pushed(n) => {
                    report.pushed.objects += 1;
                    report.pushed.bytes += n;
                }
                Sent::AlreadyThere(n) => {
                    report.already_there.objects += 1;
                    report.already_there.bytes += n;
                }
                Sent::Duplicate => {}
            }
        }
    }
    Ok(report)
}

/// One record: its objects (each verified against its name while read), then the record.
async fn push_record(t: Arc<Transfer>, key: String) -> Result<RecordSent, RemoteError> {
    let record = match t.cache.read_record(&key) {
        RecordState::Ok(r) => r,
        RecordState::Missing => {
            return Err(RemoteError::LocalRecord {
                key,
                reason: "the local cache has no such record".into(),
            })
        }
        RecordState::Unreadable(reason) => return Err(RemoteError::LocalRecord { key, reason }),
    };
    let mut objects: BTreeMap<String, u64> = BTreeMap::new();
    for (name, out) in &record.outputs {
        if !flow_cache::is_valid_hash(&out.hash) {
            return Err(RemoteError::LocalRecord {
                key,
                reason: format!(
                    "output {name:?} names an invalid object hash {:?}",
                    out.hash
                ),
            });
        }
        objects.insert(out.hash.clone(), out.size);
    }
    let objects: Vec<Sent> = stream::iter(objects)
        .map(|(hash, size)| push_object(&t, &record, hash, size))
        .buffer_unordered(t.remote.opts.jobs)
        .try_collect()
        .await?;

    let remote = &t.remote;
    let path = remote.record_path(&key);
    let mut body = serde_json::to_vec_pretty(&record).map_err(|e| RemoteError::LocalRecord {
        key: key.clone(),
        reason: format!("cannot encode it: {e}"),
    })?;
    body.push(b'\n');
    let record_pushed = put_create(remote, &path, PutPayload::from(body)).await?;
    Ok(RecordSent {
        record_pushed,
        objects,
    })
}

/// A create-only PUT: `true` when written, `false` when something was there already.
async fn put_create(remote: &Inner, path: &Path, body: PutPayload) -> Result<bool, RemoteError> {
    let opts = PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    match remote.store.put_opts(path, body, opts).await {
        Ok(_) => Ok(true),
        Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
        Err(e) => Err(remote.store_error("upload", path, &e)),
    }
}

async fn push_object(
    t: &Transfer,
    record: &Record,
    hash: String,
    size: u64,
) -> Result<Sent, RemoteError> {
    let hash = hash.as_str();
    let lock = t.object_lock(hash);
    let mut done = lock.lock().await;
    if *done {
        return Ok(Sent::Duplicate);
    }
    let _slot = t.slot().await;
    let local = t.cache.object_path(hash);
    let damaged = |problem: String| RemoteError::LocalObject {
        path: local.clone(),
        problem,
        key: record.key.clone(),
        instance: record.instance.clone(),
    };
    let len = std::fs::metadata(&local)
        .map_err(|e| damaged(format!("cannot read it: {e}")))?
        .len();
    if len != size {
        return Err(damaged(format!("{len} bytes, the record says {size}")));
    }
    let remote = &t.remote;
    let path = remote.object_path(hash);
    let sent = if size > remote.opts.single_put_max {
        push_large(t, &local, &path, hash, size, &damaged).await?
    } else {
        let file = local.clone();
        let data = tokio::task::spawn_blocking(move || std::fs::read(file))
            .await
            .map_err(|e| damaged(format!("reading it stopped: {e}")))?
            .map_err(|e| damaged(format!("cannot read it: {e}")))?;
        let actual = flow_cache::hash_bytes(&data);
        if actual != hash {
            return Err(damaged(format!("its content hashes to {actual}")));
        }
        if put_create(remote, &path, PutPayload::from(data)).await? {
            Sent::Pushed(size)
        } else {
            Sent::AlreadyThere(size)
        }
    };
    *done = true;
    Ok(sent)
}

/// An object too large for one PUT: skipped when already there (with its size checked),
/// else uploaded in parts, hashed while read; a mismatch aborts the upload, so nothing of it
/// becomes visible.
async fn push_large(
    t: &Transfer,
    local: &std::path::Path,
    path: &Path,
    hash: &str,
    size: u64,
    damaged: &(dyn Fn(String) -> RemoteError + Sync),
) -> Result<Sent, RemoteError> {
    let remote = &t.remote;
    match remote.store.head(path).await {
        Ok(meta) if meta.size == size => return Ok(Sent::AlreadyThere(size)),
        Ok(meta) => {
            return Err(RemoteError::RemoteDamaged {
                location: remote.location(path),
                problem: format!("{} bytes, its content has {size}", meta.size),
            })
        }
        Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(remote.store_error("look up", path, &e)),
    }
    let upload = remote
        .store
        .put_multipart(path)
        .await
        .map_err(|e| remote.store_error("start the upload of", path, &e))?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, remote.opts.part_size);
    let mut file =
        std::fs::File::open(local).map_err(|e| damaged(format!("cannot read it: {e}")))?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; remote.opts.part_size];
    let mut total = 0u64;
    let outcome: Result<(), RemoteError> = async {
        loop {
            let n = tokio::task::block_in_place(|| file.read(&mut buf))
                .map_err(|e| damaged(format!("cannot read it: {e}")))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            total += n as u64;
            writer
                .wait_for_capacity(2)
                .await
                .map_err(|e| remote.store_error("upload", path, &e))?;
            writer.write(&buf[..n]);
        }
        let actual = hasher.finalize().to_hex().to_string();
        if total != size {
            return Err(damaged(format!("{total} bytes, the record says {size}")));
        }
        if actual != hash {
            return Err(damaged(format!("its content hashes to {actual}")));
        }
        Ok(())
    }
    .await;
    if let Err(e) = outcome {
        // Best effort: an aborted upload leaves nothing visible either way.
        let _ = writer.abort().await;
        return Err(e);
    }
    writer
        .finish()
        .await
        .map_err(|e| remote.store_error("finish the upload of", path, &e))?;
    Ok(Sent::Pushed(size))
}
